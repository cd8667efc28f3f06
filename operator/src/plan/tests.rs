//! Table-driven tests of the planner, with fixtures that read like the scenario.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use wireway_crds::conditions::reason;
use wireway_crds::{
    Admission, AdmissionRule, AdmissionSpec, Endpoint, EndpointSpec, ExternalEndpoint,
    NetworkService, NetworkServiceRef, NetworkServiceSpec,
};

use super::*;
use crate::testing::{KEY_A, labels};

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        generation: Some(1),
        ..ObjectMeta::default()
    }
}

fn service(ns: &str, name: &str, cidr: &str, node_prefix_length: i32) -> NetworkService {
    NetworkService {
        metadata: meta(ns, name),
        spec: NetworkServiceSpec {
            cidr: cidr.into(),
            node_prefix_length,
            cluster_prefix: None,
            mtu: None,
            listen_port: None,
        },
        status: None,
    }
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(pairs)),
        match_expressions: None,
    }
}

/// An Endpoint in `ns` attaching the pods labelled `pairs` to `target` ("ns/name" or "name").
fn attach(ns: &str, name: &str, target: &str, pairs: &[(&str, &str)]) -> Endpoint {
    let (target_ns, target_name) = match target.split_once('/') {
        Some((n, s)) => (Some(n.to_owned()), s.to_owned()),
        None => (None, target.to_owned()),
    };
    Endpoint {
        metadata: meta(ns, name),
        spec: EndpointSpec {
            network_service: NetworkServiceRef {
                name: target_name,
                namespace: target_ns,
            },
            pod_selector: Some(selector(pairs)),
            external: None,
            interface_name: None,
        },
        status: None,
    }
}

fn external(ns: &str, name: &str, target: &str, address: &str, spiffe_id: &str) -> Endpoint {
    Endpoint {
        metadata: meta(ns, name),
        spec: EndpointSpec {
            network_service: NetworkServiceRef {
                name: target.into(),
                namespace: None,
            },
            pod_selector: None,
            external: Some(ExternalEndpoint {
                public_key: KEY_A.into(),
                endpoint: Some("192.0.2.10:51820".into()),
                address: address.into(),
                spiffe_id: spiffe_id.into(),
                persistent_keepalive: Some(25),
            }),
            interface_name: None,
        },
        status: None,
    }
}

fn admission(
    ns: &str,
    name: &str,
    service: &str,
    allow: Vec<AdmissionRule>,
    deny: Vec<AdmissionRule>,
) -> Admission {
    Admission {
        metadata: meta(ns, name),
        spec: AdmissionSpec {
            network_service: service.into(),
            allow,
            deny,
        },
        status: None,
    }
}

fn spiffe(id: &str) -> AdmissionRule {
    AdmissionRule {
        spiffe_id: Some(id.into()),
        spiffe_id_prefix: None,
        trust_domain: None,
        namespace_selector: None,
    }
}

fn prefix(id: &str) -> AdmissionRule {
    AdmissionRule {
        spiffe_id: None,
        spiffe_id_prefix: Some(id.into()),
        trust_domain: None,
        namespace_selector: None,
    }
}

fn node(name: &str, n: u8) -> Node {
    Node {
        name: name.into(),
        public_key: Some(format!("{name}-key")),
        underlay: Some(IpAddr::from([192, 168, 77, n])),
        underlay_mtu: Some(1500),
        seen_version: 0,
    }
}

fn world() -> World {
    World {
        trust_domain: "cluster.local".into(),
        now: Time(Timestamp::UNIX_EPOCH),
        nodes: vec![node("node-1", 1), node("node-2", 2), node("node-3", 3)],
        namespaces: Vec::new(),
        pods: Vec::new(),
        network_services: Vec::new(),
        endpoints: Vec::new(),
        admissions: Vec::new(),
    }
}

