//! The incremental planner: keeps the World indexed and the plan of every target, and on
//! each change plans again only the targets the change affects, and reassembles only
//! the nodes those targets touch.
//!
//! What is decided across services comes first, each round: listen ports and interface
//! names (unique over all services), and which nodes present another node's key. Then the
//! affected targets, with every service whose cidr overlaps theirs, are planned as
//! drafts, and of overlapping services sharing a node one is refused (`overlaps`); then
//! the plans are recorded and the touched nodes reassembled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wireway_crds::{Admission, Cidr, Endpoint, IdentityGrant, NetworkService, PeerCluster};
use wireway_proto::{NodeState, ServiceState};

use super::index::Index;
use super::node_keys::{self, Refused};
use super::service::{self, Across, Assigned, ChangedPods, MemberEdit, TargetPlan};
use super::world::{Change, World};
use super::{ObjectKey, Plan, Statuses, grants, names, nodes, overlaps, status};

/// What a planned target leaves in the plan: the objects whose statuses it wrote, the
/// nodes carrying it and every other node an admitted pod of it runs on (see
/// `TargetPlan::pod_nodes`), and the cidr it was planned with. (Its share of each node lives in that node's state only.)
#[derive(Debug, Clone, Default, PartialEq)]
struct Footprint {
    endpoints: Vec<ObjectKey>,
    admissions: Vec<ObjectKey>,
    nodes: BTreeSet<String>,
    cidr: Option<Cidr>,
    /// The peer clusters it has a half for.
    peers: Vec<String>,
}

/// How the last [`Planner::plan`] planned the targets it planned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Targets planned whole.
    pub whole: usize,
    /// Targets planned for their changed pods alone.
    pub by_members: usize,
}

/// Plans a World and keeps planning it as it changes.
#[derive(Debug, Clone)]
pub struct Planner {
    index: Index,
    targets: BTreeMap<ObjectKey, Footprint>,
    assigned: BTreeMap<ObjectKey, Assigned>,
    /// Nodes refused for presenting another node's key, as last decided.
    refused_nodes: Refused,
    plan: Plan,
    dirty_targets: BTreeSet<ObjectKey>,
    /// Targets only pods changed for, with those pods as they were: planned for those
    /// pods alone where that is the same as planning them whole.
    dirty_members: BTreeMap<ObjectKey, ChangedPods>,
    dirty_nodes: BTreeSet<String>,
    dirty_grants: BTreeSet<ObjectKey>,
    dirty_peer_clusters: BTreeSet<ObjectKey>,
    /// Listen ports and interface names are to be assigned again at the next plan: a
    /// NetworkService or a recorded status changed. (Pods alone change neither, and a
    /// round of member changes should not cost a pass over every service.)
    assignments_stale: bool,
    /// How the last plan went.
    round: Round,
    /// Until the first plan, node states come from `previous` (for versions and veth
    /// names) and every service in them is rebuilt.
    rebuild: bool,
}

impl Planner {
    /// A planner over `world`, continuing `previous` (whose node versions go on). The
    /// first [`Planner::plan`] plans everything.
    pub fn new(world: World, previous: Option<&Plan>) -> Self {
        let index = Index::new(world);
        let dirty_targets = index.targets();
        let dirty_grants = index.identity_grants.keys().cloned().collect();
        let mut dirty_nodes: BTreeSet<String> = index.nodes.keys().cloned().collect();
        let plan = Plan {
            nodes: previous.map(|p| p.nodes.clone()).unwrap_or_default(),
            retired_versions: previous
                .map(|p| p.retired_versions.clone())
                .unwrap_or_default(),
            ..Plan::default()
        };
        dirty_nodes.extend(plan.nodes.keys().cloned());
        Self {
            index,
            targets: BTreeMap::new(),
            assigned: BTreeMap::new(),
            refused_nodes: Refused::new(),
            plan,
            dirty_targets,
            dirty_members: BTreeMap::new(),
            dirty_nodes,
            dirty_grants,
            dirty_peer_clusters: BTreeSet::new(),
            assignments_stale: true,
            round: Round::default(),
            rebuild: true,
        }
    }

