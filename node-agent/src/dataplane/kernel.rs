//! The real kernel of one node: reads back the agent's links, addresses, routes and rules
//! through netlink, its WireGuard devices through the backend and its nftables table
//! through `nft`, and applies operations to them.
//!
//! Guarantees:
//! * only the agent's own objects are read back, so only they can be changed: links named
//!   `ww-*` and `wwv*`, routes in the agent's tables through its links (and the `local`
//!   route of its DNS table), rules at its priorities whose input interface is one of its
//!   links, the table `inet wireway`;
//! * in a workload's namespace the agent touches one interface: the peer of its own
//!   host-side veth, checked both ways (the host side names the peer's index and
//!   namespace, and the namespace is the one the pass opened), and only under the name
//!   the NodeState gives it. An interface of that name that is not the peer (the pod's
//!   `eth0`, a dummy) is never touched: creating the member is refused instead;
//! * a workload's namespace is reached only through the descriptor the pass opened
//!   ([`Namespaces`]), never by its path.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use ipnet::IpNet;
use rtnetlink::packet_route::IpProtocol;
use wireway_proto::{HOST_VETH_PREFIX, WIREGUARD_PREFIX};
use wireway_runtime::files;

use super::netlink::{Link, Netlink, NetlinkError, RuleSpec, on_thread_in};
use super::netns::Namespaces;
use super::nftables;
use super::wireguard::{Backend, PeerChange, PeerStats, PrivateKey, WireGuardError};
use super::{ApplyError, Dataplane};
use crate::converge::firewall;
use crate::converge::{
    DNS_TABLE, Forwarding, GATEWAY_V6, LOCAL_DEVICE, MemberLink, NetnsId, Op, Plane, ROUTE_TABLES,
    Route, Rule, WireGuard, WorkloadSide,
};

/// Priority of the rules `iif <dev> ipproto <udp|tcp> dport 53 lookup <DNS_TABLE>`, right
/// before the lookups.
pub const RULE_PRIORITY_DNS: u32 = 22358;
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
    private_key: PrivateKey,
    /// A file whose presence records that the agent turned IPv6 forwarding on node-wide
    /// (in its state directory: it outlives a restart, so the agent turns off what it
    /// turned on, and never what someone else did).
    ipv6_forwarding_turned_on: PathBuf,
    /// Connections into workload namespaces, for one pass (cleared by `observe`).
    namespaces: tokio::sync::Mutex<BTreeMap<NetnsId, Netlink>>,
}

/// The sysctl `key` of `device` (a name the converger checked: no `/`, not `..`).
fn sysctl_path(ipv4: bool, device: &str, key: &str) -> String {
    let family = if ipv4 { "ipv4" } else { "ipv6" };
    format!("/proc/sys/net/{family}/conf/{device}/{key}")
}

/// The delay before `device` answers ARP as a proxy (in 1/100 s; up to 0.8 s by
/// default, randomised): the agent's veths answer at once, or a member's first packet to
/// its gateway (and its first DNS query) waits for it.
fn proxy_delay_path(device: &str) -> String {
    format!("/proc/sys/net/ipv4/neigh/{device}/proxy_delay")
}

/// The sysctl that must read 1 for packets arriving on a link to be forwarded, in the
/// calling thread's namespace. IPv4: the link's own `forwarding` (the kernel checks the
/// input link's; `net.ipv4.ip_forward` would turn on every link). IPv6: the link's
/// `force_forwarding` (Linux 6.17+), which forwards regardless of `conf/all`. `None` on
/// older kernels, where only [`IPV6_FORWARDING_NODE_WIDE`] forwards IPv6.
fn forwarding_sysctl(forwarding: &Forwarding) -> Option<String> {
    let Forwarding { device, ipv4 } = forwarding;
    if *ipv4 {
        return Some(sysctl_path(true, device, "forwarding"));
    }
    let force = sysctl_path(false, device, "force_forwarding");
    std::path::Path::new(&force).exists().then_some(force)
}

/// IPv6 forwarding for every link of the calling thread's namespace: it makes every
/// interface a router, and a router takes no router advertisements where `accept_ra` is 1.
const IPV6_FORWARDING_NODE_WIDE: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Whether a sysctl reads 1.
fn reads_one(path: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1")
}

