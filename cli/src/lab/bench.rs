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
    /// Every change: its kind, the nodes whose state it changed, its latency (ms).
    pub changes: Vec<(String, usize, u64)>,
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
        let mut kinds: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        let mut all: Vec<u64> = Vec::new();
        let mut widths: BTreeMap<&str, usize> = BTreeMap::new();
        for (kind, nodes, ms) in &self.changes {
            kinds.entry(kind).or_default().push(*ms);
            widths.insert(kind, *nodes);
            all.push(*ms);
        }
        let mut rows = Vec::new();
        for (kind, mut ms) in kinds.into_iter().chain([("all", all)]) {
            ms.sort_unstable();
            rows.push(vec![
                kind.to_owned(),
                ms.len().to_string(),
                widths.get(kind).map_or("-".into(), ToString::to_string),
                percentile(&ms, 50.0).to_string(),
                percentile(&ms, 99.0).to_string(),
                ms.last().copied().unwrap_or_default().to_string(),
            ]);
        }
        let _ = writeln!(
            out,
            "{} changes on a lab of {} nodes; latency from the file written to the last agent's report of the state it produced (ms):",
            self.changes.len(),
            self.nodes
        );
        out.push_str(&crate::table::render(
            &["CHANGE", "COUNT", "NODES CHANGED", "P50", "P99", "MAX"],
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
        let temporary = dir.join(".change.tmp");
        let label = if adding { "bench" } else { "idle" };
        std::fs::write(&temporary, pod(&format!("{target}-idle"), &target, label))
            .map_err(|e| BenchError::Write(FileError::on("write", &temporary)(e)))?;
        let started = unix_ms();
        let file = idle_file(dir, &target);
        std::fs::rename(&temporary, &file)
            .map_err(|e| BenchError::Write(FileError::on("replace", &file)(e)))?;
        let deadline = Instant::now() + CHANGE_TIMEOUT;
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
                let last = changed
                    .iter()
                    .filter_map(|n| n.applied_at_ms)
                    .max()
                    .unwrap_or(started);
                break (changed.len(), last.saturating_sub(started));
            }
            if Instant::now() > deadline {
                return Err(BenchError::Timeout {
                    index: i,
                    kind,
                    node: target,
                    timeout: CHANGE_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let change = format!("{kind}{}", if adding { "+" } else { "-" });
        results.push((change, latency.0, latency.1));
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
