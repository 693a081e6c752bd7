//! Prometheus metrics. TCP families carry Istio's standard names and labels so existing dashboards work;
//! Strait's own families are prefixed `strait_`. No label ever holds a peer port, a path or a request id.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use strait_certs::TlsFailureReason;

use crate::state::WorkloadInfo;

const TCP_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// Istio's standard HTTP labels: the TCP set plus the response's code and gRPC status.
const HTTP_LABELS: &[&str] = &[
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Istio's buckets, so its dashboards' quantile queries read the same.
const DURATION_BUCKETS_MS: &[f64] =
    &[0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0];
const SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// What one HTTP request's metrics need besides the connection's labels.
#[derive(Clone, Copy, Debug)]
pub struct RequestOutcome<'a> {
    /// `http` or `grpc`.
    pub protocol: &'static str,
    pub status: u16,
    /// gRPC status from the trailers or headers; empty when not gRPC or not known.
    pub grpc_status: &'a str,
    /// Envoy-style flags (`-` when clean): UT timeout, UO overflow, UF connect failure, UH no healthy upstream,
    /// URX retries exhausted, UAEX denied, DI/FI fault injection.
    pub flags: &'a str,
    pub duration: std::time::Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
    pub retries: IntCounterVec,
    pub circuit: IntCounterVec,
    tcp_opened: IntCounterVec,
    tcp_closed: IntCounterVec,
    tcp_sent: IntCounterVec,
    tcp_received: IntCounterVec,
    refusals: IntCounterVec,
    policy_denials: IntCounterVec,
    tls_failures: IntCounterVec,
    pub tunnel_connections: IntGauge,
}

/// Why a connection was refused before any byte reached a workload; also the access log's response flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Outbound: the connecting peer is not a workload on this node.
    UnknownSource,
    /// Inbound: the destination is not a meshed workload on this node.
    UnknownDestination,
    /// Inbound plaintext to a STRICT namespace.
    PlaintextInStrict,
    /// Tunnel: not a CONNECT, a bad authority, or not HTTP/2 at all.
    BadRequest,
    /// The destination pod refused or could not be reached.
    UpstreamUnreachable,
    /// The tunnel to the peer node could not be opened.
    TunnelFailed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownSource => "unknown_source",
            Refusal::UnknownDestination => "unknown_destination",
            Refusal::PlaintextInStrict => "plaintext_in_strict",
            Refusal::BadRequest => "bad_request",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
            Refusal::TunnelFailed => "tunnel_failed",
        }
    }

    /// Envoy-style response flag, as Istio's metrics carry it.
    pub fn response_flag(self) -> &'static str {
        match self {
            Refusal::UnknownSource | Refusal::UnknownDestination => "NR",
            Refusal::PlaintextInStrict => "UAEX",
            Refusal::BadRequest => "DPE",
            Refusal::UpstreamUnreachable | Refusal::TunnelFailed => "UF",
        }
    }
}

/// The label values that describe one connection, from one reporter's point of view.
#[derive(Clone, Debug, Default)]
pub struct ConnectionLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub mutual_tls: bool,
}

const UNKNOWN: &str = "unknown";

impl ConnectionLabels {
    pub fn new(reporter: &'static str) -> Self {
        ConnectionLabels { reporter, ..Default::default() }
    }

    pub fn with_source(mut self, w: &WorkloadInfo) -> Self {
        self.source_workload = w.workload.name.clone();
        self.source_namespace = w.workload.namespace.clone();
        self.source_principal = w.identity.as_ref().map(|i| i.uri()).unwrap_or_default();
        self.source_app = w.workload.labels.get("app").cloned().unwrap_or_default();
        self.source_version = w.workload.labels.get("version").cloned().unwrap_or_default();
        self
    }

    pub fn with_source_principal(mut self, principal: String) -> Self {
        self.source_principal = principal;
        self
    }

    pub fn with_destination(mut self, w: &WorkloadInfo) -> Self {
        self.destination_workload = w.workload.name.clone();
        self.destination_namespace = w.workload.namespace.clone();
        self.destination_principal = w.identity.as_ref().map(|i| i.uri()).unwrap_or_default();
        self.destination_app = w.workload.labels.get("app").cloned().unwrap_or_default();
        self.destination_version = w.workload.labels.get("version").cloned().unwrap_or_default();
        self
    }

    pub fn with_service(mut self, service: &strait_api::Service) -> Self {
        self.destination_service = service.hostname();
        self.destination_service_name = service.name.clone();
        self.destination_service_namespace = service.namespace.clone();
        self
    }

    pub fn mutual_tls(mut self, on: bool) -> Self {
        self.mutual_tls = on;
        self
    }

