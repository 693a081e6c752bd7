//! Istio resources as written in Istio's documentation, converted to Strait's kinds: VirtualService ->
//! TrafficRoute, DestinationRule -> DestinationPolicy, AuthorizationPolicy -> AuthorizationPolicy,
//! PeerAuthentication -> the namespace's mTLS mode. Every field of the input is converted, or reported with
//! what leaving it out means ([`Note`]); nothing is dropped silently. The converted spec is then checked as
//! any Strait resource is (`admit::check_object`), so what comes out applies as it reads.
//!
//! Used by `strait import` (prints the Strait resources and the notes) and by the file provider, which reads
//! Istio documents directly and refuses one whose conversion would change behaviour, naming the field.

mod fields;
mod networking;
mod security;
mod service_entry;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use fields::{Fields, Notes};
pub use fields::{Note, NoteKind};

use crate::model::{Kind, Object};

/// The API groups read here; any version (`v1`, `v1beta1`, `v1alpha3`) of the kinds below.
const NETWORKING: &str = "networking.istio.io/";
const SECURITY: &str = "security.istio.io/";
/// Istio's root namespace: a PeerAuthentication there applies to the whole mesh.
const ROOT_NAMESPACE: &str = "istio-system";

/// One Istio resource and what became of it.
#[derive(Debug)]
pub struct Converted {
    /// `VirtualService shop/reviews`.
    pub origin: String,
    pub namespace: String,
    pub name: String,
    pub outcome: Outcome,
    pub notes: Vec<Note>,
}

#[derive(Debug)]
pub enum Outcome {
    /// A Strait resource (the whole document: apiVersion, kind, metadata, spec) and the object it admits as.
    Resource { document: Value, object: Box<Object> },
    /// A kind Strait has no resource of its own for (PeerAuthentication, ServiceEntry): the control plane and
    /// the file provider read the Istio resource as it is, into this object.
    Direct { object: Box<Object> },
    /// Not convertible; the reason names the field.
    Refused(String),
}

impl Converted {
    /// Whether applying the output would behave differently from Istio with the input.
    pub fn changes_behaviour(&self) -> bool {
        matches!(self.outcome, Outcome::Refused(_)) || self.notes.iter().any(Note::changes_behaviour)
    }
}

/// Whether `document` is one of the Istio kinds this module reads.
pub fn is_istio(document: &Value) -> bool {
    is_istio_api(document.get("apiVersion").and_then(Value::as_str).unwrap_or_default())
}

/// Whether an `apiVersion` is one of the Istio groups this module reads.
pub fn is_istio_api(api_version: &str) -> bool {
    api_version.starts_with(NETWORKING) || api_version.starts_with(SECURITY)
}

/// Converts one Istio document (see [`is_istio`]).
pub fn convert(document: Value, trust_domain: &str) -> Converted {
    let text = |path: &[&str]| {
        path.iter().try_fold(&document, |v, key| v.get(*key)).and_then(Value::as_str).unwrap_or_default().to_string()
    };
    let api = text(&["apiVersion"]);
    let kind = text(&["kind"]);
    let name = text(&["metadata", "name"]);
    let namespace =
        Some(text(&["metadata", "namespace"])).filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    let origin = format!("{kind} {namespace}/{name}");
    let mut notes = Notes::default();
    let spec = Fields::new("spec", document.get("spec").cloned().unwrap_or(Value::Null), &mut notes);
    let group = if api.starts_with(NETWORKING) { NETWORKING } else { SECURITY };
    let outcome = if name.is_empty() {
        Outcome::Refused("metadata.name: is required".into())
    } else {
        match (group, kind.as_str()) {
            (NETWORKING, "VirtualService") => {
                let spec = networking::virtual_service(spec, &mut notes);
                resource(Kind::TrafficRoute, &namespace, &name, spec, trust_domain)
            }
            (NETWORKING, "DestinationRule") => {
                let spec = networking::destination_rule(spec, &mut notes);
                resource(Kind::DestinationPolicy, &namespace, &name, spec, trust_domain)
            }
            (SECURITY, "AuthorizationPolicy") => match security::authorization_policy(spec, &mut notes) {
                Ok(spec) => resource(Kind::AuthorizationPolicy, &namespace, &name, spec, trust_domain),
                Err(reason) => Outcome::Refused(reason),
            },
            (SECURITY, "PeerAuthentication") => {
                let mesh_wide = namespace == ROOT_NAMESPACE;
                match security::peer_authentication(spec, &namespace, &name, mesh_wide, &mut notes) {
                    Ok(policy) => direct(Object::PeerAuthentication(policy), trust_domain),
                    Err(reason) => Outcome::Refused(reason),
                }
            }
            (NETWORKING, "ServiceEntry") => match service_entry::service_entry(spec, &mut notes) {
                Ok(spec) => direct(
                    Object::ServiceEntry(strait_api::Named { name: name.clone(), namespace: namespace.clone(), spec }),
                    trust_domain,
                ),
                Err(reason) => Outcome::Refused(reason),
            },
            _ => Outcome::Refused(format!(
                "kind: {kind} ({api}) is not supported (VirtualService, DestinationRule, ServiceEntry, AuthorizationPolicy, PeerAuthentication)"
            )),
        }
    };
    Converted { origin, namespace, name, outcome, notes: notes.0 }
}

