//! Connections from the proxy to an HTTP endpoint, pooled by hyper's client: through the mTLS tunnel for a pod
//! on another node, through the destination-side checks in memory for a pod on this node, straight over TCP
//! for an address outside the mesh.
//!
//! The destination's `connectionPool` governs the pooled connections on both hops (the source proxy's towards
//! the destination, the destination proxy's towards the pod): `http.idleTimeout` is the pool's idle timeout
//! (one client per timeout value), `http.maxRequestsPerConnection` retires a connection after that many
//! requests ([`send`]), and `tcp.maxConnections` caps the source proxy's open connections to the destination
//! service ([`ConnectionSlots`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_api::{Protocol, ServiceRef};
use strait_certs::Identity;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

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

/// One pooled upstream connection: the transport, the requests it has carried (for
/// `maxRequestsPerConnection`, read back from the response's extensions by [`send`]) and, when the destination
/// caps its connections, the slot it holds until it closes.
pub struct Pooled {
    conn: Conn,
    requests: RequestCount,
    _slot: Option<Slot>,
}

impl Pooled {
    fn new(conn: Conn, slot: Option<Slot>) -> Self {
        Pooled { conn, requests: RequestCount::default(), _slot: slot }
    }
}

impl Connection for Pooled {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.requests.clone())
    }
}

impl AsyncRead for Pooled {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pooled {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
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
    slots: Arc<ConnectionSlots>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the request has no endpoint address")]
    NoAuthority,
    #[error("refused: {0}")]
    Denied(DenyReason),
    #[error("no connection to {0} within the connect timeout")]
    Timeout(SocketAddr),
    /// `connectionPool.tcp.maxConnections` connections to the destination are open and none closed in time.
    #[error("upstream overflow: {max} connections to {service} are open (connectionPool.tcp.maxConnections)")]
    Overflow { service: String, max: usize },
    #[error("{0}")]
    Tunnel(#[from] crate::tunnel::TunnelError),
    #[error("connecting to {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
}

fn endpoint_of(uri: &Uri) -> Option<SocketAddr> {
    uri.authority()?.as_str().parse().ok()
}

impl tower::Service<Uri> for MeshConnector {
    type Response = TokioIo<Pooled>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let ctx = self.ctx.clone();
        let source = self.source.clone();
        let slots = self.slots.clone();
        Box::pin(async move {
            let target = endpoint_of(&uri).ok_or(ConnectError::NoAuthority)?;
            connect(&ctx, &source, &slots, target).await.map(TokioIo::new)
        })
    }
}

/// Connects within the destination service's `connectionPool.tcp.connectTimeout`, else the proxy's own bound,
/// after taking one of its `tcp.maxConnections` slots. Waiting for a slot shares that bound: a request whose
/// connection cannot be opened in time fails either way, and a slot frees as soon as a pooled connection
/// closes (hyper meanwhile hands the request any connection that becomes idle, so the wait is short unless
/// every connection is busy).
async fn connect(
    ctx: &Arc<ProxyContext>,
    source: &Arc<WorkloadInfo>,
    slots: &ConnectionSlots,
    target: SocketAddr,
) -> Result<Pooled, ConnectError> {
    let (limit, cap) = {
        let state = ctx.state.current();
        match state.endpoint_service(target) {
            Some(service) => {
                let settings = state.destination_settings(service);
                let cap = settings
                    .max_connections
                    .map(|max| (ServiceRef::new(&service.name, &service.namespace), max as usize));
                (settings.connect_timeout, cap)
            }
            None => (None, None),
        }
    };
    let deadline = tokio::time::Instant::now() + limit.unwrap_or(ctx.connect_timeout);
    let slot = match cap {
        Some((service, max)) => match tokio::time::timeout_at(deadline, slots.acquire(&service, max)).await {
            Ok(slot) => Some(slot),
            Err(_) => return Err(ConnectError::Overflow { service: service.fqdn(), max }),
        },
        None => None,
    };
    match tokio::time::timeout_at(deadline, connect_now(ctx, source, target)).await {
        Ok(result) => result.map(|conn| Pooled::new(conn, slot)),
        Err(_) => Err(ConnectError::Timeout(target)),
    }
}

/// Whether a client error is [`ConnectError::Overflow`]: the request was refused locally (503 `UO`), it did
/// not fail to connect.
pub fn is_overflow(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if matches!(e.downcast_ref::<ConnectError>(), Some(ConnectError::Overflow { .. })) {
            return true;
        }
        source = e.source();
    }
    false
}

