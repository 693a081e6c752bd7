//! Per-node scoping: what each node proxy receives out of the whole mesh (see `control/PROTOCOL.md`, "What a
//! node receives").
//!
//! Any meshed pod may dial any service or any pod address (the egress policy only concerns hosts outside the
//! mesh). So the source
//! side of every node with a meshed pod needs every service (addresses, ports, endpoints, routes and
//! destination policies) and every workload's address, node, identity and tunnel port (to reach a pod, or an
//! endpoint, through its node's tunnel). What it does not need is trimmed:
//!
//! - a remote workload's labels, except `app` and `version` (telemetry names peers by them) and the keys
//!   some DestinationPolicy's subsets select on (the balancer picks a subset's endpoints by their labels);
//! - AuthorizationPolicies that select no meshed workload of the node (only the destination side reads them,
//!   for its own workloads);
//! - everything, for a node that runs no meshed workload (no traffic passes its proxy).
//!
//! A [`Catalog`] is built once per published version; each resource sits behind an `Arc` shared by every
//! node's view and kept from the previous version when unchanged, so a node's view costs pointer copies and
//! the diff of two views mostly pointer comparisons.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use strait_api::delta::{resources, Resource};
use strait_api::{MeshConfig, ServiceRef, AUTHORIZATION_ROOT_NAMESPACE};

use crate::interest::Interests;

/// Labels the proxies' telemetry reads from any peer workload (Istio's `*_app` and `*_version` labels).
const TELEMETRY_LABELS: [&str; 2] = ["app", "version"];

/// One node's configuration: shared resources in canonical order.
pub type NodeView = Vec<Arc<Resource>>;

