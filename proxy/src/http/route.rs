//! Route matching: the `TrafficRoute`s that apply to a service, compiled once per configuration into a
//! [`RouteTable`] (regexes compiled, durations parsed, header names checked), so the data path only compares.
//!
//! Semantics as Istio's VirtualService: rules are tried in order and the first match wins; a rule with no
//! `match` matches everything; a rule matches if ANY of its matches does, and a match holds if EVERY field it
//! sets holds. Regexes must match the whole value (RE2/Envoy semantics).

use std::borrow::Cow;
use std::cell::OnceCell;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use rand::Rng;
use regex::Regex;
use strait_api::{self as api, parse_duration, Named, TrafficRouteSpec};

use super::retry::RetryPolicy;

/// The DNS suffix of in-cluster service names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A Kubernetes service, by name and namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
}

impl ServiceRef {
    pub fn new(name: impl Into<String>, namespace: impl Into<String>) -> Self {
        ServiceRef { name: name.into(), namespace: namespace.into() }
    }

    /// Reads a host as users write it: `reviews` (in `default_namespace`), `reviews.shop`, `reviews.shop.svc`
    /// or `reviews.shop.svc.cluster.local`. Anything else is not a service of this cluster.
    pub fn parse(host: &str, default_namespace: &str) -> Option<ServiceRef> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let (name, namespace) = match labels.as_slice() {
            [name] => (*name, default_namespace),
            [name, namespace] | [name, namespace, "svc"] => (*name, *namespace),
            [name, namespace, "svc", domain @ ..] if domain.join(".") == CLUSTER_DOMAIN => (*name, *namespace),
            _ => return None,
        };
        (!name.is_empty() && !namespace.is_empty()).then(|| ServiceRef::new(name, namespace))
    }
}

/// Whether `route` lists `service` among its hosts (short names resolve in the route's namespace).
pub fn applies_to(route: &Named<TrafficRouteSpec>, service: &ServiceRef) -> bool {
    route.spec.hosts.iter().any(|host| ServiceRef::parse(host, &route.namespace).as_ref() == Some(service))
}

/// A problem found while compiling; `skipped` says whether the rule was left out (else it is a warning).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("trafficRoute {route} http[{rule}]: {message}{}", if *.skipped { " (rule skipped)" } else { "" })]
pub struct CompileError {
    /// `namespace/name` of the TrafficRoute.
    pub route: String,
    pub rule: usize,
    pub message: String,
    pub skipped: bool,
}

/// The compiled rules of every TrafficRoute that applies to one service, in order.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Compiles the routes of `all` that apply to `service`, in configuration order.
    pub fn for_service(all: &[Named<TrafficRouteSpec>], service: &ServiceRef) -> (RouteTable, Vec<CompileError>) {
        RouteTable::compile(all.iter().filter(|r| applies_to(r, service)))
    }

    /// Compiles the rules of `routes` in order. A rule that cannot be compiled is skipped and reported.
    pub fn compile<'a>(
        routes: impl IntoIterator<Item = &'a Named<TrafficRouteSpec>>,
    ) -> (RouteTable, Vec<CompileError>) {
        let mut table = RouteTable::default();
        let mut errors = Vec::new();
        for named in routes {
            let origin = format!("{}/{}", named.namespace, named.name);
            for (index, rule) in named.spec.http.iter().enumerate() {
                let mut warnings = Vec::new();
                match Route::compile(&origin, &named.namespace, index, rule, &mut warnings) {
                    Ok(route) => table.routes.push(route),
                    Err(message) => {
                        errors.push(CompileError { route: origin.clone(), rule: index, message, skipped: true })
                    }
                }
                errors.extend(warnings.into_iter().map(|message| CompileError {
                    route: origin.clone(),
                    rule: index,
                    message,
                    skipped: false,
                }));
            }
        }
        (table, errors)
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first rule matching the request, if any (no rule: the caller forwards to the service as is).
    pub fn route(&self, request: &Parts) -> Option<&Route> {
        let query = QueryParams::new(request.uri.query());
        self.routes.iter().find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(request, &query)))
    }

    #[cfg(test)]
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Route {
    name: String,
    matches: Vec<Match>,
    action: Action,
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    headers: HeaderOps,
    fault: Option<FaultInjection>,
}

/// What a matched rule does with the request.
#[derive(Debug)]
pub enum Action {
    Forward(Split),
    Redirect(RedirectAction),
    Respond(DirectAction),
}

