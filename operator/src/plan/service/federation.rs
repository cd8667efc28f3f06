//! Peer clusters' halves of a target, and this cluster's half for each peer.
//!
//! A peer's half is held to its PeerCluster before anything else: its slice must lie in
//! the service's cidr and overlap neither this cluster's slice nor an earlier peer's
//! (else the peer takes no part), its cidr must be the service's, its nodes' prefixes
//! must lie in its slice and their keys be valid and nobody else's, its members'
//! identities must lie in its trust domain and their addresses in their node's prefix.
//! What passes is decided by the service's Admissions like an external host (never by
//! namespace: no remote workload is in a namespace of this cluster). A remote node with
//! admitted members becomes a WireGuard peer of every carrying node whose allowed IPs
//! are those members' addresses only, so cryptokey routing itself drops a refused
//! member's packets.
//!
//! This cluster's half for a peer holds its carrying nodes, its own admitted members
//! (pods; external hosts stay peers of this cluster's nodes only) and its decisions on
//! that peer's members; never what other peers sent (no relaying between peers).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use wireway_crds::conditions::reason;
use wireway_crds::{Cidr, ServicePeer, SpiffeId};
use wireway_proto::Peer as WireGuardPeer;

use super::{Entry, Spec};
use crate::plan::admission::{Candidate, Decision, Policy};
use crate::plan::index::Index;
use crate::plan::world::{Half, HalfMember, HalfNode, MemberDecision, Peer};
use crate::plan::{ObjectKey, key_length, status};

/// Seconds between keepalives to a remote node: keeps NAT state open whichever side is
/// behind it.
pub const REMOTE_KEEPALIVE: u32 = 25;
/// Refused members named in a peer's status message; the count says the rest.
const REFUSALS_SHOWN: usize = 3;

/// What was decided about one peer cluster's half.
#[derive(Debug, Clone)]
pub(super) struct Remote {
    /// The PeerCluster's name.
    pub name: String,
    /// The service's status entry for it.
    pub status: ServicePeer,
    /// Its nodes with admitted members, as WireGuard peers of every carrying node.
    pub wireguard_peers: Vec<WireGuardPeer>,
    /// This cluster's decisions on its members, to send back.
    pub decisions: Vec<MemberDecision>,
    /// What it decided on this cluster's members, by address.
    pub verdicts: BTreeMap<IpAddr, MemberDecision>,
}

/// A remote node that passed: its prefix and WireGuard identity.
struct AcceptedNode<'p> {
    node: &'p HalfNode,
    prefix: IpNet,
    endpoint: Option<SocketAddr>,
}

/// Decides every peer cluster's half of `target`. `taken` holds the addresses of this
/// cluster's members and external hosts (a remote member may not reuse one); admission
/// counts per Admission are added to `admission_counts`.
pub(super) fn remotes(
    index: &Index,
    target: &ObjectKey,
    spec: &Spec,
    policy: &Policy,
    taken: &BTreeSet<IpAddr>,
    admission_counts: &mut BTreeMap<ObjectKey, (i32, i32)>,
) -> Vec<Remote> {
    let mut slices: Vec<(Cidr, &str)> = Vec::new();
    let mut remote_keys: BTreeSet<&str> = BTreeSet::new();
    let mut remotes = Vec::new();
    for peer in index.peers_for(target) {
        let mut remote = Remote {
            name: peer.name.clone(),
            status: ServicePeer {
                cluster: peer.name.clone(),
                connected: peer.connected,
                last_sync: peer.last_sync.clone(),
                ..ServicePeer::default()
            },
            wireguard_peers: Vec::new(),
            decisions: Vec::new(),
            verdicts: BTreeMap::new(),
        };
        let own = index.trust_domain.as_ref().map_or("", |td| td.as_str());
        match accept_half(own, peer, target, spec, &slices) {
            Err((why, message)) => {
                remote.status.reason = Some(why.to_owned());
                remote.status.message = Some(message);
            }
            Ok((slice, half)) => {
                slices.push((slice, &peer.name));
                let nodes = accept_nodes(index, slice, half, &mut remote_keys);
                let admit = |identity: &SpiffeId| {
                    let candidate = Candidate {
                        identity,
                        local_namespace: None,
                    };
                    policy.decide(candidate, &target.namespace)
                };
                decide_members(
                    peer,
                    &admit,
                    taken,
                    half,
                    &nodes,
                    admission_counts,
                    &mut remote,
                );
                remote.verdicts = half
                    .decisions
                    .iter()
                    .filter_map(|d| Some((d.address.parse().ok()?, d.clone())))
                    .collect();
            }
        }
        remotes.push(remote);
    }
    remotes
}

