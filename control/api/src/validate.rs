//! Validation of a [`MeshConfig`]: every error names the field it is about, e.g.
//! `authorizationPolicies[shop/readers].spec.rules[0].from[1].source.ipBlocks[0]: "10.0.0/8" is not a CIDR`.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;
use serde_json::Value;

use crate::bounds::*;
use crate::resources::*;
use crate::{MeshConfig, Named};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("configuration is not valid YAML/JSON: {0}")]
    Parse(String),
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl ValidationError {
    pub fn parse(message: String) -> Self {
        ValidationError::Parse(message)
    }

    /// The individual problems, each starting with the path of its field.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ValidationError::Parse(m) => vec![m.clone()],
            ValidationError::Invalid(p) => p.clone(),
        }
    }
}

struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, field: impl std::fmt::Display, message: impl std::fmt::Display) {
        self.0.push(format!("{field}: {message}"));
    }
}

impl MeshConfig {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut p = Problems(Vec::new());
        if self.trust_domain.is_empty()
            || !self.trust_domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        {
            p.push("trustDomain", format!("{:?} is not a valid trust domain", self.trust_domain));
        }
        let mut addresses = HashSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let f = format!("workloads[{i}]");
            check_name(&mut p, &format!("{f}.name"), &w.name);
            check_name(&mut p, &format!("{f}.namespace"), &w.namespace);
            check_name(&mut p, &format!("{f}.serviceAccount"), &w.service_account);
            check_name(&mut p, &format!("{f}.node"), &w.node);
            if !addresses.insert(w.address) {
                p.push(format!("{f}.address"), format!("{} is used by another workload", w.address));
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            let f = format!("services[{i}]");
            check_name(&mut p, &format!("{f}.name"), &s.name);
            check_name(&mut p, &format!("{f}.namespace"), &s.namespace);
            if s.ports.is_empty() {
                p.push(format!("{f}.ports"), "a service needs at least one port");
            }
            let mut seen = BTreeSet::new();
            for (j, port) in s.ports.iter().enumerate() {
                if port.port == 0 {
                    p.push(format!("{f}.ports[{j}].port"), "must be 1-65535");
                }
                if port.target_port == Some(0) {
                    p.push(format!("{f}.ports[{j}].targetPort"), "must be 1-65535");
                }
                if !seen.insert(port.port) {
                    p.push(format!("{f}.ports[{j}].port"), format!("{} is declared twice", port.port));
                }
            }
        }
        for (i, policy) in self.authorization_policies.iter().enumerate() {
            validate_authorization(&mut p, &field_of("authorizationPolicies", i, policy), &policy.spec);
        }
        for (i, route) in self.traffic_routes.iter().enumerate() {
            validate_route(&mut p, &field_of("trafficRoutes", i, route), &route.spec);
        }
        for (i, dp) in self.destination_policies.iter().enumerate() {
            validate_destination_policy(&mut p, &field_of("destinationPolicies", i, dp), &dp.spec);
        }
        crate::peer_auth::validate(self, &mut |field, message| p.push(field, message));
        crate::egress::validate(self, &mut |field, message| p.push(field, message));
        for (i, answer) in self.answers.iter().enumerate() {
            let f = format!("answers[{i}]");
            match answer {
                crate::delta::Answer::Service { namespace, name } => {
                    check_name(&mut p, &format!("{f}.namespace"), namespace);
                    check_name(&mut p, &format!("{f}.name"), name);
                }
                // The key of an address answer is its text: only the canonical form keeps keys unique.
                crate::delta::Answer::Address { address } => {
                    if address.parse::<std::net::IpAddr>().map(|a| a.to_string()).as_deref() != Ok(address.as_str()) {
                        p.push(format!("{f}.address"), format!("{address:?} is not an IP address in canonical form"));
                    }
                }
            }
        }
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationError::Invalid(p.0))
        }
    }
}

fn field_of<T>(list: &str, index: usize, named: &Named<T>) -> String {
    if named.name.is_empty() {
        format!("{list}[{index}]")
    } else {
        format!("{list}[{}/{}]", named.namespace, named.name)
    }
}

fn check_name(p: &mut Problems, field: &str, value: &str) {
    // DNS-1123 label rules, as Kubernetes names.
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !ok {
        p.push(field, format!("{value:?} is not a valid name (lowercase letters, digits, '-', '.')"));
    }
}

