//! Planning a change of members: what pods that changed (added, relabelled, moved,
//! deleted) do to a target planned before, decided for those pods alone.
//!
//! Re-planning a whole service costs in proportion to its members; a pod joining a
//! service of 5,000 members should not. [`plan_members`] runs the stages of
//! [`plan_target`](super::plan_target) for the changed pods only: it gathers their
//! entries, admits them, leaves out refused nodes, settles interface names, and allocates
//! addresses on each node they touch over all of that node's members, as the whole plan
//! does, with the addresses recorded in the Endpoints' statuses. What it returns is the
//! difference to make in the statuses and node states, which [`apply_members`] makes.
//!
//! It declines (returns `None`, and the target is planned whole) whenever the change may
//! reach further than those pods: the service is not Ready (a problem may come or go),
//! has peer clusters, or one of its Admissions has an invalid rule; a node would join or
//! leave the service (every node's peers change, and node prefixes are allocated over all
//! nodes); a node is out of addresses, or a member already there would move; a changed
//! pod is refused for its node's key; or the service's names cannot be edited from the
//! records alone. The property tests `incremental_planning_equals_planning_from_scratch`
//! and `member_changes_planned_alone_equal_planning_from_scratch` (where most targets take
//! this path) hold both ways to the plan from scratch.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use wireway_crds::conditions::{READY, reason};
use wireway_crds::{Cidr, MemberStatus, Members};
use wireway_proto::{Member, ServiceState};

use super::dns::{self, NameChange};
use super::{Entry, projections, stages};
use crate::plan::admission::Policy;
use crate::plan::index::Index;
use crate::plan::node_keys::Refused;
use crate::plan::world::Pod;
use crate::plan::{ObjectKey, Plan, ipam, nodes, status};

/// Pods that changed, by (namespace, name), with what each was before the change (`None`
/// for a pod that did not exist).
pub type ChangedPods = BTreeMap<(String, String), Option<Pod>>;

/// What a change of members does to a target: the differences to make.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberEdit {
    /// For each Endpoint, its members to set (or remove, `None`), by workload.
    endpoints: BTreeMap<ObjectKey, Vec<(String, Option<MemberStatus>)>>,
    /// Admitted and denied of every Admission governing the target, after the change.
    admission_counts: BTreeMap<ObjectKey, (i32, i32)>,
    /// Members of the service after the change.
    member_count: usize,
    /// For each node, the members of the target's share to set (or remove), by id.
    nodes: BTreeMap<String, Vec<(String, Option<Member>)>>,
    /// The changes to the service's names.
    names: Vec<NameChange>,
}

/// A member's decision as the Endpoint's status recorded it: on which node, and its
/// address if it is a member.
fn recorded(status: &MemberStatus) -> (Option<&str>, Option<IpAddr>) {
    let address = status
        .address
        .as_deref()
        .filter(|_| status.admitted)
        .and_then(|a| a.parse().ok());
    (status.node.as_deref(), address)
}

/// The status of `workload` in the Endpoint `key`'s member list.
fn status_of<'i>(index: &'i Index, key: &ObjectKey, workload: &str) -> Option<&'i MemberStatus> {
    index
        .endpoints
        .get(key)?
        .status
        .as_ref()?
        .members
        .get(workload)
}

