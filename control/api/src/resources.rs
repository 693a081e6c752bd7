//! The specs of the resources users write (`strait.dev/v1alpha1`), in the shapes Istio users already know.
//! The control plane wraps them in CRDs; the proxy receives them unchanged inside [`crate::MeshConfig`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------------------
// AuthorizationPolicy
// ---------------------------------------------------------------------------------------------------------

/// Who may call whom. Evaluation: any matching DENY denies; if any ALLOW applies to the workload one must
/// match; otherwise allow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource, schemars::JsonSchema))]
#[cfg_attr(
    feature = "kube",
    kube(group = "strait.dev", version = "v1alpha1", kind = "AuthorizationPolicy", namespaced)
)]
#[cfg_attr(feature = "kube", kube(status = "crate::crd::ResourceStatus"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Workloads in the policy's namespace that it applies to; absent means every workload in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    #[serde(default)]
    pub action: Action,
    /// A request matches the policy when any rule matches. An ALLOW policy with no rules allows nothing; a
    /// DENY policy with no rules denies nothing (as in Istio).
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

/// A rule matches when one of `from` matches (or `from` is empty) AND one of `to` matches (or `to` is empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub from: Vec<From>,
    #[serde(default)]
    pub to: Vec<To>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct From {
    pub source: Source,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct To {
    pub operation: Operation,
}

/// Every non-empty field must match. Principals are `<trust domain>/ns/<ns>/sa/<sa>` (a `spiffe://` prefix is
/// accepted too) and match exactly, by prefix (`foo*`), by suffix (`*foo`) or anything (`*`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// CIDRs (`10.0.0.0/8`) or single addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
}

/// Every non-empty field must match. Methods, paths and headers are L7 and only match HTTP requests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Exact, prefix (`/api/*`) or suffix (`*.png`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
}

// ---------------------------------------------------------------------------------------------------------
// TrafficRoute
// ---------------------------------------------------------------------------------------------------------

/// HTTP routing for one or more service hosts: ordered rules, first match wins.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource, schemars::JsonSchema))]
#[cfg_attr(feature = "kube", kube(group = "strait.dev", version = "v1alpha1", kind = "TrafficRoute", namespaced))]
#[cfg_attr(feature = "kube", kube(status = "crate::crd::ResourceStatus"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficRouteSpec {
    /// Services in the route's namespace (`reviews`) or full names (`reviews.shop.svc.cluster.local`).
    pub hosts: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRoute>,
    /// What both proxies do with `%2F` and `%5C` in a path to these hosts: `Reject` (the default: 400, since a
    /// backend that decodes them sees segments no rule saw) or `Keep` (passed as they are, upper-case hex, and
    /// matched by routes and policies as part of a segment: for backends that treat them as data, such as
    /// object keys). When several TrafficRoutes name a host, `Keep` applies only if none says `Reject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escaped_slashes: Option<EscapedSlashes>,
}

/// See [`TrafficRouteSpec::escaped_slashes`]; the choice Envoy calls `path_with_escaped_slashes_action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
pub enum EscapedSlashes {
    #[default]
    Reject,
    Keep,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Any of these matches selects the rule; empty matches everything.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteDestination>,
    /// Overall request timeout, e.g. `10s`, `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
    /// Rewrites the forwarded request's path or authority (only with `route`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
}

/// Every present field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
}

/// Exactly one of the fields is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Header or query parameter present (with any value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    /// Relative weight; destinations of a rule share traffic in proportion. Absent means 100 for a single
    /// destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    /// A subset defined in the host's DestinationPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Comma-separated: `5xx`, `gateway-error`, `reset`, `connect-failure`, `retriable-status-codes`, or codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Retry non-idempotent methods too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_non_idempotent: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderChanges>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderChanges>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderChanges {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed_delay: String,
    pub percentage: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    pub http_status: u16,
    pub percentage: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u16>,
}

/// How a forwarded request is rewritten: at most one of `fullPath` and `prefix`, and `authority`. The query
/// string is kept. (Gateway API's URLRewrite filter; Istio's `rewrite.uri` is `prefix` with the rule's
/// matched prefix as `from`.)
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_path: Option<String>,
    /// Replaces a leading run of path segments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PrefixRewrite>,
    /// Replaces the `Host` header (the `:authority` of HTTP/2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// Paths whose leading segments are `from` (`/foo` matches `/foo` and `/foo/bar`, not `/foobar`) get them
