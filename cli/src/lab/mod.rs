//! `wireway lab`: a whole Wireway mesh on one machine, from the same manifests a user
//! applies to a cluster.
//!
//! The lab plays the parts a cluster would: it makes one network namespace per node
//! (joined by an underlay bridge) and per pod, schedules the pods no manifest pins (it
//! writes their Bindings, and Node objects for the nodes it makes, into a manifest
//! directory of its own), and runs the real operator on both directories and one real
//! agent per node, with userspace WireGuard unless the kernel has it. A supervisor
//! follows the user's directory, so pods and nodes added or removed there are made or
//! removed in the lab too. Then it measures who reaches whom.
//!
//! Every server listens on a Unix socket in the lab's directory, so the lab needs no
//! port and changes nothing in the host's network namespace. Everything it makes is in
//! its record (`lab.json`) before it is made, and `wireway lab down` removes exactly that.

pub mod bench;
pub mod commands;
pub mod matrix;
pub mod net;
pub mod record;
pub mod topology;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use wireway_operator::plan::{Change, Pod};
use wireway_operator::snapshot::Snapshot;
use wireway_operator::source::manifests::Manifests;
use wireway_runtime::listen::Address;

use crate::status;
use matrix::{Expectation, Matrix};
use record::{Binaries, LabNode, LabPod, Record};
use topology::PodSpec;
use wireway_runtime::pki::{self as certs, Subject};

/// The underlay: node `n` gets 172.31.x.y/16 on one bridge.
const UNDERLAY_PREFIX: u32 = u32::from_be_bytes([172, 31, 0, 0]);
const UNDERLAY_LENGTH: u8 = 16;

/// Where the labs live by default: `/run/wireway/<name>`.
pub const LABS_DIR: &str = "/run/wireway";

/// The directory of the lab called `name`.
pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LABS_DIR).join(name)
}

/// The pods and nodes of the user's manifests, as the lab needs them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, Pod>,
    /// Node objects' names.
    pub nodes: BTreeSet<String>,
}

impl Inventory {
    /// The inventory of manifests just scanned.
    pub fn of(manifests: &Manifests) -> Self {
        Self {
            pods: manifests
                .pods()
                .map(|p| (format!("{}/{}", p.namespace, p.name), p.clone()))
                .collect(),
            nodes: manifests.nodes().map(|n| n.name.clone()).collect(),
        }
    }

    /// Follows one change of the manifests; says whether the lab must act on it.
    pub fn apply(&mut self, change: &Change) -> bool {
        match change {
            Change::Pod(pod) => {
                let key = format!("{}/{}", pod.namespace, pod.name);
                let before = self.pods.insert(key, pod.clone());
                before.is_none_or(|b| b.node != pod.node || b.uid != pod.uid)
            }
            Change::PodDeleted(namespace, name) => {
                self.pods.remove(&format!("{namespace}/{name}")).is_some()
            }
            Change::Node(node) => self.nodes.insert(node.name.clone()),
            Change::NodeDeleted(name) => self.nodes.remove(name),
            _ => false,
        }
    }
}

/// A lab: its directory and its record.
#[derive(Debug)]
pub struct Lab {
    /// The lab's directory.
    pub dir: PathBuf,
    /// What it made.
    pub record: Record,
}

/// Finds `wireway-operator` and `wireway-agent` in `bin_dir`, or beside this program.
pub fn binaries(bin_dir: Option<&Path>) -> Result<Binaries, String> {
    let wireway = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let dir = match bin_dir {
        Some(dir) => dir.to_owned(),
        None => wireway.parent().map(Path::to_owned).unwrap_or_default(),
    };
    let find = |name: &str| {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "cannot find {name} in {}: build it (`cargo build --release`) or pass --bin-dir",
                dir.display()
            ))
        }
    };
    Ok(Binaries {
        operator: find("wireway-operator")?,
        agent: find("wireway-agent")?,
        wireway,
    })
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn underlay_address(n: u32) -> String {
    let host = UNDERLAY_PREFIX + (n / 250) * 256 + (n % 250) + 1;
    std::net::Ipv4Addr::from(host).to_string()
}

