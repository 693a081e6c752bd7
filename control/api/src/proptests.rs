//! Property tests of the decoders this crate owns: durations, resource YAML/JSON, and the push protocol's
//! frames. Arbitrary input yields a value or a typed error, never a panic; a valid value survives encode ->
//! decode. The resource inputs are mutations of a configuration that uses every field, so that the decoder and
//! the validation are exercised deep inside the specs, not only refused at the first unknown key.

use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;

use crate::bounds::{DURATION_PATTERN, MAX_DURATION, MAX_DURATION_LEN};
use crate::frame::{encode_line, LineDecoder, LineTooLong};
use crate::protocol::{CertificateRequest, CertificateResponse, ConfigAck, ConfigPush};
use crate::{format_duration, parse_duration, DurationError, MeshConfig};

/// Every field of every type, each with a value that passes validation.
const TEMPLATE: &str = r#"
trustDomain: cluster.local
namespaces: [{name: shop, mtlsMode: PERMISSIVE}]
workloads:
- {name: a, namespace: shop, serviceAccount: sa-a, node: node-a, address: 10.0.1.2, labels: {app: a}, meshed: true, tunnelPort: 15008}
services:
- name: reviews
  namespace: shop
  addresses: [10.96.0.10]
  ports: [{port: 9080, name: http, targetPort: 8080, appProtocol: http}]
  endpoints: [{address: 10.0.1.2, ready: true}]
authorizationPolicies:
- name: readers
  namespace: shop
  spec:
    selector: {matchLabels: {app: a}}
    action: DENY
    rules:
    - from: [{source: {principals: ["cluster.local/ns/shop/sa/*"], notPrincipals: [x], namespaces: [shop], notNamespaces: [other], ipBlocks: [10.0.0.0/8], notIpBlocks: [10.1.0.0/16]}}]
      to: [{operation: {ports: [9080], notPorts: [22], methods: [GET], notMethods: [DELETE], paths: ["/api/*"], notPaths: ["*.png"]}}]
trafficRoutes:
- name: reviews
  namespace: shop
  spec:
    hosts: [reviews]
    http:
    - name: canary
      match: [{uri: {prefix: /api}, method: {exact: GET}, headers: {x-user: {regex: "a.*"}}, queryParams: {q: {present: true}}}]
      route: [{destination: {host: reviews, subset: v1, port: 9080}, weight: 90}, {destination: {host: reviews, subset: v2}, weight: 10}]
      timeout: 10s
      retries: {attempts: 3, perTryTimeout: 250ms, retryOn: "5xx,reset", retryNonIdempotent: false}
      headers: {request: {set: {x-a: b}, add: {x-c: d}, remove: [x-e]}, response: {set: {x-f: g}}}
      fault: {delay: {fixedDelay: 1.5s, percentage: 12.5}, abort: {httpStatus: 503, percentage: 0.5}}
    - redirect: {uri: /new, authority: example.com, redirectCode: 301}
    - directResponse: {status: 200, body: ok}
