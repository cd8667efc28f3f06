//! A fake kernel, for tests without root: the agent's objects held in memory ([`Model`])
//! and changed by operations as the kernel changes them, behind the same [`Dataplane`]
//! trait as the real one ([`FakeKernel`]), recording every call and refusing the
//! operations a test tells it to.
//!
//! It is stricter than the kernel where that catches a converger's mistake: changing
//! what is not there, adding what is, or routing to a link not yet made is refused.

use std::collections::BTreeMap;
use std::num::NonZeroI32;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use netlink_packet_core::ErrorMessage;

use super::netlink::NetlinkError;
use super::netns::Namespaces;
use super::nftables::NftError;
use super::wireguard::{PeerChange, PeerStats, WireGuardError};
use super::{ApplyError, Dataplane};
use crate::converge::{
    Firewall, LOCAL_DEVICE, MemberLink, Op, Peer, Plane, WireGuard, WorkloadSide,
};

/// `EEXIST`: what the kernel answers when asked to add what it has.
const EXISTS: i32 = 17;
/// `ENOENT`: what the kernel answers when asked to remove what it does not have.
const NOT_THERE: i32 = 2;
/// `EPERM`: what a refused operation answers.
const REFUSED: i32 = 1;
/// `ENODEV`: what WireGuard answers for an interface that is not there.
const NO_DEVICE: i32 = 19;

/// The kernel's answer to a netlink request it refuses with `errno`.
fn refusal(op: &Op, errno: i32) -> ApplyError {
    let mut message = ErrorMessage::default();
    message.code = NonZeroI32::new(-errno);
    ApplyError::Netlink {
        action: op.to_string(),
        source: NetlinkError::Request(rtnetlink::Error::NetlinkError(message)),
    }
}

/// What `nft` answers when asked to change what is not there.
fn nft_refusal(op: &Op) -> ApplyError {
    ApplyError::Firewall {
        action: op.to_string(),
        source: NftError::Refused(
            "Error: Could not process rule: No such file or directory".into(),
        ),
    }
}

fn missing(op: &Op, link: &str) -> ApplyError {
    ApplyError::Missing {
        action: op.to_string(),
        link: link.to_owned(),
    }
}

/// What a kernel holds of the agent's objects, changed by operations as the kernel
/// changes: deleting a link drops its routes and its forwarding, not its rules; a new
/// veth's workload side is in the namespace the operation names, down and unconfigured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    held: Plane,
}

impl Model {
    /// A kernel holding `plane` (as the kernel reports it: no namespace paths).
    pub fn holding(plane: Plane) -> Self {
        Self { held: plane }
    }

    /// What it holds.
    pub fn held(&self) -> &Plane {
        &self.held
    }

    /// What it holds, as the kernel reports it when asked with `desired`: a workload
    /// side only where `desired` looks for it (in its namespace, by its name).
    pub fn observe(&self, desired: &Plane) -> Plane {
        let wanted: BTreeMap<&String, &WorkloadSide> = desired
            .members
            .iter()
            .filter_map(|(host, m)| Some((host, m.workload.as_ref()?)))
            .collect();
        let mut observed = self.held.clone();
        for (host, link) in &mut observed.members {
            let found = link
                .workload
                .as_ref()
                .zip(wanted.get(host))
                .is_some_and(|(have, want)| have.netns == want.netns && have.name == want.name);
            if !found {
                link.workload = None;
            }
        }
        observed
    }

