//! The kernel side: read back what the agent owns ([`Kernel::observe`]) and apply the
//! converger's operations ([`Kernel::apply`]), through netlink and the WireGuard backend.
//!
//! Every read goes to the kernel, never to a cache: the kernel drops routes when links
//! change, and people run `ip` and `wg` by hand.

pub mod netlink;
pub mod pods;
pub mod wireguard;
pub mod wireguard_kernel;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use wireway_proto::{
    HOST_VETH_PREFIX, NetnsLocator, ROUTE_TABLE_BASE, WIREGUARD_PREFIX, netns_locator,
};

use crate::converge::{
    Dataplane, MemberLink, NetnsId, Op, ResolvedNetns, Route, Rule, WireGuard, WorkloadSide,
};
use netlink::{Link, Netlink, NetlinkError};
use wireguard::{DeviceState, PeerStats, Userspace, WireGuardError};
use wireguard_kernel::KernelWireGuard;

/// Priority of the rules `iif <dev> lookup <table>`.
pub const RULE_PRIORITY_LOOKUP: u32 = 22359;
/// Priority of the rules `iif <dev> unreachable`, right after the lookups.
pub const RULE_PRIORITY_REJECT: u32 = 22360;

/// Why applying an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A netlink request failed.
    #[error("failed to {action}")]
    Netlink {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: NetlinkError,
    },
    /// WireGuard refused.
    #[error("failed to {action}")]
    WireGuard {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: WireGuardError,
    },
    /// A link the operation needs is not there.
    #[error("failed to {action}: link {link} is missing")]
    Missing {
        /// What was being done.
        action: String,
        /// The link.
        link: String,
    },
    /// A file (namespace, sysctl) could not be used.
    #[error("failed to {action}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl ApplyError {
    /// A fixed category for metrics and reports.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Netlink { .. } | Self::Missing { .. } => "netlink",
            Self::WireGuard { .. } => "wireguard",
            Self::Io { .. } => "system",
        }
    }
}

/// Finds workloads' network namespaces.
#[derive(Debug, Clone, Default)]
pub struct NetnsFinder {
    /// A directory in which a pod's network namespace is the file named by the pod's UID
    /// (or a link to it): what the lab, or a VM's own tooling, provides.
    pub pod_dir: Option<PathBuf>,
    /// In a cluster: the host's cgroup tree and processes, to find pods by UID.
    pub cgroups: Option<pods::Cgroups>,
    /// The agent's own network namespace (the node's): never a workload's.
    pub own: Option<NetnsId>,
}

