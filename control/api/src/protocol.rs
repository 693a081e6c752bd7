//! Messages of the push protocol between node proxies and the control plane (see `control/PROTOCOL.md`).

use serde::{Deserialize, Serialize};

use crate::delta::{Answer, Resource, ResourceKey};
use crate::{MeshConfig, Named, NamespaceConfig, Service, Workload};

/// The configuration stream: a POST whose response body carries [`ConfigPush`] lines and whose request body
/// carries [`ConfigAck`] lines (see [`crate::frame`]).
pub const STREAM_PATH: &str = "/strait.v1.Config/Stream";
/// Protocol 3: a POST of one [`SubscribeRequest`] on the connection of the node's configuration stream, answered
/// `200` once the interests are recorded; the answer itself comes as a line of the stream.
pub const SUBSCRIBE_PATH: &str = "/strait.v1.Config/Subscribe";
/// Certificate signing: a POST of one [`CertificateRequest`], answered with a [`CertificateResponse`].
pub const SIGN_PATH: &str = "/strait.v1.Certificates/Sign";

/// Request header: the protocol versions the proxy speaks (`2`, or a list such as `1, 2`). Response header: the
/// version the control plane picked. A proxy that sends none speaks protocol 1.
pub const PROTOCOL_HEADER: &str = "x-strait-protocol";
/// Every line a full snapshot ([`ConfigPush`]).
pub const PROTOCOL_FULL: u32 = 1;
/// A full snapshot first, then deltas ([`ConfigUpdate`]).
pub const PROTOCOL_DELTA: u32 = 2;
/// As [`PROTOCOL_DELTA`], but a node receives other nodes' workloads and services' endpoints only for what it
/// subscribed to ([`SUBSCRIBE_PATH`]); every line may carry [`crate::delta::Answer`]s.
pub const PROTOCOL_ON_DEMAND: u32 = 3;
/// The versions this build speaks, best last.
pub const PROTOCOLS: [u32; 3] = [PROTOCOL_FULL, PROTOCOL_DELTA, PROTOCOL_ON_DEMAND];
/// At most this many services in one node's interest set (and in one [`SubscribeRequest`]).
pub const MAX_SERVICE_INTERESTS: usize = 4096;
/// At most this many addresses in one node's interest set (and in one [`SubscribeRequest`]).
pub const MAX_ADDRESS_INTERESTS: usize = 16384;
/// A [`SubscribeRequest`] body larger than this is refused: the largest legitimate one, every service and address
/// of a full interest set with long names, is well under it.
pub const MAX_SUBSCRIBE_BODY: usize = 4 << 20;
/// A header naming more versions than this is refused (it is a peer's input).
const MAX_OFFERED: usize = 16;

/// Why a [`PROTOCOL_HEADER`] could not be answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("{PROTOCOL_HEADER}: {0:?} is not a comma-separated list of protocol versions")]
    Malformed(String),
    #[error("{PROTOCOL_HEADER}: none of the versions offered ({0}) is spoken here (1, 2, 3)")]
    Unsupported(String),
}

/// The protocol to speak with a proxy that sent `offered` (the header's value; `None`: an old proxy, protocol 1):
/// the highest version both speak.
pub fn negotiate(offered: Option<&str>) -> Result<u32, NegotiationError> {
    let Some(offered) = offered else { return Ok(PROTOCOL_FULL) };
    let malformed = || NegotiationError::Malformed(offered.chars().take(64).collect());
    let mut versions = Vec::new();
    for part in offered.split(',') {
        if versions.len() == MAX_OFFERED {
            return Err(malformed());
        }
        versions.push(part.trim().parse::<u32>().map_err(|_| malformed())?);
    }
    versions
        .into_iter()
        .filter(|v| PROTOCOLS.contains(v))
        .max()
        .ok_or_else(|| NegotiationError::Unsupported(offered.chars().take(64).collect()))
}

/// One line of protocol 2. Every line carries the `version` the proxy ACKs, as in protocol 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ConfigUpdate {
    /// The node's whole configuration: the first line of a stream (and the only kind protocol 1 knows).
    #[serde(rename_all = "camelCase")]
    Full { version: u64, node: String, config: MeshConfig },
    /// What changed since version `base`, which must be the last version received on this stream.
    #[serde(rename_all = "camelCase")]
    Delta {
        version: u64,
        node: String,
        base: u64,
        #[serde(default)]
        upserts: Vec<Resource>,
        #[serde(default)]
        removals: Vec<ResourceKey>,
    },
}

