//! The lab as kubelet (`wireway lab up --kubernetes`): around a real API server (the test
//! control plane the lab starts, or a cluster given by `--kubeconfig`), the lab plays the
//! parts a cluster's nodes play, and the operator and agents run in Kubernetes mode
//! exactly as in a cluster:
//!
//! * the API server: Wireway's namespace, CRDs and RBAC installed from `config/`, the
//!   user's manifests applied with server-side apply (field manager `wireway-lab`);
//! * nodes: a Node object per lab node (its underlay address as `InternalIP`, `Ready`),
//!   and on it an agent pod (host network, ServiceAccount `wireway-agent`) whose bound
//!   tokens its agent runs with: one for the API server (to annotate its Node, which the
//!   admission policy of `config/rbac/` checks against the token's node), one for the
//!   operator (audience `wireway-operator`, which the operator checks by TokenReview);
//! * pods, as a scheduler, container runtime and kubelet would: bound to a node (a
//!   Binding), a network namespace with a process in it, that process in a cgroup named
//!   after the pod's UID (nodes alternate between the systemd driver's cgroup v2 layout
//!   and the cgroupfs driver's v1 layout, so agents find pods by UID as on real nodes of
//!   either kind), and the status `Running`; a pod being deleted is torn down and its
//!   deletion completed (grace period 0), as its kubelet does;
//! * the operator runs with its ServiceAccount's token.
//!
//! Everything goes through `kubectl` with the lab's administrator kubeconfig, as a person
//! would do it; every cgroup is in the lab's record before it is made.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wireway_crds::manifest::yaml_files;
use wireway_runtime::errors::FileError;

use super::Lab;
use super::reconcile::Inventory;
use super::record::{KubernetesRecord, RecordError};
use super::supervision::SupervisionError;

/// The field manager of what the lab applies.
pub const FIELD_MANAGER: &str = "wireway-lab";
/// Wireway's namespace.
const SYSTEM: &str = "wireway-system";
/// How long the tokens the lab issues last (a kubelet would renew them; a lab is
/// short-lived).
const TOKEN_DURATION: &str = "48h";
/// How long one of the lab's requests to the API server may take.
const REQUEST_TIMEOUT: &str = "--request-timeout=30s";
/// How long the control plane may take to be ready (seconds on an idle machine).
const CONTROL_PLANE_READY: Duration = Duration::from_secs(180);

/// Why the lab could not do its part around the API server.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// A program could not be run.
    #[error("failed to run {}", program.display())]
    Run {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `kubectl` failed.
    #[error("`kubectl {args}` failed: {stderr}")]
    Kubectl {
        /// Its arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
    /// The control plane did not say it was ready.
    #[error("the control plane was not ready within {} s; the end of {}:\n{tail}", CONTROL_PLANE_READY.as_secs(), log.display())]
    NotReady {
        /// Its log.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A file could not be written or a cgroup made or removed.
    #[error(transparent)]
    File(FileError),
    /// A cgroup hierarchy could not be mounted or unmounted.
    #[error("failed to mount or unmount a cgroup hierarchy on {}: {stderr}", dir.display())]
    Mount {
        /// Where.
        dir: PathBuf,
        /// What `mount` said.
        stderr: String,
    },
    /// A pod's process did not enter the pod's network namespace.
    #[error("the process of pod {pod} did not enter its network namespace {netns}")]
    Netns {
        /// The pod.
        pod: String,
        /// The namespace.
        netns: String,
    },
    /// The lab's client of the API server could not be made from its kubeconfig.
    #[error("failed to make a client of the API server from {}", kubeconfig.display())]
    Client {
        /// The kubeconfig.
        kubeconfig: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A process could not be started.
    #[error(transparent)]
    Start(Box<SupervisionError>),
    /// The API server has Nodes of its own.
    #[error(
        "the API server has Nodes the lab did not make ({nodes}): the lab plays every node's kubelet, so it needs an API server of its own (without --kubeconfig it starts one)"
    )]
    ForeignNodes {
        /// The Nodes.
        nodes: String,
    },
    /// The API server's pods could not be listed.
    #[error("the watch of the API server ended before it had listed the pods")]
    NotSynced,
    /// A pod's UID is not one.
    #[error("pod {pod} has the UID {uid:?}, which is not a UID")]
    NotUid {
        /// The pod.
        pod: String,
        /// What its UID says.
        uid: String,
    },
    /// A pod was to run on a node whose cgroup tree the lab has not made.
    #[error("node {node} has no cgroup tree in the lab's record")]
    NoCgroups {
        /// The node.
        node: String,
    },
    /// The API server is not at an address the lab can forward.
    #[error(
        "the API server is at {server}: the lab needs it at https://IP:PORT, which it makes reachable from its nodes"
    )]
    ServerAddress {
        /// The kubeconfig's server.
        server: String,
    },
    /// Asked of a lab that does not play kubelet.
    #[error("the lab was not made with --kubernetes")]
    NotKubernetes,
    /// The record could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// How a node's pods' cgroups are laid out, as the container runtime's cgroup driver
