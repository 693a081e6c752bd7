//! Wiring: how traffic reaches the proxy (`ListenMode`), the shared context, the listeners of each connection
//! path, and the reconcile loop that follows configuration changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use strait_certs::CertStore;
use tracing::info;

use crate::context::ProxyContext;
use crate::discovery::Discovery;
use crate::drain::Drain;
use crate::listeners::{Path, PendingListeners};
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
    pub fn new(
        options: &ProxyOptions,
        state: StateStore,
        certs: Arc<CertStore>,
        metrics: Arc<Metrics>,
        discovery: Arc<Discovery>,
    ) -> Self {
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
            tcp_backends: Default::default(),
            source_limits: crate::tcp::limits::SourceLimits::new(options.max_connections_per_workload),
            synced: Default::default(),
            drain: Drain::new(),
            discovery,
        });
        Proxy { ctx }
    }

    /// Binds the listeners and starts serving; returns once everything is bound, so bind errors surface here.
    pub async fn start(&self, options: &ProxyOptions) -> anyhow::Result<()> {
        let ctx = self.ctx.clone();
        match &options.mode {
            ListenMode::Transparent { redirect } => {
                let transparent = options.transparent_sockets();
                // Bound now, so that a port conflict is reported at start-up; listening only once the
                // configuration is in place (see `PendingListeners`).
                let bind = |addr: SocketAddr, what: &str| {
                    bind_dual_stack(addr, transparent).with_context(|| format!("binding the {what} listener on {addr}"))
                };
                let mut pending = PendingListeners::default();
                pending.add(Path::Outbound, bind(options.outbound_addr, "outbound")?);
                pending.add(Path::Tunnel, bind(options.tunnel_addr, "tunnel")?);
                pending.add(Path::Plaintext, bind(options.plaintext_addr, "inbound plaintext")?);
                info!(outbound = %options.outbound_addr, tunnel = %options.tunnel_addr, plaintext = %options.plaintext_addr, "bound (transparent); listening once the configuration is in place");
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
                tokio::spawn(reconcile(ctx, None, Some(pending), rules));
            }
            ListenMode::Explicit { bind_services } => {
                // Bind once now so a port conflict is reported at start-up, not in a log line later.
                let mut listeners = ExplicitListeners::new(*bind_services);
                listeners.reconcile(&ctx, &ctx.state.current())?;
                tokio::spawn(reconcile(ctx, Some(listeners), None, None));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use strait_api::MeshConfig;
    use strait_certs::{MeshCa, TrustBundle};
    use tokio::net::TcpStream;

    use super::*;

    fn free_address() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("an ephemeral port");
        listener.local_addr().expect("its address")
    }

    /// A proxy started without a configuration (a replacement whose control plane has not answered yet) binds
    /// its ports but takes no connection: the kernel would otherwise hand it a share of the node's new
    /// connections, which it could only refuse. It listens once the configuration is in place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transparent_listeners_listen_only_once_a_configuration_is_in_place() {
        let ca = MeshCa::generate("cluster.local").expect("a CA");
        let certs = Arc::new(CertStore::new(Arc::new(ca.clone()), TrustBundle::from_ca(&ca)));
        let state = StateStore::new("node-a");
        let options = ProxyOptions {
            mode: ListenMode::Transparent { redirect: None },
            outbound_addr: free_address(),
            tunnel_addr: free_address(),
            plaintext_addr: free_address(),
            mark: None,
            connect_timeout: Duration::from_secs(1),
            pool: Default::default(),
            max_connections_per_workload: 16,
        };
        let addresses = [options.outbound_addr, options.tunnel_addr, options.plaintext_addr];
        let metrics = Arc::new(Metrics::new());
        let discovery = Arc::new(Discovery::new(Default::default(), metrics.clone()));
        let proxy = Proxy::new(&options, state.clone(), certs, metrics, discovery);
        proxy.start(&options).await.expect("the ports are bound");
        // Time for the reconcile loop to run on the empty view (it must not listen).
        tokio::time::sleep(Duration::from_millis(300)).await;
        for addr in addresses {
            assert!(TcpStream::connect(addr).await.is_err(), "{addr} accepts connections before any configuration");
        }

        state.apply(MeshConfig::default(), "1".into()).expect("a valid configuration");
        for addr in addresses {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(addr).await.is_err() {
                assert!(tokio::time::Instant::now() < deadline, "{addr} not listening with the configuration in place");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(*proxy.ctx.synced.lock().expect("synced"), "1", "in place only once listening");
    }
}
