//! Where the engine publishes and the servers subscribe: one watch channel per node for
//! its NodeState (so only nodes whose state changed are woken), and one for the status
//! snapshot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use wireway_proto::NodeState;

use crate::snapshot::Snapshot;

/// A node's latest state; `None` until the operator serves (its sources have synced).
pub type NodeStateWatch = watch::Receiver<Option<Arc<NodeState>>>;

/// The engine's outputs.
#[derive(Debug)]
pub struct Hub {
    nodes: Mutex<BTreeMap<String, watch::Sender<Option<Arc<NodeState>>>>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            nodes: Mutex::default(),
            snapshot: watch::Sender::new(Arc::new(Snapshot::default())),
        }
    }
}

impl Hub {
    /// Follows `node`'s state: the current one first (once there is one), then each new one.
    pub fn subscribe(&self, node: &str) -> NodeStateWatch {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes
            .entry(node.to_owned())
            .or_insert_with(|| watch::Sender::new(None))
            .subscribe()
    }

    /// Publishes a node's new state to whoever follows it.
    pub fn publish(&self, state: NodeState) {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let sender = nodes
            .entry(state.node.clone())
            .or_insert_with(|| watch::Sender::new(None));
        sender.send_replace(Some(Arc::new(state)));
    }

    /// The state last published for `node`.
    pub fn current(&self, node: &str) -> Option<Arc<NodeState>> {
        let nodes = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.get(node).and_then(|s| s.borrow().clone())
    }

    /// Publishes a new status snapshot.
    pub fn publish_snapshot(&self, snapshot: Snapshot) {
        self.snapshot.send_replace(Arc::new(snapshot));
    }

    /// The latest status snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }
}
