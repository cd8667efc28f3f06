//! The operator binary when something it needs is missing: a clear message, an exit
//! code or a retry, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly by panicking

use std::process::{Command, Stdio};
use std::time::Duration;

const OPERATOR: &str = env!("CARGO_BIN_EXE_wireway-operator");

fn operator(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(OPERATOR);
    command
        .args([
            "--listen-grpc",
            "127.0.0.1:0",
            "--listen-http",
            "127.0.0.1:0",
        ])
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

#[test]
fn an_unreachable_api_server_is_retried_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}\n\
         users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .unwrap();
    let mut child = operator(
        &["--insecure-plaintext"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "it retries rather than exits"
    );
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach the Kubernetes API server"),
        "{stderr}"
    );
    assert!(stderr.contains("https://127.0.0.1:1"), "{stderr}");
    assert!(
        stderr.matches("cannot reach").count() >= 2,
        "retried: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs the operator to its end; it must exit 1 without a panic. Returns what it said.
fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = operator(args, env).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn no_cluster_at_all_exits_with_what_to_do() {
    let stderr = fails(
        &["--insecure-plaintext"],
        &[("KUBECONFIG", "/nonexistent/kubeconfig")],
    );
    assert!(
        stderr.contains("cannot find the Kubernetes API server"),
        "{stderr}"
    );
    assert!(stderr.contains("--manifests"), "{stderr}");
}

#[test]
fn missing_files_are_named() {
    let stderr = fails(
        &[
            "--manifests",
            "/nonexistent/manifests",
            "--insecure-plaintext",
        ],
        &[],
    );
    assert!(
        stderr.contains("cannot read the manifests at /nonexistent/manifests"),
        "{stderr}"
    );
    let stderr = fails(
        &["--manifests", "/", "--tls-ca", "/nonexistent/ca.crt"],
        &[],
    );
    assert!(
        stderr.contains("failed to read the TLS CA certificate /nonexistent/ca.crt"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure-plaintext"), "{stderr}");
}
