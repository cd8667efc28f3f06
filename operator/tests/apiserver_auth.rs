//! Who may do what, against a real API server (the test control plane): the operator's
//! token checks under its real RBAC (config/rbac/operator.yaml), the status permission
//! (config/rbac/status-reader.yaml) as a cluster administrator grants it and as a tenant
//! cannot, and the agent's Node policy (config/rbac/agent-node-policy.yaml) installed in
//! another namespace than wireway-system.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by panicking

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::Client;
use serde_json::{Value, json};
use wireway_crds::manifest::documents;
use wireway_operator::controller::auth::{Limits, TokenReviewer};
use wireway_operator::serve::TokenAuthenticator;
use wireway_testkit::{ControlPlane, unique_name};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl apply -f -` of `objects` (JSON is YAML).
fn apply(cp: &ControlPlane, objects: &[Value]) {
    let text: String = objects.iter().map(|o| format!("---\n{o}\n")).collect();
    let file = cp.dir().join(format!("{}.yaml", unique_name("objects")));
    std::fs::write(&file, text).unwrap();
    cp.kubectl(&["apply", "--server-side", "-f", file.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("kubectl apply: {e}"));
}

/// The objects of a file of config/ whose kind is one of `kinds`.
fn config(file: &str, kinds: &[&str]) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    documents(&text)
        .into_iter()
        .map(|d| d.unwrap().value)
        .filter(|o| kinds.contains(&o["kind"].as_str().unwrap_or_default()))
        .collect()
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn service_account(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": name, "namespace": namespace}})
}

/// A binding of ClusterRole `role` to a service account: cluster-wide, or in `scope`'s
/// namespace only.
fn binding(role: &str, namespace: &str, account: &str, scope: Option<&str>) -> Value {
    let name = unique_name(role);
    let (kind, metadata) = match scope {
        None => ("ClusterRoleBinding", json!({"name": name})),
        Some(ns) => ("RoleBinding", json!({"name": name, "namespace": ns})),
    };
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    })
}

/// A token of a service account (`kubectl create token`), with `args` (audience, bound
/// object).
fn token(cp: &ControlPlane, namespace: &str, account: &str, args: &[&str]) -> String {
    let mut all = vec!["create", "token", account, "-n", namespace];
    all.extend(args);
    cp.kubectl(&all)
        .unwrap_or_else(|e| panic!("kubectl create token: {e}"))
        .trim()
        .to_owned()
}

/// A kubeconfig that authenticates with `token` alone (the admin's also carries a client
/// certificate, which the API server would prefer).
fn kubeconfig_for(cp: &ControlPlane, token: &str) -> PathBuf {
    let admin: Value = serde_json::from_str(
        &cp.kubectl(&["config", "view", "--raw", "--minify", "-o", "json"])
            .unwrap(),
    )
    .unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    });
    let path = cp
        .dir()
        .join(format!("{}.kubeconfig", unique_name("token")));
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

async fn client_for(kubeconfig: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// `kubectl ARGS` as the holder of `kubeconfig`.
fn kubectl_as(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = cp
        .kubectl_command()
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

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
    apply(cp, &objects);

    let operator = token(cp, &system, "wireway-operator", &[]);
    let client = client_for(&kubeconfig_for(cp, &operator)).await;
    // Refusals are not remembered here: RBAC may take a moment to reach the authorizer.
    let limits = Limits {
        refused_for: Duration::ZERO,
        ..Limits::default()
    };
    let reviewer = TokenReviewer::with_limits(client, &system, limits);
    let for_operator = ["--audience", "wireway-operator"];

    let ops = token(cp, &system, "ops", &for_operator);
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

    let nosy = token(cp, &tenant, "nosy", &for_operator);
    let refused = reviewer.status_reader(&nosy, None).await.unwrap_err();
    assert_eq!(
        refused.status().code(),
        tonic::Code::PermissionDenied,
        "{refused}"
    );

    let for_the_api_server = token(cp, &system, "ops", &[]);
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
    apply(cp, &objects);
    let bound = token(
        cp,
        &elsewhere,
        "wireway-agent",
        &["--bound-object-kind", "Pod", "--bound-object-name", "agent"],
    );
    let agent = kubeconfig_for(cp, &bound);
    let annotate = |node: &str, key: &str| {
        kubectl_as(
            cp,
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
    let label = kubectl_as(cp, &agent, &["label", "node", &a, "evil=yes"]).unwrap_err();
    assert!(label.contains("may not change a Node's labels"), "{label}");
}
