//! Pure functions from the accepted inputs ([`Snapshot`]) to what a node proxy runs on ([`MeshConfig`]), and
//! the checks that need more than one object (a route's subset must exist in its host's DestinationPolicy).
//!
//! Several DestinationPolicies for one host are merged field by field, in the snapshot's order (oldest first,
//! see `admit`), as Istio merges DestinationRules: each adds the fields and subsets the earlier ones left
//! unset. One that sets a field an earlier one set to something else conflicts: it is left out whole (never
//! half applied), and the earlier policy, with every route resolved against it, stays as it was.

use std::collections::BTreeMap;

use serde_json::Value;
use strait_api::{DestinationPolicySpec, Endpoint, MeshConfig, Named, NamespaceConfig};

use crate::model::{Kind, ObjectKey, Snapshot};

/// The whole mesh's configuration, every list in canonical order (`strait_api::delta`); each node receives
/// its own cut of it (`crate::scope`).
pub fn translate(snapshot: &Snapshot, trust_domain: &str) -> MeshConfig {
    let workloads: Vec<strait_api::Workload> = snapshot
        .workloads
        .iter()
        .map(|w| strait_api::Workload {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            node: w.node.clone(),
            address: w.address,
            labels: w.labels.clone(),
            meshed: snapshot.is_meshed(w),
            tunnel_port: w.tunnel_port,
        })
        .collect();
    let services = snapshot
        .services
        .iter()
        .map(|s| strait_api::Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            addresses: s.addresses.clone(),
            ports: s.ports.clone(),
            endpoints: if s.selector.is_empty() {
                s.endpoints.clone()
            } else {
                // As Kubernetes' endpoints controller: same namespace, every selector label present.
                snapshot
                    .workloads
                    .iter()
                    .filter(|w| w.namespace == s.namespace)
                    .filter(|w| s.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
                    .map(|w| Endpoint { address: w.address, ready: true })
                    .collect()
            },
        })
        .collect();
    let mut config = MeshConfig {
        trust_domain: trust_domain.to_string(),
        namespaces: snapshot
            .namespaces
            .iter()
            .map(|n| NamespaceConfig { name: n.name.clone(), mtls_mode: n.mtls_mode })
            .collect(),
        workloads,
        services,
        authorization_policies: snapshot.authorization_policies.clone(),
        // Strait's own routes, then those Gateway API routes become (for Services no TrafficRoute routes).
        traffic_routes: snapshot
            .traffic_routes
            .iter()
            .cloned()
            .chain(crate::gateway::traffic_routes(snapshot))
            .collect(),
        destination_policies: merge_destination_policies(&snapshot.destination_policies).policies,
        peer_authentications: snapshot.peer_authentications.clone(),
        outbound_traffic_policy: snapshot.settings.outbound_traffic_policy,
        external_services: snapshot.service_entries.clone(),
        answers: Vec::new(),
    };
    // Destination policies come merged in precedence order (one per host, so their order means nothing to a
    // proxy); every other list is sorted already.
    strait_api::delta::canonicalize(&mut config);
    config
}

/// DestinationPolicies merged per host (one each, named after the first), and those left out.
#[derive(Debug, Default)]
pub struct MergedPolicies {
    pub policies: Vec<Named<DestinationPolicySpec>>,
    pub conflicts: Vec<Conflict>,
}

/// A DestinationPolicy left out because it sets a field an earlier policy for its host set differently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub loser: ObjectKey,
    /// The policy that applies to the host first (the oldest), and so stays.
    pub winner: ObjectKey,
    pub host: String,
    /// The first conflicting field, `spec.<path>`.
    pub field: String,
    /// Policies merged into the winner before this one (each may have set the field).
    pub merged_with: Vec<ObjectKey>,
}

impl Conflict {
    /// The loser's problem: names the field, the winner and the host.
    pub fn message(&self) -> String {
        let merged: Vec<String> = self.merged_with.iter().map(|k| format!("{}/{}", k.namespace, k.name)).collect();
        let merged = if merged.is_empty() { String::new() } else { format!(", merged with {}", merged.join(", ")) };
        format!(
            "{}: conflicts with {}{merged}, which applies to host {} first (the older policy wins)",
            self.field, self.winner, self.host
        )
    }
}

