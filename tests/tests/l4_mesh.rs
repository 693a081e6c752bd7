//! The L4 data path end to end: two nodes, two pods each, a real `strait-proxy` per node installing its own
//! nftables rules, real mTLS tunnels between nodes, real clients and servers in pods.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use strait_api::{MeshConfig, MtlsMode};
use strait_certs::{Identity, StaticCertResolver, TrustBundle};
use strait_tests::backend;
use strait_tests::mesh::{self, deny_from, Capture as Mode, Mesh, ECHO_PORT, ECHO_VIP};
use strait_tests::{connect_from_async, exec, listen_in, require_root, Capture, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn cluster() -> Result<Cluster> {
    Cluster::builder().node("node-a", &["a1", "a2"]).node("node-b", &["b1", "b2"]).build()
}

fn start(mode: Mode, adjust: impl FnOnce(&mut MeshConfig)) -> Result<(Mesh, backend::Server)> {
    let cluster = cluster()?;
    let mut config = mesh::default_config(&cluster);
    adjust(&mut config);
    let b1 = cluster.pod("b1");
    let echo = backend::tcp_echo(b1.netns_name(), SocketAddr::new(b1.ip().into(), ECHO_PORT))?;
    let mesh = Mesh::start(cluster, &config, mode)?;
    Ok((mesh, echo))
}

fn vip() -> SocketAddr {
    SocketAddr::new(ECHO_VIP.parse().expect("constant"), ECHO_PORT)
}

/// Sends a marker and a few bytes from `netns` to `addr` and says whether the echo came back whole. A refused,
/// reset or dropped connection is `false`, not an error (2 s client timeout, for rules that drop).
fn gets_through(netns: &str, addr: SocketAddr, marker: &str) -> Result<bool> {
    let bin = backend::testbackend_path()?;
    let bin = bin.to_string_lossy();
    let args = [
        bin.as_ref(),
        "tcp-send",
        "--connect",
        &addr.to_string(),
        "--bytes",
        "100",
        "--marker",
        marker,
        "--timeout-ms",
        "2000",
    ];
    let out = exec::output_in(netns, &args, Duration::from_secs(20))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("\"echoed\":true"))
}

/// Pod to pod across nodes, by pod address and by service VIP; the node-to-node link carries only TLS; the
/// client half-closes and still gets every byte back.
fn cross_node_is_encrypted(mode: Mode) -> Result<()> {
    let (mesh, echo) = start(mode, |_| {})?;
    let node_a = mesh.cluster.node("node-a");
    let capture = Capture::start(node_a.netns_name(), node_a.uplink(), "tcp")?;
    let a1 = mesh.cluster.pod("a1").netns_name().to_string();

    let direct = backend::tcp_send(&a1, echo.addr, 200_000, "PLAINTEXT-MARKER-DIRECT")?;
    assert!(direct.echoed, "direct pod address: {direct:?}\nnode-a log:\n{}", mesh.proxy_logs("node-a"));
    let via_vip = backend::tcp_send(&a1, vip(), 200_000, "PLAINTEXT-MARKER-VIP")?;
    assert!(via_vip.echoed, "service VIP: {via_vip:?}\nnode-a log:\n{}", mesh.proxy_logs("node-a"));

    let captured = capture.stop()?;
    assert!(captured.packet_count() > 20, "the node link saw only {} packets", captured.packet_count());
    assert!(!captured.contains(b"PLAINTEXT-MARKER"), "plaintext crossed the node-to-node link");
    // The traffic did cross that link: TLS application data records (0x17 0x03 0x03) are in the capture.
    assert!(captured.contains(&[0x17, 0x03, 0x03]), "no TLS records on the node link");

    let opened = mesh.metric(
        "node-b",
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("destination_workload", "b1"),
            ("source_workload", "a1"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )?;
    assert_eq!(opened, 2.0, "node-b counted {opened} mTLS connections from a1 to b1");
    let sent = mesh.metric(
        "node-b",
        "istio_tcp_sent_bytes_total",
        &[("reporter", "destination"), ("destination_workload", "b1")],
    )?;
    assert_eq!(sent as u64, direct.sent + via_vip.sent, "bytes to b1 as node-b counted them");
    Ok(())
}

#[test]
fn cross_node_is_encrypted_with_tproxy() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    cross_node_is_encrypted(Mode::Tproxy)
}

