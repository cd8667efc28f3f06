//! The agent's nftables table, `inet wireway`: what it holds, as nftables lists it, and
//! the scripts that make and change it. Pure: the data plane runs `nft` with these scripts
//! and reads the listing back into a [`Firewall`].
//!
//! Guarantees (each rule's comment names its reason):
//! * nothing a member sends (it arrives on a host-side veth, `wwv*`) or a WireGuard peer
//!   sends (on `ww-*`) is delivered to a socket of the node, either family, link-local,
//!   broadcast and multicast included. The one exception, named and tested: neighbour
//!   discovery between a member and its IPv6 gateway `fe80::77:1` on its veth (IPv6's
//!   ARP; IPv4's ARP is not IP and never reaches this table), and DNS: UDP and TCP port
//!   53 on the gateway address (169.254.77.1, `fe80::77:1`) to a transparent socket,
//!   which only the agent's listeners are (a member asks `fe80::77:1` from its
//!   link-local address);
//! * a member sends only from its own addresses: a packet from any other source is
//!   dropped as it arrives at its own node, before routing, whatever `rp_filter` says
//!   (`sources4`/`sources6` hold the pairs (host veth, member address));
//! * the table is replaced whole, in one `nft -f` transaction, when any set, chain or rule
//!   differs from [`parts`] (rules are recognised by their comments, in order), so a rule
//!   removed or edited by hand is restored; members' sources are set elements, changed
//!   without touching the rules. Other tables are never read or written.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use wireway_proto::{HOST_VETH_PREFIX, WIREGUARD_PREFIX};

use super::desired::{GATEWAY_V4, GATEWAY_V6};

/// The table's family and name, as nftables commands write them.
pub const TABLE: &str = "inet wireway";

/// A member's source: the host side of its veth and one of its addresses. Packets that
/// arrive on `device` from `address` are the member's own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    /// The host side of the member's veth.
    pub device: String,
    /// One of the member's addresses.
    pub address: IpAddr,
}

/// One part of the table, as nftables lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    /// A named set and its key type (`ifname . ipv4_addr`).
    Set {
        /// Its name.
        name: String,
        /// Its key type.
        key: String,
    },
    /// A chain; a base chain with its hook (`filter prerouting -300 accept`: type, hook,
    /// priority, policy).
    Chain {
        /// Its name.
        name: String,
        /// Type, hook, priority and policy of a base chain; `None` for a regular chain.
        hook: Option<String>,
    },
    /// A rule of a chain, known by its comment.
    Rule {
        /// The chain.
        chain: String,
        /// Its comment (`ww:...`).
        comment: String,
    },
}

/// The agent's table: desired, or as listed by nftables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Firewall {
    /// Its sets, chains and rules in [`canonical`] order.
    pub parts: Vec<Part>,
    /// Members' sources: the elements of `sources4` and `sources6`.
    pub sources: BTreeSet<Source>,
}

impl Firewall {
    /// The table the agent wants, with these sources.
    pub fn with_sources(sources: BTreeSet<Source>) -> Self {
        Self {
            parts: parts(),
            sources,
        }
    }
}

/// A base chain's hook: where and when it runs.
struct Hook {
    hook: &'static str,
    priority: i32,
}

/// A chain and its rules (rule text, comment).
struct Chain {
    name: &'static str,
    hook: Option<Hook>,
    rules: Vec<(String, &'static str)>,
}

/// ICMPv6 neighbour discovery (solicitation and advertisement; hop limit 255 as RFC 4861
/// requires, so nothing routed qualifies).
const NEIGHBOUR_DISCOVERY: &str =
    "ip6 hoplimit 255 icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }";

/// DNS, over UDP and TCP.
const DNS: &str = "meta l4proto { tcp, udp } th dport 53";

/// The table's chains, in the order they are written.
fn chains() -> [Chain; 3] {
    let veths = format!("iifname \"{HOST_VETH_PREFIX}*\"");
    let wireguard = format!("iifname \"{WIREGUARD_PREFIX}*\"");
    [
        Chain {
            name: "prerouting",
            // `raw` (-300): before connection tracking and routing.
            hook: Some(Hook {
                hook: "prerouting",
                priority: -300,
            }),
            rules: vec![(format!("{veths} jump member"), "ww:members-are-checked")],
        },
        Chain {
            name: "member",
            hook: None,
            rules: vec![
                (
                    "iifname . ip saddr @sources4 return".to_owned(),
                    "ww:a-members-own-ipv4-source",
                ),
                (
                    "iifname . ip6 saddr @sources6 return".to_owned(),
                    "ww:a-members-own-ipv6-source",
                ),
                (
                    format!("ip6 saddr fe80::/10 {NEIGHBOUR_DISCOVERY} return"),
                    "ww:neighbour-discovery-from-link-local",
                ),
                (
                    format!("ip6 saddr fe80::/10 ip6 daddr {GATEWAY_V6} {DNS} return"),
                    "ww:dns-from-link-local",
                ),
                ("counter drop".to_owned(), "ww:any-other-source-is-spoofed"),
            ],
        },
        Chain {
            name: "input",
            // Just before `filter` (0), so the drop holds whatever other tables accept.
            hook: Some(Hook {
                hook: "input",
                priority: -10,
            }),
            rules: vec![
                (
                    format!("{veths} {NEIGHBOUR_DISCOVERY} accept"),
                    "ww:neighbour-discovery-with-the-gateway",
                ),
                // Services Wireway itself offers members on the gateway are accepted
                // here, each by its own named rule, before the drop.
                // DNS reaches the agent's listeners only: they are transparent sockets,
                // which no resolver of the node's own (on 0.0.0.0:53) is.
                (
                    format!("{veths} ip daddr {GATEWAY_V4} {DNS} socket transparent 1 accept"),
                    "ww:dns-on-the-ipv4-gateway-to-the-agent",
                ),
                (
                    format!("{veths} ip6 daddr {GATEWAY_V6} {DNS} socket transparent 1 accept"),
                    "ww:dns-on-the-ipv6-gateway-to-the-agent",
                ),
                (
                    format!("{veths} counter drop"),
                    "ww:members-reach-no-socket-of-the-node",
                ),
                (
                    format!("{wireguard} counter drop"),
                    "ww:peers-reach-no-socket-of-the-node",
                ),
            ],
        },
    ]
}

/// The sets: members' sources by family.
const SETS: [(&str, &str); 2] = [
    ("sources4", "ifname . ipv4_addr"),
    ("sources6", "ifname . ipv6_addr"),
];

/// The set a source belongs in.
fn set_of(source: &Source) -> &'static str {
    match source.address {
        IpAddr::V4(_) => SETS[0].0,
        IpAddr::V6(_) => SETS[1].0,
    }
}

