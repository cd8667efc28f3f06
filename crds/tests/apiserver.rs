//! The Wireway CRDs against a real API server: the test control plane
//! (`tests/control-plane/`, started by `wireway_testkit::ControlPlane`). The CRDs install
//! with every CEL rule inside the server's cost budget; the server accepts every sample
//! and rejects every file of `tests/invalid/` for the same reason `wireway validate` gives
//! (the parity test); the transition rules refuse real updates.
//!
//! The directories are read, not listed here: a new kind in `crds/`, a new sample or a new
//! invalid file is covered as soon as it exists. Without the control plane built these
//! tests are skipped, saying so (under CI they fail naming `make control-plane`).

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly by panicking

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wireway_crds::manifest::{documents, yaml_files};
use wireway_crds::validation::{Checked, Validator, Violation};
use wireway_testkit::k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use wireway_testkit::kube::api::{
    Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams, ValidationDirective,
};
use wireway_testkit::kube::core::{GroupVersionKind, Request, Status};
use wireway_testkit::kube::discovery::{Scope, pinned_kind};
use wireway_testkit::kube::{self, Client, Resource};
use wireway_testkit::{ControlPlane, unique_name};

/// The field manager of everything these tests write.
const MANAGER: &str = "wireway-tests";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The YAML files under `dir` of the repository, as `wireway validate` finds them.
fn files(dir: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    yaml_files(&repo().join(dir), &mut found).unwrap_or_else(|e| panic!("{dir}: {e}"));
    found
}

/// The objects of a file, in order.
fn objects(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    documents(&text)
        .into_iter()
        .map(|d| {
            d.unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .value
        })
        .collect()
}

