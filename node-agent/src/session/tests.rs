//! The session against an operator's node API served in the test on a Unix socket (real
//! gRPC, the operator's part played by the test), converging a fake kernel.

use std::collections::BTreeSet;
use std::path::Path;
use std::pin::Pin;

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};
use wireway_proto::ReportAck;
use wireway_proto::node_api_server::{NodeApi, NodeApiServer};
use wireway_runtime::listen::{Address, serve_grpc};

use super::*;
use crate::converge::{Op, Route};
use crate::dataplane::fake::{Call, FakeKernel};
use crate::resolver::{Limits, Resolver, System};
use crate::testing::*;

/// A stream of NodeStates opened by an agent: its hello, and where the test sends the
/// states.
type Watch = (AgentHello, mpsc::UnboundedSender<NodeState>);

/// The operator's side, played by the test: each Watch hands the test the agent's hello
/// and a sender for its stream; each report goes to the test.
struct Operator {
    watches: mpsc::UnboundedSender<Watch>,
    reports: mpsc::UnboundedSender<AgentReport>,
}

type States = Pin<Box<dyn Stream<Item = Result<NodeState, Status>> + Send>>;

#[tonic::async_trait]
impl NodeApi for Operator {
    type WatchStream = States;

    async fn watch(&self, request: Request<AgentHello>) -> Result<Response<States>, Status> {
        let (send, receive) = mpsc::unbounded_channel();
        self.watches
            .send((request.into_inner(), send))
            .map_err(|_| Status::unavailable("the test is over"))?;
        let states = futures_util::stream::unfold(receive, |mut receive| async move {
            let state = receive.recv().await?;
            Some((Ok(state), receive))
        });
        Ok(Response::new(Box::pin(states)))
    }

    async fn report(&self, request: Request<AgentReport>) -> Result<Response<ReportAck>, Status> {
        self.reports
            .send(request.into_inner())
            .map_err(|_| Status::unavailable("the test is over"))?;
        Ok(Response::new(ReportAck {}))
    }
}

/// The test's ends of a served node API.
struct Served {
    /// Where the agent reaches it.
    address: String,
    watches: mpsc::UnboundedReceiver<Watch>,
    reports: mpsc::UnboundedReceiver<AgentReport>,
}

impl Served {
    /// Serves the node API on a socket in `dir`.
    async fn start(dir: &Path) -> Self {
        let socket = dir.join("operator.sock");
        let listener = Address::Unix(socket.clone()).bind().await.unwrap();
        let (watches, watched) = mpsc::unbounded_channel();
        let (reports, reported) = mpsc::unbounded_channel();
        let router = tonic::transport::Server::builder()
            .add_service(NodeApiServer::new(Operator { watches, reports }));
        tokio::spawn(serve_grpc(router, listener, std::future::pending()));
        Self {
            address: format!("unix:{}", socket.display()),
            watches: watched,
            reports: reported,
        }
    }

    /// The next stream an agent opens.
    async fn watch(&mut self) -> Watch {
        self.watches.recv().await.unwrap()
    }

    /// The next report.
    async fn report(&mut self) -> AgentReport {
        self.reports.recv().await.unwrap()
    }
}

/// A running session of node `node-1` on `kernel`, keeping its state in `dir`.
struct Running {
    metrics: Metrics,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    fn start(dir: &Path, operator: &str, kernel: &FakeKernel) -> Self {
        Self::resolving(
            dir,
            operator,
            kernel,
            Resolver::new(System::configured(), Limits::default()),
        )
    }

