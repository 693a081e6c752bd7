//! Configuration push: the publisher turns discovered inputs into numbered versions; each proxy's stream
//! sends the newest version as soon as it exists and records the proxy's ACK or NACK.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use strait_api::frame::{encode_line, LineDecoder};
use strait_api::protocol::{ConfigAck, ConfigPush};
use tokio::sync::{mpsc, watch};

use crate::admit::Admission;
use crate::model::{Discovered, Snapshot};
use crate::stats::Stats;
use crate::translate::translate;

/// One accepted version of the mesh's inputs.
#[derive(Debug)]
pub struct Published {
    pub version: u64,
    pub snapshot: Arc<Snapshot>,
}

pub type PublishedRx = watch::Receiver<Option<Arc<Published>>>;

/// A proxy's ACK line may carry a long NACK reason, but nothing legitimate comes near this.
const MAX_ACK_LINE: usize = 1 << 20;

/// Admits every discovered state and publishes a new version when the accepted inputs changed. Versions
/// start at the wall clock in milliseconds, so a restarted control plane continues above its predecessor's
/// numbers (proxies accept any version on a new stream anyway).
pub async fn publish(
    mut discovered: watch::Receiver<Arc<Discovered>>,
    out: watch::Sender<Option<Arc<Published>>>,
    trust_domain: String,
    stats: Arc<Stats>,
) {
    let mut admission = Admission::new(trust_domain.clone());
    let mut version =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut current: Option<Arc<Snapshot>> = None;
    // The channel's initial value is a placeholder, not what the provider saw: publishing it would push an
    // empty mesh to every proxy. Wait for the provider's first real state.
    if discovered.changed().await.is_err() {
        return;
    }
    loop {
        let inputs = discovered.borrow_and_update().clone();
        let admitted = admission.admit(&inputs);
        for problem in &admitted.problems {
            tracing::warn!("rejected configuration: {problem}");
        }
        stats.set_problems(admitted.problems);
        if current.as_deref() != Some(&admitted.snapshot) {
            // Admission checked every object; a whole-mesh check catches anything only visible together.
            match translate(&admitted.snapshot, &trust_domain, "").validate() {
                Ok(()) => {
                    version += 1;
                    let snapshot = Arc::new(admitted.snapshot);
                    current = Some(snapshot.clone());
                    stats.set_version(version);
                    tracing::info!(
                        version,
                        workloads = snapshot.workloads.len(),
                        services = snapshot.services.len(),
                        routes = snapshot.traffic_routes.len(),
                        "publishing configuration"
                    );
                    out.send_replace(Some(Arc::new(Published { version, snapshot })));
                }
                Err(e) => tracing::error!(error = %e, "not publishing: the mesh configuration is invalid as a whole"),
            }
        }
        if discovered.changed().await.is_err() {
            return;
        }
    }
}

/// Serves one proxy's stream: pushes every new version to `tx` and records the ACKs read from `acks`.
/// Returns when the proxy goes away, or when the control plane drains: the stream then ends cleanly and the
/// proxy, which keeps serving its last good configuration, reconnects (to another replica).
pub async fn serve_stream(
    node: String,
    mut published: PublishedRx,
    trust_domain: String,
    stats: Arc<Stats>,
    acks: Incoming,
    tx: mpsc::Sender<Bytes>,
    drain: watch::Receiver<bool>,
) {
    stats.stream_opened(&node);
    let reader = tokio::spawn(read_acks(acks, node.clone(), stats.clone()));
    let mut last_sent = None;
    loop {
        let current = published.borrow_and_update().clone();
        if let Some(p) = current.filter(|p| last_sent != Some(p.version)) {
            let push = ConfigPush {
                version: p.version,
                node: node.clone(),
                config: translate(&p.snapshot, &trust_domain, &node),
            };
            match encode_line(&push) {
                Ok(line) => {
                    if tx.send(Bytes::from(line)).await.is_err() {
                        break;
                    }
                    tracing::debug!(node, version = p.version, "pushed configuration");
                    stats.pushed(&node, p.version, &push.config);
                }
                Err(e) => tracing::error!(node, error = %e, "cannot encode the configuration"),
            }
            last_sent = Some(p.version);
        }
        tokio::select! {
            changed = published.changed() => if changed.is_err() { break },
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
