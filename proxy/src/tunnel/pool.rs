//! Pooled HTTP/2 connections to peer node proxies. One connection carries many CONNECT streams; connections are
//! keyed by (source identity, destination node, destination identity) because the TLS handshake authenticates
//! exactly that pair.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use strait_certs::{CertStore, Identity, TlsFailureReason};
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::{H2Stream, CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW};
use crate::tcp::socket::Outgoing;
use crate::telemetry::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Streams on one connection before another is opened.
    pub max_streams_per_connection: usize,
    /// A connection with no stream for this long is closed.
    pub idle_timeout: Duration,
    /// Pings detect a peer that vanished without closing (node gone, link cut).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    pub outgoing: Outgoing,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_streams_per_connection: super::MAX_CONCURRENT_STREAMS as usize,
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            outgoing: Outgoing::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub source: Identity,
    pub node: String,
    pub destination: Identity,
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("could not reach the node proxy at {addr}: {source} (is port 15008 open between nodes? a NetworkPolicy may block it)")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("timed out connecting to the node proxy at {0}")]
    ConnectTimeout(SocketAddr),
    #[error("TLS handshake with {addr} failed ({reason}): {source}")]
    Tls { addr: SocketAddr, reason: TlsFailureReason, source: std::io::Error },
    #[error("no certificate for {identity}: {message}")]
    Certificate { identity: Identity, message: String },
    #[error("HTTP/2 with {addr} failed: {source}")]
    Http2 { addr: SocketAddr, source: h2::Error },
    #[error("the peer proxy answered {status} for CONNECT {authority}")]
    Refused { authority: SocketAddr, status: StatusCode },
}

pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    config: PoolConfig,
    certs: Arc<CertStore>,
    metrics: Arc<Metrics>,
    connections: Mutex<HashMap<PoolKey, Vec<Arc<Connection>>>>,
    next_id: AtomicU64,
}

struct Connection {
    send: h2::client::SendRequest<Bytes>,
    streams: AtomicUsize,
    idle_since: Mutex<Instant>,
    closed: Arc<AtomicBool>,
}

/// Keeps a connection's stream count right for as long as a tunnel stream lives.
struct Lease {
    connection: Arc<Connection>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.connection.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut since) = self.connection.idle_since.lock() {
                *since = Instant::now();
            }
        }
    }
}