impl Route {
    fn compile(
        origin: &str,
        namespace: &str,
        index: usize,
        rule: &api::HttpRoute,
        warnings: &mut Vec<String>,
    ) -> Result<Route, String> {
        let matches =
            rule.matches.iter().enumerate().map(|(i, m)| Match::compile(m).map_err(|e| format!("match[{i}].{e}")));
        let matches = matches.collect::<Result<Vec<_>, _>>()?;
        let action = match (&rule.route[..], &rule.redirect, &rule.direct_response) {
            ([_, ..], None, None) => Action::Forward(Split::compile(&rule.route, namespace)?),
            ([], Some(redirect), None) => Action::Redirect(RedirectAction::compile(redirect)?),
            ([], None, Some(direct)) => Action::Respond(DirectAction::compile(direct)?),
            _ => return Err("exactly one of route, redirect, directResponse is required".into()),
        };
        let timeout = rule.timeout.as_deref().map(parse_duration).transpose().map_err(|e| format!("timeout: {e}"))?;
        let retry = match &rule.retries {
            Some(spec) => {
                let (policy, ignored) = RetryPolicy::from_spec(spec).map_err(|e| format!("retries.{e}"))?;
                warnings
                    .extend(ignored.into_iter().map(|t| format!("retries.retryOn: `{t}` is not supported; ignored")));
                Some(policy)
            }
            None => None,
        };
        Ok(Route {
            name: rule.name.clone().unwrap_or_else(|| format!("{origin}[{index}]")),
            matches,
            action,
            // Istio: a zero timeout disables it.
            timeout: timeout.filter(|t| !t.is_zero()),
            retry,
            headers: rule.headers.as_ref().map(HeaderOps::compile).transpose()?.unwrap_or_default(),
            fault: rule.fault.as_ref().map(FaultInjection::compile).transpose()?,
        })
    }

    /// The rule's name, or `namespace/route[index]` when it has none (a metric label).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn action(&self) -> &Action {
        &self.action
    }

    /// A destination drawn by weight; `None` for redirects and direct responses.
    #[cfg(test)]
    pub fn pick_destination(&self, rng: &mut impl Rng) -> Option<&RouteDestination> {
        match &self.action {
            Action::Forward(split) => Some(split.pick(rng)),
            _ => None,
        }
    }

    /// The overall request timeout (504 when it elapses).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    pub fn retry_policy(&self) -> Option<&RetryPolicy> {
        self.retry.as_ref()
    }

    pub fn headers(&self) -> &HeaderOps {
        &self.headers
    }

    pub fn fault_decision(&self, rng: &mut impl Rng) -> FaultAction {
        self.fault.as_ref().map_or(FaultAction::None, |f| f.decide(rng))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------------------------

#[derive(Debug)]
enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    /// `present: true` = any value; `present: false` = the header or parameter must be absent.
    Present(bool),
}

impl StrMatch {
    fn compile(sm: &api::StringMatch) -> Result<StrMatch, String> {
        match (&sm.exact, &sm.prefix, &sm.regex, sm.present) {
            (Some(exact), None, None, None) => Ok(StrMatch::Exact(exact.clone())),
            (None, Some(prefix), None, None) => Ok(StrMatch::Prefix(prefix.clone())),
            (None, None, Some(pattern), None) => Regex::new(&format!("^(?:{pattern})$"))
                .map(StrMatch::Regex)
                .map_err(|e| format!("regex {pattern:?}: {}", e.to_string().lines().last().unwrap_or_default())),
            (None, None, None, Some(present)) => Ok(StrMatch::Present(present)),
            _ => Err("exactly one of exact, prefix, regex, present is required".into()),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(exact) => value == exact,
            StrMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StrMatch::Regex(regex) => regex.is_match(value),
            StrMatch::Present(present) => *present,
        }
    }

    /// For headers and query parameters, which may be absent or repeated: any value may match.
    fn matches_any<'v>(&self, mut values: impl Iterator<Item = &'v str>) -> bool {
        match self {
            StrMatch::Present(present) => values.next().is_some() == *present,
            _ => values.any(|v| self.matches(v)),
        }
    }
}

#[derive(Debug)]
struct Match {
    path: Option<StrMatch>,
    method: Option<StrMatch>,
    headers: Vec<(HeaderName, StrMatch)>,
    query: Vec<(String, StrMatch)>,
}

