//! Follows configuration changes: fetches certificates for new local workloads, re-binds explicit listeners and
//! re-renders redirection rules; readiness waits until all of them are in place for the current version.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use strait_certs::Identity;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::context::ProxyContext;
use crate::redirect;
use crate::state::State;
use crate::tcp::socket::bind_listener;

/// Follows configuration changes: fetches certificates for new local workloads, re-binds explicit listeners,
/// re-renders redirection rules, and starts the transparent listeners once the first configuration is in place.
pub(crate) async fn reconcile(
    ctx: Arc<ProxyContext>,
    mut listeners: Option<ExplicitListeners>,
    mut pending: Option<crate::listeners::PendingListeners>,
    mut rules: Option<RulesReconciler>,
) {
    let mut states = ctx.state.subscribe();
    let mut listening_failed = false;
    loop {
        let state = states.borrow_and_update().clone();
        // First: connections to TCP services read what this compiles.
        ctx.tcp_backends.update(&state);
        prefetch_certificates(&ctx, &state).await;
        forget_departed(&ctx, &state);
        let mut in_place = true;
        if let Some(listeners) = listeners.as_mut() {
            if let Err(e) = listeners.reconcile(&ctx, &state) {
                warn!(error = %format!("{e:#}"), "could not bind every listener");
                in_place = false;
            }
        }
        if !state.is_loaded() {
            // Never render the rules from an empty view: that would stop capturing pods that are still
            // meshed and let their traffic out in plaintext. The rules of the previous run stay until a
            // configuration (from the control plane, a file, or the last good one on disk) is in place.
            in_place = false;
        } else if let Some(mut reconciler) = rules.take() {
            // nft and ip are child processes: keep them off the runtime's worker threads.
            let current = state.clone();
            let done = tokio::task::spawn_blocking(move || {
                let ok = reconciler.reconcile(&current);
                (reconciler, ok)
            })
            .await
            .ok();
            in_place &= done.as_ref().is_some_and(|(_, ok)| *ok);
            rules = done.map(|(reconciler, _)| reconciler);
        }
        if in_place {
            if let Some(pending) = pending.take() {
                match pending.listen(&ctx) {
                    Ok(()) => info!(version = %state.version, "configuration in place: listening"),
                    Err(e) => {
                        // Never ready, so a rolling update keeps the proxy this one was to replace.
                        tracing::error!(error = %e, "could not listen on the transparent ports; not ready");
                        listening_failed = true;
                    }
                }
            }
        }
        if in_place && !listening_failed {
            *ctx.synced.lock().unwrap_or_else(|e| e.into_inner()) = state.version.clone();
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            // A draining proxy leaves the node's rules to its replacement, which may already follow a newer
            // configuration: two proxies re-rendering the one table from different versions would flap it.
            () = ctx.drain.started() => {
                info!("draining: no longer following configuration changes");
                return;
            }
        }
    }
}

async fn prefetch_certificates(ctx: &ProxyContext, state: &State) {
    for workload in state.local_workloads() {
        if let Some(identity) = &workload.identity {
            if let Err(e) = ctx.certs.get_or_fetch(identity).await {
                warn!(%identity, error = %e, "no certificate yet for a local workload");
            }
        }
    }
}

/// Forgets what was kept for workloads and services that left: certificates (and their renewal), L7 clients
/// with their pooled connections, per-service balancer, outlier, budget and connection-limit state. Without
/// this a node that sees many pods come and go would renew certificates for pods long gone.
fn forget_departed(ctx: &ProxyContext, state: &State) {
    let local: HashSet<&Identity> = state.local_workloads().filter_map(|w| w.identity.as_ref()).collect();
    for cert in ctx.certs.certs() {
        if !local.contains(cert.identity()) {
            info!(identity = %cert.identity(), "forgetting the certificate of a workload that left this node");
            ctx.certs.forget(cert.identity());
        }
    }
    ctx.http.clients.retain_sources(|source| state.local_workload(source.address).is_some_and(|w| source.is_of(w)));
    ctx.http.backends.retain(|service| state.service_named(service).is_some());
    ctx.http.clients.connection_slots().retain(|service| state.service_named(service).is_some());
    ctx.connection_limits.retain(|namespace, name| state.service_by_name(namespace, name).is_some());
    ctx.source_limits.retain(|ip| state.local_workload(ip).is_some());
}

/// The node's redirection rules, re-rendered from the set of local pods.
pub(crate) struct RulesReconciler {
    mode: redirect::Mode,
    ports: RulePorts,
    inner: redirect::Reconciler,
}

/// The proxy's own ports and mark, which the rules point at and skip.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RulePorts {
    pub(crate) outbound: u16,
    pub(crate) plaintext: u16,
    pub(crate) tunnel: u16,
    pub(crate) mark: Option<u32>,
}

impl RulesReconciler {
    pub(crate) fn new(mode: redirect::Mode, ports: RulePorts) -> Self {
        RulesReconciler { mode, ports, inner: Default::default() }
    }