    /// Applies a change; the next [`Planner::plan`] plans what it affects.
    pub fn apply(&mut self, change: Change) {
        let pod = match &change {
            Change::Pod(p) => Some((p.namespace.clone(), p.name.clone())),
            Change::PodDeleted(namespace, name) => Some((namespace.clone(), name.clone())),
            _ => None,
        };
        let was = pod.as_ref().map(|(namespace, name)| {
            self.index
                .pods
                .get(namespace)
                .and_then(|p| p.get(name))
                .cloned()
        });
        if matches!(
            change,
            Change::NetworkService(_) | Change::NetworkServiceDeleted(_)
        ) {
            self.assignments_stale = true;
        }
        let mut affected = self.index.apply(change);
        if let (Some(pod), Some(was)) = (pod, was) {
            for target in std::mem::take(&mut affected.targets) {
                let pods = self.dirty_members.entry(target).or_default();
                pods.entry(pod.clone()).or_insert_with(|| was.clone());
            }
        }
        for node in &affected.nodes {
            // A node's key, underlay or MTU is in the peers and MTU of every service it
            // carries.
            let carried = self
                .targets
                .iter()
                .filter(|(_, t)| t.nodes.contains(node))
                .map(|(k, _)| k.clone());
            self.dirty_targets.extend(carried.collect::<Vec<_>>());
        }
        self.dirty_nodes.extend(affected.nodes);
        self.dirty_targets.extend(affected.targets);
        self.dirty_grants.extend(affected.grants);
        self.dirty_peer_clusters.extend(affected.peer_clusters);
    }

    /// Takes the allocations recorded in the statuses `held` (NetworkServices' prefixes,
    /// ports and interfaces, Endpoints' addresses: what the objects hold, a predecessor's)
    /// in place of this planner's own, and plans every target again at the
    /// next [`Planner::plan`]. A new leader adopts so: it never moves an address, prefix
    /// or port the previous leader handed out, even where its own plans as a standby
    /// (other batches, other orders) came out differently. Objects holding no status keep
    /// the planner's.
    pub fn adopt(&mut self, held: &Statuses) {
        for (key, svc) in &mut self.index.services {
            if let Some(status) = held.network_services.get(key) {
                svc.status = Some(status.clone());
            }
        }
        for (key, endpoint) in &mut self.index.endpoints {
            if let Some(status) = held.endpoints.get(key) {
                endpoint.status = Some(status.clone());
            }
        }
        self.dirty_targets.extend(self.index.targets());
        self.assignments_stale = true;
    }

    /// Sets the time conditions that change from now on are stamped with.
    pub fn set_now(&mut self, now: Time) {
        self.index.now = now;
    }

    /// The time conditions are stamped with.
    pub fn now(&self) -> Time {
        self.index.now.clone()
    }

    /// The result of the last [`Planner::plan`] (empty before the first).
    pub fn last_plan(&self) -> &Plan {
        &self.plan
    }

    /// How the last [`Planner::plan`] planned the targets it planned.
    pub fn last_round(&self) -> Round {
        self.round
    }

    /// The nodes of the World.
    pub fn nodes(&self) -> impl Iterator<Item = &super::Node> {
        self.index.nodes.values()
    }

    /// One node of the World.
    pub fn node(&self, name: &str) -> Option<&super::Node> {
        self.index.nodes.get(name)
    }

    /// The pods of the World.
    pub fn pods(&self) -> impl Iterator<Item = &super::Pod> {
        self.index.pods.values().flat_map(|p| p.values())
    }

    /// The NetworkServices of the World, with the statuses last planned.
    pub fn network_services(&self) -> impl Iterator<Item = &NetworkService> {
        self.index.services.values()
    }

