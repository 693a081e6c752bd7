//! The soak's mesh: three nodes of the namespace cluster, the real control plane (file provider) in the
//! underlay namespace, one `strait-proxy` per node connected to it, and the test backends.
//!
//! ```text
//! node-a: c1 (keep-alive load, 10 streams)        node-c: c2 (new connections L7 + L4, 10 streams; its proxy
//!                                                          is replaced once)
//! node-b: reviews  10.96.0.20:80 http  r1 r2 (v1)  r3 r4 (v2)   TrafficRoute: weights change every second
//!         ratings  10.96.0.21:80 http  n1 n2 (v1)  n3 (v2: added and removed every minute)
//!         echo-tcp 10.96.0.22:7000 tcp t1 t2
//!         streams  10.96.0.23:80 http  s1 (HTTP/1.1 upgrade, then echo)
//! ```
//!
//! Services list their endpoints by hand (selector-less), so that an endpoint can be taken out before its pod
//! goes away, as Kubernetes' endpoints controller does for a terminating pod.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use strait_netns::cluster::UNDERLAY_IP;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::procs::Proc;
use crate::Cluster;

pub const NAMESPACE: &str = "soak";
pub const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];
/// The node whose proxy is replaced once.
pub const REPLACED_NODE: &str = "node-c";
pub const REVIEWS: SocketAddr = vip(20, 80);
pub const RATINGS: SocketAddr = vip(21, 80);
pub const ECHO_TCP: SocketAddr = vip(22, 7000);
pub const STREAMS: SocketAddr = vip(23, 80);
pub const HTTP_PORT: u16 = 8080;
pub const TCP_PORT: u16 = 7000;
pub const CONTROL_PORT: u16 = 15012;
pub const MONITORING_PORT: u16 = 15014;
pub const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000);
const PROXY_MARK: &str = "0x539";
const TOKEN: &str = "soak-token";

const fn vip(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 96, 0, last)), port)
}

/// Every backend pod: (pod, app, version, kind).
pub const BACKENDS: &[(&str, &str, &str, BackendKind)] = &[
    ("r1", "reviews", "v1", BackendKind::Http),
    ("r2", "reviews", "v1", BackendKind::Http),
    ("r3", "reviews", "v2", BackendKind::Http),
    ("r4", "reviews", "v2", BackendKind::Http),
    ("n1", "ratings", "v1", BackendKind::Http),
    ("n2", "ratings", "v1", BackendKind::Http),
    ("n3", "ratings", "v2", BackendKind::Http),
    ("t1", "echo-tcp", "v1", BackendKind::TcpEcho),
    ("t2", "echo-tcp", "v1", BackendKind::TcpEcho),
    ("s1", "streams", "v1", BackendKind::Http),
];
/// The pod of a new version that comes and goes every minute.
pub const NEW_VERSION_POD: &str = "n3";
/// The pods restarted in turn, one every 20 s: every service keeps at least one endpoint meanwhile. Not s1
/// (the long-lived streams end there) and not the new-version pod (it has its own churn).
pub const RESTARTED: &[&str] = &["r1", "r3", "n1", "t1", "r2", "r4", "n2", "t2"];
pub const CLIENTS: [(&str, &str); 2] = [("c1", "node-a"), ("c2", "node-c")];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Http,
    TcpEcho,
}

/// What the mesh should look like now; rendered into the control plane's files.
#[derive(Clone, Debug)]
pub struct Desired {
    /// The weight of subset v1 of `reviews` (v2 gets the rest of 100).
    pub v1_weight: u32,
    /// Pods that are endpoints of their service.
    pub endpoints: BTreeSet<String>,
    /// Whether the new-version pod is a workload of the mesh at all.
    pub new_version_present: bool,
}

impl Desired {
    pub fn initial() -> Desired {
        let endpoints = BACKENDS.iter().map(|(pod, ..)| pod.to_string()).filter(|p| p != NEW_VERSION_POD).collect();
        Desired { v1_weight: 50, endpoints, new_version_present: false }
    }

    /// The `kind: Mesh` document with the cluster's addresses.
    pub fn mesh_yaml(&self, cluster: &Cluster) -> String {
        self.mesh_yaml_with(&|pod| {
            let p = cluster.pod(pod);
            (p.node().to_string(), p.ip())
        })
    }

