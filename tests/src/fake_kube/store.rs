//! The fake's objects: one map keyed by (kind, namespace, name), one resourceVersion counter shared by all
//! kinds (as etcd's revision is), and the history of events that watches replay from a resourceVersion until
//! the test compacts it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

use super::patch::{merge, PatchKind};
use super::resources::ResourceType;
use super::select::Selector;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches send it.
#[derive(Debug)]
pub struct Event {
    pub resource_version: u64,
    pub kind: &'static str,
    pub namespace: String,
    pub event_type: EventType,
    pub object: Value,
}

/// What a write may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The main resource over HTTP: `status` is left alone for kinds with a status subresource.
    Main,
    /// The `/status` subresource: only `status` changes.
    Status,
    /// The test itself: the whole object, status included.
    Direct,
}

/// Why a request failed, with the HTTP code and `reason` the real API server uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound { kind: &'static str, name: String },
    AlreadyExists { kind: &'static str, name: String },
    Conflict(String),
    Invalid(String),
    Gone(String),
}

impl StoreError {
    pub fn code(&self) -> u16 {
        match self {
            StoreError::NotFound { .. } => 404,
            StoreError::AlreadyExists { .. } | StoreError::Conflict(_) => 409,
            StoreError::Invalid(_) => 400,
            StoreError::Gone(_) => 410,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "NotFound",
            StoreError::AlreadyExists { .. } => "AlreadyExists",
            StoreError::Conflict(_) => "Conflict",
            StoreError::Invalid(_) => "BadRequest",
            StoreError::Gone(_) => "Expired",
        }
    }

    /// A `Status` object, as the API server answers errors (and as a watch's ERROR event carries).
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        })
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound { kind, name } => write!(f, "{kind} {name:?} not found"),
            StoreError::AlreadyExists { kind, name } => write!(f, "{kind} {name:?} already exists"),
            StoreError::Conflict(m) | StoreError::Invalid(m) | StoreError::Gone(m) => f.write_str(m),
        }
    }
}

/// So callers can `?` it into `anyhow` with context.
impl std::error::Error for StoreError {}

type Key = (&'static str, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    resource_version: u64,
    history: Vec<Arc<Event>>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    compacted: u64,
    next_uid: u64,
}

pub struct Store {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<Event>>,
}

/// A watch's starting point: the events to replay, then the live ones.
pub struct WatchStart {
    pub replay: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
}

impl Store {
    pub fn new() -> Self {
        // Generous: a watch that falls this far behind is ended and the client re-watches.
        let (events, _) = broadcast::channel(16 * 1024);
        Store { state: Mutex::new(State { resource_version: 1, ..Default::default() }), events }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }

    /// Forgets the history: watches from any resourceVersion before now get 410 Gone and must relist.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.resource_version;
        state.history.clear();
    }

    pub fn get(&self, rt: &'static ResourceType, namespace: &str, name: &str) -> Result<Value, StoreError> {
        self.lock()
            .objects
            .get(&key(rt, namespace, name))
            .cloned()
            .ok_or_else(|| StoreError::NotFound { kind: rt.kind, name: name.to_string() })
    }

    /// Every object of the kind (in `namespace`, if given) the selector matches, and the list's
    /// resourceVersion.
    pub fn list(&self, rt: &'static ResourceType, namespace: Option<&str>, selector: &Selector) -> (Vec<Value>, u64) {
        let state = self.lock();
        let items = state
            .objects
            .iter()
            .filter(|((kind, ns, _), object)| {
                *kind == rt.kind && namespace.is_none_or(|n| n == ns) && selector.matches(object)
            })
            .map(|(_, object)| object.clone())
            .collect();
        (items, state.resource_version)
    }

    /// Where a watch starts: after `from` (the events since then, or 410 if they were compacted away), or,
    /// without one (or "0"), with a synthetic ADDED for every object that exists now.
    pub fn watch(
        &self,
        rt: &'static ResourceType,
        namespace: Option<&str>,
        selector: &Selector,
        from: Option<u64>,
    ) -> Result<WatchStart, StoreError> {
        let state = self.lock();
        let replay = match from.filter(|rv| *rv != 0) {
            Some(rv) if rv < state.compacted => {
                return Err(StoreError::Gone(format!("too old resource version: {rv} ({})", state.compacted)))
            }
            Some(rv) => state
                .history
                .iter()
                .filter(|e| e.resource_version > rv && event_matches(e, rt, namespace, selector))
                .cloned()
                .collect(),
            None => state
                .objects
                .iter()
                .filter(|((kind, ns, _), o)| {
                    *kind == rt.kind && namespace.is_none_or(|n| n == ns) && selector.matches(o)
                })
                .map(|((_, ns, _), object)| {
                    Arc::new(Event {
                        resource_version: object_rv(object),
                        kind: rt.kind,
                        namespace: ns.clone(),
                        event_type: EventType::Added,
                        object: object.clone(),
                    })
                })
                .collect(),
        };
        // Subscribed under the lock that every write holds while publishing: nothing falls between the
        // replay and the live events, and nothing comes twice.
        Ok(WatchStart { replay, live: self.events.subscribe() })
    }

    /// Runs `f` under the store's lock; watches use it to read the resourceVersion and drain their queue
    /// atomically before sending a BOOKMARK.
    pub fn with_resource_version<T>(&self, f: impl FnOnce(u64) -> T) -> T {
        let state = self.lock();
        f(state.resource_version)
    }

    pub fn create(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        mut object: Value,
        scope: Scope,
    ) -> Result<Value, StoreError> {
        check_type(rt, &object)?;
        let mut state = self.lock();
        let name = match str_at(&object, "/metadata/name") {
            Some(name) if !name.is_empty() => name,
            _ => match str_at(&object, "/metadata/generateName") {
                Some(prefix) => format!("{prefix}{:05x}", state.next_uid + 1),
                None => return Err(StoreError::Invalid(format!("{}: metadata.name: Required value", rt.kind))),
            },
        };
        let namespace = object_namespace(rt, namespace, &object)?;
        let k = (rt.kind, namespace.clone(), name.clone());
        if state.objects.contains_key(&k) {
            return Err(StoreError::AlreadyExists { kind: rt.kind, name });
        }
        if scope == Scope::Main && rt.status_subresource {
            // As the real API server: status is the controllers' to write, through /status.
            if let Some(o) = object.as_object_mut() {
                o.remove("status");
            }
        }
        state.next_uid += 1;
        let uid = format!("00000000-0000-4000-8000-{:012x}", state.next_uid);
        let meta = metadata_mut(&mut object);
        meta.insert("name".into(), json!(name));
        if rt.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        Ok(commit(&mut state, &self.events, rt, k, None, object))
    }

    /// Replaces an object (PUT). A `metadata.resourceVersion` in the body must be the current one.
    pub fn update(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        object: Value,
        scope: Scope,
    ) -> Result<Value, StoreError> {
        check_type(rt, &object)?;
        let mut state = self.lock();
        let k = key(rt, namespace, name);
        let old = state.objects.get(&k).cloned().ok_or(StoreError::NotFound { kind: rt.kind, name: name.into() })?;
        if let Some(rv) = str_at(&object, "/metadata/resourceVersion").filter(|rv| !rv.is_empty()) {
            if rv != object_rv(&old).to_string() {
                return Err(StoreError::Conflict(format!(
                    "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                    rt.plural
                )));
            }
        }
        let new = scoped(rt, &old, object, scope);
        Ok(commit(&mut state, &self.events, rt, k, Some(old), new))
    }

    /// Patches an object; server-side apply of an object that does not exist creates it.
    pub fn patch(
        &self,
        rt: &'static ResourceType,
        namespace: &str,
        name: &str,
        kind: PatchKind,
        patch: &Value,
        scope: Scope,
    ) -> Result<Value, StoreError> {
        let mut state = self.lock();
        let k = key(rt, namespace, name);
        let Some(old) = state.objects.get(&k).cloned() else {
            if kind == PatchKind::Apply && scope != Scope::Status {
                drop(state);
                let mut object = patch.clone();
                metadata_mut(&mut object).insert("name".into(), json!(name));
                return self.create(rt, namespace, object, scope);
            }
            return Err(StoreError::NotFound { kind: rt.kind, name: name.into() });
        };
        let mut patched = old.clone();
        merge(&mut patched, patch);
        let new = scoped(rt, &old, patched, scope);
        Ok(commit(&mut state, &self.events, rt, k, Some(old), new))
    }

    pub fn delete(&self, rt: &'static ResourceType, namespace: &str, name: &str) -> Result<Value, StoreError> {
        let mut state = self.lock();
        let k = key(rt, namespace, name);
        let mut object = state.objects.remove(&k).ok_or(StoreError::NotFound { kind: rt.kind, name: name.into() })?;
        state.resource_version += 1;
        let rv = state.resource_version;
        metadata_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
        publish(&mut state, &self.events, rt, k.1, EventType::Deleted, object.clone());
        Ok(object)
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

fn key(rt: &'static ResourceType, namespace: &str, name: &str) -> Key {
    (rt.kind, if rt.namespaced { namespace.to_string() } else { String::new() }, name.to_string())
}

fn event_matches(e: &Event, rt: &ResourceType, namespace: Option<&str>, selector: &Selector) -> bool {
    e.kind == rt.kind && namespace.is_none_or(|n| n == e.namespace) && selector.matches(&e.object)
}

fn check_type(rt: &'static ResourceType, object: &Value) -> Result<(), StoreError> {
    let api_version = str_at(object, "/apiVersion").unwrap_or_default();
    let kind = str_at(object, "/kind").unwrap_or_default();
    // Clients may leave them out; when present they must name this resource.
    if (!api_version.is_empty() && api_version != rt.api_version()) || (!kind.is_empty() && kind != rt.kind) {
        return Err(StoreError::Invalid(format!(
            "the object is {api_version}/{kind}, but it was sent to {} {}",
            rt.api_version(),
            rt.plural
        )));
    }
    if !object.is_object() {
        return Err(StoreError::Invalid("the body must be a JSON object".into()));
    }
    Ok(())
}

/// The namespace of a new object: the URL's, which the body must agree with.
fn object_namespace(rt: &ResourceType, namespace: &str, object: &Value) -> Result<String, StoreError> {
    if !rt.namespaced {
        return Ok(String::new());
    }
    let declared = str_at(object, "/metadata/namespace").unwrap_or_default();
    match (namespace.is_empty(), declared.is_empty()) {
        (false, false) if declared != namespace => Err(StoreError::Invalid(format!(
            "the namespace of the object ({declared}) does not match the namespace of the request ({namespace})"
        ))),
        (false, _) => Ok(namespace.to_string()),
        (true, false) => Ok(declared),
        (true, true) => Ok("default".to_string()),
    }
}

/// What a write leaves: only status from a `/status` write, everything but status from a main-resource write
/// of a kind with a status subresource. Identity fields always stay the stored object's.
fn scoped(rt: &ResourceType, old: &Value, new: Value, scope: Scope) -> Value {
    let mut result = match scope {
        Scope::Status => {
            let mut result = old.clone();
            set_field(&mut result, "status", new.get("status").cloned());
            result
        }
        Scope::Main if rt.status_subresource => {
            let mut result = new;
            set_field(&mut result, "status", old.get("status").cloned());
            result
        }
        Scope::Main | Scope::Direct => new,
    };
    if let (Some(old_meta), Some(meta)) = (old.get("metadata"), result.get_mut("metadata")) {
        for field in ["name", "namespace", "uid", "creationTimestamp", "generation"] {
            set_field(meta, field, old_meta.get(field).cloned());
        }
    }
    result
}

fn set_field(object: &mut Value, field: &str, value: Option<Value>) {
    if let Some(o) = object.as_object_mut() {
        match value {
            Some(v) => o.insert(field.to_string(), v),
            None => o.remove(field),
        };
    }
}

/// Stores `new` (bumping resourceVersion, and generation when anything but metadata and status changed) and
/// publishes the event; a write that changes nothing is a no-op, as on a real API server.
fn commit(
    state: &mut State,
    events: &broadcast::Sender<Arc<Event>>,
    rt: &'static ResourceType,
    k: Key,
    old: Option<Value>,
    mut new: Value,
) -> Value {
    if let Some(o) = new.as_object_mut() {
        o.insert("apiVersion".into(), json!(rt.api_version()));
        o.insert("kind".into(), json!(rt.kind));
    }
    let event_type = match &old {
        Some(old) => {
            let generation = old.pointer("/metadata/generation").and_then(Value::as_u64).unwrap_or(1);
            let generation =
                if without_meta_and_status(old) != without_meta_and_status(&new) { generation + 1 } else { generation };
            metadata_mut(&mut new).insert("generation".into(), json!(generation));
            let mut unchanged = new.clone();
            metadata_mut(&mut unchanged).insert("resourceVersion".into(), old["metadata"]["resourceVersion"].clone());
            if &unchanged == old {
                return old.clone();
            }
            EventType::Modified
        }
        None => EventType::Added,
    };
    state.resource_version += 1;
    let rv = state.resource_version;
    metadata_mut(&mut new).insert("resourceVersion".into(), json!(rv.to_string()));
    state.objects.insert(k.clone(), new.clone());
    publish(state, events, rt, k.1, event_type, new.clone());
    new
}

fn publish(
    state: &mut State,
    events: &broadcast::Sender<Arc<Event>>,
    rt: &'static ResourceType,
    namespace: String,
    event_type: EventType,
    object: Value,
) {
    let event =
        Arc::new(Event { resource_version: state.resource_version, kind: rt.kind, namespace, event_type, object });
    state.history.push(event.clone());
    // No receivers is fine: nobody is watching.
    let _ = events.send(event);
}

fn without_meta_and_status(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(o) = object.as_object_mut() {
        o.remove("metadata");
        o.remove("status");
    }
    object
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata") {
        Some(Value::Object(meta)) => meta,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub fn str_at(object: &Value, pointer: &str) -> Option<String> {
    object.pointer(pointer).and_then(Value::as_str).map(str::to_string)
}

pub fn object_rv(object: &Value) -> u64 {
    str_at(object, "/metadata/resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0)
}

/// The current UTC time as RFC 3339 (`2024-05-01T12:00:00Z`), without a date library.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_kube::resources::by_kind_name;

    #[test]
    fn generation_moves_only_with_the_spec_and_no_op_writes_change_nothing() {
        let store = Store::new();
        let rt = by_kind_name("TrafficRoute").expect("kind");
        let created = store
            .create(rt, "shop", json!({"metadata": {"name": "r"}, "spec": {"hosts": ["a"]}}), Scope::Main)
            .expect("create");
        assert_eq!(created["metadata"]["generation"], 1);
        let status = json!({"status": {"conditions": [{"type": "Accepted"}]}});
        let patched = store.patch(rt, "shop", "r", PatchKind::Merge, &status, Scope::Status).expect("status");
        assert_eq!(patched["metadata"]["generation"], 1);
        assert!(object_rv(&patched) > object_rv(&created));
        let again = store.patch(rt, "shop", "r", PatchKind::Merge, &status, Scope::Status).expect("no-op");
        assert_eq!(object_rv(&again), object_rv(&patched), "a no-op write does not bump the resourceVersion");
        let spec = json!({"spec": {"hosts": ["b"]}, "status": {"ignored": true}});
        let changed = store.patch(rt, "shop", "r", PatchKind::Merge, &spec, Scope::Main).expect("spec");
        assert_eq!(changed["metadata"]["generation"], 2);
        assert_eq!(changed["status"], status["status"], "main-resource writes leave status alone");
        assert_eq!(
            store.create(rt, "shop", json!({"metadata": {"name": "r"}}), Scope::Main).expect_err("dup").code(),
            409
        );
    }

    #[test]
    fn watches_replay_history_until_compacted() {
        let store = Store::new();
        let rt = by_kind_name("Pod").expect("kind");
        let start = store.resource_version();
        store.create(rt, "a", json!({"metadata": {"name": "p"}}), Scope::Direct).expect("create");
        let w = store.watch(rt, None, &Selector::default(), Some(start)).expect("watch");
        assert_eq!(w.replay.len(), 1);
        store.compact();
        assert_eq!(store.watch(rt, None, &Selector::default(), Some(start)).err().map(|e| e.code()), Some(410));
        assert!(store.watch(rt, None, &Selector::default(), Some(store.resource_version())).is_ok());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let now = now_rfc3339();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20") && now.ends_with('Z'), "{now}");
    }
}
