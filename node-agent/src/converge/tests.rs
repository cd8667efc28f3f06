//! Converging, table by table, and a property: applying the operations to a model of the
//! kernel reaches the desired state, after which converging again yields nothing.

use std::collections::BTreeSet;

use proptest::prelude::*;
use wireway_proto::{NetnsLocator, NodeState, ServiceState};

use super::*;
use crate::dataplane::fake::Model;
use crate::testing::*;

fn state(services: Vec<ServiceState>) -> NodeState {
    services
        .into_iter()
        .fold(node("node-1"), NodeStateFixture::with)
}

fn plane(services: Vec<ServiceState>) -> Plane {
    let (plane, errors) = desired(&state(services), pods_running);
    assert_eq!(errors, []);
    plane
}

/// Applies `ops` to a model of a kernel that holds `observed`, as a pass does (observing
/// against `desired` first, which names the namespaces). The model refuses what the
/// kernel would, and more: every operation must be accepted.
fn apply(observed: &mut Plane, desired: &Plane, ops: &[Op]) {
    let mut kernel = Model::holding(observed.clone());
    kernel.observe(desired);
    for op in ops {
        if let Err(e) = kernel.apply(op) {
            panic!("{}", crate::chain(&e));
        }
    }
    *observed = kernel.held().clone();
}

#[test]
fn from_nothing_links_come_first_rules_then_routes_last() {
    let want = plane(vec![red(), green()]);
    let ops = converge(&want, &Plane::default());
    let position = |pred: &dyn Fn(&Op) -> bool| ops.iter().position(pred).expect("present");
    let last_link = ops
        .iter()
        .rposition(|o| matches!(o, Op::CreateWireGuard { .. } | Op::CreateMember { .. }))
        .expect("links");
    let first_rule = position(&|o| matches!(o, Op::AddRule(_)));
    let first_route = position(&|o| matches!(o, Op::AddRoute(_)));
    let last_rule = ops
        .iter()
        .rposition(|o| matches!(o, Op::AddRule(_)))
        .expect("rules");
    let first_forwarding = position(&|o| matches!(o, Op::EnableForwarding(_)));
    let last_forwarding = ops
        .iter()
        .rposition(|o| matches!(o, Op::EnableForwarding(_)))
        .expect("forwarding");
    assert!(
        last_link < first_rule && last_rule < first_forwarding && last_forwarding < first_route,
        "{ops:#?}"
    );
    assert!(!ops.iter().any(|o| matches!(
        o,
        Op::DeleteLink { .. } | Op::RemoveRule(_) | Op::RemoveRoute(_)
    )));
    // Each device's reject rule comes before its lookup rule.
    for (i, op) in ops.iter().enumerate() {
        if let Op::AddRule(Rule::Lookup { iif, ipv4, .. }) = op {
            let reject = ops.iter().position(|o| {
                o == &Op::AddRule(Rule::Reject {
                    iif: iif.clone(),
                    ipv4: *ipv4,
                })
            });
            assert!(reject.is_some_and(|r| r < i), "{iif}: lookup before reject");
        }
    }
    let mut observed = Plane::default();
    apply(&mut observed, &want, &ops);
    assert_eq!(converge(&want, &observed), []);
}

#[test]
fn what_each_service_asks_for() {
    let want = plane(vec![red(), green()]);
    let red_table = 0x5757_0000 + 51821;
    let route = |table, dest: &str, dev: &str| Route {
        table,
        destination: dest.parse().unwrap(),
        device: dev.into(),
    };
    for r in [
        route(red_table, "10.100.0.0/16", "ww-red"),
        route(red_table, "169.254.77.1/32", "ww-red"),
        route(red_table, "10.100.0.1/32", "wwv0000000a"),
    ] {
        assert!(want.routes.contains(&r), "{r:?}");
    }
    assert!(want.rules.contains(&Rule::Reject {
        iif: "wwv0000000a".into(),
        ipv4: true
    }));
    assert!(want.rules.contains(&Rule::Lookup {
        iif: "ww-green".into(),
        table: 0x5757_0000 + 51820,
        ipv4: false
    }));
    let red_member = &want.members["wwv0000000a"];
    assert!(red_member.proxy_arp && red_member.addresses.is_empty());
    let inside = red_member.workload.as_ref().unwrap();
    assert_eq!(
        inside.routes,
        BTreeSet::from([("10.100.0.0/16".parse().unwrap(), GATEWAY_V4.into())])
    );
    let green_member = &want.members["wwv0000000c"];
    assert!(!green_member.proxy_arp);
    assert_eq!(
        green_member.addresses,
        BTreeSet::from(["fe80::77:1/64".parse().unwrap()])
    );
}

