//! Mesh benchmark: the data path through two real `strait-proxy` processes (TPROXY capture, mTLS HTTP/2
//! tunnel between the nodes) against the direct path between the same kind of pods with no proxy in the way.
//!
//! ```text
//! cargo build --release -p strait-proxy -p strait-tests --bins
//! cargo bench -p strait-tests --bench mesh
//! ```
//!
//! Two clusters are built side by side, each with pod a1 on node-a and pod b1 on node-b: `direct` has no mesh,
//! `mesh` runs one proxy per node. The same servers run in both b1 pods and the same clients in both a1 pods;
//! rounds alternate direct and mesh so that noise from the (shared) machine hits both. Figures:
//!
//! 1. TCP throughput of one connection (a bulk write to a sink), Gbit/s.
//! 2. TCP connection rate and latency: connect, 1 KiB echo, close, by several concurrent clients.
//! 3. HTTP/1.1 with keep-alive: direct to the pod, through the L4 tunnel (pod IP, an undeclared port) and
//!    through the L7 path (a service VIP with an `http` port), at concurrency 1 (latency) and N (rate).
//! 4. HTTP/2 (h2c) with many streams on one connection, direct and through the L7 path.
//!
//! Each table shows the median of the rounds and the spread (min..max), the ratio or the overhead, and the CPU
//! time each proxy process spent (utime+stime from `/proc/<pid>/stat`) per request or per GiB. Nothing is
//! asserted about time: this prints numbers for people to read.
//!
//! Environment: `STRAIT_BENCH_LONG=1` for longer runs (more bytes, more rounds, longer windows);
//! `STRAIT_BENCH_ROUNDS=N`, `STRAIT_BENCH_SECS=S` override; `STRAIT_BENCH_ONLY=tcp,conn,http1,h2` picks figures;
//! `STRAIT_BENCH_PATHS=l4,l7` picks the mesh paths (the direct path always runs; handy under `perf record`);
//! `STRAIT_TEST_LOG` is the proxies' `RUST_LOG` (default `info`, which writes one access-log line per request).
//! Needs root (network namespaces); without it the benchmark prints why and exits successfully. As root it
//! fails at once, naming the package to install, when `ip`, `sysctl` or `nft` is missing.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use strait_api::{Endpoint, MeshConfig, Service, ServicePort};
use strait_netns::{Tool, Unmet};
use strait_tests::exec;
use strait_tests::mesh::{self, Capture, Mesh, NAMESPACE};
use strait_tests::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HTTP service of the benchmark: VIP:80, port named `http` (so the L7 path serves it), target b1:8080.
const HTTP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const HTTP_VIP_PORT: u16 = 80;
/// Ports the servers listen on in b1.
const SINK_PORT: u16 = 5001;
const ECHO_PORT: u16 = 5002;
/// Target of the `http` service port: L7 in the mesh.
const HTTP_PORT: u16 = 8080;
/// The same HTTP server on a port no service declares: the mesh carries it as TCP through the tunnel.
const HTTP_L4_PORT: u16 = 8081;
/// Echo size of the connection-rate figure.
const ECHO_BYTES: usize = 1024;
/// The HTTP servers' answer.
const BODY: &[u8] = b"hello from b1\n";

struct Settings {
    rounds: usize,
    /// Bytes per throughput run.
    bulk_bytes: u64,
    /// Measured window of each rate run (after a short warm-up).
    window: Duration,
    conn_concurrency: usize,
    http_concurrency: usize,
    h2_streams: usize,
    only: Option<Vec<String>>,
    /// Mesh paths to measure (`l4`, `l7`); the direct path always runs.
    paths: Option<Vec<String>>,
}

impl Settings {
    fn from_env() -> Settings {
        let long = env_flag("STRAIT_BENCH_LONG");
        let rounds = env_num("STRAIT_BENCH_ROUNDS").unwrap_or(if long { 5 } else { 3 }) as usize;
        let secs = env_num("STRAIT_BENCH_SECS").map(|s| s as f64).unwrap_or(if long { 10.0 } else { 2.0 });
        Settings {
            rounds: rounds.max(1),
            bulk_bytes: if long { 4 << 30 } else { 1 << 30 },
            window: Duration::from_secs_f64(secs),
            conn_concurrency: 4,
            http_concurrency: 16,
            h2_streams: 32,
            only: env_list("STRAIT_BENCH_ONLY"),
            paths: env_list("STRAIT_BENCH_PATHS"),
        }
    }

