//! OpenTelemetry trace export: one span per proxy hop (the source proxy's and the destination proxy's), a child
//! span per try of the source side (so retries show as siblings under the hop), exported over OTLP/HTTP
//! (protobuf) by the maintained `opentelemetry-otlp` exporter to `--otlp-endpoint`.
//!
//! The data path never waits on export: a finished span goes into a bounded queue with `try_send` (a full queue
//! drops it and counts it in `strait_trace_spans_total{result="dropped"}`), and one task on the proxy's runtime
//! takes batches off the queue and exports them. The SDK's own batch processor exports from a thread of its own
//! with a blocking executor, where the hyper client (tokio timers and sockets) cannot run, and it keeps its drop
//! count to itself; hence this small processor in front of the SDK's exporter.
//!
//! Sampling is parent-based: a request arriving with a sampled `traceparent` is traced, one arriving unsampled
//! is not, and a request that starts a trace is sampled at `--trace-sampling` (by trace id, so both proxies
//! decide alike). The `traceparent` sent on carries this hop's span and decision.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceState, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::IntCounterVec;
use tokio::sync::{mpsc, oneshot};

/// Spans waiting for export; one more is dropped (and counted).
pub const QUEUE_CAPACITY: usize = 4096;
/// Spans per export request.
pub const BATCH_SIZE: usize = 512;
/// How long a span may wait for its batch to fill.
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// One export request's deadline; a collector slower than that loses the batch (counted as `failed`).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// `--otlp-endpoint` and `--trace-sampling`.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// `http://collector:4318` (the traces path `/v1/traces` is added when none is given) or a full URL.
    pub endpoint: String,
    /// Share of new traces sampled, 0.0 to 1.0.
    pub sampling: f64,
    /// Reported as the `k8s.node.name` resource attribute.
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("--otlp-endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("--trace-sampling {0}: a ratio from 0 to 1")]
    Sampling(f64),
    #[error("the OTLP exporter: {0}")]
    Exporter(String),
    #[error("trace export was already started in this process")]
    AlreadyStarted,
}

struct Traces {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
}

static TRACES: OnceLock<Traces> = OnceLock::new();

/// The URL spans are posted to: `endpoint` as given when it has a path, else with `/v1/traces` (as the
/// `OTEL_EXPORTER_OTLP_ENDPOINT` convention has it).
pub fn traces_url(endpoint: &str) -> Result<String, TraceError> {
    let bad = |why: &str| TraceError::Endpoint(endpoint.to_string(), why.to_string());
    let uri: http::Uri = endpoint.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported (a collector on the node or in the cluster)"));
    }
    if uri.authority().is_none() {
        return Err(bad("no host"));
    }
    match uri.path() {
        "" | "/" => Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/'))),
        _ => Ok(endpoint.to_string()),
    }
}

/// Starts export on the current tokio runtime; spans are made from then on. `spans` is the metric family
/// `strait_trace_spans_total{result}`.
pub fn start(options: &TraceOptions, spans: IntCounterVec) -> Result<(), TraceError> {
    if !(0.0..=1.0).contains(&options.sampling) || options.sampling.is_nan() {
        return Err(TraceError::Sampling(options.sampling));
    }
    let url = traces_url(&options.endpoint)?;
    let resource = Resource::builder()
        .with_service_name("strait-proxy")
        .with_attribute(KeyValue::new("k8s.node.name", options.node.clone()))
        .build();
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(opentelemetry_http::hyper::HyperClient::with_default_connector(EXPORT_TIMEOUT, None))
        .build()
        .map_err(|e| TraceError::Exporter(e.to_string()))?;
    exporter.set_resource(&resource);
    let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
    tokio::spawn(export_loop(exporter, receiver, spans.clone()));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(QueueProcessor { queue, spans })
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(options.sampling))))
        .with_resource(resource)
        .build();
    use opentelemetry::trace::TracerProvider as _;
    let tracer = provider.tracer("strait-proxy");
    TRACES.set(Traces { tracer, provider }).map_err(|_| TraceError::AlreadyStarted)
}

/// Exports what is queued (waiting at most `timeout`); on drain, before the process exits.
pub async fn flush(timeout: Duration) {
    let Some(traces) = TRACES.get() else { return };
    let provider = traces.provider.clone();
    // The processor's flush waits on the export task, which runs on this runtime: wait off it.
    let flushed = tokio::task::spawn_blocking(move || provider.force_flush());
    if tokio::time::timeout(timeout, flushed).await.is_err() {
        tracing::warn!(?timeout, "trace export did not finish flushing in time");
    }
}

