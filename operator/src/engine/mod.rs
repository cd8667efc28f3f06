//! The engine: one task that owns the planner. It takes the sources' changes and what
//! agents say, plans, publishes each changed node's state and the statuses on the
//! [`Hub`], and keeps the [`store`] up to date.
//!
//! This module is the run loop (inputs in batches, then one plan, then what follows from
//! it). Beside it: `agents` (hellos, reports, the nodes they make and the grace the first
//! plan gives them), `cleanup` (NetworkServices' finalizers), `objects` (what the engine
//! does with every kind's statuses alike), `shown` (the status snapshot and the metrics),
//! [`hub`] (where it publishes) and [`store`] (its state on disk).
//!
//! Guarantees:
//! * nothing is served before every source has synced (a state made from half a World
//!   would drop peers and members), and only while leading: a standby plans (so it can
//!   take over at once) but is not ready, and the node API sends agents away; on taking
//!   over it plans again from the allocations the objects hold (its predecessor's);
//! * after a restart, nothing is served that drops a peer only because its agent has not
//!   said hello yet: keys come back from the store, and a node whose key is unknown is
//!   waited for (up to the agent grace) before the first plan;
//! * a node's state is published only when it changed; a node whose state is gone has
//!   its channel closed, so a node that returns under the same name is never served the
//!   state it had before, and its versions go on from where they were;
//! * inputs are handled in batches: all that is waiting, then one plan.

mod agents;
mod cleanup;
pub mod hub;
mod objects;
mod shown;
pub mod store;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::mpsc;
use wireway_proto::{AgentHello, AgentReport, NodeState};
use wireway_runtime::errors::chain;
use wireway_runtime::http::Readiness;

