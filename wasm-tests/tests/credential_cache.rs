//! `uc_` keys and `session_token` cookies are looked up by the control plane (authorize),
//! and the filter remembers its answers per worker: a key authorize refused with 401 is
//! answered 401 locally for `negative_cache_ttl_ms` (default 5 s), metered or not, so a
//! flood of one bad key reaches the control plane once per TTL; an accepted key is
//! remembered for `credential_cache_ttl_ms` (default 30 s) — counted as a hit, but
//! authorize still checks the key on every metered call, so a revoked key stops working at
//! once. The caches are bounded.

mod common;
use common::*;
use opsgate_core::contract::Principal;
use opsgate_core::credentials::digest;
use opsgate_core::ErrorKind;
use opsgate_wasm_tests::{Action, Host};
use std::time::Duration;

const BAD_KEY: &str = "uc_ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

fn key_call(host: &mut Host, key: &str) -> opsgate_wasm_tests::StreamId {
    let auth = bearer(key);
    chat_with_headers(host, &[("authorization", &auth)])
}

/// Sends a call with `key`; when it reaches authorize, refuses it as the control plane
/// does for an unknown or revoked key. Returns whether a callout was made.
fn call_refused_by_cp(host: &mut Host, key: &str) -> bool {
    let id = key_call(host, key);
    let callout = host.local_reply(id).is_none();
    if callout {
        let call = authorize_call(host);
        deny_with(
            host,
            &call,
            ErrorKind::InvalidApiKey,
            "Invalid or revoked API key",
        );
    }
    let (reply, env) = expect_reply(host, id, 401, "invalid_api_key");
    assert_eq!(env["error"]["message"], "Invalid or revoked API key");
    assert!(!reply.body_str().contains(key));
    callout
}

#[test]
fn a_flood_of_one_bad_key_makes_one_callout_per_negative_ttl() {
    let mut host = gateway();
    let callouts = (0..50)
        .filter(|_| call_refused_by_cp(&mut host, BAD_KEY))
        .count();
    assert_eq!(callouts, 1, "one callout for 50 requests");
    assert_eq!(counter(&host, "opsgate.credential_cache.negative_hits"), 49);
    assert_eq!(counter(&host, "opsgate.decisions.denied_401"), 50);

    // Still refused locally just before the TTL; asked again after it.
    host.advance(Duration::from_millis(4_999));
    assert!(!call_refused_by_cp(&mut host, BAD_KEY));
    host.advance(Duration::from_millis(1));
    assert!(
        call_refused_by_cp(&mut host, BAD_KEY),
        "expired: asked again"
    );
    assert!(!call_refused_by_cp(&mut host, BAD_KEY));
}

#[test]
fn non_metered_routes_refuse_a_cached_bad_key_at_the_edge() {
    let mut host = gateway();
    let auth = bearer(BAD_KEY);
    // Not known bad yet: passed on to the control plane, which checks it itself.
    let (_, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/models",
        &[("authorization", &auth)],
    );
    assert_eq!(action, Action::Continue);
    assert!(call_refused_by_cp(&mut host, BAD_KEY));
    for path in [
        "/api/v1/llm/models",
        "/api/v1/llm/credits",
        "/api/v1/llm/usage",
    ] {
        let (id, action) = send_headers_only(&mut host, "GET", path, &[("authorization", &auth)]);
        assert_eq!(action, Action::Pause, "{path}");
        expect_reply(&host, id, 401, "invalid_api_key");
    }
    assert_eq!(host.pending_calls().len(), 0);
}

#[test]
fn other_denials_do_not_make_a_key_bad() {
    let mut host = gateway();
    for _ in 0..3 {
        let id = key_call(&mut host, USER_KEY);
        let call = authorize_call(&mut host);
        deny_with(
            &mut host,
            &call,
            ErrorKind::InsufficientCredits,
            "Out of credits.",
        );
        expect_reply(&host, id, 402, "payment_required");
    }
    // The key is valid: remembered as good (counted), and still asked about every time.
    assert_eq!(counter(&host, "opsgate.credential_cache.misses"), 1);
    assert_eq!(counter(&host, "opsgate.credential_cache.hits"), 2);
    assert_eq!(counter(&host, "opsgate.credential_cache.negative_hits"), 0);
}

