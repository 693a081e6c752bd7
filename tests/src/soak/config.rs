//! Configuration changes and their propagation: every edit of the control plane's files goes through
//! [`Configs::apply`], one at a time, which writes the files and then measures how long it takes until every
//! node proxy reports a new configuration version (asking the proxy process that is current on each node:
//! while a replacement shares the admin port, the old one may answer, and is not asked).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::topology::{config_version, Desired, NODES};
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

/// Changes the desired state with `change`, writes it, and waits until every proxy has a new version.
pub async fn apply(
    ctx: &Ctx,
    configs: &mut Configs,
    what: &str,
    change: impl FnOnce(&mut Desired),
) -> Result<Propagation> {
    change(&mut configs.desired);
    configs.desired.write(&ctx.cluster, &ctx.paths.config)?;
    let at = ctx.start.elapsed();
    let written = Instant::now();
    let took = wait_for_new_versions(ctx, configs, written).await;
    let propagation = Propagation { at, what: what.to_string(), took };
    super::lock(&ctx.propagations).push(propagation.clone());
    Ok(propagation)
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
