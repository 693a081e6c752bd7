//! Wiring: how traffic reaches the proxy (`ListenMode`), the shared context, the listeners of each connection
//! path, and the reconcile loop that follows configuration changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use strait_certs::CertStore;
use tracing::info;

use crate::context::ProxyContext;
use crate::drain::Drain;
use crate::reconcile::{reconcile, ExplicitListeners, RulePorts, RulesReconciler};
use crate::redirect;
use crate::state::StateStore;
use crate::tcp::socket::{bind_dual_stack, Capture, Outgoing};
use crate::telemetry::metrics::Metrics;
use crate::tunnel::{Pool, PoolConfig};

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
    pub mode: ListenMode,
    pub outbound_addr: SocketAddr,
    pub tunnel_addr: SocketAddr,
    pub plaintext_addr: SocketAddr,
    /// SO_MARK on the proxy's own connections; needs CAP_NET_ADMIN.
    pub mark: Option<u32>,
    pub connect_timeout: Duration,
    pub pool: PoolConfig,
    /// Connections one local workload may hold open at once.
    pub max_connections_per_workload: usize,
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
            source_limits: crate::tcp::limits::SourceLimits::new(options.max_connections_per_workload),
            synced: Default::default(),
            drain: Drain::new(),
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
                    tokio::spawn(crate::tcp::outbound::serve(listener, ctx.clone()));
                }
                for listener in tunnel {
                    tokio::spawn(crate::tunnel::server::serve(listener, ctx.clone()));
                }
                for listener in plaintext {
                    tokio::spawn(crate::tcp::plaintext::serve(listener, ctx.clone()));
                }
                let ports = RulePorts {
                    outbound: options.outbound_addr.port(),
                    plaintext: options.plaintext_addr.port(),
                    tunnel: options.tunnel_addr.port(),
                    mark: options.mark,
                };
                if redirect.is_some() {
                    crate::tcp::socket::enable_listener_migration();
                }
                let rules = redirect.map(|mode| RulesReconciler::new(mode, ports));
                tokio::spawn(reconcile(ctx, None, rules));
            }
            ListenMode::Explicit { bind_services } => {
                // Bind once now so a port conflict is reported at start-up, not in a log line later.
                let mut listeners = ExplicitListeners::new(*bind_services);
                listeners.reconcile(&ctx, &ctx.state.current())?;
                tokio::spawn(reconcile(ctx, Some(listeners), None));
            }
        }
        Ok(())
    }
}
