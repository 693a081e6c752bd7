//! The Kubernetes custom resources of `strait.dev/v1alpha1`, and the CustomResourceDefinitions installed from
//! `deploy/crds/` (generated from these types by `strait-crdgen`; see [`definitions`]).
//!
//! The resource structs ([`TrafficRoute`], [`DestinationPolicy`], [`AuthorizationPolicy`]) are derived by
//! `kube::CustomResource` on the spec types in [`crate::resources`], so the `spec` a user applies is exactly
//! the type proxies receive. Each carries a [`ResourceStatus`] the controller writes through the `status`
//! subresource: conditions [`ACCEPTED`] and [`RESOLVED_REFS`].
//!
//! What the derive cannot say is added here, in one place ([`definitions`]): printer columns, short names,
//! and the rules the API server enforces on its own (enums come from the types; minimums, duration patterns
//! and CEL `x-kubernetes-validations` for cross-field rules are added by path). Every rule mirrors a check of
//! `MeshConfig::validate`, so `kubectl apply` refuses what the control plane would refuse anyway.
//!
//! Namespaces join the mesh and choose their mTLS mode with labels, not a CRD:
//! `strait.dev/mesh=enabled` and `strait.dev/mtls-mode=STRICT|PERMISSIVE` ([`namespace_settings`]).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub use crate::resources::{AuthorizationPolicy, DestinationPolicy, TrafficRoute};
use crate::{bounds, MtlsMode};

pub const GROUP: &str = "strait.dev";
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every Strait resource.
pub const API_VERSION: &str = "strait.dev/v1alpha1";

/// Condition type: the resource is valid and in use (status `True`), or refused (`False`, reason
/// [`REASON_INVALID`], the message naming the field).
pub const ACCEPTED: &str = "Accepted";
/// Condition type: every reference resolves (hosts, subsets), or reason [`REASON_REF_NOT_FOUND`].
pub const RESOLVED_REFS: &str = "ResolvedRefs";
pub const REASON_ACCEPTED: &str = "Accepted";
pub const REASON_INVALID: &str = "Invalid";
pub const REASON_RESOLVED_REFS: &str = "ResolvedRefs";
pub const REASON_REF_NOT_FOUND: &str = "RefNotFound";
/// `Accepted=False`: a DestinationPolicy sets a field an older policy for the same host set differently; the
/// message names the field and the policy that applies.
pub const REASON_CONFLICTED: &str = "Conflicted";

/// Namespace label that puts a namespace's pods in the mesh (value [`MESH_ENABLED`]).
pub const MESH_LABEL: &str = "strait.dev/mesh";
pub const MESH_ENABLED: &str = "enabled";
/// Namespace label choosing the namespace's mTLS mode: `STRICT` (the default) or `PERMISSIVE`.
pub const MTLS_MODE_LABEL: &str = "strait.dev/mtls-mode";

/// The status of every Strait resource, written by the control plane through the `status` subresource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// The generation (`metadata.generation`) the control plane last processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` and `ResolvedRefs`, in the shape of Kubernetes' `metav1.Condition`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ResourceStatus {
    /// Replaces the condition of the same type. Its `lastTransitionTime` is kept when the status did not
    /// change, as Kubernetes' `meta.SetStatusCondition` does, so rewriting the same verdict is a no-op.
    pub fn set_condition(&mut self, mut condition: Condition) {
        match self.conditions.iter_mut().find(|c| c.type_ == condition.type_) {
            Some(existing) => {
                if existing.status == condition.status {
                    condition.last_transition_time = existing.last_transition_time.clone();
                }
                *existing = condition;
            }
            None => self.conditions.push(condition),
        }
    }

    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

/// A namespace's mesh settings, read from its labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamespaceSettings {
    /// `strait.dev/mesh=enabled`.
    pub meshed: bool,
    pub mtls_mode: MtlsMode,
}