/// Every interface of the calling thread's namespace that takes router advertisements
/// (`accept_ra` 1: as a host only), and the default for new ones, takes them as a router
/// too (2): a SLAAC node keeps its addresses and default route when IPv6 forwarding goes
/// on node-wide. 2 means the same as 1 once forwarding is off again, so it stays.
fn keep_taking_router_advertisements() -> std::io::Result<()> {
    for entry in std::fs::read_dir("/proc/sys/net/ipv6/conf")? {
        let entry = entry?;
        let path = entry.path().join("accept_ra");
        if entry.file_name() != "all" && reads_one(&path.to_string_lossy()) {
            std::fs::write(&path, "2")?;
        }
    }
    Ok(())
}

/// Turns IPv6 on or off on `device` in the calling thread's namespace. Without IPv6 in
/// the kernel there is nothing to turn off.
fn set_ipv6(device: &str, on: bool) -> std::io::Result<()> {
    let path = sysctl_path(false, device, "disable_ipv6");
    match std::fs::write(&path, if on { "0" } else { "1" }) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !on => Ok(()),
        other => other,
    }
}

impl Kernel {
    /// The kernel of the calling thread's network namespace; `ipv6_forwarding_turned_on`
    /// is where the agent records that it turned IPv6 forwarding on node-wide.
    pub fn new(
        netlink: Netlink,
        wireguard: Backend,
        private_key: String,
        ipv6_forwarding_turned_on: PathBuf,
    ) -> Self {
        Self {
            netlink,
            wireguard,
            private_key: PrivateKey::new(private_key),
            ipv6_forwarding_turned_on,
            namespaces: tokio::sync::Mutex::default(),
        }
    }

