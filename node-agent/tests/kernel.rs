//! The agent against the real kernel: "nodes" and "workloads" are fresh network
//! namespaces (unique names per test, removed even when a test fails), nodes joined by an
//! underlay bridge; `wireway-agent apply` runs inside each node's namespace as it would on
//! a host; packets are real pings through userspace WireGuard.
//!
//! These tests need root. Under CI they must run: without root they fail there, and
//! elsewhere they say they were skipped.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly by panicking

#[path = "kernel/faults.rs"]
mod faults;
#[path = "kernel/isolation.rs"]
mod isolation;
#[path = "kernel/probes.rs"]
mod probes;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use wireway_agent::testing::*;
use wireway_proto::NodeState;

const AGENT: &str = env!("CARGO_BIN_EXE_wireway-agent");
static NEXT: AtomicU32 = AtomicU32::new(0);

use wireway_testkit::root_or_skip;

fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Namespaces, state directories, files and processes of one test, removed on drop.
struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    dir: PathBuf,
    underlay: BTreeMap<String, String>,
    /// Files the test planted outside its directory (in /run/netns).
    planted: Vec<PathBuf>,
    /// Processes it started.
    children: Vec<Child>,
}

impl Lab {
    fn new() -> Self {
        let prefix = format!(
            "wwk{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let mut lab = Self {
            prefix,
            namespaces: Vec::new(),
            dir,
            underlay: BTreeMap::new(),
            planted: Vec::new(),
            children: Vec::new(),
        };
        let switch = lab.netns("switch");
        ok(&["ip", "-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ok(&["ip", "-n", &switch, "link", "set", "br0", "up"]);
        lab
    }

    fn netns(&mut self, name: &str) -> String {
        let full = format!("{}-{name}", self.prefix);
        ok(&["ip", "netns", "add", &full]);
        ok(&["ip", "-n", &full, "link", "set", "lo", "up"]);
        self.namespaces.push(full.clone());
        full
    }

    /// A node: a namespace with `eth0` on the underlay bridge at 192.168.77.<n> and
    /// fd77::<n>.
    fn node(&mut self, name: &str, n: u8) -> String {
        let ns = self.netns(name);
        let switch = format!("{}-switch", self.prefix);
        let port = format!("p{n}");
        ok(&[
            "ip", "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", &port, "netns",
            &switch,
        ]);
        ok(&[
            "ip", "-n", &switch, "link", "set", &port, "master", "br0", "up",
        ]);
        let address = format!("192.168.77.{n}");
        ok(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ]);
        ok(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("fd77::{n}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        self.underlay.insert(name.to_owned(), address);
        ns
    }

    /// A process that sleeps in the namespace `name` (its `/proc/<pid>/ns/net` is that
    /// namespace); its pid.
    fn sleeper(&mut self, name: &str) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(name), "sleep", "600"])
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// A file of this test's in /run/netns (removed on drop).
    fn planted(&mut self, name: &str) -> PathBuf {
        let path = PathBuf::from("/run/netns").join(format!("{}-{name}", self.prefix));
        self.planted.push(path.clone());
        path
    }

    fn state_dir(&self, node: &str) -> String {
        self.dir.join(node).to_string_lossy().into_owned()
    }

    fn public_key(&self, node: &str) -> String {
        ok(&[AGENT, "--state-dir", &self.state_dir(node), "public-key"])
            .trim()
            .to_owned()
    }

    /// Runs `wireway-agent apply` in the node's namespace with the state file of the
    /// node's last `apply`; returns its output, whatever it says, and how long it took.
    fn try_pass(&self, node: &str) -> (Output, Duration) {
        let file = self.dir.join(format!("{node}.json"));
        let ns = format!("{}-{node}", self.prefix);
        let state_dir = self.state_dir(node);
        let started = Instant::now();
        // A pass that hangs fails the test instead of stalling it.
        let out = run(&[
            "timeout",
            "60",
            "ip",
            "netns",
            "exec",
            &ns,
            AGENT,
            "--state-dir",
            &state_dir,
            "--netns-path-prefix",
            "/run/netns",
            "apply",
            "--node-state",
            file.to_str().unwrap(),
        ]);
        (out, started.elapsed())
    }

    /// Applies `state` on `node` whatever comes of it: (stdout, stderr, time taken).
    fn try_apply(&self, node: &str, state: &NodeState) -> (String, String, Duration) {
        self.write_state(node, state);
        let (out, took) = self.try_pass(node);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            took,
        )
    }