    /// The session, looking host names up with `resolver`.
    fn resolving(dir: &Path, operator: &str, kernel: &FakeKernel, resolver: Resolver) -> Self {
        let netns = pods_in(dir, &PODS).unwrap();
        let config = Config {
            operator: operator.to_owned(),
            server_name: "wireway-operator".into(),
            tls: None,
            token_file: None,
            node: "node-1".into(),
            underlay: "192.0.2.1".parse().unwrap(),
            underlay_mtu: 1500,
            public_key: test_key(1),
            // Only what the operator sends, and the retries of what failed, wake it.
            resync: Duration::from_secs(3600),
            report_every: Duration::from_secs(3600),
        };
        let (metrics, _) = Metrics::new("fake");
        let session = Session::new(
            Agent::new(kernel.clone(), netns).with_resolver(resolver),
            config,
            metrics.clone(),
            Readiness::new("starting"),
            StateFile(dir.join("node-state.json")),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(session.run(async {
            let _ = stopped.await;
        }));
        Self {
            metrics,
            stop,
            task,
        }
    }

    fn passes(&self) -> u64 {
        self.metrics.passes.get_or_create(&[("result", "ok")]).get()
    }

    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap();
    }
}

/// Waits until `done` holds (panics after 10 s).
async fn until(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited
        .await
        .unwrap_or_else(|_| panic!("{what}: not after 10 s"));
}

/// The next report (panics after 10 s without one).
async fn report_within(operator: &mut Served, why: &str) -> AgentReport {
    tokio::time::timeout(Duration::from_secs(10), operator.report())
        .await
        .unwrap_or_else(|_| panic!("no report: {why}"))
}

/// Partner, a peer outside the cluster reached at `host_port`, key 10.
fn partner(host_port: &str) -> wireway_proto::Peer {
    peer("partner")
        .key(&test_key(10))
        .at(host_port)
        .allowing("10.100.255.10/32")
}

fn errors(report: &AgentReport) -> Vec<(&str, u64)> {
    let errors = report.errors.iter();
    errors.map(|e| (e.category.as_str(), e.count)).collect()
}

/// How many times the peers were read for a report.
fn peer_reads(kernel: &FakeKernel) -> usize {
    let calls = kernel.calls();
    calls.iter().filter(|c| **c == Call::PeerStats).count()
}

/// The version of the state on disk.
fn stored_version(dir: &Path) -> Option<u64> {
    let file = StateFile(dir.join("node-state.json"));
    file.load().unwrap().map(|s| s.version)
}

fn observes(kernel: &FakeKernel) -> usize {
    let calls = kernel.calls();
    calls.iter().filter(|c| **c == Call::Observe).count()
}

#[tokio::test]
async fn follows_the_stream_applies_only_newer_versions_and_reports_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut operator = Served::start(dir.path()).await;
    let kernel = FakeKernel::default();
    let session = Running::start(dir.path(), &operator.address, &kernel);

    let (hello, states) = operator.watch().await;
    assert_eq!(
        (hello.node.as_str(), hello.public_key, hello.applied_version),
        ("node-1", test_key(1), 0)
    );
    assert_eq!(hello.underlay_address, "192.0.2.1");

    states.send(node("node-1").with(red())).unwrap();
    let report = operator.report().await;
    assert_eq!(report.node, "node-1");
    assert_eq!(report.applied_version, 1);
    assert_eq!(report.problems, Vec::<String>::new());
    assert_eq!(report.errors, []);
    let peers: BTreeSet<(&str, String)> = report
        .peers
        .iter()
        .map(|p| (p.interface_name.as_str(), p.public_key.clone()))
        .collect();
    let keys = [test_key(2), test_key(3), test_key(9)];
    assert_eq!(peers, BTreeSet::from(keys.map(|k| ("ww-red", k))));
    assert!(kernel.held().wireguard.contains_key("ww-red"));

    // The same version again, whatever it says, is not applied; the next one is.
    states.send(node("node-1").with(green())).unwrap();
    states
        .send(node("node-1").version(2).with(red()).with(green()))
        .unwrap();
    let report = operator.report().await;
    assert_eq!(report.applied_version, 2);
    assert_eq!((session.passes(), observes(&kernel)), (2, 2));
    assert_eq!(session.metrics.applied_version.get(), 2);
    let held = kernel.held();
    assert_eq!(
        held.wireguard.keys().collect::<Vec<_>>(),
        ["ww-green", "ww-red"]
    );
    let stored = StateFile(dir.path().join("node-state.json"))
        .load()
        .unwrap();
    assert_eq!(stored.map(|s| s.version), Some(2));
    session.stop().await;
}

