//! Cross-origin access for browser applications, and the CSRF rule for cookie sessions.
//!
//! * A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) under the
//!   API (or admin) prefix is answered here: 204 with the CORS headers for a configured
//!   origin, 403 in the error envelope for any other (and for every origin when `cors` is
//!   not configured).
//! * Responses to a configured origin carry `access-control-allow-origin: <origin>` (never
//!   `*`), `vary: origin`, the headers a client may read, and
//!   `access-control-allow-credentials: true` only when configured. With CORS configured,
//!   every other response under the prefixes still says `vary: origin`.
//! * A request authenticated by the `session_token` cookie is refused (403) when it comes
//!   from another origin that is not configured — or, for a write without `Origin`, when
//!   the browser says it is cross-site. Bearer-authenticated requests carry their credential
//!   explicitly and are not origin-restricted.
//!
//! Pure functions: the filter reads the headers and sends what these return.

use crate::config::CorsConfig;
use opsgate_core::headers as H;
use opsgate_core::{ApiError, ErrorKind};

/// The methods a preflight may be answered for (the API's and the admin API's).
pub const ALLOWED_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";

/// Response headers a browser application may read: the metering headers of the
/// integration guide (`opsgate_core::headers::EXPOSED`).
pub fn expose_headers() -> String {
    opsgate_core::headers::EXPOSED.join(", ")
}

/// Request headers a preflight may ask for, besides the `openai-*` and `x-stainless-*`
/// headers the OpenAI SDKs send.
const ALLOWED_REQUEST_HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "x-power-level",
    "accept",
    "accept-language",
    "content-language",
];

/// Methods that change state: a cookie-authenticated one needs a same-origin or allowed
/// origin.
fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "DELETE" | "PATCH")
}

