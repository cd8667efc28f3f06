//! In a cluster, the agent publishes its node's WireGuard public key and underlay address
//! as `wireway.dev/` annotations on its own Node, so an operator that restarts knows
//! every node's key before the agents reconnect, and never serves a state without a
//! peer only because an agent has not said hello yet.
//!
//! The write is a server-side apply of those two annotations alone (field manager
//! `wireway-agent`), made only when they differ. An admission policy
//! (`config/rbac/agent-node-policy.yaml`) lets an agent change nothing else, and only on
//! its own Node.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use wireway_crds::annotations::{PUBLIC_KEY, UNDERLAY_ADDRESS};
use wireway_runtime::backoff::Backoff;

/// The field manager of the agent's writes.
pub const FIELD_MANAGER: &str = "wireway-agent";

/// What the agent publishes about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The Node's name.
    pub node: String,
    /// The node's WireGuard public key.
    pub public_key: String,
    /// Where other nodes reach it.
    pub underlay: IpAddr,
}

/// Publishes `facts` on the Node unless it carries them already; true if it wrote.
pub async fn publish(client: &Client, facts: &NodeFacts) -> Result<bool, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let node = api.get(&facts.node).await?;
    let underlay = facts.underlay.to_string();
    let annotations = node.metadata.annotations.unwrap_or_default();
    if annotations.get(PUBLIC_KEY) == Some(&facts.public_key)
        && annotations.get(UNDERLAY_ADDRESS) == Some(&underlay)
    {
        return Ok(false);
    }
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": facts.node,
            "annotations": {PUBLIC_KEY: facts.public_key, UNDERLAY_ADDRESS: underlay},
        },
    });
    api.patch(
        &facts.node,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(true)
}

/// Publishes until it succeeds, backing off from 1 s to 5 min; never gives up (the data
/// plane does not wait for it).
pub async fn keep_publishing(client: Client, facts: NodeFacts) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
    loop {
        match publish(&client, &facts).await {
            Ok(written) => {
                tracing::info!(
                    node = facts.node,
                    written,
                    "the Node carries this node's key and underlay address"
                );
                return;
            }
            Err(e) => {
                let delay = backoff.fail();
                tracing::warn!(node = facts.node, error = %crate::chain(&e), retry_in = ?delay, "cannot annotate the Node");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