    /// Runs `wireway-agent apply` in the node's namespace with the state file of the
    /// node's last `apply`; returns the summary line.
    fn pass(&self, node: &str) -> String {
        let (out, _) = self.try_pass(node);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "wireway-agent apply failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = stdout.lines().last().unwrap_or_default().to_owned();
        assert!(summary.contains(" 0 errors"), "errors: {stdout}");
        summary
    }

    /// Writes `state` where the next pass of `node` reads it.
    fn write_state(&self, node: &str, state: &NodeState) {
        let json = serde_json::to_string(state).unwrap();
        std::fs::write(self.dir.join(format!("{node}.json")), json).unwrap();
    }

    /// Applies `state` on `node`; returns (operations, netlink writes).
    fn apply(&self, node: &str, state: &NodeState) -> (usize, u64) {
        self.write_state(node, state);
        let summary = self.pass(node);
        let numbers: Vec<u64> = summary
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(numbers.len(), 3, "unexpected summary {summary:?}");
        (numbers[0] as usize, numbers[1])
    }

    /// The WireGuard backend the node's agent uses (`kernel` or `userspace`), as the
    /// summary of a pass over its last state names it.
    fn backend(&self, node: &str) -> String {
        let summary = self.pass(node);
        let named = summary.rsplit('(').next().unwrap_or_default();
        named
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        let ns = format!("{}-{from}", self.prefix);
        run(&["ip", "netns", "exec", &ns, "ping", "-c", "1", "-W", "2", to])
            .status
            .success()
    }

