//! The TLS + HTTP/2 endpoint proxies talk to (port 15012): authentication and routing to the stream and
//! signing handlers. The protocol is described in `control/PROTOCOL.md`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use strait_api::protocol::{
    negotiate, CertificateRequest, SubscribeRequest, MAX_SUBSCRIBE_BODY, PROTOCOL_DELTA, PROTOCOL_HEADER,
    PROTOCOL_ON_DEMAND,
};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::auth::{bearer, AuthError, TokenVerifier};
use crate::interest::{ConnectionId, SubscribeError, Subscriptions};
use crate::push::{serve_stream, ChannelBody, Negotiated, PublishedRx};
use crate::signer::Signer;
use crate::stats::Stats;

pub use strait_api::protocol::{SIGN_PATH, STREAM_PATH, SUBSCRIBE_PATH};
pub const NODE_HEADER: &str = "x-strait-node";

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_SIGN_BODY: usize = 64 * 1024;
const FIRST_CONFIG_WAIT: Duration = Duration::from_secs(5);

type Body = BoxBody<Bytes, Infallible>;

/// What every request handler needs.
pub struct Shared {
    pub published: PublishedRx,
    pub verifier: Arc<dyn TokenVerifier>,
    pub signer: Arc<Signer>,
    pub stats: Arc<Stats>,
    pub trust_domain: String,
    /// Protocol 3 interest sets of the nodes whose streams are open here.
    pub subscriptions: Arc<Subscriptions>,
    /// True once the control plane drains: no new connection or stream, open streams end so that their proxies
    /// reconnect to another replica, connections get GOAWAY.
    pub drain: watch::Receiver<bool>,
}

/// Resolves once the drain has started (at once if it has); never if the sender is gone.
pub(crate) async fn drain_started(mut drain: watch::Receiver<bool>) {
    if drain.wait_for(|draining| *draining).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Binds the push endpoint with SO_REUSEPORT, so that a replacement control plane on the same host (or the
/// second of two replicas behind one address) can listen beside a draining one: once the draining one closes
/// its listener, every new connection goes to the other.
pub fn bind(listen: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if listen.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(listen)?;
    socket.listen(1024)
}

/// Accepts connections until the drain starts, then closes the listener and returns once every connection has
/// ended (each is told to go away); dropping the future ends every connection at once.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    let mut next_connection: ConnectionId = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            () = drain_started(shared.drain.clone()) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Reap finished connections so the set does not grow forever.
        while connections.try_join_next().is_some() {}
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        next_connection += 1;
        let connection_id = next_connection;
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let drain = shared.drain.clone();
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(shared, req, connection_id).await) }
            });
            let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // Find proxies that vanished without closing, so their streams and counters go away.
                .keep_alive_interval(Some(Duration::from_secs(10)))
                .keep_alive_timeout(Duration::from_secs(20))
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = drain_started(drain) => {
                    // GOAWAY: a signing request in flight finishes; configuration streams end on their own
                    // (push::serve_stream watches the drain), and the connection closes after them.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(connections = connections.len(), "draining: listener closed, connections told to go away");
    while connections.join_next().await.is_some() {}
    tracing::info!("drained: every proxy connection has closed");
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>, connection: ConnectionId) -> Response<Body> {
    let path = req.uri().path();
    if path != STREAM_PATH && path != SIGN_PATH && path != SUBSCRIBE_PATH {
        return text(StatusCode::NOT_FOUND, format!("no such endpoint {path}"));
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST".to_string());
    }
    let node = match authenticate(&shared, &req).await {
        Ok(node) => node,
        Err(response) => return response,
    };
    match req.uri().path() {
        STREAM_PATH => stream(shared, node, req, connection),
        SUBSCRIBE_PATH => subscribe(shared, node, req, connection).await,
        _ => sign(shared, node, req).await,
    }
}