#[test]
fn cross_node_is_encrypted_with_redirect() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    cross_node_is_encrypted(Mode::Redirect)
}

/// A proxy that dies during start-up (here: something else holds node-a's tunnel port) ends the wait for
/// the mesh at once, with the proxy's own last words, not after the ready timeout with a log to dig through.
#[test]
fn a_proxy_that_exits_at_start_up_fails_the_mesh_at_once_with_its_last_log_line() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = cluster()?;
    let config = mesh::default_config(&cluster);
    // Kept open until the end: the proxy cannot bind 0.0.0.0:15008 while this listens there.
    let _squatter = listen_in(cluster.node("node-a").netns_name(), ([0, 0, 0, 0], 15008).into())?;
    let started = Instant::now();
    let err = match Mesh::start(cluster, &config, Mode::Tproxy) {
        Ok(_) => panic!("node-a's proxy started although its tunnel port was taken"),
        Err(e) => format!("{e:#}"),
    };
    let took = started.elapsed();
    let first = err.lines().next().unwrap_or_default();
    assert!(first.starts_with("proxy on node-a exited during start-up"), "{err}");
    assert!(first.contains("15008"), "the first line should carry the proxy's bind error: {err}");
    assert!(took < mesh::READY_TIMEOUT / 4, "took {took:?}, as if waiting for the ready timeout: {err}");
    Ok(())
}

#[test]
fn hundred_mib_crosses_intact() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = cluster()?;
    let config = mesh::default_config(&cluster);
    let b2 = cluster.pod("b2");
    let sink = backend::tcp_sink(b2.netns_name(), SocketAddr::new(b2.ip().into(), 9000))?;
    let mesh = Mesh::start(cluster, &config, Mode::Tproxy)?;
    let report = backend::tcp_send(mesh.cluster.pod("a1").netns_name(), sink.addr, 100 * 1024 * 1024, "BULK")?;
    let reply = report.sink_reply()?;
    assert_eq!(reply.bytes, report.sent, "byte count at the sink");
    assert_eq!(reply.sha256, report.sent_sha256, "checksum at the sink");
    Ok(())
}

#[test]
fn same_node_pods_are_served_without_a_tunnel() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = cluster()?;
    let config = mesh::default_config(&cluster);
    let a2 = cluster.pod("a2");
    let echo = backend::tcp_echo(a2.netns_name(), SocketAddr::new(a2.ip().into(), 7100))?;
    let mesh = Mesh::start(cluster, &config, Mode::Redirect)?;
    let report = backend::tcp_send(mesh.cluster.pod("a1").netns_name(), echo.addr, 10_000, "LOCAL")?;
    assert!(report.echoed, "{report:?}");
    let opened = mesh.metric(
        "node-a",
        "istio_tcp_connections_opened_total",
        &[("reporter", "destination"), ("source_workload", "a1"), ("destination_workload", "a2")],
    )?;
    assert_eq!(opened, 1.0);
    assert_eq!(mesh.metric("node-a", "strait_tunnel_pool_connections", &[])?, 0.0, "no tunnel for a local pod");
    Ok(())
}

