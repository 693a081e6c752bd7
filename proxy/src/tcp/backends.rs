//! The balancer and outlier state of each TCP service port (`appProtocol: tcp`, or undeclared and not HTTP),
//! compiled from the DestinationPolicy when a configuration arrives ([`TcpBackends::update`], from the
//! reconcile loop) so that a connection only reads compiled state and the live counters. A new configuration
//! keeps a port's balancer and ejections while its `loadBalancer` and `outlierDetection` stay the same, and
//! forgets the endpoints that left.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use strait_api::{Protocol, Service, ServicePort};
use tokio::time::Instant;

use crate::balance::{Balancer, HashOn, OutlierConfig, OutlierDetector, Strategy};
use crate::http::route::ServiceRef;
use crate::state::{ServiceTarget, State};

/// Endpoints one connection may try before it is refused: the first pick and two others, all within the
/// service's connect timeout.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;

/// One TCP service port: its ready endpoints and what is remembered about them.
pub struct TcpBackend {
    /// `destination_service` label value.
    pub name: String,
    endpoints: Vec<SocketAddr>,
    strategy: Strategy,
    outlier_config: OutlierConfig,
    pub balancer: Arc<Balancer>,
    pub outlier: Arc<OutlierDetector>,
    last_sweep: Arc<Mutex<Instant>>,
    /// Ejections already added to the metrics counter (shared by the versions of this backend).
    ejections_reported: Arc<AtomicU64>,
}

impl TcpBackend {
    fn build(service: &Service, port: &ServicePort, state: &State, previous: Option<&TcpBackend>) -> TcpBackend {
        let settings = state.destination_settings(service);
        let endpoints: Vec<SocketAddr> =
            service.endpoints.iter().filter(|e| e.ready).map(|e| SocketAddr::new(e.address, port.target())).collect();
        let kept = previous.filter(|p| p.strategy == settings.strategy && p.outlier_config == settings.outlier);
        let backend = match kept {
            Some(p) => TcpBackend {
                name: service.hostname(),
                endpoints,
                strategy: p.strategy.clone(),
                outlier_config: p.outlier_config,
                balancer: p.balancer.clone(),
                outlier: p.outlier.clone(),
                last_sweep: p.last_sweep.clone(),
                ejections_reported: p.ejections_reported.clone(),
            },
            None => TcpBackend {
                name: service.hostname(),
                endpoints,
                strategy: settings.strategy.clone(),
                outlier_config: settings.outlier,
                balancer: Arc::new(Balancer::new(settings.strategy.clone())),
                outlier: Arc::new(OutlierDetector::new(settings.outlier)),
                last_sweep: Arc::new(Mutex::new(Instant::now())),
                ejections_reported: Arc::default(),
            },
        };
        backend.balancer.set_endpoints(&backend.endpoints);
        backend.outlier.set_endpoints(&backend.endpoints);
        backend
    }

    /// The next endpoint for a connection from `source` that already failed to connect to `tried`: among the
    /// endpoints outlier detection has not ejected (all of them if it ejected every one, as Envoy's panic
    /// mode), never one already tried. Under consistent hashing the key's endpoint, or after a failure the
    /// next one on the ring.
    pub fn pick(&self, source: IpAddr, tried: &[SocketAddr], now: Instant) -> Option<SocketAddr> {
        self.sweep(now);
        let mut available = Vec::with_capacity(self.endpoints.len());
        self.outlier.retain_available(&self.endpoints, now, &mut available);
        if available.is_empty() {
            available = self.endpoints.clone();
        }
        available.retain(|e| !tried.contains(e));
        let key = self.strategy.hash_on().and_then(|on: &HashOn| on.connection_key(source));
        self.balancer.pick(&available, key.as_deref(), &mut rand::rng())
    }

    pub fn has_endpoints(&self) -> bool {
        !self.endpoints.is_empty()
    }

    /// Every `interval`, let healthy endpoints' ejection multipliers decay.
    fn sweep(&self, now: Instant) {
        let interval = self.outlier_config.interval.max(Duration::from_millis(1));
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(*last) >= interval {
            *last = now;
            self.outlier.sweep(now);
        }
    }

