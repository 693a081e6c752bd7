//! The proxy's current view of the mesh: the last good configuration, compiled whole when it arrives (route
//! tables, authorization policies, destination settings) and indexed for the data path. A configuration any
//! part of which does not compile is refused (the caller NACKs it, naming the resource and field) and the
//! previous one keeps serving. Connections hold an `Arc<State>` for as long as they need one consistent view,
//! and can watch for the next; the data path reads nothing else.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use strait_api::delta::Answer;
use strait_api::{EscapedSlashes, MeshConfig, MtlsMode, MtlsSource, Protocol, Service, ServicePort, Workload};
use strait_certs::Identity;
use tokio::sync::watch;

use crate::http::route::{CompileError, RouteDestination, RouteTable, ServiceRef, Weight};
use crate::http::settings::{policy_for, ConnectionReuse, DestinationSettings, SettingsError};
use crate::policy::{Policies, PolicyError};
use crate::telemetry::labels::{ServiceLabels, WorkloadLabels};

/// A workload with its identity parsed once.
#[derive(Debug)]
pub struct WorkloadInfo {
    pub workload: Workload,
    /// `None` for workloads outside the mesh.
    pub identity: Option<Identity>,
    /// Its metric label values.
    pub labels: WorkloadLabels,
}

impl WorkloadInfo {
    pub fn new(workload: Workload, identity: Option<Identity>) -> Self {
        let labels = WorkloadLabels::of(&workload, identity.as_ref());
        WorkloadInfo { workload, identity, labels }
    }

    pub fn name(&self) -> &str {
        &self.workload.name
    }
}

/// A service port as the outbound path needs it, with what its requests read worked out once (the state
/// holds one per service address and port; a connection shares it).
#[derive(Debug, Clone)]
pub struct ServiceTarget {
    pub service: Arc<Service>,
    pub port: ServicePort,
    /// The service as route tables and settings are keyed.
    pub reference: ServiceRef,
    /// Where a request goes that no TrafficRoute rule takes: the service itself, all of its endpoints.
    pub default_destination: RouteDestination,
    /// Its metric label values (`labels.host` is also the route metrics' `destination_service`).
    pub labels: ServiceLabels,
}

impl ServiceTarget {
    pub fn new(service: Arc<Service>, port: ServicePort) -> Self {
        let reference = ServiceRef::new(&service.name, &service.namespace);
        let default_destination = RouteDestination {
            host: reference.name.clone(),
            service: Some(reference.clone()),
            subset: None,
            port: None,
            weight: Weight(1),
        };
        let labels = ServiceLabels::of(&service);
        ServiceTarget { service, port, reference, default_destination, labels }
    }
}

