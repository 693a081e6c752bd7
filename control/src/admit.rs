//! Admission: what a provider discovered becomes the accepted [`Snapshot`].
//!
//! Each object is checked on its own (the same validation proxies run, applied to that object alone) and
//! against the others ([`reference_problems`]). An object that fails keeps its last good version if it had
//! one, and is left out otherwise, so one mistake never holds back the rest of the mesh. The exception is an
//! AuthorizationPolicy with no good version: leaving it out would allow what it was written to deny, so it is
//! replaced by one that denies every request to what it selects (fail closed) until it is fixed.
//!
//! DestinationPolicies for one host are merged (`translate::merge_destination_policies`) in precedence order:
//! the oldest first by `metadata.creationTimestamp` (Kubernetes), then the one this control plane saw first,
//! then namespace/name, as Gateway API resolves conflicts. The file provider has no creation times, so there
//! the order is the one in which this process first saw them (all at once at start: namespace/name), so a
//! policy added next to a working one is the newcomer. A policy that conflicts with an earlier one is left
//! out (its last good version kept if it had one) and reported in [`Admitted::conflicts`], naming the winner.

use std::collections::BTreeMap;

use strait_api::{Action, AuthorizationPolicySpec, MeshConfig, Named};

use crate::model::{Discovered, Kind, Object, ObjectKey, Snapshot, Sourced};
use crate::translate::{merge_destination_policies, reference_problems, translate};

/// Remembers the last good version of every object across rounds.
#[derive(Debug, Default)]
pub struct Admission {
    trust_domain: String,
    last_good: BTreeMap<ObjectKey, Sourced>,
    /// The round in which each present object was first seen (what orders DestinationPolicies of equal age).
    first_seen: BTreeMap<ObjectKey, u64>,
    round: u64,
}

/// The outcome of one round.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Admitted {
    pub snapshot: Snapshot,
    /// Every problem found, `<source>: <Kind> <ns>/<name>: <field>: <message>`, with what was done about it.
    pub problems: Vec<String>,
    /// DestinationPolicies left out for conflicting with an earlier one for the same host: the message names
    /// the field and the winner (for the `Accepted=False`, reason `Conflicted`, condition).
    pub conflicts: BTreeMap<ObjectKey, String>,
}

impl Admission {
    pub fn new(trust_domain: impl Into<String>) -> Self {
        Admission { trust_domain: trust_domain.into(), ..Default::default() }
    }

    /// The snapshot of `accepted`, its DestinationPolicies in precedence order (see the module's doc).
    fn snapshot(&self, accepted: &BTreeMap<ObjectKey, Sourced>) -> Snapshot {
        let mut snapshot = Snapshot::from_objects(accepted.values().map(|s| &s.object));
        let precedence = |dp: &strait_api::Named<strait_api::DestinationPolicySpec>| {
            let key = ObjectKey::new(Kind::DestinationPolicy, &dp.namespace, &dp.name);
            let created = accepted.get(&key).and_then(|s| s.created);
            (created.is_none(), created, self.first_seen.get(&key).copied().unwrap_or(u64::MAX))
        };
        // Stable: equal precedence keeps the namespace/name order.
        snapshot.destination_policies.sort_by_key(|dp| precedence(dp));
        snapshot
    }