/// Verifies the bearer token and the node it speaks for.
async fn authenticate(shared: &Shared, req: &Request<Incoming>) -> Result<String, Response<Body>> {
    let refuse = |e: AuthError| {
        let status = match e {
            AuthError::Missing | AuthError::Invalid => StatusCode::UNAUTHORIZED,
            AuthError::WrongNode { .. } => StatusCode::FORBIDDEN,
            AuthError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        tracing::warn!(path = req.uri().path(), error = %e, "refused a request");
        let mut response = text(status, e.to_string());
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    };
    let token = bearer(req.headers().get(header::AUTHORIZATION)).map_err(refuse)?;
    let caller = shared.verifier.verify(token).await.map_err(refuse)?;
    let claimed = req.headers().get(NODE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("").trim();
    if claimed.is_empty() {
        return Err(text(StatusCode::BAD_REQUEST, format!("the {NODE_HEADER} header must name the calling node")));
    }
    caller.node_for(claimed).map_err(refuse)
}

fn stream(shared: Arc<Shared>, node: String, req: Request<Incoming>, connection: ConnectionId) -> Response<Body> {
    if *shared.drain.borrow() {
        // A stream opened between the drain and the GOAWAY: the proxy retries, on another replica.
        return text(StatusCode::SERVICE_UNAVAILABLE, "this control plane is draining; reconnect".to_string());
    }
    let offered = match req.headers().get(PROTOCOL_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(offered)) => Some(offered),
        Some(Err(_)) => return text(StatusCode::BAD_REQUEST, format!("{PROTOCOL_HEADER}: not ASCII")),
    };
    let protocol = match negotiate(offered) {
        Ok(protocol) => protocol,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    tracing::info!(node, protocol, "configuration stream opened");
    // Where operators reach this proxy's admin port (`strait config`); ignored unless it is an address.
    let admin = req.headers().get(strait_api::status::ADMIN_HEADER).and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(admin) = admin {
        shared.stats.reported_admin(&node, admin);
    }
    // One message in flight: a slow proxy gets the newest version next, not a backlog of stale ones.
    let (tx, rx) = mpsc::channel(1);
    // Registered before the response goes out, so a subscription sent as soon as it arrives finds the stream.
    let negotiated = match protocol {
        PROTOCOL_ON_DEMAND => Negotiated::OnDemand(shared.subscriptions.open(&node, connection)),
        PROTOCOL_DELTA => Negotiated::Delta,
        _ => Negotiated::Full,
    };
    tokio::spawn(serve_stream(
        node,
        negotiated,
        shared.published.clone(),
        shared.stats.clone(),
        req.into_body(),
        tx,
        shared.drain.clone(),
    ));
    let mut response = Response::new(ChannelBody(rx).boxed());
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-ndjson"));
    response.headers_mut().insert(PROTOCOL_HEADER, header::HeaderValue::from(protocol));
    response
}

/// Protocol 3: records a node's interests; its stream sends the answer.
async fn subscribe(
    shared: Arc<Shared>,
    node: String,
    req: Request<Incoming>,
    connection: ConnectionId,
) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_SUBSCRIBE_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")),
    };
    let request: SubscribeRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("the body is not a SubscribeRequest: {e}")),
    };
    match shared.subscriptions.subscribe(&node, connection, &request) {
        Ok(()) => {
            tracing::debug!(
                node,
                services = request.services.len(),
                addresses = request.addresses.len(),
                replace = request.replace,
                "subscribed"
            );
            text(StatusCode::OK, "subscribed".to_string())
        }
        Err(e) => {
            tracing::warn!(node, error = %e, "refused a subscription");
            let status = match e {
                SubscribeError::NoStream(_) => StatusCode::CONFLICT,
                SubscribeError::TooMany { .. } | SubscribeError::Name(_) => StatusCode::BAD_REQUEST,
            };
            text(status, e.to_string())
        }
    }
}

async fn sign(shared: Arc<Shared>, node: String, req: Request<Incoming>) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_SIGN_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}")),
    };
    let request: CertificateRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("the body is not a CertificateRequest: {e}")),
    };
    // A proxy starting alongside the control plane may ask before the first configuration is loaded; a
    // short wait spares it a retry.
    let mut published = shared.published.clone();
    let loaded = tokio::time::timeout(FIRST_CONFIG_WAIT, published.wait_for(Option::is_some)).await;
    let snapshot = match loaded {
        Ok(Ok(p)) => match p.as_ref() {
            Some(p) => p.snapshot.clone(),
            None => return text(StatusCode::SERVICE_UNAVAILABLE, "no configuration has been loaded yet".into()),
        },
        _ => return text(StatusCode::SERVICE_UNAVAILABLE, "no configuration has been loaded yet".to_string()),
    };
    match shared.signer.sign(&snapshot, &node, &request) {
        Ok(response) => {
            tracing::info!(node, identity = request.identity, "signed a workload certificate");
            shared.stats.signed(&node, &response.chain_pem);
            match serde_json::to_vec(&response) {
                Ok(json) => {
                    let mut r = Response::new(Full::new(Bytes::from(json)).boxed());
                    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Err(e) => {
            tracing::warn!(node, identity = request.identity, error = %e, "refused to sign a certificate");
            text(e.status(), e.to_string())
        }
    }
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message + "\n")).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
