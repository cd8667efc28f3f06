//! The lab's underlay: a namespace with a bridge, and each node's link to it with the
//! node's underlay address (from 172.31.0.0/16, in the order nodes are made). A cluster
//! of a lab of several clusters (see [`super::clusters`]) has its own underlay, 172.30/16
//! for the second and so on, and its nodes reach the other clusters' through a router at
//! the top of their own range.

use super::Lab;
use super::net::{self, NetError};
use super::record::{LabNode, RecordError};

/// The underlay: node `n` gets 172.31.x.y/16 on one bridge (172.30.x.y/16 in a second
/// cluster, and so on).
const UNDERLAY_PREFIX: u32 = u32::from_be_bytes([172, 31, 0, 0]);
const UNDERLAY_LENGTH: u8 = 16;
/// Every lab underlay lies in here: what a node routes through the router, in a lab of
/// several clusters.
pub(super) const UNDERLAYS: &str = "172.16.0.0/12";

/// The bridge, in the underlay's namespace.
const BRIDGE: &str = "br0";

/// Why the underlay could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UnderlayError {
    /// The record of its namespace could not be written.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The bridge could not be made.
    #[error("failed to make the underlay bridge")]
    Bridge(#[source] NetError),
    /// A node could not be linked to the bridge.
    #[error("failed to connect node {node} to the underlay")]
    Connect {
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: NetError,
    },
}

/// The first address of underlay `index` (0: 172.31.0.0).
fn underlay_base(index: u8) -> u32 {
    UNDERLAY_PREFIX - (u32::from(index) << 16)
}

/// The underlay address of the `n`th node made (from 1) on underlay `index`: at most 250
/// in each /24, so none ends in .0 or .255.
pub(super) fn underlay_address(index: u8, n: u32) -> String {
    let host = underlay_base(index) + (n / 250) * 256 + (n % 250) + 1;
    std::net::Ipv4Addr::from(host).to_string()
}

/// The router's address on underlay `index` (its last usable one), with its length.
pub(super) fn router_address(index: u8) -> (String, u8) {
    let host = underlay_base(index) + 0xfffe;
    (std::net::Ipv4Addr::from(host).to_string(), UNDERLAY_LENGTH)
}

/// The underlay `index`, as a prefix.
pub(super) fn underlay_prefix(index: u8) -> String {
    let base = std::net::Ipv4Addr::from(underlay_base(index));
    format!("{base}/{UNDERLAY_LENGTH}")
}

impl Lab {
    /// The underlay's network namespace.
    pub(super) fn switch(&self) -> String {
        self.record.netns("underlay")
    }

    /// Makes the underlay: a namespace with a bridge.
    pub fn create_underlay(&mut self) -> Result<(), UnderlayError> {
        let switch = self.switch();
        self.record.namespaces.insert(switch.clone());
        self.save()?;
        let make = || {
            net::add_netns(&switch)?;
            if net::ip(&["-n", &switch, "link", "show", BRIDGE]).is_err() {
                net::ip(&["-n", &switch, "link", "add", BRIDGE, "type", "bridge"])?;
            }
            net::ip(&["-n", &switch, "link", "set", BRIDGE, "up"])
        };
        make().map_err(UnderlayError::Bridge)
    }

    /// Links a node's namespace (made already) to the bridge, `eth0` on its side, and
    /// gives it its underlay address.
    pub(super) fn connect(&self, node: &str, lab_node: &LabNode) -> Result<(), UnderlayError> {
        let switch = self.switch();
        let netns = lab_node.netns.as_str();
        let port = lab_node.port.as_str();
        let connect = || {
            if net::ip(&["-n", netns, "link", "show", "eth0"]).is_err() {
                net::ip(&[
                    "link", "add", "eth0", "netns", netns, "type", "veth", "peer", "name", port,
                    "netns", &switch,
                ])?;
            }
            net::ip(&["-n", &switch, "link", "set", port, "master", BRIDGE, "up"])?;
            let address = format!("{}/{UNDERLAY_LENGTH}", lab_node.address);
            // The address may be there already (the node was half made before): fine.
            let _ = net::ip(&["-n", netns, "addr", "add", &address, "dev", "eth0"]);
            net::ip(&["-n", netns, "link", "set", "eth0", "up"])?;
            if let Some(federation) = &self.record.federation {
                // The other clusters' underlays, through the router.
                let (router, _) = router_address(federation.underlay);
                net::ip(&[
                    "-n", netns, "route", "replace", UNDERLAYS, "via", &router, "dev", "eth0",
                ])?;
            }
            Ok(())
        };
        connect().map_err(|source| UnderlayError::Connect {
            node: node.to_owned(),
            source,
        })
    }
}
