//! The test control plane harness: it starts, serves kubectl and kube clients, compacts,
//! and leaves nothing behind when dropped.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly by panicking

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use wireway_testkit::ControlPlane;

#[tokio::test]
async fn starts_serves_compacts_and_leaves_nothing_behind() {
    let Some(control_plane) =
        ControlPlane::start("starts_serves_compacts_and_leaves_nothing_behind")
    else {
        return;
    };
    let dir = control_plane.dir().to_owned();
    assert!(control_plane.kubeconfig().starts_with(&dir));

    let namespaces: Api<Namespace> = Api::all(control_plane.client().await);
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .expect("the API server lists namespaces")
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(names.iter().any(|n| n == "kube-system"), "{names:?}");

    let out = control_plane
        .kubectl(&["get", "namespace", "default", "-o", "name"])
        .expect("kubectl works with the admin kubeconfig");
    assert_eq!(out.trim(), "namespace/default");

    assert!(control_plane.compact() > 0);

    drop(control_plane);
    assert!(!dir.exists(), "{} is left behind", dir.display());
}