/// The seeds' picture: red pods, green pods, bridge in both, intruder and loner in neither.
fn seeds() -> World {
    let mut w = world();
    w.network_services = vec![
        service("red", "red", "10.100.0.0/16", 24),
        service("green", "green", "10.200.0.0/16", 24),
    ];
    w.pods = vec![
        Pod::test("red", "red-a")
            .on("node-1")
            .labelled(&[("net", "red")]),
        Pod::test("red", "red-b")
            .on("node-2")
            .labelled(&[("net", "red")]),
        Pod::test("red", "bridge")
            .on("node-3")
            .labelled(&[("net", "red"), ("app", "bridge")])
            .account("bridge"),
        Pod::test("green", "green-a")
            .on("node-1")
            .labelled(&[("net", "green")]),
        Pod::test("green", "green-b")
            .on("node-2")
            .labelled(&[("net", "green")]),
        Pod::test("other", "intruder")
            .on("node-3")
            .labelled(&[("app", "intruder")]),
        Pod::test("other", "loner").on("node-3"),
    ];
    w.endpoints = vec![
        attach("red", "red-members", "red", &[("net", "red")]),
        attach("green", "green-members", "green", &[("net", "green")]),
        attach(
            "red",
            "bridge-to-green",
            "green/green",
            &[("app", "bridge")],
        ),
        attach("other", "join-red", "red/red", &[("app", "intruder")]),
    ];
    w.admissions = vec![admission(
        "green",
        "admit-bridge",
        "green",
        vec![spiffe("spiffe://cluster.local/ns/red/sa/bridge")],
        vec![],
    )];
    w
}

fn member<'p>(plan: &'p Plan, endpoint: &str, workload: &str) -> &'p wireway_crds::MemberStatus {
    let (ns, name) = endpoint.split_once('/').expect("ns/name");
    plan.endpoints[&ObjectKey::new(ns, name)]
        .members
        .iter()
        .find(|m| m.workload == workload)
        .unwrap_or_else(|| panic!("{workload} is not in {endpoint}'s status"))
}

fn services_on<'p>(plan: &'p Plan, node: &str) -> Vec<&'p str> {
    plan.nodes[node]
        .services
        .iter()
        .map(|s| s.name.as_str())
        .collect()
}

