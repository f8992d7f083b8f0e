//! Who is calling a public or admin route, and browser sessions.
//!
//! The control plane checks service keys, `uc_` keys and session cookies itself. JWTs are
//! verified at the edge: the filter passes the verified identity in
//! [`IDENTITY_HEADER`], which is trusted only together with the internal token in
//! [`IDENTITY_AUTH_HEADER`] (the filter strips both from every client request). A verified
//! JWT's `sub` is the opsgate user id.

use super::observe::Who;
use crate::accounts::{self, User};
use crate::error::{AppError, AppResult};
use crate::keys;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use opsgate_core::contract::{
    identity_auth, Identity, Principal, IDENTITY_AUTH_HEADER, IDENTITY_HEADER,
};
use opsgate_core::credentials::{self, Credential};

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
            keys::user_by_service_key_digest(&state.db, &credentials::digest(k)).await?
        }
        Credential::UserKey(k) => {
            let digest = credentials::digest(k);
            accounts::by_principal(&state.db, &Principal::ApiKey { digest }, now).await?
        }
        Credential::Session(token) => {
            let digest = credentials::digest(token);
            accounts::by_principal(&state.db, &Principal::Session { digest }, now).await?
        }
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

/// The admin behind a request: the admin token, or a JWT verified at the edge whose roles
/// include the configured admin role. Returns the actor recorded in the audit log.
fn require_admin(state: &AppState, headers: &HeaderMap) -> AppResult<String> {
    if let Some(id) = edge_identity(state, headers) {
        return if id.roles.iter().any(|r| *r == state.settings.admin_role) {
            Ok(format!("jwt:{}", id.subject))
        } else {
            Err(AppError::new(
                opsgate_core::ErrorKind::AdminRequired,
                format!(
                    "Admin routes need the '{}' role.",
                    state.settings.admin_role
                ),
            ))
        };
    }
    let Some(expected) = &state.settings.admin_token else {
        return Err(AppError::new(
            opsgate_core::ErrorKind::AdminRequired,
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
        Some(_) => Err(AppError::new(
            opsgate_core::ErrorKind::AdminRequired,
            "Admin routes need the admin token.",
        )),
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
        require_internal(state, &parts.headers)?;
        Who::of(&parts.extensions).kind("filter");
        Ok(Internal(()))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        let user = caller(state, &parts.headers).await?;
        let kind = if user.kind == "service" {
            "service"
        } else {
            "user"
        };
        Who::of(&parts.extensions).note(kind, &user.id, &user.org_id);
        Ok(Caller(user))
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> AppResult<Self> {
        let actor = require_admin(state, &parts.headers)?;
        Who::of(&parts.extensions).note("admin", &actor, "");
        Ok(Admin { actor })
    }
}
