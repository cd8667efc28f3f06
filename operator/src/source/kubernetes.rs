//! The Kubernetes source: watches on the API server feed the same World the manifest
//! source feeds.
//!
//! It watches NetworkServices, Endpoints and Admissions in every namespace,
//! IdentityGrants, Pods, Nodes and Namespaces, and the cluster's ServiceCIDRs. Every kind
//! is watched as untyped objects and decoded one object at a time, so an object that does
//! not decode (stored before a schema change, written around validation) is reported as a
//! problem with its identity and skipped, keeping its last good version; it never stops a
//! watch. Pods that run on the host's network or have finished are not workloads and are
//! left out.
//!
//! ServiceCIDRs are optional (`Kind::required`): on an API server that does not serve
//! them, the operator says so once and plans without them (the administrator's
//! `--reserved-ranges` then stand for the Service range).
//!
//! Guarantees:
//! * `Synced` is delivered once, after every kind's first complete list (an optional kind
//!   the API server does not serve counts as listed, empty);
//! * a re-list after a broken watch delivers exactly what changed meanwhile, deletions
//!   included (the list replaces the kind's objects and is diffed against them).

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as networking;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use tokio::sync::mpsc;
use wireway_crds::{Admission, Endpoint, IdentityGrant, NetworkService, PeerCluster};
use wireway_runtime::errors::chain;

use super::items::{self, Item, Key, diff};
use super::{Event, Problem, ProblemObject};
use crate::kind::Kind;
use crate::plan::ObjectKey;

/// The annotation a kubelet puts on the mirror of a static pod.
const MIRROR_POD: &str = "kubernetes.io/config.mirror";

/// The API resource of a kind, as the API server serves it.
pub fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::NetworkService => ApiResource::erase::<NetworkService>(&()),
        Kind::Endpoint => ApiResource::erase::<Endpoint>(&()),
        Kind::Admission => ApiResource::erase::<Admission>(&()),
        Kind::IdentityGrant => ApiResource::erase::<IdentityGrant>(&()),
        Kind::PeerCluster => ApiResource::erase::<PeerCluster>(&()),
        Kind::Pod => ApiResource::erase::<core::Pod>(&()),
        Kind::Node => ApiResource::erase::<core::Node>(&()),
        Kind::Namespace => ApiResource::erase::<core::Namespace>(&()),
        Kind::ServiceCidr => ApiResource::erase::<networking::ServiceCIDR>(&()),
    }
}

/// What one object is to the World: its key, and its item (`None`: not a workload, as
/// if deleted) or why it cannot be read.
pub fn decode(kind: Kind, object: &DynamicObject) -> (Key, Result<Option<Item>, String>) {
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    let name = object.metadata.name.clone().unwrap_or_default();
    let object_key = ObjectKey::new(&namespace, &name);
    fn typed<K: Resource + serde::de::DeserializeOwned>(o: &DynamicObject) -> Result<K, String> {
        o.clone().try_parse::<K>().map_err(|e| e.to_string())
    }
    match kind {
        Kind::NetworkService => (
            Key::NetworkService(object_key),
            typed(object).map(|o| Some(Item::NetworkService(Box::new(o)))),
        ),
        Kind::Endpoint => (
            Key::Endpoint(object_key),
            typed(object).map(|o| Some(Item::Endpoint(Box::new(o)))),
        ),
        Kind::Admission => (
            Key::Admission(object_key),
            typed(object).map(|o| Some(Item::Admission(Box::new(o)))),
        ),
        Kind::IdentityGrant => (
            Key::IdentityGrant(name),
            typed(object).map(|o| Some(Item::IdentityGrant(Box::new(o)))),
        ),
        Kind::PeerCluster => (
            Key::PeerCluster(name),
            typed(object).map(|o| Some(Item::PeerCluster(Box::new(o)))),
        ),
        Kind::ServiceCidr => (
            Key::ServiceCidr(name.clone()),
            typed::<networking::ServiceCIDR>(object)
                .map(|c| Some(Item::ServiceCidr(items::service_cidr(&name, c)))),
        ),
        Kind::Pod => {
            let key = Key::Pod(namespace.clone(), name.clone());
            let item = typed::<core::Pod>(object).map(|pod| {
                let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                let finished = matches!(phase, Some("Succeeded" | "Failed"));
                let gone = pod.metadata.deletion_timestamp.is_some();
                // A static pod's mirror is written by its node's kubelet, in any namespace
                // with any labels: a node's word, not the cluster's, so never a member.
                let mirror = pod
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(MIRROR_POD));
                (!host_network && !finished && !gone && !mirror)
                    .then(|| Item::Pod(items::pod(&namespace, &name, pod)))
            });
            (key, item)
        }
        Kind::Node => (
            Key::Node(name.clone()),
            typed::<core::Node>(object)
                .and_then(|n| items::node(&name, n))
                .map(|n| Some(Item::Node(n))),
        ),
        Kind::Namespace => (
            Key::Namespace(name.clone()),
            typed::<core::Namespace>(object).map(|n| Some(Item::Namespace(items::namespace(&n)))),
        ),
    }
}

/// What the source holds of one kind.
#[derive(Debug, Default)]
struct KindState {
    current: BTreeMap<Key, Item>,
    /// Objects of a list in progress, and every key it named (decoded or not).
    listing: Option<(BTreeMap<Key, Item>, BTreeSet<Key>)>,
    synced: bool,
}

/// The source's state: every kind's objects and every object's problem.
#[derive(Debug, Default)]
pub struct Objects {
    kinds: BTreeMap<Kind, KindState>,
    problems: BTreeMap<Key, Problem>,
    announced: bool,
}

