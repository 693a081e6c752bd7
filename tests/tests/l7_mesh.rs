//! The L7 data path end to end: HTTP service ports served by the source node's proxy (routes, weighted
//! subsets, retries with a budget, timeouts, outlier detection, connection-pool limits), per-request
//! authorization and caller identity at the destination proxy, gRPC with trailers, WebSocket upgrades and
//! trace context. Two nodes; the client is pod a1 on node-a, the `reviews` backends b1 (v1) and b2 (v2) on
//! node-b (see `strait_tests::mesh_http`).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use strait_tests::backend::{grpc, HttpGet, HttpResult, HttpSummary};
use strait_tests::mesh_http::{authorization_policy, reviews_policy, traffic_route, HttpMesh};
use strait_tests::{connect_from_async, require_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn url(path: &str) -> String {
    HttpMesh::reviews_url(path)
}

fn count_status(results: &[HttpResult], status: u16) -> usize {
    results.iter().filter(|r| r.status == Some(status)).count()
}

fn count_name(results: &[HttpResult], name: &str) -> usize {
    results.iter().filter(|r| r.name() == Some(name)).count()
}

/// Counts by status and backend, then the first 40 outcomes in order, for assertion messages.
fn statuses(results: &[HttpResult]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let list: Vec<String> = results
        .iter()
        .map(|r| match (r.status, r.name()) {
            (Some(s), Some(n)) => format!("{s}:{n}"),
            (Some(s), None) => s.to_string(),
            (None, _) => format!("error({})", r.error.as_deref().unwrap_or("?")),
        })
        .collect();
    for outcome in &list {
        *counts.entry(outcome.clone()).or_default() += 1;
    }
    let first: Vec<&str> = list.iter().take(40).map(String::as_str).collect();
    format!("{counts:?}; in order: {}{}", first.join(" "), if list.len() > 40 { " ..." } else { "" })
}

fn retries(mesh: &HttpMesh, result: &str) -> Result<f64> {
    mesh.mesh.metric("node-a", "strait_retries_total", &[("result", result)])
}

// ---------------------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------------------

/// 90/10 over 10,000 requests lands within 2 points of the weights; `x-user-group: beta` goes 100 % to v2.
#[test]
fn weighted_split_and_header_match() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| {
        config.destination_policies.push(reviews_policy(""));
        config.traffic_routes.push(traffic_route(
            "reviews",
            r#"
hosts: [reviews]
http:
- name: beta-users
  match:
  - headers: {x-user-group: {exact: beta}}
  route:
  - destination: {host: reviews, subset: v2}
- name: default
  route:
  - {destination: {host: reviews, subset: v1}, weight: 90}
  - {destination: {host: reviews, subset: v2}, weight: 10}
"#,
        ));
    })?;

    let n = 10_000u64;
    let split = mesh.summary(&HttpGet::new(url("/split")).count(n as u32).concurrency(4))?;
    assert_eq!(split.total, n);
    assert_eq!(split.by_status.get("200").copied(), Some(n), "every request answered 200: {split:?}\n{}", mesh.logs());
    let v1 = split.by_version.get("v1").copied().unwrap_or(0);
    let v2 = split.by_version.get("v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, n, "{split:?}");
    let share = v1 as f64 / n as f64;
    assert!((0.88..=0.92).contains(&share), "v1 got {:.2} % of the traffic, expected 90 ± 2: {split:?}", share * 100.0);

    let beta = mesh.summary(&HttpGet::new(url("/beta")).count(200).header("x-user-group", "beta"))?;
    let want = HttpSummary {
        total: 200,
        errors: 0,
        by_status: [("200".to_string(), 200)].into(),
        by_name: [("reviews-b2".to_string(), 200)].into(),
        by_version: [("v2".to_string(), 200)].into(),
    };
    assert_eq!(beta, want, "beta users all go to v2");
    // Not quite beta: the exact match does not apply, the 90/10 rule does.
    let almost = mesh.summary(&HttpGet::new(url("/almost")).count(200).header("x-user-group", "beta2"))?;
    assert!(almost.by_version.get("v1").copied().unwrap_or(0) > 100, "x-user-group: beta2 is not beta: {almost:?}");

    // The destination proxy counted every request b1 answered, as an HTTP request from a1.
    let at_b1 = mesh.mesh.metric(
        "node-b",
        "istio_requests_total",
        &[
            ("reporter", "destination"),
            ("source_workload", "a1"),
            ("destination_workload", "b1"),
            ("response_code", "200"),
            ("request_protocol", "http"),
        ],
    )?;
    let v1_total = v1 + almost.by_version.get("v1").copied().unwrap_or(0);
    assert_eq!(at_b1 as u64, v1_total, "requests node-b reported for b1");
    let at_source = mesh.mesh.metric(
        "node-a",
        "istio_requests_total",
        &[("reporter", "source"), ("source_workload", "a1"), ("response_code", "200")],
    )?;
    assert_eq!(at_source as u64, n + 200 + 200, "requests node-a reported as the source");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Retries, budget, timeouts
// ---------------------------------------------------------------------------------------------------------

const RETRY_5XX: &str = r#"
hosts: [reviews]
http:
- name: default
  route:
  - destination: {host: reviews}
  retries: {attempts: 3, retryOn: 5xx}
"#;

/// b1 fails half its requests, b2 none: without retries about a quarter of requests would fail; with 3
/// retries on 5xx more than 99 % succeed.
#[test]
fn retries_mask_a_flaky_endpoint() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&["--fail-percent", "50"], &[], |config| {
        config.traffic_routes.push(traffic_route("reviews", RETRY_5XX));
        // Round robin: b1 gets every other first try whatever the latencies (this tests retries, not the
        // balancer), and a retry goes to the other endpoint.
        config.destination_policies.push(reviews_policy("loadBalancer: {simple: ROUND_ROBIN}"));
    })?;
    let n = 400;
    let results = mesh.get(&HttpGet::new(url("/flaky")).count(n))?;
    // No outlierDetection is configured, so (as in Istio) no endpoint may be ejected for its 503s.
    let ejections = mesh.mesh.metric("node-a", "strait_circuit_breaker_total", &[("event", "ejection")])?;
    assert_eq!(
        ejections,
        0.0,
        "b1 was ejected without an outlierDetection setting (b1 saw {} requests): {}",
        mesh.backend_requests("b1")?,
        statuses(&results)
    );
    let ok = count_status(&results, 200);
    let failed_at_b1 = mesh.backend_requests("b1")?;
    assert!(ok * 100 >= n as usize * 99, "{ok}/{n} succeeded with retries: {}\n{}", statuses(&results), mesh.logs());
    let attempted = retries(&mesh, "attempted")?;
    let succeeded = retries(&mesh, "succeeded")?;
    // b1 answered 503 about half of what it saw; each 503 but the last try's is retried.
    assert!(attempted >= 20.0, "only {attempted} retries for {failed_at_b1} requests at b1 (half of them 503)");
    assert!(succeeded >= 1.0 && succeeded <= attempted, "succeeded {succeeded}, attempted {attempted}");
    // Every try reached a backend: tries = requests + retries.
    let tries = mesh.backend_requests("b1")? + mesh.backend_requests("b2")?;
    assert_eq!(tries, u64::from(n) + attempted as u64, "backend requests vs requests + retries");
    Ok(())
}

