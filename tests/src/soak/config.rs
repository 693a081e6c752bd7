//! Configuration changes and their propagation: every edit of the control plane's files goes through
//! [`Configs::apply`], one at a time, which writes the files and then measures how long it takes until every
//! node proxy reports a new configuration version (asking the proxy process that is current on each node:
//! while a replacement shares the admin port, the old one may answer, and is not asked).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::topology::{config_version, control_plane_acks, Desired, NODES};
use super::Ctx;

/// How long an edit may take to reach every proxy before the soak stops waiting for it.
const GIVE_UP: Duration = Duration::from_secs(15);

pub struct Configs {
    pub desired: Desired,
    /// The version each node's proxy reported last.
    versions: BTreeMap<String, String>,
}

/// One measured edit.
#[derive(Clone, Debug)]
pub struct Propagation {
    pub at: Duration,
    pub what: String,
    /// `None`: not seen everywhere within [`GIVE_UP`].
    pub took: Option<Duration>,
}

impl Configs {
    pub fn new(desired: Desired) -> Configs {
        Configs { desired, versions: BTreeMap::new() }
    }
}

/// Reads every proxy's current version (after start-up, and after anything that changes versions outside
/// [`apply`], such as a control-plane restart).
pub async fn refresh(ctx: &Ctx, configs: &mut Configs) -> Result<()> {
    for node in NODES {
        let version = current_version(ctx, node).await?;
        configs.versions.insert(node.to_string(), version);
    }
    Ok(())
}

/// The version the node's current proxy reports (retrying while another process answers).
async fn current_version(ctx: &Ctx, node: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let want = ctx.proxy_pid(node);
        match config_version(&ctx.cluster, node).await {
            Ok((version, pid)) if pid == want => return Ok(version),
            Ok(_) | Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(_) => anyhow::bail!("{node}: the current proxy does not answer on its admin port"),
            Err(e) => return Err(e),
        }
    }
}

/// Changes the desired state with `change`, writes it, and waits until every proxy holds the configuration of
/// the version it produced: applied and ACKed by the proxies it concerns, and standing unchanged on the others
/// (push protocol 3 sends a change only where it changes a node's configuration, so a proxy's own version
/// moves only then; the control plane knows which).
pub async fn apply(
    ctx: &Ctx,
    configs: &mut Configs,
    what: &str,
    change: impl FnOnce(&mut Desired),
) -> Result<Propagation> {
    let before = published_version(ctx).await?;
    change(&mut configs.desired);
    configs.desired.write(&ctx.cluster, &ctx.paths.config)?;
    let at = ctx.start.elapsed();
    let written = Instant::now();
    let took = wait_for_acks(ctx, before, written).await;
    // The proxies' own versions are the baseline of a later resync (after a control-plane restart).
    refresh(ctx, configs).await?;
    let propagation = Propagation { at, what: what.to_string(), took };
    super::lock(&ctx.propagations).push(propagation.clone());
    Ok(propagation)
}

/// The newest version the control plane published (retrying while a restarted one comes up).
async fn published_version(ctx: &Ctx) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match control_plane_acks(&ctx.cluster).await {
            Ok((version, _)) => return Ok(version),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(e.context("reading the control plane's version before an edit")),
        }
    }
}

/// Waits until the control plane published a version after `before` and every node's ACK stands for it; the
/// time since `since`.
async fn wait_for_acks(ctx: &Ctx, before: u64, since: Instant) -> Option<Duration> {
    loop {
        if since.elapsed() > GIVE_UP {
            return None;
        }
        if let Ok((version, acked)) = control_plane_acks(&ctx.cluster).await {
            if version > before && NODES.iter().all(|node| acked.get(*node).is_some_and(|a| *a >= version)) {
                return Some(since.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every proxy reports a version other than the one recorded; the time since `since`.
pub async fn wait_for_new_versions(ctx: &Ctx, configs: &mut Configs, since: Instant) -> Option<Duration> {
    let mut pending: Vec<&str> = NODES.to_vec();
    while !pending.is_empty() {
        if since.elapsed() > GIVE_UP {
            // Whatever they report now is the baseline for the next edit.
            let _ = refresh(ctx, configs).await;
            return None;
        }
        let mut still = Vec::new();
        for node in pending {
            let want = ctx.proxy_pid(node);
            match config_version(&ctx.cluster, node).await {
                Ok((version, pid)) if pid == want && Some(&version) != configs.versions.get(node) => {
                    configs.versions.insert(node.to_string(), version);
                }
                _ => still.push(node),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Some(since.elapsed())
}
