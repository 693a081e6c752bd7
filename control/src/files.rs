//! The file discovery provider: a directory of YAML files stands in for a cluster.
//!
//! Every `*.yaml` / `*.yml` file (not hidden, not in subdirectories) may hold several documents:
//! - the CRDs users would `kubectl apply` (`kind: TrafficRoute | DestinationPolicy | AuthorizationPolicy`,
//!   `apiVersion: strait.dev/v1alpha1`, `metadata: {name, namespace}`, `spec`);
//! - `kind: Mesh` documents describing what a cluster would otherwise tell: `spec.namespaces`,
//!   `spec.workloads`, `spec.services` (see `control/PROTOCOL.md` for an example).
//!
//! Each object is parsed on its own, so one broken object never hides the others: it becomes a
//! [`Rejection`] naming the file, the document and the field, and admission keeps its last good version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;
use tokio::sync::watch;

use crate::discovery::{BoxFuture, Discovery};
use crate::model::{Discovered, Kind, MeshSettings, Object, ObjectKey, Rejection, Sourced, MESH_SETTINGS};

pub const API_VERSION: &str = "strait.dev/v1alpha1";

/// Watches a directory by polling: reading a handful of small files a few times a second costs nothing,
/// catches every kind of edit (rename-into-place, in-place writes, deletes) and needs no inotify.
pub struct FileDiscovery {
    dir: PathBuf,
    interval: Duration,
}

impl FileDiscovery {
    pub fn new(dir: impl Into<PathBuf>, interval: Duration) -> Self {
        FileDiscovery { dir: dir.into(), interval }
    }
}

impl Discovery for FileDiscovery {
    fn run(self: Box<Self>, out: watch::Sender<Arc<Discovered>>) -> BoxFuture<()> {
        Box::pin(async move {
            let mut last: Option<FileContents> = None;
            let mut ticker = tokio::time::interval(self.interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticker.tick().await;
                if out.is_closed() {
                    return;
                }
                let dir = self.dir.clone();
                let read = tokio::task::spawn_blocking(move || read_dir(&dir)).await;
                let contents = match read {
                    Ok(Ok(contents)) => contents,
                    Ok(Err(e)) => {
                        // Keep what was published: a directory that is briefly unreadable (being replaced,
                        // say) must not empty the mesh.
                        tracing::error!(dir = %self.dir.display(), error = %e, "cannot read the configuration directory");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading the configuration directory panicked");
                        continue;
                    }
                };
                if last.as_ref() == Some(&contents) {
                    continue;
                }
                let discovered = parse_files(&contents);
                tracing::debug!(
                    files = contents.len(),
                    objects = discovered.objects.len(),
                    rejected = discovered.rejected.len(),
                    "configuration files changed"
                );
                last = Some(contents);
                out.send_replace(Arc::new(discovered));
            }
        })
    }
}

/// File name -> contents, or why the file could not be read.
pub type FileContents = BTreeMap<String, Result<Vec<u8>, String>>;

/// Reads every configuration file of `dir`. A file that cannot be read is recorded with the error, so that
/// it is reported and its objects keep their last good versions.
pub fn read_dir(dir: &Path) -> std::io::Result<FileContents> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Editors write hidden swap and backup files beside the real ones.
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        match std::fs::read(entry.path()) {
            Ok(bytes) => {
                files.insert(name, Ok(bytes));
            }
            // Deleted between listing and reading: it is gone, like any deleted file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                files.insert(name, Err(e.to_string()));
            }
        }
    }
    Ok(files)
}

/// Parses every file; see [`parse_file`].
pub fn parse_files(files: &FileContents) -> Discovered {
    let mut discovered = Discovered::default();
    for (name, bytes) in files {
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(error) => {
                discovered.rejected.push(Rejection {
                    source: name.clone(),
                    key: None,
                    message: format!("cannot read the file: {error}"),
                });
                continue;
            }
        };
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                discovered.rejected.push(Rejection {
                    source: name.clone(),
                    key: None,
                    message: format!("not UTF-8 text: {e}"),
                });
                continue;
            }
        };
        parse_file(name, text, &mut discovered);
    }
    discovered
}

