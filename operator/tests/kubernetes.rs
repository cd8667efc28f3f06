//! The Kubernetes glue against a mock API server (kube-rs's tower-test pattern): watch
//! events in, through the engine, and out as the exact API requests the operator makes.
//! Every request is recorded; the last test checks the recorded calls against
//! `config/rbac/operator.yaml`: nothing missing, nothing extra.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by panicking

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::client::Body;
use kube::runtime::watcher;
use kube::{Client, api::DynamicObject};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use wireway_operator::controller::auth::{Limits, TokenReviewer};
use wireway_operator::controller::lease::{Election, Round};
use wireway_operator::controller::status::StatusWriter;
use wireway_operator::engine::{Config, Engine, Hub, Input, Published};
use wireway_operator::kind::Kind;
use wireway_operator::metrics::Metrics;
use wireway_operator::plan::events::Event;
use wireway_operator::serve::TokenAuthenticator;
use wireway_operator::source::kubernetes::Objects;
use wireway_operator::source::{self};
use wireway_operator::testing::objects::pod;
use wireway_operator::testing::{KEY_A, hello};
use wireway_proto::AgentReport;
use wireway_runtime::http::Readiness;
use wireway_testkit::rbac;

/// One request: method, path, and whether it was a watch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Call {
    method: String,
    path: String,
    watch: bool,
}

type Calls = Arc<Mutex<BTreeSet<Call>>>;

/// The mock API server's side.
struct ApiServer {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
    calls: Calls,
}

/// What a request asked.
struct Asked {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

impl ApiServer {
    /// The next request, answered with `response`.
    async fn answer(&mut self, response: Value) -> Asked {
        self.answer_with(200, response).await
    }

    async fn answer_with(&mut self, code: u16, response: Value) -> Asked {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(5), self.handle.next_request())
                .await
                .expect("a request within 5 s")
                .expect("the client is alive");
        let asked = self.record(request).await;
        let response = Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&response).unwrap()))
            .unwrap();
        send.send_response(response);
        asked
    }

    async fn record(&self, request: Request<Body>) -> Asked {
        let query = request.uri().query().unwrap_or_default().to_owned();
        let call = Call {
            method: request.method().to_string(),
            path: request.uri().path().to_owned(),
            watch: query.split('&').any(|q| q == "watch=true"),
        };
        self.calls.lock().unwrap().insert(call);
        let content_type = request
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let bytes = http_body_util::BodyExt::collect(request.into_body())
            .await
            .unwrap()
            .to_bytes();
        Asked {
            method,
            path,
            query,
            content_type,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Asserts that no request comes for a while.
    async fn silent(&mut self) {
        let next =
            tokio::time::timeout(Duration::from_millis(300), self.handle.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!(
                "an unexpected request: {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

fn mock(calls: &Calls) -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    (
        client,
        ApiServer {
            handle,
            calls: calls.clone(),
        },
    )
}

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

fn service(finalizers: Value, deleting: bool) -> DynamicObject {
    let mut metadata = json!({
        "name": "red", "namespace": "red", "uid": "uid-red", "generation": 2,
        "resourceVersion": "41", "finalizers": finalizers,
    });
    if deleting {
        metadata["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
    }
    object(json!({
        "apiVersion": "wireway.dev/v1alpha1", "kind": "NetworkService", "metadata": metadata,
        "spec": {"cidr": "10.100.0.0/16", "nodePrefixLength": 24},
    }))
}

fn endpoint() -> DynamicObject {
    object(json!({
        "apiVersion": "wireway.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": "members", "namespace": "red", "uid": "uid-ep", "generation": 1},
        "spec": {"networkService": {"name": "red"}, "podSelector": {"matchLabels": {"net": "red"}}},
    }))
}

fn admission() -> DynamicObject {
    object(json!({
        "apiVersion": "wireway.dev/v1alpha1", "kind": "Admission",
        "metadata": {"name": "vms", "namespace": "red", "uid": "uid-adm", "generation": 1},
        "spec": {"networkService": "red", "allow": [{"spiffeIdPrefix": "spiffe://cluster.local/vm"}]},
    }))
}

fn grant() -> DynamicObject {
    object(json!({
        "apiVersion": "wireway.dev/v1alpha1", "kind": "IdentityGrant",
        "metadata": {"name": "partner-in-red", "uid": "uid-grant", "generation": 1},
        "spec": {"namespace": "red", "identities": [{"trustDomain": "partner.example"}]},
    }))
}

fn peer_cluster() -> DynamicObject {
    object(json!({
        "apiVersion": "wireway.dev/v1alpha1", "kind": "PeerCluster",
        "metadata": {"name": "cluster-b", "uid": "uid-peer", "generation": 1},
        "spec": {
            "trustDomain": "cluster-b.example",
            "address": "fed.cluster-b.example:7443",
            "trustBundle": "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            "services": [{"namespace": "red", "name": "red", "prefix": "10.100.128.0/17"}],
        },
    }))
}

fn node() -> DynamicObject {
    object(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-a", "annotations": {
            "wireway.dev/public-key": KEY_A,
            "wireway.dev/underlay-address": "192.0.2.1",
        }},
    }))
}

