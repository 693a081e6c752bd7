use serde_json::Value;
use strait_api::{ServicePort, StringMatch};

use super::*;
use crate::model::{Object, Service, Snapshot};

fn document(yaml: &str) -> Value {
    serde_yaml::from_str(yaml).expect("YAML")
}

fn route(yaml: &str) -> GatewayRoute {
    read_document(&document(yaml)).expect("converts").expect("attached to a Service")
}

fn refusal(yaml: &str) -> String {
    read_document(&document(yaml)).expect_err("refused").1
}

fn service(name: &str, ports: &[u16]) -> Service {
    Service {
        name: name.into(),
        namespace: "bookinfo".into(),
        addresses: vec![],
        ports: ports
            .iter()
            .map(|p| ServicePort { name: None, port: *p, target_port: None, app_protocol: None })
            .collect(),
        selector: [("app".to_string(), name.to_string())].into(),
        endpoints: vec![],
    }
}

fn whole(regex: &str, path: &str) -> bool {
    regex::Regex::new(&format!("^(?:{regex})$")).expect("regex").is_match(path)
}

/// The GAMMA traffic-shifting example (Istio's "Traffic Shifting" task with Gateway API): 90/10 between two
/// Services behind the `reviews` Service.
const CANARY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: bookinfo
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 9080
  rules:
  - backendRefs:
    - name: reviews-v1
      port: 9080
      weight: 90
    - name: reviews-v2
      port: 9080
      weight: 10
"#;

#[test]
fn a_canary_split_is_weighted_destinations_to_the_backend_services() {
    let r = route(CANARY);
    assert_eq!(r.kind, RouteKind::Http);
    assert_eq!(r.parents.len(), 1);
    assert_eq!(r.rules.len(), 1);
    let rule = &r.rules[0].rule;
    assert!(rule.matches.is_empty(), "no match is PathPrefix / : everything");
    let split: Vec<(&str, Option<u16>, Option<u32>)> =
        rule.route.iter().map(|d| (d.destination.host.as_str(), d.destination.port, d.weight)).collect();
    assert_eq!(split, [("reviews-v1", Some(9080), Some(90)), ("reviews-v2", Some(9080), Some(10))]);
    assert_eq!(rule.name.as_deref(), Some("bookinfo/reviews[0]"));

    // Through the merge: one TrafficRoute for the reviews Service, once the Service exists with that port.
    let objects = [
        Object::GatewayRoute(r.clone()),
        Object::Service(service("reviews", &[9080])),
        Object::Service(service("reviews-v1", &[9080])),
        Object::Service(service("reviews-v2", &[9080])),
    ];
    let routes = traffic_routes(&Snapshot::from_objects(&objects));
    assert_eq!(routes.len(), 1);
    assert_eq!(
        (routes[0].name.as_str(), routes[0].spec.hosts.as_slice()),
        ("httproute.reviews", &["reviews".to_string()][..])
    );
    assert_eq!(routes[0].spec.http, vec![rule.clone()]);

    // A parent port that is not the Service's only port is refused by name: Strait routes whole Services.
    let two_ports = [Object::GatewayRoute(r), Object::Service(service("reviews", &[9080, 9090]))];
    let snapshot = Snapshot::from_objects(&two_ports);
    let states = parent_states(&snapshot, &snapshot.gateway_routes[0]);
    let (reason, message) = states[0].accepted.clone().expect_err("refused");
    assert_eq!(reason, "UnsupportedValue");
    assert!(message.starts_with("spec.parentRefs[0].port: "), "{message}");
    assert!(traffic_routes(&snapshot).is_empty());
}

/// Header match before the catch-all, whatever the rule order (Gateway API precedence: more header matches
/// first), from the GAMMA "request routing" example.
#[test]
fn header_matches_take_precedence_over_the_default_rule() {
    let r = route(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 9080}]
  - matches:
    - headers:
      - name: End-User
        value: jason
      - name: end-user
        value: ignored-second-entry
    - path: {type: Exact, value: /exact}
      method: GET
      queryParams: [{type: RegularExpression, name: v, value: "[0-9]+"}]
    backendRefs: [{name: reviews-v2, port: 9080}]
