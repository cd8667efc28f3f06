//! A node with 10,000 WireGuard peers, end to end and for real: the operator's node API
//! service (on a hub the test publishes to, as the engine does) serves a NodeState of
//! 10,000 peers, over gRPC's default 4 MiB encoded, through mutual TLS on a Unix socket
//! to `wireway-agent run` in a network namespace of its own; the agent decodes it,
//! converges a userspace WireGuard device to it and reports the version it applied. The
//! device is then read back through the agent's own reading path (the UAPI `get`).
//!
//! Then one peer changes (a second pass, over the peers alone), and a state over the
//! node API's limit is published: it is not sent, the agent keeps its state and its
//! stream (no reconnection), and the next state that fits arrives on that stream. Last,
//! 16 peers change in place, then go.
//!
//! It prints what each step took and the memory of each side (`--no-capture` shows it;
//! `docs/benchmarks.md`, "A node with 10,000 peers", has the figures); nothing here is
//! timed against a bound. With `KEEP_BIG_STATE` set, the agent's log and state stay in
//! the test's directory under the temporary directory (`wwbig<pid>`).
//!
//! It needs root. Under CI it must run: without root it fails there, and elsewhere it
//! says it was skipped.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly by panicking

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::mpsc;
use wireway_agent::converge::Peer;
use wireway_agent::dataplane::wireguard::DeviceState;
use wireway_agent::dataplane::wireguard::userspace::Userspace;
use wireway_operator::engine::{Hub, Input};
use wireway_operator::metrics::{Metrics, category};
use wireway_operator::serve::{Auth, NodeApiService};
use wireway_proto::{AgentReport, MAX_NODE_STATE_BYTES, NodeState, ServiceState};
use wireway_runtime::listen::{Address, serve_grpc};
use wireway_runtime::pki::{self, Subject};
use wireway_runtime::tls::{OPERATOR_SERVER_NAME, TlsArgs};
use wireway_testkit::root_or_skip;

const AGENT: &str = env!("CARGO_BIN_EXE_wireway-agent");
const NODE: &str = "big-node";
const TRUST_DOMAIN: &str = "cluster.local";
const INTERFACE: &str = "ww-big";
/// Peers of the node.
const PEERS: u32 = 10_000;
/// Prefixes each peer is allowed (and routed): enough that the state is over 4 MiB
/// encoded. A peer the planner makes carries one (its node's prefix) and takes some
/// 150 bytes; this one takes some 550.
const PREFIXES: u32 = 20;
/// Peers changed, then removed, at the end.
const SOME: u32 = 16;
/// gRPC's default limit on a message received, which the agent raises.
const GRPC_DEFAULT_LIMIT: usize = 4 << 20;
/// How long the agent may take to apply a state and report it (a debug build on two
/// busy cores applies the first 10,000 peers within seconds; this only bounds a hang).
const APPLY_WITHIN: Duration = Duration::from_secs(120);

/// 32 bytes that look like a public key (each peer's differ), from a counter.
fn key(n: u32) -> String {
    use base64::Engine;
    // splitmix64, seeded by the peer's number: a fixed sequence of well-spread bytes.
    let mut seed = 0x5757_0000_0000_0000_u64 ^ u64::from(n);
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
    }
    // The peer's number in the first bytes: no two keys are the same.
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Peer `n` as the operator sends it: a node at 198.18.0.0/15, allowed /56s of
/// fd00:77::/32 (`shift` moves them: a changed peer).
fn peer(n: u32, shift: u32) -> wireway_proto::Peer {
    wireway_proto::Peer {
        name: format!("node-{n:05}"),
        public_key: key(n),
        endpoint: format!("198.18.{}.{}:51820", n / 256, n % 256),
        allowed_ips: (0..PREFIXES)
            .map(|j| format!("fd00:77:{n:x}:{:x}00::/56", j + shift))
            .collect(),
        persistent_keepalive: 0,
    }
}

/// The node's state at `version`: one IPv6 service and its 10,000 peers; the peers in
/// `changed` with other prefixes.
fn state(version: u64, changed: &[u32]) -> NodeState {
    NodeState {
        node: NODE.to_owned(),
        version,
        epoch: 0,
        services: vec![ServiceState {
            name: "big/mesh".into(),
            interface_name: INTERFACE.into(),
            listen_port: 51820,
            mtu: 1420,
            cidr: "fd00:77::/32".into(),
            node_prefix: "fd00:77:ffff::/48".into(),
            route_table: wireway_proto::ROUTE_TABLE_BASE + 51820,
            members: Vec::new(),
            peers: (0..PEERS)
                .map(|n| peer(n, if changed.contains(&n) { 1 } else { 0 }))
                .collect(),
            dns: None,
        }],
    }
}

