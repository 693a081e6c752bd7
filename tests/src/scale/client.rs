//! One simulated node proxy: the push protocol as `control/PROTOCOL.md` states it, nothing more. TLS verifying the
//! control plane's SPIFFE identity against the mesh root, HTTP/2, `POST /strait.v1.Config/Stream` with the
//! node's bearer token, `x-strait-node` and `x-strait-protocol: 1, 2` (or `1, 2, 3`: then its subscriptions go
//! out on the same connection, `POST /strait.v1.Config/Subscribe`, as soon as the stream opens); every line read is ACKed with `{"version": N}` at once, and counted
//! (bytes, lines, when). On any failure it reconnects after a delay drawn from `[0, d]`, `d` from 100 ms
//! doubling to 5 s and reset after a stream that delivered something, as real proxies do.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_api::frame::LineDecoder;
use strait_api::protocol::{SubscribeRequest, STREAM_PATH, SUBSCRIBE_PATH};
use tokio_rustls::TlsConnector;

use crate::backend::grpc::ChannelBody;

/// Real proxies accept lines up to this long.
const MAX_LINE: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What one simulated proxy has seen, readable at any time by the measurements.
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes of configuration lines received (newlines included), over every stream.
    pub bytes: AtomicU64,
    pub lines: AtomicU64,
    /// The version of the last line, as ACKed.
    pub version: AtomicU64,
    /// When the last line was ACKed, in microseconds since the fleet's epoch (0: never).
    pub acked_at_us: AtomicU64,
    /// Streams that delivered at least one line.
    pub streams: AtomicU64,
    /// Failed or ended streams (connect, TLS, refusal, end of stream).
    pub failures: AtomicU64,
}

/// How to reach the control plane, shared by every simulated proxy.
pub struct Target {
    pub addr: SocketAddr,
    pub tls: TlsConnector,
    pub epoch: Instant,
}

impl Target {
    /// Trusts `root_pem` and expects the control plane's identity in `trust_domain`.
    pub fn new(addr: SocketAddr, trust_domain: &str, root_pem: &str, epoch: Instant) -> Result<Target> {
        let bundle = strait_certs::TrustBundle::from_pem(trust_domain, root_pem).context("the mesh root")?;
        let identity = strait_certs::Identity::new(trust_domain, "strait-system", "strait-control")
            .context("the control plane's identity")?;
        let config = strait_certs::client_config_without_client_auth(&bundle, identity);
        Ok(Target { addr, tls: TlsConnector::from(config), epoch })
    }

