//! Traffic from meshed pods to destinations outside the mesh: the mesh's egress policy (Istio's
//! `outboundTrafficPolicy`) and the external hosts registered by ServiceEntries.
//!
//! A destination is outside the mesh when its address is neither a service address nor a workload. Such a
//! connection matches an external host when its port is one of the host's ports and its address is one of the
//! host's `addresses` (a block or an address) or, with `resolution: STATIC`, one of its endpoints. A match on
//! `addresses` of a STATIC host goes to one of its endpoints (on the endpoint's port for the port's name);
//! otherwise the connection goes where the pod sent it. With `ALLOW_ANY` an unregistered destination is
//! reached too; with `REGISTRY_ONLY` it is refused and counted.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::{MeshConfig, Named};

/// External hosts per configuration.
pub const MAX_EXTERNAL_SERVICES: usize = 4096;
/// Hosts, addresses, ports or endpoints of one external service.
pub const MAX_EXTERNAL_ENTRIES: usize = 256;

/// Whether meshed pods may reach destinations outside the mesh (Istio's `outboundTrafficPolicy.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Any destination; registered ones are named in metrics and access logs.
    #[default]
    AllowAny,
    /// Only destinations an external service registers; others are refused.
    RegistryOnly,
}

impl OutboundTrafficPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboundTrafficPolicy::AllowAny => "ALLOW_ANY",
            OutboundTrafficPolicy::RegistryOnly => "REGISTRY_ONLY",
        }
    }
}

impl std::str::FromStr for OutboundTrafficPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ALLOW_ANY" => Ok(OutboundTrafficPolicy::AllowAny),
            "REGISTRY_ONLY" => Ok(OutboundTrafficPolicy::RegistryOnly),
            other => Err(format!("{other:?} is not a mode (ALLOW_ANY or REGISTRY_ONLY)")),
        }
    }
}

/// How the addresses of an external host are known (Istio's `resolution`; `DNS` is refused at conversion).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    /// The connection goes to the address the pod chose; `addresses` say which are this host.
    #[default]
    None,
    /// The endpoints are listed; a connection to one of `addresses` goes to one of them.
    Static,
}

/// A host outside the mesh (from a ServiceEntry with `location: MESH_EXTERNAL`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalService {
    /// Names of the host; the first is the one metrics and access logs carry.
    pub hosts: Vec<String>,
    /// Addresses or blocks (`192.0.2.0/24`) that are this host.
    #[serde(default)]
    pub addresses: Vec<String>,
    pub ports: Vec<ExternalPort>,
    #[serde(default)]
    pub resolution: Resolution,
    #[serde(default)]
    pub endpoints: Vec<ExternalEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalPort {
    pub number: u16,
    #[serde(default)]
    pub name: String,
    /// As Istio's `protocol` (`TCP`, `HTTP`, `TLS`, ...); the proxies carry the bytes as they are.
    #[serde(default)]
    pub protocol: String,
    /// The endpoints' port when an endpoint names none for this port; `number` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalEndpoint {
    pub address: IpAddr,
    /// Port name -> the endpoint's port.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
}

/// Where a connection to an external service goes.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalMatch<'a> {
    pub service: &'a Named<ExternalService>,
    /// The address to connect to: the original one, or a STATIC endpoint's.
    pub candidates: Vec<SocketAddr>,
}

impl ExternalService {
    /// The name metrics and access logs carry.
    pub fn host(&self) -> &str {
        self.hosts.first().map(String::as_str).unwrap_or("")
    }

    fn has_address(&self, ip: IpAddr) -> bool {
        self.addresses.iter().filter_map(|a| crate::validate::parse_ip_block(a)).any(|net| net.contains(&ip))
    }
}

impl MeshConfig {
    /// The external service `target` belongs to, and where to connect; `None` for an unregistered address.
    /// Callers ask only for addresses outside the mesh (no service address, no workload).
    pub fn external_service(&self, target: SocketAddr) -> Option<ExternalMatch<'_>> {
        for service in &self.external_services {
            let spec = &service.spec;
            let statics = if spec.resolution == Resolution::Static { spec.endpoints.as_slice() } else { &[] };
            let is_endpoint = spec.ports.iter().any(|port| {
                statics.iter().any(|e| e.address == target.ip() && endpoint_port(e, port) == target.port())
            });
            if is_endpoint {
                return Some(ExternalMatch { service, candidates: vec![target] });
            }
            let Some(port) = spec.ports.iter().find(|p| p.number == target.port()) else { continue };
            if spec.has_address(target.ip()) {
                let candidates = if statics.is_empty() {
                    vec![target]
                } else {
                    statics.iter().map(|e| SocketAddr::new(e.address, endpoint_port(e, port))).collect()
                };
                return Some(ExternalMatch { service, candidates });
            }
        }
        None
    }
}

fn endpoint_port(endpoint: &ExternalEndpoint, port: &ExternalPort) -> u16 {
    endpoint.ports.get(&port.name).copied().or(port.target_port).unwrap_or(port.number)
}

