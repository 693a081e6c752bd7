//! What the control plane knows about its proxies: per-node push/ACK state and Prometheus counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use std::sync::Arc;

use strait_api::delta::Resource;
use strait_api::status::{CertificateStatus, MeshStatus, ProxyStatus};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// What a pushed line carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// The node's whole configuration.
    Full,
    /// What changed since the last version sent (protocol 2).
    Delta,
}

impl LineKind {
    fn label(self) -> &'static str {
        match self {
            LineKind::Full => "full",
            LineKind::Delta => "delta",
        }
    }
}

/// One node's view, as the control plane saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// Streams open now (normally 0 or 1; 2 briefly while a proxy reconnects).
    pub connected_streams: u64,
    pub last_pushed: Option<u64>,
    pub last_acked: Option<u64>,
    pub last_nacked: Option<u64>,
    /// The reason of the last NACK.
    pub last_error: Option<String>,
    /// Since when a stream has been open without a gap (`None` while disconnected).
    pub connected_since: Option<SystemTime>,
    /// When the last stream closed, if none is open now.
    pub disconnected_since: Option<SystemTime>,
    /// The admin address the proxy reported on its stream.
    pub admin: Option<SocketAddr>,
    /// `(sent, newest)`: the versions after `sent` up to `newest` did not change this node's configuration, so
    /// they were not sent, and the proxy's answer to `sent` stands for `newest` too.
    pub unchanged_through: Option<(u64, u64)>,
    /// `namespace/name` of the meshed workloads on the node in the configuration last pushed to it.
    pub workloads: Vec<String>,
    /// Expiry of the certificate last signed for each identity on the node (at most one entry per workload
    /// identity of the node's configuration, so bounded by it).
    pub certificates: BTreeMap<String, SystemTime>,
}

pub struct Stats {
    registry: Registry,
    pushes: IntCounterVec,
    acks: IntCounterVec,
    streams: IntGaugeVec,
    bytes: IntCounterVec,
    lines: IntCounterVec,
    unchanged: IntCounter,
    publishes: IntCounter,
    updates: IntCounter,
    coalesced: IntCounter,
    nodes: Mutex<BTreeMap<String, NodeStatus>>,
    problems: Mutex<Vec<String>>,
    version: AtomicU64,
    /// Set when the control plane starts draining: not ready from then on.
    draining: AtomicBool,
    /// Leader election: `None` without one (a single replica), else whether this replica leads.
    leader: Mutex<Option<bool>>,
    leader_gauge: IntGauge,
}

