//! The operator serving thousands of simulated agents: how long a change in the
//! manifests takes to reach, and be acknowledged by, every agent whose state it alters.
//!
//! `agents_scale NODES SERVICES SPAN CHANGES_PER_KIND`, e.g.
//! `target/release/examples/agents_scale 5000 100 50 20` after
//! `cargo build --release -p wireway-operator --bin wireway-operator --example agents_scale`.
//!
//! It writes manifests into a temporary directory in the shape of `plan_scale`
//! (`benches/scale.rs`): NODES Node objects; SERVICES NetworkServices, each in its own
//! namespace with one Endpoint selecting its pods; 20 pods per node a service spans, each
//! service on SPAN consecutive nodes (a window shifted per service). It starts the real
//! `wireway-operator` found beside this example's directory (`target/release/`) with
//! `--manifests`, the node API in plaintext (`--insecure-plaintext`: no TLS) on a Unix
//! socket and `--agent-grace 0`, then NODES simulated agents as tokio tasks: one gRPC
//! connection each, a Watch with a hello carrying a distinct WireGuard key and underlay
//! address, and for every NodeState received a Report of its version and epoch, as the
//! real agent sends after a pass (here there is no pass: no kernel is touched).
//!
//! Once every agent holds its full state (every service it carries with SPAN - 1 peers),
//! it makes changes one at a time, each a file written (renamed into place) or removed:
//!
//! * `member+`: a pod added on a node that already carries its service (every node of
//!   the service changes: each holds the service's names, DNS being on by default; that
//!   node's interfaces too);
//! * `node+`: a pod added on a node that does not carry its service yet (the service
//!   reaches a new node: that node and every node of the service change, with a peer);
//! * `member-`: a `member+` pod removed;
//! * `node-`: a `node+` pod removed (the service leaves that node again).
//!
//! For each it measures, from the file written to the moment every affected agent (from
//! its own model of the World) has received a newer state and had its Report answered,
//! and checks that no other agent was sent a state. It reports p50/p99/max per kind, the
//! operator's CPU time (utime + stime from /proc/PID/stat) and peak RSS (VmHWM).
//!
//! Each process needs a file descriptor per agent: `ulimit -n` must be above NODES plus a
//! few hundred (it checks and says so).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use wireway_proto::node_api_client::NodeApiClient;
use wireway_proto::{AgentHello, AgentReport, WireGuardBackend};
use wireway_runtime::backoff::Backoff;
use wireway_runtime::listen::grpc_channel;

/// Pods per node per service it spans (plan_scale's 5,000 / 100 / 100,000 / 50 shape).
const MEMBERS_PER_NODE: usize = 20;
/// How long every agent may take to hold its first full state.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one change may take before the benchmark gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet time after each change, in which no unaffected agent may be sent a state.
const SETTLE: Duration = Duration::from_millis(300);
/// Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// What one simulated agent has seen.
#[derive(Debug, Default, Clone)]
struct View {
    /// Version of the last state received.
    version: u64,
    /// Version of the last state whose Report was answered.
    acked_version: u64,
    /// When the last state arrived.
    received: Option<Instant>,
    /// When the last Report was answered.
    acked: Option<Instant>,
    /// Peers per service of the last state, by service name.
    services: BTreeMap<String, usize>,
}

/// What every agent has seen, and counters over all of them.
#[derive(Debug)]
struct Shared {
    views: Vec<Mutex<View>>,
    /// Streams opened.
    connected: AtomicU64,
    /// States received, by all agents.
    states: AtomicU64,
    /// Reports refused for the rate limit (then sent again).
    throttled: AtomicU64,
    /// Streams or connections lost (then opened again).
    reconnects: AtomicU64,
    /// Why streams or connections were lost, with how often.
    lost: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn lost(&self, why: String) {
        *self.lost.lock().unwrap().entry(why).or_default() += 1;
    }
}

fn node_name(n: usize) -> String {
    format!("node-{n}")
}

