//! `security.istio.io` AuthorizationPolicy -> Strait's AuthorizationPolicy, and PeerAuthentication -> the
//! namespace's mTLS mode. A condition Strait cannot evaluate is never simply dropped: an ALLOW rule that needs
//! it is left out (it would allow more without it) and a DENY rule keeps applying without it (it denies
//! more), so a converted policy is never more permissive than the original.

use serde_json::{json, Map, Value};

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

/// The namespace mTLS mode a PeerAuthentication asks for (`STRICT` or `PERMISSIVE`), or `Err` when it cannot
/// be expressed (a workload selector or per-port modes: Strait sets the mode per namespace).
pub fn peer_authentication(mut spec: Fields, notes: &mut Notes) -> Result<&'static str, String> {
    for key in ["selector", "portLevelMtls"] {
        if spec.take(key).is_some() {
            return Err(format!("{}: is not supported: Strait sets the mTLS mode per namespace", spec.path(key)));
        }
    }
    let mode = match spec.object("mtls", notes) {
        None => "STRICT",
        Some(mut mtls) => {
            let mode = match mtls.take("mode").as_ref().and_then(Value::as_str) {
                None | Some("UNSET") | Some("STRICT") => "STRICT",
                Some("PERMISSIVE") => "PERMISSIVE",
                Some("DISABLE") => {
                    notes.push(
                        mtls.path("mode"),
                        NoteKind::Changed,
                        "Strait never turns mTLS off between proxies: PERMISSIVE (plaintext from outside the mesh accepted)",
                    );
                    "PERMISSIVE"
                }
                Some(other) => return Err(format!("{}: {other:?} is not a mode", mtls.path("mode"))),
            };
            mtls.finish(notes);
            mode
        }
    };
    spec.finish(notes);
    Ok(mode)
}