/// The peer's slice and half, or why it takes no part.
fn accept_half<'p>(
    index_trust_domain: &str,
    peer: &'p Peer,
    target: &ObjectKey,
    spec: &Spec,
    earlier: &[(Cidr, &str)],
) -> Result<(Cidr, &'p Half), (&'static str, String)> {
    if index_trust_domain == peer.trust_domain {
        let message = format!(
            "PeerCluster {} has this cluster's own trust domain {}: its members could pass for this cluster's",
            peer.name, peer.trust_domain
        );
        return Err((reason::INVALID_SPEC, message));
    }
    let written = peer.shares.get(target).map_or("", String::as_str);
    let slice: Cidr = written.parse().map_err(|e| {
        let message = format!("PeerCluster {}: slice {written:?}: {e}", peer.name);
        (reason::INVALID_SPEC, message)
    })?;
    if !spec.cidr.contains(&slice) {
        let message = format!(
            "slice {slice} lies outside the service's cidr {}",
            spec.cidr
        );
        return Err((reason::OVERLAPPING_PREFIX, message));
    }
    if spec.pool.overlaps(&slice) {
        let message = if spec.pool == spec.cidr {
            format!(
                "slice {slice} overlaps this cluster's, the whole cidr: set the service's clusterPrefix to a slice of its own"
            )
        } else {
            format!("slice {slice} overlaps this cluster's slice {}", spec.pool)
        };
        return Err((reason::OVERLAPPING_PREFIX, message));
    }
    if let Some((other, name)) = earlier.iter().find(|(s, _)| s.overlaps(&slice)) {
        let message = format!("slice {slice} overlaps slice {other} of peer cluster {name}");
        return Err((reason::OVERLAPPING_PREFIX, message));
    }
    let half = peer.halves.get(target).ok_or_else(|| {
        let message = format!(
            "peer cluster {} has not sent its half of the service",
            peer.name
        );
        (reason::NOT_CONNECTED, message)
    })?;
    if half.cidr.parse::<Cidr>().ok() != Some(spec.cidr) {
        let message = format!(
            "its half of the service has cidr {:?}, this one {}",
            half.cidr, spec.cidr
        );
        return Err((reason::CIDR_MISMATCH, message));
    }
    Ok((slice, half))
}

/// The half's nodes by name: accepted, or why not (their members are refused for it).
fn accept_nodes<'p>(
    index: &Index,
    slice: Cidr,
    half: &'p Half,
    remote_keys: &mut BTreeSet<&'p str>,
) -> BTreeMap<&'p str, Result<AcceptedNode<'p>, (&'static str, String)>> {
    let mut nodes = BTreeMap::new();
    for node in &half.nodes {
        let verdict = accept_node(index, slice, node, remote_keys);
        if nodes.insert(node.name.as_str(), verdict).is_some() {
            let message = format!("node {} is sent twice", node.name);
            nodes.insert(node.name.as_str(), Err((reason::INVALID_SPEC, message)));
        }
    }
    nodes
}

