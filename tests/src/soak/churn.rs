//! The churn, all running at once beside the load: a `reviews` weight change every second, one backend pod
//! restarted every 20 s (endpoint out first), a pod of a new version added and removed every minute, the
//! control plane killed (SIGKILL) and restarted every 2 minutes, and the replaced node's proxy replaced once
//! (the new one started beside the old, SO_REUSEPORT, then SIGTERM to the old, which drains). Certificates
//! rotate on their own: the control plane signs them for `--cert-ttl`, the proxies renew at half-life.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tokio::sync::watch;

use super::config::{apply, wait_for_new_versions};
use super::topology::{self, ADMIN, NEW_VERSION_POD, NODES, REPLACED_NODE, RESTARTED};
use super::{lock, Ctx};

/// Sleeps until `at` (since the start) or until the soak stops; false when stopped.
async fn until(ctx: &Ctx, at: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let wait = at.saturating_sub(ctx.start.elapsed());
    tokio::select! {
        _ = tokio::time::sleep(wait) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

/// The weights cycle through these (v1's share), so every step changes them.
const WEIGHTS: [u32; 8] = [90, 70, 50, 30, 10, 20, 40, 60];

pub async fn weights(ctx: &Ctx, mut stop: watch::Receiver<bool>) -> Result<()> {
    let mut next = ctx.start.elapsed();
    for i in 0.. {
        next += Duration::from_secs(1);
        if !until(ctx, next, &mut stop).await {
            return Ok(());
        }
        let weight = WEIGHTS[i % WEIGHTS.len()];
        let mut configs = ctx.configs.lock().await;
        ctx.load.split.close();
        apply(ctx, &mut configs, &format!("weight v1={weight}"), |d| d.v1_weight = weight).await?;
        ctx.load.split.open(weight);
        drop(configs);
        // A late edit (a control-plane restart held the lock) starts a new second from now.
        next = next.max(ctx.start.elapsed());
    }
    Ok(())
}

pub async fn backend_restarts(
    ctx: &Ctx,
    first: Duration,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    for i in 0.. {
        if !until(ctx, first + every * i as u32, &mut stop).await {
            return Ok(());
        }
        let pod = RESTARTED[i % RESTARTED.len()];
        let mut configs = ctx.configs.lock().await;
        apply(ctx, &mut configs, &format!("endpoint {pod} out"), |d| {
            d.endpoints.remove(pod);
        })
        .await?;
        drop(configs);
        // Requests already sent to it finish (the backends answer at once).
        tokio::time::sleep(Duration::from_secs(1)).await;
        restart_backend(ctx, pod).await?;
        let mut configs = ctx.configs.lock().await;
        apply(ctx, &mut configs, &format!("endpoint {pod} in"), |d| {
            d.endpoints.insert(pod.to_string());
        })
        .await?;
        ctx.event(format!("backend {pod} restarted"));
        *lock(&ctx.counts).entry("backend restarts").or_default() += 1;
    }
    Ok(())
}

async fn restart_backend(ctx: &Ctx, pod: &str) -> Result<()> {
    let n = ctx.next_incarnation(pod);
    if let Some(mut old) = lock(&ctx.backends).remove(pod) {
        old.kill();
    }
    let new = topology::start_backend(&ctx.cluster, &ctx.bins, &ctx.paths, pod, n).await?;
    lock(&ctx.backends).insert(pod.to_string(), new);
    Ok(())
}

/// Every minute from `first`: the new-version pod joins (workload, then endpoint, as a pod is scheduled and
/// then becomes ready) and leaves half a minute later (endpoint out, then the pod).
pub async fn new_version(ctx: &Ctx, first: Duration, mut stop: watch::Receiver<bool>) -> Result<()> {
    let pod = NEW_VERSION_POD;
    for i in 0u32.. {
        let at = first + Duration::from_secs(60) * i;
        if !until(ctx, at, &mut stop).await {
            return Ok(());
        }
        let n = ctx.next_incarnation(pod);
        let backend = topology::start_backend(&ctx.cluster, &ctx.bins, &ctx.paths, pod, n).await?;
        lock(&ctx.backends).insert(pod.to_string(), backend);
        let mut configs = ctx.configs.lock().await;
        apply(ctx, &mut configs, &format!("pod {pod} added"), |d| d.new_version_present = true).await?;
        apply(ctx, &mut configs, &format!("endpoint {pod} in"), |d| {
            d.endpoints.insert(pod.to_string());
        })
        .await?;
        drop(configs);
        ctx.event(format!("new-version pod {pod} in"));
        if !until(ctx, at + Duration::from_secs(30), &mut stop).await {
            return Ok(());
        }
        let mut configs = ctx.configs.lock().await;
        apply(ctx, &mut configs, &format!("endpoint {pod} out"), |d| {
            d.endpoints.remove(pod);
        })
        .await?;
        drop(configs);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut configs = ctx.configs.lock().await;
        apply(ctx, &mut configs, &format!("pod {pod} removed"), |d| d.new_version_present = false).await?;
        drop(configs);
        if let Some(mut old) = lock(&ctx.backends).remove(pod) {
            old.kill();
        }
        ctx.event(format!("new-version pod {pod} out"));
        *lock(&ctx.counts).entry("new-version pod cycles").or_default() += 1;
    }
    Ok(())
}

/// Every 2 minutes from `first`: SIGKILL the control plane, start it again a second later, and measure how
/// long until every proxy has taken a configuration from the new one. No edit happens meanwhile (they wait for
/// the configuration lock): an edit nobody can serve is not a propagation delay of the mesh.
pub async fn control_restarts(ctx: &Ctx, first: Duration, mut stop: watch::Receiver<bool>) -> Result<()> {
    for i in 0u32.. {
        if !until(ctx, first + Duration::from_secs(120) * i, &mut stop).await {
            return Ok(());
        }
        let mut configs = ctx.configs.lock().await;
        {
            let mut control = lock(&ctx.control);
            if let Some(mut old) = control.take() {
                ctx.sample_one("control", old.pid());
                old.kill();
            }
        }
        ctx.event("control plane killed (SIGKILL)".into());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let n = ctx.next_incarnation("control");
        let new = topology::start_control(&ctx.cluster, &ctx.bins, &ctx.paths, &ctx.opts.cert_ttl, n)?;
        *lock(&ctx.control) = Some(new);
        let started = Instant::now();
        let resynced = wait_for_new_versions(ctx, &mut configs, started).await;
        drop(configs);
        ctx.event(format!("control plane restarted; proxies resynced after {resynced:?}"));
        lock(&ctx.control_resyncs).push(resynced);
    }
    Ok(())
}

/// Once, at `at`: replaces the proxy of [`REPLACED_NODE`] as a rolling update with surge does.
pub async fn replace_proxy(ctx: &Ctx, at: Duration, mut stop: watch::Receiver<bool>) -> Result<()> {
    if !until(ctx, at, &mut stop).await {
        return Ok(());
    }
    // Not during a control-plane restart: the new proxy needs its configuration and certificates.
    let configs = ctx.configs.lock().await;
    let n = ctx.next_incarnation(REPLACED_NODE);
    let mut new = topology::start_proxy(&ctx.cluster, &ctx.bins, &ctx.paths, REPLACED_NODE, ctx.opts.drain_grace, n)?;
    let pid = new.pid();
    let netns = ctx.cluster.node(REPLACED_NODE).netns_name().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(reply) = topology::admin_get(&netns, ADMIN, "/ready").await {
            if reply.status == 200 && reply.pid == Some(pid) {
                break;
            }
        }
        if let Some(status) = new.exited() {
            bail!("the replacement proxy exited during start-up ({status}):\n{}", new.tail(30));
        }
        if Instant::now() > deadline {
            bail!("the replacement proxy is not ready after 30 s:\n{}", new.tail(30));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut old = lock(&ctx.proxies).insert(REPLACED_NODE.to_string(), new).context("no proxy to replace")?;
    drop(configs);
    ctx.sample_one(&format!("proxy {REPLACED_NODE} (old)"), old.pid());
    old.signal(libc::SIGTERM);
    *lock(&ctx.replaced_at) = Some(ctx.start.elapsed());
    ctx.event(format!("proxy {REPLACED_NODE} replaced: new pid {pid} ready, SIGTERM to old pid {}", old.pid()));
    // Sample the old one while it drains (its CPU counts), until it exits.
    let grace = ctx.opts.drain_grace;
    let signalled = Instant::now();
    let exit = loop {
        ctx.sample_one(&format!("proxy {REPLACED_NODE} (old)"), old.pid());
        if let Some(status) = old.exited() {
            break Some((status, signalled.elapsed()));
        }
        if signalled.elapsed() > grace + Duration::from_secs(15) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = match exit {
        Some((status, took)) => format!("the old proxy exited ({status}) {took:.1?} after SIGTERM (grace {grace:?})"),
        None => {
            old.kill();
            "the old proxy did not exit within grace + 15 s; killed".to_string()
        }
    };
    ctx.event(text.clone());
    *lock(&ctx.replacement) = Some(text);
    Ok(())
}

/// Every 2 s: each current proxy's certificates; a new serial for an identity is a rotation.
pub async fn watch_certificates(ctx: &Ctx, mut stop: watch::Receiver<bool>) {
    let mut serials: BTreeMap<(u32, String), String> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
        for node in NODES {
            let want = ctx.proxy_pid(node);
            let Ok(reply) = topology::admin_get(ctx.cluster.node(node).netns_name(), ADMIN, "/certs").await else {
                continue;
            };
            if reply.pid != want {
                continue;
            }
            let Ok(serde_json::Value::Array(certs)) = serde_json::from_str::<serde_json::Value>(&reply.body) else {
                continue;
            };
            for cert in certs {
                let identity = cert["identity"].as_str().unwrap_or_default().to_string();
                let serial = cert["serial"].to_string();
                if cert["expired"].as_bool() == Some(true) {
                    *lock(&ctx.counts).entry("expired certificates seen in use").or_default() += 1;
                }
                let key = (reply.pid.unwrap_or_default(), identity);
                match serials.insert(key, serial.clone()) {
                    Some(old) if old != serial => *lock(&ctx.counts).entry("certificate rotations").or_default() += 1,
                    _ => {}
                }
            }
        }
    }
}