/// An engine in Kubernetes mode, fed by the Kubernetes source's bookkeeping.
struct Operator {
    engine: Engine,
    objects: Objects,
    hub: Arc<Hub>,
    events: mpsc::Receiver<(Event, ObjectReference)>,
}

impl Operator {
    fn new() -> Self {
        let hub = Arc::new(Hub::default());
        let config = Config {
            trust_domain: "cluster.local".into(),
            state_dir: None,
            agent_grace: Duration::ZERO,
            kubernetes: true,
            bounds: Default::default(),
        };
        let (metrics, _) = Metrics::new();
        let mut engine =
            Engine::new(config, hub.clone(), metrics, Readiness::new("starting")).unwrap();
        let (tell, events) = mpsc::channel(64);
        engine.tell_events(tell);
        Self {
            engine,
            objects: Objects::default(),
            hub,
            events,
        }
    }

    /// Lists every kind: `objects` of theirs, nothing of the others.
    fn list(&mut self, objects: Vec<(Kind, DynamicObject)>) {
        for kind in Kind::ALL {
            self.watch(kind, watcher::Event::Init);
            for (k, o) in &objects {
                if *k == kind {
                    self.watch(kind, watcher::Event::InitApply(o.clone()));
                }
            }
            self.watch(kind, watcher::Event::InitDone);
        }
    }

    fn watch(&mut self, kind: Kind, event: watcher::Event<DynamicObject>) {
        for out in self.objects.apply_event(kind, event) {
            self.engine.handle(Input::Source(out));
        }
        self.engine.step();
    }

    fn agent(&mut self, applied: Option<u64>) {
        self.engine.handle(Input::Hello(hello("node-a")));
        if let Some(version) = applied {
            self.engine.handle(Input::Report(AgentReport {
                node: "node-a".into(),
                applied_version: version,
                ..AgentReport::default()
            }));
        }
        self.engine.step();
    }

    fn version(&self) -> u64 {
        self.hub.current("node-a").map_or(0, |s| s.version)
    }

    fn published(&self) -> Published {
        self.hub.subscribe_controller().borrow().as_ref().clone()
    }
}

fn writer(client: Client) -> StatusWriter {
    StatusWriter::new(client, Metrics::new().0)
}

/// The object the API server returns for a write (its content does not matter here).
fn written() -> Value {
    json!({"apiVersion": "wireway.dev/v1alpha1", "kind": "NetworkService", "metadata": {"name": "red", "namespace": "red"}})
}

