//! The manifest source from texts: what it accepts, refuses, keeps and delivers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::*;

const SERVICE: &str = "\
apiVersion: wireway.dev/v1alpha1
kind: NetworkService
metadata:
  name: red
  namespace: red
spec:
  cidr: 10.100.0.0/16
  nodePrefixLength: 24
";

const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: red-a
  namespace: red
  labels: {net: red}
  annotations: {wireway.dev/netns: /run/netns/red-a}
spec:
  serviceAccountName: app
  containers: [{name: app, image: busybox}]
";

fn source() -> Manifests {
    Manifests::new(vec![PathBuf::from("/m")]).unwrap()
}

fn texts(files: &[(&str, &str)]) -> BTreeMap<PathBuf, std::io::Result<String>> {
    files
        .iter()
        .map(|(p, t)| (PathBuf::from(p), Ok((*t).to_owned())))
        .collect()
}

fn kinds(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .map(|c| match c {
            Change::Namespace(n) => format!("Namespace {}", n.name),
            Change::Node(n) => format!("Node {}", n.name),
            Change::Pod(p) => format!("Pod {}/{}", p.namespace, p.name),
            Change::NetworkService(s) => format!("NetworkService {}", ObjectKey::of(&s.metadata)),
            Change::Endpoint(e) => format!("Endpoint {}", ObjectKey::of(&e.metadata)),
            Change::Admission(a) => format!("Admission {}", ObjectKey::of(&a.metadata)),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn reads_the_samples_as_a_cluster_would() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let mut source = Manifests::new(vec![root]).unwrap();
    let scan = source.scan();
    assert_eq!(scan.problems, []);
    let changes = kinds(&scan.changes);
    for expected in [
        "Namespace red",
        "Pod red/bridge",
        "Pod other/intruder",
        "NetworkService green/green",
        "Endpoint red/bridge-to-green",
        "Admission green/partner-access",
    ] {
        assert!(
            changes.contains(&expected.to_owned()),
            "{expected} missing from {changes:?}"
        );
    }
    let bridge = source.pods().find(|p| p.name == "bridge").unwrap();
    assert_eq!(bridge.service_account, "bridge");
    assert_eq!(bridge.node, None, "the samples pin no pod");
    assert_eq!(bridge.uid, pod_uid("red", "bridge"));
    // A second scan of unchanged files changes nothing.
    assert_eq!(source.scan().changes, []);
}

/// The samples' external hosts claim identities their namespaces may claim (red's VM its
/// own path, green's partner under the samples' IdentityGrant), so they are admitted.
#[test]
fn the_samples_external_hosts_are_admitted() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let mut source = Manifests::new(vec![root]).unwrap();
    let world = crate::plan::World {
        trust_domain: "cluster.local".into(),
        now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
        nodes: Vec::new(),
        namespaces: Vec::new(),
        pods: Vec::new(),
        network_services: Vec::new(),
        endpoints: Vec::new(),
        admissions: Vec::new(),
        identity_grants: Vec::new(),
        service_cidrs: Vec::new(),
        bounds: crate::plan::Bounds::default(),
        peers: Vec::new(),
    };
    let mut planner = crate::plan::Planner::new(world, None);
    for change in source.scan().changes {
        planner.apply(change);
    }
    let plan = planner.plan();
    for (key, identity) in [
        ("red/backup-vm", "spiffe://cluster.local/ns/red/vm/backup"),
        (
            "green/partner-reporter",
            "spiffe://partner.example/ns/analytics/sa/reporter",
        ),
    ] {
        let (namespace, name) = key.split_once('/').unwrap();
        let status = &plan.endpoints[&ObjectKey::new(namespace, name)];
        let member = status.members.iter().next().unwrap();
        assert_eq!(member.identity, identity);
        assert!(
            member.admitted,
            "{key}: {} {}",
            member.reason, member.message
        );
    }
}

#[test]
fn pods_get_their_node_namespace_and_identity() {
    let binding = "apiVersion: v1\nkind: Binding\nmetadata: {name: red-a, namespace: red}\ntarget: {kind: Node, name: node-b}\n";
    let mut s = source();
    let scan = s.update(texts(&[("/m/a.yaml", POD), ("/m/b.yaml", binding)]));
    assert_eq!(scan.problems, []);
    let pod = s.pods().next().unwrap();
    assert_eq!(
        pod.node.as_deref(),
        Some("node-b"),
        "a Binding places the pod"
    );
    assert_eq!(pod.netns.as_deref(), Some("/run/netns/red-a"));
    assert_eq!(pod.service_account, "app");
    assert_eq!(pod.labels.get("net").map(String::as_str), Some("red"));
    // spec.nodeName wins over a Binding, as the API server would not bind a bound pod.
    let pinned = POD.replace("spec:\n", "spec:\n  nodeName: node-a\n");
    s.update(texts(&[("/m/a.yaml", &pinned), ("/m/b.yaml", binding)]));
    assert_eq!(s.pods().next().unwrap().node.as_deref(), Some("node-a"));
}

#[test]
fn a_broken_file_keeps_its_last_good_content_and_says_where() {
    let mut s = source();
    let first = s.update(texts(&[("/m/red.yaml", SERVICE), ("/m/pod.yaml", POD)]));
    assert_eq!(
        kinds(&first.changes),
        ["Pod red/red-a", "NetworkService red/red"]
    );
    let broken = format!("{SERVICE}---\napiVersion: v1\nkind: Pod\nmetadata: [unclosed\n");
    let scan = s.update(texts(&[("/m/red.yaml", &broken), ("/m/pod.yaml", POD)]));
    assert_eq!(
        scan.changes,
        [],
        "nothing of the broken file changes, nothing is removed"
    );
    assert_eq!(scan.problems.len(), 1);
    let problem = &scan.problems[0];
    assert_eq!(
        (problem.location.as_str(), problem.line),
        ("/m/red.yaml", Some(10))
    );
    assert!(problem.message.contains("invalid YAML"), "{problem}");
    // Another file still changes as usual.
    let relabelled = POD.replace("net: red", "net: blue");
    let scan = s.update(texts(&[
        ("/m/red.yaml", &broken),
        ("/m/pod.yaml", &relabelled),
    ]));
    assert_eq!(kinds(&scan.changes), ["Pod red/red-a"]);
    assert_eq!(scan.problems.len(), 1, "the broken file is still reported");
    // Mended, the file is read again; nothing changed in effect.
    let scan = s.update(texts(&[
        ("/m/red.yaml", SERVICE),
        ("/m/pod.yaml", &relabelled),
    ]));
    assert_eq!((scan.changes, scan.problems), (vec![], vec![]));
}

#[test]
fn objects_a_cluster_refuses_are_refused_with_the_rule() {
    let mut s = source();
    s.update(texts(&[("/m/red.yaml", SERVICE)]));
    // Host bits set: the CEL rule on spec.cidr.
    let host_bits = SERVICE.replace("10.100.0.0/16", "10.100.0.1/16");
    let scan = s.update(texts(&[("/m/red.yaml", &host_bits)]));
    assert_eq!(scan.changes, []);
    assert!(
        scan.problems[0].message.contains("host bits"),
        "{}",
        scan.problems[0]
    );
    assert_eq!(scan.problems[0].line, Some(1));
    // Changing an immutable field: a transition rule, checked against the accepted object.
    let renumbered = SERVICE.replace("10.100.0.0/16", "10.101.0.0/16");
    let scan = s.update(texts(&[("/m/red.yaml", &renumbered)]));
    assert_eq!(scan.changes, []);
    assert!(
        scan.problems[0].message.contains("immutable"),
        "{}",
        scan.problems[0]
    );
    // A new object may have any valid cidr.
    let other = renumbered.replace("name: red\n", "name: blue\n");
    let scan = s.update(texts(&[("/m/red.yaml", SERVICE), ("/m/blue.yaml", &other)]));
    assert_eq!(kinds(&scan.changes), ["NetworkService red/blue"]);
    assert_eq!(scan.problems, []);
}

#[test]
fn unknown_wireway_kinds_and_non_objects_are_problems_other_kinds_are_skipped() {
    let mut s = source();
    let text = "apiVersion: wireway.dev/v1beta9\nkind: NetworkService\nmetadata: {name: x}\n---\n\
                apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\njust: a map\n";
    let scan = s.update(texts(&[("/m/x.yaml", text)]));
    let messages: Vec<&str> = scan.problems.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("is not served"));
    assert!(messages[1].contains("apiVersion and kind are required"));
    assert_eq!(scan.problems[1].line, Some(9));
}