/// A distinct valid WireGuard public key (32 bytes, base64) for node `n`.
fn key(n: usize) -> String {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
    bytes[31] = 0x42;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn underlay(n: usize) -> String {
    format!("172.20.{}.{}", n / 256, n % 256)
}

/// One simulated agent: watches its node's states and reports each one applied.
/// Reconnects when its stream ends, as the real agent does.
async fn agent(n: usize, address: String, shared: Arc<Shared>) {
    let node = node_name(n);
    // The real agent's pace: 100 ms doubling to 10 s, from the start again once a
    // state has come (node-agent/src/session/mod.rs, RECONNECT).
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut first = true;
    loop {
        if !first {
            shared.reconnects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff.fail()).await;
        }
        first = false;
        let Ok(channel) = grpc_channel(&address, None, |e| {
            e.connect_timeout(Duration::from_secs(10))
        })
        .await
        .map_err(|e| shared.lost(format!("connect: {e}"))) else {
            continue;
        };
        let mut client = NodeApiClient::new(channel);
        let (applied, epoch) = {
            let view = shared.views[n].lock().unwrap();
            (view.acked_version, 0)
        };
        let hello = AgentHello {
            node: node.clone(),
            public_key: key(n),
            underlay_address: underlay(n),
            backend: WireGuardBackend::WireguardBackendUserspace.into(),
            capabilities: Vec::new(),
            applied_version: applied,
            underlay_mtu: 1500,
            applied_epoch: epoch,
        };
        let response = match client.watch(hello).await {
            Ok(response) => response,
            Err(status) => {
                shared.lost(format!("watch: {:?}: {}", status.code(), status.message()));
                continue;
            }
        };
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let mut stream = response.into_inner();
        loop {
            let state = match stream.message().await {
                Ok(Some(state)) => state,
                Ok(None) => {
                    shared.lost("stream ended".into());
                    break;
                }
                Err(status) => {
                    shared.lost(format!("stream: {:?}: {}", status.code(), status.message()));
                    break;
                }
            };
            let received = Instant::now();
            backoff.reset();
            shared.states.fetch_add(1, Ordering::Relaxed);
            {
                let mut view = shared.views[n].lock().unwrap();
                view.version = state.version;
                view.received = Some(received);
                view.services = state
                    .services
                    .iter()
                    .map(|s| (s.name.clone(), s.peers.len()))
                    .collect();
            }
            let report = AgentReport {
                node: node.clone(),
                applied_version: state.version,
                applied_epoch: state.epoch,
                ..AgentReport::default()
            };
            loop {
                match client.report(report.clone()).await {
                    Ok(_) => break,
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        shared.throttled.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(status) => {
                        shared.lost(format!("report: {:?}: {}", status.code(), status.message()));
                        break;
                    }
                }
            }
            let mut view = shared.views[n].lock().unwrap();
            view.acked_version = state.version;
            view.acked = Some(Instant::now());
        }
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The World as this program wrote it: members per node, per service.
#[derive(Debug)]
struct Model {
    nodes: usize,
    /// Per service: members per node.
    members: Vec<BTreeMap<usize, usize>>,
}

impl Model {
    fn first_node(&self, s: usize) -> usize {
        s * self.nodes / self.members.len()
    }

    /// The nodes carrying service `s`.
    fn carriers(&self, s: usize) -> BTreeSet<usize> {
        self.members[s]
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(n, _)| *n)
            .collect()
    }

    /// The services node `n` carries, by the name its state gives them, with the peers
    /// each must have.
    fn expected(&self, n: usize) -> BTreeMap<String, usize> {
        (0..self.members.len())
            .filter(|s| self.members[*s].get(&n).is_some_and(|c| *c > 0))
            .map(|s| (format!("svc-{s}/net"), self.carriers(s).len() - 1))
            .collect()
    }

    /// The nodes whose state a member of `s` added on (removed from) `n` alters: every
    /// node of the service, as each holds the service's names (DNS, on by default),
    /// and `n`.
    fn affected(&self, s: usize, n: usize) -> BTreeSet<usize> {
        let mut all = self.carriers(s);
        all.insert(n);
        all
    }

    fn apply(&mut self, s: usize, n: usize, adding: bool) {
        let count = self.members[s].entry(n).or_default();
        if adding {
            *count += 1;
        } else {
            *count -= 1;
        }
    }
}

fn document(object: &Value) -> String {
    format!("---\n{object}\n")
}

fn pod(s: usize, name: &str, node: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": format!("svc-{s}"), "labels": {"app": "member"}},
        "spec": {"nodeName": node_name(node), "containers": [{"name": "app", "image": "busybox"}]},
    })
}

