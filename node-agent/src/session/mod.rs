//! The agent's session with the operator: it says hello, follows its node's stream of
//! NodeStates, converges the kernel to each newer one, and reports what it applied and
//! how its tunnels are doing.
//!
//! Guarantees:
//! * nothing is torn down because the operator is unreachable, restarting or slow: the
//!   kernel stays at the last applied state, which is re-applied (repairing drift) every
//!   resync interval, with or without the operator;
//! * the last applied state is kept on disk and re-applied at start, before the operator
//!   is reached, so an agent restart changes nothing (a state that changed only names
//!   is on disk within a second: until then a restart answers the names before it);
//! * only states newer than the applied one are applied, ordered by (epoch, version): a
//!   new leader's epoch is newer whatever its versions, which it numbers on its own;
//! * the agent reconnects with exponential backoff (100 ms to 10 s);
//! * an error is counted once, when it appears: a problem a pass meets that the pass
//!   before met too is not counted again, and a streak of failed connections counts once,
//!   and only if it lasts `UNREACHABLE_AFTER` (30 s; an operator that is starting with the
//!   agents, or restarting, is no error).

pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Streaming;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use wireway_proto::node_api_client::NodeApiClient;
use wireway_proto::{
    AgentHello, AgentReport, ErrorCount, MAX_NODE_STATE_BYTES, NodeState, PeerStatus, ServiceState,
    WireGuardBackend,
};
use wireway_runtime::backoff::Backoff;
use wireway_runtime::clock;
use wireway_runtime::http::Readiness;
use wireway_runtime::listen::grpc_channel;
use wireway_runtime::tls::{BearerToken, Pem};

use crate::agent::Agent;
use crate::converge::Plane;
use crate::dataplane::Dataplane;
use crate::dns::server::Server;
use crate::metrics::{Metrics, PeerSample, category};
use store::StateFile;

/// Waits between connection attempts: from 100 ms, doubled after each failure, up to 10 s.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
/// Retry interval while the last pass left something out (a pod still starting).
const RETRY_PROBLEMS: Duration = Duration::from_secs(1);
/// How long connections to the operator must fail in a row before it counts as an error.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a state that changed only names may wait to be written to disk (the states
/// that follow meanwhile are written once, with it).
const SAVE_NAMES_WITHIN: Duration = Duration::from_secs(1);

/// How the agent reaches the operator and introduces itself.
#[derive(Debug, Clone)]
pub struct Config {
    /// The operator's node API: a URL, or `unix:PATH`.
    pub operator: String,
    /// The name the operator's certificate must carry.
    pub server_name: String,
    /// TLS (mutual, unless a token proves the node); `None` for plaintext.
    pub tls: Option<Pem>,
    /// A file holding a token that proves this node to the operator (in a cluster: a
    /// projected service-account token), read again for every call as it rotates.
    pub token_file: Option<PathBuf>,
    /// This node's name.
    pub node: String,
    /// Where other nodes reach this node's WireGuard ports.
    pub underlay: IpAddr,
    /// MTU of the underlay interface.
    pub underlay_mtu: u32,
    /// This node's WireGuard public key.
    pub public_key: String,
    /// How often the applied state is re-applied to repair drift.
    pub resync: Duration,
    /// How often tunnel health is reported.
    pub report_every: Duration,
}

/// The session's state.
#[derive(Debug)]
pub struct Session<D> {
    agent: Agent<D>,
    config: Config,
    metrics: Metrics,
    readiness: Readiness,
    file: StateFile,
    /// The state in the kernel.
    applied: Option<NodeState>,
    /// What the last pass left out or failed at.
    problems: Vec<String>,
    /// Errors since start by category: count and last message.
    errors: BTreeMap<&'static str, (u64, String)>,
    /// The members' DNS service, following each applied state.
    dns: Option<Server>,
    /// When the applied state, which changed only names, must be on disk at the latest;
    /// `None` when the file holds it.
    save_by: Option<Instant>,
    /// The peers as read for the last report, while no full pass has run since (a pass
    /// over the peers alone keeps it, with the peers it set).
    read_peers: Option<Vec<PeerStatus>>,
    /// The data plane the last pass left, when it left nothing out and nothing failed: a
    /// state that changes only peers is converged from it without reading the kernel.
    held: Option<Plane>,
}

