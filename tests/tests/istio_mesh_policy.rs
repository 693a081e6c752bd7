//! Istio's PeerAuthentication and ServiceEntry, written as in Istio's documentation, read by
//! `strait_control::istio` (what the file provider and `--istio-resources` use) into the configuration both
//! proxies run on, and checked on the data path: plaintext from outside the mesh under STRICT / PERMISSIVE
//! per namespace, workload and port; meshed pods reaching hosts outside the mesh under REGISTRY_ONLY.
//!
//! ```text
//! node-a: a1 (meshed client), a2 (meshed)        node-b: b1 (meshed, echo on 7000 and 7001),
//!                                                         b2 (NOT in the mesh: the "external" servers)
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use strait_api::{MeshConfig, OutboundTrafficPolicy};
use strait_control::istio::{convert_all, Outcome};
use strait_control::model::Object;
use strait_tests::backend;
use strait_tests::mesh::{self, Capture as Mode, Mesh, ECHO_PORT};
use strait_tests::{exec, require_root, Cluster};

fn cluster() -> Result<Cluster> {
    Cluster::builder().node("node-a", &["a1", "a2"]).node("node-b", &["b1", "b2"]).build()
}

/// The Istio documents of `yaml`, read as the control plane reads them, added to `config`.
fn apply_istio(config: &mut MeshConfig, yaml: &str) -> Result<()> {
    for converted in convert_all(yaml, &config.trust_domain).map_err(anyhow::Error::msg)? {
        if converted.changes_behaviour() {
            bail!("{} would behave differently: {:?} {:?}", converted.origin, converted.notes, converted.outcome);
        }
        let Outcome::Direct { object } = converted.outcome else {
            bail!("{} was not read as it is: {:?}", converted.origin, converted.outcome);
        };
        match *object {
            Object::PeerAuthentication(p) => config.peer_authentications.push(p),
            Object::ServiceEntry(e) => config.external_services.push(e),
            other => bail!("unexpected object {other:?}"),
        }
    }
    Ok(())
}

/// Sends a marker from `netns` to `addr`; whether the echo came back whole (refused, reset or dropped: false).
fn gets_through(netns: &str, addr: SocketAddr, marker: &str) -> Result<bool> {
    let bin = backend::testbackend_path()?;
    let bin = bin.to_string_lossy();
    let addr = addr.to_string();
    let args =
        [bin.as_ref(), "tcp-send", "--connect", &addr, "--bytes", "100", "--marker", marker, "--timeout-ms", "2000"];
    let out = exec::output_in(netns, &args, Duration::from_secs(20))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("\"echoed\":true"))
}

const NAMESPACE_STRICT: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: shop
spec:
  mtls:
    mode: STRICT
"#;

/// Istio's docs' shape: a mesh-wide PERMISSIVE in the root namespace, the namespace STRICT, and one workload
/// STRICT except on one port (where PERMISSIVE overrides it).
const LAYERED: &str = r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: shop
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: b1-legacy-port
  namespace: shop
spec:
  selector:
    matchLabels:
      app: b1
  mtls:
    mode: STRICT
  portLevelMtls:
    7001:
      mode: PERMISSIVE
"#;

/// Plaintext from node-a's own namespace (outside the mesh) to pod b1: refused where STRICT applies and counted,
/// passed where PERMISSIVE does, at each level of Istio's precedence.
#[test]
fn peer_authentication_strict_and_permissive_per_mesh_namespace_workload_and_port() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = cluster()?;
    let mut config = mesh::default_config(&cluster);
    // The namespace's own setting says PERMISSIVE: the PeerAuthentications below take precedence over it.
    config.namespaces[0].mtls_mode = strait_api::MtlsMode::Permissive;
    apply_istio(&mut config, NAMESPACE_STRICT)?;
    let b1 = cluster.pod("b1");
    let echo = SocketAddr::new(b1.ip().into(), ECHO_PORT);
    let other = SocketAddr::new(b1.ip().into(), 7001);
    let _echo = backend::tcp_echo(b1.netns_name(), echo)?;
    let _other = backend::tcp_echo(b1.netns_name(), other)?;
    let mesh = Mesh::start(cluster, &config, Mode::Tproxy)?;
    let outsider = mesh.cluster.node("node-a").netns_name().to_string();
    let a1 = mesh.cluster.pod("a1").netns_name().to_string();
    let refused =
        |m: &Mesh| m.metric("node-b", "strait_connections_refused_total", &[("reason", "plaintext_in_strict")]);

    // Namespace STRICT: plaintext refused on both ports and counted; meshed a1 still gets through (mTLS).
    assert!(!gets_through(&outsider, echo, "NS-STRICT-7000")?, "plaintext passed a STRICT namespace");
    assert!(!gets_through(&outsider, other, "NS-STRICT-7001")?, "plaintext passed a STRICT namespace");
    assert_eq!(refused(&mesh)?, 2.0);
    assert!(gets_through(&a1, echo, "MESHED")?, "a meshed client was refused");

    // Mesh PERMISSIVE, namespace STRICT, workload STRICT with port 7001 PERMISSIVE.
    let mut layered = mesh::default_config(&mesh.cluster);
    apply_istio(&mut layered, LAYERED)?;
    mesh.update_config(&layered)?;
    assert!(!gets_through(&outsider, echo, "WORKLOAD-STRICT")?, "the workload's STRICT did not apply on 7000");
    assert!(gets_through(&outsider, other, "PORT-PERMISSIVE")?, "the port-level PERMISSIVE did not apply on 7001");
    assert_eq!(refused(&mesh)?, 3.0);

    // Without the namespace and workload policies, the mesh-wide PERMISSIVE applies everywhere.
    let mut mesh_wide = mesh::default_config(&mesh.cluster);
    mesh_wide.namespaces[0].mtls_mode = strait_api::MtlsMode::Strict;
    apply_istio(&mut mesh_wide, LAYERED.split("---").next().context("the first document")?)?;
    mesh.update_config(&mesh_wide)?;
    assert!(gets_through(&outsider, echo, "MESH-PERMISSIVE")?, "the mesh-wide PERMISSIVE did not apply");
    assert_eq!(refused(&mesh)?, 3.0, "nothing more refused");
    let passed = mesh.metric(
        "node-b",
        "istio_tcp_connections_opened_total",
        &[("destination_workload", "b1"), ("connection_security_policy", "none")],
    )?;
    // Refused plaintext is reported too (3 connections, flag UAEX), as the L4 tests show; 2 passed.
    assert_eq!(passed, 5.0, "every plaintext connection is reported with connection_security_policy none");
    Ok(())
}

