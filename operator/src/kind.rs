//! The kinds of object the operator reads, named in one place: the three Wireway kinds,
//! and the core/v1 kinds that say where workloads run.
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
    /// core/v1 Pod.
    Pod,
    /// core/v1 Node.
    Node,
    /// core/v1 Namespace.
    Namespace,
}

impl Kind {
    /// Every kind the operator reads.
    pub const ALL: [Kind; 6] = [
        Kind::NetworkService,
        Kind::Endpoint,
        Kind::Admission,
        Kind::Pod,
        Kind::Node,
        Kind::Namespace,
    ];

    /// The kind's name, as in an object's `kind` field.
    pub fn name(self) -> &'static str {
        match self {
            Kind::NetworkService => "NetworkService",
            Kind::Endpoint => "Endpoint",
            Kind::Admission => "Admission",
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
        }
    }

    /// The `apiVersion` its objects carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::NetworkService | Kind::Endpoint | Kind::Admission => wireway_crds::API_VERSION,
            Kind::Pod | Kind::Node | Kind::Namespace => "v1",
        }
    }

    /// Whether its objects live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::Namespace)
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