"#,
    );
    let origins: Vec<&str> = r.rules.iter().map(|r| r.origin.as_str()).collect();
    assert_eq!(origins, ["spec.rules[1].matches[1]", "spec.rules[1].matches[0]", "spec.rules[0]"]);
    let exact = &r.rules[0].rule.matches[0];
    assert_eq!(exact.uri, Some(StringMatch { exact: Some("/exact".into()), ..Default::default() }));
    assert_eq!(exact.method, Some(StringMatch { exact: Some("GET".into()), ..Default::default() }));
    assert_eq!(exact.query_params["v"].regex.as_deref(), Some("[0-9]+"));
    let header = &r.rules[1].rule.matches[0];
    assert_eq!(header.headers.len(), 1, "names are case-insensitive; the first entry counts");
    assert_eq!(header.headers["end-user"].exact.as_deref(), Some("jason"));
    assert_eq!(r.rules[1].rule.route[0].destination.host, "reviews-v2");
    assert_eq!(r.rules[1].rule.route[0].weight, Some(1), "an absent weight is 1");
}

#[test]
fn path_prefixes_match_whole_segments_and_longer_prefixes_win() {
    let r = route(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /foo/}}]
    backendRefs: [{name: short, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /foo/bar}}]
    backendRefs: [{name: long, port: 80}]
"#,
    );
    assert_eq!(r.rules[0].rule.route[0].destination.host, "long");
    let regex = r.rules[1].rule.matches[0].uri.as_ref().and_then(|u| u.regex.clone()).expect("a regex");
    for (path, matches) in [("/foo", true), ("/foo/", true), ("/foo/x", true), ("/foobar", false), ("/fo", false)] {
        assert_eq!(whole(&regex, path), matches, "{path}");
    }
}

/// Gateway API's URLRewrite example (ReplacePrefixMatch with a hostname), and ReplaceFullPath.
#[test]
fn url_rewrites_become_rewrites_of_the_matched_prefix() {
    let r = route(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: http-filter-url-rewrite, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /prefix/one}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: elsewhere.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /one}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /full}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /replaced}}
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: "1"}]
        add: [{name: x-add, value: "2"}]
        remove: [x-remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-answered-by, value: strait}]}
    backendRefs: [{name: web, port: 80}]
"#,
    );
    let full = &r.rules[0].rule;
    assert_eq!(full.rewrite.as_ref().and_then(|w| w.full_path.as_deref()), Some("/replaced"));
    let headers = full.headers.as_ref().expect("header changes");
    let request = headers.request.as_ref().expect("request");
    assert_eq!((request.set["x-set"].as_str(), request.add["x-add"].as_str()), ("1", "2"));
    assert_eq!(request.remove, ["x-remove"]);
    assert_eq!(headers.response.as_ref().map(|r| r.set["x-answered-by"].as_str()), Some("strait"));
    let prefix = r.rules[1].rule.rewrite.as_ref().expect("a rewrite");
    let replace = prefix.prefix.as_ref().expect("a prefix rewrite");
    assert_eq!((replace.from.as_str(), replace.to.as_str()), ("/prefix/one", "/one"));
    assert_eq!(replace.apply("/prefix/one/two").as_deref(), Some("/one/two"));
    assert_eq!(prefix.authority.as_deref(), Some("elsewhere.example"));

    let exact = CANARY.replace(
        "  - backendRefs:",
        "  - matches: [{path: {type: Exact, value: /x}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /y}}}]\n    backendRefs:",
    );
    let message = refusal(&exact);
    assert!(
        message.starts_with("spec.rules[0].filters[0].urlRewrite.path: ReplacePrefixMatch needs a PathPrefix"),
        "{message}"
    );
}

