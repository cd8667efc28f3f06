//! Hostile bytes against the parsers that read what others write: manifests (anyone who
//! can commit to a GitOps repository), SPIFFE IDs (tenants' Endpoints and Admissions),
//! NodeStates (the operator, or whoever impersonates it), what a userspace WireGuard
//! device answers, the cgroup names and files the agent reads to find pods, the DNS queries
//! members send their gateway, what a peer cluster's operator (another company's)
//! sends over federation, and the packets a peer sends through the tunnel as the
//! userspace device writes them to its TUN interface.
//!
//! Each function here is one fuzz target: it must return for every input, never panic,
//! and it checks what must hold for any input, not only that nothing crashed. The
//! targets in `fuzz_targets/` call these under libFuzzer (`cargo fuzz run TARGET
//! --features libfuzzer`); `tests/corpora.rs` replays every committed corpus file through
//! them on stable, so `make test` re-checks everything the fuzzer once found interesting.

mod tun_writes;

pub use tun_writes::{tun_writes, tun_writes_coalesced};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use prost::Message;
use wireway_agent::converge::{self, NetnsId, ResolvedNetns};
use wireway_agent::dataplane::{pods, wireguard::userspace};
use wireway_agent::dns::answer::{Response, Zones};
use wireway_crds::validation::Validator;
use wireway_crds::{Members, SpiffeId, manifest};
use wireway_proto::{NetnsLocator, NodeState};

/// A fuzz target: any bytes in, a panic if what must hold does not.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz_targets/` and `corpus/` name them.
pub const TARGETS: [(&str, Target); 9] = [
    ("manifest", manifest),
    ("spiffe_id", spiffe_id),
    ("node_state", node_state),
    ("uapi", uapi),
    ("cgroup_name", cgroup_name),
    ("pod_cgroup_files", pod_cgroup_files),
    ("dns_query", dns_query),
    ("federation", federation),
    ("tun_writes", tun_writes),
];

/// A manifest file: split into documents and each validated as the API server would.
/// Anything goes in; out come documents, problems and verdicts, never a panic.
pub fn manifest(data: &[u8]) {
    manifest_rules(data);
}

/// What [`manifest`] does, returning the rules that rejected something in `data` (CEL
/// rules as written in the CRDs, schema keywords by name): the corpus replay checks that
/// some input breaks every CEL rule.
pub fn manifest_rules(data: &[u8]) -> BTreeSet<String> {
    static VALIDATOR: OnceLock<Option<Validator>> = OnceLock::new();
    let mut rules = BTreeSet::new();
    let Ok(text) = std::str::from_utf8(data) else {
        return rules;
    };
    let Some(validator) = VALIDATOR.get_or_init(|| Validator::new().ok()) else {
        panic!("the CRDs' schemas do not compile");
    };
    let documents: Vec<_> = manifest::documents(text).into_iter().flatten().collect();
    let mut verdict = |object, old| {
        if let Err(violations) = validator.validate(object, old) {
            rules.extend(violations.into_iter().map(|v| v.rule));
        }
    };
    for (i, document) in documents.iter().enumerate() {
        verdict(&document.value, None);
        // Every object also as an update of the one before it: the transition rules
        // (oldSelf) see two unrelated objects.
        if let Some(previous) = i.checked_sub(1).map(|p| &documents[p].value) {
            verdict(&document.value, Some(previous));
        }
    }
    rules
}

/// A SPIFFE ID: what parses prints back to itself and parses again to the same ID, and a
/// parsed ID lies below itself.
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(id) = text.parse::<SpiffeId>() else {
        return;
    };
    let again: SpiffeId = match id.as_str().parse() {
        Ok(again) => again,
        Err(e) => panic!("{id} does not parse again: {e}"),
    };
    assert_eq!(id, again, "{text:?} does not round-trip");
    assert!(id.has_prefix(&id), "{id} is not below itself");
}