#[test]
fn the_first_of_two_objects_with_one_name_wins() {
    let mut s = source();
    let scan = s.update(texts(&[("/m/a.yaml", SERVICE), ("/m/b.yaml", SERVICE)]));
    assert_eq!(kinds(&scan.changes), ["NetworkService red/red"]);
    assert_eq!(scan.problems.len(), 1);
    assert_eq!(scan.problems[0].location, "/m/b.yaml");
    assert!(
        scan.problems[0]
            .message
            .contains("also defined at /m/a.yaml:1")
    );
}

#[test]
fn removed_files_remove_their_objects_and_nodes_carry_their_keys() {
    let node = "apiVersion: v1\nkind: Node\nmetadata:\n  name: vm-1\n  annotations:\n    wireway.dev/public-key: dHEACKy9pHe/WJDy6Je75HLyxPWUcAOcyVFPe3AIlTg=\nstatus:\n  addresses: [{type: InternalIP, address: 192.0.2.7}]\n";
    let mut s = source();
    let scan = s.update(texts(&[("/m/node.yaml", node), ("/m/red.yaml", SERVICE)]));
    let Some(Change::Node(n)) = scan.changes.first() else {
        panic!("{:?}", scan.changes)
    };
    assert_eq!(n.underlay, Some("192.0.2.7".parse().unwrap()));
    assert!(n.public_key.is_some());
    let scan = s.update(texts(&[("/m/red.yaml", SERVICE)]));
    assert_eq!(scan.changes, [Change::NodeDeleted("vm-1".into())]);
    let scan = s.update(BTreeMap::new());
    assert_eq!(
        scan.changes,
        [Change::NetworkServiceDeleted(ObjectKey::new("red", "red"))]
    );
}