    /// [`Desired::mesh_yaml`] with each pod's node and address from `pod`.
    fn mesh_yaml_with(&self, pod: &dyn Fn(&str) -> (String, Ipv4Addr)) -> String {
        let mut out = format!(
            "apiVersion: strait.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: soak}}\nspec:\n  namespaces:\n  - {{name: \
             {NAMESPACE}, mtlsMode: STRICT}}\n  workloads:\n"
        );
        let workload = |out: &mut String, name: &str, app: &str, version: &str| {
            let (node, ip) = pod(name);
            out.push_str(&format!(
                "  - {{name: {name}, namespace: {NAMESPACE}, serviceAccount: {app}, node: {node}, address: {ip}, labels: \
                 {{app: {app}, version: {version}}}}}\n"
            ));
        };
        for (pod, _) in CLIENTS {
            workload(&mut out, pod, "client", "v1");
        }
        for (pod, app, version, _) in BACKENDS {
            if *pod == NEW_VERSION_POD && !self.new_version_present {
                continue;
            }
            workload(&mut out, pod, app, version);
        }
        out.push_str("  services:\n");
        let service = |out: &mut String, name: &str, vip: SocketAddr, port: &str| {
            let endpoints: Vec<String> = BACKENDS
                .iter()
                .filter(|(pod, app, ..)| *app == name && self.endpoints.contains(*pod))
                .filter(|(pod, ..)| *pod != NEW_VERSION_POD || self.new_version_present)
                .map(|(name, ..)| format!("{{address: {}}}", pod(name).1))
                .collect();
            out.push_str(&format!(
                "  - name: {name}\n    namespace: {NAMESPACE}\n    addresses: [{}]\n    ports: [{port}]\n    endpoints: [{}]\n",
                vip.ip(),
                endpoints.join(", ")
            ));
        };
        let http = |vip: SocketAddr| {
            format!("{{name: http, port: {}, targetPort: {HTTP_PORT}, appProtocol: http}}", vip.port())
        };
        service(&mut out, "reviews", REVIEWS, &http(REVIEWS));
        service(&mut out, "ratings", RATINGS, &http(RATINGS));
        service(&mut out, "streams", STREAMS, &http(STREAMS));
        service(
            &mut out,
            "echo-tcp",
            ECHO_TCP,
            &format!("{{name: tcp-echo, port: {}, targetPort: {TCP_PORT}}}", ECHO_TCP.port()),
        );
        out
    }

    /// The routes: the weighted canary of `reviews` and plain routes for `ratings`, both with retries, so a
    /// request in flight to a pod the soak kills is retried on another.
    pub fn routes_yaml(&self) -> String {
        let retries = "retries: {attempts: 2, perTryTimeout: 2s, retryOn: \"5xx,reset,connect-failure\"}";
        format!(
            "apiVersion: strait.dev/v1alpha1\nkind: TrafficRoute\nmetadata: {{name: reviews, namespace: {NAMESPACE}}}\n\
             spec:\n  hosts: [reviews]\n  http:\n  - name: canary\n    route:\n    - destination: {{host: reviews, subset: v1}}\n      \
             weight: {v1}\n    - destination: {{host: reviews, subset: v2}}\n      weight: {v2}\n    timeout: 10s\n    {retries}\n\
             ---\napiVersion: strait.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {{name: reviews, namespace: {NAMESPACE}}}\n\
             spec:\n  host: reviews\n  subsets:\n  - {{name: v1, labels: {{version: v1}}}}\n  - {{name: v2, labels: {{version: v2}}}}\n\
             ---\napiVersion: strait.dev/v1alpha1\nkind: TrafficRoute\nmetadata: {{name: ratings, namespace: {NAMESPACE}}}\n\
             spec:\n  hosts: [ratings]\n  http:\n  - name: all\n    route:\n    - destination: {{host: ratings}}\n    timeout: 10s\n    {retries}\n",
            v1 = self.v1_weight,
            v2 = 100 - self.v1_weight,
        )
    }

    /// Writes both files, each atomically (write a hidden file, rename it into place: the provider skips
    /// hidden files and never reads half of one).
    pub fn write(&self, cluster: &Cluster, dir: &Path) -> Result<()> {
        for (name, text) in [("mesh.yaml", self.mesh_yaml(cluster)), ("routes.yaml", self.routes_yaml())] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, dir.join(name)).with_context(|| format!("renaming {name} into place"))?;
        }
        Ok(())
    }
}

/// Where things live on disk.
pub struct Paths {
    pub root: PathBuf,
    pub config: PathBuf,
    pub ca: PathBuf,
    pub token: PathBuf,
    pub logs: PathBuf,
}

impl Paths {
    pub fn create(root: &Path) -> Result<Paths> {
        let paths = Paths {
            root: root.to_path_buf(),
            config: root.join("config"),
            ca: root.join("ca"),
            token: root.join("token"),
            logs: root.join("logs"),
        };
        for dir in [&paths.config, &paths.logs] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let ca = strait_certs::MeshCa::generate(&strait_api::default_trust_domain()).context("creating the mesh CA")?;
        ca.save(&paths.ca).context("saving the mesh CA")?;
        std::fs::write(&paths.token, format!("{TOKEN}\n")).context("writing the token file")?;
        Ok(paths)
    }

