//! What the operator shows of itself and of every object, without a cluster: the answer of
//! its status API (on the gRPC port, for administrators only: it names every tenant's
//! members), which `wireway status` prints like `kubectl get`.

use serde::{Deserialize, Serialize};
use wireway_crds::{Admission, Endpoint, NetworkService};

use crate::source::Problem;

/// Everything the status API returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Whether the operator serves node states (its sources have synced).
    pub ready: bool,
    /// What it waits for, when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Number of plans made since start; grows with every change the operator acts on.
    pub plans: u64,
    /// Problems of the sources: files or objects not in effect, with where they are.
    #[serde(default)]
    pub problems: Vec<Problem>,
    /// Every node, by name.
    #[serde(default)]
    pub nodes: Vec<NodeSummary>,
    /// NetworkServices with their status.
    #[serde(default)]
    pub network_services: Vec<NetworkService>,
    /// Endpoints with their status.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Admissions with their status.
    #[serde(default)]
    pub admissions: Vec<Admission>,
}

/// One node as the operator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    /// Node name.
    pub name: String,
    /// Whether its agent has a stream open now.
    pub connected: bool,
    /// The agent's WireGuard implementation: `kernel` or `userspace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The node's WireGuard public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Where other nodes reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
    /// Version of the state planned for it.
    pub desired_version: u64,
    /// Version its agent last reported applied.
    pub applied_version: u64,
    /// When that report arrived (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at_ms: Option<u64>,
    /// The network services it carries.
    #[serde(default)]
    pub services: Vec<String>,
    /// What its agent could not apply in its last pass.
    #[serde(default)]
    pub problems: Vec<String>,
    /// WireGuard peers on its interfaces, in its agent's last report.
    #[serde(default)]
    pub peers: u32,
    /// Of those, the ones with a handshake in the last 180 s. WireGuard handshakes only
    /// when there is traffic: an idle peer is not counted, and is not a fault.
    #[serde(default)]
    pub peers_active: u32,
    /// Errors its agent met since it started, by category.
    #[serde(default)]
    pub errors: Vec<ErrorSummary>,
}

/// The errors of one category on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorSummary {
    /// A fixed category, such as `wireguard`, `link`, `route` or `netns`.
    pub category: String,
    /// How many times it happened.
    pub count: u64,
    /// The last one's message.
    pub last_message: String,
}
