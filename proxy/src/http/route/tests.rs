use super::*;
use http::header::{CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn named(namespace: &str, name: &str, yaml: &str) -> Named<TrafficRouteSpec> {
    let spec = serde_yaml::from_str(yaml).expect("spec");
    Named { name: name.into(), namespace: namespace.into(), spec }
}

fn table(yaml: &str) -> RouteTable {
    let (table, errors) = RouteTable::compile([&named("shop", "r", yaml)]);
    assert!(errors.is_empty(), "{errors:?}");
    table
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("request").into_parts().0
}

/// The name of the rule `request` selects, or "-" for none.
fn pick<'t>(table: &'t RouteTable, method: &str, uri: &str, headers: &[(&str, &str)]) -> &'t str {
    table.route(&parts(method, uri, headers)).map_or("-", |r| r.name())
}

const FORWARD: &str = "route: [{destination: {host: reviews}}]";

#[test]
fn uri_matches_exact_prefix_and_whole_regex_on_the_path() {
    let t = table(&format!(
        r#"
hosts: [reviews]
http:
- {{name: exact, match: [{{uri: {{exact: /a}}}}], {FORWARD}}}
- {{name: prefix, match: [{{uri: {{prefix: /api/}}}}], {FORWARD}}}
- {{name: regex, match: [{{uri: {{regex: "/v[0-9]+"}}}}], {FORWARD}}}
"#
    ));
    assert_eq!(pick(&t, "GET", "/a", &[]), "exact");
    assert_eq!(pick(&t, "GET", "/a?x=1", &[]), "exact", "the query is not part of the path");
    assert_eq!(pick(&t, "GET", "/ab", &[]), "-");
    assert_eq!(pick(&t, "GET", "/api/x", &[]), "prefix");
    assert_eq!(pick(&t, "GET", "/api", &[]), "-");
    assert_eq!(pick(&t, "GET", "/v12", &[]), "regex");
    assert_eq!(pick(&t, "GET", "/v12/x", &[]), "-", "a regex must match the whole path");
}

#[test]
fn method_and_header_matches() {
    let t = table(&format!(
        r#"
hosts: [reviews]
http:
- {{name: delete, match: [{{method: {{exact: DELETE}}}}], {FORWARD}}}
- {{name: beta, match: [{{headers: {{x-group: {{exact: beta}}}}}}], {FORWARD}}}
- {{name: bearer, match: [{{headers: {{authorization: {{prefix: "Bearer "}}}}}}], {FORWARD}}}
- {{name: version, match: [{{headers: {{x-version: {{regex: "v[12]"}}}}}}], {FORWARD}}}
- {{name: debug, match: [{{headers: {{x-debug: {{present: true}}}}}}], {FORWARD}}}
- {{name: anonymous, match: [{{headers: {{cookie: {{present: false}}}}}}], {FORWARD}}}
"#
    ));
    let cookie = ("cookie", "a=b");
    assert_eq!(pick(&t, "DELETE", "/", &[]), "delete");
    assert_eq!(pick(&t, "GET", "/", &[("x-group", "beta"), cookie]), "beta");
    assert_eq!(pick(&t, "GET", "/", &[("X-Group", "beta"), cookie]), "beta", "header names are case-insensitive");
    assert_eq!(pick(&t, "GET", "/", &[("x-group", "beta2"), cookie]), "-");
    assert_eq!(pick(&t, "GET", "/", &[("x-group", "alpha"), ("x-group", "beta"), cookie]), "beta", "any value");
    assert_eq!(pick(&t, "GET", "/", &[("authorization", "Bearer x"), cookie]), "bearer");
    assert_eq!(pick(&t, "GET", "/", &[("x-version", "v2"), cookie]), "version");
    assert_eq!(pick(&t, "GET", "/", &[("x-version", "v22"), cookie]), "-");
    assert_eq!(pick(&t, "GET", "/", &[("x-debug", ""), cookie]), "debug");
    assert_eq!(pick(&t, "GET", "/", &[]), "anonymous");
    assert_eq!(pick(&t, "GET", "/", &[cookie]), "-");
}

