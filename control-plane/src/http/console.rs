//! The admin console (`/console/`): a few static files embedded in the binary, and the
//! session routes that exchange the admin token (or an admin JWT verified at the edge) for an
//! HttpOnly, SameSite=Strict cookie. The console's pages do everything else by calling the
//! admin API (`/admin/v1/*`) with that cookie: there is no second code path, and the audit
//! log records the console as the actor's source (`console:admin-token`).

use super::extract::{body_first, parse_secret_body};
use super::identity::{console_token, edge_identity, own_host, same_origin_write};
use super::Routes;
use crate::console::{self, CONSOLE_COOKIE};
use crate::error::{AppError, AppResult, ErrorEnvelope};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Json;
use opsgate_core::credentials;
use serde::{Deserialize, Serialize};

const INDEX_HTML: &str = include_str!("../../console/index.html");
const CONSOLE_JS: &str = include_str!("../../console/console.js");
const CONSOLE_CSS: &str = include_str!("../../console/console.css");

pub(super) fn router() -> Routes {
    Routes::default()
        .route("/console", get(console_redirect))
        .route("/console/", get(console_index))
        .route("/console/{*path}", get(console_asset))
        .route(
            "/admin/v1/console/session",
            get(console_whoami)
                .post(body_first(console_sign_in))
                .delete(console_sign_out),
        )
}

/// The console's pages run only their own script and styles, talk only to this origin, and
/// are never framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

fn protect(mut resp: Response, cache: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    resp
}

fn file(ctype: &'static str, body: &'static str) -> Response {
    protect(
        ([(header::CONTENT_TYPE, ctype)], body).into_response(),
        "no-cache",
    )
}

#[utoipa::path(get, path = "/console", tag = "console", summary = "Redirects to the admin console", responses((status = 308, description = "To /console/")))]
async fn console_redirect() -> Redirect {
    Redirect::permanent("/console/")
}