impl Stats {
    /// Counters live in their own registry so that several control planes can share a process (tests, the
    /// local mesh launcher); the binary serves this registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let pushes = IntCounterVec::new(
            Opts::new("strait_control_config_pushes_total", "Configuration versions sent to node proxies"),
            &["node"],
        )
        .expect("static metric definition");
        let acks = IntCounterVec::new(
            Opts::new("strait_control_config_acks_total", "Answers of node proxies to configuration pushes"),
            &["node", "result"],
        )
        .expect("static metric definition");
        let streams =
            IntGaugeVec::new(Opts::new("strait_control_config_streams", "Open configuration streams"), &["node"])
                .expect("static metric definition");
        let bytes = IntCounterVec::new(
            Opts::new("strait_control_config_bytes_total", "Bytes of configuration lines sent to node proxies"),
            &["kind"],
        )
        .expect("static metric definition");
        let lines = IntCounterVec::new(
            Opts::new("strait_control_config_lines_total", "Configuration lines sent to node proxies"),
            &["kind"],
        )
        .expect("static metric definition");
        let unchanged = IntCounter::new(
            "strait_control_config_unchanged_total",
            "Versions not sent to a node proxy because its configuration did not change",
        )
        .expect("static metric definition");
        let publishes = IntCounter::new("strait_control_publishes_total", "Configuration versions published")
            .expect("static metric definition");
        let updates = IntCounter::new("strait_control_discovery_updates_total", "Changes seen from discovery")
            .expect("static metric definition");
        let coalesced = IntCounter::new(
            "strait_control_discovery_updates_coalesced_total",
            "Changes from discovery folded into a publish together with an earlier one",
        )
        .expect("static metric definition");
        let leader_gauge = IntGauge::new(
            "strait_control_leader",
            "1 while this replica holds the leader Lease (writes status), 0 while it does not",
        )
        .expect("static metric definition");
        for collector in [
            Box::new(pushes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(acks.clone()),
            Box::new(streams.clone()),
            Box::new(bytes.clone()),
            Box::new(lines.clone()),
            Box::new(unchanged.clone()),
            Box::new(publishes.clone()),
            Box::new(updates.clone()),
            Box::new(coalesced.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Stats {
            registry,
            pushes,
            acks,
            streams,
            bytes,
            lines,
            unchanged,
            publishes,
            updates,
            coalesced,
            nodes: Mutex::new(BTreeMap::new()),
            problems: Mutex::new(Vec::new()),
            version: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            leader: Mutex::new(None),
            leader_gauge,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether this replica leads (`None`: no leader election, a single replica).
    pub fn leader(&self) -> Option<bool> {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The gauge is registered with the first verdict, so a replica without election exports none.
    pub fn set_leader(&self, leader: Option<bool>) {
        let mut current = self.leader.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_none() && leader.is_some() {
            // Registering twice fails harmlessly; only the first verdict gets here.
            let _ = self.registry.register(Box::new(self.leader_gauge.clone()));
        }
        self.leader_gauge.set(i64::from(leader == Some(true)));
        *current = leader;
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn node(&self, node: &str) -> Option<NodeStatus> {
        self.lock_nodes().get(node).cloned()
    }

    pub fn nodes(&self) -> BTreeMap<String, NodeStatus> {
        self.lock_nodes().clone()
    }

    /// The problems of the latest admission round (rejected objects and what was done about them).
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The newest configuration version published (0 before the first).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    pub(crate) fn set_problems(&self, problems: Vec<String>) {
        *self.problems.lock().unwrap_or_else(|e| e.into_inner()) = problems;
    }

    pub(crate) fn set_version(&self, version: u64) {
        self.version.store(version, Ordering::Relaxed);
    }

    pub(crate) fn stream_opened(&self, node: &str) {
        self.streams.with_label_values(&[node]).inc();
        self.update(node, |s| {
            s.connected_streams += 1;
            if s.connected_since.is_none() {
                s.connected_since = Some(SystemTime::now());
            }
            s.disconnected_since = None;
        });
    }

    pub(crate) fn stream_closed(&self, node: &str) {
        self.streams.with_label_values(&[node]).dec();
        self.update(node, |s| {
            s.connected_streams = s.connected_streams.saturating_sub(1);
            if s.connected_streams == 0 {
                s.connected_since = None;
                s.disconnected_since = Some(SystemTime::now());
            }
        });
    }

    /// The admin address a proxy reported when it opened its stream.
    pub(crate) fn reported_admin(&self, node: &str, admin: SocketAddr) {
        self.update(node, |s| s.admin = Some(admin));
    }

    /// A round of `updates` discovery changes was folded into one admission (and a publish, if it changed the
    /// mesh).
    pub(crate) fn discovery_updates(&self, updates: u64) {
        self.updates.inc_by(updates);
        self.coalesced.inc_by(updates.saturating_sub(1));
    }

    pub(crate) fn published(&self) {
        self.publishes.inc();
    }

    /// `view` is the node's configuration as pushed (a line of `kind`, `bytes` long): the node's meshed workloads
    /// are read from it, and certificates of identities no longer on the node are forgotten.
    pub(crate) fn pushed(
        &self,
        node: &str,
        version: u64,
        kind: LineKind,
        bytes: usize,
        trust_domain: &str,
        view: &[Arc<Resource>],
    ) {
        self.pushes.with_label_values(&[node]).inc();
        self.lines.with_label_values(&[kind.label()]).inc();
        self.bytes.with_label_values(&[kind.label()]).inc_by(bytes as u64);
        let local: Vec<&strait_api::Workload> = view
            .iter()
            .filter_map(|r| match &**r {
                Resource::Workload(w) if w.node == node && w.meshed => Some(w),
                _ => None,
            })
            .collect();
        let workloads = local.iter().map(|w| format!("{}/{}", w.namespace, w.name)).collect();
        let identities: Vec<String> = local.iter().map(|w| w.spiffe_id(trust_domain)).collect();
        self.update(node, |s| {
            s.last_pushed = Some(version);
            s.unchanged_through = None;
            s.workloads = workloads;
            s.certificates.retain(|identity, _| identities.contains(identity));
        });
    }

    /// `version` left the node's configuration as last pushed: nothing was sent, and the node is as current
    /// with it as it was with the version it holds.
    pub(crate) fn unchanged(&self, node: &str, version: u64) {
        self.unchanged.inc();
        self.update(node, |s| {
            let Some(pushed) = s.last_pushed else { return };
            let sent = s.unchanged_through.map_or(pushed, |(sent, _)| sent);
            // Already answered: the answer holds for this version too.
            if s.last_acked == Some(pushed) {
                s.last_acked = Some(version);
            }
            if s.last_nacked == Some(pushed) {
                s.last_nacked = Some(version);
            }
            s.unchanged_through = Some((sent, version));
            s.last_pushed = Some(version);
        });
    }

    /// Records the expiry of a certificate just signed for `node` (`chain_pem`: leaf first).
    pub(crate) fn signed(&self, node: &str, chain_pem: &str) {
        let leaf = strait_certs::certs_from_pem(chain_pem)
            .ok()
            .and_then(|chain| chain.into_iter().next())
            .and_then(|der| strait_certs::workload::parse_leaf(der.as_ref()).ok());
        if let Some(leaf) = leaf {
            self.update(node, |s| {
                s.certificates.insert(leaf.identity.to_string(), leaf.not_after);
            });
        }
    }

    /// Everything above, for operators (`GET /debug/proxies`).
    pub fn mesh_status(&self) -> MeshStatus {
        let unix = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let proxies = self
            .nodes()
            .into_iter()
            .map(|(node, s)| ProxyStatus {
                node,
                connected_streams: s.connected_streams,
                connected_since: s.connected_since.map(unix),
                disconnected_since: s.disconnected_since.map(unix),
                admin_address: s.admin.map(|a| a.to_string()),
                last_pushed: s.last_pushed,
                last_acked: s.last_acked,
                last_nacked: s.last_nacked,
                nack_reason: s.last_error,
                workloads: s.workloads,
                certificates: s
                    .certificates
                    .into_iter()
                    .map(|(identity, t)| CertificateStatus { identity, not_after_unix: unix(t) })
                    .collect(),
            })
            .collect();
        MeshStatus { version: self.version(), problems: self.problems(), proxies, leader: self.leader() }
    }

    pub(crate) fn acked(&self, node: &str, version: u64) {
        self.acks.with_label_values(&[node, "ack"]).inc();
        self.update(node, |s| s.last_acked = Some(Self::standing_for(s, version)));
    }

    pub(crate) fn nacked(&self, node: &str, version: u64, error: &str) {
        self.acks.with_label_values(&[node, "nack"]).inc();
        self.update(node, |s| {
            s.last_nacked = Some(Self::standing_for(s, version));
            s.last_error = Some(error.to_string());
        });
    }

    /// The newest version an answer to `version` stands for (see [`NodeStatus::unchanged_through`]).
    fn standing_for(s: &NodeStatus, version: u64) -> u64 {
        match s.unchanged_through {
            Some((sent, newest)) if sent == version => newest,
            _ => version,
        }
    }

    fn update(&self, node: &str, f: impl FnOnce(&mut NodeStatus)) {
        f(self.lock_nodes().entry(node.to_string()).or_default());
    }

    fn lock_nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NodeStatus>> {
        // A panic elsewhere while holding the lock leaves plain counters behind; they are still usable.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_api::status::Sync;

    fn acked_and_pushed(stats: &Stats) -> (Option<u64>, Option<u64>) {
        let s = stats.node("n1").expect("the node is known");
        (s.last_pushed, s.last_acked)
    }

    #[test]
    fn a_version_that_leaves_a_node_unchanged_keeps_it_in_sync() {
        let stats = Stats::new();
        stats.stream_opened("n1");
        stats.pushed("n1", 5, LineKind::Full, 10, "cluster.local", &[]);
        stats.acked("n1", 5);
        stats.unchanged("n1", 6);
        assert_eq!(acked_and_pushed(&stats), (Some(6), Some(6)), "answered already: current with 6");

        // Unchanged before the proxy answered: its answer to 7 stands for 8.
        stats.pushed("n1", 7, LineKind::Delta, 10, "cluster.local", &[]);
        stats.unchanged("n1", 8);
        assert_eq!(acked_and_pushed(&stats), (Some(8), Some(6)));
        stats.acked("n1", 7);
        assert_eq!(acked_and_pushed(&stats), (Some(8), Some(8)));
        stats.set_version(8);
        let status = stats.mesh_status();
        assert_eq!(status.proxies[0].sync(8), Sync::Synced);

        // A NACK likewise.
        stats.pushed("n1", 9, LineKind::Delta, 10, "cluster.local", &[]);
        stats.unchanged("n1", 10);
        stats.nacked("n1", 9, "bad");
        assert_eq!(stats.node("n1").and_then(|s| s.last_nacked), Some(10));
        let bytes = stats.registry().gather();
        let bytes = bytes.iter().find(|f| f.name() == "strait_control_config_bytes_total").expect("registered");
        let total: f64 = bytes.get_metric().iter().map(|m| m.get_counter().get_value()).sum();
        assert_eq!(total, 30.0);
    }
}