/// After a failover the new leader numbers versions on its own: a state of a newer epoch
/// is applied whatever its version, a state of an older epoch is not, and the agent says
/// in its reports and its next hello which epoch its version is of.
#[tokio::test]
async fn a_new_epoch_is_applied_whatever_its_version_and_an_old_epoch_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut operator = Served::start(dir.path()).await;
    let kernel = FakeKernel::default();
    let session = Running::start(dir.path(), &operator.address, &kernel);
    let (hello, states) = operator.watch().await;
    assert_eq!((hello.applied_epoch, hello.applied_version), (0, 0));
    let applied = |r: &AgentReport| (r.applied_epoch, r.applied_version);

    states
        .send(node("node-1").epoch(1).version(5).with(red()))
        .unwrap();
    assert_eq!(
        applied(&report_within(&mut operator, "epoch 1").await),
        (1, 5)
    );
    // A new leader, a lower version: applied.
    states
        .send(node("node-1").epoch(2).version(2).with(green()))
        .unwrap();
    let report = report_within(&mut operator, "a new epoch, a lower version").await;
    assert_eq!(applied(&report), (2, 2));
    // The old leader's, however high its version: ignored; the new one's next: applied.
    states
        .send(node("node-1").epoch(1).version(9).with(red()))
        .unwrap();
    states
        .send(node("node-1").epoch(2).version(3).with(green()).with(red()))
        .unwrap();
    let report = report_within(&mut operator, "epoch 2, version 3").await;
    assert_eq!(applied(&report), (2, 3));
    assert_eq!(session.passes(), 3, "epoch 1's version 9 is not applied");
    session.stop().await;

    let session = Running::start(dir.path(), &operator.address, &kernel);
    let (hello, _states) = operator.watch().await;
    assert_eq!((hello.applied_epoch, hello.applied_version), (2, 3));
    session.stop().await;
}

#[tokio::test]
async fn re_applies_the_stored_state_at_start_and_says_so_in_its_hello() {
    let dir = tempfile::tempdir().unwrap();
    let stored = node("node-1").version(5).with(red());
    StateFile(dir.path().join("node-state.json"))
        .save(&stored)
        .unwrap();
    let mut operator = Served::start(dir.path()).await;
    let kernel = FakeKernel::default();
    let session = Running::start(dir.path(), &operator.address, &kernel);

    let (hello, states) = operator.watch().await;
    assert_eq!(hello.applied_version, 5);
    assert!(
        kernel.held().wireguard.contains_key("ww-red"),
        "applied before the operator was reached"
    );
    states.send(stored.clone()).unwrap();
    states
        .send(node("node-1").version(6).with(green()))
        .unwrap();
    let report = operator.report().await;
    assert_eq!(report.applied_version, 6);
    assert_eq!(session.passes(), 2, "the stored state, then version 6");
    assert_eq!(
        kernel.held().wireguard.keys().collect::<Vec<_>>(),
        ["ww-green"]
    );
    session.stop().await;
}

#[tokio::test]
async fn what_failed_is_reported_to_the_operator_by_category() {
    let dir = tempfile::tempdir().unwrap();
    let mut operator = Served::start(dir.path()).await;
    let kernel = FakeKernel::default();
    let route = Op::AddRoute(Route {
        table: 0x5757_0000 + 51821,
        destination: "10.100.0.1/32".parse().unwrap(),
        device: "wwv0000000a".into(),
    });
    kernel.refuse(route.clone());
    let session = Running::start(dir.path(), &operator.address, &kernel);

    let (_, states) = operator.watch().await;
    // red-c's pod (0d) has no namespace on this node yet.
    let red = red().member(
        member("red/red-c")
            .in_pod("0d")
            .host_side("wwv0000000d")
            .at("10.100.0.3"),
    );
    states.send(node("node-1").with(red)).unwrap();
    let report = operator.report().await;
    assert_eq!(report.applied_version, 1, "applied, with problems");
    let errors: Vec<(&str, u64)> = report
        .errors
        .iter()
        .map(|e| (e.category.as_str(), e.count))
        .collect();
    assert_eq!(errors, [("netlink", 1), ("state", 1)]);
    assert!(
        report.errors[0]
            .last_message
            .starts_with(&format!("failed to {route}: ")),
        "{}",
        report.errors[0].last_message
    );
    assert_eq!(
        report.errors[1].last_message,
        "service red/red: member red/red-c: its network namespace was not found (yet)"
    );
    assert_eq!(
        report.problems,
        [
            report.errors[1].last_message.clone(),
            report.errors[0].last_message.clone()
        ]
    );
    session.stop().await;
}

