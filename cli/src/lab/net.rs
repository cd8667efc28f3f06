//! The host side of the lab's network: iproute2 (`ip`) commands and network namespaces.
//! Knows nothing of the lab: which namespaces and links it needs is the caller's business.

use std::path::Path;
use std::process::Command;

use super::process;

/// Why an `ip` command failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `ip` could not be run at all.
    #[error("failed to run ip (install iproute2)")]
    RunIp(#[source] std::io::Error),
    /// `ip` ran and refused.
    #[error("failed to run `ip {command}`: {said}")]
    Ip {
        /// Its arguments.
        command: String,
        /// What it said on stderr.
        said: String,
    },
}

/// Runs `ip` with `args`; an error carries what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(NetError::RunIp)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Ip {
            command: args.join(" "),
            said: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Whether a network namespace of this name exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Makes a network namespace with its loopback up (unless it exists).
pub fn add_netns(name: &str) -> Result<(), NetError> {
    if !netns_exists(name) {
        ip(&["netns", "add", name])?;
    }
    ip(&["-n", name, "link", "set", "lo", "up"])
}

/// Removes a network namespace and every process in it; a namespace that is gone is fine.
pub fn delete_netns(name: &str) -> Result<(), NetError> {
    if !netns_exists(name) {
        return Ok(());
    }
    for pid in netns_pids(name) {
        process::kill(pid);
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
