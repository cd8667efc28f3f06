//! Finding workloads' network namespaces: a path as given, or a pod by its UID (in a
//! directory of namespace files, or through the host's cgroups, see [`pods`]). The
//! node's own namespace is never a workload's.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use wireway_proto::{NetnsLocator, netns_locator};

use super::pods;
use crate::converge::{NetnsId, ResolvedNetns};

/// Finds workloads' network namespaces.
#[derive(Debug, Clone, Default)]
pub struct NetnsFinder {
    /// A directory in which a pod's network namespace is the file named by the pod's UID
    /// (or a link to it): what the lab, or a VM's own tooling, provides.
    pub pod_dir: Option<PathBuf>,
    /// In a cluster: the host's cgroup tree and processes, to find pods by UID.
    pub cgroups: Option<pods::Cgroups>,
    /// The agent's own network namespace (the node's): never a workload's.
    pub own: Option<NetnsId>,
}

/// The identity of the namespace file at `path` (device and inode).
fn netns_id(path: &Path) -> Option<NetnsId> {
    let meta = std::fs::metadata(path).ok()?;
    Some(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

impl NetnsFinder {
    /// A finder that knows the calling process's network namespace (the node's).
    pub fn new(pod_dir: Option<PathBuf>, cgroups: Option<pods::Cgroups>) -> Self {
        Self {
            pod_dir,
            cgroups,
            own: netns_id(Path::new("/proc/self/ns/net")),
        }
    }

    /// The pods' cgroups now, when pods are found through them (read once per pass).
    pub fn pods(&self) -> Option<pods::PodIndex> {
        self.cgroups.as_ref().map(pods::PodIndex::scan)
    }

    /// The namespace `locator` names: a path as is; a pod UID in the pod directory, or
    /// through `pods`. `None` while it is not there, and for the node's own namespace
    /// (a pod on the host's network cannot get an interface of its own).
    pub fn find(
        &self,
        locator: &NetnsLocator,
        pods: Option<&pods::PodIndex>,
    ) -> Option<ResolvedNetns> {
        let path = match &locator.locator {
            Some(netns_locator::Locator::Path(path)) => PathBuf::from(path),
            Some(netns_locator::Locator::PodUid(uid)) if is_uid(uid) => match &self.pod_dir {
                Some(dir) => dir.join(uid),
                None => pods?.netns(uid)?,
            },
            _ => return None,
        };
        let id = netns_id(&path).filter(|id| Some(*id) != self.own)?;
        Some(ResolvedNetns {
            path: path.to_string_lossy().into_owned(),
            id,
        })
    }
}

/// A UID can name a file in the pod directory and nothing outside it.
fn is_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}
