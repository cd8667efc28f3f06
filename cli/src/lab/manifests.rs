//! The core/v1 objects the lab writes as manifests, where in a cluster kubelets and the
//! scheduler would make them: Node objects and Bindings (JSON, which is YAML).

use serde_json::{Value, json};

/// A Node object.
pub fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

/// The Binding of pod `namespace/name` (`key`) to `node`.
pub fn binding(key: &str, node: &str) -> Value {
    let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
    json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    })
}

/// One document of a manifest file: `---` and the object.
pub fn document(object: &Value) -> String {
    format!("---\n{object}\n")
}
