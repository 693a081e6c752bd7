//! `strait local`: check every address up front, create the mesh CA and the proxies' token on first run, start
//! the control plane, the node proxies and the demo backends as child processes, wait until the mesh answers,
//! say where to send requests, and stop everything on Ctrl-C.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::children::Children;
use crate::plan::{Base, Binding, Plan};

#[derive(Args, Debug)]
pub struct LocalArgs {
    #[command(subcommand)]
    pub(crate) command: Option<LocalCommand>,
    /// Where the mesh CA, the proxies' token and the logs are kept (created on first run).
    #[arg(long, default_value = ".strait-local", global = true)]
    pub(crate) state_dir: PathBuf,
    /// The mesh description (kind: Mesh) and the TrafficRoute, DestinationPolicy and AuthorizationPolicy
    /// resources. Watched: saved edits are pushed to the proxies live.
    #[arg(long, default_value = "deploy/local", global = true)]
    pub(crate) config_dir: PathBuf,
    /// First two octets of the addresses `strait local` picks for the control plane (<base>.0.2:15012) and the
    /// node proxies (<base>.1.1, <base>.2.1, ... ports 15000 admin and 15020 metrics). Workload and service
    /// addresses come from the files.
    #[arg(long, default_value = "127.0", global = true)]
    pub(crate) base_ip: Base,
    /// How long to wait for the mesh to come up, in seconds.
    #[arg(long, default_value_t = 60)]
    pub(crate) start_timeout: u64,
    /// Linux, as root: run the mesh in network namespaces (a node namespace per node, a pod namespace per
    /// workload, the control plane on the underlay) with the proxies capturing pod traffic transparently
    /// (nftables TPROXY), as in a cluster. Workloads get pod addresses (10.1.0.x on the first node, ...), services
    /// 10.96.0.x; --base-ip does not apply.
    #[arg(long, global = true)]
    pub(crate) netns: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum LocalCommand {
    /// Run a command as a workload of the running local mesh (a caller of your own): it gets the workload's
    /// identity on the mesh and the services' addresses in its environment, e.g.
    /// `strait local exec --as client -- sh -c 'curl http://$STRAIT_SERVICE_REVIEWS/'`.
    Exec(crate::exec::ExecArgs),
}

pub fn run(mut args: LocalArgs) -> anyhow::Result<()> {
    if let Some(LocalCommand::Exec(exec)) = args.command.take() {
        return crate::exec::run(&args, exec);
    }
    anyhow::ensure!(
        args.config_dir.is_dir(),
        "--config-dir {}: not a directory. Run `strait local` from the repository root (where deploy/local/ is), \
         or pass --config-dir",
        args.config_dir.display()
    );
    if args.netns {
        return crate::netns_mesh::run(args);
    }
    let trust_domain = strait_api::default_trust_domain();
    let plan = Plan::read(&args.config_dir, args.base_ip, &trust_domain)?;
    for rejected in &plan.rejected {
        eprintln!("warning: {rejected}");
    }
    check_addresses(&plan.bindings(), &args.config_dir)?;

    let State { dir: state_dir, config_dir, ca_dir, token_file, last_good_dir, created_ca: created } =
        State::prepare(&args, &trust_domain)?;

    // One thread for everything: the children's death signal is tied to the thread that started them.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let mut signals = Signals::new()?;
        let mut children = Children::new(&state_dir.join("logs"))?;
        let s = |p: &Path| p.display().to_string();
        children.spawn(
            "control",
            &[
                "control".into(),
                "--files".into(),
                s(&config_dir),
                "--ca-dir".into(),
                s(&ca_dir),
                "--token-file".into(),
                s(&token_file),
                "--trust-domain".into(),
                trust_domain.clone(),
                "--listen".into(),
                plan.control.to_string(),
                "--monitoring".into(),
                plan.monitoring.to_string(),
            ],
        )?;
        for node in &plan.nodes {
            let mut proxy_args: Vec<String> = vec![
                "proxy".into(),
                // A development mesh: one line per request is worth its cost here.
                "--access-log".into(),
                "--node".into(),
                node.name.clone(),
                "--mode".into(),
                "explicit".into(),
                "--control-plane".into(),
                plan.control.to_string(),
                "--token-file".into(),
                s(&token_file),
                "--root-cert".into(),
                s(&ca_dir.join(strait_certs::CA_CERT_FILE)),
                "--trust-domain".into(),
                trust_domain.clone(),
                "--admin".into(),
                node.admin.to_string(),
                "--metrics".into(),
                node.metrics.to_string(),
                // A proxy restarted while the control plane is away serves what it last had.
                "--last-good-config".into(),
                s(&last_good_dir.join(format!("{}.json", node.name))),
            ];
            if node.bind_services {
                proxy_args.push("--bind-services".into());
            }
            children.spawn(&node.name, &proxy_args)?;
        }
        for b in &plan.backends {
            children.spawn(&plan.backend_name(b), &b.args())?;
        }
        for r in &plan.runs {
            let w = &r.workload;
            let mut env = crate::plan::workload_env(w, &r.listen, &r.identity);
            env.extend(crate::forward::start(w.address, &plan.services, &w.namespace).await?);
            children.start(crate::children::Spec {
                name: w.name.clone(),
                program: r.argv.first().cloned().unwrap_or_default().into(),
                args: r.argv.iter().skip(1).cloned().collect(),
                env,
                netns: None,
                current_dir: None,
            })?;
        }

        let deadline = Instant::now() + Duration::from_secs(args.start_timeout);
        tokio::select! {
            ready = wait_until_up(&plan, &mut children, deadline) => ready?,
            _ = signals.recv() => {
                children.stop(Duration::from_secs(5));
                anyhow::bail!("interrupted while starting");
            }
        }
        let mut externals = Externals::new(&plan.externals);
        externals.check().await;
        print_summary(&plan, &args, created, &externals);

        tokio::select! {
            _ = supervise_until_signal(&mut children, &mut signals) => {}
            _ = externals.watch() => {}
        }
        println!("stopping the local mesh...");
        children.stop(Duration::from_secs(5));
        println!("stopped.");
        Ok(())
    })
}