/// One published version of the mesh, ready to be cut per node.
#[derive(Debug, Default)]
pub struct Catalog {
    trust_domain: String,
    /// Namespaces and services, before and after the workloads in canonical order.
    namespaces: Vec<Arc<Resource>>,
    workloads: Vec<ScopedWorkload>,
    services: Vec<Arc<Resource>>,
    policies: Vec<ScopedPolicy>,
    /// TrafficRoutes, DestinationPolicies, PeerAuthentications, external services and the mesh settings, in
    /// canonical order.
    routing: Vec<Arc<Resource>>,
    /// Nodes that run at least one meshed workload.
    served: HashSet<String>,
    /// Protocol 3: each service as every node sees it before subscribing (no endpoints), parallel to `services`.
    frontends: Vec<Arc<Resource>>,
    services_by_name: HashMap<ServiceRef, usize>,
    /// Protocol 3: for each service (parallel to `services`), the services whose endpoints a subscriber needs
    /// with it: itself and the destinations of the TrafficRoutes for it (its traffic may be routed there).
    reach: Vec<Vec<usize>>,
    /// For each service (parallel to `services`), the workloads at its endpoint addresses.
    endpoint_workloads: Vec<Vec<usize>>,
    /// For each service (parallel to `services`), by node: the service with only the endpoints on that node.
    /// The destination side reads a service's endpoints for its own pods (declared protocol, the service name in
    /// telemetry, escaped slashes), so a node gets those without subscribing.
    local_endpoints: Vec<HashMap<String, Arc<Resource>>>,
    workloads_by_address: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct ScopedWorkload {
    node: String,
    /// As the workload's own node sees it.
    local: Arc<Resource>,
    /// As every other node sees it (labels trimmed).
    remote: Arc<Resource>,
}

#[derive(Debug)]
struct ScopedPolicy {
    resource: Arc<Resource>,
    /// The nodes running a meshed workload the policy selects.
    nodes: HashSet<String>,
}

impl Catalog {
    /// The catalog of `mesh` (the whole mesh, as `translate` renders it), reusing `previous`'s `Arc`s for
    /// resources that did not change.
    pub fn build(mesh: &MeshConfig, previous: Option<&Catalog>) -> Catalog {
        let empty = Catalog::default();
        let previous = previous.unwrap_or(&empty);
        let all = resources(mesh);
        let label_keys = remote_label_keys(mesh);
        let mut catalog = Catalog { trust_domain: mesh.trust_domain.clone(), ..Catalog::default() };
        let meshed: Vec<&strait_api::Workload> = mesh.workloads.iter().filter(|w| w.meshed).collect();
        let old_policies: Vec<Arc<Resource>> = previous.policies.iter().map(|p| p.resource.clone()).collect();
        catalog.served = meshed.iter().map(|w| w.node.clone()).collect();
        for resource in all {
            match &resource {
                Resource::Namespace(_) => catalog.namespaces.push(reuse(&previous.namespaces, resource)),
                Resource::Service(s) => {
                    let endpoints = s.endpoints.iter().filter_map(|e| catalog.workloads_by_address.get(&e.address));
                    catalog.endpoint_workloads.push(endpoints.copied().collect());
                    let index = catalog.services.len();
                    let name = ServiceRef::new(&s.name, &s.namespace);
                    let before = previous.services_by_name.get(&name).map(|&i| &previous.local_endpoints[i]);
                    catalog.local_endpoints.push(local_endpoints(
                        s,
                        &catalog.workloads,
                        &catalog.workloads_by_address,
                        before,
                    ));
                    catalog.services_by_name.insert(name, index);
                    let mut frontend = s.clone();
                    frontend.endpoints.clear();
                    catalog.frontends.push(reuse(&previous.frontends, Resource::Service(frontend)));
                    catalog.services.push(reuse(&previous.services, resource));
                }
                // Mesh-wide settings, PeerAuthentications (read by the destination side, cheap to send to all)
                // and external hosts (any source may dial them) go to every served node, like routes.
                Resource::TrafficRoute(_)
                | Resource::DestinationPolicy(_)
                | Resource::PeerAuthentication(_)
                | Resource::ExternalService(_)
                | Resource::MeshSettings(_) => catalog.routing.push(reuse(&previous.routing, resource)),
                Resource::Workload(w) => {
                    let mut trimmed = w.clone();
                    trimmed.labels.retain(|k, _| label_keys.contains(k.as_str()));
                    let node = w.node.clone();
                    catalog.workloads_by_address.insert(w.address, catalog.workloads.len());
                    let before = previous.workloads.binary_search_by(|p| p.local.sort_key().cmp(&resource.sort_key()));
                    let before = before.ok().map(|i| &previous.workloads[i]);
                    let remote = Resource::Workload(trimmed);
                    let remote = match before {
                        Some(p) if *p.remote == remote => p.remote.clone(),
                        _ => Arc::new(remote),
                    };
                    let local = match before {
                        Some(p) if *p.local == resource => p.local.clone(),
                        _ => Arc::new(resource),
                    };
                    catalog.workloads.push(ScopedWorkload { node, local, remote });
                }
                // Never in a rendered mesh: answers are per node, added by `for_node_on_demand`.
                Resource::Answer(_) => {}
                Resource::AuthorizationPolicy(p) => {
                    let selector = p.spec.selector.as_ref();
                    let nodes = meshed
                        .iter()
                        .filter(|w| w.namespace == p.namespace || p.namespace == AUTHORIZATION_ROOT_NAMESPACE)
                        .filter(|w| selector.is_none_or(|s| s.matches(&w.labels)))
                        .map(|w| w.node.clone())
                        .collect();
                    catalog.policies.push(ScopedPolicy { resource: reuse(&old_policies, resource), nodes });
                }
            }
        }
        catalog.reach = route_reach(mesh, &catalog.services_by_name);
        catalog
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// What `node` receives, in canonical order: nothing for a node without meshed workloads.
    pub fn for_node(&self, node: &str) -> NodeView {
        if !self.served.contains(node) {
            return Vec::new();
        }
        let mut view =
            Vec::with_capacity(self.namespaces.len() + self.workloads.len() + self.services.len() + self.routing.len());
        view.extend(self.namespaces.iter().cloned());
        view.extend(self.workloads.iter().map(|w| if w.node == node { w.local.clone() } else { w.remote.clone() }));
        view.extend(self.services.iter().cloned());
        view.extend(self.policies.iter().filter(|p| p.nodes.contains(node)).map(|p| p.resource.clone()));
        view.extend(self.routing.iter().cloned());
        view
    }
}

impl Catalog {
    /// What `node` receives in protocol 3 with `interests`: its own workloads whole, every service without
    /// endpoints but those it subscribed to (and their route destinations), with the workloads behind those
    /// endpoints and at the subscribed addresses (labels trimmed as in `for_node`), policies and routing as
    /// `for_node`, and one answer per interest. Nothing for a node without meshed workloads.
    pub fn for_node_on_demand(&self, node: &str, interests: &Interests) -> NodeView {
        if !self.served.contains(node) {
            return Vec::new();
        }
        let mut full: BTreeSet<usize> = BTreeSet::new();
        for service in interests.services() {
            if let Some(&index) = self.services_by_name.get(service) {
                full.extend(self.reach[index].iter().copied());
            }
        }
        let mut workloads: BTreeSet<usize> =
            full.iter().flat_map(|&s| self.endpoint_workloads[s].iter().copied()).collect();
        workloads.extend(interests.addresses().iter().filter_map(|a| self.workloads_by_address.get(a)));
        let mut view =
            Vec::with_capacity(self.namespaces.len() + workloads.len() + self.services.len() + self.routing.len());
        view.extend(self.namespaces.iter().cloned());
        // Canonical order: the catalog's own, over the local workloads and the subscribed ones together.
        for (index, w) in self.workloads.iter().enumerate() {
            if w.node == node {
                view.push(w.local.clone());
            } else if workloads.contains(&index) {
                view.push(w.remote.clone());
            }
        }
        for (index, (service, frontend)) in self.services.iter().zip(&self.frontends).enumerate() {
            view.push(match self.local_endpoints[index].get(node) {
                _ if full.contains(&index) => service.clone(),
                Some(local) => local.clone(),
                None => frontend.clone(),
            });
        }
        view.extend(self.policies.iter().filter(|p| p.nodes.contains(node)).map(|p| p.resource.clone()));
        view.extend(self.routing.iter().cloned());
        view.extend(interests.answers().cloned());
        view
    }
}

/// `service` with only the endpoints on each node that has any, by node (reusing `before`'s `Arc`s when equal).
fn local_endpoints(
    service: &strait_api::Service,
    workloads: &[ScopedWorkload],
    by_address: &HashMap<IpAddr, usize>,
    before: Option<&HashMap<String, Arc<Resource>>>,
) -> HashMap<String, Arc<Resource>> {
    let mut per_node: HashMap<&str, strait_api::Service> = HashMap::new();
    for endpoint in &service.endpoints {
        let Some(node) = by_address.get(&endpoint.address).map(|&i| workloads[i].node.as_str()) else { continue };
        let local =
            per_node.entry(node).or_insert_with(|| strait_api::Service { endpoints: Vec::new(), ..service.clone() });
        local.endpoints.push(endpoint.clone());
    }
    per_node
        .into_iter()
        .map(|(node, local)| {
            let local = Resource::Service(local);
            let resource = match before.and_then(|b| b.get(node)) {
                Some(previous) if **previous == local => previous.clone(),
                _ => Arc::new(local),
            };
            (node.to_string(), resource)
        })
        .collect()
}

/// For each service (by index), the services whose endpoints its subscribers need: itself, then the
/// destinations of every TrafficRoute for it (hosts resolved in the route's namespace, as the proxy does).
fn route_reach(mesh: &MeshConfig, services: &HashMap<ServiceRef, usize>) -> Vec<Vec<usize>> {
    let mut reach: Vec<Vec<usize>> = (0..services.len()).map(|i| vec![i]).collect();
    for route in &mesh.traffic_routes {
        let resolve = |host: &str| ServiceRef::parse(host, &route.namespace).and_then(|s| services.get(&s).copied());
        let destinations: Vec<usize> =
            route.spec.http.iter().flat_map(|rule| &rule.route).filter_map(|d| resolve(&d.destination.host)).collect();
        for host in route.spec.hosts.iter().filter_map(|h| resolve(h)) {
            for &destination in &destinations {
                if !reach[host].contains(&destination) {
                    reach[host].push(destination);
                }
            }
        }
    }
    reach
}

/// The label keys a node needs of workloads on other nodes.
fn remote_label_keys(mesh: &MeshConfig) -> BTreeSet<&str> {
    let mut keys: BTreeSet<&str> = TELEMETRY_LABELS.into_iter().collect();
    for policy in &mesh.destination_policies {
        for subset in &policy.spec.subsets {
            keys.extend(subset.labels.keys().map(String::as_str));
        }
    }
    keys
}

/// `resource`, behind the `Arc` `previous` (sorted) holds for it when equal, else a new one.
fn reuse(previous: &[Arc<Resource>], resource: Resource) -> Arc<Resource> {
    match previous.binary_search_by(|p| p.sort_key().cmp(&resource.sort_key())) {
        Ok(i) if *previous[i] == resource => previous[i].clone(),
        _ => Arc::new(resource),
    }
}

#[cfg(test)]
mod tests {
    use strait_api::delta::{apply, assemble, diff, ConfigDelta};

