//! `strait-control`: flags -> [`strait_control::Options`] (files) or [`strait_control::kube::KubeOptions`]
//! (`--kubernetes`) -> run until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "strait-control",
    about = "Strait control plane: pushes mesh configuration to node proxies and signs their workload certificates"
)]
struct Args {
    /// Kubernetes mode: discover the mesh from the API server (in-cluster config, else KUBECONFIG), verify
    /// proxies with TokenReview and keep the CA in a Secret. Replaces --files, --ca-dir and --token-file.
    #[arg(long, env = "STRAIT_KUBERNETES", conflicts_with_all = ["files", "ca_dir", "token_file"])]
    kubernetes: bool,
    /// Directory of YAML files: the mesh description (kind: Mesh) and TrafficRoute, DestinationPolicy,
    /// AuthorizationPolicy resources. Watched for changes.
    #[arg(long, env = "STRAIT_FILES", required_unless_present = "kubernetes")]
    files: Option<PathBuf>,
    /// Directory of the mesh CA (ca.pem, ca-key.pem); created with a new CA if absent.
    #[arg(long, env = "STRAIT_CA_DIR", required_unless_present = "kubernetes")]
    ca_dir: Option<PathBuf>,
    /// SPIFFE trust domain of the mesh (must match an existing CA's).
    #[arg(long, env = "STRAIT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Address of the push and signing endpoint (TLS, HTTP/2).
    #[arg(long, env = "STRAIT_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// File holding the bearer token proxies present (one token for the whole local mesh).
    #[arg(long, env = "STRAIT_TOKEN_FILE", required_unless_present = "kubernetes")]
    token_file: Option<PathBuf>,
    /// Kubernetes mode: the namespace Strait runs in (the CA Secret and the proxies' ServiceAccount).
    #[arg(long, env = "STRAIT_NAMESPACE", default_value = "strait-system")]
    namespace: String,
    /// Kubernetes mode: the Secret holding the mesh CA (keys ca.pem, ca-key.pem); created if absent.
    #[arg(long, env = "STRAIT_CA_SECRET", default_value = "strait-ca")]
    ca_secret: String,
    /// Kubernetes mode: the ServiceAccount (in --namespace) whose tokens node proxies present.
    #[arg(long, env = "STRAIT_PROXY_SERVICE_ACCOUNT", default_value = "strait-proxy")]
    proxy_service_account: String,
    /// Kubernetes mode: the audience of the proxies' projected ServiceAccount tokens.
    #[arg(long, env = "STRAIT_TOKEN_AUDIENCE", default_value = "strait-control")]
    token_audience: String,
    /// Monitoring port (plain HTTP): /metrics, /ready, /live.
    #[arg(long, env = "STRAIT_MONITORING", default_value = "0.0.0.0:15014")]
    monitoring: SocketAddr,
    /// On SIGTERM or Ctrl-C: readiness turns false, the listener closes, every proxy's configuration stream ends
    /// so it reconnects to another replica (serving its last good configuration meanwhile), and signing requests
    /// in flight get this long to finish (`30s`, `2m`; at most 1h). A second signal exits at once.
    #[arg(long, env = "STRAIT_DRAIN_GRACE", default_value = "30s", value_parser = parse_grace)]
    drain_grace: std::time::Duration,
    /// Kubernetes mode: the name of the Lease (in --namespace) the replicas elect their leader with; only the
    /// leader writes the resources' status, every replica pushes configuration and signs certificates.
    #[arg(long, env = "STRAIT_LEADER_LEASE", default_value = "strait-control")]
    leader_lease: String,
    /// Kubernetes mode: how long a leader's Lease lasts without renewal (renewed every third of it), e.g.
    /// `15s`; from 2s to 5m. A crashed leader's successor starts writing status at most about this long after.
    #[arg(long, env = "STRAIT_LEADER_LEASE_DURATION", default_value = "15s", value_parser = parse_lease_duration)]
    leader_lease_duration: Duration,
    /// Kubernetes mode: this replica's identity in the Lease, unique among the replicas (the Deployment sets
    /// it to the pod name). Defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Lifetime of the workload certificates it signs (and of its own server certificate), e.g. `24h`, `60s`;
    /// proxies renew at half-life. From 10s (shorter leaves no room for a renewal to be retried) to 30d.
    #[arg(long, env = "STRAIT_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = parse_ttl)]
    workload_cert_ttl: Duration,
    /// Kubernetes mode: also read Istio's VirtualService, DestinationRule, ServiceEntry (networking.istio.io/v1),
    /// AuthorizationPolicy and PeerAuthentication (security.istio.io/v1) from the cluster, those whose CRDs are
    /// installed, converted as `strait import` does; what would behave differently is refused, naming the field.
    #[arg(long, env = "STRAIT_ISTIO_RESOURCES", requires = "kubernetes")]
    istio_resources: bool,
    /// Kubernetes mode: how often to look again for the kinds whose CRD is not installed (Gateway API's routes,
    /// Istio's kinds with --istio-resources), which are watched from the moment it is; from 1s to 1h.
    #[arg(long, env = "STRAIT_CRD_RECHECK", default_value = "30s", value_parser = parse_crd_recheck)]
    crd_recheck: Duration,
    /// Kubernetes mode: whether meshed pods may reach destinations outside the mesh: ALLOW_ANY, or REGISTRY_ONLY
    /// (only hosts a ServiceEntry registers). Files mode: the Mesh document's `outboundTrafficPolicy: {mode: ..}`.
    #[arg(long, env = "STRAIT_OUTBOUND_TRAFFIC_POLICY", default_value = "ALLOW_ANY", requires = "kubernetes")]
    outbound_traffic_policy: strait_api::OutboundTrafficPolicy,
    /// A burst of changes (a rollout) becomes one configuration version once this long passes without another
    /// change (`100ms`; 0 to 10s)...
    #[arg(long, env = "STRAIT_PUSH_DEBOUNCE", default_value = "100ms", value_parser = parse_push_delay)]
    push_debounce: Duration,
    /// ...or at the latest this long after the burst's first change (`1s`; 0 to 10s, at least --push-debounce).
    #[arg(long, env = "STRAIT_PUSH_MAX_DELAY", default_value = "1s", value_parser = parse_push_delay)]
    push_max_delay: Duration,
}

