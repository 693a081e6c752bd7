//! `security.istio.io` AuthorizationPolicy -> Strait's AuthorizationPolicy, and PeerAuthentication -> the
//! policy the proxies apply to plaintext (`strait_api::PeerAuthentication`). A condition Strait cannot evaluate is never simply dropped: an ALLOW rule that needs
//! it is left out (it would allow more without it) and a DENY rule keeps applying without it (it denies
//! more), so a converted policy is never more permissive than the original.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use strait_api::{LabelSelector, MtlsMode, PeerAuthentication};

use super::fields::{Fields, NoteKind, Notes};

/// Source and operation fields that Strait has, with the same names and meaning.
const SOURCE_FIELDS: [&str; 6] =
    ["principals", "notPrincipals", "namespaces", "notNamespaces", "ipBlocks", "notIpBlocks"];
const OPERATION_FIELDS: [&str; 4] = ["methods", "notMethods", "paths", "notPaths"];

/// The spec of a Strait AuthorizationPolicy, or `Err` with the reason the resource cannot be converted at all.
pub fn authorization_policy(mut spec: Fields, notes: &mut Notes) -> Result<Value, String> {
    let mut out = Map::new();
    let action = match spec.take("action") {
        None => "ALLOW".to_string(),
        Some(Value::String(a)) if a == "ALLOW" || a == "DENY" => a,
        Some(other) => {
            return Err(format!(
                "{}: {other} is not supported (ALLOW or DENY); converting it would change who is allowed",
                spec.path("action")
            ))
        }
    };
    let deny = action == "DENY";
    out.insert("action".into(), json!(action));
    if let Some(mut selector) = spec.object("selector", notes) {
        if let Some(labels) = selector.take("matchLabels") {
            out.insert("selector".into(), json!({ "matchLabels": labels }));
        }
        selector.finish(notes);
    }
    for key in ["targetRef", "targetRefs", "provider"] {
        if spec.take(key).is_some() {
            return Err(format!("{}: is not supported; the policy would apply elsewhere", spec.path(key)));
        }
    }
    let mut rules = Vec::new();
    for (path, rule) in spec.list("rules", notes) {
        let mut rule = Fields::new(path.clone(), rule, notes);
        let mut unsupported = Vec::new();
        let mut r = Map::new();
        let from: Vec<Value> = rule
            .list("from", notes)
            .into_iter()
            .map(|(path, from)| {
                let mut from = Fields::new(path, from, notes);
                let mut source = from.object("source", notes).map(|mut source| {
                    let mut s = Map::new();
                    for key in SOURCE_FIELDS {
                        if let Some(v) = source.take(key) {
                            s.insert(key.into(), v);
                        }
                    }
                    for key in source.keys() {
                        source.take(&key);
                        unsupported.push(source.path(&key));
                    }
                    source.finish(notes);
                    Value::Object(s)
                });
                from.finish(notes);
                json!({ "source": source.take().unwrap_or_else(|| json!({})) })
            })
            .collect();
        let to: Vec<Value> = rule
            .list("to", notes)
            .into_iter()
            .map(|(path, to)| {
                let mut to = Fields::new(path, to, notes);
                let operation = to.object("operation", notes).map(|mut operation| {
                    let mut o = Map::new();
                    for key in OPERATION_FIELDS {
                        if let Some(v) = operation.take(key) {
                            o.insert(key.into(), v);
                        }
                    }
                    for key in ["ports", "notPorts"] {
                        if let Some(ports) = operation.take(key) {
                            match numeric_ports(&ports) {
                                Some(ports) => {
                                    o.insert(key.into(), ports);
                                }
                                None => unsupported.push(operation.path(key)),
                            }
                        }
                    }
                    for key in operation.keys() {
                        operation.take(&key);
                        unsupported.push(operation.path(&key));
                    }
                    operation.finish(notes);
                    Value::Object(o)
                });
                to.finish(notes);
                json!({ "operation": operation.unwrap_or_else(|| json!({})) })
            })
            .collect();
        if rule.take("when").is_some() {
            unsupported.push(rule.path("when"));
        }
        rule.finish(notes);
        if !from.is_empty() {
            r.insert("from".into(), Value::Array(from));
        }
        if !to.is_empty() {
            r.insert("to".into(), Value::Array(to));
        }
        if unsupported.is_empty() {
            rules.push(Value::Object(r));
        } else if deny {
            for field in unsupported {
                notes.push(field, NoteKind::Changed, "not supported: the DENY rule applies without it (denies more)");
            }
            rules.push(Value::Object(r));
        } else {
            for field in unsupported {
                notes.push(
                    field,
                    NoteKind::Dropped,
                    format!("not supported: the ALLOW rule {path} is left out (it would allow more without it)"),
                );
            }
        }
    }
    // An ALLOW whose every rule was left out has no rules: it allows nothing, the safe reading.
    out.insert("rules".into(), Value::Array(rules));
    spec.finish(notes);
    Ok(Value::Object(out))
}