/// Merges `policies` (in precedence order, first wins) per canonical host. Policies naming another
/// namespace's service are skipped: they are refused by [`reference_problems`].
pub fn merge_destination_policies(policies: &[Named<DestinationPolicySpec>]) -> MergedPolicies {
    // Per host: the merged policy, its JSON form, and the later policies merged into it.
    let mut merged: Vec<(String, Named<DestinationPolicySpec>, Value, Vec<ObjectKey>)> = Vec::new();
    let mut conflicts = Vec::new();
    for dp in policies {
        if foreign_namespace(&dp.spec.host, &dp.namespace).is_some() {
            continue;
        }
        let host = canonical_host(&dp.spec.host, &dp.namespace);
        let Ok(candidate) = serde_json::to_value(&dp.spec) else { continue };
        let key = ObjectKey::new(Kind::DestinationPolicy, &dp.namespace, &dp.name);
        let Some((_, first, current, others)) = merged.iter_mut().find(|(h, _, _, _)| *h == host) else {
            merged.push((host, dp.clone(), candidate, Vec::new()));
            continue;
        };
        let mut next = current.clone();
        // The spelling of the host may differ ("reviews" and its FQDN); the first one's stands.
        let candidate = without_key(candidate, "host");
        let combined = match merge_value(&mut next, &candidate, "spec") {
            Ok(()) => serde_json::from_value::<DestinationPolicySpec>(next.clone()).map_err(|e| format!("spec: {e}")),
            Err(field) => Err(field),
        };
        match combined {
            Ok(spec) => {
                first.spec = spec;
                *current = next;
                others.push(key);
            }
            Err(field) => conflicts.push(Conflict {
                loser: key,
                winner: ObjectKey::new(Kind::DestinationPolicy, &first.namespace, &first.name),
                host,
                field,
                merged_with: others.clone(),
            }),
        }
    }
    MergedPolicies { policies: merged.into_iter().map(|(_, policy, _, _)| policy).collect(), conflicts }
}

fn without_key(mut value: Value, key: &str) -> Value {
    if let Value::Object(map) = &mut value {
        map.remove(key);
    }
    value
}

/// Adds what `from` sets and `into` does not; `Err(path)` at the first field both set differently. Subsets
/// merge by name; `loadBalancer` is one choice, compared whole (a `simple` and a `consistentHash` from two
/// policies would make a third that neither wrote).
fn merge_value(into: &mut Value, from: &Value, path: &str) -> Result<(), String> {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                let field = format!("{path}.{key}");
                match into.get_mut(key) {
                    None => {
                        into.insert(key.clone(), value.clone());
                    }
                    Some(existing) if existing == value => {}
                    Some(existing) if key == "subsets" && path == "spec" => merge_subsets(existing, value, &field)?,
                    Some(existing) if key != "loadBalancer" && existing.is_object() && value.is_object() => {
                        merge_value(existing, value, &field)?
                    }
                    Some(_) => return Err(field),
                }
            }
            Ok(())
        }
        (into, from) if *into == *from => Ok(()),
        _ => Err(path.to_string()),
    }
}

fn merge_subsets(into: &mut Value, from: &Value, field: &str) -> Result<(), String> {
    let (Value::Array(into), Value::Array(from)) = (into, from) else { return Err(field.to_string()) };
    for subset in from {
        match into.iter().find(|s| s.get("name") == subset.get("name")) {
            Some(existing) if existing == subset => {}
            Some(_) => {
                let name = subset.get("name").and_then(Value::as_str).unwrap_or_default();
                return Err(format!("{field}[{name}]"));
            }
            None => into.push(subset.clone()),
        }
    }
    Ok(())
}

pub use strait_api::canonical_host;

/// Whether `route` routes requests to `service`, as the proxies decide it (a route applies only to services of
/// its own namespace).
pub fn route_applies_to(route: &Named<strait_api::TrafficRouteSpec>, service: &strait_api::ServiceRef) -> bool {
    service.namespace == route.namespace
        && route.spec.hosts.iter().any(|h| strait_api::ServiceRef::parse(h, &route.namespace).as_ref() == Some(service))
}

/// The namespace of the cluster service `host` names, when it is not `namespace`: routes and destination
/// policies may not reach into another namespace's services (the proxies ignore them there too).
fn foreign_namespace(host: &str, namespace: &str) -> Option<String> {
    strait_api::ServiceRef::parse(host, namespace).map(|s| s.namespace).filter(|n| n != namespace)
}

/// Problems that involve more than one object, each with the object to blame and a message that starts with
/// the field's path.
/// A consistent hash on a header, cookie or query parameter of a host with a port declared TCP: there is no
/// request there to take the key from, so the policy is refused naming the field rather than balancing that
/// port at random. (An undeclared port that turns out not to be HTTP has no key either, and is balanced at
/// random, as an HTTP request without the header is.)
fn http_hash_on_a_tcp_port(snapshot: &Snapshot, dp: &Named<DestinationPolicySpec>) -> Option<String> {
    let hash = dp.spec.load_balancer.as_ref()?.consistent_hash.as_ref()?;
    let field = hash.http_key()?;
    let wanted = strait_api::ServiceRef::parse(&dp.spec.host, &dp.namespace)?;
    let service = snapshot.services.iter().find(|s| s.name == wanted.name && s.namespace == wanted.namespace)?;
    let port = service.ports.iter().find(|p| p.protocol() == strait_api::Protocol::Tcp)?;
    Some(format!(
        "spec.loadBalancer.consistentHash.{field}: hashes on an HTTP request, but port {} of service {}/{} is \
         declared TCP (no headers there); use useSourceIp, or declare the port HTTP",
        port.port, service.namespace, service.name
    ))
}