fn netns_id(path: &Path) -> Option<NetnsId> {
    let meta = std::fs::metadata(path).ok()?;
    Some(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

impl NetnsFinder {
    /// A finder that knows the calling process's network namespace (the node's).
    pub fn new(pod_dir: Option<PathBuf>, cgroups: Option<pods::Cgroups>) -> Self {
        Self {
            pod_dir,
            cgroups,
            own: netns_id(Path::new("/proc/self/ns/net")),
        }
    }

    /// The pods' cgroups now, when pods are found through them (read once per pass).
    pub fn pods(&self) -> Option<pods::PodIndex> {
        self.cgroups.as_ref().map(pods::PodIndex::scan)
    }

    /// The namespace `locator` names: a path as is; a pod UID in the pod directory, or
    /// through `pods`. `None` while it is not there, and for the node's own namespace
    /// (a pod on the host's network cannot get an interface of its own).
    pub fn find(
        &self,
        locator: &NetnsLocator,
        pods: Option<&pods::PodIndex>,
    ) -> Option<ResolvedNetns> {
        let path = match &locator.locator {
            Some(netns_locator::Locator::Path(path)) => PathBuf::from(path),
            Some(netns_locator::Locator::PodUid(uid)) if is_uid(uid) => match &self.pod_dir {
                Some(dir) => dir.join(uid),
                None => pods?.netns(uid)?,
            },
            _ => return None,
        };
        let id = netns_id(&path).filter(|id| Some(*id) != self.own)?;
        Some(ResolvedNetns {
            path: path.to_string_lossy().into_owned(),
            id,
        })
    }
}

/// A UID can name a file in the pod directory and nothing outside it.
fn is_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// The WireGuard implementation the agent drives, chosen at start.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The kernel module, through netlink.
    Kernel(KernelWireGuard),
    /// boringtun in child processes.
    Userspace(Userspace),
}

impl Backend {
    /// The kernel backend when the kernel has WireGuard, else the userspace one.
    pub async fn detect(userspace: Userspace) -> Self {
        match KernelWireGuard::connect().await {
            Some(kernel) => Self::Kernel(kernel),
            None => Self::Userspace(userspace),
        }
    }

    /// `kernel` or `userspace`, for reports and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kernel(_) => "kernel",
            Self::Userspace(_) => "userspace",
        }
    }

    async fn get(&self, interface: &str) -> Option<DeviceState> {
        match self {
            Self::Kernel(k) => k.get(interface).await,
            Self::Userspace(u) => u.get(interface),
        }
    }

    async fn set_listen_port(&self, interface: &str, port: u16) -> Result<(), WireGuardError> {
        match self {
            Self::Kernel(k) => k.set_listen_port(interface, port).await,
            Self::Userspace(u) => u.set_listen_port(interface, port),
        }
    }

    async fn configure_peers(
        &self,
        interface: &str,
        changes: &[(&str, Option<&crate::converge::Peer>)],
    ) -> Result<(), WireGuardError> {
        match self {
            Self::Kernel(k) => k.configure_peers(interface, changes).await,
            Self::Userspace(u) => u.configure_peers(interface, changes),
        }
    }
}

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

    /// The WireGuard backend in use.
    pub fn backend(&self) -> &'static str {
        self.wireguard.name()
    }

    /// Netlink writes so far (WireGuard configuration is not counted).
    pub fn writes(&self) -> u64 {
        self.netlink.writes()
    }

    /// Turns on forwarding, which every service needs (packets go from a veth to
    /// WireGuard and back). Writes only what is not already set.
    pub fn prepare(&self) -> Result<(), ApplyError> {
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

    /// Every peer of every WireGuard interface of the agent's, with its health:
    /// (interface, public key, stats).
    pub async fn peer_stats(&self) -> Result<Vec<(String, String, PeerStats)>, ApplyError> {
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

    /// What the kernel holds of the agent's objects. Workload sides are looked up in the
    /// namespaces `desired` names for them.
    pub async fn observe(&self, desired: &Dataplane) -> Result<Dataplane, ApplyError> {
        self.namespaces.lock().await.clear();
        let read = |source| ApplyError::Netlink {
            action: "read the kernel's state".into(),
            source,
        };
        let links = self.netlink.links().await.map_err(read)?;
        let names: BTreeMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
        let mut plane = Dataplane::default();
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
            .filter(|r| r.oif == Some(link.index) && r.table == 254)
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

    /// Applies operations in order. A failed operation is reported and the next ones are
    /// still tried: what does not depend on it still converges. Consecutive peer changes
    /// of one interface go to the device as one transaction.
    pub async fn apply(&self, ops: &[Op]) -> Vec<ApplyError> {
        let mut errors = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            let batch = peer_batch(&ops[i..]);
            let result = match batch.first() {
                Some((interface, _)) => {
                    let changes: Vec<(&str, Option<&crate::converge::Peer>)> =
                        batch.iter().map(|(_, change)| *change).collect();
                    self.wireguard
                        .configure_peers(interface, &changes)
                        .await
                        .map_err(|source| ApplyError::WireGuard {
                            action: format!("configure {} peers of {interface}", changes.len()),
                            source,
                        })
                }
                None => self.apply_one(&ops[i]).await,
            };
            if let Err(e) = result {
                errors.push(e);
            }
            i += batch.len().max(1);
        }
        errors
    }

    async fn apply_one(&self, op: &Op) -> Result<(), ApplyError> {
        let action = describe(op);
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
                let temporary = format!("wwp{}", &host[HOST_VETH_PREFIX.len()..]);
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
                        .remove_route(254, *destination, link.index, Some(*gateway))
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
                        .add_route(254, *destination, link.index, Some(*gateway))
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

/// A peer change: (interface, (public key, the peer, or `None` to remove it)).
type PeerChange<'a> = (&'a str, (&'a str, Option<&'a crate::converge::Peer>));

fn peer_change(op: &Op) -> Option<PeerChange<'_>> {
    match op {
        Op::SetPeer {
            interface,
            public_key,
            peer,
        } => Some((interface, (public_key, Some(peer)))),
        Op::RemovePeer {
            interface,
            public_key,
        } => Some((interface, (public_key, None))),
        _ => None,
    }
}

/// The run of peer changes of one interface at the head of `ops`.
fn peer_batch(ops: &[Op]) -> Vec<PeerChange<'_>> {
    let mut batch: Vec<PeerChange<'_>> = Vec::new();
    for change in ops.iter().map(peer_change) {
        match change {
            Some(c) if batch.first().is_none_or(|(i, _)| *i == c.0) => batch.push(c),
            _ => break,
        }
    }
    batch
}

/// Link-local addresses the kernel puts on IPv6 links by itself (fe80::/64 from the MAC)
/// are not the agent's; the agent's gateway address is the one it set.
fn is_kernel_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V6(v6) => {
            v6.addr().segments()[0] == 0xfe80 && v6.addr() != crate::converge::GATEWAY_V6
        }
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

/// What an operation does, for error messages: "add route 10.100.0.0/16 dev ww-red table 1465319916".
pub fn describe(op: &Op) -> String {
    match op {
        Op::DeleteLink { name } => format!("delete link {name}"),
        Op::RemoveRule(rule) => format!("remove rule {}", rule_text(rule)),
        Op::RemoveRoute(r) => format!(
            "remove route {} dev {} table {}",
            r.destination, r.device, r.table
        ),
        Op::CreateWireGuard { name } => format!("create WireGuard interface {name}"),
        Op::SetListenPort { name, port } => format!("set listen port {port} on {name}"),
        Op::CreateMember {
            host,
            netns_path,
            workload,
        } => format!("create veth {host} into {netns_path} as {workload}"),
        Op::SetLink { name, mtu, up } => {
            format!("set {name} mtu {mtu} {}", if *up { "up" } else { "down" })
        }
        Op::ConfigureHost { host, .. } => format!("configure host side {host}"),
        Op::ConfigureWorkload {
            name, netns_path, ..
        } => format!("configure {name} in {netns_path}"),
        Op::RemovePeer {
            interface,
            public_key,
        } => format!("remove peer {public_key} from {interface}"),
        Op::SetPeer {
            interface,
            public_key,
            ..
        } => format!("set peer {public_key} on {interface}"),
        Op::AddRule(rule) => format!("add rule {}", rule_text(rule)),
        Op::AddRoute(r) => format!(
            "add route {} dev {} table {}",
            r.destination, r.device, r.table
        ),
    }
}

fn rule_text(rule: &Rule) -> String {
    match rule {
        Rule::Lookup { iif, table, .. } => format!("iif {iif} lookup {table}"),
        Rule::Reject { iif, .. } => format!("iif {iif} unreachable"),
    }
}