/// replaced with `to`: `/foo/bar` -> `/v2/bar` for `to: /v2`, `/bar` for `to: /` or an empty `to`. A path
/// that does not start with `from` is left as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixRewrite {
    pub from: String,
    #[serde(default)]
    pub to: String,
}

impl PrefixRewrite {
    /// The rewritten path, or `None` when `path` does not start with `from`'s segments.
    pub fn apply(&self, path: &str) -> Option<String> {
        let from = self.from.trim_end_matches('/');
        let rest = path.strip_prefix(from)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let rewritten = format!("{}{rest}", self.to.trim_end_matches('/'));
        Some(if rewritten.is_empty() { "/".to_string() } else { rewritten })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

// ---------------------------------------------------------------------------------------------------------
// DestinationPolicy
// ---------------------------------------------------------------------------------------------------------

/// What happens to traffic for one service after routing: subsets, balancing, limits, outlier detection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(kube::CustomResource, schemars::JsonSchema))]
#[cfg_attr(feature = "kube", kube(group = "strait.dev", version = "v1alpha1", kind = "DestinationPolicy", namespaced))]
#[cfg_attr(feature = "kube", kube(status = "crate::crd::ResourceStatus"))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationPolicySpec {
    pub host: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// How many retries the routes to this host may add to its traffic (Linkerd's retryBudget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Retries to one destination may add at most `percent` % of its request rate plus `minRetriesPerSecond`,
/// counted over a 10 s window: enough to mask a flaky endpoint, too little for a retry storm to multiply the
/// load of a failing service. Defaults: 50 % and 10 per second.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    // Boxed: most policies have none, and it would make every DestinationPolicy (and each delta's resource
    // enum) larger. (A plain comment: a doc comment would replace the type's description in the schema.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<Box<ConsistentHash>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    LeastRequest,
    PeakEwma,
    RoundRobin,
    Random,
}

/// Consistent hashing on one key: exactly one of `httpHeaderName`, `httpCookie`, `httpQueryParameterName`
/// (HTTP ports only) or `useSourceIp: true` (any port). The algorithm is a ring hash (Envoy's `RING_HASH`,
/// Istio's `ringHash`); `maglev` is refused by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<String>,
    /// The value of this query parameter (as written in the request, not percent-decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    /// Hash on the calling pod's IP address: every connection and request of one client goes to one endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_source_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    /// Not supported (Strait's consistent hash is a ring hash): accepted by the schema only to be refused
    /// by name rather than as an unknown field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
}

impl ConsistentHash {
    /// The key fields that are set (`useSourceIp: false` is not a key).
    pub fn keys(&self) -> Vec<&'static str> {
        let set = [
            ("httpHeaderName", self.http_header_name.is_some()),
            ("httpCookie", self.http_cookie.is_some()),
            ("httpQueryParameterName", self.http_query_parameter_name.is_some()),
            ("useSourceIp", self.use_source_ip == Some(true)),
        ];
        set.iter().filter(|(_, on)| *on).map(|(name, _)| *name).collect()
    }

    /// The key field that needs an HTTP request (header, cookie, query parameter), if that is the key.
    pub fn http_key(&self) -> Option<&'static str> {
        self.keys().into_iter().find(|k| *k != "useSourceIp")
    }
}

/// The ring of the consistent hash. Each endpoint places `minimumRingSize` points on it (default 1024, at most
/// 262144: `bounds::MAX_RING_SIZE`), so the ring is at least that large.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RingHash {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_ring_size: Option<u64>,
}

/// Istio's `maglev` block, refused: see [`ConsistentHash::maglev`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maglev {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpPool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Speak to the backend in the HTTP version the client used, instead of the one the service port
    /// declares (`appProtocol: http` -> HTTP/1.1; `http2`, `h2c`, `grpc` -> HTTP/2). As Istio's
    /// `useClientProtocol`; ports that declare no protocol always follow the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_client_protocol: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "kube", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Why a duration string is refused. The messages name no field: callers prefix the field's path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("{text:?} is not a duration (expected digits, an optional fraction and a unit: 250ms, 10s, 1.5m, 2h)")]
    Malformed { text: String },
    // The text is not echoed: it may be megabytes.
    #[error("a duration of {len} bytes is too long (at most {max})", max = crate::bounds::MAX_DURATION_LEN)]
    TooLong { len: usize },
    #[error("{text:?} is longer than 24h, the longest duration allowed")]
    TooLarge { text: String },
}

