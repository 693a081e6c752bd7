//! Strait's node proxy. The connection path is plain async functions: `outbound` (accept, resolve, tunnel),
//! `inbound` (tunnel server, plaintext capture, authorize, connect to the pod); `proxy` wires them up.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod cli;
pub mod client;
pub mod config_file;
pub mod conn_limits;
pub mod copy;
pub mod http;
pub mod inbound;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod proxy;
pub mod redirect;
pub mod socket;
pub mod state;
pub mod tunnel;
