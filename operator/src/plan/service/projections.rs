//! The outputs of planning one target, derived from what the stages decided and deciding
//! nothing themselves: the NetworkService's status, every Endpoint's and Admission's
//! status, and each carrying node's share of its state. A target that cannot be planned
//! (its service missing, invalid or refused) projects to statuses that say why, and to no
//! node.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use wireway_crds::conditions::reason;
use wireway_crds::{
    AdmissionStatus, Endpoint, EndpointStatus, MemberStatus, Members, NetworkService,
    NetworkServiceStatus, NodePrefix, PeerDecision,
};
use wireway_proto::{Member, NetnsLocator, Peer, ROUTE_TABLE_BASE, ServiceState, netns_locator};

use super::federation::Remote;
use super::{
    DEFAULT_UNDERLAY_MTU, Decided, Entry, Problem, TargetPlan, WIREGUARD_OVERHEAD, Workload,
};
use crate::plan::admission::InvalidRule;
use crate::plan::index::Index;
use crate::plan::{ObjectKey, status};

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The target of a NetworkService that does not exist.
pub(super) fn missing_service(
    index: &Index,
    target: &ObjectKey,
    invalid_rules: &[InvalidRule],
) -> TargetPlan {
    let message = format!("NetworkService {target} does not exist");
    let problem = Problem::new(reason::NETWORK_SERVICE_NOT_FOUND, message);
    unplanned(index, target, &problem, None, invalid_rules)
}

/// The target of a NetworkService whose spec cannot be planned, for the reason `why`.
pub(super) fn invalid_service(
    index: &Index,
    target: &ObjectKey,
    svc: &NetworkService,
    why: String,
    invalid_rules: &[InvalidRule],
) -> TargetPlan {
    let previous = svc.status.clone().unwrap_or_default();
    let generation = svc.metadata.generation;
    let status = NetworkServiceStatus {
        observed_generation: generation,
        conditions: status::ready(
            false,
            reason::INVALID_SPEC,
            why,
            generation,
            &previous.conditions,
            &index.now,
        ),
        ..previous
    };
    let message = format!("NetworkService {target} has an invalid spec");
    let problem = Problem::new(reason::INVALID_SPEC, message);
    unplanned(index, target, &problem, Some(status), invalid_rules)
}

/// The target of a NetworkService refused for `problem` (outside the administrator's
/// bounds, or overlapping another service). Its status keeps its listen port and
/// interface name, and records no node and no member: it installs nothing, and an
/// overlapping service that holds allocations wins over it.
pub(super) fn refused_service(
    index: &Index,
    target: &ObjectKey,
    svc: &NetworkService,
    problem: &Problem,
    invalid_rules: &[InvalidRule],
) -> TargetPlan {
    let previous = svc.status.clone().unwrap_or_default();
    let generation = svc.metadata.generation;
    let status = NetworkServiceStatus {
        observed_generation: generation,
        conditions: status::ready(
            false,
            problem.reason,
            problem.message.clone(),
            generation,
            &previous.conditions,
            &index.now,
        ),
        listen_port: previous.listen_port,
        interface_name: previous.interface_name,
        node_count: 0,
        member_count: 0,
        node_prefixes: Vec::new(),
        dns_zone: None,
        peers: Vec::new(),
    };
    let refused = Problem::new(
        problem.reason,
        format!("NetworkService {target} is refused: {}", problem.message),
    );
    unplanned(index, target, &refused, Some(status), invalid_rules)
}

/// The plan of a target whose service could be planned.
pub(super) fn planned(index: &Index, decided: &Decided<'_>) -> TargetPlan {
    let d = decided;
    TargetPlan {
        service: Some(service_status(index, d)),
        endpoints: endpoint_statuses(
            index,
            d.target,
            &d.entries,
            &d.remotes,
            &d.endpoint_problems,
        ),
        admissions: admission_statuses(
            index,
            d.target,
            None,
            &d.invalid_rules,
            &d.admission_counts,
        ),
        nodes: d
            .listen_port
            .map_or_else(BTreeMap::new, |port| node_states(index, d, port)),
        pod_nodes: d.pod_nodes.clone(),
        federation: super::federation::halves(
            index,
            &d.spec,
            d.listen_port,
            &d.carrying,
            &d.entries,
            &d.remotes,
        ),
    }
}

