//! `strait local --netns`: the local mesh in network namespaces, with transparent capture, as root on Linux.
//!
//! The namespaces are the end-to-end harness's cluster ([`strait_netns::Cluster`]): an underlay bridge
//! (172.30.0.254), one namespace per node (172.30.0.1, .2, ... on the underlay) and one pod namespace per
//! workload of the mesh description, joined to its node by a veth pair (10.1.0.x on the first node, 10.2.0.x on
//! the second, ...). The services get addresses 10.96.0.10, .11, ..., which nothing routes: a pod sends them to
//! its node, where the proxy's nftables TPROXY rules capture them.
//!
//! - The control plane runs in the underlay namespace on 172.30.0.254:15012: every node reaches it directly
//!   over the bridge, nothing in the host's namespace changes, and it goes away with the cluster. It serves the
//!   configuration directory as it is (routes and policies stay live), except that the mesh description is
//!   read from a copy with the cluster's addresses, written to `<state dir>/netns/`.
//! - One `strait proxy --redirect tproxy --mark 0x539` per node namespace, as the end-to-end tests run it; it
//!   installs its own rules. Admin on 127.0.0.1:15000 and metrics on :15020 inside the node's namespace.
//! - The control plane's monitoring port and each proxy's admin port are forwarded from loopback addresses of
//!   the host (`netns_access`), so `strait status`, `check`, `config` and `tap` work from the host as on loopback.
//! - The demo backends inside their workloads' pod namespaces; the client workloads are pods with nothing
//!   running: send requests with `ip netns exec <client namespace> curl ...`.
//!
//! Dropping the cluster (Ctrl-C, SIGTERM, an error, a panic) kills every process in its namespaces and deletes
//! them. If `strait local` is killed outright, its children die with it (their death signal) and the
//! namespaces stay until the next `strait local --netns`, which removes namespaces whose owner is gone.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use strait_netns::cluster::UNDERLAY_IP;
use strait_netns::{Cluster, Tool, Unmet};

use crate::children::Children;
use crate::launch::{url, LocalArgs, Signals, State};
use crate::plan::{Base, Plan};
use crate::pods::{self, NodePods};

/// Namespace names are `sl<pid>-<n>-<node or pod>`.
pub const NETNS_PREFIX: &str = "sl";
/// As in the end-to-end tests: the proxies' own connections carry it, and their rules skip it.
const PROXY_MARK: &str = "0x539";
const CONTROL_PORT: u16 = 15012;
const MONITORING_PORT: u16 = 15014;
const ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15000);