/// Both endpoints always fail: retries are capped by the default budget (50 % of the requests plus 10
/// retries per second, the reserve covering a 10 s window), not 3 per request.
#[test]
fn retry_budget_caps_retries_to_a_failing_service() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&["--fail-percent", "100"], &["--fail-percent", "100"], |config| {
        config.traffic_routes.push(traffic_route("reviews", RETRY_5XX));
    })?;
    let n = 1000u32;
    let started = Instant::now();
    let summary = mesh.summary(&HttpGet::new(url("/dead")).count(n).concurrency(4))?;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(summary.by_status.get("503").copied(), Some(u64::from(n)), "every request ends 503: {summary:?}");

    let attempted = retries(&mesh, "attempted")?;
    let exhausted = retries(&mesh, "budget_exhausted")?;
    // The reserve is 10/s over the budget's 10 s window, available at once; plus one second of slack for
    // the window's slots.
    let allowance = 0.5 * f64::from(n) + 10.0 * (elapsed.max(10.0) + 1.0);
    assert!(
        attempted <= allowance,
        "{attempted} retries for {n} requests in {elapsed:.1} s; the budget allows {allowance:.0}\n{}",
        mesh.logs()
    );
    assert!(attempted >= 0.5 * f64::from(n) * 0.5, "the budget was barely used: {attempted} retries");
    assert!(exhausted >= 1.0, "no retry was refused by the budget (budget_exhausted = {exhausted})");
    let tries = mesh.backend_requests("b1")? + mesh.backend_requests("b2")?;
    assert_eq!(tries, u64::from(n) + attempted as u64, "backend requests vs requests + retries");
    Ok(())
}

/// A route to `reviews` with a per-try timeout of 200 ms, 20 retries on 5xx/reset/connect failures, and
/// the given overall timeout.
fn per_try_route(timeout: &str) -> strait_api::Named<strait_api::TrafficRouteSpec> {
    traffic_route(
        "reviews",
        &format!(
            "hosts: [reviews]\nhttp:\n- route:\n  - destination: {{host: reviews}}\n  timeout: {timeout}\n  \
             retries: {{attempts: 20, perTryTimeout: 200ms, retryOn: \"5xx,reset,connect-failure\"}}\n"
        ),
    )
}

