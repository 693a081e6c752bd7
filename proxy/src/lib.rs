//! Strait's node proxy, laid out by connection path:
//!
//! - `tcp/`: connections from local pods (`outbound`), the destination side wherever a connection arrived
//!   (`inbound`), plaintext capture, connection limits, sockets and the byte copy;
//! - `tunnel/`: the mTLS HTTP/2 CONNECT tunnel between node proxies, client pool and server together;
//! - `http/`: L7, served in the node proxy itself (routing, retries, limits);
//! - `balance/`: choosing an endpoint and ejecting outliers, for TCP connections and HTTP requests alike;
//! - `policy/`: authorization; `plan`: where a connection goes (local pod, tunnel, passthrough);
//! - `state`: the compiled, immutable configuration the data path reads; `control_plane` / `config_file`:
//!   where it comes from; `serve` and `reconcile`: listeners and the loop that follows configuration changes;
//! - `drain`: the one lifecycle (SIGTERM -> not ready -> stop accepting -> go away -> grace -> exit);
//! - `telemetry/`: metrics, the access log and logging; `admin`: the admin server; `redirect/`: nftables;
//! - `tap`: the live request stream of the admin port's `/tap`;
//! - `explain`: what the compiled configuration decides for a request, and why (`strait why`, `strait config`).
//!
//! The crate's public surface is what the binaries and the integration tests use.
#![forbid(unsafe_code)]

mod admin;
mod balance;
pub mod cli;
mod config_file;
mod context;
pub mod control_plane;
pub mod discovery;
pub mod drain;
pub mod explain;
mod http;
mod last_good;
mod listeners;
mod plan;
mod policy;
mod reconcile;
pub mod redirect;
mod serve;
mod state;
mod tap;
mod tcp;
pub mod telemetry;
pub mod tunnel;

/// The `x-forwarded-client-cert` format the destination proxy writes, and its decoder for pods.
pub use http::xfcc;
