//! The status API: the engine's latest [`Snapshot`](crate::snapshot::Snapshot) as JSON,
//! for administrators only.
//!
//! The snapshot names every tenant's members, their identities and addresses, partners'
//! endpoints and nodes' keys, so it is served on the node API's port under the same TLS,
//! and [`Auth::admin`] decides who reads it. Each request serialises the snapshot the
//! engine shares ([`Hub::snapshot`] is an `Arc`); nothing is copied first.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use wireway_proto::status::status_api_server::StatusApi;
use wireway_proto::status::{GetStatusRequest, GetStatusResponse};

use super::auth::Auth;
use crate::engine::Hub;
use crate::metrics::{Metrics, category};

pub use wireway_proto::status::status_api_server::StatusApiServer;

/// The status API.
#[derive(Debug, Clone)]
pub struct StatusApiService {
    hub: Arc<Hub>,
    auth: Auth,
    metrics: Metrics,
}

impl StatusApiService {
    /// The service, showing `hub`'s snapshot to the callers `auth` proves administrators.
    pub fn new(hub: Arc<Hub>, auth: Auth, metrics: Metrics) -> Self {
        Self { hub, auth, metrics }
    }
}

#[tonic::async_trait]
impl StatusApi for StatusApiService {
    async fn get(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        let reader = self.auth.admin(&request).await.inspect_err(|status| {
            self.metrics.error(category::STATUS_REFUSED);
            tracing::warn!(
                code = ?status.code(),
                reason = status.message(),
                "refused a status request"
            );
        })?;
        tracing::debug!(reader, "status read");
        let snapshot = self.hub.snapshot();
        let snapshot_json = serde_json::to_vec(snapshot.as_ref())
            .map_err(|e| Status::internal(format!("failed to encode the status: {e}")))?;
        Ok(Response::new(GetStatusResponse { snapshot_json }))
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::serve::auth::{Refusal, TokenAuthenticator};

    /// Tokens as a cluster would judge them: `admin` may read the status, `tenant` is
    /// someone who may not, `node-a` is node-a's agent; anything else proves nobody.
    #[derive(Debug)]
    struct Cluster;

    #[tonic::async_trait]
    impl TokenAuthenticator for Cluster {
        async fn node(&self, token: &str, _: Option<IpAddr>) -> Result<String, Refusal> {
            match token {
                "node-a" => Ok("node-a".into()),
                _ => Err(Refusal::Unauthenticated("not an agent's token".into())),
            }
        }

        async fn status_reader(&self, token: &str, _: Option<IpAddr>) -> Result<String, Refusal> {
            match token {
                "admin" => Ok("admin".into()),
                "tenant" | "node-a" => Err(Refusal::Forbidden(format!("{token} may not"))),
                _ => Err(Refusal::Unauthenticated("invalid bearer token".into())),
            }
        }
    }

    fn service() -> StatusApiService {
        let (metrics, _) = Metrics::new();
        StatusApiService::new(Arc::default(), Auth::Token(Arc::new(Cluster)), metrics)
    }

    fn with_token(token: Option<&str>) -> Request<GetStatusRequest> {
        let mut request = Request::new(GetStatusRequest {});
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    async fn code(token: Option<&str>) -> tonic::Code {
        match service().get(with_token(token)).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    }

    #[tokio::test]
    async fn the_status_without_a_token_is_unauthenticated() {
        assert_eq!(code(None).await, tonic::Code::Unauthenticated);
        assert_eq!(code(Some("forged")).await, tonic::Code::Unauthenticated);
    }

    #[tokio::test]
    async fn the_status_for_a_user_without_the_permission_is_denied() {
        assert_eq!(code(Some("tenant")).await, tonic::Code::PermissionDenied);
    }

    #[tokio::test]
    async fn a_node_token_cannot_read_the_status() {
        assert_eq!(code(Some("node-a")).await, tonic::Code::PermissionDenied);
    }

    #[tokio::test]
    async fn an_administrator_reads_the_snapshot_as_json() {
        let response = service().get(with_token(Some("admin"))).await.unwrap();
        let json = response.into_inner().snapshot_json;
        let shown: crate::snapshot::Snapshot = serde_json::from_slice(&json).unwrap();
        assert_eq!(shown, crate::snapshot::Snapshot::default());
    }
}
