//! Faults: an agent killed in the middle of a pass, a full state directory, and bytes a
//! userspace device does not understand.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_util::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use wireway_proto::node_api_server::{NodeApi, NodeApiServer};
use wireway_proto::{AgentHello, AgentReport, ReportAck};
use wireway_runtime::listen::{Address, serve_grpc};

use super::*;

/// The userspace WireGuard devices of `node` that run: the interfaces named by the
/// `wireguard-userspace` processes whose control socket is in its state directory (one
/// entry per process, so a duplicate shows).
fn device_processes(lab: &Lab, node: &str) -> Vec<String> {
    let dir = format!("{}/", lab.state_dir(node));
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.iter().any(|a| a == "wireguard-userspace") {
            continue;
        }
        let after = |flag: &str| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|i| args.get(i + 1))
                .cloned()
                .unwrap_or_default()
        };
        if after("--socket").starts_with(&dir) {
            found.push(after("--interface"));
        }
    }
    found.sort();
    found
}

/// The control sockets in `node`'s state directory.
fn device_sockets(lab: &Lab, node: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(Path::new(&lab.state_dir(node)).join("wireguard")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".sock").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// Without what the kernel makes up itself (link-local addresses from random MACs) and
/// what moves with traffic (counters).
fn stable(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.contains("fe80::") || l.contains("fe80::77:1"))
        .map(|l| {
            let mut words = Vec::new();
            let mut skip = false;
            for w in l.split_whitespace() {
                if !skip {
                    words.push(w);
                }
                skip = w == "packets" || w == "bytes";
            }
            words.join(" ")
        })
        .collect()
}

