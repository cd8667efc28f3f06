//! [`Members`]: an Endpoint's member list, sorted by workload and held in shared parts.
//!
//! An Endpoint may select thousands of workloads (a DaemonSet, a large StatefulSet), and
//! its status lists each. The operator keeps that list where it plans and where it last
//! wrote it; a member joining should not copy or move the other thousands. So the list
//! is held in parts of at most twice [`PART`] members each (a part that grows past that
//! is split in two), shared between clones: setting or removing one member copies (if
//! another clone holds it) and moves one part, and the counts the Endpoint's condition
//! reports are kept per part. On the wire it is a plain list; a list read back that is
//! not sorted by workload is sorted, and of entries with one workload the last is kept.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::MemberStatus;

/// Half the most members of a part: a part over twice this many is split in two, so
/// setting one member copies (when the part is shared) or moves at most twice this many.
const PART: usize = 64;

/// A run of the list, with its counts.
#[derive(Clone, Default, PartialEq, Eq)]
struct Part {
    members: Vec<MemberStatus>,
    /// Members not admitted, or admitted without an address.
    problems: usize,
    /// Members not admitted.
    rejected: usize,
}

impl Part {
    fn new(members: Vec<MemberStatus>) -> Self {
        Self {
            problems: members.iter().filter(|m| is_problem(m)).count(),
            rejected: members.iter().filter(|m| !m.admitted).count(),
            members,
        }
    }

    /// Counts `m` in (`sign` 1) or out (`sign` -1, as wrapping addition).
    fn count(&mut self, m: &MemberStatus, sign: isize) {
        if is_problem(m) {
            self.problems = self.problems.wrapping_add_signed(sign);
        }
        if !m.admitted {
            self.rejected = self.rejected.wrapping_add_signed(sign);
        }
    }

    fn first(&self) -> &str {
        self.members.first().map_or("", |m| m.workload.as_str())
    }
}

/// Whether `m` keeps its Endpoint from being Ready: not admitted, or without an address.
fn is_problem(m: &MemberStatus) -> bool {
    !m.admitted || m.address.is_none()
}

/// An Endpoint's members, sorted by workload, one per workload (see the module's
/// documentation). Cloning shares the list; an edit of a shared list copies a pointer
/// per part and the part it edits.
#[derive(Clone, Default)]
pub struct Members {
    parts: Arc<Vec<Arc<Part>>>,
    len: usize,
}

impl Members {
    /// How many members.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The members, by workload.
    pub fn iter(&self) -> impl Iterator<Item = &MemberStatus> {
        self.parts.iter().flat_map(|p| &p.members)
    }

    /// The part that holds `workload` if any member does (the last part whose first
    /// workload is not after it).
    fn part_of(&self, workload: &str) -> usize {
        self.parts
            .partition_point(|p| p.first() <= workload)
            .saturating_sub(1)
    }

    /// The member for `workload`.
    pub fn get(&self, workload: &str) -> Option<&MemberStatus> {
        let part = self.parts.get(self.part_of(workload))?;
        let at = part
            .members
            .binary_search_by(|m| m.workload.as_str().cmp(workload));
        part.members.get(at.ok()?)
    }

    /// Sets the member for its workload, in place of the one there was.
    pub fn set(&mut self, member: MemberStatus) {
        let p = self.part_of(&member.workload);
        let parts = Arc::make_mut(&mut self.parts);
        if parts.is_empty() {
            parts.push(Arc::default());
        }
        let part = Arc::make_mut(&mut parts[p]);
        part.count(&member, 1);
        match part
            .members
            .binary_search_by(|m| m.workload.cmp(&member.workload))
        {
            Ok(i) => {
                let old = std::mem::replace(&mut part.members[i], member);
                part.count(&old, -1);
            }
            Err(i) => {
                part.members.insert(i, member);
                self.len += 1;
                if part.members.len() > 2 * PART {
                    let rest = part.members.split_off(PART);
                    *part = Part::new(std::mem::take(&mut part.members));
                    parts.insert(p + 1, Arc::new(Part::new(rest)));
                }
            }
        }
    }

    /// Removes the member for `workload`, if there is one.
    pub fn remove(&mut self, workload: &str) -> Option<MemberStatus> {
        let p = self.part_of(workload);
        let at = self
            .parts
            .get(p)?
            .members
            .binary_search_by(|m| m.workload.as_str().cmp(workload))
            .ok()?;
        let parts = Arc::make_mut(&mut self.parts);
        let part = Arc::make_mut(&mut parts[p]);
        let old = part.members.remove(at);
        part.count(&old, -1);
        self.len -= 1;
        if part.members.is_empty() {
            parts.remove(p);
        }
        Some(old)
    }

    /// How many members are admitted and have an address.
    pub fn admitted_count(&self) -> usize {
        self.len - self.parts.iter().map(|p| p.problems).sum::<usize>()
    }

    /// How many members are not admitted.
    pub fn rejected_count(&self) -> usize {
        self.parts.iter().map(|p| p.rejected).sum()
    }

