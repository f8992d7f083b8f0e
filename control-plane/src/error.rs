//! One error type for the whole control plane; it renders as the OpenAI error envelope.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use opsgate_core::{ApiError, ErrorKind};

#[derive(Debug)]
pub struct AppError(pub ApiError);

impl AppError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        AppError(ApiError::new(kind, message))
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        // 409 has no kind of its own in the guide; it is a bad request with a clear message.
        Self::new(ErrorKind::BadRequest, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidApiKey, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, m)
    }
    /// Logs the detail; the client only learns that something failed inside.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(detail = %detail, "internal error");
        Self::new(ErrorKind::Internal, "Internal error; it has been logged.")
    }
}

impl From<ApiError> for AppError {
    fn from(e: ApiError) -> Self {
        AppError(e)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        if is_transient(&e) {
            return unavailable_database(&e.to_string());
        }
        AppError::internal(format!("database: {e}"))
    }
}

/// Database failures that say "busy, try again", not "broken": PostgreSQL's lock and
/// statement timeouts, a deadlock or serialization failure, a session ended by
/// `idle_in_transaction_session_timeout` or an administrator, and a pool with no free
/// connection in time.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => matches!(
            d.code().as_deref(),
            Some("55P03" | "57014" | "40P01" | "40001" | "25P03" | "57P01" | "53300")
        ),
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        _ => false,
    }
}

/// The 503 for a database that is busy or out of reach: logged, and the client told to
/// retry shortly.
pub fn unavailable_database(detail: &str) -> AppError {
    tracing::warn!(detail, "database unavailable");
    AppError(ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            ErrorKind::Unavailable,
            "The gateway's database is busy; retry shortly.",
        )
    })
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, self.0.to_json()).into_response();
        // The same reply headers as the filter's local replies (core::headers).
        for (name, value) in opsgate_core::headers::error_reply_headers(&self.0) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// Responses axum makes itself (a body past the size limit, an unreadable body) are plain
/// text; every error the control plane sends is in the envelope, so they are replaced.
pub async fn envelope_plain_errors(resp: Response) -> Response {
    let status = resp.status().as_u16();
    let json = resp
        .headers()
        .get(opsgate_core::headers::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("json"));
    if status < 400 || json {
        return resp;
    }
    AppError(ApiError::for_plain_status(status, "The control plane")).into_response()
}

/// The OpenAI error envelope, as the OpenAPI document describes it (the bytes come from
/// `opsgate_core::ApiError::envelope`).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    message: String,
    /// `invalid_request_error`, `insufficient_quota`, `rate_limit_error`, `server_error`, …
    #[serde(rename = "type")]
    kind: String,
    /// `invalid_api_key`, `insufficient_credits`, `admin_required`, …
    code: String,
    param: Option<String>,
}
