//! What a run measured and how it is summarised: percentiles, medians over rounds with their spread, and the
//! per-figure tables (rate, latency, CPU per operation of each proxy of the pair).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Path;

/// What one rate run measured.
#[derive(Default)]
pub struct RunStats {
    /// Latency of each operation in the window, µs.
    pub latencies: Vec<u32>,
    pub errors: u64,
    pub elapsed: Duration,
    /// CPU each proxy of the path's pair spent during the run (client side, server side).
    pub proxy_cpu: Vec<Duration>,
    /// Operations, when an outside tool counted them and `latencies` only stands for their distribution.
    pub count: Option<usize>,
}

impl RunStats {
    pub fn ops(&self) -> usize {
        self.count.unwrap_or(self.latencies.len())
    }

    pub fn rate(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        f64::from(v[i])
    }

    pub fn merge(&mut self, other: RunStats) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
    }

    /// CPU µs per operation of each proxy, and of the pair.
    pub fn cpu_per_op(&self) -> Vec<f64> {
        let ops = self.ops().max(1) as f64;
        let mut each: Vec<f64> = self.proxy_cpu.iter().map(|c| c.as_secs_f64() * 1e6 / ops).collect();
        each.push(each.iter().sum());
        each
    }
}

pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn median_range(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.*} ({:.*}..{:.*})", decimals, median(values), decimals, min, decimals, max)
}

/// Column titles of the CPU cells: each proxy of the pair, then the pair.
pub fn cpu_header(what: &str) -> String {
    ["client side", "server side", "pair"]
        .iter()
        .map(|n| format!("{:>18}", format!("{n} {what}")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One cell per proxy (and the pair): the median over rounds of its CPU figure; `-` where no proxy works.
pub fn cpu_cells(per_round: &[Vec<f64>], decimals: usize) -> String {
    let columns = per_round.first().map(Vec::len).unwrap_or(0);
    (0..columns)
        .map(|i| {
            let m = median(&per_round.iter().map(|r| r[i]).collect::<Vec<_>>());
            if m == 0.0 || m.is_nan() {
                format!("{:>18}", "-")
            } else {
                format!("{:>18.*}", decimals, m)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The medians over rounds of one path in one figure, for the summary.
#[derive(Clone, Copy, Debug)]
pub struct Medians {
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// CPU µs per operation of the pair (0 on the direct path).
    pub cpu_pair: f64,
    pub errors: u64,
}

pub fn medians(list: &[RunStats]) -> Medians {
    let m = |f: &dyn Fn(&RunStats) -> f64| median(&list.iter().map(f).collect::<Vec<_>>());
    Medians {
        rate: m(&|r| r.rate()),
        p50: m(&|r| r.percentile(0.50)),
        p99: m(&|r| r.percentile(0.99)),
        p999: m(&|r| r.percentile(0.999)),
        cpu_pair: m(&|r| r.cpu_per_op().last().copied().unwrap_or(0.0)),
        errors: list.iter().map(|r| r.errors).sum(),
    }
}

/// Prints one figure's table and returns each path's medians.
pub fn print_rate_table(unit: &str, runs: &BTreeMap<Path, Vec<RunStats>>) -> BTreeMap<Path, Medians> {
    println!(
        "{:<24} {:>22} {:>16} {:>18} {:>7}   {}",
        "path",
        format!("{unit} median (range)"),
        "p50 µs (range)",
        "p99 µs (range)",
        "errors",
        cpu_header("CPU µs/op")
    );
    let mut out = BTreeMap::new();
    for (path, list) in runs {
        let rates: Vec<f64> = list.iter().map(|r| r.rate()).collect();
        let p50: Vec<f64> = list.iter().map(|r| r.percentile(0.50)).collect();
        let p99: Vec<f64> = list.iter().map(|r| r.percentile(0.99)).collect();
        let cpu: Vec<Vec<f64>> = list.iter().map(RunStats::cpu_per_op).collect();
        let m = medians(list);
        println!(
            "{:<24} {:>22} {:>16} {:>18} {:>7}   {}",
            path.label(),
            median_range(&rates, 0),
            median_range(&p50, 0),
            median_range(&p99, 0),
            m.errors,
            cpu_cells(&cpu, 1)
        );
        out.insert(*path, m);
    }
    print_ratios(&out);
    out
}

/// Each proxied path against the direct one and against the HAProxy pair.
pub fn print_ratios(m: &BTreeMap<Path, Medians>) {
    let Some(direct) = m.get(&Path::Direct) else { return };
    let haproxy = m.get(&Path::Haproxy);
    for (path, x) in m.iter().filter(|(p, _)| **p != Path::Direct) {
        let vs_haproxy = match haproxy {
            Some(h) if *path != Path::Haproxy => {
                format!("; vs HAProxy: rate {:.2}x, CPU {:.2}x", x.rate / h.rate, x.cpu_pair / h.cpu_pair)
            }
            _ => String::new(),
        };
        println!(
            "{}: rate {:.2}x direct; added latency p50 {:+.0} µs, p99 {:+.0} µs{vs_haproxy}",
            path.label(),
            x.rate / direct.rate,
            x.p50 - direct.p50,
            x.p99 - direct.p99,
        );
    }
}
