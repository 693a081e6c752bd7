//! The proxy's one lifecycle: a drain signal that every accept loop and connection observes.
//!
//! SIGTERM (or the admin's `POST /drain`) starts the drain: readiness turns false at once, accept loops stop
//! accepting and close their listeners (a replacement proxy bound beside them with SO_REUSEPORT gets every new
//! connection), HTTP connections are told to go away (`Connection: close`, GOAWAY), and the process waits for
//! what is in flight to finish, up to a grace period, before it exits and the kernel closes the rest.
//!
//! Every accept loop and connection task holds a [`Watch`]; the drain is over when the last one is dropped.
//! A tokio `watch` channel gives both halves in one: its value says whether the drain has started, and
//! `Sender::closed` resolves when no receiver is left. Nothing else in the crate is used here, so any module
//! can depend on this one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Kubernetes' default `terminationGracePeriodSeconds`; the proxy's manifest gives the pod a little more.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// A longer grace would keep an old proxy (and its certificates and rules view) alive for longer than any
/// rollout should wait; a stream that needs more must reconnect anyway.
pub const MAX_GRACE: Duration = Duration::from_secs(3600);

/// The process's drain: started once, then awaited. Cheap to clone; clones share the one signal and do not
/// count as in-flight work (only [`Watch`]es do).
#[derive(Clone, Debug)]
pub struct Drain {
    tx: Arc<watch::Sender<bool>>,
}

/// Held by an accept loop or a connection for as long as it runs: it tells the holder when the drain starts,
/// and the drain waits until every `Watch` has been dropped.
#[derive(Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

/// How a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything in flight finished within the grace period.
    Drained,
    /// The grace period ran out with this many connections (and accept loops) still open.
    GraceExpired { still_open: usize },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraceError {
    #[error("{0}")]
    Malformed(String),
    #[error("a drain grace of {0:?} is longer than the limit of {MAX_GRACE:?}")]
    TooLong(Duration),
}

/// Parses `--drain-grace` (`30s`, `2m`, `500ms`, `1h`), bounded by [`MAX_GRACE`].
pub fn parse_grace(text: &str) -> Result<Duration, GraceError> {
    let grace = strait_api::parse_duration(text).map_err(|e| GraceError::Malformed(e.to_string()))?;
    if grace > MAX_GRACE {
        return Err(GraceError::TooLong(grace));
    }
    Ok(grace)
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Drain { tx: Arc::new(tx) }
    }

    /// A new handle for an accept loop or a connection; the drain waits for it to be dropped.
    pub fn watch(&self) -> Watch {
        Watch { rx: self.tx.subscribe() }
    }

    /// Starts the drain; true if this call started it (later calls change nothing).
    pub fn start(&self) -> bool {
        self.tx.send_if_modified(|draining| !std::mem::replace(draining, true))
    }

    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    /// Accept loops and connections still open.
    pub fn in_flight(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Resolves once the drain has started (at once if it has).
    pub async fn started(&self) {
        self.watch().signaled().await
    }

    /// Starts the drain if it has not started, then waits until every [`Watch`] is dropped or `grace` has passed.
    pub async fn finish(&self, grace: Duration) -> Outcome {
        self.start();
        match tokio::time::timeout(grace, self.tx.closed()).await {
            Ok(()) => Outcome::Drained,
            Err(_) => Outcome::GraceExpired { still_open: self.in_flight() },
        }
    }
}

impl Watch {
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the drain has started (at once if it has). Cancel-safe, so it can sit in a `select!` loop.
    pub async fn signaled(&mut self) {
        if self.rx.wait_for(|draining| *draining).await.is_err() {
            // The `Drain` is gone, so nobody can start one any more: never signaled.
            std::future::pending::<()>().await;
        }
    }
}

impl Clone for Watch {
    /// Another handle on the same drain, counted on its own (a connection handing work to a second task).
    fn clone(&self) -> Self {
        Watch { rx: self.rx.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn finishes_as_soon_as_the_last_watch_is_dropped() {
        let drain = Drain::new();
        let mut connection = drain.watch();
        let task = tokio::spawn(async move {
            connection.signaled().await;
            // In-flight work that needs 5 s after the signal.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        assert_eq!(drain.in_flight(), 1);
        let started = tokio::time::Instant::now();
        assert_eq!(drain.finish(Duration::from_secs(30)).await, Outcome::Drained);
        assert_eq!(started.elapsed(), Duration::from_secs(5), "the drain ends with the work, not at the grace");
        task.await.expect("the connection task");
        assert_eq!(drain.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_grace_and_counts_what_is_left() {
        let drain = Drain::new();
        let _stuck = drain.watch();
        let _another = drain.watch();
        let started = tokio::time::Instant::now();
        assert_eq!(drain.finish(Duration::from_secs(30)).await, Outcome::GraceExpired { still_open: 2 });
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn with_nothing_in_flight_it_finishes_at_once() {
        let drain = Drain::new();
        let started = tokio::time::Instant::now();
        assert_eq!(drain.finish(DEFAULT_GRACE).await, Outcome::Drained);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn watches_see_the_signal_once_and_late_ones_at_once() {
        let drain = Drain::new();
        let mut early = drain.watch();
        assert!(!early.is_draining() && !drain.is_draining());
        let not_yet = tokio::time::timeout(Duration::from_secs(3600), early.signaled()).await;
        assert!(not_yet.is_err(), "no signal before the drain starts");

        assert!(drain.start(), "the first start starts it");
        assert!(!drain.start(), "later starts change nothing");
        assert!(drain.is_draining() && early.is_draining());
        early.signaled().await;
        early.signaled().await; // and stays signaled
        let mut late = drain.watch();
        assert!(late.is_draining());
        late.signaled().await;
        drain.started().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_of_a_dropped_drain_is_never_signaled() {
        let drain = Drain::new();
        let mut watch = drain.watch();
        drop(drain);
        assert!(tokio::time::timeout(Duration::from_secs(3600), watch.signaled()).await.is_err());
    }

    #[test]
    fn grace_is_parsed_and_bounded() {
        assert_eq!(parse_grace("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_grace("1h"), Ok(MAX_GRACE));
        assert_eq!(parse_grace("61m"), Err(GraceError::TooLong(Duration::from_secs(61 * 60))));
        assert!(matches!(parse_grace("soon"), Err(GraceError::Malformed(_))));
        assert!(matches!(parse_grace(""), Err(GraceError::Malformed(_))));
    }
}
