//! Backend servers: TCP echo, TCP sink, and an HTTP/1.1 + h2c server whose behaviour each request picks.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::SinkReply;

/// Binds `addr` and prints `ready <addr>` (the bound address, so port 0 works) for the harness.
async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    println!("ready {}", listener.local_addr()?);
    Ok(listener)
}

/// Echoes every byte back. On read EOF it finishes writing and then shuts down its write side, so a
/// client can test half-close: it half-closes, still receives everything, then sees EOF.
pub async fn tcp_echo(addr: SocketAddr) -> Result<()> {
    let listener = bind(addr).await?;
    loop {
        let (mut stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let (mut r, mut w) = stream.split();
            let result = async {
                tokio::io::copy(&mut r, &mut w).await?;
                w.shutdown().await
            }
            .await;
            if let Err(e) = result {
                eprintln!("tcp-echo: {peer}: {e}");
            }
        });
    }
}

/// Hex encoding of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads to EOF, then answers one JSON line `{"bytes":N,"sha256":"..."}` and closes.
pub async fn tcp_sink(addr: SocketAddr) -> Result<()> {
    let listener = bind(addr).await?;
    loop {
        let (mut stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let result = async {
                let mut hasher = Sha256::new();
                let mut total = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    total += n as u64;
                }
                let reply = SinkReply { bytes: total, sha256: hex(&hasher.finalize()) };
                let mut line = serde_json::to_vec(&reply)?;
                line.push(b'\n');
                stream.write_all(&line).await?;
                stream.shutdown().await?;
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = result {
                eprintln!("tcp-sink: {peer}: {e}");
            }
        });
    }
}

/// Identity of an HTTP backend, echoed in every answer, and its instance-wide behaviour.
#[derive(Clone, Default)]
pub struct HttpConfig {
    pub name: String,
    pub version: String,
    /// Answer 503 this percentage of requests (changeable at run time: `POST /control/fail-percent/<n>`).
    pub fail_percent: u32,
    /// Never answer (changeable at run time: `POST /control/hang/<0|1>`).
    pub hang: bool,
    /// Wait this long before every answer (a uniformly slow endpoint).
    pub delay_ms: u64,
    /// Speak only this HTTP version (a backend that knows no other); both when `None`.
    pub only: Option<HttpOnly>,
}

/// The one HTTP version a backend speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HttpOnly {
    Http1,
    Http2,
}

impl HttpConfig {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        HttpConfig { name: name.into(), version: version.into(), ..Default::default() }
    }
}

/// The body type the `http` backend answers with (full bodies, streamed gRPC bodies with trailers).
pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Instance-wide state: behaviour a test can flip at run time, and counters it can read.
struct Instance {
    config: HttpConfig,
    fail_percent: AtomicU32,
    hang: AtomicBool,
    /// Requests seen, control requests excluded.
    requests: AtomicU64,
    /// Connections that carried at least one request other than a control request.
    connections: AtomicU64,
    /// Requests being answered now, and the most there ever were at once (control requests excluded).
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// One request's place in the in-flight count, until its handler returns.
struct InFlight<'a>(&'a Instance);

