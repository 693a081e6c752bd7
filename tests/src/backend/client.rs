//! One-shot clients that the binary runs inside pods: `tcp-send` and `http-get`. Each prints JSON lines
//! that the harness parses ([`super::TcpSendReport`], [`super::HttpResult`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::server::hex;
use super::{HttpResult, TcpSendReport};

/// The filler byte at offset `i`: a pattern with period 251 (a prime), so a dropped, repeated or
/// reordered chunk changes the digest, and filler never spells a printable marker by accident.
fn filler(i: u64) -> u8 {
    (i % 251) as u8 | 0x80
}

/// Connects, writes `marker` (in one write, so it travels in one segment) and then `bytes` filler bytes,
/// half-closes, and reads until the peer closes.
pub async fn tcp_send(addr: SocketAddr, bytes: u64, marker: &str, timeout: Duration) -> Result<TcpSendReport> {
    tokio::time::timeout(timeout, tcp_send_inner(addr, bytes, marker))
        .await
        .with_context(|| format!("tcp-send to {addr} did not finish within {timeout:?}"))?
}

async fn tcp_send_inner(addr: SocketAddr, bytes: u64, marker: &str) -> Result<TcpSendReport> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (mut r, mut w) = stream.into_split();
    // Read concurrently with writing: an echo server sends back while we still send, and a full receive
    // window on our side would otherwise stall both directions.
    let reader = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).await.context("reading the reply")?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
            let room = (64 * 1024usize).saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        anyhow::Ok((total, hex(&hasher.finalize()), kept))
    });

    let mut hasher = Sha256::new();
    w.write_all(marker.as_bytes()).await.context("writing the marker")?;
    hasher.update(marker.as_bytes());
    let mut offset = 0u64;
    let mut chunk = Vec::with_capacity(64 * 1024);
    while offset < bytes {
        let n = (bytes - offset).min(64 * 1024);
        chunk.clear();
        chunk.extend((offset..offset + n).map(filler));
        w.write_all(&chunk).await.context("writing")?;
        hasher.update(&chunk);
        offset += n;
    }
    w.shutdown().await.context("half-closing")?;
    let sent_sha256 = hex(&hasher.finalize());
    let (received, received_sha256, kept) = reader.await.context("reader task")??;
    let sent = marker.len() as u64 + bytes;
    Ok(TcpSendReport {
        sent,
        echoed: received == sent && received_sha256 == sent_sha256,
        sent_sha256,
        received,
        received_sha256,
        reply: String::from_utf8_lossy(&kept).into_owned(),
    })
}

/// What `http-get` does, parsed from its flags.
pub struct HttpGetArgs {
    pub url: String,
    pub count: u32,
    pub headers: Vec<(String, String)>,
    pub http2: bool,
    pub fresh: bool,
    pub method: String,
    pub data: Option<String>,
    pub timeout: Duration,
    /// Requests in flight at once (1: one after another).
    pub concurrency: u32,
}

/// Sends the requests, `concurrency` at a time (one after another by default); with `print_each`, prints
/// one JSON line per request as it completes (so a test that kills the client still sees the finished
/// ones).
pub async fn http_get(args: HttpGetArgs, print_each: bool) -> Result<Vec<HttpResult>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder.http2_only(args.http2);
    if args.fresh {
        builder.pool_max_idle_per_host(0);
    }
    let client: Client<HttpConnector, Full<Bytes>> = builder.build(connector);
    let method = Method::from_bytes(args.method.as_bytes()).context("bad --method")?;
    let args = Arc::new(args);
    let left = Arc::new(AtomicU32::new(args.count.max(1)));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, method, args, left) = (client.clone(), method.clone(), args.clone(), left.clone());
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            while left.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1)).is_ok() {
                let result = one_request(&client, &method, &args).await?;
                if print_each {
                    println!("{}", serde_json::to_string(&result)?);
                }
                results.push(result);
            }
            anyhow::Ok(results)
        }));
    }
    let mut results = Vec::new();
    for worker in workers {
        results.extend(worker.await.context("http-get worker")??);
    }
    Ok(results)
}

async fn one_request(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: &Method,
    args: &HttpGetArgs,
) -> Result<HttpResult> {
    let mut req = Request::builder().method(method.clone()).uri(&args.url);
    for (k, v) in &args.headers {
        req = req.header(k, v);
    }
    let body = Full::new(Bytes::from(args.data.clone().unwrap_or_default()));
    let req = req.body(body).with_context(|| format!("building a request for {}", args.url))?;
    let started = Instant::now();
    let outcome = tokio::time::timeout(args.timeout, async {
        let resp = client.request(req).await?;
        let status = resp.status().as_u16();
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in resp.headers() {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers.entry(name.as_str().to_owned()).and_modify(|v| *v = format!("{v}, {value}")).or_insert(value);
        }
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, headers, body))
    })
    .await;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok(match outcome {
        Ok(Ok((status, headers, body))) => HttpResult {
            status: Some(status),
            body_len: body.len() as u64,
            body: serde_json::from_slice(&body).unwrap_or_else(|_| {
                let cut = &body[..body.len().min(4096)];
                serde_json::Value::String(String::from_utf8_lossy(cut).into_owned())
            }),
            headers,
            error: None,
            elapsed_ms,
        },
        Ok(Err(e)) => failed(format!("{e:#}"), elapsed_ms),
        Err(_) => failed(format!("timed out after {:?}", args.timeout), elapsed_ms),
    })
}

fn failed(error: String, elapsed_ms: f64) -> HttpResult {
    HttpResult {
        status: None,
        body: serde_json::Value::Null,
        body_len: 0,
        headers: BTreeMap::new(),
        error: Some(error),
        elapsed_ms,
    }
}
