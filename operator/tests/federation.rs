//! Two operator processes, one per cluster, federating over mutual TLS on loopback: each
//! cluster's nodes get the other's admitted members as WireGuard peers, a cut link keeps
//! them, and deleting the PeerCluster removes them. (Real packets between clusters are the
//! lab's: `cli/tests/lab.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by panicking

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use wireway_operator::engine::store::Store;
use wireway_runtime::pki::{self, Subject};

const OPERATOR: &str = env!("CARGO_BIN_EXE_wireway-operator");

/// A port free right now on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn key(n: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([n; 32])
}

/// One cluster: its CA and operator certificate, and its manifests.
struct Cluster {
    name: &'static str,
    trust_domain: &'static str,
    dir: PathBuf,
    federation: u16,
}

impl Cluster {
    fn new(root: &Path, name: &'static str, trust_domain: &'static str) -> Self {
        let dir = root.join(name);
        pki::create_ca_in(&dir.join("ca"), trust_domain).unwrap();
        pki::issue_into(
            &dir.join("ca"),
            &dir.join("tls"),
            trust_domain,
            &Subject::Operator(vec!["localhost".into()]),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("manifests")).unwrap();
        Self {
            name,
            trust_domain,
            dir,
            federation: free_port(),
        }
    }

    fn ca(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca/ca.crt")).unwrap()
    }

    /// red/red with this cluster's slice, one node carrying one member, an Admission of
    /// the peer's trust domain, and a PeerCluster for the peer.
    fn write(&self, slice: &str, n: u8, peer: &Cluster, peer_slice: &str) {
        let manifests = format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: red}}
---
apiVersion: v1
kind: Node
metadata:
  name: {name}-node
  annotations:
    wireway.dev/public-key: "{key}"
    wireway.dev/underlay-address: 127.0.0.{n}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: red, labels: {{net: red}}}}
spec:
  nodeName: {name}-node
  containers: [{{name: app, image: busybox}}]
---
apiVersion: wireway.dev/v1alpha1
kind: NetworkService
metadata: {{name: red, namespace: red}}
spec: {{cidr: 10.100.0.0/16, clusterPrefix: {slice}, nodePrefixLength: 24}}
---
apiVersion: wireway.dev/v1alpha1
kind: Endpoint
metadata: {{name: members, namespace: red}}
spec:
  networkService: {{name: red}}
  podSelector: {{matchLabels: {{net: red}}}}
---
apiVersion: wireway.dev/v1alpha1
kind: Admission
metadata: {{name: admit-peer, namespace: red}}
spec:
  networkService: red
  allow: [{{trustDomain: {peer_td}}}]
