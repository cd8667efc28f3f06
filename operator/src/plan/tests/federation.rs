//! Peer clusters: what a peer's half may install, and what this cluster's half says.

use std::collections::BTreeMap;

use base64::Engine as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

const TD_A: &str = "cluster-a.example";
const TD_B: &str = "cluster-b.example";

/// A valid WireGuard public key, different for every `n`.
fn key(n: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

fn trust_domain(td: &str) -> AdmissionRule {
    AdmissionRule {
        spiffe_id: None,
        spiffe_id_prefix: None,
        trust_domain: Some(td.into()),
        namespace_selector: None,
    }
}

fn remote_node(name: &str, n: u8, endpoint: Option<&str>, prefix: &str) -> HalfNode {
    HalfNode {
        name: name.into(),
        public_key: key(n),
        endpoint: endpoint.map(Into::into),
        prefix: prefix.into(),
    }
}

fn remote_member(name: &str, identity: &str, address: &str, node: &str) -> HalfMember {
    HalfMember {
        name: name.into(),
        identity: identity.into(),
        address: address.into(),
        node: node.into(),
    }
}

/// Cluster B's half of red/red: two nodes (b-2 behind NAT), a member admitted by red's
/// Admission on each, one of a denied namespace, one claiming an identity of cluster A,
/// one with an address in A's slice, one outside its node's prefix.
fn half_of_b() -> Half {
    let id = |path: &str| format!("spiffe://{TD_B}/{path}");
    Half {
        cidr: "10.100.0.0/16".into(),
        nodes: vec![
            remote_node("b-1", 11, Some("198.51.100.1:52000"), "10.100.128.0/24"),
            remote_node("b-2", 12, None, "10.100.129.0/24"),
        ],
        members: vec![
            remote_member("red/web", &id("ns/red/sa/web"), "10.100.128.1", "b-1"),
            remote_member("red/db", &id("ns/red/sa/db"), "10.100.129.1", "b-2"),
            remote_member("blocked/x", &id("ns/blocked/sa/x"), "10.100.128.2", "b-1"),
            remote_member(
                "red/impostor",
                &format!("spiffe://{TD_A}/ns/red/sa/default"),
                "10.100.128.3",
                "b-1",
            ),
            remote_member("red/squatter", &id("ns/red/sa/s"), "10.100.0.9", "b-1"),
            remote_member("red/stray", &id("ns/red/sa/t"), "10.100.129.7", "b-1"),
        ],
        decisions: Vec::new(),
    }
}

fn peer_b(half: Option<Half>) -> Peer {
    let target = ObjectKey::new("red", "red");
    Peer {
        name: "cluster-b".into(),
        trust_domain: TD_B.into(),
        shares: BTreeMap::from([(target.clone(), "10.100.128.0/17".to_owned())]),
        connected: true,
        last_sync: Some(Time(Timestamp::UNIX_EPOCH)),
        halves: half.into_iter().map(|h| (target.clone(), h)).collect(),
    }
}

/// Cluster A: red/red (its slice the lower half) with red-a on node-1 and red-b on
/// node-2; red admits cluster B's trust domain but denies B's namespace blocked; B shares
/// red/red with the upper half as its slice.
fn cluster_a() -> World {
    let mut w = world();
    w.trust_domain = TD_A.into();
    let mut red = service("red", "red", "10.100.0.0/16", 24);
    red.spec.cluster_prefix = Some("10.100.0.0/17".into());
    w.network_services = vec![red];
    w.pods = vec![
        Pod::test("red", "red-a")
            .on("node-1")
            .labelled(&[("net", "red")]),
        Pod::test("red", "red-b")
            .on("node-2")
            .labelled(&[("net", "red")]),
    ];
    w.endpoints = vec![attach("red", "red-members", "red", &[("net", "red")])];
    w.admissions = vec![admission(
        "red",
        "admit-b",
        "red",
        vec![trust_domain(TD_B)],
        vec![prefix(&format!("spiffe://{TD_B}/ns/blocked"))],
    )];
    w.peers = vec![peer_b(Some(half_of_b()))];
    w
}

fn red_on<'p>(plan: &'p Plan, node: &str) -> &'p wireway_proto::ServiceState {
    plan.nodes[node]
        .services
        .iter()
        .find(|s| s.name == "red/red")
        .unwrap_or_else(|| panic!("red/red is not on {node}"))
}

