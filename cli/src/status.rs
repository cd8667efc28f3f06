//! `wireway status`: the operator's view of every node and object, like `kubectl get`,
//! without a cluster.

use std::fmt::Write as _;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use wireway_crds::conditions::READY;
use wireway_operator::snapshot::Snapshot;
use wireway_runtime::listen::Address;

use crate::http;
use crate::table::render;

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Tables.
    Table,
    /// Tables, and every workload of every Endpoint.
    Wide,
    /// The operator's status document, as JSON.
    Json,
}

/// Why the operator's status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer.
    #[error(transparent)]
    Get(#[from] http::GetError),
    /// An answer other than 200.
    #[error("failed to fetch /status from {operator}: it answered {code}: {body}")]
    Status {
        /// The operator's HTTP port.
        operator: Address,
        /// The status code.
        code: u16,
        /// What it said.
        body: String,
    },
    /// A status that does not parse.
    #[error("failed to parse the status {operator} sent")]
    Parse {
        /// The operator's HTTP port.
        operator: Address,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Fetches the operator's snapshot.
pub async fn fetch(operator: &Address) -> Result<Snapshot, FetchError> {
    let (code, body) = http::get(operator, "/status").await?;
    if code != 200 {
        return Err(FetchError::Status {
            operator: operator.clone(),
            code,
            body,
        });
    }
    serde_json::from_str(&body).map_err(|source| FetchError::Parse {
        operator: operator.clone(),
        source,
    })
}

/// (status, reason, message) of the `Ready` condition.
pub fn ready_of(conditions: &[Condition]) -> (String, String, String) {
    conditions.iter().find(|c| c.type_ == READY).map_or_else(
        || ("Unknown".into(), "-".into(), String::new()),
        |c| (c.status.clone(), c.reason.clone(), c.message.clone()),
    )
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// The snapshot as tables.
pub fn render_snapshot(snapshot: &Snapshot, wide: bool) -> String {
    let mut out = String::new();
    if let Some(waiting) = &snapshot.waiting_for {
        let _ = writeln!(out, "operator not ready: {waiting}\n");
    }
    let nodes: Vec<Vec<String>> = snapshot
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                if n.connected { "yes" } else { "no" }.to_owned(),
                n.backend.clone().unwrap_or_else(|| "-".into()),
                n.underlay.clone().unwrap_or_else(|| "-".into()),
                n.desired_version.to_string(),
                n.applied_version.to_string(),
                or_dash(&n.services.join(",")),
                format!("{}/{}", n.peers_active, n.peers),
                or_dash(
                    &n.errors
                        .iter()
                        .map(|e| format!("{}:{}", e.category, e.count))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                or_dash(&n.problems.join("; ")),
            ]
        })
        .collect();
    out.push_str("NODES\n");
    out.push_str(&render(
        &[
            "NAME",
            "CONNECTED",
            "BACKEND",
            "UNDERLAY",
            "VERSION",
            "APPLIED",
            "SERVICES",
            "PEERS",
            "ERRORS",
            "PROBLEMS",
        ],
        &nodes,
    ));
    if wide {
        let errors: Vec<Vec<String>> = snapshot
            .nodes
            .iter()
            .flat_map(|n| {
                n.errors.iter().map(|e| {
                    vec![
                        n.name.clone(),
                        e.category.clone(),
                        e.count.to_string(),
                        e.last_message.clone(),
                    ]
                })
            })
            .collect();
        if !errors.is_empty() {
            out.push_str("\nNODE ERRORS (since each agent started)\n");
            out.push_str(&render(&["NODE", "CATEGORY", "COUNT", "LAST"], &errors));
        }
    }
    let services: Vec<Vec<String>> = snapshot
        .network_services
        .iter()
        .map(|s| {
            let status = s.status.clone().unwrap_or_default();
            let (ready, reason, message) = ready_of(&status.conditions);
            vec![
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
                s.spec.cidr.clone(),
                status.interface_name.unwrap_or_else(|| "-".into()),
                status.node_count.to_string(),
                status.member_count.to_string(),
                ready,
                reason,
                message,
            ]
        })
        .collect();
    out.push_str("\nNETWORKSERVICES\n");
    out.push_str(&render(
        &[
            "NAMESPACE",
            "NAME",
            "CIDR",
            "INTERFACE",
            "NODES",
            "MEMBERS",
            "READY",
            "REASON",
            "MESSAGE",
        ],
        &services,
    ));
    let mut endpoints = Vec::new();
    for e in &snapshot.endpoints {
        let status = e.status.clone().unwrap_or_default();
        let (ready, reason, message) = ready_of(&status.conditions);
        let own = e.metadata.namespace.clone().unwrap_or_default();
        let service = format!(
            "{}/{}",
            e.spec.network_service.namespace.as_deref().unwrap_or(&own),
            e.spec.network_service.name
        );
        endpoints.push(vec![
            own,
            e.metadata.name.clone().unwrap_or_default(),
            service,
            status.admitted_count.to_string(),
            status.rejected_count.to_string(),
            ready,
            reason,
            message,
        ]);
        if wide {
            for m in &status.members {
                endpoints.push(vec![
                    String::new(),
                    format!("  {}", m.workload),
                    m.node.clone().unwrap_or_else(|| "(external)".into()),
                    m.address.clone().unwrap_or_else(|| "-".into()),
                    String::new(),
                    if m.admitted { "yes" } else { "no" }.to_owned(),
                    m.reason.clone(),
                    format!("{}: {}", m.identity, m.message),
                ]);
            }
        }
    }
    out.push_str("\nENDPOINTS\n");
    out.push_str(&render(
        &[
            "NAMESPACE",
            "NAME",
            "SERVICE",
            "ADMITTED",
            "REJECTED",
            "READY",
            "REASON",
            "MESSAGE",
        ],
        &endpoints,
    ));
    let admissions: Vec<Vec<String>> = snapshot
        .admissions
        .iter()
        .map(|a| {
            let status = a.status.clone().unwrap_or_default();
            let (ready, reason, message) = ready_of(&status.conditions);
            let ns = a.metadata.namespace.clone().unwrap_or_default();
            vec![
                ns.clone(),
                a.metadata.name.clone().unwrap_or_default(),
                format!("{ns}/{}", a.spec.network_service),
                status.admitted_count.to_string(),
                status.denied_count.to_string(),
                ready,
                reason,
                message,
            ]
        })
        .collect();
    out.push_str("\nADMISSIONS\n");
    out.push_str(&render(
        &[
            "NAMESPACE",
            "NAME",
            "SERVICE",
            "ADMITTED",
            "DENIED",
            "READY",
            "REASON",
            "MESSAGE",
        ],
        &admissions,
    ));
    if !snapshot.problems.is_empty() {
        out.push_str("\nPROBLEMS (not in effect; the last good content is kept)\n");
        for p in &snapshot.problems {
            let _ = writeln!(out, "{p}");
        }
    }
    out
}
