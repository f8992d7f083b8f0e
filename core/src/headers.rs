//! Every header name the gateway emits, reads or strips, and the rules that produce them.
//!
//! * **Metered responses** carry the provider and model ([`X_PROVIDER_USED`],
//!   [`X_MODEL_USED`]), the plan's windows ([`rate_limit_headers`]) and what the call cost
//!   ([`cost_headers`]); browsers may read exactly these ([`EXPOSED`]).
//! * **Error replies** are JSON with `retry-after` when the caller should wait
//!   ([`error_reply_headers`]).
//! * **Provider response headers that name the account** behind the key never reach the
//!   client ([`PROVIDER_ACCOUNT`]).
//! * **Requests to a provider** carry only what it needs ([`reaches_provider`]).
//!
//! On a call made with the **platform's** key, the provider bills the platform and keeps what
//! it is sent under the platform's account, so only an allow-list passes: the pseudo-headers,
//! `content-type`, `accept` and `user-agent`. The gateway then sets its own `authorization`
//! (the platform key), `x-power-level`, the routing header (which Envoy's route removes before
//! the provider) and `x-forwarded-proto` from the connection's scheme (Envoy's route
//! selection needs it). Everything else a client sends — `OpenAI-Organization`,
//! `OpenAI-Project`, `OpenAI-Beta`, any `x-*`, cookies, `accept-encoding` — is removed.
//!
//! On a **BYOK** call the user's own key pays, so the client's headers pass (its
//! `OpenAI-Organization` selects its own organisation), except cookies, proxy credentials,
//! `accept-encoding` (the gateway must read the usage in the body) and the gateway's own
//! `x-opsgate-*` names.

use crate::contract::{Grant, WindowLimit};
use crate::error::{ApiError, ErrorKind};
use crate::money::MilliCredits;

// Read from clients.
pub const AUTHORIZATION: &str = "authorization";
pub const COOKIE: &str = "cookie";
pub const ORIGIN: &str = "origin";
pub const SEC_FETCH_SITE: &str = "sec-fetch-site";
pub const CONTENT_LENGTH: &str = "content-length";
pub const ACCEPT_ENCODING: &str = "accept-encoding";
pub const ACCESS_CONTROL_REQUEST_METHOD: &str = "access-control-request-method";
pub const ACCESS_CONTROL_REQUEST_HEADERS: &str = "access-control-request-headers";

// CORS, emitted for configured origins.
pub const ACCESS_CONTROL_ALLOW_ORIGIN: &str = "access-control-allow-origin";
pub const ACCESS_CONTROL_ALLOW_METHODS: &str = "access-control-allow-methods";
pub const ACCESS_CONTROL_ALLOW_HEADERS: &str = "access-control-allow-headers";
pub const ACCESS_CONTROL_ALLOW_CREDENTIALS: &str = "access-control-allow-credentials";
pub const ACCESS_CONTROL_MAX_AGE: &str = "access-control-max-age";
pub const ACCESS_CONTROL_EXPOSE_HEADERS: &str = "access-control-expose-headers";
pub const VARY: &str = "vary";

/// The edge-verified identity a non-metered call carries to the control plane: the
/// base64url JSON of [`crate::contract::Identity`], with [`IDENTITY_AUTH_HEADER`] proving the
/// filter set it (see `contract::identity_auth`).
pub const IDENTITY_HEADER: &str = "x-opsgate-identity";
pub const IDENTITY_AUTH_HEADER: &str = "x-opsgate-identity-auth";

pub const CONTENT_TYPE: &str = "content-type";
pub const RETRY_AFTER: &str = "retry-after";
pub const JSON: &str = "application/json";

pub const X_PROVIDER_USED: &str = "x-provider-used";
pub const X_MODEL_USED: &str = "x-model-used";
pub const X_COST_INCURRED: &str = "x-cost-incurred";
pub const X_CREDITS_REMAINING: &str = "x-credits-remaining";
pub const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
pub const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
pub const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";
pub const X_RATELIMIT_LIMIT_DAY: &str = "x-ratelimit-limit-day";
pub const X_RATELIMIT_REMAINING_DAY: &str = "x-ratelimit-remaining-day";
pub const X_RATELIMIT_RESET_DAY: &str = "x-ratelimit-reset-day";
/// The completion bound the gateway chose when the client gave none and the balance could
/// not cover the model's whole output.
pub const X_MAX_TOKENS_APPLIED: &str = "x-max-tokens-applied";
/// Sent to the provider: the call's effective power level (DESIGN).
pub const X_POWER_LEVEL: &str = "x-power-level";
/// Set again by the gateway from the connection's scheme (Envoy's route selection needs it).
pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
/// The provider's cluster, named by the filter for Envoy's route (removed by the route).
pub const X_OPSGATE_CLUSTER: &str = "x-opsgate-cluster";

