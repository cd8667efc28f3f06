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
}
