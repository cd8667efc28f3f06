//! The real kernel of one node: reads back the agent's links, addresses, routes and rules
//! through netlink and its WireGuard devices through the backend, and applies operations
//! to them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use ipnet::IpNet;
use wireway_proto::{HOST_VETH_PREFIX, ROUTE_TABLE_BASE, WIREGUARD_PREFIX};

use super::netlink::{Link, Netlink, NetlinkError};
use super::wireguard::{Backend, PeerChange, PeerStats, WireGuardError};
use super::{ApplyError, Dataplane};
use crate::converge::{GATEWAY_V6, MemberLink, Op, Plane, Route, Rule, WireGuard, WorkloadSide};

/// Priority of the rules `iif <dev> lookup <table>`.
pub const RULE_PRIORITY_LOOKUP: u32 = 22359;
/// Priority of the rules `iif <dev> unreachable`, right after the lookups.
pub const RULE_PRIORITY_REJECT: u32 = 22360;
/// The main routing table: inside a workload's namespace, where its route to the service
/// goes (the workload's own table, as `ip route` shows it).
pub const MAIN_TABLE: u32 = 254;
/// Prefix of the temporary name a member veth's workload end has between its creation
/// beside the host end and its move into the workload's namespace, where it is renamed.
/// Never observed: if the move fails, the host end is observed without a workload side,
/// and deleting it deletes the pair.
pub const TEMPORARY_VETH_PREFIX: &str = "wwp";

/// The kernel of one node (the network namespace the agent was started in).
#[derive(Debug)]
pub struct Kernel {
    netlink: Netlink,
    wireguard: Backend,
    private_key: String,
    /// Connections into workload namespaces, for one pass (cleared by `observe`).
    namespaces: tokio::sync::Mutex<BTreeMap<String, Netlink>>,
}

fn sysctl_path(ipv4: bool, device: &str, key: &str) -> String {
    let family = if ipv4 { "ipv4" } else { "ipv6" };
    format!("/proc/sys/net/{family}/conf/{device}/{key}")
}

impl Kernel {
    /// The kernel of the calling thread's network namespace.
    pub fn new(netlink: Netlink, wireguard: Backend, private_key: String) -> Self {
        Self {
            netlink,
            wireguard,
            private_key,
            namespaces: tokio::sync::Mutex::default(),
        }
    }

    /// MTU of the link that holds `address` (the underlay's), if one does.
    pub async fn mtu_of(&self, address: std::net::IpAddr) -> Option<u32> {
        for link in self.netlink.links().await.ok()? {
            let addresses = self.netlink.addresses(link.index).await.ok()?;
            if addresses.iter().any(|a| a.addr() == address) {
                return Some(link.mtu);
            }
        }
        None
    }

    /// The workload side of `host`, if it is where `want` says: in that namespace, named
    /// as desired, and the peer of `host`.
    async fn observe_workload(&self, host: &Link, want: &WorkloadSide) -> Option<WorkloadSide> {
        let inside = self.netlink_in(&want.netns_path).await.ok()?;
        let link = inside
            .link(&want.name)
            .await
            .ok()
            .flatten()
            .filter(|l| l.peer_index == Some(host.index))?;
        let addresses = inside.addresses(link.index).await.ok()?;
        let routes = inside
            .routes()
            .await
            .ok()?
            .into_iter()
            .filter(|r| r.oif == Some(link.index) && r.table == MAIN_TABLE)
            .filter_map(|r| Some((r.destination, r.gateway?)))
            .collect();
        Some(WorkloadSide {
            netns: want.netns,
            netns_path: String::new(),
            name: link.name.clone(),
            mtu: link.mtu,
            up: link.up,
            addresses: addresses
                .into_iter()
                .filter(|a| !is_kernel_link_local(a))
                .collect(),
            routes,
        })
    }

    async fn index_of(&self, name: &str, action: &str) -> Result<u32, ApplyError> {
        link_named(&self.netlink, name, action)
            .await
            .map(|l| l.index)
    }

