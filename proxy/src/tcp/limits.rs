//! `connectionPool.tcp.maxConnections` for TCP services: at most that many connections from this node to one
//! destination service at a time; one more is refused at once (flag `UO`) rather than queued, so an overloaded
//! service sheds load at its callers.

use std::collections::HashMap;
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
