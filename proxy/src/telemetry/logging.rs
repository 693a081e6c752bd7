//! Log set-up: `RUST_LOG`-style filters, text or JSON lines, changeable at run time from the admin port; the
//! access log (target `access`) only when asked for.

use std::fmt;
use std::io::{BufWriter, IsTerminal};
use std::net::SocketAddr;
use std::sync::Arc;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{fmt as layer_fmt, prelude::*, reload, EnvFilter};

/// Keeps the log writer thread alive; dropping it flushes what is still queued.
pub struct LogGuard(#[allow(dead_code)] Option<WorkerGuard>);

/// Changes the log filter at run time (`POST /logging?level=debug`).
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Lines queued for the writer thread at most; beyond that, under a burst the disk or pipe cannot take, lines
/// are dropped rather than traffic stalled or memory grown (128,000 by default: tens of MB of pending lines).
const QUEUED_LINES: usize = 8192;
/// The writer's buffer: the lines queued since its last write go out in one `write(2)`.
const WRITE_BUFFER: usize = 64 * 1024;

/// The target of the access log lines.
pub const ACCESS_TARGET: &str = "access";

/// Installs the subscriber. Lines are handed to a writer thread that writes whatever is queued in one
/// `write(2)` through a buffer, so a request never waits on a write to a slow pipe, and a busy proxy does not
/// make one syscall per line (unbuffered, the access line was a fifth of the L7 CPU in the benchmark).
/// `access_log` off (the default, as Istio and Linkerd) silences target `access` whatever the filter says,
/// now and after a run-time change. Colours only on a terminal.
pub fn init(json: bool, access_log: bool) -> (LogControl, LogGuard) {
    let spec = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_else(|_| "info".into());
    // A RUST_LOG that does not parse falls back to `info`, as before.
    let filter = build_filter(&spec, access_log)
        .or_else(|_| build_filter("info", access_log))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (layer, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(layer);
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("strait-log")
        .finish(BufWriter::with_capacity(WRITE_BUFFER, std::io::stderr()));
    // A second init (tests embedding the proxy) keeps the first subscriber.
    let installed = if json {
        registry.with(layer_fmt::layer().json().with_writer(writer)).try_init()
    } else {
        registry.with(layer_fmt::layer().with_ansi(ansi).with_writer(writer)).try_init()
    };
    let guard = LogGuard(installed.is_ok().then_some(guard));
    let control: LogControl = Arc::new(move |level: &str| {
        let filter = build_filter(level, access_log).map_err(|e| format!("{level:?} is not a log filter: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    (control, guard)
}

/// `spec`, with the access log turned off unless it is enabled.
fn build_filter(spec: &str, access_log: bool) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(spec)?;
    if access_log {
        return Ok(filter);
    }
    Ok(filter.add_directive(format!("{ACCESS_TARGET}=off").parse()?))
}

/// Whether an access line written now would go anywhere: the HTTP paths skip gathering what only the line
/// needs (the path, say) when it would not.
pub fn access_enabled() -> bool {
    tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO)
}

/// A label value in an access line: `-` when empty, without copying it.
pub struct Dash<'a>(pub &'a str);

impl fmt::Display for Dash<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "-" } else { self.0 })
    }
}

/// An optional address in an access line: `-` when absent.
pub struct DashAddr(pub Option<SocketAddr>);

impl fmt::Display for DashAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The access log line for one TCP connection, written when it ends (target `access`, so it can be routed or
/// filtered apart from the proxy's own logs).
pub fn tcp_access(labels: &super::labels::ConnectionLabels, flags: &str, sent: u64, received: u64) {
    tracing::info!(
        target: "access",
        reporter = labels.reporter,
        protocol = "tcp",
        source_workload = %Dash(&labels.source.name),
        source_namespace = %Dash(&labels.source.namespace),
        source_identity = %Dash(&labels.source.principal),
        destination_workload = %Dash(&labels.destination.name),
        destination_namespace = %Dash(&labels.destination.namespace),
        destination_identity = %Dash(&labels.destination.principal),
        destination_service = %Dash(&labels.service.host),
        upstream = %DashAddr(labels.upstream),
        mtls = labels.mutual_tls,
        flags,
        sent_bytes = sent,
        received_bytes = received,
        duration_ms = labels.started.map(|s| s.elapsed().as_millis() as u64).unwrap_or_default(),
        "connection"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_log_is_off_unless_enabled_whatever_the_filter() {
        let off = build_filter("info,access=info", false).expect("a valid filter").to_string();
        assert!(off.contains("access=off"), "{off}");
        let on = build_filter("info", true).expect("a valid filter").to_string();
        assert!(!on.contains("access=off"), "{on}");
        assert!(build_filter("info,access=[", true).is_err());
    }

    #[test]
    fn empty_values_print_as_a_dash() {
        assert_eq!(Dash("").to_string(), "-");
        assert_eq!(Dash("shop").to_string(), "shop");
        assert_eq!(DashAddr(None).to_string(), "-");
        assert_eq!(DashAddr(Some(([10, 0, 0, 1], 80).into())).to_string(), "10.0.0.1:80");
    }
}
