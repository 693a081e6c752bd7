//! Strait's node proxy, laid out by connection path:
//!
//! - `tcp/`: connections from local pods (`outbound`), the destination side wherever a connection arrived
//!   (`inbound`), plaintext capture, connection limits, sockets and the byte copy;
//! - `tunnel/`: the mTLS HTTP/2 CONNECT tunnel between node proxies, client pool and server together;
//! - `http/`: L7, served in the node proxy itself (routing, retries, limits, outlier detection, balancing);
//! - `policy/`: authorization; `plan`: where a connection goes (local pod, tunnel, passthrough);
//! - `state`: the compiled, immutable configuration the data path reads; `control_plane` / `config_file`:
//!   where it comes from; `serve` and `reconcile`: listeners and the loop that follows configuration changes;
//! - `drain`: the one lifecycle (SIGTERM -> not ready -> stop accepting -> go away -> grace -> exit);
//! - `telemetry/`: metrics, the access log and logging; `admin`: the admin server; `redirect/`: nftables.
//!
//! The crate's public surface is what the binaries and the integration tests use.
#![forbid(unsafe_code)]

mod admin;
pub mod cli;
mod config_file;
mod context;
pub mod control_plane;
pub mod drain;
mod http;
mod last_good;
mod listeners;
mod plan;
mod policy;
mod reconcile;
pub mod redirect;
mod serve;
mod state;
mod tcp;
pub mod telemetry;
pub mod tunnel;
