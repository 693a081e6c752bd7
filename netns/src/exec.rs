//! Running things inside a network namespace.
//!
//! `setns(2)` switches only the calling thread, and tokio moves tasks between threads, so a runtime thread
//! must never be switched. Two safe ways remain, and this module offers both:
//! - child processes under `ip netns exec <ns> ...` ([`spawn_in`], [`run_in`], [`output_in`]);
//! - sockets created on a dedicated, short-lived std thread that enters the namespace, creates the socket
//!   and exits ([`in_netns`], [`connect_from`], [`listen_in`]). A socket stays in the namespace it was
//!   created in, whichever thread later uses it.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How long one-shot commands run by [`run_in`] may take before they are killed.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The path of a named namespace as `ip netns add` creates it.
pub fn netns_path(netns: &str) -> String {
    format!("/var/run/netns/{netns}")
}

/// Rewrites `cmd` as `ip netns exec <netns> <program> <args...>`, keeping its environment and directory
/// (not its stdio or pre-exec hooks: set those on the result). `ip netns exec` execs the program in place,
/// so the child's pid is the program's pid.
pub fn command_in(netns: &str, cmd: &Command) -> Command {
    wrap(netns, cmd)
}

fn wrap(netns: &str, cmd: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped.arg("netns").arg("exec").arg(netns).arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

fn describe(netns: &str, cmd: &Command) -> String {
    let mut words: Vec<OsString> = vec![cmd.get_program().to_owned()];
    words.extend(cmd.get_args().map(|a| a.to_owned()));
    let words: Vec<String> = words.iter().map(|w| w.to_string_lossy().into_owned()).collect();
    format!("`{}` in netns {netns}", words.join(" "))
}

/// Output a child has printed so far, collected by background reader threads so that a chatty child never
/// blocks on a full pipe.
#[derive(Default)]
struct Collected {
    stdout: Vec<String>,
    stderr: Vec<String>,
    stdout_closed: bool,
    stderr_closed: bool,
}

type Shared = Arc<(Mutex<Collected>, Condvar)>;

fn collect_lines(reader: impl Read + Send + 'static, shared: Shared, is_stdout: bool) {
    thread::spawn(move || {
        let (lock, cvar) = &*shared;
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
            if is_stdout {
                c.stdout.push(line);
            } else {
                c.stderr.push(line);
            }
            cvar.notify_all();
        }
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        if is_stdout {
            c.stdout_closed = true;
        } else {
            c.stderr_closed = true;
        }
        cvar.notify_all();
    });
}

/// A child process running in a namespace; killed (SIGKILL) and reaped on drop, also during a panic.
pub struct ChildGuard {
    child: Child,
    what: String,
    shared: Shared,
}

/// Starts `cmd` inside `netns` with stdout and stderr captured (line by line, see [`ChildGuard::stdout`]).
/// Stdin is closed. The child is killed when the guard is dropped.
pub fn spawn_in(netns: &str, cmd: Command) -> Result<ChildGuard> {
    let what = describe(netns, &cmd);
    let mut wrapped = wrap(netns, &cmd);
    wrapped.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = wrapped.spawn().with_context(|| format!("starting {what}"))?;
    let shared: Shared = Arc::default();
    if let Some(out) = child.stdout.take() {
        collect_lines(out, shared.clone(), true);
    }
    if let Some(err) = child.stderr.take() {
        collect_lines(err, shared.clone(), false);
    }
    Ok(ChildGuard { child, what, shared })
}