/// `connectionPool.tcp.maxConnections` on HTTP ports: the open upstream connections (busy or idle in a
/// pool) from this proxy to each destination service, whichever source workload's client holds them.
#[derive(Default)]
pub struct ConnectionSlots {
    services: Mutex<HashMap<ServiceRef, Arc<SlotCount>>>,
}

#[derive(Debug, Default)]
struct SlotCount {
    open: AtomicUsize,
    freed: Notify,
}

/// One open connection's place in its destination's count, given back when the connection closes.
#[derive(Debug)]
pub struct Slot(Arc<SlotCount>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl ConnectionSlots {
    /// A slot for one more connection to `service`, once fewer than `max` are open (the caller bounds the
    /// wait). The limit is read at each call, so a new configuration applies to the next connection.
    pub async fn acquire(&self, service: &ServiceRef, max: usize) -> Slot {
        let count = {
            let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
            services.entry(service.clone()).or_default().clone()
        };
        loop {
            // Registered before the check, so a slot freed in between still wakes this waiter.
            let freed = count.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if count.open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok() {
                return Slot(count.clone());
            }
            freed.await;
        }
    }

    /// Connections open to `service` now.
    #[cfg(test)]
    pub fn open(&self, service: &ServiceRef) -> usize {
        let services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services.get(service).map_or(0, |c| c.open.load(Ordering::Acquire))
    }

    /// Forgets the counts of services `keep` refuses that have no connection open.
    pub fn retain(&self, keep: impl Fn(&ServiceRef) -> bool) {
        let mut services = self.services.lock().unwrap_or_else(|e| e.into_inner());
        services.retain(|service, count| keep(service) || count.open.load(Ordering::Acquire) > 0);
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
            let labels =
                ConnectionLabels::new("destination").with_destination(&destination.labels).with_source(&source.labels);
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

use super::hop_by_hop::strip_hop_by_hop;

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

pub use super::reuse::{send, ConnectionReuse, RequestCount};

/// hyper clients (with their connection pools) per source workload, HTTP version and idle timeout. Keyed by
/// the workload, not by its address alone: a pod that reuses a departed pod's IP must never get its pooled
/// connections, which carry the old pod's identity.
#[derive(Default)]
pub struct Clients {
    /// By the source's address first, then the whole key compared in place: a request finds its client
    /// without copying the workload's names into a key.
    clients: Mutex<HashMap<ClientsKey, Vec<(SourceKey, UpstreamClient)>>>,
    slots: Arc<ConnectionSlots>,
}

/// The source's address, the version spoken and the pool's idle timeout.
type ClientsKey = (IpAddr, Version, Duration);

/// Which workload a client sends for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub address: IpAddr,
    pub namespace: String,
    pub name: String,
    pub identity: Option<Identity>,
}

impl SourceKey {
    /// Whether this is `source`'s key (as [`SourceKey::of`] would make it), without making one.
    pub fn is_of(&self, source: &WorkloadInfo) -> bool {
        self.address == source.workload.address
            && self.namespace == source.workload.namespace
            && self.name == source.workload.name
            && self.identity == source.identity
    }

    pub fn of(source: &WorkloadInfo) -> Self {
        SourceKey {
            address: source.workload.address,
            namespace: source.workload.namespace.clone(),
            name: source.workload.name.clone(),
            identity: source.identity.clone(),
        }
    }
}

impl Clients {
    pub fn get(
        &self,
        ctx: &Arc<ProxyContext>,
        source: &Arc<WorkloadInfo>,
        version: Version,
        reuse: ConnectionReuse,
    ) -> UpstreamClient {
        let key = (source.workload.address, version, reuse.idle());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let same_source = |(k, _): &&(SourceKey, UpstreamClient)| k.is_of(source);
        if let Some((_, client)) = clients.get(&key).and_then(|kept| kept.iter().find(same_source)) {
            return client.clone();
        }
        let connector = MeshConnector { ctx: ctx.clone(), source: source.clone(), slots: self.slots.clone() };
        let client = build_client(connector, version, reuse.idle());
        clients.entry(key).or_default().push((SourceKey::of(source), client.clone()));
        client
    }

    /// Drops the clients of sources that left this node (their pooled connections go with them).
    pub fn retain(&self, keep: impl Fn(&SourceKey) -> bool) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.retain(|_, kept| {
            kept.retain(|(source, _)| keep(source));
            !kept.is_empty()
        });
    }

    /// The open-connection counts per destination service (`tcp.maxConnections`).
    pub fn slots(&self) -> &ConnectionSlots {
        &self.slots
    }
}

/// Plain TCP to a pod on this node, with the proxy's mark so the node's rules let it through.
#[derive(Clone)]
pub struct PodConnector {
    outgoing: crate::tcp::socket::Outgoing,
}

impl tower::Service<Uri> for PodConnector {
    type Response = TokioIo<Pooled>;
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
            Ok(TokioIo::new(Pooled::new(Conn::Tcp(tcp), None)))
        })
    }
}

