//! Opening the upstream of an outbound connection to one endpoint (a pod on this node, a pod behind another
//! node's tunnel, or a plain address), apart from relaying the bytes: a connection to a service can then try
//! another endpoint when one fails to connect, before any byte of the client's has been sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::inbound::{authorize, connect_pod_within, local_destination_labels, relay};
use crate::context::ProxyContext;
use crate::plan::{plan, Upstream};
use crate::policy::Caller;
use crate::state::{State, WorkloadInfo};
use crate::telemetry::flags::ResponseFlag;
use crate::telemetry::labels::ConnectionLabels;
use crate::telemetry::metrics::Refusal;
use crate::telemetry::record::ConnectionRecord;
use crate::tunnel::{H2Stream, TunnelError};

/// What opening an endpoint came to.
pub(crate) enum Opened {
    Connected(Connected),
    /// An HTTP port of a pod on this node: the destination side serves it from the client's stream.
    LocalHttp {
        caller: Caller,
        destination: Arc<WorkloadInfo>,
        target: SocketAddr,
        labels: ConnectionLabels,
    },
    /// The endpoint could not be connected to (refused, reset, timed out, tunnel failure): another may be
    /// tried. `refusal` is what `strait_connections_refused_total` counts, if anything.
    Failed {
        refusal: Option<Refusal>,
        error: String,
    },
    /// Refused for a reason another endpoint would meet as well (policy); already recorded and logged.
    Refused,
}

/// An open upstream, ready to relay.
pub(crate) enum Connected {
    /// A pod on this node: the destination side's checks have passed and are repeated on every change.
    Local {
        stream: TcpStream,
        caller: Caller,
        destination: Arc<WorkloadInfo>,
        port: u16,
        labels: ConnectionLabels,
    },
    Tunnel {
        stream: H2Stream,
        labels: ConnectionLabels,
    },
    Plain {
        stream: TcpStream,
        labels: ConnectionLabels,
    },
}

/// Opens the way from `source` to `target` within `timeout` (through the tunnel: until the far side has
/// connected to the pod). `labels` are the source side's.
pub(crate) async fn open(
    ctx: &ProxyContext,
    state: &State,
    source: &WorkloadInfo,
    target: SocketAddr,
    timeout: Duration,
    labels: &ConnectionLabels,
) -> Opened {
    match plan(state, source, target) {
        Upstream::Passthrough { target } => {
            let connected = tokio::time::timeout(timeout, ctx.outgoing.connect(target)).await;
            match connected.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
                Ok(stream) => {
                    Opened::Connected(Connected::Plain { stream, labels: labels.clone().with_upstream(target) })
                }
                Err(e) => Opened::Failed { refusal: None, error: format!("passthrough connect failed: {e}") },
            }
        }
        Upstream::Local { destination, target } => {
            let caller = Caller { identity: source.identity.clone(), address: source.workload.address };
            let labels = labels.clone().with_destination(&destination.labels).with_upstream(target);
            let labels = local_destination_labels(state, &caller, target, labels);
            if state.is_http_endpoint(target) {
                return Opened::LocalHttp { caller, destination, target, labels };
            }
            if authorize(ctx, state, &caller, &destination, target.port()).is_err() {
                ConnectionRecord::refused(&ctx.metrics, labels, ResponseFlag::Unauthorized);
                return Opened::Refused;
            }
            match connect_pod_within(ctx, target, timeout).await {
                Ok(stream) => {
                    Opened::Connected(Connected::Local { stream, caller, destination, port: target.port(), labels })
                }
                Err(e) => Opened::Failed {
                    refusal: Some(Refusal::UpstreamUnreachable),
                    error: format!("local pod unreachable: {e}"),
                },
            }
        }
        Upstream::Tunnel { destination, target, dial, key } => {
            let labels = labels.clone().with_destination(&destination.labels).with_upstream(target).mutual_tls(true);
            // Boxed: the handshake's state should not stay in the connection's task once the tunnel is open.
            let opened =
                tokio::time::timeout(timeout, Box::pin(ctx.pool.open(&key, dial, target, source.workload.address)));
            match opened.await {
                Ok(Ok(stream)) => Opened::Connected(Connected::Tunnel { stream, labels }),
                // The destination's policy said no: another endpoint of the service would most likely say
                // the same, and this one is healthy.
                Ok(Err(TunnelError::Refused { status, .. }))
                    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN =>
                {
                    ctx.metrics.refused("outbound", Refusal::TunnelFailed);
                    ConnectionRecord::refused(&ctx.metrics, labels, ResponseFlag::Unauthorized);
                    warn!(source = %source.name(), %target, %status, "refused by the destination's policy");
                    Opened::Refused
                }
                Ok(Err(e)) => {
                    Opened::Failed { refusal: Some(Refusal::TunnelFailed), error: format!("tunnel failed: {e}") }
                }
                Err(_) => Opened::Failed {
                    refusal: Some(Refusal::TunnelFailed),
                    error: format!("tunnel not open within the connect timeout ({timeout:?})"),
                },
            }
        }
        Upstream::Deny(reason) => {
            ctx.metrics.refused("outbound", Refusal::UnknownSource);
            warn!(source = %source.name(), %target, %reason, "refused");
            Opened::Refused
        }
    }
}

impl Connected {
    /// Copies between `client` and the upstream until both are done (and, for a pod on this node, while its
    /// policy still allows the connection).
    pub(crate) async fn relay(self, ctx: &ProxyContext, mut client: TcpStream) {
        match self {
            // Boxed: the local relay also watches policy; a tunnelled connection's task should not carry that.
            Connected::Local { stream, caller, destination, port, labels } => {
                Box::pin(relay(ctx, client, stream, caller, destination, port, labels)).await
            }
            Connected::Tunnel { mut stream, labels } => {
                let mut record = ConnectionRecord::open(&ctx.metrics, labels);
                let result = super::copy::bidirectional(&mut client, &mut stream).await;
                if let Err(e) = &result {
                    debug!(error = %e, "tunnelled connection ended with an error");
                }
                record.relayed(&result);
            }
            Connected::Plain { mut stream, labels } => {
                let mut record = ConnectionRecord::open(&ctx.metrics, labels);
                record.relayed(&super::copy::bidirectional(&mut client, &mut stream).await);
            }
        }
    }
}
