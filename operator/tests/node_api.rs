//! The node API and the status API over real gRPC and real mutual TLS, on TCP and on a
//! Unix socket: an agent gets its node's state only when its certificate proves that
//! node, and only an administrator's certificate reads the status.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by panicking

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use wireway_operator::engine::{Config, Engine, Hub, Input, Leadership};
use wireway_operator::metrics::Metrics;
use wireway_operator::plan::{Change, Node, Pod};
use wireway_operator::serve::{
    Auth, NodeApiServer, NodeApiService, REPORT_BURST, REPORTS_PER_SECOND, StatusApiServer,
    StatusApiService,
};
use wireway_operator::snapshot::Snapshot;
use wireway_operator::source::{self, manifests::Manifests};
use wireway_operator::testing::manifests::{RED, pod};
use wireway_operator::testing::{KEY_A, hello};
use wireway_proto::AgentReport;
use wireway_proto::node_api_client::NodeApiClient;
use wireway_proto::status::GetStatusRequest;
use wireway_proto::status::status_api_client::StatusApiClient;
use wireway_runtime::http::Readiness;
use wireway_runtime::listen::{Address, Listener, grpc_channel, serve_grpc};
use wireway_runtime::pki::{self, Subject};
use wireway_runtime::tls::{OPERATOR_SERVER_NAME, Pem, TlsArgs};

/// A CA and certificates for the operator, two nodes and an administrator, in `dir`.
fn certificates(dir: &Path) -> impl Fn(&str) -> Pem {
    let ca = dir.join("ca");
    pki::create_ca_in(&ca, "cluster.local").unwrap();
    let names = vec![OPERATOR_SERVER_NAME.to_owned()];
    pki::issue_into(
        &ca,
        &dir.join("operator"),
        "cluster.local",
        &Subject::Operator(names),
    )
    .unwrap();
    for node in ["node-a", "node-b"] {
        pki::issue_into(
            &ca,
            &dir.join(node),
            "cluster.local",
            &Subject::Node(node.into()),
        )
        .unwrap();
    }
    pki::issue_into(&ca, &dir.join("admin"), "cluster.local", &Subject::Admin).unwrap();
    let dir = dir.to_owned();
    move |who: &str| {
        let files = dir.join(who);
        TlsArgs {
            ca: files.join("ca.crt"),
            cert: files.join("tls.crt"),
            key: files.join("tls.key"),
            insecure_plaintext: false,
        }
        .load()
        .unwrap()
        .unwrap()
    }
}

/// An operator (engine, node API and status API) serving red, with a pod on node-a and
/// one on node-b, on `address`; and where its engine takes inputs.
async fn operator(address: &Address, tls: Pem) -> (Address, Arc<Hub>, mpsc::Sender<Input>) {
    let hub = Arc::new(Hub::default());
    let (metrics, _) = Metrics::new();
    let config = Config {
        trust_domain: "cluster.local".into(),
        state_dir: None,
        agent_grace: Duration::ZERO,
        kubernetes: false,
        bounds: Default::default(),
    };
    let engine = Engine::new(
        config,
        hub.clone(),
        metrics.clone(),
        Readiness::new("starting"),
    )
    .unwrap();
    let (inputs, received) = mpsc::channel(64);
    tokio::spawn(engine.run(received));
    let mut source = Manifests::new(vec![PathBuf::from("/m")]).unwrap();
    let manifests = [
        RED.to_owned(),
        pod("red-a", "node-a"),
        pod("red-b", "node-b"),
    ]
    .join("---\n");
    let scan = source.update([(PathBuf::from("/m/red.yaml"), Ok(manifests))].into());
    inputs
        .send(Input::Source(source::Event::Changes(scan.changes)))
        .await
        .unwrap();
    inputs
        .send(Input::Source(source::Event::Synced))
        .await
        .unwrap();
    let auth = Auth::MutualTls {
        trust_domain: "cluster.local".into(),
    };
    let status = StatusApiService::new(hub.clone(), auth.clone(), metrics.clone());
    let service = NodeApiService::new(hub.clone(), inputs.clone(), auth, metrics);
    let listener = address.bind().await.unwrap();
    let bound = match &listener {
        Listener::Tcp(tcp) => Address::Tcp(tcp.local_addr().unwrap()),
        Listener::Unix(_) => address.clone(),
    };
    let router = tonic::transport::Server::builder()
        .tls_config(tls.server(true))
        .unwrap()
        .add_service(NodeApiServer::new(service))
        .add_service(StatusApiServer::new(status));
    tokio::spawn(serve_grpc(router, listener, std::future::pending()));
    (bound, hub, inputs)
}

async fn channel(address: &Address, tls: Option<Pem>) -> Result<tonic::transport::Channel, String> {
    let tls = tls.map(|pem| pem.client(OPERATOR_SERVER_NAME));
    grpc_channel(&address.to_string(), tls, |e| {
        e.connect_timeout(Duration::from_secs(5))
    })
    .await
    .map_err(|e| format!("{e:?}"))
}

