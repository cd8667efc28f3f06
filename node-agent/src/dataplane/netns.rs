//! Finding and opening workloads' network namespaces, once per pass: a path, accepted only
//! beneath the directories the agent is configured with; or a pod by its UID (in a
//! directory of namespace files, or through the host's cgroups, see [`pods`]).
//!
//! Guarantees (every member's namespace comes from here; a tenant may have written the
//! path or planted the file):
//! * a path is refused unless it is a plain absolute path (no `.` or `..`) beneath one of
//!   [`NetnsFinder::path_prefixes`] (none by default: every path is refused), and no
//!   component below that directory, the last included, is a symbolic link: each is
//!   opened relative to its parent with `O_NOFOLLOW`;
//! * opening never blocks and has no side effect: the file is opened `O_PATH` (a FIFO or a
//!   device is never opened for reading), checked to be a namespace file (`fstatfs` gives
//!   `NSFS_MAGIC`), and only then opened for use, through its descriptor, not its path;
//! * the descriptor is kept for the pass ([`Namespaces`]): moving a veth in and every
//!   netlink request inside go through it, so the namespace cannot be swapped under the
//!   agent's feet. The kernel checks that it is a *network* namespace when the agent
//!   enters it or moves a link into it (`setns` with `CLONE_NEWNET`, `IFLA_NET_NS_FD`);
//! * the node's own namespace is never a workload's.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstat};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};
use wireway_proto::{NetnsLocator, netns_locator};

use super::pods;
use crate::converge::{NOT_FOUND, NetnsId, ResolvedNetns};

/// Why a member's namespace cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// It is not there (yet): its pod is starting.
    #[error("{}", NOT_FOUND)]
    NotFound,
    /// A path outside the configured directories.
    #[error(
        "namespace path {0:?} is refused: it is not beneath a directory the agent accepts namespaces from (--netns-path-prefix)"
    )]
    Outside(String),
    /// A path with `.` or `..`, or a relative one.
    #[error("namespace path {0:?} is refused: it is not a plain absolute path")]
    NotPlain(String),
    /// A symbolic link on the way.
    #[error("namespace path {0:?} is refused: it is, or passes through, a symbolic link")]
    Link(String),
    /// Not a namespace file.
    #[error("{0:?} is refused: it is not a network namespace")]
    NotNetns(String),
    /// The node's own.
    #[error("{0:?} is refused: it is the node's own network namespace")]
    Own(String),
    /// A pod UID that is not one.
    #[error("pod UID {0:?} is refused: it is not a UID")]
    NotUid(String),
    /// It could not be opened.
    #[error("failed to open the network namespace {path:?}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Finds and opens workloads' network namespaces.
#[derive(Debug, Clone, Default)]
pub struct NetnsFinder {
    /// Directories beneath which namespace paths are accepted (`--netns-path-prefix`):
    /// none, every path is refused. Compared as written: a path must start with one of
    /// them exactly (`/var/run/netns/x` is not beneath `/run/netns`).
    pub path_prefixes: Vec<PathBuf>,
    /// A directory in which a pod's network namespace is the file named by the pod's UID,
    /// or a symbolic link to a namespace file beneath [`Self::path_prefixes`]: what the
    /// lab, or a VM's own tooling, provides.
    pub pod_dir: Option<PathBuf>,
    /// In a cluster: the host's cgroup tree and processes, to find pods by UID.
    pub cgroups: Option<pods::Cgroups>,
    /// The agent's own network namespace (the node's): never a workload's.
    pub own: Option<NetnsId>,
    /// Tests with a fake kernel only: any file stands for a namespace.
    #[cfg(any(test, feature = "testing"))]
    pub any_file: bool,
}

/// The namespaces opened for one pass, by identity: everything the pass does in a
/// workload's namespace goes through these descriptors.
#[derive(Debug, Clone, Default)]
pub struct Namespaces(BTreeMap<NetnsId, Arc<OwnedFd>>);

impl Namespaces {
    /// Keeps `fd`, the namespace `id`.
    pub fn insert(&mut self, id: NetnsId, fd: OwnedFd) {
        self.0.entry(id).or_insert_with(|| Arc::new(fd));
    }

    /// The namespace `id`, if it was opened for this pass.
    pub fn get(&self, id: &NetnsId) -> Option<&OwnedFd> {
        self.0.get(id).map(AsRef::as_ref)
    }

    /// Whether the namespace `id` was opened for this pass.
    pub fn contains(&self, id: &NetnsId) -> bool {
        self.0.contains_key(id)
    }
}

/// The identity of the file open as `fd` (device and inode).
fn id_of(fd: &OwnedFd) -> nix::Result<NetnsId> {
    let stat = fstat(fd)?;
    Ok(NetnsId {
        dev: stat.st_dev,
        ino: stat.st_ino,
    })
}

/// `O_PATH`: a handle on the file that opens nothing (no FIFO wait, no device open).
fn path_only() -> OFlag {
    OFlag::O_PATH | OFlag::O_CLOEXEC
}

fn io(path: &str) -> impl Fn(Errno) -> NetnsError + '_ {
    move |errno| match errno {
        Errno::ENOENT | Errno::ENOTDIR | Errno::ESRCH => NetnsError::NotFound,
        _ => NetnsError::Io {
            path: path.to_owned(),
            source: errno.into(),
        },
    }
}

