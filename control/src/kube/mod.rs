//! Kubernetes mode: the mesh's inputs come from the API server, proxies authenticate with their
//! ServiceAccount tokens, and the mesh CA lives in a Secret.
//!
//! - [`KubeDiscovery`]: reflectors on Namespaces (meshed with `strait.dev/mesh=enabled`, mTLS mode from
//!   `strait.dev/mtls-mode`), Pods, Services, EndpointSlices and the three `strait.dev` resources, building the
//!   same [`crate::model::Discovered`] the file provider builds; it also writes each resource's `Accepted` /
//!   `ResolvedRefs` conditions.
//! - [`TokenReviewVerifier`]: TokenReview (audience `strait-control`), only the proxies' ServiceAccount, bound
//!   to the node of the token's pod.
//! - [`ca_secret::load_or_create`]: the CA Secret, created at first start.
//!
//! [`start`] puts them together; the rest of the control plane (admission, translation, push, signing) is the
//! one the file mode uses.

pub mod ca_secret;
pub mod convert;
pub mod crds;
pub mod discovery;
pub mod istio;
pub mod leader;
pub mod optional_kinds;
pub mod root_configmap;
pub mod status;
pub mod token_review;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use discovery::{KubeDiscovery, StatusWrites};
pub use leader::LeaseSettings;
pub use token_review::TokenReviewVerifier;

use crate::{Parts, Running};

/// How to run against a cluster; see the binary's `--help` for each.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    pub listen: SocketAddr,
    pub trust_domain: String,
    pub cert_ttl: Duration,
    /// The namespace Strait runs in: the CA Secret and the proxies' ServiceAccount are there.
    pub namespace: String,
    pub ca_secret: String,
    /// The ConfigMap where the mesh root certificate is published for the node proxies.
    pub root_configmap: String,
    /// The ServiceAccount whose tokens the node proxies present.
    pub proxy_service_account: String,
    /// The audience proxies' projected tokens are issued for.
    pub audience: String,
    pub debounce: Duration,
    pub write_status: bool,
    /// Watch Istio's VirtualService, DestinationRule, ServiceEntry, AuthorizationPolicy and PeerAuthentication
    /// (those whose CRDs are installed) and read them as the file provider does.
    pub istio_resources: bool,
    /// The mesh's egress policy (a cluster has no Mesh document to carry it).
    pub outbound_traffic_policy: strait_api::OutboundTrafficPolicy,
    /// How bursts of changes are folded into one published version.
    pub coalesce: crate::Coalesce,
    /// Several replicas: only the holder of this Lease writes status (`write_status` must be on too).
    /// `None`: a single replica, which writes status whenever `write_status` says so.
    pub leader_election: Option<LeaseSettings>,
    /// How often kinds whose CRD is not installed (Gateway API's, Istio's) are looked for again.
    pub crd_recheck: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            listen: SocketAddr::from(([0, 0, 0, 0], 15012)),
            trust_domain: strait_api::default_trust_domain(),
            cert_ttl: strait_certs::DEFAULT_WORKLOAD_TTL,
            namespace: "strait-system".to_string(),
            ca_secret: "strait-ca".to_string(),
            root_configmap: "strait-root-cert".to_string(),
            proxy_service_account: "strait-proxy".to_string(),
            audience: "strait-control".to_string(),
            debounce: discovery::DEFAULT_DEBOUNCE,
            write_status: true,
            istio_resources: false,
            outbound_traffic_policy: Default::default(),
            coalesce: crate::Coalesce::default(),
            leader_election: None,
            crd_recheck: optional_kinds::DEFAULT_RECHECK,
        }
    }
}

/// Starts the control plane against the cluster `client` talks to: loads or creates the CA Secret, then
/// serves as [`crate::start_coalescing`] does. Returns once listening; discovery fills in the configuration as the
/// first lists arrive (proxies get nothing until every kind has been listed once).
pub async fn start(client: kube::Client, options: KubeOptions) -> anyhow::Result<Running> {
    let ca = ca_secret::load_or_create(client.clone(), &options.namespace, &options.ca_secret, &options.trust_domain)
        .await
        .context("the mesh CA")?;
    root_configmap::publish(client.clone(), &options.namespace, &options.root_configmap, ca.root_pem())
        .await
        .context("the root certificate for the node proxies")?;
    let verifier =
        TokenReviewVerifier::new(client.clone(), &options.audience, &options.namespace, &options.proxy_service_account);
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(false);
    let status = match (&options.leader_election, options.write_status) {
        (_, false) => StatusWrites::Never,
        (None, true) => StatusWrites::Always,
        (Some(_), true) => StatusWrites::WhileLeading(leader_rx.clone()),
    };
    let discovery = KubeDiscovery::new(client.clone(), options.trust_domain.clone())
        .with_debounce(options.debounce)
        .with_status(status)
        .with_istio_resources(options.istio_resources)
        .with_outbound_traffic_policy(options.outbound_traffic_policy)
        .with_crd_recheck(options.crd_recheck);
    let watched_kinds = discovery.watched_kinds();
    let parts = Parts { discovery: Box::new(discovery), verifier: Arc::new(verifier), ca };
    let mut running = crate::start_coalescing(options.listen, options.cert_ttl, options.coalesce, parts).await?;
    running.stats().registry().register(Box::new(watched_kinds)).context("registering strait_control_watched_kinds")?;
    if let Some(settings) = options.leader_election {
        let stats = running.stats().clone();
        stats.set_leader(Some(false));
        let drain = running.drain_signal();
        running.spawn(leader::run(client, settings, leader_tx, drain));
        running.spawn(mirror_leadership(leader_rx, stats));
    }
    Ok(running)
}

/// Keeps the `strait_control_leader` gauge and `/debug/proxies` in step with the election.
async fn mirror_leadership(mut leader: tokio::sync::watch::Receiver<bool>, stats: Arc<crate::Stats>) {
    loop {
        stats.set_leader(Some(*leader.borrow_and_update()));
        if leader.changed().await.is_err() {
            // The elector runs as long as the control plane; so does this task.
            std::future::pending::<()>().await;
        }
    }
}
