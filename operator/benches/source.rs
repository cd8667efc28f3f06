//! The manifests source: what one file event costs at scale. Files in the shape of the
//! `agents_scale` example (a file of nodes; per service a file with its namespace,
//! NetworkService, Endpoint and its pods, 20 per node it spans; one file per pod added
//! since), read once, then one small pod file written, removed or left alone: the
//! `Manifests::update` a file event costs, from the texts to the World's changes.
//! Results and the command are in docs/benchmarks.md.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use wireway_operator::source::manifests::Manifests;

const MEMBERS_PER_NODE: usize = 20;
const SPAN: usize = 50;

type Texts = BTreeMap<PathBuf, std::io::Result<String>>;

fn pod(service: usize, name: &str, node: usize) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: svc-{service}\n  labels:\n    app: member\nspec:\n  nodeName: node-{node}\n  containers:\n  - name: app\n    image: busybox\n"
    )
}

/// The texts of `nodes` nodes and `services` services of `SPAN` nodes each.
fn texts(nodes: usize, services: usize) -> Texts {
    let mut texts = Texts::new();
    let all: String = (0..nodes)
        .map(|n| format!("---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node-{n}\n"))
        .collect();
    texts.insert("00-nodes.yaml".into(), Ok(all));
    for s in 0..services {
        let mut text = format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: svc-{s}\n---\napiVersion: wireway.dev/v1alpha1\nkind: NetworkService\nmetadata:\n  name: net\n  namespace: svc-{s}\nspec:\n  cidr: 10.{}.0.0/16\n  nodePrefixLength: 24\n---\napiVersion: wireway.dev/v1alpha1\nkind: Endpoint\nmetadata:\n  name: members\n  namespace: svc-{s}\nspec:\n  networkService:\n    name: net\n  podSelector:\n    matchLabels:\n      app: member\n",
            100 + s % 150
        );
        let first = s * SPAN % nodes;
        for i in 0..SPAN * MEMBERS_PER_NODE {
            text.push_str(&pod(s, &format!("pod-{i}"), (first + i % SPAN) % nodes));
        }
        texts.insert(format!("svc-{s}.yaml").into(), Ok(text));
    }
    texts
}

fn clone(texts: &Texts) -> Texts {
    texts
        .iter()
        .map(|(path, text)| (path.clone(), Ok(text.as_ref().unwrap().clone())))
        .collect()
}

fn file_events(c: &mut Criterion) {
    let mut group = c.benchmark_group("source/manifests");
    group.sample_size(10);
    for (nodes, services) in [(1_000, 20), (5_000, 100)] {
        let base = texts(nodes, services);
        let mut manifests = Manifests::new(Vec::new()).unwrap();
        manifests.update(clone(&base));
        let mut added = clone(&base);
        added.insert("added.yaml".into(), Ok(pod(0, "added", 1)));
        let id = format!("{nodes}n-{}pods", services * SPAN * MEMBERS_PER_NODE);
        // One pod file written, then removed: each iteration one file event (so each
        // input is made just before its iteration, never batched ahead).
        let present = std::cell::Cell::new(false);
        group.bench_function(BenchmarkId::new("pod-file-added-or-removed", &id), |b| {
            b.iter_batched(
                || clone(if present.get() { &base } else { &added }),
                |texts| {
                    let scan = manifests.update(texts);
                    assert_eq!(scan.changes.len(), 1);
                    present.set(!present.get());
                },
                BatchSize::PerIteration,
            );
        });
        group.bench_function(BenchmarkId::new("nothing-changed", &id), |b| {
            b.iter_batched(
                || clone(if present.get() { &added } else { &base }),
                |texts| assert!(manifests.update(texts).changes.is_empty()),
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, file_events);
criterion_main!(benches);
