//! What a request's metrics and access log line need, measured on the bytes actually streamed: the request
//! body is counted as it is read ([`CountedRequest`]); the response body is counted as it is sent and, when it
//! ends (or is dropped, e.g. the client went away), the request is recorded once ([`Observed`]): Istio's
//! request metrics, with the gRPC status from the trailers when the headers had none, and the `access` line.
//! Per request this costs one shared counter; no frame is copied.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use opentelemetry::KeyValue;

use crate::telemetry::flags::ResponseFlag;
use crate::telemetry::labels::ConnectionLabels;
use crate::telemetry::logging::{Dash, DashAddr};
use crate::telemetry::metrics::RequestOutcome;
use crate::telemetry::series::RequestSeries;
use crate::telemetry::traces::HopSpan;

/// A request body that counts its data bytes into a counter shared with the request's [`Access`].
pub struct CountedRequest<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> CountedRequest<B> {
    pub fn new(inner: B) -> (Self, Arc<AtomicU64>) {
        let bytes = Arc::new(AtomicU64::new(0));
        (CountedRequest { inner, bytes: bytes.clone() }, bytes)
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountedRequest<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Everything about one request that is known when its response headers are; completed with the response's
/// byte count and trailers when the body ends.
pub struct Access {
    /// The connection's labels and resolved metric series (see `telemetry::series`).
    pub series: Arc<RequestSeries>,
    pub protocol: &'static str,
    pub status: u16,
    /// From the response headers (a trailers-only gRPC answer); empty otherwise.
    pub grpc_status: String,
    pub flags: ResponseFlag,
    /// The route's name (source side), `-` where no route applies (destination side).
    pub route: Cow<'static, str>,
    /// The subset the route chose (source side); `None` without one, and on the destination side.
    pub subset: Option<String>,
    pub upstream: Option<SocketAddr>,
    pub retries: u64,
    /// Why the proxy answered itself, when it did: the policy that denied the request (never sent to the
    /// client) or the normalization rule that refused it; empty otherwise.
    pub detail: String,
    pub method: http::Method,
    /// Empty when the access log is off (`telemetry::logging::access_enabled`): only the line needs it.
    pub path: String,
    pub trace_id: crate::telemetry::traces::TraceId,
    /// This hop's span, when traces are exported: ended here with the request's attributes.
    pub span: Option<HopSpan>,
    pub start: Instant,
    pub request_bytes: Arc<AtomicU64>,
}

impl Access {
    fn finish(mut self, response_bytes: u64, trailers: Option<&HeaderMap>) {
        let grpc_status = if self.grpc_status.is_empty() {
            trailers.map(crate::http::grpc_status).unwrap_or_default()
        } else {
            std::mem::take(&mut self.grpc_status)
        };
        let duration = self.start.elapsed();
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        self.series.record(&RequestOutcome {
            protocol: self.protocol,
            status: self.status,
            grpc_status: &grpc_status,
            flags: self.flags,
            duration,
            request_bytes,
            response_bytes,
        });
        let labels = self.series.labels();
        if let Some(span) = self.span.take() {
            let attributes = if span.recording() { span_attributes(&self, labels, &grpc_status) } else { Vec::new() };
            span.end(self.status, attributes);
        }
        tracing::info!(
            target: "access",
            reporter = labels.reporter,
            protocol = self.protocol,
            source_workload = %Dash(&labels.source.name),
            source_namespace = %Dash(&labels.source.namespace),
            source_identity = %Dash(&labels.source.principal),
            destination_workload = %Dash(&labels.destination.name),
            destination_namespace = %Dash(&labels.destination.namespace),
            destination_identity = %Dash(&labels.destination.principal),
            destination_service = %Dash(&labels.service.host),
            route = %self.route,
            upstream = %DashAddr(self.upstream),
            method = %self.method,
            path = %self.path,
            status = self.status,
            grpc_status = %Dash(&grpc_status),
            flags = self.flags.as_str(),
            detail = %Dash(&self.detail),
            retries = self.retries,
            request_bytes,
            response_bytes,
            duration_ms = duration.as_millis() as u64,
            trace_id = %self.trace_id,
            "request"
        );
        crate::tap::publish(|| crate::tap::TapEvent {
            reporter: labels.reporter,
            source_workload: labels.source.name.to_string(),
            source_namespace: labels.source.namespace.to_string(),
            source_identity: labels.source.principal.to_string(),
            destination_workload: labels.destination.name.to_string(),
            destination_namespace: labels.destination.namespace.to_string(),
            destination_identity: labels.destination.principal.to_string(),
            destination_version: labels.destination.version.to_string(),
            destination_service: labels.service.host.to_string(),
            method: self.method.to_string(),
            path: self.path.clone(),
            status: self.status,
            duration_ms: duration.as_millis() as u64,
            route: self.route.to_string(),
            subset: self.subset.as_deref().unwrap_or("-").to_string(),
            upstream: self.upstream.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
            flags: self.flags.as_str(),
            retries: self.retries,
        });
    }
}

/// What a hop's span says: the route and subset, the identities on both ends, the outcome.
fn span_attributes(access: &Access, labels: &ConnectionLabels, grpc_status: &str) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("strait.reporter", labels.reporter),
        KeyValue::new("http.request.method", access.method.to_string()),
        KeyValue::new("strait.route", access.route.to_string()),
        KeyValue::new("strait.subset", access.subset.as_deref().unwrap_or("-").to_string()),
        KeyValue::new("strait.source.identity", labels.source.principal.to_string()),
        KeyValue::new("strait.source.workload", labels.source.name.to_string()),
        KeyValue::new("strait.destination.identity", labels.destination.principal.to_string()),
        KeyValue::new("strait.destination.workload", labels.destination.name.to_string()),
        KeyValue::new("strait.destination.service", labels.service.host.to_string()),
        KeyValue::new("strait.response_flags", access.flags.as_str()),
        KeyValue::new("strait.retries", access.retries as i64),
    ];
    if let Some(upstream) = access.upstream {
        attributes.push(KeyValue::new("server.address", upstream.to_string()));
    }
    if !grpc_status.is_empty() {
        attributes.push(KeyValue::new("rpc.grpc.status_code", grpc_status.to_string()));
    }
    if !access.path.is_empty() {
        attributes.push(KeyValue::new("url.path", access.path.clone()));
    }
    attributes
}

