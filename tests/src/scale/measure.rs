//! How a change reaches the fleet: who received something after it, how many bytes, and when the last of them
//! ACKed; and summaries (percentiles) over several changes.

use std::time::Duration;

use super::fleet::{Fleet, Seen};

/// How long nothing new must arrive before a change that not every proxy receives counts as delivered.
const QUIET: Duration = Duration::from_secs(1);

/// One change as the fleet saw it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delivery {
    /// Proxies that received at least one line after the change.
    pub receivers: usize,
    /// Bytes received after the change, summed over all proxies.
    pub bytes: u64,
    /// Lines received after the change, summed over all proxies, and the most any one proxy received.
    pub lines: u64,
    pub max_lines: u64,
    /// From the change until the last receiver ACKed (`None`: nobody received anything).
    pub last_ack: Option<Duration>,
    /// Whether every proxy that had to receive it did within the limit.
    pub complete: bool,
}

/// What a change is expected to reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Every proxy (a route change: every node may call the service).
    All,
    /// Whoever it concerns: delivered once nothing more arrives for a second.
    Affected,
}

/// The figures from `before` to `now` for a change made at `t0_us`.
pub fn delivery(before: &[Seen], now: &[Seen], t0_us: u64) -> Delivery {
    let mut d = Delivery::default();
    let mut last = 0;
    for (b, n) in before.iter().zip(now) {
        if n.lines > b.lines {
            d.receivers += 1;
            d.bytes += n.bytes - b.bytes;
            d.lines += n.lines - b.lines;
            d.max_lines = d.max_lines.max(n.lines - b.lines);
            last = last.max(n.acked_at_us);
        }
    }
    d.last_ack = (d.receivers > 0).then(|| Duration::from_micros(last.saturating_sub(t0_us)));
    d
}

/// Waits for a change made at `t0_us` (with the fleet's counters `before` it) to be delivered as `expect`s, at
/// most `give_up`; then lets stragglers (a second push of the same burst) arrive before counting bytes.
pub async fn deliver(fleet: &Fleet, before: &[Seen], t0_us: u64, expect: Expect, give_up: Duration) -> Delivery {
    let start = tokio::time::Instant::now();
    let quiet_us = QUIET.as_micros() as u64;
    let (mut at_completion, complete) = loop {
        let now = fleet.seen();
        let d = delivery(before, &now, t0_us);
        let last_us = t0_us + d.last_ack.map(|l| l.as_micros() as u64).unwrap_or(0);
        let done = match expect {
            Expect::All => d.receivers == fleet.len(),
            Expect::Affected => d.receivers > 0 && fleet.now_us().saturating_sub(last_us) >= quiet_us,
        };
        if done {
            break (d, true);
        }
        if start.elapsed() >= give_up {
            break (d, false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    fleet.settle(Duration::from_millis(300), Duration::from_secs(10)).await;
    let settled = delivery(before, &fleet.seen(), t0_us);
    // Latency is when the change was complete; volume is everything the change caused.
    at_completion.bytes = settled.bytes;
    at_completion.lines = settled.lines;
    at_completion.max_lines = settled.max_lines;
    at_completion.receivers = settled.receivers;
    at_completion.complete = complete;
    at_completion
}

/// p50, p99 and max of `values` (nearest rank); `None` when empty.
pub fn percentiles(values: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = |p: f64| {
        let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    };
    let max = *sorted.last()?;
    Some((rank(0.50), rank(0.99), max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(lines: u64, bytes: u64, acked_at_us: u64) -> Seen {
        Seen { bytes, lines, acked_at_us, streams: 1 }
    }

    #[test]
    fn counts_only_proxies_that_received_something_after_the_change() {
        let before = [seen(1, 100, 10), seen(1, 100, 10), seen(2, 300, 20)];
        let now = [seen(2, 150, 1_500), seen(1, 100, 10), seen(4, 500, 2_500)];
        let d = delivery(&before, &now, 1_000);
        assert_eq!(d.receivers, 2);
        assert_eq!(d.bytes, 250);
        assert_eq!((d.lines, d.max_lines), (3, 2));
        assert_eq!(d.last_ack, Some(Duration::from_micros(1_500)));
        let nothing = delivery(&before, &before, 1_000);
        assert_eq!((nothing.receivers, nothing.last_ack), (0, None));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect::<Vec<_>>();
        assert_eq!(percentiles(&[]), None);
        let one = percentiles(&ms(&[7])).expect("one");
        assert_eq!(one, (Duration::from_millis(7), Duration::from_millis(7), Duration::from_millis(7)));
        let values = ms(&(1..=20).rev().collect::<Vec<_>>());
        let (p50, p99, max) = percentiles(&values).expect("twenty");
        assert_eq!((p50, p99, max), (Duration::from_millis(10), Duration::from_millis(20), Duration::from_millis(20)));
    }
}
