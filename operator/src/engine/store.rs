//! The operator's own state on disk, for running without an API server: what agents
//! said (keys and underlay addresses), the NodeStates served (their versions and host
//! veth names), and the statuses (which carry the sticky allocations). An operator
//! restarted on the same directory plans exactly what it served before, so no agent sees
//! a peer dropped, an address moved or an interface recreated.
//!
//! With an API server, statuses live in the objects and keys in Node annotations; the
//! store is for the manifest-directory mode.
//!
//! A change costs what changed, not what is stored (at 1,000 nodes the whole state is
//! about 100 MB of JSON, mostly the nodes' DNS records): `state.json` holds a whole
//! state, and `state.log` the changes since, one JSON line each, appended and flushed
//! (`fsync`) per save. When the log has grown as large as the state, the state is
//! written whole again (write-temp, `fsync`, rename, `fsync` the directory) and the log
//! emptied. Each line carries a sequence number and the whole state the number of the
//! last change it holds, so a crash between the two leaves nothing applied twice.
//!
//! Guarantees:
//! * a save is all or nothing: a crash leaves the state of the last save or of the one
//!   before, never part of a save (a line cut short, the log's last, is dropped and cut
//!   off at the next start);
//! * a node state is written again only when its version changed (the planner gives a
//!   changed state the next version), a status only when it differs;
//! * a state that cannot be used (a file that does not parse, a line that does not
//!   parse before the last, a log without its state) is moved aside whole and the
//!   operator starts from nothing (docs/operations.md says what that costs).

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
    /// The number of the last change this state holds (0: none yet).
    #[serde(default)]
    pub sequence: u64,
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

/// What the operator holds now, borrowed, to save ([`Store::save`]): the parts of
/// [`Stored`] but its sequence.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Current<'a> {
    /// Agents by node.
    pub agents: &'a BTreeMap<String, AgentRecord>,
    /// The NodeStates served, by node.
    pub node_states: &'a BTreeMap<String, NodeState>,
    /// The last versions of nodes whose state is gone, by node.
    pub retired_versions: &'a BTreeMap<String, u64>,
    /// NetworkService statuses by `namespace/name`.
    pub network_services: &'a BTreeMap<String, NetworkServiceStatus>,
    /// Endpoint statuses by `namespace/name`.
    pub endpoints: &'a BTreeMap<String, EndpointStatus>,
    /// Admission statuses by `namespace/name`.
    pub admissions: &'a BTreeMap<String, AdmissionStatus>,
    /// IdentityGrant statuses by name.
    pub identity_grants: &'a BTreeMap<String, IdentityGrantStatus>,
    /// PeerCluster statuses by name.
    pub peer_clusters: &'a BTreeMap<String, PeerClusterStatus>,
}

/// A whole state as written: its sequence, then the state.
#[derive(Serialize)]
struct Snapshot<'a> {
    sequence: u64,
    #[serde(flatten)]
    state: Current<'a>,
}

/// What changed in a map: each key's new value, or none when it is gone.
type Delta<V> = BTreeMap<String, Option<V>>;

/// One line of the log: one save's changes.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    sequence: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    agents: Delta<AgentRecord>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    node_states: Delta<NodeState>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    retired_versions: Delta<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    network_services: Delta<NetworkServiceStatus>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    endpoints: Delta<EndpointStatus>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    admissions: Delta<AdmissionStatus>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    identity_grants: Delta<IdentityGrantStatus>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    peer_clusters: Delta<PeerClusterStatus>,
}

impl Entry {
    /// What differs between `last` (node states by version) and `now`.
    fn between(last: &Stored, versions: &BTreeMap<String, u64>, now: Current<'_>) -> Self {
        Self {
            sequence: last.sequence + 1,
            agents: delta(&last.agents, now.agents, PartialEq::eq),
            node_states: delta(versions, now.node_states, |v, s| *v == s.version),
            retired_versions: delta(&last.retired_versions, now.retired_versions, PartialEq::eq),
            network_services: delta(&last.network_services, now.network_services, PartialEq::eq),
            endpoints: delta(&last.endpoints, now.endpoints, PartialEq::eq),
            admissions: delta(&last.admissions, now.admissions, PartialEq::eq),
            identity_grants: delta(&last.identity_grants, now.identity_grants, PartialEq::eq),
            peer_clusters: delta(&last.peer_clusters, now.peer_clusters, PartialEq::eq),
        }
    }

