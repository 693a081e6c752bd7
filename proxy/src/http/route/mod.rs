//! Route matching: the `TrafficRoute`s that apply to a service, compiled once per configuration into a
//! [`RouteTable`] (regexes compiled, durations parsed, header names checked), so the data path only compares.
//!
//! Semantics as Istio's VirtualService: rules are tried in order and the first match wins; a rule with no
//! `match` matches everything; a rule matches if ANY of its matches does, and a match holds if EVERY field it
//! sets holds. Regexes must match the whole value (RE2/Envoy semantics).

use std::time::Duration;

use http::request::Parts;
use rand::Rng;
use strait_api::{self as api, parse_duration, EscapedSlashes, Named, TrafficRouteSpec};

use super::retry::RetryPolicy;

mod actions;
mod destination;
mod matching;
#[cfg(test)]
mod tests;

use actions::FaultInjection;
pub use actions::{DirectAction, FaultAction, HeaderOps, RedirectAction, RewriteAction};
pub use destination::{RouteDestination, Split, Weight};
use matching::{Match, QueryParams};

pub use strait_api::ServiceRef;

/// Whether `route` lists `service` among its hosts (short names resolve in the route's namespace). A route
/// applies only to services of its own namespace: otherwise anyone who may write a TrafficRoute in namespace B
/// could take over the traffic of every service in namespace A.
pub fn applies_to(route: &Named<TrafficRouteSpec>, service: &ServiceRef) -> bool {
    service.namespace == route.namespace
        && route.spec.hosts.iter().any(|host| ServiceRef::parse(host, &route.namespace).as_ref() == Some(service))
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
    escaped_slashes: EscapedSlashes,
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
        // `Keep` only when some route asks for it and none refuses it: the safe choice wins a disagreement.
        let mut keep = false;
        let mut reject = false;
        for named in routes {
            match named.spec.escaped_slashes {
                Some(EscapedSlashes::Keep) => keep = true,
                Some(EscapedSlashes::Reject) => reject = true,
                None => {}
            }
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
        if keep && !reject {
            table.escaped_slashes = EscapedSlashes::Keep;
        }
        (table, errors)
    }

    /// What both proxies do with `%2F` and `%5C` in a path to this table's service.
    pub fn escaped_slashes(&self) -> EscapedSlashes {
        self.escaped_slashes
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The first rule matching the request, if any (no rule: the caller forwards to the service as is).
    pub fn route(&self, request: &Parts) -> Option<&Route> {
        let query = QueryParams::new(request.uri.query());
        self.routes.iter().find(|r| r.matches.is_empty() || r.matches.iter().any(|m| m.matches(request, &query)))
    }

    /// The compiled rules, in the order they are tried.
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
    rewrite: Option<RewriteAction>,
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
        let rewrite = match (&rule.rewrite, &action) {
            (None, _) => None,
            (Some(rewrite), Action::Forward(_)) => Some(RewriteAction::compile(rewrite)?),
            (Some(_), _) => return Err("rewrite: applies only to a rule with route".into()),
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
            rewrite,
        })
    }

    /// The rule's name, or `namespace/route[index]` when it has none (a metric label).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn action(&self) -> &Action {
        &self.action
    }

    /// Whether the rule matches every request (no `match`): later rules of its table are never reached.
    pub fn matches_everything(&self) -> bool {
        self.matches.is_empty()
    }

    /// The index of the first of the rule's `match` entries that `request` satisfies (0 for a rule without
    /// any), or `None` when the rule does not match.
    pub fn matching_entry(&self, request: &Parts) -> Option<usize> {
        let query = QueryParams::new(request.uri.query());
        if self.matches.is_empty() {
            return Some(0);
        }
        self.matches.iter().position(|m| m.matches(request, &query))
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

    /// How a forwarded request is rewritten, if at all.
    pub fn rewrite(&self) -> Option<&RewriteAction> {
        self.rewrite.as_ref()
    }

    pub fn fault_decision(&self, rng: &mut impl Rng) -> FaultAction {
        self.fault.as_ref().map_or(FaultAction::None, |f| f.decide(rng))
    }
}
