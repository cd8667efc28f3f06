//! Conditions, kept the Kubernetes way: `lastTransitionTime` moves only when the status
//! of a condition changes, and is kept to the second.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use wireway_crds::conditions::{READY, reason};

/// The condition time of `t`, to the second: conditions' times are stored with second
/// precision, so a time with more would never compare equal to what the API server gives
/// back. (Callers read the clock; this stays pure.)
pub fn condition_time(t: Timestamp) -> Time {
    Time(Timestamp::from_second(t.as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The `Ready` condition, keeping the transition time of `previous` when its status is
/// unchanged.
pub fn ready(
    ready: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Vec<Condition> {
    let status = if ready { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == READY && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    vec![Condition {
        type_: READY.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time,
    }]
}

/// Keeps each condition's `lastTransitionTime` from `previous` (what was last published)
/// when its status did not change, and stamps `now` when it did or is new.
pub fn carry_transitions(conditions: &mut [Condition], previous: &[Condition], now: &Time) {
    for condition in conditions {
        condition.last_transition_time = previous
            .iter()
            .find(|c| c.type_ == condition.type_ && c.status == condition.status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    }
}

/// `n` and the noun, in the plural unless `n` is 1: "1 workload", "3 workloads".
pub fn count_of(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A PeerCluster's status: connected to its operator, never yet, or not any more (since
/// `last_sync`, when it last sent its halves).
pub fn peer_cluster(
    object: &wireway_crds::PeerCluster,
    connected: bool,
    last_sync: Option<&Time>,
    now: &Time,
) -> wireway_crds::PeerClusterStatus {
    let address = &object.spec.address;
    let (why, message) = match (connected, last_sync) {
        (true, _) => (
            reason::CONNECTED,
            format!("exchanging halves with its operator ({address})"),
        ),
        (false, None) => (
            reason::CONNECTING,
            format!(
                "its operator has not been heard from yet (dialling {address}, or waiting for it to dial in)"
            ),
        ),
        (false, Some(_)) => (
            reason::DISCONNECTED,
            format!(
                "its operator is not connected (dialling {address}); what it last sent stays installed"
            ),
        ),
    };
    let generation = object.metadata.generation;
    let previous = object
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    wireway_crds::PeerClusterStatus {
        observed_generation: generation,
        conditions: ready(connected, why, message, generation, previous, now),
        last_sync: last_sync.cloned(),
    }
}

/// Most bytes of text from a peer cluster (a name, a reason, a message) that go into
/// a status: what it sends is bounded, so no peer can grow this cluster's objects past
/// what the API server stores.
pub const PEER_TEXT_MAX: usize = 256;

/// `text` cut to at most `max` bytes (at a character boundary), marked when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn condition_times_are_kept_to_the_second() {
        let t = Timestamp::from_millisecond(1_700_000_000_999).unwrap();
        assert_eq!(
            super::condition_time(t).0,
            Timestamp::from_second(1_700_000_000).unwrap()
        );
    }

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(super::count_of(0, "node"), "0 nodes");
        assert_eq!(super::count_of(1, "workload"), "1 workload");
        assert_eq!(super::count_of(4, "member"), "4 members");
        let long = "é".repeat(300);
        let clipped = super::clip(&long, super::PEER_TEXT_MAX);
        assert!(clipped.len() <= super::PEER_TEXT_MAX && clipped.ends_with("..."));
        assert_eq!(super::clip("short", 10), "short");
    }
}
