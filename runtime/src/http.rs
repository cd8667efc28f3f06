//! The HTTP endpoints every Wireway binary serves: `/metrics` in the Prometheus text
//! format, `/healthz` (the process answers) and `/readyz` (it is doing its job; otherwise
//! 503 and the reason). Binaries add their own routes to [`router`]'s result.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
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

/// The content type of OpenMetrics, which prometheus-client writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text as the classic Prometheus text format (0.0.4), for scrapers and
/// tools that do not ask for OpenMetrics (`promtool check metrics`, `curl`): a counter's
/// and an info metric's family take their samples' names (`_total`, `_info`), an info
/// metric is a gauge, and `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if line
            .split(['{', ' '])
            .next()
            .is_some_and(|n| n.ends_with("_created"))
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    let openmetrics = headers
                        .get(header::ACCEPT)
                        .and_then(|a| a.to_str().ok())
                        .is_some_and(|a| a.contains("application/openmetrics-text"));
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) if openmetrics => {
                            ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body)
                                .into_response()
                        }
                        Ok(()) => (
                            [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
                            to_prometheus_text(&body),
                        )
                            .into_response(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_becomes_classic_text() {
        let openmetrics = "\
# HELP ww_plans Plans made.
# TYPE ww_plans counter
ww_plans_total 3
# HELP ww_backend The backend.
# TYPE ww_backend info
ww_backend_info{backend=\"kernel\"} 1
# HELP ww_duration_seconds Time.
# TYPE ww_duration_seconds histogram
# UNIT ww_duration_seconds seconds
ww_duration_seconds_sum 0.5
ww_duration_seconds_count 1
ww_duration_seconds_bucket{le=\"+Inf\"} 1
# EOF
";
        assert_eq!(
            to_prometheus_text(openmetrics),
            "\
# HELP ww_plans_total Plans made.
# TYPE ww_plans_total counter
ww_plans_total 3
# HELP ww_backend_info The backend.
# TYPE ww_backend_info gauge
ww_backend_info{backend=\"kernel\"} 1
# HELP ww_duration_seconds Time.
# TYPE ww_duration_seconds histogram
ww_duration_seconds_sum 0.5
ww_duration_seconds_count 1
ww_duration_seconds_bucket{le=\"+Inf\"} 1
"
        );
    }
}
