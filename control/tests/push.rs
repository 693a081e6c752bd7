//! The control plane and the proxy's client together: real files in a temporary directory, real TLS on
//! loopback, real HTTP/2.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_api::frame::LineDecoder;
use strait_api::protocol::{ConfigPush, ConfigUpdate, SubscribeRequest, PROTOCOL_HEADER, STREAM_PATH, SUBSCRIBE_PATH};
use strait_api::MeshConfig;
use strait_certs::{CertIssuer, Identity, StaticCertResolver, TrustBundle};
use strait_control::{Options, Running};
use strait_proxy::control_plane::{Backoff, ControlPlaneClient};
use tokio::sync::mpsc;

const TOKEN: &str = "local-mesh-token";

const MESH: &str = r#"
apiVersion: strait.dev/v1alpha1
kind: Mesh
metadata: {name: local}
spec:
  namespaces: [{name: shop, mtlsMode: STRICT}]
  workloads:
  - {name: reviews-v1, namespace: shop, serviceAccount: reviews, node: node-a, address: 127.0.10.1, labels: {app: reviews, version: v1}}
  - {name: reviews-v2, namespace: shop, serviceAccount: reviews, node: node-b, address: 127.0.10.2, labels: {app: reviews, version: v2}}
  - {name: productpage, namespace: shop, serviceAccount: productpage, node: node-b, address: 127.0.10.3, labels: {app: productpage}}
  services:
  - {name: reviews, namespace: shop, addresses: [127.0.20.1], ports: [{name: http, port: 9080}], selector: {app: reviews}}
"#;

const POLICY: &str = r#"
apiVersion: strait.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#;

fn route(subset: &str, regex: &str) -> String {
    format!(
        r#"
apiVersion: strait.dev/v1alpha1
kind: TrafficRoute
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{regex: "{regex}"}}}}]
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]
"#
    )
}

struct Mesh {
    files: tempfile::TempDir,
    ca: tempfile::TempDir,
    token_file: tempfile::NamedTempFile,
}

impl Mesh {
    fn new() -> Self {
        let files = tempfile::tempdir().expect("tempdir");
        write(files.path(), "mesh.yaml", MESH);
        write(files.path(), "policy.yaml", POLICY);
        write(files.path(), "route.yaml", &route("v1", "/api/.*"));
        let token_file = tempfile::NamedTempFile::new().expect("token file");
        std::fs::write(token_file.path(), format!("{TOKEN}\n")).expect("write token");
        Mesh { files, ca: tempfile::tempdir().expect("tempdir"), token_file }
    }

    async fn start(&self, listen: SocketAddr) -> Running {
        let mut options = Options::new(self.files.path(), self.ca.path(), self.token_file.path());
        options.listen = listen;
        strait_control::start(options).await.expect("control plane starts")
    }

    fn write(&self, name: &str, text: &str) {
        write(self.files.path(), name, text);
    }
}

/// Writes atomically (rename into place), as editors and `kubectl`-like tools do, so the poller never reads
/// a half-written file.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, dir.join(name)).expect("rename");
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
}

fn client(running: &Running, addr: SocketAddr, token: &str, node: &str) -> ControlPlaneClient {
    let identity = strait_control::tls::control_identity("cluster.local").expect("identity");
    ControlPlaneClient::new(addr.to_string(), identity, running.root_pem(), token, node)
        .expect("client")
        .with_backoff(Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(400) })
}

/// Runs a client whose `apply` reports every configuration it gets and refuses (NACKs) any configuration
/// holding a workload named `poison`, as a proxy's own validation would.
fn spawn_client(client: ControlPlaneClient) -> (mpsc::UnboundedReceiver<MeshConfig>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(client.run(move |config: MeshConfig| {
        let poisoned = config.workloads.iter().any(|w| w.name == "poison");
        let _ = tx.send(config);
        if poisoned {
            Err("workloads[3].name: poison is not allowed here".to_string())
        } else {
            Ok(())
        }
    }));
    (rx, task)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<MeshConfig>, within: Duration) -> MeshConfig {
    tokio::time::timeout(within, rx.recv()).await.expect("a configuration arrives in time").expect("client alive")
}

