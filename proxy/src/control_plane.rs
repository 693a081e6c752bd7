//! The node proxy's side of the control-plane protocol (`control/PROTOCOL.md`): a long-lived stream that
//! receives configuration versions and answers each with an ACK or NACK, and CSR signing for the certificates
//! of local workloads.
//!
//! The control plane is never on the data path: while it is unreachable the proxy keeps serving its last good
//! configuration, and this client reconnects with jittered exponential backoff, forever.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use strait_api::delta::{ConfigDelta, DeltaError};
use strait_api::frame::{encode_line, LineDecoder};
use strait_api::protocol::{
    CertificateRequest, CertificateResponse, ConfigAck, ConfigPush, ConfigUpdate, SubscribeRequest, PROTOCOL_DELTA,
    PROTOCOL_FULL, PROTOCOL_HEADER, PROTOCOL_ON_DEMAND, SIGN_PATH, STREAM_PATH, SUBSCRIBE_PATH,
};
use strait_api::MeshConfig;
use strait_certs::{CertError, CertIssuer, Identity, TrustBundle, WorkloadCert};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;

use crate::discovery::{Discovery, DiscoveryMode, SubscribeLink};

pub const NODE_HEADER: &str = "x-strait-node";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SIGN_TIMEOUT: Duration = Duration::from_secs(15);
/// A whole mesh configuration in one line; generous, but bounded so a broken server cannot exhaust memory.
const MAX_PUSH_LINE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the control plane's trust bundle is not usable: {0}")]
    TrustBundle(String),
    #[error("the token or node name cannot be sent as an HTTP header")]
    BadHeader,
    #[error("cannot connect to the control plane at {addr}: {reason} (is it running, and is port 15012 reachable?)")]
    Connect { addr: String, reason: String },
    #[error("TLS with the control plane at {addr} failed: {source} (does it present the expected identity, signed by the mesh root?)")]
    Tls { addr: String, source: std::io::Error },
    #[error("HTTP/2 with the control plane failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the control plane refused {path}: {status}: {message}")]
    Refused { path: &'static str, status: StatusCode, message: String },
    #[error("the control plane sent something that is not a configuration push: {0}")]
    Protocol(String),
    #[error("the control plane closed the configuration stream")]
    Closed,
    #[error("version {version} is a delta from version {base}, but this stream holds {held}; starting over from a full snapshot")]
    BaseMismatch { version: u64, base: u64, held: String },
    #[error("version {version} does not apply to the configuration it names as its base ({source}); starting over from a full snapshot")]
    Delta { version: u64, source: DeltaError },
}

/// The protocol versions this proxy offers: deltas, or full snapshots from a control plane that knows no better;
/// with on-demand discovery, protocol 3 first.
const OFFERED_PROTOCOLS: &str = "1, 2";
const OFFERED_ON_DEMAND: &str = "1, 2, 3";
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What one stream has received: the configuration the next delta applies to. That is the last version received,
/// applied or refused (NACKed): the control plane computes each delta from what it sent, while the proxy keeps
/// serving its last good configuration.
#[derive(Debug, Default)]
pub(crate) struct Received {
    held: Option<(u64, MeshConfig)>,
}

impl Received {
    /// The version and whole configuration that `line` (of `protocol`) brings.
    pub(crate) fn receive(&mut self, protocol: u32, line: &[u8]) -> Result<(u64, MeshConfig), ClientError> {
        let malformed = |e: serde_json::Error| ClientError::Protocol(e.to_string());
        if protocol == PROTOCOL_FULL {
            let push: ConfigPush = serde_json::from_slice(line).map_err(malformed)?;
            return Ok((push.version, push.config));
        }
        let (version, config) = match serde_json::from_slice::<ConfigUpdate>(line).map_err(malformed)? {
            ConfigUpdate::Full { version, config, .. } => (version, config),
            ConfigUpdate::Delta { version, base, upserts, removals, .. } => {
                let held = match &self.held {
                    Some((held, config)) if *held == base => config,
                    other => {
                        let held = other.as_ref().map_or("nothing".to_string(), |(v, _)| format!("version {v}"));
                        return Err(ClientError::BaseMismatch { version, base, held });
                    }
                };
                let delta = ConfigDelta { upserts, removals };
                let config =
                    strait_api::delta::apply(held, &delta).map_err(|source| ClientError::Delta { version, source })?;
                (version, config)
            }
        };
        self.held = Some((version, config.clone()));
        Ok((version, config))
    }
}

