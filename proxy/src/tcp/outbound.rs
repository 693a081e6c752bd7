//! Connections from local pods (15001): who is calling, where to, and how to get there. A TCP service port is
//! balanced by its DestinationPolicy (`tcp::backends`), trying another endpoint when one does not connect.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_api::Protocol;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::backends::{TcpBackend, MAX_CONNECT_ATTEMPTS};
use super::connect::{open, Opened};
use super::egress::{Egress, BLACKHOLE, PASSTHROUGH};
use super::inbound::serve_stream;
use super::socket::{accept_until_drained, original_destination};
use crate::balance::outlier::Connect;
use crate::context::ProxyContext;
use crate::state::{State, WorkloadInfo};
use crate::telemetry::flags::ResponseFlag;
use crate::telemetry::labels::ConnectionLabels;
use crate::telemetry::metrics::Refusal;
use crate::telemetry::record::ConnectionRecord;

/// Serves pods' connections until the drain starts; each keeps the drain waiting until it ends.
pub(crate) async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>) {
    let drain = ctx.drain.clone();
    accept_until_drained(listener, &drain, |tcp, peer, watch| {
        let ctx = ctx.clone();
        async move {
            connection(tcp, peer, ctx).await;
            drop(watch);
        }
    })
    .await
}

async fn connection(tcp: TcpStream, peer: SocketAddr, ctx: Arc<ProxyContext>) {
    // TCP_NODELAY comes from the listener (see `bind_socket`).
    let original = match original_destination(&tcp, ctx.capture) {
        Ok(addr) => addr,
        Err(e) => {
            warn!(%peer, error = %e, "outbound connection without an original destination");
            return;
        }
    };
    if !ctx.discovery.resolve(&ctx.state, peer, original).await {
        return;
    }
    let state = ctx.state.current();
    let Some(source) = state.local_workload(peer.ip()).cloned() else {
        ctx.metrics.refused("outbound", Refusal::UnknownSource);
        warn!(%peer, destination = %original, "refusing outbound connection: the source is not a meshed workload on this node");
        return;
    };
    let Some(_source_slot) = ctx.source_limits.acquire(source.workload.address) else {
        ctx.metrics.refused("outbound", Refusal::SourceLimit);
        warn!(source = %source.name(), "refused: the workload holds as many connections as --max-connections-per-workload allows");
        return;
    };
    if let Some(service) = state.service(original) {
        if is_http(&tcp, service.port.protocol()).await {
            // Boxed, like every way out below and the tunnel's opening: a task is as large as its largest
            // state, so without them an idle tunnelled connection would carry the HTTP server's, the local
            // relay's and the handshake's for its lifetime (5.5 KB in all, against 1.8 KB for its own).
            Box::pin(crate::http::outbound::serve(ctx.clone(), tcp, source, service.clone())).await;
            return;
        }
        let labels = source_labels(&source).with_service_labels(&service.labels);
        let _slot = match ctx.connection_limits.acquire(&state, &service.service) {
            Ok(slot) => slot,
            Err(max) => {
                let name = service.service.hostname();
                ctx.metrics.circuit.with_label_values(&[name.as_str(), "overflow"]).inc();
                ConnectionRecord::refused(&ctx.metrics, labels, ResponseFlag::UpstreamOverflow);
                warn!(source = %source.name(), service = %name, max, "refused: connectionPool.tcp.maxConnections reached");
                return;
            }
        };
        let latest = ctx.state.current().version == state.version;
        let backend = ctx.tcp_backends.get(&state, latest, service);
        // `connectionPool.tcp.connectTimeout` of the service, else the proxy's own bound.
        let connect_timeout =
            state.destination_settings(&service.service).connect_timeout.unwrap_or(ctx.connect_timeout);
        // Boxed, like every way out below: a task is as large as its largest state (see `connect`).
        Box::pin(to_service(&ctx, tcp, (&state, &source), &backend, connect_timeout, labels)).await;
        return;
    }
    let mut labels = source_labels(&source);
    let mut target = original;
    if super::egress::is_external(&state, original) {
        match super::egress::decide(&state, original) {
            Egress::Registered { host, namespace, target: to } => {
                ctx.metrics.egress.with_label_values(&[host.as_str(), "allowed"]).inc();
                labels = labels.with_external(&host, &namespace);
                target = to;
            }
            Egress::Passthrough => {
                ctx.metrics.egress.with_label_values(&[PASSTHROUGH, "allowed"]).inc();
                labels = labels.with_external(PASSTHROUGH, "");
            }
            Egress::Denied => {
                ctx.metrics.egress.with_label_values(&[BLACKHOLE, "denied"]).inc();
                ctx.metrics.refused("outbound", Refusal::EgressNotRegistered);
                let labels = labels.with_external(BLACKHOLE, "").with_upstream(original);
                ConnectionRecord::refused(&ctx.metrics, labels, Refusal::EgressNotRegistered.response_flag());
                warn!(source = %source.name(), destination = %original, "refused: outboundTrafficPolicy is REGISTRY_ONLY and no ServiceEntry registers the destination");
                return;
            }
        }
    }
    match Box::pin(open(&ctx, &state, &source, target, ctx.connect_timeout, &labels)).await {
        Opened::Connected(upstream) => {
            // The upstream holds its own copy of the labels for the connection's record: not two for its life.
            drop(labels);
            Box::pin(upstream.relay(&ctx, tcp)).await
        }
        Opened::LocalHttp { caller, destination, target, labels } => {
            Box::pin(serve_stream(&ctx, tcp, caller, destination, target, labels)).await
        }
        Opened::Failed { refusal, error } => {
            failed(&ctx, labels.with_upstream(target), refusal);
            debug!(source = %source.name(), %target, %error, "no connection");
        }
        Opened::Refused => {}
    }
}

