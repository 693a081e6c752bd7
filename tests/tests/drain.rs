//! The node proxy's lifecycle end to end: SIGTERM drains (in-flight work finishes, new connections go
//! elsewhere, the process exits within its grace period) and a proxy replaced by a second one on the same node
//! (SO_REUSEPORT) loses no request. Two nodes; the client is pod a1 on node-a; `reviews` (HTTP) on b1 and b2,
//! `echo` (TCP) on b1, both on node-b (see `strait_tests::mesh_http`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use strait_tests::backend::{self, HttpGet};
use strait_tests::mesh::{ECHO_PORT, ECHO_VIP};
use strait_tests::mesh_http::{HttpMesh, REVIEWS_VIP};
use strait_tests::{exec, require_root, Capture};

fn echo_vip() -> SocketAddr {
    SocketAddr::new(ECHO_VIP.parse().expect("constant"), ECHO_PORT)
}

/// Writes `message` on `stream` and reads the echo back.
fn exchange(stream: &mut std::net::TcpStream, message: &[u8]) -> Result<()> {
    stream.write_all(message)?;
    let mut back = vec![0u8; message.len()];
    stream.read_exact(&mut back)?;
    ensure!(back == message, "echoed {:?}, not {:?}", String::from_utf8_lossy(&back), String::from_utf8_lossy(message));
    Ok(())
}

/// One short echo exchange on a new connection, with 2 s bounds: false if it is refused, dropped or reset.
fn new_connection_served(netns: &str, addr: SocketAddr) -> bool {
    let attempt = || -> Result<()> {
        let mut stream = exec::connect_from_timeout(netns, addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        exchange(&mut stream, b"new-connection")
    };
    attempt().is_ok()
}

/// SIGTERM on node-a's proxy (the source side: the pod's HTTP connection and its L4 connections are served
/// there): not ready at once, no new connection accepted, the HTTP request in flight completes with
/// `Connection: close`, an L4 stream in flight keeps flowing until the client ends it, and a stream left open
/// is closed when the grace period ends, after which the proxy exits 0.
#[test]
fn sigterm_drains_in_flight_work_refuses_new_connections_and_exits_within_grace() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let grace = Duration::from_secs(6);
    let mut mesh = HttpMesh::start_with_grace(&[], &[], |_| {}, Some(grace))?;
    let b1 = mesh.mesh.cluster.pod("b1");
    let _echo = backend::tcp_echo(b1.netns_name(), SocketAddr::new(b1.ip().into(), ECHO_PORT))?;
    let client = mesh.client().to_string();

    // Two L4 streams through node-a: `finishing` ends during the drain, `lingering` is left open past the grace.
    let mut finishing = exec::connect_from(&client, echo_vip())?;
    finishing.set_read_timeout(Some(Duration::from_secs(5)))?;
    exchange(&mut finishing, b"before")?;
    let mut lingering = exec::connect_from(&client, echo_vip())?;
    lingering.set_read_timeout(Some(grace + Duration::from_secs(20)))?;
    exchange(&mut lingering, b"before")?;
    // An HTTP request that takes 3 s at the backend.
    let long = {
        let client = client.clone();
        std::thread::spawn(move || {
            let get = HttpGet::new(format!("http://{REVIEWS_VIP}/delay/3000")).timeout(Duration::from_secs(20));
            backend::http_get(&client, &get)
        })
    };
    // Generous: the request is through node-a's proxy and waiting at the backend well within this.
    std::thread::sleep(Duration::from_millis(1000));

    let mut draining = mesh.mesh.drain_proxy("node-a")?;
    let signaled = Instant::now();

    // Not ready as soon as the signal is handled (the admin port no longer answers, or answers 503), and never
    // ready again. The signal is asynchronous: a probe sent in the same instant may still see the old answer.
    let mut after_signal: Vec<Option<u16>> = Vec::new();
    while signaled.elapsed() < Duration::from_millis(1000) {
        after_signal.push(mesh.mesh.admin_request("node-a", 15000, "GET", "/ready").ok().map(|r| r.status));
        std::thread::sleep(Duration::from_millis(50));
    }
    let unready = after_signal.iter().position(|s| *s != Some(200));
    ensure!(unready.is_some(), "still ready 1 s after SIGTERM: {after_signal:?}");
    let unready = unready.unwrap_or_default();
    ensure!(!after_signal[unready..].contains(&Some(200)), "ready again while draining: {after_signal:?}");

    // The L4 stream in flight keeps flowing; new connections are not taken.
    exchange(&mut finishing, b"during the drain")?;
    ensure!(!new_connection_served(&client, echo_vip()), "a new connection was served by the draining proxy");
    exchange(&mut finishing, b"still flowing")?;
    finishing.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    finishing.read_to_end(&mut rest)?;
    ensure!(rest.is_empty(), "unexpected bytes after the half-close: {rest:?}");

    // The HTTP request in flight completes, and the pod is told to reconnect.
    let long = backend::single(long.join().map_err(|_| anyhow::anyhow!("the HTTP client thread panicked"))??)?;
    ensure!(long.status == Some(200), "the request in flight failed: {long:?}\n{}", draining.logs());
    ensure!(
        long.headers.get("connection").map(String::as_str) == Some("close"),
        "no `Connection: close` on a response sent while draining: {:?}",
        long.headers
    );

    // The lingering stream holds the drain until the grace ends; then it is closed and the proxy exits 0.
    let (status, drain_time) = draining.wait_exit(grace + Duration::from_secs(15))?;
    ensure!(status.success(), "the drained proxy exited with {status}; its log:\n{}", draining.logs());
    ensure!(draining.logs().contains("drain grace period over"), "{}", draining.logs());
    let mut buf = [0u8; 16];
    let after = lingering.read(&mut buf);
    ensure!(matches!(after, Ok(0) | Err(_)), "the lingering stream still open after the exit: {after:?}");
    println!("drain with a stream left open: exit 0 after {drain_time:?} (grace {grace:?})");
    Ok(())
}

