//! Your own services in `strait local` (deploy/local/examples/grpc): the gRPC greeter started by the mesh
//! (`run:`, two versions), the WebSocket echo server started by the user (`external: true`), and callers run
//! with `strait local exec --as`. Through the mesh: unary calls, a server stream, error statuses in trailers,
//! text and 64 KiB binary WebSocket messages; the 80/20 canary, the retry on UNAVAILABLE and the DENY apply.
//!
//! Needs the example's binaries next to `strait` (`cargo build --bins`, or any `cargo test --workspace`).

mod common;
mod loopback;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use loopback::{http_get, Layout, Mesh};
use serde_json::{json, Value};

const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";

fn bin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_strait")).parent().expect("the binaries' directory").to_path_buf();
    for name in ["example-greeter", "example-ws-echo", "example-client"] {
        assert!(
            dir.join(name).is_file(),
            "{} is missing: build the example first (`cargo build -p strait-example-grpc`, or `cargo build --bins`)",
            dir.join(name).display()
        );
    }
    dir
}

/// deploy/local/examples/grpc, moved to `layout`, its `run:` commands pointing at the built binaries.
fn example_config(layout: &Layout, dir: &Path) {
    layout.copy_dir(&loopback::repo().join("deploy/local/examples/grpc"), dir, &[]);
    let mesh = dir.join("mesh.yaml");
    let text = std::fs::read_to_string(&mesh).expect("mesh.yaml");
    let moved = text.replace("[target/debug/", &format!("[{}/", bin_dir().display()));
    assert_ne!(text, moved, "no run: commands to point at the binaries");
    std::fs::write(&mesh, moved).expect("write mesh.yaml");
}

struct Exec<'a> {
    layout: &'a Layout,
    config: &'a Path,
}

impl Exec<'_> {
    /// `strait local exec --as <workload> -- example-client <args>`: its JSON line and whether it succeeded.
    fn client(&self, workload: &str, args: &[&str]) -> (Value, bool) {
        let out = Command::new(env!("CARGO_BIN_EXE_strait"))
            .arg("local")
            .arg("--config-dir")
            .arg(self.config)
            .args(["--base-ip", &self.layout.base_ip(), "exec", "--as", workload, "--"])
            .arg(bin_dir().join("example-client"))
            .args(args)
            .output()
            .expect("run strait local exec");
        let text = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "{e}: exec --as {workload} {args:?} printed {text:?}; stderr {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (json, out.status.success())
    }
}

struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sum of `strait_retries_total{result="attempted"}` on a node proxy.
async fn retries(layout: &Layout) -> f64 {
    let (_, metrics) = http_get(layout.admin(1).with_port(15020), "/metrics").await.expect("node-a metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("strait_retries_total") && l.contains("result=\"attempted\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

trait WithPort {
    fn with_port(self, port: u16) -> Self;
}

impl WithPort for std::net::SocketAddr {
    fn with_port(mut self, port: u16) -> Self {
        self.set_port(port);
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_grpc_and_websocket_services_get_the_canary_retries_and_deny() {
    let layout = Layout::new(1);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (config, state) = (tmp.path().join("config"), tmp.path().join("state"));
    example_config(&layout, &config);
    let mesh = Mesh::start(&layout, &config, &state);
    let echo_addr = format!("{}:8081", layout.ip(3, 4));
    for expected in [
        "0 demo backend(s), 2 workload(s) of yours, 1 external".to_string(),
        format!("shop/greeter-v1 (run: {}/example-greeter) on {}:50051", bin_dir().display(), layout.ip(3, 2)),
        format!("external:       shop/echo NOT listening yet on {echo_addr}"),
        format!(
            "strait local --config-dir {} --base-ip {} exec --as client -- <command>",
            config.display(),
            layout.base_ip()
        ),
    ] {
        assert!(mesh.banner.contains(&expected), "the banner lacks {expected:?}:\n{}", mesh.banner);
    }

    // The user starts the external workload where the Mesh file puts it; the launcher notices.
    let _echo = Started(
        Command::new(bin_dir().join("example-ws-echo"))
            .env("STRAIT_LISTEN", &echo_addr)
            .env("STRAIT_WORKLOAD", "echo")
            .spawn()
            .expect("start the echo server"),
    );
    mesh.wait_event(&format!("external workload shop/echo is listening on {echo_addr}"), Duration::from_secs(20));

    let exec = Exec { layout: &layout, config: &config };
    // The canary: 80/20 by call, every call from the client's identity.
    let (canary, ok) = exec.client("client", &["unary", "--name", "canary", "--count", "300"]);
    assert!(ok, "{canary}");
    assert_eq!(canary["statuses"], json!({"0": 300}), "{canary}");
    assert_eq!(canary["callers"], json!({CLIENT: 300}), "the servers did not see the caller's identity");
    let v2 = canary["versions"]["v2"].as_u64().unwrap_or(0);
    assert_eq!(canary["versions"]["v1"].as_u64().unwrap_or(0) + v2, 300, "{canary}");
    // 20% of 300: 60, standard deviation 6.9; 30..=90 is more than 4 sigma.
    assert!((30..=90).contains(&v2), "v2 got {v2} of 300 calls, expected about 60 (80/20)");

    // Errors travel as gRPC statuses: trailers-only for a refused request, trailers after replies for a stream.
    let (empty, ok) = exec.client("client", &["unary", "--name", ""]);
    assert!(!ok && empty["statuses"] == json!({"3": 1}), "{empty}");
    assert_eq!(empty["messages"], json!({"name is required": 1}));
    let (stream, ok) = exec.client("client", &["stream", "--name", "s", "--count", "4"]);
    assert!(ok, "{stream}");
    assert_eq!(stream["replies"].as_array().map(Vec::len), Some(4), "{stream}");
    assert_eq!(stream["trailers"]["x-example-sent"], "4");
    let (over, _) = exec.client("client", &["stream", "--name", "s", "--count", "12"]);
    assert_eq!(over["replies"].as_array().map(Vec::len), Some(10), "{over}");
    assert_eq!((over["status"].clone(), over["message"].clone()), (json!(8), json!("at most 10 greetings per call")));
    assert_eq!(over["trailers"]["x-example-sent"], "10", "custom trailers pass through: {over}");

    // Retries on UNAVAILABLE: each server fails every other flagged call; the route's retry takes the next.
    let before = retries(&layout).await;
    let (flaky, ok) = exec.client("client", &["unary", "--name", "r", "--count", "10", "--fail-unavailable"]);
    assert!(ok, "calls answered UNAVAILABLE were not retried: {flaky}");
    assert_eq!(flaky["statuses"], json!({"0": 10}));
    let retried = retries(&layout).await - before;
    assert!(retried >= 10.0, "{retried} retries for 10 calls whose first try each failed");
    println!("10 calls through servers failing every other flagged call: 10 succeeded with {retried} retries");

    // WebSocket: text and a 64 KiB binary message echoed, the caller known to the server.
    let (ws, ok) = exec.client("client", &["ws", "--text", "hello through the mesh", "--binary", "65536"]);
    assert!(ok, "{ws}");
    assert_eq!((ws["text_echoed"].clone(), ws["binary_echoed"].clone()), (json!(true), json!(true)));
    assert_eq!(ws["greeting"], json!({"server": "echo", "caller": CLIENT}));

    // The DENY: the intruder's calls and handshakes are refused by node-b's proxy; the exit status says so.
    let (denied, ok) = exec.client("intruder", &["unary", "--name", "x"]);
    assert!(!ok, "{denied}");
    let status = denied["statuses"].as_object().and_then(|s| s.keys().next().cloned()).unwrap_or_default();
    assert!(status == "7" || status == "http 403", "the intruder's call was not denied: {denied}");
    let (refused, ok) = exec.client("intruder", &["ws", "--binary", "10"]);
    assert!(!ok && refused["refused"] == 403, "the intruder's WebSocket was not refused: {refused}");
    let (_, metrics) = http_get(layout.admin(2).with_port(15020), "/metrics").await.expect("node-b metrics");
    assert!(metrics.contains("deny-intruder"), "node-b's metrics do not name the DENY policy");

    // The supervised server comes back after a crash, and the canary carries on.
    let pid = mesh.child_pid("greeter-v2").expect("greeter-v2 runs");
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().expect("kill").success());
    mesh.wait_event("greeter-v2 restarted (restart #1)", Duration::from_secs(20));
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect((layout.ip(3, 3), 50051)).await.is_err() {
        assert!(Instant::now() < deadline, "greeter-v2 did not listen again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (after, ok) = exec.client("client", &["unary", "--count", "50"]);
    assert!(ok && after["statuses"] == json!({"0": 50}), "{after}");
    mesh.stop_and_check(&layout, &state);
}

/// `run` and `external` together, or a `run` that is not a command line, stop `strait local` before anything
/// starts, naming the file and the field.
#[test]
fn a_bad_launch_field_is_refused_naming_it() {
    let layout = Layout::new(2);
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = tmp.path().join("config");
    example_config(&layout, &config);
    let mesh = config.join("mesh.yaml");
    let text = std::fs::read_to_string(&mesh).expect("mesh.yaml");
    for (edit, expected) in [
        (
            text.replace("    external: true", "    external: true\n    run: [./echo]"),
            "spec.workloads[4]: `run` and `external: true` are both given",
        ),
        (text.replace("    external: true", "    run: ./echo"), "spec.workloads[4].run: must be a list"),
    ] {
        std::fs::write(&mesh, edit).expect("write mesh.yaml");
        let out = loopback::strait_local(&layout, &config, &tmp.path().join("state")).output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started anyway: {stderr}");
        assert!(stderr.contains("mesh.yaml: document 1: ") && stderr.contains(expected), "{stderr}");
        assert!(!tmp.path().join("state/logs").exists(), "children were started before the check");
    }
}
