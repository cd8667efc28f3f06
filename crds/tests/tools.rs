//! The manifests checked with the real tools users run: `kubectl kustomize` renders the
//! installation, and `kubernetes-validate` (the Kubernetes OpenAPI schemas) accepts every
//! object in it, the CRDs included, and the core objects of the samples.
//!
//! The tools come from `make tools` (a Python venv in `.tools/`); a missing tool fails the
//! test with that command, it is never skipped.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly by panicking

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use wireway_crds::manifest::documents;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a tool from `.tools/bin` (else from PATH) in the repository; returns its stdout.
fn run(tool: &str, args: &[&str]) -> String {
    let local = repo().join(".tools/bin").join(tool);
    let program = if local.exists() {
        local
    } else {
        PathBuf::from(tool)
    };
    let output = Command::new(&program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {tool} ({e}); install the test tools with `make tools`")
        });
    assert!(
        output.status.success(),
        "{tool} {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn objects(yaml: &str) -> Vec<Value> {
    documents(yaml)
        .into_iter()
        .map(|d| d.expect("tools print valid YAML").value)
        .collect()
}

fn kind_and_name(object: &Value) -> (String, String) {
    let field = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (field("/kind"), field("/metadata/name"))
}

#[test]
fn kustomize_renders_the_whole_installation() {
    let rendered = objects(&run("kubectl", &["kustomize", "config/default"]));
    let have: Vec<(String, String)> = rendered.iter().map(kind_and_name).collect();
    let want = [
        ("Namespace", "wireway-system"),
        ("CustomResourceDefinition", "networkservices.wireway.dev"),
        ("CustomResourceDefinition", "endpoints.wireway.dev"),
        ("CustomResourceDefinition", "admissions.wireway.dev"),
        ("CustomResourceDefinition", "identitygrants.wireway.dev"),
        ("CustomResourceDefinition", "peerclusters.wireway.dev"),
        ("ServiceAccount", "wireway-operator"),
        ("ServiceAccount", "wireway-agent"),
        ("ClusterRole", "wireway-operator"),
        ("ClusterRole", "wireway-agent"),
        ("ClusterRoleBinding", "wireway-operator"),
        ("ClusterRoleBinding", "wireway-agent"),
        ("Role", "wireway-operator-leader-election"),
        ("Deployment", "wireway-operator"),
        ("DaemonSet", "wireway-agent"),
    ];
    for (kind, name) in want {
        assert!(
            have.contains(&(kind.to_owned(), name.to_owned())),
            "config/default lacks {kind} {name}; it renders {have:?}"
        );
    }
    for object in &rendered {
        let namespaced = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        let (kind, name) = kind_and_name(object);
        let cluster_scoped = matches!(
            kind.as_str(),
            "Namespace"
                | "CustomResourceDefinition"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "ValidatingAdmissionPolicy"
                | "ValidatingAdmissionPolicyBinding"
        );
        assert_eq!(
            namespaced.is_none(),
            cluster_scoped,
            "{kind} {name}: namespace {namespaced:?}"
        );
    }
}

#[test]
fn the_installation_is_valid_kubernetes() {
    let rendered = run("kubectl", &["kustomize", "config/default"]);
    let file = std::env::temp_dir().join(format!("wireway-default-{}.yaml", std::process::id()));
    std::fs::write(&file, rendered).expect("write the rendered installation");
    let out = run(
        "kubernetes-validate",
        &["--strict", file.to_str().expect("utf-8 path")],
    );
    std::fs::remove_file(&file).ok();
    assert!(!out.contains("ERROR"), "{out}");
}

#[test]
fn the_crds_are_valid_apiextensions_v1_objects() {
    let files = [
        "crds/networkservices.yaml",
        "crds/endpoints.yaml",
        "crds/admissions.yaml",
        "crds/identitygrants.yaml",
        "crds/peerclusters.yaml",
    ];
    let mut args = vec!["--strict"];
    args.extend(files);
    let out = run("kubernetes-validate", &args);
    assert_eq!(
        out.matches(" passed for resource").count(),
        files.len(),
        "{out}"
    );
}

#[test]
fn the_samples_core_objects_are_valid_kubernetes() {
    let mut core = String::new();
    for entry in std::fs::read_dir(repo().join("config/samples")).expect("config/samples") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "yaml") || path.ends_with("kustomization.yaml") {
            continue;
        }
        for object in objects(&std::fs::read_to_string(&path).expect("readable sample")) {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            if !api_version.starts_with("wireway.dev/") {
                core.push_str("---\n");
                core.push_str(&serde_json::to_string(&object).expect("JSON is YAML"));
                core.push('\n');
            }
        }
    }
    let file = std::env::temp_dir().join(format!("wireway-samples-{}.yaml", std::process::id()));
    std::fs::write(&file, core).expect("write the core objects");
    let out = run(
        "kubernetes-validate",
        &["--strict", file.to_str().expect("utf-8 path")],
    );
    std::fs::remove_file(&file).ok();
    assert!(
        out.matches(" passed for resource").count() >= 10 && !out.contains("ERROR"),
        "{out}"
    );
}

/// Every shell script of the repository, with shellcheck (from `make tools`).
#[test]
fn the_shell_scripts_pass_shellcheck() {
    let mut scripts = vec![".ci/run".to_owned()];
    for dir in ["tests/kind", "tests/vm", "bench"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                let relative = path.strip_prefix(repo()).unwrap();
                scripts.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        scripts.iter().any(|s| s == "tests/kind/run.sh"),
        "{scripts:?}"
    );
    let args: Vec<&str> = scripts.iter().map(String::as_str).collect();
    run("shellcheck", &args);
}

/// The kind suite installs config/default with the images it builds.
#[test]
fn the_kind_overlay_renders_with_the_images_the_suite_builds() {
    let rendered = objects(&run("kubectl", &["kustomize", "tests/kind/overlay"]));
    let images: Vec<String> = rendered
        .iter()
        .filter_map(|o| o.pointer("/spec/template/spec/containers/0/image"))
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    assert_eq!(images, ["wireway-operator:kind", "wireway-agent:kind"]);
}

/// The Argo CD health check works on objects in every state (run by Lua, as Argo CD
/// runs it), and argocd-cm.yaml carries it unchanged for each kind.
#[test]
fn the_argo_cd_health_check_judges_every_state() {
    let out = Command::new("lua5.4")
        .arg("tests/argocd/health_test.lua")
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run lua5.4 ({e}): install Debian's lua5.4, as .ci/run does")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = std::fs::read_to_string(repo().join("config/argocd/health.lua")).unwrap();
    let config_map =
        objects(&std::fs::read_to_string(repo().join("config/argocd/argocd-cm.yaml")).unwrap());
    for kind in ["NetworkService", "Endpoint", "Admission", "IdentityGrant"] {
        let key = format!("/data/resource.customizations.health.wireway.dev_{kind}");
        let embedded = config_map[0]
            .pointer(&key)
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert_eq!(
            embedded.trim_end(),
            script.trim_end(),
            "argocd-cm.yaml's check for {kind} differs from health.lua: copy health.lua into it"
        );
    }
}
