//! `wireway validate`: local validation of manifests, file by file and object by object.
//!
//! Given the manifests as last synced too (`--old DIR_OR_FILE`, or `--old-rev REV` to read
//! the same paths at a git revision), an object present in both is checked as the update
//! the API server will see, with the transition rules (`oldSelf`): a NetworkService's
//! `cidr` changed in a pull request fails there, not at sync time.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde_json::Value;
use wireway_crds::manifest::{documents, yaml_files};
use wireway_crds::validation::{Checked, SchemaError, Validator};
use wireway_runtime::errors::{FileError, chain};

/// `wireway validate`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// YAML files, or directories searched for *.yaml and *.yml files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// The manifests as last synced (a file or a directory; may be repeated). An object
    /// found there too (same apiVersion, kind, namespace and name) is checked as an
    /// update of it: the transition rules apply (an immutable cidr, a cluster slice that
    /// cannot be added later).
    #[arg(long, value_name = "DIR_OR_FILE", conflicts_with = "old_rev")]
    pub old: Vec<PathBuf>,
    /// As --old, with the manifests at a git revision of the repository the PATHS are in
    /// (the same paths, read with git; nothing is checked out), such as `origin/main` in a
    /// pull request's CI job.
    #[arg(long, value_name = "REV")]
    pub old_rev: Option<String>,
}

/// Why nothing could be validated (an invalid object is a finding, not an error).
#[derive(Debug, thiserror::Error)]
enum ValidateError {
    /// The CRDs' schemas did not compile.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A path given could not be listed.
    #[error(transparent)]
    List(FileError),
    /// A file of the old manifests could not be read.
    #[error(transparent)]
    ReadOld(FileError),
    /// git could not be run, or refused.
    #[error("failed to {action} at {rev} with git: {message}")]
    Git {
        action: String,
        rev: String,
        message: String,
    },
}

/// Tally of a run.
#[derive(Debug, Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    skipped: usize,
    /// Of the valid and invalid: checked as updates of an old object.
    updates: usize,
}

/// An object's identity across revisions: what the API server would see as the same
/// object. The namespace is as written (a manifest without one goes wherever it is synced
/// to, so it matches only another without one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl Key {
    /// `None` for an object without a name (it cannot be an update of anything).
    fn of(object: &Value) -> Option<Self> {
        let text = |path: &str| object.pointer(path).and_then(Value::as_str);
        Some(Self {
            api_version: text("/apiVersion")?.to_owned(),
            kind: text("/kind")?.to_owned(),
            namespace: text("/metadata/namespace").map(str::to_owned),
            name: text("/metadata/name")?.to_owned(),
        })
    }
}

/// The objects as last synced, by identity, each with where it was found
/// (`origin/main:config/red.yaml:7`). The first of two with one identity counts.
#[derive(Debug, Default)]
struct OldObjects(HashMap<Key, (String, Value)>);

impl OldObjects {
    /// Adds the objects of one file's text; documents that do not parse, and objects
    /// without a name, have no identity and are left out.
    fn add(&mut self, source: &str, text: &str) {
        for doc in documents(text).into_iter().flatten() {
            if let Some(key) = Key::of(&doc.value) {
                self.0
                    .entry(key)
                    .or_insert_with(|| (format!("{source}:{}", doc.line), doc.value));
            }
        }
    }

    fn get(&self, object: &Value) -> Option<&(String, Value)> {
        self.0.get(&Key::of(object)?)
    }
}

/// What a run checks: the validator, the YAML files `paths` name, and the old objects.
struct Prepared {
    validator: Validator,
    files: Vec<PathBuf>,
    old: Option<OldObjects>,
}

fn prepare(args: &ValidateArgs) -> Result<Prepared, ValidateError> {
    let validator = Validator::new()?;
    let files = list(&args.paths)?;
    let old = if let Some(rev) = &args.old_rev {
        Some(old_at_revision(rev, &args.paths)?)
    } else if !args.old.is_empty() {
        let mut old = OldObjects::default();
        for file in list(&args.old)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ValidateError::ReadOld(FileError::on("read", &file)(e)))?;
            old.add(&file.display().to_string(), &text);
        }
        Some(old)
    } else {
        None
    };
    Ok(Prepared {
        validator,
        files,
        old,
    })
}

