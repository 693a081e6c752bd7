//! The peer users compare a mesh with: an HAProxy pair doing the same work as the two node proxies, in the
//! direct cluster (no capture rules there). The client side (node-a) takes the pod's plain HTTP and originates
//! mutual TLS 1.3 to the server side (node-b) with a client certificate from the mesh CA, HTTP/2 between the
//! two as the Strait tunnel; the server side verifies it and forwards to pod b1. HTTP mode, one thread each
//! (one Strait worker is the comparable unit on this machine), no logging (Strait's access log is off by
//! default too). The pod addresses the client side explicitly (its node's pod gateway): HAProxy has no
//! transparent capture here, which spares it the TPROXY rules' cost.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use strait_certs::{Identity, MeshCa};
use strait_tests::exec::{self, ChildGuard};
use strait_tests::Cluster;

use crate::HTTP_PORT;

/// HTTP/1.1 from the pod to the client side.
pub const FRONT_PORT: u16 = 18080;
/// HTTP/2 (h2c, prior knowledge) from the pod to the client side.
pub const FRONT_H2_PORT: u16 = 18082;
/// Idle connections HAProxy can hold with its `maxconn` (the idle figure opens fewer to it).
pub const MAX_IDLE: usize = 8000;
/// Mutual TLS between the two sides.
const PEER_PORT: u16 = 18443;

pub struct Pair {
    /// Client side (node-a), server side (node-b).
    processes: Vec<ChildGuard>,
    /// Where pod a1 sends its requests.
    pub front: SocketAddr,
    pub front_h2: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Pair {
    /// Starts both sides; `None` (with the reason printed) when `haproxy` is not installed and cannot be.
    pub fn start(cluster: &Cluster, ca: &MeshCa) -> Result<Option<Pair>> {
        if !installed() {
            println!("  HAProxy: not installed ({}); its columns are skipped", install_hint());
            return Ok(None);
        }
        let dir = tempfile::tempdir()?;
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca.root_pem())?;
        for (name, sa) in [("client", "haproxy-client"), ("server", "haproxy-server")] {
            let identity = Identity::new(ca.trust_domain(), "bench", sa)?;
            let cert = ca.issue(&identity, Duration::from_secs(24 * 3600))?;
            strait_certs::write_private_file(
                &path(&format!("{name}.pem")),
                format!("{}{}", cert.chain_pem(), cert.key_pem()).as_bytes(),
            )?;
        }
        let node_a = cluster.node("node-a");
        let node_b = cluster.node("node-b");
        let b1 = SocketAddr::new(cluster.pod("b1").ip().into(), HTTP_PORT);
        let peer = SocketAddr::new(node_b.ip().into(), PEER_PORT);
        std::fs::write(path("client.cfg"), client_config(dir.path(), peer))?;
        std::fs::write(path("server.cfg"), server_config(dir.path(), b1))?;
        let client = spawn(node_a.netns_name(), &path("client.cfg"))?;
        let server = spawn(node_b.netns_name(), &path("server.cfg"))?;
        let gateway: IpAddr = node_a.pod_gateway().into();
        let pair = Pair {
            processes: vec![client, server],
            front: SocketAddr::new(gateway, FRONT_PORT),
            front_h2: SocketAddr::new(gateway, FRONT_H2_PORT),
            _dir: dir,
        };
        pair.wait_serving(cluster.pod("a1").netns_name())?;
        Ok(Some(pair))
    }

    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(ChildGuard::id).collect()
    }

    /// Until a GET from the pod through both sides is answered 200 (10 s at most).
    fn wait_serving(&self, pod_netns: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = one_get(pod_netns, self.front);
            match answer {
                Ok(ref status) if status.starts_with("HTTP/1.1 200") => return Ok(()),
                _ if Instant::now() > deadline => {
                    let logs: Vec<String> = self.processes.iter().map(|p| p.stderr()).collect();
                    bail!("the HAProxy pair does not serve ({answer:?}); its output:\n{}", logs.join("\n"))
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

fn installed() -> bool {
    Command::new("haproxy").arg("-v").output().is_ok_and(|o| o.status.success()) || try_install()
}

/// Installs the OS package when the benchmark may (`STRAIT_BENCH_INSTALL=1`, or unset outside the smoke mode).
fn try_install() -> bool {
    if std::env::var("STRAIT_BENCH_INSTALL").is_ok_and(|v| v == "0") {
        return false;
    }
    println!("  HAProxy: installing the OS package (apt-get install haproxy)");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "haproxy"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .is_ok_and(|o| o.status.success());
    ok && Command::new("haproxy").arg("-v").output().is_ok_and(|o| o.status.success())
}

fn install_hint() -> &'static str {
    "apt-get install haproxy"
}

fn spawn(netns: &str, config: &Path) -> Result<ChildGuard> {
    let mut cmd = Command::new("haproxy");
    // -db: foreground, no daemon, so the guard owns the process that does the work.
    cmd.arg("-db").arg("-f").arg(config);
    exec::spawn_in(netns, cmd).context("starting haproxy")
}

const COMMON: &str = "\
global
    nbthread 1
    # HAProxy refuses to start when the descriptor limit (20,000 here) is below what maxconn needs (two per
    # connection and some).
    maxconn 9000
defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 300s
    timeout http-keep-alive 300s
";

fn client_config(dir: &Path, peer: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "{COMMON}\
frontend pods
    bind 0.0.0.0:{FRONT_PORT}
    bind 0.0.0.0:{FRONT_H2_PORT} proto h2
    default_backend peer
backend peer
    http-reuse always
    server node-b {peer} ssl crt {d}/client.pem ca-file {d}/ca.pem verify required ssl-min-ver TLSv1.3 alpn h2
"
    )
}

fn server_config(dir: &Path, pod: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "{COMMON}\
frontend peers
    bind 0.0.0.0:{PEER_PORT} ssl crt {d}/server.pem ca-file {d}/ca.pem verify required ssl-min-ver TLSv1.3 alpn h2
    default_backend pod
backend pod
    http-reuse always
    server b1 {pod}
"
    )
}

/// One `GET /` with `Connection: close` from `netns`; the status line.
fn one_get(netns: &str, target: SocketAddr) -> Result<String> {
    let mut stream = exec::connect_from_timeout(netns, target, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}
