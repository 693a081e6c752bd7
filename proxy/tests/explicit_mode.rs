//! Two node proxies on loopback in explicit mode (no interception, no root): a client workload reaches a
//! service on the other "node" through a real mTLS tunnel, and a DENY policy applied by editing the
//! configuration file closes the door. This is the data path the local mesh runs on.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strait_certs::MeshCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// Distinct loopback addresses per test process, so parallel runs don't collide.
fn ip(host: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 100 + (std::process::id() % 100) as u8, host, last)
}

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(deny_client: bool) -> String {
    let policy = if deny_client {
        "authorizationPolicies:\n- name: no-client\n  namespace: demo\n  spec:\n    action: DENY\n    rules:\n    - from: [{source: {principals: [\"cluster.local/ns/demo/sa/client\"]}}]\n"
    } else {
        ""
    };
    format!(
        r#"namespaces: [{{name: demo}}]
workloads:
- {{name: client, namespace: demo, serviceAccount: client, node: node-a, address: {client}}}
- {{name: server, namespace: demo, serviceAccount: server, node: node-b, address: {server}, labels: {{app: server}}}}
services:
- name: echo
  namespace: demo
  addresses: [{vip}]
  ports: [{{port: 7000, name: tcp-echo}}]
  endpoints: [{{address: {server}}}]
{policy}"#,
        client = ip(1, 2),
        server = ip(2, 2),
        vip = ip(0, 10),
    )
}

fn start_proxy(node: &str, host: u8, dir: &Path, bind_services: bool) -> Proxy {
    start_proxy_with(node, host, dir, "mesh.yaml", bind_services, &[])
}

fn start_proxy_with(node: &str, host: u8, dir: &Path, file: &str, bind_services: bool, extra: &[&str]) -> Proxy {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait-proxy"));
    cmd.args(["--node", node, "--mode", "explicit"])
        .args(extra)
        .arg("--config")
        .arg(dir.join(file))
        .arg("--ca-dir")
        .arg(dir.join("ca"))
        .arg("--admin")
        .arg(format!("{}:15000", ip(host, 1)))
        .arg("--metrics")
        .arg(format!("{}:15020", ip(host, 1)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if bind_services {
        cmd.arg("--bind-services");
    }
    Proxy(cmd.spawn().expect("start strait-proxy"))
}

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}

async fn wait_ready(host: u8) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while get((ip(host, 1), 15000).into(), "/ready").await.map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "proxy {host} not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects from the client workload's address to the service VIP and echoes `payload`.
async fn echo_through_mesh(payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((ip(1, 2), 0).into())?;
    let mut stream = socket.connect((ip(0, 10), 7000).into()).await?;
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut back)).await??;
    Ok(back)
}

