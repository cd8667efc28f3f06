//! The administrator's bounds on every NetworkService: the pools its cidr must lie in, the
//! ranges it may never overlap, and the UDP ports its interfaces may listen on.
//!
//! A service owner chooses the cidr and may pin the listen port, and a hostile one would
//! choose them to capture traffic: a range over the cluster's pod or Service range, or a
//! port another component of the node listens on (a CNI's VXLAN or WireGuard port). The
//! bounds are the operator's flags, so only whoever deploys the operator sets them; the
//! ranges discovered in the cluster (nodes' pod ranges and addresses, the Service range)
//! join the reserved ones. A service outside the bounds is refused and installs nothing.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use wireway_crds::Cidr;
use wireway_crds::conditions::reason;

use super::index::Index;

/// The service pools by default: the private and shared address ranges (RFC 1918,
/// RFC 6598) and IPv6 unique local addresses (RFC 4193).
pub const DEFAULT_SERVICE_POOLS: &str =
    "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fd00::/8";

/// The listen ports by default. Not 51820-51821 (Calico's WireGuard ports) nor 51871
/// (Cilium's), which the kernel would refuse to bind twice.
pub const DEFAULT_LISTEN_PORTS: &str = "52000-52999";

/// Ranges no service may ever overlap, whatever the flags say: addresses that mean the
/// node itself or no one in particular.
pub const ALWAYS_RESERVED: [(&str, &str); 8] = [
    ("0.0.0.0/8", "unspecified addresses ('this network')"),
    ("127.0.0.0/8", "loopback addresses"),
    ("169.254.0.0/16", "link-local addresses"),
    ("224.0.0.0/4", "multicast addresses"),
    ("::/128", "the unspecified address"),
    ("::1/128", "the loopback address"),
    ("fe80::/10", "link-local addresses"),
    ("ff00::/8", "multicast addresses"),
];

/// The bounds, as the operator's flags set them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    /// A service's cidr must lie inside one of these (`--service-pools`).
    pub service_pools: Vec<Cidr>,
    /// A service's cidr may overlap none of these (`--reserved-ranges`), nor
    /// [`ALWAYS_RESERVED`], nor the ranges discovered in the cluster.
    pub reserved_ranges: Vec<Cidr>,
    /// The UDP ports services listen on (`--listen-ports`).
    pub listen_ports: ListenPorts,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            service_pools: cidrs(DEFAULT_SERVICE_POOLS),
            reserved_ranges: Vec::new(),
            listen_ports: ListenPorts::default(),
        }
    }
}

/// The prefixes of a comma-separated list known to be valid.
fn cidrs(list: &str) -> Vec<Cidr> {
    list.split(',').filter_map(|c| c.parse().ok()).collect()
}

/// A range of UDP ports, both ends included: `52000-52999`, or one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenPorts {
    first: u16,
    last: u16,
}

impl ListenPorts {
    /// The first port: services that do not pin one are given the lowest free port from
    /// here.
    pub fn first(self) -> u16 {
        self.first
    }

    /// The ports, in order.
    pub fn all(self) -> std::ops::RangeInclusive<u16> {
        self.first..=self.last
    }

    /// Whether `port` is in the range.
    pub fn contains(self, port: u16) -> bool {
        self.all().contains(&port)
    }
}

impl Default for ListenPorts {
    fn default() -> Self {
        Self {
            first: 52000,
            last: 52999,
        }
    }
}

impl fmt::Display for ListenPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Why a string is not a port range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenPortsError {
    /// An end is not a port number (1-65535).
    #[error("{0:?} is not a UDP port (1-65535)")]
    Port(String),
    /// The range runs backwards.
    #[error("the range {first}-{last} is empty: its first port is above its last")]
    Empty {
        /// The first port given.
        first: u16,
        /// The last port given.
        last: u16,
    },
}

impl FromStr for ListenPorts {
    type Err = ListenPortsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ListenPortsError::Port(p.to_owned()))
        };
        let (first, last) = match s.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err(ListenPortsError::Empty { first, last });
        }
        Ok(Self { first, last })
    }
}

/// Why a service is refused by the bounds: the condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `OutsideServicePools`, `ReservedRange` or `ListenPortOutOfRange`.
    pub reason: &'static str,
    /// What is wrong and what to do, for a person.
    pub message: String,
}

