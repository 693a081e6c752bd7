//! The shared state every connection handler is given: the current configuration, certificates, metrics, the
//! tunnel pool and the per-destination state that outlives configuration versions. It is built once in
//! `serve` and passed down to the connection paths.

use std::sync::Arc;
use std::time::Duration;

use strait_certs::CertStore;

use crate::discovery::Discovery;
use crate::drain::Drain;
use crate::http::HttpContext;
use crate::state::StateStore;
use crate::tcp::backends::TcpBackends;
use crate::tcp::limits::{ConnectionLimits, SourceLimits};
use crate::tcp::socket::{Capture, Outgoing};
use crate::telemetry::metrics::Metrics;
use crate::tunnel::Pool;

/// What every connection handler needs; cheap to share.
pub(crate) struct ProxyContext {
    pub(crate) state: StateStore,
    pub(crate) certs: Arc<CertStore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pool: Pool,
    pub(crate) outgoing: Outgoing,
    pub(crate) capture: Capture,
    pub(crate) connect_timeout: Duration,
    pub(crate) http: HttpContext,
    pub(crate) connection_limits: ConnectionLimits,
    /// The balancer and outlier state of TCP service ports, compiled per configuration.
    pub(crate) tcp_backends: TcpBackends,
    pub(crate) source_limits: SourceLimits,
    /// The configuration version whose certificates, listeners and redirection rules are all in place;
    /// readiness waits for it to catch up with the current version.
    pub(crate) synced: Arc<std::sync::Mutex<String>>,
    /// The process's drain: accept loops and connections take a `Watch` from it for as long as they run.
    pub(crate) drain: Drain,
    /// On-demand discovery (protocol 3): outbound connections wait here for their destination to be known.
    pub(crate) discovery: Arc<Discovery>,
}