/// Reconnection delays: exponential from `initial` up to `max`, each drawn uniformly from [0, delay] ("full
/// jitter") so that a fleet of proxies does not reconnect in lockstep after a control-plane restart.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5) }
    }
}

/// Connects a node proxy to the control plane.
#[derive(Clone)]
pub struct ControlPlaneClient {
    inner: Arc<Inner>,
    backoff: Backoff,
    /// With on-demand discovery, protocol 3 is offered and subscriptions go out on the stream's connection.
    discovery: Option<Arc<Discovery>>,
}

struct Inner {
    addr: String,
    tls: TlsConnector,
    authorization: header::HeaderValue,
    /// Kubernetes rotates projected ServiceAccount tokens: when set, the token is re-read from this file for
    /// every request, so a long-lived proxy never presents an expired one.
    token_file: Option<std::path::PathBuf>,
    node: header::HeaderValue,
    /// This proxy's admin address, told to the control plane so operators find it by node name.
    admin: Option<header::HeaderValue>,
}

impl ControlPlaneClient {
    /// `addr` is `host:port` of the control plane; it must present `server_identity` in a certificate that
    /// chains to `root_pem`. `token` is the bearer token, `node` the name of this proxy's node.
    pub fn new(
        addr: impl Into<String>,
        server_identity: Identity,
        root_pem: &str,
        token: &str,
        node: &str,
    ) -> Result<Self, ClientError> {
        let bundle = TrustBundle::from_pem(server_identity.trust_domain(), root_pem)
            .map_err(|e| ClientError::TrustBundle(e.to_string()))?;
        let tls = TlsConnector::from(strait_certs::client_config_without_client_auth(&bundle, server_identity));
        let authorization =
            header::HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| ClientError::BadHeader)?;
        let node = header::HeaderValue::from_str(node).map_err(|_| ClientError::BadHeader)?;
        Ok(ControlPlaneClient {
            inner: Arc::new(Inner { addr: addr.into(), tls, authorization, token_file: None, node, admin: None }),
            backoff: Backoff::default(),
            discovery: None,
        })
    }

    /// Takes part in on-demand discovery (protocol 3) when `discovery` is in that mode.
    pub fn with_discovery(mut self, discovery: Arc<Discovery>) -> Self {
        self.discovery = Some(discovery);
        self
    }

    fn on_demand(&self) -> Option<&Arc<Discovery>> {
        self.discovery.as_ref().filter(|d| d.mode() == DiscoveryMode::OnDemand)
    }

    /// Re-reads the bearer token from `path` for every request (the token given to `new` is the fallback when
    /// the file cannot be read).
    pub fn with_token_file(mut self, path: std::path::PathBuf) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.token_file = Some(path);
        }
        self
    }

    /// Names `admin` (this proxy's admin address) on the configuration stream, for `strait status` and
    /// `strait config`.
    pub fn with_admin_address(mut self, admin: std::net::SocketAddr) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.admin = header::HeaderValue::from_str(&admin.to_string()).ok();
        }
        self
    }

    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// A certificate issuer that has the control plane sign CSRs made on this node.
    pub fn issuer(&self) -> ControlPlaneIssuer {
        ControlPlaneIssuer { inner: self.inner.clone() }
    }

    /// Receives configuration forever. Each version is handed to `apply`, which installs it or says why not
    /// (the proxy then keeps its last good configuration); the answer goes back as ACK or NACK. `apply` is
    /// only ever called with configurations the control plane sent, never with a placeholder while
    /// disconnected.
    pub async fn run<F>(self, mut apply: F)
    where
        F: FnMut(MeshConfig) -> Result<(), String>,
    {
        let mut delay = self.backoff.initial;
        loop {
            let mut received = false;
            match self.stream_once(&mut apply, &mut received).await {
                Ok(()) => tracing::warn!("configuration stream ended; reconnecting"),
                Err(e) => tracing::warn!(error = %e, "configuration stream failed; reconnecting"),
            }
            // A stream that delivered configuration was healthy: start the backoff over.
            if received {
                delay = self.backoff.initial;
            }
            let sleep = jitter(delay);
            tracing::debug!(?sleep, "waiting before reconnecting to the control plane");
            tokio::time::sleep(sleep).await;
            delay = (delay * 2).min(self.backoff.max);
        }
    }

    /// One stream, from connect to its end. Sets `received` once a push arrived.
    async fn stream_once<F>(&self, apply: &mut F, received: &mut bool) -> Result<(), ClientError>
    where
        F: FnMut(MeshConfig) -> Result<(), String>,
    {
        let (mut sender, _conn) = self.inner.connect::<ChannelBody>().await?;
        let (ack_tx, ack_rx) = mpsc::channel::<Bytes>(4);
        let mut request = self.inner.request(STREAM_PATH, ChannelBody(ack_rx))?;
        if let Some(admin) = &self.inner.admin {
            request.headers_mut().insert(strait_api::status::ADMIN_HEADER, admin.clone());
        }
        let offered = if self.on_demand().is_some() { OFFERED_ON_DEMAND } else { OFFERED_PROTOCOLS };
        request.headers_mut().insert(PROTOCOL_HEADER, header::HeaderValue::from_static(offered));
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(refused(STREAM_PATH, response).await);
        }
        // A control plane from before protocol 2 answers no version: it sends full snapshots.
        let protocol = match response.headers().get(PROTOCOL_HEADER).map(|v| v.to_str().map(str::trim)) {
            None => PROTOCOL_FULL,
            Some(Ok("1")) => PROTOCOL_FULL,
            Some(Ok("2")) => PROTOCOL_DELTA,
            Some(Ok("3")) if self.on_demand().is_some() => PROTOCOL_ON_DEMAND,
            Some(other) => {
                let answered = other.unwrap_or("(not ASCII)").chars().take(64).collect::<String>();
                return Err(ClientError::Protocol(format!("{PROTOCOL_HEADER}: {answered:?} was not offered")));
            }
        };
        tracing::info!(addr = self.inner.addr, protocol, "connected to the control plane");
        // Subscriptions travel on this stream's connection; it forgets them when the stream ends.
        let _link = match self.on_demand() {
            Some(discovery) if protocol == PROTOCOL_ON_DEMAND => {
                discovery.connected(Arc::new(StreamLink { sender: sender.clone(), inner: self.inner.clone() }));
                Some(Disconnect(discovery.clone()))
            }
            _ => {
                if let Some(discovery) = &self.discovery {
                    discovery.connected_full();
                }
                None
            }
        };
        let mut body = response.into_body();
        let mut lines = LineDecoder::new(MAX_PUSH_LINE);
        let mut stream = Received::default();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            lines.push(&data);
            while let Some(line) = lines.next_line().map_err(|e| ClientError::Protocol(format!("a push: {e}")))? {
                let (version, config) = stream.receive(protocol, &line)?;
                *received = true;
                let error = match apply(config) {
                    Ok(()) => {
                        tracing::info!(version, "applied configuration");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(version, error = %e, "rejected configuration (NACK); keeping the last good one");
                        Some(e)
                    }
                };
                let ack =
                    encode_line(&ConfigAck { version, error }).map_err(|e| ClientError::Protocol(e.to_string()))?;
                if ack_tx.send(Bytes::from(ack)).await.is_err() {
                    return Err(ClientError::Closed);
                }
            }
        }
        Err(ClientError::Closed)
    }
}

