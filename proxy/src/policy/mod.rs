//! L4 and L7 authorization, with Istio's semantics.
//!
//! A policy applies to a destination workload when it lives in the workload's namespace (or in the root
//! namespace, which makes it mesh-wide) and its selector, if any, matches the workload's labels. Any matching
//! DENY denies; if any ALLOW applies, one must match; otherwise the request is allowed.
//!
//! The same [`Policies`] answers both questions the inbound path asks: once per connection (L4, no
//! [`Request::http`]) and, for connections served as HTTP, once per request. A rule with L7 fields cannot be
//! verified on a bare connection, so at L4 (as ztunnel does):
//!
//! | L4 check                 | ALLOW rule with L7 fields       | DENY rule with L7 fields            |
//! |--------------------------|---------------------------------|-------------------------------------|
//! | `l7_pending == false`    | never matches                   | L7 fields ignored (fail closed)     |
//! | `l7_pending == true`     | L7 fields ignored (per request) | skipped (the per-request check)     |
//!
//! With `l7_pending`, the connection is let through exactly when some request on it could be allowed; the
//! per-request check evaluates every field.
//!
//! Policies are compiled once per configuration version: CIDRs parsed, principal patterns normalised and
//! policies indexed by namespace, so evaluation allocates nothing.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use strait_api::{Action, AuthorizationPolicySpec, LabelSelector, Named, Rule, Workload};
use strait_certs::Identity;

use matchers::{OperationMatch, SourceMatch};

mod matchers;
#[cfg(test)]
mod tests;

/// Policies in this namespace apply to workloads in every namespace.
pub const ROOT_NAMESPACE: &str = strait_api::AUTHORIZATION_ROOT_NAMESPACE;

pub(crate) const SPIFFE_SCHEME: &str = "spiffe://";

/// The L7 attributes of one HTTP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpAttributes<'a> {
    pub method: &'a str,
    /// The request path; a query string, if still attached, is ignored.
    pub path: &'a str,
}

/// What is being authorized: a connection (L4) or, with `http`, one request on it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `<trust domain>/ns/<ns>/sa/<sa>` (a `spiffe://` prefix is tolerated); `None` for plaintext sources.
    pub source_principal: Option<&'a str>,
    /// The source's namespace, from its identity; `None` for plaintext sources (see [`principal_namespace`]).
    pub source_namespace: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination: &'a Workload,
    pub destination_port: u16,
    pub http: Option<HttpAttributes<'a>>,
    /// At L4: the connection will be served as HTTP and every request checked, so rules with L7 fields are
    /// left to that check (see the module documentation). Ignored when `http` is set.
    pub l7_pending: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

impl Decision {
    #[cfg(test)]
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// `namespace/name` of the DENY policy that matched, or `default` when no ALLOW policy matched.
    pub policy: String,
    pub reason: DenyReason,
}

impl fmt::Display for Denial {
    /// For logs and operators: names the policy, never the rule or the request. Not sent to the caller, who
    /// would learn which policy to work around.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            DenyReason::DenyPolicyMatched => write!(f, "RBAC: access denied by policy {}", self.policy),
            DenyReason::NoAllowPolicyMatched => write!(f, "RBAC: access denied: no ALLOW policy matched"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    DenyPolicyMatched,
    NoAllowPolicyMatched,
}

impl DenyReason {
    /// A stable, low-cardinality string, usable as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::DenyPolicyMatched => "deny_policy_matched",
            DenyReason::NoAllowPolicyMatched => "no_allow_policy_matched",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The namespace named by a `<trust domain>/ns/<ns>/sa/<sa>` principal (with or without `spiffe://`).
#[cfg(test)]
pub fn principal_namespace(principal: &str) -> Option<&str> {
    let path = principal.strip_prefix(SPIFFE_SCHEME).unwrap_or(principal);
    let mut parts = path.split('/');
    let (_trust_domain, ns_key, ns, sa_key) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (ns_key == "ns" && sa_key == "sa" && !ns.is_empty()).then_some(ns)
}

/// Every authorization policy of one configuration version, compiled for evaluation.
#[derive(Clone, Debug)]
pub struct Policies {
    by_namespace: HashMap<String, Vec<Policy>>,
    root_namespace: String,
}

impl Default for Policies {
    fn default() -> Self {
        Policies { by_namespace: HashMap::new(), root_namespace: ROOT_NAMESPACE.to_string() }
    }
}

/// An AuthorizationPolicy that cannot be compiled. The whole configuration is refused: dropping the policy
/// would fail open, and guessing at what it meant could too.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("authorizationPolicy {policy}: {field}")]
pub struct PolicyError {
    /// `namespace/name`.
    pub policy: String,
    /// The field path and what is wrong with it, e.g. `rules[0].from[1].source.ipBlocks[0]: ...`.
    pub field: String,
}

impl Policies {
    pub fn compile(policies: &[Named<AuthorizationPolicySpec>]) -> Result<Self, PolicyError> {
        Self::with_root_namespace(policies, ROOT_NAMESPACE)
    }

