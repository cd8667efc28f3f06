//! `wireway lab` for real: network namespaces, the operator and agents as processes,
//! userspace WireGuard, real pings. Each test runs its own lab (its own name and
//! directory) and removes it, also when it fails.
//!
//! These tests need root. Under CI they must run: without root they fail there, and
//! elsewhere they say they were skipped.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use wireway_operator::engine::store::Store;

const WIREWAY: &str = env!("CARGO_BIN_EXE_wireway");
static NEXT: AtomicU32 = AtomicU32::new(0);

use wireway_testkit::control_plane::ControlPlane;
use wireway_testkit::root_or_skip;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/samples")
}

/// `.tools/bin/kubectl` (`make tools`), beside the test control plane.
fn kubectl_binary() -> PathBuf {
    ControlPlane::binary().with_file_name("kubectl")
}

/// A lab of this test's own, removed on drop.
struct Lab {
    name: String,
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Lab {
    fn new() -> Self {
        let bin_dir = Path::new(WIREWAY).parent().unwrap();
        for binary in ["wireway-operator", "wireway-agent"] {
            assert!(
                bin_dir.join(binary).is_file(),
                "{binary} is not built beside {WIREWAY}: run `cargo build --workspace --bins` (make test does)"
            );
        }
        let name = format!(
            "t{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let parent = tempfile::Builder::new()
            .prefix("wwlab")
            .tempdir_in("/tmp")
            .unwrap();
        Self {
            name,
            dir: parent.path().join("lab"),
            _parent: parent,
        }
    }

    /// `wireway lab start`: whatever is not running is started again.
    fn start(&self) {
        let out = self.wireway(&["start"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn wireway(&self, args: &[&str]) -> Output {
        let mut command = Command::new(WIREWAY);
        command
            .args(["lab", "--name", &self.name, "--dir"])
            .arg(&self.dir)
            .args(args);
        command.output().unwrap()
    }

    /// `wireway lab up DIR --json`: the measured matrix, and whether it exited 0.
    fn up(&self, manifests: &Path) -> (Value, bool) {
        self.up_with(manifests, &[])
    }

    /// `wireway lab up DIR --json` with more arguments.
    fn up_with(&self, manifests: &Path, more: &[&str]) -> (Value, bool) {
        let mut args = vec![
            "up",
            manifests.to_str().unwrap(),
            "--json",
            "--timeout",
            "90",
        ];
        args.extend(more);
        let out = self.wireway(&args);
        (matrix_of(&out), out.status.success())
    }

    /// `wireway lab matrix --json`.
    fn matrix(&self) -> (Value, bool) {
        let out = self.wireway(&["matrix", "--json"]);
        (matrix_of(&out), out.status.success())
    }

    /// Measures until `accept` takes the matrix (the lab follows files in well under a
    /// second; this leaves room for a loaded machine).
    fn matrix_until(&self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (matrix, as_expected) = self.matrix();
            if as_expected && accept(&matrix) {
                return matrix;
            }
            assert!(Instant::now() < deadline, "{what}: last matrix {matrix:#}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `wireway lab up --kubernetes --operators N` of the samples, with the test control
    /// plane and `.tools/bin/kubectl`: the measured matrix (it must be as planned).
    fn up_kubernetes(&self, operators: usize) -> Value {
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
        let control_plane = ControlPlane::binary();
        let out = self.wireway(&[
            "up",
            samples().to_str().unwrap(),
            "--kubernetes",
            "--operators",
            &operators.to_string(),
            "--control-plane",
            control_plane.to_str().unwrap(),
            "--kubectl",
            kubectl_binary().to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--json",
            "--timeout",
            "180",
        ]);
        let matrix = matrix_of(&out);
        assert!(
            out.status.success(),
            "lab up --kubernetes: {matrix:#}\n{}",
            String::from_utf8_lossy(&out.stderr),
        );
        matrix
    }

    /// `kubectl` with the lab's control plane's administrator: whether it succeeded, and
    /// what it said.
    fn kubectl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(kubectl_binary())
            .args(args)
            .env(
                "KUBECONFIG",
                self.dir.join("control-plane/admin.kubeconfig"),
            )
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    fn record(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("lab.json")).unwrap()).unwrap()
    }

    /// `wireway status -o json` with the lab's administrator certificate.
    fn status(&self) -> Value {
        let out = self.status_as("admin").output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// `wireway status -o json` against the lab's operator, with the certificate in
    /// `pki/<who>` (`admin`, `nodes/<node>`).
    fn status_as(&self, who: &str) -> Command {
        self.status_command("operator.sock", who)
    }

    /// `wireway status -o json` against the operator whose gRPC port is `socket` in the
    /// lab's directory, with the certificate in `pki/<who>`.
    fn status_command(&self, socket: &str, who: &str) -> Command {
        let socket = format!("unix:{}", self.dir.join(socket).display());
        let pki = self.dir.join("pki").join(who);
        let mut command = Command::new(WIREWAY);
        command
            .args(["status", "--operator", &socket, "-o", "json"])
            .arg("--tls-ca")
            .arg(pki.join("ca.crt"))
            .arg("--tls-cert")
            .arg(pki.join("tls.crt"))
            .arg("--tls-key")
            .arg(pki.join("tls.key"));
        command
    }

    /// `wireway status -o json` of the operator whose gRPC port is `socket` in the lab's
    /// directory (`operator.sock`: the one agents reach; `operator-1.sock`: that one),
    /// with the administrator's certificate (and with `--kubernetes`, the lab's token
    /// for the status): `None` while it does not answer.
    fn status_of(&self, socket: &str) -> Option<Value> {
        let mut command = self.status_command(socket, "admin");
        let token = self.dir.join("status-token");
        if token.is_file() {
            command.arg("--token-file").arg(token);
        }
        let out = command.output().unwrap();
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())?
    }

    /// The lab's record, `None` while it is not written yet.
    fn try_record(&self) -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("lab.json")).ok()?).ok()
    }

    fn netns(&self, pod: &str) -> String {
        self.record()["pods"][pod]["netns"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn node_netns(&self, node: &str) -> String {
        self.record()["nodes"][node]["netns"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn pid(&self, role: &str) -> u32 {
        self.record()["processes"][role].as_u64().unwrap() as u32
    }

    fn log(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.wireway(&["down"]);
        if !out.status.success() {
            eprintln!("lab down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

fn matrix_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no matrix: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The cells of a matrix: (from, to, service) -> (expected, reached).
fn cells(matrix: &Value) -> BTreeMap<(String, String, String), (bool, bool)> {
    let rows = matrix["rows"].as_array().unwrap();
    let columns = matrix["columns"].as_array().unwrap();
    let mut out = BTreeMap::new();
    for (r, row) in rows.iter().enumerate() {
        for (c, column) in columns.iter().enumerate() {
            let expected = &matrix["expected"][r][c];
            let reached = &matrix["reached"][r][c];
            if let (Some(e), Some(g)) = (expected.as_bool(), reached.as_bool()) {
                let key = (
                    row.as_str().unwrap().to_owned(),
                    column["workload"].as_str().unwrap().to_owned(),
                    column["service"].as_str().unwrap().to_owned(),
                );
                out.insert(key, (e, g));
            }
        }
    }
    out
}

fn reaches(matrix: &Value, from: &str, to: &str, service: &str) -> Option<bool> {
    cells(matrix)
        .get(&(from.into(), to.into(), service.into()))
        .map(|(_, reached)| *reached)
}

fn rows(matrix: &Value) -> Vec<String> {
    matrix["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

fn promtool(metrics: &str) {
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is needed: .ci/run installs it");
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scrape(socket: &Path) -> String {
    let out = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(socket)
        .arg("http://lab/metrics")
        .output()
        .expect("curl is needed");
    assert!(out.status.success(), "scraping {}", socket.display());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_samples_reach_as_the_seeds_say() {
    if !root_or_skip("the_samples_reach_as_the_seeds_say") {
        return;
    }
    let lab = Lab::new();
    let (matrix, ok) = lab.up(&samples());
    assert!(ok, "lab up: the matrix differs from the plan: {matrix:#}");
    assert_eq!(matrix["asExpected"], true);
    // Red reaches red, green reaches green, bridge reaches both, across nodes.
    assert_eq!(
        reaches(&matrix, "red/red-a", "red/red-b", "red/red"),
        Some(true)
    );
    assert_eq!(
        reaches(&matrix, "red/red-a", "red/bridge", "red/red"),
        Some(true)
    );
    assert_eq!(
        reaches(&matrix, "green/green-a", "green/green-b", "green/green"),
        Some(true)
    );
    assert_eq!(
        reaches(&matrix, "red/bridge", "green/green-a", "green/green"),
        Some(true)
    );
    assert_eq!(
        reaches(&matrix, "green/green-b", "red/bridge", "green/green"),
        Some(true)
    );
    assert_eq!(
        reaches(&matrix, "red/bridge", "red/red-b", "red/red"),
        Some(true)
    );
    // Nothing else reaches anything: across services, from outside, the refused.
    assert_eq!(
        reaches(&matrix, "red/red-a", "green/green-a", "green/green"),
        Some(false)
    );
    assert_eq!(
        reaches(&matrix, "green/green-a", "red/bridge", "red/red"),
        Some(false)
    );
    for target in ["red/red-a", "red/bridge"] {
        assert_eq!(
            reaches(&matrix, "other/loner", target, "red/red"),
            Some(false)
        );
        assert_eq!(
            reaches(&matrix, "other/intruder", target, "red/red"),
            Some(false)
        );
    }
    let refused = matrix["notAdmitted"].to_string();
    assert!(
        refused.contains("other/intruder is not in red/red: NotAdmitted"),
        "{refused}"
    );
    let externals = matrix["externals"].to_string();
    assert!(externals.contains("red/backup-vm") && externals.contains("green/partner-reporter"));
    let all = cells(&matrix);
    assert_eq!(all.len(), 36);
    assert!(all.values().all(|(expected, reached)| expected == reached));
    assert_eq!(all.values().filter(|(e, _)| *e).count(), 12);

    // Statuses: every service and admitted Endpoint Ready, the intruder's not.
    let status = lab.status();
    for service in status["networkServices"].as_array().unwrap() {
        assert_eq!(
            service["status"]["conditions"][0]["status"], "True",
            "{service:#}"
        );
    }
    let join_red = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["metadata"]["name"] == "join-red")
        .unwrap();
    assert_eq!(join_red["status"]["conditions"][0]["reason"], "NotAdmitted");

    // A healthy start counts no error: none for the operator starting with the agents,
    // and on the nodes carrying green only one, once, for the partner's host name, which
    // does not resolve in the lab (its peer is set without an endpoint and can still
    // connect in); not one per pass either a few seconds on.
    let errors = |status: &Value| -> BTreeMap<String, Vec<(String, u64)>> {
        let nodes = status["nodes"].as_array().unwrap().iter();
        nodes
            .map(|node| {
                let errors = node["errors"].as_array().unwrap().iter();
                let counted = errors.map(|e| {
                    let message = e["lastMessage"].as_str().unwrap();
                    if e["category"] == "state" {
                        assert!(message.contains("reporter.partner.example"), "{e:#}");
                    }
                    let category = e["category"].as_str().unwrap().to_owned();
                    (category, e["count"].as_u64().unwrap())
                });
                (node["name"].as_str().unwrap().to_owned(), counted.collect())
            })
            .collect()
    };
    let at_start = errors(&status);
    for node in status["nodes"].as_array().unwrap() {
        let name = node["name"].as_str().unwrap();
        let services = node["services"].as_array().unwrap();
        let expected = if services.iter().any(|s| s == "green/green") {
            vec![("state".to_owned(), 1)]
        } else {
            vec![]
        };
        assert_eq!(at_start[name], expected, "{name}: {at_start:?}");
    }
    // The agents' own counters (their reports to the operator come every 10 s), after
    // three passes more of each node still meeting the name.
    std::thread::sleep(Duration::from_secs(3));
    for (node, counted) in &at_start {
        let metrics = scrape(&lab.dir.join("nodes").join(node).join("http.sock"));
        let now: Vec<(String, u64)> = metrics
            .lines()
            .filter_map(|line| line.strip_prefix("wireway_agent_errors_total{category=\""))
            .filter_map(|rest| rest.split_once("\"} "))
            .map(|(category, count)| (category.to_owned(), count.trim().parse().unwrap()))
            .filter(|(_, count)| *count > 0)
            .collect();
        assert_eq!(&now, counted, "{node}: errors counted again");
    }

    // The status is the administrator's: a node's certificate is refused, and the HTTP
    // port, which any pod may reach, does not serve it.
    let record = lab.record();
    let node = record["nodes"].as_object().unwrap().keys().next().unwrap();
    let out = lab.status_as(&format!("nodes/{node}")).output().unwrap();
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && refused.contains("PermissionDenied"),
        "{refused}"
    );
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(lab.dir.join("operator-http.sock"))
        .arg("http://lab/status")
        .output()
        .expect("curl is needed");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");

    // Both binaries' metrics, scraped for real, pass promtool.
    promtool(&scrape(&lab.dir.join("operator-http.sock")));
    for node in lab.record()["nodes"].as_object().unwrap().keys() {
        let metrics = scrape(&lab.dir.join("nodes").join(node).join("http.sock"));
        assert!(
            metrics.contains("wireway_agent_peer_receive_bytes_total{"),
            "{metrics}"
        );
        promtool(&metrics);
    }
}

/// `wireway lab up --kubernetes`: the samples applied to a real API server (the test
/// control plane), the lab as the nodes' kubelets, the operator and agents in Kubernetes
/// mode with their ServiceAccounts' tokens, pods found by UID in cgroups of both
/// layouts. The matrix is the samples' own; then it follows `kubectl apply` and
/// `kubectl delete`, and kubectl shows the objects' Ready columns and events.
#[test]
fn the_samples_reach_as_the_seeds_say_through_a_real_api_server() {
    let test = "the_samples_reach_as_the_seeds_say_through_a_real_api_server";
    if !root_or_skip(test) || !ControlPlane::available(test) {
        return;
    }
    let lab = Lab::new();
    let matrix = lab.up_kubernetes(1);
    let all = cells(&matrix);
    assert_eq!(all.len(), 36, "{matrix:#}");
    assert!(all.values().all(|(expected, reached)| expected == reached));
    assert_eq!(all.values().filter(|(e, _)| *e).count(), 12);
    assert_eq!(
        reaches(&matrix, "red/red-a", "red/red-b", "red/red"),
        Some(true)
    );
    assert_eq!(
        reaches(&matrix, "other/intruder", "red/red-a", "red/red"),
        Some(false)
    );

    // Pods were found by UID in cgroups of both layouts (pods run on nodes of each), by
    // agents with no other way.
    let record = lab.record();
    let layout = |node: &str| {
        record["kubernetes"]["cgroups"][node]["layout"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let layouts: BTreeSet<String> = record["pods"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| layout(p["node"].as_str().unwrap()))
        .collect();
    assert_eq!(
        layouts,
        BTreeSet::from(["cgroupfsV1".to_owned(), "systemdV2".to_owned()])
    );
    for (key, pod) in record["pods"].as_object().unwrap() {
        let cgroup = pod["cgroup"].as_str().unwrap();
        let uid = pod["uid"].as_str().unwrap();
        assert!(
            cgroup.contains(uid) || cgroup.contains(&uid.replace('-', "_")),
            "{key}: {cgroup}"
        );
    }

    let kubectl = |args: &[&str]| lab.kubectl(args);
    // kubectl shows the objects with their Ready columns, and the operator's events.
    let (_, services) = kubectl(&["get", "nsvc", "-A"]);
    assert!(
        services.contains("READY") && services.contains("True"),
        "{services}"
    );
    // The pods as their kubelet reports them: Running, their containers ready.
    let (_, pods) = kubectl(&["get", "pods", "-n", "red"]);
    assert!(pods.contains("1/1") && pods.contains("Running"), "{pods}");
    let (_, endpoints) = kubectl(&["get", "nsep", "-n", "other", "join-red", "-o", "wide"]);
    assert!(endpoints.contains("NotAdmitted"), "{endpoints}");
    let (_, events) = kubectl(&["get", "events", "-n", "other"]);
    assert!(events.contains("NotAdmitted"), "{events}");
    // The agents annotated their Nodes, with their own pods' tokens.
    let (_, nodes) = kubectl(&["get", "nodes", "-o", "json"]);
    let nodes: Value = serde_json::from_str(&nodes).unwrap();
    for node in nodes["items"].as_array().unwrap() {
        assert!(
            node["metadata"]["annotations"]["wireway.dev/public-key"].is_string(),
            "{node:#}"
        );
    }

    // kubectl apply: a member joins red, scheduled and run by the lab.
    let manifests = tempfile::tempdir().unwrap();
    write(manifests.path(), "red-c.yaml", &red_pod("red-c", None));
    let red_c = manifests.path().join("red-c.yaml");
    let (ok, said) = kubectl(&["apply", "-f", red_c.to_str().unwrap()]);
    assert!(ok, "{said}");
    lab.matrix_until("red-c joins red", |m| {
        reaches(m, "red/red-c", "red/red-a", "red/red") == Some(true)
            && reaches(m, "red/bridge", "red/red-c", "red/red") == Some(true)
    });
    // kubectl delete: a member leaves green, and its deletion completes.
    let (ok, said) = kubectl(&["delete", "pod", "-n", "green", "green-b", "--timeout=60s"]);
    assert!(ok, "{said}");
    lab.matrix_until("green-b leaves", |m| {
        !rows(m).contains(&"green/green-b".to_owned())
    });
    assert!(lab.record()["pods"].get("green/green-b").is_none());
}

/// Each member's address, by (workload, service), as the matrix's columns show them.
fn addresses(matrix: &Value) -> BTreeMap<(String, String), String> {
    matrix["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let key = (
                c["workload"].as_str().unwrap().to_owned(),
                c["service"].as_str().unwrap().to_owned(),
            );
            (key, c["address"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// Each admitted member's address, by (workload, service), as an operator's status shows
/// them (its Endpoints' statuses): members the operator has planned, whether or not the
/// matrix could ping them yet.
fn member_addresses(status: &Value) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for endpoint in status["endpoints"].as_array().into_iter().flatten() {
        let namespace = endpoint["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        let reference = &endpoint["spec"]["networkService"];
        let service = format!(
            "{}/{}",
            reference["namespace"].as_str().unwrap_or(namespace),
            reference["name"].as_str().unwrap_or_default()
        );
        let members = endpoint["status"]["members"]
            .as_array()
            .into_iter()
            .flatten();
        for member in members {
            if member["admitted"] == true
                && member["node"].is_string()
                && let (Some(workload), Some(address)) =
                    (member["workload"].as_str(), member["address"].as_str())
            {
                let key = (format!("{namespace}/{workload}"), service.clone());
                out.insert(key, address.to_owned());
            }
        }
    }
    out
}

/// Every member's address as seen so far, by (workload, service): a member shown later
/// with another address has moved.
#[derive(Debug, Default)]
struct Seen(BTreeMap<(String, String), String>);

impl Seen {
    fn saw(&mut self, addresses: BTreeMap<(String, String), String>, when: &str) {
        for (member, address) in addresses {
            let first = self
                .0
                .entry(member.clone())
                .or_insert_with(|| address.clone());
            assert_eq!(*first, address, "{member:?} moved {when}");
        }
    }
}

/// Whether an operator's status shows every node of the lab at the state the operator
/// planned for it: its agent connected, and the version it applied equal to the one
/// planned, above 0. The operator counts an applied version only when the state was of
/// its own term (its epoch): a state another leader numbered is not its version.
fn all_applied(lab: &Lab, status: &Value) -> bool {
    let Some(record) = lab.try_record() else {
        return false;
    };
    let shown = status["nodes"].as_array().cloned().unwrap_or_default();
    let at_planned = |name: &str| {
        shown.iter().any(|n| {
            n["name"] == name
                && n["connected"] == true
                && n["desiredVersion"].as_u64() > Some(0)
                && n["appliedVersion"] == n["desiredVersion"]
        })
    };
    status["ready"] == true
        && record["nodes"]
            .as_object()
            .is_some_and(|nodes| !nodes.is_empty() && nodes.keys().all(|n| at_planned(n)))
}

/// Polls the status on the operator socket `socket` every 100 ms until it shows every
/// node at its planned state ([`all_applied`]), noting the member addresses it shows in
/// `seen`: when it did, or the last versions shown ([`versions`]) at `deadline`.
fn all_applied_by(
    lab: &Lab,
    socket: &str,
    seen: &mut Seen,
    deadline: Instant,
) -> Result<Instant, String> {
    loop {
        let status = lab.status_of(socket);
        if let Some(status) = &status {
            seen.saw(member_addresses(status), "under the new leader");
            if all_applied(lab, status) {
                return Ok(Instant::now());
            }
        }
        if Instant::now() >= deadline {
            return Err(versions(status.as_ref()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each node's versions in a status, `node: applied/desired`, for messages.
fn versions(status: Option<&Value>) -> String {
    let Some(status) = status else {
        return "no status".to_owned();
    };
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    let shown: Vec<String> = nodes
        .iter()
        .map(|n| {
            format!(
                "{}: {}/{}{}",
                n["name"].as_str().unwrap_or_default(),
                n["appliedVersion"],
                n["desiredVersion"],
                if n["connected"] == true {
                    ""
                } else {
                    " (not connected)"
                }
            )
        })
        .collect();
    format!("ready: {}; {}", status["ready"], shown.join(", "))
}

/// What a pod of [`stream_changes`] ends as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Joined {
    /// A member of red (a pod of namespace red labelled `net: red`).
    Red,
    /// A member of green (a pod of namespace green labelled `net: green`).
    Green,
    /// A pod of namespace red relabelled out of red after it joined.
    Left,
}

/// Changes applied with `kubectl apply`, one after another, about a second apart, until
/// `done` says so (given how many were made; `made` counts them): new pods join red or
/// green, and every fourth change relabels a pod of the stream out of red. Returns each
/// pod of the stream, `namespace/name`, with what it ends as.
fn stream_changes(
    lab: &Lab,
    made: &AtomicUsize,
    done: impl Fn(usize) -> bool,
) -> Vec<(String, Joined)> {
    let manifests = tempfile::tempdir().unwrap();
    let mut pods: Vec<(String, Joined)> = Vec::new();
    let mut index = 0;
    while !done(index) {
        let name = format!("s{index}");
        let (namespace, manifest, change) = match index % 4 {
            1 => ("green", pod("green", &name, "green"), (name, Joined::Green)),
            3 => {
                // The red pod of three changes ago leaves: its label changes.
                let joined = format!("s{}", index - 3);
                let manifest = pod("red", &joined, "none");
                ("red", manifest, (joined, Joined::Left))
            }
            _ => ("red", pod("red", &name, "red"), (name, Joined::Red)),
        };
        let file = manifests.path().join(format!("{index}.yaml"));
        std::fs::write(&file, manifest).unwrap();
        let (ok, said) = lab.kubectl(&["apply", "-f", file.to_str().unwrap()]);
        assert!(ok, "change {index}: {said}");
        let key = format!("{namespace}/{}", change.0);
        match pods.iter_mut().find(|(p, _)| *p == key) {
            Some(known) => known.1 = change.1,
            None => pods.push((key, change.1)),
        }
        index += 1;
        made.store(index, Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(1));
    }
    pods
}

/// Whether the matrix shows what [`stream_changes`] made of `pod`: a member of red
/// reaching red's members and reached by them, likewise in green, or (left) a pod that
/// is no member and reaches none of red.
fn in_effect(matrix: &Value, pod: &str, joined: Joined) -> bool {
    match joined {
        Joined::Red => {
            reaches(matrix, pod, "red/red-a", "red/red") == Some(true)
                && reaches(matrix, "red/red-b", pod, "red/red") == Some(true)
        }
        Joined::Green => {
            reaches(matrix, pod, "green/green-a", "green/green") == Some(true)
                && reaches(matrix, "green/green-b", pod, "green/green") == Some(true)
        }
        Joined::Left => {
            rows(matrix).iter().any(|r| r == pod)
                && reaches(matrix, pod, "red/red-a", "red/red") == Some(false)
                && !addresses(matrix)
                    .keys()
                    .any(|(workload, _)| workload == pod)
        }
    }
}

/// Sets its flag when dropped (also when the test panics).
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Two operators on the Lease (`--operators 2`: only the leader is ready, and agents
/// reach the ready one), pings every 10 ms across nodes in both services, and a stream of
/// changes (`kubectl apply`: pods join red and green, pods leave red by their label)
/// about one a second, from before the leader is SIGKILLed until after the other has
/// taken the Lease over. The killed one is started again (a new pod, a new identity) and
/// stands by.
///
/// No ping is lost; no member's address ever differs from the first one shown for it
/// (the old leader's statuses, the new leader's, the matrices); the new leader's status,
/// asked of it, shows every node at the version it planned, counted only for states of
/// its own term (its epoch: a version another leader numbered does not count); and
/// after the stream, every change is in the matrix and every node still at the new
/// leader's version. How long after the kill each of those held is printed.
#[test]
fn killing_the_leading_operator_loses_no_packet_and_moves_no_address() {
    let test = "killing_the_leading_operator_loses_no_packet_and_moves_no_address";
    if !root_or_skip(test) || !ControlPlane::available(test) {
        return;
    }
    let lab = Lab::new();
    let before = lab.up_kubernetes(2);
    let leader = || {
        let (ok, holder) = lab.kubectl(&[
            "get",
            "lease",
            "-n",
            "wireway-system",
            "wireway-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        assert!(ok, "{holder}");
        holder
    };
    let old = leader();
    let role = ["operator-0", "operator-1"]
        .into_iter()
        .find(|r| old.starts_with(&format!("{}-{r}-", lab.name)))
        .unwrap_or_else(|| panic!("the Lease is held by {old}"));
    let standby = if role == "operator-0" {
        "operator-1"
    } else {
        "operator-0"
    };
    let address = |workload: &str, service: &str| {
        addresses(&before)[&(workload.to_owned(), service.to_owned())].clone()
    };
    let record = lab.record();
    let node = |pod: &str| record["pods"][pod]["node"].as_str().unwrap().to_owned();
    assert_ne!(
        node("red/red-a"),
        node("red/red-b"),
        "the pings cross nodes"
    );
    assert_ne!(node("green/green-a"), node("green/green-b"));
    let flows = [
        ping_flood(&lab.netns("red/red-a"), &address("red/red-b", "red/red")),
        ping_flood(
            &lab.netns("green/green-a"),
            &address("green/green-b", "green/green"),
        ),
    ];
    let mut seen = Seen::default();
    seen.saw(addresses(&before), "in the first matrix");
    std::thread::sleep(Duration::from_secs(1));

    let made = AtomicUsize::new(0);
    let last = AtomicUsize::new(usize::MAX);
    let abandoned = AtomicBool::new(false);
    let (stream, killed, made_before, took_over, caught_up) = std::thread::scope(|scope| {
        // A failing test stops the stream.
        let _stop = SetOnDrop(&abandoned);
        let stream = scope.spawn(|| {
            stream_changes(&lab, &made, |n| {
                abandoned.load(Ordering::SeqCst) || n >= last.load(Ordering::SeqCst)
            })
        });
        // The stream under way (the leader plans its first changes), then the kill.
        let deadline = Instant::now() + Duration::from_secs(60);
        while made.load(Ordering::SeqCst) < 2 {
            if let Some(status) = lab.status_of("operator.sock") {
                seen.saw(member_addresses(&status), "under the first leader");
            }
            assert!(!stream.is_finished(), "the stream stopped");
            assert!(Instant::now() < deadline, "the stream did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let killed = Instant::now();
        let made_before = made.load(Ordering::SeqCst);
        Command::new("kill")
            .args(["-KILL", &lab.pid(role).to_string()])
            .status()
            .unwrap();
        // The standby takes the Lease over; the stream goes on for three more changes.
        loop {
            let holder = leader();
            if holder.starts_with(&format!("{}-{standby}-", lab.name)) {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "the Lease is still held by {holder}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let took_over = killed.elapsed();
        last.store(made.load(Ordering::SeqCst) + 3, Ordering::SeqCst);
        // The killed one is started again, as a Deployment replaces it, and stands by.
        lab.start();
        // Every agent at the new leader's state, by the new leader's own account.
        let new_leader = format!("{standby}.sock");
        let caught_up = all_applied_by(
            &lab,
            &new_leader,
            &mut seen,
            killed + Duration::from_secs(60),
        )
        .unwrap_or_else(|v| {
            panic!("not every agent at the new leader's state 60 s after the kill: {v}")
        }) - killed;
        let stream = stream
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        (stream, killed, made_before, took_over, caught_up)
    });
    let streamed = made.load(Ordering::SeqCst);
    let ended = killed.elapsed();
    assert!(
        streamed >= made_before + 3,
        "{streamed} changes, {made_before} before the kill"
    );

    // Every change of the stream in the mesh, and every node at the new leader's version
    // after the last.
    let after = lab.matrix_until("the stream's changes under the new leader", |m| {
        stream
            .iter()
            .all(|(pod, joined)| in_effect(m, pod, *joined))
    });
    let new_leader = format!("{standby}.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    let settled = all_applied_by(&lab, &new_leader, &mut seen, deadline)
        .unwrap_or_else(|v| panic!("not every agent at the new leader's last state: {v}"))
        - killed;
    seen.saw(addresses(&after), "in the last matrix");
    eprintln!(
        "{streamed} changes streamed, {made_before} before the kill, the last {:.1} s after it; \
         the Lease taken over {:.1} s after the kill; every agent at the new leader's state \
         (applied version of its term = planned, every node) {:.1} s after it; the stream's \
         changes in the matrix and every agent at the new leader's last state {:.1} s after it",
        ended.as_secs_f64(),
        took_over.as_secs_f64(),
        caught_up.as_secs_f64(),
        settled.as_secs_f64(),
    );
    std::thread::sleep(Duration::from_secs(1));
    for flow in flows.map(stop) {
        assert!(flow.sent > 100, "{flow:?}");
        flow.assert_none_lost(&format!("{flow:?}"));
    }
    // The members of the first matrix are all still there, where they were.
    let now = addresses(&after);
    for (member, address) in addresses(&before) {
        assert_eq!(now.get(&member), Some(&address), "{member:?} moved");
    }
}

/// The samples' files (not the lab of several clusters below them) in a directory of the
/// test's own, to change.
fn copy_samples() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(samples()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Replaces a file the way editors do: a new file renamed over the old.
fn write(dir: &Path, name: &str, text: &str) {
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, dir.join(name)).unwrap();
}

/// A Pod that asks to join red (by its label), pinned to `node` if given.
fn red_pod(name: &str, node: Option<&str>) -> String {
    let pin = node.map_or_else(String::new, |node| format!("nodeName: {node}, "));
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: red, labels: {{net: red}}}}\n\
         spec: {{{pin}containers: [{{name: app, image: busybox}}]}}\n"
    )
}

/// A Pod of `namespace` labelled `net: <net>`.
fn pod(namespace: &str, name: &str, net: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\n\
         metadata: {{name: {name}, namespace: {namespace}, labels: {{net: {net}}}}}\n\
         spec: {{containers: [{{name: app, image: busybox}}]}}\n"
    )
}

#[test]
fn the_matrix_follows_the_manifests() {
    if !root_or_skip("the_matrix_follows_the_manifests") {
        return;
    }
    let manifests = copy_samples();
    let dir = manifests.path();
    let lab = Lab::new();
    let (matrix, ok) = lab.up(dir);
    assert!(ok, "{matrix:#}");

    // A member joins red.
    write(dir, "70-red-c.yaml", &red_pod("red-c", None));
    let matrix = lab.matrix_until("red-c joins red", |m| {
        reaches(m, "red/red-c", "red/red-a", "red/red") == Some(true)
            && reaches(m, "red/bridge", "red/red-c", "red/red") == Some(true)
    });
    assert_eq!(
        reaches(&matrix, "red/red-c", "green/green-a", "green/green"),
        Some(false)
    );

    // A member leaves green: green-b's Pod is removed.
    let green = std::fs::read_to_string(dir.join("20-green.yaml")).unwrap();
    let without_b = green
        .split("\n---\n")
        .filter(|d| !d.contains("name: green-b"))
        .collect::<Vec<_>>();
    write(dir, "20-green.yaml", &without_b.join("\n---\n"));
    lab.matrix_until("green-b leaves", |m| {
        !rows(m).contains(&"green/green-b".to_owned())
    });

    // An Admission changes: green no longer admits bridge.
    let bridge = std::fs::read_to_string(dir.join("30-bridge.yaml")).unwrap();
    let endpoint_only = bridge.split("\n---\n").next().unwrap();
    write(dir, "30-bridge.yaml", endpoint_only);
    let matrix = lab.matrix_until("bridge loses green", |m| {
        reaches(m, "red/bridge", "green/green-a", "green/green") == Some(false)
            && m["notAdmitted"]
                .to_string()
                .contains("red/bridge is not in green/green")
    });
    assert_eq!(
        reaches(&matrix, "red/bridge", "red/red-a", "red/red"),
        Some(true),
        "red stays"
    );

    // A node is added, with a pod pinned to it.
    write(
        dir,
        "80-edge.yaml",
        &format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: edge}}\n---\n{}",
            red_pod("edge-red", Some("edge"))
        ),
    );
    let before_break = lab.matrix_until("the edge node joins red", |m| {
        reaches(m, "red/edge-red", "red/red-a", "red/red") == Some(true)
            && reaches(m, "red/red-b", "red/edge-red", "red/red") == Some(true)
    });
    assert!(lab.record()["nodes"]["edge"].is_object());

    // A file breaks: nothing changes, and the operator says where.
    let red = std::fs::read_to_string(dir.join("10-red.yaml")).unwrap();
    write(
        dir,
        "10-red.yaml",
        &format!("{red}\n---\nkind: [this is not YAML\n"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let problem = loop {
        let problems = lab.status()["problems"].clone();
        if let Some(p) = problems.as_array().and_then(|p| p.first()).cloned() {
            break p;
        }
        assert!(Instant::now() < deadline, "the broken file is not reported");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        problem["location"]
            .as_str()
            .unwrap()
            .ends_with("10-red.yaml"),
        "{problem}"
    );
    assert!(problem["line"].as_u64().is_some(), "{problem}");
    let (after_break, ok) = lab.matrix();
    assert!(ok);
    assert_eq!(
        cells(&after_break),
        cells(&before_break),
        "the broken file changed the mesh"
    );
}

/// Pings `address` from a namespace every 10 ms until stopped.
/// A ping every 10 ms; its replies go to a file, so it never waits for a reader.
fn ping_flood(netns: &str, address: &str) -> (Child, tempfile::NamedTempFile) {
    let log = tempfile::NamedTempFile::new().unwrap();
    let ping = Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-n", "-i", "0.01", address])
        .stdout(log.reopen().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (ping, log)
}

/// What a ping saw, by sequence number.
#[derive(Debug)]
struct Flow {
    sent: u64,
    /// The highest sequence number answered.
    last: u64,
    /// Sequence numbers below `last` that were never answered: lost packets.
    /// Those after `last` were still in flight when the ping was stopped.
    holes: Vec<u64>,
}

impl Flow {
    /// Asserts that no packet was lost: none unanswered before the last answered, and
    /// only the last few, in flight when the ping stopped, after it (the callers let the
    /// flow run a second or more after what they test). A flow that died for good has a
    /// long unanswered tail, not holes.
    fn assert_none_lost(&self, what: &str) {
        assert!(
            self.holes.is_empty(),
            "{what}: {} of {} pings lost: {:?}",
            self.holes.len(),
            self.sent,
            self.holes
        );
        assert!(
            self.sent - self.last <= 20,
            "{what}: the last {} of {} pings were not answered",
            self.sent - self.last,
            self.sent
        );
    }
}

/// A flow that stopped being answered for good loses its packets, though none is missing
/// before the last answered (the check the lab tests rely on, without a lab).
#[test]
#[should_panic(expected = "the last 400 of 500 pings were not answered")]
fn a_flow_that_died_for_good_counts_as_lost() {
    let dead = Flow {
        sent: 500,
        last: 100,
        holes: Vec::new(),
    };
    dead.assert_none_lost("dead");
}

/// Stops a ping with SIGINT and reads its replies.
fn stop((mut ping, log): (Child, tempfile::NamedTempFile)) -> Flow {
    let _ = Command::new("kill")
        .args(["-INT", &ping.id().to_string()])
        .status();
    ping.wait().unwrap();
    let text = std::fs::read_to_string(log.path()).unwrap();
    let summary = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let sent = summary
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable ping summary: {summary}"));
    let answered: BTreeSet<u64> = text
        .lines()
        .filter(|l| l.contains(" bytes from "))
        .filter_map(|l| l.split("icmp_seq=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    let last = answered.last().copied().unwrap_or(0);
    let holes = (1..last).filter(|seq| !answered.contains(seq)).collect();
    Flow { sent, last, holes }
}

/// Every link the agents made, by node: name -> ifindex.
fn links(lab: &Lab) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for node in lab.record()["nodes"].as_object().unwrap().keys() {
        let listing = Command::new("ip")
            .args(["-n", &lab.node_netns(node), "-o", "link"])
            .output()
            .unwrap();
        for line in String::from_utf8_lossy(&listing.stdout).lines() {
            let mut parts = line.split(": ");
            let (index, name) = (parts.next().unwrap(), parts.next().unwrap());
            let name = name.split('@').next().unwrap();
            if name.starts_with("ww") {
                out.insert(format!("{node}/{name}"), index.to_owned());
            }
        }
    }
    out
}

#[test]
fn losing_the_operator_or_an_agent_loses_no_packet() {
    if !root_or_skip("losing_the_operator_or_an_agent_loses_no_packet") {
        return;
    }
    let lab = Lab::new();
    let (matrix, ok) = lab.up(&samples());
    assert!(ok, "{matrix:#}");
    let address = |workload: &str, service: &str| {
        matrix["columns"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["workload"] == workload && c["service"] == service)
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let before = links(&lab);
    // Across the mesh: red between three nodes, green between two, both ways.
    let pings = [
        ping_flood(&lab.netns("red/red-a"), &address("red/red-b", "red/red")),
        ping_flood(&lab.netns("red/red-b"), &address("red/bridge", "red/red")),
        ping_flood(&lab.netns("red/bridge"), &address("red/red-a", "red/red")),
        ping_flood(
            &lab.netns("green/green-a"),
            &address("red/bridge", "green/green"),
        ),
        ping_flood(
            &lab.netns("red/bridge"),
            &address("green/green-b", "green/green"),
        ),
    ];
    std::thread::sleep(Duration::from_secs(2));

    // The operator dies and stays away for 60 s.
    let operator = lab.pid("operator");
    assert!(
        Command::new("kill")
            .args(["-KILL", &operator.to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_secs(60));
    // Back: it serves what it served, no agent changes anything.
    lab.start();
    let (after_operator, ok) = lab.matrix();
    assert!(ok, "{after_operator:#}");
    assert_eq!(
        links(&lab),
        before,
        "an interface was recreated after the operator's restart"
    );

    // An agent dies and is started again.
    let node = lab.record()["pods"]["red/red-a"]["node"]
        .as_str()
        .unwrap()
        .to_owned();
    let agent = lab.pid(&format!("agent/{node}"));
    assert!(
        Command::new("kill")
            .args(["-KILL", &agent.to_string()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_secs(2));
    lab.start();
    let (after_agent, ok) = lab.matrix();
    assert!(ok, "{after_agent:#}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        links(&lab),
        before,
        "an interface was recreated after the agent's restart"
    );
    // The operator shows the tunnels that carry the pings as active: the restarted
    // operator learns it from the agents' next reports (every 10 s).
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let status = lab.status();
        let shown = status["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node.as_str())
            .unwrap()
            .clone();
        if shown["peersActive"].as_u64() >= Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "{shown:#}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let agent_log = lab.log(&format!("nodes/{node}/agent.log"));
    assert!(
        agent_log.contains("re-applying the last applied state"),
        "{agent_log}"
    );

    // ping -i 0.01 sends at most 100 a second; a loaded 2-core machine manages fewer.
    let flows: Vec<Flow> = pings.into_iter().map(stop).collect();
    for flow in &flows {
        // The pings stop 2 s after the last restart.
        flow.assert_none_lost(&format!("{flows:?}"));
        assert!(
            flow.sent > 3_000,
            "only {} pings sent in more than 70 s ({flows:?})",
            flow.sent
        );
    }
}

#[test]
fn down_removes_what_the_lab_made_and_only_that_also_after_a_crash() {
    if !root_or_skip("down_removes_what_the_lab_made_and_only_that_also_after_a_crash") {
        return;
    }
    let lab = Lab::new();
    let (matrix, ok) = lab.up(&samples());
    assert!(ok, "{matrix:#}");
    let record = lab.record();
    // A crash: every process of the lab dies at once, its record stays.
    for pid in record["processes"].as_object().unwrap().values() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    // Something of someone else's, named like the lab's.
    let foreign = format!("ww{}-n-foreign", lab.name);
    assert!(
        Command::new("ip")
            .args(["netns", "add", &foreign])
            .status()
            .unwrap()
            .success()
    );
    let out = lab.wireway(&["down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("ww{}-", lab.name)))
        .collect();
    let _ = Command::new("ip").args(["netns", "del", &foreign]).status();
    assert_eq!(
        left,
        [foreign],
        "down left some of the lab's, or took someone else's"
    );
    assert!(!lab.dir.exists(), "the lab's directory is gone");
    // Nothing of the lab runs: not its processes, not the WireGuard devices in its nodes.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let running = String::from_utf8_lossy(&ps.stdout);
    assert!(!running.contains(lab.dir.to_str().unwrap()), "{running}");
}

/// The lab's stand-in for a cluster's DNS: dnsmasq on an address of the underlay bridge
/// (which every lab node reaches), answering `upstream.example` with 192.0.2.53 and
/// nothing else. Stopped on drop.
struct Upstream(Child);

/// Where [`Upstream`] listens.
const UPSTREAM: &str = "172.31.255.253";

impl Upstream {
    fn start(lab: &Lab) -> Self {
        let underlay = format!("ww{}-underlay", lab.name);
        let added = Command::new("ip")
            .args([
                "-n",
                &underlay,
                "addr",
                "add",
                &format!("{UPSTREAM}/16"),
                "dev",
                "br0",
            ])
            .status()
            .unwrap();
        assert!(added.success());
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &underlay,
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port",
                "53",
            ])
            .arg(format!("--listen-address={UPSTREAM}"))
            .arg("--address=/upstream.example/192.0.2.53")
            .arg(format!(
                "--pid-file={}",
                lab.dir.with_file_name("dnsmasq.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq is needed (.ci/run installs it)");
        Self(child)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dig` from a pod's namespace: the status and the answer's addresses, sorted.
fn dig(lab: &Lab, pod: &str, server: &str, name: &str, kind: &str) -> (String, Vec<String>) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.netns(pod),
            "dig",
            "+time=2",
            "+tries=2",
        ])
        .arg(format!("@{server}"))
        .args([name, kind])
        .output()
        .expect("dig is needed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no reply")
        .to_owned();
    let mut addresses: Vec<String> = text
        .split(";; ANSWER SECTION:")
        .nth(1)
        .unwrap_or_default()
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .collect();
    addresses.sort();
    (status, addresses)
}

/// The samples plus blue, an IPv6 service of red's pods (`net: red`: red-a, red-b and
/// bridge), in a directory of the test's own.
fn samples_with_blue() -> tempfile::TempDir {
    let manifests = copy_samples();
    write(
        manifests.path(),
        "90-blue.yaml",
        "apiVersion: wireway.dev/v1alpha1\nkind: NetworkService\nmetadata: {name: blue, namespace: red}\n\
         spec: {cidr: \"fd00:300::/48\", nodePrefixLength: 64}\n---\n\
         apiVersion: wireway.dev/v1alpha1\nkind: Endpoint\nmetadata: {name: blue-members, namespace: red}\n\
         spec: {networkService: {name: blue}, podSelector: {matchLabels: {net: red}}}\n",
    );
    manifests
}

/// The samples plus blue, an IPv6 service of red's pods, and the lab's upstream: every
/// member resolves its services' names on its gateway (A and AAAA, a member's own name
/// and an Endpoint's all-members name), other services' names are refused, names outside
/// the zones are forwarded, pods in no service cannot ask at all, and a member that
/// leaves loses its name.
#[test]
fn members_resolve_their_services_names_and_no_others() {
    if !root_or_skip("members_resolve_their_services_names_and_no_others") {
        return;
    }
    let manifests = samples_with_blue();
    let dir = manifests.path();
    let lab = Lab::new();
    let upstream = format!("{UPSTREAM}:53");
    let (matrix, ok) = lab.up_with(dir, &["--dns-upstream", &upstream]);
    assert!(ok, "{matrix:#}");
    let _upstream = Upstream::start(&lab);
    let address = addresses(&matrix);
    let of = |pod: &str, service: &str| address[&(pod.to_owned(), service.to_owned())].clone();
    let red = "red.red.wireway.internal";
    let blue = "blue.red.wireway.internal";
    let green = "green.green.wireway.internal";
    let v6 = |dev: &str| format!("fe80::77:1%{dev}");

    for pod in ["red/red-a", "red/red-b", "red/bridge"] {
        let short = pod.trim_start_matches("red/");
        // Its own name and its Endpoint's, in red (A) and in blue (AAAA).
        assert_eq!(
            dig(
                &lab,
                pod,
                "169.254.77.1",
                &format!("{short}.red-members.red.{red}"),
                "A"
            ),
            ("NOERROR".into(), vec![of(pod, "red/red")]),
            "{pod}"
        );
        let mut all_red: Vec<String> = ["red/red-a", "red/red-b", "red/bridge"]
            .map(|p| of(p, "red/red"))
            .to_vec();
        all_red.sort();
        assert_eq!(
            dig(
                &lab,
                pod,
                "169.254.77.1",
                &format!("red-members.red.{red}"),
                "A"
            ),
            ("NOERROR".into(), all_red),
            "{pod}"
        );
        assert_eq!(
            dig(
                &lab,
                pod,
                "169.254.77.1",
                &format!("backup-vm.red.{red}"),
                "A"
            ),
            ("NOERROR".into(), vec!["10.100.255.10".into()]),
            "{pod}: an external host by its Endpoint"
        );
        assert_eq!(
            dig(
                &lab,
                pod,
                &v6("nsm-blue"),
                &format!("{short}.blue-members.red.{blue}"),
                "AAAA"
            ),
            ("NOERROR".into(), vec![of(pod, "red/blue")]),
            "{pod} over IPv6"
        );
        // No AAAA in an IPv4 service: the name is there, with no address of that kind.
        assert_eq!(
            dig(
                &lab,
                pod,
                "169.254.77.1",
                &format!("{short}.red-members.red.{red}"),
                "AAAA"
            ),
            ("NOERROR".into(), vec![]),
        );
        assert_eq!(
            dig(
                &lab,
                pod,
                "169.254.77.1",
                &format!("nobody.red-members.red.{red}"),
                "A"
            )
            .0,
            "NXDOMAIN"
        );
        // Green's names are green's members' business; the others go upstream.
        assert_eq!(
            dig(
                &lab,
                pod,
                "169.254.77.1",
                &format!("green-members.green.{green}"),
                "A"
            )
            .0,
            if pod == "red/bridge" {
                "NOERROR"
            } else {
                "REFUSED"
            },
            "{pod}"
        );
        assert_eq!(
            dig(&lab, pod, "169.254.77.1", "upstream.example", "A"),
            ("NOERROR".into(), vec!["192.0.2.53".into()]),
            "{pod}: forwarded"
        );
    }
    // Green's members may not ask red's names; pods in no service have no gateway.
    for (pod, status) in [
        ("green/green-a", "REFUSED"),
        ("green/green-b", "REFUSED"),
        ("other/intruder", "no reply"),
        ("other/loner", "no reply"),
    ] {
        let name = format!("red-members.red.{red}");
        assert_eq!(
            dig(&lab, pod, "169.254.77.1", &name, "A").0,
            status,
            "{pod}"
        );
    }

    // red-b leaves: its name goes, from every other member, with the state that carried it.
    let red_yaml = std::fs::read_to_string(dir.join("10-red.yaml")).unwrap();
    let without_b: Vec<&str> = red_yaml
        .split("\n---\n")
        .filter(|d| !d.contains("name: red-b"))
        .collect();
    write(dir, "10-red.yaml", &without_b.join("\n---\n"));
    let name = format!("red-b.red-members.red.{red}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = dig(&lab, "red/red-a", "169.254.77.1", &name, "A").0;
        if status == "NXDOMAIN" {
            break;
        }
        assert!(Instant::now() < deadline, "{name} is still {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, left) = dig(
        &lab,
        "red/bridge",
        "169.254.77.1",
        &format!("red-members.red.{red}"),
        "A",
    );
    assert!(!left.contains(&of("red/red-b", "red/red")), "{left:?}");
}

/// How many times [`the_first_ping_after_a_reported_apply_is_answered_in_20_starts`]
/// starts its lab.
const STARTS: usize = 20;

/// "Applied" means packets flow. The samples with blue (an IPv6 service of red's three
/// pods, on three nodes), started [`STARTS`] times in a row: every start makes every
/// member's addresses anew. The moment the operator shows every agent at the version
/// it planned, every member of each service (blue, red, green) pings every other member
/// of it once: one packet each (`ping -c 1`), answered within 2 s or lost. The matrix
/// of `wireway lab up` proves less: it waits for the versions to hold 300 ms, and each
/// of its pings sends again every 0.2 s for up to 3 s, so an address still in duplicate
/// address detection (tentative: it takes no packet, and sends none, for a second or
/// more) passes there. Every first ping is answered.
#[test]
fn the_first_ping_after_a_reported_apply_is_answered_in_20_starts() {
    if !root_or_skip("the_first_ping_after_a_reported_apply_is_answered_in_20_starts") {
        return;
    }
    let manifests = samples_with_blue();
    let began = Instant::now();
    let mut lost = Vec::new();
    let mut pings = 0;
    let mut applied_after = Vec::new();
    let mut pinged_after = Vec::new();
    let mut slowest: f64 = 0.0;
    for start in 1..=STARTS {
        let lab = Lab::new();
        let started = Instant::now();
        let mut up = Command::new(WIREWAY)
            .args(["lab", "--name", &lab.name, "--dir"])
            .arg(&lab.dir)
            .arg("up")
            .arg(manifests.path())
            .args(["--json", "--timeout", "90"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Every agent's report of the planned version, as soon as the operator shows it.
        let status = loop {
            let status = lab.status_of("operator.sock");
            if let Some(status) = &status
                && all_applied(&lab, status)
            {
                break status.clone();
            }
            if up.try_wait().unwrap().is_some() {
                let out = up.wait_with_output().unwrap();
                panic!(
                    "start {start}: lab up ended before every agent applied its state: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "start {start}: not every agent at its planned version in 60 s: {}",
                versions(status.as_ref())
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let applied = started.elapsed();
        let members = member_addresses(&status);
        let record = lab.record();
        let mut sent = Vec::new();
        for (from, service) in members.keys() {
            for ((to, other), address) in &members {
                if other != service || to == from {
                    continue;
                }
                let netns = record["pods"][from]["netns"].as_str().unwrap();
                let family = if address.contains(':') { "-6" } else { "-4" };
                let ping = Command::new("ip")
                    .args(["netns", "exec", netns, "ping", family, "-n", "-c", "1"])
                    .args(["-W", "2", address])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                sent.push((format!("{from} -> {to} {address} in {service}"), ping));
            }
        }
        let pinged = started.elapsed();
        let in_blue = members.keys().filter(|(_, s)| s == "red/blue").count();
        assert_eq!(in_blue, 3, "start {start}: blue's members: {members:?}");
        for (what, ping) in sent {
            pings += 1;
            let out = ping.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(ms) = text
                .split("time=")
                .nth(1)
                .and_then(|t| t.split(' ').next()?.parse::<f64>().ok())
            {
                slowest = slowest.max(ms);
            }
            if !out.status.success() {
                let said = text
                    .lines()
                    .find(|l| l.contains("packets transmitted"))
                    .unwrap_or_default();
                lost.push(format!(
                    "start {start}, sent within {:.0} ms of the status showing every agent \
                     at its version: {what}: {said}{}",
                    (pinged - applied).as_secs_f64() * 1000.0,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        // lab up's own matrix (which tries again) is as planned too.
        let out = up.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "start {start}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        applied_after.push(applied.as_secs_f64());
        pinged_after.push((pinged - applied).as_secs_f64() * 1000.0);
    }
    let max = |values: &[f64]| values.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "{STARTS} starts in {:.0} s: every agent reported its state applied at most {:.1} s \
         after `lab up` began; {pings} first pings were sent at most {:.0} ms after that, the \
         slowest answered in {slowest:.0} ms",
        began.elapsed().as_secs_f64(),
        max(&applied_after),
        max(&pinged_after),
    );
    assert!(
        lost.is_empty(),
        "{} of {pings} first pings after a reported apply were not answered:\n{}",
        lost.len(),
        lost.join("\n")
    );
}

/// The sample of several clusters: east, west behind NAT, and a partner company.
fn multicluster() -> PathBuf {
    samples().join("multicluster")
}

/// A cluster of a lab of several clusters: its lab directory's record and operator state.
struct Cluster {
    dir: PathBuf,
}

impl Cluster {
    fn of(lab: &Lab, name: &str) -> Self {
        Self {
            dir: lab.dir.join("clusters").join(name),
        }
    }

    fn record(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("lab.json")).unwrap()).unwrap()
    }

    fn netns(&self, pod: &str) -> String {
        self.record()["pods"][pod]["netns"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// What its operator last stored: node states and statuses.
    fn stored(&self) -> Value {
        Store::read(&self.dir.join("operator"))
            .ok()
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or_default()
    }

    /// Every allowed IP of every WireGuard peer of every node, as planned.
    fn allowed_ips(&self) -> Vec<String> {
        let stored = self.stored();
        let states = stored["nodeStates"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        states
            .values()
            .flat_map(|n| n["services"].as_array().cloned().unwrap_or_default())
            .flat_map(|s| s["peers"].as_array().cloned().unwrap_or_default())
            .flat_map(|p| p["allowedIps"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    }

    /// Whether red/red says `peer` is connected.
    fn connected(&self, peer: &str) -> bool {
        self.stored()["networkServices"]["red/red"]["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["cluster"] == peer && p["connected"] == true)
    }
}

fn column_address(matrix: &Value, workload: &str) -> String {
    matrix["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["workload"] == workload)
        .unwrap_or_else(|| panic!("{workload} is no column: {matrix:#}"))["address"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Drops TCP to and from a port of 127.0.0.1 in the host's namespace while it lives: a
/// federation link cut without a reset (as a failed router would).
struct Cut {
    table: String,
}

impl Cut {
    fn port(port: u16) -> Self {
        let table = format!("wwcut{port}");
        let rules = format!(
            "table inet {table} {{ chain out {{ type filter hook output priority 0; ip daddr 127.0.0.1 tcp dport {port} drop; ip saddr 127.0.0.1 tcp sport {port} drop; }}; }}"
        );
        let status = Command::new("nft").arg(rules).status().unwrap();
        assert!(status.success(), "nft refused the cut");
        Self { table }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn clusters_federate_as_planned_and_lose_no_packet_to_an_operators_death_or_a_cut_link() {
    if !root_or_skip(
        "clusters_federate_as_planned_and_lose_no_packet_to_an_operators_death_or_a_cut_link",
    ) {
        return;
    }
    let lab = Lab::new();
    let (matrix, ok) = lab.up(&multicluster());
    assert!(ok, "{matrix:#}");
    // Across clusters, both ways, through the NAT in front of west.
    for (from, to) in [
        ("east:red/red-e1", "west:red/red-w1"),
        ("west:red/red-w1", "east:red/red-e2"),
        ("partner:red/red-p1", "west:red/red-w1"),
        ("east:red/red-e2", "partner:red/red-p1"),
    ] {
        assert_eq!(
            reaches(&matrix, from, to, "red/red"),
            Some(true),
            "{from} -> {to}"
        );
    }
    // The partner's internal namespace is denied by east and west: no node of theirs
    // holds an allowed IP for it, and its packets are dropped.
    let ledger = column_address(&matrix, "partner:internal/ledger");
    for cluster in ["east", "west"] {
        let allowed = Cluster::of(&lab, cluster).allowed_ips();
        assert!(!allowed.is_empty(), "{cluster} has peers");
        assert!(
            !allowed.contains(&format!("{ledger}/32")),
            "{cluster} lets {ledger} in: {allowed:?}"
        );
    }

    for to in ["east:red/red-e1", "east:red/red-e2", "west:red/red-w1"] {
        assert_eq!(
            reaches(&matrix, "partner:internal/ledger", to, "red/red"),
            Some(false),
            "ledger -> {to}"
        );
    }

    // `wireway status` where the lab's operator would be shows every cluster, each with
    // its peers.
    let socket = format!("unix:{}", lab.dir.join("operator.sock").display());
    let out = Command::new(WIREWAY)
        .args(["status", "--operator", &socket])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for cluster in [
        "cluster east",
        "cluster west",
        "cluster partner",
        "PEER CLUSTERS",
    ] {
        assert!(shown.contains(cluster), "no {cluster:?} in:\n{shown}");
    }

    let (east, west) = (Cluster::of(&lab, "east"), Cluster::of(&lab, "west"));
    let pings = [
        ping_flood(
            &east.netns("red/red-e1"),
            &column_address(&matrix, "west:red/red-w1"),
        ),
        ping_flood(
            &west.netns("red/red-w1"),
            &column_address(&matrix, "partner:red/red-p1"),
        ),
    ];
    std::thread::sleep(Duration::from_secs(2));

    // East's operator dies for 60 s.
    let operator = east.record()["processes"]["operator"].as_u64().unwrap();
    Command::new("kill")
        .args(["-KILL", &operator.to_string()])
        .status()
        .unwrap();
    wait_for("west to see east gone", Duration::from_secs(30), || {
        !west.connected("east")
    });
    std::thread::sleep(Duration::from_secs(60));
    lab.start();
    wait_for(
        "west to hear from east again",
        Duration::from_secs(60),
        || west.connected("east"),
    );

    // The federation link to east is cut for 60 s (packets dropped, no reset).
    let port = east.record()["federation"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let cut = Cut::port(port);
    let noticed = wait_for("west to see the link cut", Duration::from_secs(40), || {
        !west.connected("east")
    });
    std::thread::sleep(Duration::from_secs(60).saturating_sub(noticed));
    drop(cut);
    wait_for("the link back", Duration::from_secs(60), || {
        west.connected("east")
    });

    std::thread::sleep(Duration::from_secs(1));
    for (i, ping) in pings.into_iter().enumerate() {
        let flow = stop(ping);
        flow.assert_none_lost(&format!("ping {i}"));
        // Over 120 s at one every 10 ms, fewer on a loaded machine.
        assert!(flow.sent > 5_000, "ping {i} sent only {}", flow.sent);
        eprintln!("ping {i}: {} sent, none lost", flow.sent);
    }

    // East unpeers west: west's members are unreachable from east within 5 s.
    let peers = east.dir.join("manifests/peers.yaml");
    let text = std::fs::read_to_string(&peers).unwrap();
    // Documents are split at lines of `---` (the certificates hold dashes too).
    let kept: Vec<&str> = text
        .split("\n---\n")
        .filter(|doc| !doc.contains("name: west\n"))
        .collect();
    let w1 = column_address(&matrix, "west:red/red-w1");
    let e1 = east.netns("red/red-e1");
    let answers = || {
        Command::new("ip")
            .args([
                "netns", "exec", &e1, "ping", "-n", "-q", "-c", "1", "-W", "0.2", &w1,
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    // (A loaded machine may miss one reply in 200 ms: wait for a first one.)
    wait_for(
        "west answering before the unpeering",
        Duration::from_secs(10),
        answers,
    );
    std::fs::write(&peers, kept.join("\n---\n")).unwrap();
    let took = wait_for(
        "west's members unreachable from east",
        Duration::from_secs(5),
        || !answers(),
    );
    eprintln!(
        "west's members unreachable from east {took:?} after east's PeerCluster for west was deleted"
    );
}