    /// IPv6 forwarding on for every link (kernels before Linux 6.17), unless it is already
    /// (by the agent, or by someone else: then it stays theirs). Recorded first, so a
    /// crash after the write still leaves the agent knowing it turned it on; the node
    /// keeps taking router advertisements.
    fn forward_ipv6_node_wide(&self) -> std::io::Result<()> {
        if reads_one(IPV6_FORWARDING_NODE_WIDE) {
            return Ok(());
        }
        files::write_private(&self.ipv6_forwarding_turned_on, b"")?;
        keep_taking_router_advertisements()?;
        std::fs::write(IPV6_FORWARDING_NODE_WIDE, "1")
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

    /// The peer of the host-side veth `host` in the namespace `netns` (open as `fd`), with
    /// a connection there; `None` when the peer is not there. Checked both ways: `host`
    /// names the peer's index and namespace id, that id is the one this namespace gives
    /// `fd`'s namespace, and the link at that index there names `host` as its peer.
    async fn peer_of(
        &self,
        host: &Link,
        netns: NetnsId,
        fd: &OwnedFd,
    ) -> Result<Option<(Netlink, Link)>, NetlinkError> {
        let (Some(index), Some(nsid)) = (host.peer_index, host.peer_netnsid) else {
            return Ok(None);
        };
        if self.netlink.nsid_of(fd).await? != Some(nsid) {
            return Ok(None);
        }
        let inside = self.netlink_in(netns, fd).await?;
        let peer = inside.link_at(index).await?;
        Ok(peer
            .filter(|l| l.peer_index == Some(host.index))
            .map(|l| (inside, l)))
    }

    /// The workload side of `host`, if it is where `want` says: in that namespace, named
    /// as desired, and the peer of `host`.
    async fn observe_workload(
        &self,
        host: &Link,
        want: &WorkloadSide,
        namespaces: &Namespaces,
    ) -> Option<WorkloadSide> {
        let fd = namespaces.get(&want.netns)?;
        let (inside, link) = self.peer_of(host, want.netns, fd).await.ok()??;
        if link.name != want.name {
            return None;
        }
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
            ipv6: link.ipv6,
            addresses: addresses
                .into_iter()
                .filter(|a| !is_kernel_link_local(a))
                .collect(),
            routes,
        })
    }

    /// What [`Dataplane::observe`] reads through netlink, the devices and sysctls: all
    /// but the nftables table.
    async fn observe_links(
        &self,
        desired: &Plane,
        namespaces: &Namespaces,
    ) -> Result<Plane, ApplyError> {
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
                let reads = |path: String, value: &str| {
                    std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value)
                };
                let ipv4_proxy = reads(sysctl_path(true, &link.name, "proxy_arp"), "1")
                    && reads(proxy_delay_path(&link.name), "0");
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
                    Some(want) => self.observe_workload(link, want, namespaces).await,
                    None => None,
                };
                plane.members.insert(
                    link.name.clone(),
                    MemberLink {
                        mtu: link.mtu,
                        up: link.up,
                        proxy_arp: ipv4_proxy,
                        ipv6: link.ipv6,
                        addresses,
                        workload,
                    },
                );
            }
        }
        for route in self.netlink.routes().await.map_err(read)? {
            let owned = ROUTE_TABLES.contains(&route.table);
            let device = match route.oif.and_then(|i| names.get(&i)) {
                // Only the DNS table holds a local route of the agent's.
                _ if route.local => (route.table == DNS_TABLE).then_some(LOCAL_DEVICE),
                Some(device) => Some(*device),
                None => None,
            };
            if let (true, Some(device)) = (owned, device) {
                plane.routes.insert(Route {
                    table: route.table,
                    destination: route.destination,
                    device: device.to_owned(),
                });
            }
        }
        for rule in self.netlink.rules().await.map_err(read)? {
            // A rule at the agent's priority for someone else's interface is not the
            // agent's.
            let Some(iif) = rule.iif.filter(|i| is_owned_link(i)) else {
                continue;
            };
            match (rule.priority, rule.port) {
                (RULE_PRIORITY_DNS, Some((protocol, 53)))
                    if rule.ipv4 && !rule.unreachable && rule.table == DNS_TABLE =>
                {
                    let tcp = match protocol {
                        IpProtocol::Tcp => true,
                        IpProtocol::Udp => false,
                        _ => continue,
                    };
                    plane.rules.insert(Rule::Dns { iif, tcp });
                }
                (_, Some(_)) => {}
                (RULE_PRIORITY_LOOKUP, None)
                    if !rule.unreachable && ROUTE_TABLES.contains(&rule.table) =>
                {
                    plane.rules.insert(Rule::Lookup {
                        iif,
                        table: rule.table,
                        ipv4: rule.ipv4,
                    });
                }
                (RULE_PRIORITY_REJECT, None) if rule.unreachable => {
                    plane.rules.insert(Rule::Reject {
                        iif,
                        ipv4: rule.ipv4,
                    });
                }
                _ => {}
            }
        }
        // Forwarding is read where it is wanted, on the links that are there.
        plane.forwarding = desired
            .forwarding
            .iter()
            .filter(|f| names.values().any(|n| *n == f.device))
            .filter(|f| {
                reads_one(&forwarding_sysctl(f).unwrap_or(IPV6_FORWARDING_NODE_WIDE.into()))
            })
            .cloned()
            .collect();
        plane.ipv6_forwarding_node_wide =
            self.ipv6_forwarding_turned_on.exists() && reads_one(IPV6_FORWARDING_NODE_WIDE);
        Ok(plane)
    }

    async fn index_of(&self, name: &str, action: &str) -> Result<u32, ApplyError> {
        link_named(&self.netlink, name, action)
            .await
            .map(|l| l.index)
    }

    /// A netlink connection in a workload's namespace (open as `fd`), made once per pass:
    /// a socket stays in the namespace it was opened in.
    async fn netlink_in(&self, netns: NetnsId, fd: &OwnedFd) -> Result<Netlink, NetlinkError> {
        let mut open = self.namespaces.lock().await;
        if let Some(netlink) = open.get(&netns) {
            return Ok(netlink.clone());
        }
        let netlink = self.netlink.connect_in(fd).await?;
        open.insert(netns, netlink.clone());
        Ok(netlink)
    }
}

/// The namespace `netns` as the pass opened it.
fn opened<'a>(
    namespaces: &'a Namespaces,
    netns: &NetnsId,
    action: &str,
) -> Result<&'a OwnedFd, ApplyError> {
    namespaces.get(netns).ok_or_else(|| ApplyError::Io {
        action: action.to_owned(),
        source: std::io::Error::other("its network namespace was not opened for this pass"),
    })
}

