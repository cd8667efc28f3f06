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

impl NodeState {
    /// Whether the two states are the same but for their versions, their services' peers
    /// and their names' records: the same services with the same settings and members.
    /// The agent applies such a change to its WireGuard devices and its DNS alone, without
    /// touching a link, address, route, rule or the nftables table; the operator sends the
    /// states that differ in more first, as they take an agent longest to apply.
    pub fn same_but_peers_and_records(&self, other: &Self) -> bool {
        let Self {
            node,
            version: _,
            services,
            epoch: _,
        } = self;
        *node == other.node
            && services.len() == other.services.len()
            && services
                .iter()
                .zip(&other.services)
                .all(|(a, b)| a.same_but_peers_and_records(b))
    }
}

impl ServiceState {
    /// Whether the two are the same but for their peers and their names' records (see
    /// [`NodeState::same_but_peers_and_records`]).
    pub fn same_but_peers_and_records(&self, other: &Self) -> bool {
        // Every field named, so that a new one is a decision here.
        let Self {
            name,
            interface_name,
            listen_port,
            mtu,
            cidr,
            node_prefix,
            route_table,
            members,
            peers: _,
            dns,
        } = self;
        *name == other.name
            && *interface_name == other.interface_name
            && *listen_port == other.listen_port
            && *mtu == other.mtu
            && *cidr == other.cidr
            && *node_prefix == other.node_prefix
            && *route_table == other.route_table
            && *members == other.members
            && zone(dns) == zone(&other.dns)
    }
}

/// The zone of a service's names, if it has any.
fn zone(dns: &Option<ServiceDns>) -> Option<&str> {
    dns.as_ref()
        .map(|ServiceDns { zone, records: _ }| zone.as_str())
}

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
