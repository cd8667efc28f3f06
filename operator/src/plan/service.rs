//! Planning every NetworkService, then assembling the per-node states.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use wireway_crds::conditions::reason;
use wireway_crds::{
    Admission, AdmissionStatus, Cidr, Endpoint, EndpointStatus, MemberStatus, NetworkService,
    NetworkServiceStatus, NodePrefix, SpiffeId, TrustDomain,
};
use wireway_proto::{Member, NetnsLocator, NodeState, Peer, Route, ServiceState, netns_locator};

use super::admission::{Candidate, Decision, Policy};
use super::world::{Labels, Pod, World};
use super::{ObjectKey, Plan, ipam, names, status};

/// First port handed out to services that do not pin one.
pub const FIRST_LISTEN_PORT: u16 = 51820;
/// WireGuard's overhead over the underlay: 80 bytes covers an IPv6 outer header.
pub const WIREGUARD_OVERHEAD: u32 = 80;
/// MTU assumed for an underlay that did not report its own.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;
/// Routing tables of services are this plus the service's listen port (unique per
/// service), far from the tables distributions and CNIs use.
pub const ROUTE_TABLE_BASE: u32 = 0x5757_0000;

/// A NetworkService's spec, parsed.
#[derive(Debug, Clone)]
struct Spec {
    cidr: Cidr,
    pool: Cidr,
    node_prefix_len: u8,
    mtu: Option<u32>,
    listen_port: Option<u16>,
}

fn parse_spec(svc: &NetworkService) -> Result<Spec, String> {
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

/// One workload asking to join one service through one Endpoint.
#[derive(Debug, Clone)]
struct Entry<'w> {
    endpoint: ObjectKey,
    workload: String,
    identity: Result<SpiffeId, String>,
    kind: Workload<'w>,
}

#[derive(Debug, Clone)]
enum Workload<'w> {
    Pod { pod: &'w Pod, interface: String },
    External { endpoint: &'w Endpoint },
}

/// What became of an entry.
#[derive(Debug, Clone)]
struct Outcome {
    admitted: bool,
    reason: &'static str,
    message: String,
    address: Option<IpAddr>,
}

/// Gives each claimant a value unique among all of them: its pinned value (spec) if no
/// claimant with a stronger claim pins it too, else its recorded value (status) if free,
/// else the first free candidate. A pinned value recorded by its claimant is the strongest
/// claim (it is in use), then key order decides. Losers of a pinned value get `Err`.
fn assign_unique<V: Ord + Clone, I: Iterator<Item = V>>(
    claims: &[(ObjectKey, Option<V>, Option<V>)],
    candidates: impl Fn(&ObjectKey) -> I,
) -> BTreeMap<ObjectKey, Result<V, String>> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    let mut pinned: Vec<&(ObjectKey, Option<V>, Option<V>)> =
        claims.iter().filter(|c| c.1.is_some()).collect();
    pinned.sort_by_key(|(key, pin, recorded)| (pin != recorded, key.clone()));
    for (key, pin, _) in pinned {
        if let Some(pin) = pin {
            if taken.insert(pin.clone()) {
                out.insert(key.clone(), Ok(pin.clone()));
            } else {
                out.insert(
                    key.clone(),
                    Err("already used by another NetworkService".to_owned()),
                );
            }
        }
    }
    for (key, _, recorded) in claims.iter().filter(|c| c.1.is_none()) {
        if let Some(recorded) = recorded
            && taken.insert(recorded.clone())
        {
            out.insert(key.clone(), Ok(recorded.clone()));
        }
    }
    for (key, _, _) in claims {
        if out.contains_key(key) {
            continue;
        }
        if let Some(value) = candidates(key).find(|v| !taken.contains(v)) {
            taken.insert(value.clone());
            out.insert(key.clone(), Ok(value));
        } else {
            out.insert(key.clone(), Err("no free value left".to_owned()));
        }
    }
    out
}

