//! What the engine shows of itself: the snapshot behind `GET /status` (every node, its
//! agent and the objects with the statuses in effect), and the metrics drawn from it.

use std::net::IpAddr;

use wireway_runtime::clock::unix_seconds;

use super::Engine;
use super::objects::shown;
use crate::kind::Kind;
use crate::snapshot::{NodeSummary, Snapshot};

/// How long a WireGuard session lives without a new handshake (REJECT_AFTER_TIME).
const SESSION_LIFETIME_SECONDS: i64 = 180;

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Engine {
    /// The snapshot of now.
    pub(super) fn snapshot(&self) -> Snapshot {
        let plan = self.planner.last_plan();
        let now = unix_seconds();
        let small = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut names: Vec<&String> = plan.nodes.keys().chain(self.agents.keys()).collect();
        names.extend(self.declared.keys());
        names.sort();
        names.dedup();
        let nodes = names
            .into_iter()
            .map(|name| {
                let agent = self.agents.get(name);
                let node = self.planner.node(name);
                let state = plan.nodes.get(name);
                NodeSummary {
                    name: name.clone(),
                    connected: agent.is_some_and(|a| a.connections > 0),
                    backend: agent.map(|a| a.record.backend.clone()),
                    public_key: node.and_then(|n| n.public_key.clone()),
                    underlay: node.and_then(|n| n.underlay).map(|u: IpAddr| u.to_string()),
                    desired_version: state.map_or(0, |s| s.version),
                    applied_version: agent.map_or(0, |a| a.record.applied_version),
                    applied_at_ms: agent.and_then(|a| a.applied_at_ms),
                    services: state
                        .map(|s| s.services.iter().map(|s| s.name.clone()).collect())
                        .unwrap_or_default(),
                    problems: agent.map(|a| a.problems.clone()).unwrap_or_default(),
                    peers: agent.map_or(0, |a| small(a.handshakes.len())),
                    peers_active: agent.map_or(0, |a| {
                        small(
                            a.handshakes
                                .iter()
                                .filter(|&&at| at > 0 && now - at < SESSION_LIFETIME_SECONDS)
                                .count(),
                        )
                    }),
                    errors: agent.map(|a| a.errors.clone()).unwrap_or_default(),
                }
            })
            .collect();
        let waiting_for = self.readiness.reason();
        Snapshot {
            ready: waiting_for.is_none(),
            waiting_for,
            plans: self.plans,
            problems: self.problems.clone(),
            nodes,
            network_services: shown(
                self.planner.network_services(),
                &self.published.network_services,
            ),
            endpoints: shown(self.planner.endpoints(), &self.published.endpoints),
            admissions: shown(self.planner.admissions(), &self.published.admissions),
        }
    }

    /// Sets the gauges from `snapshot`.
    pub(super) fn update_metrics(&self, snapshot: &Snapshot) {
        let m = &self.metrics;
        let connected = snapshot.nodes.iter().filter(|n| n.connected).count();
        m.agents_connected.set(count(connected));
        let planned = snapshot.nodes.iter().filter(|n| n.desired_version > 0);
        let (current, behind): (Vec<&NodeSummary>, Vec<&NodeSummary>) =
            planned.partition(|n| n.applied_version >= n.desired_version);
        m.nodes
            .get_or_create(&[("state", "current")])
            .set(count(current.len()));
        m.nodes
            .get_or_create(&[("state", "behind")])
            .set(count(behind.len()));
        let lag = behind
            .iter()
            .map(|n| n.desired_version - n.applied_version)
            .max()
            .unwrap_or(0);
        m.version_lag_max
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
        m.objects
            .get_or_create(&[("kind", Kind::NetworkService.name())])
            .set(count(snapshot.network_services.len()));
        m.objects
            .get_or_create(&[("kind", Kind::Endpoint.name())])
            .set(count(snapshot.endpoints.len()));
        m.objects
            .get_or_create(&[("kind", Kind::Admission.name())])
            .set(count(snapshot.admissions.len()));
        m.source_problems.set(count(self.problems.len()));
    }
}
