//! A hostile tenant against the real kernel (issue 11): namespace paths aimed at someone
//! else's namespace or at a FIFO, an interface that merely has the name of ours, and
//! packets aimed at the node itself or sent from someone else's address.
//!
//! The packet tests end with a control: with the node's nftables table deleted, the same
//! probes *do* arrive. That is what proves they would catch a missing or broken firewall
//! (before the agent had one, every one of these probes arrived), rather than pass
//! because the probes never worked.

use std::net::IpAddr;
use std::os::unix::fs::symlink;

use super::probes::{Listeners, send, send_to_port};
use super::*;

/// `state` with one more red member, `red/<name>` at `address`, whose namespace is `path`.
fn with_red_member(state: NodeState, name: &str, path: &str, address: &str) -> NodeState {
    let mut state = state;
    let at = state
        .services
        .iter()
        .position(|s| s.name == "red/red")
        .unwrap();
    let red = state.services.remove(at).member(
        member(&format!("red/{name}"))
            .in_netns(path)
            .host_side(&host_side("red", name))
            .at(address),
    );
    state.with(red)
}

/// The links in a namespace, one line each.
fn links(lab: &Lab, ns: &str) -> String {
    ok(&["ip", "-n", &lab.ns(ns), "-o", "link"])
}

fn errors_in(summary_out: &str) -> usize {
    let summary = summary_out.lines().last().unwrap_or_default();
    summary
        .split(" errors")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in {summary_out:?}"))
}

/// Deletes `node`'s nftables table behind the agent's back: the tests' control.
fn delete_table(lab: &Lab, node: &str) {
    ok(&[
        "ip",
        "netns",
        "exec",
        &lab.ns(node),
        "nft",
        "delete",
        "table",
        "inet",
        "wireway",
    ]);
}

#[test]
fn the_netns_annotation_aimed_at_another_pods_namespace_is_ignored() {
    if !root_or_skip("the_netns_annotation_aimed_at_another_pods_namespace_is_ignored") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    apply_all(&lab, &[&red()], &keys);
    // The victim: loner's namespace, reachable as /proc/<pid>/ns/net of a process in it.
    let pid = lab.sleeper("loner");
    let victim = format!("/proc/{pid}/ns/net");
    let link_out = lab.planted("link-out");
    symlink(&victim, &link_out).unwrap();
    let link_in = lab.planted("link-in");
    symlink(format!("/run/netns/{}", lab.ns("loner")), &link_in).unwrap();
    let attacks = [
        victim.clone(),
        link_out.to_string_lossy().into_owned(),
        link_in.to_string_lossy().into_owned(),
        format!("/run/netns/../../proc/{pid}/ns/net"),
        // The node's own namespace.
        format!("/run/netns/{}", lab.ns("n1")),
    ];
    let mut state = node_state(&lab, "n1", &[&red()], &keys);
    for (i, path) in attacks.iter().enumerate() {
        state = with_red_member(
            state,
            &format!("evil{i}"),
            path,
            &format!("10.100.1.{}", 100 + i),
        );
    }
    let (out, err, _) = lab.try_apply("n1", &state);
    assert_eq!(errors_in(&out), 0, "{out}{err}");
    for (i, path) in attacks.iter().enumerate() {
        let said = format!("member red/evil{i}: ");
        let line = err.lines().find(|l| l.contains(&said));
        assert!(
            line.is_some_and(|l| l.contains("refused")),
            "{path} must be refused: {err}"
        );
    }
    let loner = links(&lab, "loner");
    assert_eq!(loner.lines().count(), 1, "loner holds only lo: {loner}");
    // The rest of the service converged, and stays converged.
    assert!(lab.reachable("red-a", "10.100.2.1"), "red-a -> red-b");
    let (out, err, _) = lab.try_apply("n1", &state);
    assert!(out.starts_with("0 operations"), "{out}{err}");
}