    use super::*;
    use crate::model::{Object, Snapshot};
    use crate::translate::translate;

    const MESH: &str = r#"
namespaces: [{name: shop}, {name: strait-system}]
workloads:
- {name: front, namespace: shop, serviceAccount: front, node: n1, address: 10.0.1.1, labels: {app: front, team: a}}
- {name: reviews-v1, namespace: shop, serviceAccount: reviews, node: n2, address: 10.0.2.1, labels: {app: reviews, version: v1, tier: gold, pod-template-hash: x1}}
- {name: reviews-v2, namespace: shop, serviceAccount: reviews, node: n3, address: 10.0.3.1, labels: {app: reviews, version: v2, tier: gold}}
- {name: legacy, namespace: shop, node: n4, address: 10.0.4.1, meshed: false}
services:
- {name: reviews, namespace: shop, addresses: [10.96.0.1], ports: [{name: http, port: 9080}], selector: {app: reviews}}
authorizationPolicies:
- {name: reviews-only, namespace: shop, spec: {selector: {matchLabels: {app: reviews}}, action: ALLOW, rules: [{}]}}
- {name: front-only, namespace: shop, spec: {selector: {matchLabels: {app: front}}, action: DENY, rules: [{}]}}
- {name: mesh-wide, namespace: strait-system, spec: {action: DENY, rules: [{to: [{operation: {ports: [22]}}]}]}}
destinationPolicies:
- {name: reviews, namespace: shop, spec: {host: reviews, subsets: [{name: gold, labels: {tier: gold}}]}}
"#;

