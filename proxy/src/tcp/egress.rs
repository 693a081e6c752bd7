//! Connections from meshed pods to addresses outside the mesh: which external host (ServiceEntry) they reach,
//! and whether the mesh's egress policy (`outboundTrafficPolicy`) lets them. A pure function of the
//! configuration; `outbound` applies it, counts it and names the host in metrics and access lines.

use std::net::SocketAddr;

use rand::Rng;
use strait_api::OutboundTrafficPolicy;

use crate::state::State;

/// Istio's names for traffic to no registered host: let through, or dropped.
pub(crate) const PASSTHROUGH: &str = "PassthroughCluster";
pub(crate) const BLACKHOLE: &str = "BlackHoleCluster";

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Egress {
    /// A registered host: its name, the ServiceEntry's namespace, and the address to connect to.
    Registered { host: String, namespace: String, target: SocketAddr },
    /// Not registered, and the policy is ALLOW_ANY: as the pod sent it.
    Passthrough,
    /// Not registered, and the policy is REGISTRY_ONLY.
    Denied,
}

/// For `original`, an address that is neither a service address nor a workload of the mesh.
pub(crate) fn decide(state: &State, original: SocketAddr) -> Egress {
    match state.config.external_service(original) {
        Some(found) => {
            let target = match found.candidates.len() {
                0 => original,
                1 => found.candidates[0],
                n => found.candidates[rand::rng().random_range(0..n)],
            };
            Egress::Registered {
                host: found.service.spec.host().to_string(),
                namespace: found.service.namespace.clone(),
                target,
            }
        }
        None if state.config.outbound_traffic_policy == OutboundTrafficPolicy::RegistryOnly => Egress::Denied,
        None => Egress::Passthrough,
    }
}

/// Whether `original` is outside the mesh: no service address, no workload (meshed or not) of the registry.
pub(crate) fn is_external(state: &State, original: SocketAddr) -> bool {
    state.service(original).is_none() && state.workload(original.ip()).is_none()
}

#[cfg(test)]
mod tests {
    use strait_api::MeshConfig;

    use super::*;

    fn state(policy: &str) -> State {
        let config = MeshConfig::from_yaml(&format!(
            r#"
outboundTrafficPolicy: {policy}
workloads: [{{name: legacy, namespace: shop, node: node-b, address: 10.2.0.3, meshed: false}}]
externalServices:
- name: api
  namespace: shop
  spec: {{hosts: [api.example.com], addresses: [192.0.2.10], ports: [{{number: 443, name: https}}]}}
"#
        ))
        .expect("valid test configuration");
        State::build(config, "node-a", "1".into()).expect("valid test configuration")
    }

    #[test]
    fn registered_hosts_pass_and_others_follow_the_policy() {
        let addr = |s: &str| -> SocketAddr { s.parse().expect("test address") };
        for policy in ["ALLOW_ANY", "REGISTRY_ONLY"] {
            let state = state(policy);
            assert_eq!(
                decide(&state, addr("192.0.2.10:443")),
                Egress::Registered {
                    host: "api.example.com".into(),
                    namespace: "shop".into(),
                    target: addr("192.0.2.10:443")
                },
                "{policy}"
            );
            let other = decide(&state, addr("192.0.2.11:443"));
            let expected = if policy == "ALLOW_ANY" { Egress::Passthrough } else { Egress::Denied };
            assert_eq!(other, expected, "{policy}");
            // A workload of the mesh, meshed or not, is in the registry: never external.
            assert!(!is_external(&state, addr("10.2.0.3:80")));
            assert!(is_external(&state, addr("192.0.2.11:443")));
        }
    }
}
