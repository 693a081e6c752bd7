//! Choosing one endpoint among the available ones (already filtered for readiness and outlier ejection).
//!
//! The default is linkerd's: power of two choices over peak-EWMA latency. Two endpoints are drawn at random
//! and the cheaper one wins, cost = latency estimate × (requests in flight + 1). The estimate jumps up to any
//! slower observation at once ("peak") and decays toward faster ones with a 10 s time constant, so a slowing
//! endpoint is avoided quickly and trusted again gradually. An endpoint without data starts at `default_rtt`,
//! so a new endpoint is neither flooded nor starved. P2C needs no global ordering, and unlike "pick the
//! least loaded" it does not send every client's next request to the same endpoint at once.
//!
//! On a TCP port a "request" is a connection: in flight while it is open (so `LEAST_REQUEST` picks the
//! endpoint with fewer open connections of two) and its latency is the time it took to connect.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use strait_api::bounds::{DEFAULT_RING_SIZE, MAX_RING_SIZE};
use strait_api::{LoadBalancer, SimpleLb, MAGLEV_REFUSED};
use tokio::time::Instant;

use super::hash::HashOn;
use super::ring::Ring;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// P2C over latency × load (the default).
    PeakEwma,
    /// P2C over requests (on TCP: connections) in flight.
    LeastRequest,
    RoundRobin,
    Random,
    /// A ring hash on a key; random when the request has none. `ring_size`: `ringHash.minimumRingSize`.
    ConsistentHash {
        on: HashOn,
        ring_size: u64,
    },
}

impl Strategy {
    /// Istio's `loadBalancer`: `simple` or `consistentHash`; absent means peak EWMA.
    pub fn from_spec(lb: Option<&LoadBalancer>) -> Result<Strategy, String> {
        let Some(lb) = lb else { return Ok(Strategy::PeakEwma) };
        match (&lb.simple, &lb.consistent_hash) {
            (Some(_), Some(_)) => Err("loadBalancer: set either simple or consistentHash".into()),
            (Some(SimpleLb::PeakEwma), None) | (None, None) => Ok(Strategy::PeakEwma),
            (Some(SimpleLb::LeastRequest), None) => Ok(Strategy::LeastRequest),
            (Some(SimpleLb::RoundRobin), None) => Ok(Strategy::RoundRobin),
            (Some(SimpleLb::Random), None) => Ok(Strategy::Random),
            (None, Some(hash)) => {
                if hash.maglev.is_some() {
                    return Err(format!("loadBalancer.consistentHash.maglev: {MAGLEV_REFUSED}"));
                }
                let ring_size = hash.ring_hash.as_ref().and_then(|r| r.minimum_ring_size).unwrap_or(DEFAULT_RING_SIZE);
                if !(1..=MAX_RING_SIZE).contains(&ring_size) {
                    return Err(format!(
                        "loadBalancer.consistentHash.ringHash.minimumRingSize: must be 1-{MAX_RING_SIZE}"
                    ));
                }
                Ok(Strategy::ConsistentHash { on: HashOn::from_spec(hash)?, ring_size })
            }
        }
    }

