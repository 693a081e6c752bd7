//! Strait node proxy.
#![forbid(unsafe_code)]

pub mod client;