/// The service's status: Ready with its members and nodes, or the first problem's
/// reason with every problem's message.
fn service_status(index: &Index, decided: &Decided<'_>) -> NetworkServiceStatus {
    let Decided {
        service: svc,
        assigned,
        listen_port,
        zone,
        carrying,
        entries,
        remotes,
        problems,
        ..
    } = decided;
    let members = entries.iter().filter(|e| e.member()).count();
    let (ready, why, message) = match problems.first() {
        Some(first) => (
            false,
            first.reason,
            problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => (true, reason::READY, ready_message(members, carrying.len())),
    };
    let previous = svc.status.as_ref().map(|s| s.conditions.as_slice());
    let generation = svc.metadata.generation;
    NetworkServiceStatus {
        observed_generation: generation,
        conditions: status::ready(
            ready,
            why,
            message,
            generation,
            previous.unwrap_or_default(),
            &index.now,
        ),
        listen_port: listen_port.map(i32::from),
        interface_name: Some(assigned.interface.clone()),
        node_count: count(carrying.len()),
        member_count: count(members),
        node_prefixes: carrying
            .iter()
            .map(|(node, p)| NodePrefix {
                node: node.clone(),
                prefix: p.to_string(),
            })
            .collect(),
        dns_zone: zone.clone(),
        peers: remotes.iter().map(|r| r.status.clone()).collect(),
    }
}

/// What a Ready service's condition says.
pub(super) fn ready_message(members: usize, nodes: usize) -> String {
    format!(
        "{} on {}",
        status::count_of(members, "member"),
        status::count_of(nodes, "node")
    )
}

/// A target that cannot be planned: the service is missing or invalid. Its Endpoints and
/// Admissions say why; no node gets anything.
fn unplanned(
    index: &Index,
    target: &ObjectKey,
    problem: &Problem,
    service: Option<NetworkServiceStatus>,
    invalid_rules: &[InvalidRule],
) -> TargetPlan {
    let problems = index
        .endpoints_for(target)
        .map(|(k, _)| (k.clone(), problem.clone()))
        .collect();
    TargetPlan {
        service,
        endpoints: endpoint_statuses(index, target, &[], &[], &problems),
        admissions: admission_statuses(
            index,
            target,
            Some(problem),
            invalid_rules,
            &BTreeMap::new(),
        ),
        nodes: BTreeMap::new(),
        pod_nodes: Default::default(),
        federation: BTreeMap::new(),
    }
}

/// Each carrying node's share: the WireGuard interface (listening on `port`), its peers
/// (the other carrying nodes, with their prefix, and the admitted external hosts, with
/// their single address), the local members, and the names of all members.
fn node_states(index: &Index, decided: &Decided<'_>, port: u16) -> BTreeMap<String, ServiceState> {
    let Decided {
        target,
        spec,
        assigned,
        carrying: prefixes,
        entries,
        zone,
        remotes,
        ..
    } = decided;
    let interface = assigned.interface.as_str();
    let names = zone.as_deref().map(|z| super::dns::records(z, entries));
    let mtu = spec.mtu.unwrap_or_else(|| {
        prefixes
            .keys()
            .map(|n| {
                index
                    .nodes
                    .get(n)
                    .and_then(|n| n.underlay_mtu)
                    .unwrap_or(DEFAULT_UNDERLAY_MTU)
            })
            .min()
            .unwrap_or(DEFAULT_UNDERLAY_MTU)
            .saturating_sub(WIREGUARD_OVERHEAD)
    });
    let node_peers: Vec<(&str, Peer)> = prefixes
        .iter()
        .filter_map(|(name, prefix)| {
            let node = index.nodes.get(name)?;
            let peer = Peer {
                name: name.clone(),
                public_key: node.public_key.clone()?,
                endpoint: SocketAddr::new(node.underlay?, port).to_string(),
                allowed_ips: vec![prefix.to_string()],
                persistent_keepalive: 0,
            };
            Some((name.as_str(), peer))
        })
        .collect();
    let external_peers: Vec<Peer> = entries
        .iter()
        .filter(|e| e.admitted)
        .filter_map(|e| {
            let Workload::External { endpoint } = e.kind else {
                return None;
            };
            let ext = endpoint.spec.external.as_ref()?;
            Some(Peer {
                name: e.endpoint.to_string(),
                public_key: ext.public_key.clone(),
                endpoint: ext.endpoint.clone().unwrap_or_default(),
                allowed_ips: vec![IpNet::from(e.address?).to_string()],
                persistent_keepalive: ext
                    .persistent_keepalive
                    .and_then(|k| u32::try_from(k).ok())
                    .unwrap_or(0),
            })
        })
        .collect();
    let mut members_by_node: BTreeMap<&str, Vec<Member>> = BTreeMap::new();
    for (node, member) in entries.iter().filter_map(node_member) {
        members_by_node.entry(node).or_default().push(member);
    }
    prefixes
        .iter()
        .map(|(node, prefix)| {
            let mut peers: Vec<Peer> = node_peers
                .iter()
                .filter(|(name, _)| name != node)
                .map(|(_, p)| p.clone())
                .chain(external_peers.iter().cloned())
                .chain(
                    remotes
                        .iter()
                        .flat_map(|r| r.wireguard_peers.iter().cloned()),
                )
                .collect();
            peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
            let mut members = members_by_node.remove(node.as_str()).unwrap_or_default();
            members.sort_by(|a, b| a.id.cmp(&b.id));
            let state = ServiceState {
                name: target.to_string(),
                interface_name: interface.to_owned(),
                listen_port: u32::from(port),
                mtu,
                cidr: spec.cidr.to_string(),
                node_prefix: prefix.to_string(),
                route_table: ROUTE_TABLE_BASE + u32::from(port),
                members,
                peers,
                dns: names.clone(),
            };
            (node.clone(), state)
        })
        .collect()
}

/// A member's place in its node's state: the node, and the member with its host veth
/// name left empty. `None` for a workload that is no member there (not admitted, no
/// address, an external host).
pub(super) fn node_member<'e>(e: &Entry<'e>) -> Option<(&'e str, Member)> {
    let Workload::Pod { pod, interface } = &e.kind else {
        return None;
    };
    let (true, Some(node), Some(address)) = (e.admitted, pod.node.as_deref(), e.address) else {
        return None;
    };
    let locator = match &pod.netns {
        Some(path) => netns_locator::Locator::Path(path.clone()),
        None => netns_locator::Locator::PodUid(pod.uid.clone()),
    };
    let member = Member {
        id: member_id(&pod.namespace, &pod.name),
        netns: Some(NetnsLocator {
            locator: Some(locator),
        }),
        interface_name: interface.clone(),
        host_interface_name: String::new(),
        address: address.to_string(),
    };
    Some((node, member))
}

