//! `docs/architecture.md`'s module map matches the tree: every module of the operator, the
//! agent and the CLI is on it, and everything it names exists.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const CRATES: [(&str, &str); 3] = [
    ("operator", "### `operator/src/`"),
    ("node-agent", "### `node-agent/src/`"),
    ("cli", "### `cli/src/`"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The module files under `dir`, relative to it: `engine/agents.rs`, `kind.rs`. Test
/// modules and the crate roots are not modules of the map.
fn modules(dir: &Path, prefix: &str, found: &mut BTreeSet<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_dir() {
            // A `tests/` beside a `tests.rs` holds more of its tests.
            if name != "tests" {
                modules(&path, &format!("{prefix}{name}/"), found);
            }
        } else if name.ends_with(".rs")
            && name != "tests.rs"
            && !(prefix.is_empty() && (name == "lib.rs" || name == "main.rs"))
        {
            found.insert(format!("{prefix}{name}"));
        }
    }
}

/// The section of the map for one crate: from its heading to the next heading.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(heading)
        .unwrap_or_else(|| panic!("docs/architecture.md has no {heading:?}"));
    let rest = &doc[start + heading.len()..];
    let end = rest.find("\n#").unwrap_or(rest.len());
    &rest[..end]
}

/// The module paths a section names in its first column (`a.rs`, `dir/`, `dir/a.rs`).
fn named(section: &str) -> BTreeSet<String> {
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .filter_map(|l| l.split('|').nth(1))
        .flat_map(|cell| cell.split('`').skip(1).step_by(2).map(str::to_owned))
        .collect()
}

#[test]
fn every_module_is_on_the_map_and_the_map_names_only_modules() {
    let doc = std::fs::read_to_string(repo().join("docs/architecture.md"))
        .unwrap_or_else(|e| panic!("read docs/architecture.md: {e}"));
    let mut problems = Vec::new();
    for (krate, heading) in CRATES {
        let src = repo().join(krate).join("src");
        let mut tree = BTreeSet::new();
        modules(&src, "", &mut tree);
        let section = section(&doc, heading);
        let named = named(section);
        for module in &tree {
            let dir = module.rsplit_once('/').map(|(d, _)| format!("{d}/"));
            let on_map = named.contains(module)
                || dir.as_ref().is_some_and(|d| {
                    let file = &module[d.len()..];
                    named.contains(d) && section.contains(&format!("`{file}`"))
                });
            if !on_map {
                problems.push(format!("{krate}/src/{module} is not on the map"));
            }
        }
        for path in &named {
            let exists = if let Some(dir) = path.strip_suffix('/') {
                src.join(dir).is_dir()
            } else {
                tree.contains(path) || ["lib.rs", "main.rs"].contains(&path.as_str())
            };
            if !exists {
                problems.push(format!(
                    "the map names {krate}/src/{path}, which is not there"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/architecture.md's module map is out of date:\n{}",
        problems.join("\n")
    );
}

/// The tests the docs cite as `path.rs::name`, each with the path it is in; a cell's
/// further `::name`s are in the same file.
fn cited_tests(doc: &str) -> Vec<(String, String)> {
    let mut cited = Vec::new();
    let mut file: Option<String> = None;
    for (i, span) in doc.split('`').enumerate() {
        if i % 2 == 0 {
            // Text between spans: a line break or a cell border ends a list of names.
            if span.contains('\n') || span.contains('|') {
                file = None;
            }
            continue;
        }
        if let Some((path, name)) = span.split_once(".rs::") {
            file = Some(format!("{path}.rs"));
            cited.push((format!("{path}.rs"), name.to_owned()));
        } else if let (Some(name), Some(path)) = (span.strip_prefix("::"), &file) {
            cited.push((path.clone(), name.to_owned()));
        }
    }
    cited
}

#[test]
fn every_test_the_docs_cite_exists() {
    let mut problems = Vec::new();
    let mut count = 0;
    for entry in std::fs::read_dir(repo().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let doc = std::fs::read_to_string(&path).unwrap();
        for (file, name) in cited_tests(&doc) {
            count += 1;
            let source = std::fs::read_to_string(repo().join(&file)).unwrap_or_default();
            let defined = source.match_indices(&format!("fn {name}")).any(|(at, m)| {
                !source[at + m.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if !defined {
                problems.push(format!("{} cites {file}::{name}", path.display()));
            }
        }
    }
    assert!(
        count > 20,
        "only {count} citations found: is the parser right?"
    );
    assert!(
        problems.is_empty(),
        "tests the docs cite that do not exist:\n{}",
        problems.join("\n")
    );
}
