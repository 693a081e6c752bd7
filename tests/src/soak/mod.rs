//! `strait-soak`: minutes of steady load on a real mesh (namespace cluster, the control plane in file mode,
//! one node proxy per node, the test backends) while everything around it changes, then a report of what was
//! lost and whether the processes stayed flat. Issue 19. See `load`, `churn`, `config` and `report` for the
//! parts, `topology` for the layout.

pub mod churn;
pub mod config;
pub mod load;
pub mod procs;
pub mod report;
pub mod topology;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tokio::sync::watch;

pub use load::lock;
use procs::{Proc, Usage};
use topology::{Binaries, Desired, Paths, CLIENTS, NODES};

use crate::Cluster;

/// Durations on the command line: `600`, `90s`, `10m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{s:?}: expected e.g. 60s, 10m"))?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: the unit must be s, m or h")),
    };
    if !(10..=24 * 3600).contains(&seconds) {
        return Err(format!("{s:?}: between 10s and 24h"));
    }
    Ok(Duration::from_secs(seconds))
}

#[derive(clap::Parser, Debug, Clone)]
#[command(name = "strait-soak", about = "Soak the mesh under churn (root; namespace cluster, real binaries)")]
pub struct Options {
    /// How long the load runs (the churn runs meanwhile), e.g. 60s, 10m.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub duration: Duration,
    /// Keep-alive HTTP/1.1 requests per second to `reviews`, in total.
    #[arg(long, default_value_t = 2000.0)]
    pub keepalive_rate: f64,
    /// Keep-alive connections carrying them.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub keepalive_connections: u32,
    /// New connections per second through the L7 path (`ratings`, one request each).
    #[arg(long, default_value_t = 200.0)]
    pub l7_connection_rate: f64,
    /// New connections per second through the L4 path (`echo-tcp`, one echo each).
    #[arg(long, default_value_t = 200.0)]
    pub l4_connection_rate: f64,
    /// Long-lived streams, half from each client.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub streams: u32,
    /// Workload certificate lifetime given to the control plane (proxies renew at half-life).
    #[arg(long, default_value = "60s")]
    pub cert_ttl: String,
    /// The node proxies' drain grace period.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_grace: Duration,
    /// One backend pod restarted this often.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub backend_restart_every: Duration,
    /// The report, in Markdown.
    #[arg(long, default_value = "tests/bench/SOAK.md")]
    pub out: PathBuf,
    /// Configuration files, CA and every process's log (emptied at start, kept after).
    #[arg(long, default_value = "target/soak")]
    pub work_dir: PathBuf,
}

/// A resource sample of one process.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Duration,
    pub role: String,
    pub pid: u32,
    pub usage: Usage,
}

/// Everything the soak's tasks share. Fields drop in order: processes before the cluster they run in.
pub struct Ctx {
    pub opts: Options,
    pub start: Instant,
    pub bins: Binaries,
    pub configs: tokio::sync::Mutex<config::Configs>,
    pub proxies: Mutex<BTreeMap<String, Proc>>,
    pub control: Mutex<Option<Proc>>,
    pub backends: Mutex<BTreeMap<String, Proc>>,
    incarnations: Mutex<BTreeMap<String, u32>>,
    pub load: Arc<load::Load>,
    pub propagations: Mutex<Vec<config::Propagation>>,
    pub control_resyncs: Mutex<Vec<Option<Duration>>>,
    pub counts: Mutex<BTreeMap<&'static str, u64>>,
    pub events: Mutex<Vec<(Duration, String)>>,
    pub samples: Mutex<Vec<Sample>>,
    /// The last usage seen of every process that ever ran, by pid: CPU totals survive restarts.
    pub last_usage: Mutex<BTreeMap<u32, (String, Usage)>>,
    pub replaced_at: Mutex<Option<Duration>>,
    pub replacement: Mutex<Option<String>>,
    pub problems: Mutex<Vec<String>>,
    pub paths: Paths,
    pub cluster: Cluster,
}

impl Ctx {
    pub fn proxy_pid(&self, node: &str) -> Option<u32> {
        lock(&self.proxies).get(node).map(Proc::pid)
    }

