//! The planner's input: a plain snapshot of everything that matters.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wireway_crds::{Admission, Cidr, Endpoint, IdentityGrant, NetworkService, PeerCluster};

use super::ObjectKey;
pub use super::bounds::{Bounds, ListenPorts};

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// Everything the planner looks at. Order of the vectors does not matter: the planner
/// sorts what it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    /// This cluster's SPIFFE trust domain (`cluster.local` by default): pods get
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub trust_domain: String,
    /// The time conditions that change now are stamped with. An input, so planning stays
    /// free of clocks: the same World gives the same Plan.
    pub now: Time,
    /// Nodes, where members run (and so the nodes that carry services).
    pub nodes: Vec<Node>,
    /// Namespaces and their labels, for Admission namespace selectors.
    pub namespaces: Vec<Namespace>,
    /// Workloads.
    pub pods: Vec<Pod>,
    /// The Wireway objects, with the statuses last written (they carry the allocations
    /// that must survive an operator restart).
    pub network_services: Vec<NetworkService>,
    /// See [`World::network_services`].
    pub endpoints: Vec<Endpoint>,
    /// See [`World::network_services`].
    pub admissions: Vec<Admission>,
    /// The IdentityGrants (cluster-scoped, written by cluster administrators): which
    /// identities beyond its own a namespace's external Endpoints may claim.
    pub identity_grants: Vec<IdentityGrant>,
    /// The cluster's Service ranges, from its networking.k8s.io/v1 ServiceCIDR objects:
    /// no service may overlap them.
    pub service_cidrs: Vec<ServiceCidr>,
    /// The administrator's bounds on every service: the pools its range must come from,
    /// the ranges it may never overlap, the UDP ports it may listen on.
    pub bounds: Bounds,
    /// The peer clusters (PeerCluster objects), each with the halves of the shared
    /// services its operator last sent.
    pub peers: Vec<Peer>,
}

/// A peer cluster: what its PeerCluster says, and what its operator last sent. Remote
/// clusters are just more input: their members pass through the same Admissions as local
/// workloads, after being held to the peer's trust domain and slices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peer {
    /// The PeerCluster's name.
    pub name: String,
    /// Its trust domain (spec.trustDomain): every member it sends must have an identity
    /// in it.
    pub trust_domain: String,
    /// The services shared with it and the slice (spec.services[].prefix, as written) it
    /// may claim in each.
    pub shares: BTreeMap<ObjectKey, String>,
    /// Whether the exchange with its operator is up now.
    pub connected: bool,
    /// When its operator last sent its state.
    pub last_sync: Option<Time>,
    /// Its halves of the shared services, as last sent: kept while it is away, so a cut
    /// link or a peer operator's outage changes nothing in the data plane.
    pub halves: BTreeMap<ObjectKey, Half>,
}

/// One cluster's half of a shared service, as its operator sends it to a peer (and this
/// cluster's, as [`Plan::federation`](super::Plan::federation) holds it to send): the
/// nodes carrying it and the members it admits, both its own only, and its decisions on
/// the receiving peer's members.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Half {
    /// The service's cidr in the sender's cluster; the halves of one service must agree.
    pub cidr: String,
    /// The sender's nodes carrying the service.
    pub nodes: Vec<HalfNode>,
    /// The sender's members, admitted by the sender.
    pub members: Vec<HalfMember>,
    /// The sender's decisions on the receiver's members (what the receiver sent it).
    pub decisions: Vec<MemberDecision>,
}

/// A node of a half.
#[derive(Debug, Clone, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct HalfNode {
    /// The node's name in its cluster.
    pub name: String,
    /// Its WireGuard public key.
    pub public_key: String,
    /// Where it receives WireGuard packets for the service (ip:port); `None` behind NAT:
    /// it then dials in, and keepalives keep the path open.
    pub endpoint: Option<String>,
    /// Its prefix of the service, inside the sender's slice.
    pub prefix: String,
}

/// A member of a half.
#[derive(Debug, Clone, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct HalfMember {
    /// The workload, as the sender names it (`<namespace>/<pod>`).
    pub name: String,
    /// Its SPIFFE ID.
    pub identity: String,
    /// Its address in the service, inside its node's prefix.
    pub address: String,
    /// The node it runs on (a node of the same half).
    pub node: String,
}

/// A cluster's decision on a peer's member, by the member's address.
#[derive(Debug, Clone, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct MemberDecision {
    /// The member's address.
    pub address: String,
    /// Whether it is admitted.
    pub admitted: bool,
    /// Why (a condition reason such as Admitted, Denied, OutsideTrustDomain).
    pub reason: String,
    /// The rule behind it, for a person.
    pub message: String,
}