/// Gateway API's timeouts example: `request` bounds the whole request, `backendRequest` each try.
#[test]
fn timeouts_become_the_rule_timeout_and_a_per_try_timeout() {
    let r = route(
        &CANARY
            .replace("      weight: 10\n", "      weight: 10\n    timeouts: {request: 1m30s, backendRequest: 500ms}\n"),
    );
    let rule = &r.rules[0].rule;
    assert_eq!(rule.timeout.as_deref(), Some("90000ms"));
    let retries = rule.retries.as_ref().expect("a per-try timeout");
    assert_eq!((retries.attempts, retries.per_try_timeout.as_deref()), (0, Some("500ms")));

    let longer = refusal(
        &CANARY.replace("      weight: 10\n", "      weight: 10\n    timeouts: {request: 1s, backendRequest: 2s}\n"),
    );
    assert!(longer.starts_with("spec.rules[0].timeouts.backendRequest: must not be longer"), "{longer}");
    let bad = refusal(&CANARY.replace("      weight: 10\n", "      weight: 10\n    timeouts: {request: 1.5s}\n"));
    assert!(bad.starts_with("spec.rules[0].timeouts.request: \"1.5s\" is not a Gateway API duration"), "{bad}");
    assert_eq!(spec::parse_duration("1h30m").expect("valid"), std::time::Duration::from_secs(5400));
    assert!(spec::parse_duration("25h").is_err(), "over the 24 h bound");
}

/// Gateway API's GRPCRoute example: service and method matches are paths `/<service>/<method>`.
#[test]
fn grpc_method_matches_are_paths() {
    let r = route(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-header-matching, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{method: {service: com.example.User}}]
    backendRefs: [{name: user, port: 50051}]
  - matches:
    - method: {service: com.example.User, method: Login}
      headers: [{name: env, value: canary}]
    backendRefs: [{name: login-canary, port: 50051}]
  - matches: [{method: {type: RegularExpression, method: "Get.*"}}]
    backendRefs: [{name: getters, port: 50051}]
"#,
    );
    assert_eq!(r.kind, RouteKind::Grpc);
    let hosts: Vec<&str> = r.rules.iter().map(|r| r.rule.route[0].destination.host.as_str()).collect();
    assert_eq!(hosts, ["login-canary", "user", "getters"], "longest service, then longest method first");
    let login = &r.rules[0].rule.matches[0];
    assert_eq!(login.uri.as_ref().and_then(|u| u.exact.as_deref()), Some("/com.example.User/Login"));
    assert_eq!(login.headers["env"].exact.as_deref(), Some("canary"));
    let service = r.rules[1].rule.matches[0].uri.as_ref().and_then(|u| u.regex.clone()).expect("regex");
    assert!(whole(&service, "/com.example.User/Anything") && !whole(&service, "/com.exampleXUser/Anything"));
    let getters = r.rules[2].rule.matches[0].uri.as_ref().and_then(|u| u.regex.clone()).expect("regex");
    assert!(whole(&getters, "/any.Service/GetUser") && !whole(&getters, "/any.Service/SetUser"));
}

#[test]
fn unsupported_fields_are_refused_by_name() {
    let with_rule = |extra: &str| CANARY.replace("      weight: 10\n", &format!("      weight: 10\n{extra}"));
    let cases = [
        (
            with_rule("    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}]\n"),
            "spec.rules[0].filters[0].type: RequestMirror is not supported",
        ),
        (
            with_rule("    retry: {attempts: 3}\n"),
            "spec.rules[0].retry: not supported by Strait (unknown field `retry`",
        ),
        (
            with_rule("    sessionPersistence: {sessionName: x}\n"),
            "spec.rules[0].sessionPersistence: not supported by Strait (unknown field `sessionPersistence`",
        ),
        (CANARY.replace("  rules:", "  hostnames: [reviews.example]\n  rules:"), "spec.hostnames: not supported"),
        (
            CANARY.replace("    - name: reviews-v2\n", "    - name: reviews-v2\n      namespace: other\n"),
            "spec.rules[0].backendRefs[1].namespace: a backend in another namespace needs a ReferenceGrant",
        ),
        (
            with_rule(
                "    matches: [{path: {type: Exact, value: /x}, headers: [{type: Prefix, name: a, value: b}]}]\n",
            ),
            "spec.rules[0].matches[0].headers[0].type: \"Prefix\" is not supported",
        ),
        (
            with_rule("    matches: [{path: {type: RegularExpression, value: \"/(\"}}]\n"),
            "spec.rules[0].matches[0]: as converted, match[0].uri.regex",
        ),
    ];
    for (yaml, want) in cases {
        let message = refusal(&yaml);
        assert!(message.starts_with(want), "want {want:?}, got {message:?}");
    }
}

