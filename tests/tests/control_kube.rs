//! The control plane in Kubernetes mode, with the real kube client and kube-runtime watchers against the
//! fake API server (`strait_tests::fake_kube`), and the node proxy's real control-plane client on loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strait_api::MeshConfig;
use strait_certs::{CertIssuer, Identity};
use strait_control::kube::KubeOptions;
use strait_control::Running;
use strait_proxy::control_plane::{Backoff, ControlPlaneClient};
use strait_tests::fake_kube::objects::{namespace, pod, proxy_pod, service, slice};
use strait_tests::fake_kube::{FakeKube, TokenUser};
use tokio::sync::mpsc;

const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// Bound to node-a by the token itself.
const TOKEN_A: &str = "proxy-token-node-a";
/// Bound to node-b through its pod (older clusters name only the pod).
const TOKEN_B: &str = "proxy-token-node-b";
/// A valid token of another ServiceAccount.
const TOKEN_OTHER: &str = "token-of-someone-else";

fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info,kube=warn").try_init();
}

// ---------------------------------------------------------------------------------------------------------
// Objects
// ---------------------------------------------------------------------------------------------------------

fn destination_policy() -> Value {
    json!({
        "apiVersion": "strait.dev/v1alpha1", "kind": "DestinationPolicy",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]},
    })
}

fn route(name: &str, subset: &str, regex: &str) -> Value {
    json!({
        "apiVersion": "strait.dev/v1alpha1", "kind": "TrafficRoute",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {"match": [{"uri": {"regex": regex}}], "route": [{"destination": {"host": "reviews", "subset": "v1"}}]},
                {"route": [{"destination": {"host": "reviews", "subset": subset}}]},
            ],
        },
    })
}

/// A small cluster: meshed namespace `shop` with reviews v1 (node-a), reviews v2 and productpage (node-b),
/// an unmeshed `legacy` namespace, the proxies' pods in strait-system, and a route with its policy.
async fn cluster() -> FakeKube {
    let fake = FakeKube::start().await.expect("fake API server");
    let put = |o: Value| {
        fake.apply(o).expect("stored");
    };
    put(namespace("strait-system", false));
    put(namespace("shop", true));
    put(namespace("legacy", false));
    put(pod("shop", "reviews-v1", "node-a", "10.0.1.1", "reviews", json!({"app": "reviews", "version": "v1"})));
    put(pod("shop", "reviews-v2", "node-b", "10.0.2.1", "reviews", json!({"app": "reviews", "version": "v2"})));
    put(pod("shop", "productpage", "node-b", "10.0.2.2", "productpage", json!({"app": "productpage"})));
    put(pod("legacy", "old", "node-a", "10.0.1.9", "default", json!({"app": "old"})));
    put(proxy_pod("strait-proxy-a", "node-a", "192.168.0.1"));
    put(proxy_pod("strait-proxy-b", "node-b", "192.168.0.2"));
    put(service("shop", "reviews", "10.96.0.10"));
    put(slice("shop", "reviews", &["10.0.1.1", "10.0.2.1"]));
    put(destination_policy());
    put(route("reviews", "v1", "/api/.*"));
    let proxy = |extra: (&str, &str)| {
        TokenUser::service_account("strait-system", "strait-proxy", "strait-control").with_extra(extra.0, extra.1)
    };
    fake.add_token(TOKEN_A, proxy((NODE_NAME_EXTRA, "node-a")));
    fake.add_token(TOKEN_B, proxy((POD_NAME_EXTRA, "strait-proxy-b")));
    fake.add_token(
        TOKEN_OTHER,
        TokenUser::service_account("shop", "reviews", "strait-control").with_extra(NODE_NAME_EXTRA, "node-a"),
    );
    fake
}

// ---------------------------------------------------------------------------------------------------------
// Control plane and proxies
// ---------------------------------------------------------------------------------------------------------

async fn start_control(fake: &FakeKube, listen: SocketAddr) -> Running {
    let options = KubeOptions { listen, ..Default::default() };
    strait_control::kube::start(fake.client().expect("kube client"), options).await.expect("control plane starts")
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn client(running: &Running, token: &str, node: &str) -> ControlPlaneClient {
    let identity = strait_control::tls::control_identity("cluster.local").expect("identity");
    ControlPlaneClient::new(running.local_addr().to_string(), identity, running.root_pem(), token, node)
        .expect("client")
        .with_backoff(Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(400) })
}