/// Whether a service of `cidr`, with `listen_port` pinned in its spec, keeps within the
/// bounds; if not, why not (the first rule it breaks). The nodes' ranges and addresses
/// bound only a service that is not yet `working`: they are what nodes say (an agent
/// reports its own underlay address), and a node's word must not take down a service
/// already working.
pub fn check(
    index: &Index,
    cidr: &Cidr,
    listen_port: Option<u16>,
    working: bool,
) -> Result<(), Refusal> {
    let bounds = &index.bounds;
    if !bounds.service_pools.iter().any(|pool| pool.contains(cidr)) {
        let pools: Vec<String> = bounds.service_pools.iter().map(Cidr::to_string).collect();
        return Err(Refusal {
            reason: reason::OUTSIDE_SERVICE_POOLS,
            message: format!(
                "spec.cidr {cidr} lies outside every service pool the cluster's administrator allows ({}); choose a cidr inside one of them",
                if pools.is_empty() {
                    "none".to_owned()
                } else {
                    pools.join(", ")
                }
            ),
        });
    }
    if let Some((range, why)) = reserved_overlap(index, cidr, working) {
        return Err(Refusal {
            reason: reason::RESERVED_RANGE,
            message: format!(
                "spec.cidr {cidr} overlaps {range}, {why}: members would capture traffic meant for it; choose a cidr that overlaps no reserved range"
            ),
        });
    }
    if let Some(port) = listen_port
        && !bounds.listen_ports.contains(port)
    {
        return Err(Refusal {
            reason: reason::LISTEN_PORT_OUT_OF_RANGE,
            message: format!(
                "spec.listenPort {port} lies outside the listen ports the cluster's administrator allows ({}); pin a port inside them, or none",
                bounds.listen_ports
            ),
        });
    }
    Ok(())
}

/// The first reserved range `cidr` overlaps, and why it is reserved: always-reserved
/// ranges, the administrator's, the cluster's Service ranges, then (unless the service is
/// `working`) the nodes' pod ranges and addresses.
fn reserved_overlap(index: &Index, cidr: &Cidr, working: bool) -> Option<(Cidr, String)> {
    let always = ALWAYS_RESERVED.iter().filter_map(|(range, why)| {
        let range: Cidr = range.parse().ok()?;
        Some((range, (*why).to_owned()))
    });
    if let Some(hit) = always.into_iter().find(|(range, _)| range.overlaps(cidr)) {
        return Some(hit);
    }
    let by_flag = index.bounds.reserved_ranges.iter();
    if let Some(range) = by_flag.into_iter().find(|range| range.overlaps(cidr)) {
        let why = "reserved by the cluster's administrator (--reserved-ranges)";
        return Some((*range, why.to_owned()));
    }
    for (name, ranges) in &index.service_cidrs {
        if let Some(range) = ranges.iter().find(|range| range.overlaps(cidr)) {
            let why = format!("the cluster's Service range (ServiceCIDR {name})");
            return Some((*range, why));
        }
    }
    if working {
        return None;
    }
    for node in index.nodes.values() {
        if let Some(range) = node.pod_cidrs.iter().find(|range| range.overlaps(cidr)) {
            return Some((*range, format!("the pod range of node {}", node.name)));
        }
        let addresses = node.addresses.iter().chain(&node.underlay);
        if let Some(addr) = addresses.into_iter().find(|a| cidr.contains_addr(**a)) {
            let why = format!("an address of node {}", node.name);
            return Some((host(*addr), why));
        }
    }
    None
}

/// The ranges of the World a node makes reserved: its pod ranges and its addresses.
pub fn node_ranges(node: &super::Node) -> Vec<Cidr> {
    let addresses = node
        .addresses
        .iter()
        .chain(&node.underlay)
        .map(|a| host(*a));
    node.pod_cidrs.iter().copied().chain(addresses).collect()
}

/// One address as a prefix: `/32` or `/128`.
fn host(addr: IpAddr) -> Cidr {
    Cidr::from(IpNet::from(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_refuse_nonsense() {
        assert_eq!(
            DEFAULT_LISTEN_PORTS.parse::<ListenPorts>(),
            Ok(ListenPorts::default())
        );
        let one: ListenPorts = "51000".parse().unwrap();
        assert!(one.contains(51000) && !one.contains(51001));
        assert_eq!(one.to_string(), "51000-51000");
        assert_eq!(
            "53000-52000".parse::<ListenPorts>(),
            Err(ListenPortsError::Empty {
                first: 53000,
                last: 52000
            })
        );
        for bad in ["0-10", "52000-70000", "a-b", ""] {
            assert!(bad.parse::<ListenPorts>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_the_private_ranges_and_the_reserved_ones_parse() {
        assert_eq!(Bounds::default().service_pools.len(), 5);
        for (range, _) in ALWAYS_RESERVED {
            assert!(range.parse::<Cidr>().is_ok(), "{range}");
        }
    }
}
