//! Services whose cidrs overlap and that share a node.
//!
//! Each service has its own interface and routing table on a node, but a pod in two
//! services holds a route for each cidr: if one cidr lies inside the other, the more
//! specific route captures the other service's traffic (a service owner could aim a small
//! range at another service's members and take their packets). So two services whose
//! cidrs overlap may not share a node (and so no member either): one of them is refused
//! (`OverlappingCidr`) and installs nothing.
//!
//! Which one must never be the one already working: the service holding allocations
//! (status.nodePrefixes) wins, else the one created first, else the first by key. The
//! decision is greedy in that order, so it is the same whatever order the services came
//! in, and a refused service (carrying nothing) keeps no other service out.
//!
//! Whether two services share a node is read from their plans as if neither were
//! refused (their *drafts*), so the decision depends only on the services of one group
//! of overlapping cidrs: [`closure`] is that group, planned together.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wireway_crds::Cidr;
use wireway_crds::conditions::reason;

use super::ObjectKey;
use super::index::Index;
use super::service::{self, Problem, TargetPlan};

/// How many node names a message lists before it counts the rest.
const NAMES_SHOWN: usize = 5;

/// The targets `dirty` and every service whose cidr overlaps one of theirs, and so on:
/// planning one of them may change which of the others is refused. `planned_cidr` is the
/// cidr a target was last planned with (a deleted service's still counts).
pub fn closure(
    index: &Index,
    dirty: BTreeSet<ObjectKey>,
    planned_cidr: impl Fn(&ObjectKey) -> Option<Cidr>,
) -> BTreeSet<ObjectKey> {
    let mut all = dirty.clone();
    let mut queue: Vec<ObjectKey> = dirty.into_iter().collect();
    while let Some(target) = queue.pop() {
        let cidrs: Vec<Cidr> = cidr(index, &target)
            .into_iter()
            .chain(planned_cidr(&target))
            .collect();
        if cidrs.is_empty() {
            continue;
        }
        let more: Vec<ObjectKey> = index
            .services_overlapping(&cidrs)
            .filter(|k| !all.contains(*k))
            .cloned()
            .collect();
        for key in more {
            all.insert(key.clone());
            queue.push(key);
        }
    }
    all
}

/// A service's cidr, if it exists and its cidr parses.
pub fn cidr(index: &Index, target: &ObjectKey) -> Option<Cidr> {
    index.services.get(target)?.spec.cidr.parse().ok()
}

/// A service contending for its nodes.
struct Contender<'p> {
    key: &'p ObjectKey,
    cidr: Cidr,
    nodes: BTreeSet<&'p str>,
}

/// Replaces the draft of every service that overlaps a service kept before it (in the
/// order above) on a shared node by the plan of a refused service. `drafts` holds a whole
/// [`closure`].
pub fn settle(index: &Index, drafts: &mut BTreeMap<ObjectKey, TargetPlan>) {
    let mut contenders: Vec<(bool, Option<Time>, Contender<'_>)> = drafts
        .iter()
        .filter(|(_, draft)| !draft.nodes.is_empty())
        .filter_map(|(key, draft)| {
            let svc = index.services.get(key)?;
            let allocated = service::holds_allocations(svc);
            let created = svc.metadata.creation_timestamp.clone();
            let contender = Contender {
                key,
                cidr: cidr(index, key)?,
                nodes: draft.nodes.keys().map(String::as_str).collect(),
            };
            Some((allocated, created, contender))
        })
        .collect();
    // Allocations first, then the known creation times (oldest first), then the key.
    contenders.sort_by(|(a_alloc, a_created, a), (b_alloc, b_created, b)| {
        (!a_alloc, a_created.is_none(), a_created, a.key).cmp(&(
            !b_alloc,
            b_created.is_none(),
            b_created,
            b.key,
        ))
    });
    let mut kept: Vec<&Contender<'_>> = Vec::new();
    let mut refused: Vec<(ObjectKey, Problem)> = Vec::new();
    for (_, _, contender) in &contenders {
        let clash = kept.iter().find_map(|k| {
            let shared: Vec<&str> = k.nodes.intersection(&contender.nodes).copied().collect();
            (k.cidr.overlaps(&contender.cidr) && !shared.is_empty()).then_some((k, shared))
        });
        match clash {
            Some((winner, shared)) => {
                let problem = Problem::new(
                    reason::OVERLAPPING_CIDR,
                    format!(
                        "spec.cidr {} overlaps {} of NetworkService {}, which shares node(s) {} with it: a member of both would route one service's traffic into the other. {} keeps working; choose a cidr that overlaps no other service",
                        contender.cidr,
                        winner.cidr,
                        winner.key,
                        names(&shared),
                        winner.key
                    ),
                );
                refused.push((contender.key.clone(), problem));
            }
            None => kept.push(contender),
        }
    }
    for (key, problem) in refused {
        let plan = service::refuse(index, &key, &problem);
        drafts.insert(key, plan);
    }
}

/// Names, the first few of them: `a, b, c and 4 more`.
fn names(all: &[&str]) -> String {
    let mut shown = all
        .iter()
        .take(NAMES_SHOWN)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if all.len() > NAMES_SHOWN {
        shown.push_str(&format!(" and {} more", all.len() - NAMES_SHOWN));
    }
    shown
}