async fn status_writes(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let mut op = Operator::new();
    op.list(vec![
        (
            Kind::NetworkService,
            service(json!(["wireway.dev/cleanup"]), false),
        ),
        (Kind::Endpoint, endpoint()),
        (Kind::Admission, admission()),
        (Kind::IdentityGrant, grant()),
        (Kind::PeerCluster, peer_cluster()),
        (Kind::Pod, pod("red", "red-a")),
        (Kind::Node, node()),
    ]);
    op.agent(Some(1));
    let published = op.published();
    let mut writer = writer(client);
    let sync = tokio::spawn(async move {
        writer.sync(&published).await;
        (writer, published)
    });
    // The NetworkService's status, by server-side apply under one field manager.
    let asked = api.answer(written()).await;
    assert_eq!(asked.method, "PATCH");
    assert_eq!(
        asked.path,
        "/apis/wireway.dev/v1alpha1/namespaces/red/networkservices/red/status"
    );
    assert!(
        asked.query.contains("fieldManager=wireway-operator"),
        "{}",
        asked.query
    );
    assert!(asked.query.contains("force=true"), "{}", asked.query);
    assert_eq!(asked.content_type, "application/apply-patch+yaml");
    assert_eq!(asked.body["apiVersion"], "wireway.dev/v1alpha1");
    assert_eq!(asked.body["kind"], "NetworkService");
    let status = &asked.body["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True", "{status:#}");
    assert_eq!(status["nodePrefixes"][0]["node"], "node-a");
    assert_eq!(status["memberCount"], 1);
    // Then the Endpoint's, with its member and address.
    let asked = api.answer(written()).await;
    assert_eq!(
        asked.path,
        "/apis/wireway.dev/v1alpha1/namespaces/red/endpoints/members/status"
    );
    assert_eq!(asked.body["status"]["members"][0]["workload"], "red-a");
    assert_eq!(asked.body["status"]["members"][0]["address"], "10.100.0.1");
    // And the Admission's.
    let asked = api.answer(written()).await;
    assert_eq!(
        asked.path,
        "/apis/wireway.dev/v1alpha1/namespaces/red/admissions/vms/status"
    );
    assert_eq!(asked.body["status"]["conditions"][0]["reason"], "Ready");
    // And the IdentityGrant's, cluster-scoped: no namespace in its path.
    let asked = api.answer(written()).await;
    assert_eq!(
        asked.path,
        "/apis/wireway.dev/v1alpha1/identitygrants/partner-in-red/status"
    );
    assert_eq!(asked.body["kind"], "IdentityGrant");
    assert_eq!(asked.body["status"]["conditions"][0]["reason"], "Ready");
    // And the PeerCluster's, cluster-scoped: its operator not heard from yet.
    let asked = api.answer(written()).await;
    assert_eq!(
        asked.path,
        "/apis/wireway.dev/v1alpha1/peerclusters/cluster-b/status"
    );
    assert_eq!(asked.body["kind"], "PeerCluster");
    assert_eq!(
        asked.body["status"]["conditions"][0]["reason"],
        "Connecting"
    );
    let (mut writer, published) = sync.await.unwrap();

    // The watch brings the objects back with their new status: nothing more to write.
    let mut updated = service(json!(["wireway.dev/cleanup"]), false);
    updated.data["status"] =
        serde_json::to_value(published.statuses.network_services.values().next()).unwrap();
    op.watch(Kind::NetworkService, watcher::Event::Apply(updated));
    let mut ep = endpoint();
    ep.data["status"] = serde_json::to_value(published.statuses.endpoints.values().next()).unwrap();
    op.watch(Kind::Endpoint, watcher::Event::Apply(ep));
    let mut adm = admission();
    adm.data["status"] =
        serde_json::to_value(published.statuses.admissions.values().next()).unwrap();
    op.watch(Kind::Admission, watcher::Event::Apply(adm));
    let mut granted = grant();
    granted.data["status"] =
        serde_json::to_value(published.statuses.identity_grants.values().next()).unwrap();
    op.watch(Kind::IdentityGrant, watcher::Event::Apply(granted));
    let mut peer = peer_cluster();
    peer.data["status"] =
        serde_json::to_value(published.statuses.peer_clusters.values().next()).unwrap();
    op.watch(Kind::PeerCluster, watcher::Event::Apply(peer));
    let published = op.published();
    assert_eq!(
        published.live, published.statuses,
        "the objects hold what is in effect"
    );
    let silent = tokio::spawn(async move { writer.sync(&published).await });
    api.silent().await;
    silent.await.unwrap();
}

async fn standby_writes_nothing(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let mut op = Operator::new();
    op.list(vec![
        (
            Kind::NetworkService,
            service(json!(["wireway.dev/cleanup"]), false),
        ),
        (Kind::Endpoint, endpoint()),
        (Kind::Pod, pod("red", "red-a")),
        (Kind::Node, node()),
    ]);
    let (lead, leader) = watch::channel(false);
    let published = op.hub.subscribe_controller();
    tokio::spawn(writer(client).run(published, leader));
    api.silent().await;
    // Becoming leader, it writes what the objects lack.
    lead.send(true).unwrap();
    let asked = api.answer(written()).await;
    assert_eq!(asked.method, "PATCH");
}

async fn failures_back_off_by_kind(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let mut op = Operator::new();
    op.list(vec![
        (
            Kind::NetworkService,
            service(json!(["wireway.dev/cleanup"]), false),
        ),
        (Kind::Node, node()),
    ]);
    let published = op.published();
    assert_eq!(published.statuses.network_services.len(), 1);
    let mut writer = writer(client);
    let p = published.clone();
    let first = tokio::spawn(async move {
        let next = writer.sync(&p).await;
        (writer, next)
    });
    // A transient failure: retried after a backoff, not at once.
    api.answer_with(
        503,
        json!({"kind": "Status", "code": 503, "message": "try later"}),
    )
    .await;
    let (mut writer, next) = first.await.unwrap();
    let due = next.expect("a retry is scheduled");
    assert!(due > tokio::time::Instant::now() + Duration::from_millis(500));
    let p = published.clone();
    let again = tokio::spawn(async move {
        writer.sync(&p).await;
        writer
    });
    api.silent().await;
    let writer = again.await.unwrap();
    drop(writer);
    // A refused write (invalid): not retried until what to write changes.
    let (client, mut api) = mock(calls);
    let mut writer = StatusWriter::new(client, Metrics::new().0);
    let p = published.clone();
    let refused = tokio::spawn(async move {
        let next = writer.sync(&p).await;
        (writer, next)
    });
    api.answer_with(
        422,
        json!({"kind": "Status", "code": 422, "message": "invalid"}),
    )
    .await;
    let (mut writer, next) = refused.await.unwrap();
    assert_eq!(next, None, "no retry of a refused write");
    let p = published.clone();
    let again = tokio::spawn(async move { writer.sync(&p).await });
    api.silent().await;
    again.await.unwrap();
}

