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
mod netns_access;
mod netns_mesh;
mod plan;
mod pods;

// The node proxy's allocator (see proxy/src/main.rs): `strait proxy` is the same proxy.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Every node proxy: connected since, configuration version, ACK/NACK, workloads, certificate expiry.
    Status(strait_ops::status::StatusArgs),
    /// Preflight and health checks with hints; the exit status says whether all passed.
    Check(strait_ops::check::CheckArgs),
    /// A node proxy's configuration: compiled routes, subsets and endpoints, policies, live destination state.
    Config(strait_ops::config::ConfigArgs),
    /// The decision the mesh would take for a request, and why (live, or offline with --from DIR).
    Why(strait_ops::why::WhyArgs),
    /// Problems in a directory of manifests: rejected objects, shadowed rules, unknown hosts and subsets.
    Lint(strait_ops::lint::LintArgs),
    /// A live stream of the requests the node proxies serve (sampled, bounded).
    Tap(strait_ops::tap::TapArgs),
    /// A tiny HTTP client for checks from inside a pod's network namespace (tests).
    #[command(hide = true)]
    HttpGet(http_get::HttpGetArgs),
}

fn main() -> std::process::ExitCode {
    let outcome = match Cli::parse().command {
        Command::Status(args) => strait_ops::block_on(strait_ops::status::run(args)),
        Command::Check(args) => strait_ops::block_on(strait_ops::check::run(args)),
        Command::Config(args) => strait_ops::block_on(strait_ops::config::run(args)),
        Command::Why(args) => strait_ops::block_on(strait_ops::why::run(args)),
        Command::Lint(args) => strait_ops::block_on(strait_ops::lint::run(args)),
        Command::Tap(args) => strait_ops::block_on(strait_ops::tap::run(args)),
        other => run(other).map(|()| true),
    };
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Local(args) => launch::run(args),
        Command::Proxy(args) => strait_proxy::cli::run_with(*args),
        Command::Control(args) => control::run(args),
        Command::DemoBackend(args) => demo::run(args),
        Command::Import(args) => import::run(args),
        Command::HttpGet(args) => http_get::run(args),
        Command::Status(_)
        | Command::Check(_)
        | Command::Config(_)
        | Command::Why(_)
        | Command::Lint(_)
        | Command::Tap(_) => {
            unreachable!("operator commands are run above")
        }
    }
}