/// The peers of red/red on `node` that are cluster B's nodes: (name, endpoint, allowed).
fn remote_peers(plan: &Plan, node: &str) -> Vec<(String, String, Vec<String>)> {
    red_on(plan, node)
        .peers
        .iter()
        .filter(|p| p.name.starts_with("peer:"))
        .map(|p| (p.name.clone(), p.endpoint.clone(), p.allowed_ips.clone()))
        .collect()
}

fn peer_status(plan: &Plan) -> &wireway_crds::ServicePeer {
    let status = &plan.network_services[&ObjectKey::new("red", "red")];
    status
        .peers
        .iter()
        .find(|p| p.cluster == "cluster-b")
        .expect("cluster-b in red's status")
}

fn decision<'p>(plan: &'p Plan, address: &str) -> &'p MemberDecision {
    plan.federation["cluster-b"][&ObjectKey::new("red", "red")]
        .decisions
        .iter()
        .find(|d| d.address == address)
        .unwrap_or_else(|| panic!("no decision on {address}"))
}

#[test]
fn a_peer_clusters_admitted_members_are_peers_of_every_node_with_their_addresses_only() {
    let plan = plan(&cluster_a(), None);
    for node in ["node-1", "node-2"] {
        assert_eq!(
            remote_peers(&plan, node),
            [
                (
                    "peer:cluster-b/b-1".to_owned(),
                    "198.51.100.1:52000".to_owned(),
                    vec!["10.100.128.1/32".to_owned()]
                ),
                (
                    "peer:cluster-b/b-2".to_owned(),
                    String::new(),
                    vec!["10.100.129.1/32".to_owned()]
                ),
            ],
            "{node}"
        );
        let keepalive = red_on(&plan, node)
            .peers
            .iter()
            .filter(|p| p.name.starts_with("peer:"))
            .all(|p| p.persistent_keepalive == 25);
        assert!(
            keepalive,
            "remote nodes get keepalives (NAT on either side)"
        );
    }
    let status = peer_status(&plan);
    assert_eq!(
        (
            status.connected,
            status.nodes,
            status.members_admitted,
            status.members_refused
        ),
        (true, 2, 2, 4)
    );
    assert!(status.reason.is_none(), "{status:?}");
    let message = status.message.as_deref().unwrap_or_default();
    assert!(message.starts_with("4 members refused: "), "{message}");
    let admission = &plan.admissions[&ObjectKey::new("red", "admit-b")];
    assert_eq!((admission.admitted_count, admission.denied_count), (2, 1));
}

#[test]
fn a_remote_workload_denied_here_holds_no_allowed_ip_on_any_node() {
    let plan = plan(&cluster_a(), None);
    let d = decision(&plan, "10.100.128.2");
    assert_eq!((d.admitted, d.reason.as_str()), (false, reason::DENIED));
    let everywhere: Vec<&String> = plan
        .nodes
        .values()
        .flat_map(|n| &n.services)
        .flat_map(|s| &s.peers)
        .flat_map(|p| &p.allowed_ips)
        .collect();
    for refused in ["10.100.128.2", "10.100.128.3", "10.100.0.9", "10.100.129.7"] {
        assert!(
            !everywhere
                .iter()
                .any(|a| a.starts_with(&format!("{refused}/"))),
            "{refused} is installed"
        );
    }
}

