//! `strait import` for Gateway API routes: each HTTPRoute / GRPCRoute attached to Services becomes one
//! TrafficRoute for those Services, its rules in Gateway API precedence order. What the mesh would do
//! differently is a note (the same [`Converted`] shape as the Istio conversion), so nothing changes silently.

use serde_json::{json, Value};
use strait_api::{Named, TrafficRouteSpec};

use crate::istio::{Converted, Note, NoteKind, Outcome};
use crate::model::Object;

/// Every YAML document of `text` that is a Gateway API resource, converted; other documents are skipped.
pub fn convert_all(text: &str, trust_domain: &str) -> Result<Vec<Converted>, String> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(document).map_err(|e| format!("document {}: {e}", i + 1))?;
        if value.get("apiVersion").and_then(Value::as_str).is_some_and(super::is_gateway_api) {
            out.push(convert(&value, trust_domain));
        }
    }
    Ok(out)
}

fn convert(document: &Value, trust_domain: &str) -> Converted {
    let text = |path: &[&str]| {
        path.iter().try_fold(document, |v, key| v.get(*key)).and_then(Value::as_str).unwrap_or_default().to_string()
    };
    let namespace =
        Some(text(&["metadata", "namespace"])).filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    let name = text(&["metadata", "name"]);
    let origin = format!("{} {namespace}/{name}", text(&["kind"]));
    let mut notes = Vec::new();
    let outcome = match super::read_document(document) {
        Err((_, message)) => Outcome::Refused(message),
        Ok(None) => {
            Outcome::Refused("spec.parentRefs: names no Service; a Gateway serves this route, not the mesh".into())
        }
        Ok(Some(route)) => {
            let mut hosts = Vec::new();
            let mut refused = None;
            for (index, parent) in &route.parents {
                let field = format!("spec.parentRefs[{index}]");
                if parent.namespace.as_deref().is_some_and(|n| n != namespace) {
                    refused = Some(format!("{field}.namespace: a route applies only to Services of its own namespace"));
                } else if parent.section_name.is_some() {
                    refused = Some(format!("{field}.sectionName: not supported for a Service parent"));
                } else if let Some(port) = parent.port {
                    notes.push(Note {
                        field: format!("{field}.port"),
                        what: NoteKind::Changed,
                        reason: format!(
                            "a TrafficRoute applies to every port of {}; same as port {port} when it is the only one",
                            parent.name
                        ),
                    });
                }
                if !hosts.contains(&parent.name) {
                    hosts.push(parent.name.clone());
                }
            }
            // A backendRef of another kind than Service: its share of requests gets 500 (UNAVAILABLE for
            // gRPC), as Gateway API requires; that is behaviour to review, so it is a note.
            for backend in route.backends.iter().filter(|b| b.invalid_kind.is_some()) {
                notes.push(Note {
                    field: format!("{}.kind", backend.field),
                    what: NoteKind::Changed,
                    reason: format!(
                        "{} is not a Service: requests it would get are answered {}",
                        backend.invalid_kind.as_deref().unwrap_or_default(),
                        super::resolve::invalid_backend_status(route.kind)
                    ),
                });
            }
            match refused {
                Some(reason) => Outcome::Refused(reason),
                None => {
                    let rules = route.rules.iter().map(|r| super::resolve::resolve(r, route.kind, &namespace, None));
                    resource(&namespace, &name, hosts, rules.collect(), trust_domain)
                }
            }
        }
    };
    Converted { origin, namespace, name, outcome, notes }
}

fn resource(
    namespace: &str,
    name: &str,
    hosts: Vec<String>,
    http: Vec<strait_api::HttpRoute>,
    trust_domain: &str,
) -> Outcome {
    let spec = TrafficRouteSpec { hosts, http, escaped_slashes: None };
    let object =
        Object::TrafficRoute(Named { name: name.to_string(), namespace: namespace.to_string(), spec: spec.clone() });
    if let Err(problems) = crate::admit::check_object(trust_domain, &object) {
        return Outcome::Refused(format!("after conversion: {}", problems.join("; ")));
    }
    let document = json!({
        "apiVersion": crate::files::API_VERSION,
        "kind": "TrafficRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    Outcome::Resource { document, object: Box::new(object) }
}