/// Parses one file's documents into objects and rejections.
pub fn parse_file(source: &str, text: &str, out: &mut Discovered) {
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc = index + 1;
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(e) => {
                // A syntax error: which objects the file meant to hold is unknown, so none of them changes.
                out.rejected.push(Rejection {
                    source: source.to_string(),
                    key: None,
                    message: format!("document {doc}: not valid YAML: {e}"),
                });
                return;
            }
        };
        if value.is_null() {
            continue;
        }
        let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
        if crate::istio::is_istio_api(api_version) {
            parse_istio(source, doc, &value, out);
        } else if crate::gateway::is_gateway_api(api_version) {
            parse_gateway(source, doc, &value, out);
        } else {
            parse_document(source, doc, value, out);
        }
    }
}

/// An Istio document, read as the Strait resource it converts to when the conversion is exact; otherwise
/// refused with every field that would behave differently (`strait import --accept-changes` makes the
/// reviewed conversion a file of Strait resources).
fn parse_istio(source: &str, doc: usize, value: &Value, out: &mut Discovered) {
    let json = match serde_json::to_value(value) {
        Ok(json) => json,
        Err(e) => {
            let message = format!("document {doc}: not a Kubernetes object: {e}");
            return out.rejected.push(Rejection { source: source.to_string(), key: None, message });
        }
    };
    match crate::istio::read(json, &strait_api::default_trust_domain()) {
        Ok(object) => out.objects.push(Sourced::new(source, object)),
        Err((key, message)) => out.rejected.push(Rejection {
            source: source.to_string(),
            key,
            message: format!("document {doc}: {message}"),
        }),
    }
}

/// A Gateway API HTTPRoute or GRPCRoute; one attached to no Service is a Gateway's and is skipped.
fn parse_gateway(source: &str, doc: usize, value: &Value, out: &mut Discovered) {
    let json = match serde_json::to_value(value) {
        Ok(json) => json,
        Err(e) => {
            let message = format!("document {doc}: not a Kubernetes object: {e}");
            return out.rejected.push(Rejection { source: source.to_string(), key: None, message });
        }
    };
    match crate::gateway::read_document(&json) {
        Ok(Some(route)) => out.objects.push(Sourced::new(source, Object::GatewayRoute(route))),
        Ok(None) => tracing::debug!(source, doc, "a Gateway API route attached to no Service: not the mesh's"),
        Err((key, message)) => out.rejected.push(Rejection {
            source: source.to_string(),
            key,
            message: format!("document {doc}: {message}"),
        }),
    }
}

fn parse_document(source: &str, doc: usize, value: Value, out: &mut Discovered) {
    let reject = |out: &mut Discovered, key: Option<ObjectKey>, message: String| {
        out.rejected.push(Rejection { source: source.to_string(), key, message: format!("document {doc}: {message}") })
    };
    let str_at = |v: &Value, path: &[&str]| -> Option<String> {
        let mut v = v;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str().map(str::to_string)
    };
    let kind = match str_at(&value, &["kind"]) {
        Some(kind) => kind,
        None => {
            return reject(
                out,
                None,
                "kind: is required (TrafficRoute, DestinationPolicy, AuthorizationPolicy or Mesh)".into(),
            )
        }
    };
    let kind = match kind.as_str() {
        "TrafficRoute" => Kind::TrafficRoute,
        "DestinationPolicy" => Kind::DestinationPolicy,
        "AuthorizationPolicy" => Kind::AuthorizationPolicy,
        "Mesh" => return parse_mesh(source, doc, &value, out),
        other => {
            return reject(
                out,
                None,
                format!("kind: {other:?} is not known (TrafficRoute, DestinationPolicy, AuthorizationPolicy or Mesh)"),
            )
        }
    };
    let name = str_at(&value, &["metadata", "name"]).unwrap_or_default();
    // As kubectl does for a namespaced object that names none.
    let namespace = str_at(&value, &["metadata", "namespace"]).unwrap_or_else(|| "default".to_string());
    if name.is_empty() {
        return reject(out, None, format!("{kind}: metadata.name: is required"));
    }
    let key = ObjectKey::new(kind, &namespace, &name);
    if let Err(message) = check_api_version(&value) {
        return reject(out, Some(key), message);
    }
    let Some(spec) = value.get("spec").cloned() else {
        return reject(out, Some(key), "spec: is required".into());
    };
    let object = match kind {
        Kind::TrafficRoute => typed(spec, "spec").map(|spec| Object::TrafficRoute(named(&key, spec))),
        Kind::DestinationPolicy => typed(spec, "spec").map(|spec| Object::DestinationPolicy(named(&key, spec))),
        Kind::AuthorizationPolicy => typed(spec, "spec").map(|spec| Object::AuthorizationPolicy(named(&key, spec))),
        _ => unreachable!("only CRD kinds reach here"),
    };
    match object {
        Ok(object) => out.objects.push(Sourced::new(source, object)),
        Err(message) => reject(out, Some(key), message),
    }
}