    fn is_empty(&self) -> bool {
        self.agents.is_empty()
            && self.node_states.is_empty()
            && self.retired_versions.is_empty()
            && self.network_services.is_empty()
            && self.endpoints.is_empty()
            && self.admissions.is_empty()
            && self.identity_grants.is_empty()
            && self.peer_clusters.is_empty()
    }

    /// `stored` with these changes.
    fn apply(self, stored: &mut Stored) {
        stored.sequence = self.sequence;
        apply(&mut stored.agents, self.agents);
        apply(&mut stored.node_states, self.node_states);
        apply(&mut stored.retired_versions, self.retired_versions);
        apply(&mut stored.network_services, self.network_services);
        apply(&mut stored.endpoints, self.endpoints);
        apply(&mut stored.admissions, self.admissions);
        apply(&mut stored.identity_grants, self.identity_grants);
        apply(&mut stored.peer_clusters, self.peer_clusters);
    }
}

/// The keys of `now` whose value is not `same` as in `last` (with their values), and
/// those of `last` gone from `now`.
fn delta<L, V: Clone>(
    last: &BTreeMap<String, L>,
    now: &BTreeMap<String, V>,
    same: impl Fn(&L, &V) -> bool,
) -> Delta<V> {
    let changed = now
        .iter()
        .filter(|(k, v)| last.get(*k).is_none_or(|l| !same(l, v)))
        .map(|(k, v)| (k.clone(), Some(v.clone())));
    let gone = last
        .keys()
        .filter(|k| !now.contains_key(*k))
        .map(|k| (k.clone(), None));
    changed.chain(gone).collect()
}

fn apply<V>(map: &mut BTreeMap<String, V>, delta: Delta<V>) {
    for (key, value) in delta {
        match value {
            Some(value) => map.insert(key, value),
            None => map.remove(&key),
        };
    }
}

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a file failed.
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
    /// What is stored cannot be used ([`Store::read`]; [`Store::open`] sets it aside).
    #[error(transparent)]
    Unusable(#[from] Unusable),
}

/// A stored state that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("the operator's state {} {reason}", path.display())]
pub struct Unusable {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// A stored state that cannot be used, moved aside: the operator starts from nothing
/// instead of failing at every start.
#[derive(Debug, thiserror::Error)]
#[error(
    "{unusable}; moved {} to {} and started from nothing (keys come back with the \
     agents' hellos, versions go on above theirs, and addresses are allocated anew)",
    from.join(", "),
    to.join(", ")
)]
pub struct SetAside {
    /// Why.
    pub unusable: Unusable,
    /// The files moved.
    pub from: Vec<String>,
    /// Where they are now.
    pub to: Vec<String>,
}

/// What [`Store::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The store, to save into.
    pub store: Store,
    /// What it holds (nothing when there was no state or it was set aside).
    pub stored: Stored,
    /// The state that could not be used, if one was moved aside.
    pub set_aside: Option<SetAside>,
}

/// The log is written whole again into the state once it is this large, or as large
/// as the state, whichever is more.
const LOG_AT_MOST: u64 = 1 << 20;

/// What the files of a store hold.
struct Loaded {
    stored: Stored,
    /// The length of the state file (0: none).
    snapshot_len: u64,
    /// The length of the log's whole lines.
    log_len: u64,
    /// Whether the log holds more than its whole lines (a line cut short by a crash).
    torn: bool,
}