#[derive(Debug)]
pub struct State {
    pub config: Arc<MeshConfig>,
    pub version: String,
    pub node: String,
    workloads_by_ip: HashMap<IpAddr, Arc<WorkloadInfo>>,
    services_by_addr: HashMap<SocketAddr, Arc<ServiceTarget>>,
    services_by_name: HashMap<ServiceRef, Arc<Service>>,
    /// Declared protocol of each endpoint port (pod IP, target port), from the services in front of it.
    endpoint_protocols: HashMap<SocketAddr, Protocol>,
    /// The service in front of each endpoint port (the first declared, if several), for the destination side's
    /// `destination_service` labels.
    endpoint_services: HashMap<SocketAddr, Arc<Service>>,
    /// What the destination side does with `%2F`/`%5C` for each endpoint port: `Keep` only when every service
    /// in front of it keeps them (the source side decided by one of them, and must not be able to widen it).
    endpoint_escaped_slashes: HashMap<SocketAddr, EscapedSlashes>,
    /// The connection settings towards each endpoint port: those of the service in `endpoint_services`.
    endpoint_reuse: HashMap<SocketAddr, ConnectionReuse>,
    pub policies: Policies,
    /// The compiled TrafficRoute rules of each service that has any.
    routes: HashMap<ServiceRef, Arc<RouteTable>>,
    no_routes: Arc<RouteTable>,
    /// Each service's compiled DestinationPolicy settings.
    destinations: HashMap<ServiceRef, Arc<DestinationSettings>>,
    no_destination_policy: Arc<DestinationSettings>,
    /// Protocol 3: the services whose endpoints, and the addresses whose workload (or its absence), this
    /// configuration answers for (see `crate::discovery`).
    /// Namespace -> service names (looked up by `&str`, without allocating, on every outbound connection).
    answered_services: HashMap<String, HashSet<String>>,
    answered_addresses: HashSet<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] strait_api::ValidationError),
    #[error("{0}")]
    Route(#[from] CompileError),
    #[error("{0}")]
    Destination(#[from] SettingsError),
    #[error("{0}")]
    Policy(#[from] PolicyError),
    #[error("workloads[{index}] ({namespace}/{name}): {source}")]
    Identity { index: usize, namespace: String, name: String, source: Box<strait_certs::IdentityError> },
}

impl State {
    pub fn empty(node: &str) -> Self {
        State::build(MeshConfig::default(), node, "none".into()).unwrap_or_else(|_| State {
            config: Arc::new(MeshConfig::default()),
            version: "none".into(),
            node: node.to_string(),
            workloads_by_ip: HashMap::new(),
            services_by_addr: HashMap::new(),
            services_by_name: HashMap::new(),
            endpoint_protocols: HashMap::new(),
            endpoint_services: HashMap::new(),
            endpoint_escaped_slashes: HashMap::new(),
            endpoint_reuse: HashMap::new(),
            policies: Policies::default(),
            routes: HashMap::new(),
            no_routes: Arc::default(),
            destinations: HashMap::new(),
            no_destination_policy: Arc::default(),
            answered_services: HashMap::new(),
            answered_addresses: HashSet::new(),
        })
    }

    /// Validates and indexes a configuration; an error leaves the caller's current state untouched.
    pub fn build(config: MeshConfig, node: &str, version: String) -> Result<Self, StateError> {
        config.validate()?;
        let mut workloads_by_ip = HashMap::new();
        for (index, w) in config.workloads.iter().enumerate() {
            let identity = if w.meshed {
                let id = Identity::new(&config.trust_domain, &w.namespace, &w.service_account).map_err(|source| {
                    StateError::Identity {
                        index,
                        namespace: w.namespace.clone(),
                        name: w.name.clone(),
                        source: Box::new(source),
                    }
                })?;
                Some(id)
            } else {
                None
            };
            workloads_by_ip.insert(w.address, Arc::new(WorkloadInfo::new(w.clone(), identity)));
        }
        let mut services_by_addr = HashMap::new();
        let mut services_by_name = HashMap::new();
        for s in &config.services {
            let service = Arc::new(s.clone());
            services_by_name.insert(ServiceRef::new(&s.name, &s.namespace), service.clone());
            for addr in &s.addresses {
                for port in &s.ports {
                    services_by_addr.insert(
                        SocketAddr::new(*addr, port.port),
                        Arc::new(ServiceTarget::new(service.clone(), port.clone())),
                    );
                }
            }
        }
        let mut endpoint_protocols = HashMap::new();
        for s in &config.services {
            for port in &s.ports {
                let protocol = port.protocol();
                if matches!(protocol, Protocol::Http | Protocol::Http2) {
                    for endpoint in &s.endpoints {
                        endpoint_protocols.insert(SocketAddr::new(endpoint.address, port.target()), protocol);
                    }
                }
            }
        }
        let mut endpoint_services = HashMap::new();
        for s in &config.services {
            let Some(service) = services_by_name.get(&ServiceRef::new(&s.name, &s.namespace)) else { continue };
            for port in &s.ports {
                for endpoint in &s.endpoints {
                    endpoint_services
                        .entry(SocketAddr::new(endpoint.address, port.target()))
                        .or_insert(service.clone());
                }
            }
        }
        let policies = Policies::compile(&config.authorization_policies)?;
        // Every rule of every TrafficRoute compiles, or the whole configuration is refused: a rule left out
        // would change what is enforced without the control plane knowing.
        let (_, problems) = RouteTable::compile(&config.traffic_routes);
        if let Some(problem) = problems.into_iter().next() {
            return Err(problem.into());
        }
        let mut routes = HashMap::new();
        let mut endpoint_escaped_slashes = HashMap::new();
        let mut destinations = HashMap::new();
        for s in &config.services {
            let service = ServiceRef::new(&s.name, &s.namespace);
            let (table, _) = RouteTable::for_service(&config.traffic_routes, &service);
            let slashes = table.escaped_slashes();
            for port in &s.ports {
                for endpoint in &s.endpoints {
                    endpoint_escaped_slashes
                        .entry(SocketAddr::new(endpoint.address, port.target()))
                        .and_modify(|current| {
                            if *current != slashes {
                                *current = EscapedSlashes::Reject;
                            }
                        })
                        .or_insert(slashes);
                }
            }
            if !table.is_empty() || slashes != EscapedSlashes::Reject {
                routes.insert(service.clone(), Arc::new(table));
            }
            let settings = DestinationSettings::compile(policy_for(&config, s))?;
            destinations.insert(service, Arc::new(settings));
        }
        for named in &config.destination_policies {
            DestinationSettings::compile(Some(named))?;
        }
        let endpoint_reuse = endpoint_services
            .iter()
            .filter_map(|(endpoint, s)| {
                let settings = destinations.get(&ServiceRef::new(&s.name, &s.namespace))?;
                Some((*endpoint, settings.reuse))
            })
            .collect();
        let mut answered_services: HashMap<String, HashSet<String>> = HashMap::new();
        let mut answered_addresses = HashSet::new();
        for answer in &config.answers {
            match answer {
                Answer::Service { namespace, name } => {
                    answered_services.entry(namespace.clone()).or_default().insert(name.clone());
                }
                // `validate` checked the address parses.
                Answer::Address { address } => answered_addresses.extend(address.parse::<IpAddr>().ok()),
            }
        }
        Ok(State {
            config: Arc::new(config),
            version,
            node: node.to_string(),
            workloads_by_ip,
            services_by_addr,
            services_by_name,
            endpoint_protocols,
            endpoint_services,
            endpoint_escaped_slashes,
            endpoint_reuse,
            policies,
            routes,
            no_routes: Arc::default(),
            destinations,
            no_destination_policy: Arc::default(),
            answered_services,
            answered_addresses,
        })
    }

    /// Whether this is a configuration that arrived (as opposed to the empty one a proxy starts with).
    pub fn is_loaded(&self) -> bool {
        self.version != "none"
    }

    /// The compiled route rules for `service` (an empty table when no TrafficRoute names it).
    pub fn route_table(&self, service: &ServiceRef) -> &Arc<RouteTable> {
        self.routes.get(service).unwrap_or(&self.no_routes)
    }

    /// The compiled DestinationPolicy settings of `service` (defaults when it has none).
    pub fn destination_settings(&self, service: &Service) -> &Arc<DestinationSettings> {
        let key = ServiceRef::new(&service.name, &service.namespace);
        self.destinations.get(&key).unwrap_or(&self.no_destination_policy)
    }

    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<WorkloadInfo>> {
        self.workloads_by_ip.get(&ip)
    }

    /// A meshed workload scheduled on this proxy's node.
    pub fn local_workload(&self, ip: IpAddr) -> Option<&Arc<WorkloadInfo>> {
        self.workload(ip).filter(|w| w.workload.node == self.node && w.identity.is_some())
    }

    pub fn local_workloads(&self) -> impl Iterator<Item = &Arc<WorkloadInfo>> {
        self.workloads_by_ip.values().filter(|w| w.workload.node == self.node && w.identity.is_some())
    }

    pub fn service(&self, addr: SocketAddr) -> Option<&Arc<ServiceTarget>> {
        self.services_by_addr.get(&addr)
    }

    /// Protocol 3: whether this configuration holds `service`'s endpoints because the node subscribed to it.
    pub fn answers_service(&self, service: &Service) -> bool {
        self.answered_services
            .get(service.namespace.as_str())
            .is_some_and(|names| names.contains(service.name.as_str()))
    }

    /// Protocol 3: whether this configuration says what is at `address` (a workload, or nothing of the mesh).
    pub fn answers_address(&self, address: IpAddr) -> bool {
        self.answered_addresses.contains(&address)
    }

    pub fn service_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.service_named(&ServiceRef::new(name, namespace))
    }

    /// The service `reference` names.
    pub fn service_named(&self, reference: &ServiceRef) -> Option<&Arc<Service>> {
        self.services_by_name.get(reference)
    }

    pub fn services(&self) -> impl Iterator<Item = (&SocketAddr, &Arc<ServiceTarget>)> {
        self.services_by_addr.iter()
    }

    /// Whether traffic arriving for this pod port is HTTP, as the services in front of it declare.
    pub fn is_http_endpoint(&self, target: SocketAddr) -> bool {
        self.endpoint_protocols.contains_key(&target)
    }

    /// The service whose endpoint `target` (pod address, target port) is.
    pub fn endpoint_service(&self, target: SocketAddr) -> Option<&Arc<Service>> {
        self.endpoint_services.get(&target)
    }

    /// The connection settings (`connectionPool.http`) towards `target` (pod address, port): the
    /// DestinationPolicy of the service in front of it, defaults when it has none.
    pub fn endpoint_reuse(&self, target: SocketAddr) -> ConnectionReuse {
        self.endpoint_reuse.get(&target).copied().unwrap_or_default()
    }

    /// What the destination side does with `%2F`/`%5C` in a request to `target` (pod address, port).
    pub fn endpoint_escaped_slashes(&self, target: SocketAddr) -> EscapedSlashes {
        self.endpoint_escaped_slashes.get(&target).copied().unwrap_or_default()
    }

    /// Whether plaintext may reach `workload` on its `port`: PeerAuthentications (workload and port, namespace,
    /// mesh), then the namespace's setting; see `strait_api::peer_auth`.
    pub fn mtls_mode(&self, workload: &Workload, port: u16) -> (MtlsMode, MtlsSource) {
        self.config.peer_mtls_mode(workload, port)
    }
}

/// Holds the current state and tells watchers when it changes.
#[derive(Clone)]
pub struct StateStore {
    tx: Arc<watch::Sender<Arc<State>>>,
}

impl StateStore {
    pub fn new(node: &str) -> Self {
        let (tx, _) = watch::channel(Arc::new(State::empty(node)));
        StateStore { tx: Arc::new(tx) }
    }

    pub fn current(&self) -> Arc<State> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.tx.subscribe()
    }

    /// Swaps in a new configuration if it is valid; otherwise keeps the last good one and says why.
    pub fn apply(&self, config: MeshConfig, version: String) -> Result<Arc<State>, StateError> {
        let node = self.current().node.clone();
        let state = Arc::new(State::build(config, &node, version)?);
        self.tx.send_replace(state.clone());
        Ok(state)
    }

    pub fn loaded(&self) -> bool {
        self.current().is_loaded()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "
services:
- {name: reviews, namespace: shop, addresses: [10.96.0.10], ports: [{port: 9080, name: http}]}
";

    fn config(extra: &str) -> MeshConfig {
        serde_yaml::from_str(&format!("{BASE}{extra}")).expect("test configuration parses")
    }

    const GOOD: &str = "
trafficRoutes:
- name: r
  namespace: shop
  spec:
    hosts: [reviews]
    http:
    - match: [{uri: {regex: '^/v[0-9]+/'}}]
      route: [{destination: {host: reviews}}]
      retries: {attempts: 2, retryOn: '5xx'}
";

    #[test]
    fn routes_and_settings_are_compiled_when_the_configuration_arrives() {
        let state = State::build(config(GOOD), "node-a", "1".into()).expect("valid");
        let table = state.route_table(&ServiceRef::new("reviews", "shop"));
        assert!(!table.is_empty(), "the route is compiled into the snapshot");
        assert!(state.route_table(&ServiceRef::new("ratings", "shop")).is_empty());
    }

    #[test]
    fn escaped_slashes_are_kept_at_a_pod_port_only_when_every_service_in_front_of_it_keeps_them() {
        let yaml = |objects_route: &str| {
            format!(
                "
services:
- {{name: objects, namespace: shop, addresses: [10.96.0.11], ports: [{{port: 80, name: http, targetPort: 8080}}],
   endpoints: [{{address: 10.0.0.1}}, {{address: 10.0.0.2}}]}}
- {{name: legacy, namespace: shop, addresses: [10.96.0.12], ports: [{{port: 80, name: http, targetPort: 8080}}],
   endpoints: [{{address: 10.0.0.2}}]}}
trafficRoutes:
- name: objects
  namespace: shop
  spec: {{hosts: [objects], {objects_route}}}
"
            )
        };
        let keep: MeshConfig = serde_yaml::from_str(&yaml("escapedSlashes: Keep")).expect("parses");
        let state = State::build(keep, "node-a", "1".into()).expect("valid");
        let objects = ServiceRef::new("objects", "shop");
        assert_eq!(state.route_table(&objects).escaped_slashes(), EscapedSlashes::Keep, "a route with no rules");
        let only_objects: SocketAddr = "10.0.0.1:8080".parse().expect("address");
        let also_legacy: SocketAddr = "10.0.0.2:8080".parse().expect("address");
        assert_eq!(state.endpoint_escaped_slashes(only_objects), EscapedSlashes::Keep);
        assert_eq!(state.endpoint_escaped_slashes(also_legacy), EscapedSlashes::Reject, "legacy did not opt in");
        assert_eq!(state.endpoint_escaped_slashes("10.0.0.9:8080".parse().expect("address")), EscapedSlashes::Reject);
        let default: MeshConfig = serde_yaml::from_str(&yaml("http: []")).expect("parses");
        let state = State::build(default, "node-a", "1".into()).expect("valid");
        assert_eq!(state.route_table(&objects).escaped_slashes(), EscapedSlashes::Reject);
        assert_eq!(state.endpoint_escaped_slashes(only_objects), EscapedSlashes::Reject);
    }

    #[test]
    fn a_rule_that_fails_to_compile_refuses_the_whole_snapshot() {
        let store = StateStore::new("node-a");
        store.apply(config(GOOD), "1".into()).expect("the good configuration applies");
        let cases = [
            (
                "an unsupported retryOn condition",
                GOOD.replace("retryOn: '5xx'", "retryOn: 'bogus,5xx'"),
                &["shop/r", "http[0]", "retryOn", "bogus"][..],
            ),
            (
                "an ipBlock that is not a CIDR",
                "
authorizationPolicies:
- name: p
  namespace: shop
  spec:
    action: DENY
    rules: [{from: [{source: {notIpBlocks: [10.0.0/8]}}]}]
"
                .to_string(),
                &["shop/p", "rules[0].from[0].source.notIpBlocks[0]"],
            ),
            (
                "a principal pattern with a star inside",
                "
authorizationPolicies:
- name: p
  namespace: shop
  spec:
    action: ALLOW
    rules: [{from: [{source: {principals: ['cluster*local/ns/shop/sa/x']}}]}]
"
                .to_string(),
                &["shop/p", "rules[0].from[0].source.principals[0]"],
            ),
            (
                "two load balancers at once",
                "
destinationPolicies:
- name: d
  namespace: shop
  spec:
    host: reviews
    loadBalancer: {simple: ROUND_ROBIN, consistentHash: {httpHeaderName: x-user}}
"
                .to_string(),
                &["shop/d", "loadBalancer"],
            ),
        ];
        for (what, extra, expected) in cases {
            let refused = match store.apply(config(&extra), "2".into()) {
                Ok(_) => panic!("{what}: applied"),
                Err(e) => e.to_string(),
            };
            for part in expected {
                assert!(refused.contains(part), "{what}: the refusal names the resource and field ({part}): {refused}");
            }
            assert_eq!(store.current().version, "1", "{what}: the previous snapshot keeps serving");
        }
    }
}