/// What one namespace holds: links (name, flags), addresses, rules, routes of every
/// table, the nftables ruleset.
fn holdings(ns: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for line in ok(&["ip", "-n", ns, "-br", "link"]).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let name = words[0].split('@').next().unwrap_or_default();
        lines.push(format!("link {name} {}", words.last().unwrap_or(&"")));
    }
    for line in ok(&["ip", "-n", ns, "-br", "addr"]).lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let addresses: Vec<&str> = words[2..]
            .iter()
            .copied()
            .filter(|a| !a.starts_with("fe80::") || a.starts_with("fe80::77:1"))
            .collect();
        let name = words[0].split('@').next().unwrap_or_default();
        lines.push(format!("addr {name} {}", addresses.join(" ")));
    }
    for args in [
        &["rule"][..],
        &["-6", "rule"],
        &["route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
    ] {
        let mut command = vec!["ip", "-n", ns];
        command.extend_from_slice(args);
        // Subnet-router anycast routes are the kernel's, made while IPv6 forwarding is on
        // for the underlay: before Linux 6.17 the agent's fallback turns it on node-wide
        // for IPv6 services (docs/operations.md), which a kill does not change.
        lines.extend(
            stable(&ok(&command))
                .into_iter()
                .filter(|l| !(l.starts_with("anycast ") && l.contains("proto kernel")))
                .map(|l| format!("{args:?} {l}")),
        );
    }
    let nft = ok(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"]);
    lines.extend(stable(&nft).into_iter().map(|l| format!("nft {l}")));
    lines
}

/// A WireGuard device's configuration as its control socket reports it (keys, port,
/// peers, endpoints, allowed IPs; not handshakes or byte counts).
fn device_config(lab: &Lab, node: &str, interface: &str) -> Vec<String> {
    let socket = format!("{}/wireguard/{interface}.sock", lab.state_dir(node));
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.write_all(b"get=1\n\n").unwrap();
    let mut answer = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(&stream)) {
        let line = line.unwrap();
        if line.is_empty() {
            break;
        }
        answer.push(line);
    }
    answer
        .into_iter()
        .filter(|l| {
            [
                "private_key=",
                "listen_port=",
                "public_key=",
                "endpoint=",
                "allowed_ip=",
                "persistent_keepalive_interval=",
                "errno=",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("wg {interface} {l}"))
        .collect()
}

/// Everything of `node` and its members' namespaces the agent could have made, and its
/// userspace devices: processes, sockets and their configuration.
fn picture(lab: &Lab, node: &str, workloads: &[&str], userspace: bool) -> Vec<String> {
    let mut lines = holdings(&lab.ns(node));
    for workload in workloads {
        lines.extend(
            holdings(&lab.ns(workload))
                .into_iter()
                .map(|l| format!("{workload}: {l}")),
        );
    }
    let processes = device_processes(lab, node);
    lines.push(format!("processes {processes:?}"));
    lines.push(format!("sockets {:?}", device_sockets(lab, node)));
    if userspace {
        for interface in processes {
            lines.extend(device_config(lab, node, &interface));
        }
    }
    lines
}

/// Fails with what differs when `found` is not `expected`, in any order (the kernel lists
/// links, and so addresses and routes, in the order they were made).
fn same(found: &[String], expected: &[String], what: &str) {
    let mut found = found.to_vec();
    let mut expected = expected.to_vec();
    found.sort();
    expected.sort();
    let extra: Vec<&String> = found.iter().filter(|l| !expected.contains(l)).collect();
    let missing: Vec<&String> = expected.iter().filter(|l| !found.contains(l)).collect();
    assert!(
        found == expected,
        "{what}: left over {extra:#?}, missing {missing:#?}"
    );
}

/// Starts `wireway-agent apply` of `node`'s last state and SIGKILLs it after `delay`
/// (if it is still running then).
fn kill_a_pass_after(lab: &Lab, node: &str, delay: Duration) {
    let file = lab.dir.join(format!("{node}.json"));
    // `ip netns exec` executes the agent in its own process: the pid is the agent's.
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns(node), AGENT, "--state-dir"])
        .arg(lab.state_dir(node))
        .args(["--netns-path-prefix", "/run/netns", "apply", "--node-state"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(delay);
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
}

#[test]
fn an_agent_killed_at_any_point_of_a_pass_converges_on_restart_and_orphans_nothing() {
    if !root_or_skip("an_agent_killed_at_any_point...") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds_with_blue(&mut lab);
    let services = [&red(), &green(), &blue()];
    for node in ["n2", "n3"] {
        lab.apply(node, &node_state(&lab, node, &services, &keys));
    }
    let full = node_state(&lab, "n1", &services, &keys);
    let empty = node("n1");
    let workloads = ["red-a", "green-a", "blue-a"];
    let before = picture(&lab, "n1", &workloads, false);

    // The reference: a pass never interrupted. How long it takes sets the kill delays.
    let started = Instant::now();
    lab.apply("n1", &full);
    let typical = started.elapsed();
    let userspace = lab.backend("n1") == "userspace";
    let reference = picture(&lab, "n1", &workloads, userspace);
    assert!(lab.reachable("red-a", "10.100.2.1"));
    assert!(lab.reachable("blue-a", "fd00:b:0:2::1"));
    if userspace {
        let expected = vec!["ww-blue", "ww-green", "ww-red"];
        assert_eq!(device_processes(&lab, "n1"), expected);
        assert_eq!(device_sockets(&lab, "n1"), expected);
    }

    // Delays spread over the pass, from none to all of it, the same every run.
    let mut seed: u64 = 0x5757;
    let mut delays = vec![Duration::ZERO, typical];
    for _ in 0..13 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        delays.push(typical.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64));
    }
    eprintln!("a pass takes {typical:?}; killed after {delays:?}");
    for delay in delays {
        // From nothing of ours: an empty state leaves nothing behind, not a process.
        lab.apply("n1", &empty);
        same(
            &picture(&lab, "n1", &workloads, userspace),
            &before,
            &format!("an empty state must leave nothing (before a kill after {delay:?})"),
        );
        std::fs::write(
            lab.dir.join("n1.json"),
            serde_json::to_string(&full).unwrap(),
        )
        .unwrap();
        kill_a_pass_after(&lab, "n1", delay);
        // The restarted agent converges, in one pass, to what a pass never interrupted
        // makes, with nothing more: no link, rule, route, process or socket left over.
        lab.apply("n1", &full);
        assert_eq!(
            lab.apply("n1", &full),
            (0, 0),
            "in sync after one pass (killed after {delay:?})"
        );
        same(
            &picture(&lab, "n1", &workloads, userspace),
            &reference,
            &format!("killed after {delay:?}"),
        );
    }
    // A client that goes away before its answer, as an agent killed in the middle of a
    // request does, leaves the device running.
    if userspace {
        let socket = format!("{}/wireguard/ww-red.sock", lab.state_dir("n1"));
        let connect = || std::os::unix::net::UnixStream::connect(&socket).unwrap();
        // The device serves one client at a time: the first holds it with half a request
        // while the second asks and goes; the device answers the second when it is gone.
        let mut holding = connect();
        holding.write_all(b"get=1\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut gone = connect();
        gone.write_all(b"get=1\n\n").unwrap();
        drop(gone);
        drop(holding);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            device_processes(&lab, "n1"),
            ["ww-blue", "ww-green", "ww-red"]
        );
        assert_eq!(lab.apply("n1", &full), (0, 0));
    }
    assert!(lab.reachable("red-a", "10.100.2.1"));
    assert!(lab.reachable("green-a", "10.200.2.1"));
    assert!(lab.reachable("blue-a", "fd00:b:0:2::1"));
    lab.apply("n1", &empty);
    same(
        &picture(&lab, "n1", &workloads, userspace),
        &before,
        "the empty state at the end",
    );
}

