//! Where the engine publishes and the servers subscribe: one watch channel per node for
//! its NodeState (so only nodes whose state changed are woken), one for the status
//! snapshot, one for what the Kubernetes controller acts on, and one for what the
//! federation serves peer clusters. What the engine sends
//! out besides (events on objects, [`Addressed`]) is defined here too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::watch;
use wireway_proto::NodeState;

use crate::plan::events::Event;
use crate::plan::{Half, ObjectKey, Statuses};
use crate::snapshot::Snapshot;
use crate::source::Problem;

/// An event and the object it is on, as the engine tells the controller.
pub type Addressed = (Event, ObjectReference);

/// What the engine publishes for the Kubernetes controller: the statuses to write, what
/// the objects hold now, and the finalizers to add or remove.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    /// The statuses in effect (what the objects should hold).
    pub statuses: Statuses,
    /// The statuses the objects hold, as last seen.
    pub live: Statuses,
    /// Objects that do not decode: they get `Ready=False, InvalidSpec`.
    pub invalid: Vec<Problem>,
    /// NetworkServices whose finalizer must be added or removed.
    pub finalizers: Vec<FinalizerAction>,
}

/// A change to a NetworkService's finalizers.
/// What the federation serves: the PeerClusters, and this cluster's halves of the
/// services shared with each (by peer, then service), as last planned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Federated {
    /// The PeerClusters, by name.
    pub peer_clusters: BTreeMap<String, wireway_crds::PeerCluster>,
    /// This cluster's halves for each peer.
    pub halves: BTreeMap<String, BTreeMap<ObjectKey, Half>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizerAction {
    /// The NetworkService.
    pub key: ObjectKey,
    /// Add the operator's finalizer (else remove it).
    pub add: bool,
    /// The finalizers it holds now.
    pub current: Vec<String>,
    /// The resourceVersion they were read at: the patch carries it, so it fails rather
    /// than overwrite someone else's change to the list.
    pub resource_version: Option<String>,
}

/// Who leads, as this operator knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    /// Whether this operator leads: it writes statuses, events and finalizers, and it
    /// serves agents.
    pub leading: bool,
    /// The leader's identity, when known (agents sent away are told it).
    pub leader: Option<String>,
    /// This operator's term while it leads, stamped on the states it serves (see
    /// `NodeState.epoch`): it grows with every takeover; 0 without a cluster.
    pub epoch: u64,
}

impl Leadership {
    /// A standby that knows no leader yet (an operator in a cluster, until its first
    /// round of the election).
    pub const UNKNOWN: Self = Self {
        leading: false,
        leader: None,
        epoch: 0,
    };
}

/// A node's latest state; `None` until the operator serves (its sources have synced).
pub type NodeStateWatch = watch::Receiver<Option<Arc<NodeState>>>;

/// The engine's outputs.
#[derive(Debug)]
pub struct Hub {
    nodes: Mutex<BTreeMap<String, watch::Sender<Option<Arc<NodeState>>>>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    published: watch::Sender<Arc<Published>>,
    federated: watch::Sender<Arc<Federated>>,
    /// Whether this operator writes to the objects and serves agents: it does unless a
    /// controller says it is a standby (without a cluster there is no other operator).
    leadership: watch::Sender<Leadership>,
    /// Whose plans the states here are (see [`Planned`]).
    planned: Mutex<Planned>,
}

/// Whose plans a hub's states are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Planned {
    /// None yet: there are no states, and a stream waits for its node's first.
    #[default]
    Nothing,
    /// A standby's own, which a new leader plans again from its predecessor's
    /// allocations before they are served.
    Standby,
    /// The leader's, in this term (epoch).
    Term(u64),
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            nodes: Mutex::default(),
            snapshot: watch::Sender::new(Arc::new(Snapshot::default())),
            published: watch::Sender::new(Arc::new(Published::default())),
            federated: watch::Sender::new(Arc::new(Federated::default())),
            leadership: watch::Sender::new(Leadership {
                leading: true,
                leader: None,
                epoch: 0,
            }),
            planned: Mutex::default(),
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

    /// Closes `node`'s channel: its state is gone. Whoever follows it sees the end, and
    /// the next subscriber waits for a new state rather than get the old one.
    pub fn retire(&self, node: &str) {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        nodes.remove(node);
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

    /// Says who leads. A standby's engine takes the statuses the objects hold as its own
    /// last published ones, so that on taking over it carries on from them (transition
    /// times included) rather than from what it planned itself; only a leader serves
    /// agents.
    pub fn set_leadership(&self, leadership: Leadership) {
        self.leadership.send_if_modified(|current| {
            let changed = *current != leadership;
            *current = leadership;
            changed
        });
    }

    /// Says whose plans the states now are.
    pub fn planned(&self, planned: Planned) {
        *self
            .planned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = planned;
    }

    /// Whether agents are served: this operator leads, and its states are not a
    /// standby's own plans (a new leader first plans again from what its predecessor
    /// handed out).
    pub fn serves(&self) -> bool {
        let leadership = self.leadership.borrow().clone();
        let planned = *self
            .planned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        leadership.leading
            && match planned {
                Planned::Nothing => true,
                Planned::Standby => false,
                Planned::Term(epoch) => epoch == leadership.epoch,
            }
    }

    /// Whether this operator leads (see [`set_leadership`](Self::set_leadership)).
    pub fn leading(&self) -> bool {
        self.leadership.borrow().leading
    }

    /// Who leads.
    pub fn leadership(&self) -> Leadership {
        self.leadership.borrow().clone()
    }

    /// Follows who leads.
    pub fn subscribe_leading(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    /// Publishes what the controller acts on, if it changed.
    pub fn publish_for_controller(&self, published: Published) {
        self.published.send_if_modified(|current| {
            let changed = **current != published;
            if changed {
                *current = Arc::new(published);
            }
            changed
        });
    }

    /// Publishes what the federation serves, if it changed.
    pub fn publish_federated(&self, federated: Federated) {
        self.federated.send_if_modified(|current| {
            let changed = **current != federated;
            if changed {
                *current = Arc::new(federated);
            }
            changed
        });
    }

    /// Follows what the federation serves.
    pub fn subscribe_federated(&self) -> watch::Receiver<Arc<Federated>> {
        self.federated.subscribe()
    }

    /// Follows what the controller acts on.
    pub fn subscribe_controller(&self) -> watch::Receiver<Arc<Published>> {
        self.published.subscribe()
    }

    /// The latest status snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }
}
