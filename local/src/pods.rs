//! `strait local --netns`: where each workload of the mesh description lives in the namespace cluster (one pod
//! per workload, on the node it names), the service addresses it gets instead of loopback ones, and the mesh
//! description rewritten with those addresses for the control plane.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Context as _};
use serde_yaml::Value;
use strait_control::files::FileContents;
use strait_control::model::{Service, Workload};

/// The first service address (VIP) handed out; the next service addresses get .11, .12, ... The cluster
/// routes nothing for 10.96.0.0/12, so pods send it to their node, where the proxy's rules capture it.
pub const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// One node of the namespace cluster and the workloads running on it, one pod each.
#[derive(Debug)]
pub struct NodePods {
    pub node: String,
    pub pods: Vec<PodWorkload>,
}

#[derive(Debug)]
pub struct PodWorkload {
    /// The pod's name in the cluster (the workload's name, or `<namespace>-<name>` where that is ambiguous).
    pub pod: String,
    pub workload: Workload,
}

/// Nodes in name order (as the loopback mesh numbers them), each with its workloads in the order given.
pub fn layout(workloads: &[Workload]) -> Vec<NodePods> {
    let nodes: BTreeSet<&str> = workloads.iter().map(|w| w.node.as_str()).collect();
    let name_count = |name: &str| workloads.iter().filter(|w| w.name == name).count();
    nodes
        .iter()
        .map(|node| NodePods {
            node: node.to_string(),
            pods: workloads
                .iter()
                .filter(|w| w.node == *node)
                .map(|w| {
                    let pod = if name_count(&w.name) > 1 || nodes.contains(w.name.as_str()) {
                        format!("{}-{}", w.namespace, w.name)
                    } else {
                        w.name.clone()
                    };
                    PodWorkload { pod, workload: w.clone() }
                })
                .collect(),
        })
        .collect()
}

/// Every service address, in order of first appearance, mapped to [`FIRST_VIP`], .11, ...
pub fn service_vips(services: &[Service]) -> anyhow::Result<BTreeMap<IpAddr, IpAddr>> {
    let mut vips = BTreeMap::new();
    for address in services.iter().flat_map(|s| &s.addresses) {
        if vips.contains_key(address) {
            continue;
        }
        let last = u8::try_from(u32::from(FIRST_VIP.octets()[3]) + vips.len() as u32)
            .ok()
            .filter(|last| *last < 255)
            .context("--netns: more service addresses than 10.96.0.10-254 holds")?;
        let [a, b, c, _] = FIRST_VIP.octets();
        vips.insert(*address, IpAddr::V4(Ipv4Addr::new(a, b, c, last)));
    }
    Ok(vips)
}

/// Rewrites every `kind: Mesh` document of `files` with `addresses` (old -> new): the workloads' addresses,
/// the services' addresses and their hand-listed endpoints. Returns the files that hold such a document,
/// rewritten and headed by `header` (comment lines); other documents of those files are kept as they are.
pub fn translate(
    files: &FileContents,
    addresses: &BTreeMap<IpAddr, IpAddr>,
    header: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (name, bytes) in files {
        // Unreadable files are the control plane's to report; they hold nothing to translate.
        let Ok(bytes) = bytes else { continue };
        let Ok(text) = std::str::from_utf8(bytes) else { continue };
        let mut documents = Vec::new();
        let mut has_mesh = false;
        for document in serde_yaml::Deserializer::from_str(text) {
            let Ok(mut value) = <Value as serde::Deserialize>::deserialize(document) else {
                // A syntax error: the control plane reports it; keep the file as it is.
                documents.clear();
                has_mesh = false;
                break;
            };
            if value.is_null() {
                continue;
            }
            if value.get("kind").and_then(Value::as_str) == Some("Mesh") {
                has_mesh = true;
                rewrite_mesh(&mut value, addresses).with_context(|| format!("translating {name}"))?;
            }
            documents.push(value);
        }
        if !has_mesh {
            continue;
        }
        let mut text = String::from(header);
        for (i, document) in documents.iter().enumerate() {
            if i > 0 {
                text.push_str("---\n");
            }
            text.push_str(&serde_yaml::to_string(document).with_context(|| format!("rendering {name}"))?);
        }
        out.push((name.clone(), text));
    }
    Ok(out)
}

