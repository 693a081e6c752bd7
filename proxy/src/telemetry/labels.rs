//! The label values that describe one connection or request, filled along its path and read once at its end by
//! the metrics and the access log; with Istio's standard label names, in the order both use.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

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

/// A label value. Values are made once per workload and service port when a configuration arrives and shared
/// by the connections that carry them: a connection's label set costs reference counts, not string copies.
pub type Label = Arc<str>;

/// The empty value (`unknown` in metrics), shared.
pub fn empty() -> Label {
    static EMPTY: OnceLock<Label> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

/// A workload's label values, made with its entry in the state.
#[derive(Clone, Debug)]
pub struct WorkloadLabels {
    pub name: Label,
    pub namespace: Label,
    /// The SPIFFE URI; empty outside the mesh.
    pub principal: Label,
    pub app: Label,
    pub version: Label,
}

impl Default for WorkloadLabels {
    fn default() -> Self {
        let e = empty();
        WorkloadLabels { name: e.clone(), namespace: e.clone(), principal: e.clone(), app: e.clone(), version: e }
    }
}

impl WorkloadLabels {
    pub fn of(workload: &strait_api::Workload, identity: Option<&strait_certs::Identity>) -> Self {
        let label = |value: Option<&String>| value.map_or_else(empty, |v| Label::from(v.as_str()));
        WorkloadLabels {
            name: Label::from(workload.name.as_str()),
            namespace: Label::from(workload.namespace.as_str()),
            principal: identity.map_or_else(empty, |i| Label::from(i.uri())),
            app: label(workload.labels.get("app")),
            version: label(workload.labels.get("version")),
        }
    }
}

/// A service's label values: `destination_service` (its host name), `_name` and `_namespace`.
#[derive(Clone, Debug)]
pub struct ServiceLabels {
    pub host: Label,
    pub name: Label,
    pub namespace: Label,
}

impl Default for ServiceLabels {
    fn default() -> Self {
        let e = empty();
        ServiceLabels { host: e.clone(), name: e.clone(), namespace: e }
    }
}

impl ServiceLabels {
    pub fn of(service: &strait_api::Service) -> Self {
        ServiceLabels {
            host: Label::from(service.hostname()),
            name: Label::from(service.name.as_str()),
            namespace: Label::from(service.namespace.as_str()),
        }
    }
}

/// The label values that describe one connection, from one reporter's point of view.
#[derive(Clone, Debug, Default)]
pub struct ConnectionLabels {
    pub reporter: &'static str,
    pub source: WorkloadLabels,
    pub destination: WorkloadLabels,
    /// The destination service (`destination_service`, `_name`, `_namespace`).
    pub service: ServiceLabels,
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

    pub fn with_source(mut self, labels: &WorkloadLabels) -> Self {
        self.source = labels.clone();
        self
    }

    pub fn with_source_principal(mut self, principal: String) -> Self {
        self.source.principal = Label::from(principal);
        self
    }

    pub fn with_destination(mut self, labels: &WorkloadLabels) -> Self {
        self.destination = labels.clone();
        self
    }

    pub fn with_service(self, service: &strait_api::Service) -> Self {
        self.with_service_labels(&ServiceLabels::of(service))
    }

    /// [`ConnectionLabels::with_service`] with the values made already.
    pub fn with_service_labels(mut self, service: &ServiceLabels) -> Self {
        self.service = service.clone();
        self
    }

    /// A destination outside the mesh: the ServiceEntry's host (or `PassthroughCluster`), as Istio names it.
    pub fn with_external(mut self, host: &str, namespace: &str) -> Self {
        let host = Label::from(host);
        self.service = ServiceLabels { host: host.clone(), name: host, namespace: Label::from(namespace) };
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
            or_unknown(&self.source.name),
            or_unknown(&self.source.namespace),
            or_unknown(&self.source.principal),
            or_unknown(&self.source.app),
            or_unknown(&self.source.version),
            or_unknown(&self.destination.name),
            or_unknown(&self.destination.namespace),
            or_unknown(&self.destination.principal),
            or_unknown(&self.destination.app),
            or_unknown(&self.destination.version),
            or_unknown(&self.service.host),
            or_unknown(&self.service.name),
            or_unknown(&self.service.namespace),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str, labels: &[(&str, &str)]) -> strait_api::Workload {
        strait_api::Workload {
            name: name.into(),
            namespace: "shop".into(),
            service_account: "sa".into(),
            node: "node-a".into(),
            address: std::net::IpAddr::from([10, 1, 0, 2]),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            meshed: true,
            tunnel_port: strait_api::DEFAULT_TUNNEL_PORT,
        }
    }

    #[test]
    fn a_connection_carries_the_values_its_workloads_and_service_were_given() {
        let identity = strait_certs::Identity::parse("spiffe://cluster.local/ns/shop/sa/sa").expect("an identity");
        let source = WorkloadLabels::of(&workload("a1", &[("app", "web"), ("version", "v2")]), Some(&identity));
        let destination = WorkloadLabels::of(&workload("b1", &[]), None);
        let service: strait_api::Service = serde_json::from_value(serde_json::json!({
            "name": "reviews", "namespace": "shop", "addresses": [], "ports": [], "endpoints": [],
        }))
        .expect("a service");
        let labels =
            ConnectionLabels::new("source").with_source(&source).with_destination(&destination).with_service(&service);
        let values = labels.peer_values();
        assert_eq!(values[..6], ["source", "a1", "shop", "spiffe://cluster.local/ns/shop/sa/sa", "web", "v2"]);
        // Outside the mesh and without `app`/`version` labels: `unknown`, as Istio reports them.
        assert_eq!(values[6..11], ["b1", "shop", "unknown", "unknown", "unknown"]);
        assert_eq!(values[11..], [service.hostname().as_str(), "reviews", "shop"]);
        // Values are shared with the workload's entry, not copied.
        assert!(Arc::ptr_eq(&labels.source.name, &source.name));
        assert!(Arc::ptr_eq(&ConnectionLabels::default().source.app, &empty()));
    }
}
