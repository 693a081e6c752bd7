//! A fake Kubernetes API server over real HTTP on loopback, good enough for the real `kube` client and
//! kube-runtime's watchers, so the control plane's Kubernetes mode can be tested without a cluster.
//!
//! What it serves (see [`resources::RESOURCES`]): core/v1 namespaces, pods, services, secrets, configmaps,
//! nodes; discovery.k8s.io/v1 endpointslices; coordination.k8s.io/v1 leases; strait.dev/v1alpha1 trafficroutes,
//! destinationpolicies, authorizationpolicies; gateway.networking.k8s.io/v1 httproutes, grpcroutes (the standard
//! Gateway API CRDs, which [`FakeKube::uninstall`] takes away); Istio's kinds; and authentication.k8s.io/v1
//! tokenreviews (create only, answered from the tokens
//! the test registers with [`FakeKube::add_token`]).
//!
//! Verbs: list (`labelSelector`, `fieldSelector` on dotted paths; `limit` is ignored and every list is one
//! page), watch (`watch=1`, from a `resourceVersion` with the events since then, BOOKMARKs with
//! `allowWatchBookmarks`, `timeoutSeconds`, and an ERROR event carrying a 410 `Status` after
//! [`FakeKube::compact`]), get, create (uid, resourceVersion, generation, creationTimestamp; 409 on a
//! duplicate), update (PUT, 409 on a stale resourceVersion), patch (merge; strategic merge taken as merge;
//! server-side apply approximated as a merge of the applied object, creating it if absent), the `/status`
//! subresource (get, update, patch), delete. Writes that change nothing are no-ops (no new resourceVersion,
//! no event); `generation` moves only when something outside `metadata` and `status` changed.
//!
//! Not served: discovery (`/api`, `/apis`), pagination, field managers, finalizers, deletion cascades,
//! admission and schema validation of the objects.
//!
//! The test side writes objects directly ([`FakeKube::apply`], [`FakeKube::delete`]), reads them back
//! ([`FakeKube::get`], e.g. the status the controller wrote), and steers watches ([`FakeKube::compact`],
//! [`FakeKube::hold_watches`]).

pub mod objects;
pub mod patch;
pub mod resources;
pub mod select;
mod server;
pub mod store;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::task::JoinSet;

pub use store::StoreError;
use store::{Scope, Store};

/// A request the fake received, for tests that count what a client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
}

/// Who a bearer token belongs to, as a TokenReview tells it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenUser {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    /// The audiences the token was issued for; a review asking for none of them fails, as on a real cluster.
    pub audiences: Vec<String>,
}

impl TokenUser {
    /// A projected service account token for `audience`.
    pub fn service_account(namespace: &str, name: &str, audience: &str) -> Self {
        TokenUser {
            username: format!("system:serviceaccount:{namespace}:{name}"),
            uid: format!("uid-{namespace}-{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
            extra: BTreeMap::new(),
            audiences: vec![audience.to_string()],
        }
    }

    /// Adds an `extra` entry, e.g. `authentication.kubernetes.io/node-name`.
    pub fn with_extra(mut self, key: &str, value: &str) -> Self {
        self.extra.entry(key.to_string()).or_default().push(value.to_string());
        self
    }
}

/// The state watches look at to know whether to wait or to end.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Gate {
    held: bool,
    /// Bumped to end every open watch.
    closes: u64,
}

pub(crate) struct Shared {
    store: Store,
    tokens: Mutex<HashMap<String, TokenUser>>,
    gate: tokio::sync::watch::Sender<Gate>,
    bookmark_interval: Duration,
    requests: Mutex<Vec<RequestRecord>>,
    gone: AtomicU64,
    open_watches: AtomicUsize,
    /// Kinds answered 404, as on a cluster without their CRD ([`FakeKube::uninstall`]).
    uninstalled: Mutex<Vec<&'static str>>,
}

impl Shared {
    fn is_uninstalled(&self, kind: &str) -> bool {
        self.uninstalled.lock().unwrap_or_else(|e| e.into_inner()).contains(&kind)
    }

    fn record(&self, request: RequestRecord) {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).push(request);
    }

    fn count_gone(&self, code: u16) {
        if code == 410 {
            self.gone.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answers a TokenReview from the registered tokens.
    fn review(&self, mut review: Value) -> Value {
        let token = review.pointer("/spec/token").and_then(Value::as_str).unwrap_or("").to_string();
        let wanted: Vec<String> = review
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        let user = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&token).cloned();
        let status = match user {
            None => json!({"authenticated": false, "user": {}, "error": "invalid bearer token"}),
            Some(user) => {
                let granted: Vec<&String> = if wanted.is_empty() {
                    user.audiences.iter().collect()
                } else {
                    wanted.iter().filter(|a| user.audiences.contains(a)).collect()
                };
                if granted.is_empty() {
                    json!({
                        "authenticated": false,
                        "user": {},
                        "error": format!("token audiences {:?} is invalid for the target audiences {wanted:?}", user.audiences),
                    })
                } else {
                    json!({
                        "authenticated": true,
                        "user": {"username": user.username, "uid": user.uid, "groups": user.groups, "extra": user.extra},
                        "audiences": granted,
                    })
                }
            }
        };
        review["apiVersion"] = json!("authentication.k8s.io/v1");
        review["kind"] = json!("TokenReview");
        review["status"] = status;
        review
    }
}