fn validate_authorization(p: &mut Problems, field: &str, spec: &AuthorizationPolicySpec) {
    let spec_field = if field.is_empty() { "spec".to_string() } else { format!("{field}.spec") };
    check_strings(p, &spec_field, spec, AUTHORIZATION_POLICY_STRINGS, &[]);
    for (r, rule) in spec.rules.iter().enumerate() {
        for (s, from) in rule.from.iter().enumerate() {
            let f = format!("{spec_field}.rules[{r}].from[{s}].source");
            let src = &from.source;
            for (name, list) in [("principals", &src.principals), ("notPrincipals", &src.not_principals)] {
                for (k, pattern) in list.iter().enumerate() {
                    // As the proxy reads a principal: the scheme is optional, the rest is the pattern.
                    if let Err(e) = check_pattern(pattern.strip_prefix("spiffe://").unwrap_or(pattern)) {
                        p.push(format!("{f}.{name}[{k}]"), e);
                    }
                }
            }
            for (name, list) in [("namespaces", &src.namespaces), ("notNamespaces", &src.not_namespaces)] {
                for (k, pattern) in list.iter().enumerate() {
                    if let Err(e) = check_pattern(pattern) {
                        p.push(format!("{f}.{name}[{k}]"), e);
                    }
                }
            }
            for (name, list) in [("ipBlocks", &src.ip_blocks), ("notIpBlocks", &src.not_ip_blocks)] {
                for (k, block) in list.iter().enumerate() {
                    if parse_ip_block(block).is_none() {
                        p.push(format!("{f}.{name}[{k}]"), format!("{block:?} is not an IP address or CIDR"));
                    }
                }
            }
        }
        for (t, to) in rule.to.iter().enumerate() {
            let f = format!("{spec_field}.rules[{r}].to[{t}].operation");
            let op = &to.operation;
            for (name, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                for (k, port) in list.iter().enumerate() {
                    if *port == 0 {
                        p.push(format!("{f}.{name}[{k}]"), "must be 1-65535");
                    }
                }
            }
            for (name, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                for (k, pattern) in list.iter().enumerate() {
                    if let Err(e) = check_pattern(pattern) {
                        p.push(format!("{f}.{name}[{k}]"), e);
                    }
                }
            }
        }
    }
}

/// Parses `10.0.0.0/8`, `fd00::/8`, or a single address as a host network.
pub fn parse_ip_block(block: &str) -> Option<ipnet::IpNet> {
    if let Ok(net) = block.parse::<ipnet::IpNet>() {
        return Some(net);
    }
    block.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
}

/// A match pattern may carry one `*`, at its start or its end.
fn check_pattern(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("must not be empty".into());
    }
    let stars = pattern.matches('*').count();
    if stars > 1 || (stars == 1 && !(pattern.starts_with('*') || pattern.ends_with('*'))) {
        return Err(format!("{pattern:?}: `*` is allowed only once, at the start or the end"));
    }
    Ok(())
}

fn validate_route(p: &mut Problems, field: &str, spec: &TrafficRouteSpec) {
    if spec.hosts.is_empty() {
        p.push(format!("{field}.spec.hosts"), "at least one host is required");
    }
    check_strings(p, &format!("{field}.spec"), spec, TRAFFIC_ROUTE_STRINGS, TRAFFIC_ROUTE_DURATIONS);
    check_count(p, &format!("{field}.spec.http"), spec.http.len(), MAX_HTTP_RULES);
    for (r, rule) in spec.http.iter().enumerate() {
        let f = format!("{field}.spec.http[{r}]");
        let actions = [!rule.route.is_empty(), rule.redirect.is_some(), rule.direct_response.is_some()];
        if actions.iter().filter(|a| **a).count() != 1 {
            p.push(&f, "exactly one of route, redirect, directResponse is required");
        }
        if !rule.route.is_empty() && rule.route.iter().all(|d| d.weight == Some(0)) {
            p.push(format!("{f}.route"), "all weights are zero");
        }
        check_count(p, &format!("{f}.route"), rule.route.len(), MAX_DESTINATIONS);
        for (d, destination) in rule.route.iter().enumerate() {
            if let Some(weight) = destination.weight {
                check_max(p, &format!("{f}.route[{d}].weight"), weight, MAX_WEIGHT);
            }
            if destination.destination.port == Some(0) {
                p.push(format!("{f}.route[{d}].destination.port"), "must be 1-65535");
            }
        }
        if let Some(redirect) = &rule.redirect {
            // The proxy answers only these; anything else would make it refuse the whole configuration.
            if redirect.redirect_code.is_some_and(|c| !REDIRECT_CODES.contains(&c)) {
                p.push(format!("{f}.redirect.redirectCode"), "must be one of 301, 302, 303, 307, 308");
            }
            if let Some(uri) = &redirect.uri {
                if !uri.starts_with('/') || http::HeaderValue::try_from(uri.as_str()).is_err() {
                    p.push(format!("{f}.redirect.uri"), "must be an absolute path of printable characters");
                }
            }
            if let Some(authority) = &redirect.authority {
                if authority.parse::<http::uri::Authority>().is_err() {
                    p.push(format!("{f}.redirect.authority"), format!("{authority:?} is not a host[:port]"));
                }
            }
        }
        if let Some(rewrite) = &rule.rewrite {
            check_rewrite(p, &format!("{f}.rewrite"), rewrite, rule.route.is_empty());
        }
        if let Some(direct) = &rule.direct_response {
            if !(100..=599).contains(&direct.status) {
                p.push(format!("{f}.directResponse.status"), "must be 100-599");
            }
        }
        if let Some(ops) = &rule.headers {
            for (side, changes) in [("request", &ops.request), ("response", &ops.response)] {
                if let Some(changes) = changes {
                    check_header_changes(p, &format!("{f}.headers.{side}"), changes);
                }
            }
        }
        check_count(p, &format!("{f}.match"), rule.matches.len(), MAX_MATCHES);
        for (m, matcher) in rule.matches.iter().enumerate() {
            let mf = format!("{f}.match[{m}]");
            check_count(p, &format!("{mf}.headers"), matcher.headers.len(), MAX_MATCH_ENTRIES);
            check_count(p, &format!("{mf}.queryParams"), matcher.query_params.len(), MAX_MATCH_ENTRIES);
            if let Some(uri) = &matcher.uri {
                check_string_match(p, &format!("{mf}.uri"), uri);
            }
            if let Some(method) = &matcher.method {
                check_string_match(p, &format!("{mf}.method"), method);
            }
            for (name, sm) in &matcher.headers {
                check_header_name(p, &format!("{mf}.headers"), name);
                check_string_match(p, &format!("{mf}.headers.{name}"), sm);
            }
            for (name, sm) in &matcher.query_params {
                check_string_match(p, &format!("{mf}.queryParams.{name}"), sm);
            }
        }
        for (name, value) in [("timeout", &rule.timeout)] {
            if let Some(v) = value {
                if let Err(e) = parse_duration(v) {
                    p.push(format!("{f}.{name}"), e);
                }
            }
        }
        if let Some(retries) = &rule.retries {
            check_max(p, &format!("{f}.retries.attempts"), retries.attempts, MAX_RETRY_ATTEMPTS);
            if let Some(Err(e)) = retries.retry_on.as_deref().map(check_retry_on) {
                p.push(format!("{f}.retries.retryOn"), e);
            }
            if let Some(v) = &retries.per_try_timeout {
                if let Err(e) = parse_duration(v) {
                    p.push(format!("{f}.retries.perTryTimeout"), e);
                }
            }
        }
        if let Some(fault) = &rule.fault {
            if let Some(delay) = &fault.delay {
                if let Err(e) = parse_duration(&delay.fixed_delay) {
                    p.push(format!("{f}.fault.delay.fixedDelay"), e);
                }
                check_percentage(p, &format!("{f}.fault.delay.percentage"), delay.percentage);
            }
            if let Some(abort) = &fault.abort {
                if !(100..=599).contains(&abort.http_status) {
                    p.push(format!("{f}.fault.abort.httpStatus"), "must be 100-599");
                }
                check_percentage(p, &format!("{f}.fault.abort.percentage"), abort.percentage);
            }
        }
    }
}

