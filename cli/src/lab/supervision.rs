//! The lab's processes: the operator, one agent per node, and the supervisor (`wireway
//! lab supervise`, which keeps the lab in step with the manifests). Each is started
//! unless it runs, and its pid is in the record by role (`operator`, `supervisor`,
//! `agent/<node>`) as soon as it is started; a dead one is reported with how it ended
//! and the end of its log; `down` stops them and removes everything the record names.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use wireway_runtime::errors::FileError;

use wireway_runtime::listen::Address;

use super::Lab;
use super::kubernetes::KubeError;
use super::net::{self, NetError};
use super::process::{self, SpawnError};
use super::record::{Binaries, RecordError};

/// Why the binaries the lab runs were not found.
#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    /// This program's own path is unknown.
    #[error("failed to find this program")]
    CurrentExe(#[source] std::io::Error),
    /// A binary is not where it should be.
    #[error(
        "failed to find {name} in {}: build it (`cargo build --release`) or pass --bin-dir",
        dir.display()
    )]
    Missing {
        /// The binary.
        name: &'static str,
        /// Where it was looked for.
        dir: PathBuf,
    },
}

/// Why a process of the lab could not be started, or the lab not taken down.
#[derive(Debug, thiserror::Error)]
pub enum SupervisionError {
    /// The record could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// An agent was asked for a node the lab does not have.
    #[error("failed to start agent/{node}: the lab has no node {node}")]
    NoNode {
        /// The node.
        node: String,
    },
    /// An agent's state directory could not be made.
    #[error(transparent)]
    StateDir(FileError),
    /// The process could not be started.
    #[error("failed to start {role}")]
    Start {
        /// The role.
        role: String,
        /// The cause.
        #[source]
        source: SpawnError,
    },
    /// A network namespace could not be removed.
    #[error("failed to remove the network namespace {netns}")]
    RemoveNetns {
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: NetError,
    },
    /// The lab's directory could not be removed.
    #[error(transparent)]
    RemoveDir(FileError),
    /// The lab's part around the API server failed.
    #[error(transparent)]
    Kubernetes(Box<KubeError>),
}

/// A process of the lab that is not running: which, how it ended (when this process
/// started it and saw it end), and the end of its log.
#[derive(Debug, thiserror::Error)]
#[error("{role} is not running{}; the end of {}:\n{tail}", ended(*.status), .log.display())]
pub struct DeadProcess {
    /// Its role.
    pub role: String,
    /// How it ended, when known.
    pub status: Option<ExitStatus>,
    /// Its log.
    pub log: PathBuf,
    /// The last lines of its log.
    pub tail: String,
}

fn ended(status: Option<ExitStatus>) -> String {
    status.map_or_else(String::new, |status| format!(" ({status})"))
}

/// Finds `wireway-operator` and `wireway-agent` in `bin_dir`, or beside this program.
pub fn binaries(bin_dir: Option<&Path>) -> Result<Binaries, BinariesError> {
    let wireway = std::env::current_exe().map_err(BinariesError::CurrentExe)?;
    let dir = match bin_dir {
        Some(dir) => dir.to_owned(),
        None => wireway.parent().map(Path::to_owned).unwrap_or_default(),
    };
    let find = |name: &'static str| {
        let path = dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(BinariesError::Missing {
                name,
                dir: dir.clone(),
            })
        }
    };
    Ok(Binaries {
        operator: find("wireway-operator")?,
        agent: find("wireway-agent")?,
        wireway,
    })
}

/// The role of a node's agent.
pub(super) fn agent_role(node: &str) -> String {
    format!("agent/{node}")
}