/// Restarts children that exit (with backoff, each event logged on stderr) until Ctrl-C or SIGTERM.
pub(crate) async fn supervise_until_signal(children: &mut Children, signals: &mut Signals) {
    loop {
        tokio::select! {
            _ = signals.recv() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                for event in children.supervise() {
                    eprintln!("strait local: {event}");
                }
            }
        }
    }
}

/// The state directory, made ready: the mesh CA (created on first run) and the proxies' token.
pub(crate) struct State {
    pub dir: PathBuf,
    /// The configuration directory, absolute.
    pub config_dir: PathBuf,
    pub ca_dir: PathBuf,
    pub token_file: PathBuf,
    /// Where each node proxy keeps its last good configuration (emptied at start: it serves restarts within
    /// this run, not an earlier run's mesh).
    pub last_good_dir: PathBuf,
    pub created_ca: bool,
}

impl State {
    pub(crate) fn prepare(args: &LocalArgs, trust_domain: &str) -> anyhow::Result<State> {
        let dir = absolute(&args.state_dir)?;
        let config_dir = absolute(&args.config_dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating the state directory {}", dir.display()))?;
        let ca_dir = dir.join("ca");
        let created_ca = !ca_dir.join(strait_certs::CA_CERT_FILE).exists();
        strait_certs::MeshCa::load_or_generate(&ca_dir, trust_domain)
            .with_context(|| format!("creating or loading the mesh CA in {}", ca_dir.display()))?;
        let token_file = dir.join("token");
        ensure_token(&token_file)?;
        let last_good_dir = dir.join("last-good");
        match std::fs::remove_dir_all(&last_good_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("emptying {}", last_good_dir.display()))
            }
            _ => {}
        }
        std::fs::create_dir_all(&last_good_dir).with_context(|| format!("creating {}", last_good_dir.display()))?;
        Ok(State { dir, config_dir, ca_dir, token_file, last_good_dir, created_ca })
    }
}

pub(crate) struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    pub(crate) fn new() -> anyhow::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

pub(crate) fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir().context("reading the current directory")?.join(path))
}

/// The bearer token the proxies present to the control plane: random, made on first run, mode 0600.
fn ensure_token(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    strait_certs::write_private_file(path, token.as_bytes())
        .with_context(|| format!("writing the proxies' token to {}", path.display()))
}

