//! A member's DNS zones made again after one of a service's members joins: the whole zone
//! made anew, against the zone changed by the records that changed (`Zones::after`).
//! Results and the command are in docs/benchmarks.md.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use wireway_agent::dns::answer::Zones;
use wireway_proto::{DnsRecord, NodeState, ServiceDns, ServiceState};

/// One service whose zone names `members` pods behind 10 Endpoints (and the Endpoints).
fn state(members: u32) -> NodeState {
    let mut records = Vec::new();
    for endpoint in 0..10 {
        records.push(DnsRecord {
            name: format!("ep-{endpoint}.red"),
            addresses: (0..members / 10)
                .map(|i| format!("10.100.{}.{}", i / 250, i % 250 + 1))
                .collect(),
        });
    }
    for i in 0..members {
        records.push(DnsRecord {
            name: format!("pod-{i}.ep-{}.red", i % 10),
            addresses: vec![format!("10.100.{}.{}", i / 250, i % 250 + 1)],
        });
    }
    records.sort_by(|a, b| a.name.cmp(&b.name));
    NodeState {
        node: "node".into(),
        services: vec![ServiceState {
            name: "red/red".into(),
            dns: Some(ServiceDns {
                zone: "red.red.wireway.internal".into(),
                records: records.into_iter().map(Into::into).collect(),
            }),
            ..ServiceState::default()
        }],
        ..NodeState::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("zones/one-member-joins");
    for members in [200u32, 10_000] {
        let before = Zones::new(&state(members));
        let after = state(members + 1);
        group.bench_with_input(BenchmarkId::new("anew", members), &after, |b, after| {
            b.iter(|| Zones::new(after));
        });
        group.bench_with_input(BenchmarkId::new("changed", members), &after, |b, after| {
            b.iter(|| Zones::after(after, &before));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
