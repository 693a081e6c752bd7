//! One watch request: the replayed events, then the live ones as newline-delimited JSON over a chunked
//! response, BOOKMARKs when asked for, and an ERROR event with a 410 Status when the requested
//! resourceVersion was compacted away (as the real API server does: 200, then the error in the stream).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::resources::ResourceType;
use super::select::Selector;
use super::store::Event;
use super::Shared;

/// What the client asked to watch.
pub struct WatchRequest {
    pub rt: &'static ResourceType,
    pub namespace: Option<String>,
    pub selector: Selector,
    pub from: Option<u64>,
    pub bookmarks: bool,
    pub timeout: Duration,
}

/// Feeds `tx` until the watch ends: the client left, its timeout passed, the test closed watches, or the
/// watch fell too far behind (the client then re-watches, as after any watch that ends).
pub async fn run(shared: Arc<Shared>, request: WatchRequest, tx: mpsc::Sender<Bytes>) {
    let mut gate = shared.gate.subscribe();
    // A held watch gets no answer until the test releases it: a controller reconnecting meanwhile waits, as
    // it would for an API server that is restarting. `closes` is read together with `held`, so a hold that
    // comes after this point ends this watch too.
    let closes = loop {
        let g = *gate.borrow_and_update();
        if !g.held {
            break g.closes;
        }
        tokio::select! {
            changed = gate.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
        }
    };
    let start = shared.store.watch(request.rt, request.namespace.as_deref(), &request.selector, request.from);
    let start = match start {
        Ok(start) => start,
        Err(e) => {
            shared.count_gone(e.code());
            let _ = tx.send(line(&json!({"type": "ERROR", "object": e.status()}))).await;
            return;
        }
    };
    for event in &start.replay {
        if tx.send(event_line(event)).await.is_err() {
            return;
        }
    }
    let mut live = start.live;
    let _open = OpenWatch::new(&shared);
    let deadline = tokio::time::Instant::now() + request.timeout;
    let mut bookmark = tokio::time::interval(shared.bookmark_interval);
    bookmark.tick().await;
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(event) => {
                    if matches(&request, &event) && tx.send(event_line(&event)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = bookmark.tick(), if request.bookmarks => {
                // Everything up to the bookmark's resourceVersion must be sent before it, or a client that
                // resumes from the bookmark would miss it: read the version and drain the queue atomically.
                let (rv, pending) = shared.store.with_resource_version(|rv| {
                    let mut pending = Vec::new();
                    while let Ok(event) = live.try_recv() {
                        pending.push(event);
                    }
                    (rv, pending)
                });
                for event in pending.iter().filter(|e| matches(&request, e)) {
                    if tx.send(event_line(event)).await.is_err() {
                        return;
                    }
                }
                let mark = json!({
                    "type": "BOOKMARK",
                    "object": {
                        "kind": request.rt.kind,
                        "apiVersion": request.rt.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()},
                    },
                });
                if tx.send(line(&mark)).await.is_err() {
                    return;
                }
            }
            changed = gate.changed() => {
                if changed.is_err() || gate.borrow_and_update().closes != closes {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = tx.closed() => return,
        }
    }
}

/// Counts the watches that are streaming live events, for [`super::FakeKube::open_watches`].
struct OpenWatch<'a>(&'a Shared);

impl<'a> OpenWatch<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.open_watches.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenWatch(shared)
    }
}

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn matches(request: &WatchRequest, event: &Event) -> bool {
    event.kind == request.rt.kind
        && request.namespace.as_deref().is_none_or(|n| n == event.namespace)
        && request.selector.matches(&event.object)
}

fn event_line(event: &Event) -> Bytes {
    line(&json!({"type": event.event_type.as_str(), "object": event.object}))
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}