#[tokio::test]
async fn a_state_beyond_grpcs_default_limit_of_4_mib_is_received_and_converged() {
    let dir = tempfile::tempdir().unwrap();
    let mut operator = Served::start(dir.path()).await;
    let kernel = FakeKernel::default();
    let session = Running::start(dir.path(), &operator.address, &kernel);
    let (_, states) = operator.watch().await;

    // 50,000 peers, each a node with its own prefix and endpoint.
    let mut big = service("red/big").cidr("10.0.0.0/8");
    for n in 0..50_000u32 {
        let [_, _, b, c] = n.to_be_bytes();
        big = big.peer(
            peer(&format!("node-{n}"))
                .key(&test_key(n))
                .at(&format!("192.0.{b}.{c}:51820"))
                .allowing(&format!("10.{b}.{c}.0/24")),
        );
    }
    let state = node("node-1").with(big);
    let bytes = prost::Message::encoded_len(&state);
    assert!(
        bytes > 4 << 20,
        "only {bytes} bytes: not beyond the default"
    );
    states.send(state).unwrap();
    // Refused, it would never arrive: the agent would reconnect and be refused again.
    let report = tokio::time::timeout(Duration::from_secs(60), operator.report())
        .await
        .expect("no report: the state never arrived");
    assert_eq!(report.applied_version, 1);
    assert_eq!(report.errors, []);
    assert_eq!(kernel.held().wireguard["ww-big"].peers.len(), 50_000);
    session.stop().await;
}

#[tokio::test]
async fn a_name_not_resolved_yet_stalls_no_pass_and_each_new_address_wakes_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut operator = Served::start(dir.path()).await;
    let kernel = FakeKernel::default();
    let dns = Held::default();
    let limits = Limits {
        // Looked up again at once: the test answers each lookup when it chooses.
        refresh: Duration::ZERO,
        ..Limits::default()
    };
    let resolver = Resolver::new(dns.clone(), limits);
    let session = Running::resolving(dir.path(), &operator.address, &kernel, resolver);
    let (_, states) = operator.watch().await;

    let name = "partner.example:51820";
    states
        .send(node("node-1").with(red().peer(partner(name))))
        .unwrap();
    let report = report_within(&mut operator, "the pass waits for the lookup").await;
    // Applied and reported while the lookup has no answer (the test has given none).
    assert_eq!(dns.waiting(1).await, [name]);
    assert_eq!(report.applied_version, 1);
    assert_eq!(
        report.problems,
        [
            "service red/red: peer partner: endpoint partner.example:51820 does not resolve; \
          the peer is set without one and can still connect to this node"
        ]
    );
    let endpoint = || {
        let held = kernel.held();
        held.wireguard["ww-red"].peers[&test_key(10)]
            .endpoint
            .clone()
    };
    assert_eq!(endpoint(), None, "set without an endpoint meanwhile");

    dns.answer(name, Some("192.0.2.50:51820".parse().unwrap()));
    until("the endpoint is set", || endpoint().is_some()).await;
    assert_eq!(endpoint().as_deref(), Some("192.0.2.50:51820"));

    // Nothing is left to retry and the resync is an hour away: only the new address
    // wakes the pass that sets it.
    dns.waiting(1).await;
    dns.answer(name, Some("192.0.2.51:51820".parse().unwrap()));
    until("the new endpoint is set", || {
        endpoint().as_deref() == Some("192.0.2.51:51820")
    })
    .await;
    session.stop().await;
}

