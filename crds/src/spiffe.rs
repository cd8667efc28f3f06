//! SPIFFE IDs and trust domains, parsed per the SPIFFE ID specification
//! (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>).

use std::fmt;
use std::str::FromStr;

use crate::schema::{SPIFFE_ID_MAX_LEN, TRUST_DOMAIN_MAX_LEN};

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The string does not start with `spiffe://`.
    #[error("a SPIFFE ID must start with \"spiffe://\"")]
    Scheme,
    /// Nothing between `spiffe://` and the path.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// A character outside `[a-z0-9._-]` in the trust domain.
    #[error(
        "the trust domain may hold only lowercase letters, digits, '.', '-' and '_' (found {0:?})"
    )]
    TrustDomainChar(char),
    /// Longer than 255 bytes.
    #[error("the trust domain is longer than {TRUST_DOMAIN_MAX_LEN} bytes")]
    TrustDomainTooLong,
    /// Two slashes in a row, or a slash at the end.
    #[error("a path segment is empty (double or trailing '/')")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("a path segment may not be '.' or '..'")]
    DotSegment,
    /// A character outside `[a-zA-Z0-9._-]` in the path.
    #[error("a path segment may hold only letters, digits, '.', '-' and '_' (found {0:?})")]
    PathChar(char),
    /// Longer than 2048 bytes.
    #[error("a SPIFFE ID may be at most {SPIFFE_ID_MAX_LEN} bytes long")]
    TooLong,
}

/// A SPIFFE trust domain, such as `cluster.local` or `partner.example`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The trust domain's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if s.len() > TRUST_DOMAIN_MAX_LEN as usize {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        match s
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
        {
            Some(c) => Err(SpiffeIdError::TrustDomainChar(c)),
            None => Ok(Self(s.to_owned())),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE ID: `spiffe://<trust-domain>/<path>`.
///
/// A workload's identity. Pods get `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`
/// ([`SpiffeId::for_pod`]); external endpoints declare theirs in their spec.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// The whole ID, as written.
    id: String,
    /// Byte offset where the path starts (the length of `spiffe://` plus the trust domain).
    path_start: usize,
}

const SCHEME: &str = "spiffe://";

impl SpiffeId {
    /// The identity of a pod: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
    /// the convention of SPIRE's Kubernetes workload registrar and Istio.
    ///
    /// Fails only if the namespace or service account holds characters a SPIFFE path may
    /// not (Kubernetes names never do).
    pub fn for_pod(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// The trust domain: the part between `spiffe://` and the path.
    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.path_start]
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// Whether `self` equals `prefix` or lies below it, comparing whole path segments:
    /// `spiffe://td/ns/db` is a prefix of `spiffe://td/ns/db/sa/x` but not of
    /// `spiffe://td/ns/dbx`. Trust domains must be equal.
    pub fn has_prefix(&self, prefix: &SpiffeId) -> bool {
        self.trust_domain() == prefix.trust_domain()
            && match self.path().strip_prefix(prefix.path()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > SPIFFE_ID_MAX_LEN as usize {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let (domain, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        domain.parse::<TrustDomain>()?;
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                match segment {
                    "" => return Err(SpiffeIdError::EmptySegment),
                    "." | ".." => return Err(SpiffeIdError::DotSegment),
                    _ => {}
                }
                if let Some(c) = segment
                    .chars()
                    .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
                {
                    return Err(SpiffeIdError::PathChar(c));
                }
            }
        }
        Ok(Self {
            id: s.to_owned(),
            path_start: SCHEME.len() + domain.len(),
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        match s.parse() {
            Ok(id) => id,
            Err(e) => panic!("{s} should parse: {e}"),
        }
    }

    #[test]
    fn parses_valid_ids() {
        for s in [
            "spiffe://cluster.local",
            "spiffe://cluster.local/ns/red/sa/default",
            "spiffe://a_b-c.d/x.y/..z/.w/...",
        ] {
            assert_eq!(id(s).as_str(), s);
        }
        let parsed = id("spiffe://partner.example/ns/db/sa/replica");
        assert_eq!(parsed.trust_domain(), "partner.example");
        assert_eq!(parsed.path(), "/ns/db/sa/replica");
    }

    #[test]
    fn rejects_invalid_ids_with_the_reason() {
        let cases = [
            ("http://cluster.local/ns/x", SpiffeIdError::Scheme),
            ("SPIFFE://cluster.local/ns/x", SpiffeIdError::Scheme),
            ("spiffe:///ns/x", SpiffeIdError::EmptyTrustDomain),
            (
                "spiffe://Cluster.local/ns/x",
                SpiffeIdError::TrustDomainChar('C'),
            ),
            (
                "spiffe://cluster.local:8080/ns/x",
                SpiffeIdError::TrustDomainChar(':'),
            ),
            (
                "spiffe://user@cluster.local",
                SpiffeIdError::TrustDomainChar('@'),
            ),
            ("spiffe://cluster.local/", SpiffeIdError::EmptySegment),
            ("spiffe://cluster.local/ns//x", SpiffeIdError::EmptySegment),
            ("spiffe://cluster.local/ns/./x", SpiffeIdError::DotSegment),
            ("spiffe://cluster.local/ns/..", SpiffeIdError::DotSegment),
            (
                "spiffe://cluster.local/ns/x?q=1",
                SpiffeIdError::PathChar('?'),
            ),
            (
                "spiffe://cluster.local/ns/x#frag",
                SpiffeIdError::PathChar('#'),
            ),
            (
                "spiffe://cluster.local/ns/%41",
                SpiffeIdError::PathChar('%'),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<SpiffeId>(), Err(want), "{s}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(2048));
        assert_eq!(long.parse::<SpiffeId>(), Err(SpiffeIdError::TooLong));
        let long_domain = format!("spiffe://{}", "a".repeat(256));
        assert_eq!(
            long_domain.parse::<SpiffeId>(),
            Err(SpiffeIdError::TrustDomainTooLong)
        );
    }

    #[test]
    fn prefix_matches_whole_segments_within_one_trust_domain() {
        let prefix = id("spiffe://td/ns/db");
        assert!(id("spiffe://td/ns/db").has_prefix(&prefix));
        assert!(id("spiffe://td/ns/db/sa/replica").has_prefix(&prefix));
        assert!(!id("spiffe://td/ns/dbx").has_prefix(&prefix));
        assert!(!id("spiffe://td/ns").has_prefix(&prefix));
        assert!(!id("spiffe://other/ns/db").has_prefix(&prefix));
        assert!(id("spiffe://td/anything").has_prefix(&id("spiffe://td")));
    }

    #[test]
    fn pod_identity_follows_the_spire_convention() {
        let td: TrustDomain = match "cluster.local".parse() {
            Ok(td) => td,
            Err(e) => panic!("{e}"),
        };
        let pod = SpiffeId::for_pod(&td, "red", "bridge");
        assert_eq!(
            pod.map(|p| p.to_string()),
            Ok("spiffe://cluster.local/ns/red/sa/bridge".into())
        );
    }
}