    /// The consistent hash's key, if this is one.
    pub fn hash_on(&self) -> Option<&HashOn> {
        match self {
            Strategy::ConsistentHash { on, .. } => Some(on),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EwmaConfig {
    /// Time constant of the decay toward newer, faster observations.
    pub decay: Duration,
    /// The estimate of an endpoint with no observations yet.
    pub default_rtt: Duration,
}

impl Default for EwmaConfig {
    /// linkerd2-proxy's values.
    fn default() -> Self {
        EwmaConfig { decay: Duration::from_secs(10), default_rtt: Duration::from_millis(30) }
    }
}

#[derive(Debug)]
struct Load {
    in_flight: AtomicUsize,
    ewma: Mutex<Ewma>,
}

#[derive(Clone, Copy, Debug)]
struct Ewma {
    rtt_ns: f64,
    at: Instant,
    /// Until the first answer, the estimate is a guess (`default_rtt`); the first real latency replaces it
    /// outright instead of being averaged into the guess, so a fast new endpoint does not look slow for the
    /// whole decay time.
    observed: bool,
}

impl Ewma {
    /// The estimate at `now`, decayed toward zero since the last observation (an idle endpoint looks better
    /// over time, so it is tried again).
    fn at(&self, now: Instant, decay_ns: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
        self.rtt_ns * (-elapsed / decay_ns).exp()
    }

    fn observe(&mut self, rtt: Duration, now: Instant, decay_ns: f64) {
        let rtt_ns = rtt.as_nanos() as f64;
        if !self.observed {
            self.observed = true;
            self.rtt_ns = rtt_ns;
            self.at = now;
            return;
        }
        let current = self.at(now, decay_ns);
        self.rtt_ns = if rtt_ns > current {
            rtt_ns
        } else {
            let weight = (-(now.saturating_duration_since(self.at).as_nanos() as f64) / decay_ns).exp();
            self.rtt_ns * weight + rtt_ns * (1.0 - weight)
        };
        self.at = now;
    }
}

/// Picks endpoints for one destination and keeps the per-endpoint load it needs.
#[derive(Debug)]
pub struct Balancer {
    strategy: Strategy,
    ewma: EwmaConfig,
    loads: Mutex<HashMap<SocketAddr, Arc<Load>>>,
    next: AtomicUsize,
    /// Consistent hashing only: the ring of the endpoints last given to [`Balancer::set_endpoints`].
    ring: Mutex<Arc<Ring>>,
}

impl Balancer {
    pub fn new(strategy: Strategy) -> Self {
        Balancer::with_ewma(strategy, EwmaConfig::default())
    }

    pub fn with_ewma(strategy: Strategy, ewma: EwmaConfig) -> Self {
        Balancer {
            strategy,
            ewma,
            loads: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            ring: Mutex::new(Arc::default()),
        }
    }

    /// One of `endpoints`, or `None` if there are none. `hash_key` is used by consistent hashing only.
    pub fn pick(&self, endpoints: &[SocketAddr], hash_key: Option<&[u8]>, rng: &mut impl Rng) -> Option<SocketAddr> {
        match endpoints {
            [] => return None,
            [only] => return Some(*only),
            _ => {}
        }
        let len = endpoints.len();
        let chosen = match &self.strategy {
            Strategy::RoundRobin => endpoints[self.next.fetch_add(1, Relaxed) % len],
            Strategy::Random => endpoints[rng.random_range(0..len)],
            Strategy::ConsistentHash { .. } => {
                let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner()).clone();
                match hash_key.and_then(|key| ring.get(key, endpoints)) {
                    Some(endpoint) => endpoint,
                    None => endpoints[rng.random_range(0..len)],
                }
            }
            Strategy::LeastRequest | Strategy::PeakEwma => {
                let first = rng.random_range(0..len);
                let mut second = rng.random_range(0..len - 1);
                if second >= first {
                    second += 1;
                }
                let (a, b) = (endpoints[first], endpoints[second]);
                let now = Instant::now();
                let loads = self.lock();
                if self.cost(loads.get(&b), now) < self.cost(loads.get(&a), now) {
                    b
                } else {
                    a
                }
            }
        };
        Some(chosen)
    }

    /// [`Balancer::pick`] for a try of a request that already went to `tried` (each of which failed it, or
    /// it would not be retried): among the endpoints it has not tried while there are any, as Istio's default
    /// `previous_hosts` retry predicate (which re-picks up to 5 times; filtering first never needs to).
    /// Consistent hashing keeps its choice, as Istio skips the predicate there: affinity is what it is for.
    pub fn pick_avoiding(
        &self,
        endpoints: &[SocketAddr],
        hash_key: Option<&[u8]>,
        tried: &[SocketAddr],
        rng: &mut impl Rng,
    ) -> Option<SocketAddr> {
        if tried.is_empty() || matches!(self.strategy, Strategy::ConsistentHash { .. }) {
            return self.pick(endpoints, hash_key, rng);
        }
        let fresh: Vec<SocketAddr> = endpoints.iter().filter(|e| !tried.contains(e)).copied().collect();
        self.pick(if fresh.is_empty() { endpoints } else { &fresh }, hash_key, rng)
    }

    fn cost(&self, load: Option<&Arc<Load>>, now: Instant) -> f64 {
        // Never tried: free, so it gets its one probe; while that probe is out it costs the default guess times
        // the requests in flight, so a new endpoint is neither starved nor flooded.
        let Some(load) = load else { return 0.0 };
        let in_flight = load.in_flight.load(Relaxed) as f64;
        if self.strategy == Strategy::LeastRequest {
            return in_flight;
        }
        let ewma = *load.ewma.lock().unwrap_or_else(|e| e.into_inner());
        if !ewma.observed && in_flight == 0.0 {
            return 0.0;
        }
        ewma.at(now, self.decay_ns()) * (in_flight + 1.0)
    }

    fn decay_ns(&self) -> f64 {
        (self.ewma.decay.as_nanos() as f64).max(1.0)
    }

    /// Marks a request to `endpoint` as started; the guard counts it in flight until dropped and then feeds
    /// its latency to the estimate (the time until [`InFlightGuard::finish`], or until dropped).
    pub fn start(&self, endpoint: SocketAddr) -> InFlightGuard {
        let now = Instant::now();
        let load = self
            .lock()
            .entry(endpoint)
            .or_insert_with(|| {
                let rtt_ns = self.ewma.default_rtt.as_nanos() as f64;
                let ewma = Ewma { rtt_ns, at: now, observed: false };
                Arc::new(Load { in_flight: AtomicUsize::new(0), ewma: Mutex::new(ewma) })
            })
            .clone();
        load.in_flight.fetch_add(1, Relaxed);
        InFlightGuard { load, started: now, decay_ns: self.decay_ns(), latency: None, failed: false }
    }

    /// The endpoints now in the pool (ready, any subset): forgets the load of the others (requests in flight to
    /// them finish normally) and, under consistent hashing, rebuilds the ring when the set changed.
    pub fn set_endpoints(&self, endpoints: &[SocketAddr]) {
        self.lock().retain(|addr, _| endpoints.contains(addr));
        let Strategy::ConsistentHash { ring_size, .. } = self.strategy else { return };
        let mut sorted = endpoints.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.endpoints() != sorted.as_slice() {
            *ring = Arc::new(Ring::new(&sorted, ring_size));
        }
    }

    /// Requests in flight to `endpoint` (for /config_dump and tests).
    #[cfg(test)]
    pub fn in_flight(&self, endpoint: SocketAddr) -> usize {
        self.lock().get(&endpoint).map_or(0, |l| l.in_flight.load(Relaxed))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Load>>> {
        self.loads.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One request in flight to one endpoint.
#[derive(Debug)]
pub struct InFlightGuard {
    load: Arc<Load>,
    started: Instant,
    decay_ns: f64,
    latency: Option<Duration>,
    failed: bool,
}

/// The latency a failed request counts as. An endpoint that answers 503 in a millisecond would otherwise look
/// like the fastest of all and draw ever more traffic to fail; counted as a second, it is avoided at once (the
/// peak) and tried again as the estimate decays (about a minute for a millisecond-fast alternative).
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

impl InFlightGuard {
    /// The request failed (a 5xx, a reset, no connection): its latency counts as at least [`FAILURE_PENALTY`].
    pub fn failed(&mut self) {
        self.failed = true;
    }

    /// Ends the request with a measured latency (e.g. time to the response head, rather than to the end of
    /// a long streamed body).
    #[cfg(test)]
    pub fn finish(mut self, latency: Duration) {
        self.latency = Some(latency);
    }

    /// The latency to count when the guard is dropped, instead of the time until then: a TCP connection
    /// counts its connect time, and stays in flight while it is open.
    pub fn set_latency(&mut self, latency: Duration) {
        self.latency = Some(latency);
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut latency = self.latency.unwrap_or_else(|| now.saturating_duration_since(self.started));
        if self.failed {
            latency = latency.max(FAILURE_PENALTY);
        }
        self.load.ewma.lock().unwrap_or_else(|e| e.into_inner()).observe(latency, now, self.decay_ns);
        self.load.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use strait_api::{ConsistentHash, Maglev, RingHash};

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n).map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080))).collect()
    }

    fn count(b: &Balancer, eps: &[SocketAddr], target: SocketAddr, draws: usize, rng: &mut StdRng) -> usize {
        (0..draws).filter(|_| b.pick(eps, None, rng) == Some(target)).count()
    }

    #[test]
    fn p2c_least_request_prefers_the_less_loaded_endpoint() {
        let b = Balancer::new(Strategy::LeastRequest);
        let eps = addrs(3);
        let mut rng = StdRng::seed_from_u64(1);
        let _busy: Vec<InFlightGuard> = (0..5).map(|_| b.start(eps[0])).collect();
        let _one = b.start(eps[1]);
        assert_eq!(b.in_flight(eps[0]), 5);
        // eps[0] loses every comparison; eps[2] (idle) wins every comparison it is drawn into (2 of 3 pairs).
        assert_eq!(count(&b, &eps, eps[0], 3000, &mut rng), 0);
        let idle = count(&b, &eps, eps[2], 3000, &mut rng);
        assert!((1850..=2150).contains(&idle), "{idle}");
    }

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_prefers_the_fast_endpoint_and_reacts_to_a_slowdown_at_once() {
        let b = Balancer::new(Strategy::PeakEwma);
        let eps = addrs(2);
        let (fast, slow) = (eps[0], eps[1]);
        let mut rng = StdRng::seed_from_u64(2);
        // Observations spread over time: the EWMA moves with time, not with the number of samples.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            b.start(fast).finish(Duration::from_millis(5));
            b.start(slow).finish(Duration::from_millis(80));
        }
        assert_eq!(count(&b, &eps, fast, 1000, &mut rng), 1000);
        // Load counts too: 20 requests in flight make 5 ms cost more than 80 ms idle.
        let queue: Vec<InFlightGuard> = (0..20).map(|_| b.start(fast)).collect();
        assert_eq!(count(&b, &eps, slow, 1000, &mut rng), 1000);
        drop(queue);
        // One very slow response is believed immediately (dropping the guard measures elapsed time).
        let guard = b.start(fast);
        tokio::time::advance(Duration::from_millis(500)).await;
        drop(guard);
        assert_eq!(count(&b, &eps, slow, 1000, &mut rng), 1000);
        // ...and forgiven gradually: after quiet time and fast answers it is preferred again.
        tokio::time::advance(Duration::from_secs(30)).await;
        b.start(fast).finish(Duration::from_millis(5));
        b.start(slow).finish(Duration::from_millis(80));
        assert_eq!(count(&b, &eps, fast, 1000, &mut rng), 1000);
    }