fn check_rewrite(p: &mut Problems, field: &str, rewrite: &crate::Rewrite, no_route: bool) {
    let is_path =
        |path: &str| path.starts_with('/') && http::HeaderValue::try_from(path).is_ok() && !path.contains('?');
    if no_route {
        p.push(field, "applies only to a rule with route (not with redirect or directResponse)");
    }
    if rewrite.full_path.is_some() && rewrite.prefix.is_some() {
        p.push(field, "at most one of fullPath and prefix");
    }
    if rewrite.full_path.as_deref().is_some_and(|path| !is_path(path)) {
        p.push(format!("{field}.fullPath"), "must be an absolute path of printable characters, without a query");
    }
    if let Some(prefix) = &rewrite.prefix {
        if !is_path(&prefix.from) {
            p.push(format!("{field}.prefix.from"), "must be an absolute path of printable characters, without a query");
        }
        if !(prefix.to.is_empty() || is_path(&prefix.to)) {
            p.push(format!("{field}.prefix.to"), "must be empty or an absolute path of printable characters");
        }
    }
    if let Some(authority) = &rewrite.authority {
        if authority.parse::<http::uri::Authority>().is_err() {
            p.push(format!("{field}.authority"), format!("{authority:?} is not a host[:port]"));
        }
    }
}

/// NaN and the infinities fail too: neither is in the range.
fn check_percentage(p: &mut Problems, field: &str, value: f64) {
    if !(0.0..=f64::from(MAX_PERCENT)).contains(&value) {
        p.push(field, format!("{value} is not a percentage (0-100)"));
    }
}

const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

// Header names and values are checked with the `http` crate the proxy builds them with: a route the control
// plane accepts must never be one a proxy refuses, since a proxy refuses a configuration whole.
fn check_header_name(p: &mut Problems, field: &str, name: &str) {
    if name.len() <= MAX_STRING_LEN && http::HeaderName::try_from(name).is_err() {
        p.push(field, format!("{name:?} is not a header name"));
    }
}

fn check_header_changes(p: &mut Problems, field: &str, changes: &HeaderChanges) {
    for (op, map) in [("set", &changes.set), ("add", &changes.add)] {
        for (name, value) in map {
            check_header_name(p, &format!("{field}.{op}"), name);
            if name.len() <= MAX_STRING_LEN && http::HeaderValue::try_from(value.as_str()).is_err() {
                p.push(format!("{field}.{op}.{name}"), "is not a header value (control characters)");
            }
        }
    }
    for (i, name) in changes.remove.iter().enumerate() {
        check_header_name(p, &format!("{field}.remove[{i}]"), name);
    }
}

fn check_max(p: &mut Problems, field: &str, value: u32, max: u32) {
    if value > max {
        p.push(field, format!("{value} is more than the maximum of {max}"));
    }
}

fn check_count(p: &mut Problems, field: &str, count: usize, max: usize) {
    if count > max {
        p.push(field, format!("{count} entries are more than the maximum of {max}"));
    }
}

/// Checks the length of every string and map key of a spec against [`MAX_STRING_LEN`], or the bound `limits`
/// gives its field; `durations` are left to [`parse_duration`], which bounds them itself. Generic over the
/// serialized form so that a field added to a spec is bounded without anyone remembering to.
fn check_strings(
    p: &mut Problems,
    spec_field: &str,
    spec: &impl Serialize,
    limits: &[(&str, usize)],
    durations: &[&str],
) {
    // The specs serialize to JSON infallibly (string keys only); were that to change, other checks still run.
    let Ok(value) = serde_json::to_value(spec) else { return };
    let bounds = StringBounds { limits, durations };
    bounds.walk(p, &value, spec_field.to_string(), String::new());
}

