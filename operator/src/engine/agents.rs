//! What the engine knows of agents: their hellos, reports and open streams, merged with
//! the nodes the sources declare into the planner's nodes; and the grace the first plan
//! gives agents whose key is not known yet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use wireway_proto::{AgentHello, AgentReport, WireGuardBackend};
use wireway_runtime::clock::unix_ms;

use super::Engine;
use super::store::AgentRecord;
use crate::plan::{Change, Node};
use crate::snapshot::ErrorSummary;

/// What the engine knows of an agent beyond what it stores.
#[derive(Debug, Clone, Default)]
pub(super) struct Agent {
    pub(super) record: AgentRecord,
    /// Streams open now.
    pub(super) connections: u32,
    /// When the last report arrived (ms since the Unix epoch).
    pub(super) applied_at_ms: Option<u64>,
    /// What the agent could not apply in its last pass.
    pub(super) problems: Vec<String>,
    /// Unix time of each peer's last handshake, 0 for none, in the last report.
    pub(super) handshakes: Vec<i64>,
    /// The agent's errors since it started, in the last report.
    pub(super) errors: Vec<ErrorSummary>,
}

/// The agents the store remembers, none connected.
pub(super) fn restored(records: &BTreeMap<String, AgentRecord>) -> BTreeMap<String, Agent> {
    records
        .iter()
        .map(|(node, record)| {
            let agent = Agent {
                record: record.clone(),
                ..Agent::default()
            };
            (node.clone(), agent)
        })
        .collect()
}

fn backend_name(backend: i32) -> &'static str {
    WireGuardBackend::try_from(backend)
        .unwrap_or(WireGuardBackend::WireguardBackendUnspecified)
        .label()
}

impl Engine {
    /// The version an agent applied, as this operator numbers them: it counts only if the
    /// state was of this operator's epoch (another leader numbered its versions on its
    /// own); else none is.
    fn applied_here(&self, epoch: u64, version: u64) -> u64 {
        if epoch == self.hub.leadership().epoch {
            version
        } else {
            0
        }
    }

    /// An agent opened a stream: what it says of its node replaces what it said before.
    pub(super) fn hello(&mut self, hello: AgentHello) {
        let applied = self.applied_here(hello.applied_epoch, hello.applied_version);
        let agent = self.agents.entry(hello.node.clone()).or_default();
        agent.connections += 1;
        agent.record = AgentRecord {
            public_key: hello.public_key,
            underlay: hello.underlay_address.parse().ok(),
            underlay_mtu: (hello.underlay_mtu > 0).then_some(hello.underlay_mtu),
            backend: backend_name(hello.backend).to_owned(),
            hello_version: hello.applied_version,
            applied_version: applied,
        };
        self.update_node(&hello.node);
    }

    /// An agent reported its pass: the version it applied, its peers and its errors.
    pub(super) fn report(&mut self, report: AgentReport) {
        self.metrics.reports.inc();
        let applied = self.applied_here(report.applied_epoch, report.applied_version);
        let agent = self.agents.entry(report.node.clone()).or_default();
        agent.record.applied_version = applied;
        agent.applied_at_ms = Some(unix_ms());
        agent.problems = report.problems;
        agent.handshakes = report
            .peers
            .iter()
            .map(|p| p.last_handshake_unix_seconds)
            .collect();
        agent.errors = report
            .errors
            .into_iter()
            .map(|e| ErrorSummary {
                category: e.category,
                count: e.count,
                last_message: e.last_message,
            })
            .collect();
    }

    /// A stream of `node`'s agent closed.
    pub(super) fn disconnected(&mut self, node: &str) {
        if let Some(agent) = self.agents.get_mut(node) {
            agent.connections = agent.connections.saturating_sub(1);
        }
    }

    /// Gives the planner a node's record (declared, and what its agent said) if it changed.
    pub(super) fn update_node(&mut self, name: &str) {
        let declared = self.declared.get(name);
        let agent = self.agents.get(name).map(|a| &a.record);
        let merged = match (declared, agent) {
            (None, None) => None,
            _ => Some(Node {
                name: name.to_owned(),
                public_key: agent
                    .map(|a| a.public_key.clone())
                    .filter(|k| !k.is_empty())
                    .or_else(|| declared.and_then(|d| d.public_key.clone())),
                underlay: agent
                    .and_then(|a| a.underlay)
                    .or_else(|| declared.and_then(|d| d.underlay)),
                underlay_mtu: agent
                    .and_then(|a| a.underlay_mtu)
                    .or_else(|| declared.and_then(|d| d.underlay_mtu)),
                seen_version: agent.map_or(0, |a| a.hello_version),
                pod_cidrs: declared.map(|d| d.pod_cidrs.clone()).unwrap_or_default(),
                addresses: declared.map(|d| d.addresses.clone()).unwrap_or_default(),
                created: declared.and_then(|d| d.created.clone()),
            }),
        };
        let current = self.planner.node(name);
        if merged.as_ref() == current {
            return;
        }
        self.planner.apply(match merged {
            Some(node) => Change::Node(node),
            None => Change::NodeDeleted(name.to_owned()),
        });
        self.dirty = true;
    }

    /// Nodes (declared, known from agents, or running pods) whose WireGuard key is not
    /// known yet.
    pub(super) fn keys_missing(&self) -> Vec<&str> {
        let mut missing: Vec<&str> = self
            .planner
            .nodes()
            .filter(|n| n.public_key.is_none())
            .map(|n| n.name.as_str())
            .collect();
        let known: BTreeSet<&str> = self.planner.nodes().map(|n| n.name.as_str()).collect();
        missing.extend(
            self.planner
                .pods()
                .filter_map(|p| p.node.as_deref())
                .filter(|n| !known.contains(n)),
        );
        missing.sort_unstable();
        missing.dedup();
        missing
    }

    /// Until the first plan, the moment the grace for missing agents ends (if any are).
    pub(super) fn grace_deadline(&self) -> Option<Instant> {
        let waiting = self.synced && self.plans == 0 && !self.keys_missing().is_empty();
        waiting.then(|| self.started + self.config.agent_grace)
    }
}