/// Runs a proxy's client; every configuration it applies comes out of the receiver.
fn spawn_client(client: ControlPlaneClient) -> (mpsc::UnboundedReceiver<MeshConfig>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(client.run(move |config: MeshConfig| {
        let _ = tx.send(config);
        Ok(())
    }));
    (rx, task)
}

/// The first configuration received within `within` that satisfies `check` (earlier ones are skipped).
async fn until(
    rx: &mut mpsc::UnboundedReceiver<MeshConfig>,
    within: Duration,
    what: &str,
    check: impl Fn(&MeshConfig) -> bool,
) -> MeshConfig {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(config)) if check(&config) => return config,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the client stopped while waiting for {what}"),
            Err(_) => panic!("timed out after {within:?} waiting for {what}"),
        }
    }
}

fn default_subset(config: &MeshConfig, route: &str) -> Option<String> {
    let r = config.traffic_routes.iter().find(|r| r.name == route)?;
    r.spec.http.get(1)?.route.first()?.destination.subset.clone()
}

fn node_of(config: &MeshConfig, workload: &str) -> Option<String> {
    config.workloads.iter().find(|w| w.name == workload).map(|w| w.node.clone())
}

async fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The condition `type_` of a resource's status, as stored in the fake API server.
fn condition(fake: &FakeKube, kind: &str, name: &str, type_: &str) -> Option<Value> {
    let object = fake.get(kind, "shop", name)?;
    let conditions = object.pointer("/status/conditions")?.as_array()?.clone();
    conditions.into_iter().find(|c| c["type"] == type_)
}

fn generation(fake: &FakeKube, kind: &str, name: &str) -> Option<i64> {
    fake.get(kind, "shop", name)?.pointer("/metadata/generation")?.as_i64()
}

fn status_writes(fake: &FakeKube) -> usize {
    fake.requests().iter().filter(|r| r.method == "PATCH" && r.path.ends_with("/status")).count()
}

async fn issue(running: &Running, token: &str, node: &str, sa: &str) -> Result<(), String> {
    let identity = Identity::new("cluster.local", "shop", sa).expect("identity");
    client(running, token, node).issuer().issue(&identity).await.map(|_| ()).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------

#[tokio::test]
async fn routes_reach_proxies_and_invalid_ones_are_reported_in_status_not_pushed() {
    init_tracing();
    let fake = cluster().await;
    let running = start_control(&fake, loopback()).await;
    let (mut rx, task) = spawn_client(client(&running, TOKEN_A, "node-a"));

    let first = until(&mut rx, Duration::from_secs(10), "the first configuration", |_| true).await;
    let names: Vec<&str> = first.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["old", "productpage", "reviews-v1", "reviews-v2"], "host-network pods are not workloads");
    let meshed = |name: &str| first.workloads.iter().find(|w| w.name == name).map(|w| w.meshed);
    assert_eq!((meshed("reviews-v1"), meshed("old")), (Some(true), Some(false)), "only meshed namespaces' pods");
    let reviews = first.services.iter().find(|s| s.name == "reviews").expect("the reviews service");
    assert_eq!(reviews.endpoints.len(), 2, "endpoints from the EndpointSlice");
    assert_eq!(reviews.ports[0].app_protocol.as_deref(), Some("http"));
    assert_eq!(default_subset(&first, "reviews").as_deref(), Some("v1"));
    let accepted = eventually("Accepted=True", Duration::from_secs(5), || {
        condition(&fake, "TrafficRoute", "reviews", "Accepted").filter(|c| c["status"] == "True")
    })
    .await;
    assert_eq!(accepted["observedGeneration"], 1);

    // An edit through the API reaches the proxy within a second.
    let started = Instant::now();
    fake.apply(route("reviews", "v2", "/api/.*")).expect("edit");
    let second = until(&mut rx, Duration::from_secs(1), "the edited route", |c| {
        default_subset(c, "reviews").as_deref() == Some("v2")
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(second.workloads.len(), first.workloads.len());

    // A subset that does not exist: refused in status, its last good version stays, and a change made at the
    // same time (a new pod) still flows.
    fake.apply(route("reviews", "v3", "/api/.*")).expect("edit");
    fake.apply(pod("shop", "ratings", "node-a", "10.0.1.2", "ratings", json!({"app": "ratings"}))).expect("pod");
    let third = until(&mut rx, Duration::from_secs(2), "the new pod", |c| node_of(c, "ratings").is_some()).await;
    assert_eq!(default_subset(&third, "reviews").as_deref(), Some("v2"), "the route kept its last good version");
    let refs = eventually("ResolvedRefs=False", Duration::from_secs(5), || {
        condition(&fake, "TrafficRoute", "reviews", "ResolvedRefs").filter(|c| c["status"] == "False")
    })
    .await;
    let message = refs["message"].as_str().unwrap_or_default();
    assert!(message.contains("spec.http[1].route[0].destination.subset: subset \"v3\""), "{message}");
    assert_eq!(refs["observedGeneration"].as_i64(), generation(&fake, "TrafficRoute", "reviews"));
    let accepted = condition(&fake, "TrafficRoute", "reviews", "Accepted").expect("Accepted");
    assert_eq!(accepted["status"], "False", "{accepted}");

    // A bad regex: Accepted=False naming the field; nothing is pushed.
    fake.apply(route("reviews", "v1", "/api/(v1")).expect("edit");
    let invalid = eventually("Accepted=False for the regex", Duration::from_secs(5), || {
        condition(&fake, "TrafficRoute", "reviews", "Accepted")
            .filter(|c| c["message"].as_str().unwrap_or_default().contains("spec.http[0].match[0].uri.regex"))
    })
    .await;
    assert_eq!(invalid["status"], "False");
    assert_eq!(invalid["reason"], "Invalid");
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv()).await.is_err(), "nothing was pushed");

    // A new route that is invalid from the start is never pushed, while the others still are.
    fake.apply(route("ghost", "nope", "/x")).expect("new route");
    eventually("the new route's status", Duration::from_secs(5), || {
        condition(&fake, "TrafficRoute", "ghost", "ResolvedRefs").filter(|c| c["status"] == "False")
    })
    .await;
    fake.apply(route("reviews", "v1", "/api/v[0-9]+")).expect("fix");
    let fixed = until(&mut rx, Duration::from_secs(1), "the fixed route", |c| {
        default_subset(c, "reviews").as_deref() == Some("v1")
    })
    .await;
    assert!(fixed.traffic_routes.iter().all(|r| r.name != "ghost"), "the invalid route is not pushed");
    eventually("Accepted=True again", Duration::from_secs(5), || {
        condition(&fake, "TrafficRoute", "reviews", "Accepted").filter(|c| c["status"] == "True")
    })
    .await;

    // Statuses are written only when they change: our own writes do not cause more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = status_writes(&fake);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status_writes(&fake), writes, "no status writes while nothing changes");

    task.abort();
    running.shutdown().await;
}

