//! Gateway API routes attached to a Service (GAMMA), written as in the Gateway API and Istio documentation,
//! converted and merged by `strait_control::gateway` (what the file provider, the Kubernetes provider and
//! `strait import` use) and run through both proxies: split ratio, header match, URL rewrite and request
//! timeout are checked on the data path.
//!
//! ```text
//! a1 --> reviews (10.96.0.20:80) --HTTPRoute--> reviews-v1 (10.96.0.22 -> b1, v1) 90 %
//!                                          \--> reviews-v2 (10.96.0.23 -> b2, v2) 10 %, all of end-user jason
//! ```

use anyhow::{ensure, Context, Result};
use strait_control::gateway::{self, GatewayRoute};
use strait_control::model::{Service, Snapshot};
use strait_tests::backend::HttpGet;
use strait_tests::mesh_http::{http_service, HttpMesh};
use strait_tests::require_root;

/// The GAMMA request-routing and traffic-shifting examples in one HTTPRoute, plus Gateway API's URLRewrite,
/// RequestHeaderModifier and timeouts examples, on the `reviews` Service.
const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: shop
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 80
  rules:
  - backendRefs:
    - name: reviews-v1
      port: 80
      weight: 90
    - name: reviews-v2
      port: 80
      weight: 10
  - matches:
    - headers:
      - name: end-user
        value: jason
    backendRefs:
    - name: reviews-v2
      port: 80
  - matches:
    - path:
        type: PathPrefix
        value: /old
    filters:
    - type: URLRewrite
      urlRewrite:
        path:
          type: ReplacePrefixMatch
          replacePrefixMatch: /new
    - type: RequestHeaderModifier
      requestHeaderModifier:
        add:
        - name: x-gamma
          value: rewritten
    backendRefs:
    - name: reviews-v1
      port: 80
  - matches:
    - path:
        type: PathPrefix
        value: /slow
    timeouts:
      request: 300ms
    backendRefs:
    - name: reviews-v1
      port: 80
"#;

fn convert(yaml: &str) -> Result<GatewayRoute> {
    let document: serde_json::Value = serde_yaml::from_str(yaml)?;
    gateway::read_document(&document)
        .map_err(|(_, message)| anyhow::anyhow!(message))?
        .context("the route is attached to a Service")
}

#[test]
fn gamma_http_route_splits_matches_rewrites_and_times_out_through_both_proxies() -> Result<()> {
    if !require_root() {
        return Ok(());
    }
    let route = convert(ROUTE)?;
    let mesh = HttpMesh::start(&[], &[], |config| {
        let v1 = http_service(config, "reviews-v1", "10.96.0.22", "http", &["b1"]);
        let v2 = http_service(config, "reviews-v2", "10.96.0.23", "http", &["b2"]);
        config.services.extend([v1, v2]);
        // The control plane's merge, against the mesh's Services: one TrafficRoute for `reviews`.
        let services = config
            .services
            .iter()
            .map(|s| Service {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                addresses: s.addresses.clone(),
                ports: s.ports.clone(),
                selector: Default::default(),
                endpoints: s.endpoints.clone(),
            })
            .collect();
        let snapshot = Snapshot { services, gateway_routes: vec![route], ..Default::default() };
        config.traffic_routes.extend(gateway::traffic_routes(&snapshot));
    })?;
    let url = HttpMesh::reviews_url;

    // Header match: every request of end-user jason goes to reviews-v2, though its rule comes second.
    let jason = mesh.summary(&HttpGet::new(url("/")).count(40).header("end-user", "jason"))?;
    ensure!(jason.by_version.get("v2") == Some(&40), "end-user jason: {jason:?}\n{}", mesh.logs());

    // Split: 90/10 by weight. 400 requests: v2 expects 40 (standard deviation 6), so 15..=70 holds unless
    // the split is wrong.
    let split = mesh.summary(&HttpGet::new(url("/")).count(400).concurrency(8))?;
    let v1 = split.by_version.get("v1").copied().unwrap_or(0);
    let v2 = split.by_version.get("v2").copied().unwrap_or(0);
    ensure!(v1 + v2 == 400, "every request answered: {split:?}\n{}", mesh.logs());
    ensure!((15..=70).contains(&v2), "about 10 % to reviews-v2: {split:?}");

    // URL rewrite: the backend receives the rewritten path, the query and the added header.
    let rewritten = strait_tests::backend::single(mesh.get(&HttpGet::new(url("/old/page?q=1")))?)?;
    ensure!(rewritten.status == Some(200), "{rewritten:?}");
    ensure!(rewritten.body["path"] == "/new/page", "the backend saw {:?}", rewritten.body["path"]);
    ensure!(rewritten.body["query"] == "q=1", "the query is kept: {:?}", rewritten.body["query"]);
    ensure!(rewritten.request_header("x-gamma") == Some("rewritten"), "{:?}", rewritten.body["headers"]);
    ensure!(rewritten.version() == Some("v1"), "{rewritten:?}");
    // Element-wise prefix: /oldest is not under /old, so it takes the split rule and keeps its path.
    let other = strait_tests::backend::single(mesh.get(&HttpGet::new(url("/oldest"))).context("GET /oldest")?)?;
    ensure!(other.body["path"] == "/oldest", "{other:?}");

    // Request timeout: the backend holds the answer for 5 s; the source proxy answers 504 first.
    let slow =
        strait_tests::backend::single(mesh.get(&HttpGet::new(url("/slow")).header("x-backend-delay-ms", "5000"))?)?;
    ensure!(slow.status == Some(504), "timeouts.request: {slow:?}\n{}", mesh.logs());
    let fast = strait_tests::backend::single(mesh.get(&HttpGet::new(url("/slow")))?)?;
    ensure!(fast.status == Some(200), "under the timeout: {fast:?}");
    Ok(())
}

/// The same manifest through `strait import`: one TrafficRoute for `reviews` whose rules are in Gateway API
/// precedence order, and a note that the parent's port stands for the whole Service.
#[test]
fn strait_import_converts_gamma_routes() -> Result<()> {
    let bin = strait_tests::mesh::workspace_binary("strait")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("route.yaml");
    std::fs::write(&file, ROUTE)?;
    let out = std::process::Command::new(&bin).arg("import").arg(&file).output().context("running strait import")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && out.stdout.is_empty(), "the port note changes meaning: {out:?}");
    ensure!(stderr.contains("changed spec.parentRefs[0].port"), "{stderr}");
    let out = std::process::Command::new(&bin).args(["import", "--accept-changes"]).arg(&file).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "{out:?}");
    for want in ["kind: TrafficRoute", "- reviews", "from: /old", "to: /new", "timeout: 300ms"] {
        ensure!(stdout.contains(want), "{want} missing from:\n{stdout}");
    }
    // The header match comes before the catch-all split, though written after it.
    let jason = stdout.find("jason").context("the header match")?;
    let split = stdout.find("weight: 90").context("the split")?;
    ensure!(jason < split, "precedence order:\n{stdout}");
    Ok(())
}
