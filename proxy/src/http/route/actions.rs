//! What a matched rule does besides choosing a destination: header edits, fault injection, redirects and
//! direct responses.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, LOCATION};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use rand::Rng;
use strait_api::{self as api, parse_duration};

/// Header changes for requests and responses on a route.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    pub request: HeaderEdit,
    pub response: HeaderEdit,
}

impl HeaderOps {
    pub(super) fn compile(ops: &api::HeaderOperations) -> Result<HeaderOps, String> {
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
    pub(super) fn compile(changes: &api::HeaderChanges) -> Result<HeaderEdit, String> {
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

    pub(super) fn draw(self, rng: &mut impl Rng) -> bool {
        rng.random::<f64>() * 100.0 < self.0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct FaultInjection {
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
    pub(super) fn compile(fault: &api::Fault) -> Result<FaultInjection, String> {
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

    pub(super) fn decide(&self, rng: &mut impl Rng) -> FaultAction {
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
    pub(super) fn compile(redirect: &api::Redirect) -> Result<RedirectAction, String> {
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
    pub(super) fn compile(direct: &api::DirectResponse) -> Result<DirectAction, String> {
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

// ---------------------------------------------------------------------------------------------------------
// Rewrites
// ---------------------------------------------------------------------------------------------------------

/// A forwarded request's new path and authority (`rewrite`).
#[derive(Clone, Debug)]
pub struct RewriteAction {
    path: PathRewrite,
    authority: Option<HeaderValue>,
}

#[derive(Clone, Debug)]
enum PathRewrite {
    Keep,
    Full(String),
    Prefix(api::PrefixRewrite),
}

impl RewriteAction {
    pub(super) fn compile(rewrite: &api::Rewrite) -> Result<RewriteAction, String> {
        let path = match (&rewrite.full_path, &rewrite.prefix) {
            (None, None) => PathRewrite::Keep,
            (Some(full), None) => PathRewrite::Full(full.clone()),
            (None, Some(prefix)) => PathRewrite::Prefix(prefix.clone()),
            (Some(_), Some(_)) => return Err("rewrite: at most one of fullPath and prefix".into()),
        };
        let authority = match &rewrite.authority {
            Some(a) if a.parse::<http::uri::Authority>().is_ok() => {
                Some(HeaderValue::try_from(a.as_str()).map_err(|_| format!("rewrite.authority: {a:?}"))?)
            }
            Some(a) => return Err(format!("rewrite.authority: {a:?} is not a host[:port]")),
            None => None,
        };
        Ok(RewriteAction { path, authority })
    }

    /// Rewrites `request` in place: the path (keeping the query) and the `Host` header. The proxy replaces
    /// the URI's authority with the endpoint when it sends, so `Host` carries the name for both versions.
    pub fn apply<B>(&self, request: &mut http::Request<B>) {
        let path = match &self.path {
            PathRewrite::Keep => None,
            PathRewrite::Full(full) => Some(full.clone()),
            PathRewrite::Prefix(prefix) => prefix.apply(request.uri().path()),
        };
        if let Some(path) = path {
            let path_and_query = match request.uri().query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            let mut parts = request.uri().clone().into_parts();
            if let Ok(pq) = path_and_query.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *request.uri_mut() = uri;
                }
            }
        }
        if let Some(authority) = &self.authority {
            request.headers_mut().insert(HOST, authority.clone());
        }
    }
}
