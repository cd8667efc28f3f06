//! What a lab made, on disk (`<dir>/lab.json`), written before each thing is made: after
//! a crash, `wireway lab down` still finds everything, and it removes only what is here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wireway_runtime::errors::FileError;

use super::kubernetes::NodeCgroups;

/// Why a lab's record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// There is no record: no lab in that directory.
    #[error("failed to find a lab in {} (`wireway lab up DIR` makes one)", dir.display())]
    Find {
        /// The lab's directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The record is not what this version writes.
    #[error("failed to parse {}", file.display())]
    Parse {
        /// The record file.
        file: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The record could not be turned into JSON.
    #[error("failed to serialize the lab's record")]
    Serialize(#[source] serde_json::Error),
    /// The record could not be written.
    #[error(transparent)]
    Write(FileError),
}

/// A node of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabNode {
    /// Its network namespace.
    pub netns: String,
    /// Its underlay address.
    pub address: String,
    /// Its port on the underlay bridge.
    pub port: String,
}

/// A pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabPod {
    /// Its network namespace.
    pub netns: String,
    /// Its UID (the name of its link in the lab's netns directory).
    pub uid: String,
    /// Its node.
    pub node: String,
    /// Its cgroup, in a lab that plays kubelet (see [`super::kubernetes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    /// In a lab that plays kubelet: whether the API server has it bound and Running.
    #[serde(default)]
    pub started: bool,
}

/// What a lab that plays kubelet around an API server made of its own (see
/// [`super::kubernetes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesRecord {
    /// The kubeconfig the lab acts with (a cluster administrator's): its control plane's,
    /// or `$KUBECONFIG`'s.
    pub kubeconfig: PathBuf,
    /// `kubectl`.
    pub kubectl: PathBuf,
    /// How many operators run (`--operators`; 0 is one). With more than one, they share
    /// the Lease and the lab's `service` sends agents to the ready one.
    #[serde(default)]
    pub operators: usize,
    /// The API server's address, which a forwarder per node makes reachable from the
    /// node's namespace (see [`super::forward`]).
    pub api_server: Option<std::net::SocketAddr>,
    /// The test control plane's binary, when the lab runs one (as process
    /// `control-plane`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<PathBuf>,
    /// Each node's cgroup tree (what its agent is given as `--cgroup-root`), made by the
    /// lab.
    pub cgroups: BTreeMap<String, NodeCgroups>,
    /// The cgroup hierarchies the lab mounted in its directory.
    #[serde(default)]
    pub mounts: Vec<PathBuf>,
}

/// A cluster of a lab of several clusters (see [`super::clusters`]): how it federates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FederationRecord {
    /// The cluster's name, which the other clusters' PeerClusters call it by.
    pub cluster: String,
    /// Its underlay (0: 172.31.0.0/16, 1: 172.30.0.0/16, ...).
    pub underlay: u8,
    /// Where its operator serves federation.
    pub listen: std::net::SocketAddr,
    /// Whether its nodes are behind NAT: the router masquerades what they send to the
    /// other clusters and lets nothing in that they did not start, and its operator sends
    /// its nodes without endpoints.
    pub behind_nat: bool,
}

/// The binaries a lab runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binaries {
    /// `wireway-operator`.
    pub operator: PathBuf,
    /// `wireway-agent`.
    pub agent: PathBuf,
    /// `wireway` (for the supervisor).
    pub wireway: PathBuf,
}

/// Everything a lab made, and how it was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The lab's name (network namespaces start with `ww<name>-`).
    pub name: String,
    /// The user's manifests (absolute paths).
    pub manifests: Vec<PathBuf>,
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// How many nodes of its own the lab makes.
    pub own_nodes: usize,
    /// The binaries.
    pub binaries: Binaries,
    /// Every network namespace made (or about to be).
    pub namespaces: BTreeSet<String>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, LabNode>,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, LabPod>,
    /// Processes started, by role (`operator`, `supervisor`, `agent/<node>`).
    pub processes: BTreeMap<String, u32>,
    /// Underlay addresses handed out so far.
    pub addresses: u32,
    /// Set when the lab plays kubelet around an API server (`up --kubernetes`) instead of
    /// giving the operator manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesRecord>,
    /// Where the agents relay members' DNS queries for other names (`up
    /// --dns-upstream`); without it, to the first nameserver of the host's resolv.conf,
    /// which a lab node usually cannot reach (those queries get SERVFAIL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_upstream: Option<std::net::SocketAddr>,
    /// In a cluster of a lab of several clusters: how it federates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationRecord>,
    /// In a lab of several clusters: each cluster's lab directory, by cluster name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clusters: BTreeMap<String, PathBuf>,
}

/// The record file of the lab in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("lab.json")
}

impl Record {
    /// Reads the record of the lab in `dir`.
    pub fn load(dir: &Path) -> Result<Self, RecordError> {
        let file = path(dir);
        let text = std::fs::read_to_string(&file).map_err(|source| RecordError::Find {
            dir: dir.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| RecordError::Parse { file, source })
    }

    /// Writes the record, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), RecordError> {
        let file = path(dir);
        let temporary = file.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(RecordError::Serialize)?;
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &file))
            .map_err(|e| RecordError::Write(FileError::on("write", &file)(e)))
    }

    /// The name of one of the lab's network namespaces.
    pub fn netns(&self, what: &str) -> String {
        format!("ww{}-{what}", self.name)
    }
}
