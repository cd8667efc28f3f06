//! The agent's pass on a fake kernel, without root: what it applies, how peer changes
//! reach the device, what a failure stops (nothing else) and what the pass reports.

use std::collections::BTreeSet;

use super::*;
use crate::converge::{Peer, Route};
use crate::dataplane::fake::{Call, FakeKernel};
use crate::testing::*;

/// Operations that netlink writes (WireGuard configuration, forwarding sysctls and nftables
/// are not counted).
fn netlink_writes(ops: &[Op]) -> u64 {
    let counted = ops.iter().filter(|op| {
        !matches!(
            op,
            Op::SetListenPort { .. }
                | Op::SetPeer { .. }
                | Op::RemovePeer { .. }
                | Op::EnableForwarding(_)
                | Op::ReplaceFirewall { .. }
                | Op::SetFirewallSources { .. }
                | Op::DeleteFirewall
        )
    });
    counted.count() as u64
}

/// An agent on a fake kernel that has applied red and green (with the pods' directory).
async fn red_and_green() -> (tempfile::TempDir, FakeKernel, Agent<FakeKernel>) {
    let dir = tempfile::tempdir().unwrap();
    let kernel = FakeKernel::default();
    let agent = Agent::new(kernel.clone(), pods_in(dir.path(), &PODS).unwrap());
    agent
        .converge(&node("node-1").with(red()).with(green()))
        .await
        .unwrap();
    (dir, kernel, agent)
}

#[tokio::test]
async fn a_pass_applies_what_differs_and_a_second_pass_in_sync_does_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = FakeKernel::default();
    let agent = Agent::new(kernel.clone(), pods_in(dir.path(), &PODS).unwrap());
    let state = node("node-1").with(red()).with(green());

    let first = agent.converge(&state).await.unwrap();
    assert!(!first.ops.is_empty());
    assert!(first.apply_errors.is_empty(), "{:?}", first.problems());
    assert_eq!(first.problems(), Vec::<String>::new());
    assert_eq!(first.writes, netlink_writes(&first.ops));
    let held = kernel.held();
    assert_eq!(
        held.wireguard.keys().collect::<Vec<_>>(),
        ["ww-green", "ww-red"]
    );
    assert_eq!(held.wireguard["ww-red"].peers.len(), 3);
    assert_eq!(held.members.len(), 3);

    kernel.clear_calls();
    let second = agent.converge(&state).await.unwrap();
    assert_eq!(second.ops, []);
    assert_eq!(second.writes, 0);
    assert_eq!(second.problems(), Vec::<String>::new());
    assert_eq!(
        kernel.calls(),
        [Call::Observe],
        "in sync: read, write nothing"
    );
    assert_eq!(kernel.held(), held);
}

#[tokio::test]
async fn peer_changes_of_one_interface_go_to_the_device_as_one_transaction() {
    let (_dir, kernel, agent) = red_and_green().await;
    let transactions: Vec<(String, usize)> = kernel
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Call::ConfigurePeers { interface, changes } => Some((interface, changes.len())),
            Call::Apply(op) => {
                assert!(
                    !matches!(op, Op::SetPeer { .. } | Op::RemovePeer { .. }),
                    "a peer set alone: {op}"
                );
                None
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        transactions,
        [("ww-green".to_owned(), 2), ("ww-red".to_owned(), 3)]
    );

    // One peer goes, one moves, one stays: one transaction of the two changes.
    let mut changed = red();
    changed.peers.remove(1);
    changed.peers[0].endpoint = "192.168.77.22:51821".into();
    kernel.clear_calls();
    let pass = agent
        .converge(&node("node-1").version(2).with(changed).with(green()))
        .await
        .unwrap();
    assert!(pass.apply_errors.is_empty(), "{:?}", pass.problems());
    let moved = Peer {
        endpoint: Some("192.168.77.22:51821".into()),
        allowed_ips: BTreeSet::from(["10.100.1.0/24".parse().unwrap()]),
        persistent_keepalive: 0,
    };
    assert_eq!(
        kernel.calls(),
        [
            Call::Observe,
            Call::ConfigurePeers {
                interface: "ww-red".into(),
                changes: vec![(test_key(3), None), (test_key(2), Some(moved))],
            },
        ]
    );
    assert_eq!(pass.writes, 0, "peers are WireGuard's, not netlink's");
}

