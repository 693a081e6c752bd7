//! HTTP from a local pod to a service, served by the source proxy: every request is routed (TrafficRoute),
//! split by weight over subsets, retried within a budget, bounded by timeouts and connection-pool limits, and
//! balanced over the endpoints that outlier detection has not ejected. The order of the steps is the one
//! `resilience.rs` describes; each step is a small function below.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use opentelemetry::trace::{SpanContext, SpanKind};
use opentelemetry::KeyValue;
use tokio::net::TcpStream;
use tracing::debug;

use super::backends::Backend;
use super::observe::{Access, CountedRequest, Observed};
use super::resilience::{retry_loop, Action, FaultAction, Outcome, RetryError, RetryParams, RetryStats};
use super::route::{RouteDestination, RouteTable};
use super::{boxed, grpc_status, protocol_label, text, BoxBody, Version};
use crate::context::ProxyContext;
use crate::state::{ServiceTarget, State, WorkloadInfo};
use crate::telemetry::flags::ResponseFlag;
use crate::telemetry::labels::ConnectionLabels;
use crate::telemetry::logging::access_enabled;
use crate::telemetry::routes::RouteSeries;
use crate::telemetry::series::SourceSeries;
use crate::telemetry::traces::HopSpan;

/// One pod connection to one service port.
struct Downstream {
    ctx: Arc<ProxyContext>,
    source: Arc<WorkloadInfo>,
    front: Arc<ServiceTarget>,
    /// The route metrics of `front`'s service, resolved once per connection.
    routes: RouteSeries,
    /// The connection's labels and metric series, per destination workload reached.
    series: SourceSeries,
}

/// Serves HTTP/1.1 or HTTP/2 on the pod's connection until it closes.
pub async fn serve(ctx: Arc<ProxyContext>, tcp: TcpStream, source: Arc<WorkloadInfo>, front: Arc<ServiceTarget>) {
    let labels =
        ConnectionLabels::new("source").with_source(&source.labels).with_service_labels(&front.labels).mutual_tls(true);
    let drain = ctx.drain.watch();
    let series = SourceSeries::new(ctx.metrics.clone(), labels);
    let routes = RouteSeries::default();
    let downstream = Arc::new(Downstream { ctx, source, front, routes, series });
    let handler = move |request| {
        let downstream = downstream.clone();
        async move { handle(&downstream, request).await }
    };
    super::serve_client_connection(tcp, handler, "outbound", drain).await;
}

/// The request body as the pod sends it, counted for `istio_request_bytes`.
type ReqBody = CountedRequest<Incoming>;

/// What a request's metrics and access log say about it.
struct Record {
    flags: ResponseFlag,
    route: std::borrow::Cow<'static, str>,
    upstream: Option<SocketAddr>,
    destination: Option<Arc<WorkloadInfo>>,
    retries: u64,
    /// See [`Access::detail`].
    detail: String,
    /// The subset the route picked, if it named one.
    subset: Option<String>,
    /// The hop's span, when traces are exported: each try is a child of it.
    trace: Option<SpanContext>,
}

async fn handle(d: &Downstream, request: Request<Incoming>) -> Response<BoxBody> {
    let start = Instant::now();
    let protocol = protocol_label(&request);
    let (mut request, request_bytes) = {
        let (parts, body) = request.into_parts();
        let (body, counter) = CountedRequest::new(body);
        (Request::from_parts(parts, body), counter)
    };
    let method = request.method().clone();
    let state = d.ctx.state.current();
    let table = state.route_table(&d.front.reference);
    // Before routing: routes match, and the destination authorizes, what the backend will receive.
    let normalized = super::normalize::request(&mut request, table.escaped_slashes());
    // The normalized path, or the path as sent when it was refused (for the access line only).
    // Only the access line and a tap read it.
    let path = if access_enabled() || crate::tap::active() { request.uri().path().to_string() } else { String::new() };
    let hop = super::trace::add_hop(request.headers_mut(), "strait source", SpanKind::Server);
    let mut record = Record {
        flags: ResponseFlag::None,
        route: std::borrow::Cow::Borrowed("default"),
        upstream: None,
        destination: None,
        retries: 0,
        detail: String::new(),
        subset: None,
        trace: hop.span.as_ref().map(HopSpan::context),
    };
    let response = match normalized {
        Ok(()) => route_request(d, &state, table, request, &mut record).await,
        Err(rejection) => {
            record.flags = ResponseFlag::DownstreamProtocolError;
            record.detail = rejection.as_str().into();
            text(StatusCode::BAD_REQUEST, format!("{rejection}\n"))
        }
    };
    // Recorded (metrics and the access line) when the response body has been sent.
    let access = Access {
        series: d.series.to(record.destination.as_ref()),
        protocol,
        status: response.status().as_u16(),
        grpc_status: grpc_status(response.headers()),
        flags: record.flags,
        route: record.route,
        subset: record.subset,
        upstream: record.upstream,
        retries: record.retries,
        detail: record.detail,
        method,
        path,
        trace_id: hop.trace_id,
        span: hop.span,
        start,
        request_bytes,
    };
    response.map(|body| boxed(Observed::new(body, access)))
}