#[test]
fn a_revoked_key_stops_at_once_and_is_then_refused_locally() {
    let mut host = gateway();
    let id = key_call(&mut host, USER_KEY);
    let call = authorize_call(&mut host);
    allow(&mut host, &call, grant());
    assert!(host.local_reply(id).is_none());
    // Revoked: the next call is still asked about (the positive cache never skips
    // authorize), refused, and from then on refused locally.
    assert!(call_refused_by_cp(&mut host, USER_KEY));
    assert!(!call_refused_by_cp(&mut host, USER_KEY));
    assert_eq!(counter(&host, "opsgate.credential_cache.hits"), 1);
}

#[test]
fn a_positive_entry_expires_after_its_ttl() {
    let mut host = gateway_with(&config_with(r#""credential_cache_ttl_ms":2000"#));
    for _ in 0..2 {
        let id = key_call(&mut host, USER_KEY);
        let call = authorize_call(&mut host);
        allow(&mut host, &call, grant());
        host.done(id).unwrap();
    }
    assert_eq!(counter(&host, "opsgate.credential_cache.hits"), 1);
    host.advance(Duration::from_millis(2_000));
    let _ = key_call(&mut host, USER_KEY);
    assert_eq!(counter(&host, "opsgate.credential_cache.misses"), 2);
}

#[test]
fn session_cookies_go_to_authorize_as_digests_and_are_negatively_cached() {
    let mut host = gateway();
    let cookie = "theme=dark; session_token=s3ss10n-t0ken-value";
    let id = chat_with_headers(&mut host, &[("cookie", cookie)]);
    assert!(host.local_reply(id).is_none());
    let call = authorize_call(&mut host);
    assert_eq!(
        authorize_request(&call).principal,
        Principal::Session {
            digest: digest("s3ss10n-t0ken-value")
        }
    );
    assert!(!String::from_utf8_lossy(&call.body).contains("s3ss10n-t0ken-value"));
    deny_with(
        &mut host,
        &call,
        ErrorKind::InvalidApiKey,
        "Invalid or expired session",
    );
    expect_reply(&host, id, 401, "invalid_api_key");
    for _ in 0..5 {
        let id = chat_with_headers(&mut host, &[("cookie", cookie)]);
        let (_, env) = expect_reply(&host, id, 401, "invalid_api_key");
        assert_eq!(env["error"]["message"], "Invalid or expired session");
    }
    assert_eq!(pending_to(&host, AUTHORIZE), 0);
    // Other credentials are not affected.
    let id = key_call(&mut host, USER_KEY);
    assert!(host.local_reply(id).is_none());
}

#[test]
fn a_zero_negative_ttl_turns_the_negative_cache_off() {
    let mut host = gateway_with(&config_with(r#""negative_cache_ttl_ms":0"#));
    let callouts = (0..5)
        .filter(|_| call_refused_by_cp(&mut host, BAD_KEY))
        .count();
    assert_eq!(callouts, 5);
}

#[test]
fn the_cache_is_bounded_and_evicts_the_oldest() {
    let mut host = gateway_with(&config_with(r#""credential_cache_max_entries":2"#));
    let keys: Vec<String> = (0..3)
        .map(|i| format!("uc_{}", format!("{i:x}").repeat(64)))
        .collect();
    for k in &keys {
        assert!(call_refused_by_cp(&mut host, k));
    }
    // The newest two are remembered; the oldest was evicted and is asked about again.
    assert!(!call_refused_by_cp(&mut host, &keys[2]));
    assert!(!call_refused_by_cp(&mut host, &keys[1]));
    assert!(call_refused_by_cp(&mut host, &keys[0]));
}

#[test]
fn service_keys_are_never_cached_nor_called_out() {
    let mut host = gateway();
    let id = key_call(&mut host, "sk-unknown-service-key-2025");
    expect_reply(&host, id, 401, "invalid_api_key");
    assert_eq!(host.pending_calls().len(), 0);
    assert_eq!(counter(&host, "opsgate.credential_cache.misses"), 0);
}
