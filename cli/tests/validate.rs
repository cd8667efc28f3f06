//! `wireway validate` across versions: with the manifests as last synced (`--old` for a
//! directory or file, `--old-rev` for a git revision), objects in both are checked as
//! updates, with the transition rules, as a pull request's CI job would run it.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly by panicking

use std::path::Path;
use std::process::Command;

const RED: &str = "apiVersion: wireway.dev/v1alpha1\nkind: NetworkService\nmetadata:\n  name: red\n  namespace: red\nspec:\n  cidr: 10.100.0.0/16\n  nodePrefixLength: 24\n";
const GREEN: &str = "apiVersion: wireway.dev/v1alpha1\nkind: NetworkService\nmetadata:\n  name: green\n  namespace: green\nspec:\n  cidr: 10.200.0.0/16\n  nodePrefixLength: 24\n";

/// Runs `wireway ARGS` in `dir`: (success, stdout, stderr).
fn wireway(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wireway"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("wireway runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository whose last commit has config/red.yaml (and a kustomization and a hidden
/// file, which are not manifests), with `changes` applied to the work tree after it.
fn repository(changes: &[(&str, &str)]) -> tempfile::TempDir {
    let repo = tempfile::tempdir().expect("temp dir");
    git(repo.path(), &["init", "-q", "-b", "main"]);
    write(&repo.path().join("config/red.yaml"), RED);
    write(
        &repo.path().join("config/kustomization.yaml"),
        "resources: [red.yaml]\n",
    );
    write(&repo.path().join("config/.red.yaml.swp"), "not: yaml: [");
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "synced"]);
    for (file, text) in changes {
        write(&repo.path().join(file), text);
    }
    repo
}

#[test]
fn a_cidr_changed_since_the_old_directory_is_refused_as_an_update() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(&dir.path().join("old/red.yaml"), RED);
    write(
        &dir.path().join("new/red.yaml"),
        &RED.replace("10.100.0.0/16", "10.101.0.0/16"),
    );
    write(&dir.path().join("new/green.yaml"), GREEN);

    // Alone, the new manifests are valid: only the update breaks a rule.
    let (ok, out, _) = wireway(dir.path(), &["validate", "new"]);
    assert!(ok, "{out}");

    let (ok, out, _) = wireway(dir.path(), &["validate", "--old", "old", "new"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("new/red.yaml:1: NetworkService red/red (update of old/red.yaml:1): invalid\n    spec.cidr: cidr is immutable"),
        "{out}"
    );
    assert!(out.contains("(rule: self == oldSelf)"), "{out}");
    assert!(
        out.contains("new/green.yaml:1: NetworkService green/green: valid"),
        "a new object is a create: {out}"
    );
    assert!(
        out.contains(
            "1 valid, 1 invalid, 0 skipped (not wireway.dev) in 2 files; 1 checked as updates"
        ),
        "{out}"
    );
}

#[test]
fn a_cluster_prefix_added_since_a_git_revision_is_refused_without_a_checkout() {
    let added = RED.replace(
        "  nodePrefixLength: 24\n",
        "  nodePrefixLength: 24\n  clusterPrefix: 10.100.0.0/17\n",
    );
    let repo = repository(&[("config/red.yaml", &added), ("config/green.yaml", GREEN)]);

    let (ok, out, err) = wireway(repo.path(), &["validate", "--old-rev", "HEAD", "config"]);
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains("config/red.yaml:1: NetworkService red/red (update of HEAD:config/red.yaml:1): invalid\n    spec.clusterPrefix: clusterPrefix cannot be added or removed after creation (rule: has(self.clusterPrefix) == has(oldSelf.clusterPrefix))"),
        "{out}"
    );
    assert!(out.contains("NetworkService green/green: valid"), "{out}");
    assert!(out.contains("; 1 checked as updates"), "{out}");

    // Nothing was checked out: the work tree still holds the change.
    let text = std::fs::read_to_string(repo.path().join("config/red.yaml")).expect("read");
    assert_eq!(text, added);
}

#[test]
fn paths_at_a_revision_are_relative_to_where_wireway_runs() {
    let changed = RED.replace("10.100.0.0/16", "10.101.0.0/16");
    let repo = repository(&[("config/red.yaml", &changed)]);
    let config = repo.path().join("config");

    let (ok, out, err) = wireway(&config, &["validate", "--old-rev", "HEAD", "."]);
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains(
            "(update of HEAD:config/red.yaml:1): invalid\n    spec.cidr: cidr is immutable"
        ),
        "{out}"
    );

    // A valid change (the mtu) is a valid update.
    write(&config.join("red.yaml"), &format!("{RED}  mtu: 1400\n"));
    let (ok, out, err) = wireway(&config, &["validate", "--old-rev", "HEAD", "red.yaml"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("(update of HEAD:config/red.yaml:1): valid"),
        "{out}"
    );
}

#[test]
fn a_path_new_since_the_revision_holds_only_creates() {
    let repo = repository(&[("services/green.yaml", GREEN)]);
    let (ok, out, err) = wireway(repo.path(), &["validate", "--old-rev", "HEAD", "services"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("; 0 checked as updates"), "{out}");
}

#[test]
fn an_unknown_revision_is_an_error_not_a_pass() {
    let repo = repository(&[]);
    let (ok, out, err) = wireway(
        repo.path(),
        &["validate", "--old-rev", "no-such-branch", "config"],
    );
    assert!(!ok, "{out}");
    assert!(
        err.starts_with("error: failed to list the manifests at no-such-branch with git: "),
        "{err}"
    );
    let (ok, _, err) = wireway(repo.path(), &["validate", "--old-rev=--output=x", "config"]);
    assert!(!ok && err.contains("not a revision"), "{err}");

    let (ok, _, err) = wireway(
        repo.path(),
        &["validate", "--old", "config", "--old-rev", "HEAD", "config"],
    );
    assert!(!ok && err.contains("cannot be used with"), "{err}");
}
