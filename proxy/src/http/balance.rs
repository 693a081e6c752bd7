//! Choosing one endpoint among the available ones (already filtered for readiness and outlier ejection).
//!
//! The default is linkerd's: power of two choices over peak-EWMA latency. Two endpoints are drawn at random
//! and the cheaper one wins, cost = latency estimate × (requests in flight + 1). The estimate jumps up to any
//! slower observation at once ("peak") and decays toward faster ones with a 10 s time constant, so a slowing
//! endpoint is avoided quickly and trusted again gradually. An endpoint without data starts at `default_rtt`,
//! so a new endpoint is neither flooded nor starved. P2C needs no global ordering, and unlike "pick the
//! least loaded" it does not send every client's next request to the same endpoint at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, COOKIE};
use rand::Rng;
use strait_api::{LoadBalancer, SimpleLb};
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// P2C over latency × load (the default).
    PeakEwma,
    /// P2C over requests in flight.
    LeastRequest,
    RoundRobin,
    Random,
    /// Rendezvous hashing on a request key; random when the request has none.
    ConsistentHash(HashOn),
}

/// Where a consistent-hash key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    Header(HeaderName),
    Cookie(String),
}

impl HashOn {
    /// The key in `headers`, if present (the first value of a repeated header).
    pub fn key<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        match self {
            HashOn::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            HashOn::Cookie(name) => headers.get_all(COOKIE).iter().find_map(|value| {
                value.as_bytes().split(|b| *b == b';').find_map(|pair| {
                    let pair = pair.trim_ascii();
                    let eq = pair.iter().position(|b| *b == b'=')?;
                    (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
                })
            }),
        }
    }
}

