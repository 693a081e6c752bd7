//! The Strait control plane: discovery (files, or Kubernetes: [`crate::kube`]) -> admission -> translation -> push to
//! node proxies over TLS + HTTP/2, and CSR signing for the workloads on each node.
//!
//! [`start`] runs it all inside the caller's runtime and returns a [`Running`] handle (bound address,
//! counters, shutdown), so a local-mesh launcher can embed it; the `strait-control` binary is a thin shell.
#![forbid(unsafe_code)]

pub mod admit;
pub mod auth;
pub mod discovery;
pub mod files;
pub mod gateway;
pub mod interest;
pub mod istio;
pub mod kube;
pub mod model;
pub mod monitoring;
pub mod push;
pub mod scope;
pub mod server;
pub mod signer;
pub mod stats;
pub mod tls;
pub mod translate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use auth::{Caller, StaticTokenVerifier, TokenVerifier};
pub use discovery::Discovery;
pub use files::FileDiscovery;
pub use push::Coalesce;
pub use stats::{NodeStatus, Stats};

/// How to run the control plane; see the binary's `--help` for each.
#[derive(Clone, Debug)]
pub struct Options {
    pub files: PathBuf,
    pub ca_dir: PathBuf,
    pub trust_domain: String,
    pub listen: SocketAddr,
    pub token_file: PathBuf,
    /// How often the file provider looks for changes.
    pub poll_interval: Duration,
    /// Lifetime of the workload certificates it signs (and of its own server certificate).
    pub cert_ttl: Duration,
    /// How bursts of changes are folded into one published version.
    pub coalesce: Coalesce,
}

impl Options {
    pub fn new(files: impl Into<PathBuf>, ca_dir: impl Into<PathBuf>, token_file: impl Into<PathBuf>) -> Self {
        Options {
            files: files.into(),
            ca_dir: ca_dir.into(),
            trust_domain: strait_api::default_trust_domain(),
            listen: SocketAddr::from(([0, 0, 0, 0], 15012)),
            token_file: token_file.into(),
            poll_interval: Duration::from_millis(250),
            cert_ttl: strait_certs::DEFAULT_WORKLOAD_TTL,
            coalesce: Coalesce::default(),
        }
    }
}

/// The pluggable parts, for embedders and tests that bring their own.
pub struct Parts {
    pub discovery: Box<dyn Discovery>,
    pub verifier: Arc<dyn TokenVerifier>,
    pub ca: strait_certs::MeshCa,
}

/// A running control plane. Dropping it stops everything (connections included) soon after;
/// [`Running::shutdown`] waits until it has, [`Running::drain`] first lets the proxies move elsewhere.
pub struct Running {
    local_addr: SocketAddr,
    stats: Arc<Stats>,
    root_pem: String,
    tasks: JoinSet<()>,
    /// The task serving the proxies' connections: the one that ends on its own when drained.
    server: tokio::task::Id,
    drain: watch::Sender<bool>,
}

/// How [`Running::drain`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every proxy connection closed within the grace period.
    Clean,
    /// The grace period ran out; what was still open was closed.
    GraceExpired,
}

impl Running {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The mesh root certificate proxies must trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Runs `task` with the control plane's own tasks: stopped with them, and expected to run as long.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Turns true when [`Running::drain`] starts, for tasks that have something to hand over first.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain.subscribe()
    }

    /// Stops serving, closes every connection and frees the port.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }

    /// Runs until a task ends, which only happens on a bug: the tasks loop forever.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.until_failure().await
    }

    /// [`Running::wait`] without giving up the handle, so the caller can still [`Running::drain`] it.
    pub async fn until_failure(&mut self) -> anyhow::Result<()> {
        match self.tasks.join_next().await {
            Some(Err(e)) if e.is_panic() => anyhow::bail!("a control plane task panicked: {e}"),
            _ => anyhow::bail!("a control plane task ended unexpectedly"),
        }
    }

    /// Drains (on SIGTERM): readiness turns false, the listener closes (a second replica, or a replacement
    /// bound beside this one with SO_REUSEPORT, takes new connections), every configuration stream ends cleanly
    /// so its proxy reconnects elsewhere while serving its last good configuration, connections get GOAWAY and
    /// signing requests in flight finish. Returns once every connection has closed, or after `grace`, having
    /// stopped everything.
    pub async fn drain(mut self, grace: Duration) -> Drained {
        self.stats.set_draining();
        self.drain.send_replace(true);
        let server = self.server;
        let outcome = tokio::time::timeout(grace, async {
            while let Some(joined) = self.tasks.join_next_with_id().await {
                if joined.map(|(id, ())| id).unwrap_or_else(|e| e.id()) == server {
                    return;
                }
            }
        })
        .await;
        self.tasks.shutdown().await;
        match outcome {
            Ok(()) => Drained::Clean,
            Err(_) => Drained::GraceExpired,
        }
    }
}

