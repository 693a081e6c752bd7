//! The figures and the targets, printed and written as Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::load::{Break, Counter, SplitWindow};
use super::{lock, Ctx, Sample};

/// A split window needs this many answers to be judged.
const MIN_WINDOW: u64 = 100;
/// A window whose v1 count is further than this many standard deviations from the weight is off.
const MAX_Z: f64 = 4.5;
/// The propagation target.
const PROPAGATION_TARGET: Duration = Duration::from_secs(1);

pub struct Target {
    pub what: String,
    pub met: bool,
    pub detail: String,
}

pub struct Report {
    pub targets: Vec<Target>,
    body: String,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.targets.iter().all(|t| t.met)
    }

    pub fn gather(ctx: &Ctx) -> Report {
        let mut body = String::new();
        let mut targets = Vec::new();
        let d = ctx.opts.duration.as_secs_f64();
        let load = &ctx.load;

        // Requests.
        let _ = writeln!(body, "## Requests\n");
        let _ = writeln!(
            body,
            "| traffic | target rate | sent | ok | failed | achieved ok/s | not sent (client at its in-flight limit) |"
        );
        let _ = writeln!(body, "|---|---|---|---|---|---|---|");
        let kinds: [(&str, &Counter, String); 4] = [
            ("HTTP/1.1 keep-alive → reviews (L7, weighted)", &load.keepalive, format!("{}/s", ctx.opts.keepalive_rate)),
            ("new connection + GET → ratings (L7)", &load.l7_new, format!("{}/s", ctx.opts.l7_connection_rate)),
            ("new connection + echo → echo-tcp (L4)", &load.l4_new, format!("{}/s", ctx.opts.l4_connection_rate)),
            ("long-lived stream opens → streams (upgrade)", &load.stream_opens, "-".into()),
        ];
        let mut failed_total = 0;
        let mut requests_total = 0;
        let mut causes = Vec::new();
        for (name, c, rate) in &kinds {
            let (sent, ok, failed) = (c.sent.load(Ordering::Relaxed), c.ok.load(Ordering::Relaxed), c.failed());
            failed_total += failed;
            requests_total += ok + failed;
            let _ = writeln!(
                body,
                "| {name} | {rate} | {sent} | {ok} | {failed} | {:.0} | {} |",
                ok as f64 / d,
                c.skipped.load(Ordering::Relaxed)
            );
            for (cause, n) in c.failures() {
                causes.push(format!("| {name} | {cause} | {n} |"));
            }
        }
        let pings = load.stream_pings.load(Ordering::Relaxed);
        let _ = writeln!(body, "\nStream pings echoed: {pings}.\n");
        if !causes.is_empty() {
            let _ = writeln!(body, "Failures by cause (client side):\n\n| traffic | cause | count |\n|---|---|---|");
            for c in &causes {
                let _ = writeln!(body, "{c}");
            }
            let mut first: Vec<(Duration, String)> = kinds
                .iter()
                .flat_map(|(name, c, _)| {
                    c.first_failures().into_iter().map(move |(at, cause)| (at, format!("{name}: {cause}")))
                })
                .collect();
            first.sort();
            let _ = writeln!(body, "\nFirst failures (time since the soak started):\n");
            for (at, cause) in first.iter().take(30) {
                let _ = writeln!(body, "- {:.1}s {cause}", at.as_secs_f64());
            }
            let _ = writeln!(body);
        }
        targets.push(Target {
            what: "zero failed requests".into(),
            met: failed_total == 0,
            detail: format!("{failed_total} failed of {requests_total}"),
        });

        // What the proxies logged about the requests that did not go well.
        let flags = access_flags(ctx);
        if !flags.is_empty() {
            let _ = writeln!(
                body,
                "Proxy access-log lines with a response flag (an attempt, retried or not):\n\n| proxy log | protocol | status | flags | lines |\n|---|---|---|---|---|"
            );
            for ((file, protocol, status, flag), n) in &flags {
                let _ = writeln!(body, "| {file} | {protocol} | {status} | {flag} | {n} |");
            }
            let _ = writeln!(body);
        }

        // Streams.
        let breaks = lock(&load.breaks).clone();
        let replaced_at = *lock(&ctx.replaced_at);
        let grace = ctx.opts.drain_grace;
        let allowed = |b: &Break| {
            replaced_at
                .is_some_and(|r| b.client == "c2" && b.opened < r && b.at + Duration::from_millis(500) >= r + grace)
        };
        let (excused, broken): (Vec<Break>, Vec<Break>) = breaks.into_iter().partition(allowed);
        let _ = writeln!(body, "## Long-lived streams\n");
        let _ = writeln!(
            body,
            "{} streams (half from c1 on node-a, half from c2 on node-c); broken: {} ({} on the replaced proxy after its {grace:?} grace, as expected).\n",
            ctx.opts.streams,
            broken.len() + excused.len(),
            excused.len()
        );
        for b in broken.iter().chain(&excused) {
            let _ = writeln!(
                body,
                "- {} stream opened at {:.1}s broke at {:.1}s: {}{}",
                b.client,
                b.opened.as_secs_f64(),
                b.at.as_secs_f64(),
                b.cause,
                if allowed(b) { " (replaced proxy, after grace)" } else { "" }
            );
        }
        targets.push(Target {
            what: "no long-lived stream broken (except on the replaced proxy after its grace)".into(),
            met: broken.is_empty(),
            detail: format!("{} broken, {} excused", broken.len(), excused.len()),
        });

        // Split.
        let windows: Vec<SplitWindow> =
            load.split.windows().into_iter().filter(|w| w.v1 + w.v2 >= MIN_WINDOW).collect();
        let _ = writeln!(body, "\n## Weighted split\n");
        let split = split_figures(&windows);
        let _ = writeln!(
            body,
            "{} one-weight windows with ≥ {MIN_WINDOW} answers ({} answers). Error of v1's observed share against its configured weight: mean |error| {:.2} pp, max |error| {:.2} pp, overall bias {:+.2} pp; windows further than {MAX_Z} σ from the weight: {}.\n",
            windows.len(),
            split.answers,
            split.mean_abs_pp,
            split.max_abs_pp,
            split.bias_pp,
            split.off
        );
        targets.push(Target {
            what: format!("the split follows the weights (no window beyond {MAX_Z} σ)"),
            met: split.off == 0 && !windows.is_empty(),
            detail: format!("{} of {} windows off; mean |error| {:.2} pp", split.off, windows.len(), split.mean_abs_pp),
        });

        // Propagation.
        let propagations = lock(&ctx.propagations).clone();
        let mut took: Vec<Duration> = propagations.iter().filter_map(|p| p.took).collect();
        took.sort();
        let lost: Vec<_> = propagations.iter().filter(|p| p.took.is_none()).collect();
        let slow: Vec<_> = propagations.iter().filter(|p| p.took.is_some_and(|t| t > PROPAGATION_TARGET)).collect();
        let pct =
            |q: f64| took.get(((took.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or_default();
        let _ = writeln!(body, "## Configuration propagation\n");
        let _ = writeln!(
            body,
            "{} file edits (weights, endpoints, pods), each timed from the rename into place until the control plane held every node proxy's ACK for the version it produced (an ACK of that version from the proxies it concerns; the others' earlier ACK stands for it, as their configuration did not change): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; over 1 s: {}; never seen (15 s): {}.\n",
            propagations.len(),
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            took.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            slow.len(),
            lost.len()
        );
        for p in slow.iter().chain(&lost).take(20) {
            let _ = writeln!(body, "- {:.1}s {}: {:?}", p.at.as_secs_f64(), p.what, p.took);
        }
        let resyncs = lock(&ctx.control_resyncs).clone();
        let _ = writeln!(
            body,
            "\nControl-plane restarts (SIGKILL, start again 1 s later; edits wait meanwhile): {}; time from the new start until every proxy had a configuration from it: {}.\n",
            resyncs.len(),
            resyncs.iter().map(|r| r.map(|d| format!("{:.2} s", d.as_secs_f64())).unwrap_or("never".into())).collect::<Vec<_>>().join(", ")
        );
        targets.push(Target {
            what: "every configuration change observed by every proxy within 1 s".into(),
            met: !propagations.is_empty() && slow.is_empty() && lost.is_empty() && resyncs.iter().all(Option::is_some),
            detail: format!("p99 {:.0} ms, {} slow, {} lost", pct(0.99).as_secs_f64() * 1e3, slow.len(), lost.len()),
        });

        // Certificates.
        let counts = lock(&ctx.counts).clone();
        let rotations = counts.get("certificate rotations").copied().unwrap_or(0);
        let expired = counts.get("expired certificates seen in use").copied().unwrap_or(0);
        let _ = writeln!(
            body,
            "## Certificates\n\nWorkload certificate lifetime {} (renewed at half-life); rotations seen on the proxies' /certs: {rotations}; expired certificates seen in use: {expired}.\n",
            ctx.opts.cert_ttl
        );
        if ctx.opts.duration >= Duration::from_secs(60) {
            targets.push(Target {
                what: "certificates rotate, none expires in use".into(),
                met: rotations > 0 && expired == 0,
                detail: format!("{rotations} rotations, {expired} expired seen"),
            });
        }

        // Resources.
        let samples = lock(&ctx.samples).clone();
        let _ = writeln!(body, "## Memory, file descriptors, CPU\n");
        resources_table(&mut body, &samples);
        let mut flat_detail = Vec::new();
        let mut fd_detail = Vec::new();
        let (mut flat, mut fds_ok) = (true, true);
        for (role, verdict) in flatness(&samples, ctx.opts.duration) {
            let _ = writeln!(
                body,
                "- {role}: RSS {:.1} → {:.1} MiB ({:+.1} %), fds {:.0} → {:.0}",
                verdict.ref_rss / 1024.0,
                verdict.last_rss / 1024.0,
                verdict.rss_change * 100.0,
                verdict.ref_fds,
                verdict.last_fds
            );
            if verdict.rss_change > 0.10 {
                flat = false;
                flat_detail.push(format!("{role} {:+.1} %", verdict.rss_change * 100.0));
            }
            if verdict.last_fds > verdict.ref_fds * 1.10 + 5.0 {
                fds_ok = false;
                fd_detail.push(format!("{role} {:.0} → {:.0}", verdict.ref_fds, verdict.last_fds));
            }
        }
        // A run shorter than 3 minutes has no second minute to compare with, and its processes are still
        // warming up (pools, buffers): its figures are shown, not judged.
        let judged = ctx.opts.duration >= Duration::from_secs(180);
        let windows_text = if judged {
            "Flat means the last minute against the second minute: mean RSS at most 10 % higher; fds at most 10 % + 5 higher."
        } else {
            "The run is shorter than 3 minutes: the last third against the middle third is shown, not judged (warm-up, no second minute)."
        };
        let _ = writeln!(body, "\n{windows_text}\n");
        if judged {
            targets.push(Target {
                what: "RSS flat (≤ +10 %)".into(),
                met: flat,
                detail: if flat_detail.is_empty() { "all flat".into() } else { flat_detail.join(", ") },
            });
            targets.push(Target {
                what: "no fd growth".into(),
                met: fds_ok,
                detail: if fd_detail.is_empty() { "none".into() } else { fd_detail.join(", ") },
            });
        }
        let ticks = super::procs::ticks_per_second();
        let mut cpu: BTreeMap<String, f64> = BTreeMap::new();
        for (role, usage) in lock(&ctx.last_usage).values() {
            let role = role.trim_end_matches(" (old)").to_string();
            *cpu.entry(role).or_default() += usage.cpu_ticks as f64 / ticks;
        }
        let proxies: f64 = cpu.iter().filter(|(r, _)| r.starts_with("proxy")).map(|(_, s)| s).sum();
        let handled = (requests_total + pings).max(1) as f64;
        let _ = writeln!(
            body,
            "\nCPU (all incarnations, start-up included): {}; node proxies together {:.0} µs per request/connection/ping handled ({} in total), {BUILD} builds: compare runs of one profile.\n",
            cpu.iter().map(|(r, s)| format!("{r} {s:.1} s")).collect::<Vec<_>>().join(", "),
            proxies / handled * 1e6,
            requests_total + pings
        );

        // Churn.
        let _ = writeln!(body, "## Churn\n");
        let weight_edits = propagations.iter().filter(|p| p.what.starts_with("weight")).count();
        let _ = writeln!(body, "- weight changes: {weight_edits}");
        for (what, n) in &counts {
            if !what.starts_with("certificate") && !what.starts_with("expired") {
                let _ = writeln!(body, "- {what}: {n}");
            }
        }
        let _ = writeln!(body, "- control-plane restarts: {}", resyncs.len());
        let _ = writeln!(
            body,
            "- proxy replacement: {}",
            lock(&ctx.replacement).clone().unwrap_or_else(|| "did not happen".into())
        );
        let problems = lock(&ctx.problems).clone();
        if !problems.is_empty() {
            let _ = writeln!(body, "\nProblems:\n");
            for p in &problems {
                let _ = writeln!(body, "- {p}");
            }
        }
        targets.push(Target {
            what: "every churn step done, no process died on its own".into(),
            met: problems.is_empty() && lock(&ctx.replacement).is_some(),
            detail: format!("{} problems", problems.len()),
        });
        Report { targets, body }
    }

    pub fn markdown(&self, ctx: &Ctx) -> String {
        let o = &ctx.opts;
        let mut out = String::new();
        let _ = writeln!(out, "# Soak under churn\n");
        let _ = writeln!(
            out,
            "`strait-soak --duration {}s` (issue 19): 3 nodes in network namespaces, the control plane (file provider, \
             separate process) and one `strait-proxy` per node (TPROXY, control-plane mode), `strait-testbackend` pods; \
             {BUILD} builds, {}. Load: keep-alive HTTP/1.1 at {}/s over {} connections, new \
             connections at {}/s (L7) and {}/s (L4), {} long-lived streams. Churn at once: a weight change every second, \
             certificates of {} lifetime, a backend restart every {:?} (endpoint out first), a new-version pod in and out \
             every minute, a control-plane SIGKILL + restart every 2 minutes, one node-proxy replacement \
             (drain grace {:?}).\n",
            o.duration.as_secs(),
            machine(),
            o.keepalive_rate,
            o.keepalive_connections,
            o.l7_connection_rate,
            o.l4_connection_rate,
            o.streams,
            o.cert_ttl,
            o.backend_restart_every,
            o.drain_grace
        );
        let _ = writeln!(out, "## Targets\n\n| target | met | detail |\n|---|---|---|");
        for t in &self.targets {
            let _ = writeln!(out, "| {} | {} | {} |", t.what, if t.met { "yes" } else { "**NO**" }, t.detail);
        }
        let _ = writeln!(out, "\n{}", self.body);
        out
    }
}

struct SplitFigures {
    answers: u64,
    mean_abs_pp: f64,
    max_abs_pp: f64,
    bias_pp: f64,
    off: usize,
}

fn split_figures(windows: &[SplitWindow]) -> SplitFigures {
    let (mut answers, mut abs_sum, mut max_abs, mut v1_total, mut expected_total, mut off) =
        (0u64, 0.0, 0.0f64, 0.0, 0.0, 0);
    for w in windows {
        let n = (w.v1 + w.v2) as f64;
        let p = w.v1_weight as f64 / 100.0;
        let error = w.v1 as f64 / n - p;
        abs_sum += error.abs();
        max_abs = max_abs.max(error.abs());
        v1_total += w.v1 as f64;
        expected_total += n * p;
        answers += w.v1 + w.v2;
        let sigma = (n * p * (1.0 - p)).sqrt().max(1.0);
        if (w.v1 as f64 - n * p).abs() / sigma > MAX_Z {
            off += 1;
        }
    }
    let count = windows.len().max(1) as f64;
    SplitFigures {
        answers,
        mean_abs_pp: abs_sum / count * 100.0,
        max_abs_pp: max_abs * 100.0,
        bias_pp: if answers > 0 { (v1_total - expected_total) / answers as f64 * 100.0 } else { 0.0 },
        off,
    }
}

struct Flatness {
    ref_rss: f64,
    last_rss: f64,
    rss_change: f64,
    ref_fds: f64,
    last_fds: f64,
}

/// Per role: the reference window (the second minute, or the middle third of a short run) against the last.
fn flatness(samples: &[Sample], duration: Duration) -> BTreeMap<String, Flatness> {
    let Some(t0) = samples.iter().map(|s| s.at).min() else { return BTreeMap::new() };
    let d = duration;
    let (reference, last) = if d >= Duration::from_secs(180) {
        (
            (t0 + Duration::from_secs(60), t0 + Duration::from_secs(120)),
            (t0 + d - Duration::from_secs(60), t0 + d + Duration::from_secs(5)),
        )
    } else {
        ((t0 + d / 3, t0 + d * 2 / 3), (t0 + d * 2 / 3, t0 + d + Duration::from_secs(5)))
    };
    let mut roles: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        roles.entry(s.role.clone()).or_default().push(s);
    }
    let mean = |v: &[&Sample], (from, to): (Duration, Duration), f: &dyn Fn(&Sample) -> f64| {
        let picked: Vec<f64> = v.iter().filter(|s| s.at >= from && s.at < to).map(|s| f(s)).collect();
        (!picked.is_empty()).then(|| picked.iter().sum::<f64>() / picked.len() as f64)
    };
    roles
        .into_iter()
        .filter_map(|(role, v)| {
            let rss = |s: &Sample| s.usage.rss_kib as f64;
            let fds = |s: &Sample| s.usage.fds as f64;
            let (ref_rss, last_rss) = (mean(&v, reference, &rss)?, mean(&v, last, &rss)?);
            let (ref_fds, last_fds) = (mean(&v, reference, &fds)?, mean(&v, last, &fds)?);
            Some((
                role,
                Flatness { ref_rss, last_rss, rss_change: last_rss / ref_rss.max(1.0) - 1.0, ref_fds, last_fds },
            ))
        })
        .collect()
}

fn resources_table(body: &mut String, samples: &[Sample]) {
    let roles: Vec<String> = {
        let mut r: Vec<String> = samples.iter().map(|s| s.role.clone()).collect();
        r.sort();
        r.dedup();
        r
    };
    let _ = writeln!(body, "RSS in MiB / open fds, every 10 s (a new pid after a restart or the replacement):\n");
    let _ = writeln!(body, "| t (s) | {} |", roles.join(" | "));
    let _ = writeln!(body, "|---|{}", "---|".repeat(roles.len()));
    let mut by_time: BTreeMap<u64, BTreeMap<&str, &Sample>> = BTreeMap::new();
    for s in samples {
        by_time.entry(s.at.as_secs()).or_default().insert(&s.role, s);
    }
    for (t, row) in by_time {
        let cells: Vec<String> = roles
            .iter()
            .map(|r| {
                row.get(r.as_str())
                    .map(|s| format!("{:.1} / {}", s.usage.rss_kib as f64 / 1024.0, s.usage.fds))
                    .unwrap_or("-".into())
            })
            .collect();
        let _ = writeln!(body, "| {t} | {} |", cells.join(" | "));
    }
    let _ = writeln!(body);
}

/// The profile the soak and the binaries it runs were built with (they come from the same target directory).
const BUILD: &str = if cfg!(debug_assertions) { "debug" } else { "release" };

/// When and where the run happened: a reader compares runs only with this in view.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{date}, commit {commit}, {cores} cores, load average at the end {load}")
}

