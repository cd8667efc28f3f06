//! The operator binary against a real API server (the test control plane), running as its
//! own ServiceAccount under the ClusterRole and Role of config/rbac/operator.yaml, applied
//! as they are: real authorisation, not admin. The objects are config/samples/, with
//! their pods bound to two nodes whose agents' keys are on the Node objects.
//!
//! Each test starts a control plane of its own: an operator watches every namespace and
//! writes to every Wireway object it sees, so two tests' operators on one control plane
//! would write each other's objects (and the Lease and compaction tests change the
//! control plane itself). Under `cargo nextest` every test has its own process, and so
//! its own control plane, anyway.
//!
//! Waiting is by polling with a deadline, for convergence only; a test that gives up says
//! what it waited for, what it saw last, and the ends of the operators' logs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by panicking

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use wireway_operator::kind::Kind;
use wireway_operator::source::kubernetes::resource;
use wireway_operator::testing::{KEY_A, KEY_B, hello};
use wireway_proto::node_api_client::NodeApiClient;
use wireway_proto::{AgentHello, AgentReport};
use wireway_runtime::listen::grpc_channel;
use wireway_runtime::pki::{self, Subject};
use wireway_runtime::tls::{BearerToken, OPERATOR_SERVER_NAME, TlsArgs};
use wireway_testkit::ControlPlane;
use wireway_testkit::objects::{config, namespace, repo};

const OPERATOR: &str = env!("CARGO_BIN_EXE_wireway-operator");
/// The operator's namespace, as config/rbac/ names it.
const SYSTEM: &str = "wireway-system";
/// The Wireway kinds whose statuses the operator writes (namespaced, in the samples).
const WIREWAY: [Kind; 3] = [Kind::NetworkService, Kind::Endpoint, Kind::Admission];
/// How long convergence may take on a busy 2-core machine.
const CONVERGE: Duration = Duration::from_secs(90);
/// How long a takeover may take: the Lease (15 s) expires, then a standby's round (every
/// 5 s) finds it so.
const TAKEOVER: Duration = Duration::from_secs(90);

/// A control plane with the CRDs, config/rbac/operator.yaml and agent.yaml, certificates
/// for the operator's gRPC port, and a token of the operator's ServiceAccount.
struct Cluster {
    cp: ControlPlane,
    dir: tempfile::TempDir,
    /// The operator's kubeconfig: its ServiceAccount's token, nothing else.
    kubeconfig: PathBuf,
}

