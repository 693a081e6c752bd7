//! Where traffic for local workloads arrives: the mTLS tunnel (15008), plaintext capture (15006), and
//! connections from a pod on this same node. All three end in the same place: authorize, connect to the pod,
//! copy, and keep re-checking authorization while the connection lives.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use strait_api::MtlsMode;
use strait_certs::Identity;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::authz::{Decision, Request};
use crate::metrics::{ConnectionLabels, Refusal};
use crate::proxy::ProxyContext;
use crate::socket::{canonical, canonical_ip, original_destination};
use crate::state::{State, WorkloadInfo};
use crate::tunnel::{H2Stream, CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW};

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The caller, as far as the destination side can tell.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Verified by mTLS; `None` for plaintext.
    pub identity: Option<Identity>,
    pub address: IpAddr,
}

impl Caller {
    fn request<'a>(&'a self, principal: &'a Option<String>, destination: &'a WorkloadInfo, port: u16) -> Request<'a> {
        Request {
            source_principal: principal.as_deref(),
            source_namespace: self.identity.as_ref().map(|i| i.namespace()),
            source_ip: self.address,
            destination: &destination.workload,
            destination_port: port,
            http: None,
            l7_pending: false,
        }
    }
}

pub async fn serve_tunnel(listener: TcpListener, ctx: Arc<ProxyContext>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(reason) = tunnel_connection(tcp, canonical(peer), &ctx).await {
                        warn!(%peer, %reason, "tunnel connection refused");
                    }
                });
            }
            Err(e) => accept_error(&e).await,
        }
    }
}

/// Transient accept errors (out of file descriptors, aborted handshakes) must not end the listener.
pub async fn accept_error(e: &std::io::Error) {
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(20)).await;
}

async fn tunnel_connection(tcp: TcpStream, peer: SocketAddr, ctx: &Arc<ProxyContext>) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let local = original_destination(&tcp, ctx.capture).map_err(|e| format!("no original destination: {e}"))?;
    // The certificate must be chosen before anything but the ClientHello is read: the address the peer dialed
    // names the workload, hence the identity to present.
    let state = ctx.state.current();
    let Some(workload) = state.local_workload(canonical_ip(local.ip())).cloned() else {
        ctx.metrics.refused("tunnel", Refusal::UnknownDestination);
        return Err(format!("{} is not a meshed workload on this node", local.ip()));
    };
    let Some(identity) = workload.identity.clone() else {
        return Err("destination has no identity".into());
    };
    if let Err(e) = ctx.certs.get_or_fetch(&identity).await {
        return Err(format!("no certificate for {identity}: {e}"));
    }
    let acceptor = TlsAcceptor::from(ctx.certs.server_config(&identity));
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = strait_certs::classify_tls_error(&e);
            ctx.metrics.tls_handshake_failure("inbound", reason);
            return Err(format!("TLS handshake failed ({}): {e}", reason.as_str()));
        }
        Err(_) => {
            ctx.metrics.tls_handshake_failure("inbound", strait_certs::TlsFailureReason::Other);
            return Err("TLS handshake timed out".into());
        }
    };
    let peer_identity = strait_certs::peer_identity(tls.get_ref().1).map_err(|e| format!("peer identity: {e}"))?;
    let mut connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| {
            ctx.metrics.refused("tunnel", Refusal::BadRequest);
            format!("not an HTTP/2 tunnel: {e}")
        })?;
    debug!(%peer, peer_identity = %peer_identity, local = %identity, "tunnel connection established");
    let caller = Caller { identity: Some(peer_identity), address: peer.ip() };
    while let Some(stream) = connection.accept().await {
        match stream {
            Ok((request, respond)) => {
                let ctx = ctx.clone();
                let caller = caller.clone();
                let identity = identity.clone();
                tokio::spawn(async move { tunnel_stream(request, respond, caller, identity, ctx).await });
            }
            Err(e) => {
                debug!(%peer, error = %e, "tunnel connection closed");
                break;
            }
        }
    }
    Ok(())
}

fn respond_status(respond: &mut h2::server::SendResponse<Bytes>, status: StatusCode, message: &str) {
    let response = Response::builder().status(status).header("x-strait-reason", message).body(());
    match response {
        Ok(r) => {
            let _ = respond.send_response(r, true);
        }
        Err(_) => {
            let _ = respond.send_response(Response::new(()), true);
        }
    }
}

