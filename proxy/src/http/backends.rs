//! Per-destination state that outlives configuration versions: the balancer's load estimates, outlier
//! detection, the retry budget and the connection-pool limiter. A new configuration rebuilds what it changed
//! and keeps the rest, so an ejected endpoint stays ejected across an unrelated route edit.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus::IntGauge;
use strait_api::{DestinationPolicySpec, Protocol, Service, ServicePort};
use tokio::time::Instant;

use super::resilience::{Balancer, HashOn, Limiter, OutlierDetector, RetryBudget, ServiceRef};
use super::route::RouteDestination;
use super::upstream::Version;
use crate::state::{ServiceTarget, State};
use crate::telemetry::metrics::{set_count, Metrics};

/// One destination service port: where requests for it go, and what is remembered about its endpoints.
pub struct Backend {
    name: String,
    service: Arc<Service>,
    target_port: u16,
    /// The HTTP version to speak to the endpoints, given the client's (see [`Version::upstream`]).
    protocol: Protocol,
    use_client_protocol: bool,
    policy: Option<DestinationPolicySpec>,
    /// The ready endpoints, and those of each subset the DestinationPolicy names (by its labels), worked out
    /// when the configuration arrived: a request only reads them.
    ready: Vec<SocketAddr>,
    ready_in_subset: HashMap<String, Vec<SocketAddr>>,
    hash_on: Option<HashOn>,
    pub balancer: Arc<Balancer>,
    pub outlier: Arc<OutlierDetector>,
    outlier_interval: std::time::Duration,
    last_sweep: Mutex<Instant>,
    pub limiter: Arc<Limiter>,
    pub budget: Arc<RetryBudget>,
    /// `connectionPool.http.idleTimeout`, `maxRequestsPerConnection`.
    pub reuse: super::upstream::ConnectionReuse,
    ejections_reported: AtomicU64,
    /// `strait_outlier_ejected_endpoints` for this service, resolved at the first request.
    ejected_gauge: OnceLock<IntGauge>,
}

impl Backend {
    /// `destination_service` label value.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn hash_on(&self) -> Option<&HashOn> {
        self.hash_on.as_ref()
    }

    /// The HTTP version to send a request in that arrived in `client`.
    pub fn upstream_version(&self, client: Version) -> Version {
        Version::upstream(self.protocol, self.use_client_protocol, client)
    }

    /// Ready endpoints, narrowed to a subset's labels when one is named (an unknown subset has none).
    pub fn endpoints(&self, subset: Option<&str>) -> &[SocketAddr] {
        match subset {
            None => &self.ready,
            Some(name) => self.ready_in_subset.get(name).map_or(&[], Vec::as_slice),
        }
    }

    /// Picks among the endpoints outlier detection has not ejected; if it ejected all of them, among all
    /// (Envoy's panic mode: some traffic beats none). A retry avoids the endpoints this request `tried`
    /// ([`Balancer::pick_avoiding`]).
    pub fn pick(&self, endpoints: &[SocketAddr], hash_key: Option<&[u8]>, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let now = Instant::now();
        self.sweep(now);
        // Outlier detection that never ejected anything leaves every endpoint available: no list to build.
        if self.outlier.ejections() == 0 {
            return self.balancer.pick_avoiding(endpoints, hash_key, tried, &mut rand::rng());
        }
        let mut available = Vec::with_capacity(endpoints.len());
        self.outlier.retain_available(endpoints, now, &mut available);
        let candidates = if available.is_empty() { endpoints } else { &available };
        self.balancer.pick_avoiding(candidates, hash_key, tried, &mut rand::rng())
    }

    fn sweep(&self, now: Instant) {
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(*last) >= self.outlier_interval {
            *last = now;
            self.outlier.sweep(now);
        }
    }

    /// Sets `strait_outlier_ejected_endpoints` for this service. Outlier detection that never ejected an
    /// endpoint has none ejected, so then a request costs one atomic load rather than a lock and a count.
    pub fn report_ejected(&self, metrics: &Metrics) {
        let mut first = false;
        let gauge = self.ejected_gauge.get_or_init(|| {
            first = true;
            metrics.ejected_endpoints_gauge(&self.name)
        });
        if first || self.outlier.ejections() > 0 {
            set_count(gauge, self.outlier.ejected_count(Instant::now()));
        }
    }

    /// Ejections since the last call, for the metrics counter.
    pub fn take_new_ejections(&self) -> u64 {
        let total = self.outlier.ejections();
        total.saturating_sub(self.ejections_reported.swap(total, Ordering::AcqRel))
    }
}