impl Match {
    fn compile(m: &api::HttpMatch) -> Result<Match, String> {
        let path = m.uri.as_ref().map(StrMatch::compile).transpose().map_err(|e| format!("uri: {e}"))?;
        let method = m.method.as_ref().map(StrMatch::compile).transpose().map_err(|e| format!("method: {e}"))?;
        let mut headers = Vec::with_capacity(m.headers.len());
        for (name, sm) in &m.headers {
            let header =
                HeaderName::try_from(name.as_str()).map_err(|_| format!("headers: {name:?} is not a header name"))?;
            headers.push((header, StrMatch::compile(sm).map_err(|e| format!("headers.{name}: {e}"))?));
        }
        let mut query = Vec::with_capacity(m.query_params.len());
        for (name, sm) in &m.query_params {
            query.push((name.clone(), StrMatch::compile(sm).map_err(|e| format!("queryParams.{name}: {e}"))?));
        }
        Ok(Match { path, method, headers, query })
    }

    fn matches(&self, request: &Parts, query: &QueryParams) -> bool {
        self.path.as_ref().is_none_or(|m| m.matches(request.uri.path()))
            && self.method.as_ref().is_none_or(|m| m.matches(request.method.as_str()))
            && self.headers.iter().all(|(name, m)| {
                // Values that are not UTF-8 cannot match a string; they still count as present.
                m.matches_any(
                    request
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or("\u{fffd}")),
                )
            })
            && self.query.iter().all(|(name, m)| m.matches_any(query.values(name)))
    }
}

/// A request's query string, split and decoded at most once per request, and only if a rule looks at it.
struct QueryParams<'a> {
    raw: Option<&'a str>,
    decoded: OnceCell<Vec<(Cow<'a, str>, Cow<'a, str>)>>,
}

impl<'a> QueryParams<'a> {
    fn new(raw: Option<&'a str>) -> Self {
        QueryParams { raw, decoded: OnceCell::new() }
    }

    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        let pairs = self.decoded.get_or_init(|| {
            let pairs = self.raw.into_iter().flat_map(|q| q.split('&')).filter(|pair| !pair.is_empty());
            pairs.map(|pair| pair.split_once('=').unwrap_or((pair, ""))).map(|(k, v)| (decode(k), decode(v))).collect()
        });
        pairs.iter().filter(move |(key, _)| key == name).map(|(_, value)| value.as_ref())
    }
}

/// Form decoding of one query component (`+` is a space, `%XX` a byte); invalid escapes stay as written.
fn decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16)).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

// ---------------------------------------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------------------------------------

/// A relative weight; destinations share traffic in proportion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Weight(pub u32);

/// Where a forwarded request goes: a service (and optionally a subset and port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDestination {
    /// The host as written.
    pub host: String,
    /// The host resolved against the route's namespace; `None` if it names no service of this cluster.
    pub service: Option<ServiceRef>,
    pub subset: Option<String>,
    pub port: Option<u16>,
    pub weight: Weight,
}

/// The weighted destinations of a forwarding rule; never empty, total weight never zero.
#[derive(Debug)]
pub struct Split {
    destinations: Vec<RouteDestination>,
    total: u64,
}

impl Split {
    fn compile(route: &[api::RouteDestination], namespace: &str) -> Result<Split, String> {
        // No weights at all: equal shares. Some weights: an unweighted destination gets none (as Istio).
        let all_unweighted = route.iter().all(|d| d.weight.is_none());
        let destinations: Vec<RouteDestination> = route
            .iter()
            .map(|d| RouteDestination {
                host: d.destination.host.clone(),
                service: ServiceRef::parse(&d.destination.host, namespace),
                subset: d.destination.subset.clone(),
                port: d.destination.port,
                weight: Weight(if all_unweighted { 1 } else { d.weight.unwrap_or(0) }),
            })
            .collect();
        let total = destinations.iter().map(|d| u64::from(d.weight.0)).sum();
        if total == 0 {
            return Err("route: all weights are zero".into());
        }
        Ok(Split { destinations, total })
    }

    #[cfg(test)]
    pub fn destinations(&self) -> &[RouteDestination] {
        &self.destinations
    }

    pub fn pick(&self, rng: &mut impl Rng) -> &RouteDestination {
        let mut draw = rng.random_range(0..self.total);
        for destination in &self.destinations {
            let weight = u64::from(destination.weight.0);
            if draw < weight {
                return destination;
            }
            draw -= weight;
        }
        // Unreachable while total is the sum of the weights; the last one is a safe answer regardless.
        &self.destinations[self.destinations.len() - 1]
    }
}

// ---------------------------------------------------------------------------------------------------------
// Header operations
// ---------------------------------------------------------------------------------------------------------

