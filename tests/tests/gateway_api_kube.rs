//! Gateway API routes end to end, as a cluster has them: a GRPCRoute and an HTTPRoute attached to Services
//! (GAMMA) are applied to the fake Kubernetes API server, read by the control plane in Kubernetes mode, pushed
//! to two real `strait-proxy` processes (explicit mode on loopback: node-a binds the service addresses, node-b
//! the backends' tunnels), and checked through the data path with gRPC and HTTP clients and servers; the
//! control plane writes the routes' status back to the API server.
//!
//! ```text
//! client (node-a) --gRPC--> echo    --GRPCRoute--> method Stream      -> echo-v2 (+ x-route: stream)
//!                                                 \ everything else   -> echo-v1 x3 / echo-v2 x1
//!                 --HTTP--> web     --HTTPRoute--> web-v1 / a ServiceImport (not a Service: 500)
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use serde_json::{json, Value};
use strait_control::kube::KubeOptions;
use strait_control::Running;
use strait_tests::backend::grpc;
use strait_tests::backend::server::{self, HttpConfig};
use strait_tests::fake_kube::objects::{self, NODE_NAME_EXTRA};
use strait_tests::fake_kube::{FakeKube, TokenUser};
use strait_tests::loopback::{http_get, LoggedChild};
use strait_tests::mesh::workspace_binary;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Every wait below is for a push or a status write that takes well under a second; this only bounds a failure.
const PATIENCE: Duration = Duration::from_secs(30);
const GRPC_PORT: u16 = 50051;
const HTTP_PORT: u16 = 8080;
const SYSTEM: &str = "strait-system";

/// Which test's addresses: each test of this file has its own block, so they can run in one process.
#[derive(Clone, Copy)]
struct Slot(u8);

impl Slot {
    /// Loopback addresses of this test process (127.100-149.x.x), so parallel runs don't collide, and of this
    /// test (`c` is at most 9).
    fn ip(self, c: u8, d: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, 100 + (std::process::id() % 50) as u8, self.0 * 10 + c, d)
    }

    fn client(self) -> Ipv4Addr {
        self.ip(1, 1)
    }

    fn admin(self, node: &str) -> SocketAddr {
        SocketAddr::from((if node == "node-a" { self.ip(1, 100) } else { self.ip(2, 100) }, 15000))
    }
}

/// The GRPCRoute of Gateway API's GRPCRoute guide, attached to the `echo` Service (GAMMA) instead of a
/// Gateway: a method match with a header modifier, and a weighted split for everything else.
const GRPC_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: echo
  namespace: shop
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 50051
  rules:
  - matches:
    - method:
        service: strait.test.Echo
        method: Stream
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add:
        - name: x-route
          value: stream
    backendRefs:
    - name: echo-v2
      port: 50051
  - backendRefs:
    - name: echo-v1
      port: 50051
      weight: 3
    - name: echo-v2
      port: 50051
      weight: 1
"#;

/// The `web` Service split between a Service and a backend of another kind, which cannot be resolved.
const HTTP_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: web
  namespace: shop
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: web
  rules:
  - backendRefs:
    - name: web-v1
      port: 8080
    - group: multicluster.x-k8s.io
      kind: ServiceImport
      name: web-v1
      port: 8080
"#;

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("the test's YAML parses")
}

async fn eventually<T>(what: &str, check: impl FnMut() -> Option<T>) -> Result<T> {
    strait_tests::loopback::eventually(what, PATIENCE, check).await
}

/// The fake API server with the cluster, the control plane, the backends and both node proxies.
struct World {
    slot: Slot,
    fake: FakeKube,
    running: Option<Running>,
    dir: tempfile::TempDir,
    proxies: Vec<LoggedChild>,
    backends: Vec<tokio::task::JoinHandle<()>>,
}