pub fn run(args: LocalArgs) -> anyhow::Result<()> {
    preflight()?;
    let trust_domain = strait_api::default_trust_domain();
    let files = crate::plan::read_config_dir(&args.config_dir)?;
    // The loopback plan of the files as they are: the workloads, services and nodes to lay out.
    let original = Plan::from_files(&files, &args.config_dir, Base([127, 0]), &trust_domain)?;
    for rejected in &original.rejected {
        eprintln!("warning: {rejected}");
    }
    let layout = pods::layout(&original.workloads);
    let state = State::prepare(&args, &trust_domain)?;

    // One thread for everything: the children's death signal is tied to the thread that started them.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        // Before anything exists, so that a signal from now on ends in the cleanup below.
        let mut signals = Signals::new()?;
        let removed = strait_netns::cluster::sweep_dead_owners(NETNS_PREFIX);
        if !removed.is_empty() {
            eprintln!(
                "removed {} network namespace(s) left by an earlier `strait local --netns` that did not exit cleanly",
                removed.len()
            );
        }
        let mut builder = Cluster::builder().prefix(NETNS_PREFIX);
        for node in &layout {
            let names: Vec<&str> = node.pods.iter().map(|p| p.pod.as_str()).collect();
            builder = builder.node(&node.node, &names);
        }
        let cluster = builder.build().context("creating the network namespaces")?;

        // The mesh description with the cluster's addresses, for the control plane.
        let addresses = addresses(&cluster, &layout, &original)?;
        let header = format!(
            "# Written by `strait local --netns` from {}: the same mesh with the namespace cluster's addresses.\n\
             # Edit the original; the namespaces are made once, at start.\n",
            state.config_dir.display()
        );
        let translated = pods::translate(&files, &addresses, &header)?;
        anyhow::ensure!(
            !translated.is_empty(),
            "{} holds no `kind: Mesh` document to translate",
            args.config_dir.display()
        );
        let netns_dir = state.dir.join("netns");
        std::fs::create_dir_all(&netns_dir).with_context(|| format!("creating {}", netns_dir.display()))?;
        let mut replaced = files.clone();
        let mut replace_args = Vec::new();
        for (name, text) in &translated {
            let path = netns_dir.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            replaced.insert(name.clone(), Ok(text.clone().into_bytes()));
            replace_args.extend(["--replace".to_string(), path.display().to_string()]);
        }
        let plan = Plan::from_files(&replaced, &args.config_dir, Base([127, 0]), &trust_domain)?;
        let pod_netns = |w: &strait_control::model::Workload| -> Option<String> {
            let pod = layout
                .iter()
                .flat_map(|n| &n.pods)
                .find(|p| p.workload.namespace == w.namespace && p.workload.name == w.name)?;
            Some(cluster.pod(&pod.pod).netns_name().to_string())
        };

        // Declared after the cluster, so dropped before it: processes stop, then the namespaces go.
        let mut children = Children::new(&state.dir.join("logs"))?;
        let control = SocketAddr::new(UNDERLAY_IP.into(), CONTROL_PORT);
        let monitoring = SocketAddr::new(UNDERLAY_IP.into(), MONITORING_PORT);
        // The host's way in to the monitoring and admin ports (see `netns_access`), bound before anything runs
        // so that a taken address is one clear error.
        let base = args.base_ip;
        let host_monitoring = SocketAddr::from((base.ip(0, 2), MONITORING_PORT));
        crate::netns_access::start(crate::netns_access::Forward {
            listen: host_monitoring,
            netns: cluster.underlay_netns().to_string(),
            target: monitoring,
            what: "control plane monitoring".into(),
        })
        .await?;
        let mut host_admin = BTreeMap::new();
        for (i, node) in cluster.nodes().iter().enumerate() {
            let listen = SocketAddr::from((base.ip(i as u8 + 1, 1), ADMIN.port()));
            crate::netns_access::start(crate::netns_access::Forward {
                listen,
                netns: node.netns_name().to_string(),
                target: ADMIN,
                what: format!("{} admin", node.name()),
            })
            .await?;
            host_admin.insert(node.name().to_string(), listen);
        }
        let s = |p: &Path| p.display().to_string();
        let mut control_args: Vec<String> = vec![
            "control".into(),
            "--files".into(),
            s(&state.config_dir),
            "--ca-dir".into(),
            s(&state.ca_dir),
            "--token-file".into(),
            s(&state.token_file),
            "--trust-domain".into(),
            trust_domain.clone(),
            "--listen".into(),
            control.to_string(),
            "--monitoring".into(),
            monitoring.to_string(),
        ];
        control_args.extend(replace_args);
        children.spawn_in(cluster.underlay_netns(), "control", &control_args)?;
        for node in cluster.nodes() {
            let mut proxy_args: Vec<String> = vec![
                "proxy".into(),
                // A development mesh: one line per request is worth its cost here.
                "--access-log".into(),
                "--node".into(),
                node.name().to_string(),
                "--mode".into(),
                "transparent".into(),
                "--redirect".into(),
                "tproxy".into(),
                "--mark".into(),
                PROXY_MARK.into(),
                "--control-plane".into(),
                control.to_string(),
                "--token-file".into(),
                s(&state.token_file),
                "--root-cert".into(),
                s(&state.ca_dir.join(strait_certs::CA_CERT_FILE)),
                "--trust-domain".into(),
                trust_domain.clone(),
                "--admin".into(),
                ADMIN.to_string(),
                "--last-good-config".into(),
                s(&state.last_good_dir.join(format!("{}.json", node.name()))),
            ];
            if let Some(admin) = host_admin.get(node.name()) {
                proxy_args.extend(["--advertise-admin".into(), admin.to_string()]);
            }
            children.spawn_in(node.netns_name(), node.name(), &proxy_args)?;
        }
        let mut backends = Vec::new();
        for b in &plan.backends {
            let netns = pod_netns(&b.workload)
                .with_context(|| format!("no pod for workload {}/{}", b.workload.namespace, b.workload.name))?;
            children.spawn_in(&netns, &plan.backend_name(b), &b.args())?;
            backends.push((netns, b.listen));
        }
        for r in &plan.runs {
            let w = &r.workload;
            let netns = pod_netns(w).with_context(|| format!("no pod for workload {}/{}", w.namespace, w.name))?;
            let mut env = crate::plan::workload_env(w, &r.listen, &r.identity);
            env.extend(crate::forward::direct_env(&plan.services, &w.namespace));
            children.start(crate::children::Spec {
                name: w.name.clone(),
                program: r.argv.first().cloned().unwrap_or_default().into(),
                args: r.argv.iter().skip(1).cloned().collect(),
                env,
                netns: Some(netns.clone()),
                current_dir: None,
            })?;
            for addr in &r.listen {
                backends.push((netns.clone(), *addr));
            }
        }
        // For `strait local exec --as` and the external workloads' users: which namespace each pod is.
        let pods_file = crate::exec::pods_file(&state.dir);
        let pods = crate::exec::PodsFile {
            pods: plan
                .workloads
                .iter()
                .filter_map(|w| {
                    Some(crate::exec::PodEntry {
                        workload: format!("{}/{}", w.namespace, w.name),
                        netns: pod_netns(w)?,
                        address: w.address.to_string(),
                    })
                })
                .collect(),
            service_env: crate::exec::PodsFile::service_env(&plan),
        };
        std::fs::write(&pods_file, serde_json::to_vec_pretty(&pods)?)
            .with_context(|| format!("writing {}", pods_file.display()))?;
        let client = plan.clients.iter().find_map(|c| Some((c, pod_netns(c)?)));
        let service =
            plan.services.iter().find_map(|s| Some(SocketAddr::new(*s.addresses.first()?, s.ports.first()?.port)));
        let probe = client.as_ref().zip(service).map(|((_, netns), vip)| (netns.clone(), vip));

        let deadline = Instant::now() + Duration::from_secs(args.start_timeout);
        tokio::select! {
            ready = wait_until_up(&cluster, &backends, probe, &mut children, deadline) => ready?,
            _ = signals.recv() => {
                children.stop(Duration::from_secs(5));
                anyhow::bail!("interrupted while starting");
            }
        }

        let summary = Summary { cluster: &cluster, layout: &layout, plan: &plan, args: &args, state: &state };
        summary.print(control, host_monitoring, client, service, &netns_dir, &translated);

        crate::launch::supervise_until_signal(&mut children, &mut signals).await;
        println!("stopping the local mesh...");
        children.stop(Duration::from_secs(5));
        let tag = cluster.tag().to_string();
        drop(cluster);
        println!("stopped; namespaces {tag}* removed.");
        Ok(())
    })
}