destinationPolicies:
- name: reviews
  namespace: shop
  spec:
    host: reviews
    subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 1s}
      http: {maxPendingRequests: 10, maxRequests: 100, maxRequestsPerConnection: 1, idleTimeout: 1h}
    outlierDetection: {consecutive5xxErrors: 5, consecutiveGatewayErrors: 3, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
"#;

fn template() -> Value {
    serde_yaml::from_str(TEMPLATE).expect("the template is YAML")
}

/// Values that sit on or beyond a bound, or that broke decoders elsewhere.
const STRINGS: &[&str] = &[
    "",
    "10s",
    "24h",
    "25h",
    "86400001ms",
    "99999999999999999999s",
    "1e400s",
    "NaN",
    "inf",
    "-1s",
    ".5s",
    "0.000000000001h",
    "ALLOW",
    "ROUND_ROBIN",
    "10.0.0.0/8",
    "::/0",
    "a*b",
    "*",
    "(",
    "/api/.*",
    "a{1000}{1000}",
    "spiffe://cluster.local/ns/a/sa/b",
    "x-a",
    "\u{0}",
    "é",
];
const INTEGERS: &[i128] = &[
    0,
    1,
    -1,
    99,
    100,
    101,
    301,
    599,
    600,
    65535,
    65536,
    1_000_001,
    4_294_967_295,
    4_294_967_296,
    i64::MIN as i128,
    u64::MAX as i128,
];
/// Floats that JSON and YAML both write and read back exactly.
const FLOATS: &[f64] = &[0.0, -0.0, 0.5, 12.5, 100.0, 100.5, -1.0, 1e300, -1e300];
const KEYS: &[&str] = &[
    "name",
    "namespace",
    "spec",
    "hosts",
    "http",
    "match",
    "route",
    "timeout",
    "retries",
    "attempts",
    "headers",
    "weight",
    "destination",
    "host",
    "port",
    "percentage",
    "exact",
    "regex",
    "rules",
    "from",
    "source",
    "unknown",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => prop::sample::select(INTEGERS).prop_map(|n| {
            // Every listed integer fits i64 or u64.
            i64::try_from(n).map(Value::from).unwrap_or_else(|_| Value::from(n as u64))
        }),
        1 => any::<i64>().prop_map(Value::from),
        1 => prop::sample::select(FLOATS).prop_map(Value::from),
        3 => prop::sample::select(STRINGS).prop_map(Value::from),
        // Durations of every size, most of them beyond the bound (the panic of issue 11).
        3 => "[0-9]{1,22}(\\.[0-9]{1,3})?(ms|s|m|h)".prop_map(Value::from),
        1 => ".{0,24}".prop_map(Value::from),
        1 => (1usize..3000).prop_map(|n| Value::from("a".repeat(n))),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(prop::sample::select(KEYS).prop_map(str::to_string), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    Replace(Index, Value),
    Remove(Index),
    Insert(Index, String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (any::<Index>(), scalar()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        2 => (any::<Index>(), tree()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        3 => any::<Index>().prop_map(Mutation::Remove),
        1 => (any::<Index>(), prop::sample::select(KEYS), tree()).prop_map(|(i, k, v)| Mutation::Insert(i, k.to_string(), v)),
    ]
}

/// JSON pointers to every node below `value` (not the root itself).
fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
    let escape = |s: &str| s.replace('~', "~0").replace('/', "~1");
    match value {
        Value::Object(map) => {
            for (k, child) in map {
                let p = format!("{at}/{}", escape(k));
                out.push(p.clone());
                pointers(child, &p, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, &p, out);
            }
        }
        _ => {}
    }
}

fn apply(value: &mut Value, mutation: &Mutation) {
    let mut all = Vec::new();
    pointers(value, "", &mut all);
    if all.is_empty() {
        return;
    }
    match mutation {
        Mutation::Replace(i, new) => {
            if let Some(slot) = value.pointer_mut(i.get(&all).as_str()) {
                *slot = new.clone();
            }
        }
        Mutation::Remove(i) => {
            let path = i.get(&all);
            let (parent, last) = path.rsplit_once('/').unwrap_or(("", path));
            let last = last.replace("~1", "/").replace("~0", "~");
            match value.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&last);
                }
                Some(Value::Array(items)) => {
                    if let Some(index) = last.parse::<usize>().ok().filter(|i| *i < items.len()) {
                        items.remove(index);
                    }
                }
                _ => {}
            }
        }
        Mutation::Insert(i, key, new) => {
            if let Some(Value::Object(map)) = value.pointer_mut(i.get(&all).as_str()) {
                map.insert(key.clone(), new.clone());
            }
        }
    }
}

fn mutated_config() -> impl Strategy<Value = Value> {
    prop::collection::vec(mutation(), 1..4).prop_map(|mutations| {
        let mut value = template();
        for m in &mutations {
            apply(&mut value, m);
        }
        value
    })
}