/// The operator's store: `<dir>/state.json` and `<dir>/state.log`.
#[derive(Debug)]
pub struct Store {
    snapshot: PathBuf,
    log_path: PathBuf,
    /// The log, once opened for appending.
    log: Option<std::fs::File>,
    snapshot_len: u64,
    log_len: u64,
    /// What the files hold, but the node states, which `versions` stands for.
    last: Stored,
    /// The version of each node state the files hold.
    versions: BTreeMap<String, u64>,
    /// The log's size, beyond the state's, at which the state is written whole.
    log_at_most: u64,
}

impl Store {
    /// Opens the store in `dir` (created if missing) and reads what it holds. A state
    /// that cannot be used is moved aside (each file to `<name>.corrupt-<unix ms>`) and
    /// the store starts empty ([`Opened::set_aside`] says so); a line the log's end cut
    /// short is cut off. Only a file that cannot be read or moved is an error.
    pub fn open(dir: &Path) -> Result<Opened, StoreError> {
        let snapshot = dir.join("state.json");
        let log_path = dir.join("state.log");
        std::fs::create_dir_all(dir)
            .map_err(FileError::on("create the directory of", &snapshot))?;
        let (loaded, set_aside) = match load(&snapshot, &log_path)? {
            Ok(loaded) => (loaded, None),
            Err(unusable) => {
                let (mut from, mut to) = (Vec::new(), Vec::new());
                for path in [&snapshot, &log_path] {
                    if path.exists() {
                        let moved =
                            files::set_aside(path).map_err(FileError::on("move aside", path))?;
                        from.push(path.display().to_string());
                        to.push(moved.display().to_string());
                    }
                }
                let empty = Loaded {
                    stored: Stored::default(),
                    snapshot_len: 0,
                    log_len: 0,
                    torn: false,
                };
                let set_aside = SetAside { unusable, from, to };
                (empty, Some(set_aside))
            }
        };
        if loaded.torn {
            let cut = || {
                let file = std::fs::OpenOptions::new().write(true).open(&log_path)?;
                file.set_len(loaded.log_len)?;
                file.sync_all()
            };
            cut().map_err(FileError::on("cut the unfinished line off", &log_path))?;
        }
        let mut last = loaded.stored.clone();
        let versions = std::mem::take(&mut last.node_states)
            .into_iter()
            .map(|(node, state)| (node, state.version))
            .collect();
        let store = Self {
            snapshot,
            log_path,
            log: None,
            snapshot_len: loaded.snapshot_len,
            log_len: loaded.log_len,
            last,
            versions,
            log_at_most: LOG_AT_MOST,
        };
        Ok(Opened {
            store,
            stored: loaded.stored,
            set_aside,
        })
    }

    /// What the store in `dir` holds, read without changing anything (for tools and
    /// tests; an operator may be writing it).
    pub fn read(dir: &Path) -> Result<Stored, StoreError> {
        let loaded = load(&dir.join("state.json"), &dir.join("state.log"))??;
        Ok(loaded.stored)
    }

    /// Saves what differs from the last save, if anything: one line appended to the
    /// log, or the whole state when the log has grown as large as it. All or nothing: on
    /// an error the files hold the last save, and the next save writes this one's
    /// changes too.
    pub fn save(&mut self, now: Current<'_>) -> Result<(), StoreError> {
        let entry = Entry::between(&self.last, &self.versions, now);
        if entry.is_empty() {
            return Ok(());
        }
        let mut line = serde_json::to_vec(&entry).map_err(|source| StoreError::Encode {
            path: self.log_path.clone(),
            source,
        })?;
        line.push(b'\n');
        let grown = self.log_len + line.len() as u64;
        if self.snapshot_len == 0 || grown > self.snapshot_len.max(self.log_at_most) {
            self.write_snapshot(entry.sequence, now)?;
        } else {
            self.append(&line)?;
        }
        let nodes = entry
            .node_states
            .iter()
            .map(|(node, state)| (node.clone(), state.as_ref().map(|s| s.version)));
        apply(&mut self.versions, nodes.collect());
        Entry {
            node_states: Delta::new(),
            ..entry
        }
        .apply(&mut self.last);
        Ok(())
    }