    pub fn admit(&mut self, discovered: &Discovered) -> Admitted {
        self.round += 1;
        let present: std::collections::BTreeSet<ObjectKey> = discovered
            .objects
            .iter()
            .map(|s| s.object.key())
            .chain(discovered.rejected.iter().filter_map(|r| r.key.clone()))
            .collect();
        // An object deleted and created again is new; one that is only unreadable for now keeps its place.
        let unreadable = discovered.rejected.iter().any(|r| r.key.is_none());
        self.first_seen.retain(|key, _| present.contains(key) || unreadable);
        for key in present {
            self.first_seen.entry(key).or_insert(self.round);
        }
        let mut conflicts = BTreeMap::new();
        let mut problems = Vec::new();
        let mut accepted: BTreeMap<ObjectKey, Sourced> = BTreeMap::new();
        // Objects that failed (key, source): candidates for their last good version.
        let mut failed: Vec<(ObjectKey, String)> = Vec::new();
        // The selectors of policies that failed, when their selector itself was not the problem.
        let mut failed_selectors: BTreeMap<ObjectKey, Option<strait_api::LabelSelector>> = BTreeMap::new();
        let mut unreadable_sources = Vec::new();

        for rejection in &discovered.rejected {
            match &rejection.key {
                Some(key) => failed.push((key.clone(), rejection.to_string())),
                None => {
                    unreadable_sources.push(rejection.source.clone());
                    problems.push(format!("{rejection}; the objects it held keep their last good versions"));
                }
            }
        }
        for sourced in &discovered.objects {
            let key = sourced.object.key();
            if let Some(first) = accepted.get(&key) {
                problems.push(format!(
                    "{}: {key}: is also defined in {}; ignoring this definition",
                    sourced.source, first.source
                ));
                continue;
            }
            match check_object(&self.trust_domain, &sourced.object) {
                Ok(()) => {
                    accepted.insert(key, sourced.clone());
                }
                Err(messages) => {
                    if let Object::AuthorizationPolicy(policy) = &sourced.object {
                        let selector_ok = !messages.iter().any(|m| m.starts_with("spec.selector"));
                        failed_selectors.insert(key.clone(), policy.spec.selector.clone().filter(|_| selector_ok));
                    }
                    for m in messages {
                        failed.push((key.clone(), format!("{}: {key}: {m}", sourced.source)));
                    }
                }
            }
        }
        for (key, message) in failed {
            let selector = failed_selectors.get(&key).cloned().flatten();
            problems.push(self.fall_back(&mut accepted, &key, message, selector));
        }
        for (key, good) in &self.last_good {
            if unreadable_sources.contains(&good.source) && !accepted.contains_key(key) {
                accepted.insert(key.clone(), good.clone());
            }
        }

        // Falling back can itself break a reference (an old route naming a subset since removed), so repeat;
        // every round either reverts an object to its last good version or removes it, so this ends.
        for round in 0.. {
            let snapshot = self.snapshot(&accepted);
            for conflict in merge_destination_policies(&snapshot.destination_policies).conflicts {
                conflicts.insert(conflict.loser.clone(), conflict.message());
            }
            let mut found: BTreeMap<ObjectKey, Vec<String>> = BTreeMap::new();
            for (key, message) in reference_problems(&snapshot) {
                found.entry(key).or_default().push(message);
            }
            if found.is_empty() {
                break;
            }
            for (key, messages) in found {
                let source = accepted.get(&key).map(|s| s.source.clone()).unwrap_or_default();
                let message = format!("{source}: {key}: {}", messages.join("; "));
                if round == 0 && self.last_good.get(&key) != accepted.get(&key) {
                    problems.push(self.fall_back(&mut accepted, &key, message, None));
                } else {
                    accepted.remove(&key);
                    problems.push(format!("{message}; left out"));
                }
            }
        }

        let snapshot = self.snapshot(&accepted);
        // Gateway API routes stay accepted while a parent they name is not served (missing, or routed by a kind
        // that takes precedence): say so, naming the winner.
        for route in &snapshot.gateway_routes {
            let key = ObjectKey::new(route.kind.model_kind(), &route.namespace, &route.name);
            let source = accepted.get(&key).map(|s| s.source.clone()).unwrap_or_default();
            for state in crate::gateway::parent_states(&snapshot, route) {
                if let Err((_, message)) = state.accepted {
                    problems
                        .push(format!("{source}: {key}: {message}; not applied to Service {}", state.reference.name));
                }
            }
        }
        self.last_good = accepted;
        Admitted { snapshot, problems, conflicts }
    }

