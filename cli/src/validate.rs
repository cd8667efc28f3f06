//! `wireway validate`: local validation of manifests, file by file and object by object.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde_json::Value;
use wireway_crds::manifest::{documents, yaml_files};
use wireway_crds::validation::{Checked, SchemaError, Validator};
use wireway_runtime::errors::{FileError, chain};

/// Why nothing could be validated (an invalid object is a finding, not an error).
#[derive(Debug, thiserror::Error)]
enum ValidateError {
    /// The CRDs' schemas did not compile.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A path given could not be listed.
    #[error(transparent)]
    List(FileError),
}

/// Tally of a run.
#[derive(Debug, Default)]
struct Tally {
    valid: usize,
    invalid: usize,
    skipped: usize,
}

/// The validator, and the YAML files `paths` name.
fn prepare(paths: &[PathBuf]) -> Result<(Validator, Vec<PathBuf>), ValidateError> {
    let validator = Validator::new()?;
    let mut files = Vec::new();
    for path in paths {
        yaml_files(path, &mut files)
            .map_err(|e| ValidateError::List(FileError::on("read", path)(e)))?;
    }
    Ok((validator, files))
}

/// `wireway validate PATH...`: every object of every file, then a tally; exits 1 if any
/// object is invalid.
pub fn run(paths: &[PathBuf]) -> ExitCode {
    let (validator, files) = match prepare(paths) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    let mut tally = Tally::default();
    let mut out = std::io::stdout().lock();
    for file in &files {
        // A write to a closed pipe (`| head`) ends the listing; the exit code still counts.
        let _ = check_file(&validator, file, &mut tally, &mut out);
    }
    let _ = writeln!(
        out,
        "{} valid, {} invalid, {} skipped (not wireway.dev) in {} files",
        tally.valid,
        tally.invalid,
        tally.skipped,
        files.len()
    );
    if tally.invalid > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn check_file(
    validator: &Validator,
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
        match validator.validate(&doc.value, None) {
            Ok(Checked::Valid) => {
                tally.valid += 1;
                writeln!(out, "{at}: {what}: valid")?;
            }
            Ok(Checked::Foreign) => {
                tally.skipped += 1;
                writeln!(out, "{at}: {what}: skipped (not wireway.dev)")?;
            }
            Err(violations) => {
                tally.invalid += 1;
                writeln!(out, "{at}: {what}: invalid")?;
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