#[tokio::test]
async fn a_name_that_never_resolves_counts_one_error_however_many_passes_meet_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut operator = Served::start(dir.path()).await;
    let kernel = FakeKernel::default();
    // The system's resolver; RFC 6761: a name under `.invalid` never resolves.
    let session = Running::start(dir.path(), &operator.address, &kernel);
    let (_, states) = operator.watch().await;

    let red = red().peer(partner("partner.invalid:51820"));
    states.send(node("node-1").with(red.clone())).unwrap();
    let report = report_within(&mut operator, "the pass waits for the lookup").await;
    assert_eq!(errors(&report), [("state", 1)]);
    // The pass is retried every second while the problem stays.
    until("three passes", || session.passes() >= 3).await;
    states
        .send(node("node-1").version(2).with(red.clone()))
        .unwrap();
    let report = operator.report().await;
    assert_eq!(report.applied_version, 2);
    assert_eq!(report.problems.len(), 1);
    assert_eq!(
        errors(&report),
        [("state", 1)],
        "one error, not one per pass"
    );
    let state_errors = session
        .metrics
        .errors
        .get_or_create(&[("category", "state")]);
    assert_eq!(state_errors.get(), 1);
    drop(state_errors);

    // Another name that does not resolve is another error.
    let other = peer("other")
        .key(&test_key(11))
        .at("other.invalid:51820")
        .allowing("10.100.255.11/32");
    states
        .send(node("node-1").version(3).with(red.peer(other)))
        .unwrap();
    let report = operator.report().await;
    assert_eq!(report.problems.len(), 2);
    assert_eq!(errors(&report), [("state", 2)]);
    session.stop().await;
}

#[tokio::test]
async fn an_operator_not_up_yet_when_the_agent_starts_is_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = FakeKernel::default();
    let socket = dir.path().join("operator.sock");
    let session = Running::start(dir.path(), &format!("unix:{}", socket.display()), &kernel);
    // Connections fail (nothing listens yet) at 0, 100 and 300 ms.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut operator = Served::start(dir.path()).await;
    let (_, states) = operator.watch().await;
    states.send(node("node-1").with(red())).unwrap();
    let report = operator.report().await;
    assert_eq!(errors(&report), []);
    assert_eq!(session.metrics.operator_connected.get(), 1);
    session.stop().await;
}

#[test]
fn a_streak_of_failed_connections_counts_once_when_it_has_lasted_30_s() {
    let start = Instant::now();
    let mut streak = Streak::default();
    let counted = [0, 10, 29, 30, 31, 600].map(|s| streak.fail(start + Duration::from_secs(s)));
    assert_eq!(counted, [false, false, false, true, false, false]);
    // After a connection, a new streak counts again.
    let mut streak = Streak::default();
    assert!(!streak.fail(start + Duration::from_secs(1000)));
    assert!(streak.fail(start + Duration::from_secs(1030)));
}

/// Red with one record more for each of `names`.
fn red_named(names: &[&str]) -> ServiceState {
    let records: Vec<_> = names
        .iter()
        .map(|name| {
            std::sync::Arc::new(wireway_proto::DnsRecord {
                name: (*name).to_owned(),
                addresses: vec!["10.100.1.7".into()],
            })
        })
        .collect();
    ServiceState {
        dns: Some(wireway_proto::ServiceDns {
            zone: "red.red.wireway.internal".into(),
            records: records.into(),
        }),
        ..red()
    }
}

