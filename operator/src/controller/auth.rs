//! Bearer tokens checked with the API server: an agent proves its node with a projected
//! service-account token (audience `wireway-operator`), checked with a TokenReview; an
//! administrator reads the status with a token for the same audience whose user a
//! SubjectAccessReview allows to `get` `networkservices/status` ([`STATUS_ACCESS`]).
//!
//! Why tokens rather than certificates issued by the operator: the kubelet already
//! issues, binds and rotates them. A token bound to a pod names the pod's node
//! (`authentication.kubernetes.io/node-name`, Kubernetes 1.30+), so the operator learns
//! which node an agent runs on from the API server itself, with no CA key to keep, no
//! signing endpoint to protect and no revocation to build. Its audience makes it useless
//! against the API server and anything else.
//!
//! Whoever reaches the port may send tokens, so each review is paid for once: a
//! verdict is remembered by the token's SHA-256 (an accepted token for a minute, a
//! refused one for [`Limits::refused_for`], so a flood of one bad token costs one
//! review), and reviews not answered from memory are rate-limited per caller address
//! (a token bucket, [`Limits::burst`] and [`Limits::per_second`]), so a flood of
//! distinct tokens costs the API server little more than one caller's share. The API
//! server's answer is believed only for the operator's audience: a token it accepts for
//! other audiences (its own, by default) proves nothing here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use wireway_runtime::limit::Buckets;

use crate::serve::{Refusal, TokenAuthenticator};

/// The audience agents' and administrators' tokens are for.
pub const AUDIENCE: &str = "wireway-operator";
/// The extra field of a pod-bound token that names the pod's node.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// What a user must be allowed, in every namespace, to read the status: `get` on
/// `networkservices/status` in API group `wireway.dev`. Cluster administrators have it;
/// a tenant, whose roles are bound in its own namespaces, does not; the ClusterRole
/// `wireway-status-reader` (config/rbac/status-reader.yaml) grants it.
pub const STATUS_ACCESS: StatusAccess = StatusAccess {
    group: "wireway.dev",
    resource: "networkservices",
    subresource: "status",
    verb: "get",
};

/// A permission a SubjectAccessReview asks about, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusAccess {
    /// The API group.
    pub group: &'static str,
    /// The resource.
    pub resource: &'static str,
    /// The subresource.
    pub subresource: &'static str,
    /// The verb.
    pub verb: &'static str,
}

impl std::fmt::Display for StatusAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{} (API group {}) in every namespace",
            self.verb, self.resource, self.subresource, self.group
        )
    }
}

/// How long verdicts are remembered, and how many reviews one address gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// How long an accepted token (and a granted status access) is trusted without
    /// asking again.
    pub accepted_for: Duration,
    /// How long a refused token (and a denied status access) stays refused without
    /// asking again.
    pub refused_for: Duration,
    /// Reviews one address may have made in a burst.
    pub burst: u32,
    /// Reviews one address earns per second after a burst.
    pub per_second: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            accepted_for: Duration::from_secs(60),
            refused_for: Duration::from_secs(10),
            // An agent needs one review per token (the kubelet rotates it hourly), and
            // one more after each operator restart: ten at once is plenty.
            burst: 10,
            per_second: 1.0,
        }
    }
}

/// Why a token proves nothing, as the API server answered. Remembered for
/// [`Limits::refused_for`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The API server does not accept the token (for this audience).
    #[error("the token is not valid for audience {AUDIENCE}: {0}")]
    Unauthenticated(String),
    /// The API server accepts the token, but not for the operator's audience.
    #[error("the token is not for audience {AUDIENCE} (the API server accepts it for {0})")]
    Audience(String),
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