impl World {
    async fn start(slot: Slot) -> Result<World> {
        let ip = |c, d| slot.ip(c, d);
        let fake = FakeKube::start().await?;
        let put = |o: Value| fake.apply(o).map(|_| ()).map_err(anyhow::Error::from);
        put(objects::namespace(SYSTEM, false))?;
        put(objects::namespace("shop", true))?;
        put(objects::pod("shop", "client", "node-a", &slot.client().to_string(), "client", json!({"app": "client"})))?;
        for (pod, address) in [("echo-v1", ip(2, 1)), ("echo-v2", ip(2, 2))] {
            put(objects::pod("shop", pod, "node-b", &address.to_string(), pod, json!({"app": pod})))?;
        }
        // Services: the parents (`echo`, `web`) and the backends the routes name.
        let services = [
            ("echo", ip(9, 1), GRPC_PORT, "grpc", ip(2, 1)),
            ("echo-v1", ip(9, 2), GRPC_PORT, "grpc", ip(2, 1)),
            ("echo-v2", ip(9, 3), GRPC_PORT, "grpc", ip(2, 2)),
            ("web", ip(9, 4), HTTP_PORT, "http", ip(2, 1)),
            ("web-v1", ip(9, 5), HTTP_PORT, "http", ip(2, 1)),
        ];
        for (name, vip, port, protocol, endpoint) in services {
            put(objects::service_with_port("shop", name, &vip.to_string(), port, Some(protocol)))?;
            put(objects::endpoint_slice("shop", name, port, &[endpoint.to_string()]))?;
        }
        let dir = tempfile::tempdir()?;
        for node in ["node-a", "node-b"] {
            let token = format!("token-{node}");
            let user =
                TokenUser::service_account(SYSTEM, "strait-proxy", "strait-control").with_extra(NODE_NAME_EXTRA, node);
            fake.add_token(&token, user);
            std::fs::write(dir.path().join(format!("{node}.token")), &token)?;
        }
        let options = KubeOptions { listen: SocketAddr::from((ip(0, 1), 0)), ..Default::default() };
        let running = strait_control::kube::start(fake.client()?, options).await.context("the control plane")?;
        std::fs::write(dir.path().join("root.pem"), running.root_pem())?;

        let mut backends = Vec::new();
        for (address, port, name, version) in [
            (ip(2, 1), GRPC_PORT, "echo-v1", "v1"),
            (ip(2, 2), GRPC_PORT, "echo-v2", "v2"),
            (ip(2, 1), HTTP_PORT, "web-v1", "v1"),
        ] {
            let config = HttpConfig { name: name.into(), version: version.into(), ..Default::default() };
            let listen = SocketAddr::from((address, port));
            backends.push(tokio::spawn(async move {
                if let Err(e) = server::http(listen, config).await {
                    eprintln!("backend on {listen}: {e:#}");
                }
            }));
        }
        let mut world = World { slot, fake, running: Some(running), dir, proxies: Vec::new(), backends };
        for node in ["node-a", "node-b"] {
            let proxy = world.start_proxy(node)?;
            world.proxies.push(proxy);
        }
        for node in ["node-a", "node-b"] {
            let admin = slot.admin(node);
            let ready = eventually(&format!("{node}'s proxy ready"), || {
                matches!(http_get(admin, "/ready"), Some((200, _))).then_some(())
            })
            .await;
            if let Err(e) = ready {
                bail!("{e}\n{}", world.logs());
            }
        }
        Ok(world)
    }

    fn start_proxy(&self, node: &str) -> Result<LoggedChild> {
        let running = self.running.as_ref().context("the control plane runs")?;
        let admin = self.slot.admin(node);
        let path = |name: &str| self.dir.path().join(name).to_string_lossy().to_string();
        let mut args: Vec<String> = vec![
            "--node".into(),
            node.into(),
            "--mode".into(),
            "explicit".into(),
            "--trust-domain".into(),
            "cluster.local".into(),
            "--control-plane".into(),
            running.local_addr().to_string(),
            "--token-file".into(),
            path(&format!("{node}.token")),
            "--root-cert".into(),
            path("root.pem"),
            "--admin".into(),
            admin.to_string(),
            "--metrics".into(),
            SocketAddr::from((admin.ip(), 15020)).to_string(),
        ];
        if node == "node-a" {
            args.push("--bind-services".into());
        }
        LoggedChild::spawn(node, &workspace_binary("strait-proxy")?, &args, &[], self.dir.path())
    }

    fn logs(&self) -> String {
        self.proxies.iter().map(|p| format!("--- {} ---\n{}\n", p.name, p.log_tail(40))).collect()
    }

    /// The condition `type_` of the parent entry Strait wrote in the route's status.
    fn condition(&self, kind: &str, name: &str, type_: &str) -> Option<Value> {
        let object = self.fake.get(kind, "shop", name)?;
        let parents = object.pointer("/status/parents")?.as_array()?.clone();
        let ours = parents.into_iter().find(|p| p["controllerName"] == "strait.dev/mesh")?;
        ours["conditions"].as_array()?.iter().find(|c| c["type"] == type_).cloned()
    }

    /// Waits for the condition to have `status` and returns its reason.
    async fn condition_is(&self, kind: &str, name: &str, type_: &str, status: &str) -> Result<String> {
        let condition = eventually(&format!("{kind} {name}: {type_}={status}"), || {
            self.condition(kind, name, type_).filter(|c| c["status"] == status)
        })
        .await?;
        Ok(condition["reason"].as_str().unwrap_or_default().to_string())
    }

