//! The lab's underlay: a namespace with a bridge, and each node's link to it with the
//! node's underlay address (from 172.31.0.0/16, in the order nodes are made).

use super::Lab;
use super::net::{self, NetError};
use super::record::{LabNode, RecordError};

/// The underlay: node `n` gets 172.31.x.y/16 on one bridge.
const UNDERLAY_PREFIX: u32 = u32::from_be_bytes([172, 31, 0, 0]);
const UNDERLAY_LENGTH: u8 = 16;

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

/// The underlay address of the `n`th node made (from 1): at most 250 in each /24, so
/// none ends in .0 or .255.
pub(super) fn underlay_address(n: u32) -> String {
    let host = UNDERLAY_PREFIX + (n / 250) * 256 + (n % 250) + 1;
    std::net::Ipv4Addr::from(host).to_string()
}

impl Lab {
    /// The underlay's network namespace.
    fn switch(&self) -> String {
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
            net::ip(&["-n", netns, "link", "set", "eth0", "up"])
        };
        connect().map_err(|source| UnderlayError::Connect {
            node: node.to_owned(),
            source,
        })
    }
}
