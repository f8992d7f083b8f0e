//! Who is calling a public or admin route, and browser sessions.
//!
//! The control plane checks service keys, `uc_` keys and session cookies itself. JWTs are
//! verified at the edge: the filter passes the verified identity in
//! [`IDENTITY_HEADER`], which is trusted only together with the internal token in
//! [`IDENTITY_AUTH_HEADER`] (the filter strips both from every client request). A verified
//! JWT's `sub` is the opsgate user id.

use crate::accounts::{self, random_hex, User};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use opsgate_core::contract::{identity_auth, Identity, IDENTITY_AUTH_HEADER, IDENTITY_HEADER};
use opsgate_core::credentials::{self, Credential};
use serde_json::json;
use sqlx::Row;

pub const SESSION_COOKIE: &str = "session_token";

/// The identity the filter verified, when the request carries it with the internal token.
pub fn edge_identity(state: &AppState, headers: &HeaderMap) -> Option<Identity> {
    let auth = headers.get(IDENTITY_AUTH_HEADER)?.to_str().ok()?;
    let expected = identity_auth(&state.settings.internal_token);
    if !credentials::constant_time_eq(auth.as_bytes(), expected.as_bytes()) {
        return None;
    }
    Identity::decode(headers.get(IDENTITY_HEADER)?.to_str().ok()?)
}

/// The caller of a public route.
async fn caller(state: &AppState, headers: &HeaderMap) -> AppResult<User> {
    if let Some(id) = edge_identity(state, headers) {
        return accounts::get_user(&state.db, &id.subject)
            .await?
            .ok_or_else(|| {
                AppError::unauthorized("No opsgate user matches this token's subject.")
            });
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
    let cookie = headers.get("cookie").and_then(|v| v.to_str().ok());
    let cred =
        credentials::extract(auth, cookie).map_err(|e| AppError::unauthorized(e.message()))?;
    let now = state.clock.now();
    let user = match cred {
        Credential::ServiceKey(k) => {
            accounts::user_by_service_key_digest(&state.db, &credentials::digest(k)).await?
        }
        Credential::UserKey(k) => {
            accounts::user_by_api_key_digest(&state.db, &credentials::digest(k), now).await?
        }
        Credential::Session(token) => user_for_session(state, &credentials::digest(token)).await?,
        Credential::Jwt(_) => {
            return Err(AppError::unauthorized(
                "JWTs are verified by the gateway: call this endpoint through it.",
            ))
        }
    };
    user.ok_or_else(|| {
        AppError::unauthorized(match cred {
            Credential::ServiceKey(_) => "Invalid service key",
            Credential::UserKey(_) => "Invalid or revoked API key",
            Credential::Session(_) => "Invalid or expired session; sign in again.",
            Credential::Jwt(_) => "Invalid credentials",
        })
    })
}

/// The user of an active session.
pub async fn user_for_session(state: &AppState, digest: &str) -> AppResult<Option<User>> {
    let row = sqlx::query(
        "SELECT user_id FROM sessions WHERE digest = $1 AND revoked_at IS NULL AND expires_at > $2",
    )
    .bind(digest)
    .bind(state.clock.now())
    .fetch_optional(&state.db.pool)
    .await?;
    match row {
        Some(r) => accounts::get_user(&state.db, &r.try_get::<String, _>("user_id")?).await,
        None => Ok(None),
    }
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

/// `POST /api/v1/llm/auth/session`: exchanges a JWT verified at the edge for an HttpOnly
/// session cookie.
pub async fn create_session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let Some(id) = edge_identity(&state, &headers) else {
        return Err(AppError::unauthorized(
            "Sign in with a valid JWT ('Authorization: Bearer <token>') to open a session.",
        ));
    };
    let user = accounts::get_user(&state.db, &id.subject)
        .await?
        .ok_or_else(|| AppError::unauthorized("No opsgate user matches this token's subject."))?;
    let token = format!("st_{}", random_hex(32));
    let now = state.clock.now();
    let ttl = state.settings.session_ttl_secs;
    sqlx::query(
        "INSERT INTO sessions (digest, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(credentials::digest(&token))
    .bind(&user.id)
    .bind(now)
    .bind(now + ttl)
    .execute(&state.db.pool)
    .await?;
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({"user_id": user.id, "expires_at": now + ttl})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, &token, ttl)?);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `DELETE /api/v1/llm/auth/session`: logs out (revokes the session, clears the cookie).
pub async fn delete_session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let cookie = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(token) = credentials::cookie_value(cookie, SESSION_COOKIE).filter(|t| !t.is_empty())
    else {
        return Err(AppError::unauthorized("No session cookie."));
    };
    sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE digest = $2 AND revoked_at IS NULL")
        .bind(state.clock.now())
        .bind(credentials::digest(token))
        .execute(&state.db.pool)
        .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, "", 0)?);
    Ok(resp)
}

/// The admin behind a request: the admin token, or a JWT verified at the edge whose roles
/// include the configured admin role. Returns the actor recorded in the audit log.
fn require_admin(state: &AppState, headers: &HeaderMap) -> AppResult<String> {
    if let Some(id) = edge_identity(state, headers) {
        return if id.roles.iter().any(|r| *r == state.settings.admin_role) {
            Ok(format!("jwt:{}", id.subject))
        } else {
            Err(AppError::forbidden(format!(
                "Admin routes need the '{}' role.",
                state.settings.admin_role
            )))
        };
    }
    let Some(expected) = &state.settings.admin_token else {
        return Err(AppError::forbidden(
            "The admin API is disabled: start the control plane with an admin token.",
        ));
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match bearer {
        Some(t) if credentials::constant_time_eq(t.as_bytes(), expected.as_bytes()) => {
            Ok("admin-token".to_string())
        }
        Some(_) => Err(AppError::forbidden("Admin routes need the admin token.")),
        None => Err(AppError::unauthorized(
            "Admin routes need 'Authorization: Bearer <admin token>'.",
        )),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn require_internal(state: &AppState, headers: &HeaderMap) -> AppResult<()> {
    match bearer(headers) {
        Some(t)
            if credentials::constant_time_eq(
                t.as_bytes(),
                state.settings.internal_token.as_bytes(),
            ) =>
        {
            Ok(())
        }
        _ => Err(AppError::unauthorized(
            "Internal endpoint: a valid internal token is required.",
        )),
    }
}

// ---- extractors ---------------------------------------------------------------------------
//
// A handler states who may call it by the type of one of its arguments; axum runs the check
// before the handler and answers a failed one with the error envelope. These three types are
// the only way a handler learns who is calling: the checks above are private to this module.

/// The filter: the request carries the internal token.
#[derive(Debug)]
pub struct Internal(());

/// An authenticated public caller: a service key, a `uc_` key, a session cookie or a JWT
/// identity the edge verified.
#[derive(Debug)]
pub struct Caller(pub User);

/// An admin: the admin token, or an edge-verified JWT with the admin role.
#[derive(Debug)]
pub struct Admin {
    actor: String,
}

impl Admin {
    /// Who the audit log records as having acted: `admin-token` or `jwt:<subject>`.
    pub fn actor(&self) -> &str {
        &self.actor
    }
}

impl FromRequestParts<AppState> for Internal {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        require_internal(state, &parts.headers).map(Internal)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        caller(state, &parts.headers).await.map(Caller)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        require_admin(state, &parts.headers).map(|actor| Admin { actor })
    }
}
