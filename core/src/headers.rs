//! Which request headers reach a provider.
//!
//! On a call made with the **platform's** key, the provider bills the platform and keeps what
//! it is sent under the platform's account, so only an allow-list passes: the pseudo-headers,
//! `content-type`, `accept` and `user-agent`. The gateway then sets its own `authorization`
//! (the platform key), `x-power-level`, the routing header (which Envoy's route removes before
//! the provider) and `x-forwarded-proto` from the connection's scheme (Envoy's route
//! selection needs it). Everything else a client sends
//! — `OpenAI-Organization`, `OpenAI-Project`, `OpenAI-Beta`, any `x-*`, cookies,
//! `accept-encoding` — is removed.
//!
//! On a **BYOK** call the user's own key pays, so the client's headers pass (its
//! `OpenAI-Organization` selects its own organisation), except cookies, proxy credentials,
//! `accept-encoding` (the gateway must read the usage in the body) and the gateway's own
//! `x-opsgate-*` names.

/// Headers a platform-key call keeps from the client (besides pseudo-headers).
pub const PLATFORM_ALLOWED: [&str; 3] = ["content-type", "accept", "user-agent"];

/// Headers a BYOK call never passes on.
pub const BYOK_REMOVED: [&str; 4] = [
    "cookie",
    "proxy-authorization",
    "accept-encoding",
    "content-length",
];

/// Names under this prefix are the gateway's own; only it sets them.
pub const INTERNAL_PREFIX: &str = "x-opsgate-";

/// May a client's request header `name` (any case) reach the provider?
pub fn reaches_provider(name: &[u8], byok: bool) -> bool {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with(b":") {
        return true;
    }
    if lower.starts_with(INTERNAL_PREFIX.as_bytes()) {
        return false;
    }
    if byok {
        !BYOK_REMOVED
            .iter()
            .any(|h| h.as_bytes() == lower.as_slice())
    } else {
        PLATFORM_ALLOWED
            .iter()
            .any(|h| h.as_bytes() == lower.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
