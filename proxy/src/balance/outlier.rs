//! Outlier detection per endpoint (Istio `outlierDetection`, Envoy's consecutive-errors detector), for HTTP
//! requests and TCP connections: a caller says what failed through [`Failure`] (on TCP ports, a connection
//! that could not be established is a gateway error, as in Envoy).
//!
//! An endpoint that fails `consecutive5xxErrors` times in a row (or `consecutiveGatewayErrors` times with
//! 502/503/504) is ejected for `baseEjectionTime × times ejected` (capped at 300 s, as Envoy). Afterwards it is
//! half-open: it receives traffic again, and its next result decides: a success makes it healthy, a failure
//! ejects it again, for longer. Ejection never takes more than `maxEjectionPercent` of the endpoints out.
//! Every `interval`, [`OutlierDetector::sweep`] lets a healthy endpoint's ejection multiplier decay by one, so
//! an endpoint that recovered for good is not punished forever for an old failure.
//! Time is passed in (`now`), so the state machine is tested with exact instants.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use strait_api::{parse_duration, OutlierDetection};
use tokio::time::Instant;

/// What outlier detection needs to know of one attempt (an HTTP try, a TCP connect).
pub trait Failure {
    /// A failure at all (HTTP: a 5xx, a reset, no connection).
    fn is_failure(&self) -> bool;
    /// Envoy's "gateway error": 502/503/504, or no answer or connection at all.
    fn is_gateway_error(&self) -> bool;
}

/// A TCP connection attempt to an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connect {
    /// The endpoint accepted the connection (through the tunnel: the far side connected to the pod).
    Established,
    /// Refused, reset before it was established, timed out, or the tunnel to it failed.
    Failed,
}

impl Failure for Connect {
    fn is_failure(&self) -> bool {
        *self == Connect::Failed
    }

    fn is_gateway_error(&self) -> bool {
        *self == Connect::Failed
    }
}

