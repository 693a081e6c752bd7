//! Configuration push: the publisher turns bursts of discovered inputs into numbered versions of the mesh; each
//! proxy's stream sends its node's cut of the newest version ([`crate::scope`]) as soon as it exists, as a full
//! snapshot first and then (protocol 2) as deltas, and records the proxy's ACK or NACK.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use strait_api::delta::{diff, Resource};
use strait_api::frame::{encode_line, LineDecoder};
use strait_api::protocol::{ConfigAck, ConfigPushRef, ConfigRef, ConfigUpdateRef, PROTOCOL_DELTA, PROTOCOL_FULL};
use strait_api::PeerAuthentication;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::admit::Admission;
use crate::interest::Registration;
use crate::model::{Discovered, Snapshot};
use crate::scope::{Catalog, NodeView};
use crate::stats::{LineKind, Stats};
use crate::translate::translate;

/// One accepted version of the mesh's inputs.
#[derive(Debug)]
pub struct Published {
    pub version: u64,
    pub snapshot: Arc<Snapshot>,
    /// The version cut per node.
    pub catalog: Arc<Catalog>,
}

pub type PublishedRx = watch::Receiver<Option<Arc<Published>>>;

/// How long the first line of a protocol 3 stream waits for the proxy's interest set.
const FIRST_INTERESTS_WAIT: Duration = Duration::from_secs(1);

/// A proxy's ACK line may carry a long NACK reason, but nothing legitimate comes near this.
const MAX_ACK_LINE: usize = 1 << 20;

/// How bursts of discovery changes are folded into one publish: after a change, wait until `quiet` passes
/// without another, but never longer than `max_delay` after the first (a rollout that never pauses still
/// reaches the proxies).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesce {
    pub quiet: Duration,
    pub max_delay: Duration,
}

impl Default for Coalesce {
    fn default() -> Self {
        Coalesce { quiet: Duration::from_millis(100), max_delay: Duration::from_secs(1) }
    }
}

/// Admits every discovered state and publishes a new version when the accepted inputs changed. Versions
/// start at the wall clock in milliseconds, so a restarted control plane continues above its predecessor's
/// numbers (proxies accept any version on a new stream anyway).
pub async fn publish(
    mut discovered: watch::Receiver<Arc<Discovered>>,
    out: watch::Sender<Option<Arc<Published>>>,
    trust_domain: String,
    stats: Arc<Stats>,
    coalesce: Coalesce,
) {
    let mut admission = Admission::new(trust_domain.clone());
    let mut version =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut current: Option<Arc<Snapshot>> = None;
    let mut catalog: Option<Arc<Catalog>> = None;
    // The channel's initial value is a placeholder, not what the provider saw: publishing it would push an
    // empty mesh to every proxy. Wait for the provider's first real state.
    if discovered.changed().await.is_err() {
        return;
    }
    loop {
        let (mut updates, closed) = settle(&mut discovered, coalesce).await;
        // One that arrived as the wait ended is in this round too.
        if discovered.has_changed().unwrap_or(false) {
            updates += 1;
        }
        stats.discovery_updates(updates);
        let inputs = discovered.borrow_and_update().clone();
        let admitted = admission.admit(&inputs);
        for problem in &admitted.problems {
            tracing::warn!("rejected configuration: {problem}");
        }
        stats.set_problems(admitted.problems);
        if current.as_deref() != Some(&admitted.snapshot) {
            // Admission checked every object; a whole-mesh check catches anything only visible together.
            let mesh = translate(&admitted.snapshot, &trust_domain);
            match mesh.validate() {
                Ok(()) => {
                    version += 1;
                    let snapshot = Arc::new(admitted.snapshot);
                    let next = Arc::new(Catalog::build(&mesh, catalog.as_deref()));
                    current = Some(snapshot.clone());
                    catalog = Some(next.clone());
                    stats.set_version(version);
                    stats.published();
                    tracing::info!(
                        version,
                        updates,
                        workloads = snapshot.workloads.len(),
                        services = snapshot.services.len(),
                        routes = snapshot.traffic_routes.len(),
                        "publishing configuration"
                    );
                    out.send_replace(Some(Arc::new(Published { version, snapshot, catalog: next })));
                }
                Err(e) => tracing::error!(error = %e, "not publishing: the mesh configuration is invalid as a whole"),
            }
        }
        if closed || discovered.changed().await.is_err() {
            return;
        }
    }
}