struct StringBounds<'a> {
    limits: &'a [(&'a str, usize)],
    durations: &'a [&'a str],
}

impl StringBounds<'_> {
    /// `path` is the field as reported (`spec.http[0].name`), `shape` as the tables name it (`http[].name`).
    fn walk(&self, p: &mut Problems, value: &Value, path: String, shape: String) {
        match value {
            Value::String(s) => {
                if self.durations.contains(&shape.as_str()) {
                    return;
                }
                let max = self.limits.iter().find(|(f, _)| *f == shape).map_or(MAX_STRING_LEN, |(_, max)| *max);
                if s.len() > max {
                    p.push(path, format!("{} bytes is longer than the maximum of {max}", s.len()));
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk(p, item, format!("{path}[{i}]"), format!("{shape}[]"));
                }
            }
            Value::Object(map) => {
                for (key, child) in map {
                    if key.len() > MAX_STRING_LEN {
                        // Named by its parent: the key itself is too long to repeat.
                        p.push(
                            &path,
                            format!("a key of {} bytes is longer than the maximum of {MAX_STRING_LEN}", key.len()),
                        );
                        continue;
                    }
                    let shape = if shape.is_empty() { key.clone() } else { format!("{shape}.{key}") };
                    self.walk(p, child, format!("{path}.{key}"), shape);
                }
            }
            _ => {}
        }
    }
}

fn check_string_match(p: &mut Problems, field: &str, sm: &StringMatch) {
    let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some(), sm.present.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        p.push(field, "exactly one of exact, prefix, regex, present is required");
    }
    // Compile here so a bad pattern is refused where it was written, not discovered on the data path.
    // A pattern over the length bound is reported by `check_strings`; compiling it would only cost time.
    if let Some(pattern) = sm.regex.as_ref().filter(|r| r.len() <= MAX_STRING_LEN) {
        // The pattern must stand alone, and compile as the proxy anchors it (a `(?x)` comment could swallow
        // the closing group there).
        let compiled = regex::Regex::new(pattern).and_then(|_| regex::Regex::new(&format!("^(?:{pattern})$")));
        if let Err(e) = compiled {
            // The parser's message draws a caret under the pattern over several lines; its last line says why.
            let text = e.to_string();
            let why = text.lines().last().unwrap_or_default().trim_start_matches("error: ");
            p.push(format!("{field}.regex"), format!("{pattern:?} is not a valid regular expression: {why}"));
        }
    }
}

/// The `retryOn` conditions the proxy implements (Istio's names, the gRPC ones matched on a trailers-only
/// answer's `grpc-status`); a list may also hold status codes. Anything else is refused, not ignored.
pub const RETRY_ON_CONDITIONS: [&str; 12] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Checks a comma-separated `retryOn` list: every entry a known condition or a status code 100-599.
pub fn check_retry_on(text: &str) -> Result<(), String> {
    let unknown: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .filter(|t| !RETRY_ON_CONDITIONS.contains(t) && !t.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c)))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let names = unknown.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ");
    let verb = if unknown.len() == 1 { "is" } else { "are" };
    Err(format!(
        "{names} {verb} not a retry condition (known: {}, or status codes 100-599)",
        RETRY_ON_CONDITIONS.join(", ")
    ))
}

fn validate_load_balancer(p: &mut Problems, field: &str, lb: &LoadBalancer) {
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        p.push(field, "set either simple or consistentHash, not both");
    }
    let Some(hash) = &lb.consistent_hash else { return };
    let f = format!("{field}.consistentHash");
    if hash.keys().len() != 1 {
        p.push(&f, "set exactly one of httpHeaderName, httpCookie, httpQueryParameterName, useSourceIp");
    }
    if let Some(header) = &hash.http_header_name {
        if header.len() <= MAX_STRING_LEN && http::HeaderName::try_from(header.as_str()).is_err() {
            p.push(format!("{f}.httpHeaderName"), format!("{header:?} is not a valid HTTP header name"));
        }
    }
    for (name, value) in
        [("httpCookie", &hash.http_cookie), ("httpQueryParameterName", &hash.http_query_parameter_name)]
    {
        if value.as_ref().is_some_and(|v| v.is_empty()) {
            p.push(format!("{f}.{name}"), "must not be empty");
        }
    }
    if let Some(size) = hash.ring_hash.as_ref().and_then(|r| r.minimum_ring_size) {
        if !(1..=MAX_RING_SIZE).contains(&size) {
            p.push(format!("{f}.ringHash.minimumRingSize"), format!("must be 1-{MAX_RING_SIZE}"));
        }
    }
    if hash.maglev.is_some() {
        p.push(format!("{f}.maglev"), MAGLEV_REFUSED);
    }
}

/// Why `consistentHash.maglev` is refused (the CRD's rule says the same).
pub const MAGLEV_REFUSED: &str =
    "is not supported: Strait's consistent hash is a ring hash (size it with ringHash.minimumRingSize)";

