//! What Wireway's tests share, and nothing a binary needs: whether a test that needs
//! root runs ([`root_or_skip`]), RBAC read both ways ([`rbac`]), a real API server
//! ([`control_plane`]: [`ControlPlane`]) and objects to put in it ([`objects`]). Each
//! crate's own fixtures (pods, nodes, hellos) live in that crate's test-support module.

pub mod control_plane;
pub mod objects;
pub mod rbac;

pub use control_plane::{ControlPlane, client_for, unique_name};
/// The kube and k8s-openapi the [`ControlPlane`]'s client comes from, for tests.
pub use {k8s_openapi, kube};

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
