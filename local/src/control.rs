//! `strait control`: the control plane with the file provider, as the `strait-control` binary runs it, plus
//! SIGTERM handling so the local mesh can stop it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use strait_control::discovery::BoxFuture;
use strait_control::model::Discovered;
use strait_control::{Discovery, FileDiscovery};
use tokio::sync::watch;

#[derive(Args, Debug)]
pub struct ControlArgs {
    /// Directory of YAML files: the mesh description (kind: Mesh) and TrafficRoute, DestinationPolicy,
    /// AuthorizationPolicy resources. Watched for changes.
    #[arg(long)]
    files: PathBuf,
    /// Directory of the mesh CA (ca.pem, ca-key.pem); created with a new CA if absent.
    #[arg(long)]
    ca_dir: PathBuf,
    /// SPIFFE trust domain of the mesh (must match an existing CA's).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Address of the push and signing endpoint (TLS, HTTP/2).
    #[arg(long, default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// Monitoring endpoint (plain HTTP), as `strait-control`'s: /metrics (pushes, ACKs and NACKs per node),
    /// /ready once a configuration is built, /live, /debug/proxies (`strait status`). Default: the --listen
    /// address's IP, port 15014.
    #[arg(long)]
    monitoring: Option<SocketAddr>,
    /// File holding the bearer token proxies present.
    #[arg(long)]
    token_file: PathBuf,
    /// A file read (once, at start) in place of the --files directory's file of the same name; the other files
    /// stay live-watched. `strait local --netns` passes the mesh description translated to its namespace
    /// cluster's addresses this way. Repeatable.
    #[arg(long = "replace", value_name = "FILE")]
    replace: Vec<PathBuf>,
}

/// istiod's monitoring port, as `strait-control` uses it.
const MONITORING_PORT: u16 = 15014;

pub fn run(args: ControlArgs) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let replacements = read_replacements(&args.replace)?;
        let monitoring = args.monitoring.unwrap_or(SocketAddr::new(args.listen.ip(), MONITORING_PORT));
        let monitoring = tokio::net::TcpListener::bind(monitoring)
            .await
            .with_context(|| format!("binding the monitoring port {monitoring}"))?;
        let mut options = strait_control::Options::new(args.files, args.ca_dir, args.token_file);
        options.trust_domain = args.trust_domain;
        options.listen = args.listen;
        let mut running = if replacements.is_empty() {
            strait_control::start(options).await?
        } else {
            start_replacing(options, replacements).await?
        };
        tokio::spawn(strait_control::monitoring::serve(monitoring, running.stats().clone()));
        tokio::select! {
            result = running.until_failure() => return result,
            result = shutdown_signal() => result?,
        }
        // As `strait-control` does: the proxies' streams end cleanly and they keep their configuration.
        tracing::info!("draining");
        let _ = running.drain(std::time::Duration::from_secs(5)).await;
        Ok(())
    })
}

/// (file name, contents) of every `--replace` file.
fn read_replacements(paths: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    paths
        .iter()
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("--replace {}: not a file name", path.display()))?;
            let text =
                std::fs::read_to_string(path).with_context(|| format!("--replace: reading {}", path.display()))?;
            Ok((name, text))
        })
        .collect()
}

/// [`strait_control::start`], with the file provider's view of the replaced files swapped for the replacements.
async fn start_replacing(
    options: strait_control::Options,
    replacements: Vec<(String, String)>,
) -> anyhow::Result<strait_control::Running> {
    anyhow::ensure!(
        options.files.is_dir(),
        "--files {}: not a directory (it should hold the mesh description and resource YAML files)",
        options.files.display()
    );
    let ca = strait_certs::MeshCa::load_or_generate(&options.ca_dir, &options.trust_domain)
        .with_context(|| format!("loading the mesh CA from {}", options.ca_dir.display()))?;
    let verifier = strait_control::StaticTokenVerifier::from_file(&options.token_file)
        .with_context(|| format!("reading the token file {}", options.token_file.display()))?;
    let parts = strait_control::Parts {
        discovery: Box::new(Replacing {
            inner: FileDiscovery::new(&options.files, options.poll_interval),
            replacements: Replacements(replacements),
        }),
        verifier: Arc::new(verifier),
        ca,
    };
    strait_control::start_with(options.listen, options.cert_ttl, parts).await
}

/// The file provider, with some files' contents replaced: whatever it read from a replaced file (objects and
/// rejections) is dropped and the replacement's parsed instead, each time the directory changes.
struct Replacing {
    inner: FileDiscovery,
    replacements: Replacements,
}

/// (file name, contents) pairs.
struct Replacements(Vec<(String, String)>);

impl Replacements {
    fn apply(&self, read: &Discovered) -> Discovered {
        let replaced = |source: &str| self.0.iter().any(|(name, _)| name == source);
        let mut out = read.clone();
        out.objects.retain(|o| !replaced(&o.source));
        out.rejected.retain(|r| !replaced(&r.source));
        for (name, text) in &self.0 {
            strait_control::files::parse_file(name, text, &mut out);
        }
        out
    }
}

impl Discovery for Replacing {
    fn run(self: Box<Self>, out: watch::Sender<Arc<Discovered>>) -> BoxFuture<()> {
        Box::pin(async move {
            let Replacing { inner, replacements } = *self;
            let (tx, mut rx) = watch::channel(Arc::new(Discovered::default()));
            let files = Box::new(inner).run(tx);
            let forward = async move {
                while rx.changed().await.is_ok() {
                    let read = rx.borrow_and_update().clone();
                    if out.is_closed() {
                        return;
                    }
                    out.send_replace(Arc::new(replacements.apply(&read)));
                }
            };
            tokio::select! {
                _ = files => {}
                _ = forward => {}
            }
        })
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Ctrl-C or SIGTERM (what `strait local` sends its children, and what they get if it dies).
pub async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}
