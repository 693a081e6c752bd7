//! L7: HTTP/1.1 and HTTP/2 handled in the node proxy itself, in one hop. `outbound` serves a pod's connection
//! to an HTTP service and routes each request; `inbound` authorizes each request at the destination;
//! `normalize` makes each request what the backend receives before either side looks at it, `upgrade` splices
//! WebSocket only; `upstream` holds the pooled connections; the resilience pieces (routes, retries, budgets, limits, outlier
//! detection, balancing) are small modules of their own.

pub mod backends;
pub mod backoff;
pub mod balance;
pub mod body;
pub mod budget;
pub mod detect;
pub mod inbound;
pub mod limits;
pub mod normalize;
pub mod observe;
pub mod outbound;
pub mod outlier;
pub mod resilience;
pub mod retry;
pub mod route;
pub mod settings;
pub mod trace;
pub mod upgrade;
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

/// Serves HTTP/1.1 or HTTP/2 (told apart by the connection preface) with upgrades on `io` until it closes,
/// with the tunnel's flow-control windows so a proxied stream is not capped at 64 KiB in flight.
pub async fn serve_connection<S, F, Fut>(io: S, handle: F, side: &'static str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
{
    let handle = Arc::new(handle);
    let service = hyper::service::service_fn(move |request| {
        let handle = handle.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(request).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http2()
        .initial_stream_window_size(crate::tunnel::STREAM_WINDOW)
        .initial_connection_window_size(crate::tunnel::CONNECTION_WINDOW);
    if let Err(e) = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service).await {
        debug!(side, error = %e, "HTTP connection ended with an error");
    }
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