fn accept_node<'p>(
    index: &Index,
    slice: Cidr,
    node: &'p HalfNode,
    remote_keys: &mut BTreeSet<&'p str>,
) -> Result<AcceptedNode<'p>, (&'static str, String)> {
    let name = &node.name;
    let prefix: Cidr = node.prefix.parse().map_err(|e| {
        let message = format!("node {name}: prefix {:?}: {e}", node.prefix);
        (reason::INVALID_SPEC, message)
    })?;
    if !slice.contains(&prefix) {
        let message = format!("node {name}: prefix {prefix} lies outside the slice {slice}");
        return Err((reason::OUTSIDE_SLICE, message));
    }
    if key_length(&node.public_key) != Some(32) {
        let message = format!("node {name}: public key is not 32 bytes of base64");
        return Err((reason::INVALID_SPEC, message));
    }
    if index.node_key_taken(&node.public_key) || !remote_keys.insert(&node.public_key) {
        let message = format!("node {name}: public key is already another node's");
        return Err((reason::DUPLICATE_NODE_KEY, message));
    }
    let endpoint = match &node.endpoint {
        None => None,
        Some(written) => Some(written.parse::<SocketAddr>().map_err(|_| {
            let message = format!("node {name}: endpoint {written:?} is not ip:port");
            (reason::INVALID_SPEC, message)
        })?),
    };
    Ok(AcceptedNode {
        node,
        prefix: prefix.net(),
        endpoint,
    })
}

/// Decides the half's members: held to the trust domain and their node's prefix, then
/// to the service's Admissions. Fills `remote`'s counts, decisions, message and peers.
fn decide_members(
    peer: &Peer,
    admit: &dyn Fn(&SpiffeId) -> Decision,
    taken: &BTreeSet<IpAddr>,
    half: &Half,
    nodes: &BTreeMap<&str, Result<AcceptedNode<'_>, (&'static str, String)>>,
    admission_counts: &mut BTreeMap<ObjectKey, (i32, i32)>,
    remote: &mut Remote,
) {
    // An address sent for two members is neither's: decisions go back by address, and
    // which of them sends from it could not be told.
    let mut seen: BTreeSet<IpAddr> = BTreeSet::new();
    let twice: BTreeSet<IpAddr> = half
        .members
        .iter()
        .filter_map(|m| m.address.parse().ok())
        .filter(|a| !seen.insert(*a))
        .collect();
    let mut allowed: BTreeMap<&str, Vec<IpNet>> = BTreeMap::new();
    let mut refusals: Vec<String> = Vec::new();
    let mut members: Vec<&HalfMember> = half.members.iter().collect();
    members.sort();
    for member in members {
        let checked = check_member(peer, taken, &twice, nodes, member);
        let (admitted, why, message) = match &checked {
            Err((why, message)) => (false, *why, message.clone()),
            Ok((identity, _, _)) => {
                let decision = admit(identity);
                super::stages::tally(admission_counts, &decision);
                (decision.admitted, decision.reason, decision.message)
            }
        };
        if let (true, Ok((_, node, address))) = (admitted, &checked) {
            allowed.entry(node).or_default().push(IpNet::from(*address));
            remote.status.members_admitted += 1;
        } else {
            remote.status.members_refused += 1;
            if refusals.len() < REFUSALS_SHOWN {
                let refusal = format!("{} ({why}): {message}", member.name);
                refusals.push(status::clip(&refusal, status::PEER_TEXT_MAX));
            }
        }
        remote.decisions.push(MemberDecision {
            address: member.address.clone(),
            admitted,
            reason: why.to_owned(),
            message,
        });
    }
    if remote.status.members_refused > 0 {
        let refused = usize::try_from(remote.status.members_refused).unwrap_or_default();
        let refused = status::count_of(refused, "member");
        remote.status.message = Some(format!("{refused} refused: {}", refusals.join("; ")));
    }
    for (name, addresses) in allowed {
        let Some(Ok(node)) = nodes.get(name) else {
            continue;
        };
        let mut allowed_ips: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        allowed_ips.sort();
        remote.wireguard_peers.push(WireGuardPeer {
            name: format!("peer:{}/{name}", peer.name),
            public_key: node.node.public_key.clone(),
            endpoint: node.endpoint.map(|e| e.to_string()).unwrap_or_default(),
            allowed_ips,
            persistent_keepalive: REMOTE_KEEPALIVE,
        });
    }
    remote.status.nodes = count(remote.wireguard_peers.len());
}