/// perTryTimeout 200ms with b1 hanging: every request succeeds on b2 (20 retries and a 10 s timeout, so
/// even an unlucky run of picks of b1 ends on b2). Then b2 hangs too and the route's timeout becomes 1 s:
/// the overall timeout answers 504 after about a second, although the retries would go on longer.
#[test]
fn per_try_timeout_and_overall_timeout() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    // Round robin, so b1 is tried first by every other request whatever the latencies (the default P2C
    // would avoid b1 after one slow try: this tests timeouts, not the balancer).
    let round_robin = || reviews_policy("loadBalancer: {simple: ROUND_ROBIN}");
    let mesh = HttpMesh::start(&["--hang"], &[], |config| {
        config.traffic_routes.push(per_try_route("10s"));
        config.destination_policies.push(round_robin());
    })?;
    let n = 40;
    let results = mesh.get(&HttpGet::new(url("/slow-b1")).count(n))?;
    assert_eq!(count_status(&results, 200), n as usize, "{}\n{}", statuses(&results), mesh.logs());
    assert_eq!(count_name(&results, "reviews-b2"), n as usize, "{}", statuses(&results));
    let tried_b1 = mesh.backend_requests("b1")?;
    assert!(tried_b1 >= u64::from(n) / 2 - 1, "the hanging endpoint was tried only {tried_b1} times");
    assert!(
        results.iter().any(|r| r.elapsed_ms >= 190.0),
        "no request waited out a per-try timeout on b1: {:?}",
        results.iter().map(|r| r.elapsed_ms as u64).collect::<Vec<_>>()
    );

    mesh.control("b2", "POST", "hang/1")?;
    let mut config = strait_tests::mesh_http::config(&mesh.mesh.cluster);
    config.traffic_routes.push(per_try_route("1s"));
    config.destination_policies.push(round_robin());
    mesh.mesh.update_config(&config)?;
    let results = mesh.get(&HttpGet::new(url("/slow-all")).count(3).timeout(Duration::from_secs(10)))?;
    for r in &results {
        assert_eq!(r.status, Some(504), "{r:?}\n{}", mesh.logs());
        assert!(
            (900.0..3000.0).contains(&r.elapsed_ms),
            "504 after {:.0} ms; the route's timeout is 1 s: {r:?}",
            r.elapsed_ms
        );
    }
    let timeouts = mesh.mesh.metric(
        "node-a",
        "istio_requests_total",
        &[("reporter", "source"), ("source_workload", "a1"), ("response_code", "504")],
    )?;
    assert_eq!(timeouts, 3.0, "504s reported by node-a");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Outlier detection and connection-pool limits
// ---------------------------------------------------------------------------------------------------------

/// With no DestinationPolicy the balancer is P2C over peak-EWMA latency: every endpoint is probed, and
/// sequential traffic goes to the fast endpoint rather than the one 40 ms slower.
#[test]
fn default_balancer_prefers_the_faster_endpoint() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &["--delay-ms", "40"], |_| {})?;
    let summary = mesh.summary(&HttpGet::new(url("/spread")).count(200))?;
    assert_eq!(summary.by_status.get("200").copied(), Some(200), "{summary:?}");
    let fast = summary.by_name.get("reviews-b1").copied().unwrap_or(0);
    let slow = summary.by_name.get("reviews-b2").copied().unwrap_or(0);
    assert!(slow >= 1, "the slow endpoint was never probed: {summary:?}");
    assert!(fast >= 180, "the fast endpoint got only {fast} of 200: {summary:?}");
    Ok(())
}

/// LEAST_REQUEST with two equally fast endpoints: ties are broken at random, so sequential requests spread.
#[test]
fn least_request_spreads_sequential_requests() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| {
        config.destination_policies.push(reviews_policy("loadBalancer: {simple: LEAST_REQUEST}"));
    })?;
    let summary = mesh.summary(&HttpGet::new(url("/spread")).count(400))?;
    assert_eq!(summary.by_status.get("200").copied(), Some(400), "{summary:?}");
    for name in ["reviews-b1", "reviews-b2"] {
        let got = summary.by_name.get(name).copied().unwrap_or(0);
        assert!(got >= 40, "{name} got {got} of 400 sequential requests (under 10 %): {summary:?}");
    }
    Ok(())
}

