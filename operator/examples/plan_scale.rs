//! Plans a synthetic World once and reports time, peak memory, the size of the node
//! states, and for single changes the incremental time and how many nodes' states
//! changed.
//!
//! `cargo run --release -p wireway-operator --example plan_scale -- 5000 100 100000 50`
//! (nodes, services, members, nodes per service). With `--daemonset` first, the World
//! also holds one service whose Endpoint has `podSelector: {}` over a DaemonSet's pod on
//! every node (see benches/scale.rs); `--daemonset 1000 0 0 0` is that service alone.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use prost::Message;
use wireway_operator::plan::{Change, Planner};
use wireway_proto::NodeState;

#[path = "../benches/scale.rs"]
mod scale;

/// A memory figure of this process (`field` of /proc/self/status), as the kernel counts it.
fn status_mib(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l.to_owned())
        })
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or_else(|| "?".into(), |kib| format!("{} MiB", kib / 1024))
}

/// The process's peak resident set so far.
fn peak_rss_mib() -> String {
    status_mib("VmHWM:")
}

/// Applies each change and plans, one at a time, and reports the times, how many nodes'
/// states changed and how many targets were planned for their changed pods alone. As the
/// engine does, `hub` keeps a copy of each node's latest state (sharing what the states
/// share); copying the changed states into it is timed apart, as "publish".
fn runs(
    planner: &mut Planner,
    hub: &mut BTreeMap<String, NodeState>,
    what: &str,
    changes: Vec<Change>,
) {
    let count = changes.len();
    let mut times = Vec::new();
    let mut publish = Vec::new();
    let mut changed = BTreeSet::new();
    let mut by_members = 0;
    for change in changes {
        let start = Instant::now();
        planner.apply(change);
        let plan = planner.plan();
        times.push(start.elapsed().as_secs_f64() * 1e3);
        let start = Instant::now();
        for node in &plan.changed_nodes {
            if let Some(state) = plan.nodes.get(node) {
                hub.insert(node.clone(), state.clone());
            }
        }
        publish.push(start.elapsed().as_secs_f64() * 1e3);
        changed.insert(plan.changed_nodes.len());
        by_members += planner.last_round().by_members;
    }
    times.sort_by(f64::total_cmp);
    publish.sort_by(f64::total_cmp);
    println!(
        "{what} ({count} runs): plan p50 {:.3} ms, max {:.3} ms; publish p50 {:.3} ms; nodes changed per run: {changed:?}; targets planned by members: {by_members}",
        times[times.len() / 2],
        times[times.len() - 1],
        publish[publish.len() / 2],
    );
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let daemonset = args.first().is_some_and(|a| a == "--daemonset");
    if daemonset {
        args.remove(0);
    }
    // More changes than the default 50 make a profile of the incremental path.
    let changes = match args.iter().position(|a| a == "--changes") {
        Some(at) => {
            let count = args.get(at + 1).and_then(|c| c.parse().ok());
            args.drain(at..(at + 2).min(args.len()));
            count
        }
        None => Some(50),
    };
    let numbers: Vec<usize> = args.iter().map(|a| a.parse().expect("numbers")).collect();
    let (&[nodes, services, members, span], Some(changes)) = (&numbers[..], changes) else {
        eprintln!("usage: plan_scale [--daemonset] NODES SERVICES MEMBERS SPAN [--changes N]");
        std::process::exit(2);
    };
    let scale = scale::Scale {
        nodes,
        services,
        members,
        span,
        daemonset,
    };
    let world = scale::world(scale);
    println!("the World alone: RSS {}", status_mib("VmRSS:"));
    let start = Instant::now();
    let mut planner = Planner::new(world, None);
    let full = planner.plan();
    let elapsed = start.elapsed();
    let states = full.nodes.len();
    let peers: usize = full
        .nodes
        .values()
        .flat_map(|n| &n.services)
        .map(|s| s.peers.len())
        .sum();
    println!(
        "full plan: {nodes} nodes, {services} services, {members} members, daemonset {daemonset}: {:.0} ms, {states} node states, {peers} peers, peak RSS {}",
        elapsed.as_secs_f64() * 1e3,
        peak_rss_mib()
    );

    // What goes on the wire to each agent, and what encoding all of it once costs (the
    // first push after a start or a takeover sends every node its state).
    let start = Instant::now();
    let encoded: Vec<usize> = full
        .nodes
        .values()
        .map(|s| s.encode_to_vec().len())
        .collect();
    let encode_ms = start.elapsed().as_secs_f64() * 1e3;
    let total: usize = encoded.iter().sum();
    println!(
        "encoded NodeState: max {:.1} KiB per node, total {:.1} MiB; encoding them all once: {encode_ms:.0} ms",
        encoded.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
        total as f64 / (1024.0 * 1024.0),
    );

    // The engine publishes a clone of every changed state to the hub, which keeps the
    // latest one per node: hold such a copy and see what it adds.
    let mut hub = full.nodes.clone();
    println!(
        "with one more copy of every node state (as the hub holds): peak RSS {}",
        peak_rss_mib()
    );

    if services > 0 {
        let added = (0..changes)
            .map(|i| Change::Pod(scale::pod(scale, i % services, 1_000_000 + i)))
            .collect();
        runs(&mut planner, &mut hub, "one member added", added);
        let removed = (0..changes)
            .map(|i| {
                let pod = scale::pod(scale, i % services, 1_000_000 + i);
                Change::PodDeleted(pod.namespace, pod.name)
            })
            .collect();
        runs(&mut planner, &mut hub, "that member removed", removed);
    }
    if daemonset {
        let ns = scale::DAEMONSET_NAMESPACE;
        // Members on nodes that already carry the mesh: only their node changes.
        let extra = |i: usize| format!("extra-{i}");
        let added = (0..50)
            .map(|i| Change::Pod(scale::daemon_pod(&extra(i), i * 7 % nodes)))
            .collect();
        runs(
            &mut planner,
            &mut hub,
            "daemonset: one member added on a carrying node",
            added,
        );
        let removed = (0..50)
            .map(|i| Change::PodDeleted(ns.into(), extra(i)))
            .collect();
        runs(
            &mut planner,
            &mut hub,
            "daemonset: that member removed",
            removed,
        );
        // A node's only member leaves (its node leaves the mesh, every other node loses
        // a peer), then comes back (every other node gains it): a node drained and
        // rejoining, or a node added to the cluster.
        let left = (0..25)
            .map(|n| Change::PodDeleted(ns.into(), format!("ds-{n}")))
            .collect();
        runs(
            &mut planner,
            &mut hub,
            "daemonset: a node's only member removed",
            left,
        );
        let back = (0..25)
            .map(|n| Change::Pod(scale::daemon_pod(&format!("ds-{n}"), n)))
            .collect();
        runs(
            &mut planner,
            &mut hub,
            "daemonset: a node's only member added",
            back,
        );
    }
    println!("peak RSS at the end: {}", peak_rss_mib());
}
