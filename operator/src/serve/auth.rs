//! Who a gRPC caller is, and what it may do: an agent is served only its own node, and
//! only an administrator reads the status.
//!
//! One [`Auth`] serves both APIs, so the status is guarded exactly like the node API:
//! under mutual TLS by the identity in the client certificate (a node's proves
//! `spiffe://<td>/wireway/node/<node>`, an administrator's `spiffe://<td>/wireway/admin`);
//! with tokens by what the cluster says of the token ([`TokenAuthenticator`]: in a
//! cluster a TokenReview, and for the status a SubjectAccessReview too).

use std::net::IpAddr;
use std::sync::Arc;

use tonic::{Request, Status};
use wireway_runtime::errors::chain;
use wireway_runtime::tls;

/// Why a bearer token proves nothing: the authenticator's own error, told to the caller
/// with its causes.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// Why a bearer token is not accepted, by what the caller is told (a gRPC code each).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The token proves nobody, or nobody of the kind asked for: `Unauthenticated`.
    #[error(transparent)]
    Unauthenticated(TokenError),
    /// The token proves a user who may not do this: `PermissionDenied`.
    #[error("{0}")]
    Forbidden(String),
    /// The caller had too many tokens reviewed lately: `ResourceExhausted`.
    #[error("too many token reviews from this address lately: retry in a few seconds")]
    Throttled,
    /// The token could not be checked (the API server did not answer): `Unavailable`.
    #[error(transparent)]
    Unchecked(TokenError),
}

impl Refusal {
    /// The gRPC status the caller gets.
    pub fn status(&self) -> Status {
        let message = chain(self);
        match self {
            Self::Unauthenticated(_) => Status::unauthenticated(message),
            Self::Forbidden(_) => Status::permission_denied(message),
            Self::Throttled => Status::resource_exhausted(message),
            Self::Unchecked(_) => Status::unavailable(message),
        }
    }
}

/// Tells who a bearer token proves (in a cluster: a TokenReview, then for the status a
/// SubjectAccessReview).
///
/// `peer` is the caller's address (`None` on a Unix socket): an authenticator may limit
/// how many reviews one address gets.
#[tonic::async_trait]
pub trait TokenAuthenticator: std::fmt::Debug + Send + Sync {
    /// The node `token` proves.
    async fn node(&self, token: &str, peer: Option<IpAddr>) -> Result<String, Refusal>;

    /// The user `token` proves, if that user may read the operator's status.
    async fn status_reader(&self, token: &str, peer: Option<IpAddr>) -> Result<String, Refusal>;
}

/// How callers prove who they are.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A client certificate naming `spiffe://<trust_domain>/wireway/node/<node>` (an
    /// agent) or `spiffe://<trust_domain>/wireway/admin` (an administrator).
    MutualTls {
        /// The trust domain identities must belong to.
        trust_domain: String,
    },
    /// A bearer token (`authorization: Bearer ...`) that proves a node or a user.
    Token(Arc<dyn TokenAuthenticator>),
    /// Nothing: any client may claim any node and read the status (debugging only).
    Plaintext,
}

/// The bearer token of a request, if it has one.
fn bearer<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The caller's IP address (`None` on a Unix socket).
fn peer<T>(request: &Request<T>) -> Option<IpAddr> {
    request.remote_addr().map(|a| a.ip())
}

impl Auth {
    /// Refuses a request that is not from `node`'s agent.
    pub async fn node<T>(&self, request: &Request<T>, node: &str) -> Result<(), Status> {
        let trust_domain = match self {
            Self::Plaintext => return Ok(()),
            Self::Token(authenticator) => {
                let token = bearer(request).ok_or_else(|| {
                    Status::unauthenticated(
                        "no bearer token: an agent presents its service-account token for audience wireway-operator",
                    )
                })?;
                let proven = authenticator
                    .node(token, peer(request))
                    .await
                    .map_err(|r| r.status())?;
                if proven == node {
                    return Ok(());
                }
                return Err(Status::permission_denied(format!(
                    "the token proves node {proven}, not node {node}"
                )));
            }
            Self::MutualTls { trust_domain } => trust_domain,
        };
        let uris = tls::peer_uris(request);
        let proven: Vec<&str> = uris
            .iter()
            .filter_map(|u| tls::node_of(u, trust_domain))
            .collect();
        if proven.contains(&node) {
            return Ok(());
        }
        let expected = tls::node_identity(trust_domain, node);
        Err(Status::permission_denied(match proven.first() {
            Some(other) => format!(
                "the client certificate proves node {other}, not node {node} (expected the URI {expected})"
            ),
            None => format!(
                "the client certificate carries no node identity (expected the URI {expected})"
            ),
        }))
    }

    /// Who the caller is, if an administrator (who may read the status); else refused.
    pub async fn admin<T>(&self, request: &Request<T>) -> Result<String, Status> {
        match self {
            Self::Plaintext => Ok("anyone (plaintext)".to_owned()),
            Self::Token(authenticator) => {
                let token = bearer(request).ok_or_else(|| {
                    Status::unauthenticated(
                        "no bearer token: the status is for administrators, who present a token for audience wireway-operator",
                    )
                })?;
                authenticator
                    .status_reader(token, peer(request))
                    .await
                    .map_err(|r| r.status())
            }
            Self::MutualTls { trust_domain } => {
                let expected = tls::admin_identity(trust_domain);
                let uris = tls::peer_uris(request);
                if uris.contains(&expected) {
                    return Ok(expected);
                }
                Err(Status::permission_denied(match uris.first() {
                    Some(other) => format!(
                        "the status is for administrators: the client certificate proves {other}, not {expected}"
                    ),
                    None => format!(
                        "the status is for administrators: present a client certificate proving {expected} (`wireway certs admin`)"
                    ),
                }))
            }
        }
    }
}
