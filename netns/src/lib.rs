//! A cluster of Linux network namespaces (an underlay bridge, nodes, pods joined to their node by veth pairs)
//! and helpers to run processes and create sockets inside them. Dropping a [`Cluster`] kills every process in
//! its namespaces and deletes them, also on panic.
//!
//! Shared by the end-to-end harness (`strait-tests`, which re-exports it as `strait_tests::netns` and
//! `strait_tests::exec`) and by `strait local --netns`.
//!
//! Everything here needs root (network namespaces, veths); [`require_root`] lets a test skip politely
//! elsewhere.

pub mod cluster;
pub mod exec;

pub use cluster::{Cluster, ClusterBuilder, Node, Pod};
pub use exec::{
    connect_from, connect_from_async, in_netns, listen_in, listen_in_tokio, output_in, run_in, spawn_in, ChildGuard,
};

/// Set (to anything but "0") where the root-only tests must run, as in CI: then a missing root privilege
/// fails the test instead of skipping it.
pub const REQUIRE_ROOT_ENV: &str = "STRAIT_REQUIRE_ROOT_TESTS";

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// True when running as root. Tests call it first and return early (printing "skipping: needs root") when
/// it is false, so a developer's unprivileged `cargo test` stays green. Panics instead when
/// [`REQUIRE_ROOT_ENV`] is set, so CI can never pass by skipping.
pub fn require_root() -> bool {
    let root = is_root();
    if !root {
        if std::env::var(REQUIRE_ROOT_ENV).is_ok_and(|v| v != "0") {
            panic!("this test needs root and {REQUIRE_ROOT_ENV} is set");
        }
        eprintln!("skipping: needs root");
    }
    root
}
