//! `wireway validate` and `wireway certs` run as a user runs them.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly by panicking

use std::path::Path;
use std::process::Command;

fn wireway(args: &[&str]) -> (bool, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(env!("CARGO_BIN_EXE_wireway"))
        .args(args)
        .current_dir(repo)
        .output()
        .expect("wireway runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn validate_accepts_the_samples() {
    let (ok, out) = wireway(&["validate", "config/samples"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("config/samples/10-red.yaml:7: NetworkService red/red: valid"),
        "{out}"
    );
    assert!(
        out.contains("Pod red/red-a: skipped (not wireway.dev)"),
        "{out}"
    );
    assert!(out.contains(" 0 invalid"), "{out}");
}

#[test]
fn validate_rejects_with_file_line_field_and_rule() {
    let (ok, out) = wireway(&["validate", "tests/invalid/nsvc-cidr-malformed.yaml"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("tests/invalid/nsvc-cidr-malformed.yaml:2: NetworkService red/red: invalid\n    spec.cidr: must be a CIDR prefix"),
        "{out}"
    );
    assert!(out.contains("(rule: isCIDR(self))"), "{out}");
}

#[test]
fn validate_reports_broken_yaml_and_checks_the_rest() {
    let dir = std::env::temp_dir().join(format!("wireway-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("broken.yaml");
    std::fs::write(
        &file,
        "apiVersion: wireway.dev/v1alpha1\nkind: Admission\nmetadata: {name: a}\nspec: [\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n",
    )
    .expect("write");
    let (ok, out) = wireway(&["validate", file.to_str().expect("utf-8 path")]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(!ok, "{out}");
    assert!(out.contains("broken.yaml:1: invalid YAML"), "{out}");
    assert!(out.contains("broken.yaml:6: Namespace b: skipped"), "{out}");
}

#[test]
fn certs_for_kubernetes_are_a_secret_and_a_config_map() {
    let out = Command::new(env!("CARGO_BIN_EXE_wireway"))
        .args(["certs", "kubernetes", "--namespace", "ww"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = wireway_crds::manifest::documents(&text)
        .into_iter()
        .map(|d| d.unwrap().value)
        .collect();
    assert_eq!(docs.len(), 2);
    let secret = &docs[0];
    assert_eq!(
        (
            secret["kind"].as_str(),
            secret["metadata"]["namespace"].as_str()
        ),
        (Some("Secret"), Some("ww"))
    );
    assert_eq!(secret["metadata"]["name"], "wireway-operator-tls");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            secret["stringData"][key]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN"),
            "{key}"
        );
    }
    assert_eq!(docs[1]["kind"], "ConfigMap");
    assert_eq!(docs[1]["data"]["ca.crt"], secret["stringData"]["ca.crt"]);
}
