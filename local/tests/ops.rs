//! The operator commands (`strait status`, `check`, ...) against a running `strait local`: the built binary, a
//! copy of deploy/local moved to this test's own 127.N.x.x addresses (N distinct from local_mesh.rs's) and port
//! 18080, as local_mesh.rs does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const SERVICE_PORT: u16 = 18080;

/// The second octet of this test's addresses: 160..=207, apart from local_mesh.rs's 210 and up.
fn octet(test: u8) -> u8 {
    160 + (std::process::id() % 16) as u8 * 3 + test
}

struct Mesh {
    child: Child,
    octet: u8,
    _dir: tempfile::TempDir,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // SIGKILL works on a stopped process too; the children die with it (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mesh {
    fn start(test: u8) -> Mesh {
        let octet = octet(test);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let config = dir.path().join("config");
        copy_config(octet, &config);
        let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
            .arg("local")
            .arg("--config-dir")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--base-ip", &format!("127.{octet}"), "--start-timeout", "90"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start strait local");
        let lines = common::lines_of(child.stdout.take().expect("stdout"));
        let mut mesh = Mesh { child, octet, _dir: dir };
        let mut banner = String::new();
        if !common::read_banner(&lines, &mut banner) {
            panic!("strait local did not come up ({:?}); printed:\n{banner}", mesh.child.try_wait());
        }
        assert!(banner.contains(&mesh.control()), "the banner names the monitoring address:\n{banner}");
        mesh
    }

    fn control(&self) -> String {
        format!("127.{}.0.2:15014", self.octet)
    }

    /// `strait <args> --control <this mesh>`: (success, stdout).
    fn strait(&self, args: &[&str]) -> (bool, String) {
        strait(&[args, &["--control", &self.control()]].concat())
    }

    /// The pid of the `strait proxy` child serving `node`.
    fn proxy_pid(&self, node: &str) -> i32 {
        let parent = self.child.id().to_string();
        for entry in std::fs::read_dir("/proc").expect("/proc") {
            let Ok(entry) = entry else { continue };
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            let ppid = stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').nth(1)).unwrap_or_default();
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let args: Vec<String> =
                cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            if ppid == parent && args.windows(2).any(|w| w[0] == "--node" && w[1] == node) {
                return pid;
            }
        }
        panic!("no proxy child for {node}");
    }
}

fn strait(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strait")).args(args).output().expect("run strait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty() || !out.status.success(), "strait {args:?} printed on stderr:\n{stderr}");
    (out.status.success(), format!("{stdout}{stderr}"))
}

fn deploy_local() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local")
}

fn rewrite(octet: u8, text: &str) -> String {
    text.replace("127.0.", &format!("127.{octet}.")).replace("port: 8080,", &format!("port: {SERVICE_PORT},"))
}

fn copy_config(octet: u8, dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the config dir");
    for entry in std::fs::read_dir(deploy_local()).expect("read deploy/local") {
        let entry = entry.expect("read deploy/local");
        // The mesh's own files; `examples/` holds other meshes.
        if !entry.path().is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read a deploy/local file");
        std::fs::write(dir.join(entry.file_name()), rewrite(octet, &text)).expect("write the config copy");
    }
}

fn signal(pid: i32, signal: &str) {
    let ok = Command::new("kill").args([signal, &pid.to_string()]).status().expect("run kill").success();
    assert!(ok, "kill {signal} {pid}");
}

