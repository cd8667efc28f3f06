//! The operator's gRPC servers, on one port under one TLS configuration: the node API
//! ([`NodeApiService`]) and the status API for administrators ([`status`]). Who a caller
//! is, and what it may do, is [`auth`]'s.
//!
//! The node API is a thin shell over the engine's [`Hub`]: an agent's hello and reports
//! go to the engine as [`Input`]s, and its stream follows its node's watch channel, so an
//! agent is sent a state only when its own node's state changed. A request is served
//! only for the node the caller proves (its client certificate or its token), and only
//! by the leader: a standby refuses with UNAVAILABLE naming the leader, and a leader that
//! loses the Lease ends its streams the same way (the agent reconnects, and the Service
//! sends it to the ready operator, the leader).

pub mod auth;
pub mod status;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use wireway_proto::node_api_server::NodeApi;
use wireway_proto::{AgentHello, AgentReport, MAX_NODE_STATE_BYTES, NodeState, ReportAck};
use wireway_runtime::limit::Buckets;

use crate::engine::{Hub, Input, Leadership};
use crate::metrics::{Metrics, category};
use crate::plan;

pub use auth::{Auth, Refusal, TokenAuthenticator, TokenError};
pub use status::{StatusApiServer, StatusApiService};
pub use wireway_proto::node_api_server::NodeApiServer;

/// The highest version an agent may say it holds: 2^53, more than any operator numbers
/// (a node whose state changed a million times a second would take 285 years to get
/// there), and every version below it fits a JSON number and a metric. An agent that says
/// more is refused, so no version the operator computes from it can overflow.
pub const MAX_VERSION: u64 = 1 << 53;

/// Reports one node may send at once, then [`REPORTS_PER_SECOND`]: an agent reports after
/// each pass and every `--report-interval`; a node that floods costs the engine this
/// much and no more.
pub const REPORT_BURST: u32 = 20;
/// Reports one node earns per second after a burst.
pub const REPORTS_PER_SECOND: f64 = 5.0;

/// The node API.
#[derive(Debug, Clone)]
pub struct NodeApiService {
    hub: Arc<Hub>,
    inputs: mpsc::Sender<Input>,
    auth: Auth,
    metrics: Metrics,
    /// A token bucket per node for its reports.
    reports: Arc<Mutex<Buckets<String>>>,
}

impl NodeApiService {
    /// The service, feeding `inputs` and serving from `hub`.
    pub fn new(hub: Arc<Hub>, inputs: mpsc::Sender<Input>, auth: Auth, metrics: Metrics) -> Self {
        Self {
            hub,
            inputs,
            auth,
            metrics,
            reports: Arc::new(Mutex::new(Buckets::new(REPORT_BURST, REPORTS_PER_SECOND))),
        }
    }

    /// The gRPC server of this service, as the operator serves it: states up to
    /// [`MAX_NODE_STATE_BYTES`] sent (gRPC's default is 4 MiB) and reports up to as much
    /// taken (a node's report names each of its peers: about 55 bytes a peer, so the
    /// default would refuse the reports of a node with 75,000).
    pub fn server(self) -> NodeApiServer<Self> {
        NodeApiServer::new(self)
            .max_encoding_message_size(MAX_NODE_STATE_BYTES)
            .max_decoding_message_size(MAX_NODE_STATE_BYTES)
    }

    /// Takes one of `node`'s reports, or refuses it (counted, logged at debug only: a
    /// flood must not flood the log either).
    fn throttle(&self, node: &str) -> Result<(), Status> {
        let mut buckets = self
            .reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.take(&node.to_owned(), Instant::now()) {
            return Ok(());
        }
        self.metrics.error(category::REPORT_THROTTLED);
        tracing::debug!(node, "report throttled");
        Err(Status::resource_exhausted(format!(
            "node {node} reports faster than {REPORTS_PER_SECOND} a second (after a burst of \
             {REPORT_BURST}); this report is dropped, the agent's next one says the same"
        )))
    }

    /// Refuses a request that is not from `node`'s agent.
    async fn authorize<T>(&self, request: &Request<T>, node: &str) -> Result<(), Status> {
        self.auth
            .node(request, node)
            .await
            .map_err(|status| self.refuse(status))
    }

