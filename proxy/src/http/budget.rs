//! A retry budget (finagle's / linkerd's TPS budget): retries may add at most `retry_ratio` of the live request
//! rate, plus a floor of `min_retries_per_second` so that a quiet service can still retry at all. Without a
//! budget, retries multiply load exactly when a service is failing (3 retries = 4x traffic to a sick backend).
//!
//! Accounting, as in finagle's `TokenRetryBudget`: each original request deposits `ratio` tokens, each retry
//! withdraws one token, and both deposits and withdrawals expire after `ttl`. A retry is allowed while the
//! tokens in the window plus the reserve (`min_retries_per_second * ttl`) cover one more withdrawal. Tokens are
//! scaled by 1000 so the arithmetic stays in integers.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const SCALE: f64 = 1000.0;
/// The window is kept as this many slots; an entry expires with its slot, at most `ttl / SLOTS` late.
const SLOTS: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// How long a deposit (or withdrawal) counts. Clamped to 1 s ..= 60 s, as finagle does.
    pub ttl: Duration,
    pub min_retries_per_second: u32,
    /// Fraction of the request rate that may be retried: 0.2 = one retry per five requests. Clamped to 0 ..= 1000.
    pub retry_ratio: f64,
}

/// The default ratio. Linkerd's 20 % cannot mask one endpoint of two failing half its requests (a quarter of
/// the requests need a retry); 50 % can, and a failing service still sees at most 1.5 times its load (plus
/// the floor), not the 4 times of three unbudgeted retries.
pub const DEFAULT_RETRY_RATIO: f64 = 0.5;
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ttl: Duration::from_secs(10),
            min_retries_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
            retry_ratio: DEFAULT_RETRY_RATIO,
        }
    }
}

impl BudgetConfig {
    /// A DestinationPolicy's `retryBudget`; what it leaves out keeps its default.
    pub fn from_spec(spec: Option<&strait_api::RetryBudget>) -> Self {
        let default = BudgetConfig::default();
        let Some(spec) = spec else { return default };
        BudgetConfig {
            retry_ratio: spec.percent.map_or(default.retry_ratio, |p| f64::from(p) / 100.0),
            min_retries_per_second: spec.min_retries_per_second.unwrap_or(default.min_retries_per_second),
            ..default
        }
    }
}

