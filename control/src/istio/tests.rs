//! Istio's own documentation examples, converted.

use super::*;
use strait_api::{Action, MtlsMode, SimpleLb};

fn one(yaml: &str) -> Converted {
    let mut all = convert_all(yaml, "cluster.local").expect("parses");
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn object(c: &Converted) -> &Object {
    match &c.outcome {
        Outcome::Resource { object, .. } => object,
        other => panic!("{}: {other:?}", c.origin),
    }
}

fn fields(c: &Converted) -> Vec<(String, NoteKind)> {
    c.notes.iter().map(|n| (n.field.clone(), n.what)).collect()
}

/// The canary of the mesh's reference example: header match, 90/10, retries and a timeout.
const REVIEWS_VS: &str = r#"
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
        x-user-group:
          exact: beta
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
        port:
          number: 9080
      weight: 90
    - destination:
        host: reviews
        subset: v2
      weight: 10
    retries:
      attempts: 3
      perTryTimeout: 2s
      retryOn: 5xx,reset,connect-failure
    timeout: 10s
  - fault:
      delay:
        percentage:
          value: 10
        fixedDelay: 5s
      abort:
        httpStatus: 503
    route:
    - destination:
        host: reviews
"#;

#[test]
fn a_virtual_service_as_in_istios_docs_becomes_an_equivalent_traffic_route() {
    let c = one(REVIEWS_VS);
    assert_eq!(c.origin, "VirtualService shop/reviews");
    assert!(c.notes.is_empty(), "{:?}", c.notes);
    let Outcome::Resource { document, .. } = &c.outcome else { panic!("{:?}", c.outcome) };
    assert_eq!(document["kind"], "TrafficRoute");
    let Object::TrafficRoute(route) = object(&c) else { panic!("{:?}", c.outcome) };
    assert_eq!(route.spec.hosts, ["reviews"]);
    let rules = &route.spec.http;
    assert_eq!(rules[0].matches[0].headers["x-user-group"].exact.as_deref(), Some("beta"));
    assert_eq!(rules[1].route[0].weight, Some(90));
    assert_eq!(rules[1].route[0].destination.port, Some(9080));
    let retries = rules[1].retries.as_ref().expect("retries");
    assert_eq!((retries.attempts, retries.per_try_timeout.as_deref()), (3, Some("2s")));
    assert_eq!(retries.retry_on.as_deref(), Some("5xx,reset,connect-failure"));
    assert_eq!(rules[1].timeout.as_deref(), Some("10s"));
    let fault = rules[2].fault.as_ref().expect("fault");
    assert_eq!(fault.delay.as_ref().map(|d| d.percentage), Some(10.0));
    // Istio aborts every request when the percentage is absent.
    assert_eq!(fault.abort.as_ref().map(|a| (a.http_status, a.percentage)), Some((503, 100.0)));
    assert!(!c.changes_behaviour());
}

#[test]
fn what_a_virtual_service_cannot_express_here_is_named_field_by_field() {
    let c = one(r#"
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings, "*.example.com"]
  gateways: [mesh]
  http:
  - match: [{uri: {prefix: /v1}, ignoreUriCase: true}]
    rewrite: {uri: /}
    mirror: {host: ratings-shadow}
    route: [{destination: {host: ratings}, headers: {request: {set: {x: y}}}}]
    somethingNew: 1
  tcp: [{route: [{destination: {host: ratings}}]}]
"#);
    let notes = fields(&c);
    for (field, what) in [
        ("spec.hosts[1]", NoteKind::Dropped),
        ("spec.gateways", NoteKind::Ignored),
        ("spec.http[0].match[0].ignoreUriCase", NoteKind::Dropped),
        ("spec.http[0].rewrite", NoteKind::Dropped),
        ("spec.http[0].mirror", NoteKind::Dropped),
        ("spec.http[0].route[0].headers", NoteKind::Dropped),
        ("spec.http[0].somethingNew", NoteKind::Dropped),
        ("spec.tcp", NoteKind::Dropped),
    ] {
        assert!(notes.contains(&(field.to_string(), what)), "{field} {what:?} missing from {notes:?}");
    }
    assert_eq!(notes.len(), 8, "{notes:?}");
    assert!(c.changes_behaviour());
    assert!(matches!(c.outcome, Outcome::Resource { .. }), "what remains still converts: {:?}", c.outcome);
}

/// The DestinationRule of the reference example, written the Istio way: `trafficPolicy:` wrapper,
/// `http1MaxPendingRequests`, the deprecated `consecutiveErrors`.
const REVIEWS_DR: &str = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpHeaderName: x-user-id
    connectionPool:
      tcp:
        maxConnections: 100
        connectTimeout: 30ms
      http:
        http1MaxPendingRequests: 50
        http2MaxRequests: 1000
    outlierDetection:
      consecutiveErrors: 5
      interval: 30s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
    tls:
      mode: ISTIO_MUTUAL
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"#;

#[test]
fn a_destination_rule_with_its_traffic_policy_wrapper_becomes_a_destination_policy() {
    let c = one(REVIEWS_DR);
    let Object::DestinationPolicy(dp) = object(&c) else { panic!("{:?}", c.outcome) };
    let spec = &dp.spec;
    assert_eq!(spec.subsets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["v1", "v2"]);
    let hash = spec.load_balancer.as_ref().and_then(|lb| lb.consistent_hash.as_ref()).expect("hash");
    assert_eq!(hash.http_header_name.as_deref(), Some("x-user-id"));
    let pool = spec.connection_pool.as_ref().expect("pool");
    assert_eq!(pool.tcp.as_ref().and_then(|t| t.max_connections), Some(100));
    assert_eq!(pool.tcp.as_ref().and_then(|t| t.connect_timeout.as_deref()), Some("30ms"));
    let http = pool.http.as_ref().expect("http pool");
    assert_eq!((http.max_pending_requests, http.max_requests), (Some(50), Some(1000)));
    let outlier = spec.outlier_detection.as_ref().expect("outlier");
    assert_eq!(outlier.consecutive_gateway_errors, Some(5));
    assert_eq!(outlier.max_ejection_percent, Some(50));
    // consecutiveErrors and tls ISTIO_MUTUAL say nothing Strait does not already do.
    assert!(c.notes.iter().all(|n| n.what == NoteKind::Ignored), "{:?}", c.notes);
    assert!(!c.changes_behaviour());
}

#[test]
fn per_subset_policies_and_unsupported_balancers_are_reported() {
    let c = one(r#"
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: PASSTHROUGH}
    connectionPool: {http: {maxRetries: 3}}
    portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: RANDOM}}]
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"#);
    let notes = fields(&c);
    for field in [
        "spec.trafficPolicy.loadBalancer.simple",
        "spec.trafficPolicy.connectionPool.http.maxRetries",
        "spec.trafficPolicy.portLevelSettings",
        "spec.subsets[0].trafficPolicy",
    ] {
        assert!(notes.contains(&(field.to_string(), NoteKind::Dropped)), "{field} missing from {notes:?}");
    }
    assert!(c.changes_behaviour());
}

