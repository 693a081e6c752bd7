//! A service's DestinationPolicy, compiled when the configuration arrives (load balancer, outlier detection,
//! connection-pool limits), so the data path never meets a setting it cannot apply.

use strait_api::{DestinationPolicySpec, MeshConfig, Named, Service};

use super::resilience::{BudgetConfig, OutlierConfig, PoolLimits, ServiceRef, Strategy};

/// The DestinationPolicy whose host is `service`, if any; only a policy of the service's own namespace counts
/// (one in another namespace could otherwise redirect, or starve, traffic it does not own).
pub fn policy_for<'a>(config: &'a MeshConfig, service: &Service) -> Option<&'a Named<DestinationPolicySpec>> {
    let wanted = ServiceRef::new(&service.name, &service.namespace);
    config
        .destination_policies
        .iter()
        .filter(|p| p.namespace == service.namespace)
        .find(|p| ServiceRef::parse(&p.spec.host, &p.namespace).as_ref() == Some(&wanted))
}

/// One service's compiled DestinationPolicy settings.
#[derive(Debug)]
pub struct DestinationSettings {
    pub policy: Option<DestinationPolicySpec>,
    pub strategy: Strategy,
    pub outlier: OutlierConfig,
    pub limits: PoolLimits,
    /// `connectionPool.tcp.maxConnections`: connections from this node to the service, on TCP ports (counted
    /// per client connection) and HTTP ports (upstream connections, see `upstream::ConnectionSlots`; an HTTP/1.1
    /// request in flight holds one, so it also caps those requests).
    pub max_connections: Option<u32>,
    /// `connectionPool.http.idleTimeout` and `maxRequestsPerConnection`, for the pooled upstream connections.
    pub reuse: ConnectionReuse,
    /// `connectionPool.http.useClientProtocol`: the upstream HTTP version follows the client, not the port.
    pub use_client_protocol: bool,
    /// `retryBudget`, or the default budget.
    pub budget: BudgetConfig,
    /// `connectionPool.tcp.connectTimeout`: how long opening a connection to an endpoint may take (through the
    /// tunnel: until the far side has connected to the pod), instead of the proxy's default.
    pub connect_timeout: Option<std::time::Duration>,
}

#[derive(Debug, thiserror::Error)]
#[error("destinationPolicy {policy}: {message}")]
pub struct SettingsError {
    /// `namespace/name` of the DestinationPolicy.
    pub policy: String,
    pub message: String,
}

impl DestinationSettings {
    pub fn compile(named: Option<&Named<DestinationPolicySpec>>) -> Result<Self, SettingsError> {
        let Some(named) = named else { return Ok(DestinationSettings::default()) };
        let error = |message: String| SettingsError { policy: format!("{}/{}", named.namespace, named.name), message };
        let spec = &named.spec;
        let strategy = Strategy::from_spec(spec.load_balancer.as_ref()).map_err(error)?;
        // As in Istio, outlier detection is off unless the DestinationPolicy asks for it.
        let outlier = match spec.outlier_detection.as_ref() {
            Some(outlier) => OutlierConfig::from_spec(outlier).map_err(|e| error(format!("outlierDetection: {e}")))?,
            None => OutlierConfig::disabled(),
        };
        let pool = spec.connection_pool.as_ref();
        let connect_timeout = pool
            .and_then(|c| c.tcp.as_ref())
            .and_then(|t| t.connect_timeout.as_deref())
            .map(strait_api::parse_duration)
            .transpose()
            .map_err(|e| error(format!("connectionPool.tcp.connectTimeout: {e}")))?
            .filter(|d| !d.is_zero());
        let http = pool.and_then(|c| c.http.as_ref());
        // As Istio, zero means "not set" for both.
        let idle_timeout = http
            .and_then(|h| h.idle_timeout.as_deref())
            .map(strait_api::parse_duration)
            .transpose()
            .map_err(|e| error(format!("connectionPool.http.idleTimeout: {e}")))?
            .filter(|d| !d.is_zero());
        let reuse = ConnectionReuse {
            idle_timeout,
            max_requests_per_connection: http.and_then(|h| h.max_requests_per_connection).filter(|m| *m > 0),
        };
        Ok(DestinationSettings {
            policy: Some(spec.clone()),
            strategy,
            outlier,
            limits: PoolLimits::from_spec(pool.and_then(|c| c.http.as_ref())),
            max_connections: pool.and_then(|c| c.tcp.as_ref()).and_then(|t| t.max_connections).filter(|m| *m > 0),
            reuse,
            use_client_protocol: pool
                .and_then(|c| c.http.as_ref())
                .and_then(|h| h.use_client_protocol)
                .unwrap_or(false),
            budget: BudgetConfig::from_spec(spec.retry_budget.as_ref()),
            connect_timeout,
        })
    }
}

impl Default for DestinationSettings {
    fn default() -> Self {
        DestinationSettings {
            policy: None,
            strategy: Strategy::PeakEwma,
            outlier: OutlierConfig::disabled(),
            limits: PoolLimits::from_spec(None),
            max_connections: None,
            reuse: ConnectionReuse::default(),
            use_client_protocol: false,
            budget: BudgetConfig::default(),
            connect_timeout: None,
        }
    }
}

/// Idle upstream HTTP connections close after this long unless the destination sets `http.idleTimeout`.
pub const POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The destination's `connectionPool` settings for the pooled connections that carry its requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionReuse {
    /// `http.idleTimeout`: a pooled connection idle this long is closed (hyper checks at that interval, so
    /// it closes between one and two timeouts after its last request). `None`: [`POOL_IDLE`].
    pub idle_timeout: Option<std::time::Duration>,
    /// `http.maxRequestsPerConnection`: a connection is retired after carrying this many requests.
    pub max_requests_per_connection: Option<u32>,
}

impl ConnectionReuse {
    /// The pool's idle timeout.
    pub fn idle(&self) -> std::time::Duration {
        self.idle_timeout.unwrap_or(POOL_IDLE)
    }
}
