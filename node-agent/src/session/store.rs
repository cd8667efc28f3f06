//! The last applied NodeState, on disk, so an agent restarted while the operator is away
//! re-applies it (changing nothing, dropping nothing) and says in its hello what it holds.

use std::path::PathBuf;

use wireway_proto::NodeState;
use wireway_runtime::errors::FileError;

/// `<state-dir>/node-state.json`.
#[derive(Debug, Clone)]
pub struct StateFile(pub PathBuf);

fn invalid(e: serde_json::Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e)
}

impl StateFile {
    /// The state last saved; `None` if there is none. A file that does not parse is an
    /// error (the agent then waits for the operator rather than guess).
    pub fn load(&self) -> Result<Option<NodeState>, FileError> {
        match wireway_runtime::files::read_private(&self.0) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| FileError::on("parse the last applied state", &self.0)(invalid(e))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FileError::on("read the last applied state", &self.0)(e)),
        }
    }

    /// Saves `state`, atomically and durably: a crash leaves the old state or the new
    /// one (see [`wireway_runtime::files::write_private`]).
    pub fn save(&self, state: &NodeState) -> Result<(), FileError> {
        let text = serde_json::to_string(state)
            .map_err(|e| FileError::on("encode the last applied state", &self.0)(invalid(e)))?;
        wireway_runtime::files::write_private(&self.0, text.as_bytes())
            .map_err(FileError::on("write the last applied state", &self.0))
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
            epoch: 3,
        };
        file.save(&state).unwrap();
        assert_eq!(file.load().unwrap(), Some(state));
        // Not a state, empty (a crash before any byte of a write that bypassed the
        // rename), or cut short: each an error naming the file, never a panic and never a
        // part of a state taken for the whole.
        let whole = std::fs::read_to_string(&file.0).unwrap();
        for text in ["{ not json", "", &whole[..whole.len() / 2]] {
            std::fs::write(&file.0, text).unwrap();
            let err = file.load().unwrap_err().to_string();
            assert!(
                err.contains("failed to parse the last applied state")
                    && err.contains("node-state.json"),
                "{text:?}: {err}"
            );
        }
    }
}