    async fn stop(mut self) {
        self.proxies.clear();
        for backend in &self.backends {
            backend.abort();
        }
        if let Some(running) = self.running.take() {
            running.shutdown().await;
        }
    }
}

/// A TCP connection from the client pod's address (explicit mode tells workloads apart by source address).
async fn connect_as_client(slot: Slot, to: SocketAddr) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((slot.client(), 0)))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to)).await.context("connect timed out")?.context(to)
}

/// What one gRPC call came back with.
#[derive(Debug)]
struct Answer {
    http_status: u16,
    grpc_status: Option<String>,
    version: Option<String>,
    /// The `x-route` metadata as the backend received it.
    route_header: Option<String>,
    echoed: usize,
}

/// One call of `path` with one message, on `sender`'s connection.
async fn call(sender: &mut hyper::client::conn::http2::SendRequest<grpc::ChannelBody>, path: &str) -> Result<Answer> {
    let mut call = grpc::start_call(sender, "echo.shop:50051", path, Some(b"hello")).await?;
    let messages = call.finish().await?;
    let header = |name: &str| call.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    Ok(Answer {
        http_status: call.status.as_u16(),
        grpc_status: call.grpc_status(),
        version: header("x-backend-version"),
        route_header: header("x-echo-x-route"),
        echoed: messages.len(),
    })
}

/// `count` calls of `path` to the `echo` Service, on one connection.
async fn calls(slot: Slot, path: &str, count: usize) -> Result<Vec<Answer>> {
    let to = SocketAddr::from((slot.ip(9, 1), GRPC_PORT));
    let mut sender = grpc::connect(connect_as_client(slot, to).await?).await?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(call(&mut sender, path).await?);
    }
    Ok(out)
}

/// `GET /` on the `web` Service, one connection per request: the status.
async fn web_get(slot: Slot) -> Result<u16> {
    let mut stream = connect_as_client(slot, SocketAddr::from((slot.ip(9, 4), HTTP_PORT))).await?;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: web.shop\r\nconnection: close\r\n\r\n").await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await.context("no answer")??;
    let text = String::from_utf8_lossy(&response);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("not an HTTP answer: {text:?}"))
}

/// GRPCRoute from the cluster: a method match routes to one backend and its header modifier arrives, the rest
/// is split by weight, the status says Accepted and ResolvedRefs. Then a backendRef to a Service that does not
/// exist: only its share of calls fails, with UNAVAILABLE (HTTP 503), and ResolvedRefs turns False.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_from_the_cluster_routes_methods_splits_and_reports_status() -> Result<()> {
    let world = World::start(Slot(0)).await?;
    world.fake.apply(yaml(GRPC_ROUTE))?;
    ensure!(world.condition_is("GRPCRoute", "echo", "Accepted", "True").await? == "Accepted");
    ensure!(world.condition_is("GRPCRoute", "echo", "ResolvedRefs", "True").await? == "ResolvedRefs");
    // The status is written from the snapshot the proxies get; wait for the route to reach node-a too.
    eventually("the GRPCRoute at node-a", || {
        http_get(world.slot.admin("node-a"), "/config_dump").filter(|(_, dump)| dump.contains("grpcroute.echo"))
    })
    .await?;

    // The method match: every Stream call to echo-v2, with the header the filter added.
    let stream = calls(world.slot, grpc::STREAM, 20).await?;
    for answer in &stream {
        ensure!(answer.grpc_status.as_deref() == Some("0") && answer.echoed == 1, "{answer:?}\n{}", world.logs());
        ensure!(answer.version.as_deref() == Some("v2"), "Stream goes to echo-v2: {answer:?}");
        ensure!(answer.route_header.as_deref() == Some("stream"), "x-route added by the filter: {answer:?}");
    }

    // The split: Unary calls 3:1 between echo-v1 and echo-v2, without the Stream rule's header. 400 calls:
    // echo-v2 expects 100 (standard deviation 8.7), so 60..=140 holds unless the weights are not applied.
    let unary = calls(world.slot, grpc::UNARY, 400).await?;
    let v2 = unary.iter().filter(|a| a.version.as_deref() == Some("v2")).count();
    let ok = unary.iter().filter(|a| a.grpc_status.as_deref() == Some("0")).count();
    ensure!(ok == 400, "every call answered: {:?}", unary.iter().find(|a| a.grpc_status.as_deref() != Some("0")));
    ensure!((60..=140).contains(&v2), "about a quarter to echo-v2: {v2} of 400");
    ensure!(unary.iter().all(|a| a.route_header.is_none()), "the Stream rule's filter only applies there");

    // A backendRef to a Service that does not exist, weighted as echo-v1: the route stays accepted, half of
    // the calls fail with UNAVAILABLE (HTTP 503, gRPC's mapping), the other half reach echo-v1.
    let broken = GRPC_ROUTE.replace(
        "    - name: echo-v2\n      port: 50051\n      weight: 1\n",
        "    - name: echo-v3\n      port: 50051\n      weight: 3\n",
    );
    ensure!(broken != GRPC_ROUTE, "the edit applies");
    world.fake.apply(yaml(&broken))?;
    let reason = world.condition_is("GRPCRoute", "echo", "ResolvedRefs", "False").await?;
    ensure!(reason == "BackendNotFound", "{reason}");
    let message = world.condition("GRPCRoute", "echo", "ResolvedRefs").map(|c| c["message"].to_string());
    ensure!(
        message
            .as_deref()
            .unwrap_or_default()
            .contains("spec.rules[1].backendRefs[1]: Service shop/echo-v3 does not exist"),
        "{message:?}"
    );
    ensure!(world.condition_is("GRPCRoute", "echo", "Accepted", "True").await? == "Accepted");
    let mut failed = 0;
    let mut answered = 0;
    let deadline = Instant::now() + PATIENCE;
    // Until the proxy serves the edit (the first 503), then 200 calls counted.
    while failed == 0 || failed + answered < 200 {
        ensure!(Instant::now() < deadline, "no UNAVAILABLE share after the edit\n{}", world.logs());
        for answer in calls(world.slot, grpc::UNARY, 20).await? {
            match (answer.http_status, answer.version.as_deref()) {
                (503, _) => failed += 1,
                (200, Some("v1")) if failed > 0 => answered += 1,
                // Before the proxy has the edit.
                (200, Some("v1" | "v2")) if failed == 0 => {}
                _ => bail!("neither echo-v1 nor UNAVAILABLE: {answer:?}"),
            }
        }
    }
    ensure!((60..=150).contains(&failed), "about half UNAVAILABLE: {failed} failed, {answered} answered");
    world.stop().await;
    Ok(())
}

