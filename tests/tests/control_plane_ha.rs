//! High availability of the control plane (issue 17): leader election with a `coordination.k8s.io/v1` Lease
//! against the fake API server; only the leader writes status; two `strait-control --kubernetes` replicas on
//! one address (SO_REUSEPORT, as a Service spreads proxies over its pods) with two real `strait-proxy`
//! processes in explicit mode on loopback; the leader is SIGKILLed mid-run, the other replica takes over status
//! writes, and the proxies keep carrying traffic and converge on the next change.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use strait_control::kube::leader::{self, LeaseSettings};
use strait_control::kube::{KubeDiscovery, StatusWrites};
use strait_control::Discovery as _;
use strait_tests::fake_kube::objects::{self, NODE_NAME_EXTRA};
use strait_tests::fake_kube::{FakeKube, TokenUser};
use strait_tests::loopback::{http_get, LoggedChild};
use strait_tests::mesh::workspace_binary;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;

const NAMESPACE: &str = "strait-system";
const LEASE_NAME: &str = "strait-control";
/// Long enough for two replicas on a loaded 2-core machine to renew in time, short enough for a quick test.
const LEASE_SECONDS: u64 = 3;
/// Every wait below is for something that happens within a few lease durations; this only bounds a failure.
const PATIENCE: Duration = Duration::from_secs(60);

async fn eventually<T>(what: &str, check: impl FnMut() -> Option<T>) -> Result<T> {
    strait_tests::loopback::eventually(what, PATIENCE, check).await
}

fn holder(fake: &FakeKube) -> Option<String> {
    let lease = fake.get("Lease", NAMESPACE, LEASE_NAME)?;
    lease.pointer("/spec/holderIdentity")?.as_str().filter(|h| !h.is_empty()).map(str::to_string)
}

