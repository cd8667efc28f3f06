//! Processes the lab starts: spawned in the background (inside a network namespace if
//! asked), reaped when they end, told apart from strangers that reuse their pid, killed.
//! Knows nothing of the lab: what a process is for is the caller's business.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;

use wireway_runtime::errors::FileError;

/// How the processes this process started have ended, by pid.
static ENDED: Mutex<BTreeMap<u32, ExitStatus>> = Mutex::new(BTreeMap::new());

/// Why a process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Its log could not be opened.
    #[error(transparent)]
    Log(FileError),
    /// The program could not be executed.
    #[error("failed to execute {}", program.display())]
    Execute {
        /// The program.
        program: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Sends SIGKILL to `pid` (ignoring a process that is gone).
pub fn kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` is alive (not a zombie) and its command line mentions `marker`, so a
/// reused pid of someone else's process is never taken for ours. A command line that is
/// still empty belongs to a process in the middle of its exec.
pub fn running(pid: u32, marker: &str) -> bool {
    let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    });
    alive
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.is_empty() || String::from_utf8_lossy(&c).contains(marker))
}

/// Starts `program` with `args` and the environment variables `env` in the background,
/// in its own process group (a Ctrl-C of the lab command leaves it be), inside network
/// namespace `netns` if given, with its output appended to `log`. Returns its pid.
pub fn spawn(
    program: &Path,
    args: &[OsString],
    netns: Option<&str>,
    env: &[(&str, &Path)],
    log: &Path,
) -> Result<u32, SpawnError> {
    use std::os::unix::process::CommandExt;
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| SpawnError::Log(FileError::on("open", log)(e)))
    };
    let mut command = match netns {
        Some(ns) => {
            // `ip netns exec` becomes the program: the pid is the program's.
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    };
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .process_group(0);
    let mut child = command.spawn().map_err(|source| SpawnError::Execute {
        program: program.to_owned(),
        source,
    })?;
    let pid = child.id();
    // Reaped when it exits, so a long-running supervisor leaves no zombie; when this
    // process exits first, init adopts the child as usual.
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            ENDED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(pid, status);
        }
    });
    Ok(pid)
}

/// How a process this process started has ended ("signal: 9 (SIGKILL)"), if it has.
pub fn ended(pid: u32) -> Option<ExitStatus> {
    ENDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&pid)
        .copied()
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    #[test]
    fn a_spawned_program_that_exits_is_reaped() {
        let log = tempfile::NamedTempFile::new().unwrap();
        let pid = super::spawn(Path::new("true"), &[], None, &[], log.path()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Reaped, its /proc entry goes (a zombie's would stay) and how it ended is known.
        while super::ended(pid).is_none() {
            assert!(Instant::now() < deadline, "{pid} was not reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(super::ended(pid).unwrap().success());
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
