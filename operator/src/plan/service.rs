//! Planning one target (a NetworkService key) in named stages: parse the spec, gather the
//! workloads its Endpoints attach, decide admission, place external hosts, allocate node
//! prefixes and member addresses, then derive the statuses and each node's share.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use wireway_crds::conditions::reason;
use wireway_crds::{
    AdmissionStatus, Cidr, Endpoint, EndpointStatus, MemberStatus, NetworkService,
    NetworkServiceStatus, NodePrefix, SpiffeId,
};
use wireway_proto::{Member, NetnsLocator, Peer, ROUTE_TABLE_BASE, ServiceState, netns_locator};

use super::admission::{Candidate, InvalidRule, Policy};
use super::index::{Index, endpoint_target};
use super::world::{Labels, Pod};
use super::{ObjectKey, ipam, names, selector, status};

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

/// Parses a spec the API server should have validated; what it let through (an object
/// stored before a rule existed) becomes an InvalidSpec condition.
pub fn parse_spec(svc: &NetworkService) -> Result<Spec, String> {
    let cidr: Cidr = svc
        .spec
        .cidr
        .parse()
        .map_err(|e| format!("spec.cidr: {e}"))?;
    let pool = match &svc.spec.cluster_prefix {
        Some(p) => {
            let pool: Cidr = p.parse().map_err(|e| format!("spec.clusterPrefix: {e}"))?;
            if !cidr.contains(&pool) {
                return Err(format!(
                    "spec.clusterPrefix {pool} lies outside spec.cidr {cidr}"
                ));
            }
            pool
        }
        None => cidr,
    };
    let node_prefix_len = u8::try_from(svc.spec.node_prefix_length)
        .ok()
        .filter(|len| (pool.prefix_len()..=pool.max_prefix_len()).contains(len))
        .ok_or_else(|| {
            format!(
                "spec.nodePrefixLength {} must lie between {} and {}",
                svc.spec.node_prefix_length,
                pool.prefix_len(),
                pool.max_prefix_len()
            )
        })?;
    Ok(Spec {
        cidr,
        pool,
        node_prefix_len,
        mtu: svc.spec.mtu.and_then(|m| u32::try_from(m).ok()),
        listen_port: svc.spec.listen_port.and_then(|p| u16::try_from(p).ok()),
    })
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
    /// The service's share of each hosting node's state. Host veth names are left empty:
    /// they are unique per node, so the node assembly picks them.
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
}

