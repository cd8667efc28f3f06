//! `NetworkService`: a flat, private L3 domain (a vL3) that stretches across nodes,
//! clusters and companies, carried over WireGuard.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::schema::{self, CIDR_MAX_LEN};

/// A flat, private L3 domain: every member gets an address from `cidr` and reaches every
/// other member directly, across nodes and clusters, over WireGuard. Members attach
/// through Endpoints; workloads from outside this namespace join only when an Admission
/// here allows them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "wireway.dev",
    version = "v1alpha1",
    kind = "NetworkService",
    doc = "A flat, private L3 domain (a vL3) carried over WireGuard across nodes, clusters and companies. See spec for the address space and status for what the operator made of it.",
    namespaced,
    shortname = "nsvc",
    category = "wireway",
    status = "NetworkServiceStatus",
    derive = "PartialEq",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr","description":"Address space of the service"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodeCount","description":"Nodes hosting admitted members"}"#,
    printcolumn = r#"{"name":"Members","type":"integer","jsonPath":".status.memberCount","description":"Admitted members"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.clusterPrefix) == has(oldSelf.clusterPrefix)").message("clusterPrefix cannot be added or removed after creation").field_path(".clusterPrefix"),
    validation = Rule::new("!isCIDR(self.cidr) || self.nodePrefixLength >= cidr(self.cidr).prefixLength()").message("nodePrefixLength must not be shorter than the prefix length of cidr").field_path(".nodePrefixLength"),
    validation = Rule::new("!isCIDR(self.cidr) || self.nodePrefixLength <= (cidr(self.cidr).ip().family() == 4 ? 32 : 128)").message("nodePrefixLength must be at most 32 for an IPv4 cidr and 128 for an IPv6 cidr").field_path(".nodePrefixLength"),
    validation = Rule::new("!has(self.clusterPrefix) || !isCIDR(self.cidr) || !isCIDR(self.clusterPrefix) || cidr(self.cidr).containsCIDR(self.clusterPrefix)").message("clusterPrefix must lie inside cidr").field_path(".clusterPrefix"),
    validation = Rule::new("!has(self.clusterPrefix) || !isCIDR(self.clusterPrefix) || self.nodePrefixLength >= cidr(self.clusterPrefix).prefixLength()").message("nodePrefixLength must not be shorter than the prefix length of clusterPrefix").field_path(".nodePrefixLength"),
    validation = Rule::new("!has(self.mtu) || !isCIDR(self.cidr) || cidr(self.cidr).ip().family() == 4 || self.mtu >= 1280").message("an IPv6 service needs an mtu of at least 1280").field_path(".mtu")
)]
pub struct NetworkServiceSpec {
    /// Address space of the service, IPv4 or IPv6, in CIDR notation with the host bits
    /// clear (for example 10.100.0.0/16 or fd00:100::/48). Every member's address comes
    /// from here. It must lie inside one of the service pools the cluster's administrator
    /// allows (by default the private ranges 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16,
    /// 100.64.0.0/10 and fd00::/8), overlap no reserved range (loopback, link-local,
    /// multicast, the nodes' pod ranges and addresses, the cluster's Service range), and
    /// overlap no other service that shares a node with it; otherwise the service is
    /// refused with a reason and installs nothing. Immutable: to renumber, create a new
    /// NetworkService.
    #[schemars(length(max = CIDR_MAX_LEN))]
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("must be a CIDR prefix such as 10.100.0.0/16 or fd00:100::/48"),
        validation = Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()").message("must have its host bits clear (for example 10.100.0.0/16, not 10.100.0.1/16)"),
        validation = Rule::new("self == oldSelf").message("cidr is immutable; create a new NetworkService to change the address space")
    )]
    pub cidr: String,

    /// Length of the prefix each node gets from the service's address space (or from
    /// clusterPrefix, when set); a node's members get their addresses from its prefix.
    /// Between the prefix length of cidr and 32 (IPv4) or 128 (IPv6). For example 24
    /// gives each node 254 usable member addresses in an IPv4 service. Immutable.
    #[schemars(range(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nodePrefixLength is immutable; create a new NetworkService to change it"))]
    pub node_prefix_length: i32,

    /// The slice of cidr this cluster allocates from, when several clusters share the
    /// service: each cluster's operator hands out node prefixes only from its own slice,
    /// and overlapping slices are reported, never routed. Omit it for a single cluster.
    /// Immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = CIDR_MAX_LEN))]
    #[x_kube(
        validation = Rule::new("isCIDR(self)").message("must be a CIDR prefix such as 10.100.128.0/17"),
        validation = Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()").message("must have its host bits clear"),
        validation = Rule::new("self == oldSelf").message("clusterPrefix is immutable")
    )]
    pub cluster_prefix: Option<String>,

    /// MTU of the service's interfaces (the WireGuard interface and both ends of every
    /// member's veth). Defaults to the node's underlay MTU minus 80 bytes of WireGuard
    /// overhead, which suits IPv4 and IPv6 underlays alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 576, max = 9000))]
    pub mtu: Option<i32>,

    /// UDP port on which every node's WireGuard interface for this service listens.
    /// Defaults to a port the operator allocates from the range the cluster's
    /// administrator allows (52000-52999 by default) and records in status.listenPort.
    /// Set it when firewalls between nodes need a fixed port; a port outside that range
    /// is refused (reason ListenPortOutOfRange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: Option<i32>,

    /// Names for the service's members (DNS), answered on every member's gateway
    /// (169.254.77.1, fe80::77:1) to the service's own members only. Omit it for the
    /// default zone, `<name>.<namespace>.wireway.internal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<ServiceDns>,
}

