//! Where a connection goes, decided once for L4 and L7 alike: to a meshed pod on this node (the destination
//! side's checks run here, without a tunnel), through the tunnel to a meshed pod on another node, straight to
//! an address outside the mesh, or nowhere. A pure function of the configuration, so the two paths cannot
//! disagree.

use std::net::SocketAddr;
use std::sync::Arc;

use strait_certs::Identity;

use crate::state::{State, WorkloadInfo};
use crate::tunnel::PoolKey;

#[derive(Debug)]
pub(crate) enum Upstream {
    /// A meshed workload scheduled on this node.
    Local { destination: Arc<WorkloadInfo>, target: SocketAddr },
    /// A meshed workload on another node: a CONNECT to `target` over a pooled tunnel (`key`) dialled at `dial`.
    Tunnel { destination: Arc<WorkloadInfo>, target: SocketAddr, dial: SocketAddr, key: PoolKey },
    /// Not in the mesh: connect as the pod would have.
    Passthrough { target: SocketAddr },
    /// Nothing may be sent.
    Deny(DenyReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DenyReason {
    /// Only meshed workloads of this node send through this proxy; anything else would travel with no identity.
    #[error("the source is not a meshed workload on this node")]
    UnknownSource,
}

/// The upstream for a connection from `source` (by its address) to `target`, an endpoint address: a pod, or
/// an address outside the mesh. Service addresses are resolved to an endpoint before (L4: any ready endpoint,
/// L7: the balancer's pick).
pub(crate) fn plan(state: &State, source: &WorkloadInfo, target: SocketAddr) -> Upstream {
    let Some(source_identity) = source_identity(state, source) else {
        return Upstream::Deny(DenyReason::UnknownSource);
    };
    let Some(destination) = state.workload(target.ip()).filter(|w| w.identity.is_some()) else {
        return Upstream::Passthrough { target };
    };
    if destination.workload.node == state.node {
        return Upstream::Local { destination: destination.clone(), target };
    }
    let Some(destination_identity) = destination.identity.clone() else {
        return Upstream::Passthrough { target };
    };
    let key = PoolKey {
        source: source_identity.clone(),
        node: destination.workload.node.clone(),
        destination: destination_identity,
    };
    let dial = SocketAddr::new(destination.workload.address, destination.workload.tunnel_port);
    Upstream::Tunnel { destination: destination.clone(), target, dial, key }
}

/// The source's identity, when it is a meshed workload of this node in this configuration.
fn source_identity<'s>(state: &'s State, source: &WorkloadInfo) -> Option<&'s Identity> {
    let current = state.local_workload(source.workload.address)?;
    // The address may have been reused by another workload since the caller looked the source up.
    let same = current.workload.namespace == source.workload.namespace && current.workload.name == source.workload.name;
    same.then_some(current.identity.as_ref()).flatten()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use strait_api::{MeshConfig, Workload};

    use super::*;

    fn workload(name: &str, node: &str, ip: &str, meshed: bool) -> Workload {
        Workload {
            name: name.into(),
            namespace: "shop".into(),
            service_account: name.into(),
            node: node.into(),
            address: ip.parse().expect("test address"),
            labels: BTreeMap::new(),
            meshed,
            tunnel_port: 15008,
        }
    }

    fn state() -> State {
        let config = MeshConfig {
            workloads: vec![
                workload("client", "node-a", "10.1.0.2", true),
                workload("neighbour", "node-a", "10.1.0.3", true),
                workload("reviews", "node-b", "10.2.0.2", true),
                workload("legacy", "node-b", "10.2.0.3", false),
                workload("elsewhere", "node-b", "10.2.0.4", true),
            ],
            ..MeshConfig::default()
        };
        State::build(config, "node-a", "1".into()).expect("valid test configuration")
    }

    fn source(state: &State, ip: &str) -> Arc<WorkloadInfo> {
        let ip: IpAddr = ip.parse().expect("test address");
        state.workload(ip).cloned().expect("test workload")
    }

    #[derive(Debug, PartialEq)]
    enum Kind {
        Local(&'static str),
        Tunnel(&'static str, &'static str),
        Passthrough,
        Deny(DenyReason),
    }

    fn kind(upstream: &Upstream) -> Kind {
        let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
        match upstream {
            Upstream::Local { destination, .. } => Kind::Local(leak(destination.name())),
            Upstream::Tunnel { destination, dial, key, .. } => {
                assert_eq!(dial.ip(), destination.workload.address, "the tunnel is dialled at the destination pod");
                assert_eq!(dial.port(), 15008);
                Kind::Tunnel(leak(destination.name()), leak(&key.node))
            }
            Upstream::Passthrough { .. } => Kind::Passthrough,
            Upstream::Deny(reason) => Kind::Deny(*reason),
        }
    }

    #[test]
    fn plans_as_a_table() {
        let state = state();
        let cases = [
            // (source, target, expected)
            ("10.1.0.2", "10.1.0.3:8080", Kind::Local("neighbour")),
            ("10.1.0.2", "10.2.0.2:9080", Kind::Tunnel("reviews", "node-b")),
            ("10.1.0.2", "10.2.0.3:9080", Kind::Passthrough),
            ("10.1.0.2", "192.0.2.1:443", Kind::Passthrough),
            ("10.1.0.3", "10.2.0.4:80", Kind::Tunnel("elsewhere", "node-b")),
            // A pod of another node cannot send through this proxy.
            ("10.2.0.2", "10.1.0.3:8080", Kind::Deny(DenyReason::UnknownSource)),
            // An unmeshed pod has no identity to send with.
            ("10.2.0.3", "10.2.0.2:9080", Kind::Deny(DenyReason::UnknownSource)),
        ];
        for (from, to, expected) in cases {
            let target: SocketAddr = to.parse().expect("test target");
            let got = plan(&state, &source(&state, from), target);
            assert_eq!(kind(&got), expected, "{from} -> {to}");
            match got {
                Upstream::Local { target: t, .. }
                | Upstream::Tunnel { target: t, .. }
                | Upstream::Passthrough { target: t } => assert_eq!(t, target, "the target is kept"),
                Upstream::Deny(_) => {}
            }
        }
    }

    #[test]
    fn a_reused_source_address_does_not_keep_the_old_identity() {
        let old = state();
        let client = source(&old, "10.1.0.2");
        let mut config = (*old.config).clone();
        config.workloads[0].name = "new-pod".into();
        let new = State::build(config, "node-a", "2".into()).expect("valid test configuration");
        let target: SocketAddr = "10.2.0.2:9080".parse().expect("test target");
        assert_eq!(kind(&plan(&new, &client, target)), Kind::Deny(DenyReason::UnknownSource));
    }
}