/// `GET /console/`: the console's page (it signs in, then calls the admin API).
#[utoipa::path(get, path = "/console/", tag = "console", summary = "The admin console (HTML)", responses((status = 200, description = "The console's page", body = String)))]
async fn console_index() -> Response {
    file("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /console/{path}`: the console's script and styles, embedded in the binary.
#[utoipa::path(get, path = "/console/{path}", tag = "console", summary = "The admin console's static files (console.js, console.css)", params(("path" = String, Path, description = "console.js or console.css")), responses((status = 200, description = "The file", body = String), (status = 404, body = ErrorEnvelope)))]
async fn console_asset(Path(path): Path<String>) -> Response {
    match path.as_str() {
        "console.js" => file("text/javascript; charset=utf-8", CONSOLE_JS),
        "console.css" => file("text/css; charset=utf-8", CONSOLE_CSS),
        "index.html" => file("text/html; charset=utf-8", INDEX_HTML),
        _ => AppError::not_found("No such console file.").into_response(),
    }
}

fn console_cookie(state: &AppState, value: &str, max_age: i64) -> AppResult<HeaderValue> {
    let secure = if state.settings.cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{CONSOLE_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .map_err(AppError::internal)
}

/// Who is signed in to the console.
#[derive(Serialize, utoipa::ToSchema)]
struct ConsoleSessionView {
    /// `console:admin-token` or `console:jwt:<subject>`: the audit log's actor.
    actor: String,
    /// Unix seconds.
    expires_at: i64,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SignIn {
    /// The admin token (omit when signing in with an admin JWT through the gateway).
    #[serde(default)]
    token: Option<String>,
}

impl Drop for SignIn {
    fn drop(&mut self) {
        if let Some(t) = self.token.take() {
            drop(crate::crypto::Secret::new(t));
        }
    }
}

fn no_store(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The parts of the request the CSRF rule looks at.
fn parts_of(headers: &HeaderMap) -> Parts {
    let mut req = axum::http::Request::new(());
    *req.headers_mut() = headers.clone();
    req.into_parts().0
}

/// `POST /admin/v1/console/session`: signs in with the admin token (`{"token": "…"}`), or with an admin
/// JWT verified at the edge; sets the console's HttpOnly, SameSite=Strict session cookie.
#[utoipa::path(post, path = "/admin/v1/console/session", tag = "console", summary = "Sign in to the console: the admin token (or an admin JWT) for a session cookie", description = "Needs the header `X-Console-Request: 1`, and is refused from another origin. The token is never stored in the browser: only the HttpOnly cookie `opsgate_console` is.", request_body(content = Option<SignIn>), responses((status = 201, description = "Signed in; Set-Cookie: opsgate_console (HttpOnly; SameSite=Strict; Path=/)", body = ConsoleSessionView), (status = 401, description = "Not the admin token", body = ErrorEnvelope), (status = 403, description = "Cross-site, or without the console's header; or a JWT without the admin role", body = ErrorEnvelope)), security((), ("jwt" = [])))]
async fn console_sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<Response> {
    let parts = parts_of(&headers);
    same_origin_write(&headers, own_host(&parts))?;
    let (actor, credential, token_expires) = if let Some(id) = edge_identity(&state, &headers) {
        if !id.roles.iter().any(|r| *r == state.settings.admin_role) {
            return Err(AppError::new(
                opsgate_core::ErrorKind::AdminRequired,
                format!(
                    "The console needs the '{}' role.",
                    state.settings.admin_role
                ),
            ));
        }
        (format!("jwt:{}", id.subject), String::new(), id.expires_at)
    } else {
        let jwt_bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .is_some_and(|(scheme, t)| {
                scheme.eq_ignore_ascii_case("bearer") && t.trim().split('.').count() == 3
            });
        if jwt_bearer {
            return Err(AppError::unauthorized(
                "JWTs are verified by the gateway: open the console through it (its admin prefix routes here), or sign in with the admin token.",
            ));
        }
        let req: SignIn = if body.is_empty() {
            SignIn::default()
        } else {
            parse_secret_body(&body, r#"{"token": "<admin token>"}"#)?
        };
        let Some(expected) = &state.settings.admin_token else {
            return Err(AppError::new(
                opsgate_core::ErrorKind::AdminRequired,
                "The admin API is disabled: start the control plane with an admin token.",
            ));
        };
        match req.token.as_deref() {
            Some(t) if credentials::constant_time_eq(t.as_bytes(), expected.as_bytes()) => (
                "admin-token".to_string(),
                credentials::digest(expected),
                None,
            ),
            _ => return Err(AppError::unauthorized("That is not the admin token.")),
        }
    };
    let now = state.clock.now();
    // A session opened with a JWT ends when the token does, if that is sooner.
    let ttl = token_expires.map_or(state.settings.console_session_ttl_secs, |exp| {
        state
            .settings
            .console_session_ttl_secs
            .min(exp.saturating_sub(now))
    });
    if ttl <= 0 {
        return Err(AppError::unauthorized(
            "This token has expired: sign in again with a fresh one.",
        ));
    }
    let token = console::open(&state.db, &actor, &credential, now, ttl).await?;
    let mut resp = (
        StatusCode::CREATED,
        Json(ConsoleSessionView {
            actor: console::console_actor(&actor),
            expires_at: now + ttl,
        }),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, console_cookie(&state, &token, ttl)?);
    Ok(no_store(resp))
}

/// `GET /admin/v1/console/session`: who is signed in (401 when no session is active).
#[utoipa::path(get, path = "/admin/v1/console/session", tag = "console", summary = "The console session: who is signed in, until when", responses((status = 200, body = ConsoleSessionView), (status = 401, description = "No active session", body = ErrorEnvelope)), security(("console_session" = [])))]
async fn console_whoami(State(state): State<AppState>, headers: HeaderMap) -> AppResult<Response> {
    let session = match console_token(&headers) {
        Some(t) => console::active(&state.db, t, state.clock.now()).await?,
        None => None,
    };
    let Some(s) = session else {
        return Err(AppError::unauthorized("Not signed in to the console."));
    };
    Ok(no_store(
        Json(ConsoleSessionView {
            actor: console::console_actor(&s.actor),
            expires_at: s.expires_at,
        })
        .into_response(),
    ))
}

/// `DELETE /admin/v1/console/session`: signs out (ends the session, clears the cookie).
#[utoipa::path(delete, path = "/admin/v1/console/session", tag = "console", summary = "Sign out of the console", description = "Needs the header `X-Console-Request: 1`.", responses((status = 204, description = "Signed out; the cookie is cleared"), (status = 403, description = "Cross-site, or without the console's header", body = ErrorEnvelope)), security(("console_session" = [])))]
async fn console_sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let parts = parts_of(&headers);
    same_origin_write(&headers, own_host(&parts))?;
    if let Some(t) = console_token(&headers) {
        console::revoke(&state.db, t, state.clock.now()).await?;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, console_cookie(&state, "", 0)?);
    Ok(no_store(resp))
}

/// This surface's entries in the OpenAPI document (`/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    console_redirect,
    console_index,
    console_asset,
    console_sign_in,
    console_whoami,
    console_sign_out
))]
pub(super) struct Api;