/// Issue 21, item 4: a second DestinationPolicy for `reviews` (named to sort first) that only adds a pool
/// limit is merged into the one proxies get, and the route keeps its subsets; a third that sets that limit
/// differently loses to the older policies, says so in its status naming them, and changes nothing that was
/// pushed.
#[tokio::test]
async fn a_second_destination_policy_for_a_host_merges_or_loses_to_the_older_one() {
    init_tracing();
    let fake = cluster().await;
    let running = start_control(&fake, loopback()).await;
    let (mut rx, task) = spawn_client(client(&running, TOKEN_A, "node-a"));
    until(&mut rx, Duration::from_secs(10), "the first configuration", |c| default_subset(c, "reviews").is_some())
        .await;

    let extra = |name: &str, spec: Value| {
        json!({
            "apiVersion": "strait.dev/v1alpha1", "kind": "DestinationPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": spec,
        })
    };
    fake.apply(extra("aaa-extra", json!({"host": "reviews", "connectionPool": {"http": {"maxRequests": 1000}}})))
        .expect("second policy");
    let merged = until(&mut rx, Duration::from_secs(5), "the merged policy", |c| {
        c.destination_policies.iter().any(|p| {
            p.spec.connection_pool.as_ref().and_then(|c| c.http.as_ref()).and_then(|h| h.max_requests) == Some(1000)
        })
    })
    .await;
    let [policy] = &merged.destination_policies[..] else { panic!("one policy per host: {merged:?}") };
    assert_eq!(policy.name, "reviews", "named after the older policy");
    assert_eq!(policy.spec.subsets.len(), 2, "the subsets stay");
    assert_eq!(default_subset(&merged, "reviews").as_deref(), Some("v1"), "the route is still pushed");
    eventually("Accepted=True for the merged newcomer", Duration::from_secs(5), || {
        condition(&fake, "DestinationPolicy", "aaa-extra", "Accepted").filter(|c| c["status"] == "True")
    })
    .await;

    fake.apply(extra("aaa-rival", json!({"host": "reviews", "connectionPool": {"http": {"maxRequests": 5}}})))
        .expect("third policy");
    let conflicted = eventually("Accepted=False, Conflicted", Duration::from_secs(5), || {
        condition(&fake, "DestinationPolicy", "aaa-rival", "Accepted").filter(|c| c["reason"] == "Conflicted")
    })
    .await;
    assert_eq!(conflicted["status"], "False");
    let message = conflicted["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(
            "spec.connectionPool.http.maxRequests: conflicts with DestinationPolicy shop/reviews, merged with shop/aaa-extra"
        ),
        "{message}"
    );
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv()).await.is_err(), "nothing was pushed");
    let accepted = condition(&fake, "DestinationPolicy", "reviews", "Accepted").expect("Accepted");
    assert_eq!(accepted["status"], "True", "the winner stays accepted");

    task.abort();
    running.shutdown().await;
}