    /// Writes the whole state as of change `sequence`, then empties the log.
    fn write_snapshot(&mut self, sequence: u64, now: Current<'_>) -> Result<(), StoreError> {
        let snapshot = Snapshot {
            sequence,
            state: now,
        };
        let text = serde_json::to_vec(&snapshot).map_err(|source| StoreError::Encode {
            path: self.snapshot.clone(),
            source,
        })?;
        files::write_private(&self.snapshot, &text)
            .map_err(FileError::on("write", &self.snapshot))?;
        self.snapshot_len = text.len() as u64;
        if self.log_len > 0 {
            // The log's lines are all at or below `sequence` now: a crash before this
            // leaves them to be skipped.
            let empty = |log: &std::fs::File| {
                log.set_len(0)?;
                log.sync_all()
            };
            let log = self.log()?;
            empty(log).map_err(FileError::on("empty", &self.log_path))?;
            self.log_len = 0;
        }
        Ok(())
    }

    /// Appends `line` to the log, durably; on an error, cuts the log back to what it was.
    fn append(&mut self, line: &[u8]) -> Result<(), StoreError> {
        use std::io::Write as _;
        let before = self.log_len;
        let path = self.log_path.clone();
        let mut log = self.log()?;
        let written = log.write_all(line).and_then(|()| log.sync_data());
        if let Err(e) = written {
            // Best effort: a line left cut short is dropped at the next start anyway.
            let _ = log.set_len(before);
            return Err(FileError::on("append to", &path)(e).into());
        }
        self.log_len = before + line.len() as u64;
        Ok(())
    }

    /// The log, opened for appending.
    fn log(&mut self) -> Result<&std::fs::File, StoreError> {
        let file = match self.log.take() {
            Some(file) => file,
            None => files::append_private(&self.log_path)
                .map_err(FileError::on("open", &self.log_path))?,
        };
        Ok(self.log.insert(file))
    }
}

/// What the state file and the log hold together, or why they cannot be used.
fn load(snapshot: &Path, log: &Path) -> Result<Result<Loaded, Unusable>, FileError> {
    let read = |path: &Path| match files::read_private(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::on("read", path)(e)),
    };
    let unusable = |path: &Path, reason: String| {
        Err(Unusable {
            path: path.to_owned(),
            reason,
        })
    };
    let (stored, snapshot_len) = match read(snapshot)? {
        Some(text) => match serde_json::from_str::<Stored>(&text) {
            Ok(stored) => (stored, text.len() as u64),
            Err(e) => return Ok(unusable(snapshot, format!("does not parse: {e}"))),
        },
        None => (Stored::default(), 0),
    };
    let mut loaded = Loaded {
        stored,
        snapshot_len,
        log_len: 0,
        torn: false,
    };
    let Some(text) = read(log)? else {
        return Ok(Ok(loaded));
    };
    if snapshot_len == 0 && !text.is_empty() {
        return Ok(unusable(log, "has no state.json beside it".to_owned()));
    }
    // Whole lines end in a newline; what follows the last is a line cut short.
    let whole = text.rfind('\n').map_or(0, |end| end + 1);
    loaded.torn = whole < text.len();
    loaded.log_len = whole as u64;
    for (number, line) in text[..whole].lines().enumerate() {
        let entry: Entry = match serde_json::from_str(line) {
            Ok(entry) => entry,
            Err(e) => {
                let reason = format!("line {} does not parse: {e}", number + 1);
                return Ok(unusable(log, reason));
            }
        };
        // Lines the state already holds (a crash came before the log was emptied).
        if entry.sequence > loaded.stored.sequence {
            entry.apply(&mut loaded.stored);
        }
    }
    Ok(Ok(loaded))
}

#[cfg(test)]
mod tests {
    use wireway_proto::ServiceState;

    use super::*;

    fn record(key: &str) -> AgentRecord {
        AgentRecord {
            public_key: key.into(),
            hello_version: 3,
            ..AgentRecord::default()
        }
    }

