//! The control plane's drain: two `strait-control` processes serve one address (SO_REUSEPORT, as two replicas
//! behind a Service), a node proxy holds its configuration stream on one of them, and that one gets SIGTERM. It
//! stops answering ready, ends the stream cleanly and exits 0 well within its grace; the proxy reconnects to
//! the other, takes its configuration from there, and serves its last good configuration (ready, workloads in
//! place) the whole time. Real binaries on loopback, explicit mode (no root).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use strait_tests::exec;
use strait_tests::mesh::{sum_metric, workspace_binary};

const TOKEN: &str = "drain-test-token";
const GRACE: Duration = Duration::from_secs(10);

/// Loopback addresses of this test process, so parallel runs don't collide (the restart test uses x.x.7.x).
fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 150 + (std::process::id() % 50) as u8, 8, last)
}

fn mesh() -> String {
    format!(
        r#"
apiVersion: strait.dev/v1alpha1
kind: Mesh
metadata: {{name: drain}}
spec:
  namespaces: [{{name: shop, mtlsMode: STRICT}}]
  workloads:
  - {{name: reviews-v1, namespace: shop, serviceAccount: reviews, node: node-a, address: {reviews}, labels: {{app: reviews}}}}
  services:
  - {{name: reviews, namespace: shop, addresses: [{vip}], ports: [{{name: http, port: 9080}}], selector: {{app: reviews}}}}
"#,
        reviews = ip(1),
        vip = ip(20),
    )
}