impl Cluster {
    /// `None` (skipped) without the control plane's binary.
    fn start(test: &str, args: &[&str]) -> Option<Self> {
        let cp = ControlPlane::start_with(test, args)?;
        let crds: Vec<String> = [
            "networkservices",
            "endpoints",
            "admissions",
            "identitygrants",
            "peerclusters",
        ]
        .iter()
        .map(|c| repo().join(format!("crds/{c}.yaml")).display().to_string())
        .collect();
        let mut apply = vec!["apply", "--server-side"];
        for crd in &crds {
            apply.extend(["-f", crd]);
        }
        cp.kubectl(&apply)
            .unwrap_or_else(|e| panic!("the CRDs: {e}"));
        cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ])
        .unwrap_or_else(|e| panic!("the CRDs are not Established: {e}"));
        let mut objects = vec![namespace(SYSTEM)];
        objects.extend(config("config/rbac/operator.yaml", &[]));
        objects.extend(config("config/rbac/agent.yaml", &[]));
        cp.apply(&objects);
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        pki::create_ca_in(&ca, "cluster.local").unwrap();
        let names = vec![OPERATOR_SERVER_NAME.to_owned()];
        pki::issue_into(
            &ca,
            &dir.path().join("operator"),
            "cluster.local",
            &Subject::Operator(names),
        )
        .unwrap();
        let token = cp.token(SYSTEM, "wireway-operator", &["--duration", "2h"]);
        let kubeconfig = cp.kubeconfig_for(&token, None);
        Some(Self {
            cp,
            dir,
            kubeconfig,
        })
    }

    /// An operator named `identity` with the operator's kubeconfig.
    fn operator(&self, identity: &str) -> Operator {
        self.operator_with(identity, &self.kubeconfig)
    }

    /// An operator named `identity` with `kubeconfig`: token authentication for agents,
    /// no grace for agents (the Nodes carry their keys), its ports on Unix sockets.
    fn operator_with(&self, identity: &str, kubeconfig: &Path) -> Operator {
        let dir = self.dir.path();
        let tls = dir.join("operator");
        let socket = dir.join(format!("{identity}.sock"));
        let http = dir.join(format!("{identity}-http.sock"));
        let log = dir.join(format!("{identity}.log"));
        let child = Command::new(OPERATOR)
            .arg("--listen-grpc")
            .arg(format!("unix:{}", socket.display()))
            .arg("--listen-http")
            .arg(format!("unix:{}", http.display()))
            .args(["--namespace", SYSTEM, "--identity", identity])
            .args(["--agent-grace", "0", "--agent-auth", "token"])
            .arg("--tls-ca")
            .arg(tls.join("ca.crt"))
            .arg("--tls-cert")
            .arg(tls.join("tls.crt"))
            .arg("--tls-key")
            .arg(tls.join("tls.key"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("failed to run {OPERATOR}: {e}"));
        Operator {
            child,
            identity: identity.to_owned(),
            socket,
            http,
            log,
        }
    }

    /// config/samples/ with their pods bound: red-a, green-a, bridge and intruder on
    /// node-a, the others on node-b; the two Nodes with their agents' keys and underlay
    /// addresses.
    fn apply_samples(&self) {
        let mut objects = vec![
            node("node-a", KEY_A, "192.0.2.1"),
            node("node-b", KEY_B, "192.0.2.2"),
        ];
        let dir = repo().join("config/samples");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for file in files {
            let relative = file.strip_prefix(repo()).unwrap().display().to_string();
            for mut object in config(&relative, &[]) {
                if object["kind"] == "Pod" {
                    let name = object["metadata"]["name"].as_str().unwrap_or_default();
                    let on = if matches!(name, "red-a" | "green-a" | "bridge" | "intruder") {
                        "node-a"
                    } else {
                        "node-b"
                    };
                    object["spec"]["nodeName"] = on.into();
                }
                objects.push(object);
            }
        }
        self.cp.apply(&objects);
    }

    /// The objects of `kind` in every namespace, by "namespace/name".
    async fn objects(&self, kind: Kind) -> BTreeMap<String, DynamicObject> {
        let api: Api<DynamicObject> = Api::all_with(self.cp.client().await, &resource(kind));
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|o| (key(&o), o))
            .collect()
    }

    /// Every Wireway object of the samples, by "Kind namespace/name".
    async fn wireway(&self) -> BTreeMap<String, DynamicObject> {
        let mut all = BTreeMap::new();
        for kind in WIREWAY {
            for (k, o) in self.objects(kind).await {
                all.insert(format!("{} {k}", kind.name()), o);
            }
        }
        all
    }

    /// The holder of the operator's Lease.
    async fn leader(&self) -> Option<String> {
        let api: Api<Lease> = Api::namespaced(self.cp.client().await, SYSTEM);
        api.get_opt("wireway-operator")
            .await
            .unwrap()
            .and_then(|l| l.spec?.holder_identity)
    }

    /// Polls `check` until it says `Ok`, for at most `timeout`; then fails saying what it
    /// waited for, its last answer, and the ends of the logs of `operators`.
    async fn until<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        operators: &[&Operator],
        mut check: F,
    ) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            match check().await {
                Ok(value) => return value,
                Err(last) if Instant::now() > deadline => {
                    let logs: String = operators
                        .iter()
                        .map(|o| format!("\n{} said:\n{}", o.identity, o.log_tail()))
                        .collect();
                    panic!(
                        "waited {} s for {what}; last: {last}\n{logs}\ncontrol plane:\n{}",
                        timeout.as_secs(),
                        self.cp.log_tail()
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    /// Waits until every Wireway object's status describes its generation and every
    /// NetworkService has the finalizer (written by the leader), and returns them.
    async fn converged(&self, operators: &[&Operator]) -> BTreeMap<String, DynamicObject> {
        self.until(
            "every Wireway object's status to describe its generation",
            CONVERGE,
            operators,
            || async {
                let all = self.wireway().await;
                let behind: Vec<&String> = all
                    .iter()
                    .filter(|(k, o)| {
                        let finalized = !k.starts_with("NetworkService ")
                            || o.metadata.finalizers.as_deref()
                                == Some(&["wireway.dev/cleanup".to_owned()]);
                        o.data["status"]["observedGeneration"].as_i64() != o.metadata.generation
                            || ready(o).is_none()
                            || !finalized
                    })
                    .map(|(k, _)| k)
                    .collect();
                if all.is_empty() || !behind.is_empty() {
                    return Err(format!("{} objects; not yet: {behind:?}", all.len()));
                }
                Ok(all)
            },
        )
        .await
    }
}

/// "namespace/name" of an object.
fn key(o: &DynamicObject) -> String {
    format!(
        "{}/{}",
        o.metadata.namespace.as_deref().unwrap_or_default(),
        o.metadata.name.as_deref().unwrap_or_default()
    )
}

/// A Node with its agent's key and underlay address (as its agent publishes them).
fn node(name: &str, key: &str, underlay: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "annotations": {
        "wireway.dev/public-key": key, "wireway.dev/underlay-address": underlay}}})
}