/// Issue 15: a consistent hash on a query parameter keeps each user's requests on one endpoint (and the users
/// spread over both); on the source IP, every request of the one client goes to one endpoint.
#[test]
fn consistent_hash_on_a_query_parameter_or_the_source_ip_pins_requests_to_one_endpoint() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| {
        config
            .destination_policies
            .push(reviews_policy("loadBalancer: {consistentHash: {httpQueryParameterName: user}}"));
    })?;
    let mut homes = std::collections::BTreeSet::new();
    for user in 0..16 {
        let summary = mesh.summary(&HttpGet::new(url(&format!("/q?a=1&user=u{user}"))).count(5))?;
        assert_eq!(summary.by_name.len(), 1, "user u{user} was spread: {summary:?}");
        homes.extend(summary.by_name.keys().cloned());
    }
    assert_eq!(homes.len(), 2, "16 users all went to {homes:?}");
    drop(mesh);

    let mesh = HttpMesh::start(&[], &[], |config| {
        config.destination_policies.push(reviews_policy("loadBalancer: {consistentHash: {useSourceIp: true}}"));
    })?;
    let summary = mesh.summary(&HttpGet::new(url("/source")).count(40))?;
    assert_eq!(summary.by_status.get("200").copied(), Some(40), "{summary:?}");
    assert_eq!(summary.by_name.len(), 1, "one client's requests were spread: {summary:?}");
    Ok(())
}

/// b1 answers 503 to everything: after 3 consecutive 5xx it is ejected and b2 takes all traffic; once b1
/// recovers and the ejection time has passed, it gets traffic again.
#[test]
fn outlier_detection_ejects_and_readmits() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&["--fail-percent", "100"], &[], |config| {
        config.destination_policies.push(reviews_policy(
            "outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50}\n\
             loadBalancer: {simple: ROUND_ROBIN}",
        ));
    })?;
    // No retries: the client sees b1's 503s until b1 is ejected.
    let warmup = mesh.get(&HttpGet::new(url("/warmup")).count(20))?;
    let failures = count_status(&warmup, 503);
    assert!(failures >= 3, "b1 should have failed at least 3 times: {}", statuses(&warmup));
    assert_eq!(failures, count_name(&warmup, "reviews-b1"), "only b1 fails: {}", statuses(&warmup));
    // Ejection is immediate on the third consecutive 5xx; wait one interval in case it is applied on the tick.
    std::thread::sleep(Duration::from_millis(1000));
    let ejected = mesh.get(&HttpGet::new(url("/ejected")).count(30))?;
    assert_eq!(count_status(&ejected, 200), 30, "b1 ejected, all to b2: {}\n{}", statuses(&ejected), mesh.logs());
    assert_eq!(count_name(&ejected, "reviews-b2"), 30, "{}", statuses(&ejected));
    let ejections = mesh.mesh.metric("node-a", "strait_circuit_breaker_total", &[("event", "ejection")])?;
    assert!(ejections >= 1.0, "ejections counted: {ejections}");

    mesh.control("b1", "POST", "fail-percent/0")?;
    // Past the ejection time (2 s, from before the sleep above) and another interval.
    std::thread::sleep(Duration::from_millis(3500));
    let back = mesh.get(&HttpGet::new(url("/back")).count(40))?;
    assert_eq!(count_status(&back, 200), 40, "{}", statuses(&back));
    let at_b1 = count_name(&back, "reviews-b1");
    assert!(at_b1 >= 4, "b1 recovered but got {at_b1}/40 requests: {}\n{}", statuses(&back), mesh.logs());
    Ok(())
}

/// maxRequests 2, maxPendingRequests 1: 30 concurrent slow requests get fast 503s (flag UO) for what does
/// not fit, instead of queueing.
#[test]
fn connection_pool_overflow_is_a_fast_503() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| {
        config
            .destination_policies
            .push(reviews_policy("connectionPool: {http: {maxRequests: 2, maxPendingRequests: 1}}"));
    })?;
    let results = mesh.get(&HttpGet::new(url("/delay/500")).count(30).concurrency(30))?;
    let ok = count_status(&results, 200);
    let overflow: Vec<&HttpResult> = results.iter().filter(|r| r.status == Some(503)).collect();
    assert_eq!(ok + overflow.len(), 30, "only 200 and 503: {}", statuses(&results));
    assert!(ok >= 2, "at least the two allowed requests succeed: {}", statuses(&results));
    assert!(
        overflow.len() >= 10,
        "30 concurrent requests against 2 + 1 slots: {}\n{}",
        statuses(&results),
        mesh.logs()
    );
    for r in &overflow {
        assert!(r.elapsed_ms < 400.0, "a 503 took {:.0} ms: it queued instead of failing fast: {r:?}", r.elapsed_ms);
        assert!(r.name().is_none(), "the 503 came from a backend, not the proxy: {r:?}");
    }
    let uo = mesh.mesh.metric(
        "node-a",
        "istio_requests_total",
        &[("reporter", "source"), ("response_code", "503"), ("response_flags", "UO")],
    )?;
    assert_eq!(uo as usize, overflow.len(), "503s with flag UO reported by node-a");
    let overflows = mesh.mesh.metric("node-a", "strait_circuit_breaker_total", &[("event", "overflow")])?;
    assert_eq!(overflows as usize, overflow.len(), "overflow events");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Protocols: the upstream HTTP version, pipelining