/// Reads [`MESH_LABEL`] and [`MTLS_MODE_LABEL`]. An absent mode is STRICT. An unknown mode is an error
/// naming the label; the caller should report it and fall back to STRICT, the safe choice.
pub fn namespace_settings(labels: &BTreeMap<String, String>) -> Result<NamespaceSettings, String> {
    let meshed = labels.get(MESH_LABEL).is_some_and(|v| v == MESH_ENABLED);
    let mtls_mode = match labels.get(MTLS_MODE_LABEL).map(String::as_str) {
        None | Some("STRICT") => MtlsMode::Strict,
        Some("PERMISSIVE") => MtlsMode::Permissive,
        Some(other) => {
            return Err(format!("label {MTLS_MODE_LABEL}={other:?}: expected STRICT or PERMISSIVE; using STRICT"))
        }
    };
    Ok(NamespaceSettings { meshed, mtls_mode })
}

// ---------------------------------------------------------------------------------------------------------
// The CustomResourceDefinitions
// ---------------------------------------------------------------------------------------------------------

/// The command that regenerates `deploy/crds/` (named in the generated files and in the sync test).
pub const GENERATE_COMMAND: &str = "cargo run -p strait-control --bin strait-crdgen -- --write deploy/crds";

pub use crate::bounds::DURATION_PATTERN;
/// Principal, namespace and path patterns: one `*` at most, at the start or the end.
pub const MATCH_PATTERN: &str = r"^(\*|\*[^*]+|[^*]+\*?)$";

/// Addresses and CIDRs, loosely (the characters only; the control plane's validation parses them). A regular
/// expression rather than CEL's `isCIDR`, which would count against the API server's CEL cost budget for
/// every element of three nested lists.
pub const IP_BLOCK_PATTERN: &str = r"^[0-9a-fA-F:.]+(/[0-9]{1,3})?$";

// Upper bounds on the lists that carry CEL rules (from `crate::bounds`, which validation enforces too). The
// API server estimates a rule's worst-case cost from them and refuses a CRD whose rules could cost too much;
// unbounded lists count as "as many as fit in a request".
pub const MAX_HTTP_RULES: u32 = bounds::MAX_HTTP_RULES as u32;
pub const MAX_DESTINATIONS: u32 = bounds::MAX_DESTINATIONS as u32;
pub const MAX_MATCHES: u32 = bounds::MAX_MATCHES as u32;
pub const MAX_MATCH_ENTRIES: u32 = bounds::MAX_MATCH_ENTRIES as u32;

/// `redirect.uri`: an absolute path of printable characters, as validation checks.
pub const REDIRECT_URI_PATTERN: &str = r"^/[\t -~]*$";

/// A header name as the proxy's `http` crate accepts it (an RFC 9110 token).
pub const HEADER_NAME_PATTERN: &str = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/// A header value: no control characters but tab.
pub const HEADER_VALUE_PATTERN: &str = r"^[^\x00-\x08\x0a-\x1f\x7f]*$";

/// `retryOn`: a comma-separated list of the conditions the proxy implements and status codes, as validation
/// checks ([`crate::RETRY_ON_CONDITIONS`]).
pub const RETRY_ON_PATTERN: &str = "^ *((5xx|gateway-error|reset|connect-failure|refused-stream|retriable-4xx|\
retriable-status-codes|cancelled|deadline-exceeded|internal|resource-exhausted|unavailable|[1-5][0-9][0-9]) *)?\
(, *((5xx|gateway-error|reset|connect-failure|refused-stream|retriable-4xx|retriable-status-codes|cancelled|\
deadline-exceeded|internal|resource-exhausted|unavailable|[1-5][0-9][0-9]) *)?)*$";

/// The CEL rule bounding a duration field: `parse_duration`'s maximum. The pattern alone cannot say it;
/// the API server's `duration()` reads exactly the strings the pattern admits (and more).
pub const DURATION_RULE: &str = "duration(self) <= duration('24h')";
pub const DURATION_RULE_MESSAGE: &str = "must be at most 24h";

