//! Completing a node's services: host veth names unique on the node.

use std::collections::BTreeSet;

use wireway_proto::{Member, ServiceState};

use super::names;

/// Completes a node's services that were planned again: host veth names.
///
/// Host veth names are unique on the node across services: `kept` (services staying as
/// they are) hold theirs; a member of `services` keeps the name it had in `replaced` (its
/// service's previous state) when free, and new members take the first candidate nobody
/// holds. So a member joining or leaving never renames another member's veth.
pub fn assemble(
    mut services: Vec<ServiceState>,
    kept: &[ServiceState],
    replaced: &[ServiceState],
) -> Vec<ServiceState> {
    if services.is_empty() {
        return services;
    }
    let mut taken: BTreeSet<String> = kept
        .iter()
        .flat_map(|s| &s.members)
        .map(|m| m.host_interface_name.clone())
        .collect();
    let mut fresh: Vec<(usize, usize)> = Vec::new();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    for (s, svc) in services.iter_mut().enumerate() {
        let before = replaced.iter().find(|b| b.name == svc.name);
        for (m, member) in svc.members.iter_mut().enumerate() {
            let name = before
                .and_then(|b| b.members.iter().find(|old| old.id == member.id))
                .map(|old| old.host_interface_name.clone())
                .filter(|name| name.starts_with(names::HOST_VETH_PREFIX) && !taken.contains(name));
            match name {
                Some(name) => {
                    taken.insert(name.clone());
                    member.host_interface_name = name;
                }
                None => fresh.push((s, m)),
            }
        }
    }
    for (s, m) in fresh {
        let svc = &mut services[s];
        name_member(&svc.name, &mut svc.members[m], &mut taken);
    }
    services
}

/// Gives `member` of `service` the first host veth name candidate nobody holds.
fn name_member(service: &str, member: &mut Member, taken: &mut BTreeSet<String>) {
    let name = names::host_veth_candidates(service, &member.id)
        .find(|n| !taken.contains(n))
        .unwrap_or_default();
    taken.insert(name.clone());
    member.host_interface_name = name;
}

/// Sets (or removes, `None`) members of the node's service `services[at]` by id, in
/// place, as [`assemble`] would have them: a member set keeps the host veth name it had,
/// and a new member takes the first candidate no member of the node holds. (A change of
/// members edits one node's share so, without copying it.) Returns whether anything
/// changed.
pub fn edit_members(
    services: &mut [ServiceState],
    at: usize,
    sets: &[(String, Option<Member>)],
) -> bool {
    let mut changed = false;
    let svc = &mut services[at];
    for (id, member) in sets {
        let found = svc.members.binary_search_by(|m| m.id.as_str().cmp(id));
        match (found, member) {
            (Ok(i), Some(member)) => {
                let mut member = member.clone();
                member
                    .host_interface_name
                    .clone_from(&svc.members[i].host_interface_name);
                if svc.members[i] != member {
                    svc.members[i] = member;
                    changed = true;
                }
            }
            (Err(i), Some(member)) => {
                let mut member = member.clone();
                member.host_interface_name.clear();
                svc.members.insert(i, member);
                changed = true;
            }
            (Ok(i), None) => {
                svc.members.remove(i);
                changed = true;
            }
            (Err(_), None) => {}
        }
    }
    let unnamed: Vec<usize> = (0..services[at].members.len())
        .filter(|&i| {
            !services[at].members[i]
                .host_interface_name
                .starts_with(names::HOST_VETH_PREFIX)
        })
        .collect();
    if !unnamed.is_empty() {
        let mut taken: BTreeSet<String> = services
            .iter()
            .flat_map(|s| &s.members)
            .map(|m| m.host_interface_name.clone())
            .collect();
        let svc = &mut services[at];
        for i in unnamed {
            name_member(&svc.name, &mut svc.members[i], &mut taken);
        }
    }
    changed
}
