//! `strait local --netns` as a user runs it (root only): the built binary, a copy of deploy/local as the
//! configuration directory, a fresh state directory. Requests come from inside the client pod's namespace
//! (`ip netns exec <pod> strait http-get ...`), so they reach the service only through node-a's transparent
//! capture (TPROXY), node-a's L7 routing, the mTLS tunnel to node-b and node-b's authorization.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use strait_netns::Tool;

const SERVICE: &str = "http://10.96.0.10:8080";
const CLIENT: &str = "spiffe://cluster.local/ns/demo/sa/client";
const REVIEWS: &str = "spiffe://cluster.local/ns/demo/sa/reviews";

fn deploy_local() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local")
}

fn copy_config(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the config dir");
    for entry in std::fs::read_dir(deploy_local()).expect("read deploy/local") {
        let entry = entry.expect("read deploy/local");
        // examples/ holds other meshes.
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy a deploy/local file");
        }
    }
}

/// A running `strait local --netns`; stopped with SIGTERM (so it removes its namespaces) when dropped, also
/// when the test fails.
struct Mesh {
    child: Child,
    banner: String,
    lines: mpsc::Receiver<String>,
}

impl Mesh {
    fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The banner line starting with `label`, after the label.
    fn banner_line(&self, label: &str) -> &str {
        self.banner
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} line in the banner:\n{}", self.banner))
            .trim()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if self.terminate(Duration::from_secs(20)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// The second octet of test `test`'s host addresses (the forwards to the monitoring and admin ports):
/// 100..=139, apart from the loopback tests' 150 and up.
fn octet(test: u8) -> u8 {
    100 + (std::process::id() % 10) as u8 * 4 + test
}

fn start(config: &Path, state: &Path, test: u8) -> Mesh {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait"))
        .arg("local")
        .arg("--netns")
        .arg("--config-dir")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args(["--start-timeout", "90", "--base-ip", &format!("127.{}", octet(test))])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start strait local --netns");
    let lines = common::lines_of(child.stdout.take().expect("stdout"));
    let mut mesh = Mesh { child, banner: String::new(), lines };
    if !common::read_banner(&mesh.lines, &mut mesh.banner) {
        panic!("strait local --netns did not come up ({:?}); printed:\n{}", mesh.child.try_wait(), mesh.banner);
    }
    mesh
}

/// `count` requests from inside `netns` with the hidden `strait http-get`: (status, body) each.
fn http_get(netns: &str, url: &str, count: u32) -> Vec<(u16, String)> {
    let count = count.to_string();
    let args = [env!("CARGO_BIN_EXE_strait"), "http-get", "--url", url, "--count", &count];
    let out = strait_netns::exec::output_in(netns, &args, Duration::from_secs(120)).expect("run strait http-get");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "strait http-get {url} in {netns} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            (v["status"].as_u64().unwrap_or(0) as u16, v["body"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

/// (version, identity, caller) of each successful answer; panics on any other status.
fn answers(netns: &str, count: u32) -> Vec<(String, String, String)> {
    http_get(netns, &format!("{SERVICE}/"), count)
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, 200, "GET / through the mesh: {body}");
            let json: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"));
            let field = |name: &str| json[name].as_str().unwrap_or_default().to_string();
            (field("version"), field("identity"), field("caller"))
        })
        .collect()
}

fn set_weights(config_dir: &Path, v1: u32, v2: u32) {
    let path = config_dir.join("reviews-route.yaml");
    let text = std::fs::read_to_string(&path).expect("route file");
    let edited = text.replace("weight: 90", &format!("weight: {v1}")).replace("weight: 10", &format!("weight: {v2}"));
    assert_ne!(text, edited, "the route file has no 90/10 weights to edit");
    std::fs::write(&path, edited).expect("write the route file");
}

