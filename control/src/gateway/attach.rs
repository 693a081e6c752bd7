//! Which routes serve which Service, and the TrafficRoutes they become.
//!
//! Precedence when several kinds route one Service: a Strait TrafficRoute (and an Istio VirtualService, which
//! Strait reads as one) wins over every Gateway API route, since it is the mesh's own resource; a GRPCRoute
//! wins over an HTTPRoute, as GEP-1426 requires. The loser's parent gets `Accepted=False`, reason
//! `Conflicted`, naming the winner. Routes of the winning kind are merged: all their rules, ordered by match
//! precedence, then the oldest route, then namespace/name, then rule order (the Gateway API order).

use std::collections::BTreeMap;

use strait_api::{bounds::MAX_HTTP_RULES, Named, ServiceRef, TrafficRouteSpec};

use super::{GatewayRoute, ParentRef, RouteKind};
use crate::model::Snapshot;

/// What became of one Service parent of a route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentState {
    /// The index in `spec.parentRefs`.
    pub index: usize,
    pub reference: ParentRef,
    /// `Ok`: requests to the Service are routed by this route's rules. `Err((reason, message))`: not, and why.
    pub accepted: Result<(), (&'static str, String)>,
}

pub const REASON_UNSUPPORTED: &str = "UnsupportedValue";
pub const REASON_CONFLICTED: &str = "Conflicted";
pub const REASON_NO_PARENT: &str = "NoMatchingParent";

/// The state of every Service parent of `route` against the rest of `snapshot`.
pub fn parent_states(snapshot: &Snapshot, route: &GatewayRoute) -> Vec<ParentState> {
    route
        .parents
        .iter()
        .map(|(index, reference)| ParentState {
            index: *index,
            reference: reference.clone(),
            accepted: parent_state(snapshot, route, *index, reference),
        })
        .collect()
}

fn parent_state(
    snapshot: &Snapshot,
    route: &GatewayRoute,
    index: usize,
    parent: &ParentRef,
) -> Result<(), (&'static str, String)> {
    let field = format!("spec.parentRefs[{index}]");
    let unsupported = |message: String| Err((REASON_UNSUPPORTED, message));
    if parent.namespace.as_deref().is_some_and(|n| n != route.namespace) {
        return unsupported(format!(
            "{field}.namespace: a route applies only to Services of its own namespace (consumer routes are not supported)"
        ));
    }
    if parent.section_name.is_some() {
        return unsupported(format!("{field}.sectionName: not supported for a Service parent"));
    }
    let Some(service) = snapshot.services.iter().find(|s| s.namespace == route.namespace && s.name == parent.name)
    else {
        return Err((REASON_NO_PARENT, format!("{field}: Service {}/{} does not exist", route.namespace, parent.name)));
    };
    if let Some(port) = parent.port {
        let ports: Vec<u16> = service.ports.iter().map(|p| p.port).collect();
        if ports != [port] {
            return unsupported(format!(
                "{field}.port: Strait routes apply to every port of a Service, and Service {}/{} has ports {ports:?}; \
                 leave the port out, or give the Service only port {port}",
                route.namespace, parent.name
            ));
        }
    }
    let target = ServiceRef::new(&parent.name, &route.namespace);
    if let Some(winner) = snapshot.traffic_routes.iter().find(|r| crate::translate::route_applies_to(r, &target)) {
        return Err((
            REASON_CONFLICTED,
            format!(
                "{field}: Service {}/{} is routed by TrafficRoute {}/{}, which takes precedence (TrafficRoute > GRPCRoute > HTTPRoute)",
                route.namespace, parent.name, winner.namespace, winner.name
            ),
        ));
    }
    if route.kind == RouteKind::Http {
        let grpc = snapshot.gateway_routes.iter().find(|other| {
            other.kind == RouteKind::Grpc
                && other.namespace == route.namespace
                && other
                    .parents
                    .iter()
                    .any(|(_, p)| p.name == parent.name && p.namespace.as_deref().is_none_or(|n| n == route.namespace))
        });
        if let Some(winner) = grpc {
            return Err((
                REASON_CONFLICTED,
                format!(
                    "{field}: Service {}/{} is routed by GRPCRoute {}/{}, which takes precedence (TrafficRoute > GRPCRoute > HTTPRoute)",
                    route.namespace, parent.name, winner.namespace, winner.name
                ),
            ));
        }
    }
    Ok(())
}

/// One TrafficRoute (or several, when there are more rules than one may hold) per Service that Gateway API
/// routes serve, named `<kind>.<service>`; each rule keeps the name that says which route it came from.
pub fn traffic_routes(snapshot: &Snapshot) -> Vec<Named<TrafficRouteSpec>> {
    let mut per_service: BTreeMap<(String, String), Vec<&GatewayRoute>> = BTreeMap::new();
    for route in &snapshot.gateway_routes {
        for state in parent_states(snapshot, route) {
            if state.accepted.is_ok() {
                let routes = per_service.entry((route.namespace.clone(), state.reference.name.clone())).or_default();
                // A route naming one Service twice (two ports, say) applies once.
                if !routes.iter().any(|r| std::ptr::eq(*r, route)) {
                    routes.push(route);
                }
            }
        }
    }
    let mut out = Vec::new();
    for ((namespace, service), routes) in per_service {
        let mut rules: Vec<_> =
            routes.iter().flat_map(|route| route.rules.iter().map(move |rule| (route, rule))).collect();
        rules.sort_by(|(a, ra), (b, rb)| {
            let key = |route: &GatewayRoute, rule: &super::GatewayRule| {
                (rule.precedence.clone(), route.created.is_none(), route.created, route.name.clone(), rule.index)
            };
            key(a, ra).cmp(&key(b, rb))
        });
        let kind = routes[0].kind.model_kind().to_string().to_ascii_lowercase();
        let chunks: Vec<_> = rules.chunks(MAX_HTTP_RULES).collect();
        for (n, chunk) in chunks.iter().enumerate() {
            let name = if n == 0 { format!("{kind}.{service}") } else { format!("{kind}.{service}.{n}") };
            out.push(Named {
                name,
                namespace: namespace.clone(),
                spec: TrafficRouteSpec {
                    hosts: vec![service.clone()],
                    http: chunk
                        .iter()
                        .map(|(route, rule)| {
                            super::resolve::resolve(rule, route.kind, &route.namespace, Some(snapshot))
                        })
                        .collect(),
                    escaped_slashes: None,
                },
            });
        }
    }
    out
}