/// Whether the file open as `fd` is a symbolic link (opened `O_PATH | O_NOFOLLOW`).
fn is_link(fd: &OwnedFd) -> nix::Result<bool> {
    let mode = SFlag::from_bits_truncate(fstat(fd)?.st_mode);
    Ok(mode & SFlag::S_IFMT == SFlag::S_IFLNK)
}

/// Opens `path` (`O_PATH`) if it lies beneath one of `prefixes`, following no symbolic
/// link below the prefix.
fn open_beneath(prefixes: &[PathBuf], text: &str) -> Result<OwnedFd, NetnsError> {
    let path = Path::new(text);
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(NetnsError::NotPlain(text.to_owned()));
    }
    let (prefix, rest) = prefixes
        .iter()
        .find_map(|p| Some((p, path.strip_prefix(p).ok()?)))
        .filter(|(_, rest)| !rest.as_os_str().is_empty())
        .ok_or_else(|| NetnsError::Outside(text.to_owned()))?;
    // The prefix is the administrator's: its own path may hold links (/var/run).
    let mut fd = open(prefix, path_only() | OFlag::O_DIRECTORY, Mode::empty()).map_err(io(text))?;
    for component in rest.components() {
        let name: &OsStr = component.as_os_str();
        fd = openat(&fd, name, path_only() | OFlag::O_NOFOLLOW, Mode::empty()).map_err(io(text))?;
        if is_link(&fd).map_err(io(text))? {
            return Err(NetnsError::Link(text.to_owned()));
        }
    }
    Ok(fd)
}

impl NetnsFinder {
    /// A finder that knows the calling process's network namespace (the node's).
    pub fn new(
        path_prefixes: Vec<PathBuf>,
        pod_dir: Option<PathBuf>,
        cgroups: Option<pods::Cgroups>,
    ) -> Self {
        let own = open(
            "/proc/self/ns/net",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .and_then(|fd| id_of(&fd))
        .ok();
        Self {
            path_prefixes,
            pod_dir,
            cgroups,
            own,
            #[cfg(any(test, feature = "testing"))]
            any_file: false,
        }
    }

    /// The same finder, taking any file for a namespace: for tests with a fake kernel,
    /// which need no real namespace (nor root).
    #[cfg(any(test, feature = "testing"))]
    pub fn accepting_any_file(mut self) -> Self {
        self.any_file = true;
        self
    }

    /// The pods' cgroups now, when pods are found through them (read once per pass).
    pub fn pods(&self) -> Option<pods::PodIndex> {
        self.cgroups.as_ref().map(pods::PodIndex::scan)
    }

    /// Opens the namespace `locator` names: a path beneath the configured directories; a
    /// pod UID in the pod directory, or through `pods`. Returns it with its descriptor,
    /// to be kept for the pass.
    pub fn find(
        &self,
        locator: &NetnsLocator,
        pods: Option<&pods::PodIndex>,
    ) -> Result<(ResolvedNetns, OwnedFd), NetnsError> {
        let (path, handle) = match &locator.locator {
            Some(netns_locator::Locator::Path(path)) => {
                (path.clone(), open_beneath(&self.path_prefixes, path)?)
            }
            Some(netns_locator::Locator::PodUid(uid)) => {
                if !is_uid(uid) {
                    return Err(NetnsError::NotUid(uid.clone()));
                }
                match &self.pod_dir {
                    Some(dir) => self.in_pod_dir(dir, uid)?,
                    None => {
                        let (path, fd) = pods
                            .and_then(|p| p.netns(uid))
                            .ok_or(NetnsError::NotFound)?;
                        (path.to_string_lossy().into_owned(), fd)
                    }
                }
            }
            None => return Err(NetnsError::NotFound),
        };
        let fd = self.check(&path, &handle)?;
        let id = id_of(&fd).map_err(io(&path))?;
        if Some(id) == self.own {
            return Err(NetnsError::Own(path));
        }
        Ok((ResolvedNetns { path, id }, fd))
    }

    /// `dir/<uid>`: a namespace file, or a link to one beneath the accepted directories.
    fn in_pod_dir(&self, dir: &Path, uid: &str) -> Result<(String, OwnedFd), NetnsError> {
        let path = dir.join(uid).to_string_lossy().into_owned();
        let dir = open(dir, path_only() | OFlag::O_DIRECTORY, Mode::empty()).map_err(io(&path))?;
        let fd =
            openat(&dir, uid, path_only() | OFlag::O_NOFOLLOW, Mode::empty()).map_err(io(&path))?;
        if !is_link(&fd).map_err(io(&path))? {
            return Ok((path, fd));
        }
        let target = readlinkat(&dir, uid).map_err(io(&path))?;
        let target = target.to_string_lossy().into_owned();
        let fd = open_beneath(&self.path_prefixes, &target)?;
        Ok((format!("{path} -> {target}"), fd))
    }

    /// The handle, checked to be a namespace file, opened for use: through the handle's
    /// descriptor, so it is the file that was checked.
    fn check(&self, path: &str, handle: &OwnedFd) -> Result<OwnedFd, NetnsError> {
        let is_nsfs = fstatfs(handle).map_err(io(path))?.filesystem_type() == NSFS_MAGIC;
        #[cfg(any(test, feature = "testing"))]
        let is_nsfs = is_nsfs || self.any_file;
        if !is_nsfs {
            return Err(NetnsError::NotNetns(path.to_owned()));
        }
        let reopen = format!("/proc/self/fd/{}", handle.as_raw_fd());
        open(
            reopen.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(io(path))
    }
}

/// A UID can name a file in the pod directory and nothing outside it.
fn is_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests;