    /// The first member (by workload) not admitted or without an address.
    pub fn first_problem(&self) -> Option<&MemberStatus> {
        let part = self.parts.iter().find(|p| p.problems > 0)?;
        part.members.iter().find(|m| is_problem(m))
    }
}

impl From<Vec<MemberStatus>> for Members {
    /// The list sorted by workload (stably); of members with one workload, the last is
    /// kept.
    fn from(mut members: Vec<MemberStatus>) -> Self {
        members.sort_by(|a, b| a.workload.cmp(&b.workload));
        members.reverse();
        members.dedup_by(|a, b| a.workload == b.workload);
        members.reverse();
        let len = members.len();
        let mut parts = Vec::with_capacity(len.div_ceil(PART));
        let mut rest = members.into_iter();
        loop {
            let part: Vec<MemberStatus> = rest.by_ref().take(PART).collect();
            if part.is_empty() {
                break;
            }
            parts.push(Arc::new(Part::new(part)));
        }
        Self {
            parts: Arc::new(parts),
            len,
        }
    }
}

impl FromIterator<MemberStatus> for Members {
    fn from_iter<I: IntoIterator<Item = MemberStatus>>(iter: I) -> Self {
        Self::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl PartialEq for Members {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.parts, &other.parts)
            || (self.len == other.len && self.iter().eq(other.iter()))
    }
}

impl Eq for Members {}

impl fmt::Debug for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Members {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<MemberStatus>::deserialize(deserializer).map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Members, PART};
    use crate::MemberStatus;

    fn member(workload: &str, admitted: bool, address: bool) -> MemberStatus {
        MemberStatus {
            workload: workload.to_owned(),
            node: None,
            identity: String::new(),
            admitted,
            reason: String::new(),
            message: String::new(),
            address: address.then(|| "10.0.0.1".to_owned()),
            peers: Vec::new(),
        }
    }

    /// What the list must say, from a plain sorted list of the same members.
    fn check(members: &Members, plain: &[MemberStatus]) {
        assert_eq!(members.iter().cloned().collect::<Vec<_>>(), plain);
        assert_eq!(members.len(), plain.len());
        let problem = |m: &&MemberStatus| !m.admitted || m.address.is_none();
        assert_eq!(
            members.admitted_count(),
            plain.iter().filter(|m| !problem(m)).count()
        );
        assert_eq!(
            members.rejected_count(),
            plain.iter().filter(|m| !m.admitted).count()
        );
        assert_eq!(members.first_problem(), plain.iter().find(problem));
        for m in plain {
            assert_eq!(members.get(&m.workload), Some(m));
        }
        assert!(
            members
                .parts
                .iter()
                .all(|p| (1..=2 * PART).contains(&p.members.len()))
        );
    }

    proptest! {
        /// Sets and removes, in any order and on shared clones, leave the list as a
        /// plain sorted list would be, with its counts; the clone taken before is as it
        /// was.
        #[test]
        fn edits_agree_with_a_plain_sorted_list(
            start in prop::collection::vec((0u16..600, any::<bool>(), any::<bool>()), 0..400),
            edits in prop::collection::vec((0u16..600, prop::option::of((any::<bool>(), any::<bool>()))), 0..400),
        ) {
            let workload = |n: u16| format!("pod-{n:03}");
            let initial: Vec<MemberStatus> =
                start.iter().map(|(n, a, s)| member(&workload(*n), *a, *s)).collect();
            let mut members = Members::from(initial.clone());
            let mut plain: std::collections::BTreeMap<String, MemberStatus> = initial
                .into_iter()
                .map(|m| (m.workload.clone(), m))
                .collect();
            let before = members.clone();
            let before_plain: Vec<MemberStatus> = plain.values().cloned().collect();
            for (n, value) in edits {
                match value {
                    Some((admitted, address)) => {
                        let m = member(&workload(n), admitted, address);
                        plain.insert(m.workload.clone(), m.clone());
                        members.set(m);
                    }
                    None => {
                        let removed = members.remove(&workload(n));
                        prop_assert_eq!(removed, plain.remove(&workload(n)));
                    }
                }
            }
            let plain: Vec<MemberStatus> = plain.into_values().collect();
            check(&members, &plain);
            check(&before, &before_plain);
            prop_assert_eq!(members.clone(), Members::from(plain.clone()));
            prop_assert_eq!(members == before, plain == before_plain);
            prop_assert_eq!(members.get("pod-999"), None);
        }
    }

    #[test]
    fn on_the_wire_it_is_a_list_and_a_list_read_back_is_sorted() {
        let members = Members::from(vec![member("b", true, true), member("a", false, false)]);
        let json = serde_json::to_value(&members).unwrap();
        assert_eq!(json[0]["workload"], "a");
        assert_eq!(json[1]["workload"], "b");
        let unsorted = serde_json::json!([json[1], json[0]]);
        let back: Members = serde_json::from_value(unsorted).unwrap();
        assert_eq!(back, members);
    }
}
