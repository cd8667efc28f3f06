//! WireGuard, kernel backend: interfaces of kind `wireguard` created through rtnetlink,
//! configured and read through the kernel's generic netlink family `wireguard`.

use std::collections::BTreeSet;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::StreamExt;
use ipnet::IpNet;
use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};

use super::{
    DeviceState, PeerChange, PeerStats, WireGuardError, endpoint_address, handshake_age, key_bytes,
};
use crate::converge::Peer;

/// The kernel backend: a generic netlink connection to the `wireguard` family.
#[derive(Debug, Clone)]
pub struct KernelWireGuard {
    handle: genetlink::GenetlinkHandle,
}

fn io(interface: &str, e: impl std::fmt::Display) -> WireGuardError {
    WireGuardError::Io {
        interface: interface.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl KernelWireGuard {
    /// Connects in the calling thread's network namespace, if the kernel has WireGuard
    /// (resolving the family loads the module when it exists). Needs a Tokio runtime.
    pub async fn connect() -> Option<Self> {
        let (connection, handle, _) = genetlink::new_connection().ok()?;
        tokio::spawn(connection);
        handle.resolve_family::<WireguardMessage>().await.ok()?;
        Some(Self { handle })
    }

    async fn exchange(
        &self,
        interface: &str,
        message: WireguardMessage,
        flags: u16,
    ) -> Result<Vec<WireguardMessage>, WireGuardError> {
        let mut request = NetlinkMessage::from(GenlMessage::from_payload(message));
        request.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut responses = handle
            .request(request)
            .await
            .map_err(|e| io(interface, e))?;
        let mut out = Vec::new();
        while let Some(response) = responses.next().await {
            match response.map_err(|e| io(interface, e))?.payload {
                NetlinkPayload::InnerMessage(genl) => out.push(genl.payload),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    let errno = e.raw_code();
                    return Err(WireGuardError::Refused {
                        interface: interface.to_owned(),
                        errno,
                    });
                }
                _ => {}
            }
        }
        Ok(out)
    }

    async fn set(
        &self,
        interface: &str,
        mut attributes: Vec<WireguardAttribute>,
    ) -> Result<(), WireGuardError> {
        attributes.insert(0, WireguardAttribute::IfName(interface.to_owned()));
        let message = WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes,
        };
        self.exchange(interface, message, NLM_F_REQUEST | NLM_F_ACK)
            .await
            .map(|_| ())
    }

    /// Sets the private key of an interface the caller has just created.
    pub async fn set_private_key(
        &self,
        interface: &str,
        private_key: &str,
    ) -> Result<(), WireGuardError> {
        self.set(
            interface,
            vec![WireguardAttribute::PrivateKey(key_bytes(private_key)?)],
        )
        .await
    }

    /// Sets the listen port.
    pub async fn set_listen_port(&self, interface: &str, port: u16) -> Result<(), WireGuardError> {
        self.set(interface, vec![WireguardAttribute::ListenPort(port)])
            .await
    }

    /// Adds, updates (in place) and removes peers in one request; `None` removes.
    pub async fn configure_peers(
        &self,
        interface: &str,
        changes: &[PeerChange<'_>],
    ) -> Result<(), WireGuardError> {
        let mut peers = Vec::new();
        for change in changes {
            let key = key_bytes(change.public_key)?;
            let mut attributes = vec![WireguardPeerAttribute::PublicKey(key)];
            match change.peer {
                None => {
                    attributes.push(WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe))
                }
                Some(peer) => {
                    if change.replace_allowed_ips {
                        attributes.push(WireguardPeerAttribute::Flags(
                            WireguardPeerFlags::ReplaceAllowedIps,
                        ));
                    }
                    if let Some(endpoint) = &peer.endpoint {
                        attributes.push(WireguardPeerAttribute::Endpoint(endpoint_address(
                            endpoint,
                        )?));
                    }
                    attributes.push(WireguardPeerAttribute::PersistentKeepalive(
                        peer.persistent_keepalive,
                    ));
                    let allowed = peer.allowed_ips.iter().map(allowed_ip).collect();
                    attributes.push(WireguardPeerAttribute::AllowedIps(allowed));
                }
            }
            peers.push(WireguardPeer(attributes));
        }
        self.set(interface, vec![WireguardAttribute::Peers(peers)])
            .await
    }

    /// The device's state; `None` if there is no such WireGuard interface.
    pub async fn get(&self, interface: &str) -> Option<DeviceState> {
        let message = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(interface.to_owned())],
        };
        let replies = self
            .exchange(interface, message, NLM_F_REQUEST | NLM_F_DUMP)
            .await
            .ok()?;
        let mut state = DeviceState::default();
        // A device with many peers comes back in several messages.
        for reply in replies {
            for attribute in reply.attributes {
                match attribute {
                    WireguardAttribute::ListenPort(port) => state.listen_port = port,
                    WireguardAttribute::Peers(peers) => {
                        for peer in peers {
                            add_peer(&mut state, peer);
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(state)
    }
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = if net.addr().is_ipv4() {
        WireguardAddressFamily::Ipv4
    } else {
        WireguardAddressFamily::Ipv6
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.addr()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

fn add_peer(state: &mut DeviceState, peer: WireguardPeer) {
    let mut key = None;
    let mut found = Peer {
        endpoint: None,
        allowed_ips: BTreeSet::new(),
        persistent_keepalive: 0,
    };
    let mut stats = PeerStats::default();
    for attribute in peer.0 {
        match attribute {
            WireguardPeerAttribute::PublicKey(k) => key = Some(BASE64.encode(k)),
            WireguardPeerAttribute::Endpoint(e) => found.endpoint = Some(e.to_string()),
            WireguardPeerAttribute::PersistentKeepalive(k) => found.persistent_keepalive = k,
            WireguardPeerAttribute::AllowedIps(ips) => {
                for ip in ips {
                    let mut addr: Option<IpAddr> = None;
                    let mut cidr = None;
                    for a in ip.0 {
                        match a {
                            WireguardAllowedIpAttr::IpAddr(x) => addr = Some(x),
                            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(c),
                            _ => {}
                        }
                    }
                    if let Some(net) = addr.zip(cidr).and_then(|(a, c)| IpNet::new(a, c).ok()) {
                        found.allowed_ips.insert(net);
                    }
                }
            }
            WireguardPeerAttribute::LastHandshake(t) => {
                stats.handshake_age = handshake_age(t.seconds)
            }
            WireguardPeerAttribute::RxBytes(b) => stats.rx_bytes = b,
            WireguardPeerAttribute::TxBytes(b) => stats.tx_bytes = b,
            _ => {}
        }
    }
    if let Some(key) = key {
        // A peer split over two messages continues where it left off.
        let entry = state.peers.entry(key.clone()).or_insert_with(|| Peer {
            endpoint: None,
            allowed_ips: BTreeSet::new(),
            persistent_keepalive: 0,
        });
        entry.endpoint = found.endpoint.or(entry.endpoint.take());
        entry.persistent_keepalive = entry.persistent_keepalive.max(found.persistent_keepalive);
        entry.allowed_ips.extend(found.allowed_ips);
        state.stats.insert(key, stats);
    }
}
