//! The Wireway Kubernetes API: group `wireway.dev`, version `v1alpha1`.
//!
//! Three namespaced kinds, written by users and reconciled by the operator, and two
//! cluster-scoped kinds written only by cluster administrators:
//!
//! | kind | says | short name |
//! |---|---|---|
//! | [`NetworkService`] | there is a flat L3 domain with this address space | `nsvc` |
//! | [`Endpoint`] | these workloads (pods by selector, or an external host) attach to it | `nsep` |
//! | [`Admission`] | workloads with these identities may (or may not) join it | `nsadm` |
//! | [`IdentityGrant`] | this namespace's external hosts may claim these identities | `nsgrant` |
//! | [`PeerCluster`] | this other cluster federates with us, and may claim these slices | `nspeer` |
//!
//! This crate holds the types, their generated CustomResourceDefinitions ([`crds`]), the
//! typed values the planner works with ([`SpiffeId`], [`Cidr`]) and a local validator
//! ([`validation`]) that applies the CRDs' OpenAPI schema and CEL rules the way the API
//! server does, so manifests can be checked without a cluster.
//!
//! Spec fields stay plain strings on the wire: the API server validates them with the
//! schema and CEL rules generated here, and a value that slipped past (an object stored
//! before a rule existed) must surface as a status condition, not as a deserialisation
//! error that stops a watch. The planner parses them with [`SpiffeId`] and [`Cidr`].
//!
//! Promises: no IO, no async runtime; deterministic output.

pub mod admission;
pub mod cidr;
pub mod conditions;
pub mod endpoint;
mod generate;
pub mod identity_grant;
pub mod manifest;
pub mod members;
pub mod network_service;
pub mod peer_cluster;
mod schema;
pub mod spiffe;
pub mod validation;

pub use admission::{Admission, AdmissionRule, AdmissionSpec, AdmissionStatus};
pub use cidr::{Cidr, CidrError};
pub use endpoint::{
    Endpoint, EndpointSpec, EndpointStatus, ExternalEndpoint, MemberStatus, NetworkServiceRef,
    PeerDecision,
};
pub use generate::{CrdFile, crd_files};
pub use identity_grant::{GrantedIdentity, IdentityGrant, IdentityGrantSpec, IdentityGrantStatus};
pub use members::Members;
pub use network_service::{
    NetworkService, NetworkServiceSpec, NetworkServiceStatus, NodePrefix, ServiceDns, ServicePeer,
};
pub use peer_cluster::{PeerCluster, PeerClusterSpec, PeerClusterStatus, SharedService};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// Annotations Wireway reads (and its agent writes) on core objects.
pub mod annotations {
    /// On a Pod that runs outside Kubernetes (a manifest directory): the path of its
    /// network namespace, such as `/run/netns/db-0`. Pods in a cluster are found by UID.
    pub const NETNS: &str = "wireway.dev/netns";
    /// On a Node: its WireGuard public key, published by the node's agent.
    pub const PUBLIC_KEY: &str = "wireway.dev/public-key";
    /// On a Node: the address other nodes reach its WireGuard ports at, published by the
    /// node's agent.
    pub const UNDERLAY_ADDRESS: &str = "wireway.dev/underlay-address";
}

/// The operator's finalizer on NetworkServices: a deleted NetworkService stays until
/// every node that carried it (and whose agent is connected) has removed its
/// interfaces, so deleting it means its traffic has stopped.
pub const FINALIZER: &str = "wireway.dev/cleanup";

/// The API group of every Wireway kind.
pub const GROUP: &str = "wireway.dev";
/// The API version of every Wireway kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "wireway.dev/v1alpha1";