/// Plans the change of `pods` to `target`, or says it must be planned whole (`None`).
/// `plan` is the last plan (for the service's names, which its node states hold).
pub fn plan_members(
    index: &Index,
    target: &ObjectKey,
    pods: &ChangedPods,
    plan: &Plan,
    refused_nodes: &Refused,
) -> Option<MemberEdit> {
    let svc = index.services.get(target)?;
    let svc_status = svc.status.as_ref()?;
    let ready = svc_status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True");
    if !ready || index.peers_for(target).next().is_some() {
        return None;
    }
    let (policy, invalid_rules) = Policy::compile(index.admissions_for(target));
    if !invalid_rules.is_empty() {
        return None;
    }
    // The prefix of a node carrying the service (the status lists them sorted by node, as
    // the plan wrote them; a node not found there makes the change planned whole).
    let prefixes = &svc_status.node_prefixes;
    let prefix_of = |node: &str| -> Option<IpNet> {
        let at = prefixes.binary_search_by(|np| np.node.as_str().cmp(node));
        Some(prefixes.get(at.ok()?)?.prefix.parse::<Cidr>().ok()?.net())
    };

    // The changed pods' entries as they were (for the counts their decisions made) and
    // as they are now.
    let mut before: Vec<Entry<'_>> = Vec::new();
    let mut after: Vec<Entry<'_>> = Vec::new();
    for ((namespace, name), old) in pods {
        if let Some(old) = old {
            before.extend(stages::gather_pod(index, target, old));
        }
        if let Some(new) = index.pods.get(namespace).and_then(|p| p.get(name)) {
            after.extend(stages::gather_pod(index, target, new));
        }
    }
    let counts_before = stages::admit(index, &policy, target, &mut before);
    let counts_after = stages::admit(index, &policy, target, &mut after);
    let mut problems = Vec::new();
    stages::leave_out_refused_nodes(refused_nodes, &mut after, &mut problems);
    if !problems.is_empty() {
        return None;
    }
    // A pod left out for an interface name another service gives it may be on a node
    // the target's footprint does not name (it is planned again when that node's key is
    // refused or no longer is): only a whole plan records it.
    let admitted = after.iter().filter(|e| e.admitted).count();
    stages::resolve_interface_conflicts(index, target, &mut after);
    if after.iter().filter(|e| e.admitted).count() != admitted {
        return None;
    }

    // What the statuses say of the changed pods, on every Endpoint of the target.
    let changed = |key: &ObjectKey, workload: &str| {
        pods.keys()
            .any(|(namespace, name)| *namespace == key.namespace && name == workload)
    };
    let mut was: BTreeMap<(ObjectKey, String), &MemberStatus> = BTreeMap::new();
    for (key, _) in index.endpoints_for(target) {
        for (namespace, name) in pods.keys() {
            if namespace == &key.namespace
                && let Some(status) = status_of(index, key, name)
            {
                was.insert((key.clone(), name.clone()), status);
            }
        }
    }

    // Addresses, node by node, over every member of the node as the whole plan
    // allocates them.
    let mut touched: BTreeSet<&str> = was
        .values()
        .filter_map(|m| m.node.as_deref().filter(|_| m.admitted))
        .collect();
    for entry in after.iter().filter(|e| e.admitted) {
        let node = entry.pod().and_then(|p| p.node.as_deref())?;
        prefix_of(node)?;
        touched.insert(node);
    }
    let mut endpoints_in: BTreeMap<&str, Vec<&ObjectKey>> = BTreeMap::new();
    for (key, _) in index.endpoints_for(target) {
        endpoints_in.entry(&key.namespace).or_default().push(key);
    }
    for node in touched {
        let prefix = &prefix_of(node)?;
        // The node's members are those its state holds, with their addresses (a Ready
        // service has one for every admitted member): reading every member of the
        // Endpoints for them cost as much as the rest of the change. Where a namespace
        // has several Endpoints of the target, the statuses say which hold the pod.
        let held: BTreeSet<(&str, &str, &str)> = share(plan, node, target)?
            .members
            .iter()
            .filter_map(|m| {
                let (namespace, workload) = m.id.split_once('/')?;
                Some((namespace, workload, m.address.as_str()))
            })
            .collect();
        let mut members: Vec<((ObjectKey, String), Option<IpAddr>)> = Vec::new();
        for (namespace, workload, address) in held {
            let keys = endpoints_in.get(namespace).map_or(&[][..], Vec::as_slice);
            if let [key] = keys {
                if !changed(key, workload) {
                    let key = ((*key).clone(), workload.to_owned());
                    members.push((key, Some(address.parse().ok()?)));
                }
                continue;
            }
            for key in keys {
                let Some(m) = status_of(index, key, workload) else {
                    continue;
                };
                if m.admitted && m.node.as_deref() == Some(node) && !changed(key, workload) {
                    let (_, address) = recorded(m);
                    members.push((((*key).clone(), m.workload.clone()), Some(address?)));
                }
            }
        }
        let joining = after
            .iter()
            .enumerate()
            .filter(|(_, e)| e.admitted && e.pod().and_then(|p| p.node.as_deref()) == Some(node));
        let mut positions = BTreeMap::new();
        for (i, entry) in joining {
            let key = (entry.endpoint.clone(), entry.workload.clone());
            // Kept by (namespace, pod, node) from any Endpoint of the target, the last
            // recorded winning, as the whole plan keeps it: a pod that moves from one
            // Endpoint of the service to another keeps its address.
            let kept = was.iter().rev().find_map(|((endpoint, workload), m)| {
                let (on, address) = recorded(m);
                let same = endpoint.namespace == key.0.namespace && workload == &key.1;
                (same && on == Some(node)).then_some(address?)
            });
            positions.insert(key.clone(), i);
            members.push((key, kept));
        }
        if members.is_empty() {
            return None;
        }
        members.sort_by(|a, b| a.0.cmp(&b.0));
        let allocated = ipam::addresses(prefix, &members);
        for (key, kept) in &members {
            let address = allocated.get(key).copied().flatten()?;
            match positions.get(key) {
                Some(i) => after[*i].address = Some(address),
                None if *kept != Some(address) => return None,
                None => {}
            }
        }
    }

    let joined: Vec<(&Entry<'_>, IpAddr)> = after
        .iter()
        .filter(|e| e.member())
        .filter_map(|e| Some((e, e.address?)))
        .collect();
    let gone: Vec<(&Entry<'_>, IpAddr)> = before
        .iter()
        .filter_map(|e| {
            let status = was.get(&(e.endpoint.clone(), e.workload.clone()))?;
            Some((e, recorded(status).1?))
        })
        .collect();
    let was_members = was.values().filter(|m| recorded(m).1.is_some()).count();
    let member_count = usize::try_from(svc_status.member_count)
        .ok()?
        .checked_sub(was_members)?
        + joined.len();
    let names = match &svc_status.dns_zone {
        Some(_) => {
            let node = &prefixes.first()?.node;
            let dns = share(plan, node, target)?.dns.as_ref()?;
            dns::changes(dns, &gone, &joined)?
        }
        None => Vec::new(),
    };

    let mut endpoints: BTreeMap<ObjectKey, Vec<(String, Option<MemberStatus>)>> = BTreeMap::new();
    let mut nodes: BTreeMap<String, Vec<(String, Option<Member>)>> = BTreeMap::new();
    for ((key, workload), old) in &was {
        let still = after
            .iter()
            .any(|e| &e.endpoint == key && &e.workload == workload);
        if !still {
            endpoints
                .entry(key.clone())
                .or_default()
                .push((workload.clone(), None));
        }
        if let (Some(node), Some(_)) = recorded(old) {
            let id = projections::member_id(&key.namespace, workload);
            nodes.entry(node.to_owned()).or_default().push((id, None));
        }
    }
    for entry in &after {
        let status = projections::member_status(entry, &[]);
        let old = was.get(&(entry.endpoint.clone(), entry.workload.clone()));
        if old.is_none_or(|old| **old != status) {
            endpoints
                .entry(entry.endpoint.clone())
                .or_default()
                .push((entry.workload.clone(), Some(status)));
        }
        if let Some((node, member)) = projections::node_member(entry) {
            let sets = nodes.entry(node.to_owned()).or_default();
            sets.retain(|(id, _)| id != &member.id);
            sets.push((member.id.clone(), Some(member)));
        }
    }
    let mut admission_counts: BTreeMap<ObjectKey, (i32, i32)> = BTreeMap::new();
    for admission in index.admissions_for(target) {
        let key = ObjectKey::of(&admission.metadata);
        let now = admission
            .status
            .as_ref()
            .map_or((0, 0), |s| (s.admitted_count, s.denied_count));
        let (b, a) = (
            counts_before.get(&key).copied().unwrap_or_default(),
            counts_after.get(&key).copied().unwrap_or_default(),
        );
        let count =
            |now: i32, before: i32, after: i32| now.saturating_sub(before).saturating_add(after);
        admission_counts.insert(key, (count(now.0, b.0, a.0), count(now.1, b.1, a.1)));
    }
    Some(MemberEdit {
        endpoints,
        admission_counts,
        member_count,
        nodes,
        names,
    })
}

/// The target's share of `node`'s state in `plan`.
fn share<'p>(plan: &'p Plan, node: &str, target: &ObjectKey) -> Option<&'p ServiceState> {
    let name = target.to_string();
    plan.nodes
        .get(node)?
        .services
        .iter()
        .find(|s| s.name == name)
}