impl Pool {
    pub fn new(config: PoolConfig, certs: Arc<CertStore>, metrics: Arc<Metrics>) -> Self {
        let inner = Arc::new(Inner {
            config,
            certs,
            metrics,
            connections: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        tokio::spawn(reap_idle(Arc::downgrade(&inner)));
        Pool { inner }
    }

    /// Opens a CONNECT stream to `authority` (the destination pod's address and port) through the node proxy
    /// reachable at `dial` (the destination pod's address on the tunnel port). `source` is the calling pod's
    /// address, sent in a `Forwarded` header as ztunnel does: the peer trusts it only when the workload at that
    /// address holds the identity the TLS handshake proved.
    pub async fn open(
        &self,
        key: &PoolKey,
        dial: SocketAddr,
        authority: SocketAddr,
        source: std::net::IpAddr,
    ) -> Result<H2Stream, TunnelError> {
        let mut reused = self.reuse(key);
        loop {
            let (connection, was_reused) = match reused.take() {
                Some(c) => (c, true),
                None => (self.establish(key, dial).await?, false),
            };
            let lease = Lease { connection: connection.clone() };
            match open_stream(&connection, dial, authority, source).await {
                Ok((send, recv)) => return Ok(H2Stream::new(send, recv).with_guard(Box::new(lease))),
                // A pooled connection whose peer sent GOAWAY (a draining proxy) or that died while idle takes no
                // new stream, and the peer never saw this one: stop handing the connection out and open the
                // stream elsewhere. Each retry retires one pooled connection, so this ends; a fresh connection's
                // failure is the caller's.
                Err(Open::NotHere(source)) if was_reused => {
                    debug!(peer = %dial, error = %source, "pooled tunnel connection takes no new stream; retiring it");
                    connection.closed.store(true, Ordering::Release);
                    reused = self.reuse(key);
                }
                Err(Open::NotHere(source)) => return Err(TunnelError::Http2 { addr: dial, source }),
                Err(Open::Failed(e)) => return Err(e),
            }
        }
    }

    /// Number of open tunnel connections, for the pool-size gauge and tests.
    pub fn connection_count(&self) -> usize {
        self.inner.connections.lock().map(|m| m.values().map(Vec::len).sum()).unwrap_or(0)
    }

    fn reuse(&self, key: &PoolKey) -> Option<Arc<Connection>> {
        let mut map = self.inner.connections.lock().ok()?;
        let list = map.get_mut(key)?;
        list.retain(|c| !c.closed.load(Ordering::Acquire));
        let cap = self.inner.config.max_streams_per_connection;
        let chosen = list.iter().find(|c| c.streams.load(Ordering::Acquire) < cap)?.clone();
        chosen.streams.fetch_add(1, Ordering::AcqRel);
        Some(chosen)
    }

    async fn establish(&self, key: &PoolKey, dial: SocketAddr) -> Result<Arc<Connection>, TunnelError> {
        let config = &self.inner.config;
        let tcp = tokio::time::timeout(config.connect_timeout, config.outgoing.connect(dial))
            .await
            .map_err(|_| TunnelError::ConnectTimeout(dial))?
            .map_err(|source| TunnelError::Connect { addr: dial, source })?;
        self.inner
            .certs
            .get_or_fetch(&key.source)
            .await
            .map_err(|e| TunnelError::Certificate { identity: key.source.clone(), message: e.to_string() })?;
        let tls_config = self.inner.certs.client_config(&key.source, key.destination.clone());
        // A peer that accepts TCP but never finishes the handshakes must not hold the caller forever.
        let handshakes = async {
            let tls = TlsConnector::from(tls_config).connect(strait_certs::mesh_server_name(), tcp).await.map_err(
                |source| {
                    let reason = strait_certs::classify_tls_error(&source);
                    self.inner.metrics.tls_handshake_failure("outbound", reason);
                    TunnelError::Tls { addr: dial, reason, source }
                },
            )?;
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME_SIZE)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|source| TunnelError::Http2 { addr: dial, source })
        };
        let (send, mut connection) = tokio::time::timeout(config.connect_timeout, handshakes)
            .await
            .map_err(|_| TunnelError::ConnectTimeout(dial))??;
        let closed = Arc::new(AtomicBool::new(false));
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let ping = connection.ping_pong();
        let driver_closed = closed.clone();
        let (interval, timeout) = (config.keepalive_interval, config.keepalive_timeout);
        let metrics = self.inner.metrics.clone();
        metrics.tunnel_connections.inc();
        tokio::spawn(async move {
            tokio::select! {
                result = &mut connection => {
                    if let Err(e) = result { debug!(id, peer = %dial, error = %e, "tunnel connection ended"); }
                }
                reason = keepalive(ping, interval, timeout) => {
                    warn!(id, peer = %dial, %reason, "closing tunnel connection");
                }
            }
            driver_closed.store(true, Ordering::Release);
            metrics.tunnel_connections.dec();
        });
        let connection =
            Arc::new(Connection { send, streams: AtomicUsize::new(1), idle_since: Mutex::new(Instant::now()), closed });
        debug!(id, peer = %dial, source = %key.source, destination = %key.destination, "new tunnel connection");
        if let Ok(mut map) = self.inner.connections.lock() {
            map.entry(key.clone()).or_default().push(connection.clone());
        }
        Ok(connection)
    }
}

