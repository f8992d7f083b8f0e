//! Browser sessions (`/api/v1/llm/auth/session`): a JWT verified at the edge is exchanged
//! for an HttpOnly session cookie; deleting the session logs out.

use super::identity::edge_identity;
use super::Routes;
use crate::accounts;
use crate::error::{AppError, AppResult, ErrorEnvelope};
use crate::sessions::{self, SESSION_COOKIE};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use opsgate_core::credentials;
use serde::Serialize;

pub(super) fn router() -> Routes {
    Routes::default().route(
        "/api/v1/llm/auth/session",
        post(create_session).delete(delete_session),
    )
}

fn session_cookie(state: &AppState, value: &str, max_age: i64) -> AppResult<HeaderValue> {
    let secure = if state.settings.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}{secure}"
    ))
    .map_err(AppError::internal)
}

#[derive(Serialize, utoipa::ToSchema)]
struct SessionOpened {
    user_id: String,
    expires_at: i64,
}

/// `POST /api/v1/llm/auth/session`: exchanges a JWT verified at the edge for an HttpOnly
/// session cookie.
#[utoipa::path(post, path = "/api/v1/llm/auth/session", tag = "sessions", summary = "Exchange a JWT verified at the edge for a session cookie", responses((status = 201, description = "Session opened; Set-Cookie: session_token (HttpOnly)", body = SessionOpened), (status = 401, body = ErrorEnvelope)), security(("jwt" = [])))]
async fn create_session(State(state): State<AppState>, headers: HeaderMap) -> AppResult<Response> {
    let Some(id) = edge_identity(&state, &headers) else {
        return Err(AppError::unauthorized(
            "Sign in with a valid JWT ('Authorization: Bearer <token>') to open a session.",
        ));
    };
    let user = accounts::get_user(&state.db, &id.subject)
        .await?
        .ok_or_else(|| AppError::unauthorized("No opsgate user matches this token's subject."))?;
    let now = state.clock.now();
    let ttl = state.settings.session_ttl_secs;
    let token = sessions::open(&state.db, &user.id, now, ttl).await?;
    let mut resp = (
        StatusCode::CREATED,
        Json(SessionOpened {
            user_id: user.id,
            expires_at: now + ttl,
        }),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, &token, ttl)?);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `DELETE /api/v1/llm/auth/session`: logs out (revokes the session, clears the cookie).
#[utoipa::path(delete, path = "/api/v1/llm/auth/session", tag = "sessions", summary = "Log out", responses((status = 204, description = "Logged out; the cookie is cleared"), (status = 401, body = ErrorEnvelope)), security(("session" = [])))]
async fn delete_session(State(state): State<AppState>, headers: HeaderMap) -> AppResult<Response> {
    let cookie = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(token) = credentials::cookie_value(cookie, SESSION_COOKIE).filter(|t| !t.is_empty())
    else {
        return Err(AppError::unauthorized("No session cookie."));
    };
    sessions::revoke(&state.db, token, state.clock.now()).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, "", 0)?);
    Ok(resp)
}

/// This surface's entries in the OpenAPI document (`/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_session, delete_session))]
pub(super) struct Api;