// ---------------------------------------------------------------------------------------------------------

/// `web1` declares `appProtocol: http` and its backend (b1) speaks only HTTP/1.1; `web2` declares `http2`
/// and its backend (b2) speaks only HTTP/2 (h2c). Each is reached by clients of either version, because
/// the port's declaration, not the client, decides what the backend is spoken to in.
const WEB1_VIP: &str = "10.96.0.30";
const WEB2_VIP: &str = "10.96.0.31";

fn one_version_mesh(configure: impl FnOnce(&mut strait_api::MeshConfig)) -> Result<HttpMesh> {
    use strait_tests::mesh_http::http_service;
    HttpMesh::start(&["--only", "http1"], &["--only", "http2"], |config| {
        let web1 = http_service(config, "web1", WEB1_VIP, "http", &["b1"]);
        let web2 = http_service(config, "web2", WEB2_VIP, "http2", &["b2"]);
        config.services.extend([web1, web2]);
        configure(config);
    })
}

#[test]
fn the_upstream_http_version_follows_the_ports_declaration() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = one_version_mesh(|_| {})?;
    for (vip, backend, spoken) in [(WEB1_VIP, "reviews-b1", "HTTP/1.1"), (WEB2_VIP, "reviews-b2", "HTTP/2.0")] {
        for http2 in [false, true] {
            let mut get = HttpGet::new(format!("http://{vip}/version")).count(3);
            if http2 {
                get = get.http2();
            }
            let client = if http2 { "h2c" } else { "HTTP/1.1" };
            let results = mesh.get(&get)?;
            for r in &results {
                assert_eq!(r.status, Some(200), "{client} client to {vip}: {r:?}\n{}", mesh.logs());
                assert_eq!(r.name(), Some(backend), "{r:?}");
                assert_eq!(r.body["protocol"].as_str(), Some(spoken), "the backend was spoken to in: {r:?}");
                // The client's request named the service; the backend sees that name, not an endpoint.
                let host = r.request_header("host").map(str::to_string);
                assert!(host.as_deref().is_none_or(|h| h.starts_with(vip)), "host {host:?}: {r:?}");
            }
        }
    }
    Ok(())
}

/// `useClientProtocol: true` (as Istio's) opts out: the upstream version follows the client again, so an h2c
/// client reaches web1's HTTP/1.1-only backend in HTTP/2 and fails, while an HTTP/1.1 client still passes.
#[test]
fn use_client_protocol_opts_out_of_the_ports_declaration() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = one_version_mesh(|config| {
        config.destination_policies.push(strait_tests::mesh_http::destination_policy(
            "web1",
            "host: web1\nconnectionPool: {http: {useClientProtocol: true}}\n",
        ));
    })?;
    let url = format!("http://{WEB1_VIP}/client-protocol");
    let h1 = mesh.get(&HttpGet::new(&url).count(2))?;
    assert_eq!(count_status(&h1, 200), 2, "{}\n{}", statuses(&h1), mesh.logs());
    assert!(h1.iter().all(|r| r.body["protocol"] == "HTTP/1.1"), "{}", statuses(&h1));
    let h2 = mesh.get(&HttpGet::new(&url).count(2).http2())?;
    assert_eq!(count_status(&h2, 503), 2, "the HTTP/1.1-only backend cannot answer HTTP/2: {}", statuses(&h2));
    Ok(())
}

