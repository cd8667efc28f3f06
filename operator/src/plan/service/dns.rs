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

use wireway_crds::NetworkService;
use wireway_crds::conditions::reason;
use wireway_proto::{DnsRecord, ServiceDns};

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

/// The records of the service's members under `zone`: each pod member by
/// `<pod>.<endpoint>.<namespace>`, and each Endpoint by `<endpoint>.<namespace>` with
/// all its members (an external host's only name). Sorted, as the NodeState wants.
pub(super) fn records(zone: &str, entries: &[Entry<'_>]) -> ServiceDns {
    let mut names: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
    let mut endpoints: BTreeMap<&ObjectKey, String> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.member()) {
        let Some(address) = entry.address else {
            continue;
        };
        let endpoint = endpoints.entry(&entry.endpoint).or_insert_with(|| {
            format!("{}.{}", entry.endpoint.name, entry.endpoint.namespace).to_ascii_lowercase()
        });
        if let Workload::Pod { pod, .. } = entry.kind {
            let mut name = format!("{}.{endpoint}", pod.name);
            name.make_ascii_lowercase();
            names.entry(name).or_default().push(address);
        }
        match names.get_mut(endpoint.as_str()) {
            Some(addresses) => addresses.push(address),
            None => {
                names.insert(endpoint.clone(), vec![address]);
            }
        }
    }
    let records: Vec<DnsRecord> = names
        .into_iter()
        // The name under the zone: the name, a dot, the zone.
        .filter(|(name, _)| {
            name.len() + 1 + zone.len() <= 253 && is_dns_name(name) && is_dns_name(zone)
        })
        .map(|(name, mut addresses)| {
            addresses.sort();
            addresses.dedup();
            DnsRecord {
                name,
                addresses: addresses.iter().map(ToString::to_string).collect(),
            }
        })
        .collect();
    ServiceDns {
        zone: zone.to_owned(),
        records: records.into(),
    }
}
