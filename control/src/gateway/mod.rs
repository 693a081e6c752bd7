//! Gateway API routes attached to a Service (GAMMA): HTTPRoute and GRPCRoute (`gateway.networking.k8s.io/v1`)
//! whose `parentRefs` name a Service (`group: ""`, `kind: Service`) are served by the same compiled route
//! tables as TrafficRoute.
//!
//! - [`read`] turns one route into a [`GatewayRoute`]: its rules converted to Strait's rule model, one rule
//!   per match, each with its Gateway API precedence. Every field is converted or the route is refused with a
//!   message naming the field. A route without a Service parent is not the mesh's (a Gateway serves it).
//!   The conversion both kinds share is `rules.rs`; what differs is in `http.rs` and `grpc.rs`.
//! - [`attach`] decides, per parent Service, which routes apply (TrafficRoute > GRPCRoute > HTTPRoute, see
//!   there), and builds one TrafficRoute per Service from the rules of every route that applies, ordered as
//!   Gateway API orders them.
//!   A backendRef that does not resolve gets its share of requests answered 500 (`resolve.rs`).
//! - [`status`] writes `status.parents[]` in Kubernetes mode.

mod attach;
mod grpc;
mod http;
pub mod import;
mod resolve;
mod rules;
pub mod spec;
pub mod status;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;
use strait_api::{HttpRoute, MeshConfig, Named, TrafficRouteSpec};

pub use attach::{parent_states, traffic_routes, ParentState};
pub use spec::ParentRef;

use crate::model::{Kind, ObjectKey};

/// The API group; any of its versions (`v1`, `v1beta1`) of the two kinds below is read.
pub const GROUP: &str = "gateway.networking.k8s.io";
/// The controller name written in `status.parents[].controllerName`.
pub const CONTROLLER_NAME: &str = "strait.dev/mesh";

/// The two route kinds read here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    pub fn from_kind(kind: &str) -> Option<RouteKind> {
        match kind {
            "HTTPRoute" => Some(RouteKind::Http),
            "GRPCRoute" => Some(RouteKind::Grpc),
            _ => None,
        }
    }

    pub fn model_kind(self) -> Kind {
        match self {
            RouteKind::Http => Kind::HTTPRoute,
            RouteKind::Grpc => Kind::GRPCRoute,
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            RouteKind::Http => "httproutes",
            RouteKind::Grpc => "grpcroutes",
        }
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.model_kind(), f)
    }
}

/// Whether an `apiVersion` is Gateway API's.
pub fn is_gateway_api(api_version: &str) -> bool {
    api_version.strip_prefix(GROUP).is_some_and(|rest| rest.starts_with('/'))
}

/// One HTTPRoute or GRPCRoute with at least one Service parent, converted.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayRoute {
    pub kind: RouteKind,
    pub namespace: String,
    pub name: String,
    /// `metadata.creationTimestamp` (Unix seconds) where known: older routes' rules win ties.
    pub created: Option<i64>,
    /// The Service parents, with their index in `spec.parentRefs`.
    pub parents: Vec<(usize, ParentRef)>,
    /// One rule per match, in the route's own precedence order.
    pub rules: Vec<GatewayRule>,
    /// Every backend Service, for `ResolvedRefs`.
    pub backends: Vec<BackendService>,
}

/// A converted rule and where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayRule {
    /// Gateway API's precedence of the match, lower first (see `http.rs` and `grpc.rs`).
    pub precedence: Vec<i64>,
    /// `spec.rules[i]` or `spec.rules[i].matches[j]`.
    pub origin: String,
    /// The index of the rule in `spec.rules`: the last tie-breaker.
    pub index: usize,
    /// The rule as converted; its `route` names only Service backends. What happens to backends that do not
    /// resolve is decided per snapshot (see `resolve.rs`).
    pub rule: HttpRoute,
    /// The summed weight of the rule's backendRefs of another kind than Service: their share gets 500.
    pub invalid_weight: u32,
}

/// A Service a backendRef names (in the route's namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendService {
    /// `spec.rules[i].backendRefs[j]`.
    pub field: String,
    pub name: String,
    pub port: Option<u16>,
    /// `Some("<group>/<kind>")` when the backendRef names another kind than a Service (`ResolvedRefs=False`,
    /// reason `InvalidKind`).
    pub invalid_kind: Option<String>,
}