fn list(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ValidateError> {
    let mut files = Vec::new();
    for path in paths {
        yaml_files(path, &mut files)
            .map_err(|e| ValidateError::List(FileError::on("read", path)(e)))?;
    }
    Ok(files)
}

/// The objects of the manifest files under `paths` as they were at `rev`, read from git
/// (`git ls-tree`, `git cat-file`), without touching the work tree. The files chosen are
/// those [`yaml_files`] would choose: `*.yaml` and `*.yml`, not `kustomization.yaml`,
/// nothing hidden. A path that did not exist at `rev` holds no old objects.
fn old_at_revision(rev: &str, paths: &[PathBuf]) -> Result<OldObjects, ValidateError> {
    if rev.starts_with('-') {
        // Not a revision, and git would read it as an option.
        return Err(ValidateError::Git {
            action: "read the manifests".into(),
            rev: rev.into(),
            message: "not a revision".into(),
        });
    }
    let listing = git(
        rev,
        "list the manifests",
        Command::new("git")
            .args([
                "ls-tree",
                "-r",
                "-z",
                "--full-name",
                "--name-only",
                rev,
                "--",
            ])
            .args(paths),
    )?;
    let mut old = OldObjects::default();
    for file in listing.split('\0').filter(|f| is_manifest(f)) {
        // `REV:path` is from the top of the repository, as --full-name lists it.
        let object = format!("{rev}:{file}");
        let text = git(
            rev,
            &format!("read {file}"),
            Command::new("git").args(["cat-file", "blob", &object]),
        )?;
        old.add(&object, &text);
    }
    Ok(old)
}

fn is_manifest(path: &str) -> bool {
    let path = Path::new(path);
    let hidden = path
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
    let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let kustomization = path.file_stem().is_some_and(|s| s == "kustomization");
    !path.as_os_str().is_empty() && yaml && !kustomization && !hidden
}

fn git(rev: &str, action: &str, command: &mut Command) -> Result<String, ValidateError> {
    let error = |message: String| ValidateError::Git {
        action: action.to_owned(),
        rev: rev.to_owned(),
        message,
    };
    let out = command.output().map_err(|e| error(e.to_string()))?;
    if !out.status.success() {
        return Err(error(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| error(e.to_string()))
}

/// `wireway validate [--old DIR_OR_FILE | --old-rev REV] PATH...`: every object of every
/// file (as an update where an old object has its identity), then a tally; exits 1 if
/// any object is invalid.
pub fn run(args: &ValidateArgs) -> ExitCode {
    let prepared = match prepare(args) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let mut tally = Tally::default();
    let mut out = std::io::stdout().lock();
    for file in &prepared.files {
        // A write to a closed pipe (`| head`) ends the listing; the exit code still counts.
        let _ = check_file(&prepared, file, &mut tally, &mut out);
    }
    let _ = write!(
        out,
        "{} valid, {} invalid, {} skipped (not wireway.dev) in {} files",
        tally.valid,
        tally.invalid,
        tally.skipped,
        prepared.files.len()
    );
    let _ = match &prepared.old {
        Some(_) => writeln!(out, "; {} checked as updates", tally.updates),
        None => writeln!(out),
    };
    if tally.invalid > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check_file(
    prepared: &Prepared,
    file: &Path,
    tally: &mut Tally,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) => {
            tally.invalid += 1;
            return writeln!(out, "{}: failed to read: {e}", file.display());
        }
    };
    for doc in documents(&text) {
        let doc = match doc {
            Ok(doc) => doc,
            Err(e) => {
                tally.invalid += 1;
                writeln!(out, "{}:{}: invalid YAML", file.display(), e.line)?;
                writeln!(out, "    {}", e.message)?;
                continue;
            }
        };
        let at = format!("{}:{}", file.display(), doc.line);
        let what = describe(&doc.value);
        let old = prepared.old.as_ref().and_then(|old| old.get(&doc.value));
        let update = old
            .map(|(source, _)| format!(" (update of {source})"))
            .unwrap_or_default();
        let old = old.map(|(_, object)| object);
        match prepared.validator.validate(&doc.value, old) {
            Ok(Checked::Valid) => {
                tally.valid += 1;
                tally.updates += usize::from(old.is_some());
                writeln!(out, "{at}: {what}{update}: valid")?;
            }
            Ok(Checked::Foreign) => {
                tally.skipped += 1;
                writeln!(out, "{at}: {what}: skipped (not wireway.dev)")?;
            }
            Err(violations) => {
                tally.invalid += 1;
                tally.updates += usize::from(old.is_some());
                writeln!(out, "{at}: {what}{update}: invalid")?;
                for v in violations {
                    writeln!(out, "    {v}")?;
                }
            }
        }
    }
    Ok(())
}

/// `NetworkService red/red`, as a person would name the object.
fn describe(object: &Value) -> String {
    let field = |path: &str| object.pointer(path).and_then(Value::as_str).unwrap_or("?");
    let name = match object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{ns}/{}", field("/metadata/name")),
        None => field("/metadata/name").to_owned(),
    };
    format!("{} {name}", field("/kind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_at_a_revision_are_chosen_as_in_a_directory() {
        assert!(is_manifest("config/red.yaml") && is_manifest("a/b.yml"));
        assert!(!is_manifest("config/kustomization.yaml"));
        assert!(!is_manifest("config/.red.yaml.swp") && !is_manifest(".github/ci.yaml"));
        assert!(!is_manifest("config/README.md") && !is_manifest(""));
    }

    #[test]
    fn old_objects_match_by_api_version_kind_namespace_and_name() {
        let mut old = OldObjects::default();
        old.add(
            "old.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: red}\n---\n\
             apiVersion: wireway.dev/v1alpha1\nkind: NetworkService\nmetadata: {name: red, namespace: red}\n",
        );
        let object = |namespace: &str| {
            serde_json::json!({
                "apiVersion": "wireway.dev/v1alpha1", "kind": "NetworkService",
                "metadata": {"name": "red", "namespace": namespace},
            })
        };
        assert_eq!(
            old.get(&object("red")).map(|(at, _)| at.as_str()),
            Some("old.yaml:5")
        );
        assert!(old.get(&object("green")).is_none());
        assert!(
            old.get(&serde_json::json!({"kind": "NetworkService"}))
                .is_none()
        );
    }
}
