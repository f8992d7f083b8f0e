//! Who is calling a public or admin route, and browser sessions.
//!
//! The control plane checks service keys, `uc_` keys and session cookies itself. JWTs are
//! verified at the edge: the filter passes the verified identity in
//! [`IDENTITY_HEADER`], which is trusted only together with the internal token in
//! [`IDENTITY_AUTH_HEADER`] (the filter strips both from every client request). A verified
//! JWT's `sub` is the opsgate user id.

use super::observe::Who;
use crate::accounts::{self, User};
use crate::console::{self, CONSOLE_COOKIE, CONSOLE_HEADER};
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

/// The CSRF rule of every write authenticated by the console's cookie (and of signing in and
/// out): the request carries `X-Console-Request: 1`, which an HTML form cannot send and a
/// cross-origin script cannot without a CORS preflight the control plane never grants; and,
/// when the browser says where it comes from (`Sec-Fetch-Site`, `Origin`), it is this origin.
/// `host` is the request's own authority (its `Host`).
pub(super) fn same_origin_write(headers: &HeaderMap, host: Option<&str>) -> AppResult<()> {
    let refuse = |why: &str| {
        Err(AppError::new(
            opsgate_core::ErrorKind::OriginNotAllowed,
            format!(
                "Refused: {why}. Console writes are accepted only from the console's own pages."
            ),
        ))
    };
    if headers.get(CONSOLE_HEADER).and_then(|v| v.to_str().ok()) != Some("1") {
        return refuse("the request lacks the 'X-Console-Request: 1' header");
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        if site.as_bytes() != b"same-origin" {
            return refuse("the request comes from another site");
        }
    }
    if let Some(origin) = headers.get("origin") {
        let from = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, authority)| authority);
        if from.is_none() || from != host {
            return refuse("the request comes from another origin");
        }
    }
    Ok(())
}

/// The request's own authority: its `Host` header, else the URI's (HTTP/2).
pub(super) fn own_host(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
}

/// The console session's token in the request's cookies, if any.
pub(super) fn console_token(headers: &HeaderMap) -> Option<&str> {
    let cookie = headers.get("cookie")?.to_str().ok()?;
    credentials::cookie_value(cookie, CONSOLE_COOKIE).filter(|t| !t.is_empty())
}

/// The admin behind a console session cookie: `console:<who signed in>`. Writes must pass
/// [`same_origin_write`]. A session opened with the admin token ends when the token changes.
async fn console_admin(state: &AppState, parts: &Parts, token: &str) -> AppResult<String> {
    if !parts.method.is_safe() {
        same_origin_write(&parts.headers, own_host(parts))?;
    }
    let expired = || {
        AppError::unauthorized("The console session has expired or was signed out: sign in again.")
    };
    let session = console::active(&state.db, token, state.clock.now())
        .await?
        .ok_or_else(expired)?;
    if !session.credential.is_empty() {
        let current = state
            .settings
            .admin_token
            .as_deref()
            .map(credentials::digest)
            .unwrap_or_default();
        if !credentials::constant_time_eq(current.as_bytes(), session.credential.as_bytes()) {
            return Err(expired());
        }
    }
    Ok(console::console_actor(&session.actor))
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

/// An admin: the admin token, an edge-verified JWT with the admin role, or the admin
/// console's session cookie (writes with the console's CSRF header, from its own origin).
#[derive(Debug)]
pub struct Admin {
    actor: String,
}

impl Admin {
    /// Who the audit log records as having acted: `admin-token`, `jwt:<subject>`, or
    /// `console:admin-token` / `console:jwt:<subject>` through the console.
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
        // Credentials the request states outright win over a cookie the browser attached.
        let stated = parts.headers.contains_key("authorization")
            || edge_identity(state, &parts.headers).is_some();
        let actor = match console_token(&parts.headers) {
            Some(token) if !stated => console_admin(state, parts, token).await?,
            _ => require_admin(state, &parts.headers)?,
        };
        Who::of(&parts.extensions).note("admin", &actor, "");
        Ok(Admin { actor })
    }
}
