//! Converging: (desired data plane, observed data plane) → the ordered operations that take
//! the kernel from one to the other. Pure.
//!
//! Guarantees:
//! * in sync → no operation; each operation changes only what differs;
//! * WireGuard interfaces are never recreated to change them: port, MTU and peers are set
//!   in place (recreating drops every tunnel of the service);
//! * order: what goes away first (links, then their rules and routes, then members'
//!   sources in the nftables table), then the nftables table if it is missing or differs
//!   (before any link is made: the fence stands before the gate opens), then new links,
//!   their configuration and peers, then the new members' sources (each after its
//!   member's address is configured), then rules (each device's reject rule before its
//!   lookup rule, so a device is never without its fence), then forwarding on the links
//!   packets arrive on (each behind its fence and rules), routes last (they need the
//!   links);
//! * forwarding is turned on only where a service needs it (its links, its family),
//!   and not turned off: a link that goes takes its own with it. The exception is the
//!   kernel's: before Linux 6.17 IPv6 forwards only node-wide, so an IPv6 service turns
//!   that on (the kernel shell keeps the node taking router advertisements), and it is
//!   turned off again, after what goes away, once no IPv6 service needs it and only if
//!   the agent turned it on;
//! * only objects the agent owns (its name prefixes, tables, rule priorities and its
//!   nftables table) appear in `observed`, so nothing else is ever touched.
//!
//! [`converge`] is that order, one stage per line.

mod desired;
pub mod firewall;
mod model;
mod op;

pub use desired::{
    DNS_TABLE, DesiredError, GATEWAY_V4, GATEWAY_V6, Lookup, NOT_FOUND, ROUTE_TABLES,
    ResolvedNetns, desired, endpoint_names,
};
pub use firewall::{Firewall, Source};
pub use model::{
    Forwarding, LOCAL_DEVICE, MemberLink, NetnsId, Peer, Plane, Route, Rule, WireGuard,
    WorkloadSide,
};
pub use op::Op;

use std::collections::BTreeSet;

/// The operations that take `observed` to `desired`, in the order of the guarantees above.
pub fn converge(desired: &Plane, observed: &Plane) -> Vec<Op> {
    let gone = links_that_go(desired, observed);
    let mut ops = Vec::new();
    delete_links(&gone, &mut ops);
    remove_rules_and_routes(desired, observed, &gone, &mut ops);
    ipv6_forwarding_node_wide(desired, observed, &mut ops);
    firewall_table(desired, observed, &mut ops);
    wireguard_interfaces(desired, observed, &gone, &mut ops);
    member_veths(desired, observed, &gone, &mut ops);
    add_sources(desired, observed, &mut ops);
    add_rules(desired, observed, &mut ops);
    enable_forwarding(desired, observed, &gone, &mut ops);
    add_routes(desired, observed, &gone, &mut ops);
    ops
}

/// Links that go: not desired, or a member whose workload side is missing or in another
/// namespace (its pod was recreated): that pair is rebuilt.
fn links_that_go<'a>(desired: &Plane, observed: &'a Plane) -> BTreeSet<&'a str> {
    let wireguard = observed
        .wireguard
        .keys()
        .filter(|n| !desired.wireguard.contains_key(*n));
    let members = observed.members.iter().filter_map(|(name, link)| {
        let stale = match (desired.members.get(name), &link.workload) {
            (None, _) | (Some(_), None) => true,
            (Some(want), Some(have)) => {
                want.workload.as_ref().is_none_or(|w| w.netns != have.netns)
            }
        };
        stale.then_some(name)
    });
    wireguard.chain(members).map(String::as_str).collect()
}

/// 1. The links that go.
fn delete_links(gone: &BTreeSet<&str>, ops: &mut Vec<Op>) {
    ops.extend(gone.iter().map(|name| Op::DeleteLink {
        name: (*name).to_owned(),
    }));
}

/// 2. Then what they leave behind: routes of deleted links go with them, but rules stay
///    in the kernel and must go; and every other rule or route not desired.
fn remove_rules_and_routes(
    desired: &Plane,
    observed: &Plane,
    gone: &BTreeSet<&str>,
    ops: &mut Vec<Op>,
) {
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
            .filter(|r| !gone.contains(r.device.as_str()))
            .cloned()
            .map(Op::RemoveRoute),
    );
}

