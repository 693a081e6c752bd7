//! Configuration deltas (push protocol 2): a [`MeshConfig`] seen as a set of resources keyed by kind, namespace
//! and name, the difference between two such sets, and its application.
//!
//! Both ends hold configurations in one canonical order (kinds in [`ResourceKind`] order, then namespace and
//! name), so that a delta applied to the configuration it was computed from yields exactly the configuration
//! it was computed to: [`apply`]`(a, `[`diff`]`(a, b)) == b`, field for field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::protocol::ConfigRef;
use crate::resources::{AuthorizationPolicySpec, DestinationPolicySpec, TrafficRouteSpec};
use crate::{
    ExternalService, MeshConfig, Named, NamespaceConfig, OutboundTrafficPolicy, PeerAuthentication, Service, Workload,
};

/// The kinds of resource a configuration holds, in their canonical order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ResourceKind {
    Namespace,
    Workload,
    Service,
    AuthorizationPolicy,
    TrafficRoute,
    DestinationPolicy,
    PeerAuthentication,
    ExternalService,
    MeshSettings,
    /// Protocol 3 only: a subscription the configuration answers (see [`Answer`]).
    Answer,
}

/// The name of the one [`MeshSettings`] resource.
pub const MESH_SETTINGS: &str = "mesh";

/// The configuration's mesh-wide values, as one resource (named [`MESH_SETTINGS`]) so that a change to them
/// travels in a delta like any other.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshSettings {
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
}

/// Protocol 3 (on-demand discovery): one subscription the node's configuration answers. For a service, the
/// configuration holds its endpoints and the workloads behind them (an unknown service: none); for an address,
/// the workload at that address if there is one, else the address is not in the mesh. Keyed like other
/// resources: a service answer by the service's namespace and name, an address answer by an empty namespace and
/// the address as text (its canonical form, as `IpAddr` prints it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "camelCase")]
pub enum Answer {
    Service { namespace: String, name: String },
    Address { address: String },
}

impl Answer {
    pub fn service(namespace: &str, name: &str) -> Self {
        Answer::Service { namespace: namespace.to_string(), name: name.to_string() }
    }

    pub fn address(address: std::net::IpAddr) -> Self {
        Answer::Address { address: address.to_string() }
    }

    /// Namespace and name, the key's parts.
    pub fn key_parts(&self) -> (&str, &str) {
        match self {
            Answer::Service { namespace, name } => (namespace, name),
            Answer::Address { address } => ("", address),
        }
    }
}

/// Names one resource of a configuration. Namespaces have an empty `namespace`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceKey {
    pub kind: ResourceKind,
    #[serde(default)]
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{:?} {}", self.kind, self.name)
        } else {
            write!(f, "{:?} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One resource of a configuration, as a delta carries it: `{"kind": "workload", "value": {…}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "camelCase")]
pub enum Resource {
    Namespace(NamespaceConfig),
    Workload(Workload),
    Service(Service),
    AuthorizationPolicy(Named<AuthorizationPolicySpec>),
    TrafficRoute(Named<TrafficRouteSpec>),
    DestinationPolicy(Named<DestinationPolicySpec>),
    PeerAuthentication(PeerAuthentication),
    ExternalService(Named<ExternalService>),
    MeshSettings(MeshSettings),
    Answer(Answer),
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Resource::Namespace(_) => ResourceKind::Namespace,
            Resource::Workload(_) => ResourceKind::Workload,
            Resource::Service(_) => ResourceKind::Service,
            Resource::AuthorizationPolicy(_) => ResourceKind::AuthorizationPolicy,
            Resource::TrafficRoute(_) => ResourceKind::TrafficRoute,
            Resource::DestinationPolicy(_) => ResourceKind::DestinationPolicy,
            Resource::PeerAuthentication(_) => ResourceKind::PeerAuthentication,
            Resource::ExternalService(_) => ResourceKind::ExternalService,
            Resource::MeshSettings(_) => ResourceKind::MeshSettings,
            Resource::Answer(_) => ResourceKind::Answer,
        }
    }

    /// Kind, namespace and name, borrowed: the canonical order compares these.
    pub fn sort_key(&self) -> (ResourceKind, &str, &str) {
        let (namespace, name) = match self {
            Resource::Namespace(n) => ("", n.name.as_str()),
            Resource::Workload(w) => (w.namespace.as_str(), w.name.as_str()),
            Resource::Service(s) => (s.namespace.as_str(), s.name.as_str()),
            Resource::AuthorizationPolicy(p) => (p.namespace.as_str(), p.name.as_str()),
            Resource::TrafficRoute(r) => (r.namespace.as_str(), r.name.as_str()),
            Resource::DestinationPolicy(d) => (d.namespace.as_str(), d.name.as_str()),
            Resource::PeerAuthentication(p) => (p.namespace.as_str(), p.name.as_str()),
            Resource::ExternalService(e) => (e.namespace.as_str(), e.name.as_str()),
            Resource::MeshSettings(_) => ("", MESH_SETTINGS),
            Resource::Answer(a) => a.key_parts(),
        };
        (self.kind(), namespace, name)
    }

    pub fn key(&self) -> ResourceKey {
        let (kind, namespace, name) = self.sort_key();
        ResourceKey { kind, namespace: namespace.to_string(), name: name.to_string() }
    }
}

