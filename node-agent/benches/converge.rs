//! The converger on a node with 1,000 peers: from nothing, and in sync.
//! Results and the command are in docs/benchmarks.md.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use wireway_agent::converge::{Dataplane, NetnsId, ResolvedNetns, converge, desired};
use wireway_proto::{Member, NetnsLocator, NodeState, Peer, ServiceState, netns_locator};

/// One service with 1,000 peers (other nodes) and 20 local members.
fn state() -> NodeState {
    let peers = (0..1000u32)
        .map(|i| Peer {
            name: format!("node-{i}"),
            public_key: format!("{i:0>43}="),
            endpoint: format!("192.168.{}.{}:51820", i / 250, i % 250 + 1),
            allowed_ips: vec![format!("10.{}.{}.0/24", 100 + i / 256, i % 256)],
            persistent_keepalive: 0,
        })
        .collect();
    let members = (0..20u32)
        .map(|i| Member {
            id: format!("red/pod-{i}"),
            netns: Some(NetnsLocator {
                locator: Some(netns_locator::Locator::Path(format!("/run/netns/pod-{i}"))),
            }),
            interface_name: "nsm-red".into(),
            host_interface_name: format!("wwv{i:08x}"),
            address: format!("10.99.0.{}", i + 1),
        })
        .collect();
    NodeState {
        node: "node".into(),
        version: 1,
        services: vec![ServiceState {
            name: "red/red".into(),
            interface_name: "ww-red".into(),
            listen_port: 51820,
            mtu: 1420,
            cidr: "10.0.0.0/8".into(),
            node_prefix: "10.99.0.0/24".into(),
            route_table: 0x5757_0000 + 51820,
            members,
            peers,
        }],
    }
}

fn resolve(l: &NetnsLocator) -> Option<ResolvedNetns> {
    match &l.locator {
        Some(netns_locator::Locator::Path(p)) => Some(ResolvedNetns {
            path: p.clone(),
            id: NetnsId {
                dev: 1,
                ino: p.len() as u64,
            },
        }),
        _ => None,
    }
}

fn bench(c: &mut Criterion) {
    let state = state();
    let (want, _) = desired(&state, resolve);
    let mut in_sync = want.clone();
    for link in in_sync.members.values_mut() {
        if let Some(w) = link.workload.as_mut() {
            w.netns_path.clear();
        }
    }
    let empty = Dataplane::default();
    c.bench_function("converge/1000-peers/from-empty", |b| {
        b.iter(|| {
            let (want, _) = desired(&state, resolve);
            converge(&want, &empty).len()
        })
    });
    c.bench_function("converge/1000-peers/in-sync", |b| {
        b.iter(|| {
            let (want, _) = desired(&state, resolve);
            let ops = converge(&want, &in_sync);
            assert!(ops.is_empty());
            ops.len()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
