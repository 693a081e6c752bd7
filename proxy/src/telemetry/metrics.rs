//! Prometheus metrics. The TCP and HTTP families carry Istio's standard names and labels so existing
//! dashboards and alerts work; Strait's own families are prefixed `strait_`. No label ever holds a peer port, a
//! path or a request id (a unit test scans every family for such labels): those go to the access log, which
//! [`Metrics::connection_closed`] and the HTTP paths write at the end of each connection and request.

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use strait_certs::{CertStore, TlsFailureReason};

use super::flags::ResponseFlag;
pub use super::labels::ConnectionLabels;
use super::labels::{join, HTTP_LABELS, TCP_LABELS};

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
    /// gRPC status from the headers (trailers-only answers) or the trailers; empty when not gRPC or not known,
    /// as Istio reports it.
    pub grpc_status: &'a str,
    /// Why the request ended as it did (`-` when clean).
    pub flags: ResponseFlag,
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
    /// Connections to destinations outside the mesh, by host (a ServiceEntry's, or Istio's
    /// `PassthroughCluster` / `BlackHoleCluster`) and decision (`allowed`, `denied`).
    pub egress: IntCounterVec,
    /// Protocol 3: outbound connections that waited for on-demand discovery, by result (`answered`, `timeout`,
    /// `unavailable`: no control plane, `refused`: the interest set is full or the control plane said no).
    pub discovery: IntCounterVec,
    policy_denials: IntCounterVec,
    tls_failures: IntCounterVec,
    pub tunnel_connections: IntGauge,
    ejected_endpoints: IntGaugeVec,
    /// Requests and retries by TrafficRoute rule and subset (`routes.rs`).
    pub routes: super::routes::RouteMetrics,
    config_updates: IntCounterVec,
    config_last_update: prometheus::Gauge,
    certificate_expiry: GaugeVec,
    /// Spans of trace export by result: queued, dropped (queue full), exported, failed (`traces.rs`).
    pub trace_spans: IntCounterVec,
}

