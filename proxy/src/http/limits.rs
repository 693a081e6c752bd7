//! Connection-pool limits (Istio `connectionPool.http`): at most `maxRequests` requests in flight to a
//! destination, at most `maxPendingRequests` waiting for one of those slots, and anything beyond that fails at
//! once with [`Overflow`] (answer 503 with response flag `UO`). Like linkerd's fail-fast queue in front of the
//! balancer: overload becomes a fast, visible error, never an unbounded queue.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use strait_api::HttpPool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A bound on waiting requests when `maxRequests` is set but `maxPendingRequests` is not (Istio's default is
/// effectively unlimited; an unbounded queue only turns overload into latency and memory).
pub const DEFAULT_MAX_PENDING: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// `None`: no limit on requests in flight (and so nothing ever waits).
    pub max_requests: Option<usize>,
    pub max_pending: usize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits { max_requests: None, max_pending: DEFAULT_MAX_PENDING }
    }
}

impl PoolLimits {
    /// At most `max_connections` requests in flight, when each holds one upstream connection (HTTP/1.1):
    /// `tcp.maxConnections` on an HTTP port, as Envoy applies it. Requests beyond wait in the pending queue
    /// for a connection, and overflow past it, as for `maxRequests`.
    pub fn with_connection_cap(self, max_connections: Option<u32>) -> Self {
        let Some(cap) = max_connections.filter(|c| *c > 0).map(|c| c as usize) else { return self };
        PoolLimits { max_requests: Some(self.max_requests.map_or(cap, |m| m.min(cap))), ..self }
    }

    /// As Istio, zero means "not set".
    pub fn from_spec(pool: Option<&HttpPool>) -> Self {
        let set = |v: Option<u32>| v.filter(|v| *v > 0).map(|v| v as usize);
        let Some(pool) = pool else { return PoolLimits::default() };
        PoolLimits {
            max_requests: set(pool.max_requests),
            max_pending: set(pool.max_pending_requests).unwrap_or(DEFAULT_MAX_PENDING),
        }
    }
}

/// The request was refused because the destination's limits are full: 503, response flag `UO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("upstream overflow: {max_requests} requests in flight and {max_pending} waiting (connectionPool.http limits)")]
pub struct Overflow {
    pub max_requests: usize,
    pub max_pending: usize,
}

/// The shared state of one destination's limits. Cheap to check; no lock on the fast path.
#[derive(Debug)]
pub struct Limiter {
    limits: PoolLimits,
    permits: Option<Arc<Semaphore>>,
    pending: AtomicUsize,
    overflows: AtomicU64,
}

/// Held while a request is in flight; dropping it frees the slot. Attach it to the response body to count the
/// request until its body ends.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Limiter {
    pub fn new(limits: PoolLimits) -> Arc<Limiter> {
        Arc::new(Limiter {
            limits,
            permits: limits.max_requests.map(|n| Arc::new(Semaphore::new(n))),
            pending: AtomicUsize::new(0),
            overflows: AtomicU64::new(0),
        })
    }

    /// A slot for one request: at once if one is free, after waiting if fewer than `max_pending` already
    /// wait, else `Overflow` immediately.
    pub async fn acquire(&self) -> Result<Permit, Overflow> {
        let Some(permits) = &self.permits else { return Ok(Permit(None)) };
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            return Ok(Permit(Some(permit)));
        }
        let waiting = Pending::enter(&self.pending, self.limits.max_pending).ok_or_else(|| {
            self.overflows.fetch_add(1, Relaxed);
            Overflow { max_requests: permits_max(&self.limits), max_pending: self.limits.max_pending }
        })?;
        // The semaphore is never closed, so this only fails if it were; treat that as an overflow too.
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Overflow { max_requests: permits_max(&self.limits), max_pending: self.limits.max_pending });
        drop(waiting);
        Ok(Permit(Some(permit?)))
    }

    pub fn limits(&self) -> PoolLimits {
        self.limits
    }

    /// Requests refused so far (for the `UO` metric).
    pub fn overflows(&self) -> u64 {
        self.overflows.load(Relaxed)
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        match (&self.permits, self.limits.max_requests) {
            (Some(permits), Some(max)) => max.saturating_sub(permits.available_permits()),
            _ => 0,
        }
    }
}