/// Two requests written back to back on one keep-alive connection (RFC 9112 9.3.2 pipelining), through the
/// Istio example's route (split, retries, timeout) and consistent hashing: both are answered, in order, and
/// the connection stays open for more.
#[test]
fn pipelined_requests_are_answered_in_order() -> Result<()> {
    use std::io::{Read, Write};
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| {
        config.traffic_routes.push(traffic_route(
            "reviews",
            r#"
hosts: [reviews]
http:
- route:
  - {destination: {host: reviews, subset: v1}, weight: 90}
  - {destination: {host: reviews, subset: v2}, weight: 10}
  timeout: 10s
  retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,reset,connect-failure"}
"#,
        ));
        config.destination_policies.push(reviews_policy("loadBalancer: {consistentHash: {httpHeaderName: x-user-id}}"));
    })?;
    let mut stream = strait_tests::connect_from(mesh.client(), HttpMesh::reviews_addr())?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: reviews\r\n\r\nGET /x HTTP/1.1\r\nhost: reviews\r\n\r\n")?;
    // Read until both answers are in (or 10 s pass): the connection stays open, so there is no EOF to wait for.
    let mut answer = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let complete = |answer: &[u8]| String::from_utf8_lossy(answer).matches("\"path\":").count() >= 2;
    while !complete(&answer) && Instant::now() < deadline {
        let mut buf = [0u8; 16 * 1024];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("reading the answers"),
        }
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    let heads = answer.matches("HTTP/1.1 200 OK").count();
    assert_eq!(heads, 2, "two answers expected within 10 s, got:\n{answer}\n{}", mesh.logs());
    let (first, second) = (answer.find("\"path\":\"/\""), answer.find("\"path\":\"/x\""));
    assert!(matches!((first, second), (Some(a), Some(b)) if a < b), "answered out of order:\n{answer}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The destination side: authorization and identity
// ---------------------------------------------------------------------------------------------------------

/// DENY `DELETE /admin*`: DELETE /admin and /admin/users get 403 (not naming the policy); GET /admin and
/// DELETE /other pass.
#[test]
fn l7_deny_by_method_and_path() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| {
        config.authorization_policies.push(authorization_policy(
            "no-admin-delete",
            r#"
selector: {matchLabels: {app: reviews}}
action: DENY
rules:
- to: [{operation: {methods: [DELETE], paths: ["/admin*"]}}]
"#,
        ));
    })?;
    let get = mesh.get(&HttpGet::new(url("/admin")).count(5))?;
    assert_eq!(count_status(&get, 200), 5, "GET /admin is allowed: {}\n{}", statuses(&get), mesh.logs());
    let other = mesh.get(&HttpGet::new(url("/other")).method("DELETE").count(5))?;
    assert_eq!(count_status(&other, 200), 5, "DELETE /other is allowed: {}", statuses(&other));
    for path in ["/admin", "/admin/users"] {
        let denied = mesh.get(&HttpGet::new(url(path)).method("DELETE").count(5))?;
        for r in &denied {
            assert_eq!(r.status, Some(403), "DELETE {path}: {r:?}\n{}", mesh.logs());
            // The caller is not told which policy to work around (the access line and metrics say it).
            let body = r.body.as_str().unwrap_or_default();
            assert!(!body.contains("no-admin-delete"), "the 403 body names the policy: {body:?}");
        }
    }
    let denials = mesh.mesh.metric(
        "node-b",
        "strait_policy_denials_total",
        &[("reporter", "destination"), ("policy", "shop/no-admin-delete")],
    )?;
    assert_eq!(denials, 10.0, "denials reported by node-b");
    let forbidden = mesh.mesh.metric(
        "node-b",
        "istio_requests_total",
        &[("reporter", "destination"), ("source_workload", "a1"), ("response_code", "403")],
    )?;
    assert_eq!(forbidden, 10.0, "403s reported by node-b");
    Ok(())
}

/// The backend sees `x-forwarded-client-cert: By=<its identity>;URI=<a1's identity>`; a fake XFCC from
/// the client is replaced, not passed along.
#[test]
fn server_sees_the_callers_identity() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |_| {})?;
    let fake = "By=spiffe://cluster.local/ns/shop/sa/sa-b1;URI=spiffe://cluster.local/ns/shop/sa/admin";
    let plain = mesh.get(&HttpGet::new(url("/whoami")).count(10))?;
    let faked = mesh.get(&HttpGet::new(url("/whoami")).count(10).header("x-forwarded-client-cert", fake))?;
    for r in plain.iter().chain(&faked) {
        assert_eq!(r.status, Some(200), "{r:?}\n{}", mesh.logs());
        let answered_by = match r.name() {
            Some("reviews-b1") => "sa-b1",
            Some("reviews-b2") => "sa-b2",
            other => panic!("unexpected backend {other:?}: {r:?}"),
        };
        let want =
            format!("By=spiffe://cluster.local/ns/shop/sa/{answered_by};URI=spiffe://cluster.local/ns/shop/sa/sa-a1");
        assert_eq!(r.request_header("x-forwarded-client-cert"), Some(want.as_str()), "{r:?}");
    }
    Ok(())
}