/// One mesh for every read-only command (starting one costs seconds of both cores), then the check that must
/// fail once a proxy is gone.
#[test]
fn operator_commands_on_a_local_mesh() {
    let mesh = Mesh::start(0);

    // status: both proxies, synced, with their workloads, certificate expiry and admin address.
    let (ok, table) = mesh.strait(&["status"]);
    assert!(ok, "{table}");
    let row = |node: &str| table.lines().find(|l| l.starts_with(node)).unwrap_or_else(|| panic!("{node}:\n{table}"));
    for (node, workload, admin) in [("node-a", "demo/client", 1), ("node-b", "demo/reviews-v1", 2)] {
        let line = row(node);
        assert!(line.contains("SYNCED") && line.contains(workload), "{table}");
        assert!(line.contains("expires in 23h") || line.contains("expires in 1d"), "certificate expiry: {table}");
        assert!(line.contains(&format!("127.{}.{admin}.1:15000", mesh.octet)), "admin address: {table}");
    }
    let (ok, json) = mesh.strait(&["status", "-o", "json"]);
    assert!(ok, "{json}");
    let status: serde_json::Value = serde_json::from_str(&json).expect("status -o json is JSON");
    let version = status["version"].as_u64().expect("a version");
    let proxies = status["proxies"].as_array().expect("proxies");
    assert_eq!(proxies.len(), 2, "{json}");
    assert!(proxies.iter().all(|p| p["lastAcked"].as_u64() == Some(version) && p["connectedSince"].is_u64()), "{json}");

    // check passes on a fresh mesh, and says so in JSON too.
    let (ok, report) = mesh.strait(&["check"]);
    assert!(ok, "check fails on a fresh mesh:\n{report}");
    assert!(report.contains("[ok]   node proxy node-b: connected, ACKed version"), "{report}");
    assert!(report.contains("[ok]   certificates of node-b"), "{report}");
    let (ok, json) = mesh.strait(&["check", "-o", "json"]);
    assert!(ok, "{json}");
    let report: serde_json::Value = serde_json::from_str(&json).expect("check -o json is JSON");
    assert_eq!(report["passed"], true, "{json}");

    // config: the node's configuration, compiled routes and, after a request, the live destination state.
    request_through_the_mesh(mesh.octet);
    let (ok, json) = mesh.strait(&["config", "node-a", "-o", "json"]);
    assert!(ok, "{json}");
    let dump: serde_json::Value = serde_json::from_str(&json).expect("config -o json is JSON");
    assert_eq!(dump["node"], "node-a");
    let reviews = dump["compiled"].as_array().and_then(|s| s.iter().find(|s| s["service"] == "demo/reviews"));
    let reviews = reviews.unwrap_or_else(|| panic!("the compiled reviews service:\n{json}"));
    assert_eq!(reviews["routes"][0]["name"], "canary", "{json}");
    assert_eq!(reviews["subsets"].as_array().map(Vec::len), Some(2), "{json}");
    let destination = &dump["destinations"][0];
    assert!(destination["service"].as_str().unwrap_or("").starts_with("reviews.demo"), "{json}");
    assert!(destination["endpoints"].as_array().is_some_and(|e| e.iter().all(|e| e["ejected"] == false)), "{json}");
    assert!(destination["retryBudget"]["available"].is_u64(), "{json}");
    let (ok, yaml) = mesh.strait(&["config", "node-b", "--workload", "reviews-v1"]);
    assert!(ok, "{yaml}");
    let dump: serde_json::Value = serde_yaml::from_str(&yaml).expect("config prints YAML");
    assert_eq!(dump["config"]["workloads"].as_array().map(Vec::len), Some(1), "{yaml}");
    assert_eq!(dump["config"]["workloads"][0]["name"], "reviews-v1", "{yaml}");
    assert_eq!(dump["config"]["authorizationPolicies"][0]["name"], "reviews-deny-admin", "{yaml}");
    let (ok, out) = mesh.strait(&["config", "node-z"]);
    assert!(!ok && out.contains("no proxy on node \"node-z\""), "{out}");

    // why, live: the source's proxy's own configuration decides.
    let (ok, why) = mesh.strait(&["why", "demo/client", "reviews", "--path", "/admin"]);
    assert!(ok, "{why}");
    assert!(why.contains("route rule:   canary (every request), forward"), "{why}");
    assert!(why.contains("DENY by demo/reviews-deny-admin"), "{why}");
    let client = format!("127.{}.0.1", mesh.octet);
    let (ok, why) = mesh.strait(&["why", &client, "reviews", "--path", "/", "-o", "json"]);
    assert!(ok, "{why}");
    let why: serde_json::Value = serde_json::from_str(&why).expect("why -o json is JSON");
    assert_eq!(why["source"]["identity"], "spiffe://cluster.local/ns/demo/sa/client", "{why}");
    assert_eq!(why["destinations"][0]["weightPercent"], 90.0, "{why}");
    assert_eq!(why["destinations"][0]["endpoints"][0]["authorization"]["decision"], "ALLOW", "{why}");

    // tap: requests as they flow, from both proxies, until the limit.
    let mut tap = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["tap", "--to", "reviews", "--limit", "4", "--seconds", "60", "-o", "json", "--control", &mesh.control()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start strait tap");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // The tap subscribes while requests already flow; it ends once it has shown its limit.
    let status = loop {
        request_through_the_mesh(mesh.octet);
        if let Some(status) = tap.try_wait().expect("the tap process") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = tap.kill();
            panic!("strait tap did not end after 4 requests within 30 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut lines = String::new();
    std::io::Read::read_to_string(&mut tap.stdout.take().expect("stdout"), &mut lines).expect("read the tap");
    assert!(status.success(), "{lines}");
    let events: Vec<serde_json::Value> =
        lines.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(events.len(), 4, "{lines}");
    let source = events.iter().find(|e| e["reporter"] == "source").unwrap_or_else(|| panic!("a source event: {lines}"));
    assert_eq!(source["route"], "canary", "{lines}");
    assert_eq!(source["status"], 200, "{lines}");
    assert_eq!(source["sourceIdentity"], "spiffe://cluster.local/ns/demo/sa/client", "{lines}");
    assert_eq!(source["destinationIdentity"], "spiffe://cluster.local/ns/demo/sa/reviews", "{lines}");
    assert!(["v1", "v2"].contains(&source["destinationVersion"].as_str().unwrap_or("")), "{lines}");
    assert_eq!(source["subset"], source["destinationVersion"], "the subset the rule picked: {lines}");
    if let Some(destination) = events.iter().find(|e| e["reporter"] == "destination") {
        assert_eq!(destination["subset"], "-", "the destination proxy routes nothing: {lines}");
    }
    assert!(source["durationMs"].is_u64() && source["method"] == "GET" && source["path"] == "/", "{lines}");

    // Per-route metrics on the source proxy: the rule and the subset each request went to.
    let metrics = http_get(std::net::SocketAddr::from(([127, mesh.octet, 1, 1], 15020)), "/metrics");
    let routed = metrics
        .lines()
        .filter(|l| l.starts_with("strait_route_requests_total{") && l.contains("route=\"canary\""))
        .collect::<Vec<_>>();
    assert!(!routed.is_empty(), "no per-route series:\n{metrics}");
    assert!(
        routed.iter().all(|l| l.contains("destination_service=\"reviews.demo.svc.cluster.local\"")
            && (l.contains("subset=\"v1\"") || l.contains("subset=\"v2\""))
            && l.contains("response_code_class=\"2xx\"")),
        "{routed:?}"
    );

    // A proxy stopped: `strait local` itself is frozen first so it does not stop the whole mesh when its child
    // dies; the control plane sees the stream close at once (the kernel closes a killed process's sockets).
    signal(mesh.child.id() as i32, "-STOP");
    signal(mesh.proxy_pid("node-b"), "-KILL");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let report = loop {
        let (ok, report) = mesh.strait(&["check"]);
        if !ok {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "check still passes with node-b's proxy gone:\n{report}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(report.contains("[FAIL] node proxy node-b: not connected"), "{report}");
    assert!(report.contains("hint: is the proxy on node-b running?"), "{report}");
    assert!(report.contains("[ok]   node proxy node-a"), "only node-b fails:\n{report}");
    assert!(report.trim_end().ends_with("some checks FAILED"), "{report}");
    let (_, table) = mesh.strait(&["status"]);
    assert!(row_of(&table, "node-b").contains("DISCONNECTED"), "{table}");
}

/// One GET from the client workload's address to the service, so node-a has destination state to show.
fn request_through_the_mesh(octet: u8) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let answer = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.bind(std::net::SocketAddr::from(([127, octet, 0, 1], 0))).expect("bind the client address");
        let mut stream =
            socket.connect(std::net::SocketAddr::from(([127, octet, 100, 1], SERVICE_PORT))).await.expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw);
        tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("an answer").expect("read");
        String::from_utf8_lossy(&raw).into_owned()
    });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// A plain GET: the whole response, head included.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).expect("a timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text
}

/// `why` and `lint` offline, on manifest directories: deploy/local as it is, and a copy with mistakes.
#[test]
fn why_and_lint_read_a_manifest_directory() {
    let local = deploy_local();
    let local = local.to_str().expect("a UTF-8 path");
    let (ok, why) =
        strait(&["why", "client", "reviews.demo", "--method", "DELETE", "--path", "/x//../items", "--from", local]);
    assert!(ok, "{why}");
    assert!(why.contains("request:      DELETE /items to demo/reviews port 8080 (http)"), "normalized: {why}");
    assert!(
        why.contains("reviews subset v1, 90% of requests") && why.contains("reviews subset v2, 10% of requests"),
        "{why}"
    );
    assert!(why.contains("timeout:      10s") && why.contains("up to 2 retries on 5xx,reset,connect-failure"), "{why}");
    assert!(why.contains("DENY by demo/reviews-deny-admin"), "DELETE is denied: {why}");
    let (ok, why) = strait(&["why", "client", "reviews", "--path", "/%2Fadmin", "--from", local]);
    assert!(ok && why.contains("refused:"), "an encoded slash is refused before routing: {why}");
    let (ok, out) = strait(&["why", "nobody", "reviews", "--from", local]);
    assert!(!ok && out.contains("no workload nobody"), "{out}");

    let (ok, lint) = strait(&["lint", local]);
    assert!(ok, "deploy/local lints clean:\n{lint}");

    let dir = tempfile::tempdir().expect("a temporary directory");
    copy_config(0, dir.path());
    std::fs::write(
        dir.path().join("more-routes.yaml"),
        "apiVersion: strait.dev/v1alpha1
kind: TrafficRoute
metadata: {name: extra, namespace: demo}
spec:
  hosts: [reviews, ratings]
  http:
  - name: everything
    route: [{destination: {host: reviews, subset: v1}}]
  - name: never
    match: [{uri: {prefix: /api}}]
    route: [{destination: {host: reviews, subset: v2}}]
",
    )
    .expect("write a route");
    let (ok, lint) = strait(&["lint", dir.path().to_str().expect("a UTF-8 path"), "-o", "json"]);
    assert!(!ok, "lint finds problems:\n{lint}");
    let findings: Vec<serde_json::Value> = serde_json::from_str(&lint).expect("lint -o json is JSON");
    let has = |kind: &str, text: &str| {
        findings.iter().any(|f| f["kind"] == kind && f["message"].as_str().unwrap_or("").contains(text))
    };
    assert!(has("unknown-host", "TrafficRoute demo/extra: hosts: ratings names no Service"), "{lint}");
    assert!(has("conflict", "demo/reviews is named by 2 TrafficRoutes"), "{lint}");
    assert!(has("shadowed", "rule never is never reached: rule everything before it matches every request"), "{lint}");
}

fn row_of<'t>(table: &'t str, node: &str) -> &'t str {
    table.lines().find(|l| l.starts_with(node)).unwrap_or("")
}