/// Forwarding where a service needs it and nowhere else: on the links its packets arrive
/// on (its WireGuard interface, its members' veths), in its family only; nothing
/// node-wide, and nothing without a service.
#[test]
fn forwarding_is_on_each_service_links_in_its_family_only() {
    let on = |device: &str, ipv4| Forwarding {
        device: device.into(),
        ipv4,
    };
    assert_eq!(
        plane(vec![red()]).forwarding,
        BTreeSet::from([
            on("ww-red", true),
            on("wwv0000000a", true),
            on("wwv0000000b", true)
        ])
    );
    assert_eq!(
        plane(vec![green()]).forwarding,
        BTreeSet::from([on("ww-green", false), on("wwv0000000c", false)])
    );
    assert_eq!(plane(vec![]).forwarding, BTreeSet::new());
}

/// IPv6 forwarding the agent turned on node-wide (a kernel without per-link IPv6
/// forwarding) goes off once no IPv6 service needs it, after what goes away; it stays
/// while one does, and the agent never turns off what it did not turn on.
#[test]
fn ipv6_forwarding_node_wide_goes_off_with_the_last_ipv6_service() {
    let turned_on = |services| Plane {
        ipv6_forwarding_node_wide: true,
        ..plane(services)
    };
    let off = Op::DisableIpv6ForwardingNodeWide;
    // Green (IPv6) goes, red (IPv4) stays: off, after green's links.
    let ops = converge(&plane(vec![red()]), &turned_on(vec![red(), green()]));
    let disabled = ops.iter().position(|o| *o == off);
    let deleted = ops.iter().rposition(|o| matches!(o, Op::DeleteLink { .. }));
    assert!(disabled > deleted && deleted.is_some(), "{ops:#?}");
    // The last service goes: off too.
    assert!(converge(&plane(vec![]), &turned_on(vec![red()])).contains(&off));
    // An IPv6 service stays: on.
    let both = plane(vec![red(), green()]);
    assert_eq!(converge(&both, &turned_on(vec![red(), green()])), vec![]);
    // On, but not by the agent (observed false): left alone.
    assert!(!converge(&plane(vec![]), &plane(vec![red(), green()])).contains(&off));
}

/// The node API carries no routes: the agent derives them, so they always point at the
/// links it makes.
#[test]
fn routes_are_the_cidr_to_wireguard_and_each_member_to_its_veth() {
    let want = plane(vec![red(), green()]);
    let route = |table: u32, dest: &str, dev: &str| Route {
        table,
        destination: dest.parse().unwrap(),
        device: dev.into(),
    };
    let (red_table, green_table) = (0x5757_0000 + 51821, 0x5757_0000 + 51820);
    assert_eq!(
        want.routes,
        BTreeSet::from([
            route(red_table, "10.100.0.0/16", "ww-red"),
            // IPv4 only: the gateway, answered by proxy ARP on the veths.
            route(red_table, "169.254.77.1/32", "ww-red"),
            route(red_table, "10.100.0.1/32", "wwv0000000a"),
            route(red_table, "10.100.0.2/32", "wwv0000000b"),
            route(green_table, "fd00:200::/48", "ww-green"),
            route(green_table, "fd00:200::1/128", "wwv0000000c"),
        ])
    );
}

#[test]
fn in_sync_means_no_operation() {
    let want = plane(vec![red(), green()]);
    assert_eq!(converge(&want, &as_observed(&want)), []);
}

#[test]
fn peers_and_ports_change_in_place() {
    let before = plane(vec![red()]);
    let mut changed = red();
    // node-2 moved, node-4 is new, the port changed.
    changed.peers[0].endpoint = "192.168.77.9:51821".into();
    changed
        .peers
        .push(peer("node-4").key(&test_key(4)).allowing("10.100.3.0/24"));
    changed.listen_port = 51830;
    let after = plane(vec![changed]);
    let ops = converge(&after, &as_observed(&before));
    assert!(
        ops.iter()
            .all(|o| !matches!(o, Op::CreateWireGuard { .. } | Op::DeleteLink { .. })),
        "{ops:#?}"
    );
    assert!(ops.contains(&Op::SetListenPort {
        name: "ww-red".into(),
        port: 51830
    }));
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::SetPeer { .. }))
            .count(),
        2
    );
    // The table id is the same (the planner derives it; here it did not change), so no
    // rule or route moves.
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Op::AddRoute(_) | Op::RemoveRoute(_))),
        "{ops:#?}"
    );
}