fn ready_reason(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> (&str, &str) {
    let c = conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn seeds_scenario_admits_red_green_and_the_bridge_and_nobody_else() {
    let plan = plan(&seeds(), None);
    assert_eq!(services_on(&plan, "node-1"), ["green/green", "red/red"]);
    assert_eq!(services_on(&plan, "node-2"), ["green/green", "red/red"]);
    assert_eq!(
        services_on(&plan, "node-3"),
        ["green/green", "red/red"],
        "bridge is in both"
    );

    let bridge_green = member(&plan, "red/bridge-to-green", "bridge");
    assert!(bridge_green.admitted, "{bridge_green:?}");
    assert!(
        bridge_green.message.contains("green/admit-bridge"),
        "{}",
        bridge_green.message
    );
    assert_eq!(
        member(&plan, "red/red-members", "red-a").message,
        "same namespace as the service"
    );

    let intruder = member(&plan, "other/join-red", "intruder");
    assert!(!intruder.admitted);
    assert_eq!(intruder.reason, reason::NOT_ADMITTED);
    assert_eq!(intruder.address, None);
    let all_members: Vec<&str> = plan
        .nodes
        .values()
        .flat_map(|n| &n.services)
        .flat_map(|s| &s.members)
        .map(|m| m.id.as_str())
        .collect();
    assert!(
        !all_members.iter().any(|m| m.starts_with("other/")),
        "{all_members:?}"
    );
    assert_eq!(
        ready_reason(&plan.endpoints[&ObjectKey::new("other", "join-red")].conditions),
        ("False", reason::NOT_ADMITTED)
    );
    assert_eq!(
        ready_reason(&plan.network_services[&ObjectKey::new("red", "red")].conditions),
        ("True", reason::READY)
    );
}

#[test]
fn peers_are_the_other_carrying_nodes_with_their_prefix() {
    let plan = plan(&seeds(), None);
    let red_on_1 = plan.nodes["node-1"]
        .services
        .iter()
        .find(|s| s.name == "red/red")
        .expect("red on node-1");
    let peers: Vec<(&str, &str, Vec<&str>)> = red_on_1
        .peers
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.endpoint.as_str(),
                p.allowed_ips.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let port = red_on_1.listen_port;
    let prefixes = &plan.network_services[&ObjectKey::new("red", "red")].node_prefixes;
    let prefix_of = |n: &str| {
        prefixes
            .iter()
            .find(|p| p.node == n)
            .map(|p| p.prefix.as_str())
            .expect("a prefix")
    };
    assert_eq!(
        peers,
        [
            (
                "node-2",
                format!("192.168.77.2:{port}").as_str(),
                vec![prefix_of("node-2")]
            ),
            (
                "node-3",
                format!("192.168.77.3:{port}").as_str(),
                vec![prefix_of("node-3")]
            ),
        ]
    );
    assert_eq!(red_on_1.interface_name, "ww-red");
    assert_eq!(red_on_1.mtu, 1420);
    let member = &red_on_1.members[0];
    assert_eq!(
        (member.id.as_str(), member.interface_name.as_str()),
        ("red/red-a", "nsm-red")
    );
}

#[test]
fn services_get_distinct_ports_interfaces_and_tables() {
    let plan = plan(&seeds(), None);
    let on_3 = &plan.nodes["node-3"].services;
    assert_ne!(on_3[0].listen_port, on_3[1].listen_port);
    assert_ne!(on_3[0].interface_name, on_3[1].interface_name);
    assert_ne!(on_3[0].route_table, on_3[1].route_table);
    let bridge_ifaces: Vec<&str> = on_3
        .iter()
        .flat_map(|s| &s.members)
        .map(|m| m.host_interface_name.as_str())
        .collect();
    assert_eq!(bridge_ifaces.len(), 2);
    assert_ne!(
        bridge_ifaces[0], bridge_ifaces[1],
        "one host veth per membership"
    );
}

#[test]
fn deny_beats_allow_and_the_namespace_default() {
    let mut w = seeds();
    w.admissions.push(admission(
        "red",
        "no-red-b",
        "red",
        vec![prefix("spiffe://cluster.local/ns")],
        vec![prefix("spiffe://cluster.local/ns/red/sa/default")],
    ));
    let plan = plan(&w, None);
    let red_a = member(&plan, "red/red-members", "red-a");
    assert_eq!(
        (red_a.admitted, red_a.reason.as_str()),
        (false, reason::DENIED)
    );
    assert!(
        red_a.message.contains("red/no-red-b (deny[0]"),
        "{}",
        red_a.message
    );
    assert!(
        member(&plan, "red/red-members", "bridge").admitted,
        "bridge runs as sa bridge, not default"
    );
    let intruder = member(&plan, "other/join-red", "intruder");
    assert!(
        intruder.admitted,
        "allowed by the prefix rule, and no deny rule names ns/other"
    );
}

#[test]
fn prefix_rules_match_whole_segments() {
    let mut w = seeds();
    w.admissions.push(admission(
        "red",
        "admit-oth",
        "red",
        vec![prefix("spiffe://cluster.local/ns/oth")],
        vec![],
    ));
    assert!(!member(&plan(&w, None), "other/join-red", "intruder").admitted);
    w.admissions.push(admission(
        "red",
        "admit-other",
        "red",
        vec![prefix("spiffe://cluster.local/ns/other")],
        vec![],
    ));
    let plan = plan(&w, None);
    assert!(member(&plan, "other/join-red", "intruder").admitted);
    assert_eq!(
        plan.admissions[&ObjectKey::new("red", "admit-other")].admitted_count,
        1
    );
}

#[test]
fn a_pod_attached_twice_is_one_member_and_the_other_endpoint_says_why() {
    let mut w = seeds();
    w.endpoints
        .push(attach("red", "red-again", "red", &[("net", "red")]));
    let plan = plan(&w, None);
    // red/red-again comes first by name: it owns the pods.
    let owner = member(&plan, "red/red-again", "red-a");
    assert!(owner.admitted && owner.address.is_some(), "{owner:?}");
    let twice = member(&plan, "red/red-members", "red-a");
    assert_eq!(
        (
            twice.admitted,
            twice.reason.as_str(),
            twice.address.as_deref()
        ),
        (false, reason::DUPLICATE_MEMBER, None)
    );
    assert!(
        twice
            .message
            .contains("already a member through Endpoint red/red-again"),
        "{}",
        twice.message
    );
    assert_eq!(
        ready_reason(&plan.endpoints[&ObjectKey::new("red", "red-members")].conditions),
        ("False", reason::DUPLICATE_MEMBER)
    );
    let red_on_1 = plan.nodes["node-1"]
        .services
        .iter()
        .find(|s| s.name == "red/red")
        .expect("red on node-1");
    let members: Vec<&str> = red_on_1.members.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(members, ["red/red-a"], "one member, one veth");
}

/// Writes a plan's statuses back into the World, as the operator's status writer does.
fn record(w: &mut World, plan: &Plan) {
    for s in &mut w.network_services {
        s.status = plan
            .network_services
            .get(&ObjectKey::of(&s.metadata))
            .cloned();
    }
    for e in &mut w.endpoints {
        e.status = plan.endpoints.get(&ObjectKey::of(&e.metadata)).cloned();
    }
    for a in &mut w.admissions {
        a.status = plan.admissions.get(&ObjectKey::of(&a.metadata)).cloned();
    }
}

fn addresses(plan: &Plan) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = plan
        .nodes
        .values()
        .flat_map(|n| &n.services)
        .flat_map(|s| {
            s.members
                .iter()
                .map(move |m| (format!("{}:{}", s.name, m.id), m.address.clone()))
        })
        .collect();
    all.sort();
    all
}

#[test]
fn allocations_survive_a_restart_and_new_members_do_not_move_old_ones() {
    let mut w = seeds();
    let first = plan(&w, None);
    record(&mut w, &first);
    // A new red pod sorts before the others; nobody's address may move.
    w.pods.push(
        Pod::test("red", "aaa")
            .on("node-1")
            .labelled(&[("net", "red")]),
    );
    let second = plan(&w, None);
    let before = addresses(&first);
    let after = addresses(&second);
    for entry in &before {
        assert!(after.contains(entry), "{entry:?} moved: {after:?}");
    }
    assert_eq!(after.len(), before.len() + 1);
}

#[test]
fn a_statefulset_pod_recreated_on_the_same_node_keeps_its_address() {
    let mut w = seeds();
    let first = plan(&w, None);
    record(&mut w, &first);
    let old = member(&first, "red/red-members", "red-b").address.clone();
    let red_b = w
        .pods
        .iter_mut()
        .find(|p| p.name == "red-b")
        .expect("red-b");
    red_b.uid = "a-new-uid".into();
    let second = plan(&w, None);
    assert_eq!(member(&second, "red/red-members", "red-b").address, old);
}

#[test]
fn an_exhausted_pool_is_reported_and_takes_nothing_away() {
    let mut w = world();
    w.network_services = vec![service("red", "red", "10.100.0.0/24", 25)];
    w.endpoints = vec![attach("red", "members", "red", &[("net", "red")])];
    w.pods = vec![
        Pod::test("red", "a")
            .on("node-1")
            .labelled(&[("net", "red")]),
        Pod::test("red", "b")
            .on("node-2")
            .labelled(&[("net", "red")]),
    ];
    let first = plan(&w, None);
    record(&mut w, &first);
    w.pods.push(
        Pod::test("red", "c")
            .on("node-3")
            .labelled(&[("net", "red")]),
    );
    let second = plan(&w, None);
    assert_eq!(
        ready_reason(&second.network_services[&ObjectKey::new("red", "red")].conditions),
        ("False", reason::ADDRESS_POOL_EXHAUSTED)
    );
    assert_eq!(
        member(&second, "red/members", "a").address,
        member(&first, "red/members", "a").address
    );
    assert_eq!(
        member(&second, "red/members", "b").address,
        member(&first, "red/members", "b").address
    );
    assert_eq!(member(&second, "red/members", "c").address, None);
    assert!(second.nodes["node-3"].services.is_empty());
}

#[test]
fn external_hosts_need_an_admission_and_become_peers_with_their_address_only() {
    let mut w = seeds();
    w.endpoints.push(external(
        "red",
        "backup-vm",
        "red",
        "10.100.255.10",
        "spiffe://cluster.local/vm/backup",
    ));
    let refused = plan(&w, None);
    assert_eq!(
        member(&refused, "red/backup-vm", "backup-vm").reason,
        reason::NOT_ADMITTED
    );
    w.admissions.push(admission(
        "red",
        "admit-vms",
        "red",
        vec![prefix("spiffe://cluster.local/vm")],
        vec![],
    ));
    let plan = plan(&w, None);
    let vm = member(&plan, "red/backup-vm", "backup-vm");
    assert!(
        vm.admitted && vm.address.as_deref() == Some("10.100.255.10"),
        "{vm:?}"
    );
    for node in ["node-1", "node-2", "node-3"] {
        let red = plan.nodes[node]
            .services
            .iter()
            .find(|s| s.name == "red/red")
            .expect("red");
        let peer = red
            .peers
            .iter()
            .find(|p| p.public_key == KEY_A)
            .expect("the VM is a peer");
        assert_eq!(
            (peer.allowed_ips.clone(), peer.persistent_keepalive),
            (vec!["10.100.255.10/32".to_owned()], 25)
        );
    }
}

#[test]
fn an_external_address_outside_the_cidr_is_refused() {
    let mut w = seeds();
    w.endpoints.push(external(
        "red",
        "vm",
        "red",
        "10.99.0.1",
        "spiffe://cluster.local/vm/x",
    ));
    w.admissions.push(admission(
        "red",
        "admit-vms",
        "red",
        vec![prefix("spiffe://cluster.local/vm")],
        vec![],
    ));
    let plan = plan(&w, None);
    let vm = member(&plan, "red/vm", "vm");
    assert!(!vm.admitted && vm.message.contains("outside"), "{vm:?}");
}

#[test]
fn missing_services_and_invalid_specs_are_conditions() {
    let mut w = seeds();
    w.endpoints
        .push(attach("red", "to-nowhere", "blue", &[("net", "red")]));
    w.admissions.push(admission(
        "red",
        "for-nowhere",
        "blue",
        vec![spiffe("spiffe://x/y")],
        vec![],
    ));
    w.network_services
        .push(service("red", "broken", "10.300.0.0/16", 24));
    let plan = plan(&w, None);
    assert_eq!(
        ready_reason(&plan.endpoints[&ObjectKey::new("red", "to-nowhere")].conditions),
        ("False", reason::NETWORK_SERVICE_NOT_FOUND)
    );
    assert_eq!(
        ready_reason(&plan.admissions[&ObjectKey::new("red", "for-nowhere")].conditions),
        ("False", reason::NETWORK_SERVICE_NOT_FOUND)
    );
    assert_eq!(
        ready_reason(&plan.network_services[&ObjectKey::new("red", "broken")].conditions),
        ("False", reason::INVALID_SPEC)
    );
    assert_eq!(
        services_on(&plan, "node-1"),
        ["green/green", "red/red"],
        "the others are untouched"
    );
}

/// A second service named red, in namespace green, that bridge also asks to join: both
/// would be nsm-red inside bridge.
fn second_red_for_bridge(w: &mut World) {
    w.network_services
        .push(service("green", "red", "10.150.0.0/16", 24));
    w.endpoints.push(attach(
        "red",
        "bridge-to-green-red",
        "green/red",
        &[("app", "bridge")],
    ));
    w.admissions.push(admission(
        "green",
        "admit-bridge-red",
        "red",
        vec![spiffe("spiffe://cluster.local/ns/red/sa/bridge")],
        vec![],
    ));
}

#[test]
fn two_services_cannot_give_a_pod_one_interface_name_twice() {
    let mut w = seeds();
    second_red_for_bridge(&mut w);
    let conflicted = plan(&w, None);
    // red/bridge-to-green-red sorts before red/red-members, so it wins on a first plan.
    assert!(member(&conflicted, "red/bridge-to-green-red", "bridge").admitted);
    let loser = member(&conflicted, "red/red-members", "bridge");
    assert_eq!(loser.reason, reason::INTERFACE_NAME_CONFLICT);
    assert!(
        loser.message.contains("set spec.interfaceName"),
        "{}",
        loser.message
    );

    // Once a membership is in place, a newcomer loses whatever its name.
    let mut recorded = seeds();
    let first = plan(&recorded, None);
    record(&mut recorded, &first);
    second_red_for_bridge(&mut recorded);
    let second = plan(&recorded, None);
    assert!(
        member(&second, "red/red-members", "bridge").admitted,
        "the working membership stays"
    );
    assert_eq!(
        member(&second, "red/bridge-to-green-red", "bridge").reason,
        reason::INTERFACE_NAME_CONFLICT
    );
}

#[test]
fn ipv6_services_work_like_ipv4_ones() {
    let mut w = world();
    w.network_services = vec![service("v6", "blue", "fd00:100::/48", 64)];
    w.endpoints = vec![attach("v6", "members", "blue", &[])];
    w.pods = vec![
        Pod::test("v6", "a").on("node-1"),
        Pod::test("v6", "b").on("node-2"),
    ];
    let plan = plan(&w, None);
    assert_eq!(
        member(&plan, "v6/members", "a").address.as_deref(),
        Some("fd00:100::1")
    );
    assert_eq!(
        member(&plan, "v6/members", "b").address.as_deref(),
        Some("fd00:100:0:1::1")
    );
}

#[test]
fn unchanged_nodes_keep_their_version_and_changed_ones_move_on() {
    let mut w = seeds();
    let first = plan(&w, None);
    assert_eq!(first.changed_nodes.len(), 3);
    let again = plan(&w, Some(&first));
    assert!(again.changed_nodes.is_empty());
    assert_eq!(again.nodes, first.nodes);
    record(&mut w, &first);
    w.pods.push(
        Pod::test("green", "green-c")
            .on("node-3")
            .labelled(&[("net", "green")]),
    );
    let second = plan(&w, Some(&first));
    // node-3 gets a member; green's peers on nodes 1 and 2 are unchanged (node-3 already
    // carried green through the bridge), so only node-3 changes.
    assert_eq!(
        second
            .changed_nodes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["node-3"]
    );
    assert_eq!(
        second.nodes["node-3"].version,
        first.nodes["node-3"].version + 1
    );
    assert_eq!(
        second.nodes["node-1"].version,
        first.nodes["node-1"].version
    );
}

#[test]
fn versions_continue_from_what_a_node_has_seen() {
    let mut w = seeds();
    w.nodes[0].seen_version = 41;
    let plan = plan(&w, None);
    assert_eq!(plan.nodes["node-1"].version, 42);
}

#[test]
fn input_order_does_not_matter() {
    let w = seeds();
    let mut shuffled = w.clone();
    shuffled.pods.reverse();
    shuffled.endpoints.reverse();
    shuffled.network_services.reverse();
    shuffled.nodes.reverse();
    assert_eq!(plan(&w, None), plan(&shuffled, None));
}

mod properties {
    use std::collections::BTreeSet;

    use ipnet::IpNet;
    use proptest::prelude::*;

    use super::*;

    const NAMESPACES: [&str; 3] = ["ns0", "ns1", "ns2"];
    const COLORS: [&str; 3] = ["red", "green", "blue"];

    /// Random worlds: a few nodes, services of small IPv4 and IPv6 pools (so pools run
    /// out), pods with random labels and accounts, Endpoints across namespaces, and
    /// Admissions with random allow and deny rules.
    fn worlds() -> impl Strategy<Value = World> {
        let services = prop::collection::vec((0..3usize, any::<bool>(), 0..3u8), 1..4);
        let pods = prop::collection::vec((0..3usize, 0..3usize, 0..5usize, 0..2usize), 0..30);
        let endpoints =
            prop::collection::vec((0..3usize, 0..3usize, 0..3usize, any::<bool>()), 0..6);
        let admissions =
            prop::collection::vec((0..3usize, any::<bool>(), 0..3usize, 0..3usize), 0..4);
        (services, pods, endpoints, admissions).prop_map(
            |(services, pods, endpoints, admissions)| {
                let mut w = world();
                w.nodes.extend([node("node-4", 4), node("node-5", 5)]);
                for (i, (ns, v6, size)) in services.iter().enumerate() {
                    let (cidr, len) = match (v6, size) {
                        (false, 0) => (format!("10.{i}.0.0/29"), 30),
                        (false, _) => (format!("10.{i}.0.0/24"), 26 + i32::from(*size)),
                        (true, _) => (format!("fd00:{i}::/120"), 124 + i32::from(*size)),
                    };
                    let mut svc = service(NAMESPACES[*ns], COLORS[i], &cidr, len);
                    if !v6 && *size == 2 {
                        // This cluster's slice of the service: the upper half.
                        svc.spec.cluster_prefix = Some(format!("10.{i}.0.128/25"));
                    }
                    w.network_services.push(svc);
                }
                for (i, (ns, color, node, sa)) in pods.iter().enumerate() {
                    w.pods.push(
                        Pod::test(NAMESPACES[*ns], &format!("p{i}"))
                            .on(&format!("node-{}", node + 1))
                            .labelled(&[("net", COLORS[*color]), ("all", "yes")])
                            .account(["default", "db"][*sa]),
                    );
                }
                for (i, (ns, color, target_ns, wide)) in endpoints.iter().enumerate() {
                    let e = if *wide {
                        // A wide Endpoint lives beside an existing service, selects every
                        // pod of the namespace and names the interface "nsm-x": pods
                        // attached to two services this way conflict.
                        let s = &w.network_services[*color % w.network_services.len()];
                        let ns = s.metadata.namespace.clone().unwrap_or_default();
                        let name = s.metadata.name.clone().unwrap_or_default();
                        let mut e = attach(&ns, &format!("e{i}"), &name, &[("all", "yes")]);
                        e.spec.interface_name = Some("nsm-x".into());
                        e
                    } else {
                        let target = format!("{}/{}", NAMESPACES[*target_ns], COLORS[*color]);
                        attach(
                            NAMESPACES[*ns],
                            &format!("e{i}"),
                            &target,
                            &[("net", COLORS[*color])],
                        )
                    };
                    w.endpoints.push(e);
                }
                for (i, (ns, deny, color, subject_ns)) in admissions.iter().enumerate() {
                    let rule = prefix(&format!(
                        "spiffe://cluster.local/ns/{}",
                        NAMESPACES[*subject_ns]
                    ));
                    let (allow, deny) = if *deny {
                        (vec![], vec![rule])
                    } else {
                        (vec![rule], vec![])
                    };
                    w.admissions.push(admission(
                        NAMESPACES[*ns],
                        &format!("a{i}"),
                        COLORS[*color],
                        allow,
                        deny,
                    ));
                }
                w
            },
        )
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("the planner writes valid prefixes")
    }

    /// A change of kind `op` to the `n`-th object of its kind (wrapping), as a watch
    /// would deliver it.
    fn change_for(w: &World, op: usize, n: usize, color: usize) -> Change {
        let color = COLORS[color];
        let pick = |len: usize| if len == 0 { None } else { Some(n % len) };
        match (
            op,
            pick(w.pods.len()),
            pick(w.endpoints.len()),
            pick(w.admissions.len()),
        ) {
            (0, _, _, _) | (1..=3, None, _, _) => Change::Pod(
                Pod::test(NAMESPACES[n % 3], &format!("new{n}"))
                    .on(&format!("node-{}", n % 5 + 1))
                    .labelled(&[("net", color)]),
            ),
            (1, Some(i), _, _) => {
                Change::PodDeleted(w.pods[i].namespace.clone(), w.pods[i].name.clone())
            }
            (2, Some(i), _, _) => Change::Pod(w.pods[i].clone().labelled(&[("net", color)])),
            (3, Some(i), _, _) => Change::Pod(w.pods[i].clone().on(&format!("node-{}", n % 5 + 1))),
            (4, _, Some(i), _) => Change::EndpointDeleted(ObjectKey::of(&w.endpoints[i].metadata)),
            (5, _, _, Some(i)) => {
                Change::AdmissionDeleted(ObjectKey::of(&w.admissions[i].metadata))
            }
            (6, _, _, _) => {
                let mut node = node(&format!("node-{}", n % 5 + 1), (n % 5 + 1) as u8);
                node.public_key = Some(format!("rotated-{n}"));
                node.underlay_mtu = Some(1400 + n as u32);
                Change::Node(node)
            }
            (7, _, _, _) if !w.network_services.is_empty() => Change::NetworkServiceDeleted(
                ObjectKey::of(&w.network_services[n % w.network_services.len()].metadata),
            ),
            _ => Change::Admission(admission(
                NAMESPACES[n % 3],
                &format!("new{n}"),
                color,
                vec![prefix("spiffe://cluster.local/ns")],
                vec![],
            )),
        }
    }

    /// The same change applied to a World, as a source would have it.
    fn apply_to_world(w: &mut World, change: &Change) {
        fn upsert<T: Clone>(items: &mut Vec<T>, item: &T, same: impl Fn(&T) -> bool) {
            items.retain(|x| !same(x));
            items.push(item.clone());
        }
        match change {
            Change::Pod(p) => upsert(&mut w.pods, p, |x| {
                x.namespace == p.namespace && x.name == p.name
            }),
            Change::PodDeleted(ns, name) => {
                w.pods.retain(|x| !(&x.namespace == ns && &x.name == name))
            }
            Change::Node(n) => upsert(&mut w.nodes, n, |x| x.name == n.name),
            Change::EndpointDeleted(k) => w.endpoints.retain(|e| &ObjectKey::of(&e.metadata) != k),
            Change::AdmissionDeleted(k) => {
                w.admissions.retain(|a| &ObjectKey::of(&a.metadata) != k)
            }
            Change::NetworkServiceDeleted(k) => w
                .network_services
                .retain(|s| &ObjectKey::of(&s.metadata) != k),
            Change::Admission(a) => upsert(&mut w.admissions, a, |x| {
                x.metadata.name == a.metadata.name && x.metadata.namespace == a.metadata.namespace
            }),
            other => panic!("the generator makes no {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn addresses_are_unique_and_nested(w in worlds()) {
            let plan = plan(&w, None);
            let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
            for state in plan.nodes.values() {
                let mut interfaces: BTreeSet<(&str, &str)> = BTreeSet::new();
                for m in state.services.iter().flat_map(|s| &s.members) {
                    prop_assert!(interfaces.insert((&m.id, &m.interface_name)), "{} has two {}", m.id, m.interface_name);
                }
                for svc in &state.services {
                    let cidr = net(&svc.cidr);
                    let node_prefix = net(&svc.node_prefix);
                    let spec = &w.network_services.iter().find(|s| format!("{}/{}", s.metadata.namespace.as_deref().unwrap_or_default(), s.metadata.name.as_deref().unwrap_or_default()) == svc.name).expect("the service").spec;
                    let pool = net(spec.cluster_prefix.as_deref().unwrap_or(&spec.cidr));
                    prop_assert!(pool.contains(&node_prefix), "{} outside the pool {}", node_prefix, pool);
                    for m in &svc.members {
                        let addr: IpAddr = m.address.parse().expect("an address");
                        prop_assert!(node_prefix.contains(&addr), "{} outside {}", addr, node_prefix);
                        prop_assert!(seen.insert((svc.name.clone(), m.address.clone())), "{} used twice in {}", addr, svc.name);
                    }
                    for peer in &svc.peers {
                        for allowed in &peer.allowed_ips {
                            prop_assert!(cidr.contains(&net(allowed)), "peer {} crosses services", peer.name);
                        }
                    }
                }
            }
        }

        #[test]
        fn only_admitted_workloads_reach_a_node(w in worlds()) {
            let plan = plan(&w, None);
            let admitted: BTreeSet<(String, String)> = plan
                .endpoints
                .iter()
                .flat_map(|(k, st)| st.members.iter().filter(|m| m.admitted).map(move |m| (k.namespace.clone(), m.workload.clone())))
                .collect();
            for state in plan.nodes.values() {
                for svc in &state.services {
                    for m in &svc.members {
                        let (ns, pod) = m.id.split_once('/').expect("ns/pod");
                        prop_assert!(admitted.contains(&(ns.to_owned(), pod.to_owned())), "{} is in {} unadmitted", m.id, svc.name);
                    }
                }
            }
        }

        #[test]
        fn input_order_never_matters(w in worlds()) {
            let mut shuffled = w.clone();
            shuffled.pods.reverse();
            shuffled.endpoints.reverse();
            shuffled.admissions.reverse();
            shuffled.network_services.reverse();
            prop_assert_eq!(plan(&w, None), plan(&shuffled, None));
        }

        #[test]
        fn incremental_planning_equals_planning_from_scratch(
            w in worlds(),
            ops in prop::collection::vec((0..8usize, 0..40usize, 0..3usize), 1..6),
        ) {
            let mut planner = Planner::new(w.clone(), None);
            let first = planner.plan().clone();
            let mut changed = w.clone();
            for (op, n, color) in ops {
                let change = change_for(&changed, op, n, color);
                apply_to_world(&mut changed, &change);
                planner.apply(change);
            }
            let incremental = planner.plan().clone();
            record(&mut changed, &first);
            let scratch = plan(&changed, Some(&first));
            prop_assert_eq!(&incremental.nodes, &scratch.nodes);
            prop_assert_eq!(&incremental.changed_nodes, &scratch.changed_nodes);
            prop_assert_eq!(&incremental.network_services, &scratch.network_services);
            prop_assert_eq!(&incremental.endpoints, &scratch.endpoints);
            prop_assert_eq!(&incremental.admissions, &scratch.admissions);
        }

        #[test]
        fn replanning_after_a_restart_keeps_every_address(w in worlds()) {
            let first = plan(&w, None);
            let mut restarted = w.clone();
            record(&mut restarted, &first);
            let second = plan(&restarted, Some(&first));
            prop_assert_eq!(addresses(&first), addresses(&second));
            prop_assert!(second.changed_nodes.is_empty());
        }
    }
}
