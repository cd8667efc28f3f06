//! What a tenant can write as a namespace path, or plant where one is looked for, and what
//! the finder makes of it: refused, promptly, saying why. (Namespaces that are accepted
//! need root: `tests/kernel.rs`.)

use std::time::{Duration, Instant};

use super::*;

/// A directory the agent accepts namespaces from (`allowed`), and one it does not.
struct Dirs {
    _root: tempfile::TempDir,
    allowed: PathBuf,
    outside: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let allowed = root.path().join("netns");
    let outside = root.path().join("elsewhere");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    Dirs {
        _root: root,
        allowed,
        outside,
    }
}

fn finder(dirs: &Dirs) -> NetnsFinder {
    NetnsFinder::new(vec![dirs.allowed.clone()], None, None)
}

fn by_path(path: &Path) -> NetnsLocator {
    NetnsLocator {
        locator: Some(netns_locator::Locator::Path(
            path.to_string_lossy().into_owned(),
        )),
    }
}

fn refusal(finder: &NetnsFinder, locator: &NetnsLocator) -> NetnsError {
    match finder.find(locator, None) {
        Ok((found, _)) => panic!("accepted {found:?}"),
        Err(e) => e,
    }
}

#[test]
fn without_a_configured_directory_every_path_is_refused() {
    let dirs = dirs();
    let finder = NetnsFinder::new(Vec::new(), None, None);
    let e = refusal(&finder, &by_path(Path::new("/proc/1/ns/net")));
    assert!(matches!(e, NetnsError::Outside(_)), "{e}");
    let e = refusal(&finder, &by_path(&dirs.allowed.join("pod")));
    assert!(matches!(e, NetnsError::Outside(_)), "{e}");
}

#[test]
fn a_path_outside_the_configured_directories_is_refused() {
    let dirs = dirs();
    std::fs::write(dirs.outside.join("victim"), "").unwrap();
    let finder = finder(&dirs);
    for path in [
        dirs.outside.join("victim"),
        PathBuf::from("/proc/1/ns/net"),
        PathBuf::from("/proc/self/ns/net"),
        // The directory itself is not a namespace in it.
        dirs.allowed.clone(),
    ] {
        let e = refusal(&finder, &by_path(&path));
        assert!(
            matches!(e, NetnsError::Outside(_)),
            "{}: {e}",
            path.display()
        );
        assert!(e.to_string().contains("--netns-path-prefix"), "{e}");
    }
}

#[test]
fn dot_dot_and_relative_paths_are_refused() {
    let dirs = dirs();
    std::fs::write(dirs.outside.join("victim"), "").unwrap();
    let finder = finder(&dirs);
    let escape = dirs.allowed.join("../elsewhere/victim");
    for path in [escape.as_path(), Path::new("netns/x"), Path::new("./x")] {
        let e = refusal(&finder, &by_path(path));
        assert!(
            matches!(e, NetnsError::NotPlain(_)),
            "{}: {e}",
            path.display()
        );
    }
}

#[test]
fn a_symbolic_link_inside_pointing_out_is_refused() {
    let dirs = dirs();
    std::fs::write(dirs.outside.join("victim"), "").unwrap();
    std::os::unix::fs::symlink(dirs.outside.join("victim"), dirs.allowed.join("pod")).unwrap();
    // A link to the node's own namespace, too.
    std::os::unix::fs::symlink("/proc/self/ns/net", dirs.allowed.join("own")).unwrap();
    // And a parent directory that is a link.
    std::os::unix::fs::symlink(&dirs.outside, dirs.allowed.join("sub")).unwrap();
    let finder = finder(&dirs).accepting_any_file();
    for name in ["pod", "own", "sub/victim"] {
        let e = refusal(&finder, &by_path(&dirs.allowed.join(name)));
        assert!(matches!(e, NetnsError::Link(_)), "{name}: {e}");
    }
}

#[test]
fn a_fifo_or_a_plain_file_inside_is_refused_at_once() {
    let dirs = dirs();
    let fifo = dirs.allowed.join("fifo");
    nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
    std::fs::write(dirs.allowed.join("file"), "").unwrap();
    let finder = finder(&dirs);
    let started = Instant::now();
    for name in ["fifo", "file"] {
        let e = refusal(&finder, &by_path(&dirs.allowed.join(name)));
        assert!(matches!(e, NetnsError::NotNetns(_)), "{name}: {e}");
    }
    assert!(started.elapsed() < Duration::from_secs(1), "nothing waits");
}

#[test]
fn a_missing_namespace_is_not_found_yet() {
    let dirs = dirs();
    let e = refusal(&finder(&dirs), &by_path(&dirs.allowed.join("starting")));
    assert!(matches!(e, NetnsError::NotFound), "{e}");
    assert_eq!(e.to_string(), NOT_FOUND);
}

#[test]
fn a_pod_directory_link_counts_only_if_it_points_beneath_a_configured_directory() {
    let dirs = dirs();
    let pods = dirs.outside.join("pods");
    std::fs::create_dir_all(&pods).unwrap();
    std::fs::write(dirs.allowed.join("p-a"), "").unwrap();
    std::fs::write(dirs.outside.join("victim"), "").unwrap();
    std::os::unix::fs::symlink(dirs.allowed.join("p-a"), pods.join("0a")).unwrap();
    std::os::unix::fs::symlink(dirs.outside.join("victim"), pods.join("0b")).unwrap();
    let finder = NetnsFinder::new(vec![dirs.allowed.clone()], Some(pods), None);
    let by_uid = |uid: &str| NetnsLocator {
        locator: Some(netns_locator::Locator::PodUid(uid.to_owned())),
    };
    // Beneath the configured directory: followed, and then found not to be a namespace.
    let e = refusal(&finder, &by_uid("0a"));
    assert!(matches!(e, NetnsError::NotNetns(_)), "{e}");
    let (found, _) = finder
        .clone()
        .accepting_any_file()
        .find(&by_uid("0a"), None)
        .unwrap();
    assert!(found.path.ends_with("netns/p-a"), "{}", found.path);
    // Pointing out: refused.
    let e = refusal(&finder, &by_uid("0b"));
    assert!(matches!(e, NetnsError::Outside(_)), "{e}");
    let e = refusal(&finder, &by_uid("../x"));
    assert!(matches!(e, NetnsError::NotUid(_)), "{e}");
}