#[test]
fn lb_names_convert_and_least_conn_is_least_request() {
    let c = one("apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: r, namespace: shop}\n\
         spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}}");
    let Object::DestinationPolicy(dp) = object(&c) else { panic!("{:?}", c.outcome) };
    assert_eq!(dp.spec.load_balancer.as_ref().and_then(|lb| lb.simple), Some(SimpleLb::LeastRequest));
}

/// Istio's docs example: an ALLOW with principals and namespaces, a `when` on JWT claims, string ports.
const HTTPBIN_AP: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
      version: v1
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["dev"]
    to:
    - operation:
        methods: ["GET"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/service-a"]
    to:
    - operation:
        ports: ["8080"]
        paths: ["/healthz", "/api/*"]
"#;

#[test]
fn an_allow_rule_with_a_condition_strait_cannot_check_is_left_out_never_widened() {
    let c = one(HTTPBIN_AP);
    let Object::AuthorizationPolicy(ap) = object(&c) else { panic!("{:?}", c.outcome) };
    assert_eq!(ap.spec.action, Action::Allow);
    assert_eq!(ap.spec.rules.len(), 1, "the rule with `when` is left out: {:?}", ap.spec.rules);
    let rule = &ap.spec.rules[0];
    assert_eq!(rule.from[0].source.principals, ["cluster.local/ns/default/sa/service-a"]);
    assert_eq!(rule.to[0].operation.ports, [8080]);
    assert_eq!(fields(&c), [("spec.rules[0].when".to_string(), NoteKind::Dropped)]);
    assert!(c.changes_behaviour());
}

#[test]
fn a_deny_rule_with_a_condition_strait_cannot_check_applies_without_it() {
    let c = one(r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"], hosts: ["admin.example.com"]}}]
"#);
    let Object::AuthorizationPolicy(ap) = object(&c) else { panic!("{:?}", c.outcome) };
    assert_eq!(ap.spec.rules.len(), 1);
    assert_eq!(ap.spec.rules[0].to[0].operation.paths, ["/admin*"]);
    assert_eq!(fields(&c), [("spec.rules[0].to[0].operation.hosts".to_string(), NoteKind::Changed)]);
}

#[test]
fn custom_and_audit_actions_and_target_refs_are_refused_not_guessed() {
    for spec in
        ["{action: CUSTOM, provider: {name: ext}}", "{action: AUDIT}", "{targetRefs: [{kind: Gateway, name: g}]}"]
    {
        let c = one(&format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\nspec: {spec}"
        ));
        assert!(matches!(c.outcome, Outcome::Refused(_)), "{spec}: {:?}", c.outcome);
        assert!(c.changes_behaviour());
    }
}

fn direct(c: &Converted) -> &Object {
    match &c.outcome {
        Outcome::Direct { object } => object,
        other => panic!("{}: {other:?}", c.origin),
    }
}

#[test]
fn peer_authentication_is_read_as_it_is_with_istio_precedence_fields() {
    let pa = |spec: &str, namespace: &str| {
        one(&format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {namespace}}}\nspec: {spec}"
        ))
    };
    let policy = |c: &Converted| match direct(c) {
        Object::PeerAuthentication(p) => p.clone(),
        other => panic!("{other:?}"),
    };
    let strict = pa("{mtls: {mode: STRICT}}", "foo");
    assert!(!strict.changes_behaviour());
    let p = policy(&strict);
    assert_eq!((p.mode, p.mesh_wide, p.selector.is_none()), (Some(MtlsMode::Strict), false, true));
    let unset = pa("{}", "foo");
    assert_eq!(policy(&unset).mode, None, "UNSET inherits");
    let mesh_wide = pa("{mtls: {mode: PERMISSIVE}}", "istio-system");
    assert!(policy(&mesh_wide).mesh_wide && !mesh_wide.changes_behaviour());
    let disable = pa("{mtls: {mode: DISABLE}}", "foo");
    assert_eq!(policy(&disable).mode, Some(MtlsMode::Permissive));
    assert!(disable.changes_behaviour(), "DISABLE reads as PERMISSIVE, a change");
    // Istio's docs: workload STRICT with port 8080 DISABLE.
    let finance = one(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: finance, namespace: foo}\n\
         spec:\n  selector:\n    matchLabels:\n      app: finance\n  mtls:\n    mode: STRICT\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n",
    );
    let p = policy(&finance);
    assert_eq!(p.selector.expect("selector").match_labels.get("app").map(String::as_str), Some("finance"));
    assert_eq!(p.port_level_mtls.get(&8080), Some(&MtlsMode::Permissive));
    assert!(finance.notes.iter().any(|n| n.field == "spec.portLevelMtls.8080.mode"), "{:?}", finance.notes);
    for (spec, field) in [
        ("{portLevelMtls: {8080: {mode: STRICT}}}", "spec.portLevelMtls: needs a selector"),
        ("{selector: {matchLabels: {app: a}}, portLevelMtls: {http: {mode: STRICT}}}", "spec.portLevelMtls.http"),
        ("{mtls: {mode: SOMETIMES}}", "spec.mtls.mode"),
        ("{targetRef: {kind: Service, name: a}}", "spec.targetRef"),
    ] {
        let Outcome::Refused(reason) = pa(spec, "foo").outcome else { panic!("{spec} converted") };
        assert!(reason.contains(field), "{spec}: {reason}");
    }
}