/// Header changes for requests and responses on a route.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    pub request: HeaderEdit,
    pub response: HeaderEdit,
}

impl HeaderOps {
    fn compile(ops: &api::HeaderOperations) -> Result<HeaderOps, String> {
        let edit = |changes: &Option<api::HeaderChanges>, side: &str| {
            changes.as_ref().map(HeaderEdit::compile).transpose().map_err(|e| format!("headers.{side}.{e}"))
        };
        Ok(HeaderOps {
            request: edit(&ops.request, "request")?.unwrap_or_default(),
            response: edit(&ops.response, "response")?.unwrap_or_default(),
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct HeaderEdit {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl HeaderEdit {
    fn compile(changes: &api::HeaderChanges) -> Result<HeaderEdit, String> {
        let pair = |(name, value): (&String, &String)| -> Result<(HeaderName, HeaderValue), String> {
            let header = HeaderName::try_from(name.as_str()).map_err(|_| format!("{name:?} is not a header name"))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| format!("{name}: {value:?} is not a header value"))?;
            Ok((header, value))
        };
        Ok(HeaderEdit {
            remove: changes
                .remove
                .iter()
                .map(|n| HeaderName::try_from(n.as_str()).map_err(|_| format!("remove: {n:?} is not a header name")))
                .collect::<Result<_, _>>()?,
            set: changes.set.iter().map(pair).collect::<Result<_, _>>().map_err(|e| format!("set: {e}"))?,
            add: changes.add.iter().map(pair).collect::<Result<_, _>>().map_err(|e| format!("add: {e}"))?,
        })
    }

    /// Removes, then sets (replacing every value), then adds (appending): Envoy's order.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------------------------

/// A percentage in 0..=100 (out-of-range values are clamped when compiled).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Percent(f64);

impl Percent {
    pub fn new(value: f64) -> Percent {
        Percent(if value.is_nan() { 0.0 } else { value.clamp(0.0, 100.0) })
    }

    fn draw(self, rng: &mut impl Rng) -> bool {
        rng.random::<f64>() * 100.0 < self.0
    }
}

#[derive(Clone, Debug, PartialEq)]
struct FaultInjection {
    delay: Option<(Duration, Percent)>,
    abort: Option<(StatusCode, Percent)>,
}

/// What fault, if any, to inject into one request. A delay is served before forwarding (or aborting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    None,
    Delay(Duration),
    Abort(StatusCode),
    DelayThenAbort(Duration, StatusCode),
}

impl FaultInjection {
    fn compile(fault: &api::Fault) -> Result<FaultInjection, String> {
        let delay = match &fault.delay {
            Some(d) => Some((
                parse_duration(&d.fixed_delay).map_err(|e| format!("fault.delay: {e}"))?,
                Percent::new(d.percentage),
            )),
            None => None,
        };
        let abort = match &fault.abort {
            Some(a) => {
                let status = StatusCode::from_u16(a.http_status)
                    .map_err(|_| format!("fault.abort: {} is not a status", a.http_status))?;
                Some((status, Percent::new(a.percentage)))
            }
            None => None,
        };
        Ok(FaultInjection { delay, abort })
    }

    fn decide(&self, rng: &mut impl Rng) -> FaultAction {
        let delay = self.delay.filter(|(_, p)| p.draw(rng)).map(|(d, _)| d);
        let abort = self.abort.filter(|(_, p)| p.draw(rng)).map(|(s, _)| s);
        match (delay, abort) {
            (None, None) => FaultAction::None,
            (Some(d), None) => FaultAction::Delay(d),
            (None, Some(s)) => FaultAction::Abort(s),
            (Some(d), Some(s)) => FaultAction::DelayThenAbort(d, s),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Redirects and direct responses
// ---------------------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct RedirectAction {
    /// Replaces the path (and the query, if it carries one).
    path: Option<String>,
    authority: Option<String>,
    status: StatusCode,
}

impl RedirectAction {
    fn compile(redirect: &api::Redirect) -> Result<RedirectAction, String> {
        let status = match redirect.redirect_code {
            None => StatusCode::MOVED_PERMANENTLY,
            Some(code @ (301 | 302 | 303 | 307 | 308)) => StatusCode::from_u16(code).map_err(|e| e.to_string())?,
            Some(code) => return Err(format!("redirect.redirectCode: {code} is not a redirect status")),
        };
        if let Some(uri) = &redirect.uri {
            if !uri.starts_with('/') || HeaderValue::try_from(uri.as_str()).is_err() {
                return Err(format!("redirect.uri: {uri:?} is not an absolute path"));
            }
        }
        if let Some(authority) = &redirect.authority {
            if authority.parse::<http::uri::Authority>().is_err() {
                return Err(format!("redirect.authority: {authority:?} is not a host[:port]"));
            }
        }
        Ok(RedirectAction { path: redirect.uri.clone(), authority: redirect.authority.clone(), status })
    }

    /// The Location for `request`: its scheme and authority unless replaced, the new path, and the original
    /// query unless the new path carries one. Relative (path only) if the request named no authority.
    pub fn location(&self, request: &Parts) -> Option<HeaderValue> {
        let authority = self
            .authority
            .as_deref()
            .or_else(|| request.uri.authority().map(|a| a.as_str()))
            .or_else(|| request.headers.get(HOST).and_then(|h| h.to_str().ok()));
        let path = self.path.as_deref().unwrap_or(request.uri.path());
        let query = match request.uri.query() {
            Some(q) if !path.contains('?') => format!("?{q}"),
            _ => String::new(),
        };
        let location = match authority {
            Some(authority) => format!("{}://{authority}{path}{query}", request.uri.scheme_str().unwrap_or("http")),
            None => format!("{path}{query}"),
        };
        HeaderValue::try_from(location).ok()
    }

    pub fn response(&self, request: &Parts) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        match self.location(request) {
            Some(location) => {
                *response.status_mut() = self.status;
                response.headers_mut().insert(LOCATION, location);
            }
            None => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
        }
        response
    }
}

#[derive(Clone, Debug)]
pub struct DirectAction {
    status: StatusCode,
    body: Bytes,
}

impl DirectAction {
    fn compile(direct: &api::DirectResponse) -> Result<DirectAction, String> {
        let status = StatusCode::from_u16(direct.status)
            .map_err(|_| format!("directResponse.status: {} is not a status", direct.status))?;
        Ok(DirectAction { status, body: direct.body.clone().map(Bytes::from).unwrap_or_default() })
    }

    pub fn response(&self) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(self.body.clone()));
        *response.status_mut() = self.status;
        if !self.body.is_empty() {
            response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn named(namespace: &str, name: &str, yaml: &str) -> Named<TrafficRouteSpec> {
        let spec = serde_yaml::from_str(yaml).expect("spec");
        Named { name: name.into(), namespace: namespace.into(), spec }
    }

    fn table(yaml: &str) -> RouteTable {
        let (table, errors) = RouteTable::compile([&named("shop", "r", yaml)]);
        assert!(errors.is_empty(), "{errors:?}");
        table
    }

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    /// The name of the rule `request` selects, or "-" for none.
    fn pick<'t>(table: &'t RouteTable, method: &str, uri: &str, headers: &[(&str, &str)]) -> &'t str {
        table.route(&parts(method, uri, headers)).map_or("-", |r| r.name())
    }

    const FORWARD: &str = "route: [{destination: {host: reviews}}]";

    #[test]
    fn uri_matches_exact_prefix_and_whole_regex_on_the_path() {
        let t = table(&format!(
            r#"
hosts: [reviews]
http:
- {{name: exact, match: [{{uri: {{exact: /a}}}}], {FORWARD}}}
- {{name: prefix, match: [{{uri: {{prefix: /api/}}}}], {FORWARD}}}
- {{name: regex, match: [{{uri: {{regex: "/v[0-9]+"}}}}], {FORWARD}}}
"#
        ));
        assert_eq!(pick(&t, "GET", "/a", &[]), "exact");
        assert_eq!(pick(&t, "GET", "/a?x=1", &[]), "exact", "the query is not part of the path");
        assert_eq!(pick(&t, "GET", "/ab", &[]), "-");
        assert_eq!(pick(&t, "GET", "/api/x", &[]), "prefix");
        assert_eq!(pick(&t, "GET", "/api", &[]), "-");
        assert_eq!(pick(&t, "GET", "/v12", &[]), "regex");
        assert_eq!(pick(&t, "GET", "/v12/x", &[]), "-", "a regex must match the whole path");
    }

    #[test]
    fn method_and_header_matches() {
        let t = table(&format!(
            r#"
hosts: [reviews]
http:
- {{name: delete, match: [{{method: {{exact: DELETE}}}}], {FORWARD}}}
- {{name: beta, match: [{{headers: {{x-group: {{exact: beta}}}}}}], {FORWARD}}}
- {{name: bearer, match: [{{headers: {{authorization: {{prefix: "Bearer "}}}}}}], {FORWARD}}}
- {{name: version, match: [{{headers: {{x-version: {{regex: "v[12]"}}}}}}], {FORWARD}}}
- {{name: debug, match: [{{headers: {{x-debug: {{present: true}}}}}}], {FORWARD}}}
- {{name: anonymous, match: [{{headers: {{cookie: {{present: false}}}}}}], {FORWARD}}}
"#
        ));
        let cookie = ("cookie", "a=b");
        assert_eq!(pick(&t, "DELETE", "/", &[]), "delete");
        assert_eq!(pick(&t, "GET", "/", &[("x-group", "beta"), cookie]), "beta");
        assert_eq!(pick(&t, "GET", "/", &[("X-Group", "beta"), cookie]), "beta", "header names are case-insensitive");
        assert_eq!(pick(&t, "GET", "/", &[("x-group", "beta2"), cookie]), "-");
        assert_eq!(pick(&t, "GET", "/", &[("x-group", "alpha"), ("x-group", "beta"), cookie]), "beta", "any value");
        assert_eq!(pick(&t, "GET", "/", &[("authorization", "Bearer x"), cookie]), "bearer");
        assert_eq!(pick(&t, "GET", "/", &[("x-version", "v2"), cookie]), "version");
        assert_eq!(pick(&t, "GET", "/", &[("x-version", "v22"), cookie]), "-");
        assert_eq!(pick(&t, "GET", "/", &[("x-debug", ""), cookie]), "debug");
        assert_eq!(pick(&t, "GET", "/", &[]), "anonymous");
        assert_eq!(pick(&t, "GET", "/", &[cookie]), "-");
    }

    #[test]
    fn query_parameter_matches_decode_the_query() {
        let t = table(&format!(
            r#"
hosts: [reviews]
http:
- {{name: exact, match: [{{queryParams: {{user: {{exact: "jo smith"}}}}}}], {FORWARD}}}
- {{name: prefix, match: [{{queryParams: {{q: {{prefix: "a/"}}}}}}], {FORWARD}}}
- {{name: regex, match: [{{queryParams: {{page: {{regex: "[0-9]+"}}}}}}], {FORWARD}}}
- {{name: present, match: [{{queryParams: {{debug: {{present: true}}}}}}], {FORWARD}}}
"#
        ));
        assert_eq!(pick(&t, "GET", "/?user=jo+smith", &[]), "exact");
        assert_eq!(pick(&t, "GET", "/?x=1&user=jo%20smith", &[]), "exact");
        assert_eq!(pick(&t, "GET", "/?user=jo", &[]), "-");
        assert_eq!(pick(&t, "GET", "/?q=a%2Fb", &[]), "prefix");
        assert_eq!(pick(&t, "GET", "/?page=12", &[]), "regex");
        assert_eq!(pick(&t, "GET", "/?page=12a", &[]), "-");
        assert_eq!(pick(&t, "GET", "/?debug", &[]), "present");
        assert_eq!(pick(&t, "GET", "/?debugger=1", &[]), "-");
        assert_eq!(pick(&t, "GET", "/?user=%zz", &[]), "-", "a bad escape is kept, not a panic");
    }

    #[test]
    fn fields_of_a_match_are_anded_matches_are_ored_and_the_first_rule_wins() {
        let t = table(&format!(
            r#"
hosts: [reviews]
http:
- name: both
  match: [{{uri: {{prefix: /api}}, method: {{exact: POST}}}}, {{headers: {{x-admin: {{exact: "1"}}}}}}]
  {FORWARD}
- {{name: api, match: [{{uri: {{prefix: /api}}}}], {FORWARD}}}
- {{name: catch-all, {FORWARD}}}
- {{name: never, {FORWARD}}}
"#
        ));
        assert_eq!(pick(&t, "POST", "/api/x", &[]), "both");
        assert_eq!(pick(&t, "GET", "/api/x", &[]), "api");
        assert_eq!(pick(&t, "GET", "/other", &[("x-admin", "1")]), "both");
        assert_eq!(pick(&t, "GET", "/other", &[]), "catch-all");
    }

    #[test]
    fn a_rule_that_does_not_compile_is_skipped_and_reported() {
        let route = named(
            "shop",
            "r",
            &format!(
                r#"
hosts: [reviews]
http:
- {{name: bad, match: [{{uri: {{regex: "/api/(v1"}}}}], {FORWARD}}}
- {{name: bad-timeout, timeout: soon, {FORWARD}}}
- {{name: typo, retries: {{attempts: 2, retryOn: "5xx,bogus"}}, {FORWARD}}}
"#
            ),
        );
        let (t, errors) = RouteTable::compile([&route]);
        assert_eq!(t.routes().len(), 1);
        assert_eq!(pick(&t, "GET", "/api/v1", &[]), "typo");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].skipped && errors[0].message.starts_with("match[0].uri: regex"), "{}", errors[0]);
        assert!(errors[1].skipped && errors[1].to_string().contains("http[1]: timeout"), "{}", errors[1]);
        assert!(!errors[2].skipped && errors[2].message.contains("bogus"), "{}", errors[2]);
    }

    #[test]
    fn weighted_destinations_share_traffic_in_proportion() {
        let t = table(
            r#"
hosts: [reviews]
http:
- route:
  - {destination: {host: reviews, subset: v1}, weight: 90}
  - {destination: {host: reviews.shop.svc.cluster.local, subset: v2, port: 9080}, weight: 10}
"#,
        );
        let route = t.route(&parts("GET", "/", &[])).expect("route");
        let mut rng = StdRng::seed_from_u64(1);
        let draws = 10_000;
        let v1 = (0..draws)
            .filter(|_| route.pick_destination(&mut rng).and_then(|d| d.subset.as_deref()) == Some("v1"))
            .count();
        let share = v1 as f64 / f64::from(draws);
        assert!((0.88..=0.92).contains(&share), "v1 share {share}");
        let Action::Forward(split) = route.action() else { panic!("forward") };
        let v2 = &split.destinations()[1];
        assert_eq!(v2.service, Some(ServiceRef::new("reviews", "shop")));
        assert_eq!((v2.port, v2.weight), (Some(9080), Weight(10)));
    }

    #[test]
    fn absent_weights_share_equally_and_partial_weights_exclude_the_unweighted() {
        let t = table(
            r#"
hosts: [reviews]
http:
- {name: equal, match: [{uri: {exact: /e}}], route: [{destination: {host: a}}, {destination: {host: b}}]}
- {name: partial, route: [{destination: {host: a}}, {destination: {host: b}, weight: 5}]}
"#,
        );
        let mut rng = StdRng::seed_from_u64(2);
        let equal = t.route(&parts("GET", "/e", &[])).expect("route");
        let a = (0..10_000).filter(|_| equal.pick_destination(&mut rng).is_some_and(|d| d.host == "a")).count();
        assert!((4800..=5200).contains(&a), "{a}");
        let partial = t.route(&parts("GET", "/p", &[])).expect("route");
        assert!((0..1000).all(|_| partial.pick_destination(&mut rng).is_some_and(|d| d.host == "b")));
    }

    #[test]
    fn hosts_resolve_short_namespaced_and_full_names() {
        let reviews = ServiceRef::new("reviews", "shop");
        for host in [
            "reviews",
            "reviews.shop",
            "reviews.shop.svc",
            "reviews.shop.svc.cluster.local",
            "Reviews.shop.svc.cluster.local.",
        ] {
            assert!(applies_to(&named("shop", "r", &format!("hosts: [{host}]")), &reviews), "{host}");
        }
        assert!(!applies_to(&named("other", "r", "hosts: [reviews]"), &reviews), "short names are namespace-local");
        assert!(applies_to(&named("other", "r", "hosts: [reviews.shop]"), &reviews));
        assert!(!applies_to(&named("shop", "r", "hosts: [reviews.shop.svc.example.com]"), &reviews));
        assert!(!applies_to(&named("shop", "r", "hosts: [ratings, reviews.other]"), &reviews));
        assert_eq!(ServiceRef::parse("example.com.evil.org", "shop"), None);

        let all = [
            named("shop", "a", "hosts: [ratings]"),
            named("shop", "b", &format!("hosts: [reviews]\nhttp: [{{name: b, {FORWARD}}}]")),
        ];
        let (t, _) = RouteTable::for_service(&all, &reviews);
        assert_eq!(pick(&t, "GET", "/", &[]), "b");
    }

    #[test]
    fn header_operations_remove_then_set_then_add() {
        let t = table(&format!(
            r#"
hosts: [reviews]
http:
- {FORWARD}
  headers:
    request: {{remove: [x-secret], set: {{x-env: prod}}, add: {{x-hop: proxy}}}}
    response: {{set: {{cache-control: no-store}}}}
"#
        ));
        let route = t.route(&parts("GET", "/", &[])).expect("route");
        let mut headers = HeaderMap::new();
        headers.insert("x-secret", HeaderValue::from_static("s"));
        headers.append("x-env", HeaderValue::from_static("dev"));
        headers.append("x-env", HeaderValue::from_static("test"));
        headers.insert("x-hop", HeaderValue::from_static("client"));
        route.headers().request.apply(&mut headers);
        assert!(!headers.contains_key("x-secret"));
        assert_eq!(headers.get_all("x-env").iter().collect::<Vec<_>>(), ["prod"]);
        assert_eq!(headers.get_all("x-hop").iter().collect::<Vec<_>>(), ["client", "proxy"]);
        let mut response = HeaderMap::new();
        route.headers().response.apply(&mut response);
        assert_eq!(response.get("cache-control").map(|v| v.as_bytes()), Some(&b"no-store"[..]));
    }

    #[test]
    fn faults_follow_their_percentages() {
        let t = table(&format!(
            r#"
hosts: [reviews]
http:
- {{name: abort, match: [{{uri: {{exact: /abort}}}}], fault: {{abort: {{httpStatus: 503, percentage: 100}}}}, {FORWARD}}}
- {{name: both, match: [{{uri: {{exact: /both}}}}], fault: {{delay: {{fixedDelay: 2s, percentage: 100}}, abort: {{httpStatus: 500, percentage: 100}}}}, {FORWARD}}}
- {{name: half, match: [{{uri: {{exact: /half}}}}], fault: {{delay: {{fixedDelay: 50ms, percentage: 50}}}}, {FORWARD}}}
- {{name: none, {FORWARD}}}
"#
        ));
        let mut rng = StdRng::seed_from_u64(3);
        let route = |path| t.route(&parts("GET", path, &[])).expect("route");
        assert_eq!(route("/abort").fault_decision(&mut rng), FaultAction::Abort(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(
            route("/both").fault_decision(&mut rng),
            FaultAction::DelayThenAbort(Duration::from_secs(2), StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(route("/none").fault_decision(&mut rng), FaultAction::None);
        let half = route("/half");
        let delayed = (0..10_000)
            .filter(|_| half.fault_decision(&mut rng) == FaultAction::Delay(Duration::from_millis(50)))
            .count();
        assert!((4800..=5200).contains(&delayed), "{delayed}");
    }

    #[test]
    fn redirects_and_direct_responses() {
        let t = table(
            r#"
hosts: [reviews]
http:
- {name: moved, match: [{uri: {prefix: /old}}], redirect: {uri: /new}}
- {name: elsewhere, match: [{uri: {prefix: /away}}], redirect: {authority: "other.shop:8080", redirectCode: 307}}
- {name: gone, match: [{uri: {prefix: /gone}}], directResponse: {status: 410, body: "gone"}}
- {name: timed, timeout: 250ms, route: [{destination: {host: reviews}}]}
"#,
        );
        let request = parts("GET", "/old/page?x=1", &[("host", "reviews.shop:9080")]);
        let Some(Action::Redirect(moved)) = t.route(&request).map(Route::action) else { panic!("redirect") };
        let response = moved.response(&request);
        assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(response.headers()[LOCATION], "http://reviews.shop:9080/new?x=1");

        let request = parts("GET", "http://reviews/away/x", &[]);
        let Some(Action::Redirect(away)) = t.route(&request).map(Route::action) else { panic!("redirect") };
        let response = away.response(&request);
        assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(response.headers()[LOCATION], "http://other.shop:8080/away/x");
        assert!(t.route(&request).is_some_and(|r| r.pick_destination(&mut rand::rng()).is_none()));

        let request = parts("GET", "/gone", &[]);
        let Some(Action::Respond(gone)) = t.route(&request).map(Route::action) else { panic!("direct") };
        let response = gone.response();
        assert_eq!(response.status(), StatusCode::GONE);
        assert_eq!(response.headers()[CONTENT_TYPE], "text/plain");

        let timed = t.route(&parts("GET", "/x", &[])).expect("route");
        assert_eq!(timed.timeout(), Some(Duration::from_millis(250)));
        assert_eq!(timed.name(), "timed");
    }

    #[test]
    fn a_rule_without_a_name_is_named_after_its_route_and_index() {
        let t = table(&format!("hosts: [reviews]\nhttp: [{{{FORWARD}}}]"));
        assert_eq!(t.routes()[0].name(), "shop/r[0]");
    }
}