impl ConfigUpdate {
    pub fn version(&self) -> u64 {
        match self {
            ConfigUpdate::Full { version, .. } | ConfigUpdate::Delta { version, .. } => *version,
        }
    }
}

/// Protocol 3: what a node wants the configuration stream to answer. `replace`: these are the node's whole
/// interest set (sent on every new stream, and when the proxy drops interests it no longer uses); otherwise they
/// are added to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub replace: bool,
    #[serde(default)]
    pub services: Vec<crate::ServiceRef>,
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
}

/// A configuration held as borrowed resources in canonical order, serialized exactly as the [`MeshConfig`] it
/// stands for: the control plane sends every node its own selection of shared resources without copying them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigRef<'a> {
    pub trust_domain: &'a str,
    pub namespaces: Vec<&'a NamespaceConfig>,
    pub workloads: Vec<&'a Workload>,
    pub services: Vec<&'a Service>,
    pub authorization_policies: Vec<&'a Named<crate::AuthorizationPolicySpec>>,
    pub traffic_routes: Vec<&'a Named<crate::TrafficRouteSpec>>,
    pub destination_policies: Vec<&'a Named<crate::DestinationPolicySpec>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<&'a crate::PeerAuthentication>,
    pub outbound_traffic_policy: crate::OutboundTrafficPolicy,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub external_services: Vec<&'a Named<crate::ExternalService>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<&'a Answer>,
}

impl<'a> ConfigRef<'a> {
    /// `resources` in canonical order (see [`crate::delta`]).
    pub fn new(trust_domain: &'a str, resources: impl IntoIterator<Item = &'a Resource>) -> Self {
        let mut config = ConfigRef {
            trust_domain,
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
        };
        for resource in resources {
            match resource {
                Resource::Namespace(n) => config.namespaces.push(n),
                Resource::Workload(w) => config.workloads.push(w),
                Resource::Service(s) => config.services.push(s),
                Resource::AuthorizationPolicy(p) => config.authorization_policies.push(p),
                Resource::TrafficRoute(r) => config.traffic_routes.push(r),
                Resource::DestinationPolicy(d) => config.destination_policies.push(d),
                Resource::PeerAuthentication(p) => config.peer_authentications.push(p),
                Resource::ExternalService(e) => config.external_services.push(e),
                Resource::MeshSettings(m) => config.outbound_traffic_policy = m.outbound_traffic_policy,
                Resource::Answer(a) => config.answers.push(a),
            }
        }
        config
    }

    /// The owned configuration this stands for.
    pub fn to_config(&self) -> MeshConfig {
        fn owned<T: Clone>(list: &[&T]) -> Vec<T> {
            list.iter().map(|item| (*item).clone()).collect()
        }
        MeshConfig {
            trust_domain: self.trust_domain.to_string(),
            namespaces: owned(&self.namespaces),
            workloads: owned(&self.workloads),
            services: owned(&self.services),
            authorization_policies: owned(&self.authorization_policies),
            traffic_routes: owned(&self.traffic_routes),
            destination_policies: owned(&self.destination_policies),
            peer_authentications: owned(&self.peer_authentications),
            outbound_traffic_policy: self.outbound_traffic_policy,
            external_services: owned(&self.external_services),
            answers: owned(&self.answers),
        }
    }
}

/// A protocol 1 line ([`ConfigPush`]) from borrowed parts: the same bytes.
#[derive(Debug, Serialize)]
pub struct ConfigPushRef<'a> {
    pub version: u64,
    pub node: &'a str,
    pub config: &'a ConfigRef<'a>,
}

/// A protocol 2 line ([`ConfigUpdate`]) from borrowed parts: the same bytes.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ConfigUpdateRef<'a> {
    #[serde(rename_all = "camelCase")]
    Full { version: u64, node: &'a str, config: &'a ConfigRef<'a> },
    #[serde(rename_all = "camelCase")]
    Delta { version: u64, node: &'a str, base: u64, upserts: &'a [Resource], removals: &'a [ResourceKey] },
}

/// One version of a node's configuration, pushed by the control plane (protocol 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigPush {
    /// Strictly increasing for the lifetime of a control-plane process; proxies echo it in ACK/NACK.
    pub version: u64,
    /// The node this configuration was rendered for.
    pub node: String,
    pub config: MeshConfig,
}

