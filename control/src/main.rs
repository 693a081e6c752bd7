//! `strait-control`: flags -> [`strait_control::Options`] -> run until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "strait-control",
    about = "Strait control plane: pushes mesh configuration to node proxies and signs their workload certificates"
)]
struct Args {
    /// Directory of YAML files: the mesh description (kind: Mesh) and TrafficRoute, DestinationPolicy,
    /// AuthorizationPolicy resources. Watched for changes.
    #[arg(long, env = "STRAIT_FILES")]
    files: PathBuf,
    /// Directory of the mesh CA (ca.pem, ca-key.pem); created with a new CA if absent.
    #[arg(long, env = "STRAIT_CA_DIR")]
    ca_dir: PathBuf,
    /// SPIFFE trust domain of the mesh (must match an existing CA's).
    #[arg(long, env = "STRAIT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Address of the push and signing endpoint (TLS, HTTP/2).
    #[arg(long, env = "STRAIT_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// File holding the bearer token proxies present (one token for the whole local mesh).
    #[arg(long, env = "STRAIT_TOKEN_FILE")]
    token_file: PathBuf,
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
    let mut options = strait_control::Options::new(args.files, args.ca_dir, args.token_file);
    options.trust_domain = args.trust_domain;
    options.listen = args.listen;
    let running = strait_control::start(options).await?;
    tokio::select! {
        result = running.wait() => result,
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; shutting down");
            Ok(())
        }
    }
}
