//! Log set-up: `RUST_LOG`-style filters, text or JSON lines, changeable at run time from the admin port.

use std::sync::Arc;

use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter};

use crate::admin::LogControl;

pub fn init(json: bool) -> LogControl {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    // A second init (tests embedding the proxy) keeps the first subscriber.
    let _ = if json {
        registry.with(fmt::layer().json().with_writer(std::io::stderr)).try_init()
    } else {
        registry.with(fmt::layer().with_writer(std::io::stderr)).try_init()
    };
    Arc::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("{level:?} is not a log filter: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}