async fn route_request(
    d: &Downstream,
    state: &Arc<State>,
    table: &RouteTable,
    mut request: Request<ReqBody>,
    record: &mut Record,
) -> Response<BoxBody> {
    let (parts, body) = request.into_parts();
    let route = table.route(&parts);
    request = Request::from_parts(parts, body);
    let Some(route) = route else {
        let response = forward(d, state, &d.front.default_destination, request, None, None, record).await;
        d.routes.request(&d.ctx.metrics.routes, &d.front.labels.host, "default", None, response.status().as_u16());
        return response;
    };
    record.route = route.name().to_string().into();
    let split = match route.action() {
        Action::Forward(split) => split,
        Action::Redirect(redirect) => {
            let (parts, _) = request.into_parts();
            return redirect.response(&parts).map(boxed);
        }
        Action::Respond(direct) => return direct.response().map(boxed),
    };
    route.headers().request.apply(request.headers_mut());
    if let Some(rewrite) = route.rewrite() {
        rewrite.apply(&mut request);
    }
    let fault = route.fault_decision(&mut rand::rng());
    let abort = match fault {
        FaultAction::None => None,
        FaultAction::Delay(delay) => {
            tokio::time::sleep(delay).await;
            record.flags = ResponseFlag::DelayInjected;
            None
        }
        FaultAction::Abort(status) => Some(status),
        FaultAction::DelayThenAbort(delay, status) => {
            tokio::time::sleep(delay).await;
            Some(status)
        }
    };
    if let Some(status) = abort {
        record.flags = ResponseFlag::FaultInjected;
        return text(status, "fault filter abort\n");
    }
    let destination = split.pick(&mut rand::rng());
    record.subset = destination.subset.clone();
    let mut response = forward(d, state, destination, request, route.timeout(), route.retry_policy(), record).await;
    let status = response.status().as_u16();
    d.routes.request(&d.ctx.metrics.routes, &d.front.labels.host, route.name(), destination.subset.as_deref(), status);
    route.headers().response.apply(response.headers_mut());
    response
}

/// Why a try produced no response.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("connection pool overflow")]
    Overflow,
    #[error("no healthy endpoint")]
    NoEndpoint,
    #[error(transparent)]
    Client(#[from] hyper_util::client::legacy::Error),
}

fn classify(e: &SendError) -> Outcome {
    match e {
        // Local back-pressure or nothing to send to: another try would meet the same.
        SendError::Overflow | SendError::NoEndpoint => Outcome::Response(StatusCode::SERVICE_UNAVAILABLE),
        SendError::Client(e) if e.is_connect() => Outcome::ConnectFailure,
        SendError::Client(_) => Outcome::Reset,
    }
}