#[test]
fn deny_policy_blocks_and_is_reported() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mesh, echo) = start(Mode::Tproxy, |config| {
        config.authorization_policies.push(deny_from("no-a2", "b1", "cluster.local/ns/shop/sa/sa-a2"));
    })?;
    let allowed = backend::tcp_send(mesh.cluster.pod("a1").netns_name(), echo.addr, 1000, "ALLOWED")?;
    assert!(allowed.echoed, "a1 is not denied: {allowed:?}");
    assert!(!gets_through(mesh.cluster.pod("a2").netns_name(), echo.addr, "DENIED")?, "a2 got through a DENY policy");
    let denials = mesh.metric("node-b", "strait_policy_denials_total", &[("policy", "shop/no-a2")])?;
    assert_eq!(denials, 1.0, "denials reported by node-b");
    let closed = mesh.metric(
        "node-b",
        "istio_tcp_connections_closed_total",
        &[("source_workload", "a2"), ("destination_workload", "b1"), ("response_flags", "UAEX")],
    )?;
    assert_eq!(closed, 1.0, "the denied connection is reported with flag UAEX");
    Ok(())
}

#[test]
fn strict_refuses_plaintext_and_permissive_passes_it() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mesh, echo) = start(Mode::Tproxy, |_| {})?;
    // The node itself is outside the mesh: its traffic to b1 reaches node-b as plaintext.
    let outsider = mesh.cluster.node("node-a").netns_name().to_string();
    assert!(!gets_through(&outsider, echo.addr, "STRICT")?, "plaintext passed a STRICT namespace");
    let refused = mesh.metric("node-b", "strait_connections_refused_total", &[("reason", "plaintext_in_strict")])?;
    assert_eq!(refused, 1.0);

    let mut config = mesh::default_config(&mesh.cluster);
    config.namespaces[0].mtls_mode = MtlsMode::Permissive;
    mesh.update_config(&config)?;
    assert!(gets_through(&outsider, echo.addr, "PERMISSIVE")?, "plaintext refused in a PERMISSIVE namespace");
    let passed = mesh.metric(
        "node-b",
        "istio_tcp_connections_opened_total",
        &[("destination_workload", "b1"), ("connection_security_policy", "none")],
    )?;
    assert_eq!(passed, 2.0, "one refused and one passed plaintext connection");
    Ok(())
}

/// kubelet probes come from the pod's own node, not from a workload: in every capture mode they reach a pod of a
/// STRICT namespace, where plaintext from anywhere else is refused (see the test above).
fn probes_from_the_pods_own_node_reach_it(mode: Mode) -> Result<()> {
    let (mesh, echo) = start(mode, |_| {})?;
    let node = mesh.cluster.node("node-b").netns_name().to_string();
    for i in 0..3 {
        assert!(gets_through(&node, echo.addr, &format!("PROBE{i}"))?, "{mode:?}: a probe from node-b was refused");
    }
    let other_node = mesh.cluster.node("node-a").netns_name().to_string();
    assert!(!gets_through(&other_node, echo.addr, "OUTSIDER")?, "{mode:?}: plaintext from another node passed STRICT");
    Ok(())
}

#[test]
fn probes_from_the_pods_own_node_reach_it_with_tproxy() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    probes_from_the_pods_own_node_reach_it(Mode::Tproxy)
}

#[test]
fn probes_from_the_pods_own_node_reach_it_with_redirect() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    probes_from_the_pods_own_node_reach_it(Mode::Redirect)
}