/// A child process with its output in a file (`strait-control` logs on stdout, the proxy on stderr); killed if
/// still running when dropped.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf) -> Result<Process> {
        let file = std::fs::File::create(&log)?;
        let child =
            command.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file).spawn()?;
        Ok(Process { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on `addr`: (status, body); `None` while nothing answers.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

fn wait_for(what: &str, timeout: Duration, ok: impl Fn() -> bool) -> Result<Duration> {
    let started = Instant::now();
    while !ok() {
        if started.elapsed() > timeout {
            bail!("{what} did not happen within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(started.elapsed())
}

struct ControlPlane {
    process: Process,
    monitoring: SocketAddr,
}

impl ControlPlane {
    fn start(dir: &Path, name: &str, monitoring: SocketAddr) -> Result<ControlPlane> {
        let mut command = Command::new(workspace_binary("strait-control")?);
        command
            .arg("--files")
            .arg(dir.join("files"))
            .arg("--ca-dir")
            .arg(dir.join("ca"))
            .arg("--token-file")
            .arg(dir.join("token"))
            .arg("--listen")
            .arg(SocketAddr::from((ip(254), 15012)).to_string())
            .arg("--monitoring")
            .arg(monitoring.to_string())
            .arg("--drain-grace")
            .arg(format!("{}s", GRACE.as_secs()));
        let process = Process::spawn(command, dir.join(format!("{name}.log")))?;
        let control = ControlPlane { process, monitoring };
        wait_for(&format!("{name} ready"), Duration::from_secs(20), || control.ready())
            .with_context(|| format!("{name}'s log:\n{}", control.process.log()))?;
        Ok(control)
    }

    fn ready(&self) -> bool {
        matches!(get(self.monitoring, "/ready"), Some((200, _)))
    }

    /// Configuration streams node-a holds open on this control plane.
    fn streams(&self) -> f64 {
        get(self.monitoring, "/metrics")
            .map(|(_, text)| sum_metric(&text, "strait_control_config_streams", &[("node", "node-a")]))
            .unwrap_or(0.0)
    }
}

#[test]
fn a_draining_control_plane_hands_its_proxies_to_the_other_replica() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("files"))?;
    std::fs::write(dir.path().join("files").join("mesh.yaml"), mesh())?;
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n"))?;
    // The first creates the mesh CA; the second loads it, so proxies trust both.
    let first = ControlPlane::start(dir.path(), "control-1", SocketAddr::from((ip(254), 15014)))?;
    let second = ControlPlane::start(dir.path(), "control-2", SocketAddr::from((ip(253), 15014)))?;

    let admin = SocketAddr::from((ip(100), 15000));
    let mut proxy_command = Command::new(workspace_binary("strait-proxy")?);
    proxy_command
        .args(["--node", "node-a", "--mode", "explicit", "--trust-domain", "cluster.local"])
        .arg("--control-plane")
        .arg(SocketAddr::from((ip(254), 15012)).to_string())
        .arg("--token-file")
        .arg(dir.path().join("token"))
        .arg("--root-cert")
        .arg(dir.path().join("ca").join("ca.pem"))
        .arg("--admin")
        .arg(admin.to_string())
        .arg("--metrics")
        .arg(SocketAddr::from((ip(100), 15020)).to_string());
    let proxy = Process::spawn(proxy_command, dir.path().join("proxy.log"))?;
    let proxy_ready = || matches!(get(admin, "/ready"), Some((200, _)));
    wait_for("the proxy ready", Duration::from_secs(20), proxy_ready)
        .with_context(|| format!("the proxy's log:\n{}", proxy.log()))?;
    let version = || {
        let (_, body) = get(admin, "/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&body).ok()?;
        dump["version"].as_str().map(str::to_string)
    };
    let before = version().context("the proxy's configuration version")?;

    // Drain whichever holds the proxy's stream.
    wait_for("the proxy's stream", Duration::from_secs(10), || first.streams() + second.streams() == 1.0)?;
    let (mut draining, other) = if first.streams() == 1.0 { (first, second) } else { (second, first) };
    exec::signal(draining.process.child.id(), libc::SIGTERM);
    let signaled = Instant::now();

    // Until the proxy's stream is on the other replica: the proxy stays ready with its workload in place, and
    // the draining control plane stops answering ready (the signal is asynchronous: a probe in the same instant
    // may still see the old answer), never to answer it again.
    let mut draining_ready = Vec::new();
    while other.streams() < 1.0 {
        ensure!(signaled.elapsed() < Duration::from_secs(15), "the proxy did not move within 15 s:\n{}", proxy.log());
        ensure!(proxy_ready(), "the proxy stopped being ready while its control plane drained:\n{}", proxy.log());
        let (_, dump) = get(admin, "/config_dump").context("the proxy's config dump")?;
        ensure!(dump.contains("reviews-v1"), "the proxy lost its configuration: {dump}");
        draining_ready.push(draining.ready());
        std::thread::sleep(Duration::from_millis(20));
    }
    let moved = signaled.elapsed();
    // Streams end only after readiness has turned false, so from here on it must stay false.
    ensure!(!draining.ready(), "the draining control plane still answers ready after its proxy moved");
    let unready = draining_ready.iter().position(|r| !r).unwrap_or(draining_ready.len());
    ensure!(!draining_ready[unready..].contains(&true), "ready again while draining: {draining_ready:?}");
    wait_for("a push from the other replica", Duration::from_secs(10), || version().is_some_and(|v| v != before))?;
    ensure!(proxy_ready(), "the proxy is not ready on the other replica's configuration:\n{}", proxy.log());

    // The drained control plane exits 0, long before its grace (nothing holds it).
    let exited = loop {
        if let Some(status) = draining.process.child.try_wait()? {
            break status;
        }
        ensure!(signaled.elapsed() < GRACE + Duration::from_secs(5), "no exit:\n{}", draining.process.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    let drain_time = signaled.elapsed();
    let log = draining.process.log();
    ensure!(exited.success(), "the drained control plane exited with {exited}:\n{log}");
    ensure!(log.contains("ending the configuration stream"), "{log}");
    ensure!(drain_time < GRACE, "the drain took the whole grace ({drain_time:?}):\n{log}");
    println!("control plane drained: proxy moved to the other replica after {moved:?}, exit 0 after {drain_time:?}");
    Ok(())
}