/// Everything about one service the node assembly needs.
#[derive(Debug)]
struct Planned<'w> {
    key: ObjectKey,
    spec: Spec,
    interface: String,
    listen_port: u16,
    mtu: u32,
    prefixes: BTreeMap<String, IpNet>,
    /// Admitted pod members with an address: (member id, pod, inside interface, address).
    members: Vec<(String, &'w Pod, String, IpAddr)>,
    /// Admitted external hosts: (endpoint key, endpoint, address).
    externals: Vec<(ObjectKey, &'w Endpoint, IpAddr)>,
}

pub fn plan_services(world: &World) -> Plan {
    let trust_domain: Result<TrustDomain, _> = world.trust_domain.parse();
    let namespace_labels: BTreeMap<&str, &Labels> = world
        .namespaces
        .iter()
        .map(|n| (n.name.as_str(), &n.labels))
        .collect();
    let empty = Labels::new();
    let mut pods_by_namespace: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in &world.pods {
        pods_by_namespace
            .entry(pod.namespace.as_str())
            .or_default()
            .push(pod);
    }
    for pods in pods_by_namespace.values_mut() {
        pods.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
    }

    let mut services: Vec<&NetworkService> = world.network_services.iter().collect();
    services.sort_by_key(|s| ObjectKey::of(&s.metadata));
    let mut endpoints: Vec<&Endpoint> = world.endpoints.iter().collect();
    endpoints.sort_by_key(|e| ObjectKey::of(&e.metadata));
    let mut admissions_by_service: BTreeMap<ObjectKey, Vec<&Admission>> = BTreeMap::new();
    for a in &world.admissions {
        let ns = a.metadata.namespace.clone().unwrap_or_default();
        admissions_by_service
            .entry(ObjectKey::new(&ns, &a.spec.network_service))
            .or_default()
            .push(a);
    }

    let specs: BTreeMap<ObjectKey, Result<Spec, String>> = services
        .iter()
        .map(|s| (ObjectKey::of(&s.metadata), parse_spec(s)))
        .collect();
    let valid: Vec<&NetworkService> = services
        .iter()
        .copied()
        .filter(|s| specs[&ObjectKey::of(&s.metadata)].is_ok())
        .collect();
    let ports = assign_unique(
        &valid
            .iter()
            .map(|s| {
                let key = ObjectKey::of(&s.metadata);
                let pin = specs[&key].as_ref().ok().and_then(|spec| spec.listen_port);
                let rec = s
                    .status
                    .as_ref()
                    .and_then(|st| st.listen_port)
                    .and_then(|p| u16::try_from(p).ok());
                (key, pin, rec)
            })
            .collect::<Vec<_>>(),
        |_| FIRST_LISTEN_PORT..=u16::MAX,
    );
    let interfaces = assign_unique(
        &valid
            .iter()
            .map(|s| {
                let rec = s
                    .status
                    .as_ref()
                    .and_then(|st| st.interface_name.clone())
                    .filter(|n| {
                        n.starts_with(names::WIREGUARD_PREFIX)
                            && n.len() <= names::MAX_INTERFACE_NAME
                    });
                (ObjectKey::of(&s.metadata), None, rec)
            })
            .collect::<Vec<_>>(),
        |key| names::wireguard_candidates(&key.namespace, &key.name),
    );

    let mut plan = Plan::default();
    let mut endpoint_members: BTreeMap<ObjectKey, Vec<MemberStatus>> = BTreeMap::new();
    let mut endpoint_problems: BTreeMap<ObjectKey, (bool, &'static str, String)> = BTreeMap::new();
    let mut admission_counts: BTreeMap<ObjectKey, (i32, i32)> = BTreeMap::new();
    let mut planned: Vec<Planned<'_>> = Vec::new();

    // Endpoints by the service they name.
    let mut by_service: BTreeMap<ObjectKey, Vec<&Endpoint>> = BTreeMap::new();
    for e in &endpoints {
        let ns = e.metadata.namespace.clone().unwrap_or_default();
        let target_ns = e
            .spec
            .network_service
            .namespace
            .clone()
            .unwrap_or_else(|| ns.clone());
        let target = ObjectKey::new(&target_ns, &e.spec.network_service.name);
        let key = ObjectKey::of(&e.metadata);
        match &specs.get(&target) {
            None => {
                endpoint_problems.insert(
                    key,
                    (
                        false,
                        reason::NETWORK_SERVICE_NOT_FOUND,
                        format!("NetworkService {target} does not exist"),
                    ),
                );
            }
            Some(Err(_)) => {
                endpoint_problems.insert(
                    key,
                    (
                        false,
                        reason::INVALID_SPEC,
                        format!("NetworkService {target} has an invalid spec"),
                    ),
                );
            }
            Some(Ok(_)) => by_service.entry(target).or_default().push(e),
        }
    }

    for svc in &services {
        let key = ObjectKey::of(&svc.metadata);
        let generation = svc.metadata.generation;
        let previous = svc.status.clone().unwrap_or_default();
        let spec = match &specs[&key] {
            Ok(spec) => spec.clone(),
            Err(message) => {
                plan.network_services.insert(
                    key.clone(),
                    NetworkServiceStatus {
                        observed_generation: generation,
                        conditions: status::ready(
                            false,
                            reason::INVALID_SPEC,
                            message.clone(),
                            generation,
                            &previous.conditions,
                            &world.now,
                        ),
                        ..previous.clone()
                    },
                );
                continue;
            }
        };
        let (policy, invalid_rules) = Policy::compile(
            admissions_by_service
                .get(&key)
                .into_iter()
                .flatten()
                .copied(),
        );
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        let port = match &ports[&key] {
            Ok(p) => *p,
            Err(e) => {
                problems.push((reason::INVALID_SPEC, format!("spec.listenPort: {e}")));
                0
            }
        };
        let interface = interfaces[&key].clone().unwrap_or_default();

        // Who asks to join, through which Endpoint.
        let mut entries: Vec<Entry<'_>> = Vec::new();
        for e in by_service.get(&key).into_iter().flatten() {
            let ekey = ObjectKey::of(&e.metadata);
            match (&e.spec.pod_selector, &e.spec.external) {
                (Some(sel), None) => match super::selector::matches(sel, &empty) {
                    Err(err) => {
                        endpoint_problems.insert(
                            ekey,
                            (
                                false,
                                reason::INVALID_SPEC,
                                format!("spec.podSelector: {err}"),
                            ),
                        );
                    }
                    Ok(_) => {
                        let interface = e
                            .spec
                            .interface_name
                            .clone()
                            .unwrap_or_else(|| names::default_member_interface(&key.name));
                        for pod in pods_by_namespace
                            .get(ekey.namespace.as_str())
                            .into_iter()
                            .flatten()
                        {
                            if pod.node.is_none()
                                || !super::selector::matches(sel, &pod.labels).unwrap_or(false)
                            {
                                continue;
                            }
                            let identity = match &trust_domain {
                                Ok(td) => {
                                    SpiffeId::for_pod(td, &pod.namespace, &pod.service_account)
                                        .map_err(|e| e.to_string())
                                }
                                Err(e) => Err(format!("the cluster's trust domain: {e}")),
                            };
                            entries.push(Entry {
                                endpoint: ekey.clone(),
                                workload: pod.name.clone(),
                                identity,
                                kind: Workload::Pod {
                                    pod,
                                    interface: interface.clone(),
                                },
                            });
                        }
                    }
                },
                (None, Some(ext)) => {
                    entries.push(Entry {
                        endpoint: ekey.clone(),
                        workload: ekey.name.clone(),
                        identity: ext.spiffe_id.parse().map_err(
                            |e: wireway_crds::SpiffeIdError| format!("spec.external.spiffeId: {e}"),
                        ),
                        kind: Workload::External { endpoint: e },
                    })
                }
                _ => {
                    endpoint_problems.insert(
                        ekey,
                        (
                            false,
                            reason::INVALID_SPEC,
                            "exactly one of podSelector or external must be set".into(),
                        ),
                    );
                }
            }
        }

        // Admission.
        let mut outcomes: Vec<Outcome> = entries
            .iter()
            .map(|entry| {
                let decision = match &entry.identity {
                    Err(e) => Decision {
                        admitted: false,
                        reason: reason::INVALID_SPEC,
                        message: e.clone(),
                        by: None,
                    },
                    Ok(identity) => {
                        let local_namespace = match &entry.kind {
                            Workload::Pod { pod, .. } => Some((
                                pod.namespace.as_str(),
                                namespace_labels
                                    .get(pod.namespace.as_str())
                                    .copied()
                                    .unwrap_or(&empty),
                            )),
                            Workload::External { .. } => None,
                        };
                        policy.decide(
                            Candidate {
                                identity,
                                local_namespace,
                            },
                            &key.namespace,
                        )
                    }
                };
                if let Some(by) = &decision.by {
                    let counts = admission_counts.entry(by.clone()).or_default();
                    if decision.admitted {
                        counts.0 += 1
                    } else {
                        counts.1 += 1
                    }
                }
                Outcome {
                    admitted: decision.admitted,
                    reason: decision.reason,
                    message: decision.message,
                    address: None,
                }
            })
            .collect();

        // A pod attached twice (two Endpoints select it) is one member: the first Endpoint
        // in name order owns it, the others point at it.
        let mut first_entry: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            if let Workload::Pod { pod, .. } = entry.kind
                && outcomes[i].admitted
                && let Some(&owner) = first_entry.get(&(pod.namespace.clone(), pod.name.clone()))
            {
                outcomes[i].admitted = false;
                outcomes[i].message = format!(
                    "already a member through Endpoint {}",
                    entries[owner].endpoint
                );
            } else if let Workload::Pod { pod, .. } = entry.kind
                && outcomes[i].admitted
            {
                first_entry.insert((pod.namespace.clone(), pod.name.clone()), i);
            }
        }

        // External hosts: their address must lie in the cidr and be theirs alone, and their
        // key must differ from every node's and every other external's.
        let node_keys: BTreeSet<&str> = world
            .nodes
            .iter()
            .filter_map(|n| n.public_key.as_deref())
            .collect();
        let mut external_addresses: BTreeSet<IpAddr> = BTreeSet::new();
        let mut external_keys: BTreeSet<&str> = BTreeSet::new();
        for (i, entry) in entries.iter().enumerate() {
            let Workload::External { endpoint } = entry.kind else {
                continue;
            };
            if !outcomes[i].admitted {
                continue;
            }
            let Some(ext) = endpoint.spec.external.as_ref() else {
                continue;
            };
            let rejection = match ext.address.parse::<IpAddr>() {
                Err(_) => Some((
                    reason::INVALID_SPEC,
                    format!(
                        "spec.external.address {:?} is not an IP address",
                        ext.address
                    ),
                )),
                Ok(addr) if !spec.cidr.contains_addr(addr) => Some((
                    reason::INVALID_SPEC,
                    format!(
                        "spec.external.address {addr} lies outside the service's cidr {}",
                        spec.cidr
                    ),
                )),
                Ok(addr) if !external_addresses.insert(addr) => Some((
                    reason::OVERLAPPING_PREFIX,
                    format!("address {addr} is already used by another external endpoint"),
                )),
                Ok(addr) => {
                    if node_keys.contains(ext.public_key.as_str())
                        || !external_keys.insert(ext.public_key.as_str())
                    {
                        external_addresses.remove(&addr);
                        Some((reason::INVALID_SPEC, "spec.external.publicKey is already used by another peer of the service".to_owned()))
                    } else {
                        outcomes[i].address = Some(addr);
                        None
                    }
                }
            };
            if let Some((r, message)) = rejection {
                outcomes[i] = Outcome {
                    admitted: false,
                    reason: r,
                    message,
                    address: None,
                };
            }
        }

        // Node prefixes for the nodes hosting admitted pod members.
        let hosting: BTreeSet<&str> = entries
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.admitted)
            .filter_map(|(e, _)| match e.kind {
                Workload::Pod { pod, .. } => pod.node.as_deref(),
                Workload::External { .. } => None,
            })
            .collect();
        let recorded_prefixes: BTreeMap<String, IpNet> = previous
            .node_prefixes
            .iter()
            .filter_map(|np| Some((np.node.clone(), np.prefix.parse::<Cidr>().ok()?.net())))
            .collect();
        let avoid: Vec<IpAddr> = external_addresses.iter().copied().collect();
        let hosting_list: Vec<&str> = hosting.iter().copied().collect();
        let prefixes = ipam::node_prefixes(
            &spec.pool.net(),
            spec.node_prefix_len,
            &hosting_list,
            &recorded_prefixes,
            &avoid,
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
        // An external address inside a node's prefix would be routed to that node.
        for (i, entry) in entries.iter().enumerate() {
            if let (Workload::External { .. }, Some(addr)) = (&entry.kind, outcomes[i].address)
                && let Some((node, _)) = prefixes.allocated.iter().find(|(_, p)| p.contains(&addr))
            {
                outcomes[i] = Outcome {
                    admitted: false,
                    reason: reason::OVERLAPPING_PREFIX,
                    message: format!("address {addr} lies inside the prefix of node {node}"),
                    address: None,
                };
            }
        }

        // Member addresses, node by node, sticky by (namespace, pod name, node).
        let recorded_addresses: BTreeMap<(String, String, String), IpAddr> = endpoints
            .iter()
            .filter_map(|e| Some((e.metadata.namespace.clone()?, e.status.as_ref()?)))
            .flat_map(|(ns, st)| {
                st.members.iter().filter_map(move |m| {
                    Some((
                        (ns.clone(), m.workload.clone(), m.node.clone()?),
                        m.address.as_deref()?.parse().ok()?,
                    ))
                })
            })
            .collect();
        let mut per_node: BTreeMap<&str, Vec<(usize, Option<IpAddr>)>> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            if let Workload::Pod { pod, .. } = entry.kind
                && outcomes[i].admitted
                && let Some(node) = pod.node.as_deref()
            {
                let rec = recorded_addresses
                    .get(&(pod.namespace.clone(), pod.name.clone(), node.to_owned()))
                    .copied();
                per_node.entry(node).or_default().push((i, rec));
            }
        }
        let mut exhausted_nodes = Vec::new();
        for (node, members) in &per_node {
            let Some(prefix) = prefixes.allocated.get(*node) else {
                for (i, _) in members {
                    outcomes[*i].message = format!(
                        "{}; no prefix is left for node {node}",
                        outcomes[*i].message
                    );
                }
                continue;
            };
            for (i, addr) in ipam::addresses(prefix, members) {
                outcomes[i].address = addr;
                if addr.is_none() {
                    exhausted_nodes.push(*node);
                }
            }
        }
        if !exhausted_nodes.is_empty() {
            exhausted_nodes.dedup();
            problems.push((
                reason::ADDRESS_POOL_EXHAUSTED,
                format!(
                    "the prefix of node(s) {} has no address left",
                    exhausted_nodes.join(", ")
                ),
            ));
        }

        // Endpoint statuses for this service's entries.
        for (entry, outcome) in entries.iter().zip(&outcomes) {
            let node = match entry.kind {
                Workload::Pod { pod, .. } => pod.node.clone(),
                Workload::External { .. } => None,
            };
            endpoint_members
                .entry(entry.endpoint.clone())
                .or_default()
                .push(MemberStatus {
                    workload: entry.workload.clone(),
                    node,
                    identity: entry
                        .identity
                        .as_ref()
                        .map_or_else(|_| String::new(), ToString::to_string),
                    admitted: outcome.admitted,
                    reason: outcome.reason.to_owned(),
                    message: outcome.message.clone(),
                    address: outcome.address.map(|a| a.to_string()),
                });
        }

        let members: Vec<(String, &Pod, String, IpAddr)> = entries
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.admitted)
            .filter_map(|(e, o)| match &e.kind {
                Workload::Pod { pod, interface } => Some((
                    format!("{}/{}", pod.namespace, pod.name),
                    *pod,
                    interface.clone(),
                    o.address?,
                )),
                Workload::External { .. } => None,
            })
            .collect();
        let externals: Vec<(ObjectKey, &Endpoint, IpAddr)> = entries
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| o.admitted)
            .filter_map(|(e, o)| match e.kind {
                Workload::External { endpoint } => Some((e.endpoint.clone(), endpoint, o.address?)),
                Workload::Pod { .. } => None,
            })
            .collect();
        let nodes_with_members: BTreeSet<&str> =
            members.iter().filter_map(|m| m.1.node.as_deref()).collect();
        let prefixes: BTreeMap<String, IpNet> = prefixes
            .allocated
            .into_iter()
            .filter(|(n, _)| nodes_with_members.contains(n.as_str()))
            .collect();
        let mtu = spec.mtu.unwrap_or_else(|| {
            world
                .nodes
                .iter()
                .filter(|n| prefixes.contains_key(&n.name))
                .map(|n| n.underlay_mtu.unwrap_or(DEFAULT_UNDERLAY_MTU))
                .min()
                .unwrap_or(DEFAULT_UNDERLAY_MTU)
                .saturating_sub(WIREGUARD_OVERHEAD)
        });

        for invalid in &invalid_rules {
            problems.push((
                reason::INVALID_SPEC,
                format!("Admission {}: {}", invalid.admission, invalid.message),
            ));
        }
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
                    "{} members on {} nodes",
                    members.len() + externals.len(),
                    prefixes.len()
                ),
            ),
        };
        plan.network_services.insert(
            key.clone(),
            NetworkServiceStatus {
                observed_generation: generation,
                conditions: status::ready(
                    ready,
                    why,
                    message,
                    generation,
                    &previous.conditions,
                    &world.now,
                ),
                listen_port: (port != 0).then_some(i32::from(port)),
                interface_name: Some(interface.clone()),
                node_count: i32::try_from(prefixes.len()).unwrap_or(i32::MAX),
                member_count: i32::try_from(members.len() + externals.len()).unwrap_or(i32::MAX),
                node_prefixes: prefixes
                    .iter()
                    .map(|(node, p)| NodePrefix {
                        node: node.clone(),
                        prefix: p.to_string(),
                    })
                    .collect(),
            },
        );
        if port != 0 {
            planned.push(Planned {
                key,
                spec,
                interface,
                listen_port: port,
                mtu,
                prefixes,
                members,
                externals,
            });
        }
    }

    plan.nodes = assemble_nodes(world, &planned);
    plan.endpoints = endpoint_statuses(world, &endpoints, endpoint_members, endpoint_problems);
    plan.admissions = admission_statuses(world, &specs, admission_counts);
    plan
}

