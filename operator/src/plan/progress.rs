//! Rollout: whether what the planner decided is in effect on the nodes.
//!
//! The planner decides; the agents apply. A NetworkService or Endpoint whose plan is
//! complete (`Ready=True`) is shown `Ready=False` with reason `Progressing` until every
//! node that carries it has applied a NodeState at least as new as the one that carries
//! it now, so `Ready` (and `kubectl wait --for=condition=Ready`) means packets can flow.
//! Pure: the versions the nodes applied are an input.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use wireway_crds::conditions::{READY, reason};
use wireway_crds::{
    AdmissionStatus, EndpointStatus, IdentityGrantStatus, NetworkServiceStatus, PeerClusterStatus,
};

use super::index::endpoint_target;
use super::{ObjectKey, Planner};

/// The statuses of every object as they are in effect: the plan's, with `Progressing`
/// where nodes have not applied it yet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Statuses {
    /// Status of every NetworkService.
    pub network_services: BTreeMap<ObjectKey, NetworkServiceStatus>,
    /// Status of every Endpoint.
    pub endpoints: BTreeMap<ObjectKey, EndpointStatus>,
    /// Status of every Admission (rules are in effect once planned).
    pub admissions: BTreeMap<ObjectKey, AdmissionStatus>,
    /// Status of every IdentityGrant (in effect once planned).
    pub identity_grants: BTreeMap<ObjectKey, IdentityGrantStatus>,
    /// Status of every PeerCluster.
    pub peer_clusters: BTreeMap<ObjectKey, PeerClusterStatus>,
}

/// How many names a Progressing message lists before it counts the rest.
const NAMES_SHOWN: usize = 5;

impl Planner {
    /// The last plan's statuses, with `Progressing` for every object that a node carrying
    /// it has not applied yet; `applied(node)` is the version the node's agent reported
    /// (0 if none).
    pub fn statuses(&self, applied: impl Fn(&str) -> u64) -> Statuses {
        let plan = self.last_plan();
        // Per service (by "<namespace>/<name>"): the nodes carrying it, and those behind.
        let mut carrying: BTreeMap<&str, usize> = BTreeMap::new();
        let mut behind: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut node_behind: BTreeMap<&str, bool> = BTreeMap::new();
        for (node, state) in &plan.nodes {
            let lags = applied(node) < state.version;
            node_behind.insert(node, lags);
            for service in &state.services {
                *carrying.entry(&service.name).or_default() += 1;
                if lags {
                    behind.entry(&service.name).or_default().push(node);
                }
            }
        }
        let now = &self.now();
        let network_services = plan
            .network_services
            .iter()
            .map(|(key, status)| {
                let mut status = status.clone();
                let name = key.to_string();
                if let Some(waiting) = behind.get(name.as_str()) {
                    let of = carrying.get(name.as_str()).copied().unwrap_or_default();
                    progressing(&mut status.conditions, waiting, of, now);
                }
                (key.clone(), status)
            })
            .collect();
        let endpoints = plan
            .endpoints
            .iter()
            .map(|(key, status)| {
                let mut status = status.clone();
                let target = self.endpoint(key).map(|e| endpoint_target(e).to_string());
                let mut nodes: Vec<&str> = Vec::new();
                for member in status
                    .members
                    .iter()
                    .filter(|m| m.admitted && m.address.is_some())
                {
                    match &member.node {
                        Some(node) => nodes.push(node),
                        // An external host is a peer on every node carrying the service.
                        None => {
                            let carrying = plan.nodes.iter().filter(|(_, s)| {
                                s.services.iter().any(|s| Some(&s.name) == target.as_ref())
                            });
                            nodes.extend(carrying.map(|(n, _)| n.as_str()));
                        }
                    }
                }
                nodes.sort_unstable();
                nodes.dedup();
                let waiting: Vec<&str> = nodes
                    .iter()
                    .copied()
                    .filter(|n| node_behind.get(n).copied().unwrap_or(true))
                    .collect();
                if !waiting.is_empty() {
                    progressing(&mut status.conditions, &waiting, nodes.len(), now);
                }
                (key.clone(), status)
            })
            .collect();
        Statuses {
            network_services,
            endpoints,
            admissions: plan.admissions.clone(),
            identity_grants: plan.identity_grants.clone(),
            peer_clusters: plan.peer_clusters.clone(),
        }
    }
}

/// Turns a `Ready=True` condition into `Ready=False, Progressing`, naming the nodes it
/// waits for.
fn progressing(conditions: &mut [Condition], waiting: &[&str], of: usize, now: &Time) {
    let Some(ready) = conditions
        .iter_mut()
        .find(|c| c.type_ == READY && c.status == "True")
    else {
        return;
    };
    let mut names = waiting
        .iter()
        .take(NAMES_SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if waiting.len() > NAMES_SHOWN {
        names.push_str(&format!(" and {} more", waiting.len() - NAMES_SHOWN));
    }
    ready.status = "False".to_owned();
    ready.reason = reason::PROGRESSING.to_owned();
    ready.message = format!(
        "{} of {of} nodes have not applied the current state yet: {names}",
        waiting.len()
    );
    ready.last_transition_time = now.clone();
}