    fn snapshot(yaml: &str) -> Snapshot {
        let doc: serde_yaml::Value = serde_yaml::from_str(yaml).expect("test mesh");
        let mut objects = Vec::new();
        let list = |key: &str| doc.get(key).and_then(|v| v.as_sequence()).cloned().unwrap_or_default();
        for n in list("namespaces") {
            objects.push(Object::Namespace(serde_yaml::from_value(n).expect("namespace")));
        }
        for w in list("workloads") {
            objects.push(Object::Workload(serde_yaml::from_value(w).expect("workload")));
        }
        for s in list("services") {
            objects.push(Object::Service(serde_yaml::from_value(s).expect("service")));
        }
        for p in list("authorizationPolicies") {
            objects.push(Object::AuthorizationPolicy(serde_yaml::from_value(p).expect("policy")));
        }
        for d in list("destinationPolicies") {
            objects.push(Object::DestinationPolicy(serde_yaml::from_value(d).expect("destination policy")));
        }
        for r in list("trafficRoutes") {
            objects.push(Object::TrafficRoute(serde_yaml::from_value(r).expect("route")));
        }
        Snapshot::from_objects(&objects)
    }

    fn catalog(yaml: &str, previous: Option<&Catalog>) -> Catalog {
        Catalog::build(&translate(&snapshot(yaml), "cluster.local"), previous)
    }

