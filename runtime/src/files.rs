//! The files the binaries keep (the agent's private key and last applied state, the
//! operator's store): written whole or not at all, 0600, never through a symbolic link.
//!
//! Guarantees of [`write_private`] (and of [`append_private`], for a file that grows by
//! records a reader can tell whole from cut short):
//! * a crash leaves the old content or the new one: a temporary file in the same
//!   directory is written and flushed to disk (`fsync`), renamed over the file, and the
//!   directory flushed;
//! * the temporary file is created new (`O_CREAT | O_EXCL`, which never follows a link)
//!   with mode 0600 from the start, and the rename replaces a link at the path rather than
//!   writing where it points.
//!
//! A file that is there but cannot be used (empty, cut short, not what it should hold) is
//! moved aside with [`set_aside`], never deleted: the caller says what it starts from.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

/// Reads a file this program wrote, refusing a symbolic link at its path (`ELOOP`).
pub fn read_private(path: &Path) -> std::io::Result<String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(path)?;
    std::io::read_to_string(file)
}

/// Replaces the file at `path` with `bytes`, atomically and durably, 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_file(path, bytes, 0o600)
}

/// Replaces the file at `path` with `bytes`, atomically and durably, with permissions
/// `mode` (a certificate others may read: 0644), as [`write_private`] does.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = directory(path);
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let temporary = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Left over from a crash (or planted): removed, never followed.
    match std::fs::remove_file(&temporary) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Opens the file at `path` for appending, creating it 0600 if missing (never through a
/// symbolic link); a file it creates is made durable in its directory (`fsync` of the
/// directory) before it returns. What is appended is durable once `sync_data` returns.
pub fn append_private(path: &Path) -> std::io::Result<std::fs::File> {
    let open = |create_new: bool| {
        std::fs::OpenOptions::new()
            .append(true)
            .create_new(create_new)
            .mode(0o600)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
            .open(path)
    };
    match open(true) {
        Ok(file) => {
            std::fs::File::open(directory(path))?.sync_all()?;
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => open(false),
        Err(e) => Err(e),
    }
}

/// The directory a file is in (`.` for a bare name).
fn directory(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Moves a file that cannot be used out of the way, to `<name>.corrupt-<unix ms>` beside
/// it, where a person can look at it; returns where it is now.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let to = path.with_file_name(format!(
        "{}.corrupt-{}",
        name.to_string_lossy(),
        crate::clock::unix_ms()
    ));
    std::fs::rename(path, &to)?;
    Ok(to)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn appends_go_to_the_end_of_a_private_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.log");
        append_private(&path).unwrap().write_all(b"one\n").unwrap();
        append_private(&path).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(read_private(&path).unwrap(), "one\ntwo\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(append_private(&link).is_err(), "a link is not followed");
    }

    #[test]
    fn a_file_is_replaced_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("private.key");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(read_private(&path).unwrap(), "two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
    }

    #[test]
    fn a_symbolic_link_planted_at_the_path_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "someone else's").unwrap();
        let path = dir.path().join("private.key");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(read_private(&path).is_err(), "a link is not read through");
        // And at the temporary name.
        let temporary = dir
            .path()
            .join(format!(".private.key.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&target, &temporary).unwrap();
        write_private(&path, b"key").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "someone else's");
        assert_eq!(read_private(&path).unwrap(), "key");
    }

    #[test]
    fn a_file_set_aside_keeps_its_content_beside_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{ cut sh").unwrap();
        let to = set_aside(&path).unwrap();
        assert!(!path.exists());
        assert_eq!(to.parent(), Some(dir.path()));
        let name = to.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("state.json.corrupt-"), "{name}");
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "{ cut sh");
    }
}