impl Strategy {
    /// Istio's `loadBalancer`: `simple` or `consistentHash` (header or cookie); absent means peak EWMA.
    pub fn from_spec(lb: Option<&LoadBalancer>) -> Result<Strategy, String> {
        let Some(lb) = lb else { return Ok(Strategy::PeakEwma) };
        match (&lb.simple, &lb.consistent_hash) {
            (Some(_), Some(_)) => Err("loadBalancer: set either simple or consistentHash".into()),
            (Some(SimpleLb::PeakEwma), None) | (None, None) => Ok(Strategy::PeakEwma),
            (Some(SimpleLb::LeastRequest), None) => Ok(Strategy::LeastRequest),
            (Some(SimpleLb::RoundRobin), None) => Ok(Strategy::RoundRobin),
            (Some(SimpleLb::Random), None) => Ok(Strategy::Random),
            (None, Some(hash)) => match (&hash.http_header_name, &hash.http_cookie) {
                (Some(header), None) => {
                    HeaderName::try_from(header.as_str()).map(|h| Strategy::ConsistentHash(HashOn::Header(h))).map_err(
                        |_| format!("loadBalancer.consistentHash.httpHeaderName: {header:?} is not a header name"),
                    )
                }
                (None, Some(cookie)) if !cookie.is_empty() => {
                    Ok(Strategy::ConsistentHash(HashOn::Cookie(cookie.clone())))
                }
                _ => Err("loadBalancer.consistentHash: set exactly one of httpHeaderName, httpCookie".into()),
            },
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
}

impl Balancer {
    pub fn new(strategy: Strategy) -> Self {
        Balancer::with_ewma(strategy, EwmaConfig::default())
    }

    pub fn with_ewma(strategy: Strategy, ewma: EwmaConfig) -> Self {
        Balancer { strategy, ewma, loads: Mutex::new(HashMap::new()), next: AtomicUsize::new(0) }
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
            Strategy::ConsistentHash(_) => match hash_key {
                Some(key) => rendezvous(endpoints, key),
                None => endpoints[rng.random_range(0..len)],
            },
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
        if tried.is_empty() || matches!(self.strategy, Strategy::ConsistentHash(_)) {
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

    /// Forgets endpoints no longer in the pool (requests in flight to them finish normally).
    pub fn retain(&self, endpoints: &[SocketAddr]) {
        self.lock().retain(|addr, _| endpoints.contains(addr));
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

/// Highest-random-weight hashing: every endpoint scores `hash(key, endpoint)`, the highest wins. A key keeps
/// its endpoint while that endpoint stays; removing one endpoint moves only the keys it had.
fn rendezvous(endpoints: &[SocketAddr], key: &[u8]) -> SocketAddr {
    let key_hash = fnv1a(FNV_OFFSET, key);
    let score = |e: &SocketAddr| {
        let hash = match e {
            SocketAddr::V4(v4) => fnv1a(key_hash, &v4.ip().octets()),
            SocketAddr::V6(v6) => fnv1a(key_hash, &v6.ip().octets()),
        };
        (mix(fnv1a(hash, &e.port().to_be_bytes())), *e)
    };
    endpoints.iter().map(score).max().map_or(endpoints[0], |(_, e)| e)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: stable across processes and versions (unlike std's hasher), so every proxy maps a key alike.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// splitmix64's finaliser: FNV alone spreads short inputs poorly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use strait_api::ConsistentHash;

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
        let b = Balancer::new(Strategy::ConsistentHash(HashOn::Header(HeaderName::from_static("x-user"))));
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

    #[test]
    fn consistent_hash_is_sticky_spreads_keys_and_moves_only_the_removed_endpoints_keys() {
        let b = Balancer::new(Strategy::ConsistentHash(HashOn::Header(HeaderName::from_static("x-user"))));
        let eps = addrs(4);
        let mut rng = StdRng::seed_from_u64(6);
        let first = b.pick(&eps, Some(b"user-42"), &mut rng);
        assert!((0..100).all(|_| b.pick(&eps, Some(b"user-42"), &mut rng) == first));

        let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
        let placed: Vec<SocketAddr> = keys.iter().filter_map(|k| b.pick(&eps, Some(k.as_bytes()), &mut rng)).collect();
        for e in &eps {
            let n = placed.iter().filter(|p| *p == e).count();
            assert!((400..=600).contains(&n), "{e} got {n} of 2000 keys");
        }
        let remaining = &eps[1..];
        for (key, before) in keys.iter().zip(&placed) {
            let after = b.pick(remaining, Some(key.as_bytes()), &mut rng);
            if *before != eps[0] {
                assert_eq!(after, Some(*before), "{key} moved although its endpoint stayed");
            }
        }
    }

    #[test]
    fn hash_keys_come_from_a_header_or_a_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().expect("value"));
        headers.append(COOKIE, "theme=dark; session=abc123".parse().expect("value"));
        assert_eq!(HashOn::Header(HeaderName::from_static("x-user")).key(&headers), Some(&b"alice"[..]));
        assert_eq!(HashOn::Cookie("session".into()).key(&headers), Some(&b"abc123"[..]));
        assert_eq!(HashOn::Cookie("sess".into()).key(&headers), None);
        assert_eq!(HashOn::Header(HeaderName::from_static("x-none")).key(&headers), None);
    }

    #[test]
    fn strategies_from_the_spec() {
        assert_eq!(Strategy::from_spec(None), Ok(Strategy::PeakEwma));
        let simple = LoadBalancer { simple: Some(SimpleLb::LeastRequest), ..Default::default() };
        assert_eq!(Strategy::from_spec(Some(&simple)), Ok(Strategy::LeastRequest));
        let hash = |h: Option<&str>, c: Option<&str>| LoadBalancer {
            consistent_hash: Some(ConsistentHash {
                http_header_name: h.map(Into::into),
                http_cookie: c.map(Into::into),
            }),
            ..Default::default()
        };
        assert_eq!(
            Strategy::from_spec(Some(&hash(Some("X-User"), None))),
            Ok(Strategy::ConsistentHash(HashOn::Header(HeaderName::from_static("x-user"))))
        );
        assert_eq!(
            Strategy::from_spec(Some(&hash(None, Some("s")))),
            Ok(Strategy::ConsistentHash(HashOn::Cookie("s".into())))
        );
        assert!(Strategy::from_spec(Some(&hash(Some("x"), Some("s")))).is_err());
        assert!(Strategy::from_spec(Some(&hash(Some("bad header"), None))).is_err());
    }

    #[test]
    fn dropped_guards_leave_nothing_in_flight() {
        let b = Balancer::new(Strategy::PeakEwma);
        let e = addrs(1)[0];
        let guards: Vec<_> = (0..3).map(|_| b.start(e)).collect();
        assert_eq!(b.in_flight(e), 3);
        drop(guards);
        assert_eq!(b.in_flight(e), 0);
        b.retain(&[]);
        assert_eq!(b.in_flight(e), 0);
    }
}