    fn config(catalog: &Catalog, node: &str) -> MeshConfig {
        assemble(catalog.trust_domain(), catalog.for_node(node).iter().map(|r| (**r).clone()))
    }

    fn policies(config: &MeshConfig) -> Vec<&str> {
        config.authorization_policies.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn a_node_gets_every_address_but_only_what_its_own_workloads_need() {
        let catalog = catalog(MESH, None);
        let n1 = config(&catalog, "n1");
        n1.validate().expect("a scoped configuration is valid on its own");
        assert_eq!(n1.workloads.len(), 4, "any pod may dial any pod: every address, node and identity");
        let labels = |config: &MeshConfig, name: &str| {
            config.workloads.iter().find(|w| w.name == name).map(|w| w.labels.clone()).unwrap_or_default()
        };
        assert_eq!(labels(&n1, "front").len(), 2, "its own workload whole");
        let remote: Vec<String> = labels(&n1, "reviews-v1").into_keys().collect();
        assert_eq!(remote, ["app", "tier", "version"], "telemetry's and the subsets' labels, no others");
        assert_eq!(n1.services[0].endpoints.len(), 2);
        assert_eq!(n1.destination_policies.len(), 1);
        assert_eq!(policies(&n1), ["front-only", "mesh-wide"], "policies of its own workloads and the mesh's");
        assert_eq!(policies(&config(&catalog, "n2")), ["reviews-only", "mesh-wide"]);
        assert!(config(&catalog, "n4").workloads.is_empty(), "no meshed workload: no traffic, nothing to know");
        assert!(catalog.for_node("n9").is_empty());
    }

    /// The nodes whose configuration changes when the mesh goes from `before` to `after`.
    fn changed_nodes(before: &str, after: &str) -> Vec<&'static str> {
        let old = catalog(before, None);
        let new = catalog(after, Some(&old));
        ["n1", "n2", "n3", "n4"]
            .into_iter()
            .filter(|node| !diff(&old.for_node(node), &new.for_node(node)).is_empty())
            .collect()
    }

    #[test]
    fn a_change_reaches_only_the_nodes_whose_configuration_it_changes() {
        // A label nothing remote reads: only the workload's own node.
        let relabelled = MESH.replace("pod-template-hash: x1", "pod-template-hash: x2");
        assert_eq!(changed_nodes(MESH, &relabelled), ["n2"]);
        // A policy for reviews: the nodes running reviews.
        let policy = MESH.replace("action: ALLOW, rules: [{}]", "action: ALLOW, rules: [{}, {}]");
        assert_eq!(changed_nodes(MESH, &policy), ["n2", "n3"]);
        // A label a subset selects on: every node with meshed workloads (they balance over subsets).
        let subset = MESH.replace("version: v2, tier: gold", "version: v2, tier: silver");
        assert_eq!(changed_nodes(MESH, &subset), ["n1", "n2", "n3"]);
        // A new pod: every node that may dial it.
        let added = MESH.replace(
            "- {name: legacy",
            "- {name: extra, namespace: shop, node: n3, address: 10.0.3.2}\n- {name: legacy",
        );
        assert_eq!(changed_nodes(MESH, &added), ["n1", "n2", "n3"]);
        assert!(changed_nodes(MESH, MESH).is_empty());
    }

    #[test]
    fn unchanged_resources_keep_their_shared_arcs() {
        let old = catalog(MESH, None);
        let relabelled = MESH.replace("pod-template-hash: x1", "pod-template-hash: x2");
        let new = catalog(&relabelled, Some(&old));
        let (a, b) = (old.for_node("n1"), new.for_node("n1"));
        assert!(a.iter().zip(&b).all(|(a, b)| Arc::ptr_eq(a, b)), "n1's view is the same objects");
    }

    fn interests(services: &[&str], addresses: &[&str]) -> Interests {
        let request = strait_api::protocol::SubscribeRequest {
            replace: true,
            services: services.iter().map(|s| ServiceRef::new(*s, "shop")).collect(),
            addresses: addresses.iter().map(|a| a.parse().expect("test address")).collect(),
        };
        Interests::default().with(&request).expect("within bounds")
    }