/// Istio writes ports as strings (`"8080"`); Strait takes numbers.
fn numeric_ports(ports: &Value) -> Option<Value> {
    let ports = ports.as_array()?;
    let numbers: Option<Vec<Value>> = ports
        .iter()
        .map(|p| match p {
            Value::String(s) => s.parse::<u16>().ok().map(|n| json!(n)),
            Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()).map(|n| json!(n)),
            _ => None,
        })
        .collect();
    numbers.map(Value::Array)
}

/// A PeerAuthentication as the proxies apply it (see `strait_api::peer_auth`): its mode, per-port modes and
/// selector; `DISABLE` reads as PERMISSIVE (the proxies always talk mTLS to each other), a change noted.
pub fn peer_authentication(
    mut spec: Fields,
    namespace: &str,
    name: &str,
    mesh_wide_namespace: bool,
    notes: &mut Notes,
) -> Result<PeerAuthentication, String> {
    for key in ["targetRef", "targetRefs"] {
        if spec.take(key).is_some() {
            return Err(format!("{}: is not supported; the policy would apply elsewhere", spec.path(key)));
        }
    }
    let selector = match spec.object("selector", notes) {
        None => None,
        Some(mut selector) => {
            let labels = selector.take("matchLabels");
            selector.finish(notes);
            let labels: std::collections::BTreeMap<String, String> = match labels {
                None => Default::default(),
                Some(labels) => {
                    serde_json::from_value(labels).map_err(|e| format!("{}: {e}", spec.path("selector.matchLabels")))?
                }
            };
            // An empty selector selects every workload of the namespace, as no selector does.
            (!labels.is_empty()).then_some(LabelSelector { match_labels: labels })
        }
    };
    let mode = match spec.object("mtls", notes) {
        None => None,
        Some(mut mtls) => {
            let mode = read_mode(mtls.take("mode"), &mtls.path("mode"), notes)?;
            mtls.finish(notes);
            mode
        }
    };
    let mut port_level_mtls = BTreeMap::new();
    if let Some(ports) = spec.take("portLevelMtls") {
        let field = spec.path("portLevelMtls");
        let Value::Object(ports) = ports else { return Err(format!("{field}: expected a map of port to mtls")) };
        if selector.is_none() {
            return Err(format!("{field}: needs a selector (Istio ignores port-level modes without one)"));
        }
        for (port, value) in ports {
            let path = format!("{field}.{port}");
            let number = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or(format!("{path}: not a port (1-65535)"))?;
            let mut value = Fields::new(path.clone(), value, notes);
            if let Some(mode) = read_mode(value.take("mode"), &value.path("mode"), notes)? {
                port_level_mtls.insert(number, mode);
            }
            value.finish(notes);
        }
    }
    spec.finish(notes);
    let mesh_wide = mesh_wide_namespace && selector.is_none();
    Ok(PeerAuthentication {
        name: name.to_string(),
        namespace: namespace.to_string(),
        mesh_wide,
        selector,
        mode,
        port_level_mtls,
        // Known in a cluster only; set where the object's metadata is read (`kube::istio::read`).
        created: None,
    })
}

/// `mtls.mode`: `None` for UNSET (inherit).
fn read_mode(value: Option<Value>, field: &str, notes: &mut Notes) -> Result<Option<MtlsMode>, String> {
    match value.as_ref().map(|v| v.as_str().ok_or(v)) {
        None | Some(Ok("UNSET")) => Ok(None),
        Some(Ok("STRICT")) => Ok(Some(MtlsMode::Strict)),
        Some(Ok("PERMISSIVE")) => Ok(Some(MtlsMode::Permissive)),
        Some(Ok("DISABLE")) => {
            notes.push(
                field,
                NoteKind::Changed,
                "Strait never turns mTLS off between proxies: PERMISSIVE (plaintext from outside the mesh accepted)",
            );
            Ok(Some(MtlsMode::Permissive))
        }
        Some(Ok(other)) => Err(format!("{field}: {other:?} is not a mode (UNSET, STRICT, PERMISSIVE, DISABLE)")),
        Some(Err(other)) => Err(format!("{field}: {other} is not a mode")),
    }
}
