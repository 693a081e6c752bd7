//! Observability end to end, with the real proxies in the namespace cluster: exact Istio metric values and
//! label sets after known traffic (HTTP with L7 denials, TCP), Strait's own families, the admin endpoints
//! (`/ready` before and after the first configuration, `/live`, `/config_dump`, `/certs`, `/logging`) and JSON
//! access lines on the proxies' stderr. Two nodes; the client is pod a1 on node-a, the `reviews` backends b1
//! (v1) and b2 (v2) on node-b (see `strait_tests::mesh_http`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use strait_api::MeshConfig;
use strait_certs::MeshCa;
use strait_tests::backend::{self, HttpGet, HttpResult, TcpSendReport};
use strait_tests::mesh::{workspace_binary, ECHO_PORT, ECHO_VIP, NAMESPACE, PROXY_MARK};
use strait_tests::mesh_http::{self, authorization_policy, traffic_route, HttpMesh, BACKEND_PORT};
use strait_tests::{exec, require_root, ChildGuard, Cluster};

const TD: &str = "spiffe://cluster.local/ns/shop/sa";
const REVIEWS_HOST: &str = "reviews.shop.svc.cluster.local";
const ECHO_HOST: &str = "echo.shop.svc.cluster.local";
/// The request body the client sends with each request, so request bytes are known.
const BODY: &str =
    "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqr";

/// DENY `/admin` and `/admin/*` on the `reviews` pods' HTTP port: such requests get 403 (flag UAEX) from
/// node-b. The port keeps the rule off the TCP echo port (on a bare connection a DENY rule's L7 fields are
/// ignored, failing closed, and the port alone decides).
fn deny_admin() -> strait_api::Named<strait_api::AuthorizationPolicySpec> {
    authorization_policy(
        "reviews-deny-admin",
        "selector: {matchLabels: {app: reviews}}\naction: DENY\nrules:\n- to: [{operation: {ports: [8080], paths: [\"/admin\", \"/admin/*\"]}}]\n",
    )
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Every sample of `name` (exact family + suffix, e.g. `istio_response_bytes_sum`).
fn samples(text: &str, name: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            Some(Sample { labels: parse_labels(rest.strip_suffix('}')?), value: value.parse().ok()? })
        })
        .collect()
}

/// `a="x",b="y"` (values without escapes, as every value here is).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let Some((value, tail)) = after.split_once('"') else { break };
        labels.insert(name.trim_start_matches(',').to_string(), value.to_string());
        rest = tail;
    }
    labels
}

fn select<'a>(all: &'a [Sample], want: &[(&str, &str)]) -> Vec<&'a Sample> {
    all.iter().filter(|s| want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))).collect()
}

fn total(all: &[Sample], want: &[(&str, &str)]) -> f64 {
    select(all, want).iter().map(|s| s.value).sum()
}