    fn wants(&self, figure: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|o| o == figure))
    }

    /// The paths of a figure that this run measures.
    fn pick(&self, paths: &[Path]) -> Vec<Path> {
        let keep = |p: &Path| match (p, &self.paths) {
            (Path::Direct, _) | (_, None) => true,
            (Path::MeshL4, Some(list)) => list.iter().any(|w| w == "l4"),
            (Path::MeshL7, Some(list)) => list.iter().any(|w| w == "l7"),
        };
        paths.iter().copied().filter(keep).collect()
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn env_list(name: &str) -> Option<Vec<String>> {
    let value = std::env::var(name).ok()?;
    Some(value.split(',').map(|w| w.trim().to_string()).filter(|w| !w.is_empty()).collect())
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What the benchmark runs besides its own threads: the clusters' `ip` and `sysctl`, the proxies' `nft`.
const BENCH_TOOLS: &[Tool] = &[Tool::IP, Tool::SYSCTL, Tool::NFT];

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; a filter argument or `--list` (from `cargo test --benches`) is ignored.
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    // Root and the programs the clusters (ip, sysctl) and the proxies (nft) run, checked before anything
    // starts: without them a proxy never becomes ready and the benchmark would fail a minute later, deep in a
    // round. Without root it skips, as documented, so `cargo bench --workspace` stays usable unprivileged.
    match strait_netns::check_root_and(BENCH_TOOLS) {
        Ok(()) => {}
        Err(Unmet::NotRoot) if !strait_netns::root_tests_required() => {
            println!("mesh benchmark skipped: it needs root (network namespaces)");
            return Ok(());
        }
        Err(unmet) => bail!("the mesh benchmark {unmet}"),
    }
    let settings = Settings::from_env();
    let proxy = mesh::workspace_binary("strait-proxy")?;
    println!("strait mesh benchmark");
    println!("  proxy binary: {} ({})", proxy.display(), build_profile(&proxy));
    println!("  machine: {} CPUs; load before: {}", num_cpus(), load_average());
    println!(
        "  rounds: {} (median and min..max shown), window {:?}, proxies' RUST_LOG={}",
        settings.rounds,
        settings.window,
        std::env::var("STRAIT_TEST_LOG").unwrap_or_else(|_| "info".into())
    );

    let bench = Bench::start()?;
    println!(
        "  clusters: direct {} and mesh {} (TPROXY), a1 (node-a) -> b1 (node-b); proxy pids: {}",
        bench.direct.tag(),
        bench.mesh.cluster.tag(),
        bench.proxy_pids.iter().map(|(n, p)| format!("{n} {p}")).collect::<Vec<_>>().join(", ")
    );
    if settings.wants("tcp") {
        bench.tcp_throughput(&settings)?;
    }
    if settings.wants("conn") {
        bench.connection_rate(&settings)?;
    }
    if settings.wants("http1") {
        bench.http1(&settings)?;
    }
    if settings.wants("h2") {
        bench.h2(&settings)?;
    }
    println!("\nload after: {}", load_average());
    Ok(())
}

fn build_profile(path: &std::path::Path) -> &'static str {
    if path.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "NOT a release build: numbers mean little"
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Which way a measurement goes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Path {
    Direct,
    /// Through both proxies as TCP (the pod's address, a port no service declares).
    MeshL4,
    /// Through both proxies' HTTP handling (the service VIP, an `http` port).
    MeshL7,
}

impl Path {
    fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::MeshL4 => "mesh L4 (tunnel)",
            Path::MeshL7 => "mesh L7 (http VIP)",
        }
    }
}

struct Bench {
    direct: Cluster,
    // The servers are threads of this process; they hold sockets in the clusters' namespaces and end with it.
    mesh: Mesh,
    proxy_pids: Vec<(String, u32)>,
}