    fn on_demand(catalog: &Catalog, node: &str, interests: &Interests) -> MeshConfig {
        assemble(catalog.trust_domain(), catalog.for_node_on_demand(node, interests).iter().map(|r| (**r).clone()))
    }

    fn names<T>(list: &[T], name: impl Fn(&T) -> &str) -> Vec<&str> {
        list.iter().map(name).collect()
    }

    #[test]
    fn on_demand_a_node_gets_its_own_workloads_service_frontends_and_what_it_subscribed_to() {
        let catalog = catalog(MESH, None);
        let bare = on_demand(&catalog, "n1", &Interests::default());
        bare.validate().expect("valid on its own");
        assert_eq!(names(&bare.workloads, |w| &w.name), ["front"], "only its own workloads");
        assert_eq!(bare.services.len(), 1, "every service's frontend");
        assert!(bare.services[0].endpoints.is_empty(), "without endpoints");
        assert_eq!(bare.services[0].addresses, config(&catalog, "n1").services[0].addresses);
        assert_eq!(policies(&bare), ["front-only", "mesh-wide"], "policies as in protocol 2");
        assert_eq!(bare.destination_policies.len(), 1);
        assert!(bare.answers.is_empty());
        let n2 = on_demand(&catalog, "n2", &Interests::default());
        let local: Vec<_> = n2.services[0].endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(local, ["10.0.2.1"], "the endpoints on the node itself (its destination side reads them)");
        assert!(n2.answers.is_empty(), "which answers nothing: the source side still subscribes");

        let subscribed = on_demand(&catalog, "n1", &interests(&["reviews", "nosuch"], &["10.0.4.1", "192.0.2.7"]));
        subscribed.validate().expect("valid on its own");
        assert_eq!(names(&subscribed.workloads, |w| &w.name), ["front", "legacy", "reviews-v1", "reviews-v2"]);
        assert_eq!(subscribed.services[0].endpoints.len(), 2, "the subscribed service's endpoints");
        let remote = subscribed.workloads.iter().find(|w| w.name == "reviews-v1").expect("reviews-v1");
        assert!(!remote.labels.contains_key("pod-template-hash"), "remote workloads trimmed as in protocol 2");
        let answers: Vec<(&str, &str)> = subscribed.answers.iter().map(|a| a.key_parts()).collect();
        assert_eq!(
            answers,
            [("", "10.0.4.1"), ("", "192.0.2.7"), ("shop", "nosuch"), ("shop", "reviews")],
            "every interest answered, known or not (192.0.2.7 is not in the mesh)"
        );
        assert!(catalog.for_node_on_demand("n4", &interests(&["reviews"], &[])).is_empty(), "no meshed workload");
    }

    /// The nodes whose protocol 3 view changes from `before` to `after`, with n1 subscribed to reviews, n2 to
    /// nothing, n3 to the address 10.0.3.9 (nobody's, at first).
    fn changed_on_demand(before: &str, after: &str) -> Vec<&'static str> {
        let wants =
            [("n1", interests(&["reviews"], &[])), ("n2", interests(&[], &[])), ("n3", interests(&[], &["10.0.3.9"]))];
        let old = catalog(before, None);
        let new = catalog(after, Some(&old));
        wants
            .iter()
            .filter(|(node, wants)| {
                !diff(&old.for_node_on_demand(node, wants), &new.for_node_on_demand(node, wants)).is_empty()
            })
            .map(|(node, _)| *node)
            .collect()
    }

