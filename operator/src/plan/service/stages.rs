//! The decisions of planning one target, one stage each, in the order
//! [`plan_target`](super::plan_target) runs them. Each stage reads the World and what the
//! stages before it decided, and records its decisions on the entries (admitted or not,
//! why, which address) or returns them; a problem that keeps the service from being Ready
//! is added to the problems.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use wireway_crds::conditions::reason;
use wireway_crds::{Cidr, Endpoint, NetworkService, SpiffeId};

use super::{Assigned, Entry, Problem, Spec, SpecError, Workload};
use crate::plan::admission::{Candidate, Decision, InvalidRule, Policy};
use crate::plan::grants::{self, Claim};
use crate::plan::index::{Index, endpoint_target};
use crate::plan::node_keys::Refused;
use crate::plan::world::{Labels, Pod};
use crate::plan::{ObjectKey, bounds, ipam, names, selector};

/// Parses a spec the API server should have validated; what it let through (an object
/// stored before a rule existed) becomes an InvalidSpec condition.
pub fn parse_spec(svc: &NetworkService) -> Result<Spec, SpecError> {
    let cidr: Cidr = svc.spec.cidr.parse().map_err(SpecError::Cidr)?;
    let pool = match &svc.spec.cluster_prefix {
        Some(p) => {
            let pool: Cidr = p.parse().map_err(SpecError::ClusterPrefix)?;
            if !cidr.contains(&pool) {
                return Err(SpecError::SliceOutside { pool, cidr });
            }
            pool
        }
        None => cidr,
    };
    let node_prefix_len = u8::try_from(svc.spec.node_prefix_length)
        .ok()
        .filter(|len| (pool.prefix_len()..=pool.max_prefix_len()).contains(len))
        .ok_or(SpecError::NodePrefixLength {
            length: svc.spec.node_prefix_length,
            min: pool.prefix_len(),
            max: pool.max_prefix_len(),
        })?;
    Ok(Spec {
        cidr,
        pool,
        node_prefix_len,
        mtu: svc.spec.mtu.and_then(|m| u32::try_from(m).ok()),
        listen_port: svc.spec.listen_port.and_then(|p| u16::try_from(p).ok()),
    })
}

/// Stage: the spec, and what was assigned to the service across all services; or why the
/// service cannot be planned.
pub(super) fn parse<'a>(
    svc: &NetworkService,
    assigned: Option<&'a Assigned>,
) -> Result<(Spec, &'a Assigned), String> {
    let spec = parse_spec(svc).map_err(|e| e.to_string())?;
    let assigned = assigned.ok_or("no WireGuard interface name could be assigned")?;
    Ok((spec, assigned))
}

/// Stage: the spec keeps within the administrator's bounds (service pools, reserved
/// ranges, listen ports), or the service is refused.
pub(super) fn within_bounds(
    index: &Index,
    svc: &NetworkService,
    spec: &Spec,
) -> Result<(), Problem> {
    let working = super::holds_allocations(svc);
    bounds::check(index, &spec.cidr, spec.listen_port, working)
        .map_err(|refusal| Problem::new(refusal.reason, refusal.message))
}

/// Stage: the Admissions' rules that do not compile keep the service from being Ready.
pub(super) fn rule_problems(invalid_rules: &[InvalidRule]) -> Vec<Problem> {
    invalid_rules
        .iter()
        .map(|r| {
            let message = format!("Admission {}: {}", r.admission, r.message);
            Problem::new(reason::INVALID_SPEC, message)
        })
        .collect()
}

/// Stage: the listen port assigned, or the problem of not having one (then no node gets
/// the service).
pub(super) fn listen_port(assigned: &Assigned, problems: &mut Vec<Problem>) -> Option<u16> {
    match &assigned.listen_port {
        Ok(port) => Some(*port),
        Err(e) => {
            problems.push(Problem::new(
                reason::INVALID_SPEC,
                format!("spec.listenPort: {e}"),
            ));
            None
        }
    }
}

/// Stage: the workloads each Endpoint of the target attaches, and the Endpoints that
/// cannot attach anything.
pub(super) fn gather<'i>(
    index: &'i Index,
    target: &ObjectKey,
) -> (Vec<Entry<'i>>, BTreeMap<ObjectKey, Problem>) {
    let mut entries = Vec::new();
    let mut problems = BTreeMap::new();
    for (key, e) in index.endpoints_for(target) {
        match (&e.spec.pod_selector, &e.spec.external) {
            (Some(_), None) => match pod_selection(target, e) {
                Some(Ok((sel, interface))) => {
                    let selected = index.pods_in(&key.namespace).filter(|p| selects(sel, p));
                    entries.extend(selected.map(|pod| pod_entry(index, key, &interface, pod)));
                }
                Some(Err(problem)) => {
                    problems.insert(key.clone(), problem);
                }
                None => {}
            },
            (None, Some(ext)) => {
                let identity = ext
                    .spiffe_id
                    .parse()
                    .map_err(|e: wireway_crds::SpiffeIdError| {
                        format!("spec.external.spiffeId: {e}")
                    });
                entries.push(Entry::new(
                    key.clone(),
                    key.name.clone(),
                    identity,
                    Workload::External { endpoint: e },
                ));
            }
            _ => {
                let message = "exactly one of podSelector or external must be set";
                problems.insert(key.clone(), Problem::new(reason::INVALID_SPEC, message));
            }
        }
    }
    (entries, problems)
}

