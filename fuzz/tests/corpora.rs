//! Replays every committed corpus file through its fuzz target, on stable: what the
//! fuzzer once found interesting keeps being checked by `make test`, in seconds.

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in wireway_fuzz::TARGETS {
        let dir = corpora.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the corpus of {name} ({}) is missing: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "the corpus of {name} is empty");
        for file in files {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let replay = std::panic::catch_unwind(|| target(&data));
            assert!(replay.is_ok(), "{name} fails on {}", file.display());
        }
    }
}