impl<'a> InFlight<'a> {
    fn enter(instance: &'a Instance) -> Self {
        let now = instance.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        instance.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(instance)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves HTTP/1.1 and h2c (hyper-util's auto builder picks by the connection preface). Every answer is a
/// JSON description of the request unless the request asks for something else:
/// - `/status/<code>` or header `x-backend-status: <code>`: answer that status (body still the JSON);
/// - header `x-backend-fail-percent: N`: answer 503 N% of the time;
/// - `/delay/<ms>` or header `x-backend-delay-ms: <ms>`: wait before answering;
/// - `/hang`: never answer;
/// - `/reset`: reset the TCP connection (RST; on HTTP/2 this kills every stream of the connection);
/// - `/echo`: answer the request body;
/// - `/bytes/<n>`: answer n bytes;
/// - `GET /upgrade` with `Connection: upgrade`: `101 Switching Protocols`, then the line `HELLO <name>\n`
///   and an echo of every byte on the upgraded connection;
/// - `content-type: application/grpc` on `/strait.test.Echo/*`: the gRPC echo service ([`super::grpc`]).
///
/// Instance-wide (from the flags; `--delay-ms` slows every answer; changeable at run time; control requests
/// are never failed or hung):
/// - `POST /control/fail-percent/<n>`: answer 503 n% of the requests from now on;
/// - `POST /control/hang/<0|1>`: stop (1) or resume (0) answering;
/// - `GET /control/stats`: `{"name":..,"requests":N,"connections":C,"max_in_flight":M}`: requests seen so far,
///   connections that carried them, the most answered at once (control requests and connections that carried
///   only those excluded).
pub async fn http(addr: SocketAddr, config: HttpConfig) -> Result<()> {
    let listener = bind(addr).await?;
    let config = Arc::new(Instance {
        fail_percent: AtomicU32::new(config.fail_percent),
        hang: AtomicBool::new(config.hang),
        requests: AtomicU64::new(0),
        connections: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
        config,
    });
    loop {
        let (stream, peer) = listener.accept().await?;
        let config = config.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, peer, config).await {
                eprintln!("http: {peer}: {e:#}");
            }
        });
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, config: Arc<Instance>) -> Result<()> {
    let local = stream.local_addr()?;
    // A second descriptor of the same socket, so `/reset` can set SO_LINGER=0 after hyper has taken the
    // stream: closing a socket with a zero linger sends RST instead of FIN.
    let dup: OwnedFd = stream.as_fd().try_clone_to_owned()?;
    let reset = Arc::new(Notify::new());
    let ctx = Arc::new(Ctx { config, peer, local, reset: reset.clone(), counted: AtomicBool::new(false) });
    let only = ctx.config.config.only;
    let service = service_fn(move |req| handle(req, ctx.clone()));
    let io = TokioIo::new(stream);
    // The auto builder's version restriction does nothing with upgrades, so a one-version backend uses
    // hyper's builder for that version: it fails the connection when the client speaks the other one.
    let conn: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), anyhow::Error>> + Send>> = match only {
        None => {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(io, service).into_owned();
            Box::pin(async move { conn.await.map_err(|e| anyhow::anyhow!(e)) })
        }
        Some(HttpOnly::Http1) => {
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades();
            Box::pin(async move { conn.await.map_err(|e| anyhow::anyhow!(e)) })
        }
        Some(HttpOnly::Http2) => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
            Box::pin(async move { conn.await.map_err(|e| anyhow::anyhow!(e)) })
        }
    };
    tokio::select! {
        result = conn => result?,
        _ = reset.notified() => {
            socket2::SockRef::from(&dup).set_linger(Some(Duration::ZERO))?;
            // Returning drops the connection (one descriptor), then `dup` (the last): RST.
        }
    }
    Ok(())
}