/// The entries one pod makes through the Endpoints of `target` that select it, in the
/// order [`gather`] puts them (none while it is unscheduled).
pub(super) fn gather_pod<'i>(index: &'i Index, target: &ObjectKey, pod: &'i Pod) -> Vec<Entry<'i>> {
    index
        .endpoints_for(target)
        .filter(|(key, _)| key.namespace == pod.namespace)
        .filter_map(|(key, e)| {
            let (sel, interface) = pod_selection(target, e)?.ok()?;
            selects(sel, pod).then(|| pod_entry(index, key, &interface, pod))
        })
        .collect()
}

/// An Endpoint's pod selector and the interface its members get; `None` when it does not
/// attach pods, the problem when its selector is invalid.
fn pod_selection<'e>(
    target: &ObjectKey,
    e: &'e Endpoint,
) -> Option<Result<(&'e LabelSelector, String), Problem>> {
    let sel = e
        .spec
        .pod_selector
        .as_ref()
        .filter(|_| e.spec.external.is_none())?;
    if let Err(err) = selector::matches(sel, &Labels::new()) {
        let message = format!("spec.podSelector: {err}");
        return Some(Err(Problem::new(reason::INVALID_SPEC, message)));
    }
    let interface = e
        .spec
        .interface_name
        .clone()
        .unwrap_or_else(|| names::default_member_interface(&target.name));
    Some(Ok((sel, interface)))
}

/// Whether a valid selector takes `pod`: scheduled, and labelled to match.
fn selects(sel: &LabelSelector, pod: &Pod) -> bool {
    pod.node.is_some() && selector::matches(sel, &pod.labels).unwrap_or(false)
}

/// The entry of `pod` through the Endpoint `key`.
fn pod_entry<'i>(index: &Index, key: &ObjectKey, interface: &str, pod: &'i Pod) -> Entry<'i> {
    let identity = index.trust_domain.clone().and_then(|td| {
        SpiffeId::for_pod(&td, &pod.namespace, &pod.service_account).map_err(|e| e.to_string())
    });
    let kind = Workload::Pod {
        pod,
        interface: interface.to_owned(),
    };
    Entry::new(key.clone(), pod.name.clone(), identity, kind)
}