/// The response headers a browser application may read (CORS `expose-headers`).
pub const EXPOSED: [&str; 12] = [
    X_PROVIDER_USED,
    X_MODEL_USED,
    X_MAX_TOKENS_APPLIED,
    X_COST_INCURRED,
    X_CREDITS_REMAINING,
    X_RATELIMIT_LIMIT,
    X_RATELIMIT_REMAINING,
    X_RATELIMIT_RESET,
    X_RATELIMIT_LIMIT_DAY,
    X_RATELIMIT_REMAINING_DAY,
    X_RATELIMIT_RESET_DAY,
    RETRY_AFTER,
];

/// Provider response headers that identify the account behind the upstream key (the
/// platform's or the caller's own): they stay at the gateway, and so do provider cookies.
pub const PROVIDER_ACCOUNT: [&str; 4] = [
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
    "set-cookie",
];

/// The provider and model headers of a metered response, and the completion bound when the
/// gateway chose it.
pub fn provider_headers(grant: &Grant) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (X_PROVIDER_USED, grant.provider.clone()),
        (X_MODEL_USED, grant.model.clone()),
    ];
    if let (true, Some(n)) = (grant.max_tokens_chosen, grant.max_tokens) {
        out.push((X_MAX_TOKENS_APPLIED, n.to_string()));
    }
    out
}

/// What `X-RateLimit-Limit` and `-Remaining` say for calls no quota counts (unlimited plans,
/// service keys, BYOK calls): a large integer, so clients that parse the headers as numbers
/// keep working (2^31 - 1 fits every integer type they use).
pub const UNLIMITED_CALLS: u64 = 2_147_483_647;

/// The plan's windows, as the integration guide names them: the period (monthly, or the
/// trial's 7 days) and the day; none for a window the plan does not have.
pub fn rate_limit_headers(grant: &Grant) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(6);
    let mut window = |w: Option<WindowLimit>, names: [&'static str; 3]| {
        if let Some(w) = w {
            out.push((names[0], w.limit.to_string()));
            out.push((names[1], w.remaining.to_string()));
            out.push((names[2], w.reset.to_string()));
        }
    };
    window(
        grant.period,
        [X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET],
    );
    window(
        grant.daily,
        [
            X_RATELIMIT_LIMIT_DAY,
            X_RATELIMIT_REMAINING_DAY,
            X_RATELIMIT_RESET_DAY,
        ],
    );
    out
}