    /// Puts the last good version of `key` in place of the failed one; returns the message to report. An
    /// AuthorizationPolicy without one becomes a policy denying everything to what `selector` selects (the whole
    /// namespace when the selector is unknown or was itself the problem).
    fn fall_back(
        &self,
        accepted: &mut BTreeMap<ObjectKey, Sourced>,
        key: &ObjectKey,
        message: String,
        selector: Option<strait_api::LabelSelector>,
    ) -> String {
        match self.last_good.get(key) {
            Some(good) => {
                accepted.insert(key.clone(), good.clone());
                format!("{message}; keeping its last good version")
            }
            None if key.kind == crate::model::Kind::AuthorizationPolicy => {
                let scope = if selector.is_some() { "the workloads it selects" } else { "its whole namespace" };
                // An ALLOW policy without rules allows nothing to what it applies to.
                let deny_all = AuthorizationPolicySpec { selector, action: Action::Allow, rules: Vec::new() };
                let object = Object::AuthorizationPolicy(Named {
                    name: key.name.clone(),
                    namespace: key.namespace.clone(),
                    spec: deny_all,
                });
                accepted.insert(key.clone(), Sourced::new("fail-closed", object));
                format!("{message}; denying every request to {scope} until it is fixed (fail closed)")
            }
            None => {
                accepted.remove(key);
                format!("{message}; left out (it has no earlier good version)")
            }
        }
    }
}

/// Validates one object alone with the proxies' own validation, so that nothing the control plane accepts is
/// refused by a proxy. Messages start with the field's path inside the object (`spec.http[0].timeout: ...`).
pub fn check_object(trust_domain: &str, object: &Object) -> Result<(), Vec<String>> {
    let snapshot = Snapshot::from_objects([object]);
    let config: MeshConfig = translate(&snapshot, trust_domain);
    let mut problems = Vec::new();
    if let Object::Namespace(n) = object {
        if n.name.is_empty() || !n.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            problems.push(format!("name: {:?} is not a valid namespace name", n.name));
        }
    }
    let key = object.key();
    if !matches!(key.kind, crate::model::Kind::Namespace | crate::model::Kind::MeshSettings) && key.namespace.is_empty()
    {
        problems.push("namespace: is required".to_string());
    }
    if let Err(e) = config.validate() {
        // `trafficRoutes[shop/r].spec.http[0]...: msg` -> `spec.http[0]...: msg`: the object is named already.
        problems.extend(e.problems().into_iter().map(|p| match p.split_once("].") {
            Some((_, rest)) => rest.to_string(),
            None => p,
        }));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::parse_file;

    fn discover(files: &[(&str, &str)]) -> Discovered {
        let mut d = Discovered::default();
        for (name, text) in files {
            parse_file(name, text, &mut d);
        }
        d
    }

    const POLICY: &str = r#"
apiVersion: strait.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"#;

    fn route(subset: &str, regex: &str) -> String {
        format!(
            r#"
apiVersion: strait.dev/v1alpha1
kind: TrafficRoute
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{regex: "{regex}"}}}}]
    route: [{{destination: {{host: reviews, subset: v1}}}}]
  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]
