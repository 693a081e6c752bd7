//! The label values that describe one connection or request, filled along its path and read once at its end by
//! the metrics and the access log; with Istio's standard label names, in the order both use.

use std::net::SocketAddr;
use std::time::Instant;

use crate::state::WorkloadInfo;

/// Istio's standard labels describing the two peers; the TCP and HTTP families add their own after these.
pub(crate) const PEER_LABELS: [&str; 14] = [
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
];

pub(crate) const TCP_LABELS: [&str; 17] =
    join(PEER_LABELS, ["request_protocol", "response_flags", "connection_security_policy"]);

/// Istio's standard HTTP labels: the TCP set plus the response's code and gRPC status.
pub(crate) const HTTP_LABELS: [&str; 19] = join(
    PEER_LABELS,
    ["request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy"],
);

/// `a` then `b`: label names and their values are built the same way, so they cannot drift apart.
pub(crate) const fn join<'a, const A: usize, const B: usize, const C: usize>(
    a: [&'a str; A],
    b: [&'a str; B],
) -> [&'a str; C] {
    assert!(A + B == C, "the joined length must be the sum of both");
    let mut out = [""; C];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    let mut j = 0;
    while j < B {
        out[A + j] = b[j];
        j += 1;
    }
    out
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
    /// Not a label: the pod address the connection went to, for the access log.
    pub upstream: Option<SocketAddr>,
    /// Not a label: when the connection was accepted, for the access log's duration.
    pub started: Option<Instant>,
}

const UNKNOWN: &str = "unknown";

impl ConnectionLabels {
    pub fn new(reporter: &'static str) -> Self {
        ConnectionLabels { reporter, started: Some(Instant::now()), ..Default::default() }
    }

    pub fn with_upstream(mut self, upstream: SocketAddr) -> Self {
        self.upstream = Some(upstream);
        self
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

    /// A destination outside the mesh: the ServiceEntry's host (or `PassthroughCluster`), as Istio names it.
    pub fn with_external(mut self, host: &str, namespace: &str) -> Self {
        self.destination_service = host.to_string();
        self.destination_service_name = host.to_string();
        self.destination_service_namespace = namespace.to_string();
        self
    }

    pub fn mutual_tls(mut self, on: bool) -> Self {
        self.mutual_tls = on;
        self
    }

    /// Values for [`PEER_LABELS`], in order.
    pub(crate) fn peer_values<'a>(&'a self) -> [&'a str; 14] {
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
        ]
    }

    pub(crate) fn security_policy(&self) -> &'static str {
        if self.mutual_tls {
            "mutual_tls"
        } else {
            "none"
        }
    }

    /// Values for [`TCP_LABELS`], in order.
    pub(crate) fn values<'a>(&'a self, flags: &'a str) -> [&'a str; 17] {
        join(self.peer_values(), ["tcp", flags, self.security_policy()])
    }
}
