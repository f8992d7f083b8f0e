//! Liveness, readiness and the metrics, for the orchestrator and Prometheus.

use crate::error::AppError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.db.ping().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        AppError::new(opsgate_core::ErrorKind::Unavailable, "database unreachable").into_response()
    }
}

/// The registry, with the open holds counted now. OpenMetrics text, which Prometheus
/// negotiates (the classic text parser reads it too).
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