/// What a discovery provider (files, or Kubernetes with `--istio-resources`) reads from one Istio document: the
/// object it stands for when the conversion is exact; otherwise the reason, naming every field that would
/// behave differently (with the object's key when it is known, so its last good version stays).
pub fn read(document: Value, trust_domain: &str) -> Result<Object, (Option<crate::model::ObjectKey>, String)> {
    let converted = convert(document, trust_domain);
    let changes = converted.changes_behaviour();
    let origin = converted.origin;
    match converted.outcome {
        Outcome::Resource { object, .. } | Outcome::Direct { object } if !changes => Ok(*object),
        Outcome::Resource { object, .. } | Outcome::Direct { object } => {
            let notes: Vec<String> =
                converted.notes.iter().filter(|n| n.changes_behaviour()).map(ToString::to_string).collect();
            Err((Some(object.key()), format!("{origin}: would behave differently in Strait: {}", notes.join("; "))))
        }
        Outcome::Refused(reason) => {
            // Named when the kind is known, so only this object is left out (or keeps its last good version).
            let kind = match origin.split(' ').next() {
                Some("VirtualService") => Some(Kind::TrafficRoute),
                Some("DestinationRule") => Some(Kind::DestinationPolicy),
                Some("AuthorizationPolicy") => Some(Kind::AuthorizationPolicy),
                Some("PeerAuthentication") => Some(Kind::PeerAuthentication),
                Some("ServiceEntry") => Some(Kind::ServiceEntry),
                _ => None,
            };
            let key = kind
                .filter(|_| !converted.name.is_empty())
                .map(|kind| crate::model::ObjectKey::new(kind, &converted.namespace, &converted.name));
            Err((key, format!("{origin}: {reason}")))
        }
    }
}

/// An object read as it is, checked as the control plane checks any object.
fn direct(object: Object, trust_domain: &str) -> Outcome {
    match crate::admit::check_object(trust_domain, &object) {
        Ok(()) => Outcome::Direct { object: Box::new(object) },
        Err(problems) => Outcome::Refused(problems.join("; ")),
    }
}

/// The Strait document for `spec`, checked as the control plane checks any resource.
fn resource(kind: Kind, namespace: &str, name: &str, spec: Value, trust_domain: &str) -> Outcome {
    fn named<T>(namespace: &str, name: &str, spec: T) -> strait_api::Named<T> {
        strait_api::Named { name: name.to_string(), namespace: namespace.to_string(), spec }
    }
    let object = match kind {
        Kind::TrafficRoute => typed(&spec).map(|s| Object::TrafficRoute(named(namespace, name, s))),
        Kind::DestinationPolicy => typed(&spec).map(|s| Object::DestinationPolicy(named(namespace, name, s))),
        _ => typed(&spec).map(|s| Object::AuthorizationPolicy(named(namespace, name, s))),
    };
    let object = match object {
        Ok(object) => object,
        Err(e) => return Outcome::Refused(e),
    };
    if let Err(problems) = crate::admit::check_object(trust_domain, &object) {
        return Outcome::Refused(format!("after conversion: {}", problems.join("; ")));
    }
    let document = json!({
        "apiVersion": crate::files::API_VERSION,
        "kind": kind.to_string(),
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    });
    Outcome::Resource { document, object: Box::new(object) }
}

fn typed<T: DeserializeOwned>(spec: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(spec.clone()).map_err(|e| format!("spec.{}: {}", e.path(), e.inner()))
}

/// Every YAML document of `text` that is an Istio resource, converted; other documents are skipped.
pub fn convert_all(text: &str, trust_domain: &str) -> Result<Vec<Converted>, String> {
    let mut out = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(document).map_err(|e| format!("document {}: {e}", i + 1))?;
        if is_istio(&value) {
            out.push(convert(value, trust_domain));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
