//! CIDR prefixes as the API writes them: `10.100.0.0/16`, `fd00:100::/48`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Why a string is not a canonical CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not `address/length`, or the parts do not parse.
    #[error("{0:?} is not a CIDR prefix such as 10.100.0.0/16 or fd00:100::/48")]
    Syntax(String),
    /// Bits set after the prefix length: `10.100.0.1/16`.
    #[error("{given} has host bits set; the prefix is {canonical}")]
    HostBits {
        /// What was written.
        given: String,
        /// The same prefix with host bits cleared.
        canonical: String,
    },
}

/// An IPv4 or IPv6 prefix whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// 32 for IPv4, 128 for IPv6.
    pub fn max_prefix_len(&self) -> u8 {
        self.0.max_prefix_len()
    }

    /// Whether this is an IPv4 prefix.
    pub fn is_ipv4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    /// Whether `other` lies wholly inside `self` (same family, not shorter).
    pub fn contains(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0)
    }

    /// Whether `addr` lies inside `self`.
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        self.0.contains(&addr)
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0) || other.0.contains(&self.0)
    }

    /// The underlying prefix.
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl From<IpNet> for Cidr {
    /// Clears host bits, so the result is always canonical.
    fn from(net: IpNet) -> Self {
        Self(net.trunc())
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net: IpNet = s.parse().map_err(|_| CidrError::Syntax(s.to_owned()))?;
        if net.trunc() != net {
            return Err(CidrError::HostBits {
                given: s.to_owned(),
                canonical: net.trunc().to_string(),
            });
        }
        Ok(Self(net))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_families() {
        let v4: Cidr = "10.100.0.0/16".parse().unwrap();
        assert!(v4.is_ipv4());
        assert_eq!((v4.prefix_len(), v4.max_prefix_len()), (16, 32));
        let v6: Cidr = "fd00:100::/48".parse().unwrap();
        assert!(!v6.is_ipv4());
        assert_eq!((v6.prefix_len(), v6.max_prefix_len()), (48, 128));
    }

    #[test]
    fn rejects_host_bits_and_junk() {
        assert_eq!(
            "10.100.0.1/16".parse::<Cidr>(),
            Err(CidrError::HostBits {
                given: "10.100.0.1/16".into(),
                canonical: "10.100.0.0/16".into()
            })
        );
        for junk in [
            "10.100.0.0",
            "10.100.0.0/33",
            "fd00::/129",
            "red",
            "10.100.0.0/16 ",
        ] {
            assert_eq!(
                junk.parse::<Cidr>(),
                Err(CidrError::Syntax(junk.into())),
                "{junk}"
            );
        }
    }

    #[test]
    fn containment_and_overlap() {
        let service: Cidr = "10.100.0.0/16".parse().unwrap();
        let slice: Cidr = "10.100.128.0/17".parse().unwrap();
        let other: Cidr = "10.101.0.0/16".parse().unwrap();
        assert!(service.contains(&slice) && !slice.contains(&service));
        assert!(service.overlaps(&slice) && slice.overlaps(&service));
        assert!(!service.overlaps(&other));
        assert!(service.contains_addr("10.100.3.4".parse().unwrap()));
        assert!(!service.contains(&"fd00::/8".parse().unwrap()));
    }
}