fn subset_of_default_rule(config: &MeshConfig) -> Option<String> {
    config.traffic_routes.first()?.spec.http.get(1)?.route.first()?.destination.subset.clone()
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn initial_config_then_edits_arrive_within_a_second_and_bad_objects_keep_their_last_version() {
    init_tracing();
    let mesh = Mesh::new();
    let running = mesh.start("127.0.0.1:0".parse().expect("addr")).await;
    let (mut rx, task) = spawn_client(client(&running, running.local_addr(), TOKEN, "node-a"));

    let first = next(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(first.workloads.len(), 3);
    assert_eq!(first.services[0].endpoints.len(), 2, "endpoints come from the selector");
    assert_eq!(subset_of_default_rule(&first).as_deref(), Some("v1"));
    let version = running.stats().version();
    eventually("the ACK", || running.stats().node("node-a").and_then(|s| s.last_acked) == Some(version)).await;

    // An edit reaches the proxy within one second.
    let started = Instant::now();
    mesh.write("route.yaml", &route("v2", "/api/.*"));
    let second = next(&mut rx, Duration::from_secs(1)).await;
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(subset_of_default_rule(&second).as_deref(), Some("v2"));
    assert!(running.stats().version() > version, "versions increase");

    // A route naming an undefined subset is refused, while a change made at the same time still flows.
    mesh.write("route.yaml", &route("v3", "/api/.*"));
    mesh.write("mesh.yaml", &MESH.replace("reviews-v2, namespace", "reviews-v2b, namespace"));
    let third = next(&mut rx, Duration::from_secs(1)).await;
    assert!(third.workloads.iter().any(|w| w.name == "reviews-v2b"), "the valid change flowed");
    assert_eq!(subset_of_default_rule(&third).as_deref(), Some("v2"), "the route kept its last good version");
    let problems = running.stats().problems();
    assert!(
        problems.iter().any(|p| p.contains(
            "route.yaml: TrafficRoute shop/reviews: spec.http[1].route[0].destination.subset: subset \"v3\" is not defined by DestinationPolicy shop/reviews"
        )),
        "{problems:?}"
    );

    // A bad regex likewise; nothing is pushed because nothing valid changed.
    mesh.write("route.yaml", &route("v1", "/api/(v1"));
    let pushed = running.stats().version();
    eventually("the regex problem", || {
        running.stats().problems().iter().any(|p| p.contains("spec.http[0].match[0].uri.regex"))
    })
    .await;
    assert!(tokio::time::timeout(Duration::from_millis(600), rx.recv()).await.is_err(), "nothing was pushed");
    assert_eq!(running.stats().version(), pushed);

    // Fixing it flows again.
    mesh.write("route.yaml", &route("v1", "/api/v[0-9]+"));
    let fixed = next(&mut rx, Duration::from_secs(1)).await;
    assert_eq!(subset_of_default_rule(&fixed).as_deref(), Some("v1"));

    task.abort();
    running.shutdown().await;
}

#[tokio::test]
async fn a_nack_is_recorded() {
    init_tracing();
    let mesh = Mesh::new();
    let running = mesh.start("127.0.0.1:0".parse().expect("addr")).await;
    let (mut rx, task) = spawn_client(client(&running, running.local_addr(), TOKEN, "node-a"));
    next(&mut rx, Duration::from_secs(5)).await;

    let poisoned = MESH
        .replace("  services:", "  - {name: poison, namespace: shop, node: node-b, address: 127.0.10.9}\n  services:");
    mesh.write("mesh.yaml", &poisoned);
    let config = next(&mut rx, Duration::from_secs(2)).await;
    assert!(config.workloads.iter().any(|w| w.name == "poison"));
    let version = running.stats().version();
    eventually("the NACK", || running.stats().node("node-a").and_then(|s| s.last_nacked) == Some(version)).await;
    let status = running.stats().node("node-a").expect("node status");
    assert!(status.last_error.as_deref().unwrap_or("").contains("poison is not allowed"), "{status:?}");
    assert!(status.last_acked < Some(version));
    let metrics = running.stats().registry().gather();
    let nacks = metrics.iter().find(|m| m.name() == "strait_control_config_acks_total").expect("acks metric");
    assert!(
        nacks.get_metric().iter().any(|m| m.get_label().iter().any(|l| l.value() == "nack")),
        "the NACK is counted"
    );

    task.abort();
    running.shutdown().await;
}

#[tokio::test]
async fn certificates_are_signed_only_for_local_workloads() {
    init_tracing();
    let mesh = Mesh::new();
    let running = mesh.start("127.0.0.1:0".parse().expect("addr")).await;
    let addr = running.local_addr();
    let issuer = client(&running, addr, TOKEN, "node-a").issuer();

    let local = Identity::new("cluster.local", "shop", "reviews").expect("identity");
    let cert = issuer.issue(&local).await.expect("a local workload's CSR is signed");
    assert_eq!(cert.identity(), &local);
    verifies_against_root(cert, running.root_pem()).await;

    let remote = Identity::new("cluster.local", "shop", "productpage").expect("identity");
    let err = issuer.issue(&remote).await.expect_err("productpage runs on node-b").to_string();
    assert!(err.contains("403") && err.contains("node-a"), "{err}");

    let bad_token = client(&running, addr, "wrong-token", "node-a").issuer();
    let err = bad_token.issue(&local).await.expect_err("bad token").to_string();
    assert!(err.contains("401"), "{err}");

    running.shutdown().await;
}

/// Proves the chain verifies against the mesh root the way the data plane will use it: a mutual TLS
/// handshake on loopback where both sides present the certificate and verify the other's.
async fn verifies_against_root(cert: strait_certs::WorkloadCert, root_pem: &str) {
    let identity = cert.identity().clone();
    let bundle = TrustBundle::from_pem("cluster.local", root_pem).expect("bundle");
    let resolver = StaticCertResolver::new(Arc::new(cert));
    let server = tokio_rustls::TlsAcceptor::from(strait_certs::server_config(resolver.clone(), &bundle));
    let client = tokio_rustls::TlsConnector::from(strait_certs::client_config(Some(resolver), &bundle, identity));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        server.accept(tcp).await.map(|_| ())
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    client.connect(strait_certs::mesh_server_name(), tcp).await.expect("the server's chain verifies");
    accept.await.expect("join").expect("the client's chain verifies");
}

#[tokio::test]
async fn a_bad_token_gets_no_configuration() {
    init_tracing();
    let mesh = Mesh::new();
    let running = mesh.start("127.0.0.1:0".parse().expect("addr")).await;
    let (mut rx, task) = spawn_client(client(&running, running.local_addr(), "wrong-token", "node-a"));
    assert!(tokio::time::timeout(Duration::from_millis(800), rx.recv()).await.is_err(), "no configuration");
    assert_eq!(running.stats().node("node-a"), None, "no stream was opened");
    task.abort();
    running.shutdown().await;
}

#[tokio::test]
async fn the_client_reconnects_to_a_restarted_control_plane() {
    init_tracing();
    let mesh = Mesh::new();
    let running = mesh.start("127.0.0.1:0".parse().expect("addr")).await;
    let addr = running.local_addr();
    let (mut rx, task) = spawn_client(client(&running, addr, TOKEN, "node-a"));
    let first = next(&mut rx, Duration::from_secs(5)).await;
    let first_version = running.stats().version();

    running.shutdown().await;
    // While the control plane is away the client retries; `apply` is not called (the proxy keeps serving
    // what it has).
    assert!(tokio::time::timeout(Duration::from_millis(700), rx.recv()).await.is_err(), "nothing applied while down");

    mesh.write("route.yaml", &route("v2", "/api/.*"));
    let restarted = mesh.start(addr).await;
    let again = next(&mut rx, Duration::from_secs(3)).await;
    assert!(!again.workloads.is_empty() && !again.traffic_routes.is_empty(), "never an empty configuration");
    assert_eq!(again.workloads, first.workloads);
    assert_eq!(subset_of_default_rule(&again).as_deref(), Some("v2"));
    assert!(restarted.stats().version() > first_version, "a restarted control plane continues above");
    eventually("the ACK after reconnecting", || restarted.stats().node("node-a").and_then(|s| s.last_acked).is_some())
        .await;

    task.abort();
    restarted.shutdown().await;
}

/// A bare configuration stream, as a proxy of either protocol opens it: `offered` is its `x-strait-protocol`
/// header (`None`: a proxy from before protocol 2). It sends no ACKs.
struct RawStream {
    status: http::StatusCode,
    /// The protocol the control plane picked.
    picked: Option<String>,
    lines: mpsc::UnboundedReceiver<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
    /// The stream's connection, for subscriptions (protocol 3).
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

async fn raw_stream(running: &Running, node: &str, offered: Option<&str>) -> RawStream {
    let identity = strait_control::tls::control_identity("cluster.local").expect("identity");
    let bundle = TrustBundle::from_pem("cluster.local", running.root_pem()).expect("bundle");
    let tls = tokio_rustls::TlsConnector::from(strait_certs::client_config_without_client_auth(&bundle, identity));
    let tcp = tokio::net::TcpStream::connect(running.local_addr()).await.expect("connect");
    let tls = tls.connect(strait_certs::mesh_server_name(), tcp).await.expect("TLS");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
        .await
        .expect("HTTP/2");
    let mut request = http::Request::post(format!("https://{}{STREAM_PATH}", running.local_addr()))
        .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header("x-strait-node", node);
    if let Some(offered) = offered {
        request = request.header(PROTOCOL_HEADER, offered);
    }
    tokio::spawn(conn);
    let response = sender.send_request(request.body(Full::default()).expect("request")).await.expect("a response");
    let status = response.status();
    let picked = response.headers().get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (tx, lines) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut body = response.into_body();
        let mut decoder = LineDecoder::new(1 << 20);
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            decoder.push(&data);
            while let Ok(Some(line)) = decoder.next_line() {
                let _ = tx.send(line);
            }
        }
    });
    RawStream { status, picked, lines, task, sender, addr: running.local_addr() }
}