/// A NodeState as the agent receives it: decoded, turned into the data plane it asks
/// for (every namespace found), and converged. Whatever the bytes, converging the
/// desired plane onto itself must ask for nothing (the agent must never loop on its
/// own state), and from nothing it must ask only for what the state holds.
pub fn node_state(data: &[u8]) {
    let Ok(state) = NodeState::decode(data) else {
        return;
    };
    let found = |locator: &NetnsLocator| -> Result<ResolvedNetns, String> {
        let key = format!("{locator:?}");
        Ok(ResolvedNetns {
            path: format!("/run/netns/{}", key.len()),
            id: NetnsId {
                dev: 4,
                ino: key.len() as u64,
            },
        })
    };
    let (desired, _problems) = converge::desired(&state, found);
    let in_sync = converge::converge(&desired, &desired);
    assert!(in_sync.is_empty(), "a state in sync asks for {in_sync:?}");
    let _from_nothing = converge::converge(&desired, &converge::Plane::default());
    // Its names too: built, and asked for one of them on every member's veth.
    let zones = Zones::new(&state);
    for member in state.services.iter().flat_map(|s| &s.members) {
        let _ = zones.respond(&member.host_interface_name, QUERY, true);
    }
}

/// A query for `a.b.c.wireway.internal` (A), as a member would send it.
const QUERY: &[u8] = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x01b\x01c\x07wireway\x08internal\x00\x00\x01\x00\x01";

/// A DNS message from a member: the first byte picks the veth it arrives on (a member of
/// red, IPv4, in a pod also in blue, IPv6; or no member's) and UDP or TCP, the rest is the
/// message. A reply is a response to it (same id, QR set) and fits its transport: over
/// UDP 1,232 bytes at most (512 without EDNS), over TCP 65,535.
pub fn dns_query(data: &[u8]) {
    static ZONES: OnceLock<Zones> = OnceLock::new();
    let Some((&selector, query)) = data.split_first() else {
        return;
    };
    let zones = ZONES.get_or_init(|| Zones::new(&dns_state()));
    let veth = ["wwv0000000a", "wwv0000000c", "wwvnobody"][usize::from(selector % 3)];
    let udp = selector & 0x80 == 0;
    let Response::Reply { bytes, .. } = zones.respond(veth, query, udp) else {
        return;
    };
    let limit = if udp { 1232 } else { 65535 };
    assert!(bytes.len() <= limit, "a reply of {} bytes", bytes.len());
    assert_eq!(
        bytes.get(..2),
        query.get(..2),
        "the reply's id is not the query's"
    );
    assert!(
        bytes.get(2).is_some_and(|b| b & 0x80 != 0),
        "the reply is no response"
    );
}

/// Red (IPv4: red-a, red-b, an Endpoint of both) and blue (IPv6: red-a), with names.
fn dns_state() -> NodeState {
    use wireway_agent::testing::{ServiceFixture, green, red};
    use wireway_proto::{DnsRecord, ServiceDns};
    let record = |name: &str, addresses: &[&str]| {
        std::sync::Arc::new(DnsRecord {
            name: name.to_owned(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        })
    };
    let mut red = red();
    red.dns = Some(ServiceDns {
        zone: "red.red.wireway.internal".into(),
        records: vec![
            record("red-a.red-members.red", &["10.100.0.1"]),
            record("red-b.red-members.red", &["10.100.0.2"]),
            record("red-members.red", &["10.100.0.1", "10.100.0.2"]),
        ]
        .into(),
    });
    let mut blue = green().port(51822);
    if let Some(member) = blue.members.first_mut() {
        member.id = "red/red-a".into();
    }
    blue.dns = Some(ServiceDns {
        zone: "blue.red.wireway.internal".into(),
        records: vec![record("red-a.blue-members.red", &["fd00:200::1"])].into(),
    });
    let mut state = wireway_agent::testing::node("node-1");
    state.services = vec![blue, red];
    state
}

/// What a userspace WireGuard device answers to `get=1`: every peer parsed has its
/// statistics, and every peer key is a WireGuard key (32 bytes, as base64).
pub fn uapi(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let state = userspace::parse_get(text);
    assert!(
        state.peers.keys().eq(state.stats.keys()),
        "peers and statistics disagree"
    );
    for key in state.peers.keys() {
        assert_eq!(key.len(), 44, "{key:?} is no WireGuard key");
    }
}

/// A cgroup directory's name, as the agent reads them to find a pod: a UID found is one
/// as the kubelet writes it (8-4-4-4-12 lowercase hexadecimal digits and dashes), and
/// the name spells it, with dashes or with underscores.
pub fn cgroup_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(uid) = pods::pod_uid(name) {
        let groups: Vec<usize> = uid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{uid:?}");
        assert!(
            uid.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c) || c == '-'),
            "{uid:?}"
        );
        let systemd = uid.replace('-', "_");
        assert!(
            name.contains(&format!("pod{uid}")) || name.contains(&format!("pod{systemd}")),
            "{uid:?} is not spelled in {name:?}"
        );
    }
}

