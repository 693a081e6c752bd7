//! PeerAuthentication as the proxies apply it: whether a workload's port accepts plaintext from outside the
//! mesh. The control plane fills these from Istio's `security.istio.io` PeerAuthentication; the namespace's
//! own setting ([`crate::NamespaceConfig::mtls_mode`], the `strait.dev/mtls-mode` label) is the layer below.
//!
//! Precedence, as Istio's: a workload policy (selector) > a namespace policy > a mesh-wide policy (Istio's
//! root namespace) > the namespace's setting > STRICT. Within a workload policy a port-level mode overrides
//! the policy's own; a level whose mode is unset (`UNSET`, or only port-level modes that do not match)
//! inherits from the level below.
//!
//! Several policies at one level (two selecting one workload, or two namespace-wide ones): the oldest applies,
//! by `metadata.creationTimestamp` ([`PeerAuthentication::created`]), then the first by name, as Istio picks.
//! A policy without a creation time (the file provider has none) comes after those with one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resources::LabelSelector;
use crate::{MeshConfig, MtlsMode, Workload};

/// Policies per configuration; a mesh writes a handful, this refuses only what no one means.
pub const MAX_PEER_AUTHENTICATIONS: usize = 4096;
/// Port-level modes of one policy.
pub const MAX_PORT_LEVEL_MTLS: usize = 64;

/// One PeerAuthentication, as pushed to the proxies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    pub name: String,
    pub namespace: String,
    /// Applies to every namespace (Istio: a policy without selector in the root namespace).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesh_wide: bool,
    /// The workloads of `namespace` it applies to; absent: the whole namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// `None`: UNSET, inherit from the level below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsMode>,
    /// Per workload port (the pod's port, not a service port). Only with a selector, as in Istio.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub port_level_mtls: BTreeMap<u16, MtlsMode>,
    /// `metadata.creationTimestamp` in Unix seconds, where known: of several policies at one level, the oldest
    /// applies (see the module's doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
}

impl PeerAuthentication {
    /// Istio's order among policies of one level: the oldest first, then by name.
    fn precedence(&self) -> (bool, Option<i64>, &str) {
        (self.created.is_none(), self.created, &self.name)
    }
}

/// Which level decided a workload port's mode, for logs and `strait why`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsSource {
    WorkloadPort,
    Workload,
    Namespace,
    Mesh,
    NamespaceSetting,
}

impl MeshConfig {
    /// The mode for plaintext arriving at `workload` on its `port`, and the level that decided it.
    pub fn peer_mtls_mode(&self, workload: &Workload, port: u16) -> (MtlsMode, MtlsSource) {
        let in_namespace = |p: &&PeerAuthentication| !p.mesh_wide && p.namespace == workload.namespace;
        // Several policies at one level: the oldest, then the first by name (Istio's choice).
        let workload_policy = self
            .peer_authentications
            .iter()
            .filter(in_namespace)
            .filter(|p| p.selector.as_ref().is_some_and(|s| s.matches(&workload.labels)))
            .min_by(|a, b| a.precedence().cmp(&b.precedence()));
        if let Some(policy) = workload_policy {
            if let Some(mode) = policy.port_level_mtls.get(&port) {
                return (*mode, MtlsSource::WorkloadPort);
            }
            if let Some(mode) = policy.mode {
                return (mode, MtlsSource::Workload);
            }
        }
        let namespace_mode = self
            .peer_authentications
            .iter()
            .filter(in_namespace)
            .filter(|p| p.selector.is_none())
            .min_by(|a, b| a.precedence().cmp(&b.precedence()))
            .and_then(|p| p.mode);
        if let Some(mode) = namespace_mode {
            return (mode, MtlsSource::Namespace);
        }
        if let Some(mode) = self.peer_authentications.iter().find(|p| p.mesh_wide).and_then(|p| p.mode) {
            return (mode, MtlsSource::Mesh);
        }
        (self.mtls_mode(&workload.namespace), MtlsSource::NamespaceSetting)
    }
}