/// A device process still starting when a pass begins (one an agent killed a moment ago
/// left behind, its key not yet read or its TUN device not yet made) is waited for and
/// used. The pass starts no second one beside it: that one would find the TUN name taken
/// or take it first, and either way one device would run with no one to find it.
#[test]
fn a_device_still_starting_when_a_pass_begins_is_used_not_doubled() {
    if !root_or_skip("a_device_still_starting...") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    let services = [&red()];
    lab.apply("n2", &node_state(&lab, "n2", &services, &keys));
    lab.apply("n1", &node("n1"));
    if lab.backend("n1") != "userspace" {
        eprintln!("the kernel backend runs no device processes: nothing to test");
        return;
    }
    let state_dir = lab.state_dir("n1");
    std::fs::create_dir_all(format!("{state_dir}/wireguard")).unwrap();
    // As an agent starts a device: in the node's namespace, the key to come on stdin.
    let mut starting = Command::new("ip")
        .args(["netns", "exec", &lab.ns("n1"), AGENT, "wireguard-userspace"])
        .args(["--interface", "ww-red", "--socket"])
        .arg(format!("{state_dir}/wireguard/ww-red.sock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let key = hex_of_base64(&std::fs::read_to_string(format!("{state_dir}/private.key")).unwrap());
    std::thread::scope(|scope| {
        let pass = scope.spawn(|| lab.apply("n1", &node_state(&lab, "n1", &services, &keys)));
        // The pass has found the device starting by now; it gets its key late.
        std::thread::sleep(Duration::from_millis(700));
        let mut stdin = starting.stdin.take().unwrap();
        stdin.write_all(format!("{key}\n").as_bytes()).unwrap();
        pass.join().unwrap();
    });
    assert_eq!(device_processes(&lab, "n1"), ["ww-red"]);
    assert!(
        starting.try_wait().unwrap().is_none(),
        "the device that was starting is the one that runs"
    );
    assert_eq!(
        lab.apply("n1", &node_state(&lab, "n1", &services, &keys)),
        (0, 0)
    );
    assert!(lab.reachable("red-a", "10.100.2.1"));
    lab.apply("n1", &node("n1"));
    assert!(device_processes(&lab, "n1").is_empty());
    let _ = starting.wait();
}

/// A tmpfs mounted for a test, unmounted on drop.
struct Tmpfs(String);

impl Tmpfs {
    fn mount(dir: &str, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        ok(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0700"),
            "tmpfs",
            dir,
        ]);
        Self(dir.to_owned())
    }

    /// Writes a file until the file system is full.
    fn fill(&self) {
        let mut file = std::fs::File::create(Path::new(&self.0).join("filler")).unwrap();
        let block = [0u8; 4096];
        loop {
            if let Err(e) = file.write_all(&block) {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "{e}");
                return;
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: the devices the lab stops afterwards may still hold their sockets.
        let _ = run(&["umount", "-l", &self.0]);
    }
}

type States = Pin<Box<dyn Stream<Item = Result<NodeState, Status>> + Send>>;

/// The latest state sent, and where each open Watch takes the next ones.
#[derive(Default)]
struct Watchers {
    latest: Option<NodeState>,
    streams: Vec<mpsc::UnboundedSender<NodeState>>,
}

/// The operator's node API, played by the test: every Watch is sent the latest state
/// and each one after; reports are kept.
#[derive(Clone, Default)]
struct Operator {
    watchers: Arc<Mutex<Watchers>>,
    reports: Arc<Mutex<Vec<AgentReport>>>,
}

#[tonic::async_trait]
impl NodeApi for Operator {
    type WatchStream = States;

    async fn watch(&self, _: Request<AgentHello>) -> Result<Response<States>, Status> {
        let (send, receive) = mpsc::unbounded_channel();
        let mut watchers = self.watchers.lock().unwrap();
        if let Some(state) = &watchers.latest {
            let _ = send.send(state.clone());
        }
        watchers.streams.push(send);
        let states = futures_util::stream::unfold(receive, |mut receive| async move {
            let state = receive.recv().await?;
            Some((Ok(state), receive))
        });
        Ok(Response::new(Box::pin(states)))
    }

    async fn report(&self, request: Request<AgentReport>) -> Result<Response<ReportAck>, Status> {
        self.reports.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ReportAck {}))
    }
}