#[test]
fn service_entries_become_external_hosts_and_what_cannot_be_matched_is_refused() {
    let se = |spec: &str| {
        one(&format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: ext, namespace: shop}}\nspec:\n{spec}"
        ))
    };
    let entry = |c: &Converted| match direct(c) {
        Object::ServiceEntry(e) => e.spec.clone(),
        other => panic!("{other:?}"),
    };
    // Istio's docs (external-svc-mongocluster), as MESH_EXTERNAL.
    let mongo = se("  hosts: [mymongodb.somedomain]\n  addresses: [192.192.192.192/24]\n  ports:\n  - number: 27018\n    name: mongodb\n    protocol: MONGO\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  endpoints:\n  - address: 2.2.2.2\n  - address: 3.3.3.3\n");
    assert!(!mongo.changes_behaviour(), "{:?}", mongo.notes);
    let e = entry(&mongo);
    assert_eq!(e.resolution, strait_api::Resolution::Static);
    assert_eq!((e.endpoints.len(), e.ports[0].number, e.host()), (2, 27018, "mymongodb.somedomain"));
    let none = se("  hosts: [api.example.com]\n  addresses: [192.0.2.1]\n  ports: [{number: 443, name: https, protocol: TLS}]\n  exportTo: ['*']\n");
    assert!(!none.changes_behaviour(), "{:?}", none.notes);
    for (spec, field) in [
        // Istio's docs (external-svc-https): DNS resolution.
        ("  hosts: [api.dropboxapi.com]\n  location: MESH_EXTERNAL\n  ports: [{number: 443, name: https, protocol: TLS}]\n  resolution: DNS\n", "spec.resolution"),
        ("  hosts: [a.example.com]\n  addresses: [192.0.2.1]\n  ports: [{number: 27018}]\n  location: MESH_INTERNAL\n", "spec.location"),
        ("  hosts: [a.example.com]\n  ports: [{number: 443}]\n", "spec.addresses"),
        ("  hosts: [a.example.com]\n  resolution: STATIC\n  ports: [{number: 443}]\n  endpoints: [{address: db.example.com}]\n", "spec.endpoints[0].address"),
        ("  hosts: [a.example.com]\n  addresses: [192.0.2.1]\n  ports: [{number: 70000}]\n", "spec.ports[0].number"),
        ("  hosts: [a.example.com]\n  addresses: [192.0.2.1]\n  ports: [{number: 443}]\n  workloadSelector: {labels: {app: a}}\n", "spec.workloadSelector"),
    ] {
        let Outcome::Refused(reason) = se(spec).outcome else { panic!("{spec} converted") };
        assert!(reason.contains(field), "{field}: {reason}");
    }
    let weighted = se("  hosts: [a.example.com]\n  addresses: [192.0.2.1]\n  resolution: STATIC\n  ports: [{number: 443}]\n  endpoints: [{address: 192.0.2.2, weight: 3}]\n");
    assert!(weighted.changes_behaviour(), "an endpoint weight is dropped, a change");
}