#[test]
fn a_peer_cannot_claim_an_identity_outside_its_trust_domain_nor_an_address_outside_its_slice() {
    let plan = plan(&cluster_a(), None);
    let reasons: Vec<(&str, bool, &str)> = ["10.100.128.3", "10.100.0.9", "10.100.129.7"]
        .into_iter()
        .map(|a| {
            let d = decision(&plan, a);
            (a, d.admitted, d.reason.as_str())
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("10.100.128.3", false, reason::OUTSIDE_TRUST_DOMAIN),
            ("10.100.0.9", false, reason::OUTSIDE_SLICE),
            ("10.100.129.7", false, reason::OUTSIDE_SLICE),
        ]
    );
    // A node prefix outside the slice takes its node and all its members out.
    let mut w = cluster_a();
    let half = w.peers[0].halves.values_mut().next().unwrap();
    half.nodes[1].prefix = "10.100.1.0/24".into();
    let plan = super::plan(&w, None);
    let d = decision(&plan, "10.100.129.1");
    assert_eq!(
        (d.admitted, d.reason.as_str()),
        (false, reason::OUTSIDE_SLICE)
    );
    assert_eq!(remote_peers(&plan, "node-1").len(), 1, "only b-1 is a peer");
}

#[test]
fn a_remote_node_presenting_a_local_nodes_key_is_refused() {
    let mut w = cluster_a();
    w.nodes[0].public_key = Some(key(11));
    let plan = plan(&w, None);
    let d = decision(&plan, "10.100.128.1");
    assert_eq!(
        (d.admitted, d.reason.as_str()),
        (false, reason::DUPLICATE_NODE_KEY)
    );
    let names: Vec<String> = remote_peers(&plan, "node-2")
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(names, ["peer:cluster-b/b-2"]);
}

#[test]
fn a_slice_overlapping_this_clusters_installs_nothing_and_says_why() {
    let mut w = cluster_a();
    w.network_services[0].spec.cluster_prefix = None;
    let plan = plan(&w, None);
    let status = peer_status(&plan);
    assert_eq!(status.reason.as_deref(), Some(reason::OVERLAPPING_PREFIX));
    assert!(
        status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("set the service's clusterPrefix"),
        "{status:?}"
    );
    assert!(remote_peers(&plan, "node-1").is_empty());
    assert!(
        plan.federation
            .get("cluster-b")
            .is_some_and(|h| h.values().all(|h| h.decisions.is_empty())),
        "no decision is made on a refused peer's members"
    );
}

#[test]
fn a_half_of_another_cidr_or_none_at_all_installs_nothing() {
    let mut w = cluster_a();
    w.peers[0].halves.values_mut().next().unwrap().cidr = "10.101.0.0/16".into();
    let plan = plan(&w, None);
    assert_eq!(
        peer_status(&plan).reason.as_deref(),
        Some(reason::CIDR_MISMATCH)
    );
    assert!(remote_peers(&plan, "node-1").is_empty());

    let mut w = cluster_a();
    w.peers = vec![peer_b(None)];
    let plan = super::plan(&w, None);
    assert_eq!(
        peer_status(&plan).reason.as_deref(),
        Some(reason::NOT_CONNECTED)
    );
    assert!(remote_peers(&plan, "node-1").is_empty());
}

#[test]
fn this_clusters_half_holds_its_nodes_its_own_members_and_its_decisions() {
    let plan = plan(&cluster_a(), None);
    let half = &plan.federation["cluster-b"][&ObjectKey::new("red", "red")];
    assert_eq!(half.cidr, "10.100.0.0/16");
    let port = plan.network_services[&ObjectKey::new("red", "red")]
        .listen_port
        .unwrap();
    let nodes: Vec<(&str, Option<&str>, &str)> = half
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.endpoint.as_deref(), n.prefix.as_str()))
        .collect();
    let endpoint = |n: u8| format!("192.168.77.{n}:{port}");
    assert_eq!(
        nodes,
        [
            ("node-1", Some(endpoint(1).as_str()), "10.100.0.0/24"),
            ("node-2", Some(endpoint(2).as_str()), "10.100.1.0/24"),
        ]
    );
    let members: Vec<(&str, &str, &str)> = half
        .members
        .iter()
        .map(|m| (m.name.as_str(), m.identity.as_str(), m.node.as_str()))
        .collect();
    assert_eq!(
        members,
        [
            (
                "red/red-a",
                "spiffe://cluster-a.example/ns/red/sa/default",
                "node-1"
            ),
            (
                "red/red-b",
                "spiffe://cluster-a.example/ns/red/sa/default",
                "node-2"
            ),
        ]
    );
    assert_eq!(half.decisions.len(), 6, "one per member B sent");
}