/// A peer whose allowed IPs only grow has them added, not replaced: the kernel replaces
/// by removing every one and adding them back, and a packet to a prefix it keeps, routed
/// in between, would be dropped. One that loses an allowed IP has them replaced.
#[test]
fn allowed_ips_that_only_grow_are_added_and_those_that_shrink_are_replaced() {
    let want = plane(vec![red()]);
    let set_peer = |held: &Plane| {
        let ops = converge(&want, held);
        assert_eq!(ops.len(), 1, "{ops:?}");
        match &ops[0] {
            Op::SetPeer {
                replace_allowed_ips,
                ..
            } => *replace_allowed_ips,
            other => panic!("not a peer change: {other}"),
        }
    };
    let mut fewer = as_observed(&want);
    let held = fewer.wireguard.get_mut("ww-red").unwrap();
    let (_, peer) = held.peers.iter_mut().next().unwrap();
    let first = *peer.allowed_ips.iter().next().unwrap();
    peer.allowed_ips.remove(&first);
    assert!(!set_peer(&fewer), "growing only adds");

    let mut more = as_observed(&want);
    let held = more.wireguard.get_mut("ww-red").unwrap();
    let (_, peer) = held.peers.iter_mut().next().unwrap();
    peer.allowed_ips.insert("10.100.99.0/24".parse().unwrap());
    assert!(set_peer(&more), "shrinking replaces");
}

#[test]
fn drift_is_restored_exactly() {
    let want = plane(vec![red()]);
    let route = Route {
        table: 0x5757_0000 + 51821,
        destination: "10.100.0.1/32".parse().unwrap(),
        device: "wwv0000000a".into(),
    };
    let rule = Rule::Reject {
        iif: "wwv0000000a".into(),
        ipv4: true,
    };

    let mut lost_route = as_observed(&want);
    lost_route.routes.remove(&route);
    assert_eq!(converge(&want, &lost_route), [Op::AddRoute(route.clone())]);

    let mut lost_rule = as_observed(&want);
    lost_rule.rules.remove(&rule);
    assert_eq!(converge(&want, &lost_rule), [Op::AddRule(rule)]);

    let mut lost_peer = as_observed(&want);
    let peer = lost_peer
        .wireguard
        .get_mut("ww-red")
        .unwrap()
        .peers
        .remove(&test_key(2))
        .unwrap();
    assert_eq!(
        converge(&want, &lost_peer),
        [Op::SetPeer {
            interface: "ww-red".into(),
            public_key: test_key(2),
            peer,
            replace_allowed_ips: false,
        }]
    );

    // A veth deleted out of band takes its route with it: the pair is rebuilt and routed.
    let mut lost_veth = as_observed(&want);
    lost_veth.members.remove("wwv0000000a");
    lost_veth.routes.remove(&route);
    let ops = converge(&want, &lost_veth);
    assert!(
        matches!(&ops[0], Op::CreateMember { host, .. } if host == "wwv0000000a"),
        "{ops:#?}"
    );
    assert_eq!(ops.last(), Some(&Op::AddRoute(route)));
    let mut healed = lost_veth.clone();
    apply(&mut healed, &want, &ops);
    assert_eq!(converge(&want, &healed), []);
}

#[test]
fn a_member_in_a_new_namespace_gets_a_new_pair() {
    let want = plane(vec![red()]);
    let mut observed = as_observed(&want);
    observed
        .members
        .get_mut("wwv0000000a")
        .unwrap()
        .workload
        .as_mut()
        .unwrap()
        .netns
        .ino += 1;
    let ops = converge(&want, &observed);
    assert_eq!(
        ops[0],
        Op::DeleteLink {
            name: "wwv0000000a".into()
        }
    );
    assert!(ops.iter().any(|o| matches!(o, Op::CreateMember { .. })));
    // The new pair's link has forwarding off until it is turned on again.
    assert!(ops.contains(&Op::EnableForwarding(Forwarding {
        device: "wwv0000000a".into(),
        ipv4: true
    })));
    let mut healed = observed.clone();
    apply(&mut healed, &want, &ops);
    assert_eq!(converge(&want, &healed), []);
}