    /// Pings until one answer (WireGuard handshakes and ARP take a moment), then once more.
    fn reachable(&self, from: &str, to: &str) -> bool {
        (0..4).any(|_| self.ping(from, to)) && self.ping(from, to)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for path in &self.planted {
            let _ = std::fs::remove_file(path);
        }
        // The userspace WireGuard devices are processes started from our state dirs.
        let _ = run(&["pkill", "-f", &self.dir.to_string_lossy()]);
        for ns in self.namespaces.iter().rev() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A service for the NodeStates of these tests: members are (node, workload, address);
/// each node's prefix is the member address's /24 (/64).
#[derive(Clone)]
struct Service {
    name: &'static str,
    port: u16,
    cidr: &'static str,
    members: Vec<(&'static str, &'static str, &'static str)>,
}

/// A member's node prefix: its address's /24 (IPv4) or /64 (IPv6).
fn prefix_of(address: &str) -> String {
    let address: std::net::IpAddr = address.parse().unwrap();
    let length = if address.is_ipv4() { 24 } else { 64 };
    ipnet::IpNet::new(address, length)
        .unwrap()
        .trunc()
        .to_string()
}

/// The host side of `workload`'s veth in `service`, as the operator would name it.
fn host_side(service: &str, workload: &str) -> String {
    format!(
        "wwv{}{}",
        &service[..1],
        workload.len() + workload.bytes().map(usize::from).sum::<usize>()
    )
}

/// The NodeState of `node`, as the operator would send it.
fn node_state(
    lab: &Lab,
    node: &str,
    services: &[&Service],
    keys: &BTreeMap<String, String>,
) -> NodeState {
    let mut state = wireway_agent::testing::node(node);
    for svc in services {
        let local: Vec<_> = svc.members.iter().filter(|m| m.0 == node).collect();
        let Some(first) = local.first() else { continue };
        let mut service = service(&format!("{0}/{0}", svc.name))
            .port(svc.port)
            .cidr(svc.cidr)
            .node_prefix(&prefix_of(first.2));
        for (_, workload, address) in &local {
            service = service.member(
                member(&format!("{}/{workload}", svc.name))
                    .in_netns(&format!("/run/netns/{}", lab.ns(workload)))
                    .host_side(&host_side(svc.name, workload))
                    .at(address),
            );
        }
        let mut peers: BTreeMap<&str, String> = BTreeMap::new();
        for (other, _, address) in svc.members.iter().filter(|m| m.0 != node) {
            peers.insert(other, prefix_of(address));
        }
        for (other, prefix) in peers {
            service = service.peer(
                peer(other)
                    .key(&keys[other])
                    .at(&format!("{}:{}", lab.underlay[other], svc.port))
                    .allowing(&prefix),
            );
        }
        state = state.with(service);
    }
    state
}

fn red() -> Service {
    Service {
        name: "red",
        port: 51821,
        cidr: "10.100.0.0/16",
        members: vec![
            ("n1", "red-a", "10.100.1.1"),
            ("n2", "red-b", "10.100.2.1"),
            ("n3", "bridge", "10.100.3.1"),
        ],
    }
}

fn green() -> Service {
    Service {
        name: "green",
        port: 51820,
        cidr: "10.200.0.0/16",
        members: vec![
            ("n1", "green-a", "10.200.1.1"),
            ("n2", "green-b", "10.200.2.1"),
            ("n3", "bridge", "10.200.3.1"),
        ],
    }
}

/// [`seeds`], and the namespaces of blue's workloads.
fn seeds_with_blue(lab: &mut Lab) -> BTreeMap<String, String> {
    let keys = seeds(lab);
    lab.netns("blue-a");
    lab.netns("blue-b");
    keys
}

/// The seeds' picture on three nodes.
fn seeds(lab: &mut Lab) -> BTreeMap<String, String> {
    for (i, node) in ["n1", "n2", "n3"].iter().enumerate() {
        lab.node(node, i as u8 + 1);
    }
    for workload in ["red-a", "red-b", "green-a", "green-b", "bridge", "loner"] {
        lab.netns(workload);
    }
    ["n1", "n2", "n3"]
        .iter()
        .map(|n| ((*n).to_owned(), lab.public_key(n)))
        .collect()
}

/// Blue, an IPv6 service on n1 and n2.
fn blue() -> Service {
    Service {
        name: "blue",
        port: 51822,
        cidr: "fd00:b::/48",
        members: vec![
            ("n1", "blue-a", "fd00:b:0:1::1"),
            ("n2", "blue-b", "fd00:b:0:2::1"),
        ],
    }
}

fn apply_all(
    lab: &Lab,
    services: &[&Service],
    keys: &BTreeMap<String, String>,
) -> Vec<(usize, u64)> {
    ["n1", "n2", "n3"]
        .iter()
        .map(|n| lab.apply(n, &node_state(lab, n, services, keys)))
        .collect()
}

#[test]
fn red_reaches_red_green_reaches_green_bridge_reaches_both_nothing_else() {
    if !root_or_skip("red_reaches_red...") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    apply_all(&lab, &[&red(), &green()], &keys);
    // The VM harness runs these tests where the kernel has WireGuard and says so.
    if let Ok(expected) = std::env::var("WIREWAY_EXPECT_BACKEND") {
        assert_eq!(
            lab.backend("n1"),
            expected,
            "the agent picked the wrong WireGuard backend"
        );
    }
    eprintln!("WireGuard backend: {}", lab.backend("n1"));

    assert!(lab.reachable("red-a", "10.100.2.1"), "red-a -> red-b");
    assert!(lab.reachable("red-b", "10.100.3.1"), "red-b -> bridge");
    assert!(lab.reachable("green-a", "10.200.2.1"), "green-a -> green-b");
    assert!(lab.reachable("bridge", "10.200.1.1"), "bridge -> green-a");
    assert!(lab.reachable("bridge", "10.100.1.1"), "bridge -> red-a");

    assert!(
        !lab.ping("red-a", "10.200.2.1"),
        "red-a must not reach green-b"
    );
    assert!(
        !lab.ping("green-b", "10.100.1.1"),
        "green-b must not reach red-a"
    );
    assert!(!lab.ping("loner", "10.100.1.1"), "loner has no way in");

    // A green workload that forges its way toward red: a route to red's cidr through its
    // green interface and a red source address. Green's table knows no red address and
    // its fence rejects the rest, so nothing arrives.
    let green_a = lab.ns("green-a");
    ok(&[
        "ip",
        "-n",
        &green_a,
        "route",
        "add",
        "10.100.0.0/16",
        "via",
        "169.254.77.1",
        "dev",
        "nsm-green",
        "onlink",
    ]);
    ok(&[
        "ip",
        "-n",
        &green_a,
        "addr",
        "add",
        "10.100.9.9/32",
        "dev",
        "nsm-green",
    ]);
    assert!(
        !lab.ping("green-a", "10.100.1.1"),
        "forged green -> red must be dropped"
    );
    let forged = run(&[
        "ip",
        "netns",
        "exec",
        &green_a,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "-I",
        "10.100.9.9",
        "10.100.2.1",
    ]);
    assert!(
        !forged.status.success(),
        "spoofed source toward red must be dropped"
    );
}

#[test]
fn a_second_pass_and_a_restarted_agent_change_nothing_and_drop_nothing() {
    if !root_or_skip("a_second_pass...") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    let first = apply_all(&lab, &[&red(), &green()], &keys);
    assert!(first.iter().all(|(ops, writes)| *ops > 0 && *writes > 0));
    assert!(lab.reachable("red-a", "10.100.2.1"));

    // Ping every 10 ms across a new agent process applying the same state everywhere.
    let pinger: Child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("red-a"),
            "ping",
            "-i",
            "0.01",
            "-c",
            "300",
            "-W",
            "1",
            "10.100.2.1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let second = apply_all(&lab, &[&red(), &green()], &keys);
    let output = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        second,
        vec![(0, 0); 3],
        "in sync: no operation, no netlink write"
    );
    assert!(
        text.contains("300 packets transmitted, 300 received"),
        "{text}"
    );
}

#[test]
fn an_ipv6_member_is_usable_the_moment_its_state_is_applied() {
    if !root_or_skip("an_ipv6_member_is_usable...") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds_with_blue(&mut lab);
    apply_all(&lab, &[&blue()], &keys);
    // Right after the pass: no address still in duplicate address detection (which
    // would drop packets for a second or more after "applied"), on either side of a
    // member's veth.
    // (The kernel's own link-local addresses may still be checked: they are not ours.)
    for (node, workload) in [("n1", "blue-a"), ("n2", "blue-b")] {
        for ns in [lab.ns(node), lab.ns(workload)] {
            let addresses = ok(&["ip", "-n", &ns, "-6", "-o", "address"]);
            let ours: Vec<&str> = addresses
                .lines()
                .filter(|l| l.contains("fd00:b:") || l.contains("fe80::77:1/"))
                .collect();
            assert!(!ours.is_empty(), "{ns} has none of ours: {addresses}");
            for line in ours {
                assert!(!line.contains("tentative"), "{ns} still checks: {line}");
            }
        }
    }
    // The first ping crosses: the member's address, its route through the gateway, the
    // peer's address (the WireGuard handshake holds the packet, it does not drop it).
    assert!(
        lab.ping("blue-a", "fd00:b:0:2::1"),
        "first ping blue-a -> blue-b"
    );
}

#[test]
fn drift_is_restored_exactly() {
    if !root_or_skip("drift_is_restored_exactly") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    apply_all(&lab, &[&red()], &keys);
    assert!(lab.reachable("red-a", "10.100.2.1"));
    let n1 = lab.ns("n1");
    let state = node_state(&lab, "n1", &[&red()], &keys);
    let table = (0x5757_0000u32 + 51821).to_string();

    ok(&[
        "ip",
        "-n",
        &n1,
        "route",
        "del",
        "10.100.0.0/16",
        "table",
        &table,
    ]);
    assert!(!lab.ping("red-a", "10.100.2.1"));
    assert_eq!(lab.apply("n1", &state).0, 1, "one route restored");
    assert!(lab.reachable("red-a", "10.100.2.1"));

    ok(&[
        "ip", "-n", &n1, "rule", "del", "priority", "22359", "iif", "ww-red",
    ]);
    assert_eq!(lab.apply("n1", &state).0, 1, "one rule restored");
    assert!(lab.reachable("red-b", "10.100.1.1"));

    // A peer removed behind the agent's back: with `wg` for kernel WireGuard, through the
    // device's control socket for the userspace one.
    if lab.backend("n1") == "kernel" {
        ok(&[
            "ip",
            "netns",
            "exec",
            &n1,
            "wg",
            "set",
            "ww-red",
            "peer",
            &keys["n2"],
            "remove",
        ]);
    } else {
        let socket = format!("{}/wireguard/ww-red.sock", lab.state_dir("n1"));
        let key_hex = hex_of_base64(&keys["n2"]);
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        std::io::Write::write_all(
            &mut stream,
            format!("set=1\npublic_key={key_hex}\nremove=true\n\n").as_bytes(),
        )
        .unwrap();
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&stream), &mut answer).unwrap();
        assert_eq!(answer.trim(), "errno=0");
    }
    assert!(!lab.ping("red-a", "10.100.2.1"));
    assert_eq!(lab.apply("n1", &state).0, 1, "one peer restored");
    assert!(lab.reachable("red-a", "10.100.2.1"));