/// Makes `edit` (from [`plan_members`] on this index and plan) in the statuses, kept both
/// in `plan` and in `index`, and in the node states. Returns the nodes whose state
/// changed.
pub fn apply_members(
    index: &mut Index,
    plan: &mut Plan,
    target: &ObjectKey,
    edit: &MemberEdit,
) -> BTreeSet<String> {
    for (key, sets) in &edit.endpoints {
        let (Some(status), Some(endpoint)) =
            (plan.endpoints.get_mut(key), index.endpoints.get_mut(key))
        else {
            continue;
        };
        // The index holds the plan's list (the two share its parts): let go of it first,
        // so the parts edited are not copied.
        if let Some(held) = endpoint.status.as_mut() {
            held.members = Members::default();
        }
        let mut members = std::mem::take(&mut status.members);
        for (workload, value) in sets {
            match value {
                Some(member) => members.set(member.clone()),
                None => {
                    members.remove(workload);
                }
            }
        }
        let Some(endpoint) = index.endpoints.get(key) else {
            continue;
        };
        let fresh = projections::endpoint_status(index, endpoint, members, None);
        if let Some(endpoint) = index.endpoints.get_mut(key) {
            endpoint.status = Some(fresh.clone());
        }
        *status = fresh;
    }
    let admissions =
        projections::admission_statuses(index, target, None, &[], &edit.admission_counts);
    for (key, status) in admissions {
        if let Some(a) = index.admissions.get_mut(&key) {
            a.status = Some(status.clone());
        }
        plan.admissions.insert(key, status);
    }
    let mut changed = BTreeSet::new();
    if let Some(svc) = index.services.get_mut(target)
        && let Some(previous) = svc.status.as_mut()
    {
        let generation = svc.metadata.generation;
        let message = projections::ready_message(edit.member_count, previous.node_prefixes.len());
        previous.conditions = status::ready(
            true,
            reason::READY,
            message,
            generation,
            &previous.conditions,
            &index.now,
        );
        previous.member_count = i32::try_from(edit.member_count).unwrap_or(i32::MAX);
        plan.network_services
            .insert(target.clone(), previous.clone());
    }
    let name = target.to_string();
    for (node, sets) in &edit.nodes {
        let Some(state) = plan.nodes.get_mut(node) else {
            continue;
        };
        let Some(at) = state.services.iter().position(|s| s.name == name) else {
            continue;
        };
        if nodes::edit_members(&mut state.services, at, sets) {
            changed.insert(node.clone());
        }
    }
    if !edit.names.is_empty() {
        let carrying: Vec<&str> = plan
            .network_services
            .get(target)
            .map(|s| s.node_prefixes.iter().map(|np| np.node.as_str()).collect())
            .unwrap_or_default();
        // Every carrying node's state shares one list of records, held in shared parts:
        // edited, it copies the parts it edits; set in each node's state, it is shared
        // again.
        let records = carrying
            .first()
            .and_then(|node| share(plan, node, target)?.dns.as_ref())
            .map(|dns| {
                let mut records = dns.records.clone();
                dns::apply(&mut records, &edit.names);
                records
            });
        if let Some(records) = records {
            for node in carrying {
                let share = plan
                    .nodes
                    .get_mut(node)
                    .and_then(|s| s.services.iter_mut().find(|s| s.name == name));
                if let Some(dns) = share.and_then(|s| s.dns.as_mut()) {
                    dns.records = records.clone();
                    changed.insert(node.to_owned());
                }
            }
        }
    }
    changed
}
