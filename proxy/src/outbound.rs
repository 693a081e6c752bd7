//! Connections from local pods (15001): who is calling, where to, and how to get there.

use std::net::SocketAddr;
use std::sync::Arc;

use rand::Rng;
use strait_api::Protocol;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::inbound::{accept_error, serve_stream, Caller};
use crate::metrics::{ConnectionLabels, Refusal};
use crate::proxy::ProxyContext;
use crate::socket::{canonical, original_destination};
use crate::state::{State, WorkloadInfo};
use crate::tunnel::PoolKey;

pub async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { connection(tcp, canonical(peer), ctx).await });
            }
            Err(e) => accept_error(&e).await,
        }
    }
}

/// Where a connection goes once the destination is resolved.
enum Route {
    /// A meshed workload: through the tunnel, or straight to it when it is on this node.
    Mesh { destination: Arc<WorkloadInfo>, target: SocketAddr },
    /// Not in the mesh: connect as the pod would have.
    Passthrough { target: SocketAddr },
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
    let state = ctx.state.current();
    let Some(source) = state.local_workload(peer.ip()).cloned() else {
        ctx.metrics.refused("outbound", Refusal::UnknownSource);
        warn!(%peer, destination = %original, "refusing outbound connection: the source is not a meshed workload on this node");
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
                ctx.metrics.connection_opened(&labels);
                ctx.metrics.connection_closed(&labels, "UO", 0, 0);
                warn!(source = %source.name(), service = %name, max, "refused: connectionPool.tcp.maxConnections reached");
                return;
            }
        }
    }
    let route = match resolve(&state, original) {
        Ok(route) => route,
        Err(reason) => {
            ctx.metrics.refused("outbound", Refusal::UpstreamUnreachable);
            ctx.metrics.connection_opened(&labels);
            ctx.metrics.connection_closed(&labels, "UH", 0, 0);
            warn!(source = %source.name(), destination = %original, %reason, "no upstream");
            return;
        }
    };
    match route {
        Route::Passthrough { target } => passthrough(&ctx, tcp, target, labels.with_upstream(target)).await,
        Route::Mesh { destination, target } => {
            let labels = labels.with_destination(&destination).with_upstream(target);
            if destination.workload.node == state.node {
                let caller = Caller { identity: source.identity.clone(), address: source.workload.address };
                serve_stream(&ctx, tcp, caller, destination, target, labels).await;
            } else {
                tunnel(&ctx, tcp, &source, &destination, target, labels.mutual_tls(true)).await;
            }
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

/// A service address picks one of its ready endpoints; a pod address is that pod; anything else is outside the
/// mesh.
fn resolve(state: &State, original: SocketAddr) -> Result<Route, String> {
    let target = match state.service(original) {
        Some(service) => {
            let ready: Vec<_> = service.service.endpoints.iter().filter(|e| e.ready).collect();
            if ready.is_empty() {
                return Err(format!(
                    "service {}/{} has no ready endpoint",
                    service.service.namespace, service.service.name
                ));
            }
            let endpoint = ready[rand::rng().random_range(0..ready.len())];
            SocketAddr::new(endpoint.address, service.port.target())
        }
        None => original,
    };
    match state.workload(target.ip()) {
        Some(w) if w.identity.is_some() => Ok(Route::Mesh { destination: w.clone(), target }),
        _ => Ok(Route::Passthrough { target }),
    }
}

async fn tunnel(
    ctx: &ProxyContext,
    mut client: TcpStream,
    source: &WorkloadInfo,
    destination: &WorkloadInfo,
    target: SocketAddr,
    labels: ConnectionLabels,
) {
    let (Some(source_id), Some(destination_id)) = (source.identity.clone(), destination.identity.clone()) else {
        return;
    };
    let key = PoolKey { source: source_id, node: destination.workload.node.clone(), destination: destination_id };
    let dial = SocketAddr::new(destination.workload.address, destination.workload.tunnel_port);
    ctx.metrics.connection_opened(&labels);
    let mut stream = match ctx.pool.open(&key, dial, target, source.workload.address).await {
        Ok(s) => s,
        Err(e) => {
            ctx.metrics.refused("outbound", Refusal::TunnelFailed);
            ctx.metrics.connection_closed(&labels, Refusal::TunnelFailed.response_flag(), 0, 0);
            warn!(source = %source.name(), %target, error = %e, "tunnel failed");
            return;
        }
    };
    let (flags, sent, received) = match crate::copy::bidirectional(&mut client, &mut stream).await {
        Ok((sent, received)) => ("-", sent, received),
        Err(e) => {
            debug!(%target, error = %e, "tunnelled connection ended with an error");
            ("UC", 0, 0)
        }
    };
    ctx.metrics.connection_closed(&labels, flags, sent, received);
}

async fn passthrough(ctx: &ProxyContext, mut client: TcpStream, target: SocketAddr, labels: ConnectionLabels) {
    ctx.metrics.connection_opened(&labels);
    let mut upstream = match ctx.outgoing.connect(target).await {
        Ok(s) => s,
        Err(e) => {
            ctx.metrics.connection_closed(&labels, "UF", 0, 0);
            debug!(%target, error = %e, "passthrough connect failed");
            return;
        }
    };
    let (flags, sent, received) = match crate::copy::bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => ("-", sent, received),
        Err(_) => ("UC", 0, 0),
    };
    ctx.metrics.connection_closed(&labels, flags, sent, received);
}
