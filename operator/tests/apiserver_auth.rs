//! Who may do what, against a real API server (the test control plane): the operator's
//! token checks under its real RBAC (config/rbac/operator.yaml), the status permission
//! (config/rbac/status-reader.yaml) as a cluster administrator grants it and as a tenant
//! cannot, and the agent's Node policy (config/rbac/agent-node-policy.yaml) installed in
//! another namespace than wireway-system.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by panicking

use std::time::{Duration, Instant};

use serde_json::json;
use wireway_operator::controller::auth::{Limits, TokenReviewer};
use wireway_operator::serve::TokenAuthenticator;
use wireway_testkit::objects::{binding, config, namespace, service_account};
use wireway_testkit::{ControlPlane, client_for, unique_name};

/// The operator, as its own service account under config/rbac/operator.yaml's ClusterRole,
/// reviews tokens: an administrator's (bound cluster-wide to wireway-status-reader) reads
/// the status; a tenant's, bound to the same role in its own namespace only, does not; a
/// token for the API server's audience proves nothing.
#[tokio::test]
async fn the_status_permission_is_cluster_wide_and_a_tenant_cannot_have_it() {
    let Some(cp) =
        ControlPlane::shared("the_status_permission_is_cluster_wide_and_a_tenant_cannot_have_it")
    else {
        return;
    };
    let system = unique_name("wireway");
    let tenant = unique_name("tenant");
    let mut objects = vec![namespace(&system), namespace(&tenant)];
    objects.extend(config("config/rbac/operator.yaml", &["ClusterRole"]));
    objects.extend(config("config/rbac/status-reader.yaml", &["ClusterRole"]));
    objects.extend([
        service_account(&system, "wireway-operator"),
        binding("wireway-operator", &system, "wireway-operator", None),
        service_account(&system, "ops"),
        binding("wireway-status-reader", &system, "ops", None),
        service_account(&tenant, "nosy"),
        binding("wireway-status-reader", &tenant, "nosy", Some(&tenant)),
    ]);
    cp.apply(&objects);

    let operator = cp.token(&system, "wireway-operator", &[]);
    let client = client_for(&cp.kubeconfig_for(&operator, None)).await;
    // Refusals are not remembered here: RBAC may take a moment to reach the authorizer.
    let limits = Limits {
        refused_for: Duration::ZERO,
        ..Limits::default()
    };
    let reviewer = TokenReviewer::with_limits(client, &system, limits);
    let for_operator = ["--audience", "wireway-operator"];

    let ops = cp.token(&system, "ops", &for_operator);
    let deadline = Instant::now() + Duration::from_secs(30);
    let reader = loop {
        match reviewer.status_reader(&ops, None).await {
            Ok(reader) => break reader,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the administrator's token is refused: {e}"),
        }
    };
    assert_eq!(reader, format!("system:serviceaccount:{system}:ops"));

    let nosy = cp.token(&tenant, "nosy", &for_operator);
    let refused = reviewer.status_reader(&nosy, None).await.unwrap_err();
    assert_eq!(
        refused.status().code(),
        tonic::Code::PermissionDenied,
        "{refused}"
    );

    let for_the_api_server = cp.token(&system, "ops", &[]);
    let refused = reviewer
        .status_reader(&for_the_api_server, None)
        .await
        .unwrap_err();
    assert_eq!(
        refused.status().code(),
        tonic::Code::Unauthenticated,
        "{refused}"
    );
}

/// The agent's Node policy restricts the wireway-agent service account of whatever
/// namespace Wireway is installed in: with a token bound to a pod on node A it may set
/// wireway.dev/ annotations on node A, and nothing on node B, nor a label on A.
#[tokio::test]
async fn the_node_policy_holds_in_any_installation_namespace() {
    let Some(cp) = ControlPlane::shared("the_node_policy_holds_in_any_installation_namespace")
    else {
        return;
    };
    let elsewhere = unique_name("elsewhere");
    let (a, b) = (unique_name("node-a"), unique_name("node-b"));
    let node = |name: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}});
    let mut objects = vec![namespace(&elsewhere), node(&a), node(&b)];
    objects.extend(config("config/rbac/agent.yaml", &["ClusterRole"]));
    objects.extend(config(
        "config/rbac/agent-node-policy.yaml",
        &[
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ],
    ));
    objects.extend([
        service_account(&elsewhere, "wireway-agent"),
        binding("wireway-agent", &elsewhere, "wireway-agent", None),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "agent", "namespace": elsewhere},
               "spec": {"nodeName": a, "serviceAccountName": "wireway-agent",
                        "containers": [{"name": "agent", "image": "agent"}]}}),
    ]);
    cp.apply(&objects);
    let bound = cp.token(
        &elsewhere,
        "wireway-agent",
        &["--bound-object-kind", "Pod", "--bound-object-name", "agent"],
    );
    let agent = cp.kubeconfig_for(&bound, None);
    let annotate = |node: &str, key: &str| {
        cp.kubectl_as(
            &agent,
            &["annotate", "node", node, "--overwrite", &format!("{key}=x")],
        )
    };
    // The policy and RBAC take a moment to take effect: until node B is refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        match annotate(&b, "wireway.dev/public-key") {
            Err(e) if e.contains(&format!("may not modify Node {b}")) => break e,
            other if Instant::now() < deadline => {
                eprintln!("not yet: {other:?}");
                std::thread::sleep(Duration::from_millis(500));
            }
            other => panic!("node B must be refused to an agent bound to node A: {other:?}"),
        }
    };
    assert!(refused.contains(&b), "{refused}");
    annotate(&a, "wireway.dev/public-key").expect("its own node's wireway.dev/ annotation");
    let label = cp
        .kubectl_as(&agent, &["label", "node", &a, "evil=yes"])
        .unwrap_err();
    assert!(label.contains("may not change a Node's labels"), "{label}");
}
