//! The operator commands of the `strait` binary, against a running mesh (a cluster through its control plane's
//! monitoring port, or `strait local`) or a directory of manifests:
//!
//! - `status`: every node proxy as the control plane sees it (`status.rs`);
//! - `check`: preflight and health with hints, exit status for scripts (`check.rs`, with `node.rs` for the
//!   machine's kernel and nftables and `crds.rs` for the cluster's CRDs);
//! - `config`: a node proxy's configuration, compiled view and live destination state (`config.rs`);
//! - `why`: the decision for one request, by the proxy's own compiled configuration (`why.rs`), live or from a
//!   manifest directory (`manifests.rs`); `lint`: problems in a manifest directory (`lint.rs`);
//! - `tap`: the live request stream of the proxies' admin `/tap` (`tap.rs`).
//!
//! Every command returns whether it succeeded (`check` fails when a check does); errors are for what kept it
//! from answering at all.
#![forbid(unsafe_code)]

pub mod check;
pub mod config;
pub mod crds;
pub mod http;
pub mod lint;
mod manifests;
pub mod node;
pub mod output;
pub mod status;
pub mod tap;
pub mod why;

/// Runs one command on a small runtime of its own.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<bool>>>(command: F) -> anyhow::Result<bool> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(command)
}