/// A NetworkService with a /24 per node.
fn service(namespace: &str, name: &str, cidr: &str) -> Value {
    json!({"apiVersion": "wireway.dev/v1alpha1", "kind": "NetworkService",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"cidr": cidr, "nodePrefixLength": 24}})
}

/// An object's Ready condition.
fn ready(o: &DynamicObject) -> Option<&Value> {
    o.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

/// (status, reason) of an object's Ready condition.
fn readiness(o: &DynamicObject) -> (String, String) {
    let c = ready(o).cloned().unwrap_or_default();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (text(&c["status"]), text(&c["reason"]))
}

/// A running operator, killed (SIGKILL) when dropped.
struct Operator {
    child: Child,
    identity: String,
    /// The node API (and status API): gRPC with TLS.
    socket: PathBuf,
    /// Metrics and health.
    http: PathBuf,
    log: PathBuf,
}

impl Operator {
    /// SIGKILL: no chance to step down or finish a write.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..]
            .iter()
            .map(|l| format!("    {l}\n"))
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGSTOP or SIGCONT: a leader held still, as on a busy node.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.identity);
    }

    /// The body of `GET path` on its HTTP port, if it answers 200.
    async fn get(&self, path: &str) -> Result<String, String> {
        let mut stream = tokio::net::UnixStream::connect(&self.http)
            .await
            .map_err(|e| format!("{}: {e}", self.http.display()))?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: operator\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        match answer.split_once("\r\n\r\n") {
            Some((head, body))
                if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
            {
                Ok(body.to_owned())
            }
            _ => Err(answer),
        }
    }

    /// How many objects of `kind` its last plan had (its metric `objects`).
    async fn objects(&self, kind: &str) -> Result<u64, String> {
        let metrics = self.get("/metrics").await?;
        metrics
            .lines()
            .find(|l| {
                l.starts_with("wireway_operator_objects{") && l.contains(&format!("\"{kind}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .ok_or(format!("no objects of kind {kind} in\n{metrics}"))
    }

    /// Whether it planned: `/readyz` answers 200 (it leads) or says it is a standby (only
    /// the leader is ready, so that the Service sends agents to it).
    async fn planned(&self) -> Result<(), String> {
        match self.get("/readyz").await {
            Err(answer) if !answer.contains("a standby: ") => Err(answer),
            _ => Ok(()),
        }
    }

    /// Whether `/readyz` answers 200: its sources synced, it planned and it leads.
    async fn ready(&self) -> Result<(), String> {
        self.get("/readyz").await.map(|_| ())
    }

    /// A node API client presenting `token` (as the agent's `BearerToken` does, from a
    /// file), trusting the operator's CA.
    async fn agent(
        &self,
        dir: &Path,
        token: &str,
    ) -> NodeApiClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
    > {
        let file = dir.join(format!("{}.token", wireway_testkit::unique_name("agent")));
        std::fs::write(&file, token).unwrap();
        let pem = TlsArgs {
            ca: dir.join("operator/ca.crt"),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            insecure_plaintext: false,
        }
        .load_ca()
        .unwrap()
        .unwrap();
        let target = format!("unix:{}", self.socket.display());
        let channel = grpc_channel(&target, Some(pem.client(OPERATOR_SERVER_NAME)), |e| {
            e.connect_timeout(Duration::from_secs(5))
        })
        .await
        .unwrap_or_else(|e| panic!("failed to connect to {target}: {e:?}"));
        NodeApiClient::with_interceptor(channel, BearerToken(Some(file)))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The owner of every status field is the operator's field manager, by server-side apply
/// on the status subresource, owning status fields only (and the finalizer is its too);
/// `observedGeneration` follows a spec change; the samples' conditions say what the
/// planner decided (no agent has applied anything: the services and their Endpoints are
/// Progressing, the intruder is NotAdmitted, the Admissions are Ready); and the admission
/// decisions are recorded as events.k8s.io/v1 Events on the Endpoints, by an operator
/// that planned them as a standby (the Lease held by a replica that is gone) and wrote
/// nothing until it took the Lease over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_are_applied_by_the_operators_field_manager_with_conditions_and_events() {
    let Some(cluster) = Cluster::start(
        "statuses_are_applied_by_the_operators_field_manager_with_conditions_and_events",
        &[],
    ) else {
        return;
    };
    cluster.apply_samples();
    // The Lease is still held by a replica that is gone: this operator plans as a
    // standby first, writing nothing, and must announce everything once it leads.
    let now = k8s_openapi::jiff::Timestamp::now();
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("wireway-operator".into()),
            namespace: Some(SYSTEM.into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("operator-gone".into()),
            lease_duration_seconds: Some(20),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(cluster.cp.client().await, SYSTEM)
        .create(&Default::default(), &lease)
        .await
        .unwrap();
    let operator = cluster.operator("operator-a");
    cluster
        .until(
            "operator-a synced and planned",
            CONVERGE,
            &[&operator],
            || operator.planned(),
        )
        .await;
    let written: Vec<String> = cluster
        .wireway()
        .await
        .into_iter()
        .filter(|(_, o)| !o.data["status"].is_null())
        .map(|(k, _)| k)
        .collect();
    if cluster.leader().await.as_deref() == Some("operator-gone") {
        assert_eq!(written, Vec::<String>::new(), "a standby wrote statuses");
    } else {
        eprintln!(
            "note: operator-a took the Lease over before it had planned: it never planned as a standby"
        );
    }
    let all = cluster.converged(&[&operator]).await;
    assert_eq!(cluster.leader().await.as_deref(), Some("operator-a"));

    for (name, object) in &all {
        let entries = object.metadata.managed_fields.clone().unwrap_or_default();
        let status_owners: Vec<_> = entries
            .iter()
            .filter(|e| {
                e.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.get("f:status").is_some())
            })
            .collect();
        assert!(!status_owners.is_empty(), "{name}: nobody owns its status");
        for entry in &status_owners {
            assert_eq!(
                entry.manager.as_deref(),
                Some("wireway-operator"),
                "{name}: {entry:?}"
            );
            assert_eq!(
                entry.operation.as_deref(),
                Some("Apply"),
                "{name}: {entry:?}"
            );
            assert_eq!(
                entry.subresource.as_deref(),
                Some("status"),
                "{name}: {entry:?}"
            );
            let owned: Vec<&String> = entry
                .fields_v1
                .as_ref()
                .unwrap()
                .0
                .as_object()
                .unwrap()
                .keys()
                .collect();
            assert_eq!(
                owned,
                ["f:status"],
                "{name}: the operator owns only status fields"
            );
        }
        // Every write of the operator's is under its field manager (the finalizer too).
        for entry in &entries {
            let fields = entry
                .fields_v1
                .as_ref()
                .map(|f| f.0.clone())
                .unwrap_or_default();
            if !fields["f:metadata"]["f:finalizers"].is_null() {
                assert_eq!(
                    entry.manager.as_deref(),
                    Some("wireway-operator"),
                    "{name}: the finalizer's writer: {entry:?}"
                );
            }
        }
    }

    let expected = [
        ("NetworkService red/red", "False", "Progressing"),
        ("NetworkService green/green", "False", "Progressing"),
        ("Endpoint red/red-members", "False", "Progressing"),
        ("Endpoint other/join-red", "False", "NotAdmitted"),
        ("Admission green/admit-red-bridge", "True", "Ready"),
    ];
    for (name, status, reason) in expected {
        let object = all
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", all.keys()));
        assert_eq!(
            readiness(object),
            (status.to_owned(), reason.to_owned()),
            "{name}: {}",
            object.data["status"]
        );
    }
    let red = &all["NetworkService red/red"].data["status"];
    assert_eq!(red["nodeCount"], 2, "{red}");
    let prefixes: Vec<&str> = red["nodePrefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    assert_eq!(prefixes, ["node-a", "node-b"], "{red}");

    // A spec change: the generation moves, and the status follows it.
    cluster
        .cp
        .kubectl(&[
            "patch", "endpoint.wireway.dev", "red-members", "-n", "red", "--type", "merge", "-p",
            r#"{"spec":{"podSelector":{"matchLabels":null,"matchExpressions":[{"key":"net","operator":"In","values":["red"]}]}}}"#,
        ])
        .unwrap();
    cluster
        .until(
            "red/red-members' status to describe generation 2",
            CONVERGE,
            &[&operator],
            || async {
                let all = cluster.objects(Kind::Endpoint).await;
                let members = &all["red/red-members"];
                let status = &members.data["status"];
                let condition = ready(members).cloned().unwrap_or_default();
                if members.metadata.generation == Some(2)
                    && status["observedGeneration"] == 2
                    && condition["observedGeneration"] == 2
                {
                    Ok(())
                } else {
                    Err(format!(
                        "generation {:?}, status {status}",
                        members.metadata.generation
                    ))
                }
            },
        )
        .await;

    // Events: the intruder's refusal, a Warning on other/join-red, by this operator.
    let events = cluster
        .until(
            "a NotAdmitted event on other/join-red",
            CONVERGE,
            &[&operator],
            || async {
                let api: Api<Event> = Api::namespaced(cluster.cp.client().await, "other");
                let events = api
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let found: Vec<Event> = events
                    .items
                    .into_iter()
                    .filter(|e| {
                        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("join-red")
                    })
                    .collect();
                if found
                    .iter()
                    .any(|e| e.reason.as_deref() == Some("NotAdmitted"))
                {
                    Ok(found)
                } else {
                    Err(format!("{found:?}"))
                }
            },
        )
        .await;
    let event = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("NotAdmitted"))
        .unwrap();
    assert_eq!(event.type_.as_deref(), Some("Warning"), "{event:?}");
    assert_eq!(
        event.reporting_controller.as_deref(),
        Some("wireway-operator"),
        "{event:?}"
    );
    assert_eq!(
        event.reporting_instance.as_deref(),
        Some("operator-a"),
        "{event:?}"
    );
    let regarding = event.regarding.as_ref().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("Endpoint"), "{event:?}");
    assert_eq!(
        regarding.uid, all["Endpoint other/join-red"].metadata.uid,
        "{event:?}"
    );
    assert!(
        event
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("intruder"),
        "{event:?}"
    );
}

/// Two operators on one Lease: the leader is killed (SIGKILL, no stepping down), the
/// standby takes the Lease over, and what the objects hold does not move: not a status,
/// not a condition's lastTransitionTime, not an allocated prefix or address, and not a
/// single write to them (their resourceVersions stay). The new leader does write: a
/// service created after the takeover gets its status.
///
/// Two changes (a service's Ready turning False, a new service) are planned by the
/// standby a second before the leader (held stopped meanwhile) plans them and writes
/// their statuses: their transition times differ, and the standby must take the
/// leader's, which the objects hold, not its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_the_lease_over_from_a_killed_leader_and_statuses_do_not_flap() {
    let Some(cluster) = Cluster::start(
        "a_standby_takes_the_lease_over_from_a_killed_leader_and_statuses_do_not_flap",
        &[],
    ) else {
        return;
    };
    cluster.apply_samples();
    let mut a = cluster.operator("operator-a");
    cluster
        .until("operator-a to hold the Lease", CONVERGE, &[&a], || async {
            match cluster.leader().await {
                Some(holder) if holder == "operator-a" => Ok(()),
                other => Err(format!("held by {other:?}")),
            }
        })
        .await;
    let b = cluster.operator("operator-b");
    cluster.converged(&[&a, &b]).await;
    cluster
        .until("operator-b synced and planned", CONVERGE, &[&a, &b], || {
            b.planned()
        })
        .await;
    let standby = b.ready().await.expect_err("a standby is not ready");
    assert!(standby.contains("a standby: operator-a leads"), "{standby}");

    // blue, a service without members (Ready), planned and written as usual.
    cluster
        .cp
        .apply(&[namespace("blue"), service("blue", "blue", "10.150.0.0/16")]);
    let services = cluster
        .until("operator-b to plan blue", CONVERGE, &[&a, &b], || async {
            match b.objects("NetworkService").await? {
                3 => Ok(3),
                n => Err(format!("{n} NetworkServices")),
            }
        })
        .await;
    cluster.converged(&[&a, &b]).await;
    // While the leader is held still, the standby plans two changes: blue gets a member
    // (its Ready turns False: Progressing), and a new service, indigo, arrives. The
    // leader plans them after the next whole second (transition times are whole
    // seconds), so its transition times differ from the standby's, and the standby must
    // take the leader's.
    let endpoints = b.objects("Endpoint").await.unwrap();
    a.signal("STOP");
    cluster.cp.apply(&[
        json!({"apiVersion": "wireway.dev/v1alpha1", "kind": "Endpoint",
               "metadata": {"name": "members", "namespace": "blue"},
               "spec": {"networkService": {"name": "blue"},
                        "podSelector": {"matchLabels": {"net": "blue"}}}}),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "blue-a", "namespace": "blue", "labels": {"net": "blue"}},
               "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "busybox"}]}}),
        namespace("indigo"),
        service("indigo", "indigo", "10.170.0.0/16"),
    ]);
    cluster
        .until(
            "operator-b to plan blue's member and indigo",
            CONVERGE,
            &[&a, &b],
            || async {
                let now = (
                    b.objects("NetworkService").await?,
                    b.objects("Endpoint").await?,
                );
                if now == (services + 1, endpoints + 1) {
                    Ok(())
                } else {
                    Err(format!("(NetworkServices, Endpoints): {now:?}"))
                }
            },
        )
        .await;
    let planned = k8s_openapi::jiff::Timestamp::now().as_second();
    while k8s_openapi::jiff::Timestamp::now().as_second() <= planned + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.signal("CONT");
    let before = cluster.converged(&[&a, &b]).await;
    let blue = &before["NetworkService blue/blue"];
    assert_eq!(
        readiness(blue),
        ("False".into(), "Progressing".into()),
        "{}",
        blue.data
    );
    assert!(
        before.contains_key("NetworkService indigo/indigo"),
        "{:?}",
        before.keys()
    );
    assert_eq!(cluster.leader().await.as_deref(), Some("operator-a"));

    a.kill();
    cluster
        .until(
            "operator-b to hold the Lease",
            TAKEOVER,
            &[&a, &b],
            || async {
                match cluster.leader().await {
                    Some(holder) if holder == "operator-b" => Ok(()),
                    other => Err(format!("held by {other:?}")),
                }
            },
        )
        .await;
    cluster
        .until("operator-b ready, leading", TAKEOVER, &[&a, &b], || {
            b.ready()
        })
        .await;
    // The new leader writes: a service created now gets its status.
    cluster.cp.apply(&[
        namespace("violet"),
        service("violet", "violet", "10.160.0.0/16"),
    ]);
    cluster
        .until(
            "violet/violet's status, from the new leader",
            CONVERGE,
            &[&a, &b],
            || async {
                let all = cluster.objects(Kind::NetworkService).await;
                let violet = all.get("violet/violet").ok_or("no violet/violet")?;
                ready(violet).map(|_| ()).ok_or(format!("{}", violet.data))
            },
        )
        .await;
    let after = cluster.wireway().await;
    for (name, old) in &before {
        let new = after.get(name).unwrap_or_else(|| panic!("{name} is gone"));
        assert_eq!(
            new.data["status"], old.data["status"],
            "{name}: the status moved when operator-b took over"
        );
        assert_eq!(
            new.metadata.resource_version, old.metadata.resource_version,
            "{name} was written to when operator-b took over: before {:?}, after {:?}",
            old.metadata, new.metadata
        );
    }
}

/// The finalizer wireway.dev/cleanup goes on every NetworkService; deleting one that no
/// connected agent carries releases it (nothing to wait for) and the object goes; deleting
/// a namespace with a NetworkService, Endpoints and an Admission in it completes (the
/// namespace controller deletes them, the operator releases the finalizer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_finalizer_is_released_and_a_namespace_deletion_completes() {
    let Some(cluster) = Cluster::start(
        "the_finalizer_is_released_and_a_namespace_deletion_completes",
        &[],
    ) else {
        return;
    };
    cluster.apply_samples();
    let operator = cluster.operator("operator-a");
    let ops = [&operator];
    for service in ["red/red", "green/green"] {
        cluster
            .until(
                &format!("the finalizer on {service}"),
                CONVERGE,
                &ops,
                || async {
                    let all = cluster.objects(Kind::NetworkService).await;
                    let finalizers = all.get(service).and_then(|s| s.metadata.finalizers.clone());
                    if finalizers.as_deref() == Some(&["wireway.dev/cleanup".to_owned()]) {
                        Ok(())
                    } else {
                        Err(format!("finalizers {finalizers:?}"))
                    }
                },
            )
            .await;
    }

    cluster
        .cp
        .kubectl(&[
            "delete",
            "networkservice.wireway.dev",
            "green",
            "-n",
            "green",
            "--wait=false",
        ])
        .unwrap();
    cluster
        .until("green/green to be gone", CONVERGE, &ops, || async {
            let all = cluster.objects(Kind::NetworkService).await;
            match all.get("green/green") {
                None => Ok(()),
                Some(green) => Err(format!("still there: {:?}", green.metadata)),
            }
        })
        .await;

    cluster
        .cp
        .kubectl(&["delete", "namespace", "red", "--wait=false"])
        .unwrap();
    cluster
        .until("namespace red to be gone", CONVERGE, &ops, || async {
            // The control plane has no kubelet: as one would, let the pods go (the
            // namespace controller deletes them gracefully, and waits for that).
            let _ = cluster.cp.kubectl(&[
                "delete",
                "pods",
                "--all",
                "-n",
                "red",
                "--grace-period=0",
                "--force",
                "--wait=false",
            ]);
            match cluster
                .cp
                .kubectl(&["get", "namespace", "red", "-o", "json"])
            {
                Err(e) if e.contains("NotFound") => Ok(()),
                Err(e) => Err(e),
                Ok(ns) => {
                    let left = cluster.wireway().await;
                    let left: Vec<String> = left
                        .iter()
                        .filter(|(k, _)| k.contains(" red/"))
                        .map(|(k, o)| {
                            format!(
                                "{k} (finalizers {:?}, deleting since {:?})",
                                o.metadata.finalizers, o.metadata.deletion_timestamp
                            )
                        })
                        .collect();
                    Err(format!("still there, holding {left:?}: {ns}"))
                }
            }
        })
        .await;
}

