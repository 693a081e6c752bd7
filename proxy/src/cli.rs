//! Flags and environment -> options; start the runtime; nothing else. Shared by the `strait-proxy` binary and the
//! `strait proxy` subcommand of the local mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{self, Admin};
use crate::control_plane::ControlPlaneClient;
use crate::discovery::{Discovery, DiscoveryMode, DiscoveryOptions};
use crate::drain::Outcome;
use crate::serve::{ListenMode, Proxy, ProxyOptions};
use crate::state::StateStore;
use crate::telemetry::metrics::Metrics;
use crate::{config_file, last_good, redirect};
use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use strait_certs::{CertStore, Identity, MeshCa};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Pod traffic is captured by the node's rules (production).
    Transparent,
    /// No interception (no root): bind each local workload's tunnel address (<workload IP>:<its tunnel port>)
    /// and, with --bind-services, each service address. Ignores --outbound, --tunnel, --plaintext and
    /// --redirect.
    Explicit,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Rules {
    /// Someone else installs the capture rules.
    None,
    /// nftables REDIRECT; the original destination comes from SO_ORIGINAL_DST.
    Redirect,
    /// nftables TPROXY with transparent listeners.
    Tproxy,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "strait-proxy",
    version,
    about = "Strait node proxy",
    after_help = "Explicit mode (--mode explicit) binds per-workload tunnel addresses and, with --bind-services, \
service addresses instead of the capture listeners: it ignores --outbound, --tunnel, --plaintext and --redirect. \
--admin and --metrics apply in both modes (give each proxy on one machine its own)."
)]
pub struct Args {
    /// This node's name, as workloads' `node` fields name it.
    #[arg(long, env = "NODE_NAME", required_unless_present = "uninstall")]
    node: Option<String>,
    /// Remove what the proxy installed on this node (the `inet strait` nftables table, and TPROXY's policy
    /// routing rule and route table) and exit; nothing else on the node is touched. Run it once the node's proxy
    /// is gone (the DaemonSet deleted): it refuses while a proxy still answers on --admin, which would put the
    /// rules back. A proxy that exits, even on SIGTERM, keeps them on purpose (pods fail closed meanwhile).
    #[arg(long)]
    uninstall: bool,
    /// Mesh configuration file (YAML), watched for changes.
    #[arg(long, env = "STRAIT_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of a mesh CA that issues this proxy's workload certificates directly (development and tests;
    /// in a cluster the control plane signs them).
    #[arg(long, conflicts_with = "control_plane")]
    ca_dir: Option<PathBuf>,
    /// The control plane (`host:port`): configuration is pushed from there and workload certificates are
    /// signed there. Replaces --config and --ca-dir.
    #[arg(long, env = "STRAIT_CONTROL_PLANE", conflicts_with = "config")]
    control_plane: Option<String>,
    /// The identity the control plane must present.
    #[arg(long)]
    control_plane_identity: Option<String>,
    /// Bearer token for the control plane (in Kubernetes: a projected ServiceAccount token).
    #[arg(long, env = "STRAIT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM file with the mesh root certificate(s), to verify the control plane.
    #[arg(long, env = "STRAIT_ROOT_CERT")]
    root_cert: Option<PathBuf>,
    /// Connections one local workload may hold open through the proxy at once; one more is refused (and
    /// counted in `strait_connections_refused_total{reason="source_limit"}`), so no pod can exhaust the proxy.
    #[arg(long, env = "STRAIT_MAX_CONNECTIONS_PER_WORKLOAD", default_value_t = crate::tcp::limits::DEFAULT_PER_WORKLOAD as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections_per_workload: u32,
    /// Where the last configuration received from the control plane is kept (owner-only), so that a restart
    /// while the control plane is unreachable serves it instead of starting empty (in Kubernetes: a hostPath).
    #[arg(long, env = "STRAIT_LAST_GOOD_CONFIG", requires = "control_plane")]
    last_good_config: Option<PathBuf>,
    /// What the proxy receives from the control plane: `on-demand` (push protocol 3: every service's addresses
    /// and ports, its own workloads, and the endpoints and workloads of the services and addresses its pods
    /// connect to, asked for on first use) or `full` (every endpoint and workload of the mesh, protocol 2).
    #[arg(long, env = "STRAIT_DISCOVERY", value_enum, default_value = "on-demand")]
    discovery: DiscoveryMode,
    /// How long a connection to a destination the node has not discovered yet waits for the control plane's
    /// answer before it is refused (counted in `strait_discovery_requests_total{result}`); at most 10s.
    #[arg(long, env = "STRAIT_DISCOVERY_TIMEOUT", default_value = "2s", value_parser = parse_discovery_timeout)]
    discovery_timeout: Duration,
    /// Discovered services and addresses that no connection used for this long are dropped (1m to 24h).
    #[arg(long, env = "STRAIT_DISCOVERY_IDLE", default_value = "10m", value_parser = parse_discovery_idle)]
    discovery_idle: Duration,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, value_enum, default_value = "transparent")]
    mode: Mode,
    /// Capture rules the proxy installs (transparent mode; ignored in explicit mode).
    #[arg(long, value_enum, default_value = "none")]
    redirect: Rules,
    /// In explicit mode, also listen on every service address (outbound): give it to the proxy of the node
    /// the clients run on, only (two proxies cannot bind one service address).
    #[arg(long)]
    bind_services: bool,
    /// Outbound capture listener (transparent mode; ignored in explicit mode).
    #[arg(long, default_value = "0.0.0.0:15001")]
    outbound: SocketAddr,
    /// Inbound mTLS tunnel listener (transparent mode; ignored in explicit mode, which binds each workload's).
    #[arg(long, default_value = "0.0.0.0:15008")]
    tunnel: SocketAddr,
    /// Inbound plaintext capture listener (transparent mode; ignored in explicit mode).
    #[arg(long, default_value = "0.0.0.0:15006")]
    plaintext: SocketAddr,
    /// Admin endpoint: /ready, /live, /config_dump, /certs, /logging, /drain (both modes).
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// The admin address reported to the control plane (for `strait status`, `config`, `check` and `tap`) when
    /// operators reach the admin port through a forward rather than at --admin (`strait local --netns` forwards
    /// a loopback address of the host into the node's namespace). Defaults to --admin.
    #[arg(long)]
    advertise_admin: Option<SocketAddr>,
    /// Prometheus metrics endpoint, /metrics (both modes).
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics: SocketAddr,
    /// SO_MARK for the proxy's own connections, so capture rules skip them (needs CAP_NET_ADMIN).
    #[arg(long, value_parser = parse_mark)]
    mark: Option<u32>,
    /// Log lines as JSON (for log shippers) instead of text.
    #[arg(long)]
    log_json: bool,
    /// Write an access line (log target `access`) per HTTP request and per TCP connection at their end. Off by
    /// default, as in Istio and Linkerd: at a line per request it is a large part of the proxy's CPU per request,
    /// and metrics carry the same counts. `STRAIT_ACCESS_LOG=true` (or 1, yes, on) in the environment turns it on too.
    #[arg(long, env = "STRAIT_ACCESS_LOG", value_parser = clap::builder::BoolishValueParser::new())]
    access_log: bool,
    /// On SIGTERM (or `POST /drain` on the admin port): how long connections in flight may take to finish
    /// before the proxy closes them and exits (`30s`, `2m`; at most 1h). Keep the pod's
    /// terminationGracePeriodSeconds a little longer.
    #[arg(long, default_value = "30s", value_parser = parse_grace)]
    drain_grace: Duration,
    /// Runtime worker threads that serve connections (default: the CPUs this process may use, cgroup quota
    /// included). One thread keeps every task of a request on one core, with no cross-thread wake-ups: the
    /// cheapest per request where the node's CPUs are busy with the pods themselves (as ztunnel's and HAProxy's
    /// small fixed thread counts). One worker runs tokio's current-thread scheduler, which lets the tunnel batch
    /// the writes of several connections.
    #[arg(long, env = "STRAIT_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,
    /// Export a span per proxy hop (and per try) over OTLP/HTTP (protobuf) to this collector:
    /// `http://collector:4318` (spans go to its `/v1/traces`) or a full URL. Off when unset. Spans wait in a
    /// bounded queue (4096) and go out in batches; when the queue is full they are dropped and counted
    /// (`strait_trace_spans_total{result="dropped"}`), never slowing a request.
    #[arg(long, env = "STRAIT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Share of new traces exported (0 to 1; Istio's default is 1%). A request that arrives with a
    /// `traceparent` follows its caller's sampling decision.
    #[arg(long, env = "STRAIT_TRACE_SAMPLING", default_value_t = 0.01, value_parser = parse_ratio)]
    trace_sampling: f64,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio from 0 to 1")),
    }
}