#[test]
fn removing_a_service_removes_everything_it_had_and_nothing_else() {
    let both = as_observed(&plane(vec![red(), green()]));
    let want = plane(vec![green()]);
    let ops = converge(&want, &both);
    let deleted: BTreeSet<&str> = ops
        .iter()
        .filter_map(|o| match o {
            Op::DeleteLink { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted,
        BTreeSet::from(["ww-red", "wwv0000000a", "wwv0000000b"])
    );
    let red = ["ww-red", "wwv0000000a", "wwv0000000b"];
    assert!(
        ops.iter().all(|o| match o {
            Op::DeleteLink { .. } => true,
            Op::RemoveRule(Rule::Lookup { iif, .. } | Rule::Reject { iif, .. }) =>
                red.contains(&iif.as_str()),
            Op::SetFirewallSources { add, remove } =>
                add.is_empty() && remove.iter().all(|s| red.contains(&s.device.as_str())),
            _ => false,
        }),
        "{ops:#?}"
    );
    let mut after = both.clone();
    apply(&mut after, &want, &ops);
    assert_eq!(after, as_observed(&want));
}

#[test]
fn what_cannot_be_applied_is_reported_and_the_rest_goes_ahead() {
    let mut broken = green();
    broken.cidr = "not-a-cidr".into();
    let mut starting = red();
    starting.members.truncate(1);
    starting.members[0].netns = None;
    let (plane, errors) = desired(&state(vec![starting, broken]), pods_running);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.service == "green/green" && e.message.contains("cidr"))
    );
    assert!(
        errors
            .iter()
            .any(|e| e.service == "red/red" && e.message.contains("red/red-a"))
    );
    assert!(plane.wireguard.contains_key("ww-red") && !plane.wireguard.contains_key("ww-green"));
    assert!(plane.members.is_empty());
}

/// Random node states: subsets of three services, each with some members and peers.
fn node_states() -> impl Strategy<Value = Plane> {
    let shape = (
        0..3usize,
        prop::collection::btree_set(0..4usize, 0..4),
        prop::collection::btree_set(0..4usize, 0..4),
        0..2u16,
        0..2u32,
    );
    prop::collection::vec(shape, 0..4).prop_map(|services| {
        let mut states = Vec::new();
        let mut seen = BTreeSet::new();
        for (s, members, peers, port, mtu) in services {
            if !seen.insert(s) {
                continue;
            }
            let port = 51820 + u16::try_from(s).unwrap() * 10 + port;
            let mut svc = service(&format!("ns/s{s}"))
                .port(port)
                .mtu(1380 + 40 * mtu)
                .cidr(&format!("10.{s}.0.0/16"))
                .node_prefix(&format!("10.{s}.0.0/24"));
            for m in members {
                svc = svc.member(
                    member(&format!("ns/p{s}{m}"))
                        .host_side(&format!("wwv{s}{m}"))
                        .at(&format!("10.{s}.0.{}", m + 1)),
                );
            }
            for p in peers {
                svc = svc.peer(
                    peer(&format!("key{p}"))
                        .at(&format!("192.168.77.{p}:{port}"))
                        .allowing(&format!("10.{s}.{}.0/24", p + 1)),
                );
            }
            states.push(svc);
        }
        plane(states)
    })
}

proptest! {
    #[test]
    fn applying_the_operations_converges_and_then_nothing_is_left(from in node_states(), to in node_states()) {
        let mut kernel = as_observed(&from);
        let ops = converge(&to, &kernel);
        apply(&mut kernel, &to, &ops);
        prop_assert_eq!(&kernel, &as_observed(&to));
        prop_assert_eq!(converge(&to, &kernel), vec![]);
        // A WireGuard interface that stays is never recreated.
        for name in from.wireguard.keys().filter(|n| to.wireguard.contains_key(*n)) {
            let recreated = ops.iter().any(|o| matches!(o, Op::CreateWireGuard { name: n } | Op::DeleteLink { name: n } if n == name));
            prop_assert!(!recreated, "{} was recreated", name);
        }
    }
}

/// Finds namespaces like [`pods_running`], and knows one host name.
struct Dns;

impl Lookup for Dns {
    fn netns(&self, locator: &NetnsLocator) -> Result<ResolvedNetns, String> {
        pods_running(locator)
    }

    fn endpoint(&self, host_port: &str) -> Option<std::net::SocketAddr> {
        (host_port == "vm.example:51820").then(|| "192.0.2.10:51820".parse().unwrap())
    }
}

