//! One TCP connection's record: its labels, filled along the path, and how it ended. Opened (counted) when
//! created, closed exactly once when dropped, with the flag and byte counts the path recorded by then, so a
//! path that returns early (a refusal, a failed connect) cannot forget to close it, and none can close it twice.
//! The HTTP paths' per-request record is `http::observe::Access`.

use std::io;
use std::sync::Arc;

use super::flags::ResponseFlag;
use super::labels::ConnectionLabels;
use super::metrics::Metrics;

pub(crate) struct ConnectionRecord {
    metrics: Arc<Metrics>,
    labels: ConnectionLabels,
    flag: ResponseFlag,
    sent: u64,
    received: u64,
}

impl ConnectionRecord {
    pub(crate) fn open(metrics: &Arc<Metrics>, labels: ConnectionLabels) -> Self {
        metrics.connection_opened(&labels);
        ConnectionRecord { metrics: metrics.clone(), labels, flag: ResponseFlag::None, sent: 0, received: 0 }
    }

    /// A connection refused before any byte was relayed: counted as opened and closed with `flag`.
    pub(crate) fn refused(metrics: &Arc<Metrics>, labels: ConnectionLabels, flag: ResponseFlag) {
        ConnectionRecord::open(metrics, labels).end(flag);
    }

    /// Sets how the connection ended.
    pub(crate) fn end(&mut self, flag: ResponseFlag) {
        self.flag = flag;
    }

    /// Records the outcome of relaying the bytes (`sent` is towards the upstream).
    pub(crate) fn relayed(&mut self, result: &io::Result<(u64, u64)>) {
        match result {
            Ok((sent, received)) => (self.sent, self.received) = (*sent, *received),
            Err(_) => self.flag = ResponseFlag::UpstreamConnectionTermination,
        }
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        self.metrics.connection_closed(&self.labels, self.flag, self.sent, self.received);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(metrics: &Metrics, flag: &str) -> u64 {
        let text = prometheus::TextEncoder::new().encode_to_string(&metrics.registry.gather()).expect("encodes");
        let wanted = format!("response_flags=\"{flag}\"");
        text.lines()
            .filter(|l| l.starts_with("istio_tcp_connections_closed_total{") && l.contains(&wanted))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    }

    #[test]
    fn a_record_closes_once_with_what_the_path_recorded() {
        let metrics = Arc::new(Metrics::default());
        ConnectionRecord::refused(&metrics, ConnectionLabels::new("source"), ResponseFlag::UpstreamOverflow);
        {
            let mut record = ConnectionRecord::open(&metrics, ConnectionLabels::new("source"));
            record.relayed(&Err(io::Error::other("reset")));
        }
        {
            let mut record = ConnectionRecord::open(&metrics, ConnectionLabels::new("source"));
            record.relayed(&Ok((10, 20)));
        }
        assert_eq!(closed(&metrics, "UO"), 1);
        assert_eq!(closed(&metrics, "UC"), 1);
        assert_eq!(closed(&metrics, "-"), 1);
    }
}
