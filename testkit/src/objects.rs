//! Kubernetes objects for tests on the [`ControlPlane`](crate::ControlPlane), as JSON
//! (which `kubectl apply` reads as YAML): namespaces, service accounts, role bindings,
//! and the objects of the repository's own `config/` files.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::unique_name;

/// The repository's root (where `config/` and `crds/` are).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The objects of a YAML file of the repository (`config/rbac/operator.yaml`) whose kind
/// is one of `kinds` (every object when `kinds` is empty).
pub fn config(file: &str, kinds: &[&str]) -> Vec<Value> {
    let path = repo().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
    text.split("\n---")
        .filter(|doc| {
            doc.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .map(|doc| {
            serde_saphyr::from_str::<Value>(doc)
                .unwrap_or_else(|e| panic!("{}: a document does not parse: {e}", path.display()))
        })
        .filter(|o| kinds.is_empty() || kinds.contains(&o["kind"].as_str().unwrap_or_default()))
        .collect()
}

/// A Namespace.
pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A ServiceAccount.
pub fn service_account(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": name, "namespace": namespace}})
}

/// A binding of ClusterRole `role` to a service account: cluster-wide, or in `scope`'s
/// namespace only.
pub fn binding(role: &str, namespace: &str, account: &str, scope: Option<&str>) -> Value {
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
