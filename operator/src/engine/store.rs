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
use wireway_crds::{
    AdmissionStatus, EndpointStatus, IdentityGrantStatus, NetworkServiceStatus, PeerClusterStatus,
};
use wireway_proto::NodeState;
use wireway_runtime::errors::FileError;
use wireway_runtime::files;

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
    /// PeerCluster statuses by name.
    #[serde(default)]
    pub peer_clusters: BTreeMap<String, PeerClusterStatus>,
}

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The state could not be encoded.
    #[error("failed to encode the operator's state for {}", path.display())]
    Encode {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// A state file that does not parse (empty, cut short, or not a stored state), moved
/// aside: the operator starts from nothing instead of failing at every start.
#[derive(Debug, thiserror::Error)]
#[error(
    "the operator's state {} does not parse; moved it to {} and started from nothing \
     (keys come back with the agents' hellos, versions go on above theirs, and addresses \
     are allocated anew)",
    from.display(),
    to.display()
)]
pub struct SetAside {
    /// Where the file was.
    pub from: PathBuf,
    /// Where it is now.
    pub to: PathBuf,
    /// Why it does not parse.
    #[source]
    pub source: serde_json::Error,
}

/// What [`Store::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The store, to save into.
    pub store: Store,
    /// What it holds (nothing when the file was missing or set aside).
    pub stored: Stored,
    /// The file that did not parse, if one was moved aside.
    pub set_aside: Option<SetAside>,
}

/// The state file, `<dir>/state.json`, written whole or not at all
/// ([`wireway_runtime::files::write_private`]).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    /// The text last written, so an unchanged state is not written again.
    written: String,
}

impl Store {
    /// Opens the store in `dir` (created if missing) and reads what it holds. A file that
    /// does not parse is renamed to `state.json.corrupt-<unix ms>` and the store starts
    /// empty ([`Opened::set_aside`] says so); only a file that cannot be read or moved is
    /// an error.
    pub fn open(dir: &Path) -> Result<Opened, StoreError> {
        let path = dir.join("state.json");
        std::fs::create_dir_all(dir).map_err(FileError::on("create the directory of", &path))?;
        let empty = |path: PathBuf, set_aside| Opened {
            store: Self {
                path,
                written: String::new(),
            },
            stored: Stored::default(),
            set_aside,
        };
        let text = match files::read_private(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(empty(path, None)),
            Err(e) => return Err(FileError::on("read", &path)(e).into()),
        };
        match serde_json::from_str(&text) {
            Ok(stored) => Ok(Opened {
                store: Self {
                    path,
                    written: text,
                },
                stored,
                set_aside: None,
            }),
            Err(source) => {
                let to = files::set_aside(&path).map_err(FileError::on("move aside", &path))?;
                let set_aside = SetAside {
                    from: path.clone(),
                    to,
                    source,
                };
                Ok(empty(path, Some(set_aside)))
            }
        }
    }

    /// Writes `stored` if it differs from what was written last; atomically and durably
    /// (a crash leaves the old file or the new one, never half of one).
    pub fn save(&mut self, stored: &Stored) -> Result<(), StoreError> {
        let text = serde_json::to_string(stored).map_err(|source| StoreError::Encode {
            path: self.path.clone(),
            source,
        })?;
        if text == self.written {
            return Ok(());
        }
        files::write_private(&self.path, text.as_bytes())
            .map_err(FileError::on("write", &self.path))?;
        self.written = text;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Stored {
        let record = AgentRecord {
            public_key: "key".into(),
            hello_version: 3,
            ..AgentRecord::default()
        };
        Stored {
            agents: [("node-a".to_owned(), record)].into(),
            ..Stored::default()
        }
    }

    #[test]
    fn a_saved_state_is_read_back_whole_with_no_temporary_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().store;
        store.save(&stored()).unwrap();
        let opened = Store::open(dir.path()).unwrap();
        assert_eq!(opened.stored, stored());
        assert!(opened.set_aside.is_none());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn an_empty_cut_short_or_foreign_file_is_set_aside_and_the_store_starts_empty() {
        let whole = serde_json::to_string(&stored()).unwrap();
        let cut_short = &whole[..whole.len() / 2];
        for bad in ["", cut_short, "[1, 2, 3]"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.json");
            std::fs::write(&path, bad).unwrap();
            let opened = Store::open(dir.path()).unwrap();
            assert_eq!(opened.stored, Stored::default(), "{bad:?}");
            let set_aside = opened.set_aside.unwrap();
            assert_eq!(std::fs::read_to_string(&set_aside.to).unwrap(), bad);
            assert!(!path.exists(), "{bad:?}");
            let message = set_aside.to_string();
            assert!(
                message.contains(&path.display().to_string())
                    && message.contains(&set_aside.to.display().to_string())
                    && message.contains("started from nothing"),
                "{message}"
            );
            // The next save writes a good file, which the next start reads.
            let mut store = opened.store;
            store.save(&stored()).unwrap();
            assert_eq!(Store::open(dir.path()).unwrap().stored, stored());
        }
    }
}