/// The files the agent reads to find a pod's processes, as a pod's own processes could
/// shape them (a container may name cgroups below its own): the bytes read as a
/// process's `/proc/<pid>/cgroup` and as a `cgroup.procs`. A process is in a pod only
/// if a whole directory of a line's path names it (so also by substring: never more
/// than the check it replaced), every pod a directory names is one the process is in,
/// and a listed PID is digits only.
pub fn pod_cgroup_files(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let named: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .filter_map(pods::pod_uid)
        .collect();
    for uid in &named {
        assert!(pods::in_pod(text, uid), "{uid} is named but not found");
    }
    for uid in named.iter().map(String::as_str).chain([
        "0f4e9b1c-3a2d-4c5e-8f6a-7b8c9d0e1f2a",
        "00000000-0000-0000-0000-000000000000",
    ]) {
        let systemd = uid.replace('-', "_");
        let listed = text.contains(&format!("pod{uid}")) || text.contains(&format!("pod{systemd}"));
        assert_eq!(pods::in_pod(text, uid), named.contains(uid), "{uid}");
        assert!(
            !pods::in_pod(text, uid) || listed,
            "{uid} is not even in the text"
        );
    }
    for pid in pods::pids(text) {
        assert!(
            !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()),
            "{pid:?}"
        );
    }
}

/// A peer cluster's federation update, as its operator (another company's) may send
/// it: decoded, taken by the exchange as the first update of a connection, and planned
/// into this cluster's World, where it shares red/red (10.100.0.0/16; this cluster's
/// slice the lower half, the peer's the upper) and red admits the peer's trust domain.
/// Whatever it says, this cluster's own nodes keep exactly what they hold without it
/// (members, addresses, prefixes, their peers among themselves, names), and what it adds
/// to them is WireGuard peers with a key of their own (no local node's, no other
/// peer's), the keepalive, and allowed IPs that are single addresses of its slice; what
/// it says of this cluster's members is clipped.
pub fn federation(data: &[u8]) {
    federation_peers(data);
}

/// What [`federation`] does, returning how many WireGuard peers the update gave this
/// cluster's nodes: the corpus replay checks that some input gets that far.
pub fn federation_peers(data: &[u8]) -> usize {
    use wireway_operator::federation::exchange::Inbox;
    use wireway_operator::plan::{self, status::PEER_TEXT_MAX};
    use wireway_proto::federation::FederationUpdate;
    static ALONE: OnceLock<plan::Plan> = OnceLock::new();
    let Ok(update) = FederationUpdate::decode(data) else {
        return 0;
    };
    let shared = BTreeSet::from([plan::ObjectKey::new("red", "red")]);
    let first = FederationUpdate {
        sequence: 1,
        full: true,
        ..update
    };
    let Ok(halves) = Inbox::default().apply(first, &shared).cloned() else {
        panic!("the first full update of a connection is refused");
    };
    let alone = ALONE.get_or_init(|| plan::plan(&federated_world(BTreeMap::new()), None));
    let with = plan::plan(&federated_world(halves), None);
    let slice: ipnet::IpNet = FEDERATION_SLICE.parse().unwrap_or_else(|e| panic!("{e}"));
    let mut added = 0;
    assert_eq!(
        with.nodes.keys().collect::<Vec<_>>(),
        alone.nodes.keys().collect::<Vec<_>>(),
        "the peer changed which nodes hold a state"
    );
    for (node, state) in &with.nodes {
        let mut own = state.clone();
        for service in &mut own.services {
            service.peers.retain(|p| !p.name.starts_with("peer:"));
        }
        assert_eq!(
            &own, &alone.nodes[node],
            "the peer changed {node}'s own state"
        );
        for service in &state.services {
            let mut keys = BTreeSet::new();
            for peer in &service.peers {
                assert!(
                    keys.insert(&peer.public_key),
                    "{node}: key {} twice",
                    peer.public_key
                );
                if !peer.name.starts_with("peer:") {
                    continue;
                }
                added += 1;
                assert_eq!(plan::key_length(&peer.public_key), Some(32), "{peer:?}");
                assert_eq!(peer.persistent_keepalive, 25, "{peer:?}");
                assert!(
                    peer.endpoint.is_empty()
                        || peer.endpoint.parse::<std::net::SocketAddr>().is_ok(),
                    "{peer:?}"
                );
                assert!(!peer.allowed_ips.is_empty(), "{peer:?}");
                for allowed in &peer.allowed_ips {
                    let net: ipnet::IpNet =
                        allowed.parse().unwrap_or_else(|e| panic!("{allowed}: {e}"));
                    assert!(
                        net.prefix_len() == net.max_prefix_len() && slice.contains(&net),
                        "{node}: {} may send from {net}",
                        peer.name
                    );
                }
            }
        }
    }
    for (key, status) in &with.endpoints {
        let members: Vec<_> = status
            .members
            .iter()
            .cloned()
            .map(|mut member| {
                for said in std::mem::take(&mut member.peers) {
                    assert!(
                        said.reason.len() <= PEER_TEXT_MAX && said.message.len() <= PEER_TEXT_MAX
                    );
                }
                member
            })
            .collect();
        assert_eq!(
            Members::from(members),
            alone.endpoints[key].members,
            "the peer changed {key}'s members"
        );
    }
    added
}

