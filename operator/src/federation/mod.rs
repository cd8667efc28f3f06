//! Federation: this operator's side of the exchange with peer clusters' operators.
//!
//! Every operator serves the federation API and dials every peer cluster its
//! PeerClusters name; a connection, whoever opened it, carries both directions, so one
//! reachable side is enough. Both ends prove their operator identity over mutual TLS
//! ([`tls`]). On each connection a side sends all its halves of the services shared with
//! the other first, then only what changed ([`exchange`]); it tells the engine what the
//! peer sent and when its connections open and close ([`PeerSent`]), and the planner
//! keeps the peer's halves as the last ones received: a connection that closes changes
//! nothing but `connected`.
//!
//! Thin by design: which remote members are installed is the planner's decision
//! (`plan/service/federation.rs`).

pub mod exchange;
pub mod tls;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};
use wireway_crds::PeerCluster;
use wireway_proto::MAX_FEDERATION_UPDATE_BYTES;
use wireway_proto::federation::FederationUpdate;
use wireway_proto::federation::federation_client::FederationClient;
use wireway_proto::federation::federation_server::{self, FederationServer};
use wireway_runtime::backoff::Backoff;
use wireway_runtime::errors::chain;
use wireway_runtime::tls::operator_identity;

use crate::engine::Hub;
use crate::plan::{ObjectKey, PeerSent};
use exchange::{Halves, Inbox, Outbox};
use tls::{OwnIdentity, PeerIdentity, SharedTrust, TlsProblem, Trust};

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on every federation connection, both ways: a cut link (no RST, packets
/// dropped) ends the connection within their interval and timeout, and the peer shows
/// as disconnected.
const KEEPALIVE: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long dialling a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Redialling a peer: from 1 s, doubling up to 30 s.
const REDIAL: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

/// A peer cluster as the federation needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its name, operator identity and trust bundle.
    pub identity: PeerIdentity,
    /// Where its operator serves federation (host:port).
    pub address: String,
    /// The services shared with it: what it may send halves of.
    pub shared: BTreeSet<ObjectKey>,
}

impl PeerSpec {
    /// A peer as its PeerCluster declares it.
    pub fn of(object: &PeerCluster) -> Self {
        let spec = &object.spec;
        Self {
            identity: PeerIdentity {
                name: object.metadata.name.clone().unwrap_or_default(),
                identity: spec
                    .operator_identity
                    .clone()
                    .unwrap_or_else(|| operator_identity(&spec.trust_domain)),
                bundle: spec.trust_bundle.clone(),
            },
            address: spec.address.clone(),
            shared: spec
                .services
                .iter()
                .map(|s| ObjectKey::new(&s.namespace, &s.name))
                .collect(),
        }
    }
}

/// What this side knows of a peer's connections.
#[derive(Debug, Clone, Default)]
struct Link {
    open: usize,
    last_sync: Option<Time>,
}

/// The federation's shared state: the peers (from PeerClusters), this cluster's halves
/// for each (from the plans), and where events go.
#[derive(Debug, Clone)]
pub struct Federation {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    own: OwnIdentity,
    /// This cluster's nodes cannot be reached from peers (NAT): they are sent without
    /// endpoints, so peers wait for them to dial in.
    behind_nat: bool,
    trust: SharedTrust,
    peers: watch::Sender<BTreeMap<String, PeerSpec>>,
    outgoing: watch::Sender<BTreeMap<String, Halves>>,
    events: mpsc::Sender<PeerSent>,
    links: Mutex<BTreeMap<String, Link>>,
}