fn settings(identity: &str) -> LeaseSettings {
    LeaseSettings {
        namespace: NAMESPACE.into(),
        name: LEASE_NAME.into(),
        identity: identity.into(),
        duration: Duration::from_secs(LEASE_SECONDS),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The fake API server's Leases, and the elector on its own
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_fake_api_server_keeps_leases_and_refuses_stale_writes() -> Result<()> {
    let fake = FakeKube::start().await?;
    let api: Api<Lease> = Api::namespaced(fake.client()?, NAMESPACE);
    let lease = Lease {
        metadata: ObjectMeta { name: Some("l".into()), ..Default::default() },
        spec: Some(LeaseSpec { holder_identity: Some("a".into()), ..Default::default() }),
    };
    let created = api.create(&PostParams::default(), &lease).await?;
    let again = api.create(&PostParams::default(), &lease).await;
    assert!(matches!(again, Err(kube::Error::Api(ref s)) if s.code == 409), "a second create: {again:?}");

    let mut mine = api.get("l").await?;
    assert_eq!(mine.metadata.resource_version, created.metadata.resource_version);
    let mut theirs = mine.clone();
    theirs.spec.get_or_insert_default().holder_identity = Some("b".into());
    api.replace("l", &PostParams::default(), &theirs).await.context("the first writer wins")?;
    mine.spec.get_or_insert_default().holder_identity = Some("a".into());
    let stale = api.replace("l", &PostParams::default(), &mine).await;
    assert!(matches!(stale, Err(kube::Error::Api(ref s)) if s.code == 409), "a stale replace: {stale:?}");
    let stored = api.get("l").await?;
    assert_eq!(stored.spec.and_then(|s| s.holder_identity).as_deref(), Some("b"));
    assert!(api.get_opt("missing").await?.is_none());
    Ok(())
}

/// One elector in its own task, as a replica runs it: its leadership flag, and the handles to crash or drain it.
struct Elector {
    leading: watch::Receiver<bool>,
    drain: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn elect(fake: &FakeKube, identity: &str) -> Result<Elector> {
    let (leader_tx, leading) = watch::channel(false);
    let (drain, drain_rx) = watch::channel(false);
    let task = tokio::spawn(leader::run(fake.client()?, settings(identity), leader_tx, drain_rx));
    Ok(Elector { leading, drain, task })
}

#[tokio::test]
async fn one_of_two_electors_leads_and_the_other_takes_over_when_it_crashes_or_drains() -> Result<()> {
    let fake = FakeKube::start().await?;
    let a = elect(&fake, "replica-a")?;
    let b = elect(&fake, "replica-b")?;
    let first = eventually("a leader", || holder(&fake)).await?;
    let (leader, follower) = if first == "replica-a" { (a, b) } else { (b, a) };
    let follower_name = if first == "replica-a" { "replica-b" } else { "replica-a" };
    eventually("the leader knows it leads", || (*leader.leading.borrow()).then_some(())).await?;
    // Several renewals later, still one leader and the other follows.
    let renewed = |fake: &FakeKube| {
        fake.get("Lease", NAMESPACE, LEASE_NAME).and_then(|l| l["spec"]["renewTime"].as_str().map(str::to_string))
    };
    let before = renewed(&fake);
    eventually("a renewal", || (renewed(&fake) != before).then_some(())).await?;
    assert_eq!(holder(&fake).as_deref(), Some(first.as_str()));
    assert!(!*follower.leading.borrow(), "two leaders");

    // The leader crashes (its task is gone, nothing released): the follower takes over once the lease expires.
    leader.task.abort();
    eventually("the follower takes over", || (holder(&fake).as_deref() == Some(follower_name)).then_some(())).await?;
    eventually("the new leader knows it", || (*follower.leading.borrow()).then_some(())).await?;
    let lease = fake.get("Lease", NAMESPACE, LEASE_NAME).context("the Lease")?;
    assert_eq!(lease["spec"]["leaseTransitions"], json!(2), "{lease}");

    // A third replica joins; the leader drains and releases the Lease, so the newcomer takes it.
    let c = elect(&fake, "replica-c")?;
    follower.drain.send_replace(true);
    eventually("the drained leader steps down", || (!*follower.leading.borrow()).then_some(())).await?;
    eventually("the newcomer takes the released Lease", || {
        (holder(&fake).as_deref() == Some("replica-c")).then_some(())
    })
    .await?;
    eventually("the newcomer knows it", || (*c.leading.borrow()).then_some(())).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Status writes follow leadership
// ---------------------------------------------------------------------------------------------------------

fn route_status_generation(fake: &FakeKube, ns: &str, name: &str) -> Option<i64> {
    fake.get("TrafficRoute", ns, name)?.pointer("/status/observedGeneration")?.as_i64()
}

#[tokio::test]
async fn a_follower_judges_but_writes_no_status_until_it_leads() -> Result<()> {
    let fake = FakeKube::start().await?;
    for object in [
        objects::namespace("shop", true),
        objects::pod("shop", "web-v1", "node-a", "10.0.0.1", "web", json!({"app": "web", "version": "v1"})),
        objects::service_with_port("shop", "web", "10.96.0.1", 8080, Some("http")),
        objects::versioned_policy("shop", "web"),
        objects::weighted_route("shop", "web", 90),
    ] {
        fake.apply(object)?;
    }
    let (leading_tx, leading) = watch::channel(false);
    let discovery =
        KubeDiscovery::new(fake.client()?, "cluster.local").with_status(StatusWrites::WhileLeading(leading));
    let (out, mut discovered) = watch::channel(Arc::default());
    let task = tokio::spawn(Box::new(discovery).run(out));
    discovered.changed().await.context("a first discovered state")?;
    eventually("the route discovered", || {
        discovered.borrow().objects.iter().any(|o| o.object.key().name == "web").then_some(())
    })
    .await?;
    // Give a (wrong) status write every chance to happen: another change goes through discovery meanwhile.
    fake.apply(objects::pod("shop", "web-v2", "node-a", "10.0.0.2", "web", json!({"app": "web", "version": "v2"})))?;
    eventually("the second pod discovered", || {
        discovered.borrow().objects.iter().any(|o| o.object.key().name == "web-v2").then_some(())
    })
    .await?;
    let writes = fake.requests().iter().filter(|r| r.path.ends_with("/status")).count();
    assert_eq!(writes, 0, "a follower wrote status");
    assert_eq!(route_status_generation(&fake, "shop", "web"), None);

    leading_tx.send_replace(true);
    eventually("the new leader writes the route's status", || route_status_generation(&fake, "shop", "web")).await?;
    task.abort();
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Two replicas, two proxies, the leader killed
// ---------------------------------------------------------------------------------------------------------

/// Loopback addresses of this test process (127.50-99.x.x), so parallel runs don't collide.
fn ip(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 50 + (std::process::id() % 50) as u8, c, d)
}

const ECHO_PORT: u16 = 7070;

struct Cluster {
    fake: FakeKube,
    dir: tempfile::TempDir,
    control: SocketAddr,
}

impl Cluster {
    async fn new() -> Result<Cluster> {
        let fake = FakeKube::start().await?;
        let put = |o: Value| fake.apply(o).map(|_| ()).map_err(anyhow::Error::from);
        put(objects::namespace(NAMESPACE, false))?;
        put(objects::namespace("shop", true))?;
        put(objects::pod("shop", "client", "node-a", &ip(1, 1).to_string(), "client", json!({"app": "client"})))?;
        put(objects::pod("shop", "echo-1", "node-b", &ip(2, 1).to_string(), "echo", json!({"app": "echo"})))?;
        put(objects::service_with_port("shop", "echo", &ip(9, 1).to_string(), ECHO_PORT, None))?;
        put(objects::endpoint_slice("shop", "echo", ECHO_PORT, &[ip(2, 1).to_string()]))?;
        // An HTTP service with a route and its policy: the resources whose status the leader writes.
        put(objects::pod(
            "shop",
            "web-v1",
            "node-b",
            &ip(2, 9).to_string(),
            "web",
            json!({"app": "web", "version": "v1"}),
        ))?;
        put(objects::service_with_port("shop", "web", &ip(9, 2).to_string(), 8080, Some("http")))?;
        put(objects::endpoint_slice("shop", "web", 8080, &[ip(2, 9).to_string()]))?;
        put(objects::versioned_policy("shop", "web"))?;
        put(objects::weighted_route("shop", "web", 90))?;
        let dir = tempfile::tempdir()?;
        for node in ["node-a", "node-b"] {
            let token = format!("token-{node}");
            let user = TokenUser::service_account(NAMESPACE, "strait-proxy", "strait-control")
                .with_extra(NODE_NAME_EXTRA, node);
            fake.add_token(&token, user);
            std::fs::write(dir.path().join(format!("{node}.token")), &token)?;
        }
        Ok(Cluster { fake, dir, control: SocketAddr::from((ip(0, 1), 15012)) })
    }

    fn monitoring(replica: u8) -> SocketAddr {
        SocketAddr::from((ip(0, 10 + replica), 15014))
    }

    fn start_replica(&self, replica: u8) -> Result<LoggedChild> {
        let kubeconfig = self.fake.write_kubeconfig(self.dir.path())?;
        let args = [
            "--kubernetes".to_string(),
            format!("--listen={}", self.control),
            format!("--monitoring={}", Self::monitoring(replica)),
            format!("--pod-name=replica-{replica}"),
            format!("--leader-lease-duration={LEASE_SECONDS}s"),
        ];
        let kubeconfig = kubeconfig.to_string_lossy().to_string();
        LoggedChild::spawn(
            &format!("replica-{replica}"),
            &workspace_binary("strait-control")?,
            &args,
            &[("KUBECONFIG", &kubeconfig), ("RUST_LOG", "info,kube=warn")],
            self.dir.path(),
        )
    }

    fn admin(node: &str) -> SocketAddr {
        SocketAddr::from((if node == "node-a" { ip(1, 100) } else { ip(2, 100) }, 15000))
    }

    fn start_proxy(&self, node: &str) -> Result<LoggedChild> {
        let root = self
            .fake
            .get("ConfigMap", NAMESPACE, "strait-root-cert")
            .and_then(|c| c["data"]["root.pem"].as_str().map(str::to_string))
            .context("the control plane published the root certificate")?;
        let root_file = self.dir.path().join("root.pem");
        std::fs::write(&root_file, root)?;
        let admin = Self::admin(node);
        let mut args: Vec<String> = [
            "--node",
            node,
            "--mode",
            "explicit",
            "--trust-domain",
            "cluster.local",
            "--control-plane",
            &self.control.to_string(),
            "--token-file",
            &self.dir.path().join(format!("{node}.token")).to_string_lossy(),
            "--root-cert",
            &root_file.to_string_lossy(),
            "--admin",
            &admin.to_string(),
            "--metrics",
            &SocketAddr::from((admin.ip(), 15020)).to_string(),
        ]
        .map(str::to_string)
        .to_vec();
        if node == "node-a" {
            args.push("--bind-services".into());
        }
        LoggedChild::spawn(node, &workspace_binary("strait-proxy")?, &args, &[], self.dir.path())
    }

    /// Whether the replica on `replica`'s monitoring port says it leads.
    fn leads(replica: u8) -> Option<bool> {
        let (_, body) = http_get(Self::monitoring(replica), "/debug/proxies")?;
        serde_json::from_str::<Value>(&body).ok()?["leader"].as_bool()
    }

    fn config_dump(node: &str) -> String {
        http_get(Self::admin(node), "/config_dump").map(|(_, body)| body).unwrap_or_default()
    }
}

/// One exchange with the echo service through node-a's proxy, as the client pod (its address as the source).
async fn echo_once(payload: &[u8]) -> Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip(1, 1), 0)))?;
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect((ip(9, 1), ECHO_PORT).into()))
        .await
        .context("connect timed out")??;
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut back)).await.context("read timed out")??;
    anyhow::ensure!(back == payload, "echoed {} bytes, sent {}", back.len(), payload.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_moves_status_writes_and_proxies_to_the_other_replica() -> Result<()> {
    let cluster = Cluster::new().await?;
    // echo-1, and echo-2 that joins the service mid-run.
    for listen in [SocketAddr::from((ip(2, 1), ECHO_PORT)), SocketAddr::from((ip(2, 2), ECHO_PORT))] {
        tokio::spawn(async move {
            if let Err(e) = strait_tests::backend::server::tcp_echo(listen).await {
                eprintln!("echo on {listen}: {e:#}");
            }
        });
    }
    let mut replicas = vec![Some(cluster.start_replica(0)?)];
    eventually("the first replica's root certificate", || cluster.fake.get("ConfigMap", NAMESPACE, "strait-root-cert"))
        .await?;
    replicas.push(Some(cluster.start_replica(1)?));
    let leader = eventually("a leader", || holder(&cluster.fake)).await?;
    let (leader_index, survivor) = if leader == "replica-0" { (0u8, 1u8) } else { (1, 0) };
    eventually("both replicas report their role", || {
        (Cluster::leads(leader_index) == Some(true) && Cluster::leads(survivor) == Some(false)).then_some(())
    })
    .await?;
    eventually("the leader writes the route's status", || route_status_generation(&cluster.fake, "shop", "web"))
        .await?;

    let _proxies = [cluster.start_proxy("node-a")?, cluster.start_proxy("node-b")?];
    for node in ["node-a", "node-b"] {
        eventually(&format!("{node} ready"), || {
            matches!(http_get(Cluster::admin(node), "/ready"), Some((200, _))).then_some(())
        })
        .await?;
    }
    let mut first = Err(anyhow::anyhow!("not tried"));
    for _ in 0..100 {
        first = echo_once(b"before").await;
        if first.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.context("traffic through node-a's and node-b's proxies before the kill")?;

    // Traffic keeps flowing from now on; every exchange must succeed.
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (stop, mut stopped) = watch::channel(false);
    let traffic = {
        let (sent, failed) = (sent.clone(), failed.clone());
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !*stopped.borrow_and_update() {
                sent.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = echo_once(b"during the failover").await {
                    failed.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("{e:#}"));
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), stopped.changed()).await;
            }
            errors
        })
    };

    let killed_at = Instant::now();
    if let Some(mut replica) = replicas[usize::from(leader_index)].take() {
        replica.kill();
    }
    let new_leader = format!("replica-{survivor}");
    eventually("the survivor takes the Lease", || {
        (holder(&cluster.fake).as_deref() == Some(new_leader.as_str())).then_some(())
    })
    .await?;
    eventually("the survivor reports it leads", || (Cluster::leads(survivor) == Some(true)).then_some(())).await?;
    let took_over = killed_at.elapsed();

    // The next change: a new route generation gets its status from the new leader, and a new echo pod reaches
    // both proxies through the survivor.
    let before = cluster.fake.get("TrafficRoute", "shop", "web").and_then(|r| r["metadata"]["generation"].as_i64());
    cluster.fake.apply(objects::weighted_route("shop", "web", 50))?;
    let generation = cluster.fake.get("TrafficRoute", "shop", "web").and_then(|r| r["metadata"]["generation"].as_i64());
    assert!(generation > before, "the route change is a new generation");
    eventually("the new leader writes the new generation's status", || {
        (route_status_generation(&cluster.fake, "shop", "web") == generation).then_some(())
    })
    .await?;
    cluster.fake.apply(objects::pod(
        "shop",
        "echo-2",
        "node-b",
        &ip(2, 2).to_string(),
        "echo",
        json!({"app": "echo"}),
    ))?;
    // Behind the echo service, which node-a uses: with on-demand discovery node-a learns of pods behind the
    // services it subscribed to (and node-b of its own).
    cluster.fake.apply(objects::endpoint_slice(
        "shop",
        "echo",
        ECHO_PORT,
        &[ip(2, 1).to_string(), ip(2, 2).to_string()],
    ))?;
    for node in ["node-a", "node-b"] {
        eventually(&format!("{node} converges on the change"), || {
            Cluster::config_dump(node).contains("echo-2").then_some(())
        })
        .await?;
    }
    let (_, status) = http_get(Cluster::monitoring(survivor), "/debug/proxies").context("the survivor's status")?;
    let status: Value = serde_json::from_str(&status)?;
    for node in ["node-a", "node-b"] {
        let proxy = status["proxies"].as_array().and_then(|p| p.iter().find(|p| p["node"] == node)).cloned();
        let proxy = proxy.with_context(|| format!("{node} in the survivor's status: {status}"))?;
        assert!(proxy["connectedStreams"].as_u64() >= Some(1), "{node} is connected to the survivor: {proxy}");
    }

    stop.send_replace(true);
    let errors = traffic.await?;
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("failover: the survivor led {took_over:?} after the kill (lease {LEASE_SECONDS}s); {sent} exchanges, {failed} failed");
    assert_eq!(failed, 0, "traffic failed during the failover: {errors:?}");
    assert!(sent > 0);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// On-demand discovery (protocol 3) through real proxies
