//! From a NodeState to the data plane it asks for.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use wireway_proto::{
    HOST_VETH_PREFIX, NetnsLocator, NodeState, ROUTE_TABLE_BASE, ServiceState, WIREGUARD_PREFIX,
};

use super::firewall::{Firewall, Source};
use super::model::{
    Forwarding, LOCAL_DEVICE, MemberLink, NetnsId, Peer, Plane, Route, Rule, WireGuard,
    WorkloadSide,
};

/// The routing tables the agent owns: `ROUTE_TABLE_BASE` and the 65535 after it. A
/// NodeState naming another table is refused.
pub const ROUTE_TABLES: std::ops::RangeInclusive<u32> =
    ROUTE_TABLE_BASE..=ROUTE_TABLE_BASE + 0xffff;

/// The IPv4 gateway every member routes its service through. Nobody holds it: the host
/// side of the veth answers ARP for it (proxy ARP), because the service's table routes it
/// elsewhere, so the host is not reachable at it.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
/// The IPv6 gateway: a link-local address on the host side of every member veth (IPv6 has
/// no proxy for whole ranges).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x77, 1);

/// The agent's table that delivers members' DNS queries to the IPv4 gateway to the node
/// ([`Rule::Dns`]): the first of its tables, which is no service's (a service's table is
/// `ROUTE_TABLE_BASE` plus its listen port, never 0). It holds one route:
/// `local 169.254.77.1`.
pub const DNS_TABLE: u32 = ROUTE_TABLE_BASE;

/// Why a member is left out while its namespace is not there (its pod is starting).
pub const NOT_FOUND: &str = "its network namespace was not found (yet)";

/// A part of the NodeState that cannot be applied, with the service it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {service}: {message}")]
pub struct DesiredError {
    /// The service (`namespace/name`).
    pub service: String,
    /// What is wrong.
    pub message: String,
}

/// A workload's network namespace, found (and, by the data plane, opened for the pass).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedNetns {
    /// Where it was found, for messages.
    pub path: String,
    /// Its identity.
    pub id: NetnsId,
}

/// What [`desired`] needs found outside the NodeState.
pub trait Lookup {
    /// A workload's network namespace; an error saying why there is none (its pod is
    /// starting, or the locator is refused).
    fn netns(&self, locator: &NetnsLocator) -> Result<ResolvedNetns, String>;
    /// The address of a peer's endpoint given by host name (`host:port`); `None` when it
    /// does not resolve.
    fn endpoint(&self, host_port: &str) -> Option<SocketAddr>;
}

/// A function that finds namespaces is a [`Lookup`] in which no host name resolves.
impl<F: Fn(&NetnsLocator) -> Result<ResolvedNetns, String>> Lookup for F {
    fn netns(&self, locator: &NetnsLocator) -> Result<ResolvedNetns, String> {
        self(locator)
    }

    fn endpoint(&self, _: &str) -> Option<SocketAddr> {
        None
    }
}

/// Endpoints of `state`'s peers given by host name rather than address: the names a
/// [`Lookup`] must resolve before [`desired`].
pub fn endpoint_names(state: &NodeState) -> BTreeSet<String> {
    state
        .services
        .iter()
        .flat_map(|s| &s.peers)
        .map(|p| p.endpoint.as_str())
        .filter(|e| !e.is_empty() && e.parse::<SocketAddr>().is_err())
        .map(str::to_owned)
        .collect()
}

/// The data plane `state` asks for. `lookup` finds members' network namespaces and peers'
/// endpoints. A member whose namespace cannot be found (its pod is still starting) or is
/// refused is left out and reported; a peer whose endpoint does not resolve is set without
/// one (it can still connect to this node) and reported. A service with a value that does
/// not parse, or that names a link or table that is not the agent's, is left out whole
/// and reported; the others are unaffected. The nftables table is wanted while any
/// service is, with each member's (host veth, address) as a source.
pub fn desired(state: &NodeState, lookup: impl Lookup) -> (Plane, Vec<DesiredError>) {
    let mut plane = Plane::default();
    let mut errors = Vec::new();
    for service in &state.services {
        let error = |message: String| DesiredError {
            service: service.name.clone(),
            message,
        };
        match add_service(&mut plane, service, &lookup) {
            Ok(missing) => errors.extend(missing.into_iter().map(error)),
            Err(message) => errors.push(error(message)),
        }
    }
    if !plane.wireguard.is_empty() {
        let sources = plane
            .members
            .iter()
            .flat_map(|(host, link)| {
                let addresses = link.workload.iter().flat_map(|w| &w.addresses);
                addresses.map(|a| Source {
                    device: host.clone(),
                    address: a.addr(),
                })
            })
            .collect();
        plane.firewall = Some(Firewall::with_sources(sources));
    }
    (plane, errors)
}

/// Whether `name` is a name the kernel takes for a link and the agent can write in a
/// sysctl path or an nftables string: 1 to 15 characters, letters, digits, `-`, `_`, `.`,
/// and not `.` or `..`.
fn is_link_name(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "."
        && name != ".."
}

/// `name` if it is a link name of the agent's (with `prefix`); otherwise why not.
fn owned_name<'a>(what: &str, name: &'a str, prefix: &str) -> Result<&'a str, String> {
    if name.starts_with(prefix) && name.len() > prefix.len() && is_link_name(name) {
        Ok(name)
    } else {
        Err(format!(
            "{what} {name:?} is not a link name of the agent's ({prefix}...)"
        ))
    }
}

fn parse<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{what} {value:?} does not parse"))
}

