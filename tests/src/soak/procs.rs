//! The soak's child processes (control plane, node proxies, backends): each in its namespace under
//! `ip netns exec` (which execs in place, so the pid is the program's), its output in its own log file rather
//! than in memory (ten minutes of access log would not fit), and set to die with the soak
//! (`PR_SET_PDEATHSIG`). Also what `/proc` says about a process: RSS, open fds, CPU time.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

/// A running child; SIGKILLed and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl Proc {
    /// Starts `program args` in `netns`, output appended to `<log_dir>/<name>.log`. Call it from a thread that
    /// lives as long as the soak (a runtime worker, not `spawn_blocking`): the death signal follows the thread
    /// that started the child.
    pub fn spawn(netns: &str, log_dir: &Path, name: &str, program: &Path, args: &[String]) -> Result<Proc> {
        let (log, out, err) = crate::loopback::log_file(log_dir, name)?;
        let mut cmd = strait_netns::exec::command_in(netns, &crate::loopback::plain_command(program, args));
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl and getppid are.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the soak exited while starting its children"));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name} ({} in {netns})", program.display()))?;
        Ok(Proc { name: name.to_string(), log, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status text)` once it has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot be polled: {e}")),
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        strait_netns::exec::signal(self.pid(), sig);
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for it to exit by itself; the time it took, or `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.exited().is_some() {
                return Some(start.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What `/proc/<pid>` says about a process at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: u64,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// `None` once the process is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Usage { rss_kib, fds, cpu_ticks: utime + stime })
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), for turning CPU ticks into time.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_usage() {
        let me = usage(std::process::id()).expect("this process exists");
        assert!(me.rss_kib > 0);
        assert!(me.fds >= 3, "stdin, stdout, stderr at least: {me:?}");
        assert!(ticks_per_second() >= 1.0);
    }
}