#[tokio::test]
async fn workloads_follow_their_pods_across_nodes_and_certificates_only_the_asking_node() {
    init_tracing();
    let fake = cluster().await;
    let running = start_control(&fake, loopback()).await;
    let (mut rx, task) = spawn_client(client(&running, TOKEN_A, "node-a"));
    let first = until(&mut rx, Duration::from_secs(10), "the first configuration", |_| true).await;
    assert_eq!(node_of(&first, "reviews-v1").as_deref(), Some("node-a"));

    // Node binding by the token's node name (node-a) and through the token's pod (strait-proxy-b: node-b).
    issue(&running, TOKEN_A, "node-a", "reviews").await.expect("reviews-v1 runs on node-a");
    let refused = issue(&running, TOKEN_A, "node-a", "productpage").await.expect_err("productpage is on node-b");
    assert!(refused.contains("403"), "{refused}");
    issue(&running, TOKEN_B, "node-b", "productpage").await.expect("productpage runs on node-b");
    let wrong_node = issue(&running, TOKEN_A, "node-b", "productpage").await.expect_err("node-a's token");
    assert!(wrong_node.contains("403"), "{wrong_node}");

    // The pod is rescheduled: deleted, and recreated on node-b with a new address.
    fake.delete("Pod", "shop", "reviews-v1").expect("delete");
    fake.apply(pod("shop", "reviews-v1", "node-b", "10.0.2.7", "reviews", json!({"app": "reviews", "version": "v1"})))
        .expect("recreate");
    // node-a runs no meshed pod any more: it is sent nothing (no traffic passes its proxy). node-b sees the move.
    until(&mut rx, Duration::from_secs(2), "nothing left for node-a", |c| c.workloads.is_empty()).await;
    let (mut rx_b, task_b) = spawn_client(client(&running, TOKEN_B, "node-b"));
    let moved = until(&mut rx_b, Duration::from_secs(2), "the workload on node-b", |c| {
        node_of(c, "reviews-v1").as_deref() == Some("node-b")
    })
    .await;
    task_b.abort();
    assert_eq!(
        moved.workloads.iter().find(|w| w.name == "reviews-v1").map(|w| w.address.to_string()).as_deref(),
        Some("10.0.2.7")
    );
    // Signing follows the configuration the proxies get.
    let refused = issue(&running, TOKEN_A, "node-a", "reviews").await.expect_err("no reviews pod on node-a now");
    assert!(refused.contains("403"), "{refused}");
    issue(&running, TOKEN_B, "node-b", "reviews").await.expect("reviews runs on node-b now");

    task.abort();
    running.shutdown().await;
}

#[tokio::test]
async fn tokens_the_api_server_does_not_vouch_for_are_refused() {
    init_tracing();
    let fake = cluster().await;
    let running = start_control(&fake, loopback()).await;
    let unknown = issue(&running, "not-a-token", "node-a", "reviews").await.expect_err("unknown token");
    assert!(unknown.contains("401"), "{unknown}");
    let other = issue(&running, TOKEN_OTHER, "node-a", "reviews").await.expect_err("not the proxies' account");
    assert!(other.contains("401"), "{other}");
    // No configuration for them either.
    let (mut rx, task) = spawn_client(client(&running, "not-a-token", "node-a"));
    assert!(tokio::time::timeout(Duration::from_millis(800), rx.recv()).await.is_err(), "no configuration");
    assert_eq!(running.stats().node("node-a"), None, "no stream was opened");
    let reviews = fake.requests().iter().filter(|r| r.path.ends_with("/tokenreviews")).count();
    assert!(reviews >= 2, "every refusal came from a TokenReview ({reviews})");
    task.abort();
    running.shutdown().await;
}