async fn events_for_admission_and_failures(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let mut op = Operator::new();
    op.list(vec![
        (
            Kind::NetworkService,
            service(json!(["wireway.dev/cleanup"]), false),
        ),
        (Kind::Endpoint, endpoint()),
        (Kind::Pod, pod("red", "red-a")),
        (Kind::Node, node()),
    ]);
    // An Endpoint in another namespace asks to join red; no Admission lets it in.
    let outsider = object(json!({
        "apiVersion": "wireway.dev/v1alpha1", "kind": "Endpoint",
        "metadata": {"name": "join", "namespace": "other", "uid": "uid-join", "generation": 1},
        "spec": {"networkService": {"name": "red", "namespace": "red"}, "podSelector": {"matchLabels": {"net": "red"}}},
    }));
    op.watch(Kind::Pod, watcher::Event::Apply(pod("other", "intruder")));
    op.watch(Kind::Endpoint, watcher::Event::Apply(outsider));
    let mut told = Vec::new();
    while let Ok(event) = op.events.try_recv() {
        told.push(event);
    }
    let reasons: Vec<(&str, &str, bool)> = told
        .iter()
        .map(|(e, _)| (e.key.name.as_str(), e.reason.as_str(), e.warning))
        .collect();
    assert!(
        reasons.contains(&("members", "Admitted", false)),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("join", "NotAdmitted", true)),
        "{reasons:?}"
    );
    let (event, reference) = told
        .iter()
        .find(|(e, _)| e.key.name == "join")
        .cloned()
        .unwrap();
    assert_eq!(reference.uid.as_deref(), Some("uid-join"));
    assert_eq!(reference.kind.as_deref(), Some("Endpoint"));

    // The leader publishes it; a repeat becomes a series (a patch).
    let (lead, leader) = watch::channel(true);
    let (tell, events) = mpsc::channel(8);
    tokio::spawn(wireway_operator::controller::events::run(
        client,
        Some("operator-0".into()),
        events,
        leader,
        Metrics::new().0,
    ));
    tell.send((event.clone(), reference.clone())).await.unwrap();
    let asked = api.answer(json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "join.1", "namespace": "other"}, "eventTime": "2026-11-23T10:00:00.000000Z"})).await;
    assert_eq!(
        (asked.method.as_str(), asked.path.as_str()),
        ("POST", "/apis/events.k8s.io/v1/namespaces/other/events")
    );
    assert_eq!(asked.body["reason"], "NotAdmitted");
    assert_eq!(asked.body["type"], "Warning");
    assert_eq!(asked.body["regarding"]["name"], "join");
    assert_eq!(asked.body["reportingController"], "wireway-operator");
    assert!(asked.body["note"].as_str().unwrap().contains("intruder"));
    tell.send((event.clone(), reference.clone())).await.unwrap();
    let asked = api.answer(json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "join.1", "namespace": "other"}})).await;
    assert_eq!(asked.method, "PATCH");
    // A standby tells nothing.
    lead.send(false).unwrap();
    tell.send((event, reference)).await.unwrap();
    api.silent().await;
}

async fn malformed_objects_get_a_condition(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let mut op = Operator::new();
    let mut broken = service(json!(["wireway.dev/cleanup"]), false);
    broken.metadata.name = Some("broken".into());
    broken.data["spec"]["cidr"] = json!(42);
    op.list(vec![
        (Kind::NetworkService, broken),
        (
            Kind::NetworkService,
            service(json!(["wireway.dev/cleanup"]), false),
        ),
        (Kind::Node, node()),
    ]);
    let published = op.published();
    assert_eq!(published.invalid.len(), 1);
    assert_eq!(published.statuses.network_services.len(), 1, "red goes on");
    let mut writer = writer(client);
    let sync = tokio::spawn(async move { writer.sync(&published).await });
    let mut paths = Vec::new();
    for _ in 0..2 {
        let asked = api.answer(written()).await;
        if asked.path.ends_with("/networkservices/broken/status") {
            assert_eq!(
                asked.content_type, "application/merge-patch+json",
                "only the condition"
            );
            let condition = &asked.body["status"]["conditions"][0];
            assert_eq!(condition["reason"], "InvalidSpec");
            assert_eq!(condition["status"], "False");
            assert!(
                condition["message"]
                    .as_str()
                    .unwrap()
                    .contains("expected a string")
            );
        }
        paths.push(asked.path);
    }
    sync.await.unwrap();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/apis/wireway.dev/v1alpha1/namespaces/red/networkservices/broken/status",
            "/apis/wireway.dev/v1alpha1/namespaces/red/networkservices/red/status",
        ]
    );
}