/// An address reused by a new pod (here a1 recreated under another service account, as a StatefulSet pod
/// may be) never gets the old pod's identity: node-a's pooled upstream clients, which hold connections made
/// with a1's old certificate, are not reused for it, and the backend sees the new identity on every request.
#[test]
fn an_address_reused_by_a_new_pod_never_carries_the_old_pods_identity() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mut mesh = HttpMesh::start(&[], &[], |_| {})?;
    let caller = |r: &HttpResult| {
        r.request_header("x-forwarded-client-cert")
            .and_then(|v| v.rsplit_once("URI=").map(|(_, uri)| uri.to_string()))
            .unwrap_or_default()
    };
    // Keep-alive requests leave pooled connections, made with sa-a1's certificate, at node-a.
    for r in mesh.get(&HttpGet::new(url("/whoami")).count(20))? {
        ensure!(r.status == Some(200), "{r:?}\n{}", mesh.logs());
        ensure!(caller(&r) == "spiffe://cluster.local/ns/shop/sa/sa-a1", "{r:?}");
    }
    let mut config = strait_tests::mesh_http::config(&mesh.mesh.cluster);
    let a1 = config.workloads.iter_mut().find(|w| w.name == "a1").context("workload a1")?;
    a1.service_account = "sa-new".into();
    mesh.mesh.update_config(&config)?;
    mesh.mesh.wait_ready("node-a")?;
    let results = mesh.get(&HttpGet::new(url("/whoami")).count(20))?;
    for r in &results {
        ensure!(r.status == Some(200), "{r:?}\n{}", mesh.logs());
        ensure!(
            caller(r) == "spiffe://cluster.local/ns/shop/sa/sa-new",
            "the reused address carried {}: {r:?}\n{}",
            caller(r),
            mesh.logs()
        );
    }
    Ok(())
}

/// A `traceparent` keeps its trace id and gets a new parent id.
#[test]
fn traceparent_keeps_the_trace_and_gets_a_new_parent() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |_| {})?;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = strait_tests::backend::single(mesh.get(&HttpGet::new(url("/trace")).header("traceparent", incoming))?)?;
    assert_eq!(r.status, Some(200), "{r:?}");
    let seen = r.request_header("traceparent").context("no traceparent at the backend")?;
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(parts[0], "00", "{seen}");
    assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace id: {seen}");
    assert_eq!(parts[2].len(), 16, "{seen}");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a new parent id: {seen}");
    assert_eq!(parts[3], "01", "flags kept: {seen}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// gRPC and upgrades
// ---------------------------------------------------------------------------------------------------------

const STEP: Duration = Duration::from_secs(5);

async fn within<T>(what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(STEP, f).await.with_context(|| format!("{what}: nothing within {STEP:?}"))?
}

/// Unary and bidirectional streaming calls through the mesh with trailers intact (grpc-status 0 and the
/// custom `x-echo-count`), a failing call's status 13, and the calls counted as gRPC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_streaming_and_status() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = tokio::task::block_in_place(|| HttpMesh::start(&[], &[], |_| {}))?;
    let result = grpc_calls(&mesh).await;
    if let Err(e) = &result {
        return Err(anyhow::anyhow!("{e:#}\n{}", mesh.logs()));
    }
    let grpc_total = |node: &str, reporter: &str| {
        mesh.mesh.metric(node, "istio_requests_total", &[("reporter", reporter), ("request_protocol", "grpc")])
    };
    let (source, destination) = tokio::task::block_in_place(|| {
        Ok::<_, anyhow::Error>((grpc_total("node-a", "source")?, grpc_total("node-b", "destination")?))
    })?;
    assert_eq!(source, 3.0, "gRPC requests reported by node-a");
    assert_eq!(destination, 3.0, "gRPC requests reported by node-b");
    let failed = tokio::task::block_in_place(|| {
        mesh.mesh.metric(
            "node-a",
            "istio_requests_total",
            &[("request_protocol", "grpc"), ("grpc_response_status", "13")],
        )
    })?;
    assert_eq!(failed, 1.0, "the Fail call is reported with grpc_response_status 13");
    Ok(())
}