pub type PodClient = Client<PodConnector, BoxBody>;

/// The destination proxy's client towards its pods, pooling with the destination's idle timeout.
pub fn pod_client(outgoing: crate::tcp::socket::Outgoing, version: Version, reuse: ConnectionReuse) -> PodClient {
    build_client(PodConnector { outgoing }, version, reuse.idle())
}

/// The key of [`pod_client`]s: one per version and idle timeout.
pub fn pod_client_key(version: Version, reuse: ConnectionReuse) -> (Version, Duration) {
    (version, reuse.idle())
}

/// A pooling client that speaks `version`, with the tunnel's windows for HTTP/2.
fn build_client<C>(connector: C, version: Version, idle: Duration) -> Client<C, BoxBody>
where
    C: hyper_util::client::legacy::connect::Connect + Clone,
{
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(idle).pool_timer(hyper_util::rt::TokioTimer::new());
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

    #[tokio::test(start_paused = true)]
    async fn connections_beyond_the_cap_wait_for_one_to_close() {
        let slots = ConnectionSlots::default();
        let reviews = ServiceRef::new("reviews", "shop");
        let ratings = ServiceRef::new("ratings", "shop");
        let first = slots.acquire(&reviews, 2).await;
        let _second = slots.acquire(&reviews, 2).await;
        assert_eq!(slots.open(&reviews), 2);
        // Another service has its own count.
        let _other = slots.acquire(&ratings, 2).await;
        let third = tokio::time::timeout(Duration::from_millis(100), slots.acquire(&reviews, 2)).await;
        assert!(third.is_err(), "a third connection to reviews was allowed");
        assert_eq!(slots.open(&reviews), 2, "a waiter that gave up holds nothing");

        let waiter = tokio::spawn(async move {
            let slot = slots.acquire(&reviews, 2).await;
            (slots, slot)
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        let (slots, _third) = waiter.await.expect("the waiter gets the freed slot");
        assert_eq!(slots.open(&ServiceRef::new("reviews", "shop")), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_cap_applies_to_the_next_connection() {
        let slots = ConnectionSlots::default();
        let reviews = ServiceRef::new("reviews", "shop");
        let held: Vec<Slot> = futures_util::future::join_all((0..3).map(|_| slots.acquire(&reviews, 10))).await;
        assert!(tokio::time::timeout(Duration::from_millis(10), slots.acquire(&reviews, 3)).await.is_err());
        drop(held);
        slots.retain(|_| false);
        assert_eq!(slots.open(&reviews), 0);
    }
}
