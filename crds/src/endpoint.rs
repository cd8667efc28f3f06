//! `Endpoint`: workloads that attach to a NetworkService.

use crate::Members;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::schema::{
    self, DNS_LABEL, DNS_SUBDOMAIN, HOST_PORT, INTERFACE_NAME, IP_MAX_LEN, SPIFFE_ID,
    SPIFFE_ID_MAX_LEN, WIREGUARD_KEY,
};

/// Attaches workloads to a NetworkService: either the pods of this namespace that a
/// label selector picks, or one external host (a VM, a bare-metal server, a workload of
/// another company) that brings its own WireGuard key and SPIFFE ID. Each workload joins
/// only if it is admitted (see Admission); status.members says who joined and why.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wireway.dev",
    version = "v1alpha1",
    kind = "Endpoint",
    doc = "Workloads (pods by label selector, or one external host) that attach to a NetworkService. status.members says which were admitted, why, and their addresses.",
    namespaced,
    shortname = "nsep",
    category = "wireway",
    status = "EndpointStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.networkService.name","description":"NetworkService the workloads attach to"}"#,
    printcolumn = r#"{"name":"Admitted","type":"integer","jsonPath":".status.admittedCount","description":"Workloads admitted to the service"}"#,
    printcolumn = r#"{"name":"Rejected","type":"integer","jsonPath":".status.rejectedCount","description":"Workloads not admitted (see status.members)"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.podSelector) != has(self.external)").message("exactly one of podSelector or external must be set"),
    validation = Rule::new("!has(self.interfaceName) || has(self.podSelector)").message("interfaceName applies to pods only; an external endpoint names its own interfaces").field_path(".interfaceName")
)]
pub struct EndpointSpec {
    /// The NetworkService to attach to.
    pub network_service: NetworkServiceRef,

    /// Selects pods in this Endpoint's namespace; each selected pod becomes a member. An
    /// empty selector ({}) selects every pod of the namespace. Exactly one of podSelector
    /// and external is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// A host outside the cluster that joins the service with its own WireGuard key.
    /// Exactly one of podSelector and external is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalEndpoint>,

    /// Name of the interface that appears inside each selected pod (at most 15
    /// characters; letters, digits, '-', '_' and '.'). Defaults to "nsm-" followed by the
    /// service's name, shortened to fit. Must differ between the services a pod joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 15), regex(pattern = INTERFACE_NAME))]
    pub interface_name: Option<String>,
}

/// A reference to a NetworkService, possibly in another namespace.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkServiceRef {
    /// Name of the NetworkService.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN))]
    pub name: String,

    /// Namespace of the NetworkService; defaults to the Endpoint's own. A service in
    /// another namespace admits this Endpoint's workloads only if an Admission in that
    /// namespace allows them: the owner of a service decides who joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_LABEL))]
    pub namespace: Option<String>,
}

/// A host outside the cluster: it runs WireGuard itself and is configured by its owner.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalEndpoint {
    /// The host's WireGuard public key (44 characters of base64, as `wg pubkey` prints).
    #[schemars(length(min = 44, max = 44), regex(pattern = WIREGUARD_KEY))]
    pub public_key: String,

    /// Where the host receives WireGuard packets, as host:port (192.0.2.10:51820,
    /// [2001:db8::10]:51820 or vm.example.com:51820). Omit it for a host behind NAT: it
    /// then connects to the nodes, and persistentKeepalive keeps the path open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 261), regex(pattern = HOST_PORT))]
    pub endpoint: Option<String>,

    /// The host's address inside the service: a single IP within the service's cidr and
    /// outside every node's prefix. The nodes route it to this host, and WireGuard accepts
    /// from the host only packets with this source address.
    #[schemars(length(max = IP_MAX_LEN))]
    #[x_kube(validation = Rule::new("isIP(self)").message("must be an IP address such as 10.100.255.10 or fd00:100::10"))]
    pub address: String,

    /// The host's identity, for example spiffe://cluster.local/ns/red/vm/backup. Nothing
    /// proves a declared identity, so it is confined: it must lie in this Endpoint's
    /// namespace's own path of the cluster's trust domain
    /// (spiffe://<trust-domain>/ns/<namespace>/...), unless an IdentityGrant for the
    /// namespace matches it; otherwise the host is refused (reason IdentityNotGranted).
    /// Then the service's Admissions decide: an external host is never admitted by
    /// default, even in the service's own namespace.
    #[schemars(length(max = SPIFFE_ID_MAX_LEN), regex(pattern = SPIFFE_ID))]
    pub spiffe_id: String,

    /// Seconds between keepalive packets the nodes send to this host, to keep NAT and
    /// firewall state open; omit or 0 to send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub persistent_keepalive: Option<i32>,
}

