//! Connections from local pods (15001): who is calling, where to, and how to get there.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use strait_api::Protocol;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::egress::{Egress, BLACKHOLE, PASSTHROUGH};
use super::inbound::serve_stream;
use super::socket::{accept_until_drained, original_destination};
use crate::context::ProxyContext;
use crate::plan::{plan, Upstream};
use crate::policy::Caller;
use crate::state::{State, WorkloadInfo};
use crate::telemetry::flags::ResponseFlag;
use crate::telemetry::labels::ConnectionLabels;
use crate::telemetry::metrics::Refusal;
use crate::telemetry::record::ConnectionRecord;
use crate::tunnel::PoolKey;

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
    let _ = tcp.set_nodelay(true);
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
    let mut labels = ConnectionLabels::new("source").with_source(&source);
    let mut _slot = None;
    if let Some(service) = state.service(original) {
        if is_http(&tcp, service.port.protocol()).await {
            crate::http::outbound::serve(ctx.clone(), tcp, source, service.clone()).await;
            return;
        }
        labels = labels.with_service(&service.service);
        match ctx.connection_limits.acquire(&state, &service.service) {
            Ok(slot) => _slot = slot,
            Err(max) => {
                let name = service.service.hostname();
                ctx.metrics.circuit.with_label_values(&[name.as_str(), "overflow"]).inc();
                ConnectionRecord::refused(&ctx.metrics, labels, ResponseFlag::UpstreamOverflow);
                warn!(source = %source.name(), service = %name, max, "refused: connectionPool.tcp.maxConnections reached");
                return;
            }
        }
    }
    let mut target = match service_endpoint(&state, original) {
        Ok(target) => target,
        Err(reason) => {
            ctx.metrics.refused("outbound", Refusal::UpstreamUnreachable);
            ConnectionRecord::refused(&ctx.metrics, labels, ResponseFlag::NoHealthyUpstream);
            warn!(source = %source.name(), destination = %original, %reason, "no upstream");
            return;
        }
    };
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
    // `connectionPool.tcp.connectTimeout` of the service, else the proxy's own bound.
    let connect_timeout = state
        .service(original)
        .and_then(|s| state.destination_settings(&s.service).connect_timeout)
        .unwrap_or(ctx.connect_timeout);
    match plan(&state, &source, target) {
        Upstream::Passthrough { target } => {
            passthrough(&ctx, tcp, target, connect_timeout, labels.with_upstream(target)).await
        }
        Upstream::Local { destination, target } => {
            let labels = labels.with_destination(&destination).with_upstream(target);
            let caller = Caller { identity: source.identity.clone(), address: source.workload.address };
            serve_stream(&ctx, tcp, caller, destination, target, labels).await;
        }
        Upstream::Tunnel { destination, target, dial, key } => {
            let labels = labels.with_destination(&destination).with_upstream(target).mutual_tls(true);
            tunnel(&ctx, tcp, &source, (&key, dial, target), connect_timeout, labels).await;
        }
        Upstream::Deny(reason) => {
            ctx.metrics.refused("outbound", Refusal::UnknownSource);
            warn!(source = %source.name(), destination = %original, %reason, "refused");
        }
    }
}

/// Declared ports decide; undeclared ones are sniffed.
async fn is_http(tcp: &TcpStream, protocol: Protocol) -> bool {
    match protocol {
        Protocol::Http | Protocol::Http2 => true,
        Protocol::Tcp => false,
        Protocol::Unknown => crate::http::detect::sniff(tcp).await != crate::http::detect::Detected::Other,
    }
}

/// A service address picks one of its ready endpoints; any other address is its own endpoint.
fn service_endpoint(state: &State, original: SocketAddr) -> Result<SocketAddr, String> {
    let Some(service) = state.service(original) else { return Ok(original) };
    let ready: Vec<_> = service.service.endpoints.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return Err(format!("service {}/{} has no ready endpoint", service.service.namespace, service.service.name));
    }
    let endpoint = ready[rand::rng().random_range(0..ready.len())];
    Ok(SocketAddr::new(endpoint.address, service.port.target()))
}

/// Through the tunnel: `(pool key, address dialled, CONNECT target)`; the stream must be open (the far side
/// connected to the pod) within `connect_timeout`.
async fn tunnel(
    ctx: &ProxyContext,
    mut client: TcpStream,
    source: &WorkloadInfo,
    (key, dial, target): (&PoolKey, SocketAddr, SocketAddr),
    connect_timeout: std::time::Duration,
    labels: ConnectionLabels,
) {
    let mut record = ConnectionRecord::open(&ctx.metrics, labels);
    let opened = tokio::time::timeout(connect_timeout, ctx.pool.open(key, dial, target, source.workload.address));
    let mut stream = match opened.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ctx.metrics.refused("outbound", Refusal::TunnelFailed);
            record.end(Refusal::TunnelFailed.response_flag());
            warn!(source = %source.name(), %target, error = %e, "tunnel failed");
            return;
        }
        Err(_) => {
            ctx.metrics.refused("outbound", Refusal::TunnelFailed);
            record.end(Refusal::TunnelFailed.response_flag());
            warn!(source = %source.name(), %target, ?connect_timeout, "tunnel not open within the connect timeout");
            return;
        }
    };
    let result = super::copy::bidirectional(&mut client, &mut stream).await;
    if let Err(e) = &result {
        debug!(%target, error = %e, "tunnelled connection ended with an error");
    }
    record.relayed(&result);
}

async fn passthrough(
    ctx: &ProxyContext,
    mut client: TcpStream,
    target: SocketAddr,
    connect_timeout: std::time::Duration,
    labels: ConnectionLabels,
) {
    let mut record = ConnectionRecord::open(&ctx.metrics, labels);
    let connected = tokio::time::timeout(connect_timeout, ctx.outgoing.connect(target)).await;
    let mut upstream = match connected.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())) {
        Ok(s) => s,
        Err(e) => {
            record.end(ResponseFlag::UpstreamConnectionFailure);
            debug!(%target, error = %e, "passthrough connect failed");
            return;
        }
    };
    record.relayed(&super::copy::bidirectional(&mut client, &mut upstream).await);
}
