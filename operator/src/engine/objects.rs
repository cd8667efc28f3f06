//! The Wireway kinds as the engine handles them alike: their keys and statuses
//! ([`Object`]), what an update changes ([`Generation`]), their conditions
//! ([`Conditions`]); and what the engine does with every kind's statuses: give stored ones
//! back after a restart, remember what objects hold, show and store the statuses in
//! effect, and keep conditions' transition times.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use wireway_crds::{Admission, Endpoint, IdentityGrant, NetworkService, PeerCluster};

use super::store::Stored;
use crate::plan::ObjectKey;
use crate::plan::status::carry_transitions;

/// The Wireway kinds, as the engine handles them alike.
pub(super) trait Object: Clone {
    type Status: Clone;
    fn key(&self) -> ObjectKey;
    fn status_mut(&mut self) -> &mut Option<Self::Status>;
    fn status(&self) -> Option<&Self::Status>;
}

macro_rules! object {
    ($kind:ty, $status:ty) => {
        impl Object for $kind {
            type Status = $status;
            fn key(&self) -> ObjectKey {
                ObjectKey::of(&self.metadata)
            }
            fn status_mut(&mut self) -> &mut Option<$status> {
                &mut self.status
            }
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
        }
    };
}
object!(NetworkService, wireway_crds::NetworkServiceStatus);
object!(Endpoint, wireway_crds::EndpointStatus);
object!(Admission, wireway_crds::AdmissionStatus);
object!(IdentityGrant, wireway_crds::IdentityGrantStatus);
object!(PeerCluster, wireway_crds::PeerClusterStatus);

/// Gives an object that arrives with no status the one stored for it.
pub(super) fn restore<O: Object>(
    restored: &mut Option<Stored>,
    object: &mut O,
    statuses: impl Fn(&mut Stored) -> &mut BTreeMap<String, O::Status>,
) {
    if let Some(stored) = restored
        && object.status().is_none()
    {
        *object.status_mut() = statuses(stored).remove(&object.key().to_string());
    }
}

/// Remembers the status an object arrives with: what it holds (for the status writer),
/// and as what was last announced (so transition times and events carry on across
/// operator restarts and takeovers): the first time, and every time when `follow`.
///
/// A standby follows: the leader writes, so what the object holds is what was
/// announced, whatever the standby planned itself. Were it to keep its own, it would
/// write its own transition times over the leader's on taking over. The leader does not
/// follow: what arrives may be the echo of an older write of its own.
pub(super) fn seen<O: Object>(
    live: &mut BTreeMap<ObjectKey, O::Status>,
    published: &mut BTreeMap<ObjectKey, O::Status>,
    object: &O,
    follow: bool,
) {
    let key = object.key();
    match object.status() {
        Some(status) => {
            if follow {
                published.insert(key.clone(), status.clone());
            } else {
                published
                    .entry(key.clone())
                    .or_insert_with(|| status.clone());
            }
            live.insert(key, status.clone());
        }
        None => {
            live.remove(&key);
        }
    }
}

/// Whether an update changes nothing the planner reads: the same generation (the API
/// server bumps it on every spec change) and the same deletion state. Updates of status
/// or metadata alone, such as the operator's own status writes, are not planned again.
/// Objects without a generation (manifests) are always planned.
pub(super) fn same_spec<O: Object + Generation>(known: Option<&O>, new: &O) -> bool {
    known.is_some_and(|k| {
        new.generation().is_some()
            && k.generation() == new.generation()
            && k.deleting() == new.deleting()
    })
}

/// What [`same_spec`] compares.
pub(super) trait Generation {
    fn generation(&self) -> Option<i64>;
    fn deleting(&self) -> bool;
}

impl<R: kube::Resource> Generation for R {
    fn generation(&self) -> Option<i64> {
        self.meta().generation
    }
    fn deleting(&self) -> bool {
        self.meta().deletion_timestamp.is_some()
    }
}

/// Objects as shown: with the statuses in effect.
pub(super) fn shown<'a, O: Object + 'a>(
    objects: impl Iterator<Item = &'a O>,
    statuses: &BTreeMap<ObjectKey, O::Status>,
) -> Vec<O> {
    objects
        .map(|o| {
            let mut o = o.clone();
            *o.status_mut() = statuses.get(&o.key()).cloned();
            o
        })
        .collect()
}

pub(super) fn statuses_of<'a, O: Object + 'a>(
    objects: impl Iterator<Item = &'a O>,
    key: impl Fn(&ObjectKey) -> String,
) -> BTreeMap<String, O::Status> {
    objects
        .filter_map(|o| Some((key(&o.key()), o.status()?.clone())))
        .collect()
}

/// Statuses with conditions.
pub(super) trait Conditions {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut [Condition];
}

macro_rules! conditions {
    ($($status:ty),*) => {$(
        impl Conditions for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn conditions_mut(&mut self) -> &mut [Condition] {
                &mut self.conditions
            }
        }
    )*};
}
conditions!(
    wireway_crds::NetworkServiceStatus,
    wireway_crds::EndpointStatus,
    wireway_crds::AdmissionStatus,
    wireway_crds::IdentityGrantStatus,
    wireway_crds::PeerClusterStatus
);

/// Keeps the transition times of conditions whose status did not change since they were
/// last published.
pub(super) fn carry<S: Conditions>(
    statuses: &mut BTreeMap<ObjectKey, S>,
    published: &BTreeMap<ObjectKey, S>,
    now: &Time,
) {
    for (key, status) in statuses.iter_mut() {
        let previous = published
            .get(key)
            .map(Conditions::conditions)
            .unwrap_or_default();
        carry_transitions(status.conditions_mut(), previous, now);
    }
}

#[cfg(test)]
mod tests {
    use wireway_crds::AdmissionStatus;

    use super::*;

    fn admission(ready_since: &str) -> Admission {
        let mut admission: Admission = serde_json::from_value(serde_json::json!({
            "apiVersion": "wireway.dev/v1alpha1", "kind": "Admission",
            "metadata": {"name": "a", "namespace": "red"},
            "spec": {"networkService": "red", "allow": [{"namespace": "green"}]},
        }))
        .expect("an Admission");
        admission.status = Some(AdmissionStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(ready_since.parse().expect("a time")),
            }],
            ..AdmissionStatus::default()
        });
        admission
    }

    #[test]
    fn a_standby_follows_what_objects_hold_and_a_leader_keeps_what_it_published() {
        let key = ObjectKey::new("red", "a");
        let own = admission("2026-01-01T00:00:02Z");
        let leaders = admission("2026-01-01T00:00:01Z");
        for (follow, expected) in [(true, &leaders), (false, &own)] {
            let mut live = BTreeMap::new();
            let mut published = BTreeMap::from([(key.clone(), own.status.clone().expect("own"))]);
            seen(&mut live, &mut published, &leaders, follow);
            assert_eq!(
                published.get(&key),
                expected.status.as_ref(),
                "follow: {follow}"
            );
            assert_eq!(
                live.get(&key),
                leaders.status.as_ref(),
                "live is what it holds"
            );
        }
    }
}
