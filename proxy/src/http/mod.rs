//! L7: HTTP/1.1 and HTTP/2 handled in the node proxy itself, in one hop. `outbound` serves a pod's connection
//! to an HTTP service and routes each request; `inbound` authorizes each request at the destination;
//! `upstream` holds the pooled connections; the resilience pieces (routes, retries, budgets, limits, outlier
//! detection, balancing) are small modules of their own.

pub mod backends;
pub mod backoff;
pub mod balance;
pub mod body;
pub mod budget;
pub mod detect;
pub mod inbound;
pub mod limits;
pub mod observe;
pub mod outbound;
pub mod outlier;
pub mod resilience;
pub mod retry;
pub mod route;
pub mod settings;
pub mod trace;
pub mod upstream;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use tracing::debug;

pub use upstream::Version;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every HTTP layer in the proxy passes along.
pub type BoxBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn boxed<B>(body: B) -> BoxBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// A short plain-text response the proxy generates itself (403, 503, 504...).
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut response = Response::new(boxed(Full::new(body.into())));
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
    response.headers_mut().insert("server", http::HeaderValue::from_static("strait"));
    response
}

/// `grpc` for gRPC requests (by content type), else `http`: Istio's `request_protocol` label.
pub fn protocol_label<B>(request: &Request<B>) -> &'static str {
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc {
        "grpc"
    } else {
        "http"
    }
}

/// gRPC status from response headers (trailers-only responses) or trailers (`observe` reads them as they pass).
pub fn grpc_status(headers: &HeaderMap) -> String {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

/// How long an HTTP/1.1 connection may stay open once the drain starts, before it is closed between requests.
/// A client that keeps sending learns of the drain from `Connection: close` on its next response within that
/// time and reconnects (to the replacement proxy) without losing a request; closing an idle connection at once
/// would race with a request the client is just sending.
const HTTP1_DRAIN_NOTICE: std::time::Duration = std::time::Duration::from_secs(2);

/// Serves HTTP/1.1 or HTTP/2 (told apart by the connection preface) with upgrades on `io` until it closes,
/// with the tunnel's flow-control windows so a proxied stream is not capped at 64 KiB in flight.
///
/// When the drain starts, HTTP/2 gets GOAWAY at once, HTTP/1.1 responses carry `Connection: close` and, after
/// [`HTTP1_DRAIN_NOTICE`], an HTTP/1.1 connection between requests is closed; requests in flight finish.
pub async fn serve_connection<S, F, Fut>(io: S, handle: F, side: &'static str, mut drain: crate::drain::Watch)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
{
    let handle = Arc::new(handle);
    let draining = Arc::new(drain.clone());
    let http2 = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_http2 = http2.clone();
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let handle = handle.clone();
        let draining = draining.clone();
        let http1 = request.version() <= http::Version::HTTP_11;
        if !http1 {
            seen_http2.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        async move {
            let mut response = handle(request).await;
            // Decided when the response is ready, so a long request that began before the drain gets it too;
            // never on a 101, whose connection becomes the upgraded stream.
            if http1 && draining.is_draining() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http2()
        .initial_stream_window_size(crate::tunnel::STREAM_WINDOW)
        .initial_connection_window_size(crate::tunnel::CONNECTION_WINDOW);
    let connection = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = drain.signaled() => {
            let mut done = None;
            if !http2.load(std::sync::atomic::Ordering::Relaxed) {
                done = tokio::time::timeout(HTTP1_DRAIN_NOTICE, connection.as_mut()).await.ok();
            }
            match done {
                Some(result) => result,
                None => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(side, error = %e, "HTTP connection ended with an error");
    }
}

/// An HTTP/1.1 request asking to switch protocols (WebSocket and friends).
pub fn wants_upgrade<B>(request: &Request<B>) -> bool {
    request.version() <= http::Version::HTTP_11
        && request.headers().contains_key(http::header::UPGRADE)
        && request
            .headers()
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// After a 101, the bytes of both upgraded connections are copied to each other.
pub fn splice_upgrade(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = hyper_util::rt::TokioIo::new(down);
        let mut up = hyper_util::rt::TokioIo::new(up);
        if let Err(e) = crate::tcp::copy::bidirectional(&mut down, &mut up).await {
            debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

/// What the proxy keeps for HTTP between requests and configuration versions: clients and per-destination
/// state (compiled routes live in the configuration's `State`).
#[derive(Default)]
pub struct HttpContext {
    pub clients: HttpClients,
    pub backends: backends::Backends,
}

impl HttpContext {
    pub fn pod_client(&self, ctx: &Arc<crate::context::ProxyContext>, version: Version) -> upstream::PodClient {
        self.clients.pod_client(ctx, version)
    }
}

/// HTTP clients the proxy keeps: per source workload towards the mesh, and towards local pods.
#[derive(Default)]
pub struct HttpClients {
    mesh: upstream::Clients,
    pods: std::sync::Mutex<std::collections::HashMap<Version, upstream::PodClient>>,
}

impl HttpClients {
    pub fn mesh_client(
        &self,
        ctx: &Arc<crate::context::ProxyContext>,
        source: &Arc<crate::state::WorkloadInfo>,
        version: Version,
    ) -> upstream::UpstreamClient {
        self.mesh.get(ctx, source, version)
    }

    /// Drops the clients of sources `keep` refuses.
    pub fn retain_sources(&self, keep: impl Fn(&upstream::SourceKey) -> bool) {
        self.mesh.retain(keep);
    }

    pub fn pod_client(&self, ctx: &Arc<crate::context::ProxyContext>, version: Version) -> upstream::PodClient {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        pods.entry(version).or_insert_with(|| upstream::pod_client(ctx.outgoing, version)).clone()
    }
}
