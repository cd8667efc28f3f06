//! What goes over one federation connection, decided without IO: the updates this side
//! sends (everything first, then only the halves that changed) and what it makes of the
//! updates it receives (the peer's halves, replaced or withdrawn per service, and only
//! for the services shared with it).

use std::collections::{BTreeMap, BTreeSet};

use wireway_proto::federation as wire;

use crate::plan::{Half, HalfMember, HalfNode, MemberDecision, ObjectKey};

/// The halves of one side, by service.
pub type Halves = BTreeMap<ObjectKey, Half>;

/// What this side last sent on a connection.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    sent: Option<Halves>,
    sequence: u64,
}

impl Outbox {
    /// The update that takes the peer from what was sent to `now`: full the first time,
    /// then only what changed; `None` when nothing did.
    pub fn update(&mut self, now: &Halves) -> Option<wire::FederationUpdate> {
        let update = match &self.sent {
            None => wire::FederationUpdate {
                sequence: 0,
                full: true,
                halves: now.iter().map(|(k, h)| to_wire(k, h)).collect(),
                withdrawn: Vec::new(),
            },
            Some(sent) => {
                let halves: Vec<wire::ServiceHalf> = now
                    .iter()
                    .filter(|(k, h)| sent.get(*k) != Some(*h))
                    .map(|(k, h)| to_wire(k, h))
                    .collect();
                let withdrawn: Vec<wire::SharedServiceKey> = sent
                    .keys()
                    .filter(|k| !now.contains_key(*k))
                    .map(key_to_wire)
                    .collect();
                if halves.is_empty() && withdrawn.is_empty() {
                    return None;
                }
                wire::FederationUpdate {
                    sequence: 0,
                    full: false,
                    halves,
                    withdrawn,
                }
            }
        };
        self.sequence += 1;
        self.sent = Some(now.clone());
        Some(wire::FederationUpdate {
            sequence: self.sequence,
            ..update
        })
    }
}

/// Why an update is refused (the connection is then closed: the peer's operator is
/// broken or hostile; what it sent before stays).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Updates must count up by one.
    #[error("update {got} came after update {after}")]
    Sequence {
        /// The sequence number received.
        got: u64,
        /// The one before.
        after: u64,
    },
    /// The first update of a connection must be full.
    #[error("the first update of a connection must be full")]
    NotFull,
}

/// What a peer has sent on a connection.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    halves: Halves,
    sequence: u64,
}

impl Inbox {
    /// Applies an update; halves of services not in `shared` are dropped (the peer may
    /// only speak of what it shares). Returns the peer's halves now.
    pub fn apply(
        &mut self,
        update: wire::FederationUpdate,
        shared: &BTreeSet<ObjectKey>,
    ) -> Result<&Halves, Refusal> {
        if update.sequence != self.sequence + 1 {
            return Err(Refusal::Sequence {
                got: update.sequence,
                after: self.sequence,
            });
        }
        if self.sequence == 0 && !update.full {
            return Err(Refusal::NotFull);
        }
        self.sequence = update.sequence;
        if update.full {
            self.halves.clear();
        }
        for key in &update.withdrawn {
            self.halves.remove(&key_from_wire(key));
        }
        for half in update.halves {
            let key = half.service.as_ref().map(key_from_wire).unwrap_or_default();
            if shared.contains(&key) {
                self.halves.insert(key, from_wire(half));
            }
        }
        Ok(&self.halves)
    }
}

