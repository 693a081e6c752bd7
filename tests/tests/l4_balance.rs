//! Issue 15: a TCP service port honours its DestinationPolicy's `loadBalancer` and `outlierDetection`, through
//! both proxies: clients a1 and a2 on node-a call the `echo` service (TCP, port 7000), whose endpoints are b1
//! and b2 on node-b (through the tunnel) and a3 on node-a (no tunnel). Which endpoint served a connection is
//! read from the destination side's `istio_tcp_connections_opened_total`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use strait_api::{Endpoint, MeshConfig};
use strait_tests::backend;
use strait_tests::mesh::{self, Capture as Mode, Mesh, ECHO_PORT, ECHO_VIP};
use strait_tests::mesh_http::destination_policy;
use strait_tests::{require_root, Cluster};

const BACKENDS: [&str; 3] = ["b1", "b2", "a3"];

/// The mesh with `policy` as the `echo` service's DestinationPolicy spec (after `host: echo`), and echo
/// servers in the backend pods named in `serving` (the others refuse connections: nothing listens).
fn start(policy: &str, serving: &[&str]) -> Result<(Mesh, Vec<backend::Server>)> {
    let cluster = Cluster::builder().node("node-a", &["a1", "a2", "a3"]).node("node-b", &["b1", "b2"]).build()?;
    let mut config: MeshConfig = mesh::default_config(&cluster);
    config.services[0].endpoints =
        BACKENDS.iter().map(|pod| Endpoint { address: IpAddr::V4(cluster.pod(pod).ip()), ready: true }).collect();
    config.destination_policies.push(destination_policy("echo", &format!("host: echo\n{policy}\n")));
    let servers = serving.iter().map(|pod| serve(&cluster, pod)).collect::<Result<Vec<_>>>()?;
    let mesh = Mesh::start(cluster, &config, Mode::Tproxy)?;
    Ok((mesh, servers))
}

fn serve(cluster: &Cluster, pod: &str) -> Result<backend::Server> {
    let pod = cluster.pod(pod);
    backend::tcp_echo(pod.netns_name(), SocketAddr::new(pod.ip().into(), ECHO_PORT))
}

fn vip() -> SocketAddr {
    SocketAddr::new(ECHO_VIP.parse().expect("constant"), ECHO_PORT)
}

/// `n` connections from `client` to the service VIP, one after the other; each must be echoed whole.
fn connect(mesh: &Mesh, client: &str, n: usize) -> Result<()> {
    let netns = mesh.cluster.pod(client).netns_name().to_string();
    for i in 0..n {
        let report = backend::tcp_send(&netns, vip(), 1000, &format!("{client}-{i}"))?;
        if !report.echoed {
            bail!(
                "connection {i} from {client} was not echoed: {report:?}\nnode-a log:\n{}",
                mesh.proxy_logs("node-a")
            );
        }
    }
    Ok(())
}

/// Connections from `client` each backend accepted, as the destination side counted them (node-b for b1 and
/// b2, node-a for a3, which it serves without a tunnel).
fn served(mesh: &Mesh, client: &str) -> Result<BTreeMap<&'static str, u64>> {
    let mut out = BTreeMap::new();
    for backend in BACKENDS {
        let node = if backend.starts_with('a') { "node-a" } else { "node-b" };
        let labels = [("reporter", "destination"), ("source_workload", client), ("destination_workload", backend)];
        out.insert(backend, mesh.metric(node, "istio_tcp_connections_opened_total", &labels)? as u64);
    }
    Ok(out)
}

#[test]
fn round_robin_spreads_connections_evenly_over_the_endpoints() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mesh, _servers) = start("loadBalancer: {simple: ROUND_ROBIN}", &BACKENDS)?;
    connect(&mesh, "a1", 30)?;
    let counts = served(&mesh, "a1")?;
    // One client, one connection at a time: the cycle is exact.
    assert_eq!(counts, BTreeMap::from([("a3", 10), ("b1", 10), ("b2", 10)]), "{counts:?}");
    Ok(())
}

#[test]
fn a_source_ip_hash_sends_every_connection_of_a_client_to_one_endpoint() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let (mesh, _servers) = start("loadBalancer: {consistentHash: {useSourceIp: true}}", &BACKENDS)?;
    for client in ["a1", "a2"] {
        connect(&mesh, client, 12)?;
        let counts = served(&mesh, client)?;
        let used: Vec<_> = counts.iter().filter(|(_, n)| **n > 0).collect();
        assert_eq!(used.len(), 1, "{client}'s connections went to {counts:?}");
        assert_eq!(*used[0].1, 12, "{client}: {counts:?}");
    }
    Ok(())
}

/// b2 refuses connections (nothing listens): each connection that picks it is sent on to another endpoint, so
/// every client connection succeeds; after two failures in a row b2 is ejected and counted. Once b2 serves
/// again it is readmitted when its ejection time is over, and takes its share again.
#[test]
fn an_endpoint_that_refuses_connections_is_ejected_then_readmitted() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let policy = "loadBalancer: {simple: ROUND_ROBIN}\n\
                  outlierDetection: {consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50}";
    let (mesh, _servers) = start(policy, &["b1", "a3"])?;
    connect(&mesh, "a1", 12)?;
    let counts = served(&mesh, "a1")?;
    assert_eq!((counts["b2"], counts["b1"] + counts["a3"]), (0, 12), "{counts:?}");
    let service = [("destination_service", "echo.shop.svc.cluster.local")];
    let ejections = mesh.metric("node-a", "strait_circuit_breaker_total", &[service[0], ("event", "ejection")])?;
    assert!(ejections >= 1.0, "b2 was not ejected:\n{}", mesh.proxy_logs("node-a"));
    // The client's connections were not refused: another endpoint took each of them.
    assert_eq!(mesh.metric("node-a", "strait_connections_refused_total", &[("listener", "outbound")])?, 0.0);

    // b2 serves again: once its ejection is over it is tried (half-open), connects, and is back in the cycle.
    let _b2 = serve(&mesh.cluster, "b2")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while served(&mesh, "a1")?["b2"] == 0 {
        if Instant::now() > deadline {
            bail!("b2 was never readmitted:\n{}", mesh.proxy_logs("node-a"));
        }
        std::thread::sleep(Duration::from_millis(200));
        connect(&mesh, "a1", 1)?;
    }
    let before = served(&mesh, "a1")?;
    connect(&mesh, "a1", 9)?;
    let after = served(&mesh, "a1")?;
    for backend in BACKENDS {
        assert_eq!(after[backend] - before[backend], 3, "{backend}: {before:?} -> {after:?}");
    }
    assert_eq!(mesh.metric("node-a", "strait_outlier_ejected_endpoints", &service)?, 0.0);
    Ok(())
}