/// Stage: an external host may claim only an identity its Endpoint's namespace owns (its
/// own path of this cluster's trust domain) or is granted by an IdentityGrant; any other
/// is refused here, before any Admission rule is consulted. (Pods' identities come from
/// their service account, proven by the cluster.)
pub(super) fn confine_identities(index: &Index, entries: &mut [Entry<'_>]) {
    for entry in entries.iter_mut() {
        let (Workload::External { .. }, Ok(identity)) = (&entry.kind, &entry.identity) else {
            continue;
        };
        match grants::confine(index, &entry.endpoint.namespace, identity) {
            Ok(Claim::Own) => {}
            Ok(Claim::Granted(grant)) => entry.granted_by = Some(grant),
            Err(message) => entry.settle(reason::IDENTITY_NOT_GRANTED, message),
        }
    }
}

/// Stage: admission. Returns, per Admission, how many workloads its rules admitted and
/// denied. A pod attached through two Endpoints is one member: the first Endpoint in name
/// order owns it, and the others say `DuplicateMember`. Workloads refused before
/// admission are left as they are.
pub(super) fn admit(
    index: &Index,
    policy: &Policy,
    target: &ObjectKey,
    entries: &mut [Entry<'_>],
) -> BTreeMap<ObjectKey, (i32, i32)> {
    let empty = Labels::new();
    let mut counts: BTreeMap<ObjectKey, (i32, i32)> = BTreeMap::new();
    let mut owners: BTreeMap<(&str, &str), ObjectKey> = BTreeMap::new();
    for entry in entries.iter_mut().filter(|e| !e.settled) {
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
        tally(&mut counts, &decision);
        entry.admitted = decision.admitted;
        entry.reason = decision.reason;
        entry.message = match &entry.granted_by {
            Some(grant) => format!(
                "{}; the identity is granted to namespace {} by IdentityGrant {grant}",
                decision.message, entry.endpoint.namespace
            ),
            None => decision.message,
        };
        if let (true, Some(pod)) = (entry.admitted, entry.pod()) {
            match owners.get(&(pod.namespace.as_str(), pod.name.as_str())) {
                Some(owner) => {
                    let message = format!("already a member through Endpoint {owner}");
                    entry.reject(reason::DUPLICATE_MEMBER, message);
                }
                None => {
                    owners.insert((&pod.namespace, &pod.name), entry.endpoint.clone());
                }
            }
        }
    }
    counts
}

/// Counts a decision for the Admission whose rule made it: (admitted, denied).
pub(super) fn tally(counts: &mut BTreeMap<ObjectKey, (i32, i32)>, decision: &Decision) {
    if let Some(by) = &decision.by {
        let c = counts.entry(by.clone()).or_default();
        if decision.admitted {
            c.0 += 1
        } else {
            c.1 += 1
        }
    }
}

/// Stage: a node presenting another node's WireGuard key carries no service: its pods are
/// not members, and the service says why (once per node).
pub(super) fn leave_out_refused_nodes(
    refused: &Refused,
    entries: &mut [Entry<'_>],
    problems: &mut Vec<Problem>,
) {
    let mut left_out = BTreeSet::new();
    for entry in entries.iter_mut().filter(|e| e.admitted) {
        let Some(node) = entry.pod().and_then(|p| p.node.as_deref()) else {
            continue;
        };
        if let Some(keeper) = refused.get(node) {
            let message = format!(
                "node {node} presents the WireGuard public key of node {keeper}, which keeps it; {node} carries no service until its key is its own"
            );
            entry.reject(reason::DUPLICATE_NODE_KEY, message.clone());
            if left_out.insert(node.to_owned()) {
                problems.push(Problem::new(reason::DUPLICATE_NODE_KEY, message));
            }
        }
    }
}

/// Stage: a pod cannot hold two interfaces of one name. When an Endpoint of another
/// service selects the same pod with the same interface name, the Endpoint that already
/// has the pod as a member keeps the name; if neither or both do, the first by key does.
/// (Conservative: the other Endpoint's pod may not be admitted there, but deciding that
/// here would make this service's plan depend on that one's.)
pub(super) fn resolve_interface_conflicts(
    index: &Index,
    target: &ObjectKey,
    entries: &mut [Entry<'_>],
) {
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
        // Cheapest first: `holds` reads a whole member list.
        let rival = index.endpoints_in(&pod.namespace).find(|(key, other)| {
            let other_target = endpoint_target(other);
            if &other_target == target {
                return false;
            }
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
            selects
                && &other_interface == interface
                && match (holds(other, &pod.name), holds(mine, &pod.name)) {
                    (true, false) => true,
                    (false, true) => false,
                    _ => *key < &entry.endpoint,
                }
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
pub(super) fn place_externals(spec: &Spec, entries: &mut [Entry<'_>]) -> Vec<IpAddr> {
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

/// Stage: a prefix of the pool for every node with an admitted pod, kept from the
/// service's status where recorded, and clear of the external hosts' addresses. Nodes
/// left without one are a problem.
pub(super) fn allocate_node_prefixes(
    svc: &NetworkService,
    spec: &Spec,
    entries: &[Entry<'_>],
    external_addresses: &[IpAddr],
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, IpNet> {
    let nodes: Vec<&str> = entries
        .iter()
        .filter(|e| e.admitted)
        .filter_map(|e| e.pod()?.node.as_deref())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let recorded: BTreeMap<String, IpNet> = svc
        .status
        .iter()
        .flat_map(|s| &s.node_prefixes)
        .filter_map(|np| Some((np.node.clone(), np.prefix.parse::<Cidr>().ok()?.net())))
        .collect();
    let prefixes = ipam::node_prefixes(
        &spec.pool.net(),
        spec.node_prefix_len,
        &nodes,
        &recorded,
        external_addresses,
    );
    if !prefixes.exhausted.is_empty() {
        let message = format!(
            "no /{} left in {} for nodes {}",
            spec.node_prefix_len,
            spec.pool,
            prefixes.exhausted.join(", ")
        );
        problems.push(Problem::new(reason::ADDRESS_POOL_EXHAUSTED, message));
    }
    prefixes.allocated
}

/// Stage: an external host may not sit inside a node's prefix (that node would get its
/// traffic), nor share a public key with a node or another host of the service
/// (WireGuard keys peers by key).
pub(super) fn check_externals_against_nodes(
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
/// A node without addresses enough is a problem.
pub(super) fn allocate_addresses(
    index: &Index,
    target: &ObjectKey,
    prefixes: &BTreeMap<String, IpNet>,
    entries: &mut [Entry<'_>],
    problems: &mut Vec<Problem>,
) {
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
    if !full.is_empty() {
        let message = format!("no address left for members on node(s) {}", full.join(", "));
        problems.push(Problem::new(reason::ADDRESS_POOL_EXHAUSTED, message));
    }
}

/// Stage: the carrying nodes, with their prefixes: only nodes left with an addressed
/// member keep the service.
pub(super) fn carrying_nodes(
    prefixes: BTreeMap<String, IpNet>,
    entries: &[Entry<'_>],
) -> BTreeMap<String, IpNet> {
    let nodes: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.member())
        .filter_map(|e| e.pod()?.node.as_deref())
        .collect();
    prefixes
        .into_iter()
        .filter(|(n, _)| nodes.contains(n.as_str()))
        .collect()
}