/// A duration from `min` to `max`, written as in resources (`500ms`, `2s`, `10m`).
fn parse_bounded(s: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let duration = strait_api::parse_duration(s).map_err(|e| e.to_string())?;
    if duration < min || duration > max {
        return Err(format!("{s:?} is not from {min:?} to {max:?}"));
    }
    Ok(duration)
}

fn parse_discovery_timeout(s: &str) -> Result<Duration, String> {
    parse_bounded(s, Duration::from_millis(1), crate::discovery::MAX_TIMEOUT)
}

fn parse_discovery_idle(s: &str) -> Result<Duration, String> {
    parse_bounded(s, Duration::from_secs(60), Duration::from_secs(24 * 3600))
}

fn parse_grace(s: &str) -> Result<Duration, String> {
    crate::drain::parse_grace(s).map_err(|e| e.to_string())
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("{s:?} is not a mark: {e}"))
}

fn trust_bundle(args: &Args) -> anyhow::Result<strait_certs::TrustBundle> {
    let path = args.root_cert.as_ref().context("--root-cert is required with --control-plane")?;
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    strait_certs::TrustBundle::from_pem(&args.trust_domain, &pem)
        .with_context(|| format!("{} holds no usable root certificate", path.display()))
}

fn control_plane_client(args: &Args, node: &str, addr: &str) -> anyhow::Result<ControlPlaneClient> {
    let identity = match &args.control_plane_identity {
        Some(id) => id.parse::<Identity>().context("--control-plane-identity")?,
        None => Identity::new(&args.trust_domain, "strait-system", "strait-control")
            .context("the default control-plane identity for this trust domain")?,
    };
    let token_path = args.token_file.as_ref().context("--token-file is required with --control-plane")?;
    let token = std::fs::read_to_string(token_path).with_context(|| format!("reading {}", token_path.display()))?;
    let root_path = args.root_cert.as_ref().context("--root-cert is required with --control-plane")?;
    let root = std::fs::read_to_string(root_path).with_context(|| format!("reading {}", root_path.display()))?;
    let client =
        ControlPlaneClient::new(addr, identity, &root, &token, node).context("configuring the control-plane client")?;
    Ok(client.with_token_file(token_path.clone()).with_admin_address(args.advertise_admin.unwrap_or(args.admin)))
}