/// What `--netns` runs besides its own binaries: the cluster's `ip` and `sysctl`, the node proxies' `nft`.
const NETNS_TOOLS: &[Tool] = &[Tool::IP, Tool::SYSCTL, Tool::NFT];

/// Root, and the tools the cluster and the proxies call, before anything starts: a node proxy without `nft`
/// would otherwise never become ready, and the reason would sit in its log.
fn preflight() -> anyhow::Result<()> {
    anyhow::ensure!(
        strait_netns::is_root(),
        "--netns needs root: it creates network namespaces and the node proxies install nftables rules. Run it as \
         root (e.g. `sudo target/release/strait local --netns`), or leave out --netns for the mesh on loopback"
    );
    let missing = strait_netns::missing_tools(NETNS_TOOLS);
    anyhow::ensure!(missing.is_empty(), "--netns {}, then try again", Unmet::Missing(missing));
    Ok(())
}

/// Old address -> new: each workload's to its pod's, each service address to a VIP.
fn addresses(cluster: &Cluster, layout: &[NodePods], plan: &Plan) -> anyhow::Result<BTreeMap<IpAddr, IpAddr>> {
    let mut map = BTreeMap::new();
    for pod in layout.iter().flat_map(|n| &n.pods) {
        let w = &pod.workload;
        if let Some(other) = map.insert(w.address, IpAddr::V4(cluster.pod(&pod.pod).ip())) {
            anyhow::bail!(
                "two workloads have the address {} (the second is {}/{}; the first now has {other}): --netns gives \
                 each workload its own pod, so give them distinct addresses",
                w.address,
                w.namespace,
                w.name
            );
        }
    }
    for (old, vip) in pods::service_vips(&plan.services)? {
        anyhow::ensure!(!map.contains_key(&old), "{old} is both a workload's and a service's address");
        map.insert(old, vip);
    }
    Ok(map)
}

/// Waits until every proxy is ready, every demo backend listens (seen from its pod) and the service answers
/// connections from the client's pod (through its node's capture rules).
async fn wait_until_up(
    cluster: &Cluster,
    backends: &[(String, SocketAddr)],
    probe: Option<(String, SocketAddr)>,
    children: &mut Children,
    deadline: Instant,
) -> anyhow::Result<()> {
    loop {
        if let Some((name, status, tail)) = children.exited() {
            anyhow::bail!("{name} exited while the mesh was starting ({status})\n{tail}");
        }
        let mut waiting_for = String::new();
        for node in cluster.nodes() {
            match get_in(node.netns_name(), ADMIN, "/ready").await {
                Some((200, _)) => continue,
                Some((_, body)) => waiting_for = format!("{} ({})", node.name(), body.trim()),
                None => waiting_for = format!("{} (admin port not answering yet)", node.name()),
            }
            break;
        }
        if waiting_for.is_empty() {
            let checks = backends.iter().cloned().chain(probe.clone());
            for (netns, addr) in checks {
                if !connects_in(&netns, addr).await {
                    waiting_for = format!("{addr} to accept connections from {netns}");
                    break;
                }
            }
        }
        if waiting_for.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the local mesh did not come up in time: still waiting for {waiting_for}. Logs are in {}",
                children.log_path().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connects_in(netns: &str, addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), strait_netns::connect_from_async(netns, addr)).await,
        Ok(Ok(_))
    )
}

