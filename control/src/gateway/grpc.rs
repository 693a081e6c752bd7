//! GRPCRoute rules -> Strait rules. A gRPC call is a POST to `/<package.Service>/<Method>`, so a method match
//! is a path match. Precedence (lower first), as the spec orders matches: the longest non-wildcard service,
//! then the longest method, then more header matches.

use strait_api::{HttpMatch, StringMatch};

use super::http::{backend_refs, forwarding, name_value_matches, Filters};
use super::spec::{GrpcMethodMatch, GrpcRouteMatch, GrpcRouteRule};
use super::{BackendService, GatewayRule};

/// Converts every rule; the error names the first field that cannot be enforced.
pub(super) fn rules(
    rules: &[GrpcRouteRule],
    namespace: &str,
) -> Result<(Vec<GatewayRule>, Vec<BackendService>), String> {
    let mut out = Vec::new();
    let mut backends = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let refs = backend_refs(&rule.backend_refs, namespace, &field)?;
        backends.extend(refs.services);
        let filters = Filters::convert(&rule.filters, &field, false)?;
        let default_match = [GrpcRouteMatch::default()];
        let matches = if rule.matches.is_empty() { &default_match[..] } else { &rule.matches[..] };
        for (j, m) in matches.iter().enumerate() {
            let origin = if rule.matches.is_empty() { field.clone() } else { format!("{field}.matches[{j}]") };
            let mut matcher = HttpMatch::default();
            let mut precedence = vec![0, 0];
            if let Some(method) = &m.method {
                let (path, service_len, method_len) = method_path(method, &format!("{origin}.method"))?;
                matcher.uri = Some(path);
                precedence = vec![-(service_len as i64), -(method_len as i64)];
            }
            matcher.headers = name_value_matches(&m.headers, &format!("{origin}.headers"), true)?;
            precedence.push(-(matcher.headers.len() as i64));
            let mut converted = forwarding(rule.name.clone(), matcher, &refs.route, &filters, None)?;
            if let Some(answer) = converted.direct_response.as_mut() {
                // No backend at all: UNAVAILABLE for gRPC, as for a backend that does not resolve.
                answer.status = super::resolve::invalid_backend_status(super::RouteKind::Grpc);
            }
            out.push(GatewayRule {
                precedence,
                origin,
                index: i,
                rule: converted,
                invalid_weight: refs.invalid_weight,
            });
        }
    }
    out.sort_by(|a, b| (&a.precedence, a.index).cmp(&(&b.precedence, b.index)));
    Ok((out, backends))
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
