//! Helpers of the loopback local-mesh tests that watch `strait local` itself (its log lines on stderr, its
//! children by process id): a layout of 127.N.x.x addresses per test, distinct from local_mesh.rs's, a copy of
//! a configuration directory moved to it, and the running launcher.
#![allow(dead_code)] // Each test file uses its own part of these helpers.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;

use crate::common;

/// The demo's service port, moved from 8080 so that no privileges are needed.
pub const SERVICE_PORT: u16 = 18080;

#[derive(Clone)]
pub struct Layout {
    pub octet: u8,
}

impl Layout {
    /// The layout of test number `test` (unique across these files): 127.150-199.x.x, apart from
    /// local_mesh.rs's 127.210-253.x.x.
    pub fn new(test: u8) -> Layout {
        assert!(test < 5);
        Layout { octet: 150 + (std::process::id() % 10) as u8 * 5 + test }
    }
    pub fn ip(&self, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.octet, c, d)
    }
    pub fn client(&self) -> Ipv4Addr {
        self.ip(0, 1)
    }
    pub fn vip(&self) -> SocketAddr {
        (self.ip(100, 1), SERVICE_PORT).into()
    }
    pub fn admin(&self, node: u8) -> SocketAddr {
        (self.ip(node, 1), 15000).into()
    }
    pub fn base_ip(&self) -> String {
        format!("127.{}", self.octet)
    }
    /// A configuration file's text with this layout's addresses.
    pub fn rewrite(&self, text: &str) -> String {
        text.replace("127.0.", &format!("127.{}.", self.octet))
            .replace("port: 8080,", &format!("port: {SERVICE_PORT},"))
    }

    /// Copies deploy/local's YAML files into `dir` with this layout's addresses, leaving out `skip`.
    pub fn copy_config(&self, dir: &Path, skip: &[&str]) {
        self.copy_dir(&repo().join("deploy/local"), dir, skip);
    }

    /// Copies the YAML files of `from` into `dir` with this layout's addresses, leaving out `skip`.
    pub fn copy_dir(&self, from: &Path, dir: &Path, skip: &[&str]) {
        std::fs::create_dir_all(dir).expect("create the config dir");
        for entry in std::fs::read_dir(from).expect("read the config dir") {
            let entry = entry.expect("read the config dir");
            let name = entry.file_name().to_string_lossy().into_owned();
            if skip.contains(&name.as_str()) || !name.ends_with(".yaml") {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).expect("read a config file");
            std::fs::write(dir.join(&name), self.rewrite(&text)).expect("write the config copy");
        }
    }
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running `strait local`, its stdout (the banner) and stderr (its log) read on threads; SIGKILLed (its
/// children die with it) when dropped.
pub struct Mesh {
    pub child: Child,
    pub banner: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn strait_local(layout: &Layout, config: &Path, state: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
    cmd.arg("local").arg("--config-dir").arg(config).arg("--state-dir").arg(state).args([
        "--base-ip",
        &layout.base_ip(),
        "--start-timeout",
        "90",
    ]);
    cmd
}

impl Mesh {
    pub fn start(layout: &Layout, config: &Path, state: &Path) -> Mesh {
        Mesh::start_command(strait_local(layout, config, state))
    }

    /// Starts `cmd` (a `strait local` command line) and waits for its banner.
    pub fn start_command(mut cmd: Command) -> Mesh {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start strait local");
        let lines = common::lines_of(child.stdout.take().expect("stdout"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[strait local] {line}");
                sink.lock().expect("stderr lines").push(line);
            }
        });
        let mut mesh = Mesh { child, banner: String::new(), stderr };
        if !common::read_banner(&lines, &mut mesh.banner) {
            panic!(
                "strait local did not come up ({:?}); printed:\n{}\n{}",
                mesh.child.try_wait(),
                mesh.banner,
                mesh.events().join("\n")
            );
        }
        // Keep draining stdout so the launcher never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        mesh
    }

    /// What the launcher logged on stderr so far.
    pub fn events(&self) -> Vec<String> {
        self.stderr.lock().expect("stderr lines").clone()
    }

    /// Waits until the launcher logged a line containing `text`.
    pub fn wait_event(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.events().iter().any(|l| l.contains(text)) {
            assert!(Instant::now() < deadline, "no log line {text:?} within {within:?}:\n{}", self.events().join("\n"));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id of the launcher's running child `name`: the control plane (`control`), a node proxy
    /// (its node's name), a demo backend or a workload's own process (the workload's name).
    pub fn child_pid(&self, name: &str) -> Option<u32> {
        let parent = self.child.id();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // The command name may hold spaces and parentheses: the fields after it start past the last ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.first() == Some(&"Z") || fields.get(1).and_then(|p| p.parse::<u32>().ok()) != Some(parent) {
                continue;
            }
            let args: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let follows = |flag: &str| args.windows(2).any(|w| w[0] == flag && w[1] == name);
            let workload = environ.split(|b| *b == 0).any(|v| v == format!("STRAIT_WORKLOAD={name}").as_bytes());
            let control = name == "control" && args.get(1).map(String::as_str) == Some("control");
            if control || follows("--node") || follows("--name") || workload {
                return Some(pid);
            }
        }
        None
    }

    /// SIGTERM (what Ctrl-C amounts to): the launcher exits successfully and the service address is free.
    pub fn stop_and_check(mut self, layout: &Layout, _state: &Path) {
        let pid = self.child.id();
        assert!(Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill").success());
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "strait local did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "strait local exited with {status} on SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpListener::bind(layout.admin(1)).is_err() {
            assert!(Instant::now() < deadline, "node-a's admin address is still taken after the stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One HTTP/1.1 request from the client workload's address to the demo service, on its own connection.
pub async fn request(layout: &Layout, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind((layout.client(), 0).into())?;
    let mut stream = socket.connect(layout.vip()).await?;
    let head = format!("{method} {path} HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await??;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {:?}", String::from_utf8_lossy(&raw))))
}

pub fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}

/// A plain GET to `addr` (admin endpoints); `None` when nothing answers.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await.ok()?.ok()?;
    parse_response(&raw)
}
