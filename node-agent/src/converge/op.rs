//! The operations the converger orders and the appliers carry out, and how they read in
//! messages ("add route 10.100.0.0/16 dev ww-red table 1465319916").

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::firewall::Source;
use super::model::{Forwarding, NetnsId, Peer, Route, Rule};

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
    /// the namespace `netns` (as opened for this pass) and renamed `workload`, both ends
    /// down. Refused, creating nothing, when `workload` is taken there by an interface
    /// that is not the agent's.
    CreateMember {
        /// Host-side name.
        host: String,
        /// The namespace.
        netns: NetnsId,
        /// Where the namespace was found (for messages).
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
    /// Configure the host side of a member veth: proxy ARP, IPv6, and addresses to add
    /// and remove.
    ConfigureHost {
        /// Host-side name.
        host: String,
        /// Proxy ARP on or off.
        proxy_arp: bool,
        /// IPv6 on or off.
        ipv6: bool,
        /// Addresses to add.
        add: Vec<IpNet>,
        /// Addresses to remove.
        remove: Vec<IpNet>,
    },
    /// Configure the workload side, inside its namespace: only the peer of `host`, and
    /// only if it is called `name` there.
    ConfigureWorkload {
        /// Host-side name of the pair.
        host: String,
        /// The namespace.
        netns: NetnsId,
        /// Where the namespace was found (for messages).
        netns_path: String,
        /// Interface name inside.
        name: String,
        /// MTU.
        mtu: u32,
        /// IPv6 on or off.
        ipv6: bool,
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
        /// The device holds allowed IPs for it that it must no longer: they are replaced
        /// (on the kernel, a moment without any). `false` when `peer`'s are only added.
        replace_allowed_ips: bool,
    },
    /// Add a policy rule.
    AddRule(Rule),
    /// Turn forwarding on for packets arriving on a link, in one family.
    EnableForwarding(Forwarding),
    /// Turn IPv6 forwarding node-wide off again: the agent turned it on (for an IPv6
    /// service, on a kernel that cannot forward IPv6 per link) and no service needs it.
    DisableIpv6ForwardingNodeWide,
    /// Add a route.
    AddRoute(Route),
    /// Make the agent's nftables table anew (it is missing, or a set, chain or rule
    /// differs), with these members' sources, in one transaction.
    ReplaceFirewall {
        /// The sources it starts with.
        sources: Vec<Source>,
    },
    /// Add and remove members' sources in the table.
    SetFirewallSources {
        /// Sources to add.
        add: Vec<Source>,
        /// Sources to remove.
        remove: Vec<Source>,
    },
    /// Delete the agent's nftables table (the node holds no service).
    DeleteFirewall,
}

impl Op {
    /// The link this operation changes and needs, if it changes one: when creating that
    /// link failed, the operation is not tried.
    pub fn link(&self) -> Option<&str> {
        match self {
            Self::SetListenPort { name, .. } | Self::SetLink { name, .. } => Some(name),
            Self::ConfigureHost { host, .. } | Self::ConfigureWorkload { host, .. } => Some(host),
            Self::SetPeer { interface, .. } | Self::RemovePeer { interface, .. } => Some(interface),
            Self::AddRoute(route) => Some(&route.device),
            Self::EnableForwarding(f) => Some(&f.device),
            _ => None,
        }
    }

    /// The link this operation creates, if it creates one.
    pub fn creates(&self) -> Option<&str> {
        match self {
            Self::CreateWireGuard { name } => Some(name),
            Self::CreateMember { host, .. } => Some(host),
            _ => None,
        }
    }
}

/// What an operation does, for messages: "add route 10.100.0.0/16 dev ww-red table
/// 1465319916". Error messages read "failed to 'this'".
impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeleteLink { name } => write!(f, "delete link {name}"),
            Self::RemoveRule(rule) => write!(f, "remove rule {rule}"),
            Self::RemoveRoute(r) => write!(
                f,
                "remove route {} dev {} table {}",
                r.destination, r.device, r.table
            ),
            Self::CreateWireGuard { name } => write!(f, "create WireGuard interface {name}"),
            Self::SetListenPort { name, port } => write!(f, "set listen port {port} on {name}"),
            Self::CreateMember {
                host,
                netns_path,
                workload,
                ..
            } => write!(f, "create veth {host} into {netns_path} as {workload}"),
            Self::SetLink { name, mtu, up } => {
                write!(
                    f,
                    "set {name} mtu {mtu} {}",
                    if *up { "up" } else { "down" }
                )
            }
            Self::ConfigureHost { host, .. } => write!(f, "configure host side {host}"),
            Self::ConfigureWorkload {
                name, netns_path, ..
            } => write!(f, "configure {name} in {netns_path}"),
            Self::RemovePeer {
                interface,
                public_key,
            } => write!(f, "remove peer {public_key} from {interface}"),
            Self::SetPeer {
                interface,
                public_key,
                ..
            } => write!(f, "set peer {public_key} on {interface}"),
            Self::AddRule(rule) => write!(f, "add rule {rule}"),
            Self::EnableForwarding(Forwarding { device, ipv4 }) => write!(
                f,
                "enable {} forwarding on {device}",
                if *ipv4 { "IPv4" } else { "IPv6" }
            ),
            Self::DisableIpv6ForwardingNodeWide => {
                write!(
                    f,
                    "disable IPv6 forwarding node-wide (no IPv6 service needs it)"
                )
            }
            Self::AddRoute(r) => write!(
                f,
                "add route {} dev {} table {}",
                r.destination, r.device, r.table
            ),
            Self::ReplaceFirewall { sources } => write!(
                f,
                "replace nftables table {} ({} member sources)",
                super::firewall::TABLE,
                sources.len()
            ),
            Self::SetFirewallSources { add, remove } => write!(
                f,
                "add {} and remove {} member sources in nftables table {}",
                add.len(),
                remove.len(),
                super::firewall::TABLE
            ),
            Self::DeleteFirewall => write!(f, "delete nftables table {}", super::firewall::TABLE),
        }
    }
}

/// A rule as `ip rule` writes it: "iif ww-red lookup 1465319917".
impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lookup { iif, table, .. } => write!(f, "iif {iif} lookup {table}"),
            Self::Reject { iif, .. } => write!(f, "iif {iif} unreachable"),
            Self::Dns { iif, tcp } => write!(
                f,
                "iif {iif} ipproto {} dport 53 lookup {}",
                if *tcp { "tcp" } else { "udp" },
                super::desired::DNS_TABLE
            ),
        }
    }
}