    pub fn root_cert(&self) -> PathBuf {
        self.ca.join(strait_certs::CA_CERT_FILE)
    }
}

pub fn build_cluster() -> Result<Cluster> {
    let backends: Vec<&str> = BACKENDS.iter().map(|(pod, ..)| *pod).collect();
    Cluster::builder()
        .prefix("sk")
        .node("node-a", &["c1"])
        .node("node-b", &backends)
        .node("node-c", &["c2"])
        .build()
        .context("creating the namespace cluster")
}

pub fn control_addr() -> SocketAddr {
    SocketAddr::new(UNDERLAY_IP.into(), CONTROL_PORT)
}

/// The binaries the soak starts, found next to its own executable (`cargo run` builds them all).
pub struct Binaries {
    pub control: PathBuf,
    pub proxy: PathBuf,
    pub backend: PathBuf,
}

impl Binaries {
    pub fn find() -> Result<Binaries> {
        Ok(Binaries {
            control: crate::mesh::workspace_binary("strait-control")?,
            proxy: crate::mesh::workspace_binary("strait-proxy")?,
            backend: crate::mesh::workspace_binary("strait-testbackend")?,
        })
    }
}

pub fn start_control(cluster: &Cluster, bins: &Binaries, paths: &Paths, cert_ttl: &str, n: u32) -> Result<Proc> {
    let s = |p: &Path| p.display().to_string();
    let args = vec![
        "--files".into(),
        s(&paths.config),
        "--ca-dir".into(),
        s(&paths.ca),
        "--token-file".into(),
        s(&paths.token),
        "--listen".into(),
        control_addr().to_string(),
        "--monitoring".into(),
        SocketAddr::new(UNDERLAY_IP.into(), MONITORING_PORT).to_string(),
        "--workload-cert-ttl".into(),
        cert_ttl.into(),
    ];
    Proc::spawn(cluster.underlay_netns(), &paths.logs, &format!("control-{n}"), &bins.control, &args)
}

pub fn start_proxy(
    cluster: &Cluster,
    bins: &Binaries,
    paths: &Paths,
    node: &str,
    grace: Duration,
    n: u32,
) -> Result<Proc> {
    let s = |p: &Path| p.display().to_string();
    let args = vec![
        "--node".into(),
        node.into(),
        "--mode".into(),
        "transparent".into(),
        "--redirect".into(),
        "tproxy".into(),
        "--mark".into(),
        PROXY_MARK.into(),
        "--control-plane".into(),
        control_addr().to_string(),
        "--token-file".into(),
        s(&paths.token),
        "--root-cert".into(),
        s(&paths.root_cert()),
        "--admin".into(),
        ADMIN.to_string(),
        "--drain-grace".into(),
        format!("{}ms", grace.as_millis()),
    ];
    Proc::spawn(cluster.node(node).netns_name(), &paths.logs, &format!("proxy-{node}-{n}"), &bins.proxy, &args)
}