/// What became of the workloads an Endpoint selects.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current state: `Ready` is True when every selected workload is admitted, has an
    /// address and is in place on its node (reason Ready, or NoMembers when it selects
    /// none); otherwise False with a reason (NetworkServiceNotFound, InvalidSpec,
    /// IdentityNotGranted, NotAdmitted, Denied, DuplicateMember, InterfaceNameConflict,
    /// OverlappingPrefix, DuplicateNodeKey, AddressPoolExhausted, Progressing, or the
    /// reason the service is refused: OutsideServicePools, ReservedRange,
    /// ListenPortOutOfRange, OverlappingCidr).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,

    /// Number of workloads admitted to the service.
    #[serde(default)]
    pub admitted_count: i32,

    /// Number of workloads selected but not admitted.
    #[serde(default)]
    pub rejected_count: i32,

    /// One entry per selected workload: its identity, the admission decision with the
    /// rule behind it, and its address. Addresses recorded here are kept across operator
    /// restarts, and a pod recreated under the same name on the same node (a StatefulSet
    /// pod) gets its address back.
    #[serde(default, skip_serializing_if = "Members::is_empty")]
    #[schemars(schema_with = "members")]
    pub members: Members,
}

/// One workload of an Endpoint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// The pod's name, or for an external endpoint the Endpoint's own name.
    pub workload: String,

    /// Node the pod runs on; empty for an external endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,

    /// The workload's SPIFFE ID, the identity admission decided on.
    pub identity: String,

    /// Whether the workload is admitted to the service.
    pub admitted: bool,

    /// Why: the admission decision (Admitted, Denied, NotAdmitted; IdentityNotGranted for
    /// an external host claiming an identity its namespace may not claim, decided before
    /// any Admission), or why a workload is not a member all the same: DuplicateMember
    /// (it is one through another Endpoint), InterfaceNameConflict, OverlappingPrefix,
    /// DuplicateNodeKey (its node presents another node's WireGuard key), or InvalidSpec
    /// (also for an identity that does not parse).
    pub reason: String,

    /// The rule behind the decision, for a person: for example "same namespace as the
    /// service", "allowed by Admission green/admit-bridge (allow[0]: spiffeId)".
    pub message: String,

    /// The workload's address in the service; absent when not admitted or when no
    /// address is left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// For a service shared with peer clusters: each peer's decision on this member, as
    /// its operator last reported it (the owner of each half decides who joins it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "peer_decisions")]
    pub peers: Vec<PeerDecision>,
}

/// A peer cluster's decision on one of this cluster's members.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerDecision {
    /// Name of the PeerCluster.
    pub cluster: String,

    /// Whether the peer admits the member to its half of the service.
    pub admitted: bool,

    /// Why, as the peer said: Admitted, Denied, NotAdmitted, OutsideTrustDomain,
    /// OutsideSlice.
    pub reason: String,

    /// The rule behind it, as the peer said.
    pub message: String,
}

fn peer_decisions(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<PeerDecision>>();
    schema::list_map(&mut schema, "cluster");
    schema
}

fn members(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<MemberStatus>>();
    schema::list_map(&mut schema, "workload");
    schema
}