/// Why a review could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The TokenReview could not be made.
    #[error("failed to create a TokenReview")]
    TokenReview(#[source] kube::Error),
    /// The SubjectAccessReview could not be made.
    #[error("failed to create a SubjectAccessReview")]
    AccessReview(#[source] kube::Error),
}

/// A token's SHA-256: what verdicts are remembered by, so no token is kept.
type Digest = [u8; 32];

fn digest(token: &str) -> Digest {
    let mut out = [0; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// Verdicts by token digest, each until it expires.
#[derive(Debug)]
struct Memory<T>(BTreeMap<Digest, (Instant, T)>);

impl<T: Clone> Memory<T> {
    /// The verdict on `key`, unless it expired.
    fn get(&self, key: &Digest, now: Instant) -> Option<T> {
        self.0
            .get(key)
            .filter(|(until, _)| now < *until)
            .map(|(_, v)| v.clone())
    }

    /// Remembers a verdict for `ttl`, forgetting the expired ones.
    fn insert(&mut self, key: Digest, value: T, ttl: Duration, now: Instant) {
        self.0.retain(|_, (until, _)| now < *until);
        self.0.insert(key, (now + ttl, value));
    }
}

impl<T> Default for Memory<T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

/// What the reviewer remembers, under one lock.
#[derive(Debug)]
struct State {
    /// TokenReview verdicts: the user a token proves, or why it proves nobody.
    users: Memory<Result<UserInfo, Rejected>>,
    /// SubjectAccessReview verdicts for the status: granted, or why not.
    status_access: Memory<Result<(), String>>,
    /// A token bucket per caller address: a caller may have [`Limits::burst`] reviews
    /// made at once, then [`Limits::per_second`]. Callers on a Unix socket (`None`) share
    /// one.
    buckets: Buckets<Option<IpAddr>>,
}

/// Checks tokens with TokenReviews, and administrators' access with
/// SubjectAccessReviews.
pub struct TokenReviewer {
    client: Client,
    /// The user agents run as: `system:serviceaccount:<namespace>:wireway-agent`.
    agent_user: String,
    limits: Limits,
    state: Mutex<State>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("agent_user", &self.agent_user)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer accepting the service account `wireway-agent` of `namespace` as
    /// agents, with the default [`Limits`].
    pub fn new(client: Client, namespace: &str) -> Self {
        Self::with_limits(client, namespace, Limits::default())
    }

    /// A reviewer with `limits`.
    pub fn with_limits(client: Client, namespace: &str, limits: Limits) -> Self {
        Self {
            client,
            agent_user: format!("system:serviceaccount:{namespace}:wireway-agent"),
            limits,
            state: Mutex::new(State {
                users: Memory::default(),
                status_access: Memory::default(),
                buckets: Buckets::new(limits.burst, limits.per_second),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Spends one of `peer`'s reviews, or refuses.
    fn spend(&self, peer: Option<IpAddr>) -> Result<(), Refusal> {
        if self.state().buckets.take(&peer, Instant::now()) {
            Ok(())
        } else {
            tracing::debug!(?peer, "token review throttled");
            Err(Refusal::Throttled)
        }
    }

    /// The verdict `memory` holds on `key`, else `review`'s (for one of `peer`'s
    /// reviews), then remembered: an acceptance for [`Limits::accepted_for`], a refusal
    /// for [`Limits::refused_for`]. A review that could not be made is not remembered.
    async fn verdict<T: Clone, E: Clone>(
        &self,
        memory: impl Fn(&mut State) -> &mut Memory<Result<T, E>>,
        key: Digest,
        peer: Option<IpAddr>,
        review: impl Future<Output = Result<Result<T, E>, Refusal>>,
    ) -> Result<Result<T, E>, Refusal> {
        if let Some(verdict) = memory(&mut self.state()).get(&key, Instant::now()) {
            return Ok(verdict);
        }
        self.spend(peer)?;
        let verdict = review.await?;
        let ttl = if verdict.is_ok() {
            self.limits.accepted_for
        } else {
            self.limits.refused_for
        };
        memory(&mut self.state()).insert(key, verdict.clone(), ttl, Instant::now());
        Ok(verdict)
    }

    /// The user `token` proves: from memory when reviewed lately.
    async fn user(&self, token: &str, peer: Option<IpAddr>) -> Result<UserInfo, Refusal> {
        let review = self.token_review(token);
        self.verdict(|s| &mut s.users, digest(token), peer, review)
            .await?
            .map_err(|r| Refusal::Unauthenticated(r.into()))
    }

    /// Asks the API server who `token` proves, for the operator's audience.
    async fn token_review(&self, token: &str) -> Result<Result<UserInfo, Rejected>, Refusal> {
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
            .map_err(|e| Refusal::Unchecked(ReviewError::TokenReview(e).into()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Ok(Err(Rejected::Unauthenticated(
                status.error.unwrap_or_default(),
            )));
        }
        // An authenticator that does not know audiences answers none, and then the
        // token is one for the API server itself.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.iter().any(|a| a == AUDIENCE) {
            let theirs = if audiences.is_empty() {
                "the API server".to_owned()
            } else {
                audiences.join(", ")
            };
            return Ok(Err(Rejected::Audience(theirs)));
        }
        Ok(Ok(status.user.unwrap_or_default()))
    }

    /// The node an agent's user proves.
    fn node_of(&self, user: UserInfo) -> Result<String, Rejected> {
        if user.username.as_deref() != Some(self.agent_user.as_str()) {
            return Err(Rejected::OtherUser {
                user: user.username.unwrap_or_default(),
                expected: self.agent_user.clone(),
            });
        }
        user.extra
            .and_then(|mut e| e.remove(NODE_NAME_EXTRA))
            .and_then(|nodes| nodes.into_iter().next())
            .ok_or(Rejected::NoNode)
    }

    /// Whether `user` (who `token` proves) may read the status: from memory when asked
    /// lately, else a SubjectAccessReview.
    async fn status_access(
        &self,
        token: &str,
        user: &UserInfo,
        peer: Option<IpAddr>,
    ) -> Result<(), Refusal> {
        let review = self.access_review(user);
        self.verdict(|s| &mut s.status_access, digest(token), peer, review)
            .await?
            .map_err(Refusal::Forbidden)
    }

    /// Asks the API server whether `user` has [`STATUS_ACCESS`]: `Err` says why not.
    async fn access_review(&self, user: &UserInfo) -> Result<Result<(), String>, Refusal> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    group: Some(STATUS_ACCESS.group.to_owned()),
                    resource: Some(STATUS_ACCESS.resource.to_owned()),
                    subresource: Some(STATUS_ACCESS.subresource.to_owned()),
                    verb: Some(STATUS_ACCESS.verb.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let reviewed = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refusal::Unchecked(ReviewError::AccessReview(e).into()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.allowed && status.denied != Some(true) {
            return Ok(Ok(()));
        }
        let who = user.username.as_deref().unwrap_or("the token's user");
        let reason = status
            .reason
            .filter(|r| !r.is_empty())
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        Ok(Err(format!(
            "{who} may not read the status: it needs {STATUS_ACCESS}{reason}"
        )))
    }
}

#[tonic::async_trait]
impl TokenAuthenticator for TokenReviewer {
    async fn node(&self, token: &str, peer: Option<IpAddr>) -> Result<String, Refusal> {
        let user = self.user(token, peer).await?;
        self.node_of(user)
            .map_err(|r| Refusal::Unauthenticated(r.into()))
    }

    async fn status_reader(&self, token: &str, peer: Option<IpAddr>) -> Result<String, Refusal> {
        let user = self.user(token, peer).await?;
        self.status_access(token, &user, peer).await?;
        Ok(user.username.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_expire() {
        let mut m = Memory::default();
        let t0 = Instant::now();
        m.insert(digest("a"), 1, Duration::from_secs(10), t0);
        assert_eq!(m.get(&digest("a"), t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(m.get(&digest("a"), t0 + Duration::from_secs(10)), None);
        assert_eq!(m.get(&digest("b"), t0), None);
        assert_ne!(digest("a"), digest("b"));
    }
}