#[test]
fn a_proxy_presenting_the_wrong_identity_is_refused() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mesh, echo) = start(Mode::Tproxy, |_| {})?;
    // node-a now expects b1 to be sa-impostor; node-b still presents sa-b1.
    let mut config = mesh::default_config(&mesh.cluster);
    for w in config.workloads.iter_mut().filter(|w| w.name == "b1") {
        w.service_account = "sa-impostor".into();
    }
    let version = mesh.config_version("node-a")?;
    mesh.write_config("node-a", &config)?;
    while mesh.config_version("node-a")? == version {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !gets_through(mesh.cluster.pod("a1").netns_name(), echo.addr, "X")?,
        "reached a peer with the wrong identity"
    );
    let failures = mesh.metric(
        "node-a",
        "strait_tls_handshake_failures_total",
        &[("direction", "outbound"), ("reason", "wrong_identity")],
    )?;
    assert_eq!(failures, 1.0, "node-a log:\n{}", mesh.proxy_logs("node-a"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_tunnel_port_is_refused_and_serving_continues() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mesh, echo) = tokio::task::block_in_place(|| start(Mode::Tproxy, |_| {}))?;
    let node_a = mesh.cluster.node("node-a").netns_name().to_string();
    let b1 = mesh.cluster.pod("b1").ip();
    let tunnel: SocketAddr = (b1, 15008).into();

    // Not TLS at all.
    let mut plain = connect_from_async(&node_a, tunnel).await?;
    plain.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut buf)).await.context("not closed")?;
    assert!(!buf.starts_with(b"HTTP/1.1 200"), "plaintext HTTP was answered");

    let bundle = TrustBundle::from_ca(&mesh.ca);
    let b1_identity: Identity = "spiffe://cluster.local/ns/shop/sa/sa-b1".parse()?;
    let server_name = strait_certs::mesh_server_name();

    // TLS without a client certificate.
    let no_cert = strait_certs::client_config(None, &bundle, b1_identity.clone());
    let tcp = connect_from_async(&node_a, tunnel).await?;
    let result = strait_certs::tokio_rustls::TlsConnector::from(no_cert).connect(server_name.clone(), tcp).await;
    if let Ok(mut tls) = result {
        // TLS 1.3 reports a refused client certificate only on the first read.
        let mut byte = [0u8; 1];
        assert!(tls.read(&mut byte).await.map(|n| n == 0).unwrap_or(true), "served without a client certificate");
    }

    // A valid client, but requests the tunnel must refuse.
    let a1_identity: Identity = "spiffe://cluster.local/ns/shop/sa/sa-a1".parse()?;
    let cert = Arc::new(mesh.ca.issue(&a1_identity, Duration::from_secs(3600))?);
    let config = strait_certs::client_config(Some(StaticCertResolver::new(cert)), &bundle, b1_identity);
    let tcp = connect_from_async(&node_a, tunnel).await?;
    let tls = strait_certs::tokio_rustls::TlsConnector::from(config).connect(server_name, tcp).await?;
    let (mut client, connection) = h2::client::handshake(tls).await?;
    tokio::spawn(connection);
    let cases = [
        ("GET", "http://10.2.0.2:7000/", 405),
        ("CONNECT", "not-an-address:7000", 400),
        ("CONNECT", "10.1.0.2:7000", 400), // a1 lives on node-a
    ];
    for (method, uri, expected) in cases {
        let request = http::Request::builder().method(method).uri(uri).body(())?;
        client = client.ready().await?;
        let (response, _) = client.send_request(request, true)?;
        let response = response.await?;
        assert_eq!(response.status().as_u16(), expected, "{method} {uri}");
    }
    let bad = mesh.metric("node-b", "strait_connections_refused_total", &[("listener", "tunnel")])?;
    assert!(bad >= 3.0, "refusals counted: {bad}");

    // And the proxy still serves real traffic.
    let a1 = mesh.cluster.pod("a1").netns_name().to_string();
    let report = tokio::task::block_in_place(|| backend::tcp_send(&a1, echo.addr, 1000, "STILL-SERVING"))?;
    assert!(report.echoed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_connection_is_closed_when_policy_starts_denying_it() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mesh, echo) = tokio::task::block_in_place(|| start(Mode::Redirect, |_| {}))?;
    let mut stream = connect_from_async(mesh.cluster.pod("a2").netns_name(), echo.addr).await?;
    stream.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    stream.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");

    let mut config = mesh::default_config(&mesh.cluster);
    config.authorization_policies.push(deny_from("no-a2", "b1", "cluster.local/ns/shop/sa/sa-a2"));
    tokio::task::block_in_place(|| mesh.update_config(&config))?;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the denied connection stayed open");
    Ok(())
}

