//! NetworkServices' finalizers: the operator's finalizer goes on every NetworkService, and
//! comes off one being deleted only once the nodes that carried it have applied a state
//! without it, so its interfaces, veths and rules are gone before the object is.

use std::collections::BTreeMap;

use wireway_crds::{FINALIZER, NetworkService};

use super::Engine;
use super::agents::Agent;
use super::hub::FinalizerAction;
use crate::plan::{Change, ObjectKey, Plan};

/// A NetworkService being deleted: the nodes that carried it, and (once planned
/// without it) the versions they must apply before its finalizer goes.
#[derive(Debug, Clone, Default)]
struct Cleanup {
    carrying: Vec<String>,
    required: Option<BTreeMap<String, u64>>,
}

/// The finalizers of the NetworkServices, and the cleanups their removal waits for.
#[derive(Debug, Default)]
pub(super) struct Finalizers {
    /// Each NetworkService's finalizers and resourceVersion, as last delivered.
    held: BTreeMap<ObjectKey, (Vec<String>, Option<String>)>,
    /// NetworkServices being deleted that wait for their cleanup.
    deleting: BTreeMap<ObjectKey, Cleanup>,
}

impl Finalizers {
    /// Remembers the finalizers a NetworkService arrives with.
    pub(super) fn seen(&mut self, key: &ObjectKey, service: &NetworkService) {
        let current = service.metadata.finalizers.clone().unwrap_or_default();
        let version = service.metadata.resource_version.clone();
        self.held.insert(key.clone(), (current, version));
    }

    /// Forgets a NetworkService that is gone.
    pub(super) fn forget(&mut self, key: &ObjectKey) {
        self.held.remove(key);
        self.deleting.remove(key);
    }

    /// After a plan: each cleanup started before it waits for the versions of this plan
    /// on the nodes that carried its service.
    pub(super) fn planned(&mut self, plan: &Plan) {
        for cleanup in self.deleting.values_mut().filter(|c| c.required.is_none()) {
            let required = cleanup
                .carrying
                .iter()
                .filter_map(|n| Some((n.clone(), plan.nodes.get(n)?.version)))
                .collect();
            cleanup.required = Some(required);
        }
    }

    /// The finalizer to add to each NetworkService without it, and to remove from each
    /// one whose cleanup is done.
    pub(super) fn actions(&self, agents: &BTreeMap<String, Agent>) -> Vec<FinalizerAction> {
        self.held
            .iter()
            .filter_map(|(key, (current, resource_version))| {
                let has = current.iter().any(|f| f == FINALIZER);
                let add = match self.deleting.get(key) {
                    None if !has => true,
                    Some(cleanup) if has && cleaned_up(cleanup, agents) => false,
                    _ => return None,
                };
                Some(FinalizerAction {
                    key: key.clone(),
                    add,
                    current: current.clone(),
                    resource_version: resource_version.clone(),
                })
            })
            .collect()
    }
}

/// Whether a NetworkService being deleted is gone from every node that carried it
/// (nodes whose agent is not connected do not hold it up: they clean up when their
/// agent comes back).
fn cleaned_up(cleanup: &Cleanup, agents: &BTreeMap<String, Agent>) -> bool {
    let Some(required) = &cleanup.required else {
        return false;
    };
    required.iter().all(|(node, version)| {
        agents
            .get(node)
            .is_none_or(|a| a.connections == 0 || a.record.applied_version >= *version)
    })
}

impl Engine {
    /// A NetworkService is being deleted: it leaves the plan now, and its finalizer
    /// waits until the nodes that carried it have applied a state without it.
    pub(super) fn delete_service(&mut self, key: ObjectKey) {
        if self.finalizers.deleting.contains_key(&key) {
            return;
        }
        let name = key.to_string();
        let carrying = self
            .planner
            .last_plan()
            .nodes
            .iter()
            .filter(|(_, s)| s.services.iter().any(|s| s.name == name))
            .map(|(n, _)| n.clone())
            .collect();
        self.finalizers.deleting.insert(
            key.clone(),
            Cleanup {
                carrying,
                required: None,
            },
        );
        self.planner.apply(Change::NetworkServiceDeleted(key));
        self.dirty = true;
    }
}
