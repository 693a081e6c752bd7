//! Flags and environment -> options; start the runtime; nothing else. Shared by the `strait-proxy` binary and the
//! `strait proxy` subcommand of the local mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{self, Admin};
use crate::control_plane::ControlPlaneClient;
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
    /// No interception: bind per-workload tunnel listeners and (with --bind-services) service addresses.
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
#[command(name = "strait-proxy", version, about = "Strait node proxy")]
pub struct Args {
    /// This node's name, as workloads' `node` fields name it.
    #[arg(long, env = "NODE_NAME")]
    node: String,
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
    #[arg(long, default_value_t = crate::tcp::limits::DEFAULT_PER_WORKLOAD as u32, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections_per_workload: u32,
    /// Where the last configuration received from the control plane is kept (owner-only), so that a restart
    /// while the control plane is unreachable serves it instead of starting empty (in Kubernetes: a hostPath).
    #[arg(long, env = "STRAIT_LAST_GOOD_CONFIG", requires = "control_plane")]
    last_good_config: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, value_enum, default_value = "transparent")]
    mode: Mode,
    #[arg(long, value_enum, default_value = "none")]
    redirect: Rules,
    /// In explicit mode, also listen on every service address (outbound).
    #[arg(long)]
    bind_services: bool,
    #[arg(long, default_value = "0.0.0.0:15001")]
    outbound: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15008")]
    tunnel: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15006")]
    plaintext: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics: SocketAddr,
    /// SO_MARK for the proxy's own connections, so capture rules skip them (needs CAP_NET_ADMIN).
    #[arg(long, value_parser = parse_mark)]
    mark: Option<u32>,
    /// Log lines as JSON (for log shippers) instead of text.
    #[arg(long)]
    log_json: bool,
    /// On SIGTERM (or `POST /drain` on the admin port): how long connections in flight may take to finish
    /// before the proxy closes them and exits (`30s`, `2m`; at most 1h). Keep the pod's
    /// terminationGracePeriodSeconds a little longer.
    #[arg(long, default_value = "30s", value_parser = parse_grace)]
    drain_grace: Duration,
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

fn control_plane_client(args: &Args, addr: &str) -> anyhow::Result<ControlPlaneClient> {
    let identity = match &args.control_plane_identity {
        Some(id) => id.parse::<Identity>().context("--control-plane-identity")?,
        None => Identity::new(&args.trust_domain, "strait-system", "strait-control")
            .context("the default control-plane identity for this trust domain")?,
    };
    let token_path = args.token_file.as_ref().context("--token-file is required with --control-plane")?;
    let token = std::fs::read_to_string(token_path).with_context(|| format!("reading {}", token_path.display()))?;
    let root_path = args.root_cert.as_ref().context("--root-cert is required with --control-plane")?;
    let root = std::fs::read_to_string(root_path).with_context(|| format!("reading {}", root_path.display()))?;
    let client = ControlPlaneClient::new(addr, identity, &root, &token, &args.node)
        .context("configuring the control-plane client")?;
    Ok(client.with_token_file(token_path.clone()))
}

/// Parses the command line and runs the proxy until SIGTERM or Ctrl-C, then drains it (see `drain`).
pub fn main() -> anyhow::Result<()> {
    run_with(Args::parse())
}

/// Runs the proxy with already-parsed flags until SIGTERM, Ctrl-C or `POST /drain`, then drains it.
pub fn run_with(args: Args) -> anyhow::Result<()> {
    let (log_control, _log_guard) = crate::telemetry::logging::init(args.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(run(args, log_control));
    // What is still open after the drain is closed here; a blocking task (an `nft` run) gets a moment.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn run(args: Args, log_control: crate::telemetry::logging::LogControl) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let state = StateStore::new(&args.node);
    let certs = match &args.control_plane {
        Some(addr) => {
            let client = control_plane_client(&args, addr)?;
            let certs = Arc::new(CertStore::new(Arc::new(client.issuer()), trust_bundle(&args)?));
            let last_good = args.last_good_config.clone();
            if let Some(path) = &last_good {
                serve_last_good(path, &state);
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
    let proxy = Proxy::new(&options, state.clone(), certs.clone(), metrics.clone());
    let admin = Admin {
        state,
        certs,
        metrics,
        log_control: Some(log_control),
        metrics_only: false,
        synced: Some(proxy.ctx.synced.clone()),
        drain: Some(proxy.ctx.drain.clone()),
        superseded: Default::default(),
    };
    admin::announce_replacement(args.admin);
    admin::spawn(admin, args.admin, args.metrics)?;
    if args.control_plane.is_some() && matches!(options.mode, ListenMode::Transparent { .. }) {
        // A transparent listener joins the node's SO_REUSEPORT group as soon as it is bound and takes its share
        // of the pods' new connections: bound before the first configuration, it would refuse them all ("not a
        // meshed workload on this node") while a predecessor could serve them. Until then the predecessor (or,
        // with none, the fail-closed rules) keeps the node as it is.
        wait_for_configuration(&proxy.ctx.state).await;
    }
    proxy.start(&options).await?;
    tracing::info!(node = %args.node, admin = %args.admin, metrics = %args.metrics, "strait-proxy started");
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

/// Ctrl-C, or SIGTERM as Kubernetes and process supervisors send it.
/// Returns once a configuration (from the control plane, or the last good one on disk) is in place.
async fn wait_for_configuration(state: &StateStore) {
    let mut updates = state.subscribe();
    if !updates.borrow_and_update().is_loaded() {
        tracing::info!("waiting for the first configuration before binding the listeners");
    }
    while !updates.borrow_and_update().is_loaded() {
        if updates.changed().await.is_err() {
            return;
        }
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
    use super::*;

    /// A replacement in control-plane mode binds nothing until a configuration is in place.
    #[tokio::test]
    async fn listeners_wait_for_the_first_configuration() {
        let state = StateStore::new("node-a");
        let mut waiting = Box::pin(wait_for_configuration(&state));
        assert!(tokio::time::timeout(Duration::ZERO, &mut waiting).await.is_err(), "no configuration yet");
        state.apply(strait_api::MeshConfig::default(), "v1".into()).expect("an empty mesh applies");
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("returns once one is in place");
    }
}
