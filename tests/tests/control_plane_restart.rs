//! A node proxy in control-plane mode restarted while its control plane is down: it serves the last good
//! configuration it kept on disk (owner-only) instead of starting empty, refuses traffic it cannot secure (no
//! certificate yet), and takes new configuration again once the control plane is back. The real control plane
//! (in process, file provider) and the real `strait-proxy` binary, on loopback in explicit mode (no root).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use strait_control::{Options, Running};
use strait_tests::mesh::workspace_binary;

const TOKEN: &str = "restart-test-token";

/// Loopback addresses of this test process, so parallel runs don't collide.
fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 150 + (std::process::id() % 50) as u8, 7, last)
}

fn mesh() -> String {
    format!(
        r#"
apiVersion: strait.dev/v1alpha1
kind: Mesh
metadata: {{name: restart}}
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

struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    files: tempfile::TempDir,
    ca: tempfile::TempDir,
    state: tempfile::TempDir,
    control: SocketAddr,
    admin: SocketAddr,
}

impl Setup {
    fn new() -> Result<Self> {
        let files = tempfile::tempdir()?;
        std::fs::write(files.path().join("mesh.yaml"), mesh())?;
        let state = tempfile::tempdir()?;
        std::fs::write(state.path().join("token"), format!("{TOKEN}\n"))?;
        Ok(Setup {
            files,
            ca: tempfile::tempdir()?,
            state,
            control: SocketAddr::from((ip(254), 15012)),
            admin: SocketAddr::from((ip(100), 15000)),
        })
    }

    async fn start_control(&self) -> Result<Running> {
        let mut options = Options::new(self.files.path(), self.ca.path(), self.state.path().join("token"));
        options.listen = self.control;
        let running = strait_control::start(options).await.context("the control plane starts")?;
        std::fs::write(self.state.path().join("root.pem"), running.root_pem())?;
        Ok(running)
    }

    fn last_good(&self) -> std::path::PathBuf {
        self.state.path().join("last-good.json")
    }

    fn start_proxy(&self) -> Result<Proxy> {
        let log = std::fs::File::create(self.state.path().join("proxy.log"))?;
        let child = Command::new(workspace_binary("strait-proxy")?)
            .args(["--node", "node-a", "--mode", "explicit", "--trust-domain", "cluster.local"])
            .arg("--control-plane")
            .arg(self.control.to_string())
            .arg("--token-file")
            .arg(self.state.path().join("token"))
            .arg("--root-cert")
            .arg(self.state.path().join("root.pem"))
            .arg("--last-good-config")
            .arg(self.last_good())
            .arg("--admin")
            .arg(self.admin.to_string())
            .arg("--metrics")
            .arg(SocketAddr::from((ip(100), 15020)).to_string())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting strait-proxy")?;
        Ok(Proxy(child))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("proxy.log")).unwrap_or_default()
    }

    /// GET on the proxy's admin port: (status, body); `None` while nothing listens.
    fn admin(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect_timeout(&self.admin, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        Some((status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
    }

    async fn wait_for(&self, what: &str, ok: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok(self) {
            if Instant::now() > deadline {
                bail!("{what} did not happen within 20 s; proxy log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    fn version(&self) -> Option<String> {
        let (_, body) = self.admin("/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&body).ok()?;
        dump["version"].as_str().map(str::to_string)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_while_the_control_plane_is_down_serves_its_last_good_configuration() -> Result<()> {
    let setup = Setup::new()?;
    let control = setup.start_control().await?;
    let proxy = setup.start_proxy()?;
    setup.wait_for("readiness with the control plane", |s| matches!(s.admin("/ready"), Some((200, _)))).await?;
    let saved = std::fs::metadata(setup.last_good()).context("the configuration is kept on disk")?;
    assert_eq!(saved.permissions().mode() & 0o777, 0o600, "only its owner may read it");

    // The control plane goes away, then the proxy is killed and started again.
    drop(control);
    drop(proxy);
    let _proxy = setup.start_proxy()?;
    setup.wait_for("the admin port", |s| s.admin("/live").is_some()).await?;
    setup.wait_for("the last good configuration in place", |s| s.version().as_deref() == Some("last-good")).await?;
    let (_, dump) = setup.admin("/config_dump").context("config dump")?;
    assert!(dump.contains("reviews-v1"), "the saved workloads are served: {dump}");
    let (ready, _) = setup.admin("/ready").context("ready")?;
    assert_ne!(ready, 200, "without a certificate for its workload the proxy is not ready (traffic is refused)");

    // The control plane comes back: the proxy connects again and takes its configuration.
    let _control = setup.start_control().await?;
    setup
        .wait_for("a configuration from the control plane", |s| {
            s.version().is_some_and(|v| v.starts_with("control-plane#"))
        })
        .await?;
    setup.wait_for("readiness again", |s| matches!(s.admin("/ready"), Some((200, _)))).await?;
    Ok(())
}