    // A member's veth deleted: the pair is rebuilt, configured and routed.
    let host = state.services[0].members[0].host_interface_name.clone();
    ok(&["ip", "-n", &n1, "link", "del", &host]);
    let (ops, _) = lab.apply("n1", &state);
    assert!(ops >= 4, "pair, both sides, route: {ops}");
    assert!(lab.reachable("red-a", "10.100.2.1"));
    assert_eq!(lab.apply("n1", &state), (0, 0));
}

#[test]
fn removing_a_service_removes_all_it_made_and_nothing_else() {
    if !root_or_skip("removing_a_service...") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    apply_all(&lab, &[&red(), &green()], &keys);
    let n3 = lab.ns("n3");
    // Something of someone else's, which must survive.
    ok(&[
        "ip", "-n", &n3, "link", "add", "other0", "type", "veth", "peer", "other1",
    ]);
    ok(&[
        "ip", "-n", &n3, "rule", "add", "priority", "1000", "iif", "other0", "lookup", "100",
    ]);
    apply_all(&lab, &[&red()], &keys);

    let links = ok(&["ip", "-n", &n3, "-o", "link"]);
    assert!(!links.contains("ww-green"), "{links}");
    assert!(
        links.contains("ww-red") && links.contains("other0"),
        "{links}"
    );
    let green_veths = links.lines().filter(|l| l.contains("wwvg")).count();
    assert_eq!(green_veths, 0, "{links}");
    let rules = ok(&["ip", "-n", &n3, "rule"]);
    assert!(
        !rules.contains("ww-green") && !rules.contains("wwvg"),
        "{rules}"
    );
    assert!(rules.contains("iif other0 lookup 100"), "{rules}");
    let bridge_links = ok(&["ip", "-n", &lab.ns("bridge"), "-o", "link"]);
    assert!(
        !bridge_links.contains("nsm-green") && bridge_links.contains("nsm-red"),
        "{bridge_links}"
    );
    let green_table = (0x5757_0000u32 + 51820).to_string();
    let routes = ok(&["ip", "-n", &n3, "route", "show", "table", &green_table]);
    assert!(routes.trim().is_empty(), "{routes}");
    assert!(lab.reachable("bridge", "10.100.1.1"), "red still works");
}