/// Scrapes `node`'s metrics port until `done` holds for the text (records are written when a response body
/// or a connection ends, a moment after the client has what it needs), then returns the text.
fn scrape_until(mesh: &HttpMesh, node: &str, what: &str, done: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = mesh.mesh.admin_get(node, 15020, "/metrics")?;
        if done(&text) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("{node}: {what} not reached within 10 s; metrics:\n{text}\n{}", mesh.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The backend's pod ("b1") from its name in the answer ("reviews-b1").
fn pod_of(result: &HttpResult) -> Option<String> {
    result.name().and_then(|n| n.strip_prefix("reviews-")).map(str::to_string)
}

/// Labels every HTTP series from a1 to `reviews` carries, whichever reporter and endpoint.
fn common_http_labels(reporter: &str) -> Vec<(&'static str, String)> {
    vec![
        ("reporter", reporter.to_string()),
        ("source_workload", "a1".into()),
        ("source_workload_namespace", NAMESPACE.into()),
        ("source_principal", format!("{TD}/sa-a1")),
        ("source_app", "a1".into()),
        ("source_version", "unknown".into()),
        ("destination_workload_namespace", NAMESPACE.into()),
        ("destination_app", "reviews".into()),
        ("destination_service", REVIEWS_HOST.into()),
        ("destination_service_name", "reviews".into()),
        ("destination_service_namespace", NAMESPACE.into()),
        ("request_protocol", "http".into()),
        ("grpc_response_status", String::new()),
        ("connection_security_policy", "mutual_tls".into()),
    ]
}

/// Checks the full label set of every `istio_requests_total` series of `reporter` and returns the counts by
/// (destination workload, response code, response flags).
fn http_counts(text: &str, reporter: &str) -> Result<BTreeMap<(String, String, String), u64>> {
    let all = samples(text, "istio_requests_total");
    let mut counts = BTreeMap::new();
    for sample in select(&all, &[("reporter", reporter)]) {
        let l = &sample.labels;
        let names: Vec<&str> = l.keys().map(String::as_str).collect();
        let mut want = vec![
            "connection_security_policy",
            "destination_app",
            "destination_principal",
            "destination_service",
            "destination_service_name",
            "destination_service_namespace",
            "destination_version",
            "destination_workload",
            "destination_workload_namespace",
            "grpc_response_status",
            "reporter",
            "request_protocol",
            "response_code",
            "response_flags",
            "source_app",
            "source_principal",
            "source_version",
            "source_workload",
            "source_workload_namespace",
        ];
        want.sort_unstable();
        ensure!(names == want, "{reporter}: label names of {l:?}");
        for (k, v) in common_http_labels(reporter) {
            ensure!(l.get(k) == Some(&v), "{reporter}: {k} should be {v:?} in {l:?}");
        }
        let workload = l["destination_workload"].clone();
        let version = match workload.as_str() {
            "b1" => "v1",
            "b2" => "v2",
            other => bail!("{reporter}: destination_workload {other:?} is not a reviews endpoint: {l:?}"),
        };
        ensure!(l["destination_principal"] == format!("{TD}/sa-{workload}"), "{reporter}: {l:?}");
        ensure!(l["destination_version"] == version, "{reporter}: {l:?}");
        let key = (workload, l["response_code"].clone(), l["response_flags"].clone());
        *counts.entry(key).or_default() += sample.value as u64;
    }
    Ok(counts)
}

/// 10 HTTP requests (2 denied by an L7 policy) and 3 TCP connections: every Istio counter exact, with its
/// full label set, at both reporters; the source names the endpoint it actually chose; request and response
/// bytes are the bytes that crossed; Strait's own families (config updates, certificate expiry, pool size).
#[test]
fn istio_metrics_are_exact_at_both_reporters() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let mesh = HttpMesh::start(&[], &[], |config| config.authorization_policies.push(deny_admin()))?;
    let b1 = mesh.mesh.cluster.pod("b1");
    let echo = backend::tcp_echo(b1.netns_name(), SocketAddr::new(b1.ip().into(), ECHO_PORT))?;

    let post = |path: &str, n: u32| HttpGet::new(HttpMesh::reviews_url(path)).count(n).method("POST").body(BODY);
    let mut results = mesh.get(&post("/ok", 8))?;
    results.extend(mesh.get(&post("/admin", 2))?);
    let ok: Vec<&HttpResult> = results.iter().filter(|r| r.status == Some(200)).collect();
    let denied: Vec<&HttpResult> = results.iter().filter(|r| r.status == Some(403)).collect();
    ensure!(ok.len() == 8 && denied.len() == 2, "client saw {results:?}\n{}", mesh.logs());
    let mut by_pod = BTreeMap::<String, u64>::new();
    for r in &ok {
        *by_pod.entry(pod_of(r).context("a 200 from a reviews backend")?).or_default() += 1;
    }

    // Destination reporter (node-b): 8 × 200 "-" split as the client saw them, 2 × 403 UAEX.
    let at_b = scrape_until(&mesh, "node-b", "10 requests", |t| {
        total(&samples(t, "istio_requests_total"), &[("reporter", "destination")]) >= 10.0
    })?;
    let counts_b = http_counts(&at_b, "destination")?;
    for (pod, n) in &by_pod {
        assert_eq!(counts_b.get(&(pod.clone(), "200".into(), "-".into())), Some(n), "node-b: {counts_b:?}");
    }
    let denied_b: u64 = counts_b.iter().filter(|((_, c, f), _)| c == "403" && f == "UAEX").map(|(_, n)| n).sum();
    assert_eq!(denied_b, 2, "node-b reports the denials as 403 UAEX: {counts_b:?}");
    assert_eq!(counts_b.values().sum::<u64>(), 10, "node-b: nothing else: {counts_b:?}");

    // Source reporter (node-a): the same requests against the same endpoints; the 403 came from upstream.
    let at_a = scrape_until(&mesh, "node-a", "10 requests", |t| {
        total(&samples(t, "istio_requests_total"), &[("reporter", "source")]) >= 10.0
    })?;
    let counts_a = http_counts(&at_a, "source")?;
    let as_seen_by_b: BTreeMap<_, _> = counts_b
        .iter()
        .map(|((w, c, f), n)| ((w.clone(), c.clone(), if f == "UAEX" { "-".to_string() } else { f.clone() }), *n))
        .collect();
    assert_eq!(counts_a, as_seen_by_b, "node-a's destination_workload is the endpoint node-b served");

    // Bytes: what the client sent and received, counted on the streamed bodies.
    let body_len = BODY.len() as f64;
    let ok_bytes: f64 = ok.iter().map(|r| r.body_len as f64).sum();
    let denied_bytes: f64 = denied.iter().map(|r| r.body_len as f64).sum();
    for (node, text, reporter) in [("node-a", &at_a, "source"), ("node-b", &at_b, "destination")] {
        let ok_labels = [("reporter", reporter), ("response_code", "200")];
        let sum = |family: &str, code: &str| {
            total(&samples(text, family), &[("reporter", reporter), ("response_code", code)])
        };
        assert_eq!(total(&samples(text, "istio_response_bytes_count"), &ok_labels), 8.0, "{node}");
        assert_eq!(sum("istio_response_bytes_sum", "200"), ok_bytes, "{node}: response bytes of the 200s");
        assert_eq!(sum("istio_response_bytes_sum", "403"), denied_bytes, "{node}: response bytes of the 403s");
        assert_eq!(sum("istio_request_bytes_sum", "200"), 8.0 * body_len, "{node}: request bytes of the 200s");
        assert_eq!(total(&samples(text, "istio_request_duration_milliseconds_count"), &ok_labels), 8.0, "{node}");
        let p_le = total(
            &samples(text, "istio_request_duration_milliseconds_bucket"),
            &[("reporter", reporter), ("le", "+Inf")],
        );
        assert_eq!(p_le, 10.0, "{node}: every request in the duration histogram");
    }
    // The source read every request body (it may retry), 403s included.
    assert_eq!(total(&samples(&at_a, "istio_request_bytes_sum"), &[("reporter", "source")]), 10.0 * body_len);

    // TCP: 3 connections of known sizes to the echo VIP.
    let a1 = mesh.mesh.cluster.pod("a1").netns_name().to_string();
    let vip = SocketAddr::new(ECHO_VIP.parse()?, ECHO_PORT);
    let reports: Vec<TcpSendReport> =
        [1_000u64, 20_000, 300_000].iter().map(|n| backend::tcp_send(&a1, vip, *n, "OBS")).collect::<Result<_>>()?;
    ensure!(reports.iter().all(|r| r.echoed), "{reports:?}");
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let received: u64 = reports.iter().map(|r| r.received).sum();
    for (node, reporter) in [("node-a", "source"), ("node-b", "destination")] {
        let labels = [
            ("reporter", reporter),
            ("source_workload", "a1"),
            ("source_workload_namespace", NAMESPACE),
            ("source_principal", &format!("{TD}/sa-a1")),
            ("destination_workload", "b1"),
            ("destination_workload_namespace", NAMESPACE),
            ("destination_principal", &format!("{TD}/sa-b1")),
            ("destination_service", ECHO_HOST),
            ("destination_service_name", "echo"),
            ("destination_service_namespace", NAMESPACE),
            ("request_protocol", "tcp"),
            ("connection_security_policy", "mutual_tls"),
        ];
        let text = scrape_until(&mesh, node, "3 closed TCP connections", |t| {
            total(&samples(t, "istio_tcp_connections_closed_total"), &labels) >= 3.0
        })?;
        let value = |family: &str, flags: Option<&str>| {
            let mut want = labels.to_vec();
            if let Some(f) = flags {
                want.push(("response_flags", f));
            }
            total(&samples(&text, family), &want)
        };
        assert_eq!(value("istio_tcp_connections_opened_total", Some("-")), 3.0, "{node}");
        assert_eq!(value("istio_tcp_connections_closed_total", Some("-")), 3.0, "{node}: closed cleanly");
        assert_eq!(value("istio_tcp_sent_bytes_total", Some("-")) as u64, sent, "{node}: bytes to b1");
        assert_eq!(value("istio_tcp_received_bytes_total", Some("-")) as u64, received, "{node}: bytes from b1");
        // Nothing else to b1 on this port was counted as TCP (the HTTP requests are not TCP series).
        assert_eq!(value("istio_tcp_connections_opened_total", None), 3.0, "{node}");
    }

    // Strait's own families.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    for node in ["node-a", "node-b"] {
        let (_, text) = mesh.mesh.admin_get(node, 15020, "/metrics")?;
        assert_eq!(total(&samples(&text, "strait_config_updates_total"), &[("result", "acked")]), 1.0, "{node}");
        assert_eq!(total(&samples(&text, "strait_config_updates_total"), &[("result", "nacked")]), 0.0, "{node}");
        let last = total(&samples(&text, "strait_config_last_update_timestamp_seconds"), &[]);
        assert!(last > now - 120.0 && last <= now + 1.0, "{node}: last configuration at {last}, now {now}");
        let pods: &[&str] = if node == "node-a" { &["a1", "a2"] } else { &["b1", "b2"] };
        let expiries = samples(&text, "strait_certificate_expiry_timestamp_seconds");
        assert_eq!(expiries.len(), pods.len(), "{node}: one expiry per local workload: {expiries:?}");
        for pod in pods {
            let id = format!("{TD}/sa-{pod}");
            let expiry = total(&expiries, &[("identity", &id)]);
            assert!(expiry > now && expiry <= now + 25.0 * 3600.0, "{node}: {id} expires at {expiry}");
        }
    }
    let (_, text) = mesh.mesh.admin_get("node-a", 15020, "/metrics")?;
    let pool = total(&samples(&text, "strait_tunnel_pool_connections"), &[]);
    assert!((1.0..=3.0).contains(&pool), "tunnels from a1 to b1 and b2: {pool}");
    let denials = total(&samples(&at_b, "strait_policy_denials_total"), &[("policy", "shop/reviews-deny-admin")]);
    assert_eq!(denials, 2.0, "node-b's policy denials");
    drop(echo);
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Admin endpoints and JSON access logs, with proxies started here (late configuration, --log-json).
// ---------------------------------------------------------------------------------------------------------

/// A request to a proxy's admin port from inside its node's namespace: (status, body).
fn admin(cluster: &Cluster, node: &str, method: &str, path: &str) -> Result<(u16, String)> {
    let netns = cluster.node(node).netns_name().to_string();
    let (verb, request_path) = (method.to_string(), path.to_string());
    exec::in_netns(&netns, move || -> std::io::Result<(u16, String)> {
        use std::io::{Read, Write};
        let addr: SocketAddr = ([127, 0, 0, 1], 15000).into();
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "{verb} {request_path} HTTP/1.1\r\nhost: admin\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    })
    .with_context(|| format!("{method} {path} on {node}'s admin port"))
}

fn write_config(path: &Path, config: &MeshConfig) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_yaml::to_string(config)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn spawn_proxy(cluster: &Cluster, node: &str, config: &Path, ca: &Path) -> Result<ChildGuard> {
    let mut cmd = Command::new(workspace_binary("strait-proxy")?);
    cmd.env("RUST_LOG", "info")
        .args(["--node", node, "--redirect", "tproxy", "--mark", PROXY_MARK, "--log-json", "--access-log"])
        .arg("--config")
        .arg(config)
        .arg("--ca-dir")
        .arg(ca);
    exec::spawn_in(cluster.node(node).netns_name(), cmd)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The proxy's stderr as JSON lines (every line is one: `--log-json`).
fn json_lines(proxy: &ChildGuard) -> Result<Vec<serde_json::Value>> {
    proxy
        .stderr()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a JSON log line: {l}")))
        .collect()
}

fn access_lines(proxy: &ChildGuard, message: &str) -> Result<Vec<serde_json::Value>> {
    Ok(json_lines(proxy)?
        .into_iter()
        .filter(|l| l["target"] == "access" && l["fields"]["message"] == message)
        .map(|l| l["fields"].clone())
        .collect())
}

/// `/ready` is 503 until the configuration file appears, then 200; `/certs` lists the local identities with
/// their expiry; `/config_dump` shows a route just pushed and no secret; a bad file is NACKed and counted;
/// `/logging` turns debug lines on at run time; with `--log-json` each request and connection has one JSON
/// access line at each proxy with identities, service, route, upstream, status, flags, bytes, duration and
/// retries.
#[test]
fn admin_endpoints_and_json_access_logs() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let cluster = mesh_http::cluster()?;
    let dir = tempfile::tempdir()?;
    let ca_dir = dir.path().join("ca");
    MeshCa::generate("cluster.local")?.save(&ca_dir)?;
    let mut config = mesh_http::config(&cluster);
    config.authorization_policies.push(deny_admin());
    let listen = |pod: &str| SocketAddr::new(cluster.pod(pod).ip().into(), BACKEND_PORT);
    let _b1 = backend::http(cluster.pod("b1").netns_name(), listen("b1"), "reviews-b1", "v1")?;
    let _b2 = backend::http(cluster.pod("b2").netns_name(), listen("b2"), "reviews-b2", "v2")?;
    let b1 = cluster.pod("b1");
    let _echo = backend::tcp_echo(b1.netns_name(), SocketAddr::new(b1.ip().into(), ECHO_PORT))?;

    let (config_a, config_b) = (dir.path().join("node-a.yaml"), dir.path().join("node-b.yaml"));
    write_config(&config_b, &config)?;
    let node_b = spawn_proxy(&cluster, "node-b", &config_b, &ca_dir)?;
    let node_a = spawn_proxy(&cluster, "node-a", &config_a, &ca_dir)?;
    let logs = || format!("--- node-a ---\n{}\n--- node-b ---\n{}", node_a.stderr(), node_b.stderr());

    // Before node-a has any configuration: live, not ready.
    wait_for("node-a live", Duration::from_secs(20), || {
        Ok(matches!(admin(&cluster, "node-a", "GET", "/live"), Ok((200, _))))
    })
    .with_context(logs)?;
    for _ in 0..5 {
        let (status, body) = admin(&cluster, "node-a", "GET", "/ready")?;
        assert_eq!(status, 503, "ready without a configuration: {body}");
        assert!(body.contains("no configuration"), "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for("node-b ready", Duration::from_secs(20), || Ok(admin(&cluster, "node-b", "GET", "/ready")?.0 == 200))
        .with_context(logs)?;
    write_config(&config_a, &config)?;
    wait_for("node-a ready after its configuration appeared", Duration::from_secs(20), || {
        Ok(admin(&cluster, "node-a", "GET", "/ready")?.0 == 200)
    })
    .with_context(logs)?;

    // /certs: the local workloads' identities, serials and expiry.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let (status, body) = admin(&cluster, "node-a", "GET", "/certs")?;
    assert_eq!(status, 200);
    let certs: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    let mut identities: Vec<&str> = certs.iter().filter_map(|c| c["identity"].as_str()).collect();
    identities.sort_unstable();
    assert_eq!(identities, [format!("{TD}/sa-a1"), format!("{TD}/sa-a2")], "{body}");
    for c in &certs {
        let expiry = c["notAfterUnix"].as_u64().unwrap_or_default();
        assert!(expiry > now && expiry <= now + 25 * 3600, "{c}");
        assert!(c["serial"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
    }

    // /config_dump shows a route just pushed; nothing secret.
    let version = |node: &str| -> Result<String> {
        let (_, body) = admin(&cluster, node, "GET", "/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&body)?;
        Ok(dump["version"].as_str().unwrap_or_default().to_string())
    };
    let before = version("node-a")?;
    config.traffic_routes.push(traffic_route(
        "reviews-obs",
        "hosts: [reviews]\nhttp:\n- name: obs-canary\n  route:\n  - destination: {host: reviews}\n",
    ));
    write_config(&config_a, &config)?;
    write_config(&config_b, &config)?;
    wait_for("node-a loads the route", Duration::from_secs(10), || Ok(version("node-a")? != before))?;
    let (_, dump) = admin(&cluster, "node-a", "GET", "/config_dump")?;
    assert!(dump.contains("obs-canary") && dump.contains("reviews-obs"), "the pushed route is in the dump:\n{dump}");
    for secret in ["PRIVATE KEY", "BEGIN", "token"] {
        assert!(!dump.contains(secret), "{secret:?} in /config_dump:\n{dump}");
    }
    // A file that does not validate is refused (NACK) and counted; the route stays.
    let good = version("node-a")?;
    std::fs::write(dir.path().join("bad.tmp"), "workloads: 5\n")?;
    std::fs::rename(dir.path().join("bad.tmp"), &config_a)?;
    let metrics = |node: &str| -> Result<String> {
        let netns = cluster.node(node).netns_name().to_string();
        exec::in_netns(&netns, || -> std::io::Result<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", 15020))?;
            write!(s, "GET /metrics HTTP/1.1\r\nhost: m\r\nconnection: close\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
    };
    wait_for("node-a NACKs the bad file", Duration::from_secs(10), || {
        Ok(total(&samples(&metrics("node-a")?, "strait_config_updates_total"), &[("result", "nacked")]) == 1.0)
    })?;
    assert_eq!(version("node-a")?, good, "the last good configuration stays");
    let text = metrics("node-a")?;
    assert_eq!(total(&samples(&text, "strait_config_updates_total"), &[("result", "acked")]), 2.0, "{text}");
    write_config(&config_a, &config)?;
    wait_for("node-a takes the good file again", Duration::from_secs(10), || {
        Ok(total(&samples(&metrics("node-a")?, "strait_config_updates_total"), &[("result", "acked")]) == 3.0)
    })?;

    // /logging: no debug line before, one after.
    let debug_lines = |proxy: &ChildGuard| -> Result<usize> {
        Ok(json_lines(proxy)?.iter().filter(|l| l["level"] == "DEBUG").count())
    };
    admin(&cluster, "node-b", "GET", "/ready")?;
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(debug_lines(&node_b)?, 0, "debug lines at level info");
    let (status, body) = admin(&cluster, "node-b", "POST", "/logging?level=debug")?;
    assert_eq!(status, 200, "{body}");
    admin(&cluster, "node-b", "GET", "/ready")?;
    wait_for("a debug line after POST /logging?level=debug", Duration::from_secs(5), || {
        Ok(json_lines(&node_b)?.iter().any(|l| l["level"] == "DEBUG" && l["fields"]["message"] == "admin request"))
    })
    .with_context(logs)?;
    let (status, _) = admin(&cluster, "node-b", "POST", "/logging?level=info")?;
    assert_eq!(status, 200);
    let (status, body) = admin(&cluster, "node-b", "POST", "/logging?level=info,x=notalevel")?;
    assert_eq!(status, 400, "a bad filter is refused: {body}");

    // Traffic: 10 HTTP requests (2 denied) and one TCP connection.
    let a1 = cluster.pod("a1").netns_name().to_string();
    let post = |path: &str, n: u32| HttpGet::new(HttpMesh::reviews_url(path)).count(n).method("POST").body(BODY);
    let mut results = backend::http_get(&a1, &post("/ok", 8))?;
    results.extend(backend::http_get(&a1, &post("/admin", 2))?);
    let statuses: Vec<Option<u16>> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == Some(200)).count(), 8, "{statuses:?}\n{}", logs());
    let tcp = backend::tcp_send(&a1, SocketAddr::new(ECHO_VIP.parse()?, ECHO_PORT), 5_000, "OBS-LOG")?;
    ensure!(tcp.echoed, "{tcp:?}");

    let upstreams =
        [format!("{}:{BACKEND_PORT}", cluster.pod("b1").ip()), format!("{}:{BACKEND_PORT}", cluster.pod("b2").ip())];
    for (node, proxy, reporter) in [("node-a", &node_a, "source"), ("node-b", &node_b, "destination")] {
        wait_for(&format!("{node}: 10 request lines and 1 connection line"), Duration::from_secs(10), || {
            Ok(access_lines(proxy, "request")?.len() >= 10 && !access_lines(proxy, "connection")?.is_empty())
        })
        .with_context(logs)?;
        let requests = access_lines(proxy, "request")?;
        assert_eq!(requests.len(), 10, "{node}: one line per request");
        let mut by_status = BTreeMap::<(u64, String), usize>::new();
        for line in &requests {
            let text = |k: &str| line[k].as_str().unwrap_or_default().to_string();
            assert_eq!(text("reporter"), reporter, "{line}");
            assert_eq!(text("protocol"), "http", "{line}");
            assert_eq!(text("source_workload"), "a1", "{line}");
            assert_eq!(text("source_identity"), format!("{TD}/sa-a1"), "{line}");
            assert!(["b1", "b2"].contains(&text("destination_workload").as_str()), "{line}");
            assert_eq!(text("destination_identity"), format!("{TD}/sa-{}", text("destination_workload")), "{line}");
            assert_eq!(text("destination_service"), REVIEWS_HOST, "{line}");
            assert!(upstreams.contains(&text("upstream")), "{line}");
            assert_eq!(text("route"), if reporter == "source" { "obs-canary" } else { "-" }, "{line}");
            assert_eq!(text("method"), "POST", "{line}");
            assert!(line["retries"].as_u64() == Some(0), "{line}");
            assert!(line["duration_ms"].as_u64().is_some(), "{line}");
            assert!(line["response_bytes"].as_u64().is_some_and(|b| b > 0), "{line}");
            assert!(text("trace_id").len() == 32, "{line}");
            let status = line["status"].as_u64().unwrap_or_default();
            if status == 200 || reporter == "source" {
                assert_eq!(line["request_bytes"].as_u64(), Some(BODY.len() as u64), "{line}");
            }
            *by_status.entry((status, text("flags"))).or_default() += 1;
        }
        let denied_flag = if reporter == "destination" { "UAEX" } else { "-" };
        let want = BTreeMap::from([((200, "-".to_string()), 8), ((403, denied_flag.to_string()), 2)]);
        assert_eq!(by_status, want, "{node}: statuses and flags in the access lines");

        let connections = access_lines(proxy, "connection")?;
        assert_eq!(connections.len(), 1, "{node}: one line for the TCP connection: {connections:?}");
        let c = &connections[0];
        assert_eq!(c["reporter"], reporter, "{c}");
        assert_eq!(c["protocol"], "tcp", "{c}");
        assert_eq!(c["source_identity"], format!("{TD}/sa-a1"), "{c}");
        assert_eq!(c["destination_identity"], format!("{TD}/sa-b1"), "{c}");
        assert_eq!(c["destination_service"], ECHO_HOST, "{c}");
        assert_eq!(c["upstream"], format!("{}:{ECHO_PORT}", cluster.pod("b1").ip()), "{c}");
        assert_eq!(c["flags"], "-", "{c}");
        assert_eq!(c["sent_bytes"].as_u64(), Some(tcp.sent), "{c}");
        assert_eq!(c["received_bytes"].as_u64(), Some(tcp.received), "{c}");
        assert!(c["duration_ms"].as_u64().is_some(), "{c}");
    }
    // Stop the proxies before the cluster goes.
    drop(node_a);
    drop(node_b);
    Ok(())
}