#[test]
fn query_parameter_matches_decode_the_query() {
    let t = table(&format!(
        r#"
hosts: [reviews]
http:
- {{name: exact, match: [{{queryParams: {{user: {{exact: "jo smith"}}}}}}], {FORWARD}}}
- {{name: prefix, match: [{{queryParams: {{q: {{prefix: "a/"}}}}}}], {FORWARD}}}
- {{name: regex, match: [{{queryParams: {{page: {{regex: "[0-9]+"}}}}}}], {FORWARD}}}
- {{name: present, match: [{{queryParams: {{debug: {{present: true}}}}}}], {FORWARD}}}
"#
    ));
    assert_eq!(pick(&t, "GET", "/?user=jo+smith", &[]), "exact");
    assert_eq!(pick(&t, "GET", "/?x=1&user=jo%20smith", &[]), "exact");
    assert_eq!(pick(&t, "GET", "/?user=jo", &[]), "-");
    assert_eq!(pick(&t, "GET", "/?q=a%2Fb", &[]), "prefix");
    assert_eq!(pick(&t, "GET", "/?page=12", &[]), "regex");
    assert_eq!(pick(&t, "GET", "/?page=12a", &[]), "-");
    assert_eq!(pick(&t, "GET", "/?debug", &[]), "present");
    assert_eq!(pick(&t, "GET", "/?debugger=1", &[]), "-");
    assert_eq!(pick(&t, "GET", "/?user=%zz", &[]), "-", "a bad escape is kept, not a panic");
}

#[test]
fn fields_of_a_match_are_anded_matches_are_ored_and_the_first_rule_wins() {
    let t = table(&format!(
        r#"
hosts: [reviews]
http:
- name: both
  match: [{{uri: {{prefix: /api}}, method: {{exact: POST}}}}, {{headers: {{x-admin: {{exact: "1"}}}}}}]
  {FORWARD}
- {{name: api, match: [{{uri: {{prefix: /api}}}}], {FORWARD}}}
- {{name: catch-all, {FORWARD}}}
- {{name: never, {FORWARD}}}
"#
    ));
    assert_eq!(pick(&t, "POST", "/api/x", &[]), "both");
    assert_eq!(pick(&t, "GET", "/api/x", &[]), "api");
    assert_eq!(pick(&t, "GET", "/other", &[("x-admin", "1")]), "both");
    assert_eq!(pick(&t, "GET", "/other", &[]), "catch-all");
}

#[test]
fn a_rule_that_does_not_compile_is_skipped_and_reported() {
    let route = named(
        "shop",
        "r",
        &format!(
            r#"
hosts: [reviews]
http:
- {{name: bad, match: [{{uri: {{regex: "/api/(v1"}}}}], {FORWARD}}}
- {{name: bad-timeout, timeout: soon, {FORWARD}}}
- {{name: typo, retries: {{attempts: 2, retryOn: "5xx,bogus"}}, {FORWARD}}}
"#
        ),
    );
    let (t, errors) = RouteTable::compile([&route]);
    assert_eq!(t.routes().len(), 1);
    assert_eq!(pick(&t, "GET", "/api/v1", &[]), "typo");
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].skipped && errors[0].message.starts_with("match[0].uri: regex"), "{}", errors[0]);
    assert!(errors[1].skipped && errors[1].to_string().contains("http[1]: timeout"), "{}", errors[1]);
    assert!(!errors[2].skipped && errors[2].message.contains("bogus"), "{}", errors[2]);
}