/// A sysctl of `node`'s namespace, e.g. `net/ipv6/conf/all/forwarding`.
fn sysctl(lab: &Lab, node: &str, key: &str) -> String {
    let path = format!("/proc/sys/{key}");
    ok(&["ip", "netns", "exec", &lab.ns(node), "cat", &path])
        .trim()
        .to_owned()
}

#[test]
fn forwarding_is_turned_on_only_on_the_links_a_service_needs() {
    if !root_or_skip("forwarding_is_turned_on_only...") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds_with_blue(&mut lab);
    // A SLAAC node: its uplink takes router advertisements (the namespace's default).
    let accept_ra = sysctl(&lab, "n1", "net/ipv6/conf/eth0/accept_ra");
    let node_wide = |lab: &Lab| {
        [
            "net/ipv4/ip_forward",
            "net/ipv4/conf/eth0/forwarding",
            "net/ipv6/conf/all/forwarding",
            "net/ipv6/conf/eth0/forwarding",
        ]
        .map(|key| (key, sysctl(lab, "n1", key)))
    };
    let off = |key| (key, "0".to_owned());

    // IPv4 services only: forwarding on their links, nothing IPv6, nothing node-wide.
    apply_all(&lab, &[&red(), &green()], &keys);
    assert!(lab.reachable("red-a", "10.100.2.1"), "red-a -> red-b");
    assert!(lab.reachable("bridge", "10.200.1.1"), "bridge -> green-a");
    assert_eq!(
        node_wide(&lab),
        [
            "net/ipv4/ip_forward",
            "net/ipv4/conf/eth0/forwarding",
            "net/ipv6/conf/all/forwarding",
            "net/ipv6/conf/eth0/forwarding",
        ]
        .map(off)
    );
    assert_eq!(
        sysctl(&lab, "n1", "net/ipv6/conf/eth0/accept_ra"),
        accept_ra
    );
    let red_a = host_side("red", "red-a");
    for link in ["ww-red", red_a.as_str()] {
        assert_eq!(
            sysctl(&lab, "n1", &format!("net/ipv4/conf/{link}/forwarding")),
            "1",
            "{link}"
        );
    }

    // An IPv6 service too: its links forward IPv6; still nothing node-wide where the
    // kernel forwards per link (Linux 6.17+, `force_forwarding`).
    apply_all(&lab, &[&red(), &green(), &blue()], &keys);
    assert!(lab.reachable("blue-a", "fd00:b:0:2::1"), "blue-a -> blue-b");
    assert!(lab.reachable("red-a", "10.100.2.1"), "red-a -> red-b");
    let per_link = std::path::Path::new("/proc/sys/net/ipv6/conf/all/force_forwarding").exists();
    if per_link {
        assert_eq!(
            node_wide(&lab),
            [
                "net/ipv4/ip_forward",
                "net/ipv4/conf/eth0/forwarding",
                "net/ipv6/conf/all/forwarding",
                "net/ipv6/conf/eth0/forwarding",
            ]
            .map(off)
        );
        let blue_a = host_side("blue", "blue-a");
        for link in ["ww-blue", blue_a.as_str()] {
            assert_eq!(
                sysctl(
                    &lab,
                    "n1",
                    &format!("net/ipv6/conf/{link}/force_forwarding")
                ),
                "1",
                "{link}"
            );
        }
        assert_eq!(
            sysctl(&lab, "n1", "net/ipv6/conf/eth0/accept_ra"),
            accept_ra
        );
    } else {
        // Only node-wide here (before Linux 6.17): on, and the uplink still takes router
        // advertisements (as a router: 2), or the node would lose its SLAAC routes.
        eprintln!("this kernel forwards IPv6 only node-wide (no force_forwarding)");
        assert_eq!(sysctl(&lab, "n1", "net/ipv6/conf/all/forwarding"), "1");
        let taken = if accept_ra == "1" { "2" } else { &accept_ra };
        assert_eq!(sysctl(&lab, "n1", "net/ipv6/conf/eth0/accept_ra"), taken);
    }

    // The IPv6 service goes: IPv6 forwarding node-wide with it, IPv4 stays on red's links.
    apply_all(&lab, &[&red(), &green()], &keys);
    assert_eq!(sysctl(&lab, "n1", "net/ipv6/conf/all/forwarding"), "0");
    assert!(lab.reachable("red-a", "10.100.2.1"), "red-a -> red-b");
    assert_eq!(
        sysctl(&lab, "n1", &format!("net/ipv4/conf/{red_a}/forwarding")),
        "1"
    );

    // Someone else's node-wide IPv6 forwarding is theirs: it stays when the service goes.
    ok(&[
        "ip",
        "netns",
        "exec",
        &lab.ns("n1"),
        "sysctl",
        "-qw",
        "net.ipv6.conf.all.forwarding=1",
    ]);
    apply_all(&lab, &[&red(), &green(), &blue()], &keys);
    assert!(lab.reachable("blue-a", "fd00:b:0:2::1"), "blue-a -> blue-b");
    apply_all(&lab, &[&red(), &green()], &keys);
    assert_eq!(sysctl(&lab, "n1", "net/ipv6/conf/all/forwarding"), "1");
}

