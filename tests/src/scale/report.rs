//! The simulation's results as a markdown table, with the targets beside the figures.

use std::fmt::Write as _;
use std::time::Duration;

use super::measure::{percentiles, Delivery};
use super::options::Size;

/// Control-plane CPU (in vCPUs: CPU seconds per second) and RSS over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Resources {
    pub vcpu: f64,
    pub rss_mib: f64,
    pub window: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct Rollout {
    pub pods: usize,
    /// From the first replacement until the fleet was quiet again.
    pub took: Duration,
    pub delivery: Delivery,
    pub resources: Resources,
}

#[derive(Clone, Debug, Default)]
pub struct Report {
    pub size: Option<Size>,
    pub control_binary: String,
    /// From the start of the fleet until every proxy had ACKed a first version.
    pub initial_sync: Option<Duration>,
    pub steady: Resources,
    pub route_changes: Vec<Delivery>,
    pub workload_change: Delivery,
    pub rollout: Rollout,
    /// After SIGKILL of the control plane and an immediate start of a new one: until every proxy ACKed a
    /// version on a new stream, from the kill.
    pub restart: Option<Duration>,
    /// Proxies whose last pushed version was not ACKed, as the control plane recorded it at the end.
    pub unacked: Vec<String>,
    /// Everything that failed the run.
    pub misses: Vec<String>,
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

fn opt(d: Option<Duration>) -> String {
    d.map(ms).unwrap_or_else(|| "not reached".into())
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let nodes = self.size.as_ref().map(|s| s.nodes).unwrap_or(0);
        if let Some(s) = &self.size {
            let _ = writeln!(
                out,
                "Size: {} simulated node proxies on push protocol {}, {} services, {} pods, {} TrafficRoutes + {} \
                 DestinationPolicies; control plane `{}`.\n",
                s.nodes, s.protocol, s.services, s.pods, s.routes, s.routes, self.control_binary
            );
        }
        let _ = writeln!(out, "| figure | measured | target (issue 17) |");
        let _ = writeln!(out, "|---|---|---|");
        let mut row = |figure: &str, measured: String, target: &str| {
            let _ = writeln!(out, "| {figure} | {measured} | {target} |");
        };
        row("initial sync: every proxy connected and ACKed", opt(self.initial_sync), "");
        let latencies: Vec<Duration> = self.route_changes.iter().filter_map(|d| d.last_ack).collect();
        let complete = self.route_changes.iter().filter(|d| d.complete).count();
        if let Some((p50, p99, max)) = percentiles(&latencies) {
            row(
                &format!("route change -> ACK by all {nodes}: p50 / p99 / max ({} changes)", self.route_changes.len()),
                format!(
                    "{} / {} / {} ({complete} of {} complete)",
                    ms(p50),
                    ms(p99),
                    ms(max),
                    self.route_changes.len()
                ),
                "p99 < 1 s",
            );
        }
        if !self.route_changes.is_empty() {
            let n = self.route_changes.len() as f64;
            let receivers = self.route_changes.iter().map(|d| d.receivers).sum::<usize>() as f64 / n;
            let total = self.route_changes.iter().map(|d| d.bytes).sum::<u64>() as f64 / n;
            let lines = self.route_changes.iter().map(|d| d.lines).sum::<u64>() as f64 / n;
            row(
                "route change: proxies that received it / lines / bytes (sum over proxies), mean",
                format!("{receivers:.0} / {lines:.0} / {}", bytes(total)),
                "",
            );
        }
        let w = &self.workload_change;
        row(
            "one pod added: proxies that received it / bytes / ACKed by the last after",
            format!("{} / {} / {}", w.receivers, bytes(w.bytes as f64), opt(w.last_ack)),
            "O(affected proxies), not O(all)",
        );
        row(
            &format!("control plane steady ({:.0} s): CPU / RSS", self.steady.window.as_secs_f64()),
            format!("{:.3} vCPU / {:.0} MiB", self.steady.vcpu, self.steady.rss_mib),
            "<= 0.25 vCPU, <= 200 MB",
        );
        let r = &self.rollout;
        row(
            &format!("{}-pod rollout: until quiet / pushes per proxy (max) / bytes (sum)", r.pods),
            format!("{} / {} / {}", ms(r.took), r.delivery.max_lines, bytes(r.delivery.bytes as f64)),
            "a bounded number of pushes",
        );
        row(
            "control plane during the rollout: CPU / peak RSS",
            format!("{:.3} vCPU / {:.0} MiB", r.resources.vcpu, r.resources.rss_mib),
            "<= 200 MB",
        );
        row("control plane killed and restarted: every proxy reconnected and ACKed", opt(self.restart), "");
        row("proxies whose last push is not ACKed (control plane's view)", self.unacked.len().to_string(), "0");
        if !self.misses.is_empty() {
            let _ = writeln!(out, "\nMissed:\n");
            for miss in &self.misses {
                let _ = writeln!(out, "- {miss}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_every_figure_and_says_what_was_missed() {
        let change = |ms: u64, complete| Delivery {
            receivers: 3,
            bytes: 3 * 2048,
            lines: 3,
            max_lines: 1,
            last_ack: Some(Duration::from_millis(ms)),
            complete,
        };
        let report = Report {
            size: Some(Size {
                nodes: 3,
                services: 4,
                pods: 8,
                routes: 2,
                changes: 2,
                rollout: 2,
                give_up: Duration::from_secs(5),
                protocol: 3,
            }),
            route_changes: vec![change(120, true), change(80, false)],
            misses: vec!["route change 2: 2 of 3 proxies".into()],
            ..Default::default()
        };
        let text = report.markdown();
        assert!(text.contains("| route change -> ACK by all 3: p50 / p99 / max (2 changes) | 80 ms / 120 ms / 120 ms (1 of 2 complete) | p99 < 1 s |"), "{text}");
        assert!(text.contains("| 3 / 3 / 6.0 KiB |"), "{text}");
        assert!(text.contains("- route change 2: 2 of 3 proxies"), "{text}");
        assert!(text.contains("initial sync: every proxy connected and ACKed | not reached"), "{text}");
    }
}