impl RawStream {
    /// A subscription on the stream's connection: the answer's status.
    async fn subscribe(&mut self, node: &str, request: &SubscribeRequest) -> http::StatusCode {
        let body = Full::new(Bytes::from(serde_json::to_vec(request).expect("encodes")));
        let request = http::Request::post(format!("https://{}{SUBSCRIBE_PATH}", self.addr))
            .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header("x-strait-node", node)
            .body(body)
            .expect("request");
        self.sender.send_request(request).await.expect("a response").status()
    }

    async fn next(&mut self) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(5), self.lines.recv())
            .await
            .expect("a line arrives in time")
            .expect("the stream is open")
    }
}

fn keys(line: &[u8]) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_slice(line).expect("a JSON line");
    let mut keys: Vec<String> = value.as_object().expect("an object").keys().cloned().collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn a_proxy_without_the_protocol_header_gets_full_snapshots_as_before() {
    init_tracing();
    let mesh = Mesh::new();
    let running = mesh.start("127.0.0.1:0".parse().expect("addr")).await;
    let mut old = raw_stream(&running, "node-a", None).await;
    assert_eq!(old.status, http::StatusCode::OK);
    assert_eq!(old.picked.as_deref(), Some("1"));
    let first = old.next().await;
    assert_eq!(keys(&first), ["config", "node", "version"], "protocol 1's shape, nothing added");
    let first: ConfigPush = serde_json::from_slice(&first).expect("a protocol 1 push");
    assert_eq!(first.config.workloads.len(), 3);

    mesh.write("route.yaml", &route("v2", "/api/.*"));
    let second = old.next().await;
    assert_eq!(keys(&second), ["config", "node", "version"]);
    let second: ConfigPush = serde_json::from_slice(&second).expect("a protocol 1 push");
    assert!(second.version > first.version);
    assert_eq!(subset_of_default_rule(&second.config).as_deref(), Some("v2"));
    assert_eq!(second.config.workloads, first.config.workloads, "a whole configuration again");

    let unknown = raw_stream(&running, "node-a", Some("7")).await;
    assert_eq!(unknown.status, http::StatusCode::BAD_REQUEST, "no protocol in common");
    old.task.abort();
    unknown.task.abort();
    running.shutdown().await;
}