#[tokio::test]
async fn a_restarted_control_plane_keeps_its_ca_and_proxies_keep_their_config_until_it_is_back() {
    init_tracing();
    let fake = cluster().await;
    assert!(fake.get("Secret", "strait-system", "strait-ca").is_none());
    let running = start_control(&fake, loopback()).await;
    let addr = running.local_addr();
    let secret = fake.get("Secret", "strait-system", "strait-ca").expect("the CA Secret was created");
    assert!(secret.pointer("/data/ca.pem").is_some() && secret.pointer("/data/ca-key.pem").is_some());
    let root = running.root_pem().to_string();
    // The proxies' trust anchor is published for them: the root certificate, and nothing else.
    let published = fake.get("ConfigMap", "strait-system", "strait-root-cert").expect("the root ConfigMap");
    assert_eq!(published.pointer("/data/root.pem").and_then(|v| v.as_str()), Some(root.as_str()));
    assert_eq!(published.pointer("/data").and_then(|d| d.as_object()).map(|d| d.len()), Some(1), "{published}");
    let (mut rx, task) = spawn_client(client(&running, TOKEN_A, "node-a"));
    let first = until(&mut rx, Duration::from_secs(10), "the first configuration", |_| true).await;

    running.shutdown().await;
    fake.apply(route("reviews", "v2", "/api/.*")).expect("edit while down");
    assert!(tokio::time::timeout(Duration::from_millis(700), rx.recv()).await.is_err(), "nothing applied while down");

    let restarted = start_control(&fake, addr).await;
    assert_eq!(restarted.root_pem(), root, "the same CA, from the Secret");
    let again = until(&mut rx, Duration::from_secs(10), "the configuration after the restart", |_| true).await;
    assert!(!again.workloads.is_empty() && !again.services.is_empty(), "never an empty configuration");
    assert_eq!(again.workloads, first.workloads);
    assert_eq!(default_subset(&again, "reviews").as_deref(), Some("v2"), "resynced with the edit");

    task.abort();
    restarted.shutdown().await;
}

#[tokio::test]
async fn two_control_planes_starting_together_agree_on_one_ca() {
    init_tracing();
    let fake = cluster().await;
    let (a, b) = tokio::join!(start_control(&fake, loopback()), start_control(&fake, loopback()));
    assert_eq!(a.root_pem(), b.root_pem(), "the loser of the create race uses the winner's CA");
    let creates = fake.requests().iter().filter(|r| r.method == "POST" && r.path.ends_with("/secrets")).count();
    assert!(creates >= 1, "{creates}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_expired_watch_relists_without_losing_changes() {
    init_tracing();
    let fake = cluster().await;
    let running = start_control(&fake, loopback()).await;
    let (mut rx, task) = spawn_client(client(&running, TOKEN_A, "node-a"));
    until(&mut rx, Duration::from_secs(10), "the first configuration", |_| true).await;
    // One watch per kind: namespaces, pods, services, endpointslices, the three resources and the two Gateway
    // API routes (their CRDs are installed in the fake).
    eventually("every watch to be open", Duration::from_secs(5), || (fake.open_watches() == 9).then_some(())).await;
    let seen_before = fake.requests().len();

    // Changes the watches never see as events: made while they are down, then the history is compacted.
    fake.hold_watches();
    eventually("every watch to end", Duration::from_secs(5), || (fake.open_watches() == 0).then_some(())).await;
    fake.apply(route("reviews", "v2", "/api/.*")).expect("edit");
    fake.delete("Pod", "shop", "productpage").expect("delete");
    fake.apply(pod("shop", "details", "node-a", "10.0.1.3", "details", json!({"app": "details"}))).expect("pod");
    fake.compact();
    fake.release_watches();

    let config = until(&mut rx, Duration::from_secs(10), "every change made during the expiry", |c| {
        default_subset(c, "reviews").as_deref() == Some("v2")
            && node_of(c, "productpage").is_none()
            && node_of(c, "details").is_some()
    })
    .await;
    assert!(node_of(&config, "reviews-v1").is_some(), "nothing else was lost");
    assert!(fake.gone_sent() > 0, "the watches were answered 410 Gone");
    let since: Vec<_> = fake.requests().into_iter().skip(seen_before).collect();
    let relists = since.iter().filter(|r| r.method == "GET" && !r.query.contains("watch=")).count();
    assert!(relists > 0, "the watchers relisted: {since:#?}");

    // Events flow again after the relist.
    fake.apply(route("reviews", "v1", "/api/.*")).expect("edit");
    until(&mut rx, Duration::from_secs(2), "a change after the relist", |c| {
        default_subset(c, "reviews").as_deref() == Some("v1")
    })
    .await;

    task.abort();
    running.shutdown().await;
}

#[tokio::test]
async fn namespace_labels_mesh_pods_and_choose_the_mtls_mode() {
    init_tracing();
    let fake = cluster().await;
    let running = start_control(&fake, loopback()).await;
    let (mut rx, task) = spawn_client(client(&running, TOKEN_A, "node-a"));
    let meshed = |c: &MeshConfig, name: &str| c.workloads.iter().find(|w| w.name == name).map(|w| w.meshed);
    let first = until(&mut rx, Duration::from_secs(10), "the first configuration", |_| true).await;
    assert_eq!(meshed(&first, "old"), Some(false));
    assert_eq!(first.mtls_mode("shop"), strait_api::MtlsMode::Strict, "STRICT by default");
    let legacy_default = Identity::new("cluster.local", "legacy", "default").expect("identity");
    let refused = client(&running, TOKEN_A, "node-a").issuer().issue(&legacy_default).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("403")), "pods of unmeshed namespaces get no identity");

    let mut legacy = namespace("legacy", true);
    legacy["metadata"]["labels"]["strait.dev/mtls-mode"] = json!("PERMISSIVE");
    fake.apply(legacy).expect("label the namespace");
    let config =
        until(&mut rx, Duration::from_secs(2), "the namespace joining the mesh", |c| meshed(c, "old") == Some(true))
            .await;
    assert_eq!(config.mtls_mode("legacy"), strait_api::MtlsMode::Permissive);
    client(&running, TOKEN_A, "node-a").issuer().issue(&legacy_default).await.expect("now meshed: signed");

    task.abort();
    running.shutdown().await;
}

