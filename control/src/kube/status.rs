//! The `Accepted` / `ResolvedRefs` conditions of every custom resource, written to its status subresource.
//!
//! Verdicts come from the same [`Admission`] the publisher runs, fed the same discovered states, so a
//! resource reads `Accepted=True` exactly when its current generation is what proxies receive. A status is
//! written only when it would change (conditions keep their `lastTransitionTime` while their status holds),
//! so the controller's own writes, which come back as watch events, end in no further write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use strait_api::crd::{self, ResourceStatus};
use tokio::sync::watch;

use super::crds::CrdObject;
use crate::admit::{check_object, Admission};
use crate::gateway;
use crate::model::{Discovered, Object, ObjectKey, Snapshot};
use crate::translate::reference_problems;

/// The API server's limit on a condition message is 32 KiB; a few lines are all a person reads anyway.
const MAX_MESSAGE: usize = 4096;
/// After a failed write, try again this much later even if nothing changes meanwhile.
const RETRY: Duration = Duration::from_secs(5);

/// One discovered state as the status writer sees it: the inputs, and every custom resource's generation and
/// stored status.
#[derive(Debug, Default)]
pub struct Observed {
    pub discovered: Arc<Discovered>,
    pub resources: Vec<CrdObject>,
}

/// A condition's verdict: `True`, or `False`/`Unknown` with a reason and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    True,
    False { reason: &'static str, message: String },
    Unknown { reason: &'static str, message: String },
}

/// The two conditions of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdicts {
    pub accepted: Verdict,
    pub resolved_refs: Verdict,
}

/// Judges every custom resource of `discovered` (admitting it with `admission`, which must see the same
/// sequence of states as the publisher's).
pub fn judge(trust_domain: &str, admission: &mut Admission, discovered: &Discovered) -> BTreeMap<ObjectKey, Verdicts> {
    judge_admitted(trust_domain, admission, discovered).0
}

/// [`judge`], and the admitted snapshot the verdicts were made against.
pub fn judge_admitted(
    trust_domain: &str,
    admission: &mut Admission,
    discovered: &Discovered,
) -> (BTreeMap<ObjectKey, Verdicts>, Snapshot) {
    let admitted = admission.admit(discovered);
    let mut verdicts = BTreeMap::new();
    let not_checked = || Verdict::Unknown {
        reason: crd::REASON_INVALID,
        message: "references are checked once the resource is valid".to_string(),
    };
    for rejection in &discovered.rejected {
        if let Some(key) = rejection.key.as_ref().filter(|k| is_custom(k)) {
            let accepted = Verdict::False { reason: crd::REASON_INVALID, message: rejection.message.clone() };
            verdicts.insert(key.clone(), Verdicts { accepted, resolved_refs: not_checked() });
        }
    }
    for sourced in &discovered.objects {
        let key = sourced.object.key();
        if !is_custom(&key) {
            continue;
        }
        let judged = if let Err(problems) = check_object(trust_domain, &sourced.object) {
            let accepted = Verdict::False { reason: crd::REASON_INVALID, message: problems.join("; ") };
            Verdicts { accepted, resolved_refs: not_checked() }
        } else if in_snapshot(&admitted.snapshot, &sourced.object) {
            Verdicts { accepted: Verdict::True, resolved_refs: Verdict::True }
        } else if let Some(message) = admitted.conflicts.get(&key) {
            // Its references are fine; it lost to an older policy for the same host.
            Verdicts {
                accepted: Verdict::False { reason: crd::REASON_CONFLICTED, message: message.clone() },
                resolved_refs: Verdict::True,
            }
        } else {
            // Valid alone but not admitted: its references do not resolve against what is in use.
            let problems = unresolved(&admitted.snapshot, &sourced.object);
            let message = if problems.is_empty() {
                "not admitted together with the rest of the mesh; see the control plane's log".to_string()
            } else {
                problems.join("; ")
            };
            Verdicts {
                accepted: Verdict::False { reason: crd::REASON_REF_NOT_FOUND, message: message.clone() },
                resolved_refs: Verdict::False { reason: crd::REASON_REF_NOT_FOUND, message },
            }
        };
        verdicts.insert(key, judged);
    }
    (verdicts, admitted.snapshot)
}

