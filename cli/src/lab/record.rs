//! What a lab made, on disk (`<dir>/lab.json`), written before each thing is made: after
//! a crash, `wireway lab down` still finds everything, and it removes only what is here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A node of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabNode {
    /// Its network namespace.
    pub netns: String,
    /// Its underlay address.
    pub address: String,
    /// Its port on the underlay bridge.
    pub port: String,
}

/// A pod of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabPod {
    /// Its network namespace.
    pub netns: String,
    /// Its UID (the name of its link in the lab's netns directory).
    pub uid: String,
    /// Its node.
    pub node: String,
}

/// The binaries a lab runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binaries {
    /// `wireway-operator`.
    pub operator: PathBuf,
    /// `wireway-agent`.
    pub agent: PathBuf,
    /// `wireway` (for the supervisor).
    pub wireway: PathBuf,
}

/// Everything a lab made, and how it was asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The lab's name (network namespaces start with `ww<name>-`).
    pub name: String,
    /// The user's manifests (absolute paths).
    pub manifests: Vec<PathBuf>,
    /// The SPIFFE trust domain.
    pub trust_domain: String,
    /// How many nodes of its own the lab makes.
    pub own_nodes: usize,
    /// The binaries.
    pub binaries: Binaries,
    /// Every network namespace made (or about to be).
    pub namespaces: BTreeSet<String>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, LabNode>,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, LabPod>,
    /// Processes started, by role (`operator`, `supervisor`, `agent/<node>`).
    pub processes: BTreeMap<String, u32>,
    /// Underlay addresses handed out so far.
    pub addresses: u32,
}

/// The record file of the lab in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("lab.json")
}

impl Record {
    /// Reads the record of the lab in `dir`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let file = path(dir);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            format!(
                "no lab in {} ({e}); start one with `wireway lab up DIR`",
                dir.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("failed to parse {}: {e}", file.display()))
    }

    /// Writes the record, atomically.
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let file = path(dir);
        let temporary = file.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &file))
            .map_err(|e| format!("failed to write {}: {e}", file.display()))
    }

    /// The name of one of the lab's network namespaces.
    pub fn netns(&self, what: &str) -> String {
        format!("ww{}-{what}", self.name)
    }
}
