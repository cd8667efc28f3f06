//! The CRD YAML checked in under `crds/` is exactly what the types generate, and every
//! field carries the documentation `kubectl explain` shows.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test fails loudly by panicking

use std::path::Path;

use serde_json::Value;
use wireway_crds::crd_files;

#[test]
fn checked_in_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut stale = Vec::new();
    for file in crd_files() {
        let want = file.render().expect("CRDs render as YAML");
        let have = std::fs::read_to_string(dir.join(file.file_name)).unwrap_or_default();
        if have != want {
            stale.push(format!("crds/{}", file.file_name));
        }
    }
    assert!(
        stale.is_empty(),
        "{} differ from what the types in crds/src generate; regenerate them with `make crds` \
         (cargo run -p wireway-crds --bin wireway-crdgen) and commit the result",
        stale.join(", ")
    );
}

/// Collects the paths of properties without a description.
fn undocumented(schema: &Value, path: &str, found: &mut Vec<String>) {
    if let Some(Value::Object(properties)) = schema.get("properties") {
        for (name, child) in properties {
            let child_path = format!("{path}.{name}");
            let described = child
                .get("description")
                .and_then(Value::as_str)
                .is_some_and(|d| !d.trim().is_empty());
            if !described {
                found.push(child_path.clone());
            }
            undocumented(child, &child_path, found);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), found);
    }
}

#[test]
fn every_field_is_documented_for_kubectl_explain() {
    for file in crd_files() {
        let version = &file.crd.spec.versions[0];
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .expect("a schema"),
        )
        .expect("the schema serialises");
        assert!(
            schema.get("description").is_some(),
            "{}: the kind has no description",
            file.file_name
        );
        let mut found = Vec::new();
        undocumented(&schema, "", &mut found);
        assert!(
            found.is_empty(),
            "{}: fields without a description: {found:?}",
            file.file_name
        );
    }
}

#[test]
fn kinds_names_and_columns() {
    let files = crd_files();
    let names: Vec<(&str, &str, Vec<String>)> = files
        .iter()
        .map(|f| {
            let n = &f.crd.spec.names;
            (
                n.kind.as_str(),
                n.plural.as_str(),
                n.short_names.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("NetworkService", "networkservices", vec!["nsvc".to_owned()]),
            ("Endpoint", "endpoints", vec!["nsep".to_owned()]),
            ("Admission", "admissions", vec!["nsadm".to_owned()]),
            (
                "IdentityGrant",
                "identitygrants",
                vec!["nsgrant".to_owned()]
            ),
            ("PeerCluster", "peerclusters", vec!["nspeer".to_owned()]),
        ]
    );
    for file in &files {
        let crd = &file.crd.spec;
        assert_eq!(crd.group, "wireway.dev");
        // Users write the namespaced kinds; only cluster administrators write grants and
        // peer clusters.
        let scope = if ["IdentityGrant", "PeerCluster"].contains(&crd.names.kind.as_str()) {
            "Cluster"
        } else {
            "Namespaced"
        };
        assert_eq!(crd.scope, scope, "{}", crd.names.kind);
        assert_eq!(
            crd.names.categories.as_deref(),
            Some(&["wireway".to_owned()][..])
        );
        let version = &crd.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let columns: Vec<&str> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Ready") && columns.last() == Some(&"Age"),
            "{columns:?}"
        );
    }
}
