//! The end-to-end harness for Strait: a cluster of Linux network namespaces (nodes and pods), helpers to
//! run processes and create sockets inside them, packet capture, and the test backend
//! (`strait-testbackend`) with its harness-side wrappers.
//!
//! Everything here needs root (network namespaces, veths) and the programs of [`HARNESS_TOOLS`];
//! [`require_root`] lets a test skip politely elsewhere, naming the packages to install.
//!
//! ```no_run
//! use strait_tests::{backend, Cluster, Capture};
//! # fn main() -> anyhow::Result<()> {
//! let cluster = Cluster::builder().node("node-a", &["a1", "a2"]).node("node-b", &["b1", "b2"]).build()?;
//! let b1 = cluster.pod("b1");
//! let echo = backend::tcp_echo(b1.netns_name(), (b1.ip(), 8080).into())?;
//! let node_a = cluster.node("node-a");
//! let capture = Capture::start(node_a.netns_name(), node_a.uplink(), "tcp")?;
//! let report = backend::tcp_send(cluster.pod("a1").netns_name(), echo.addr, 1000, "MARKER-1")?;
//! assert!(report.echoed);
//! assert!(capture.stop()?.contains(b"MARKER-1"));
//! # Ok(()) }
//! ```

pub mod backend;
pub mod capture;
pub mod fake_kube;
pub mod loopback;
pub mod mesh;
pub mod mesh_http;
pub mod scale;
pub mod soak;

// The namespace cluster and the process/namespace helpers live in `strait-netns` (shared with
// `strait local --netns`); these re-exports keep the `strait_tests::netns` and `strait_tests::exec` paths.
pub use strait_netns::cluster as netns;
pub use strait_netns::exec;
pub use strait_netns::{Tool, REQUIRE_ROOT_ENV};

pub use capture::{Capture, Captured};
pub use exec::{
    connect_from, connect_from_async, in_netns, listen_in, listen_in_tokio, output_in, run_in, spawn_in, ChildGuard,
};
pub use netns::{Cluster, ClusterBuilder, Node, Pod};

/// Every program the harness runs: the cluster's `ip` and `sysctl`, the proxies' `nft` and the captures'
/// `tcpdump`. One set for every test that runs a mesh rather than one per test (the harness's own self-tests,
/// which start no proxy, ask for less): a machine that runs some of them should run them all, and a single
/// skip line then names everything there is to install.
pub const HARNESS_TOOLS: &[Tool] = &[Tool::IP, Tool::SYSCTL, Tool::NFT, Tool::TCPDUMP];

/// True when running as root with every tool of [`HARNESS_TOOLS`] on `PATH`; otherwise prints one line
/// ("skipping: needs root", or the missing packages and how to install them) and returns false, or panics
/// with the same words when [`REQUIRE_ROOT_ENV`] is set (see [`strait_netns::require_root_and`]). Call it
/// first, before building a cluster, so a missing tool costs no time.
pub fn require_root() -> bool {
    strait_netns::require_root_and(HARNESS_TOOLS)
}