    /// Ejections since the last call, for the metrics counter.
    pub fn take_new_ejections(&self) -> u64 {
        let total = self.outlier.ejections();
        total.saturating_sub(self.ejections_reported.swap(total, Ordering::AcqRel))
    }
}

/// The TCP backends of one configuration version.
#[derive(Default)]
struct Compiled {
    version: String,
    ports: HashMap<(ServiceRef, u16), Arc<TcpBackend>>,
}

#[derive(Default)]
pub struct TcpBackends {
    compiled: ArcSwap<Compiled>,
    /// One compilation at a time (the reconcile loop, or a connection that saw a version before it did).
    compiling: Mutex<()>,
}

impl TcpBackends {
    /// Compiles the backends of `state`'s TCP service ports, keeping what [`TcpBackend::build`] may keep;
    /// ports and services that left are dropped with their state.
    pub fn update(&self, state: &State) {
        let _compiling = self.compiling.lock().unwrap_or_else(|e| e.into_inner());
        let previous = self.compiled.load_full();
        if previous.version == state.version && state.is_loaded() {
            return;
        }
        let mut ports = HashMap::new();
        for (_, target) in state.services() {
            if matches!(target.port.protocol(), Protocol::Http | Protocol::Http2) {
                continue;
            }
            let key = (ServiceRef::new(&target.service.name, &target.service.namespace), target.port.port);
            if ports.contains_key(&key) {
                continue;
            }
            let backend =
                TcpBackend::build(&target.service, &target.port, state, previous.ports.get(&key).map(|b| &**b));
            ports.insert(key, Arc::new(backend));
        }
        self.compiled.store(Arc::new(Compiled { version: state.version.clone(), ports }));
    }

    /// The live state of each TCP service port, for `/config_dump`: its balancer, endpoints with their
    /// outlier ejection, and the ejections so far.
    pub fn dump(&self) -> Vec<serde_json::Value> {
        let now = Instant::now();
        let compiled = self.compiled.load();
        let mut out: Vec<serde_json::Value> = compiled
            .ports
            .iter()
            .map(|((_, port), b)| {
                let endpoints: Vec<serde_json::Value> = b
                    .endpoints
                    .iter()
                    .map(|e| serde_json::json!({"address": e, "ejected": b.outlier.is_ejected(*e, now)}))
                    .collect();
                serde_json::json!({
                    "service": b.name,
                    "port": port,
                    "configVersion": compiled.version,
                    "loadBalancer": format!("{:?}", b.strategy),
                    "endpoints": endpoints,
                    "ejectionsTotal": b.outlier.ejections(),
                })
            })
            .collect();
        out.sort_by_key(|v| (v["service"].as_str().unwrap_or("").to_string(), v["port"].as_u64()));
        out
    }

