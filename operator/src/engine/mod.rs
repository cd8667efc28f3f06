//! The engine: one task that owns the planner. It takes the sources' changes and what
//! agents say, plans, publishes each changed node's state and the statuses on the
//! [`Hub`], and keeps the [`store`] up to date.
//!
//! Guarantees:
//! * nothing is served before every source has synced (a state made from half a World
//!   would drop peers and members);
//! * after a restart, nothing is served that drops a peer only because its agent has not
//!   said hello yet: keys come back from the store, and a node whose key is unknown is
//!   waited for (up to the agent grace) before the first plan;
//! * a node's state is published only when it changed;
//! * inputs are handled in batches: all that is waiting, then one plan.

pub mod hub;
pub mod store;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::mpsc;
use wireway_crds::{Admission, Endpoint, NetworkService};
use wireway_proto::{AgentHello, AgentReport, WireGuardBackend};
use wireway_runtime::http::Readiness;

use crate::controller::events::Addressed;
use crate::metrics::{Metrics, category};
use crate::plan::events::{self, Event};
use crate::plan::status::carry_transitions;
use crate::plan::{Change, Node, ObjectKey, Plan, Planner, Statuses, World};
use crate::snapshot::{ErrorSummary, NodeSummary, Snapshot};
use crate::source::{self, Problem};
pub use hub::{FinalizerAction, Hub, Published};
use k8s_openapi::api::core::v1::ObjectReference;
use store::{AgentRecord, Store, StoreError, Stored};

/// What the engine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A source's event.
    Source(source::Event),
    /// An agent opened a stream (its identity already checked).
    Hello(AgentHello),
    /// An agent reported (its identity already checked).
    Report(AgentReport),
    /// A stream of the node's agent closed.
    Disconnected(String),
}

impl From<source::Event> for Input {
    fn from(event: source::Event) -> Self {
        Self::Source(event)
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This cluster's SPIFFE trust domain.
    pub trust_domain: String,
    /// Where to keep the operator's state (see [`store`]); `None` keeps nothing.
    pub state_dir: Option<PathBuf>,
    /// How long the first plan waits for agents of nodes whose key is unknown.
    pub agent_grace: Duration,
    /// Whether the objects live in an API server: then NetworkServices carry the
    /// operator's finalizer, statuses are written back, and events are told.
    pub kubernetes: bool,
}

/// A NetworkService being deleted: the nodes that carried it, and (once planned
/// without it) the versions they must apply before its finalizer goes.
#[derive(Debug, Clone, Default)]
struct Cleanup {
    carriers: Vec<String>,
    required: Option<BTreeMap<String, u64>>,
}

/// What the engine knows of an agent beyond what it stores.
#[derive(Debug, Clone, Default)]
struct Agent {
    record: AgentRecord,
    /// Streams open now.
    connections: u32,
    /// When the last report arrived (ms since the Unix epoch).
    applied_at_ms: Option<u64>,
    /// What the agent could not apply in its last pass.
    problems: Vec<String>,
    /// Unix time of each peer's last handshake, 0 for none, in the last report.
    handshakes: Vec<i64>,
    /// The agent's errors since it started, in the last report.
    errors: Vec<ErrorSummary>,
}

/// How long a WireGuard session lives without a new handshake (REJECT_AFTER_TIME).
const SESSION_LIFETIME_SECONDS: i64 = 180;

/// The engine's state.
#[derive(Debug)]
pub struct Engine {
    planner: Planner,
    config: Config,
    started: Instant,
    synced: bool,
    /// Changes since the last plan.
    dirty: bool,
    /// Something shown in the snapshot changed since the last one.
    stale: bool,
    plans: u64,
    declared: BTreeMap<String, Node>,
    agents: BTreeMap<String, Agent>,
    problems: Vec<Problem>,
    published: Statuses,
    /// Statuses from the store, given to objects that arrive before the first plan.
    restored: Option<Stored>,
    /// The statuses the objects hold, as the source last delivered them.
    live: Statuses,
    /// NetworkServices' finalizers and resourceVersion, as last delivered.
    finalizers: BTreeMap<ObjectKey, (Vec<String>, Option<String>)>,
    /// NetworkServices being deleted that wait for their cleanup.
    deleting: BTreeMap<ObjectKey, Cleanup>,
    /// Where events go (the controller); `None` tells none.
    events: Option<mpsc::Sender<Addressed>>,
    store: Option<Store>,
    hub: Arc<Hub>,
    metrics: Metrics,
    readiness: Readiness,
}

/// Now, to the second: conditions' times are stored with second precision, so a time
/// with more would never compare equal to what the API server gives back.
pub fn now_time() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn backend_name(backend: i32) -> &'static str {
    WireGuardBackend::try_from(backend)
        .unwrap_or(WireGuardBackend::WireguardBackendUnspecified)
        .label()
}