fn key_parts(key: &ResourceKey) -> (ResourceKind, &str, &str) {
    (key.kind, key.namespace.as_str(), key.name.as_str())
}

/// What changed between two versions of a node's configuration (the trust domain never changes within a
/// stream: a new one comes as a full snapshot).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigDelta {
    /// Resources added or changed, whole.
    #[serde(default)]
    pub upserts: Vec<Resource>,
    /// Resources gone.
    #[serde(default)]
    pub removals: Vec<ResourceKey>,
}

impl ConfigDelta {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// Why a delta does not apply to the configuration held: the two ends disagree on the base, so the proxy
/// must start over from a full snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta removes {0}, which the configuration it applies to does not hold")]
    RemovesAbsent(ResourceKey),
    #[error("the delta names {0} more than once")]
    Repeated(ResourceKey),
}

/// The resources of `config`, in canonical order.
pub fn resources(config: &MeshConfig) -> Vec<Resource> {
    let mut all: Vec<Resource> = Vec::with_capacity(
        config.namespaces.len()
            + config.workloads.len()
            + config.services.len()
            + config.authorization_policies.len()
            + config.traffic_routes.len()
            + config.destination_policies.len()
            + config.peer_authentications.len()
            + config.external_services.len()
            + config.answers.len()
            + 1,
    );
    all.extend(config.namespaces.iter().cloned().map(Resource::Namespace));
    all.extend(config.workloads.iter().cloned().map(Resource::Workload));
    all.extend(config.services.iter().cloned().map(Resource::Service));
    all.extend(config.authorization_policies.iter().cloned().map(Resource::AuthorizationPolicy));
    all.extend(config.traffic_routes.iter().cloned().map(Resource::TrafficRoute));
    all.extend(config.destination_policies.iter().cloned().map(Resource::DestinationPolicy));
    all.extend(config.peer_authentications.iter().cloned().map(Resource::PeerAuthentication));
    all.extend(config.external_services.iter().cloned().map(Resource::ExternalService));
    all.push(Resource::MeshSettings(MeshSettings { outbound_traffic_policy: config.outbound_traffic_policy }));
    all.extend(config.answers.iter().cloned().map(Resource::Answer));
    all.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    all
}

/// A configuration of `trust_domain` holding `resources`, each list in canonical order. Resources are sorted
/// into lists once, by [`ConfigRef::new`], for both the owned and the borrowed form.
pub fn assemble(trust_domain: &str, resources: impl IntoIterator<Item = Resource>) -> MeshConfig {
    let resources: Vec<Resource> = resources.into_iter().collect();
    let mut config = ConfigRef::new(trust_domain, &resources).to_config();
    canonicalize(&mut config);
    config
}

/// Sorts every list of `config` into canonical order (a stable sort: what compares equal keeps its order).
pub fn canonicalize(config: &mut MeshConfig) {
    config.namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    config.workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    config.services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    config.authorization_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    config.traffic_routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    config.destination_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    config.peer_authentications.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    config.external_services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    config.answers.sort_by(|a, b| a.key_parts().cmp(&b.key_parts()));
}

