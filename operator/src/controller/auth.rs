//! Agents prove their node to the operator with a projected service-account token
//! (audience `wireway-operator`), checked with a TokenReview.
//!
//! Why tokens rather than certificates issued by the operator: the kubelet already
//! issues, binds and rotates them. A token bound to a pod names the pod's node
//! (`authentication.kubernetes.io/node-name`, Kubernetes 1.30+), so the operator learns
//! which node an agent runs on from the API server itself, with no CA key to keep, no
//! signing endpoint to protect and no revocation to build. Its audience makes it useless
//! against the API server and anything else.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::plan::names::stable_hash;
use crate::serve::{TokenAuthenticator, TokenError};

/// The audience agents' tokens are for.
pub const AUDIENCE: &str = "wireway-operator";
/// The extra field of a pod-bound token that names the pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// How long a reviewed token is trusted without asking again.
const CACHE_FOR: Duration = Duration::from_secs(60);

/// Why a token proves no node.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The TokenReview could not be made.
    #[error("the TokenReview failed")]
    Review(#[source] kube::Error),
    /// The API server does not accept the token (for this audience).
    #[error("the token is not valid for audience {AUDIENCE}: {0}")]
    Unauthenticated(String),
    /// The token is another account's.
    #[error("the token is {user}'s, not {expected}'s")]
    OtherUser {
        /// Whose it is.
        user: String,
        /// Whose it must be.
        expected: String,
    },
    /// The token is not bound to a pod, so it names no node.
    #[error("the token is not bound to a pod on a node (Kubernetes 1.30+ binds it)")]
    NoNode,
}

/// Checks agents' tokens with TokenReviews.
pub struct TokenReviewer {
    client: Client,
    /// The user agents run as: `system:serviceaccount:<namespace>:wireway-agent`.
    agent_user: String,
    /// Tokens reviewed lately (by hash): the node they prove, and when.
    cache: Mutex<BTreeMap<u64, (String, Instant)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("agent_user", &self.agent_user)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer accepting the service account `wireway-agent` of `namespace`.
    pub fn new(client: Client, namespace: &str) -> Self {
        Self {
            client,
            agent_user: format!("system:serviceaccount:{namespace}:wireway-agent"),
            cache: Mutex::default(),
        }
    }
}

#[tonic::async_trait]
impl TokenAuthenticator for TokenReviewer {
    async fn node(&self, token: &str) -> Result<String, TokenError> {
        Ok(self.review(token).await?)
    }
}

impl TokenReviewer {
    /// The node `token` proves: from the cache when reviewed lately.
    async fn review(&self, token: &str) -> Result<String, ReviewError> {
        let hash = stable_hash(&[token]);
        if let Ok(cache) = self.cache.lock()
            && let Some((node, at)) = cache.get(&hash)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(node.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(ReviewError::Review)?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::Unauthenticated(
                status.error.unwrap_or_default(),
            ));
        }
        let user = status.user.unwrap_or_default();
        if user.username.as_deref() != Some(self.agent_user.as_str()) {
            return Err(ReviewError::OtherUser {
                user: user.username.unwrap_or_default(),
                expected: self.agent_user.clone(),
            });
        }
        let node = user
            .extra
            .and_then(|mut e| e.remove(NODE_NAME_EXTRA))
            .and_then(|nodes| nodes.into_iter().next())
            .ok_or(ReviewError::NoNode)?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
            cache.insert(hash, (node.clone(), Instant::now()));
        }
        Ok(node)
    }
}
