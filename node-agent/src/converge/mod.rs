//! Converging: (desired data plane, observed data plane) → the ordered operations that take
//! the kernel from one to the other. Pure.
//!
//! Guarantees:
//! * in sync → no operation; each operation changes only what differs;
//! * WireGuard interfaces are never recreated to change them: port, MTU and peers are set
//!   in place (recreating drops every tunnel of the service);
//! * order: what goes away first (links, then their rules and routes), then new links,
//!   their configuration and peers, then rules (each device's reject rule before its
//!   lookup rule, so a device is never without its fence), routes last (they need the
//!   links);
//! * only objects the agent owns (its name prefixes, tables and rule priorities) appear in
//!   `observed`, so nothing else is ever touched.

mod desired;
mod model;

pub use desired::{
    DesiredError, GATEWAY_V4, GATEWAY_V6, Lookup, ResolvedNetns, desired, endpoint_names,
};
pub use model::{Dataplane, MemberLink, NetnsId, Peer, Route, Rule, WireGuard, WorkloadSide};

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

/// One change to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Delete a link the agent owns (a WireGuard interface, or a member veth pair by its
    /// host side); the kernel drops its routes with it.
    DeleteLink {
        /// Link name.
        name: String,
    },
    /// Remove a policy rule.
    RemoveRule(Rule),
    /// Remove a route.
    RemoveRoute(Route),
    /// Create a WireGuard interface (with the node's private key).
    CreateWireGuard {
        /// Interface name.
        name: String,
    },
    /// Set a WireGuard interface's listen port, in place.
    SetListenPort {
        /// Interface name.
        name: String,
        /// Port.
        port: u16,
    },
    /// Create a member's veth pair: the host side named `host`, the other end moved into
    /// the namespace at `netns_path` and renamed `workload`.
    CreateMember {
        /// Host-side name.
        host: String,
        /// Namespace path.
        netns_path: String,
        /// Name inside the namespace.
        workload: String,
    },
    /// Set MTU and state of a host-side link (WireGuard or veth).
    SetLink {
        /// Link name.
        name: String,
        /// MTU.
        mtu: u32,
        /// Up or down.
        up: bool,
    },
    /// Configure the host side of a member veth: proxy ARP, and addresses to add and remove.
    ConfigureHost {
        /// Host-side name.
        host: String,
        /// Proxy ARP on or off.
        proxy_arp: bool,
        /// Addresses to add.
        add: Vec<IpNet>,
        /// Addresses to remove.
        remove: Vec<IpNet>,
    },
    /// Configure the workload side, inside its namespace.
    ConfigureWorkload {
        /// Host-side name of the pair (for errors and metrics).
        host: String,
        /// Namespace path.
        netns_path: String,
        /// Interface name inside.
        name: String,
        /// MTU.
        mtu: u32,
        /// Addresses to add.
        add_addresses: Vec<IpNet>,
        /// Addresses to remove.
        remove_addresses: Vec<IpNet>,
        /// Routes to add (destination via gateway).
        add_routes: Vec<(IpNet, IpAddr)>,
        /// Routes to remove.
        remove_routes: Vec<(IpNet, IpAddr)>,
    },
    /// Remove a peer from a WireGuard interface.
    RemovePeer {
        /// Interface name.
        interface: String,
        /// The peer's public key.
        public_key: String,
    },
    /// Add a peer, or update it in place.
    SetPeer {
        /// Interface name.
        interface: String,
        /// The peer's public key.
        public_key: String,
        /// What it must be.
        peer: Peer,
    },
    /// Add a policy rule.
    AddRule(Rule),
    /// Add a route.
    AddRoute(Route),
}

/// Whether a peer is as wanted. A peer wanted without an endpoint dials in, and WireGuard
/// then learns its endpoint from its packets: that is not a difference.
fn peer_in_sync(want: &Peer, have: Option<&Peer>) -> bool {
    have.is_some_and(|have| {
        (want.endpoint.is_none() || want.endpoint == have.endpoint)
            && want.allowed_ips == have.allowed_ips
            && want.persistent_keepalive == have.persistent_keepalive
    })
}

