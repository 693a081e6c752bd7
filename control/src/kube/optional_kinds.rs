//! Kinds whose CRDs the user installs, or not: Gateway API's HTTPRoute and GRPCRoute, and, with
//! `--istio-resources`, Istio's five kinds. Those the API server serves at start are watched at once. A missing
//! one is not an error (the rest of the mesh works without it) and is looked for again every `recheck` (30 s by
//! default; one `limit=1` list per missing kind, seven at most): it is watched from the moment its CRD answers,
//! with a log line, without a restart. `strait_control_watched_kinds{kind}` is 1 for each kind watched and 0
//! for each one waited for.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::reflector::Store;
use prometheus::{IntGaugeVec, Opts};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::crds::CrdKind;
use super::discovery::reflect;

/// How often missing kinds are looked for, unless configured.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(30);
/// The bounds of `--crd-recheck`: often enough to matter, rare enough to cost the API server nothing.
pub const MIN_RECHECK: Duration = Duration::from_secs(1);
pub const MAX_RECHECK: Duration = Duration::from_secs(3600);

/// One kind that may be missing.
#[derive(Clone, Debug)]
pub enum OptionalKind {
    Gateway(CrdKind),
    Istio(ApiResource),
}

impl OptionalKind {
    /// Gateway API's route kinds, then Istio's when `istio` is on.
    pub fn all(istio: bool) -> Vec<OptionalKind> {
        let gateway = CrdKind::GATEWAY.into_iter().map(OptionalKind::Gateway);
        let istio_kinds = super::istio::KINDS
            .into_iter()
            .filter(move |_| istio)
            .map(|(group, kind, plural)| OptionalKind::Istio(super::istio::api_resource(group, kind, plural)));
        gateway.chain(istio_kinds).collect()
    }

    fn api_resource(&self) -> ApiResource {
        match self {
            OptionalKind::Gateway(kind) => kind.api_resource(),
            OptionalKind::Istio(ar) => ar.clone(),
        }
    }

    /// `<Kind>.<group>`, the metric label and what the log lines name.
    pub fn label(&self) -> String {
        let ar = self.api_resource();
        format!("{}.{}", ar.kind, ar.group)
    }
}

/// The stores of the optional kinds watched so far; every snapshot reads them.
#[derive(Default)]
pub struct OptionalStores {
    gateway: RwLock<Vec<(CrdKind, Store<DynamicObject>)>>,
    istio: RwLock<Vec<(ApiResource, Store<DynamicObject>)>>,
}

impl OptionalStores {
    pub fn gateway(&self) -> Vec<(CrdKind, Store<DynamicObject>)> {
        self.gateway.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn istio(&self) -> Vec<(ApiResource, Store<DynamicObject>)> {
        self.istio.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Starts watching `kind` (its reflector in `tasks`); its events wake `changed`.
    fn watch(&self, kind: &OptionalKind, client: &kube::Client, tasks: &mut JoinSet<()>, changed: &Arc<Notify>) {
        let ar = kind.api_resource();
        let store = reflect(tasks, Api::all_with(client.clone(), &ar), ar.clone(), changed);
        match kind {
            OptionalKind::Gateway(crd) => self.gateway.write().unwrap_or_else(|e| e.into_inner()).push((*crd, store)),
            OptionalKind::Istio(_) => self.istio.write().unwrap_or_else(|e| e.into_inner()).push((ar, store)),
        }
    }
}

/// `strait_control_watched_kinds`, registered with the control plane's other metrics by `kube::start`.
pub fn watched_kinds_gauge() -> IntGaugeVec {
    IntGaugeVec::new(
        Opts::new(
            "strait_control_watched_kinds",
            "Kinds read from the Kubernetes API: 1 watched, 0 its CRD not installed (looked for again periodically)",
        ),
        &["kind"],
    )
    .expect("static metric definition")
}

/// Whether the API server serves `kind` now (a 404 means its CRD is not installed).
async fn installed(client: &kube::Client, kind: &OptionalKind) -> bool {
    let ar = kind.api_resource();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(e) => {
            tracing::warn!(kind = %kind.label(), error = %e, "cannot list the kind; looking again later");
            false
        }
    }
}

/// Watches every kind of `kinds` that is installed now (reflectors in `tasks`); returns the missing ones.
pub async fn watch_installed(
    client: &kube::Client,
    kinds: Vec<OptionalKind>,
    stores: &OptionalStores,
    tasks: &mut JoinSet<()>,
    changed: &Arc<Notify>,
    gauge: &IntGaugeVec,
    recheck: Duration,
) -> Vec<OptionalKind> {
    let mut missing = Vec::new();
    for kind in kinds {
        if installed(client, &kind).await {
            stores.watch(&kind, client, tasks, changed);
            gauge.with_label_values(&[&kind.label()]).set(1);
        } else {
            tracing::info!(
                kind = %kind.label(),
                "the kind's CRD is not installed; its resources are not read until it is (looked for every {recheck:?})"
            );
            gauge.with_label_values(&[&kind.label()]).set(0);
            missing.push(kind);
        }
    }
    missing
}

/// Looks for the `missing` kinds every `recheck` and watches each one from the moment it is installed; a
/// snapshot with its objects follows (its first list wakes `changed`). Runs as long as discovery; ends only
/// if a reflector it started ends, which is a bug worth stopping for (as for the other reflectors).
pub async fn watch_missing(
    client: kube::Client,
    mut missing: Vec<OptionalKind>,
    stores: Arc<OptionalStores>,
    changed: Arc<Notify>,
    recheck: Duration,
    gauge: IntGaugeVec,
) {
    let mut reflectors = JoinSet::new();
    let mut interval = tokio::time::interval(recheck.clamp(MIN_RECHECK, MAX_RECHECK));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and `watch_installed` has just looked.
    interval.tick().await;
    loop {
        if missing.is_empty() && reflectors.is_empty() {
            // Nothing to look for and nothing started: idle for the rest of the run.
            std::future::pending::<()>().await;
        }
        tokio::select! {
            _ = interval.tick(), if !missing.is_empty() => {}
            ended = reflectors.join_next(), if !reflectors.is_empty() => {
                tracing::error!(?ended, "a reflector of a late-installed kind ended");
                return;
            }
        }
        let mut still_missing = Vec::new();
        for kind in missing {
            if installed(&client, &kind).await {
                tracing::info!(kind = %kind.label(), "the kind's CRD is installed now; watching its resources");
                stores.watch(&kind, &client, &mut reflectors, &changed);
                gauge.with_label_values(&[&kind.label()]).set(1);
            } else {
                still_missing.push(kind);
            }
        }
        missing = still_missing;
    }
}