// ---------------------------------------------------------------------------------------------------------

/// One HTTP/1.1 GET to the web service through node-a's proxy, as the client pod: the status line's code.
async fn web_once() -> Result<u16> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip(1, 1), 0)))?;
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect((ip(9, 2), 8080).into()))
        .await
        .context("connect timed out")??;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n").await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut back)).await.context("read timed out")??;
    let text = String::from_utf8_lossy(&back);
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok());
    code.with_context(|| format!("not an HTTP response: {text:?}"))
}

fn discovery_count(node: &str, result: &str) -> f64 {
    let metrics = SocketAddr::from((Cluster::admin(node).ip(), 15020));
    let (_, text) = http_get(metrics, "/metrics").unwrap_or_default();
    strait_tests::mesh::sum_metric(&text, "strait_discovery_requests_total", &[("result", result)])
}

/// The proxies speak protocol 3 (their default): node-a holds no endpoint of a service until a pod of its
/// connects to it, then waits for the answer; with the control plane gone, what it discovered keeps working
/// and what it did not is refused (fail closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_discover_services_on_first_use_and_refuse_the_undiscovered_without_a_control_plane() -> Result<()> {
    let cluster = Cluster::new().await?;
    let echo = SocketAddr::from((ip(2, 1), ECHO_PORT));
    tokio::spawn(async move {
        if let Err(e) = strait_tests::backend::server::tcp_echo(echo).await {
            eprintln!("echo on {echo}: {e:#}");
        }
    });
    let mut replica = cluster.start_replica(0)?;
    eventually("the root certificate", || cluster.fake.get("ConfigMap", NAMESPACE, "strait-root-cert")).await?;
    let _proxies = [cluster.start_proxy("node-a")?, cluster.start_proxy("node-b")?];
    for node in ["node-a", "node-b"] {
        eventually(&format!("{node} ready"), || {
            matches!(http_get(Cluster::admin(node), "/ready"), Some((200, _))).then_some(())
        })
        .await?;
    }
    let dump = Cluster::config_dump("node-a");
    assert!(!dump.contains("echo-1"), "node-a knows no pod of another node before using it: {dump}");
    assert!(dump.contains(&ip(9, 1).to_string()), "but every service's address: {dump}");

    // The first connection to echo waits for discovery, then goes through the tunnel to node-b.
    echo_once(b"first use").await.context("a connection to a service node-a never used")?;
    assert!(discovery_count("node-a", "answered") >= 1.0, "node-a subscribed to echo");
    assert!(discovery_count("node-b", "answered") >= 1.0, "node-b discovered the calling pod");
    assert!(Cluster::config_dump("node-a").contains("echo-1"), "node-a now holds echo's pod");

    // The control plane goes away: echo keeps working from what node-a holds; web, never used, is refused.
    replica.kill();
    echo_once(b"without a control plane").await.context("a discovered service without the control plane")?;
    let refused = web_once().await;
    assert!(refused.is_err(), "an undiscovered service is refused without a control plane: {refused:?}");
    assert!(discovery_count("node-a", "unavailable") >= 1.0, "and counted");
    Ok(())
}