fn check_api_version(value: &Value) -> Result<(), String> {
    match value.get("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => Ok(()),
        Some(other) => Err(format!("apiVersion: {other:?} is not served (expected {API_VERSION})")),
        None => Err(format!("apiVersion: is required ({API_VERSION})")),
    }
}

fn named<T>(key: &ObjectKey, spec: T) -> strait_api::Named<T> {
    strait_api::Named { name: key.name.clone(), namespace: key.namespace.clone(), spec }
}

/// Deserializes with the path of the failing field in the message, e.g. `spec.http[0].timeout: ...`.
fn typed<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("{prefix}: {inner}")
        } else {
            format!("{prefix}.{path}: {inner}")
        }
    })
}

/// Fields of a Mesh workload that say how `strait local` runs it (`run: [cmd, args...]`, `external: true`):
/// `strait local` reads and validates them; the control plane has no use for them.
pub const LAUNCH_FIELDS: [&str; 2] = ["run", "external"];

fn without_launch_fields(entry: &Value) -> Value {
    let mut entry = entry.clone();
    if let Some(map) = entry.as_mapping_mut() {
        for field in LAUNCH_FIELDS {
            map.remove(field);
        }
    }
    entry
}

/// A `kind: Mesh` document: lists of namespaces, workloads and services, each entry its own object.
fn parse_mesh(source: &str, doc: usize, value: &Value, out: &mut Discovered) {
    let reject = |out: &mut Discovered, key: Option<ObjectKey>, message: String| {
        out.rejected.push(Rejection { source: source.to_string(), key, message: format!("document {doc}: {message}") })
    };
    if let Err(message) = check_api_version(value) {
        return reject(out, None, format!("Mesh: {message}"));
    }
    let Some(spec) = value.get("spec").and_then(Value::as_mapping) else {
        return reject(out, None, "Mesh: spec: is required (a map of namespaces, workloads, services)".into());
    };
    for (field, list) in spec {
        let field = field.as_str().unwrap_or("");
        let kind = match field {
            "namespaces" => Kind::Namespace,
            "workloads" => Kind::Workload,
            "services" => Kind::Service,
            "outboundTrafficPolicy" => {
                let mode = list.get("mode").cloned().unwrap_or(Value::Null);
                let settings = match list.as_mapping().map(|m| m.len()) {
                    Some(1) => typed(mode, "Mesh: spec.outboundTrafficPolicy.mode")
                        .map(|outbound_traffic_policy| MeshSettings { outbound_traffic_policy }),
                    _ => Err("Mesh: spec.outboundTrafficPolicy: expected {mode: ALLOW_ANY or REGISTRY_ONLY}".into()),
                };
                match settings {
                    Ok(settings) => out.objects.push(Sourced::new(source, Object::MeshSettings(settings))),
                    Err(message) => reject(out, Some(ObjectKey::new(Kind::MeshSettings, "", MESH_SETTINGS)), message),
                }
                continue;
            }
            other => {
                reject(
                    out,
                    None,
                    format!(
                        "Mesh: spec.{other}: unknown field (expected namespaces, workloads, services, outboundTrafficPolicy)"
                    ),
                );
                continue;
            }
        };
        let entries = match list {
            Value::Sequence(entries) => entries.as_slice(),
            Value::Null => &[],
            _ => {
                reject(out, None, format!("Mesh: spec.{field}: must be a list"));
                continue;
            }
        };
        for (i, entry) in entries.iter().enumerate() {
            let name = entry.get("name").and_then(Value::as_str).unwrap_or_default();
            let namespace = entry.get("namespace").and_then(Value::as_str).unwrap_or_default();
            let key = (!name.is_empty()).then(|| ObjectKey::new(kind, namespace, name));
            let prefix = format!("spec.{field}[{i}]");
            let object = match kind {
                Kind::Namespace => typed(entry.clone(), &prefix).map(Object::Namespace),
                Kind::Workload => typed(without_launch_fields(entry), &prefix).map(Object::Workload),
                _ => typed(entry.clone(), &prefix).map(Object::Service),
            };
            match object {
                Ok(object) => out.objects.push(Sourced::new(source, object)),
                Err(message) => reject(out, key, message),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Discovered {
        let mut d = Discovered::default();
        parse_file("mesh.yaml", text, &mut d);
        d
    }

    #[test]
    fn the_mesh_documents_egress_policy_is_read_and_a_bad_one_refused_by_field() {
        let d = parse(
            "apiVersion: strait.dev/v1alpha1\nkind: Mesh\nspec:\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
        );
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let snapshot = crate::model::Snapshot::from_objects(d.objects.iter().map(|o| &o.object));
        assert_eq!(snapshot.settings.outbound_traffic_policy, strait_api::OutboundTrafficPolicy::RegistryOnly);
        for (spec, field) in [
            ("{mode: SOMETIMES}", "spec.outboundTrafficPolicy.mode"),
            ("{mode: ALLOW_ANY, egressProxy: {}}", "spec.outboundTrafficPolicy: expected"),
        ] {
            let d = parse(&format!(
                "apiVersion: strait.dev/v1alpha1\nkind: Mesh\nspec:\n  outboundTrafficPolicy: {spec}\n"
            ));
            assert!(d.objects.is_empty() && d.rejected[0].message.contains(field), "{spec}: {:?}", d.rejected);
        }
    }

    #[test]
    fn reads_istio_documents_that_convert_exactly_and_refuses_the_rest_naming_the_field() {
        let d = parse(
            r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subset: v1}, weight: 90}, {destination: {host: reviews, subset: v2}, weight: 10}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy: {connectionPool: {http: {http1MaxPendingRequests: 50}}}
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: shop}
spec:
  hosts: [ratings]
  http: [{route: [{destination: {host: ratings}}], mirror: {host: shadow}}]
"#,
        );
        let kinds: Vec<ObjectKey> = d.objects.iter().map(|o| o.object.key()).collect();
        assert_eq!(
            kinds,
            [
                ObjectKey::new(Kind::TrafficRoute, "shop", "reviews"),
                ObjectKey::new(Kind::DestinationPolicy, "shop", "reviews")
            ]
        );
        assert_eq!(d.rejected.len(), 1, "{:?}", d.rejected);
        let rejected = &d.rejected[0];
        assert_eq!(rejected.key, Some(ObjectKey::new(Kind::TrafficRoute, "shop", "ratings")));
        assert!(rejected.message.contains("spec.http[0].mirror"), "{}", rejected.message);
    }

    #[test]
    fn reads_crds_and_mesh_documents() {
        let d = parse(
            r#"
apiVersion: strait.dev/v1alpha1
kind: Mesh
metadata: {name: local}
spec:
  namespaces: [{name: shop, mtlsMode: PERMISSIVE}]
  workloads:
  - {name: reviews-v1, namespace: shop, serviceAccount: reviews, node: node-a, address: 127.0.10.1, labels: {app: reviews}}
  services:
  - {name: reviews, namespace: shop, addresses: [127.0.20.1], ports: [{name: http, port: 9080}], selector: {app: reviews}}
---
apiVersion: strait.dev/v1alpha1
kind: TrafficRoute
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}}]}]
"#,
        );
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let keys: Vec<String> = d.objects.iter().map(|o| o.object.key().to_string()).collect();
        assert_eq!(
            keys,
            ["Namespace shop", "Workload shop/reviews-v1", "Service shop/reviews", "TrafficRoute shop/reviews"]
        );
    }

    #[test]
    fn how_strait_local_runs_a_workload_is_left_to_it() {
        let d = parse(
            r#"
apiVersion: strait.dev/v1alpha1
kind: Mesh
spec:
  workloads:
  - {name: api, namespace: shop, node: n, address: 127.0.10.1, run: [./api, --port, "9000"]}
  - {name: db, namespace: shop, node: n, address: 127.0.10.2, external: true}
  - {name: typo, namespace: shop, node: n, address: 127.0.10.3, runn: [x]}
"#,
        );
        let keys: Vec<String> = d.objects.iter().map(|o| o.object.key().to_string()).collect();
        assert_eq!(keys, ["Workload shop/api", "Workload shop/db"]);
        assert_eq!(d.rejected.len(), 1, "{:?}", d.rejected);
        assert!(d.rejected[0].message.contains("runn"), "{}", d.rejected[0].message);
    }

    #[test]
    fn errors_name_the_file_document_object_and_field() {
        let d = parse(
            r#"
apiVersion: strait.dev/v1alpha1
kind: TrafficRoute
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews, subzet: v1}}]}]
---
apiVersion: strait.dev/v1alpha1
kind: Mesh
spec:
  workloads:
  - {name: ok, namespace: shop, node: n, address: 10.0.0.1}
  - {name: bad, namespace: shop, node: n, address: not-an-ip}