/// An object of the World, as JSON.
fn object<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> T {
    serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"))
}

/// The peer cluster's slice of red/red.
const FEDERATION_SLICE: &str = "10.100.128.0/17";

/// This cluster (trust domain `a.example`): red/red with red-a on node-1 and red-b on
/// node-2, admitting trust domain `b.example`, shared with PeerCluster `b` (of that
/// trust domain), whose halves are `halves`.
fn federated_world(
    halves: BTreeMap<wireway_operator::plan::ObjectKey, wireway_operator::plan::Half>,
) -> wireway_operator::plan::World {
    use wireway_operator::plan::{Bounds, Node, ObjectKey, Peer, Pod, World};
    let node = |n: u8| Node {
        name: format!("node-{n}"),
        public_key: Some(format!("{}{}=", "A".repeat(42), char::from(b'A' + 4 * n))),
        underlay: Some(std::net::IpAddr::from([192, 0, 2, n])),
        ..Node::default()
    };
    let pod = |name: &str, node: &str| Pod {
        namespace: "red".into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        node: Some(node.into()),
        service_account: "default".into(),
        labels: [("net".to_owned(), "red".to_owned())].into(),
        netns: None,
    };
    World {
        trust_domain: "a.example".into(),
        now: object(serde_json::json!("2026-01-01T00:00:00Z")),
        nodes: vec![node(1), node(2)],
        namespaces: Vec::new(),
        pods: vec![pod("red-a", "node-1"), pod("red-b", "node-2")],
        network_services: vec![object(serde_json::json!({
            "apiVersion": "wireway.dev/v1alpha1", "kind": "NetworkService",
            "metadata": {"namespace": "red", "name": "red", "generation": 1},
            "spec": {"cidr": "10.100.0.0/16", "clusterPrefix": "10.100.0.0/17", "nodePrefixLength": 24},
        }))],
        endpoints: vec![object(serde_json::json!({
            "apiVersion": "wireway.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"namespace": "red", "name": "members", "generation": 1},
            "spec": {"networkService": {"name": "red"}, "podSelector": {"matchLabels": {"net": "red"}}},
        }))],
        admissions: vec![object(serde_json::json!({
            "apiVersion": "wireway.dev/v1alpha1", "kind": "Admission",
            "metadata": {"namespace": "red", "name": "admit-b", "generation": 1},
            "spec": {"networkService": "red", "allow": [{"trustDomain": "b.example"}]},
        }))],
        identity_grants: Vec::new(),
        service_cidrs: Vec::new(),
        bounds: Bounds::default(),
        peers: vec![Peer {
            name: "b".into(),
            trust_domain: "b.example".into(),
            shares: BTreeMap::from([(ObjectKey::new("red", "red"), FEDERATION_SLICE.to_owned())]),
            connected: true,
            last_sync: None,
            halves,
        }],
    }
}
