//! HTTPRoute rules -> Strait rules (the conversion both kinds share is `rules.rs`), and the filters GRPCRoute
//! shares.
//!
//! Gateway API does not try rules in order: among all matches of all routes of a parent, the most specific
//! wins. Each match becomes its own rule, with its precedence (lower first): an `Exact` path, then a
//! `RegularExpression` path (implementation-specific in the spec; Strait puts it before every prefix so that
//! the default `/` prefix never hides it), then `PathPrefix` by length, longest first; then a method match;
//! then more header matches; then more query parameter matches.

use std::collections::BTreeMap;

use strait_api::{
    format_duration, HeaderChanges, HeaderOperations, HttpMatch, HttpRoute, PrefixRewrite, Redirect, RetryPolicy,
    Rewrite, StringMatch,
};

use super::rules::{forwarding, CommonRule, MatchInput, RuleKind};
use super::spec::{self, Filter, HeaderModifier, HttpRouteRule, NameValueMatch};
use super::RouteKind;

/// HTTPRoute's part of the conversion: its matches, and its timeouts for every match of a rule.
pub(super) struct Http;

impl RuleKind for Http {
    type Rule = HttpRouteRule;
    type Match = spec::HttpRouteMatch;
    /// The rule's timeout and per-try timeout (`timeouts`).
    type Extras = (Option<String>, Option<RetryPolicy>);
    const KIND: RouteKind = RouteKind::Http;

    fn common(rule: &HttpRouteRule) -> CommonRule<'_, spec::HttpRouteMatch> {
        CommonRule {
            name: &rule.name,
            matches: &rule.matches,
            filters: &rule.filters,
            backend_refs: &rule.backend_refs,
        }
    }

    fn extras(rule: &HttpRouteRule, field: &str) -> Result<Self::Extras, String> {
        timeouts(rule.timeouts.as_ref(), field)
    }

    fn convert(
        m: &spec::HttpRouteMatch,
        origin: &str,
        input: &MatchInput<'_>,
        (timeout, retries): &Self::Extras,
    ) -> Result<(HttpRoute, Vec<i64>), String> {
        let (matcher, precedence, prefix) = http_match(m, origin)?;
        let rewrite = match &input.filters.rewrite {
            None => None,
            Some(RewriteFilter::Rewrite(rewrite)) => Some(rewrite.clone()),
            Some(RewriteFilter::ReplacePrefix { authority, to, field }) => match &prefix {
                Some(from) => Some(Rewrite {
                    prefix: Some(PrefixRewrite { from: from.clone(), to: to.clone() }),
                    authority: authority.clone(),
                    ..Default::default()
                }),
                None => {
                    return Err(format!(
                        "{field}: ReplacePrefixMatch needs a PathPrefix path match, and {origin}.path is not one"
                    ))
                }
            },
        };
        let mut converted = forwarding(input, matcher, rewrite)?;
        converted.timeout = timeout.clone();
        converted.retries = retries.clone();
        Ok((converted, precedence))
    }
}

/// The Strait match for one HTTPRoute match, its precedence, and its path prefix (for ReplacePrefixMatch).
fn http_match(m: &spec::HttpRouteMatch, origin: &str) -> Result<(HttpMatch, Vec<i64>, Option<String>), String> {
    let mut matcher = HttpMatch::default();
    let path = m.path.clone().unwrap_or_default();
    let value = path.value.clone().unwrap_or_else(|| "/".to_string());
    if !value.starts_with('/') {
        return Err(format!("{origin}.path.value: {value:?} must start with /"));
    }
    let (rank, length, prefix) = match path.type_.as_deref().unwrap_or("PathPrefix") {
        "Exact" => {
            matcher.uri = Some(StringMatch { exact: Some(value.clone()), ..Default::default() });
            (0, 0, None)
        }
        "RegularExpression" => {
            matcher.uri = Some(StringMatch { regex: Some(value.clone()), ..Default::default() });
            (1, 0, None)
        }
        "PathPrefix" => {
            // Element-wise: `/foo` matches `/foo` and `/foo/bar`, never `/foobar`; a trailing `/` is ignored.
            let trimmed = value.trim_end_matches('/');
            if !trimmed.is_empty() {
                let regex = format!("{}(/.*)?", regex::escape(trimmed));
                matcher.uri = Some(StringMatch { regex: Some(regex), ..Default::default() });
            }
            (2, -(value.len() as i64), Some(value.clone()))
        }
        other => {
            return Err(format!(
                "{origin}.path.type: {other:?} is not supported (Exact, PathPrefix, RegularExpression)"
            ))
        }
    };
    if let Some(method) = &m.method {
        matcher.method = Some(StringMatch { exact: Some(method.clone()), ..Default::default() });
    }
    matcher.headers = name_value_matches(&m.headers, &format!("{origin}.headers"), true)?;
    matcher.query_params = name_value_matches(&m.query_params, &format!("{origin}.queryParams"), false)?;
    let precedence = vec![
        rank,
        length,
        i64::from(m.method.is_none()),
        -(matcher.headers.len() as i64),
        -(matcher.query_params.len() as i64),
    ];
    Ok((matcher, precedence, prefix))
}