/// Counts the proxies' access-log lines that carry a response flag, by log file, protocol, status and
/// flag. Ten minutes of access log are hundreds of MiB; `grep` picks the few interesting lines far faster than
/// a debug build could read them all.
fn access_flags(ctx: &Ctx) -> BTreeMap<(String, String, String, String), u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(&ctx.paths.logs) else { return out };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("proxy-") {
            continue;
        }
        let picked = std::process::Command::new("grep").args(["-v", "-F", r#"flags="-""#]).arg(entry.path()).output();
        let Ok(picked) = picked else { continue };
        for line in String::from_utf8_lossy(&picked.stdout).lines().filter(|l| l.contains(" access: ")) {
            let field = |key: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .map(|v| v.trim_matches('"').to_string())
                    .unwrap_or_default()
            };
            let flags = field("flags=");
            let status = field("status=");
            if flags.is_empty() || flags == "-" {
                continue;
            }
            *out.entry((name.trim_end_matches(".log").to_string(), field("protocol="), status, flags)).or_default() +=
                1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_split_that_follows_its_weights_is_not_off_and_one_that_does_not_is() {
        let good = [SplitWindow { v1_weight: 90, v1: 905, v2: 95 }, SplitWindow { v1_weight: 10, v1: 95, v2: 905 }];
        let f = split_figures(&good);
        assert_eq!(f.off, 0);
        assert!((f.mean_abs_pp - 0.5).abs() < 1e-9, "{}", f.mean_abs_pp);
        let stale = [SplitWindow { v1_weight: 10, v1: 900, v2: 100 }];
        assert_eq!(split_figures(&stale).off, 1);
    }
}
