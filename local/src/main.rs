//! `strait`: one binary for running Strait on one machine.
//!
//! - `strait local` starts a whole mesh (control plane, two node proxies, demo backends) as child processes of
//!   itself, on loopback addresses, without Kubernetes or root; `strait local --netns` runs it in network
//!   namespaces with transparent capture instead (root, Linux);
//! - `strait proxy`, `strait control` and `strait demo-backend` are those children (and usable on their own);
//! - `strait import` converts Istio resources to Strait's.

mod children;
mod control;
mod demo;
mod exec;
mod forward;
mod http_get;
mod import;
mod launch;
mod launch_spec;
mod netns_mesh;
mod plan;
mod pods;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "strait", version, about = "Strait service mesh on one machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a whole mesh locally: control plane, node proxies node-a and node-b, demo backends.
    Local(launch::LocalArgs),
    /// Run a node proxy (the same flags as `strait-proxy`).
    Proxy(Box<strait_proxy::cli::Args>),
    /// Run the control plane with the file provider (as `strait-control`).
    Control(control::ControlArgs),
    /// A small HTTP server answering JSON with its version, its identity and the caller's identity.
    DemoBackend(demo::DemoArgs),
    /// Convert Istio resources (VirtualService, DestinationRule, AuthorizationPolicy, PeerAuthentication) to
    /// Strait's, naming every field that was dropped or changed.
    Import(import::ImportArgs),
    /// A tiny HTTP client for checks from inside a pod's network namespace (tests).
    #[command(hide = true)]
    HttpGet(http_get::HttpGetArgs),
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Local(args) => launch::run(args),
        Command::Proxy(args) => strait_proxy::cli::run_with(*args),
        Command::Control(args) => control::run(args),
        Command::DemoBackend(args) => demo::run(args),
        Command::Import(args) => import::run(args),
        Command::HttpGet(args) => http_get::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
