//! The control plane at scale (issue 17): `strait-scale` fills the fake Kubernetes API server with a cluster
//! ([`population`]), runs the real `strait-control --kubernetes` against it ([`control`]), and connects N
//! simulated node proxies in this process ([`client`], [`fleet`]). Then, in order: the initial sync, the control
//! plane at rest, route changes until every proxy ACKed, one pod added, a rollout, and a kill and restart of
//! the control plane ([`measure`]); the table is [`report`].

pub mod client;
pub mod control;
pub mod fleet;
pub mod measure;
pub mod options;
pub mod population;
pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use control::{Control, Window};
use fleet::Fleet;
use measure::{deliver, Expect};
pub use options::{Options, Size};
use population::Population;
use report::{Report, Rollout};

use crate::fake_kube::FakeKube;

const TRUST_DOMAIN: &str = "cluster.local";

/// Runs the simulation; the report, whose `misses` say what failed.
pub async fn run(options: &Options) -> Result<Report> {
    let size = options.size()?;
    let binary = match &options.control_binary {
        Some(path) => path.clone(),
        None => crate::mesh::workspace_binary("strait-control").context(
            "build the control plane first (cargo build [--release] -p strait-control) or pass --control-binary",
        )?,
    };
    let mut report =
        Report { size: Some(size.clone()), control_binary: binary.display().to_string(), ..Default::default() };
    let dir = tempfile::Builder::new().prefix("strait-scale-").tempdir().context("a temporary directory")?;
    eprintln!("strait-scale: {size:?}; control-plane logs in {}", dir.path().display());

    let fake = FakeKube::start().await?;
    let mut population = Population::create(&fake, &size)?;
    let mut control = Control::new(binary, &fake, dir.path())?;
    let patience = size.give_up.max(Duration::from_secs(30));
    control.start(patience).await?;
    let root = fake
        .get("ConfigMap", population::PROXY_NAMESPACE, "strait-root-cert")
        .and_then(|c| c["data"]["root.pem"].as_str().map(str::to_string))
        .context("the control plane published no root certificate")?;
    let target = Arc::new(client::Target::new(control.listen, TRUST_DOMAIN, &root, Instant::now())?);

    // Initial sync: every proxy connects at once.
    let started = fleet_epoch(&target);
    let fleet = Fleet::start(target, &population, size.protocol);
    report.initial_sync = all_synced(&fleet, |s| s.streams >= 1, size.give_up).await.map(|t| t - started);
    if report.initial_sync.is_none() {
        report.misses.push(format!("not every proxy synced within {:?}", size.give_up));
    }
    fleet.settle(Duration::from_secs(1), size.give_up).await;
    eprintln!("strait-scale: initial sync {:?}", report.initial_sync);

    // At rest.
    let rest = if options.smoke { Duration::from_secs(3) } else { Duration::from_secs(10) };
    let mut window = Window::open(&control).context("the control plane's /proc")?;
    let until = Instant::now() + rest;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        window.sample(&control);
    }
    report.steady = window.close(&control);
    eprintln!("strait-scale: steady {:?}", report.steady);

    // Route changes, one at a time.
    for change in 0..size.changes {
        fleet.settle(Duration::from_millis(300), size.give_up).await;
        let before = fleet.seen();
        let t0 = fleet.now_us();
        population.change_route(&fake, change)?;
        let delivery = deliver(&fleet, &before, t0, Expect::All, size.give_up).await;
        eprintln!("strait-scale: route change {}: {delivery:?}", change + 1);
        if !delivery.complete {
            report.misses.push(format!(
                "route change {}: {} of {} proxies received it within {:?}",
                change + 1,
                delivery.receivers,
                fleet.len(),
                size.give_up
            ));
        }
        report.route_changes.push(delivery);
    }

    // One workload.
    fleet.settle(Duration::from_millis(300), size.give_up).await;
    let before = fleet.seen();
    let t0 = fleet.now_us();
    population.add_pod(&fake)?;
    report.workload_change = deliver(&fleet, &before, t0, Expect::Affected, size.give_up).await;
    eprintln!("strait-scale: one pod added: {:?}", report.workload_change);
    if report.workload_change.receivers == 0 {
        report.misses.push("the added pod reached no proxy, not even its own node's".into());
    }

    report.rollout = rollout(&fleet, &fake, &mut population, &control, &size).await?;
    eprintln!("strait-scale: rollout {:?}", report.rollout);

    match control.unacked().await {
        Ok(unacked) => report.unacked = unacked,
        Err(e) => report.misses.push(format!("no ACK view from the control plane: {e:#}")),
    }
    for node in &report.unacked {
        report.misses.push(format!("not ACKed: {node}"));
    }

    // Kill and restart: until every proxy has ACKed a version on a new stream.
    let before = fleet.seen();
    let killed = fleet.now_us();
    control.kill();
    control.start(patience).await?;
    let reconnected = all_synced_since(&fleet, &before, size.give_up).await;
    report.restart = reconnected.map(|at| Duration::from_micros(at.saturating_sub(killed)));
    if report.restart.is_none() {
        report.misses.push(format!("not every proxy reconnected within {:?} of the restart", size.give_up));
    }
    fleet.settle(Duration::from_millis(500), size.give_up).await;
    match control.unacked().await {
        Ok(unacked) => report.misses.extend(unacked.into_iter().map(|n| format!("not ACKed after the restart: {n}"))),
        Err(e) => report.misses.push(format!("no ACK view from the control plane after the restart: {e:#}")),
    }
    eprintln!("strait-scale: restart {:?}", report.restart);
    control.kill();
    Ok(report)
}

