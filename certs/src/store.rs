//! Workload certificate rotation: a store of current certificates keyed by identity, renewed in
//! the background at half their lifetime, and rustls configurations whose certificate resolvers
//! read the current certificate at every handshake.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::client::ResolvesClientCert;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use tokio::task::JoinHandle;

use crate::ca::{CaError, MeshCa};
use crate::identity::Identity;
use crate::tls::{self, TrustBundle};
use crate::workload::{WorkloadCert, WorkloadError};

/// Why a workload certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("the mesh CA refused to issue: {0}")]
    Ca(#[from] CaError),

    #[error("the issued certificate is unusable: {0}")]
    Invalid(#[from] WorkloadError),

    #[error("asked for a certificate for {requested} but the issuer returned one for {issued}")]
    WrongIdentity { requested: Identity, issued: Identity },

    #[error("the issuer returned an already expired certificate for {0}")]
    Expired(Identity),

    #[error("fetching a certificate for {identity} failed: {message}")]
    Fetch { identity: Identity, message: String },
}

/// Something that issues workload certificates: the mesh CA itself, or a node proxy that sends a
/// CSR to the control plane.
pub trait CertIssuer: Send + Sync {
    fn issue(&self, id: &Identity) -> Pin<Box<dyn Future<Output = Result<WorkloadCert, CertError>> + Send + '_>>;
}

impl CertIssuer for MeshCa {
    /// Issues with the CA's configured workload TTL (see [`MeshCa::with_workload_ttl`]).
    fn issue(&self, id: &Identity) -> Pin<Box<dyn Future<Output = Result<WorkloadCert, CertError>> + Send + '_>> {
        let result = MeshCa::issue(self, id, self.workload_ttl()).map_err(CertError::from);
        Box::pin(std::future::ready(result))
    }
}

/// Retry policy for failed renewals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay after a failure; doubled after each further failure.
    pub initial_backoff: Duration,
    /// Upper bound of the delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { initial_backoff: Duration::from_secs(1), max_backoff: Duration::from_secs(60) }
    }
}

/// One identity's current certificate and renewal task.
struct Entry {
    identity: Identity,
    current: ArcSwapOption<WorkloadCert>,
    /// Serialises fetches (first fetch and renewals) for this identity.
    fetch: tokio::sync::Mutex<()>,
    renewal: Mutex<Option<JoinHandle<()>>>,
}

impl Entry {
    fn new(identity: Identity) -> Self {
        Entry {
            identity,
            current: ArcSwapOption::empty(),
            fetch: tokio::sync::Mutex::new(()),
            renewal: Mutex::new(None),
        }
    }

    fn valid_current(&self) -> Option<Arc<WorkloadCert>> {
        self.current.load_full().filter(|c| !c.is_expired(SystemTime::now()))
    }

    fn stop_renewal(&self) {
        if let Some(h) = lock(&self.renewal).take() {
            h.abort();
        }
    }
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("identity", &self.identity.to_string())
            .field("current", &self.current.load_full().map(|c| c.serial().to_string()))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Inner {
    issuer: Arc<dyn CertIssuer>,
    bundle: TrustBundle,
    retry: RetryPolicy,
    entries: Mutex<HashMap<Identity, Arc<Entry>>>,
    server_configs: Mutex<HashMap<Identity, Arc<ServerConfig>>>,
    client_configs: Mutex<HashMap<(Identity, Identity), Arc<ClientConfig>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for entry in lock(&self.entries).values() {
            entry.stop_renewal();
        }
    }
}

