//! `strait local` as a user runs it: the built binary, a copy of deploy/local as the configuration directory, a
//! fresh state directory. Each test moves the whole 127.0.x.x layout to its own 127.N.x.x (and the service port
//! from 8080 to 18080, so no privileges are needed), so tests neither collide with each other nor with a
//! developer's running local mesh.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;

const SERVICE_PORT: u16 = 18080;
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
const REVIEWS: &str = "spiffe://cluster.local/ns/demo/sa/reviews";

/// The second octet of this test's addresses: distinct per test, and per test process as far as possible.
fn octet(test: u8) -> u8 {
    210 + (std::process::id() % 14) as u8 * 3 + test
}

struct Layout {
    octet: u8,
}

impl Layout {
    fn ip(&self, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.octet, c, d)
    }
    fn client(&self) -> Ipv4Addr {
        self.ip(0, 1)
    }
    fn vip(&self) -> SocketAddr {
        (self.ip(100, 1), SERVICE_PORT).into()
    }
    fn admin(&self, node: u8) -> SocketAddr {
        (self.ip(node, 1), 15000).into()
    }
    fn metrics(&self, node: u8) -> SocketAddr {
        (self.ip(node, 1), 15020).into()
    }
    fn base_ip(&self) -> String {
        format!("127.{}", self.octet)
    }

    /// deploy/local with this layout's addresses.
    fn rewrite(&self, text: &str) -> String {
        text.replace("127.0.", &format!("127.{}.", self.octet))
            .replace("port: 8080,", &format!("port: {SERVICE_PORT},"))
    }
}

fn deploy_local() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local")
}

/// Copies deploy/local into `dir` with `layout`'s addresses, leaving out the files named in `skip`.
fn copy_config(layout: &Layout, dir: &Path, skip: &[&str]) {
    std::fs::create_dir_all(dir).expect("create the config dir");
    for entry in std::fs::read_dir(deploy_local()).expect("read deploy/local") {
        let entry = entry.expect("read deploy/local");
        let name = entry.file_name().to_string_lossy().into_owned();
        // examples/ holds other meshes.
        if skip.contains(&name.as_str()) || !entry.path().is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read a deploy/local file");
        std::fs::write(dir.join(&name), layout.rewrite(&text)).expect("write the config copy");
    }
    let mesh = std::fs::read_to_string(dir.join("mesh.yaml")).expect("mesh.yaml");
    assert!(mesh.contains(&format!("port: {SERVICE_PORT},")), "the service port was not moved:\n{mesh}");
}

/// A running `strait local`; killed (SIGKILL, so its children must die with it) when dropped.
struct Mesh {
    child: Child,
    banner: String,
    lines: mpsc::Receiver<String>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn strait_local(layout: &Layout, config: &Path, state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
    cmd.arg("local").arg("--config-dir").arg(config).arg("--state-dir").arg(state).args([
        "--base-ip",
        &layout.base_ip(),
        "--start-timeout",
        "90",
    ]);
    cmd
}

/// Starts the mesh and waits for its banner (printed once everything answers).
fn start(layout: &Layout, config: &Path, state: &Path) -> Mesh {
    let mut child = strait_local(layout, config, state)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start strait local");
    let lines = common::lines_of(child.stdout.take().expect("stdout"));
    let mut mesh = Mesh { child, banner: String::new(), lines };
    if !common::read_banner(&mesh.lines, &mut mesh.banner) {
        panic!("strait local did not come up ({:?}); printed:\n{}", mesh.child.try_wait(), mesh.banner);
    }
    mesh
}

/// One request from the client workload's address to the service, on its own connection.
async fn request(layout: &Layout, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((layout.client(), 0).into())?;
    let mut stream = socket.connect(layout.vip()).await?;
    let head = format!("{method} {path} HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await??;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {:?}", String::from_utf8_lossy(&raw))))
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    // The demo backend answers with content-length; a chunked body (after an L7 hop) is one chunk of JSON.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body.lines().filter(|l| l.trim_start().starts_with('{')).collect::<Vec<_>>().join("\n")
    } else {
        body.to_string()
    };
    Some((status, body))
}

/// A successful answer of the demo backend.
#[derive(Debug)]
struct Answer {
    version: String,
    identity: String,
    caller: String,
}

async fn get_answer(layout: &Layout) -> Answer {
    let (status, body) = request(layout, "GET", "/").await.expect("a request through the mesh");
    assert_eq!(status, 200, "GET / through the mesh: {body}");
    let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    let field = |name: &str| json[name].as_str().unwrap_or_default().to_string();
    Answer { version: field("version"), identity: field("identity"), caller: field("caller") }
}