#[test]
fn redirects_are_converted_or_refused_by_name() {
    let redirect = |filter: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: bookinfo}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: web}}]\n  rules:\n  - filters: [{{type: RequestRedirect, requestRedirect: {filter}}}]\n"
        )
    };
    let r =
        route(&redirect("{hostname: example.org, port: 8080, path: {type: ReplaceFullPath, replaceFullPath: /new}}"));
    let converted = r.rules[0].rule.redirect.clone().expect("a redirect");
    assert_eq!(converted.authority.as_deref(), Some("example.org:8080"));
    assert_eq!((converted.uri.as_deref(), converted.redirect_code), (Some("/new"), Some(302)), "302 is the default");
    assert!(refusal(&redirect("{scheme: https}")).starts_with("spec.rules[0].filters[0].requestRedirect.scheme"));
    assert!(refusal(&redirect("{hostname: example.org}")).starts_with("spec.rules[0].filters[0].requestRedirect.port"));
    assert!(refusal(&redirect("{statusCode: 307}")).starts_with("spec.rules[0].filters[0].requestRedirect.statusCode"));
}

#[test]
fn routes_of_a_gateway_are_not_the_meshs() {
    let gateway = CANARY
        .replace("  - group: \"\"\n    kind: Service\n    name: reviews\n    port: 9080\n", "  - name: my-gateway\n");
    assert_eq!(read_document(&document(&gateway)).expect("readable"), None);
}

/// Precedence: a TrafficRoute for the Service wins over a GRPCRoute, which wins over an HTTPRoute; the
/// losers' parents name the winner, in the admission's problems too.
#[test]
fn precedence_between_kinds_names_the_winner() {
    let files = [
        ("http.yaml", CANARY.to_string()),
        (
            "grpc.yaml",
            CANARY.replace("kind: HTTPRoute", "kind: GRPCRoute").replace("name: reviews\n  namespace", "name: reviews-grpc\n  namespace"),
        ),
        ("mesh.yaml", "apiVersion: strait.dev/v1alpha1\nkind: Mesh\nspec:\n  services:\n  - {name: reviews, namespace: bookinfo, ports: [{port: 9080}], selector: {app: reviews}}\n".to_string()),
    ];
    let mut discovered = crate::model::Discovered::default();
    for (name, text) in &files {
        crate::files::parse_file(name, text, &mut discovered);
    }
    assert!(discovered.rejected.is_empty(), "{:?}", discovered.rejected);
    let mut admission = crate::admit::Admission::new("cluster.local");
    let admitted = admission.admit(&discovered);
    let conflicted: Vec<&String> = admitted.problems.iter().filter(|p| p.contains("takes precedence")).collect();
    assert_eq!(conflicted.len(), 1, "{:?}", admitted.problems);
    assert!(
        conflicted[0].contains("HTTPRoute bookinfo/reviews: spec.parentRefs[0]: Service bookinfo/reviews is routed by GRPCRoute bookinfo/reviews-grpc"),
        "{}",
        conflicted[0]
    );
    let config = crate::translate::translate(&admitted.snapshot, "cluster.local");
    let names: Vec<&str> = config.traffic_routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["grpcroute.reviews"]);

    let traffic_route = "apiVersion: strait.dev/v1alpha1\nkind: TrafficRoute\nmetadata: {name: own, namespace: bookinfo}\nspec:\n  hosts: [reviews]\n  http: [{route: [{destination: {host: reviews}}]}]\n";
    crate::files::parse_file("own.yaml", traffic_route, &mut discovered);
    let admitted = admission.admit(&discovered);
    let conflicted: Vec<&String> = admitted.problems.iter().filter(|p| p.contains("takes precedence")).collect();
    assert_eq!(conflicted.len(), 2, "{:?}", admitted.problems);
    assert!(conflicted.iter().all(|p| p.contains("is routed by TrafficRoute bookinfo/own")), "{conflicted:?}");
    let config = crate::translate::translate(&admitted.snapshot, "cluster.local");
    let names: Vec<&str> = config.traffic_routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["own"]);
}

