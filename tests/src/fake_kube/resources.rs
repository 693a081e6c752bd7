//! The kinds the fake API server knows, and how their URLs are spelled.

/// One kind of object the fake serves.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// Empty for the core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The lower-case plural in URLs (`pods`, `trafficroutes`).
    pub plural: &'static str,
    pub namespaced: bool,
    /// Whether `/status` is a separate subresource: writes to the main resource then leave `status` alone and
    /// writes to `/status` touch nothing else, as the real API server does for these kinds.
    pub status_subresource: bool,
    /// Virtual kinds (TokenReview) are only ever created, never stored.
    pub create_only: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn kind(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> ResourceType {
    ResourceType { group, version, kind, plural, namespaced, status_subresource, create_only: false }
}

/// Every kind Strait uses.
pub static RESOURCES: &[ResourceType] = &[
    kind("", "v1", "Namespace", "namespaces", false, true),
    kind("", "v1", "Pod", "pods", true, true),
    kind("", "v1", "Service", "services", true, true),
    kind("", "v1", "Secret", "secrets", true, false),
    kind("", "v1", "ConfigMap", "configmaps", true, false),
    kind("", "v1", "Node", "nodes", false, true),
    kind("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true, false),
    // The control plane replicas' leader election.
    kind("coordination.k8s.io", "v1", "Lease", "leases", true, false),
    ResourceType {
        group: "authentication.k8s.io",
        version: "v1",
        kind: "TokenReview",
        plural: "tokenreviews",
        namespaced: false,
        status_subresource: false,
        create_only: true,
    },
    // `strait check` reads the installed CRDs.
    kind("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false, true),
    kind("strait.dev", "v1alpha1", "TrafficRoute", "trafficroutes", true, true),
    kind("strait.dev", "v1alpha1", "DestinationPolicy", "destinationpolicies", true, true),
    kind("strait.dev", "v1alpha1", "AuthorizationPolicy", "authorizationpolicies", true, true),
    // Istio's kinds, read with `strait-control --istio-resources` (listed after Strait's: `by_kind_name` finds
    // Strait's AuthorizationPolicy first).
    kind("networking.istio.io", "v1", "VirtualService", "virtualservices", true, true),
    kind("networking.istio.io", "v1", "DestinationRule", "destinationrules", true, true),
    kind("networking.istio.io", "v1", "ServiceEntry", "serviceentries", true, true),
    kind("security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies", true, true),
    kind("security.istio.io", "v1", "PeerAuthentication", "peerauthentications", true, true),
    // The Gateway API routes a mesh serves (GAMMA), from the standard CRDs.
    kind("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes", true, true),
    kind("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes", true, true),
];

/// The kind served at `/api[s]/<group>/<version>/<plural>`.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The kind of an object by its `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The kind by its name alone (`Pod`, `TrafficRoute`): the names are unique among [`RESOURCES`].
pub fn by_kind_name(kind: &str) -> Option<&'static ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind)
}