/// A running fake API server; dropping it stops it.
pub struct FakeKube {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl FakeKube {
    /// Serves on `127.0.0.1:0`; BOOKMARKs every second to watches that allow them.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_bookmarks(Duration::from_secs(1)).await
    }

    pub async fn start_with_bookmarks(bookmark_interval: Duration) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding the fake API server")?;
        let addr = listener.local_addr().context("reading the fake API server's address")?;
        let shared = Arc::new(Shared {
            store: Store::new(),
            tokens: Mutex::new(HashMap::new()),
            gate: tokio::sync::watch::Sender::new(Gate::default()),
            bookmark_interval,
            requests: Mutex::new(Vec::new()),
            gone: AtomicU64::new(0),
            open_watches: AtomicUsize::new(0),
            uninstalled: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(FakeKube { shared, addr, task })
    }

    /// Serves `kind` (`HTTPRoute`) no more: every request for it is a 404, as when its CRD is not installed.
    pub fn uninstall(&self, kind: &'static str) {
        self.shared.uninstalled.lock().unwrap_or_else(|e| e.into_inner()).push(kind);
    }

    /// Serves `kind` again after [`FakeKube::uninstall`], as when its CRD is installed.
    pub fn install(&self, kind: &str) {
        self.shared.uninstalled.lock().unwrap_or_else(|e| e.into_inner()).retain(|k| *k != kind);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A real `kube::Client` talking plain HTTP to this server (no TLS, no kubeconfig).
    pub fn client(&self) -> anyhow::Result<kube::Client> {
        let url: http::Uri = self.url().parse().context("the fake API server's URL")?;
        let config = kube::Config::new(url);
        kube::Client::try_from(config).context("building a kube client for the fake API server")
    }

    /// Writes a kubeconfig naming this server into `dir` and returns its path: for a separate process (the
    /// `strait-control` binary) pointed at the fake with `KUBECONFIG`.
    pub fn write_kubeconfig(&self, dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{}\"}}\n\
             users:\n- name: me\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: me}}\n\
             current-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Creates the object, or replaces it whole (status included) if it exists; its `apiVersion` and `kind`
    /// say what it is. Returns the stored object.
    pub fn apply(&self, mut object: Value) -> Result<Value, StoreError> {
        let rt = resource_of(&object)?;
        let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("").to_string();
        let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("resourceVersion");
        }
        match self.shared.store.get(rt, &namespace, &name) {
            Ok(_) => self.shared.store.update(rt, &namespace, &name, object, Scope::Direct),
            Err(_) => self.shared.store.create(rt, &namespace, object, Scope::Direct),
        }
    }

    /// Merge-patches an object as the test (status included).
    pub fn patch(&self, kind: &str, namespace: &str, name: &str, patch: Value) -> Result<Value, StoreError> {
        let rt = resource_by_name(kind)?;
        self.shared.store.patch(rt, namespace, name, patch::PatchKind::Merge, &patch, Scope::Direct)
    }

    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let rt = resource_by_name(kind).ok()?;
        self.shared.store.get(rt, namespace, name).ok()
    }

    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, StoreError> {
        let rt = resource_by_name(kind)?;
        self.shared.store.delete(rt, namespace, name)
    }

    /// The newest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store.resource_version()
    }

    /// Forgets the event history: a watch resuming from any resourceVersion before now gets 410 Gone.
    pub fn compact(&self) {
        self.shared.store.compact();
    }

    /// Ends every open watch (as an API server restart or a watch timeout does); clients re-watch.
    pub fn close_watches(&self) {
        self.shared.gate.send_modify(|g| g.closes += 1);
    }

    /// Ends every open watch and answers no new one until [`FakeKube::release_watches`]: changes made
    /// meanwhile reach clients only when they resume (or, after [`FakeKube::compact`], relist). Watches end
    /// asynchronously: wait for [`FakeKube::open_watches`] to reach 0 before changing anything.
    pub fn hold_watches(&self) {
        self.shared.gate.send_modify(|g| {
            g.held = true;
            g.closes += 1;
        });
    }

    pub fn release_watches(&self) {
        self.shared.gate.send_modify(|g| g.held = false);
    }

    /// How many watches are streaming live events now (replay sent, not yet ended): a test that steers
    /// watches waits for the client's to be open first.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    /// How many watches were refused with 410 Gone.
    pub fn gone_sent(&self) -> u64 {
        self.shared.gone.load(Ordering::Relaxed)
    }

    /// Registers a bearer token for TokenReviews.
    pub fn add_token(&self, token: &str, user: TokenUser) {
        self.shared.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(token.to_string(), user);
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn resource_of(object: &Value) -> Result<&'static resources::ResourceType, StoreError> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    resources::by_kind(api_version, kind)
        .ok_or_else(|| StoreError::Invalid(format!("the fake API server does not serve {api_version}/{kind}")))
}

fn resource_by_name(kind: &str) -> Result<&'static resources::ResourceType, StoreError> {
    resources::by_kind_name(kind)
        .ok_or_else(|| StoreError::Invalid(format!("the fake API server does not serve kind {kind}")))
}

/// Accepts connections until aborted; aborting drops the set, which ends every connection.
async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(server::handle(shared, req).await) }
            });
            // Errors are clients going away mid-request; nothing to do about them.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service).await;
        });
    }
}