/// Waits out a burst that has just begun (one update seen): returns once `quiet` passed without another update
/// or `max_delay` after the first, with the number of updates seen and whether the provider is gone.
async fn settle(discovered: &mut watch::Receiver<Arc<Discovered>>, coalesce: Coalesce) -> (u64, bool) {
    let deadline = Instant::now() + coalesce.max_delay;
    let mut updates = 1;
    loop {
        let quiet_until = (Instant::now() + coalesce.quiet).min(deadline);
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(quiet_until) => return (updates, false),
            changed = discovered.changed() => match changed {
                Ok(()) => updates += 1,
                Err(_) => return (updates, true),
            },
        }
    }
}

/// What a stream was negotiated (see `control/PROTOCOL.md`, "Version negotiation").
#[derive(Debug)]
pub enum Negotiated {
    /// Protocol 1: every line a full snapshot.
    Full,
    /// Protocol 2: a full snapshot, then deltas.
    Delta,
    /// Protocol 3: as 2, scoped by the node's subscriptions, which the registration follows.
    OnDemand(Registration),
}

/// Serves one proxy's stream as `negotiated`: pushes each new version that changes
/// the node's configuration, and in protocol 3 each change of its interests, to `tx` and records the ACKs read
/// from `acks`. A line that answers a subscription while the mesh did not change carries the version of the line
/// before it. Returns when the proxy goes away, or when the control plane drains: the stream then ends cleanly
/// and the proxy, which keeps serving its last good configuration, reconnects (to another replica).
pub async fn serve_stream(
    node: String,
    mut negotiated: Negotiated,
    mut published: PublishedRx,
    stats: Arc<Stats>,
    acks: Incoming,
    tx: mpsc::Sender<Bytes>,
    drain: watch::Receiver<bool>,
) {
    let protocol = match negotiated {
        Negotiated::Full => PROTOCOL_FULL,
        Negotiated::Delta | Negotiated::OnDemand(_) => PROTOCOL_DELTA,
    };
    let mut registration = match &mut negotiated {
        Negotiated::OnDemand(r) => Some(r),
        _ => None,
    };
    stats.stream_opened(&node);
    let reader = tokio::spawn(read_acks(acks, node.clone(), stats.clone()));
    // The last version sent on this stream and the node's configuration in it: what a delta applies to.
    let mut sent: Option<(u64, NodeView)> = None;
    let mut seen = None;
    let mut interests_changed = false;
    // A protocol 3 proxy sends its whole interest set as soon as the stream opens: the first line waits for it
    // (bounded), so that it already holds what the node uses and the proxy never applies a configuration that
    // lacks it (connections would wait for the answer meanwhile).
    if let Some(r) = registration.as_deref_mut() {
        let first = r.interests.wait_for(|i| i.received());
        if tokio::time::timeout(FIRST_INTERESTS_WAIT, first).await.is_err() {
            tracing::debug!(node, "no interest set from the proxy yet; sending its configuration without");
        }
    }
    loop {
        let current = published.borrow_and_update().clone();
        if let Some(p) = current.filter(|p| seen != Some(p.version) || interests_changed) {
            seen = Some(p.version);
            let view = match registration.as_deref_mut() {
                Some(r) => p.catalog.for_node_on_demand(&node, &r.interests.borrow_and_update()),
                None => without_protocol_3_fields(p.catalog.for_node(&node)),
            };
            match render(&node, protocol, &p, &view, sent.as_ref()) {
                Ok(None) => {
                    tracing::debug!(node, version = p.version, "the node's configuration did not change");
                    stats.unchanged(&node, p.version);
                }
                Ok(Some((kind, line))) => {
                    let bytes = line.len();
                    if tx.send(Bytes::from(line)).await.is_err() {
                        break;
                    }
                    tracing::debug!(node, version = p.version, ?kind, bytes, "pushed configuration");
                    stats.pushed(&node, p.version, kind, bytes, p.catalog.trust_domain(), &view);
                    sent = Some((p.version, view));
                }
                Err(e) => tracing::error!(node, error = %e, "cannot encode the configuration"),
            }
        }
        interests_changed = false;
        tokio::select! {
            changed = published.changed() => if changed.is_err() { break },
            changed = interests_changed_of(&mut registration) => match changed {
                Ok(()) => interests_changed = true,
                Err(_) => break,
            },
            _ = tx.closed() => break,
            () = crate::server::drain_started(drain.clone()) => {
                tracing::info!(node, "draining: ending the configuration stream so the proxy reconnects elsewhere");
                break;
            }
        }
    }
    reader.abort();
    stats.stream_closed(&node);
    tracing::info!(node, "configuration stream closed");
}

