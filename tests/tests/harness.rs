//! Self-tests of the end-to-end harness: plain routing across a namespace cluster (no proxy involved),
//! capture, the test backend's modes, and cleanup (also on panic).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use anyhow::Result;
use strait_netns::Tool;
use strait_tests::backend::{self, HttpGet, HttpSummary};
use strait_tests::netns::list_netns;
use strait_tests::{connect_from, exec, listen_in, Capture, Cluster};

/// The harness's self-tests run no proxy, so unlike the mesh tests ([`strait_tests::require_root`]) they need
/// no `nft`: the cluster's tools and tcpdump for the captures.
fn require_root() -> bool {
    strait_netns::require_root_and(&[Tool::IP, Tool::SYSCTL, Tool::TCPDUMP])
}

fn two_nodes() -> Result<Cluster> {
    Cluster::builder().node("node-a", &["a1", "a2"]).node("node-b", &["b1", "b2"]).build()
}

fn remaining(tag: &str) -> Vec<String> {
    list_netns().into_iter().filter(|ns| ns.starts_with(tag)).collect()
}

#[test]
fn address_plan() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let c = two_nodes()?;
    assert_eq!(c.node("node-b").ip().to_string(), "172.30.0.2");
    assert_eq!(c.pod("a2").ip().to_string(), "10.1.0.3");
    assert_eq!(c.pod("b1").ip().to_string(), "10.2.0.2");
    assert_eq!(c.pod("b1").node(), "node-b");
    assert_eq!(c.pod("b1").ip6().to_string(), "fd00:2::2");
    assert_eq!(c.node("node-a").pod_cidr6().to_string(), "fd00:1::/64");
    let addrs = exec::run_in(c.pod("b2").netns_name(), &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
    assert!(String::from_utf8_lossy(&addrs.stdout).contains("10.2.0.3/32"));
    // Reachability without a proxy: pod to pod on the same node and across nodes, node to node, and from
    // a node to the underlay address where infrastructure processes may listen.
    let ns = |name: &str| {
        c.try_pod(name).map(|p| p.netns_name().to_owned()).unwrap_or_else(|| c.node(name).netns_name().to_owned())
    };
    let paths = [
        (ns("a1"), ns("a2"), SocketAddr::new(c.pod("a2").ip().into(), 9000)),
        (ns("a1"), ns("b2"), SocketAddr::new(c.pod("b2").ip().into(), 9000)),
        (ns("node-a"), ns("node-b"), SocketAddr::new(c.node("node-b").ip().into(), 9000)),
        (ns("node-b"), c.underlay_netns().to_owned(), SocketAddr::new(strait_tests::netns::UNDERLAY_IP.into(), 9000)),
        // IPv6: same node, across nodes, node to node.
        (ns("a1"), ns("a2"), SocketAddr::new(c.pod("a2").ip6().into(), 9000)),
        (ns("a2"), ns("b1"), SocketAddr::new(c.pod("b1").ip6().into(), 9000)),
        (ns("node-a"), ns("node-b"), SocketAddr::new(c.node("node-b").ip6().into(), 9000)),
    ];
    for (from, to, addr) in paths {
        let listener = listen_in(&to, addr)?;
        let stream = connect_from(&from, addr)?;
        let (_accepted, peer) = listener.accept()?;
        assert_eq!(peer, stream.local_addr()?, "{from} -> {to}: no NAT on the way");
    }
    Ok(())
}

#[test]
fn tcp_echo_crosses_nodes_and_capture_sees_it() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let c = two_nodes()?;
    let b1 = c.pod("b1");
    let echo = backend::tcp_echo(b1.netns_name(), SocketAddr::new(b1.ip().into(), 7000))?;
    let node_a = c.node("node-a");
    let capture = Capture::start(node_a.netns_name(), node_a.uplink(), "tcp")?;

    let report = backend::tcp_send(c.pod("a1").netns_name(), echo.addr, 300_000, "PLAINTEXT-MARKER-42")?;
    assert!(report.echoed, "echo mismatch: {report:?}");
    assert_eq!(report.sent, 300_000 + "PLAINTEXT-MARKER-42".len() as u64);

    let captured = capture.stop()?;
    assert!(captured.packet_count() > 10, "only {} packets captured", captured.packet_count());
    assert!(captured.contains(b"PLAINTEXT-MARKER-42"), "marker not in the capture of the node link");
    Ok(())
}

#[test]
fn sockets_made_in_namespaces_half_close() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let c = two_nodes()?;
    let b2 = c.pod("b2");
    let listener = listen_in(b2.netns_name(), SocketAddr::new(b2.ip().into(), 7001))?;
    let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut s, _) = listener.accept()?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        // Still writable after the client's half-close.
        s.write_all(b"bye")?;
        Ok(got)
    });
    let mut client = connect_from(c.pod("a2").netns_name(), SocketAddr::new(b2.ip().into(), 7001))?;
    assert_eq!(client.peer_addr()?.ip(), b2.ip());
    assert_eq!(client.local_addr()?.ip(), c.pod("a2").ip());
    client.write_all(b"hello")?;
    client.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    client.read_to_end(&mut reply)?;
    assert_eq!(reply, b"bye");
    assert_eq!(server.join().expect("server thread")?, b"hello");
    Ok(())
}

