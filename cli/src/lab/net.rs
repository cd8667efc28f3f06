//! The lab's network: namespaces, the underlay bridge and the nodes' links, made with
//! iproute2 (`ip`), and processes started inside them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;

/// How the processes this process started have ended, by pid.
static ENDED: Mutex<BTreeMap<u32, ExitStatus>> = Mutex::new(BTreeMap::new());

/// Runs `ip` with `args`; an error carries what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("failed to run ip (install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether a network namespace of this name exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Makes a network namespace with its loopback up (unless it exists).
pub fn add_netns(name: &str) -> Result<(), String> {
    if !netns_exists(name) {
        ip(&["netns", "add", name])?;
    }
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Removes a network namespace and every process in it; a namespace that is gone is fine.
pub fn delete_netns(name: &str) -> Result<(), String> {
    if !netns_exists(name) {
        return Ok(());
    }
    for pid in netns_pids(name) {
        kill(pid);
    }
    ip(&["netns", "del", name])
}

/// The processes in a network namespace.
pub fn netns_pids(name: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
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

/// Starts `program` with `args` in the background, in its own process group (a Ctrl-C
/// of the lab command leaves it be), inside network namespace `netns` if given, with its
/// output appended to `log`. Returns its pid.
pub fn spawn(
    program: &Path,
    args: &[OsString],
    netns: Option<&str>,
    log: &Path,
) -> Result<u32, String> {
    use std::os::unix::process::CommandExt;
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("failed to open {}: {e}", log.display()))
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
        .stdin(Stdio::null())
        .stdout(open()?)
        .stderr(open()?)
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| format!("failed to start {}: {e}", program.display()))?;
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
        let pid = super::spawn(Path::new("true"), &[], None, log.path()).unwrap();
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