/// The peers the device must hold for `state`, as the agent reads them.
fn wanted(state: &NodeState) -> BTreeMap<String, Peer> {
    state.services[0]
        .peers
        .iter()
        .map(|p| {
            let peer = Peer {
                endpoint: Some(p.endpoint.clone()),
                allowed_ips: p.allowed_ips.iter().map(|a| a.parse().unwrap()).collect(),
                persistent_keepalive: 0,
            };
            (p.public_key.clone(), peer)
        })
        .collect()
}

fn ok(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Memory of a process from `/proc/<pid>/status`: (peak resident, resident) in MiB.
fn memory(pid: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// The pids of processes whose command line has `arg` as one of its arguments.
fn processes_with(arg: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
        })
        .collect()
}

/// The node: a network namespace, the agent's state directory, the agent and its device
/// process; all removed on drop, whatever the test's outcome.
struct Node {
    netns: String,
    dir: PathBuf,
    agent: Option<Child>,
}

impl Node {
    fn new() -> Self {
        let name = format!("wwbig{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        ok(&["ip", "netns", "add", &name]);
        let node = Self {
            netns: name,
            dir,
            agent: None,
        };
        let ns = node.netns.as_str();
        ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        // The underlay: one end of a veth pair (this kernel has no dummy links).
        ok(&[
            "ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-far",
        ]);
        ok(&["ip", "-n", ns, "link", "set", "eth0-far", "up"]);
        ok(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            "192.168.77.1/24",
            "dev",
            "eth0",
        ]);
        ok(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
        node
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("agent")
    }

    fn device_socket(&self) -> PathBuf {
        self.state_dir()
            .join("wireguard")
            .join(format!("{INTERFACE}.sock"))
    }

    /// Starts `wireway-agent run` in the namespace, following the operator at `operator`
    /// with the node's certificate in `tls`.
    fn start_agent(&mut self, operator: &Path, tls: &TlsArgs) {
        let log = std::fs::File::create(self.dir.join("agent.log")).unwrap();
        let state_dir = self.state_dir();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, AGENT, "--state-dir"])
            .arg(&state_dir)
            .args(["run", "--node-name", NODE, "--operator"])
            .arg(format!("unix:{}", operator.display()))
            .args(["--underlay-address", "192.168.77.1", "--listen-http"])
            .arg(format!(
                "unix:{}",
                self.dir.join("agent-http.sock").display()
            ))
            // Only the states sent make passes and reports, so each is timed alone.
            .args(["--resync-interval", "3600", "--report-interval", "3600"])
            .args(["--publish-node", "false", "--dns-upstream", "127.0.0.1:53"])
            .arg("--tls-ca")
            .arg(&tls.ca)
            .arg("--tls-cert")
            .arg(&tls.cert)
            .arg("--tls-key")
            .arg(&tls.key)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
    }

    fn agent_pid(&self) -> String {
        // `ip netns exec` execs the program in its own process.
        self.agent.as_ref().unwrap().id().to_string()
    }

    fn device_pids(&self) -> Vec<String> {
        processes_with(&self.device_socket().to_string_lossy())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The device as the agent reads it (a UAPI `get`, parsed by the agent's parser).
    fn device(&self) -> DeviceState {
        let userspace = Userspace {
            program: PathBuf::from(AGENT),
            socket_dir: self.state_dir().join("wireguard"),
        };
        userspace
            .get(INTERFACE)
            .expect("the device answers its control socket")
    }

    /// The agent's metric `name` (its first sample), from its /metrics.
    fn metric(&self, name: &str) -> f64 {
        let mut stream = UnixStream::connect(self.dir.join("agent-http.sock")).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
            .lines()
            .find_map(|l| {
                let (metric, value) = l.rsplit_once(' ')?;
                (metric == name || metric.starts_with(&format!("{name}{{"))).then_some(value)
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {response}"))
    }

    /// Seconds the agent's passes took in all.
    fn pass_seconds(&self) -> f64 {
        self.metric("wireway_agent_pass_duration_seconds_sum")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(agent) = &mut self.agent {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        // The device outlives the agent on purpose; it ends when asked to quit, as the
        // agent asks it, or else by its pid.
        if let Ok(mut device) = UnixStream::connect(self.device_socket()) {
            let _ = device.write_all(b"quit=1\n\n");
            std::thread::sleep(Duration::from_millis(200));
        }
        for pid in self.device_pids() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        if std::env::var_os("KEEP_BIG_STATE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What the operator's engine would be told, as the test takes it.
struct Engine {
    inputs: mpsc::Receiver<Input>,
    /// Streams opened so far.
    hellos: usize,
    /// Streams closed so far.
    disconnects: usize,
}

impl Engine {
    /// Waits for the agent's report of `version`; `None` if it does not come within `wait`
    /// or the agent's stream ends first.
    async fn report_of(&mut self, version: u64, wait: Duration) -> Option<AgentReport> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let input = tokio::time::timeout_at(deadline, self.inputs.recv())
                .await
                .ok()??;
            match input {
                Input::Hello(_) => self.hellos += 1,
                Input::Disconnected(_) => {
                    self.disconnects += 1;
                    return None;
                }
                Input::Report(report) if report.applied_version == version => {
                    return Some(report);
                }
                _ => {}
            }
        }
    }

    /// Takes what came within `wait`, counting the streams opened and closed.
    async fn idle(&mut self, wait: Duration) -> Vec<u64> {
        let mut reported = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(input)) = tokio::time::timeout_at(deadline, self.inputs.recv()).await {
            match input {
                Input::Hello(_) => self.hellos += 1,
                Input::Disconnected(_) => self.disconnects += 1,
                Input::Report(report) => reported.push(report.applied_version),
                _ => {}
            }
        }
        reported
    }
}

/// Waits for the agent's report of `version`, and checks it says the state was applied
/// whole: every peer named, no problem, no error.
async fn applied_whole(
    engine: &mut Engine,
    node: &Node,
    version: u64,
    peers: usize,
) -> AgentReport {
    let report = engine
        .report_of(version, APPLY_WITHIN)
        .await
        .unwrap_or_else(|| {
            panic!(
                "the agent reports version {version} within {APPLY_WITHIN:?}, on the stream \
                 it opened ({} opened, {} ended); it logged:\n{}",
                engine.hellos,
                engine.disconnects,
                node.log()
            )
        });
    assert_eq!(
        (&report.problems, &report.errors),
        (&Vec::new(), &Vec::new()),
        "version {version} is applied whole; the agent logged:\n{}",
        node.log()
    );
    assert_eq!(report.peers.len(), peers, "the report names every peer");
    report
}

/// Certificates for the operator and the node, in `dir`: (operator's, node's).
fn certificates(dir: &Path) -> (TlsArgs, TlsArgs) {
    let ca = dir.join("ca");
    pki::create_ca_in(&ca, TRUST_DOMAIN).unwrap();
    let operator = Subject::Operator(vec![OPERATOR_SERVER_NAME.to_owned()]);
    pki::issue_into(&ca, &dir.join("operator"), TRUST_DOMAIN, &operator).unwrap();
    let node = Subject::Node(NODE.to_owned());
    pki::issue_into(&ca, &dir.join("node"), TRUST_DOMAIN, &node).unwrap();
    let args = |who: &str| TlsArgs {
        ca: dir.join(who).join("ca.crt"),
        cert: dir.join(who).join("tls.crt"),
        key: dir.join(who).join("tls.key"),
        insecure_plaintext: false,
    };
    (args("operator"), args("node"))
}

/// The operator's node API on a Unix socket at `socket`, serving what is published on
/// the returned hub, under mutual TLS, as the operator binary serves it.
async fn operator(socket: &Path, tls: &TlsArgs) -> (Arc<Hub>, Metrics, Engine) {
    let hub = Arc::new(Hub::default());
    let (metrics, _registry) = Metrics::new();
    let (inputs, received) = mpsc::channel(64);
    let auth = Auth::MutualTls {
        trust_domain: TRUST_DOMAIN.into(),
    };
    let service = NodeApiService::new(hub.clone(), inputs, auth, metrics.clone());
    let pem = tls.load().unwrap().unwrap();
    let router = tonic::transport::Server::builder()
        .tls_config(pem.server(true))
        .unwrap()
        .add_service(service.server());
    let listener = Address::Unix(socket.to_owned()).bind().await.unwrap();
    tokio::spawn(serve_grpc(router, listener, std::future::pending()));
    let engine = Engine {
        inputs: received,
        hellos: 0,
        disconnects: 0,
    };
    (hub, metrics, engine)
}

/// The peers where the device and `wanted` differ (at most a few, for a message).
fn differences(device: &DeviceState, wanted: &BTreeMap<String, Peer>) -> Vec<String> {
    let mut differ: Vec<String> = wanted
        .iter()
        .filter(|(key, peer)| device.peers.get(*key) != Some(peer))
        .map(|(key, peer)| format!("{key}: wanted {peer:?}, device {:?}", device.peers.get(key)))
        .collect();
    differ.extend(
        device
            .peers
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .map(|key| format!("{key}: not wanted, on the device")),
    );
    differ.truncate(3);
    differ
}

fn megabytes(bytes: usize) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn resident_mib() -> f64 {
    memory("self").1
}

/// Sets this process's peak resident memory (VmHWM) to what it holds now.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

/// CPU seconds a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command (which may hold spaces), from the state on: utime and
    // stime are the 12th and 13th, in clock ticks (100 a second).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_ten_thousand_peers_over_four_mib_converges_and_a_state_over_the_limit_is_not_sent()
 {
    if !root_or_skip(
        "a_node_with_ten_thousand_peers_over_four_mib_converges_and_a_state_over_the_limit_is_not_sent",
    ) {
        return;
    }
    let mut node = Node::new();
    let (operator_tls, node_tls) = certificates(&node.dir.join("tls"));
    let socket = node.dir.join("operator.sock");
    let (hub, metrics, mut engine) = operator(&socket, &operator_tls).await;
    let mut timings: Vec<(String, Duration)> = Vec::new();

    let resident_before = resident_mib();
    let started = Instant::now();
    let first = state(1, &[]);
    timings.push(("build the state (test)".into(), started.elapsed()));
    let resident_built = resident_mib();

    // What the operator's server does with it (tonic's codec is prost's), and the agent's.
    let started = Instant::now();
    let encoded = first.encode_to_vec();
    timings.push(("encode (prost, in the test)".into(), started.elapsed()));
    let started = Instant::now();
    let decoded = NodeState::decode(encoded.as_slice()).unwrap();
    timings.push(("decode (prost, in the test)".into(), started.elapsed()));
    assert_eq!(decoded, first);
    assert!(
        encoded.len() > GRPC_DEFAULT_LIMIT * 11 / 10,
        "the state must be over gRPC's default 4 MiB to test the limits: {} bytes",
        encoded.len()
    );
    assert!(encoded.len() < MAX_NODE_STATE_BYTES);
    drop((encoded, decoded));

    node.start_agent(&socket, &node_tls);
    // The agent connects before there is a state; its stream waits for one.
    let hello = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match engine.inputs.recv().await {
                Some(Input::Hello(hello)) => return hello,
                Some(_) => {}
                None => panic!("the node API ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the agent connects within 30 s: {}", node.log()));
    engine.hellos += 1;
    assert_eq!(hello.node, NODE);

    // The first state: 10,000 new peers. The test process's peak from here on is the
    // operator's side: the hub's copy, the stream's, its encoding and TLS.
    let wanted_first = wanted(&first);
    let resident_serving = resident_mib();
    reset_peak();
    let started = Instant::now();
    hub.publish(first.clone());
    let report_bytes = applied_whole(&mut engine, &node, 1, PEERS as usize)
        .await
        .encoded_len();
    let first_took = started.elapsed();
    let serving_peak = memory("self").0;
    let first_pass = node.pass_seconds();
    timings.push((
        "publish -> report of v1 (10,000 new peers)".into(),
        first_took,
    ));
    timings.push((
        "  of which the agent's pass".into(),
        Duration::from_secs_f64(first_pass),
    ));
    assert_eq!(node.metric("wireway_agent_applied_version"), 1.0);
    let started = Instant::now();
    let device = node.device();
    timings.push((
        "read the device back (UAPI get, test)".into(),
        started.elapsed(),
    ));
    assert_eq!(device.listen_port, 51820);
    assert_eq!(device.peers.len(), PEERS as usize);
    assert_eq!(
        differences(&device, &wanted_first),
        Vec::<String>::new(),
        "the device holds every peer as sent"
    );
    let (agent_peak, agent_resident) = memory(&node.agent_pid());
    let devices = node.device_pids();
    assert_eq!(devices.len(), 1, "one device process: {devices:?}");
    let (device_peak, device_resident) = memory(&devices[0]);
    // What the device costs with nothing to carry: its timers go over every peer four
    // times a second.
    let cpu_before = cpu_seconds(&devices[0]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let device_idle = (cpu_seconds(&devices[0]) - cpu_before) / 2.0;

    // One peer changes: a pass over the peers alone, which sends that peer only.
    let second = state(2, &[PEERS / 2]);
    let started = Instant::now();
    hub.publish(second.clone());
    applied_whole(&mut engine, &node, 2, PEERS as usize).await;
    let second_took = started.elapsed();
    let second_pass = node.pass_seconds() - first_pass;
    timings.push((
        "publish -> report of v2 (one peer changed)".into(),
        second_took,
    ));
    timings.push((
        "  of which the agent's pass".into(),
        Duration::from_secs_f64(second_pass),
    ));
    assert_eq!(
        differences(&node.device(), &wanted(&second)),
        Vec::<String>::new(),
        "the device holds the changed peer, and every other as it was"
    );

    // A state over the node API's limit is not sent: the operator says so (an error of
    // its own category, and its log), the agent keeps its state and its stream.
    let mut too_large = state(3, &[PEERS / 2]);
    too_large.services[0].peers[0].name = "x".repeat(MAX_NODE_STATE_BYTES);
    hub.publish(too_large);
    let refused = metrics
        .errors
        .get_or_create(&[("category", category::STATE_TOO_LARGE)])
        .clone();
    let counted = tokio::time::timeout(Duration::from_secs(10), async {
        while refused.get() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(counted.is_ok(), "the state too large is counted");
    // Long enough for a stream that failed to be opened again (the agent retries from
    // 100 ms).
    let reported = engine.idle(Duration::from_secs(3)).await;
    assert_eq!(reported, Vec::<u64>::new(), "nothing new is applied");
    assert_eq!(
        (engine.hellos, engine.disconnects),
        (1, 0),
        "the agent's one stream stays open: no reconnection; it logged:\n{}",
        node.log()
    );
    assert_eq!(node.metric("wireway_agent_applied_version"), 2.0);
    assert_eq!(node.metric("wireway_agent_operator_connected"), 1.0);
    assert!(
        !node.log().contains("lost the operator"),
        "the agent never lost its stream: {}",
        node.log()
    );

    // The next state that fits arrives on that stream.
    let fourth = state(4, &[PEERS / 2, PEERS - 1]);
    hub.publish(fourth.clone());
    applied_whole(&mut engine, &node, 4, PEERS as usize).await;
    assert_eq!((engine.hellos, engine.disconnects), (1, 0));
    assert_eq!(refused.get(), 1);
    assert_eq!(
        differences(&node.device(), &wanted(&fourth)),
        Vec::<String>::new()
    );

    // Peers changed in place, then removed: each costs the device a walk over every
    // allowed IP it holds (200,000 here).
    let some: Vec<u32> = (0..SOME).collect();
    let fifth = state(5, &some);
    let passes = node.pass_seconds();
    hub.publish(fifth.clone());
    applied_whole(&mut engine, &node, 5, PEERS as usize).await;
    let changed_pass = node.pass_seconds() - passes;
    assert_eq!(
        differences(&node.device(), &wanted(&fifth)),
        Vec::<String>::new(),
        "the changed peers are as sent"
    );
    let mut sixth = state(6, &some);
    sixth.services[0].peers.drain(..SOME as usize);
    let passes = node.pass_seconds();
    hub.publish(sixth.clone());
    applied_whole(&mut engine, &node, 6, (PEERS - SOME) as usize).await;
    let removed_pass = node.pass_seconds() - passes;
    assert_eq!(
        differences(&node.device(), &wanted(&sixth)),
        Vec::<String>::new(),
        "the removed peers are gone, and no other"
    );

    let mut report = format!(
        "\nA node with {PEERS} peers ({PREFIXES} prefixes each), {:.2} MiB encoded \
         (gRPC's default limit: 4 MiB); the agent's report of it {:.2} MiB\n",
        megabytes(first.encoded_len()),
        megabytes(report_bytes)
    );
    timings.push((
        format!("a pass changing {SOME} peers in place"),
        Duration::from_secs_f64(changed_pass),
    ));
    timings.push((
        format!("a pass removing {SOME} peers"),
        Duration::from_secs_f64(removed_pass),
    ));
    for (what, took) in &timings {
        report.push_str(&format!(
            "  {what:<44} {:>9.1} ms\n",
            took.as_secs_f64() * 1e3
        ));
    }
    report.push_str(&format!(
        "  memory (MiB): agent peak {agent_peak:.0} (resident {agent_resident:.0}); \
         device peak {device_peak:.0} (resident {device_resident:.0});\n  \
         the state in memory {:.0} (the test process before and after building it); \
         serving it: from {resident_serving:.0} to a peak of {serving_peak:.0}\n  \
         the device with nothing to carry: {:.1}% of a core\n",
        resident_built - resident_before,
        device_idle * 100.0
    ));
    println!("{report}");
}
