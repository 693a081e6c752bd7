//! Mesh benchmark: the data path through two real `strait-proxy` processes (TPROXY capture, mTLS HTTP/2
//! tunnel between the nodes) side by side with the direct path between the same kind of pods and with the peer
//! users compare a mesh with, an HAProxy pair doing the same work (`haproxy.rs`).
//!
//! ```text
//! cargo build --release -p strait-proxy
//! cargo bench -p strait-tests --bench mesh
//! ```
//!
//! Two clusters are built side by side, each with pod a1 on node-a and pod b1 on node-b: `direct` has no mesh
//! (the HAProxy pair runs in its nodes), `mesh` runs one proxy per node. The same servers run in both b1 pods
//! and the same clients in both a1 pods; rounds alternate the paths so that noise from the (shared) machine
//! hits all of them. Figures:
//!
//! 1. `tcp`: TCP throughput of one connection (a bulk write to a sink), Gbit/s.
//! 2. `conn`: TCP connection rate and latency: connect, 1 KiB echo, close, by several concurrent clients.
//! 3. `http1`: HTTP/1.1 keep-alive: direct, the L4 tunnel (pod IP, an undeclared port), the L7 path (a service
//!    VIP with an `http` port) and the HAProxy pair, at concurrency 1 (latency) and N (rate).
//! 4. `h2`: HTTP/2 (h2c) with many streams on one connection (the benchmark's client).
//! 5. `oha`: the L7 path driven by `oha`: maximum rate at 32 connections, fixed rates of 1,000 and 4,000 req/s
//!    (p50/p99/p99.9 and what the proxies add over direct), a fresh connection per request.
//! 6. `h2load`: HTTP/2 with 100 streams on one connection (`h2load`).
//! 7. `resources`: peak RSS of each proxy after the load, RSS with 10,000 idle tunnelled connections, and the
//!    stripped binary size.
//!
//! Each table shows the median of the rounds and the spread (min..max), ratios to direct and to HAProxy, and
//! the CPU time (utime+stime from `/proc/<pid>/stat`) of each proxy of the pair per request, connection or GiB;
//! a markdown summary closes the run (tests/bench/RESULTS.md keeps them). Nothing is asserted about time.
//!
//! Environment: `STRAIT_BENCH_LONG=1` for longer runs; `STRAIT_BENCH_ROUNDS=N`, `STRAIT_BENCH_SECS=S` override;
//! `STRAIT_BENCH_ONLY=tcp,conn,http1,h2,oha,h2load,resources` picks figures; `STRAIT_BENCH_PATHS=l4,l7,haproxy`
//! picks the proxied paths (direct always runs; handy under `perf record`); `STRAIT_BENCH_SMOKE=1` runs every
//! path for one second and fails on any error (CI); `STRAIT_BENCH_IDLE=N` idle connections (10,000);
//! `STRAIT_BENCH_INSTALL=0` never installs HAProxy; `STRAIT_BENCH_OHA=fresh` (max, 1000, 4000) picks oha
//! loads. The proxies run with one worker thread each (HAProxy's `nbthread 1`; `STRAIT_WORKER_THREADS=N` to
//! change) and otherwise their defaults (access log off);
//! `STRAIT_ACCESS_LOG=true` turns it on, `STRAIT_TEST_LOG` is their `RUST_LOG` (default `info`). `oha` comes
//! from `cargo install oha --locked`, `h2load` from the `nghttp2-client` package: without them their figures
//! are skipped, saying so. Needs root (network namespaces); without it the benchmark prints why and exits
//! successfully. As root it fails at once, naming the package to install, when `ip`, `sysctl` or `nft` is
//! missing.

mod figures;
mod haproxy;
mod load;
mod procs;
mod resources;
mod servers;
mod stats;
mod summary;
mod tools;

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strait_api::{Endpoint, MeshConfig, Service, ServicePort};
use strait_netns::{Tool, Unmet};
use strait_tests::exec;
use strait_tests::mesh::{self, Capture, Mesh, NAMESPACE};
use strait_tests::Cluster;

use procs::{build_profile, load_average, num_cpus, process_cpu, proxy_pid};

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

pub struct Settings {
    rounds: usize,
    /// Bytes per throughput run.
    bulk_bytes: u64,
    /// Measured window of each rate run (after a short warm-up).
    window: Duration,
    conn_concurrency: usize,
    http_concurrency: usize,
    h2_streams: usize,
    /// Idle connections for the memory figure.
    idle: usize,
    /// One short round of everything; any error fails the run.
    smoke: bool,
    only: Option<Vec<String>>,
    /// Proxied paths to measure (`l4`, `l7`, `haproxy`); the direct path always runs.
    paths: Option<Vec<String>>,
}

