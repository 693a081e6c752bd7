//! The destination side of a connection, wherever it arrived (the tunnel, plaintext capture, or a pod on this
//! same node): authorize, connect to the pod, copy, and keep re-checking authorization while it lives.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::copy::ReadReady;
use crate::context::ProxyContext;
use crate::policy::{Caller, Decision};
use crate::state::{State, WorkloadInfo};
use crate::telemetry::flags::ResponseFlag;
use crate::telemetry::labels::ConnectionLabels;
use crate::telemetry::metrics::Refusal;
use crate::telemetry::record::ConnectionRecord;

/// Names the service in front of the destination endpoint, when the caller's side did not already.
pub(crate) fn with_endpoint_service(state: &State, target: SocketAddr, labels: ConnectionLabels) -> ConnectionLabels {
    match state.endpoint_service(target) {
        Some(service) if labels.service.host.is_empty() => labels.with_service(service),
        _ => labels,
    }
}

/// Fills the source labels from the workload the caller's address names, when the caller is a known workload.
pub(crate) fn source_labels_from_state(state: &State, caller: &Caller, labels: ConnectionLabels) -> ConnectionLabels {
    match state.workload(caller.address) {
        Some(w) if w.identity == caller.identity => labels.with_source(&w.labels),
        _ => labels,
    }
}

pub(crate) fn authorize(
    ctx: &ProxyContext,
    state: &State,
    caller: &Caller,
    destination: &WorkloadInfo,
    port: u16,
) -> Result<(), String> {
    let principal = caller.identity.as_ref().map(|i| i.principal());
    match state.policies.evaluate(&caller.request(&principal, &destination.workload, port)) {
        Decision::Allow => Ok(()),
        Decision::Deny(denial) => {
            ctx.metrics.policy_denied("destination", &denial.policy, &denial.reason.to_string());
            info!(
                source = principal.as_deref().unwrap_or("(plaintext)"),
                source_ip = %caller.address,
                destination = %destination.workload.name,
                namespace = %destination.workload.namespace,
                port,
                policy = %denial.policy,
                reason = %denial.reason,
                "connection denied by policy"
            );
            Err(format!("denied by {}: {}", denial.policy, denial.reason))
        }
    }
}

pub(crate) async fn connect_pod(ctx: &ProxyContext, target: SocketAddr) -> std::io::Result<TcpStream> {
    connect_pod_within(ctx, target, ctx.connect_timeout).await
}

/// [`connect_pod`] within `timeout` rather than the proxy's default.
pub(crate) async fn connect_pod_within(
    ctx: &ProxyContext,
    target: SocketAddr,
    timeout: std::time::Duration,
) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(timeout, ctx.outgoing.connect(target)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Copies until both sides are done, or until a new configuration no longer allows the connection.
pub(crate) async fn relay<D>(
    ctx: &ProxyContext,
    mut downstream: D,
    mut upstream: TcpStream,
    caller: Caller,
    destination: Arc<WorkloadInfo>,
    port: u16,
    labels: ConnectionLabels,
) where
    D: ReadReady,
{
    let mut record = ConnectionRecord::open(&ctx.metrics, labels);
    let revoked = until_denied(ctx.state.subscribe(), caller, destination.clone(), port);
    tokio::select! {
        result = super::copy::bidirectional(&mut downstream, &mut upstream) => {
            if let Err(e) = &result {
                debug!(error = %e, "inbound connection ended with an error");
            }
            record.relayed(&result);
        }
        reason = revoked => {
            info!(destination = %destination.workload.name, %reason, "closing a live connection that policy no longer allows");
            record.end(ResponseFlag::Unauthorized);
        }
    }
}

/// Resolves when a configuration change denies this connection (policies are re-checked on every change).
async fn until_denied(
    mut states: watch::Receiver<Arc<State>>,
    caller: Caller,
    destination: Arc<WorkloadInfo>,
    port: u16,
) -> String {
    loop {
        if states.changed().await.is_err() {
            return std::future::pending().await;
        }
        let state = states.borrow_and_update().clone();
        let Some(current) = state.local_workload(destination.workload.address) else {
            return "destination left this node".into();
        };
        // Made at each change rather than held: an idle connection should not carry it for its life.
        let principal = caller.identity.as_ref().map(|i| i.principal());
        if let Decision::Deny(denial) = state.policies.evaluate(&caller.request(&principal, &current.workload, port)) {
            return format!("denied by {}: {}", denial.policy, denial.reason);
        }
    }
}

/// The destination side's labels of a connection from a pod on this node (no tunnel: this proxy reports
/// both sides).
pub(crate) fn local_destination_labels(
    state: &State,
    caller: &Caller,
    target: SocketAddr,
    labels: ConnectionLabels,
) -> ConnectionLabels {
    let labels = ConnectionLabels { reporter: "destination", ..labels }.mutual_tls(caller.identity.is_some());
    with_endpoint_service(state, target, labels.with_upstream(target))
}

/// A pod connecting to another pod on the same node: the destination's checks apply, with the source's
/// identity, but no tunnel is needed. `stream` is the client's connection (or one end of an in-memory pipe).
pub(crate) async fn serve_stream<S>(
    ctx: &Arc<ProxyContext>,
    stream: S,
    caller: Caller,
    destination: Arc<WorkloadInfo>,
    target: SocketAddr,
    labels: ConnectionLabels,
) where
    S: ReadReady + Send + 'static,
{
    let state = ctx.state.current();
    let labels = local_destination_labels(&state, &caller, target, labels);
    if state.is_http_endpoint(target) {
        // Boxed: an idle relayed connection's task should not be as large as the HTTP server's state.
        Box::pin(crate::http::inbound::serve(ctx, stream, caller, destination, target, labels)).await;
        return;
    }
    if authorize(ctx, &state, &caller, &destination, target.port()).is_err() {
        ConnectionRecord::refused(&ctx.metrics, labels, ResponseFlag::Unauthorized);
        return;
    }
    match connect_pod(ctx, target).await {
        Ok(upstream) => relay(ctx, stream, upstream, caller, destination, target.port(), labels).await,
        Err(e) => {
            ctx.metrics.refused("outbound", Refusal::UpstreamUnreachable);
            warn!(%target, error = %e, "local pod unreachable");
        }
    }
}
