//! The World, keyed and cross-referenced, and what each change to it affects.
//!
//! Planning is done per *target*: the key of a NetworkService, whether or not the service
//! exists. A target's plan depends only on the service, the Endpoints naming it (and the
//! pods they select), the Admissions naming it, the namespaces' labels, the IdentityGrants
//! of the namespaces of its external Endpoints, the nodes carrying it, the reserved ranges
//! its cidr overlaps, and what was decided across services (its listen port and interface
//! name, which nodes present another's key, which of two overlapping services is
//! refused). [`Index::apply`] says which targets (and nodes, and grants) a change can
//! affect, so only those are planned again; the planner adds what is decided across
//! services.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wireway_crds::{
    Admission, Cidr, Endpoint, IdentityGrant, NetworkService, PeerCluster, TrustDomain,
};

use super::bounds::{Bounds, node_ranges};
use super::world::{Change, Labels, Node, Peer, Pod, World};
use super::{ObjectKey, selector};

/// The World, keyed.
#[derive(Debug, Clone)]
pub struct Index {
    /// The cluster's trust domain, parsed.
    pub trust_domain: Result<TrustDomain, String>,
    /// See [`World::now`].
    pub now: Time,
    /// Nodes by name.
    pub nodes: BTreeMap<String, Node>,
    /// Namespace labels by namespace.
    pub namespaces: BTreeMap<String, Labels>,
    /// Pods by namespace, then name.
    pub pods: BTreeMap<String, BTreeMap<String, Pod>>,
    /// NetworkServices by key.
    pub services: BTreeMap<ObjectKey, NetworkService>,
    /// Endpoints by key.
    pub endpoints: BTreeMap<ObjectKey, Endpoint>,
    /// Admissions by key.
    pub admissions: BTreeMap<ObjectKey, Admission>,
    /// IdentityGrants by key (an empty namespace: they are cluster-scoped).
    pub identity_grants: BTreeMap<ObjectKey, IdentityGrant>,
    /// The cluster's Service ranges, by ServiceCIDR name.
    pub service_cidrs: BTreeMap<String, Vec<Cidr>>,
    /// The administrator's bounds.
    pub bounds: Bounds,
    /// Peer clusters by name.
    pub peers: BTreeMap<String, Peer>,
    /// The PeerCluster objects, by key (an empty namespace: they are cluster-scoped),
    /// with the statuses last planned.
    pub peer_clusters: BTreeMap<ObjectKey, PeerCluster>,
    /// IdentityGrants by the namespace they widen.
    grants_by_namespace: BTreeMap<String, BTreeSet<ObjectKey>>,
    /// Nodes by the WireGuard public key they present.
    nodes_by_key: BTreeMap<String, BTreeSet<String>>,
    /// The keys of `nodes_by_key` two or more nodes present (kept, so that a plan need not
    /// look through every node's key for them).
    shared_keys: BTreeSet<String>,
    /// Endpoints by the target they name.
    endpoints_by_target: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Admissions by the target they govern.
    admissions_by_target: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    /// Peer clusters by the target they share.
    peers_by_target: BTreeMap<ObjectKey, BTreeSet<String>>,
}

/// What a change can affect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Affected {
    /// Targets to plan again.
    pub targets: BTreeSet<ObjectKey>,
    /// Nodes whose own record changed: the targets they carry must be planned again, and
    /// their state reassembled.
    pub nodes: BTreeSet<String>,
    /// IdentityGrants whose status must be planned again.
    pub grants: BTreeSet<ObjectKey>,
    /// PeerClusters whose status must be planned again.
    pub peer_clusters: BTreeSet<ObjectKey>,
}

/// The target an Endpoint names.
pub fn endpoint_target(e: &Endpoint) -> ObjectKey {
    let own = e.metadata.namespace.as_deref().unwrap_or_default();
    let ns = e.spec.network_service.namespace.as_deref().unwrap_or(own);
    ObjectKey::new(ns, &e.spec.network_service.name)
}

/// The target an Admission governs: a service of its own namespace.
pub fn admission_target(a: &Admission) -> ObjectKey {
    ObjectKey::new(
        a.metadata.namespace.as_deref().unwrap_or_default(),
        &a.spec.network_service,
    )
}

/// Drops `key` from the objects naming `target`.
fn unlink<K: Ord>(by_target: &mut BTreeMap<ObjectKey, BTreeSet<K>>, target: &ObjectKey, key: &K) {
    if let Some(set) = by_target.get_mut(target) {
        set.remove(key);
        if set.is_empty() {
            by_target.remove(target);
        }
    }
}

