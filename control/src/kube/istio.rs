//! Istio's resources read directly from the cluster (`strait-control --istio-resources`): the
//! `networking.istio.io` and `security.istio.io` kinds whose CRDs are installed are watched, and each object is
//! converted by the same code as the file provider's (`crate::istio::read`): what converts exactly joins the
//! mesh, anything else is refused with a problem naming the field (logged, and in `/debug` like every
//! rejection). Kinds whose CRD is absent are looked for again periodically and watched once installed
//! (`super::optional_kinds`).

use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::ResourceExt as _;
use serde_json::json;

use super::crds::SOURCE;
use crate::model::{Object, Rejection, Sourced};

/// The Istio kinds read: (group, kind, plural).
pub const KINDS: [(&str, &str, &str); 5] = [
    ("networking.istio.io", "VirtualService", "virtualservices"),
    ("networking.istio.io", "DestinationRule", "destinationrules"),
    ("networking.istio.io", "ServiceEntry", "serviceentries"),
    ("security.istio.io", "AuthorizationPolicy", "authorizationpolicies"),
    ("security.istio.io", "PeerAuthentication", "peerauthentications"),
];
/// The version served by Istio 1.22 and later for every kind above.
pub const VERSION: &str = "v1";

pub fn api_resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, VERSION, kind), plural)
}

/// One Istio object, as the file provider reads a document.
pub fn read(ar: &ApiResource, object: &DynamicObject, trust_domain: &str) -> Result<Sourced, Rejection> {
    let document = json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {"name": object.name_any(), "namespace": object.namespace().unwrap_or_default()},
        "spec": object.data.get("spec").cloned().unwrap_or(serde_json::Value::Null),
    });
    // Orders PeerAuthentications of one level as Istio does (the oldest applies).
    let created = object.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second());
    match crate::istio::read(document, trust_domain) {
        Ok(mut object) => {
            if let Object::PeerAuthentication(policy) = &mut object {
                policy.created = created;
            }
            Ok(Sourced { source: SOURCE.to_string(), object, created })
        }
        // Logged with every other rejection when the configuration is published.
        Err((key, message)) => Err(Rejection { source: SOURCE.to_string(), key, message }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_with_the_file_providers_conversion_and_refuses_by_field() {
        let ar = api_resource("networking.istio.io", "ServiceEntry", "serviceentries");
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"hosts": ["api.example.com"], "addresses": ["192.0.2.1"], "ports": [{"number": 443, "name": "https"}]},
        }))
        .expect("an object");
        let read_ok = read(&ar, &object, "cluster.local").expect("converts exactly");
        assert_eq!(read_ok.object.key().to_string(), "ServiceEntry shop/api");
        let mut dns = object.clone();
        dns.data["spec"]["resolution"] = json!("DNS");
        let refused = read(&ar, &dns, "cluster.local").expect_err("DNS is refused");
        assert!(refused.message.contains("spec.resolution"), "{}", refused.message);
    }

    /// The creation time travels with a PeerAuthentication: of two at one level, the proxies apply the oldest.
    #[test]
    fn a_peer_authentication_carries_its_creation_time() {
        let ar = api_resource("security.istio.io", "PeerAuthentication", "peerauthentications");
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
            "metadata": {"name": "strict", "namespace": "shop", "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"mtls": {"mode": "STRICT"}},
        }))
        .expect("an object");
        let read_ok = read(&ar, &object, "cluster.local").expect("converts exactly");
        assert_eq!(read_ok.created, Some(1_767_323_045));
        let Object::PeerAuthentication(policy) = read_ok.object else { panic!("a PeerAuthentication") };
        assert_eq!(policy.created, Some(1_767_323_045));
    }
}