async fn forward(
    d: &Downstream,
    state: &Arc<State>,
    destination: &RouteDestination,
    mut request: Request<ReqBody>,
    timeout: Option<Duration>,
    policy: Option<&super::resilience::RetryPolicy>,
    record: &mut Record,
) -> Response<BoxBody> {
    let Some(backend) = d.ctx.http.backends.backend(state, destination, &d.front) else {
        record.flags = ResponseFlag::NoRouteFound;
        return text(StatusCode::SERVICE_UNAVAILABLE, format!("no service for destination {}\n", destination.host));
    };
    let endpoints = backend.endpoints(destination.subset.as_deref());
    if endpoints.is_empty() {
        record.flags = ResponseFlag::NoHealthyUpstream;
        return text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
    }
    let client_version = Version::of(&request);
    // Routed already; the destination authorizes the handshake before its pod can answer 101.
    let upgrade = super::upgrade::wants_websocket(&request).then(|| hyper::upgrade::on(&mut request));
    // A WebSocket handshake is an HTTP/1.1 upgrade: it stays HTTP/1.1 whatever the port declares.
    let version = if upgrade.is_some() { client_version } else { backend.upstream_version(client_version) };
    if version != client_version {
        super::upstream::translate_request(&mut request, version);
    } else if upgrade.is_none() {
        super::hop_by_hop::strip_hop_by_hop(request.headers_mut());
    }
    let hash_key: Option<Vec<u8>> = backend
        .hash_on()
        .and_then(|h| h.request_key(request.headers(), request.uri().query(), d.source.workload.address));
    let client = d.ctx.http.clients.mesh_client(&d.ctx, &d.source, version, backend.reuse);
    let stats = RetryStats::default();
    let params = RetryParams {
        // An upgraded connection cannot be replayed.
        policy: if upgrade.is_some() { None } else { policy },
        budget: &backend.budget,
        stats: &stats,
        replay_cap: super::resilience::DEFAULT_REPLAY_CAP,
    };
    let last_upstream = std::sync::Mutex::new(None);
    // The endpoints earlier tries of this request went to: a try is retried only when it failed, so a retry
    // avoids them while others remain.
    let tried = std::sync::Mutex::new(Vec::new());
    let trace = record.trace.clone();
    let send = |mut request: Request<super::body::RetryBody<ReqBody>>| {
        let client = &client;
        let backend = &backend;
        let endpoints = &endpoints;
        let hash_key = hash_key.as_deref();
        let last_upstream = &last_upstream;
        let tried = &tried;
        let trace = trace.as_ref();
        async move {
            let _permit = backend.limiter.acquire().await.map_err(|_| SendError::Overflow)?;
            let avoid = tried.lock().map(|t| t.clone()).unwrap_or_default();
            let endpoint = backend.pick(endpoints, hash_key, &avoid).ok_or(SendError::NoEndpoint)?;
            let try_number = match tried.lock() {
                Ok(mut tried) => {
                    tried.push(endpoint);
                    tried.len()
                }
                Err(_) => 0,
            };
            // Each try is a span of its own under the hop; the destination's hop is the try's child.
            let try_span = trace.and_then(|parent| HopSpan::child_of(parent, "strait try"));
            if let Some(span) = &try_span {
                super::trace::set(request.headers_mut(), &span.traceparent());
            }
            if let Ok(mut last) = last_upstream.lock() {
                *last = Some(endpoint);
            }
            if let Some(uri) = super::target::uri_to(request.uri(), super::target::authority_of(endpoint).as_ref()) {
                *request.uri_mut() = uri;
            }
            let mut guard = backend.balancer.start(endpoint);
            let result = super::upstream::send(client, request.map(boxed), backend.reuse).await.map_err(|e| {
                // `tcp.maxConnections`: refused here (503 `UO`), like the request limits.
                if super::upstream::is_overflow(&e) {
                    SendError::Overflow
                } else {
                    SendError::Client(e)
                }
            });
            let outcome = match &result {
                Ok(response) => Outcome::Response(response.status()),
                Err(e) => classify(e),
            };
            if let Some(span) = try_span {
                end_try(span, try_number, endpoint, &result);
            }
            backend.outlier.record(endpoint, &outcome, tokio::time::Instant::now());
            if outcome.is_failure() {
                guard.failed();
            }
            drop(guard);
            result
        }
    };
    let attempt = retry_loop(request, params, send, classify);
    let result = match timeout {
        Some(limit) => match tokio::time::timeout(limit, attempt).await {
            Ok(result) => result,
            Err(_) => {
                record.flags = ResponseFlag::UpstreamRequestTimeout;
                record_retries(d, &backend, &stats, record);
                return text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n");
            }
        },
        None => attempt.await,
    };
    record.upstream = last_upstream.lock().ok().and_then(|l| *l);
    record.destination = record.upstream.and_then(|u| state.workload(u.ip()).cloned());
    record_retries(d, &backend, &stats, record);
    match result {
        Ok(mut response) => {
            if version != client_version {
                super::upstream::translate_response(&mut response, client_version);
            } else if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                super::hop_by_hop::strip_hop_by_hop(response.headers_mut());
            }
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let Some(downstream) = upgrade else {
                    // A switch nobody asked for (the request's upgrade was stripped) would leave the pod
                    // talking to a connection that is neither HTTP nor spliced.
                    record.flags = ResponseFlag::UpstreamConnectionTermination;
                    return text(StatusCode::BAD_GATEWAY, "upstream switched protocols unasked\n");
                };
                super::upgrade::splice(downstream, hyper::upgrade::on(&mut response));
            }
            if stats.retries() > 0 && response.status().is_server_error() {
                record.flags = ResponseFlag::UpstreamRetryLimitExceeded;
            }
            response.map(boxed)
        }
        Err(RetryError::PerTryTimeout(_)) => {
            record.flags = ResponseFlag::UpstreamRequestTimeout;
            text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n")
        }
        Err(RetryError::Upstream(SendError::Overflow)) => {
            record.flags = ResponseFlag::UpstreamOverflow;
            d.ctx.metrics.circuit.with_label_values(&[backend.name(), "overflow"]).inc();
            text(StatusCode::SERVICE_UNAVAILABLE, "upstream connection pool overflow\n")
        }
        Err(RetryError::Upstream(SendError::NoEndpoint)) => {
            record.flags = ResponseFlag::NoHealthyUpstream;
            text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n")
        }
        Err(RetryError::Upstream(SendError::Client(e))) => {
            record.flags = if e.is_connect() {
                ResponseFlag::UpstreamConnectionFailure
            } else {
                ResponseFlag::UpstreamConnectionTermination
            };
            debug!(error = %e, "upstream request failed");
            text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error or disconnect/reset before headers\n")
        }
        Err(RetryError::RequestBody(e)) => {
            record.flags = ResponseFlag::DownstreamProtocolError;
            text(StatusCode::BAD_REQUEST, format!("reading the request body: {e}\n"))
        }
    }
}