#[test]
fn what_a_peer_decided_on_a_member_shows_on_its_endpoint() {
    let first = plan(&cluster_a(), None);
    let address = member(&first, "red/red-members", "red-a")
        .address
        .clone()
        .unwrap();
    let mut w = cluster_a();
    let half = w.peers[0].halves.values_mut().next().unwrap();
    half.decisions = vec![MemberDecision {
        address: address.clone(),
        admitted: false,
        reason: reason::DENIED.into(),
        message: "denied by Admission red/no-a (deny[0]: spiffeId)".into(),
    }];
    let plan = plan(&w, None);
    let peers = &member(&plan, "red/red-members", "red-a").peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(
        (
            peers[0].cluster.as_str(),
            peers[0].admitted,
            peers[0].reason.as_str()
        ),
        ("cluster-b", false, reason::DENIED)
    );
    assert!(member(&plan, "red/red-members", "red-b").peers.is_empty());
}

#[test]
fn a_disconnected_peer_keeps_its_members_and_deleting_it_removes_them_everywhere() {
    let mut planner = Planner::new(cluster_a(), None);
    let first = planner.plan().clone();
    planner.apply(Change::PeerSent(PeerSent {
        peer: "cluster-b".into(),
        connected: false,
        last_sync: Some(Time(Timestamp::UNIX_EPOCH)),
        halves: None,
    }));
    let disconnected = planner.plan().clone();
    assert!(
        disconnected.changed_nodes.is_empty(),
        "a cut link changes no node"
    );
    assert_eq!(disconnected.nodes, first.nodes);
    assert!(!peer_status(&disconnected).connected);

    planner.apply(Change::PeerClusterDeleted("cluster-b".into()));
    let deleted = planner.plan().clone();
    assert_eq!(
        deleted.changed_nodes.iter().collect::<Vec<_>>(),
        ["node-1", "node-2"]
    );
    assert!(remote_peers(&deleted, "node-1").is_empty());
    assert!(remote_peers(&deleted, "node-2").is_empty());
    assert!(deleted.federation.is_empty(), "nothing more goes to it");
    assert!(
        deleted.network_services[&ObjectKey::new("red", "red")]
            .peers
            .is_empty()
    );
}

fn peer_cluster_object(slice: &str) -> wireway_crds::PeerCluster {
    wireway_crds::PeerCluster {
        metadata: ObjectMeta {
            name: Some("cluster-b".into()),
            ..ObjectMeta::default()
        },
        spec: wireway_crds::PeerClusterSpec {
            trust_domain: TD_B.into(),
            operator_identity: None,
            address: "fed.cluster-b.example:7443".into(),
            trust_bundle: String::new(),
            services: vec![wireway_crds::SharedService {
                namespace: "red".into(),
                name: "red".into(),
                prefix: slice.into(),
            }],
        },
        status: None,
    }
}

#[test]
fn a_peer_clusters_half_outlives_changes_of_its_peercluster_and_waits_for_one() {
    // Sent before any PeerCluster declares the peer: nothing.
    let mut w = cluster_a();
    w.peers.clear();
    let mut planner = Planner::new(w, None);
    planner.plan();
    let sent = PeerSent {
        peer: "cluster-b".into(),
        connected: true,
        last_sync: None,
        halves: Some([(ObjectKey::new("red", "red"), half_of_b())].into()),
    };
    planner.apply(Change::PeerSent(sent.clone()));
    assert!(remote_peers(planner.plan(), "node-1").is_empty());

    // Declared, then sent: installed; its PeerCluster changed: its half stays.
    planner.apply(Change::PeerCluster(Box::new(peer_cluster_object(
        "10.100.128.0/17",
    ))));
    planner.apply(Change::PeerSent(sent));
    assert_eq!(remote_peers(planner.plan(), "node-1").len(), 2);
    planner.apply(Change::PeerCluster(Box::new(peer_cluster_object(
        "10.100.128.0/18",
    ))));
    let narrowed = planner.plan().clone();
    assert_eq!(
        remote_peers(&narrowed, "node-1")
            .into_iter()
            .map(|p| p.0)
            .collect::<Vec<_>>(),
        ["peer:cluster-b/b-1", "peer:cluster-b/b-2"],
        "b-2's prefix 10.100.129.0/24 lies in the narrower slice too"
    );
    planner.apply(Change::PeerCluster(Box::new(peer_cluster_object(
        "10.100.192.0/18",
    ))));
    assert!(
        remote_peers(planner.plan(), "node-1").is_empty(),
        "a slice that no longer holds its nodes installs none of them"
    );
}

