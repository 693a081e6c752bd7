//! The figures, each measured over alternating rounds of its paths; each prints its table and hands its
//! medians to the summary.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Result;

use crate::load::{bulk_send, connection_run, http_run, HttpMode};
use crate::stats::{cpu_cells, cpu_header, median, median_range, print_rate_table, Medians, RunStats};
use crate::tools::{self, Oha, OhaLoad};
use crate::{Bench, Path, Settings, ECHO_BYTES, ECHO_PORT, SINK_PORT};

const HTTP_PATHS: [Path; 4] = [Path::Direct, Path::MeshL4, Path::MeshL7, Path::Haproxy];

impl Bench {
    fn paths(&self, s: &Settings, paths: &[Path]) -> Vec<Path> {
        s.pick(paths, self.haproxy.is_some())
    }

    pub fn tcp_throughput(&self, s: &Settings) -> Result<()> {
        println!("\n== 1. TCP throughput, one connection, {} MiB a1 -> b1 sink (Gbit/s) ==", s.bulk_bytes >> 20);
        let mut gbps: BTreeMap<Path, Vec<f64>> = BTreeMap::new();
        let mut cpu_per_gib: BTreeMap<Path, Vec<Vec<f64>>> = BTreeMap::new();
        for _ in 0..s.rounds {
            for path in self.paths(s, &[Path::Direct, Path::MeshL4]) {
                let target = SocketAddr::new(self.b1(path), SINK_PORT);
                let (elapsed, cpu) = self.measured(path, || bulk_send(&self.a1(path), target, s.bulk_bytes))?;
                gbps.entry(path).or_default().push(s.bulk_bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9);
                let gib = s.bulk_bytes as f64 / (1u64 << 30) as f64;
                let mut per_gib: Vec<f64> = cpu.iter().map(|c| c.as_secs_f64() / gib).collect();
                per_gib.push(per_gib.iter().sum());
                cpu_per_gib.entry(path).or_default().push(per_gib);
            }
        }
        println!("{:<24} {:>22}   {}", "path", "Gbit/s median (range)", cpu_header("CPU s/GiB"));
        for (path, values) in &gbps {
            println!("{:<24} {:>22}   {}", path.label(), median_range(values, 2), cpu_cells(&cpu_per_gib[path], 2));
        }
        let m: BTreeMap<Path, Medians> = gbps
            .iter()
            .map(|(p, v)| {
                let cpu = median(&cpu_per_gib[p].iter().map(|c| c.last().copied().unwrap_or(0.0)).collect::<Vec<_>>());
                (
                    *p,
                    Medians { rate: median(v), p50: f64::NAN, p99: f64::NAN, p999: f64::NAN, cpu_pair: cpu, errors: 0 },
                )
            })
            .collect();
        if let (Some(mesh), Some(direct)) = (m.get(&Path::MeshL4), m.get(&Path::Direct)) {
            println!("ratio Strait L4/direct: {:.2}", mesh.rate / direct.rate);
        }
        self.summary.borrow_mut().rate("TCP bulk, 1 connection (Gbit/s; CPU s/GiB)", m);
        Ok(())
    }

    pub fn connection_rate(&self, s: &Settings) -> Result<()> {
        println!(
            "\n== 2. TCP connections: connect, {ECHO_BYTES} B echo, close; {} concurrent clients, {:?} per run ==",
            s.conn_concurrency, s.window
        );
        let mut runs: BTreeMap<Path, Vec<RunStats>> = BTreeMap::new();
        for _ in 0..s.rounds {
            for path in self.paths(s, &[Path::Direct, Path::MeshL4]) {
                let target = SocketAddr::new(self.b1(path), ECHO_PORT);
                let (mut run, cpu) =
                    self.measured(path, || connection_run(&self.a1(path), target, s.conn_concurrency, s.window))?;
                run.proxy_cpu = cpu;
                runs.entry(path).or_default().push(run);
            }
        }
        let m = print_rate_table("conn/s", &runs);
        self.summary.borrow_mut().rate("TCP connect + 1 KiB echo + close, 4 clients (conn/s)", m);
        Ok(())
    }

    pub fn http1(&self, s: &Settings) -> Result<()> {
        for concurrency in [1, s.http_concurrency] {
            println!("\n== 3. HTTP/1.1 keep-alive GET, {concurrency} connection(s), {:?} per run ==", s.window);
            let mut runs: BTreeMap<Path, Vec<RunStats>> = BTreeMap::new();
            for _ in 0..s.rounds {
                for path in self.paths(s, &HTTP_PATHS) {
                    let target = self.http_target(path, false);
                    let (mut run, cpu) = self.measured(path, || {
                        http_run(&self.a1(path), target, HttpMode::H1 { connections: concurrency }, s.window)
                    })?;
                    run.proxy_cpu = cpu;
                    runs.entry(path).or_default().push(run);
                }
            }
            let m = print_rate_table("req/s", &runs);
            let figure = format!("HTTP/1.1 keep-alive, {concurrency} conn (req/s)");
            self.summary.borrow_mut().rate(&figure, m.clone());
            if concurrency == 1 {
                self.summary.borrow_mut().latency("HTTP/1.1 keep-alive, 1 conn, closed loop (latency)", m);
            }
        }
        Ok(())
    }