/// Callers that report problems as strings keep using `?`.
impl std::convert::From<DurationError> for String {
    fn from(e: DurationError) -> String {
        e.to_string()
    }
}

/// Parses durations as users write them: `250ms`, `10s`, `1.5m`, `2h`; exactly the strings
/// [`crate::bounds::DURATION_PATTERN`] matches, up to [`crate::bounds::MAX_DURATION`].
///
/// Integer arithmetic in nanoseconds, not `f64`: no input can round, overflow or reach
/// `Duration::from_secs_f64`'s panic. Digits beyond a nanosecond are dropped.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, DurationError> {
    use crate::bounds::{MAX_DURATION, MAX_DURATION_LEN};
    if text.len() > MAX_DURATION_LEN {
        return Err(DurationError::TooLong { len: text.len() });
    }
    let malformed = || DurationError::Malformed { text: text.to_string() };
    let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (whole, rest) = text.split_at(digits(text));
    let (fraction, unit) = match rest.strip_prefix('.') {
        Some(rest) => rest.split_at(digits(rest)),
        None => ("", rest),
    };
    if whole.is_empty() || (fraction.is_empty() && rest.starts_with('.')) {
        return Err(malformed());
    }
    let unit_nanos: u128 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(malformed()),
    };
    let too_large = || DurationError::TooLarge { text: text.to_string() };
    // At most 31 digits (the length bound), so this parse cannot overflow a u128; the product can.
    let whole: u128 = whole.parse().map_err(|_| malformed())?;
    let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(too_large)?;
    // 13 fraction digits resolve below a nanosecond even for hours; more could overflow the product.
    let fraction = &fraction[..fraction.len().min(13)];
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        let value: u128 = fraction.parse().map_err(|_| malformed())?;
        nanos = nanos.checked_add(value * unit_nanos / scale).ok_or_else(too_large)?;
    }
    if nanos > MAX_DURATION.as_nanos() {
        return Err(too_large());
    }
    // At most 24 h in nanoseconds, far below u64::MAX.
    Ok(std::time::Duration::from_nanos(nanos as u64))
}

/// Writes a duration so that [`parse_duration`] reads it back exactly: whole milliseconds as `250ms`,
/// anything finer as seconds with nine decimals.
pub fn format_duration(duration: std::time::Duration) -> String {
    if duration.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}.{:09}s", duration.as_secs(), duration.subsec_nanos())
    }
}

#[cfg(test)]
mod rewrite_tests {
    use super::PrefixRewrite;

    /// The table of Gateway API's `ReplacePrefixMatch` documentation.
    #[test]
    fn prefix_rewrites_follow_the_gateway_api_table() {
        let cases = [
            ("/foo", "/foo/bar", "/xyz", "/xyz/bar"),
            ("/foo", "/foo/bar", "/xyz/", "/xyz/bar"),
            ("/foo/", "/foo/bar", "/xyz", "/xyz/bar"),
            ("/foo/", "/foo/bar", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo", "/foo/", "/xyz", "/xyz/"),
            ("/foo/", "/foo/", "/xyz", "/xyz/"),
            ("/foo", "/foo/bar", "", "/bar"),
            ("/foo/", "/foo/bar", "", "/bar"),
            ("/foo", "/foo", "", "/"),
            ("/foo", "/foo/", "", "/"),
            ("/foo", "/foo/bar", "/", "/bar"),
            ("/", "/foo/bar", "/xyz", "/xyz/foo/bar"),
            ("/", "/foo/bar", "/", "/foo/bar"),
        ];
        for (from, path, to, want) in cases {
            let rewrite = PrefixRewrite { from: from.into(), to: to.into() };
            assert_eq!(rewrite.apply(path).as_deref(), Some(want), "{from} {path} {to}");
        }
        assert_eq!(PrefixRewrite { from: "/foo".into(), to: "/x".into() }.apply("/foobar"), None);
    }
}