/// Parses the command line and runs the proxy until SIGTERM or Ctrl-C, then drains it (see `drain`).
pub fn main() -> anyhow::Result<()> {
    run_with(Args::parse())
}

/// Runs the proxy with already-parsed flags until SIGTERM, Ctrl-C or `POST /drain`, then drains it.
pub fn run_with(args: Args) -> anyhow::Result<()> {
    let (log_control, _log_guard) = crate::telemetry::logging::init(args.log_json, args.access_log);
    if args.uninstall {
        return uninstall(&args);
    }
    let threads = args
        .worker_threads
        .map(usize::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get));
    let runtime = runtime_with(threads)?;
    tracing::info!(workers = threads, scheduler = ?runtime.handle().runtime_flavor(), "runtime");
    let result = runtime.block_on(run(args, log_control));
    // What is still open after the drain is closed here; a blocking task (an `nft` run) gets a moment.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The runtime for `threads` workers. One worker gets tokio's current-thread scheduler, as linkerd2-proxy does on
/// one core: every task runs on the thread that drives the listeners, and a task a request wakes (the tunnel's
/// connection, the pool's) queues behind the connections already ready instead of jumping ahead of them in the
/// multi-thread scheduler's LIFO slot. The tunnel then writes the requests of several connections in one segment:
/// in the bench (HTTP/1.1, 16 connections) 1.5 TCP segments per request per proxy instead of 2.25, and 22 % less
/// CPU per request (tests/bench/RESULTS.md).
fn runtime_with(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

async fn run(args: Args, log_control: crate::telemetry::logging::LogControl) -> anyhow::Result<()> {
    let node = args.node.clone().context("--node is required")?;
    let metrics = Arc::new(Metrics::new());
    if let Some(endpoint) = &args.otlp_endpoint {
        let options = crate::telemetry::traces::TraceOptions {
            endpoint: endpoint.clone(),
            sampling: args.trace_sampling,
            node: node.clone(),
        };
        crate::telemetry::traces::start(&options, metrics.trace_spans.clone())?;
        tracing::info!(%endpoint, sampling = args.trace_sampling, "exporting traces");
    }
    let state = StateStore::new(&node);
    let discovery = Arc::new(Discovery::new(
        DiscoveryOptions { mode: args.discovery, timeout: args.discovery_timeout, idle: args.discovery_idle },
        metrics.clone(),
    ));
    let certs = match &args.control_plane {
        Some(addr) => {
            let client = control_plane_client(&args, &node, addr)?.with_discovery(discovery.clone());
            if args.discovery == DiscoveryMode::OnDemand {
                discovery.expect_on_demand();
                tokio::spawn(discovery.clone().expire());
            }
            let certs = Arc::new(CertStore::new(Arc::new(client.issuer()), trust_bundle(&args)?));
            let last_good = args.last_good_config.clone();
            if let Some(path) = &last_good {
                serve_last_good(path, &state);
                discovery.remember(&state.current().config.answers);
            }
            let store = state.clone();
            let updates = metrics.clone();
            let mut received = 0u64;
            tokio::spawn(client.run(move |config| {
                received += 1;
                let copy = last_good.as_ref().map(|path| (path, config.clone()));
                let result =
                    store.apply(config, format!("control-plane#{received}")).map(|_| ()).map_err(|e| e.to_string());
                updates.config_update(&result);
                if let (Ok(()), Some((path, config))) = (&result, copy) {
                    if let Err(e) = last_good::save(path, &config) {
                        tracing::warn!(error = %e, "the configuration applies, but a restart would not find it");
                    }
                }
                result
            }));
            certs
        }
        None => {
            let ca_dir = args.ca_dir.as_ref().context("either --control-plane or --ca-dir is required")?;
            let ca = MeshCa::load(ca_dir).with_context(|| format!("loading the mesh CA from {}", ca_dir.display()))?;
            anyhow::ensure!(
                ca.trust_domain() == args.trust_domain,
                "the CA in {} is for trust domain {:?}, not {:?}",
                ca_dir.display(),
                ca.trust_domain(),
                args.trust_domain
            );
            Arc::new(CertStore::new(Arc::new(ca.clone()), strait_certs::TrustBundle::from_ca(&ca)))
        }
    };

    let mode = match args.mode {
        Mode::Explicit => ListenMode::Explicit { bind_services: args.bind_services },
        Mode::Transparent => ListenMode::Transparent {
            redirect: match args.redirect {
                Rules::None => None,
                Rules::Redirect => Some(redirect::Mode::Redirect),
                Rules::Tproxy => Some(redirect::Mode::Tproxy),
            },
        },
    };
    let options = ProxyOptions {
        mode,
        outbound_addr: args.outbound,
        tunnel_addr: args.tunnel,
        plaintext_addr: args.plaintext,
        mark: args.mark,
        connect_timeout: Duration::from_secs(5),
        pool: Default::default(),
        max_connections_per_workload: args.max_connections_per_workload as usize,
    };

    if let Some(path) = &args.config {
        // A file that is not there yet (a volume still being written) is waited for: not ready until then.
        let loaded = if path.exists() {
            Some(config_file::load(path, &state, &metrics)?)
        } else {
            tracing::warn!(file = %path.display(), "configuration file does not exist yet; not ready until it does");
            None
        };
        tokio::spawn(config_file::watch(path.clone(), state.clone(), metrics.clone(), loaded));
    }
    let proxy = Proxy::new(&options, state.clone(), certs.clone(), metrics.clone(), discovery);
    let admin = Admin {
        state,
        certs,
        metrics,
        log_control: Some(log_control),
        metrics_only: false,
        synced: Some(proxy.ctx.synced.clone()),
        drain: Some(proxy.ctx.drain.clone()),
        superseded: Default::default(),
        context: Some(proxy.ctx.clone()),
    };
    admin::announce_replacement(args.admin);
    admin::spawn(admin, args.admin, args.metrics)?;
    proxy.start(&options).await?;
    tracing::info!(%node, admin = %args.admin, metrics = %args.metrics, "strait-proxy started");
    let mut signals = Signals::new()?;
    let drain = proxy.ctx.drain.clone();
    tokio::select! {
        () = signals.next() => {}
        () = drain.started() => {}
    }
    drain.start();
    let started = std::time::Instant::now();
    tracing::info!(grace = ?args.drain_grace, in_flight = drain.in_flight(), "draining: not ready, no longer accepting; waiting for connections in flight");
    tokio::select! {
        outcome = drain.finish(args.drain_grace) => match outcome {
            Outcome::Drained => tracing::info!(elapsed = ?started.elapsed(), "drained: every connection finished"),
            Outcome::GraceExpired { still_open } => tracing::warn!(
                grace = ?args.drain_grace,
                still_open,
                "drain grace period over: closing the connections still open"
            ),
        },
        // An operator who signals again does not want to wait.
        () = signals.next() => {
            tracing::warn!(in_flight = drain.in_flight(), "second signal during the drain: closing now");
        }
    }
    // The spans of the last requests go out before the process does.
    crate::telemetry::traces::flush(Duration::from_secs(2)).await;
    Ok(())
}

/// `--uninstall`: removes the node's rules and policy routing, once no proxy runs on the node.
fn uninstall(args: &Args) -> anyhow::Result<()> {
    let probe = match args.admin.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), args.admin.port())
        }
        ip if ip.is_unspecified() => SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), args.admin.port()),
        _ => args.admin,
    };
    if std::net::TcpStream::connect_timeout(&probe, Duration::from_secs(1)).is_ok() {
        anyhow::bail!(
            "a proxy still answers on {probe} (--admin): stop it first (delete the DaemonSet), or it would put the rules back"
        );
    }
    // Removal needs only the table's name and the TPROXY mark and route table, which are fixed.
    let spec = redirect::RedirectSpec::default();
    redirect::remove(&spec).context("removing the node's redirection rules")?;
    tracing::info!(
        table = redirect::TABLE,
        tproxy_table = spec.tproxy_table,
        "uninstalled: the node's Strait rules and policy routing are gone"
    );
    Ok(())
}