    /// Applies one operation, or refuses it as the kernel would.
    pub fn apply(&mut self, op: &Op) -> Result<(), ApplyError> {
        let held = &mut self.held;
        match op {
            Op::DeleteLink { name } => {
                let wireguard = held.wireguard.remove(name).is_some();
                if held.members.remove(name).is_none() && !wireguard {
                    return Err(missing(op, name));
                }
                held.routes.retain(|r| &r.device != name);
                held.forwarding.retain(|f| &f.device != name);
            }
            Op::RemoveRule(rule) => {
                if !held.rules.remove(rule) {
                    return Err(refusal(op, NOT_THERE));
                }
            }
            Op::RemoveRoute(route) => {
                if !held.routes.remove(route) {
                    return Err(refusal(op, NOT_THERE));
                }
            }
            Op::CreateWireGuard { name } => {
                if held.wireguard.contains_key(name) || held.members.contains_key(name) {
                    return Err(refusal(op, EXISTS));
                }
                held.wireguard.insert(name.clone(), WireGuard::default());
            }
            Op::SetListenPort { name, port } => {
                let wg = held
                    .wireguard
                    .get_mut(name)
                    .ok_or_else(|| missing(op, name))?;
                wg.listen_port = *port;
            }
            Op::CreateMember {
                host,
                netns,
                workload,
                ..
            } => {
                if held.wireguard.contains_key(host) || held.members.contains_key(host) {
                    return Err(refusal(op, EXISTS));
                }
                let workload = WorkloadSide {
                    netns: *netns,
                    name: workload.clone(),
                    ..WorkloadSide::default()
                };
                held.members.insert(
                    host.clone(),
                    MemberLink {
                        workload: Some(workload),
                        ..MemberLink::default()
                    },
                );
            }
            Op::SetLink { name, mtu, up } => {
                if let Some(wg) = held.wireguard.get_mut(name) {
                    (wg.mtu, wg.up) = (*mtu, *up);
                } else {
                    let link = held
                        .members
                        .get_mut(name)
                        .ok_or_else(|| missing(op, name))?;
                    (link.mtu, link.up) = (*mtu, *up);
                }
            }
            Op::ConfigureHost {
                host,
                proxy_arp,
                ipv6,
                add,
                remove,
            } => {
                let link = held
                    .members
                    .get_mut(host)
                    .ok_or_else(|| missing(op, host))?;
                link.proxy_arp = *proxy_arp;
                link.ipv6 = *ipv6;
                link.addresses.retain(|a| !remove.contains(a));
                link.addresses.extend(add);
            }
            Op::ConfigureWorkload {
                host,
                name,
                mtu,
                ipv6,
                add_addresses,
                remove_addresses,
                add_routes,
                remove_routes,
                ..
            } => {
                let w = held
                    .members
                    .get_mut(host)
                    .and_then(|l| l.workload.as_mut())
                    .ok_or_else(|| missing(op, name))?;
                (w.name, w.mtu, w.up, w.ipv6) = (name.clone(), *mtu, true, *ipv6);
                w.routes.retain(|r| !remove_routes.contains(r));
                w.addresses.retain(|a| !remove_addresses.contains(a));
                w.addresses.extend(add_addresses);
                w.routes.extend(add_routes);
            }
            Op::SetPeer { interface, .. } | Op::RemovePeer { interface, .. } => {
                let change = super::peer_change(op).map(|(_, change)| change);
                self.configure_peers(interface, change.as_slice())
                    .map_err(|source| ApplyError::WireGuard {
                        action: op.to_string(),
                        source,
                    })?
            }
            Op::AddRule(rule) => {
                if !held.rules.insert(rule.clone()) {
                    return Err(refusal(op, EXISTS));
                }
            }
            Op::EnableForwarding(forwarding) => {
                let device = &forwarding.device;
                if !held.wireguard.contains_key(device) && !held.members.contains_key(device) {
                    return Err(missing(op, device));
                }
                held.forwarding.insert(forwarding.clone());
            }
            Op::DisableIpv6ForwardingNodeWide => held.ipv6_forwarding_node_wide = false,
            Op::AddRoute(route) => {
                let device = &route.device;
                let link = held.wireguard.contains_key(device) || held.members.contains_key(device);
                if !link && device != LOCAL_DEVICE {
                    return Err(missing(op, device));
                }
                if !held.routes.insert(route.clone()) {
                    return Err(refusal(op, EXISTS));
                }
            }
            Op::ReplaceFirewall { sources } => {
                held.firewall = Some(Firewall::with_sources(sources.iter().cloned().collect()));
            }
            Op::SetFirewallSources { add, remove } => {
                // One transaction: all of it or nothing, as `nft -f` does.
                let firewall = held.firewall.as_mut().ok_or_else(|| nft_refusal(op))?;
                let mut sources = firewall.sources.clone();
                for source in remove {
                    if !sources.remove(source) {
                        return Err(nft_refusal(op));
                    }
                }
                sources.extend(add.iter().cloned());
                firewall.sources = sources;
            }
            Op::DeleteFirewall => {
                held.firewall.take().ok_or_else(|| nft_refusal(op))?;
            }
        }
        Ok(())
    }

    /// Adds, updates and removes peers of `interface`, all or none: a transaction that
    /// removes a peer the device does not have is refused whole.
    pub fn configure_peers(
        &mut self,
        interface: &str,
        changes: &[PeerChange<'_>],
    ) -> Result<(), WireGuardError> {
        let refused = |errno: i32| WireGuardError::Refused {
            interface: interface.to_owned(),
            errno,
        };
        let device = self
            .held
            .wireguard
            .get_mut(interface)
            .ok_or_else(|| refused(NO_DEVICE))?;
        let mut peers = device.peers.clone();
        for change in changes {
            let key = change.public_key;
            match change.peer {
                Some(peer) => {
                    let mut peer = peer.clone();
                    // Added to what the device holds, as the kernel adds them.
                    if !change.replace_allowed_ips
                        && let Some(held) = peers.get(key)
                    {
                        peer.allowed_ips.extend(held.allowed_ips.iter().copied());
                    }
                    peers.insert(key.to_owned(), peer);
                }
                None => {
                    peers.remove(key).ok_or_else(|| refused(NOT_THERE))?;
                }
            }
        }
        device.peers = peers;
        Ok(())
    }
}

/// A call the agent made on the fake kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`Dataplane::observe`].
    Observe,
    /// [`Dataplane::apply_op`] with this operation.
    Apply(Op),
    /// [`Dataplane::configure_peers`]: one transaction of (public key, peer or `None`).
    ConfigurePeers {
        /// The interface.
        interface: String,
        /// The changes, in order.
        changes: Vec<(String, Option<Peer>)>,
    },
    /// [`Dataplane::peer_stats`].
    PeerStats,
}

