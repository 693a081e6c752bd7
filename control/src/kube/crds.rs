//! The three custom resources, read one object at a time from their untyped form.
//!
//! The watches deliver `DynamicObject`s instead of the typed resources so that one object whose spec does not
//! parse (a field the schema let through but the spec type refuses) becomes a rejection naming its field,
//! like any other invalid object, instead of failing the whole list and stalling discovery.

use kube::api::{ApiResource, DynamicObject};
use kube::ResourceExt as _;
use serde::de::DeserializeOwned;
use strait_api::crd::{self, ResourceStatus};
use strait_api::Named;

use crate::gateway::{self, RouteKind};
use crate::model::{Kind, Object, ObjectKey, Rejection, Sourced};

/// Where every object discovered from the API server says it came from, in problem messages.
pub const SOURCE: &str = "kubernetes";

/// One of the three kinds, or a Gateway API route kind (watched only when its CRD is installed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrdKind {
    TrafficRoute,
    DestinationPolicy,
    AuthorizationPolicy,
    Gateway(RouteKind),
}

impl CrdKind {
    pub const ALL: [CrdKind; 3] = [CrdKind::TrafficRoute, CrdKind::DestinationPolicy, CrdKind::AuthorizationPolicy];
    /// The Gateway API kinds, from the standard CRDs the user installs.
    pub const GATEWAY: [CrdKind; 2] = [CrdKind::Gateway(RouteKind::Http), CrdKind::Gateway(RouteKind::Grpc)];

    /// Group, version and plural, from the CRD types themselves so they cannot drift.
    pub fn api_resource(self) -> ApiResource {
        match self {
            CrdKind::TrafficRoute => ApiResource::erase::<crd::TrafficRoute>(&()),
            CrdKind::DestinationPolicy => ApiResource::erase::<crd::DestinationPolicy>(&()),
            CrdKind::AuthorizationPolicy => ApiResource::erase::<crd::AuthorizationPolicy>(&()),
            CrdKind::Gateway(kind) => ApiResource {
                group: gateway::GROUP.to_string(),
                version: "v1".to_string(),
                api_version: format!("{}/v1", gateway::GROUP),
                kind: kind.model_kind().to_string(),
                plural: kind.plural().to_string(),
            },
        }
    }

    pub fn model_kind(self) -> Kind {
        match self {
            CrdKind::TrafficRoute => Kind::TrafficRoute,
            CrdKind::DestinationPolicy => Kind::DestinationPolicy,
            CrdKind::AuthorizationPolicy => Kind::AuthorizationPolicy,
            CrdKind::Gateway(kind) => kind.model_kind(),
        }
    }
}

/// What the status writer needs to know about one custom resource as it is now.
#[derive(Clone, Debug, PartialEq)]
pub struct CrdObject {
    pub kind: CrdKind,
    pub key: ObjectKey,
    pub generation: Option<i64>,
    /// The status as stored; `None` when absent or unreadable (then it is simply rewritten).
    pub status: Option<ResourceStatus>,
    /// A Gateway API route's Service parents and `status.parents` (its status has another shape).
    pub gateway: Option<gateway::status::RouteMeta>,
}

/// Reads one object: its model object, or a rejection naming the field that does not parse.
pub fn read(kind: CrdKind, object: &DynamicObject) -> (CrdObject, Result<Sourced, Rejection>) {
    let key = ObjectKey::new(kind.model_kind(), object.namespace().unwrap_or_default(), object.name_any());
    let status = object.data.get("status").and_then(|s| serde_json::from_value(s.clone()).ok());
    let meta = CrdObject { kind, key: key.clone(), generation: object.metadata.generation, status, gateway: None };
    let spec = object.data.get("spec").cloned().unwrap_or(serde_json::Value::Null);
    let parsed = match kind {
        CrdKind::TrafficRoute => typed(spec).map(|spec| Object::TrafficRoute(named(&key, spec))),
        CrdKind::DestinationPolicy => typed(spec).map(|spec| Object::DestinationPolicy(named(&key, spec))),
        CrdKind::AuthorizationPolicy => typed(spec).map(|spec| Object::AuthorizationPolicy(named(&key, spec))),
        CrdKind::Gateway(_) => Err("read with read_gateway".to_string()),
    };
    let created = object.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second());
    let result = parsed
        .map(|object| Sourced { source: SOURCE.to_string(), object, created })
        .map_err(|message| Rejection { source: SOURCE.to_string(), key: Some(key), message });
    (meta, result)
}