/// The three CRDs as installed, with printer columns and validation rules.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    vec![
        finish(
            TrafficRoute::crd(),
            "HTTP routing for services: ordered rules (first match wins), weighted destinations, timeouts, retries.",
            &["tr"],
            traffic_route_columns(),
            traffic_route_rules,
        ),
        finish(
            DestinationPolicy::crd(),
            "Traffic to one service after routing: subsets, load balancing, connection limits, outlier detection.",
            &["dp"],
            destination_policy_columns(),
            destination_policy_rules,
        ),
        finish(
            AuthorizationPolicy::crd(),
            "Who may call the selected workloads: ALLOW or DENY rules on source identity and operation.",
            &["ap"],
            authorization_policy_columns(),
            authorization_policy_rules,
        ),
    ]
}

/// `(file name, YAML)` for each CRD, as committed in `deploy/crds/`.
pub fn rendered() -> Vec<(String, String)> {
    definitions()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().expect("a CRD has a name");
            let yaml = serde_yaml::to_string(&crd).expect("a CRD serialises");
            (
                format!("{name}.yaml"),
                format!("# Generated from the Rust types by `{GENERATE_COMMAND}`. Do not edit.\n{yaml}"),
            )
        })
        .collect()
}

fn column(name: &str, type_: &str, json_path: &str, description: &str) -> Value {
    json!({"name": name, "type": type_, "jsonPath": json_path, "description": description})
}

fn common_columns() -> Vec<Value> {
    vec![
        column(
            "Accepted",
            "string",
            r#".status.conditions[?(@.type=="Accepted")].status"#,
            "Whether the control plane accepted the resource",
        ),
        column("Age", "date", ".metadata.creationTimestamp", ""),
    ]
}

// The API server shows only the FIRST match of a column's JSONPath (`.spec.http[*].route[*].weight` would show
// one weight), so list-valued columns name a whole list, which it prints as compact JSON.
fn traffic_route_columns() -> Vec<Value> {
    let mut columns = vec![
        column("Hosts", "string", ".spec.hosts", "The services this route applies to"),
        column(
            "Backends",
            "string",
            ".spec.http[-1:].route",
            "Destinations (host, subset) and weights of the last rule, the catch-all of a canary",
        ),
    ];
    columns.extend(common_columns());
    columns
}

fn destination_policy_columns() -> Vec<Value> {
    let mut columns = vec![
        column("Host", "string", ".spec.host", "The service this policy applies to"),
        column("Subsets", "string", ".spec.subsets", "Subsets defined for the host, with their labels"),
        column("LB", "string", ".spec.loadBalancer.simple", "Load-balancing algorithm"),
    ];
    columns.extend(common_columns());
    columns
}

fn authorization_policy_columns() -> Vec<Value> {
    let mut columns = vec![
        column("Action", "string", ".spec.action", "ALLOW or DENY"),
        column("Selector", "string", ".spec.selector.matchLabels", "Workloads it applies to (all when empty)"),
    ];
    columns.extend(common_columns());
    columns
}

fn finish(
    crd: CustomResourceDefinition,
    description: &str,
    short_names: &[&str],
    columns: Vec<Value>,
    rules: fn(&mut Value),
) -> CustomResourceDefinition {
    let mut value = serde_json::to_value(&crd).expect("a CRD serialises");
    value["spec"]["names"]["shortNames"] = json!(short_names);
    value["spec"]["names"]["categories"] = json!(["strait"]);
    let version = &mut value["spec"]["versions"][0];
    version["additionalPrinterColumns"] = Value::Array(columns);
    let schema = &mut version["schema"]["openAPIV3Schema"];
    schema["description"] = json!(description);
    walk(schema, &mut normalize);
    let spec = &mut schema["properties"]["spec"];
    assert!(spec.is_object(), "the CRD has a spec schema");
    rules(spec);
    walk(spec, &mut bound_strings);
    // The conditions list is keyed by type, as every Kubernetes condition list.
    let conditions = at(schema, "status.conditions");
    conditions.insert("x-kubernetes-list-type".into(), json!("map"));
    conditions.insert("x-kubernetes-list-map-keys".into(), json!(["type"]));
    serde_json::from_value(value).expect("the edited CRD is still a CRD")
}