#[test]
fn a_peers_allowed_ips_change_with_traffic_flowing_and_the_device_keeps_answering() {
    if !root_or_skip(
        "a_peers_allowed_ips_change_with_traffic_flowing_and_the_device_keeps_answering",
    ) {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    apply_all(&lab, &[&red()], &keys);
    assert!(lab.reachable("red-a", "10.100.2.1"));
    // A peer cluster's member joins behind n2: n1's peer for n2 gets one more allowed IP,
    // changed in place (boringtun 0.7 stopped the whole device on such a change).
    let mut changed = node_state(&lab, "n1", &[&red()], &keys);
    let peer = changed.services[0]
        .peers
        .iter_mut()
        .find(|p| p.name == "n2")
        .unwrap();
    peer.allowed_ips.push("10.100.9.1/32".into());
    // The peer is changed, not made anew: its session (and so its last handshake) stays.
    let userspace = lab.backend("n1") == "userspace";
    let handshake = || userspace_handshake(&lab, "n1", "ww-red", &keys["n2"]);
    let before = userspace.then(handshake);
    let pinger: Child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("red-a"),
            "ping",
            "-i",
            "0.01",
            "-c",
            "300",
            "-W",
            "1",
            "10.100.2.1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (ops, _) = lab.apply("n1", &changed);
    assert!(ops > 0, "the change is made");
    let output = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("300 packets transmitted, 300 received"),
        "{text}"
    );
    assert_eq!(
        lab.apply("n1", &changed),
        (0, 0),
        "the device answers, and holds the change"
    );
    if let Some(before) = before {
        assert_ne!(before, 0, "a handshake was made before the change");
        // The device derives the time from a monotonic clock: it moves by nanoseconds
        // between two reads. A new session's handshake comes milliseconds later.
        let after = handshake();
        assert!(
            before.abs_diff(after) < 1_000_000,
            "the session of the changed peer is kept: last handshake {before} ns, then {after} ns"
        );
    }
}