fn validate_destination_policy(p: &mut Problems, field: &str, spec: &DestinationPolicySpec) {
    if spec.host.is_empty() {
        p.push(format!("{field}.spec.host"), "is required");
    }
    if let Some(lb) = &spec.load_balancer {
        validate_load_balancer(p, &format!("{field}.spec.loadBalancer"), lb);
    }
    check_strings(p, &format!("{field}.spec"), spec, DESTINATION_POLICY_STRINGS, DESTINATION_POLICY_DURATIONS);
    if let Some(pool) = &spec.connection_pool {
        let timeouts = [
            ("tcp.connectTimeout", pool.tcp.as_ref().and_then(|t| t.connect_timeout.as_ref())),
            ("http.idleTimeout", pool.http.as_ref().and_then(|h| h.idle_timeout.as_ref())),
        ];
        for (name, value) in timeouts {
            if let Some(Err(e)) = value.map(|v| parse_duration(v)) {
                p.push(format!("{field}.spec.connectionPool.{name}"), e);
            }
        }
    }
    if let Some(budget) = &spec.retry_budget {
        if let Some(percent) = budget.percent {
            check_max(p, &format!("{field}.spec.retryBudget.percent"), percent, MAX_RETRY_BUDGET_PERCENT);
        }
        if let Some(min) = budget.min_retries_per_second {
            check_max(p, &format!("{field}.spec.retryBudget.minRetriesPerSecond"), min, MAX_MIN_RETRIES_PER_SECOND);
        }
    }
    let mut names = BTreeSet::new();
    for (i, subset) in spec.subsets.iter().enumerate() {
        if !names.insert(subset.name.as_str()) {
            p.push(format!("{field}.spec.subsets[{i}].name"), format!("{:?} is defined twice", subset.name));
        }
    }
    if let Some(od) = &spec.outlier_detection {
        for (name, value) in [("interval", &od.interval), ("baseEjectionTime", &od.base_ejection_time)] {
            if let Some(v) = value {
                if let Err(e) = parse_duration(v) {
                    p.push(format!("{field}.spec.outlierDetection.{name}"), e);
                }
            }
        }
        if od.max_ejection_percent.is_some_and(|m| m > MAX_PERCENT) {
            p.push(format!("{field}.spec.outlierDetection.maxEjectionPercent"), "must be 0-100");
        }
        for (name, value) in [
            ("consecutive5xxErrors", od.consecutive_5xx_errors),
            ("consecutiveGatewayErrors", od.consecutive_gateway_errors),
        ] {
            if let Some(v) = value {
                check_max(p, &format!("{field}.spec.outlierDetection.{name}"), v, MAX_CONSECUTIVE_ERRORS);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_config_passes() {
        let config = MeshConfig::from_yaml(
            r#"
trustDomain: cluster.local
workloads:
- {name: a, namespace: shop, serviceAccount: sa-a, node: node-a, address: 10.0.1.2, labels: {app: a}}
services:
- name: reviews
  namespace: shop
  addresses: [10.96.0.10]
  ports: [{port: 9080, name: http}]
  endpoints: [{address: 10.0.1.2}]
authorizationPolicies:
- name: readers
  namespace: shop
  spec:
    action: DENY
    rules:
    - from: [{source: {principals: ["cluster.local/ns/shop/sa/*"], ipBlocks: ["10.0.0.0/8"]}}]
      to: [{operation: {ports: [9080]}}]
"#,
        )
        .expect("valid");
        assert_eq!(config.workloads[0].service_account, "sa-a");
        assert_eq!(config.services[0].ports[0].protocol(), crate::Protocol::Http);
    }

    #[test]
    fn errors_name_the_field() {
        let err = MeshConfig::from_yaml(
            r#"
authorizationPolicies:
- name: bad
  namespace: shop
  spec:
    rules:
    - from: [{source: {ipBlocks: ["10.0.0/8"]}}, {source: {principals: ["a*b"]}}]
"#,
        )
        .expect_err("invalid");
        let problems = err.problems();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("authorizationPolicies[shop/bad].spec.rules[0].from[0].source.ipBlocks[0]"));
        assert!(problems[1].starts_with("authorizationPolicies[shop/bad].spec.rules[0].from[1].source.principals[0]"));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = MeshConfig::from_yaml("workloads: []\nwrkloads: []\n").expect_err("typo");
        assert!(err.to_string().contains("wrkloads"), "{err}");
    }

    #[test]
    fn duplicate_addresses_and_zero_weights_are_rejected() {
        let err = MeshConfig::from_yaml(
            r#"
workloads:
- {name: a, namespace: shop, node: n, address: 10.0.0.1}
- {name: b, namespace: shop, node: n, address: 10.0.0.1}
trafficRoutes:
- name: r
  namespace: shop
  spec:
    hosts: [reviews]
    http:
    - route: [{destination: {host: reviews}, weight: 0}]
"#,
        )
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("workloads[1].address"), "{text}");
        assert!(text.contains("trafficRoutes[shop/r].spec.http[0].route: all weights are zero"), "{text}");
    }

    #[test]
    fn bad_regexes_are_rejected() {
        let err = MeshConfig::from_yaml(
            r#"
trafficRoutes:
- name: r
  namespace: shop
  spec:
    hosts: [reviews]
    http:
    - match: [{uri: {regex: "/api/(v1"}}]
      route: [{destination: {host: reviews}}]
"#,
        )
        .expect_err("invalid");
        assert!(err.to_string().contains("trafficRoutes[shop/r].spec.http[0].match[0].uri.regex"), "{err}");
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.1s"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("86400000ms"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("0.000000001s"), Ok(Duration::from_nanos(1)));
        for bad in
            ["10", "fast", "", "s", "-1s", "+1s", " 10s", "10 s", ".5s", "1.s", "1e400s", "NaN", "nans", "inf", "infs"]
        {
            assert!(matches!(parse_duration(bad), Err(DurationError::Malformed { .. })), "{bad:?}");
        }
        for huge in
            ["99999999999999999999s", "24.000000001h", "86400001ms", "1441m", "9999999999999999999999999999999h"]
        {
            assert_eq!(parse_duration(huge), Err(DurationError::TooLarge { text: huge.into() }), "{huge:?}");
        }
        let long = "1".repeat(10_000) + "s";
        assert_eq!(parse_duration(&long), Err(DurationError::TooLong { len: long.len() }));
        assert!(!parse_duration(&long).unwrap_err().to_string().contains("111111111111111111111111111111111"));
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_nanos(1_000_000_001)), "1.000000001s");
    }

    fn route_with(rule: &str) -> String {
        format!(
            "trafficRoutes:\n- name: r\n  namespace: shop\n  spec:\n    hosts: [reviews]\n    http:\n    - {rule}\n"
        )
    }

    fn problems_of(yaml: &str) -> Vec<String> {
        MeshConfig::from_yaml(yaml).expect_err("invalid").problems()
    }

    /// The panic of issue 11: `Duration::from_secs_f64` on a timeout beyond `u64` seconds.
    #[test]
    fn out_of_range_durations_are_refused_naming_the_field() {
        for (value, why) in [
            ("99999999999999999999s", "longer than 24h"),
            ("25h", "longer than 24h"),
            ("1e400s", "is not a duration"),
            ("NaN", "is not a duration"),
            ("inf", "is not a duration"),
            ("-1s", "is not a duration"),
        ] {
            let route = route_with(&format!(
                "{{timeout: \"{value}\", retries: {{attempts: 1, perTryTimeout: \"{value}\"}}, \
                 fault: {{delay: {{fixedDelay: \"{value}\", percentage: 1}}}}, route: [{{destination: {{host: reviews}}}}]}}"
            ));
            let problems = problems_of(&route);
            let fields: Vec<&str> = problems.iter().map(|p| p.split(": ").next().unwrap_or_default()).collect();
            assert_eq!(
                fields,
                [
                    "trafficRoutes[shop/r].spec.http[0].timeout",
                    "trafficRoutes[shop/r].spec.http[0].retries.perTryTimeout",
                    "trafficRoutes[shop/r].spec.http[0].fault.delay.fixedDelay",
                ],
                "{value}: {problems:?}"
            );
            assert!(problems.iter().all(|p| p.contains(why)), "{value}: {problems:?}");

            let policy = format!(
                "destinationPolicies:\n- name: d\n  namespace: shop\n  spec:\n    host: reviews\n    \
                 connectionPool: {{tcp: {{connectTimeout: \"{value}\"}}, http: {{idleTimeout: \"{value}\"}}}}\n    \
                 outlierDetection: {{interval: \"{value}\", baseEjectionTime: \"{value}\"}}\n"
            );
            let problems = problems_of(&policy);
            let fields: Vec<&str> = problems.iter().map(|p| p.split(": ").next().unwrap_or_default()).collect();
            assert_eq!(
                fields,
                [
                    "destinationPolicies[shop/d].spec.connectionPool.tcp.connectTimeout",
                    "destinationPolicies[shop/d].spec.connectionPool.http.idleTimeout",
                    "destinationPolicies[shop/d].spec.outlierDetection.interval",
                    "destinationPolicies[shop/d].spec.outlierDetection.baseEjectionTime",
                ],
                "{value}: {problems:?}"
            );
        }
    }

    #[test]
    fn counts_weights_statuses_and_percentages_are_bounded() {
        let problems = problems_of(&route_with(
            "{retries: {attempts: 51}, fault: {abort: {httpStatus: 503, percentage: .nan}, \
             delay: {fixedDelay: 1s, percentage: .inf}}, \
             route: [{destination: {host: reviews, port: 0}, weight: 1000001}, {destination: {host: reviews}, weight: 1}]}",
        ));
        let expected = [
            "trafficRoutes[shop/r].spec.http[0].route[0].weight: 1000001 is more than the maximum of 1000000",
            "trafficRoutes[shop/r].spec.http[0].route[0].destination.port: must be 1-65535",
            "trafficRoutes[shop/r].spec.http[0].retries.attempts: 51 is more than the maximum of 50",
            "trafficRoutes[shop/r].spec.http[0].fault.delay.percentage: inf is not a percentage (0-100)",
            "trafficRoutes[shop/r].spec.http[0].fault.abort.percentage: NaN is not a percentage (0-100)",
        ];
        assert_eq!(problems, expected);

        let problems = problems_of(&route_with("{redirect: {uri: \"no-slash\", redirectCode: 200}}"));
        assert_eq!(
            problems,
            [
                "trafficRoutes[shop/r].spec.http[0].redirect.redirectCode: must be one of 301, 302, 303, 307, 308",
                "trafficRoutes[shop/r].spec.http[0].redirect.uri: must be an absolute path of printable characters",
            ]
        );
        let problems = problems_of(&route_with("{directResponse: {status: 600}}"));
        assert_eq!(problems, ["trafficRoutes[shop/r].spec.http[0].directResponse.status: must be 100-599"]);

        let problems = problems_of(
            "destinationPolicies:\n- name: d\n  namespace: shop\n  spec:\n    host: reviews\n    \
             outlierDetection: {consecutive5xxErrors: 100001, consecutiveGatewayErrors: 4294967295}\n",
        );
        assert_eq!(
            problems,
            [
                "destinationPolicies[shop/d].spec.outlierDetection.consecutive5xxErrors: 100001 is more than the maximum of 100000",
                "destinationPolicies[shop/d].spec.outlierDetection.consecutiveGatewayErrors: 4294967295 is more than the maximum of 100000",
            ]
        );

        let rules = vec!["{route: [{destination: {host: reviews}}]}"; MAX_HTTP_RULES + 1].join(", ");
        let yaml =
            format!("trafficRoutes:\n- name: r\n  namespace: shop\n  spec: {{hosts: [reviews], http: [{rules}]}}\n");
        assert_eq!(
            problems_of(&yaml),
            ["trafficRoutes[shop/r].spec.http: 129 entries are more than the maximum of 128"]
        );
    }

    #[test]
    fn retry_budgets_are_bounded() {
        let policy = |budget: &str| {
            format!("destinationPolicies:\n- name: d\n  namespace: shop\n  spec:\n    host: reviews\n    retryBudget: {budget}\n")
        };
        assert!(MeshConfig::from_yaml(&policy("{percent: 1000, minRetriesPerSecond: 100000}")).is_ok());
        assert_eq!(
            problems_of(&policy("{percent: 1001, minRetriesPerSecond: 100001}")),
            [
                "destinationPolicies[shop/d].spec.retryBudget.percent: 1001 is more than the maximum of 1000",
                "destinationPolicies[shop/d].spec.retryBudget.minRetriesPerSecond: 100001 is more than the maximum of 100000",
            ]
        );
    }

    /// Issue 21, item 3: what the proxy used to warn about while traffic flowed is refused at apply.
    #[test]
    fn load_balancers_retry_conditions_and_durations_are_refused_naming_the_field() {
        let policy = |body: &str| {
            format!("destinationPolicies:\n- name: d\n  namespace: shop\n  spec:\n    host: reviews\n    {body}\n")
        };
        let cases = [
            (
                "loadBalancer: {simple: ROUND_ROBIN, consistentHash: {httpHeaderName: x-user-id}}",
                "destinationPolicies[shop/d].spec.loadBalancer: set either simple or consistentHash, not both",
            ),
            (
                "loadBalancer: {consistentHash: {httpHeaderName: \"bad header\"}}",
                "destinationPolicies[shop/d].spec.loadBalancer.consistentHash.httpHeaderName: \"bad header\" is not a valid HTTP header name",
            ),
            (
                "loadBalancer: {consistentHash: {}}",
                "destinationPolicies[shop/d].spec.loadBalancer.consistentHash: set exactly one of httpHeaderName, httpCookie",
            ),
            (
                "loadBalancer: {consistentHash: {httpHeaderName: x-user-id, httpCookie: user}}",
                "destinationPolicies[shop/d].spec.loadBalancer.consistentHash: set exactly one of httpHeaderName, httpCookie",
            ),
            (
                "loadBalancer: {consistentHash: {httpCookie: \"\"}}",
                "destinationPolicies[shop/d].spec.loadBalancer.consistentHash.httpCookie: must not be empty",
            ),
            (
                "loadBalancer: {consistentHash: {useSourceIp: true, httpQueryParameterName: user}}",
                "destinationPolicies[shop/d].spec.loadBalancer.consistentHash: set exactly one of httpHeaderName, httpCookie, httpQueryParameterName, useSourceIp",
            ),
            (
                "loadBalancer: {consistentHash: {useSourceIp: false}}",
                "destinationPolicies[shop/d].spec.loadBalancer.consistentHash: set exactly one of",
            ),
            (
                "loadBalancer: {consistentHash: {httpQueryParameterName: \"\"}}",
                "destinationPolicies[shop/d].spec.loadBalancer.consistentHash.httpQueryParameterName: must not be empty",
            ),
            (
                "loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 0}}}",
                "destinationPolicies[shop/d].spec.loadBalancer.consistentHash.ringHash.minimumRingSize: must be 1-262144",
            ),
            (
                "loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 262145}}}",
                "destinationPolicies[shop/d].spec.loadBalancer.consistentHash.ringHash.minimumRingSize: must be 1-262144",
            ),
            (
                "loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 65537}}}",
                "destinationPolicies[shop/d].spec.loadBalancer.consistentHash.maglev: is not supported: Strait's consistent hash is a ring hash",
            ),
            (
                "connectionPool: {tcp: {connectTimeout: fast}}",
                "destinationPolicies[shop/d].spec.connectionPool.tcp.connectTimeout: \"fast\" is not a duration",
            ),
            (
                "connectionPool: {http: {idleTimeout: -5s}}",
                "destinationPolicies[shop/d].spec.connectionPool.http.idleTimeout: \"-5s\" is not a duration",
            ),
        ];
        for (body, expected) in cases {
            let problems = problems_of(&policy(body));
            assert_eq!(problems.len(), 1, "{body}: {problems:?}");
            assert!(problems[0].starts_with(expected), "{body}: {problems:?}");
        }
        for good in [
            "loadBalancer: {simple: ROUND_ROBIN}",
            "loadBalancer: {consistentHash: {httpHeaderName: x-user-id}}",
            "loadBalancer: {consistentHash: {httpCookie: user}}",
            "loadBalancer: {consistentHash: {httpQueryParameterName: user}}",
            "loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 262144}}}",
            "connectionPool: {tcp: {connectTimeout: 250ms}, http: {idleTimeout: 0s, maxRequestsPerConnection: 1}}",
        ] {
            MeshConfig::from_yaml(&policy(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
        }

        let problems = problems_of(&route_with(
            "{retries: {attempts: 3, retryOn: \"bogus,5xx\"}, route: [{destination: {host: reviews}}]}",
        ));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(
                "trafficRoutes[shop/r].spec.http[0].retries.retryOn: \"bogus\" is not a retry condition (known: 5xx, "
            ),
            "{problems:?}"
        );
        let problems = problems_of(&route_with(
            "{retries: {attempts: 3, retryOn: \"unavailble,600,5xx\"}, route: [{destination: {host: reviews}}]}",
        ));
        assert!(problems[0].contains("\"unavailble\", \"600\" are not a retry condition"), "{problems:?}");
        let ok = route_with(
            "{retries: {attempts: 3, retryOn: \" 5xx, gateway-error,reset,connect-failure,refused-stream,retriable-4xx,retriable-status-codes,503,429,unavailable,cancelled,deadline-exceeded,internal,resource-exhausted\"}, route: [{destination: {host: reviews}}]}",
        );
        MeshConfig::from_yaml(&ok).expect("every known condition");
    }

    /// What a proxy would refuse (and with it the whole configuration) is refused here, by field.
    #[test]
    fn what_the_proxy_cannot_compile_is_refused() {
        let problems = problems_of(&route_with(
            "{match: [{headers: {\"bad name\": {exact: x}}, uri: {regex: \"(?x)a#\"}}], \
             headers: {request: {set: {x-a: \"a\\nb\"}, remove: [\"x y\"]}, response: {add: {\"(\": ok}}}, \
             route: [{destination: {host: reviews}}]}",
        ));
        assert_eq!(
            problems,
            [
                "trafficRoutes[shop/r].spec.http[0].headers.request.set.x-a: is not a header value (control characters)",
                "trafficRoutes[shop/r].spec.http[0].headers.request.remove[0]: \"x y\" is not a header name",
                "trafficRoutes[shop/r].spec.http[0].headers.response.add: \"(\" is not a header name",
                "trafficRoutes[shop/r].spec.http[0].match[0].uri.regex: \"(?x)a#\" is not a valid regular expression: unclosed group",
                "trafficRoutes[shop/r].spec.http[0].match[0].headers: \"bad name\" is not a header name",
            ]
        );
        let problems = problems_of(&route_with("{redirect: {authority: \"a b\"}}"));
        assert_eq!(problems, ["trafficRoutes[shop/r].spec.http[0].redirect.authority: \"a b\" is not a host[:port]"]);
        let problems = problems_of(
            "authorizationPolicies:\n- name: p\n  namespace: shop\n  spec: {rules: [{from: [{source: {principals: [\"spiffe://\"]}}]}]}\n",
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("authorizationPolicies[shop/p].spec.rules[0].from[0].source.principals[0]: "));
    }

    #[test]
    fn strings_are_bounded() {
        let long = "a".repeat(MAX_STRING_LEN + 1);
        // JSON: YAML refuses keys longer than 1024 characters on its own.
        let config = serde_json::json!({"trafficRoutes": [{"name": "r", "namespace": "shop", "spec": {
            "hosts": ["reviews"],
            "http": [{
                "name": "n".repeat(MAX_NAME_LEN + 1),
                "match": [{"uri": {"regex": long}, "headers": {long.clone(): {"exact": "x"}}}],
                "headers": {"request": {"set": {"x-a": long}}},
                "route": [{"destination": {"host": "reviews"}}],
            }],
        }}]});
        let config: MeshConfig = serde_json::from_value(config).expect("decodes");
        assert_eq!(
            config.validate().expect_err("invalid").problems(),
            [
                "trafficRoutes[shop/r].spec.http[0].headers.request.set.x-a: 1025 bytes is longer than the maximum of 1024",
                "trafficRoutes[shop/r].spec.http[0].match[0].headers: a key of 1025 bytes is longer than the maximum of 1024",
                "trafficRoutes[shop/r].spec.http[0].match[0].uri.regex: 1025 bytes is longer than the maximum of 1024",
                "trafficRoutes[shop/r].spec.http[0].name: 254 bytes is longer than the maximum of 253",
            ]
        );
        // A body may be longer than other strings, up to its own bound.
        let body =
            |len: usize| route_with(&format!("{{directResponse: {{status: 200, body: \"{}\"}}}}", "b".repeat(len)));
        assert!(MeshConfig::from_yaml(&body(MAX_BODY_LEN)).is_ok());
        assert_eq!(
            problems_of(&body(MAX_BODY_LEN + 1)),
            ["trafficRoutes[shop/r].spec.http[0].directResponse.body: 65537 bytes is longer than the maximum of 65536"]
        );
    }
}
