//! Connections from the proxy to an HTTP endpoint, pooled by hyper's client: through the mTLS tunnel for a pod
//! on another node, through the destination-side checks in memory for a pod on this node, straight over TCP
//! for an address outside the mesh.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_api::Protocol;
use strait_certs::Identity;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;

use super::BoxBody;
use crate::context::ProxyContext;
use crate::plan::{plan, DenyReason, Upstream};
use crate::policy::Caller;
use crate::state::WorkloadInfo;
use crate::tcp::inbound::serve_stream;
use crate::telemetry::labels::ConnectionLabels;
use crate::tunnel::H2Stream;

/// In-memory pipe size for same-node requests.
const LOCAL_PIPE: usize = 256 * 1024;

/// One upstream transport.
pub enum Conn {
    Tunnel(H2Stream),
    Local(DuplexStream),
    Tcp(TcpStream),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Tunnel($s) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Local($s) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// The connector behind one source workload's client: the URI's authority is the endpoint (`podIP:port`).
#[derive(Clone)]
pub struct MeshConnector {
    ctx: Arc<ProxyContext>,
    source: Arc<WorkloadInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the request has no endpoint address")]
    NoAuthority,
    #[error("refused: {0}")]
    Denied(DenyReason),
    #[error("no connection to {0} within the connect timeout")]
    Timeout(SocketAddr),
    #[error("{0}")]
    Tunnel(#[from] crate::tunnel::TunnelError),
    #[error("connecting to {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
}

fn endpoint_of(uri: &Uri) -> Option<SocketAddr> {
    uri.authority()?.as_str().parse().ok()
}

impl tower::Service<Uri> for MeshConnector {
    type Response = TokioIo<Conn>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let ctx = self.ctx.clone();
        let source = self.source.clone();
        Box::pin(async move {
            let target = endpoint_of(&uri).ok_or(ConnectError::NoAuthority)?;
            connect(&ctx, &source, target).await.map(TokioIo::new)
        })
    }
}

/// Connects within the destination service's `connectionPool.tcp.connectTimeout`, else the proxy's own bound.
async fn connect(
    ctx: &Arc<ProxyContext>,
    source: &Arc<WorkloadInfo>,
    target: SocketAddr,
) -> Result<Conn, ConnectError> {
    let limit = {
        let state = ctx.state.current();
        state.endpoint_service(target).and_then(|s| state.destination_settings(s).connect_timeout)
    };
    match tokio::time::timeout(limit.unwrap_or(ctx.connect_timeout), connect_now(ctx, source, target)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout(target)),
    }
}

async fn connect_now(
    ctx: &Arc<ProxyContext>,
    source: &Arc<WorkloadInfo>,
    target: SocketAddr,
) -> Result<Conn, ConnectError> {
    let state = ctx.state.current();
    match plan(&state, source, target) {
        Upstream::Passthrough { target } => {
            let tcp =
                ctx.outgoing.connect(target).await.map_err(|source| ConnectError::Tcp { addr: target, source })?;
            Ok(Conn::Tcp(tcp))
        }
        Upstream::Local { destination, target } => {
            // Same node: run the destination side's checks on one end of an in-memory pipe.
            let (client, server) = tokio::io::duplex(LOCAL_PIPE);
            let caller = Caller { identity: source.identity.clone(), address: source.workload.address };
            let labels = ConnectionLabels::new("destination").with_destination(&destination).with_source(source);
            let ctx = ctx.clone();
            tokio::spawn(async move {
                serve_stream(&ctx, server, caller, destination, target, labels).await;
            });
            Ok(Conn::Local(client))
        }
        Upstream::Tunnel { target, dial, key, .. } => {
            Ok(Conn::Tunnel(ctx.pool.open(&key, dial, target, source.workload.address).await?))
        }
        Upstream::Deny(reason) => Err(ConnectError::Denied(reason)),
    }
}

/// An HTTP version spoken on a connection: what [`Version::upstream`] chooses for the source proxy's hop,
/// and what the destination proxy repeats towards the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    Http1,
    Http2,
}

impl Version {
    /// The version a request arrived in.
    pub fn of<B>(request: &http::Request<B>) -> Version {
        if request.version() == http::Version::HTTP_2 {
            Version::Http2
        } else {
            Version::Http1
        }
    }

    /// The version to speak to a destination port, as Istio chooses it: the port's declaration decides
    /// (`http` -> HTTP/1.1; `http2`, `h2c`, `grpc` -> HTTP/2), because a backend that declared one version
    /// may speak only that one; a port that declares nothing (sniffed), or a DestinationPolicy with
    /// `useClientProtocol`, follows the client.
    pub fn upstream(declared: Protocol, use_client_protocol: bool, client: Version) -> Version {
        match declared {
            _ if use_client_protocol => client,
            Protocol::Http => Version::Http1,
            Protocol::Http2 => Version::Http2,
            Protocol::Tcp | Protocol::Unknown => client,
        }
    }

