//! The bounds on every duration, count, percentage, weight, list and string a resource carries, in one place.
//!
//! `MeshConfig::validate` enforces them (its errors name the field) and the CRD generator copies the same
//! numbers into the schemas (`crate::crd`), so the API server, the control plane and the proxies refuse the
//! same inputs. They are generous for real configurations; their purpose is that no input can overflow a
//! `Duration`, an `Instant` or a counter, or make a proxy compile or echo something unreasonably large.

use std::time::Duration;

/// The longest duration any field may hold (timeouts, retry and outlier durations, fault delays). Istio caps
/// its durations too; nothing in a request path should wait longer than a day, and `Instant + 24h` never
/// overflows where `Instant + Duration::MAX` panics.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Characters in a duration string: enough for `86400.000000000s`, short enough that the API server's CEL
/// cost estimate stays small.
pub const MAX_DURATION_LEN: usize = 32;

/// `retries.attempts`. The proxy's retry budget already bounds retries across requests; this refuses only
/// counts no one means (a per-try timeout of 200 ms times 50 is ten seconds of trying).
pub const MAX_RETRY_ATTEMPTS: u32 = 50;
/// A destination's relative weight (`route[].weight`): a million allows percentages with four decimals while
/// the sum over a rule's destinations stays far below `u64` arithmetic.
pub const MAX_WEIGHT: u32 = 1_000_000;
/// `outlierDetection.consecutive5xxErrors` / `consecutiveGatewayErrors`.
pub const MAX_CONSECUTIVE_ERRORS: u32 = 100_000;
/// `loadBalancer.consistentHash.ringHash.minimumRingSize`: the points each endpoint places on the ring (16
/// bytes each, so 4 MiB for one endpoint at the bound). The proxy also caps a whole ring at this many points.
pub const MAX_RING_SIZE: u64 = 1 << 18;
/// The ring size when `ringHash.minimumRingSize` is not set (Istio's and Envoy's default).
pub const DEFAULT_RING_SIZE: u64 = 1024;
/// Percentages (fault percentages, `maxEjectionPercent`).
pub const MAX_PERCENT: u32 = 100;
/// `retryBudget.percent`: retries may add up to ten times the request rate. More is no budget at all (a
/// route's own `attempts` already caps retries per request at 50).
pub const MAX_RETRY_BUDGET_PERCENT: u32 = 1000;
/// `retryBudget.minRetriesPerSecond`: the floor a quiet service may always retry at.
pub const MAX_MIN_RETRIES_PER_SECOND: u32 = 100_000;
// Connection-pool counts (`maxConnections`, `maxRequests`, ...) keep the whole `u32` range: Istio users write
// 2^32-1 for "unlimited", and the proxy sizes semaphores with them, which allocate nothing up front.

/// Rules of one TrafficRoute (`http`).
pub const MAX_HTTP_RULES: usize = 128;
/// Destinations of one rule (`http[].route`).
pub const MAX_DESTINATIONS: usize = 64;
/// Matches of one rule (`http[].match`).
pub const MAX_MATCHES: usize = 16;
/// Headers or query parameters of one match.
pub const MAX_MATCH_ENTRIES: usize = 16;

/// Names that are Kubernetes names or DNS names (hosts, subsets, rule names).
pub const MAX_NAME_LEN: usize = 253;
/// Every other string of a spec: patterns, regular expressions, header names and values, URIs, principals.
/// Regular expressions are compiled by every proxy and values are echoed into requests and responses.
pub const MAX_STRING_LEN: usize = 1024;
/// `directResponse.body`, served as is to clients.
pub const MAX_BODY_LEN: usize = 64 * 1024;
/// Address blocks (`ipBlocks`), the longest IPv6 CIDR with room to spare.
pub const MAX_IP_BLOCK_LEN: usize = 64;

/// Durations as [`crate::parse_duration`] reads them, exactly (a property test holds the two together).
pub const DURATION_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?(ms|s|m|h)$";

// Fields are named by their path below `spec`; `name[]` steps into a list's items. The CRD generator and
// `MeshConfig::validate` both read these tables, so a field is bounded in both or in neither.

/// The duration fields of a TrafficRoute.
pub const TRAFFIC_ROUTE_DURATIONS: &[&str] =
    &["http[].timeout", "http[].retries.perTryTimeout", "http[].fault.delay.fixedDelay"];
/// The duration fields of a DestinationPolicy.
pub const DESTINATION_POLICY_DURATIONS: &[&str] = &[
    "connectionPool.tcp.connectTimeout",
    "connectionPool.http.idleTimeout",
    "outlierDetection.interval",
    "outlierDetection.baseEjectionTime",
];

/// TrafficRoute strings bounded other than by [`MAX_STRING_LEN`].
pub const TRAFFIC_ROUTE_STRINGS: &[(&str, usize)] = &[
    ("hosts[]", MAX_NAME_LEN),
    ("http[].name", MAX_NAME_LEN),
    ("http[].route[].destination.host", MAX_NAME_LEN),
    ("http[].route[].destination.subset", MAX_NAME_LEN),
    ("http[].directResponse.body", MAX_BODY_LEN),
];
/// DestinationPolicy strings bounded other than by [`MAX_STRING_LEN`].
pub const DESTINATION_POLICY_STRINGS: &[(&str, usize)] = &[("host", MAX_NAME_LEN), ("subsets[].name", MAX_NAME_LEN)];
/// AuthorizationPolicy strings bounded other than by [`MAX_STRING_LEN`].
pub const AUTHORIZATION_POLICY_STRINGS: &[(&str, usize)] = &[
    ("rules[].from[].source.ipBlocks[]", MAX_IP_BLOCK_LEN),
    ("rules[].from[].source.notIpBlocks[]", MAX_IP_BLOCK_LEN),
];
