//! Replays every committed corpus file through its fuzz target, on stable: what the
//! fuzzer once found interesting keeps being checked by `make test`, in seconds.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use serde_json::Value;

/// Runs every file of the corpus of `name` through `target`, naming the file it fails on.
fn replay(name: &str, mut target: impl FnMut(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus of {name} ({}) is missing: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the corpus of {name} is empty");
    for file in files {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let replay = std::panic::catch_unwind(AssertUnwindSafe(|| target(&data)));
        assert!(replay.is_ok(), "{name} fails on {}", file.display());
    }
}

/// Some input of the federation corpus gets past the exchange and the planner's checks to
/// a WireGuard peer on this cluster's nodes, so the fuzzer starts where a peer's words
/// become the data plane.
#[test]
fn some_federation_input_gives_this_clusters_nodes_a_peer() {
    let mut peers = 0;
    replay("federation", |data| {
        peers += wireway_fuzz::federation_peers(data)
    });
    assert!(
        peers > 0,
        "no input of fuzz/corpus/federation installs a peer"
    );
}

#[test]
fn every_corpus_file_passes_its_target() {
    // The manifest corpus is replayed by the test below, which also counts what it breaks.
    for (name, target) in wireway_fuzz::TARGETS {
        if name != "manifest" {
            replay(name, target);
        }
    }
}

/// Every CEL rule of the CRDs is broken by some input of the manifest corpus, so the
/// fuzzer starts beside each rule (byte mutations alone never reached the PeerCluster
/// rules or a NetworkService's DNS zone). A rule added without such an input fails here.
#[test]
fn every_manifest_passes_its_target_and_every_cel_rule_is_broken_by_one() {
    let mut broken = BTreeSet::new();
    replay("manifest", |data| {
        broken.extend(wireway_fuzz::manifest_rules(data))
    });
    let mut rules = BTreeSet::new();
    for file in wireway_crds::crd_files() {
        cel_rules(&serde_json::to_value(&file.crd).unwrap(), &mut rules);
    }
    assert!(
        rules.len() > 10,
        "the CRDs' CEL rules were not found: {rules:?}"
    );
    let missing: Vec<_> = rules.difference(&broken).collect();
    assert!(
        missing.is_empty(),
        "no input of fuzz/corpus/manifest breaks {missing:#?}: add one (the file of \
         tests/invalid/ that shows the rule, named by its SHA-1)"
    );
}

/// The CEL rules (`x-kubernetes-validations`) anywhere in `schema`.
fn cel_rules(schema: &Value, rules: &mut BTreeSet<String>) {
    match schema {
        Value::Object(fields) => {
            for (key, value) in fields {
                if key == "x-kubernetes-validations" {
                    let items = value.as_array().into_iter().flatten();
                    rules.extend(items.filter_map(|v| v["rule"].as_str().map(str::to_owned)));
                } else {
                    cel_rules(value, rules);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| cel_rules(v, rules)),
        _ => {}
    }
}

/// Some input of the tun_writes corpus is coalesced, so the fuzzer starts where a peer's
/// packets are joined into one write.
#[test]
fn some_tun_writes_input_is_coalesced() {
    let mut coalesced = 0;
    replay("tun_writes", |data| {
        coalesced += wireway_fuzz::tun_writes_coalesced(data)
    });
    assert!(
        coalesced > 0,
        "no input of fuzz/corpus/tun_writes is coalesced"
    );
}