pub fn reference_problems(snapshot: &Snapshot) -> Vec<(ObjectKey, String)> {
    let mut problems = Vec::new();
    for dp in &snapshot.destination_policies {
        if let Some(other) = foreign_namespace(&dp.spec.host, &dp.namespace) {
            let message = format!(
                "spec.host: names a service of namespace {other}; a DestinationPolicy applies only to services of its own namespace"
            );
            problems.push((ObjectKey::new(Kind::DestinationPolicy, &dp.namespace, &dp.name), message));
        }
    }
    for dp in &snapshot.destination_policies {
        if let Some(message) = http_hash_on_a_tcp_port(snapshot, dp) {
            problems.push((ObjectKey::new(Kind::DestinationPolicy, &dp.namespace, &dp.name), message));
        }
    }
    // Routes resolve against the merged policy of their host, which a conflicting newcomer never changes.
    let merged = merge_destination_policies(&snapshot.destination_policies);
    for conflict in &merged.conflicts {
        problems.push((conflict.loser.clone(), conflict.message()));
    }
    let policies: BTreeMap<String, &Named<DestinationPolicySpec>> =
        merged.policies.iter().map(|dp| (canonical_host(&dp.spec.host, &dp.namespace), dp)).collect();
    for route in &snapshot.traffic_routes {
        for (i, host) in route.spec.hosts.iter().enumerate() {
            if let Some(other) = foreign_namespace(host, &route.namespace) {
                let message = format!(
                    "spec.hosts[{i}]: names a service of namespace {other}; a TrafficRoute applies only to services of its own namespace"
                );
                problems.push((ObjectKey::new(Kind::TrafficRoute, &route.namespace, &route.name), message));
            }
        }
        for (i, rule) in route.spec.http.iter().enumerate() {
            for (j, target) in rule.route.iter().enumerate() {
                let Some(subset) = &target.destination.subset else { continue };
                let host = canonical_host(&target.destination.host, &route.namespace);
                let field = format!("spec.http[{i}].route[{j}].destination.subset");
                let message = match policies.get(&host) {
                    Some(dp) if dp.spec.subsets.iter().any(|s| &s.name == subset) => continue,
                    Some(dp) => format!(
                        "{field}: subset {subset:?} is not defined by DestinationPolicy {}/{}",
                        dp.namespace, dp.name
                    ),
                    None => format!("{field}: subset {subset:?} is not defined: no DestinationPolicy for host {host}"),
                };
                problems.push((ObjectKey::new(Kind::TrafficRoute, &route.namespace, &route.name), message));
            }
        }
    }
    // Proxies find a workload by its address, so two workloads must not share one.
    let mut addresses = BTreeMap::new();
    for w in &snapshot.workloads {
        if let Some(other) = addresses.insert(w.address, w) {
            problems.push((
                ObjectKey::new(Kind::Workload, &w.namespace, &w.name),
                format!("address: {} is already used by workload {}/{}", w.address, other.namespace, other.name),
            ));
            addresses.insert(w.address, other);
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Object, Service, Workload};
    use strait_api::{Destination, DestinationPolicySpec, HttpRoute, RouteDestination, Subset, TrafficRouteSpec};

    fn workload(name: &str, address: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            name: name.into(),
            namespace: "shop".into(),
            service_account: "default".into(),
            node: "node-a".into(),
            address: address.parse().expect("address"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            meshed: None,
            tunnel_port: 15008,
        }
    }

    fn route(subset: &str) -> Named<TrafficRouteSpec> {
        let dest = |s: &str| RouteDestination {
            destination: Destination { host: "reviews".into(), subset: Some(s.into()), port: None },
            weight: None,
        };
        Named {
            name: "reviews".into(),
            namespace: "shop".into(),
            spec: TrafficRouteSpec {
                hosts: vec!["reviews".into()],
                http: vec![
                    HttpRoute { route: vec![dest("v1")], ..Default::default() },
                    HttpRoute { route: vec![dest(subset)], ..Default::default() },
                ],
                ..Default::default()
            },
        }
    }

    fn policy() -> Named<DestinationPolicySpec> {
        Named {
            name: "reviews".into(),
            namespace: "shop".into(),
            spec: DestinationPolicySpec {
                host: "reviews.shop.svc.cluster.local".into(),
                subsets: ["v1", "v2"]
                    .iter()
                    .map(|v| Subset { name: v.to_string(), labels: [("version".into(), v.to_string())].into() })
                    .collect(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn endpoints_come_from_matching_workloads_of_the_namespace() {
        let mut other_ns = workload("x", "10.0.0.9", &[("app", "reviews")]);
        other_ns.namespace = "other".into();
        let objects = [
            Object::Workload(workload("r1", "10.0.0.1", &[("app", "reviews"), ("version", "v1")])),
            Object::Workload(workload("p", "10.0.0.2", &[("app", "productpage")])),
            Object::Workload(other_ns),
            Object::Service(Service {
                name: "reviews".into(),
                namespace: "shop".into(),
                addresses: vec!["10.96.0.1".parse().expect("ip")],
                ports: vec![strait_api::ServicePort { name: None, port: 9080, target_port: None, app_protocol: None }],
                selector: [("app".to_string(), "reviews".to_string())].into(),
                endpoints: vec![],
            }),
        ];
        let config = translate(&Snapshot::from_objects(&objects), "cluster.local");
        let endpoints: Vec<String> = config.services[0].endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(endpoints, ["10.0.0.1"]);
        assert!(config.workloads.iter().all(|w| w.meshed), "undescribed namespaces are meshed");
        config.validate().expect("valid");
    }

    #[test]
    fn undefined_subsets_are_named_by_field() {
        let snapshot =
            Snapshot { traffic_routes: vec![route("v3")], destination_policies: vec![policy()], ..Default::default() };
        let problems = reference_problems(&snapshot);
        assert_eq!(problems.len(), 1);
        assert_eq!(
            format!("{}: {}", problems[0].0, problems[0].1),
            "TrafficRoute shop/reviews: spec.http[1].route[0].destination.subset: subset \"v3\" is not defined by DestinationPolicy shop/reviews"
        );
        let fine = Snapshot { traffic_routes: vec![route("v2")], ..snapshot };
        assert!(reference_problems(&fine).is_empty());
    }

    /// Issue 15: a header, cookie or query-parameter hash is refused for a host with a port declared TCP,
    /// naming the field; a source-IP hash, or the same hash on an HTTP service, is fine.
    #[test]
    fn an_http_hash_on_a_tcp_port_is_refused_naming_the_field() {
        let service = |app_protocol: &str| {
            Object::Service(Service {
                name: "reviews".into(),
                namespace: "shop".into(),
                addresses: vec!["10.96.0.1".parse().expect("ip")],
                ports: vec![strait_api::ServicePort {
                    name: None,
                    port: 9080,
                    target_port: None,
                    app_protocol: Some(app_protocol.into()),
                }],
                selector: Default::default(),
                endpoints: vec![],
            })
        };
        let hashed = |f: &dyn Fn(&mut strait_api::ConsistentHash)| {
            let mut hash = strait_api::ConsistentHash::default();
            f(&mut hash);
            let mut dp = policy();
            dp.spec.load_balancer =
                Some(strait_api::LoadBalancer { consistent_hash: Some(Box::new(hash)), ..Default::default() });
            Object::DestinationPolicy(dp)
        };
        let problems = |objects: &[Object]| reference_problems(&Snapshot::from_objects(objects));
        let header = hashed(&|h| h.http_header_name = Some("x-user".into()));
        let found = problems(&[service("tcp"), header.clone()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            format!("{}: {}", found[0].0, found[0].1),
            "DestinationPolicy shop/reviews: spec.loadBalancer.consistentHash.httpHeaderName: hashes on an HTTP \
             request, but port 9080 of service shop/reviews is declared TCP (no headers there); use useSourceIp, \
             or declare the port HTTP"
        );
        let query = hashed(&|h| h.http_query_parameter_name = Some("u".into()));
        assert!(problems(&[service("tcp"), query])[0]
            .1
            .starts_with("spec.loadBalancer.consistentHash.httpQueryParameterName"));
        assert!(problems(&[service("http"), header]).is_empty());
        assert!(problems(&[service("tcp"), hashed(&|h| h.use_source_ip = Some(true))]).is_empty());
    }

    #[test]
    fn duplicate_addresses_blame_the_later_workload() {
        let objects =
            [Object::Workload(workload("a", "10.0.0.1", &[])), Object::Workload(workload("b", "10.0.0.1", &[]))];
        let problems = reference_problems(&Snapshot::from_objects(&objects));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0.name, "b");
    }

    #[test]
    fn hosts_are_canonical() {
        assert_eq!(canonical_host("reviews", "shop"), "reviews.shop.svc.cluster.local");
        assert_eq!(canonical_host("reviews.other", "shop"), "reviews.other.svc.cluster.local");
        assert_eq!(canonical_host("reviews.other.svc", "shop"), "reviews.other.svc.cluster.local");
        assert_eq!(canonical_host("reviews.other.svc.cluster.local", "shop"), "reviews.other.svc.cluster.local");
    }
}