/// What the call cost and what remains, in credits with three decimals.
pub fn cost_headers(cost: MilliCredits, remaining: MilliCredits) -> [(&'static str, String); 2] {
    [
        (X_COST_INCURRED, cost.to_credits_string()),
        (X_CREDITS_REMAINING, remaining.to_credits_string()),
    ]
}

/// Seconds a 503 asks the caller to wait when its error names no other delay.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

/// The headers of an error reply: JSON, and `retry-after` when the caller should wait — on
/// every 503 (the SDKs' retry loops honour it), and on a 429 with its window's reset.
pub fn error_reply_headers(err: &ApiError) -> Vec<(&'static str, String)> {
    let mut out = vec![(CONTENT_TYPE, JSON.to_string())];
    let wait = match err.kind {
        ErrorKind::Unavailable => err.retry_after.or(Some(UNAVAILABLE_RETRY_AFTER_SECS)),
        _ => err.retry_after,
    };
    if let Some(secs) = wait {
        out.push((RETRY_AFTER, secs.to_string()));
    }
    if let Some(w) = err.rate_limit {
        out.push((X_RATELIMIT_LIMIT, w.limit.to_string()));
        out.push((X_RATELIMIT_REMAINING, w.remaining.to_string()));
        out.push((X_RATELIMIT_RESET, w.reset.to_string()));
    }
    out
}

/// Headers a platform-key call keeps from the client (besides pseudo-headers).
pub const PLATFORM_ALLOWED: [&str; 3] = [CONTENT_TYPE, "accept", "user-agent"];

/// Headers a BYOK call never passes on.
pub const BYOK_REMOVED: [&str; 4] = [
    COOKIE,
    "proxy-authorization",
    ACCEPT_ENCODING,
    CONTENT_LENGTH,
];

/// Names under this prefix are the gateway's own; only it sets them.
pub const INTERNAL_PREFIX: &str = "x-opsgate-";

/// May a client's request header `name` (any case) reach the provider?
pub fn reaches_provider(name: &[u8], byok: bool) -> bool {
    // Compared without allocating: this runs for every header of every forwarded call.
    let is = |h: &str| name.eq_ignore_ascii_case(h.as_bytes());
    if name.starts_with(b":") {
        return true;
    }
    let internal = INTERNAL_PREFIX.as_bytes();
    if name
        .get(..internal.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(internal))
    {
        return false;
    }
    if byok {
        !BYOK_REMOVED.iter().any(|h| is(h))
    } else {
        PLATFORM_ALLOWED.iter().any(|h| is(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_are_json_with_retry_after_when_set() {
        let e = ApiError::new(ErrorKind::BadRequest, "no");
        assert_eq!(
            error_reply_headers(&e),
            vec![(CONTENT_TYPE, JSON.to_string())]
        );
        let e = ApiError {
            retry_after: Some(30),
            ..ApiError::new(ErrorKind::QuotaExceeded, "wait")
        };
        assert_eq!(error_reply_headers(&e)[1], (RETRY_AFTER, "30".to_string()));
        // A 429 names its window, so the guide's retry waits until X-RateLimit-Reset.
        let e = ApiError {
            retry_after: Some(30),
            rate_limit: Some(WindowLimit {
                limit: 34,
                remaining: 0,
                reset: 1_700_000_030,
            }),
            ..ApiError::new(ErrorKind::QuotaExceeded, "wait")
        };
        assert_eq!(
            error_reply_headers(&e)[1..],
            [
                (RETRY_AFTER, "30".to_string()),
                (X_RATELIMIT_LIMIT, "34".to_string()),
                (X_RATELIMIT_REMAINING, "0".to_string()),
                (X_RATELIMIT_RESET, "1700000030".to_string()),
            ]
        );
        // Every 503 says when to come back, even when its error named no delay.
        let e = ApiError::new(ErrorKind::Unavailable, "control plane unreachable");
        assert_eq!(error_reply_headers(&e)[1], (RETRY_AFTER, "1".to_string()));
    }

    #[test]
    fn cost_headers_have_three_decimals() {
        assert_eq!(
            cost_headers(MilliCredits(4), MilliCredits(9_999_996)),
            [
                (X_COST_INCURRED, "0.004".to_string()),
                (X_CREDITS_REMAINING, "9999.996".to_string())
            ]
        );
    }

    #[test]
    fn every_metered_header_is_exposed_to_browsers() {
        for h in [
            X_PROVIDER_USED,
            X_MODEL_USED,
            X_COST_INCURRED,
            X_CREDITS_REMAINING,
        ] {
            assert!(EXPOSED.contains(&h));
        }
    }

    #[test]
    fn platform_calls_pass_only_the_allow_list() {
        for name in [
            ":path",
            ":authority",
            "Content-Type",
            "accept",
            "User-Agent",
        ] {
            assert!(reaches_provider(name.as_bytes(), false), "{name}");
        }
        for name in [
            "OpenAI-Organization",
            "openai-project",
            "OpenAI-Beta",
            "x-stainless-lang",
            "X-Forwarded-For",
            "x-request-id",
            "cookie",
            "accept-encoding",
            "authorization",
            "x-opsgate-cluster",
        ] {
            assert!(!reaches_provider(name.as_bytes(), false), "{name}");
        }
        assert!(!reaches_provider(b"\xff-bad", false));
    }

    #[test]
    fn byok_calls_pass_more_but_never_cookies_or_internal_names() {
        for name in ["OpenAI-Organization", "openai-beta", "x-stainless-lang"] {
            assert!(reaches_provider(name.as_bytes(), true), "{name}");
        }
        for name in [
            "Cookie",
            "proxy-authorization",
            "accept-encoding",
            "X-Opsgate-Cluster",
        ] {
            assert!(!reaches_provider(name.as_bytes(), true), "{name}");
        }
    }
}
