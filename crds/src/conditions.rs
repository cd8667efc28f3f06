//! Condition types and reasons used in the status of every Wireway object.
//!
//! Conditions are `metav1.Condition`s kept as a list-map keyed by `type`. Every object has
//! a `Ready` condition following kstatus conventions, so Argo CD and Flux judge health
//! without custom scripts: `Ready=True` when the object is fully in effect, `Ready=False`
//! with one of the reasons below when it is not, always with `observedGeneration`.

/// The object is fully in effect.
pub const READY: &str = "Ready";

/// Reasons, each a CamelCase word as Kubernetes API conventions ask.
pub mod reason {
    /// Everything the object asks for is in effect.
    pub const READY: &str = "Ready";
    /// The spec holds a value the API server should have rejected (for example an object
    /// stored before a validation rule existed); nothing it asks for is applied.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The NetworkService an Endpoint or Admission names does not exist.
    pub const NETWORK_SERVICE_NOT_FOUND: &str = "NetworkServiceNotFound";
    /// No address (or node prefix) is left in the service's pool for a member.
    pub const ADDRESS_POOL_EXHAUSTED: &str = "AddressPoolExhausted";
    /// Two prefixes that must be disjoint overlap (cluster slices, external addresses).
    pub const OVERLAPPING_PREFIX: &str = "OverlappingPrefix";
    /// A workload was admitted to the service.
    pub const ADMITTED: &str = "Admitted";
    /// A deny rule of an Admission matched the workload.
    pub const DENIED: &str = "Denied";
    /// No rule admits the workload: it is outside the service's namespace and no allow
    /// rule matches it.
    pub const NOT_ADMITTED: &str = "NotAdmitted";
    /// The workload is a member of the service through another Endpoint already (the
    /// first by name): a pod is one member however many Endpoints attach it.
    pub const DUPLICATE_MEMBER: &str = "DuplicateMember";
    /// A pod would get two interfaces of one name, from Endpoints of two services; the
    /// Endpoint that claimed the name first keeps it.
    pub const INTERFACE_NAME_CONFLICT: &str = "InterfaceNameConflict";
    /// Members were admitted but not all nodes have applied the state that carries them.
    pub const PROGRESSING: &str = "Progressing";
    /// The pod selector selects no pod.
    pub const NO_MEMBERS: &str = "NoMembers";
    /// An external Endpoint claims a SPIFFE ID outside its namespace's own
    /// (spiffe://<trust-domain>/ns/<namespace>/...) that no IdentityGrant for its namespace
    /// matches. The host is refused before any Admission is consulted, and reaches no node.
    pub const IDENTITY_NOT_GRANTED: &str = "IdentityNotGranted";
    /// The NetworkService's cidr lies outside every service pool the cluster's
    /// administrator allows (the operator's --service-pools). The service installs nothing.
    pub const OUTSIDE_SERVICE_POOLS: &str = "OutsideServicePools";
    /// The NetworkService's cidr overlaps a range no service may overlap: loopback,
    /// link-local, multicast or unspecified addresses, a range of the operator's
    /// --reserved-ranges, or one discovered in the cluster (a node's pod range or address,
    /// the cluster's Service range). The message names the range and why it is reserved.
    /// The service installs nothing.
    pub const RESERVED_RANGE: &str = "ReservedRange";
    /// The NetworkService pins a spec.listenPort outside the UDP port range the
    /// administrator allows (the operator's --listen-ports). The service installs nothing.
    pub const LISTEN_PORT_OUT_OF_RANGE: &str = "ListenPortOutOfRange";
    /// The NetworkService's cidr overlaps the cidr of another service that shares a node
    /// (so possibly a member) with it: a member of both would route one service's traffic
    /// into the other. The service already in effect keeps working; this one installs
    /// nothing until the overlap is gone.
    pub const OVERLAPPING_CIDR: &str = "OverlappingCidr";
    /// A node presents the WireGuard public key of another node (WireGuard tells peers
    /// apart by key, so it could take the other node's traffic). The node that held the key
    /// first keeps it; this one carries no service until its key is its own.
    pub const DUPLICATE_NODE_KEY: &str = "DuplicateNodeKey";
    /// A NetworkService's spec.dns.zone lies outside its namespace's part of
    /// `wireway.internal`: the service keeps its default zone.
    pub const DNS_ZONE_NOT_OWNED: &str = "DnsZoneNotOwned";
    /// A peer cluster's member has an identity outside the peer's trust domain: the peer's
    /// operator vouches only for its own.
    pub const OUTSIDE_TRUST_DOMAIN: &str = "OutsideTrustDomain";
    /// A peer cluster's node prefix or member address lies outside the slice its
    /// PeerCluster gives it (or a member's address outside its node's prefix).
    pub const OUTSIDE_SLICE: &str = "OutsideSlice";
    /// A peer cluster's half of a service has another cidr than this one's.
    pub const CIDR_MISMATCH: &str = "CidrMismatch";
    /// A peer cluster has not sent its half of a service (yet).
    pub const NOT_CONNECTED: &str = "NotConnected";
    /// A PeerCluster's exchange with the peer's operator is up.
    pub const CONNECTED: &str = "Connected";
    /// A PeerCluster's operator has never been heard from yet.
    pub const CONNECTING: &str = "Connecting";
    /// A PeerCluster's operator was heard from, and is not now: what it last sent stays
    /// installed.
    pub const DISCONNECTED: &str = "Disconnected";
}