/// What every accepted configuration promises its users: each problem names a field, and each duration the
/// proxies will parse is in range.
fn check_decoded(config: &MeshConfig) -> Result<(), TestCaseError> {
    match config.validate() {
        Err(e) => {
            let fields = [
                "trustDomain",
                "workloads[",
                "services[",
                "authorizationPolicies[",
                "trafficRoutes[",
                "destinationPolicies[",
            ];
            for problem in e.problems() {
                prop_assert!(fields.iter().any(|f| problem.starts_with(f)) && problem.contains(": "), "{problem}");
            }
        }
        Ok(()) => {
            let route_durations = config.traffic_routes.iter().flat_map(|r| &r.spec.http).flat_map(|h| {
                [h.timeout.as_ref(), h.retries.as_ref().and_then(|r| r.per_try_timeout.as_ref())]
                    .into_iter()
                    .chain([h.fault.as_ref().and_then(|f| f.delay.as_ref()).map(|d| &d.fixed_delay)])
                    .flatten()
            });
            let policy_durations = config.destination_policies.iter().flat_map(|d| {
                let od = d.spec.outlier_detection.as_ref();
                let pool = d.spec.connection_pool.as_ref();
                [
                    od.and_then(|o| o.interval.as_ref()),
                    od.and_then(|o| o.base_ejection_time.as_ref()),
                    pool.and_then(|p| p.tcp.as_ref()).and_then(|t| t.connect_timeout.as_ref()),
                    pool.and_then(|p| p.http.as_ref()).and_then(|h| h.idle_timeout.as_ref()),
                ]
                .into_iter()
                .flatten()
            });
            for text in route_durations.chain(policy_durations) {
                prop_assert!(parse_duration(text).is_ok_and(|d| d <= MAX_DURATION), "{text}");
            }
            // Encode -> decode, both ways the configuration travels (a file, a push).
            let json = serde_json::to_string(config).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                &serde_json::from_str::<MeshConfig>(&json).map_err(|e| TestCaseError::fail(e.to_string()))?,
                config
            );
            let yaml = serde_yaml::to_string(config).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&MeshConfig::from_yaml(&yaml).map_err(|e| TestCaseError::fail(e.to_string()))?, config);
        }
    }
    Ok(())
}

