//! `status.parents[]` of HTTPRoutes and GRPCRoutes attached to Services, as Gateway API defines it: one entry
//! per Service parent, `controllerName: strait.dev/mesh`, conditions `Accepted` (True, or False with reason
//! `UnsupportedValue` / `Conflicted` / `NoMatchingParent` and a message naming the field) and `ResolvedRefs`
//! (False, `BackendNotFound` when a backendRef names a Service or port that does not exist, `InvalidKind` when
//! it names another kind than Service; requests to such a backend get 500, see `resolve.rs`). Entries of other
//! controllers (a Gateway's) are kept as they are. Written only when they would change.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::attach::parent_states;
use super::{GatewayRoute, ParentRef, CONTROLLER_NAME};
use crate::kube::crds::CrdObject;
use crate::kube::status::{Verdict, Verdicts};
use crate::model::{ObjectKey, Snapshot};

const MAX_MESSAGE: usize = 4096;

/// What the status writer needs from a route as stored, read even when its spec is refused.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteMeta {
    /// The Service parents as written.
    pub parents: Vec<ParentRef>,
    /// `status.parents` as stored.
    pub current: Vec<Value>,
}

impl RouteMeta {
    pub fn read(data: &Value) -> RouteMeta {
        let parents = data
            .pointer("/spec/parentRefs")
            .and_then(Value::as_array)
            .map(|refs| {
                refs.iter()
                    .filter_map(|r| serde_json::from_value::<ParentRef>(r.clone()).ok())
                    .filter(ParentRef::is_service)
                    .collect()
            })
            .unwrap_or_default();
        let current = data.pointer("/status/parents").and_then(Value::as_array).cloned().unwrap_or_default();
        RouteMeta { parents, current }
    }
}

/// One entry of `status.parents`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    pub controller_name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The `status.parents` the route should have: other controllers' entries, then one per Service parent.
/// `None`: nothing to write (no Service parent and no entry of ours to remove, or already as desired).
pub fn desired(
    meta: &RouteMeta,
    key: &ObjectKey,
    verdict: Option<&Verdicts>,
    snapshot: &Snapshot,
    generation: Option<i64>,
) -> Option<Vec<Value>> {
    let ours = |v: &Value| v.get("controllerName").and_then(Value::as_str) == Some(CONTROLLER_NAME);
    let current: Vec<RouteParentStatus> =
        meta.current.iter().filter(|v| ours(v)).filter_map(|v| serde_json::from_value(v.clone()).ok()).collect();
    let route = snapshot
        .gateway_routes
        .iter()
        .find(|r| r.kind.model_kind() == key.kind && r.namespace == key.namespace && r.name == key.name);
    let states = route.map(|r| parent_states(snapshot, r)).unwrap_or_default();
    let mut entries = Vec::new();
    for parent in &meta.parents {
        let (accepted, resolved) = match verdict.map(|v| &v.accepted) {
            Some(Verdict::True) => {
                let state = states.iter().find(|s| &s.reference == parent).map(|s| s.accepted.clone());
                let accepted = match state {
                    Some(Ok(())) | None => ("True", "Accepted", String::new()),
                    Some(Err((reason, message))) => ("False", reason, message),
                };
                (accepted, route.map_or_else(pending, |r| resolved_refs(r, snapshot)))
            }
            Some(Verdict::False { message, .. } | Verdict::Unknown { message, .. }) => {
                (("False", super::attach::REASON_UNSUPPORTED, message.clone()), pending())
            }
            None => (("Unknown", "Pending", "not judged yet".to_string()), pending()),
        };
        let previous = current.iter().find(|c| &c.parent_ref == parent);
        let condition = |type_: &str, (status, reason, message): (&str, &str, String)| {
            let time = previous
                .and_then(|p| p.conditions.iter().find(|c| c.type_ == type_ && c.status == status))
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message: truncate(message),
                observed_generation: generation,
                last_transition_time: time,
            }
        };
        entries.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: CONTROLLER_NAME.to_string(),
            conditions: vec![condition("Accepted", accepted), condition("ResolvedRefs", resolved)],
        });
    }
    if entries == current {
        return None;
    }
    let mut all: Vec<Value> = meta.current.iter().filter(|v| !ours(v)).cloned().collect();
    all.extend(entries.iter().filter_map(|e| serde_json::to_value(e).ok()));
    Some(all)
}

fn pending() -> (&'static str, &'static str, String) {
    ("Unknown", "Pending", "references are checked once the route is accepted".to_string())
}

/// `ResolvedRefs`: every backendRef names an existing Service and port of the route's namespace. Reason
/// `InvalidKind` when one names another kind than Service, else `BackendNotFound`; the message names each.
pub(super) fn resolved_refs(route: &GatewayRoute, snapshot: &Snapshot) -> (&'static str, &'static str, String) {
    let mut problems = Vec::new();
    let mut invalid_kind = false;
    for backend in &route.backends {
        if let Some(kind) = &backend.invalid_kind {
            invalid_kind = true;
            problems.push(format!(
                "{}.kind: {kind} is not a Service, the only kind of backend Strait routes to",
                backend.field
            ));
            continue;
        }
        let service = snapshot.services.iter().find(|s| s.namespace == route.namespace && s.name == backend.name);
        match (service, backend.port) {
            (None, _) => {
                problems.push(format!("{}: Service {}/{} does not exist", backend.field, route.namespace, backend.name))
            }
            (Some(s), Some(port)) if !s.ports.iter().any(|p| p.port == port) => problems.push(format!(
                "{}.port: Service {}/{} has no port {port}",
                backend.field, route.namespace, backend.name
            )),
            _ => {}
        }
    }
    match (problems.is_empty(), invalid_kind) {
        (true, _) => ("True", "ResolvedRefs", String::new()),
        (false, true) => ("False", "InvalidKind", problems.join("; ")),
        (false, false) => ("False", "BackendNotFound", problems.join("; ")),
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" …");
    }
    message
}

/// Writes `parents` as the route's `status.parents` (a merge patch replaces the list as a whole; it holds
/// other controllers' entries unchanged).
pub async fn write(client: &kube::Client, resource: &CrdObject, parents: Vec<Value>) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &resource.key.namespace, &resource.kind.api_resource());
    let patch = serde_json::json!({ "status": { "parents": parents } });
    match api.patch_status(&resource.key.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
