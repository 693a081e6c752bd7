//! Discovery from the Kubernetes API: kube-runtime reflectors on namespaces, pods, services,
//! EndpointSlices and the three custom resources; a new [`Discovered`] snapshot after every burst of changes.
//!
//! kube-runtime's watcher lists, then watches from the list's resourceVersion, and relists when the API
//! server answers 410 Gone (history compacted); the reflector swaps a relist in as a whole, so readers never
//! see a half-listed kind and no change is lost. Nothing is published until every kind has been listed once:
//! a partial first snapshot would push proxies a mesh missing whatever was not listed yet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Resource, ResourceExt as _};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use super::convert;
use super::crds::{self, CrdKind, CrdObject};
use super::optional_kinds::{self, OptionalKind, OptionalStores};
use super::status::{self, Observed};
use crate::discovery::{BoxFuture, Discovery};
use crate::model::{Discovered, MeshSettings};
use strait_api::OutboundTrafficPolicy;

/// How long to wait after a change for more before building a snapshot: a rollout touches pods, slices and
/// services in quick succession, and one push for all of it is cheaper for every proxy.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// Discovers the mesh from a Kubernetes API server, and writes the custom resources' status.
pub struct KubeDiscovery {
    client: kube::Client,
    trust_domain: String,
    debounce: Duration,
    status: StatusWrites,
    istio_resources: bool,
    settings: MeshSettings,
    /// How often kinds whose CRD is missing are looked for again.
    crd_recheck: Duration,
    /// `strait_control_watched_kinds`.
    watched: prometheus::IntGaugeVec,
}

/// Whether this replica writes the custom resources' status.
#[derive(Clone, Debug)]
pub enum StatusWrites {
    /// Always (a single replica).
    Always,
    /// Never (a read-only replica).
    Never,
    /// While the receiver says true: the leader election's verdict.
    WhileLeading(watch::Receiver<bool>),
}

impl KubeDiscovery {
    pub fn new(client: kube::Client, trust_domain: impl Into<String>) -> Self {
        KubeDiscovery {
            client,
            trust_domain: trust_domain.into(),
            debounce: DEFAULT_DEBOUNCE,
            status: StatusWrites::Always,
            istio_resources: false,
            settings: MeshSettings::default(),
            crd_recheck: optional_kinds::DEFAULT_RECHECK,
            watched: optional_kinds::watched_kinds_gauge(),
        }
    }

    /// How often to look again for kinds whose CRD is not installed ([`optional_kinds::DEFAULT_RECHECK`]).
    pub fn with_crd_recheck(mut self, every: Duration) -> Self {
        self.crd_recheck = every;
        self
    }

    /// The gauge of watched kinds, to register with the control plane's metrics.
    pub fn watched_kinds(&self) -> prometheus::IntGaugeVec {
        self.watched.clone()
    }

    /// Whether to watch Istio's kinds too (see [`super::istio`]).
    pub fn with_istio_resources(mut self, on: bool) -> Self {
        self.istio_resources = on;
        self
    }

    pub fn with_outbound_traffic_policy(mut self, policy: OutboundTrafficPolicy) -> Self {
        self.settings.outbound_traffic_policy = policy;
        self
    }

    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// When to write `Accepted`/`ResolvedRefs` conditions ([`StatusWrites::Always`] by default).
    pub fn with_status(mut self, status: StatusWrites) -> Self {
        self.status = status;
        self
    }
}

/// The reflected stores, one per kind.
struct Stores {
    namespaces: Store<Namespace>,
    pods: Store<Pod>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// Strait's own kinds.
    custom: Vec<(CrdKind, Store<DynamicObject>)>,
    /// Gateway API's and (with `--istio-resources`) Istio's kinds, as their CRDs are found installed.
    optional: Arc<OptionalStores>,
    trust_domain: String,
    settings: MeshSettings,
}