/// Starts the control plane from [`Options`]: loads (or creates) the CA, reads the token file, watches the
/// files directory and listens.
pub async fn start(options: Options) -> anyhow::Result<Running> {
    anyhow::ensure!(
        options.files.is_dir(),
        "--files {}: not a directory (it should hold the mesh description and resource YAML files)",
        options.files.display()
    );
    let ca = strait_certs::MeshCa::load_or_generate(&options.ca_dir, &options.trust_domain)
        .with_context(|| format!("loading the mesh CA from {}", options.ca_dir.display()))?;
    let verifier = StaticTokenVerifier::from_file(&options.token_file)
        .with_context(|| format!("reading the token file {}", options.token_file.display()))?;
    let parts = Parts {
        discovery: Box::new(FileDiscovery::new(&options.files, options.poll_interval)),
        verifier: Arc::new(verifier),
        ca,
    };
    start_coalescing(options.listen, options.cert_ttl, options.coalesce, parts).await
}

/// Starts the control plane with the given parts; the trust domain is the CA's. Changes are coalesced as
/// [`Coalesce::default`] says.
pub async fn start_with(listen: SocketAddr, cert_ttl: Duration, parts: Parts) -> anyhow::Result<Running> {
    start_coalescing(listen, cert_ttl, Coalesce::default(), parts).await
}

/// [`start_with`], folding bursts of changes as `coalesce` says.
pub async fn start_coalescing(
    listen: SocketAddr,
    cert_ttl: Duration,
    coalesce: Coalesce,
    parts: Parts,
) -> anyhow::Result<Running> {
    let trust_domain = parts.ca.trust_domain().to_string();
    let root_pem = parts.ca.root_pem().to_string();
    let signer = Arc::new(signer::Signer::new(parts.ca, cert_ttl));
    let identity = tls::control_identity(&trust_domain).context("the control plane's identity")?;
    let resolver = tls::ControlCertResolver::new(signer.clone(), identity, cert_ttl)
        .context("issuing the control plane's server certificate")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(strait_certs::server_config_without_client_auth(resolver));
    let listener = server::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let local_addr = listener.local_addr().context("reading the bound address")?;

    let stats = Arc::new(Stats::new());
    let (discovered_tx, discovered_rx) = watch::channel(Arc::new(model::Discovered::default()));
    let (published_tx, published_rx) = watch::channel(None);
    let (drain, drain_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(parts.discovery.run(discovered_tx));
    tasks.spawn(push::publish(discovered_rx, published_tx, trust_domain.clone(), stats.clone(), coalesce));
    let shared = Arc::new(server::Shared {
        published: published_rx,
        verifier: parts.verifier,
        signer,
        stats: stats.clone(),
        trust_domain,
        subscriptions: Default::default(),
        drain: drain_rx,
    });
    let server = tasks.spawn(server::serve(listener, acceptor, shared)).id();
    tracing::info!(%local_addr, "control plane listening");
    Ok(Running { local_addr, stats, root_pem, tasks, server, drain })
}

/// Starts the control plane and runs it until a task fails.
pub async fn run(options: Options) -> anyhow::Result<()> {
    start(options).await?.wait().await
}
