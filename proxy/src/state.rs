//! The proxy's current view of the mesh: the last good configuration and the indexes the data path looks up.
//! A new configuration is validated and indexed off the data path, then swapped in whole; connections hold an
//! `Arc<State>` for as long as they need one consistent view, and can watch for the next.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use strait_api::{MeshConfig, MtlsMode, Protocol, Service, ServicePort, Workload};
use strait_certs::Identity;
use tokio::sync::watch;

use crate::authz::Policies;

/// A workload with its identity parsed once.
#[derive(Debug)]
pub struct WorkloadInfo {
    pub workload: Workload,
    /// `None` for workloads outside the mesh.
    pub identity: Option<Identity>,
}

impl WorkloadInfo {
    pub fn name(&self) -> &str {
        &self.workload.name
    }
}

/// A service port as the outbound path needs it.
#[derive(Debug, Clone)]
pub struct ServiceTarget {
    pub service: Arc<Service>,
    pub port: ServicePort,
}

#[derive(Debug)]
pub struct State {
    pub config: Arc<MeshConfig>,
    pub version: String,
    pub node: String,
    workloads_by_ip: HashMap<IpAddr, Arc<WorkloadInfo>>,
    services_by_addr: HashMap<SocketAddr, ServiceTarget>,
    services_by_name: HashMap<(String, String), Arc<Service>>,
    /// Declared protocol of each endpoint port (pod IP, target port), from the services in front of it.
    endpoint_protocols: HashMap<SocketAddr, Protocol>,
    /// The service in front of each endpoint port (the first declared, if several), for the destination side's
    /// `destination_service` labels.
    endpoint_services: HashMap<SocketAddr, Arc<Service>>,
    pub policies: Policies,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid configuration: {0}")]
    Invalid(#[from] strait_api::ValidationError),
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
            policies: Policies::new(&[]),
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
            workloads_by_ip.insert(w.address, Arc::new(WorkloadInfo { workload: w.clone(), identity }));
        }
        let mut services_by_addr = HashMap::new();
        let mut services_by_name = HashMap::new();
        for s in &config.services {
            let service = Arc::new(s.clone());
            services_by_name.insert((s.namespace.clone(), s.name.clone()), service.clone());
            for addr in &s.addresses {
                for port in &s.ports {
                    services_by_addr.insert(
                        SocketAddr::new(*addr, port.port),
                        ServiceTarget { service: service.clone(), port: port.clone() },
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
            let Some(service) = services_by_name.get(&(s.namespace.clone(), s.name.clone())) else { continue };
            for port in &s.ports {
                for endpoint in &s.endpoints {
                    endpoint_services
                        .entry(SocketAddr::new(endpoint.address, port.target()))
                        .or_insert(service.clone());
                }
            }
        }
        let policies = Policies::new(&config.authorization_policies);
        Ok(State {
            config: Arc::new(config),
            version,
            node: node.to_string(),
            workloads_by_ip,
            services_by_addr,
            services_by_name,
            endpoint_protocols,
            endpoint_services,
            policies,
        })
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

    pub fn service(&self, addr: SocketAddr) -> Option<&ServiceTarget> {
        self.services_by_addr.get(&addr)
    }

    pub fn service_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services_by_name.get(&(namespace.to_string(), name.to_string()))
    }

    pub fn services(&self) -> impl Iterator<Item = (&SocketAddr, &ServiceTarget)> {
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

    pub fn mtls_mode(&self, namespace: &str) -> MtlsMode {
        self.config.mtls_mode(namespace)
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
        self.current().version != "none"
    }
}
