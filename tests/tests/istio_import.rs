//! Istio manifests, written as in Istio's documentation, converted by `strait_control::istio` (what
//! `strait import` and the file provider use) and run through both proxies: the behaviour is checked on the
//! data path, not only the parsing.
//!
//! ```text
//! a1 (sa-a1) --> reviews (10.96.0.20:80) -> b1 (version v1, answers 503 half the time), b2 (version v2)
//! ```

use anyhow::{bail, ensure, Context, Result};
use strait_control::istio::{convert_all, Outcome};
use strait_control::model::Object;
use strait_tests::backend::HttpGet;
use strait_tests::mesh_http::HttpMesh;
use strait_tests::require_root;

/// Request routing, fault injection and retries (Istio's "Traffic Management" tasks), a DestinationRule with
/// subsets and a `trafficPolicy`, and an ALLOW by principal (Istio's "Authorization" task).
const MANIFESTS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - match:
    - uri:
        prefix: /ratings
    fault:
      abort:
        percentage:
          value: 100.0
        httpStatus: 418
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
    retries:
      attempts: 4
      perTryTimeout: 2s
      retryOn: 5xx
    timeout: 10s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
    connectionPool:
      http:
        http1MaxPendingRequests: 100
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-viewer
  namespace: shop
spec:
  selector:
    matchLabels:
      app: reviews
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/sa-a1"]
    to:
    - operation:
        methods: ["GET"]
        ports: ["8080"]
"#;

#[test]
fn istio_docs_manifests_behave_as_in_istio_through_both_proxies() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let converted = convert_all(MANIFESTS, "cluster.local").map_err(anyhow::Error::msg)?;
    ensure!(converted.len() == 3, "{converted:?}");
    let mut objects = Vec::new();
    for c in converted {
        ensure!(!c.changes_behaviour(), "{}: {:?} {:?}", c.origin, c.notes, c.outcome);
        let Outcome::Resource { object, .. } = c.outcome else { bail!("{}: not a resource", c.origin) };
        objects.push(*object);
    }
    let mesh = HttpMesh::start(&["--fail-percent", "50"], &[], |config| {
        for object in objects {
            match object {
                Object::TrafficRoute(r) => config.traffic_routes.push(r),
                Object::DestinationPolicy(p) => config.destination_policies.push(p),
                Object::AuthorizationPolicy(p) => config.authorization_policies.push(p),
                other => panic!("unexpected {other:?}"),
            }
        }
    })?;
    let url = HttpMesh::reviews_url;

    // Header match: every request of end-user jason goes to v2.
    let jason = mesh.summary(&HttpGet::new(url("/")).count(50).header("end-user", "jason"))?;
    ensure!(jason.by_version.get("v2") == Some(&50), "end-user jason: {jason:?}\n{}", mesh.logs());

    // Fault injection: the abort answers at the source proxy; the backend never sees the request.
    let before = mesh.backend_requests("b2")?;
    let aborted = mesh.summary(&HttpGet::new(url("/ratings")).count(20))?;
    ensure!(aborted.by_status.get("418") == Some(&20), "fault abort: {aborted:?}");
    ensure!(mesh.backend_requests("b2")? == before, "an aborted request reached the backend");

    // Retries: v1 answers 503 half the time; four retries on 5xx hide nearly all of it (1 - 0.5^5 ~ 97 %),
    // where without them about half would fail.
    let retried = mesh.summary(&HttpGet::new(url("/")).count(200))?;
    let ok = retried.by_status.get("200").copied().unwrap_or(0);
    ensure!(ok >= 180, "with retries {ok} of 200 succeeded: {retried:?}\n{}", mesh.logs());
    ensure!(retried.by_version.keys().all(|v| v == "v1"), "the default route is v1: {retried:?}");

    // The ALLOW names GET from sa-a1: another method is denied at the destination.
    let post = mesh.summary(&HttpGet::new(url("/")).count(5).method("POST"))?;
    ensure!(post.by_status.get("403") == Some(&5), "POST is not allowed: {post:?}\n{}", mesh.logs());
    let denials = mesh.mesh.metric("node-b", "strait_policy_denials_total", &[])?;
    ensure!(denials >= 5.0, "denials counted at node-b: {denials}");
    Ok(())
}

/// The same manifests through `strait import`: the binary converts them, exits 0 (nothing changes meaning)
/// and prints Strait resources; with a mirror added it exits 1 and prints nothing to apply.
#[test]
fn strait_import_prints_strait_resources_and_refuses_changes_unless_accepted() -> Result<()> {
    let bin = strait_tests::mesh::workspace_binary("strait")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("istio.yaml");
    std::fs::write(&file, MANIFESTS)?;
    let out = std::process::Command::new(&bin).arg("import").arg(&file).output().context("running strait import")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{out:?}");
    for kind in
        ["kind: TrafficRoute", "kind: DestinationPolicy", "kind: AuthorizationPolicy", "maxPendingRequests: 100"]
    {
        ensure!(stdout.contains(kind), "{kind} missing from:\n{stdout}");
    }
    let mirrored = MANIFESTS.replacen("    timeout: 10s", "    timeout: 10s\n    mirror: {host: shadow}", 1);
    std::fs::write(&file, mirrored)?;
    let out = std::process::Command::new(&bin).arg("import").arg(&file).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && out.stdout.is_empty(), "{out:?}");
    ensure!(stderr.contains("dropped spec.http[2].mirror"), "{stderr}");
    let out = std::process::Command::new(&bin).args(["import", "--accept-changes"]).arg(&file).output()?;
    ensure!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("kind: TrafficRoute"), "{out:?}");
    Ok(())
}
