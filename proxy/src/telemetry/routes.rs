//! Per-route metrics, for canaries and retry tuning: requests by TrafficRoute rule and subset
//! (`strait_route_requests_total`) and retries by rule (`strait_route_retries_total`), counted by the source
//! proxy. Rule and subset names come from configuration, which is bounded, but a proxy lives through many
//! versions: past [`MAX_SERIES`] distinct (service, rule, subset) sets, new ones are counted as `other`.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{IntCounterVec, Opts, Registry};

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
        let (route, subset) = self.bounded(service, route, subset.unwrap_or("-"));
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.with_label_values(&[service, route, subset, class]).inc();
    }

    pub fn retries(&self, service: &str, route: &str, result: &str, count: u64) {
        if count > 0 {
            let (route, _) = self.bounded(service, route, "-");
            self.retries.with_label_values(&[service, route, result]).inc_by(count);
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
}
