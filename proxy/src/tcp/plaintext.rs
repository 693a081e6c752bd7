//! Plaintext that reached a local pod without the tunnel (15006): refused where the workload's port is STRICT,
//! passed with no identity where it is PERMISSIVE (PeerAuthentication per workload, port, namespace and mesh,
//! then the namespace's setting), after the same authorization as tunnelled traffic.

use std::net::SocketAddr;
use std::sync::Arc;

use strait_api::MtlsMode;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use super::inbound::{authorize, connect_pod, relay, with_endpoint_service};
use super::socket::{accept_until_drained, original_destination};
use crate::context::ProxyContext;
use crate::policy::Caller;
use crate::telemetry::flags::ResponseFlag;
use crate::telemetry::labels::ConnectionLabels;
use crate::telemetry::metrics::Refusal;
use crate::telemetry::record::ConnectionRecord;

pub(crate) async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>) {
    let drain = ctx.drain.clone();
    accept_until_drained(listener, &drain, |tcp, peer, watch| {
        let ctx = ctx.clone();
        async move {
            plaintext_connection(tcp, peer, ctx).await;
            drop(watch);
        }
    })
    .await
}

async fn plaintext_connection(tcp: TcpStream, peer: SocketAddr, ctx: Arc<ProxyContext>) {
    let target = match original_destination(&tcp, ctx.capture) {
        Ok(t) => t,
        Err(e) => {
            warn!(%peer, error = %e, "plaintext connection without an original destination");
            return;
        }
    };
    let state = ctx.state.current();
    let Some(destination) = state.local_workload(target.ip()).cloned() else {
        ctx.metrics.refused("inbound_plaintext", Refusal::UnknownDestination);
        warn!(%peer, %target, "plaintext connection for a destination that is not a meshed workload here");
        return;
    };
    let labels = ConnectionLabels::new("destination").with_destination(&destination.labels).mutual_tls(false);
    let labels = with_endpoint_service(&state, target, labels.with_upstream(target));
    let (mode, decided_by) = state.mtls_mode(&destination.workload, target.port());
    if mode == MtlsMode::Strict {
        ctx.metrics.refused("inbound_plaintext", Refusal::PlaintextInStrict);
        ConnectionRecord::refused(&ctx.metrics, labels, Refusal::PlaintextInStrict.response_flag());
        info!(%peer, %target, workload = %destination.name(), ?decided_by, "plaintext refused: STRICT");
        return;
    }
    let caller = Caller { identity: None, address: peer.ip() };
    if authorize(&ctx, &state, &caller, &destination, target.port()).is_err() {
        ConnectionRecord::refused(&ctx.metrics, labels, ResponseFlag::Unauthorized);
        return;
    }
    match connect_pod(&ctx, target).await {
        Ok(upstream) => relay(&ctx, tcp, upstream, caller, destination, target.port(), labels).await,
        Err(e) => {
            ctx.metrics.refused("inbound_plaintext", Refusal::UpstreamUnreachable);
            warn!(%target, error = %e, "local pod unreachable");
        }
    }
}