    pub fn next_incarnation(&self, what: &str) -> u32 {
        let mut all = lock(&self.incarnations);
        let n = all.entry(what.to_string()).or_default();
        *n += 1;
        *n
    }

    pub fn event(&self, text: String) {
        let at = self.start.elapsed();
        println!("[{:>6.1}s] {text}", at.as_secs_f64());
        lock(&self.events).push((at, text));
    }

    pub fn problem(&self, text: String) {
        self.event(format!("PROBLEM: {text}"));
        lock(&self.problems).push(text);
    }

    /// Records one process's usage now (not a time-series sample: the CPU total of a process about to go).
    pub fn sample_one(&self, role: &str, pid: u32) -> Option<Usage> {
        let usage = procs::usage(pid)?;
        lock(&self.last_usage).insert(pid, (role.to_string(), usage));
        Some(usage)
    }

    /// The current processes by role.
    fn roles(&self) -> Vec<(String, u32)> {
        let mut roles = Vec::new();
        if let Some(c) = lock(&self.control).as_ref() {
            roles.push(("control".to_string(), c.pid()));
        }
        for (node, p) in lock(&self.proxies).iter() {
            roles.push((format!("proxy {node}"), p.pid()));
        }
        roles
    }

    fn sample_all(&self) {
        let at = self.start.elapsed();
        for (role, pid) in self.roles() {
            if let Some(usage) = self.sample_one(&role, pid) {
                lock(&self.samples).push(Sample { at, role, pid, usage });
            }
        }
    }
}

pub fn run(opts: Options) -> Result<bool> {
    anyhow::ensure!(strait_netns::is_root(), "strait-soak needs root: it creates network namespaces");
    let missing = strait_netns::missing_tools(&[crate::Tool::IP, crate::Tool::SYSCTL, crate::Tool::NFT]);
    anyhow::ensure!(missing.is_empty(), "strait-soak {}", strait_netns::Unmet::Missing(missing));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(soak(opts))
}

