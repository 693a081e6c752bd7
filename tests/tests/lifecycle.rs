//! The node proxy's life beyond a clean drain: killed with SIGKILL, its rules stay (the node's pods fail closed,
//! nothing reaches them around the proxy) and a restarted proxy takes over within 2 s; uninstalled, exactly what
//! it installed is gone. Two nodes, two pods each; `echo` (TCP) on b1; the client is a1 on node-a (see
//! `strait_tests::mesh`).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use strait_tests::backend;
use strait_tests::mesh::{self, workspace_binary, Capture as Mode, Mesh, ECHO_PORT, ECHO_VIP};
use strait_tests::{exec, require_root, Capture, Cluster};

/// The bound for a restarted proxy to serve again (a correctness bound, not a performance figure).
const TAKEOVER_BOUND: Duration = Duration::from_secs(2);

fn echo_vip() -> SocketAddr {
    SocketAddr::new(ECHO_VIP.parse().expect("constant"), ECHO_PORT)
}

/// One echo exchange on a new connection from `netns`: false if it is not connected within `timeout` (a dropped
/// SYN), refused, reset or not echoed within `timeout` more.
fn echoed(netns: &str, addr: SocketAddr, timeout: Duration, message: &[u8]) -> bool {
    let attempt = || -> Result<()> {
        let mut stream = exec::connect_from_timeout(netns, addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(message)?;
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back)?;
        ensure!(back == message, "echoed something else");
        Ok(())
    };
    attempt().is_ok()
}