fn token_chars(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The requested headers (`Access-Control-Request-Headers`) that are allowed, lower-case,
/// deduplicated, in the order asked; headers outside the allow-list are left out (the
/// browser then refuses the request itself).
pub fn allowed_request_headers(requested: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for name in requested.split(',') {
        let name = name.trim().to_ascii_lowercase();
        if !token_chars(&name) || out.contains(&name) {
            continue;
        }
        let allowed = ALLOWED_REQUEST_HEADERS.contains(&name.as_str())
            || name.starts_with("openai-")
            || name.starts_with("x-stainless-");
        if allowed {
            out.push(name);
        }
    }
    out.join(", ")
}

/// The origin of the request itself (`scheme://authority`), to recognise same-origin
/// requests.
pub fn own_origin(scheme: Option<&str>, authority: Option<&str>) -> Option<String> {
    let authority = authority?.trim();
    if authority.is_empty() {
        return None;
    }
    let scheme = scheme
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("http");
    Some(format!("{scheme}://{authority}").to_ascii_lowercase())
}

/// The headers of a 204 preflight answer for an allowed `origin`.
pub fn preflight_headers(
    cors: &CorsConfig,
    origin: &str,
    requested_headers: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (H::ACCESS_CONTROL_ALLOW_ORIGIN, origin.trim().to_string()),
        (H::ACCESS_CONTROL_ALLOW_METHODS, ALLOWED_METHODS.to_string()),
        (H::ACCESS_CONTROL_MAX_AGE, cors.max_age_secs.to_string()),
        (
            H::VARY,
            "origin, access-control-request-method, access-control-request-headers".to_string(),
        ),
    ];
    let allowed = requested_headers
        .map(allowed_request_headers)
        .unwrap_or_default();
    if !allowed.is_empty() {
        h.push((H::ACCESS_CONTROL_ALLOW_HEADERS, allowed));
    }
    if cors.allow_credentials {
        h.push((H::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".to_string()));
    }
    h
}

/// The headers added to a response (forwarded or local) for an allowed `origin`.
pub fn response_headers(cors: &CorsConfig, origin: &str) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (H::ACCESS_CONTROL_ALLOW_ORIGIN, origin.trim().to_string()),
        (H::VARY, H::ORIGIN.to_string()),
        (H::ACCESS_CONTROL_EXPOSE_HEADERS, expose_headers()),
    ];
    if cors.allow_credentials {
        h.push((H::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".to_string()));
    }
    h
}

/// What a request's browser context looks like, for the cookie CSRF rule.
pub struct BrowserContext<'a> {
    pub method: &'a str,
    pub origin: Option<&'a str>,
    pub sec_fetch_site: Option<&'a str>,
    /// `scheme://authority` of the request itself.
    pub own_origin: Option<&'a str>,
}

/// Why a cookie-authenticated request is refused, if it is: it comes from an origin that is
/// neither this one nor a configured one, or it is a cross-site write without `Origin`.
pub fn cookie_refusal(cors: Option<&CorsConfig>, ctx: &BrowserContext<'_>) -> Option<String> {
    let site = ctx
        .sec_fetch_site
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if let Some(origin) = ctx.origin.map(str::trim).filter(|o| !o.is_empty()) {
        let same = site == "same-origin"
            || ctx
                .own_origin
                .is_some_and(|own| own.eq_ignore_ascii_case(origin));
        if same || cors.is_some_and(|c| c.allows(origin)) {
            return None;
        }
        return Some(
            "This origin may not use a session cookie here: requests authenticated by the session_token cookie are accepted only from the gateway's configured origins. Send 'Authorization: Bearer <key>' instead, or ask the operator to allow this origin."
                .to_string(),
        );
    }
    if is_write(ctx.method) && site == "cross-site" {
        return Some(
            "Cross-site requests that change state may not use a session cookie. Send 'Authorization: Bearer <key>' instead."
                .to_string(),
        );
    }
    None
}

/// The 403 envelope of a refused origin (`type` permission_error, `code`
/// origin_not_allowed).
pub fn origin_refused(message: &str) -> String {
    ApiError::new(ErrorKind::OriginNotAllowed, message).to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(credentials: bool) -> CorsConfig {
        CorsConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            allow_credentials: credentials,
            max_age_secs: 600,
        }
    }

    #[test]
    fn requested_headers_are_limited_to_the_allow_list() {
        assert_eq!(
            allowed_request_headers(
                "Authorization, Content-Type, X-Stainless-OS, openai-organization, x-evil, cookie, content-type"
            ),
            "authorization, content-type, x-stainless-os, openai-organization"
        );
        assert_eq!(allowed_request_headers(""), "");
        assert_eq!(
            allowed_request_headers("x-power-level,\u{0}bad"),
            "x-power-level"
        );
    }

    #[test]
    fn credentials_flag_only_when_configured() {
        let with = preflight_headers(&cfg(true), "https://app.example.com", None);
        assert!(with.contains(&("access-control-allow-credentials", "true".into())));
        let without = response_headers(&cfg(false), "https://app.example.com");
        assert!(without
            .iter()
            .all(|(k, _)| *k != "access-control-allow-credentials"));
        assert!(without.iter().all(|(_, v)| v != "*"));
    }

    #[test]
    fn cookie_rule() {
        let c = cfg(true);
        let ctx = |method, origin, site| BrowserContext {
            method,
            origin,
            sec_fetch_site: site,
            own_origin: Some("https://gw.example.com"),
        };
        assert!(
            cookie_refusal(Some(&c), &ctx("GET", Some("https://app.example.com"), None)).is_none()
        );
        assert!(
            cookie_refusal(Some(&c), &ctx("GET", Some("https://evil.example"), None)).is_some()
        );
        assert!(cookie_refusal(None, &ctx("GET", Some("https://app.example.com"), None)).is_some());
        // Same origin as the gateway itself.
        assert!(cookie_refusal(None, &ctx("POST", Some("https://GW.example.com"), None)).is_none());
        assert!(
            cookie_refusal(None, &ctx("POST", Some("https://x"), Some("same-origin"))).is_none()
        );
        // No Origin: only cross-site writes are refused.
        assert!(cookie_refusal(None, &ctx("POST", None, Some("cross-site"))).is_some());
        assert!(cookie_refusal(None, &ctx("GET", None, Some("cross-site"))).is_none());
        assert!(cookie_refusal(None, &ctx("DELETE", None, Some("same-site"))).is_none());
        assert!(cookie_refusal(None, &ctx("POST", None, None)).is_none());
    }

    #[test]
    fn own_origin_defaults_to_http() {
        assert_eq!(
            own_origin(None, Some("GW:8084")).as_deref(),
            Some("http://gw:8084")
        );
        assert_eq!(own_origin(Some("https"), None), None);
    }
}