/// Bound of `--push-debounce` and `--push-max-delay`: longer would leave proxies behind for no gain.
const MAX_PUSH_DELAY: Duration = Duration::from_secs(10);

fn parse_push_delay(text: &str) -> Result<Duration, String> {
    let delay = strait_api::parse_duration(text).map_err(|e| e.to_string())?;
    if delay > MAX_PUSH_DELAY {
        return Err(format!("{delay:?} is longer than the limit of 10s"));
    }
    Ok(delay)
}

impl Args {
    fn coalesce(&self) -> anyhow::Result<strait_control::Coalesce> {
        anyhow::ensure!(
            self.push_debounce <= self.push_max_delay,
            "--push-debounce ({:?}) must not be longer than --push-max-delay ({:?})",
            self.push_debounce,
            self.push_max_delay
        );
        Ok(strait_control::Coalesce { quiet: self.push_debounce, max_delay: self.push_max_delay })
    }
}

fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    let grace = strait_api::parse_duration(text).map_err(|e| e.to_string())?;
    if grace > std::time::Duration::from_secs(3600) {
        return Err(format!("a drain grace of {grace:?} is longer than the limit of 1h"));
    }
    Ok(grace)
}

fn parse_lease_duration(text: &str) -> Result<Duration, String> {
    let duration = strait_api::parse_duration(text).map_err(|e| e.to_string())?;
    strait_control::kube::leader::check_duration(duration)
}

fn parse_crd_recheck(text: &str) -> Result<Duration, String> {
    use strait_control::kube::optional_kinds::{MAX_RECHECK, MIN_RECHECK};
    let every = strait_api::parse_duration(text).map_err(|e| e.to_string())?;
    if (MIN_RECHECK..=MAX_RECHECK).contains(&every) {
        Ok(every)
    } else {
        Err(format!("{text}: must be from {MIN_RECHECK:?} to {MAX_RECHECK:?}"))
    }
}

/// This replica's Lease identity: `--pod-name`, else the host name (unique per pod in a cluster).
fn identity(pod_name: Option<String>) -> anyhow::Result<String> {
    if let Some(name) = pod_name.filter(|n| !n.is_empty()) {
        anyhow::ensure!(name.len() <= 253, "--pod-name: longer than 253 characters");
        return Ok(name);
    }
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name for the Lease identity")?;
    let host = host.trim();
    anyhow::ensure!(!host.is_empty() && host.len() <= 253, "no usable host name: pass --pod-name");
    Ok(host.to_string())
}

