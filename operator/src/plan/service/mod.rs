//! Planning one target (a NetworkService key) as a pipeline of named stages.
//!
//! [`plan_target`] parses the spec and checks it against the administrator's bounds,
//! gathers the workloads the target's Endpoints attach, confines external hosts to the
//! identities their namespace may claim, decides admission, leaves out nodes presenting
//! another node's key, settles interface-name conflicts, places external hosts, allocates
//! node prefixes and member addresses, and keeps the nodes left with an addressed member
//! (the carrying nodes). `dns` settles the zone of the service's names and projects the
//! members' records. `stages` holds the other decisions; `projections` derives the
//! outputs from them and decides nothing: the service's, Endpoints' and Admissions'
//! statuses, and each carrying node's share of its state.

mod dns;
mod federation;
mod members;
mod projections;
mod stages;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use wireway_crds::{
    AdmissionStatus, Cidr, CidrError, Endpoint, EndpointStatus, NetworkService,
    NetworkServiceStatus, SpiffeId,
};
use wireway_proto::ServiceState;

use super::ObjectKey;
use super::admission::{InvalidRule, Policy};
use super::index::Index;
use super::node_keys::Refused;
use super::world::{Half, Pod};
pub use members::{ChangedPods, MemberEdit, apply_members, plan_members};
pub use stages::parse_spec;
/// WireGuard's overhead over the underlay: 80 bytes covers an IPv6 outer header.
pub const WIREGUARD_OVERHEAD: u32 = 80;
/// MTU assumed for an underlay that did not report its own.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// A NetworkService's spec, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    cidr: Cidr,
    pool: Cidr,
    node_prefix_len: u8,
    mtu: Option<u32>,
    /// The port spec.listenPort pins, if any.
    pub listen_port: Option<u16>,
}

/// Why a NetworkService's spec cannot be planned (the API server should have refused
/// it). The text is the whole message of the service's InvalidSpec condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// spec.cidr is not a CIDR prefix.
    #[error("spec.cidr: {0}")]
    Cidr(CidrError),
    /// spec.clusterPrefix is not a CIDR prefix.
    #[error("spec.clusterPrefix: {0}")]
    ClusterPrefix(CidrError),
    /// This cluster's slice lies outside the service's cidr.
    #[error("spec.clusterPrefix {pool} lies outside spec.cidr {cidr}")]
    SliceOutside {
        /// The slice.
        pool: Cidr,
        /// The service's cidr.
        cidr: Cidr,
    },
    /// Node prefixes would not fit in the pool.
    #[error("spec.nodePrefixLength {length} must lie between {min} and {max}")]
    NodePrefixLength {
        /// The length asked for.
        length: i32,
        /// The pool's prefix length.
        min: u8,
        /// The address family's bits.
        max: u8,
    },
}

/// What was assigned to a service across all services: its listen port and WireGuard
/// interface name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// The port, or why the pinned one cannot be had.
    pub listen_port: Result<u16, String>,
    /// The interface name.
    pub interface: String,
}

/// The plan of one target.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TargetPlan {
    /// The service's status; `None` when the service does not exist.
    pub service: Option<NetworkServiceStatus>,
    /// Status of every Endpoint naming the target.
    pub endpoints: BTreeMap<ObjectKey, EndpointStatus>,
    /// Status of every Admission governing the target.
    pub admissions: BTreeMap<ObjectKey, AdmissionStatus>,
    /// The service's share of each carrying node's state. Host veth names are left
    /// empty: they are unique per node, so the node assembly picks them.
    pub nodes: BTreeMap<String, ServiceState>,
    /// Every node an admitted pod of the target runs on, carrying it or left out (for
    /// presenting another node's key, or for an interface name another service's
    /// Endpoint gives the pod, which that one may lose for its node's key): the target is
    /// planned again when one of them is refused for its key or no longer is.
    pub pod_nodes: BTreeSet<String>,
    /// This cluster's half of the service for each peer cluster sharing it.
    pub federation: BTreeMap<String, Half>,
}

/// One workload asking to join through one Endpoint, and what became of it.
#[derive(Debug, Clone)]
struct Entry<'i> {
    endpoint: ObjectKey,
    workload: String,
    identity: Result<SpiffeId, String>,
    kind: Workload<'i>,
    /// A stage before admission refused it (its reason and message say why): admission
    /// leaves it be.
    settled: bool,
    /// The IdentityGrant that lets the Endpoint's namespace claim this external host's
    /// identity, when it is not the namespace's own.
    granted_by: Option<String>,
    admitted: bool,
    reason: &'static str,
    message: String,
    address: Option<IpAddr>,
}

#[derive(Debug, Clone)]
enum Workload<'i> {
    Pod { pod: &'i Pod, interface: String },
    External { endpoint: &'i Endpoint },
}

impl<'i> Entry<'i> {
    /// A workload asking to join through `endpoint`, not yet decided.
    fn new(
        endpoint: ObjectKey,
        workload: String,
        identity: Result<SpiffeId, String>,
        kind: Workload<'i>,
    ) -> Self {
        Self {
            endpoint,
            workload,
            identity,
            kind,
            settled: false,
            granted_by: None,
            admitted: false,
            reason: wireway_crds::conditions::reason::NOT_ADMITTED,
            message: String::new(),
            address: None,
        }
    }

    /// Refuses it before admission: admission will not look at it.
    fn settle(&mut self, reason: &'static str, message: String) {
        self.reject(reason, message);
        self.settled = true;
    }

    fn reject(&mut self, reason: &'static str, message: String) {
        self.admitted = false;
        self.reason = reason;
        self.message = message;
        self.address = None;
    }

    fn pod(&self) -> Option<&'i Pod> {
        match self.kind {
            Workload::Pod { pod, .. } => Some(pod),
            Workload::External { .. } => None,
        }
    }

    /// Admitted and given an address: a member.
    fn member(&self) -> bool {
        self.admitted && self.address.is_some()
    }
}

