//! `strait check --kubeconfig`: the CRDs installed in the cluster are the ones this `strait` was built with
//! (same served and storage versions, same schema), so the control plane can read what users apply.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

use crate::check::Check;

const HINT_APPLY: &str = "install this version's CRDs: `kubectl apply -f deploy/crds/` (or `kubectl apply -k deploy/`)";

async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(config)?)
}

pub async fn checks(kubeconfig: Option<&Path>) -> Vec<Check> {
    let client = match client(kubeconfig).await {
        Ok(client) => client,
        Err(e) => {
            return vec![Check::fail(
                "CRDs",
                format!("cannot configure a Kubernetes client: {e:#}"),
                "pass a readable kubeconfig with --kubeconfig",
            )]
        }
    };
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let mut checks = Vec::new();
    for expected in strait_api::crd::definitions() {
        let name = expected.metadata.name.clone().unwrap_or_default();
        let check_name = format!("CRD {name}");
        let installed = match api.get_opt(&name).await {
            Ok(Some(installed)) => installed,
            Ok(None) => {
                checks.push(Check::fail(check_name, "not installed", HINT_APPLY));
                continue;
            }
            Err(e) => {
                checks.push(Check::fail(
                    check_name,
                    format!("cannot read it: {e}"),
                    "the kubeconfig's user needs `get` on customresourcedefinitions.apiextensions.k8s.io",
                ));
                continue;
            }
        };
        checks.push(compare(check_name, &expected, &installed));
    }
    checks
}

/// The installed CRD serves every version this build knows, stores the same one, and has the same schemas.
pub fn compare(name: String, expected: &CustomResourceDefinition, installed: &CustomResourceDefinition) -> Check {
    let storage = |crd: &CustomResourceDefinition| {
        crd.spec.versions.iter().find(|v| v.storage).map(|v| v.name.clone()).unwrap_or_default()
    };
    for version in &expected.spec.versions {
        let Some(found) = installed.spec.versions.iter().find(|v| v.name == version.name) else {
            let have: Vec<&str> = installed.spec.versions.iter().map(|v| v.name.as_str()).collect();
            return Check::fail(
                name,
                format!("version {} missing (installed: {})", version.name, have.join(", ")),
                HINT_APPLY,
            );
        };
        if !found.served {
            return Check::fail(name, format!("version {} is not served", version.name), HINT_APPLY);
        }
        let schema = |v: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion| {
            serde_json::to_value(&v.schema).unwrap_or_default()
        };
        if schema(found) != schema(version) {
            return Check::fail(
                name,
                format!(
                    "version {}'s schema differs from this strait's (an older or newer release's CRD)",
                    version.name
                ),
                HINT_APPLY,
            );
        }
    }
    if storage(installed) != storage(expected) {
        return Check::fail(
            name,
            format!("stores {} where this strait stores {}", storage(installed), storage(expected)),
            HINT_APPLY,
        );
    }
    let versions: Vec<&str> = expected.spec.versions.iter().map(|v| v.name.as_str()).collect();
    Check::pass(name, format!("installed, {} with this release's schema", versions.join(", ")))
}
