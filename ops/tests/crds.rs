//! `strait check --kubeconfig`'s CRD checks against the fake Kubernetes API server, through a real kubeconfig
//! file and the real kube client.

use strait_ops::check::Outcome;
use strait_tests::fake_kube::FakeKube;

fn kubeconfig(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{url}\"}}\n\
         users:\n- name: me\n  user: {{}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: me}}\n\
         current-context: fake\n"
    );
    std::fs::write(&path, text).expect("write the kubeconfig");
    path
}

#[tokio::test]
async fn crds_must_be_installed_at_this_releases_versions_and_schemas() {
    let kube = FakeKube::start().await.expect("the fake API server");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = kubeconfig(dir.path(), &kube.url());

    let checks = strait_ops::crds::checks(Some(&config)).await;
    assert_eq!(checks.len(), 3, "{checks:?}");
    assert!(checks.iter().all(|c| c.outcome == Outcome::Fail && c.detail == "not installed"), "{checks:?}");
    assert!(checks[0].hint.as_deref().unwrap_or("").contains("kubectl apply -f deploy/crds/"), "{checks:?}");

    for crd in strait_api::crd::definitions() {
        kube.apply(serde_json::to_value(&crd).expect("a CRD as JSON")).expect("install the CRD");
    }
    let checks = strait_ops::crds::checks(Some(&config)).await;
    assert!(checks.iter().all(|c| c.outcome == Outcome::Pass), "{checks:?}");

    // An older release's CRD: a schema without one of today's fields.
    let mut old = serde_json::to_value(&strait_api::crd::definitions()[0]).expect("JSON");
    let properties = &mut old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    let removed = properties.as_object_mut().and_then(|p| p.remove("http"));
    assert!(removed.is_some(), "the TrafficRoute schema has spec.http");
    kube.apply(old).expect("replace the CRD");
    let checks = strait_ops::crds::checks(Some(&config)).await;
    assert_eq!(checks[0].outcome, Outcome::Fail, "{checks:?}");
    assert!(checks[0].detail.contains("schema differs"), "{checks:?}");
    assert_eq!(checks[1].outcome, Outcome::Pass, "{checks:?}");
}
