//! Fixtures shared by the operator's tests, each defined once: WireGuard keys, agents'
//! hellos, the planner's pods, and the service `red` as manifests and as API objects.
//!
//! Compiled for the crate's own tests and, through the `testing` feature (which the
//! crate's dev-dependency on itself turns on), for its integration tests; never for the
//! binary.

#![allow(clippy::expect_used)] // a fixture that cannot be built fails its test loudly

use kube::api::DynamicObject;
use serde_json::json;
use wireway_proto::{AgentHello, WireGuardBackend};

use crate::plan::{Labels, Pod};

/// A WireGuard public key (32 bytes, base64).
pub const KEY_A: &str = "dHEACKy9pHe/WJDy6Je75HLyxPWUcAOcyVFPe3AIlTg=";
/// Another WireGuard public key.
pub const KEY_B: &str = "nYawvXhOHue5ouGv9rGhEK6LbnT80hcmihwil+S9b1E=";

/// The hello of `node`'s agent: key [`KEY_A`], underlay 192.0.2.1, userspace WireGuard,
/// nothing applied yet.
pub fn hello(node: &str) -> AgentHello {
    AgentHello {
        node: node.into(),
        public_key: KEY_A.into(),
        underlay_address: "192.0.2.1".into(),
        backend: WireGuardBackend::WireguardBackendUserspace.into(),
        ..AgentHello::default()
    }
}

/// Labels from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Pods as the planner sees them, built like a sentence:
/// `Pod::test("red", "db-0").on("node-1").labelled(&[("net", "red")])`.
impl Pod {
    /// Pod `name` of `namespace`: not scheduled, no labels, service account `default`.
    pub fn test(namespace: &str, name: &str) -> Self {
        Pod {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{namespace}-{name}"),
            service_account: "default".into(),
            ..Pod::default()
        }
    }

    /// Scheduled on `node`.
    pub fn on(mut self, node: &str) -> Self {
        self.node = Some(node.into());
        self
    }

    /// With these labels (instead of its others).
    pub fn labelled(mut self, pairs: &[(&str, &str)]) -> Self {
        self.labels = labels(pairs);
        self
    }

    /// Running as service account `account`.
    pub fn account(mut self, account: &str) -> Self {
        self.service_account = account.into();
        self
    }
}

/// The service `red` as a user writes it.
pub mod manifests {
    /// The NetworkService red/red (10.100.0.0/16, a /24 per node) and the Endpoint
    /// red/members attaching the pods of red labelled `net: red`.
    pub const RED: &str = "\
apiVersion: wireway.dev/v1alpha1
kind: NetworkService
metadata: {name: red, namespace: red}
spec: {cidr: 10.100.0.0/16, nodePrefixLength: 24}
---
apiVersion: wireway.dev/v1alpha1
kind: Endpoint
metadata: {name: members, namespace: red}
spec:
  networkService: {name: red}
  podSelector: {matchLabels: {net: red}}
";

    /// A pod of red, labelled `net: red`, on `node`.
    pub fn pod(name: &str, node: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: red, labels: {{net: red}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: app, image: busybox}}]}}\n"
        )
    }
}

/// Objects as the API server returns them.
pub mod objects {
    use super::*;

    /// Pod `name` of `namespace` on node-a, labelled `net: red`, with UID `uid-<name>`.
    pub fn pod(namespace: &str, name: &str) -> DynamicObject {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "labels": {"net": "red"}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
        });
        serde_json::from_value(pod).expect("a Pod")
    }
}