/// Ends a try's span: the endpoint, the try's number (1 for the first) and what came back.
fn end_try<B>(span: HopSpan, number: usize, endpoint: SocketAddr, result: &Result<Response<B>, SendError>) {
    if !span.recording() {
        return span.fail(String::new(), Vec::new());
    }
    let attributes = vec![
        KeyValue::new("server.address", endpoint.to_string()),
        KeyValue::new("http.request.resend_count", number.saturating_sub(1) as i64),
    ];
    match result {
        Ok(response) => span.end(response.status().as_u16(), attributes),
        Err(e) => span.fail(e.to_string(), attributes),
    }
}

fn record_retries(d: &Downstream, backend: &Backend, stats: &RetryStats, record: &mut Record) {
    let service = backend.name();
    record.retries = stats.retries();
    let retries = &d.ctx.metrics.retries;
    if stats.retries() > 0 {
        retries.with_label_values(&[service, "attempted"]).inc_by(stats.retries());
    }
    if stats.succeeded() > 0 {
        retries.with_label_values(&[service, "succeeded"]).inc_by(stats.succeeded());
    }
    if stats.budget_exhausted() > 0 {
        retries.with_label_values(&[service, "budget_exhausted"]).inc_by(stats.budget_exhausted());
    }
    let routes = &d.ctx.metrics.routes;
    routes.retries(service, &record.route, "attempted", stats.retries());
    routes.retries(service, &record.route, "succeeded", stats.succeeded());
    routes.retries(service, &record.route, "budget_exhausted", stats.budget_exhausted());
    let ejections = backend.take_new_ejections();
    if ejections > 0 {
        d.ctx.metrics.circuit.with_label_values(&[service, "ejection"]).inc_by(ejections);
    }
    backend.report_ejected(&d.ctx.metrics);
}
