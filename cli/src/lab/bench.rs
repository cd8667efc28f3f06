//! `wireway lab bench`: how fast a change in the manifests is in effect.
//!
//! A lab of `nodes` nodes runs one NetworkService with two members on most nodes; a few
//! nodes start with none. Every node also runs an idle pod (labelled `net: idle`, which
//! the service's Endpoint does not select), so its network namespace exists before a
//! change, as a running pod's does. A change relabels an idle pod `net: bench` (it joins)
//! or back (it leaves): one file written (renamed into place) in the manifest directory.
//! Its latency runs from that moment to the last report, at the operator, of an agent
//! that applied the state the change produced with nothing left out. Four kinds of
//! change take turns:
//!
//! * `member+` / `member-`: a member joins (leaves) on a node that already carries the
//!   service: one node's state changes;
//! * `node+` / `node-`: a member joins (leaves) on a node without members: the service
//!   comes to (leaves) that node, and every other node carrying it gets (loses) a peer.
//!
//! Beside it, the latency of the change's name: from the same moment until a member on
//! another node, asking its gateway every 2 ms, gets the joining pod's address (or
//! NXDOMAIN for the leaving pod's name).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use wireway_operator::snapshot::Snapshot;
use wireway_runtime::clock::unix_ms;
use wireway_runtime::errors::FileError;

use super::{Lab, manifests};
use crate::status::FetchError;

/// Nodes that start without members, so that `node+` changes have somewhere to go.
const EMPTY_NODES: usize = 3;

/// How long a change may take before the benchmark gives up.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the operator's status is read while a change is in flight.
const POLL: Duration = Duration::from_millis(20);

/// Why the benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The operator's status could not be fetched.
    #[error(transparent)]
    Status(#[from] FetchError),
    /// A change could not be written.
    #[error(transparent)]
    Write(FileError),
    /// A change was not in effect in time.
    #[error("failed to apply change {index} ({kind} on {node}) within {timeout:?}")]
    Timeout {
        /// Its number, from 0.
        index: usize,
        /// `member` or `node`.
        kind: &'static str,
        /// The node of the pod it relabelled.
        node: String,
        /// How long it waited.
        timeout: Duration,
    },
}

/// What the benchmark measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Results {
    /// Nodes in the lab.
    pub nodes: usize,
    /// Every change.
    pub changes: Vec<Change>,
}

/// One change and how long it took.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// `member+`, `member-`, `node+` or `node-`.
    pub kind: String,
    /// The nodes whose state it changed.
    pub nodes: usize,
    /// Until the last of them reported the state it produced (ms).
    pub ms: u64,
    /// Until the first of them did (ms): what comes before is the file event, the
    /// operator's reading and planning and the first push and pass; what comes after,
    /// the other nodes' pushes and passes sharing the machine.
    pub first_ms: u64,
    /// Until another member's gateway answered the pod's name as the change says (ms);
    /// `None` if it did not within the change's time.
    pub name_ms: Option<u64>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Results {
    /// The summary: p50, p99 and max, over all changes and per kind.
    pub fn render(&self) -> String {
        let mut out = String::new();
        type Latencies = (Vec<u64>, Vec<u64>, usize, Vec<u64>);
        let mut kinds: BTreeMap<&str, Latencies> = BTreeMap::new();
        let mut all: Latencies = Default::default();
        let mut widths: BTreeMap<&str, usize> = BTreeMap::new();
        for change in &self.changes {
            for (ms, names, missing, first) in [kinds.entry(&change.kind).or_default(), &mut all] {
                ms.push(change.ms);
                first.push(change.first_ms);
                match change.name_ms {
                    Some(n) => names.push(n),
                    None => *missing += 1,
                }
            }
            widths.insert(&change.kind, change.nodes);
        }
        let mut rows = Vec::new();
        for (kind, (mut ms, mut names, missing, mut first)) in
            kinds.into_iter().chain([("all", all)])
        {
            ms.sort_unstable();
            first.sort_unstable();
            names.sort_unstable();
            let name_max = match missing {
                0 => names.last().copied().unwrap_or_default().to_string(),
                n => format!("{n} late"),
            };
            rows.push(vec![
                kind.to_owned(),
                ms.len().to_string(),
                widths.get(kind).map_or("-".into(), ToString::to_string),
                percentile(&first, 50.0).to_string(),
                percentile(&ms, 50.0).to_string(),
                percentile(&ms, 99.0).to_string(),
                ms.last().copied().unwrap_or_default().to_string(),
                percentile(&names, 50.0).to_string(),
                percentile(&names, 99.0).to_string(),
                name_max,
            ]);
        }
        let _ = writeln!(
            out,
            "{} changes on a lab of {} nodes; latency from the file written to the first and the last agent's report of the state it produced, and to the pod's name answered (or NXDOMAIN) at a member on another node (ms):",
            self.changes.len(),
            self.nodes
        );
        out.push_str(&crate::table::render(
            &[
                "CHANGE",
                "COUNT",
                "NODES CHANGED",
                "FIRST P50",
                "P50",
                "P99",
                "MAX",
                "NAME P50",
                "NAME P99",
                "NAME MAX",
            ],
            &rows,
        ));
        out
    }
}