/// Builds every node's state from the planned services.
fn assemble_nodes(world: &World, planned: &[Planned<'_>]) -> BTreeMap<String, NodeState> {
    let mut nodes: BTreeMap<String, NodeState> = world
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                NodeState {
                    node: n.name.clone(),
                    version: 0,
                    services: Vec::new(),
                },
            )
        })
        .collect();
    let world_nodes: BTreeMap<&str, &super::Node> =
        world.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut host_veths: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for svc in planned {
        let service_name = svc.key.to_string();
        for (node, prefix) in &svc.prefixes {
            let mut peers: Vec<Peer> = svc
                .prefixes
                .iter()
                .filter(|(other, _)| *other != node)
                .filter_map(|(other, other_prefix)| {
                    let n = world_nodes.get(other.as_str())?;
                    Some(Peer {
                        name: other.clone(),
                        public_key: n.public_key.clone()?,
                        endpoint: SocketAddr::new(n.underlay?, svc.listen_port).to_string(),
                        allowed_ips: vec![other_prefix.to_string()],
                        persistent_keepalive: 0,
                    })
                })
                .collect();
            for (key, endpoint, addr) in &svc.externals {
                let Some(ext) = endpoint.spec.external.as_ref() else {
                    continue;
                };
                peers.push(Peer {
                    name: key.to_string(),
                    public_key: ext.public_key.clone(),
                    endpoint: ext.endpoint.clone().unwrap_or_default(),
                    allowed_ips: vec![IpNet::from(*addr).to_string()],
                    persistent_keepalive: ext
                        .persistent_keepalive
                        .and_then(|k| u32::try_from(k).ok())
                        .unwrap_or(0),
                });
            }
            peers.sort_by(|a, b| a.public_key.cmp(&b.public_key));
            let taken = host_veths.entry(node.clone()).or_default();
            let mut members: Vec<Member> = svc
                .members
                .iter()
                .filter(|(_, pod, _, _)| pod.node.as_deref() == Some(node.as_str()))
                .map(|(id, pod, interface, addr)| {
                    let host = names::host_veth_candidates(&service_name, id)
                        .find(|n| !taken.contains(n))
                        .unwrap_or_default();
                    taken.insert(host.clone());
                    let locator = match &pod.netns {
                        Some(path) => netns_locator::Locator::Path(path.clone()),
                        None => netns_locator::Locator::PodUid(pod.uid.clone()),
                    };
                    Member {
                        id: id.clone(),
                        netns: Some(NetnsLocator {
                            locator: Some(locator),
                        }),
                        interface_name: interface.clone(),
                        host_interface_name: host,
                        address: addr.to_string(),
                    }
                })
                .collect();
            members.sort_by(|a, b| a.id.cmp(&b.id));
            let mut routes: Vec<Route> = std::iter::once(Route {
                destination: svc.spec.cidr.to_string(),
                device: svc.interface.clone(),
            })
            .chain(members.iter().map(|m| {
                Route {
                    destination: m
                        .address
                        .parse::<IpAddr>()
                        .map(|a| IpNet::from(a).to_string())
                        .unwrap_or_default(),
                    device: m.host_interface_name.clone(),
                }
            }))
            .collect();
            routes.sort_by(|a, b| a.destination.cmp(&b.destination));
            let state = nodes.entry(node.clone()).or_insert_with(|| NodeState {
                node: node.clone(),
                version: 0,
                services: Vec::new(),
            });
            state.services.push(ServiceState {
                name: service_name.clone(),
                interface_name: svc.interface.clone(),
                listen_port: u32::from(svc.listen_port),
                mtu: svc.mtu,
                cidr: svc.spec.cidr.to_string(),
                node_prefix: prefix.to_string(),
                route_table: ROUTE_TABLE_BASE + u32::from(svc.listen_port),
                members,
                peers,
                routes,
            });
        }
    }
    for state in nodes.values_mut() {
        state.services.sort_by(|a, b| a.name.cmp(&b.name));
    }
    nodes
}

