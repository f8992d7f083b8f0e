//! Liveness, readiness and the counters, for the orchestrator and Prometheus.

use crate::error::AppError;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::atomic::Ordering;

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

async fn metrics(State(state): State<AppState>) -> String {
    let m = &state.metrics;
    let (batches, jobs) = state.db.ledger_batches();
    format!(
        "# TYPE opsgate_authorize_total counter\n\
         opsgate_authorize_total{{decision=\"allow\"}} {}\n\
         opsgate_authorize_total{{decision=\"deny\"}} {}\n\
         # TYPE opsgate_settled_total counter\n\
         opsgate_settled_total {}\n\
         # TYPE opsgate_charged_millicredits_total counter\n\
         opsgate_charged_millicredits_total {}\n\
         # TYPE opsgate_ledger_batches_total counter\n\
         opsgate_ledger_batches_total {}\n\
         # TYPE opsgate_ledger_jobs_total counter\n\
         opsgate_ledger_jobs_total {}\n",
        m.authorize_allowed.load(Ordering::Relaxed),
        m.authorize_denied.load(Ordering::Relaxed),
        m.settled.load(Ordering::Relaxed),
        m.charged_mc.load(Ordering::Relaxed),
        batches,
        jobs,
    )
}