impl ChildGuard {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// What was started, for messages: "`prog args` in netns X".
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// Waits until the child prints a line `ready <addr>` and returns `<addr>`. Fails with the child's
    /// stderr if it exits first or stays silent past `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<String> {
        let line = self.wait_for_line(timeout, |l| l.starts_with("ready "))?;
        Ok(line["ready ".len()..].trim().to_owned())
    }

    /// Waits for the first stdout line (printed so far or later) that satisfies `matches`.
    pub fn wait_for_line(&self, timeout: Duration, matches: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.shared;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(line) = c.stdout.iter().find(|l| matches(l)) {
                return Ok(line.clone());
            }
            if c.stdout_closed {
                drop(c);
                bail!("{} exited before printing the expected line; stderr:\n{}", self.what, self.stderr());
            }
            let now = Instant::now();
            if now >= deadline {
                drop(c);
                bail!("{} printed no expected line within {timeout:?}; stderr:\n{}", self.what, self.stderr());
            }
            c = cvar.wait_timeout(c, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Every stdout line printed so far.
    pub fn stdout(&self) -> Vec<String> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner()).stdout.clone()
    }

    /// Everything printed on stderr so far (handy in assertion messages).
    pub fn stderr(&self) -> String {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner()).stderr.join("\n")
    }

    /// `Some(status)` if the child has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().with_context(|| format!("polling {}", self.what))
    }

    /// `Some(status)` if the child has exited, and then only once what it printed has been collected (the
    /// reader threads may lag behind the exit; waited for up to a second, in case a grandchild holds the
    /// pipes open), so [`ChildGuard::stderr`] ends with its last words, typically the error it died of.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        let Some(status) = self.try_wait()? else { return Ok(None) };
        let deadline = Instant::now() + Duration::from_secs(1);
        let (lock, cvar) = &*self.shared;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !(c.stdout_closed && c.stderr_closed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            c = cvar.wait_timeout(c, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(Some(status))
    }

    /// One line saying why the child stopped, from what it printed on stderr so far (see [`last_words`]).
    pub fn last_words(&self) -> Option<String> {
        last_words(&self.shared.0.lock().unwrap_or_else(|e| e.into_inner()).stderr)
    }

    /// Sends SIGTERM and waits up to `grace` for the child to exit, then SIGKILLs it.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.kill()
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        // An error here means it has already exited; `wait` still reaps it.
        let _ = self.child.kill();
        self.child.wait().with_context(|| format!("waiting for {}", self.what))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// One line saying why a program stopped, from its stderr `lines`. A Rust `main` that returns an error prints
/// "Error: <what>", then "Caused by:" with the causes indented below (numbered when there are several) and,
/// with RUST_BACKTRACE set, a backtrace: the last line is then a stack frame, so the error and its causes are
/// joined instead ("Error: binding ...: Address already in use (os error 98)"). Otherwise the last non-blank
/// line.
pub fn last_words(lines: &[String]) -> Option<String> {
    let Some(at) = lines.iter().rposition(|l| l.starts_with("Error: ")) else {
        return lines.iter().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim_end().to_owned());
    };
    let mut words = vec![lines[at].trim_end().to_owned()];
    let mut rest = lines[at + 1..].iter().skip_while(|l| l.trim().is_empty());
    if rest.next().is_some_and(|l| l.trim() == "Caused by:") {
        for cause in rest.take_while(|l| l.starts_with(' ') && !l.trim().is_empty()) {
            let cause = cause.trim();
            // "0: cause" when there are several: the numbers mean nothing on one line.
            let cause = match cause.split_once(": ") {
                Some((n, text)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => text,
                _ => cause,
            };
            words.push(cause.to_owned());
        }
    }
    Some(words.join(": "))
}

/// True if a process `pid` is alive (it may belong to someone else: kill(2) then says EPERM). A zombie, dead
/// but not yet reaped (a killed process whose parent is slow to wait), is not.
pub fn process_exists(pid: u32) -> bool {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) state ...": comm may hold anything, so the state follows the last ')'.
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
        return !matches!(state, Some('Z' | 'X'));
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill(2) with signal 0 only checks that the process exists; it touches no memory of ours.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends `sig` to `pid`; errors (no such process) are ignored because every caller treats "already gone"
/// as success.
pub fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Runs `args` (program first) inside `netns` and returns its output; fails naming the command and its
/// stderr if it cannot start, exits non-zero, or runs longer than [`DEFAULT_RUN_TIMEOUT`].
pub fn run_in<S: AsRef<str>>(netns: &str, args: &[S]) -> Result<Output> {
    let out = output_in(netns, args, DEFAULT_RUN_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            describe_args(netns, args),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// Like [`run_in`] but returns the output whatever the exit status (for tests that expect a failure).
/// Fails only if the command cannot start or outlives `timeout` (it is then killed).
pub fn output_in<S: AsRef<str>>(netns: &str, args: &[S], timeout: Duration) -> Result<Output> {
    let (program, rest) = args.split_first().ok_or_else(|| anyhow!("run_in: empty command"))?;
    let mut cmd = Command::new(program.as_ref());
    cmd.args(rest.iter().map(|a| a.as_ref()));
    output_cmd_in(netns, cmd, timeout)
}

/// [`output_in`] for a prepared `Command` (to set environment variables, say).
pub fn output_cmd_in(netns: &str, cmd: Command, timeout: Duration) -> Result<Output> {
    let what = describe(netns, &cmd);
    let mut wrapped = wrap(netns, &cmd);
    wrapped.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = wrapped.spawn().with_context(|| format!("starting {what}"))?;
    // Drain both pipes on threads so a large output cannot deadlock against our polling.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = thread::spawn(move || read_all(stdout.as_mut()));
    let err_reader = thread::spawn(move || read_all(stderr.as_mut()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = err_reader.join().unwrap_or_default();
            bail!("{what} did not finish within {timeout:?}; stderr: {}", String::from_utf8_lossy(&err).trim());
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Output { status, stdout: out_reader.join().unwrap_or_default(), stderr: err_reader.join().unwrap_or_default() })
}

fn read_all(reader: Option<&mut impl Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(r) = reader {
        let _ = r.read_to_end(&mut buf);
    }
    buf
}

fn describe_args<S: AsRef<str>>(netns: &str, args: &[S]) -> String {
    let words: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    format!("`{}` in netns {netns}", words.join(" "))
}

/// Runs `f` on a fresh std thread that has entered `netns`, and returns its result. The thread exits
/// afterwards, so the namespace switch can never leak into other work. Sockets created by `f` stay in
/// `netns`.
pub fn in_netns<T, F>(netns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let path = netns_path(netns);
    let ns = netns.to_owned();
    thread::Builder::new()
        .name(format!("netns-{ns}"))
        .spawn(move || -> Result<T> {
            enter_netns(&path).with_context(|| format!("entering netns {ns}"))?;
            f().map_err(anyhow::Error::from)
        })
        .context("spawning a namespace thread")?
        .join()
        .map_err(|_| anyhow!("the thread running in netns {netns} panicked"))?
}

/// Moves the calling thread into the network namespace at `path`. Call only on a thread you own and that
/// exits afterwards (see [`in_netns`]).
fn enter_netns(path: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns(2) takes a file descriptor we keep open for the duration of the call and a flag; it
    // changes only this thread's network namespace, which is the point.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns({path})"));
    }
    Ok(())
}

/// A TCP connection to `addr` made from inside `netns` (10 s connect timeout).
pub fn connect_from(netns: &str, addr: SocketAddr) -> Result<TcpStream> {
    connect_from_timeout(netns, addr, Duration::from_secs(10))
}

/// [`connect_from`] with an explicit connect timeout.
pub fn connect_from_timeout(netns: &str, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    in_netns(netns, move || TcpStream::connect_timeout(&addr, timeout))
        .with_context(|| format!("connecting to {addr} from netns {netns}"))
}

/// A TCP listener bound to `addr` inside `netns`.
pub fn listen_in(netns: &str, addr: SocketAddr) -> Result<TcpListener> {
    in_netns(netns, move || TcpListener::bind(addr)).with_context(|| format!("listening on {addr} in netns {netns}"))
}

/// A UDP socket bound to `addr` inside `netns`.
pub fn udp_bind_in(netns: &str, addr: SocketAddr) -> Result<UdpSocket> {
    in_netns(netns, move || UdpSocket::bind(addr)).with_context(|| format!("binding UDP {addr} in netns {netns}"))
}

/// Async [`connect_from`]: the connect runs on a dedicated thread (never a runtime thread, since those
/// must not change namespace) and the stream comes back as a tokio stream.
pub async fn connect_from_async(netns: &str, addr: SocketAddr) -> Result<tokio::net::TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ns = netns.to_owned();
    thread::spawn(move || {
        let _ = tx.send(connect_from(&ns, addr));
    });
    let stream = rx.await.context("namespace connect thread vanished")??;
    stream.set_nonblocking(true)?;
    Ok(tokio::net::TcpStream::from_std(stream)?)
}

/// A tokio listener bound inside `netns` (bind is immediate, so this needs no await; call it within a
/// runtime).
pub fn listen_in_tokio(netns: &str, addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    let listener = listen_in(netns, addr)?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

#[cfg(test)]
mod tests {
    use super::last_words;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn last_words_of_a_rust_main_are_its_error_and_causes_not_its_backtrace() {
        let stderr = lines(
            "2026-12-02T06:13:20Z  INFO strait_proxy::config_file: configuration loaded\n\
             Error: binding the tunnel listener on 0.0.0.0:15008\n\
             \n\
             Caused by:\n    Address already in use (os error 98)\n\
             \n\
             Stack backtrace:\n   0: anyhow::error::<impl anyhow::Error>::msg\n  33: _start\n",
        );
        assert_eq!(
            last_words(&stderr).as_deref(),
            Some("Error: binding the tunnel listener on 0.0.0.0:15008: Address already in use (os error 98)")
        );
        let several = lines("Error: a\n\nCaused by:\n    0: b\n    1: c: d\n");
        assert_eq!(last_words(&several).as_deref(), Some("Error: a: b: c: d"));
        assert_eq!(last_words(&lines("Error: alone\n")).as_deref(), Some("Error: alone"));
    }

    #[test]
    fn last_words_of_anything_else_are_its_last_non_blank_line() {
        assert_eq!(
            last_words(&lines("one\ntcpdump: eth9: No such device exists\n  \n")).as_deref(),
            Some("tcpdump: eth9: No such device exists")
        );
        assert_eq!(last_words(&[]), None);
        assert_eq!(last_words(&lines("\n \n")), None);
    }
}