fn endpoint_statuses(
    world: &World,
    endpoints: &[&Endpoint],
    mut members: BTreeMap<ObjectKey, Vec<MemberStatus>>,
    problems: BTreeMap<ObjectKey, (bool, &'static str, String)>,
) -> BTreeMap<ObjectKey, EndpointStatus> {
    endpoints
        .iter()
        .map(|e| {
            let key = ObjectKey::of(&e.metadata);
            let mut list = members.remove(&key).unwrap_or_default();
            list.sort_by(|a, b| a.workload.cmp(&b.workload));
            let admitted = list
                .iter()
                .filter(|m| m.admitted && m.address.is_some())
                .count();
            let rejected = list.iter().filter(|m| !m.admitted).count();
            let (ready, why, message) = match problems.get(&key) {
                Some((ready, why, message)) => (*ready, *why, message.clone()),
                None => match list.iter().find(|m| !m.admitted || m.address.is_none()) {
                    Some(m) if !m.admitted => (
                        false,
                        if m.reason == reason::ADMITTED {
                            reason::NOT_ADMITTED
                        } else {
                            static_reason(&m.reason)
                        },
                        format!(
                            "{rejected} of {} workloads not admitted; first: {}: {}",
                            list.len(),
                            m.workload,
                            m.message
                        ),
                    ),
                    Some(m) => (
                        false,
                        reason::ADDRESS_POOL_EXHAUSTED,
                        format!("{} has no address: {}", m.workload, m.message),
                    ),
                    None if list.is_empty() => (
                        true,
                        reason::NO_MEMBERS,
                        "the Endpoint selects no scheduled pod".to_owned(),
                    ),
                    None => (
                        true,
                        reason::READY,
                        format!("{admitted} workloads admitted"),
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
                conditions: status::ready(ready, why, message, generation, previous, &world.now),
                admitted_count: i32::try_from(admitted).unwrap_or(i32::MAX),
                rejected_count: i32::try_from(rejected).unwrap_or(i32::MAX),
                members: list,
            };
            (key, status)
        })
        .collect()
}

/// The reason constant matching a recorded reason string (they are all constants).
fn static_reason(r: &str) -> &'static str {
    [
        reason::DENIED,
        reason::NOT_ADMITTED,
        reason::INVALID_SPEC,
        reason::OVERLAPPING_PREFIX,
    ]
    .into_iter()
    .find(|c| *c == r)
    .unwrap_or(reason::NOT_ADMITTED)
}

fn admission_statuses(
    world: &World,
    specs: &BTreeMap<ObjectKey, Result<Spec, String>>,
    counts: BTreeMap<ObjectKey, (i32, i32)>,
) -> BTreeMap<ObjectKey, AdmissionStatus> {
    world
        .admissions
        .iter()
        .map(|a| {
            let key = ObjectKey::of(&a.metadata);
            let service = ObjectKey::new(&key.namespace, &a.spec.network_service);
            let (_, invalid) = Policy::compile([a]);
            let (ready, why, message) = if !specs.contains_key(&service) {
                (
                    false,
                    reason::NETWORK_SERVICE_NOT_FOUND,
                    format!("NetworkService {service} does not exist"),
                )
            } else if let Some(first) = invalid.first() {
                (false, reason::INVALID_SPEC, first.message.clone())
            } else {
                (true, reason::READY, "rules in effect".to_owned())
            };
            let (admitted, denied) = counts.get(&key).copied().unwrap_or_default();
            let previous: &[Condition] = a
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            let generation = a.metadata.generation;
            let status = AdmissionStatus {
                observed_generation: generation,
                conditions: status::ready(ready, why, message, generation, previous, &world.now),
                admitted_count: admitted,
                denied_count: denied,
            };
            (key, status)
        })
        .collect()
}