/// `n` requests, `concurrency` at a time.
async fn answers(layout: &Layout, n: usize, concurrency: usize) -> Vec<Answer> {
    let layout = std::sync::Arc::new(Layout { octet: layout.octet });
    let mut out = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        if tasks.len() >= concurrency {
            out.push(tasks.join_next().await.expect("a task").expect("a request task"));
        }
        let layout = layout.clone();
        tasks.spawn(async move { get_answer(&layout).await });
    }
    while let Some(answer) = tasks.join_next().await {
        out.push(answer.expect("a request task"));
    }
    out
}

async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await.ok()?.ok()?;
    parse_response(&raw)
}

async fn config_dump(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(admin, "/config_dump").await.expect("config_dump");
    assert_eq!(status, 200);
    serde_json::from_str(&body).expect("config_dump is JSON")
}

/// Waits up to `within` for `check` on the proxy's configuration; returns how long it took.
async fn wait_for_config(admin: SocketAddr, within: Duration, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let start = Instant::now();
    loop {
        let dump = config_dump(admin).await;
        if check(&dump["config"]) {
            return;
        }
        assert!(start.elapsed() < within, "{what}: not pushed to {admin} within {within:?}; it has\n{dump:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn route_weights(config: &serde_json::Value) -> Vec<u64> {
    config["trafficRoutes"][0]["spec"]["http"][0]["route"]
        .as_array()
        .map(|r| r.iter().map(|d| d["weight"].as_u64().unwrap_or(0)).collect())
        .unwrap_or_default()
}

fn set_weights(config_dir: &Path, v1: u32, v2: u32) {
    let path = config_dir.join("reviews-route.yaml");
    let text = std::fs::read_to_string(&path).expect("route file");
    let edited = text.replace("weight: 90", &format!("weight: {v1}")).replace("weight: 10", &format!("weight: {v2}"));
    assert_ne!(text, edited, "the route file has no 90/10 weights to edit");
    std::fs::write(&path, edited).expect("write the route file");
}

fn can_bind(addr: SocketAddr) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

fn wait_free(addrs: &[SocketAddr], within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while !addrs.iter().all(|a| can_bind(*a)) {
        assert!(Instant::now() < deadline, "{what}: addresses still taken: {addrs:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What works with the L4 data path: the mesh comes up from the files, requests reach both versions over mTLS,
/// edits are pushed live, a second instance is refused, and stopping (SIGTERM, or SIGKILL of the launcher)
/// leaves nothing behind. The DENY policy is added only at the end: until the proxy serves HTTP at L7, a DENY
/// rule with HTTP fields fails closed at L4 and would refuse every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mesh_comes_up_serves_over_mtls_pushes_edits_and_stops_cleanly() {
    let layout = Layout { octet: octet(0) };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (config, state) = (tmp.path().join("config"), tmp.path().join("state"));
    copy_config(&layout, &config, &["reviews-authz.yaml"]);

    let mut mesh = start(&layout, &config, &state);
    let banner = mesh.banner.clone();
    for expected in [
        format!("curl --interface {} http://{}/", layout.client(), layout.vip()),
        "reviews-route.yaml and save".to_string(),
        format!("node-a http://{}/config_dump", layout.admin(1)),
        format!("node-b http://{}/metrics", layout.metrics(2)),
        "(created now)".to_string(),
    ] {
        assert!(banner.contains(&expected), "the banner lacks {expected:?}:\n{banner}");
    }
    assert!(state.join("ca/ca.pem").exists() && state.join("token").exists(), "no CA or token in the state dir");

    let got = answers(&layout, 100, 10).await;
    assert!(got.iter().all(|a| a.identity == REVIEWS), "a backend reported another identity: {got:?}");
    for version in ["v1", "v2"] {
        assert!(got.iter().any(|a| a.version == version), "no answer from {version} in 100 requests");
    }
    let (_, metrics) = http_get(layout.metrics(2), "/metrics").await.expect("node-b metrics");
    assert!(
        metrics.lines().any(|l| l.contains("connection_security_policy=\"mutual_tls\"")
            && l.contains("source_workload=\"client\"")
            && l.contains("destination_workload=\"reviews-v")),
        "node-b did not see mTLS traffic from the client:\n{metrics}"
    );

    // Edits to the files reach the proxies live.
    set_weights(&config, 0, 100);
    wait_for_config(layout.admin(1), Duration::from_secs(2), "the 0/100 route", |c| route_weights(c) == [0, 100]).await;
    let policy = std::fs::read_to_string(deploy_local().join("reviews-authz.yaml")).expect("authz file");
    std::fs::write(config.join("reviews-authz.yaml"), layout.rewrite(&policy)).expect("write the policy");
    wait_for_config(layout.admin(2), Duration::from_secs(2), "the DENY policy", |c| {
        c["authorizationPolicies"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "reviews-deny-admin"))
    })
    .await;

    // A second instance is refused up front, with a message that says why.
    let second = strait_local(&layout, &config, &tmp.path().join("state2")).output().expect("run a second instance");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "a second instance started: {stderr}");
    assert!(
        stderr.contains(&format!("{} (node-a admin): ", layout.admin(1))) && stderr.contains("already running"),
        "unclear error for a second instance:\n{stderr}"
    );

    // SIGTERM (what Ctrl-C amounts to) stops everything and frees every address.
    let pid = mesh.child.id();
    assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill").success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = mesh.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "strait local did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "strait local exited with {status} on SIGTERM");
    let all = [layout.admin(1), layout.admin(2), layout.metrics(1), layout.vip(), (layout.ip(2, 2), 9080).into()];
    wait_free(&all, Duration::from_secs(2), "after SIGTERM");
    drop(mesh);

    // Second run: the CA is kept; SIGKILL of the launcher takes the children with it.
    let mut mesh = start(&layout, &config, &state);
    assert!(mesh.banner.contains("kept from an earlier run"), "{}", mesh.banner);
    mesh.child.kill().expect("SIGKILL strait local");
    let _ = mesh.child.wait();
    wait_free(&all, Duration::from_secs(5), "children outlived a killed launcher");
}

/// A taken port is reported before anything starts, naming the address and what needed it.
#[test]
fn a_taken_port_fails_fast_with_a_clear_message() {
    let layout = Layout { octet: octet(1) };
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config");
    copy_config(&layout, &config, &[]);
    let _squatter = std::net::TcpListener::bind(layout.vip()).expect("take the service address");
    let started = Instant::now();
    let out = strait_local(&layout, &config, &tmp.path().join("state")).output().expect("run strait local");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started despite a taken port: {stderr}");
    assert!(
        stderr.contains(&format!("{} (service demo/reviews): ", layout.vip())) && stderr.contains("in use"),
        "unclear error:\n{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?} to fail", started.elapsed());
    assert!(!tmp.path().join("state/logs").exists(), "children were started before the check");
}

/// The full demo, as deploy/local ships it: the 90/10 canary, the caller's identity at the backend, a live
/// switch to 0/100 and the DENY policy's 403. Needs L7 HTTP handling in the proxy (routing by TrafficRoute,
/// x-forwarded-client-cert, L7 authorization); until it lands, HTTP is carried as TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mesh_canary_split_caller_identity_live_switch_and_403() {
    let layout = Layout { octet: octet(2) };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (config, state) = (tmp.path().join("config"), tmp.path().join("state"));
    copy_config(&layout, &config, &[]);
    let _mesh = start(&layout, &config, &state);

    let got = answers(&layout, 1000, 20).await;
    let v2 = got.iter().filter(|a| a.version == "v2").count();
    let v1 = got.iter().filter(|a| a.version == "v1").count();
    assert_eq!(v1 + v2, 1000, "answers from unknown versions: {got:?}");
    // 10% of 1000: the standard deviation is ~9.5, so 60..=140 is more than 4 sigma.
    assert!((60..=140).contains(&v2), "v2 got {v2} of 1000 requests, expected about 100 (90/10)");
    assert!(got.iter().all(|a| a.identity == REVIEWS), "a backend reported another identity");
    let callers: std::collections::BTreeSet<&str> = got.iter().map(|a| a.caller.as_str()).collect();
    assert_eq!(callers, [CLIENT].into(), "the backend did not see the caller's identity");

    // The policy: DELETE and /admin are refused by node-b's proxy with 403; other requests pass.
    for (method, path) in [("GET", "/admin"), ("GET", "/admin/users"), ("DELETE", "/")] {
        let (status, body) = request(&layout, method, path).await.expect("a denied request");
        assert_eq!(status, 403, "{method} {path}: {body}");
    }
    assert_eq!(request(&layout, "GET", "/administrator").await.expect("request").0, 200);

    // Move the canary to 0/100: within 2 s every new request reaches v2.
    set_weights(&config, 0, 100);
    let edited = Instant::now();
    loop {
        let batch = answers(&layout, 10, 10).await;
        if batch.iter().all(|a| a.version == "v2") {
            break;
        }
        assert!(edited.elapsed() < Duration::from_secs(2), "requests still reach v1 2 s after the edit");
    }
    let after = answers(&layout, 200, 20).await;
    assert!(after.iter().all(|a| a.version == "v2"), "v1 answered after the switch to 0/100");
}