fn permits_max(limits: &PoolLimits) -> usize {
    limits.max_requests.unwrap_or(0)
}

/// One place in the pending count, given back on drop (also when the waiting request is cancelled).
struct Pending<'a>(&'a AtomicUsize);

impl<'a> Pending<'a> {
    fn enter(pending: &'a AtomicUsize, max: usize) -> Option<Self> {
        pending.fetch_update(Relaxed, Relaxed, |n| (n < max).then_some(n + 1)).ok().map(|_| Pending(pending))
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::{sleep, Instant};

    fn limiter(max_requests: usize, max_pending: usize) -> Arc<Limiter> {
        Limiter::new(PoolLimits { max_requests: Some(max_requests), max_pending })
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_in_flight_and_pending_requests_fail_at_once() {
        let limiter = limiter(2, 1);
        let a = limiter.acquire().await.expect("first");
        let _b = limiter.acquire().await.expect("second");
        assert_eq!(limiter.in_flight(), 2);

        let waiter = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire().await.map(|_| Instant::now()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(limiter.pending(), 1);

        let start = Instant::now();
        let refused = limiter.acquire().await.expect_err("the fourth overflows");
        assert_eq!(start.elapsed(), Duration::ZERO, "refusing never waits");
        assert_eq!(refused, Overflow { max_requests: 2, max_pending: 1 });
        assert_eq!(limiter.overflows(), 1);

        sleep(Duration::from_secs(1)).await;
        drop(a);
        let admitted_at = waiter.await.expect("task").expect("admitted once a slot frees");
        assert_eq!(admitted_at - start, Duration::from_secs(1));
        assert_eq!(limiter.pending(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_gives_its_place_back() {
        let limiter = limiter(1, 1);
        let _held = limiter.acquire().await.expect("first");
        let timed_out = tokio::time::timeout(Duration::from_millis(10), limiter.acquire()).await;
        assert!(timed_out.is_err());
        assert_eq!(limiter.pending(), 0);
        // The place is free again: a new waiter is accepted (and times out), not refused.
        assert!(tokio::time::timeout(Duration::from_millis(10), limiter.acquire()).await.is_err());
        assert_eq!(limiter.overflows(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_limits_admit_everything() {
        let limiter = Limiter::new(PoolLimits::from_spec(None));
        let permits: Vec<Permit> =
            futures_util::future::try_join_all((0..10_000).map(|_| limiter.acquire())).await.expect("all");
        assert_eq!((permits.len(), limiter.overflows()), (10_000, 0));
    }

    #[test]
    fn max_connections_caps_requests_in_flight_over_http1() {
        let pool = HttpPool { max_pending_requests: Some(50), ..Default::default() };
        let limits = PoolLimits::from_spec(Some(&pool));
        assert_eq!(limits.with_connection_cap(Some(100)), PoolLimits { max_requests: Some(100), max_pending: 50 });
        assert_eq!(limits.with_connection_cap(None), limits);
        assert_eq!(limits.with_connection_cap(Some(0)), limits, "zero is unset");
        let both = PoolLimits { max_requests: Some(10), max_pending: 50 };
        assert_eq!(both.with_connection_cap(Some(100)).max_requests, Some(10), "the lower of the two");
    }

    #[test]
    fn limits_from_the_spec_treat_zero_as_unset() {
        let pool = HttpPool { max_requests: Some(100), max_pending_requests: Some(50), ..Default::default() };
        assert_eq!(PoolLimits::from_spec(Some(&pool)), PoolLimits { max_requests: Some(100), max_pending: 50 });
        let pool = HttpPool { max_requests: Some(0), max_pending_requests: Some(0), ..Default::default() };
        assert_eq!(
            PoolLimits::from_spec(Some(&pool)),
            PoolLimits { max_requests: None, max_pending: DEFAULT_MAX_PENDING }
        );
    }
}
