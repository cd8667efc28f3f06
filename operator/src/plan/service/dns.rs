//! A service's names: the zone it answers in (a stage) and the records of its members
//! (a projection of what admission and allocation decided).
//!
//! Guarantees:
//! * every zone is under [`RESERVED_SUFFIX`], and a service's zone lies in its own
//!   namespace's part of it (`<namespace>.wireway.internal`), so a service owner never
//!   answers for names outside Wireway's, nor for another namespace's services, to the
//!   tenants whose workloads join the service;
//! * a name ends in the namespace of the Endpoint it comes from (`<pod>.<endpoint>.
//!   <namespace>` and `<endpoint>.<namespace>` under the zone), and namespace names hold
//!   no dot, so a tenant's Endpoint never makes a name another namespace's Endpoint has;
//! * only members (admitted, with an address) have names; a name that is not a valid DNS
//!   name (a label over 63 bytes, the whole over 253) is left out, never cut.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use wireway_crds::NetworkService;
use wireway_crds::conditions::reason;
use wireway_proto::{At, DnsRecord, DnsRecords, ServiceDns};

use super::{Entry, Problem, Workload};
use crate::plan::ObjectKey;

/// The suffix every service's zone is under.
pub const RESERVED_SUFFIX: &str = "wireway.internal";

/// Whether `name` (no trailing dot) is a DNS name a zone file could hold: labels of 1 to
/// 63 bytes, 253 bytes at most.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(|l| (1..=63).contains(&l.len()))
}

/// Stage: the zone of `target`'s names, `spec.dns.zone` when it lies in the service's
/// namespace's part of [`RESERVED_SUFFIX`], otherwise the default
/// `<name>.<namespace>.wireway.internal` and a problem saying why. `None` when names are
/// turned off (`spec.dns.enabled: false`), or even the default is no DNS name (a service
/// name of over 200 bytes).
pub(super) fn zone(
    svc: &NetworkService,
    target: &ObjectKey,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    if svc.spec.dns.as_ref().and_then(|d| d.enabled) == Some(false) {
        return None;
    }
    let own = format!("{}.{RESERVED_SUFFIX}", target.namespace);
    let default = format!("{}.{own}", target.name);
    let asked = svc.spec.dns.as_ref().and_then(|d| d.zone.as_deref());
    let zone = match asked {
        Some(z) if (z == own || z.ends_with(&format!(".{own}"))) && is_dns_name(z) => z.to_owned(),
        Some(z) => {
            problems.push(Problem::new(
                reason::DNS_ZONE_NOT_OWNED,
                format!(
                    "spec.dns.zone {z} is not in this namespace's part of {RESERVED_SUFFIX} ({own} or under it); the names are in {default}"
                ),
            ));
            default
        }
        None => default,
    };
    is_dns_name(&zone).then_some(zone)
}

/// The block of 256 addresses `address` lies in (a /24, or a /120 in IPv6), ordered as
/// the addresses are. A name's addresses are held in one record per block: an Endpoint's
/// name holds every member's address, and a member joining copies one block's
/// addresses (at most 256), not the Endpoint's (100,000 in one service at the scale of
/// `docs/benchmarks.md`). Agents merge the records of one name.
fn block(address: IpAddr) -> (bool, u128) {
    match address {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4) >> 8)),
        IpAddr::V6(v6) => (true, u128::from(v6) >> 8),
    }
}

/// The block of a record: its first address's.
fn block_of(record: &DnsRecord) -> Option<(bool, u128)> {
    record.addresses.first()?.parse().ok().map(block)
}

/// The records of the service's members under `zone`: each pod member by
/// `<pod>.<endpoint>.<namespace>`, and each Endpoint by `<endpoint>.<namespace>` with
/// all its members (an external host's only name), one record per name and [`block`] of
/// addresses. Sorted by name, then address, as the NodeState wants.
pub(super) fn records(zone: &str, entries: &[Entry<'_>]) -> ServiceDns {
    let mut names: BTreeMap<(String, (bool, u128)), Vec<IpAddr>> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.member()) {
        let Some(address) = entry.address else {
            continue;
        };
        for name in names_of(entry) {
            names
                .entry((name, block(address)))
                .or_default()
                .push(address);
        }
    }
    let records: Vec<Arc<DnsRecord>> = names
        .into_iter()
        .filter(|((name, _), _)| recordable(name, zone))
        .map(|((name, _), mut addresses)| {
            addresses.sort();
            addresses.dedup();
            Arc::new(DnsRecord {
                name,
                addresses: addresses.iter().map(ToString::to_string).collect(),
            })
        })
        .collect();
    ServiceDns {
        zone: zone.to_owned(),
        records: records.into(),
    }
}

