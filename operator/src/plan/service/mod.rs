//! Planning one target (a NetworkService key) as a pipeline of named stages.
//!
//! [`plan_target`] parses the spec, gathers the workloads the target's Endpoints attach,
//! decides admission, settles interface-name conflicts, places external hosts, allocates
//! node prefixes and member addresses, and keeps the nodes left with an addressed member
//! (the carrying nodes). `stages` holds those decisions; `projections` derives the
//! outputs from them and decides nothing: the service's, Endpoints' and Admissions'
//! statuses, and each carrying node's share of its state.

mod projections;
mod stages;

use std::collections::BTreeMap;
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
use super::world::Pod;
pub use stages::parse_spec;

/// First port handed out to services that do not pin one.
pub const FIRST_LISTEN_PORT: u16 = 51820;
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
}

/// One workload asking to join through one Endpoint, and what became of it.
#[derive(Debug, Clone)]
struct Entry<'i> {
    endpoint: ObjectKey,
    workload: String,
    identity: Result<SpiffeId, String>,
    kind: Workload<'i>,
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
struct Problem {
    reason: &'static str,
    message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
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
    invalid_rules: Vec<InvalidRule>,
    entries: Vec<Entry<'i>>,
    endpoint_problems: BTreeMap<ObjectKey, Problem>,
    admission_counts: BTreeMap<ObjectKey, (i32, i32)>,
    /// The carrying nodes, with their prefixes.
    carrying: BTreeMap<String, IpNet>,
    /// What keeps the service from being Ready, in the order the stages found it.
    problems: Vec<Problem>,
}

/// Plans one target, stage by stage.
pub fn plan_target(index: &Index, target: &ObjectKey, assigned: Option<&Assigned>) -> TargetPlan {
    let (policy, invalid_rules) = Policy::compile(index.admissions_for(target));
    let Some(svc) = index.services.get(target) else {
        return projections::missing_service(index, target, &invalid_rules);
    };
    let (spec, assigned) = match stages::parse(svc, assigned) {
        Ok(parsed) => parsed,
        Err(why) => return projections::invalid_service(index, target, svc, why, &invalid_rules),
    };
    let mut problems = stages::rule_problems(&invalid_rules);
    let listen_port = stages::listen_port(assigned, &mut problems);
    let (mut entries, endpoint_problems) = stages::gather(index, target);
    let admission_counts = stages::admit(index, &policy, target, &mut entries);
    stages::resolve_interface_conflicts(index, target, &mut entries);
    let external_addresses = stages::place_externals(&spec, &mut entries);
    let prefixes =
        stages::allocate_node_prefixes(svc, &spec, &entries, &external_addresses, &mut problems);
    stages::check_externals_against_nodes(index, &prefixes, &mut entries);
    stages::allocate_addresses(index, target, &prefixes, &mut entries, &mut problems);
    let carrying = stages::carrying_nodes(prefixes, &entries);
    projections::planned(
        index,
        &Decided {
            target,
            service: svc,
            spec,
            assigned,
            listen_port,
            invalid_rules,
            entries,
            endpoint_problems,
            admission_counts,
            carrying,
            problems,
        },
    )
}