    /// The backend of a TCP service port, as compiled for `state` (the newest configuration), or for the newest
    /// one when `state` is older.
    pub fn get(&self, state: &State, latest: bool, target: &ServiceTarget) -> Arc<TcpBackend> {
        let key = (ServiceRef::new(&target.service.name, &target.service.namespace), target.port.port);
        let compiled = self.compiled.load();
        if compiled.version != state.version && latest {
            drop(compiled);
            self.update(state);
            return self.get(state, false, target);
        }
        match compiled.ports.get(&key) {
            Some(backend) => backend.clone(),
            // A port this version does not know (an older connection's view): on its own, shared with no one.
            None => Arc::new(TcpBackend::build(&target.service, &target.port, state, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_api::MeshConfig;

    fn state(version: &str, endpoints: &[&str], lb: &str) -> State {
        let endpoints: Vec<String> = endpoints.iter().map(|ip| format!("{{address: {ip}}}")).collect();
        let yaml = format!(
            r#"
services:
- name: db
  namespace: shop
  addresses: [10.96.0.10]
  ports: [{{port: 5432, name: tcp-pg, targetPort: 5432}}]
  endpoints: [{}]
destinationPolicies:
- name: db
  namespace: shop
  spec:
    host: db
    loadBalancer: {lb}
    outlierDetection: {{consecutiveGatewayErrors: 1, maxEjectionPercent: 100}}
"#,
            endpoints.join(", ")
        );
        let config = MeshConfig::from_yaml(&yaml).expect("valid");
        State::build(config, "n", version.into()).expect("compiles")
    }

    fn target(state: &State) -> ServiceTarget {
        state.services().next().map(|(_, t)| ServiceTarget::clone(t)).expect("the service")
    }

    fn addr(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 5432)
    }

    #[test]
    fn compiled_per_version_kept_while_the_policy_stays_and_forgetting_endpoints_that_left() {
        let backends = TcpBackends::default();
        let v1 = state("1", &["10.0.0.1", "10.0.0.2"], "{simple: ROUND_ROBIN}");
        backends.update(&v1);
        let first = backends.get(&v1, true, &target(&v1));
        let now = Instant::now();
        first.outlier.record(addr("10.0.0.1"), &crate::balance::outlier::Connect::Failed, now);
        assert!(first.outlier.is_ejected(addr("10.0.0.1"), now));
        // Round robin over what is left: never the ejected endpoint, nor one already tried.
        let source: IpAddr = "10.0.1.1".parse().expect("ip");
        assert!((0..10).all(|_| first.pick(source, &[], now) == Some(addr("10.0.0.2"))));
        assert_eq!(first.pick(source, &[addr("10.0.0.2")], now), None);

        // A new version with one more endpoint and the same policy keeps the ejection.
        let v2 = state("2", &["10.0.0.1", "10.0.0.2", "10.0.0.3"], "{simple: ROUND_ROBIN}");
        backends.update(&v2);
        let second = backends.get(&v2, true, &target(&v2));
        assert!(Arc::ptr_eq(&first.outlier, &second.outlier) && second.outlier.is_ejected(addr("10.0.0.1"), now));
        // The ejected endpoint leaves: its state goes with it, so it comes back healthy.
        let v3 = state("3", &["10.0.0.2", "10.0.0.3"], "{simple: ROUND_ROBIN}");
        backends.update(&v3);
        let v4 = state("4", &["10.0.0.1", "10.0.0.2"], "{simple: ROUND_ROBIN}");
        let fourth = backends.get(&v4, true, &target(&v4));
        assert!(!fourth.outlier.is_ejected(addr("10.0.0.1"), now));
        // Another policy starts afresh.
        let v5 = state("5", &["10.0.0.1", "10.0.0.2"], "{simple: LEAST_REQUEST}");
        let fifth = backends.get(&v5, true, &target(&v5));
        assert!(!Arc::ptr_eq(&fourth.balancer, &fifth.balancer));
        // /config_dump shows the port, its balancer and its endpoints' ejections.
        fifth.outlier.record(addr("10.0.0.2"), &crate::balance::outlier::Connect::Failed, now);
        let dump = backends.dump();
        assert_eq!(dump.len(), 1, "{dump:?}");
        assert_eq!(
            (dump[0]["service"].as_str(), dump[0]["port"].as_u64()),
            (Some("db.shop.svc.cluster.local"), Some(5432))
        );
        assert_eq!(dump[0]["loadBalancer"], "LeastRequest");
        let ejected: Vec<bool> = dump[0]["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .map(|e| e["ejected"].as_bool().unwrap_or_default())
            .collect();
        assert_eq!((ejected, dump[0]["ejectionsTotal"].as_u64()), (vec![false, true], Some(1)));
        // A connection still holding version 4 does not recompile it back.
        let _ = backends.get(&v4, false, &target(&v4));
        assert!(Arc::ptr_eq(&backends.get(&v5, true, &target(&v5)).balancer, &fifth.balancer));
    }

    #[test]
    fn source_ip_hashing_keeps_a_client_on_one_endpoint_and_moves_on_after_a_failure() {
        let v1 = state("1", &["10.0.0.1", "10.0.0.2", "10.0.0.3"], "{consistentHash: {useSourceIp: true}}");
        let backends = TcpBackends::default();
        let backend = backends.get(&v1, true, &target(&v1));
        let now = Instant::now();
        for client in 1..=20u8 {
            let source = IpAddr::from([10, 0, 1, client]);
            let home = backend.pick(source, &[], now).expect("an endpoint");
            assert!((0..20).all(|_| backend.pick(source, &[], now) == Some(home)));
            let next = backend.pick(source, &[home], now).expect("another endpoint");
            assert_ne!(next, home);
        }
    }
}
