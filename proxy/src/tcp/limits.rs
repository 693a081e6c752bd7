//! `connectionPool.tcp.maxConnections` for TCP services: at most that many connections from this node to one
//! destination service at a time; one more is refused at once (flag `UO`) rather than queued, so an overloaded
//! service sheds load at its callers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use strait_api::Service;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::state::State;

/// The limit currently configured for a service, and the connections holding a slot under it.
struct Limit {
    max: u32,
    slots: Arc<Semaphore>,
}

#[derive(Default)]
pub struct ConnectionLimits {
    limits: Mutex<HashMap<(String, String), Limit>>,
}

/// A connection counted against its service's limit for as long as it lives; `None` when no limit applies.
pub type Slot = Option<OwnedSemaphorePermit>;

impl ConnectionLimits {
    /// Takes a slot for one more connection to `service`, or says the limit is reached.
    pub fn acquire(&self, state: &State, service: &Service) -> Result<Slot, u32> {
        let max = state.destination_settings(service).max_connections;
        let key = (service.namespace.clone(), service.name.clone());
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        let Some(max) = max else {
            limits.remove(&key);
            return Ok(None);
        };
        // A changed limit starts a new count; connections admitted under the old one finish under it.
        let limit = limits.entry(key).or_insert_with(|| Limit { max, slots: Arc::new(Semaphore::new(max as usize)) });
        if limit.max != max {
            *limit = Limit { max, slots: Arc::new(Semaphore::new(max as usize)) };
        }
        limit.slots.clone().try_acquire_owned().map(Some).map_err(|_| max)
    }

    /// Forgets the counts of services that are gone.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        self.limits.lock().unwrap_or_else(|e| e.into_inner()).retain(|(namespace, name), _| keep(namespace, name));
    }
}

/// Connections one local workload may hold open through this proxy at once, unless `--max-connections-per-workload`
/// says otherwise. Each costs the proxy two file descriptors and buffers: without a cap one pod could exhaust
/// the node proxy, and every other pod on the node with it.
pub const DEFAULT_PER_WORKLOAD: usize = 4096;

/// Per-source-workload connection caps; one more connection than the cap is refused at once.
pub struct SourceLimits {
    max: usize,
    by_source: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits::new(DEFAULT_PER_WORKLOAD)
    }
}

impl SourceLimits {
    pub fn new(max: usize) -> Self {
        SourceLimits { max: max.max(1), by_source: Mutex::new(HashMap::new()) }
    }

    /// A slot for one more connection from `source`, held for as long as the connection lives; `None` when
    /// the source is at its cap.
    pub fn acquire(&self, source: IpAddr) -> Option<OwnedSemaphorePermit> {
        let slots = {
            let mut by_source = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
            by_source.entry(source).or_insert_with(|| Arc::new(Semaphore::new(self.max))).clone()
        };
        slots.try_acquire_owned().ok()
    }

    /// Forgets sources that left; their live connections keep their slots until they close.
    pub fn retain(&self, keep: impl Fn(IpAddr) -> bool) {
        self.by_source.lock().unwrap_or_else(|e| e.into_inner()).retain(|ip, _| keep(*ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_at_its_cap_does_not_starve_another() {
        let limits = SourceLimits::new(2);
        let noisy: IpAddr = [10, 1, 0, 2].into();
        let quiet: IpAddr = [10, 1, 0, 3].into();
        let first = limits.acquire(noisy).expect("first");
        let _second = limits.acquire(noisy).expect("second");
        assert!(limits.acquire(noisy).is_none(), "the third is refused");
        assert!(limits.acquire(quiet).is_some(), "another pod is unaffected");
        drop(first);
        assert!(limits.acquire(noisy).is_some(), "a closed connection frees its slot");
    }
}