use crate::kind::Kind;
use crate::metrics::{Metrics, category};
use crate::plan::events::{self, Event};
use crate::plan::status::condition_time;
use crate::plan::{Bounds, Change, Node, ObjectKey, PeerSent, Plan, Planner, Statuses, World};
use crate::source::{self, Problem};
use agents::Agent;
use cleanup::Finalizers;
pub use hub::{Addressed, Federated, FinalizerAction, Hub, Leadership, Planned, Published};
use objects::{Object, carry, restore, same_spec, seen, statuses_of};
use store::{Current, Store, StoreError, Stored};

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
    /// What the federation says of a peer cluster.
    PeerSent(PeerSent),
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
    /// The administrator's bounds on every service (service pools, reserved ranges,
    /// listen ports).
    pub bounds: Bounds,
}

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
    /// The statuses in effect, as last computed (shown, and written while leading).
    published: Statuses,
    /// What events and transition times carry on from: while leading, the statuses last
    /// published; while a standby, what the objects hold (the leader's), so that on
    /// taking over this engine neither moves the leader's transition times nor repeats
    /// its events, and announces what the leader had not.
    announced: Statuses,
    /// Statuses from the store, given to objects that arrive before the first plan.
    restored: Option<Stored>,
    /// The statuses the objects hold, as the source last delivered them.
    live: Statuses,
    /// Whether this engine led at its last step.
    leading: bool,
    /// The term it last led in: one it takes again (its own Lease renewed late, no one
    /// else between) is not a takeover.
    led_epoch: Option<u64>,
    /// NetworkServices' finalizers, and the cleanups their removal waits for.
    finalizers: Finalizers,
    /// Where events go (the controller); `None` tells none.
    events: Option<mpsc::Sender<Addressed>>,
    store: Option<Store>,
    hub: Arc<Hub>,
    metrics: Metrics,
    readiness: Readiness,
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
                let opened = Store::open(dir)?;
                if let Some(set_aside) = &opened.set_aside {
                    metrics.error(category::STORE);
                    tracing::error!(error = %chain(set_aside), "starting from nothing");
                }
                (Some(opened.store), opened.stored)
            }
            None => (None, Stored::default()),
        };
        let world = World {
            trust_domain: config.trust_domain.clone(),
            now: condition_time(Timestamp::now()),
            nodes: Vec::new(),
            namespaces: Vec::new(),
            pods: Vec::new(),
            network_services: Vec::new(),
            endpoints: Vec::new(),
            admissions: Vec::new(),
            identity_grants: Vec::new(),
            service_cidrs: Vec::new(),
            bounds: config.bounds.clone(),
            peers: Vec::new(),
        };
        let previous = Plan {
            nodes: stored.node_states.clone(),
            retired_versions: stored.retired_versions.clone(),
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
            agents: agents::restored(&stored.agents),
            problems: Vec::new(),
            published: Statuses::default(),
            announced: Statuses::default(),
            restored: Some(stored),
            live: Statuses::default(),
            leading: false,
            led_epoch: None,
            finalizers: Finalizers::default(),
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
    /// A change of leadership is a step too: a new leader announces what differs from
    /// what the objects hold.
    pub async fn run(mut self, mut inputs: mpsc::Receiver<Input>) {
        let mut leading = self.hub.subscribe_leading();
        loop {
            let grace = self.grace_deadline();
            let input = tokio::select! {
                input = inputs.recv() => input.map(Some),
                () = async {
                    match grace {
                        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                        None => std::future::pending().await,
                    }
                } => Some(None),
                Ok(()) = leading.changed() => {
                    self.stale = true;
                    Some(None)
                }
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
            Input::Hello(hello) => self.hello(hello),
            Input::Report(report) => self.report(report),
            Input::Disconnected(node) => self.disconnected(&node),
            Input::PeerSent(sent) => {
                self.planner.apply(Change::PeerSent(sent));
                self.dirty = true;
            }
        }
    }

    /// A change from a source. Nodes are merged with what their agents said; objects that
    /// arrive before the first plan get their stored status back.
    fn source_change(&mut self, mut change: Change) {
        // A standby's statuses follow what the objects hold (see `seen`).
        let follow = !self.hub.leading();
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
                    &mut self.announced.network_services,
                    o,
                    follow,
                );
                let unchanged = same_spec(self.planner.network_service(&key), o);
                if self.config.kubernetes {
                    self.finalizers.seen(&key, o);
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
                seen(
                    &mut self.live.endpoints,
                    &mut self.announced.endpoints,
                    o,
                    follow,
                );
                if same_spec(self.planner.endpoint(&o.key()), o) {
                    return;
                }
            }
            Change::Admission(ref mut o) => {
                restore(&mut self.restored, o, |s| &mut s.admissions);
                seen(
                    &mut self.live.admissions,
                    &mut self.announced.admissions,
                    o,
                    follow,
                );
                if same_spec(self.planner.admission(&o.key()), o) {
                    return;
                }
            }
            Change::IdentityGrant(ref mut o) => {
                restore(&mut self.restored, o, |s| &mut s.identity_grants);
                seen(
                    &mut self.live.identity_grants,
                    &mut self.announced.identity_grants,
                    o,
                    follow,
                );
                if same_spec(self.planner.identity_grant(&o.key()), o) {
                    return;
                }
            }
            Change::NetworkServiceDeleted(ref key) => {
                self.live.network_services.remove(key);
                self.finalizers.forget(key);
            }
            Change::EndpointDeleted(ref key) => {
                self.live.endpoints.remove(key);
            }
            Change::AdmissionDeleted(ref key) => {
                self.live.admissions.remove(key);
            }
            Change::IdentityGrantDeleted(ref name) => {
                self.live.identity_grants.remove(&ObjectKey::new("", name));
            }
            Change::PeerCluster(ref mut o) => {
                restore(&mut self.restored, &mut **o, |s| &mut s.peer_clusters);
                seen(
                    &mut self.live.peer_clusters,
                    &mut self.announced.peer_clusters,
                    &**o,
                    follow,
                );
                if same_spec(self.planner.peer_cluster(&o.key()), &**o) {
                    return;
                }
            }
            Change::PeerClusterDeleted(ref name) => {
                self.live.peer_clusters.remove(&ObjectKey::new("", name));
            }
            _ => {}
        }
        self.planner.apply(change);
        self.dirty = true;
    }

    /// Plans if there is anything to plan and the World may be served; then publishes.
    /// One step is one round in the logs (span `round`: the plan's number and how many
    /// nodes' states it changed, when it planned).
    pub fn step(&mut self) {
        let round = tracing::info_span!(
            "round",
            plan = tracing::field::Empty,
            changed_nodes = tracing::field::Empty
        );
        let _round = round.enter();
        self.take_over();
        if !self.synced {
            self.readiness
                .set_not_ready("waiting for the sources to sync");
        } else if let Some(deadline) = self.grace_deadline()
            && Instant::now() < deadline
        {
            let missing = self.keys_missing().join(", ");
            self.readiness
                .set_not_ready(&format!("waiting for the agents of {missing} to say hello"));
        } else {
            if self.dirty {
                let changed = self.plan();
                round.record("plan", self.plans);
                round.record("changed_nodes", changed);
            }
            self.set_readiness();
        }
        if self.stale {
            self.refresh();
        }
    }

    /// On becoming the leader in a new term: plans everything again from the allocations
    /// the objects hold (another leader's since this engine last led; see
    /// [`Planner::adopt`]) before serving anything. Its own term taken up again (its
    /// Lease renewed late, nobody else between) keeps its own plans: the objects may lag
    /// behind what it served (status writes that failed meanwhile).
    fn take_over(&mut self) {
        let leadership = self.hub.leadership();
        if leadership.leading && !self.leading {
            if self.led_epoch != Some(leadership.epoch) {
                self.planner.adopt(&self.live);
            }
            self.dirty = true;
        }
        self.leading = leadership.leading;
        if leadership.leading {
            self.led_epoch = Some(leadership.epoch);
        }
    }

    /// Plans, and publishes the states of the nodes whose state changed (all of them the
    /// first time). Returns how many changed.
    fn plan(&mut self) -> usize {
        let first = self.plans == 0;
        let started = Instant::now();
        self.planner.set_now(condition_time(Timestamp::now()));
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
        let pushed = longest_first(pushed, &plan.nodes, |node| self.hub.current(node));
        tracing::debug!(pushed = pushed.len(), took = ?started.elapsed(), "planned");
        for node in pushed {
            match plan.nodes.get(node) {
                Some(state) => self.hub.publish(state.clone()),
                None => self.hub.retire(node),
            }
        }
        let changed = plan.changed_nodes.len();
        self.hub
            .planned(match self.led_epoch.filter(|_| self.leading) {
                Some(epoch) => Planned::Term(epoch),
                None => Planned::Standby,
            });
        self.finalizers.planned(plan);
        let federated = Federated {
            peer_clusters: self
                .planner
                .peer_clusters()
                .map(|o| (o.metadata.name.clone().unwrap_or_default(), o.clone()))
                .collect(),
            halves: self.planner.last_plan().federation.clone(),
        };
        self.hub.publish_federated(federated);
        self.plans += 1;
        self.dirty = false;
        self.stale = true;
        self.restored = None;
        changed
    }

    /// Ready once planned, and only while leading: the Service sends agents to the ready
    /// operator, and a standby refuses them (see `serve`).
    fn set_readiness(&mut self) {
        let leadership = self.hub.leadership();
        if leadership.leading {
            self.readiness.set_ready();
        } else {
            let leader = leadership.leader.as_deref().unwrap_or("no operator yet");
            self.readiness
                .set_not_ready(&format!("a standby: {leader} leads and serves the agents"));
        }
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
        let announced = &self.announced;
        carry(
            &mut statuses.network_services,
            &announced.network_services,
            &now,
        );
        carry(&mut statuses.endpoints, &announced.endpoints, &now);
        carry(&mut statuses.admissions, &announced.admissions, &now);
        carry(
            &mut statuses.identity_grants,
            &announced.identity_grants,
            &now,
        );
        carry(&mut statuses.peer_clusters, &announced.peer_clusters, &now);
        // Only a leader announces (a standby's events would be dropped, and it keeps
        // following what the objects hold until it leads).
        if self.hub.leading() {
            if let Some(events) = &self.events
                && self.plans > 0
            {
                for event in events::events(&self.announced, &statuses) {
                    let reference = self.reference(&event);
                    if events.try_send((event, reference)).is_err() {
                        tracing::warn!("the event queue is full; an event is dropped");
                    }
                }
            }
            self.announced = statuses.clone();
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
        let metadata = match event.kind {
            Kind::NetworkService => self
                .planner
                .network_service(&event.key)
                .map(|o| &o.metadata),
            Kind::Endpoint => self.planner.endpoint(&event.key).map(|o| &o.metadata),
            Kind::Admission => self.planner.admission(&event.key).map(|o| &o.metadata),
            Kind::IdentityGrant => self.planner.identity_grant(&event.key).map(|o| &o.metadata),
            Kind::PeerCluster | Kind::Pod | Kind::Node | Kind::Namespace | Kind::ServiceCidr => {
                None
            }
        };
        ObjectReference {
            api_version: Some(event.kind.api_version().to_owned()),
            kind: Some(event.kind.name().to_owned()),
            namespace: event.kind.namespaced().then(|| event.key.namespace.clone()),
            name: Some(event.key.name.clone()),
            uid: metadata.and_then(|m| m.uid.clone()),
            ..ObjectReference::default()
        }
    }

    /// What the Kubernetes controller acts on.
    fn for_controller(&self) -> Published {
        Published {
            statuses: self.published.clone(),
            live: self.live.clone(),
            invalid: self
                .problems
                .iter()
                .filter(|p| p.object.is_some())
                .cloned()
                .collect(),
            finalizers: self.finalizers.actions(&self.agents),
        }
    }

    /// Saves the store, once there is a plan (before, it would save a half World).
    fn save(&mut self) {
        if self.plans == 0 {
            return;
        }
        let Some(store) = &mut self.store else { return };
        let keyed = |key: &ObjectKey| key.to_string();
        let agents = self
            .agents
            .iter()
            .filter(|(_, a)| !a.record.public_key.is_empty())
            .map(|(n, a)| (n.clone(), a.record.clone()))
            .collect();
        let network_services = statuses_of(self.planner.network_services(), keyed);
        let endpoints = statuses_of(self.planner.endpoints(), keyed);
        let admissions = statuses_of(self.planner.admissions(), keyed);
        let identity_grants = statuses_of(self.planner.identity_grants(), keyed);
        let peer_clusters = statuses_of(self.planner.peer_clusters(), keyed);
        let now = Current {
            agents: &agents,
            node_states: &self.planner.last_plan().nodes,
            retired_versions: &self.planner.last_plan().retired_versions,
            network_services: &network_services,
            endpoints: &endpoints,
            admissions: &admissions,
            identity_grants: &identity_grants,
            peer_clusters: &peer_clusters,
        };
        if let Err(e) = store.save(now) {
            self.metrics.error(category::STORE);
            tracing::error!(error = %chain(&e), "the operator's state is not saved; a restart may renumber");
        }
    }
}

/// `nodes` in the order their states are published: first those that take their agents
/// longest, whose state differs from the one `sent` in more than peers and names (a
/// service, member or setting changed: links, addresses, routes and rules), so that their
/// passes start while the others are still being sent; otherwise as given.
fn longest_first<'a>(
    mut nodes: Vec<&'a String>,
    planned: &BTreeMap<String, NodeState>,
    sent: impl Fn(&str) -> Option<Arc<NodeState>>,
) -> Vec<&'a String> {
    nodes.sort_by_cached_key(|node| {
        planned.get(*node).is_some_and(|state| {
            sent(node).is_some_and(|sent| sent.same_but_peers_and_records(state))
        })
    });
    nodes
}

#[cfg(test)]
mod tests;
