//! The request metrics of one HTTP connection: its label values are fixed for the connection (the source side
//! adds the destination workload, one set per workload it reaches), so the label sets are built and the metric
//! series resolved once: a request costs an uncontended lock, a scan of a short list and a few atomic adds
//! instead of four hash lookups over 19 label values and a copy of 13 strings.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use super::flags::ResponseFlag;
use super::labels::ConnectionLabels;
use super::metrics::{Metrics, RequestHandles, RequestOutcome};
use crate::state::WorkloadInfo;

/// Distinct outcomes (protocol, code, gRPC status, flags) whose series one label set keeps resolved; past
/// that (a connection seeing many codes), the rest are looked up per request as before: memory stays bounded.
const OUTCOMES_KEPT: usize = 8;
/// Destination workloads whose label sets one source connection keeps; past that the oldest is replaced.
const DESTINATIONS_KEPT: usize = 16;

/// One label set of a connection and the series of the outcomes seen so far.
pub struct RequestSeries {
    metrics: Arc<Metrics>,
    labels: ConnectionLabels,
    outcomes: Mutex<Vec<(OutcomeKey, RequestHandles)>>,
}

#[derive(PartialEq, Eq)]
struct OutcomeKey {
    protocol: &'static str,
    status: u16,
    grpc_status: String,
    flags: ResponseFlag,
}

impl OutcomeKey {
    fn matches(&self, o: &RequestOutcome<'_>) -> bool {
        self.status == o.status
            && self.flags == o.flags
            && self.protocol == o.protocol
            && self.grpc_status == o.grpc_status
    }
}

impl RequestSeries {
    pub fn new(metrics: Arc<Metrics>, labels: ConnectionLabels) -> Self {
        RequestSeries { metrics, labels, outcomes: Mutex::new(Vec::new()) }
    }

    pub fn labels(&self) -> &ConnectionLabels {
        &self.labels
    }

    /// Records one request's metrics.
    pub fn record(&self, outcome: &RequestOutcome<'_>) {
        // A poisoned lock only means another request panicked mid-lookup; the list is still valid.
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, handles)) = outcomes.iter().find(|(key, _)| key.matches(outcome)) {
            handles.record(outcome);
            return;
        }
        let handles = self.metrics.request_handles(&self.labels, outcome);
        handles.record(outcome);
        if outcomes.len() < OUTCOMES_KEPT {
            let key = OutcomeKey {
                protocol: outcome.protocol,
                status: outcome.status,
                grpc_status: outcome.grpc_status.to_string(),
                flags: outcome.flags,
            };
            outcomes.push((key, handles));
        }
    }
}

/// The source side's label sets of one connection, one per destination workload reached (the connection's
/// labels with that workload's), kept while the workload's entry in the state is the same.
pub struct SourceSeries {
    metrics: Arc<Metrics>,
    labels: ConnectionLabels,
    /// No destination known (the request was answered by the proxy, or went nowhere). Made at the first such
    /// request: most connections never have one, and an idle connection should not hold a second label set.
    unknown: OnceLock<Arc<RequestSeries>>,
    by_destination: Mutex<Vec<(Arc<WorkloadInfo>, Arc<RequestSeries>)>>,
}

impl SourceSeries {
    pub fn new(metrics: Arc<Metrics>, labels: ConnectionLabels) -> Self {
        SourceSeries { metrics, labels, unknown: OnceLock::new(), by_destination: Mutex::new(Vec::new()) }
    }

