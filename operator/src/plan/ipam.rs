//! Address management inside the planner: node prefixes out of a service's pool, and
//! member addresses out of a node's prefix. Sticky: what was recorded is kept when still
//! valid; new allocations take the lowest free value.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

fn to_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_bits(bits: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(bits))
    }
}

fn net(addr: IpAddr, len: u8) -> Option<IpNet> {
    match addr {
        IpAddr::V4(a) => Ipv4Net::new(a, len).ok().map(IpNet::V4),
        IpAddr::V6(a) => Ipv6Net::new(a, len).ok().map(IpNet::V6),
    }
}

/// Number of host bits of `len` in `net`'s family; 2^bits values, capped to stay in u128.
fn span(net: &IpNet, len: u8) -> u32 {
    u32::from(len.saturating_sub(net.prefix_len())).min(127)
}

/// The `index`-th subnet of length `len` inside `pool`.
fn subnet(pool: &IpNet, len: u8, index: u128) -> Option<IpNet> {
    let shift = u32::from(pool.max_prefix_len() - len);
    let bits = to_bits(pool.network()) | index.checked_shl(shift)?;
    net(from_bits(bits, matches!(pool, IpNet::V4(_))), len)
}

/// Index of the subnet of length `len` of `pool` that holds `addr`.
fn index_of(pool: &IpNet, len: u8, addr: IpAddr) -> u128 {
    let shift = u32::from(pool.max_prefix_len() - len);
    (to_bits(addr) - to_bits(pool.network())) >> shift
}

/// Result of node prefix allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePrefixes {
    /// Prefix per node.
    pub allocated: BTreeMap<String, IpNet>,
    /// Nodes that got none: the pool is full.
    pub exhausted: Vec<String>,
}

/// Gives every node of `nodes` (sorted) a prefix of length `len` from `pool`.
///
/// A node keeps its `recorded` prefix when it is still of the right length, inside the
/// pool and not held by another node (the first node in name order keeps a contested
/// one). New prefixes avoid every address in `avoid` (external members).
pub fn node_prefixes(
    pool: &IpNet,
    len: u8,
    nodes: &[&str],
    recorded: &BTreeMap<String, IpNet>,
    avoid: &[IpAddr],
) -> NodePrefixes {
    let mut used: HashSet<u128> = avoid
        .iter()
        .filter(|a| pool.contains(*a))
        .map(|a| index_of(pool, len, *a))
        .collect();
    let mut out = NodePrefixes::default();
    let mut fresh = Vec::new();
    for node in nodes {
        match recorded.get(*node) {
            Some(prefix)
                if prefix.prefix_len() == len
                    && pool.contains(prefix)
                    && used.insert(index_of(pool, len, prefix.network())) =>
            {
                out.allocated.insert((*node).to_owned(), *prefix);
            }
            _ => fresh.push(*node),
        }
    }
    let count = 1u128 << span(pool, len);
    let mut cursor = 0u128;
    for node in fresh {
        while cursor < count && used.contains(&cursor) {
            cursor += 1;
        }
        match subnet(pool, len, cursor).filter(|_| cursor < count) {
            Some(prefix) => {
                used.insert(cursor);
                out.allocated.insert(node.to_owned(), prefix);
            }
            None => out.exhausted.push(node.to_owned()),
        }
    }
    out
}

/// The range of host indices members may use in `prefix`: IPv4 leaves out the network
/// and broadcast addresses, IPv6 the subnet-router anycast address, except in the
/// smallest prefixes, where every address is a host.
fn usable(prefix: &IpNet) -> (u128, u128) {
    let bits = u32::from(prefix.max_prefix_len() - prefix.prefix_len()).min(127);
    let last = (1u128 << bits) - 1;
    match (prefix, bits) {
        (_, 0 | 1) => (0, last),
        (IpNet::V4(_), _) => (1, last - 1),
        (IpNet::V6(_), _) => (1, last),
    }
}