/// Several HTTPRoutes on one Service merge by match precedence, then age, then name.
#[test]
fn routes_of_one_service_merge_by_precedence_then_age() {
    let catch_all = route(&CANARY.replace("name: reviews\n  namespace", "name: a-catch-all\n  namespace"));
    let mut header = route(
        &CANARY
            .replace("name: reviews\n  namespace", "name: z-header\n  namespace")
            .replace("  - backendRefs:", "  - matches: [{headers: [{name: x, value: y}]}]\n    backendRefs:"),
    );
    let mut older = route(&CANARY.replace("name: reviews\n  namespace", "name: b-older\n  namespace"));
    older.created = Some(1);
    header.created = Some(2);
    let objects = [
        Object::GatewayRoute(catch_all),
        Object::GatewayRoute(header),
        Object::GatewayRoute(older),
        Object::Service(service("reviews", &[9080])),
    ];
    let routes = traffic_routes(&Snapshot::from_objects(&objects));
    let names: Vec<&str> = routes[0].spec.http.iter().filter_map(|r| r.name.as_deref()).collect();
    assert_eq!(names, ["bookinfo/z-header[0]", "bookinfo/b-older[0]", "bookinfo/a-catch-all[0]"]);
}

/// Gateway API: a backendRef that does not resolve (no such Service, no such port, another kind) leaves the
/// route accepted; requests that would go to it get 500 (UNAVAILABLE, HTTP 503, for a GRPCRoute), only its
/// share of them with several weighted backends; `ResolvedRefs` is False with the spec's reason.
#[test]
fn backends_that_do_not_resolve_get_their_share_of_500s_and_resolved_refs_false() {
    let converted = |yaml: &str, services: &[Service]| {
        let r = route(yaml);
        let mut objects = vec![Object::GatewayRoute(r.clone()), Object::Service(service("reviews", &[9080]))];
        objects.extend(services.iter().cloned().map(Object::Service));
        let snapshot = Snapshot::from_objects(&objects);
        let routes = traffic_routes(&snapshot);
        let resolved = status::resolved_refs(&r, &snapshot);
        (routes[0].spec.http[0].clone(), resolved)
    };
    let abort = |rule: &strait_api::HttpRoute| {
        rule.fault.as_ref().and_then(|f| f.abort.as_ref()).map(|a| (a.http_status, a.percentage))
    };
    let hosts = |rule: &strait_api::HttpRoute| -> Vec<String> {
        rule.route.iter().map(|d| d.destination.host.clone()).collect()
    };

    // Every backend resolves: forwarded as written, ResolvedRefs True.
    let (rule, resolved) = converted(CANARY, &[service("reviews-v1", &[9080]), service("reviews-v2", &[9080])]);
    assert_eq!((hosts(&rule), abort(&rule)), (vec!["reviews-v1".to_string(), "reviews-v2".to_string()], None));
    assert_eq!((resolved.0, resolved.1), ("True", "ResolvedRefs"));

    // reviews-v2 (weight 10 of 100) is missing: 10 % answered 500, the rest to reviews-v1.
    let (rule, resolved) = converted(CANARY, &[service("reviews-v1", &[9080])]);
    assert_eq!((hosts(&rule), abort(&rule)), (vec!["reviews-v1".to_string()], Some((500, 10.0))));
    assert_eq!((resolved.0, resolved.1), ("False", "BackendNotFound"));
    assert!(resolved.2.starts_with("spec.rules[0].backendRefs[1]: Service bookinfo/reviews-v2 does not exist"));

    // A port the Service does not have.
    let (rule, resolved) = converted(CANARY, &[service("reviews-v1", &[9080]), service("reviews-v2", &[80])]);
    assert_eq!(abort(&rule), Some((500, 10.0)));
    assert_eq!(resolved.1, "BackendNotFound");
    assert!(resolved.2.contains("spec.rules[0].backendRefs[1].port: Service bookinfo/reviews-v2 has no port 9080"));

    // Another kind: the route is accepted, its share gets 500, reason InvalidKind.
    let import = CANARY.replace(
        "    - name: reviews-v2\n",
        "    - name: reviews-v2\n      kind: ServiceImport\n      group: multicluster.x-k8s.io\n",
    );
    let (rule, resolved) = converted(&import, &[service("reviews-v1", &[9080]), service("reviews-v2", &[9080])]);
    assert_eq!((hosts(&rule), abort(&rule)), (vec!["reviews-v1".to_string()], Some((500, 10.0))));
    assert_eq!((resolved.0, resolved.1), ("False", "InvalidKind"));
    assert!(resolved.2.contains("backendRefs[1].kind: multicluster.x-k8s.io/ServiceImport is not a Service"));

    // No backend resolves: the rule answers 500 itself.
    let (rule, _) = converted(CANARY, &[]);
    assert!(rule.route.is_empty() && rule.fault.is_none(), "{rule:?}");
    assert_eq!(rule.direct_response.map(|d| d.status), Some(500));

    // A GRPCRoute: UNAVAILABLE, which gRPC clients read from HTTP 503.
    let grpc = CANARY.replace("kind: HTTPRoute", "kind: GRPCRoute");
    let (rule, _) = converted(&grpc, &[service("reviews-v1", &[9080])]);
    assert_eq!(abort(&rule), Some((503, 10.0)));
}