/// `--istio-resources`: Istio's kinds are watched and read as the file provider reads them; one that would behave
/// differently is refused with a problem naming the field, and the rest flows. With the egress policy set.
#[tokio::test]
async fn istio_resources_are_read_from_the_cluster_and_refused_by_field() {
    init_tracing();
    let fake = cluster().await;
    let put = |o: Value| {
        fake.apply(o).expect("stored");
    };
    put(json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "shop"},
        "spec": {"mtls": {"mode": "PERMISSIVE"}},
    }));
    put(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"hosts": ["api.example.com"], "addresses": ["192.0.2.1"], "ports": [{"number": 443, "name": "https"}],
                 "location": "MESH_EXTERNAL", "resolution": "NONE"},
    }));
    put(json!({
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "by-dns", "namespace": "shop"},
        "spec": {"hosts": ["dns.example.com"], "ports": [{"number": 443, "name": "https"}], "resolution": "DNS"},
    }));
    let options = KubeOptions {
        listen: loopback(),
        istio_resources: true,
        outbound_traffic_policy: strait_api::OutboundTrafficPolicy::RegistryOnly,
        ..Default::default()
    };
    let running =
        strait_control::kube::start(fake.client().expect("kube client"), options).await.expect("control plane starts");
    let (mut rx, task) = spawn_client(client(&running, TOKEN_A, "node-a"));
    let config =
        until(&mut rx, Duration::from_secs(10), "the Istio resources", |c| !c.external_services.is_empty()).await;
    assert_eq!(config.outbound_traffic_policy, strait_api::OutboundTrafficPolicy::RegistryOnly);
    let hosts: Vec<&str> = config.external_services.iter().map(|e| e.spec.host()).collect();
    assert_eq!(hosts, ["api.example.com"], "the DNS ServiceEntry is refused");
    let pa = config.peer_authentications.iter().find(|p| p.name == "default").expect("the PeerAuthentication");
    assert_eq!(pa.mode, Some(strait_api::MtlsMode::Permissive));
    let problems = eventually("the refusal", Duration::from_secs(5), || {
        let problems = running.stats().problems();
        problems
            .iter()
            .any(|p| p.contains("ServiceEntry shop/by-dns") && p.contains("spec.resolution"))
            .then_some(problems)
    })
    .await;
    assert!(!problems.iter().any(|p| p.contains("api.example.com")), "{problems:?}");

    // Edits through the API reach the proxies.
    put(json!({
        "apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": "shop"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }));
    until(&mut rx, Duration::from_secs(5), "the edited PeerAuthentication", |c| {
        c.peer_authentications.iter().any(|p| p.mode == Some(strait_api::MtlsMode::Strict))
    })
    .await;
    task.abort();
}

// ---------------------------------------------------------------------------------------------------------
// Gateway API (GAMMA)
// ---------------------------------------------------------------------------------------------------------