impl Federation {
    /// A federation presenting `own`, telling `events` what peers send and when their
    /// connections open and close; `behind_nat` sends this cluster's nodes without
    /// endpoints.
    pub fn new(own: OwnIdentity, behind_nat: bool, events: mpsc::Sender<PeerSent>) -> Self {
        Self {
            inner: Arc::new(Inner {
                own,
                behind_nat,
                trust: Arc::new(RwLock::new(Trust::default())),
                peers: watch::channel(BTreeMap::new()).0,
                outgoing: watch::channel(BTreeMap::new()).0,
                events,
                links: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// The peers now (replacing the ones before): connections of peers gone or changed
    /// close. Returns the peers whose trust bundle is unusable (nobody proves them).
    pub fn set_peers(&self, peers: Vec<PeerSpec>) -> Vec<(String, TlsProblem)> {
        let identities: Vec<PeerIdentity> = peers.iter().map(|p| p.identity.clone()).collect();
        let (trust, problems) = Trust::new(&identities);
        if let Ok(mut shared) = self.inner.trust.write() {
            *shared = trust;
        }
        let peers = peers
            .into_iter()
            .map(|p| (p.identity.name.clone(), p))
            .collect();
        self.inner.peers.send_if_modified(|old| {
            let changed = *old != peers;
            *old = peers;
            changed
        });
        problems
    }

    /// This cluster's halves for each peer now (a plan's `federation`).
    pub fn set_outgoing(&self, mut halves: BTreeMap<String, Halves>) {
        if self.inner.behind_nat {
            for half in halves.values_mut().flat_map(|h| h.values_mut()) {
                for node in &mut half.nodes {
                    node.endpoint = None;
                }
            }
        }
        self.inner.outgoing.send_if_modified(|old| {
            let changed = *old != halves;
            *old = halves;
            changed
        });
    }

    /// Follows what the engine publishes on `hub`: while this operator leads, it serves
    /// and dials the PeerClusters' peers with the halves last planned; a standby has no
    /// peers (they talk to the leader, and its connections close when it loses the lead).
    pub async fn follow(self, hub: Arc<Hub>) {
        let mut federated = hub.subscribe_federated();
        let mut leading = hub.subscribe_leading();
        let mut unusable: Vec<String> = Vec::new();
        loop {
            let lead = leading.borrow_and_update().leading;
            let now = federated.borrow_and_update().clone();
            if lead {
                let peers = now.peer_clusters.values().map(PeerSpec::of).collect();
                let problems = self.set_peers(peers);
                let names: Vec<String> = problems.iter().map(|(n, _)| n.clone()).collect();
                if names != unusable {
                    for (peer, problem) in &problems {
                        tracing::warn!(%peer, %problem, "the peer cluster's trust bundle is unusable: nobody proves it");
                    }
                    unusable = names;
                }
                self.set_outgoing(now.halves.clone());
            } else {
                self.set_peers(Vec::new());
                self.set_outgoing(BTreeMap::new());
            }
            tokio::select! {
                changed = federated.changed() => if changed.is_err() { return },
                changed = leading.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Serves the federation API on `listener` until it fails.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), ServeError> {
        let config = tls::server_config(&self.inner.own, self.inner.trust.clone())?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (connections, incoming) = mpsc::channel(16);
        let trust = self.inner.trust.clone();
        tokio::spawn(accept(listener, acceptor, trust, connections));
        let service = FederationServer::new(Service {
            federation: self.clone(),
        })
        .max_decoding_message_size(MAX_FEDERATION_UPDATE_BYTES)
        .max_encoding_message_size(MAX_FEDERATION_UPDATE_BYTES);
        Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .add_service(service)
            .serve_with_incoming(ReceiverStream::new(incoming))
            .await?;
        Ok(())
    }

    /// Dials every peer, and again whenever a connection ends (backing off), following
    /// the peers as they change. Runs until the federation is dropped.
    pub async fn dial(self) {
        let mut peers = self.inner.peers.subscribe();
        let mut dialling: BTreeMap<String, (PeerSpec, tokio::task::JoinHandle<()>)> =
            BTreeMap::new();
        loop {
            let wanted = peers.borrow_and_update().clone();
            dialling.retain(|name, (spec, task)| {
                let keep = wanted.get(name) == Some(spec);
                if !keep {
                    task.abort();
                }
                keep
            });
            for (name, spec) in wanted {
                if let std::collections::btree_map::Entry::Vacant(slot) = dialling.entry(name) {
                    let task = tokio::spawn(self.clone().keep_dialling(spec.clone()));
                    slot.insert((spec, task));
                }
            }
            if peers.changed().await.is_err() {
                return;
            }
        }
    }

    async fn keep_dialling(self, spec: PeerSpec) {
        let mut backoff = REDIAL;
        loop {
            match self.connect(&spec).await {
                Ok(()) => backoff.reset(),
                Err(e) => tracing::warn!(
                    peer = %spec.identity.name,
                    address = %spec.address,
                    error = %chain(&*e),
                    "cannot reach the peer cluster's operator"
                ),
            }
            tokio::time::sleep(backoff.fail()).await;
        }
    }

    /// One connection to a peer, until it ends.
    async fn connect(
        &self,
        spec: &PeerSpec,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let config = tls::client_config(
            &self.inner.own,
            self.inner.trust.clone(),
            &spec.identity.name,
        )?;
        let connector = TlsConnector::from(Arc::new(config));
        let address = spec.address.clone();
        let channel = Endpoint::from_static("http://peer.wireway.invalid")
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_with_connector(tower::service_fn(move |_| {
                let connector = connector.clone();
                let address = address.clone();
                async move {
                    let tcp = TcpStream::connect(&address).await?;
                    let name = ServerName::try_from("peer.wireway.invalid")
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let tls = connector.connect(name, tcp).await?;
                    Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await?;
        let mut client = FederationClient::new(channel)
            .max_decoding_message_size(MAX_FEDERATION_UPDATE_BYTES)
            .max_encoding_message_size(MAX_FEDERATION_UPDATE_BYTES);
        let (outbound, requests) = mpsc::channel(16);
        let inbound = client
            .exchange(ReceiverStream::new(requests))
            .await?
            .into_inner();
        self.session(spec.identity.name.clone(), inbound, outbound)
            .await;
        Ok(())
    }

    /// One connection's exchange with `peer`, whichever side opened it: sends this
    /// cluster's halves for the peer as they change, takes the peer's updates, until
    /// either side ends it or the peer is removed.
    async fn session<S>(
        &self,
        peer: String,
        mut inbound: S,
        outbound: mpsc::Sender<FederationUpdate>,
    ) where
        S: Stream<Item = Result<FederationUpdate, Status>> + Unpin,
    {
        self.count(&peer, true).await;
        let mut outgoing = self.inner.outgoing.subscribe();
        let mut peers = self.inner.peers.subscribe();
        let mut outbox = Outbox::default();
        let mut inbox = Inbox::default();
        let mut send_now = true;
        loop {
            if send_now {
                let halves = outgoing
                    .borrow_and_update()
                    .get(&peer)
                    .cloned()
                    .unwrap_or_default();
                if let Some(update) = outbox.update(&halves)
                    && outbound.send(update).await.is_err()
                {
                    break;
                }
            }
            send_now = false;
            tokio::select! {
                changed = outgoing.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    send_now = true;
                }
                changed = peers.changed() => {
                    if changed.is_err() || !peers.borrow_and_update().contains_key(&peer) {
                        break;
                    }
                }
                update = inbound.next() => {
                    let Some(Ok(update)) = update else { break };
                    let shared = self.shared_with(&peer);
                    match inbox.apply(update, &shared) {
                        Ok(halves) => {
                            let halves = halves.clone();
                            if !self.tell(&peer, |_| Some(halves)).await {
                                break;
                            }
                        }
                        Err(refusal) => {
                            tracing::warn!(%peer, %refusal, "closing the connection: the peer cluster's operator broke the exchange");
                            break;
                        }
                    }
                }
            }
        }
        self.count(&peer, false).await;
    }

    fn shared_with(&self, peer: &str) -> BTreeSet<ObjectKey> {
        self.inner
            .peers
            .borrow()
            .get(peer)
            .map(|p| p.shared.clone())
            .unwrap_or_default()
    }

    /// Counts a connection with `peer` opening or closing, and tells the engine.
    async fn count(&self, peer: &str, opened: bool) {
        self.tell(peer, |link| {
            link.open = if opened {
                link.open + 1
            } else {
                link.open.saturating_sub(1)
            };
            None
        })
        .await;
    }

    /// Updates what is known of `peer`'s link (`update` may return halves it sent, which
    /// make now its last sync) and tells the engine. False once the engine is gone.
    async fn tell(&self, peer: &str, update: impl FnOnce(&mut Link) -> Option<Halves>) -> bool {
        let sent = {
            let Ok(mut links) = self.inner.links.lock() else {
                return false;
            };
            let link = links.entry(peer.to_owned()).or_default();
            let halves = update(link);
            if halves.is_some() {
                link.last_sync = Some(Time(Timestamp::now()));
            }
            PeerSent {
                peer: peer.to_owned(),
                connected: link.open > 0,
                last_sync: link.last_sync.clone(),
                halves,
            }
        };
        self.inner.events.send(sent).await.is_ok()
    }
}

/// Why the federation API stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// This operator's certificate cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsProblem),
    /// The gRPC server failed.
    #[error("the federation API server failed")]
    Server(#[from] tonic::transport::Error),
}

/// The peer cluster a connection's client proved: what the handler serves it as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerName(pub String);

/// A TLS connection from a peer's operator, with the peer it proved.
#[derive(Debug)]
struct PeerConnection {
    tls: TlsStream<TcpStream>,
    peer: PeerName,
}

impl Connected for PeerConnection {
    type ConnectInfo = PeerName;

    fn connect_info(&self) -> PeerName {
        self.peer.clone()
    }
}

impl AsyncRead for PeerConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Accepts TCP connections and completes their TLS handshakes (each on its own task, so
/// a slow or silent client holds up nobody), passing on those of a proven peer.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    trust: SharedTrust,
    connections: mpsc::Sender<io::Result<PeerConnection>>,
) {
    loop {
        let (tcp, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "federation: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let trust = trust.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(%from, error = %e, "federation: refused a connection");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%from, "federation: TLS handshake timed out");
                    return;
                }
            };
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|leaf| trust.read().ok()?.peer_of(leaf));
            if let Some(peer) = peer {
                let connection = PeerConnection {
                    tls,
                    peer: PeerName(peer),
                };
                let _ = connections.send(Ok(connection)).await;
            }
        });
    }
}

/// The federation API's handler.
#[derive(Debug, Clone)]
struct Service {
    federation: Federation,
}

type Updates = Pin<Box<dyn Stream<Item = Result<FederationUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl federation_server::Federation for Service {
    type ExchangeStream = Updates;

    async fn exchange(
        &self,
        request: Request<Streaming<FederationUpdate>>,
    ) -> Result<Response<Updates>, Status> {
        let PeerName(peer) = request
            .extensions()
            .get::<PeerName>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no peer cluster proven"))?;
        let (outbound, responses) = mpsc::channel(16);
        let federation = self.federation.clone();
        let inbound = request.into_inner();
        tokio::spawn(async move { federation.session(peer, inbound, outbound).await });
        Ok(Response::new(Box::pin(
            ReceiverStream::new(responses).map(Ok),
        )))
    }
}

#[cfg(test)]
mod tests;