/// Writes the starting manifests into `dir` and returns the model of them.
fn write_manifests(dir: &Path, nodes: usize, services: usize, span: usize) -> Model {
    let mut text = String::new();
    for n in 0..nodes {
        text.push_str(&document(
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name(n)}}),
        ));
    }
    std::fs::write(dir.join("00-nodes.yaml"), text).unwrap();
    let mut model = Model {
        nodes,
        members: vec![BTreeMap::new(); services],
    };
    for s in 0..services {
        let ns = format!("svc-{s}");
        let mut text =
            document(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
        text.push_str(&document(&json!({
            "apiVersion": "wireway.dev/v1alpha1", "kind": "NetworkService",
            "metadata": {"name": "net", "namespace": ns},
            "spec": {"cidr": format!("10.{}.0.0/16", 100 + s % 150), "nodePrefixLength": 24},
        })));
        text.push_str(&document(&json!({
            "apiVersion": "wireway.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": "members", "namespace": ns},
            "spec": {"networkService": {"name": "net"}, "podSelector": {"matchLabels": {"app": "member"}}},
        })));
        let first = model.first_node(s);
        for i in 0..span * MEMBERS_PER_NODE {
            let node = (first + i % span) % nodes;
            text.push_str(&document(&pod(s, &format!("pod-{i}"), node)));
            model.apply(s, node, true);
        }
        std::fs::write(dir.join(format!("svc-{s}.yaml")), text).unwrap();
    }
    model
}

/// `(utime + stime)` seconds, and `VmHWM`, `VmRSS` in KiB, of process `pid`.
fn usage(pid: u32) -> (f64, u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 of those after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        ticks as f64 / TICKS_PER_SECOND,
        kib("VmHWM:"),
        kib("VmRSS:"),
    )
}

/// The operator's plan durations so far (`wireway_operator_plan_duration` count and
/// sum, from its metrics on the Unix socket `http`), to tell planning from the rest.
fn plan_durations(http: &Path) -> Option<(f64, f64)> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(http).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    };
    Some((
        value("wireway_operator_plan_duration_seconds_count")?,
        value("wireway_operator_plan_duration_seconds_sum")?,
    ))
}

