//! HTTP at the destination: each request that came through the tunnel (or from a pod on this node) is
//! authorized with its method and path, gets the caller's verified identity in `x-forwarded-client-cert`, and is
//! forwarded to the pod. Each request is normalized first (`normalize`), whatever the calling proxy did, so the
//! decision is taken on exactly what the pod receives. A denied request is answered 403, not a reset; the
//! answer does not name the policy (the access line and `strait_policy_denials_total` do).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use opentelemetry::trace::SpanKind;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use super::observe::{Access, CountedRequest, Observed};
use super::{boxed, grpc_status, protocol_label, text, BoxBody, Version};
use crate::context::ProxyContext;
use crate::policy::Caller;
use crate::policy::{Decision, HttpAttributes, Request as AuthzRequest};
use crate::state::WorkloadInfo;
use crate::telemetry::flags::ResponseFlag;
use crate::telemetry::labels::ConnectionLabels;
use crate::telemetry::logging::access_enabled;
use crate::telemetry::series::RequestSeries;

use super::normalize::XFCC;
use super::xfcc;

struct Destination {
    ctx: Arc<ProxyContext>,
    caller: Caller,
    workload: Arc<WorkloadInfo>,
    target: SocketAddr,
    /// The connection's labels and metric series.
    series: Arc<RequestSeries>,
    // Per connection, not per request: the caller's principal (for policy), the XFCC value its handshake
    // proved, and the pod's authority for the upstream URI.
    principal: Option<String>,
    xfcc: Option<HeaderValue>,
    authority: Option<Authority>,
}

/// Serves HTTP/1.1 or HTTP/2 (detected from the first bytes) on `io` until the peer closes it.
pub async fn serve<S>(
    ctx: &Arc<ProxyContext>,
    io: S,
    caller: Caller,
    workload: Arc<WorkloadInfo>,
    target: SocketAddr,
    labels: ConnectionLabels,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let principal = caller.identity.as_ref().map(|i| i.principal());
    let xfcc = caller.identity.as_ref().and_then(|identity| xfcc::encode(workload.identity.as_ref(), identity));
    let authority = super::target::authority_of(target);
    let series = Arc::new(RequestSeries::new(ctx.metrics.clone(), labels));
    let destination =
        Arc::new(Destination { ctx: ctx.clone(), caller, workload, target, series, principal, xfcc, authority });
    let handler = move |request| {
        let destination = destination.clone();
        async move { handle(&destination, request).await }
    };
    super::serve_connection(io, handler, "inbound", ctx.drain.watch()).await;
}