fn is_custom(key: &ObjectKey) -> bool {
    use crate::model::Kind;
    matches!(
        key.kind,
        Kind::TrafficRoute | Kind::DestinationPolicy | Kind::AuthorizationPolicy | Kind::HTTPRoute | Kind::GRPCRoute
    )
}

/// Whether this exact version of the object is in the admitted snapshot (not an earlier good version).
fn in_snapshot(snapshot: &Snapshot, object: &Object) -> bool {
    match object {
        Object::TrafficRoute(r) => snapshot.traffic_routes.contains(r),
        Object::DestinationPolicy(d) => snapshot.destination_policies.contains(d),
        Object::AuthorizationPolicy(p) => snapshot.authorization_policies.contains(p),
        Object::GatewayRoute(r) => snapshot.gateway_routes.contains(r),
        _ => false,
    }
}

/// The reference problems of `object` if it were put in `snapshot` in place of whatever stands for it.
fn unresolved(snapshot: &Snapshot, object: &Object) -> Vec<String> {
    let key = object.key();
    let mut objects = snapshot_objects(snapshot);
    objects.retain(|o| o.key() != key);
    objects.push(object.clone());
    reference_problems(&Snapshot::from_objects(&objects))
        .into_iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, message)| message)
        .collect()
}

fn snapshot_objects(s: &Snapshot) -> Vec<Object> {
    let mut objects: Vec<Object> = Vec::new();
    objects.extend(s.namespaces.iter().cloned().map(Object::Namespace));
    objects.extend(s.workloads.iter().cloned().map(Object::Workload));
    objects.extend(s.services.iter().cloned().map(Object::Service));
    objects.extend(s.traffic_routes.iter().cloned().map(Object::TrafficRoute));
    objects.extend(s.destination_policies.iter().cloned().map(Object::DestinationPolicy));
    objects.extend(s.authorization_policies.iter().cloned().map(Object::AuthorizationPolicy));
    objects.extend(s.gateway_routes.iter().cloned().map(Object::GatewayRoute));
    objects
}

/// The status `current` becomes with these verdicts for `generation`: other condition types are kept, and
/// so is the `lastTransitionTime` of a condition whose status did not change.
pub fn desired_status(
    current: Option<&ResourceStatus>,
    generation: Option<i64>,
    verdicts: &Verdicts,
) -> ResourceStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.observed_generation = generation;
    status.set_condition(condition(crd::ACCEPTED, crd::REASON_ACCEPTED, &verdicts.accepted, generation));
    status.set_condition(condition(crd::RESOLVED_REFS, crd::REASON_RESOLVED_REFS, &verdicts.resolved_refs, generation));
    status
}

fn condition(type_: &str, true_reason: &str, verdict: &Verdict, generation: Option<i64>) -> Condition {
    let (status, reason, message) = match verdict {
        Verdict::True => ("True", true_reason, String::new()),
        Verdict::False { reason, message } => ("False", *reason, message.clone()),
        Verdict::Unknown { reason, message } => ("Unknown", *reason, message.clone()),
    };
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: truncate(message),
        observed_generation: generation,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::now()),
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" …");
    }
    message
}

