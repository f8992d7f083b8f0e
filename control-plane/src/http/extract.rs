//! Extractors and body parsing shared by every surface: query strings and JSON bodies are
//! refused in the error envelope, and a handler that reads a body reads it first.

use crate::error::{AppError, AppResult};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Query};
use axum::handler::Handler;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

/// A handler that takes a body reads it before its caller is checked: a body past the limit
/// (or unreadable) is refused as such (413/400) whoever sends it, and the auth extractors
/// then see a buffered body. The body is read with the same extractor and limit the
/// handler's `Bytes` argument uses.
pub(super) fn body_first<H, T>(handler: H) -> impl Handler<T, AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    handler.layer(axum::middleware::from_fn(buffer_body))
}

async fn buffer_body(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let mut whole = axum::extract::Request::new(body);
    *whole.extensions_mut() = parts.extensions.clone();
    match Bytes::from_request(whole, &()).await {
        Ok(bytes) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// Query parameters, refused in the error envelope when malformed.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Q(q))
            .map_err(|e| AppError::bad_request(format!("Invalid query: {e}")))
    }
}

/// Parses a JSON body strictly (unknown fields refused), answering in the error envelope.
pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> AppResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| AppError::bad_request(format!("Invalid request body: {e}")))
}

/// Parses a body that carries a secret. Unlike [`parse`], the error never quotes the body:
/// serde's messages can repeat a value ("invalid type: string \"…\"").
pub(super) fn parse_secret_body<T: DeserializeOwned>(body: &Bytes, shape: &str) -> AppResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        AppError::bad_request(format!(
            "Invalid request body (line {}, column {}): expected {shape}",
            e.line(),
            e.column()
        ))
    })
}