/// A node, as far as its agent has told.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// The node's WireGuard public key; `None` until its agent has published one. A node
    /// without a key still gets its state, but no other node can peer with it yet.
    pub public_key: Option<String>,
    /// Address other nodes reach it at.
    pub underlay: Option<IpAddr>,
    /// MTU of its underlay; 1500 when unknown.
    pub underlay_mtu: Option<u32>,
    /// Highest NodeState version the node has seen (from its agent's hello), so versions
    /// keep increasing across operator restarts.
    pub seen_version: u64,
    /// The node's pod ranges (a Kubernetes Node's `spec.podCIDRs`): no service may
    /// overlap them.
    pub pod_cidrs: Vec<Cidr>,
    /// The node's own addresses (a Kubernetes Node's InternalIP and ExternalIP): no
    /// service may contain them (nor the underlay address).
    pub addresses: Vec<IpAddr>,
    /// When the node was created (a Kubernetes Node's `metadata.creationTimestamp`), if
    /// known: of two nodes presenting one WireGuard key, the older keeps it unless the
    /// other is the one recorded with it.
    pub created: Option<Time>,
}

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace {
    /// Namespace name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
}

/// A workload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name, unique in the namespace; the key that keeps a StatefulSet pod's address.
    pub name: String,
    /// UID; the agent resolves it to the pod's network namespace when `netns` is unset.
    pub uid: String,
    /// Node it runs on; `None` while unscheduled (it is then not a member yet).
    pub node: Option<String>,
    /// Service account, which gives the pod its SPIFFE ID.
    pub service_account: String,
    /// Labels, for Endpoint pod selectors.
    pub labels: Labels,
    /// An explicit network-namespace path (lab and VM workloads); pods in a cluster leave
    /// it unset and are found by UID.
    pub netns: Option<String>,
}

/// One of the cluster's Service ranges: a networking.k8s.io/v1 ServiceCIDR object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceCidr {
    /// The object's name (`kubernetes` for the cluster's default range).
    pub name: String,
    /// Its ranges (`spec.cidrs`: one per address family).
    pub cidrs: Vec<Cidr>,
}

/// One change to the World, as a watch delivers it: an object created or updated
/// (upsert), or deleted (by key).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A node appeared or changed.
    Node(Node),
    /// A node is gone.
    NodeDeleted(String),
    /// A namespace appeared or its labels changed.
    Namespace(Namespace),
    /// A namespace is gone.
    NamespaceDeleted(String),
    /// A pod appeared or changed.
    Pod(Pod),
    /// A pod is gone: namespace and name.
    PodDeleted(String, String),
    /// A NetworkService appeared or changed.
    NetworkService(NetworkService),
    /// A NetworkService is gone.
    NetworkServiceDeleted(ObjectKey),
    /// An Endpoint appeared or changed.
    Endpoint(Endpoint),
    /// An Endpoint is gone.
    EndpointDeleted(ObjectKey),
    /// An Admission appeared or changed.
    Admission(Admission),
    /// An Admission is gone.
    AdmissionDeleted(ObjectKey),
    /// An IdentityGrant appeared or changed.
    IdentityGrant(IdentityGrant),
    /// An IdentityGrant is gone: its name.
    IdentityGrantDeleted(String),
    /// A ServiceCIDR appeared or changed.
    ServiceCidr(ServiceCidr),
    /// A ServiceCIDR is gone: its name.
    ServiceCidrDeleted(String),
    /// A PeerCluster appeared or changed (what its operator sent is kept).
    PeerCluster(Box<PeerCluster>),
    /// A PeerCluster is gone: its name. Its members go from every node.
    PeerClusterDeleted(String),
    /// What the federation says of a peer cluster: its connection, and the halves its
    /// operator last sent. Ignored for a peer no PeerCluster declares.
    PeerSent(PeerSent),
}

/// What the federation says of a peer cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSent {
    /// The PeerCluster's name.
    pub peer: String,
    /// Whether a connection with its operator is open.
    pub connected: bool,
    /// When its operator last sent its halves.
    pub last_sync: Option<Time>,
    /// Its halves, when it sent them (`None`: only its connection changed; the halves
    /// before stay).
    pub halves: Option<BTreeMap<ObjectKey, Half>>,
}

impl Peer {
    /// A peer cluster as its PeerCluster declares it, before its operator has sent
    /// anything.
    pub fn declared(object: &PeerCluster) -> Self {
        Self {
            name: object.metadata.name.clone().unwrap_or_default(),
            trust_domain: object.spec.trust_domain.clone(),
            shares: object
                .spec
                .services
                .iter()
                .map(|s| (ObjectKey::new(&s.namespace, &s.name), s.prefix.clone()))
                .collect(),
            ..Self::default()
        }
    }
}