async fn finalizer_added_then_released_after_cleanup(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let mut op = Operator::new();
    op.list(vec![
        (
            Kind::NetworkService,
            service(json!(["example.com/keep"]), false),
        ),
        (Kind::Endpoint, endpoint()),
        (Kind::Pod, pod("red", "red-a")),
        (Kind::Node, node()),
    ]);
    op.agent(Some(1));
    let published = op.published();
    assert_eq!(published.finalizers.len(), 1);
    let mut only_finalizers = published.clone();
    only_finalizers.statuses = only_finalizers.live.clone();
    let mut writer = writer(client);
    let p = only_finalizers.clone();
    let sync = tokio::spawn(async move {
        writer.sync(&p).await;
        writer
    });
    let asked = api.answer(written()).await;
    assert_eq!(
        (asked.method.as_str(), asked.path.as_str()),
        (
            "PATCH",
            "/apis/wireway.dev/v1alpha1/namespaces/red/networkservices/red"
        )
    );
    assert_eq!(
        asked.body["metadata"]["finalizers"],
        json!(["example.com/keep", "wireway.dev/cleanup"])
    );
    assert_eq!(
        asked.body["metadata"]["resourceVersion"], "41",
        "the list is changed only as read"
    );
    let mut writer = sync.await.unwrap();

    // Deleted: it leaves the plan; the finalizer stays until node-a applied that.
    op.watch(
        Kind::NetworkService,
        watcher::Event::Apply(service(
            json!(["example.com/keep", "wireway.dev/cleanup"]),
            true,
        )),
    );
    assert!(
        op.published().finalizers.is_empty(),
        "node-a still carries red"
    );
    let without_red = op.version();
    assert!(op.hub.current("node-a").unwrap().services.is_empty());
    op.agent(Some(without_red));
    let mut released = op.published();
    assert_eq!(released.finalizers.len(), 1);
    assert!(!released.finalizers[0].add);
    released.statuses = released.live.clone();
    let sync = tokio::spawn(async move { writer.sync(&released).await });
    let asked = api.answer(written()).await;
    assert_eq!(
        asked.body["metadata"]["finalizers"],
        json!(["example.com/keep"])
    );
    sync.await.unwrap();
}

async fn leader_election(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let election = Election {
        namespace: "wireway-system".into(),
        lease: "wireway-operator".into(),
        identity: "operator-0".into(),
        duration: Duration::from_secs(15),
    };
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(client, "wireway-system");
    // Whole microseconds, as the API server stores a MicroTime.
    let now = k8s_openapi::jiff::Timestamp::from_microsecond(
        k8s_openapi::jiff::Timestamp::now().as_microsecond(),
    )
    .unwrap();
    let term = |t: k8s_openapi::jiff::Timestamp| u64::try_from(t.as_microsecond()).unwrap();
    let lease = |holder: &str, renewed: k8s_openapi::jiff::Timestamp| {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "wireway-operator", "namespace": "wireway-system", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), "acquireTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(), "leaseTransitions": 3},
        })
    };
    // No Lease yet: create it, and lead.
    let e = election.clone();
    let l = leases.clone();
    let round = tokio::spawn(async move { e.round(&l, now).await.unwrap() });
    let asked = api
        .answer_with(
            404,
            json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
        )
        .await;
    assert_eq!(
        (asked.method.as_str(), asked.path.as_str()),
        (
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/wireway-system/leases/wireway-operator"
        )
    );
    let asked = api.answer(lease("operator-0", now)).await;
    assert_eq!(
        (asked.method.as_str(), asked.path.as_str()),
        (
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/wireway-system/leases"
        )
    );
    assert_eq!(asked.body["spec"]["holderIdentity"], "operator-0");
    assert_eq!(round.await.unwrap(), Round::Leader { epoch: term(now) });
    // Someone else holds a fresh Lease: stand by, write nothing.
    let e = election.clone();
    let l = leases.clone();
    let round = tokio::spawn(async move { e.round(&l, now).await.unwrap() });
    api.answer(lease("operator-1", now)).await;
    assert_eq!(
        round.await.unwrap(),
        Round::Standby {
            holder: Some("operator-1".into())
        }
    );
    // Its Lease expired: take it over with a compare-and-swap on the resourceVersion.
    let e = election.clone();
    let round = tokio::spawn(async move { e.round(&leases, now).await.unwrap() });
    let stale = now - k8s_openapi::jiff::SignedDuration::from_secs(60);
    api.answer(lease("operator-1", stale)).await;
    let later = now + k8s_openapi::jiff::SignedDuration::from_secs(1);
    let asked = api.answer(lease("operator-0", later)).await;
    assert_eq!(asked.method, "PUT");
    assert_eq!(asked.body["metadata"]["resourceVersion"], "7");
    assert_eq!(asked.body["spec"]["holderIdentity"], "operator-0");
    assert_eq!(asked.body["spec"]["leaseTransitions"], 4);
    // Its term: the acquireTime stored, later than the one before.
    assert_eq!(round.await.unwrap(), Round::Leader { epoch: term(later) });
}

