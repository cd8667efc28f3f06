//! Completing a node's services: host veth names unique on the node.

use std::collections::BTreeSet;

use wireway_proto::ServiceState;

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
        let member = &mut svc.members[m];
        let name = names::host_veth_candidates(&svc.name, &member.id)
            .find(|n| !taken.contains(n))
            .unwrap_or_default();
        taken.insert(name.clone());
        member.host_interface_name = name;
    }
    services
}
