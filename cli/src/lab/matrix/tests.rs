//! The expected matrix from statuses, and how differences read.

use serde_json::json;
use wireway_crds::Endpoint;

use super::*;

/// An Endpoint `ns/name` of `service` with members (workload, node, admitted, address).
fn endpoint(
    ns: &str,
    name: &str,
    service: &str,
    members: &[(&str, Option<&str>, bool, Option<&str>)],
) -> Endpoint {
    let (service_ns, service_name) = service.split_once('/').unwrap();
    let members: Vec<_> = members
        .iter()
        .map(|(workload, node, admitted, address)| {
            json!({
                "workload": workload,
                "node": node,
                "identity": format!("spiffe://cluster.local/ns/{ns}/sa/default"),
                "admitted": admitted,
                "reason": if *admitted { "Admitted" } else { "NotAdmitted" },
                "message": if *admitted { "same namespace as the service" } else { "no Admission allows it" },
                "address": address,
            })
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "wireway.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"networkService": {"name": service_name, "namespace": service_ns}, "podSelector": {}},
        "status": {"members": members},
    }))
    .unwrap()
}

fn snapshot() -> Snapshot {
    Snapshot {
        endpoints: vec![
            endpoint(
                "red",
                "members",
                "red/red",
                &[
                    ("a", Some("n1"), true, Some("10.100.0.1")),
                    ("bridge", Some("n2"), true, Some("10.100.1.1")),
                ],
            ),
            endpoint(
                "red",
                "to-green",
                "green/green",
                &[("bridge", Some("n2"), true, Some("10.200.1.1"))],
            ),
            endpoint(
                "green",
                "members",
                "green/green",
                &[("g", Some("n1"), true, Some("10.200.0.1"))],
            ),
            endpoint(
                "other",
                "join",
                "red/red",
                &[("intruder", Some("n1"), false, None)],
            ),
            endpoint(
                "red",
                "vm",
                "red/red",
                &[("vm", None, true, Some("10.100.255.1"))],
            ),
        ],
        ..Snapshot::default()
    }
}

fn workloads() -> BTreeSet<String> {
    [
        "red/a",
        "red/bridge",
        "green/g",
        "other/intruder",
        "other/loner",
    ]
    .map(str::to_owned)
    .into()
}

fn cell(e: &Expectation, from: &str, to: &str, service: &str) -> Option<bool> {
    let r = e.rows.iter().position(|x| x == from).unwrap();
    let c = e
        .columns
        .iter()
        .position(|x| x.workload == to && x.service == service)
        .unwrap();
    e.expected[r][c]
}

#[test]
fn members_of_a_service_reach_each_other_and_nothing_else() {
    let e = expect(&workloads(), &snapshot());
    assert_eq!(e.rows.len(), 5);
    assert_eq!(
        e.columns.len(),
        4,
        "only admitted lab workloads with an address: {:?}",
        e.columns
    );
    assert_eq!(cell(&e, "red/a", "red/bridge", "red/red"), Some(true));
    assert_eq!(cell(&e, "red/bridge", "green/g", "green/green"), Some(true));
    assert_eq!(cell(&e, "green/g", "red/bridge", "green/green"), Some(true));
    assert_eq!(
        cell(&e, "green/g", "red/bridge", "red/red"),
        Some(false),
        "across services"
    );
    assert_eq!(cell(&e, "red/a", "green/g", "green/green"), Some(false));
    assert_eq!(
        cell(&e, "other/intruder", "red/a", "red/red"),
        Some(false),
        "not admitted"
    );
    assert_eq!(
        cell(&e, "other/loner", "red/a", "red/red"),
        Some(false),
        "in no service"
    );
    assert_eq!(
        cell(&e, "red/bridge", "red/bridge", "red/red"),
        None,
        "its own address"
    );
    assert_eq!(
        e.not_admitted,
        ["other/intruder is not in red/red: NotAdmitted (no Admission allows it)"]
    );
    assert_eq!(e.externals.len(), 1);
    assert_eq!(e.externals[0].endpoint, "red/vm");
}