/// How a state was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Its names alone changed: the DNS service took them, the kernel was not touched.
    Names,
    /// By a pass over the kernel.
    Pass,
    /// By a pass over the WireGuard peers alone, which read nothing: its report sends the
    /// last reading of the peers, with the peers it added (no handshake yet) and without
    /// those it removed.
    Peers,
}

/// What woke the loop.
enum Wake {
    Received(Result<Option<NodeState>, tonic::Status>),
    Connect,
    /// A peer's host name has a new address.
    Resolved,
    Resync,
    Report,
    /// The applied state is due on disk.
    Save,
    Stop,
}

type Client = NodeApiClient<InterceptedService<Channel, BearerToken>>;
type Connected = (Client, Streaming<NodeState>);

impl<D: Dataplane> Session<D> {
    /// A session for `agent`, keeping the applied state in `file`.
    pub fn new(
        agent: Agent<D>,
        config: Config,
        metrics: Metrics,
        readiness: Readiness,
        file: StateFile,
    ) -> Self {
        Self {
            agent,
            config,
            metrics,
            readiness,
            file,
            applied: None,
            problems: Vec::new(),
            errors: BTreeMap::new(),
            dns: None,
            save_by: None,
            read_peers: None,
            held: None,
        }
    }

    /// The session with a DNS service that follows every state it applies.
    #[must_use]
    pub fn with_dns(self, dns: Server) -> Self {
        Self {
            dns: Some(dns),
            ..self
        }
    }

    fn error(&mut self, category: &'static str, message: String) {
        self.metrics.error(category);
        let entry = self.errors.entry(category).or_default();
        entry.0 += 1;
        entry.1 = message;
    }

    /// Counts a problem of a pass, unless the pass before had it too (`earlier`).
    fn error_if_new(
        &mut self,
        earlier: &BTreeSet<String>,
        category: &'static str,
        message: String,
    ) {
        if !earlier.contains(&message) {
            self.error(category, message);
        }
    }

