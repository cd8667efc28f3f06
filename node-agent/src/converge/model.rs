//! The two inputs of converging: what the node must hold, and what the kernel holds now
//! of the objects the agent owns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::firewall::Firewall;

/// A WireGuard peer as the agent sets it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Peer {
    /// Where to send its packets (host:port); `None` when the peer dials in.
    pub endpoint: Option<String>,
    /// Prefixes it may send from and is routed.
    pub allowed_ips: BTreeSet<IpNet>,
    /// Seconds between keepalives; 0 for none.
    pub persistent_keepalive: u16,
}

/// A WireGuard interface: desired or observed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WireGuard {
    /// UDP port it listens on.
    pub listen_port: u16,
    /// MTU.
    pub mtu: u32,
    /// Whether the link is up.
    pub up: bool,
    /// Peers by public key.
    pub peers: BTreeMap<String, Peer>,
}

/// The workload side of a member veth, inside the workload's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadSide {
    /// Identity of the network namespace (device and inode of its nsfs file), so a veth
    /// left in a namespace the workload no longer uses is told apart. The pass opens each
    /// namespace once and reaches it by this identity, never by its path again.
    pub netns: NetnsId,
    /// Where the namespace was found, for messages only (desired state; empty when
    /// observed).
    pub netns_path: String,
    /// Interface name inside the namespace.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// Whether the link is up.
    pub up: bool,
    /// Whether IPv6 is enabled on it (only for IPv6 services: an IPv4 member has no
    /// link-local address to be reached at).
    pub ipv6: bool,
    /// Addresses (host prefixes: /32 or /128).
    pub addresses: BTreeSet<IpNet>,
    /// Routes: destination via gateway.
    pub routes: BTreeSet<(IpNet, IpAddr)>,
}

/// A network namespace's identity: (device, inode) of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NetnsId {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

/// A member veth pair: its host side, and what is inside the workload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberLink {
    /// MTU of the host side.
    pub mtu: u32,
    /// Whether the host side is up.
    pub up: bool,
    /// Whether the host side answers ARP for the gateway (proxy ARP), at once (no proxy
    /// delay).
    pub proxy_arp: bool,
    /// Whether IPv6 is enabled on the host side (only for IPv6 services).
    pub ipv6: bool,
    /// Addresses on the host side (the IPv6 link-local gateway).
    pub addresses: BTreeSet<IpNet>,
    /// The workload side; `None` when it could not be found (observed).
    pub workload: Option<WorkloadSide>,
}

/// A route in one of the agent's tables.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    /// Routing table.
    pub table: u32,
    /// Destination.
    pub destination: IpNet,
    /// Output interface; [`LOCAL_DEVICE`] for a route that delivers to the node itself
    /// (type `local`).
    pub device: String,
}

/// The device of a `local` route: what it routes is delivered to the node.
pub const LOCAL_DEVICE: &str = "lo";

/// A policy rule of the agent's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `iif <device> lookup <table>`, for one address family.
    Lookup {
        /// Input interface.
        iif: String,
        /// Table.
        table: u32,
        /// IPv4 (true) or IPv6.
        ipv4: bool,
    },
    /// `iif <device> unreachable`: what the service's table did not route goes nowhere.
    Reject {
        /// Input interface.
        iif: String,
        /// IPv4 (true) or IPv6.
        ipv4: bool,
    },
    /// `iif <device> ipproto <udp|tcp> dport 53 lookup <DNS_TABLE>` (IPv4): a member's DNS
    /// queries to its gateway are delivered to the node, where the agent answers them;
    /// nothing else sent to the gateway is (ARP included: it still gets proxy ARP).
    Dns {
        /// Input interface: a member's host veth.
        iif: String,
        /// TCP (true) or UDP.
        tcp: bool,
    },
}

/// Forwarding for one address family on one of the agent's links: packets arriving on
/// it may be routed to another link. Only what a service needs is turned on: its
/// WireGuard interface and its members' host veths, in its family; nothing node-wide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Forwarding {
    /// The link packets arrive on.
    pub device: String,
    /// IPv4 (true) or IPv6.
    pub ipv4: bool,
}

/// The data plane of one node, everything the agent owns there: desired, or observed in
/// the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plane {
    /// WireGuard interfaces by name.
    pub wireguard: BTreeMap<String, WireGuard>,
    /// Member veths by host-side name.
    pub members: BTreeMap<String, MemberLink>,
    /// Routes in the agent's tables.
    pub routes: BTreeSet<Route>,
    /// The agent's policy rules.
    pub rules: BTreeSet<Rule>,
    /// Forwarding on the agent's links (observed: of the desired ones, those on).
    pub forwarding: BTreeSet<Forwarding>,
    /// The agent's nftables table; `None` when there is none (no service on the node).
    pub firewall: Option<Firewall>,
    /// IPv6 forwarding node-wide (`conf/all/forwarding`), on because the agent turned it
    /// on: kernels before Linux 6.17 cannot forward IPv6 per link, so an IPv6 service's
    /// [`Forwarding`] turns it on for every link. Observed only (never desired): it goes
    /// off when no IPv6 service needs it. On by someone else, it reads `false` and stays.
    pub ipv6_forwarding_node_wide: bool,
}