/// Subscriptions on the HTTP/2 connection of a protocol 3 stream.
struct StreamLink {
    sender: SendRequest<ChannelBody>,
    inner: Arc<Inner>,
}

impl SubscribeLink for StreamLink {
    fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            let json = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
            let (tx, rx) = mpsc::channel(1);
            tx.try_send(Bytes::from(json)).map_err(|e| e.to_string())?;
            drop(tx);
            let request = self.inner.request(SUBSCRIBE_PATH, ChannelBody(rx)).map_err(|e| e.to_string())?;
            let mut sender = self.sender.clone();
            let exchange = async {
                let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
                if response.status() != StatusCode::OK {
                    return Err(refused(SUBSCRIBE_PATH, response).await.to_string());
                }
                Ok(())
            };
            tokio::time::timeout(SUBSCRIBE_TIMEOUT, exchange)
                .await
                .map_err(|_| format!("no answer to a subscription within {SUBSCRIBE_TIMEOUT:?}"))?
        })
    }
}

/// Tells discovery when the stream its subscriptions travel on ends.
struct Disconnect(Arc<Discovery>);

impl Drop for Disconnect {
    fn drop(&mut self) {
        self.0.disconnected();
    }
}

/// Aborts the task driving an HTTP/2 connection when the connection is no longer needed.
struct ConnTask(tokio::task::JoinHandle<()>);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Inner {
    async fn connect<B>(&self) -> Result<(SendRequest<B>, ConnTask), ClientError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let connect_err = |reason: String| ClientError::Connect { addr: self.addr.clone(), reason };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.addr))
            .await
            .map_err(|_| connect_err("timed out".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        // The server name is not checked (the certificate carries a SPIFFE URI, not a DNS name); the
        // verifier checks the identity instead.
        let tls = self
            .tls
            .connect(strait_certs::mesh_server_name(), tcp)
            .await
            .map_err(|source| ClientError::Tls { addr: self.addr.clone(), source })?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Notice a control plane that vanished without closing the connection.
            .keep_alive_interval(Some(Duration::from_secs(10)))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "control plane connection ended");
            }
        });
        Ok((sender, ConnTask(task)))
    }

    fn current_authorization(&self) -> header::HeaderValue {
        let fresh = self.token_file.as_ref().and_then(|path| match std::fs::read_to_string(path) {
            Ok(token) => header::HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not re-read the token; using the last one");
                None
            }
        });
        fresh.unwrap_or_else(|| self.authorization.clone())
    }

    fn request<B>(&self, path: &str, body: B) -> Result<Request<B>, ClientError> {
        Request::post(format!("https://{}{path}", self.addr))
            .header(header::AUTHORIZATION, self.current_authorization())
            .header(NODE_HEADER, self.node.clone())
            .body(body)
            .map_err(|_| ClientError::BadHeader)
    }

    async fn sign(&self, identity: &Identity) -> Result<WorkloadCert, String> {
        // The key is made here and never leaves the node; only the CSR travels.
        let (csr_pem, key_pem) = strait_certs::generate_csr(identity).map_err(|e| e.to_string())?;
        let request = CertificateRequest { identity: identity.to_string(), csr_pem };
        let json = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let (mut sender, _conn) = self.connect::<Full<Bytes>>().await.map_err(|e| e.to_string())?;
        let request = self.request(SIGN_PATH, Full::new(Bytes::from(json))).map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        if response.status() != StatusCode::OK {
            return Err(refused(SIGN_PATH, response).await.to_string());
        }
        let body = Limited::new(response.into_body(), 1 << 20)
            .collect()
            .await
            .map_err(|e| format!("reading the signed certificate: {e}"))?
            .to_bytes();
        let signed: CertificateResponse =
            serde_json::from_slice(&body).map_err(|e| format!("the answer is not a CertificateResponse: {e}"))?;
        WorkloadCert::from_pem(&signed.chain_pem, &key_pem).map_err(|e| e.to_string())
    }
}