/// Bounds of `--workload-cert-ttl`.
const MIN_CERT_TTL: Duration = Duration::from_secs(10);
const MAX_CERT_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// `<n><unit>` with unit `s`, `m`, `h` or `d`, within [`MIN_CERT_TTL`]..=[`MAX_CERT_TTL`].
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{s:?}: expected a number and a unit (s, m, h, d), e.g. 60s"))?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    let ttl = seconds.map(Duration::from_secs).unwrap_or(Duration::MAX);
    if !(MIN_CERT_TTL..=MAX_CERT_TTL).contains(&ttl) {
        return Err(format!("{s:?}: must be between 10s and 30d"));
    }
    Ok(ttl)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let coalesce = args.coalesce()?;
    let mut running = if args.kubernetes {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in-cluster configuration, else KUBECONFIG)")?;
        let options = strait_control::kube::KubeOptions {
            listen: args.listen,
            trust_domain: args.trust_domain,
            namespace: args.namespace.clone(),
            ca_secret: args.ca_secret,
            proxy_service_account: args.proxy_service_account,
            audience: args.token_audience,
            cert_ttl: args.workload_cert_ttl,
            istio_resources: args.istio_resources,
            crd_recheck: args.crd_recheck,
            outbound_traffic_policy: args.outbound_traffic_policy,
            coalesce,
            leader_election: Some(strait_control::kube::LeaseSettings {
                namespace: args.namespace.clone(),
                name: args.leader_lease,
                identity: identity(args.pod_name)?,
                duration: args.leader_lease_duration,
            }),
            ..Default::default()
        };
        strait_control::kube::start(client, options).await?
    } else {
        // clap enforces these outside Kubernetes mode.
        let (Some(files), Some(ca_dir), Some(token_file)) = (args.files, args.ca_dir, args.token_file) else {
            anyhow::bail!("--files, --ca-dir and --token-file are required unless --kubernetes is given");
        };
        let mut options = strait_control::Options::new(files, ca_dir, token_file);
        options.trust_domain = args.trust_domain;
        options.listen = args.listen;
        options.cert_ttl = args.workload_cert_ttl;
        options.coalesce = coalesce;
        strait_control::start(options).await?
    };
    let monitoring = tokio::net::TcpListener::bind(args.monitoring)
        .await
        .with_context(|| format!("binding the monitoring port {}", args.monitoring))?;
    tokio::spawn(strait_control::monitoring::serve(monitoring, running.stats().clone()));
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        result = running.until_failure() => return result,
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    let started = std::time::Instant::now();
    tracing::info!(grace = ?args.drain_grace, "draining: not ready, no new connections; proxies are told to reconnect elsewhere");
    tokio::select! {
        drained = running.drain(args.drain_grace) => match drained {
            strait_control::Drained::Clean => tracing::info!(elapsed = ?started.elapsed(), "drained"),
            strait_control::Drained::GraceExpired => {
                tracing::warn!(grace = ?args.drain_grace, "drain grace period over: closing what is still open")
            }
        },
        _ = terminate.recv() => tracing::warn!("second signal during the drain: exiting now"),
        _ = interrupt.recv() => tracing::warn!("second signal during the drain: exiting now"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_lifetime_is_bounded_and_needs_a_unit() {
        assert_eq!(parse_ttl("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_ttl("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("30d"), Ok(MAX_CERT_TTL));
        assert_eq!(parse_ttl("10s"), Ok(MIN_CERT_TTL));
        for bad in ["9s", "31d", "60", "s", "", "1y", "-5s", "99999999999999999999d", "18446744073709551615d"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_flag_reaches_the_options() {
        let args = Args::try_parse_from(["strait-control", "--files", "f", "--ca-dir", "c", "--token-file", "t"])
            .expect("defaults");
        assert_eq!(args.workload_cert_ttl, strait_certs::DEFAULT_WORKLOAD_TTL);
        let args = Args::try_parse_from([
            "strait-control",
            "--files",
            "f",
            "--ca-dir",
            "c",
            "--token-file",
            "t",
            "--workload-cert-ttl",
            "60s",
        ])
        .expect("60s");
        assert_eq!(args.workload_cert_ttl, Duration::from_secs(60));
        assert!(Args::try_parse_from(["strait-control", "--kubernetes", "--workload-cert-ttl", "5s"]).is_err());
    }

    #[test]
    fn the_lease_duration_is_bounded() {
        let args = Args::try_parse_from(["strait-control", "--kubernetes"]).expect("defaults");
        assert_eq!(args.leader_lease_duration, Duration::from_secs(15));
        assert_eq!(args.leader_lease, "strait-control");
        let args =
            Args::try_parse_from(["strait-control", "--kubernetes", "--leader-lease-duration", "3s"]).expect("3s");
        assert_eq!(args.leader_lease_duration, Duration::from_secs(3));
        for bad in ["1s", "6m", "x"] {
            let parsed = Args::try_parse_from(["strait-control", "--kubernetes", "--leader-lease-duration", bad]);
            assert!(parsed.is_err(), "{bad} accepted");
        }
        assert_eq!(identity(Some("strait-control-7d9f".into())).expect("given"), "strait-control-7d9f");
        assert!(identity(Some("x".repeat(254))).is_err());
        assert!(!identity(None).expect("the host name").is_empty());
    }

    #[test]
    fn the_crd_recheck_is_bounded() {
        let args = Args::try_parse_from(["strait-control", "--kubernetes"]).expect("defaults");
        assert_eq!(args.crd_recheck, Duration::from_secs(30));
        let args = Args::try_parse_from(["strait-control", "--kubernetes", "--crd-recheck", "5s"]).expect("5s");
        assert_eq!(args.crd_recheck, Duration::from_secs(5));
        for bad in ["500ms", "2h", "x"] {
            let parsed = Args::try_parse_from(["strait-control", "--kubernetes", "--crd-recheck", bad]);
            assert!(parsed.is_err(), "{bad} accepted");
        }
    }
}
