//! The incremental planner: keeps the World indexed and the plan of every target, and on
//! each change plans again only the targets the change affects, and reassembles only
//! the nodes those targets touch.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::index::Index;
use super::service::{self, Assigned, FIRST_LISTEN_PORT, TargetPlan};
use super::world::{Change, World};
use super::{ObjectKey, Plan, names, nodes};

/// Plans a World and keeps planning it as it changes.
#[derive(Debug, Clone)]
pub struct Planner {
    index: Index,
    targets: BTreeMap<ObjectKey, TargetPlan>,
    assigned: BTreeMap<ObjectKey, Assigned>,
    plan: Plan,
    dirty_targets: BTreeSet<ObjectKey>,
    dirty_nodes: BTreeSet<String>,
}

impl Planner {
    /// A planner over `world`, continuing `previous` (whose node versions go on). The
    /// first [`Planner::plan`] plans everything.
    pub fn new(world: World, previous: Option<&Plan>) -> Self {
        let index = Index::new(world);
        let dirty_targets = index.targets();
        let mut dirty_nodes: BTreeSet<String> = index.nodes.keys().cloned().collect();
        let plan = Plan {
            nodes: previous.map(|p| p.nodes.clone()).unwrap_or_default(),
            ..Plan::default()
        };
        dirty_nodes.extend(plan.nodes.keys().cloned());
        Self {
            index,
            targets: BTreeMap::new(),
            assigned: BTreeMap::new(),
            plan,
            dirty_targets,
            dirty_nodes,
        }
    }

    /// Applies a change; the next [`Planner::plan`] plans what it affects.
    pub fn apply(&mut self, change: Change) {
        let affected = self.index.apply(change);
        for node in &affected.nodes {
            // A node's key, underlay or MTU is in every hosted service's peers and MTU.
            let hosted = self
                .targets
                .iter()
                .filter(|(_, t)| t.nodes.contains_key(node))
                .map(|(k, _)| k.clone());
            self.dirty_targets.extend(hosted.collect::<Vec<_>>());
        }
        self.dirty_nodes.extend(affected.nodes);
        self.dirty_targets.extend(affected.targets);
    }

    /// Sets the time conditions that change from now on are stamped with.
    pub fn set_now(&mut self, now: Time) {
        self.index.now = now;
    }

    /// Plans what changed since the last call. `changed_nodes` of the result lists the
    /// nodes whose state differs from the last call's.
    pub fn plan(&mut self) -> &Plan {
        self.reassign();
        let mut nodes_touched = std::mem::take(&mut self.dirty_nodes);
        for target in std::mem::take(&mut self.dirty_targets) {
            let fresh = service::plan_target(&self.index, &target, self.assigned.get(&target));
            let old = self.targets.remove(&target).unwrap_or_default();
            nodes_touched.extend(old.nodes.keys().cloned());
            nodes_touched.extend(fresh.nodes.keys().cloned());
            self.forget(&old);
            self.record(&target, &fresh);
            if fresh != TargetPlan::default() {
                self.targets.insert(target, fresh);
            }
        }
        self.plan.changed_nodes.clear();
        for node in nodes_touched {
            self.reassemble(&node);
        }
        &self.plan
    }

    /// Listen ports and interface names are unique across services, so they are assigned
    /// over all of them; a service whose assignment moved is planned again.
    fn reassign(&mut self) {
        let mut port_claims: Vec<Claim<u16>> = Vec::new();
        let mut interface_claims: Vec<Claim<String>> = Vec::new();
        for (key, svc) in &self.index.services {
            let Ok(spec) = service::parse_spec(svc) else {
                continue;
            };
            let status = svc.status.as_ref();
            let port = status
                .and_then(|s| s.listen_port)
                .and_then(|p| u16::try_from(p).ok());
            let interface = status.and_then(|s| s.interface_name.clone()).filter(|n| {
                n.starts_with(names::WIREGUARD_PREFIX) && n.len() <= names::MAX_INTERFACE_NAME
            });
            port_claims.push((key.clone(), spec.listen_port, port));
            interface_claims.push((key.clone(), None, interface));
        }
        let ports = assign_unique(&port_claims, |_| FIRST_LISTEN_PORT..=u16::MAX);
        let interfaces = assign_unique(&interface_claims, |key| {
            names::wireguard_candidates(&key.namespace, &key.name)
        });
        let assigned: BTreeMap<ObjectKey, Assigned> = ports
            .into_iter()
            .filter_map(|(key, listen_port)| {
                let interface = interfaces.get(&key)?.clone().ok()?;
                Some((
                    key,
                    Assigned {
                        listen_port,
                        interface,
                    },
                ))
            })
            .collect();
        for key in self.assigned.keys().chain(assigned.keys()) {
            if self.assigned.get(key) != assigned.get(key) {
                self.dirty_targets.insert(key.clone());
            }
        }
        self.assigned = assigned;
    }