fn strait_table(mesh: &Mesh, node: &str) -> Result<String> {
    let out = exec::run_in(mesh.cluster.node(node).netns_name(), &["nft", "list", "table", "inet", "strait"])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kill -9` of node-b's proxy (the destination side), then of node-a's (the source side). While each is dead its
/// node's rules are unchanged and nothing reaches b1: not a1's connections through the mesh, not plaintext from
/// node-a straight to b1's address (a capture inside b1's namespace sees no packet for the port), and a1's
/// connections do not leave node-a in plaintext (a capture on node-a's uplink). A proxy started again serves a
/// new connection within 2 s of its start.
#[test]
fn a_killed_proxy_leaves_its_pods_fail_closed_and_a_restarted_one_takes_over_within_two_seconds() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::builder().node("node-a", &["a1", "a2"]).node("node-b", &["b1", "b2"]).build()?;
    let config = mesh::default_config(&cluster);
    let b1 = cluster.pod("b1");
    let (b1_netns, b1_addr) = (b1.netns_name().to_string(), SocketAddr::new(b1.ip().into(), ECHO_PORT));
    let b1_ip = b1.ip().to_string();
    let _echo = backend::tcp_echo(&b1_netns, b1_addr)?;
    let mut mesh = Mesh::start(cluster, &config, Mode::Tproxy)?;
    let a1 = mesh.cluster.pod("a1").netns_name().to_string();
    let a1_ip = mesh.cluster.pod("a1").ip();
    let node_a = mesh.cluster.node("node-a").netns_name().to_string();
    let uplink = mesh.cluster.node("node-a").uplink().to_string();

    let mut report = Vec::new();
    for node in ["node-b", "node-a"] {
        ensure!(echoed(&a1, echo_vip(), Duration::from_secs(2), b"before"), "no echo before killing {node}'s proxy");
        let rules = strait_table(&mesh, node)?;
        ensure!(rules.contains(&b1_ip) || node == "node-a", "b1 is not in node-b's rules:\n{rules}");

        let status = mesh.kill_proxy(node)?;
        ensure!(!status.success(), "the proxy on {node} exited cleanly ({status}) instead of being killed");
        ensure!(strait_table(&mesh, node)? == rules, "{node}'s rules changed when its proxy was killed");

        // During the gap: nothing reaches b1, nothing leaves node-a in plaintext.
        let at_b1 = Capture::start(&b1_netns, "any", &format!("tcp port {ECHO_PORT}"))?;
        let on_uplink = Capture::start(&node_a, &uplink, &format!("tcp port {ECHO_PORT} and host {a1_ip}"))?;
        for (from, to) in [(&a1, echo_vip()), (&a1, b1_addr), (&node_a, b1_addr)] {
            ensure!(
                !echoed(from, to, Duration::from_millis(500), b"DURING-THE-GAP"),
                "{to} answered {from} while {node}'s proxy was dead"
            );
        }
        let (at_b1, on_uplink) = (at_b1.stop()?, on_uplink.stop()?);
        ensure!(at_b1.packet_count() == 0, "{} packets reached b1 around {node}'s dead proxy", at_b1.packet_count());
        ensure!(
            on_uplink.packet_count() == 0,
            "{} plaintext packets of a1 left node-a while {node}'s proxy was dead",
            on_uplink.packet_count()
        );

        // Restarted: time from the process start to the first new connection served (short attempts, so a SYN
        // dropped while nothing listened yet costs 200 ms, not the kernel's 1 s retransmission).
        let started = Instant::now();
        mesh.spawn_proxy_now(node)?;
        let mut attempts = 0u32;
        while !echoed(&a1, echo_vip(), Duration::from_millis(200), b"after") {
            attempts += 1;
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "no connection served 30 s after restarting {node}'s proxy; its log:\n{}",
                mesh.proxy_logs(node)
            );
        }
        let takeover = started.elapsed();
        report.push(format!("{node}: killed, restarted proxy served a new connection after {takeover:?} ({attempts} failed attempts before)"));
        ensure!(
            takeover <= TAKEOVER_BOUND,
            "the restarted proxy on {node} took {takeover:?} to serve (bound {TAKEOVER_BOUND:?}); its log:\n{}",
            mesh.proxy_logs(node)
        );
        mesh.wait_ready(node)?;
    }
    println!("{}", report.join("\n"));
    Ok(())
}

/// What a node's network namespace holds that a proxy could change: the whole nftables ruleset, the policy
/// routing rules and every routing table, IPv4 and IPv6.
fn node_networking(netns: &str) -> Result<String> {
    let mut all = String::new();
    for args in [
        &["nft", "list", "ruleset"][..],
        &["ip", "-4", "rule", "show"],
        &["ip", "-6", "rule", "show"],
        &["ip", "-4", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
    ] {
        let out = exec::run_in(netns, args)?;
        all.push_str(&format!("$ {}\n{}\n", args.join(" "), String::from_utf8_lossy(&out.stdout)));
    }
    Ok(all)
}

/// Uninstalling the mesh from a node (`strait-proxy --uninstall`, once its proxy is gone) leaves the node's
/// rules, policy routing and routes exactly as they were before the proxy installed anything, in both capture
/// modes; with a proxy still running it refuses and changes nothing.
#[test]
fn uninstall_leaves_the_node_as_it_was_before_the_mesh() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    for mode in [Mode::Tproxy, Mode::Redirect] {
        let cluster = Cluster::builder().node("node-a", &["a1", "a2"]).node("node-b", &["b1", "b2"]).build()?;
        let config = mesh::default_config(&cluster);
        let netns: Vec<String> = cluster.nodes().iter().map(|n| n.netns_name().to_string()).collect();
        let before: Vec<String> = netns.iter().map(|n| node_networking(n)).collect::<Result<_>>()?;
        let mut mesh = Mesh::start(cluster, &config, mode)?;
        let installed: Vec<String> = netns.iter().map(|n| node_networking(n)).collect::<Result<_>>()?;
        for (node, text) in netns.iter().zip(&installed) {
            ensure!(text.contains("table inet strait"), "{mode:?}: no strait table on {node}:\n{text}");
            if mode == Mode::Tproxy {
                ensure!(text.contains("lookup 133"), "{mode:?}: no TPROXY policy routing on {node}:\n{text}");
            }
        }
        let uninstall = |netns: &str| -> Result<std::process::Output> {
            let bin = workspace_binary("strait-proxy")?;
            exec::output_in(netns, &[bin.to_string_lossy().as_ref(), "--uninstall"], Duration::from_secs(30))
        };

        // Refused while the proxy runs: it would put the rules back on its next configuration change.
        let refused = uninstall(&netns[0])?;
        ensure!(!refused.status.success(), "{mode:?}: uninstall ran beside a live proxy");
        ensure!(
            String::from_utf8_lossy(&refused.stderr).contains("still answers"),
            "{mode:?}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
        ensure!(node_networking(&netns[0])? == installed[0], "{mode:?}: a refused uninstall changed the node");

        for (i, node) in ["node-a", "node-b"].iter().enumerate() {
            mesh.stop_proxy(node)?;
            let done = uninstall(&netns[i])?;
            ensure!(done.status.success(), "{mode:?}: uninstall on {node}: {}", String::from_utf8_lossy(&done.stderr));
            let after = node_networking(&netns[i])?;
            ensure!(
                after == before[i],
                "{mode:?}: {node} differs after uninstall.\nbefore:\n{}\nafter:\n{after}",
                before[i]
            );
            // Idempotent: a second run finds nothing to remove and succeeds.
            ensure!(uninstall(&netns[i])?.status.success(), "{mode:?}: a second uninstall on {node} failed");
            ensure!(node_networking(&netns[i])? == before[i], "{mode:?}: a second uninstall changed {node}");
        }
    }
    Ok(())
}

/// A namespace whose `strait.dev/mesh` label is removed: the control plane sends its workloads as not meshed, and
/// each node's proxy takes exactly those pods out of its rules (they are no longer captured; plaintext between
/// them flows as it would without the mesh) while it keeps serving, and keeps its table, for pods still meshed.
#[test]
fn a_namespace_leaving_the_mesh_takes_its_pods_out_of_the_rules() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = Cluster::builder().node("node-a", &["a1", "a2"]).node("node-b", &["b1", "b2"]).build()?;
    let mut config = mesh::default_config(&cluster);
    let b1 = cluster.pod("b1");
    let (b1_ip, b1_addr) = (b1.ip().to_string(), SocketAddr::new(b1.ip().into(), ECHO_PORT));
    let _echo = backend::tcp_echo(b1.netns_name(), b1_addr)?;
    let mesh = Mesh::start(cluster, &config, Mode::Tproxy)?;
    let a1 = mesh.cluster.pod("a1").netns_name().to_string();
    let node_a = mesh.cluster.node("node-a").netns_name().to_string();
    ensure!(strait_table(&mesh, "node-b")?.contains(&b1_ip), "b1 is captured while meshed");
    ensure!(!echoed(&node_a, b1_addr, Duration::from_millis(500), b"PLAIN"), "STRICT b1 answered plaintext");

    for workload in &mut config.workloads {
        workload.meshed = false;
    }
    mesh.update_config(&config)?;
    for node in ["node-a", "node-b"] {
        let table = strait_table(&mesh, node)?;
        ensure!(!table.contains("elements"), "{node} still captures pods that left the mesh:\n{table}");
    }
    ensure!(echoed(&node_a, b1_addr, Duration::from_secs(2), b"PLAIN"), "b1 unreachable after leaving the mesh");
    ensure!(echoed(&a1, b1_addr, Duration::from_secs(2), b"PLAIN"), "a1 cannot reach b1 after both left the mesh");
    Ok(())
}