/// A Pod of the agent's DaemonSet (service account wireway-agent) on `node`.
fn agent_pod(name: &str, node: &str, account: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": SYSTEM},
           "spec": {"nodeName": node, "serviceAccountName": account,
                    "containers": [{"name": "agent", "image": "wireway-agent"}]}})
}

/// Agents prove their node to the operator (`--agent-auth token`) with their pod's
/// service-account token, which the operator checks with a TokenReview for its own
/// audience under its real RBAC: a token for the API server's audience, one not bound to
/// a pod, and one of another service account are refused as unauthenticated; a proper
/// token of a pod on node-a cannot claim node-b; proper tokens are served their nodes'
/// states, and once their agents report them applied the services are Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_tokens_are_reviewed_for_the_operators_audience_and_their_pods_node() {
    let Some(cluster) = Cluster::start(
        "agents_tokens_are_reviewed_for_the_operators_audience_and_their_pods_node",
        &[],
    ) else {
        return;
    };
    cluster.apply_samples();
    cluster.cp.apply(&[
        agent_pod("agent-a", "node-a", "wireway-agent"),
        agent_pod("agent-b", "node-b", "wireway-agent"),
        agent_pod("impostor", "node-a", "default"),
    ]);
    let operator = cluster.operator("operator-a");
    let ops = [&operator];
    cluster.converged(&ops).await;
    cluster
        .until("the operator ready", CONVERGE, &ops, || operator.ready())
        .await;
    let dir = cluster.dir.path();
    let for_operator = ["--audience", "wireway-operator"];
    let token = |account: &str, pod: Option<&str>, audience: bool| {
        let mut args: Vec<&str> = Vec::new();
        if audience {
            args.extend(for_operator);
        }
        if let Some(pod) = pod {
            args.extend(["--bound-object-kind", "Pod", "--bound-object-name", pod]);
        }
        cluster.cp.token(SYSTEM, account, &args)
    };
    let refused = |status: tonic::Status, code: tonic::Code, says: &str| {
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(says),
            "{:?} should say {says:?}",
            status.message()
        );
    };

    let hello_b = AgentHello {
        public_key: KEY_B.into(),
        underlay_address: "192.0.2.2".into(),
        ..hello("node-b")
    };
    let cases = [
        (
            "for the API server's audience",
            token("wireway-agent", Some("agent-a"), false),
            hello("node-a"),
            tonic::Code::Unauthenticated,
            "audience wireway-operator",
        ),
        (
            "not bound to a pod",
            token("wireway-agent", None, true),
            hello("node-a"),
            tonic::Code::Unauthenticated,
            "not bound to a pod",
        ),
        (
            "another service account's, bound to a pod on node-a",
            token("default", Some("impostor"), true),
            hello("node-a"),
            tonic::Code::Unauthenticated,
            "not system:serviceaccount:wireway-system:wireway-agent's",
        ),
        (
            "bound to a pod on node-a, claiming node-b",
            token("wireway-agent", Some("agent-a"), true),
            hello_b.clone(),
            tonic::Code::PermissionDenied,
            "proves node node-a, not node node-b",
        ),
    ];
    for (what, token, hello, code, says) in cases {
        let mut agent = operator.agent(dir, &token).await;
        match agent.watch(hello).await {
            Ok(_) => panic!("a token {what} is accepted"),
            Err(status) => refused(status, code, says),
        }
    }

    // Proper tokens: each agent gets its own node's state, reports it applied, and the
    // services (and the Endpoints of their members) turn Ready.
    let mut streams = Vec::new();
    for (pod, hello) in [("agent-a", hello("node-a")), ("agent-b", hello_b)] {
        let node = hello.node.clone();
        let mut agent = operator
            .agent(dir, &token("wireway-agent", Some(pod), true))
            .await;
        let mut stream = agent
            .watch(hello)
            .await
            .unwrap_or_else(|e| panic!("{pod}'s proper token is refused: {e:?}"))
            .into_inner();
        let state = tokio::time::timeout(CONVERGE, stream.message())
            .await
            .unwrap_or_else(|_| panic!("no state for {node} within {} s", CONVERGE.as_secs()))
            .unwrap()
            .unwrap();
        assert_eq!(state.node, node);
        assert!(
            !state.services.is_empty(),
            "{node} carries services: {state:?}"
        );
        agent
            .report(AgentReport {
                node: node.clone(),
                applied_version: state.version,
                // The leader counts only versions of its own epoch as applied.
                applied_epoch: state.epoch,
                ..AgentReport::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{pod}'s report is refused: {e:?}"));
        streams.push((agent, stream));
    }
    cluster
        .until(
            "red and green Ready, and red's members",
            CONVERGE,
            &ops,
            || async {
                let all = cluster.wireway().await;
                let not_ready: Vec<String> = [
                    "NetworkService red/red",
                    "NetworkService green/green",
                    "Endpoint red/red-members",
                    "Endpoint green/green-members",
                ]
                .iter()
                .filter(|k| all.get(**k).map(readiness) != Some(("True".into(), "Ready".into())))
                .map(|k| {
                    format!(
                        "{k}: {:?}",
                        all.get(*k).map(|o| &o.data["status"]["conditions"])
                    )
                })
                .collect();
                if not_ready.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{not_ready:?}"))
                }
            },
        )
        .await;
    drop(streams);
}