/// Reads a whole document (`apiVersion`, `kind`, `metadata`, `spec`), as a file or `strait import` holds it.
/// `Ok(None)`: not attached to a Service. The error names the object when that much could be read.
pub fn read_document(document: &Value) -> Result<Option<GatewayRoute>, (Option<ObjectKey>, String)> {
    let text = |path: &[&str]| {
        path.iter().try_fold(document, |v, key| v.get(*key)).and_then(Value::as_str).unwrap_or_default().to_string()
    };
    let kind_name = text(&["kind"]);
    let Some(kind) = RouteKind::from_kind(&kind_name) else {
        return Err((None, format!("kind: {kind_name:?} of {GROUP} is not read by the mesh (HTTPRoute, GRPCRoute)")));
    };
    let name = text(&["metadata", "name"]);
    // As kubectl does for a namespaced object that names none.
    let namespace =
        Some(text(&["metadata", "namespace"])).filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    if name.is_empty() {
        return Err((None, format!("{kind}: metadata.name: is required")));
    }
    let key = ObjectKey::new(kind.model_kind(), &namespace, &name);
    let spec = document.get("spec").cloned().unwrap_or(Value::Null);
    read(kind, &namespace, &name, spec, None).map_err(|message| (Some(key), message))
}

/// Reads one route's `spec`. `Ok(None)`: no parent is a Service, so the route is a Gateway's, not the mesh's.
pub fn read(
    kind: RouteKind,
    namespace: &str,
    name: &str,
    spec: Value,
    created: Option<i64>,
) -> Result<Option<GatewayRoute>, String> {
    let (parent_refs, hostnames, rules, backends) = match kind {
        RouteKind::Http => {
            let spec: spec::HttpRouteSpec = typed(spec)?;
            let converted = rules::convert::<http::Http>(&spec.rules, namespace)?;
            (spec.parent_refs, spec.hostnames, converted.0, converted.1)
        }
        RouteKind::Grpc => {
            let spec: spec::GrpcRouteSpec = typed(spec)?;
            let converted = rules::convert::<grpc::Grpc>(&spec.rules, namespace)?;
            (spec.parent_refs, spec.hostnames, converted.0, converted.1)
        }
    };
    let parents: Vec<(usize, ParentRef)> =
        parent_refs.into_iter().enumerate().filter(|(_, p)| p.is_service()).collect();
    if parents.is_empty() {
        return Ok(None);
    }
    if !hostnames.is_empty() {
        return Err("spec.hostnames: not supported for a route attached to a Service (the Service names the traffic)"
            .to_string());
    }
    let mut rules = rules;
    for rule in &mut rules {
        // A metric label and what `strait why` shows: the rule's own name, else where it is.
        let own = rule.rule.name.take();
        rule.rule.name = Some(match own {
            Some(own) => format!("{namespace}/{name}/{own}"),
            None => format!("{namespace}/{name}[{}]", rule.index),
        });
    }
    let route = GatewayRoute {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        created,
        parents,
        rules,
        backends,
    };
    check_rules(&route)?;
    Ok(Some(route))
}

/// The converted rules checked as the proxies check a TrafficRoute; a problem names the Gateway API field.
fn check_rules(route: &GatewayRoute) -> Result<(), String> {
    let mut config = MeshConfig::default();
    config.traffic_routes.push(Named {
        name: route.name.clone(),
        namespace: route.namespace.clone(),
        spec: TrafficRouteSpec {
            hosts: vec!["checked".to_string()],
            http: route.rules.iter().map(|r| r.rule.clone()).collect(),
            escaped_slashes: None,
        },
    });
    let Err(e) = config.validate() else { return Ok(()) };
    let problems: Vec<String> = e
        .problems()
        .into_iter()
        .map(|problem| {
            // `trafficRoutes[ns/name].spec.http[3].timeout: ...` -> `spec.rules[1] (timeout): ...`.
            let Some((_, rest)) = problem.split_once(".spec.http[") else { return problem };
            let Some((index, rest)) = rest.split_once(']') else { return problem };
            let origin = index.parse::<usize>().ok().and_then(|i| route.rules.get(i)).map(|r| r.origin.as_str());
            let rest = rest.strip_prefix('.').unwrap_or(rest);
            match origin {
                Some(origin) => format!("{origin}: as converted, {rest}"),
                None => problem,
            }
        })
        .collect();
    Err(problems.join("; "))
}

/// Deserializes a spec with the failing field's path; a field Strait does not know is refused by name.
fn typed<T: DeserializeOwned>(spec: Value) -> Result<T, String> {
    if spec.is_null() {
        return Err("spec: is required".to_string());
    }
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." { "spec".to_string() } else { format!("spec.{path}") };
        if inner.starts_with("unknown field") {
            format!("{field}: not supported by Strait ({inner})")
        } else {
            format!("{field}: {inner}")
        }
    })
}
