//! The processes under test, seen from /proc: their CPU time, memory, and where they run.

use std::time::Duration;

use anyhow::{bail, Context, Result};

pub fn build_profile(path: &std::path::Path) -> &'static str {
    if path.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "NOT a release build: numbers mean little"
    }
}

pub fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The pid of the `strait-proxy` process in a node's namespace.
pub fn proxy_pid(node_netns: &str) -> Result<u32> {
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
pub fn process_cpu(pid: u32) -> Result<Duration> {
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

/// Resident memory of a process now and at its peak (`VmRSS`, `VmHWM`), KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    Ok((status_kib(pid, "VmRSS:")?, status_kib(pid, "VmHWM:")?))
}

/// The anonymous (private heap and stacks) part of a process's resident memory now, KiB: RSS less the pages
/// of files it maps (its own code, shared libraries), which the page cache shares and can reclaim.
pub fn anonymous_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, name: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} for {pid}"))?;
    Ok(line.split_whitespace().nth(1).context("malformed status line")?.parse()?)
}

/// The size of `path` as it ships: a stripped copy (symbols and line tables removed), bytes.
pub fn stripped_size(path: &std::path::Path) -> Result<u64> {
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("stripped");
    let out = std::process::Command::new("strip").arg("-o").arg(&copy).arg(path).output().context("running strip")?;
    if !out.status.success() {
        bail!("strip {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(std::fs::metadata(&copy)?.len())
}

/// `uname -r`.
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// Raises the soft descriptor limit to the hard one (the idle-connection figure holds thousands); returns it.
pub fn raise_descriptor_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read or write the struct we pass and nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}
