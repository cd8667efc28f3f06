//! Conditions, kept the Kubernetes way: `lastTransitionTime` moves only when the status
//! of a condition changes, and is kept to the second.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use wireway_crds::conditions::READY;

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
    }
}