async fn handle(d: &Destination, request: Request<Incoming>) -> Response<BoxBody> {
    let start = Instant::now();
    let protocol = protocol_label(&request);
    let (mut request, request_bytes) = {
        let (parts, body) = request.into_parts();
        let (body, counter) = CountedRequest::new(body);
        (Request::from_parts(parts, body), counter)
    };
    let hop = super::trace::add_hop(request.headers_mut(), "strait destination", SpanKind::Server);
    let (trace_id, mut span) = (hop.trace_id, hop.span);
    let method = request.method().clone();
    // The calling proxy may be another version, or the caller a plaintext client: normalize again, with the
    // same choice for escaped slashes as the source (both read it from the service's TrafficRoutes).
    let state = d.ctx.state.current();
    let normalized = super::normalize::request(&mut request, state.endpoint_escaped_slashes(d.target));
    // Only the access line and a tap read it.
    let log_path =
        if access_enabled() || crate::tap::active() { request.uri().path().to_string() } else { String::new() };
    // Recorded (metrics and the access line) when the response body has been sent.
    let mut access = |response: &Response<BoxBody>, flags: ResponseFlag, detail: &str| Access {
        series: d.series.clone(),
        protocol,
        status: response.status().as_u16(),
        grpc_status: grpc_status(response.headers()),
        flags,
        route: std::borrow::Cow::Borrowed("-"),
        subset: None,
        upstream: Some(d.target),
        retries: 0,
        detail: detail.to_string(),
        method: method.clone(),
        path: log_path.clone(),
        trace_id,
        // Each return path records one response, so the span is taken once.
        span: span.take(),
        start,
        request_bytes: request_bytes.clone(),
    };
    let observed = |response: Response<BoxBody>, access: Access| response.map(|b| boxed(Observed::new(b, access)));
    if let Err(rejection) = normalized {
        let response = text(StatusCode::BAD_REQUEST, format!("{rejection}\n"));
        let access = access(&response, ResponseFlag::DownstreamProtocolError, rejection.as_str());
        return observed(response, access);
    }
    let principal = d.principal.as_deref();
    let decision = state.policies.evaluate(&AuthzRequest {
        source_principal: principal,
        source_namespace: d.caller.identity.as_ref().map(|i| i.namespace()),
        source_ip: d.caller.address,
        destination: &d.workload.workload,
        destination_port: d.target.port(),
        http: Some(HttpAttributes { method: request.method().as_str(), path: request.uri().path() }),
        l7_pending: false,
    });
    if let Decision::Deny(denial) = decision {
        d.ctx.metrics.policy_denied("destination", &denial.policy, denial.reason.as_str());
        info!(
            source = principal.unwrap_or("(plaintext)"),
            destination = %d.workload.workload.name,
            method = %request.method(),
            path = %request.uri().path(),
            policy = %denial.policy,
            "request denied by policy"
        );
        // The caller learns that it was denied, not which policy to work around.
        let response = text(StatusCode::FORBIDDEN, "RBAC: access denied\n");
        let access = access(&response, ResponseFlag::Unauthorized, &denial.policy);
        return observed(response, access);
    }

    // Whatever the caller claimed was stripped (`normalize`); what the handshake proved is set.
    if let Some(value) = &d.xfcc {
        request.headers_mut().insert(XFCC, value.clone());
    }
    let version = if request.version() == http::Version::HTTP_2 { Version::Http2 } else { Version::Http1 };
    // Authorized already; other upgrades were stripped by `normalize`.
    let upgrade = super::upgrade::wants_websocket(&request).then(|| hyper::upgrade::on(&mut request));
    if upgrade.is_none() {
        super::hop_by_hop::strip_hop_by_hop(request.headers_mut());
    }
    let uri = match super::target::uri_to(request.uri(), d.authority.as_ref()) {
        Some(uri) => uri,
        None => {
            let response = text(StatusCode::BAD_REQUEST, "request target is not valid\n");
            let access = access(&response, ResponseFlag::DownstreamProtocolError, "");
            return observed(response, access);
        }
    };
    *request.uri_mut() = uri;
    let reuse = state.endpoint_reuse(d.target);
    let client = d.ctx.http.pod_client(&d.ctx, version, reuse);
    let mut response = match super::reuse::send(&client, request.map(boxed), reuse).await {
        Ok(response) => response.map(boxed),
        Err(e) => {
            debug!(target = %d.target, error = %e, "pod did not answer");
            let response = text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error: the pod did not answer\n");
            let access = access(&response, ResponseFlag::UpstreamConnectionFailure, "");
            return observed(response, access);
        }
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        super::hop_by_hop::strip_hop_by_hop(response.headers_mut());
    } else {
        let Some(downstream) = upgrade else {
            // Only a WebSocket handshake may switch protocols (see `upgrade`).
            let response = text(StatusCode::BAD_GATEWAY, "upstream switched protocols unasked\n");
            let access = access(&response, ResponseFlag::UpstreamConnectionTermination, "");
            return observed(response, access);
        };
        super::upgrade::splice(downstream, hyper::upgrade::on(&mut response));
    }
    let access = access(&response, ResponseFlag::None, "");
    observed(response, access)
}