impl Operator {
    /// Serves the node API on `socket`, from a thread of its own.
    fn serve(&self, socket: &Path) {
        let operator = self.clone();
        let socket = socket.to_owned();
        let (ready, bound) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = Address::Unix(socket).bind().await.unwrap();
                ready.send(()).unwrap();
                let router =
                    tonic::transport::Server::builder().add_service(NodeApiServer::new(operator));
                serve_grpc(router, listener, std::future::pending())
                    .await
                    .unwrap();
            });
        });
        bound.recv().unwrap();
    }

    fn send(&self, state: NodeState) {
        let mut watchers = self.watchers.lock().unwrap();
        watchers.streams.retain(|w| w.send(state.clone()).is_ok());
        watchers.latest = Some(state);
    }

    fn last_report(&self) -> Option<AgentReport> {
        self.reports.lock().unwrap().last().cloned()
    }
}

/// Waits until `done` holds (panics after 30 s).
fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_state_directory_keeps_the_data_plane_and_reports_the_error() {
    if !root_or_skip("a_full_state_directory...") {
        return;
    }
    let mut lab = Lab::new();
    // n1's state directory is a small tmpfs, there before its key is made.
    let state_dir = Tmpfs::mount(&lab.state_dir("n1"), "64k");
    let keys = seeds(&mut lab);
    for node in ["n2", "n3"] {
        lab.apply(node, &node_state(&lab, node, &[&red(), &green()], &keys));
    }

    // n1's agent follows an operator played by the test.
    let operator = Operator::default();
    let socket = lab.dir.join("operator.sock");
    operator.serve(&socket);
    let metrics_socket = lab.dir.join("metrics.sock");
    let log = std::fs::File::create(lab.dir.join("n1.log")).unwrap();
    let agent = Command::new("ip")
        .args(["netns", "exec", &lab.ns("n1"), AGENT, "--state-dir"])
        .arg(lab.state_dir("n1"))
        .args([
            "--netns-path-prefix",
            "/run/netns",
            "run",
            "--node-name",
            "n1",
        ])
        .arg("--operator")
        .arg(format!("unix:{}", socket.display()))
        .arg("--listen-http")
        .arg(format!("unix:{}", metrics_socket.display()))
        .args([
            "--insecure-plaintext",
            "--underlay-address",
            "192.168.77.1",
            "--report-interval",
            "1",
        ])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    lab.children.push(agent);
    let errors = |category: &str| -> u64 {
        let out = run(&[
            "curl",
            "-s",
            "--unix-socket",
            metrics_socket.to_str().unwrap(),
            "http://agent/metrics",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let label = format!("errors_total{{category=\"{category}\"}} ");
        text.lines()
            .find_map(|l| l.split_once(&label).map(|(_, n)| n.trim().parse().unwrap()))
            .unwrap_or(0)
    };
    let applied = |version: u64| {
        let operator = operator.clone();
        move || {
            operator
                .last_report()
                .is_some_and(|r| r.applied_version == version)
        }
    };

    let mut first = node_state(&lab, "n1", &[&red()], &keys);
    first.version = 1;
    operator.send(first);
    until("version 1 applied", applied(1));
    assert!(lab.reachable("red-a", "10.100.2.1"), "red-a -> red-b");
    let stored = || {
        let text = std::fs::read_to_string(Path::new(&state_dir.0).join("node-state.json"));
        serde_json::from_str::<NodeState>(&text.unwrap())
            .unwrap()
            .version
    };
    assert_eq!(stored(), 1);
    assert_eq!(errors("store"), 0);

    // The disk is full; the operator sends a new state, green added.
    state_dir.fill();
    let mut second = node_state(&lab, "n1", &[&red(), &green()], &keys);
    second.version = 2;
    operator.send(second);
    until("version 2 applied", applied(2));

    // The kernel holds the new state: green works, red still does.
    assert!(lab.reachable("green-a", "10.200.2.1"), "green-a -> green-b");
    assert!(lab.reachable("red-a", "10.100.2.1"), "red-a -> red-b");
    // The error is counted and told to the operator; the stored state is the old one,
    // whole (a failed write replaces nothing).
    until("a store error counted", || errors("store") == 1);
    until("the store error reported", || {
        operator.last_report().is_some_and(|r| {
            r.errors.iter().any(|e| {
                e.category == "store"
                    && e.last_message
                        .contains("failed to write the last applied state")
            })
        })
    });
    assert_eq!(stored(), 1);
    let leftovers: BTreeSet<String> = std::fs::read_dir(&state_dir.0)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A userspace device's control socket is the agent's alone (0700 state directory), but
/// whatever reaches it is answered: a request the device does not know gets `errno=22`
/// and the device goes on serving, its tunnel up (GotaTun's own stream server stopped
/// serving after one).
#[test]
fn a_request_a_userspace_device_does_not_know_is_refused_and_it_keeps_serving() {
    if !root_or_skip("a_request_a_userspace_device_does_not_know_is_refused...") {
        return;
    }
    let mut lab = Lab::new();
    let keys = seeds(&mut lab);
    apply_all(&lab, &[&red()], &keys);
    if lab.backend("n1") != "userspace" {
        eprintln!("not run: the kernel backend's devices have no control socket");
        return;
    }
    let socket = Path::new(&lab.state_dir("n1")).join("wireguard/ww-red.sock");
    for request in [
        "frobnicate=1\n\n",
        "set=1\nno_such_key=1\n\n",
        "get=1\nx\n\n",
    ] {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
        assert_eq!(answer, "errno=22\n\n", "{request:?}");
    }
    assert_eq!(
        lab.apply("n1", &node_state(&lab, "n1", &[&red()], &keys)),
        (0, 0),
        "the device answers and holds its state"
    );
    assert!(lab.reachable("red-a", "10.100.2.1"));
}