/// Header or query parameter matches. Header names are case-insensitive; of two entries with one name, the
/// first counts (as the spec says).
pub(super) fn name_value_matches(
    entries: &[NameValueMatch],
    field: &str,
    header: bool,
) -> Result<BTreeMap<String, StringMatch>, String> {
    let mut out = BTreeMap::new();
    for (k, entry) in entries.iter().enumerate() {
        let name = if header { entry.name.to_ascii_lowercase() } else { entry.name.clone() };
        let matcher = match entry.type_.as_deref().unwrap_or("Exact") {
            "Exact" => StringMatch { exact: Some(entry.value.clone()), ..Default::default() },
            "RegularExpression" => StringMatch { regex: Some(entry.value.clone()), ..Default::default() },
            other => return Err(format!("{field}[{k}].type: {other:?} is not supported (Exact, RegularExpression)")),
        };
        out.entry(name).or_insert(matcher);
    }
    Ok(out)
}

/// `timeouts.request` is the rule's timeout; `timeouts.backendRequest` bounds each try to the backend.
fn timeouts(timeouts: Option<&spec::Timeouts>, field: &str) -> Result<(Option<String>, Option<RetryPolicy>), String> {
    let Some(timeouts) = timeouts else { return Ok((None, None)) };
    let parse = |value: &Option<String>, name: &str| {
        value.as_deref().map(spec::parse_duration).transpose().map_err(|e| format!("{field}.timeouts.{name}: {e}"))
    };
    let request = parse(&timeouts.request, "request")?;
    let backend = parse(&timeouts.backend_request, "backendRequest")?;
    if let (Some(request), Some(backend)) = (request, backend) {
        if !request.is_zero() && (backend.is_zero() || backend > request) {
            return Err(format!("{field}.timeouts.backendRequest: must not be longer than timeouts.request"));
        }
    }
    let retries = backend.map(|b| RetryPolicy {
        // No retries: Gateway API's standard HTTPRoute has none; the per-try timeout bounds the one try.
        attempts: 0,
        per_try_timeout: Some(format_duration(b)),
        ..Default::default()
    });
    Ok((request.map(format_duration), retries))
}

/// A rule's filters, converted.
#[derive(Default)]
pub(super) struct Filters {
    pub headers: Option<HeaderOperations>,
    /// With the filter's field, for messages.
    pub redirect: Option<(Redirect, String)>,
    pub rewrite: Option<RewriteFilter>,
}

pub(super) enum RewriteFilter {
    Rewrite(Rewrite),
    /// Needs the match's prefix, known per match.
    ReplacePrefix {
        authority: Option<String>,
        to: String,
        field: String,
    },
}