#[test]
fn weighted_destinations_share_traffic_in_proportion() {
    let t = table(
        r#"
hosts: [reviews]
http:
- route:
  - {destination: {host: reviews, subset: v1}, weight: 90}
  - {destination: {host: reviews.shop.svc.cluster.local, subset: v2, port: 9080}, weight: 10}
"#,
    );
    let route = t.route(&parts("GET", "/", &[])).expect("route");
    let mut rng = StdRng::seed_from_u64(1);
    let draws = 10_000;
    let v1 =
        (0..draws).filter(|_| route.pick_destination(&mut rng).and_then(|d| d.subset.as_deref()) == Some("v1")).count();
    let share = v1 as f64 / f64::from(draws);
    assert!((0.88..=0.92).contains(&share), "v1 share {share}");
    let Action::Forward(split) = route.action() else { panic!("forward") };
    let v2 = &split.destinations()[1];
    assert_eq!(v2.service, Some(ServiceRef::new("reviews", "shop")));
    assert_eq!((v2.port, v2.weight), (Some(9080), Weight(10)));
}

#[test]
fn absent_weights_share_equally_and_partial_weights_exclude_the_unweighted() {
    let t = table(
        r#"
hosts: [reviews]
http:
- {name: equal, match: [{uri: {exact: /e}}], route: [{destination: {host: a}}, {destination: {host: b}}]}
- {name: partial, route: [{destination: {host: a}}, {destination: {host: b}, weight: 5}]}
"#,
    );
    let mut rng = StdRng::seed_from_u64(2);
    let equal = t.route(&parts("GET", "/e", &[])).expect("route");
    let a = (0..10_000).filter(|_| equal.pick_destination(&mut rng).is_some_and(|d| d.host == "a")).count();
    assert!((4800..=5200).contains(&a), "{a}");
    let partial = t.route(&parts("GET", "/p", &[])).expect("route");
    assert!((0..1000).all(|_| partial.pick_destination(&mut rng).is_some_and(|d| d.host == "b")));
}

#[test]
fn hosts_resolve_short_namespaced_and_full_names() {
    let reviews = ServiceRef::new("reviews", "shop");
    for host in [
        "reviews",
        "reviews.shop",
        "reviews.shop.svc",
        "reviews.shop.svc.cluster.local",
        "Reviews.shop.svc.cluster.local.",
    ] {
        assert!(applies_to(&named("shop", "r", &format!("hosts: [{host}]")), &reviews), "{host}");
    }
    assert!(!applies_to(&named("other", "r", "hosts: [reviews]"), &reviews), "short names are namespace-local");
    assert!(!applies_to(&named("other", "r", "hosts: [reviews.shop]"), &reviews), "only its own namespace's services");
    assert!(!applies_to(&named("shop", "r", "hosts: [reviews.shop.svc.example.com]"), &reviews));
    assert!(!applies_to(&named("shop", "r", "hosts: [ratings, reviews.other]"), &reviews));
    assert_eq!(ServiceRef::parse("example.com.evil.org", "shop"), None);

    let all = [
        named("shop", "a", "hosts: [ratings]"),
        named("shop", "b", &format!("hosts: [reviews]\nhttp: [{{name: b, {FORWARD}}}]")),
    ];
    let (t, _) = RouteTable::for_service(&all, &reviews);
    assert_eq!(pick(&t, "GET", "/", &[]), "b");
}

#[test]
fn header_operations_remove_then_set_then_add() {
    let t = table(&format!(
        r#"
hosts: [reviews]
http:
- {FORWARD}
  headers:
    request: {{remove: [x-secret], set: {{x-env: prod}}, add: {{x-hop: proxy}}}}
    response: {{set: {{cache-control: no-store}}}}
"#
    ));
    let route = t.route(&parts("GET", "/", &[])).expect("route");
    let mut headers = HeaderMap::new();
    headers.insert("x-secret", HeaderValue::from_static("s"));
    headers.append("x-env", HeaderValue::from_static("dev"));
    headers.append("x-env", HeaderValue::from_static("test"));
    headers.insert("x-hop", HeaderValue::from_static("client"));
    route.headers().request.apply(&mut headers);
    assert!(!headers.contains_key("x-secret"));
    assert_eq!(headers.get_all("x-env").iter().collect::<Vec<_>>(), ["prod"]);
    assert_eq!(headers.get_all("x-hop").iter().collect::<Vec<_>>(), ["client", "proxy"]);
    let mut response = HeaderMap::new();
    route.headers().response.apply(&mut response);
    assert_eq!(response.get("cache-control").map(|v| v.as_bytes()), Some(&b"no-store"[..]));
}