fn http_route(name: &str, parent: &str, rule: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 9080}], "rules": [rule]},
    })
}

/// The conditions Strait wrote for the route's first Service parent, by type.
fn route_condition(fake: &FakeKube, name: &str, type_: &str) -> Option<Value> {
    let object = fake.get("HTTPRoute", "shop", name)?;
    let parents = object.pointer("/status/parents")?.as_array()?.clone();
    let ours = parents.into_iter().find(|p| p["controllerName"] == "strait.dev/mesh")?;
    assert_eq!(ours["parentRef"]["kind"], "Service", "{ours}");
    ours["conditions"].as_array()?.iter().find(|c| c["type"] == type_).cloned()
}

/// An HTTPRoute on a Service reaches the proxies as a TrafficRoute; its status says Accepted per parent, with
/// ResolvedRefs=False naming a backendRef whose Service is missing; one that names the Service a TrafficRoute
/// already routes is not accepted and names the winner; an unsupported filter is refused by name; a route of
/// a Gateway gets no status from the mesh, and other controllers' entries are kept.
#[tokio::test]
async fn gateway_api_routes_are_served_and_report_their_status_per_parent() {
    init_tracing();
    let fake = cluster().await;
    fake.apply(service("shop", "ratings", "10.96.0.11")).expect("service");
    fake.apply(slice("shop", "ratings", &["10.0.2.2"])).expect("slice");
    let split = json!({"backendRefs": [
        {"name": "ratings", "port": 9080, "weight": 90},
        {"name": "ratings-v2", "port": 9080, "weight": 10},
    ]});
    fake.apply(http_route("ratings", "ratings", split.clone())).expect("route");
    let running = start_control(&fake, loopback()).await;
    let (mut rx, task) = spawn_client(client(&running, TOKEN_A, "node-a"));

    let config = until(&mut rx, Duration::from_secs(10), "the HTTPRoute as a TrafficRoute", |c| {
        c.traffic_routes.iter().any(|r| r.name == "httproute.ratings")
    })
    .await;
    let converted = config.traffic_routes.iter().find(|r| r.name == "httproute.ratings").expect("converted");
    assert_eq!(converted.spec.hosts, ["ratings"]);
    // ratings-v2 does not exist (yet): its 10 % are answered 500, as Gateway API requires.
    let weights: Vec<Option<u32>> = converted.spec.http[0].route.iter().map(|d| d.weight).collect();
    assert_eq!(weights, [Some(90)]);
    let abort =
        converted.spec.http[0].fault.as_ref().and_then(|f| f.abort.as_ref()).map(|a| (a.http_status, a.percentage));
    assert_eq!(abort, Some((500, 10.0)));

    let accepted =
        eventually("Accepted=True", Duration::from_secs(5), || route_condition(&fake, "ratings", "Accepted")).await;
    assert_eq!((accepted["status"].as_str(), accepted["reason"].as_str()), (Some("True"), Some("Accepted")));
    assert_eq!(accepted["observedGeneration"], 1);
    let refs = route_condition(&fake, "ratings", "ResolvedRefs").expect("ResolvedRefs");
    assert_eq!((refs["status"].as_str(), refs["reason"].as_str()), (Some("False"), Some("BackendNotFound")), "{refs}");
    let message = refs["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("spec.rules[0].backendRefs[1]: Service shop/ratings-v2 does not exist"), "{message}");

    // The missing Service appears: ResolvedRefs turns True, and the split is pushed whole.
    fake.apply(service("shop", "ratings-v2", "10.96.0.12")).expect("service");
    eventually("ResolvedRefs=True", Duration::from_secs(5), || {
        route_condition(&fake, "ratings", "ResolvedRefs").filter(|c| c["status"] == "True")
    })
    .await;
    until(&mut rx, Duration::from_secs(5), "both backends", |c| {
        c.traffic_routes
            .iter()
            .any(|r| r.name == "httproute.ratings" && r.spec.http[0].route.len() == 2 && r.spec.http[0].fault.is_none())
    })
    .await;

    // The reviews Service is routed by TrafficRoute shop/reviews, which takes precedence.
    fake.apply(http_route("reviews-gamma", "reviews", json!({"backendRefs": [{"name": "reviews", "port": 9080}]})))
        .expect("route");
    let conflicted = eventually("Accepted=False, Conflicted", Duration::from_secs(5), || {
        route_condition(&fake, "reviews-gamma", "Accepted").filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(conflicted["reason"], "Conflicted");
    let message = conflicted["message"].as_str().unwrap_or_default();
    assert!(message.contains("is routed by TrafficRoute shop/reviews, which takes precedence"), "{message}");

    // A filter Strait cannot enforce: refused by name, and the route is not pushed.
    let mut mirrored = split.clone();
    mirrored["filters"] =
        json!([{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "ratings-v2", "port": 9080}}}]);
    let mut mirror_route = http_route("mirrored", "ratings", mirrored);
    mirror_route["spec"]["parentRefs"][0]["name"] = json!("ratings-v2");
    fake.apply(mirror_route).expect("route");
    let refused = eventually("Accepted=False, UnsupportedValue", Duration::from_secs(5), || {
        route_condition(&fake, "mirrored", "Accepted").filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(refused["reason"], "UnsupportedValue");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("spec.rules[0].filters[0].type: RequestMirror is not supported"), "{message}");

    // A route of a Gateway, with another controller's status entry: the mesh writes nothing to it.
    let mut gateway_route = http_route("north-south", "ratings", split);
    gateway_route["spec"]["parentRefs"] = json!([{"name": "my-gateway"}]);
    gateway_route["status"] = json!({"parents": [{"parentRef": {"name": "my-gateway"}, "controllerName": "example.com/gateway", "conditions": []}]});
    fake.apply(gateway_route).expect("route");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let parents = fake.get("HTTPRoute", "shop", "north-south").and_then(|o| o.pointer("/status/parents").cloned());
    assert_eq!(parents.and_then(|p| p.as_array().map(Vec::len)), Some(1), "only the gateway controller's entry");

    // Statuses are written only when they change.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = status_writes(&fake);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status_writes(&fake), writes, "no status writes while nothing changes");

    task.abort();
    running.shutdown().await;
}

/// Without the Gateway API CRDs the control plane serves the rest of the mesh as before; once the HTTPRoute
/// CRD is installed, its routes are read within the recheck interval, without a restart, and
/// `strait_control_watched_kinds` says so.
// Two threads: the test reads `/metrics` with a blocking client while the server runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_crds_installed_after_the_start_are_watched_without_a_restart() {
    init_tracing();
    let fake = cluster().await;
    fake.uninstall("HTTPRoute");
    fake.uninstall("GRPCRoute");
    let options = KubeOptions { listen: loopback(), crd_recheck: Duration::from_secs(1), ..Default::default() };
    let running = strait_control::kube::start(fake.client().expect("kube client"), options).await.expect("starts");
    let monitoring = tokio::net::TcpListener::bind(loopback()).await.expect("monitoring port");
    let monitoring_addr = monitoring.local_addr().expect("bound");
    tokio::spawn(strait_control::monitoring::serve(monitoring, running.stats().clone()));
    let watched = |kind: &str| {
        let (_, text) = strait_tests::loopback::http_get(monitoring_addr, "/metrics").expect("/metrics answers");
        let series = format!("strait_control_watched_kinds{{kind=\"{kind}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&series).map(str::to_string))
    };
    let (mut rx, task) = spawn_client(client(&running, TOKEN_A, "node-a"));
    let first =
        until(&mut rx, Duration::from_secs(10), "the first configuration", |c| default_subset(c, "reviews").is_some())
            .await;
    assert_eq!(default_subset(&first, "reviews").as_deref(), Some("v1"));
    assert_eq!(watched("HTTPRoute.gateway.networking.k8s.io").as_deref(), Some("0"));
    assert_eq!(watched("TrafficRoute.strait.dev").as_deref(), Some("1"));

    // The CRD is installed and a route applied: served without a restart.
    fake.apply(service("shop", "ratings", "10.96.0.11")).expect("service");
    fake.install("HTTPRoute");
    fake.apply(http_route("ratings", "ratings", json!({"backendRefs": [{"name": "ratings", "port": 9080}]})))
        .expect("route");
    until(&mut rx, Duration::from_secs(10), "the late HTTPRoute", |c| {
        c.traffic_routes.iter().any(|r| r.name == "httproute.ratings")
    })
    .await;
    assert_eq!(watched("HTTPRoute.gateway.networking.k8s.io").as_deref(), Some("1"));
    assert_eq!(watched("GRPCRoute.gateway.networking.k8s.io").as_deref(), Some("0"), "still missing");
    eventually("Accepted=True on the late route", Duration::from_secs(5), || {
        route_condition(&fake, "ratings", "Accepted").filter(|c| c["status"] == "True")
    })
    .await;
    task.abort();
    running.shutdown().await;
}
