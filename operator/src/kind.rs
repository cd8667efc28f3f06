//! The kinds of object the operator reads, named in one place: the five Wireway kinds,
//! the core/v1 kinds that say where workloads run, and the cluster's Service ranges.
//!
//! Pure data (no Kubernetes client): the planner names kinds in its events, the sources
//! read them, the controller writes to them. What the API server calls each kind is
//! checked against the types themselves in the Kubernetes source's tests.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A kind of object the operator reads. It serializes as its name (`NetworkService`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// wireway.dev NetworkService.
    NetworkService,
    /// wireway.dev Endpoint.
    Endpoint,
    /// wireway.dev Admission.
    Admission,
    /// wireway.dev IdentityGrant (cluster-scoped).
    IdentityGrant,
    /// wireway.dev PeerCluster (cluster-scoped).
    PeerCluster,
    /// core/v1 Pod.
    Pod,
    /// core/v1 Node.
    Node,
    /// core/v1 Namespace.
    Namespace,
    /// networking.k8s.io/v1 ServiceCIDR: the cluster's Service ranges. Optional: a
    /// cluster that does not serve it has none to read.
    #[serde(rename = "ServiceCIDR")]
    ServiceCidr,
}

impl Kind {
    /// Every kind the operator reads.
    pub const ALL: [Kind; 9] = [
        Kind::NetworkService,
        Kind::Endpoint,
        Kind::Admission,
        Kind::IdentityGrant,
        Kind::PeerCluster,
        Kind::Pod,
        Kind::Node,
        Kind::Namespace,
        Kind::ServiceCidr,
    ];

    /// The kind's name, as in an object's `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::NetworkService => "NetworkService",
            Kind::Endpoint => "Endpoint",
            Kind::Admission => "Admission",
            Kind::IdentityGrant => "IdentityGrant",
            Kind::PeerCluster => "PeerCluster",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::ServiceCidr => "ServiceCIDR",
        }
    }

    /// The `apiVersion` its objects carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkService
            | Kind::Endpoint
            | Kind::Admission
            | Kind::IdentityGrant
            | Kind::PeerCluster => wireway_crds::API_VERSION,
            Kind::Pod | Kind::Node | Kind::Namespace => "v1",
            Kind::ServiceCidr => "networking.k8s.io/v1",
        }
    }

    /// Whether its objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Node
                | Kind::Namespace
                | Kind::IdentityGrant
                | Kind::PeerCluster
                | Kind::ServiceCidr
        )
    }

    /// Whether a cluster must serve it: the operator waits for every required kind's
    /// first list before it plans, and gets on without the others when the API server
    /// does not know them.
    pub fn required(self) -> bool {
        self != Kind::ServiceCidr
    }

    /// The kind an object's `apiVersion` and `kind` name, if the operator reads it.
    pub fn of(api_version: &str, name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.name() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn a_kind_serializes_as_its_name_and_is_found_by_it() {
        for kind in Kind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.name());
            assert_eq!(serde_json::from_value::<Kind>(json).unwrap(), kind);
            assert_eq!(Kind::of(kind.api_version(), kind.name()), Some(kind));
        }
        assert_eq!(Kind::of("v1", "NetworkService"), None);
        assert_eq!(Kind::of("v1", "Binding"), None);
    }
}
