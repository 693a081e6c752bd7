//! Real handshakes over loopback TCP with tokio-rustls.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use strait_certs::workload::parse_leaf;
use strait_certs::{
    classify_tls_error, client_config, client_config_without_client_auth, generate_csr, mesh_server_name,
    peer_identity, server_config, server_config_without_client_auth, CaError, CertError, CertIssuer, CertStore,
    Identity, MeshCa, StaticCertResolver, TlsError, TlsFailureReason, TrustBundle, WorkloadCert,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TTL: Duration = Duration::from_secs(3600);

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn server_id() -> Identity {
    id("spiffe://cluster.local/ns/shop/sa/backend")
}

fn client_id() -> Identity {
    id("spiffe://cluster.local/ns/shop/sa/frontend")
}

fn resolver(cert: WorkloadCert) -> Arc<StaticCertResolver> {
    StaticCertResolver::new(Arc::new(cert))
}

/// What the server side of one connection observed.
#[derive(Debug)]
struct ServerSide {
    peer: Result<Identity, String>,
    peer_serial: Option<String>,
}

/// Accepts one connection, records the client's identity, then echoes until EOF.
async fn serve_one(cfg: Arc<ServerConfig>) -> (SocketAddr, JoinHandle<Result<ServerSide, std::io::Error>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = TlsAcceptor::from(cfg).accept(tcp).await?;
        let conn = tls.get_ref().1;
        assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let side = ServerSide {
            peer: peer_identity(conn).map_err(|e| e.to_string()),
            peer_serial: conn.peer_certificates().map(|c| parse_leaf(c[0].as_ref()).unwrap().serial),
        };
        let mut buf = [0u8; 1024];
        loop {
            let n = tls.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            tls.write_all(&buf[..n]).await?;
            tls.flush().await?;
        }
        tls.shutdown().await?;
        Ok(side)
    });
    (addr, handle)
}

type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

async fn ping(tls: &mut ClientStream, msg: &[u8]) -> Result<(), std::io::Error> {
    tls.write_all(msg).await?;
    tls.flush().await?;
    let mut back = vec![0u8; msg.len()];
    tls.read_exact(&mut back).await?;
    assert_eq!(back, msg);
    Ok(())
}

/// Connects, handshakes and exchanges one message (a rejected client certificate only shows up
/// on the first read in TLS 1.3).
async fn connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> Result<ClientStream, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(cfg).connect(mesh_server_name(), tcp).await?;
    ping(&mut tls, b"hello").await?;
    Ok(tls)
}

/// Closes cleanly (close_notify), so the server's echo loop ends without an error.
async fn close(mut tls: ClientStream) {
    tls.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tls.read_to_end(&mut rest).await;
}

fn peer_serial(tls: &ClientStream) -> String {
    let certs = tls.get_ref().1.peer_certificates().unwrap();
    parse_leaf(certs[0].as_ref()).unwrap().serial
}

