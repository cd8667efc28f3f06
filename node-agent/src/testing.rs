//! What the agent's tests, benchmarks and kernel tests share: keys, NodeStates built so
//! that they read like prose, and the converger's inputs made from them.
//!
//! ```
//! use wireway_agent::testing::*;
//!
//! let state = node("node-1").with(
//!     service("red/red")
//!         .cidr("10.100.0.0/16")
//!         .port(51821)
//!         .member(member("red/red-a").host_side("wwv00000001").at("10.100.0.1"))
//!         .peer(peer("node-2").at("192.168.77.2:51821").allowing("10.100.1.0/24")),
//! );
//! assert_eq!(state.services[0].interface_name, "ww-red");
//! ```
//!
//! Built only for tests (`cfg(test)`, or the `testing` feature that the crate's own
//! benchmarks and integration tests turn on).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use wireway_proto::{
    Member, NetnsLocator, NodeState, Peer, ROUTE_TABLE_BASE, ServiceState, WIREGUARD_PREFIX,
    netns_locator,
};

use crate::converge::{NetnsId, Plane, ResolvedNetns};
use crate::dataplane::netns::NetnsFinder;
use crate::resolver::{Answer, Found, Resolve};
use tokio::sync::{Notify, oneshot};

/// The pods of [`red`] and [`green`] on node-1, by UID: `0a` and `0b` in red, `0c` in
/// green.
pub const PODS: [&str; 3] = ["0a", "0b", "0c"];

/// Red, an IPv4 service, as node-1 sees it: `ww-red` on port 51821 for 10.100.0.0/16;
/// members red-a (pod `0a`, host side `wwv0000000a`, 10.100.0.1) and red-b (pod `0b`,
/// `wwv0000000b`, 10.100.0.2); peers node-2 and node-3 at their underlay addresses
/// (keys 2 and 3), and vm, which dials in (key 9).
pub fn red() -> ServiceState {
    service("red/red")
        .port(51821)
        .cidr("10.100.0.0/16")
        .node_prefix("10.100.0.0/24")
        .member(
            member("red/red-a")
                .in_pod("0a")
                .host_side("wwv0000000a")
                .at("10.100.0.1"),
        )
        .member(
            member("red/red-b")
                .in_pod("0b")
                .host_side("wwv0000000b")
                .at("10.100.0.2"),
        )
        .peer(
            peer("node-2")
                .key(&test_key(2))
                .at("192.168.77.2:51821")
                .allowing("10.100.1.0/24"),
        )
        .peer(
            peer("node-3")
                .key(&test_key(3))
                .at("192.168.77.3:51821")
                .allowing("10.100.2.0/24"),
        )
        .peer(peer("vm").key(&test_key(9)).allowing("10.100.255.9/32"))
}

/// Green, an IPv6 service, as node-1 sees it: `ww-green` on port 51820 for
/// fd00:200::/48; member green-a (pod `0c`, host side `wwv0000000c`, fd00:200::1); peers
/// node-2 and node-3 (keys 2 and 3).
pub fn green() -> ServiceState {
    service("green/green")
        .port(51820)
        .cidr("fd00:200::/48")
        .node_prefix("fd00:200::/64")
        .member(
            member("green/green-a")
                .in_pod("0c")
                .host_side("wwv0000000c")
                .at("fd00:200::1"),
        )
        .peer(
            peer("node-2")
                .key(&test_key(2))
                .at("192.168.77.2:51820")
                .allowing("fd00:200:0:1::/64"),
        )
        .peer(
            peer("node-3")
                .key(&test_key(3))
                .at("192.168.77.3:51820")
                .allowing("fd00:200:0:2::/64"),
        )
}

/// A WireGuard public key for tests (base64 of 32 bytes), one per `n`.
pub fn test_key(n: u32) -> String {
    let mut bytes = [0x57u8; 32];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    BASE64.encode(bytes)
}

/// The NodeState of `node`: version 1 of epoch 0, no services yet.
pub fn node(node: &str) -> NodeState {
    NodeState {
        node: node.to_owned(),
        version: 1,
        services: Vec::new(),
        epoch: 0,
    }
}

/// A NodeState, built up.
pub trait NodeStateFixture {
    /// At version `version`.
    fn version(self, version: u64) -> Self;
    /// Served in epoch `epoch` (a leader's term).
    fn epoch(self, epoch: u64) -> Self;
    /// With `service` too.
    fn with(self, service: ServiceState) -> Self;
}

impl NodeStateFixture for NodeState {
    fn version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }

    fn with(mut self, service: ServiceState) -> Self {
        self.services.push(service);
        self
    }
}

