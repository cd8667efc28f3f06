//! A pod's network namespace from its UID, in a cluster: the container runtime puts every
//! pod's processes in a cgroup named after the pod UID (`.../pod<uid>/...` with the
//! cgroupfs driver, `...-pod<uid with _ for ->.slice/...` with the systemd driver, under
//! cgroup v1 or v2), and any of them is in the pod's network namespace:
//! `/proc/<pid>/ns/net`.
//!
//! The tree is read once per pass ([`PodIndex::scan`]), not once per member. A process
//! found there is held by its `/proc/<pid>` directory while the agent checks that it is
//! still in the pod's cgroup and opens its namespace through that directory, so a process
//! that exits and whose PID is reused by another pod's cannot lend the agent the wrong
//! namespace.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::Mode;

/// How deep pod cgroups are looked for below the root: `kubepods/burstable/pod<uid>` is
/// 3 levels, under a v1 controller directory 4, with the systemd driver's slices 4 or 5.
const MAX_DEPTH: usize = 6;

/// Where the host's cgroup tree and processes are (in the agent's pod: the host's
/// `/sys/fs/cgroup` mounted at `/host/sys/fs/cgroup`, and `/proc` with `hostPID`).
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// The cgroup tree's root.
    pub root: PathBuf,
    /// The processes (`/proc`).
    pub proc: PathBuf,
}

/// Pod cgroups by pod UID.
#[derive(Debug, Clone, Default)]
pub struct PodIndex {
    pods: BTreeMap<String, Vec<PathBuf>>,
    proc: PathBuf,
}

/// The pod UID a cgroup directory's name carries, if any: `pod` then a UID as the
/// kubelet writes it, 32 lowercase hex digits in groups of 8-4-4-4-12, joined by dashes
/// (cgroupfs) or by underscores (systemd), one or the other throughout, and nothing more
/// of those characters after it. Any other spelling names no pod, so no name can stand
/// for another pod's UID.
pub fn pod_uid(name: &str) -> Option<String> {
    let start = name.rfind("pod")? + 3;
    let rest = &name[start..];
    let run = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || c == '-' || c == '_'))
        .map_or(rest, |end| &rest[..end]);
    let separator = if run.contains('_') { '_' } else { '-' };
    let groups: Vec<&str> = run.split(separator).collect();
    let canonical = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| {
            g.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    canonical.then(|| groups.join("-"))
}

/// Whether a process whose `/proc/<pid>/cgroup` reads `cgroup` is in the cgroup of the
/// pod `uid`: a line's path (`hierarchy-ID:controllers:path`, cgroup v1 or v2) has a
/// directory that names that pod, as [`pod_uid`] reads names. Not a substring: a
/// directory named `pod<uid>x` or `xpod<uid>-1` names no pod.
pub fn in_pod(cgroup: &str, uid: &str) -> bool {
    cgroup
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .any(|path| {
            path.split('/')
                .any(|dir| pod_uid(dir).as_deref() == Some(uid))
        })
}

/// The PIDs a `cgroup.procs` file lists (decimal numbers, one per line; anything else
/// is not a PID and is skipped).
pub fn pids(procs: &str) -> impl Iterator<Item = &str> {
    procs
        .split_whitespace()
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
}