/// A state that differs in anything but its version, its names' records and (for a
/// peers-only change) its peers is neither a names-only nor a peers-only change.
#[test]
fn any_other_difference_makes_a_state_neither_names_nor_peers_only() {
    let applied = node("node-1").with(red_named(&["red-a.red-members.red"]));
    let names = |state: &mut NodeState| {
        state.services[0] = ServiceState {
            dns: red_named(&["red-a.red-members.red", "red-c.red-members.red"]).dns,
            ..state.services[0].clone()
        };
    };
    let peers = |state: &mut NodeState| {
        state.services[0].peers.pop();
    };
    let changed = |change: &dyn Fn(&mut NodeState)| {
        let mut state = applied.clone();
        (state.version, state.epoch) = (2, 1);
        change(&mut state);
        state
    };
    assert!(differ_in_names_only(&applied, &changed(&names)));
    assert!(differ_in_peers_only(&applied, &changed(&peers)));
    assert!(differ_in_peers_only(
        &applied,
        &changed(&|s| {
            names(s);
            peers(s);
        })
    ));
    /// What else differs, named.
    type Other = (&'static str, fn(&mut NodeState));
    let others: [Other; 11] = [
        ("node", |s| s.node = "node-2".into()),
        ("service", |s| s.services[0].name = "red/blue".into()),
        ("interface", |s| {
            s.services[0].interface_name = "ww-blue".into()
        }),
        ("port", |s| s.services[0].listen_port += 1),
        ("mtu", |s| s.services[0].mtu += 1),
        ("cidr", |s| s.services[0].cidr = "10.99.0.0/16".into()),
        ("prefix", |s| {
            s.services[0].node_prefix = "10.99.1.0/24".into()
        }),
        ("table", |s| s.services[0].route_table += 1),
        ("members", |s| {
            s.services[0].members.pop();
        }),
        ("zone", |s| {
            if let Some(dns) = s.services[0].dns.as_mut() {
                dns.zone = "blue.red.wireway.internal".into();
            }
        }),
        ("services", |s| s.services.push(green())),
    ];
    for (what, other) in others {
        let with_names = changed(&|s| {
            names(s);
            other(s);
        });
        assert!(!differ_in_names_only(&applied, &with_names), "{what}");
        let with_peers = changed(&|s| {
            other(s);
            peers(s);
        });
        assert!(!differ_in_peers_only(&applied, &with_peers), "{what}");
    }
}

/// A member joining on another node changes only this node's names: the state is kept
/// and reported without a pass over the kernel; anything else (a peer, names turned
/// off) is a pass again.
#[tokio::test]
async fn a_state_that_changes_only_names_is_applied_without_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut operator = Served::start(dir.path()).await;
    let kernel = FakeKernel::default();
    let session = Running::start(dir.path(), &operator.address, &kernel);
    let (_, states) = operator.watch().await;

    states
        .send(node("node-1").with(red_named(&["red-a.red-members.red"])))
        .unwrap();
    assert_eq!(report_within(&mut operator, "v1").await.applied_version, 1);
    let passes = observes(&kernel);

    let two = ["red-a.red-members.red", "red-c.red-members.red"];
    states
        .send(node("node-1").version(2).with(red_named(&two)))
        .unwrap();
    assert_eq!(report_within(&mut operator, "v2").await.applied_version, 2);
    assert_eq!(observes(&kernel), passes, "names alone made a pass");
    assert_eq!(peer_reads(&kernel), 1, "names alone read the peers again");
    // On disk within a second, not before the report.
    until("v2 on disk", || stored_version(dir.path()) == Some(2)).await;

    // Names off: the rules and routes that deliver DNS go, so that is a pass.
    states.send(node("node-1").version(3).with(red())).unwrap();
    assert_eq!(report_within(&mut operator, "v3").await.applied_version, 3);
    assert_eq!(observes(&kernel), passes + 1);
    session.stop().await;
}