/// Every family this registry exports, for tests and for the dashboard's checks.
pub const FAMILIES: &[&str] = &[
    "istio_requests_total",
    "istio_request_duration_milliseconds",
    "istio_request_bytes",
    "istio_response_bytes",
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
    "strait_retries_total",
    "strait_circuit_breaker_total",
    "strait_outlier_ejected_endpoints",
    "strait_connections_refused_total",
    "strait_egress_connections_total",
    "strait_discovery_requests_total",
    "strait_policy_denials_total",
    "strait_tls_handshake_failures_total",
    "strait_tunnel_pool_connections",
    "strait_config_updates_total",
    "strait_config_last_update_timestamp_seconds",
    "strait_certificate_expiry_timestamp_seconds",
    "strait_route_requests_total",
    "strait_route_retries_total",
    "strait_trace_spans_total",
];

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
    /// Outbound: the source workload already holds as many connections as it may.
    SourceLimit,
    /// Outbound: a destination outside the mesh that no ServiceEntry registers, under REGISTRY_ONLY.
    EgressNotRegistered,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownSource => "unknown_source",
            Refusal::SourceLimit => "source_limit",
            Refusal::UnknownDestination => "unknown_destination",
            Refusal::PlaintextInStrict => "plaintext_in_strict",
            Refusal::BadRequest => "bad_request",
            Refusal::UpstreamUnreachable => "upstream_unreachable",
            Refusal::TunnelFailed => "tunnel_failed",
            Refusal::EgressNotRegistered => "egress_not_registered",
        }
    }

    /// Envoy-style response flag, as Istio's metrics carry it.
    pub fn response_flag(self) -> ResponseFlag {
        match self {
            Refusal::UnknownSource | Refusal::UnknownDestination | Refusal::EgressNotRegistered => {
                ResponseFlag::NoRouteFound
            }
            Refusal::PlaintextInStrict => ResponseFlag::Unauthorized,
            Refusal::BadRequest => ResponseFlag::DownstreamProtocolError,
            Refusal::UpstreamUnreachable | Refusal::TunnelFailed => ResponseFlag::UpstreamConnectionFailure,
            Refusal::SourceLimit => ResponseFlag::UpstreamOverflow,
        }
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("each metric is registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition is static and valid"),
    )
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let tunnel_connections = register(
            &registry,
            IntGauge::new("strait_tunnel_pool_connections", "Open outbound tunnel connections")
                .expect("metric definition is static and valid"),
        );
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            register(&registry, HistogramVec::new(opts, &HTTP_LABELS).expect("metric definition is static and valid"))
        };
        Metrics {
            requests: counter(&registry, "istio_requests_total", "HTTP requests", &HTTP_LABELS),
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
            tcp_opened: counter(&registry, "istio_tcp_connections_opened_total", "TCP connections opened", &TCP_LABELS),
            tcp_closed: counter(&registry, "istio_tcp_connections_closed_total", "TCP connections closed", &TCP_LABELS),
            tcp_sent: counter(&registry, "istio_tcp_sent_bytes_total", "Bytes sent to the destination", &TCP_LABELS),
            tcp_received: counter(
                &registry,
                "istio_tcp_received_bytes_total",
                "Bytes received from the destination",
                &TCP_LABELS,
            ),
            refusals: counter(
                &registry,
                "strait_connections_refused_total",
                "Connections refused before reaching a workload, by listener and reason",
                &["listener", "reason"],
            ),
            egress: counter(
                &registry,
                "strait_egress_connections_total",
                "Connections from meshed pods to destinations outside the mesh, by host and decision (allowed, denied)",
                &["destination_host", "decision"],
            ),
            discovery: counter(
                &registry,
                "strait_discovery_requests_total",
                "Outbound connections that waited for on-demand discovery (protocol 3), by result",
                &["result"],
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
            ejected_endpoints: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "strait_outlier_ejected_endpoints",
                        "Endpoints currently ejected by outlier detection (open circuit breakers), by destination service",
                    ),
                    &["destination_service"],
                )
                .expect("metric definition is static and valid"),
            ),
            routes: super::routes::RouteMetrics::new(&registry),
            config_updates: counter(
                &registry,
                "strait_config_updates_total",
                "Configuration versions received, by result (acked: installed; nacked: refused, the last good one stays)",
                &["result"],
            ),
            config_last_update: register(
                &registry,
                prometheus::Gauge::new(
                    "strait_config_last_update_timestamp_seconds",
                    "Unix time the last configuration version was installed (0 before the first)",
                )
                .expect("metric definition is static and valid"),
            ),
            certificate_expiry: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "strait_certificate_expiry_timestamp_seconds",
                        "Unix time each local workload certificate expires (read from the certificate store at scrape time)",
                    ),
                    &["identity"],
                )
                .expect("metric definition is static and valid"),
            ),
            trace_spans: counter(
                &registry,
                "strait_trace_spans_total",
                "Spans of OpenTelemetry trace export, by result: queued for export, dropped (the bounded queue was full), exported, failed (the collector refused or did not answer)",
                &["result"],
            ),
            registry,
        }
    }

    pub fn connection_opened(&self, labels: &ConnectionLabels) {
        self.tcp_opened.with_label_values(&labels.values("-")).inc();
    }

    /// Records the end of a connection and writes its access log line (target `access`); `flags` is "-" for a
    /// clean one. `sent` went to the destination, `received` came back from it.
    pub fn connection_closed(&self, labels: &ConnectionLabels, flags: ResponseFlag, sent: u64, received: u64) {
        let values = labels.values(flags.as_str());
        self.tcp_closed.with_label_values(&values).inc();
        self.tcp_sent.with_label_values(&values).inc_by(sent);
        self.tcp_received.with_label_values(&values).inc_by(received);
        crate::telemetry::logging::tcp_access(labels, flags.as_str(), sent, received);
    }

    /// Records one request. The HTTP paths go through a connection's [`super::series::RequestSeries`], which
    /// resolves the series once rather than per request.
    pub fn request(&self, labels: &ConnectionLabels, outcome: &RequestOutcome<'_>) {
        self.request_handles(labels, outcome).record(outcome);
    }

    /// The four request series (count, duration, request and response size) of `labels` with `outcome`'s
    /// protocol, code, gRPC status and flags: one label-set lookup each, done once and kept by the caller.
    pub(crate) fn request_handles(&self, labels: &ConnectionLabels, outcome: &RequestOutcome<'_>) -> RequestHandles {
        let code = outcome.status.to_string();
        let values: [&str; 19] = join(
            labels.peer_values(),
            [outcome.protocol, &code, outcome.grpc_status, outcome.flags.as_str(), labels.security_policy()],
        );
        RequestHandles {
            requests: self.requests.with_label_values(&values),
            duration: self.request_duration.with_label_values(&values),
            request_bytes: self.request_bytes.with_label_values(&values),
            response_bytes: self.response_bytes.with_label_values(&values),
        }
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

    /// The number of endpoints of `service` that outlier detection holds ejected right now.
    pub fn set_ejected_endpoints(&self, service: &str, ejected: usize) {
        set_count(&self.ejected_endpoints_gauge(service), ejected);
    }

    /// The series of [`Metrics::set_ejected_endpoints`], for a caller that keeps it resolved.
    pub fn ejected_endpoints_gauge(&self, service: &str) -> IntGauge {
        self.ejected_endpoints.with_label_values(&[service])
    }

    /// A configuration version was received (from the control plane or the file) and installed (`Ok`) or
    /// refused (`Err`).
    pub fn config_update<E>(&self, result: &Result<(), E>) {
        match result {
            Ok(()) => {
                self.config_updates.with_label_values(&["acked"]).inc();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                self.config_last_update.set(now.as_secs_f64());
            }
            Err(_) => self.config_updates.with_label_values(&["nacked"]).inc(),
        }
    }

    /// Reads the certificates' expiry from the store (at scrape time, so the values are never stale and
    /// identities that left the node disappear).
    pub fn refresh_certificates(&self, certs: &CertStore) {
        self.certificate_expiry.reset();
        for cert in certs.certs() {
            let expiry = cert.not_after().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            self.certificate_expiry.with_label_values(&[&cert.identity().to_string()]).set(expiry.as_secs() as f64);
        }
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

/// One request label set's series. A handle shares its series with the registry (series are never removed
/// from the request families), so recording through it is a few atomic adds.
#[derive(Clone)]
pub(crate) struct RequestHandles {
    requests: prometheus::IntCounter,
    duration: prometheus::Histogram,
    request_bytes: prometheus::Histogram,
    response_bytes: prometheus::Histogram,
}

impl RequestHandles {
    pub(crate) fn record(&self, outcome: &RequestOutcome<'_>) {
        self.requests.inc();
        self.duration.observe(outcome.duration.as_secs_f64() * 1000.0);
        self.request_bytes.observe(outcome.request_bytes as f64);
        self.response_bytes.observe(outcome.response_bytes as f64);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Sets a gauge to a count.
pub fn set_count(gauge: &IntGauge, count: usize) {
    gauge.set(i64::try_from(count).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label names that would let cardinality grow with traffic rather than with the mesh's size.
    const FORBIDDEN: &[&str] = &[
        "path",
        "request_path",
        "url",
        "uri",
        "authority",
        "host",
        "port",
        "peer_port",
        "source_port",
        "destination_port",
        "peer",
        "peer_address",
        "source_ip",
        "destination_ip",
        "upstream",
        "upstream_host",
        "endpoint",
        "request_id",
        "x_request_id",
        "trace_id",
        "span_id",
        "traceparent",
        "serial",
        "user_agent",
    ];

    /// Records one sample of every family, so that `gather` shows all of them with their labels.
    fn exercised() -> Metrics {
        let m = Metrics::new();
        let labels = ConnectionLabels::new("source").with_upstream(([10, 0, 0, 1], 8080).into()).mutual_tls(true);
        m.connection_opened(&labels);
        m.connection_closed(&labels, ResponseFlag::None, 10, 20);
        m.request(
            &labels,
            &RequestOutcome {
                protocol: "http",
                status: 200,
                grpc_status: "",
                flags: ResponseFlag::None,
                duration: std::time::Duration::from_millis(3),
                request_bytes: 1,
                response_bytes: 2,
            },
        );
        m.retries.with_label_values(&["reviews.shop.svc.cluster.local", "attempted"]).inc();
        m.circuit.with_label_values(&["reviews.shop.svc.cluster.local", "overflow"]).inc();
        m.set_ejected_endpoints("reviews.shop.svc.cluster.local", 1);
        m.routes.request("reviews.shop.svc.cluster.local", "canary", Some("v2"), 503);
        m.routes.retries("reviews.shop.svc.cluster.local", "canary", "attempted", 1);
        m.refused("outbound", Refusal::UnknownSource);
        m.egress.with_label_values(&["api.example.com", "allowed"]).inc();
        m.discovery.with_label_values(&["answered"]).inc();
        m.policy_denied("destination", "shop/deny", "deny_matched");
        m.tls_handshake_failure("outbound", TlsFailureReason::WrongIdentity);
        m.tunnel_connections.inc();
        m.config_update::<String>(&Ok(()));
        m.config_update(&Err("bad".to_string()));
        m.certificate_expiry.with_label_values(&["spiffe://cluster.local/ns/shop/sa/a"]).set(1.0);
        m.trace_spans.with_label_values(&["dropped"]).inc();
        m
    }

    #[test]
    fn no_family_has_an_unbounded_label() {
        let m = exercised();
        let families = m.registry.gather();
        let names: std::collections::BTreeSet<&str> = families.iter().map(|f| f.name()).collect();
        let expected: std::collections::BTreeSet<&str> = FAMILIES.iter().copied().collect();
        assert_eq!(names, expected, "every registered family is exercised and listed in FAMILIES");
        for family in &families {
            for metric in family.get_metric() {
                for label in metric.get_label() {
                    assert!(
                        !FORBIDDEN.contains(&label.name()),
                        "{} has the unbounded label {:?}",
                        family.name(),
                        label.name()
                    );
                    // No value carries an address with a port either (the upstream is for the access log only).
                    assert!(
                        !label.value().contains(":80"),
                        "{} label {} = {:?}",
                        family.name(),
                        label.name(),
                        label.value()
                    );
                }
            }
        }
    }

    #[test]
    fn istio_families_carry_istio_labels() {
        let m = exercised();
        let text = m.encode();
        let requests = text.lines().find(|l| l.starts_with("istio_requests_total{")).expect("a request series");
        for label in HTTP_LABELS {
            assert!(requests.contains(&format!("{label}=\"")), "{label} missing: {requests}");
        }
        assert!(requests.contains("grpc_response_status=\"\""), "empty for plain HTTP, as Istio: {requests}");
        assert!(requests.contains("connection_security_policy=\"mutual_tls\""), "{requests}");
        let tcp = text.lines().find(|l| l.starts_with("istio_tcp_sent_bytes_total{")).expect("a TCP series");
        for label in TCP_LABELS {
            assert!(tcp.contains(&format!("{label}=\"")), "{label} missing: {tcp}");
        }
        assert!(tcp.ends_with(" 10"), "{tcp}");
        assert!(text.contains("strait_config_updates_total{result=\"acked\"} 1"), "{text}");
        assert!(text.contains("strait_config_updates_total{result=\"nacked\"} 1"), "{text}");
    }
}
