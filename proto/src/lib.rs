//! The Wireway node API (`wireway.node.v1alpha1`): the messages and gRPC service between
//! the operator and the node agents, generated from `proto/wireway/node/v1alpha1/node.proto`;
//! and in [`status`] the operator's status API for its administrators
//! (`proto/wireway/status/v1alpha1/status.proto`); in [`federation`] the API between peer
//! clusters' operators (`proto/wireway/federation/v1alpha1/federation.proto`).
//!
//! It knows nothing of Kubernetes; every field is documented in the `.proto`.

#![allow(
    missing_docs,
    clippy::all,
    unused_qualifications,
    missing_debug_implementations
)]

tonic::include_proto!("wireway.node.v1alpha1");

mod dns;
pub use dns::{At, DnsRecords, ServiceDns};

/// The operator's status API (`wireway.status.v1alpha1`): its snapshot, for
/// administrators only.
pub mod status {
    tonic::include_proto!("wireway.status.v1alpha1");
}

/// The federation API between peer clusters' operators (`wireway.federation.v1alpha1`):
/// each side's halves of the services they share.
pub mod federation {
    tonic::include_proto!("wireway.federation.v1alpha1");
}

/// The largest federation update either side sends and accepts, encoded: 64 MiB, as a
/// NodeState (a half with 100,000 members takes about 10 MiB).
pub const MAX_FEDERATION_UPDATE_BYTES: usize = 64 << 20;

/// The largest NodeState the operator sends and an agent accepts, encoded: 64 MiB, some
/// 400,000 peers (a peer takes about 150 bytes). gRPC's default, 4 MiB, would break a
/// node's stream at some 25,000 peers; both sides set this explicitly instead.
pub const MAX_NODE_STATE_BYTES: usize = 64 << 20;

/// Prefix of every WireGuard interface Wireway creates (`ww-red`). The agent owns, and
/// only ever touches, links with this prefix or [`HOST_VETH_PREFIX`].
pub const WIREGUARD_PREFIX: &str = "ww-";
/// Prefix of the host end of every member veth (`wwv1a2b3c4d`).
pub const HOST_VETH_PREFIX: &str = "wwv";
/// Service routing tables are this plus the service's listen port; the agent owns the
/// tables from here to `ROUTE_TABLE_BASE + 65535`.
pub const ROUTE_TABLE_BASE: u32 = 0x5757_0000;

impl WireGuardBackend {
    /// The word reports, metrics and statuses use: `kernel`, `userspace` or `unknown`.
    pub fn label(self) -> &'static str {
        match self {
            Self::WireguardBackendKernel => "kernel",
            Self::WireguardBackendUserspace => "userspace",
            Self::WireguardBackendUnspecified => "unknown",
        }
    }

    /// The backend a [`WireGuardBackend::label`] names.
    pub fn from_label(label: &str) -> Self {
        match label {
            "kernel" => Self::WireguardBackendKernel,
            "userspace" => Self::WireguardBackendUserspace,
            _ => Self::WireguardBackendUnspecified,
        }
    }
}