    #[test]
    fn on_demand_a_pod_change_reaches_its_own_node_and_its_subscribers_only() {
        // A pod behind reviews on n2: n2 (its node) and n1 (subscribed to reviews); not n3.
        let added = MESH.replace(
            "- {name: legacy",
            "- {name: reviews-v3, namespace: shop, serviceAccount: reviews, node: n2, address: 10.0.2.2, labels: {app: reviews}}\n- {name: legacy",
        );
        assert_eq!(changed_on_demand(MESH, &added), ["n1", "n2"]);
        // A pod behind no subscribed service, on a node nobody watches: its node only.
        let other = MESH.replace(
            "- {name: legacy",
            "- {name: batch, namespace: shop, node: n2, address: 10.0.2.3, labels: {app: batch}}\n- {name: legacy",
        );
        assert_eq!(changed_on_demand(MESH, &other), ["n2"]);
        // A pod that takes an address n3 was told is not in the mesh: n3 gets it (never a stale answer).
        let reused = MESH.replace(
            "- {name: legacy",
            "- {name: newcomer, namespace: shop, node: n1, address: 10.0.3.9, labels: {app: batch}}\n- {name: legacy",
        );
        assert_eq!(changed_on_demand(MESH, &reused), ["n1", "n3"]);
        let old = catalog(MESH, None);
        let new = catalog(&reused, Some(&old));
        let n3 = on_demand(&new, "n3", &interests(&[], &["10.0.3.9"]));
        assert!(n3.workloads.iter().any(|w| w.name == "newcomer"), "the address now names its workload");
        assert!(changed_on_demand(MESH, MESH).is_empty());
    }

    #[test]
    fn on_demand_a_subscribed_service_brings_the_endpoints_its_routes_send_to() {
        let routed = MESH.replace(
            "selector: {app: reviews}}\n",
            "selector: {app: reviews}}\n- {name: front, namespace: shop, addresses: [10.96.0.2], ports: [{name: http, port: 80}], selector: {app: front}}\n",
        ) + "trafficRoutes:\n- {name: canary, namespace: shop, spec: {hosts: [front], http: [{route: [{destination: {host: reviews.shop.svc.cluster.local}}]}]}}\n";
        let catalog = catalog(&routed, None);
        let n3 = on_demand(&catalog, "n3", &interests(&["front"], &[]));
        let endpoints: Vec<(&str, usize)> = n3.services.iter().map(|s| (s.name.as_str(), s.endpoints.len())).collect();
        assert_eq!(endpoints, [("front", 1), ("reviews", 2)], "front's route sends to reviews");
        assert_eq!(names(&n3.workloads, |w| &w.name), ["front", "reviews-v1", "reviews-v2"]);
    }

    /// Scoping then deltas: whatever sequence of meshes, a node that applies each delta in turn holds exactly
    /// the full scoped configuration of the last one.
    #[test]
    fn applying_deltas_in_order_equals_the_full_snapshot() {
        let meshes = [
            MESH.to_string(),
            MESH.replace("pod-template-hash: x1", "pod-template-hash: x2"),
            MESH.replace("node: n3, address: 10.0.3.1", "node: n1, address: 10.0.3.1"),
            MESH.replace("- {name: front-only", "- {name: front-too").replace("team: a", "team: b"),
            MESH.replace("subsets: [{name: gold, labels: {tier: gold}}]", "subsets: []"),
            MESH.to_string(),
        ];
        for node in ["n1", "n2", "n3", "n4"] {
            let mut previous: Option<Catalog> = None;
            let mut held = MeshConfig::default();
            let mut held_view: NodeView = Vec::new();
            let mut on_demand_held = MeshConfig::default();
            let mut on_demand_view: NodeView = Vec::new();
            let wants = [interests(&[], &[]), interests(&["reviews"], &["10.0.3.1", "10.0.9.9"]), interests(&[], &[])];
            for (i, mesh) in meshes.iter().enumerate() {
                let next = catalog(mesh, previous.as_ref());
                let view = next.for_node(node);
                let delta: ConfigDelta = diff(&held_view, &view);
                held = apply(&held, &delta).expect("applies");
                assert_eq!(held, config(&next, node), "node {node}");
                // Protocol 3, with the interests changing along the way.
                let wants = &wants[i % wants.len()];
                let next_on_demand = next.for_node_on_demand(node, wants);
                on_demand_held = apply(&on_demand_held, &diff(&on_demand_view, &next_on_demand)).expect("applies");
                assert_eq!(on_demand_held, on_demand(&next, node, wants), "node {node}, on demand");
                on_demand_view = next_on_demand;
                held_view = view;
                previous = Some(next);
            }
        }
    }
}