impl Discovery for KubeDiscovery {
    fn run(self: Box<Self>, out: watch::Sender<Arc<Discovered>>) -> BoxFuture<()> {
        Box::pin(async move {
            let changed = Arc::new(Notify::new());
            let mut tasks = JoinSet::new();
            let client = &self.client;
            let optional = Arc::new(OptionalStores::default());
            let missing = optional_kinds::watch_installed(
                client,
                OptionalKind::all(self.istio_resources),
                &optional,
                &mut tasks,
                &changed,
                &self.watched,
                self.crd_recheck,
            )
            .await;
            tasks.spawn(optional_kinds::watch_missing(
                client.clone(),
                missing,
                optional.clone(),
                changed.clone(),
                self.crd_recheck,
                self.watched.clone(),
            ));
            let stores = Stores {
                namespaces: reflect(&mut tasks, Api::all(client.clone()), (), &changed),
                pods: reflect(&mut tasks, Api::all(client.clone()), (), &changed),
                services: reflect(&mut tasks, Api::all(client.clone()), (), &changed),
                slices: reflect(&mut tasks, Api::all(client.clone()), (), &changed),
                custom: CrdKind::ALL
                    .iter()
                    .map(|kind| {
                        let ar = kind.api_resource();
                        (*kind, reflect(&mut tasks, Api::all_with(client.clone(), &ar), ar, &changed))
                    })
                    .collect(),
                optional,
                trust_domain: self.trust_domain.clone(),
                settings: self.settings.clone(),
            };
            for kind in ["Namespace", "Pod", "Service", "EndpointSlice"]
                .map(str::to_string)
                .into_iter()
                .chain(CrdKind::ALL.iter().map(|k| format!("{}.{}", k.api_resource().kind, k.api_resource().group)))
            {
                self.watched.with_label_values(&[&kind]).set(1);
            }
            let (observed_tx, observed_rx) = watch::channel(Arc::new(Observed::default()));
            // Kept alive for the whole run, so the status writer sees a gate that stays open.
            let (_always, always) = watch::channel(true);
            let gate = match self.status.clone() {
                StatusWrites::Always => Some(always),
                StatusWrites::Never => None,
                StatusWrites::WhileLeading(leader) => Some(leader),
            };
            if let Some(gate) = gate {
                tasks.spawn(status::run(self.client.clone(), self.trust_domain.clone(), observed_rx, gate));
            }
            tokio::select! {
                _ = publish(&stores, &changed, self.debounce, &out, &observed_tx) => {}
                // The reflectors and the status writer loop forever; one ending is a bug worth stopping for.
                ended = tasks.join_next() => tracing::error!(?ended, "a Kubernetes discovery task ended"),
            }
        })
    }
}

/// Starts a reflector for `api`'s kind in `tasks`; every event it applies wakes `changed`.
pub(super) fn reflect<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    dyntype: K::DynamicType,
    changed: &Arc<Notify>,
) -> Store<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    let kind = K::kind(&dyntype).to_string();
    let writer = reflector::store::Writer::new(dyntype);
    let reader = writer.as_reader();
    // Managed fields are most of an object's bytes and nothing here reads them.
    let stream =
        watcher(api, watcher::Config::default()).default_backoff().modify(|o: &mut K| o.managed_fields_mut().clear());
    tasks.spawn(drive(kind, reflector::reflector(writer, stream), changed.clone()));
    reader
}

async fn drive<K>(
    kind: String,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    changed: Arc<Notify>,
) {
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Ok(_) => changed.notify_one(),
            // The watcher relists or re-watches on its own, with backoff; a 410 Gone lands here too.
            Err(e) => tracing::info!(kind, error = %e, "watch interrupted; resuming"),
        }
    }
}