/// Judges every observed state until the sender is gone, and writes the statuses that change while `leader`
/// says this replica leads (always true with a single replica). Followers still judge every state, so their
/// admission history matches their publisher's and a replica that becomes leader writes at once from the
/// latest verdicts.
pub async fn run(
    client: kube::Client,
    trust_domain: String,
    mut observed: watch::Receiver<Arc<Observed>>,
    mut leader: watch::Receiver<bool>,
) {
    let mut admission = Admission::new(trust_domain.clone());
    let mut current: Arc<Observed> = Arc::default();
    let mut verdicts = BTreeMap::new();
    let mut snapshot = Snapshot::default();
    let mut retry = false;
    let mut leader_open = true;
    loop {
        let new_state = tokio::select! {
            changed = observed.changed() => if changed.is_err() { return } else { true },
            changed = leader.changed(), if leader_open => {
                leader_open = changed.is_ok();
                false
            }
            // Try the failed writes again even if nothing changes meanwhile.
            _ = tokio::time::sleep(RETRY), if retry => false,
        };
        if new_state {
            current = observed.borrow_and_update().clone();
            (verdicts, snapshot) = judge_admitted(&trust_domain, &mut admission, &current.discovered);
        }
        retry = *leader.borrow_and_update() && !write_all(&client, &current, &verdicts, &snapshot).await;
    }
}

/// Writes every status that differs from its verdicts (a Gateway API route's per parent); false if a write
/// failed.
async fn write_all(
    client: &kube::Client,
    current: &Observed,
    verdicts: &BTreeMap<ObjectKey, Verdicts>,
    snapshot: &Snapshot,
) -> bool {
    let mut ok = true;
    for resource in &current.resources {
        if let Some(meta) = &resource.gateway {
            let verdict = verdicts.get(&resource.key);
            let Some(parents) = gateway::status::desired(meta, &resource.key, verdict, snapshot, resource.generation)
            else {
                continue;
            };
            if let Err(e) = gateway::status::write(client, resource, parents).await {
                tracing::warn!(resource = %resource.key, error = %e, "cannot write the route status; will retry");
                ok = false;
            }
            continue;
        }
        let Some(v) = verdicts.get(&resource.key) else { continue };
        let desired = desired_status(resource.status.as_ref(), resource.generation, v);
        if resource.status.as_ref() == Some(&desired) {
            continue;
        }
        if let Err(e) = write(client, resource, &desired).await {
            tracing::warn!(resource = %resource.key, error = %e, "cannot write the status; will retry");
            ok = false;
        }
    }
    ok
}

async fn write(client: &kube::Client, resource: &CrdObject, status: &ResourceStatus) -> Result<(), kube::Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &resource.key.namespace, &resource.kind.api_resource());
    // A merge patch replaces the whole conditions list with ours, which kept every other condition type.
    let patch = serde_json::json!({ "status": status });
    match api.patch_status(&resource.key.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            tracing::debug!(resource = %resource.key, "wrote status");
            Ok(())
        }
        // Deleted since it was observed: nothing to report on.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::parse_file;

    const POLICY: &str = r#"