/// The error for a non-200 answer, with the server's explanation.
async fn refused(path: &'static str, response: http::Response<Incoming>) -> ClientError {
    let status = response.status();
    let message = match Limited::new(response.into_body(), 64 * 1024).collect().await {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).trim().to_string(),
        Err(_) => String::new(),
    };
    ClientError::Refused { path, status, message }
}

fn jitter(max: Duration) -> Duration {
    max.mul_f64(rand::random::<f64>())
}

/// Issues workload certificates by having the control plane sign CSRs generated on this node.
#[derive(Clone)]
pub struct ControlPlaneIssuer {
    inner: Arc<Inner>,
}

impl CertIssuer for ControlPlaneIssuer {
    fn issue(
        &self,
        id: &Identity,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<WorkloadCert, CertError>> + Send + '_>> {
        let id = id.clone();
        Box::pin(async move {
            let fetch = |message: String| CertError::Fetch { identity: id.clone(), message };
            match tokio::time::timeout(SIGN_TIMEOUT, self.inner.sign(&id)).await {
                Ok(Ok(cert)) => Ok(cert),
                Ok(Err(message)) => Err(fetch(message)),
                Err(_) => Err(fetch(format!("no answer from the control plane within {SIGN_TIMEOUT:?}"))),
            }
        })
    }
}