/// A TokenReview that accepts the token for `audiences` as `user`'s.
fn token_review(audiences: Value, user: Value) -> Value {
    json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "status": {"authenticated": true, "audiences": audiences, "user": user},
    })
}

/// The user of node-a's agent.
fn agent_on_node_a() -> Value {
    json!({
        "username": "system:serviceaccount:wireway-system:wireway-agent",
        "extra": {"authentication.kubernetes.io/node-name": ["node-a"]},
    })
}

const NO_PEER: Option<IpAddr> = None;

async fn agents_prove_their_node_with_a_token(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let reviewer = Arc::new(TokenReviewer::new(client, "wireway-system"));
    let r = reviewer.clone();
    let review = tokio::spawn(async move { r.node("token-a", NO_PEER).await });
    let asked = api
        .answer(token_review(json!(["wireway-operator"]), agent_on_node_a()))
        .await;
    assert_eq!(
        (asked.method.as_str(), asked.path.as_str()),
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews")
    );
    assert_eq!(asked.body["spec"]["audiences"], json!(["wireway-operator"]));
    assert_eq!(review.await.unwrap().unwrap(), "node-a");
    // Reviewed lately: no second review.
    assert_eq!(reviewer.node("token-a", NO_PEER).await.unwrap(), "node-a");
    // Another service account's token proves nothing.
    let r = reviewer.clone();
    let review = tokio::spawn(async move { r.node("token-b", NO_PEER).await });
    api.answer(token_review(
        json!(["wireway-operator"]),
        json!({"username": "system:serviceaccount:default:default"}),
    ))
    .await;
    let refused = review.await.unwrap().unwrap_err();
    assert_eq!(refused.status().code(), tonic::Code::Unauthenticated);
    assert!(
        refused
            .to_string()
            .contains("not system:serviceaccount:wireway-system:wireway-agent"),
        "{refused}"
    );
}

/// The API server accepts a token, but for other audiences (or, saying none, for
/// itself): it proves nothing here, whoever it names.
async fn a_token_for_another_audience_is_refused(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let reviewer = Arc::new(TokenReviewer::new(client, "wireway-system"));
    for (token, audiences, theirs) in [
        ("for-vault", json!(["vault"]), "vault"),
        ("for-the-api-server", json!([]), "the API server"),
        ("unsaid", Value::Null, "the API server"),
    ] {
        let r = reviewer.clone();
        let review = tokio::spawn(async move { r.node(token, NO_PEER).await });
        api.answer(token_review(audiences, agent_on_node_a())).await;
        let refused = review.await.unwrap().unwrap_err();
        assert_eq!(refused.status().code(), tonic::Code::Unauthenticated);
        let message = refused.to_string();
        assert!(
            message.contains("not for audience wireway-operator") && message.contains(theirs),
            "{message}"
        );
    }
}

/// A flood of one bad token costs one TokenReview: the refusal is remembered.
async fn a_refused_token_is_reviewed_once(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let reviewer = Arc::new(TokenReviewer::new(client, "wireway-system"));
    let r = reviewer.clone();
    let review = tokio::spawn(async move { r.node("forged", NO_PEER).await });
    api.answer(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "status": {"authenticated": false, "error": "invalid bearer token"},
    }))
    .await;
    assert!(review.await.unwrap().is_err());
    let r = reviewer.clone();
    let flood = tokio::spawn(async move {
        for _ in 0..100 {
            let refused = r.node("forged", NO_PEER).await.unwrap_err();
            assert!(
                refused.to_string().contains("invalid bearer token"),
                "{refused}"
            );
        }
    });
    api.silent().await;
    flood.await.unwrap();
}

/// A flood of distinct tokens from one address gets a burst of reviews, then
/// ResourceExhausted; another address still gets its reviews.
async fn token_reviews_are_rate_limited_per_address(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let limits = Limits {
        burst: 2,
        per_second: 0.01,
        ..Limits::default()
    };
    let reviewer = Arc::new(TokenReviewer::with_limits(client, "wireway-system", limits));
    let flooder = Some(IpAddr::from([10, 244, 1, 7]));
    let refused = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "status": {"authenticated": false},
    });
    for i in 0..2 {
        let r = reviewer.clone();
        let review = tokio::spawn(async move { r.node(&format!("guess-{i}"), flooder).await });
        api.answer(refused.clone()).await;
        assert_eq!(
            review.await.unwrap().unwrap_err().status().code(),
            tonic::Code::Unauthenticated
        );
    }
    let r = reviewer.clone();
    let flood = tokio::spawn(async move {
        for i in 2..50 {
            let throttled = r.node(&format!("guess-{i}"), flooder).await.unwrap_err();
            assert_eq!(throttled.status().code(), tonic::Code::ResourceExhausted);
        }
    });
    api.silent().await;
    flood.await.unwrap();
    // A node's agent, from its own address, is still reviewed.
    let r = reviewer.clone();
    let agent = Some(IpAddr::from([192, 0, 2, 1]));
    let review = tokio::spawn(async move { r.node("token-a", agent).await });
    api.answer(token_review(json!(["wireway-operator"]), agent_on_node_a()))
        .await;
    assert_eq!(review.await.unwrap().unwrap(), "node-a");
}