impl Settings {
    fn from_env() -> Settings {
        let long = env_flag("STRAIT_BENCH_LONG");
        let smoke = env_flag("STRAIT_BENCH_SMOKE");
        let rounds = env_num("STRAIT_BENCH_ROUNDS").unwrap_or(if long {
            5
        } else if smoke {
            1
        } else {
            3
        }) as usize;
        let default_secs = if long {
            10.0
        } else if smoke {
            1.0
        } else {
            2.0
        };
        let secs = env_num("STRAIT_BENCH_SECS").map(|s| s as f64).unwrap_or(default_secs);
        Settings {
            rounds: rounds.max(1),
            bulk_bytes: if long {
                4 << 30
            } else if smoke {
                64 << 20
            } else {
                1 << 30
            },
            window: Duration::from_secs_f64(secs),
            conn_concurrency: 4,
            http_concurrency: 16,
            h2_streams: 32,
            idle: env_num("STRAIT_BENCH_IDLE").unwrap_or(if smoke { 200 } else { 10_000 }) as usize,
            smoke,
            only: env_list("STRAIT_BENCH_ONLY"),
            paths: env_list("STRAIT_BENCH_PATHS"),
        }
    }

    fn wants(&self, figure: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|o| o == figure))
    }

    /// The paths of a figure that this run measures (HAProxy only when it runs).
    fn pick(&self, paths: &[Path], haproxy: bool) -> Vec<Path> {
        let keep = |p: &Path| match (p, &self.paths) {
            (Path::Haproxy, _) if !haproxy => false,
            (Path::Direct, _) | (_, None) => true,
            (p, Some(list)) => list.iter().any(|w| w == p.short()),
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
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return Ok(());
    }
    if args.get(1).is_some_and(|a| a == load::HOLD_IDLE_ARG) {
        return load::hold_idle(&args[2..]);
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
    // One runtime worker per proxy, as HAProxy runs one thread per side here: the same unit of work on both.
    // The proxies inherit it; set STRAIT_WORKER_THREADS to measure another count.
    if std::env::var_os("STRAIT_WORKER_THREADS").is_none() {
        std::env::set_var("STRAIT_WORKER_THREADS", "1");
    }
    prepare_environment(&settings)?;
    let proxy = mesh::workspace_binary("strait-proxy")?;
    println!("strait mesh benchmark{}", if settings.smoke { " (smoke: one short round, errors fail)" } else { "" });
    println!("  proxy binary: {} ({})", proxy.display(), build_profile(&proxy));
    println!("  machine: {} CPUs, kernel {}; load before: {}", num_cpus(), procs::kernel(), load_average());
    println!(
        "  rounds: {} (median and min..max shown), window {:?}, proxies' RUST_LOG={}, worker threads {}, access log {}",
        settings.rounds,
        settings.window,
        std::env::var("STRAIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
        std::env::var("STRAIT_WORKER_THREADS").unwrap_or_default(),
        std::env::var("STRAIT_ACCESS_LOG").unwrap_or_else(|_| "off (default)".into()),
    );
    let load_before = load_average();
    let bench = Bench::start(&settings)?;
    println!(
        "  clusters: direct {} (+ HAProxy pair: {}) and mesh {} (TPROXY), a1 (node-a) -> b1 (node-b); proxy pids: {}",
        bench.direct.tag(),
        bench.haproxy.as_ref().map(|h| format!("pids {:?}", h.pids())).unwrap_or_else(|| "absent".into()),
        bench.mesh.cluster.tag(),
        bench.proxy_pids.iter().map(|(n, p)| format!("{n} {p}")).collect::<Vec<_>>().join(", ")
    );
    let figures: [(&str, Figure); 7] = [
        ("tcp", Bench::tcp_throughput),
        ("conn", Bench::connection_rate),
        ("http1", Bench::http1),
        ("h2", Bench::h2),
        ("oha", Bench::oha),
        ("h2load", Bench::h2load),
        ("resources", Bench::resources),
    ];
    for (name, figure) in figures {
        if settings.wants(name) {
            figure(&bench, &settings).with_context(|| format!("figure {name}"))?;
        }
    }
    let load_after = load_average();
    println!("\nload after: {load_after}");
    bench.summary.borrow().print(&proxy, &load_before, &load_after);
    if settings.smoke && bench.summary.borrow().errors() > 0 {
        bail!("smoke run: {} errors (see the tables above)", bench.summary.borrow().errors());
    }
    Ok(())
}

/// The benchmark's environment for the proxies it starts (they inherit it): the idle-connection figure needs
/// more descriptors and more connections per workload than the defaults allow; the access log stays at the
/// proxy's default unless the caller set `STRAIT_ACCESS_LOG`.
fn prepare_environment(settings: &Settings) -> Result<()> {
    let limit = procs::raise_descriptor_limit();
    if (limit as usize) < settings.idle + 1024 {
        println!(
            "  note: the descriptor limit ({limit}) is below {} idle connections and what the proxies need",
            settings.idle
        );
    }
    // Single-threaded here: nothing else reads the environment yet.
    std::env::set_var("STRAIT_MAX_CONNECTIONS_PER_WORKLOAD", (settings.idle + 1024).to_string());
    if std::env::var_os("STRAIT_ACCESS_LOG").is_none() {
        std::env::set_var("STRAIT_TEST_ACCESS_LOG", "false");
    }
    Ok(())
}

/// One figure of the benchmark: measures, prints its table, adds to the summary.
type Figure = fn(&Bench, &Settings) -> Result<()>;

/// Which way a measurement goes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Path {
    Direct,
    /// Through both proxies as TCP (the pod's address, a port no service declares).
    MeshL4,
    /// Through both proxies' HTTP handling (the service VIP, an `http` port).
    MeshL7,
    /// Through the HAProxy pair (HTTP mode, mutual TLS between the nodes).
    Haproxy,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::MeshL4 => "Strait L4 (tunnel)",
            Path::MeshL7 => "Strait L7 (http VIP)",
            Path::Haproxy => "HAProxy pair (L7, mTLS)",
        }
    }

    /// Its name in `STRAIT_BENCH_PATHS`.
    fn short(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::MeshL4 => "l4",
            Path::MeshL7 => "l7",
            Path::Haproxy => "haproxy",
        }
    }
}