/// Starts the backend of `pod` and waits until it accepts connections in its namespace.
pub async fn start_backend(cluster: &Cluster, bins: &Binaries, paths: &Paths, pod: &str, n: u32) -> Result<Proc> {
    let (_, app, version, kind) =
        BACKENDS.iter().find(|(p, ..)| *p == pod).with_context(|| format!("{pod} is not a backend pod"))?;
    let p = cluster.pod(pod);
    let (args, port) = match kind {
        BackendKind::Http => (
            vec![
                "http".to_string(),
                "--listen".into(),
                SocketAddr::new(p.ip().into(), HTTP_PORT).to_string(),
                "--name".into(),
                format!("{app}-{pod}"),
                "--version".into(),
                version.to_string(),
            ],
            HTTP_PORT,
        ),
        BackendKind::TcpEcho => (
            vec!["tcp-echo".to_string(), "--listen".into(), SocketAddr::new(p.ip().into(), TCP_PORT).to_string()],
            TCP_PORT,
        ),
    };
    let mut proc = Proc::spawn(p.netns_name(), &paths.logs, &format!("backend-{pod}-{n}"), &bins.backend, &args)?;
    let addr = SocketAddr::new(p.ip().into(), port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let connect = strait_netns::connect_from_async(p.netns_name(), addr);
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            return Ok(proc);
        }
        if let Some(status) = proc.exited() {
            bail!("backend {pod} exited at start ({status}):\n{}", proc.tail(20));
        }
        if Instant::now() > deadline {
            bail!("backend {pod} does not accept connections after 20 s:\n{}", proc.tail(20));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One answer of an admin port: status, which process answered (`x-strait-pid`: while a replacement shares
/// the port, either may), body.
pub struct AdminReply {
    pub status: u16,
    pub pid: Option<u32>,
    pub body: String,
}

/// `GET path` on `addr` from inside `netns`, 2 s at most.
pub async fn admin_get(netns: &str, addr: SocketAddr, path: &str) -> Result<AdminReply> {
    let exchange = async {
        let mut stream = strait_netns::connect_from_async(netns, addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // Bounded: a config dump is a few hundred KiB at most.
        (&mut stream).take(16 << 20).read_to_end(&mut response).await?;
        let response = String::from_utf8_lossy(&response);
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        let pid = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim().eq_ignore_ascii_case("x-strait-pid").then(|| value.trim().parse().ok()).flatten()
        });
        anyhow::Ok(AdminReply { status, pid, body: body.to_string() })
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.context("admin request timed out")?
}

/// The control plane's view (`/debug/proxies`): the newest version it published, and per node the newest version
/// that node's last ACK stands for. A node whose configuration a version did not change gets no line for it, and
/// its earlier ACK stands for that version too (push protocol 3 sends a change only to the nodes it concerns).
pub async fn control_plane_acks(cluster: &Cluster) -> Result<(u64, BTreeMap<String, u64>)> {
    let monitoring = SocketAddr::new(UNDERLAY_IP.into(), MONITORING_PORT);
    let reply = admin_get(cluster.underlay_netns(), monitoring, "/debug/proxies").await?;
    let status: strait_api::status::MeshStatus =
        serde_json::from_str(&reply.body).context("parsing the control plane's /debug/proxies")?;
    let acked = status.proxies.into_iter().filter_map(|p| Some((p.node, p.last_acked?))).collect();
    Ok((status.version, acked))
}

/// The configuration version a proxy reports, and which process reported it.
pub async fn config_version(cluster: &Cluster, node: &str) -> Result<(String, Option<u32>)> {
    let reply = admin_get(cluster.node(node).netns_name(), ADMIN, "/config_dump").await?;
    let dump: serde_json::Value = serde_json::from_str(&reply.body).context("parsing /config_dump")?;
    Ok((dump["version"].as_str().unwrap_or_default().to_string(), reply.pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files as the control plane reads and admits them: every object accepted, none rejected, in every
    /// state the churn produces.
    #[test]
    fn the_control_plane_accepts_every_state_of_the_files() {
        let pods: Vec<&str> = CLIENTS.iter().map(|(p, _)| *p).chain(BACKENDS.iter().map(|(p, ..)| *p)).collect();
        let address = |name: &str| {
            let i = pods.iter().position(|p| *p == name).expect("a pod of the layout") as u8;
            let node = CLIENTS.iter().find(|(p, _)| *p == name).map(|(_, n)| *n).unwrap_or("node-b");
            (node.to_string(), Ipv4Addr::new(10, 9, 0, 10 + i))
        };
        let mut states = vec![Desired::initial()];
        let mut churned = Desired::initial();
        churned.v1_weight = 90;
        churned.endpoints.remove("r1");
        churned.new_version_present = true;
        churned.endpoints.insert(NEW_VERSION_POD.to_string());
        states.push(churned);
        for desired in states {
            let files = BTreeMap::from([
                ("mesh.yaml".to_string(), Ok(desired.mesh_yaml_with(&address).into_bytes())),
                ("routes.yaml".to_string(), Ok(desired.routes_yaml().into_bytes())),
            ]);
            let discovered = strait_control::files::parse_files(&files);
            assert!(discovered.rejected.is_empty(), "{:?}", discovered.rejected);
            let admitted = strait_control::admit::Admission::new("cluster.local").admit(&discovered);
            assert!(admitted.problems.is_empty(), "{:?}", admitted.problems);
            let snapshot = &admitted.snapshot;
            let workloads = pods.len() - usize::from(!desired.new_version_present);
            assert_eq!(snapshot.workloads.len(), workloads);
            assert_eq!(snapshot.services.len(), 4);
            assert_eq!((snapshot.traffic_routes.len(), snapshot.destination_policies.len()), (2, 1));
            let reviews = snapshot.services.iter().find(|s| s.name == "reviews").expect("reviews");
            let endpoints = BACKENDS.iter().filter(|(p, app, ..)| *app == "reviews" && desired.endpoints.contains(*p));
            assert_eq!(reviews.endpoints.len(), endpoints.count());
        }
    }

    use std::collections::BTreeMap;
}