    /// Removes a target's statuses from the plan.
    fn forget(&mut self, old: &TargetPlan) {
        for key in old.endpoints.keys() {
            self.plan.endpoints.remove(key);
        }
        for key in old.admissions.keys() {
            self.plan.admissions.remove(key);
        }
    }

    /// Puts a target's statuses into the plan and into the index, where they are the
    /// recorded allocations the next planning keeps.
    fn record(&mut self, target: &ObjectKey, fresh: &TargetPlan) {
        match &fresh.service {
            Some(status) => {
                self.plan
                    .network_services
                    .insert(target.clone(), status.clone());
            }
            None => {
                self.plan.network_services.remove(target);
            }
        }
        if let (Some(svc), Some(status)) = (self.index.services.get_mut(target), &fresh.service) {
            svc.status = Some(status.clone());
        }
        for (key, status) in &fresh.endpoints {
            self.plan.endpoints.insert(key.clone(), status.clone());
            if let Some(e) = self.index.endpoints.get_mut(key) {
                e.status = Some(status.clone());
            }
        }
        for (key, status) in &fresh.admissions {
            self.plan.admissions.insert(key.clone(), status.clone());
            if let Some(a) = self.index.admissions.get_mut(key) {
                a.status = Some(status.clone());
            }
        }
    }

    /// Rebuilds one node's state; a node whose state changed gets the next version.
    fn reassemble(&mut self, node: &str) {
        let services: Vec<_> = self
            .targets
            .values()
            .filter_map(|t| t.nodes.get(node).cloned())
            .collect();
        let known = self.index.nodes.get(node);
        let previous = self.plan.nodes.get(node);
        if services.is_empty() && known.is_none() {
            self.plan.nodes.remove(node);
            return;
        }
        let mut state = nodes::assemble(node, services, previous);
        let seen = known.map_or(0, |n| n.seen_version);
        match previous {
            Some(before) if before.services == state.services => state.version = before.version,
            _ => {
                state.version = previous.map_or(0, |b| b.version).max(seen) + 1;
                self.plan.changed_nodes.insert(node.to_owned());
            }
        }
        self.plan.nodes.insert(node.to_owned(), state);
    }
}

/// A claim on a unique value: claimant, value pinned in its spec, value recorded in its
/// status.
type Claim<V> = (ObjectKey, Option<V>, Option<V>);

/// Gives each claimant a value unique among all of them: its pinned value (spec) if no
/// claimant with a stronger claim pins it too, else its recorded value (status) if free,
/// else the first free candidate. A pinned value its claimant has recorded is the
/// strongest claim (it is in use); then key order decides. Losers of a pinned value get
/// `Err`.
fn assign_unique<V: Ord + Clone + std::fmt::Display, I: Iterator<Item = V>>(
    claims: &[Claim<V>],
    candidates: impl Fn(&ObjectKey) -> I,
) -> BTreeMap<ObjectKey, Result<V, String>> {
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    let mut pinned: Vec<&Claim<V>> = claims.iter().filter(|c| c.1.is_some()).collect();
    pinned.sort_by_key(|(key, pin, recorded)| (pin != recorded, key.clone()));
    for (key, pin, _) in pinned {
        if let Some(pin) = pin {
            let claim = if taken.insert(pin.clone()) {
                Ok(pin.clone())
            } else {
                Err(format!("{pin} is already used by another NetworkService"))
            };
            out.insert(key.clone(), claim);
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
        let claim = candidates(key)
            .find(|v| !taken.contains(v))
            .ok_or_else(|| "no free value left".to_owned());
        if let Ok(value) = &claim {
            taken.insert(value.clone());
        }
        out.insert(key.clone(), claim);
    }
    out
}
