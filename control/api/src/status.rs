//! What the control plane tells operators about its node proxies (`GET /debug/proxies` on the monitoring
//! port, read by `strait status` and `strait check`). Read-only, and free of secrets: names, versions,
//! reasons and expiry times only.

use serde::{Deserialize, Serialize};

/// The monitoring port's path for [`MeshStatus`].
pub const STATUS_PATH: &str = "/debug/proxies";

/// The request header a node proxy names its admin address in when it opens its configuration stream, so
/// operators can find `/config_dump` and `/tap` by node name.
pub const ADMIN_HEADER: &str = "x-strait-admin";

/// The control plane's view of the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// The newest configuration version published (0 before the first).
    pub version: u64,
    /// Rejected resources of the latest admission round (file or object, field, what was done).
    #[serde(default)]
    pub problems: Vec<String>,
    /// Every node the control plane has heard from, or that has meshed workloads, by name.
    #[serde(default)]
    pub proxies: Vec<ProxyStatus>,
    /// With several replicas (leader election): whether this one holds the leader Lease and writes status.
    /// Absent with a single replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
}

/// One node proxy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub node: String,
    /// Configuration streams open now (0 = disconnected; 2 briefly while a proxy reconnects or is replaced).
    pub connected_streams: u64,
    /// Unix seconds since which a stream has been open without a gap; `None` when disconnected.
    pub connected_since: Option<u64>,
    /// Unix seconds of the last disconnection, if the proxy was connected before and is not now.
    pub disconnected_since: Option<u64>,
    /// The admin address the proxy reported (`host:port`), if any.
    pub admin_address: Option<String>,
    pub last_pushed: Option<u64>,
    pub last_acked: Option<u64>,
    pub last_nacked: Option<u64>,
    /// Why the proxy refused `last_nacked`.
    pub nack_reason: Option<String>,
    /// `namespace/name` of the meshed workloads on this node in the configuration last pushed to it.
    #[serde(default)]
    pub workloads: Vec<String>,
    /// The certificates the control plane last signed for this node's workloads.
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    pub identity: String,
    pub not_after_unix: u64,
}

/// Whether a proxy runs the newest configuration, in `istioctl proxy-status` terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Sync {
    /// It ACKed the newest version.
    Synced,
    /// It refused the newest version and serves an older one.
    Nacked,
    /// The newest version was sent and not answered yet (or an older one was ACKed last).
    Stale,
    /// Nothing was ever sent to it.
    NotSent,
    /// No stream open.
    Disconnected,
}

impl ProxyStatus {
    /// How this proxy stands against `version`, the newest published.
    pub fn sync(&self, version: u64) -> Sync {
        if self.connected_streams == 0 {
            return Sync::Disconnected;
        }
        match (self.last_pushed, self.last_acked, self.last_nacked) {
            (None, _, _) => Sync::NotSent,
            (_, Some(acked), _) if acked == version => Sync::Synced,
            (_, _, Some(nacked)) if nacked == version => Sync::Nacked,
            _ => Sync::Stale,
        }
    }

    /// The earliest expiry among its certificates.
    pub fn earliest_expiry(&self) -> Option<u64> {
        self.certificates.iter().map(|c| c.not_after_unix).min()
    }
}

impl std::fmt::Display for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sync::Synced => "SYNCED",
            Sync::Nacked => "NACKED",
            Sync::Stale => "STALE",
            Sync::NotSent => "NOT SENT",
            Sync::Disconnected => "DISCONNECTED",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_follows_the_answers_to_the_newest_version() {
        let mut p = ProxyStatus { node: "n".into(), connected_streams: 1, ..Default::default() };
        assert_eq!(p.sync(5), Sync::NotSent);
        p.last_pushed = Some(5);
        p.last_acked = Some(4);
        assert_eq!(p.sync(5), Sync::Stale);
        p.last_nacked = Some(5);
        assert_eq!(p.sync(5), Sync::Nacked);
        p.last_acked = Some(5);
        assert_eq!(p.sync(5), Sync::Synced);
        p.connected_streams = 0;
        assert_eq!(p.sync(5), Sync::Disconnected);
    }
}