impl Bench {
    fn start() -> Result<Bench> {
        let build = || Cluster::builder().node("node-a", &["a1"]).node("node-b", &["b1"]).build();
        let direct = build().context("building the direct cluster")?;
        let cluster = build().context("building the mesh cluster")?;
        for c in [&direct, &cluster] {
            tune(c)?;
            start_servers(c.pod("b1").netns_name(), c.pod("b1").ip().into())?;
        }
        let config = bench_config(&cluster);
        let mesh = Mesh::start(cluster, &config, Capture::Tproxy).context("starting the mesh")?;
        let proxy_pids = ["node-a", "node-b"]
            .iter()
            .map(|node| Ok((node.to_string(), proxy_pid(mesh.cluster.node(node).netns_name())?)))
            .collect::<Result<_>>()?;
        Ok(Bench { direct, mesh, proxy_pids })
    }

    fn b1(&self, path: Path) -> IpAddr {
        match path {
            Path::Direct => self.direct.pod("b1").ip().into(),
            _ => self.mesh.cluster.pod("b1").ip().into(),
        }
    }

    fn a1(&self, path: Path) -> String {
        match path {
            Path::Direct => self.direct.pod("a1").netns_name().to_string(),
            _ => self.mesh.cluster.pod("a1").netns_name().to_string(),
        }
    }

    fn http_target(&self, path: Path) -> SocketAddr {
        match path {
            Path::Direct => SocketAddr::new(self.b1(path), HTTP_PORT),
            Path::MeshL4 => SocketAddr::new(self.b1(path), HTTP_L4_PORT),
            Path::MeshL7 => SocketAddr::new(HTTP_VIP.into(), HTTP_VIP_PORT),
        }
    }

    /// utime+stime of each proxy so far.
    fn proxy_cpu(&self) -> Vec<Duration> {
        self.proxy_pids.iter().map(|(_, pid)| process_cpu(*pid).unwrap_or_default()).collect()
    }

    /// Runs `f` for `path`, returning its result and the CPU each proxy spent meanwhile (zero on the direct
    /// path, where the proxies are not involved).
    fn measured<T>(&self, path: Path, f: impl FnOnce() -> Result<T>) -> Result<(T, Vec<Duration>)> {
        let before = self.proxy_cpu();
        let out = f()?;
        let after = self.proxy_cpu();
        let spent = if path == Path::Direct {
            vec![Duration::ZERO; after.len()]
        } else {
            after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect()
        };
        Ok((out, spent))
    }

    fn tcp_throughput(&self, s: &Settings) -> Result<()> {
        println!("\n== 1. TCP throughput, one connection, {} MiB a1 -> b1 sink (Gbit/s) ==", s.bulk_bytes >> 20);
        let mut gbps: BTreeMap<Path, Vec<f64>> = BTreeMap::new();
        let mut cpu_per_gib: BTreeMap<Path, Vec<Vec<f64>>> = BTreeMap::new();
        for _ in 0..s.rounds {
            for path in s.pick(&[Path::Direct, Path::MeshL4]) {
                let target = SocketAddr::new(self.b1(path), SINK_PORT);
                let (elapsed, cpu) = self.measured(path, || bulk_send(&self.a1(path), target, s.bulk_bytes))?;
                gbps.entry(path).or_default().push(s.bulk_bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9);
                let gib = s.bulk_bytes as f64 / (1u64 << 30) as f64;
                cpu_per_gib.entry(path).or_default().push(cpu.iter().map(|c| c.as_secs_f64() / gib).collect());
            }
        }
        let names = self.proxy_names();
        println!("{:<22} {:>22}   {}", "path", "Gbit/s median (range)", cpu_header(&names, "CPU s/GiB"));
        for (path, values) in &gbps {
            println!("{:<22} {:>22}   {}", path.label(), median_range(values, 2), cpu_cells(&cpu_per_gib[path], 2));
        }
        if let Some(mesh) = gbps.get(&Path::MeshL4) {
            println!("ratio mesh/direct: {:.2}", median(mesh) / median(&gbps[&Path::Direct]));
        }
        Ok(())
    }