/// A backend and the configuration version it was built from.
type Versioned = (String, Arc<Backend>);

/// Backends per service and port, kept across configuration versions. Keyed by service, then by port in a
/// short list, so a request finds its backend without building an owned key.
#[derive(Default)]
pub struct Backends {
    cache: Mutex<HashMap<ServiceRef, Vec<(u16, Versioned)>>>,
}

impl Backends {
    /// The backend a route destination names, or `None` if the configuration has no such service or port.
    pub fn backend(
        &self,
        state: &State,
        destination: &RouteDestination,
        front: &ServiceTarget,
    ) -> Option<Arc<Backend>> {
        let reference = destination.service.as_ref()?;
        let service = state.service_named(reference)?;
        let same_service = service.name == front.service.name && service.namespace == front.service.namespace;
        let port = match destination.port {
            Some(p) => service.ports.iter().find(|sp| sp.port == p)?,
            None if same_service => service.ports.iter().find(|sp| sp.port == front.port.port)?,
            None => service.ports.iter().find(|sp| sp.port == front.port.port).or(service.ports.first())?,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let kept = cache.get(reference).and_then(|ports| ports.iter().find(|(p, _)| *p == port.port));
        let previous = match kept {
            Some((_, (version, backend))) if *version == state.version => return Some(backend.clone()),
            Some((_, (_, backend))) => Some(backend.clone()),
            None => None,
        };
        let backend = Arc::new(build(state, service, port, previous.as_deref()));
        let ports = cache.entry(reference.clone()).or_default();
        let versioned = (state.version.clone(), backend.clone());
        match ports.iter_mut().find(|(p, _)| *p == port.port) {
            Some((_, entry)) => *entry = versioned,
            None => ports.push((port.port, versioned)),
        }
        Some(backend)
    }

    /// The live state of every destination this proxy has sent to, for `/config_dump`: endpoints with their
    /// outlier ejection, the connection-pool limiter and the retry budget.
    pub fn dump(&self) -> Vec<serde_json::Value> {
        let now = Instant::now();
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<serde_json::Value> = cache
            .values()
            .flatten()
            .map(|(port, (version, b))| {
                let endpoints: Vec<serde_json::Value> = b
                    .service
                    .endpoints
                    .iter()
                    .map(|e| {
                        let addr = SocketAddr::new(e.address, b.target_port);
                        serde_json::json!({"address": addr, "ready": e.ready, "ejected": b.outlier.is_ejected(addr, now)})
                    })
                    .collect();
                serde_json::json!({
                    "service": b.name(),
                    "port": port,
                    "configVersion": version,
                    "endpoints": endpoints,
                    "ejectionsTotal": b.outlier.ejections(),
                    "pool": {
                        "inFlight": b.limiter.in_flight(),
                        "pending": b.limiter.pending(),
                        "overflowsTotal": b.limiter.overflows(),
                    },
                    "retryBudget": {"available": b.budget.available()},
                })
            })
            .collect();
        out.sort_by_key(|v| (v["service"].as_str().unwrap_or("").to_string(), v["port"].as_u64()));
        out
    }

    /// Forgets the state of services that are gone (their balancer loads, ejections and budgets).
    pub fn retain(&self, keep: impl Fn(&ServiceRef) -> bool) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).retain(|service, _| keep(service));
    }
}