/// The names of a NetworkService's members.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceDns {
    /// Whether the service has names (default true). Names make every member change a
    /// change of every node carrying the service (each answers the new name): a service
    /// spanning many nodes whose members come and go often may turn them off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// The zone the service's names are under, in place of the default
    /// `<name>.<namespace>.wireway.internal`. Lower case, under `wireway.internal` and
    /// ending in this NetworkService's namespace (`<anything>.<namespace>.wireway.internal`
    /// or `<namespace>.wireway.internal`), so no service answers for names outside
    /// Wireway's own or for another namespace's: a zone of another namespace is
    /// reported (reason DnsZoneNotOwned) and the service keeps the default zone. A member
    /// is `<pod>.<endpoint>.<endpoint namespace>.<zone>`, an Endpoint (all its members,
    /// or its external host) `<endpoint>.<endpoint namespace>.<zone>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?[.])+wireway[.]internal$')").message("must be a lower-case DNS name under wireway.internal, such as db.red.wireway.internal"))]
    pub zone: Option<String>,
}

/// What the operator has made of a NetworkService.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkServiceStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current state: `Ready` is True when every admitted member has an address and every
    /// node hosting members has been given the service; otherwise False with a reason
    /// (InvalidSpec, AddressPoolExhausted, OverlappingPrefix, DuplicateNodeKey,
    /// DnsZoneNotOwned, Progressing), or refused and installing nothing (OutsideServicePools,
    /// ReservedRange, ListenPortOutOfRange, OverlappingCidr).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "schema::conditions")]
    pub conditions: Vec<Condition>,

    /// UDP port the service's WireGuard interfaces listen on (spec.listenPort, or the one
    /// the operator allocated). Kept across operator restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<i32>,

    /// Name of the service's WireGuard interface on every node (at most 15 characters,
    /// derived from the service's namespace and name). Kept across operator restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,

    /// Number of nodes that host admitted members.
    #[serde(default)]
    pub node_count: i32,

    /// Number of admitted members, local and external.
    #[serde(default)]
    pub member_count: i32,

    /// The prefix each node hosting members was given. A node keeps its prefix while it
    /// hosts members, across operator restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "node_prefixes")]
    pub node_prefixes: Vec<NodePrefix>,

    /// The zone the service's members' names are answered in: spec.dns.zone, or the
    /// default `<name>.<namespace>.wireway.internal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_zone: Option<String>,

    /// The peer clusters sharing the service (PeerClusters listing it), each with what
    /// this cluster made of what it sent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "service_peers")]
    pub peers: Vec<ServicePeer>,
}

/// A peer cluster's part in a service, as this cluster sees it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePeer {
    /// Name of the PeerCluster.
    pub cluster: String,

    /// Whether the exchange with the peer's operator is up. While it is down, what the
    /// peer last sent stays installed.
    pub connected: bool,

    /// When the peer last sent its half of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,

    /// Number of the peer's nodes this cluster's nodes peer with (those with an admitted
    /// member).
    #[serde(default)]
    pub nodes: i32,

    /// Number of the peer's members admitted here.
    #[serde(default)]
    pub members_admitted: i32,

    /// Number of the peer's members refused here: by the service's Admissions (Denied,
    /// NotAdmitted), for an identity outside the peer's trust domain
    /// (OutsideTrustDomain), or for an address outside the peer's slice or its node's
    /// prefix (OutsideSlice).
    #[serde(default)]
    pub members_refused: i32,

    /// Why the peer takes no part, when it does not (empty otherwise): NotConnected (it
    /// never sent its half), CidrMismatch (its half has another cidr), OverlappingPrefix
    /// (its slice overlaps this cluster's or another peer's, or lies outside the cidr).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,

    /// The refusals, for a person: the first few refused members and why, or why the
    /// peer takes no part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One node's share of a service's address space.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct NodePrefix {
    /// Name of the node.
    pub node: String,
    /// The prefix allocated to it, of length spec.nodePrefixLength.
    pub prefix: String,
}

fn service_peers(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<ServicePeer>>();
    schema::list_map(&mut schema, "cluster");
    schema
}

fn node_prefixes(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<NodePrefix>>();
    schema::list_map(&mut schema, "node");
    schema
}