/// The status is for users the API server allows `get networkservices/status` in every
/// namespace: a SubjectAccessReview on the token's user, remembered like the token.
async fn status_readers_are_authorised_with_a_subject_access_review(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let reviewer = Arc::new(TokenReviewer::new(client, "wireway-system"));
    let admin = json!({
        "username": "system:serviceaccount:ops:status", "uid": "u-1",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:ops"],
    });
    let r = reviewer.clone();
    let read = tokio::spawn(async move { r.status_reader("admin-token", NO_PEER).await });
    api.answer(token_review(json!(["wireway-operator"]), admin))
        .await;
    let asked = api
        .answer(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {}, "status": {"allowed": true},
        }))
        .await;
    assert_eq!(
        (asked.method.as_str(), asked.path.as_str()),
        ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews")
    );
    assert_eq!(
        asked.body["spec"]["user"],
        "system:serviceaccount:ops:status"
    );
    assert_eq!(asked.body["spec"]["uid"], "u-1");
    assert_eq!(
        asked.body["spec"]["groups"][1],
        "system:serviceaccounts:ops"
    );
    assert_eq!(
        asked.body["spec"]["resourceAttributes"],
        json!({"group": "wireway.dev", "resource": "networkservices", "subresource": "status", "verb": "get"}),
        "cluster-wide: no namespace"
    );
    assert_eq!(
        read.await.unwrap().unwrap(),
        "system:serviceaccount:ops:status"
    );
    // Asked lately: no review at all.
    assert!(reviewer.status_reader("admin-token", NO_PEER).await.is_ok());

    // A tenant's token: authenticated, not authorised.
    let tenant = json!({"username": "system:serviceaccount:other:default"});
    let r = reviewer.clone();
    let read = tokio::spawn(async move { r.status_reader("tenant-token", NO_PEER).await });
    api.answer(token_review(json!(["wireway-operator"]), tenant))
        .await;
    api.answer(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {}, "status": {"allowed": false, "reason": "no RBAC policy matched"},
    }))
    .await;
    let refused = read.await.unwrap().unwrap_err();
    assert_eq!(refused.status().code(), tonic::Code::PermissionDenied);
    let message = refused.to_string();
    assert!(
        message.contains("system:serviceaccount:other:default may not read the status")
            && message
                .contains("get networkservices/status (API group wireway.dev) in every namespace")
            && message.contains("no RBAC policy matched"),
        "{message}"
    );
    // An agent's token proves a node, not an administrator.
    let r = reviewer.clone();
    let read = tokio::spawn(async move { r.status_reader("token-a", NO_PEER).await });
    api.answer(token_review(json!(["wireway-operator"]), agent_on_node_a()))
        .await;
    api.answer(json!({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {}, "status": {"allowed": false},
    }))
    .await;
    assert_eq!(
        read.await.unwrap().unwrap_err().status().code(),
        tonic::Code::PermissionDenied
    );
}

async fn watches_every_kind(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let (events, mut received) = mpsc::channel::<source::Event>(64);
    tokio::spawn(source::kubernetes::watch(client, events));
    // Every kind is listed once; then watched.
    let mut listed = BTreeSet::new();
    while listed.len() < Kind::ALL.len() {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(5), api.handle.next_request())
                .await
                .unwrap()
                .unwrap();
        let asked = api.record(request).await;
        assert_eq!(asked.method, "GET");
        if asked.query.contains("watch=true") {
            // Keep the watch open (answer nothing) so the test ends on its own terms.
            std::mem::forget(send);
            continue;
        }
        let kind = asked.path.rsplit('/').next().unwrap().to_owned();
        listed.insert(kind);
        let body = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []});
        send.send_response(Response::new(Body::from(
            serde_json::to_vec(&body).unwrap(),
        )));
    }
    assert_eq!(
        listed,
        [
            "admissions",
            "endpoints",
            "identitygrants",
            "namespaces",
            "networkservices",
            "nodes",
            "peerclusters",
            "pods",
            "servicecidrs"
        ]
        .map(str::to_owned)
        .into()
    );
    let synced = async {
        while let Some(event) = received.recv().await {
            if event == source::Event::Synced {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), synced)
        .await
        .expect("synced");
    // The watches follow.
    for _ in 0..Kind::ALL.len() {
        let Ok(Some((request, send))) =
            tokio::time::timeout(Duration::from_secs(5), api.handle.next_request()).await
        else {
            break;
        };
        api.record(request).await;
        std::mem::forget(send);
    }
}