    pub fn h2(&self, s: &Settings) -> Result<()> {
        println!(
            "\n== 4. HTTP/2 (h2c) GET, 1 connection, {} concurrent streams, {:?} per run ==",
            s.h2_streams, s.window
        );
        let mut runs: BTreeMap<Path, Vec<RunStats>> = BTreeMap::new();
        for _ in 0..s.rounds {
            for path in self.paths(s, &[Path::Direct, Path::MeshL7, Path::Haproxy]) {
                let target = self.http_target(path, true);
                let (mut run, cpu) = self.measured(path, || {
                    http_run(&self.a1(path), target, HttpMode::H2 { streams: s.h2_streams }, s.window)
                })?;
                run.proxy_cpu = cpu;
                runs.entry(path).or_default().push(run);
            }
        }
        let m = print_rate_table("req/s", &runs);
        self.summary.borrow_mut().rate(&format!("h2c, 1 conn, {} streams (req/s)", s.h2_streams), m);
        Ok(())
    }

    pub fn oha(&self, s: &Settings) -> Result<()> {
        let Some(bin) = tools::find_oha() else {
            println!("\n== 5. oha: not installed (`cargo install oha --locked`); skipped ==");
            self.summary.borrow_mut().note("oha figures", "skipped: oha not installed");
            return Ok(());
        };
        let oha = Oha::new(bin)?;
        let loads = [
            ("max", "max rate, 32 connections", OhaLoad::Max { connections: 32 }, true),
            ("1000", "fixed 1,000 req/s", OhaLoad::Rate { rps: 1000, connections: 32 }, false),
            ("4000", "fixed 4,000 req/s", OhaLoad::Rate { rps: 4000, connections: 32 }, false),
            ("fresh", "fresh connection per request, 32 at a time", OhaLoad::Fresh { connections: 32 }, true),
        ];
        // `STRAIT_BENCH_OHA=fresh` (or max, 1000, 4000, comma-separated) runs only those loads: for profiling.
        let picked = std::env::var("STRAIT_BENCH_OHA").ok();
        let wanted = |key: &str| picked.as_deref().is_none_or(|p| p.split(',').any(|k| k.trim() == key));
        for (_, name, load, is_rate) in loads.into_iter().filter(|(key, ..)| wanted(key)) {
            println!("\n== 5. oha: HTTP/1.1 {name}, {:?} per run ==", s.window);
            let mut runs: BTreeMap<Path, Vec<RunStats>> = BTreeMap::new();
            for _ in 0..s.rounds {
                for path in self.paths(s, &HTTP_PATHS) {
                    let target = self.http_target(path, false);
                    let (run, cpu) = self.measured(path, || oha.run(&self.a1(path), target, load, s.window))?;
                    runs.entry(path).or_default().push(oha_stats(run, cpu));
                }
            }
            let m = print_rate_table("req/s", &runs);
            print_tail(&runs);
            if is_rate {
                self.summary.borrow_mut().rate(&format!("oha {name} (req/s)"), m);
            } else {
                self.summary.borrow_mut().latency(&format!("oha {name} (latency)"), m);
            }
        }
        Ok(())
    }

    pub fn h2load(&self, s: &Settings) -> Result<()> {
        if !tools::has_h2load() {
            println!("\n== 6. h2load: not installed (apt-get install nghttp2-client); skipped ==");
            self.summary.borrow_mut().note("h2load figure", "skipped: h2load not installed");
            return Ok(());
        }
        let streams = 100;
        println!("\n== 6. h2load: HTTP/2 (h2c), 1 connection, {streams} streams, {:?} per run ==", s.window);
        let mut runs: BTreeMap<Path, Vec<RunStats>> = BTreeMap::new();
        for _ in 0..s.rounds {
            for path in self.paths(s, &[Path::Direct, Path::MeshL7, Path::Haproxy]) {
                let target = self.http_target(path, true);
                let (run, cpu) = self.measured(path, || tools::h2load(&self.a1(path), target, streams, s.window))?;
                // h2load gives the rate and the mean, not percentiles: the mean stands in for every latency.
                let stats = RunStats {
                    latencies: vec![run.mean.round() as u32],
                    errors: run.errors,
                    elapsed: std::time::Duration::from_secs_f64(run.succeeded as f64 / run.rps.max(1e-9)),
                    proxy_cpu: cpu,
                    count: Some(run.succeeded as usize),
                };
                runs.entry(path).or_default().push(stats);
            }
        }
        println!("(h2load reports the mean time per request: the p50 and p99 columns show it)");
        let m = print_rate_table("req/s", &runs);
        self.summary.borrow_mut().rate(&format!("h2load h2c, 1 conn, {streams} streams (req/s)"), m);
        Ok(())
    }
}

/// An `oha` run as the tables read it: it reports three percentiles, so a list of 1000 latencies with each at
/// the rank `RunStats::percentile` reads it from (the q-th value is index ceil(1000 q) - 1: 499 for p50, 989 for
/// p99, 998 for p99.9) stands for the distribution; rate and count are oha's.
fn oha_stats(run: tools::OhaRun, cpu: Vec<std::time::Duration>) -> RunStats {
    let mut latencies = vec![run.p50.round() as u32; 989];
    latencies.extend(std::iter::repeat_n(run.p99.round() as u32, 9));
    latencies.extend(std::iter::repeat_n(run.p999.round() as u32, 2));
    RunStats {
        latencies,
        errors: run.errors,
        elapsed: std::time::Duration::from_secs_f64(run.requests as f64 / run.rps.max(1e-9)),
        proxy_cpu: cpu,
        count: Some(run.requests as usize),
    }
}

/// The p99.9 column the generic table leaves out.
fn print_tail(runs: &BTreeMap<Path, Vec<RunStats>>) {
    let cells: Vec<String> = runs
        .iter()
        .map(|(p, list)| {
            format!("{} {:.0}", p.label(), median(&list.iter().map(|r| r.percentile(0.999)).collect::<Vec<_>>()))
        })
        .collect();
    println!("p99.9 µs: {}", cells.join("; "));
}
