//! WireGuard: the backend the agent drives, chosen at start ([`Backend::detect`]): the
//! kernel module through netlink ([`kernel`]) where it exists, else GotaTun in child
//! processes ([`userspace`]); and what both speak: device state, peer health, keys.

pub mod kernel;
pub mod tun;
pub mod udp;
pub mod userspace;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::converge::Peer;
use kernel::KernelWireGuard;
use userspace::Userspace;

/// Why a WireGuard operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WireGuardError {
    /// Talking to the device failed.
    #[error("failed to talk to the WireGuard device {interface}")]
    Io {
        /// The interface.
        interface: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The device refused a configuration.
    #[error("the WireGuard device {interface} refused the configuration (errno {errno})")]
    Refused {
        /// The interface.
        interface: String,
        /// The error number it answered.
        errno: i32,
    },
    /// A peer's endpoint is not an address.
    #[error("endpoint {0:?} of a peer is not an address (ip:port)")]
    Endpoint(String),
    /// A key is not 32 bytes of base64.
    #[error("a WireGuard key is not 32 bytes of base64")]
    Key,
    /// The device did not come up.
    #[error("the WireGuard device {interface} did not start: {reason}")]
    Start {
        /// The interface.
        interface: String,
        /// What happened instead.
        reason: String,
    },
}

/// A peer's health as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerStats {
    /// Seconds since the last handshake; `None` if none yet.
    pub handshake_age: Option<u64>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// What a device reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceState {
    /// Listen port.
    pub listen_port: u16,
    /// Peers by base64 public key.
    pub peers: BTreeMap<String, Peer>,
    /// Their health.
    pub stats: BTreeMap<String, PeerStats>,
}

/// One peer change of a configuration transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerChange<'a> {
    /// The peer's public key (base64).
    pub public_key: &'a str,
    /// The peer as it must be; `None` removes it.
    pub peer: Option<&'a Peer>,
    /// Whether the device may hold allowed IPs for the peer that `peer` does not name,
    /// so they are all replaced. Otherwise `peer`'s are added to those it holds: the
    /// kernel replaces by removing every one and adding them back, and a packet routed in
    /// between is dropped (Linux before 6.13 cannot remove one alone).
    pub replace_allowed_ips: bool,
}

/// The WireGuard implementation the agent drives, chosen at start.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The kernel module, through netlink.
    Kernel(KernelWireGuard),
    /// GotaTun in child processes.
    Userspace(Userspace),
}

impl Backend {
    /// The kernel backend when the kernel has WireGuard, else the userspace one.
    pub async fn detect(userspace: Userspace) -> Self {
        match KernelWireGuard::connect().await {
            Some(kernel) => Self::Kernel(kernel),
            None => Self::Userspace(userspace),
        }
    }

    /// `kernel` or `userspace`, for reports and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kernel(_) => "kernel",
            Self::Userspace(_) => "userspace",
        }
    }

    /// The device's state; `None` if there is no such device.
    pub async fn get(&self, interface: &str) -> Option<DeviceState> {
        match self {
            Self::Kernel(k) => k.get(interface).await,
            Self::Userspace(u) => u.get(interface),
        }
    }

    /// Sets the listen port.
    pub async fn set_listen_port(&self, interface: &str, port: u16) -> Result<(), WireGuardError> {
        match self {
            Self::Kernel(k) => k.set_listen_port(interface, port).await,
            Self::Userspace(u) => u.set_listen_port(interface, port),
        }
    }

    /// Adds, updates (in place) and removes peers in one transaction.
    pub async fn configure_peers(
        &self,
        interface: &str,
        changes: &[PeerChange<'_>],
    ) -> Result<(), WireGuardError> {
        match self {
            Self::Kernel(k) => k.configure_peers(interface, changes).await,
            Self::Userspace(u) => u.configure_peers(interface, changes),
        }
    }
}

/// A peer's endpoint as an address. The converger gives only addresses (host names are
/// resolved before converging, so no DNS lookup blocks a kernel write).
pub(crate) fn endpoint_address(endpoint: &str) -> Result<SocketAddr, WireGuardError> {
    endpoint
        .parse()
        .map_err(|_| WireGuardError::Endpoint(endpoint.to_owned()))
}

/// A key's 32 bytes, from base64.
pub(crate) fn key_bytes(key: &str) -> Result<[u8; 32], WireGuardError> {
    BASE64
        .decode(key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .ok_or(WireGuardError::Key)
}

/// The node's private key (base64), held so that no `Debug` of what holds it shows it.
#[derive(Clone)]
pub struct PrivateKey(String);

impl PrivateKey {
    /// Holds `key`.
    pub fn new(key: String) -> Self {
        Self(key)
    }

    /// The key itself, for the WireGuard device only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Never the key.
impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// The age of a handshake the device reports as a time (seconds since the epoch, 0 for
/// none yet, as both backends do).
fn handshake_age(unix_seconds: i64) -> Option<u64> {
    (unix_seconds > 0).then(|| {
        let age = wireway_runtime::clock::unix_seconds().saturating_sub(unix_seconds);
        u64::try_from(age).unwrap_or(0)
    })
}

/// A new private key (base64) and its public key, from the kernel's random source.
pub fn generate_key() -> std::io::Result<(String, String)> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    let secret = gotatun::x25519::StaticSecret::from(bytes);
    let public = gotatun::x25519::PublicKey::from(&secret);
    Ok((
        BASE64.encode(secret.to_bytes()),
        BASE64.encode(public.as_bytes()),
    ))
}

/// The public key (base64) of a private key (base64).
pub fn public_key(private_key: &str) -> Result<String, WireGuardError> {
    let secret = gotatun::x25519::StaticSecret::from(key_bytes(private_key)?);
    Ok(BASE64.encode(gotatun::x25519::PublicKey::from(&secret).as_bytes()))
}
