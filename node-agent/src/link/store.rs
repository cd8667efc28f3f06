//! The last applied NodeState, on disk, so an agent restarted while the operator is away
//! re-applies it (changing nothing, dropping nothing) and says in its hello what it holds.

use std::path::PathBuf;

use wireway_proto::NodeState;

/// `<state-dir>/node-state.json`.
#[derive(Debug, Clone)]
pub struct StateFile(pub PathBuf);

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} the last applied state {}", path.display())]
pub struct StateFileError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl StateFile {
    /// The state last saved; `None` if there is none. A file that does not parse is an
    /// error (the agent then waits for the operator rather than guess).
    pub fn load(&self) -> Result<Option<NodeState>, StateFileError> {
        let error = |action, source| StateFileError {
            action,
            path: self.0.clone(),
            source,
        };
        match std::fs::read_to_string(&self.0) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                error(
                    "parse",
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(error("read", e)),
        }
    }

    /// Saves `state`, atomically: a crash leaves the old state or the new one.
    pub fn save(&self, state: &NodeState) -> Result<(), StateFileError> {
        let error = |action, source| StateFileError {
            action,
            path: self.0.clone(),
            source,
        };
        let text = serde_json::to_string(state).map_err(|e| {
            error(
                "encode",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        let temporary = self.0.with_extension("json.tmp");
        std::fs::write(&temporary, text).map_err(|e| error("write", e))?;
        std::fs::rename(&temporary, &self.0).map_err(|e| error("replace", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_a_state() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile(dir.path().join("node-state.json"));
        assert!(file.load().unwrap().is_none());
        let state = NodeState {
            node: "a".into(),
            version: 7,
            services: Vec::new(),
        };
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), Some(state));
        std::fs::write(&file.0, "{ not json").unwrap();
        let err = file.load().unwrap_err();
        assert!(
            err.to_string()
                .contains("failed to parse the last applied state"),
            "{err}"
        );
    }
}
