//! The simulation's flags, and the size they resolve to (full size by default, `--smoke` small).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Result};

#[derive(clap::Parser, Clone, Debug)]
#[command(
    name = "strait-scale",
    about = "The control plane at scale: the fake Kubernetes API server populated with services, pods, routes and \
             policies, the real strait-control --kubernetes, and N simulated node proxies (real TLS, one HTTP/2 \
             stream each, ACKing every version) in this process. Prints a table; exits 1 when a change is not \
             ACKed by every proxy that should get it"
)]
pub struct Options {
    /// Small size (20 nodes, 50 services, 100 pods, 10 routes, 5 changes, a 20-pod rollout): under a minute.
    #[arg(long)]
    pub smoke: bool,
    /// Simulated node proxies, one connection each (default 500; smoke 20).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Services (default 1000; smoke 50), 50 per namespace.
    #[arg(long)]
    pub services: Option<usize>,
    /// Pods (default 2000; smoke 100), spread evenly over the services and round-robin over the nodes.
    #[arg(long)]
    pub pods: Option<usize>,
    /// TrafficRoutes, each with its DestinationPolicy (default 200; smoke 10).
    #[arg(long)]
    pub routes: Option<usize>,
    /// Route changes measured (default 20; smoke 5).
    #[arg(long)]
    pub changes: Option<usize>,
    /// Pods replaced (deleted, created with a new IP) in the rollout (default 200; smoke 20).
    #[arg(long)]
    pub rollout: Option<usize>,
    /// How long a change may take to reach every proxy before it counts as missed (default 60s; smoke 20s).
    #[arg(long, value_parser = parse_duration)]
    pub give_up: Option<Duration>,
    /// The strait-control binary (default: the one beside this program; build it first, e.g.
    /// `cargo build --release -p strait-control`).
    #[arg(long)]
    pub control_binary: Option<PathBuf>,
    /// The push protocol the simulated proxies speak: 3 (on-demand discovery: each subscribes to 8 services
    /// spread over the mesh plus the service of one route, as a node whose pods call a few services) or 2
    /// (every endpoint and workload to every node).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=3))]
    pub protocol: u32,
    /// Also write the table (markdown) to this file, e.g. tests/bench/RESULTS-control-plane.md.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    strait_api::parse_duration(text).map_err(|e| e.to_string())
}

/// Upper bounds: every simulated proxy is a connection and a task here and a stream in the control plane.
const MAX_NODES: usize = 5_000;
const MAX_SERVICES: usize = 20_000;
const MAX_PODS: usize = 60_000;
const MAX_CHANGES: usize = 1_000;

/// What to simulate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Size {
    pub nodes: usize,
    pub services: usize,
    pub pods: usize,
    pub routes: usize,
    pub changes: usize,
    pub rollout: usize,
    pub give_up: Duration,
    /// The push protocol of the simulated proxies (2 or 3).
    pub protocol: u32,
}

impl Options {
    /// The size asked for, every count bounded and consistent, or an error naming the flag.
    pub fn size(&self) -> Result<Size> {
        let (nodes, services, pods, routes, changes, rollout, give_up) =
            if self.smoke { (20, 50, 100, 10, 5, 20, 20) } else { (500, 1000, 2000, 200, 20, 200, 60) };
        let size = Size {
            nodes: self.nodes.unwrap_or(nodes),
            services: self.services.unwrap_or(services),
            pods: self.pods.unwrap_or(pods),
            routes: self.routes.unwrap_or(routes),
            changes: self.changes.unwrap_or(changes),
            rollout: self.rollout.unwrap_or(rollout),
            give_up: self.give_up.unwrap_or(Duration::from_secs(give_up)),
            protocol: self.protocol,
        };
        ensure!((1..=MAX_NODES).contains(&size.nodes), "--nodes: between 1 and {MAX_NODES}");
        ensure!((1..=MAX_SERVICES).contains(&size.services), "--services: between 1 and {MAX_SERVICES}");
        ensure!(
            (size.services..=MAX_PODS).contains(&size.pods),
            "--pods: at least one per service (--services {}) and at most {MAX_PODS}",
            size.services
        );
        ensure!(
            (1..=size.services).contains(&size.routes),
            "--routes: between 1 and the number of services ({})",
            size.services
        );
        ensure!((1..=MAX_CHANGES).contains(&size.changes), "--changes: between 1 and {MAX_CHANGES}");
        ensure!(size.rollout <= size.pods, "--rollout: at most the number of pods ({})", size.pods);
        ensure!(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&size.give_up),
            "--give-up: between 1s and 1h"
        );
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<Size> {
        Options::try_parse_from(std::iter::once("strait-scale").chain(args.iter().copied()))?.size()
    }

    #[test]
    fn full_size_by_default_small_with_smoke_and_every_flag_bounded() {
        let full = parse(&[]).expect("defaults");
        assert_eq!((full.nodes, full.services, full.pods, full.routes), (500, 1000, 2000, 200));
        let smoke = parse(&["--smoke"]).expect("smoke");
        assert_eq!((smoke.nodes, smoke.services, smoke.pods, smoke.routes), (20, 50, 100, 10));
        assert_eq!(parse(&["--smoke", "--nodes", "3"]).expect("override").nodes, 3);
        for (bad, flag) in [
            (&["--nodes", "0"][..], "--nodes"),
            (&["--nodes", "5001"], "--nodes"),
            (&["--services", "10", "--pods", "5", "--routes", "1"], "--pods"),
            (&["--routes", "1001"], "--routes"),
            (&["--changes", "0"], "--changes"),
            (&["--rollout", "2001"], "--rollout"),
            (&["--give-up", "0s"], "--give-up"),
            (&["--protocol", "1"], "error: invalid value '1' for '--protocol"),
        ] {
            let error = parse(bad).expect_err(flag).to_string();
            assert!(error.starts_with(flag), "{bad:?}: {error}");
        }
    }
}