/// What the load generator saw, per kind of traffic.
#[derive(Clone, Debug, Default)]
struct Counts {
    sent: u64,
    failed: u64,
    /// The first few failures, for the assertion message.
    errors: Vec<String>,
}

impl Counts {
    fn record(&mut self, result: Result<()>) {
        self.sent += 1;
        if let Err(e) = result {
            self.failed += 1;
            if self.errors.len() < 10 {
                self.errors.push(format!("{e:#}"));
            }
        }
    }

    fn since(&self, before: &Counts) -> (u64, u64) {
        (self.sent - before.sent, self.failed - before.failed)
    }
}

#[derive(Clone, Debug, Default)]
struct Load {
    /// A new HTTP/1.1 connection per request (`Connection: close`).
    http_fresh: Counts,
    /// HTTP/1.1 keep-alive: one connection reused until the proxy says `Connection: close`.
    http_keepalive: Counts,
    /// A new TCP connection per exchange, to the `echo` service (L4 through the tunnel).
    tcp_fresh: Counts,
}

/// Reads one HTTP/1.1 response (status line, headers, a `Content-Length` or chunked body); returns the status
/// and whether the server asked to close the connection.
fn read_response(stream: &mut std::io::BufReader<std::net::TcpStream>) -> Result<(u16, bool)> {
    use std::io::BufRead;
    let mut line = String::new();
    ensure!(stream.read_line(&mut line)? > 0, "connection closed before a response");
    let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no status line")?;
    let (mut length, mut chunked, mut close) = (0usize, false, false);
    loop {
        line.clear();
        stream.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').context("a malformed header")?;
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
        match name.as_str() {
            "content-length" => length = value.parse()?,
            "transfer-encoding" => chunked = value.contains("chunked"),
            "connection" => close = value.contains("close"),
            _ => {}
        }
    }
    if chunked {
        loop {
            line.clear();
            stream.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)?;
            let mut chunk = vec![0u8; size + 2];
            stream.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
        }
    } else {
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body)?;
    }
    Ok((status, close))
}

fn http_request(path: &str, close: bool) -> String {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nhost: reviews\r\nconnection: {connection}\r\n\r\n")
}

