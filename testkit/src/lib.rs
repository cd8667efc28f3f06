//! What Wireway's tests share, and nothing a binary needs: whether a test that needs
//! root runs ([`root_or_skip`]), and RBAC read both ways ([`rbac`]). Each crate's own
//! fixtures (pods, nodes, hellos) live in that crate's test-support module.

pub mod rbac;

use wireway_runtime::errors::is_root;

/// For a test that needs root: whether to run it. Without root it is skipped, saying
/// so, except under CI (`CI` set), which runs as root: there a test that needs root must
/// run, so it fails instead of passing unseen.
pub fn root_or_skip(test: &str) -> bool {
    let root = is_root();
    if !root {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs root, and CI runs as root"
        );
        eprintln!("skipped {test}: needs root (run as root, as CI does)");
    }
    root
}
