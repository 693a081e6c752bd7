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

    fn config_dir(&self) -> PathBuf {
        self._dir.path().join("config")
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
    drop(mesh.config_dir());
}

fn row_of<'t>(table: &'t str, node: &str) -> &'t str {
    table.lines().find(|l| l.starts_with(node)).unwrap_or("")
}