/// A service (`namespace/name`) as one node sees it: interface `ww-<name>`, MTU 1420,
/// listening on 51820 with its table from the port (as the planner makes it), no cidr,
/// members or peers yet.
pub fn service(name: &str) -> ServiceState {
    let short = name.rsplit('/').next().unwrap_or(name);
    ServiceState {
        name: name.to_owned(),
        interface_name: format!("{WIREGUARD_PREFIX}{short}"),
        mtu: 1420,
        ..ServiceState::default()
    }
    .port(51820)
}

/// A ServiceState, built up.
pub trait ServiceFixture {
    /// Listening on `port`, its routing table the one the planner gives that port.
    fn port(self, port: u16) -> Self;
    /// With this MTU.
    fn mtu(self, mtu: u32) -> Self;
    /// With address space `cidr`.
    fn cidr(self, cidr: &str) -> Self;
    /// With this node's part of the address space.
    fn node_prefix(self, prefix: &str) -> Self;
    /// With `member` too; inside its workload its interface is `nsm-<service name>`.
    fn member(self, member: Member) -> Self;
    /// With `peer` too.
    fn peer(self, peer: Peer) -> Self;
}

impl ServiceFixture for ServiceState {
    fn port(mut self, port: u16) -> Self {
        self.listen_port = u32::from(port);
        self.route_table = ROUTE_TABLE_BASE + u32::from(port);
        self
    }

    fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    fn cidr(mut self, cidr: &str) -> Self {
        self.cidr = cidr.to_owned();
        self
    }

    fn node_prefix(mut self, prefix: &str) -> Self {
        self.node_prefix = prefix.to_owned();
        self
    }

    fn member(mut self, mut member: Member) -> Self {
        let short = self.name.rsplit('/').next().unwrap_or(&self.name);
        member.interface_name = format!("nsm-{short}");
        self.members.push(member);
        self
    }

    fn peer(mut self, peer: Peer) -> Self {
        self.peers.push(peer);
        self
    }
}

/// A member (`namespace/pod`) in the namespace `/run/netns/<namespace>-<pod>`, with no
/// host side or address yet.
pub fn member(id: &str) -> Member {
    Member {
        id: id.to_owned(),
        ..Member::default()
    }
    .in_netns(&format!("/run/netns/{}", id.replace('/', "-")))
}

/// A Member, built up.
pub trait MemberFixture {
    /// Its veth's host side is `name`.
    fn host_side(self, name: &str) -> Self;
    /// Its address is `address`.
    fn at(self, address: &str) -> Self;
    /// Its namespace is the file at `path`.
    fn in_netns(self, path: &str) -> Self;
    /// Its namespace is its pod's, found by the pod's UID.
    fn in_pod(self, uid: &str) -> Self;
}

impl MemberFixture for Member {
    fn host_side(mut self, name: &str) -> Self {
        self.host_interface_name = name.to_owned();
        self
    }

    fn at(mut self, address: &str) -> Self {
        self.address = address.to_owned();
        self
    }

    fn in_netns(mut self, path: &str) -> Self {
        self.netns = Some(NetnsLocator {
            locator: Some(netns_locator::Locator::Path(path.to_owned())),
        });
        self
    }

    fn in_pod(mut self, uid: &str) -> Self {
        self.netns = Some(NetnsLocator {
            locator: Some(netns_locator::Locator::PodUid(uid.to_owned())),
        });
        self
    }
}

/// A peer called `name` whose public key is its name (the converger does not read keys),
/// dialling in (no endpoint), allowed nothing yet and sent no keepalives.
pub fn peer(name: &str) -> Peer {
    Peer {
        name: name.to_owned(),
        public_key: name.to_owned(),
        ..Peer::default()
    }
}

/// A Peer, built up.
pub trait PeerFixture {
    /// Its public key is `key`.
    fn key(self, key: &str) -> Self;
    /// Reached at `endpoint` (`host:port`).
    fn at(self, endpoint: &str) -> Self;
    /// Allowed (and routed) `prefix` too.
    fn allowing(self, prefix: &str) -> Self;
}

impl PeerFixture for Peer {
    fn key(mut self, key: &str) -> Self {
        self.public_key = key.to_owned();
        self
    }

    fn at(mut self, endpoint: &str) -> Self {
        self.endpoint = endpoint.to_owned();
        self
    }

    fn allowing(mut self, prefix: &str) -> Self {
        self.allowed_ips.push(prefix.to_owned());
        self
    }
}

