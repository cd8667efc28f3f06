//! Writes the CustomResourceDefinitions of the Wireway API into `crds/`.
//!
//! Run through `make crds`; CI fails (with that command in its message) when the files
//! checked in differ from what the types generate.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in wireway_crds::crd_files() {
        let path = dir.join(file.file_name);
        let written = file
            .render()
            .map_err(|e| format!("failed to render {}: {e}", file.file_name))
            .and_then(|text| {
                std::fs::write(&path, text)
                    .map_err(|e| format!("failed to write {}: {e}", path.display()))
            });
        match written {
            Ok(()) => println!("wrote {}", path.display()),
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
