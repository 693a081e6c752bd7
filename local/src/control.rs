//! `strait control`: the control plane with the file provider, as the `strait-control` binary runs it, plus
//! SIGTERM handling so the local mesh can stop it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

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
    /// File holding the bearer token proxies present.
    #[arg(long)]
    token_file: PathBuf,
}

pub fn run(args: ControlArgs) -> anyhow::Result<()> {
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let mut options = strait_control::Options::new(args.files, args.ca_dir, args.token_file);
        options.trust_domain = args.trust_domain;
        options.listen = args.listen;
        let running = strait_control::start(options).await?;
        tokio::select! {
            result = running.wait() => result,
            result = shutdown_signal() => {
                result?;
                tracing::info!("shutting down");
                Ok(())
            }
        }
    })
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
