//! The planner: World → Plan.
//!
//! Pure: no Kubernetes client, gRPC, netlink, clock or randomness; the same [`World`]
//! (in any order) gives the same [`Plan`]. Total: any input, however inconsistent, gives a
//! Plan, with what could not be honoured explained in conditions.
//!
//! For each NetworkService it checks the administrator's bounds ([`bounds`]), confines
//! external hosts to the identities their namespace may claim ([`grants`]), decides who
//! is admitted ([`admission`]), hands out node prefixes and member addresses ([`ipam`]),
//! and from that derives what every node that carries the service must hold: one
//! WireGuard interface per service with its peers, and one veth per local member. (The
//! agent derives the routes of the service's own routing table from that.)
//!
//! Where things are: [`world`] is the input and `index` keeps it keyed; `planner` plans
//! incrementally, one target (a NetworkService key) at a time, through the stages of
//! `service` (its decisions in `service::stages`, its outputs in
//! `service::projections`) — or, when only pods changed and the change reaches no
//! further than them, for those pods alone (`service::members`) — after what is decided
//! across services: listen ports and interface names (`planner`), nodes presenting
//! another node's key (`node_keys`), overlapping services sharing a node (`overlaps`);
//! `nodes` completes each node's services (host veth names); [`progress`] turns plans
//! into the statuses in effect while nodes catch up; [`events`] says what changed
//! between two sets of statuses. Helpers: [`admission`] (rules), [`ipam`], [`names`]
//! (interface names), [`selector`] (label selectors), [`status`] (conditions), [`key`].
//!
//! Guarantees:
//! * no address is used twice within a service; every member's address lies in its node's
//!   prefix, which lies in the service's pool (clusterPrefix, else cidr);
//! * a node carries a service only if admitted members of it run there; its peers are the
//!   other carrying nodes and the admitted external hosts;
//! * an external host reaches a node only with an identity its Endpoint's namespace owns
//!   or is granted, and only if admitted;
//! * a service outside the administrator's bounds, or overlapping a service it shares a
//!   node with (the one that was not working first), reaches no node;
//! * a node presenting another node's WireGuard key carries no service;
//! * allocations recorded in statuses are kept while their owners exist;
//! * a node whose state did not change keeps its version.

pub mod admission;
pub mod bounds;
pub mod events;
mod grants;
mod index;
pub mod ipam;
pub mod key;
pub mod names;
mod node_keys;
mod nodes;
mod overlaps;
mod planner;
pub mod progress;
pub mod selector;
mod service;
pub mod status;
pub mod world;

use std::collections::{BTreeMap, BTreeSet};

use wireway_crds::{
    AdmissionStatus, EndpointStatus, IdentityGrantStatus, NetworkServiceStatus, PeerClusterStatus,
};
use wireway_proto::NodeState;

pub use key::ObjectKey;
pub use node_keys::key_length;
pub use planner::{Planner, Round};
pub use progress::Statuses;
pub use world::{
    Bounds, Change, Half, HalfMember, HalfNode, Labels, ListenPorts, MemberDecision, Namespace,
    Node, Peer, PeerSent, Pod, ServiceCidr, World,
};

/// What the planner decided: a desired state per node and a status per object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Desired state of every node of the World and every node carrying a service; a node
    /// with nothing to hold gets an empty state, so its agent removes what it made.
    pub nodes: BTreeMap<String, NodeState>,
    /// Nodes whose state differs from the previous plan's (the ones to push to), and
    /// nodes whose state is gone (no longer in `nodes`).
    pub changed_nodes: BTreeSet<String>,
    /// The last version of each node whose state is gone (deleted, carrying nothing): a
    /// node that comes back under the same name goes on from there, since its agent
    /// applies only versions newer than the one it holds.
    pub retired_versions: BTreeMap<String, u64>,
    /// Status of every NetworkService.
    pub network_services: BTreeMap<ObjectKey, NetworkServiceStatus>,
    /// Status of every Endpoint.
    pub endpoints: BTreeMap<ObjectKey, EndpointStatus>,
    /// Status of every Admission.
    pub admissions: BTreeMap<ObjectKey, AdmissionStatus>,
    /// Status of every IdentityGrant (keys with an empty namespace).
    pub identity_grants: BTreeMap<ObjectKey, IdentityGrantStatus>,
    /// Status of every PeerCluster (keys with an empty namespace).
    pub peer_clusters: BTreeMap<ObjectKey, PeerClusterStatus>,
    /// What to send each peer cluster: by its name, this cluster's half of every service
    /// shared with it.
    pub federation: BTreeMap<String, BTreeMap<ObjectKey, Half>>,
}

/// Plans `world` from scratch. `previous` is the last plan, whose node versions (also of
/// nodes whose state is gone) and host veth names are carried on.
pub fn plan(world: &World, previous: Option<&Plan>) -> Plan {
    Planner::new(world.clone(), previous).plan().clone()
}

#[cfg(test)]
mod tests;
