//! The simulated node proxies together: started at once, each with its counters, and read as one snapshot.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::client::{self, Counters, Target};
use super::population::{node_name, token, Population};

/// One proxy's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub bytes: u64,
    pub lines: u64,
    pub acked_at_us: u64,
    pub streams: u64,
}

pub struct Fleet {
    pub target: Arc<Target>,
    counters: Vec<Arc<Counters>>,
    _tasks: JoinSet<()>,
}

impl Fleet {
    /// Starts one simulated proxy per node of `population` (node-0000 ...), all at once, as after a cluster-wide
    /// restart, speaking `protocol` (in protocol 3 each subscribes to [`Population::interests`]).
    pub fn start(target: Arc<Target>, population: &Population, protocol: u32) -> Fleet {
        let mut tasks = JoinSet::new();
        let nodes = population.size.nodes;
        let counters: Vec<Arc<Counters>> = (0..nodes).map(|_| Arc::default()).collect();
        for (node, counters) in counters.iter().enumerate() {
            let wants = if protocol == 3 { population.interests(node) } else { Vec::new() };
            let proxy = client::Proxy { node: node_name(node), token: token(node), protocol, wants };
            tasks.spawn(client::run(target.clone(), Arc::new(proxy), counters.clone()));
        }
        Fleet { target, counters, _tasks: tasks }
    }

    pub fn len(&self) -> usize {
        self.counters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    pub fn now_us(&self) -> u64 {
        self.target.micros_since_epoch()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.counters
            .iter()
            .map(|c| Seen {
                bytes: c.bytes.load(Ordering::Relaxed),
                lines: c.lines.load(Ordering::Relaxed),
                acked_at_us: c.acked_at_us.load(Ordering::Relaxed),
                streams: c.streams.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Waits until no proxy has received anything for `quiet`, at most `limit`; whether it got quiet.
    pub async fn settle(&self, quiet: Duration, limit: Duration) -> bool {
        let start = tokio::time::Instant::now();
        let quiet_us = quiet.as_micros() as u64;
        loop {
            let last = self.seen().iter().map(|s| s.acked_at_us).max().unwrap_or(0);
            if self.now_us().saturating_sub(last) >= quiet_us {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
