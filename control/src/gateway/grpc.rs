//! GRPCRoute rules -> Strait rules. A gRPC call is a POST to `/<package.Service>/<Method>`, so a method match
//! is a path match. Precedence (lower first), as the spec orders matches: the longest non-wildcard service,
//! then the longest method, then more header matches.

use strait_api::{HttpMatch, HttpRoute, StringMatch};

use super::http::name_value_matches;
use super::rules::{forwarding, CommonRule, MatchInput, RuleKind};
use super::spec::{GrpcMethodMatch, GrpcRouteMatch, GrpcRouteRule};
use super::RouteKind;

/// GRPCRoute's part of the conversion: its method and header matches.
pub(super) struct Grpc;

impl RuleKind for Grpc {
    type Rule = GrpcRouteRule;
    type Match = GrpcRouteMatch;
    type Extras = ();
    const KIND: RouteKind = RouteKind::Grpc;

    fn common(rule: &GrpcRouteRule) -> CommonRule<'_, GrpcRouteMatch> {
        CommonRule {
            name: &rule.name,
            matches: &rule.matches,
            filters: &rule.filters,
            backend_refs: &rule.backend_refs,
        }
    }

    fn extras(_: &GrpcRouteRule, _: &str) -> Result<(), String> {
        Ok(())
    }

    fn convert(
        m: &GrpcRouteMatch,
        origin: &str,
        input: &MatchInput<'_>,
        _: &(),
    ) -> Result<(HttpRoute, Vec<i64>), String> {
        let mut matcher = HttpMatch::default();
        let mut precedence = vec![0, 0];
        if let Some(method) = &m.method {
            let (path, service_len, method_len) = method_path(method, &format!("{origin}.method"))?;
            matcher.uri = Some(path);
            precedence = vec![-(service_len as i64), -(method_len as i64)];
        }
        matcher.headers = name_value_matches(&m.headers, &format!("{origin}.headers"), true)?;
        precedence.push(-(matcher.headers.len() as i64));
        Ok((forwarding(input, matcher, None)?, precedence))
    }
}

/// The path match for a method match, and the lengths of its (non-wildcard) service and method.
fn method_path(m: &GrpcMethodMatch, field: &str) -> Result<(StringMatch, usize, usize), String> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    if service.is_none() && method.is_none() {
        return Err(format!("{field}: one of service and method is required"));
    }
    let lengths = (service.map_or(0, str::len), method.map_or(0, str::len));
    let exact = |part: Option<&str>| part.map_or_else(|| "[^/]+".to_string(), regex::escape);
    let path = match m.type_.as_deref().unwrap_or("Exact") {
        "Exact" => {
            for (name, part) in [("service", service), ("method", method)] {
                if part.is_some_and(|p| p.contains('/')) {
                    return Err(format!("{field}.{name}: must not contain /"));
                }
            }
            match (service, method) {
                (Some(s), Some(m)) => StringMatch { exact: Some(format!("/{s}/{m}")), ..Default::default() },
                _ => {
                    StringMatch { regex: Some(format!("/{}/{}", exact(service), exact(method))), ..Default::default() }
                }
            }
        }
        "RegularExpression" => {
            let part = |p: Option<&str>| p.map_or_else(|| "[^/]+".to_string(), |p| format!("(?:{p})"));
            StringMatch { regex: Some(format!("/{}/{}", part(service), part(method))), ..Default::default() }
        }
        other => return Err(format!("{field}.type: {other:?} is not supported (Exact, RegularExpression)")),
    };
    Ok((path, lengths.0, lengths.1))
}