/// Something that keeps an object from being Ready: the condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The condition's reason.
    pub reason: &'static str,
    /// The condition's message.
    pub message: String,
}

impl Problem {
    /// A problem for this reason.
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What the stages decided about a target whose service can be planned: all the
/// projections read of it.
struct Decided<'i> {
    target: &'i ObjectKey,
    service: &'i NetworkService,
    spec: Spec,
    assigned: &'i Assigned,
    listen_port: Option<u16>,
    /// The zone of the service's names, if it can have any.
    zone: Option<String>,
    invalid_rules: Vec<InvalidRule>,
    entries: Vec<Entry<'i>>,
    endpoint_problems: BTreeMap<ObjectKey, Problem>,
    admission_counts: BTreeMap<ObjectKey, (i32, i32)>,
    /// The carrying nodes, with their prefixes.
    carrying: BTreeMap<String, IpNet>,
    /// Every node an admitted pod runs on (see [`TargetPlan::pod_nodes`]).
    pod_nodes: BTreeSet<String>,
    /// What was decided about each peer cluster's half.
    remotes: Vec<federation::Remote>,
    /// What keeps the service from being Ready, in the order the stages found it.
    problems: Vec<Problem>,
}

/// What was decided across services before any target is planned.
#[derive(Debug, Clone, Copy)]
pub struct Across<'a> {
    /// The target's listen port and interface name, if it could be given any.
    pub assigned: Option<&'a Assigned>,
    /// Nodes refused for presenting another node's key.
    pub refused_nodes: &'a Refused,
}

/// Whether `svc` is working: it holds allocations recorded in its status (node
/// prefixes). What others do later must not take a working service down.
pub fn holds_allocations(svc: &NetworkService) -> bool {
    svc.status
        .as_ref()
        .is_some_and(|s| !s.node_prefixes.is_empty())
}

/// Plans one target, stage by stage.
pub fn plan_target(index: &Index, target: &ObjectKey, across: Across<'_>) -> TargetPlan {
    let (policy, invalid_rules) = Policy::compile(index.admissions_for(target));
    let Some(svc) = index.services.get(target) else {
        return projections::missing_service(index, target, &invalid_rules);
    };
    let (spec, assigned) = match stages::parse(svc, across.assigned) {
        Ok(parsed) => parsed,
        Err(why) => return projections::invalid_service(index, target, svc, why, &invalid_rules),
    };
    if let Err(refusal) = stages::within_bounds(index, svc, &spec) {
        return projections::refused_service(index, target, svc, &refusal, &invalid_rules);
    }
    let mut problems = stages::rule_problems(&invalid_rules);
    let listen_port = stages::listen_port(assigned, &mut problems);
    let zone = dns::zone(svc, target, &mut problems);
    let (mut entries, endpoint_problems) = stages::gather(index, target);
    stages::confine_identities(index, &mut entries);
    let mut admission_counts = stages::admit(index, &policy, target, &mut entries);
    let pod_nodes = entries
        .iter()
        .filter(|e| e.admitted)
        .filter_map(|e| e.pod()?.node.clone())
        .collect();
    stages::leave_out_refused_nodes(across.refused_nodes, &mut entries, &mut problems);
    stages::resolve_interface_conflicts(index, target, &mut entries);
    let external_addresses = stages::place_externals(&spec, &mut entries);
    let prefixes =
        stages::allocate_node_prefixes(svc, &spec, &entries, &external_addresses, &mut problems);
    stages::check_externals_against_nodes(index, &prefixes, &mut entries);
    stages::allocate_addresses(index, target, &prefixes, &mut entries, &mut problems);
    let carrying = stages::carrying_nodes(prefixes, &entries);
    let taken: BTreeSet<IpAddr> = entries.iter().filter_map(|e| e.address).collect();
    let remotes = federation::remotes(index, target, &spec, &policy, &taken, &mut admission_counts);
    projections::planned(
        index,
        &Decided {
            target,
            service: svc,
            spec,
            assigned,
            listen_port,
            zone,
            invalid_rules,
            entries,
            endpoint_problems,
            admission_counts,
            carrying,
            pod_nodes,
            remotes,
            problems,
        },
    )
}

/// The plan of a target whose service is refused for `problem`, decided across services
/// (its cidr overlaps another's): it says why and installs nothing.
pub fn refuse(index: &Index, target: &ObjectKey, problem: &Problem) -> TargetPlan {
    let (_, invalid_rules) = Policy::compile(index.admissions_for(target));
    match index.services.get(target) {
        Some(svc) => projections::refused_service(index, target, svc, problem, &invalid_rules),
        None => projections::missing_service(index, target, &invalid_rules),
    }
}
