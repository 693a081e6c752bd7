//! The mesh composed by hand from its pieces (issue 21, item 6): `deploy/local/compose.sh` as the README gives
//! it, with the built `strait` binary and a copy of deploy/local moved to addresses of its own (127.N.x.x, the
//! service on port 18080), so it collides neither with other tests nor with a developer's local mesh. A request
//! flows from the client workload through node-a and node-b to a backend, and `strait control` answers on its
//! monitoring port with the push and ACK counters of both proxies.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpSocket;

const SERVICE_PORT: u16 = 18080;

/// The second octet of this test's addresses: apart from `local_mesh.rs`'s (210..=254) and per process.
fn octet() -> u8 {
    150 + (std::process::id() % 50) as u8
}

/// The running script, in a process group of its own: SIGTERM stops it and it stops its pieces; dropped
/// early (a failed assertion), the whole group is killed.
struct Composed {
    child: Child,
}

impl Drop for Composed {
    fn drop(&mut self) {
        // The group this test created (the script's pid is its group id): the script and its pieces.
        let group = -(self.child.id() as i32);
        send_signal(group, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

fn send_signal(pid: i32, signal: i32) {
    // `kill` through the command-line tool keeps this test free of unsafe code.
    let _ = Command::new("kill").arg(format!("-{signal}")).arg("--").arg(pid.to_string()).status();
}

async fn get(addr: SocketAddr, from: Option<Ipv4Addr>, path: &str) -> Option<(u16, String)> {
    let socket = TcpSocket::new_v4().ok()?;
    if let Some(ip) = from {
        socket.bind((ip, 0).into()).ok()?;
    }
    let mut stream = socket.connect(addr).await.ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

/// The sum of a metric's samples whose labels include `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_composed_from_its_pieces_serves_and_the_control_plane_reports() {
    let octet = octet();
    let ip = |c: u8, d: u8| Ipv4Addr::new(127, octet, c, d);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (config, state) = (tmp.path().join("config"), tmp.path().join("state"));
    std::fs::create_dir_all(&config).expect("config dir");
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local");
    for entry in std::fs::read_dir(&deploy).expect("deploy/local") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read");
            let moved = text
                .replace("127.0.", &format!("127.{octet}."))
                .replace("port: 8080,", &format!("port: {SERVICE_PORT},"));
            std::fs::write(config.join(path.file_name().expect("name")), moved).expect("write");
        }
    }

    let mut child = Command::new("bash")
        .arg(deploy.join("compose.sh"))
        .env("STRAIT", env!("CARGO_BIN_EXE_strait"))
        .env("CONFIG_DIR", &config)
        .env("STATE_DIR", &state)
        .env("BASE", format!("127.{octet}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .expect("run compose.sh");
    let stdout = child.stdout.take().expect("stdout");
    let composed = Composed { child };
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let up = lines.recv_timeout(Duration::from_secs(120)).unwrap_or_default();
    let logs = || {
        ["control", "node-a", "node-b"]
            .iter()
            .map(|p| {
                format!(
                    "--- {p} ---\n{}",
                    std::fs::read_to_string(state.join(format!("logs/{p}.log"))).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(up.starts_with("composed mesh is up"), "compose.sh printed {up:?}\n{}", logs());

    // The client workload (127.N.0.1, on node-a) calls the service; node-a routes, node-b authorizes and
    // hands the request to a backend, which names the caller's verified identity.
    let vip = SocketAddr::from((ip(100, 1), SERVICE_PORT));
    let (status, body) = get(vip, Some(ip(0, 1)), "/").await.expect("an answer through the mesh");
    assert_eq!(status, 200, "{body}\n{}", logs());
    let answer: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(answer["caller"], "spiffe://cluster.local/ns/demo/sa/client", "{answer}");
    assert_eq!(answer["identity"], "spiffe://cluster.local/ns/demo/sa/reviews", "{answer}");

    // `strait control` serves what `strait-control` serves on its monitoring port.
    let monitoring = SocketAddr::from((ip(0, 2), 15014));
    let (status, _) = get(monitoring, None, "/ready").await.expect("/ready");
    assert_eq!(status, 200);
    let (status, metrics) = get(monitoring, None, "/metrics").await.expect("/metrics");
    assert_eq!(status, 200);
    for node in ["node-a", "node-b"] {
        let label = format!("node=\"{node}\"");
        assert!(metric(&metrics, "strait_control_config_pushes_total", &[&label]) >= 1.0, "{metrics}");
        assert!(metric(&metrics, "strait_control_config_acks_total", &[&label, "result=\"ack\""]) >= 1.0, "{metrics}");
    }
    // Each proxy has its own metrics address.
    for node in [1, 2] {
        let (status, _) = get(SocketAddr::from((ip(node, 1), 15020)), None, "/metrics").await.expect("proxy /metrics");
        assert_eq!(status, 200);
    }

    // SIGTERM stops every piece: the addresses are free again.
    send_signal(composed.child.id() as i32, libc::SIGTERM);
    let addresses = [SocketAddr::from((ip(0, 2), 15012)), monitoring, vip, SocketAddr::from((ip(2, 2), 9080))];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !addresses.iter().all(|a| std::net::TcpListener::bind(a).is_ok()) {
        assert!(Instant::now() < deadline, "a piece kept its address after SIGTERM: {addresses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(composed);
}