/// Keys items; of two claiming one key (a World that is inconsistent), keeps one
/// regardless of input order.
fn keyed<T: std::fmt::Debug>(
    items: Vec<T>,
    key: impl Fn(&T) -> ObjectKey,
) -> BTreeMap<ObjectKey, T> {
    let mut map = BTreeMap::new();
    for item in items {
        match map.entry(key(&item)) {
            Entry::Vacant(slot) => {
                slot.insert(item);
            }
            Entry::Occupied(mut slot) => {
                if format!("{item:?}") > format!("{:?}", slot.get()) {
                    slot.insert(item);
                }
            }
        }
    }
    map
}

impl Index {
    /// Indexes a World.
    pub fn new(world: World) -> Self {
        let nodes = keyed(world.nodes, |n| ObjectKey::new("", &n.name))
            .into_iter()
            .map(|(k, n)| (k.name, n))
            .collect();
        let namespaces = keyed(world.namespaces, |n| ObjectKey::new("", &n.name))
            .into_iter()
            .map(|(k, n)| (k.name, n.labels))
            .collect();
        let mut pods: BTreeMap<String, BTreeMap<String, Pod>> = BTreeMap::new();
        for (key, pod) in keyed(world.pods, |p| ObjectKey::new(&p.namespace, &p.name)) {
            pods.entry(key.namespace).or_default().insert(key.name, pod);
        }
        let service_cidrs = keyed(world.service_cidrs, |c| ObjectKey::new("", &c.name))
            .into_iter()
            .map(|(k, c)| (k.name, c.cidrs))
            .collect();
        let peers: BTreeMap<String, Peer> = keyed(world.peers, |p| ObjectKey::new("", &p.name))
            .into_iter()
            .map(|(k, p)| (k.name, p))
            .collect();
        let mut index = Self {
            trust_domain: world
                .trust_domain
                .parse()
                .map_err(|e| format!("the cluster's trust domain: {e}")),
            now: world.now,
            nodes,
            namespaces,
            pods,
            services: keyed(world.network_services, |s| ObjectKey::of(&s.metadata)),
            endpoints: keyed(world.endpoints, |e| ObjectKey::of(&e.metadata)),
            admissions: keyed(world.admissions, |a| ObjectKey::of(&a.metadata)),
            identity_grants: keyed(world.identity_grants, |g| ObjectKey::of(&g.metadata)),
            service_cidrs,
            bounds: world.bounds,
            peers: BTreeMap::new(),
            peer_clusters: BTreeMap::new(),
            grants_by_namespace: BTreeMap::new(),
            nodes_by_key: BTreeMap::new(),
            shared_keys: BTreeSet::new(),
            endpoints_by_target: BTreeMap::new(),
            admissions_by_target: BTreeMap::new(),
            peers_by_target: BTreeMap::new(),
        };
        for peer in peers.into_values() {
            index.insert_peer(peer);
        }
        for (key, g) in &index.identity_grants {
            index
                .grants_by_namespace
                .entry(g.spec.namespace.clone())
                .or_default()
                .insert(key.clone());
        }
        let keys: Vec<(String, String)> = index
            .nodes
            .values()
            .filter_map(|n| Some((n.public_key.clone()?, n.name.clone())))
            .collect();
        for (key, node) in keys {
            index.hold_key(key, node);
        }
        for (key, e) in &index.endpoints {
            index
                .endpoints_by_target
                .entry(endpoint_target(e))
                .or_default()
                .insert(key.clone());
        }
        for (key, a) in &index.admissions {
            index
                .admissions_by_target
                .entry(admission_target(a))
                .or_default()
                .insert(key.clone());
        }
        index
    }

    /// Every target: existing services and the services Endpoints, Admissions and peer
    /// clusters name.
    pub fn targets(&self) -> BTreeSet<ObjectKey> {
        self.services
            .keys()
            .chain(self.endpoints_by_target.keys())
            .chain(self.admissions_by_target.keys())
            .chain(self.peers_by_target.keys())
            .cloned()
            .collect()
    }

