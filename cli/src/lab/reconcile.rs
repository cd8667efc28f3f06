//! The lab follows the manifests: from the pods and nodes they name (the [`Inventory`]),
//! nodes and pods are made, placed (by [`super::topology`]) and removed, agents of new
//! nodes started, and the lab's own manifests (its Node objects and Bindings) written.
//! `wireway lab supervise` runs this whenever the user's manifests change.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use wireway_crds::validation::SchemaError;
use wireway_operator::plan::{Change, Pod};
use wireway_operator::source::Event;
use wireway_operator::source::manifests::Manifests;
use wireway_runtime::errors::{FileError, chain};
use wireway_runtime::pki::CertError;

use super::Lab;
use super::kubernetes::{self, KubeError, pod_role};
use super::manifests;
use super::net::{self, NetError};
use super::record::{LabNode, LabPod, RecordError};
use super::supervision::{SupervisionError, agent_role, forwarder_role};
use super::topology::{self, PodSpec};
use super::underlay::{UnderlayError, underlay_address};

/// Why the lab could not follow the manifests.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The record could not be read or written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The manifests could not be read: the CRDs' schemas did not compile.
    #[error("failed to read the manifests")]
    Manifests(#[source] SchemaError),
    /// A network namespace could not be made or removed.
    #[error("failed to change the network namespace {netns}")]
    Netns {
        /// The namespace.
        netns: String,
        /// The cause.
        #[source]
        source: NetError,
    },
    /// A node could not be connected to the underlay.
    #[error(transparent)]
    Underlay(#[from] UnderlayError),
    /// A node's certificate could not be issued.
    #[error("failed to issue the certificate of node {node}")]
    Certificate {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: CertError,
    },
    /// A new node's agent could not be started.
    #[error(transparent)]
    Agent(#[from] SupervisionError),
    /// A pod's namespace could not be linked where its agent looks.
    #[error(transparent)]
    Link(FileError),
    /// The lab's own manifests could not be written.
    #[error(transparent)]
    Write(FileError),
    /// The lab's part around the API server failed.
    #[error(transparent)]
    Kubernetes(#[from] KubeError),
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

    /// Follows one change of the pods (Node objects are the lab's own when it plays
    /// kubelet); says whether the lab must act on it.
    pub fn apply_pods(&mut self, change: &Change) -> bool {
        match change {
            Change::Node(_) | Change::NodeDeleted(_) => false,
            _ => self.apply(change),
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

fn netns_error(netns: &str) -> impl Fn(NetError) -> ReconcileError + use<'_> {
    move |source| ReconcileError::Netns {
        netns: netns.to_owned(),
        source,
    }
}

impl Lab {
    /// Brings the lab to what `inventory` asks for: nodes and pods made or removed, pods
    /// placed, the lab's own manifests written, and agents of new nodes started (when
    /// `start_agents`). Says what it did.
    pub fn reconcile(
        &mut self,
        inventory: &Inventory,
        start_agents: bool,
    ) -> Result<Vec<String>, ReconcileError> {
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
        // A pod that fails is tried again at the next reconcile; the others go on.
        let mut failed: Option<ReconcileError> = None;
        let kubernetes = self.is_kubernetes();
        for (key, node) in &topology.placement {
            let Some(pod) = inventory.pods.get(key) else {
                continue;
            };
            match self.record.pods.get_mut(key) {
                // Made, and (playing kubelet) running in its cgroup.
                Some(existing)
                    if existing.uid == pod.uid && (!kubernetes || existing.cgroup.is_some()) =>
                {
                    if existing.node != *node {
                        done.push(format!("pod {key} moved to {node}"));
                        existing.node.clone_from(node);
                    }
                }
                _ => {
                    let made = self
                        .remove_pod(key)
                        .and_then(|()| self.add_pod(key, &pod.uid, node));
                    match made {
                        Ok(()) => done.push(format!("pod {key} on {node}")),
                        Err(e) => {
                            done.push(format!("pod {key} not made: {}", chain(&e)));
                            failed.get_or_insert(e);
                        }
                    }
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
            if self.is_kubernetes() {
                // Its containers are gone: the pod may go, as its kubelet says. (Not for
                // a pod replaced under the same name: the name is the new one's then.)
                self.finish_deletion(&key)?;
            }
            done.push(format!("pod {key} removed"));
        }
        // Bindings and Node objects only after the pods' namespaces exist: the operator
        // plans a member as soon as it sees where it runs.
        if kubernetes {
            if let Err(e) = self.start_pods(&topology.bindings) {
                failed.get_or_insert(e);
            }
        } else {
            self.write_manifests(&topology.made_nodes, &topology.bindings)?;
        }
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
        match failed {
            Some(e) => {
                for line in done {
                    eprintln!("{line}");
                }
                Err(e)
            }
            None => Ok(done),
        }
    }

    fn add_node(&mut self, node: &str, start_agent: bool) -> Result<(), ReconcileError> {
        self.record.addresses += 1;
        let n = self.record.addresses;
        let lab_node = LabNode {
            netns: self.record.netns(&format!("n-{node}")),
            address: underlay_address(self.underlay_index(), n),
            port: format!("p{n}"),
        };
        self.record.namespaces.insert(lab_node.netns.clone());
        self.record.nodes.insert(node.to_owned(), lab_node.clone());
        self.save()?;
        net::add_netns(&lab_node.netns).map_err(netns_error(&lab_node.netns))?;
        self.connect(node, &lab_node)?;
        self.issue_node_certificate(node)
            .map_err(|source| ReconcileError::Certificate {
                node: node.to_owned(),
                source,
            })?;
        if self.is_kubernetes() {
            self.make_node_cgroups(node, n)?;
            self.register_node(node, &lab_node.address)?;
        }
        if start_agent {
            self.start_agent(node)?;
        }
        Ok(())
    }

    fn remove_node(&mut self, node: &str) -> Result<(), ReconcileError> {
        self.stop(&agent_role(node));
        self.stop(&forwarder_role(node));
        if self.is_kubernetes() {
            self.unregister_node(node)?;
            if let Some(cgroups) = self.node_cgroups(node) {
                kubernetes::remove_tree(&cgroups.root)?;
            }
        }
        if let Some(lab_node) = self.record.nodes.remove(node) {
            // Its userspace WireGuard devices live in its namespace and go with it.
            net::delete_netns(&lab_node.netns).map_err(netns_error(&lab_node.netns))?;
            self.record.namespaces.remove(&lab_node.netns);
        }
        Ok(self.save()?)
    }

    fn pod_netns(&self, key: &str) -> String {
        self.record
            .netns(&format!("p-{}", key.replacen('/', ".", 1)))
    }

    fn add_pod(&mut self, key: &str, uid: &str, node: &str) -> Result<(), ReconcileError> {
        let netns = self.pod_netns(key);
        self.record.namespaces.insert(netns.clone());
        self.record.pods.insert(
            key.to_owned(),
            LabPod {
                netns: netns.clone(),
                uid: uid.to_owned(),
                node: node.to_owned(),
                cgroup: None,
                started: false,
            },
        );
        self.save()?;
        net::add_netns(&netns).map_err(netns_error(&netns))?;
        if self.is_kubernetes() {
            let cgroup = self.run_pod(key, uid, node, &netns)?;
            if let Some(pod) = self.record.pods.get_mut(key) {
                pod.cgroup = Some(cgroup);
            }
            return Ok(self.save()?);
        }
        let link = self.netns_links().join(uid);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(Path::new("/run/netns").join(&netns), &link)
            .map_err(|e| ReconcileError::Link(FileError::on("link", &link)(e)))
    }

    fn remove_pod(&mut self, key: &str) -> Result<(), ReconcileError> {
        let Some(pod) = self.record.pods.remove(key) else {
            return Ok(());
        };
        self.stop(&pod_role(key));
        let _ = std::fs::remove_file(self.netns_links().join(&pod.uid));
        net::delete_netns(&pod.netns).map_err(netns_error(&pod.netns))?;
        self.record.namespaces.remove(&pod.netns);
        self.save()?;
        if let Some(cgroup) = &pod.cgroup {
            // The pod's cgroup (the container's parent) with the container's.
            kubernetes::remove_tree(cgroup.parent().unwrap_or(cgroup))?;
        }
        Ok(())
    }

    /// In a lab that plays kubelet: the pods made and not yet started bound where the
    /// lab placed them (`bindings`, as a scheduler), and reported Running (as their
    /// kubelet). One that fails is tried again at the next reconcile; the others go on.
    fn start_pods(&mut self, bindings: &BTreeMap<String, String>) -> Result<(), ReconcileError> {
        let waiting: Vec<(String, String)> = self
            .record
            .pods
            .iter()
            .filter(|(_, p)| !p.started && p.cgroup.is_some())
            .map(|(k, p)| (k.clone(), p.node.clone()))
            .collect();
        let mut failed = None;
        for (key, node) in waiting {
            let host = self
                .record
                .nodes
                .get(&node)
                .map(|n| n.address.clone())
                .unwrap_or_default();
            let started = match bindings.get(&key) {
                Some(node) => self.bind(&key, node),
                None => Ok(()),
            }
            .and_then(|()| self.set_running(&key, &host));
            match started {
                Ok(()) => {
                    if let Some(pod) = self.record.pods.get_mut(&key) {
                        pod.started = true;
                    }
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        self.save()?;
        failed.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Writes the lab's own manifests: Node objects for the nodes it made, Bindings for
    /// the pods it placed. Replaced atomically, and only when they change.
    fn write_manifests(
        &self,
        nodes: &BTreeSet<String>,
        bindings: &BTreeMap<String, String>,
    ) -> Result<(), ReconcileError> {
        let mut text = String::from(
            "# Written by `wireway lab`: the nodes it made and where it placed the pods no\n\
             # manifest pins (Bindings, as a scheduler records them). JSON is YAML.\n",
        );
        for node in nodes {
            text.push_str(&manifests::document(&manifests::node(node)));
        }
        for (key, node) in bindings {
            text.push_str(&manifests::document(&manifests::binding(key, node)));
        }
        let file = self.own_manifests().join("lab.yaml");
        if std::fs::read_to_string(&file).ok().as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        // A name the manifest reader skips (it starts with a dot) until it is complete.
        let temporary = self.own_manifests().join(".lab.yaml.tmp");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &file))
            .map_err(|e| ReconcileError::Write(FileError::on("write", &file)(e)))
    }
}

/// The supervisor's first retry after a failed reconcile; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// `wireway lab supervise`: follows the user's manifests and keeps the lab in step,
/// until killed.
pub async fn supervise(dir: PathBuf) -> Result<(), ReconcileError> {
    let lab = Lab::open(dir.clone())?;
    let kubeconfig = lab.record.kubernetes.as_ref().map(|k| k.kubeconfig.clone());
    let mut received = match &kubeconfig {
        // The lab plays kubelet: it follows the API server's pods.
        Some(kubeconfig) => kubernetes::watch(kubeconfig).await?.0,
        None => {
            let manifests =
                Manifests::new(lab.record.manifests.clone()).map_err(ReconcileError::Manifests)?;
            let (events, received) = tokio::sync::mpsc::channel(16);
            tokio::spawn(manifests.watch::<Event>(events));
            received
        }
    };
    let mut inventory = Inventory::default();
    let mut synced = false;
    // After a failed reconcile, the lab tries again this much later even if nothing
    // changes (a pod left unbound or unstarted would otherwise wait for the next event).
    let mut retry: Option<(Duration, tokio::time::Instant)> = None;
    loop {
        let event = match retry {
            // A deadline, not a wait: events that need nothing do not put it off.
            Some((_, at)) => match tokio::time::timeout_at(at, received.recv()).await {
                Ok(event) => event,
                Err(_) => Some(Event::Changes(Vec::new())),
            },
            None => received.recv().await,
        };
        let Some(event) = event else { break };
        let act = match event {
            Event::Changes(changes) if changes.is_empty() => synced,
            Event::Changes(changes) => {
                let mut act = false;
                for change in &changes {
                    act |= if kubeconfig.is_some() {
                        inventory.apply_pods(change)
                    } else {
                        inventory.apply(change)
                    };
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
            let (mut lab, _held) = Lab::open_to_change(dir.clone())?;
            match lab.reconcile(&inventory, true) {
                Ok(done) => {
                    retry = None;
                    for line in done {
                        eprintln!("{line}");
                    }
                }
                Err(e) => {
                    let after = retry.map_or(RETRY_FIRST, |(r, _)| (r * 2).min(RETRY_MAX));
                    eprintln!(
                        "error: {} (trying again in {} s)",
                        chain(&e),
                        after.as_secs_f64()
                    );
                    retry = Some((after, tokio::time::Instant::now() + after));
                }
            }
        }
    }
    Ok(())
}
