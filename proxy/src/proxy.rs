//! Wiring: the shared context every connection handler gets, the listeners, and the reconcile loop that
//! follows configuration changes (certificates, per-workload listeners, redirection rules).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use strait_certs::CertStore;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::redirect;
use crate::socket::{bind_dual_stack, bind_listener, Capture, Outgoing};
use crate::state::{State, StateStore};
use crate::tunnel::{Pool, PoolConfig};

/// What every connection handler needs; cheap to share.
pub struct ProxyContext {
    pub state: StateStore,
    pub certs: Arc<CertStore>,
    pub metrics: Arc<Metrics>,
    pub pool: Pool,
    pub outgoing: Outgoing,
    pub capture: Capture,
    pub connect_timeout: Duration,
    pub http: crate::http::HttpContext,
    pub connection_limits: crate::conn_limits::ConnectionLimits,
    /// The configuration version whose certificates, listeners and redirection rules are all in place;
    /// readiness waits for it to catch up with the current version.
    pub synced: Arc<std::sync::Mutex<String>>,
}

/// How traffic reaches the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenMode {
    /// The node's rules capture pod traffic (production, and the netns harness). `redirect` says which rules
    /// the proxy installs itself; `None` means someone else installs them.
    Transparent { redirect: Option<redirect::Mode> },
    /// No interception (the local mesh without root): the proxy binds each local workload's tunnel address and,
    /// when `bind_services` is set, each service address as an outbound listener.
    Explicit { bind_services: bool },
}

#[derive(Clone, Debug)]
pub struct ProxyOptions {
    pub node: String,
    pub mode: ListenMode,
    pub outbound_addr: SocketAddr,
    pub tunnel_addr: SocketAddr,
    pub plaintext_addr: SocketAddr,
    /// SO_MARK on the proxy's own connections; needs CAP_NET_ADMIN.
    pub mark: Option<u32>,
    pub connect_timeout: Duration,
    pub pool: PoolConfig,
}

impl ProxyOptions {
    fn capture(&self) -> Capture {
        match self.mode {
            ListenMode::Transparent { redirect: Some(redirect::Mode::Redirect) } => Capture::OriginalDst,
            _ => Capture::LocalAddress,
        }
    }

    fn transparent_sockets(&self) -> bool {
        matches!(self.mode, ListenMode::Transparent { redirect: Some(redirect::Mode::Tproxy) })
    }
}

pub struct Proxy {
    pub ctx: Arc<ProxyContext>,
}

impl Proxy {
    pub fn new(options: &ProxyOptions, state: StateStore, certs: Arc<CertStore>, metrics: Arc<Metrics>) -> Self {
        let outgoing = Outgoing { mark: options.mark, connect_timeout: options.connect_timeout };
        let pool_config = PoolConfig { outgoing, ..options.pool.clone() };
        let ctx = Arc::new(ProxyContext {
            pool: Pool::new(pool_config, certs.clone(), metrics.clone()),
            state,
            certs,
            metrics,
            outgoing,
            capture: options.capture(),
            connect_timeout: options.connect_timeout,
            http: Default::default(),
            connection_limits: Default::default(),
            synced: Default::default(),
        });
        Proxy { ctx }
    }

    /// Binds the listeners and starts serving; returns once everything is bound, so bind errors surface here.
    pub async fn start(&self, options: &ProxyOptions) -> anyhow::Result<()> {
        let ctx = self.ctx.clone();
        match &options.mode {
            ListenMode::Transparent { redirect } => {
                let transparent = options.transparent_sockets();
                let outbound = bind_dual_stack(options.outbound_addr, transparent)
                    .with_context(|| format!("binding the outbound listener on {}", options.outbound_addr))?;
                let tunnel = bind_dual_stack(options.tunnel_addr, transparent)
                    .with_context(|| format!("binding the tunnel listener on {}", options.tunnel_addr))?;
                let plaintext = bind_dual_stack(options.plaintext_addr, transparent)
                    .with_context(|| format!("binding the inbound plaintext listener on {}", options.plaintext_addr))?;
                info!(outbound = %options.outbound_addr, tunnel = %options.tunnel_addr, plaintext = %options.plaintext_addr, ipv6 = outbound.len() > 1, "listening (transparent)");
                for listener in outbound {
                    tokio::spawn(crate::outbound::serve(listener, ctx.clone()));
                }
                for listener in tunnel {
                    tokio::spawn(crate::inbound::serve_tunnel(listener, ctx.clone()));
                }
                for listener in plaintext {
                    tokio::spawn(crate::inbound::serve_plaintext(listener, ctx.clone()));
                }
                let rules =
                    redirect.map(|mode| RulesReconciler { mode, options: options.clone(), inner: Default::default() });
                tokio::spawn(reconcile(ctx, None, rules));
            }
            ListenMode::Explicit { bind_services } => {
                let listeners = ExplicitListeners { bind_services: *bind_services, bound: HashMap::new() };
                // Bind once now so a port conflict is reported at start-up, not in a log line later.
                let mut listeners = listeners;
                listeners.reconcile(&ctx, &ctx.state.current())?;
                tokio::spawn(reconcile(ctx, Some(listeners), None));
            }
        }
        Ok(())
    }
}

/// Follows configuration changes: fetches certificates for new local workloads, re-binds explicit listeners,
/// re-renders redirection rules.
async fn reconcile(
    ctx: Arc<ProxyContext>,
    mut listeners: Option<ExplicitListeners>,
    mut rules: Option<RulesReconciler>,
) {
    let mut states = ctx.state.subscribe();
    loop {
        let state = states.borrow_and_update().clone();
        prefetch_certificates(&ctx, &state).await;
        let mut in_place = true;
        if let Some(listeners) = listeners.as_mut() {
            if let Err(e) = listeners.reconcile(&ctx, &state) {
                warn!(error = %format!("{e:#}"), "could not bind every listener");
                in_place = false;
            }
        }
        if let Some(mut reconciler) = rules.take() {
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
            *ctx.synced.lock().unwrap_or_else(|e| e.into_inner()) = state.version.clone();
        }
        if states.changed().await.is_err() {
            return;
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

struct RulesReconciler {
    mode: redirect::Mode,
    options: ProxyOptions,
    inner: redirect::Reconciler,
}

impl RulesReconciler {
    /// Applies the rules for `state`; false if they could not be applied.
    fn reconcile(&mut self, state: &State) -> bool {
        let pods: BTreeSet<_> = state.local_workloads().map(|w| w.workload.address).collect();
        let spec = redirect::RedirectSpec {
            mode: self.mode,
            local_pods: pods,
            outbound_port: self.options.outbound_addr.port(),
            inbound_plaintext_port: self.options.plaintext_addr.port(),
            inbound_tunnel_port: self.options.tunnel_addr.port(),
            proxy_mark: self.options.mark.unwrap_or(redirect::DEFAULT_PROXY_MARK),
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
struct ExplicitListeners {
    bind_services: bool,
    bound: HashMap<(SocketAddr, Kind), JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Tunnel,
    Outbound,
}

impl ExplicitListeners {
    fn reconcile(&mut self, ctx: &Arc<ProxyContext>, state: &State) -> anyhow::Result<()> {
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
                        Kind::Tunnel => tokio::spawn(crate::inbound::serve_tunnel(listener, ctx.clone())),
                        Kind::Outbound => tokio::spawn(crate::outbound::serve(listener, ctx.clone())),
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
