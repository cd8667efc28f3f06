//! Local validation of Wireway manifests, as the API server would do it.
//!
//! For each object of a Wireway kind this applies the generated CRD's OpenAPI schema (with
//! a JSON-schema validator, treating unknown fields as errors the way `kubectl apply`'s
//! strict field validation does) and its CEL rules (`x-kubernetes-validations`, with the
//! old object for transition rules such as `self == oldSelf`). Objects of other API groups
//! are left to their own owners and reported as [`Checked::Foreign`].
//!
//! Used by `wireway validate` (pre-commit and CI checks of GitOps repositories) and by the
//! operator's manifest-directory source, which must refuse what a cluster would refuse.

use std::fmt;

use serde_json::{Map, Value};

use crate::{CrdFile, GROUP, crd_files};

/// One reason an object is invalid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where in the object, as the API server writes it: `spec.cidr`, `spec.allow[0]`.
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
    /// What rejected it: the CEL rule, or the schema keyword (`pattern`, `required`,
    /// `additionalProperties`, ...).
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{} (rule: {})", self.message, self.rule)
        } else {
            write!(f, "{}: {} (rule: {})", self.field, self.message, self.rule)
        }
    }
}

/// What validation found acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// A Wireway object that passed every schema check and CEL rule.
    Valid,
    /// An object of another API group (core/v1 Pod, Namespace, ...): not checked here.
    Foreign,
}

/// Why the validator could not be built from the CRDs (a bug in the generated schema).
#[derive(Debug, thiserror::Error)]
#[error("failed to compile the schema of {kind}: {message}")]
pub struct SchemaError {
    kind: String,
    message: String,
}

/// The compiled schema of one kind.
struct KindSchema {
    kind: String,
    version: String,
    /// The openAPIV3Schema as written in the CRD; kube-cel walks it for CEL rules.
    openapi: Value,
    /// The same schema as strict JSON schema.
    json: jsonschema::Validator,
}

/// Validates objects against the Wireway CRDs.
pub struct Validator {
    kinds: Vec<KindSchema>,
    cel: kube_cel::Validator,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.kind.as_str()).collect();
        f.debug_struct("Validator").field("kinds", &kinds).finish()
    }
}

impl Validator {
    /// Compiles the schemas of every Wireway CRD.
    pub fn new() -> Result<Self, SchemaError> {
        let kinds = crd_files().iter().map(compile).collect::<Result<_, _>>()?;
        Ok(Self {
            kinds,
            cel: kube_cel::Validator::new(),
        })
    }

    /// Validates `object`; `old` is the object it replaces, for transition rules.
    ///
    /// Returns every violation found, schema and CEL alike, as the API server does.
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Result<Checked, Vec<Violation>> {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        let Some((group, version)) = api_version.split_once('/') else {
            return if api_version.is_empty() || kind.is_empty() {
                Err(vec![violation(
                    "",
                    "apiVersion and kind must be set",
                    "required",
                )])
            } else {
                Ok(Checked::Foreign)
            };
        };
        if group != GROUP {
            return Ok(Checked::Foreign);
        }
        let Some(schema) = self
            .kinds
            .iter()
            .find(|k| k.kind == kind && k.version == version)
        else {
            let known: Vec<&str> = self.kinds.iter().map(|k| k.kind.as_str()).collect();
            return Err(vec![violation(
                "kind",
                &format!(
                    "{api_version} has no kind {kind:?}; the kinds of {GROUP}/{version} are {}",
                    known.join(", ")
                ),
                "kind",
            )]);
        };
        let mut violations = metadata_violations(object);
        violations.extend(schema.json.iter_errors(object).map(|e| {
            violation(
                &field_path(&e.instance_path().to_string()),
                &e.to_string(),
                &keyword(&e.schema_path().to_string()),
            )
        }));
        // Like the API server, run CEL rules only on objects of the right shape: a rule
        // over a missing required field would only add noise to the real error.
        if violations.is_empty()
            && let Err(errors) = self.cel.validate(&schema.openapi, object, old)
        {
            violations.extend(errors.iter().map(|e| Violation {
                field: e.field_path.clone(),
                message: e.message.clone(),
                rule: e.rule.clone(),
            }));
        }
        if violations.is_empty() {
            Ok(Checked::Valid)
        } else {
            Err(violations)
        }
    }
}