    /// The peer clusters sharing `target`, sorted by name.
    pub fn peers_for<'a>(&'a self, target: &ObjectKey) -> impl Iterator<Item = &'a Peer> {
        self.peers_by_target
            .get(target)
            .into_iter()
            .flatten()
            .filter_map(|name| self.peers.get(name))
    }

    /// Whether a node of this cluster presents `key`.
    pub fn node_key_taken(&self, key: &str) -> bool {
        self.nodes_by_key.contains_key(key)
    }

    /// The Endpoints naming `target`, sorted by key.
    pub fn endpoints_for<'a>(
        &'a self,
        target: &ObjectKey,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Endpoint)> {
        self.endpoints_by_target
            .get(target)
            .into_iter()
            .flatten()
            .filter_map(|k| self.endpoints.get_key_value(k))
    }

    /// The Admissions governing `target`, sorted by key.
    pub fn admissions_for<'a>(&'a self, target: &ObjectKey) -> impl Iterator<Item = &'a Admission> {
        self.admissions_by_target
            .get(target)
            .into_iter()
            .flatten()
            .filter_map(|k| self.admissions.get(k))
    }

    /// The Endpoints of a namespace, sorted by key.
    pub fn endpoints_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a Endpoint)> {
        self.endpoints
            .range(ObjectKey::new(namespace, "")..)
            .take_while(move |(k, _)| k.namespace == namespace)
    }

    /// The IdentityGrants for a namespace, sorted by name.
    pub fn grants_for<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a IdentityGrant> {
        self.grants_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .filter_map(|k| self.identity_grants.get(k))
    }

    /// The WireGuard keys two or more nodes present, with those nodes.
    pub fn shared_keys(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.shared_keys
            .iter()
            .filter_map(|key| Some((key.as_str(), self.nodes_by_key.get(key)?)))
    }

    /// The services whose cidr overlaps one of `ranges`.
    pub fn services_overlapping<'a>(
        &'a self,
        ranges: &'a [Cidr],
    ) -> impl Iterator<Item = &'a ObjectKey> {
        self.services.iter().filter_map(move |(key, svc)| {
            let cidr = svc.spec.cidr.parse::<Cidr>().ok()?;
            ranges.iter().any(|r| r.overlaps(&cidr)).then_some(key)
        })
    }

    /// The pods of a namespace, sorted by name.
    pub fn pods_in<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a Pod> {
        self.pods
            .get(namespace)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// Applies one change and says what it affects.
    ///
    /// The status of a Wireway object already indexed is kept when the object is updated:
    /// the planner records its own statuses ([`Index::record`]), and a watch may deliver an
    /// update that still carries an older one.
    pub fn apply(&mut self, change: Change) -> Affected {
        let mut affected = Affected::default();
        match change {
            Change::Node(node) => {
                affected.nodes.insert(node.name.clone());
                let old = self.remove_node(&node.name);
                self.affect_reserved(
                    old.as_ref().map(node_ranges),
                    node_ranges(&node),
                    &mut affected,
                );
                if let Some(key) = &node.public_key {
                    self.hold_key(key.clone(), node.name.clone());
                }
                self.nodes.insert(node.name.clone(), node);
            }
            Change::NodeDeleted(name) => {
                let old = self.remove_node(&name);
                self.affect_reserved(old.as_ref().map(node_ranges), Vec::new(), &mut affected);
                affected.nodes.insert(name);
            }
            Change::ServiceCidr(c) => {
                let old = self.service_cidrs.insert(c.name.clone(), c.cidrs.clone());
                self.affect_reserved(old, c.cidrs, &mut affected);
            }
            Change::ServiceCidrDeleted(name) => {
                let old = self.service_cidrs.remove(&name);
                self.affect_reserved(old, Vec::new(), &mut affected);
            }
            Change::IdentityGrant(mut g) => {
                let key = ObjectKey::of(&g.metadata);
                if let Some(old) = self.remove_grant(&key, &mut affected) {
                    g.status = old.status;
                }
                let namespace = g.spec.namespace.clone();
                self.affect_external_endpoints(&namespace, &mut affected);
                self.grants_by_namespace
                    .entry(namespace)
                    .or_default()
                    .insert(key.clone());
                self.identity_grants.insert(key.clone(), g);
                affected.grants.insert(key);
            }
            Change::IdentityGrantDeleted(name) => {
                let key = ObjectKey::new("", &name);
                self.remove_grant(&key, &mut affected);
                affected.grants.insert(key);
            }
            Change::Namespace(ns) => {
                self.affect_namespace_selectors(&mut affected);
                self.namespaces.insert(ns.name, ns.labels);
            }
            Change::NamespaceDeleted(name) => {
                self.affect_namespace_selectors(&mut affected);
                self.namespaces.remove(&name);
            }
            Change::Pod(pod) => {
                let old = self
                    .pods
                    .get(&pod.namespace)
                    .and_then(|p| p.get(&pod.name))
                    .cloned();
                self.affect_selecting(old.as_ref(), &mut affected);
                self.affect_selecting(Some(&pod), &mut affected);
                self.pods
                    .entry(pod.namespace.clone())
                    .or_default()
                    .insert(pod.name.clone(), pod);
            }
            Change::PodDeleted(namespace, name) => {
                let old = self.pods.get_mut(&namespace).and_then(|p| p.remove(&name));
                self.affect_selecting(old.as_ref(), &mut affected);
            }
            Change::NetworkService(mut svc) => {
                let key = ObjectKey::of(&svc.metadata);
                if let Some(old) = self.services.get(&key) {
                    svc.status = old.status.clone();
                }
                self.services.insert(key.clone(), svc);
                affected.targets.insert(key);
            }
            Change::NetworkServiceDeleted(key) => {
                self.services.remove(&key);
                affected.targets.insert(key);
            }
            Change::Endpoint(mut e) => {
                let key = ObjectKey::of(&e.metadata);
                self.affect_namespace_endpoints(&key.namespace, &mut affected);
                if let Some(old) = self.remove_endpoint(&key, &mut affected) {
                    e.status = old.status;
                }
                let target = endpoint_target(&e);
                self.endpoints_by_target
                    .entry(target.clone())
                    .or_default()
                    .insert(key.clone());
                self.endpoints.insert(key, e);
                affected.targets.insert(target);
            }
            Change::EndpointDeleted(key) => {
                self.affect_namespace_endpoints(&key.namespace, &mut affected);
                self.remove_endpoint(&key, &mut affected);
            }
            Change::Admission(mut a) => {
                let key = ObjectKey::of(&a.metadata);
                if let Some(old) = self.remove_admission(&key, &mut affected) {
                    a.status = old.status;
                }
                let target = admission_target(&a);
                self.admissions_by_target
                    .entry(target.clone())
                    .or_default()
                    .insert(key.clone());
                self.admissions.insert(key, a);
                affected.targets.insert(target);
            }
            Change::AdmissionDeleted(key) => {
                self.remove_admission(&key, &mut affected);
            }
            Change::PeerCluster(mut object) => {
                let key = ObjectKey::of(&object.metadata);
                if let Some(old) = self.peer_clusters.remove(&key) {
                    object.status = old.status;
                }
                let mut peer = Peer::declared(&object);
                self.peer_clusters.insert(key.clone(), *object);
                affected.peer_clusters.insert(key);
                if let Some(old) = self.remove_peer(&peer.name, &mut affected) {
                    peer.connected = old.connected;
                    peer.last_sync = old.last_sync;
                    peer.halves = old.halves;
                }
                affected.targets.extend(peer.shares.keys().cloned());
                self.insert_peer(peer);
            }
            Change::PeerClusterDeleted(name) => {
                self.remove_peer(&name, &mut affected);
                let key = ObjectKey::new("", &name);
                self.peer_clusters.remove(&key);
                affected.peer_clusters.insert(key);
            }
            Change::PeerSent(sent) => {
                if let Some(peer) = self.peers.get_mut(&sent.peer) {
                    affected
                        .peer_clusters
                        .insert(ObjectKey::new("", &sent.peer));
                    peer.connected = sent.connected;
                    peer.last_sync = sent.last_sync;
                    if let Some(halves) = sent.halves {
                        peer.halves = halves;
                    }
                    affected.targets.extend(peer.shares.keys().cloned());
                }
            }
        }
        affected
    }

    fn insert_peer(&mut self, peer: Peer) {
        for target in peer.shares.keys() {
            self.peers_by_target
                .entry(target.clone())
                .or_default()
                .insert(peer.name.clone());
        }
        self.peers.insert(peer.name.clone(), peer);
    }

    /// Removes a peer cluster: the targets it shared are affected.
    fn remove_peer(&mut self, name: &str, affected: &mut Affected) -> Option<Peer> {
        let old = self.peers.remove(name)?;
        for target in old.shares.keys() {
            unlink(&mut self.peers_by_target, target, &old.name);
            affected.targets.insert(target.clone());
        }
        Some(old)
    }

    /// Removes a node, and its key from the keys nodes present.
    fn remove_node(&mut self, name: &str) -> Option<Node> {
        let old = self.nodes.remove(name)?;
        if let Some(key) = &old.public_key
            && let Some(holders) = self.nodes_by_key.get_mut(key)
        {
            holders.remove(name);
            if holders.len() < 2 {
                self.shared_keys.remove(key);
            }
            if holders.is_empty() {
                self.nodes_by_key.remove(key);
            }
        }
        Some(old)
    }

    /// Records that `node` presents `key`.
    fn hold_key(&mut self, key: String, node: String) {
        let holders = self.nodes_by_key.entry(key.clone()).or_default();
        holders.insert(node);
        if holders.len() > 1 {
            self.shared_keys.insert(key);
        }
    }

    fn remove_grant(&mut self, key: &ObjectKey, affected: &mut Affected) -> Option<IdentityGrant> {
        let old = self.identity_grants.remove(key)?;
        let namespace = &old.spec.namespace;
        self.affect_external_endpoints(namespace, affected);
        if let Some(set) = self.grants_by_namespace.get_mut(namespace) {
            set.remove(key);
            if set.is_empty() {
                self.grants_by_namespace.remove(namespace);
            }
        }
        Some(old)
    }

    /// Targets of the external Endpoints of a namespace: what the namespace may claim
    /// changed.
    fn affect_external_endpoints(&self, namespace: &str, affected: &mut Affected) {
        let targets: Vec<ObjectKey> = self
            .endpoints_in(namespace)
            .filter(|(_, e)| e.spec.external.is_some())
            .map(|(_, e)| endpoint_target(e))
            .collect();
        affected.targets.extend(targets);
    }

    /// Services whose cidr overlaps a reserved range that changed from `old` to `new`.
    fn affect_reserved(&self, old: Option<Vec<Cidr>>, new: Vec<Cidr>, affected: &mut Affected) {
        let old = old.unwrap_or_default();
        if old == new {
            return;
        }
        let ranges: Vec<Cidr> = old.into_iter().chain(new).collect();
        let targets: Vec<ObjectKey> = self.services_overlapping(&ranges).cloned().collect();
        affected.targets.extend(targets);
    }

    fn remove_endpoint(&mut self, key: &ObjectKey, affected: &mut Affected) -> Option<Endpoint> {
        let old = self.endpoints.remove(key)?;
        let target = endpoint_target(&old);
        unlink(&mut self.endpoints_by_target, &target, key);
        affected.targets.insert(target);
        Some(old)
    }

    fn remove_admission(&mut self, key: &ObjectKey, affected: &mut Affected) -> Option<Admission> {
        let old = self.admissions.remove(key)?;
        let target = admission_target(&old);
        unlink(&mut self.admissions_by_target, &target, key);
        affected.targets.insert(target);
        Some(old)
    }

    /// Targets of the Endpoints in the pod's namespace whose selector matches it.
    fn affect_selecting(&self, pod: Option<&Pod>, affected: &mut Affected) {
        let Some(pod) = pod else { return };
        for (target, keys) in &self.endpoints_by_target {
            let selects = keys.iter().filter_map(|k| self.endpoints.get(k)).any(|e| {
                e.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                    && e.spec
                        .pod_selector
                        .as_ref()
                        .is_some_and(|sel| selector::matches(sel, &pod.labels).unwrap_or(false))
            });
            if selects {
                affected.targets.insert(target.clone());
            }
        }
    }

    /// Targets of every Endpoint of a namespace: two of them may claim one interface name
    /// in a pod, and an Endpoint's change can settle or start such a conflict.
    fn affect_namespace_endpoints(&self, namespace: &str, affected: &mut Affected) {
        let targets: Vec<ObjectKey> = self
            .endpoints_in(namespace)
            .map(|(_, e)| endpoint_target(e))
            .collect();
        affected.targets.extend(targets);
    }

    /// Targets with an Admission that selects namespaces by label.
    fn affect_namespace_selectors(&self, affected: &mut Affected) {
        for (target, keys) in &self.admissions_by_target {
            let uses_labels = keys.iter().filter_map(|k| self.admissions.get(k)).any(|a| {
                a.spec
                    .allow
                    .iter()
                    .chain(&a.spec.deny)
                    .any(|r| r.namespace_selector.is_some())
            });
            if uses_labels {
                affected.targets.insert(target.clone());
            }
        }
    }
}
