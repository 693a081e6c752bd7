//! The objects a small cluster is made of, as the API server would hold them: namespaces (meshed or not),
//! running pods, the node proxies' host-network pods, a Service with one HTTP port (9080) and its
//! EndpointSlice. For tests that fill the fake API server ([`super::FakeKube::apply`]).

use serde_json::{json, Value};

/// A namespace; `meshed` labels it `strait.dev/mesh=enabled`.
pub fn namespace(name: &str, meshed: bool) -> Value {
    let labels = if meshed { json!({"strait.dev/mesh": "enabled"}) } else { json!({}) };
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