impl Lab {
    /// A new lab record in `dir` (not made yet).
    pub fn create(
        dir: PathBuf,
        name: &str,
        manifests: Vec<PathBuf>,
        trust_domain: &str,
        own_nodes: usize,
        binaries: Binaries,
    ) -> Result<Self, String> {
        if record::path(&dir).exists() {
            return Err(format!(
                "lab {name:?} is already up ({}); `wireway lab down` removes it, `wireway lab matrix` measures it",
                dir.display()
            ));
        }
        std::fs::create_dir_all(dir.join("manifests"))
            .and_then(|()| std::fs::create_dir_all(dir.join("netns")))
            .map_err(|e| format!("failed to create {}: {e}", dir.display()))?;
        let lab = Self {
            dir,
            record: Record {
                name: name.to_owned(),
                manifests,
                trust_domain: trust_domain.to_owned(),
                own_nodes,
                binaries,
                ..Record::default()
            },
        };
        lab.save()?;
        Ok(lab)
    }

    /// The lab in `dir`.
    pub fn open(dir: PathBuf) -> Result<Self, String> {
        let record = Record::load(&dir)?;
        Ok(Self { dir, record })
    }

    fn save(&self) -> Result<(), String> {
        self.record.save(&self.dir)
    }

    /// The operator's HTTP port.
    pub fn operator_http(&self) -> Address {
        Address::Unix(self.dir.join("operator-http.sock"))
    }

    fn operator_grpc(&self) -> Address {
        Address::Unix(self.dir.join("operator.sock"))
    }

    /// A node agent's HTTP port.
    pub fn agent_http(&self, node: &str) -> Address {
        Address::Unix(self.dir.join("nodes").join(node).join("http.sock"))
    }

    fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// Makes the CA and the operator's certificate.
    pub fn create_pki(&self) -> Result<(), String> {
        let td = &self.record.trust_domain;
        certs::create_ca_in(&self.pki(), td).map_err(|e| crate::chain(&e))?;
        let names = certs::OPERATOR_DNS_NAMES.map(str::to_owned).to_vec();
        certs::issue_into(
            &self.pki(),
            &self.pki().join("operator"),
            td,
            &Subject::Operator(names),
        )
        .map_err(|e| crate::chain(&e))
    }

    /// Makes the underlay: a namespace with a bridge.
    pub fn create_underlay(&mut self) -> Result<(), String> {
        let switch = self.record.netns("underlay");
        self.record.namespaces.insert(switch.clone());
        self.save()?;
        net::add_netns(&switch)?;
        if net::ip(&["-n", &switch, "link", "show", "br0"]).is_err() {
            net::ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        }
        net::ip(&["-n", &switch, "link", "set", "br0", "up"])
    }

    /// Brings the lab to what `inventory` asks for: nodes and pods made or removed, pods
    /// placed, the lab's own manifests written, and agents of new nodes started (when
    /// `start_agents`). Says what it did.
    pub fn reconcile(
        &mut self,
        inventory: &Inventory,
        start_agents: bool,
    ) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        let pods: Vec<PodSpec> = inventory
            .pods
            .iter()
            .map(|(key, pod)| PodSpec {
                key: key.clone(),
                pinned: pod.node.clone(),
            })
            .collect();
        let previous: BTreeMap<String, String> = self
            .record
            .pods
            .iter()
            .map(|(k, p)| (k.clone(), p.node.clone()))
            .collect();
        let topology = topology::place(&inventory.nodes, self.record.own_nodes, &pods, &previous);