#[tokio::test]
async fn explicit_mode_tunnels_between_two_proxies_and_applies_policy_edits() {
    let dir = tempfile::tempdir().expect("tempdir");
    MeshCa::generate("cluster.local").expect("CA").save(&dir.path().join("ca")).expect("save CA");
    std::fs::write(dir.path().join("mesh.yaml"), config(false)).expect("config");

    // The server workload: an echo server that also tells who connected.
    let server = TcpListener::bind((ip(2, 2), 7000)).await.expect("bind the server workload");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = server.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });

    let _a = start_proxy("node-a", 1, dir.path(), true);
    let _b = start_proxy("node-b", 2, dir.path(), false);
    wait_ready(1).await;
    wait_ready(2).await;

    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let back = echo_through_mesh(&payload).await.expect("echo through the mesh");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");

    let (_, metrics) = get((ip(2, 1), 15020).into(), "/metrics").await.expect("metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("istio_tcp_connections_opened_total{")
            && l.contains("connection_security_policy=\"mutual_tls\"")
            && l.contains("destination_workload=\"server\"")
            && l.contains("source_workload=\"client\"")
            && l.ends_with(" 1")),
        "node-b did not count the tunnelled connection:\n{metrics}"
    );
    // A connection from an address that is no workload of node-a is refused, and counted.
    let stranger = TcpSocket::new_v4().expect("socket");
    stranger.bind((ip(1, 9), 0).into()).expect("bind a non-workload address");
    let mut refused = stranger.connect((ip(0, 10), 7000).into()).await.expect("the listener accepts first");
    let _ = refused.write_all(b"hello").await;
    let mut nothing = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), refused.read_to_end(&mut nothing)).await;
    assert!(nothing.is_empty(), "an unknown source got an answer");
    let (_, metrics) = get((ip(1, 1), 15020).into(), "/metrics").await.expect("metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("strait_connections_refused_total{")
            && l.contains("listener=\"outbound\"")
            && l.contains("reason=\"unknown_source\"")
            && l.ends_with(" 1")),
        "the unknown source was not counted:\n{metrics}"
    );

    // The metrics port serves only metrics.
    assert_eq!(get((ip(2, 1), 15020).into(), "/config_dump").await.map(|r| r.0), Some(404));

    // Deny the client by editing the file: new connections are refused by node-b.
    std::fs::write(dir.path().join("mesh.yaml"), config(true)).expect("config");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, dump) = get((ip(2, 1), 15000).into(), "/config_dump").await.expect("config dump");
        if dump.contains("no-client") {
            break;
        }
        assert!(Instant::now() < deadline, "node-b did not load the edited file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let denied = echo_through_mesh(b"hello").await.unwrap_or_default();
    assert!(denied.is_empty(), "a denied client got {} bytes back", denied.len());
    let (_, metrics) = get((ip(2, 1), 15020).into(), "/metrics").await.expect("metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("strait_policy_denials_total{") && l.contains("demo/no-client")),
        "denial not counted:\n{metrics}"
    );
}

/// One pod cannot hold more connections through its node proxy than `--max-connections-per-workload`: the next
/// one is refused at once and counted, and a closed connection frees its place.
#[tokio::test]
async fn a_workload_cannot_exhaust_its_node_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    MeshCa::generate("cluster.local").expect("CA").save(&dir.path().join("ca")).expect("save CA");
    let config = format!(
        "namespaces: [{{name: demo}}]\nworkloads:\n\
         - {{name: greedy, namespace: demo, serviceAccount: greedy, node: node-c, address: {greedy}}}\n\
         - {{name: sink, namespace: demo, serviceAccount: sink, node: node-c, address: {sink}}}\n\
         services:\n- {{name: sink, namespace: demo, addresses: [{vip}], ports: [{{port: 7000, name: tcp-sink}}], endpoints: [{{address: {sink}}}]}}\n",
        greedy = ip(5, 2),
        sink = ip(5, 3),
        vip = ip(0, 20),
    );
    std::fs::write(dir.path().join("limits.yaml"), config).expect("config");
    let server = TcpListener::bind((ip(5, 3), 7000)).await.expect("bind the sink workload");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = server.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let _proxy =
        start_proxy_with("node-c", 5, dir.path(), "limits.yaml", true, &["--max-connections-per-workload", "2"]);
    wait_ready(5).await;

    let open = || async {
        let socket = TcpSocket::new_v4()?;
        socket.bind((ip(5, 2), 0).into())?;
        let mut stream = socket.connect((ip(0, 20), 7000).into()).await?;
        stream.write_all(b"x").await?;
        let mut one = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut one)).await??;
        Ok::<_, std::io::Error>(stream)
    };
    let first = open().await.expect("the first connection");
    let _second = open().await.expect("the second connection");
    assert!(open().await.is_err(), "a third connection beyond the cap was served");
    let (_, metrics) = get((ip(5, 1), 15020).into(), "/metrics").await.expect("metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with("strait_connections_refused_total{")
            && l.contains("reason=\"source_limit\"")
            && l.ends_with(" 1")),
        "the refusal was not counted:\n{metrics}"
    );
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while open().await.is_err() {
        assert!(Instant::now() < deadline, "a closed connection did not free its place");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