fn rewrite_mesh(mesh: &mut Value, addresses: &BTreeMap<IpAddr, IpAddr>) -> anyhow::Result<()> {
    let Some(spec) = mesh.get_mut("spec") else { return Ok(()) };
    if let Some(workloads) = spec.get_mut("workloads").and_then(Value::as_sequence_mut) {
        for (i, workload) in workloads.iter_mut().enumerate() {
            if let Some(address) = workload.get_mut("address") {
                rewrite(address, addresses, &format!("spec.workloads[{i}].address"))?;
            }
        }
    }
    if let Some(services) = spec.get_mut("services").and_then(Value::as_sequence_mut) {
        for (i, service) in services.iter_mut().enumerate() {
            if let Some(list) = service.get_mut("addresses").and_then(Value::as_sequence_mut) {
                for (j, address) in list.iter_mut().enumerate() {
                    rewrite(address, addresses, &format!("spec.services[{i}].addresses[{j}]"))?;
                }
            }
            if let Some(endpoints) = service.get_mut("endpoints").and_then(Value::as_sequence_mut) {
                for (j, endpoint) in endpoints.iter_mut().enumerate() {
                    if let Some(address) = endpoint.get_mut("address") {
                        rewrite(address, addresses, &format!("spec.services[{i}].endpoints[{j}].address"))?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn rewrite(value: &mut Value, addresses: &BTreeMap<IpAddr, IpAddr>, field: &str) -> anyhow::Result<()> {
    let Some(text) = value.as_str() else { bail!("{field}: not an address") };
    let old: IpAddr = text.parse().with_context(|| format!("{field}: {text:?} is not an IP address"))?;
    let Some(new) = addresses.get(&old) else {
        bail!("{field}: {old} is neither a workload's nor a service's address, so --netns has no place for it")
    };
    *value = Value::String(new.to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "\
# a comment
apiVersion: strait.dev/v1alpha1
kind: Mesh
metadata: {name: local}
spec:
  workloads:
  - {name: client, namespace: demo, node: node-a, address: 127.0.0.1}
  - {name: reviews-v1, namespace: demo, node: node-b, address: 127.0.2.2, labels: {version: v1}}
  - {name: reviews-v2, namespace: demo, node: node-b, address: 127.0.2.3}
  services:
  - name: reviews
    namespace: demo
    addresses: [127.0.100.1]
    ports: [{name: http, port: 8080, targetPort: 9080}]
    endpoints: [{address: 127.0.2.2}]
---
apiVersion: strait.dev/v1alpha1
kind: TrafficRoute
metadata: {name: reviews, namespace: demo}
spec: {hosts: [reviews]}
";

    fn files(text: &str) -> FileContents {
        FileContents::from([
            ("mesh.yaml".to_string(), Ok(text.as_bytes().to_vec())),
            ("route.yaml".to_string(), Ok(b"kind: TrafficRoute\n".to_vec())),
        ])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("a test address")
    }

    #[test]
    fn rewrites_workload_service_and_endpoint_addresses_and_keeps_the_rest() {
        let map = BTreeMap::from([
            (ip("127.0.0.1"), ip("10.1.0.2")),
            (ip("127.0.2.2"), ip("10.2.0.2")),
            (ip("127.0.2.3"), ip("10.2.0.3")),
            (ip("127.0.100.1"), ip("10.96.0.10")),
        ]);
        let out = translate(&files(MESH), &map, "# generated\n").expect("translates");
        assert_eq!(out.len(), 1, "only the file holding the Mesh: {out:?}");
        let (name, text) = &out[0];
        assert_eq!(name, "mesh.yaml");
        assert!(text.starts_with("# generated\n"), "{text}");
        let mut discovered = strait_control::model::Discovered::default();
        strait_control::files::parse_file(name, text, &mut discovered);
        assert!(discovered.rejected.is_empty(), "{:?}", discovered.rejected);
        let mut workloads = Vec::new();
        let mut services = Vec::new();
        let mut routes = 0;
        for o in discovered.objects {
            match o.object {
                strait_control::model::Object::Workload(w) => workloads.push((w.name, w.address.to_string())),
                strait_control::model::Object::Service(s) => services.push(s),
                strait_control::model::Object::TrafficRoute(_) => routes += 1,
                _ => {}
            }
        }
        let workloads: Vec<(&str, &str)> = workloads.iter().map(|(n, a)| (n.as_str(), a.as_str())).collect();
        assert_eq!(workloads, [("client", "10.1.0.2"), ("reviews-v1", "10.2.0.2"), ("reviews-v2", "10.2.0.3")]);
        assert_eq!(services[0].addresses, [ip("10.96.0.10")]);
        assert_eq!(services[0].endpoints[0].address, ip("10.2.0.2"));
        assert_eq!(routes, 1, "the other documents stay");
    }

    #[test]
    fn an_address_nobody_holds_is_a_clear_error() {
        let map = BTreeMap::from([(ip("127.0.0.1"), ip("10.1.0.2"))]);
        let error = format!("{:#}", translate(&files(MESH), &map, "").expect_err("127.0.2.2 is unmapped"));
        assert!(error.contains("mesh.yaml") && error.contains("spec.workloads[1].address: 127.0.2.2"), "{error}");
    }

    fn workload(name: &str, namespace: &str, node: &str) -> Workload {
        serde_yaml::from_str(&format!("{{name: {name}, namespace: {namespace}, node: {node}, address: 127.0.0.1}}"))
            .expect("a test workload")
    }

    #[test]
    fn layout_orders_nodes_by_name_and_names_pods_unambiguously() {
        let workloads = [
            workload("web", "a", "node-b"),
            workload("client", "demo", "node-a"),
            workload("web", "b", "node-b"),
            workload("node-a", "demo", "node-b"),
        ];
        let layout = layout(&workloads);
        let names: Vec<(&str, Vec<&str>)> =
            layout.iter().map(|n| (n.node.as_str(), n.pods.iter().map(|p| p.pod.as_str()).collect())).collect();
        assert_eq!(names, [("node-a", vec!["client"]), ("node-b", vec!["a-web", "b-web", "demo-node-a"])]);
    }

    #[test]
    fn service_addresses_get_vips_in_order() {
        let service = |addresses: &str| -> Service {
            serde_yaml::from_str(&format!("{{name: s, namespace: n, addresses: {addresses}, ports: []}}"))
                .expect("a test service")
        };
        let vips =
            service_vips(&[service("[127.0.100.1, 127.0.100.2]"), service("[127.0.100.1, '::1']")]).expect("vips");
        assert_eq!(vips[&ip("127.0.100.1")], ip("10.96.0.10"));
        assert_eq!(vips[&ip("127.0.100.2")], ip("10.96.0.11"));
        assert_eq!(vips[&ip("::1")], ip("10.96.0.12"));
    }
}