/// Applies `f` to every schema object under `schema` (properties, items, additionalProperties), leaves first.
fn walk(schema: &mut Value, f: &mut impl FnMut(&mut Map<String, Value>)) {
    let Some(object) = schema.as_object_mut() else { return };
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        for child in properties.values_mut() {
            walk(child, f);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = object.get_mut(key) {
            walk(child, f);
        }
    }
    f(object);
}

/// Makes the schema read as a Kubernetes one: integer formats the API server knows (schemars says `uint16`),
/// no `nullable` (absent fields are simply absent; an explicit null is pruned), and the StringMatch rule on
/// every StringMatch, wherever it appears.
fn normalize(object: &mut Map<String, Value>) {
    let format = object.get("format").and_then(Value::as_str).map(str::to_string);
    let (format, maximum) = match format.as_deref() {
        Some("uint16") => ("int32", u64::from(u16::MAX)),
        Some("uint32") => ("int64", u64::from(u32::MAX)),
        _ => ("", 0),
    };
    if !format.is_empty() {
        // The Rust type's range, so that what the API server admits always deserialises.
        object.insert("format".into(), json!(format));
        object.entry("minimum").or_insert(json!(0));
        object.entry("maximum").or_insert(json!(maximum));
    }
    object.remove("nullable");
    if let Some(Value::Array(values)) = object.get_mut("enum") {
        values.retain(|v| !v.is_null());
    }
    let is_string_match = object.get("properties").and_then(Value::as_object).is_some_and(|p| {
        let mut keys: Vec<&str> = p.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys == ["exact", "prefix", "present", "regex"]
    });
    if is_string_match {
        push_rule(
            object,
            "(has(self.exact) ? 1 : 0) + (has(self.prefix) ? 1 : 0) + (has(self.regex) ? 1 : 0) \
             + (has(self.present) ? 1 : 0) == 1",
            "exactly one of exact, prefix, regex, present is required",
        );
    }
}

/// Every string of a spec without a bound of its own gets [`bounds::MAX_STRING_LEN`], as validation does.
fn bound_strings(object: &mut Map<String, Value>) {
    if object.get("type").and_then(Value::as_str) == Some("string") && !object.contains_key("enum") {
        object.entry("maxLength").or_insert(json!(bounds::MAX_STRING_LEN));
    }
}

/// The schema object at a dotted path of property names below `schema`; `name[]` steps into the items of an
/// array, `name{}` into the values of a map. Panics (in the generator and its tests) when a field was renamed.
fn at<'a>(schema: &'a mut Value, path: &str) -> &'a mut Map<String, Value> {
    let mut node = schema;
    for step in path.split('.') {
        let (name, suffix) = match step.find(['[', '{']) {
            Some(i) => step.split_at(i),
            None => (step, ""),
        };
        node = node
            .get_mut("properties")
            .and_then(|p| p.get_mut(name))
            .unwrap_or_else(|| panic!("CRD schema has no field {name:?} (path {path:?})"));
        match suffix {
            "" => {}
            "[]" => node = node.get_mut("items").unwrap_or_else(|| panic!("{path:?}: {name} is not a list")),
            "{}" => {
                node = node.get_mut("additionalProperties").unwrap_or_else(|| panic!("{path:?}: {name} is not a map"))
            }
            other => panic!("{path:?}: unknown step suffix {other:?}"),
        }
    }
    node.as_object_mut().unwrap_or_else(|| panic!("{path:?} is not a schema object"))
}

