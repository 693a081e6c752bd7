//! A running mesh on a namespace cluster: a mesh CA, one `strait-proxy` per node (the real binary, installing
//! its own redirection rules in its node's namespace), and helpers to read their admin and metrics ports.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use strait_api::{Endpoint, MeshConfig, Named, NamespaceConfig, Service, ServicePort, Workload};
use strait_certs::MeshCa;

use crate::exec::{self, ChildGuard};
use crate::netns::Cluster;

/// The namespace every pod of [`default_config`] lives in.
pub const NAMESPACE: &str = "shop";
/// The VIP of the `echo` service of [`default_config`], which fronts pod b1 on port 7000.
pub const ECHO_VIP: &str = "10.96.0.10";
pub const ECHO_PORT: u16 = 7000;
pub const PROXY_MARK: &str = "0x539";
/// How long [`Mesh::wait_ready`] gives a proxy that is still running to report ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How the proxies capture pod traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capture {
    Redirect,
    Tproxy,
}

impl Capture {
    fn flag(self) -> &'static str {
        match self {
            Capture::Redirect => "redirect",
            Capture::Tproxy => "tproxy",
        }
    }
}

/// Finds a binary of this workspace next to the running test executable (cargo builds a package's binaries
/// before its integration tests, and `cargo test --workspace` / `cargo nextest run --workspace` build them
/// all into `target/<profile>/`).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the current executable")?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent().filter(|p| p.file_name().is_some_and(|n| n != "target"));
    }
    bail!("cannot find the {name} binary near {}; run the tests with `cargo nextest run --workspace`", exe.display())
}

/// Every pod of the cluster as a meshed workload in [`NAMESPACE`] with service account `sa-<pod>` and labels
/// `app: <pod>`; one service `echo` (VIP [`ECHO_VIP`]:[`ECHO_PORT`]) in front of pod b1 when it exists.
pub fn default_config(cluster: &Cluster) -> MeshConfig {
    let workloads: Vec<Workload> = cluster
        .pods()
        .iter()
        .map(|pod| Workload {
            name: pod.name().to_string(),
            namespace: NAMESPACE.to_string(),
            service_account: format!("sa-{}", pod.name()),
            node: pod.node().to_string(),
            address: IpAddr::V4(pod.ip()),
            labels: BTreeMap::from([("app".to_string(), pod.name().to_string())]),
            meshed: true,
            tunnel_port: strait_api::DEFAULT_TUNNEL_PORT,
        })
        .collect();
    let services = cluster
        .try_pod("b1")
        .map(|b1| Service {
            name: "echo".into(),
            namespace: NAMESPACE.into(),
            addresses: vec![ECHO_VIP.parse().expect("a valid constant address")],
            ports: vec![ServicePort {
                name: Some("tcp-echo".into()),
                port: ECHO_PORT,
                target_port: None,
                app_protocol: None,
            }],
            endpoints: vec![Endpoint { address: IpAddr::V4(b1.ip()), ready: true }],
        })
        .into_iter()
        .collect();
    MeshConfig {
        namespaces: vec![NamespaceConfig { name: NAMESPACE.into(), mtls_mode: strait_api::MtlsMode::Strict }],
        workloads,
        services,
        ..MeshConfig::default()
    }
}

/// A DENY policy for one workload of [`NAMESPACE`] against one source principal.
pub fn deny_from(name: &str, target_app: &str, source_principal: &str) -> Named<strait_api::AuthorizationPolicySpec> {
    let yaml = format!(
        "selector: {{matchLabels: {{app: {target_app}}}}}\naction: DENY\nrules:\n- from: [{{source: {{principals: [\"{source_principal}\"]}}}}]\n"
    );
    Named { name: name.into(), namespace: NAMESPACE.into(), spec: serde_yaml::from_str(&yaml).expect("a valid policy") }
}