/// A counter of `link` in the namespace of `node` (`/sys/class/net/<link>/statistics`).
fn link_counter(lab: &Lab, node: &str, link: &str, counter: &str) -> u64 {
    let path = format!("/sys/class/net/{link}/statistics/{counter}");
    ok(&["ip", "netns", "exec", &lab.ns(node), "cat", &path])
        .trim()
        .parse()
        .unwrap()
}

/// The bytes a test stream carries: a xorshift sequence, so that a byte out of place,
/// lost or doubled shows.
fn stream_bytes(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_tcp_stream_through_the_tunnel_arrives_whole_and_in_large_segments() {
    if !root_or_skip("a_tcp_stream_through_the_tunnel_arrives_whole_and_in_large_segments") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    apply_all(&lab, &[&red()], &keys);
    // The MSS on a path of MTU 1420 with TCP timestamps: 1420 - 20 - 20 - 12.
    stream_arrives_whole(&lab, ("red-a", "red-b", "10.100.2.1"), "ww-red", 1368, None);
}

/// A sender (or a receiver that says so) may make a TCP stream's segments as small as it
/// likes: a 64 KiB segment of 88-byte ones (the least Linux lets a socket ask for) is
/// more packets than the userspace device
/// splits a read into, so its interface is never handed one (its `gso_max_segs`); and on a
/// kernel that ignores that limit, the device drops such a read and goes on (it ended,
/// and the stream stalled).
#[test]
fn a_tcp_stream_of_small_segments_arrives_whole() {
    if !root_or_skip("a_tcp_stream_of_small_segments_arrives_whole") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    apply_all(&lab, &[&red()], &keys);
    let ends = ("red-a", "red-b", "10.100.2.1");
    stream_arrives_whole(&lab, ends, "ww-red", 88, Some(88));
    if lab.backend("n1") != "userspace" {
        return;
    }
    let n1 = lab.ns("n1");
    let link = ok(&["ip", "-n", &n1, "-d", "link", "show", "ww-red"]);
    assert!(link.contains(" gso_max_segs 128 "), "{link}");
    ok(&[
        "ip",
        "-n",
        &n1,
        "link",
        "set",
        "ww-red",
        "gso_max_segs",
        "65535",
    ]);
    stream_arrives_whole(&lab, ends, "ww-red", 88, Some(88));
}

#[test]
fn an_ipv6_tcp_stream_through_the_tunnel_arrives_whole_and_in_large_segments() {
    if !root_or_skip("an_ipv6_tcp_stream_through_the_tunnel_arrives_whole_and_in_large_segments") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds_with_blue(&mut lab);
    apply_all(&lab, &[&blue()], &keys);
    stream_arrives_whole(
        &lab,
        ("blue-a", "blue-b", "fd00:b:0:2::1"),
        "ww-blue",
        1348,
        None,
    );
}

/// Sends 16 MiB (4 MiB with `clamp`) over TCP from the workload `from` on n1 to `to` at `address` on n2, and
/// checks every byte arrives in its place; with the userspace device, that the offloads
/// are in effect along the way: the reads of n1's TUN device (`link`), the packets on its
/// underlay and the writes to n2's TUN device are each at most half the stream's
/// segments of `mss` bytes (not checked with `clamp`, the MSS the sender asks for).
fn stream_arrives_whole(
    lab: &Lab,
    (from, to, address): (&str, &str, &str),
    link: &str,
    mss: u64,
    clamp: Option<u32>,
) {
    use std::io::{Read, Write};
    use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
    // 16 MiB, or 4 MiB of small segments (still ~48,000 packets: the QEMU harness runs
    // these tests on an emulated CPU).
    let len: usize = if clamp.is_some() { 4 << 20 } else { 16 << 20 };
    assert!(lab.reachable(from, address));
    let counters = |lab: &Lab| {
        [
            link_counter(lab, "n1", link, "tx_packets"),
            link_counter(lab, "n1", "eth0", "tx_packets"),
            link_counter(lab, "n2", link, "rx_packets"),
        ]
    };
    let before = counters(lab);
    let server = SocketAddr::new(address.parse::<IpAddr>().unwrap(), 5001);
    let listener = probes::in_netns(&lab.ns(to), move || TcpListener::bind(server).unwrap());
    let receiver = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        // A stream that stalls, or trickles from one retransmission to the next, fails
        // here rather than holding the suite (it takes seconds here; stalled, it trickled
        // on for minutes).
        let deadline = Instant::now() + Duration::from_secs(600);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut received = Vec::with_capacity(len);
        let mut chunk = vec![0; 1 << 16];
        loop {
            let n = stream.read(&mut chunk).unwrap_or_else(|e| {
                panic!(
                    "the stream stalled at {} of {len} bytes: {e}",
                    received.len()
                )
            });
            if n == 0 {
                break received;
            }
            received.extend_from_slice(&chunk[..n]);
            assert!(
                Instant::now() < deadline,
                "the stream stalled: {} of {len} bytes in 600 s",
                received.len()
            );
        }
    });
    probes::in_netns(&lab.ns(from), move || {
        use nix::sys::socket::{
            AddressFamily, SockFlag, SockType, SockaddrStorage, connect, setsockopt, socket,
            sockopt,
        };
        use std::os::fd::AsRawFd;
        let family = if server.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let socket = socket(family, SockType::Stream, SockFlag::empty(), None).unwrap();
        if let Some(clamp) = clamp {
            setsockopt(&socket, sockopt::TcpMaxSeg, &clamp).unwrap();
        }
        connect(socket.as_raw_fd(), &SockaddrStorage::from(server)).unwrap();
        let mut stream = TcpStream::from(socket);
        // Nowhere to send (the tunnel gone) fails too, rather than waiting for TCP to give up.
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(&stream_bytes(len))
            .unwrap_or_else(|e| panic!("the stream stalled: {e}"));
    });
    let received = receiver.join().unwrap();
    assert_eq!(received.len(), len, "every byte arrives");
    assert!(received == stream_bytes(len), "and each in its place");
    // How many segments the kernel gathers per packet depends on the stream's rate: with
    // small segments on a loaded machine it was 1.6 (CI), so only full-size streams count.
    if clamp.is_some() || lab.backend("n1") != "userspace" {
        return;
    }
    // Without offloads each counts one per segment. With them, n2's receive coalescing
    // once gave 1.88 segments per write on a machine busy with a VM beside the test: at
    // least 1.5 segments per count tells the two apart.
    let segments = len as u64 / mss;
    let after = counters(lab);
    let [read, sent, written] = [0, 1, 2].map(|i| after[i] - before[i]);
    // The kernel hands n1's device TCP segments of many packets (segmentation offload)...
    assert!(
        read * 3 <= segments * 2,
        "{read} reads of n1's TUN device for {segments} segments"
    );
    // ... which it sends to n2 in bursts the kernel splits late (UDP segmentation)...
    assert!(
        sent * 3 <= segments * 2,
        "{sent} packets on n1's underlay for {segments} segments"
    );
    // ... and n2's device writes back coalesced (receive offload).
    assert!(
        written * 3 <= segments * 2,
        "{written} writes to n2's TUN device for {segments} segments"
    );
}

/// The last handshake (nanoseconds since the epoch, 0 for none) of the peer with
/// `public_key` (base64), as the userspace device of `interface` on `node` reports it.
fn userspace_handshake(lab: &Lab, node: &str, interface: &str, public_key: &str) -> u128 {
    use std::io::{BufRead, BufReader, Write};
    let socket = format!("{}/wireguard/{interface}.sock", lab.state_dir(node));
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream.write_all(b"get=1\n\n").unwrap();
    let key = hex_of_base64(public_key);
    let (mut ours, mut nanos) = (false, 0u128);
    for line in BufReader::new(stream).lines() {
        let line = line.unwrap();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once('=').unwrap_or_default();
        let value: u128 = value.parse().unwrap_or(0);
        match name {
            "public_key" => ours = line.ends_with(&key),
            "last_handshake_time_sec" if ours => nanos += value * 1_000_000_000,
            "last_handshake_time_nsec" if ours => nanos += value,
            _ => {}
        }
    }
    nanos
}

/// A key as the WireGuard UAPI writes it: hexadecimal, from base64.
fn hex_of_base64(key: &str) -> String {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
