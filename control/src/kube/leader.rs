//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go's leaderelection does it: every
//! replica serves pushes and signs certificates, and only the one holding the Lease writes status.
//!
//! - A candidate takes the Lease when it has none, when its holder released it (empty holder), or when the
//!   record (holder, renew time) has not changed for the holder's `leaseDurationSeconds` as measured on the
//!   candidate's own monotonic clock (never by comparing the holder's wall clock with ours: clocks skew).
//! - The holder renews every duration/3. Every write is a replace carrying the resourceVersion read, so two
//!   candidates racing for an expired Lease cannot both win: the API server answers the loser 409 Conflict.
//! - The holder steps down (stops writing status) as soon as one renewal fails or takes longer than the renew
//!   interval, which is well before any other replica may consider the Lease expired.
//! - On drain the holder releases the Lease (empty holder), so another replica takes over at its next try
//!   instead of a whole lease duration later.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// The shortest lease accepted: below it a renewal every third of it leaves no room for one slow request.
pub const MIN_LEASE_DURATION: Duration = Duration::from_secs(2);
/// The longest: a crashed leader's status writes stop for at most this long.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(300);
/// client-go's default.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// Which Lease, who we are, and how long a lease lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// The holder identity written in the Lease: the pod name, unique among the replicas.
    pub identity: String,
    /// Within [`MIN_LEASE_DURATION`]..=[`MAX_LEASE_DURATION`] (see [`check_duration`]).
    pub duration: Duration,
}

impl LeaseSettings {
    /// How often the holder renews and a candidate tries: a third of the lease, so two renewals may fail
    /// before the lease runs out.
    pub fn retry_interval(&self) -> Duration {
        self.duration / 3
    }
}

/// Refuses a lease duration outside the bounds, naming the flag.
pub fn check_duration(duration: Duration) -> Result<Duration, String> {
    if (MIN_LEASE_DURATION..=MAX_LEASE_DURATION).contains(&duration) {
        Ok(duration)
    } else {
        Err(format!("--leader-lease-duration {duration:?}: must be between 2s and 5m"))
    }
}

/// What to do with the Lease as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// We hold it: write a new renew time.
    Renew,
    /// Free (never held, released, or expired): write ourselves in as holder.
    Take,
    /// Someone else holds it and it is still valid.
    Follow { holder: String },
}

/// The last Lease record a candidate saw and since when (on its monotonic clock) it has been unchanged.
#[derive(Debug, Default)]
pub struct Observer {
    record: Option<(String, Option<MicroTime>)>,
    since: Option<Instant>,
}

impl Observer {
    /// Decides what to do with `spec` read at `now`; `default_duration` stands in for a record without one.
    pub fn step(&mut self, spec: &LeaseSpec, me: &str, now: Instant, default_duration: Duration) -> Step {
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let record = (holder.clone(), spec.renew_time.clone());
        if self.record.as_ref() != Some(&record) {
            self.record = Some(record);
            self.since = Some(now);
        }
        if holder == me {
            return Step::Renew;
        }
        if holder.is_empty() {
            return Step::Take;
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(default_duration);
        let since = self.since.unwrap_or(now);
        if now.saturating_duration_since(since) >= duration {
            Step::Take
        } else {
            Step::Follow { holder }
        }
    }
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)
}

/// `spec` with us as the holder (a new term when `take`), renewed now.
pub fn claimed(mut spec: LeaseSpec, me: &str, duration: Duration, take: bool) -> LeaseSpec {
    let now = micro_now();
    if take {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        spec.acquire_time = Some(now.clone());
    }
    spec.holder_identity = Some(me.to_string());
    spec.lease_duration_seconds = Some(seconds(duration));
    spec.renew_time = Some(now);
    spec
}