fn violation(field: &str, message: &str, rule: &str) -> Violation {
    Violation {
        field: field.to_owned(),
        message: message.to_owned(),
        rule: rule.to_owned(),
    }
}

fn compile(file: &CrdFile) -> Result<KindSchema, SchemaError> {
    let kind = file.crd.spec.names.kind.clone();
    let error = |message: String| SchemaError {
        kind: kind.clone(),
        message,
    };
    let version = file
        .crd
        .spec
        .versions
        .first()
        .ok_or_else(|| error("no version".into()))?;
    let openapi = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or_else(|| error("no openAPIV3Schema".into()))
        .and_then(|s| serde_json::to_value(s).map_err(|e| error(e.to_string())))?;
    let mut strict = openapi.clone();
    make_strict(&mut strict);
    if let Value::Object(root) = &mut strict {
        // The API server adds these to every kind; the CRD schema leaves them out.
        if let Some(Value::Object(properties)) = root.get_mut("properties") {
            for field in ["apiVersion", "kind"] {
                properties.insert(field.into(), serde_json::json!({"type": "string"}));
            }
            properties.insert("metadata".into(), serde_json::json!({"type": "object"}));
        }
    }
    let json = jsonschema::validator_for(&strict).map_err(|e| error(e.to_string()))?;
    Ok(KindSchema {
        kind,
        version: version.name.clone(),
        openapi,
        json,
    })
}

/// Rewrites an OpenAPI v3 structural schema into JSON schema with the API server's
/// semantics: unknown fields are errors (strict field validation, the default of
/// `kubectl apply` since Kubernetes 1.27), and `nullable: true` admits `null`.
fn make_strict(schema: &mut Value) {
    let Value::Object(node) = schema else { return };
    let preserves_unknown = node
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true);
    if node.contains_key("properties")
        && !preserves_unknown
        && !node.contains_key("additionalProperties")
    {
        node.insert("additionalProperties".into(), Value::Bool(false));
    }
    if node.get("nullable").and_then(Value::as_bool) == Some(true)
        && let Some(Value::String(ty)) = node.get("type")
    {
        let ty = Value::Array(vec![
            Value::String(ty.clone()),
            Value::String("null".into()),
        ]);
        node.insert("type".into(), ty);
    }
    for (key, child) in node.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" => {
                if let Value::Object(children) = child {
                    children.values_mut().for_each(make_strict);
                }
            }
            "items" | "additionalProperties" | "not" => make_strict(child),
            "allOf" | "anyOf" | "oneOf" => {
                if let Value::Array(children) = child {
                    children.iter_mut().for_each(make_strict);
                }
            }
            _ => {}
        }
    }
}

/// The checks the API server makes on every object's metadata.
fn metadata_violations(object: &Value) -> Vec<Violation> {
    let empty = Map::new();
    let metadata = object
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut found = Vec::new();
    match metadata.get("name").and_then(Value::as_str) {
        None | Some("") => found.push(violation("metadata.name", "name is required", "required")),
        Some(name) if !is_dns_subdomain(name) => found.push(violation(
            "metadata.name",
            &format!("{name:?} must be a lowercase DNS-1123 subdomain of at most 253 characters"),
            "name",
        )),
        Some(_) => {}
    }
    if let Some(ns) = metadata.get("namespace").and_then(Value::as_str)
        && !is_dns_label(ns)
    {
        found.push(violation(
            "metadata.namespace",
            &format!("{ns:?} must be a lowercase DNS-1123 label of at most 63 characters"),
            "namespace",
        ));
    }
    found
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `/spec/allow/0/spiffeId` -> `spec.allow[0].spiffeId`.
fn field_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

/// The keyword at the end of a schema path: `/properties/spec/properties/cidr/maxLength`
/// -> `maxLength`.
fn keyword(schema_path: &str) -> String {
    schema_path
        .rsplit('/')
        .next()
        .unwrap_or(schema_path)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_read_like_the_api_servers() {
        assert_eq!(
            field_path("/spec/allow/0/spiffeId"),
            "spec.allow[0].spiffeId"
        );
        assert_eq!(field_path(""), "");
        assert_eq!(
            keyword("/properties/spec/properties/cidr/maxLength"),
            "maxLength"
        );
    }

    #[test]
    fn dns_names() {
        assert!(is_dns_label("red") && is_dns_label("a-1"));
        assert!(!is_dns_label("-a") && !is_dns_label("Red") && !is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("red.example") && !is_dns_subdomain("red..example"));
    }
}