    fn connection_rate(&self, s: &Settings) -> Result<()> {
        println!(
            "\n== 2. TCP connections: connect, {ECHO_BYTES} B echo, close; {} concurrent clients, {:?} per run ==",
            s.conn_concurrency, s.window
        );
        let mut runs: BTreeMap<Path, Vec<RunStats>> = BTreeMap::new();
        for _ in 0..s.rounds {
            for path in s.pick(&[Path::Direct, Path::MeshL4]) {
                let target = SocketAddr::new(self.b1(path), ECHO_PORT);
                let (mut run, cpu) =
                    self.measured(path, || connection_run(&self.a1(path), target, s.conn_concurrency, s.window))?;
                run.proxy_cpu = cpu;
                runs.entry(path).or_default().push(run);
            }
        }
        self.print_rate_table("conn/s", &runs);
        Ok(())
    }

    fn http1(&self, s: &Settings) -> Result<()> {
        for concurrency in [1, s.http_concurrency] {
            println!("\n== 3. HTTP/1.1 keep-alive GET, {concurrency} connection(s), {:?} per run ==", s.window);
            let mut runs: BTreeMap<Path, Vec<RunStats>> = BTreeMap::new();
            for _ in 0..s.rounds {
                for path in s.pick(&[Path::Direct, Path::MeshL4, Path::MeshL7]) {
                    let target = self.http_target(path);
                    let (mut run, cpu) = self.measured(path, || {
                        http_run(&self.a1(path), target, HttpMode::H1 { connections: concurrency }, s.window)
                    })?;
                    run.proxy_cpu = cpu;
                    runs.entry(path).or_default().push(run);
                }
            }
            self.print_rate_table("req/s", &runs);
        }
        Ok(())
    }

    fn h2(&self, s: &Settings) -> Result<()> {
        println!(
            "\n== 4. HTTP/2 (h2c) GET, 1 connection, {} concurrent streams, {:?} per run ==",
            s.h2_streams, s.window
        );
        let mut runs: BTreeMap<Path, Vec<RunStats>> = BTreeMap::new();
        for _ in 0..s.rounds {
            for path in s.pick(&[Path::Direct, Path::MeshL7]) {
                let target = self.http_target(path);
                let (mut run, cpu) = self.measured(path, || {
                    http_run(&self.a1(path), target, HttpMode::H2 { streams: s.h2_streams }, s.window)
                })?;
                run.proxy_cpu = cpu;
                runs.entry(path).or_default().push(run);
            }
        }
        self.print_rate_table("req/s", &runs);
        Ok(())
    }

    fn proxy_names(&self) -> Vec<String> {
        self.proxy_pids.iter().map(|(n, _)| n.clone()).collect()
    }

    fn print_rate_table(&self, unit: &str, runs: &BTreeMap<Path, Vec<RunStats>>) {
        let names = self.proxy_names();
        println!(
            "{:<20} {:>20} {:>18} {:>18} {:>7}   {}",
            "path",
            format!("{unit} median (range)"),
            "p50 µs (range)",
            "p99 µs (range)",
            "errors",
            cpu_header(&names, "CPU µs/op")
        );
        let direct = runs.get(&Path::Direct);
        for (path, list) in runs {
            let rates: Vec<f64> = list.iter().map(|r| r.rate()).collect();
            let p50: Vec<f64> = list.iter().map(|r| r.percentile(0.50)).collect();
            let p99: Vec<f64> = list.iter().map(|r| r.percentile(0.99)).collect();
            let errors: u64 = list.iter().map(|r| r.errors).sum();
            let cpu: Vec<Vec<f64>> = list
                .iter()
                .map(|r| r.proxy_cpu.iter().map(|c| c.as_secs_f64() * 1e6 / r.ops().max(1) as f64).collect())
                .collect();
            println!(
                "{:<20} {:>20} {:>18} {:>18} {:>7}   {}",
                path.label(),
                median_range(&rates, 0),
                median_range(&p50, 0),
                median_range(&p99, 0),
                errors,
                cpu_cells(&cpu, 1)
            );
        }
        let Some(direct) = direct else { return };
        let d_rate = median(&direct.iter().map(|r| r.rate()).collect::<Vec<_>>());
        let d_p50 = median(&direct.iter().map(|r| r.percentile(0.50)).collect::<Vec<_>>());
        let d_p99 = median(&direct.iter().map(|r| r.percentile(0.99)).collect::<Vec<_>>());
        for (path, list) in runs.iter().filter(|(p, _)| **p != Path::Direct) {
            let rate = median(&list.iter().map(|r| r.rate()).collect::<Vec<_>>());
            let p50 = median(&list.iter().map(|r| r.percentile(0.50)).collect::<Vec<_>>());
            let p99 = median(&list.iter().map(|r| r.percentile(0.99)).collect::<Vec<_>>());
            println!(
                "{}: rate ratio mesh/direct {:.2}; latency overhead p50 {:+.0} µs, p99 {:+.0} µs",
                path.label(),
                rate / d_rate,
                p50 - d_p50,
                p99 - d_p99
            );
        }
    }
}