impl Engine {
    /// An engine that publishes on `hub`; with a state directory, it starts from what the
    /// store holds.
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        metrics: Metrics,
        readiness: Readiness,
    ) -> Result<Self, StoreError> {
        let (store, stored) = match &config.state_dir {
            Some(dir) => {
                let (store, stored) = Store::open(dir)?;
                (Some(store), stored)
            }
            None => (None, Stored::default()),
        };
        let world = World {
            trust_domain: config.trust_domain.clone(),
            now: now_time(),
            nodes: Vec::new(),
            namespaces: Vec::new(),
            pods: Vec::new(),
            network_services: Vec::new(),
            endpoints: Vec::new(),
            admissions: Vec::new(),
        };
        let previous = Plan {
            nodes: stored.node_states.clone(),
            ..Plan::default()
        };
        let mut engine = Self {
            planner: Planner::new(world, Some(&previous)),
            config,
            started: Instant::now(),
            synced: false,
            dirty: false,
            stale: true,
            plans: 0,
            declared: BTreeMap::new(),
            agents: stored
                .agents
                .iter()
                .map(|(node, record)| {
                    let agent = Agent {
                        record: record.clone(),
                        ..Agent::default()
                    };
                    (node.clone(), agent)
                })
                .collect(),
            problems: Vec::new(),
            published: Statuses::default(),
            restored: Some(stored),
            live: Statuses::default(),
            finalizers: BTreeMap::new(),
            deleting: BTreeMap::new(),
            events: None,
            store,
            hub,
            metrics,
            readiness,
        };
        let known: Vec<String> = engine.agents.keys().cloned().collect();
        for node in known {
            engine.update_node(&node);
        }
        Ok(engine)
    }

    /// Tells `events` what changes in the objects' statuses (for the controller).
    pub fn tell_events(&mut self, events: mpsc::Sender<Addressed>) {
        self.events = Some(events);
    }

    /// Handles inputs until `inputs` closes: each batch of waiting inputs, then one step.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        loop {
            let input = match self.grace_deadline() {
                Some(deadline) => tokio::select! {
                    input = inputs.recv() => input.map(Some),
                    () = tokio::time::sleep_until(deadline.into()) => Some(None),
                },
                None => inputs.recv().await.map(Some),
            };
            let Some(input) = input else { return };
            if let Some(input) = input {
                self.handle(input);
            }
            while let Ok(input) = inputs.try_recv() {
                self.handle(input);
            }
            self.step();
        }
    }

    /// Takes one input.
    pub fn handle(&mut self, input: Input) {
        self.stale = true;
        match input {
            Input::Source(source::Event::Changes(changes)) => {
                for change in changes {
                    self.source_change(change);
                }
            }
            Input::Source(source::Event::Problems(problems)) => {
                let new = problems
                    .iter()
                    .filter(|p| !self.problems.contains(p))
                    .count();
                for _ in 0..new {
                    self.metrics.error(category::MANIFEST);
                }
                self.problems = problems;
            }
            Input::Source(source::Event::Synced) => {
                self.synced = true;
                self.dirty = true;
            }
            Input::Hello(hello) => {
                let agent = self.agents.entry(hello.node.clone()).or_default();
                agent.connections += 1;
                agent.record = AgentRecord {
                    public_key: hello.public_key,
                    underlay: hello.underlay_address.parse().ok(),
                    underlay_mtu: (hello.underlay_mtu > 0).then_some(hello.underlay_mtu),
                    backend: backend_name(hello.backend).to_owned(),
                    hello_version: hello.applied_version,
                    applied_version: hello.applied_version,
                };
                self.update_node(&hello.node);
            }
            Input::Report(report) => {
                self.metrics.reports.inc();
                let agent = self.agents.entry(report.node.clone()).or_default();
                agent.record.applied_version = report.applied_version;
                agent.applied_at_ms = Some(now_ms());
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
            Input::Disconnected(node) => {
                if let Some(agent) = self.agents.get_mut(&node) {
                    agent.connections = agent.connections.saturating_sub(1);
                }
            }
        }
    }

    /// A change from a source. Nodes are merged with what their agents said; objects that
    /// arrive before the first plan get their stored status back.
    fn source_change(&mut self, mut change: Change) {
        match change {
            Change::Node(node) => {
                let name = node.name.clone();
                self.declared.insert(name.clone(), node);
                self.update_node(&name);
                return;
            }
            Change::NodeDeleted(name) => {
                self.declared.remove(&name);
                self.update_node(&name);
                return;
            }
            Change::NetworkService(ref mut o) => {
                let key = o.key();
                restore(&mut self.restored, o, |s| &mut s.network_services);
                seen(
                    &mut self.live.network_services,
                    &mut self.published.network_services,
                    o,
                );
                let unchanged = same_spec(self.planner.network_service(&key), o);
                if self.config.kubernetes {
                    let current = o.metadata.finalizers.clone().unwrap_or_default();
                    let version = o.metadata.resource_version.clone();
                    self.finalizers.insert(key.clone(), (current, version));
                }
                if o.metadata.deletion_timestamp.is_some() {
                    self.delete_service(key);
                    return;
                }
                if unchanged {
                    return;
                }
            }
            Change::Endpoint(ref mut o) => {
                restore(&mut self.restored, o, |s| &mut s.endpoints);
                seen(&mut self.live.endpoints, &mut self.published.endpoints, o);
                if same_spec(self.planner.endpoint(&o.key()), o) {
                    return;
                }
            }
            Change::Admission(ref mut o) => {
                restore(&mut self.restored, o, |s| &mut s.admissions);
                seen(&mut self.live.admissions, &mut self.published.admissions, o);
                if same_spec(self.planner.admission(&o.key()), o) {
                    return;
                }
            }
            Change::NetworkServiceDeleted(ref key) => {
                self.live.network_services.remove(key);
                self.finalizers.remove(key);
                self.deleting.remove(key);
            }
            Change::EndpointDeleted(ref key) => {
                self.live.endpoints.remove(key);
            }
            Change::AdmissionDeleted(ref key) => {
                self.live.admissions.remove(key);
            }
            _ => {}
        }
        self.planner.apply(change);
        self.dirty = true;
    }

    /// A NetworkService is being deleted: it leaves the plan now, and its finalizer
    /// waits until the nodes that carried it have applied a state without it.
    fn delete_service(&mut self, key: ObjectKey) {
        if self.deleting.contains_key(&key) {
            return;
        }
        let name = key.to_string();
        let carriers = self
            .planner
            .last_plan()
            .nodes
            .iter()
            .filter(|(_, s)| s.services.iter().any(|s| s.name == name))
            .map(|(n, _)| n.clone())
            .collect();
        self.deleting.insert(
            key.clone(),
            Cleanup {
                carriers,
                required: None,
            },
        );
        self.planner.apply(Change::NetworkServiceDeleted(key));
        self.dirty = true;
    }

    /// Whether a NetworkService being deleted is gone from every node that carried it
    /// (nodes whose agent is not connected do not hold it up: they clean up when their
    /// agent comes back).
    fn cleaned_up(&self, cleanup: &Cleanup) -> bool {
        let Some(required) = &cleanup.required else {
            return false;
        };
        required.iter().all(|(node, version)| {
            self.agents
                .get(node)
                .is_none_or(|a| a.connections == 0 || a.record.applied_version >= *version)
        })
    }

    /// Gives the planner a node's record (declared, and what its agent said) if it changed.
    fn update_node(&mut self, name: &str) {
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
    fn keys_missing(&self) -> Vec<&str> {
        let mut missing: Vec<&str> = self
            .planner
            .nodes()
            .filter(|n| n.public_key.is_none())
            .map(|n| n.name.as_str())
            .collect();
        let known: std::collections::BTreeSet<&str> =
            self.planner.nodes().map(|n| n.name.as_str()).collect();
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
    fn grace_deadline(&self) -> Option<Instant> {
        let waiting = self.synced && self.plans == 0 && !self.keys_missing().is_empty();
        waiting.then(|| self.started + self.config.agent_grace)
    }

    /// Plans if there is anything to plan and the World may be served; then publishes.
    pub fn step(&mut self) {
        if !self.synced {
            self.readiness
                .set_not_ready("waiting for the sources to sync");
        } else if let Some(deadline) = self.grace_deadline()
            && Instant::now() < deadline
        {
            let missing = self.keys_missing().join(", ");
            self.readiness
                .set_not_ready(&format!("waiting for the agents of {missing} to say hello"));
        } else if self.dirty {
            self.plan();
        }
        if self.stale {
            self.refresh();
        }
    }

    fn plan(&mut self) {
        let first = self.plans == 0;
        let started = Instant::now();
        self.planner.set_now(now_time());
        let plan = self.planner.plan();
        self.metrics.plans.inc();
        self.metrics
            .plan_duration
            .observe(started.elapsed().as_secs_f64());
        let pushed: Vec<&String> = if first {
            plan.nodes.keys().collect()
        } else {
            plan.changed_nodes.iter().collect()
        };
        for node in pushed {
            if let Some(state) = plan.nodes.get(node) {
                self.hub.publish(state.clone());
            }
        }
        for cleanup in self.deleting.values_mut().filter(|c| c.required.is_none()) {
            let required = cleanup
                .carriers
                .iter()
                .filter_map(|n| Some((n.clone(), plan.nodes.get(n)?.version)))
                .collect();
            cleanup.required = Some(required);
        }
        self.plans += 1;
        self.dirty = false;
        self.stale = true;
        self.restored = None;
        self.readiness.set_ready();
    }

    /// Publishes the statuses and the snapshot, updates the metrics and saves the store.
    fn refresh(&mut self) {
        self.stale = false;
        let applied = |node: &str| {
            self.agents
                .get(node)
                .map_or(0, |a| a.record.applied_version)
        };
        let mut statuses = self.planner.statuses(applied);
        let now = self.planner.now();
        carry(
            &mut statuses.network_services,
            &self.published.network_services,
            &now,
        );
        carry(&mut statuses.endpoints, &self.published.endpoints, &now);
        carry(&mut statuses.admissions, &self.published.admissions, &now);
        if let Some(events) = &self.events
            && self.plans > 0
        {
            for event in events::events(&self.published, &statuses) {
                let reference = self.reference(&event);
                if events.try_send((event, reference)).is_err() {
                    tracing::warn!("the event queue is full; an event is dropped");
                }
            }
        }
        self.published = statuses;
        if self.config.kubernetes && self.plans > 0 {
            self.hub.publish_for_controller(self.for_controller());
        }
        let snapshot = self.snapshot();
        self.update_metrics(&snapshot);
        self.hub.publish_snapshot(snapshot);
        self.save();
    }

    /// The object an event is on.
    fn reference(&self, event: &Event) -> ObjectReference {
        let uid = match event.kind {
            "NetworkService" => self
                .planner
                .network_service(&event.key)
                .map(|o| &o.metadata),
            "Endpoint" => self.planner.endpoint(&event.key).map(|o| &o.metadata),
            _ => self.planner.admission(&event.key).map(|o| &o.metadata),
        }
        .and_then(|m| m.uid.clone());
        ObjectReference {
            api_version: Some(wireway_crds::API_VERSION.to_owned()),
            kind: Some(event.kind.to_owned()),
            namespace: Some(event.key.namespace.clone()),
            name: Some(event.key.name.clone()),
            uid,
            ..ObjectReference::default()
        }
    }

    /// What the Kubernetes controller acts on.
    fn for_controller(&self) -> Published {
        let finalizers = self
            .finalizers
            .iter()
            .filter_map(|(key, (current, resource_version))| {
                let has = current.iter().any(|f| f == wireway_crds::FINALIZER);
                let add = match self.deleting.get(key) {
                    None if !has => true,
                    Some(cleanup) if has && self.cleaned_up(cleanup) => false,
                    _ => return None,
                };
                Some(FinalizerAction {
                    key: key.clone(),
                    add,
                    current: current.clone(),
                    resource_version: resource_version.clone(),
                })
            })
            .collect();
        Published {
            statuses: self.published.clone(),
            live: self.live.clone(),
            invalid: self
                .problems
                .iter()
                .filter(|p| p.object.is_some())
                .cloned()
                .collect(),
            finalizers,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let plan = self.planner.last_plan();
        let now = Timestamp::now().as_second();
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

    fn update_metrics(&self, snapshot: &Snapshot) {
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
            .get_or_create(&[("kind", "NetworkService")])
            .set(count(snapshot.network_services.len()));
        m.objects
            .get_or_create(&[("kind", "Endpoint")])
            .set(count(snapshot.endpoints.len()));
        m.objects
            .get_or_create(&[("kind", "Admission")])
            .set(count(snapshot.admissions.len()));
        m.source_problems.set(count(self.problems.len()));
    }

    /// Saves the store, once there is a plan (before, it would save a half World).
    fn save(&mut self) {
        if self.plans == 0 {
            return;
        }
        let Some(store) = &mut self.store else { return };
        let keyed = |key: &ObjectKey| key.to_string();
        let stored = Stored {
            agents: self
                .agents
                .iter()
                .filter(|(_, a)| !a.record.public_key.is_empty())
                .map(|(n, a)| (n.clone(), a.record.clone()))
                .collect(),
            node_states: self.planner.last_plan().nodes.clone(),
            network_services: statuses_of(self.planner.network_services(), keyed),
            endpoints: statuses_of(self.planner.endpoints(), keyed),
            admissions: statuses_of(self.planner.admissions(), keyed),
        };
        if let Err(e) = store.save(&stored) {
            self.metrics.error(category::STORE);
            tracing::error!(error = %chain(&e), "the operator's state is not saved; a restart may renumber");
        }
    }
}

pub use wireway_runtime::errors::chain;

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The Wireway kinds, as the engine handles them alike.
trait Object: Clone {
    type Status: Clone;
    fn key(&self) -> ObjectKey;
    fn status_mut(&mut self) -> &mut Option<Self::Status>;
    fn status(&self) -> Option<&Self::Status>;
}

macro_rules! object {
    ($kind:ty, $status:ty) => {
        impl Object for $kind {
            type Status = $status;
            fn key(&self) -> ObjectKey {
                ObjectKey::of(&self.metadata)
            }
            fn status_mut(&mut self) -> &mut Option<$status> {
                &mut self.status
            }
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
        }
    };
}
object!(NetworkService, wireway_crds::NetworkServiceStatus);
object!(Endpoint, wireway_crds::EndpointStatus);
object!(Admission, wireway_crds::AdmissionStatus);

/// Gives an object that arrives with no status the one stored for it.
fn restore<O: Object>(
    restored: &mut Option<Stored>,
    object: &mut O,
    statuses: impl Fn(&mut Stored) -> &mut BTreeMap<String, O::Status>,
) {
    if let Some(stored) = restored
        && object.status().is_none()
    {
        *object.status_mut() = statuses(stored).remove(&object.key().to_string());
    }
}

/// Remembers the status an object arrives with: what it holds (for the status writer),
/// and, the first time, what was last published (so transition times and events carry
/// on across operator restarts).
fn seen<O: Object>(
    live: &mut BTreeMap<ObjectKey, O::Status>,
    published: &mut BTreeMap<ObjectKey, O::Status>,
    object: &O,
) {
    let key = object.key();
    match object.status() {
        Some(status) => {
            published
                .entry(key.clone())
                .or_insert_with(|| status.clone());
            live.insert(key, status.clone());
        }
        None => {
            live.remove(&key);
        }
    }
}

/// Whether an update changes nothing the planner reads: the same generation (the API
/// server bumps it on every spec change) and the same deletion state. Updates of status
/// or metadata alone, such as the operator's own status writes, are not planned again.
/// Objects without a generation (manifests) are always planned.
fn same_spec<O: Object + Generation>(known: Option<&O>, new: &O) -> bool {
    known.is_some_and(|k| {
        new.generation().is_some()
            && k.generation() == new.generation()
            && k.deleting() == new.deleting()
    })
}

/// What [`same_spec`] compares.
trait Generation {
    fn generation(&self) -> Option<i64>;
    fn deleting(&self) -> bool;
}

impl<R: kube::Resource> Generation for R {
    fn generation(&self) -> Option<i64> {
        self.meta().generation
    }
    fn deleting(&self) -> bool {
        self.meta().deletion_timestamp.is_some()
    }
}

/// Objects as shown: with the statuses in effect.
fn shown<'a, O: Object + 'a>(
    objects: impl Iterator<Item = &'a O>,
    statuses: &BTreeMap<ObjectKey, O::Status>,
) -> Vec<O> {
    objects
        .map(|o| {
            let mut o = o.clone();
            *o.status_mut() = statuses.get(&o.key()).cloned();
            o
        })
        .collect()
}

fn statuses_of<'a, O: Object + 'a>(
    objects: impl Iterator<Item = &'a O>,
    key: impl Fn(&ObjectKey) -> String,
) -> BTreeMap<String, O::Status> {
    objects
        .filter_map(|o| Some((key(&o.key()), o.status()?.clone())))
        .collect()
}

/// Statuses with conditions.
trait Conditions {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut [Condition];
}

macro_rules! conditions {
    ($($status:ty),*) => {$(
        impl Conditions for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut [Condition] {
                &mut self.conditions
            }
        }
    )*};
}
conditions!(
    wireway_crds::NetworkServiceStatus,
    wireway_crds::EndpointStatus,
    wireway_crds::AdmissionStatus
);

/// Keeps the transition times of conditions whose status did not change since they were
/// last published.
fn carry<S: Conditions>(
    statuses: &mut BTreeMap<ObjectKey, S>,
    published: &BTreeMap<ObjectKey, S>,
    now: &Time,
) {
    for (key, status) in statuses.iter_mut() {
        let previous = published
            .get(key)
            .map(Conditions::conditions)
            .unwrap_or_default();
        carry_transitions(status.conditions_mut(), previous, now);
    }
}

#[cfg(test)]
mod tests;