/// The soft limit on open files of this process (inherited by the operator).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Kills the operator when the benchmark ends, however it ends.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One change's outcome.
#[derive(Debug)]
struct Measured {
    kind: &'static str,
    affected: usize,
    /// From the file written to the last affected agent's Report answered.
    acked_ms: f64,
    /// From the file written to the last affected agent's state received.
    received_ms: f64,
    /// States sent to agents the change should not have altered.
    extra: u64,
    /// Plans made for the change, and the operator's time in them (ms).
    plans: Option<(f64, f64)>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let [nodes, services, span, per_kind] = numbers[..] else {
        eprintln!("usage: agents_scale NODES SERVICES SPAN CHANGES_PER_KIND");
        std::process::exit(2);
    };
    assert!(
        services >= 1 && span >= 2 && span < nodes,
        "need SERVICES >= 1 and 2 <= SPAN < NODES"
    );
    let needed = nodes as u64 + 256;
    match open_files_limit() {
        Some(limit) if limit < needed => {
            eprintln!(
                "the open files limit is {limit}; {nodes} agents need about {needed}: run `ulimit -n {needed}` (or higher) first"
            );
            std::process::exit(2);
        }
        _ => {}
    }
    let operator_binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("wireway-operator"))
        .unwrap();
    assert!(
        operator_binary.exists(),
        "no {} (cargo build --release -p wireway-operator --bin wireway-operator)",
        operator_binary.display()
    );

    let temp = tempfile::tempdir().unwrap();
    let manifests = temp.path().join("manifests");
    let state_dir = temp.path().join("state");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    let started = Instant::now();
    let mut model = write_manifests(&manifests, nodes, services, span);
    println!(
        "wrote {nodes} nodes, {services} services, {} members ({MEMBERS_PER_NODE} per node of a service, span {span}) into {} in {:.1} s",
        services * span * MEMBERS_PER_NODE,
        manifests.display(),
        started.elapsed().as_secs_f64()
    );

    let socket = temp.path().join("node-api.sock");
    let http = temp.path().join("http.sock");
    let log_path = temp.path().join("operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(&operator_binary)
        .arg("--manifests")
        .arg(&manifests)
        .arg("--listen-grpc")
        .arg(format!("unix:{}", socket.display()))
        .arg("--listen-http")
        .arg(format!("unix:{}", http.display()))
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["--agent-grace", "0", "--insecure-plaintext"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let operator = Operator(child);
    let pid = operator.0.id();
    let spawned = Instant::now();
    println!(
        "started {} (pid {pid}), node API in plaintext on {}; its log: {}",
        operator_binary.display(),
        socket.display(),
        log_path.display()
    );
    while !socket.exists() {
        assert!(
            spawned.elapsed() < Duration::from_secs(60),
            "the operator did not listen within 60 s; see {}",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let shared = Arc::new(Shared {
        views: (0..nodes).map(|_| Mutex::new(View::default())).collect(),
        connected: AtomicU64::new(0),
        states: AtomicU64::new(0),
        throttled: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        lost: Mutex::new(BTreeMap::new()),
    });
    let address = format!("unix:{}", socket.display());
    for n in 0..nodes {
        tokio::spawn(agent(n, address.clone(), shared.clone()));
    }
    println!("started {nodes} simulated agents; waiting until each holds its full state");

    // Initial convergence: every agent holds a state with every service it carries and
    // every peer of each.
    let expected: Vec<BTreeMap<String, usize>> = (0..nodes).map(|n| model.expected(n)).collect();
    let mut last_print = Instant::now();
    let mut first_all = None;
    let converged_after = loop {
        let mut holding = 0;
        let mut full = 0;
        for (n, view) in shared.views.iter().enumerate() {
            let view = view.lock().unwrap();
            if view.received.is_some() {
                holding += 1;
            }
            if view.services == expected[n] && view.acked_version == view.version {
                full += 1;
            }
        }
        if holding == nodes && first_all.is_none() {
            first_all = Some(spawned.elapsed());
        }
        if full == nodes {
            break spawned.elapsed();
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            last_print = Instant::now();
            println!(
                "  {:.0} s: {} streams open, {holding} agents hold a state, {full} their full state",
                spawned.elapsed().as_secs_f64(),
                shared.connected.load(Ordering::Relaxed)
            );
        }
        if spawned.elapsed() > CONVERGE_TIMEOUT {
            let waiting: Vec<String> = (0..nodes)
                .filter(|n| shared.views[*n].lock().unwrap().services != expected[*n])
                .take(10)
                .map(node_name)
                .collect();
            eprintln!(
                "FAILED: {} agents without their full state after {CONVERGE_TIMEOUT:?} (e.g. {waiting:?}); see {}",
                nodes - full,
                log_path.display()
            );
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (cpu_start, hwm_start, rss_start) = usage(pid);
    println!(
        "initial convergence: every agent held a state {:.1} s after the operator started, its full state (all peers, acknowledged) after {:.1} s; {} states sent in all; operator CPU {cpu_start:.1} s, peak RSS {} MiB, RSS {} MiB",
        first_all.unwrap_or_default().as_secs_f64(),
        converged_after.as_secs_f64(),
        shared.states.load(Ordering::Relaxed),
        hwm_start / 1024,
        rss_start / 1024,
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The changes: per round one of each kind, each on another service.
    let mut results: Vec<Measured> = Vec::new();
    let outside = nodes - span;
    let mut failed = false;
    'rounds: for round in 0..per_kind {
        let s = round * 37 % services;
        let first = model.first_node(s);
        let member_node = (first + round % span) % nodes;
        let new_node = (first + span + (round * 7919) % outside) % nodes;
        let steps = [
            ("member+", format!("extra-{round}"), member_node, true),
            ("node+", format!("reach-{round}"), new_node, true),
            ("member-", format!("extra-{round}"), member_node, false),
            ("node-", format!("reach-{round}"), new_node, false),
        ];
        for (kind, name, node, adding) in steps {
            let affected = model.affected(s, node);
            let before: BTreeMap<usize, u64> = affected
                .iter()
                .map(|n| (*n, shared.views[*n].lock().unwrap().acked_version))
                .collect();
            let states_before = shared.states.load(Ordering::Relaxed);
            let plans_before = plan_durations(&http);
            let file = manifests.join(format!("{name}.yaml"));
            let start = if adding {
                let temporary = manifests.join(".change.tmp");
                std::fs::write(&temporary, document(&pod(s, &name, node))).unwrap();
                let start = Instant::now();
                std::fs::rename(&temporary, &file).unwrap();
                start
            } else {
                let start = Instant::now();
                std::fs::remove_file(&file).unwrap();
                start
            };
            model.apply(s, node, adding);
            let outcome = loop {
                let mut received = start;
                let mut acked = start;
                let mut waiting = Vec::new();
                for (n, version) in &before {
                    let view = shared.views[*n].lock().unwrap();
                    if view.acked_version > *version {
                        received = received.max(view.received.unwrap_or(start));
                        acked = acked.max(view.acked.unwrap_or(start));
                    } else {
                        waiting.push(*n);
                    }
                }
                if waiting.is_empty() {
                    break Some((received, acked));
                }
                if start.elapsed() > CHANGE_TIMEOUT {
                    let names: Vec<String> =
                        waiting.iter().take(10).map(|n| node_name(*n)).collect();
                    eprintln!(
                        "FAILED: change {kind} (pod svc-{s}/{name} on {}) not acknowledged by {} of {} affected agents within {CHANGE_TIMEOUT:?}, e.g. {names:?}; see {}",
                        node_name(node),
                        waiting.len(),
                        affected.len(),
                        log_path.display()
                    );
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            let Some((received, acked)) = outcome else {
                failed = true;
                break 'rounds;
            };
            tokio::time::sleep(SETTLE).await;
            let sent = shared.states.load(Ordering::Relaxed) - states_before;
            // Plans the change caused, and the time the operator spent in them.
            let plans = match (plans_before, plan_durations(&http)) {
                (Some((c0, s0)), Some((c1, s1))) => Some((c1 - c0, (s1 - s0) * 1e3)),
                _ => None,
            };
            let measured = Measured {
                kind,
                affected: affected.len(),
                acked_ms: (acked - start).as_secs_f64() * 1e3,
                received_ms: (received - start).as_secs_f64() * 1e3,
                extra: sent.saturating_sub(affected.len() as u64),
                plans,
            };
            // The states must match the model again, on the affected nodes at least.
            let wrong: Vec<String> = affected
                .iter()
                .filter_map(|n| {
                    let held = shared.views[*n].lock().unwrap().services.clone();
                    let expected = model.expected(*n);
                    (held != expected)
                        .then(|| format!("{} holds {held:?}, expected {expected:?}", node_name(*n)))
                })
                .take(3)
                .collect();
            println!(
                "  {kind:8} svc-{s} on {:10} {:5} agents: received {:7.1} ms, acknowledged {:7.1} ms; {}{}{}",
                node_name(node),
                measured.affected,
                measured.received_ms,
                measured.acked_ms,
                measured.plans.map_or_else(
                    || "plans unknown".to_owned(),
                    |(count, ms)| format!("{count} plan(s), {ms:.1} ms planning")
                ),
                if measured.extra > 0 {
                    format!(", {} states beyond the affected agents", measured.extra)
                } else {
                    String::new()
                },
                if wrong.is_empty() {
                    String::new()
                } else {
                    format!(", states not as modelled on {wrong:?}")
                }
            );
            results.push(measured);
        }
    }

    let (cpu_end, hwm_end, rss_end) = usage(pid);
    let (own_cpu, own_hwm, _) = usage(std::process::id());
    println!();
    println!(
        "{nodes} nodes, {services} services, span {span}, {} members; {per_kind} changes per kind; times from the file written (ms):",
        services * span * MEMBERS_PER_NODE
    );
    println!(
        "{:8} {:>6} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8}",
        "change",
        "count",
        "affected",
        "ack p50",
        "ack p99",
        "ack max",
        "recv p50",
        "recv p99",
        "recv max"
    );
    for kind in ["member+", "node+", "member-", "node-"] {
        let of_kind: Vec<&Measured> = results.iter().filter(|m| m.kind == kind).collect();
        let mut acked: Vec<f64> = of_kind.iter().map(|m| m.acked_ms).collect();
        let mut received: Vec<f64> = of_kind.iter().map(|m| m.received_ms).collect();
        acked.sort_by(f64::total_cmp);
        received.sort_by(f64::total_cmp);
        let widths: BTreeSet<usize> = of_kind.iter().map(|m| m.affected).collect();
        let widths = widths
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{kind:8} {:>6} {widths:>8} | {:8.1} {:8.1} {:8.1} | {:8.1} {:8.1} {:8.1}",
            acked.len(),
            percentile(&acked, 50.0),
            percentile(&acked, 99.0),
            acked.last().copied().unwrap_or_default(),
            percentile(&received, 50.0),
            percentile(&received, 99.0),
            received.last().copied().unwrap_or_default(),
        );
    }
    for kind in ["member+", "node+", "member-", "node-"] {
        let mut planning: Vec<f64> = results
            .iter()
            .filter(|m| m.kind == kind)
            .filter_map(|m| Some(m.plans?.1))
            .collect();
        planning.sort_by(f64::total_cmp);
        println!(
            "{kind:8} the operator's planning per change (plan_duration): p50 {:.1} ms, max {:.1} ms",
            percentile(&planning, 50.0),
            planning.last().copied().unwrap_or_default()
        );
    }
    let extra: u64 = results.iter().map(|m| m.extra).sum();
    println!(
        "states sent to agents a change did not alter: {extra}; reports throttled: {}; streams reconnected: {}",
        shared.throttled.load(Ordering::Relaxed),
        shared.reconnects.load(Ordering::Relaxed)
    );
    for (why, count) in shared.lost.lock().unwrap().iter() {
        println!("  lost {count} times: {why}");
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut messages: BTreeMap<String, u64> = BTreeMap::new();
    for line in log.lines() {
        // Without the timestamp, and cut short: the kinds of message, not each one.
        let text = line
            .split_once(' ')
            .map_or(line, |(_, rest)| rest.trim_start());
        *messages
            .entry(text.chars().take(160).collect())
            .or_default() += 1;
    }
    println!(
        "operator log: {} lines (RUST_LOG=warn)",
        log.lines().count()
    );
    for (text, count) in messages.iter().take(10) {
        println!("  {count} x {text}");
    }
    println!(
        "operator CPU: {cpu_start:.1} s until initial convergence, {:.1} s over the changes ({:.1} s in all, over {:.0} s of wall time)",
        cpu_end - cpu_start,
        cpu_end,
        spawned.elapsed().as_secs_f64()
    );
    println!(
        "operator memory: peak RSS {} MiB ({:.1} KiB per node; {} MiB at initial convergence), RSS at the end {} MiB ({:.1} KiB per node)",
        hwm_end / 1024,
        hwm_end as f64 / nodes as f64,
        hwm_start / 1024,
        rss_end / 1024,
        rss_end as f64 / nodes as f64,
    );
    println!(
        "this benchmark's own process (the {nodes} agents): CPU {own_cpu:.1} s, peak RSS {} MiB",
        own_hwm / 1024
    );
    drop(operator);
    if failed {
        eprintln!(
            "FAILED: a change was not acknowledged in time (above); the figures cover the changes before it"
        );
        std::process::exit(1);
    }
}