/// Starts from the configuration the previous run saved, if there is one: until the control plane answers, the
/// node's pods stay captured and their traffic is served (or refused) as it was, never sent around the mesh.
fn serve_last_good(path: &std::path::Path, state: &StateStore) {
    match last_good::load(path) {
        Ok(Some(config)) => match state.apply(config, "last-good".into()) {
            Ok(_) => {
                tracing::info!(file = %path.display(), "serving the last good configuration until the control plane answers")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "the last good configuration no longer applies")
            }
        },
        Ok(None) => tracing::info!(file = %path.display(), "no last good configuration yet"),
        Err(e) => tracing::warn!(error = %e, "starting without a last good configuration"),
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::Args;

    #[test]
    fn the_node_is_required_unless_uninstalling() {
        assert!(Args::try_parse_from(["strait-proxy"]).is_err());
        let uninstall = Args::try_parse_from(["strait-proxy", "--uninstall"]).expect("--uninstall alone");
        assert!(uninstall.uninstall && uninstall.node.is_none());
        let run = Args::try_parse_from(["strait-proxy", "--node", "node-a"]).expect("--node");
        assert!(!run.uninstall && run.node.as_deref() == Some("node-a"));
    }

    /// Issue 21, item 6: someone composing a mesh by hand learns from `--help` which flags explicit mode
    /// does not use.
    #[test]
    fn help_names_the_flags_explicit_mode_ignores() {
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("it ignores --outbound, --tunnel, --plaintext and --redirect"), "{help}");
        for flag in ["--outbound", "--tunnel", "--plaintext", "--redirect"] {
            let line = help.lines().skip_while(|l| !l.trim_start().starts_with(flag)).nth(1).unwrap_or_default();
            assert!(line.contains("ignored in explicit mode"), "{flag}: {line:?}");
        }
    }

    #[test]
    fn one_worker_runs_on_the_current_thread_scheduler_and_more_on_the_multi_thread_one() {
        use super::runtime_with;
        use tokio::runtime::RuntimeFlavor;
        let one = runtime_with(1).expect("runtime");
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        // Everything spawned runs on the thread that drives the runtime.
        let here = std::thread::current().id();
        let ran_on = one.block_on(async { tokio::spawn(async { std::thread::current().id() }).await.expect("task") });
        assert_eq!(ran_on, here);
        let two = runtime_with(2).expect("runtime");
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(two.metrics().num_workers(), 2);
    }
}