"#
        )
    }

    #[test]
    fn a_bad_route_keeps_its_last_good_version() {
        let mut admission = Admission::new("cluster.local");
        let good = route("v2", "/api/.*");
        let first = admission.admit(&discover(&[("dp.yaml", POLICY), ("route.yaml", &good)]));
        assert!(first.problems.is_empty(), "{:?}", first.problems);
        assert_eq!(first.snapshot.traffic_routes[0].spec.http[1].route[0].destination.subset.as_deref(), Some("v2"));

        let bad_subset = route("v3", "/api/.*");
        let second = admission.admit(&discover(&[("dp.yaml", POLICY), ("route.yaml", &bad_subset)]));
        assert_eq!(second.snapshot, first.snapshot);
        assert_eq!(
            second.problems,
            ["route.yaml: TrafficRoute shop/reviews: spec.http[1].route[0].destination.subset: subset \"v3\" is not defined by DestinationPolicy shop/reviews; keeping its last good version"]
        );

        let bad_regex = route("v2", "/api/(v1");
        let third = admission.admit(&discover(&[("dp.yaml", POLICY), ("route.yaml", &bad_regex)]));
        assert_eq!(third.snapshot, first.snapshot);
        assert!(
            third.problems[0].starts_with("route.yaml: TrafficRoute shop/reviews: spec.http[0].match[0].uri.regex: "),
            "{:?}",
            third.problems
        );
    }

    #[test]
    fn a_new_bad_object_is_left_out_and_others_flow() {
        let mut admission = Admission::new("cluster.local");
        let out = admission.admit(&discover(&[("route.yaml", &route("v3", "x"))]));
        assert!(out.snapshot.traffic_routes.is_empty());
        assert!(
            out.problems[0].contains("no DestinationPolicy for host reviews.shop.svc.cluster.local"),
            "{:?}",
            out.problems
        );
        assert!(out.problems[0].ends_with("left out (it has no earlier good version)"), "{:?}", out.problems);
        let out = admission.admit(&discover(&[("route.yaml", &route("v3", "x")), ("dp.yaml", POLICY)]));
        assert_eq!(out.snapshot.destination_policies.len(), 1);
    }

    /// Leaving out a DENY policy that does not validate would allow exactly what it was written to deny.
    #[test]
    fn an_authorization_policy_that_fails_validation_denies_what_it_selects() {
        let mut admission = Admission::new("cluster.local");
        let policy = |selector: &str, block: &str| {
            format!(
                "apiVersion: strait.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: shop}}\n\
                 spec:\n  selector: {selector}\n  action: DENY\n  rules: [{{from: [{{source: {{notIpBlocks: [{block}]}}}}]}}]\n"
            )
        };
        let out = admission.admit(&discover(&[("authz.yaml", &policy("{matchLabels: {app: reviews}}", "10.0.0/8"))]));
        let [placeholder] = &out.snapshot.authorization_policies[..] else {
            panic!("the policy is not dropped: {:?}", out.snapshot.authorization_policies)
        };
        assert_eq!((placeholder.namespace.as_str(), placeholder.name.as_str()), ("shop", "no-admin"));
        assert_eq!(placeholder.spec.action, Action::Allow, "an ALLOW policy without rules allows nothing");
        assert!(placeholder.spec.rules.is_empty());
        let selected = placeholder.spec.selector.as_ref().expect("its own selector");
        assert_eq!(selected.match_labels.get("app").map(String::as_str), Some("reviews"));
        assert!(out.problems[0].contains("notIpBlocks[0]"), "{:?}", out.problems);
        assert!(out.problems[0]
            .ends_with("denying every request to the workloads it selects until it is fixed (fail closed)"));

        // A good version replaces the placeholder as soon as it is fixed.
        let fixed =
            admission.admit(&discover(&[("authz.yaml", &policy("{matchLabels: {app: reviews}}", "10.0.0.0/8"))]));
        assert!(fixed.problems.is_empty(), "{:?}", fixed.problems);
        assert_eq!(fixed.snapshot.authorization_policies[0].spec.action, Action::Deny);
    }

    #[test]
    fn routes_and_policies_cannot_reach_into_another_namespace() {
        let mut admission = Admission::new("cluster.local");
        let steal =
            "apiVersion: strait.dev/v1alpha1\nkind: TrafficRoute\nmetadata: {name: steal, namespace: attacker}\n\
                     spec:\n  hosts: [reviews.shop]\n  http: [{route: [{destination: {host: evil}}]}]\n";
        let starve =
            "apiVersion: strait.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: starve, namespace: attacker}\n\
                      spec:\n  host: reviews.shop.svc.cluster.local\n  connectionPool: {http: {maxRequests: 1}}\n";
        let out = admission.admit(&discover(&[("steal.yaml", steal), ("starve.yaml", starve), ("dp.yaml", POLICY)]));
        assert!(out.snapshot.traffic_routes.is_empty(), "{:?}", out.snapshot.traffic_routes);
        assert_eq!(out.snapshot.destination_policies.len(), 1, "only shop's own policy");
        assert_eq!(out.snapshot.destination_policies[0].namespace, "shop");
        let problems = out.problems.join("\n");
        assert!(
            problems.contains("TrafficRoute attacker/steal: spec.hosts[0]: names a service of namespace shop"),
            "{problems}"
        );
        assert!(
            problems.contains("DestinationPolicy attacker/starve: spec.host: names a service of namespace shop"),
            "{problems}"
        );
    }

    #[test]
    fn an_unreadable_file_keeps_all_its_objects() {
        let mut admission = Admission::new("cluster.local");
        let first = admission.admit(&discover(&[("dp.yaml", POLICY), ("route.yaml", &route("v2", "x"))]));
        let second = admission.admit(&discover(&[("dp.yaml", "kind: [unclosed"), ("route.yaml", &route("v2", "x"))]));
        assert_eq!(second.snapshot, first.snapshot);
        assert_eq!(second.problems.len(), 1);
        // Removing the file really removes its objects (and the route falls back to nothing it can use).
        let third = admission.admit(&discover(&[("route.yaml", &route("v2", "x"))]));
        assert!(third.snapshot.destination_policies.is_empty());
        assert!(third.snapshot.traffic_routes.is_empty(), "the route's subsets no longer exist");
    }

    /// Issue 11: this timeout panicked inside validation (`Duration::from_secs_f64`) and took the control
    /// plane down; now it is one refused object among good ones.
    #[test]
    fn an_out_of_range_duration_is_refused_and_the_rest_applies() {
        let mut admission = Admission::new("cluster.local");
        let route = |name: &str, timeout: &str| {
            format!(
                "apiVersion: strait.dev/v1alpha1\nkind: TrafficRoute\nmetadata: {{name: {name}, namespace: shop}}\n\
                 spec: {{hosts: [reviews], http: [{{timeout: \"{timeout}\", route: [{{destination: {{host: reviews}}}}]}}]}}\n"
            )
        };
        for bad in ["99999999999999999999s", "1e400s", "NaN", "inf", "-1s", "25h"] {
            let out = admission.admit(&discover(&[
                ("dp.yaml", POLICY),
                ("good.yaml", &route("good", "10s")),
                ("bad.yaml", &route("bad", bad)),
            ]));
            let routes: Vec<&str> = out.snapshot.traffic_routes.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(routes, ["good"], "{bad}");
            assert_eq!(out.snapshot.destination_policies.len(), 1);
            assert_eq!(out.problems.len(), 1, "{bad}: {:?}", out.problems);
            assert!(
                out.problems[0].starts_with("bad.yaml: TrafficRoute shop/bad: spec.http[0].timeout: "),
                "{:?}",
                out.problems
            );
        }
    }

    fn extra_policy(name: &str, body: &str) -> String {
        format!(
            "apiVersion: strait.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  host: reviews.shop.svc.cluster.local\n  {body}\n"
        )
    }

    fn merged_policy(out: &Admitted) -> strait_api::Named<strait_api::DestinationPolicySpec> {
        let config = translate(&out.snapshot, "cluster.local");
        let [policy] = &config.destination_policies[..] else {
            panic!("one policy per host: {:?}", config.destination_policies)
        };
        policy.clone()
    }

    /// Issue 21, item 4: a second policy for the host (sorting first by name) that only adds a pool limit is
    /// merged in; the route nobody touched keeps resolving its subsets.
    #[test]
    fn a_second_policy_for_the_same_host_is_merged_field_by_field() {
        let mut admission = Admission::new("cluster.local");
        let route = route("v2", "x");
        let first = admission.admit(&discover(&[("dp.yaml", POLICY), ("route.yaml", &route)]));
        assert!(first.problems.is_empty(), "{:?}", first.problems);
        let extra = extra_policy("aaa-extra", "connectionPool: {http: {maxRequests: 1000}}");
        let out =
            admission.admit(&discover(&[("aaa-extra.yaml", &extra), ("dp.yaml", POLICY), ("route.yaml", &route)]));
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert!(out.conflicts.is_empty());
        assert_eq!(out.snapshot.traffic_routes, first.snapshot.traffic_routes, "the route is untouched");
        assert_eq!(out.snapshot.destination_policies.len(), 2, "both are accepted");
        let merged = merged_policy(&out);
        assert_eq!((merged.namespace.as_str(), merged.name.as_str()), ("shop", "reviews"), "named after the first");
        let subsets: Vec<&str> = merged.spec.subsets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(subsets, ["v1", "v2"]);
        let http = merged.spec.connection_pool.and_then(|p| p.http).expect("the newcomer's pool limit");
        assert_eq!(http.max_requests, Some(1000));
        translate(&out.snapshot, "cluster.local").validate().expect("the merged configuration is valid");
    }

    /// A newcomer that sets a field the working policy set differently is left out whole, names the winner,
    /// and changes nothing that was working; fixed, it merges.
    #[test]
    fn a_conflicting_newcomer_is_left_out_naming_the_policy_that_applies() {
        let mut admission = Admission::new("cluster.local");
        let hashed = format!("{POLICY}  loadBalancer: {{consistentHash: {{httpHeaderName: x-user-id}}}}\n");
        let route = route("v2", "x");
        let first = admission.admit(&discover(&[("dp.yaml", &hashed), ("route.yaml", &route)]));
        assert!(first.problems.is_empty(), "{:?}", first.problems);

        let rival = extra_policy(
            "aaa-extra",
            "loadBalancer: {simple: ROUND_ROBIN}\n  connectionPool: {http: {maxRequests: 1000}}",
        );
        let out =
            admission.admit(&discover(&[("aaa-extra.yaml", &rival), ("dp.yaml", &hashed), ("route.yaml", &route)]));
        assert_eq!(out.snapshot, first.snapshot, "nothing that worked changed");
        let loser = ObjectKey::new(Kind::DestinationPolicy, "shop", "aaa-extra");
        let message = &out.conflicts[&loser];
        assert_eq!(
            message,
            "spec.loadBalancer: conflicts with DestinationPolicy shop/reviews, which applies to host \
             reviews.shop.svc.cluster.local first (the older policy wins)"
        );
        assert_eq!(
            out.problems,
            [format!("aaa-extra.yaml: DestinationPolicy shop/aaa-extra: {message}; left out (it has no earlier good version)")],
            "the log line names both"
        );

        // A subset defined differently conflicts too; the same subset twice does not.
        let subset = extra_policy("aaa-extra", "subsets: [{name: v1, labels: {version: other}}]");
        let out =
            admission.admit(&discover(&[("aaa-extra.yaml", &subset), ("dp.yaml", &hashed), ("route.yaml", &route)]));
        assert!(out.conflicts[&loser].starts_with("spec.subsets[v1]: conflicts with DestinationPolicy shop/reviews"));
        let same = extra_policy(
            "aaa-extra",
            "subsets: [{name: v1, labels: {version: v1}}, {name: v3, labels: {version: v3}}]",
        );
        let out =
            admission.admit(&discover(&[("aaa-extra.yaml", &same), ("dp.yaml", &hashed), ("route.yaml", &route)]));
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let subsets: Vec<String> = merged_policy(&out).spec.subsets.iter().map(|s| s.name.clone()).collect();
        assert_eq!(subsets, ["v1", "v2", "v3"]);
    }

    /// With creation times (Kubernetes), the older policy wins whatever the names and the order seen.
    #[test]
    fn the_older_policy_wins_a_conflict() {
        let policy = |name: &str, created: i64, lb: &str| {
            let mut d = discover(&[("kubernetes", &extra_policy(name, &format!("loadBalancer: {{simple: {lb}}}")))]);
            d.objects[0].created = Some(created);
            d.objects.remove(0)
        };
        for (older, newer) in [("aaa", "zzz"), ("zzz", "aaa")] {
            let mut admission = Admission::new("cluster.local");
            let discovered = Discovered {
                objects: vec![policy(newer, 2_000, "RANDOM"), policy(older, 1_000, "ROUND_ROBIN")],
                rejected: vec![],
            };
            let out = admission.admit(&discovered);
            assert_eq!(merged_policy(&out).name, older, "{older} is older");
            let loser = ObjectKey::new(Kind::DestinationPolicy, "shop", newer);
            assert!(out.conflicts[&loser].contains(&format!("DestinationPolicy shop/{older}")), "{:?}", out.conflicts);
        }
    }

    #[test]
    fn mesh_entries_are_checked_one_by_one() {
        let mut admission = Admission::new("cluster.local");
        let mesh = r#"
apiVersion: strait.dev/v1alpha1
kind: Mesh
spec:
  workloads:
  - {name: a, namespace: shop, node: n, address: 10.0.0.1}
  - {name: b, namespace: shop, node: n, address: 10.0.0.1}
  - {name: C, namespace: shop, node: n, address: 10.0.0.3}
"#;
        let out = admission.admit(&discover(&[("mesh.yaml", mesh)]));
        let names: Vec<&str> = out.snapshot.workloads.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["a"]);
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems.iter().any(|p| p.starts_with("mesh.yaml: Workload shop/C: name: ")), "{:?}", out.problems);
        assert!(out.problems.iter().any(|p| p.contains("address: 10.0.0.1 is already used by workload shop/a")));
    }
}