#[tokio::test]
async fn a_proxy_speaking_protocol_2_gets_a_full_snapshot_then_only_the_changes_to_its_node() {
    init_tracing();
    let mesh = Mesh::new();
    let running = mesh.start("127.0.0.1:0".parse().expect("addr")).await;
    let mut stream = raw_stream(&running, "node-a", Some("1, 2")).await;
    assert_eq!(stream.picked.as_deref(), Some("2"));
    let ConfigUpdate::Full { version: first, config, .. } =
        serde_json::from_slice(&stream.next().await).expect("a protocol 2 line")
    else {
        panic!("the first line is a full snapshot");
    };
    assert_eq!(config.workloads.len(), 3, "a proxy from before protocol 3 still gets every workload");
    assert_eq!(config.services[0].endpoints.len(), 2, "and every endpoint");
    assert!(config.answers.is_empty());

    // A route change: a delta holding the route alone.
    mesh.write("route.yaml", &route("v2", "/api/.*"));
    let line = stream.next().await;
    assert_eq!(keys(&line), ["base", "kind", "node", "removals", "upserts", "version"]);
    let ConfigUpdate::Delta { version: second, base, upserts, removals, .. } =
        serde_json::from_slice(&line).expect("a protocol 2 line")
    else {
        panic!("then deltas");
    };
    assert_eq!(base, first);
    assert!(second > first);
    let upserted: Vec<String> = upserts.iter().map(|r| r.key().to_string()).collect();
    assert_eq!(upserted, ["TrafficRoute shop/reviews"]);
    assert!(removals.is_empty());

    // A label only productpage's own node reads: a new version, but nothing for node-a.
    let before = running.stats().version();
    mesh.write("mesh.yaml", &MESH.replace("labels: {app: productpage}", "labels: {app: productpage, team: x}"));
    eventually("the relabelled version", || running.stats().version() > before).await;
    let unchanged = running.stats().version();
    eventually("node-a counted as current", || {
        running.stats().node("node-a").and_then(|s| s.last_pushed) == Some(unchanged)
    })
    .await;

    // The next change node-a sees applies to the version it last received, not to the one it was spared.
    mesh.write("route.yaml", &route("v1", "/api/.*"));
    let ConfigUpdate::Delta { version: third, base, .. } =
        serde_json::from_slice(&stream.next().await).expect("a protocol 2 line")
    else {
        panic!("a delta");
    };
    assert_eq!(base, second, "nothing was sent for version {unchanged}");
    assert!(third > unchanged);
    let metrics = running.stats().registry().gather();
    let bytes = metrics.iter().find(|m| m.name() == "strait_control_config_bytes_total").expect("bytes metric");
    let kinds: Vec<&str> = bytes.get_metric().iter().flat_map(|m| m.get_label().iter().map(|l| l.value())).collect();
    assert!(kinds.contains(&"full") && kinds.contains(&"delta"), "{kinds:?}");

    stream.task.abort();
    running.shutdown().await;
}

