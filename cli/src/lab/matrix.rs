//! The reachability matrix: every workload pings every workload address of every
//! service, and the result is compared with what the plan and the admission rules say.
//!
//! Expected: a workload reaches an address when both are admitted members of the same
//! service (the address being the other's address in that service); nothing else. That
//! covers isolation between services, workloads outside every service, and workloads
//! that asked to join and were not admitted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use wireway_operator::snapshot::Snapshot;

use crate::table::render;

/// One address to ping: a workload's address in a service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The service, `namespace/name`.
    pub service: String,
    /// The workload, `namespace/name`.
    pub workload: String,
    /// Its address in the service.
    pub address: String,
}

/// A workload of the service that is not in the lab (an external host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct External {
    /// The service.
    pub service: String,
    /// The Endpoint, `namespace/name`.
    pub endpoint: String,
    /// Its address, when admitted.
    pub address: Option<String>,
    /// The admission decision's reason.
    pub reason: String,
}

/// What the plan says: rows (workloads), columns (targets) and the expected cells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expectation {
    /// Workloads that ping, `namespace/name`.
    pub rows: Vec<String>,
    /// Addresses pinged.
    pub columns: Vec<Target>,
    /// `expected[row][column]`: whether the row must reach the column; `None` for a
    /// workload's own address.
    pub expected: Vec<Vec<Option<bool>>>,
    /// Workloads that asked to join a service and were not admitted, with why.
    pub not_admitted: Vec<String>,
    /// Admitted or refused members that are not lab workloads (not pinged).
    pub externals: Vec<External>,
}

/// Expectation and measurement together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Matrix {
    /// What the plan says.
    #[serde(flatten)]
    pub expectation: Expectation,
    /// `reached[row][column]`: whether a ping was answered; `None` for own addresses.
    pub reached: Vec<Vec<Option<bool>>>,
}

/// `cells[row][column]`, `None` outside the matrix.
fn at(cells: &[Vec<Option<bool>>], row: usize, column: usize) -> Option<bool> {
    cells
        .get(row)
        .and_then(|x| x.get(column))
        .copied()
        .flatten()
}

impl Matrix {
    /// A cell: (expected, reached); `None` for a workload's own address, or not pinged.
    fn cell(&self, row: usize, column: usize) -> (Option<bool>, Option<bool>) {
        (
            at(&self.expectation.expected, row, column),
            at(&self.reached, row, column),
        )
    }

    /// The cells where what was measured differs from what was expected:
    /// (row, target, reached).
    pub fn differences(&self) -> Vec<(&str, &Target, bool)> {
        let e = &self.expectation;
        let mut out = Vec::new();
        for (r, row) in e.rows.iter().enumerate() {
            for (c, column) in e.columns.iter().enumerate() {
                if let (Some(want), Some(got)) = self.cell(r, c)
                    && want != got
                {
                    out.push((row.as_str(), column, got));
                }
            }
        }
        out
    }

    /// Whether everything measured is as expected.
    pub fn as_expected(&self) -> bool {
        self.differences().is_empty()
    }
}

/// What the operator's statuses say `workloads` (the lab's pods, `namespace/name`) must
/// reach.
pub fn expect(workloads: &BTreeSet<String>, snapshot: &Snapshot) -> Expectation {
    expect_clusters(&[ClusterView {
        name: None,
        workloads,
        snapshot,
    }])
}

/// One cluster of a lab of several: its name, its pods and its operator's statuses.
#[derive(Debug, Clone, Copy)]
pub struct ClusterView<'a> {
    /// The cluster's name, which qualifies its workloads (`east:red/web`); `None` in a
    /// lab of one cluster.
    pub name: Option<&'a str>,
    /// Its pods, `namespace/name`.
    pub workloads: &'a BTreeSet<String>,
    /// Its operator's statuses.
    pub snapshot: &'a Snapshot,
}

/// A workload as rows and columns name it: `namespace/name`, or `cluster:namespace/name`.
fn qualified(cluster: Option<&str>, workload: &str) -> String {
    cluster.map_or_else(|| workload.to_owned(), |c| format!("{c}:{workload}"))
}