/// Tries once to hold the Lease: `Ok(true)` when we hold it now.
async fn attempt(api: &Api<Lease>, settings: &LeaseSettings, observer: &mut Observer) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                namespace: Some(settings.namespace.clone()),
                ..Default::default()
            },
            spec: Some(claimed(LeaseSpec::default(), &settings.identity, settings.duration, true)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Another replica created it first.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.take().unwrap_or_default();
    let take = match observer.step(&spec, &settings.identity, Instant::now(), settings.duration) {
        Step::Renew => false,
        Step::Take => true,
        Step::Follow { .. } => return Ok(false),
    };
    // The resourceVersion read stays in the metadata: the replace is refused (409) if anyone wrote meanwhile.
    lease.spec = Some(claimed(spec, &settings.identity, settings.duration, take));
    match api.replace(&settings.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up if we hold it: empty holder, so the next candidate takes it at once.
async fn release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else { return Ok(()) };
    let mut spec = lease.spec.take().unwrap_or_default();
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(micro_now());
    spec.lease_duration_seconds = Some(1);
    lease.spec = Some(spec);
    api.replace(&settings.name, &PostParams::default(), &lease).await.map(|_| ())
}

/// Runs the election until `drain` turns true, publishing whether we lead on `leader`; then releases the Lease
/// (if held) and stays a follower until dropped.
pub async fn run(
    client: kube::Client,
    settings: LeaseSettings,
    leader: watch::Sender<bool>,
    mut drain: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let interval = settings.retry_interval();
    let mut observer = Observer::default();
    loop {
        // A renewal slower than the interval counts as failed: by the time it returned, a third of the lease
        // would be gone and the next one might not make it.
        let leading = match tokio::time::timeout(interval, attempt(&api, &settings, &mut observer)).await {
            Ok(Ok(leading)) => leading,
            Ok(Err(e)) => {
                tracing::warn!(lease = %settings.name, error = %e, "cannot read or write the leader Lease");
                false
            }
            Err(_) => {
                tracing::warn!(lease = %settings.name, ?interval, "the leader Lease request timed out");
                false
            }
        };
        if leading != *leader.borrow() {
            if leading {
                tracing::info!(identity = %settings.identity, "leading: this replica writes status");
            } else {
                tracing::warn!(identity = %settings.identity, "not leading any more: status writes stop");
            }
            leader.send_replace(leading);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = drain.wait_for(|d| *d) => break,
        }
    }
    let was_leading = leader.send_replace(false);
    if was_leading {
        match tokio::time::timeout(interval, release(&api, &settings)).await {
            Ok(Ok(())) => tracing::info!(lease = %settings.name, "released the leader Lease"),
            Ok(Err(e)) => tracing::warn!(lease = %settings.name, error = %e, "cannot release the leader Lease"),
            Err(_) => tracing::warn!(lease = %settings.name, "releasing the leader Lease timed out"),
        }
    }
    // The control plane's tasks are expected to run until it stops.
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn held_by(holder: &str, renewed_at_second: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(
                k8s_openapi::jiff::Timestamp::from_second(renewed_at_second).expect("a valid timestamp"),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_held_by_someone_else_expires_a_duration_after_its_record_last_changed_here() {
        let start = Instant::now();
        let mut observer = Observer::default();
        let other = held_by("b", 100);
        assert_eq!(observer.step(&other, "a", start, LEASE), Step::Follow { holder: "b".into() });
        assert_eq!(observer.step(&other, "a", start + LEASE / 2, LEASE), Step::Follow { holder: "b".into() });
        // b renewed: the clock starts again, whatever b's wall clock says.
        let renewed = held_by("b", 50);
        assert_eq!(
            observer.step(&renewed, "a", start + LEASE - Duration::from_millis(1), LEASE),
            Step::Follow { holder: "b".into() }
        );
        assert_eq!(observer.step(&renewed, "a", start + LEASE + LEASE / 2, LEASE), Step::Follow { holder: "b".into() });
        assert_eq!(observer.step(&renewed, "a", start + 2 * LEASE, LEASE), Step::Take);
    }

    #[test]
    fn the_holders_duration_counts_not_ours() {
        let start = Instant::now();
        let mut observer = Observer::default();
        let mut short = held_by("b", 100);
        short.lease_duration_seconds = Some(3);
        observer.step(&short, "a", start, LEASE);
        assert_eq!(observer.step(&short, "a", start + Duration::from_secs(3), LEASE), Step::Take);
        let mut unset = held_by("c", 100);
        unset.lease_duration_seconds = None;
        observer.step(&unset, "a", start, LEASE);
        assert!(matches!(observer.step(&unset, "a", start + Duration::from_secs(14), LEASE), Step::Follow { .. }));
        assert_eq!(observer.step(&unset, "a", start + LEASE, LEASE), Step::Take);
    }

    #[test]
    fn ours_is_renewed_and_a_free_one_is_taken_at_once() {
        let now = Instant::now();
        let mut observer = Observer::default();
        assert_eq!(observer.step(&held_by("a", 1), "a", now, LEASE), Step::Renew);
        assert_eq!(observer.step(&LeaseSpec::default(), "a", now, LEASE), Step::Take);
        let released = LeaseSpec { holder_identity: Some(String::new()), ..held_by("", 5) };
        assert_eq!(observer.step(&released, "a", now, LEASE), Step::Take);
    }

    #[test]
    fn taking_starts_a_new_term_and_renewing_does_not() {
        let taken = claimed(held_by("b", 100), "a", Duration::from_secs(6), true);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.lease_duration_seconds, Some(6));
        assert!(taken.acquire_time.is_some());
        let renewed = claimed(taken.clone(), "a", Duration::from_secs(6), false);
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, taken.acquire_time);
        assert!(renewed.renew_time >= taken.renew_time);
    }

    #[test]
    fn the_duration_is_bounded() {
        assert!(check_duration(Duration::from_secs(1)).is_err());
        assert!(check_duration(Duration::from_secs(301)).is_err());
        assert_eq!(check_duration(Duration::from_secs(2)), Ok(Duration::from_secs(2)));
        assert_eq!(check_duration(DEFAULT_LEASE_DURATION), Ok(DEFAULT_LEASE_DURATION));
        let settings = LeaseSettings {
            namespace: "ns".into(),
            name: "l".into(),
            identity: "p".into(),
            duration: Duration::from_secs(6),
        };
        assert_eq!(settings.retry_interval(), Duration::from_secs(2));
    }
}