/// Binds every address once, before anything starts, so that a taken port is one clear error instead of a
/// child failing later (or, for addresses a proxy binds only after configuration arrives, a log line).
fn check_addresses(bindings: &[Binding], config_dir: &Path) -> anyhow::Result<()> {
    let mut seen: HashMap<SocketAddr, &str> = HashMap::new();
    for b in bindings {
        if let Some(other) = seen.insert(b.addr, &b.what) {
            anyhow::bail!(
                "{} is wanted twice, by {other} and by {}: give them distinct addresses in {}",
                b.addr,
                b.what,
                config_dir.display()
            );
        }
    }
    let mut taken = Vec::new();
    let mut hints = Vec::new();
    for b in bindings {
        let Err(e) = std::net::TcpListener::bind(b.addr) else { continue };
        taken.push(format!("  {b}: {e}"));
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "Is `strait local` already running? Stop it (Ctrl-C), or run this one elsewhere with --base-ip and \
                 other addresses in the files of {}.",
                config_dir.display()
            ),
            std::io::ErrorKind::PermissionDenied => {
                let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "1024".into());
                format!(
                    "Ports below {start} need privileges: allow them with \
                     `sudo sysctl net.ipv4.ip_unprivileged_port_start=80`, or use a higher service port in {}.",
                    config_dir.display()
                )
            }
            std::io::ErrorKind::AddrNotAvailable => "The local mesh needs the whole 127.0.0.0/8 on loopback (as Linux \
                                                     has it); elsewhere add the addresses to the loopback interface."
                .to_string(),
            _ => String::new(),
        };
        if !hint.is_empty() && !hints.contains(&hint) {
            hints.push(hint);
        }
    }
    if taken.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "cannot start the local mesh; these addresses cannot be bound:\n{}\n{}",
        taken.join("\n"),
        hints.join("\n")
    )
}