/// Finds every namespace, as if every pod were running: by path as given, by pod UID
/// at `/run/pods/<uid>`; its identity made from where it is.
pub fn pods_running(locator: &NetnsLocator) -> Result<ResolvedNetns, String> {
    let path = match locator.locator.as_ref() {
        Some(netns_locator::Locator::Path(path)) => path.clone(),
        Some(netns_locator::Locator::PodUid(uid)) => format!("/run/pods/{uid}"),
        None => return Err(crate::converge::NOT_FOUND.to_owned()),
    };
    let mut hasher = DefaultHasher::new();
    path.hash(&mut hasher);
    let id = NetnsId {
        dev: 4,
        ino: hasher.finish(),
    };
    Ok(ResolvedNetns { path, id })
}

/// `desired` as the kernel reports it once it holds it: without the namespace paths only
/// the agent knows.
pub fn as_observed(desired: &Plane) -> Plane {
    let mut observed = desired.clone();
    for link in observed.members.values_mut() {
        if let Some(w) = link.workload.as_mut() {
            w.netns_path.clear();
        }
    }
    observed
}

/// The agent's namespace finder for pods whose namespaces are files in `dir` named by
/// their UIDs (as the lab provides them), with a file made for each of `uids`, for a fake
/// kernel: it takes any file for a namespace, so no namespace needs to be made (nor
/// root).
pub fn pods_in(dir: &Path, uids: &[&str]) -> std::io::Result<NetnsFinder> {
    for uid in uids {
        std::fs::write(dir.join(uid), "")?;
    }
    Ok(NetnsFinder::new(Vec::new(), Some(dir.to_owned()), None).accepting_any_file())
}

/// A resolver whose lookups wait until the test answers them ([`Held::answer`]), and
/// that counts them: asked, and in flight at most at once.
#[derive(Debug, Clone, Default)]
pub struct Held {
    lookups: Arc<Mutex<Lookups>>,
    asked: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Lookups {
    /// Lookups waiting for an answer: the name, and where the answer goes.
    waiting: Vec<(String, oneshot::Sender<Option<Found>>)>,
    asked: usize,
    in_flight: usize,
    most_in_flight: usize,
}

/// One lookup in flight, until its answer arrives or it is dropped.
struct InFlight(Arc<Mutex<Lookups>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0).in_flight -= 1;
    }
}

fn lock(lookups: &Mutex<Lookups>) -> std::sync::MutexGuard<'_, Lookups> {
    lookups
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Resolve for Held {
    fn resolve(&self, host_port: &str) -> Answer {
        let (send, receive) = oneshot::channel();
        {
            let mut lookups = lock(&self.lookups);
            lookups.waiting.push((host_port.to_owned(), send));
            lookups.asked += 1;
            lookups.in_flight += 1;
            lookups.most_in_flight = lookups.most_in_flight.max(lookups.in_flight);
        }
        self.asked.notify_waiters();
        let in_flight = InFlight(Arc::clone(&self.lookups));
        Box::pin(async move {
            let answer = receive.await;
            drop(in_flight);
            answer.map_err(|_| std::io::Error::other("the test did not answer"))
        })
    }
}

impl Held {
    /// The names of the lookups waiting for an answer, once there are `count` (panics
    /// after 10 s without, on tokio's clock: paused, it gets there as soon as nothing
    /// else is due sooner).
    pub async fn waiting(&self, count: usize) -> Vec<String> {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let asked = self.asked.notified();
                tokio::pin!(asked);
                asked.as_mut().enable();
                let names: Vec<String> = {
                    let lookups = lock(&self.lookups);
                    lookups.waiting.iter().map(|(n, _)| n.clone()).collect()
                };
                if names.len() >= count {
                    return names;
                }
                asked.await;
            }
        });
        waited
            .await
            .unwrap_or_else(|_| panic!("fewer than {count} lookups waiting after 10 s"))
    }

    /// Answers the waiting lookups of `name` with `address` (`None`: the name has no
    /// address), without a TTL; how many there were.
    pub fn answer(&self, name: &str, address: Option<SocketAddr>) -> usize {
        self.answer_found(
            name,
            address.map(|address| Found {
                address,
                valid_for: None,
            }),
        )
    }

    /// Answers the waiting lookups of `name` with `found`; how many there were.
    pub fn answer_found(&self, name: &str, found: Option<Found>) -> usize {
        let mut lookups = lock(&self.lookups);
        let (these, others) = std::mem::take(&mut lookups.waiting)
            .into_iter()
            .partition::<Vec<_>, _>(|(n, _)| n == name);
        lookups.waiting = others;
        drop(lookups);
        let answered = these.len();
        for (_, send) in these {
            let _ = send.send(found);
        }
        answered
    }

    /// Lookups asked for so far.
    pub fn asked(&self) -> usize {
        lock(&self.lookups).asked
    }

    /// The most lookups that were in flight at once.
    pub fn most_in_flight(&self) -> usize {
        lock(&self.lookups).most_in_flight
    }
}
