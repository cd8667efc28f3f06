//! Events: what changed between two sets of statuses, told the way `kubectl describe`
//! shows it. Pure: the controller publishes them (only the leader, only on a cluster).
//!
//! * a workload admitted to a service, or refused, when that decision is new or changed;
//! * an object whose `Ready` turns False for a failure (not while it is merely
//!   `Progressing`), and one that recovers.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use wireway_crds::conditions::{READY, reason};

use super::ObjectKey;
use super::progress::Statuses;
use crate::kind::Kind;

/// One event on one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The object's kind: `NetworkService`, `Endpoint`, `Admission` or `IdentityGrant`.
    pub kind: Kind,
    /// The object.
    pub key: ObjectKey,
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// A CamelCase reason.
    pub reason: String,
    /// What happened, for a person.
    pub note: String,
}

fn ready(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == READY)
}

/// Ready changes worth an event: into a failure, or out of one.
fn readiness(kind: Kind, key: &ObjectKey, old: &[Condition], new: &[Condition]) -> Option<Event> {
    let new = ready(new)?;
    let failed = |c: &Condition| c.status == "False" && c.reason != reason::PROGRESSING;
    let old = ready(old);
    let was_failed = old.is_some_and(failed);
    if failed(new) && old.is_none_or(|o| o.reason != new.reason || o.message != new.message) {
        return Some(Event {
            kind,
            key: key.clone(),
            warning: true,
            reason: new.reason.clone(),
            note: new.message.clone(),
        });
    }
    (was_failed && new.status == "True").then(|| Event {
        kind,
        key: key.clone(),
        warning: false,
        reason: reason::READY.to_owned(),
        note: new.message.clone(),
    })
}

/// The events that take `old` to `new`.
pub fn events(old: &Statuses, new: &Statuses) -> Vec<Event> {
    let mut out = Vec::new();
    for (key, status) in &new.network_services {
        let before = old
            .network_services
            .get(key)
            .map(|s| s.conditions.as_slice());
        out.extend(readiness(
            Kind::NetworkService,
            key,
            before.unwrap_or_default(),
            &status.conditions,
        ));
    }
    for (key, status) in &new.endpoints {
        let before = old.endpoints.get(key);
        for member in status.members.iter() {
            let previous =
                before.and_then(|b| b.members.iter().find(|m| m.workload == member.workload));
            let changed = previous.is_none_or(|p| {
                (p.admitted, &p.reason, &p.address)
                    != (member.admitted, &member.reason, &member.address)
            });
            if !changed {
                continue;
            }
            let note = match (&member.address, member.admitted) {
                (Some(address), true) => {
                    format!(
                        "{} ({}) admitted, address {address}: {}",
                        member.workload, member.identity, member.message
                    )
                }
                _ => format!(
                    "{} ({}) not admitted: {}",
                    member.workload, member.identity, member.message
                ),
            };
            out.push(Event {
                kind: Kind::Endpoint,
                key: key.clone(),
                warning: !member.admitted,
                reason: member.reason.clone(),
                note,
            });
        }
        let before = before.map(|s| s.conditions.as_slice());
        out.extend(readiness(
            Kind::Endpoint,
            key,
            before.unwrap_or_default(),
            &status.conditions,
        ));
    }
    for (key, status) in &new.admissions {
        let before = old.admissions.get(key).map(|s| s.conditions.as_slice());
        out.extend(readiness(
            Kind::Admission,
            key,
            before.unwrap_or_default(),
            &status.conditions,
        ));
    }
    for (key, status) in &new.identity_grants {
        let before = old
            .identity_grants
            .get(key)
            .map(|s| s.conditions.as_slice());
        out.extend(readiness(
            Kind::IdentityGrant,
            key,
            before.unwrap_or_default(),
            &status.conditions,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    use wireway_crds::{EndpointStatus, MemberStatus, NetworkServiceStatus};

    use super::*;

    fn condition(status: &str, why: &str, message: &str) -> Condition {
        Condition {
            type_: READY.into(),
            status: status.into(),
            reason: why.into(),
            message: message.into(),
            observed_generation: None,
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    fn member(workload: &str, admitted: bool) -> MemberStatus {
        MemberStatus {
            workload: workload.into(),
            node: Some("n1".into()),
            identity: format!("spiffe://cluster.local/ns/red/sa/{workload}"),
            admitted,
            reason: if admitted {
                reason::ADMITTED
            } else {
                reason::NOT_ADMITTED
            }
            .into(),
            message: "because".into(),
            address: admitted.then(|| "10.100.0.1".to_owned()),
            peers: Vec::new(),
        }
    }

    fn endpoint(members: Vec<MemberStatus>) -> Statuses {
        Statuses {
            endpoints: [(
                ObjectKey::new("red", "members"),
                EndpointStatus {
                    members: members.into(),
                    ..EndpointStatus::default()
                },
            )]
            .into(),
            ..Statuses::default()
        }
    }

    #[test]
    fn new_and_changed_admission_decisions_are_events() {
        let first = endpoint(vec![member("a", true)]);
        let events = events(&Statuses::default(), &first);
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].warning, events[0].reason.as_str()),
            (false, "Admitted")
        );
        assert!(
            events[0].note.contains("address 10.100.0.1"),
            "{}",
            events[0].note
        );
        assert_eq!(
            super::events(&first, &first),
            [],
            "nothing changed, nothing said"
        );
        let refused = endpoint(vec![member("a", false)]);
        let events = super::events(&first, &refused);
        assert_eq!(
            (events[0].warning, events[0].reason.as_str()),
            (true, "NotAdmitted")
        );
    }

    #[test]
    fn failures_and_recoveries_are_events_progress_is_not() {
        let key = ObjectKey::new("red", "red");
        let with = |c: Condition| Statuses {
            network_services: [(
                key.clone(),
                NetworkServiceStatus {
                    conditions: vec![c],
                    ..NetworkServiceStatus::default()
                },
            )]
            .into(),
            ..Statuses::default()
        };
        let ok = with(condition("True", "Ready", "4 members"));
        let progressing = with(condition("False", "Progressing", "1 of 3 nodes"));
        let exhausted = with(condition(
            "False",
            "AddressPoolExhausted",
            "no address left",
        ));
        assert_eq!(events(&ok, &progressing), []);
        assert_eq!(events(&progressing, &ok), []);
        let failure = events(&ok, &exhausted);
        assert_eq!(failure.len(), 1);
        assert!(failure[0].warning);
        assert_eq!(failure[0].reason, "AddressPoolExhausted");
        assert_eq!(events(&exhausted, &exhausted), []);
        let recovered = events(&exhausted, &ok);
        assert_eq!(
            (recovered[0].warning, recovered[0].reason.as_str()),
            (false, "Ready")
        );
    }
}
