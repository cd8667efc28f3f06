//! The Kubernetes source's bookkeeping, from watch events.

use serde_json::json;

use super::*;
use crate::plan::Change;
use crate::testing::objects;

fn object(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

fn service(name: &str, cidr: serde_json::Value) -> DynamicObject {
    object(json!({
        "apiVersion": "wireway.dev/v1alpha1", "kind": "NetworkService",
        "metadata": {"name": name, "namespace": "red", "generation": 3},
        "spec": {"cidr": cidr, "nodePrefixLength": 24},
    }))
}

/// Pod `name` of red.
fn pod(name: &str) -> DynamicObject {
    objects::pod("red", name)
}

/// Lists every kind as empty except `kind`, listed with `objects`.
fn synced(kind: Kind, objects: Vec<DynamicObject>) -> (Objects, Vec<Event>) {
    let mut state = Objects::default();
    let mut out = Vec::new();
    for k in Kind::ALL {
        out.extend(state.apply_event(k, watcher::Event::Init));
        if k == kind {
            for o in &objects {
                out.extend(state.apply_event(k, watcher::Event::InitApply(o.clone())));
            }
        }
        out.extend(state.apply_event(k, watcher::Event::InitDone));
    }
    (state, out)
}

#[test]
fn every_kind_is_named_as_the_api_server_names_it() {
    for kind in Kind::ALL {
        let served = resource(kind);
        assert_eq!(
            (served.kind.as_str(), served.api_version.as_str()),
            (kind.name(), kind.api_version())
        );
    }
}

#[test]
fn synced_comes_once_after_every_kind_listed() {
    let mut state = Objects::default();
    let mut synced = 0;
    for k in Kind::ALL {
        state.apply_event(k, watcher::Event::Init);
        let out = state.apply_event(k, watcher::Event::InitDone);
        synced += out.iter().filter(|e| **e == Event::Synced).count();
        if Some(&k) != Kind::ALL.last() {
            assert_eq!(synced, 0, "synced before every kind listed");
        }
    }
    assert_eq!(synced, 1);
    // A re-list after a broken watch does not announce it again.
    state.apply_event(Kind::Pod, watcher::Event::Init);
    assert!(
        !state
            .apply_event(Kind::Pod, watcher::Event::InitDone)
            .contains(&Event::Synced)
    );
}

#[test]
fn a_malformed_object_is_a_problem_and_the_others_proceed() {
    let (mut state, out) = synced(
        Kind::NetworkService,
        vec![
            service("red", json!("10.100.0.0/16")),
            service("broken", json!({"not": "a string"})),
        ],
    );
    let changes: Vec<&Change> = out
        .iter()
        .flat_map(|e| match e {
            Event::Changes(c) => c.iter().collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(changes.len(), 1, "only red: {changes:?}");
    let problems = out
        .iter()
        .find_map(|e| match e {
            Event::Problems(p) => Some(p.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].location, "NetworkService red/broken");
    let object = problems[0].object.clone().unwrap();
    assert_eq!(
        (object.kind, object.generation),
        (Kind::NetworkService, Some(3))
    );
    // The good one breaks later: its last good version stays, and it is reported.
    let out = state.apply_event(
        Kind::NetworkService,
        watcher::Event::Apply(service("red", json!(7))),
    );
    assert!(
        !out.iter().any(|e| matches!(e, Event::Changes(_))),
        "{out:?}"
    );
    assert!(
        matches!(&out[..], [Event::Problems(p)] if p.len() == 2),
        "{out:?}"
    );
    // Mended, and deleted: the problems go.
    state.apply_event(
        Kind::NetworkService,
        watcher::Event::Apply(service("red", json!("10.100.0.0/16"))),
    );
    let out = state.apply_event(
        Kind::NetworkService,
        watcher::Event::Delete(service("broken", json!(1))),
    );
    assert_eq!(out, [Event::Problems(vec![])]);
}

#[test]
fn pods_on_the_host_network_or_finished_are_not_workloads() {
    let mut host_network = pod("host");
    host_network.data["spec"]["hostNetwork"] = json!(true);
    let (mut state, out) = synced(Kind::Pod, vec![pod("a"), host_network]);
    assert_eq!(delivered(&out), [("a".to_owned(), None)]);
    let mut finished = pod("a");
    finished.data["status"] = json!({"phase": "Succeeded"});
    let out = state.apply_event(Kind::Pod, watcher::Event::Apply(finished));
    assert_eq!(
        out,
        [Event::Changes(vec![Change::PodDeleted(
            "red".into(),
            "a".into()
        )])]
    );
}

/// The pods a source delivers, by name, with the namespace path each carries.
fn delivered(out: &[Event]) -> Vec<(String, Option<String>)> {
    out.iter()
        .flat_map(|e| match e {
            Event::Changes(c) => c.clone(),
            _ => Vec::new(),
        })
        .map(|c| match c {
            Change::Pod(p) => (p.name, p.netns),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_static_pods_mirror_is_not_a_workload() {
    // Its kubelet writes it, in any namespace with any labels: the node's word only.
    let mut mirror = pod("static");
    mirror.data["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "x"});
    let (_, out) = synced(Kind::Pod, vec![pod("a"), mirror]);
    assert_eq!(delivered(&out), [("a".to_owned(), None)]);
}

#[test]
fn the_netns_annotation_aimed_at_another_pods_namespace_is_ignored_in_a_cluster() {
    let mut aimed = pod("a");
    aimed.data["metadata"]["annotations"] =
        json!({"wireway.dev/netns": "/run/netns/cni-1234-another-tenant"});
    let (_, out) = synced(Kind::Pod, vec![aimed]);
    assert_eq!(
        delivered(&out),
        [("a".to_owned(), None)],
        "found by UID only"
    );
}

#[test]
fn a_relist_delivers_what_changed_meanwhile() {
    let (mut state, _) = synced(Kind::Pod, vec![pod("a"), pod("b")]);
    state.apply_event(Kind::Pod, watcher::Event::Init);
    state.apply_event(Kind::Pod, watcher::Event::InitApply(pod("a")));
    state.apply_event(Kind::Pod, watcher::Event::InitApply(pod("c")));
    let out = state.apply_event(Kind::Pod, watcher::Event::InitDone);
    let Event::Changes(changes) = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(
        changes.len(),
        2,
        "b deleted, c added, a unchanged: {changes:?}"
    );
    assert!(changes.contains(&Change::PodDeleted("red".into(), "b".into())));
    assert!(
        changes
            .iter()
            .any(|c| matches!(c, Change::Pod(p) if p.name == "c"))
    );
}