struct Ctx {
    config: Arc<Instance>,
    peer: SocketAddr,
    local: SocketAddr,
    reset: Arc<Notify>,
    /// Whether this connection is in `Instance::connections` yet.
    counted: AtomicBool,
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn full(body: impl Into<Bytes>) -> BoxBody {
    Full::new(body.into()).boxed()
}

async fn handle(mut req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Response<BoxBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    let (first, arg) = (segments.first().copied().unwrap_or(""), segments.get(1).copied());
    let instance = &ctx.config;

    if first == "control" {
        return Ok(control(&req, arg.unwrap_or(""), instance));
    }
    instance.requests.fetch_add(1, Ordering::Relaxed);
    if !ctx.counted.swap(true, Ordering::Relaxed) {
        instance.connections.fetch_add(1, Ordering::Relaxed);
    }
    let _in_flight = InFlight::enter(instance);
    if instance.hang.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    if instance.config.delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(instance.config.delay_ms)).await;
    }
    let fail_percent = instance.fail_percent.load(Ordering::Relaxed);
    if fail_percent > 0 && rand::random_range(0..100) < fail_percent {
        let response = Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header("content-type", "application/json")
            .header("x-backend-name", &instance.config.name)
            .header("x-backend-version", &instance.config.version)
            .body(full(describe(&req, &ctx)))
            .unwrap_or_else(|_| Response::new(full("bad response")));
        return Ok(response);
    }
    if super::grpc::is_grpc(&req) {
        return Ok(super::grpc::serve(req, &instance.config.name, &instance.config.version));
    }
    if first == "upgrade" && is_upgrade(&req) {
        let on = hyper::upgrade::on(&mut req);
        let greeting = format!("HELLO {}\n", instance.config.name);
        tokio::spawn(async move {
            let result = async {
                let mut io = TokioIo::new(on.await?);
                io.write_all(greeting.as_bytes()).await?;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = io.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    io.write_all(&buf[..n]).await?;
                }
                io.shutdown().await?;
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = result {
                eprintln!("http: upgraded connection: {e:#}");
            }
        });
        let response = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", header(&req, "upgrade").unwrap_or("websocket"))
            .header("x-backend-name", &instance.config.name)
            .body(full(Bytes::new()))
            .unwrap_or_else(|_| Response::new(full("bad response")));
        return Ok(response);
    }

    if first == "hang" {
        std::future::pending::<()>().await;
    }
    if first == "reset" {
        ctx.reset.notify_one();
        std::future::pending::<()>().await;
    }
    let delay = match (first, arg) {
        ("delay", Some(ms)) => ms.parse().ok(),
        _ => header(&req, "x-backend-delay-ms").and_then(|v| v.parse().ok()),
    };
    if let Some(ms) = delay {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let mut status = match (first, arg) {
        ("status", Some(code)) => code.parse().ok(),
        _ => header(&req, "x-backend-status").and_then(|v| v.parse().ok()),
    }
    .and_then(|c: u16| StatusCode::from_u16(c).ok())
    .unwrap_or(StatusCode::OK);
    if let Some(pct) = header(&req, "x-backend-fail-percent").and_then(|v| v.parse::<u32>().ok()) {
        if rand::random_range(0..100) < pct {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
    }

    let body = match (first, arg) {
        ("bytes", Some(n)) => Bytes::from(vec![b'x'; n.parse().unwrap_or(0)]),
        ("echo", _) => match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => Bytes::from(format!("reading request body: {e}")),
        },
        _ => Bytes::from(describe(&req, &ctx)),
    };
    let content_type =
        if first == "echo" || first == "bytes" { "application/octet-stream" } else { "application/json" };
    let response = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("x-backend-name", &instance.config.name)
        .header("x-backend-version", &instance.config.version)
        .body(full(body))
        .unwrap_or_else(|_| Response::new(full("bad response")));
    Ok(response)
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    let connection = header(req, "connection").unwrap_or("").to_ascii_lowercase();
    connection.split(',').any(|t| t.trim() == "upgrade") && req.headers().contains_key("upgrade")
}

/// `/control/...`: flip the instance's behaviour or read its counters.
fn control(req: &Request<Incoming>, what: &str, instance: &Instance) -> Response<BoxBody> {
    let (knob, value) = what.split_once('/').unwrap_or((what, ""));
    let status = match (req.method().as_str(), knob) {
        ("POST", "fail-percent") => match value.parse::<u32>() {
            Ok(n) if n <= 100 => {
                instance.fail_percent.store(n, Ordering::Relaxed);
                StatusCode::OK
            }
            _ => StatusCode::BAD_REQUEST,
        },
        ("POST", "hang") => match value {
            "0" | "1" => {
                instance.hang.store(value == "1", Ordering::Relaxed);
                StatusCode::OK
            }
            _ => StatusCode::BAD_REQUEST,
        },
        ("GET", "stats") => StatusCode::OK,
        _ => StatusCode::NOT_FOUND,
    };
    let body = serde_json::json!({
        "name": instance.config.name,
        "version": instance.config.version,
        "requests": instance.requests.load(Ordering::Relaxed),
        "connections": instance.connections.load(Ordering::Relaxed),
        "max_in_flight": instance.max_in_flight.load(Ordering::Relaxed),
        "fail_percent": instance.fail_percent.load(Ordering::Relaxed),
        "hang": instance.hang.load(Ordering::Relaxed),
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(full(format!("{body}\n")))
        .unwrap_or_else(|_| Response::new(full("bad response")))
}

/// The JSON answer: who answered, and what arrived (the proxy may add caller identity headers such as
/// `x-forwarded-client-cert` or `x-strait-peer-identity`; they show up in `headers`).
fn describe(req: &Request<Incoming>, ctx: &Ctx) -> Vec<u8> {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.entry(name.as_str().to_owned()).and_modify(|v| *v = format!("{v}, {value}")).or_insert(value);
    }
    let body = serde_json::json!({
        "name": ctx.config.config.name,
        "version": ctx.config.config.version,
        "path": req.uri().path(),
        "query": req.uri().query(),
        "method": req.method().as_str(),
        "protocol": format!("{:?}", req.version()),
        "headers": headers,
        "peer": ctx.peer.to_string(),
        "local": ctx.local.to_string(),
    });
    let mut out = serde_json::to_vec(&body).unwrap_or_default();
    out.push(b'\n');
    out
}
