//! The load generators users reach for, run inside the client pod's namespace: `oha` (HTTP/1.1: maximum rate,
//! fixed rates with latency percentiles, a fresh connection per request) and `h2load` (HTTP/2 streams). Either
//! may be missing: its figures are then skipped, saying how to get it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strait_tests::exec;

/// Where `oha` is: on the PATH or in cargo's bin directory (`cargo install oha --locked`).
pub fn find_oha() -> Option<PathBuf> {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .ok();
    let candidates = std::iter::once(PathBuf::from("oha")).chain(home.map(|h| h.join("bin/oha")));
    candidates.into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

pub fn has_h2load() -> bool {
    Command::new("h2load").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// What one `oha` run reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct OhaRun {
    pub rps: f64,
    /// µs.
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub errors: u64,
    /// Requests answered (any status).
    pub requests: u64,
}

pub struct Oha {
    bin: PathBuf,
    /// `--output-format json` (oha 1.9+) or `--json` (older).
    json_args: Vec<&'static str>,
}

/// How `oha` loads the target.
#[derive(Clone, Copy, Debug)]
pub enum OhaLoad {
    /// As fast as `connections` keep-alive connections go.
    Max { connections: usize },
    /// `rps` requests a second (latency corrected for coordinated omission) over `connections`.
    Rate { rps: u32, connections: usize },
    /// A new connection for every request, `connections` at a time.
    Fresh { connections: usize },
}

impl Oha {
    pub fn new(bin: PathBuf) -> Result<Oha> {
        let help = Command::new(&bin).arg("--help").output().context("running oha --help")?;
        let help = String::from_utf8_lossy(&help.stdout);
        let json_args = if help.contains("--output-format") { vec!["--output-format", "json"] } else { vec!["--json"] };
        Ok(Oha { bin, json_args })
    }

    pub fn run(&self, netns: &str, target: SocketAddr, load: OhaLoad, window: Duration) -> Result<OhaRun> {
        let mut args: Vec<String> = vec![self.bin.display().to_string(), "--no-tui".into()];
        args.extend(self.json_args.iter().map(|a| a.to_string()));
        args.extend(["-z".into(), format!("{}ms", window.as_millis())]);
        match load {
            OhaLoad::Max { connections } => args.extend(["-c".into(), connections.to_string()]),
            OhaLoad::Rate { rps, connections } => args.extend([
                "-c".into(),
                connections.to_string(),
                "-q".into(),
                rps.to_string(),
                "--latency-correction".into(),
            ]),
            OhaLoad::Fresh { connections } => {
                args.extend(["-c".into(), connections.to_string(), "--disable-keepalive".into()])
            }
        }
        args.push(format!("http://{target}/"));
        let out = exec::output_in(netns, &args, window + Duration::from_secs(30))?;
        if !out.status.success() {
            bail!("oha failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        parse_oha(&String::from_utf8_lossy(&out.stdout))
    }
}

fn parse_oha(text: &str) -> Result<OhaRun> {
    let json: serde_json::Value =
        serde_json::from_str(text).with_context(|| format!("oha's output is not JSON: {text:.300}"))?;
    let secs_to_us = |v: &serde_json::Value| v.as_f64().map(|s| s * 1e6).unwrap_or(f64::NAN);
    let percentiles = &json["latencyPercentiles"];
    let count = |v: &serde_json::Value| -> u64 {
        v.as_object().map(|m| m.values().filter_map(serde_json::Value::as_u64).sum()).unwrap_or(0)
    };
    let statuses = &json["statusCodeDistribution"];
    let ok = statuses["200"].as_u64().unwrap_or(0);
    let requests = count(statuses);
    Ok(OhaRun {
        rps: json["summary"]["requestsPerSec"].as_f64().context("oha: no summary.requestsPerSec")?,
        p50: secs_to_us(&percentiles["p50"]),
        p99: secs_to_us(&percentiles["p99"]),
        p999: secs_to_us(&percentiles["p99.9"]),
        // oha ends a `-z` run by dropping what is still in flight and lists those as "aborted due to deadline":
        // the window closing, not a failure of the path (direct shows as many).
        errors: failed_requests(&json["errorDistribution"]) + (requests - ok),
        requests,
    })
}

/// oha's errors, without the requests its deadline cut short.
fn failed_requests(distribution: &serde_json::Value) -> u64 {
    distribution
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(kind, _)| !kind.starts_with("aborted due to deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// What one `h2load` run reported.
#[derive(Clone, Copy, Debug, Default)]
pub struct H2loadRun {
    pub rps: f64,
    /// Mean time per request, µs.
    pub mean: f64,
    pub succeeded: u64,
    pub errors: u64,
}

/// `h2load` over one HTTP/2 (h2c) connection with `streams` concurrent streams for `window`.
pub fn h2load(netns: &str, target: SocketAddr, streams: usize, window: Duration) -> Result<H2loadRun> {
    let args = [
        "h2load".to_string(),
        "-c".into(),
        "1".into(),
        "-m".into(),
        streams.to_string(),
        "--warm-up-time=300ms".into(),
        "-D".into(),
        format!("{}ms", window.as_millis()),
        format!("http://{target}/"),
    ];
    let out = exec::output_in(netns, &args, window + Duration::from_secs(30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed ({}): {text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    parse_h2load(&text)
}

fn parse_h2load(text: &str) -> Result<H2loadRun> {
    let line = |prefix: &str| text.lines().find(|l| l.trim_start().starts_with(prefix)).map(str::trim);
    let finished = line("finished in").context("h2load: no 'finished in' line")?;
    // "finished in 2.00s, 45645.50 req/s, 2.35MB/s"
    let rps = finished
        .split(", ")
        .find_map(|p| p.strip_suffix(" req/s"))
        .and_then(|v| v.parse::<f64>().ok())
        .context("h2load: no req/s")?;
    // "requests: 91291 total, 91391 started, 91291 done, 91291 succeeded, 0 failed, 0 errored, 0 timeout"
    let requests = line("requests:").context("h2load: no requests line")?;
    let field = |name: &str| -> u64 {
        requests
            .trim_start_matches("requests:")
            .split(',')
            .find_map(|p| p.trim().strip_suffix(name).and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    };
    // "time for request:      307us     15.35ms      2.16ms       789us    76.10%": min, max, mean, sd, +/- sd.
    let mean = line("time for request:")
        .and_then(|l| l.trim_start_matches("time for request:").split_whitespace().nth(2).map(duration_us))
        .unwrap_or(f64::NAN);
    Ok(H2loadRun {
        rps,
        mean,
        succeeded: field("succeeded"),
        errors: field("failed") + field("errored") + field("timeout"),
    })
}

/// `307us`, `15.35ms`, `1.2s` -> µs.
fn duration_us(s: &str) -> f64 {
    let (number, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e6)
    } else {
        (s, f64::NAN)
    };
    number.parse::<f64>().map(|n| n * scale).unwrap_or(f64::NAN)
}