/// `strait import` knows no Services, so only a backend of another kind is invalid there: its share becomes
/// 500s in the output, and a note says so (behaviour to review, so the command exits non-zero without
/// `--accept-changes`).
#[test]
fn strait_import_answers_a_backend_of_another_kind_with_500_and_says_so() {
    let yaml = CANARY.replace(
        "    - name: reviews-v2\n",
        "    - name: reviews-v2\n      kind: ServiceImport\n      group: multicluster.x-k8s.io\n",
    );
    let converted = import::convert_all(&yaml, "cluster.local").expect("parses");
    let [one] = converted.as_slice() else { panic!("one route: {converted:?}") };
    let note = one.notes.iter().find(|n| n.field == "spec.rules[0].backendRefs[1].kind").expect("a note on the kind");
    assert!(note.reason.contains("multicluster.x-k8s.io/ServiceImport is not a Service"), "{}", note.reason);
    assert!(note.reason.contains("answered 500"), "{}", note.reason);
    let crate::istio::Outcome::Resource { object, .. } = &one.outcome else { panic!("converted: {:?}", one.outcome) };
    let Object::TrafficRoute(route) = object.as_ref() else { panic!("a TrafficRoute") };
    let rule = &route.spec.http[0];
    let hosts: Vec<&str> = rule.route.iter().map(|d| d.destination.host.as_str()).collect();
    assert_eq!(hosts, ["reviews-v1"]);
    let abort = rule.fault.as_ref().and_then(|f| f.abort.as_ref()).map(|a| (a.http_status, a.percentage));
    assert_eq!(abort, Some((500, 10.0)));
}
