//! Errors the way people read them: a file that could not be used, named; an error with
//! its causes on one line.

use std::path::{Path, PathBuf};

/// A file (or directory) that could not be read, written or made.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} {}", path.display())]
pub struct FileError {
    /// What was being done: "read", "write", "create the directory of", ...
    pub action: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// A closure that turns an I/O error on `path` into a [`FileError`].
    pub fn on(action: &'static str, path: &Path) -> impl Fn(std::io::Error) -> Self + use<> {
        let path = path.to_owned();
        move |source| Self {
            action,
            path: path.clone(),
            source,
        }
    }
}

/// The text of an error and its causes, one after another.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether this process runs as root (the lab and the kernel tests need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_name_every_cause() {
        let e = FileError::on("read", Path::new("/x/y"))(std::io::Error::other("gone"));
        assert_eq!(chain(&e), "failed to read /x/y: gone");
    }
}