#[test]
fn faults_follow_their_percentages() {
    let t = table(&format!(
        r#"
hosts: [reviews]
http:
- {{name: abort, match: [{{uri: {{exact: /abort}}}}], fault: {{abort: {{httpStatus: 503, percentage: 100}}}}, {FORWARD}}}
- {{name: both, match: [{{uri: {{exact: /both}}}}], fault: {{delay: {{fixedDelay: 2s, percentage: 100}}, abort: {{httpStatus: 500, percentage: 100}}}}, {FORWARD}}}
- {{name: half, match: [{{uri: {{exact: /half}}}}], fault: {{delay: {{fixedDelay: 50ms, percentage: 50}}}}, {FORWARD}}}
- {{name: none, {FORWARD}}}
"#
    ));
    let mut rng = StdRng::seed_from_u64(3);
    let route = |path| t.route(&parts("GET", path, &[])).expect("route");
    assert_eq!(route("/abort").fault_decision(&mut rng), FaultAction::Abort(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        route("/both").fault_decision(&mut rng),
        FaultAction::DelayThenAbort(Duration::from_secs(2), StatusCode::INTERNAL_SERVER_ERROR)
    );
    assert_eq!(route("/none").fault_decision(&mut rng), FaultAction::None);
    let half = route("/half");
    let delayed =
        (0..10_000).filter(|_| half.fault_decision(&mut rng) == FaultAction::Delay(Duration::from_millis(50))).count();
    assert!((4800..=5200).contains(&delayed), "{delayed}");
}

#[test]
fn redirects_and_direct_responses() {
    let t = table(
        r#"
hosts: [reviews]
http:
- {name: moved, match: [{uri: {prefix: /old}}], redirect: {uri: /new}}
- {name: elsewhere, match: [{uri: {prefix: /away}}], redirect: {authority: "other.shop:8080", redirectCode: 307}}
- {name: gone, match: [{uri: {prefix: /gone}}], directResponse: {status: 410, body: "gone"}}
- {name: timed, timeout: 250ms, route: [{destination: {host: reviews}}]}
"#,
    );
    let request = parts("GET", "/old/page?x=1", &[("host", "reviews.shop:9080")]);
    let Some(Action::Redirect(moved)) = t.route(&request).map(Route::action) else { panic!("redirect") };
    let response = moved.response(&request);
    assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(response.headers()[LOCATION], "http://reviews.shop:9080/new?x=1");

    let request = parts("GET", "http://reviews/away/x", &[]);
    let Some(Action::Redirect(away)) = t.route(&request).map(Route::action) else { panic!("redirect") };
    let response = away.response(&request);
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(response.headers()[LOCATION], "http://other.shop:8080/away/x");
    assert!(t.route(&request).is_some_and(|r| r.pick_destination(&mut rand::rng()).is_none()));

    let request = parts("GET", "/gone", &[]);
    let Some(Action::Respond(gone)) = t.route(&request).map(Route::action) else { panic!("direct") };
    let response = gone.response();
    assert_eq!(response.status(), StatusCode::GONE);
    assert_eq!(response.headers()[CONTENT_TYPE], "text/plain");

    let timed = t.route(&parts("GET", "/x", &[])).expect("route");
    assert_eq!(timed.timeout(), Some(Duration::from_millis(250)));
    assert_eq!(timed.name(), "timed");
}

#[test]
fn a_rule_without_a_name_is_named_after_its_route_and_index() {
    let t = table(&format!("hosts: [reviews]\nhttp: [{{{FORWARD}}}]"));
    assert_eq!(t.routes()[0].name(), "shop/r[0]");
}

/// A TrafficRoute in namespace B naming `reviews.shop` must not take over shop's traffic.
#[test]
fn a_route_in_another_namespace_cannot_hijack_a_service() {
    let spec = "hosts: [reviews.shop]\nhttp: [{route: [{destination: {host: evil.attacker}}]}]";
    let routes = [named("attacker", "steal", spec), named("shop", "own", spec)];
    let reviews = ServiceRef::new("reviews", "shop");
    assert!(!applies_to(&routes[0], &reviews));
    assert!(applies_to(&routes[1], &reviews));
    let (table, errors) = RouteTable::for_service(&routes, &reviews);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(table.route(&parts("GET", "/", &[])).map(Route::name), Some("shop/own[0]"));
}

#[test]
fn escaped_slashes_are_kept_only_when_no_route_of_the_host_refuses_them() {
    let keep = named("shop", "a", "{hosts: [objects], escapedSlashes: Keep}");
    let reject = named("shop", "b", "{hosts: [objects], escapedSlashes: Reject}");
    let silent = named("shop", "c", "{hosts: [objects], http: [{route: [{destination: {host: objects}}]}]}");
    let choice = |routes: &[&Named<TrafficRouteSpec>]| RouteTable::compile(routes.iter().copied()).0.escaped_slashes();
    assert_eq!(choice(&[]), EscapedSlashes::Reject);
    assert_eq!(choice(&[&silent]), EscapedSlashes::Reject);
    assert_eq!(choice(&[&keep, &silent]), EscapedSlashes::Keep);
    assert_eq!(choice(&[&keep, &reject]), EscapedSlashes::Reject);
    assert_eq!(choice(&[&reject, &keep]), EscapedSlashes::Reject);
}

/// Gateway API's URLRewrite examples (ReplacePrefixMatch, ReplaceFullPath): the query and the other
/// headers are kept; `Host` takes the new authority.
#[test]
fn rewrites_replace_the_prefix_segments_or_the_whole_path_and_the_host() {
    let t = table(&format!(
        r#"
hosts: [reviews]
http:
- {{name: prefix, match: [{{uri: {{prefix: /foo}}}}], rewrite: {{prefix: {{from: /foo, to: /xyz}}, authority: "example.org"}}, {FORWARD}}}
- {{name: strip, match: [{{uri: {{prefix: /strip}}}}], rewrite: {{prefix: {{from: /strip/}}}}, {FORWARD}}}
- {{name: full, rewrite: {{fullPath: /one}}, {FORWARD}}}
"#
    ));
    let rewritten = |uri: &str| {
        let mut request =
            Request::builder().uri(uri).header("host", "reviews").header("x-a", "1").body(()).expect("request");
        let route = t.route(&parts("GET", uri, &[])).expect("a rule");
        route.rewrite().expect("a rewrite").apply(&mut request);
        let host = request.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or_default().to_string();
        assert_eq!(request.headers().get("x-a").map(|v| v.as_bytes()), Some(&b"1"[..]));
        (request.uri().to_string(), host)
    };
    assert_eq!(rewritten("/foo/bar?q=1"), ("/xyz/bar?q=1".to_string(), "example.org".to_string()));
    assert_eq!(rewritten("/foo"), ("/xyz".to_string(), "example.org".to_string()));
    assert_eq!(rewritten("/foo/"), ("/xyz/".to_string(), "example.org".to_string()));
    assert_eq!(rewritten("/strip/bar").0, "/bar");
    assert_eq!(rewritten("/strip").0, "/");
    assert_eq!(rewritten("/other?x=2"), ("/one?x=2".to_string(), "reviews".to_string()));
}

#[test]
fn a_rewrite_needs_a_forwarding_rule() {
    let spec = "hosts: [reviews]\nhttp:\n- {directResponse: {status: 200}, rewrite: {fullPath: /x}}\n";
    let (table, errors) = RouteTable::compile([&named("shop", "r", spec)]);
    assert!(table.is_empty());
    assert!(errors[0].message.starts_with("rewrite: applies only to a rule with route"), "{errors:?}");
}
