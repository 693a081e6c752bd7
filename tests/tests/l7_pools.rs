//! `connectionPool` on an HTTP port, end to end (issue 21, items 2 and 3): `tcp.maxConnections` caps the
//! upstream connections to the destination (an HTTP/1.1 request in flight holds one), requests beyond it wait
//! in `http.maxPendingRequests` and the rest are refused at once with 503 `UO`; `http.idleTimeout` closes idle
//! pooled connections and `http.maxRequestsPerConnection` retires a connection after that many requests, which
//! the backend sees as the connections it accepts. Two nodes: the client a1 on node-a, `reviews` b1 and b2 on
//! node-b (see `strait_tests::mesh_http`).

use std::time::Duration;

use anyhow::Result;
use strait_tests::backend::HttpGet;
use strait_tests::mesh_http::{reviews_policy, traffic_route, HttpMesh};
use strait_tests::require_root;

const ONLY_V1: &str = "hosts: [reviews]\nhttp:\n- route:\n  - destination: {host: reviews, subset: v1}\n";

/// Issue 21, item 2: a backend that takes 2 s, 300 requests at once, `tcp.maxConnections: 100` and
/// `http.maxPendingRequests: 50`: 100 go out, 50 wait for a connection, the rest are refused at once (503,
/// `UO`, counted), and every request is answered.
#[test]
fn max_connections_on_an_http_port_refuses_the_overflow() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| {
        config
            .destination_policies
            .push(reviews_policy("connectionPool: {tcp: {maxConnections: 100}, http: {maxPendingRequests: 50}}"));
    })?;
    let results = mesh.get(
        &HttpGet::new(HttpMesh::reviews_url("/slow"))
            .header("x-backend-delay-ms", "2000")
            .count(300)
            .concurrency(300)
            .timeout(Duration::from_secs(30)),
    )?;
    let status = |code: u16| results.iter().filter(|r| r.status == Some(code)).count() as u64;
    let (ok, refused) = (status(200), status(503));
    let failed: Vec<_> = results.iter().filter(|r| r.status.is_none()).map(|r| r.error.clone()).collect();
    let slowest =
        |code: u16| results.iter().filter(|r| r.status == Some(code)).map(|r| r.elapsed_ms).fold(0.0f64, f64::max);
    eprintln!(
        "\nmaxConnections 100 + maxPendingRequests 50, 300 requests at once to a 2 s backend: {ok} answered 200 \
         (slowest {:.0} ms), {refused} refused 503 (slowest refusal {:.0} ms)",
        slowest(200),
        slowest(503)
    );
    assert_eq!(results.len(), 300);
    assert!(failed.is_empty(), "every request is answered, none hangs or fails: {failed:?}\n{}", mesh.logs());
    assert_eq!(ok + refused, 300, "only 200s and 503s");
    assert!(refused > 0, "300 requests at once against 100 connections and 50 pending: none refused");
    assert!(ok >= 100, "at least the first 100 are served: {ok}");
    for r in results.iter().filter(|r| r.status == Some(503)) {
        let body = r.body.as_str().unwrap_or_default();
        assert_eq!(body, "upstream connection pool overflow\n", "refused by the pool limits: {r:?}");
    }
    let counted = mesh.mesh.metric(
        "node-a",
        "strait_circuit_breaker_total",
        &[("destination_service", "reviews.shop.svc.cluster.local"), ("event", "overflow")],
    )?;
    assert_eq!(counted, refused as f64, "every refusal is counted");
    let flagged = mesh.mesh.metric(
        "node-a",
        "istio_requests_total",
        &[("reporter", "source"), ("response_code", "503"), ("response_flags", "UO")],
    )?;
    assert_eq!(flagged, refused as f64, "every refusal carries the response flag UO");
    let served = mesh.backend_requests("b1")? + mesh.backend_requests("b2")?;
    assert_eq!(served, ok, "a refused request never reached a backend");
    for pod in ["b1", "b2"] {
        let most = mesh.backend_stat(pod, "max_in_flight")?;
        assert!(most <= 100, "{pod} had {most} requests in flight at once, more than the 100 connections allow");
    }
    Ok(())
}

/// Issue 21, item 3: `maxRequestsPerConnection: 2` makes the backend accept a new connection every second
/// request; `idleTimeout: 1s` closes the connection left idle, so a request after a pause opens another.
#[test]
fn idle_timeout_and_max_requests_per_connection_shape_the_backend_connections() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| {
        config.traffic_routes.push(traffic_route("reviews", ONLY_V1));
        config
            .destination_policies
            .push(reviews_policy("connectionPool: {http: {idleTimeout: 1s, maxRequestsPerConnection: 2}}"));
    })?;
    // Nine requests one after another on one client connection: connections of 2, 2, 2, 2 and 1 requests.
    let summary = mesh.summary(&HttpGet::new(HttpMesh::reviews_url("/seq")).count(9))?;
    assert_eq!(summary.by_status.get("200").copied(), Some(9), "{summary:?}");
    assert_eq!(mesh.backend_requests("b1")?, 9);
    assert_eq!(mesh.backend_stat("b1", "connections")?, 5, "two requests per connection\n{}", mesh.logs());

    // The fifth connection carried one request and is idle now; after the idle timeout (checked at that
    // interval, so it closes within two) the next request needs a new one.
    std::thread::sleep(Duration::from_secs(3));
    let summary = mesh.summary(&HttpGet::new(HttpMesh::reviews_url("/after-pause")))?;
    assert_eq!(summary.by_status.get("200").copied(), Some(1), "{summary:?}");
    assert_eq!(mesh.backend_stat("b1", "connections")?, 6, "the idle connection was closed\n{}", mesh.logs());
    Ok(())
}

/// Without the settings, the same requests share one backend connection: what the test above counts is the
/// settings' doing, not the harness's.
#[test]
fn without_pool_settings_upstream_connections_are_reused() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| {
        config.traffic_routes.push(traffic_route("reviews", ONLY_V1));
        config.destination_policies.push(reviews_policy(""));
    })?;
    let summary = mesh.summary(&HttpGet::new(HttpMesh::reviews_url("/seq")).count(9))?;
    assert_eq!(summary.by_status.get("200").copied(), Some(9), "{summary:?}");
    std::thread::sleep(Duration::from_secs(3));
    mesh.summary(&HttpGet::new(HttpMesh::reviews_url("/after-pause")))?;
    assert_eq!(mesh.backend_stat("b1", "connections")?, 1, "one pooled connection carries everything");
    Ok(())
}

/// `Connection` is hop-by-hop (RFC 9110 7.6.1): a client that closes its connection after each request
/// (`Connection: close`, as `oha` and many health checkers do) must not close the proxies' pooled
/// connections. Forwarded, it cost every fresh client connection a new tunnel stream on both proxies and a
/// new connection to the pod.
#[test]
fn a_clients_connection_close_does_not_close_the_pooled_upstream_connections() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| {
        config.traffic_routes.push(traffic_route("reviews", ONLY_V1));
        config.destination_policies.push(reviews_policy(""));
    })?;
    let summary = mesh.summary(
        &HttpGet::new(HttpMesh::reviews_url("/close")).header("connection", "close").fresh_connections().count(6),
    )?;
    assert_eq!(summary.by_status.get("200").copied(), Some(6), "{summary:?}");
    assert_eq!(mesh.backend_requests("b1")?, 6);
    assert_eq!(
        mesh.backend_stat("b1", "connections")?,
        1,
        "six client connections that each said `Connection: close` share one pooled backend connection\n{}",
        mesh.logs()
    );
    Ok(())
}