pub struct Mesh {
    dir: tempfile::TempDir,
    pub ca: MeshCa,
    capture: Capture,
    /// `--drain-grace` for the proxies started from now on (`None`: the proxy's default, 30 s).
    pub drain_grace: Option<Duration>,
    /// More flags for the proxies started from now on (e.g. `--otlp-endpoint URL`).
    pub proxy_args: Vec<String>,
    proxies: BTreeMap<String, ChildGuard>,
    // Last: the cluster goes after the proxies running in it.
    pub cluster: Cluster,
}

impl Mesh {
    /// Starts one proxy per node, every one with `config`, and waits until all are ready.
    pub fn start(cluster: Cluster, config: &MeshConfig, capture: Capture) -> Result<Mesh> {
        Self::start_with_grace(cluster, config, capture, None)
    }

    /// [`Mesh::start`] with the proxies' `--drain-grace` (see [`Mesh::drain_grace`]).
    pub fn start_with_grace(
        cluster: Cluster,
        config: &MeshConfig,
        capture: Capture,
        drain_grace: Option<Duration>,
    ) -> Result<Mesh> {
        Self::start_with_args(cluster, config, capture, drain_grace, Vec::new())
    }

    /// [`Mesh::start_with_grace`] with more flags for every proxy (see [`Mesh::proxy_args`]).
    pub fn start_with_args(
        cluster: Cluster,
        config: &MeshConfig,
        capture: Capture,
        drain_grace: Option<Duration>,
        proxy_args: Vec<String>,
    ) -> Result<Mesh> {
        let dir = tempfile::tempdir().context("creating the mesh's state directory")?;
        let ca = MeshCa::generate(&config.trust_domain).context("creating the mesh CA")?;
        ca.save(&dir.path().join("ca")).context("saving the mesh CA")?;
        let mut mesh = Mesh { dir, ca, capture, drain_grace, proxy_args, proxies: BTreeMap::new(), cluster };
        let nodes: Vec<String> = mesh.cluster.nodes().iter().map(|n| n.name().to_string()).collect();
        for node in &nodes {
            mesh.write_config(node, config)?;
            mesh.start_proxy(node)?;
        }
        for node in &nodes {
            mesh.wait_ready(node)?;
        }
        Ok(mesh)
    }