async fn soak(opts: Options) -> Result<bool> {
    let bins = Binaries::find()?;
    if opts.work_dir.exists() {
        std::fs::remove_dir_all(&opts.work_dir).with_context(|| format!("emptying {}", opts.work_dir.display()))?;
    }
    let paths = Paths::create(&opts.work_dir)?;
    let cluster = topology::build_cluster()?;
    let desired = Desired::initial();
    desired.write(&cluster, &paths.config)?;
    let ctx = Arc::new(Ctx {
        opts: opts.clone(),
        start: Instant::now(),
        bins,
        configs: tokio::sync::Mutex::new(config::Configs::new(desired)),
        proxies: Mutex::default(),
        control: Mutex::default(),
        backends: Mutex::default(),
        incarnations: Mutex::default(),
        load: Arc::default(),
        propagations: Mutex::default(),
        control_resyncs: Mutex::default(),
        counts: Mutex::default(),
        events: Mutex::default(),
        samples: Mutex::default(),
        last_usage: Mutex::default(),
        replaced_at: Mutex::default(),
        replacement: Mutex::default(),
        problems: Mutex::default(),
        paths,
        cluster,
    });
    let outcome = tokio::select! {
        outcome = drive(ctx.clone()) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Processes first, then the namespaces (the cluster goes with the last reference to the context).
    lock(&ctx.proxies).clear();
    lock(&ctx.backends).clear();
    *lock(&ctx.control) = None;
    outcome
}

async fn drive(ctx: Arc<Ctx>) -> Result<bool> {
    start_mesh(&ctx).await?;
    ctx.event("mesh up; load and churn start".into());
    let start_load = ctx.start.elapsed();
    let (stop_tx, stop) = watch::channel(false);
    let opts = ctx.opts.clone();
    let d = opts.duration;

    let mut load_tasks = Vec::new();
    let (c1, c2) = (
        ctx.cluster.pod(CLIENTS[0].0).netns_name().to_string(),
        ctx.cluster.pod(CLIENTS[1].0).netns_name().to_string(),
    );
    load_tasks.push(tokio::spawn(load::keepalive(
        ctx.load.clone(),
        ctx.start,
        c1.clone(),
        opts.keepalive_rate,
        opts.keepalive_connections,
        stop.clone(),
    )));
    load_tasks.push(tokio::spawn(load::l7_new(
        ctx.load.clone(),
        ctx.start,
        c2.clone(),
        opts.l7_connection_rate,
        stop.clone(),
    )));
    load_tasks.push(tokio::spawn(load::l4_new(
        ctx.load.clone(),
        ctx.start,
        c2.clone(),
        opts.l4_connection_rate,
        stop.clone(),
    )));
    for i in 0..opts.streams {
        let (client, netns) = if i % 2 == 0 { (CLIENTS[0].0, c1.clone()) } else { (CLIENTS[1].0, c2.clone()) };
        load_tasks.push(tokio::spawn(load::stream(
            ctx.load.clone(),
            ctx.start,
            client.to_string(),
            netns,
            stop.clone(),
        )));
    }

    // The churn, scheduled relative to the load's start; a short run still gets every kind once.
    let at = |t: Duration| start_load + t;
    let mut churn_tasks: Vec<(&str, tokio::task::JoinHandle<Result<()>>)> = Vec::new();
    let spawn = |name: &'static str, tasks: &mut Vec<(&str, tokio::task::JoinHandle<Result<()>>)>, f: ChurnFn| {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tasks.push((name, tokio::spawn(async move { f(ctx, stop).await })));
    };
    let every = opts.backend_restart_every;
    let first_restart = at(every);
    spawn("weights", &mut churn_tasks, Box::new(|ctx, stop| Box::pin(async move { churn::weights(&ctx, stop).await })));
    spawn(
        "backend restarts",
        &mut churn_tasks,
        Box::new(move |ctx, stop| {
            Box::pin(async move { churn::backend_restarts(&ctx, first_restart, every, stop).await })
        }),
    );
    let first_new = at(Duration::from_secs(10));
    spawn(
        "new-version pod",
        &mut churn_tasks,
        Box::new(move |ctx, stop| Box::pin(async move { churn::new_version(&ctx, first_new, stop).await })),
    );
    let first_control = at((d / 2).min(Duration::from_secs(120)));
    spawn(
        "control-plane restarts",
        &mut churn_tasks,
        Box::new(move |ctx, stop| Box::pin(async move { churn::control_restarts(&ctx, first_control, stop).await })),
    );
    let replace_at = at(d.mul_f64(0.4));
    spawn(
        "proxy replacement",
        &mut churn_tasks,
        Box::new(move |ctx, stop| Box::pin(async move { churn::replace_proxy(&ctx, replace_at, stop).await })),
    );
    let watcher = {
        let (ctx, stop) = (ctx.clone(), stop.clone());
        tokio::spawn(async move { churn::watch_certificates(&ctx, stop).await })
    };

    // Resource samples every 10 s, and a watch for processes that die on their own.
    let end = Instant::now() + d;
    let mut next_sample = Instant::now();
    ctx.sample_all();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500).min(end.saturating_duration_since(Instant::now()))).await;
        if Instant::now() >= next_sample + Duration::from_secs(10) {
            next_sample += Duration::from_secs(10);
            ctx.sample_all();
        }
        check_processes(&ctx);
    }
    ctx.sample_all();
    ctx.event("duration over; stopping the load".into());
    let _ = stop_tx.send(true);
    for task in load_tasks {
        if tokio::time::timeout(Duration::from_secs(30), task).await.is_err() {
            ctx.problem("a load task did not finish within 30 s of the stop".into());
        }
    }
    for (name, task) in churn_tasks {
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => ctx.problem(format!("churn `{name}` failed: {e:#}")),
            Ok(Err(e)) => ctx.problem(format!("churn `{name}` panicked: {e}")),
            Err(_) => ctx.problem(format!("churn `{name}` did not finish within 60 s of the stop")),
        }
    }
    let _ = watcher.await;
    ctx.load.split.close();
    let report = report::Report::gather(&ctx);
    let text = report.markdown(&ctx);
    println!("\n{text}");
    if let Some(dir) = ctx.opts.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&ctx.opts.out, &text).with_context(|| format!("writing {}", ctx.opts.out.display()))?;
    println!("report written to {}; logs in {}", ctx.opts.out.display(), ctx.paths.logs.display());
    Ok(report.passed())
}