/// Waits for every kind's first list, then publishes a snapshot after every burst of changes.
async fn publish(
    stores: &Stores,
    changed: &Notify,
    debounce: Duration,
    out: &watch::Sender<Arc<Discovered>>,
    observed: &watch::Sender<Arc<Observed>>,
) {
    let ready = async {
        let _ = stores.namespaces.wait_until_ready().await;
        let _ = stores.pods.wait_until_ready().await;
        let _ = stores.services.wait_until_ready().await;
        let _ = stores.slices.wait_until_ready().await;
        for (_, store) in &stores.custom {
            let _ = store.wait_until_ready().await;
        }
        // Those installed at start; one found later joins once listed (its first list wakes `changed`).
        for (_, store) in stores.optional.gateway() {
            let _ = store.wait_until_ready().await;
        }
        for (_, store) in stores.optional.istio() {
            let _ = store.wait_until_ready().await;
        }
    };
    ready.await;
    tracing::info!("listed every kind from the Kubernetes API; publishing");
    let mut last: Option<Arc<Discovered>> = None;
    loop {
        let (discovered, resources) = snapshot(stores);
        let discovered = Arc::new(discovered);
        if last.as_deref() != Some(&discovered) {
            tracing::debug!(objects = discovered.objects.len(), rejected = discovered.rejected.len(), "discovered");
            out.send_replace(discovered.clone());
            last = Some(discovered.clone());
        }
        // Statuses follow every change of the resources too (a status write of ours comes back as one).
        observed.send_replace(Arc::new(Observed { discovered, resources }));
        changed.notified().await;
        if out.is_closed() {
            return;
        }
        tokio::time::sleep(debounce).await;
    }
}

/// Everything the stores hold now, as the model.
fn snapshot(stores: &Stores) -> (Discovered, Vec<CrdObject>) {
    let mut discovered = Discovered::default();
    let mut meshed = BTreeMap::new();
    for ns in stores.namespaces.state() {
        let (namespace, warning) = convert::namespace(&ns);
        if let Some(warning) = warning {
            tracing::warn!("{warning}");
        }
        meshed.insert(namespace.name.clone(), namespace.meshed);
        discovered.objects.push(crate::model::Sourced::new(crds::SOURCE, crate::model::Object::Namespace(namespace)));
    }
    for pod in stores.pods.state() {
        let namespace_meshed = meshed.get(&pod.namespace().unwrap_or_default()).copied().unwrap_or(false);
        match convert::workload(&pod, namespace_meshed) {
            Some(Ok(workload)) => discovered.objects.push(workload),
            Some(Err(rejection)) => discovered.rejected.push(rejection),
            None => {}
        }
    }
    let slices = stores.slices.state();
    let mut by_service: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in &slices {
        if let Some(service) = convert::slice_service(slice) {
            by_service.entry(service).or_default().push(slice);
        }
    }
    for svc in stores.services.state() {
        let id = (svc.namespace().unwrap_or_default(), svc.name_any());
        let slices = by_service.get(&id).map(Vec::as_slice).unwrap_or_default();
        match convert::service(&svc, slices) {
            Ok(service) => discovered.objects.push(service),
            Err(rejection) => discovered.rejected.push(rejection),
        }
    }
    let mut resources = Vec::new();
    let custom = stores.custom.iter().cloned().chain(stores.optional.gateway());
    for (kind, store) in custom {
        for object in store.state() {
            let (meta, parsed) = match kind {
                CrdKind::Gateway(route) => crds::read_gateway(route, &object),
                _ => {
                    let (meta, parsed) = crds::read(kind, &object);
                    (meta, Some(parsed))
                }
            };
            resources.push(meta);
            match parsed {
                Some(Ok(sourced)) => discovered.objects.push(sourced),
                Some(Err(rejection)) => discovered.rejected.push(rejection),
                None => {}
            }
        }
    }
    for (ar, store) in stores.optional.istio() {
        for object in store.state() {
            match super::istio::read(&ar, &object, &stores.trust_domain) {
                Ok(sourced) => discovered.objects.push(sourced),
                Err(rejection) => discovered.rejected.push(rejection),
            }
        }
    }
    discovered
        .objects
        .push(crate::model::Sourced::new(crds::SOURCE, crate::model::Object::MeshSettings(stores.settings.clone())));
    // Store order is a hash map's: sort so that an unchanged cluster is an unchanged snapshot.
    discovered.objects.sort_by_key(|o| o.object.key());
    discovered.rejected.sort_by(|a, b| (&a.key, &a.message).cmp(&(&b.key, &b.message)));
    (discovered, resources)
}