    pub fn micros_since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// Who one simulated proxy is and what it asks for.
pub struct Proxy {
    pub node: String,
    pub token: String,
    /// 2 or 3.
    pub protocol: u32,
    /// Protocol 3: the services it subscribes to on every new stream.
    pub wants: Vec<strait_api::ServiceRef>,
}

/// Runs one simulated proxy forever (the caller aborts it).
pub async fn run(target: Arc<Target>, proxy: Arc<Proxy>, counters: Arc<Counters>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Why a stream failed is in the control plane's log; what counts here is that it did.
        let delivered = stream(&target, &proxy, &counters).await.unwrap_or(false);
        counters.failures.fetch_add(1, Ordering::Relaxed);
        if delivered {
            backoff = FIRST_BACKOFF;
        }
        let delay = backoff.mul_f64(rand::random::<f64>());
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One stream, until it ends: whether it delivered any line.
async fn stream(target: &Target, proxy: &Proxy, counters: &Counters) -> Result<bool> {
    let (node, token) = (proxy.node.as_str(), proxy.token.as_str());
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(target.addr))
        .await
        .context("connect timed out")?
        .context("connect")?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(CONNECT_TIMEOUT, target.tls.connect(strait_certs::mesh_server_name(), tcp))
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake")?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.context("HTTP/2")?;
    let connection = tokio::spawn(connection);
    let _stop_connection = AbortOnDrop(connection);
    let (acks, body) = ChannelBody::new(16);
    let request = Request::post(format!("https://{}{STREAM_PATH}", target.addr))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("x-strait-node", node)
        // As real proxies: full snapshot first, then deltas (a line is ACKed by its version either way).
        .header(strait_api::protocol::PROTOCOL_HEADER, if proxy.protocol == 3 { "1, 2, 3" } else { "1, 2" })
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .context("building the request")?;
    let response = sender.send_request(request).await.context("opening the stream")?;
    if response.status() != StatusCode::OK {
        let status = response.status();
        let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("refused: {status}: {}", String::from_utf8_lossy(&text).trim());
    }
    let picked = response.headers().get(strait_api::protocol::PROTOCOL_HEADER).and_then(|v| v.to_str().ok());
    if picked == Some("3") {
        subscribe(target, proxy, &mut sender).await?;
    }
    let mut body = response.into_body();
    let mut lines = LineDecoder::new(MAX_LINE);
    let mut delivered = false;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.context("reading the stream")?.into_data() else { continue };
        lines.push(&data);
        while let Some(line) = lines.next_line().context("a configuration line")? {
            let version = version_of(&line).context("a line without a version")?;
            let ack = format!("{{\"version\":{version}}}\n");
            acks.send(Frame::data(Bytes::from(ack))).await.context("the ACK stream closed")?;
            counters.bytes.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
            counters.lines.fetch_add(1, Ordering::Relaxed);
            counters.version.store(version, Ordering::Relaxed);
            counters.acked_at_us.store(target.micros_since_epoch().max(1), Ordering::Relaxed);
            if !delivered {
                delivered = true;
                counters.streams.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(delivered)
}

/// Sends the proxy's whole interest set on the stream's connection, as a real proxy does on every new stream.
async fn subscribe(
    target: &Target,
    proxy: &Proxy,
    sender: &mut hyper::client::conn::http2::SendRequest<ChannelBody>,
) -> Result<()> {
    let request = SubscribeRequest { replace: true, services: proxy.wants.clone(), addresses: Vec::new() };
    let json = serde_json::to_vec(&request).context("encoding a subscription")?;
    let (tx, body) = ChannelBody::new(1);
    tx.send(Frame::data(Bytes::from(json))).await.context("queueing a subscription")?;
    drop(tx);
    let request = Request::post(format!("https://{}{SUBSCRIBE_PATH}", target.addr))
        .header(header::AUTHORIZATION, format!("Bearer {}", proxy.token))
        .header("x-strait-node", &proxy.node)
        .body(body)
        .context("building the subscription")?;
    let response = sender.send_request(request).await.context("subscribing")?;
    if response.status() != StatusCode::OK {
        bail!("subscription refused: {}", response.status());
    }
    Ok(())
}

/// The `version` of a pushed line (the one top-level field every line carries). A line that starts with it
/// (as the control plane writes them) is not parsed further: at full size the lines are megabytes, and parsing
/// them here would take CPU from the control plane being measured on the same machine.
fn version_of(line: &[u8]) -> Option<u64> {
    if let Some(rest) = line.strip_prefix(b"{\"version\":") {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && matches!(rest.get(digits), Some(b',' | b'}')) {
            return std::str::from_utf8(&rest[..digits]).ok()?.parse().ok();
        }
    }
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u64,
    }
    serde_json::from_slice::<Versioned>(line).ok().map(|v| v.version)
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_and_ignores_the_rest() {
        assert_eq!(version_of(br#"{"version":17,"node":"n","config":{"workloads":[]}}"#), Some(17));
        assert_eq!(version_of(br#"{"delta":{"x":1},"version":18}"#), Some(18));
        assert_eq!(version_of(br#"{"node":"n"}"#), None);
        assert_eq!(version_of(b"not json"), None);
        assert_eq!(version_of(br#"{"version":19}"#), Some(19));
        assert_eq!(version_of(br#"{"version":1x}"#), None);
        assert_eq!(version_of(br#"{"version":99999999999999999999999}"#), None, "out of range");
    }
}