/// A plain HTTP/1.1 GET from inside `netns`; `None` when nothing answers.
async fn get_in(netns: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let get = async {
        let stream = strait_netns::connect_from_async(netns, addr).await.ok()?;
        crate::launch::exchange(stream, addr, path).await
    };
    tokio::time::timeout(Duration::from_secs(2), get).await.ok().flatten()
}

struct Summary<'a> {
    cluster: &'a Cluster,
    layout: &'a [NodePods],
    plan: &'a Plan,
    args: &'a LocalArgs,
    state: &'a State,
}

impl Summary<'_> {
    fn print(
        &self,
        control: SocketAddr,
        host_monitoring: SocketAddr,
        client: Option<(&strait_control::model::Workload, String)>,
        service: Option<SocketAddr>,
        netns_dir: &Path,
        translated: &[(String, String)],
    ) {
        let cluster = self.cluster;
        let nodes: Vec<&str> = cluster.nodes().iter().map(|n| n.name()).collect();
        let mut out = format!(
            "strait local mesh is up in network namespaces: control plane {control} (in {}), node proxies {} \
             (TPROXY capture, mTLS between them), {} demo backend(s); logs in {}/logs/\n",
            cluster.underlay_netns(),
            nodes.join(" and "),
            self.plan.backends.len(),
            self.args.state_dir.display(),
        );
        out.push_str(&format!("  namespaces:     {}*   (`ip netns list`; removed on exit)\n", cluster.tag()));
        let pods: Vec<String> = self
            .layout
            .iter()
            .flat_map(|n| &n.pods)
            .map(|p| {
                let pod = cluster.pod(&p.pod);
                format!("{} {} ({})", p.pod, pod.ip(), pod.node())
            })
            .collect();
        out.push_str(&format!("  pods:           {}\n", pods.join(", ")));
        match (client, service) {
            (Some((c, netns)), Some(vip)) => {
                out.push_str(&format!(
                    "  send requests:  sudo ip netns exec {netns} curl {}   (as workload {}/{})\n",
                    url(vip),
                    c.namespace,
                    c.name
                ));
                out.push_str(&format!("  forbidden:      sudo ip netns exec {netns} curl -i {}admin\n", url(vip)));
            }
            (None, Some(vip)) => out.push_str(&format!("  service:        {}\n", url(vip))),
            _ => {}
        }
        if let Some(route) = &self.plan.route_file {
            out.push_str(&format!(
                "  canary weight:  edit {} and save; the proxies get the change within a second\n",
                self.args.config_dir.join(route).display()
            ));
        }
        // The host's forwards into the namespaces (`netns_access`).
        out.push_str(&format!(
            "  status:         strait status --control {host_monitoring}   (also check, config, why, tap; from this \
             machine)\n"
        ));
        if let Some(node) = cluster.nodes().first() {
            out.push_str(&format!(
                "  admin:          sudo ip netns exec {} curl http://{ADMIN}/config_dump   (metrics: port 15020; \
                 other nodes: {}<node>)\n",
                node.netns_name(),
                cluster.tag()
            ));
        }
        let names: Vec<String> =
            translated.iter().map(|(name, _)| netns_dir.join(name).display().to_string()).collect();
        out.push_str(&format!(
            "  mesh addresses: {} (the mesh description with the pods' addresses)\n",
            names.join(", ")
        ));
        out.push_str(&format!(
            "  mesh CA:        {} ({})\n",
            self.args.state_dir.join("ca").display(),
            if self.state.created_ca { "created now" } else { "kept from an earlier run" }
        ));
        for e in &self.plan.externals {
            let w = &e.workload;
            let listen: Vec<String> = e.listen.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "  external:       {}/{} on {}: start it in its pod with `sudo strait local --netns exec --as {} -- \
                 <command>`\n",
                w.namespace,
                w.name,
                listen.join(", "),
                w.name
            ));
        }
        for r in &self.plan.runs {
            out.push_str(&format!(
                "  workload:       {}/{} (run: {}) in its pod; log {}/logs/{}.log\n",
                r.workload.namespace,
                r.workload.name,
                r.argv.join(" "),
                self.args.state_dir.display(),
                r.workload.name
            ));
        }
        out.push_str("Ctrl-C stops everything and removes the namespaces.\n");
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}