/// The fake kernel's state: the model, the calls so far, what it refuses.
#[derive(Debug, Default)]
struct Fake {
    model: Model,
    calls: Vec<Call>,
    refused: Vec<Op>,
    writes: u64,
}

/// A fake kernel: a [`Model`] behind the [`Dataplane`] trait. Clones share it, so a
/// test keeps one to look inside while the agent owns another.
#[derive(Debug, Clone, Default)]
pub struct FakeKernel(Arc<Mutex<Fake>>);

impl FakeKernel {
    /// A fake kernel that holds `plane`.
    pub fn holding(plane: Plane) -> Self {
        let fake = Fake {
            model: Model::holding(plane),
            ..Fake::default()
        };
        Self(Arc::new(Mutex::new(fake)))
    }

    fn lock(&self) -> MutexGuard<'_, Fake> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What it holds now.
    pub fn held(&self) -> Plane {
        self.lock().model.held().clone()
    }

    /// The calls made so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the calls made so far.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Refuses `op` from now on (`EPERM`); a peer change refuses the transaction that
    /// holds it. Nothing of a refused operation is applied.
    pub fn refuse(&self, op: Op) {
        self.lock().refused.push(op);
    }

    /// Refuses nothing any more.
    pub fn accept_all(&self) {
        self.lock().refused.clear();
    }
}

impl Dataplane for FakeKernel {
    fn backend(&self) -> &'static str {
        "fake"
    }

    /// One per operation applied, as netlink counts: WireGuard configuration (listen
    /// ports, peers), forwarding (sysctls) and nftables are not counted.
    fn writes(&self) -> u64 {
        self.lock().writes
    }

    async fn observe(&self, desired: &Plane, _: &Namespaces) -> Result<Plane, ApplyError> {
        let mut fake = self.lock();
        fake.calls.push(Call::Observe);
        Ok(fake.model.observe(desired))
    }

    async fn peer_stats(&self) -> Result<Vec<(String, String, PeerStats)>, ApplyError> {
        let mut fake = self.lock();
        fake.calls.push(Call::PeerStats);
        let interfaces = &fake.model.held().wireguard;
        Ok(interfaces
            .iter()
            .flat_map(|(name, wg)| {
                wg.peers
                    .keys()
                    .map(|key| (name.clone(), key.clone(), PeerStats::default()))
            })
            .collect())
    }

    /// Refuses, as the kernel applier does, an operation in a workload's namespace that
    /// the pass did not open: namespaces are reached through the pass's descriptors only.
    async fn apply_op(&self, op: &Op, namespaces: &Namespaces) -> Result<(), ApplyError> {
        let mut fake = self.lock();
        fake.calls.push(Call::Apply(op.clone()));
        if fake.refused.contains(op) {
            return Err(refusal(op, REFUSED));
        }
        if let Op::CreateMember { netns, .. } | Op::ConfigureWorkload { netns, .. } = op
            && !namespaces.contains(netns)
        {
            return Err(ApplyError::Io {
                action: op.to_string(),
                source: std::io::Error::other("its network namespace was not opened for this pass"),
            });
        }
        fake.model.apply(op)?;
        if !matches!(
            op,
            Op::SetListenPort { .. }
                | Op::SetPeer { .. }
                | Op::RemovePeer { .. }
                | Op::EnableForwarding(_)
                | Op::DisableIpv6ForwardingNodeWide
                | Op::ReplaceFirewall { .. }
                | Op::SetFirewallSources { .. }
                | Op::DeleteFirewall
        ) {
            fake.writes += 1;
        }
        Ok(())
    }

    async fn configure_peers(
        &self,
        interface: &str,
        changes: &[PeerChange<'_>],
    ) -> Result<(), WireGuardError> {
        let mut fake = self.lock();
        fake.calls.push(Call::ConfigurePeers {
            interface: interface.to_owned(),
            changes: changes
                .iter()
                .map(|change| (change.public_key.to_owned(), change.peer.cloned()))
                .collect(),
        });
        let refused = changes.iter().any(|change| {
            fake.refused
                .iter()
                .filter_map(super::peer_change)
                .any(|(i, c)| i == interface && c == *change)
        });
        if refused {
            return Err(WireGuardError::Refused {
                interface: interface.to_owned(),
                errno: REFUSED,
            });
        }
        fake.model.configure_peers(interface, changes)
    }
}