/// A node joining the service elsewhere changes this node's peers (and names) alone: a
/// pass over the WireGuard peers, no read of the rest of the kernel; anything else is a
/// full pass again.
#[tokio::test]
async fn a_state_that_changes_only_peers_is_applied_by_a_pass_over_the_peers() {
    let dir = tempfile::tempdir().unwrap();
    let mut operator = Served::start(dir.path()).await;
    let kernel = FakeKernel::default();
    let session = Running::start(dir.path(), &operator.address, &kernel);
    let (_, states) = operator.watch().await;

    states.send(node("node-1").with(red())).unwrap();
    assert_eq!(report_within(&mut operator, "v1").await.applied_version, 1);
    kernel.clear_calls();

    let joined = red().peer(
        peer("node-4")
            .key(&test_key(4))
            .at("192.168.77.4:51821")
            .allowing("10.100.3.0/24"),
    );
    states
        .send(node("node-1").version(2).with(joined.clone()))
        .unwrap();
    // Nothing read: the peer that differs from what the last pass left is sent, alone,
    // and the report has it (no handshake yet) beside the others as last read.
    let report = report_within(&mut operator, "v2").await;
    assert_eq!(report.applied_version, 2);
    let new = report.peers.iter().find(|p| p.public_key == test_key(4));
    assert_eq!(new.map(|p| p.last_handshake_unix_seconds), Some(0));
    assert_eq!(report.peers.len(), 4);
    assert_eq!(
        kernel.calls(),
        [Call::ConfigurePeers {
            interface: "ww-red".into(),
            changes: vec![(
                test_key(4),
                Some(crate::converge::Peer {
                    endpoint: Some("192.168.77.4:51821".into()),
                    allowed_ips: BTreeSet::from(["10.100.3.0/24".parse().unwrap()]),
                    persistent_keepalive: 0,
                })
            )],
        }]
    );
    assert!(
        kernel.held().wireguard["ww-red"]
            .peers
            .contains_key(&test_key(4))
    );

    // A member too: a full pass.
    let mut member_gone = joined;
    member_gone.members.pop();
    states
        .send(node("node-1").version(3).with(member_gone))
        .unwrap();
    assert_eq!(report_within(&mut operator, "v3").await.applied_version, 3);
    assert_eq!(
        observes(&kernel),
        1,
        "calls cleared before v2: one full pass"
    );
    session.stop().await;
}

/// States that change only names, one after the other, are written once; a stop writes
/// the last one; their reports send the last reading of the peers, and a pass reads
/// them again.
#[tokio::test]
async fn names_alone_are_written_once_within_a_second_and_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut operator = Served::start(dir.path()).await;
    let kernel = FakeKernel::default();
    let session = Running::start(dir.path(), &operator.address, &kernel);
    let (_, states) = operator.watch().await;
    states.send(node("node-1").with(red_named(&[]))).unwrap();
    assert_eq!(report_within(&mut operator, "v1").await.applied_version, 1);
    assert_eq!(
        stored_version(dir.path()),
        Some(1),
        "a pass is on disk when reported"
    );

    for version in 2..=4 {
        let names: Vec<String> = (0..version)
            .map(|n| format!("red-{n}.red-members.red"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        states
            .send(node("node-1").version(version).with(red_named(&names)))
            .unwrap();
        let report = report_within(&mut operator, "names").await;
        assert_eq!(report.applied_version, version);
        assert_eq!(
            report.peers.len(),
            3,
            "the last reading of the peers is sent again"
        );
    }
    assert_eq!(stored_version(dir.path()), Some(1));
    assert_eq!(peer_reads(&kernel), 1);
    session.stop().await;
    assert_eq!(
        stored_version(dir.path()),
        Some(4),
        "stopping writes what is due"
    );

    // Started again: a pass (a peer joins) reads the peers for its report and is on disk.
    let session = Running::start(dir.path(), &operator.address, &kernel);
    let (_, states) = operator.watch().await;
    let joined = red_named(&["red-0.red-members.red"]).peer(
        peer("node-4")
            .key(&test_key(4))
            .at("192.168.77.4:51821")
            .allowing("10.100.3.0/24"),
    );
    states.send(node("node-1").version(5).with(joined)).unwrap();
    let report = report_within(&mut operator, "v5").await;
    assert_eq!(report.applied_version, 5);
    assert_eq!(report.peers.len(), 4, "node-4 is read");
    assert_eq!(peer_reads(&kernel), 2);
    assert_eq!(stored_version(dir.path()), Some(5));
    session.stop().await;
}