async fn client(
    address: &Address,
    tls: Option<Pem>,
) -> Result<NodeApiClient<tonic::transport::Channel>, String> {
    Ok(NodeApiClient::new(channel(address, tls).await?))
}

/// Asks for the status with `tls`'s certificate (or without TLS).
async fn status(address: &Address, tls: Option<Pem>) -> Result<Snapshot, String> {
    let mut client = StatusApiClient::new(channel(address, tls).await?);
    let response = client
        .get(GetStatusRequest {})
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(serde_json::from_slice(&response.into_inner().snapshot_json).unwrap())
}

async fn scenario(listen: Address) {
    let dir = tempfile::tempdir().unwrap();
    let pem = certificates(dir.path());
    let (address, hub, _) = operator(&listen, pem("operator")).await;

    // node-a's agent, proving node-a: its state, with node-b's member routed to node-b.
    let mut a = client(&address, Some(pem("node-a"))).await.unwrap();
    let mut stream = a.watch(hello("node-a")).await.unwrap().into_inner();
    let state = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a state within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(state.node, "node-a");
    assert!(state.version >= 1);
    assert_eq!(state.services[0].members[0].id, "red/red-a");

    // It reports; the operator shows what it applied.
    a.report(AgentReport {
        node: "node-a".into(),
        applied_version: state.version,
        ..AgentReport::default()
    })
    .await
    .unwrap();
    let applied = async {
        loop {
            let snapshot = hub.snapshot();
            let node = snapshot.nodes.iter().find(|n| n.name == "node-a").cloned();
            if node.is_some_and(|n| n.connected && n.applied_version == state.version) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), applied)
        .await
        .expect("the report is shown");

    // node-b's certificate cannot watch, or report for, node-a.
    let mut b = client(&address, Some(pem("node-b"))).await.unwrap();
    let refused = b.watch(hello("node-a")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(
        refused
            .message()
            .contains("proves node node-b, not node node-a"),
        "{}",
        refused.message()
    );
    let refused = b
        .report(AgentReport {
            node: "node-a".into(),
            ..AgentReport::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);

    // A malformed hello is refused with what is wrong.
    let mut bad = hello("node-b");
    bad.underlay_address = "not-an-ip".into();
    let refused = b.watch(bad).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("underlay_address"),
        "{}",
        refused.message()
    );

    // Without a client certificate (plaintext), nothing is served.
    let plaintext = match client(&address, None).await {
        Ok(mut c) => c
            .watch(hello("node-a"))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    assert!(plaintext.is_err(), "a plaintext client must not be served");
}

/// Only an administrator's certificate reads the status: a node's is refused, and a
/// client without a certificate does not get through TLS.
async fn status_scenario(listen: Address) {
    let dir = tempfile::tempdir().unwrap();
    let pem = certificates(dir.path());
    let (address, _, _) = operator(&listen, pem("operator")).await;

    let shown = status(&address, Some(pem("admin"))).await.unwrap();
    assert!(
        shown
            .network_services
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("red"))
    );

    let refused = status(&address, Some(pem("node-a"))).await.unwrap_err();
    assert!(
        refused.starts_with("PermissionDenied")
            && refused.contains("spiffe://cluster.local/wireway/node/node-a, not spiffe://cluster.local/wireway/admin"),
        "{refused}"
    );

    let plaintext = status(&address, None).await;
    assert!(
        plaintext.is_err(),
        "a client without a certificate must not be served"
    );
}

#[tokio::test]
async fn a_node_certificate_cannot_read_the_status() {
    status_scenario("127.0.0.1:0".parse().unwrap()).await;
}

#[tokio::test]
async fn the_status_needs_an_admin_certificate_on_a_unix_socket_too() {
    let dir = tempfile::tempdir().unwrap();
    status_scenario(Address::Unix(dir.path().join("operator.sock"))).await;
}

#[tokio::test]
async fn mutual_tls_over_tcp() {
    scenario("127.0.0.1:0".parse().unwrap()).await;
}

#[tokio::test]
async fn mutual_tls_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    scenario(Address::Unix(dir.path().join("operator.sock"))).await;
}

/// Waits (up to 10 s) until `hub` shows what `check` wants.
async fn until(hub: &Hub, what: &str, check: impl Fn(&Hub) -> bool) {
    let wait = async {
        while !check(hub) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("{what} within 10 s"));
}