fn node(n: usize) -> String {
    format!("bench-{n:02}")
}

fn pod(name: &str, node: &str, label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: {{net: {label}}}}}\n\
         spec: {{nodeName: {node}, containers: [{{name: app, image: busybox}}]}}\n"
    )
}

/// The file of a node's idle pod.
fn idle_file(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("{node}-idle.yaml"))
}

/// The manifests the benchmark starts from, written into `dir`.
pub fn write_manifests(dir: &Path, nodes: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut text = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\n\
         apiVersion: wireway.dev/v1alpha1\nkind: NetworkService\nmetadata: {name: bench, namespace: bench}\n\
         spec: {cidr: 10.50.0.0/16, nodePrefixLength: 24}\n---\n\
         apiVersion: wireway.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: members, namespace: bench}\n\
         spec: {networkService: {name: bench}, podSelector: {matchLabels: {net: bench}}}\n",
    );
    for n in 1..=nodes {
        text.push_str(&manifests::document(&manifests::node(&node(n))));
    }
    std::fs::write(dir.join("00-bench.yaml"), text)?;
    for n in 1..=nodes {
        let name = node(n);
        std::fs::write(
            idle_file(dir, &name),
            pod(&format!("{name}-idle"), &name, "idle"),
        )?;
        if n <= nodes.saturating_sub(EMPTY_NODES) {
            for m in 1..=2 {
                let file = dir.join(format!("{name}-{m}.yaml"));
                std::fs::write(file, pod(&format!("{name}-{m}"), &name, "bench"))?;
            }
        }
    }
    Ok(())
}

/// The name of the bench pod `pod` in the bench service's default zone.
fn name_of(pod: &str) -> String {
    format!("{pod}.members.bench.bench.bench.wireway.internal")
}

