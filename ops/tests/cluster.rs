//! The operator commands against a cluster: the control plane in Kubernetes mode (in this process, with the
//! real kube client and watchers) over the fake Kubernetes API server, two real node proxies (`strait-proxy`
//! in explicit mode, loopback addresses standing in for pod IPs) that it configures and certifies, demo
//! backends as the `reviews` pods, and the `strait` binary's `status`, `check --kubeconfig`, `config`, `why`
//! and `tap` against its monitoring port, as an operator runs them after `kubectl port-forward`. No root: it
//! all lives on this test's own 127.N.x.x addresses.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strait_control::kube::KubeOptions;
use strait_tests::fake_kube::objects::{namespace, pod, proxy_pod, service, slice};
use strait_tests::fake_kube::{FakeKube, TokenUser};
use strait_tests::mesh::workspace_binary;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const TD: &str = "spiffe://cluster.local/ns/shop/sa";

/// The second octet of this test's addresses: 80..=89, apart from the local mesh tests' (100 and up).
fn octet() -> u8 {
    80 + (std::process::id() % 10) as u8
}

fn ip(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, octet(), c, d)
}

/// A child process, killed when dropped (also when the test fails); its output goes to `log`.
struct Child {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Child {
    fn spawn(binary: &str, args: &[String], log: PathBuf) -> Child {
        let path = workspace_binary(binary).expect("the workspace's binaries are built");
        let out = std::fs::File::create(&log).expect("a log file");
        let err = out.try_clone().expect("the log file again");
        let child = tokio::process::Command::new(path)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
        Child { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `strait <args> --control <monitoring>`: (success, stdout and stderr).
async fn strait(control: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(workspace_binary("strait").expect("the strait binary is built"))
        .args(args)
        .args(["--control", &control.to_string()])
        .output()
        .await
        .expect("run strait");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

fn kubeconfig(dir: &Path, url: &str) -> PathBuf {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\n\
         users:\n- name: me\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: me}}\n\
         current-context: fake\n"
    );
    write(dir, "kubeconfig", &text)
}

/// namespace `shop`: `client` on node-a, `reviews-v1` and `reviews-v2` on node-b behind the `reviews`
/// Service, split 50/50 by the TrafficRoute rule `canary`; the proxies' pods and tokens; the CRDs installed.
fn fill(fake: &FakeKube) {
    for crd in strait_api::crd::definitions() {
        fake.apply(serde_json::to_value(&crd).expect("a CRD as JSON")).expect("install a CRD");
    }
    let a = |d| ip(1, d).to_string();
    let b = |d| ip(2, d).to_string();
    let objects = [
        namespace("strait-system", false),
        namespace("shop", true),
        pod("shop", "client", "node-a", &a(5), "client", json!({"app": "client"})),
        pod("shop", "reviews-v1", "node-b", &b(2), "reviews", json!({"app": "reviews", "version": "v1"})),
        pod("shop", "reviews-v2", "node-b", &b(3), "reviews", json!({"app": "reviews", "version": "v2"})),
        proxy_pod("strait-proxy-a", "node-a", &a(1)),
        proxy_pod("strait-proxy-b", "node-b", &b(1)),
        service("shop", "reviews", &ip(96, 10).to_string()),
        slice("shop", "reviews", &[&b(2), &b(3)]),
        json!({
            "apiVersion": "strait.dev/v1alpha1", "kind": "DestinationPolicy",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]},
        }),
        json!({
            "apiVersion": "strait.dev/v1alpha1", "kind": "TrafficRoute",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"hosts": ["reviews"], "http": [{"name": "canary", "route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50},
            ]}]},
        }),
    ];
    for object in objects {
        fake.apply(object).expect("store an object");
    }
    for node in ["node-a", "node-b"] {
        let user = TokenUser::service_account("strait-system", "strait-proxy", "strait-control")
            .with_extra(NODE_NAME_EXTRA, node);
        fake.add_token(&format!("token-{node}"), user);
    }
}

