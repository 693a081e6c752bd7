//! The explain API (`strait why`, `strait config`, `strait lint`): what the proxy would decide for a request,
//! and why, computed by the proxy's own compiled configuration ([`State`]: route tables, destination settings,
//! authorization policies), normalization and endpoint selection, never by a second implementation. It reads a
//! [`MeshConfig`] (a proxy's `/config_dump`, or manifests translated by the control plane) and touches no
//! socket.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::Serialize;
use strait_api::{MeshConfig, Protocol, Service, ServicePort};

use crate::http::backends::Backends;
use crate::http::route::{Action, RouteDestination, ServiceRef};
use crate::policy::{Decision, HttpAttributes, Request as AuthzRequest};
use crate::state::{ServiceTarget, State, WorkloadInfo};

/// A compiled configuration, as one node's proxy holds it.
pub struct Explainer {
    state: State,
}

/// The request to explain.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// The calling workload: `namespace/name`, `name` (when unique), or its address.
    pub source: String,
    /// The service: `name`, `name.namespace[.svc.cluster.local]` (short names in the source's namespace), or a
    /// service address `ip:port`.
    pub destination: String,
    /// The service port; the service's first port when not given.
    pub port: Option<u16>,
    pub method: String,
    /// Path and query, as the client sends them (normalized here as the proxy does).
    pub path: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("the configuration does not compile: {0}")]
    Config(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the request cannot be built: {0}")]
    Request(String),
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    pub source: Peer,
    /// `namespace/name` of the service, and the port asked for.
    pub service: String,
    pub port: u16,
    /// `http` (routed and authorized per request) or `tcp` (one decision per connection).
    pub layer: String,
    pub method: String,
    /// The path after normalization: what rules match and the pod receives.
    pub path: String,
    /// Set when the proxy refuses the request before any rule is read (400).
    pub rejected: Option<String>,
    /// The TrafficRoute rule that matched; `None`: no rule matched, or none applies at this layer.
    pub route: Option<RouteView>,
    pub destinations: Vec<DestinationView>,
    /// The service's DestinationPolicy settings in force.
    pub settings: SettingsView,
    /// One line: what happens.
    pub verdict: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub workload: String,
    pub node: String,
    pub address: IpAddr,
    /// `None` for a workload outside the mesh.
    pub identity: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteView {
    /// The rule's name, or `namespace/route[index]`.
    pub name: String,
    /// Which of the rule's `match` entries held (`match[i]`), or `every request` for a rule without one.
    pub matched: String,
    /// `forward`, `redirect` or `direct response`.
    pub action: String,
    pub timeout: Option<String>,
    pub retries: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationView {
    pub host: String,
    pub subset: Option<String>,
    /// The share of requests this destination gets, in percent.
    pub weight_percent: f64,
    /// The ready endpoints of the subset (outlier state is not known offline: see `/config_dump` for it).
    pub endpoints: Vec<EndpointView>,
    /// Why there are no endpoints, when there are none.
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointView {
    pub address: SocketAddr,
    pub workload: Option<String>,
    pub node: Option<String>,
    pub identity: Option<String>,
    pub authorization: Authorization,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// `ALLOW` or `DENY`.
    pub decision: String,
    /// The DENY policy that matched, the ALLOW policy that matched, or `default`.
    pub policy: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsView {
    /// `namespace/name` of the DestinationPolicy, if any.
    pub destination_policy: Option<String>,
    pub load_balancer: String,
    pub outlier_detection: String,
    pub connection_pool: String,
    pub retry_budget: String,
    pub connect_timeout: Option<String>,
}

impl Explainer {
    /// Compiles `config` as the proxy of `node` does; a configuration the proxy would refuse is an error naming the
    /// resource and field.
    pub fn new(config: MeshConfig, node: &str) -> Result<Explainer, ExplainError> {
        let state = State::build(config, node, "explain".into()).map_err(|e| ExplainError::Config(e.to_string()))?;
        Ok(Explainer { state })
    }

    pub fn config(&self) -> &MeshConfig {
        &self.state.config
    }

    fn source(&self, source: &str) -> Result<&Arc<WorkloadInfo>, ExplainError> {
        if let Ok(ip) = source.parse::<IpAddr>() {
            return self
                .state
                .workload(ip)
                .ok_or_else(|| ExplainError::NotFound(format!("no workload has address {ip}")));
        }
        let (namespace, name) = match source.split_once('/') {
            Some((ns, name)) => (Some(ns), name),
            None => (None, source),
        };
        let found: Vec<&Arc<WorkloadInfo>> = self
            .state
            .config
            .workloads
            .iter()
            .filter(|w| w.name == name && namespace.is_none_or(|ns| w.namespace == ns))
            .filter_map(|w| self.state.workload(w.address))
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => Err(ExplainError::NotFound(format!("no workload {source}"))),
            _ => Err(ExplainError::NotFound(format!("{source} names several workloads: use namespace/name"))),
        }
    }

    fn destination(&self, query: &Query, source_namespace: &str) -> Result<ServiceTarget, ExplainError> {
        if let Ok(addr) = query.destination.parse::<SocketAddr>() {
            return self
                .state
                .service(addr)
                .map(|t| ServiceTarget::clone(t))
                .ok_or_else(|| ExplainError::NotFound(format!("no service listens on {addr}")));
        }
        let reference = ServiceRef::parse(&query.destination, source_namespace)
            .ok_or_else(|| ExplainError::NotFound(format!("{:?} is not a service name", query.destination)))?;
        let service = self
            .state
            .service_named(&reference)
            .ok_or_else(|| ExplainError::NotFound(format!("no service {}/{}", reference.namespace, reference.name)))?;
        let port = match query.port {
            Some(p) => service.ports.iter().find(|sp| sp.port == p),
            None => service.ports.first(),
        };
        let port = port.ok_or_else(|| {
            let ports: Vec<String> = service.ports.iter().map(|p| p.port.to_string()).collect();
            ExplainError::NotFound(format!(
                "service {}/{} has no port {} (ports: {})",
                service.namespace,
                service.name,
                query.port.unwrap_or_default(),
                ports.join(", ")
            ))
        })?;
        Ok(ServiceTarget::new(service.clone(), port.clone()))
    }

    /// What the source's proxy and the destination's would do with `query`.
    pub fn explain(&self, query: &Query) -> Result<Explanation, ExplainError> {
        let source = self.source(&query.source)?.clone();
        let front = self.destination(query, &source.workload.namespace)?;
        let http = matches!(front.port.protocol(), Protocol::Http | Protocol::Http2);
        let mut builder = http::Request::builder()
            .method(query.method.as_str())
            .uri(if query.path.is_empty() { "/" } else { query.path.as_str() })
            .header(http::header::HOST, front.service.name.as_str());
        for (name, value) in &query.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let mut request = builder.body(()).map_err(|e| ExplainError::Request(e.to_string()))?;
        // As both proxies do before reading any rule.
        let reference = ServiceRef::new(&front.service.name, &front.service.namespace);
        let table = self.state.route_table(&reference).clone();
        let rejected =
            crate::http::normalize::request(&mut request, table.escaped_slashes()).err().map(|r| r.to_string());
        let (parts, ()) = request.into_parts();
        let route = if http && rejected.is_none() { table.route(&parts) } else { None };
        let mut explanation = Explanation {
            source: peer(&source),
            service: format!("{}/{}", front.service.namespace, front.service.name),
            port: front.port.port,
            layer: if http { "http" } else { "tcp" }.into(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            rejected: rejected.clone(),
            route: None,
            destinations: Vec::new(),
            settings: settings(&self.state, &front.service),
            verdict: String::new(),
        };
        if let Some(reason) = rejected {
            explanation.verdict = format!("400: refused before routing ({reason})");
            return Ok(explanation);
        }
        let whole_service = || {
            vec![RouteDestination {
                host: front.service.name.clone(),
                service: Some(reference.clone()),
                subset: None,
                port: None,
                weight: crate::http::route::Weight(1),
            }]
        };
        let destinations: Vec<RouteDestination> = match route {
            None => whole_service(),
            Some(route) => {
                let (action, destinations, verdict) = match route.action() {
                    Action::Forward(split) => ("forward", split.destinations().to_vec(), None),
                    Action::Redirect(redirect) => {
                        let location = redirect.location(&parts).and_then(|l| l.to_str().ok().map(str::to_string));
                        ("redirect", Vec::new(), Some(format!("redirect to {}", location.unwrap_or_default())))
                    }
                    Action::Respond(direct) => {
                        ("direct response", Vec::new(), Some(format!("direct response {}", direct.response().status())))
                    }
                };
                explanation.route = Some(RouteView {
                    name: route.name().to_string(),
                    matched: match route.matching_entry(&parts) {
                        Some(_) if route.matches_everything() => "every request".into(),
                        Some(i) => format!("match[{i}]"),
                        None => "?".into(),
                    },
                    action: action.into(),
                    timeout: route.timeout().map(|t| format!("{t:?}")),
                    retries: route.retry_policy().map(|r| r.describe()),
                });
                if let Some(verdict) = verdict {
                    explanation.verdict = format!("{verdict} from rule {}", route.name());
                    return Ok(explanation);
                }
                destinations
            }
        };
        let total: u64 = destinations.iter().map(|d| u64::from(d.weight.0)).sum::<u64>().max(1);
        let backends = Backends::default();
        for destination in &destinations {
            explanation.destinations.push(self.destination_view(
                &backends,
                destination,
                &front,
                &source,
                &parts,
                http,
                total,
            ));
        }
        explanation.verdict = verdict(&explanation);
        Ok(explanation)
    }

    #[allow(clippy::too_many_arguments)]
    fn destination_view(
        &self,
        backends: &Backends,
        destination: &RouteDestination,
        front: &ServiceTarget,
        source: &WorkloadInfo,
        parts: &http::request::Parts,
        http: bool,
        total: u64,
    ) -> DestinationView {
        let mut view = DestinationView {
            host: destination.host.clone(),
            subset: destination.subset.clone(),
            weight_percent: (f64::from(destination.weight.0) * 1000.0 / total as f64).round() / 10.0,
            endpoints: Vec::new(),
            problem: None,
        };
        let Some(backend) = backends.backend(&self.state, destination, front) else {
            view.problem = Some(format!("no service or port for {} (503 no route)", destination.host));
            return view;
        };
        let endpoints = backend.endpoints(destination.subset.as_deref());
        if endpoints.is_empty() {
            view.problem = Some(match &destination.subset {
                Some(subset) => format!("subset {subset}: no ready endpoint (503 no healthy upstream)"),
                None => "no ready endpoint (503 no healthy upstream)".into(),
            });
        }
        let principal = source.identity.as_ref().map(|i| i.principal());
        for endpoint in endpoints {
            let target = self.state.workload(endpoint.ip());
            let authorization = match target {
                Some(target) => {
                    let request = AuthzRequest {
                        source_principal: principal.as_deref(),
                        source_namespace: source.identity.as_ref().map(|i| i.namespace()),
                        source_ip: source.workload.address,
                        destination: &target.workload,
                        destination_port: endpoint.port(),
                        http: http.then(|| HttpAttributes { method: parts.method.as_str(), path: parts.uri.path() }),
                        l7_pending: false,
                    };
                    match self.state.policies.evaluate_explained(&request) {
                        (Decision::Allow, Some(policy)) => Authorization {
                            decision: "ALLOW".into(),
                            policy: policy.to_string(),
                            reason: "an ALLOW policy matched".into(),
                        },
                        (Decision::Allow, None) => Authorization {
                            decision: "ALLOW".into(),
                            policy: "default".into(),
                            reason: "no policy denies and no ALLOW policy applies".into(),
                        },
                        (Decision::Deny(denial), _) => Authorization {
                            decision: "DENY".into(),
                            policy: denial.policy.clone(),
                            reason: denial.reason.as_str().into(),
                        },
                    }
                }
                None => Authorization {
                    decision: "ALLOW".into(),
                    policy: "-".into(),
                    reason: "not a workload of the mesh: no policy applies".into(),
                },
            };
            view.endpoints.push(EndpointView {
                address: *endpoint,
                workload: target.map(|t| format!("{}/{}", t.workload.namespace, t.workload.name)),
                node: target.map(|t| t.workload.node.clone()),
                identity: target.and_then(|t| t.identity.as_ref()).map(|i| i.to_string()),
                authorization,
            });
        }
        view
    }

    /// The compiled view of every service: route rules in order, subsets with their endpoints, settings. For
    /// `strait lint`.
    pub fn services(&self) -> Vec<ServiceView> {
        services(&self.state)
    }
}

/// [`Explainer::services`] of a proxy's current state, for `/config_dump`.
pub(crate) fn services(state: &State) -> Vec<ServiceView> {
    let mut out: Vec<ServiceView> = Vec::new();
    let backends = Backends::default();
    for service in &state.config.services {
        let reference = ServiceRef::new(&service.name, &service.namespace);
        let table = state.route_table(&reference);
        let routes = table
            .routes()
            .iter()
            .map(|r| RuleView {
                name: r.name().to_string(),
                matches_everything: r.matches_everything(),
                action: match r.action() {
                    Action::Forward(split) => split
                        .destinations()
                        .iter()
                        .map(|d| match &d.subset {
                            Some(s) => format!("{} subset {s} weight {}", d.host, d.weight.0),
                            None => format!("{} weight {}", d.host, d.weight.0),
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                    Action::Redirect(_) => "redirect".into(),
                    Action::Respond(d) => format!("direct response {}", d.response().status()),
                },
                timeout: r.timeout().map(|t| format!("{t:?}")),
                retries: r.retry_policy().map(|p| p.describe()),
            })
            .collect();
        let settings = state.destination_settings(service);
        let subsets = settings
            .policy
            .iter()
            .flat_map(|p| p.subsets.iter())
            .map(|subset| {
                let endpoints = service_port(service).map_or_else(Vec::new, |port| {
                    let target = ServiceTarget::new(Arc::new(service.clone()), port.clone());
                    let destination = RouteDestination {
                        host: service.name.clone(),
                        service: Some(reference.clone()),
                        subset: Some(subset.name.clone()),
                        port: None,
                        weight: crate::http::route::Weight(1),
                    };
                    backends
                        .backend(state, &destination, &target)
                        .map(|b| b.endpoints(Some(&subset.name)).to_vec())
                        .unwrap_or_default()
                });
                SubsetView { name: subset.name.clone(), labels: subset.labels.clone(), endpoints }
            })
            .collect();
        out.push(ServiceView {
            service: format!("{}/{}", service.namespace, service.name),
            addresses: service.addresses.clone(),
            ports: service.ports.iter().map(|p| p.port).collect(),
            routes,
            subsets,
            settings: settings_of(state, service),
        });
    }
    out
}

fn service_port(service: &Service) -> Option<&ServicePort> {
    service.ports.first()
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceView {
    pub service: String,
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<u16>,
    /// The compiled TrafficRoute rules, in the order they are tried.
    pub routes: Vec<RuleView>,
    pub subsets: Vec<SubsetView>,
    pub settings: SettingsView,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleView {
    pub name: String,
    /// A rule without `match`: every later rule of the service is shadowed.
    pub matches_everything: bool,
    pub action: String,
    pub timeout: Option<String>,
    pub retries: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubsetView {
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Ready endpoints (pod address, target port of the service's first port).
    pub endpoints: Vec<SocketAddr>,
}

fn peer(w: &WorkloadInfo) -> Peer {
    Peer {
        workload: format!("{}/{}", w.workload.namespace, w.workload.name),
        node: w.workload.node.clone(),
        address: w.workload.address,
        identity: w.identity.as_ref().map(|i| i.to_string()),
    }
}

fn settings(state: &State, service: &Arc<Service>) -> SettingsView {
    settings_of(state, service)
}

fn settings_of(state: &State, service: &Service) -> SettingsView {
    let s = state.destination_settings(service);
    let policy =
        crate::http::settings::policy_for(&state.config, service).map(|p| format!("{}/{}", p.namespace, p.name));
    SettingsView {
        destination_policy: policy,
        load_balancer: format!("{:?}", s.strategy),
        outlier_detection: format!("{:?}", s.outlier),
        connection_pool: format!("{:?}, maxConnections {:?}", s.limits, s.max_connections),
        retry_budget: format!("{:?}", s.budget),
        connect_timeout: s.connect_timeout.map(|t| format!("{t:?}")),
    }
}

fn verdict(e: &Explanation) -> String {
    let via = match &e.route {
        Some(route) => format!("rule {}", route.name),
        None if e.layer == "http" => "no TrafficRoute rule: the whole service".to_string(),
        None => "L4: no TrafficRoute applies".to_string(),
    };
    let reachable: Vec<String> = e
        .destinations
        .iter()
        .filter(|d| d.weight_percent > 0.0)
        .map(|d| {
            let allowed = d.endpoints.iter().filter(|ep| ep.authorization.decision == "ALLOW").count();
            let name = d.subset.as_ref().map_or(d.host.clone(), |s| format!("{} {s}", d.host));
            match (&d.problem, allowed, d.endpoints.len()) {
                (Some(problem), _, _) => format!("{}% to {name}: {problem}", d.weight_percent),
                (None, 0, _) => format!(
                    "{}% to {name}: 403 (denied by {})",
                    d.weight_percent,
                    d.endpoints.first().map_or("?", |ep| ep.authorization.policy.as_str())
                ),
                (None, a, n) if a == n => format!("{}% to {name}: allowed ({n} endpoint(s))", d.weight_percent),
                (None, a, n) => format!("{}% to {name}: allowed by {a} of {n} endpoints", d.weight_percent),
            }
        })
        .collect();
    format!("{via}: {}", reachable.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "
workloads:
- {name: a, namespace: shop, serviceAccount: a, node: n1, address: 10.1.0.2}
- {name: c, namespace: shop, serviceAccount: c, node: n1, address: 10.1.0.3}
- {name: b, namespace: shop, serviceAccount: b, node: n2, address: 10.2.0.2, labels: {app: b}}
services:
- name: b
  namespace: shop
  addresses: [10.96.0.2]
  ports: [{port: 80, name: http, targetPort: 8080}]
  endpoints: [{address: 10.2.0.2}]
authorizationPolicies:
- name: allow-a
  namespace: shop
  spec:
    action: ALLOW
    rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/a]}}]}]
";

    fn query(source: &str) -> Query {
        Query {
            source: source.into(),
            destination: "b".into(),
            method: "GET".into(),
            path: "/x".into(),
            ..Query::default()
        }
    }

    #[test]
    fn names_the_allow_policy_that_matched_or_the_default_deny() {
        let config: MeshConfig = serde_yaml::from_str(CONFIG).expect("a configuration");
        let explainer = Explainer::new(config, "n1").expect("compiles");
        let allowed = explainer.explain(&query("shop/a")).expect("explained");
        let endpoint = &allowed.destinations[0].endpoints[0];
        assert_eq!(endpoint.address, "10.2.0.2:8080".parse().expect("an address"));
        assert_eq!(
            (endpoint.authorization.decision.as_str(), endpoint.authorization.policy.as_str()),
            ("ALLOW", "shop/allow-a")
        );
        assert!(allowed.route.is_none() && allowed.verdict.contains("no TrafficRoute rule"), "{allowed:?}");
        let denied = explainer.explain(&query("10.1.0.3")).expect("explained");
        let authorization = &denied.destinations[0].endpoints[0].authorization;
        assert_eq!((authorization.decision.as_str(), authorization.policy.as_str()), ("DENY", "default"));
        assert!(denied.verdict.contains("403"), "{denied:?}");
        assert!(explainer.explain(&query("shop/nobody")).is_err());
    }
}