#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    deposit: i64,
    withdrawal: i64,
    reserve: i64,
    window: Mutex<Window>,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(BudgetConfig::default())
    }
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        let ttl = config.ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = if config.retry_ratio.is_finite() { config.retry_ratio.clamp(0.0, 1000.0) } else { 0.0 };
        RetryBudget {
            config,
            deposit: (ratio * SCALE) as i64,
            withdrawal: SCALE as i64,
            reserve: (f64::from(config.min_retries_per_second) * ttl.as_secs_f64() * SCALE) as i64,
            window: Mutex::new(Window::new(Instant::now(), ttl / SLOTS as u32)),
        }
    }

    /// What the budget was made from (a new configuration keeps the budget, and its window, when this is
    /// unchanged).
    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// Called once per original request (not per retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Called before each retry: `false` means the budget is spent and the last result must be returned.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    fn deposit_at(&self, now: Instant) {
        self.lock().add(now, self.deposit);
    }

    fn try_withdraw_at(&self, now: Instant) -> bool {
        let mut window = self.lock();
        if window.sum(now) + self.reserve >= self.withdrawal {
            window.add(now, -self.withdrawal);
            true
        } else {
            false
        }
    }

    /// Retries the budget would allow right now (for /config_dump and tests).
    pub fn available(&self) -> u64 {
        let balance = self.lock().sum(Instant::now()) + self.reserve;
        (balance.max(0) / self.withdrawal) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // The window holds only counters; a panic elsewhere cannot leave it inconsistent.
        self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A sliding sum over `SLOTS` slots of `width` each.
#[derive(Debug)]
struct Window {
    start: Instant,
    width: Duration,
    /// (epoch the slot holds, sum of that epoch)
    slots: [(u64, i64); SLOTS],
}

impl Window {
    fn new(start: Instant, width: Duration) -> Self {
        Window { start, width: width.max(Duration::from_millis(1)), slots: [(0, 0); SLOTS] }
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.start).as_nanos() / self.width.as_nanos()) as u64
    }

    fn add(&mut self, now: Instant, amount: i64) {
        let epoch = self.epoch(now);
        let slot = &mut self.slots[(epoch % SLOTS as u64) as usize];
        if slot.0 != epoch {
            *slot = (epoch, 0);
        }
        slot.1 += amount;
    }

    fn sum(&self, now: Instant) -> i64 {
        let epoch = self.epoch(now);
        self.slots.iter().filter(|(e, _)| *e + SLOTS as u64 > epoch && *e <= epoch).map(|(_, s)| s).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives `rps` original requests per second for `seconds`, retrying greedily (as many retries as the
    /// budget allows); returns the retries granted in each second.
    fn simulate(budget: &RetryBudget, start: Instant, rps: u32, seconds: u32) -> Vec<u32> {
        let step = Duration::from_millis(10);
        let mut per_second = vec![0; seconds as usize];
        for tick in 0..seconds * 100 {
            let now = start + step * tick;
            if rps > 0 && tick % (100 / rps.min(100)) == 0 {
                for _ in 0..rps.div_ceil(100) {
                    budget.deposit_at(now);
                }
            }
            while budget.try_withdraw_at(now) {
                per_second[(tick / 100) as usize] += 1;
            }
        }
        per_second
    }

    #[tokio::test(start_paused = true)]
    async fn steady_traffic_allows_ratio_plus_minimum() {
        let budget = RetryBudget::new(BudgetConfig { retry_ratio: 0.2, ..Default::default() });
        let per_second = simulate(&budget, Instant::now(), 100, 40);
        // Steady state over one 10 s window: 1000 requests * 0.2 + 10/s * 10 s = 300 retries = 30/s.
        let last_window: u32 = per_second[30..].iter().sum();
        assert!((285..=315).contains(&last_window), "{last_window} retries in 10 s: {per_second:?}");
        // The default, 50 %: 1000 * 0.5 + 100 = 600.
        let budget = RetryBudget::default();
        let per_second = simulate(&budget, Instant::now(), 100, 40);
        let last_window: u32 = per_second[30..].iter().sum();
        assert!((585..=615).contains(&last_window), "{last_window} retries in 10 s: {per_second:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_traffic_allows_only_the_minimum() {
        let budget = RetryBudget::default();
        let per_second = simulate(&budget, Instant::now(), 0, 40);
        // The reserve is 10/s * 10 s: spendable in a burst, replenished as the withdrawals expire.
        assert_eq!(per_second[0], 100, "{per_second:?}");
        let last_window: u32 = per_second[30..].iter().sum();
        assert!((95..=105).contains(&last_window), "{last_window} retries in 10 s: {per_second:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ratio_and_zero_minimum_allow_nothing() {
        let budget =
            RetryBudget::new(BudgetConfig { retry_ratio: 0.0, min_retries_per_second: 0, ..Default::default() });
        for _ in 0..100 {
            budget.deposit();
        }
        assert!(!budget.try_withdraw());
        assert_eq!(budget.available(), 0);
    }

    #[test]
    fn the_spec_sets_ratio_and_floor() {
        let spec = strait_api::RetryBudget { percent: Some(25), min_retries_per_second: None };
        let config = BudgetConfig::from_spec(Some(&spec));
        assert_eq!(config.retry_ratio, 0.25);
        assert_eq!(config.min_retries_per_second, DEFAULT_MIN_RETRIES_PER_SECOND);
        assert_eq!(BudgetConfig::from_spec(None), BudgetConfig::default());
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_expire_after_the_ttl() {
        let budget = RetryBudget::new(BudgetConfig { min_retries_per_second: 1, ..Default::default() });
        let granted = std::iter::from_fn(|| budget.try_withdraw().then_some(())).count();
        assert_eq!(granted, 10);
        assert!(!budget.try_withdraw());
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(budget.available(), 10);
    }
}