/// One GET from the client pod's address to the `reviews` Service, through node-a's proxy.
async fn request() -> String {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.bind(SocketAddr::from((ip(1, 5), 0))).expect("bind the client's address");
    let mut stream = socket.connect(SocketAddr::from((ip(96, 10), 9080))).await.expect("connect to reviews");
    stream.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n").await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read the answer");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_against_a_cluster() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fake = FakeKube::start().await.expect("the fake API server");
    fill(&fake);
    let options = KubeOptions { listen: SocketAddr::from((ip(0, 2), 15012)), ..Default::default() };
    let running = strait_control::kube::start(fake.client().expect("a kube client"), options)
        .await
        .expect("the control plane starts");
    let control = SocketAddr::from((ip(0, 2), 15014));
    let monitoring = tokio::net::TcpListener::bind(control).await.expect("the monitoring port");
    tokio::spawn(strait_control::monitoring::serve(monitoring, running.stats().clone()));
    let root = write(dir.path(), "root.pem", running.root_pem());

    let s = |p: &Path| p.display().to_string();
    let mut proxies = Vec::new();
    for (i, node) in [(1, "node-a"), (2, "node-b")] {
        let token = write(dir.path(), &format!("{node}.token"), &format!("token-{node}"));
        let mut args: Vec<String> = [
            "--node",
            node,
            "--mode",
            "explicit",
            "--control-plane",
            &running.local_addr().to_string(),
            "--token-file",
            &s(&token),
            "--root-cert",
            &s(&root),
            "--admin",
            &SocketAddr::from((ip(i, 1), 15000)).to_string(),
            "--metrics",
            &SocketAddr::from((ip(i, 1), 15020)).to_string(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        if node == "node-a" {
            args.push("--bind-services".into());
        }
        proxies.push(Child::spawn("strait-proxy", &args, dir.path().join(format!("{node}.log"))));
    }
    let mut backends = Vec::new();
    for (d, version) in [(2, "v1"), (3, "v2")] {
        let args: Vec<String> = [
            "demo-backend",
            "--listen",
            &SocketAddr::from((ip(2, d), 9080)).to_string(),
            "--version",
            version,
            "--identity",
            &format!("{TD}/reviews"),
            "--name",
            &format!("reviews-{version}"),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        backends.push(Child::spawn("strait", &args, dir.path().join(format!("reviews-{version}.log"))));
    }
    let logs = || proxies.iter().map(|p| p.log()).collect::<Vec<_>>().join("\n---\n");

    // check: once both proxies are connected, synced and certified, everything passes, the CRDs included.
    let config = s(&kubeconfig(dir.path(), &fake.url()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let report = loop {
        let (ok, report) = strait(control, &["check", "--kubeconfig", &config]).await;
        if ok {
            break report;
        }
        assert!(Instant::now() < deadline, "check does not pass on a fresh cluster:\n{report}\n{}", logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for line in ["[ok]   node proxy node-a: connected", "[ok]   node proxy node-b: connected", "(held by the proxy)"] {
        assert!(report.contains(line), "{line:?} in:\n{report}");
    }
    assert_eq!(
        report.lines().filter(|l| l.starts_with("[ok]") && l.contains("installed, v1alpha1")).count(),
        3,
        "{report}"
    );

    // status: both proxies, their pods as workloads, their admin addresses.
    let (ok, table) = strait(control, &["status"]).await;
    assert!(ok, "{table}");
    let row = |node: &str| table.lines().find(|l| l.starts_with(node)).unwrap_or_default().to_string();
    assert!(row("node-a").contains("SYNCED") && row("node-a").contains("shop/client"), "{table}");
    assert!(row("node-b").contains("shop/reviews-v1,shop/reviews-v2"), "{table}");
    assert!(row("node-b").contains(&format!("{}:15000", ip(2, 1))), "{table}");

    // config: node-a compiled the route from the TrafficRoute object; node-b's view of one pod.
    let (ok, json) = strait(control, &["config", "node-a", "-o", "json"]).await;
    assert!(ok, "{json}");
    let dump: Value = serde_json::from_str(&json).expect("config -o json is JSON");
    let reviews = dump["compiled"].as_array().and_then(|s| s.iter().find(|s| s["service"] == "shop/reviews"));
    let reviews = reviews.unwrap_or_else(|| panic!("the compiled reviews service:\n{json}"));
    assert_eq!(reviews["routes"][0]["name"], "canary", "{json}");
    assert_eq!(reviews["subsets"].as_array().map(Vec::len), Some(2), "{json}");
    let (ok, json) = strait(control, &["config", "node-b", "--workload", "reviews-v2", "-o", "json"]).await;
    assert!(ok, "{json}");
    let dump: Value = serde_json::from_str(&json).expect("config -o json is JSON");
    assert_eq!(dump["config"]["workloads"][0]["name"], "reviews-v2", "{json}");
    assert_eq!(dump["config"]["workloads"].as_array().map(Vec::len), Some(1), "{json}");

    // why: the decision node-a's own configuration takes for the client pod.
    let (ok, json) = strait(control, &["why", "shop/client", "reviews", "--path", "/", "-o", "json"]).await;
    assert!(ok, "{json}");
    let why: Value = serde_json::from_str(&json).expect("why -o json is JSON");
    assert_eq!(why["source"]["identity"], format!("{TD}/client"), "{json}");
    let weights: Vec<f64> = why["destinations"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["weightPercent"].as_f64()).collect())
        .unwrap_or_default();
    assert_eq!(weights, [50.0, 50.0], "{json}");

    // tap: requests as they flow, from both proxies, with the rule and the subset it chose.
    let tap = tokio::process::Command::new(workspace_binary("strait").expect("strait"))
        .args(["tap", "--to", "reviews", "--limit", "4", "--seconds", "60", "-o", "json", "--control"])
        .arg(control.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start strait tap");
    let output = tokio::spawn(tap.wait_with_output());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !output.is_finished() {
        let answer = request().await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\n{}", logs());
        assert!(Instant::now() < deadline, "strait tap did not end after 4 requests within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = output.await.expect("the tap task").expect("the tap's output");
    let lines = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{lines}");
    let events: Vec<Value> =
        lines.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(events.len(), 4, "{lines}");
    let source = events.iter().find(|e| e["reporter"] == "source").unwrap_or_else(|| panic!("a source event: {lines}"));
    assert_eq!(source["route"], "canary", "{lines}");
    assert_eq!(source["subset"], source["destinationVersion"], "{lines}");
    assert_eq!(source["sourceIdentity"], format!("{TD}/client"), "{lines}");

    // A proxy gone: check fails, naming it, with the cluster's hint.
    let mut node_b = proxies.pop().expect("node-b's proxy");
    node_b.child.kill().await.expect("kill node-b's proxy");
    let deadline = Instant::now() + Duration::from_secs(30);
    let report = loop {
        let (ok, report) = strait(control, &["check"]).await;
        if !ok {
            break report;
        }
        assert!(Instant::now() < deadline, "check still passes with node-b's proxy gone:\n{report}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(report.contains("[FAIL] node proxy node-b: not connected"), "{report}");
    assert!(report.contains("--field-selector spec.nodeName=node-b"), "{report}");
    assert!(report.contains("[ok]   node proxy node-a"), "{report}");
    drop(backends);
    running.shutdown().await;
}