/// `strait <args>` on the host: (success, stdout and stderr).
fn strait(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strait")).args(args).output().expect("run strait");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `strait status`, `check`, `config` and `tap` run on the host reach the control plane and both proxies in
/// their namespaces through `strait local`'s forwards (the addresses the banner names).
fn operator_commands(mesh: &Mesh, client_ns: &str, octet: u8) {
    let line = mesh.banner_line("status:");
    let control = line.split_whitespace().skip_while(|w| *w != "--control").nth(1).unwrap_or_default().to_string();
    assert_eq!(control, format!("127.{octet}.0.2:15014"), "the banner names the forwarded monitoring port: {line}");
    let with_control = |args: &[&str]| strait(&[args, &["--control", &control]].concat());

    let (ok, table) = with_control(&["status"]);
    assert!(ok, "{table}");
    for node in ["node-a", "node-b"] {
        let row = table.lines().find(|l| l.starts_with(node)).unwrap_or_else(|| panic!("{node}:\n{table}"));
        assert!(row.contains("SYNCED"), "{table}");
        assert!(row.contains(&format!("127.{octet}.")) && row.contains(":15000"), "forwarded admin address: {table}");
    }
    let (ok, report) = with_control(&["check"]);
    assert!(ok, "check fails on a fresh netns mesh:\n{report}");
    for node in ["node-a", "node-b"] {
        assert!(report.contains(&format!("[ok]   node proxy {node}: connected")), "{report}");
    }
    assert!(report.contains("(held by the proxy)"), "the proxies' admin ports answered through the forward:\n{report}");

    let (ok, json) = with_control(&["config", "node-a", "-o", "json"]);
    assert!(ok, "{json}");
    let dump: serde_json::Value = serde_json::from_str(&json).expect("config -o json is JSON");
    let reviews = dump["compiled"].as_array().and_then(|s| s.iter().find(|s| s["service"] == "demo/reviews"));
    assert_eq!(reviews.map(|r| &r["routes"][0]["name"]), Some(&serde_json::json!("canary")), "{json}");

    // The tap reaches both proxies' /tap as a local peer of their namespace; the source side names the subset.
    let mut tap = Command::new(env!("CARGO_BIN_EXE_strait"))
        .args(["tap", "--to", "reviews", "--limit", "4", "--seconds", "60", "-o", "json", "--control", &control])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start strait tap");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        answers(client_ns, 1);
        if let Some(status) = tap.try_wait().expect("the tap process") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = tap.kill();
            panic!("strait tap did not end after 4 requests within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut lines = String::new();
    std::io::Read::read_to_string(&mut tap.stdout.take().expect("stdout"), &mut lines).expect("read the tap");
    assert!(status.success(), "{lines}");
    let events: Vec<serde_json::Value> =
        lines.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let source = events.iter().find(|e| e["reporter"] == "source").unwrap_or_else(|| panic!("a source event: {lines}"));
    assert_eq!(source["route"], "canary", "{lines}");
    assert_eq!(source["subset"], source["destinationVersion"], "{lines}");
    assert!(events.iter().any(|e| e["reporter"] == "destination"), "node-b's events too: {lines}");
}

fn namespaces_with(prefix: &str) -> Vec<String> {
    strait_netns::cluster::list_netns().into_iter().filter(|ns| ns.starts_with(prefix)).collect()
}

/// The mesh comes up in namespaces; requests from the client pod reach both versions (90/10) with the
/// client's verified identity; `/admin` is denied (403) by node-b's L7 policy; an edit of the route file in the
/// configuration directory is pushed live (0/100: only v2); SIGTERM stops everything and removes every
/// namespace.
#[test]
fn netns_mesh_captures_transparently_routes_authorizes_and_cleans_up() {
    // What `strait local --netns` runs (its preflight's list): skip, naming the packages, rather than fail on a
    // machine without them.
    if !strait_netns::require_root_and(&[Tool::IP, Tool::SYSCTL, Tool::NFT]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (config, state) = (tmp.path().join("config"), tmp.path().join("state"));
    copy_config(&config);

    let mut mesh = start(&config, &state, 0);
    let banner = mesh.banner.clone();
    let tag =
        mesh.banner_line("namespaces:").split_whitespace().next().expect("a tag").trim_end_matches('*').to_string();
    assert!(tag.starts_with("sl"), "{banner}");
    let send = mesh.banner_line("send requests:");
    assert!(send.contains(&format!("curl {SERVICE}/")), "{banner}");
    let client_ns = send
        .split_whitespace()
        .skip_while(|w| *w != "exec")
        .nth(1)
        .unwrap_or_else(|| panic!("no `ip netns exec <namespace>` in the banner:\n{banner}"))
        .to_string();
    assert!(client_ns.starts_with(&tag), "{banner}");
    let created = namespaces_with(&tag);
    for name in ["ul", "node-a", "node-b", "client", "reviews-v1", "reviews-v2"] {
        assert!(created.contains(&format!("{tag}{name}")), "no namespace {tag}{name} in {created:?}");
    }
    let mesh_copy = std::fs::read_to_string(state.join("netns/mesh.yaml")).expect("the translated mesh.yaml");
    assert!(mesh_copy.contains("10.96.0.10") && mesh_copy.contains("10.2.0.3"), "{mesh_copy}");

    // Both versions, always with the client's identity, verified by mTLS and passed on by node-b.
    let got = answers(&client_ns, 100);
    for (version, identity, caller) in &got {
        assert_eq!(caller, CLIENT, "the caller's identity, as node-b verified it");
        assert_eq!(identity, REVIEWS);
        assert!(version == "v1" || version == "v2", "{version}");
    }
    let v2 = got.iter().filter(|(v, ..)| v == "v2").count();
    assert!(v2 > 0 && v2 < 40, "90/10 split: {v2} of 100 answers from v2");

    // Denied at L7 by node-b's AuthorizationPolicy.
    let denied = http_get(&client_ns, &format!("{SERVICE}/admin"), 1);
    assert_eq!(denied[0].0, 403, "{denied:?}");
    assert!(denied[0].1.contains("RBAC: access denied"), "{denied:?}");

    // Straight to a pod's address, not through the service: the client's node discovers the address on first
    // use (push protocol 3) and tunnels to the pod's node.
    let translated: serde_yaml::Value = serde_yaml::from_str(&mesh_copy).expect("the translated mesh.yaml parses");
    let workloads = translated["spec"]["workloads"].as_sequence().cloned().unwrap_or_default();
    let v1 = workloads.iter().find(|w| w["name"] == "reviews-v1").expect("reviews-v1 in the translated mesh");
    let v1 = v1["address"].as_str().expect("an address").to_string();
    let direct = http_get(&client_ns, &format!("http://{v1}:9080/"), 1);
    assert_eq!(direct[0].0, 200, "a direct pod-address request: {direct:?}");
    operator_commands(&mesh, &client_ns, octet(0));

    // The route file stays live-watched in the configuration directory.
    set_weights(&config, 0, 100);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = answers(&client_ns, 20);
        if got.iter().all(|(v, ..)| v == "v2") {
            break;
        }
        assert!(Instant::now() < deadline, "the 0/100 edit did not take effect within 20 s: {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    let status = mesh.terminate(Duration::from_secs(30)).expect("strait local --netns stops on SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let mut rest = String::new();
    while let Ok(line) = mesh.lines.recv_timeout(Duration::from_secs(1)) {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(rest.contains("stopped"), "{rest}");
    let left = namespaces_with(&tag);
    assert!(left.is_empty(), "namespaces left after SIGTERM: {left:?}");
}

/// The example of your own services (deploy/local/examples/grpc) in namespaces: the greeters' `run:` starts
/// them inside their pods, the echo server (external) is started in its pod with `exec --as echo`, and the
/// callers run in theirs with `exec --as`; calls are captured, routed and authorized as in a cluster.
#[test]
fn netns_mesh_runs_your_workloads_in_their_pods() {
    if !strait_netns::require_root_and(&[Tool::IP, Tool::SYSCTL, Tool::NFT]) {
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_strait")).parent().expect("the binaries' directory").to_path_buf();
    assert!(bin.join("example-client").is_file(), "build the example first: cargo build -p strait-example-grpc");
    let tmp = tempfile::tempdir().expect("tempdir");
    let (config, state) = (tmp.path().join("config"), tmp.path().join("state"));
    std::fs::create_dir_all(&config).expect("config dir");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/examples/grpc");
    for name in ["mesh.yaml", "greeter-route.yaml", "authz.yaml"] {
        let text = std::fs::read_to_string(example.join(name)).expect("an example file");
        let text = text.replace("[target/debug/", &format!("[{}/", bin.display()));
        std::fs::write(config.join(name), text).expect("write the config copy");
    }
    let mesh = start(&config, &state, 1);
    assert!(mesh.banner.contains("shop/greeter-v1 (run: "), "{}", mesh.banner);
    assert!(mesh.banner.contains("external:       shop/echo on "), "{}", mesh.banner);

    let exec = |workload: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
        cmd.arg("local").arg("--netns").arg("--config-dir").arg(&config).arg("--state-dir").arg(&state);
        cmd.args(["exec", "--as", workload, "--"]);
        cmd
    };
    // The external echo server, started by the user in its pod; it listens on the pod's address.
    let mut echo = exec("echo").arg(bin.join("example-ws-echo")).spawn().expect("start the echo server");
    let client = |workload: &str, args: &[&str]| -> serde_json::Value {
        let out = exec(workload).arg(bin.join("example-client")).args(args).output().expect("exec the client");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim())
            .unwrap_or_else(|e| panic!("{e}: {text:?}; stderr {}", String::from_utf8_lossy(&out.stderr)))
    };
    let unary = client("client", &["unary", "--count", "50"]);
    assert_eq!(unary["statuses"], serde_json::json!({"0": 50}), "{unary}");
    assert_eq!(unary["callers"], serde_json::json!({"spiffe://cluster.local/ns/shop/sa/client": 50}), "{unary}");
    let v2 = unary["versions"]["v2"].as_u64().unwrap_or(0);
    assert!(v2 > 0 && v2 < 30, "80/20 over 50 calls: {v2} from v2 ({unary})");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ws = loop {
        let ws = client("client", &["ws", "--binary", "65536"]);
        if ws["binary_echoed"] == true || Instant::now() > deadline {
            break ws;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((ws["text_echoed"].clone(), ws["binary_echoed"].clone()), (true.into(), true.into()), "{ws}");
    let denied = client("intruder", &["unary"]);
    assert_eq!(denied["statuses"], serde_json::json!({"http 403": 1}), "{denied}");
    drop(mesh);
    // The echo server's namespace is gone; `exec` ends with it.
    let _ = echo.kill();
    let _ = echo.wait();
}