#[test]
fn the_template_is_valid_and_uses_every_duration() {
    let config: MeshConfig = serde_json::from_value(template()).expect("decodes");
    config.validate().expect("valid");
    for field in
        ["timeout", "perTryTimeout", "fixedDelay", "connectTimeout", "idleTimeout", "interval", "baseEjectionTime"]
    {
        assert!(TEMPLATE.contains(&format!("{field}: ")), "{field}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn durations_never_panic_and_agree_with_the_crd_pattern(
        text in prop_oneof![
            any::<String>(),
            "[0-9]{0,24}(\\.[0-9]{0,16})?(ms|s|m|h|x|)",
            "[-+ .eE0-9]{0,6}(ns|us|ms|s|m|h|d)?",
        ]
    ) {
        let pattern = regex::Regex::new(DURATION_PATTERN).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match parse_duration(&text) {
            Ok(d) => prop_assert!(pattern.is_match(&text) && d <= MAX_DURATION),
            Err(DurationError::Malformed { .. }) => prop_assert!(!pattern.is_match(&text)),
            Err(DurationError::TooLarge { .. }) => prop_assert!(pattern.is_match(&text)),
            Err(DurationError::TooLong { len }) => prop_assert!(len > MAX_DURATION_LEN),
        }
    }

    #[test]
    fn every_duration_in_range_survives_format_and_parse(nanos in 0..=MAX_DURATION.as_nanos() as u64) {
        let d = Duration::from_nanos(nanos);
        let text = format_duration(d);
        prop_assert!(text.len() <= MAX_DURATION_LEN);
        prop_assert_eq!(parse_duration(&text), Ok(d));
    }

    #[test]
    fn whole_units_survive_parse(n in 0u64..=86_400_000, unit in prop::sample::select(&[("ms", 1u64), ("s", 1000), ("m", 60_000), ("h", 3_600_000)][..])) {
        let millis = n.checked_mul(unit.1);
        let parsed = parse_duration(&format!("{n}{}", unit.0));
        match millis.filter(|m| *m <= MAX_DURATION.as_millis() as u64) {
            Some(m) => prop_assert_eq!(parsed, Ok(Duration::from_millis(m))),
            None => prop_assert!(matches!(parsed, Err(DurationError::TooLarge { .. })), "{:?}", parsed),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_configurations_decode_or_name_the_field(value in mutated_config()) {
        if let Ok(config) = serde_json::from_value::<MeshConfig>(value.clone()) {
            check_decoded(&config)?;
        }
        // The same document as YAML text, the way files and `strait local` read it.
        if let Ok(yaml) = serde_yaml::to_string(&value) {
            match MeshConfig::from_yaml(&yaml) {
                Ok(config) => check_decoded(&config)?,
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }

    #[test]
    fn config_pushes_survive_the_wire(
        value in mutated_config(),
        version in any::<u64>(),
        node in ".{0,16}",
        cuts in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        // Only what passed validation is pushed (an out-of-range float may come back one ULP away).
        let Some(config) = serde_json::from_value::<MeshConfig>(value).ok().filter(|c| c.validate().is_ok()) else {
            return Ok(());
        };
        let push = ConfigPush { version, node, config };
        let line = encode_line(&push).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Frames are newline-delimited: the only newline of an encoded push is its last byte.
        prop_assert_eq!(line.iter().position(|b| *b == b'\n'), Some(line.len() - 1));
        let lines = decode_in_pieces(&line, &cuts, line.len());
        prop_assert_eq!(lines.len(), 1);
        let decoded = lines[0].as_ref().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(serde_json::from_slice::<ConfigPush>(decoded).map_err(|e| TestCaseError::fail(e.to_string()))?, push);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_text_never_panics_a_decoder(text in prop_oneof![any::<String>(), "[-{}\\[\\]:,\"a-z0-9 \n.*&!|>]{0,64}"]) {
        let _ = MeshConfig::from_yaml(&text);
        let _ = serde_json::from_str::<MeshConfig>(&text);
        let _ = serde_json::from_str::<ConfigPush>(&text);
        let _ = serde_json::from_str::<ConfigAck>(&text);
        let _ = serde_json::from_str::<CertificateRequest>(&text);
        let _ = serde_json::from_str::<CertificateResponse>(&text);
    }

    #[test]
    fn arbitrary_trees_never_panic_a_decoder(value in tree()) {
        if let Ok(config) = serde_json::from_value::<MeshConfig>(value.clone()) {
            check_decoded(&config)?;
        }
        let _ = serde_json::from_value::<ConfigPush>(value.clone());
        let _ = serde_json::from_value::<ConfigAck>(value);
    }

    #[test]
    fn acks_and_certificate_messages_survive_the_wire(
        version in any::<u64>(),
        error in proptest::option::of(any::<String>()),
        identity in any::<String>(),
        pem in any::<String>(),
    ) {
        let ack = ConfigAck { version, error };
        let line = serde_json::to_vec(&ack).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(!line.contains(&b'\n'));
        prop_assert_eq!(serde_json::from_slice::<ConfigAck>(&line).ok(), Some(ack));
        let request = CertificateRequest { identity, csr_pem: pem.clone() };
        let text = serde_json::to_string(&request).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(serde_json::from_str::<CertificateRequest>(&text).ok(), Some(request));
        let response = CertificateResponse { chain_pem: pem.clone(), root_pem: pem };
        let text = serde_json::to_string(&response).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(serde_json::from_str::<CertificateResponse>(&text).ok(), Some(response));
    }
}

/// Feeds `data` to a decoder in pieces cut at `cuts`, reading every line after each piece; stops at an error.
fn decode_in_pieces(data: &[u8], cuts: &[Index], max: usize) -> Vec<Result<Vec<u8>, LineTooLong>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
    at.push(data.len());
    at.sort_unstable();
    let mut decoder = LineDecoder::new(max);
    let mut out = Vec::new();
    let mut from = 0;
    for to in at {
        decoder.push(&data[from..to]);
        from = to;
        loop {
            match decoder.next_line() {
                Ok(Some(line)) => out.push(Ok(line)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }
    out
}

/// What the decoder must produce, from the whole stream at once: the non-blank lines before the first that
/// is too long, then an error for that one (or for an unfinished tail that is already too long).
fn expected_lines(data: &[u8], max: usize) -> Vec<Result<Vec<u8>, LineTooLong>> {
    let mut out = Vec::new();
    let mut pieces: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let tail = pieces.pop().unwrap_or_default();
    for line in pieces {
        if line.len() > max {
            out.push(Err(LineTooLong { max }));
            return out;
        }
        if !line.iter().all(u8::is_ascii_whitespace) {
            out.push(Ok(line.to_vec()));
        }
    }
    if tail.len() > max {
        out.push(Err(LineTooLong { max }));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// The push protocol's line decoder: the same lines (or the same error) however the bytes arrive.
    #[test]
    fn lines_do_not_depend_on_how_the_stream_is_cut(
        data in prop::collection::vec(prop_oneof![4 => any::<u8>(), 1 => Just(b'\n'), 1 => Just(b' ')], 0..200),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
        max in 0usize..48,
    ) {
        prop_assert_eq!(decode_in_pieces(&data, &cuts, max), expected_lines(&data, max));
    }
}
