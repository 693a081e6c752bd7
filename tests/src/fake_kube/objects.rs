//! The objects a small cluster is made of, as the API server would hold them: namespaces (meshed or not),
//! running pods, the node proxies' host-network pods, a Service with one HTTP port (9080) and its
//! EndpointSlice. For tests that fill the fake API server ([`super::FakeKube::apply`]).

use serde_json::{json, Value};

/// The label that puts a namespace in the mesh.
pub const MESH_LABEL: &str = "strait.dev/mesh";
/// The TokenReview `extra` key that binds a proxy's token to its node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// A namespace; `meshed` labels it `strait.dev/mesh=enabled`.
pub fn namespace(name: &str, meshed: bool) -> Value {
    let labels = if meshed { json!({ MESH_LABEL: "enabled" }) } else { json!({}) };
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A running, ready pod on `node` with address `ip` and ServiceAccount `sa`.
pub fn pod(ns: &str, name: &str, node: &str, ip: &str, sa: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app", "image": "app"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// A node proxy's pod (strait-system, host network): tokens bound to it name its node.
pub fn proxy_pod(name: &str, node: &str, ip: &str) -> Value {
    let mut p = pod("strait-system", name, node, ip, "strait-proxy", json!({"app": "strait-proxy"}));
    p["spec"]["hostNetwork"] = json!(true);
    p
}

/// A ClusterIP Service selecting `app: <name>`, port `http` 9080 (appProtocol http) to target port 9080.
pub fn service(ns: &str, name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "ports": [{"name": "http", "port": 9080, "targetPort": 9080, "appProtocol": "http"}],
            "selector": {"app": name},
        },
    })
}

/// The EndpointSlice of [`service`]: `addresses` ready, port 9080.
pub fn slice(ns: &str, service: &str, addresses: &[&str]) -> Value {
    let endpoints: Vec<Value> =
        addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// A ClusterIP service selecting `app: <name>`, with one port (`appProtocol` when given, e.g. `http`).
pub fn service_with_port(ns: &str, name: &str, cluster_ip: &str, port: u16, app_protocol: Option<&str>) -> Value {
    let mut port = json!({"name": "main", "port": port, "targetPort": port});
    if let Some(protocol) = app_protocol {
        port["appProtocol"] = json!(protocol);
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": [port], "selector": {"app": name}},
    })
}

/// The service's one EndpointSlice, every address ready.
pub fn endpoint_slice(ns: &str, service: &str, port: u16, addresses: &[String]) -> Value {
    let endpoints: Vec<Value> =
        addresses.iter().map(|a| json!({"addresses": [a], "conditions": {"ready": true}})).collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "main", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// A DestinationPolicy for `host` with subsets v1 and v2 (label `version`).
pub fn versioned_policy(ns: &str, host: &str) -> Value {
    json!({
        "apiVersion": "strait.dev/v1alpha1", "kind": "DestinationPolicy",
        "metadata": {"name": host, "namespace": ns},
        "spec": {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]},
    })
}

/// A TrafficRoute for `host` splitting between subsets v1 and v2 by weight (needs [`versioned_policy`]).
pub fn weighted_route(ns: &str, host: &str, v1_weight: u32) -> Value {
    json!({
        "apiVersion": "strait.dev/v1alpha1", "kind": "TrafficRoute",
        "metadata": {"name": host, "namespace": ns},
        "spec": {
            "hosts": [host],
            "http": [{"route": [
                {"destination": {"host": host, "subset": "v1"}, "weight": v1_weight},
                {"destination": {"host": host, "subset": "v2"}, "weight": 100 - v1_weight.min(100)},
            ]}],
        },
    })
}
