//! Planner benchmarks: a full plan at growing scales, and one member changing in a large
//! World (the incremental path). Results and the command are in docs/benchmarks.md.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use wireway_operator::plan::{Change, Planner};

mod scale;
use scale::Scale;

const SCALES: [Scale; 4] = [
    Scale {
        nodes: 500,
        services: 10,
        members: 10_000,
        span: 50,
    },
    Scale {
        nodes: 1_000,
        services: 20,
        members: 20_000,
        span: 50,
    },
    Scale {
        nodes: 2_500,
        services: 50,
        members: 50_000,
        span: 50,
    },
    Scale {
        nodes: 5_000,
        services: 100,
        members: 100_000,
        span: 50,
    },
];

fn full(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan/full");
    group.sample_size(10);
    for scale in SCALES {
        let world = scale::world(scale);
        let id = format!("{}n-{}s-{}m", scale.nodes, scale.services, scale.members);
        // What the operator does: index the World it owns and plan it. Copying the World
        // in (setup) and dropping the planner (teardown) are not measured.
        group.bench_with_input(BenchmarkId::from_parameter(id), &world, |b, w| {
            b.iter_batched(
                || w.clone(),
                |w| {
                    let mut planner = Planner::new(w, None);
                    planner.plan();
                    planner
                },
                BatchSize::PerIteration,
            )
        });
    }
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

criterion_group!(benches, full, incremental);
criterion_main!(benches);