/// Reads one Gateway API route: `None` when it is attached to no Service (a Gateway's route, not the mesh's).
pub fn read_gateway(kind: RouteKind, object: &DynamicObject) -> (CrdObject, Option<Result<Sourced, Rejection>>) {
    let key = ObjectKey::new(kind.model_kind(), object.namespace().unwrap_or_default(), object.name_any());
    let route_meta = gateway::status::RouteMeta::read(&object.data);
    let meta = CrdObject {
        kind: CrdKind::Gateway(kind),
        key: key.clone(),
        generation: object.metadata.generation,
        status: None,
        gateway: Some(route_meta),
    };
    let spec = object.data.get("spec").cloned().unwrap_or(serde_json::Value::Null);
    let created = object.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second());
    let parsed = match gateway::read(kind, &key.namespace, &key.name, spec, created) {
        Ok(None) => None,
        Ok(Some(route)) => {
            Some(Ok(Sourced { source: SOURCE.to_string(), object: Object::GatewayRoute(route), created }))
        }
        Err(message) => Some(Err(Rejection { source: SOURCE.to_string(), key: Some(key), message })),
    };
    (meta, parsed)
}

fn named<T>(key: &ObjectKey, spec: T) -> Named<T> {
    Named { name: key.name.clone(), namespace: key.namespace.clone(), spec }
}

/// Deserializes a spec with the failing field's path in the message: `spec.http[0].timeout: ...`.
fn typed<T: DeserializeOwned>(spec: serde_json::Value) -> Result<T, String> {
    if spec.is_null() {
        return Err("spec: is required".to_string());
    }
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("spec: {inner}")
        } else {
            format!("spec.{path}: {inner}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dynamic(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("a DynamicObject")
    }

    #[test]
    fn reads_specs_and_names_the_field_that_does_not_parse() {
        let good = dynamic(json!({
            "apiVersion": "strait.dev/v1alpha1", "kind": "TrafficRoute",
            "metadata": {"name": "r", "namespace": "shop", "generation": 3},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
            "status": {"observedGeneration": 2, "conditions": []},
        }));
        let (meta, object) = read(CrdKind::TrafficRoute, &good);
        assert_eq!(meta.generation, Some(3));
        assert_eq!(meta.status.and_then(|s| s.observed_generation), Some(2));
        assert_eq!(object.expect("parses").object.key().to_string(), "TrafficRoute shop/r");

        let bad = dynamic(json!({
            "apiVersion": "strait.dev/v1alpha1", "kind": "TrafficRoute",
            "metadata": {"name": "r", "namespace": "shop"},
            "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews", "subzet": "x"}}]}]},
        }));
        let rejection = read(CrdKind::TrafficRoute, &bad).1.expect_err("does not parse");
        assert!(rejection.message.starts_with("spec.http[0].route[0].destination.subzet: "), "{}", rejection.message);
        assert_eq!(rejection.key.map(|k| k.to_string()).as_deref(), Some("TrafficRoute shop/r"));
    }

    #[test]
    fn api_resources_come_from_the_crd_types() {
        let ar = CrdKind::DestinationPolicy.api_resource();
        assert_eq!(
            (ar.group.as_str(), ar.version.as_str(), ar.plural.as_str()),
            ("strait.dev", "v1alpha1", "destinationpolicies")
        );
    }
}