/// An API server that does not serve ServiceCIDRs (before Kubernetes 1.33, or with the
/// API turned off): the operator syncs without them.
async fn syncs_without_service_cidrs(calls: &Calls) {
    let (client, mut api) = mock(calls);
    let (events, mut received) = mpsc::channel::<source::Event>(64);
    tokio::spawn(source::kubernetes::watch(client, events));
    let mut listed = BTreeSet::new();
    while listed.len() < Kind::ALL.len() {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(5), api.handle.next_request())
                .await
                .unwrap()
                .unwrap();
        let asked = api.record(request).await;
        if asked.query.contains("watch=true") {
            assert!(!asked.path.ends_with("/servicecidrs"), "{}", asked.path);
            std::mem::forget(send);
            continue;
        }
        let kind = asked.path.rsplit('/').next().unwrap().to_owned();
        let (code, body) = if kind == "servicecidrs" {
            let status = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "the server could not find the requested resource"});
            (404, status)
        } else {
            let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []});
            (200, list)
        };
        listed.insert(kind);
        let response = Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        send.send_response(response);
    }
    let synced = async {
        while let Some(event) = received.recv().await {
            if event == source::Event::Synced {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), synced)
        .await
        .expect("synced without ServiceCIDRs");
}

fn calls() -> Calls {
    Calls::default()
}

#[tokio::test]
async fn a_cluster_without_service_cidrs_still_syncs() {
    syncs_without_service_cidrs(&calls()).await;
}

#[tokio::test]
async fn status_patches_carry_the_field_manager_and_happen_only_on_change() {
    status_writes(&calls()).await;
}

#[tokio::test]
async fn a_standby_writes_nothing() {
    standby_writes_nothing(&calls()).await;
}

#[tokio::test]
async fn failed_writes_are_retried_by_what_failed() {
    failures_back_off_by_kind(&calls()).await;
}

#[tokio::test]
async fn admission_decisions_and_failures_are_events() {
    events_for_admission_and_failures(&calls()).await;
}

#[tokio::test]
async fn a_malformed_object_gets_a_condition_while_the_others_proceed() {
    malformed_objects_get_a_condition(&calls()).await;
}

#[tokio::test]
async fn the_finalizer_is_added_and_released_after_cleanup() {
    finalizer_added_then_released_after_cleanup(&calls()).await;
}

#[tokio::test]
async fn one_leader_at_a_time() {
    leader_election(&calls()).await;
}

#[tokio::test]
async fn tokens_prove_nodes() {
    agents_prove_their_node_with_a_token(&calls()).await;
}

#[tokio::test]
async fn a_token_for_another_audience_proves_nothing() {
    a_token_for_another_audience_is_refused(&calls()).await;
}

#[tokio::test]
async fn a_flood_of_one_bad_token_costs_one_review() {
    a_refused_token_is_reviewed_once(&calls()).await;
}

#[tokio::test]
async fn a_flood_of_guessed_tokens_is_throttled_per_address() {
    token_reviews_are_rate_limited_per_address(&calls()).await;
}

#[tokio::test]
async fn only_users_allowed_to_get_networkservices_status_read_the_status() {
    status_readers_are_authorised_with_a_subject_access_review(&calls()).await;
}

#[tokio::test]
async fn every_kind_is_watched_and_synced() {
    watches_every_kind(&calls()).await;
}

#[tokio::test]
async fn rbac_grants_exactly_what_the_operator_calls() {
    let calls = calls();
    status_writes(&calls).await;
    standby_writes_nothing(&calls).await;
    failures_back_off_by_kind(&calls).await;
    events_for_admission_and_failures(&calls).await;
    malformed_objects_get_a_condition(&calls).await;
    finalizer_added_then_released_after_cleanup(&calls).await;
    leader_election(&calls).await;
    agents_prove_their_node_with_a_token(&calls).await;
    status_readers_are_authorised_with_a_subject_access_review(&calls).await;
    watches_every_kind(&calls).await;
    let called: BTreeSet<_> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| rbac::permission(&c.method, &c.path, c.watch).unwrap())
        .collect();
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/rbac/operator.yaml"
    ))
    .unwrap();
    let granted = rbac::granted(&yaml, "wireway-operator");
    let missing: Vec<_> = called.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&called).collect();
    assert!(
        missing.is_empty(),
        "config/rbac/operator.yaml lacks {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "config/rbac/operator.yaml grants what the operator never calls: {extra:?}"
    );
}
