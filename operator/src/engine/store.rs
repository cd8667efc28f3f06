//! The operator's own state on disk, for running without an API server: what agents
//! said (keys and underlay addresses), the NodeStates served (their versions and host
//! veth names), and the statuses (which carry the sticky allocations). An operator
//! restarted on the same directory plans exactly what it served before, so no agent sees
//! a peer dropped, an address moved or an interface recreated.
//!
//! With an API server, statuses live in the objects and keys in Node annotations; the
//! store is for the manifest-directory mode.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wireway_crds::{AdmissionStatus, EndpointStatus, IdentityGrantStatus, NetworkServiceStatus};
use wireway_proto::NodeState;
use wireway_runtime::errors::FileError;

/// What an agent told of its node, as kept across operator restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    /// The node's WireGuard public key.
    pub public_key: String,
    /// Where other nodes reach it.
    pub underlay: Option<IpAddr>,
    /// Its underlay MTU.
    pub underlay_mtu: Option<u32>,
    /// `kernel` or `userspace`.
    pub backend: String,
    /// The version its last hello said it had applied.
    pub hello_version: u64,
    /// The version it last reported applied.
    pub applied_version: u64,
}

/// Everything stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    /// Agents by node.
    #[serde(default)]
    pub agents: BTreeMap<String, AgentRecord>,
    /// The NodeStates served, by node.
    #[serde(default)]
    pub node_states: BTreeMap<String, NodeState>,
    /// The last versions of nodes whose state is gone, by node.
    #[serde(default)]
    pub retired_versions: BTreeMap<String, u64>,
    /// NetworkService statuses by `namespace/name`.
    #[serde(default)]
    pub network_services: BTreeMap<String, NetworkServiceStatus>,
    /// Endpoint statuses by `namespace/name`.
    #[serde(default)]
    pub endpoints: BTreeMap<String, EndpointStatus>,
    /// Admission statuses by `namespace/name`.
    #[serde(default)]
    pub admissions: BTreeMap<String, AdmissionStatus>,
    /// IdentityGrant statuses by name.
    #[serde(default)]
    pub identity_grants: BTreeMap<String, IdentityGrantStatus>,
}

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The file does not hold a stored state.
    #[error("failed to parse {} (move it away to start from nothing)", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The state file, `<dir>/state.json`.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    /// The text last written, so an unchanged state is not written again.
    written: String,
}

impl Store {
    /// Opens the store in `dir` (created if missing) and reads what it holds.
    pub fn open(dir: &Path) -> Result<(Self, Stored), StoreError> {
        let path = dir.join("state.json");
        std::fs::create_dir_all(dir).map_err(FileError::on("create the directory of", &path))?;
        let (written, stored) = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let stored = serde_json::from_str(&text).map_err(|source| StoreError::Parse {
                    path: path.clone(),
                    source,
                })?;
                (text, stored)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (String::new(), Stored::default())
            }
            Err(e) => return Err(FileError::on("read", &path)(e).into()),
        };
        Ok((Self { path, written }, stored))
    }

    /// Writes `stored` if it differs from what was written last; atomically (a crash
    /// leaves the old file or the new one, never half of one).
    pub fn save(&mut self, stored: &Stored) -> Result<(), StoreError> {
        let text = serde_json::to_string(stored).map_err(|source| StoreError::Parse {
            path: self.path.clone(),
            source,
        })?;
        if text == self.written {
            return Ok(());
        }
        let temporary = self.path.with_extension("json.tmp");
        std::fs::write(&temporary, &text).map_err(FileError::on("write", &self.path))?;
        std::fs::rename(&temporary, &self.path).map_err(FileError::on("replace", &self.path))?;
        self.written = text;
        Ok(())
    }
}