#[test]
fn tcp_sink_reports_count_and_digest() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let c = two_nodes()?;
    let b1 = c.pod("b1");
    let sink = backend::tcp_sink(b1.netns_name(), SocketAddr::new(b1.ip().into(), 7002))?;
    let report = backend::tcp_send(c.pod("a2").netns_name(), sink.addr, 1_000_000, "m")?;
    let reply = report.sink_reply()?;
    assert_eq!(reply.bytes, report.sent);
    assert_eq!(reply.sha256, report.sent_sha256);

    // Nobody listens on b2:7002: the client's failure comes back as a value.
    let refused = backend::try_tcp_send(c.pod("a2").netns_name(), (c.pod("b2").ip(), 7002).into(), 10, "x")?;
    assert!(refused.as_ref().is_err_and(|e| e.contains("refused")), "{refused:?}");
    Ok(())
}

#[test]
fn http_backend_across_nodes() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let c = two_nodes()?;
    let b1 = c.pod("b1");
    let _http = backend::http(b1.netns_name(), SocketAddr::new(b1.ip().into(), 8080), "reviews-b1", "v2")?;
    let a1 = c.pod("a1").netns_name();
    let base = format!("http://{}:8080", b1.ip());

    let r = backend::single(backend::http_get(a1, &HttpGet::new(format!("{base}/hello")).header("x-user", "u1"))?)?;
    assert_eq!(r.status, Some(200), "{r:?}");
    assert_eq!(r.name(), Some("reviews-b1"));
    assert_eq!(r.version(), Some("v2"));
    assert_eq!(r.body["path"], "/hello");
    assert_eq!(r.request_header("x-user"), Some("u1"));
    assert!(r.body["peer"].as_str().unwrap_or("").starts_with("10.1.0.2:"), "{r:?}");

    let h2 = backend::single(backend::http_get(a1, &HttpGet::new(format!("{base}/status/418")).http2())?)?;
    assert_eq!(h2.status, Some(418));
    assert_eq!(h2.body["protocol"], "HTTP/2.0");

    let all_fail = backend::http_get(a1, &HttpGet::new(&base).count(5).header("x-backend-fail-percent", "100"))?;
    assert_eq!(HttpSummary::of(&all_fail).by_status.get("503"), Some(&5));

    let reset = backend::single(backend::http_get(a1, &HttpGet::new(format!("{base}/reset")))?)?;
    assert!(reset.status.is_none() && reset.error.is_some(), "{reset:?}");

    let hang = HttpGet::new(format!("{base}/hang")).timeout(Duration::from_millis(300));
    let hang = backend::single(backend::http_get(a1, &hang)?)?;
    assert!(hang.error.as_deref().unwrap_or("").contains("timed out"), "{hang:?}");

    let bytes = backend::single(backend::http_get(a1, &HttpGet::new(format!("{base}/bytes/100000")))?)?;
    assert_eq!(bytes.body_len, 100_000);

    let mut echo = HttpGet::new(format!("{base}/echo"));
    echo.method = Some("POST".into());
    echo.body = Some("ping-body".into());
    assert_eq!(backend::single(backend::http_get(a1, &echo)?)?.body, "ping-body");
    Ok(())
}

#[test]
fn drop_removes_namespaces_and_processes() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let c = two_nodes()?;
    let tag = c.tag().to_owned();
    assert_eq!(remaining(&tag).len(), 7, "underlay + 2 nodes + 4 pods");
    // A process started without a guard-holder still dies with the cluster.
    let b1 = c.pod("b1");
    let echo = backend::tcp_echo(b1.netns_name(), SocketAddr::new(b1.ip().into(), 7003))?;
    let pid = echo.child.id();
    std::mem::forget(echo);
    drop(c);
    assert!(remaining(&tag).is_empty(), "left behind: {:?}", remaining(&tag));
    std::thread::sleep(Duration::from_millis(50));
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Gone, or a zombie waiting for the leaked guard's reap.
    assert!(state.is_empty() || state.contains(") Z "), "backend {pid} still running: {state}");
    Ok(())
}

#[test]
fn panic_while_holding_a_cluster_still_cleans_up() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let result = std::panic::catch_unwind(move || {
        let c = two_nodes().expect("cluster");
        tx.send(c.tag().to_owned()).expect("send tag");
        let _server =
            backend::tcp_echo(c.pod("a1").netns_name(), SocketAddr::new(c.pod("a1").ip().into(), 7004)).expect("echo");
        panic!("deliberate panic while holding a cluster");
    });
    assert!(result.is_err());
    let tag = rx.recv()?;
    assert!(remaining(&tag).is_empty(), "left behind: {:?}", remaining(&tag));
    Ok(())
}