#[test]
fn a_converted_resource_that_strait_would_refuse_is_refused_with_the_field() {
    let c = one("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: shop}\n\
         spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}], timeout: 99999999999999999999s}]}");
    let Outcome::Refused(reason) = &c.outcome else { panic!("{:?}", c.outcome) };
    assert!(reason.contains("spec.http[0].timeout"), "{reason}");
}

#[test]
fn other_documents_are_skipped_and_garbage_is_an_error() {
    let text =
        format!("{REVIEWS_VS}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: reviews}}\n---\n{REVIEWS_DR}");
    assert_eq!(convert_all(&text, "cluster.local").expect("parses").len(), 2);
    assert!(convert_all("a: [", "cluster.local").is_err());
    let odd = convert_all("apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {}", "td");
    assert!(matches!(odd.expect("parses")[0].outcome, Outcome::Refused(_)));
}

/// Issue 15: the consistent-hash keys Istio documents are converted, not dropped; the ring is sized as
/// asked; Maglev becomes Strait's ring hash, said so.
#[test]
fn consistent_hash_on_the_source_ip_or_a_query_parameter_converts_with_its_ring() {
    let rule = |hash: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: db, namespace: shop}}\n\
             spec:\n  host: db\n  trafficPolicy:\n    loadBalancer:\n      consistentHash: {hash}\n"
        )
    };
    let hash_of = |c: &Converted| {
        let Object::DestinationPolicy(dp) = object(c) else { panic!("{:?}", c.outcome) };
        dp.spec.load_balancer.clone().and_then(|lb| lb.consistent_hash).expect("hash")
    };
    let c = one(&rule("{useSourceIp: true, ringHash: {minimumRingSize: 4096}}"));
    let hash = hash_of(&c);
    assert_eq!(hash.use_source_ip, Some(true));
    assert_eq!(hash.ring_hash.and_then(|r| r.minimum_ring_size), Some(4096));
    assert!(c.notes.is_empty(), "{:?}", c.notes);

    let c = one(&rule("{httpQueryParameterName: user, minimumRingSize: 2048}"));
    let hash = hash_of(&c);
    assert_eq!(hash.http_query_parameter_name.as_deref(), Some("user"));
    assert_eq!(hash.ring_hash.and_then(|r| r.minimum_ring_size), Some(2048));
    assert!(!c.changes_behaviour(), "{:?}", c.notes);

    let c = one(&rule("{useSourceIp: true, maglev: {tableSize: 65537}}"));
    let hash = hash_of(&c);
    assert_eq!((hash.use_source_ip, hash.maglev), (Some(true), None));
    let field = "spec.trafficPolicy.loadBalancer.consistentHash.maglev";
    assert!(c.notes.iter().any(|n| n.field == field && n.what == NoteKind::Changed), "{:?}", c.notes);
    assert!(c.changes_behaviour());
}
