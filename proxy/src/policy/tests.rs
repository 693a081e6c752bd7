use std::collections::BTreeMap;

use super::matchers::Pattern;
use super::*;

const PRODUCTPAGE: &str = "cluster.local/ns/shop/sa/productpage";
const FRONTEND: &str = "cluster.local/ns/web/sa/frontend";

fn workload(name: &str, namespace: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        name: name.into(),
        namespace: namespace.into(),
        service_account: "default".into(),
        node: "node-a".into(),
        address: "10.0.1.2".parse().unwrap(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        meshed: true,
        tunnel_port: 15008,
    }
}

fn destination(name: &str) -> Workload {
    match name {
        "reviews" => workload("reviews", "shop", &[("app", "reviews"), ("version", "v1")]),
        "ratings" => workload("ratings", "shop", &[("app", "ratings")]),
        "web" => workload("web", "web", &[("app", "reviews")]),
        "sys" => workload("sys", ROOT_NAMESPACE, &[("app", "sys")]),
        other => panic!("no test workload {other}"),
    }
}

#[derive(Clone, Copy, Debug)]
struct Req {
    principal: Option<&'static str>,
    ip: &'static str,
    dest: &'static str,
    port: u16,
    http: Option<(&'static str, &'static str)>,
    l7_pending: bool,
}

const REQ: Req =
    Req { principal: Some(PRODUCTPAGE), ip: "10.0.0.5", dest: "reviews", port: 9080, http: None, l7_pending: false };
const PLAIN: Req = Req { principal: None, ..REQ };