type ChurnFn = Box<
    dyn FnOnce(
            Arc<Ctx>,
            watch::Receiver<bool>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>
        + Send,
>;

/// A control plane, proxy or backend that exited without the soak stopping it is a finding.
fn check_processes(ctx: &Ctx) {
    let mut died = Vec::new();
    for (node, p) in lock(&ctx.proxies).iter_mut() {
        if let Some(status) = p.exited() {
            died.push(format!("proxy on {node} exited ({status}): {}", p.tail(5)));
        }
    }
    if let Some(c) = lock(&ctx.control).as_mut() {
        if let Some(status) = c.exited() {
            died.push(format!("control plane exited ({status}): {}", c.tail(5)));
        }
    }
    for (pod, b) in lock(&ctx.backends).iter_mut() {
        if let Some(status) = b.exited() {
            died.push(format!("backend {pod} exited ({status}): {}", b.tail(5)));
        }
    }
    let mut seen = lock(&ctx.counts);
    for text in died {
        // Once per process: a dead process stays dead.
        let key: &'static str = "processes that died on their own";
        *seen.entry(key).or_default() += 1;
        drop(seen);
        ctx.problem(text);
        seen = lock(&ctx.counts);
    }
    drop(seen);
    // Forget the dead so they are reported once.
    lock(&ctx.proxies).retain(|_, p| p.exited().is_none());
    lock(&ctx.backends).retain(|_, b| b.exited().is_none());
    let mut control = lock(&ctx.control);
    if control.as_mut().is_some_and(|c| c.exited().is_some()) {
        *control = None;
    }
}

async fn start_mesh(ctx: &Ctx) -> Result<()> {
    let n = ctx.next_incarnation("control");
    *lock(&ctx.control) = Some(topology::start_control(&ctx.cluster, &ctx.bins, &ctx.paths, &ctx.opts.cert_ttl, n)?);
    for pod in topology::BACKENDS.iter().map(|(pod, ..)| *pod).filter(|p| *p != topology::NEW_VERSION_POD) {
        let n = ctx.next_incarnation(pod);
        let backend = topology::start_backend(&ctx.cluster, &ctx.bins, &ctx.paths, pod, n).await?;
        lock(&ctx.backends).insert(pod.to_string(), backend);
    }
    for node in NODES {
        let n = ctx.next_incarnation(node);
        let proxy = topology::start_proxy(&ctx.cluster, &ctx.bins, &ctx.paths, node, ctx.opts.drain_grace, n)?;
        lock(&ctx.proxies).insert(node.to_string(), proxy);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in NODES {
        loop {
            let netns = ctx.cluster.node(node).netns_name();
            match topology::admin_get(netns, topology::ADMIN, "/ready").await {
                Ok(reply) if reply.status == 200 => break,
                _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
                other => {
                    let tail = lock(&ctx.proxies).get(node).map(|p| p.tail(30)).unwrap_or_default();
                    let control = lock(&ctx.control).as_ref().map(|p| p.tail(30)).unwrap_or_default();
                    bail!(
                        "proxy on {node} not ready after 60 s ({:?}); its log:\n{tail}\ncontrol plane:\n{control}",
                        other.map(|r| (r.status, r.body))
                    );
                }
            }
        }
    }
    // Every service answers from every client before the clock starts.
    for (client, _) in CLIENTS {
        let netns = ctx.cluster.pod(client).netns_name().to_string();
        for addr in [topology::REVIEWS, topology::RATINGS, topology::ECHO_TCP, topology::STREAMS] {
            loop {
                let ok = matches!(
                    tokio::time::timeout(Duration::from_secs(2), strait_netns::connect_from_async(&netns, addr)).await,
                    Ok(Ok(_))
                );
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{addr} does not accept connections from {client} after 60 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let mut configs = ctx.configs.lock().await;
    config::refresh(ctx, &mut configs).await?;
    ctx.load.split.open(configs.desired.v1_weight);
    Ok(())
}
