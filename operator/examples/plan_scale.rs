//! Plans a synthetic World once and reports time, peak memory and, for one added member,
//! the incremental time and how many nodes' states changed.
//!
//! `cargo run --release -p wireway-operator --example plan_scale -- 5000 100 100000 50`
//! (nodes, services, members, nodes per service).

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use wireway_operator::plan::{Change, Planner};

#[path = "../benches/scale.rs"]
mod scale;

fn peak_rss_mib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.to_owned())
        })
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or_else(|| "?".into(), |kib| format!("{} MiB", kib / 1024))
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers"))
        .collect();
    let [nodes, services, members, span] = args[..] else {
        eprintln!("usage: plan_scale NODES SERVICES MEMBERS SPAN");
        std::process::exit(2);
    };
    let scale = scale::Scale {
        nodes,
        services,
        members,
        span,
    };
    let world = scale::world(scale);
    let start = Instant::now();
    let mut planner = Planner::new(world, None);
    let full = planner.plan();
    let states = full.nodes.len();
    let peers: usize = full
        .nodes
        .values()
        .flat_map(|n| &n.services)
        .map(|s| s.peers.len())
        .sum();
    println!(
        "full plan: {nodes} nodes, {services} services, {members} members: {:.0} ms, {states} node states, {peers} peers, peak RSS {}",
        start.elapsed().as_secs_f64() * 1e3,
        peak_rss_mib()
    );
    let mut times = Vec::new();
    let mut changed = Vec::new();
    for i in 0..50 {
        let pod = scale::pod(scale, i % services, 1_000_000 + i);
        let start = Instant::now();
        planner.apply(Change::Pod(pod));
        let n = planner.plan().changed_nodes.len();
        times.push(start.elapsed().as_secs_f64() * 1e3);
        changed.push(n);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "one member added (50 runs): p50 {:.2} ms, max {:.2} ms; nodes changed per run: {:?}",
        times[times.len() / 2],
        times[times.len() - 1],
        changed.iter().collect::<std::collections::BTreeSet<_>>()
    );
}