/// The delta from `old` to `new`, both in canonical order (as [`resources`] returns them). Works on anything
/// that borrows as a [`Resource`] (the control plane holds them behind `Arc`s shared between nodes, and
/// compares pointers before contents).
pub fn diff<R: AsRef<Resource>>(old: &[R], new: &[R]) -> ConfigDelta {
    let mut delta = ConfigDelta::default();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let a = old.get(i).map(AsRef::as_ref);
        let b = new.get(j).map(AsRef::as_ref);
        match (a, b) {
            (Some(a), Some(b)) => match a.sort_key().cmp(&b.sort_key()) {
                std::cmp::Ordering::Less => {
                    delta.removals.push(a.key());
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    delta.upserts.push(b.clone());
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if !std::ptr::eq(a, b) && a != b {
                        delta.upserts.push(b.clone());
                    }
                    i += 1;
                    j += 1;
                }
            },
            (Some(a), None) => {
                delta.removals.push(a.key());
                i += 1;
            }
            (None, Some(b)) => {
                delta.upserts.push(b.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    delta
}

impl AsRef<Resource> for Resource {
    fn as_ref(&self) -> &Resource {
        self
    }
}

/// `base` with `delta` applied, in canonical order. A removal of something `base` does not hold, or a key named
/// twice, means the delta was computed from another configuration: an error, never a guess.
pub fn apply(base: &MeshConfig, delta: &ConfigDelta) -> Result<MeshConfig, DeltaError> {
    let mut held: BTreeMap<ResourceKey, Resource> = resources(base).into_iter().map(|r| (r.key(), r)).collect();
    let mut named = std::collections::BTreeSet::new();
    for key in &delta.removals {
        if !named.insert(key_parts(key)) {
            return Err(DeltaError::Repeated(key.clone()));
        }
        if held.remove(key).is_none() {
            return Err(DeltaError::RemovesAbsent(key.clone()));
        }
    }
    for resource in &delta.upserts {
        if !named.insert(resource.sort_key()) {
            return Err(DeltaError::Repeated(resource.key()));
        }
        held.insert(resource.key(), resource.clone());
    }
    Ok(assemble(&base.trust_domain, held.into_values()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> MeshConfig {
        let mut config: MeshConfig = serde_yaml::from_str(yaml).expect("test configuration");
        canonicalize(&mut config);
        config
    }

    const BASE: &str = "
namespaces: [{name: shop}]
workloads:
- {name: b, namespace: shop, node: n1, address: 10.0.0.2}
- {name: a, namespace: shop, node: n1, address: 10.0.0.1, labels: {app: a}}
services:
- {name: s, namespace: shop, addresses: [10.96.0.1], ports: [{port: 80}], endpoints: [{address: 10.0.0.1}]}
";

    #[test]
    fn a_delta_carries_only_what_changed_and_applies_back() {
        let old = config(BASE);
        let new = config(&BASE.replace("labels: {app: a}", "labels: {app: a2}").replace(
            "- {name: b, namespace: shop, node: n1, address: 10.0.0.2}\n",
            "- {name: c, namespace: shop, node: n2, address: 10.0.0.3}\n",
        ));
        let delta = diff(&resources(&old), &resources(&new));
        let upserted: Vec<String> = delta.upserts.iter().map(|r| r.key().to_string()).collect();
        assert_eq!(upserted, ["Workload shop/a", "Workload shop/c"]);
        let removed: Vec<String> = delta.removals.iter().map(ToString::to_string).collect();
        assert_eq!(removed, ["Workload shop/b"]);
        assert_eq!(apply(&old, &delta).expect("applies"), new);
        assert!(diff(&resources(&new), &resources(&new)).is_empty());
    }

    /// The mesh-level parts (PeerAuthentications, external services, the egress policy) travel as resources
    /// too: a proxy on protocol 2 sees a change of any of them.
    #[test]
    fn peer_authentications_external_services_and_the_egress_policy_travel_in_deltas() {
        let old = config(BASE);
        let new = config(&format!(
            "{BASE}peerAuthentications:\n- {{name: default, namespace: shop, mode: PERMISSIVE}}\n\
             externalServices:\n- {{name: api, namespace: shop, spec: {{hosts: [api.example.com], addresses: [192.0.2.1], ports: [{{number: 443}}]}}}}\n\
             outboundTrafficPolicy: REGISTRY_ONLY\n"
        ));
        assert_ne!(new.outbound_traffic_policy, old.outbound_traffic_policy);
        let delta = diff(&resources(&old), &resources(&new));
        let upserted: Vec<String> = delta.upserts.iter().map(|r| r.key().to_string()).collect();
        assert_eq!(upserted, ["PeerAuthentication shop/default", "ExternalService shop/api", "MeshSettings mesh"]);
        assert_eq!(apply(&old, &delta).expect("applies"), new);
        let back = diff(&resources(&new), &resources(&old));
        assert_eq!(apply(&new, &back).expect("applies"), old);
    }

    #[test]
    fn a_delta_for_another_base_is_refused() {
        let old = config(BASE);
        let gone = ResourceKey { kind: ResourceKind::Workload, namespace: "shop".into(), name: "zz".into() };
        let delta = ConfigDelta { upserts: vec![], removals: vec![gone.clone()] };
        assert_eq!(apply(&old, &delta), Err(DeltaError::RemovesAbsent(gone)));
        let again = resources(&old)[1].clone();
        let delta = ConfigDelta { upserts: vec![again.clone(), again.clone()], removals: vec![] };
        assert_eq!(apply(&old, &delta), Err(DeltaError::Repeated(again.key())));
    }

    /// A configuration drawn from a small pool of resources (each present or not, in one of a few shapes), so
    /// that consecutive draws add, change and remove resources of every kind.
    fn arbitrary_config() -> impl proptest::strategy::Strategy<Value = MeshConfig> {
        use proptest::prelude::*;
        let workload = (any::<bool>(), 0u8..3, 0u8..3);
        let service = (any::<bool>(), 0u8..3);
        let named = || (any::<bool>(), 0u8..3);
        (
            proptest::collection::vec(any::<bool>(), 3),
            proptest::collection::vec(workload, 6),
            proptest::collection::vec(service, 3),
            proptest::collection::vec(named(), 3),
            proptest::collection::vec(named(), 3),
            proptest::collection::vec(named(), 3),
        )
            .prop_map(|(namespaces, workloads, services, policies, routes, destinations)| {
                let mut yaml = String::from("namespaces:\n");
                for (i, _) in namespaces.iter().enumerate().filter(|(_, on)| **on) {
                    let mode = if i % 2 == 0 { "STRICT" } else { "PERMISSIVE" };
                    yaml += &format!("- {{name: ns{i}, mtlsMode: {mode}}}\n");
                }
                yaml += "workloads:\n";
                for (i, (_, node, version)) in workloads.iter().enumerate().filter(|(_, w)| w.0) {
                    yaml += &format!(
                        "- {{name: w{i}, namespace: ns{}, node: n{node}, address: 10.0.0.{i}, labels: {{version: v{version}}}}}\n",
                        i % 3
                    );
                }
                yaml += "services:\n";
                for (i, (_, endpoints)) in services.iter().enumerate().filter(|(_, s)| s.0) {
                    let endpoints: Vec<String> =
                        (0..*endpoints).map(|e| format!("{{address: 10.0.0.{e}}}")).collect();
                    yaml += &format!(
                        "- {{name: s{i}, namespace: ns0, addresses: [10.96.0.{i}], ports: [{{port: 80}}], endpoints: [{}]}}\n",
                        endpoints.join(", ")
                    );
                }
                yaml += "authorizationPolicies:\n";
                for (i, (_, shape)) in policies.iter().enumerate().filter(|(_, p)| p.0) {
                    let action = if *shape == 0 { "ALLOW" } else { "DENY" };
                    yaml += &format!("- {{name: p{i}, namespace: ns{shape}, spec: {{action: {action}}}}}\n");
                }
                yaml += "trafficRoutes:\n";
                for (i, (_, shape)) in routes.iter().enumerate().filter(|(_, r)| r.0) {
                    yaml += &format!("- {{name: r{i}, namespace: ns0, spec: {{hosts: [s{shape}]}}}}\n");
                }
                yaml += "destinationPolicies:\n";
                for (i, (_, shape)) in destinations.iter().enumerate().filter(|(_, d)| d.0) {
                    yaml += &format!("- {{name: d{i}, namespace: ns0, spec: {{host: s{i}, subsets: [{{name: v{shape}, labels: {{version: v{shape}}}}}]}}}}\n");
                }
                config(&yaml)
            })
    }

    proptest::proptest! {
        /// Applying each version's delta in turn, from nothing, holds exactly each version's full configuration.
        #[test]
        fn applying_deltas_in_order_equals_the_full_snapshot(
            versions in proptest::collection::vec(arbitrary_config(), 1..8)
        ) {
            let mut held = MeshConfig::default();
            let mut held_resources: Vec<Resource> = Vec::new();
            for full in versions {
                let next = resources(&full);
                let delta = diff(&held_resources, &next);
                // The wire form too: what is applied is what was decoded.
                let line = serde_json::to_vec(&delta).expect("encodes");
                let delta: ConfigDelta = serde_json::from_slice(&line).expect("decodes");
                held = apply(&held, &delta).expect("a delta applies to the configuration it was computed from");
                proptest::prop_assert_eq!(&held, &full);
                held_resources = next;
            }
        }
    }

    #[test]
    fn resources_travel_tagged_by_kind() {
        let resource = resources(&config(BASE)).remove(0);
        let json = serde_json::to_string(&resource).expect("encodes");
        assert_eq!(json, r#"{"kind":"namespace","value":{"name":"shop","mtlsMode":"STRICT"}}"#);
        assert_eq!(serde_json::from_str::<Resource>(&json).expect("decodes"), resource);
    }
}