enum Message {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// Queues finished spans for [`export_loop`]; never blocks.
#[derive(Debug)]
struct QueueProcessor {
    queue: mpsc::Sender<Message>,
    spans: IntCounterVec,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Span(_) => "Span",
            Message::Flush(_) => "Flush",
        })
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        let result = match self.queue.try_send(Message::Span(Box::new(span))) {
            Ok(()) => "queued",
            Err(_) => "dropped",
        };
        self.spans.with_label_values(&[result]).inc();
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done, wait) = oneshot::channel();
        self.queue.blocking_send(Message::Flush(done)).map_err(|_| OTelSdkError::AlreadyShutdown)?;
        wait.blocking_recv().map_err(|_| OTelSdkError::AlreadyShutdown)
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Takes batches of up to [`BATCH_SIZE`] spans, each sent within [`BATCH_DELAY`] of its first span.
async fn export_loop(
    exporter: opentelemetry_otlp::SpanExporter,
    mut queue: mpsc::Receiver<Message>,
    spans: IntCounterVec,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH_SIZE);
    loop {
        let mut flushed = None;
        match queue.recv().await {
            None => break,
            Some(Message::Span(span)) => batch.push(*span),
            Some(Message::Flush(done)) => flushed = Some(done),
        }
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while flushed.is_none() && batch.len() < BATCH_SIZE {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(Message::Span(span))) => batch.push(*span),
                Ok(Some(Message::Flush(done))) => flushed = Some(done),
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let sent = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_SIZE));
            match exporter.export(sent).await {
                Ok(()) => spans.with_label_values(&["exported"]).inc_by(count),
                Err(e) => {
                    spans.with_label_values(&["failed"]).inc_by(count);
                    tracing::debug!(error = %e, spans = count, "trace export failed");
                }
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// A trace id as the access log writes it: 32 lower-case hex digits, kept inline (every request has one).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    pub fn new(trace: u128) -> TraceId {
        let mut digits = [b'0'; 32];
        put_hex(&mut digits, trace);
        TraceId(digits)
    }

    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TraceId({})", self.as_str())
    }
}

/// Writes the low digits of `value` in lower-case hex, filling `out`.
pub(crate) fn put_hex(out: &mut [u8], mut value: u128) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// The span of one hop (or one try), open from the request's arrival to the end of its response body.
pub struct HopSpan {
    span: opentelemetry_sdk::trace::Span,
}

/// `traceparent` for the next hop: this span's id, the trace and the sampling decision.
fn traceparent(context: &SpanContext) -> String {
    format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), context.trace_flags().to_u8())
}

impl HopSpan {
    /// Starts a span under the incoming `traceparent` (`(trace id, parent span id, flags)`, already
    /// validated), or a new trace; `None` when export is off.
    pub fn start(name: &'static str, kind: SpanKind, parent: Option<(u128, u64, u8)>) -> Option<HopSpan> {
        let traces = TRACES.get()?;
        let cx = match parent {
            Some((trace, span, flags)) => Context::new().with_remote_span_context(SpanContext::new(
                trace.into(),
                span.into(),
                TraceFlags::new(flags),
                true,
                TraceState::NONE,
            )),
            None => Context::new(),
        };
        let span = traces.tracer.span_builder(name).with_kind(kind).start_with_context(&traces.tracer, &cx);
        Some(HopSpan { span })
    }

    /// This span's context, for its children.
    pub fn context(&self) -> SpanContext {
        use opentelemetry::trace::Span as _;
        self.span.span_context().clone()
    }

    /// A child of `parent` (a try of a hop), `None` when export is off.
    pub fn child_of(parent: &SpanContext, name: &'static str) -> Option<HopSpan> {
        let traces = TRACES.get()?;
        let cx = Context::new().with_remote_span_context(parent.clone());
        let span = traces.tracer.span_builder(name).with_kind(SpanKind::Client).start_with_context(&traces.tracer, &cx);
        Some(HopSpan { span })
    }

    pub fn traceparent(&self) -> String {
        use opentelemetry::trace::Span as _;
        traceparent(self.span.span_context())
    }

    pub fn trace_id(&self) -> TraceId {
        use opentelemetry::trace::Span as _;
        TraceId::new(u128::from_be_bytes(self.span.span_context().trace_id().to_bytes()))
    }

    /// Whether attributes would be kept (the span is sampled); callers skip building them otherwise.
    pub fn recording(&self) -> bool {
        use opentelemetry::trace::Span as _;
        self.span.is_recording()
    }

    /// Ends the span with these attributes and the response status (5xx marks it an error).
    pub fn end(mut self, status: u16, attributes: Vec<KeyValue>) {
        use opentelemetry::trace::Span as _;
        if self.span.is_recording() {
            self.span.set_attributes(attributes);
            self.span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
            if status >= 500 {
                self.span.set_status(opentelemetry::trace::Status::error(format!("HTTP {status}")));
            }
        }
        self.span.end();
    }

    /// Ends a try that got no response (`error` says why).
    pub fn fail(mut self, error: String, attributes: Vec<KeyValue>) {
        use opentelemetry::trace::Span as _;
        if self.span.is_recording() {
            self.span.set_attributes(attributes);
            self.span.set_status(opentelemetry::trace::Status::error(error));
        }
        self.span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_path_is_added_only_when_none_is_given() {
        assert_eq!(traces_url("http://c:4318").unwrap(), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/").unwrap(), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/otlp/v1/traces").unwrap(), "http://c:4318/otlp/v1/traces");
        assert!(traces_url("https://c:4318").is_err(), "no TLS client is built in");
        assert!(traces_url("c:4318").is_err());
        assert!(traces_url("http://").is_err());
    }

    #[test]
    fn the_traceparent_names_the_span_and_the_decision() {
        let context = SpanContext::new(
            0x4bf92f3577b34da6a3ce929d0e0e4736u128.into(),
            0x00f067aa0ba902b7u64.into(),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        assert_eq!(traceparent(&context), "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let spans = IntCounterVec::new(prometheus::Opts::new("s", "s"), &["result"]).unwrap();
        let (queue, _receiver) = mpsc::channel(1);
        let processor = QueueProcessor { queue, spans: spans.clone() };
        let provider = SdkTracerProvider::builder().with_span_processor(processor).build();
        use opentelemetry::trace::{Span as _, TracerProvider as _};
        let tracer = provider.tracer("t");
        for _ in 0..3 {
            tracer.start("hop").end();
        }
        assert_eq!(spans.with_label_values(&["queued"]).get(), 1);
        assert_eq!(spans.with_label_values(&["dropped"]).get(), 2);
    }
}