fn build(state: &State, service: &Arc<Service>, port: &ServicePort, previous: Option<&Backend>) -> Backend {
    let target_port = port.target();
    let settings = state.destination_settings(service);
    let policy = settings.policy.clone();
    let name = service.hostname();
    let strategy = settings.strategy.clone();
    let hash_on = strategy.hash_on().cloned();
    let outlier_config = settings.outlier;
    // An HTTP/1.1 request in flight holds one upstream connection, so `tcp.maxConnections` caps those too
    // (requests beyond wait in the pending queue rather than fail to connect). An HTTP/2 upstream multiplexes.
    let http1_possible = settings.use_client_protocol || port.protocol() != Protocol::Http2;
    let limits =
        if http1_possible { settings.limits.with_connection_cap(settings.max_connections) } else { settings.limits };
    let same = |f: fn(&DestinationPolicySpec) -> String| {
        previous.is_some_and(|p| p.policy.as_ref().map(f) == policy.as_ref().map(f))
    };
    let endpoints: Vec<SocketAddr> =
        service.endpoints.iter().map(|e| SocketAddr::new(e.address, target_port)).collect();
    // The consistent-hash ring holds the ready endpoints; subsets and ejections are filtered at each pick.
    let ready: Vec<SocketAddr> =
        service.endpoints.iter().filter(|e| e.ready).map(|e| SocketAddr::new(e.address, target_port)).collect();
    let (balancer, outlier, ejections) = match previous {
        Some(p) if same(|s| format!("{:?}{:?}", s.load_balancer, s.outlier_detection)) => {
            p.outlier.set_endpoints(&endpoints);
            p.balancer.set_endpoints(&ready);
            (p.balancer.clone(), p.outlier.clone(), p.ejections_reported.load(Ordering::Acquire))
        }
        _ => {
            let outlier = OutlierDetector::new(outlier_config);
            outlier.set_endpoints(&endpoints);
            let balancer = Balancer::new(strategy);
            balancer.set_endpoints(&ready);
            (Arc::new(balancer), Arc::new(outlier), 0)
        }
    };
    // The budget's window (what was deposited and spent lately) survives a configuration that keeps its
    // settings.
    let budget = match previous {
        Some(p) if p.budget.config() == settings.budget => p.budget.clone(),
        _ => Arc::new(RetryBudget::new(settings.budget)),
    };
    let limiter = match previous {
        Some(p) if p.limiter.limits() == limits => p.limiter.clone(),
        _ => Limiter::new(limits),
    };
    Backend {
        name,
        service: service.clone(),
        target_port,
        protocol: port.protocol(),
        use_client_protocol: settings.use_client_protocol,
        ready_in_subset: policy
            .iter()
            .flat_map(|p| p.subsets.iter())
            .map(|subset| (subset.name.clone(), ready_with_labels(state, service, target_port, &subset.labels)))
            .collect(),
        ready,
        policy,
        hash_on,
        balancer,
        outlier,
        outlier_interval: outlier_config.interval,
        last_sweep: Mutex::new(Instant::now()),
        limiter,
        budget,
        reuse: settings.reuse,
        ejections_reported: AtomicU64::new(ejections),
        ejected_gauge: OnceLock::new(),
    }
}

/// The ready endpoints of `service` whose workloads carry every one of `labels`.
fn ready_with_labels(
    state: &State,
    service: &Service,
    target_port: u16,
    labels: &BTreeMap<String, String>,
) -> Vec<SocketAddr> {
    service
        .endpoints
        .iter()
        .filter(|e| e.ready)
        .filter(|e| {
            state.workload(e.address).is_some_and(|w| labels.iter().all(|(k, v)| w.workload.labels.get(k) == Some(v)))
        })
        .map(|e| SocketAddr::new(e.address, target_port))
        .collect()
}