/// A proxy's answer to a [`ConfigPush`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigAck {
    pub version: u64,
    /// `None` is an ACK; `Some(reason)` a NACK: the proxy kept its last good configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A node proxy asks for a workload certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateRequest {
    /// The SPIFFE identity requested; the CSR's only SAN must be this URI.
    pub identity: String,
    pub csr_pem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateResponse {
    /// Leaf first.
    pub chain_pem: String,
    pub root_pem: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::resources;

    fn config() -> MeshConfig {
        let mut config: MeshConfig = serde_yaml::from_str(
            "
namespaces: [{name: shop, mtlsMode: PERMISSIVE}]
workloads: [{name: a, namespace: shop, node: n1, address: 10.0.0.1, labels: {app: a}}]
services: [{name: s, namespace: shop, addresses: [10.96.0.1], ports: [{port: 80}]}]
authorizationPolicies: [{name: p, namespace: shop, spec: {action: DENY}}]
trafficRoutes: [{name: r, namespace: shop, spec: {hosts: [s]}}]
destinationPolicies: [{name: d, namespace: shop, spec: {host: s}}]
",
        )
        .expect("test configuration");
        crate::delta::canonicalize(&mut config);
        config
    }

    #[test]
    fn borrowed_lines_are_byte_for_byte_the_owned_ones() {
        let config = config();
        let held = resources(&config);
        let view = ConfigRef::new(&config.trust_domain, &held);
        let owned = ConfigPush { version: 7, node: "n1".into(), config: config.clone() };
        let borrowed = ConfigPushRef { version: 7, node: "n1", config: &view };
        assert_eq!(serde_json::to_string(&borrowed).expect("encodes"), serde_json::to_string(&owned).expect("encodes"));

        let owned = ConfigUpdate::Full { version: 8, node: "n1".into(), config: config.clone() };
        let borrowed = ConfigUpdateRef::Full { version: 8, node: "n1", config: &view };
        let line = serde_json::to_string(&borrowed).expect("encodes");
        assert_eq!(line, serde_json::to_string(&owned).expect("encodes"));
        assert_eq!(serde_json::from_str::<ConfigUpdate>(&line).expect("decodes"), owned);
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(value["version"], 8, "every line carries a top-level version");

        let removals = [held[1].key()];
        let borrowed =
            ConfigUpdateRef::Delta { version: 9, node: "n1", base: 8, upserts: &held[..1], removals: &removals };
        let line = serde_json::to_string(&borrowed).expect("encodes");
        let owned = ConfigUpdate::Delta {
            version: 9,
            node: "n1".into(),
            base: 8,
            upserts: held[..1].to_vec(),
            removals: removals.to_vec(),
        };
        assert_eq!(serde_json::from_str::<ConfigUpdate>(&line).expect("decodes"), owned);
        assert_eq!(owned.version(), 9);
    }

    #[test]
    fn the_highest_common_version_is_picked() {
        assert_eq!(negotiate(None), Ok(PROTOCOL_FULL), "an old proxy");
        assert_eq!(negotiate(Some("2")), Ok(PROTOCOL_DELTA));
        assert_eq!(negotiate(Some("1, 2")), Ok(PROTOCOL_DELTA), "a proxy from before protocol 3");
        assert_eq!(negotiate(Some("1, 2, 3")), Ok(PROTOCOL_ON_DEMAND));
        assert_eq!(negotiate(Some("2, 3, 4")), Ok(PROTOCOL_ON_DEMAND));
        assert_eq!(negotiate(Some(" 1 ")), Ok(PROTOCOL_FULL));
        assert!(matches!(negotiate(Some("4")), Err(NegotiationError::Unsupported(_))));
        assert!(matches!(negotiate(Some("two")), Err(NegotiationError::Malformed(_))));
        assert!(matches!(negotiate(Some(&"1,".repeat(40))), Err(NegotiationError::Malformed(_))));
    }
}