/// The operations that take `observed` to `desired`.
pub fn converge(desired: &Dataplane, observed: &Dataplane) -> Vec<Op> {
    let mut ops = Vec::new();

    // 1. Links that go: not desired, or a member whose workload side is missing or in
    //    another namespace (its pod was recreated): that pair is rebuilt.
    let mut deleted: BTreeSet<&str> = BTreeSet::new();
    for name in observed
        .wireguard
        .keys()
        .filter(|n| !desired.wireguard.contains_key(*n))
    {
        deleted.insert(name);
    }
    for (name, link) in &observed.members {
        let stale = match (desired.members.get(name), &link.workload) {
            (None, _) | (Some(_), None) => true,
            (Some(want), Some(have)) => {
                want.workload.as_ref().is_none_or(|w| w.netns != have.netns)
            }
        };
        if stale {
            deleted.insert(name);
        }
    }
    ops.extend(deleted.iter().map(|name| Op::DeleteLink {
        name: (*name).to_owned(),
    }));
    // Routes of deleted links go with them; rules stay in the kernel and must go.
    let present = |device: &str| !deleted.contains(device);
    ops.extend(
        observed
            .rules
            .difference(&desired.rules)
            .cloned()
            .map(Op::RemoveRule),
    );
    ops.extend(
        observed
            .routes
            .difference(&desired.routes)
            .filter(|r| present(&r.device))
            .cloned()
            .map(Op::RemoveRoute),
    );

    // 2. WireGuard interfaces: create what is missing, change the rest in place.
    let empty_wg = WireGuard::default();
    for (name, want) in &desired.wireguard {
        let have = match observed.wireguard.get(name).filter(|_| present(name)) {
            Some(have) => have,
            None => {
                ops.push(Op::CreateWireGuard { name: name.clone() });
                &empty_wg
            }
        };
        if have.listen_port != want.listen_port {
            ops.push(Op::SetListenPort {
                name: name.clone(),
                port: want.listen_port,
            });
        }
        if (have.mtu, have.up) != (want.mtu, want.up) {
            ops.push(Op::SetLink {
                name: name.clone(),
                mtu: want.mtu,
                up: want.up,
            });
        }
        for key in have.peers.keys().filter(|k| !want.peers.contains_key(*k)) {
            ops.push(Op::RemovePeer {
                interface: name.clone(),
                public_key: key.clone(),
            });
        }
        for (key, peer) in &want.peers {
            if !peer_in_sync(peer, have.peers.get(key)) {
                ops.push(Op::SetPeer {
                    interface: name.clone(),
                    public_key: key.clone(),
                    peer: peer.clone(),
                });
            }
        }
    }

    // 3. Member veths: create what is missing, then configure both sides.
    let empty_member = MemberLink::default();
    for (host, want) in &desired.members {
        let Some(want_workload) = &want.workload else {
            continue;
        };
        let have = match observed.members.get(host).filter(|_| present(host)) {
            Some(have) => have,
            None => {
                ops.push(Op::CreateMember {
                    host: host.clone(),
                    netns_path: want_workload.netns_path.clone(),
                    workload: want_workload.name.clone(),
                });
                &empty_member
            }
        };
        if (have.mtu, have.up) != (want.mtu, want.up) {
            ops.push(Op::SetLink {
                name: host.clone(),
                mtu: want.mtu,
                up: want.up,
            });
        }
        if have.proxy_arp != want.proxy_arp || have.addresses != want.addresses {
            ops.push(Op::ConfigureHost {
                host: host.clone(),
                proxy_arp: want.proxy_arp,
                add: want
                    .addresses
                    .difference(&have.addresses)
                    .copied()
                    .collect(),
                remove: have
                    .addresses
                    .difference(&want.addresses)
                    .copied()
                    .collect(),
            });
        }
        let empty_workload = WorkloadSide::default();
        let have_workload = have.workload.as_ref().unwrap_or(&empty_workload);
        let in_sync = have_workload.name == want_workload.name
            && have_workload.mtu == want_workload.mtu
            && have_workload.up == want_workload.up
            && have_workload.addresses == want_workload.addresses
            && have_workload.routes == want_workload.routes;
        if !in_sync {
            ops.push(Op::ConfigureWorkload {
                host: host.clone(),
                netns_path: want_workload.netns_path.clone(),
                name: want_workload.name.clone(),
                mtu: want_workload.mtu,
                add_addresses: want_workload
                    .addresses
                    .difference(&have_workload.addresses)
                    .copied()
                    .collect(),
                remove_addresses: have_workload
                    .addresses
                    .difference(&want_workload.addresses)
                    .copied()
                    .collect(),
                add_routes: want_workload
                    .routes
                    .difference(&have_workload.routes)
                    .copied()
                    .collect(),
                remove_routes: have_workload
                    .routes
                    .difference(&want_workload.routes)
                    .copied()
                    .collect(),
            });
        }
    }

    // 4. Rules: every device's reject rule before its lookup rule.
    let mut missing: Vec<&Rule> = desired.rules.difference(&observed.rules).collect();
    missing.sort_by_key(|r| matches!(r, Rule::Lookup { .. }));
    ops.extend(missing.into_iter().cloned().map(Op::AddRule));

    // 5. Routes last: they point at the links made above. A route of a link just
    //    (re)created is missing even if it was observed on the old link.
    ops.extend(
        desired
            .routes
            .iter()
            .filter(|r| !observed.routes.contains(*r) || !present(&r.device))
            .cloned()
            .map(Op::AddRoute),
    );
    ops
}

#[cfg(test)]
mod tests;