#[tokio::test]
async fn a_proxy_speaking_protocol_3_gets_endpoints_and_workloads_it_subscribed_to_and_their_changes() {
    init_tracing();
    let mesh = Mesh::new();
    let running = mesh.start("127.0.0.1:0".parse().expect("addr")).await;
    // node-b runs productpage (a client of reviews); node-a runs reviews-v1.
    let mut stream = raw_stream(&running, "node-b", Some("1, 2, 3")).await;
    assert_eq!(stream.picked.as_deref(), Some("3"));
    let ConfigUpdate::Full { version: first, config, .. } =
        serde_json::from_slice(&stream.next().await).expect("a protocol 3 line")
    else {
        panic!("the first line is a full snapshot");
    };
    let names = |config: &MeshConfig| config.workloads.iter().map(|w| w.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&config), ["productpage", "reviews-v2"], "its own workloads only");
    let endpoints: Vec<String> = config.services[0].endpoints.iter().map(|e| e.address.to_string()).collect();
    assert_eq!(endpoints, ["127.0.10.2"], "the service's frontend, with only the endpoint on this node");
    assert!(config.answers.is_empty());
    let mut other = raw_stream(&running, "node-a", Some("3")).await;
    let _ = other.next().await;

    let reviews = strait_api::ServiceRef::new("reviews", "shop");
    let request = SubscribeRequest {
        replace: false,
        services: vec![reviews],
        addresses: vec!["127.0.10.9".parse().expect("ip")],
    };
    assert_eq!(stream.subscribe("node-b", &request).await, http::StatusCode::OK);
    let ConfigUpdate::Delta { version, base, upserts, removals, .. } =
        serde_json::from_slice(&stream.next().await).expect("a protocol 3 line")
    else {
        panic!("the answer is a delta");
    };
    assert_eq!((version, base), (first, first), "the mesh did not change: the same version, answered");
    assert!(removals.is_empty());
    let upserted: Vec<String> = upserts.iter().map(|r| r.key().to_string()).collect();
    assert_eq!(
        upserted,
        ["Workload shop/reviews-v1", "Service shop/reviews", "Answer 127.0.10.9", "Answer shop/reviews"]
    );

    // A new pod behind reviews on node-a: node-b (subscribed) and node-a (its node) get it.
    let added = MESH.replace(
        "  services:",
        "  - {name: reviews-v3, namespace: shop, serviceAccount: reviews, node: node-a, address: 127.0.10.4, labels: {app: reviews}}\n  services:",
    );
    mesh.write("mesh.yaml", &added);
    let ConfigUpdate::Delta { upserts, .. } = serde_json::from_slice(&stream.next().await).expect("a line") else {
        panic!("a delta");
    };
    let upserted: Vec<String> = upserts.iter().map(|r| r.key().to_string()).collect();
    assert_eq!(upserted, ["Workload shop/reviews-v3", "Service shop/reviews"]);
    let ConfigUpdate::Delta { .. } = serde_json::from_slice(&other.next().await).expect("a line") else {
        panic!("a delta for node-a too");
    };
    // The address node-b was told is not in the mesh is taken by a new pod: node-b gets it.
    mesh.write("mesh.yaml", &added.replace("address: 127.0.10.4", "address: 127.0.10.9"));
    let ConfigUpdate::Delta { upserts, removals, .. } = serde_json::from_slice(&stream.next().await).expect("a line")
    else {
        panic!("a delta");
    };
    let upserted: Vec<String> = upserts.iter().map(|r| r.key().to_string()).collect();
    assert_eq!(upserted, ["Workload shop/reviews-v3", "Service shop/reviews"], "removals: {removals:?}");

    // Beyond the bound: refused, naming it. Without a stream of protocol 3: refused.
    let many = SubscribeRequest {
        replace: false,
        services: (0..=strait_api::protocol::MAX_SERVICE_INTERESTS)
            .map(|i| strait_api::ServiceRef::new(format!("s{i}"), "shop"))
            .collect(),
        addresses: Vec::new(),
    };
    assert_eq!(stream.subscribe("node-b", &many).await, http::StatusCode::BAD_REQUEST);
    let mut old = raw_stream(&running, "node-c", Some("1, 2")).await;
    assert_eq!(old.subscribe("node-c", &request).await, http::StatusCode::CONFLICT);
    for s in [stream, other, old] {
        s.task.abort();
    }
    running.shutdown().await;
}