    fn node_state(version: u64, service: &str) -> NodeState {
        NodeState {
            node: "node".into(),
            version,
            services: vec![ServiceState {
                name: service.into(),
                ..ServiceState::default()
            }],
            ..NodeState::default()
        }
    }

    fn stored() -> Stored {
        Stored {
            agents: [("node-a".to_owned(), record("key"))].into(),
            ..Stored::default()
        }
    }

    /// `stored` as the engine hands it over.
    fn current(stored: &Stored) -> Current<'_> {
        Current {
            agents: &stored.agents,
            node_states: &stored.node_states,
            retired_versions: &stored.retired_versions,
            network_services: &stored.network_services,
            endpoints: &stored.endpoints,
            admissions: &stored.admissions,
            identity_grants: &stored.identity_grants,
            peer_clusters: &stored.peer_clusters,
        }
    }

    fn at(sequence: u64, stored: &Stored) -> Stored {
        Stored {
            sequence,
            ..stored.clone()
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn len(path: PathBuf) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    #[test]
    fn a_saved_state_is_read_back_whole_with_no_temporary_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().store;
        store.save(current(&stored())).unwrap();
        let opened = Store::open(dir.path()).unwrap();
        assert_eq!(opened.stored, at(1, &stored()));
        assert!(opened.set_aside.is_none());
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn changes_are_appended_and_read_back_over_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().store;
        let mut first = stored();
        first.node_states = [
            ("node-a".to_owned(), node_state(1, "red/red")),
            ("node-b".to_owned(), node_state(1, "red/red")),
        ]
        .into();
        first
            .endpoints
            .insert("red/a".into(), EndpointStatus::default());
        store.save(current(&first)).unwrap();
        let whole = std::fs::read(dir.path().join("state.json")).unwrap();

        // A node state changed (its version with it), one gone, an agent and a status
        // changed: one line, the state file untouched.
        let mut second = first.clone();
        second
            .node_states
            .insert("node-a".into(), node_state(2, "red/blue"));
        second.node_states.remove("node-b");
        second.retired_versions.insert("node-b".into(), 1);
        second.agents.insert("node-c".into(), record("other"));
        second.endpoints.insert(
            "red/a".into(),
            EndpointStatus {
                observed_generation: Some(2),
                ..EndpointStatus::default()
            },
        );
        store.save(current(&second)).unwrap();
        assert_eq!(std::fs::read(dir.path().join("state.json")).unwrap(), whole);
        let log = std::fs::read_to_string(dir.path().join("state.log")).unwrap();
        assert_eq!(log.lines().count(), 1, "{log}");
        assert!(!log.contains("node-a\":{\"node\":\"node\",\"version\":1"));
        assert_eq!(Store::read(dir.path()).unwrap(), at(2, &second));

        // Nothing new: nothing written.
        store.save(current(&second)).unwrap();
        assert_eq!(len(dir.path().join("state.log")), log.len() as u64);
        assert_eq!(Store::open(dir.path()).unwrap().stored, at(2, &second));
    }

    #[test]
    fn the_log_is_written_into_the_state_once_it_outgrows_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().store;
        store.log_at_most = 0;
        let mut state = stored();
        let mut emptied = 0;
        for version in 1..=40 {
            state
                .node_states
                .insert("node-a".into(), node_state(version, "red/red"));
            let before = len(dir.path().join("state.log"));
            store.save(current(&state)).unwrap();
            if len(dir.path().join("state.log")) < before {
                emptied += 1;
            }
            assert_eq!(Store::read(dir.path()).unwrap(), at(version, &state));
        }
        assert!(emptied > 1, "the state was written whole {emptied} times");
    }

    #[test]
    fn a_line_cut_short_is_dropped_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap().store;
        let mut state = stored();
        store.save(current(&state)).unwrap();
        state.agents.insert("node-b".into(), record("b"));
        store.save(current(&state)).unwrap();
        let log = dir.path().join("state.log");
        let whole = len(log.clone());
        let mut file = files::append_private(&log).unwrap();
        std::io::Write::write_all(&mut file, b"{\"sequence\":3,\"agents\":{\"node-").unwrap();

        assert_eq!(Store::read(dir.path()).unwrap(), at(2, &state));
        let opened = Store::open(dir.path()).unwrap();
        assert!(opened.set_aside.is_none());
        assert_eq!(opened.stored, at(2, &state));
        assert_eq!(len(log.clone()), whole, "cut off");
        let mut store = opened.store;
        state.agents.insert("node-c".into(), record("c"));
        store.save(current(&state)).unwrap();
        assert_eq!(Store::read(dir.path()).unwrap(), at(3, &state));
    }

    /// A crash after the state was written whole but before the log was emptied: the
    /// lines the state already holds are not applied again.
    #[test]
    fn lines_the_state_already_holds_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("state.json"),
            r#"{"sequence":2,"agents":{"node-a":{"publicKey":"a","backend":"","helloVersion":0,"appliedVersion":0}}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("state.log"),
            "{\"sequence\":2,\"agents\":{\"node-a\":null}}\n{\"sequence\":3,\"agents\":{\"node-b\":{\"publicKey\":\"b\",\"backend\":\"\",\"helloVersion\":0,\"appliedVersion\":0}}}\n",
        )
        .unwrap();
        let stored = Store::read(dir.path()).unwrap();
        assert_eq!(stored.sequence, 3);
        let agents: Vec<&str> = stored.agents.keys().map(String::as_str).collect();
        assert_eq!(agents, ["node-a", "node-b"]);
    }

    #[test]
    fn an_empty_cut_short_or_foreign_state_is_set_aside_and_the_store_starts_empty() {
        let whole = serde_json::to_string(&stored()).unwrap();
        let cut_short = &whole[..whole.len() / 2];
        for bad in ["", cut_short, "[1, 2, 3]"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.json");
            std::fs::write(&path, bad).unwrap();
            std::fs::write(dir.path().join("state.log"), "{\"sequence\":1}\n").unwrap();
            let opened = Store::open(dir.path()).unwrap();
            assert_eq!(opened.stored, Stored::default(), "{bad:?}");
            let set_aside = opened.set_aside.unwrap();
            assert_eq!(std::fs::read_to_string(&set_aside.to[0]).unwrap(), bad);
            assert_eq!(set_aside.to.len(), 2, "the log goes with its state");
            assert!(names(dir.path()).iter().all(|n| n.contains(".corrupt-")));
            let message = set_aside.to_string();
            assert!(
                message.contains(&path.display().to_string())
                    && message.contains(&set_aside.to[0])
                    && message.contains("does not parse")
                    && message.contains("started from nothing"),
                "{message}"
            );
            // The next save writes a good state, which the next start reads.
            let mut store = opened.store;
            store.save(current(&stored())).unwrap();
            assert_eq!(Store::open(dir.path()).unwrap().stored, at(1, &stored()));
        }
    }

    #[test]
    fn a_log_line_that_does_not_parse_or_a_log_without_its_state_is_set_aside() {
        for (state, log, reason) in [
            (
                Some("{}"),
                "{\"sequence\":1}\nnot json\n{\"sequence\":3}\n",
                "line 2 does not parse",
            ),
            (None, "{\"sequence\":1}\n", "has no state.json beside it"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            if let Some(state) = state {
                std::fs::write(dir.path().join("state.json"), state).unwrap();
            }
            std::fs::write(dir.path().join("state.log"), log).unwrap();
            let err = Store::read(dir.path()).unwrap_err().to_string();
            assert!(err.contains(reason), "{err}");
            let opened = Store::open(dir.path()).unwrap();
            assert_eq!(opened.stored, Stored::default());
            let message = opened.set_aside.unwrap().to_string();
            assert!(
                message.contains(reason) && message.contains("state.log.corrupt-"),
                "{message}"
            );
        }
    }
}