/// Current workload certificates by identity, renewed in the background.
///
/// Cloning is cheap and shares the store. Renewal tasks stop when the last clone is dropped
/// or the identity is forgotten.
#[derive(Clone)]
pub struct CertStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("bundle", &self.inner.bundle)
            .field("identities", &lock(&self.inner.entries).len())
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// A store that obtains certificates from `issuer` and trusts `bundle`.
    pub fn new(issuer: Arc<dyn CertIssuer>, bundle: TrustBundle) -> Self {
        Self::with_retry(issuer, bundle, RetryPolicy::default())
    }

    /// Like [`CertStore::new`] with an explicit renewal retry policy.
    pub fn with_retry(issuer: Arc<dyn CertIssuer>, bundle: TrustBundle, retry: RetryPolicy) -> Self {
        CertStore {
            inner: Arc::new(Inner {
                issuer,
                bundle,
                retry,
                entries: Mutex::new(HashMap::new()),
                server_configs: Mutex::new(HashMap::new()),
                client_configs: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The trust bundle peers are verified against.
    pub fn bundle(&self) -> &TrustBundle {
        &self.inner.bundle
    }

    fn entry(&self, id: &Identity) -> Arc<Entry> {
        lock(&self.inner.entries).entry(id.clone()).or_insert_with(|| Arc::new(Entry::new(id.clone()))).clone()
    }

    /// The current certificate for `id`, fetching one from the issuer if there is none (or it
    /// expired). The first successful fetch starts background renewal for `id`.
    /// Must be called from within a tokio runtime.
    pub async fn get_or_fetch(&self, id: &Identity) -> Result<Arc<WorkloadCert>, CertError> {
        let entry = self.entry(id);
        if let Some(c) = entry.valid_current() {
            return Ok(c);
        }
        let cert = {
            let _guard = entry.fetch.lock().await;
            if let Some(c) = entry.valid_current() {
                return Ok(c);
            }
            let cert = fetch(&*self.inner.issuer, id).await?;
            entry.current.store(Some(cert.clone()));
            cert
        };
        tracing::info!(identity = %id, serial = cert.serial(), "workload certificate issued");
        self.ensure_renewal(&entry);
        Ok(cert)
    }

    fn ensure_renewal(&self, entry: &Arc<Entry>) {
        // A forgotten entry must not restart renewal.
        let still_present = lock(&self.inner.entries).get(&entry.identity).is_some_and(|e| Arc::ptr_eq(e, entry));
        if !still_present {
            return;
        }
        let mut slot = lock(&entry.renewal);
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let issuer = self.inner.issuer.clone();
        let retry = self.inner.retry;
        let task_entry = entry.clone();
        *slot = Some(tokio::spawn(renew_loop(issuer, task_entry, retry)));
    }

    /// The current certificate for `id`, if one has been fetched and is still valid.
    pub fn current(&self, id: &Identity) -> Option<Arc<WorkloadCert>> {
        lock(&self.inner.entries).get(id).and_then(|e| e.valid_current())
    }

    /// Stops renewing `id` and drops its certificate and cached configurations. Connections
    /// already established are unaffected; configurations handed out earlier stop getting renewals.
    pub fn forget(&self, id: &Identity) {
        if let Some(entry) = lock(&self.inner.entries).remove(id) {
            entry.stop_renewal();
            entry.current.store(None);
        }
        lock(&self.inner.server_configs).remove(id);
        lock(&self.inner.client_configs).retain(|(src, _), _| src != id);
    }

    /// All current certificates (including expired ones still held), sorted by identity.
    pub fn certs(&self) -> Vec<Arc<WorkloadCert>> {
        let mut out: Vec<Arc<WorkloadCert>> =
            lock(&self.inner.entries).values().filter_map(|e| e.current.load_full()).collect();
        out.sort_by(|a, b| a.identity().cmp(b.identity()));
        out
    }

    /// Cached mTLS server configuration that serves `id`'s current certificate at each handshake
    /// (nothing before [`CertStore::get_or_fetch`] succeeded, or once it expired).
    pub fn server_config(&self, id: &Identity) -> Arc<ServerConfig> {
        if let Some(cfg) = lock(&self.inner.server_configs).get(id) {
            return cfg.clone();
        }
        let resolver = Arc::new(StoreResolver { entry: self.entry(id) });
        let cfg = tls::server_config(resolver, &self.inner.bundle);
        lock(&self.inner.server_configs).entry(id.clone()).or_insert(cfg).clone()
    }

    /// Cached mTLS client configuration presenting `source`'s current certificate at each
    /// handshake and requiring the server to be `expected_peer`.
    pub fn client_config(&self, source: &Identity, expected_peer: Identity) -> Arc<ClientConfig> {
        let key = (source.clone(), expected_peer);
        if let Some(cfg) = lock(&self.inner.client_configs).get(&key) {
            return cfg.clone();
        }
        let resolver = Arc::new(StoreResolver { entry: self.entry(source) });
        let cfg = tls::client_config(Some(resolver), &self.inner.bundle, key.1.clone());
        lock(&self.inner.client_configs).entry(key).or_insert(cfg).clone()
    }
}

async fn fetch(issuer: &dyn CertIssuer, id: &Identity) -> Result<Arc<WorkloadCert>, CertError> {
    let cert = issuer.issue(id).await?;
    if cert.identity() != id {
        return Err(CertError::WrongIdentity { requested: id.clone(), issued: cert.identity().clone() });
    }
    if cert.is_expired(SystemTime::now()) {
        return Err(CertError::Expired(id.clone()));
    }
    Ok(Arc::new(cert))
}

fn until(t: SystemTime) -> Duration {
    t.duration_since(SystemTime::now()).unwrap_or_default()
}

async fn renew_loop(issuer: Arc<dyn CertIssuer>, entry: Arc<Entry>, retry: RetryPolicy) {
    loop {
        let Some(current) = entry.current.load_full() else {
            return;
        };
        tokio::time::sleep(until(current.renew_at())).await;

        let mut backoff = retry.initial_backoff;
        let mut failures = 0u32;
        loop {
            let result = {
                let _guard = entry.fetch.lock().await;
                // Someone else (get_or_fetch after expiry) may have renewed meanwhile.
                match entry.current.load_full() {
                    Some(c) if c.serial() != current.serial() && !c.is_expired(SystemTime::now()) => Ok(None),
                    _ => fetch(&*issuer, &entry.identity).await.map(|c| {
                        entry.current.store(Some(c.clone()));
                        Some(c)
                    }),
                }
            };
            match result {
                Ok(Some(new)) => {
                    tracing::info!(
                        identity = %entry.identity,
                        old_serial = current.serial(),
                        new_serial = new.serial(),
                        "workload certificate renewed"
                    );
                    break;
                }
                Ok(None) => break,
                Err(err) => {
                    failures += 1;
                    // Don't sleep past a good chunk of the remaining validity on short-lived certs.
                    let remaining = until(current.not_after());
                    let delay = backoff.min(retry.max_backoff).min((remaining / 4).max(Duration::from_millis(100)));
                    tracing::warn!(
                        identity = %entry.identity,
                        failures,
                        retry_in = ?delay,
                        error = %err,
                        "workload certificate renewal failed"
                    );
                    tokio::time::sleep(delay).await;
                    backoff = (backoff * 2).min(retry.max_backoff);
                }
            }
        }
    }
}

/// Resolver reading an entry's current certificate at each handshake.
#[derive(Debug)]
struct StoreResolver {
    entry: Arc<Entry>,
}

impl StoreResolver {
    fn resolve_current(&self) -> Option<Arc<CertifiedKey>> {
        let cert = self.entry.current.load_full()?;
        tls::servable(&cert)
    }
}

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.resolve_current()
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.resolve_current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Flaky {
        ca: MeshCa,
        calls: AtomicUsize,
        fail_first: usize,
    }

    impl CertIssuer for Flaky {
        fn issue(&self, id: &Identity) -> Pin<Box<dyn Future<Output = Result<WorkloadCert, CertError>> + Send + '_>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let id = id.clone();
            Box::pin(async move {
                if n >= 1 && n <= self.fail_first {
                    return Err(CertError::Fetch { identity: id, message: "control plane unavailable".into() });
                }
                Ok(MeshCa::issue(&self.ca, &id, Duration::from_secs(2))?)
            })
        }
    }

    #[tokio::test]
    async fn concurrent_fetches_issue_once_and_renewal_retries() {
        let ca = MeshCa::generate("cluster.local").unwrap();
        let bundle = TrustBundle::from_ca(&ca);
        let issuer = Arc::new(Flaky { ca, calls: AtomicUsize::new(0), fail_first: 2 });
        let store = CertStore::with_retry(
            issuer.clone(),
            bundle,
            RetryPolicy { initial_backoff: Duration::from_millis(50), max_backoff: Duration::from_millis(200) },
        );
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let (a, b) = tokio::join!(store.get_or_fetch(&id), store.get_or_fetch(&id));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.serial(), b.serial());
        assert_eq!(issuer.calls.load(Ordering::SeqCst), 1);

        // Renewal at ~1s fails twice (calls 1 and 2), then succeeds (call 3).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
        loop {
            let now_serial = store.current(&id).map(|c| c.serial().to_string());
            if now_serial.as_deref().is_some_and(|s| s != a.serial()) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "no renewal happened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(issuer.calls.load(Ordering::SeqCst) >= 4 - 1);

        store.forget(&id);
        assert!(store.current(&id).is_none());
        assert!(store.certs().is_empty());
    }

    #[tokio::test]
    async fn wrong_identity_from_issuer_is_rejected() {
        struct Liar(MeshCa);
        impl CertIssuer for Liar {
            fn issue(
                &self,
                _id: &Identity,
            ) -> Pin<Box<dyn Future<Output = Result<WorkloadCert, CertError>> + Send + '_>> {
                let other: Identity = "spiffe://cluster.local/ns/x/sa/y".parse().unwrap();
                Box::pin(async move { Ok(MeshCa::issue(&self.0, &other, Duration::from_secs(60))?) })
            }
        }
        let ca = MeshCa::generate("cluster.local").unwrap();
        let bundle = TrustBundle::from_ca(&ca);
        let store = CertStore::new(Arc::new(Liar(ca)), bundle);
        let id: Identity = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let err = store.get_or_fetch(&id).await.unwrap_err();
        assert!(matches!(err, CertError::WrongIdentity { .. }), "{err}");
    }

    #[tokio::test]
    async fn configs_are_cached() {
        let ca = MeshCa::generate("cluster.local").unwrap();
        let bundle = TrustBundle::from_ca(&ca);
        let store = CertStore::new(Arc::new(ca), bundle);
        let a: Identity = "spiffe://cluster.local/ns/a/sa/a".parse().unwrap();
        let b: Identity = "spiffe://cluster.local/ns/b/sa/b".parse().unwrap();
        assert!(Arc::ptr_eq(&store.server_config(&a), &store.server_config(&a)));
        assert!(Arc::ptr_eq(&store.client_config(&a, b.clone()), &store.client_config(&a, b.clone())));
        assert!(!Arc::ptr_eq(&store.client_config(&a, b.clone()), &store.client_config(&a, a.clone())));
    }
}