    pub fn with_root_namespace(
        policies: &[Named<AuthorizationPolicySpec>],
        root_namespace: &str,
    ) -> Result<Self, PolicyError> {
        let mut by_namespace: HashMap<String, Vec<Policy>> = HashMap::new();
        for named in policies {
            let policy = Policy::compile(named)
                .map_err(|field| PolicyError { policy: format!("{}/{}", named.namespace, named.name), field })?;
            by_namespace.entry(named.namespace.clone()).or_default().push(policy);
        }
        Ok(Policies { by_namespace, root_namespace: root_namespace.to_string() })
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_namespace.values().map(Vec::len).sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn evaluate(&self, request: &Request<'_>) -> Decision {
        self.evaluate_explained(request).0
    }

    /// [`Policies::evaluate`], plus the `namespace/name` of the first ALLOW policy that matched (`None` when the
    /// request is allowed because no ALLOW policy applies, or denied); for `strait why`. Allocates nothing more
    /// than `evaluate` did.
    pub fn evaluate_explained<'s>(&'s self, request: &Request<'_>) -> (Decision, Option<&'s str>) {
        let mut allow_applies = false;
        let mut allowed: Option<&'s str> = None;
        let (own, root) = self.applicable(request.destination);
        let labels = &request.destination.labels;
        let selected = |p: &&Policy| p.selector.as_ref().is_none_or(|s| s.matches(labels));
        for policy in own.iter().chain(root).filter(selected) {
            let l7 = L7::for_check(request, policy.action);
            match policy.action {
                Action::Deny => {
                    if policy.matches(request, l7) {
                        let denial = Denial { policy: policy.id.clone(), reason: DenyReason::DenyPolicyMatched };
                        return (Decision::Deny(denial), None);
                    }
                }
                Action::Allow => {
                    allow_applies = true;
                    // Keep looping: a later DENY still wins.
                    if allowed.is_none() && policy.matches(request, l7) {
                        allowed = Some(&policy.id);
                    }
                }
            }
        }
        match allowed {
            None if allow_applies => (
                Decision::Deny(Denial { policy: "default".to_string(), reason: DenyReason::NoAllowPolicyMatched }),
                None,
            ),
            _ => (Decision::Allow, allowed),
        }
    }

    /// The policies of the destination's namespace and of the root namespace (selectors not yet applied).
    fn applicable(&self, destination: &Workload) -> (&[Policy], &[Policy]) {
        let own = self.by_namespace.get(&destination.namespace).map_or(&[][..], Vec::as_slice);
        // A workload in the root namespace must not see the root's policies twice.
        let root = match destination.namespace != self.root_namespace {
            true => self.by_namespace.get(&self.root_namespace).map_or(&[][..], Vec::as_slice),
            false => &[],
        };
        (own, root)
    }
}

/// How the L7 fields of a rule are treated in one check.
#[derive(Clone, Copy, Debug)]
pub(crate) enum L7<'a> {
    Request(HttpAttributes<'a>),
    /// L7 fields are treated as matching; the rule's other fields decide.
    Ignore,
    /// A rule with any L7 field does not match.
    Unmatchable,
}

impl<'a> L7<'a> {
    fn for_check(request: &Request<'a>, action: Action) -> Self {
        match (request.http, request.l7_pending, action) {
            (Some(http), _, _) => L7::Request(http),
            (None, false, Action::Allow) | (None, true, Action::Deny) => L7::Unmatchable,
            (None, false, Action::Deny) | (None, true, Action::Allow) => L7::Ignore,
        }
    }
}

#[derive(Clone, Debug)]
struct Policy {
    id: String,
    action: Action,
    selector: Option<LabelSelector>,
    rules: Vec<CompiledRule>,
}

impl Policy {
    fn compile(named: &Named<AuthorizationPolicySpec>) -> Result<Self, String> {
        let rules = named
            .spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| CompiledRule::compile(rule).map_err(|e| format!("rules[{i}].{e}")));
        Ok(Policy {
            id: format!("{}/{}", named.namespace, named.name),
            action: named.spec.action,
            selector: named.spec.selector.clone(),
            rules: rules.collect::<Result<_, _>>()?,
        })
    }

    fn matches(&self, request: &Request<'_>, l7: L7<'_>) -> bool {
        self.rules.iter().any(|r| r.matches(request, l7))
    }
}

#[derive(Clone, Debug)]
struct CompiledRule {
    from: Vec<SourceMatch>,
    to: Vec<OperationMatch>,
    has_l7: bool,
}

impl CompiledRule {
    fn compile(rule: &Rule) -> Result<Self, String> {
        let to = rule
            .to
            .iter()
            .enumerate()
            .map(|(i, t)| OperationMatch::compile(&t.operation).map_err(|e| format!("to[{i}].operation.{e}")));
        let to: Vec<OperationMatch> = to.collect::<Result<_, _>>()?;
        let from = rule
            .from
            .iter()
            .enumerate()
            .map(|(i, f)| SourceMatch::compile(&f.source).map_err(|e| format!("from[{i}].source.{e}")));
        Ok(CompiledRule { from: from.collect::<Result<_, _>>()?, has_l7: to.iter().any(|o| o.has_l7), to })
    }

    fn matches(&self, request: &Request<'_>, l7: L7<'_>) -> bool {
        if self.has_l7 && matches!(l7, L7::Unmatchable) {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(request)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(request, l7)))
    }
}

/// The caller, as far as the destination side can tell.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Verified by mTLS; `None` for plaintext.
    pub identity: Option<Identity>,
    pub address: IpAddr,
}

impl Caller {
    pub(crate) fn request<'a>(
        &'a self,
        principal: &'a Option<String>,
        destination: &'a Workload,
        port: u16,
    ) -> Request<'a> {
        Request {
            source_principal: principal.as_deref(),
            source_namespace: self.identity.as_ref().map(|i| i.namespace()),
            source_ip: self.address,
            destination,
            destination_port: port,
            http: None,
            l7_pending: false,
        }
    }
}