fn fleet_epoch(target: &client::Target) -> Duration {
    Duration::from_micros(target.micros_since_epoch())
}

/// When (since the fleet's epoch) the last proxy satisfied `synced`, once all do; `None` after `give_up`.
async fn all_synced(fleet: &Fleet, synced: impl Fn(&fleet::Seen) -> bool, give_up: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let seen = fleet.seen();
        if seen.iter().all(&synced) {
            return Some(Duration::from_micros(seen.iter().map(|s| s.acked_at_us).max().unwrap_or(0)));
        }
        if start.elapsed() > give_up {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// When (µs since the fleet's epoch) the last proxy ACKed a line on a stream newer than in `before`.
async fn all_synced_since(fleet: &Fleet, before: &[fleet::Seen], give_up: Duration) -> Option<u64> {
    let start = Instant::now();
    loop {
        let seen = fleet.seen();
        if seen.iter().zip(before).all(|(now, then)| now.streams > then.streams) {
            return seen.iter().map(|s| s.acked_at_us).max();
        }
        if start.elapsed() > give_up {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Replaces `size.rollout` pods, spread over the services, evenly over a few seconds, as a Deployment rollout
/// does; measures until the fleet is quiet again.
async fn rollout(
    fleet: &Fleet,
    fake: &FakeKube,
    population: &mut Population,
    control: &Control,
    size: &Size,
) -> Result<Rollout> {
    fleet.settle(Duration::from_millis(500), size.give_up).await;
    let spread = Duration::from_secs(if size.rollout > 50 { 4 } else { 2 });
    let pause = spread / size.rollout.max(1) as u32;
    let step = (size.pods / size.rollout.max(1)).max(1);
    let before = fleet.seen();
    let t0 = fleet.now_us();
    let mut window = Window::open(control).context("the control plane's /proc")?;
    let started = Instant::now();
    for i in 0..size.rollout {
        population.replace_pod(fake, (i * step) % size.pods)?;
        window.sample(control);
        tokio::time::sleep(pause).await;
    }
    let deadline = Instant::now() + size.give_up;
    while !fleet.settle(Duration::from_secs(1), Duration::from_millis(100)).await && Instant::now() < deadline {
        window.sample(control);
    }
    let resources = window.close(control);
    let delivery = measure::delivery(&before, &fleet.seen(), t0);
    // Until the last proxy ACKed its last push of the rollout.
    let took = delivery.last_ack.unwrap_or_else(|| started.elapsed());
    Ok(Rollout { pods: size.rollout, took, delivery, resources })
}