    /// The Endpoints of the World, with the statuses last planned.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.index.endpoints.values()
    }

    /// The Admissions of the World, with the statuses last planned.
    pub fn admissions(&self) -> impl Iterator<Item = &Admission> {
        self.index.admissions.values()
    }

    /// One NetworkService of the World.
    pub fn network_service(&self, key: &ObjectKey) -> Option<&NetworkService> {
        self.index.services.get(key)
    }

    /// One Admission of the World.
    pub fn admission(&self, key: &ObjectKey) -> Option<&Admission> {
        self.index.admissions.get(key)
    }

    /// One Endpoint of the World.
    pub fn endpoint(&self, key: &ObjectKey) -> Option<&Endpoint> {
        self.index.endpoints.get(key)
    }

    /// The IdentityGrants of the World, with the statuses last planned.
    pub fn identity_grants(&self) -> impl Iterator<Item = &IdentityGrant> {
        self.index.identity_grants.values()
    }

    /// The PeerClusters of the World, with the statuses last planned.
    pub fn peer_clusters(&self) -> impl Iterator<Item = &PeerCluster> {
        self.index.peer_clusters.values()
    }

    /// One PeerCluster of the World (its key has an empty namespace).
    pub fn peer_cluster(&self, key: &ObjectKey) -> Option<&PeerCluster> {
        self.index.peer_clusters.get(key)
    }

    /// One IdentityGrant of the World (its key has an empty namespace).
    pub fn identity_grant(&self, key: &ObjectKey) -> Option<&IdentityGrant> {
        self.index.identity_grants.get(key)
    }

    /// Plans what changed since the last call. `changed_nodes` of the result lists the
    /// nodes whose state differs from the last call's.
    pub fn plan(&mut self) -> &Plan {
        if std::mem::take(&mut self.assignments_stale) {
            self.reassign();
        }
        self.decide_node_keys();
        self.plan_grants();
        self.plan_peer_clusters();
        let mut touched = std::mem::take(&mut self.dirty_nodes);
        let mut shares: BTreeMap<String, Vec<ServiceState>> = BTreeMap::new();
        let whole = std::mem::take(&mut self.dirty_targets);
        let members = std::mem::take(&mut self.dirty_members);
        let (targets, edits) = self.split(whole, members);
        self.round = Round {
            whole: targets.len(),
            by_members: edits.len(),
        };
        let replanned: BTreeSet<String> = targets.iter().map(ToString::to_string).collect();
        // Every target is planned against the World as the round found it; then the
        // overlapping ones are settled; only then is anything recorded.
        let mut drafts = plan_targets(targets, |target| {
            let across = Across {
                assigned: self.assigned.get(target),
                refused_nodes: &self.refused_nodes,
            };
            service::plan_target(&self.index, target, across)
        });
        overlaps::settle(&self.index, &mut drafts);
        // Their statuses are recorded (ports and interfaces among them): what the next
        // assignment reads.
        self.assignments_stale |= !drafts.is_empty();
        for (target, mut fresh) in drafts {
            let old = self.targets.remove(&target).unwrap_or_default();
            touched.extend(old.nodes.iter().cloned());
            self.forget(&old);
            self.forget_halves(&target, &old.peers);
            let nodes = std::mem::take(&mut fresh.nodes);
            let mut footprint = self.record(&target, fresh);
            for (node, share) in nodes {
                touched.insert(node.clone());
                footprint.nodes.insert(node.clone());
                shares.entry(node).or_default().push(share);
            }
            if footprint != Footprint::default() {
                self.targets.insert(target, footprint);
            }
        }
        let mut edited = BTreeSet::new();
        for (target, edit) in &edits {
            let changed = service::apply_members(&mut self.index, &mut self.plan, target, edit);
            edited.extend(changed);
        }
        touched.extend(edited.iter().cloned());
        self.plan.changed_nodes.clear();
        for node in touched {
            let share = shares.remove(&node).unwrap_or_default();
            let edited = edited.contains(&node);
            self.reassemble(&node, share, &replanned, edited);
        }
        self.rebuild = false;
        &self.plan
    }

    /// Splits what changed into the targets to plan whole (`whole` and every target
    /// overlapping one of them: see `overlaps`) and the edits of targets whose pods alone
    /// changed and that can be planned for those pods alone. A target that cannot is
    /// planned whole, and so are the targets it overlaps.
    fn split(
        &self,
        mut whole: BTreeSet<ObjectKey>,
        mut members: BTreeMap<ObjectKey, ChangedPods>,
    ) -> (BTreeSet<ObjectKey>, BTreeMap<ObjectKey, MemberEdit>) {
        if self.rebuild {
            whole.extend(members.into_keys());
            members = BTreeMap::new();
        }
        let mut edits = BTreeMap::new();
        loop {
            let closure = overlaps::closure(&self.index, whole.clone(), |target| {
                self.targets.get(target).and_then(|f| f.cidr)
            });
            edits.retain(|target, _| !closure.contains(target));
            let mut declined = false;
            for (target, pods) in &members {
                if closure.contains(target) || edits.contains_key(target) {
                    continue;
                }
                let planned = self.targets.get(target).is_some_and(|f| f.peers.is_empty());
                let edit = planned
                    .then(|| {
                        service::plan_members(
                            &self.index,
                            target,
                            pods,
                            &self.plan,
                            &self.refused_nodes,
                        )
                    })
                    .flatten();
                match edit {
                    Some(edit) => {
                        edits.insert(target.clone(), edit);
                    }
                    None => {
                        whole.insert(target.clone());
                        declined = true;
                    }
                }
            }
            if !declined {
                return (closure, edits);
            }
        }
    }

    /// Listen ports and interface names are unique across services, so they are assigned
    /// over all of them; a service whose assignment moved is planned again.
    ///
    /// Ports come from the administrator's range: a port recorded outside it (allocated
    /// before the range changed) is given up for one inside, and a port pinned outside it
    /// takes none (the service is refused for it).
    fn reassign(&mut self) {
        let ports_allowed = self.index.bounds.listen_ports;
        let mut port_claims: Vec<Claim<u16>> = Vec::new();
        let mut interface_claims: Vec<Claim<String>> = Vec::new();
        for (key, svc) in &self.index.services {
            let Ok(spec) = service::parse_spec(svc) else {
                continue;
            };
            let status = svc.status.as_ref();
            let port = status
                .and_then(|s| s.listen_port)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| ports_allowed.contains(*p));
            if spec.listen_port.is_some_and(|p| !ports_allowed.contains(p)) {
                interface_claims.push((key.clone(), None, interface_of(status)));
                continue;
            }
            port_claims.push((key.clone(), spec.listen_port, port));
            interface_claims.push((key.clone(), None, interface_of(status)));
        }
        let ports = assign_unique(&port_claims, |_| ports_allowed.all());
        let interfaces = assign_unique(&interface_claims, |key| {
            names::wireguard_candidates(&key.namespace, &key.name)
        });
        let assigned: BTreeMap<ObjectKey, Assigned> = interfaces
            .into_iter()
            .filter_map(|(key, interface)| {
                let listen_port = ports.get(&key).cloned().unwrap_or_else(|| {
                    Err(format!("the pinned port lies outside {ports_allowed}"))
                });
                Some((
                    key,
                    Assigned {
                        listen_port,
                        interface: interface.ok()?,
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

    /// Decides which nodes present another node's key; a node whose refusal changed has
    /// the targets it touches planned again.
    fn decide_node_keys(&mut self) {
        let refused = node_keys::refused(&self.index, &self.plan.nodes);
        if refused == self.refused_nodes {
            return;
        }
        let changed: BTreeSet<&String> = refused
            .keys()
            .chain(self.refused_nodes.keys())
            .filter(|node| refused.get(*node) != self.refused_nodes.get(*node))
            .collect();
        let affected = self
            .targets
            .iter()
            .filter(|(_, t)| t.nodes.iter().any(|n| changed.contains(n)))
            .map(|(k, _)| k.clone());
        self.dirty_targets.extend(affected.collect::<Vec<_>>());
        self.refused_nodes = refused;
    }

    /// Plans the statuses of the IdentityGrants that changed.
    fn plan_grants(&mut self) {
        for key in std::mem::take(&mut self.dirty_grants) {
            let Some(grant) = self.index.identity_grants.get(&key) else {
                self.plan.identity_grants.remove(&key);
                continue;
            };
            let status = grants::grant_status(&self.index, grant);
            self.plan
                .identity_grants
                .insert(key.clone(), status.clone());
            if let Some(grant) = self.index.identity_grants.get_mut(&key) {
                grant.status = Some(status);
            }
        }
    }

    /// Plans the statuses of the PeerClusters whose object or connection changed.
    fn plan_peer_clusters(&mut self) {
        for key in std::mem::take(&mut self.dirty_peer_clusters) {
            let Some(object) = self.index.peer_clusters.get(&key) else {
                self.plan.peer_clusters.remove(&key);
                continue;
            };
            let peer = self.index.peers.get(&key.name);
            let status = status::peer_cluster(
                object,
                peer.is_some_and(|p| p.connected),
                peer.and_then(|p| p.last_sync.as_ref()),
                &self.index.now,
            );
            self.plan.peer_clusters.insert(key.clone(), status.clone());
            if let Some(object) = self.index.peer_clusters.get_mut(&key) {
                object.status = Some(status);
            }
        }
    }

    /// Removes a target's statuses from the plan.
    fn forget(&mut self, old: &Footprint) {
        for key in &old.endpoints {
            self.plan.endpoints.remove(key);
        }
        for key in &old.admissions {
            self.plan.admissions.remove(key);
        }
    }

    /// Removes a target's halves from what goes to its peer clusters.
    fn forget_halves(&mut self, target: &ObjectKey, peers: &[String]) {
        for peer in peers {
            if let Some(halves) = self.plan.federation.get_mut(peer) {
                halves.remove(target);
                if halves.is_empty() {
                    self.plan.federation.remove(peer);
                }
            }
        }
    }

    /// Puts a target's statuses into the plan and into the index, where they are the
    /// recorded allocations the next planning keeps; keeps what node assembly needs.
    fn record(&mut self, target: &ObjectKey, fresh: TargetPlan) -> Footprint {
        let mut footprint = Footprint {
            nodes: fresh.pod_nodes,
            cidr: overlaps::cidr(&self.index, target),
            ..Footprint::default()
        };
        match fresh.service {
            Some(status) => {
                self.plan
                    .network_services
                    .insert(target.clone(), status.clone());
                if let Some(svc) = self.index.services.get_mut(target) {
                    svc.status = Some(status);
                }
            }
            None => {
                self.plan.network_services.remove(target);
            }
        }
        for (key, status) in fresh.endpoints {
            self.plan.endpoints.insert(key.clone(), status.clone());
            if let Some(e) = self.index.endpoints.get_mut(&key) {
                e.status = Some(status);
            }
            footprint.endpoints.push(key);
        }
        for (key, status) in fresh.admissions {
            self.plan.admissions.insert(key.clone(), status.clone());
            if let Some(a) = self.index.admissions.get_mut(&key) {
                a.status = Some(status);
            }
            footprint.admissions.push(key);
        }
        for (peer, half) in fresh.federation {
            let halves = self.plan.federation.entry(peer.clone()).or_default();
            halves.insert(target.clone(), half);
            footprint.peers.push(peer);
        }
        footprint
    }

    /// Rebuilds one node's state; a node whose state changed gets the next version.
    ///
    /// The node's services of targets not planned again stay as they are; those of
    /// `replanned` targets are replaced by `shares`; `edited` says a change of members
    /// already changed it in place. A node neither known nor carrying
    /// anything loses its state, and its version is kept aside for its return.
    fn reassemble(
        &mut self,
        node: &str,
        shares: Vec<ServiceState>,
        replanned: &BTreeSet<String>,
        edited: bool,
    ) {
        let seen = self.index.nodes.get(node).map_or(0, |n| n.seen_version);
        // Nothing of the node's planned again (a change of members edited it in place, or
        // it is touched for its version): it stays as it is but for its version.
        if shares.is_empty()
            && !self.rebuild
            && let Some(state) = self.plan.nodes.get_mut(node)
            && !state.services.is_empty()
            && !state.services.iter().any(|s| replanned.contains(&s.name))
        {
            if edited || state.version < seen {
                state.version = state.version.max(seen).saturating_add(1);
                self.plan.changed_nodes.insert(node.to_owned());
            }
            return;
        }
        let previous = self.plan.nodes.remove(node);
        let retired = self.plan.retired_versions.get(node).copied().unwrap_or(0);
        let had_state = previous.is_some();
        let (version, before) = previous.map_or((retired, Vec::new()), |p| (p.version, p.services));
        let (replaced, kept): (Vec<ServiceState>, Vec<ServiceState>) = before
            .into_iter()
            .partition(|s| self.rebuild || replanned.contains(&s.name));
        let fresh = nodes::assemble(shares, &kept, &replaced);
        let known = self.index.nodes.get(node);
        if fresh.is_empty() && kept.is_empty() && known.is_none() {
            if had_state {
                self.plan.retired_versions.insert(node.to_owned(), version);
                self.plan.changed_nodes.insert(node.to_owned());
            }
            return;
        }
        self.plan.retired_versions.remove(node);
        let changed = !had_state || edited || fresh != replaced;
        let mut services = kept;
        services.extend(fresh);
        services.sort_by(|a, b| a.name.cmp(&b.name));
        // A node that has seen a newer version than this one (this operator lost its
        // state, another one planned for it) gets a version above it: an agent applies
        // only versions newer than its own.
        let version = if changed || version < seen {
            self.plan.changed_nodes.insert(node.to_owned());
            version.max(seen).saturating_add(1)
        } else {
            version
        };
        self.plan.nodes.insert(
            node.to_owned(),
            NodeState {
                node: node.to_owned(),
                version,
                services,
                // The node API's: the leader's term when it serves the state.
                epoch: 0,
            },
        );
    }
}

/// Plans each target with `plan`, on as many threads as the process may use (targets
/// are independent: each reads the World as the round found it). The result is the same
/// in any order.
fn plan_targets(
    targets: BTreeSet<ObjectKey>,
    plan: impl Fn(&ObjectKey) -> TargetPlan + Sync,
) -> BTreeMap<ObjectKey, TargetPlan> {
    let targets: Vec<ObjectKey> = targets.into_iter().collect();
    // Asked only when there is a choice: the answer reads cgroup files each time.
    let threads = if targets.len() < 2 {
        1
    } else {
        std::thread::available_parallelism().map_or(1, usize::from)
    };
    if threads < 2 {
        return targets
            .into_iter()
            .map(|target| {
                let draft = plan(&target);
                (target, draft)
            })
            .collect();
    }
    // Each thread takes the next target not yet taken: services differ in size by orders
    // of magnitude, so a fixed share per thread would leave threads idle.
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(target) = targets.get(i) else {
                return done;
            };
            done.push((target.clone(), plan(target)));
        }
    };
    std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads.min(targets.len()))
            .map(|_| scope.spawn(work))
            .collect();
        let mut drafts: BTreeMap<ObjectKey, TargetPlan> = work().into_iter().collect();
        for helper in helpers {
            // A panic in planning is a bug; it goes on as it would on one thread.
            match helper.join() {
                Ok(done) => drafts.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        drafts
    })
}

/// The WireGuard interface name recorded in a service's status, if it is one Wireway
/// would give.
fn interface_of(status: Option<&wireway_crds::NetworkServiceStatus>) -> Option<String> {
    status
        .and_then(|s| s.interface_name.clone())
        .filter(|n| n.starts_with(names::WIREGUARD_PREFIX) && n.len() <= names::MAX_INTERFACE_NAME)
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