/// The names a member answers to, relative to the zone: its own (a pod's) and its
/// Endpoint's.
fn names_of(entry: &Entry<'_>) -> Vec<String> {
    let endpoint =
        format!("{}.{}", entry.endpoint.name, entry.endpoint.namespace).to_ascii_lowercase();
    match entry.kind {
        Workload::Pod { pod, .. } => {
            let own = format!("{}.{endpoint}", pod.name).to_ascii_lowercase();
            vec![own, endpoint]
        }
        Workload::External { .. } => vec![endpoint],
    }
}

/// Whether `name` under `zone` is a name a record can have.
fn recordable(name: &str, zone: &str) -> bool {
    name.len() + 1 + zone.len() <= 253 && is_dns_name(name) && is_dns_name(zone)
}

/// One address to take from a name, or to give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NameChange {
    name: String,
    address: IpAddr,
    add: bool,
}

/// What members leaving (`gone`) and joining (`joined`) change in the records of
/// `dns`; `None` when that cannot be told from the records alone (a name two members'
/// names could share: an Endpoint name with a dot). A member changed in place is in both.
pub(super) fn changes(
    dns: &ServiceDns,
    gone: &[(&Entry<'_>, IpAddr)],
    joined: &[(&Entry<'_>, IpAddr)],
) -> Option<Vec<NameChange>> {
    let mut changes: Vec<NameChange> = Vec::new();
    let ops = gone
        .iter()
        .map(|m| (m, false))
        .chain(joined.iter().map(|m| (m, true)));
    for ((entry, address), add) in ops {
        if entry.endpoint.name.contains('.') {
            return None;
        }
        for name in names_of(entry) {
            if !recordable(&name, &dns.zone) {
                continue;
            }
            let opposite = changes
                .iter()
                .position(|c| c.name == name && c.address == *address && c.add != add);
            match opposite {
                Some(i) => {
                    changes.remove(i);
                }
                None => changes.push(NameChange {
                    name,
                    address: *address,
                    add,
                }),
            }
        }
    }
    // Each change must find the records as the members leaving and joining say.
    let holds = |name: &str, address: IpAddr| {
        find(&dns.records, name, address)
            .ok()
            .and_then(|at| dns.records.get(at))
            .is_some_and(|r| position(&r.addresses, address).is_ok())
    };
    changes
        .iter()
        .all(|c| holds(&c.name, c.address) != c.add)
        .then_some(changes)
}

/// Makes `changes` (from [`changes`] on these records) in `records`: a part or record
/// shared with another list is copied before it is edited, the others stay shared.
pub(super) fn apply(records: &mut DnsRecords, changes: &[NameChange]) {
    for change in changes {
        let at = find(records, &change.name, change.address);
        match (at, change.add) {
            (Ok(at), true) => {
                let Some(record) = records.get(at) else {
                    continue;
                };
                if let Err(j) = position(&record.addresses, change.address)
                    && let Some(record) = records.get_mut(at)
                {
                    record.addresses.insert(j, change.address.to_string());
                }
            }
            (Err(at), true) => records.insert(
                at,
                DnsRecord {
                    name: change.name.clone(),
                    addresses: vec![change.address.to_string()],
                },
            ),
            (Ok(at), false) => {
                let Some(record) = records.get(at) else {
                    continue;
                };
                let Ok(j) = position(&record.addresses, change.address) else {
                    continue;
                };
                if record.addresses.len() == 1 {
                    records.remove(at);
                } else if let Some(record) = records.get_mut(at) {
                    record.addresses.remove(j);
                }
            }
            (Err(_), false) => {}
        }
    }
}

/// Where the record of `name` holding `address`'s [`block`] is, in records sorted by name
/// and address.
fn find(records: &DnsRecords, name: &str, address: IpAddr) -> Result<At, At> {
    let wanted = Some(block(address));
    records.search_by(|r| (r.name.as_str(), block_of(r)).cmp(&(name, wanted)))
}

/// Where `address` is in a record's addresses, sorted as addresses (not as text).
fn position(addresses: &[String], address: IpAddr) -> Result<usize, usize> {
    addresses.binary_search_by(|a| {
        a.parse::<IpAddr>()
            .map_or(std::cmp::Ordering::Less, |a| a.cmp(&address))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, addresses: &[&str]) -> Arc<DnsRecord> {
        Arc::new(DnsRecord {
            name: name.to_owned(),
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        })
    }

    /// The `n`th record of `records`.
    fn nth<'r>(records: &'r DnsRecords) -> impl Fn(usize) -> &'r Arc<DnsRecord> {
        move |n| {
            records
                .iter()
                .nth(n)
                .unwrap_or_else(|| panic!("no record {n}"))
        }
    }

    fn change(name: &str, address: &str, add: bool) -> NameChange {
        NameChange {
            name: name.to_owned(),
            address: address.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            add,
        }
    }

    /// Edited while another list holds the same records (the hub's last version), the
    /// records a change names are copied and edited, the others stay shared, and the
    /// list the other holds is as it was.
    #[test]
    fn an_edit_copies_only_the_records_it_changes() {
        let held: DnsRecords = vec![
            record("a.members.red", &["10.0.0.1"]),
            record("b.members.red", &["10.0.0.9"]),
            record("members.red", &["10.0.0.1", "10.0.0.9"]),
        ]
        .into();
        let mut records = held.clone();
        apply(
            &mut records,
            &[
                change("c.members.red", "10.0.0.10", true),
                change("members.red", "10.0.0.10", true),
                change("a.members.red", "10.0.0.1", false),
                change("members.red", "10.0.0.1", false),
            ],
        );
        let names: Vec<(&str, Vec<&str>)> = records
            .iter()
            .map(|r| {
                let addresses = r.addresses.iter().map(String::as_str).collect();
                (r.name.as_str(), addresses)
            })
            .collect();
        assert_eq!(
            names,
            [
                ("b.members.red", vec!["10.0.0.9"]),
                ("c.members.red", vec!["10.0.0.10"]),
                // Sorted as addresses: .9 before .10.
                ("members.red", vec!["10.0.0.9", "10.0.0.10"]),
            ]
        );
        let (records, held) = (nth(&records), nth(&held));
        assert!(Arc::ptr_eq(records(0), held(1)), "b was copied");
        assert!(!Arc::ptr_eq(records(2), held(2)));
        assert_eq!(held(2).addresses, ["10.0.0.1", "10.0.0.9"]);
        assert_eq!(held(0).addresses, ["10.0.0.1"]);
    }

    /// A name's addresses are held by block (a /24, a /120): a member joining or leaving
    /// copies its block's record alone, and a block left empty goes.
    #[test]
    fn an_edit_copies_only_the_block_of_the_address() {
        let held: DnsRecords = vec![
            record("members.red", &["10.0.0.1", "10.0.0.200"]),
            record("members.red", &["10.0.1.1"]),
            record("members.red", &["fd00::1"]),
        ]
        .into();
        let mut records = held.clone();
        apply(
            &mut records,
            &[
                change("members.red", "10.0.1.2", true),
                change("members.red", "10.0.2.1", true),
                change("members.red", "fd00::1", false),
                change("members.red", "fd00::1:0", true),
            ],
        );
        let blocks: Vec<Vec<&str>> = records
            .iter()
            .map(|r| r.addresses.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            blocks,
            [
                vec!["10.0.0.1", "10.0.0.200"],
                vec!["10.0.1.1", "10.0.1.2"],
                vec!["10.0.2.1"],
                vec!["fd00::1:0"],
            ]
        );
        let (records, held) = (nth(&records), nth(&held));
        assert!(
            Arc::ptr_eq(records(0), held(0)),
            "the first block was copied"
        );
        assert_eq!(held(1).addresses, ["10.0.1.1"]);
    }
}