"#,
            name = self.name,
            key = key(n),
            peer_td = peer.trust_domain,
        );
        std::fs::write(self.dir.join("manifests/red.yaml"), manifests).unwrap();
        let bundle: String = peer.ca().lines().map(|l| format!("    {l}\n")).collect();
        let peer_cluster = format!(
            r#"apiVersion: wireway.dev/v1alpha1
kind: PeerCluster
metadata: {{name: {peer}}}
spec:
  trustDomain: {peer_td}
  address: 127.0.0.1:{port}
  trustBundle: |
{bundle}  services:
    - {{namespace: red, name: red, prefix: {peer_slice}}}
"#,
            peer = peer.name,
            peer_td = peer.trust_domain,
            port = peer.federation,
        );
        std::fs::write(self.dir.join("manifests/peer.yaml"), peer_cluster).unwrap();
    }

    fn start(&self) -> Child {
        let tls = self.dir.join("tls");
        Command::new(OPERATOR)
            .arg("--manifests")
            .arg(self.dir.join("manifests"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(["--trust-domain", self.trust_domain, "--agent-grace", "0"])
            .args([
                "--listen-grpc",
                "127.0.0.1:0",
                "--listen-http",
                "127.0.0.1:0",
            ])
            .arg("--federation-listen")
            .arg(format!("127.0.0.1:{}", self.federation))
            .arg("--tls-ca")
            .arg(tls.join("ca.crt"))
            .arg("--tls-cert")
            .arg(tls.join("tls.crt"))
            .arg("--tls-key")
            .arg(tls.join("tls.key"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// What the operator last stored.
    fn stored(&self) -> serde_json::Value {
        Store::read(&self.dir.join("state"))
            .ok()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or_default()
    }

    /// The remote peers of red/red on this cluster's node: (name, allowed IPs).
    fn remote_peers(&self) -> Vec<(String, Vec<String>)> {
        let stored = self.stored();
        let node = &stored["nodeStates"][format!("{}-node", self.name)];
        node["services"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["peers"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| {
                let name = p["name"].as_str()?.to_owned();
                let allowed = p["allowedIps"]
                    .as_array()?
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect();
                name.starts_with("peer:").then_some((name, allowed))
            })
            .collect()
    }

    /// red/red's status entry for the peer.
    fn peer_status(&self, peer: &str) -> serde_json::Value {
        let stored = self.stored();
        stored["networkServices"]["red/red"]["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["cluster"] == peer)
            .cloned()
            .unwrap_or_default()
    }
}

/// Waits up to 30 s for `done`; returns how long it took.
fn wait(what: &str, done: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {what} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_clusters_federate_keep_their_peers_through_a_cut_and_drop_them_when_unpeered() {
    let root = tempfile::tempdir().unwrap();
    let a = Cluster::new(root.path(), "a", "a.example");
    let b = Cluster::new(root.path(), "b", "b.example");
    a.write("10.100.0.0/17", 1, &b, "10.100.128.0/17");
    b.write("10.100.128.0/17", 2, &a, "10.100.0.0/17");
    let _a = Killed(a.start());
    let mut b_process = Killed(b.start());

    let b_web = (
        "peer:b/b-node".to_owned(),
        vec!["10.100.128.1/32".to_owned()],
    );
    let a_web = ("peer:a/a-node".to_owned(), vec!["10.100.0.1/32".to_owned()]);
    wait("B's member on A's node", || {
        a.remote_peers() == [b_web.clone()]
    });
    wait("A's member on B's node", || {
        b.remote_peers() == [a_web.clone()]
    });
    let status = a.peer_status("b");
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["membersAdmitted"], 1, "{status}");

    // B's operator dies: A keeps B's members, and says B is away.
    let _ = b_process.0.kill();
    let _ = b_process.0.wait();
    wait("A to see B disconnected", || {
        a.peer_status("b")["connected"] == false
    });
    assert_eq!(a.remote_peers(), [b_web], "a lost link removes nothing");

    // B back; then A unpeers B: B's members leave A's node.
    b_process = Killed(b.start());
    wait("B connected again", || {
        a.peer_status("b")["connected"] == true
    });
    std::fs::remove_file(a.dir.join("manifests/peer.yaml")).unwrap();
    let took = wait("B's members gone from A's node", || {
        a.remote_peers().is_empty()
    });
    assert!(a.peer_status("b").is_null(), "red/red no longer lists B");
    eprintln!("B's members left A's node {took:?} after its PeerCluster was deleted");
    drop(b_process);
}

/// A peer cluster's operator that sends what it likes: a member of another trust domain,
/// one outside its slice, one denied by the service's Admission, and one that is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_hostile_peer_claims_outside_its_trust_domain_or_slice_is_refused_and_installed_nowhere()
 {
    use std::collections::BTreeMap;
    use wireway_operator::federation::{Federation, PeerSpec, tls::OwnIdentity, tls::PeerIdentity};
    use wireway_operator::plan::{Half, HalfMember, HalfNode, ObjectKey};

    let root = tempfile::tempdir().unwrap();
    let a = Cluster::new(root.path(), "a", "a.example");
    let b = Cluster::new(root.path(), "b", "b.example");
    a.write("10.100.0.0/17", 1, &b, "10.100.128.0/17");
    let _a = Killed(a.start());

    // B is no operator process here but the federation library, sending a crafted half.
    let (sent, _received) = tokio::sync::mpsc::channel(64);
    let own = OwnIdentity {
        cert: std::fs::read_to_string(b.dir.join("tls/tls.crt")).unwrap(),
        key: std::fs::read_to_string(b.dir.join("tls/tls.key")).unwrap(),
    };
    let rogue = Federation::new(own, false, sent);
    let red = ObjectKey::new("red", "red");
    rogue.set_peers(vec![PeerSpec {
        identity: PeerIdentity {
            name: "a".into(),
            identity: "spiffe://a.example/wireway/operator".into(),
            bundle: a.ca(),
        },
        address: format!("127.0.0.1:{}", a.federation),
        shared: [red.clone()].into(),
    }]);
    let member = |name: &str, identity: &str, address: &str| HalfMember {
        name: format!("red/{name}"),
        identity: identity.into(),
        address: address.into(),
        node: "b-node".into(),
    };
    let half = Half {
        cidr: "10.100.0.0/16".into(),
        nodes: vec![HalfNode {
            name: "b-node".into(),
            public_key: key(2),
            endpoint: Some("127.0.0.2:52000".into()),
            prefix: "10.100.128.0/24".into(),
        }],
        members: vec![
            member("fine", "spiffe://b.example/ns/red/sa/web", "10.100.128.1"),
            member(
                "impostor",
                "spiffe://a.example/ns/red/sa/web",
                "10.100.128.2",
            ),
            member(
                "squatter",
                "spiffe://b.example/ns/red/sa/web",
                "10.100.0.77",
            ),
        ],
        decisions: Vec::new(),
    };
    rogue.set_outgoing(BTreeMap::from([(
        "a".to_owned(),
        BTreeMap::from([(red, half)]),
    )]));
    tokio::spawn(rogue.clone().dial());

    let fine = (
        "peer:b/b-node".to_owned(),
        vec!["10.100.128.1/32".to_owned()],
    );
    tokio::task::spawn_blocking(move || {
        wait("the fine member on A's node", || {
            a.remote_peers() == [fine.clone()]
        });
        let status = a.peer_status("b");
        assert_eq!(status["membersAdmitted"], 1, "{status}");
        assert_eq!(status["membersRefused"], 2, "{status}");
        let message = status["message"].as_str().unwrap_or_default();
        assert!(message.contains("OutsideTrustDomain"), "{message}");
        assert!(message.contains("OutsideSlice"), "{message}");
    })
    .await
    .unwrap();
}