#[test]
fn an_address_sent_for_two_members_is_neithers() {
    let mut w = cluster_a();
    let half = w.peers[0].halves.values_mut().next().unwrap();
    // A refused member and an admitted one claiming red/web's address.
    half.members.push(remote_member(
        "red/twin",
        &format!("spiffe://{TD_B}/ns/red/sa/twin"),
        "10.100.128.1",
        "b-1",
    ));
    let plan = plan(&w, None);
    let on_1 = remote_peers(&plan, "node-1");
    assert_eq!(on_1.len(), 1, "only b-2 and its db: {on_1:?}");
    let decided: Vec<(bool, &str)> = plan.federation["cluster-b"][&ObjectKey::new("red", "red")]
        .decisions
        .iter()
        .filter(|d| d.address == "10.100.128.1")
        .map(|d| (d.admitted, d.reason.as_str()))
        .collect();
    assert_eq!(
        decided,
        [
            (false, reason::OVERLAPPING_PREFIX),
            (false, reason::OVERLAPPING_PREFIX)
        ]
    );
}

#[test]
fn a_peerclusters_status_says_connecting_connected_then_disconnected() {
    let mut w = cluster_a();
    w.peers.clear();
    let mut planner = Planner::new(w, None);
    planner.apply(Change::PeerCluster(Box::new(peer_cluster_object(
        "10.100.128.0/17",
    ))));
    let key = ObjectKey::new("", "cluster-b");
    let reason_now = |planner: &mut Planner| {
        let status = planner.plan().peer_clusters[&key].clone();
        let (_, why) = ready_reason(&status.conditions);
        (why.to_owned(), status.last_sync.is_some())
    };
    assert_eq!(reason_now(&mut planner), (reason::CONNECTING.into(), false));
    let sent = |connected: bool| PeerSent {
        peer: "cluster-b".into(),
        connected,
        last_sync: Some(Time(Timestamp::UNIX_EPOCH)),
        halves: None,
    };
    planner.apply(Change::PeerSent(sent(true)));
    assert_eq!(reason_now(&mut planner), (reason::CONNECTED.into(), true));
    planner.apply(Change::PeerSent(sent(false)));
    assert_eq!(
        reason_now(&mut planner),
        (reason::DISCONNECTED.into(), true)
    );
    planner.apply(Change::PeerClusterDeleted("cluster-b".into()));
    assert!(planner.plan().peer_clusters.is_empty());
}

#[test]
fn a_peer_cannot_grow_this_clusters_statuses_with_long_names_or_messages() {
    let mut w = cluster_a();
    let first = plan(&w, None);
    let address = member(&first, "red/red-members", "red-a")
        .address
        .clone()
        .unwrap();
    let half = w.peers[0].halves.values_mut().next().unwrap();
    let huge = "x".repeat(100_000);
    half.members.push(remote_member(
        &huge,
        &format!("spiffe://{TD_A}/ns/{huge}"),
        "10.100.128.9",
        "b-1",
    ));
    half.decisions = vec![MemberDecision {
        address,
        admitted: false,
        reason: huge.clone(),
        message: huge,
    }];
    let plan = plan(&w, None);
    let message = peer_status(&plan).message.clone().unwrap_or_default();
    assert!(message.len() < 2_000, "{} bytes", message.len());
    let decision = &member(&plan, "red/red-members", "red-a").peers[0];
    assert!(decision.reason.len() + decision.message.len() < 1_000);
}
