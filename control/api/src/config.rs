//! The configuration a node proxy runs on.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::resources::{AuthorizationPolicySpec, DestinationPolicySpec, TrafficRouteSpec};

/// Everything a node proxy needs to know about the mesh. The same type is read from a file and pushed by the
/// control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// SPIFFE trust domain of every workload identity, e.g. `cluster.local`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Per-namespace settings. A namespace not listed uses the defaults (STRICT mTLS).
    #[serde(default)]
    pub namespaces: Vec<NamespaceConfig>,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub authorization_policies: Vec<Named<AuthorizationPolicySpec>>,
    #[serde(default)]
    pub traffic_routes: Vec<Named<TrafficRouteSpec>>,
    #[serde(default)]
    pub destination_policies: Vec<Named<DestinationPolicySpec>>,
    /// Istio PeerAuthentications: plaintext per namespace, workload and port (see [`crate::peer_auth`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<crate::PeerAuthentication>,
    /// Whether meshed pods may reach destinations outside the mesh (see [`crate::egress`]).
    #[serde(default)]
    pub outbound_traffic_policy: crate::OutboundTrafficPolicy,
    /// Hosts outside the mesh, registered by ServiceEntries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_services: Vec<Named<crate::ExternalService>>,
    /// Protocol 3 (on-demand discovery): the subscriptions this configuration answers, so the proxy knows the
    /// endpoints of these services and the workload (or its absence) at these addresses are complete. Empty
    /// for protocols 1 and 2 and for files, whose configurations are whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<crate::delta::Answer>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            trust_domain: default_trust_domain(),
            namespaces: Vec::new(),
            workloads: Vec::new(),
            services: Vec::new(),
            authorization_policies: Vec::new(),
            traffic_routes: Vec::new(),
            destination_policies: Vec::new(),
            peer_authentications: Vec::new(),
            outbound_traffic_policy: Default::default(),
            external_services: Vec::new(),
            answers: Vec::new(),
        }
    }
}

/// AuthorizationPolicies in this namespace apply to workloads of every namespace (mesh-wide), as Istio's root
/// namespace.
pub const AUTHORIZATION_ROOT_NAMESPACE: &str = "strait-system";

pub fn default_trust_domain() -> String {
    "cluster.local".to_string()
}

impl MeshConfig {
    /// Parses YAML (or JSON) and validates it; errors name the offending field.
    pub fn from_yaml(text: &str) -> Result<Self, crate::ValidationError> {
        let config: MeshConfig =
            serde_yaml::from_str(text).map_err(|e| crate::ValidationError::parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn mtls_mode(&self, namespace: &str) -> MtlsMode {
        self.namespaces.iter().find(|n| n.name == namespace).map(|n| n.mtls_mode).unwrap_or_default()
    }
}

/// A namespaced object: its name, namespace, and the spec users wrote.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Named<T> {
    pub name: String,
    pub namespace: String,
    pub spec: T,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceConfig {
    pub name: String,
    #[serde(default)]
    pub mtls_mode: MtlsMode,
}

/// Whether plaintext traffic to a namespace's workloads is accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Only mutual TLS through the tunnel; plaintext sent straight to a pod is refused.
    #[default]
    Strict,
    /// Mutual TLS when the caller is meshed; plaintext is passed through with no identity.
    Permissive,
}

/// A pod (or, in the local mesh, a process) that the mesh knows about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_service_account")]
    pub service_account: String,
    /// The node whose proxy serves this workload.
    pub node: String,
    /// The pod IP.
    pub address: IpAddr,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Meshed workloads hold a mesh identity and their traffic goes through the node proxy; others are
    /// plain destinations.
    #[serde(default = "default_true")]
    pub meshed: bool,
    /// The port of the workload's inbound tunnel, where peers dial it (15008 unless a local mesh moves it).
    #[serde(default = "default_tunnel_port")]
    pub tunnel_port: u16,
}

impl Workload {
    /// `<trust domain>/ns/<namespace>/sa/<service account>` without the scheme; see `strait_certs::Identity`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!("spiffe://{trust_domain}/ns/{}/sa/{}", self.namespace, self.service_account)
    }
}

pub fn default_service_account() -> String {
    "default".to_string()
}

fn default_true() -> bool {
    true
}

pub const DEFAULT_TUNNEL_PORT: u16 = 15008;

fn default_tunnel_port() -> u16 {
    DEFAULT_TUNNEL_PORT
}

/// A Kubernetes Service: virtual IPs and ports in front of a set of endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Cluster IPs. A connection to any of them on a declared port is load balanced over the endpoints.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

impl Service {
    /// `name.namespace.svc.cluster.local`-style host, used in metrics and route matching.
    pub fn hostname(&self) -> String {
        crate::host::ServiceRef::new(&self.name, &self.namespace).fqdn()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    /// The port on the endpoint; the service port when absent.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// As Kubernetes' `appProtocol`: `tcp`, `http`, `http2`, `grpc`.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

impl ServicePort {
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }

    /// How this port is handled, as Istio decides it: `appProtocol` first, then the port name's prefix.
    pub fn protocol(&self) -> Protocol {
        let declared = self.app_protocol.as_deref().map(str::to_ascii_lowercase);
        match declared.as_deref() {
            Some("http") | Some("http1") => return Protocol::Http,
            Some("http2") | Some("h2c") | Some("grpc") | Some("kubernetes.io/h2c") => return Protocol::Http2,
            Some("tcp") => return Protocol::Tcp,
            _ => {}
        }
        let name = self.name.as_deref().unwrap_or("").to_ascii_lowercase();
        if name == "http" || name.starts_with("http-") {
            Protocol::Http
        } else if name == "http2" || name.starts_with("http2-") || name == "grpc" || name.starts_with("grpc-") {
            Protocol::Http2
        } else if name == "tcp" || name.starts_with("tcp-") {
            Protocol::Tcp
        } else {
            Protocol::Unknown
        }
    }
}

/// How a service port's traffic is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Http,
    Http2,
    /// Not declared: the proxy sniffs the first bytes.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// The workload's address (a pod IP); the workload itself is looked up by it.
    pub address: IpAddr,
    #[serde(default = "default_true")]
    pub ready: bool,
}
