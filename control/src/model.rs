//! The mesh's inputs as discovery sees them, before translation into a proxy's [`MeshConfig`].
//!
//! These are the shapes of a cluster (a Service has a selector, not endpoints); `translate` turns them into
//! what proxies run on. Every discovery provider (files now, Kubernetes later) produces these.
//!
//! [`MeshConfig`]: strait_api::MeshConfig

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use strait_api::{
    AuthorizationPolicySpec, DestinationPolicySpec, Endpoint, ExternalService, MtlsMode, Named, OutboundTrafficPolicy,
    PeerAuthentication, ServicePort, TrafficRouteSpec,
};

/// A namespace and its mesh settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub mtls_mode: MtlsMode,
    /// Whether the namespace's workloads join the mesh (Kubernetes: label `strait.dev/mesh=enabled`).
    #[serde(default = "yes")]
    pub meshed: bool,
}

/// A pod, or a process of the local mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    #[serde(default = "strait_api::default_service_account")]
    pub service_account: String,
    pub node: String,
    pub address: IpAddr,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Absent: the namespace decides (a namespace nobody described is meshed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meshed: Option<bool>,
    #[serde(default = "default_tunnel_port")]
    pub tunnel_port: u16,
}

/// A Service as Kubernetes has it: endpoints come from the workloads its selector matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Workloads of the same namespace whose labels include all of these are the endpoints. Empty: no
    /// selector, and `endpoints` lists them by hand (as a selector-less Service with its own Endpoints).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// Mesh-wide settings (a Mesh document's `outboundTrafficPolicy`, or `strait-control --outbound-traffic-policy`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSettings {
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

/// The one name of the [`Object::MeshSettings`] object.
pub const MESH_SETTINGS: &str = "mesh-settings";

fn yes() -> bool {
    true
}

fn default_tunnel_port() -> u16 {
    strait_api::DEFAULT_TUNNEL_PORT
}

/// What kind of object a [`ObjectKey`] names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Workload,
    Service,
    AuthorizationPolicy,
    TrafficRoute,
    DestinationPolicy,
    /// Istio's PeerAuthentication, read as it is (Strait has no kind of its own for it).
    PeerAuthentication,
    /// Istio's ServiceEntry, read as it is: an external host.
    ServiceEntry,
    MeshSettings,
    /// Gateway API kinds, spelled as Kubernetes spells them (they print as they are named).
    HTTPRoute,
    GRPCRoute,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Identifies one object across reloads, so that its last good version can stand in for a broken one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    /// Empty for namespaces.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey { kind, namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object of the mesh's inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Namespace(Namespace),
    Workload(Workload),
    Service(Service),
    AuthorizationPolicy(Named<AuthorizationPolicySpec>),
    TrafficRoute(Named<TrafficRouteSpec>),
    DestinationPolicy(Named<DestinationPolicySpec>),
    PeerAuthentication(PeerAuthentication),
    ServiceEntry(Named<ExternalService>),
    MeshSettings(MeshSettings),
    /// An HTTPRoute or GRPCRoute attached to a Service (`crate::gateway`).
    GatewayRoute(crate::gateway::GatewayRoute),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        match self {
            Object::Namespace(n) => ObjectKey::new(Kind::Namespace, "", &n.name),
            Object::Workload(w) => ObjectKey::new(Kind::Workload, &w.namespace, &w.name),
            Object::Service(s) => ObjectKey::new(Kind::Service, &s.namespace, &s.name),
            Object::AuthorizationPolicy(p) => ObjectKey::new(Kind::AuthorizationPolicy, &p.namespace, &p.name),
            Object::TrafficRoute(r) => ObjectKey::new(Kind::TrafficRoute, &r.namespace, &r.name),
            Object::DestinationPolicy(d) => ObjectKey::new(Kind::DestinationPolicy, &d.namespace, &d.name),
            Object::PeerAuthentication(p) => ObjectKey::new(Kind::PeerAuthentication, &p.namespace, &p.name),
            Object::ServiceEntry(e) => ObjectKey::new(Kind::ServiceEntry, &e.namespace, &e.name),
            Object::MeshSettings(_) => ObjectKey::new(Kind::MeshSettings, "", MESH_SETTINGS),
            Object::GatewayRoute(r) => ObjectKey::new(r.kind.model_kind(), &r.namespace, &r.name),
        }
    }
}

/// An object and where it came from (a file name, later a Kubernetes resource), for error messages.
#[derive(Clone, Debug, PartialEq)]
pub struct Sourced {
    pub source: String,
    pub object: Object,
    /// `metadata.creationTimestamp` (Unix seconds) where the provider knows it (Kubernetes; files do not):
    /// the older of two DestinationPolicies for one host takes precedence, as Gateway API resolves conflicts.
    pub created: Option<i64>,
}

impl Sourced {
    /// An object without a known creation time.
    pub fn new(source: impl Into<String>, object: Object) -> Self {
        Sourced { source: source.into(), object, created: None }
    }
}

/// Something a provider could not turn into an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub source: String,
    /// The object it was meant to be, when that much could be read. `None`: the whole source is unreadable,
    /// so every object it held before keeps its last good version.
    pub key: Option<ObjectKey>,
    pub message: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {key}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// Everything one provider sees at one moment: the objects it read and what it could not read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Discovered {
    pub objects: Vec<Sourced>,
    pub rejected: Vec<Rejection>,
}

/// The accepted inputs of the mesh, each list sorted by (namespace, name): what translation works from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub namespaces: Vec<Namespace>,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub authorization_policies: Vec<Named<AuthorizationPolicySpec>>,
    pub traffic_routes: Vec<Named<TrafficRouteSpec>>,
    pub destination_policies: Vec<Named<DestinationPolicySpec>>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub service_entries: Vec<Named<ExternalService>>,
    pub settings: MeshSettings,
    pub gateway_routes: Vec<crate::gateway::GatewayRoute>,
}

impl Snapshot {
    /// Builds a snapshot from objects, in a deterministic order whatever order they came in.
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a Object>) -> Self {
        let mut s = Snapshot::default();
        let mut sorted: Vec<&Object> = objects.into_iter().collect();
        sorted.sort_by_key(|o| o.key());
        for o in sorted {
            match o.clone() {
                Object::Namespace(n) => s.namespaces.push(n),
                Object::Workload(w) => s.workloads.push(w),
                Object::Service(v) => s.services.push(v),
                Object::AuthorizationPolicy(p) => s.authorization_policies.push(p),
                Object::TrafficRoute(r) => s.traffic_routes.push(r),
                Object::DestinationPolicy(d) => s.destination_policies.push(d),
                Object::PeerAuthentication(p) => s.peer_authentications.push(p),
                Object::ServiceEntry(e) => s.service_entries.push(e),
                Object::MeshSettings(m) => s.settings = m,
                Object::GatewayRoute(r) => s.gateway_routes.push(r),
            }
        }
        s
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// Whether the workload holds a mesh identity: its own setting, else its namespace's (a namespace nobody
    /// described is meshed, so a small local mesh needs no namespace list).
    pub fn is_meshed(&self, w: &Workload) -> bool {
        w.meshed.unwrap_or_else(|| self.namespace(&w.namespace).is_none_or(|n| n.meshed))
    }
}