#[test]
fn rules_stay_and_fail_closed_while_the_proxy_restarts() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mut mesh, echo) = start(Mode::Tproxy, |_| {})?;
    let node_b = mesh.cluster.node("node-b").netns_name().to_string();
    let table = exec::run_in(&node_b, &["nft", "list", "table", "inet", "strait"])?;
    assert!(String::from_utf8_lossy(&table.stdout).contains("10.2.0.2"), "b1 is in node-b's rules");
    mesh.stop_proxy("node-b")?;
    // With no proxy, nothing reaches b1: not through the tunnel, not as plaintext around it.
    for from in [mesh.cluster.pod("a1").netns_name().to_string(), mesh.cluster.node("node-a").netns_name().to_string()]
    {
        assert!(!gets_through(&from, echo.addr, "DOWN")?, "b1 reachable from {from} with its proxy down");
    }
    mesh.resume_proxy("node-b")?;
    let after = exec::run_in(&node_b, &["nft", "list", "table", "inet", "strait"])?;
    assert!(String::from_utf8_lossy(&after.stdout).contains("10.2.0.2"));
    let report = backend::tcp_send(mesh.cluster.pod("a1").netns_name(), echo.addr, 1000, "AFTER-RESTART")?;
    assert!(report.echoed, "{report:?}");
    Ok(())
}

/// A proxy that restarts with nothing to serve (its control plane or configuration unreachable) must not render
/// the node's rules from that empty view: the pods would no longer be captured and their traffic would flow
/// around the mesh in plaintext. The previous rules stay, traffic is refused, and serving resumes with the
/// configuration.
#[test]
fn a_proxy_restarted_without_configuration_keeps_the_rules_and_fails_closed() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mut mesh, echo) = start(Mode::Tproxy, |_| {})?;
    let node_b = mesh.cluster.node("node-b").netns_name().to_string();
    mesh.stop_proxy("node-b")?;
    mesh.hide_config("node-b")?;
    mesh.start_proxy_unready("node-b")?;
    let (ready, _) = mesh.admin_get("node-b", 15000, "/ready")?;
    assert_ne!(ready, 200, "a proxy without configuration is not ready");
    // The reconcile loop has run by the time the admin port answers; give it a moment more all the same.
    std::thread::sleep(Duration::from_millis(300));
    let table = exec::run_in(&node_b, &["nft", "list", "table", "inet", "strait"])?;
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(table.contains("10.2.0.2"), "b1 is still captured on node-b:\n{table}\n{}", mesh.proxy_logs("node-b"));
    for from in [mesh.cluster.pod("a1").netns_name().to_string(), mesh.cluster.node("node-a").netns_name().to_string()]
    {
        assert!(!gets_through(&from, echo.addr, "EMPTY")?, "b1 reachable from {from} through an unconfigured proxy");
    }
    mesh.restore_config("node-b")?;
    mesh.wait_ready("node-b")?;
    let report = backend::tcp_send(mesh.cluster.pod("a1").netns_name(), echo.addr, 1000, "CONFIGURED")?;
    assert!(report.echoed, "{report:?}");
    Ok(())
}