async fn tunnel_stream(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    caller: Caller,
    tls_identity: Identity,
    ctx: Arc<ProxyContext>,
) {
    if request.method() != Method::CONNECT {
        ctx.metrics.refused("tunnel", Refusal::BadRequest);
        warn!(method = %request.method(), "tunnel request is not CONNECT");
        respond_status(&mut respond, StatusCode::METHOD_NOT_ALLOWED, "only CONNECT is served on the tunnel port");
        return;
    }
    let authority = request.uri().authority().map(|a| a.as_str().to_string()).unwrap_or_default();
    let Ok(target) = authority.parse::<SocketAddr>().map(canonical) else {
        ctx.metrics.refused("tunnel", Refusal::BadRequest);
        warn!(%authority, "CONNECT authority is not <pod ip>:<port>");
        respond_status(&mut respond, StatusCode::BAD_REQUEST, "CONNECT authority must be <pod ip>:<port>");
        return;
    };
    let state = ctx.state.current();
    let caller = forwarded_caller(&state, &request, caller);
    let destination = match state.local_workload(target.ip()) {
        // The peer authenticated the identity it dialed; it may not use that to reach another identity.
        Some(w) if w.identity.as_ref() == Some(&tls_identity) => w.clone(),
        _ => {
            ctx.metrics.refused("tunnel", Refusal::UnknownDestination);
            warn!(%target, "CONNECT to a destination that is not this workload");
            respond_status(&mut respond, StatusCode::BAD_REQUEST, "unknown destination");
            return;
        }
    };
    let labels = ConnectionLabels::new("destination")
        .with_destination(&destination)
        .with_source_principal(caller.identity.as_ref().map(|i| i.uri()).unwrap_or_default())
        .mutual_tls(true);
    let labels = source_labels_from_state(&state, &caller, labels);
    let labels = with_endpoint_service(&state, target, labels.with_upstream(target));
    if state.is_http_endpoint(target) {
        // HTTP is authorized per request (a denial is a 403 the caller can read), so the tunnel opens first.
        let Ok(send) = respond.send_response(Response::new(()), false) else { return };
        let downstream = H2Stream::new(send, request.into_body());
        crate::http::inbound::serve(&ctx, downstream, caller, destination, target, labels).await;
        return;
    }
    if let Err(reason) = authorize(&ctx, &state, &caller, &destination, target.port()) {
        respond_status(&mut respond, StatusCode::UNAUTHORIZED, &reason);
        ctx.metrics.connection_opened(&labels);
        ctx.metrics.connection_closed(&labels, "UAEX", 0, 0);
        return;
    }
    let upstream = match connect_pod(&ctx, target).await {
        Ok(s) => s,
        Err(e) => {
            ctx.metrics.refused("tunnel", Refusal::UpstreamUnreachable);
            warn!(%target, error = %e, "local pod unreachable");
            respond_status(&mut respond, StatusCode::SERVICE_UNAVAILABLE, "destination pod refused the connection");
            return;
        }
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "peer went away before the tunnel was answered");
            return;
        }
    };
    let downstream = H2Stream::new(send, request.into_body());
    relay(&ctx, downstream, upstream, caller, destination, target.port(), labels).await;
}

/// The calling pod's own address, when the peer proxy names it in `Forwarded` and the workload there holds the
/// identity the handshake proved; otherwise the peer proxy's address stands for the caller.
fn forwarded_caller(state: &State, request: &http::Request<h2::RecvStream>, caller: Caller) -> Caller {
    let claimed = request
        .headers()
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::tunnel::parse_forwarded_for)
        .map(canonical_ip);
    match claimed {
        Some(ip) if state.workload(ip).is_some_and(|w| w.identity.is_some() && w.identity == caller.identity) => {
            Caller { address: ip, ..caller }
        }
        _ => caller,
    }
}

/// Names the service in front of the destination endpoint, when the caller's side did not already.
fn with_endpoint_service(state: &State, target: SocketAddr, labels: ConnectionLabels) -> ConnectionLabels {
    match state.endpoint_service(target) {
        Some(service) if labels.destination_service.is_empty() => labels.with_service(service),
        _ => labels,
    }
}

/// Fills the source labels from the workload the caller's address names, when the caller is a known workload.
fn source_labels_from_state(state: &State, caller: &Caller, labels: ConnectionLabels) -> ConnectionLabels {
    match state.workload(caller.address) {
        Some(w) if w.identity == caller.identity => labels.with_source(w),
        _ => labels,
    }
}

