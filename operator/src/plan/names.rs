//! Names of the interfaces the agents create: deterministic, at most 15 bytes, with a
//! recognisable prefix so an agent knows what it owns.

pub use wireway_proto::{HOST_VETH_PREFIX, WIREGUARD_PREFIX};
/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
pub const MAX_INTERFACE_NAME: usize = 15;

/// FNV-1a: a small hash whose value never changes between builds or platforms, unlike
/// the standard library's, so names derived from it stay the same across releases.
pub fn stable_hash(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// An object name made safe for an interface name and cut to `len` bytes.
fn shortened(name: &str, len: usize) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(len)
        .collect()
}

/// The WireGuard interface names a service may get, best first: `ww-<name>`, then
/// `ww-<name>-<hash>` variants for when another service (same name, other namespace)
/// holds the first.
pub fn wireguard_candidates(namespace: &str, name: &str) -> impl Iterator<Item = String> + use<> {
    let plain = format!(
        "{WIREGUARD_PREFIX}{}",
        shortened(name, MAX_INTERFACE_NAME - 3)
    );
    let base = shortened(name, 7);
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    std::iter::once(plain).chain((0u32..).map(move |attempt| {
        let hash = stable_hash(&[&namespace, &name, &attempt.to_string()]);
        format!("{WIREGUARD_PREFIX}{base}-{:04x}", hash & 0xffff)
    }))
}

/// The interface name inside a pod when its Endpoint names none: `nsm-<service>`.
pub fn default_member_interface(service_name: &str) -> String {
    format!("nsm-{}", shortened(service_name, MAX_INTERFACE_NAME - 4))
}

/// Host veth names for a member, best first; the node picks the first one no other
/// member of the node holds.
pub fn host_veth_candidates(service: &str, member: &str) -> impl Iterator<Item = String> + use<> {
    let (service, member) = (service.to_owned(), member.to_owned());
    (0u32..).map(move |attempt| {
        let hash = stable_hash(&[&service, &member, &attempt.to_string()]);
        format!("{HOST_VETH_PREFIX}{:08x}", hash as u32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_carry_the_prefix() {
        let long = "a-very-long-network-service-name.with.dots";
        for name in wireguard_candidates("ns", long).take(5) {
            assert!(
                name.len() <= MAX_INTERFACE_NAME && name.starts_with(WIREGUARD_PREFIX),
                "{name}"
            );
            assert!(!name.contains('.'), "{name}");
        }
        assert_eq!(
            wireguard_candidates("red", "red").next().as_deref(),
            Some("ww-red")
        );
        assert_eq!(default_member_interface("red"), "nsm-red");
        assert_eq!(default_member_interface(long).len(), MAX_INTERFACE_NAME);
        let veth = host_veth_candidates("red/red", "red/red-a")
            .next()
            .unwrap_or_default();
        assert!(
            veth.len() == 11 && veth.starts_with(HOST_VETH_PREFIX),
            "{veth}"
        );
    }

    #[test]
    fn the_hash_is_stable_across_releases() {
        // A change here renames interfaces on every node: never change these values.
        assert_eq!(stable_hash(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(&["red", "red"]), stable_hash(&["red", "red"]));
        assert_ne!(stable_hash(&["re", "dred"]), stable_hash(&["red", "red"]));
    }
}