/// HTTPRoute from the cluster with a backendRef of another kind than Service: accepted, ResolvedRefs=False
/// with reason InvalidKind, and that backend's share of requests (half) answered 500, the rest served; then
/// a port the Service does not have: BackendNotFound, naming the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_route_backend_of_another_kind_gets_its_share_of_500s() -> Result<()> {
    let world = World::start(Slot(1)).await?;
    world.fake.apply(yaml(HTTP_ROUTE))?;
    ensure!(world.condition_is("HTTPRoute", "web", "Accepted", "True").await? == "Accepted");
    let reason = world.condition_is("HTTPRoute", "web", "ResolvedRefs", "False").await?;
    ensure!(reason == "InvalidKind", "{reason}");
    eventually("the HTTPRoute at node-a", || {
        http_get(world.slot.admin("node-a"), "/config_dump").filter(|(_, dump)| dump.contains("httproute.web"))
    })
    .await?;
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..200 {
        *statuses.entry(web_get(world.slot).await?).or_insert(0) += 1;
    }
    let (ok, errors) = (statuses.get(&200).copied().unwrap_or(0), statuses.get(&500).copied().unwrap_or(0));
    ensure!(ok + errors == 200, "only 200 and 500: {statuses:?}\n{}", world.logs());
    // Binomial(200, 0.5): standard deviation 7, so 60..=140 holds unless the share is wrong.
    ensure!((60..=140).contains(&errors), "about half answered 500: {statuses:?}");

    // The same backend as a Service, on a port it does not have: still half 500 (the same pushed rule), and
    // ResolvedRefs says why.
    let wrong_port = HTTP_ROUTE.replace(
        "    - group: multicluster.x-k8s.io\n      kind: ServiceImport\n      name: web-v1\n      port: 8080\n",
        "    - name: web-v1\n      port: 9999\n",
    );
    ensure!(wrong_port != HTTP_ROUTE, "the edit applies");
    world.fake.apply(yaml(&wrong_port))?;
    let not_found = eventually("ResolvedRefs=False, BackendNotFound", || {
        world.condition("HTTPRoute", "web", "ResolvedRefs").filter(|c| c["reason"] == "BackendNotFound")
    })
    .await?;
    let message = not_found["message"].as_str().unwrap_or_default();
    ensure!(message.contains("spec.rules[0].backendRefs[1].port: Service shop/web-v1 has no port 9999"), "{message}");
    world.stop().await;
    Ok(())
}
