//! Backend servers: TCP echo, TCP sink, and an HTTP/1.1 + h2c server whose behaviour each request picks.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
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

/// Identity of an HTTP backend, echoed in every answer.
#[derive(Clone)]
pub struct HttpConfig {
    pub name: String,
    pub version: String,
}

/// Serves HTTP/1.1 and h2c (hyper-util's auto builder picks by the connection preface). Every answer is a
/// JSON description of the request unless the request asks for something else:
/// - `/status/<code>` or header `x-backend-status: <code>`: answer that status (body still the JSON);
/// - header `x-backend-fail-percent: N`: answer 503 N% of the time;
/// - `/delay/<ms>` or header `x-backend-delay-ms: <ms>`: wait before answering;
/// - `/hang`: never answer;
/// - `/reset`: reset the TCP connection (RST; on HTTP/2 this kills every stream of the connection);
/// - `/echo`: answer the request body;
/// - `/bytes/<n>`: answer n bytes.
pub async fn http(addr: SocketAddr, config: HttpConfig) -> Result<()> {
    let listener = bind(addr).await?;
    let config = Arc::new(config);
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

async fn serve_connection(stream: TcpStream, peer: SocketAddr, config: Arc<HttpConfig>) -> Result<()> {
    let local = stream.local_addr()?;
    // A second descriptor of the same socket, so `/reset` can set SO_LINGER=0 after hyper has taken the
    // stream: closing a socket with a zero linger sends RST instead of FIN.
    let dup: OwnedFd = stream.as_fd().try_clone_to_owned()?;
    let reset = Arc::new(Notify::new());
    let ctx = Arc::new(Ctx { config, peer, local, reset: reset.clone() });
    let service = service_fn(move |req| handle(req, ctx.clone()));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = conn => result.map_err(|e| anyhow::anyhow!(e))?,
        _ = reset.notified() => {
            socket2::SockRef::from(&dup).set_linger(Some(Duration::ZERO))?;
            // Returning drops the connection (one descriptor), then `dup` (the last): RST.
        }
    }
    Ok(())
}

struct Ctx {
    config: Arc<HttpConfig>,
    peer: SocketAddr,
    local: SocketAddr,
    reset: Arc<Notify>,
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(req: Request<Incoming>, ctx: Arc<Ctx>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    let (first, arg) = (segments.first().copied().unwrap_or(""), segments.get(1).copied());

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
        .header("x-backend-name", &ctx.config.name)
        .header("x-backend-version", &ctx.config.version)
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad response"))));
    Ok(response)
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
        "name": ctx.config.name,
        "version": ctx.config.version,
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