/// 2b. IPv6 forwarding node-wide off, once no IPv6 service needs it (only ever on because
///     the agent turned it on, see [`Plane::ipv6_forwarding_node_wide`]).
fn ipv6_forwarding_node_wide(desired: &Plane, observed: &Plane, ops: &mut Vec<Op>) {
    if observed.ipv6_forwarding_node_wide && desired.forwarding.iter().all(|f| f.ipv4) {
        ops.push(Op::DisableIpv6ForwardingNodeWide);
    }
}

/// 3. The nftables table: deleted when no service wants it; made anew when it is missing or
///    any set, chain or rule differs, keeping the sources that stay; otherwise the
///    sources that go are removed. Before any link is made, so no member or peer ever
///    sends before the table holds.
fn firewall_table(desired: &Plane, observed: &Plane, ops: &mut Vec<Op>) {
    match (&desired.firewall, observed.firewall.as_ref()) {
        (None, None) => {}
        (None, Some(_)) => ops.push(Op::DeleteFirewall),
        (Some(want), have) => {
            let have_sources = have.map(|h| &h.sources);
            let kept = want
                .sources
                .iter()
                .filter(|s| have_sources.is_some_and(|h| h.contains(*s)));
            match have {
                Some(have) if have.parts == want.parts => {
                    let remove: Vec<Source> =
                        have.sources.difference(&want.sources).cloned().collect();
                    if !remove.is_empty() {
                        ops.push(Op::SetFirewallSources {
                            add: Vec::new(),
                            remove,
                        });
                    }
                }
                _ => ops.push(Op::ReplaceFirewall {
                    sources: kept.cloned().collect(),
                }),
            }
        }
    }
}

