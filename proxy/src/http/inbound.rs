//! HTTP at the destination: each request that came through the tunnel (or from a pod on this node) is
//! authorized with its method and path, gets the caller's verified identity in `x-forwarded-client-cert`, and is
//! forwarded to the pod. A denied request is answered 403 with the reason, not a reset.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use super::{body_size_hint, boxed, grpc_status, protocol_label, text, BoxBody, Version};
use crate::authz::{Decision, HttpAttributes, Request as AuthzRequest};
use crate::inbound::Caller;
use crate::metrics::{ConnectionLabels, RequestOutcome};
use crate::proxy::ProxyContext;
use crate::state::WorkloadInfo;

/// Istio's header for the caller's identity as the destination proxy verified it.
pub const XFCC: &str = "x-forwarded-client-cert";

struct Destination {
    ctx: Arc<ProxyContext>,
    caller: Caller,
    workload: Arc<WorkloadInfo>,
    target: SocketAddr,
    labels: ConnectionLabels,
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
    let destination = Arc::new(Destination { ctx: ctx.clone(), caller, workload, target, labels });
    let service = service_fn(move |request| {
        let destination = destination.clone();
        async move { Ok::<_, Infallible>(handle(&destination, request).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .initial_stream_window_size(crate::tunnel::STREAM_WINDOW)
        .initial_connection_window_size(crate::tunnel::CONNECTION_WINDOW);
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
        debug!(error = %e, "inbound HTTP connection ended with an error");
    }
}

async fn handle(d: &Destination, mut request: Request<Incoming>) -> Response<BoxBody> {
    let start = Instant::now();
    let protocol = protocol_label(&request);
    let request_bytes = body_size_hint(request.body());
    let state = d.ctx.state.current();
    let principal = d.caller.identity.as_ref().map(|i| i.principal());
    let decision = state.policies.evaluate(&AuthzRequest {
        source_principal: principal.as_deref(),
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
            source = principal.as_deref().unwrap_or("(plaintext)"),
            destination = %d.workload.workload.name,
            method = %request.method(),
            path = %request.uri().path(),
            policy = %denial.policy,
            "request denied by policy"
        );
        let response = text(StatusCode::FORBIDDEN, format!("{denial}\n"));
        record(d, protocol, &response, "UAEX", start, request_bytes);
        return response;
    }

    // Whatever the caller claimed is replaced by what the handshake proved.
    request.headers_mut().remove(XFCC);
    if let Some(identity) = &d.caller.identity {
        let by = d.workload.identity.as_ref().map(|i| i.uri()).unwrap_or_default();
        if let Ok(value) = HeaderValue::from_str(&format!("By={by};URI={}", identity.uri())) {
            request.headers_mut().insert(XFCC, value);
        }
    }
    super::trace::add_hop(request.headers_mut());
    let version = if request.version() == http::Version::HTTP_2 { Version::Http2 } else { Version::Http1 };
    let upgrade = super::wants_upgrade(&request).then(|| hyper::upgrade::on(&mut request));
    let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let uri = match format!("http://{}{path}", d.target).parse() {
        Ok(uri) => uri,
        Err(_) => return text(StatusCode::BAD_REQUEST, "request target is not valid\n"),
    };
    *request.uri_mut() = uri;
    let client = d.ctx.http.pod_client(&d.ctx, version);
    let mut response = match client.request(request.map(boxed)).await {
        Ok(response) => response,
        Err(e) => {
            debug!(target = %d.target, error = %e, "pod did not answer");
            let response = text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error: the pod did not answer\n");
            record(d, protocol, &response, "UF", start, request_bytes);
            return response;
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream) = upgrade {
            super::splice_upgrade(downstream, hyper::upgrade::on(&mut response));
        }
    }
    let response = response.map(boxed);
    record(d, protocol, &response, "-", start, request_bytes);
    response
}

fn record(
    d: &Destination,
    protocol: &'static str,
    response: &Response<BoxBody>,
    flags: &str,
    start: Instant,
    request_bytes: u64,
) {
    let grpc = grpc_status(response.headers());
    let response_bytes = body_size_hint(response.body());
    d.ctx.metrics.request(
        &d.labels,
        &RequestOutcome {
            protocol,
            status: response.status().as_u16(),
            grpc_status: &grpc,
            flags,
            duration: start.elapsed(),
            request_bytes,
            response_bytes,
        },
    );
}
