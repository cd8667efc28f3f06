//! The planner: World → Plan.
//!
//! Pure: no Kubernetes client, gRPC, netlink, clock or randomness; the same [`World`]
//! (in any order) gives the same [`Plan`]. Total: any input, however inconsistent, gives a
//! Plan, with what could not be honoured explained in conditions.
//!
//! For each NetworkService it decides who is admitted ([`admission`]), hands out node
//! prefixes and member addresses ([`ipam`]), and from that derives what every node must
//! hold: one WireGuard interface per service with its peers, one veth per local member,
//! and the routes of the service's own routing table.
//!
//! Guarantees:
//! * no address is used twice within a service; every member's address lies in its node's
//!   prefix, which lies in the service's pool (clusterPrefix, else cidr);
//! * a node holds a service only if it hosts admitted members of it; its peers are the
//!   other nodes hosting admitted members and the admitted external hosts;
//! * allocations recorded in statuses are kept while their owners exist;
//! * a node whose state did not change keeps its version.

pub mod admission;
pub mod ipam;
pub mod key;
pub mod names;
pub mod selector;
mod service;
mod status;
pub mod world;

use std::collections::{BTreeMap, BTreeSet};

use wireway_crds::{AdmissionStatus, EndpointStatus, NetworkServiceStatus};
use wireway_proto::NodeState;

pub use key::ObjectKey;
pub use world::{Labels, Namespace, Node, Pod, World};

/// What the planner decided: a desired state per node and a status per object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Desired state of every node of the World and every node hosting members; a node
    /// with nothing to hold gets an empty state, so its agent removes what it made.
    pub nodes: BTreeMap<String, NodeState>,
    /// Nodes whose state differs from the previous plan's (the ones to push to).
    pub changed_nodes: BTreeSet<String>,
    /// Status of every NetworkService.
    pub network_services: BTreeMap<ObjectKey, NetworkServiceStatus>,
    /// Status of every Endpoint.
    pub endpoints: BTreeMap<ObjectKey, EndpointStatus>,
    /// Status of every Admission.
    pub admissions: BTreeMap<ObjectKey, AdmissionStatus>,
}

/// Plans `world`. `previous` is the last plan, whose node versions are carried on.
pub fn plan(world: &World, previous: Option<&Plan>) -> Plan {
    let mut plan = service::plan_services(world);
    for (name, state) in &mut plan.nodes {
        let before = previous.and_then(|p| p.nodes.get(name));
        let seen = world
            .nodes
            .iter()
            .find(|n| &n.name == name)
            .map_or(0, |n| n.seen_version);
        match before {
            Some(before) if before.services == state.services => state.version = before.version,
            _ => {
                state.version = before.map_or(0, |b| b.version).max(seen) + 1;
                plan.changed_nodes.insert(name.clone());
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests;