/// The role of a node's forwarder to the API server.
pub(super) fn forwarder_role(node: &str) -> String {
    format!("forward/{node}")
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

impl Lab {
    /// What identifies the lab's processes: its directory in their command line.
    fn marker(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    pub(super) fn is_running(&self, role: &str) -> bool {
        self.record
            .processes
            .get(role)
            .is_some_and(|pid| process::running(*pid, &self.marker()))
    }

    /// Kills `pid` if it is still the lab's.
    fn kill_if_ours(&self, pid: u32) {
        if process::running(pid, &self.marker()) {
            process::kill(pid);
        }
    }

    /// Kills the supervisor, if it runs, without changing the record: `down` does so
    /// before it waits for the record (the supervisor may hold it for a while).
    pub fn stop_supervisor(&self) {
        if let Some(pid) = self.record.processes.get("supervisor") {
            self.kill_if_ours(*pid);
        }
    }

    /// Stops a role's process and takes it off the record (the caller saves it).
    pub(super) fn stop(&mut self, role: &str) {
        if let Some(pid) = self.record.processes.remove(role) {
            self.kill_if_ours(pid);
        }
    }

    /// Where a role's output goes.
    fn log_of(&self, role: &str) -> PathBuf {
        if let Some(node) = role.strip_prefix("agent/") {
            self.node_dir(node).join("agent.log")
        } else if let Some(node) = role.strip_prefix("forward/") {
            self.node_dir(node).join("forward.log")
        } else if role.starts_with("pod/") {
            self.dir.join("pods.log")
        } else {
            self.dir.join(format!("{role}.log"))
        }
    }

    /// Starts `program` for `role` (inside `netns` if given, with the environment
    /// variables `env`) and remembers it.
    pub(super) fn start(
        &mut self,
        role: &str,
        program: &Path,
        args: &[OsString],
        netns: Option<&str>,
        env: &[(&str, &Path)],
    ) -> Result<(), SupervisionError> {
        let log = self.log_of(role);
        let pid = process::spawn(program, args, netns, env, &log).map_err(|source| {
            SupervisionError::Start {
                role: role.to_owned(),
                source,
            }
        })?;
        self.record.processes.insert(role.to_owned(), pid);
        Ok(self.save()?)
    }

    /// Starts the operators that do not run (and with several, the service in front of
    /// them); says which it started.
    pub fn start_operators(&mut self) -> Result<Vec<String>, SupervisionError> {
        let mut started = Vec::new();
        let roles = self.operator_roles();
        for role in &roles {
            if !self.is_running(role) {
                self.start_operator(role)?;
                started.push(role.clone());
            }
        }
        if roles.len() > 1 && !self.is_running("service") {
            let mut args = os(&["lab", "--name", &self.record.name, "--dir"]);
            args.push(self.dir.clone().into());
            args.extend(os(&["service", "--listen"]));
            args.push(self.dir.join("operator.sock").into());
            for role in &roles {
                args.push("--backend".into());
                let (Address::Unix(grpc), Address::Unix(http)) =
                    (self.operator_grpc_of(role), self.operator_http_of(role))
                else {
                    continue;
                };
                args.push(format!("{}={}", grpc.display(), http.display()).into());
            }
            let program = self.record.binaries.wireway.clone();
            self.start("service", &program, &args, None, &[])?;
            started.push("service".to_owned());
        }
        Ok(started)
    }

    /// Starts the operator `role`.
    fn start_operator(&mut self, role: &str) -> Result<(), SupervisionError> {
        let mut args: Vec<OsString> = Vec::new();
        let kubeconfig = self.operator_kubeconfig();
        let mut env = Vec::new();
        if self.is_kubernetes() {
            // Kubernetes mode: the objects from the API server, agents proven by their
            // pods' tokens. Each start is a new identity on the Lease, as a new pod is.
            let identity = format!("{}-{role}-{}", self.record.name, unix_millis());
            args.extend(os(&[
                "--namespace",
                "wireway-system",
                "--identity",
                &identity,
            ]));
            args.extend(os(&["--agent-auth", "token"]));
            env.push(("KUBECONFIG", kubeconfig.as_path()));
        } else {
            let own = self.own_manifests();
            for root in self.record.manifests.iter().chain([&own]) {
                args.push("--manifests".into());
                args.push(root.into());
            }
        }
        let grpc = if self.operator_roles().len() > 1 {
            self.operator_grpc_of(role)
        } else {
            self.operator_grpc()
        };
        args.extend(os(&["--listen-grpc", &grpc.to_string()]));
        args.extend(os(&[
            "--listen-http",
            &self.operator_http_of(role).to_string(),
        ]));
        args.push("--state-dir".into());
        args.push(self.dir.join(role).into());
        args.extend(os(&[
            "--trust-domain",
            &self.record.trust_domain,
            "--agent-grace",
            "10",
        ]));
        args.extend(self.operator_tls_args());
        if let Some(federation) = &self.record.federation {
            args.extend(os(&["--federation-listen", &federation.listen.to_string()]));
            if federation.behind_nat {
                args.push("--federation-behind-nat".into());
            }
        }
        let program = self.record.binaries.operator.clone();
        self.start(role, &program, &args, None, &env)
    }

    /// Starts a node's agent unless it runs.
    pub fn start_agent(&mut self, node: &str) -> Result<bool, SupervisionError> {
        let role = agent_role(node);
        if self.is_running(&role) {
            return Ok(false);
        }
        let Some(lab_node) = self.record.nodes.get(node).cloned() else {
            return Err(SupervisionError::NoNode {
                node: node.to_owned(),
            });
        };
        let state = self.node_dir(node);
        std::fs::create_dir_all(&state)
            .map_err(|e| SupervisionError::StateDir(FileError::on("create", &state)(e)))?;
        let mut args: Vec<OsString> = vec!["--state-dir".into(), state.into()];
        let cgroups = self
            .is_kubernetes()
            .then(|| self.node_cgroups(node))
            .flatten();
        match cgroups {
            // As on a node of a cluster: pods found by UID in the cgroup tree.
            Some(cgroups) => {
                args.push("--cgroup-root".into());
                args.push(cgroups.root.clone().into());
            }
            None => {
                args.push("--netns-dir".into());
                args.push(self.netns_links().into());
                // The links there point into /run/netns, where `ip netns` keeps the pods'
                // namespaces; the agent accepts namespace paths only beneath directories
                // it is given.
                args.extend(os(&["--netns-path-prefix", "/run/netns"]));
            }
        }
        args.extend(os(&[
            "run",
            "--node-name",
            node,
            "--operator",
            &self.operator_grpc().to_string(),
        ]));
        args.extend(os(&["--underlay-address", &lab_node.address]));
        if let Some(upstream) = self.record.dns_upstream {
            args.extend(os(&["--dns-upstream", &upstream.to_string()]));
        }
        args.extend(os(&["--listen-http", &self.agent_http(node).to_string()]));
        let (kubeconfig, operator_token) = self.agent_credentials(node);
        let mut env = Vec::new();
        if let Some(api_server) = self.record.kubernetes.as_ref().and_then(|k| k.api_server) {
            self.start_forwarder(node, &lab_node.netns, api_server)?;
            // Its pod's tokens: for the operator (which needs only the CA to be checked)
            // and for the API server, to annotate its Node.
            args.push("--token-file".into());
            args.push(operator_token.into());
            args.extend(os(&["--publish-node", "true", "--tls-ca"]));
            args.push(self.node_pki(node).join("ca.crt").into());
            env.push(("KUBECONFIG", kubeconfig.as_path()));
        } else {
            args.extend(self.agent_tls_args(node));
        }
        let program = self.record.binaries.agent.clone();
        self.start(&role, &program, &args, Some(&lab_node.netns), &env)?;
        Ok(true)
    }

    /// Starts the forwarder that puts the API server within `node`'s reach, unless it
    /// runs.
    fn start_forwarder(
        &mut self,
        node: &str,
        netns: &str,
        api_server: std::net::SocketAddr,
    ) -> Result<(), SupervisionError> {
        let role = forwarder_role(node);
        if self.is_running(&role) {
            return Ok(());
        }
        let mut args = os(&["lab", "--name", &self.record.name, "--dir"]);
        args.push(self.dir.clone().into());
        args.extend(os(&["forward", "--netns", netns, "--address"]));
        args.push(api_server.to_string().into());
        let program = self.record.binaries.wireway.clone();
        self.start(&role, &program, &args, None, &[])
    }

    /// Starts the supervisor unless it runs.
    pub fn start_supervisor(&mut self) -> Result<bool, SupervisionError> {
        if self.is_running("supervisor") {
            return Ok(false);
        }
        let mut args = os(&["lab", "--name", &self.record.name, "--dir"]);
        args.push(self.dir.clone().into());
        args.push("supervise".into());
        let program = self.record.binaries.wireway.clone();
        self.start("supervisor", &program, &args, None, &[])?;
        Ok(true)
    }

    /// Starts whatever of the lab is not running; says what it started.
    pub fn start_all(&mut self) -> Result<Vec<String>, SupervisionError> {
        let mut started = Vec::new();
        let control_plane = self.record.kubernetes.as_ref();
        if let Some(program) = control_plane.and_then(|k| k.control_plane.clone())
            && !self.is_running("control-plane")
        {
            self.start_control_plane(&program)
                .map_err(|e| SupervisionError::Kubernetes(Box::new(e)))?;
            started.push("control-plane".to_owned());
        }
        started.extend(self.start_operators()?);
        let nodes: Vec<String> = self.record.nodes.keys().cloned().collect();
        for node in nodes {
            if self.start_agent(&node)? {
                started.push(agent_role(&node));
            }
        }
        if self.start_supervisor()? {
            started.push("supervisor".to_owned());
        }
        Ok(started)
    }

    /// A process of the lab that is not running, with the end of its log.
    pub fn dead_process(&self) -> Option<DeadProcess> {
        let (role, pid) = self
            .record
            .processes
            .iter()
            .find(|(role, _)| !self.is_running(role))?;
        let log = self.log_of(role);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Some(DeadProcess {
            role: role.clone(),
            status: process::ended(*pid),
            log,
            tail: tail.join("\n"),
        })
    }

    /// Removes everything the record names: processes, namespaces (with every process in
    /// them), the directory. Goes on past errors and returns them.
    pub fn down(self) -> Vec<SupervisionError> {
        let mut errors = Vec::new();
        let kubernetes = |e| SupervisionError::Kubernetes(Box::new(e));
        if self
            .record
            .kubernetes
            .as_ref()
            .is_some_and(|k| k.control_plane.is_none())
        {
            // Another's API server outlives the lab: its Nodes and agent pods go.
            for node in self.record.nodes.keys() {
                if let Err(e) = self.unregister_node(node) {
                    errors.push(kubernetes(e));
                }
            }
        }
        for pid in self.record.processes.values() {
            self.kill_if_ours(*pid);
        }
        for netns in &self.record.namespaces {
            if let Err(source) = net::delete_netns(netns) {
                errors.push(SupervisionError::RemoveNetns {
                    netns: netns.clone(),
                    source,
                });
            }
        }
        errors.extend(self.remove_cgroups().into_iter().map(kubernetes));
        if self.cgroups_mounted() {
            // Left as it is: removing it would walk the cgroups mounted in it.
            return errors;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            errors.push(SupervisionError::RemoveDir(FileError::on(
                "remove", &self.dir,
            )(e)));
        }
        errors
    }
}

/// Milliseconds since the epoch: what makes each start of an operator a new identity.
fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
