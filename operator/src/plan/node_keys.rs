//! Nodes that present another node's WireGuard public key.
//!
//! WireGuard tells peers apart by public key alone: if two nodes presented one key, every
//! other node would hold one peer for both, and whichever was written last would take the
//! other's traffic (its allowed IPs, its endpoint). A node only needs to copy another's
//! public key (it is published) to cut that node off. So of the nodes presenting one key,
//! one keeps it, and the others carry no service until their key is their own.
//!
//! Which one keeps it must never be decided by who spoke last: the node recorded with the
//! key keeps it (the previous plan served it as a peer with this key), else the node
//! created first, else the first by name.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wireway_proto::NodeState;

use super::index::Index;

/// The nodes refused for presenting another node's key: each, with the node that keeps
/// the key.
pub type Refused = BTreeMap<String, String>;

/// Decides, for every key several nodes present, which node keeps it.
pub fn refused(index: &Index, previous: &BTreeMap<String, NodeState>) -> Refused {
    let mut refused = Refused::new();
    for (key, nodes) in index.shared_keys() {
        let created = |node: &str| index.nodes.get(node).and_then(|n| n.created.clone());
        let keeper = nodes.iter().min_by_key(|node| {
            let recorded = recorded_key(previous, node) == Some(key);
            // Recorded first; then the known creation times, oldest first; then the name.
            let created: Option<Time> = created(node);
            (!recorded, created.is_none(), created, (*node).clone())
        });
        let Some(keeper) = keeper else { continue };
        for node in nodes.iter().filter(|n| *n != keeper) {
            refused.insert(node.clone(), keeper.clone());
        }
    }
    refused
}

/// The key `node` was served with as a peer in `previous`: found in the state of another
/// node carrying one of its services.
fn recorded_key<'p>(previous: &'p BTreeMap<String, NodeState>, node: &str) -> Option<&'p str> {
    let own = previous.get(node)?;
    own.services.iter().find_map(|service| {
        service.peers.iter().find_map(|peer| {
            let other = previous.get(&peer.name)?;
            let shared = other.services.iter().find(|s| s.name == service.name)?;
            let me = shared.peers.iter().find(|p| p.name == node)?;
            Some(me.public_key.as_str())
        })
    })
}

/// How many bytes a WireGuard public key written in standard base64 holds (a key holds
/// 32), or `None` when it is not base64.
pub fn key_length(key: &str) -> Option<usize> {
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .ok()
        .map(|bytes| bytes.len())
}