fn authorize(
    ctx: &ProxyContext,
    state: &State,
    caller: &Caller,
    destination: &WorkloadInfo,
    port: u16,
) -> Result<(), String> {
    let principal = caller.identity.as_ref().map(|i| i.principal());
    match state.policies.evaluate(&caller.request(&principal, destination, port)) {
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

async fn connect_pod(ctx: &ProxyContext, target: SocketAddr) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(ctx.connect_timeout, ctx.outgoing.connect(target)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Copies until both sides are done, or until a new configuration no longer allows the connection.
async fn relay<D>(
    ctx: &ProxyContext,
    mut downstream: D,
    mut upstream: TcpStream,
    caller: Caller,
    destination: Arc<WorkloadInfo>,
    port: u16,
    labels: ConnectionLabels,
) where
    D: AsyncRead + AsyncWrite + Unpin,
{
    ctx.metrics.connection_opened(&labels);
    let revoked = until_denied(ctx.state.subscribe(), caller.clone(), destination.clone(), port);
    let (flags, sent, received) = tokio::select! {
        result = crate::copy::bidirectional(&mut downstream, &mut upstream) => match result {
            Ok((to_pod, from_pod)) => ("-", to_pod, from_pod),
            Err(e) => {
                debug!(error = %e, "inbound connection ended with an error");
                ("UC", 0, 0)
            }
        },
        reason = revoked => {
            info!(destination = %destination.workload.name, %reason, "closing a live connection that policy no longer allows");
            ("UAEX", 0, 0)
        }
    };
    ctx.metrics.connection_closed(&labels, flags, sent, received);
}

/// Resolves when a configuration change denies this connection (policies are re-checked on every change).
async fn until_denied(
    mut states: watch::Receiver<Arc<State>>,
    caller: Caller,
    destination: Arc<WorkloadInfo>,
    port: u16,
) -> String {
    let principal = caller.identity.as_ref().map(|i| i.principal());
    loop {
        if states.changed().await.is_err() {
            return std::future::pending().await;
        }
        let state = states.borrow_and_update().clone();
        let Some(current) = state.local_workload(destination.workload.address) else {
            return "destination left this node".into();
        };
        if let Decision::Deny(denial) = state.policies.evaluate(&caller.request(&principal, current, port)) {
            return format!("denied by {}: {}", denial.policy, denial.reason);
        }
    }
}

/// Plaintext that reached a local pod without the tunnel: refused in STRICT namespaces, passed (with no
/// identity) in PERMISSIVE ones.
pub async fn serve_plaintext(listener: TcpListener, ctx: Arc<ProxyContext>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move { plaintext_connection(tcp, canonical(peer), ctx).await });
            }
            Err(e) => accept_error(&e).await,
        }
    }
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
    let labels = ConnectionLabels::new("destination").with_destination(&destination).mutual_tls(false);
    let labels = with_endpoint_service(&state, target, labels.with_upstream(target));
    if state.mtls_mode(&destination.workload.namespace) == MtlsMode::Strict {
        ctx.metrics.refused("inbound_plaintext", Refusal::PlaintextInStrict);
        ctx.metrics.connection_opened(&labels);
        ctx.metrics.connection_closed(&labels, Refusal::PlaintextInStrict.response_flag(), 0, 0);
        info!(%peer, %target, namespace = %destination.workload.namespace, "plaintext refused: namespace is STRICT");
        return;
    }
    let caller = Caller { identity: None, address: peer.ip() };
    if authorize(&ctx, &state, &caller, &destination, target.port()).is_err() {
        ctx.metrics.connection_opened(&labels);
        ctx.metrics.connection_closed(&labels, "UAEX", 0, 0);
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

/// A pod connecting to another pod on the same node: the destination's checks apply, with the source's
/// identity, but no tunnel is needed. `stream` is the client's connection (or one end of an in-memory pipe).
pub async fn serve_stream<S>(
    ctx: &Arc<ProxyContext>,
    stream: S,
    caller: Caller,
    destination: Arc<WorkloadInfo>,
    target: SocketAddr,
    labels: ConnectionLabels,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = ctx.state.current();
    let labels = ConnectionLabels { reporter: "destination", ..labels }.mutual_tls(caller.identity.is_some());
    let labels = with_endpoint_service(&state, target, labels.with_upstream(target));
    if state.is_http_endpoint(target) {
        crate::http::inbound::serve(ctx, stream, caller, destination, target, labels).await;
        return;
    }
    if authorize(ctx, &state, &caller, &destination, target.port()).is_err() {
        ctx.metrics.connection_opened(&labels);
        ctx.metrics.connection_closed(&labels, "UAEX", 0, 0);
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