#[test]
fn differences_are_named_cell_by_cell() {
    let expectation = expect(&workloads(), &snapshot());
    let mut reached: Vec<Vec<Option<bool>>> = expectation.expected.clone();
    let r = expectation
        .rows
        .iter()
        .position(|x| x == "other/loner")
        .unwrap();
    reached[r][0] = Some(true);
    let matrix = Matrix {
        expectation,
        reached,
    };
    let differences = matrix.differences();
    assert_eq!(differences.len(), 1);
    assert_eq!(differences[0].0, "other/loner");
    assert!(differences[0].2);
    let text = render_matrix(&matrix);
    assert!(text.contains("YES (expected -)"), "{text}");
    assert!(text.contains("1 pairs differ from the plan"), "{text}");
    assert!(text.contains("reached, must not be"), "{text}");
    let same = Matrix {
        reached: matrix.expectation.expected.clone(),
        ..matrix
    };
    assert!(same.as_expected());
    assert!(render_matrix(&same).contains("As planned: 4 of 16 pairs reach each other"));
}

/// One member of red/red with the other clusters' decisions on it: (cluster, admitted).
fn federated(workload: &str, address: &str, peers: &[(&str, bool)]) -> Snapshot {
    let peers: Vec<_> = peers
        .iter()
        .map(|(cluster, admitted)| {
            json!({"cluster": cluster, "admitted": admitted, "reason": if *admitted { "Admitted" } else { "Denied" }, "message": "m"})
        })
        .collect();
    let endpoint = serde_json::from_value(json!({
        "apiVersion": "wireway.dev/v1alpha1",
        "kind": "Endpoint",
        "metadata": {"name": "members", "namespace": "red"},
        "spec": {"networkService": {"name": "red"}, "podSelector": {}},
        "status": {"members": [{
            "workload": workload, "node": "n1", "identity": "spiffe://x/ns/red/sa/default",
            "admitted": true, "reason": "Admitted", "message": "m", "address": address,
            "peers": peers,
        }]},
    }))
    .unwrap();
    Snapshot {
        endpoints: vec![endpoint],
        ..Snapshot::default()
    }
}

#[test]
fn across_clusters_a_pair_reaches_only_when_each_cluster_admits_the_other_member() {
    // east admits west's w; west admits east's e; partner's p is admitted by east but
    // denies... nothing: west refuses p.
    let east = federated("e", "10.100.0.1", &[("west", true), ("partner", true)]);
    let west = federated("w", "10.100.64.1", &[("east", true), ("partner", true)]);
    let partner = federated("p", "10.100.128.1", &[("east", true), ("west", false)]);
    let pods = |p: &str| BTreeSet::from([format!("red/{p}")]);
    let (e, w, p) = (pods("e"), pods("w"), pods("p"));
    let view = |name, workloads, snapshot| ClusterView {
        name: Some(name),
        workloads,
        snapshot,
    };
    let expectation = expect_clusters(&[
        view("east", &e, &east),
        view("west", &w, &west),
        view("partner", &p, &partner),
    ]);
    let expected = |from: &str, to: &str| {
        let r = expectation.rows.iter().position(|x| x == from).unwrap();
        let c = expectation
            .columns
            .iter()
            .position(|x| x.workload == to)
            .unwrap();
        expectation.expected[r][c]
    };
    assert_eq!(expected("east:red/e", "west:red/w"), Some(true));
    assert_eq!(expected("west:red/w", "east:red/e"), Some(true));
    assert_eq!(expected("east:red/e", "partner:red/p"), Some(true));
    // West refuses p: neither direction, though partner admits w.
    assert_eq!(expected("partner:red/p", "west:red/w"), Some(false));
    assert_eq!(expected("west:red/w", "partner:red/p"), Some(false));
    assert_eq!(expected("east:red/e", "east:red/e"), None);
}