/// A response body that counts the bytes sent and records the request once, when the body ends.
pub struct Observed<B> {
    inner: B,
    bytes: u64,
    access: Option<Access>,
}

impl<B> Observed<B> {
    pub fn new(inner: B, access: Access) -> Self {
        Observed { inner, bytes: 0, access: Some(access) }
    }

    fn finish(&mut self, trailers: Option<&HeaderMap>) {
        if let Some(access) = self.access.take() {
            access.finish(self.bytes, trailers);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Observed<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    this.finish(Some(trailers));
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Observed<B> {
    fn drop(&mut self) {
        // Ended without a last poll (the server saw `is_end_stream`), or the client went away mid-body.
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    use crate::telemetry::metrics::Metrics;

    fn access(metrics: &Arc<Metrics>, request_bytes: Arc<AtomicU64>) -> Access {
        Access {
            series: Arc::new(RequestSeries::new(metrics.clone(), ConnectionLabels::new("source"))),
            protocol: "grpc",
            status: 200,
            grpc_status: String::new(),
            flags: ResponseFlag::None,
            route: "default".into(),
            subset: None,
            upstream: None,
            retries: 0,
            detail: String::new(),
            method: http::Method::POST,
            path: "/pkg.Svc/Call".into(),
            trace_id: crate::telemetry::traces::TraceId::new(1),
            span: None,
            start: Instant::now(),
            request_bytes,
        }
    }

    #[tokio::test]
    async fn counts_streamed_bytes_and_reads_grpc_status_from_trailers() {
        let metrics = Arc::new(Metrics::new());
        let request_frames: Vec<Result<Frame<Bytes>, Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"abc"))), Ok(Frame::data(Bytes::from_static(b"de")))];
        let (request, request_bytes) = CountedRequest::new(StreamBody::new(futures_util::stream::iter(request_frames)));
        let trailers = HeaderMap::from_iter([(
            http::header::HeaderName::from_static("grpc-status"),
            http::HeaderValue::from_static("13"),
        )]);
        let response_frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from(vec![1u8; 1000]))),
            Ok(Frame::data(Bytes::from(vec![2u8; 234]))),
            Ok(Frame::trailers(trailers)),
        ];
        let response = Observed::new(
            StreamBody::new(futures_util::stream::iter(response_frames)),
            access(&metrics, request_bytes),
        );
        // Nothing is recorded before the body ends.
        assert!(!metrics.encode().contains("istio_requests_total{"));
        assert_eq!(request.collect().await.map(|b| b.to_bytes().len()).ok(), Some(5));
        assert!(response.collect().await.is_ok());
        let text = metrics.encode();
        assert!(text.contains("grpc_response_status=\"13\""), "{text}");
        assert!(text.contains("istio_response_bytes_sum{"), "{text}");
        let sum = |family: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("{family}_sum{{")))
                .and_then(|l| l.rsplit_once(' '))
                .and_then(|(_, v)| v.parse::<f64>().ok())
        };
        assert_eq!(sum("istio_response_bytes"), Some(1234.0));
        assert_eq!(sum("istio_request_bytes"), Some(5.0));
    }

    #[tokio::test]
    async fn a_dropped_body_is_recorded_once() {
        let metrics = Arc::new(Metrics::new());
        let body = Observed::new(http_body_util::Full::new(Bytes::from_static(b"xyz")), {
            let mut a = access(&metrics, Arc::default());
            a.protocol = "http";
            a
        });
        drop(body);
        let text = metrics.encode();
        assert!(text.contains("istio_requests_total{"), "{text}");
        assert!(text.contains("grpc_response_status=\"\""), "{text}");
        let count: f64 = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum();
        assert_eq!(count, 1.0);
    }
}
