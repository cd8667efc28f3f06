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
//! Every server of the lab's own listens on a Unix socket in the lab's directory, so the
//! lab needs no port and changes nothing in the host's network namespace (with
//! `--kubernetes`, the test control plane it starts listens on a free port of
//! 127.0.0.1, and it mounts cgroup hierarchies in its directory). Every namespace it makes is
//! in its record (`lab.json`) before it is made, every process as soon as it is started,
//! and `wireway lab down` removes exactly that.
//!
//! This module holds the [`Lab`] (its directory and record) and where things are in its
//! directory. Each job has its own module:
//!
//! * [`record`]: what the lab made, on disk; [`pki`] and [`underlay`]: its certificates
//!   and its underlay bridge with the nodes' addresses;
//! * [`reconcile`]: the lab follows the manifests (nodes and pods made, placed by
//!   [`topology`], removed; its own manifests written by [`manifests`]);
//! * [`supervision`]: the operator, agents and supervisor started, watched and stopped,
//!   over [`process`] and [`net`];
//! * [`kubernetes`]: with `up --kubernetes`, the lab plays kubelet around a real API
//!   server instead of writing manifests for the operator, [`forward`] puts the API
//!   server within its nodes' reach, and with several operators [`service`] sends
//!   agents to the ready one;
//! * [`measure`]: waiting for convergence and pinging the [`matrix`];
//!   [`bench`](mod@bench): how fast changes take effect;
//! * [`clusters`]: a lab of several clusters that federate, one lab each, with a router
//!   between their underlays;
//! * [`commands`]: the `wireway lab` subcommands.

pub mod bench;
pub mod clusters;
pub mod commands;
pub mod forward;
pub mod kubernetes;
pub mod manifests;
pub mod matrix;
pub mod measure;
pub mod net;
pub mod pki;
pub mod process;
pub mod reconcile;
pub mod record;
pub mod service;
pub mod supervision;
pub mod topology;
pub mod underlay;

use std::path::{Path, PathBuf};

use wireway_runtime::errors::FileError;
use wireway_runtime::listen::Address;

use record::{Binaries, Record, RecordError};

/// Where the labs live by default: `/run/wireway/<name>`.
pub const LABS_DIR: &str = "/run/wireway";

/// The directory of the lab called `name`.
pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(LABS_DIR).join(name)
}

/// Why a lab could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// A lab is already in that directory.
    #[error(
        "failed to create lab {name:?}: it is already up ({}); `wireway lab down` removes it, `wireway lab matrix` measures it",
        dir.display()
    )]
    AlreadyUp {
        /// The lab's name.
        name: String,
        /// Its directory.
        dir: PathBuf,
    },
    /// Its directory could not be made.
    #[error(transparent)]
    Directory(FileError),
    /// Its record could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// The hold [`Lab::open_to_change`] takes on a lab's record (released on drop).
#[derive(Debug)]
pub struct Held {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// A lab: its directory and its record.
#[derive(Debug)]
pub struct Lab {
    /// The lab's directory.
    pub dir: PathBuf,
    /// What it made.
    pub record: Record,
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
    ) -> Result<Self, CreateError> {
        if record::path(&dir).exists() {
            return Err(CreateError::AlreadyUp {
                name: name.to_owned(),
                dir,
            });
        }
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
        std::fs::create_dir_all(lab.own_manifests())
            .and_then(|()| std::fs::create_dir_all(lab.netns_links()))
            .map_err(|e| CreateError::Directory(FileError::on("create", &lab.dir)(e)))?;
        lab.save()?;
        Ok(lab)
    }

    /// The lab in `dir`.
    pub fn open(dir: PathBuf) -> Result<Self, RecordError> {
        let record = Record::load(&dir)?;
        Ok(Self { dir, record })
    }

    /// The lab in `dir`, to change: read once no other process is changing it, and no
    /// other process changes it until the [`Held`] is dropped. The supervisor and
    /// `wireway lab start` and `down` change the record from different processes: without
    /// this, one would write back a record read before the other's change (a process it
    /// started would be forgotten, and outlive the lab).
    pub fn open_to_change(dir: PathBuf) -> Result<(Self, Held), RecordError> {
        let path = dir.join("lab.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| RecordError::Find {
                dir: dir.clone(),
                source,
            })?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| RecordError::Write(FileError::on("lock", &path)(e.into())))?;
        Ok((Self::open(dir)?, Held { _lock: lock }))
    }

    fn save(&self) -> Result<(), RecordError> {
        self.record.save(&self.dir)
    }

    /// The operator's gRPC port, which agents dial (with several, the lab's service's).
    fn operator_grpc(&self) -> Address {
        Address::Unix(self.dir.join("operator.sock"))
    }

    /// The roles of the operators: `operator`, or with several `operator-0`, ….
    pub fn operator_roles(&self) -> Vec<String> {
        match self.record.kubernetes.as_ref().map_or(1, |k| k.operators) {
            0 | 1 => vec!["operator".to_owned()],
            n => (0..n).map(|i| format!("operator-{i}")).collect(),
        }
    }

    /// The HTTP port of the operator `role`.
    fn operator_http_of(&self, role: &str) -> Address {
        Address::Unix(self.dir.join(format!("{role}-http.sock")))
    }

    /// The gRPC port of the operator `role` (with one, the one agents dial).
    fn operator_grpc_of(&self, role: &str) -> Address {
        Address::Unix(self.dir.join(format!("{role}.sock")))
    }

    /// The lab's underlay (see [`underlay`]): 0 unless it is a cluster of a lab of
    /// several.
    fn underlay_index(&self) -> u8 {
        self.record.federation.as_ref().map_or(0, |f| f.underlay)
    }

    /// A node's directory: its agent's state, log and HTTP port.
    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    /// A node agent's HTTP port.
    pub fn agent_http(&self, node: &str) -> Address {
        Address::Unix(self.node_dir(node).join("http.sock"))
    }

    /// Where the lab's manifests go (Node objects and Bindings it writes).
    fn own_manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// Where agents find pods' network namespaces: one link per pod UID.
    fn netns_links(&self) -> PathBuf {
        self.dir.join("netns")
    }
}