#[test]
fn the_netns_annotation_aimed_at_a_fifo_stalls_nothing() {
    if !root_or_skip("the_netns_annotation_aimed_at_a_fifo_stalls_nothing") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    apply_all(&lab, &[&red()], &keys);
    let fifo = lab.planted("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let file = lab.planted("file");
    std::fs::write(&file, "").unwrap();
    let mut state = node_state(&lab, "n1", &[&red()], &keys);
    for (i, path) in [&fifo, &file].iter().enumerate() {
        let path = path.to_string_lossy();
        state = with_red_member(
            state,
            &format!("evil{i}"),
            &path,
            &format!("10.100.1.{}", 100 + i),
        );
    }
    // Before, opening the FIFO waited for a writer that never came: the pass never ended.
    let (out, err, took) = lab.try_apply("n1", &state);
    assert!(took < Duration::from_secs(10), "the pass took {took:?}");
    assert_eq!(errors_in(&out), 0, "{out}{err}");
    assert_eq!(
        err.matches("is refused: it is not a network namespace")
            .count(),
        2,
        "{err}"
    );
    assert!(lab.reachable("red-a", "10.100.2.1"), "red-a -> red-b");
}

#[test]
fn an_interface_named_like_ours_that_is_not_our_veths_peer_is_never_touched() {
    if !root_or_skip("an_interface_named_like_ours_that_is_not_our_veths_peer_is_never_touched") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    // red-a made itself an interface called nsm-red (a veth pair of its own); red-b has
    // its CNI's eth0 (a veth whose other end is on its node), and its Endpoint asks for
    // `interfaceName: eth0`.
    let (red_a, red_b) = (lab.ns("red-a"), lab.ns("red-b"));
    ok(&[
        "ip", "-n", &red_a, "link", "add", "nsm-red", "type", "veth", "peer", "name", "own0",
    ]);
    ok(&[
        "ip",
        "-n",
        &red_a,
        "addr",
        "add",
        "192.0.2.7/32",
        "dev",
        "nsm-red",
    ]);
    ok(&["ip", "-n", &red_a, "link", "set", "nsm-red", "up"]);
    ok(&[
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        &red_b,
        "type",
        "veth",
        "peer",
        "cnib",
        "netns",
        &lab.ns("n2"),
    ]);
    ok(&[
        "ip",
        "-n",
        &red_b,
        "addr",
        "add",
        "10.244.0.5/24",
        "dev",
        "eth0",
    ]);
    ok(&["ip", "-n", &red_b, "link", "set", "eth0", "up"]);
    let before_a = ok(&["ip", "-n", &red_a, "-o", "addr", "show", "dev", "nsm-red"]);
    let before_b = ok(&["ip", "-n", &red_b, "-o", "addr", "show", "dev", "eth0"]);

    let n1 = node_state(&lab, "n1", &[&red()], &keys);
    let mut n2 = node_state(&lab, "n2", &[&red()], &keys);
    n2.services[0].members[0].interface_name = "eth0".into();
    lab.apply("n3", &node_state(&lab, "n3", &[&red()], &keys));
    for _ in 0..2 {
        for (node, state, name) in [("n1", &n1, "nsm-red"), ("n2", &n2, "eth0")] {
            let (out, err, _) = lab.try_apply(node, state);
            assert_eq!(errors_in(&out), 1, "{out}{err}");
            assert!(
                err.contains(&format!("the interface {name} there is not the agent's")),
                "{err}"
            );
        }
        let after_a = ok(&["ip", "-n", &red_a, "-o", "addr", "show", "dev", "nsm-red"]);
        let after_b = ok(&["ip", "-n", &red_b, "-o", "addr", "show", "dev", "eth0"]);
        assert_eq!(after_a, before_a, "red-a's nsm-red keeps its addresses");
        assert_eq!(after_b, before_b, "red-b's eth0 keeps its addresses");
        let own = ok(&["ip", "-n", &red_a, "-o", "link", "show", "nsm-red"]);
        assert!(
            own.contains("nsm-red@own0") && own.contains("mtu 1500"),
            "{own}"
        );
        let eth0 = ok(&["ip", "-n", &red_b, "-o", "link", "show", "eth0"]);
        assert!(eth0.contains("mtu 1500"), "{eth0}");
    }
    // Once the name is free, the member gets its interface.
    ok(&["ip", "-n", &red_a, "link", "del", "nsm-red"]);
    let (out, err, _) = lab.try_apply("n1", &n1);
    assert_eq!(errors_in(&out), 0, "{out}{err}");
    assert!(lab.reachable("red-a", "10.100.3.1"), "red-a -> bridge");
}

/// Every node's addresses: the underlay of both families.
fn node_addresses() -> Vec<IpAddr> {
    (1..=3)
        .flat_map(|n| [format!("192.168.77.{n}"), format!("fd77::{n}")])
        .map(|a| a.parse().unwrap())
        .collect()
}

/// Link-local addresses of `dev` in namespace `ns`.
fn link_local(ns: &str, dev: &str) -> Vec<IpAddr> {
    ok(&[
        "ip", "-n", ns, "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
    ])
    .split_whitespace()
    .filter_map(|w| w.split('/').next()?.parse().ok())
    .filter(|a: &IpAddr| a.is_ipv6())
    .collect()
}

/// A member's Wireway interface: (workload, interface, service, node).
type Interface = (&'static str, &'static str, Service, &'static str);

fn interfaces() -> Vec<Interface> {
    let mut all = Vec::new();
    for service in [red(), green(), blue()] {
        for (node, workload, _) in service.members.clone() {
            let dev = match service.name {
                "red" => "nsm-red",
                "green" => "nsm-green",
                _ => "nsm-blue",
            };
            all.push((workload, dev, service.clone(), node));
        }
    }
    all
}

/// Probes from `workload` out of `dev` to every node address (routed explicitly through
/// `dev`, so proxy ARP and the node's local table would deliver them), to the gateways,
/// to the link-local addresses of its veth's host side, to broadcast and multicast.
fn probe_the_node(lab: &Lab, (workload, dev, service, node): &Interface) {
    let ns = lab.ns(workload);
    let ipv4 = service.cidr.contains('.');
    let mut targets = node_addresses();
    for address in node_addresses() {
        let (family, gateway) = match (address.is_ipv4(), ipv4) {
            (true, true) => ("-4", "169.254.77.1"),
            (false, false) => ("-6", "fe80::77:1"),
            _ => continue,
        };
        let route = address.to_string();
        let mut args = vec![
            "ip", "-n", &ns, family, "route", "replace", &route, "via", gateway, "dev", dev,
        ];
        if ipv4 {
            args.push("onlink");
        }
        ok(&args);
    }
    targets.extend(
        [
            "127.0.0.1",
            "169.254.77.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fe80::77:1",
            "ff02::1",
        ]
        .map(|a| a.parse::<IpAddr>().unwrap()),
    );
    targets.extend(link_local(
        &lab.ns(node),
        &host_side(service.name, workload),
    ));
    send(&ns, dev, None, &targets);
}

#[test]
fn nothing_a_member_sends_reaches_the_node() {
    if !root_or_skip("nothing_a_member_sends_reaches_the_node") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds_with_blue(&mut lab);
    apply_all(&lab, &[&red(), &green(), &blue()], &keys);
    assert!(lab.reachable("red-a", "10.100.2.1"), "red-a -> red-b");
    assert!(lab.reachable("blue-a", "fd00:b:0:2::1"), "blue-a -> blue-b");

    // An IPv4 member's veth has no IPv6, on either side.
    for (workload, dev, service, node) in interfaces() {
        if service.cidr.contains('.') {
            let host = host_side(service.name, workload);
            let n = ok(&[
                "ip",
                "-n",
                &lab.ns(node),
                "-6",
                "-o",
                "addr",
                "show",
                "dev",
                &host,
            ]);
            let w = ok(&[
                "ip",
                "-n",
                &lab.ns(workload),
                "-6",
                "-o",
                "addr",
                "show",
                "dev",
                dev,
            ]);
            assert!(
                n.trim().is_empty() && w.trim().is_empty(),
                "{host}: {n}; {dev}: {w}"
            );
        }
    }

    let nodes: Vec<String> = ["n1", "n2", "n3"].map(|n| lab.ns(n)).to_vec();
    let listeners = Listeners::new(&nodes);
    for interface in interfaces() {
        probe_the_node(&lab, &interface);
    }
    let heard = listeners.received();
    assert!(heard.is_empty(), "the node heard its members: {heard:#?}");

    // Control: without n1's table the same probes arrive (verified: the test fails with
    // the firewall disabled), so the zero above is the firewall's.
    delete_table(&lab, "n1");
    let red_a = interfaces().into_iter().find(|i| i.0 == "red-a").unwrap();
    let blue_a = interfaces().into_iter().find(|i| i.0 == "blue-a").unwrap();
    probe_the_node(&lab, &red_a);
    probe_the_node(&lab, &blue_a);
    let heard = listeners.received().join("\n");
    assert!(
        heard.contains("to 192.168.77.1:") && heard.contains("to [fd77::1]:"),
        "without the firewall the probes arrive: {heard}"
    );
    // The next pass puts the table back (and removes the probes' routes through its
    // interfaces), and the node is deaf again.
    let state = node_state(&lab, "n1", &[&red(), &green(), &blue()], &keys);
    let (out, err, _) = lab.try_apply("n1", &state);
    assert_eq!(errors_in(&out), 0, "{out}{err}");
    assert!(
        out.starts_with("replace nftables table inet wireway"),
        "{out}"
    );
    probe_the_node(&lab, &red_a);
    probe_the_node(&lab, &blue_a);
    assert_eq!(listeners.received(), Vec::<String>::new());
}

#[test]
fn nothing_a_wireguard_peer_sends_reaches_the_node() {
    if !root_or_skip("nothing_a_wireguard_peer_sends_reaches_the_node") {
        return;
    }
    let mut lab = Lab::new();
    let mut keys = seeds(&mut lab);
    // An external host: its own WireGuard interface (made by an agent of its own), with
    // n1 as its only peer and everything routed to it.
    lab.node("ext", 9);
    keys.insert("ext".into(), lab.public_key("ext"));
    let ext_state = node("ext").with(
        service("red/red")
            .port(51821)
            .cidr("10.100.0.0/16")
            .node_prefix("10.100.255.0/24")
            .peer(
                peer("n1")
                    .key(&keys["n1"])
                    .at("192.168.77.1:51821")
                    .allowing("0.0.0.0/0"),
            ),
    );
    lab.apply("ext", &ext_state);
    let ext = lab.ns("ext");
    // A host, not a Wireway node: it answers what comes through its tunnel.
    ok(&[
        "ip", "netns", "exec", &ext, "nft", "delete", "table", "inet", "wireway",
    ]);
    for args in [
        vec!["addr", "add", "10.100.255.9/32", "dev", "ww-red"],
        vec![
            "route",
            "add",
            "10.100.0.0/16",
            "dev",
            "ww-red",
            "src",
            "10.100.255.9",
        ],
        vec![
            "rule",
            "add",
            "from",
            "10.100.255.9",
            "lookup",
            "100",
            "priority",
            "100",
        ],
        vec!["route", "add", "default", "dev", "ww-red", "table", "100"],
    ] {
        let mut full = vec!["ip", "-n", &ext];
        full.extend(args);
        ok(&full);
    }
    // n1 admits it as the service's external peer; n2 is a node gone bad: it routes red's
    // packets for n1's own address into the tunnel, and lets n1 receive anything.
    let mut n1 = node_state(&lab, "n1", &[&red()], &keys);
    let admitted = n1.services.remove(0).peer(
        peer("ext")
            .key(&keys["ext"])
            .at("192.168.77.9:51821")
            .allowing("10.100.255.9/32"),
    );
    n1 = n1.with(admitted);
    let mut n2 = node_state(&lab, "n2", &[&red()], &keys);
    for p in &mut n2.services[0].peers {
        if p.name == "n1" {
            p.allowed_ips = vec!["0.0.0.0/0".into()];
        }
    }
    lab.apply("n1", &n1);
    lab.apply("n2", &n2);
    lab.apply("n3", &node_state(&lab, "n3", &[&red()], &keys));
    let table = (0x5757_0000u32 + 51821).to_string();
    ok(&[
        "ip",
        "-n",
        &lab.ns("n2"),
        "route",
        "add",
        "192.168.77.1",
        "dev",
        "ww-red",
        "table",
        &table,
    ]);
    ok(&[
        "ip",
        "-n",
        &lab.ns("red-b"),
        "route",
        "replace",
        "192.168.77.1",
        "via",
        "169.254.77.1",
        "dev",
        "nsm-red",
        "onlink",
    ]);
    let from_ext = ok(&[
        "ip",
        "netns",
        "exec",
        &ext,
        "ping",
        "-c",
        "3",
        "-i",
        "0.3",
        "-W",
        "2",
        "10.100.1.1",
    ]);
    assert!(
        !from_ext.contains(" 0 received"),
        "the external peer reaches red-a: {from_ext}"
    );

    let nodes: Vec<String> = ["n1", "n2", "n3"].map(|n| lab.ns(n)).to_vec();
    let listeners = Listeners::new(&nodes);
    let targets: Vec<IpAddr> = [
        "192.168.77.1",
        "192.168.77.2",
        "169.254.77.1",
        "255.255.255.255",
        "224.0.0.1",
    ]
    .map(|a| a.parse().unwrap())
    .to_vec();
    let attack = || {
        send(
            &ext,
            "ww-red",
            Some("10.100.255.9".parse().unwrap()),
            &targets,
        );
        send(&lab.ns("red-b"), "nsm-red", None, &targets);
    };
    attack();
    let heard = listeners.received();
    assert!(heard.is_empty(), "the node heard its peers: {heard:#?}");

    // Control: without n1's table the same datagrams arrive through the tunnel (verified:
    // the test fails with the firewall disabled).
    delete_table(&lab, "n1");
    attack();
    let heard = listeners.received().join("\n");
    assert!(
        heard.contains(&format!("{} (IPv4) heard 10.100.255.9", lab.ns("n1")))
            && heard.contains(&format!("{} (IPv4) heard 10.100.2.1", lab.ns("n1"))),
        "without the firewall the peers' datagrams arrive: {heard}"
    );
}

#[test]
fn a_spoofed_source_from_a_member_is_dropped_at_its_own_node() {
    if !root_or_skip("a_spoofed_source_from_a_member_is_dropped_at_its_own_node") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    for workload in ["red-c", "blue-a", "blue-b"] {
        lab.netns(workload);
    }
    let mut red = red();
    red.members.push(("n1", "red-c", "10.100.1.2"));
    apply_all(&lab, &[&red, &blue()], &keys);
    assert!(lab.reachable("red-a", "10.100.2.1"), "red-a -> red-b");
    assert!(lab.reachable("blue-a", "fd00:b:0:2::1"), "blue-a -> blue-b");
    // Whatever the host's reverse-path filter says: off.
    ok(&[
        "ip",
        "netns",
        "exec",
        &lab.ns("n1"),
        "sh",
        "-c",
        "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done",
    ]);
    let victims: Vec<String> = ["red-b", "red-c", "blue-b"].map(|w| lab.ns(w)).to_vec();
    let listeners = Listeners::new(&victims);
    let to_red: Vec<IpAddr> = ["10.100.2.1", "10.100.1.2"]
        .map(|a| a.parse().unwrap())
        .to_vec();
    let to_blue: Vec<IpAddr> = vec!["fd00:b:0:2::1".parse().unwrap()];
    let (red_a, blue_a) = (lab.ns("red-a"), lab.ns("blue-a"));

    // From its own address, red-a reaches red-b (across the tunnel) and red-c (on its
    // node); blue-a reaches blue-b.
    send(
        &red_a,
        "nsm-red",
        Some("10.100.1.1".parse().unwrap()),
        &to_red,
    );
    send(
        &blue_a,
        "nsm-blue",
        Some("fd00:b:0:1::1".parse().unwrap()),
        &to_blue,
    );
    assert_eq!(listeners.received().len(), 3, "own sources arrive");

    // Another address of its node's prefix, toward a member across the tunnel and one on
    // its own node; then another member's address (red-c's).
    ok(&[
        "ip",
        "-n",
        &red_a,
        "addr",
        "add",
        "10.100.1.77/32",
        "dev",
        "nsm-red",
    ]);
    ok(&[
        "ip",
        "-n",
        &blue_a,
        "addr",
        "add",
        "fd00:b:0:1::77/128",
        "dev",
        "nsm-blue",
        "nodad",
    ]);
    let spoof = || {
        send(
            &red_a,
            "nsm-red",
            Some("10.100.1.77".parse().unwrap()),
            &to_red,
        );
        send(
            &blue_a,
            "nsm-blue",
            Some("fd00:b:0:1::77".parse().unwrap()),
            &to_blue,
        );
    };
    spoof();
    ok(&[
        "ip",
        "-n",
        &red_a,
        "addr",
        "add",
        "10.100.1.2/32",
        "dev",
        "nsm-red",
    ]);
    send(
        &red_a,
        "nsm-red",
        Some("10.100.1.2".parse().unwrap()),
        &to_red[..1],
    );
    let heard = listeners.received();
    assert!(heard.is_empty(), "spoofed sources arrived: {heard:#?}");

    // Control: without n1's table they arrive (verified: the test fails with the firewall
    // disabled), so the drop is the firewall's.
    delete_table(&lab, "n1");
    spoof();
    let heard = listeners.received().join("\n");
    assert!(
        heard.contains("heard 10.100.1.77") && heard.contains("heard [fd00:b:0:1::77]"),
        "without the firewall spoofed sources arrive: {heard}"
    );
}

/// `state` with names for each of its services, as the operator sends them.
fn named(mut state: NodeState) -> NodeState {
    for service in &mut state.services {
        service.dns = Some(wireway_proto::ServiceDns {
            zone: format!("{}.wireway.internal", service.name.replace('/', ".")),
            records: Default::default(),
        });
    }
    state
}

/// With names, a member's DNS queries to its gateway are delivered to the node (the
/// control proves it) but reach only a transparent socket, the agent's kind: a resolver
/// of the node's own on port 53 (here listeners on 0.0.0.0:53 and [::]:53, while no agent
/// listens) hears nothing, and the other probes stay unheard.
#[test]
fn a_members_dns_reaches_no_resolver_of_the_node() {
    if !root_or_skip("a_members_dns_reaches_no_resolver_of_the_node") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds_with_blue(&mut lab);
    let services = [&red(), &green(), &blue()];
    for n in ["n1", "n2", "n3"] {
        let state = named(node_state(&lab, n, &services, &keys));
        let (out, err, _) = lab.try_apply(n, &state);
        assert_eq!(errors_in(&out), 0, "{out}{err}");
    }
    let nodes: Vec<String> = ["n1", "n2", "n3"].map(|n| lab.ns(n)).to_vec();
    let resolvers = Listeners::on(&nodes, 53);
    let ask = |lab: &Lab| {
        for (workload, dev, service, _) in interfaces() {
            let gateway = if service.cidr.contains('.') {
                "169.254.77.1"
            } else {
                "fe80::77:1"
            };
            send_to_port(
                &lab.ns(workload),
                dev,
                None,
                &[gateway.parse().unwrap()],
                53,
            );
        }
    };
    ask(&lab);
    assert_eq!(resolvers.received(), Vec::<String>::new());
    let listeners = Listeners::new(&nodes);
    for interface in interfaces() {
        probe_the_node(&lab, &interface);
    }
    assert_eq!(listeners.received(), Vec::<String>::new());

    // Control: without n1's table, its members' queries reach the node's resolver, in
    // both families, so the silence above is the table's.
    delete_table(&lab, "n1");
    ask(&lab);
    let heard = resolvers.received().join("\n");
    assert!(
        heard.contains("to 169.254.77.1:53") && heard.contains("to [fe80::77:1"),
        "without the table the queries arrive: {heard}"
    );
}
