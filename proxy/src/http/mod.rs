//! L7: HTTP/1.1 and HTTP/2 handled in the node proxy itself, in one hop. `outbound` serves a pod's connection
//! to an HTTP service and routes each request; `inbound` authorizes each request at the destination;
//! `normalize` makes each request what the backend receives before either side looks at it, `upgrade` splices
//! WebSocket only; `upstream` holds the pooled connections; the resilience pieces (routes, retries, budgets, limits) are
//! small modules of their own; balancing and outlier detection are `crate::balance`, shared with TCP ports.

pub mod backends;
pub mod backoff;
pub mod body;
pub mod budget;
pub mod close_cork;
pub mod detect;
pub mod hop_by_hop;
pub mod inbound;
pub mod limits;
pub mod normalize;
pub mod observe;
pub mod outbound;
pub mod read_ahead;
pub mod resilience;
pub mod retry;
pub mod reuse;
pub mod route;
pub mod settings;
pub mod target;
pub mod trace;
pub mod upgrade;
pub mod upstream;
pub mod xfcc;

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

/// How long a client may take to send a request head (also bounds an idle keep-alive connection's next one).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The HTTP/1.1 read buffer, hence the largest request head (hyper's minimum is 8 KiB).
const MAX_HEAD_BUFFER: usize = 64 * 1024;

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
pub async fn serve_connection<S, F, Fut>(io: S, handle: F, side: &'static str, drain: crate::drain::Watch)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
{
    serve(io, handle, side, drain, None).await
}

/// [`serve_connection`] for a client's own TCP connection: an HTTP/1.1 connection's last response shares its
/// segment with the FIN (see `close_cork`), and the request head takes one read (see `read_ahead`).
pub async fn serve_client_connection<F, Fut>(
    tcp: tokio::net::TcpStream,
    handle: F,
    side: &'static str,
    drain: crate::drain::Watch,
) where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<BoxBody>> + Send + 'static,
{
    let (io, last) = close_cork::CorkOnClose::new(tcp);
    serve(read_ahead::ReadAhead::new(io), handle, side, drain, Some(last)).await
}

/// `last`, when the connection can cork, is marked before a response the connection closes after is written.
async fn serve<S, F, Fut>(
    io: S,
    handle: F,
    side: &'static str,
    mut drain: crate::drain::Watch,
    last: Option<close_cork::LastResponse>,
) where
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
        // For a request that turns into a spliced upgrade: its own drain handle (see `upgrade::CONNECTION_DRAIN`).
        let for_splice = (*draining).clone();
        let http1 = request.version() <= http::Version::HTTP_11;
        if !http1 {
            seen_http2.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let last = last.clone().filter(|_| http1);
        // Read before the handler strips the hop-by-hop headers.
        let mut closes = close_cork::request_closes(&request);
        async move {
            let mut response = upgrade::CONNECTION_DRAIN.scope(for_splice, handle(request)).await;
            // Decided when the response is ready, so a long request that began before the drain gets it too;
            // never on a 101, whose connection becomes the upgraded stream.
            if http1 && draining.is_draining() && response.status() != StatusCode::SWITCHING_PROTOCOLS {
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                closes = true;
            }
            if let Some(last) = last.filter(|_| closes && close_cork::corkable(&response)) {
                last.mark();
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    // Bounds against a slow or hostile client: a request head must arrive in time and fit, and one connection
    // multiplexes a bounded number of streams.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BUFFER);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(crate::tunnel::MAX_CONCURRENT_STREAMS)
        .max_header_list_size(crate::tunnel::MAX_HEADER_LIST_SIZE)
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

/// What the proxy keeps for HTTP between requests and configuration versions: clients and per-destination
/// state (compiled routes live in the configuration's `State`).
#[derive(Default)]
pub struct HttpContext {
    pub clients: HttpClients,
    pub backends: backends::Backends,
}

impl HttpContext {
    pub fn pod_client(
        &self,
        ctx: &Arc<crate::context::ProxyContext>,
        version: Version,
        reuse: upstream::ConnectionReuse,
    ) -> upstream::PodClient {
        self.clients.pod_client(ctx, version, reuse)
    }
}

/// HTTP clients the proxy keeps: per source workload towards the mesh, and towards local pods.
#[derive(Default)]
pub struct HttpClients {
    mesh: upstream::Clients,
    /// By (version, idle timeout): a handful at most, scanned rather than hashed on every request.
    pods: std::sync::Mutex<Vec<((Version, std::time::Duration), upstream::PodClient)>>,
}

impl HttpClients {
    pub fn mesh_client(
        &self,
        ctx: &Arc<crate::context::ProxyContext>,
        source: &Arc<crate::state::WorkloadInfo>,
        version: Version,
        reuse: upstream::ConnectionReuse,
    ) -> upstream::UpstreamClient {
        self.mesh.get(ctx, source, version, reuse)
    }

    /// Drops the clients of sources `keep` refuses.
    pub fn retain_sources(&self, keep: impl Fn(&upstream::SourceKey) -> bool) {
        self.mesh.retain(keep);
    }

    pub fn pod_client(
        &self,
        ctx: &Arc<crate::context::ProxyContext>,
        version: Version,
        reuse: upstream::ConnectionReuse,
    ) -> upstream::PodClient {
        let mut pods = self.pods.lock().unwrap_or_else(|e| e.into_inner());
        let key = upstream::pod_client_key(version, reuse);
        if let Some((_, client)) = pods.iter().find(|(k, _)| *k == key) {
            return client.clone();
        }
        let client = upstream::pod_client(ctx.outgoing, version, reuse);
        pods.push((key, client.clone()));
        client
    }

    /// Open upstream connections per destination service (`tcp.maxConnections`).
    pub fn connection_slots(&self) -> &upstream::ConnectionSlots {
        self.mesh.slots()
    }
}

#[cfg(test)]
mod limits_tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn serve(io: tokio::io::DuplexStream) {
        let drain = crate::drain::Drain::new();
        let watch = drain.watch();
        tokio::spawn(async move {
            let _not_draining = drain;
            serve_connection(io, |_| async { text(StatusCode::OK, "ok\n") }, "test", watch).await
        });
    }

    /// A client cannot make the proxy buffer an unbounded request head.
    #[tokio::test]
    async fn an_oversized_request_head_is_refused() {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        serve(server);
        client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.read_to_end(&mut answer)).await;
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"), "a normal request is served");

        let (mut client, server) = tokio::io::duplex(1 << 20);
        serve(server);
        let huge = "a".repeat(MAX_HEAD_BUFFER + 1024);
        client
            .write_all(format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {huge}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
        assert!(!answer.contains("ok"), "the request was not served");
    }

    /// One HTTP/2 connection carries at most MAX_CONCURRENT_STREAMS requests at once.
    #[tokio::test]
    async fn http2_streams_per_connection_are_bounded() {
        let (client, server) = tokio::io::duplex(1 << 20);
        serve(server);
        let (_send, mut connection) = h2::client::handshake(client).await.expect("h2 handshake");
        // The server's SETTINGS arrive with the first exchange; drive the connection until they do.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while connection.max_concurrent_send_streams() == usize::MAX && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(std::time::Duration::from_millis(20), &mut connection).await;
        }
        assert_eq!(connection.max_concurrent_send_streams(), crate::tunnel::MAX_CONCURRENT_STREAMS as usize);
    }
}

#[cfg(test)]
mod close_cork_tests {
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// What one connection's exchange came to: whether the response of each request was already marked the
    /// last when the next request was handled, whether the connection's last one was, and the answer as the
    /// client read it to the connection's end.
    struct Exchange {
        marked_before: Vec<bool>,
        marked: bool,
        answer: String,
    }

    /// Serves `requests` on one connection, each answered with `body`.
    async fn exchange(requests: &str, body: &'static str, draining: bool) -> Exchange {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let drain = crate::drain::Drain::new();
        if draining {
            drain.start();
        }
        let last = close_cork::LastResponse::default();
        let (marked, seen) = (last.clone(), last.clone());
        let marked_before = Arc::new(Mutex::new(Vec::new()));
        let record = marked_before.clone();
        let handle = move |_| {
            record.lock().expect("record").push(seen.is_marked());
            async move { text(StatusCode::OK, body) }
        };
        let watch = drain.watch();
        let served = tokio::spawn(async move {
            let _drain = drain;
            serve(server, handle, "test", watch, Some(last)).await
        });
        client.write_all(requests.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), client.read_to_end(&mut answer));
        read.await.expect("the connection closes").expect("read");
        served.await.expect("served");
        let marked_before = marked_before.lock().expect("record").clone();
        Exchange { marked_before, marked: marked.is_marked(), answer: String::from_utf8_lossy(&answer).into_owned() }
    }

    #[tokio::test]
    async fn the_response_a_connection_closes_after_is_marked_for_the_fin() {
        let done = exchange("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", "ok\n", false).await;
        assert!(done.marked, "a Connection: close request's response is the last");
        assert!(done.answer.starts_with("HTTP/1.1 200") && done.answer.ends_with("ok\n"), "{}", done.answer);

        let done = exchange("GET / HTTP/1.0\r\nhost: x\r\n\r\n", "ok\n", false).await;
        assert!(done.marked, "HTTP/1.0 without keep-alive closes after its response");

        // The drain closes a keep-alive connection after its response too.
        let done = exchange("GET / HTTP/1.1\r\nhost: x\r\n\r\n", "ok\n", true).await;
        assert!(done.marked, "a draining connection's response is the last");
        assert!(done.answer.to_ascii_lowercase().contains("connection: close"), "{}", done.answer);
    }

    #[tokio::test]
    async fn keep_alive_and_large_responses_are_not_held_back() {
        // A keep-alive request, then a closing one: only the second response is the last.
        let requests = "GET / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        let done = exchange(requests, "ok\n", false).await;
        assert_eq!(done.answer.matches("HTTP/1.1 200").count(), 2, "{}", done.answer);
        assert_eq!(done.marked_before, [false, false], "a keep-alive response was marked the last");
        assert!(done.marked);

        let large: &'static str = "x".repeat(close_cork::MAX_CORKED_BODY as usize + 1).leak();
        let done = exchange("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", large, false).await;
        assert!(!done.marked, "a large response is sent as it is written");
        assert!(done.answer.ends_with(large));
    }
}