    pub fn http(self) -> http::Version {
        match self {
            Version::Http1 => http::Version::HTTP_11,
            Version::Http2 => http::Version::HTTP_2,
        }
    }
}

/// Headers that describe one HTTP/1.1 connection rather than the message (RFC 9110 7.6.1), forbidden in
/// HTTP/2 (RFC 9113 8.2.2). `te: trailers` is the one form HTTP/2 keeps.
const HOP_BY_HOP: [&str; 6] = ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"];

fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let trailers = headers.get(http::header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // The names the `Connection` header lists are connection-specific too.
    let listed: Vec<http::HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| http::HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if trailers {
        headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    }
}

/// Turns a request that arrived in one HTTP version into one for an upstream of `version`: HTTP/1.1 needs a
/// `Host` (an HTTP/2 request names its authority in the URI), HTTP/2 refuses connection-specific headers.
pub fn translate_request<B>(request: &mut http::Request<B>, version: Version) {
    strip_hop_by_hop(request.headers_mut());
    if version == Version::Http1 && !request.headers().contains_key(http::header::HOST) {
        let host = request.uri().authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
        if let Some(host) = host {
            request.headers_mut().insert(http::header::HOST, host);
        }
    }
    *request.version_mut() = version.http();
}

/// The response of an upstream spoken to in another version than the client's, made fit for the client.
pub fn translate_response<B>(response: &mut http::Response<B>, client: Version) {
    strip_hop_by_hop(response.headers_mut());
    *response.version_mut() = client.http();
}

pub type UpstreamClient = Client<MeshConnector, BoxBody>;

/// hyper clients (with their connection pools) per source workload and HTTP version. Keyed by the workload,
/// not by its address alone: a pod that reuses a departed pod's IP must never get its pooled connections,
/// which carry the old pod's identity.
#[derive(Default)]
pub struct Clients {
    clients: Mutex<HashMap<(SourceKey, Version), UpstreamClient>>,
}

/// Which workload a client sends for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub address: IpAddr,
    pub namespace: String,
    pub name: String,
    pub identity: Option<Identity>,
}

impl SourceKey {
    pub fn of(source: &WorkloadInfo) -> Self {
        SourceKey {
            address: source.workload.address,
            namespace: source.workload.namespace.clone(),
            name: source.workload.name.clone(),
            identity: source.identity.clone(),
        }
    }
}

/// Idle upstream HTTP connections close after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);

impl Clients {
    pub fn get(&self, ctx: &Arc<ProxyContext>, source: &Arc<WorkloadInfo>, version: Version) -> UpstreamClient {
        let key = (SourceKey::of(source), version);
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let client = build_client(MeshConnector { ctx: ctx.clone(), source: source.clone() }, version);
        clients.insert(key, client.clone());
        client
    }

    /// Drops the clients of sources that left this node (their pooled connections go with them).
    pub fn retain(&self, keep: impl Fn(&SourceKey) -> bool) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).retain(|(source, _), _| keep(source));
    }
}

/// Plain TCP to a pod on this node, with the proxy's mark so the node's rules let it through.
#[derive(Clone)]
pub struct PodConnector {
    outgoing: crate::tcp::socket::Outgoing,
}

impl tower::Service<Uri> for PodConnector {
    type Response = TokioIo<Conn>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let outgoing = self.outgoing;
        Box::pin(async move {
            let target = endpoint_of(&uri).ok_or(ConnectError::NoAuthority)?;
            let tcp = outgoing.connect(target).await.map_err(|source| ConnectError::Tcp { addr: target, source })?;
            Ok(TokioIo::new(Conn::Tcp(tcp)))
        })
    }
}

pub type PodClient = Client<PodConnector, BoxBody>;

pub fn pod_client(outgoing: crate::tcp::socket::Outgoing, version: Version) -> PodClient {
    build_client(PodConnector { outgoing }, version)
}

/// A pooling client that speaks `version`, with the tunnel's windows for HTTP/2.
fn build_client<C>(connector: C, version: Version) -> Client<C, BoxBody>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(POOL_IDLE).pool_timer(hyper_util::rt::TokioTimer::new());
    if version == Version::Http2 {
        builder
            .http2_only(true)
            .http2_initial_stream_window_size(crate::tunnel::STREAM_WINDOW)
            .http2_initial_connection_window_size(crate::tunnel::CONNECTION_WINDOW);
    }
    builder.build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_declaration_chooses_the_upstream_version() {
        use Version::{Http1, Http2};
        for client in [Http1, Http2] {
            assert_eq!(Version::upstream(Protocol::Http, false, client), Http1);
            assert_eq!(Version::upstream(Protocol::Http2, false, client), Http2);
            assert_eq!(Version::upstream(Protocol::Unknown, false, client), client);
            for declared in [Protocol::Http, Protocol::Http2, Protocol::Unknown] {
                assert_eq!(Version::upstream(declared, true, client), client, "useClientProtocol");
            }
        }
    }
}