fn cpu_header(names: &[String], what: &str) -> String {
    names.iter().map(|n| format!("{:>16}", format!("{n} {what}"))).collect::<Vec<_>>().join(" ")
}

/// One cell per proxy: the median over rounds of its CPU figure.
fn cpu_cells(per_round: &[Vec<f64>], decimals: usize) -> String {
    let proxies = per_round.first().map(Vec::len).unwrap_or(0);
    (0..proxies)
        .map(|i| {
            let values: Vec<f64> = per_round.iter().map(|r| r[i]).collect();
            let m = median(&values);
            if m == 0.0 {
                format!("{:>16}", "-")
            } else {
                format!("{:>16.*}", decimals, m)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn median(values: &[f64]) -> f64 {
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

fn median_range(values: &[f64], decimals: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.*} ({:.*}..{:.*})", decimals, median(values), decimals, min, decimals, max)
}

/// The mesh configuration: every pod meshed (strict mTLS), plus the benchmark's HTTP service in front of b1.
fn bench_config(cluster: &Cluster) -> MeshConfig {
    let mut config = mesh::default_config(cluster);
    config.services.push(Service {
        name: "bench-http".into(),
        namespace: NAMESPACE.into(),
        addresses: vec![IpAddr::V4(HTTP_VIP)],
        ports: vec![ServicePort {
            name: Some("http".into()),
            port: HTTP_VIP_PORT,
            target_port: Some(HTTP_PORT),
            app_protocol: None,
        }],
        endpoints: vec![Endpoint { address: IpAddr::V4(cluster.pod("b1").ip()), ready: true }],
    });
    config
}

/// Lets short connections reuse ports in TIME_WAIT, so thousands of connections a second do not run out of
/// ephemeral ports in the clients' (and proxies') namespaces.
fn tune(cluster: &Cluster) -> Result<()> {
    for ns in cluster.namespaces() {
        exec::run_in(ns, &["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])?;
    }
    Ok(())
}

/// The pid of the `strait-proxy` process in a node's namespace.
fn proxy_pid(node_netns: &str) -> Result<u32> {
    let out = std::process::Command::new("ip").args(["netns", "pids", node_netns]).output()?;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "strait-proxy" {
            return Ok(pid);
        }
    }
    bail!("no strait-proxy process in netns {node_netns}")
}

/// utime + stime of a process (all its threads).
fn process_cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; fields after it are fixed.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the full line, so utime (14) and stime (15) are at 11 and 12 here.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf takes a constant and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Runs a current-thread tokio runtime on a thread inside `netns` until `make()` completes; sockets it creates
/// live in that namespace.
fn block_on_in<T, F, Fut>(netns: &str, make: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    exec::in_netns(netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(make()).map_err(std::io::Error::other)
    })
}

/// Starts the servers in pod b1 (threads of this process): the sink, the short echo, and the HTTP server on
/// two ports. Returns once all listen.
fn start_servers(netns: &str, ip: IpAddr) -> Result<()> {
    let sink = exec::listen_in(netns, SocketAddr::new(ip, SINK_PORT))?;
    std::thread::Builder::new().name("bench-sink".into()).spawn(move || {
        for stream in sink.incoming().flatten() {
            std::thread::spawn(move || sink_connection(stream));
        }
    })?;
    let echo = exec::listen_in(netns, SocketAddr::new(ip, ECHO_PORT))?;
    let http_l7 = exec::listen_in(netns, SocketAddr::new(ip, HTTP_PORT))?;
    let http_l4 = exec::listen_in(netns, SocketAddr::new(ip, HTTP_L4_PORT))?;
    let ns = netns.to_string();
    std::thread::Builder::new().name("bench-servers".into()).spawn(move || {
        let result: Result<()> = block_on_in(&ns, move || async move {
            let echo = tokio::net::TcpListener::from_std(nonblocking(echo)?)?;
            let l7 = tokio::net::TcpListener::from_std(nonblocking(http_l7)?)?;
            let l4 = tokio::net::TcpListener::from_std(nonblocking(http_l4)?)?;
            tokio::spawn(serve_http(l7));
            tokio::spawn(serve_http(l4));
            loop {
                let (stream, _) = echo.accept().await?;
                tokio::spawn(echo_connection(stream));
            }
        });
        if let Err(e) = result {
            eprintln!("bench servers stopped: {e:#}");
        }
    })?;
    Ok(())
}

fn nonblocking(listener: std::net::TcpListener) -> Result<std::net::TcpListener> {
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Reads to EOF, answers the byte count (8 bytes, big-endian) and closes.
fn sink_connection(mut stream: std::net::TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = stream.write_all(&total.to_be_bytes());
}

/// Reads [`ECHO_BYTES`], writes them back and closes first (so TIME_WAIT stays on the server's side).
async fn echo_connection(mut stream: tokio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = [0u8; ECHO_BYTES];
    if stream.read_exact(&mut buf).await.is_ok() {
        let _ = stream.write_all(&buf).await;
    }
}

async fn serve_http(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_request: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// Writes `bytes` to the sink at `target` from `netns`, half-closes, waits for the count; returns the time from
/// before the connect to the answer.
fn bulk_send(netns: &str, target: SocketAddr, bytes: u64) -> Result<Duration> {
    let start = Instant::now();
    let mut stream = exec::connect_from(netns, target)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let chunk = vec![0x5au8; 256 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n]).context("writing to the sink")?;
        left -= n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream.read_exact(&mut count).context("reading the sink's count")?;
    let elapsed = start.elapsed();
    if u64::from_be_bytes(count) != bytes {
        bail!("the sink at {target} counted {} bytes, {bytes} were sent", u64::from_be_bytes(count));
    }
    Ok(elapsed)
}

/// What one rate run measured.
#[derive(Default)]
struct RunStats {
    /// Latency of each operation in the window, µs.
    latencies: Vec<u32>,
    errors: u64,
    elapsed: Duration,
    proxy_cpu: Vec<Duration>,
}

impl RunStats {
    fn ops(&self) -> usize {
        self.latencies.len()
    }

    fn rate(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let mut v = self.latencies.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        f64::from(v[i])
    }

    fn merge(&mut self, other: RunStats) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// `concurrency` clients in `netns`, each looping connect / write 1 KiB / read 1 KiB / read EOF / close for
/// `window`.
fn connection_run(netns: &str, target: SocketAddr, concurrency: usize, window: Duration) -> Result<RunStats> {
    block_on_in(netns, move || async move {
        let warmup = Duration::from_millis(200);
        let start = Instant::now();
        let measure_from = start + warmup;
        let deadline = measure_from + window;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            tasks.spawn(async move {
                let mut stats = RunStats::default();
                let payload = [0xa5u8; ECHO_BYTES];
                let mut buf = [0u8; ECHO_BYTES];
                loop {
                    let t0 = Instant::now();
                    if t0 >= deadline {
                        break;
                    }
                    let result = async {
                        let mut s = tokio::net::TcpStream::connect(target).await?;
                        s.set_nodelay(true)?;
                        s.write_all(&payload).await?;
                        s.read_exact(&mut buf).await?;
                        let mut end = [0u8; 1];
                        if s.read(&mut end).await? != 0 {
                            return Err(std::io::Error::other("echo sent more than it got"));
                        }
                        Ok::<_, std::io::Error>(())
                    };
                    let ok = tokio::time::timeout(Duration::from_secs(5), result).await.is_ok_and(|r| r.is_ok());
                    if t0 >= measure_from {
                        if ok {
                            stats.latencies.push(micros(t0.elapsed()));
                        } else {
                            stats.errors += 1;
                        }
                    }
                }
                stats
            });
        }
        let mut total = RunStats::default();
        while let Some(stats) = tasks.join_next().await {
            total.merge(stats?);
        }
        total.elapsed = window;
        Ok(total)
    })
}

#[derive(Clone, Copy)]
enum HttpMode {
    H1 { connections: usize },
    H2 { streams: usize },
}

/// Keep-alive GETs to `target` from `netns` for `window` (after a warm-up that opens the connections).
fn http_run(netns: &str, target: SocketAddr, mode: HttpMode, window: Duration) -> Result<RunStats> {
    block_on_in(netns, move || async move {
        let warmup = Duration::from_millis(300);
        let measure_from = Instant::now() + warmup;
        let deadline = measure_from + window;
        let authority = target.to_string();
        let mut tasks = tokio::task::JoinSet::new();
        match mode {
            HttpMode::H1 { connections } => {
                for _ in 0..connections {
                    let stream = tokio::net::TcpStream::connect(target).await?;
                    stream.set_nodelay(true)?;
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
                    tokio::spawn(conn);
                    let authority = authority.clone();
                    tasks.spawn(async move {
                        let mut stats = RunStats::default();
                        loop {
                            let t0 = Instant::now();
                            if t0 >= deadline {
                                break;
                            }
                            let ok = async {
                                sender.ready().await?;
                                let response = sender.send_request(get("/", &authority)?).await?;
                                let ok = response.status().is_success();
                                response.into_body().collect().await?;
                                anyhow::Ok(ok)
                            }
                            .await
                            .unwrap_or(false);
                            record(&mut stats, t0, measure_from, ok);
                            if sender.is_closed() {
                                break;
                            }
                        }
                        stats
                    });
                }
            }
            HttpMode::H2 { streams } => {
                let stream = tokio::net::TcpStream::connect(target).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
                    TokioExecutor::new(),
                    TokioIo::new(stream),
                )
                .await?;
                tokio::spawn(conn);
                for _ in 0..streams {
                    let mut sender = sender.clone();
                    let authority = authority.clone();
                    tasks.spawn(async move {
                        let mut stats = RunStats::default();
                        loop {
                            let t0 = Instant::now();
                            if t0 >= deadline {
                                break;
                            }
                            let ok = async {
                                sender.ready().await?;
                                let response =
                                    sender.send_request(get(&format!("http://{authority}/"), &authority)?).await?;
                                let ok = response.status().is_success();
                                response.into_body().collect().await?;
                                anyhow::Ok(ok)
                            }
                            .await
                            .unwrap_or(false);
                            record(&mut stats, t0, measure_from, ok);
                            if sender.is_closed() {
                                break;
                            }
                        }
                        stats
                    });
                }
            }
        }
        let mut total = RunStats::default();
        while let Some(stats) = tasks.join_next().await {
            total.merge(stats?);
        }
        total.elapsed = window;
        Ok(total)
    })
}

/// A GET of `uri` (origin form for HTTP/1.1, absolute for HTTP/2) with the Host header.
fn get(uri: &str, authority: &str) -> Result<Request<Empty<Bytes>>> {
    Ok(Request::builder().uri(uri).header(http::header::HOST, authority).body(Empty::new())?)
}

fn record(stats: &mut RunStats, t0: Instant, measure_from: Instant, ok: bool) {
    if t0 < measure_from {
        return;
    }
    if ok {
        stats.latencies.push(micros(t0.elapsed()));
    } else {
        stats.errors += 1;
    }
}