async fn grpc_calls(mesh: &HttpMesh) -> Result<()> {
    let authority = HttpMesh::grpc_addr().to_string();
    let io = connect_from_async(mesh.client(), HttpMesh::grpc_addr()).await?;
    let mut sender = within("HTTP/2 handshake", grpc::connect(io)).await?;

    // Unary.
    let mut call = within("unary call", grpc::start_call(&mut sender, &authority, grpc::UNARY, Some(b"hello"))).await?;
    ensure!(call.status == http::StatusCode::OK, "unary: HTTP status {}", call.status);
    let messages = within("unary response", call.finish()).await?;
    ensure!(messages.len() == 1 && messages[0].as_ref() == b"hello", "unary echoed {messages:?}");
    let trailers = call.trailers().context("unary: no trailers")?;
    ensure!(trailers.get("grpc-status").map(|v| v.as_bytes()) == Some(b"0"), "unary trailers {trailers:?}");
    ensure!(trailers.get("grpc-message").map(|v| v.as_bytes()) == Some(b"ok"), "unary trailers {trailers:?}");
    ensure!(trailers.get("x-echo-count").map(|v| v.as_bytes()) == Some(b"1"), "unary trailers {trailers:?}");

    // Bidirectional streaming, ping-pong: each echo must arrive before the next message is sent, so nothing
    // on the path may wait for the end of the request stream.
    let mut call = within("stream call", grpc::start_call(&mut sender, &authority, grpc::STREAM, None)).await?;
    ensure!(call.status == http::StatusCode::OK, "stream: HTTP status {}", call.status);
    for i in 0..5 {
        let message = format!("ping-{i}");
        within("stream send", call.send(message.as_bytes())).await?;
        let echoed = within(&format!("echo of {message}"), call.message()).await?;
        grpc::expect_message(echoed, message.as_bytes())?;
    }
    let rest = within("stream end", call.finish()).await?;
    ensure!(rest.is_empty(), "extra messages {rest:?}");
    let trailers = call.trailers().context("stream: no trailers")?;
    ensure!(trailers.get("grpc-status").map(|v| v.as_bytes()) == Some(b"0"), "stream trailers {trailers:?}");
    ensure!(trailers.get("x-echo-count").map(|v| v.as_bytes()) == Some(b"5"), "stream trailers {trailers:?}");

    // A failing call: trailers-only, status 13.
    let mut call = within("fail call", grpc::start_call(&mut sender, &authority, grpc::FAIL, Some(b"x"))).await?;
    let rest = within("fail response", call.finish()).await?;
    ensure!(rest.is_empty(), "fail: messages {rest:?}");
    ensure!(
        call.grpc_status().as_deref() == Some("13"),
        "fail: grpc-status {:?}, headers {:?}",
        call.grpc_status(),
        call.headers
    );
    Ok(())
}

/// `GET /upgrade` with `Upgrade: websocket`: 101, then bytes flow both ways on the upgraded connection
/// (the server speaks first, then echoes), and a half-close ends it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_echoes_both_ways() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = tokio::task::block_in_place(|| HttpMesh::start(&[], &[], |_| {}))?;
    let result = websocket(&mesh).await;
    result.map_err(|e| anyhow::anyhow!("{e:#}\n{}", mesh.logs()))
}

async fn websocket(mesh: &HttpMesh) -> Result<()> {
    let mut stream = connect_from_async(mesh.client(), HttpMesh::reviews_addr()).await?;
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nhost: reviews\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
              sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await?;
    // Read the response head byte by byte so nothing of the upgraded stream is consumed with it.
    let mut head = Vec::new();
    within("101 response", async {
        while !head.ends_with(b"\r\n\r\n") {
            let byte = stream.read_u8().await.context("reading the response head")?;
            head.push(byte);
            ensure!(head.len() < 16 * 1024, "response head too long");
        }
        Ok(())
    })
    .await?;
    let head = String::from_utf8_lossy(&head).to_string();
    ensure!(head.starts_with("HTTP/1.1 101"), "expected 101 Switching Protocols, got:\n{head}");
    ensure!(head.to_ascii_lowercase().contains("upgrade: websocket"), "no upgrade header in:\n{head}");

    // The server speaks first.
    let mut greeting = Vec::new();
    within("server greeting", async {
        while !greeting.ends_with(b"\n") {
            greeting.push(stream.read_u8().await?);
        }
        Ok(())
    })
    .await?;
    let greeting = String::from_utf8_lossy(&greeting).to_string();
    ensure!(greeting.starts_with("HELLO reviews-b"), "greeting {greeting:?}");

    // Client to server and back, small then large.
    for payload in [b"ping over the upgraded connection".to_vec(), (0..200_000u32).map(|i| (i % 251) as u8).collect()] {
        let (mut r, mut w) = stream.split();
        let len = payload.len();
        let (written, echoed) = within("echo", async {
            let write = async {
                w.write_all(&payload).await?;
                anyhow::Ok(())
            };
            let read = async {
                let mut buf = vec![0u8; len];
                r.read_exact(&mut buf).await?;
                anyhow::Ok(buf)
            };
            let (a, b) = tokio::join!(write, read);
            Ok((a, b))
        })
        .await?;
        written?;
        ensure!(echoed? == payload, "the echo of {len} bytes differs");
    }
    stream.shutdown().await?;
    let mut rest = Vec::new();
    within("close", async { Ok(stream.read_to_end(&mut rest).await?) }).await?;
    ensure!(rest.is_empty(), "bytes after half-close: {}", rest.len());
    Ok(())
}