    /// Applies the rules for `state`; false if they could not be applied.
    fn reconcile(&mut self, state: &State) -> bool {
        let pods: BTreeSet<_> = state.local_workloads().map(|w| w.workload.address).collect();
        let spec = redirect::RedirectSpec {
            mode: self.mode,
            local_pods: pods,
            outbound_port: self.ports.outbound,
            inbound_plaintext_port: self.ports.plaintext,
            inbound_tunnel_port: self.ports.tunnel,
            proxy_mark: self.ports.mark.unwrap_or(redirect::DEFAULT_PROXY_MARK),
            ..redirect::RedirectSpec::default()
        };
        match self.inner.reconcile(&spec) {
            Ok(changed) => {
                if changed {
                    info!(pods = spec.local_pods.len(), "redirection rules updated");
                }
                true
            }
            Err(e) => {
                warn!(error = %e, "could not update redirection rules; the previous rules stay in place");
                false
            }
        }
    }
}

/// The listeners of a proxy that cannot intercept: one tunnel listener per local workload, one outbound
/// listener per service address.
pub(crate) struct ExplicitListeners {
    bind_services: bool,
    bound: HashMap<(SocketAddr, Kind), JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Tunnel,
    Outbound,
}

impl ExplicitListeners {
    pub(crate) fn new(bind_services: bool) -> Self {
        ExplicitListeners { bind_services, bound: HashMap::new() }
    }

    pub(crate) fn reconcile(&mut self, ctx: &Arc<ProxyContext>, state: &State) -> anyhow::Result<()> {
        let mut wanted: Vec<(SocketAddr, Kind)> = state
            .local_workloads()
            .map(|w| (SocketAddr::new(w.workload.address, w.workload.tunnel_port), Kind::Tunnel))
            .collect();
        if self.bind_services {
            wanted.extend(state.services().map(|(addr, _)| (*addr, Kind::Outbound)));
        }
        self.bound.retain(|key, task| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
            }
            keep
        });
        let mut errors = Vec::new();
        for key in wanted {
            if self.bound.contains_key(&key) {
                continue;
            }
            let (addr, kind) = key;
            match bind_listener(addr, false) {
                Ok(listener) => {
                    let task = match kind {
                        Kind::Tunnel => tokio::spawn(crate::tunnel::server::serve(listener, ctx.clone())),
                        Kind::Outbound => tokio::spawn(crate::tcp::outbound::serve(listener, ctx.clone())),
                    };
                    info!(%addr, ?kind, "listening");
                    self.bound.insert(key, task);
                }
                Err(e) => errors.push(format!("{addr} ({kind:?}): {e}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("could not bind {}", errors.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use strait_api::{MeshConfig, Workload};
    use strait_certs::{CertStore, MeshCa, TrustBundle};

    use super::*;
    use crate::serve::{ListenMode, Proxy, ProxyOptions};
    use crate::state::StateStore;
    use crate::telemetry::metrics::Metrics;

    fn config(workloads: &[(&str, &str)]) -> MeshConfig {
        let workloads = workloads
            .iter()
            .map(|(name, ip)| Workload {
                name: (*name).into(),
                namespace: "shop".into(),
                service_account: (*name).into(),
                node: "node-a".into(),
                address: ip.parse().expect("test address"),
                labels: BTreeMap::new(),
                meshed: true,
                tunnel_port: strait_api::DEFAULT_TUNNEL_PORT,
            })
            .collect();
        MeshConfig { workloads, ..MeshConfig::default() }
    }

    /// A node that sees pods come and go must not keep (and renew) certificates for pods long gone.
    #[tokio::test]
    async fn certificates_of_workloads_that_left_are_forgotten() {
        let ca = MeshCa::generate("cluster.local").expect("a CA");
        let certs = Arc::new(CertStore::new(Arc::new(ca.clone()), TrustBundle::from_ca(&ca)));
        let state = StateStore::new("node-a");
        let options = ProxyOptions {
            mode: ListenMode::Explicit { bind_services: false },
            outbound_addr: ([127, 0, 0, 1], 0).into(),
            tunnel_addr: ([127, 0, 0, 1], 0).into(),
            plaintext_addr: ([127, 0, 0, 1], 0).into(),
            mark: None,
            connect_timeout: std::time::Duration::from_secs(1),
            pool: Default::default(),
            max_connections_per_workload: 16,
        };
        let metrics = Arc::new(Metrics::new());
        let discovery = Arc::new(crate::discovery::Discovery::new(Default::default(), metrics.clone()));
        let proxy = Proxy::new(&options, state.clone(), certs.clone(), metrics, discovery);
        let both = state.apply(config(&[("stays", "10.1.0.2"), ("leaves", "10.1.0.3")]), "1".into()).expect("valid");
        prefetch_certificates(&proxy.ctx, &both).await;
        assert_eq!(certs.certs().len(), 2);

        let one = state.apply(config(&[("stays", "10.1.0.2")]), "2".into()).expect("valid");
        forget_departed(&proxy.ctx, &one);
        let kept: Vec<String> = certs.certs().iter().map(|c| c.identity().to_string()).collect();
        assert_eq!(kept, ["spiffe://cluster.local/ns/shop/sa/stays"]);
    }
}
