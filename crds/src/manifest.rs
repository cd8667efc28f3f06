//! Finding manifest files, and splitting a YAML file into the Kubernetes objects it holds.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Adds `path` (a file) or the YAML files below it (a directory), sorted, to `files`.
/// `kustomization.yaml` files and names starting with `.` (editors' and tools' temporary
/// files) are not manifests and are left out, and so are directories below `path` that
/// hold a `clusters.yaml`: they describe several clusters (`wireway lab up`), each with
/// its own manifests, not more objects of this one.
pub fn yaml_files(path: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !path.is_dir() {
        files.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        let hidden = entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        let is_yaml = entry.extension().is_some_and(|e| e == "yaml" || e == "yml");
        let is_kustomization = entry.file_stem().is_some_and(|s| s == "kustomization");
        if hidden || entry.join("clusters.yaml").is_file() {
            continue;
        }
        if entry.is_dir() || (is_yaml && !is_kustomization) {
            yaml_files(&entry, files)?;
        }
    }
    Ok(())
}

/// One object of a multi-document YAML file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Line (from 1) of the document's first content (not a comment), for messages a
    /// person can follow.
    pub line: usize,
    /// The object.
    pub value: Value,
}

/// A document that is not valid YAML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document starting at line {line} is not valid YAML: {message}")]
pub struct DocumentError {
    /// Line (from 1) where the document starts.
    pub line: usize,
    /// The parser's account, with positions inside the document.
    pub message: String,
}

/// Splits `text` at `---` lines and parses each document; empty documents (only comments
/// or whitespace) are skipped. A broken document does not hide the others.
pub fn documents(text: &str) -> Vec<Result<Document, DocumentError>> {
    // (line of the first content line, text); content is anything but blanks and comments.
    let mut chunks: Vec<(Option<usize>, String)> = vec![(None, String::new())];
    for (index, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            chunks.push((None, String::new()));
        } else if let Some((first, chunk)) = chunks.last_mut() {
            let trimmed = line.trim_start();
            if first.is_none() && !trimmed.is_empty() && !trimmed.starts_with('#') {
                *first = Some(index + 1);
            }
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    chunks
        .into_iter()
        .filter_map(|(line, chunk)| {
            let line = line?;
            match serde_saphyr::from_str::<Option<Value>>(&chunk) {
                Ok(Some(Value::Null) | None) => None,
                Ok(Some(value)) => Some(Ok(Document { line, value })),
                Err(e) => Some(Err(DocumentError {
                    line,
                    message: e.to_string(),
                })),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_keeps_their_lines() {
        let text = "# comment only\n---\na: 1\n---\n# nothing\n--- \nb: [2\n---\n# c\n\nc: 3\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 3);
        assert_eq!(
            docs[0],
            Ok(Document {
                line: 3,
                value: serde_json::json!({"a": 1})
            })
        );
        assert!(matches!(&docs[1], Err(DocumentError { line: 7, .. })));
        assert_eq!(
            docs[2],
            Ok(Document {
                line: 11,
                value: serde_json::json!({"c": 3})
            })
        );
    }
}