/// Problems of the policies, each naming its field.
pub(crate) fn validate(config: &MeshConfig, push: &mut dyn FnMut(String, String)) {
    if config.peer_authentications.len() > MAX_PEER_AUTHENTICATIONS {
        push("peerAuthentications".into(), format!("at most {MAX_PEER_AUTHENTICATIONS} policies"));
    }
    let mut mesh_wide = 0;
    for (i, policy) in config.peer_authentications.iter().enumerate() {
        let field = format!("peerAuthentications[{i}]");
        if policy.mesh_wide {
            mesh_wide += 1;
            if mesh_wide > 1 {
                push(format!("{field}.meshWide"), "only one mesh-wide policy may apply".into());
            }
            if policy.selector.is_some() {
                push(format!("{field}.selector"), "a mesh-wide policy applies to every workload".into());
            }
        }
        if policy.port_level_mtls.len() > MAX_PORT_LEVEL_MTLS {
            push(format!("{field}.portLevelMtls"), format!("at most {MAX_PORT_LEVEL_MTLS} ports"));
        }
        if !policy.port_level_mtls.is_empty() && policy.selector.is_none() {
            push(format!("{field}.portLevelMtls"), "needs a selector (as in Istio: ports are a workload's)".into());
        }
        if policy.port_level_mtls.contains_key(&0) {
            push(format!("{field}.portLevelMtls"), "port 0: must be 1-65535".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(policies: &str, namespace_mode: &str) -> MeshConfig {
        let yaml =
            format!("namespaces: [{{name: shop, mtlsMode: {namespace_mode}}}]\npeerAuthentications:\n{policies}");
        MeshConfig::from_yaml(&yaml).expect("valid test configuration")
    }

    fn workload(app: &str) -> Workload {
        serde_yaml::from_str(&format!(
            "{{name: {app}, namespace: shop, node: n, address: 10.0.0.1, labels: {{app: {app}}}}}"
        ))
        .expect("test workload")
    }

    #[test]
    fn workload_beats_namespace_beats_mesh_beats_the_namespace_setting() {
        use MtlsMode::{Permissive as P, Strict as S};
        use MtlsSource::*;
        let none = config("  []", "PERMISSIVE");
        assert_eq!(none.peer_mtls_mode(&workload("a"), 80), (P, NamespaceSetting));
        let mesh = config("- {name: default, namespace: istio-system, meshWide: true, mode: STRICT}", "PERMISSIVE");
        assert_eq!(mesh.peer_mtls_mode(&workload("a"), 80), (S, Mesh));
        let namespace = config(
            "- {name: default, namespace: istio-system, meshWide: true, mode: STRICT}\n\
             - {name: ns, namespace: shop, mode: PERMISSIVE}\n\
             - {name: other, namespace: other, mode: STRICT}",
            "STRICT",
        );
        assert_eq!(namespace.peer_mtls_mode(&workload("a"), 80), (P, Namespace));
        let workloads = config(
            "- {name: ns, namespace: shop, mode: PERMISSIVE}\n\
             - {name: a, namespace: shop, selector: {matchLabels: {app: a}}, mode: STRICT, portLevelMtls: {8080: PERMISSIVE}}\n\
             - {name: b, namespace: shop, selector: {matchLabels: {app: b}}, portLevelMtls: {9090: STRICT}}",
            "STRICT",
        );
        assert_eq!(workloads.peer_mtls_mode(&workload("a"), 80), (S, Workload));
        assert_eq!(workloads.peer_mtls_mode(&workload("a"), 8080), (P, WorkloadPort));
        // UNSET at the workload level inherits the namespace policy, except on its own port.
        assert_eq!(workloads.peer_mtls_mode(&workload("b"), 80), (P, Namespace));
        assert_eq!(workloads.peer_mtls_mode(&workload("b"), 9090), (S, WorkloadPort));
        assert_eq!(workloads.peer_mtls_mode(&workload("c"), 80), (P, Namespace));
    }

    /// Istio: of several policies at one level, the oldest applies, then the first by name; one without a
    /// creation time comes last.
    #[test]
    fn the_oldest_of_several_policies_at_one_level_applies_then_the_first_by_name() {
        use MtlsMode::{Permissive as P, Strict as S};
        use MtlsSource::*;
        let selecting = |a_created: &str, b_created: &str| {
            config(
                &format!(
                    "- {{name: a, namespace: shop, selector: {{matchLabels: {{app: w}}}}, mode: STRICT{a_created}}}\n\
                     - {{name: b, namespace: shop, selector: {{matchLabels: {{app: w}}}}, mode: PERMISSIVE{b_created}}}"
                ),
                "STRICT",
            )
        };
        // b is older: it applies, though a comes first by name.
        assert_eq!(selecting(", created: 200", ", created: 100").peer_mtls_mode(&workload("w"), 80), (P, Workload));
        assert_eq!(selecting(", created: 100", ", created: 200").peer_mtls_mode(&workload("w"), 80), (S, Workload));
        // Same age, or none known: the first by name.
        assert_eq!(selecting(", created: 100", ", created: 100").peer_mtls_mode(&workload("w"), 80), (S, Workload));
        assert_eq!(selecting("", "").peer_mtls_mode(&workload("w"), 80), (S, Workload));
        // A known creation time beats an unknown one.
        assert_eq!(selecting("", ", created: 100").peer_mtls_mode(&workload("w"), 80), (P, Workload));
        // Two namespace-wide policies: likewise.
        let namespace_wide = config(
            "- {name: a, namespace: shop, mode: STRICT, created: 300}\n\
             - {name: b, namespace: shop, mode: PERMISSIVE, created: 100}",
            "STRICT",
        );
        assert_eq!(namespace_wide.peer_mtls_mode(&workload("w"), 80), (P, Namespace));
    }

    #[test]
    fn refuses_what_istio_refuses_naming_the_field() {
        let err = MeshConfig::from_yaml(
            "peerAuthentications:\n\
             - {name: a, namespace: shop, portLevelMtls: {8080: STRICT}}\n\
             - {name: m, namespace: istio-system, meshWide: true, selector: {matchLabels: {app: x}}}\n\
             - {name: n, namespace: istio-system, meshWide: true}\n\
             - {name: z, namespace: shop, selector: {matchLabels: {app: x}}, portLevelMtls: {0: STRICT}}",
        )
        .expect_err("invalid");
        let text = err.to_string();
        for needle in [
            "peerAuthentications[0].portLevelMtls: needs a selector",
            "peerAuthentications[1].selector",
            "peerAuthentications[2].meshWide",
            "peerAuthentications[3].portLevelMtls: port 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }
}
