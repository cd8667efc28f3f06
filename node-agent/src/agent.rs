//! One converge pass: NodeState → desired data plane → observe → operations → apply →
//! what it did ([`Pass`]), on any [`Dataplane`]: the node's kernel, or a fake in tests.

use std::cell::{OnceCell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use wireway_proto::{NetnsLocator, NodeState, netns_locator};
use wireway_runtime::files;

use crate::converge::{self, DesiredError, Lookup, Op, Plane, ResolvedNetns};
use crate::dataplane::kernel::Kernel;
use crate::dataplane::netlink::Netlink;
use crate::dataplane::netns::{Namespaces, NetnsFinder};
use crate::dataplane::pods::PodIndex;
use crate::dataplane::wireguard::userspace::Userspace;
use crate::dataplane::wireguard::{self, Backend, PeerStats};
use crate::dataplane::{ApplyError, Dataplane};
use crate::resolver::{Limits, Resolver, System};

/// Where the agent keeps what must survive it: the node's private key, and the control
/// sockets of its userspace WireGuard devices.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory or the key in it is unusable.
    #[error("failed to use the state directory {path}")]
    State {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Netlink is not available.
    #[error("failed to open netlink")]
    Netlink(#[from] crate::dataplane::netlink::NetlinkError),
}

impl StateDir {
    /// The node's private key (base64), generated on first use and stored 0600 (written
    /// whole or not at all, never through a symbolic link). It never leaves this file and
    /// the agent's memory.
    ///
    /// A file that holds no WireGuard key (empty, cut short) is moved aside
    /// ([`files::set_aside`]) and a new key made: the node's next hello gives the operator
    /// the new key, which its peers then get.
    pub fn private_key(&self) -> Result<String, StartError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.join("private.key");
        let error = |source| StartError::State {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.0).map_err(error)?;
        std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700)).map_err(error)?;
        match files::read_private(&path) {
            Ok(key) if wireguard::key_bytes(key.trim()).is_ok() => {
                return Ok(key.trim().to_owned());
            }
            Ok(_) => {
                let to = files::set_aside(&path).map_err(error)?;
                tracing::error!(
                    key = %path.display(),
                    moved_to = %to.display(),
                    "the node's private key file holds no WireGuard key; moved it aside and \
                     made a new key (the operator gives the node's peers the new one)"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(error(e)),
        }
        let (private, _) = wireguard::generate_key().map_err(error)?;
        files::write_private(&path, private.as_bytes()).map_err(error)?;
        Ok(private)
    }

    /// The file whose presence records that the agent turned IPv6 forwarding on
    /// node-wide (kernels before Linux 6.17), to turn it off when no service needs it.
    pub fn ipv6_forwarding_turned_on(&self) -> PathBuf {
        self.0.join("ipv6-forwarding-turned-on")
    }

    /// Where the userspace WireGuard devices' control sockets are.
    pub fn sockets(&self) -> PathBuf {
        self.0.join("wireguard")
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct Pass {
    /// Operations applied (or tried).
    pub ops: Vec<Op>,
    /// Parts of the NodeState that could not be applied.
    pub desired_errors: Vec<DesiredError>,
    /// Operations that failed.
    pub apply_errors: Vec<ApplyError>,
    /// Netlink writes made.
    pub writes: u64,
    /// The data plane the pass aimed at: what the kernel holds after it when nothing was
    /// left out and nothing failed ([`Pass::clean`]).
    pub desired: Plane,
    /// It went over the WireGuard peers alone and read nothing
    /// ([`Agent::converge_peers`]).
    pub peers_only: bool,
}

impl Pass {
    /// Nothing was left out and nothing failed: the kernel holds [`Pass::desired`].
    pub fn clean(&self) -> bool {
        self.desired_errors.is_empty() && self.apply_errors.is_empty()
    }

    /// What was not applied, for a person: the parts of the state left out and the
    /// operations that failed.
    pub fn problems(&self) -> Vec<String> {
        let left_out = self.desired_errors.iter().map(ToString::to_string);
        let failed = self.apply_errors.iter().map(|e| crate::chain(e));
        left_out.chain(failed).collect()
    }
}

/// The agent's hold on its node's data plane.
#[derive(Debug)]
pub struct Agent<D = Kernel> {
    dataplane: D,
    netns: NetnsFinder,
    resolver: Resolver,
}

/// What [`converge::desired`] looks up, found: namespaces now, each opened once and
/// kept for the pass (the pods' cgroups read at most once a pass, and only if a member is
/// named by UID), endpoints as the resolver knows them (never waiting for a lookup).
struct Found<'a> {
    netns: &'a NetnsFinder,
    pods: OnceCell<Option<PodIndex>>,
    endpoints: &'a BTreeMap<String, SocketAddr>,
    /// What each locator gave, so a namespace two members share is opened once.
    looked_up: RefCell<BTreeMap<(bool, String), Result<ResolvedNetns, String>>>,
    /// The namespaces opened: the pass reaches them only through these.
    opened: RefCell<Namespaces>,
}

/// A locator as a key: by path or by UID.
fn locator_key(locator: &NetnsLocator) -> (bool, String) {
    match &locator.locator {
        Some(netns_locator::Locator::Path(path)) => (false, path.clone()),
        Some(netns_locator::Locator::PodUid(uid)) => (true, uid.clone()),
        None => (false, String::new()),
    }
}

impl Lookup for &Found<'_> {
    fn netns(&self, locator: &NetnsLocator) -> Result<ResolvedNetns, String> {
        let key = locator_key(locator);
        if let Some(found) = self.looked_up.borrow().get(&key) {
            return found.clone();
        }
        let by_uid = matches!(locator.locator, Some(netns_locator::Locator::PodUid(_)));
        let pods = if by_uid {
            self.pods.get_or_init(|| self.netns.pods()).as_ref()
        } else {
            None
        };
        let found = match self.netns.find(locator, pods) {
            Ok((netns, fd)) => {
                self.opened.borrow_mut().insert(netns.id, fd);
                Ok(netns)
            }
            Err(e) => Err(crate::chain(&e)),
        };
        self.looked_up.borrow_mut().insert(key, found.clone());
        found
    }

    fn endpoint(&self, host_port: &str) -> Option<SocketAddr> {
        self.endpoints.get(host_port).copied()
    }
}

impl Agent<Kernel> {
    /// An agent for the calling thread's network namespace, keeping its state in
    /// `state`; `program` is the agent binary (run again for userspace WireGuard devices).
    pub async fn start(
        state: &StateDir,
        program: &Path,
        netns: NetnsFinder,
    ) -> Result<Self, StartError> {
        let private_key = state.private_key()?;
        let userspace = Userspace {
            program: program.to_owned(),
            socket_dir: state.sockets(),
        };
        let backend = Backend::detect(userspace).await;
        let kernel = Kernel::new(
            Netlink::connect()?,
            backend,
            private_key,
            state.ipv6_forwarding_turned_on(),
        );
        Ok(Self::new(kernel, netns))
    }

    /// MTU of the link that holds `address` (the underlay's), if one does.
    pub async fn mtu_of(&self, address: std::net::IpAddr) -> Option<u32> {
        self.dataplane.mtu_of(address).await
    }
}

impl<D: Dataplane> Agent<D> {
    /// An agent that converges `dataplane`, finding workloads' namespaces with `netns`
    /// and peers' endpoints given by host name with the system's resolver.
    pub fn new(dataplane: D, netns: NetnsFinder) -> Self {
        Self {
            dataplane,
            netns,
            resolver: Resolver::new(System::configured(), Limits::default()),
        }
    }

    /// The agent, looking host names up with `resolver` instead.
    #[must_use]
    pub fn with_resolver(self, resolver: Resolver) -> Self {
        Self { resolver, ..self }
    }

    /// Where the passes' host names are looked up: [`Resolver::changed`] says when a pass
    /// would set a new endpoint.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// The WireGuard backend in use: `kernel` or `userspace`.
    pub fn backend(&self) -> &'static str {
        self.dataplane.backend()
    }

    /// Converges the data plane to `state` once, with the endpoints known now: a peer whose
    /// host name has no address yet is set without one (see [`crate::resolver`]).
    #[tracing::instrument(name = "pass", skip_all, fields(version = state.version, services = state.services.len()))]
    pub async fn converge(&self, state: &NodeState) -> Result<Pass, ApplyError> {
        self.pass(state, None).await
    }

    /// Converges the WireGuard peers alone to `state`, for a state that differs from the
    /// one last applied (with nothing left out) only in its peers and names: the rest of
    /// the data plane, and the peers, are taken as that pass left them (`held`, its
    /// [`Pass::desired`]), as a names-only state's are, and the resync's full pass
    /// repairs drift. So only the peers that differ are sent to the devices, and nothing
    /// is read. A device that refuses them (gone, or not answering) makes it a full pass,
    /// which makes the device again. A node joining or leaving a service changes a peer
    /// on every other node of the service: a full pass on each costs every node a read
    /// of all its links, addresses, routes, rules and nftables table, and a read of every
    /// peer of its devices would cost it the device's whole table.
    #[tracing::instrument(name = "pass", skip_all, fields(version = state.version, services = state.services.len(), peers_only = true))]
    pub async fn converge_peers(
        &self,
        state: &NodeState,
        held: &Plane,
    ) -> Result<Pass, ApplyError> {
        let pass = self.pass(state, Some(held)).await?;
        if pass.apply_errors.is_empty() {
            return Ok(pass);
        }
        tracing::info!(problems = ?pass.problems(), "peers refused: a full pass");
        self.pass(state, None).await
    }

    /// A pass; over the peers alone when given the plane the last pass left (`held`).
    async fn pass(&self, state: &NodeState, held: Option<&Plane>) -> Result<Pass, ApplyError> {
        let before = self.dataplane.writes();
        let endpoints = self.resolver.endpoints(&converge::endpoint_names(state));
        let found = Found {
            netns: &self.netns,
            pods: OnceCell::new(),
            endpoints: &endpoints,
            looked_up: RefCell::default(),
            opened: RefCell::default(),
        };
        let (desired, desired_errors) = converge::desired(state, &found);
        let namespaces = found.opened.into_inner();
        let (observed, peers_only) = match held.and_then(|held| with_peers_of(&desired, held)) {
            Some(observed) => (observed, true),
            None => (self.dataplane.observe(&desired, &namespaces).await?, false),
        };
        let ops = converge::converge(&desired, &observed);
        let apply_errors = self.dataplane.apply(&ops, &namespaces).await;
        Ok(Pass {
            ops,
            desired_errors,
            apply_errors,
            writes: self.dataplane.writes() - before,
            desired,
            peers_only,
        })
    }

    /// Every peer of every WireGuard interface with its health: (interface, public key,
    /// stats).
    pub async fn peer_stats(&self) -> Result<Vec<(String, String, PeerStats)>, ApplyError> {
        self.dataplane.peer_stats().await
    }

    /// What the data plane holds of the agent's objects (workload sides are not looked
    /// up).
    pub async fn show(&self) -> Result<Plane, ApplyError> {
        self.dataplane
            .observe(&Plane::default(), &Namespaces::default())
            .await
    }
}

/// `desired` with each WireGuard interface's peers as `held` has them; `None` when
/// `held` lacks one of its interfaces.
fn with_peers_of(desired: &Plane, held: &Plane) -> Option<Plane> {
    let mut observed = desired.clone();
    for (interface, wireguard) in &mut observed.wireguard {
        wireguard
            .peers
            .clone_from(&held.wireguard.get(interface)?.peers);
    }
    Some(observed)
}

#[cfg(test)]
mod tests;