/// Waits until every proxy is ready (configuration and certificates received), every demo backend listens and
/// every service address accepts connections.
async fn wait_until_up(plan: &Plan, children: &mut Children, deadline: Instant) -> anyhow::Result<()> {
    let mut waiting_for: String;
    loop {
        if let Some((name, status, tail)) = children.exited() {
            anyhow::bail!("{name} exited while the mesh was starting ({status})\n{tail}");
        }
        waiting_for = String::new();
        for node in &plan.nodes {
            match get(node.admin, "/ready").await {
                Some((200, _)) => {}
                Some((_, body)) => waiting_for = format!("{} ({})", node.name, body.trim()),
                None => waiting_for = format!("{} (admin port not answering yet)", node.name),
            }
            if !waiting_for.is_empty() {
                break;
            }
        }
        if waiting_for.is_empty() {
            let services = plan.services.iter().flat_map(|s| {
                s.addresses.iter().flat_map(move |a| s.ports.iter().map(move |p| SocketAddr::new(*a, p.port)))
            });
            let backends = plan.backends.iter().map(|b| b.listen);
            let runs = plan.runs.iter().flat_map(|r| r.listen.iter().copied());
            for addr in backends.chain(runs).chain(services) {
                if !connects(addr).await {
                    waiting_for = format!("{addr} to accept connections");
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

async fn connects(addr: SocketAddr) -> bool {
    matches!(tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// A plain HTTP/1.1 GET; `None` when nothing answers.
async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let get = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        exchange(stream, addr, path).await
    };
    tokio::time::timeout(Duration::from_secs(2), get).await.ok().flatten()
}

/// A plain HTTP/1.1 GET on a connected stream: (status, body).
pub(crate) async fn exchange(mut stream: tokio::net::TcpStream, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()))
}

pub(crate) fn url(addr: SocketAddr) -> String {
    if addr.port() == 80 {
        format!("http://{}/", addr.ip())
    } else {
        format!("http://{addr}/")
    }
}

/// The ports of the external workloads (`external: true`), and whether each listens yet.
pub(crate) struct Externals {
    ports: Vec<(String, SocketAddr, bool)>,
}

impl Externals {
    pub(crate) fn new(externals: &[crate::plan::ExternalPlan]) -> Self {
        let ports = externals
            .iter()
            .flat_map(|e| {
                let name = format!("{}/{}", e.workload.namespace, e.workload.name);
                e.listen.iter().map(move |addr| (name.clone(), *addr, false))
            })
            .collect();
        Externals { ports }
    }

    async fn check(&mut self) {
        for (_, addr, listening) in &mut self.ports {
            *listening = connects(*addr).await;
        }
    }

    /// Banner lines: each external workload's port and whether it listens.
    pub(crate) fn banner(&self, env_hint: impl Fn(&str) -> String) -> String {
        let mut out = String::new();
        for (name, addr, listening) in &self.ports {
            if *listening {
                out.push_str(&format!(
                    "  external:       {name} listening on {addr}
"
                ));
            } else {
                out.push_str(&format!(
                    "  external:       {name} NOT listening yet on {addr}: start it there{}
",
                    env_hint(name)
                ));
            }
        }
        out
    }

    /// Says once when a port that was not listening starts to, then leaves it alone (a probe is a connection
    /// the user's server would see and log); never returns.
    async fn watch(&mut self) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (name, addr, listening) in self.ports.iter_mut().filter(|(_, _, listening)| !*listening) {
                if connects(*addr).await {
                    *listening = true;
                    eprintln!("strait local: external workload {name} is listening on {addr}");
                }
            }
        }
    }
}

fn print_summary(plan: &Plan, args: &LocalArgs, created_ca: bool, externals: &Externals) {
    let nodes: Vec<&str> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut out = String::new();
    let shown_state = args.state_dir.display();
    let mut parts = vec![format!("{} demo backend(s)", plan.backends.len())];
    if !plan.runs.is_empty() {
        parts.push(format!("{} workload(s) of yours", plan.runs.len()));
    }
    if !plan.externals.is_empty() {
        parts.push(format!("{} external", plan.externals.len()));
    }
    out.push_str(&format!(
        "strait local mesh is up: control plane {}, node proxies {} (mTLS between them), {}; logs in {}/logs/\n",
        plan.control,
        nodes.join(" and "),
        parts.join(", "),
        shown_state,
    ));
    for r in &plan.runs {
        let listen: Vec<String> = r.listen.iter().map(ToString::to_string).collect();
        let on = if listen.is_empty() { String::new() } else { format!(" on {}", listen.join(", ")) };
        out.push_str(&format!(
            "  workload:       {}/{} (run: {}){on}; log {}/logs/{}.log\n",
            r.workload.namespace,
            r.workload.name,
            r.argv.join(" "),
            shown_state,
            r.workload.name
        ));
    }
    out.push_str(&externals.banner(|_| " (see the Mesh file; `strait local` says when it comes)".to_string()));
    let service =
        plan.services.iter().find_map(|s| Some(SocketAddr::new(*s.addresses.first()?, s.ports.first()?.port)));
    if let Some(vip) = service {
        let client =
            plan.clients.iter().find(|c| Some(c.node.as_str()) == plan.service_node().map(|n| n.name.as_str()));
        match client {
            Some(c) if c.address == std::net::IpAddr::from([127, 0, 0, 1]) => {
                out.push_str(&format!(
                    "  send requests:  curl {}   (you are workload {}/{})\n",
                    url(vip),
                    c.namespace,
                    c.name
                ));
                out.push_str(&format!("  load:           oha -n 2000 -c 20 {}\n", url(vip)));
            }
            Some(c) => out.push_str(&format!(
                "  send requests:  curl --interface {} {}   (as workload {}/{})\n",
                c.address,
                url(vip),
                c.namespace,
                c.name
            )),
            None => out.push_str(&format!("  service:        {}\n", url(vip))),
        }
    }
    if let Some(route) = &plan.route_file {
        out.push_str(&format!(
            "  canary weight:  edit {} and save; the proxies get the change within a second\n",
            args.config_dir.join(route).display()
        ));
    }
    let admin: Vec<String> = plan.nodes.iter().map(|n| format!("{} http://{}/config_dump", n.name, n.admin)).collect();
    let metrics: Vec<String> = plan.nodes.iter().map(|n| format!("{} http://{}/metrics", n.name, n.metrics)).collect();
    out.push_str(&format!("  admin:          {}\n", admin.join("  ")));
    out.push_str(&format!(
        "  status:         strait status --control {}   (also check, config, why, tap)\n",
        plan.monitoring
    ));
    out.push_str(&format!("  metrics:        {}\n", metrics.join("  ")));
    if let Some(c) = plan.clients.iter().find(|c| Some(c.node.as_str()) == plan.service_node().map(|n| n.name.as_str()))
    {
        // The same flags as this run, so the command finds the same mesh.
        let mut flags = String::new();
        if args.config_dir != Path::new("deploy/local") {
            flags.push_str(&format!(" --config-dir {}", args.config_dir.display()));
        }
        if args.base_ip.0 != [127, 0] {
            flags.push_str(&format!(" --base-ip {}.{}", args.base_ip.0[0], args.base_ip.0[1]));
        }
        out.push_str(&format!(
            "  your client:    strait local{flags} exec --as {} -- <command>   (services in $STRAIT_SERVICE_<NAME>)\n",
            c.name
        ));
    }
    out.push_str(&format!(
        "  mesh CA:        {} ({})\n",
        args.state_dir.join("ca").display(),
        if created_ca { "created now" } else { "kept from an earlier run" }
    ));
    out.push_str("Ctrl-C stops everything.\n");
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
}