/// Asks the gateway of the member in network namespace `netns` (a path) for `name` (A)
/// every 2 ms until it has an address (`present`) or is NXDOMAIN (not `present`), or
/// `deadline` passes: when it did, in Unix ms. Runs on a thread of its own, which enters
/// the namespace.
fn name_settles(netns: PathBuf, name: String, present: bool, deadline: Instant) -> Option<u64> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    let file = std::fs::File::open(netns).ok()?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("169.254.77.1:53").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .ok()?;
    let mut buffer = [0u8; 1500];
    for id in 0u16.. {
        if Instant::now() > deadline {
            return None;
        }
        let mut query = Message::new(id, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(Name::from_ascii(&name).ok()?, RecordType::A));
        let _ = socket.send(&query.to_vec().ok()?);
        // Replies to earlier queries that came late are skipped, not taken for this one.
        while let Ok(n) = socket.recv(&mut buffer) {
            let Ok(reply) = Message::from_vec(&buffer[..n]) else {
                continue;
            };
            if reply.metadata.id != id {
                continue;
            }
            let settled = match present {
                true => !reply.answers.is_empty(),
                false => reply.metadata.response_code == ResponseCode::NXDomain,
            };
            if settled {
                return Some(unix_ms());
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

/// Versions planned per node.
fn desired(snapshot: &Snapshot) -> BTreeMap<String, u64> {
    snapshot
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.desired_version))
        .collect()
}

/// Runs `changes` changes on the lab (made from [`write_manifests`] in `dir`).
pub async fn run(
    lab: &Lab,
    dir: &Path,
    nodes: usize,
    changes: usize,
) -> Result<Results, BenchError> {
    let mut results = Vec::new();
    let hosting = nodes.saturating_sub(EMPTY_NODES).max(1);
    // One connection for every poll: a TLS handshake per poll would load the operator
    // being measured.
    let mut status = lab.status_client().await?;
    for i in 0..changes {
        let round = i / 4;
        let (kind, n) = match i % 4 {
            0 | 1 => ("member", 1 + round % hosting),
            _ => ("node", hosting + 1 + round % (nodes - hosting).max(1)),
        };
        let target = node(n);
        let adding = i % 2 == 0;
        let before = desired(&status.fetch().await?);
        // A member on another node asks for the pod's name.
        let asker = format!("bench/{}-1", node(if n == 1 { 2 } else { 1 }));
        let asker_netns = lab
            .record
            .pods
            .get(&asker)
            .map(|p| PathBuf::from("/run/netns").join(&p.netns));
        let temporary = dir.join(".change.tmp");
        let label = if adding { "bench" } else { "idle" };
        std::fs::write(&temporary, pod(&format!("{target}-idle"), &target, label))
            .map_err(|e| BenchError::Write(FileError::on("write", &temporary)(e)))?;
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        let name = name_of(&format!("{target}-idle"));
        let asking = asker_netns
            .map(|netns| std::thread::spawn(move || name_settles(netns, name, adding, deadline)));
        let started = unix_ms();
        let file = idle_file(dir, &target);
        std::fs::rename(&temporary, &file)
            .map_err(|e| BenchError::Write(FileError::on("replace", &file)(e)))?;
        let latency = loop {
            let snapshot = status.fetch().await?;
            let changed: Vec<_> = snapshot
                .nodes
                .iter()
                .filter(|n| before.get(&n.name).is_some_and(|v| n.desired_version > *v))
                .collect();
            let applied = changed
                .iter()
                .all(|n| n.applied_version >= n.desired_version && n.problems.is_empty());
            if !changed.is_empty() && applied {
                let reported = changed.iter().filter_map(|n| n.applied_at_ms);
                let first = reported.clone().min().unwrap_or(started);
                let last = reported.max().unwrap_or(started);
                break (
                    changed.len(),
                    first.saturating_sub(started),
                    last.saturating_sub(started),
                );
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout {
                    index: i,
                    kind,
                    node: target,
                    timeout: CHANGE_TIMEOUT,
                });
            }
            // The latency comes from the operator's timestamps, not from when a poll
            // sees them: polling only finds when the change is done, and polling more
            // often would take the CPU the lab is measured on.
            tokio::time::sleep(POLL).await;
        };
        let named = match asking {
            Some(thread) => tokio::task::spawn_blocking(move || thread.join().ok().flatten())
                .await
                .ok()
                .flatten(),
            None => None,
        };
        results.push(Change {
            kind: format!("{kind}{}", if adding { "+" } else { "-" }),
            nodes: latency.0,
            first_ms: latency.1,
            ms: latency.2,
            name_ms: named.map(|at| at.saturating_sub(started)),
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Results {
        nodes,
        changes: results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_rank_up() {
        let ms: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&ms, 50.0), 50);
        assert_eq!(percentile(&ms, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