impl Objects {
    /// Applies one watch event of `kind`; returns what to deliver.
    pub fn apply_event(&mut self, kind: Kind, event: watcher::Event<DynamicObject>) -> Vec<Event> {
        let problems_before = self.problems.clone();
        let state = self.kinds.entry(kind).or_default();
        let mut changes = Vec::new();
        match event {
            watcher::Event::Init => state.listing = Some(Default::default()),
            watcher::Event::InitApply(object) => {
                let (key, item) = decode(kind, &object);
                let last_good = state.current.get(&key).cloned();
                let (listing, seen) = state.listing.get_or_insert_with(Default::default);
                seen.insert(key.clone());
                match record(&mut self.problems, kind, &object, &key, item) {
                    Read::Item(item) => {
                        listing.insert(key, item);
                    }
                    Read::Absent => {}
                    Read::Undecodable => {
                        if let Some(item) = last_good {
                            listing.insert(key, item);
                        }
                    }
                }
            }
            watcher::Event::InitDone => {
                let (listed, seen) = state.listing.take().unwrap_or_default();
                changes = diff(&state.current, &listed);
                let gone: Vec<Key> = self
                    .problems
                    .keys()
                    .filter(|k| kind_of(k) == kind && !seen.contains(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    self.problems.remove(&key);
                }
                state.current = listed;
                state.synced = true;
            }
            watcher::Event::Apply(object) => {
                let (key, item) = decode(kind, &object);
                let new = match record(&mut self.problems, kind, &object, &key, item) {
                    Read::Item(item) => Some(item),
                    Read::Absent => None,
                    Read::Undecodable => state.current.get(&key).cloned(),
                };
                let old = state.current.remove(&key);
                let before = old.iter().map(|o| (key.clone(), o.clone())).collect();
                let after = new.iter().map(|n| (key.clone(), n.clone())).collect();
                changes = diff(&before, &after);
                if let Some(new) = new {
                    state.current.insert(key, new);
                }
            }
            watcher::Event::Delete(object) => {
                let (key, _) = decode(kind, &object);
                self.problems.remove(&key);
                if let Some(old) = state.current.remove(&key) {
                    changes = diff(&BTreeMap::from([(key, old)]), &BTreeMap::new());
                }
            }
        }
        let mut out = Vec::new();
        if !changes.is_empty() {
            out.push(Event::Changes(changes));
        }
        if self.problems != problems_before {
            out.push(Event::Problems(self.problems.values().cloned().collect()));
        }
        let all_synced = Kind::ALL
            .iter()
            .all(|k| self.kinds.get(k).is_some_and(|s| s.synced));
        if all_synced && !self.announced {
            self.announced = true;
            out.push(Event::Synced);
        }
        out
    }
}

fn kind_of(key: &Key) -> Kind {
    match key {
        Key::NetworkService(_) => Kind::NetworkService,
        Key::Endpoint(_) => Kind::Endpoint,
        Key::Admission(_) => Kind::Admission,
        Key::IdentityGrant(_) => Kind::IdentityGrant,
        Key::PeerCluster(_) => Kind::PeerCluster,
        Key::Pod(..) => Kind::Pod,
        Key::Node(_) => Kind::Node,
        Key::Namespace(_) => Kind::Namespace,
        Key::ServiceCidr(_) => Kind::ServiceCidr,
    }
}

/// What a decoded object is to the World.
#[derive(Debug)]
enum Read {
    /// This item.
    Item(Item),
    /// Nothing (a pod that is not a workload): as if deleted.
    Absent,
    /// It does not decode: its last good version, if any, stays.
    Undecodable,
}

/// Records a decoded object's problem (or clears it).
fn record(
    problems: &mut BTreeMap<Key, Problem>,
    kind: Kind,
    object: &DynamicObject,
    key: &Key,
    item: Result<Option<Item>, String>,
) -> Read {
    match item {
        Ok(item) => {
            problems.remove(key);
            item.map_or(Read::Absent, Read::Item)
        }
        Err(message) => {
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            let name = object.metadata.name.clone().unwrap_or_default();
            problems.insert(
                key.clone(),
                Problem {
                    location: if namespace.is_empty() {
                        format!("{kind} {name}")
                    } else {
                        format!("{kind} {namespace}/{name}")
                    },
                    line: None,
                    message: format!(
                        "does not decode, so the last good version stays in effect: {message}"
                    ),
                    object: Some(ProblemObject {
                        kind,
                        namespace,
                        name,
                        generation: object.metadata.generation,
                    }),
                },
            );
            Read::Undecodable
        }
    }
}

/// Whether a watch failed because the API server does not serve the kind at all.
fn not_served(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404
    )
}

/// Watches every kind and delivers the World's changes until `events` closes.
pub async fn watch<T: From<Event> + Send + 'static>(client: Client, events: mpsc::Sender<T>) {
    let (found, mut received) = mpsc::channel::<(Kind, watcher::Event<DynamicObject>)>(256);
    for kind in Kind::ALL {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource(kind));
        let found = found.clone();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(event) => {
                        if found.send((kind, event)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) if !kind.required() && not_served(&e) => {
                        tracing::warn!(
                            kind = ?kind,
                            "the API server does not serve {kind}; planning without it (restart the operator once it does)"
                        );
                        for event in [watcher::Event::Init, watcher::Event::InitDone] {
                            if found.send((kind, event)).await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    Err(e) => tracing::warn!(
                        kind = ?kind,
                        error = %chain(&e),
                        "watch failed; retrying with backoff"
                    ),
                }
            }
        });
    }
    drop(found);
    let mut objects = Objects::default();
    while let Some((kind, event)) = received.recv().await {
        for out in objects.apply_event(kind, event) {
            if events.send(out.into()).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests;