/// What the clusters' statuses say their workloads must reach: within a cluster, the
/// members of one service reach each other; across clusters, two members of one shared
/// service reach each other when each cluster admits the other's member (as the other
/// cluster reports it in the Endpoint's `members[].peers`).
pub fn expect_clusters(clusters: &[ClusterView<'_>]) -> Expectation {
    // Each member's services, and the clusters that admit it (its own included).
    let mut member_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut admitted_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut columns = BTreeSet::new();
    let mut not_admitted = Vec::new();
    let mut externals = Vec::new();
    for cluster in clusters {
        for endpoint in &cluster.snapshot.endpoints {
            let namespace = endpoint.metadata.namespace.clone().unwrap_or_default();
            let name = endpoint.metadata.name.clone().unwrap_or_default();
            let reference = &endpoint.spec.network_service;
            let service = format!(
                "{}/{}",
                reference.namespace.as_deref().unwrap_or(&namespace),
                reference.name
            );
            let members = endpoint.status.iter().flat_map(|s| s.members.iter());
            for member in members {
                let in_lab = member.node.is_some();
                let local = format!("{namespace}/{}", member.workload);
                let admitted_address = member.address.clone().filter(|_| member.admitted);
                if !in_lab {
                    externals.push(External {
                        service: service.clone(),
                        endpoint: format!("{namespace}/{name}"),
                        address: admitted_address,
                        reason: member.reason.clone(),
                    });
                    continue;
                }
                if !cluster.workloads.contains(&local) {
                    continue;
                }
                let workload = qualified(cluster.name, &local);
                match admitted_address {
                    Some(address) => {
                        member_of
                            .entry(workload.clone())
                            .or_default()
                            .insert(service.clone());
                        let by = admitted_by.entry(workload.clone()).or_default();
                        by.insert(cluster.name.unwrap_or_default().to_owned());
                        by.extend(
                            member
                                .peers
                                .iter()
                                .filter(|p| p.admitted)
                                .map(|p| p.cluster.clone()),
                        );
                        columns.insert(Target {
                            service: service.clone(),
                            workload,
                            address,
                        });
                    }
                    None => not_admitted.push(format!(
                        "{workload} is not in {service}: {} ({})",
                        member.reason, member.message
                    )),
                }
            }
        }
    }
    let cluster_of = |workload: &str| -> String {
        workload
            .split_once(':')
            .map(|(c, _)| c.to_owned())
            .unwrap_or_default()
    };
    let rows: Vec<String> = clusters
        .iter()
        .flat_map(|c| c.workloads.iter().map(|w| qualified(c.name, w)))
        .collect();
    let columns: Vec<Target> = columns.into_iter().collect();
    let admits = |workload: &str, cluster: &str| {
        admitted_by
            .get(workload)
            .is_some_and(|by| by.contains(cluster))
    };
    let expected = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| {
                    (c.workload != *row).then(|| {
                        let same_service = member_of
                            .get(row.as_str())
                            .is_some_and(|services| services.contains(&c.service));
                        // Each side's cluster admits the other.
                        same_service
                            && admits(row, &cluster_of(&c.workload))
                            && admits(&c.workload, &cluster_of(row))
                    })
                })
                .collect()
        })
        .collect();
    Expectation {
        rows,
        columns,
        expected,
        not_admitted,
        externals,
    }
}

/// The matrix as a table, then what differs (or that nothing does), then notes.
pub fn render_matrix(matrix: &Matrix) -> String {
    let e = &matrix.expectation;
    let mut headers: Vec<String> = vec!["FROM \\ TO".to_owned()];
    headers.extend(e.columns.iter().map(|c| c.workload.clone()));
    let mut rows = vec![
        std::iter::once("(service)".to_owned())
            .chain(e.columns.iter().map(|c| c.service.clone()))
            .collect::<Vec<_>>(),
        std::iter::once("(address)".to_owned())
            .chain(e.columns.iter().map(|c| c.address.clone()))
            .collect(),
    ];
    for (r, row) in e.rows.iter().enumerate() {
        let mut cells = vec![row.clone()];
        for c in 0..e.columns.len() {
            cells.push(match matrix.cell(r, c) {
                (None, _) => "self".to_owned(),
                (Some(true), Some(true)) => "yes".to_owned(),
                (Some(false), Some(false)) => "-".to_owned(),
                (Some(false), Some(true)) => "YES (expected -)".to_owned(),
                (Some(true), Some(false)) => "NO (expected yes)".to_owned(),
                (Some(_), None) => "?".to_owned(),
            });
        }
        rows.push(cells);
    }
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    let mut out =
        String::from("REACHABILITY (each row pings each column's address: yes = answered)\n");
    out.push_str(&render(&header_refs, &rows));
    let differences = matrix.differences();
    if differences.is_empty() {
        let _ = writeln!(
            out,
            "\nAs planned: {} of {} pairs reach each other, every other pair is cut off.",
            e.expected
                .iter()
                .flatten()
                .filter(|x| **x == Some(true))
                .count(),
            e.expected.iter().flatten().filter(|x| x.is_some()).count()
        );
    } else {
        let _ = writeln!(out, "\n{} pairs differ from the plan:", differences.len());
        for (row, target, reached) in differences {
            let _ = writeln!(
                out,
                "  {row} -> {} {} in {}: {}",
                target.workload,
                target.address,
                target.service,
                if reached {
                    "reached, must not be"
                } else {
                    "not reached, must be"
                }
            );
        }
    }
    if !e.not_admitted.is_empty() {
        out.push_str("\nNot admitted (no interface, no route):\n");
        for line in &e.not_admitted {
            let _ = writeln!(out, "  {line}");
        }
    }
    if !e.externals.is_empty() {
        out.push_str("\nOutside the lab (peers on every node of their service, not pinged):\n");
        for x in &e.externals {
            let _ = writeln!(
                out,
                "  {} in {}: {} ({})",
                x.endpoint,
                x.service,
                x.address.as_deref().unwrap_or("no address"),
                x.reason
            );
        }
    }
    out
}

#[cfg(test)]
mod tests;