/// lays them out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CgroupLayout {
    /// cgroup v2, systemd driver:
    /// `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/cri-containerd-<id>.scope`.
    SystemdV2,
    /// cgroup v1, cgroupfs driver: `kubepods/besteffort/pod<uid>/<id>`.
    CgroupfsV1,
}

/// A node's cgroup tree: what its agent is given as `--cgroup-root`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCgroups {
    /// The tree's root.
    pub root: PathBuf,
    /// How pods are laid out in it.
    pub layout: CgroupLayout,
}

impl NodeCgroups {
    /// The cgroup of the container of the pod `uid`.
    fn pod(&self, uid: &str) -> PathBuf {
        // A container ID is 64 hex digits; the pod's UID without dashes, twice, is one.
        let id = uid.replace('-', "").repeat(2);
        match self.layout {
            CgroupLayout::SystemdV2 => self
                .root
                .join("kubepods.slice/kubepods-besteffort.slice")
                .join(format!(
                    "kubepods-besteffort-pod{}.slice",
                    uid.replace('-', "_")
                ))
                .join(format!("cri-containerd-{id}.scope")),
            CgroupLayout::CgroupfsV1 => self
                .root
                .join("kubepods/besteffort")
                .join(format!("pod{uid}"))
                .join(id),
        }
    }
}

fn file_error<'a>(
    verb: &'static str,
    path: &'a Path,
) -> impl Fn(std::io::Error) -> KubeError + use<'a> {
    move |e| KubeError::File(FileError::on(verb, path)(e))
}

/// "namespace/name" split.
fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

impl Lab {
    fn kubernetes(&self) -> Result<&KubernetesRecord, KubeError> {
        self.record
            .kubernetes
            .as_ref()
            .ok_or(KubeError::NotKubernetes)
    }

    fn kubernetes_mut(&mut self) -> Result<&mut KubernetesRecord, KubeError> {
        self.record
            .kubernetes
            .as_mut()
            .ok_or(KubeError::NotKubernetes)
    }

    /// Whether the lab plays kubelet around an API server.
    pub fn is_kubernetes(&self) -> bool {
        self.record.kubernetes.is_some()
    }

