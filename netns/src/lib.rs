//! A cluster of Linux network namespaces (an underlay bridge, nodes, pods joined to their node by veth pairs)
//! and helpers to run processes and create sockets inside them. Dropping a [`Cluster`] kills every process in
//! its namespaces and deletes them, also on panic.
//!
//! Shared by the end-to-end harness (`strait-tests`, which re-exports it as `strait_tests::netns` and
//! `strait_tests::exec`) and by `strait local --netns`.
//!
//! Everything here needs root (network namespaces, veths) and a few programs (`ip`, `sysctl`; see [`tools`]);
//! [`require_root`] and [`require_root_and`] let a test skip politely elsewhere, naming what is missing.

pub mod cluster;
pub mod exec;
pub mod tools;

pub use cluster::{Cluster, ClusterBuilder, Node, Pod};
pub use exec::{
    connect_from, connect_from_async, in_netns, listen_in, listen_in_tokio, output_in, run_in, spawn_in, ChildGuard,
};
pub use tools::{check_root_and, missing_tools, Tool, Unmet, CLUSTER_TOOLS};

/// Set (to anything but "0") where the root-only tests must run, as in CI: then a missing root privilege or
/// a missing tool fails the test instead of skipping it.
pub const REQUIRE_ROOT_ENV: &str = "STRAIT_REQUIRE_ROOT_TESTS";

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when [`REQUIRE_ROOT_ENV`] says root-only tests must run rather than skip.
pub fn root_tests_required() -> bool {
    std::env::var(REQUIRE_ROOT_ENV).is_ok_and(|v| v != "0")
}

/// [`require_root_and`] the tools every [`Cluster`] runs ([`CLUSTER_TOOLS`]: `ip`, `sysctl`).
pub fn require_root() -> bool {
    require_root_and(CLUSTER_TOOLS)
}

/// True when running as root with every tool of `tools` on `PATH` (looked up, not run: see [`tools`]).
/// Otherwise prints one line, "skipping: needs root" or "skipping: needs the package nftables (nft): apt-get
/// install -y nftables", and returns false, so a developer's unprivileged `cargo test` and a fresh machine without the
/// packages stay green and say why. Panics instead, with the same words, when [`REQUIRE_ROOT_ENV`] is set, so
/// CI can never pass by skipping; the check comes before any namespace or process exists, so that failure is
/// immediate.
pub fn require_root_and(tools: &[Tool]) -> bool {
    match check_root_and(tools) {
        Ok(()) => true,
        Err(unmet) if root_tests_required() => {
            panic!("{REQUIRE_ROOT_ENV} is set, so this test fails instead of skipping: it {unmet}")
        }
        Err(unmet) => {
            eprintln!("skipping: {unmet}");
            false
        }
    }
}