#[test]
fn pod_uids_look_like_kubernetes_uids_and_are_stable() {
    let uid = pod_uid("red", "red-a");
    assert_eq!(uid.len(), 36);
    assert_eq!(uid.matches('-').count(), 4);
    assert_eq!(uid, pod_uid("red", "red-a"));
    assert_ne!(uid, pod_uid("red", "red-b"));
    assert_ne!(pod_uid("a", "bc"), pod_uid("ab", "c"));
}

#[tokio::test]
async fn the_watcher_delivers_a_change_written_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("red.yaml"), SERVICE).unwrap();
    let source = Manifests::new(vec![dir.path().to_owned()]).unwrap();
    let (events, mut received) = mpsc::channel::<Event>(8);
    tokio::spawn(source.watch(events));
    let first = received.recv().await.unwrap();
    assert!(
        matches!(&first, Event::Changes(c) if c.len() == 1),
        "{first:?}"
    );
    assert_eq!(received.recv().await, Some(Event::Problems(vec![])));
    assert_eq!(received.recv().await, Some(Event::Synced));
    // Written the way editors and `kubectl`-like tools do: a new file renamed over.
    std::fs::write(dir.path().join(".pod.tmp"), POD).unwrap();
    std::fs::rename(dir.path().join(".pod.tmp"), dir.path().join("pod.yaml")).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("a change within 5 s");
    assert!(
        matches!(&next, Some(Event::Changes(c)) if kinds(c) == ["Pod red/red-a"]),
        "{next:?}"
    );
}

/// Reading the files wakes nothing; writing one does. (Reading woke the next read: the
/// watchers of the lab read their files every few milliseconds, forever.)
#[tokio::test]
async fn reading_the_files_wakes_no_scan_and_writing_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("red.yaml");
    std::fs::write(&file, SERVICE).unwrap();
    let mut source = Manifests::new(vec![dir.path().to_owned()]).unwrap();
    let (wake, mut woken) = mpsc::unbounded_channel();
    source.watch_roots(wake).unwrap();
    for _ in 0..20 {
        assert_eq!(source.scan().problems, []);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(woken.try_recv().is_err(), "a read woke a scan");
    std::fs::write(&file, POD).unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(5), woken.recv()).await;
    assert_eq!(woke.expect("a write wakes a scan within 5 s"), Some(()));
}

