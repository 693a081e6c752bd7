//! Core Kubernetes objects -> the model discovery shares with the file provider: namespaces (mesh labels),
//! pods (workloads) and services with their EndpointSlices.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt as _;
use strait_api::{Endpoint, MtlsMode, ServicePort};

use super::crds::SOURCE;
use crate::model::{self, Kind, Object, ObjectKey, Rejection, Sourced};

/// The label EndpointSlices carry naming their Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A namespace and whether it is meshed. An unknown `strait.dev/mtls-mode` value falls back to STRICT (the
/// safe side) and is returned as a warning to log; refusing the namespace would instead drop it, which in
/// this provider means "not meshed" and would quietly take its pods out of the mesh.
pub fn namespace(ns: &Namespace) -> (model::Namespace, Option<String>) {
    let name = ns.name_any();
    let (settings, warning) = match strait_api::crd::namespace_settings(ns.labels()) {
        Ok(settings) => (settings, None),
        Err(message) => {
            let meshed =
                ns.labels().get(strait_api::crd::MESH_LABEL).is_some_and(|v| v == strait_api::crd::MESH_ENABLED);
            (
                strait_api::crd::NamespaceSettings { meshed, mtls_mode: MtlsMode::Strict },
                Some(format!("Namespace {name}: {message}")),
            )
        }
    };
    (model::Namespace { name, mtls_mode: settings.mtls_mode, meshed: settings.meshed }, warning)
}

/// A pod as a workload, if it is one: scheduled, with an address of its own, and not finished (a finished
/// pod's address may already belong to a new pod). Host-network pods share their node's address, so they
/// cannot be told apart by address and are left out.
pub fn workload(pod: &Pod, namespace_meshed: bool) -> Option<Result<Sourced, Rejection>> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network == Some(true) || matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
        return None;
    }
    if pod.metadata.deletion_timestamp.is_some() && status.phase.as_deref() != Some("Running") {
        return None;
    }
    let node = spec.node_name.clone().filter(|n| !n.is_empty())?;
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    let key = ObjectKey::new(Kind::Workload, pod.namespace().unwrap_or_default(), pod.name_any());
    let address: IpAddr = match ip.parse() {
        Ok(address) => address,
        Err(e) => return Some(Err(rejection(key, format!("status.podIP: {ip:?}: {e}")))),
    };
    let workload = model::Workload {
        name: key.name.clone(),
        namespace: key.namespace.clone(),
        service_account: spec
            .service_account_name
            .clone()
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(strait_api::default_service_account),
        node,
        address,
        labels: pod.labels().clone(),
        // Explicit, so that a namespace missing from the snapshot never makes its pods meshed by default.
        meshed: Some(namespace_meshed),
        tunnel_port: strait_api::DEFAULT_TUNNEL_PORT,
    };
    Some(Ok(Sourced::new(SOURCE, Object::Workload(workload))))
}

/// A Service with the ready endpoints of its EndpointSlices. Selector-less and selected services alike take
/// their endpoints from the slices (the endpoints controller already applied the selector and readiness).
pub fn service(svc: &Service, slices: &[&EndpointSlice]) -> Result<Sourced, Rejection> {
    let key = ObjectKey::new(Kind::Service, svc.namespace().unwrap_or_default(), svc.name_any());
    let spec = svc.spec.clone().unwrap_or_default();
    let mut addresses = Vec::new();
    let cluster_ips = spec.cluster_ips.clone().unwrap_or_default();
    let cluster_ips = if cluster_ips.is_empty() { spec.cluster_ip.clone().into_iter().collect() } else { cluster_ips };
    for (i, ip) in cluster_ips.iter().enumerate() {
        // Headless services have "None": no virtual IP, endpoints only.
        if ip.is_empty() || ip == "None" {
            continue;
        }
        match ip.parse() {
            Ok(address) => addresses.push(address),
            Err(e) => return Err(rejection(key, format!("spec.clusterIPs[{i}]: {ip:?}: {e}"))),
        }
    }
    // Slices resolve named target ports: their ports carry the service port's name and the number.
    let slice_ports: BTreeMap<String, u16> = slices
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone().unwrap_or_default(), u16::try_from(p.port?).ok()?)))
        .collect();
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let Ok(port) = u16::try_from(p.port) else {
            return Err(rejection(key, format!("spec.ports[{i}].port: {} is not a port number", p.port)));
        };
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let target_port = match &p.target_port {
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
            Some(IntOrString::String(_)) => slice_ports.get(p.name.as_deref().unwrap_or_default()).copied(),
            None => None,
        };
        ports.push(ServicePort { name: p.name.clone(), port, target_port, app_protocol: p.app_protocol.clone() });
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for slice in slices {
        for endpoint in &slice.endpoints {
            // Absent `ready` means ready, as the EndpointSlice API defines it.
            let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(address) = address.parse() {
                    if !endpoints.iter().any(|e| e.address == address) {
                        endpoints.push(Endpoint { address, ready: true });
                    }
                }
            }
        }
    }
    endpoints.sort_by_key(|e| e.address);
    Ok(Sourced::new(
        SOURCE,
        Object::Service(model::Service {
            name: key.name.clone(),
            namespace: key.namespace.clone(),
            addresses,
            ports,
            selector: BTreeMap::new(),
            endpoints,
        }),
    ))
}