/// A node's view as a protocol 1 or 2 proxy reads it. Those proxies refuse unknown fields, and each field added
/// since must leave them out, or an upgrade of the control plane would have every older proxy NACK its
/// configuration until it is upgraded too: a PeerAuthentication's `created` (the creation time, which orders
/// several policies at one level). An older proxy orders them by name, as it always did.
fn without_protocol_3_fields(view: NodeView) -> NodeView {
    view.into_iter()
        .map(|resource| match &*resource {
            Resource::PeerAuthentication(policy) if policy.created.is_some() => {
                Arc::new(Resource::PeerAuthentication(PeerAuthentication { created: None, ..policy.clone() }))
            }
            _ => resource,
        })
        .collect()
}

/// Resolves when the stream's interests change (never without a registration: protocols 1 and 2).
async fn interests_changed_of(registration: &mut Option<&mut Registration>) -> Result<(), watch::error::RecvError> {
    match registration {
        Some(r) => r.interests.changed().await,
        None => std::future::pending().await,
    }
}

/// The line that brings a proxy holding `sent` to `view` (version `p.version`), or `None` when `view` is what
/// it holds already.
fn render(
    node: &str,
    protocol: u32,
    p: &Published,
    view: &NodeView,
    sent: Option<&(u64, NodeView)>,
) -> Result<Option<(LineKind, Vec<u8>)>, serde_json::Error> {
    let version = p.version;
    if let Some((base, held)) = sent {
        let delta = diff(held, view);
        if delta.is_empty() {
            return Ok(None);
        }
        if protocol != PROTOCOL_FULL {
            let (upserts, removals) = (&delta.upserts[..], &delta.removals[..]);
            let update = ConfigUpdateRef::Delta { version, node, base: *base, upserts, removals };
            return encode_line(&update).map(|line| Some((LineKind::Delta, line)));
        }
    }
    let config = ConfigRef::new(p.catalog.trust_domain(), view.iter().map(|r| &**r));
    let line = if protocol != PROTOCOL_FULL {
        encode_line(&ConfigUpdateRef::Full { version, node, config: &config })?
    } else {
        encode_line(&ConfigPushRef { version, node, config: &config })?
    };
    Ok(Some((LineKind::Full, line)))
}

async fn read_acks(mut body: Incoming, node: String, stats: Arc<Stats>) {
    let mut lines = LineDecoder::new(MAX_ACK_LINE);
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
            Err(e) => {
                tracing::debug!(node, error = %e, "configuration stream's request body ended");
                return;
            }
        };
        lines.push(&data);
        loop {
            let line = match lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(node, error = %e, "ACK line too long; no longer reading this stream's ACKs");
                    return;
                }
            };
            match serde_json::from_slice::<ConfigAck>(&line) {
                Ok(ConfigAck { version, error: None }) => {
                    tracing::debug!(node, version, "ACK");
                    stats.acked(&node, version);
                }
                Ok(ConfigAck { version, error: Some(error) }) => {
                    tracing::warn!(
                        node,
                        version,
                        error,
                        "proxy rejected configuration (NACK); it keeps its last good one"
                    );
                    stats.nacked(&node, version, &error);
                }
                Err(e) => tracing::warn!(node, error = %e, "ignoring a malformed ACK line"),
            }
        }
    }
}