/// A member held to the peer's trust domain and its node's prefix: its identity, node
/// and address, or why it is refused.
fn check_member<'m>(
    peer: &Peer,
    taken: &BTreeSet<IpAddr>,
    twice: &BTreeSet<IpAddr>,
    nodes: &BTreeMap<&str, Result<AcceptedNode<'_>, (&'static str, String)>>,
    member: &'m HalfMember,
) -> Result<(SpiffeId, &'m str, IpAddr), (&'static str, String)> {
    let identity: SpiffeId = member.identity.parse().map_err(|e| {
        let message = format!("identity {:?}: {e}", member.identity);
        (reason::INVALID_SPEC, message)
    })?;
    if identity.trust_domain() != peer.trust_domain {
        let message = format!(
            "identity {identity} lies outside the peer's trust domain {}",
            peer.trust_domain
        );
        return Err((reason::OUTSIDE_TRUST_DOMAIN, message));
    }
    let node = match nodes.get(member.node.as_str()) {
        Some(Ok(node)) => node,
        Some(Err((why, message))) => return Err((why, message.clone())),
        None => {
            let message = format!("node {:?} is not in the peer's half", member.node);
            return Err((reason::INVALID_SPEC, message));
        }
    };
    let address: IpAddr = member.address.parse().map_err(|_| {
        let message = format!("address {:?} is not an IP address", member.address);
        (reason::INVALID_SPEC, message)
    })?;
    if !node.prefix.contains(&address) {
        let message = format!(
            "address {address} lies outside the prefix {} of node {}",
            node.prefix, node.node.name
        );
        return Err((reason::OUTSIDE_SLICE, message));
    }
    if taken.contains(&address) {
        let message = format!("address {address} is already a member's of this cluster");
        return Err((reason::OVERLAPPING_PREFIX, message));
    }
    if twice.contains(&address) {
        let message = format!("address {address} is sent for more than one member");
        return Err((reason::OVERLAPPING_PREFIX, message));
    }
    Ok((identity, &member.node, address))
}

fn count(n: impl TryInto<i32>) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

/// This cluster's half for each peer: its carrying nodes (those with a key; the endpoint
/// is the underlay address and the service's port, absent without an underlay), its
/// admitted pods with addresses, and its decisions on that peer's members.
pub(super) fn halves(
    index: &Index,
    spec: &Spec,
    port: Option<u16>,
    carrying: &BTreeMap<String, IpNet>,
    entries: &[Entry<'_>],
    remotes: &[Remote],
) -> BTreeMap<String, Half> {
    let nodes: Vec<HalfNode> = carrying
        .iter()
        .filter_map(|(name, prefix)| {
            let node = index.nodes.get(name)?;
            Some(HalfNode {
                name: name.clone(),
                public_key: node.public_key.clone()?,
                endpoint: node
                    .underlay
                    .zip(port)
                    .map(|(ip, port)| SocketAddr::new(ip, port).to_string()),
                prefix: prefix.to_string(),
            })
        })
        .collect();
    let mut members: Vec<HalfMember> = entries
        .iter()
        .filter(|e| e.member())
        .filter_map(|e| {
            let pod = e.pod()?;
            Some(HalfMember {
                name: format!("{}/{}", pod.namespace, pod.name),
                identity: e.identity.as_ref().ok()?.to_string(),
                address: e.address?.to_string(),
                node: pod.node.clone()?,
            })
        })
        .collect();
    members.sort();
    remotes
        .iter()
        .map(|remote| {
            let half = Half {
                cidr: spec.cidr.to_string(),
                nodes: nodes.clone(),
                members: members.clone(),
                decisions: remote.decisions.clone(),
            };
            (remote.name.clone(), half)
        })
        .collect()
}
