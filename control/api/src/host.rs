//! Service host naming, once for both sides: how a host written in a resource (`reviews`, `reviews.shop`,
//! `reviews.shop.svc`, `reviews.shop.svc.cluster.local`) names an in-cluster service, and its fully qualified
//! form. The control plane resolves references with it and the proxy matches routes with it, so the two
//! cannot disagree about a short name.

/// The DNS suffix of in-cluster service names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// An in-cluster service, by name and namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
}

impl ServiceRef {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        ServiceRef { name: name.into(), namespace: namespace.into() }
    }

    /// Reads a host as users write it, in `default_namespace`. DNS names are case-insensitive and may end in a
    /// dot. Anything with more labels that is not under [`CLUSTER_DOMAIN`] is not a service of this cluster.
    pub fn parse(host: &str, default_namespace: &str) -> Option<ServiceRef> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let (name, namespace) = match labels.as_slice() {
            [name] => (*name, default_namespace),
            [name, namespace] | [name, namespace, "svc"] => (*name, *namespace),
            [name, namespace, "svc", domain @ ..] if domain.join(".") == CLUSTER_DOMAIN => (*name, *namespace),
            _ => return None,
        };
        (!name.is_empty() && !namespace.is_empty()).then(|| ServiceRef::new(name, namespace))
    }

    /// `name.namespace.svc.cluster.local`.
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.{CLUSTER_DOMAIN}", self.name, self.namespace)
    }
}

/// The fully qualified form of a host written in `namespace`: a cluster service's FQDN, anything else as
/// written (an external name).
pub fn canonical_host(host: &str, namespace: &str) -> String {
    ServiceRef::parse(host, namespace).map(|s| s.fqdn()).unwrap_or_else(|| host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_names_mean_the_same_service() {
        let reviews = Some(ServiceRef::new("reviews", "shop"));
        for host in ["reviews", "reviews.shop", "reviews.shop.svc", "reviews.shop.svc.cluster.local", "Reviews.Shop."] {
            assert_eq!(ServiceRef::parse(host, "shop"), reviews, "{host}");
            assert_eq!(canonical_host(host, "shop"), "reviews.shop.svc.cluster.local", "{host}");
        }
        assert_eq!(ServiceRef::parse("reviews.other", "shop"), Some(ServiceRef::new("reviews", "other")));
        for external in ["api.example.com", "reviews.shop.svc.other.domain", "", ".shop"] {
            assert_eq!(ServiceRef::parse(external, "shop"), None, "{external}");
        }
        assert_eq!(canonical_host("api.example.com", "shop"), "api.example.com");
    }
}