#[test]
fn endpoints_by_name_are_resolved_or_left_out_and_reported() {
    let mut svc = red();
    svc.peers = vec![
        peer("key-b")
            .at("vm.example:51820")
            .allowing("10.100.255.10/32"),
        peer("key-c")
            .at("nowhere.example:51820")
            .allowing("10.100.255.11/32"),
        peer("key-d")
            .at("[fd00::1]:51820")
            .allowing("10.100.255.12/32"),
    ];
    assert_eq!(
        endpoint_names(&state(vec![svc.clone()])),
        BTreeSet::from([
            "vm.example:51820".to_owned(),
            "nowhere.example:51820".to_owned()
        ])
    );
    let (plane, errors) = desired(&state(vec![svc]), Dns);
    let peers = &plane.wireguard["ww-red"].peers;
    assert_eq!(peers["key-b"].endpoint.as_deref(), Some("192.0.2.10:51820"));
    assert_eq!(
        peers["key-c"].endpoint, None,
        "set without an endpoint: it can dial in"
    );
    assert_eq!(peers["key-d"].endpoint.as_deref(), Some("[fd00::1]:51820"));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .message
            .contains("nowhere.example:51820 does not resolve"),
        "{}",
        errors[0]
    );
    assert_eq!(plane.members.len(), 2, "the rest of the service is applied");
}

#[test]
fn a_peer_that_dials_in_is_in_sync_wherever_it_came_from() {
    let mut svc = red();
    svc.peers = vec![peer("key-b").allowing("10.100.1.0/24")];
    let want = plane(vec![svc]);
    let mut have = want.clone();
    // WireGuard learned the peer's endpoint from its packets.
    if let Some(p) = have
        .wireguard
        .get_mut("ww-red")
        .and_then(|w| w.peers.get_mut("key-b"))
    {
        p.endpoint = Some("198.51.100.7:40000".into());
    }
    assert_eq!(converge(&want, &have), []);
    // An allowed IP that differs is still a change.
    if let Some(p) = have
        .wireguard
        .get_mut("ww-red")
        .and_then(|w| w.peers.get_mut("key-b"))
    {
        p.allowed_ips.clear();
    }
    assert_eq!(converge(&want, &have).len(), 1);
}

/// Red with names: its members' DNS queries are the agent's to answer.
fn named_red() -> ServiceState {
    ServiceState {
        dns: Some(wireway_proto::ServiceDns {
            zone: "red.red.wireway.internal".into(),
            records: Default::default(),
        }),
        ..red()
    }
}

#[test]
fn an_ipv4_members_dns_queries_to_its_gateway_are_delivered_to_the_node_and_nothing_else() {
    let want = plane(vec![named_red(), green()]);
    let dns: BTreeSet<&Rule> = want
        .rules
        .iter()
        .filter(|r| matches!(r, Rule::Dns { .. }))
        .collect();
    let expected: Vec<Rule> = ["wwv0000000a", "wwv0000000b"]
        .into_iter()
        .flat_map(|iif| {
            [false, true].map(|tcp| Rule::Dns {
                iif: iif.into(),
                tcp,
            })
        })
        .collect();
    assert_eq!(
        dns,
        expected.iter().collect(),
        "UDP and TCP, IPv4 members only"
    );
    let local = Route {
        table: DNS_TABLE,
        destination: "169.254.77.1/32".parse().unwrap(),
        device: LOCAL_DEVICE.into(),
    };
    assert!(want.routes.contains(&local));
    // The service's table still routes the gateway away, so ARP for it gets proxy ARP.
    assert!(want.routes.iter().any(|r| r.table == 0x5757_0000 + 51821
        && r.destination == local.destination
        && r.device == "ww-red"));

    let mut held = Plane::default();
    apply(&mut held, &want, &converge(&want, &Plane::default()));
    assert_eq!(converge(&want, &held), []);

    // Without names (or without IPv4 members) neither the rules nor the route stay.
    let unnamed = plane(vec![red(), green()]);
    let ops = converge(&unnamed, &held);
    assert!(ops.contains(&Op::RemoveRoute(local)), "{ops:#?}");
    assert_eq!(
        ops.iter()
            .filter(|o| matches!(o, Op::RemoveRule(Rule::Dns { .. })))
            .count(),
        4
    );
    apply(&mut held, &unnamed, &ops);
    assert_eq!(converge(&unnamed, &held), []);
}