/// Adds one service; returns what of it is left out, or why the whole service is.
fn add_service(
    plane: &mut Plane,
    service: &ServiceState,
    lookup: &impl Lookup,
) -> Result<Vec<String>, String> {
    let cidr: IpNet = parse("cidr", &service.cidr)?;
    let ipv4 = matches!(cidr, IpNet::V4(_));
    let listen_port = u16::try_from(service.listen_port)
        .map_err(|_| format!("listen port {} is out of range", service.listen_port))?;
    let table = service.route_table;
    if !ROUTE_TABLES.contains(&table) {
        return Err(format!(
            "routing table {table} is not one of the agent's ({}-{})",
            ROUTE_TABLES.start(),
            ROUTE_TABLES.end()
        ));
    }
    let wg = owned_name("interface", &service.interface_name, WIREGUARD_PREFIX)?.to_owned();
    let mut peers = std::collections::BTreeMap::new();
    let mut missing = Vec::new();
    for p in &service.peers {
        let allowed_ips = p
            .allowed_ips
            .iter()
            .map(|a| parse::<IpNet>("allowed IP", a))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let endpoint = match p.endpoint.as_str() {
            "" => None,
            text => {
                let found = text.parse().ok().or_else(|| lookup.endpoint(text));
                if found.is_none() {
                    missing.push(format!(
                        "peer {}: endpoint {text} does not resolve; the peer is set without one and can still connect to this node",
                        p.name
                    ));
                }
                // Written as the kernel reports it, so an address in sync compares equal.
                found.map(|a: SocketAddr| a.to_string())
            }
        };
        let peer = Peer {
            endpoint,
            allowed_ips,
            persistent_keepalive: u16::try_from(p.persistent_keepalive).unwrap_or(u16::MAX),
        };
        peers.insert(p.public_key.clone(), peer);
    }
    let mut members = Vec::new();
    for m in &service.members {
        let address: IpAddr = parse("member address", &m.address)?;
        owned_name("host interface", &m.host_interface_name, HOST_VETH_PREFIX)?;
        if !is_link_name(&m.interface_name) {
            return Err(format!(
                "member {}: interface name {:?} is not a link name",
                m.id, m.interface_name
            ));
        }
        let found = match &m.netns {
            Some(locator) => lookup.netns(locator),
            None => Err(NOT_FOUND.to_owned()),
        };
        match found {
            Ok(netns) => members.push((m, IpNet::from(address), netns)),
            Err(why) => missing.push(format!("member {}: {why}", m.id)),
        }
    }

    plane.wireguard.insert(
        wg.clone(),
        WireGuard {
            listen_port,
            mtu: service.mtu,
            up: true,
            peers,
        },
    );
    let (gateway, host_addresses, family_ipv4) = if ipv4 {
        (IpAddr::V4(GATEWAY_V4), BTreeSet::new(), true)
    } else {
        let link_local = IpNet::new(IpAddr::V6(GATEWAY_V6), 64).map_err(|e| e.to_string())?;
        (IpAddr::V6(GATEWAY_V6), BTreeSet::from([link_local]), false)
    };
    plane.routes.insert(Route {
        table,
        destination: cidr,
        device: wg.clone(),
    });
    if ipv4 {
        // The gateway routes away from the veth, so proxy ARP on the veth answers for it.
        plane.routes.insert(Route {
            table,
            destination: IpNet::from(IpAddr::V4(GATEWAY_V4)),
            device: wg.clone(),
        });
    }
    for iif in std::iter::once(wg.clone()).chain(
        members
            .iter()
            .map(|(m, _, _)| m.host_interface_name.clone()),
    ) {
        plane.rules.insert(Rule::Lookup {
            iif: iif.clone(),
            table,
            ipv4: family_ipv4,
        });
        plane.rules.insert(Rule::Reject {
            iif: iif.clone(),
            ipv4: family_ipv4,
        });
        // Packets arriving here are routed on (by the service's table): forwarding on
        // this link, in the service's family only.
        plane.forwarding.insert(Forwarding {
            device: iif,
            ipv4: family_ipv4,
        });
    }
    let names = service.dns.is_some();
    if names && ipv4 && !members.is_empty() {
        plane.routes.insert(Route {
            table: DNS_TABLE,
            destination: IpNet::from(IpAddr::V4(GATEWAY_V4)),
            device: LOCAL_DEVICE.to_owned(),
        });
    }
    for (m, address, netns) in members {
        // The member reaches its names on the gateway itself, through its own link
        // whatever other routes (a pod's default route) it has: once per workload and
        // family, on the link of its first service with names (the agent answers a
        // workload's every zone on each of its links).
        let to_gateway = (IpNet::from(gateway), gateway);
        let routed = plane.members.values().any(|link| {
            link.workload
                .as_ref()
                .is_some_and(|w| w.netns == netns.id && w.routes.contains(&to_gateway))
        });
        let mut routes = BTreeSet::from([(cidr, gateway)]);
        if names && !routed {
            routes.insert(to_gateway);
        }
        if names && ipv4 {
            for tcp in [false, true] {
                plane.rules.insert(Rule::Dns {
                    iif: m.host_interface_name.clone(),
                    tcp,
                });
            }
        }
        plane.routes.insert(Route {
            table,
            destination: address,
            device: m.host_interface_name.clone(),
        });
        plane.members.insert(
            m.host_interface_name.clone(),
            MemberLink {
                mtu: service.mtu,
                up: true,
                proxy_arp: ipv4,
                ipv6: !ipv4,
                addresses: host_addresses.clone(),
                workload: Some(WorkloadSide {
                    netns: netns.id,
                    netns_path: netns.path,
                    name: m.interface_name.clone(),
                    mtu: service.mtu,
                    up: true,
                    ipv6: !ipv4,
                    addresses: BTreeSet::from([address]),
                    routes,
                }),
            },
        );
    }
    Ok(missing)
}
