//! Backends that do not resolve, as Gateway API defines them: a backendRef naming a Service that does not
//! exist, a port the Service does not have, or another kind than Service. For an HTTPRoute, "requests that
//! would have been sent to an invalid backend MUST receive a 500 status code"; for a GRPCRoute they MUST get
//! UNAVAILABLE, which Strait answers as HTTP 503 (gRPC clients read 503 as UNAVAILABLE, as gRPC's HTTP status
//! mapping says). With several weighted backends only the invalid ones' share does. The route stays accepted
//! (`ResolvedRefs=False`, see `status.rs`).
//!
//! Strait's own TrafficRoute keeps its meaning (a destination without endpoints answers 503), so this is done
//! here, on the converted rule, per snapshot: the unresolved destinations leave `route`, and their share of
//! the weight becomes a fault abort with status 500 at that percentage (each request independently, as the
//! weighted pick is); with no resolved backend left the rule answers 500 itself.

use strait_api::{DirectResponse, Fault, FaultAbort, HttpRoute, RouteDestination};

use super::{GatewayRule, RouteKind};
use crate::model::Snapshot;

/// The HTTP status for requests to an invalid backend: 500 (HTTPRoute), 503 = UNAVAILABLE (GRPCRoute).
pub fn invalid_backend_status(kind: RouteKind) -> u16 {
    match kind {
        RouteKind::Http => 500,
        RouteKind::Grpc => 503,
    }
}

/// The rule as the proxies get it. `services`: the snapshot to resolve Service backends against, or `None`
/// when the cluster is not known (`strait import`): then only backends of another kind are invalid.
pub fn resolve(rule: &GatewayRule, kind: RouteKind, namespace: &str, services: Option<&Snapshot>) -> HttpRoute {
    let status = invalid_backend_status(kind);
    let mut out = rule.rule.clone();
    if out.route.is_empty() {
        // A redirect or a 500 already: nothing is forwarded.
        return out;
    }
    let resolves = |d: &RouteDestination| {
        let Some(snapshot) = services else { return true };
        snapshot.services.iter().any(|s| {
            s.namespace == namespace
                && s.name == d.destination.host
                && d.destination.port.is_none_or(|port| s.ports.iter().any(|p| p.port == port))
        })
    };
    let (resolved, unresolved): (Vec<RouteDestination>, Vec<RouteDestination>) =
        out.route.drain(..).partition(|d| resolves(d));
    let weight = |list: &[RouteDestination]| list.iter().map(|d| u64::from(d.weight.unwrap_or(1))).sum::<u64>();
    let good = weight(&resolved);
    let bad = weight(&unresolved) + u64::from(rule.invalid_weight);
    if bad == 0 {
        out.route = resolved;
        return out;
    }
    if good == 0 {
        out.rewrite = None;
        out.direct_response = Some(DirectResponse { status, body: None });
        return out;
    }
    out.route = resolved;
    let percentage = bad as f64 * 100.0 / (good + bad) as f64;
    out.fault = Some(Fault { delay: None, abort: Some(FaultAbort { http_status: status, percentage }) });
    out
}