/// The source side's labels of a connection relayed as TCP. Built only once the connection is known not to be
/// HTTP: the HTTP path labels its requests itself, and the source's identity is formatted into them.
fn source_labels(source: &WorkloadInfo) -> ConnectionLabels {
    ConnectionLabels::new("source").with_source(&source.labels)
}

/// Declared ports decide; undeclared ones are sniffed.
async fn is_http(tcp: &TcpStream, protocol: Protocol) -> bool {
    match protocol {
        Protocol::Http | Protocol::Http2 => true,
        Protocol::Tcp => false,
        Protocol::Unknown => crate::http::detect::sniff(tcp).await != crate::http::detect::Detected::Other,
    }
}

/// A connection to a TCP service port: the DestinationPolicy's balancer picks an endpoint among those outlier
/// detection has not ejected; one that fails to connect counts as a gateway error against it, and the next
/// is tried, at most [`MAX_CONNECT_ATTEMPTS`] endpoints in all and all within `connect_timeout`, before any
/// byte of the client's is sent.
async fn to_service(
    ctx: &Arc<ProxyContext>,
    client: TcpStream,
    (state, source): (&State, &WorkloadInfo),
    backend: &TcpBackend,
    connect_timeout: Duration,
    labels: ConnectionLabels,
) {
    if !backend.has_endpoints() {
        ctx.metrics.refused("outbound", Refusal::UpstreamUnreachable);
        ConnectionRecord::refused(&ctx.metrics, labels, ResponseFlag::NoHealthyUpstream);
        warn!(source = %source.name(), service = %backend.name, "no upstream: the service has no ready endpoint");
        return;
    }
    let deadline = Instant::now() + connect_timeout;
    let mut tried = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
    let mut last_failure = None;
    while tried.len() < MAX_CONNECT_ATTEMPTS {
        let now = Instant::now();
        let Some(remaining) = deadline.checked_duration_since(now).filter(|d| !d.is_zero()) else { break };
        let Some(target) = backend.pick(source.workload.address, &tried, now) else { break };
        tried.push(target);
        let mut load = backend.balancer.start(target);
        let opened = Box::pin(open(ctx, state, source, target, remaining, &labels)).await;
        let result = if matches!(opened, Opened::Failed { .. }) { Connect::Failed } else { Connect::Established };
        if !matches!(opened, Opened::Refused) {
            backend.outlier.record(target, &result, Instant::now());
        }
        report_ejections(ctx, backend);
        match opened {
            Opened::Connected(upstream) => {
                // Open connections are the load: in flight until the relay ends, weighed by connect time.
                load.set_latency(now.elapsed());
                // The upstream holds its own copy of the labels for the connection's record, and the endpoints
                // tried are no longer needed: neither should stay allocated for the connection's life.
                drop((labels, tried));
                Box::pin(upstream.relay(ctx, client)).await;
                return;
            }
            Opened::LocalHttp { caller, destination, target, labels } => {
                Box::pin(serve_stream(ctx, client, caller, destination, target, labels)).await;
                return;
            }
            Opened::Refused => return,
            Opened::Failed { refusal, error } => {
                load.failed();
                debug!(source = %source.name(), service = %backend.name, %target, %error, "endpoint failed to connect");
                last_failure = Some((target, refusal, error));
            }
        }
    }
    match last_failure {
        Some((target, refusal, error)) => {
            failed(ctx, labels.with_upstream(target), refusal);
            warn!(source = %source.name(), service = %backend.name, tried = ?tried, %error, "no endpoint could be connected to");
        }
        None => {
            failed(ctx, labels, Some(Refusal::UpstreamUnreachable));
            warn!(source = %source.name(), service = %backend.name, ?connect_timeout, "no endpoint tried within the connect timeout");
        }
    }
}

/// A connection that found no upstream: counted as opened and closed with `UF`.
fn failed(ctx: &ProxyContext, labels: ConnectionLabels, refusal: Option<Refusal>) {
    if let Some(refusal) = refusal {
        ctx.metrics.refused("outbound", refusal);
    }
    ConnectionRecord::refused(&ctx.metrics, labels, ResponseFlag::UpstreamConnectionFailure);
}

/// Outlier ejections into the metrics HTTP ports report too: `strait_circuit_breaker_total{event="ejection"}`
/// and `strait_outlier_ejected_endpoints`, by destination service.
fn report_ejections(ctx: &ProxyContext, backend: &TcpBackend) {
    let ejections = backend.take_new_ejections();
    if ejections > 0 {
        ctx.metrics.circuit.with_label_values(&[backend.name.as_str(), "ejection"]).inc_by(ejections);
    }
    ctx.metrics.set_ejected_endpoints(&backend.name, backend.outlier.ejected_count(Instant::now()));
}
