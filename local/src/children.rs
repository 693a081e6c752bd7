//! The local mesh's child processes: started from this same binary, each with its own log file, and set up to
//! die with the launcher (Linux `PR_SET_PDEATHSIG`), so even `kill -9` of `strait local` leaves nothing behind.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub struct Children {
    exe: PathBuf,
    log_dir: PathBuf,
    running: Vec<Running>,
}

struct Running {
    name: String,
    log: PathBuf,
    child: Child,
}

impl Children {
    pub fn new(log_dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this program's path to start the mesh's processes")?;
        std::fs::create_dir_all(log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        Ok(Children { exe, log_dir: log_dir.to_path_buf(), running: Vec::new() })
    }

    /// Starts `strait <args>` as the child `name`, its output appended to `<log dir>/<name>.log`.
    /// Must be called from the thread that lives as long as the launcher: the death signal is tied to the
    /// thread that started the child.
    pub fn spawn(&mut self, name: &str, args: &[String]) -> anyhow::Result<()> {
        self.start(name, None, args)
    }

    /// [`Children::spawn`] inside the network namespace `netns` (under `ip netns exec`, which execs in place:
    /// the child is still our direct child, and its death signal survives the exec).
    pub fn spawn_in(&mut self, netns: &str, name: &str, args: &[String]) -> anyhow::Result<()> {
        self.start(name, Some(netns), args)
    }

    fn start(&mut self, name: &str, netns: Option<&str>, args: &[String]) -> anyhow::Result<()> {
        let log = self.log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating the log file {}", log.display()))?;
        let err = out.try_clone().with_context(|| format!("opening {} twice", log.display()))?;
        let parent = std::process::id() as libc::pid_t;
        let mut command = Command::new(&self.exe);
        command.args(args);
        if let Some(netns) = netns {
            command = strait_netns::exec::command_in(netns, &command);
        }
        // Log files, not terminals: no colour codes.
        command.env("NO_COLOR", "1").stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: between fork and exec only async-signal-safe calls are allowed; prctl and getppid are.
        unsafe {
            command.pre_exec(move || {
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
        let child = command.spawn().with_context(|| match netns {
            Some(ns) => format!("starting {name} (ip netns exec {ns} {} {})", self.exe.display(), args.join(" ")),
            None => format!("starting {name} ({} {})", self.exe.display(), args.join(" ")),
        })?;
        self.running.push(Running { name: name.to_string(), log, child });
        Ok(())
    }

    /// The first child that has exited, with its status and the end of its log.
    pub fn exited(&mut self) -> Option<(String, ExitStatus, String)> {
        for r in &mut self.running {
            if let Ok(Some(status)) = r.child.try_wait() {
                return Some((r.name.clone(), status, log_tail(&r.log, 12)));
            }
        }
        None
    }

    pub fn log_path(&self) -> &Path {
        &self.log_dir
    }

    /// SIGTERM to every child, then SIGKILL to those still running after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        for r in &mut self.running {
            if let Ok(None) = r.child.try_wait() {
                // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
                unsafe {
                    libc::kill(r.child.id() as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + grace;
        for r in &mut self.running {
            loop {
                match r.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = r.child.kill();
                        let _ = r.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.running.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
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