    fn config_path(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.yaml"))
    }

    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces one node's configuration file; the proxy picks it up within a second.
    pub fn write_config(&self, node: &str, config: &MeshConfig) -> Result<()> {
        let text = serde_yaml::to_string(config).context("rendering the mesh configuration")?;
        // Write then rename, so the proxy never reads half a file.
        let tmp = self.dir.path().join(format!(".{node}.yaml.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.config_path(node))?;
        Ok(())
    }

    /// Writes a configuration to every node and waits until every proxy reports it.
    pub fn update_config(&self, config: &MeshConfig) -> Result<()> {
        let before: Vec<(String, String)> =
            self.proxies.keys().map(|n| Ok((n.clone(), self.config_version(n)?))).collect::<Result<_>>()?;
        for (node, _) in &before {
            self.write_config(node, config)?;
        }
        for (node, version) in before {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.config_version(&node)? == version {
                if Instant::now() > deadline {
                    bail!("proxy on {node} did not load the new configuration within 10 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    fn start_proxy(&mut self, node: &str) -> Result<()> {
        let child = self.spawn_proxy(node)?;
        self.proxies.insert(node.to_string(), child);
        Ok(())
    }

    fn spawn_proxy(&self, node: &str) -> Result<ChildGuard> {
        let bin = workspace_binary("strait-proxy")?;
        let mut cmd = Command::new(bin);
        // Access lines on (the proxy's default is off): the tests read them and failures print them;
        // `STRAIT_TEST_ACCESS_LOG=false` (the benchmark's default) leaves the proxy's default.
        let access_log = std::env::var("STRAIT_TEST_ACCESS_LOG").unwrap_or_else(|_| "true".into());
        cmd.env("RUST_LOG", std::env::var("STRAIT_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .env("STRAIT_ACCESS_LOG", access_log)
            .arg("--node")
            .arg(node)
            .arg("--config")
            .arg(self.config_path(node))
            .arg("--ca-dir")
            .arg(self.dir.path().join("ca"))
            .args(["--redirect", self.capture.flag(), "--mark", PROXY_MARK]);
        if let Some(grace) = self.drain_grace {
            cmd.arg("--drain-grace").arg(format!("{}ms", grace.as_millis()));
        }
        cmd.args(&self.proxy_args);
        let netns = self.cluster.node(node).netns_name().to_string();
        exec::spawn_in(&netns, cmd)
    }

    /// The process id of the node's proxy.
    pub fn proxy_pid(&self, node: &str) -> Option<u32> {
        self.proxies.get(node).map(ChildGuard::id)
    }

    /// Sends SIGTERM to the node's proxy and returns at once: the proxy drains while the test watches.
    /// The node has no proxy of the mesh's any more ([`Mesh::resume_proxy`] starts one).
    pub fn drain_proxy(&mut self, node: &str) -> Result<Draining> {
        let child = self.proxies.remove(node).with_context(|| format!("no proxy is running on {node}"))?;
        Ok(Draining::signal(node, child))
    }

    /// Replaces the node's proxy as a rolling update with surge does: starts a second proxy beside it (the
    /// listeners share their ports with SO_REUSEPORT), waits until that one answers ready itself (either
    /// process may answer on the shared admin port; `x-strait-pid` tells them apart), then SIGTERMs the old
    /// one, which drains. Returns the draining one.
    pub fn replace_proxy(&mut self, node: &str) -> Result<Draining> {
        let mut new = self.spawn_proxy(node)?;
        let pid = new.id();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match self.admin_request(node, 15000, "GET", "/ready") {
                Ok(reply) if reply.status == 200 && reply.pid == Some(pid) => break,
                _ => {}
            }
            if let Some(status) = new.exited()? {
                bail!("the replacement proxy on {node} exited during start-up ({status}); its log:\n{}", new.stderr());
            }
            if Instant::now() > deadline {
                bail!("the replacement proxy on {node} not ready after {READY_TIMEOUT:?}; its log:\n{}", new.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let old =
            self.proxies.insert(node.to_string(), new).with_context(|| format!("no proxy was running on {node}"))?;
        Ok(Draining::signal(node, old))
    }

    /// Stops a node's proxy; its redirection rules stay, as in production (fail closed).
    pub fn stop_proxy(&mut self, node: &str) -> Result<()> {
        if let Some(mut child) = self.proxies.remove(node) {
            child.terminate(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// SIGKILLs the node's proxy (no drain, no clean-up: a crash or `kill -9`) and reaps it; its rules stay.
    pub fn kill_proxy(&mut self, node: &str) -> Result<std::process::ExitStatus> {
        let mut child = self.proxies.remove(node).with_context(|| format!("no proxy is running on {node}"))?;
        child.kill()
    }

    /// Starts a node proxy and returns at once, without waiting for it to be ready (the caller measures that).
    pub fn spawn_proxy_now(&mut self, node: &str) -> Result<()> {
        anyhow::ensure!(!self.proxies.contains_key(node), "a proxy is already running on {node}");
        self.start_proxy(node)
    }

    /// Starts a stopped node proxy again and waits until it is ready.
    pub fn resume_proxy(&mut self, node: &str) -> Result<()> {
        self.start_proxy(node)?;
        self.wait_ready(node)
    }

    /// Moves a node's configuration file away, as if its source were unreachable; [`Mesh::restore_config`]
    /// puts it back.
    pub fn hide_config(&self, node: &str) -> Result<()> {
        let path = self.config_path(node);
        std::fs::rename(&path, path.with_extension("hidden")).context("hiding the configuration file")
    }

    pub fn restore_config(&self, node: &str) -> Result<()> {
        let path = self.config_path(node);
        std::fs::rename(path.with_extension("hidden"), &path).context("restoring the configuration file")
    }

    /// Starts a node proxy that is not expected to become ready (no configuration yet); returns once it serves
    /// its admin port.
    pub fn start_proxy_unready(&mut self, node: &str) -> Result<()> {
        self.start_proxy(node)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(self.admin_get(node, 15000, "/live"), Ok((200, _))) {
            if Instant::now() > deadline {
                bail!("proxy on {node} not live after 20 s; its log:\n{}", self.proxy_logs(node));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn proxy_logs(&self, node: &str) -> String {
        self.proxies.get(node).map(|c| c.stderr()).unwrap_or_default()
    }

    /// GET on a node proxy's admin (15000) or metrics (15020) port, from inside the node's namespace.
    pub fn admin_get(&self, node: &str, port: u16, path: &str) -> Result<(u16, String)> {
        self.admin_request(node, port, "GET", path).map(|reply| (reply.status, reply.body))
    }

    /// `method path` on a node proxy's admin (15000) or metrics (15020) port, from inside the node's namespace.
    pub fn admin_request(&self, node: &str, port: u16, method: &str, path: &str) -> Result<AdminReply> {
        let netns = self.cluster.node(node).netns_name().to_string();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let request =
            format!("{method} {path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        exec::in_netns(&netns, move || -> std::io::Result<AdminReply> {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(request.as_bytes())?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response.as_str(), ""));
            let pid = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim().eq_ignore_ascii_case("x-strait-pid").then(|| value.trim().parse().ok()).flatten()
            });
            Ok(AdminReply { status, pid, body: body.to_string() })
        })
        .with_context(|| format!("{method} {path} on {node}'s port {port}"))
    }

    /// Waits until the node's proxy answers 200 on /ready, for up to [`READY_TIMEOUT`]. A proxy that exits
    /// meanwhile (a bind conflict, a bad flag) ends the wait at once with its last words (the error it exited
    /// with): it will never become ready, and its error is the news.
    pub fn wait_ready(&mut self, node: &str) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = self.admin_get(node, 15000, "/ready");
            if let Ok((200, _)) = last {
                return Ok(());
            }
            let child = self.proxies.get_mut(node).with_context(|| format!("no proxy was started on {node}"))?;
            if let Some(status) = child.exited()? {
                bail!(
                    "proxy on {node} exited during start-up ({status}): {}\nits log:\n{}",
                    child.last_words().unwrap_or_else(|| "(it logged nothing)".into()),
                    child.stderr()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "proxy on {node} not ready after {READY_TIMEOUT:?} ({last:?}); its log:\n{}",
                    self.proxy_logs(node)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn config_version(&self, node: &str) -> Result<String> {
        let (_, body) = self.admin_get(node, 15000, "/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&body).context("parsing /config_dump")?;
        Ok(dump["version"].as_str().unwrap_or_default().to_string())
    }

    /// The sum of every series of metric `name` whose labels include all of `labels`.
    pub fn metric(&self, node: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let (_, text) = self.admin_get(node, 15020, "/metrics")?;
        Ok(sum_metric(&text, name, labels))
    }
}

/// What a proxy's admin port answered.
#[derive(Debug)]
pub struct AdminReply {
    pub status: u16,
    /// Which proxy process answered (`x-strait-pid`): while a replacement shares the port, either may.
    pub pid: Option<u32>,
    pub body: String,
}

/// A node proxy that was sent SIGTERM and is draining; killed if dropped before it exits.
pub struct Draining {
    pub node: String,
    child: ChildGuard,
    since: Instant,
}

impl Draining {
    fn signal(node: &str, child: ChildGuard) -> Draining {
        exec::signal(child.id(), libc::SIGTERM);
        Draining { node: node.to_string(), child, since: Instant::now() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some((status, time since SIGTERM))` once it has exited.
    pub fn exited(&mut self) -> Result<Option<(std::process::ExitStatus, Duration)>> {
        Ok(self.child.exited()?.map(|status| (status, self.since.elapsed())))
    }

    /// Waits up to `timeout` for the exit; the exit status and the time from SIGTERM to the exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(std::process::ExitStatus, Duration)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.exited()? {
                return Ok(exit);
            }
            if Instant::now() > deadline {
                bail!("the draining proxy on {} did not exit within {timeout:?}; its log:\n{}", self.node, self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        self.child.stderr()
    }
}

/// Sums the samples of `name` in a Prometheus text exposition whose labels include `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let label_text = format!(",{label_text}");
            let matches = labels.iter().all(|(k, v)| label_text.contains(&format!(",{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}