impl Filters {
    /// `http`: whether RequestRedirect and URLRewrite are allowed (HTTPRoute; GRPCRoute has neither).
    pub(super) fn convert(filters: &[Filter], rule_field: &str, http: bool) -> Result<Filters, String> {
        let mut out = Filters::default();
        let mut seen = Vec::new();
        for (k, filter) in filters.iter().enumerate() {
            let field = format!("{rule_field}.filters[{k}]");
            if seen.contains(&filter.type_) {
                return Err(format!("{field}.type: {} appears twice in one rule", filter.type_));
            }
            seen.push(filter.type_.clone());
            let missing = |name: &str| format!("{field}.{name}: is required for type {}", filter.type_);
            match filter.type_.as_str() {
                "RequestHeaderModifier" => {
                    let modifier =
                        filter.request_header_modifier.as_ref().ok_or_else(|| missing("requestHeaderModifier"))?;
                    out.headers.get_or_insert_with(Default::default).request = Some(header_changes(modifier));
                }
                "ResponseHeaderModifier" => {
                    let modifier =
                        filter.response_header_modifier.as_ref().ok_or_else(|| missing("responseHeaderModifier"))?;
                    out.headers.get_or_insert_with(Default::default).response = Some(header_changes(modifier));
                }
                "RequestRedirect" if http => {
                    let redirect = filter.request_redirect.as_ref().ok_or_else(|| missing("requestRedirect"))?;
                    let field = format!("{field}.requestRedirect");
                    out.redirect = Some((request_redirect(redirect, &field)?, field));
                }
                "URLRewrite" if http => {
                    let rewrite = filter.url_rewrite.as_ref().ok_or_else(|| missing("urlRewrite"))?;
                    out.rewrite = Some(url_rewrite(rewrite, &format!("{field}.urlRewrite"))?);
                }
                "RequestMirror" => {
                    return Err(format!("{field}.type: RequestMirror is not supported by Strait (no mirroring)"))
                }
                other => return Err(format!("{field}.type: {other} is not supported by Strait")),
            }
            let stray = [
                ("requestHeaderModifier", filter.request_header_modifier.is_some(), "RequestHeaderModifier"),
                ("responseHeaderModifier", filter.response_header_modifier.is_some(), "ResponseHeaderModifier"),
                ("requestRedirect", filter.request_redirect.is_some(), "RequestRedirect"),
                ("urlRewrite", filter.url_rewrite.is_some(), "URLRewrite"),
                ("requestMirror", filter.request_mirror.is_some(), "RequestMirror"),
                ("extensionRef", filter.extension_ref.is_some(), "ExtensionRef"),
                ("cors", filter.cors.is_some(), "CORS"),
            ];
            if let Some((name, _, _)) = stray.iter().find(|(_, set, type_)| *set && *type_ != filter.type_) {
                return Err(format!("{field}.{name}: does not belong to a filter of type {}", filter.type_));
            }
        }
        if out.redirect.is_some() && out.rewrite.is_some() {
            return Err(format!("{rule_field}.filters: RequestRedirect and URLRewrite cannot be used together"));
        }
        Ok(out)
    }
}

fn header_changes(modifier: &HeaderModifier) -> HeaderChanges {
    let pairs = |list: &[spec::HeaderValue]| {
        list.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.clone())).collect::<BTreeMap<_, _>>()
    };
    HeaderChanges { set: pairs(&modifier.set), add: pairs(&modifier.add), remove: modifier.remove.clone() }
}

fn request_redirect(redirect: &spec::RequestRedirect, field: &str) -> Result<Redirect, String> {
    if redirect.scheme.as_deref().is_some_and(|s| s != "http") {
        return Err(format!("{field}.scheme: only http (the scheme of mesh traffic) is supported"));
    }
    let authority = match (&redirect.hostname, redirect.port) {
        (Some(host), Some(port)) => Some(format!("{host}:{port}")),
        (Some(_), None) => {
            return Err(format!(
                "{field}.port: is required with hostname (Strait does not derive the port of the Service the request came to)"
            ))
        }
        (None, Some(_)) => return Err(format!("{field}.port: is supported only together with hostname")),
        (None, None) => None,
    };
    let uri = match &redirect.path {
        None => None,
        Some(path) => match (path.type_.as_str(), &path.replace_full_path) {
            ("ReplaceFullPath", Some(full)) => Some(full.clone()),
            ("ReplaceFullPath", None) => return Err(format!("{field}.path.replaceFullPath: is required")),
            (other, _) => {
                return Err(format!("{field}.path.type: {other} is not supported for redirects (ReplaceFullPath)"))
            }
        },
    };
    let code = match redirect.status_code {
        None => 302,
        Some(code @ (301 | 302)) => code,
        Some(code) => return Err(format!("{field}.statusCode: {code} is not 301 or 302")),
    };
    Ok(Redirect { uri, authority, redirect_code: Some(code) })
}

fn url_rewrite(rewrite: &spec::UrlRewrite, field: &str) -> Result<RewriteFilter, String> {
    let authority = rewrite.hostname.clone();
    match &rewrite.path {
        None => Ok(RewriteFilter::Rewrite(Rewrite { authority, ..Default::default() })),
        Some(path) => match path.type_.as_str() {
            "ReplaceFullPath" => {
                let full = path
                    .replace_full_path
                    .clone()
                    .ok_or_else(|| format!("{field}.path.replaceFullPath: is required"))?;
                Ok(RewriteFilter::Rewrite(Rewrite { full_path: Some(full), authority, ..Default::default() }))
            }
            "ReplacePrefixMatch" => {
                let to = path
                    .replace_prefix_match
                    .clone()
                    .ok_or_else(|| format!("{field}.path.replacePrefixMatch: is required"))?;
                Ok(RewriteFilter::ReplacePrefix { authority, to, field: format!("{field}.path") })
            }
            other => Err(format!("{field}.path.type: {other} is not supported (ReplaceFullPath, ReplacePrefixMatch)")),
        },
    }
}
