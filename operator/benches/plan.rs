//! Planner benchmarks: a full plan at growing scales, and one member changing in a large
//! World (the incremental path), and the same for one service over a DaemonSet on 1,000
//! nodes (`podSelector: {}`, a pod on every node). Results and the command are in
//! docs/benchmarks.md.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use wireway_operator::plan::{Change, Planner, World};

mod scale;
use scale::Scale;

const SCALES: [Scale; 4] = [
    Scale {
        nodes: 500,
        services: 10,
        members: 10_000,
        span: 50,
        daemonset: false,
    },
    Scale {
        nodes: 1_000,
        services: 20,
        members: 20_000,
        span: 50,
        daemonset: false,
    },
    Scale {
        nodes: 2_500,
        services: 50,
        members: 50_000,
        span: 50,
        daemonset: false,
    },
    Scale {
        nodes: 5_000,
        services: 100,
        members: 100_000,
        span: 50,
        daemonset: false,
    },
];

/// One NetworkService whose Endpoint selects every pod of its namespace, over a
/// DaemonSet's pod on each of 1,000 nodes: every node carries it with 999 peers.
const DAEMONSET: Scale = Scale {
    nodes: 1_000,
    services: 0,
    members: 0,
    span: 0,
    daemonset: true,
};

/// What the operator does: index the World it owns and plan it. Copying the World in
/// (setup) and dropping the planner (teardown) are not measured.
fn plan_world(b: &mut criterion::Bencher<'_>, world: &World) {
    b.iter_batched(
        || world.clone(),
        |w| {
            let mut planner = Planner::new(w, None);
            planner.plan();
            planner
        },
        BatchSize::PerIteration,
    )
}

fn full(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan/full");
    group.sample_size(10);
    for scale in SCALES {
        let world = scale::world(scale);
        let id = format!("{}n-{}s-{}m", scale.nodes, scale.services, scale.members);
        group.bench_with_input(BenchmarkId::from_parameter(id), &world, plan_world);
    }
    let world = scale::world(DAEMONSET);
    let id = format!("daemonset-{}n", DAEMONSET.nodes);
    group.bench_with_input(BenchmarkId::from_parameter(id), &world, plan_world);
    group.finish();
}

fn incremental(c: &mut Criterion) {
    let scale = SCALES[3];
    let mut planner = Planner::new(scale::world(scale), None);
    planner.plan();
    let mut i = 0usize;
    c.bench_function(
        "plan/incremental/one-member-added-5000n-100s-100000m",
        |b| {
            b.iter(|| {
                i += 1;
                let pod = scale::pod(scale, i % scale.services, 1_000_000 + i);
                planner.apply(Change::Pod(pod));
                planner.plan().changed_nodes.len()
            })
        },
    );
}

/// One change at a time to the DaemonSet-wide service, alternating with its undoing so the
/// World stays the same size however many iterations criterion runs: each iteration is
/// an apply and a plan, half of them adding, half removing.
fn incremental_daemonset(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan/incremental/daemonset-1000n");
    group.sample_size(10);
    let mut planner = Planner::new(scale::world(DAEMONSET), None);
    planner.plan();
    let ns = scale::DAEMONSET_NAMESPACE;
    // A second member on node 7, which carries the mesh already: only node 7 changes.
    let mut present = false;
    group.bench_function("member-added-or-removed", |b| {
        b.iter(|| {
            let change = if present {
                Change::PodDeleted(ns.into(), "extra".into())
            } else {
                Change::Pod(scale::daemon_pod("extra", 7))
            };
            present = !present;
            planner.apply(change);
            planner.plan().changed_nodes.len()
        })
    });
    if present {
        planner.apply(Change::PodDeleted(ns.into(), "extra".into()));
        planner.plan();
    }
    // Node 7's only member: node 7 leaves the mesh or joins it, and every node changes.
    let mut present = true;
    group.bench_function("node-left-or-joined", |b| {
        b.iter(|| {
            let change = if present {
                Change::PodDeleted(ns.into(), "ds-7".into())
            } else {
                Change::Pod(scale::daemon_pod("ds-7", 7))
            };
            present = !present;
            planner.apply(change);
            planner.plan().changed_nodes.len()
        })
    });
    group.finish();
}

criterion_group!(benches, full, incremental, incremental_daemonset);
criterion_main!(benches);