    /// Runs until `stop` completes (in the binary: SIGTERM or SIGINT).
    #[tracing::instrument(name = "session", skip_all, fields(node = %self.config.node, operator = %self.config.operator))]
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        match self.file.load() {
            Ok(Some(state)) => {
                tracing::info!(
                    version = state.version,
                    "re-applying the last applied state"
                );
                self.converge(state).await;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %crate::chain(&e), "starting from no state");
                self.error(category::STORE, crate::chain(&e));
            }
        }
        let mut stream: Option<Connected> = None;
        let mut backoff = RECONNECT;
        let mut connect_at = Instant::now();
        let mut unreachable = Streak::default();
        let resolver = self.agent.resolver().clone();
        let mut resync_at = Instant::now() + self.resync_interval();
        let mut report_at = Instant::now() + self.config.report_every;
        tokio::pin!(stop);
        loop {
            let save_by = self.save_by;
            let wake = tokio::select! {
                received = async {
                    match &mut stream {
                        Some((_, states)) => states.message().await,
                        None => std::future::pending().await,
                    }
                } => Wake::Received(received),
                () = tokio::time::sleep_until(connect_at), if stream.is_none() => Wake::Connect,
                () = resolver.changed() => Wake::Resolved,
                () = tokio::time::sleep_until(resync_at) => Wake::Resync,
                () = tokio::time::sleep_until(report_at), if stream.is_some() => Wake::Report,
                () = async {
                    match save_by {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => Wake::Save,
                () = &mut stop => Wake::Stop,
            };
            match wake {
                Wake::Connect => match self.open().await {
                    Ok(connected) => {
                        tracing::info!("following the operator");
                        unreachable = Streak::default();
                        self.metrics.operator_connected.set(1);
                        stream = Some(connected);
                    }
                    Err(message) => {
                        if unreachable.fail(Instant::now()) {
                            self.error(category::OPERATOR, message.clone());
                        }
                        let delay = backoff.fail();
                        tracing::warn!(error = message, retry_in = ?delay, "cannot reach the operator");
                        connect_at = Instant::now() + delay;
                    }
                },
                Wake::Received(Ok(Some(state))) => {
                    backoff.reset();
                    self.metrics
                        .desired_version
                        .set(i64::try_from(state.version).unwrap_or(i64::MAX));
                    if (state.epoch, state.version) > self.applied() {
                        let taken = self.converge(state).await;
                        resync_at = Instant::now() + self.resync_interval();
                        if let Some((client, _)) = &mut stream {
                            // Names alone changed no peer: the last reading stands.
                            self.report(client, taken == Taken::Pass).await;
                        }
                        report_at = Instant::now() + self.config.report_every;
                    }
                }
                Wake::Received(end) => {
                    let why = match end {
                        Err(status) => format!("the stream failed: {}", status.message()),
                        _ => "the operator closed the stream".to_owned(),
                    };
                    tracing::warn!(reason = why, "lost the operator; keeping the applied state");
                    self.error(category::OPERATOR, why);
                    self.metrics.operator_connected.set(0);
                    stream = None;
                    connect_at = Instant::now() + backoff.fail();
                }
                Wake::Resolved => {
                    if let Some(state) = self.applied.clone() {
                        self.converge(state).await;
                        resync_at = Instant::now() + self.resync_interval();
                    }
                }
                Wake::Resync => {
                    if let Some(state) = self.applied.clone() {
                        self.converge(state).await;
                    }
                    resync_at = Instant::now() + self.resync_interval();
                }
                Wake::Report => {
                    if let Some((client, _)) = &mut stream {
                        self.report(client, true).await;
                    }
                    report_at = Instant::now() + self.config.report_every;
                }
                Wake::Save => self.save(),
                Wake::Stop => {
                    if self.save_by.is_some() {
                        self.save();
                    }
                    tracing::info!("stopping; the kernel keeps the applied state");
                    return;
                }
            }
        }
    }

    /// The (epoch, version) of the applied state; (0, 0) without one.
    fn applied(&self) -> (u64, u64) {
        self.applied
            .as_ref()
            .map_or((0, 0), |s| (s.epoch, s.version))
    }

    fn resync_interval(&self) -> Duration {
        if self.problems.is_empty() {
            self.config.resync
        } else {
            RETRY_PROBLEMS.min(self.config.resync)
        }
    }

    /// Connects and opens the stream.
    async fn open(&self) -> Result<Connected, String> {
        let config = &self.config;
        let tls = config
            .tls
            .as_ref()
            .map(|pem| pem.client(&config.server_name));
        let channel = grpc_channel(&config.operator, tls, |endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true)
        })
        .await
        .map_err(|e| crate::chain(&e))?;
        let mut client =
            NodeApiClient::with_interceptor(channel, BearerToken(config.token_file.clone()))
                .max_decoding_message_size(MAX_NODE_STATE_BYTES);
        let hello = AgentHello {
            node: config.node.clone(),
            public_key: config.public_key.clone(),
            underlay_address: config.underlay.to_string(),
            backend: WireGuardBackend::from_label(self.agent.backend()).into(),
            capabilities: vec!["ipv6".to_owned()],
            applied_epoch: self.applied().0,
            applied_version: self.applied().1,
            underlay_mtu: config.underlay_mtu,
        };
        let stream = client
            .watch(hello)
            .await
            .map_err(|status| format!("the operator refused: {}", status.message()))?
            .into_inner();
        Ok((client, stream))
    }

    /// Converges the kernel to `state` and keeps it as applied. A state that differs from
    /// the one applied (with nothing left out) only in its names' records needs no pass:
    /// the kernel holds the rest, and the DNS service takes the names. A member joining
    /// or leaving elsewhere changes every carrying node's names, and a full pass on each
    /// of them would cost what the member's own node's does. Likewise a state that
    /// differs only in its peers (and names), as when a node joins or leaves a service,
    /// gets a pass over the WireGuard peers alone ([`Agent::converge_peers`]).
    async fn converge(&mut self, state: NodeState) -> Taken {
        let names_only = self.problems.is_empty()
            && self
                .applied
                .as_ref()
                .is_some_and(|applied| differ_in_names_only(applied, &state));
        if names_only {
            if let Some(dns) = &self.dns {
                self.problems = dns.follow(&state);
            }
            tracing::debug!(version = state.version, "only names changed: no pass");
            self.keep(state, Taken::Names);
            return Taken::Names;
        }
        let last_reading = self.read_peers.take();
        let held = std::mem::take(&mut self.held).filter(|_| {
            self.problems.is_empty()
                && self
                    .applied
                    .as_ref()
                    .is_some_and(|applied| differ_in_peers_only(applied, &state))
        });
        let started = std::time::Instant::now();
        let result = match &held {
            Some(held) => self.agent.converge_peers(&state, held).await,
            None => self.agent.converge(&state).await,
        };
        self.metrics
            .pass_duration
            .observe(started.elapsed().as_secs_f64());
        let earlier: BTreeSet<String> = std::mem::take(&mut self.problems).into_iter().collect();
        let pass = match result {
            Ok(pass) => pass,
            Err(e) => {
                // The kernel could not even be read: nothing was changed.
                let message = crate::chain(&e);
                tracing::error!(
                    error = message,
                    version = state.version,
                    "converge pass failed"
                );
                self.metrics
                    .passes
                    .get_or_create(&[("result", "failed")])
                    .inc();
                self.error_if_new(&earlier, e.category(), message.clone());
                self.problems = vec![message];
                return Taken::Pass;
            }
        };
        self.metrics.operations.inc_by(pass.ops.len() as u64);
        let result = if pass.apply_errors.is_empty() {
            "ok"
        } else {
            "failed"
        };
        self.metrics
            .passes
            .get_or_create(&[("result", result)])
            .inc();
        for e in &pass.apply_errors {
            self.error_if_new(&earlier, e.category(), crate::chain(e));
        }
        for e in &pass.desired_errors {
            self.error_if_new(&earlier, category::STATE, e.to_string());
        }
        self.problems = pass.problems();
        if let Some(dns) = &self.dns {
            for problem in dns.follow(&state) {
                self.error_if_new(&earlier, category::DNS, problem.clone());
                self.problems.push(problem);
            }
        }
        // Said when something changed, not at every retry of the same problems.
        let same_problems = self.problems.len() == earlier.len()
            && self.problems.iter().all(|p| earlier.contains(p));
        if !pass.ops.is_empty() || !same_problems {
            tracing::info!(
                version = state.version,
                operations = pass.ops.len(),
                writes = pass.writes,
                problems = ?self.problems,
                "converged"
            );
        }
        let taken = if pass.peers_only && pass.clean() {
            self.read_peers = last_reading.map(|reading| peers_of(reading, &pass.desired));
            Taken::Peers
        } else {
            Taken::Pass
        };
        self.held = pass.clean().then_some(pass.desired);
        self.keep(state, taken);
        taken
    }

    /// Keeps `state` as the one applied: on disk, in the metrics, for the reports. A
    /// state that changed only names (`taken` [`Taken::Names`]) goes to disk within
    /// [`SAVE_NAMES_WITHIN`], with any that follow it meanwhile: the kernel holds the same
    /// either way, and a member joining anywhere changes every carrying node's names.
    /// Any other state goes to disk before it is reported.
    fn keep(&mut self, state: NodeState, taken: Taken) {
        let changed = self.applied.as_ref() != Some(&state);
        self.metrics
            .applied_version
            .set(i64::try_from(state.version).unwrap_or(i64::MAX));
        self.applied = Some(state);
        self.readiness.set_ready();
        if changed {
            match taken {
                Taken::Names => {
                    self.save_by
                        .get_or_insert_with(|| Instant::now() + SAVE_NAMES_WITHIN);
                }
                Taken::Pass | Taken::Peers => self.save(),
            }
        }
    }

    /// Writes the applied state to disk.
    fn save(&mut self) {
        self.save_by = None;
        let Some(state) = &self.applied else { return };
        if let Err(e) = self.file.save(state) {
            self.error(category::STORE, crate::chain(&e));
        }
    }

    /// Tells the operator the applied state and the tunnels' health. The peers are read
    /// (and the peer metrics updated) when `read` is set or nothing was read since the
    /// last full pass; else the last reading is sent again (its handshake times are absolute;
    /// its byte counts as of that reading, at most one report interval old).
    async fn report(&mut self, client: &mut Client, read: bool) {
        let peers = match self.read_peers.take() {
            Some(last) if !read => last,
            _ => self.read_peers().await,
        };
        let report = AgentReport {
            node: self.config.node.clone(),
            applied_epoch: self.applied().0,
            applied_version: self.applied().1,
            peers: peers.clone(),
            errors: self
                .errors
                .iter()
                .map(|(category, (count, last))| ErrorCount {
                    category: (*category).to_owned(),
                    count: *count,
                    last_message: last.clone(),
                })
                .collect(),
            problems: self.problems.clone(),
        };
        self.read_peers = Some(peers);
        if let Err(status) = client.report(report).await {
            self.error(
                category::OPERATOR,
                format!("report refused: {}", status.message()),
            );
        }
    }

    /// Reads the tunnels' health, for the report and the peer metrics (which it updates).
    async fn read_peers(&mut self) -> Vec<PeerStatus> {
        let names: BTreeMap<&str, &str> = self
            .applied
            .iter()
            .flat_map(|s| &s.services)
            .flat_map(|s| &s.peers)
            .map(|p| (p.public_key.as_str(), p.name.as_str()))
            .collect();
        let now = clock::unix_seconds();
        let stats = self.agent.peer_stats().await.unwrap_or_default();
        let mut peers = Vec::new();
        let mut samples = Vec::new();
        for (interface, key, s) in stats {
            let last_handshake = s
                .handshake_age
                .map(|age| now - i64::try_from(age).unwrap_or(i64::MAX).min(now));
            samples.push(PeerSample {
                interface: interface.clone(),
                peer: names
                    .get(key.as_str())
                    .map_or_else(|| key.clone(), |n| (*n).to_owned()),
                last_handshake,
                rx_bytes: s.rx_bytes,
                tx_bytes: s.tx_bytes,
            });
            peers.push(PeerStatus {
                interface_name: interface,
                public_key: key,
                last_handshake_unix_seconds: last_handshake.unwrap_or(0),
                rx_bytes: s.rx_bytes,
                tx_bytes: s.tx_bytes,
            });
        }
        self.metrics.peers.set(samples);
        peers
    }
}

