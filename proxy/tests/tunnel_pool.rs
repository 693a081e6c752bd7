//! The tunnel pool against a real mTLS HTTP/2 CONNECT peer on loopback: streams share a connection up to the
//! cap, then a new connection opens; idle connections close; half-close crosses the tunnel; a peer with the
//! wrong identity is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strait_certs::{CertStore, Identity, MeshCa, TrustBundle};
use strait_proxy::telemetry::metrics::Metrics;
use strait_proxy::tunnel::{H2Stream, Pool, PoolConfig, PoolKey, TunnelError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "shop", sa).expect("valid identity")
}

/// A tunnel peer presenting `identity` that echoes every CONNECT stream, and counts TLS connections.
async fn echo_peer(certs: Arc<CertStore>, identity: Identity) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    certs.get_or_fetch(&identity).await.expect("server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server_config(&identity));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut conn) = h2::server::handshake(tls).await else { return };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let Ok(send) = respond.send_response(http::Response::new(()), false) else { return };
                        let mut stream = H2Stream::new(send, request.into_body());
                        let mut data = Vec::new();
                        let _ = stream.read_to_end(&mut data).await;
                        let _ = stream.write_all(&data).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
        }
    });
    (addr, connections)
}

fn setup(max_streams: usize, idle: Duration) -> (Arc<CertStore>, Pool) {
    let ca = MeshCa::generate("cluster.local").expect("CA");
    let certs = Arc::new(CertStore::new(Arc::new(ca.clone()), TrustBundle::from_ca(&ca)));
    let config = PoolConfig { max_streams_per_connection: max_streams, idle_timeout: idle, ..PoolConfig::default() };
    let pool = Pool::new(config, certs.clone(), Arc::new(Metrics::new()));
    (certs, pool)
}

async fn echo(stream: &mut H2Stream, payload: &[u8]) -> Vec<u8> {
    stream.write_all(payload).await.expect("write");
    // Half-close: the peer only answers once it has seen the end of the request.
    stream.shutdown().await.expect("half-close");
    let mut back = Vec::new();
    stream.read_to_end(&mut back).await.expect("read");
    back
}

#[tokio::test]
async fn streams_share_connections_up_to_the_cap_and_idle_ones_close() {
    let (certs, pool) = setup(2, Duration::from_millis(300));
    let (peer, accepted) = echo_peer(certs.clone(), id("server")).await;
    let key = PoolKey { source: id("client"), node: "node-b".into(), destination: id("server") };
    let target: SocketAddr = "10.0.0.9:8080".parse().expect("addr");
    let source = "10.0.0.1".parse().expect("ip");

    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(pool.open(&key, peer, target, source).await.expect("open"));
    }
    assert_eq!(pool.connection_count(), 2, "two streams on the first connection, the third on a second");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    for (i, stream) in streams.iter_mut().enumerate() {
        let payload = format!("hello {i}").into_bytes();
        assert_eq!(echo(stream, &payload).await, payload, "half-close then the whole answer");
    }
    drop(streams);
    // Streams done: a new one reuses a pooled connection rather than dialling.
    let mut again = pool.open(&key, peer, target, source).await.expect("open");
    assert_eq!(echo(&mut again, b"x").await, b"x");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2, "reused");
    drop(again);

    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.connection_count() > 0 {
        assert!(Instant::now() < deadline, "idle connections were not closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_peer_with_the_wrong_identity_is_refused() {
    let (certs, pool) = setup(100, Duration::from_secs(60));
    let (peer, _) = echo_peer(certs.clone(), id("impostor")).await;
    let key = PoolKey { source: id("client"), node: "node-b".into(), destination: id("server") };
    let result = pool.open(&key, peer, "10.0.0.9:8080".parse().expect("addr"), "10.0.0.1".parse().expect("ip")).await;
    match result {
        Err(TunnelError::Tls { reason, .. }) => assert_eq!(reason.as_str(), "wrong_identity"),
        Err(other) => panic!("expected a TLS refusal, got {other}"),
        Ok(_) => panic!("connected to a peer with the wrong identity"),
    }
    assert_eq!(pool.connection_count(), 0);
}

#[tokio::test]
async fn a_peer_that_never_finishes_the_handshake_times_out() {
    let ca = MeshCa::generate("cluster.local").expect("CA");
    let certs = Arc::new(CertStore::new(Arc::new(ca.clone()), TrustBundle::from_ca(&ca)));
    let config = PoolConfig { connect_timeout: Duration::from_millis(300), ..PoolConfig::default() };
    let pool = Pool::new(config, certs, Arc::new(Metrics::new()));
    // Accepts TCP, then says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let key = PoolKey { source: id("client"), node: "node-b".into(), destination: id("server") };
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        pool.open(&key, peer, "10.0.0.9:8080".parse().expect("addr"), "10.0.0.1".parse().expect("ip")),
    )
    .await
    .expect("open() gave up by itself");
    assert!(matches!(result, Err(TunnelError::ConnectTimeout(addr)) if addr == peer), "{:?}", result.err());
}