/// Envoy's `max_ejection_time` default: how long the growing ejection time may become.
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierConfig {
    /// `None`: this detector is off.
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl OutlierConfig {
    /// Never ejects anything: what a destination without an `outlierDetection` block gets.
    pub fn disabled() -> Self {
        OutlierConfig { consecutive_5xx: None, consecutive_gateway_errors: None, ..OutlierConfig::default() }
    }
}

impl Default for OutlierConfig {
    /// Istio's defaults for an `outlierDetection` block that sets nothing.
    fn default() -> Self {
        OutlierConfig {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
        }
    }
}

impl OutlierConfig {
    /// As Istio, a zero threshold disables that detector.
    pub fn from_spec(spec: &OutlierDetection) -> Result<OutlierConfig, String> {
        let defaults = OutlierConfig::default();
        let duration = |v: &Option<String>, name: &str, default: Duration| {
            v.as_deref()
                .map(parse_duration)
                .transpose()
                .map(|d| d.unwrap_or(default))
                .map_err(|e| format!("{name}: {e}"))
        };
        Ok(OutlierConfig {
            consecutive_5xx: spec.consecutive_5xx_errors.map_or(defaults.consecutive_5xx, |n| (n > 0).then_some(n)),
            consecutive_gateway_errors: spec.consecutive_gateway_errors.filter(|n| *n > 0),
            interval: duration(&spec.interval, "interval", defaults.interval)?.max(Duration::from_millis(1)),
            base_ejection_time: duration(&spec.base_ejection_time, "baseEjectionTime", defaults.base_ejection_time)?,
            max_ejection_percent: spec.max_ejection_percent.unwrap_or(defaults.max_ejection_percent).min(100),
        })
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct EndpointState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// The ejection multiplier: grows with each ejection, decays while healthy.
    times_ejected: u32,
    /// Set while ejected; once past, the endpoint is half-open until its next result.
    ejected_until: Option<Instant>,
    last_decay: Option<Instant>,
}

impl EndpointState {
    fn ejected_at(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }
}

/// Per-endpoint health of one destination. Shared by the requests to it (a short mutex per call).
#[derive(Debug)]
pub struct OutlierDetector {
    config: OutlierConfig,
    endpoints: Mutex<HashMap<SocketAddr, EndpointState>>,
    ejections: AtomicU64,
}

impl OutlierDetector {
    pub fn new(config: OutlierConfig) -> Self {
        OutlierDetector { config, endpoints: Mutex::new(HashMap::new()), ejections: AtomicU64::new(0) }
    }

    /// The endpoints now in the pool: state of the others is forgotten; new ones start healthy.
    pub fn set_endpoints(&self, endpoints: &[SocketAddr]) {
        let mut states = self.lock();
        states.retain(|addr, _| endpoints.contains(addr));
        for addr in endpoints {
            states.entry(*addr).or_default();
        }
    }

    /// Records the outcome of one request to `endpoint`.
    pub fn record(&self, endpoint: SocketAddr, outcome: &impl Failure, now: Instant) {
        let mut states = self.lock();
        let state = *states.entry(endpoint).or_default();
        if state.ejected_at(now) {
            // A request sent before the ejection finishing now says nothing new.
            return;
        }
        let mut next = state;
        let half_open = state.ejected_until.is_some();
        if !outcome.is_failure() {
            next.consecutive_5xx = 0;
            next.consecutive_gateway = 0;
            next.ejected_until = None;
            if half_open {
                next.last_decay = Some(now);
            }
            states.insert(endpoint, next);
            return;
        }
        next.consecutive_5xx += 1;
        next.consecutive_gateway = if outcome.is_gateway_error() { next.consecutive_gateway + 1 } else { 0 };
        let tripped = self.config.consecutive_5xx.is_some_and(|n| next.consecutive_5xx >= n)
            || self.config.consecutive_gateway_errors.is_some_and(|n| next.consecutive_gateway >= n);
        // A half-open endpoint that fails goes straight back; it is still counted as ejected, so the
        // percentage cap does not stand in the way.
        if half_open || (tripped && self.may_eject(&states, now)) {
            next.times_ejected = next.times_ejected.saturating_add(1);
            let time = self.config.base_ejection_time.saturating_mul(next.times_ejected);
            next.ejected_until = Some(now + time.min(MAX_EJECTION_TIME.max(self.config.base_ejection_time)));
            next.consecutive_5xx = 0;
            next.consecutive_gateway = 0;
            next.last_decay = None;
            self.ejections.fetch_add(1, Relaxed);
        }
        states.insert(endpoint, next);
    }

    /// Whether one more endpoint may be ejected without exceeding `maxEjectionPercent`.
    fn may_eject(&self, states: &HashMap<SocketAddr, EndpointState>, now: Instant) -> bool {
        let ejected = states.values().filter(|s| s.ejected_at(now)).count();
        // As Envoy: at least one endpoint may always be ejected, whatever the percentage.
        ejected == 0 || (ejected + 1) * 100 <= self.config.max_ejection_percent as usize * states.len()
    }

    pub fn is_ejected(&self, endpoint: SocketAddr, now: Instant) -> bool {
        self.lock().get(&endpoint).is_some_and(|s| s.ejected_at(now))
    }

    pub fn ejected_count(&self, now: Instant) -> usize {
        self.lock().values().filter(|s| s.ejected_at(now)).count()
    }

    /// Appends to `out` the `endpoints` that are not ejected (one lock for the whole list).
    pub fn retain_available(&self, endpoints: &[SocketAddr], now: Instant, out: &mut Vec<SocketAddr>) {
        let states = self.lock();
        out.extend(endpoints.iter().filter(|e| !states.get(e).is_some_and(|s| s.ejected_at(now))));
    }

    /// Ejections so far (a counter for metrics).
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    /// Run every `interval`: a healthy endpoint's multiplier decays by one per interval.
    pub fn sweep(&self, now: Instant) {
        for state in self.lock().values_mut() {
            if state.ejected_until.is_some() || state.times_ejected == 0 {
                continue;
            }
            let since = *state.last_decay.get_or_insert(now);
            if now.saturating_duration_since(since) >= self.config.interval {
                state.times_ejected -= 1;
                state.last_decay = Some(now);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, EndpointState>> {
        self.endpoints.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP try's result as `http::retry::Outcome` classifies it (tested there).
    #[derive(Clone, Copy, Debug)]
    enum Outcome {
        Status(u16),
        Reset,
        ConnectFailure,
    }

    impl Failure for Outcome {
        fn is_failure(&self) -> bool {
            !matches!(self, Outcome::Status(s) if *s < 500)
        }

        fn is_gateway_error(&self) -> bool {
            !matches!(self, Outcome::Status(s) if !(502..=504).contains(s))
        }
    }

    const S500: Outcome = Outcome::Status(500);
    const S503: Outcome = Outcome::Status(503);
    const OK: Outcome = Outcome::Status(200);
    const NOT_FOUND: Outcome = Outcome::Status(404);

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i))).collect()
    }

    fn detector(max_percent: u32, n: u16) -> (OutlierDetector, Vec<SocketAddr>) {
        let config = OutlierConfig { max_ejection_percent: max_percent, ..OutlierConfig::default() };
        let detector = OutlierDetector::new(config);
        let endpoints = addrs(n);
        detector.set_endpoints(&endpoints);
        (detector, endpoints)
    }

    fn fail(d: &OutlierDetector, e: SocketAddr, times: u32, outcome: impl Failure, now: Instant) {
        for _ in 0..times {
            d.record(e, &outcome, now);
        }
    }

    #[test]
    fn consecutive_5xx_eject_for_base_times_count_then_half_open_decides() {
        let (d, eps) = detector(100, 2);
        let (a, t0) = (eps[0], Instant::now());
        let s = Duration::from_secs;
        fail(&d, a, 4, S500, t0);
        assert!(!d.is_ejected(a, t0), "four are not five");
        d.record(a, &Outcome::Reset, t0);
        assert!(d.is_ejected(a, t0));
        assert_eq!((d.ejected_count(t0), d.ejections()), (1, 1));
        assert!(d.is_ejected(a, t0 + s(29)));
        // Half-open after 30 s: one failure sends it back, for twice as long.
        assert!(!d.is_ejected(a, t0 + s(30)));
        d.record(a, &S503, t0 + s(30));
        assert!(d.is_ejected(a, t0 + s(89)) && !d.is_ejected(a, t0 + s(90)));
        // Half-open again: a success makes it healthy with fresh counters.
        d.record(a, &OK, t0 + s(90));
        fail(&d, a, 4, S500, t0 + s(91));
        assert!(!d.is_ejected(a, t0 + s(91)));
        assert_eq!(d.ejections(), 2);
    }

    #[test]
    fn successes_and_client_errors_break_the_streak() {
        let (d, eps) = detector(100, 2);
        let t0 = Instant::now();
        for _ in 0..3 {
            fail(&d, eps[0], 4, S500, t0);
            d.record(eps[0], &NOT_FOUND, t0);
        }
        assert!(!d.is_ejected(eps[0], t0));
    }

    #[test]
    fn results_from_before_the_ejection_are_ignored() {
        let (d, eps) = detector(100, 2);
        let t0 = Instant::now();
        fail(&d, eps[0], 5, S500, t0);
        d.record(eps[0], &OK, t0 + Duration::from_secs(1));
        assert!(d.is_ejected(eps[0], t0 + Duration::from_secs(1)), "a late success does not re-admit early");
    }

    #[test]
    fn never_more_than_max_ejection_percent() {
        let (d, eps) = detector(50, 4);
        let t0 = Instant::now();
        for e in &eps {
            fail(&d, *e, 5, S500, t0);
        }
        assert_eq!(d.ejected_count(t0), 2);
        let mut available = Vec::new();
        d.retain_available(&eps, t0, &mut available);
        assert_eq!(available, eps[2..]);
        // 10 % of 3 endpoints is less than one endpoint, but as in Envoy one may always be ejected; not two.
        let (d, eps) = detector(10, 3);
        fail(&d, eps[0], 10, S500, t0);
        fail(&d, eps[1], 10, S500, t0);
        assert_eq!((d.ejected_count(t0), d.ejections()), (1, 1));
    }

    #[test]
    fn gateway_errors_count_only_502_to_504() {
        let config = OutlierConfig {
            consecutive_5xx: None,
            consecutive_gateway_errors: Some(3),
            max_ejection_percent: 100,
            ..Default::default()
        };
        let d = OutlierDetector::new(config);
        let (a, b, t0) = (addrs(2)[0], addrs(2)[1], Instant::now());
        d.set_endpoints(&[a, b]);
        fail(&d, a, 10, S500, t0);
        assert!(!d.is_ejected(a, t0));
        fail(&d, a, 2, S503, t0);
        d.record(a, &Outcome::ConnectFailure, t0);
        assert!(d.is_ejected(a, t0));
    }

    /// Issue 15: on TCP ports, connect failures in a row eject; an established connection breaks the streak.
    #[test]
    fn tcp_connect_failures_are_gateway_errors() {
        let config =
            OutlierConfig { consecutive_gateway_errors: Some(2), max_ejection_percent: 50, ..Default::default() };
        let d = OutlierDetector::new(config);
        let eps = addrs(2);
        d.set_endpoints(&eps);
        let (t0, s) = (Instant::now(), Duration::from_secs);
        d.record(eps[0], &Connect::Failed, t0);
        d.record(eps[0], &Connect::Established, t0);
        d.record(eps[0], &Connect::Failed, t0);
        assert!(!d.is_ejected(eps[0], t0));
        d.record(eps[0], &Connect::Failed, t0);
        assert!(d.is_ejected(eps[0], t0) && !d.is_ejected(eps[0], t0 + s(30)));
        // 50 % of two: the other may not be ejected as well.
        fail(&d, eps[1], 5, Connect::Failed, t0);
        assert_eq!(d.ejected_count(t0), 1);
    }

    #[test]
    fn the_multiplier_decays_while_healthy() {
        let (d, eps) = detector(100, 2);
        let (a, t0, s) = (eps[0], Instant::now(), Duration::from_secs);
        fail(&d, a, 5, S500, t0);
        d.record(a, &S500, t0 + s(30)); // ejected twice: 60 s
        d.record(a, &OK, t0 + s(90));
        // Two intervals of health bring the multiplier from 2 back to 0; the next ejection is 30 s again.
        d.sweep(t0 + s(100));
        d.sweep(t0 + s(110));
        let t1 = t0 + s(111);
        fail(&d, a, 5, S500, t1);
        assert!(d.is_ejected(a, t1 + s(29)) && !d.is_ejected(a, t1 + s(30)));
    }

    #[test]
    fn the_spec_compiles_with_istio_defaults() {
        let spec =
            OutlierDetection { consecutive_5xx_errors: Some(0), interval: Some("1s".into()), ..Default::default() };
        let config = OutlierConfig::from_spec(&spec).expect("valid");
        assert_eq!(config.consecutive_5xx, None);
        assert_eq!(
            (config.interval, config.base_ejection_time, config.max_ejection_percent),
            (Duration::from_secs(1), Duration::from_secs(30), 10)
        );
        assert_eq!(OutlierConfig::from_spec(&OutlierDetection::default()).expect("valid").consecutive_5xx, Some(5));
        let bad = OutlierDetection { base_ejection_time: Some("forever".into()), ..Default::default() };
        assert!(OutlierConfig::from_spec(&bad).is_err());
    }

    #[test]
    fn forgotten_endpoints_leave_the_percentage() {
        let (d, eps) = detector(50, 2);
        let t0 = Instant::now();
        fail(&d, eps[0], 5, S500, t0);
        d.set_endpoints(&eps[1..]);
        assert_eq!(d.ejected_count(t0), 0);
    }
}
