//! The per-request resilience pieces, and the order they compose in (outermost first):
//!
//! 1. [`route`](super::route): `RouteTable::route(&parts)` picks the rule (none: forward to the service as is).
//!    Redirects and direct responses answer here. Apply `headers().request`.
//! 2. Fault injection: `fault_decision` → sleep for the delay, then answer the abort status (flag `FI`).
//! 3. Overall timeout: `tokio::time::timeout(route.timeout(), everything below)` → 504, flag `UT`.
//! 4. [`retry::retry_loop`](super::retry::retry_loop) with the route's policy, the destination's
//!    [`RetryBudget`] and [`RetryStats`]; per-try timeouts inside it → `RetryError::PerTryTimeout` → 504 `UT`.
//! 5. Per try: `pick_destination` (weighted) → the destination's [`Limiter::acquire`] → `Overflow` → 503
//!    `UO` (not retried: it is local back-pressure, and the budget would not help).
//! 6. Endpoint choice: [`OutlierDetector::retain_available`] filters the endpoints (if it leaves none, use
//!    all of them, as Envoy's panic threshold does), [`Balancer::pick`] chooses, [`Balancer::start`] counts it.
//! 7. Send; classify the result as an [`Outcome`]; `OutlierDetector::record` it; drop / `finish` the guard.
//!    Apply `headers().response` on the way back.
//!
//! Steps 5 to 7 are the `send` closure given to `retry_loop`, so each try re-picks its endpoint (a retry
//! should not go back to the endpoint that just failed, and P2C/outlier state makes that likely).

pub use super::body::DEFAULT_REPLAY_CAP;
pub use super::budget::{BudgetConfig, RetryBudget};
pub use super::limits::{Limiter, PoolLimits};
pub use super::retry::{retry_loop, Outcome, RetryError, RetryParams, RetryPolicy, RetryStats};
pub use super::route::{Action, FaultAction, ServiceRef};
pub use crate::balance::{Balancer, HashOn, OutlierConfig, OutlierDetector, Strategy};