/// Runs a handshake expected to fail; returns (client reason, server reason).
async fn expect_failure(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> (TlsFailureReason, TlsFailureReason) {
    let (addr, srv) = serve_one(server).await;
    let client_err = connect(addr, client).await.expect_err("the handshake should have failed on the client");
    let server_err = tokio::time::timeout(Duration::from_secs(10), srv)
        .await
        .expect("server did not finish")
        .unwrap()
        .expect_err("the handshake should have failed on the server");
    (classify_tls_error(&client_err), classify_tls_error(&server_err))
}

#[tokio::test]
async fn mutual_handshake_shows_identity_on_both_sides() {
    let ca = MeshCa::generate("cluster.local").unwrap();
    let bundle = TrustBundle::from_ca(&ca);
    let server_cert = ca.issue(&server_id(), TTL).unwrap();
    let client_cert = ca.issue(&client_id(), TTL).unwrap();
    let client_serial = client_cert.serial().to_string();
    let server_serial = server_cert.serial().to_string();

    let (addr, srv) = serve_one(server_config(resolver(server_cert), &bundle)).await;
    let tls = connect(addr, client_config(Some(resolver(client_cert)), &bundle, server_id())).await.unwrap();
    let conn = tls.get_ref().1;
    assert_eq!(peer_identity(conn).unwrap(), server_id());
    assert_eq!(conn.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(peer_serial(&tls), server_serial);
    close(tls).await;

    let side = srv.await.unwrap().unwrap();
    assert_eq!(side.peer.unwrap(), client_id());
    assert_eq!(side.peer_serial.unwrap(), client_serial);
}

#[tokio::test]
async fn client_refuses_server_with_another_identity() {
    let ca = MeshCa::generate("cluster.local").unwrap();
    let bundle = TrustBundle::from_ca(&ca);
    let impostor = id("spiffe://cluster.local/ns/shop/sa/payments");
    let server = server_config(resolver(ca.issue(&impostor, TTL).unwrap()), &bundle);
    let client = client_config(Some(resolver(ca.issue(&client_id(), TTL).unwrap())), &bundle, server_id());

    let (addr, _srv) = serve_one(server.clone()).await;
    let err = connect(addr, client.clone()).await.err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("payments") && msg.contains("backend"), "error should name both identities: {msg}");

    let (c, s) = expect_failure(server, client).await;
    assert_eq!(c, TlsFailureReason::WrongIdentity);
    assert_eq!(s, TlsFailureReason::WrongIdentity);
}

#[tokio::test]
async fn server_refuses_client_of_another_trust_domain() {
    // The server trusts this root, but only for cluster.local; the client is other.domain.
    let foreign = MeshCa::generate("other.domain").unwrap();
    let bundle = TrustBundle::from_pem("cluster.local", foreign.root_pem()).unwrap();
    let foreign_server = id("spiffe://other.domain/ns/shop/sa/backend");
    let foreign_client = id("spiffe://other.domain/ns/shop/sa/frontend");
    let server = server_config(resolver(foreign.issue(&foreign_server, TTL).unwrap()), &bundle);
    let client = client_config(Some(resolver(foreign.issue(&foreign_client, TTL).unwrap())), &bundle, foreign_server);
    let (addr, srv) = serve_one(server.clone()).await;
    let client_err = connect(addr, client.clone()).await.err().unwrap();
    let server_err = srv.await.unwrap().err().unwrap();
    assert!(server_err.to_string().contains("not in the mesh trust domain"), "{server_err}");
    assert_eq!(classify_tls_error(&server_err), TlsFailureReason::WrongIdentity);
    assert_eq!(classify_tls_error(&client_err), TlsFailureReason::WrongIdentity);

    // And a client of cluster.local refuses a server identity of another trust domain even if
    // the name otherwise matches.
    let ca = MeshCa::generate("cluster.local").unwrap();
    let bundle = TrustBundle::from_ca(&ca);
    let other_ca = MeshCa::generate("other.domain").unwrap();
    let server = server_config(
        resolver(other_ca.issue(&id("spiffe://other.domain/ns/shop/sa/backend"), TTL).unwrap()),
        &TrustBundle::from_ca(&other_ca),
    );
    let client = client_config(Some(resolver(ca.issue(&client_id(), TTL).unwrap())), &bundle, server_id());
    let (c, s) = expect_failure(server, client).await;
    assert_eq!(c, TlsFailureReason::UnknownCa);
    assert_eq!(s, TlsFailureReason::UnknownCa);
}

#[tokio::test]
async fn certificates_from_another_ca_are_refused() {
    let ca = MeshCa::generate("cluster.local").unwrap();
    let bundle = TrustBundle::from_ca(&ca);
    // Same trust domain, same subject names: only the key differs.
    let rogue = MeshCa::generate("cluster.local").unwrap();

    // Rogue server certificate for exactly the expected identity.
    let server = server_config(resolver(rogue.issue(&server_id(), TTL).unwrap()), &bundle);
    let client = client_config(Some(resolver(ca.issue(&client_id(), TTL).unwrap())), &bundle, server_id());
    let (c, s) = expect_failure(server, client).await;
    assert_eq!(c, TlsFailureReason::UnknownCa);
    assert_eq!(s, TlsFailureReason::UnknownCa);

    // Rogue client certificate.
    let server = server_config(resolver(ca.issue(&server_id(), TTL).unwrap()), &bundle);
    let client = client_config(Some(resolver(rogue.issue(&client_id(), TTL).unwrap())), &bundle, server_id());
    let (c, s) = expect_failure(server, client).await;
    assert_eq!(s, TlsFailureReason::UnknownCa);
    assert_eq!(c, TlsFailureReason::UnknownCa);
}

/// Serves a certificate whether or not it is expired (unlike the crate's resolvers).
#[derive(Debug)]
struct AlwaysServe(Arc<CertifiedKey>);

impl ResolvesClientCert for AlwaysServe {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for AlwaysServe {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[tokio::test]
async fn expired_certificates_are_refused_and_never_served() {
    let ca = MeshCa::generate("cluster.local").unwrap();
    let bundle = TrustBundle::from_ca(&ca);
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let expired_server = ca.issue_with_validity(&server_id(), now - 2 * hour, now - hour).unwrap();
    assert!(expired_server.is_expired(now));
    let expired_client = ca.issue_with_validity(&client_id(), now - 2 * hour, now - hour).unwrap();

    // A server that (wrongly) serves an expired certificate is refused by the client.
    let server = server_config(Arc::new(AlwaysServe(expired_server.certified_key().unwrap())), &bundle);
    let client = client_config(Some(resolver(ca.issue(&client_id(), TTL).unwrap())), &bundle, server_id());
    let (c, s) = expect_failure(server, client).await;
    assert_eq!(c, TlsFailureReason::Expired);
    assert_eq!(s, TlsFailureReason::Expired);

    // A client presenting an expired certificate is refused by the server.
    let good_server = || server_config(resolver(ca.issue(&server_id(), TTL).unwrap()), &bundle);
    let client =
        client_config(Some(Arc::new(AlwaysServe(expired_client.certified_key().unwrap()))), &bundle, server_id());
    let (c, s) = expect_failure(good_server(), client).await;
    assert_eq!(s, TlsFailureReason::Expired);
    assert_eq!(c, TlsFailureReason::Expired);

    // The crate's resolver never presents an expired certificate: the server sees none.
    let client = client_config(Some(resolver(expired_client)), &bundle, server_id());
    let (c, s) = expect_failure(good_server(), client).await;
    assert_eq!(s, TlsFailureReason::NoClientCert);
    assert_eq!(c, TlsFailureReason::NoClientCert);
}

#[tokio::test]
async fn client_without_certificate() {
    let ca = MeshCa::generate("cluster.local").unwrap();
    let bundle = TrustBundle::from_ca(&ca);
    let control = id("spiffe://cluster.local/ns/strait-system/sa/control");
    let control_cert = Arc::new(ca.issue(&control, TTL).unwrap());

    // Refused by an mTLS server.
    let (c, s) = expect_failure(
        server_config(StaticCertResolver::new(control_cert.clone()), &bundle),
        client_config_without_client_auth(&bundle, control.clone()),
    )
    .await;
    assert_eq!(c, TlsFailureReason::NoClientCert);
    assert_eq!(s, TlsFailureReason::NoClientCert);

    // Accepted by the control plane's server-auth-only endpoint, and the server is verified.
    let (addr, srv) = serve_one(server_config_without_client_auth(StaticCertResolver::new(control_cert.clone()))).await;
    let tls = connect(addr, client_config_without_client_auth(&bundle, control.clone())).await.unwrap();
    assert_eq!(peer_identity(tls.get_ref().1).unwrap(), control);
    close(tls).await;
    let side = srv.await.unwrap().unwrap();
    assert!(side.peer.unwrap_err().contains("no peer certificate"));

    // Still refuses a wrong server identity.
    let (c, _s) = expect_failure(
        server_config_without_client_auth(StaticCertResolver::new(control_cert)),
        client_config_without_client_auth(&bundle, server_id()),
    )
    .await;
    assert_eq!(c, TlsFailureReason::WrongIdentity);
}

#[tokio::test]
async fn peer_identity_without_handshake_is_an_error() {
    let ca = MeshCa::generate("cluster.local").unwrap();
    let bundle = TrustBundle::from_ca(&ca);
    let cfg = client_config_without_client_auth(&bundle, server_id());
    let conn = rustls::ClientConnection::new(cfg, mesh_server_name()).unwrap();
    assert!(matches!(peer_identity(&conn), Err(TlsError::NoPeerCertificate)));
}

/// A node-proxy style issuer: generates a key and CSR, and has "the control plane" (a CA)
/// sign it for the identity the control plane authorised.
struct CsrIssuer {
    ca: MeshCa,
    ttl: Duration,
    /// Identity the control plane believes the caller is (e.g. from the node's own cert).
    authorized: Option<Identity>,
    calls: AtomicUsize,
}

impl CertIssuer for CsrIssuer {
    fn issue(
        &self,
        id: &Identity,
    ) -> Pin<Box<dyn std::future::Future<Output = Result<WorkloadCert, CertError>> + Send + '_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = id.clone();
        Box::pin(async move {
            let (csr, key) = generate_csr(&id)?;
            let authorized = self.authorized.clone().unwrap_or_else(|| id.clone());
            let chain = self.ca.sign_csr(&csr, &authorized, self.ttl)?;
            Ok(WorkloadCert::from_pem(&strait_certs::certs_to_pem(&chain), &key)?)
        })
    }
}

#[tokio::test]
async fn csr_flow_signs_only_the_authorised_identity() {
    let ca = MeshCa::generate("cluster.local").unwrap();
    let bundle = TrustBundle::from_ca(&ca);

    // Unauthorised: the workload asks for frontend but the control plane authorised backend.
    let (csr, _key) = generate_csr(&client_id()).unwrap();
    let err = ca.sign_csr(&csr, &server_id(), TTL).unwrap_err();
    assert!(matches!(err, CaError::CsrUnauthorized { .. }), "{err}");
    assert!(err.to_string().contains("frontend"), "{err}");

    let store = CertStore::new(
        Arc::new(CsrIssuer {
            ca: MeshCa::generate("cluster.local").unwrap(),
            ttl: TTL,
            authorized: Some(server_id()),
            calls: AtomicUsize::new(0),
        }),
        bundle.clone(),
    );
    let err = store.get_or_fetch(&client_id()).await.unwrap_err();
    assert!(matches!(err, CertError::Ca(CaError::CsrUnauthorized { .. })), "{err}");

    // Authorised: the CSR-issued certificates work in a real handshake.
    let issuer = CsrIssuer { ca, ttl: TTL, authorized: None, calls: AtomicUsize::new(0) };
    let store = CertStore::new(Arc::new(issuer), bundle);
    store.get_or_fetch(&server_id()).await.unwrap();
    store.get_or_fetch(&client_id()).await.unwrap();
    let (addr, srv) = serve_one(store.server_config(&server_id())).await;
    let tls = connect(addr, store.client_config(&client_id(), server_id())).await.unwrap();
    assert_eq!(peer_identity(tls.get_ref().1).unwrap(), server_id());
    close(tls).await;
    assert_eq!(srv.await.unwrap().unwrap().peer.unwrap(), client_id());
}

#[tokio::test]
async fn rotation_keeps_established_connections_and_new_handshakes_get_new_certs() {
    let ttl = Duration::from_secs(3);
    let ca = MeshCa::generate("cluster.local").unwrap().with_workload_ttl(ttl);
    let bundle = TrustBundle::from_ca(&ca);
    let store = CertStore::new(Arc::new(ca), bundle);

    let first_server = store.get_or_fetch(&server_id()).await.unwrap();
    let first_client = store.get_or_fetch(&client_id()).await.unwrap();
    let server_cfg = store.server_config(&server_id());
    let client_cfg = store.client_config(&client_id(), server_id());

    // An accept loop serving every connection with the same (cached) config.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let acceptor = TlsAcceptor::from(server_cfg.clone());
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let certs = tls.get_ref().1.peer_certificates().unwrap();
                let _ = seen_tx.send(parse_leaf(certs[0].as_ref()).unwrap().serial);
                let mut buf = [0u8; 256];
                loop {
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    if tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = tls.flush().await;
                }
            });
        }
    });

    let mut old_conn = connect(addr, client_cfg.clone()).await.unwrap();
    assert_eq!(peer_serial(&old_conn), first_server.serial());
    assert_eq!(seen_rx.recv().await.unwrap(), first_client.serial());

    // Keep talking on the old connection until both certificates were renewed and the original
    // ones have expired.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut i = 0u32;
    loop {
        ping(&mut old_conn, format!("ping {i}").as_bytes())
            .await
            .expect("established connection must keep working across rotation");
        i += 1;
        let renewed = store.current(&server_id()).unwrap().serial() != first_server.serial()
            && store.current(&client_id()).unwrap().serial() != first_client.serial();
        if renewed && SystemTime::now() > first_server.not_after() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "certificates were not renewed in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(i > 5, "exchanged only {i} messages");

    // The old connection still works after its certificates expired.
    ping(&mut old_conn, b"still here").await.unwrap();

    // A new handshake (same cached configs) gets the new certificates, on both sides.
    assert!(Arc::ptr_eq(&server_cfg, &store.server_config(&server_id())));
    let mut new_conn = connect(addr, client_cfg.clone()).await.unwrap();
    let new_server_serial = peer_serial(&new_conn);
    assert_ne!(new_server_serial, first_server.serial());
    let new_client_serial = seen_rx.recv().await.unwrap();
    assert_ne!(new_client_serial, first_client.serial());
    ping(&mut new_conn, b"new").await.unwrap();
    ping(&mut old_conn, b"old").await.unwrap();

    // The admin view lists both identities with their current certificates.
    let certs = store.certs();
    let ids: Vec<String> = certs.iter().map(|c| c.identity().to_string()).collect();
    // Sorted by identity: shop/backend before shop/frontend.
    assert_eq!(ids, vec![server_id().to_string(), client_id().to_string()]);

    // Forgetting an identity stops serving it to new handshakes.
    store.forget(&client_id());
    assert!(store.current(&client_id()).is_none());
    accept_loop.abort();
}