    /// Runs `kubectl` as the lab's administrator, with `input` on its standard input;
    /// returns what it printed.
    pub fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String, KubeError> {
        let kubernetes = self.kubernetes()?;
        let mut child = Command::new(&kubernetes.kubectl)
            .arg(REQUEST_TIMEOUT)
            .args(args)
            .env("KUBECONFIG", &kubernetes.kubeconfig)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| KubeError::Run {
                program: kubernetes.kubectl.clone(),
                source,
            })?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            // A kubectl that fails early closes its input: what it says is in stderr.
            let _ = stdin.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(|source| KubeError::Run {
            program: kubernetes.kubectl.clone(),
            source,
        })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(KubeError::Kubectl {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Applies `objects` with server-side apply, as the lab.
    fn apply(&self, objects: &[Value]) -> Result<(), KubeError> {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        self.kubectl(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                FIELD_MANAGER,
                "-f",
                "-",
            ],
            Some(&list.to_string()),
        )
        .map(drop)
    }

    /// Merges `status` into an object's status (a kubelet's write).
    fn patch_status(&self, kind: &str, key: &str, status: &Value) -> Result<(), KubeError> {
        let (namespace, name) = split(key);
        let patch = json!({ "status": status }).to_string();
        let mut args = vec![
            "patch",
            kind,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ];
        if !namespace.is_empty() {
            args.extend(["-n", namespace]);
        }
        self.kubectl(&args, None).map(drop)
    }

    /// Starts the test control plane `program` in the lab's directory and waits until it
    /// is ready; returns its administrator's kubeconfig.
    pub fn start_control_plane(&mut self, program: &Path) -> Result<PathBuf, KubeError> {
        let dir = self.dir.join("control-plane");
        let mut args: Vec<std::ffi::OsString> = vec!["--dir".into(), dir.clone().into()];
        args.extend(["--ready-timeout".into(), "3m".into()]);
        let log = self.dir.join("control-plane.log");
        // The log is appended to: only what this start writes says it is ready.
        let before = std::fs::metadata(&log).map_or(0, |m| m.len());
        self.start("control-plane", program, &args, None, &[])
            .map_err(|e| KubeError::Start(Box::new(e)))?;
        let deadline = Instant::now() + CONTROL_PLANE_READY;
        loop {
            let bytes = std::fs::read(&log).unwrap_or_default();
            let start = usize::try_from(before).unwrap_or(0).min(bytes.len());
            let text = String::from_utf8_lossy(&bytes[start..]).into_owned();
            if text.lines().any(|l| l.starts_with("ready ")) {
                return Ok(dir.join("admin.kubeconfig"));
            }
            if Instant::now() > deadline || !self.is_running("control-plane") {
                let lines: Vec<&str> = text.lines().rev().take(10).collect();
                let tail: Vec<&str> = lines.into_iter().rev().collect();
                return Err(KubeError::NotReady {
                    log,
                    tail: tail.join("\n"),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Installs Wireway's namespace, CRDs and RBAC from `config`, and applies the user's
    /// manifests.
    pub fn install(&self, config: &Path) -> Result<(), KubeError> {
        let path = |p: &str| config.join(p).to_string_lossy().into_owned();
        let apply = ["apply", "--server-side", "--field-manager", FIELD_MANAGER];
        self.kubectl(
            &[&apply[..], &["-f", &path("default/namespace.yaml")]].concat(),
            None,
        )?;
        self.kubectl(&[&apply[..], &["-k", &path("crd")]].concat(), None)?;
        self.kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "crd",
                "--all",
                "--timeout=60s",
            ],
            None,
        )?;
        self.kubectl(&[&apply[..], &["-k", &path("rbac")]].concat(), None)?;
        // The files the operator's manifest source would read (no kustomization, nothing
        // of a lab of several clusters below), not whatever `kubectl -R` finds.
        let mut files = Vec::new();
        for root in &self.record.manifests {
            yaml_files(root, &mut files)
                .map_err(|e| KubeError::File(FileError::on("read", root)(e)))?;
        }
        for file in files {
            let file = file.to_string_lossy();
            self.kubectl(&[&apply[..], &["-f", &file]].concat(), None)?;
        }
        Ok(())
    }

    /// A token of ServiceAccount `account` of Wireway's namespace.
    fn token(&self, account: &str, extra: &[&str]) -> Result<String, KubeError> {
        let args = [
            &[
                "create",
                "token",
                account,
                "-n",
                SYSTEM,
                "--duration",
                TOKEN_DURATION,
            ][..],
            extra,
        ]
        .concat();
        Ok(self.kubectl(&args, None)?.trim().to_owned())
    }

    /// The API server's address (IP:PORT: nodes reach it through a forwarder).
    pub fn api_server(&self) -> Result<SocketAddr, KubeError> {
        let server = self.kubectl(
            &[
                "config",
                "view",
                "--minify",
                "-o",
                "jsonpath={.clusters[0].cluster.server}",
            ],
            None,
        )?;
        let address = server.trim().trim_start_matches("https://");
        address
            .trim_end_matches('/')
            .parse()
            .map_err(|_| KubeError::ServerAddress {
                server: server.trim().to_owned(),
            })
    }

    /// Writes a kubeconfig for the API server the lab uses, authenticating with `token`.
    fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<(), KubeError> {
        let view = |field: &str| {
            self.kubectl(
                &[
                    "config",
                    "view",
                    "--raw",
                    "--minify",
                    "--flatten",
                    "-o",
                    &format!("jsonpath={{.clusters[0].cluster.{field}}}"),
                ],
                None,
            )
        };
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "lab", "cluster": {
                "server": view("server")?,
                "certificate-authority-data": view("certificate-authority-data")?}}],
            "users": [{"name": "lab", "user": {"token": token}}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "lab"}}],
            "current-context": "lab",
        });
        wireway_runtime::files::write_private(path, kubeconfig.to_string().as_bytes())
            .map_err(file_error("write", path))
    }

    /// The operator's kubeconfig: its ServiceAccount's token.
    pub(super) fn operator_kubeconfig(&self) -> PathBuf {
        self.dir.join("operator.kubeconfig")
    }

    /// The token the lab reads the operator's status with.
    pub(super) fn status_token(&self) -> PathBuf {
        self.dir.join("status-token")
    }

    /// Issues the operator's kubeconfig, and the lab's token for the operator's status:
    /// of a ServiceAccount of its own bound to `wireway-status-reader` (as a cluster's
    /// administrator binds who may read it), for audience `wireway-operator`.
    pub fn issue_credentials(&self) -> Result<(), KubeError> {
        let token = self.token("wireway-operator", &[])?;
        self.write_kubeconfig(&self.operator_kubeconfig(), &token)?;
        self.apply(&[
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "wireway-lab", "namespace": SYSTEM}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "wireway-lab-status-reader"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "wireway-status-reader"},
                "subjects": [{"kind": "ServiceAccount", "name": "wireway-lab",
                              "namespace": SYSTEM}]}),
        ])?;
        let token = self.token("wireway-lab", &["--audience", "wireway-operator"])?;
        let path = self.status_token();
        wireway_runtime::files::write_private(&path, token.as_bytes())
            .map_err(file_error("write", &path))
    }

    /// A node agent's kubeconfig (its pod's token for the API server) and its token for
    /// the operator.
    pub(super) fn agent_credentials(&self, node: &str) -> (PathBuf, PathBuf) {
        let dir = self.node_dir(node);
        (dir.join("kubeconfig"), dir.join("operator-token"))
    }

    /// Registers `node` (underlay `address`): its Node object, Ready; the agent pod on
    /// it, Running; and its agent's credentials, bound to that pod.
    pub(super) fn register_node(&self, node: &str, address: &str) -> Result<(), KubeError> {
        let agent = format!("wireway-agent-{node}");
        self.apply(&[
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node,
                "labels": {"kubernetes.io/hostname": node, "wireway.dev/lab": self.record.name}}}),
            json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": agent, "namespace": SYSTEM,
                             "labels": {"app.kubernetes.io/name": "wireway-agent"}},
                "spec": {"nodeName": node, "hostNetwork": true,
                         "serviceAccountName": "wireway-agent",
                         "containers": [{"name": "agent", "image": "wireway-agent"}]}}),
        ])?;
        self.patch_status(
            "node",
            node,
            &json!({
                "addresses": [{"type": "InternalIP", "address": address},
                              {"type": "Hostname", "address": node}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                "message": "wireway lab"}],
            }),
        )?;
        self.set_running(&format!("{SYSTEM}/{agent}"), address)?;
        let bound = ["--bound-object-kind", "Pod", "--bound-object-name", &agent];
        let (kubeconfig, operator_token) = self.agent_credentials(node);
        std::fs::create_dir_all(self.node_dir(node))
            .map_err(file_error("create", &self.node_dir(node)))?;
        let token = self.token("wireway-agent", &bound)?;
        self.write_kubeconfig(&kubeconfig, &token)?;
        let token = self.token(
            "wireway-agent",
            &[&bound[..], &["--audience", "wireway-operator"]].concat(),
        )?;
        wireway_runtime::files::write_private(&operator_token, token.as_bytes())
            .map_err(file_error("write", &operator_token))
    }

    /// Removes `node`'s Node object and agent pod.
    pub(super) fn unregister_node(&self, node: &str) -> Result<(), KubeError> {
        self.kubectl(
            &["delete", "node", node, "--ignore-not-found", "--wait=false"],
            None,
        )?;
        self.finish_deletion(&format!("{SYSTEM}/wireway-agent-{node}"))
    }

    /// Binds a pod to `node`, as a scheduler does (a pod bound already is fine: a
    /// Binding made before a failure is not made again).
    pub(super) fn bind(&self, key: &str, node: &str) -> Result<(), KubeError> {
        let (namespace, name) = split(key);
        let binding = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
        match self.kubectl(&["create", "-f", "-"], Some(&binding.to_string())) {
            Err(KubeError::Kubectl { stderr, .. }) if stderr.contains("is already assigned") => {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Sets a pod's status to Running on the node at `host`, its containers running and
    /// ready, as its kubelet does.
    pub(super) fn set_running(&self, key: &str, host: &str) -> Result<(), KubeError> {
        let (namespace, name) = split(key);
        let pod = self.kubectl(&["get", "pod", name, "-n", namespace, "-o", "json"], None)?;
        let pod: Value = serde_json::from_str(&pod).unwrap_or_default();
        let statuses: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true,
                       "started": true, "restartCount": 0,
                       "state": {"running": {}}})
            })
            .collect();
        self.patch_status(
            "pod",
            key,
            &json!({"phase": "Running", "hostIP": host, "containerStatuses": statuses,
                "conditions": [{"type": "PodScheduled", "status": "True"},
                               {"type": "Initialized", "status": "True"},
                               {"type": "ContainersReady", "status": "True"},
                               {"type": "Ready", "status": "True"}]}),
        )
    }

    /// Completes the deletion of a pod whose containers are gone, as its kubelet does
    /// (a pod that is gone already is fine).
    pub(super) fn finish_deletion(&self, key: &str) -> Result<(), KubeError> {
        let (namespace, name) = split(key);
        self.kubectl(
            &[
                "delete",
                "pod",
                name,
                "-n",
                namespace,
                "--grace-period=0",
                "--force",
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        )
        .map(drop)
    }

    /// Makes the cgroup tree of the `n`th node: the v2 layout for even `n`, the v1 layout
    /// for odd `n`. Both hierarchies are mounted in the lab's directory (v1: one of the
    /// lab's own, without controllers), where agents see them: `ip netns exec`, which
    /// starts them in their node's namespace, mounts a sysfs of that namespace over
    /// `/sys`, hiding `/sys/fs/cgroup` (in a cluster the agent's pod mounts the host's
    /// tree the same way, at `/host/sys/fs/cgroup`).
    pub(super) fn make_node_cgroups(&mut self, node: &str, n: u32) -> Result<(), KubeError> {
        let layout = if n.is_multiple_of(2) {
            CgroupLayout::SystemdV2
        } else {
            CgroupLayout::CgroupfsV1
        };
        let mount = self.mounted(layout)?;
        let cgroups = NodeCgroups {
            root: match layout {
                CgroupLayout::SystemdV2 => mount.join(self.v2_top()).join(node),
                CgroupLayout::CgroupfsV1 => mount.join(node),
            },
            layout,
        };
        let root = cgroups.root.clone();
        self.kubernetes_mut()?
            .cgroups
            .insert(node.to_owned(), cgroups);
        self.save()?;
        std::fs::create_dir_all(&root).map_err(file_error("create", &root))
    }

    /// The lab's own cgroup at the top of the v2 hierarchy.
    fn v2_top(&self) -> String {
        format!("wireway-lab-{}", self.record.name)
    }

    /// Where the hierarchy of `layout` is mounted in the lab's directory; mounts it the
    /// first time (in the record before it is mounted).
    fn mounted(&mut self, layout: CgroupLayout) -> Result<PathBuf, KubeError> {
        let (dir, args) = match layout {
            CgroupLayout::SystemdV2 => (self.dir.join("cgroup-v2"), vec!["-t", "cgroup2"]),
            CgroupLayout::CgroupfsV1 => (self.dir.join("cgroup-v1"), vec!["-t", "cgroup"]),
        };
        if self.kubernetes()?.mounts.contains(&dir) {
            return Ok(dir);
        }
        self.kubernetes_mut()?.mounts.push(dir.clone());
        self.save()?;
        std::fs::create_dir_all(&dir).map_err(file_error("create", &dir))?;
        let named = format!("none,name={}", self.v2_top());
        let options = match layout {
            CgroupLayout::SystemdV2 => vec![],
            CgroupLayout::CgroupfsV1 => vec!["-o", named.as_str()],
        };
        let target = dir.to_string_lossy();
        let all = [&args[..], &options[..], &["cgroup", &target]].concat();
        run("mount", &all)?;
        Ok(dir)
    }

    /// A node's cgroup tree.
    pub(super) fn node_cgroups(&self, node: &str) -> Option<&NodeCgroups> {
        self.record.kubernetes.as_ref()?.cgroups.get(node)
    }

    /// Runs the process of pod `key` (UID `uid`) on `node`: in the pod's network
    /// namespace `netns`, then moved into the pod's cgroup, as a container runtime does.
    /// Returns the cgroup.
    pub(super) fn run_pod(
        &mut self,
        key: &str,
        uid: &str,
        node: &str,
        netns: &str,
    ) -> Result<PathBuf, KubeError> {
        let Some(cgroups) = self.node_cgroups(node) else {
            return Err(KubeError::NoCgroups {
                node: node.to_owned(),
            });
        };
        // A UID names directories: only a UID's characters.
        if uid.len() != 36 || !uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(KubeError::NotUid {
                pod: key.to_owned(),
                uid: uid.to_owned(),
            });
        }
        let cgroup = cgroups.pod(uid);
        std::fs::create_dir_all(&cgroup).map_err(file_error("create", &cgroup))?;
        // The lab's directory in its command line marks it as the lab's ($0). It waits
        // to be in the pod's cgroup ($1 is in its path) before it starts what lives on,
        // so that is in the cgroup too, as a container's processes are.
        let marker = self.dir.to_string_lossy().into_owned();
        let name = cgroup
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let script = r#"until grep -q "$1" /proc/self/cgroup; do sleep 0.05; done; while :; do sleep 3600; done"#;
        let args = ["-c", script, &marker, &name].map(Into::into);
        self.start(&pod_role(key), Path::new("sh"), &args, Some(netns), &[])
            .map_err(|e| KubeError::Start(Box::new(e)))?;
        let pid = self.record.processes[&pod_role(key)];
        // Into the cgroup only once it is in the namespace: an agent that finds it there
        // must find the pod's namespace.
        let wanted = std::fs::metadata(Path::new("/run/netns").join(netns))
            .map(|m| (m.dev(), m.ino()))
            .map_err(file_error("read", Path::new("/run/netns")))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .map(|m| (m.dev(), m.ino()))
            .ok()
            != Some(wanted)
        {
            if Instant::now() > deadline {
                return Err(KubeError::Netns {
                    pod: key.to_owned(),
                    netns: netns.to_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let procs = cgroup.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(file_error("write", &procs))?;
        Ok(cgroup)
    }

    /// Removes what the lab made of cgroups: the pods' and nodes' trees (their processes
    /// must be gone), the lab's own at the top of the v2 hierarchy, and the mounts.
    pub(super) fn remove_cgroups(&self) -> Vec<KubeError> {
        let Some(kubernetes) = &self.record.kubernetes else {
            return Vec::new();
        };
        let mut errors: Vec<KubeError> = kubernetes
            .cgroups
            .values()
            .filter_map(|c| remove_tree(&c.root).err())
            .collect();
        for mount in kubernetes.mounts.iter().rev() {
            let top = mount.join(self.v2_top());
            if top.exists()
                && let Err(e) = remove_tree(&top)
            {
                errors.push(e);
            }
            if let Err(e) = run("umount", &[&mount.to_string_lossy()]) {
                errors.push(e);
            }
        }
        errors
    }

    /// Whether a cgroup hierarchy is still mounted in the lab's directory (removing the
    /// directory would then walk the host's cgroups).
    pub(super) fn cgroups_mounted(&self) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        self.record.kubernetes.as_ref().is_some_and(|k| {
            k.mounts.iter().any(|m| {
                let m = m.to_string_lossy();
                mounts.lines().any(|l| l.split(' ').nth(1) == Some(&m))
            })
        })
    }

    /// Refuses an API server with Nodes the lab did not make: it would bind pods and
    /// report statuses as their kubelet, and place pods pinned to them on nodes of its
    /// own under their names.
    pub fn check_no_foreign_nodes(&self) -> Result<(), KubeError> {
        let selector = format!("wireway.dev/lab!={}", self.record.name);
        let nodes = self.kubectl(&["get", "nodes", "-l", &selector, "-o", "name"], None)?;
        let nodes: Vec<&str> = nodes.split_whitespace().collect();
        if nodes.is_empty() {
            Ok(())
        } else {
            Err(KubeError::ForeignNodes {
                nodes: nodes.join(", "),
            })
        }
    }
}

/// The role of a pod's process in the record.
pub(super) fn pod_role(key: &str) -> String {
    format!("pod/{key}")
}

/// Runs a program that must succeed.
fn run(program: &str, args: &[&str]) -> Result<(), KubeError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| KubeError::Run {
            program: PathBuf::from(program),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KubeError::Mount {
            dir: PathBuf::from(args.last().copied().unwrap_or_default()),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Removes a cgroup and every cgroup below it, deepest first; a cgroup that is gone is
/// fine. A cgroup whose last process has just been killed may be busy for a moment.
pub(super) fn remove_tree(root: &Path) -> Result<(), KubeError> {
    if !root.exists() {
        return Ok(());
    }
    let mut dirs = vec![root.to_owned()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = std::fs::read_dir(&dirs[i]) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    for dir in dirs.iter().rev() {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                // EBUSY, ENOTEMPTY: processes that were just killed are still leaving.
                Err(e)
                    if Instant::now() < deadline && matches!(e.raw_os_error(), Some(16 | 39)) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(KubeError::File(FileError::on("remove", dir)(e))),
            }
        }
    }
    Ok(())
}

/// The pods of the API server, as the lab needs them, once it has listed them all.
/// Nodes are the lab's own in this mode: Node objects are not the user's to declare.
pub async fn inventory(kubeconfig: &Path) -> Result<Inventory, KubeError> {
    let mut inventory = Inventory::default();
    let (mut received, task) = watch(kubeconfig).await?;
    while let Some(event) = received.recv().await {
        match event {
            wireway_operator::source::Event::Changes(changes) => {
                for change in &changes {
                    inventory.apply_pods(change);
                }
            }
            wireway_operator::source::Event::Synced => {
                task.abort();
                return Ok(inventory);
            }
            wireway_operator::source::Event::Problems(_) => {}
        }
    }
    Err(KubeError::NotSynced)
}

/// Watches the API server of `kubeconfig` as the operator does.
pub async fn watch(
    kubeconfig: &Path,
) -> Result<
    (
        tokio::sync::mpsc::Receiver<wireway_operator::source::Event>,
        tokio::task::JoinHandle<()>,
    ),
    KubeError,
> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| KubeError::Client {
        kubeconfig: kubeconfig.to_owned(),
        source,
    };
    let file = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| error(e.into()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .map_err(|e| error(e.into()))?;
    let client = kube::Client::try_from(config).map_err(|e| error(e.into()))?;
    let (events, received) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn(wireway_operator::source::kubernetes::watch(client, events));
    Ok((received, task))
}
