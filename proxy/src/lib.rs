//! Strait node proxy.
#![forbid(unsafe_code)]

pub mod authz;
pub mod client;
pub mod redirect;
