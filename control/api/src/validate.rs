//! Validation of a [`MeshConfig`]: every error names the field it is about, e.g.
//! `authorizationPolicies[shop/readers].spec.rules[0].from[1].source.ipBlocks[0]: "10.0.0/8" is not a CIDR`.

use std::collections::{BTreeSet, HashSet};

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
    for (r, rule) in spec.rules.iter().enumerate() {
        for (s, from) in rule.from.iter().enumerate() {
            let f = format!("{spec_field}.rules[{r}].from[{s}].source");
            let src = &from.source;
            for (name, list) in [("principals", &src.principals), ("notPrincipals", &src.not_principals)] {
                for (k, pattern) in list.iter().enumerate() {
                    if let Err(e) = check_pattern(pattern) {
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
    for (r, rule) in spec.http.iter().enumerate() {
        let f = format!("{field}.spec.http[{r}]");
        let actions = [!rule.route.is_empty(), rule.redirect.is_some(), rule.direct_response.is_some()];
        if actions.iter().filter(|a| **a).count() != 1 {
            p.push(&f, "exactly one of route, redirect, directResponse is required");
        }
        if !rule.route.is_empty() && rule.route.iter().all(|d| d.weight == Some(0)) {
            p.push(format!("{f}.route"), "all weights are zero");
        }
        for (m, matcher) in rule.matches.iter().enumerate() {
            let mf = format!("{f}.match[{m}]");
            if let Some(uri) = &matcher.uri {
                check_string_match(p, &format!("{mf}.uri"), uri);
            }
            if let Some(method) = &matcher.method {
                check_string_match(p, &format!("{mf}.method"), method);
            }
            for (name, sm) in &matcher.headers {
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

fn check_percentage(p: &mut Problems, field: &str, value: f64) {
    if !(0.0..=100.0).contains(&value) {
        p.push(field, format!("{value} is not a percentage (0-100)"));
    }
}

fn check_string_match(p: &mut Problems, field: &str, sm: &StringMatch) {
    let set = [sm.exact.is_some(), sm.prefix.is_some(), sm.regex.is_some(), sm.present.is_some()];
    if set.iter().filter(|s| **s).count() != 1 {
        p.push(field, "exactly one of exact, prefix, regex, present is required");
    }
    // Compile here so a bad pattern is refused where it was written, not discovered on the data path.
    if let Some(pattern) = &sm.regex {
        if let Err(e) = regex::Regex::new(pattern) {
            // The parser's message draws a caret under the pattern over several lines; its last line says why.
            let text = e.to_string();
            let why = text.lines().last().unwrap_or_default().trim_start_matches("error: ");
            p.push(format!("{field}.regex"), format!("{pattern:?} is not a valid regular expression: {why}"));
        }
    }
}

fn validate_destination_policy(p: &mut Problems, field: &str, spec: &DestinationPolicySpec) {
    if spec.host.is_empty() {
        p.push(format!("{field}.spec.host"), "is required");
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
        if od.max_ejection_percent.is_some_and(|m| m > 100) {
            p.push(format!("{field}.spec.outlierDetection.maxEjectionPercent"), "must be 0-100");
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
        assert_eq!(parse_duration("250ms"), Ok(std::time::Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(std::time::Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