    fn refuse(&self, status: Status) -> Status {
        self.metrics.error(category::AGENT_REFUSED);
        tracing::warn!(reason = status.message(), "refused an agent's request");
        status
    }

    /// Refuses a request while this operator is a standby, or a new leader that has not
    /// planned yet.
    fn serving(&self) -> Result<(), Status> {
        let leadership = self.hub.leadership();
        if self.hub.serves() {
            return Ok(());
        }
        if leadership.leading {
            return Err(Status::unavailable(
                "this operator has just begun to lead and plans from its predecessor's allocations; try again",
            ));
        }
        tracing::debug!(leader = leadership.leader, "sent an agent to the leader");
        Err(standby(&leadership))
    }

    async fn tell(&self, input: Input) -> Result<(), Status> {
        self.inputs
            .send(input)
            .await
            .map_err(|_| Status::unavailable("the operator is shutting down"))
    }
}

/// Closes the node's connection in the engine's books when its stream ends.
#[derive(Debug)]
struct Connection {
    node: String,
    inputs: mpsc::Sender<Input>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let inputs = self.inputs.clone();
        let node = std::mem::take(&mut self.node);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = inputs.send(Input::Disconnected(node)).await;
            });
        }
    }
}

/// Why an agent's hello or report cannot be taken, as its agent is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The node name is not a lowercase DNS subdomain.
    #[error("node {0:?} is not a valid node name (a lowercase DNS subdomain)")]
    NodeName(String),
    /// The public key is not base64.
    #[error("public_key is not base64")]
    KeyEncoding,
    /// The public key is not 32 bytes long.
    #[error("public_key has {0} bytes, a WireGuard key 32")]
    KeyLength(usize),
    /// The underlay address is not an IP address.
    #[error(
        "underlay_address {0:?} is not an IP address (the address other nodes reach this one at)"
    )]
    Underlay(String),
    /// The applied version is above any the operator gives.
    #[error(
        "applied_version {0} is above {MAX_VERSION}, more than any operator numbers (remove the \
         agent's node-state.json to start the node from nothing)"
    )]
    Version(u64),
}

/// Why a hello cannot be taken, for the agent's operator.
pub fn check_hello(hello: &AgentHello) -> Result<(), Malformed> {
    check_node_name(&hello.node)?;
    let length = plan::key_length(&hello.public_key).ok_or(Malformed::KeyEncoding)?;
    if length != 32 {
        return Err(Malformed::KeyLength(length));
    }
    hello
        .underlay_address
        .parse::<std::net::IpAddr>()
        .map_err(|_| Malformed::Underlay(hello.underlay_address.clone()))?;
    check_version(hello.applied_version)
}

/// Why a report cannot be taken, for the agent's operator.
pub fn check_report(report: &AgentReport) -> Result<(), Malformed> {
    check_node_name(&report.node)?;
    check_version(report.applied_version)
}

fn check_version(version: u64) -> Result<(), Malformed> {
    if version > MAX_VERSION {
        return Err(Malformed::Version(version));
    }
    Ok(())
}

fn check_node_name(node: &str) -> Result<(), Malformed> {
    let valid = !node.is_empty()
        && node.len() <= 253
        && node.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(())
    } else {
        Err(Malformed::NodeName(node.to_owned()))
    }
}

/// What an agent that reached a standby is told.
fn standby(leadership: &Leadership) -> Status {
    Status::unavailable(match &leadership.leader {
        Some(leader) => format!("this operator is a standby; {leader} leads and serves agents"),
        None => "this operator is a standby, and no leader is known yet".to_owned(),
    })
}

type StateStream = Pin<Box<dyn Stream<Item = Result<NodeState, Status>> + Send>>;

#[tonic::async_trait]
impl NodeApi for NodeApiService {
    type WatchStream = StateStream;