/// A TCP proxy between the operator and the API server that the test can cut: while cut,
/// every connection through it is dropped and new ones are closed at once.
struct Proxy {
    address: SocketAddr,
    open: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (open, is_open) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut is_open = is_open.clone();
                if !*is_open.borrow_and_update() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = is_open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Self { address, open }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

/// The operator's watches expire while it is away from the API server: changes are made
/// (a member's pod deleted, another added), etcd is compacted past them, the Endpoint's
/// spec changes and one more pod arrives; back, its watches resume from a
/// resourceVersion that is gone (410 Gone: the control plane runs without the watch
/// cache, as the test must for etcd's compaction to reach watches), re-list, and the
/// status shows every one of those changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_expires_is_recovered_without_losing_an_update() {
    let Some(cluster) = Cluster::start(
        "a_watch_that_expires_is_recovered_without_losing_an_update",
        &["--apiserver-arg=--watch-cache=false"],
    ) else {
        return;
    };
    cluster.apply_samples();
    let server = cluster.cp.server();
    let upstream: SocketAddr = server
        .strip_prefix("https://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the API server is at {server}"));
    let proxy = Proxy::start(upstream).await;
    let token = cluster
        .cp
        .token(SYSTEM, "wireway-operator", &["--duration", "2h"]);
    let kubeconfig = cluster
        .cp
        .kubeconfig_for(&token, Some(&format!("https://{}", proxy.address)));
    let operator = cluster.operator_with("operator-a", &kubeconfig);
    let ops = [&operator];
    cluster.converged(&ops).await;
    let members = |all: &BTreeMap<String, DynamicObject>| -> Vec<(String, bool)> {
        all["red/red-members"].data["status"]["members"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                (
                    m["workload"].as_str().unwrap_or_default().to_owned(),
                    m["address"].is_string(),
                )
            })
            .collect()
    };
    let before = members(&cluster.objects(Kind::Endpoint).await);
    assert_eq!(
        before,
        [
            ("bridge".into(), true),
            ("red-a".into(), true),
            ("red-b".into(), true)
        ],
        "red/red-members before"
    );

    proxy.cut();
    let red_pod = |name: &str, node: &str, net: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "red", "labels": {"net": net}},
               "spec": {"nodeName": node, "containers": [{"name": "app", "image": "busybox"}]}})
    };
    cluster
        .cp
        .kubectl(&[
            "delete",
            "pod",
            "red-b",
            "-n",
            "red",
            "--grace-period=0",
            "--force",
        ])
        .unwrap();
    cluster.cp.apply(&[red_pod("red-c", "node-a", "red")]);
    let compacted = cluster.cp.compact();
    eprintln!("compacted etcd to revision {compacted}");
    cluster
        .cp
        .kubectl(&[
            "patch",
            "endpoint.wireway.dev",
            "red-members",
            "-n",
            "red",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"podSelector":{"matchLabels":null,"matchExpressions":[{"key":"net","operator":"In","values":["red","rouge"]}]}}}"#,
        ])
        .unwrap();
    cluster.cp.apply(&[red_pod("red-d", "node-b", "rouge")]);
    proxy.restore();

    let expected = [
        ("bridge".to_owned(), true),
        ("red-a".to_owned(), true),
        ("red-c".to_owned(), true),
        ("red-d".to_owned(), true),
    ];
    cluster
        .until(
            "red/red-members to show every change made while the operator was away",
            CONVERGE,
            &ops,
            || async {
                let all = cluster.objects(Kind::Endpoint).await;
                let endpoint = &all["red/red-members"];
                let now = members(&all);
                if now == expected && endpoint.data["status"]["observedGeneration"] == 2 {
                    Ok(())
                } else {
                    Err(format!(
                        "members {now:?}, generation {:?}, status {}",
                        endpoint.metadata.generation, endpoint.data["status"]
                    ))
                }
            },
        )
        .await;
    // The watches of the kinds that changed did expire: otherwise this proved nothing.
    let log = operator.log();
    for kind in ["Pod", "Endpoint"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("kind={kind} ")) && l.contains("too old")),
            "the operator's watch of {kind}s did not expire (no 410 Gone in its log), so this \
             test proved nothing:\n{}",
            operator.log_tail()
        );
    }
}
