//! The HTTP endpoints every Wireway binary serves: `/metrics` in the Prometheus text
//! format, `/healthz` (the process answers) and `/readyz` (it is doing its job; otherwise
//! 503 and the reason). Binaries add their own routes to [`router`]'s result.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::listen::Listener;

/// Whether a binary is ready, and if not, why: shared between the part that knows and
/// the `/readyz` handler.
#[derive(Debug, Clone)]
pub struct Readiness(Arc<Mutex<Option<String>>>);

impl Readiness {
    /// Not ready, for `reason`.
    pub fn new(reason: &str) -> Self {
        Self(Arc::new(Mutex::new(Some(reason.to_owned()))))
    }

    /// Ready.
    pub fn set_ready(&self) {
        self.set(None);
    }

    /// Not ready, for `reason` (for a person: "waiting for the manifests to load").
    pub fn set_not_ready(&self, reason: &str) {
        self.set(Some(reason.to_owned()));
    }

    fn set(&self, value: Option<String>) {
        if let Ok(mut state) = self.0.lock() {
            *state = value;
        }
    }

    /// `None` when ready, else the reason.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().map_or_else(
            |_| Some("readiness state is poisoned".to_owned()),
            |s| s.clone(),
        )
    }
}

/// The content type of the text exposition format prometheus-client writes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => {
                            ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response()
                        }
                        Err(e) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("failed to encode metrics: {e}\n"),
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move {
                    match readiness.reason() {
                        None => (StatusCode::OK, "ready\n".to_owned()),
                        Some(reason) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {reason}\n"),
                        ),
                    }
                }
            }),
        )
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: Listener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match listener {
        Listener::Tcp(tcp) => {
            axum::serve(tcp, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Listener::Unix(unix) => {
            axum::serve(unix, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