/// Runs the three kinds of traffic from `netns`, each one request every `pace`, until `stop`.
fn generate_load(
    netns: String,
    pace: Duration,
    stop: Arc<AtomicBool>,
    load: Arc<Mutex<Load>>,
) -> Vec<std::thread::JoinHandle<()>> {
    let reviews: SocketAddr = SocketAddr::new(REVIEWS_VIP.parse().expect("constant"), 80);
    let timeout = Duration::from_secs(10);
    let connect = move |netns: &str, addr| -> Result<std::net::TcpStream> {
        let stream = exec::connect_from_timeout(netns, addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        Ok(stream)
    };
    let mut threads = Vec::new();
    {
        let (netns, stop, load) = (netns.clone(), stop.clone(), load.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let result = (|| -> Result<()> {
                    let mut stream = connect(&netns, reviews)?;
                    stream.write_all(http_request("/fresh", true).as_bytes())?;
                    let (status, _) = read_response(&mut std::io::BufReader::new(stream))?;
                    ensure!(status == 200, "status {status}");
                    Ok(())
                })();
                load.lock().unwrap_or_else(|e| e.into_inner()).http_fresh.record(result);
                std::thread::sleep(pace);
            }
        }));
    }
    {
        let (netns, stop, load) = (netns.clone(), stop.clone(), load.clone());
        threads.push(std::thread::spawn(move || {
            let mut connection: Option<std::io::BufReader<std::net::TcpStream>> = None;
            while !stop.load(Ordering::Relaxed) {
                let result = (|| -> Result<()> {
                    let reader = match connection.as_mut() {
                        Some(reader) => reader,
                        None => connection.insert(std::io::BufReader::new(connect(&netns, reviews)?)),
                    };
                    reader.get_mut().write_all(http_request("/keepalive", false).as_bytes())?;
                    let (status, close) = read_response(reader)?;
                    if close {
                        // As any HTTP/1.1 client does: no further request on a connection the server closes.
                        connection = None;
                    }
                    ensure!(status == 200, "status {status}");
                    Ok(())
                })();
                if result.is_err() {
                    connection = None;
                }
                load.lock().unwrap_or_else(|e| e.into_inner()).http_keepalive.record(result);
                std::thread::sleep(pace);
            }
        }));
    }
    threads.push(std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let result = (|| -> Result<()> {
                let mut stream = connect(&netns, echo_vip())?;
                exchange(&mut stream, b"steady load")?;
                stream.shutdown(Shutdown::Write)?;
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest)?;
                ensure!(rest.is_empty(), "bytes after the echo");
                Ok(())
            })();
            load.lock().unwrap_or_else(|e| e.into_inner()).tcp_fresh.record(result);
            std::thread::sleep(pace);
        }
    }));
    threads
}