/// A pass over the peers alone reads nothing: it sends the devices the peers that differ
/// from what the last pass left, as a full pass would; a device that refuses them (here:
/// gone) makes it a full pass, which makes the device again.
#[tokio::test]
async fn a_peers_only_pass_sends_what_differs_from_the_last_pass_and_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = FakeKernel::default();
    let agent = Agent::new(kernel.clone(), pods_in(dir.path(), &PODS).unwrap());
    let first = agent
        .converge(&node("node-1").with(red()).with(green()))
        .await
        .unwrap();
    assert!(first.clean(), "{:?}", first.problems());
    let mut changed = red();
    changed.peers.remove(1);
    let state = node("node-1").version(2).with(changed).with(green());
    kernel.clear_calls();
    let pass = agent.converge_peers(&state, &first.desired).await.unwrap();
    assert!(pass.clean(), "{:?}", pass.problems());
    assert_eq!(
        kernel.calls(),
        [Call::ConfigurePeers {
            interface: "ww-red".into(),
            changes: vec![(test_key(3), None)],
        }]
    );
    // What a full pass finds then: nothing to do.
    assert_eq!(agent.converge(&state).await.unwrap().ops, []);

    // The device is gone (its process died): refused, then a full pass makes it again.
    let fresh = FakeKernel::default();
    let agent = Agent::new(fresh.clone(), pods_in(dir.path(), &PODS).unwrap());
    let pass = agent.converge_peers(&state, &first.desired).await.unwrap();
    assert!(pass.clean(), "{:?}", pass.problems());
    assert!(fresh.calls().contains(&Call::Observe));
    assert!(
        pass.ops
            .iter()
            .any(|op| matches!(op, Op::CreateWireGuard { .. }))
    );
    assert_eq!(agent.converge(&state).await.unwrap().ops, []);
}

#[tokio::test]
async fn a_failed_operation_does_not_stop_the_rest_and_is_reported_with_its_category() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = FakeKernel::default();
    // red-c's pod (0d) has no namespace yet.
    let agent = Agent::new(kernel.clone(), pods_in(dir.path(), &PODS).unwrap());
    let red = red().member(
        member("red/red-c")
            .in_pod("0d")
            .host_side("wwv0000000d")
            .at("10.100.0.3"),
    );
    let state = node("node-1").with(red).with(green());
    let route_b = Op::AddRoute(Route {
        table: 0x5757_0000 + 51821,
        destination: "10.100.0.2/32".parse().unwrap(),
        device: "wwv0000000b".into(),
    });
    let vm = Op::SetPeer {
        interface: "ww-red".into(),
        public_key: test_key(9),
        peer: Peer {
            endpoint: None,
            allowed_ips: BTreeSet::from(["10.100.255.9/32".parse().unwrap()]),
            persistent_keepalive: 0,
        },
        replace_allowed_ips: false,
    };
    kernel.refuse(route_b.clone());
    kernel.refuse(vm.clone());

    let pass = agent.converge(&state).await.unwrap();
    let categories: Vec<&str> = pass.apply_errors.iter().map(ApplyError::category).collect();
    assert_eq!(categories, ["wireguard", "netlink"]);
    let problems = pass.problems();
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert_eq!(
        problems[0],
        "service red/red: member red/red-c: its network namespace was not found (yet)"
    );
    assert!(
        problems[1].starts_with("failed to configure 3 peers of ww-red: "),
        "{}",
        problems[1]
    );
    assert!(
        problems[2].starts_with(&format!("failed to {route_b}: ")),
        "{}",
        problems[2]
    );
    // Everything else went ahead: green whole, red's links, rules and other routes.
    assert_eq!(pass.writes, netlink_writes(&pass.ops) - 1);
    let held = kernel.held();
    assert!(held.wireguard["ww-red"].peers.is_empty());
    assert_eq!(held.wireguard["ww-green"].peers.len(), 2);
    assert_eq!(held.members.len(), 3);
    assert_eq!(held.routes.len(), 4 + 2 - 1);

    // Only what failed is tried again; once the kernel takes it, the node is in sync.
    let retry = agent.converge(&state).await.unwrap();
    assert_eq!(
        retry.ops.len(),
        4,
        "three peers and a route: {:#?}",
        retry.ops
    );
    assert!(retry.ops.contains(&route_b) && retry.ops.contains(&vm));
    assert_eq!(retry.apply_errors.len(), 2);
    kernel.accept_all();
    let healed = agent.converge(&state).await.unwrap();
    assert_eq!(healed.ops, retry.ops);
    assert!(healed.apply_errors.is_empty(), "{:?}", healed.problems());
    assert_eq!(healed.problems().len(), 1, "red-c still has no namespace");
    assert_eq!(agent.converge(&state).await.unwrap().ops, []);
}

#[test]
fn a_key_file_that_holds_no_key_is_set_aside_and_a_new_key_made() {
    // Empty, cut short, not base64.
    for bad in ["", "dHEACKy9pHe/WJDy6Je7", "not a key at all"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("private.key"), bad).unwrap();
        let state = StateDir(dir.path().to_owned());
        let key = state.private_key().unwrap();
        assert!(wireguard::public_key(&key).is_ok(), "{bad:?}");
        assert_eq!(state.private_key().unwrap(), key, "the new key is kept");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("private.key.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{bad:?}");
        assert_eq!(std::fs::read_to_string(&aside[0]).unwrap(), bad);
    }
}