/// A response body fed from a channel: each message is one chunk on the wire, sent as soon as it is queued.
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::model::{Object, Sourced, Workload};

    /// A mesh of `pods` pods on five nodes.
    fn discovered(pods: usize) -> Arc<Discovered> {
        let objects = (0..pods)
            .map(|i| {
                let workload = Workload {
                    name: format!("pod-{i}"),
                    namespace: "shop".into(),
                    service_account: "default".into(),
                    node: format!("node-{}", i % 5),
                    address: IpAddr::from([10, 0, (i / 250) as u8, (i % 250) as u8 + 1]),
                    labels: Default::default(),
                    meshed: None,
                    tunnel_port: strait_api::DEFAULT_TUNNEL_PORT,
                };
                Sourced::new("test", Object::Workload(workload))
            })
            .collect();
        Arc::new(Discovered { objects, rejected: Vec::new() })
    }

    /// A protocol 1 or 2 proxy refuses unknown fields: the creation time of a PeerAuthentication (new with
    /// protocol 3) must not reach it, and nothing else changes.
    #[test]
    fn older_proxies_get_peer_authentications_without_their_creation_time() {
        let policy = PeerAuthentication {
            name: "strict".into(),
            namespace: "shop".into(),
            mesh_wide: false,
            selector: None,
            mode: Some(strait_api::MtlsMode::Strict),
            port_level_mtls: Default::default(),
            created: Some(1_767_323_045),
        };
        let other = Arc::new(Resource::MeshSettings(Default::default()));
        let view: NodeView = vec![Arc::new(Resource::PeerAuthentication(policy.clone())), other.clone()];
        let old = without_protocol_3_fields(view);
        let json = serde_json::to_string(&*old[0]).expect("encodes");
        assert!(!json.contains("created"), "{json}");
        assert_eq!(*old[0], Resource::PeerAuthentication(PeerAuthentication { created: None, ..policy }));
        assert!(Arc::ptr_eq(&old[1], &other), "other resources are passed on as they are");
    }

    fn counter(stats: &Stats, name: &str) -> u64 {
        let families = stats.registry().gather();
        let family = families.iter().find(|f| f.name() == name).expect("the metric is registered");
        family.get_metric().iter().map(|m| m.get_counter().get_value() as u64).sum()
    }

    /// A rollout of 200 pods, one every 10 ms (2 s in all, on tokio's paused clock): the default coalescing
    /// (100 ms quiet, at most 1 s) folds it into a few versions, the last of which holds every pod.
    #[tokio::test(start_paused = true)]
    async fn a_burst_of_200_changes_makes_a_few_versions() {
        let (tx, rx) = watch::channel(Arc::new(Discovered::default()));
        let (out, mut published) = watch::channel(None);
        let stats = Arc::new(Stats::new());
        let task = tokio::spawn(publish(rx, out, "cluster.local".into(), stats.clone(), Coalesce::default()));
        for pods in 1..=200 {
            tx.send_replace(discovered(pods));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let last = published
            .wait_for(|p| p.as_ref().is_some_and(|p| p.snapshot.workloads.len() == 200))
            .await
            .expect("the publisher runs")
            .clone();
        let publishes = counter(&stats, "strait_control_publishes_total");
        assert!((1..=3).contains(&publishes), "{publishes} versions for 200 changes");
        assert_eq!(counter(&stats, "strait_control_discovery_updates_total"), 200);
        assert_eq!(counter(&stats, "strait_control_discovery_updates_coalesced_total"), 200 - publishes);
        let last = last.expect("a version was published");
        let workloads = last
            .catalog
            .for_node("node-0")
            .iter()
            .filter(|r| matches!(***r, strait_api::delta::Resource::Workload(_)))
            .count();
        assert_eq!(workloads, 200, "every pod, as every node may dial any");
        task.abort();
    }

    /// Without a pause in the changes, a version still goes out every `max_delay`.
    #[tokio::test(start_paused = true)]
    async fn an_endless_burst_still_publishes_at_the_maximum_delay() {
        let (tx, rx) = watch::channel(Arc::new(Discovered::default()));
        let (out, mut published) = watch::channel(None);
        let stats = Arc::new(Stats::new());
        let coalesce = Coalesce { quiet: Duration::from_millis(100), max_delay: Duration::from_millis(300) };
        let task = tokio::spawn(publish(rx, out, "cluster.local".into(), stats.clone(), coalesce));
        let mut pods = 0;
        // Changes every 50 ms, never 100 ms apart, until a version has gone out.
        while published.borrow_and_update().is_none() {
            pods += 1;
            assert!(pods < 100, "no version while changes keep coming");
            tx.send_replace(discovered(pods));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(counter(&stats, "strait_control_publishes_total"), 1);
        task.abort();
    }
}