fn set(spec: &mut Value, path: &str, properties: Value) {
    let object = at(spec, path);
    for (k, v) in properties.as_object().expect("properties are an object") {
        object.insert(k.clone(), v.clone());
    }
}

fn push_rule(object: &mut Map<String, Value>, rule: &str, message: &str) {
    let rules = object.entry("x-kubernetes-validations").or_insert_with(|| json!([]));
    rules.as_array_mut().expect("validations are a list").push(json!({"rule": rule, "message": message}));
}

fn rule(spec: &mut Value, path: &str, rule: &str, message: &str) {
    push_rule(at(spec, path), rule, message);
}

fn port(spec: &mut Value, path: &str) {
    set(spec, path, json!({"minimum": 1, "maximum": 65535}));
}

fn duration(spec: &mut Value, path: &str) {
    set(spec, path, json!({"pattern": DURATION_PATTERN, "maxLength": bounds::MAX_DURATION_LEN}));
    rule(spec, path, DURATION_RULE, DURATION_RULE_MESSAGE);
}

fn max_length(spec: &mut Value, fields: &[(&str, usize)]) {
    for (path, max) in fields {
        set(spec, path, json!({"maxLength": max}));
    }
}

fn percentage(spec: &mut Value, path: &str) {
    set(spec, path, json!({"minimum": 0, "maximum": bounds::MAX_PERCENT}));
}

fn http_status(spec: &mut Value, path: &str) {
    set(spec, path, json!({"minimum": 100, "maximum": 599}));
}

fn traffic_route_rules(spec: &mut Value) {
    set(spec, "hosts", json!({"minItems": 1}));
    set(spec, "hosts[]", json!({"minLength": 1}));
    max_length(spec, bounds::TRAFFIC_ROUTE_STRINGS);
    set(spec, "http", json!({"maxItems": MAX_HTTP_RULES}));
    set(spec, "http[].route", json!({"maxItems": MAX_DESTINATIONS}));
    set(spec, "http[].match", json!({"maxItems": MAX_MATCHES}));
    set(spec, "http[].match[].headers", json!({"maxProperties": MAX_MATCH_ENTRIES}));
    set(spec, "http[].match[].queryParams", json!({"maxProperties": MAX_MATCH_ENTRIES}));
    rule(
        spec,
        "http[]",
        "(has(self.route) && size(self.route) > 0 ? 1 : 0) + (has(self.redirect) ? 1 : 0) \
         + (has(self.directResponse) ? 1 : 0) == 1",
        "exactly one of route, redirect, directResponse is required",
    );
    rule(spec, "http[].route", "self.exists(d, !has(d.weight) || d.weight != 0)", "all weights are zero");
    set(spec, "http[].route[].weight", json!({"minimum": 0, "maximum": bounds::MAX_WEIGHT}));
    set(spec, "http[].route[].destination.host", json!({"minLength": 1}));
    port(spec, "http[].route[].destination.port");
    for path in bounds::TRAFFIC_ROUTE_DURATIONS {
        duration(spec, path);
    }
    set(spec, "http[].retries.attempts", json!({"minimum": 0, "maximum": bounds::MAX_RETRY_ATTEMPTS}));
    set(spec, "http[].retries.retryOn", json!({"pattern": RETRY_ON_PATTERN}));
    percentage(spec, "http[].fault.delay.percentage");
    http_status(spec, "http[].fault.abort.httpStatus");
    percentage(spec, "http[].fault.abort.percentage");
    // The proxy answers only these redirect statuses (an integer enum is not allowed in this schema's style).
    rule(
        spec,
        "http[].redirect.redirectCode",
        "self in [301, 302, 303, 307, 308]",
        "must be one of 301, 302, 303, 307, 308",
    );
    set(spec, "http[].redirect.redirectCode", json!({"minimum": 301, "maximum": 308}));
    set(spec, "http[].redirect.uri", json!({"pattern": REDIRECT_URI_PATTERN}));
    http_status(spec, "http[].directResponse.status");
    for side in ["request", "response"] {
        set(spec, &format!("http[].headers.{side}.remove[]"), json!({"pattern": HEADER_NAME_PATTERN}));
        for op in ["set", "add"] {
            set(spec, &format!("http[].headers.{side}.{op}{{}}"), json!({"pattern": HEADER_VALUE_PATTERN}));
        }
    }
}

