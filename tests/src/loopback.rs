//! Processes on loopback, outside any network namespace (control-plane replicas, node proxies in explicit mode):
//! started with their output in a log file, killed and reaped when dropped; and plain HTTP/1.1 GETs of their
//! admin and monitoring ports.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};

/// `<log_dir>/<name>.log`, opened for appending, as the stdout and stderr of a child the harness logs.
pub fn log_file(log_dir: &Path, name: &str) -> Result<(PathBuf, Stdio, Stdio)> {
    let log = log_dir.join(format!("{name}.log"));
    let out =
        File::options().create(true).append(true).open(&log).with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone().context("duplicating a log file handle")?;
    Ok((log, out.into(), err.into()))
}

/// `program args` without colours and with `RUST_LOG=info` unless the caller's environment sets it: how the
/// harness runs the workspace's binaries.
pub fn plain_command(program: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd
}

/// A child process; SIGKILLed and reaped when dropped.
pub struct LoggedChild {
    pub name: String,
    pub log: PathBuf,
    child: Child,
}

impl LoggedChild {
    /// Starts `program args` with `envs` added, stdout and stderr in `<log_dir>/<name>.log` (`RUST_LOG=info`
    /// unless the caller's environment or `envs` set it).
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log_dir: &Path,
    ) -> Result<LoggedChild> {
        let (log, out, err) = log_file(log_dir, name)?;
        let mut cmd = plain_command(program, args);
        cmd.envs(envs.iter().copied());
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(LoggedChild { name: name.to_string(), log, child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("cannot be polled: {e}")),
        }
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for LoggedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET path` on `addr` (HTTP/1.1, connection close): `(status, body)`, or `None` while nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    // A busy control plane at full simulated size takes a while to render 500 proxies' status.
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: strait\r\nconnection: close\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// Polls `check` every 50 ms until it finds something, or fails naming `what` after `within`.
pub async fn eventually<T>(
    what: &str,
    within: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return Ok(found);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