        // Nodes first: a pod's netns needs nothing from its node, but agents must exist
        // for the members the operator will plan.
        let new: Vec<&String> = topology
            .nodes
            .iter()
            .filter(|n| !self.record.nodes.contains_key(*n))
            .collect();
        for node in new {
            self.add_node(node, start_agents)?;
            done.push(format!("node {node} added"));
        }
        for (key, node) in &topology.placement {
            let Some(pod) = inventory.pods.get(key) else {
                continue;
            };
            match self.record.pods.get_mut(key) {
                Some(existing) if existing.uid == pod.uid => {
                    if existing.node != *node {
                        done.push(format!("pod {key} moved to {node}"));
                        existing.node.clone_from(node);
                    }
                }
                _ => {
                    self.remove_pod(key)?;
                    self.add_pod(key, &pod.uid, node)?;
                    done.push(format!("pod {key} on {node}"));
                }
            }
        }
        let gone: Vec<String> = self
            .record
            .pods
            .keys()
            .filter(|k| !topology.placement.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove_pod(&key)?;
            done.push(format!("pod {key} removed"));
        }
        // Bindings and Node objects only after the pods' namespaces exist: the operator
        // plans a member as soon as it sees where it runs.
        self.write_manifests(&topology.made_nodes, &topology.bindings)?;
        let stale: Vec<String> = self
            .record
            .nodes
            .keys()
            .filter(|n| !topology.nodes.contains(*n))
            .cloned()
            .collect();
        for node in stale {
            self.remove_node(&node)?;
            done.push(format!("node {node} removed"));
        }
        let unplaced = inventory
            .pods
            .keys()
            .filter(|k| !topology.placement.contains_key(*k));
        done.extend(unplaced.map(|k| format!("pod {k} not placed: there is no node")));
        self.save()?;
        Ok(done)
    }

    fn add_node(&mut self, node: &str, start_agent: bool) -> Result<(), String> {
        self.record.addresses += 1;
        let n = self.record.addresses;
        let lab_node = LabNode {
            netns: self.record.netns(&format!("n-{node}")),
            address: underlay_address(n),
            port: format!("p{n}"),
        };
        self.record.namespaces.insert(lab_node.netns.clone());
        self.record.nodes.insert(node.to_owned(), lab_node.clone());
        self.save()?;
        let switch = self.record.netns("underlay");
        net::add_netns(&lab_node.netns)?;
        if net::ip(&["-n", &lab_node.netns, "link", "show", "eth0"]).is_err() {
            net::ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &lab_node.netns,
                "type",
                "veth",
                "peer",
                "name",
                &lab_node.port,
                "netns",
                &switch,
            ])?;
        }
        net::ip(&[
            "-n",
            &switch,
            "link",
            "set",
            &lab_node.port,
            "master",
            "br0",
            "up",
        ])?;
        let address = format!("{}/{UNDERLAY_LENGTH}", lab_node.address);
        let _ = net::ip(&[
            "-n",
            &lab_node.netns,
            "addr",
            "add",
            &address,
            "dev",
            "eth0",
        ]);
        net::ip(&["-n", &lab_node.netns, "link", "set", "eth0", "up"])?;
        let dir = self.pki().join("nodes").join(node);
        if !dir.join("tls.crt").exists() {
            let subject = Subject::Node(node.to_owned());
            certs::issue_into(&self.pki(), &dir, &self.record.trust_domain, &subject)
                .map_err(|e| crate::chain(&e))?;
        }
        if start_agent {
            self.start_agent(node)?;
        }
        Ok(())
    }

    fn remove_node(&mut self, node: &str) -> Result<(), String> {
        if let Some(pid) = self.record.processes.remove(&format!("agent/{node}")) {
            if net::running(pid, &self.marker()) {
                net::kill(pid);
            }
        }
        if let Some(lab_node) = self.record.nodes.remove(node) {
            // Its userspace WireGuard devices live in its namespace and go with it.
            net::delete_netns(&lab_node.netns)?;
            self.record.namespaces.remove(&lab_node.netns);
        }
        self.save()
    }

    fn pod_netns(&self, key: &str) -> String {
        self.record
            .netns(&format!("p-{}", key.replacen('/', ".", 1)))
    }

    fn add_pod(&mut self, key: &str, uid: &str, node: &str) -> Result<(), String> {
        let netns = self.pod_netns(key);
        self.record.namespaces.insert(netns.clone());
        self.record.pods.insert(
            key.to_owned(),
            LabPod {
                netns: netns.clone(),
                uid: uid.to_owned(),
                node: node.to_owned(),
            },
        );
        self.save()?;
        net::add_netns(&netns)?;
        let link = self.dir.join("netns").join(uid);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new("/run/netns").join(&netns), &link)
            .map_err(|e| format!("failed to link {}: {e}", link.display()))
    }

    fn remove_pod(&mut self, key: &str) -> Result<(), String> {
        let Some(pod) = self.record.pods.remove(key) else {
            return Ok(());
        };
        let _ = std::fs::remove_file(self.dir.join("netns").join(&pod.uid));
        net::delete_netns(&pod.netns)?;
        self.record.namespaces.remove(&pod.netns);
        self.save()
    }

    /// Writes the lab's own manifests: Node objects for the nodes it made, Bindings for
    /// the pods it placed. Replaced atomically, and only when they change.
    fn write_manifests(
        &self,
        nodes: &BTreeSet<String>,
        bindings: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let mut text = String::from(
            "# Written by `wireway lab`: the nodes it made and where it placed the pods no\n\
             # manifest pins (Bindings, as a scheduler records them). JSON is YAML.\n",
        );
        for node in nodes {
            let object =
                serde_json::json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}});
            text.push_str(&format!("---\n{object}\n"));
        }
        for (key, node) in bindings {
            let (namespace, name) = key.split_once('/').unwrap_or(("default", key));
            let object = serde_json::json!({
                "apiVersion": "v1",
                "kind": "Binding",
                "metadata": {"name": name, "namespace": namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node},
            });
            text.push_str(&format!("---\n{object}\n"));
        }
        let file = self.dir.join("manifests").join("lab.yaml");
        if std::fs::read_to_string(&file).ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        // A name the manifest reader skips (it starts with a dot) until it is complete.
        let temporary = self.dir.join("manifests").join(".lab.yaml.tmp");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &file))
            .map_err(|e| format!("failed to write {}: {e}", file.display()))
    }

    /// What identifies the lab's processes: its directory in their command line.
    fn marker(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    fn is_running(&self, role: &str) -> bool {
        self.record
            .processes
            .get(role)
            .is_some_and(|pid| net::running(*pid, &self.marker()))
    }

    fn remember(&mut self, role: &str, pid: u32) -> Result<(), String> {
        self.record.processes.insert(role.to_owned(), pid);
        self.save()
    }

    fn tls_args(&self, dir: &Path) -> Vec<OsString> {
        let mut args = Vec::new();
        for (flag, file) in [
            ("--tls-ca", "ca.crt"),
            ("--tls-cert", "tls.crt"),
            ("--tls-key", "tls.key"),
        ] {
            args.push(flag.into());
            args.push(dir.join(file).into());
        }
        args
    }

    /// Starts the operator unless it runs.
    pub fn start_operator(&mut self) -> Result<bool, String> {
        if self.is_running("operator") {
            return Ok(false);
        }
        let mut args: Vec<OsString> = Vec::new();
        for root in self
            .record
            .manifests
            .iter()
            .chain([&self.dir.join("manifests")])
        {
            args.push("--manifests".into());
            args.push(root.into());
        }
        args.extend(os(&["--listen-grpc", &self.operator_grpc().to_string()]));
        args.extend(os(&["--listen-http", &self.operator_http().to_string()]));
        args.push("--state-dir".into());
        args.push(self.dir.join("operator").into());
        args.extend(os(&[
            "--trust-domain",
            &self.record.trust_domain,
            "--agent-grace",
            "10",
        ]));
        args.extend(self.tls_args(&self.pki().join("operator")));
        let pid = net::spawn(
            &self.record.binaries.operator,
            &args,
            None,
            &self.dir.join("operator.log"),
        )?;
        self.remember("operator", pid)?;
        Ok(true)
    }

    /// Starts a node's agent unless it runs.
    pub fn start_agent(&mut self, node: &str) -> Result<bool, String> {
        let role = format!("agent/{node}");
        if self.is_running(&role) {
            return Ok(false);
        }
        let Some(lab_node) = self.record.nodes.get(node).cloned() else {
            return Err(format!("the lab has no node {node}"));
        };
        let state = self.dir.join("nodes").join(node);
        std::fs::create_dir_all(&state)
            .map_err(|e| format!("failed to create {}: {e}", state.display()))?;
        let mut args: Vec<OsString> = vec!["--state-dir".into(), state.clone().into()];
        args.push("--netns-dir".into());
        args.push(self.dir.join("netns").into());
        args.extend(os(&[
            "run",
            "--node-name",
            node,
            "--operator",
            &self.operator_grpc().to_string(),
        ]));
        args.extend(os(&["--underlay-address", &lab_node.address]));
        args.extend(os(&["--listen-http", &self.agent_http(node).to_string()]));
        args.extend(self.tls_args(&self.pki().join("nodes").join(node)));
        let pid = net::spawn(
            &self.record.binaries.agent,
            &args,
            Some(&lab_node.netns),
            &state.join("agent.log"),
        )?;
        self.remember(&role, pid)?;
        Ok(true)
    }

    /// Starts the supervisor unless it runs.
    pub fn start_supervisor(&mut self) -> Result<bool, String> {
        if self.is_running("supervisor") {
            return Ok(false);
        }
        let mut args = os(&["lab", "--name", &self.record.name, "--dir"]);
        args.push(self.dir.clone().into());
        args.push("supervise".into());
        let pid = net::spawn(
            &self.record.binaries.wireway,
            &args,
            None,
            &self.dir.join("supervisor.log"),
        )?;
        self.remember("supervisor", pid)?;
        Ok(true)
    }

    /// Starts whatever of the lab is not running; says what it started.
    pub fn start_all(&mut self) -> Result<Vec<String>, String> {
        let mut started = Vec::new();
        if self.start_operator()? {
            started.push("operator".to_owned());
        }
        let nodes: Vec<String> = self.record.nodes.keys().cloned().collect();
        for node in nodes {
            if self.start_agent(&node)? {
                started.push(format!("agent/{node}"));
            }
        }
        if self.start_supervisor()? {
            started.push("supervisor".to_owned());
        }
        Ok(started)
    }

    /// Removes everything the record names: processes, namespaces (with every process in
    /// them), the directory. Goes on past errors and returns them.
    pub fn down(self) -> Vec<String> {
        let mut errors = Vec::new();
        let marker = self.marker();
        for pid in self.record.processes.values() {
            if net::running(*pid, &marker) {
                net::kill(*pid);
            }
        }
        for netns in &self.record.namespaces {
            if let Err(e) = net::delete_netns(netns) {
                errors.push(e);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            errors.push(format!("failed to remove {}: {e}", self.dir.display()));
        }
        errors
    }

    /// The operator's status.
    pub async fn snapshot(&self) -> Result<Snapshot, String> {
        status::fetch(&self.operator_http()).await
    }

    /// Waits until the operator serves, every node's agent is connected and at the
    /// version planned for it, and that holds for a moment (a change just written has
    /// been planned). `progress` is told each new state of the wait.
    pub async fn wait_converged(
        &self,
        timeout: Duration,
        mut progress: impl FnMut(&str),
    ) -> Result<Snapshot, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        let mut settled: Option<(u64, Instant)> = None;
        loop {
            let (done, summary, plans, snapshot) = match self.snapshot().await {
                Ok(s) => {
                    let (done, summary) = self.convergence(&s);
                    (done, summary, s.plans, Some(s))
                }
                Err(_) => (
                    false,
                    "waiting for the operator to answer".to_owned(),
                    0,
                    None,
                ),
            };
            if summary != last {
                progress(&summary);
                last = summary;
            }
            if let Some(dead) = self.dead_process() {
                return Err(dead);
            }
            match (done, settled, snapshot) {
                (true, Some((p, since)), Some(s))
                    if p == plans && since.elapsed() >= Duration::from_millis(300) =>
                {
                    return Ok(s);
                }
                (true, Some((p, _)), _) if p == plans => {}
                (true, _, _) => settled = Some((plans, Instant::now())),
                (false, _, _) => settled = None,
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "gave up after {timeout:?}: {last}; see the logs in {}",
                    self.dir.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A process of the lab that is not running, with the end of its log.
    fn dead_process(&self) -> Option<String> {
        let (role, pid) = self
            .record
            .processes
            .iter()
            .find(|(role, _)| !self.is_running(role))?;
        let how = net::ended(*pid).map_or_else(String::new, |status| format!(" ({status})"));
        let log = match role.strip_prefix("agent/") {
            Some(node) => self.dir.join("nodes").join(node).join("agent.log"),
            None => self.dir.join(format!("{role}.log")),
        };
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Some(format!(
            "{role} is not running{how}; the end of {}:\n{}",
            log.display(),
            tail.join("\n")
        ))
    }

    /// Whether the lab has converged, and a line saying how far it is.
    fn convergence(&self, snapshot: &Snapshot) -> (bool, String) {
        let nodes = &self.record.nodes;
        let of_lab = || {
            snapshot
                .nodes
                .iter()
                .filter(|n| nodes.contains_key(&n.name))
        };
        let connected = of_lab().filter(|n| n.connected).count();
        let current = of_lab()
            .filter(|n| n.desired_version > 0 && n.applied_version >= n.desired_version)
            .count();
        let total = nodes.len();
        let mut summary = format!(
            "agents: {connected}/{total} connected, {current}/{total} at the current version"
        );
        if let Some(waiting) = &snapshot.waiting_for {
            summary = format!("operator: {waiting}; {summary}");
        }
        let done = snapshot.ready && connected == total && current == total;
        (done, summary)
    }

    /// The matrix the operator's statuses call for.
    pub fn expectation(&self, snapshot: &Snapshot) -> Expectation {
        let workloads: BTreeSet<String> = self.record.pods.keys().cloned().collect();
        matrix::expect(&workloads, snapshot)
    }

    /// Pings every column from every row, all at once.
    pub async fn measure(&self, expectation: Expectation) -> Result<Matrix, String> {
        let ping = std::process::Command::new("ping")
            .arg("-V")
            .output()
            .map_err(|e| format!("cannot run ping ({e}): install iputils-ping"))?;
        if !ping.status.success() {
            return Err("ping -V failed: install iputils-ping".to_owned());
        }
        let mut pings = Vec::new();
        for (r, row) in expectation.rows.iter().enumerate() {
            let Some(pod) = self.record.pods.get(row) else {
                continue;
            };
            for (c, column) in expectation.columns.iter().enumerate() {
                if column.workload == *row {
                    continue;
                }
                let mut command = tokio::process::Command::new("ip");
                command
                    .args([
                        "netns", "exec", &pod.netns, "ping", "-n", "-q", "-c", "1", "-i", "0.2",
                        "-w", "3",
                    ])
                    .arg(&column.address)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
                pings.push((r, c, command.status()));
            }
        }
        let mut reached: Vec<Vec<Option<bool>>> =
            vec![vec![None; expectation.columns.len()]; expectation.rows.len()];
        for (r, c, status) in pings {
            reached[r][c] = Some(status.await.is_ok_and(|s| s.success()));
        }
        Ok(Matrix {
            expectation,
            reached,
        })
    }
}

/// `wireway lab supervise`: follows the user's manifests and keeps the lab in step,
/// until killed.
pub async fn supervise(dir: PathBuf) -> Result<(), String> {
    let lab = Lab::open(dir.clone())?;
    let manifests = Manifests::new(lab.record.manifests.clone()).map_err(|e| e.to_string())?;
    let (events, mut received) = tokio::sync::mpsc::channel(16);
    tokio::spawn(manifests.watch::<wireway_operator::source::Event>(events));
    let mut inventory = Inventory::default();
    let mut synced = false;
    while let Some(event) = received.recv().await {
        use wireway_operator::source::Event;
        let act = match event {
            Event::Changes(changes) => {
                let mut act = false;
                for change in &changes {
                    act |= inventory.apply(change);
                }
                act && synced
            }
            Event::Synced => {
                synced = true;
                true
            }
            Event::Problems(_) => false,
        };
        if act {
            // Read the record again: `wireway lab start` may have changed it.
            let mut lab = Lab::open(dir.clone())?;
            match lab.reconcile(&inventory, true) {
                Ok(done) => {
                    for line in done {
                        eprintln!("{line}");
                    }
                }
                Err(e) => eprintln!("error: {e}"),
            }
        }
    }
    Ok(())
}
