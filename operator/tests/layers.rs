//! The operator's modules depend on each other one way. Each top-level module of `src/`
//! sits in a layer, and may use only modules of the layers below its own:
//!
//! ```text
//! controller   Kubernetes glue: leader election, status writer, events, token reviews
//! serve        the node API and the status API (gRPC)
//! federation   the exchange with peer clusters' operators (gRPC, mutual TLS)
//! engine       the task that owns the planner, and the hub it publishes on
//! snapshot     what the status API returns
//! source       where the World comes from (API server, manifests)
//! plan         the pure planner
//! kind, metrics
//! ```
//!
//! So no module imports a module that imports it back, and what many modules need lives
//! low (the error chain and the clock live in the runtime crate, below them all). The
//! test reads the sources as text: every `crate::` path, and every `super::` path that
//! climbs out of its top-level module, is a use of that module. `testing` (fixtures,
//! compiled for tests only) stands outside the layers: it may use anything, and only tests
//! use it.

#![allow(clippy::unwrap_used)] // a test fails loudly by panicking

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// From the top: a module may use the modules of the layers after its own.
const LAYERS: &[&[&str]] = &[
    &["controller"],
    &["serve", "federation"],
    &["engine"],
    &["snapshot"],
    &["source"],
    &["plan"],
    &["kind", "metrics"],
];

/// Test support, outside the layers.
const OUTSIDE: &[&str] = &["testing"];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The `.rs` files below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text with comments, string and character literals blanked, lines kept.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i..].starts_with(&['/', '*']) {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i..].starts_with(&['*', '/']) {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if rest[0] == 'r' && rest.get(1).is_some_and(|&c| c == '#' || c == '"') {
            // A raw string: r"..." or r#"..."#, closed by a quote and as many hashes.
            let hashes = rest[1..].iter().take_while(|&&c| c == '#').count();
            if rest.get(1 + hashes) != Some(&'"') {
                out.push(rest[0]);
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            i += 2 + hashes;
            while i < chars.len() && !chars[i..].starts_with(&close) {
                out.push(blank(chars[i]));
                i += 1;
            }
            i += close.len();
        } else if rest[0] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                }
                i += 1;
            }
            i += 1;
        } else if rest[0] == '\'' && (rest.get(2) == Some(&'\'') || rest.get(1) == Some(&'\\')) {
            // A character literal ('{', '\n'), not a lifetime.
            let end = rest[2..]
                .iter()
                .position(|&c| c == '\'')
                .map_or(1, |p| p + 3);
            i += end;
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Path,
    Open,
    Close,
    Other(char),
}

/// The tokens of code, each with its line.
fn tokens(code: &str) -> Vec<(Token, usize)> {
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_alphanumeric() || c == '_' {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push((Token::Word(chars[start..i].iter().collect()), n + 1));
                continue;
            }
            let token = match c {
                ':' if chars.get(i + 1) == Some(&':') => {
                    i += 1;
                    Token::Path
                }
                '{' => Token::Open,
                '}' => Token::Close,
                c if c.is_whitespace() => {
                    i += 1;
                    continue;
                }
                c => Token::Other(c),
            };
            out.push((token, n + 1));
            i += 1;
        }
    }
    out
}

/// The first segments of the items of a `{...}` group starting at `tokens[at]`.
fn group_heads(tokens: &[(Token, usize)], at: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = true;
    for (token, _) in &tokens[at..] {
        match token {
            Token::Open => {
                depth += 1;
                expect_head = depth == 1;
            }
            Token::Close => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            Token::Other(',') if depth == 1 => expect_head = true,
            Token::Word(w) if expect_head && depth == 1 => {
                heads.push(w.clone());
                expect_head = false;
            }
            _ => {}
        }
    }
    heads
}

