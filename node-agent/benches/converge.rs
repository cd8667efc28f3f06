//! The converger on a node with 1,000 peers: from nothing, and in sync.
//! Results and the command are in docs/benchmarks.md.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use wireway_agent::converge::{Plane, converge, desired};
use wireway_agent::testing::*;
use wireway_proto::NodeState;

/// One service with 1,000 peers (other nodes) and 20 local members.
fn state() -> NodeState {
    let mut red = service("red/red")
        .port(51820)
        .cidr("10.0.0.0/8")
        .node_prefix("10.99.0.0/24");
    for i in 0..1000u32 {
        red = red.peer(
            peer(&format!("node-{i}"))
                .key(&test_key(i))
                .at(&format!("192.168.{}.{}:51820", i / 250, i % 250 + 1))
                .allowing(&format!("10.{}.{}.0/24", 100 + i / 256, i % 256)),
        );
    }
    for i in 0..20u32 {
        red = red.member(
            member(&format!("red/pod-{i}"))
                .host_side(&format!("wwv{i:08x}"))
                .at(&format!("10.99.0.{}", i + 1)),
        );
    }
    node("node").with(red)
}

fn bench(c: &mut Criterion) {
    let state = state();
    let (want, _) = desired(&state, pods_running);
    let in_sync = as_observed(&want);
    let empty = Plane::default();
    c.bench_function("converge/1000-peers/from-empty", |b| {
        b.iter(|| {
            let (want, _) = desired(&state, pods_running);
            converge(&want, &empty).len()
        })
    });
    c.bench_function("converge/1000-peers/in-sync", |b| {
        b.iter(|| {
            let (want, _) = desired(&state, pods_running);
            let ops = converge(&want, &in_sync);
            assert!(ops.is_empty());
            ops.len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
