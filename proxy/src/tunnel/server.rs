//! The tunnel's server side (15008): TLS with the certificate of the workload the peer dialled, HTTP/2, and one
//! CONNECT stream per proxied connection, each handed to the destination side (`tcp::inbound`, or
//! `http::inbound` for HTTP endpoints).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use strait_certs::Identity;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{H2Stream, CONNECTION_WINDOW, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, STREAM_WINDOW};
use crate::context::ProxyContext;
use crate::drain::Watch;
use crate::policy::Caller;
use crate::state::State;
use crate::tcp::inbound::{authorize, connect_pod, relay, source_labels_from_state, with_endpoint_service};
use crate::tcp::socket::{accept_until_drained, canonical, canonical_ip, original_destination};
use crate::telemetry::flags::ResponseFlag;
use crate::telemetry::labels::ConnectionLabels;
use crate::telemetry::metrics::Refusal;
use crate::telemetry::record::ConnectionRecord;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a tunnel connection was refused before any stream was served.
#[derive(Debug, thiserror::Error)]
enum ServerError {
    #[error("no original destination: {0}")]
    NoOriginalDestination(std::io::Error),
    #[error("{0} is not a meshed workload on this node (the peer's view of the mesh may be stale)")]
    UnknownDestination(std::net::IpAddr),
    #[error("no certificate for {identity} yet: {source}")]
    NoCertificate { identity: Identity, source: strait_certs::CertError },
    #[error("TLS handshake failed ({reason}): {source}")]
    Handshake { reason: &'static str, source: std::io::Error },
    #[error("TLS handshake timed out after {TLS_HANDSHAKE_TIMEOUT:?}")]
    HandshakeTimeout,
    #[error("the peer's certificate names no mesh identity: {0}")]
    PeerIdentity(String),
    #[error("not an HTTP/2 tunnel: {0}")]
    NotHttp2(h2::Error),
    #[error("the peer sent no HTTP/2 preface within {TLS_HANDSHAKE_TIMEOUT:?}")]
    Http2HandshakeTimeout,
}

pub(crate) async fn serve(listener: TcpListener, ctx: Arc<ProxyContext>) {
    let drain = ctx.drain.clone();
    accept_until_drained(listener, &drain, |tcp, peer, watch| {
        let ctx = ctx.clone();
        async move {
            if let Err(reason) = tunnel_connection(tcp, peer, &ctx, watch).await {
                warn!(%peer, %reason, "tunnel connection refused");
            }
        }
    })
    .await
}

async fn tunnel_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    ctx: &Arc<ProxyContext>,
    mut drain: Watch,
) -> Result<(), ServerError> {
    // TCP_NODELAY comes from the listener (see `bind_socket`).
    let local = original_destination(&tcp, ctx.capture).map_err(ServerError::NoOriginalDestination)?;
    // The certificate must be chosen before anything but the ClientHello is read: the address the peer dialed
    // names the workload, hence the identity to present.
    let state = ctx.state.current();
    let local_ip = canonical_ip(local.ip());
    let Some(identity) = state.local_workload(local_ip).and_then(|w| w.identity.clone()) else {
        ctx.metrics.refused("tunnel", Refusal::UnknownDestination);
        return Err(ServerError::UnknownDestination(local_ip));
    };
    if let Err(source) = ctx.certs.get_or_fetch(&identity).await {
        return Err(ServerError::NoCertificate { identity, source });
    }
    let acceptor = TlsAcceptor::from(ctx.certs.server_config(&identity));
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(source)) => {
            let reason = strait_certs::classify_tls_error(&source);
            ctx.metrics.tls_handshake_failure("inbound", reason);
            return Err(ServerError::Handshake { reason: reason.as_str(), source });
        }
        Err(_) => {
            ctx.metrics.tls_handshake_failure("inbound", strait_certs::TlsFailureReason::Other);
            return Err(ServerError::HandshakeTimeout);
        }
    };
    let peer_identity =
        strait_certs::peer_identity(tls.get_ref().1).map_err(|e| ServerError::PeerIdentity(e.to_string()))?;
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        // One peer proxy cannot open unbounded streams or send unbounded headers (the pool opens at most
        // this many streams per connection and dials another connection beyond).
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .handshake::<_, Bytes>(tls);
    let mut connection = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            ctx.metrics.refused("tunnel", Refusal::BadRequest);
            return Err(ServerError::NotHttp2(e));
        }
        Err(_) => {
            ctx.metrics.refused("tunnel", Refusal::BadRequest);
            return Err(ServerError::Http2HandshakeTimeout);
        }
    };
    debug!(%peer, peer_identity = %peer_identity, local = %identity, "tunnel connection established");
    let caller = Caller { identity: Some(peer_identity), address: peer.ip() };
    let mut going_away = false;
    loop {
        let stream = tokio::select! {
            stream = connection.accept() => stream,
            () = drain.signaled(), if !going_away => {
                // GOAWAY: the peer's pool opens its next streams elsewhere (on a replacement proxy); the streams
                // already open go on, and `accept` ends once they are done.
                debug!(%peer, "draining: GOAWAY to the peer proxy");
                connection.graceful_shutdown();
                going_away = true;
                continue;
            }
        };
        match stream {
            Some(Ok((request, respond))) => {
                let ctx = ctx.clone();
                let caller = caller.clone();
                let identity = identity.clone();
                let watch = drain.clone();
                tokio::spawn(async move {
                    tunnel_stream(request, respond, caller, identity, ctx).await;
                    drop(watch);
                });
            }
            Some(Err(e)) => {
                debug!(%peer, error = %e, "tunnel connection closed");
                break;
            }
            None => break,
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
    let Some(target) = connect_target(&authority) else {
        ctx.metrics.refused("tunnel", Refusal::BadRequest);
        warn!(%authority, "CONNECT authority is not <pod ip>:<port>");
        respond_status(&mut respond, StatusCode::BAD_REQUEST, "CONNECT authority must be <pod ip>:<port>");
        return;
    };
    if !ctx.discovery.resolve_caller(&ctx.state, request.headers()).await {
        return respond_status(&mut respond, StatusCode::SERVICE_UNAVAILABLE, "the calling pod is not discovered yet");
    }
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
        .with_destination(&destination.labels)
        .with_source_principal(caller.identity.as_ref().map(|i| i.uri()).unwrap_or_default())
        .mutual_tls(true);
    let labels = source_labels_from_state(&state, &caller, labels);
    let labels = with_endpoint_service(&state, target, labels.with_upstream(target));
    if state.is_http_endpoint(target) {
        // HTTP is authorized per request (a denial is a 403 the caller can read), so the tunnel opens first.
        let Ok(send) = respond.send_response(Response::new(()), false) else { return };
        let downstream = H2Stream::new(send, request.into_body()).ends_on_drop();
        // Boxed: an idle relayed stream's task should not be as large as the HTTP server's state.
        Box::pin(crate::http::inbound::serve(&ctx, downstream, caller, destination, target, labels)).await;
        return;
    }
    if let Err(reason) = authorize(&ctx, &state, &caller, &destination, target.port()) {
        respond_status(&mut respond, StatusCode::UNAUTHORIZED, &reason);
        ConnectionRecord::refused(&ctx.metrics, labels, ResponseFlag::Unauthorized);
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
        .and_then(super::parse_forwarded_for)
        .map(canonical_ip);
    match claimed {
        Some(ip) if state.workload(ip).is_some_and(|w| w.identity.is_some() && w.identity == caller.identity) => {
            Caller { address: ip, ..caller }
        }
        _ => caller,
    }
}

/// The pod address a CONNECT names: `<ip>:<port>` (IPv6 in brackets), nothing else (no names to resolve).
fn connect_target(authority: &str) -> Option<SocketAddr> {
    authority.parse::<SocketAddr>().ok().map(canonical)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::connect_target;

    #[test]
    fn only_addresses_are_targets() {
        assert_eq!(connect_target("10.1.0.2:8080"), Some(([10, 1, 0, 2], 8080).into()));
        assert!(connect_target("[fd00::2]:80").is_some());
        for bad in ["", "reviews:80", "10.1.0.2", "10.1.0.2:99999", "[fd00::2]", "10.1.0.2:80/x"] {
            assert_eq!(connect_target(bad), None, "{bad}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// A peer's CONNECT authority is arbitrary text: it names an address or is refused, never a panic.
        #[test]
        fn any_authority_is_an_address_or_refused(text in ".{0,64}") {
            let _ = connect_target(&text);
        }

        #[test]
        fn every_address_survives_as_an_authority(addr in any::<std::net::SocketAddr>()) {
            let expected = crate::tcp::socket::canonical(addr);
            prop_assert_eq!(connect_target(&expected.to_string()), Some(expected));
        }
    }
}
