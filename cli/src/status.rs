//! `wireway status`: the operator's view of every node and object, like `kubectl get`,
//! without a cluster.
//!
//! The operator shows it on its gRPC port (the status API) to administrators only: a
//! client certificate proving `spiffe://<trust-domain>/wireway/admin` (`wireway certs
//! admin`; the lab issues one), or a bearer token of a user allowed to get
//! `networkservices/status` in every namespace. By default it asks the lab's operator
//! with the lab's administrator certificate.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use wireway_crds::conditions::READY;
use wireway_operator::snapshot::Snapshot;
use wireway_proto::status::GetStatusRequest;
use wireway_proto::status::status_api_client::StatusApiClient;
use wireway_runtime::listen::grpc_channel;
use wireway_runtime::tls::{BearerToken, OPERATOR_SERVER_NAME, TlsArgs, TlsError};

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

/// Where the operator is, and how to prove an administrator to it.
#[derive(Debug, Clone, clap::Args)]
pub struct Access {
    /// The operator's gRPC port: HOST:PORT, https://HOST:PORT or unix:PATH (default: the
    /// lab's).
    #[arg(
        long,
        env = "WIREWAY_OPERATOR",
        default_value = "unix:/run/wireway/lab/operator.sock"
    )]
    pub operator: String,
    /// The DNS name the operator's certificate must carry.
    #[arg(long, env = "WIREWAY_OPERATOR_NAME", default_value = OPERATOR_SERVER_NAME)]
    pub operator_name: String,
    /// PEM file of the CA that signed the operator's certificate (default: the lab's).
    #[arg(
        long = "tls-ca",
        env = "WIREWAY_TLS_CA",
        default_value = "/run/wireway/lab/pki/admin/ca.crt"
    )]
    pub ca: PathBuf,
    /// PEM file of an administrator's certificate, proving
    /// spiffe://<trust-domain>/wireway/admin (`wireway certs admin`; default: the lab's).
    #[arg(
        long = "tls-cert",
        env = "WIREWAY_TLS_CERT",
        default_value = "/run/wireway/lab/pki/admin/tls.crt"
    )]
    pub cert: PathBuf,
    /// PEM file of that certificate's private key.
    #[arg(
        long = "tls-key",
        env = "WIREWAY_TLS_KEY",
        default_value = "/run/wireway/lab/pki/admin/tls.key"
    )]
    pub key: PathBuf,
    /// Prove an administrator with the bearer token in this file instead of a
    /// certificate (in a cluster: a token for audience wireway-operator of a user who
    /// may get networkservices/status in every namespace); TLS then needs only --tls-ca.
    #[arg(long, env = "WIREWAY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Talk to an operator that runs without TLS (debugging only).
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// The largest status accepted (tonic's default, 4 MiB, is a few hundred nodes).
const MAX_STATUS_BYTES: usize = 1 << 30;

/// Why the operator's status could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The TLS files do not load.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No connection.
    #[error("failed to connect to the operator at {operator}")]
    Connect {
        /// The operator's gRPC port.
        operator: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The operator answered with an error.
    #[error("failed to get the status from {operator}: {code:?}: {message}")]
    Refused {
        /// The operator's gRPC port.
        operator: String,
        /// The gRPC code (`PermissionDenied`, `Unauthenticated`, ...).
        code: tonic::Code,
        /// What it said.
        message: String,
    },
    /// A status that does not parse.
    #[error("failed to parse the status {operator} sent")]
    Parse {
        /// The operator's gRPC port.
        operator: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// A connection to the operator's status API, to ask again and again.
#[derive(Debug, Clone)]
pub struct StatusClient {
    operator: String,
    client: StatusApiClient<InterceptedService<Channel, BearerToken>>,
}

impl StatusClient {
    /// Connects to the operator `access` names, with its credentials.
    pub async fn connect(access: &Access) -> Result<Self, FetchError> {
        let files = TlsArgs {
            ca: access.ca.clone(),
            cert: access.cert.clone(),
            key: access.key.clone(),
            insecure_plaintext: access.insecure_plaintext,
        };
        let pem = match &access.token_file {
            Some(_) => files.load_ca()?,
            None => files.load()?,
        };
        let tls = pem.map(|pem| pem.client(&access.operator_name));
        let channel = grpc_channel(&access.operator, tls, |endpoint| {
            endpoint.connect_timeout(Duration::from_secs(5))
        })
        .await
        .map_err(|source| FetchError::Connect {
            operator: access.operator.clone(),
            source,
        })?;
        let client =
            StatusApiClient::with_interceptor(channel, BearerToken(access.token_file.clone()))
                .max_decoding_message_size(MAX_STATUS_BYTES);
        Ok(Self {
            operator: access.operator.clone(),
            client,
        })
    }

    /// The operator's snapshot.
    pub async fn fetch(&mut self) -> Result<Snapshot, FetchError> {
        let response = self
            .client
            .get(GetStatusRequest {})
            .await
            .map_err(|status| FetchError::Refused {
                operator: self.operator.clone(),
                code: status.code(),
                message: status.message().to_owned(),
            })?;
        serde_json::from_slice(&response.into_inner().snapshot_json).map_err(|source| {
            FetchError::Parse {
                operator: self.operator.clone(),
                source,
            }
        })
    }
}

/// Fetches the operator's snapshot once.
pub async fn fetch(access: &Access) -> Result<Snapshot, FetchError> {
    StatusClient::connect(access).await?.fetch().await
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
    let peers: Vec<Vec<String>> = snapshot
        .network_services
        .iter()
        .flat_map(|s| {
            let service = format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            );
            let status = s.status.clone().unwrap_or_default();
            status.peers.into_iter().map(move |p| {
                vec![
                    service.clone(),
                    p.cluster,
                    if p.connected { "yes" } else { "no" }.to_owned(),
                    p.last_sync
                        .map_or_else(|| "-".to_owned(), |t| t.0.to_string()),
                    p.nodes.to_string(),
                    p.members_admitted.to_string(),
                    p.members_refused.to_string(),
                    or_dash(p.reason.as_deref().unwrap_or_default()),
                    or_dash(p.message.as_deref().unwrap_or_default()),
                ]
            })
        })
        .collect();
    if !peers.is_empty() {
        out.push_str("\nPEER CLUSTERS (per shared service)\n");
        out.push_str(&render(
            &[
                "SERVICE",
                "CLUSTER",
                "CONNECTED",
                "LAST SYNC",
                "NODES",
                "ADMITTED",
                "REFUSED",
                "REASON",
                "MESSAGE",
            ],
            &peers,
        ));
    }
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
            for m in status.members.iter() {
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