/// A file removed between listing and reading is gone (a scan racing a `node-` once
/// kept the removed pod and warned); a link to nothing is still reported.
#[test]
fn a_link_to_nothing_is_reported_as_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("red.yaml"), SERVICE).unwrap();
    std::os::unix::fs::symlink(dir.path().join("gone.yaml"), dir.path().join("link.yaml")).unwrap();
    let mut source = Manifests::new(vec![dir.path().to_owned()]).unwrap();
    let scan = source.scan();
    assert_eq!(kinds(&scan.changes), ["NetworkService red/red"]);
    let [problem] = scan.problems.as_slice() else {
        panic!("{:?}", scan.problems)
    };
    assert!(
        problem.location.ends_with("link.yaml") && problem.message.starts_with("failed to read"),
        "{problem:?}"
    );
}

/// Files of the documents `DOCUMENTS` names, changing from one update to the next: the
/// source, updated file by file, holds what a fresh source reading the same files holds
/// (objects, pods' nodes from Bindings, conflicts), and each update delivers exactly what
/// changed.
mod incremental {
    use proptest::prelude::*;

    use super::*;

    const DOCUMENTS: [&str; 8] = [
        SERVICE,
        "apiVersion: wireway.dev/v1alpha1\nkind: NetworkService\nmetadata: {name: blue, namespace: blue}\nspec: {cidr: 10.101.0.0/16, nodePrefixLength: 24}\n",
        POD,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: red-a, namespace: red}\nspec: {nodeName: n1, containers: [{name: app, image: busybox}]}\n",
        "apiVersion: v1\nkind: Binding\nmetadata: {name: red-a, namespace: red}\ntarget: {kind: Node, name: n2}\n",
        "apiVersion: v1\nkind: Binding\nmetadata: {name: red-a, namespace: red}\ntarget: {kind: Node, name: n3}\n",
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: red}\n",
    ];

    /// A few contents (each the documents it holds, in order), so that a file often
    /// returns to a content it had, or another file had.
    fn contents() -> impl Strategy<Value = Vec<Vec<usize>>> {
        proptest::collection::vec(proptest::collection::vec(0..DOCUMENTS.len(), 0..4), 3)
    }

    /// Per step and file (a, b, c): absent, or which of the contents it holds.
    fn steps() -> impl Strategy<Value = Vec<Vec<Option<usize>>>> {
        proptest::collection::vec(
            proptest::collection::vec(proptest::option::of(0..3usize), 3),
            1..8,
        )
    }

    fn texts_of(
        contents: &[Vec<usize>],
        files: &[Option<usize>],
    ) -> BTreeMap<PathBuf, std::io::Result<String>> {
        files
            .iter()
            .zip(["/m/a.yaml", "/m/b.yaml", "/m/c.yaml"])
            .filter_map(|(content, path)| {
                let docs = &contents[(*content)?];
                let text: Vec<&str> = docs.iter().map(|d| DOCUMENTS[*d]).collect();
                Some((PathBuf::from(path), Ok(text.join("---\n"))))
            })
            .collect()
    }

    proptest! {
        // Each case makes a fresh source per step, its schemas compiled anew: few cases.
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn an_update_holds_and_delivers_what_reading_afresh_would(
            contents in contents(),
            steps in steps(),
        ) {
            let mut s = source();
            for files in steps {
                let before = s.world.clone();
                let scan = s.update(texts_of(&contents, &files));
                let mut fresh = source();
                let fresh_scan = fresh.update(texts_of(&contents, &files));
                prop_assert_eq!(&s.world, &fresh.world);
                prop_assert_eq!(&scan.problems, &fresh_scan.problems);
                prop_assert_eq!(scan.changes, diff(&before, &s.world));
            }
        }
    }
}
