//! `PeerCluster`: another cluster (of this company or another) whose operator federates
//! with this one, and what it may claim in the services shared with it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::schema::{
    self, CIDR_MAX_LEN, DNS_LABEL, DNS_SUBDOMAIN, HOST_PORT, SPIFFE_ID, SPIFFE_ID_MAX_LEN,
    TRUST_DOMAIN, TRUST_DOMAIN_MAX_LEN,
};

/// Most services one peer may share: bounds the CEL cost of the list's rules.
pub const MAX_SHARED_SERVICES: u32 = 256;
/// Largest trust bundle, in bytes (a few dozen PEM certificates).
pub const TRUST_BUNDLE_MAX_LEN: u32 = 65536;

/// A peer cluster: its operator's federation address, the trust domain its operator and
/// workloads belong to and the CA certificates that prove it, and for each service this
/// cluster shares with it, the slice of the service's cidr it may give its nodes.
///
/// The two operators connect over mutual TLS, each presenting an X.509 SVID of its own
/// trust domain, and exchange, per shared service, their nodes (WireGuard keys, underlay
/// endpoints, prefixes) and the members they admit. What the peer sends is held to this
/// object: members outside its trust domain and addresses outside its slice are refused
/// and installed nowhere. Which of its members join a service is still the service
/// owner's decision, in the service's Admissions (trustDomain, spiffeIdPrefix; deny
/// wins): a PeerCluster alone admits nobody.
///
/// Cluster-scoped and written only by cluster administrators: Wireway's RBAC gives no one
/// but the operator (which reads it and writes its status) any right on peerclusters.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wireway.dev",
    version = "v1alpha1",
    kind = "PeerCluster",
    doc = "Another cluster whose operator federates with this one: its federation address, trust domain and trust bundle, and the slice of each shared NetworkService it may claim. Cluster-scoped; written only by cluster administrators.",
    shortname = "nspeer",
    category = "wireway",
    status = "PeerClusterStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Trust Domain","type":"string","jsonPath":".spec.trustDomain","description":"The peer's SPIFFE trust domain"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address","description":"The peer operator's federation address"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Last Sync","type":"date","jsonPath":".status.lastSync"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.operatorIdentity) || self.operatorIdentity.startsWith('spiffe://' + self.trustDomain + '/')").message("operatorIdentity must lie in trustDomain").field_path(".operatorIdentity")
)]
pub struct PeerClusterSpec {
    /// The peer's SPIFFE trust domain, such as cluster-b.example.com: its operator proves
    /// an identity of it, and every member it sends must have an identity in it. Must
    /// differ from this cluster's own.
    #[schemars(length(min = 1, max = TRUST_DOMAIN_MAX_LEN), regex(pattern = TRUST_DOMAIN))]
    pub trust_domain: String,

    /// The SPIFFE ID the peer's operator presents; defaults to
    /// spiffe://<trustDomain>/wireway/operator. Any other identity of
    /// the trust domain (a workload's, say) is refused as a peer operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = SPIFFE_ID_MAX_LEN), regex(pattern = SPIFFE_ID))]
    pub operator_identity: Option<String>,

    /// Where the peer's operator serves federation, as host:port
    /// (fed.cluster-b.example.com:7443, 192.0.2.20:7443). Both operators connect to each
    /// other; one reachable side is enough for the exchange.
    #[schemars(length(min = 3, max = 261), regex(pattern = HOST_PORT))]
    pub address: String,

    /// The CA certificates (PEM) that sign the peer's SVIDs: its SPIFFE trust bundle. Only
    /// a certificate chaining to one of them, with a SPIFFE ID of trustDomain as its URI
    /// SAN, proves the peer.
    #[schemars(length(min = 1, max = TRUST_BUNDLE_MAX_LEN))]
    #[x_kube(validation = Rule::new("self.contains('-----BEGIN CERTIFICATE-----')").message("must hold PEM certificates (-----BEGIN CERTIFICATE-----)"))]
    pub trust_bundle: String,

    /// The NetworkServices of this cluster the peer takes part in, each with the slice of
    /// its cidr the peer's nodes get their prefixes from. The peer's half of a service is
    /// its own NetworkService of the same namespace and name, with the same cidr and this
    /// slice as its clusterPrefix. Omit a service to share nothing of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "shared_services")]
    pub services: Vec<SharedService>,
}

/// A NetworkService shared with a peer cluster, and the peer's slice of it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct SharedService {
    /// The NetworkService's namespace (here and in the peer).
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: String,

    /// The NetworkService's name (here and in the peer).
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,

    /// The peer's slice: every node prefix and member address it sends must lie inside
    /// it. It must lie inside the service's cidr and overlap neither this cluster's slice
    /// (the service's clusterPrefix, which the service must set) nor another peer's;
    /// otherwise the peer is refused for the service (reason OverlappingPrefix).
    #[schemars(length(max = CIDR_MAX_LEN))]
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("must be a CIDR prefix such as 10.100.128.0/17"),
        validation = Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()").message("must have its host bits clear")
    )]
    pub prefix: String,
}

fn shared_services(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<SharedService>>();
    schema.insert("maxItems".into(), MAX_SHARED_SERVICES.into());
    schema::list_map_keyed(&mut schema, &["namespace", "name"]);
    schema
}

/// What the operator knows of a peer cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerClusterStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current state: `Ready` is True (reason Connected) while the exchange with the
    /// peer's operator is up; otherwise False with a reason: Connecting (never heard
    /// from: unreachable, or it does not prove operatorIdentity with the trust bundle;
    /// the operator's log says which), Disconnected (it was; what it last sent stays
    /// installed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,

    /// When the peer's operator last sent its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<Time>,
}
