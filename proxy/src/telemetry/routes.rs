//! Per-route metrics, for canaries and retry tuning: requests by TrafficRoute rule and subset
//! (`strait_route_requests_total`) and retries by rule (`strait_route_retries_total`), counted by the source
//! proxy. Rule and subset names come from configuration, which is bounded, but a proxy lives through many
//! versions: past [`MAX_SERIES`] distinct (service, rule, subset) sets, new ones are counted as `other`.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// Distinct (service, rule, subset) sets a proxy exports before folding new ones into `other`.
pub const MAX_SERIES: usize = 2000;
const OTHER: &str = "other";

pub struct RouteMetrics {
    requests: IntCounterVec,
    retries: IntCounterVec,
    seen: Mutex<HashSet<(String, String, String)>>,
}

impl RouteMetrics {
    pub fn new(registry: &Registry) -> Self {
        let requests = IntCounterVec::new(
            Opts::new(
                "strait_route_requests_total",
                "HTTP requests by destination service, TrafficRoute rule (`default`: no rule) and subset, counted by the \
                 source proxy",
            ),
            &["destination_service", "route", "subset", "response_code_class"],
        )
        .expect("metric definition is static and valid");
        let retries = IntCounterVec::new(
            Opts::new(
                "strait_route_retries_total",
                "Retries by destination service and TrafficRoute rule: attempted, succeeded, budget_exhausted",
            ),
            &["destination_service", "route", "result"],
        )
        .expect("metric definition is static and valid");
        for collector in [Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>, Box::new(retries.clone())]
        {
            registry.register(collector).expect("each metric is registered once");
        }
        RouteMetrics { requests, retries, seen: Mutex::new(HashSet::new()) }
    }

    /// The labels to use for (service, route, subset): themselves while under [`MAX_SERIES`], else `other`.
    fn bounded<'a>(&self, service: &'a str, route: &'a str, subset: &'a str) -> (&'a str, &'a str) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let key = (service.to_string(), route.to_string(), subset.to_string());
        if seen.contains(&key) || seen.len() < MAX_SERIES && seen.insert(key) {
            (route, subset)
        } else {
            (OTHER, OTHER)
        }
    }

    /// One request answered `status` after rule `route` sent it to `subset` (`-`: the whole service).
    pub fn request(&self, service: &str, route: &str, subset: Option<&str>, status: u16) {
        self.request_counter(service, route, subset, status_class(status)).inc();
    }

    /// The series [`RouteMetrics::request`] counts in, resolved (a connection keeps it: [`RouteSeries`]).
    fn request_counter(&self, service: &str, route: &str, subset: Option<&str>, class: &str) -> IntCounter {
        let (route, subset) = self.bounded(service, route, subset.unwrap_or("-"));
        self.requests.with_label_values(&[service, route, subset, class])
    }

    pub fn retries(&self, service: &str, route: &str, result: &str, count: u64) {
        if count > 0 {
            let (route, _) = self.bounded(service, route, "-");
            self.retries.with_label_values(&[service, route, result]).inc_by(count);
        }
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// (route, subset, status class) sets whose counters one connection keeps resolved; past that, the rest are
/// looked up per request, so memory stays bounded.
const KEPT: usize = 8;

/// One source connection's route counters: a request costs an uncontended lock and a scan of a short list
/// rather than three string copies, a set lookup and a hash of four label values.
#[derive(Default)]
pub struct RouteSeries {
    kept: Mutex<Vec<(RouteKey, IntCounter)>>,
}

struct RouteKey {
    route: String,
    subset: Option<String>,
    class: &'static str,
}

impl RouteSeries {
    /// As [`RouteMetrics::request`]; `service` is the connection's, the same on every call.
    pub fn request(&self, metrics: &RouteMetrics, service: &str, route: &str, subset: Option<&str>, status: u16) {
        let class = status_class(status);
        // A poisoned lock only means another request panicked mid-scan; the list is still valid.
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let found = kept.iter().find(|(k, _)| k.class == class && k.route == route && k.subset.as_deref() == subset);
        if let Some((_, counter)) = found {
            counter.inc();
            return;
        }
        let counter = metrics.request_counter(service, route, subset, class);
        counter.inc();
        if kept.len() < KEPT {
            kept.push((RouteKey { route: route.to_string(), subset: subset.map(str::to_string), class }, counter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_bounded() {
        let registry = Registry::new();
        let m = RouteMetrics::new(&registry);
        for i in 0..MAX_SERIES + 10 {
            m.request("reviews.demo.svc.cluster.local", &format!("rule-{i}"), Some("v1"), 200);
        }
        m.retries("reviews.demo.svc.cluster.local", "rule-0", "attempted", 2);
        let requests =
            registry.gather().into_iter().find(|f| f.name() == "strait_route_requests_total").expect("family");
        assert_eq!(requests.get_metric().len(), MAX_SERIES + 1, "the sets past the bound share `other`");
        let other = requests
            .get_metric()
            .iter()
            .find(|m| m.get_label().iter().any(|l| l.name() == "route" && l.value() == "other"))
            .expect("an `other` series");
        assert_eq!(other.get_counter().get_value(), 10.0);
    }

    fn count(registry: &Registry, route: &str, subset: &str, class: &str) -> f64 {
        let family = registry.gather().into_iter().find(|f| f.name() == "strait_route_requests_total").expect("family");
        let has = |m: &prometheus::proto::Metric, name: &str, value: &str| {
            m.get_label().iter().any(|l| l.name() == name && l.value() == value)
        };
        family
            .get_metric()
            .iter()
            .find(|m| has(m, "route", route) && has(m, "subset", subset) && has(m, "response_code_class", class))
            .map_or(0.0, |m| m.get_counter().get_value())
    }

    #[test]
    fn a_connection_counts_in_the_series_the_registry_would() {
        let registry = Registry::new();
        let m = RouteMetrics::new(&registry);
        let series = RouteSeries::default();
        let service = "reviews.demo.svc.cluster.local";
        // More distinct sets than the connection keeps: the ones past it are still counted.
        for i in 0..KEPT + 4 {
            for _ in 0..3 {
                series.request(&m, service, &format!("rule-{i}"), Some("v1"), 200);
            }
        }
        series.request(&m, service, "rule-0", Some("v1"), 503);
        series.request(&m, service, "rule-0", None, 200);
        series.request(&m, service, "default", None, 404);
        for i in 0..KEPT + 4 {
            assert_eq!(count(&registry, &format!("rule-{i}"), "v1", "2xx"), 3.0, "rule-{i}");
        }
        assert_eq!(count(&registry, "rule-0", "v1", "5xx"), 1.0);
        assert_eq!(count(&registry, "rule-0", "-", "2xx"), 1.0);
        assert_eq!(count(&registry, "default", "-", "4xx"), 1.0);
    }
}