fn key_to_wire(key: &ObjectKey) -> wire::SharedServiceKey {
    wire::SharedServiceKey {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

fn key_from_wire(key: &wire::SharedServiceKey) -> ObjectKey {
    ObjectKey::new(&key.namespace, &key.name)
}

fn to_wire(key: &ObjectKey, half: &Half) -> wire::ServiceHalf {
    wire::ServiceHalf {
        service: Some(key_to_wire(key)),
        cidr: half.cidr.clone(),
        nodes: half
            .nodes
            .iter()
            .map(|n| wire::HalfNode {
                name: n.name.clone(),
                public_key: n.public_key.clone(),
                endpoint: n.endpoint.clone().unwrap_or_default(),
                prefix: n.prefix.clone(),
            })
            .collect(),
        members: half
            .members
            .iter()
            .map(|m| wire::HalfMember {
                name: m.name.clone(),
                identity: m.identity.clone(),
                address: m.address.clone(),
                node: m.node.clone(),
            })
            .collect(),
        decisions: half
            .decisions
            .iter()
            .map(|d| wire::MemberDecision {
                address: d.address.clone(),
                admitted: d.admitted,
                reason: d.reason.clone(),
                message: d.message.clone(),
            })
            .collect(),
    }
}

fn from_wire(half: wire::ServiceHalf) -> Half {
    Half {
        cidr: half.cidr,
        nodes: half
            .nodes
            .into_iter()
            .map(|n| HalfNode {
                name: n.name,
                public_key: n.public_key,
                endpoint: Some(n.endpoint).filter(|e| !e.is_empty()),
                prefix: n.prefix,
            })
            .collect(),
        members: half
            .members
            .into_iter()
            .map(|m| HalfMember {
                name: m.name,
                identity: m.identity,
                address: m.address,
                node: m.node,
            })
            .collect(),
        decisions: half
            .decisions
            .into_iter()
            .map(|d| MemberDecision {
                address: d.address,
                admitted: d.admitted,
                reason: d.reason,
                message: d.message,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(cidr: &str, members: usize) -> Half {
        Half {
            cidr: cidr.into(),
            nodes: vec![HalfNode {
                name: "b-1".into(),
                public_key: "key".into(),
                endpoint: Some("198.51.100.1:52000".into()),
                prefix: "10.100.128.0/24".into(),
            }],
            members: (0..members)
                .map(|i| HalfMember {
                    name: format!("red/m{i}"),
                    identity: format!("spiffe://b.example/ns/red/sa/m{i}"),
                    address: format!("10.100.128.{}", i + 1),
                    node: "b-1".into(),
                })
                .collect(),
            decisions: vec![MemberDecision {
                address: "10.100.0.1".into(),
                admitted: true,
                reason: "Admitted".into(),
                message: "allowed".into(),
            }],
        }
    }

    fn keys(names: &[&str]) -> BTreeSet<ObjectKey> {
        names.iter().map(|n| ObjectKey::new("red", n)).collect()
    }

    #[test]
    fn everything_first_then_only_what_changed_and_what_went() {
        let mut outbox = Outbox::default();
        let mut inbox = Inbox::default();
        let shared = keys(&["a", "b"]);
        let mut now: Halves = [
            (ObjectKey::new("red", "a"), half("10.100.0.0/16", 2)),
            (ObjectKey::new("red", "b"), half("10.101.0.0/16", 1)),
        ]
        .into();
        let first = outbox.update(&now).expect("the first update");
        assert!(first.full && first.sequence == 1 && first.halves.len() == 2);
        assert_eq!(inbox.apply(first, &shared).unwrap(), &now);
        assert!(outbox.update(&now).is_none(), "nothing changed");

        now.insert(ObjectKey::new("red", "a"), half("10.100.0.0/16", 3));
        now.remove(&ObjectKey::new("red", "b"));
        let second = outbox.update(&now).expect("a change");
        assert!(!second.full);
        assert_eq!((second.halves.len(), second.withdrawn.len()), (1, 1));
        assert_eq!(inbox.apply(second, &shared).unwrap(), &now);
    }

    #[test]
    fn a_peer_speaks_only_of_the_services_it_shares() {
        let mut outbox = Outbox::default();
        let now: Halves = [
            (ObjectKey::new("red", "a"), half("10.100.0.0/16", 1)),
            (ObjectKey::new("green", "g"), half("10.200.0.0/16", 1)),
        ]
        .into();
        let mut inbox = Inbox::default();
        let got = inbox
            .apply(outbox.update(&now).unwrap(), &keys(&["a"]))
            .unwrap();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            [&ObjectKey::new("red", "a")]
        );
    }

    #[test]
    fn updates_out_of_order_or_a_partial_first_one_are_refused() {
        let mut inbox = Inbox::default();
        let partial = wire::FederationUpdate {
            sequence: 1,
            full: false,
            ..Default::default()
        };
        assert_eq!(inbox.apply(partial, &keys(&[])), Err(Refusal::NotFull));
        let skipped = wire::FederationUpdate {
            sequence: 2,
            full: true,
            ..Default::default()
        };
        assert_eq!(
            inbox.apply(skipped, &keys(&[])),
            Err(Refusal::Sequence { got: 2, after: 0 })
        );
    }
}