/// The top-level modules `file` (of module path `module`) uses, with the line of each use.
fn uses(module: &[String], text: &str) -> Vec<(String, usize)> {
    let tokens = tokens(&code_only(text));
    let mut used = Vec::new();
    // Inline modules (`mod tests { ... }`) open at a brace depth; `super` counts them.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    for (i, (token, line)) in tokens.iter().enumerate() {
        match token {
            Token::Open => {
                depth += 1;
                if i >= 2
                    && tokens[i - 2].0 == Token::Word("mod".into())
                    && let Token::Word(name) = &tokens[i - 1].0
                {
                    inline.push((name.clone(), depth));
                }
            }
            Token::Close => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth -= 1;
            }
            Token::Word(w) if w == "crate" || w == "super" => {
                let follows_path = i > 0 && tokens[i - 1].0 == Token::Path;
                if follows_path || tokens.get(i + 1).map(|t| &t.0) != Some(&Token::Path) {
                    continue;
                }
                let mut here: Vec<String> = module.to_vec();
                here.extend(inline.iter().map(|(name, _)| name.clone()));
                let mut j = i;
                if w == "crate" {
                    here.clear();
                    j += 2;
                } else {
                    while tokens.get(j).map(|t| &t.0) == Some(&Token::Word("super".into()))
                        && tokens.get(j + 1).map(|t| &t.0) == Some(&Token::Path)
                    {
                        here.pop();
                        j += 2;
                    }
                }
                let heads = match (here.first(), tokens.get(j).map(|t| &t.0)) {
                    (Some(top), _) => vec![top.clone()],
                    (None, Some(Token::Word(next))) => vec![next.clone()],
                    (None, Some(Token::Open)) => group_heads(&tokens, j),
                    (None, _) => Vec::new(),
                };
                used.extend(heads.into_iter().map(|h| (h, *line)));
            }
            _ => {}
        }
    }
    used
}

/// The module path of a file below `src`: `engine/hub.rs` is `engine::hub`.
fn module_of(relative: &Path) -> Vec<String> {
    let mut path: Vec<String> = relative
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    if let Some(file) = path.pop() {
        let stem = file.trim_end_matches(".rs");
        if stem != "mod" {
            path.push(stem.to_owned());
        }
    }
    path
}

#[test]
fn modules_use_only_the_layers_below_their_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        // The binary is a crate of its own; the library's root only declares modules.
        if relative == Path::new("main.rs") || relative == Path::new("lib.rs") {
            continue;
        }
        let module = module_of(relative);
        let from = module[0].clone();
        if OUTSIDE.contains(&from.as_str()) {
            continue;
        }
        let Some(from_layer) = layer(&from) else {
            wrong.push(format!(
                "{}: module {from} is in no layer",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (to, line) in uses(&module, &text) {
            if to == from || OUTSIDE.contains(&to.as_str()) {
                continue;
            }
            seen.insert((from.clone(), to.clone()));
            match layer(&to) {
                Some(to_layer) if to_layer > from_layer => {}
                Some(_) => wrong.push(format!(
                    "{}:{line}: {from} uses {to}, which is not below it",
                    relative.display()
                )),
                None => wrong.push(format!(
                    "{}:{line}: {from} uses {to}, which is in no layer",
                    relative.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies must point down the layers of tests/layers.rs:\n{}",
        wrong.join("\n")
    );
    // The scan sees the uses it must see (a scan that found nothing would pass too).
    for edge in [
        ("engine", "plan"),
        ("controller", "engine"),
        ("source", "plan"),
    ] {
        let edge = (edge.0.to_owned(), edge.1.to_owned());
        assert!(seen.contains(&edge), "{edge:?} not found: {seen:?}");
    }
}

#[test]
fn the_scan_reads_paths_the_way_rust_does() {
    let module = |path: &str| path.split("::").map(str::to_owned).collect::<Vec<_>>();
    let heads = |m: &str, text: &str| -> Vec<String> {
        uses(&module(m), text).into_iter().map(|(h, _)| h).collect()
    };
    assert_eq!(
        heads(
            "engine::hub",
            "use crate::{kind::Kind, plan::{self, Plan}};"
        ),
        ["kind", "plan"]
    );
    assert_eq!(heads("engine", "let x = crate::plan::plan(w);"), ["plan"]);
    assert_eq!(heads("engine", "use super::plan::World;"), ["plan"]);
    assert_eq!(heads("plan::status", "use super::ObjectKey;"), ["plan"]);
    assert_eq!(
        heads("kind", "mod tests { use super::Kind; }"),
        ["kind"],
        "super inside an inline module climbs to the file's module"
    );
    assert_eq!(
        heads(
            "plan",
            "// crate::engine\nlet s = \"crate::serve\"; let c = '{'; pub(crate) fn f() {}"
        ),
        Vec::<String>::new(),
        "comments, strings, characters and visibilities are not uses"
    );
    assert_eq!(
        heads(
            "plan",
            "let r = r#\"crate::engine \"# ; use crate::kind::Kind;"
        ),
        ["kind"]
    );
}