/// Gives every member (sorted keys) an address in `prefix`: its `recorded` address when
/// still inside and not taken by an earlier member, else the lowest free one. `None`
/// when the prefix is full.
pub fn addresses<K: Ord + Clone>(
    prefix: &IpNet,
    members: &[(K, Option<IpAddr>)],
) -> BTreeMap<K, Option<IpAddr>> {
    let (first, last) = usable(prefix);
    let base = to_bits(prefix.network());
    let v4 = matches!(prefix, IpNet::V4(_));
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    let mut fresh = Vec::new();
    for (key, recorded) in members {
        match recorded {
            Some(addr)
                if prefix.contains(addr) && {
                    let index = to_bits(*addr) - base;
                    (first..=last).contains(&index) && used.insert(index)
                } =>
            {
                out.insert(key.clone(), Some(*addr));
            }
            _ => fresh.push(key),
        }
    }
    let mut cursor = first;
    for key in fresh {
        while cursor <= last && used.contains(&cursor) {
            cursor += 1;
        }
        let addr = (cursor <= last).then(|| from_bits(base + cursor, v4));
        if addr.is_some() {
            used.insert(cursor);
        }
        out.insert(key.clone(), addr);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn node_prefixes_are_sticky_then_lowest_free() {
        let recorded = BTreeMap::from([("b".to_owned(), p("10.100.0.0/24"))]);
        let got = node_prefixes(&p("10.100.0.0/16"), 24, &["a", "b", "c"], &recorded, &[]);
        assert_eq!(got.allocated["b"], p("10.100.0.0/24"));
        assert_eq!(got.allocated["a"], p("10.100.1.0/24"));
        assert_eq!(got.allocated["c"], p("10.100.2.0/24"));
        assert!(got.exhausted.is_empty());
    }

    #[test]
    fn a_contested_or_misshapen_record_is_reallocated() {
        let recorded = BTreeMap::from([
            ("a".to_owned(), p("10.100.5.0/24")),
            ("b".to_owned(), p("10.100.5.0/24")),
            ("c".to_owned(), p("10.100.6.0/25")),
            ("d".to_owned(), p("10.101.0.0/24")),
        ]);
        let got = node_prefixes(
            &p("10.100.0.0/16"),
            24,
            &["a", "b", "c", "d"],
            &recorded,
            &[],
        );
        assert_eq!(got.allocated["a"], p("10.100.5.0/24"));
        assert_eq!(got.allocated["b"], p("10.100.0.0/24"));
        assert_eq!(got.allocated["c"], p("10.100.1.0/24"));
        assert_eq!(got.allocated["d"], p("10.100.2.0/24"));
    }

    #[test]
    fn node_prefixes_avoid_external_addresses_and_report_exhaustion() {
        let got = node_prefixes(
            &p("10.100.0.0/23"),
            24,
            &["a", "b"],
            &BTreeMap::new(),
            &[a("10.100.0.7")],
        );
        assert_eq!(got.allocated["a"], p("10.100.1.0/24"));
        assert_eq!(got.exhausted, vec!["b".to_owned()]);
    }

    #[test]
    fn ipv6_prefixes() {
        let got = node_prefixes(&p("fd00:100::/48"), 64, &["a", "b"], &BTreeMap::new(), &[]);
        assert_eq!(got.allocated["b"], p("fd00:100:0:1::/64"));
        let huge = node_prefixes(&p("fd00::/8"), 128, &["a"], &BTreeMap::new(), &[]);
        assert_eq!(huge.allocated["a"], p("fd00::/128"));
    }

    #[test]
    fn member_addresses_skip_network_and_broadcast_and_stay_sticky() {
        let got = addresses(
            &p("10.100.1.0/30"),
            &[(1, None), (2, Some(a("10.100.1.1"))), (3, None)],
        );
        assert_eq!(got[&2], Some(a("10.100.1.1")));
        assert_eq!(got[&1], Some(a("10.100.1.2")));
        assert_eq!(got[&3], None, "a /30 has two host addresses");
        let v6 = addresses(&p("fd00::/126"), &[(1, None)]);
        assert_eq!(v6[&1], Some(a("fd00::1")));
        let single = addresses(&p("10.0.0.9/32"), &[(1, None)]);
        assert_eq!(single[&1], Some(a("10.0.0.9")));
    }

    #[test]
    fn a_recorded_address_outside_the_prefix_or_taken_is_replaced() {
        let got = addresses(
            &p("10.100.1.0/24"),
            &[
                (1, Some(a("10.100.2.5"))),
                (2, Some(a("10.100.1.9"))),
                (3, Some(a("10.100.1.9"))),
            ],
        );
        assert_eq!(got[&2], Some(a("10.100.1.9")));
        assert_eq!(got[&1], Some(a("10.100.1.1")));
        assert_eq!(got[&3], Some(a("10.100.1.2")));
    }
}