    /// A netlink connection in a workload's namespace, opened once per pass: a namespace
    /// path can be reused by a new namespace between passes (a recreated pod), and a
    /// socket stays in the namespace it was opened in.
    async fn netlink_in(&self, path: &str) -> Result<Netlink, NetlinkError> {
        let mut open = self.namespaces.lock().await;
        if let Some(netlink) = open.get(path) {
            return Ok(netlink.clone());
        }
        let netlink = self.netlink.connect_in(Path::new(path)).await?;
        open.insert(path.to_owned(), netlink.clone());
        Ok(netlink)
    }
}

impl Dataplane for Kernel {
    fn backend(&self) -> &'static str {
        self.wireguard.name()
    }

    fn writes(&self) -> u64 {
        self.netlink.writes()
    }

    /// Turns on forwarding, which every service needs (packets go from a veth to
    /// WireGuard and back).
    fn prepare(&self) -> Result<(), ApplyError> {
        for path in [
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ] {
            let io = |source| ApplyError::Io {
                action: format!("enable forwarding ({path})"),
                source,
            };
            if std::fs::read_to_string(path).map_err(io)?.trim() != "1" {
                std::fs::write(path, "1").map_err(io)?;
            }
        }
        Ok(())
    }

    async fn peer_stats(&self) -> Result<Vec<(String, String, PeerStats)>, ApplyError> {
        let links = self
            .netlink
            .links()
            .await
            .map_err(|source| ApplyError::Netlink {
                action: "read the kernel's links".into(),
                source,
            })?;
        let mut peers = Vec::new();
        for link in links
            .iter()
            .filter(|l| l.name.starts_with(WIREGUARD_PREFIX))
        {
            let Some(device) = self.wireguard.get(&link.name).await else {
                continue;
            };
            for (key, stats) in device.stats {
                peers.push((link.name.clone(), key, stats));
            }
        }
        Ok(peers)
    }

    async fn observe(&self, desired: &Plane) -> Result<Plane, ApplyError> {
        self.namespaces.lock().await.clear();
        let read = |source| ApplyError::Netlink {
            action: "read the kernel's state".into(),
            source,
        };
        let links = self.netlink.links().await.map_err(read)?;
        let names: BTreeMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
        let mut plane = Plane::default();
        for link in &links {
            if link.name.starts_with(WIREGUARD_PREFIX) {
                let device = self.wireguard.get(&link.name).await.unwrap_or_default();
                plane.wireguard.insert(
                    link.name.clone(),
                    WireGuard {
                        listen_port: device.listen_port,
                        mtu: link.mtu,
                        up: link.up,
                        peers: device.peers,
                    },
                );
            } else if link.name.starts_with(HOST_VETH_PREFIX) {
                let ipv4_proxy =
                    std::fs::read_to_string(sysctl_path(true, &link.name, "proxy_arp"))
                        .map(|v| v.trim() == "1")
                        .unwrap_or(false);
                let addresses = self.netlink.addresses(link.index).await.map_err(read)?;
                let addresses = addresses
                    .into_iter()
                    .filter(|a| !is_kernel_link_local(a))
                    .collect();
                let workload = match desired
                    .members
                    .get(&link.name)
                    .and_then(|m| m.workload.as_ref())
                {
                    Some(want) => self.observe_workload(link, want).await,
                    None => None,
                };
                plane.members.insert(
                    link.name.clone(),
                    MemberLink {
                        mtu: link.mtu,
                        up: link.up,
                        proxy_arp: ipv4_proxy,
                        addresses,
                        workload,
                    },
                );
            }
        }
        for route in self.netlink.routes().await.map_err(read)? {
            let owned = (ROUTE_TABLE_BASE..=ROUTE_TABLE_BASE + 0xffff).contains(&route.table);
            if let (true, Some(device)) = (owned, route.oif.and_then(|i| names.get(&i))) {
                plane.routes.insert(Route {
                    table: route.table,
                    destination: route.destination,
                    device: (*device).to_owned(),
                });
            }
        }
        for rule in self.netlink.rules().await.map_err(read)? {
            let Some(iif) = rule.iif else { continue };
            match rule.priority {
                RULE_PRIORITY_LOOKUP if !rule.unreachable => {
                    plane.rules.insert(Rule::Lookup {
                        iif,
                        table: rule.table,
                        ipv4: rule.ipv4,
                    });
                }
                RULE_PRIORITY_REJECT if rule.unreachable => {
                    plane.rules.insert(Rule::Reject {
                        iif,
                        ipv4: rule.ipv4,
                    });
                }
                _ => {}
            }
        }
        Ok(plane)
    }

    async fn apply_op(&self, op: &Op) -> Result<(), ApplyError> {
        let action = op.to_string();
        let nl = |source| ApplyError::Netlink {
            action: action.clone(),
            source,
        };
        let wg = |source| ApplyError::WireGuard {
            action: action.clone(),
            source,
        };
        match op {
            Op::DeleteLink { name } if name.starts_with(WIREGUARD_PREFIX) => {
                match &self.wireguard {
                    Backend::Userspace(u) => u.delete(name).map_err(wg),
                    Backend::Kernel(_) => {
                        let index = self.index_of(name, &action).await?;
                        self.netlink.delete_link(index).await.map_err(nl)
                    }
                }
            }
            Op::DeleteLink { name } => {
                let index = self.index_of(name, &action).await?;
                self.netlink.delete_link(index).await.map_err(nl)
            }
            Op::RemoveRule(rule) => {
                let (ipv4, priority, iif, table) = rule_parts(rule);
                self.netlink
                    .remove_rule(ipv4, priority, iif, table)
                    .await
                    .map_err(nl)
            }
            Op::RemoveRoute(route) => {
                let index = self.index_of(&route.device, &action).await?;
                self.netlink
                    .remove_route(route.table, route.destination, index, None)
                    .await
                    .map_err(nl)
            }
            Op::CreateWireGuard { name } => match &self.wireguard {
                Backend::Userspace(u) => u.create(name, &self.private_key).map_err(wg),
                Backend::Kernel(k) => {
                    self.netlink.create_wireguard(name).await.map_err(nl)?;
                    k.set_private_key(name, &self.private_key).await.map_err(wg)
                }
            },
            Op::SetListenPort { name, port } => self
                .wireguard
                .set_listen_port(name, *port)
                .await
                .map_err(wg),
            Op::SetPeer {
                interface,
                public_key,
                peer,
            } => self
                .wireguard
                .configure_peers(interface, &[(public_key, Some(peer))])
                .await
                .map_err(wg),
            Op::RemovePeer {
                interface,
                public_key,
            } => self
                .wireguard
                .configure_peers(interface, &[(public_key, None)])
                .await
                .map_err(wg),
            Op::SetLink { name, mtu, up } => {
                let index = self.index_of(name, &action).await?;
                self.netlink
                    .set_link(index, None, *mtu, *up)
                    .await
                    .map_err(nl)
            }
            Op::CreateMember {
                host,
                netns_path,
                workload,
            } => {
                // The peer gets a temporary name of ours, then moves and takes its name
                // inside the workload's namespace.
                let temporary =
                    format!("{TEMPORARY_VETH_PREFIX}{}", &host[HOST_VETH_PREFIX.len()..]);
                self.netlink
                    .create_veth(host, &temporary)
                    .await
                    .map_err(nl)?;
                let peer = self.index_of(&temporary, &action).await?;
                let netns = File::open(netns_path).map_err(|source| ApplyError::Io {
                    action: action.clone(),
                    source,
                })?;
                self.netlink.move_to(peer, &netns).await.map_err(nl)?;
                let inside = self.netlink_in(netns_path).await.map_err(nl)?;
                let moved = link_named(&inside, &temporary, &action).await?;
                inside
                    .set_link(moved.index, Some(workload), moved.mtu, false)
                    .await
                    .map_err(nl)
            }
            Op::ConfigureHost {
                host,
                proxy_arp,
                add,
                remove,
            } => {
                let path = sysctl_path(true, host, "proxy_arp");
                std::fs::write(&path, if *proxy_arp { "1" } else { "0" }).map_err(|source| {
                    ApplyError::Io {
                        action: action.clone(),
                        source,
                    }
                })?;
                let index = self.index_of(host, &action).await?;
                for net in remove {
                    self.netlink.remove_address(index, *net).await.map_err(nl)?;
                }
                for net in add {
                    self.netlink.add_address(index, *net).await.map_err(nl)?;
                }
                Ok(())
            }
            Op::ConfigureWorkload {
                netns_path,
                name,
                mtu,
                add_addresses,
                remove_addresses,
                add_routes,
                remove_routes,
                ..
            } => {
                let inside = self.netlink_in(netns_path).await.map_err(nl)?;
                let link = link_named(&inside, name, &action).await?;
                if link.mtu != *mtu || !link.up {
                    inside
                        .set_link(link.index, None, *mtu, true)
                        .await
                        .map_err(nl)?;
                }
                for (destination, gateway) in remove_routes {
                    inside
                        .remove_route(MAIN_TABLE, *destination, link.index, Some(*gateway))
                        .await
                        .map_err(nl)?;
                }
                for net in remove_addresses {
                    inside.remove_address(link.index, *net).await.map_err(nl)?;
                }
                for net in add_addresses {
                    inside.add_address(link.index, *net).await.map_err(nl)?;
                }
                for (destination, gateway) in add_routes {
                    inside
                        .add_route(MAIN_TABLE, *destination, link.index, Some(*gateway))
                        .await
                        .map_err(nl)?;
                }
                Ok(())
            }
            Op::AddRule(rule) => {
                let (ipv4, priority, iif, table) = rule_parts(rule);
                self.netlink
                    .add_rule(ipv4, priority, iif, table)
                    .await
                    .map_err(nl)
            }
            Op::AddRoute(route) => {
                let index = self.index_of(&route.device, &action).await?;
                self.netlink
                    .add_route(route.table, route.destination, index, None)
                    .await
                    .map_err(nl)
            }
        }
    }

    async fn configure_peers(
        &self,
        interface: &str,
        changes: &[PeerChange<'_>],
    ) -> Result<(), WireGuardError> {
        self.wireguard.configure_peers(interface, changes).await
    }
}

/// The link called `name` in the namespace of `netlink`.
async fn link_named(netlink: &Netlink, name: &str, action: &str) -> Result<Link, ApplyError> {
    match netlink.link(name).await {
        Ok(Some(link)) => Ok(link),
        Ok(None) => Err(ApplyError::Missing {
            action: action.to_owned(),
            link: name.to_owned(),
        }),
        Err(source) => Err(ApplyError::Netlink {
            action: action.to_owned(),
            source,
        }),
    }
}

/// Link-local addresses the kernel puts on IPv6 links by itself (fe80::/64 from the MAC)
/// are not the agent's; the agent's gateway address is the one it set.
fn is_kernel_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V6(v6) => v6.addr().segments()[0] == 0xfe80 && v6.addr() != GATEWAY_V6,
        IpNet::V4(_) => false,
    }
}

fn rule_parts(rule: &Rule) -> (bool, u32, &str, Option<u32>) {
    match rule {
        Rule::Lookup { iif, table, ipv4 } => {
            (*ipv4, RULE_PRIORITY_LOOKUP, iif.as_str(), Some(*table))
        }
        Rule::Reject { iif, ipv4 } => (*ipv4, RULE_PRIORITY_REJECT, iif.as_str(), None),
    }
}
