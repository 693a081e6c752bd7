//! Log set-up: `RUST_LOG`-style filters, text or JSON lines, changeable at run time from the admin port.

use std::io::IsTerminal;
use std::sync::Arc;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::{fmt, prelude::*, reload, EnvFilter};

/// Keeps the log writer thread alive; dropping it flushes what is still queued.
pub struct LogGuard(#[allow(dead_code)] Option<WorkerGuard>);

/// Changes the log filter at run time (`POST /logging?level=debug`).
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Installs the subscriber. Lines are handed to a writer thread, so a request never waits on a `write(2)` to a
/// slow pipe (an access line per request made that a fifth of the L7 CPU in the benchmark); under extreme load
/// the queue drops lines rather than stalling traffic. Colours only on a terminal.
pub fn init(json: bool) -> (LogControl, LogGuard) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    // A second init (tests embedding the proxy) keeps the first subscriber.
    let installed = if json {
        registry.with(fmt::layer().json().with_writer(writer)).try_init()
    } else {
        registry.with(fmt::layer().with_ansi(ansi).with_writer(writer)).try_init()
    };
    let guard = LogGuard(installed.is_ok().then_some(guard));
    let control: LogControl = Arc::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("{level:?} is not a log filter: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    (control, guard)
}

/// The access log line for one TCP connection, written when it ends (target `access`, so it can be routed or
/// filtered apart from the proxy's own logs: `RUST_LOG=info,access=off` silences it).
pub fn tcp_access(labels: &super::labels::ConnectionLabels, flags: &str, sent: u64, received: u64) {
    let or_dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    tracing::info!(
        target: "access",
        reporter = labels.reporter,
        protocol = "tcp",
        source_workload = %or_dash(&labels.source_workload),
        source_namespace = %or_dash(&labels.source_namespace),
        source_identity = %or_dash(&labels.source_principal),
        destination_workload = %or_dash(&labels.destination_workload),
        destination_namespace = %or_dash(&labels.destination_namespace),
        destination_identity = %or_dash(&labels.destination_principal),
        destination_service = %or_dash(&labels.destination_service),
        upstream = %labels.upstream.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
        mtls = labels.mutual_tls,
        flags,
        sent_bytes = sent,
        received_bytes = received,
        duration_ms = labels.started.map(|s| s.elapsed().as_millis() as u64).unwrap_or_default(),
        "connection"
    );
}