/// Under a steady load of new connections and keep-alive requests (HTTP and TCP) from a1, node-a's proxy, then
/// node-b's, then node-a's again are replaced as a DaemonSet rolling update with surge does it: the new proxy
/// starts beside the old one on the same ports (SO_REUSEPORT), becomes ready, and the old one is sent SIGTERM
/// and drains. No request fails, nothing crosses the node-to-node link in plaintext (a capture on node-a's
/// uplink for the whole run), and every old proxy exits 0 well within its grace.
#[test]
fn replacing_node_proxies_under_load_loses_no_request() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let grace = Duration::from_secs(20);
    let mut mesh = HttpMesh::start_with_grace(&[], &[], |_| {}, Some(grace))?;
    let b1 = mesh.mesh.cluster.pod("b1");
    let _echo = backend::tcp_echo(b1.netns_name(), SocketAddr::new(b1.ip().into(), ECHO_PORT))?;

    // The node-to-node link, for the whole run: every byte between the nodes must be inside the mTLS tunnel.
    let node_a = mesh.mesh.cluster.node("node-a");
    let link = Capture::start(node_a.netns_name(), node_a.uplink(), "tcp")?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Mutex::new(Load::default()));
    let threads = generate_load(mesh.client().to_string(), Duration::from_millis(10), stop.clone(), load.clone());
    let snapshot = || load.lock().unwrap_or_else(|e| e.into_inner()).clone();
    std::thread::sleep(Duration::from_secs(1));

    let mut report = Vec::new();
    let mut outcome = Ok(());
    for node in ["node-a", "node-b", "node-a"] {
        let before = snapshot();
        let started = Instant::now();
        let replaced = mesh.mesh.replace_proxy(node).and_then(|mut old| {
            let exit = old.wait_exit(grace + Duration::from_secs(15))?;
            Ok((old, exit))
        });
        let ((status, drain_time), old) = match replaced {
            Ok((old, exit)) => (exit, old),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        };
        let drain_lines: Vec<String> = old
            .logs()
            .lines()
            .filter(|l| ["drain", "GOAWAY", "listener closed", "replacement"].iter().any(|w| l.contains(w)))
            .map(String::from)
            .collect();
        println!("{node} (old pid {}):\n{}", old.pid(), drain_lines.join("\n"));
        // Keep the load on a moment past the exit, so connections that moved are seen working.
        std::thread::sleep(Duration::from_millis(500));
        let after = snapshot();
        report.push(format!(
            "{node}: replaced in {:?} (old pid {} drained in {drain_time:?}, {status}); http fresh {:?}, http keep-alive {:?}, tcp fresh {:?} (sent, failed)",
            started.elapsed(),
            old.pid(),
            after.http_fresh.since(&before.http_fresh),
            after.http_keepalive.since(&before.http_keepalive),
            after.tcp_fresh.since(&before.tcp_fresh),
        ));
        if !status.success() {
            outcome = Err(anyhow::anyhow!("the old proxy on {node} exited with {status}; its log:\n{}", old.logs()));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    let total = snapshot();
    println!("{}", report.join("\n"));
    println!(
        "total: http fresh {}/{} failed, http keep-alive {}/{} failed, tcp fresh {}/{} failed",
        total.http_fresh.failed,
        total.http_fresh.sent,
        total.http_keepalive.failed,
        total.http_keepalive.sent,
        total.tcp_fresh.failed,
        total.tcp_fresh.sent
    );
    let link = link.stop()?;
    outcome?;
    for plaintext in [&b"steady load"[..], b"GET /fresh", b"GET /keepalive", b"HTTP/1.1 200"] {
        ensure!(
            !link.contains(plaintext),
            "{:?} crossed the node-to-node link in plaintext during the rollouts",
            String::from_utf8_lossy(plaintext)
        );
    }
    ensure!(link.packet_count() > 100, "the capture saw only {} packets", link.packet_count());
    for (kind, counts) in
        [("http fresh", &total.http_fresh), ("http keep-alive", &total.http_keepalive), ("tcp fresh", &total.tcp_fresh)]
    {
        ensure!(counts.sent >= 50, "{kind}: only {} requests sent", counts.sent);
        ensure!(
            counts.failed == 0,
            "{kind}: {} of {} failed: {:?}\n{}\n{}",
            counts.failed,
            counts.sent,
            counts.errors,
            report.join("\n"),
            mesh.logs()
        );
    }
    Ok(())
}

/// A pod being deleted leaves its services' endpoints first (the EndpointSlice update), while its requests are
/// still in flight: here b1 leaves `reviews` (HTTP) and `echo` (TCP) in a configuration change while a 3 s
/// request is at b1 and an L4 stream to b1 is open. The request completes 200, the stream keeps flowing, and
/// every new request goes to b2; b1 sees none.
#[test]
fn an_endpoint_leaving_its_services_finishes_what_is_in_flight_and_gets_nothing_new() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let only = |config: &mut strait_api::MeshConfig, service: &str, pods: &[&str]| {
        let addresses: Vec<std::net::IpAddr> =
            config.workloads.iter().filter(|w| pods.contains(&w.name.as_str())).map(|w| w.address).collect();
        for s in config.services.iter_mut().filter(|s| s.name == service) {
            s.endpoints = addresses.iter().map(|a| strait_api::Endpoint { address: *a, ready: true }).collect();
        }
    };
    let mesh = HttpMesh::start_with_grace(&[], &[], |config| only(config, "reviews", &["b1"]), None)?;
    let b1 = mesh.mesh.cluster.pod("b1");
    let _echo = backend::tcp_echo(b1.netns_name(), SocketAddr::new(b1.ip().into(), ECHO_PORT))?;
    let client = mesh.client().to_string();

    let mut stream = exec::connect_from(&client, echo_vip())?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    exchange(&mut stream, b"before")?;
    let slow = {
        let client = client.clone();
        std::thread::spawn(move || {
            let get = HttpGet::new(format!("http://{REVIEWS_VIP}/delay/3000")).timeout(Duration::from_secs(20));
            backend::http_get(&client, &get)
        })
    };
    // Generous: the request is waiting at b1 well within this.
    std::thread::sleep(Duration::from_millis(1000));
    let (b1_before, b2_before) = (mesh.backend_requests("b1")?, mesh.backend_requests("b2")?);
    ensure!(b1_before == 1 && b2_before == 0, "the slow request is not (only) at b1: b1 {b1_before}, b2 {b2_before}");

    // b1 leaves both services; the workload itself stays (the pod is still terminating).
    let mut config = strait_tests::mesh_http::config(&mesh.mesh.cluster);
    only(&mut config, "reviews", &["b2"]);
    only(&mut config, "echo", &[]);
    mesh.mesh.update_config(&config)?;

    exchange(&mut stream, b"after b1 left the echo service")?;
    let new = mesh.get(&HttpGet::new(format!("http://{REVIEWS_VIP}/new")).count(10))?;
    ensure!(new.iter().all(|r| r.status == Some(200)), "new requests failed: {new:?}\n{}", mesh.logs());
    let slow = backend::single(slow.join().map_err(|_| anyhow::anyhow!("the client thread panicked"))??)?;
    ensure!(slow.status == Some(200), "the request in flight at b1 failed: {slow:?}\n{}", mesh.logs());
    exchange(&mut stream, b"still flowing")?;
    let (b1_after, b2_after) = (mesh.backend_requests("b1")?, mesh.backend_requests("b2")?);
    ensure!(b1_after == b1_before, "b1 got {} new requests after leaving the service", b1_after - b1_before);
    ensure!(b2_after - b2_before == 10, "b2 got {} of the 10 new requests", b2_after - b2_before);
    Ok(())
}