apiVersion: strait.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews, namespace: shop}
spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}
"#;

    fn route(subset: &str, regex: &str) -> String {
        format!(
            "apiVersion: strait.dev/v1alpha1\nkind: TrafficRoute\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{{uri: {{regex: \"{regex}\"}}}}]\n    route: [{{destination: {{host: reviews, subset: {subset}}}}}]\n"
        )
    }

    fn discover(texts: &[&str]) -> Discovered {
        let mut d = Discovered::default();
        for t in texts {
            parse_file("kubernetes", t, &mut d);
        }
        d
    }

    fn key(kind: crate::model::Kind) -> ObjectKey {
        ObjectKey::new(kind, "shop", "reviews")
    }

    #[test]
    fn verdicts_follow_admission() {
        use crate::model::Kind;
        let mut admission = Admission::new("cluster.local");
        let ok = judge("cluster.local", &mut admission, &discover(&[POLICY, &route("v1", "/a")]));
        assert_eq!(ok[&key(Kind::TrafficRoute)].accepted, Verdict::True);
        assert_eq!(ok[&key(Kind::DestinationPolicy)].resolved_refs, Verdict::True);

        let missing = judge("cluster.local", &mut admission, &discover(&[POLICY, &route("v9", "/a")]));
        let Verdict::False { reason, message } = &missing[&key(Kind::TrafficRoute)].resolved_refs else {
            panic!("{missing:?}")
        };
        assert_eq!(*reason, crd::REASON_REF_NOT_FOUND);
        assert!(message.starts_with("spec.http[0].route[0].destination.subset: subset \"v9\""), "{message}");
        assert!(matches!(missing[&key(Kind::TrafficRoute)].accepted, Verdict::False { .. }));

        let regex = judge("cluster.local", &mut admission, &discover(&[POLICY, &route("v1", "/(a")]));
        let Verdict::False { reason, message } = &regex[&key(Kind::TrafficRoute)].accepted else { panic!("{regex:?}") };
        assert_eq!(*reason, crd::REASON_INVALID);
        assert!(message.starts_with("spec.http[0].match[0].uri.regex: "), "{message}");
        assert!(matches!(regex[&key(Kind::TrafficRoute)].resolved_refs, Verdict::Unknown { .. }));
    }

    #[test]
    fn an_out_of_range_duration_is_a_false_condition_naming_the_field() {
        use crate::model::Kind;
        let mut admission = Admission::new("cluster.local");
        let huge = route("v1", "/a").replace("  - match:", "  - timeout: 99999999999999999999s\n    match:");
        let verdicts = judge("cluster.local", &mut admission, &discover(&[POLICY, &huge]));
        let Verdict::False { reason, message } = &verdicts[&key(Kind::TrafficRoute)].accepted else {
            panic!("{verdicts:?}")
        };
        assert_eq!(*reason, crd::REASON_INVALID);
        assert!(message.starts_with("spec.http[0].timeout: \"99999999999999999999s\" is longer than 24h"), "{message}");
        // The rest of the configuration still applies.
        assert_eq!(verdicts[&key(Kind::DestinationPolicy)].accepted, Verdict::True);
    }

    /// Issue 21, item 4: the policy that lost a conflict says so, naming the one that applies; the winner and
    /// the route stay accepted.
    #[test]
    fn a_conflicting_policy_is_not_accepted_and_names_the_winner() {
        use crate::model::Kind;
        let mut admission = Admission::new("cluster.local");
        let hashed = format!("{POLICY}  \n").replace(
            "spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}]}",
            "spec: {host: reviews, subsets: [{name: v1, labels: {version: v1}}], loadBalancer: {simple: RANDOM}}",
        );
        judge("cluster.local", &mut admission, &discover(&[&hashed, &route("v1", "/a")]));
        let rival =
            "apiVersion: strait.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: aaa, namespace: shop}\n\
                     spec: {host: reviews, loadBalancer: {simple: ROUND_ROBIN}}\n";
        let verdicts = judge("cluster.local", &mut admission, &discover(&[rival, &hashed, &route("v1", "/a")]));
        let loser = &verdicts[&ObjectKey::new(Kind::DestinationPolicy, "shop", "aaa")];
        let Verdict::False { reason, message } = &loser.accepted else { panic!("{verdicts:?}") };
        assert_eq!(*reason, crd::REASON_CONFLICTED);
        assert!(message.starts_with("spec.loadBalancer: conflicts with DestinationPolicy shop/reviews"), "{message}");
        assert_eq!(verdicts[&key(Kind::DestinationPolicy)].accepted, Verdict::True);
        assert_eq!(verdicts[&key(Kind::TrafficRoute)].accepted, Verdict::True);
    }

    #[test]
    fn an_unchanged_verdict_is_an_unchanged_status() {
        let verdicts = Verdicts { accepted: Verdict::True, resolved_refs: Verdict::True };
        let first = desired_status(None, Some(1), &verdicts);
        assert_eq!(first.condition(crd::ACCEPTED).map(|c| c.status.as_str()), Some("True"));
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(desired_status(Some(&first), Some(1), &verdicts), first, "nothing to write");
        let next = desired_status(Some(&first), Some(2), &verdicts);
        assert_ne!(next, first, "a new generation is recorded");
        assert_eq!(next.conditions[0].last_transition_time, first.conditions[0].last_transition_time);
    }
}