pub struct Bench {
    direct: Cluster,
    // The servers are threads of this process; they hold sockets in the clusters' namespaces and end with it.
    mesh: Mesh,
    proxy_pids: Vec<(String, u32)>,
    /// In the direct cluster's nodes; dropped (stopped) before it.
    haproxy: Option<haproxy::Pair>,
    summary: RefCell<summary::Summary>,
}

impl Bench {
    fn start(settings: &Settings) -> Result<Bench> {
        let build = || Cluster::builder().node("node-a", &["a1"]).node("node-b", &["b1"]).build();
        let direct = build().context("building the direct cluster")?;
        let cluster = build().context("building the mesh cluster")?;
        for c in [&direct, &cluster] {
            tune(c)?;
            servers::start_servers(c.pod("b1").netns_name(), c.pod("b1").ip().into())?;
        }
        let config = bench_config(&cluster);
        let mesh = Mesh::start(cluster, &config, Capture::Tproxy).context("starting the mesh")?;
        let proxy_pids = ["node-a", "node-b"]
            .iter()
            .map(|node| Ok((node.to_string(), proxy_pid(mesh.cluster.node(node).netns_name())?)))
            .collect::<Result<_>>()?;
        let wants_haproxy = settings.paths.as_ref().is_none_or(|p| p.iter().any(|w| w == "haproxy"));
        let haproxy = if wants_haproxy { haproxy::Pair::start(&direct, &mesh.ca)? } else { None };
        Ok(Bench { direct, mesh, proxy_pids, haproxy, summary: RefCell::default() })
    }

    fn b1(&self, path: Path) -> IpAddr {
        match path {
            Path::Direct | Path::Haproxy => self.direct.pod("b1").ip().into(),
            _ => self.mesh.cluster.pod("b1").ip().into(),
        }
    }

    fn a1(&self, path: Path) -> String {
        match path {
            Path::Direct | Path::Haproxy => self.direct.pod("a1").netns_name().to_string(),
            _ => self.mesh.cluster.pod("a1").netns_name().to_string(),
        }
    }

    /// Where a1 sends HTTP/1.1 (or, with `h2`, h2c) for `path`.
    fn http_target(&self, path: Path, h2: bool) -> SocketAddr {
        match path {
            Path::Direct => SocketAddr::new(self.b1(path), HTTP_PORT),
            Path::MeshL4 => SocketAddr::new(self.b1(path), HTTP_L4_PORT),
            Path::MeshL7 => SocketAddr::new(HTTP_VIP.into(), HTTP_VIP_PORT),
            Path::Haproxy => match &self.haproxy {
                Some(pair) if h2 => pair.front_h2,
                Some(pair) => pair.front,
                None => SocketAddr::new(self.b1(path), HTTP_PORT),
            },
        }
    }

    /// The processes doing `path`'s work: client side, server side (none on the direct path).
    fn pair_pids(&self, path: Path) -> Vec<u32> {
        match path {
            Path::Direct => Vec::new(),
            Path::MeshL4 | Path::MeshL7 => self.proxy_pids.iter().map(|(_, p)| *p).collect(),
            Path::Haproxy => self.haproxy.as_ref().map(|h| h.pids()).unwrap_or_default(),
        }
    }

    /// utime+stime of `path`'s pair so far.
    fn pair_cpu(&self, path: Path) -> Vec<Duration> {
        self.pair_pids(path).iter().map(|pid| process_cpu(*pid).unwrap_or_default()).collect()
    }

    /// Runs `f` for `path`, returning its result and the CPU each process of the path's pair spent meanwhile
    /// (zero on the direct path, where no proxy is involved).
    fn measured<T>(&self, path: Path, f: impl FnOnce() -> Result<T>) -> Result<(T, Vec<Duration>)> {
        let before = self.pair_cpu(path);
        let out = f()?;
        let after = self.pair_cpu(path);
        let spent = if path == Path::Direct {
            vec![Duration::ZERO; 2]
        } else {
            after.iter().zip(&before).map(|(a, b)| a.saturating_sub(*b)).collect()
        };
        Ok((out, spent))
    }
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