/// Problems of the external services, each naming its field.
pub(crate) fn validate(config: &MeshConfig, push: &mut dyn FnMut(String, String)) {
    if config.external_services.len() > MAX_EXTERNAL_SERVICES {
        push("externalServices".into(), format!("at most {MAX_EXTERNAL_SERVICES} entries"));
    }
    for service in &config.external_services {
        let f = format!("externalServices[{}/{}]", service.namespace, service.name);
        let spec = &service.spec;
        for (name, len) in [
            ("hosts", spec.hosts.len()),
            ("addresses", spec.addresses.len()),
            ("ports", spec.ports.len()),
            ("endpoints", spec.endpoints.len()),
        ] {
            if len > MAX_EXTERNAL_ENTRIES {
                push(format!("{f}.spec.{name}"), format!("at most {MAX_EXTERNAL_ENTRIES} entries"));
            }
        }
        if spec.hosts.is_empty() {
            push(format!("{f}.spec.hosts"), "at least one host is required".into());
        }
        for (j, host) in spec.hosts.iter().enumerate() {
            let ok = !host.is_empty()
                && host.len() <= crate::bounds::MAX_NAME_LEN
                && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '*');
            if !ok {
                push(format!("{f}.spec.hosts[{j}]"), format!("{host:?} is not a host name"));
            }
        }
        for (j, address) in spec.addresses.iter().enumerate() {
            if address.len() > crate::bounds::MAX_IP_BLOCK_LEN || crate::validate::parse_ip_block(address).is_none() {
                push(format!("{f}.spec.addresses[{j}]"), format!("{address:?} is not an address or CIDR block"));
            }
        }
        if spec.ports.is_empty() {
            push(format!("{f}.spec.ports"), "at least one port is required".into());
        }
        for (j, port) in spec.ports.iter().enumerate() {
            if port.number == 0 || port.target_port == Some(0) {
                push(format!("{f}.spec.ports[{j}]"), "ports must be 1-65535".into());
            }
            if port.name.len() > crate::bounds::MAX_NAME_LEN || port.protocol.len() > crate::bounds::MAX_NAME_LEN {
                push(format!("{f}.spec.ports[{j}]"), "name and protocol are at most 253 characters".into());
            }
        }
        if spec.addresses.is_empty() && (spec.resolution == Resolution::None || spec.endpoints.is_empty()) {
            push(
                format!("{f}.spec.addresses"),
                "the proxies recognise external traffic by address: give addresses, or STATIC endpoints".into(),
            );
        }
        if spec.resolution == Resolution::None && !spec.endpoints.is_empty() {
            push(format!("{f}.spec.endpoints"), "only with resolution STATIC".into());
        }
        for (j, endpoint) in spec.endpoints.iter().enumerate() {
            if endpoint.ports.len() > MAX_EXTERNAL_ENTRIES || endpoint.ports.values().any(|p| *p == 0) {
                push(format!("{f}.spec.endpoints[{j}].ports"), "ports must be 1-65535 (at most 256)".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> MeshConfig {
        MeshConfig::from_yaml(yaml).expect("valid test configuration")
    }

    #[test]
    fn matches_by_port_and_address_and_sends_static_addresses_to_endpoints() {
        let c = config(
            r#"
externalServices:
- name: api
  namespace: shop
  spec:
    hosts: [api.example.com]
    addresses: [192.0.2.0/24]
    ports: [{number: 443, name: https, protocol: TLS}]
- name: db
  namespace: shop
  spec:
    hosts: [db.example.com]
    addresses: [240.0.0.1]
    ports: [{number: 5432, name: tcp, protocol: TCP}]
    resolution: STATIC
    endpoints: [{address: 198.51.100.7, ports: {tcp: 15432}}, {address: 198.51.100.8}]
"#,
        );
        let at = |s: &str| c.external_service(s.parse().expect("test address"));
        let api = at("192.0.2.9:443").expect("in the block");
        assert_eq!(api.service.spec.host(), "api.example.com");
        assert_eq!(api.candidates, vec!["192.0.2.9:443".parse().expect("addr")]);
        assert!(at("192.0.2.9:80").is_none(), "a port the host does not declare");
        assert!(at("192.0.3.9:443").is_none(), "outside the block");
        let db = at("240.0.0.1:5432").expect("the STATIC address");
        assert_eq!(
            db.candidates,
            vec!["198.51.100.7:15432".parse().expect("addr"), "198.51.100.8:5432".parse().expect("addr")]
        );
        assert_eq!(at("198.51.100.7:15432").expect("an endpoint").candidates.len(), 1);
        assert!(at("198.51.100.7:5432").is_none(), "an endpoint on a port it does not serve");
    }

    #[test]
    fn refuses_what_cannot_be_matched_naming_the_field() {
        let err = MeshConfig::from_yaml(
            r#"
externalServices:
- name: api
  namespace: shop
  spec: {hosts: [api.example.com], ports: [{number: 443}]}
- name: bad
  namespace: shop
  spec: {hosts: ["a b"], addresses: [300.0.0.1], ports: [{number: 0}], endpoints: [{address: 192.0.2.1}]}
"#,
        )
        .expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "externalServices[shop/api].spec.addresses",
            "externalServices[shop/bad].spec.hosts[0]",
            "externalServices[shop/bad].spec.addresses[0]",
            "externalServices[shop/bad].spec.ports[0]",
            "externalServices[shop/bad].spec.endpoints: only with resolution STATIC",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }
}