/// A condition-worthy problem: (reason, message).
type Problem = (&'static str, String);

/// Plans one target.
pub fn plan_target(index: &Index, target: &ObjectKey, assigned: Option<&Assigned>) -> TargetPlan {
    let (policy, invalid_rules) = Policy::compile(index.admissions_for(target));
    let Some(svc) = index.services.get(target) else {
        let message = format!("NetworkService {target} does not exist");
        return unplanned(
            index,
            target,
            reason::NETWORK_SERVICE_NOT_FOUND,
            &message,
            None,
            &invalid_rules,
        );
    };
    let previous = svc.status.clone().unwrap_or_default();
    let generation = svc.metadata.generation;
    let parsed = parse_spec(svc).and_then(|spec| {
        let assigned = assigned.ok_or("no WireGuard interface name could be assigned")?;
        Ok((spec, assigned))
    });
    let (spec, assigned) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => {
            let status = NetworkServiceStatus {
                observed_generation: generation,
                conditions: status::ready(
                    false,
                    reason::INVALID_SPEC,
                    message.clone(),
                    generation,
                    &previous.conditions,
                    &index.now,
                ),
                ..previous
            };
            let why = format!("NetworkService {target} has an invalid spec");
            return unplanned(
                index,
                target,
                reason::INVALID_SPEC,
                &why,
                Some(status),
                &invalid_rules,
            );
        }
    };
    let mut problems: Vec<Problem> = invalid_rules
        .iter()
        .map(|r| {
            (
                reason::INVALID_SPEC,
                format!("Admission {}: {}", r.admission, r.message),
            )
        })
        .collect();
    let listen_port = match &assigned.listen_port {
        Ok(port) => Some(*port),
        Err(e) => {
            problems.push((reason::INVALID_SPEC, format!("spec.listenPort: {e}")));
            None
        }
    };

    let (mut entries, endpoint_problems) = gather(index, target);
    let admission_counts = admit(index, &policy, target, &mut entries);
    resolve_interface_conflicts(index, target, &mut entries);
    let external_addresses = place_externals(&spec, &mut entries);
    let hosting: Vec<&str> = entries
        .iter()
        .filter(|e| e.admitted)
        .filter_map(|e| e.pod()?.node.as_deref())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let recorded: BTreeMap<String, IpNet> = previous
        .node_prefixes
        .iter()
        .filter_map(|np| Some((np.node.clone(), np.prefix.parse::<Cidr>().ok()?.net())))
        .collect();
    let prefixes = ipam::node_prefixes(
        &spec.pool.net(),
        spec.node_prefix_len,
        &hosting,
        &recorded,
        &external_addresses,
    );
    if !prefixes.exhausted.is_empty() {
        problems.push((
            reason::ADDRESS_POOL_EXHAUSTED,
            format!(
                "no /{} left in {} for nodes {}",
                spec.node_prefix_len,
                spec.pool,
                prefixes.exhausted.join(", ")
            ),
        ));
    }
    check_externals_against_nodes(index, &prefixes.allocated, &mut entries);
    problems.extend(allocate_addresses(
        index,
        target,
        &prefixes.allocated,
        &mut entries,
    ));

    // Only nodes left with an addressed member keep the service.
    let nodes: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.admitted && e.address.is_some())
        .filter_map(|e| e.pod()?.node.as_deref())
        .collect();
    let prefixes: BTreeMap<String, IpNet> = prefixes
        .allocated
        .into_iter()
        .filter(|(n, _)| nodes.contains(n.as_str()))
        .collect();
    let members = entries
        .iter()
        .filter(|e| e.admitted && e.address.is_some())
        .count();

    let (ready, why, message) = match problems.first() {
        Some((r, _)) => (
            false,
            *r,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => (
            true,
            reason::READY,
            format!(
                "{} on {}",
                status::count_of(members, "member"),
                status::count_of(prefixes.len(), "node")
            ),
        ),
    };
    let service = NetworkServiceStatus {
        observed_generation: generation,
        conditions: status::ready(
            ready,
            why,
            message,
            generation,
            &previous.conditions,
            &index.now,
        ),
        listen_port: listen_port.map(i32::from),
        interface_name: Some(assigned.interface.clone()),
        node_count: count(prefixes.len()),
        member_count: count(members),
        node_prefixes: prefixes
            .iter()
            .map(|(node, p)| NodePrefix {
                node: node.clone(),
                prefix: p.to_string(),
            })
            .collect(),
    };
    let node_states = match listen_port {
        Some(port) => node_states(
            index,
            target,
            &spec,
            &assigned.interface,
            port,
            &prefixes,
            &entries,
        ),
        None => BTreeMap::new(),
    };
    TargetPlan {
        service: Some(service),
        endpoints: endpoint_statuses(index, target, &entries, &endpoint_problems),
        admissions: admission_statuses(index, target, None, &invalid_rules, &admission_counts),
        nodes: node_states,
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A target that cannot be planned: the service is missing or invalid. Its Endpoints and
/// Admissions say why; no node gets anything.
fn unplanned(
    index: &Index,
    target: &ObjectKey,
    why: &'static str,
    message: &str,
    service: Option<NetworkServiceStatus>,
    invalid_rules: &[InvalidRule],
) -> TargetPlan {
    let problems = index
        .endpoints_for(target)
        .map(|(k, _)| (k.clone(), (why, message.to_owned())))
        .collect();
    TargetPlan {
        service,
        endpoints: endpoint_statuses(index, target, &[], &problems),
        admissions: admission_statuses(
            index,
            target,
            Some((why, message)),
            invalid_rules,
            &BTreeMap::new(),
        ),
        nodes: BTreeMap::new(),
    }
}

/// Stage: the workloads each Endpoint of the target attaches, and the Endpoints that
/// cannot attach anything.
fn gather<'i>(
    index: &'i Index,
    target: &ObjectKey,
) -> (Vec<Entry<'i>>, BTreeMap<ObjectKey, Problem>) {
    let mut entries = Vec::new();
    let mut problems = BTreeMap::new();
    for (key, e) in index.endpoints_for(target) {
        let entry = |workload: String, identity, kind| Entry {
            endpoint: key.clone(),
            workload,
            identity,
            kind,
            admitted: false,
            reason: reason::NOT_ADMITTED,
            message: String::new(),
            address: None,
        };
        match (&e.spec.pod_selector, &e.spec.external) {
            (Some(sel), None) => {
                if let Err(err) = selector::matches(sel, &Labels::new()) {
                    problems.insert(
                        key.clone(),
                        (reason::INVALID_SPEC, format!("spec.podSelector: {err}")),
                    );
                    continue;
                }
                let interface = e
                    .spec
                    .interface_name
                    .clone()
                    .unwrap_or_else(|| names::default_member_interface(&target.name));
                for pod in index.pods_in(&key.namespace) {
                    if pod.node.is_none() || !selector::matches(sel, &pod.labels).unwrap_or(false) {
                        continue;
                    }
                    let identity = index.trust_domain.clone().and_then(|td| {
                        SpiffeId::for_pod(&td, &pod.namespace, &pod.service_account)
                            .map_err(|e| e.to_string())
                    });
                    entries.push(entry(
                        pod.name.clone(),
                        identity,
                        Workload::Pod {
                            pod,
                            interface: interface.clone(),
                        },
                    ));
                }
            }
            (None, Some(ext)) => {
                let identity = ext
                    .spiffe_id
                    .parse()
                    .map_err(|e: wireway_crds::SpiffeIdError| {
                        format!("spec.external.spiffeId: {e}")
                    });
                entries.push(entry(
                    key.name.clone(),
                    identity,
                    Workload::External { endpoint: e },
                ));
            }
            _ => {
                problems.insert(
                    key.clone(),
                    (
                        reason::INVALID_SPEC,
                        "exactly one of podSelector or external must be set".into(),
                    ),
                );
            }
        }
    }
    (entries, problems)
}

/// Stage: admission. Returns, per Admission, how many workloads its rules admitted and
/// denied. A pod attached through two Endpoints is one member: the first Endpoint in name
/// order owns it.
fn admit(
    index: &Index,
    policy: &Policy,
    target: &ObjectKey,
    entries: &mut [Entry<'_>],
) -> BTreeMap<ObjectKey, (i32, i32)> {
    let empty = Labels::new();
    let mut counts: BTreeMap<ObjectKey, (i32, i32)> = BTreeMap::new();
    let mut owners: BTreeMap<(&str, &str), ObjectKey> = BTreeMap::new();
    for entry in entries.iter_mut() {
        let decision = match &entry.identity {
            Err(e) => {
                entry.reject(reason::INVALID_SPEC, e.clone());
                continue;
            }
            Ok(identity) => {
                let local_namespace = entry.pod().map(|pod| {
                    (
                        pod.namespace.as_str(),
                        index.namespaces.get(&pod.namespace).unwrap_or(&empty),
                    )
                });
                policy.decide(
                    Candidate {
                        identity,
                        local_namespace,
                    },
                    &target.namespace,
                )
            }
        };
        if let Some(by) = &decision.by {
            let c = counts.entry(by.clone()).or_default();
            if decision.admitted {
                c.0 += 1
            } else {
                c.1 += 1
            }
        }
        entry.admitted = decision.admitted;
        entry.reason = decision.reason;
        entry.message = decision.message;
        if let (true, Some(pod)) = (entry.admitted, entry.pod()) {
            match owners.get(&(pod.namespace.as_str(), pod.name.as_str())) {
                Some(owner) => {
                    let message = format!("already a member through Endpoint {owner}");
                    entry.reject(reason::ADMITTED, message);
                }
                None => {
                    owners.insert((&pod.namespace, &pod.name), entry.endpoint.clone());
                }
            }
        }
    }
    counts
}

/// Stage: a pod cannot hold two interfaces of one name. When an Endpoint of another
/// service selects the same pod with the same interface name, the Endpoint that already
/// has the pod as a member keeps the name; if neither or both do, the first by key does.
/// (Conservative: the other Endpoint's pod may not be admitted there, but deciding that
/// here would make this service's plan depend on that one's.)
fn resolve_interface_conflicts(index: &Index, target: &ObjectKey, entries: &mut [Entry<'_>]) {
    let holds = |e: &Endpoint, pod: &str| {
        e.status.as_ref().is_some_and(|s| {
            s.members
                .iter()
                .any(|m| m.workload == pod && m.admitted && m.address.is_some())
        })
    };
    for entry in entries.iter_mut().filter(|e| e.admitted) {
        let Workload::Pod { pod, interface } = &entry.kind else {
            continue;
        };
        let Some(mine) = index.endpoints.get(&entry.endpoint) else {
            continue;
        };
        let rival = index.endpoints_in(&pod.namespace).find(|(key, other)| {
            let other_target = endpoint_target(other);
            let other_interface = other
                .spec
                .interface_name
                .clone()
                .unwrap_or_else(|| names::default_member_interface(&other_target.name));
            let selects = other
                .spec
                .pod_selector
                .as_ref()
                .is_some_and(|sel| selector::matches(sel, &pod.labels).unwrap_or(false));
            let wins = match (holds(other, &pod.name), holds(mine, &pod.name)) {
                (true, false) => true,
                (false, true) => false,
                _ => *key < &entry.endpoint,
            };
            &other_target != target && selects && &other_interface == interface && wins
        });
        if let Some((key, other)) = rival {
            let message = format!(
                "pod {} already gets interface {interface} from Endpoint {key} (NetworkService {}); set spec.interfaceName",
                pod.name,
                endpoint_target(other)
            );
            entry.reject(reason::INTERFACE_NAME_CONFLICT, message);
        }
    }
}

/// Stage: external hosts' addresses must lie in the cidr and be theirs alone. Returns the
/// addresses in use, which node prefixes must avoid.
fn place_externals(spec: &Spec, entries: &mut [Entry<'_>]) -> Vec<IpAddr> {
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    for entry in entries.iter_mut().filter(|e| e.admitted) {
        let Workload::External { endpoint } = entry.kind else {
            continue;
        };
        let Some(ext) = endpoint.spec.external.as_ref() else {
            continue;
        };
        match ext.address.parse::<IpAddr>() {
            Err(_) => entry.reject(
                reason::INVALID_SPEC,
                format!(
                    "spec.external.address {:?} is not an IP address",
                    ext.address
                ),
            ),
            Ok(addr) if !spec.cidr.contains_addr(addr) => entry.reject(
                reason::INVALID_SPEC,
                format!(
                    "spec.external.address {addr} lies outside the service's cidr {}",
                    spec.cidr
                ),
            ),
            Ok(addr) if !taken.insert(addr) => entry.reject(
                reason::OVERLAPPING_PREFIX,
                format!("address {addr} is already used by another external endpoint"),
            ),
            Ok(addr) => entry.address = Some(addr),
        }
    }
    taken.into_iter().collect()
}

/// Stage: an external host may not sit inside a node's prefix (that node would get its
/// traffic), nor share a public key with a node or another host of the service
/// (WireGuard keys peers by key).
fn check_externals_against_nodes(
    index: &Index,
    prefixes: &BTreeMap<String, IpNet>,
    entries: &mut [Entry<'_>],
) {
    let mut keys: BTreeSet<&str> = prefixes
        .keys()
        .filter_map(|n| index.nodes.get(n)?.public_key.as_deref())
        .collect();
    for entry in entries.iter_mut().filter(|e| e.admitted) {
        let (Workload::External { endpoint }, Some(addr)) = (&entry.kind, entry.address) else {
            continue;
        };
        let key = endpoint
            .spec
            .external
            .as_ref()
            .map(|x| x.public_key.as_str())
            .unwrap_or_default();
        if let Some((node, _)) = prefixes.iter().find(|(_, p)| p.contains(&addr)) {
            let message = format!("address {addr} lies inside the prefix of node {node}");
            entry.reject(reason::OVERLAPPING_PREFIX, message);
        } else if !keys.insert(key) {
            let message =
                "spec.external.publicKey is already used by another peer of the service".to_owned();
            entry.reject(reason::INVALID_SPEC, message);
        }
    }
}

/// Stage: member addresses, node by node, kept by (namespace, pod name, node) from the
/// Endpoints' statuses, so a StatefulSet pod recreated on its node gets its address back.
fn allocate_addresses(
    index: &Index,
    target: &ObjectKey,
    prefixes: &BTreeMap<String, IpNet>,
    entries: &mut [Entry<'_>],
) -> Option<Problem> {
    let recorded: BTreeMap<(&str, &str, &str), IpAddr> = index
        .endpoints_for(target)
        .filter_map(|(key, e)| Some((key, e.status.as_ref()?)))
        .flat_map(|(key, st)| {
            st.members.iter().filter_map(move |m| {
                Some((
                    (
                        key.namespace.as_str(),
                        m.workload.as_str(),
                        m.node.as_deref()?,
                    ),
                    m.address.as_deref()?.parse().ok()?,
                ))
            })
        })
        .collect();
    let mut per_node: BTreeMap<&str, Vec<(usize, Option<IpAddr>)>> = BTreeMap::new();
    for (i, entry) in entries.iter().enumerate().filter(|(_, e)| e.admitted) {
        if let Some(pod) = entry.pod()
            && let Some(node) = pod.node.as_deref()
        {
            let rec = recorded
                .get(&(pod.namespace.as_str(), pod.name.as_str(), node))
                .copied();
            per_node.entry(node).or_default().push((i, rec));
        }
    }
    let mut full = Vec::new();
    let mut assigned = Vec::new();
    for (node, members) in per_node {
        let allocation = prefixes
            .get(node)
            .map(|prefix| ipam::addresses(prefix, &members));
        for (i, _) in &members {
            let address = allocation
                .as_ref()
                .and_then(|a| a.get(i).copied().flatten());
            assigned.push((*i, address));
        }
        if allocation.is_none_or(|a| a.values().any(Option::is_none)) {
            full.push(node);
        }
    }
    for (i, address) in assigned {
        entries[i].address = address;
        if address.is_none() {
            let message = format!(
                "{}; no address is left on node {}",
                entries[i].message,
                entries[i]
                    .pod()
                    .and_then(|p| p.node.as_deref())
                    .unwrap_or_default()
            );
            entries[i].message = message;
        }
    }
    (!full.is_empty()).then(|| {
        (
            reason::ADDRESS_POOL_EXHAUSTED,
            format!("no address left for members on node(s) {}", full.join(", ")),
        )
    })
}

/// Stage: each hosting node's share: the WireGuard interface, its peers (the other
/// hosting nodes, with their prefix, and the admitted external hosts, with their single
/// address), the local members, and the route of the whole cidr to WireGuard.
fn node_states(
    index: &Index,
    target: &ObjectKey,
    spec: &Spec,
    interface: &str,
    port: u16,
    prefixes: &BTreeMap<String, IpNet>,
    entries: &[Entry<'_>],
) -> BTreeMap<String, ServiceState> {
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
    prefixes
        .iter()
        .map(|(node, prefix)| {
            let mut peers: Vec<Peer> = node_peers
                .iter()
                .filter(|(name, _)| name != node)
                .map(|(_, p)| p.clone())
                .chain(external_peers.iter().cloned())
                .collect();
            peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
            let mut members: Vec<Member> = entries
                .iter()
                .filter(|e| e.admitted)
                .filter_map(|e| {
                    let Workload::Pod { pod, interface } = &e.kind else {
                        return None;
                    };
                    (pod.node.as_deref() == Some(node.as_str())).then_some(())?;
                    let locator = match &pod.netns {
                        Some(path) => netns_locator::Locator::Path(path.clone()),
                        None => netns_locator::Locator::PodUid(pod.uid.clone()),
                    };
                    Some(Member {
                        id: format!("{}/{}", pod.namespace, pod.name),
                        netns: Some(NetnsLocator {
                            locator: Some(locator),
                        }),
                        interface_name: interface.clone(),
                        host_interface_name: String::new(),
                        address: e.address?.to_string(),
                    })
                })
                .collect();
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
            };
            (node.clone(), state)
        })
        .collect()
}

/// Stage: the status of every Endpoint naming the target.
fn endpoint_statuses(
    index: &Index,
    target: &ObjectKey,
    entries: &[Entry<'_>],
    problems: &BTreeMap<ObjectKey, Problem>,
) -> BTreeMap<ObjectKey, EndpointStatus> {
    index
        .endpoints_for(target)
        .map(|(key, e)| {
            let mut members: Vec<MemberStatus> = entries
                .iter()
                .filter(|entry| &entry.endpoint == key)
                .map(|entry| MemberStatus {
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
                })
                .collect();
            members.sort_by(|a, b| a.workload.cmp(&b.workload));
            let admitted = members
                .iter()
                .filter(|m| m.admitted && m.address.is_some())
                .count();
            let rejected = members.iter().filter(|m| !m.admitted).count();
            let (ready, why, message): (bool, &str, String) = match problems.get(key) {
                Some((why, message)) => (false, why, message.clone()),
                None => match members.iter().find(|m| !m.admitted || m.address.is_none()) {
                    Some(m) if !m.admitted => (
                        false,
                        if m.reason == reason::ADMITTED {
                            reason::NOT_ADMITTED
                        } else {
                            m.reason.as_str()
                        },
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
            let status = EndpointStatus {
                observed_generation: generation,
                conditions: status::ready(ready, why, message, generation, previous, &index.now),
                admitted_count: count(admitted),
                rejected_count: count(rejected),
                members,
            };
            (key.clone(), status)
        })
        .collect()
}

/// Stage: the status of every Admission governing the target.
fn admission_statuses(
    index: &Index,
    target: &ObjectKey,
    service_problem: Option<(&'static str, &str)>,
    invalid_rules: &[InvalidRule],
    counts: &BTreeMap<ObjectKey, (i32, i32)>,
) -> BTreeMap<ObjectKey, AdmissionStatus> {
    index
        .admissions_for(target)
        .map(|a| {
            let key = ObjectKey::of(&a.metadata);
            let invalid = invalid_rules.iter().find(|r| r.admission == key);
            let (ready, why, message) = match (service_problem, invalid) {
                (Some((why, message)), _) => (false, why, message.to_owned()),
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