"#,
        );
        assert_eq!(d.objects.len(), 1, "the good workload still flows");
        let messages: Vec<String> = d.rejected.iter().map(ToString::to_string).collect();
        assert!(messages[0].starts_with("mesh.yaml: TrafficRoute shop/reviews: document 1: spec.http[0].route[0].destination.subzet: unknown field `subzet`"), "{messages:?}");
        assert!(
            messages[1].starts_with("mesh.yaml: Workload shop/bad: document 2: spec.workloads[1].address: "),
            "{messages:?}"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::admit::Admission;

        /// YAML scalars around every bound, written as a user might.
        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9]{1,22}(\\.[0-9]{1,3})?(ms|s|m|h)",
                "-?[0-9]{1,21}(\\.[0-9]{1,3})?(e[0-9]{1,3})?",
                prop::sample::select(&[".nan", ".inf", "-.inf", "null", "~", "[]", "{}", "\"\"", "yes"][..])
                    .prop_map(str::to_string),
                // Quoted: a bare `*` or `&` is YAML syntax, and a syntax error drops the whole file by design.
                "[a-z0-9*/.:()-]{0,12}".prop_map(|s| format!("{s:?}")),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Whatever a file holds, the provider and admission answer with objects and problems, never a panic.
            #[test]
            fn arbitrary_files_never_panic(text in prop_oneof![any::<String>(), "(kind: (TrafficRoute|Mesh)\n|apiVersion: strait.dev/v1alpha1\n|spec: |[-{}\\[\\]:,\"a-z0-9 \n.*&!|>]){0,12}"]) {
                let mut discovered = Discovered::default();
                parse_file("fuzz.yaml", &text, &mut discovered);
                let _ = Admission::new("cluster.local").admit(&discovered);
            }

            /// Out-of-range values anywhere a resource has a number or a duration: refused naming a field under
            /// `spec`, or accepted; the other objects of the round are admitted either way.
            #[test]
            fn resources_with_arbitrary_values_are_admitted_or_refused_by_field(
                values in prop::collection::vec(scalar(), 12),
            ) {
                let v = |i: usize| values[i].as_str();
                let text = format!(
                    "apiVersion: strait.dev/v1alpha1\nkind: TrafficRoute\nmetadata: {{name: fuzz, namespace: shop}}\nspec:\n  \
                     hosts: [reviews]\n  http:\n  - timeout: {}\n    retries: {{attempts: {}, perTryTimeout: {}}}\n    \
                     fault: {{delay: {{fixedDelay: {}, percentage: {}}}, abort: {{httpStatus: {}, percentage: {}}}}}\n    \
                     route: [{{destination: {{host: reviews, port: {}}}, weight: {}}}]\n---\n\
                     apiVersion: strait.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {{name: fuzz, namespace: shop}}\n\
                     spec: {{host: other, outlierDetection: {{interval: {}, baseEjectionTime: {}, consecutive5xxErrors: {}}}}}\n---\n\
                     apiVersion: strait.dev/v1alpha1\nkind: DestinationPolicy\nmetadata: {{name: reviews, namespace: shop}}\n\
                     spec: {{host: reviews}}\n",
                    v(0), v(1), v(2), v(3), v(4), v(5), v(6), v(7), v(8), v(9), v(10), v(11)
                );
                let mut discovered = Discovered::default();
                parse_file("fuzz.yaml", &text, &mut discovered);
                let out = Admission::new("cluster.local").admit(&discovered);
                // An integer beyond u64 is not a YAML value serde_yaml can hold: the document reads as unreadable
                // and the file's objects keep their last good versions, as for a syntax error. Still no panic.
                if out.problems.iter().any(|p| p.contains("not valid YAML")) {
                    return Ok(());
                }
                prop_assert!(out.snapshot.destination_policies.iter().any(|d| d.name == "reviews"), "{:?}", out.problems);
                for problem in &out.problems {
                    prop_assert!(problem.contains(": spec.") || problem.contains(": spec:"), "{problem}");
                }
            }
        }
    }

    #[test]
    fn a_syntax_error_rejects_the_whole_file() {
        let d = parse("apiVersion: strait.dev/v1alpha1\nkind: TrafficRoute\n  metadata: [\n");
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(d.rejected[0].key, None);
    }
}
