//! Publishes the mesh root certificate (never the key) in a ConfigMap, so node proxies can verify the control
//! plane before they hold any certificate of their own. Written at every start, so a rotated CA is picked up.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};

/// The ConfigMap key the node-proxy DaemonSet mounts.
pub const ROOT_KEY: &str = "root.pem";

#[derive(Debug, thiserror::Error)]
#[error("publishing the mesh root in ConfigMap {namespace}/{name}: {source}")]
pub struct PublishError {
    namespace: String,
    name: String,
    source: Box<kube::Error>,
}

/// Creates or updates `namespace/name` with `root.pem` = `root_pem` (server-side apply: idempotent, and no
/// read-modify-write race between control-plane replicas).
pub async fn publish(client: kube::Client, namespace: &str, name: &str, root_pem: &str) -> Result<(), PublishError> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/part-of".to_string(), "strait".to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(ROOT_KEY.to_string(), root_pem.to_string())])),
        ..Default::default()
    };
    let params = PatchParams::apply("strait-control").force();
    api.patch(name, &params, &Patch::Apply(&config_map)).await.map_err(|source| PublishError {
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    })?;
    tracing::info!(namespace, name, "published the mesh root certificate");
    Ok(())
}