/// `connectionPool.tcp.connectTimeout` bounds how long a client waits for a destination that never answers its
/// SYN (the proxy's own bound is 5 s): accepted by the schema, so it is enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_bounds_a_destination_that_never_answers() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mesh, _echo) = tokio::task::block_in_place(|| {
        start(Mode::Tproxy, |config| {
            let spec = serde_yaml::from_str("host: echo\nconnectionPool: {tcp: {connectTimeout: 300ms}}\n")
                .expect("a valid DestinationPolicy");
            config.destination_policies.push(strait_api::Named { name: "echo".into(), namespace: "shop".into(), spec });
        })
    })?;
    // b1 silently drops new connections to the echo port, as a host that is down would.
    let b1 = mesh.cluster.pod("b1").netns_name().to_string();
    for command in [
        "add table inet blackhole".to_string(),
        "add chain inet blackhole input { type filter hook input priority 0 ; }".to_string(),
        format!("add rule inet blackhole input tcp dport {ECHO_PORT} tcp flags & (syn | ack) == syn drop"),
    ] {
        tokio::task::block_in_place(|| exec::run_in(&b1, &["nft", &command]))?;
    }

    let a1 = mesh.cluster.pod("a1").netns_name().to_string();
    let mut stream = connect_from_async(&a1, vip()).await?;
    let started = std::time::Instant::now();
    let _ = stream.write_all(b"ping").await;
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    let waited = started.elapsed();
    assert!(ended.is_ok() && rest.is_empty(), "the connection was not closed");
    assert!(waited < Duration::from_secs(3), "closed after {waited:?}: the 300 ms connect timeout was not applied");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_max_connections_refuses_the_extra_connection_at_once() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mesh, _echo) = tokio::task::block_in_place(|| {
        start(Mode::Tproxy, |config| {
            let spec = serde_yaml::from_str("host: echo\nconnectionPool: {tcp: {maxConnections: 1}}\n")
                .expect("a valid DestinationPolicy");
            config.destination_policies.push(strait_api::Named { name: "echo".into(), namespace: "shop".into(), spec });
        })
    })?;
    let a1 = mesh.cluster.pod("a1").netns_name().to_string();
    let mut first = connect_from_async(&a1, vip()).await?;
    first.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    first.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping", "the first connection is served");

    let second = tokio::task::block_in_place(|| gets_through(&a1, vip(), "SECOND"))?;
    assert!(!second, "a second connection got through a limit of one");
    let overflows = tokio::task::block_in_place(|| {
        mesh.metric(
            "node-a",
            "strait_circuit_breaker_total",
            &[("destination_service", "echo.shop.svc.cluster.local"), ("event", "overflow")],
        )
    })?;
    assert_eq!(overflows, 1.0);

    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = tokio::task::block_in_place(|| gets_through(&a1, vip(), "THIRD"))?;
    assert!(third, "the slot is free again once the first connection closed");
    Ok(())
}

/// The same path over IPv6: pods known by their IPv6 addresses, an IPv6 service address, the proxies' IPv6
/// listeners and `ip6` capture rules.
fn cross_node_over_ipv6(mode: Mode) -> Result<()> {
    let cluster = cluster()?;
    let mut config = mesh::default_config(&cluster);
    for w in &mut config.workloads {
        w.address = std::net::IpAddr::V6(cluster.pod(&w.name).ip6());
    }
    let b1 = std::net::IpAddr::V6(cluster.pod("b1").ip6());
    let vip6: std::net::IpAddr = "fd00:96::10".parse()?;
    config.services[0].addresses = vec![vip6];
    config.services[0].endpoints[0].address = b1;
    let echo = backend::tcp_echo(cluster.pod("b1").netns_name(), SocketAddr::new(b1, ECHO_PORT))?;
    let mesh = Mesh::start(cluster, &config, mode)?;
    let a1 = mesh.cluster.pod("a1").netns_name().to_string();
    let direct = backend::tcp_send(&a1, echo.addr, 50_000, "V6-DIRECT")?;
    assert!(direct.echoed, "pod address over IPv6: {direct:?}\nnode-a log:\n{}", mesh.proxy_logs("node-a"));
    let via_vip = backend::tcp_send(&a1, SocketAddr::new(vip6, ECHO_PORT), 50_000, "V6-VIP")?;
    assert!(via_vip.echoed, "service address over IPv6: {via_vip:?}");
    let opened = mesh.metric(
        "node-b",
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_workload", "a1"),
            ("destination_workload", "b1"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )?;
    assert_eq!(opened, 2.0, "node-b counted {opened} mTLS connections from a1 over IPv6");
    Ok(())
}

#[test]
fn cross_node_over_ipv6_with_tproxy() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    cross_node_over_ipv6(Mode::Tproxy)
}

#[test]
fn cross_node_over_ipv6_with_redirect() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    cross_node_over_ipv6(Mode::Redirect)
}