    fn values<'a>(&'a self, flags: &'a str) -> [&'a str; 17] {
        let or_unknown = |s: &'a str| if s.is_empty() { UNKNOWN } else { s };
        [
            self.reporter,
            or_unknown(&self.source_workload),
            or_unknown(&self.source_namespace),
            or_unknown(&self.source_principal),
            or_unknown(&self.source_app),
            or_unknown(&self.source_version),
            or_unknown(&self.destination_workload),
            or_unknown(&self.destination_namespace),
            or_unknown(&self.destination_principal),
            or_unknown(&self.destination_app),
            or_unknown(&self.destination_version),
            or_unknown(&self.destination_service),
            or_unknown(&self.destination_service_name),
            or_unknown(&self.destination_service_namespace),
            "tcp",
            flags,
            if self.mutual_tls { "mutual_tls" } else { "none" },
        ]
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition is static and valid");
    registry.register(Box::new(c.clone())).expect("each metric is registered once");
    c
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let tunnel_connections = IntGauge::new("strait_tunnel_pool_connections", "Open outbound tunnel connections")
            .expect("metric definition is static and valid");
        registry.register(Box::new(tunnel_connections.clone())).expect("each metric is registered once");
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), HTTP_LABELS)
                .expect("metric definition is static and valid");
            registry.register(Box::new(h.clone())).expect("each metric is registered once");
            h
        };
        Metrics {
            requests: counter(&registry, "istio_requests_total", "HTTP requests", HTTP_LABELS),
            request_duration: histogram(
                "istio_request_duration_milliseconds",
                "HTTP request duration in milliseconds",
                DURATION_BUCKETS_MS,
            ),
            request_bytes: histogram("istio_request_bytes", "HTTP request body sizes", SIZE_BUCKETS),
            response_bytes: histogram("istio_response_bytes", "HTTP response body sizes", SIZE_BUCKETS),
            retries: counter(
                &registry,
                "strait_retries_total",
                "Retries by destination service and result (attempted, succeeded, budget_exhausted)",
                &["destination_service", "result"],
            ),
            circuit: counter(
                &registry,
                "strait_circuit_breaker_total",
                "Circuit-breaker events by destination service (ejection, overflow)",
                &["destination_service", "event"],
            ),
            tcp_opened: counter(&registry, "istio_tcp_connections_opened_total", "TCP connections opened", TCP_LABELS),
            tcp_closed: counter(&registry, "istio_tcp_connections_closed_total", "TCP connections closed", TCP_LABELS),
            tcp_sent: counter(&registry, "istio_tcp_sent_bytes_total", "Bytes sent to the destination", TCP_LABELS),
            tcp_received: counter(
                &registry,
                "istio_tcp_received_bytes_total",
                "Bytes received from the destination",
                TCP_LABELS,
            ),
            refusals: counter(
                &registry,
                "strait_connections_refused_total",
                "Connections refused before reaching a workload, by listener and reason",
                &["listener", "reason"],
            ),
            policy_denials: counter(
                &registry,
                "strait_policy_denials_total",
                "Connections and requests denied by authorization policy",
                &["reporter", "policy", "reason"],
            ),
            tls_failures: counter(
                &registry,
                "strait_tls_handshake_failures_total",
                "Failed mTLS handshakes by direction and reason",
                &["direction", "reason"],
            ),
            tunnel_connections,
            registry,
        }
    }

    pub fn connection_opened(&self, labels: &ConnectionLabels) {
        self.tcp_opened.with_label_values(&labels.values("-")).inc();
    }

    /// Records the end of a connection; `flags` is "-" for a clean one.
    pub fn connection_closed(&self, labels: &ConnectionLabels, flags: &str, sent: u64, received: u64) {
        let values = labels.values(flags);
        self.tcp_closed.with_label_values(&values).inc();
        self.tcp_sent.with_label_values(&values).inc_by(sent);
        self.tcp_received.with_label_values(&values).inc_by(received);
    }

    pub fn request(&self, labels: &ConnectionLabels, outcome: &RequestOutcome<'_>) {
        let code = outcome.status.to_string();
        let base = labels.values(outcome.flags);
        let values: [&str; 19] = [
            base[0],
            base[1],
            base[2],
            base[3],
            base[4],
            base[5],
            base[6],
            base[7],
            base[8],
            base[9],
            base[10],
            base[11],
            base[12],
            base[13],
            outcome.protocol,
            &code,
            if outcome.grpc_status.is_empty() { "-" } else { outcome.grpc_status },
            base[15],
            base[16],
        ];
        self.requests.with_label_values(&values).inc();
        self.request_duration.with_label_values(&values).observe(outcome.duration.as_secs_f64() * 1000.0);
        self.request_bytes.with_label_values(&values).observe(outcome.request_bytes as f64);
        self.response_bytes.with_label_values(&values).observe(outcome.response_bytes as f64);
    }

    pub fn refused(&self, listener: &str, refusal: Refusal) {
        self.refusals.with_label_values(&[listener, refusal.as_str()]).inc();
    }

    pub fn policy_denied(&self, reporter: &str, policy: &str, reason: &str) {
        self.policy_denials.with_label_values(&[reporter, policy, reason]).inc();
    }

    pub fn tls_handshake_failure(&self, direction: &str, reason: TlsFailureReason) {
        self.tls_failures.with_label_values(&[direction, reason.as_str()]).inc();
    }

    /// The text exposition format, for `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