impl Dataplane for Kernel {
    fn backend(&self) -> &'static str {
        self.wireguard.name()
    }

    fn writes(&self) -> u64 {
        self.netlink.writes()
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

    async fn observe(&self, desired: &Plane, namespaces: &Namespaces) -> Result<Plane, ApplyError> {
        self.namespaces.lock().await.clear();
        // `nft` lists the table in a process of its own, while the rest is read.
        let (firewall, plane) =
            tokio::join!(nftables::list(), self.observe_links(desired, namespaces));
        let mut plane = plane?;
        // A table that cannot be listed is taken as missing: replacing it then says why.
        plane.firewall = firewall.ok().flatten();
        Ok(plane)
    }

    async fn apply_op(&self, op: &Op, namespaces: &Namespaces) -> Result<(), ApplyError> {
        let action = op.to_string();
        let nl = |source| ApplyError::Netlink {
            action: action.clone(),
            source,
        };
        let wg = |source| ApplyError::WireGuard {
            action: action.clone(),
            source,
        };
        let sys = |source| ApplyError::Io {
            action: action.clone(),
            source,
        };
        let nft = |source| ApplyError::Firewall {
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
            Op::RemoveRule(rule) => self.netlink.remove_rule(spec(rule)).await.map_err(nl),
            Op::RemoveRoute(route) => {
                let index = self.index_of(&route.device, &action).await?;
                self.netlink
                    .remove_route(route.table, route.destination, index, None)
                    .await
                    .map_err(nl)
            }
            Op::CreateWireGuard { name } => match &self.wireguard {
                Backend::Userspace(u) => u.create(name, self.private_key.expose()).map_err(wg),
                Backend::Kernel(k) => {
                    self.netlink.create_wireguard(name).await.map_err(nl)?;
                    k.set_private_key(name, self.private_key.expose())
                        .await
                        .map_err(wg)
                }
            },
            Op::SetListenPort { name, port } => self
                .wireguard
                .set_listen_port(name, *port)
                .await
                .map_err(wg),
            Op::SetPeer { interface, .. } | Op::RemovePeer { interface, .. } => {
                let change = super::peer_change(op).map(|(_, change)| change);
                self.wireguard
                    .configure_peers(interface, change.as_slice())
                    .await
                    .map_err(wg)
            }
            Op::SetLink { name, mtu, up } => {
                let index = self.index_of(name, &action).await?;
                self.netlink
                    .set_link(index, None, *mtu, *up)
                    .await
                    .map_err(nl)
            }
            Op::CreateMember {
                host,
                netns,
                workload,
                ..
            } => {
                let fd = opened(namespaces, netns, &action)?;
                let inside = self.netlink_in(*netns, fd).await.map_err(nl)?;
                // The name is someone else's interface (the pod's eth0, say): leave it,
                // and make nothing.
                if inside.link(workload).await.map_err(nl)?.is_some() {
                    return Err(ApplyError::Foreign {
                        action,
                        link: workload.clone(),
                    });
                }
                // The peer gets a temporary name of ours, then moves and takes its name
                // inside the workload's namespace.
                let temporary =
                    format!("{TEMPORARY_VETH_PREFIX}{}", &host[HOST_VETH_PREFIX.len()..]);
                self.netlink
                    .create_veth(host, &temporary)
                    .await
                    .map_err(nl)?;
                let peer = self.index_of(&temporary, &action).await?;
                self.netlink.move_to(peer, fd).await.map_err(nl)?;
                let host_link = link_named(&self.netlink, host, &action).await?;
                let Some((inside, moved)) =
                    self.peer_of(&host_link, *netns, fd).await.map_err(nl)?
                else {
                    return Err(ApplyError::Missing {
                        action,
                        link: temporary,
                    });
                };
                inside
                    .set_link(moved.index, Some(workload), moved.mtu, false)
                    .await
                    .map_err(nl)
            }
            Op::ConfigureHost {
                host,
                proxy_arp,
                ipv6,
                add,
                remove,
            } => {
                let path = sysctl_path(true, host, "proxy_arp");
                std::fs::write(&path, if *proxy_arp { "1" } else { "0" }).map_err(sys)?;
                if *proxy_arp {
                    std::fs::write(proxy_delay_path(host), "0").map_err(sys)?;
                }
                let link = link_named(&self.netlink, host, &action).await?;
                if link.ipv6 != *ipv6 {
                    set_ipv6(host, *ipv6).map_err(sys)?;
                }
                let index = link.index;
                for net in remove {
                    self.netlink.remove_address(index, *net).await.map_err(nl)?;
                }
                for net in add {
                    self.netlink.add_address(index, *net).await.map_err(nl)?;
                }
                Ok(())
            }
            Op::ConfigureWorkload {
                host,
                netns,
                name,
                mtu,
                ipv6,
                add_addresses,
                remove_addresses,
                add_routes,
                remove_routes,
                ..
            } => {
                let fd = opened(namespaces, netns, &action)?;
                let host_link = link_named(&self.netlink, host, &action).await?;
                // Only the peer of our veth, and only under its name: never an interface
                // that merely has the name.
                let Some((inside, link)) = self
                    .peer_of(&host_link, *netns, fd)
                    .await
                    .map_err(nl)?
                    .filter(|(_, l)| l.name == *name)
                else {
                    return Err(ApplyError::Foreign {
                        action,
                        link: name.clone(),
                    });
                };
                if link.ipv6 != *ipv6 {
                    // /proc/sys/net is the namespace of the thread that opens it.
                    let (device, on) = (name.clone(), *ipv6);
                    on_thread_in(fd, move || set_ipv6(&device, on))
                        .await
                        .map_err(sys)?;
                }
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
                        .add_route(MAIN_TABLE, *destination, link.index, Some(*gateway), false)
                        .await
                        .map_err(nl)?;
                }
                Ok(())
            }
            Op::AddRule(rule) => self.netlink.add_rule(spec(rule)).await.map_err(nl),
            Op::EnableForwarding(forwarding) => match forwarding_sysctl(forwarding) {
                Some(sysctl) => std::fs::write(sysctl, "1").map_err(sys),
                None => self.forward_ipv6_node_wide().map_err(sys),
            },
            Op::DisableIpv6ForwardingNodeWide => {
                std::fs::write(IPV6_FORWARDING_NODE_WIDE, "0").map_err(sys)?;
                match std::fs::remove_file(&self.ipv6_forwarding_turned_on) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(sys(e)),
                    _ => Ok(()),
                }
            }
            Op::AddRoute(route) => {
                let index = self.index_of(&route.device, &action).await?;
                let local = route.device == LOCAL_DEVICE;
                self.netlink
                    .add_route(route.table, route.destination, index, None, local)
                    .await
                    .map_err(nl)
            }
            Op::ReplaceFirewall { sources } => nftables::apply(firewall::replace_script(sources))
                .await
                .map_err(nft),
            Op::SetFirewallSources { add, remove } => {
                nftables::apply(firewall::sources_script(add, remove))
                    .await
                    .map_err(nft)
            }
            Op::DeleteFirewall => nftables::apply(firewall::delete_script())
                .await
                .map_err(nft),
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

/// Whether a link of that name is the agent's.
fn is_owned_link(name: &str) -> bool {
    name.starts_with(WIREGUARD_PREFIX) || name.starts_with(HOST_VETH_PREFIX)
}

/// Link-local addresses the kernel puts on IPv6 links by itself (fe80::/64 from the MAC)
/// are not the agent's; the agent's gateway address is the one it set.
fn is_kernel_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V6(v6) => v6.addr().segments()[0] == 0xfe80 && v6.addr() != GATEWAY_V6,
        IpNet::V4(_) => false,
    }
}

/// How the kernel is told `rule`.
fn spec(rule: &Rule) -> RuleSpec<'_> {
    let (ipv4, priority, iif, table, port) = match rule {
        Rule::Lookup { iif, table, ipv4 } => (*ipv4, RULE_PRIORITY_LOOKUP, iif, Some(*table), None),
        Rule::Reject { iif, ipv4 } => (*ipv4, RULE_PRIORITY_REJECT, iif, None, None),
        Rule::Dns { iif, tcp } => {
            let protocol = if *tcp {
                IpProtocol::Tcp
            } else {
                IpProtocol::Udp
            };
            (
                true,
                RULE_PRIORITY_DNS,
                iif,
                Some(DNS_TABLE),
                Some((protocol, 53)),
            )
        }
    };
    RuleSpec {
        ipv4,
        priority,
        iif,
        table,
        port,
    }
}