    /// An agent's stream, in the span `watch` (its node) for as long as it is open.
    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node))]
    async fn watch(&self, request: Request<AgentHello>) -> Result<Response<StateStream>, Status> {
        let node = request.get_ref().node.clone();
        check_hello(request.get_ref())
            .map_err(|e| self.refuse(Status::invalid_argument(e.to_string())))?;
        self.serving()?;
        self.authorize(&request, &node).await?;
        let hello = request.into_inner();
        tracing::info!(
            node,
            underlay = hello.underlay_address,
            applied_version = hello.applied_version,
            "agent connected"
        );
        self.tell(Input::Hello(hello)).await?;
        let connection = Connection {
            node: node.clone(),
            inputs: self.inputs.clone(),
        };
        let metrics = self.metrics.clone();
        let span = tracing::Span::current();
        let hub = self.hub.clone();
        let states = WatchStream::new(self.hub.subscribe(&node)).filter_map(move |state| {
            let _open = &connection;
            let mut state = NodeState::clone(state?.as_ref());
            // The term it is served in: a new leader's states are newer to the agent
            // whatever their versions.
            state.epoch = hub.leadership().epoch;
            let _stream = span.enter();
            // Sent, it would end the stream (the agent would only reconnect to the same
            // state): the agent keeps the state it has instead.
            let bytes = state.encoded_len();
            if bytes > MAX_NODE_STATE_BYTES {
                metrics.error(category::STATE_TOO_LARGE);
                tracing::error!(
                    version = state.version,
                    bytes,
                    limit = MAX_NODE_STATE_BYTES,
                    "state not sent: larger than the node API allows; the agent keeps its \
                     state (fewer services or peers on this node would fit)"
                );
                return None;
            }
            tracing::debug!(epoch = state.epoch, version = state.version, "state sent");
            metrics.pushes.inc();
            Some(Ok(state))
        });
        // Served while leading: on losing the Lease the stream ends with UNAVAILABLE.
        let mut leadership = self.hub.subscribe_leading();
        let lost = async move {
            let _ = leadership.wait_for(|l| !l.leading).await;
        };
        let hub = self.hub.clone();
        let ended = futures_util::stream::once(async move { hub.leadership() })
            .filter_map(|l| (!l.leading).then(|| Err(standby(&l))));
        let states = futures_util::StreamExt::take_until(states, lost).chain(ended);
        Ok(Response::new(Box::pin(states)))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node))]
    async fn report(&self, request: Request<AgentReport>) -> Result<Response<ReportAck>, Status> {
        let node = request.get_ref().node.clone();
        check_report(request.get_ref())
            .map_err(|e| self.refuse(Status::invalid_argument(e.to_string())))?;
        self.serving()?;
        self.authorize(&request, &node).await?;
        // After the caller proved the node: no one spends another node's reports.
        self.throttle(&node)?;
        self.tell(Input::Report(request.into_inner())).await?;
        Ok(Response::new(ReportAck {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn hello() -> AgentHello {
        testing::hello("node-a")
    }

    #[test]
    fn a_hello_is_checked_field_by_field() {
        assert_eq!(check_hello(&hello()), Ok(()));
        type Break = fn(&mut AgentHello);
        let cases: [(Break, &str); 6] = [
            (|h| h.node = String::new(), "not a valid node name"),
            (|h| h.node = "Node_A".into(), "not a valid node name"),
            (|h| h.public_key = "not base64!".into(), "not base64"),
            (|h| h.public_key = "AAAA".into(), "has 3 bytes"),
            (
                |h| h.underlay_address = "node-a.example".into(),
                "not an IP address",
            ),
            (
                |h| h.applied_version = u64::MAX,
                "applied_version 18446744073709551615 is above 9007199254740992",
            ),
        ];
        for (break_it, expected) in cases {
            let mut h = hello();
            break_it(&mut h);
            let err = check_hello(&h).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        }
    }

    #[test]
    fn a_report_of_a_version_no_operator_gives_is_refused() {
        let report = |applied_version| AgentReport {
            node: "node-a".into(),
            applied_version,
            ..AgentReport::default()
        };
        assert_eq!(check_report(&report(MAX_VERSION)), Ok(()));
        let err = check_report(&report(MAX_VERSION + 1)).unwrap_err();
        assert_eq!(err, Malformed::Version(MAX_VERSION + 1));
        assert!(err.to_string().contains("node-state.json"), "{err}");
    }
}