/// Why a stream could not be opened on one connection.
enum Open {
    /// The peer never received the stream (the connection was refused new streams, or the peer's GOAWAY or
    /// REFUSED_STREAM says it did not process it): safe to try another connection.
    NotHere(h2::Error),
    Failed(TunnelError),
}

async fn open_stream(
    connection: &Connection,
    dial: SocketAddr,
    authority: SocketAddr,
    source: std::net::IpAddr,
) -> Result<(h2::SendStream<Bytes>, h2::RecvStream), Open> {
    let request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.to_string())
        .header(http::header::FORWARDED, forwarded_for(source))
        .body(())
        .map_err(|_| Open::Failed(TunnelError::Refused { authority, status: StatusCode::BAD_REQUEST }))?;
    let mut send = connection.send.clone().ready().await.map_err(Open::NotHere)?;
    let (response, stream) = send.send_request(request, false).map_err(Open::NotHere)?;
    let response = response.await.map_err(|e| {
        let unprocessed = (e.is_go_away() && e.is_remote()) || e.reason() == Some(h2::Reason::REFUSED_STREAM);
        if unprocessed {
            Open::NotHere(e)
        } else {
            Open::Failed(TunnelError::Http2 { addr: dial, source: e })
        }
    })?;
    if response.status() != StatusCode::OK {
        return Err(Open::Failed(TunnelError::Refused { authority, status: response.status() }));
    }
    Ok((stream, response.into_body()))
}

fn forwarded_for(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("for={v4}"),
        std::net::IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}

/// The address in a `Forwarded: for=...` header, if it is one.
pub fn parse_forwarded_for(value: &str) -> Option<std::net::IpAddr> {
    let element = value.split(',').next()?;
    let pair = element.split(';').find_map(|p| p.trim().strip_prefix("for="))?;
    let unquoted = pair.trim_matches('"');
    let bare = unquoted.strip_prefix('[').and_then(|s| s.split(']').next()).unwrap_or(unquoted);
    bare.parse().ok()
}

async fn keepalive(ping: Option<h2::PingPong>, interval: Duration, timeout: Duration) -> String {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("ping failed: {e}"),
            Err(_) => return format!("no ping answer within {timeout:?}: peer is gone"),
        }
    }
}

async fn reap_idle(inner: std::sync::Weak<Inner>) {
    loop {
        let period = match inner.upgrade() {
            Some(i) => (i.config.idle_timeout / 4).max(Duration::from_millis(100)),
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        let idle_timeout = inner.config.idle_timeout;
        let guard = inner.connections.lock();
        if let Ok(mut map) = guard {
            for list in map.values_mut() {
                list.retain(|c| {
                    let idle = c.streams.load(Ordering::Acquire) == 0
                        && c.idle_since.lock().map(|t| t.elapsed() >= idle_timeout).unwrap_or(false);
                    // Dropping the last SendRequest lets h2 close the connection with GOAWAY.
                    !(idle || c.closed.load(Ordering::Acquire))
                });
            }
            map.retain(|_, list| !list.is_empty());
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips() {
        for ip in ["10.1.0.2", "fd00:1::2"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(parse_forwarded_for(&forwarded_for(ip)), Some(ip));
        }
        assert_eq!(parse_forwarded_for("for=unknown"), None);
        assert_eq!(parse_forwarded_for("proto=http;for=10.0.0.1, for=10.0.0.2"), Some("10.0.0.1".parse().unwrap()));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::{forwarded_for, parse_forwarded_for};

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// A peer's `Forwarded` header is arbitrary text: it parses to an address or to nothing.
            #[test]
            fn any_forwarded_header_parses_or_is_ignored(value in ".{0,128}") {
                let _ = parse_forwarded_for(&value);
            }

            #[test]
            fn every_address_survives_the_header(ip in any::<std::net::IpAddr>()) {
                prop_assert_eq!(parse_forwarded_for(&forwarded_for(ip)), Some(ip));
            }
        }
    }
}