#[tokio::test]
async fn a_node_deleted_and_recreated_is_first_sent_its_new_state() {
    let dir = tempfile::tempdir().unwrap();
    let pem = certificates(dir.path());
    let (address, hub, inputs) = operator(&"127.0.0.1:0".parse().unwrap(), pem("operator")).await;
    let change = |changes: Vec<Change>| Input::Source(source::Event::Changes(changes));
    let node_a = Change::Node(Node {
        name: "node-a".into(),
        public_key: Some(KEY_A.into()),
        underlay: Some([192, 0, 2, 1].into()),
        ..Node::default()
    });
    inputs.send(change(vec![node_a.clone()])).await.unwrap();
    until(&hub, "node-a's key taken", |hub| {
        let snapshot = hub.snapshot();
        let node = snapshot.nodes.iter().find(|n| n.name == "node-a");
        node.is_some_and(|n| n.public_key.is_some())
    })
    .await;
    let before = hub.current("node-a").unwrap();

    // The Node and its pod are deleted; it comes back (a new machine) with a new pod.
    inputs
        .send(change(vec![
            Change::NodeDeleted("node-a".into()),
            Change::PodDeleted("red".into(), "red-a".into()),
        ]))
        .await
        .unwrap();
    until(&hub, "node-a's state gone", |hub| {
        hub.current("node-a").is_none()
    })
    .await;
    let new_pod = Pod::test("red", "red-a3")
        .on("node-a")
        .labelled(&[("net", "red")]);
    inputs
        .send(change(vec![node_a, Change::Pod(new_pod)]))
        .await
        .unwrap();

    // Its agent, holding nothing, is first sent the new state, numbered above the old.
    let mut a = client(&address, Some(pem("node-a"))).await.unwrap();
    let mut stream = a.watch(hello("node-a")).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a state within 10 s")
        .unwrap()
        .unwrap();
    let members: Vec<&str> = first
        .services
        .iter()
        .flat_map(|s| s.members.iter().map(|m| m.id.as_str()))
        .collect();
    assert_eq!(members, ["red/red-a3"]);
    assert!(
        first.version > before.version,
        "{} after {}",
        first.version,
        before.version
    );
}

#[tokio::test]
async fn a_node_that_floods_reports_gets_its_share_and_the_others_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let pem = certificates(dir.path());
    let (address, _, _) = operator(&"127.0.0.1:0".parse().unwrap(), pem("operator")).await;
    let report = |node: &str| AgentReport {
        node: node.into(),
        ..AgentReport::default()
    };
    let mut a = client(&address, Some(pem("node-a"))).await.unwrap();
    let started = std::time::Instant::now();
    let mut taken = 0u32;
    let mut refused = None;
    for _ in 0..200 {
        match a.report(report("node-a")).await {
            Ok(_) => taken += 1,
            Err(status) => refused = Some(status),
        }
    }
    // The burst, then what the rate earned while the flood went on, and no more.
    let earned = started.elapsed().as_secs_f64() * REPORTS_PER_SECOND;
    assert!(taken >= REPORT_BURST, "{taken} taken");
    assert!(
        f64::from(taken) <= f64::from(REPORT_BURST) + earned + 1.0,
        "{taken} taken in {:?}",
        started.elapsed()
    );
    let refused = refused.expect("some reports refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused
            .message()
            .contains("node node-a reports faster than"),
        "{}",
        refused.message()
    );
    // node-b has its own share.
    let mut b = client(&address, Some(pem("node-b"))).await.unwrap();
    b.report(report("node-b")).await.unwrap();
}

/// Only the leader serves agents: a standby refuses a watch and a report with UNAVAILABLE
/// naming the leader (the agent retries, and the Service sends it to the ready leader);
/// a leader that loses the Lease ends its streams the same way.
#[tokio::test]
async fn only_the_leader_serves_agents_and_a_lost_lease_ends_their_streams() {
    let dir = tempfile::tempdir().unwrap();
    let pem = certificates(dir.path());
    let (address, hub, _) = operator(&"127.0.0.1:0".parse().unwrap(), pem("operator")).await;
    until(&hub, "node-a's state", |hub| {
        hub.current("node-a").is_some()
    })
    .await;
    let standby = Leadership {
        leading: false,
        leader: Some("operator-1".into()),
        epoch: 0,
    };
    hub.set_leadership(standby.clone());
    let mut a = client(&address, Some(pem("node-a"))).await.unwrap();
    let sent_away = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("operator-1 leads"),
            "{}",
            status.message()
        );
    };
    sent_away(a.watch(hello("node-a")).await.unwrap_err());
    let report = AgentReport {
        node: "node-a".into(),
        ..AgentReport::default()
    };
    sent_away(a.report(report.clone()).await.unwrap_err());

    // Leading, it serves; losing the Lease ends the stream, and the next watch is refused.
    hub.set_leadership(Leadership {
        leading: true,
        leader: Some("operator-0".into()),
        epoch: 7,
    });
    let mut stream = a.watch(hello("node-a")).await.unwrap().into_inner();
    let state = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a state within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(state.epoch, 7, "served in the leader's term");
    a.report(report).await.unwrap();
    hub.set_leadership(standby);
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream's end within 10 s");
    sent_away(ended.unwrap_err());
    sent_away(a.watch(hello("node-a")).await.unwrap_err());
}
