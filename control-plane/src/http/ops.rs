//! Liveness, readiness and the metrics, for the orchestrator and Prometheus.

use super::Routes;
use crate::error::{AppError, ErrorEnvelope};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub(super) fn router() -> Routes {
    Routes::default()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "Liveness", responses((status = 200, description = "The process is up", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "Readiness", responses((status = 200, description = "The database answers", body = String), (status = 503, body = ErrorEnvelope)))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.db.ping().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        AppError::new(opsgate_core::ErrorKind::Unavailable, "database unreachable").into_response()
    }
}

/// The registry, with the open holds counted now. OpenMetrics text, which Prometheus
/// negotiates (the classic text parser reads it too).
#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics", responses((status = 200, description = "OpenMetrics text", body = String)))]
async fn metrics(State(state): State<AppState>) -> Response {
    match crate::ledger::open_holds(&state.db).await {
        Ok(n) => {
            state.metrics.holds_open.set(n);
        }
        Err(e) => tracing::warn!(error = %e.0.message, "cannot count the open holds"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This surface's entries in the OpenAPI document (`/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(healthz, readyz, metrics))]
pub(super) struct Api;
