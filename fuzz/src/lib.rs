//! Hostile bytes against the parsers that read what others write: manifests (anyone who
//! can commit to a GitOps repository), SPIFFE IDs (tenants' Endpoints and Admissions),
//! NodeStates (the operator, or whoever impersonates it), what a userspace WireGuard
//! device answers, and the cgroup names the agent reads to find pods.
//!
//! Each function here is one fuzz target: it must return for every input, never panic,
//! and it checks what must hold for any input, not only that nothing crashed. The
//! targets in `fuzz_targets/` call these under libFuzzer (`cargo fuzz run TARGET
//! --features libfuzzer`); `tests/corpora.rs` replays every committed corpus file through
//! them on stable, so `make test` re-checks everything the fuzzer once found interesting.

use std::sync::OnceLock;

use prost::Message;
use wireway_agent::converge::{self, NetnsId, ResolvedNetns};
use wireway_agent::dataplane::{pods, wireguard::userspace};
use wireway_crds::validation::Validator;
use wireway_crds::{SpiffeId, manifest};
use wireway_proto::{NetnsLocator, NodeState};

/// A fuzz target: any bytes in, a panic if what must hold does not.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz_targets/` and `corpus/` name them.
pub const TARGETS: [(&str, Target); 5] = [
    ("manifest", manifest),
    ("spiffe_id", spiffe_id),
    ("node_state", node_state),
    ("uapi", uapi),
    ("cgroup_name", cgroup_name),
];

/// A manifest file: split into documents and each validated as the API server would.
/// Anything goes in; out come documents, problems and verdicts, never a panic.
pub fn manifest(data: &[u8]) {
    static VALIDATOR: OnceLock<Option<Validator>> = OnceLock::new();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(validator) = VALIDATOR.get_or_init(|| Validator::new().ok()) else {
        panic!("the CRDs' schemas do not compile");
    };
    let documents: Vec<_> = manifest::documents(text).into_iter().flatten().collect();
    for (i, document) in documents.iter().enumerate() {
        let _ = validator.validate(&document.value, None);
        // Every object also as an update of the one before it: the transition rules
        // (oldSelf) see two unrelated objects.
        if let Some(previous) = i.checked_sub(1).map(|p| &documents[p].value) {
            let _ = validator.validate(&document.value, Some(previous));
        }
    }
}

/// A SPIFFE ID: what parses prints back to itself and parses again to the same ID, and a
/// parsed ID lies below itself.
pub fn spiffe_id(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(id) = text.parse::<SpiffeId>() else {
        return;
    };
    let again: SpiffeId = match id.as_str().parse() {
        Ok(again) => again,
        Err(e) => panic!("{id} does not parse again: {e}"),
    };
    assert_eq!(id, again, "{text:?} does not round-trip");
    assert!(id.has_prefix(&id), "{id} is not below itself");
}

/// A NodeState as the agent receives it: decoded, turned into the data plane it asks
/// for (every namespace found), and converged. Whatever the bytes, converging the
/// desired plane onto itself must ask for nothing (the agent must never loop on its
/// own state), and from nothing it must ask only for what the state holds.
pub fn node_state(data: &[u8]) {
    let Ok(state) = NodeState::decode(data) else {
        return;
    };
    let found = |locator: &NetnsLocator| -> Result<ResolvedNetns, String> {
        let key = format!("{locator:?}");
        Ok(ResolvedNetns {
            path: format!("/run/netns/{}", key.len()),
            id: NetnsId {
                dev: 4,
                ino: key.len() as u64,
            },
        })
    };
    let (desired, _problems) = converge::desired(&state, found);
    let in_sync = converge::converge(&desired, &desired);
    assert!(in_sync.is_empty(), "a state in sync asks for {in_sync:?}");
    let _from_nothing = converge::converge(&desired, &converge::Plane::default());
}

/// What a userspace WireGuard device answers to `get=1`: every peer parsed has its
/// statistics, and every peer key is a WireGuard key (32 bytes, as base64).
pub fn uapi(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let state = userspace::parse_get(text);
    assert!(
        state.peers.keys().eq(state.stats.keys()),
        "peers and statistics disagree"
    );
    for key in state.peers.keys() {
        assert_eq!(key.len(), 44, "{key:?} is no WireGuard key");
    }
}

/// A cgroup directory's name, as the agent reads them to find a pod: a UID found is 36
/// characters of hexadecimal digits and dashes.
pub fn cgroup_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(uid) = pods::pod_uid(name) {
        assert_eq!(uid.len(), 36, "{uid:?}");
        assert!(
            uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
            "{uid:?}"
        );
    }
}