fn destination_policy_rules(spec: &mut Value) {
    set(spec, "host", json!({"minLength": 1}));
    max_length(spec, bounds::DESTINATION_POLICY_STRINGS);
    // Subset names are unique: the API server enforces it for a list of type map.
    set(spec, "subsets", json!({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}));
    set(spec, "subsets[].name", json!({"minLength": 1}));
    for path in bounds::DESTINATION_POLICY_DURATIONS {
        duration(spec, path);
    }
    rule(
        spec,
        "loadBalancer",
        "!(has(self.simple) && has(self.consistentHash))",
        "set either simple or consistentHash, not both",
    );
    rule(
        spec,
        "loadBalancer.consistentHash",
        "(has(self.httpHeaderName) ? 1 : 0) + (has(self.httpCookie) ? 1 : 0) \
         + (has(self.httpQueryParameterName) ? 1 : 0) + (has(self.useSourceIp) && self.useSourceIp ? 1 : 0) == 1",
        "set exactly one of httpHeaderName, httpCookie, httpQueryParameterName, useSourceIp",
    );
    rule(spec, "loadBalancer.consistentHash", "!has(self.maglev)", &format!("maglev {}", crate::MAGLEV_REFUSED));
    set(spec, "loadBalancer.consistentHash.httpHeaderName", json!({"pattern": HEADER_NAME_PATTERN}));
    set(spec, "loadBalancer.consistentHash.httpCookie", json!({"minLength": 1}));
    set(spec, "loadBalancer.consistentHash.httpQueryParameterName", json!({"minLength": 1}));
    set(
        spec,
        "loadBalancer.consistentHash.ringHash.minimumRingSize",
        json!({"minimum": 1, "maximum": bounds::MAX_RING_SIZE}),
    );
    for path in ["outlierDetection.consecutive5xxErrors", "outlierDetection.consecutiveGatewayErrors"] {
        set(spec, path, json!({"maximum": bounds::MAX_CONSECUTIVE_ERRORS}));
    }
    percentage(spec, "outlierDetection.maxEjectionPercent");
    set(spec, "retryBudget.percent", json!({"minimum": 0, "maximum": bounds::MAX_RETRY_BUDGET_PERCENT}));
    set(spec, "retryBudget.minRetriesPerSecond", json!({"minimum": 0, "maximum": bounds::MAX_MIN_RETRIES_PER_SECOND}));
}

fn authorization_policy_rules(spec: &mut Value) {
    max_length(spec, bounds::AUTHORIZATION_POLICY_STRINGS);
    for list in ["principals", "notPrincipals", "namespaces", "notNamespaces"] {
        set(spec, &format!("rules[].from[].source.{list}[]"), json!({"pattern": MATCH_PATTERN}));
    }
    for list in ["ipBlocks", "notIpBlocks"] {
        set(spec, &format!("rules[].from[].source.{list}[]"), json!({"pattern": IP_BLOCK_PATTERN}));
    }
    for list in ["ports", "notPorts"] {
        port(spec, &format!("rules[].to[].operation.{list}[]"));
    }
    for list in ["paths", "notPaths"] {
        set(spec, &format!("rules[].to[].operation.{list}[]"), json!({"pattern": MATCH_PATTERN}));
    }
}

#[cfg(test)]
mod tests;
