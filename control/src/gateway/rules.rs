//! The conversion HTTPRoute and GRPCRoute share: for each rule its backendRefs and filters, and for each of its
//! matches one Strait rule with its Gateway API precedence. What differs (matches, HTTPRoute's timeouts and
//! rewrites) is a [`RuleKind`], implemented in `http.rs` and `grpc.rs`.

use strait_api::{Destination, DirectResponse, HttpMatch, HttpRoute, Rewrite, RouteDestination};

use super::http::Filters;
use super::spec::{BackendRef, Filter};
use super::{BackendService, GatewayRule, RouteKind};

/// The fields every rule of both kinds has.
pub(super) struct CommonRule<'a, M> {
    pub name: &'a Option<String>,
    pub matches: &'a [M],
    pub filters: &'a [Filter],
    pub backend_refs: &'a [BackendRef],
}

/// What one match of a rule is converted with.
pub(super) struct MatchInput<'a> {
    pub kind: RouteKind,
    pub name: &'a Option<String>,
    pub backends: &'a RuleBackends,
    pub filters: &'a Filters,
}

/// One route kind's part of the conversion.
pub(super) trait RuleKind {
    /// A rule as the spec writes it.
    type Rule;
    /// A match as the spec writes it; its default matches every request.
    type Match: Default;
    /// What a rule adds to each of its matches besides backends and filters (HTTPRoute: its timeouts).
    type Extras;
    const KIND: RouteKind;

    fn common(rule: &Self::Rule) -> CommonRule<'_, Self::Match>;
    /// Read once per rule; the error names the field.
    fn extras(rule: &Self::Rule, field: &str) -> Result<Self::Extras, String>;
    /// The Strait rule for one match, and its precedence (lower first).
    fn convert(
        m: &Self::Match,
        origin: &str,
        input: &MatchInput<'_>,
        extras: &Self::Extras,
    ) -> Result<(HttpRoute, Vec<i64>), String>;
}

/// Converts every rule, one Strait rule per match in the route's own precedence order, and lists every
/// backend; the error names the first field that cannot be enforced.
pub(super) fn convert<K: RuleKind>(
    rules: &[K::Rule],
    namespace: &str,
) -> Result<(Vec<GatewayRule>, Vec<BackendService>), String> {
    let mut out = Vec::new();
    let mut services = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let field = format!("spec.rules[{i}]");
        let common = K::common(rule);
        let backends = backend_refs(common.backend_refs, namespace, &field)?;
        // RequestRedirect and URLRewrite are HTTPRoute's; a GRPCRoute naming them is refused.
        let filters = Filters::convert(common.filters, &field, K::KIND == RouteKind::Http)?;
        let extras = K::extras(rule, &field)?;
        let input = MatchInput { kind: K::KIND, name: common.name, backends: &backends, filters: &filters };
        let default_match = [K::Match::default()];
        let matches = if common.matches.is_empty() { &default_match[..] } else { common.matches };
        for (j, m) in matches.iter().enumerate() {
            let origin = if common.matches.is_empty() { field.clone() } else { format!("{field}.matches[{j}]") };
            let (converted, precedence) = K::convert(m, &origin, &input, &extras)?;
            out.push(GatewayRule {
                precedence,
                origin,
                index: i,
                rule: converted,
                invalid_weight: backends.invalid_weight,
            });
        }
        services.extend(backends.services);
    }
    out.sort_by(|a, b| (&a.precedence, a.index).cmp(&(&b.precedence, b.index)));
    Ok((out, services))
}

/// The rule for one match: forward, redirect, or (no backend, or all weights 0) answer as for an invalid
/// backend (500; UNAVAILABLE for gRPC), as Gateway API requires. Backends that are named but do not resolve
/// are handled per snapshot (`resolve.rs`).
pub(super) fn forwarding(
    input: &MatchInput<'_>,
    matcher: HttpMatch,
    rewrite: Option<Rewrite>,
) -> Result<HttpRoute, String> {
    let route = &input.backends.route;
    let mut rule = HttpRoute {
        name: input.name.clone(),
        // No condition at all (PathPrefix `/` alone): a rule that matches everything.
        matches: if matcher == HttpMatch::default() { Vec::new() } else { vec![matcher] },
        headers: input.filters.headers.clone(),
        ..Default::default()
    };
    if let Some((redirect, field)) = &input.filters.redirect {
        if !input.backends.services.is_empty() {
            return Err(format!("{field}: a redirect answers the request itself; remove the rule's backendRefs"));
        }
        rule.redirect = Some(redirect.clone());
    } else if route.iter().any(|d| d.weight != Some(0)) {
        rule.route = route.to_vec();
        rule.rewrite = rewrite;
    } else {
        // No backendRefs, or every weight zero: "the request MUST receive a 500 status code" (UNAVAILABLE).
        let status = super::resolve::invalid_backend_status(input.kind);
        rule.direct_response = Some(DirectResponse { status, body: None });
    }
    Ok(rule)
}

/// A rule's backendRefs: the Service ones as weighted destinations, every one for `ResolvedRefs`, and the
/// weight of those of another kind (Gateway API: their share of requests gets 500, the route stays accepted).
pub(super) struct RuleBackends {
    pub route: Vec<RouteDestination>,
    pub services: Vec<BackendService>,
    pub invalid_weight: u32,
}

/// The backends of a rule; the error names a backendRef Strait cannot serve at all.
pub(super) fn backend_refs(refs: &[BackendRef], namespace: &str, rule_field: &str) -> Result<RuleBackends, String> {
    let mut out = RuleBackends { route: Vec::new(), services: Vec::new(), invalid_weight: 0 };
    for (j, backend) in refs.iter().enumerate() {
        let field = format!("{rule_field}.backendRefs[{j}]");
        let weight = backend.weight.unwrap_or(1);
        if backend.namespace.as_deref().is_some_and(|n| n != namespace) {
            return Err(format!(
                "{field}.namespace: a backend in another namespace needs a ReferenceGrant, which Strait does not support"
            ));
        }
        if !backend.filters.is_empty() {
            return Err(format!("{field}.filters: per-backend filters are not supported; put them on the rule"));
        }
        let group = backend.group.as_deref().unwrap_or("");
        let kind = backend.kind.as_deref().unwrap_or("Service");
        if !matches!(group, "" | "core") || kind != "Service" {
            out.invalid_weight = out.invalid_weight.saturating_add(weight);
            out.services.push(BackendService {
                field,
                name: backend.name.clone(),
                port: backend.port,
                invalid_kind: Some(format!("{group}/{kind}")),
            });
            continue;
        }
        let Some(port) = backend.port else {
            return Err(format!("{field}.port: is required for a Service backend"));
        };
        out.route.push(RouteDestination {
            destination: Destination { host: backend.name.clone(), subset: None, port: Some(port) },
            weight: Some(weight),
        });
        out.services.push(BackendService { field, name: backend.name.clone(), port: Some(port), invalid_kind: None });
    }
    Ok(out)
}