    /// The series of requests that went to `destination`.
    pub fn to(&self, destination: Option<&Arc<WorkloadInfo>>) -> Arc<RequestSeries> {
        let Some(destination) = destination else {
            let unknown =
                self.unknown.get_or_init(|| Arc::new(RequestSeries::new(self.metrics.clone(), self.labels.clone())));
            return unknown.clone();
        };
        let mut kept = self.by_destination.lock().unwrap_or_else(|e| e.into_inner());
        // The same `Arc`: a new configuration gives a workload a new entry (its labels may have changed).
        if let Some((_, series)) = kept.iter().find(|(w, _)| Arc::ptr_eq(w, destination)) {
            return series.clone();
        }
        let labels = self.labels.clone().with_destination(&destination.labels);
        let series = Arc::new(RequestSeries::new(self.metrics.clone(), labels));
        // Entries for the same address from an older configuration go: one per workload address.
        let address: IpAddr = destination.workload.address;
        kept.retain(|(w, _)| w.workload.address != address);
        if kept.len() >= DESTINATIONS_KEPT {
            kept.remove(0);
        }
        kept.push((destination.clone(), series.clone()));
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: u16) -> RequestOutcome<'static> {
        RequestOutcome {
            protocol: "http",
            status,
            grpc_status: "",
            flags: ResponseFlag::None,
            duration: std::time::Duration::from_millis(1),
            request_bytes: 3,
            response_bytes: 5,
        }
    }

    fn count(metrics: &Metrics, code: &str) -> f64 {
        let wanted = format!("response_code=\"{code}\"");
        metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{") && l.contains(&wanted))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    #[test]
    fn every_request_is_counted_in_its_own_series_kept_or_not() {
        let metrics = Arc::new(Metrics::new());
        let series = RequestSeries::new(metrics.clone(), ConnectionLabels::new("source").mutual_tls(true));
        // More distinct codes than are kept: those past the limit are still counted, each in its series.
        let codes: Vec<u16> = (0..OUTCOMES_KEPT as u16 + 4).map(|i| 200 + i).collect();
        for _ in 0..3 {
            for code in &codes {
                series.record(&outcome(*code));
            }
        }
        for code in &codes {
            assert_eq!(count(&metrics, &code.to_string()), 3.0, "code {code}");
        }
        assert_eq!(series.outcomes.lock().map(|o| o.len()).ok(), Some(OUTCOMES_KEPT));
        let text = metrics.encode();
        let sum = text.lines().find(|l| l.starts_with("istio_response_bytes_sum{") && l.contains("\"200\""));
        assert_eq!(sum.and_then(|l| l.rsplit_once(' ')).map(|(_, v)| v), Some("15"), "{text}");
    }

    fn workload(name: &str, last: u8) -> Arc<WorkloadInfo> {
        Arc::new(WorkloadInfo::new(
            strait_api::Workload {
                name: name.into(),
                namespace: "shop".into(),
                service_account: "sa".into(),
                node: "node-b".into(),
                address: IpAddr::from([10, 2, 0, last]),
                labels: Default::default(),
                meshed: true,
                tunnel_port: strait_api::DEFAULT_TUNNEL_PORT,
            },
            None,
        ))
    }

    #[test]
    fn a_source_connection_keeps_one_label_set_per_destination_workload() {
        let metrics = Arc::new(Metrics::new());
        let source = SourceSeries::new(metrics.clone(), ConnectionLabels::new("source"));
        let (b1, b2) = (workload("b1", 2), workload("b2", 3));
        assert!(Arc::ptr_eq(&source.to(Some(&b1)), &source.to(Some(&b1))));
        assert_eq!(source.to(Some(&b2)).labels().destination.name.as_ref(), "b2");
        assert_eq!(source.to(None).labels().destination.name.as_ref(), "");
        // A new configuration's entry for the same address replaces the old one.
        let b1_renamed = workload("b1-new", 2);
        assert_eq!(source.to(Some(&b1_renamed)).labels().destination.name.as_ref(), "b1-new");
        assert_eq!(source.by_destination.lock().map(|k| k.len()).ok(), Some(2));
        // Bounded however many workloads one connection reaches.
        for i in 0..40 {
            source.to(Some(&workload(&format!("w{i}"), 10 + i))).record(&outcome(200));
        }
        assert_eq!(source.by_destination.lock().map(|k| k.len()).ok(), Some(DESTINATIONS_KEPT));
        assert_eq!(count(&metrics, "200"), 40.0);
    }
}