/// The peers of `plane`'s WireGuard interfaces, with their health as `reading` has it;
/// a peer it lacks has none yet (no handshake, no bytes).
fn peers_of(reading: Vec<PeerStatus>, plane: &Plane) -> Vec<PeerStatus> {
    let mut read: BTreeMap<(String, String), PeerStatus> = reading
        .into_iter()
        .map(|p| ((p.interface_name.clone(), p.public_key.clone()), p))
        .collect();
    let mut peers = Vec::new();
    for (interface, wireguard) in &plane.wireguard {
        for key in wireguard.peers.keys() {
            let peer = read
                .remove(&(interface.clone(), key.clone()))
                .unwrap_or_else(|| PeerStatus {
                    interface_name: interface.clone(),
                    public_key: key.clone(),
                    ..PeerStatus::default()
                });
            peers.push(peer);
        }
    }
    peers
}

/// A run of failed connections to the operator: it counts as one error, once it has
/// lasted [`UNREACHABLE_AFTER`].
#[derive(Debug, Default)]
struct Streak {
    /// When the first failure of the run was.
    since: Option<Instant>,
    counted: bool,
}

impl Streak {
    /// A failure at `now`; whether it is the one that makes the run count.
    fn fail(&mut self, now: Instant) -> bool {
        let since = *self.since.get_or_insert(now);
        let count = !self.counted && now.duration_since(since) >= UNREACHABLE_AFTER;
        self.counted |= count;
        count
    }
}

/// Whether `state` differs from `applied` in the records of its services' names alone
/// (which names are answered, not which services have names: that changes rules).
fn differ_in_names_only(applied: &NodeState, state: &NodeState) -> bool {
    applied.same_but_peers_and_records(state)
        && !any_service(applied, state, |a, b| a.peers != b.peers)
        && any_service(applied, state, |a, b| a.dns != b.dns)
}

/// Whether `state` differs from `applied` in its services' peers, and perhaps their
/// names' records, alone.
fn differ_in_peers_only(applied: &NodeState, state: &NodeState) -> bool {
    applied.same_but_peers_and_records(state)
        && any_service(applied, state, |a, b| a.peers != b.peers)
}

/// Whether `differ` holds for some service of two states with the same services.
fn any_service(
    applied: &NodeState,
    state: &NodeState,
    differ: impl Fn(&ServiceState, &ServiceState) -> bool,
) -> bool {
    applied
        .services
        .iter()
        .zip(&state.services)
        .any(|(a, b)| differ(a, b))
}

#[cfg(test)]
mod tests;