fn hook_text(hook: &Hook) -> String {
    format!("filter {} {} accept", hook.hook, hook.priority)
}

/// The parts of the table the agent wants, in [`canonical`] order.
pub fn parts() -> Vec<Part> {
    let sets = SETS.iter().map(|(name, key)| Part::Set {
        name: (*name).to_owned(),
        key: (*key).to_owned(),
    });
    let chains = chains();
    let heads: Vec<Part> = chains
        .iter()
        .map(|c| Part::Chain {
            name: c.name.to_owned(),
            hook: c.hook.as_ref().map(hook_text),
        })
        .collect();
    let rules: Vec<Part> = chains
        .iter()
        .flat_map(|c| {
            c.rules.iter().map(|(_, comment)| Part::Rule {
                chain: c.name.to_owned(),
                comment: (*comment).to_owned(),
            })
        })
        .collect();
    canonical(sets.chain(heads).chain(rules).collect())
}

/// Parts in one order whatever order nftables lists them in: sets, then chains, each by
/// name, then rules grouped by chain name, each chain's rules in their order.
pub fn canonical(mut parts: Vec<Part>) -> Vec<Part> {
    parts.sort_by(|a, b| key(a).cmp(&key(b)));
    parts
}

fn key(part: &Part) -> (u8, &str) {
    match part {
        Part::Set { name, .. } => (0, name),
        Part::Chain { name, .. } => (1, name),
        Part::Rule { chain, .. } => (2, chain),
    }
}

/// Set elements, one statement per set that has any: `add element inet wireway sources4
/// { "wwv1" . 10.0.0.1 }`.
fn elements(verb: &str, sources: &[Source], script: &mut String) {
    for (set, _) in SETS {
        let items: Vec<String> = sources
            .iter()
            .filter(|s| set_of(s) == set)
            .map(|s| format!("\"{}\" . {}", s.device, s.address))
            .collect();
        if !items.is_empty() {
            let _ = writeln!(
                script,
                "{verb} element {TABLE} {set} {{ {} }}",
                items.join(", ")
            );
        }
    }
}

/// The script that makes the table anew with `sources`, replacing whatever table of that
/// name is there, in one transaction (`nft -f -`): nothing is ever without the table.
pub fn replace_script(sources: &[Source]) -> String {
    // Declaring the table first makes the delete valid whether or not it exists.
    let mut script = format!("table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n");
    for (name, key) in SETS {
        let _ = writeln!(script, "  set {name} {{ type {key}; }}");
    }
    for chain in chains() {
        let _ = writeln!(script, "  chain {} {{", chain.name);
        if let Some(hook) = &chain.hook {
            let _ = writeln!(
                script,
                "    type filter hook {} priority {}; policy accept;",
                hook.hook, hook.priority
            );
        }
        for (rule, comment) in &chain.rules {
            let _ = writeln!(script, "    {rule} comment \"{comment}\"");
        }
        script.push_str("  }\n");
    }
    script.push_str("}\n");
    elements("add", sources, &mut script);
    script
}

/// The script that adds and removes sources, in one transaction.
pub fn sources_script(add: &[Source], remove: &[Source]) -> String {
    let mut script = String::new();
    elements("delete", remove, &mut script);
    elements("add", add, &mut script);
    script
}

/// The script that deletes the table.
pub fn delete_script() -> String {
    format!("delete table {TABLE}\n")
}