/// The Service an EndpointSlice belongs to: (namespace, name).
pub fn slice_service(slice: &EndpointSlice) -> Option<(String, String)> {
    Some((slice.namespace()?, slice.labels().get(SERVICE_NAME_LABEL)?.clone()))
}

fn rejection(key: ObjectKey, message: String) -> Rejection {
    Rejection { source: SOURCE.to_string(), key: Some(key), message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("a Kubernetes object")
    }

    #[test]
    fn namespaces_read_the_mesh_labels() {
        let ns: Namespace = from(
            json!({"metadata": {"name": "shop", "labels": {"strait.dev/mesh": "enabled", "strait.dev/mtls-mode": "PERMISSIVE"}}}),
        );
        let (n, warning) = namespace(&ns);
        assert!(n.meshed && n.mtls_mode == MtlsMode::Permissive && warning.is_none());
        let ns: Namespace = from(
            json!({"metadata": {"name": "shop", "labels": {"strait.dev/mesh": "enabled", "strait.dev/mtls-mode": "LOOSE"}}}),
        );
        let (n, warning) = namespace(&ns);
        assert!(n.meshed && n.mtls_mode == MtlsMode::Strict);
        assert!(warning.expect("a warning").contains("strait.dev/mtls-mode"));
    }

    #[test]
    fn pods_become_workloads_when_scheduled_with_an_address() {
        let pod = |phase: &str, ip: Option<&str>, host_network: bool| -> Pod {
            from(json!({
                "metadata": {"name": "p", "namespace": "shop", "labels": {"app": "reviews"}},
                "spec": {"nodeName": "node-a", "serviceAccountName": "reviews", "hostNetwork": host_network, "containers": []},
                "status": {"phase": phase, "podIP": ip},
            }))
        };
        let w = workload(&pod("Running", Some("10.0.0.5"), false), true).expect("a workload").expect("valid");
        let Object::Workload(w) = w.object else { panic!("a workload") };
        assert_eq!((w.node.as_str(), w.service_account.as_str(), w.meshed), ("node-a", "reviews", Some(true)));
        assert!(workload(&pod("Pending", None, false), true).is_none());
        assert!(workload(&pod("Succeeded", Some("10.0.0.5"), false), true).is_none());
        assert!(workload(&pod("Running", Some("10.0.0.5"), true), true).is_none());
        let bad = workload(&pod("Running", Some("10.0.0.500"), false), true).expect("seen").expect_err("bad ip");
        assert!(bad.message.starts_with("status.podIP: "), "{}", bad.message);
    }

    #[test]
    fn services_take_ready_endpoints_and_named_ports_from_slices() {
        let svc: Service = from(json!({
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [
                {"name": "http", "port": 9080, "targetPort": "web", "appProtocol": "http"},
                {"name": "metrics", "port": 9090, "targetPort": 19090},
            ]},
        }));
        let slice: EndpointSlice = from(json!({
            "metadata": {"name": "reviews-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.1"]},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
            ],
        }));
        assert_eq!(slice_service(&slice), Some(("shop".into(), "reviews".into())));
        let Object::Service(s) = service(&svc, &[&slice]).expect("valid").object else { panic!("a service") };
        assert_eq!(s.addresses, vec!["10.96.0.10".parse::<IpAddr>().expect("ip")]);
        assert_eq!(s.ports[0].target_port, Some(8080));
        assert_eq!(s.ports[0].app_protocol.as_deref(), Some("http"));
        assert_eq!(s.ports[1].target_port, Some(19090));
        let addresses: Vec<String> = s.endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.2"]);
    }
}
