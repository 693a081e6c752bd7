//! The local mesh's child processes and their supervisor. Every child has its own log file and is set up to die
//! with the launcher (Linux `PR_SET_PDEATHSIG`), so even `kill -9` of `strait local` leaves nothing behind.
//!
//! Once the mesh is up, a child that exits is restarted, as Kubernetes restarts a crashed container: after a
//! delay that doubles with every exit in a row (from [`FIRST_DELAY`] up to [`MAX_DELAY`]), logged with its exit
//! status and a restart counter. A child that stayed up for [`STABLE`] starts over at the first delay. A child
//! that crash-loops keeps being retried at the capped delay; only Ctrl-C/SIGTERM stops the mesh.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// The delay before the first restart after a stable run.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between restarts of a crash-looping child.
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// A child that ran this long before exiting is restarted after [`FIRST_DELAY`] again.
pub const STABLE: Duration = Duration::from_secs(10);

/// The delay before restart number `exits_in_a_row` (1 for the first exit after a stable run): doubling, capped.
pub fn backoff(exits_in_a_row: u32) -> Duration {
    let doublings = exits_in_a_row.saturating_sub(1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// How to start one child.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The child's name in logs (and its log file's, `<name>.log`).
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run inside this network namespace (`ip netns exec`, which execs in place: the child is still our direct
    /// child, and its death signal survives the exec).
    pub netns: Option<String>,
    pub current_dir: Option<PathBuf>,
}

pub struct Children {
    exe: PathBuf,
    log_dir: PathBuf,
    running: Vec<Supervised>,
}

struct Supervised {
    spec: Spec,
    log: PathBuf,
    /// `None` while waiting to be restarted.
    child: Option<Child>,
    started: Instant,
    /// Restarts so far.
    restarts: u32,
    /// Exits since the last stable run.
    exits_in_a_row: u32,
    restart_at: Option<Instant>,
}

impl Children {
    pub fn new(log_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this program's path to start the mesh's processes")?;
        std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Children { exe, log_dir: log_dir.to_path_buf(), running: Vec::new() })
    }

    /// The spec of `strait <args>` (this same binary) as the child `name`.
    pub fn ours(&self, name: &str, args: &[String]) -> Spec {
        Spec {
            name: name.to_string(),
            program: self.exe.clone(),
            args: args.to_vec(),
            env: Vec::new(),
            netns: None,
            current_dir: None,
        }
    }

    /// Starts `strait <args>` as the child `name`, its output written to `<log dir>/<name>.log`.
    /// Must be called from the thread that lives as long as the launcher: the death signal is tied to the
    /// thread that started the child.
    pub fn spawn(&mut self, name: &str, args: &[String]) -> anyhow::Result<()> {
        self.start(self.ours(name, args))
    }

    /// [`Children::spawn`] inside the network namespace `netns`.
    pub fn spawn_in(&mut self, netns: &str, name: &str, args: &[String]) -> anyhow::Result<()> {
        let mut spec = self.ours(name, args);
        spec.netns = Some(netns.to_string());
        self.start(spec)
    }

    /// Starts `spec` and supervises it from now on.
    pub fn start(&mut self, spec: Spec) -> anyhow::Result<()> {
        let log = self.log_dir.join(format!("{}.log", spec.name));
        let out = File::create(&log).with_context(|| format!("creating the log file {}", log.display()))?;
        let child = launch(&spec, out)?;
        self.running.push(Supervised {
            spec,
            log,
            child: Some(child),
            started: Instant::now(),
            restarts: 0,
            exits_in_a_row: 0,
            restart_at: None,
        });
        Ok(())
    }

    /// The first child that has exited, with its status and the end of its log (while the mesh starts, an exit
    /// is an error to report, not something to restart).
    pub fn exited(&mut self) -> Option<(String, ExitStatus, String)> {
        for r in &mut self.running {
            if let Some(child) = &mut r.child {
                if let Ok(Some(status)) = child.try_wait() {
                    return Some((r.spec.name.clone(), status, log_tail(&r.log, 12)));
                }
            }
        }
        None
    }

    /// One round of supervision: schedules the restart of every child that exited, starts those whose delay
    /// has passed. Returns what happened, one line per event, for the launcher's log (each line is also
    /// appended to the child's own log).
    pub fn supervise(&mut self) -> Vec<String> {
        let now = Instant::now();
        let mut events = Vec::new();
        for r in &mut self.running {
            if let Some(child) = &mut r.child {
                let status = match child.try_wait() {
                    Ok(Some(status)) => status,
                    Ok(None) => continue,
                    Err(e) => {
                        events.push(r.note(&format!("{}: cannot read its state ({e}); leaving it", r.spec.name)));
                        continue;
                    }
                };
                let ran = now.saturating_duration_since(r.started);
                r.child = None;
                r.exits_in_a_row = if ran >= STABLE { 1 } else { r.exits_in_a_row.saturating_add(1) };
                let delay = backoff(r.exits_in_a_row);
                r.restart_at = Some(now + delay);
                let line = format!(
                    "{} exited ({status}) after {:.1} s; restart #{} in {:.1} s",
                    r.spec.name,
                    ran.as_secs_f64(),
                    r.restarts + 1,
                    delay.as_secs_f64()
                );
                events.push(r.note(&line));
                continue;
            }
            if r.restart_at.is_some_and(|at| at <= now) {
                r.restart_at = None;
                r.restarts = r.restarts.saturating_add(1);
                let opened = OpenOptions::new().append(true).create(true).open(&r.log);
                let started = opened.map_err(anyhow::Error::from).and_then(|out| launch(&r.spec, out));
                match started {
                    Ok(child) => {
                        r.child = Some(child);
                        r.started = Instant::now();
                        events.push(r.note(&format!("{} restarted (restart #{})", r.spec.name, r.restarts)));
                    }
                    Err(e) => {
                        r.exits_in_a_row = r.exits_in_a_row.saturating_add(1);
                        let delay = backoff(r.exits_in_a_row);
                        r.restart_at = Some(Instant::now() + delay);
                        let line = format!(
                            "{}: restart #{} failed ({e:#}); next try in {:.1} s",
                            r.spec.name,
                            r.restarts,
                            delay.as_secs_f64()
                        );
                        events.push(r.note(&line));
                    }
                }
            }
        }
        events
    }

    /// The process id of the running child `name`, if it runs (tests and logs).
    #[cfg(test)]
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.running.iter().find(|r| r.spec.name == name)?.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_dir
    }

    /// SIGTERM to every child, then SIGKILL to those still running after `grace`. Pending restarts are
    /// cancelled.
    pub fn stop(&mut self, grace: Duration) {
        for child in self.running.iter_mut().filter_map(|r| r.child.as_mut()) {
            if let Ok(None) = child.try_wait() {
                // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + grace;
        for child in self.running.iter_mut().filter_map(|r| r.child.as_mut()) {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.running.clear();
    }
}

impl Supervised {
    /// Appends `line` to this child's log (so its log tells its whole story) and returns it for the launcher's.
    fn note(&self, line: &str) -> String {
        if let Ok(mut log) = OpenOptions::new().append(true).create(true).open(&self.log) {
            let _ = writeln!(log, "--- strait local: {line}");
        }
        line.to_string()
    }
}

/// Starts `spec` with its output to `out`.
fn launch(spec: &Spec, out: File) -> anyhow::Result<Child> {
    let err = out.try_clone().context("opening a log file twice")?;
    let parent = std::process::id() as libc::pid_t;
    let mut command = Command::new(&spec.program);
    command.args(&spec.args);
    for (key, value) in &spec.env {
        command.env(key, value);
    }
    if let Some(dir) = &spec.current_dir {
        command.current_dir(dir);
    }
    if let Some(netns) = &spec.netns {
        command = strait_netns::exec::command_in(netns, &command);
    }
    // Log files, not terminals: no colour codes.
    command.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl, setpgid and getppid are.
    unsafe {
        command.pre_exec(move || {
            // A process group of its own: Ctrl-C in the terminal reaches `strait local` only, which then stops
            // the children in order (instead of them dying at once and being seen as crashes).
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The launcher may have died before prctl: then nobody would signal us.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("strait local exited while starting its children"));
            }
            Ok(())
        });
    }
    let shown = || {
        let mut text = spec.program.display().to_string();
        for arg in &spec.args {
            text.push(' ');
            text.push_str(arg);
        }
        match &spec.netns {
            Some(ns) => format!("ip netns exec {ns} {text}"),
            None => text,
        }
    };
    command.spawn().with_context(|| format!("starting {} ({})", spec.name, shown()))
}

/// The last `lines` lines of a log file, indented, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = format!("last lines of {}:", path.display());
    for line in &all[start..] {
        out.push_str("\n    ");
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_delay_up_to_the_cap() {
        let delays: Vec<Duration> = (1..=12).map(backoff).collect();
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert_eq!(delays[2], FIRST_DELAY * 4);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]), "{delays:?}");
        assert_eq!(backoff(12), MAX_DELAY);
        assert_eq!(backoff(u32::MAX), MAX_DELAY);
        assert_eq!(backoff(0), FIRST_DELAY);
    }

    fn shell(name: &str, script: &str) -> Spec {
        Spec {
            name: name.into(),
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("GREETING".into(), "hello".into())],
            netns: None,
            current_dir: None,
        }
    }

    /// Rounds of supervision until `done` says so; panics after 20 s (a bound, not a timing assertion).
    fn supervise_until(children: &mut Children, events: &mut Vec<String>, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(events) {
            assert!(Instant::now() < deadline, "supervision did not get there; events so far: {events:#?}");
            events.extend(children.supervise());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_crash_looping_child_is_restarted_with_growing_delays_and_its_log_keeps_every_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut children = Children::new(dir.path()).expect("children");
        children.start(shell("flaky", "echo \"run $GREETING\"; exit 3")).expect("start");
        let mut events = Vec::new();
        supervise_until(&mut children, &mut events, |e| e.iter().filter(|l| l.contains("exited")).count() >= 4);
        let exits: Vec<&String> = events.iter().filter(|l| l.contains("exited")).collect();
        for (i, line) in exits.iter().enumerate() {
            assert!(line.contains("exit status: 3"), "{line}");
            assert!(line.contains(&format!("restart #{}", i + 1)), "{line}");
            let delay = backoff(i as u32 + 1).as_secs_f64();
            assert!(line.ends_with(&format!("in {delay:.1} s")), "{line}");
        }
        assert!(events.iter().any(|l| l == "flaky restarted (restart #3)"), "{events:#?}");
        let log = std::fs::read_to_string(dir.path().join("flaky.log")).expect("log");
        assert!(log.matches("run hello").count() >= 4, "the log lost earlier runs:\n{log}");
        assert!(log.contains("--- strait local: flaky exited (exit status: 3)"), "{log}");
        children.stop(Duration::from_secs(1));
    }

    #[test]
    fn a_killed_child_comes_back_and_stop_ends_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut children = Children::new(dir.path()).expect("children");
        children.start(shell("sleeper", "exec sleep 60")).expect("start");
        let first = children.pid("sleeper").expect("running");
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(first as libc::pid_t, libc::SIGKILL);
        }
        let mut events = Vec::new();
        supervise_until(&mut children, &mut events, |e| e.iter().any(|l| l.contains("restarted")));
        assert!(events[0].starts_with("sleeper exited (signal: 9 (SIGKILL))"), "{events:#?}");
        let second = children.pid("sleeper").expect("running again");
        assert_ne!(first, second);
        children.stop(Duration::from_secs(1));
        // The restarted child is gone too: kill(pid, 0) fails once it is reaped.
        // SAFETY: signal 0 only checks that the process exists.
        assert_ne!(unsafe { libc::kill(second as libc::pid_t, 0) }, 0, "the restarted child survived stop()");
    }
}