    /// The flaky-pod scenario of issue 21: failing fast must not make an endpoint look fast.
    #[tokio::test(start_paused = true)]
    async fn an_endpoint_failing_fast_counts_as_slow() {
        let b = Balancer::new(Strategy::PeakEwma);
        let eps = addrs(2);
        let (failing, healthy) = (eps[0], eps[1]);
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let mut guard = b.start(failing);
            guard.failed();
            guard.finish(Duration::from_millis(1));
            b.start(healthy).finish(Duration::from_millis(20));
        }
        assert_eq!(count(&b, &eps, healthy, 1000, &mut rng), 1000);
        // Forgiven as its estimate decays while the other keeps answering in 20 ms: within a minute
        // (10 s x ln(1 s / 20 ms) is about 40 s) the failing endpoint is tried again.
        for _ in 0..60 {
            tokio::time::advance(Duration::from_secs(1)).await;
            b.start(healthy).finish(Duration::from_millis(20));
        }
        assert_eq!(count(&b, &eps, failing, 1000, &mut rng), 1000);
    }

    #[test]
    fn a_retry_avoids_the_endpoints_the_request_already_tried() {
        let mut rng = StdRng::seed_from_u64(5);
        let eps = addrs(3);
        for strategy in [Strategy::PeakEwma, Strategy::LeastRequest, Strategy::RoundRobin, Strategy::Random] {
            let b = Balancer::new(strategy.clone());
            for _ in 0..200 {
                assert_eq!(b.pick_avoiding(&eps, None, &eps[..2], &mut rng), Some(eps[2]), "{strategy:?}");
                let picked = b.pick_avoiding(&eps, None, &eps[..1], &mut rng);
                assert!(picked.is_some_and(|e| e != eps[0]), "{strategy:?}");
            }
            // Every endpoint tried: any of them, rather than none.
            assert!(b.pick_avoiding(&eps, None, &eps, &mut rng).is_some());
        }
        // Consistent hashing keeps the key's endpoint, tried or not.
        let b = hashed(&eps);
        let home = b.pick(&eps, Some(b"user-7"), &mut rng);
        let tried: Vec<SocketAddr> = home.into_iter().collect();
        assert_eq!(b.pick_avoiding(&eps, Some(b"user-7"), &tried, &mut rng), home);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_endpoint_is_probed_then_judged_by_its_first_answer() {
        let b = Balancer::new(Strategy::PeakEwma);
        let eps = addrs(3);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            b.start(eps[0]).finish(Duration::from_millis(100));
            b.start(eps[1]).finish(Duration::from_millis(1));
        }
        // Never tried: it wins every comparison it is drawn into (2 of 3 pairs), so it is not starved.
        let untried = count(&b, &eps, eps[2], 3000, &mut rng);
        assert!((1850..=2150).contains(&untried), "{untried}");
        // Its probe in flight: it costs the 30 ms guess twice, better than ~100 ms, worse than ~1 ms: not flooded.
        let probe = b.start(eps[2]);
        assert_eq!(count(&b, &eps, eps[0], 1000, &mut rng), 0);
        let during = count(&b, &eps, eps[2], 3000, &mut rng);
        assert!((900..=1100).contains(&during), "{during}: wins only against eps[0]");
        // A 1 ms first answer replaces the guess outright: now it ties with the fast endpoint.
        probe.finish(Duration::from_millis(1));
        let after = count(&b, &eps, eps[2], 3000, &mut rng);
        assert!(after > 1200, "{after}: judged by its first answer");
    }

    #[test]
    fn round_robin_cycles() {
        let b = Balancer::new(Strategy::RoundRobin);
        let eps = addrs(3);
        let mut rng = StdRng::seed_from_u64(4);
        let picks: Vec<_> = (0..6).filter_map(|_| b.pick(&eps, None, &mut rng)).collect();
        assert_eq!(picks, [eps[0], eps[1], eps[2], eps[0], eps[1], eps[2]]);
        assert_eq!(b.pick(&[], None, &mut rng), None);
    }

    #[test]
    fn random_is_roughly_uniform() {
        let b = Balancer::new(Strategy::Random);
        let eps = addrs(4);
        let mut rng = StdRng::seed_from_u64(5);
        let n = count(&b, &eps, eps[3], 8000, &mut rng);
        assert!((1800..=2200).contains(&n), "{n}");
    }

    fn hashed(eps: &[SocketAddr]) -> Balancer {
        let b = Balancer::new(Strategy::ConsistentHash { on: HashOn::SourceIp, ring_size: 1024 });
        b.set_endpoints(eps);
        b
    }

    #[test]
    fn consistent_hash_is_sticky_and_moves_only_the_keys_of_endpoints_left_out() {
        let eps = addrs(4);
        let b = hashed(&eps);
        let mut rng = StdRng::seed_from_u64(6);
        let first = b.pick(&eps, Some(b"user-42"), &mut rng);
        assert!((0..100).all(|_| b.pick(&eps, Some(b"user-42"), &mut rng) == first));
        let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let placed: Vec<SocketAddr> = keys.iter().filter_map(|k| b.pick(&eps, Some(k.as_bytes()), &mut rng)).collect();
        // Left out of the candidates (ejected) or of the pool (a new configuration): the same keys move.
        let remaining = &eps[1..];
        let shrunk = hashed(remaining);
        for (key, before) in keys.iter().zip(&placed) {
            let ejected = b.pick(remaining, Some(key.as_bytes()), &mut rng);
            assert_eq!(shrunk.pick(remaining, Some(key.as_bytes()), &mut rng), ejected, "{key}");
            if *before != eps[0] {
                assert_eq!(ejected, Some(*before), "{key} moved although its endpoint stayed");
            }
        }
        // Without a key: any endpoint, at random.
        let unkeyed: std::collections::HashSet<_> = (0..200).filter_map(|_| b.pick(&eps, None, &mut rng)).collect();
        assert_eq!(unkeyed.len(), 4);
    }

    #[test]
    fn strategies_from_the_spec() {
        assert_eq!(Strategy::from_spec(None), Ok(Strategy::PeakEwma));
        let simple = LoadBalancer { simple: Some(SimpleLb::LeastRequest), ..Default::default() };
        assert_eq!(Strategy::from_spec(Some(&simple)), Ok(Strategy::LeastRequest));
        let hash = |f: &dyn Fn(&mut ConsistentHash)| {
            let mut hash = ConsistentHash::default();
            f(&mut hash);
            LoadBalancer { consistent_hash: Some(Box::new(hash)), ..Default::default() }
        };
        assert_eq!(
            Strategy::from_spec(Some(&hash(&|h| h.use_source_ip = Some(true)))),
            Ok(Strategy::ConsistentHash { on: HashOn::SourceIp, ring_size: 1024 })
        );
        let sized = hash(&|h| {
            h.http_cookie = Some("s".into());
            h.ring_hash = Some(RingHash { minimum_ring_size: Some(64) });
        });
        assert_eq!(
            Strategy::from_spec(Some(&sized)),
            Ok(Strategy::ConsistentHash { on: HashOn::Cookie("s".into()), ring_size: 64 })
        );
        let oversized = hash(&|h| {
            h.use_source_ip = Some(true);
            h.ring_hash = Some(RingHash { minimum_ring_size: Some(MAX_RING_SIZE + 1) });
        });
        let maglev = hash(&|h| {
            h.use_source_ip = Some(true);
            h.maglev = Some(Maglev { table_size: Some(65537) });
        });
        for (bad, field) in [
            (oversized, "ringHash.minimumRingSize"),
            (maglev, "consistentHash.maglev"),
            (hash(&|h| h.http_header_name = Some("bad header".into())), "httpHeaderName"),
        ] {
            let error = Strategy::from_spec(Some(&bad)).expect_err("refused");
            assert!(error.contains(field), "{error}");
        }
    }

    #[test]
    fn dropped_guards_leave_nothing_in_flight() {
        let b = Balancer::new(Strategy::PeakEwma);
        let e = addrs(1)[0];
        let guards: Vec<_> = (0..3).map(|_| b.start(e)).collect();
        assert_eq!(b.in_flight(e), 3);
        drop(guards);
        assert_eq!(b.in_flight(e), 0);
        b.set_endpoints(&[]);
        assert_eq!(b.in_flight(e), 0);
    }
}