/// 4. WireGuard interfaces: create what is missing, change the rest in place (port, MTU
///    and state, then peers).
fn wireguard_interfaces(
    desired: &Plane,
    observed: &Plane,
    gone: &BTreeSet<&str>,
    ops: &mut Vec<Op>,
) {
    let empty = WireGuard::default();
    for (name, want) in &desired.wireguard {
        let have = match observed
            .wireguard
            .get(name)
            .filter(|_| !gone.contains(name.as_str()))
        {
            Some(have) => have,
            None => {
                ops.push(Op::CreateWireGuard { name: name.clone() });
                &empty
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
        peers(name, want, have, ops);
    }
}

/// The peer changes of one interface, consecutive (the appliers send them to the device
/// as one transaction): removals, then additions and updates.
fn peers(interface: &str, want: &WireGuard, have: &WireGuard, ops: &mut Vec<Op>) {
    for key in have.peers.keys().filter(|k| !want.peers.contains_key(*k)) {
        ops.push(Op::RemovePeer {
            interface: interface.to_owned(),
            public_key: key.clone(),
        });
    }
    for (key, peer) in &want.peers {
        let held = have.peers.get(key);
        if !peer_in_sync(peer, held) {
            ops.push(Op::SetPeer {
                interface: interface.to_owned(),
                public_key: key.clone(),
                peer: peer.clone(),
                replace_allowed_ips: held
                    .is_some_and(|held| !held.allowed_ips.is_subset(&peer.allowed_ips)),
            });
        }
    }
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

/// 5. Member veths: create what is missing, then configure both sides (the host side
///    before it goes up, so an IPv4 member's veth never has IPv6).
fn member_veths(desired: &Plane, observed: &Plane, gone: &BTreeSet<&str>, ops: &mut Vec<Op>) {
    let empty = MemberLink::default();
    for (host, want) in &desired.members {
        let Some(want_workload) = &want.workload else {
            continue;
        };
        let have = match observed
            .members
            .get(host)
            .filter(|_| !gone.contains(host.as_str()))
        {
            Some(have) => have,
            None => {
                ops.push(Op::CreateMember {
                    host: host.clone(),
                    netns: want_workload.netns,
                    netns_path: want_workload.netns_path.clone(),
                    workload: want_workload.name.clone(),
                });
                &empty
            }
        };
        ops.extend(configure_host(host, want, have));
        if (have.mtu, have.up) != (want.mtu, want.up) {
            ops.push(Op::SetLink {
                name: host.clone(),
                mtu: want.mtu,
                up: want.up,
            });
        }
        let empty_workload = WorkloadSide::default();
        let have_workload = have.workload.as_ref().unwrap_or(&empty_workload);
        ops.extend(configure_workload(host, want_workload, have_workload));
    }
}

/// The host side of a member veth: proxy ARP, IPv6 and its addresses.
fn configure_host(host: &str, want: &MemberLink, have: &MemberLink) -> Option<Op> {
    let in_sync = have.proxy_arp == want.proxy_arp
        && have.ipv6 == want.ipv6
        && have.addresses == want.addresses;
    (!in_sync).then(|| Op::ConfigureHost {
        host: host.to_owned(),
        proxy_arp: want.proxy_arp,
        ipv6: want.ipv6,
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
    })
}

/// The workload side of a member veth, inside its namespace: name, MTU, state, IPv6,
/// addresses and routes.
fn configure_workload(host: &str, want: &WorkloadSide, have: &WorkloadSide) -> Option<Op> {
    let in_sync = have.name == want.name
        && have.mtu == want.mtu
        && have.up == want.up
        && have.ipv6 == want.ipv6
        && have.addresses == want.addresses
        && have.routes == want.routes;
    (!in_sync).then(|| Op::ConfigureWorkload {
        host: host.to_owned(),
        netns: want.netns,
        netns_path: want.netns_path.clone(),
        name: want.name.clone(),
        mtu: want.mtu,
        ipv6: want.ipv6,
        add_addresses: want
            .addresses
            .difference(&have.addresses)
            .copied()
            .collect(),
        remove_addresses: have
            .addresses
            .difference(&want.addresses)
            .copied()
            .collect(),
        add_routes: want.routes.difference(&have.routes).copied().collect(),
        remove_routes: have.routes.difference(&want.routes).copied().collect(),
    })
}

/// 6. Members' sources that are new, once their members are configured: a member's
///    packets are dropped until its address is in place and recorded.
fn add_sources(desired: &Plane, observed: &Plane, ops: &mut Vec<Op>) {
    let Some(want) = &desired.firewall else {
        return;
    };
    let have = observed.firewall.as_ref().map(|f| &f.sources);
    let add: Vec<Source> = want
        .sources
        .iter()
        .filter(|s| !have.is_some_and(|h| h.contains(*s)))
        .cloned()
        .collect();
    if !add.is_empty() {
        ops.push(Op::SetFirewallSources {
            add,
            remove: Vec::new(),
        });
    }
}

/// 7. Rules: every device's reject rule before its lookup rule, so no device is ever
///    without its fence.
fn add_rules(desired: &Plane, observed: &Plane, ops: &mut Vec<Op>) {
    let mut missing: Vec<&Rule> = desired.rules.difference(&observed.rules).collect();
    missing.sort_by_key(|r| matches!(r, Rule::Lookup { .. }));
    ops.extend(missing.into_iter().cloned().map(Op::AddRule));
}

/// 8. Forwarding on the links packets arrive on, once their fences and rules stand. A link
///    just (re)created has none, whatever was observed on the old one.
fn enable_forwarding(desired: &Plane, observed: &Plane, gone: &BTreeSet<&str>, ops: &mut Vec<Op>) {
    ops.extend(
        desired
            .forwarding
            .iter()
            .filter(|f| !observed.forwarding.contains(*f) || gone.contains(f.device.as_str()))
            .cloned()
            .map(Op::EnableForwarding),
    );
}

/// 9. Routes last: they point at the links made above. A route of a link just
///    (re)created is missing even if it was observed on the old link.
fn add_routes(desired: &Plane, observed: &Plane, gone: &BTreeSet<&str>, ops: &mut Vec<Op>) {
    ops.extend(
        desired
            .routes
            .iter()
            .filter(|r| !observed.routes.contains(*r) || gone.contains(r.device.as_str()))
            .cloned()
            .map(Op::AddRoute),
    );
}

#[cfg(test)]
mod tests;