fn name_of(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The shared control plane with the CRDs installed, and a client for this test's runtime.
async fn server(test: &str) -> Option<(&'static ControlPlane, Client)> {
    let control_plane = ControlPlane::shared(test)?;
    let client = control_plane.client().await;
    install_crds(&client).await;
    Some((control_plane, client))
}

/// Applies every CRD in `crds/` (server-side apply, as `kubectl apply --server-side` does)
/// and waits until each is Established. The API server compiles every CEL rule and
/// estimates its cost when a CRD is written: a rule that does not compile, or whose cost
/// exceeds the budget, fails the apply with the rule named.
async fn install_crds(client: &Client) -> Vec<CustomResourceDefinition> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let apply = PatchParams::apply(MANAGER).force();
    let mut names = Vec::new();
    for path in files("crds") {
        for crd in objects(&path) {
            let name = crd["metadata"]["name"].as_str().expect("a CRD has a name");
            api.patch(name, &apply, &Patch::Apply(&crd))
                .await
                .unwrap_or_else(|e| panic!("the API server refused {}: {e}", name_of(&path)));
            names.push(name.to_owned());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut installed = Vec::new();
    for name in names {
        loop {
            let crd = api.get(&name).await.expect("a CRD just applied");
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                installed.push(crd);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "CRD {name} not Established after 60 s: {:?}",
                crd.status
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    installed
}

/// Every `x-kubernetes-validations` rule of every CRD in `crds/`: (rule, message).
fn cel_rules() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for path in files("crds") {
        for crd in objects(&path) {
            rules_in(&crd["spec"], &mut found);
        }
    }
    found
}

/// The `x-kubernetes-validations` rules anywhere in `value`: (rule, message).
fn rules_in(value: &Value, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for rule in map
                .get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = |key: &str| rule[key].as_str().unwrap_or_default().to_owned();
                found.push((text("rule"), text("message")));
            }
            map.values().for_each(|v| rules_in(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| rules_in(v, found)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// What the server said, as (field, rule)

/// One reason the server gave, as the local validator names reasons: the field, and the
/// rules it can stand for (a schema keyword such as `pattern`, or the text of the CEL
/// rule(s) whose message the server quoted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Named {
    field: String,
    rules: BTreeSet<String>,
    /// The server's words, for messages.
    said: String,
}

/// The server's verdict on an object.
#[derive(Debug)]
enum Verdict {
    Accepted,
    Rejected(Vec<Named>),
}

/// The schema keyword a server cause stands for, from its reason and the wording of
/// kube-openapi's validation errors (`k8s.io/kube-openapi/pkg/validation/errors`).
fn keyword(field: &str, reason: &str, message: &str) -> Option<&'static str> {
    let by_reason = match reason {
        "FieldValueRequired" => Some("required"),
        "FieldValueTooLong" => Some("maxLength"),
        "FieldValueTooMany" => Some("maxItems"),
        "FieldValueNotSupported" => Some("enum"),
        "FieldValueTypeInvalid" => Some("type"),
        _ => None,
    };
    const WORDING: &[(&str, &str)] = &[
        ("should match '", "pattern"),
        ("should be at least", "minLength"),
        ("should be at most", "maxLength"),
        ("should have at least", "minItems"),
        ("should have at most", "maxItems"),
        ("should be less than", "maximum"),
        ("should be greater than", "minimum"),
        ("should be one of", "enum"),
        ("shouldn't contain duplicates", "uniqueItems"),
        ("should be a multiple of", "multipleOf"),
        ("in body is required", "required"),
    ];
    let by_wording = || {
        WORDING
            .iter()
            .find(|(words, _)| message.contains(words))
            .map(|(_, keyword)| *keyword)
    };
    // The local validator's own names for the metadata checks every kind gets.
    let by_metadata = || match field {
        "metadata.name" => Some("name"),
        "metadata.namespace" => Some("namespace"),
        _ => None,
    };
    by_reason.or_else(by_wording).or_else(by_metadata)
}

/// The reasons in a refusal. `Invalid` (422) lists causes; strict field validation
/// refuses unknown fields with `BadRequest` (create) or, under server-side apply, with
/// "field not declared in schema"; both mean the schema's `additionalProperties: false`.
fn reasons(status: &Status, rules: &[(String, String)]) -> Vec<Named> {
    let mut named = Vec::new();
    for cause in status.details.iter().flat_map(|d| &d.causes) {
        // A note, not a reason: CEL rules skipped because of another error.
        if cause
            .message
            .contains("some validation rules were not checked")
        {
            continue;
        }
        let mut found: BTreeSet<String> = keyword(&cause.field, &cause.reason, &cause.message)
            .map(str::to_owned)
            .into_iter()
            .collect();
        // A CEL rule's refusal is "Invalid value: [VALUE: ]MESSAGE", or "failed rule: RULE"
        // for a rule without a message.
        for (rule, message) in rules {
            let quoted = !message.is_empty()
                && (cause.message.ends_with(&format!(": {message}")) || cause.message == *message);
            if quoted || cause.message.ends_with(&format!("failed rule: {rule}")) {
                found.insert(rule.clone());
            }
        }
        if found.is_empty() {
            found.insert(format!("unrecognised {}", cause.reason));
        }
        named.push(Named {
            field: cause.field.clone(),
            rules: found,
            said: cause.message.clone(),
        });
    }
    let unknown_on_create = status.message.split("unknown field \"").skip(1);
    for rest in unknown_on_create {
        let field = rest.split('"').next().unwrap_or_default();
        named.push(additional_property(field, &status.message));
    }
    if let Some((before, _)) = status.message.split_once(": field not declared in schema") {
        let field = before.rsplit(' ').next().unwrap_or_default();
        named.push(additional_property(
            field.trim_start_matches('.'),
            &status.message,
        ));
    }
    if named.is_empty() {
        named.push(Named {
            field: String::new(),
            rules: BTreeSet::from([format!("unrecognised {}", status.reason)]),
            said: status.message.clone(),
        });
    }
    named
}

fn additional_property(field: &str, said: &str) -> Named {
    Named {
        field: field.to_owned(),
        rules: BTreeSet::from(["additionalProperties".to_owned()]),
        said: said.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------
// Asking the server

/// How the server serves an object's kind; `None` when it does not (no such kind).
async fn resource(client: &Client, object: &Value) -> Option<(ApiResource, bool)> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or_default();
    let gvk = GroupVersionKind::gvk(group, version, kind);
    match pinned_kind(client, &gvk).await {
        Ok((resource, capabilities)) => Some((resource, capabilities.scope == Scope::Namespaced)),
        Err(kube::Error::Discovery(_)) => None,
        Err(e) => panic!("failed to discover {api_version} {kind}: {e}"),
    }
}

/// The namespace an object goes to: its own, or `default` as kubectl would.
fn namespace_of(object: &Value) -> String {
    object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_owned()
}

fn dynamic_api(
    client: &Client,
    resource: &ApiResource,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

fn verdict_of<T>(result: Result<T, kube::Error>, rules: &[(String, String)]) -> Verdict {
    match result {
        Ok(_) => Verdict::Accepted,
        Err(kube::Error::Api(status)) => Verdict::Rejected(reasons(&status, rules)),
        Err(e) => panic!("the API server did not answer: {e}"),
    }
}

/// The server's verdict on creating `object` (dry run, strict field validation, as
/// `kubectl create --dry-run=server` would; a create, not an apply, so that an object
/// without a name reaches the server too).
async fn create_verdict(client: &Client, object: &Value, rules: &[(String, String)]) -> Verdict {
    let Some((resource, namespaced)) = resource(client, object).await else {
        return Verdict::Rejected(vec![Named {
            field: "kind".into(),
            rules: BTreeSet::from(["kind".to_owned()]),
            said: "the server does not serve this kind (discovery)".into(),
        }]);
    };
    let namespace = namespaced.then(|| namespace_of(object));
    let url = DynamicObject::url_path(&resource, namespace.as_deref());
    let params = PostParams {
        dry_run: true,
        field_manager: Some(MANAGER.into()),
    };
    let mut request = Request::new(url)
        .create(&params, serde_json::to_vec(object).expect("JSON"))
        .expect("a create request");
    // kube's PostParams has no fieldValidation; kubectl sends Strict.
    let uri = format!("{}&fieldValidation=Strict", request.uri());
    *request.uri_mut() = uri.parse().expect("a URI");
    verdict_of(client.request::<Value>(request).await, rules)
}

/// Server-side apply of `object` (strict field validation), for real or as a dry run.
async fn apply(
    client: &Client,
    object: &Value,
    dry_run: bool,
) -> Result<DynamicObject, kube::Error> {
    let (resource, namespaced) = resource(client, object)
        .await
        .unwrap_or_else(|| panic!("the server serves no kind {}", object["kind"]));
    let namespace = namespaced.then(|| namespace_of(object));
    let api = dynamic_api(client, &resource, namespace.as_deref());
    let mut params = PatchParams::apply(MANAGER).force();
    params.dry_run = dry_run;
    params.field_validation = Some(ValidationDirective::Strict);
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(name, &params, &Patch::Apply(object)).await
}

async fn delete(client: &Client, object: &Value) {
    let (resource, namespaced) = resource(client, object).await.expect("a served kind");
    let namespace = namespaced.then(|| namespace_of(object));
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let _ = dynamic_api(client, &resource, namespace.as_deref())
        .delete(name, &Default::default())
        .await;
}

/// Creates the namespaces `objects` name (for real: the server refuses even a dry run
/// into a namespace that does not exist).
async fn ensure_namespaces(client: &Client, objects: &[Value]) {
    let names: BTreeSet<String> = objects
        .iter()
        .filter_map(|o| o["metadata"]["namespace"].as_str())
        .filter(|ns| {
            ns.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        .map(str::to_owned)
        .collect();
    for name in names {
        let namespace =
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        apply(client, &namespace, false)
            .await
            .unwrap_or_else(|e| panic!("failed to create namespace {name}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// Parity

/// Whether a reason of the server and a violation found locally are about the same field.
/// JSON Schema puts `required` and `additionalProperties` on the object (`spec`), where
/// the API server names the missing or unknown property in it (`spec.networkService`).
fn same_field(server: &Named, local: &Violation) -> bool {
    server.field == local.field
        || (matches!(local.rule.as_str(), "required" | "additionalProperties")
            && server.field.rsplit_once('.').map(|(parent, _)| parent)
                == Some(local.field.as_str()))
}

/// Whether the server and `wireway validate` refuse an object for the same reason. This is
/// what "the same rule" means here, precisely:
///
/// 1. they name the same fields: every field the server names is one the local validator
///    names, and the other way round (with [`same_field`]'s parent rule); and
/// 2. at each of those fields they name at least one rule in common: the same schema
///    keyword (`pattern`, `maxLength`, `required`, ...; the server's wording is mapped to
///    the keyword by [`keyword`]), or the same CEL rule (the server quotes the rule's
///    message, mapped back to the rule's text through the CRDs; the local validator
///    names the text).
///
/// "At least one" and not "all", because two differences are by design and harmless: the
/// server stops at the first failing string check of a field (`maxLength` before
/// `pattern`) where the local validator names every one; and the server still runs the
/// CEL rules after a schema error that does not block them (`maximum`), where the local
/// validator runs CEL only on objects that pass the schema. Either way the same field is
/// refused for a reason both name. A server reason on a field the local validator does
/// not name (or the reverse) is a disagreement.
fn same_reasons(server: &[Named], local: &[Violation]) -> Result<(), String> {
    for s in server {
        if !local.iter().any(|l| same_field(s, l)) {
            return Err(format!("only the server names {}", s.field));
        }
    }
    for l in local {
        if !server.iter().any(|s| same_field(s, l)) {
            return Err(format!("only the local validator names {}", l.field));
        }
        let at_field = |v: &&Violation| v.field == l.field;
        let shared = local.iter().filter(at_field).any(|l| {
            server
                .iter()
                .any(|s| same_field(s, l) && s.rules.contains(&l.rule))
        });
        if !shared {
            return Err(format!("no rule in common at {}", l.field));
        }
    }
    Ok(())
}

fn describe_server(server: &[Named]) -> String {
    server
        .iter()
        .map(|s| format!("      {}: {:?} ({})\n", s.field, s.rules, s.said))
        .collect()
}

fn describe_local(local: &[Violation]) -> String {
    local.iter().map(|v| format!("      {v}\n")).collect()
}

/// The server's and the local validator's verdicts on one file of `tests/invalid/`: one
/// document is a create; two are the stored object and an update to it (transition
/// rules), as `crds/tests/manifests.rs` reads them. The stored object is created for real,
/// the update is a dry run, and the stored object is deleted again.
async fn verdicts(
    client: &Client,
    validator: &Validator,
    rules: &[(String, String)],
    path: &Path,
) -> (Verdict, Result<Checked, Vec<Violation>>) {
    let docs = objects(path);
    ensure_namespaces(client, &docs).await;
    match docs.as_slice() {
        [new] => (
            create_verdict(client, new, rules).await,
            validator.validate(new, None),
        ),
        [old, new] => {
            assert_eq!(
                validator.validate(old, None),
                Ok(Checked::Valid),
                "{}: the stored object must be valid",
                name_of(path)
            );
            apply(client, old, false).await.unwrap_or_else(|e| {
                panic!(
                    "{}: the server refused the stored object: {e}",
                    name_of(path)
                )
            });
            let verdict = verdict_of(apply(client, new, true).await, rules);
            delete(client, old).await;
            (verdict, validator.validate(new, Some(old)))
        }
        _ => panic!("{}: expected one or two documents", name_of(path)),
    }
}

#[tokio::test]
async fn the_crds_install_with_every_cel_rule_within_the_cost_budget() {
    let Some((_, client)) =
        server("the_crds_install_with_every_cel_rule_within_the_cost_budget").await
    else {
        return;
    };
    let installed = install_crds(&client).await;
    assert!(
        installed.len() >= 3,
        "only {} CRDs in crds/",
        installed.len()
    );
    // The server kept every rule it was given (none dropped on the way).
    let mut served = Vec::new();
    for crd in &installed {
        rules_in(&serde_json::to_value(&crd.spec).expect("JSON"), &mut served);
    }
    let mut given = cel_rules();
    served.sort();
    given.sort();
    assert_eq!(served, given, "the CEL rules served and those in crds/");
}

/// Every object of `config/samples/` is accepted by `wireway validate` and by the server.
/// Namespaces and ServiceAccounts are applied for real (the others need them: a Pod's
/// ServiceAccount must exist); everything else is a server-side dry run.
#[tokio::test]
async fn the_server_and_wireway_validate_accept_every_sample() {
    let Some((_, client)) = server("the_server_and_wireway_validate_accept_every_sample").await
    else {
        return;
    };
    let validator = Validator::new().expect("the CRD schemas compile");
    let mut samples: Vec<(String, Value)> = files("config/samples")
        .iter()
        .flat_map(|path| objects(path).into_iter().map(|o| (name_of(path), o)))
        .collect();
    let prerequisite = |o: &Value| match o["kind"].as_str() {
        Some("Namespace") => 0,
        Some("ServiceAccount") => 1,
        _ => 2,
    };
    samples.sort_by_key(|(_, o)| prerequisite(o));
    let mut failures = Vec::new();
    for (file, object) in &samples {
        let what = format!(
            "{file}: {} {}",
            object["kind"].as_str().unwrap_or("?"),
            object["metadata"]["name"].as_str().unwrap_or("?")
        );
        if let Err(violations) = validator.validate(object, None) {
            failures.push(format!(
                "{what}: wireway validate refuses it:\n{}",
                describe_local(&violations)
            ));
        }
        if let Err(e) = apply(&client, object, prerequisite(object) == 2).await {
            failures.push(format!("{what}: the server refuses it: {e}"));
        }
    }
    assert!(
        samples.len() >= 10,
        "only {} objects in config/samples",
        samples.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The parity test: every file of `tests/invalid/` is refused by the server and by
/// `wireway validate`, for the same reason ([`same_reasons`] says precisely what that
/// means). It fails on any file where they disagree, either way, and lists them all.
#[tokio::test]
async fn the_server_refuses_every_invalid_file_for_the_reason_wireway_validate_gives() {
    let Some((_, client)) =
        server("the_server_refuses_every_invalid_file_for_the_reason_wireway_validate_gives").await
    else {
        return;
    };
    let validator = Validator::new().expect("the CRD schemas compile");
    let rules = cel_rules();
    let corpus = files("tests/invalid");
    assert!(
        corpus.len() >= 30,
        "only {} files in tests/invalid",
        corpus.len()
    );
    let mut disagreements = Vec::new();
    for path in &corpus {
        let (server, local) = verdicts(&client, &validator, &rules, path).await;
        // The evidence, shown with --no-capture (and kept by nextest for a failure).
        eprintln!("{}:", name_of(path));
        match &server {
            Verdict::Accepted => eprintln!("    server: accepted"),
            Verdict::Rejected(named) => eprint!("    server:\n{}", describe_server(named)),
        }
        match &local {
            Ok(checked) => eprintln!("    wireway validate: {checked:?}"),
            Err(violations) => eprint!("    wireway validate:\n{}", describe_local(violations)),
        }
        let problem = match (&server, &local) {
            (Verdict::Rejected(server), Err(local)) => same_reasons(server, local).err(),
            (Verdict::Accepted, Err(_)) => Some("the server accepts it".to_owned()),
            (Verdict::Rejected(_), Ok(checked)) => {
                Some(format!("wireway validate accepts it ({checked:?})"))
            }
            (Verdict::Accepted, Ok(_)) => Some("both accept it".to_owned()),
        };
        if let Some(problem) = problem {
            let server = match &server {
                Verdict::Accepted => "      (accepted)\n".to_owned(),
                Verdict::Rejected(named) => describe_server(named),
            };
            let local = match &local {
                Ok(_) => "      (accepted)\n".to_owned(),
                Err(violations) => describe_local(violations),
            };
            disagreements.push(format!(
                "{}: {problem}\n    server:\n{server}    wireway validate:\n{local}",
                name_of(path)
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "the server and wireway validate disagree on {} of {} files:\n{}",
        disagreements.len(),
        corpus.len(),
        disagreements.join("")
    );
}

/// The transition rules by real updates (`kubectl apply --server-side`, as a user or a
/// GitOps tool would): a NetworkService's cidr changed, and a clusterPrefix added to a
/// live one, are refused with the rule `wireway validate` names for
/// `tests/invalid/nsvc-cidr-changed.yaml` and `nsvc-cluster-prefix-added.yaml`; the stored
/// object stays as it was; an update the rules allow (the mtu) goes through.
#[tokio::test]
async fn the_server_refuses_a_changed_cidr_and_a_cluster_prefix_added_later() {
    let test = "the_server_refuses_a_changed_cidr_and_a_cluster_prefix_added_later";
    let Some((control_plane, _)) = server(test).await else {
        return;
    };
    let validator = Validator::new().expect("the CRD schemas compile");
    let rules = cel_rules();
    for (file, field, rule) in [
        ("nsvc-cidr-changed.yaml", "spec.cidr", "self == oldSelf"),
        (
            "nsvc-cluster-prefix-added.yaml",
            "spec.clusterPrefix",
            "has(self.clusterPrefix) == has(oldSelf.clusterPrefix)",
        ),
    ] {
        let docs = objects(&repo().join("tests/invalid").join(file));
        let namespace = unique_name("transition");
        let [mut old, mut new] = <[Value; 2]>::try_from(docs).expect("two documents");
        old["metadata"]["namespace"] = namespace.clone().into();
        new["metadata"]["namespace"] = namespace.clone().into();

        // What wireway validate names for this file.
        let local = validator
            .validate(&new, Some(&old))
            .expect_err("refused locally");
        assert!(
            local.iter().any(|v| v.field == field && v.rule == rule),
            "{file}: wireway validate names {field} by {rule}, got:\n{}",
            describe_local(&local)
        );
        let message = &rules
            .iter()
            .find(|(r, _)| r == rule)
            .expect("the rule is in the CRDs")
            .1;

        let kubectl_apply = |object: &Value| {
            let mut child = control_plane
                .kubectl_command()
                .args([
                    "apply",
                    "--server-side",
                    "--field-manager",
                    MANAGER,
                    "-f",
                    "-",
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kubectl runs");
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(object.to_string().as_bytes())
                .expect("kubectl reads");
            let out = child.wait_with_output().expect("kubectl ends");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        control_plane
            .kubectl(&["create", "namespace", &namespace])
            .expect("namespace created");
        let (created, err) = kubectl_apply(&old);
        assert!(created, "{file}: the stored object was refused: {err}");

        let (updated, err) = kubectl_apply(&new);
        assert!(!updated, "{file}: the server accepted the update");
        assert!(
            err.contains(&format!("{field}: Invalid value: ")) && err.contains(message.as_str()),
            "{file}: the server should refuse {field} by {rule} ({message:?}), said: {err}"
        );

        let stored = control_plane
            .kubectl(&[
                "-n",
                &namespace,
                "get",
                "networkservice",
                "red",
                "-o",
                "json",
            ])
            .expect("the stored object is there");
        let stored: Value = serde_json::from_str(&stored).expect("JSON");
        assert_eq!(
            stored["spec"], old["spec"],
            "{file}: the stored object changed"
        );

        let mut allowed = old.clone();
        allowed["spec"]["mtu"] = 1400.into();
        assert_eq!(validator.validate(&allowed, Some(&old)), Ok(Checked::Valid));
        let (updated, err) = kubectl_apply(&allowed);
        assert!(updated, "{file}: an mtu change was refused: {err}");
    }
}

/// The parity rule itself, without a server: it must see a disagreement when there is one.
#[test]
fn same_reasons_means_same_fields_and_a_rule_in_common() {
    let server = |field: &str, rules: &[&str]| Named {
        field: field.into(),
        rules: rules.iter().map(|r| (*r).to_owned()).collect(),
        said: String::new(),
    };
    let local = |field: &str, rule: &str| Violation {
        field: field.into(),
        message: String::new(),
        rule: rule.into(),
    };
    // The server stops at maxLength; the local validator also names the pattern.
    assert_eq!(
        same_reasons(
            &[server("spec.interfaceName", &["maxLength"])],
            &[
                local("spec.interfaceName", "maxLength"),
                local("spec.interfaceName", "pattern")
            ]
        ),
        Ok(())
    );
    // `required` names the object locally, the property on the server.
    assert_eq!(
        same_reasons(
            &[server("spec.cidr", &["required"])],
            &[local("spec", "required")]
        ),
        Ok(())
    );
    // Same field, no rule in common.
    assert!(
        same_reasons(
            &[server("spec.cidr", &["pattern"])],
            &[local("spec.cidr", "isCIDR(self)")]
        )
        .is_err()
    );
    // A field only one side names, either way.
    assert!(
        same_reasons(
            &[
                server("spec.cidr", &["pattern"]),
                server("spec.mtu", &["maximum"])
            ],
            &[local("spec.cidr", "pattern")]
        )
        .is_err()
    );
    assert!(
        same_reasons(
            &[server("spec.cidr", &["pattern"])],
            &[local("spec.cidr", "pattern"), local("spec.mtu", "maximum")]
        )
        .is_err()
    );
    // `required` on another object is not the parent rule.
    assert!(
        same_reasons(
            &[server("spec.a.b", &["required"])],
            &[local("spec", "required")]
        )
        .is_err()
    );
}

/// How refusals read: CEL messages (with and without the value), schema wording, unknown
/// fields under create and under server-side apply.
#[test]
fn reasons_read_the_servers_words() {
    let rules = vec![
        ("self == oldSelf".to_owned(), "cidr is immutable".to_owned()),
        ("size(self.allow) > 0".to_owned(), String::new()),
    ];
    let status = |message: &str, causes: Value| -> Status {
        serde_json::from_value(json!({
            "status": "Failure", "message": message, "reason": "Invalid", "code": 422,
            "details": {"causes": causes},
        }))
        .expect("a Status")
    };
    let rules_of = |s: &Status| -> Vec<(String, Vec<String>)> {
        reasons(s, &rules)
            .into_iter()
            .map(|n| (n.field, n.rules.into_iter().collect()))
            .collect()
    };
    let s = status(
        "",
        json!([
            {"reason": "FieldValueInvalid", "field": "spec.cidr", "message": "Invalid value: \"10.1.0.0/16\": cidr is immutable"},
            {"reason": "FieldValueInvalid", "field": "spec", "message": "Invalid value: \"object\": failed rule: size(self.allow) > 0"},
            {"reason": "FieldValueInvalid", "field": "spec.x", "message": "Invalid value: \"a\": spec.x in body should match '^b$'"},
            {"reason": "FieldValueTooLong", "field": "spec.y", "message": "Too long: may not be more than 15 bytes"},
            {"reason": "FieldValueInvalid", "field": "<nil>", "message": "Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"},
        ]),
    );
    let one = |f: &str, r: &str| (f.to_owned(), vec![r.to_owned()]);
    assert_eq!(
        rules_of(&s),
        vec![
            one("spec.cidr", "self == oldSelf"),
            one("spec", "size(self.allow) > 0"),
            one("spec.x", "pattern"),
            one("spec.y", "maxLength"),
        ]
    );
    let create = status(
        "NetworkService in version \"v1alpha1\" cannot be handled as a NetworkService: strict decoding error: unknown field \"spec.cidrs\", unknown field \"spec.mtus\"",
        json!([]),
    );
    assert_eq!(
        rules_of(&create),
        vec![
            one("spec.cidrs", "additionalProperties"),
            one("spec.mtus", "additionalProperties")
        ]
    );
    let apply = status(
        "failed to create typed patch object (red/red; wireway.dev/v1alpha1, Kind=NetworkService): .spec.cidrs: field not declared in schema",
        json!([]),
    );
    assert_eq!(
        rules_of(&apply),
        vec![one("spec.cidrs", "additionalProperties")]
    );
    let unknown = status("something new", json!([]));
    assert_eq!(rules_of(&unknown), vec![one("", "unrecognised Invalid")]);
}