const fn http(method: &'static str, path: &'static str) -> Req {
    Req { http: Some((method, path)), ..REQ }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Want {
    Allow,
    Deny(&'static str),
    NoAllow,
    /// The policies do not compile: the whole configuration is refused.
    Refused,
}
use Want::*;

fn policy(name: &str, namespace: &str, action: &str, extra: &str, rules: &[&str]) -> String {
    let rules = if rules.is_empty() { String::new() } else { format!(", rules: [{}]", rules.join(", ")) };
    format!("- {{name: {name}, namespace: {namespace}, spec: {{action: {action}{extra}{rules}}}}}\n")
}
fn allow(rules: &[&str]) -> String {
    policy("allow", "shop", "ALLOW", "", rules)
}
fn deny(rules: &[&str]) -> String {
    policy("deny", "shop", "DENY", "", rules)
}
fn src(source: &str) -> String {
    format!("{{from: [{{source: {{{source}}}}}]}}")
}
fn op(operation: &str) -> String {
    format!("{{to: [{{operation: {{{operation}}}}}]}}")
}

fn evaluate(policies: &str, r: Req) -> Option<Decision> {
    let parsed: Vec<Named<AuthorizationPolicySpec>> =
        if policies.is_empty() { Vec::new() } else { serde_yaml::from_str(policies).expect(policies) };
    let policies = Policies::compile(&parsed).ok()?;
    let dest = destination(r.dest);
    Some(policies.evaluate(&Request {
        source_principal: r.principal,
        source_namespace: r.principal.and_then(principal_namespace),
        source_ip: r.ip.parse().unwrap(),
        destination: &dest,
        destination_port: r.port,
        http: r.http.map(|(method, path)| HttpAttributes { method, path }),
        l7_pending: r.l7_pending,
    }))
}

fn want(decision: &Option<Decision>) -> Want {
    let Some(decision) = decision else { return Refused };
    match decision {
        Decision::Allow => Allow,
        Decision::Deny(Denial { reason: DenyReason::NoAllowPolicyMatched, policy }) => {
            assert_eq!(policy, "default");
            NoAllow
        }
        Decision::Deny(Denial { reason: DenyReason::DenyPolicyMatched, policy }) => {
            Deny(Box::leak(policy.clone().into_boxed_str()))
        }
    }
}

fn check(cases: &[(&str, String, Req, Want)]) {
    let mut failures = Vec::new();
    for (name, policies, req, expected) in cases {
        let got = want(&evaluate(policies, *req));
        if got != *expected {
            failures.push(format!("{name}: want {expected:?}, got {got:?}\n  request {req:?}\n  policies\n{policies}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn which_policies_apply_and_how_they_combine() {
    let sel = ", selector: {matchLabels: {app: reviews}}";
    check(&[
        ("no policy allows", String::new(), REQ, Allow),
        ("ALLOW without rules allows nothing", allow(&[]), REQ, NoAllow),
        ("DENY without rules denies nothing", deny(&[]), REQ, Allow),
        ("an empty rule matches everything", allow(&["{}"]), PLAIN, Allow),
        ("an empty rule denies everything", deny(&["{}"]), REQ, Deny("shop/deny")),
        ("an empty source matches everything", allow(&[&src("")]), PLAIN, Allow),
        ("ALLOW elsewhere does not apply", policy("a", "web", "ALLOW", "", &[]), REQ, Allow),
        ("ALLOW elsewhere applies there", policy("a", "web", "ALLOW", "", &[]), Req { dest: "web", ..REQ }, NoAllow),
        ("DENY elsewhere does not apply", policy("d", "web", "DENY", "", &["{}"]), REQ, Allow),
        ("selector matches", policy("a", "shop", "ALLOW", sel, &[]), REQ, NoAllow),
        ("selector does not match", policy("a", "shop", "ALLOW", sel, &[]), Req { dest: "ratings", ..REQ }, Allow),
        (
            "every selector label must match",
            policy("a", "shop", "ALLOW", ", selector: {matchLabels: {app: reviews, version: v2}}", &[]),
            REQ,
            Allow,
        ),
        ("empty selector matches all", policy("a", "shop", "ALLOW", ", selector: {}", &[]), REQ, NoAllow),
        (
            "root namespace applies mesh-wide",
            policy("d", ROOT_NAMESPACE, "DENY", "", &["{}"]),
            Req { dest: "web", ..REQ },
            Deny("strait-system/d"),
        ),
        (
            "root namespace applies to itself",
            policy("d", ROOT_NAMESPACE, "DENY", "", &["{}"]),
            Req { dest: "sys", ..REQ },
            Deny("strait-system/d"),
        ),
        (
            "root selector matches across namespaces",
            policy("d", ROOT_NAMESPACE, "DENY", sel, &["{}"]),
            Req { dest: "web", ..REQ },
            Deny("strait-system/d"),
        ),
        (
            "root selector still selects",
            policy("d", ROOT_NAMESPACE, "DENY", sel, &["{}"]),
            Req { dest: "ratings", ..REQ },
            Allow,
        ),
        (
            "root ALLOW requires a match everywhere",
            policy("a", ROOT_NAMESPACE, "ALLOW", "", &[&src("principals: ['*/sa/admin']")]),
            Req { dest: "web", ..REQ },
            NoAllow,
        ),
        (
            "root ALLOW and namespace ALLOW: either suffices",
            policy("a", ROOT_NAMESPACE, "ALLOW", "", &[&src("principals: ['*/sa/admin']")]) + &allow(&["{}"]),
            REQ,
            Allow,
        ),
        ("DENY wins over ALLOW", allow(&["{}"]) + &deny(&["{}"]), REQ, Deny("shop/deny")),
        ("DENY wins over a later ALLOW", deny(&["{}"]) + &allow(&["{}"]), REQ, Deny("shop/deny")),
        (
            "root DENY wins over namespace ALLOW",
            allow(&["{}"]) + &policy("d", ROOT_NAMESPACE, "DENY", "", &["{}"]),
            REQ,
            Deny("strait-system/d"),
        ),
        ("non-matching DENY does not deny", allow(&["{}"]) + &deny(&[&op("ports: [22]")]), REQ, Allow),
        (
            "the first matching DENY is reported",
            policy("d1", "shop", "DENY", "", &[&op("ports: [22]")])
                + &policy("d2", "shop", "DENY", "", &["{}"])
                + &policy("d3", "shop", "DENY", "", &["{}"]),
            REQ,
            Deny("shop/d2"),
        ),
        (
            "one of several ALLOW policies suffices",
            policy("a1", "shop", "ALLOW", "", &[&op("ports: [22]")]) + &policy("a2", "shop", "ALLOW", "", &["{}"]),
            REQ,
            Allow,
        ),
        ("a policy matches when any rule matches", allow(&[&op("ports: [22]"), &op("ports: [9080]")]), REQ, Allow),
        ("no rule matches", allow(&[&op("ports: [22]"), &op("ports: [23]")]), REQ, NoAllow),
    ]);
}

#[test]
fn principals() {
    let p = |patterns: &str| allow(&[&src(&format!("principals: [{patterns}]"))]);
    let not = |patterns: &str| allow(&[&src(&format!("notPrincipals: [{patterns}]"))]);
    let other = Req { principal: Some(FRONTEND), ..REQ };
    check(&[
        ("exact", p("'cluster.local/ns/shop/sa/productpage'"), REQ, Allow),
        ("exact mismatch", p("'cluster.local/ns/shop/sa/productpage'"), other, NoAllow),
        ("exact is not a prefix", p("'cluster.local/ns/shop/sa/product'"), REQ, NoAllow),
        ("pattern with scheme", p("'spiffe://cluster.local/ns/shop/sa/productpage'"), REQ, Allow),
        (
            "request principal with scheme",
            p("'cluster.local/ns/shop/sa/productpage'"),
            Req { principal: Some("spiffe://cluster.local/ns/shop/sa/productpage"), ..REQ },
            Allow,
        ),
        (
            "other trust domain",
            p("'cluster.local/ns/shop/sa/productpage'"),
            Req { principal: Some("other.td/ns/shop/sa/productpage"), ..REQ },
            NoAllow,
        ),
        ("prefix", p("'cluster.local/ns/shop/*'"), REQ, Allow),
        ("prefix with scheme", p("'spiffe://cluster.local/ns/shop/*'"), REQ, Allow),
        ("prefix mismatch", p("'cluster.local/ns/shop/*'"), other, NoAllow),
        ("suffix", p("'*/sa/productpage'"), REQ, Allow),
        ("suffix mismatch", p("'*/sa/productpage'"), other, NoAllow),
        ("star matches any identity", p("'*'"), other, Allow),
        ("star does not match plaintext", p("'*'"), PLAIN, NoAllow),
        ("prefix does not match plaintext", p("'*/sa/productpage', 'cluster.local/*'"), PLAIN, NoAllow),
        ("any listed principal", p("'cluster.local/ns/web/sa/frontend', '*/sa/productpage'"), REQ, Allow),
        ("none listed", p("'cluster.local/ns/web/sa/frontend', '*/sa/x'"), REQ, NoAllow),
        ("an invalid pattern is refused", p("'cluster*local/ns/shop/sa/productpage'"), REQ, Refused),
        ("two stars are refused", p("'*shop*'"), REQ, Refused),
        ("notPrincipals excludes", not("'cluster.local/ns/shop/sa/productpage'"), REQ, NoAllow),
        ("notPrincipals lets others in", not("'cluster.local/ns/shop/sa/productpage'"), other, Allow),
        ("notPrincipals prefix", not("'cluster.local/ns/shop/*'"), REQ, NoAllow),
        ("notPrincipals suffix", not("'*/sa/frontend'"), REQ, Allow),
        ("notPrincipals star excludes identities", not("'*'"), REQ, NoAllow),
        ("notPrincipals star matches plaintext", not("'*'"), PLAIN, Allow),
        ("require mTLS: plaintext denied", deny(&[&src("notPrincipals: ['*']")]), PLAIN, Deny("shop/deny")),
        ("require mTLS: identity passes", deny(&[&src("notPrincipals: ['*']")]), REQ, Allow),
        (
            "principals and notPrincipals together",
            allow(&[&src("principals: ['cluster.local/*'], notPrincipals: ['*/sa/productpage']")]),
            REQ,
            NoAllow,
        ),
        (
            "principals and notPrincipals together, other",
            allow(&[&src("principals: ['cluster.local/*'], notPrincipals: ['*/sa/productpage']")]),
            other,
            Allow,
        ),
    ]);
}

#[test]
fn namespaces() {
    let n = |patterns: &str| allow(&[&src(&format!("namespaces: [{patterns}]"))]);
    let not = |patterns: &str| deny(&[&src(&format!("notNamespaces: [{patterns}]"))]);
    let web = Req { principal: Some(FRONTEND), ..REQ };
    let odd = Req { principal: Some("cluster.local/not-a/namespaced/identity"), ..REQ };
    check(&[
        ("exact", n("shop"), REQ, Allow),
        ("exact mismatch", n("shop"), web, NoAllow),
        ("prefix", n("'sh*'"), REQ, Allow),
        ("prefix mismatch", n("'we*'"), REQ, NoAllow),
        ("suffix", n("'*op'"), REQ, Allow),
        ("suffix mismatch", n("'*eb'"), REQ, NoAllow),
        ("star", n("'*'"), web, Allow),
        ("star does not match plaintext", n("'*'"), PLAIN, NoAllow),
        ("exact does not match plaintext", n("shop"), PLAIN, NoAllow),
        ("an identity without a namespace", n("'*'"), odd, NoAllow),
        ("any listed", n("web, shop"), REQ, Allow),
        ("notNamespaces excludes", not("shop"), REQ, Allow),
        ("notNamespaces matches others", not("shop"), web, Deny("shop/deny")),
        ("notNamespaces matches plaintext", not("shop"), PLAIN, Deny("shop/deny")),
        ("notNamespaces star spares identities", not("'*'"), web, Allow),
        ("notNamespaces star catches plaintext", not("'*'"), PLAIN, Deny("shop/deny")),
    ]);
}

#[test]
fn ip_blocks() {
    let b = |blocks: &str| allow(&[&src(&format!("ipBlocks: [{blocks}]"))]);
    let not = |blocks: &str| allow(&[&src(&format!("notIpBlocks: [{blocks}]"))]);
    let v6 = Req { ip: "fd00::1:5", ..REQ };
    let mapped = Req { ip: "::ffff:10.0.0.5", ..REQ };
    check(&[
        ("CIDR", b("10.0.0.0/24"), REQ, Allow),
        ("CIDR mismatch", b("10.0.1.0/24"), REQ, NoAllow),
        ("host route", b("10.0.0.5/32"), REQ, Allow),
        ("single address", b("10.0.0.5"), REQ, Allow),
        ("single address mismatch", b("10.0.0.6"), REQ, NoAllow),
        ("any listed", b("192.168.0.0/16, 10.0.0.0/8"), REQ, Allow),
        ("IPv6 CIDR", b("'fd00::/8'"), v6, Allow),
        ("IPv6 CIDR mismatch", b("'fd01::/16'"), v6, NoAllow),
        ("IPv6 single address", b("'fd00::1:5'"), v6, Allow),
        ("IPv6 /128", b("'fd00::1:5/128'"), v6, Allow),
        ("v4 source, v6 CIDR", b("'::/0'"), REQ, NoAllow),
        ("v6 source, v4 CIDR", b("0.0.0.0/0"), v6, NoAllow),
        ("v4-mapped source is v6", b("10.0.0.0/8"), mapped, NoAllow),
        ("plaintext sources have an address", b("10.0.0.0/8"), PLAIN, Allow),
        ("an unparsable block is refused", b("10.0.0/8"), REQ, Refused),
        ("an unparsable block beside a good one is refused", b("10.0.0/8, 10.0.0.0/8"), REQ, Refused),
        ("notIpBlocks excludes", not("10.0.0.0/8"), REQ, NoAllow),
        ("notIpBlocks lets others in", not("192.168.0.0/16"), REQ, Allow),
        ("notIpBlocks IPv6", not("'fd00::/8'"), v6, NoAllow),
        ("unparsable notIpBlocks are refused", not("bogus"), REQ, Refused),
        (
            "deny by notIpBlocks",
            deny(&[&src("notIpBlocks: [10.0.0.0/8]")]),
            Req { ip: "192.168.1.1", ..REQ },
            Deny("shop/deny"),
        ),
        ("deny by notIpBlocks, inside", deny(&[&src("notIpBlocks: [10.0.0.0/8]")]), REQ, Allow),
    ]);
}

#[test]
fn sources_and_rules_combine() {
    check(&[
        (
            "every field of a source must match",
            allow(&[&src("principals: ['*/sa/productpage'], ipBlocks: [192.168.0.0/16]")]),
            REQ,
            NoAllow,
        ),
        (
            "every field of a source matches",
            allow(&[&src("principals: ['*/sa/productpage'], namespaces: [shop], ipBlocks: [10.0.0.0/8]")]),
            REQ,
            Allow,
        ),
        (
            "any source of a rule",
            allow(&["{from: [{source: {namespaces: [web]}}, {source: {ipBlocks: [10.0.0.5]}}]}"]),
            REQ,
            Allow,
        ),
        (
            "no source of a rule",
            allow(&["{from: [{source: {namespaces: [web]}}, {source: {ipBlocks: [10.0.0.6]}}]}"]),
            REQ,
            NoAllow,
        ),
        (
            "from and to both match",
            allow(&["{from: [{source: {namespaces: [shop]}}], to: [{operation: {ports: [9080]}}]}"]),
            REQ,
            Allow,
        ),
        (
            "from matches, to does not",
            allow(&["{from: [{source: {namespaces: [shop]}}], to: [{operation: {ports: [22]}}]}"]),
            REQ,
            NoAllow,
        ),
        (
            "to matches, from does not",
            allow(&["{from: [{source: {namespaces: [web]}}], to: [{operation: {ports: [9080]}}]}"]),
            REQ,
            NoAllow,
        ),
        (
            "any operation of a rule",
            allow(&["{to: [{operation: {ports: [22]}}, {operation: {ports: [9080]}}]}"]),
            REQ,
            Allow,
        ),
    ]);
}

#[test]
fn ports() {
    check(&[
        ("port", allow(&[&op("ports: [9080]")]), REQ, Allow),
        ("port mismatch", allow(&[&op("ports: [8080]")]), REQ, NoAllow),
        ("any listed port", allow(&[&op("ports: [8080, 9080]")]), REQ, Allow),
        ("notPorts excludes", allow(&[&op("notPorts: [9080]")]), REQ, NoAllow),
        ("notPorts lets others in", allow(&[&op("notPorts: [8080]")]), REQ, Allow),
        ("ports and notPorts", allow(&[&op("ports: [9080], notPorts: [9080]")]), REQ, NoAllow),
        ("deny a port", deny(&[&op("ports: [9080]")]), REQ, Deny("shop/deny")),
        ("deny another port", deny(&[&op("ports: [22]")]), REQ, Allow),
    ]);
}

#[test]
fn methods_and_paths() {
    let get = http("GET", "/reviews/1");
    check(&[
        ("method", allow(&[&op("methods: [GET]")]), get, Allow),
        ("method mismatch", allow(&[&op("methods: [GET]")]), http("POST", "/reviews/1"), NoAllow),
        ("methods are case-sensitive", allow(&[&op("methods: [GET]")]), http("get", "/reviews/1"), NoAllow),
        ("any listed method", allow(&[&op("methods: [POST, GET]")]), get, Allow),
        ("notMethods excludes", allow(&[&op("notMethods: [DELETE]")]), http("DELETE", "/"), NoAllow),
        ("notMethods lets others in", allow(&[&op("notMethods: [DELETE]")]), get, Allow),
        ("exact path", allow(&[&op("paths: [/reviews/1]")]), get, Allow),
        ("exact path mismatch", allow(&[&op("paths: [/reviews/1]")]), http("GET", "/reviews/10"), NoAllow),
        ("prefix path", allow(&[&op("paths: ['/reviews/*']")]), get, Allow),
        ("prefix path mismatch", allow(&[&op("paths: ['/reviews/*']")]), http("GET", "/ratings/1"), NoAllow),
        ("suffix path", allow(&[&op("paths: ['*.png']")]), http("GET", "/img/a.png"), Allow),
        ("suffix path mismatch", allow(&[&op("paths: ['*.png']")]), http("GET", "/img/a.jpg"), NoAllow),
        ("star path", allow(&[&op("paths: ['*']")]), get, Allow),
        ("query is ignored", allow(&[&op("paths: [/reviews]")]), http("GET", "/reviews?id=1"), Allow),
        ("query cannot satisfy a suffix", allow(&[&op("paths: ['*.png']")]), http("GET", "/a?x=.png"), NoAllow),
        ("notPaths excludes", allow(&[&op("notPaths: ['/admin/*']")]), http("GET", "/admin/x"), NoAllow),
        ("notPaths lets others in", allow(&[&op("notPaths: ['/admin/*']")]), get, Allow),
        ("deny a path", deny(&[&op("paths: ['/admin/*']")]), http("GET", "/admin/x"), Deny("shop/deny")),
        ("deny another path", deny(&[&op("paths: ['/admin/*']")]), get, Allow),
        (
            "method, path and port together",
            allow(&[&op("ports: [9080], methods: [GET], paths: ['/reviews/*']")]),
            get,
            Allow,
        ),
        (
            "method, path and wrong port",
            allow(&[&op("ports: [8080], methods: [GET], paths: ['/reviews/*']")]),
            get,
            NoAllow,
        ),
        (
            "source still checked per request",
            allow(&["{from: [{source: {namespaces: [web]}}], to: [{operation: {methods: [GET]}}]}"]),
            get,
            NoAllow,
        ),
    ]);
}

#[test]
fn l7_fields_at_l4() {
    let pending = Req { l7_pending: true, ..REQ };
    let mixed = "{to: [{operation: {methods: [GET]}}, {operation: {ports: [9080]}}]}";
    check(&[
        ("ALLOW with methods cannot match at L4", allow(&[&op("methods: [GET]")]), REQ, NoAllow),
        ("ALLOW with paths cannot match at L4", allow(&[&op("paths: ['*']")]), REQ, NoAllow),
        ("ALLOW with notMethods cannot match at L4", allow(&[&op("notMethods: [DELETE]")]), REQ, NoAllow),
        ("ALLOW with notPaths cannot match at L4", allow(&[&op("notPaths: ['/admin']")]), REQ, NoAllow),
        ("ALLOW: one L7 operation drops the rule", allow(&[mixed]), REQ, NoAllow),
        ("ALLOW: other rules still match", allow(&[&op("methods: [GET]"), &op("ports: [9080]")]), REQ, Allow),
        ("DENY with methods matches at L4", deny(&[&op("methods: [POST]")]), REQ, Deny("shop/deny")),
        ("DENY with paths matches at L4", deny(&[&op("paths: ['/admin/*']")]), REQ, Deny("shop/deny")),
        ("DENY with notPaths matches at L4", deny(&[&op("notPaths: ['/ok']")]), REQ, Deny("shop/deny")),
        ("DENY at L4 still checks ports", deny(&[&op("ports: [8080], methods: [POST]")]), REQ, Allow),
        (
            "DENY at L4 still checks sources",
            deny(&["{from: [{source: {namespaces: [web]}}], to: [{operation: {methods: [POST]}}]}"]),
            REQ,
            Allow,
        ),
        ("pending: ALLOW with methods lets the connection in", allow(&[&op("methods: [GET]")]), pending, Allow),
        ("pending: ALLOW with mixed operations", allow(&[mixed]), pending, Allow),
        (
            "pending: ALLOW still checks L4 fields",
            allow(&["{from: [{source: {namespaces: [web]}}], to: [{operation: {methods: [GET]}}]}"]),
            pending,
            NoAllow,
        ),
        ("pending: ALLOW still checks ports", allow(&[&op("ports: [8080], methods: [GET]")]), pending, NoAllow),
        ("pending: DENY with methods is left to the request", deny(&[&op("methods: [POST]")]), pending, Allow),
        ("pending: DENY with mixed operations is skipped", deny(&[mixed]), pending, Allow),
        ("pending: L4-only DENY still denies", deny(&[&op("ports: [9080]")]), pending, Deny("shop/deny")),
        ("pending: L4-only ALLOW still required", allow(&[&op("ports: [22]")]), pending, NoAllow),
        ("request: DENY with methods, POST", deny(&[&op("methods: [POST]")]), http("POST", "/"), Deny("shop/deny")),
        ("request: DENY with methods, GET", deny(&[&op("methods: [POST]")]), http("GET", "/"), Allow),
        (
            "request: l7_pending is ignored",
            allow(&[&op("methods: [GET]")]),
            Req { l7_pending: true, ..http("POST", "/") },
            NoAllow,
        ),
        ("request: mixed operations, port", allow(&[mixed]), http("POST", "/"), Allow),
    ]);
}

#[test]
fn policies_are_counted() {
    let parsed: Vec<Named<AuthorizationPolicySpec>> = serde_yaml::from_str(
        &(policy("a", "shop", "ALLOW", ", selector: {matchLabels: {app: reviews}}", &[&op("methods: [GET]")])
            + &policy("b", "shop", "DENY", "", &[&op("ports: [22]")])),
    )
    .unwrap();
    let policies = Policies::compile(&parsed).expect("valid policies");
    assert_eq!(policies.len(), 2);
    assert!(!policies.is_empty());
    assert!(Policies::default().is_empty());
}

#[test]
fn root_namespace_is_configurable() {
    let parsed: Vec<Named<AuthorizationPolicySpec>> =
        serde_yaml::from_str(&policy("d", "mesh-root", "DENY", "", &["{}"])).unwrap();
    let dest = destination("reviews");
    let request = Request {
        source_principal: None,
        source_namespace: None,
        source_ip: "10.0.0.5".parse().unwrap(),
        destination: &dest,
        destination_port: 80,
        http: None,
        l7_pending: false,
    };
    assert!(Policies::compile(&parsed).expect("valid").evaluate(&request).is_allow());
    assert_eq!(
        Policies::with_root_namespace(&parsed, "mesh-root").expect("valid").evaluate(&request),
        Decision::Deny(Denial { policy: "mesh-root/d".into(), reason: DenyReason::DenyPolicyMatched })
    );
}

#[test]
fn principal_namespaces() {
    assert_eq!(principal_namespace("cluster.local/ns/shop/sa/productpage"), Some("shop"));
    assert_eq!(principal_namespace("spiffe://cluster.local/ns/shop/sa/productpage"), Some("shop"));
    assert_eq!(principal_namespace("cluster.local/sa/shop/ns/productpage"), None);
    assert_eq!(principal_namespace("cluster.local/ns//sa/x"), None);
    assert_eq!(principal_namespace("cluster.local/ns/shop"), None);
    assert_eq!(principal_namespace(""), None);
}

#[test]
fn patterns() {
    assert_eq!(Pattern::parse("*"), Ok(Pattern::Any));
    assert_eq!(Pattern::parse("a"), Ok(Pattern::Exact("a".into())));
    assert_eq!(Pattern::parse("a*"), Ok(Pattern::Prefix("a".into())));
    assert_eq!(Pattern::parse("*a"), Ok(Pattern::Suffix("a".into())));
    for invalid in ["", "a*b", "**", "*a*", "a**"] {
        assert!(Pattern::parse(invalid).is_err(), "{invalid:?}");
    }
    assert!(Pattern::parse("a*").expect("valid").matches("a"), "a prefix matches itself");
}

#[test]
fn denials_read_well() {
    let deny = Denial { policy: "shop/deny".into(), reason: DenyReason::DenyPolicyMatched };
    assert_eq!(deny.to_string(), "RBAC: access denied by policy shop/deny");
    let none = Denial { policy: "default".into(), reason: DenyReason::NoAllowPolicyMatched };
    assert_eq!(none.to_string(), "RBAC: access denied: no ALLOW policy matched");
    assert_eq!(DenyReason::DenyPolicyMatched.to_string(), "deny_policy_matched");
    assert_eq!(DenyReason::NoAllowPolicyMatched.as_str(), "no_allow_policy_matched");
    assert!(!Decision::Deny(deny).is_allow());
}