/// A ServiceEntry for the external echo on b2 (outside the mesh) at port 7000 by address (NONE), and one for a
/// virtual address resolved to b2 by STATIC endpoints; nothing registers b2:7002.
fn service_entries(b2: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-echo
  namespace: shop
spec:
  hosts:
  - echo.external.example
  addresses:
  - {b2}/32
  ports:
  - number: 7000
    name: tcp-echo
    protocol: TCP
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-db
  namespace: shop
spec:
  hosts:
  - db.external.example
  addresses:
  - 10.96.0.99
  ports:
  - number: 5432
    name: tcp-db
    protocol: TCP
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: {b2}
    ports:
      tcp-db: 7001
"#
    )
}

/// REGISTRY_ONLY: a meshed pod reaches the registered external hosts (by address, and by a STATIC virtual
/// address sent to its endpoint) and is refused to an unregistered one; metrics and access lines name the
/// host. ALLOW_ANY then lets the unregistered one through as `PassthroughCluster`.
#[test]
fn registry_only_reaches_service_entries_and_refuses_the_rest() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = cluster()?;
    let mut config = mesh::default_config(&cluster);
    // b2 is outside the mesh: no workload, no service; only the ServiceEntries name it.
    config.workloads.retain(|w| w.name != "b2");
    let b2 = cluster.pod("b2");
    let (b2_ip, b2_netns) = (b2.ip(), b2.netns_name().to_string());
    config.outbound_traffic_policy = OutboundTrafficPolicy::RegistryOnly;
    apply_istio(&mut config, &service_entries(&b2_ip.to_string()))?;
    let _servers = [7000u16, 7001, 7002]
        .map(|port| backend::tcp_echo(&b2_netns, SocketAddr::new(b2_ip.into(), port)))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let mesh = Mesh::start(cluster, &config, Mode::Tproxy)?;
    let a1 = mesh.cluster.pod("a1").netns_name().to_string();
    let registered = SocketAddr::new(b2_ip.into(), 7000);
    let unregistered = SocketAddr::new(b2_ip.into(), 7002);
    let virtual_db: SocketAddr = "10.96.0.99:5432".parse()?;

    assert!(gets_through(&a1, registered, "REGISTERED")?, "the registered external host was refused");
    assert!(gets_through(&a1, virtual_db, "STATIC")?, "the STATIC virtual address did not reach its endpoint");
    assert!(!gets_through(&a1, unregistered, "UNREGISTERED")?, "REGISTRY_ONLY let an unregistered host through");

    let egress = |host: &str, decision: &str| {
        mesh.metric("node-a", "strait_egress_connections_total", &[("destination_host", host), ("decision", decision)])
    };
    assert_eq!(egress("echo.external.example", "allowed")?, 1.0);
    assert_eq!(egress("db.external.example", "allowed")?, 1.0);
    assert_eq!(egress("BlackHoleCluster", "denied")?, 1.0);
    let refused = mesh.metric("node-a", "strait_connections_refused_total", &[("reason", "egress_not_registered")])?;
    assert_eq!(refused, 1.0);
    let opened = mesh.metric(
        "node-a",
        "istio_tcp_connections_opened_total",
        &[("source_workload", "a1"), ("destination_service", "echo.external.example")],
    )?;
    assert_eq!(opened, 1.0, "the TCP metrics name the ServiceEntry's host");
    let logs = mesh.proxy_logs("node-a");
    assert!(logs.contains("db.external.example"), "the access line names the host:\n{logs}");
    assert!(logs.contains("BlackHoleCluster"), "the refused connection's access line:\n{logs}");

    // ALLOW_ANY: the unregistered destination passes, named as Istio names it.
    let mut allow_any = config.clone();
    allow_any.outbound_traffic_policy = OutboundTrafficPolicy::AllowAny;
    mesh.update_config(&allow_any)?;
    assert!(gets_through(&a1, unregistered, "ALLOW-ANY")?, "ALLOW_ANY refused an unregistered host");
    assert_eq!(egress("PassthroughCluster", "allowed")?, 1.0);
    Ok(())
}