impl PodIndex {
    /// Reads the cgroup tree.
    pub fn scan(cgroups: &Cgroups) -> Self {
        let mut pods: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        let mut stack = vec![(cgroups.root.clone(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                match pod_uid(&name) {
                    Some(uid) => pods.entry(uid).or_default().push(path),
                    None if depth + 1 < MAX_DEPTH => stack.push((path, depth + 1)),
                    None => {}
                }
            }
        }
        Self {
            pods,
            proc: cgroups.proc.clone(),
        }
    }

    /// The network namespace of the pod with `uid`, opened `O_PATH`, with its path
    /// (`/proc/<pid>/ns/net` of a process in the pod's cgroup: its own or a container's
    /// below it).
    pub fn netns(&self, uid: &str) -> Option<(PathBuf, OwnedFd)> {
        for dir in self.pods.get(uid)? {
            if let Some(found) = first_process(dir, &self.proc, uid) {
                return Some(found);
            }
        }
        None
    }
}

/// Opens `ns/net` of process `pid` (digits: [`pids`]) if it is (still) in the cgroup of the pod `uid`: its
/// `/proc/<pid>` directory is opened first and everything after goes through it.
fn open_netns(proc: &Path, pid: &str, uid: &str) -> Option<(PathBuf, OwnedFd)> {
    let path_only = OFlag::O_PATH | OFlag::O_CLOEXEC;
    let process = open(
        &proc.join(pid),
        path_only | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .ok()?;
    let cgroup = openat(
        &process,
        "cgroup",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let cgroup = std::io::read_to_string(std::fs::File::from(cgroup)).ok()?;
    if !in_pod(&cgroup, uid) {
        return None;
    }
    // `ns/net` is the kernel's own link to the namespace: followed, and then checked
    // to be a namespace by the finder.
    let netns = openat(&process, "ns/net", path_only, Mode::empty()).ok()?;
    Some((proc.join(pid).join("ns").join("net"), netns))
}

/// The `ns/net` of the first process listed in `dir` or below it that is still there.
fn first_process(dir: &Path, proc: &Path, uid: &str) -> Option<(PathBuf, OwnedFd)> {
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in pids(&procs) {
                if let Some(found) = open_netns(proc, pid, uid) {
                    return Some(found);
                }
            }
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        stack.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f4e9b1c-3a2d-4c5e-8f6a-7b8c9d0e1f2a";

    /// A host: a cgroup tree and /proc, in a temporary directory. Each process is
    /// (pid, its cgroup as /proc/<pid>/cgroup says).
    fn host(cgroup_dirs: &[(&str, &str)], pids: &[(&str, &str)]) -> (tempfile::TempDir, Cgroups) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("sys/fs/cgroup");
        for (path, procs) in cgroup_dirs {
            let d = root.join(path);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup.procs"), procs).unwrap();
        }
        let proc = dir.path().join("proc");
        for (pid, cgroup) in pids {
            let ns = proc.join(pid).join("ns");
            std::fs::create_dir_all(&ns).unwrap();
            std::fs::write(ns.join("net"), "").unwrap();
            std::fs::write(proc.join(pid).join("cgroup"), format!("0::/{cgroup}\n")).unwrap();
        }
        (dir, Cgroups { root, proc })
    }

    fn path(found: Option<(PathBuf, OwnedFd)>) -> Option<PathBuf> {
        found.map(|(path, _)| path)
    }

    #[test]
    fn finds_pods_under_the_cgroupfs_driver() {
        let (_d, cgroups) = host(
            &[
                (&format!("kubepods/burstable/pod{UID}"), ""),
                (
                    &format!("kubepods/burstable/pod{UID}/4f5a6b"),
                    "1234\n1240\n",
                ),
                (
                    "kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/abc",
                    "99\n",
                ),
            ],
            &[
                ("1234", &format!("kubepods/burstable/pod{UID}/4f5a6b")),
                (
                    "99",
                    "kubepods/besteffort/pod11111111-2222-3333-4444-555555555555/abc",
                ),
            ],
        );
        let index = PodIndex::scan(&cgroups);
        assert_eq!(
            path(index.netns(UID)),
            Some(cgroups.proc.join("1234/ns/net"))
        );
        assert_eq!(
            path(index.netns("11111111-2222-3333-4444-555555555555")),
            Some(cgroups.proc.join("99/ns/net"))
        );
        assert_eq!(
            path(index.netns("22222222-2222-3333-4444-555555555555")),
            None
        );
    }

    #[test]
    fn a_pid_reused_by_a_process_of_another_pod_lends_no_namespace() {
        let (_d, cgroups) = host(
            &[(&format!("kubepods/pod{UID}/c1"), "555\n")],
            &[("555", "kubepods/pod11111111-2222-3333-4444-555555555555/c9")],
        );
        assert_eq!(path(PodIndex::scan(&cgroups).netns(UID)), None);
    }

    #[test]
    fn finds_pods_under_the_systemd_driver_and_cgroup_v1() {
        let systemd = UID.replace('-', "_");
        let (_d, cgroups) = host(
            &[(
                &format!(
                    "memory/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd}.slice/cri-containerd-9e8d.scope"
                ),
                "4321\n",
            )],
            &[(
                "4321",
                &format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{systemd}.slice/cri-containerd-9e8d.scope"
                ),
            )],
        );
        assert_eq!(
            path(PodIndex::scan(&cgroups).netns(UID)),
            Some(cgroups.proc.join("4321/ns/net"))
        );
    }

    #[test]
    fn a_pod_whose_processes_are_gone_has_no_namespace() {
        let (_d, cgroups) = host(&[(&format!("kubepods/pod{UID}/c1"), "555\n")], &[]);
        assert_eq!(path(PodIndex::scan(&cgroups).netns(UID)), None);
    }

    /// A process's cgroup file names its pod by a whole directory, under cgroup v1 (one
    /// line per hierarchy) or v2, with either driver; a name that only contains the pod's
    /// UID names no pod.
    #[test]
    fn a_process_is_in_a_pod_when_a_directory_of_its_cgroup_names_the_pod() {
        let systemd = UID.replace('-', "_");
        let v1 = format!(
            "12:pids:/kubepods.slice/kubepods-pod{systemd}.slice/cri-containerd-1.scope\n\
             1:name=systemd:/system.slice\n0::/\n"
        );
        assert!(in_pod(&v1, UID));
        assert!(in_pod(
            &format!("0::/kubepods/burstable/pod{UID}/c1\n"),
            UID
        ));
        assert!(!in_pod(&v1, "11111111-2222-3333-4444-555555555555"));
        for decoy in [
            format!("0::/kubepods/pod{UID}0/c1"),
            format!("0::/kubepods/pod{UID}-1/c1"),
            format!("pod{UID}"),
            format!("0:pod{UID}:/"),
        ] {
            assert!(!in_pod(&decoy, UID), "{decoy}");
        }
    }

    #[test]
    fn cgroup_procs_lists_pids_and_nothing_else() {
        let listed: Vec<_> = pids("12\n 7\n-1\n../3\n\n1e3\n40\n").collect();
        assert_eq!(listed, ["12", "7", "40"]);
    }

    #[test]
    fn pod_uids_are_read_from_names() {
        assert_eq!(pod_uid(&format!("pod{UID}")).as_deref(), Some(UID));
        assert_eq!(
            pod_uid(&format!(
                "kubepods-burstable-pod{}.slice",
                UID.replace('-', "_")
            ))
            .as_deref(),
            Some(UID)
        );
        assert_eq!(pod_uid("kubepods"), None);
        assert_eq!(pod_uid("pod1234"), None);
        // Another spelling of a UID names no pod: separators mixed or misplaced,
        // uppercase, more of it after.
        let mixed = format!("pod{}", UID.replacen('-', "_", 1));
        let moved = "pod0f4e9b1c-3-a2d4c5e-8f6a-7b8c9d0e1f2a";
        let upper = format!("pod{}", UID.to_uppercase());
        let longer = format!("pod{UID}-0");
        for name in [mixed.as_str(), moved, &upper, &longer] {
            assert_eq!(pod_uid(name), None, "{name}");
        }
    }
}
