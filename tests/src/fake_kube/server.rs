//! HTTP: URL -> resource and verb -> store, with answers shaped as the real API server's (objects, lists,
//! `Status` errors, chunked watch streams).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::patch::{parse_body, PatchKind};
use super::resources::{by_path, ResourceType};
use super::select::Selector;
use super::store::{Scope, StoreError};
use super::watch::{self, WatchRequest};
use super::{RequestRecord, Shared};

type Body = BoxBody<Bytes, Infallible>;

/// Watches end after this unless the client asks for less (the real server's default is 30-60 minutes).
const MAX_WATCH: Duration = Duration::from_secs(1800);

/// What a URL names.
struct Target {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    shared.record(RequestRecord {
        method: method.to_string(),
        path: path.clone(),
        query: req.uri().query().unwrap_or("").to_string(),
    });
    let Some(target) = parse_path(&path).filter(|t| !shared.is_uninstalled(t.rt.kind)) else {
        return error(&StoreError::NotFound { kind: "path", name: path });
    };
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return error(&StoreError::Invalid(format!("cannot read the body: {e}"))),
    };
    let scope = match target.subresource.as_deref() {
        None => Scope::Main,
        Some("status") => Scope::Status,
        Some(other) => return error(&StoreError::NotFound { kind: "subresource", name: other.to_string() }),
    };
    let namespace = target.namespace.clone().unwrap_or_default();
    let store = &shared.store;
    let rt = target.rt;
    let result = match (&method, target.name.as_deref()) {
        (&Method::POST, None) if rt.kind == "TokenReview" => {
            return match serde_json::from_slice::<Value>(&body) {
                Ok(review) => json_response(StatusCode::CREATED, &shared.review(review)),
                Err(e) => error(&StoreError::Invalid(e.to_string())),
            }
        }
        (_, _) if rt.create_only => {
            return error(&StoreError::Invalid(format!("{} only supports create", rt.plural)));
        }
        (&Method::GET, None) => {
            let selector = match Selector::parse(
                query.get("labelSelector").map(String::as_str),
                query.get("fieldSelector").map(String::as_str),
            ) {
                Ok(s) => s,
                Err(e) => return error(&StoreError::Invalid(e)),
            };
            if query.get("watch").is_some_and(|w| w == "1" || w == "true") {
                return start_watch(shared.clone(), rt, target.namespace, selector, &query);
            }
            let (items, rv) = store.list(rt, target.namespace.as_deref(), &selector);
            Ok(json!({
                "apiVersion": rt.api_version(),
                "kind": format!("{}List", rt.kind),
                "metadata": {"resourceVersion": rv.to_string()},
                "items": items,
            }))
        }
        (&Method::GET, Some(name)) => store.get(rt, &namespace, name),
        (&Method::POST, None) => match serde_json::from_slice(&body) {
            Ok(object) => {
                return match store.create(rt, &namespace, object, Scope::Main) {
                    Ok(created) => json_response(StatusCode::CREATED, &created),
                    Err(e) => error(&e),
                }
            }
            Err(e) => Err(StoreError::Invalid(e.to_string())),
        },
        (&Method::PUT, Some(name)) => match serde_json::from_slice(&body) {
            Ok(object) => store.update(rt, &namespace, name, object, scope),
            Err(e) => Err(StoreError::Invalid(e.to_string())),
        },
        (&Method::PATCH, Some(name)) => match PatchKind::from_content_type(&content_type) {
            Some(kind) => match parse_body(kind, &body) {
                Ok(patch) => store.patch(rt, &namespace, name, kind, &patch, scope),
                Err(e) => Err(StoreError::Invalid(e)),
            },
            None => {
                return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("unsupported patch type {content_type:?}"))
            }
        },
        (&Method::DELETE, Some(name)) => store.delete(rt, &namespace, name),
        _ => return text(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not supported on {path}")),
    };
    match result {
        Ok(object) => json_response(StatusCode::OK, &object),
        Err(e) => error(&e),
    }
}

fn start_watch(
    shared: Arc<Shared>,
    rt: &'static ResourceType,
    namespace: Option<String>,
    selector: Selector,
    query: &BTreeMap<String, String>,
) -> Response<Body> {
    let from = match query.get("resourceVersion").filter(|rv| !rv.is_empty()) {
        Some(rv) => match rv.parse() {
            Ok(rv) => Some(rv),
            Err(_) => return error(&StoreError::Invalid(format!("invalid resourceVersion {rv:?}"))),
        },
        None => None,
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(MAX_WATCH)
        .min(MAX_WATCH);
    let request = WatchRequest {
        rt,
        namespace,
        selector,
        from,
        bookmarks: query.get("allowWatchBookmarks").is_some_and(|b| b == "true" || b == "1"),
        timeout,
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(watch::run(shared, request, tx));
    let mut response = Response::new(ChannelBody(rx).boxed());
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

/// `/api/v1/...` or `/apis/<group>/<version>/...`, then `[namespaces/<ns>/]<plural>[/<name>[/<subresource>]]`.
fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let owned = |s: &&str| s.to_string();
    let (namespace, plural, name, subresource) = match rest {
        // A namespace's own subresources, not a list of `status` objects in it.
        ["namespaces", name, sub @ ("status" | "finalize")] => (None, "namespaces", Some(*name), Some(*sub)),
        ["namespaces", ns, plural, tail @ ..] => {
            (Some(ns.to_string()), *plural, tail.first().copied(), tail.get(1).copied())
        }
        [plural, tail @ ..] => (None, *plural, tail.first().copied(), tail.get(1).copied()),
        [] => return None,
    };
    if rest.len() > 5 {
        return None;
    }
    let rt = by_path(group, version, plural)?;
    Some(Target { rt, namespace, name: name.as_ref().map(owned), subresource: subresource.as_ref().map(owned) })
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

fn error(e: &StoreError) -> Response<Body> {
    json_response(StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &e.status())
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message)).boxed());
    *response.status_mut() = status;
    response
}

/// A response body fed from a channel, one chunk per message, sent as soon as it is queued.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources() {
        let t = parse_path("/api/v1/namespaces/shop/pods/p1").expect("pod");
        assert_eq!((t.rt.kind, t.namespace.as_deref(), t.name.as_deref()), ("Pod", Some("shop"), Some("p1")));
        let t = parse_path("/api/v1/namespaces/shop").expect("namespace");
        assert_eq!((t.rt.kind, t.name.as_deref()), ("Namespace", Some("shop")));
        let t = parse_path("/api/v1/namespaces/shop/status").expect("namespace status");
        assert_eq!((t.rt.kind, t.subresource.as_deref()), ("Namespace", Some("status")));
        let t = parse_path("/apis/strait.dev/v1alpha1/namespaces/shop/trafficroutes/r/status").expect("status");
        assert_eq!((t.rt.kind, t.subresource.as_deref()), ("TrafficRoute", Some("status")));
        let t = parse_path("/apis/discovery.k8s.io/v1/endpointslices").expect("all slices");
        assert_eq!((t.rt.kind, t.namespace, t.name), ("EndpointSlice", None, None));
        assert!(parse_path("/apis/nope/v1/things").is_none());
    }

    #[test]
    fn queries_are_decoded() {
        let q = parse_query("labelSelector=app%3Dx%2Ctier+in+%28a%29&watch=true");
        assert_eq!(q.get("labelSelector").map(String::as_str), Some("app=x,tier in (a)"));
        assert_eq!(q.get("watch").map(String::as_str), Some("true"));
        assert_eq!(percent_decode("100%"), "100%");
    }
}