/// The id of a pod's member in a node's state.
pub(super) fn member_id(namespace: &str, pod: &str) -> String {
    format!("{namespace}/{pod}")
}

/// The status of every Endpoint naming the target.
pub(super) fn endpoint_statuses(
    index: &Index,
    target: &ObjectKey,
    entries: &[Entry<'_>],
    remotes: &[Remote],
    problems: &BTreeMap<ObjectKey, Problem>,
) -> BTreeMap<ObjectKey, EndpointStatus> {
    index
        .endpoints_for(target)
        .map(|(key, e)| {
            let members: Members = entries
                .iter()
                .filter(|entry| &entry.endpoint == key)
                .map(|entry| member_status(entry, remotes))
                .collect();
            let status = endpoint_status(index, e, members, problems.get(key));
            (key.clone(), status)
        })
        .collect()
}

/// What the Endpoint's status says of one workload.
pub(super) fn member_status(entry: &Entry<'_>, remotes: &[Remote]) -> MemberStatus {
    MemberStatus {
        workload: entry.workload.clone(),
        node: entry.pod().and_then(|p| p.node.clone()),
        identity: entry
            .identity
            .as_ref()
            .map_or_else(|_| String::new(), ToString::to_string),
        admitted: entry.admitted,
        reason: entry.reason.to_owned(),
        message: entry.message.clone(),
        address: entry.address.map(|a| a.to_string()),
        peers: entry
            .address
            .map(|address| peer_decisions(remotes, address))
            .unwrap_or_default(),
    }
}

/// An Endpoint's status with `members`: Ready unless `problem`, or a member not admitted
/// or without an address, says otherwise. (The list keeps its counts: this reads no
/// member but the first with a problem.)
pub(super) fn endpoint_status(
    index: &Index,
    e: &Endpoint,
    members: Members,
    problem: Option<&Problem>,
) -> EndpointStatus {
    let admitted = members.admitted_count();
    let rejected = members.rejected_count();
    let (ready, why, message): (bool, &str, String) = match problem {
        Some(problem) => (false, problem.reason, problem.message.clone()),
        None => match members.first_problem() {
            Some(m) if !m.admitted => (
                false,
                m.reason.as_str(),
                format!(
                    "{rejected} of {} not admitted; first: {}: {}",
                    status::count_of(members.len(), "workload"),
                    m.workload,
                    m.message
                ),
            ),
            Some(m) => (
                false,
                reason::ADDRESS_POOL_EXHAUSTED,
                format!("{} has no address: {}", m.workload, m.message),
            ),
            None if members.is_empty() => (
                true,
                reason::NO_MEMBERS,
                "the Endpoint selects no scheduled pod".to_owned(),
            ),
            None => (
                true,
                reason::READY,
                format!("{} admitted", status::count_of(admitted, "workload")),
            ),
        },
    };
    let previous = e
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = e.metadata.generation;
    EndpointStatus {
        observed_generation: generation,
        conditions: status::ready(ready, why, message, generation, previous, &index.now),
        admitted_count: count(admitted),
        rejected_count: count(rejected),
        members,
    }
}

/// What each peer cluster said of the member at `address`.
fn peer_decisions(remotes: &[Remote], address: IpAddr) -> Vec<PeerDecision> {
    remotes
        .iter()
        .filter_map(|r| {
            let d = r.verdicts.get(&address)?;
            Some(PeerDecision {
                cluster: r.name.clone(),
                admitted: d.admitted,
                reason: status::clip(&d.reason, status::PEER_TEXT_MAX),
                message: status::clip(&d.message, status::PEER_TEXT_MAX),
            })
        })
        .collect()
}

/// The status of every Admission governing the target.
pub(super) fn admission_statuses(
    index: &Index,
    target: &ObjectKey,
    service_problem: Option<&Problem>,
    invalid_rules: &[InvalidRule],
    counts: &BTreeMap<ObjectKey, (i32, i32)>,
) -> BTreeMap<ObjectKey, AdmissionStatus> {
    index
        .admissions_for(target)
        .map(|a| {
            let key = ObjectKey::of(&a.metadata);
            let invalid = invalid_rules.iter().find(|r| r.admission == key);
            let (ready, why, message) = match (service_problem, invalid) {
                (Some(problem), _) => (false, problem.reason, problem.message.clone()),
                (None, Some(rule)) => (false, reason::INVALID_SPEC, rule.message.clone()),
                (None, None) => (true, reason::READY, "rules in effect".to_owned()),
            };
            let (admitted, denied) = counts.get(&key).copied().unwrap_or_default();
            let previous = a
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            let generation = a.metadata.generation;
            let status = AdmissionStatus {
                observed_generation: generation,
                conditions: status::ready(ready, why, message, generation, previous, &index.now),
                admitted_count: admitted,
                denied_count: denied,
            };
            (key, status)
        })
        .collect()
}