/// A request body fed from a channel: each ACK goes out as soon as it is queued.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(line: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&line).expect("encodes")
    }

    fn full(version: u64) -> Vec<u8> {
        update(serde_json::json!({
            "kind": "full", "version": version, "node": "n1",
            "config": {"workloads": [{"name": "a", "namespace": "shop", "node": "n1", "address": "10.0.0.1"}]}
        }))
    }

    fn delta(version: u64, base: u64, name: &str) -> Vec<u8> {
        update(serde_json::json!({
            "kind": "delta", "version": version, "node": "n1", "base": base,
            "upserts": [{"kind": "workload", "value": {"name": name, "namespace": "shop", "node": "n2", "address": "10.0.0.2"}}],
            "removals": [{"kind": "workload", "namespace": "shop", "name": "a"}]
        }))
    }

    #[test]
    fn deltas_apply_onto_the_last_version_received() {
        let mut stream = Received::default();
        let (version, config) = stream.receive(PROTOCOL_DELTA, &full(5)).expect("a full snapshot");
        assert_eq!((version, config.workloads.len()), (5, 1));
        let (version, config) = stream.receive(PROTOCOL_DELTA, &delta(6, 5, "b")).expect("applies");
        assert_eq!(version, 6);
        let names: Vec<&str> = config.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["b"], "a upserted, b removed");
        assert_eq!(config.trust_domain, "cluster.local");
    }

    #[test]
    fn a_delta_for_another_base_asks_for_a_full_snapshot() {
        let mut stream = Received::default();
        let err = stream.receive(PROTOCOL_DELTA, &delta(6, 5, "b")).expect_err("nothing held yet");
        assert!(matches!(err, ClientError::BaseMismatch { base: 5, .. }), "{err}");
        stream.receive(PROTOCOL_DELTA, &full(5)).expect("a full snapshot");
        let err = stream.receive(PROTOCOL_DELTA, &delta(8, 7, "b")).expect_err("holds 5, not 7");
        assert!(
            err.to_string().contains("delta from version 7") && err.to_string().contains("holds version 5"),
            "{err}"
        );
        stream.receive(PROTOCOL_DELTA, &delta(6, 5, "b")).expect("applies");
        // Removing what the base does not hold: the two ends disagree.
        let err = stream.receive(PROTOCOL_DELTA, &delta(7, 6, "c")).expect_err("a is gone already");
        assert!(matches!(err, ClientError::Delta { version: 7, .. }), "{err}");
    }

    #[test]
    fn protocol_1_lines_are_whole_configurations() {
        let mut stream = Received::default();
        let line = br#"{"version":3,"node":"n1","config":{"workloads":[]}}"#;
        let (version, config) = stream.receive(PROTOCOL_FULL, line).expect("a protocol 1 push");
        assert_eq!((version, config), (3, MeshConfig::default()));
    }

    #[test]
    fn jitter_stays_within_the_delay() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(100)) <= Duration::from_millis(100));
        }
    }
}
