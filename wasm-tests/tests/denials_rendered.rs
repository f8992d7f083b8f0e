//! A control-plane refusal becomes the client's error: its status, the OpenAI envelope, the
//! message the control plane wrote, `Retry-After` on 429, and nothing forwarded upstream.

mod common;
use common::*;
use opsgate_core::contract::Denial;
use opsgate_core::ErrorKind;
use opsgate_wasm_tests::{Host, StreamId, StreamKind};

fn denied(kind: ErrorKind, message: &str, retry_after: Option<u64>) -> (Host, StreamId) {
    denied_with(Denial {
        kind,
        message: message.into(),
        param: None,
        retry_after,
        rate_limit: None,
    })
}

/// A metered call the control plane answers with `denial`.
fn denied_with(denial: Denial) -> (Host, StreamId) {
    let mut host = gateway();
    let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    let call = authorize_call(&mut host);
    deny(&mut host, &call, denial);
    (host, id)
}

fn assert_not_forwarded(host: &mut Host, id: StreamId) {
    assert_eq!(host.resumed(id, StreamKind::Request), 0, "nothing upstream");
    assert!(
        host.header(id, "x-opsgate-cluster").is_none(),
        "no provider cluster was chosen"
    );
    host.done(id).unwrap();
    // Nothing was held for this call, so there is nothing to settle.
    assert!(flush_settlements(host).is_empty());
}

#[test]
fn insufficient_credits_is_402_with_the_message_kept() {
    let msg = "Insufficient organization credits. Available: 0.100, needed: 0.400";
    let (mut host, id) = denied(ErrorKind::InsufficientCredits, msg, None);
    let (reply, env) = expect_reply(&host, id, 402, "payment_required");
    assert_eq!(env["error"]["type"], "insufficient_credits");
    assert_eq!(env["error"]["message"], msg);
    assert!(env["error"]["param"].is_null());
    assert!(reply.header("retry-after").is_none());
    assert_not_forwarded(&mut host, id);
}

#[test]
fn forbidden_model_is_403() {
    let msg = "The model 'gpt-4o' is not available on the trial plan.";
    let (mut host, id) = denied(ErrorKind::Forbidden, msg, None);
    let (_, env) = expect_reply(&host, id, 403, "model_not_allowed");
    assert_eq!(env["error"]["type"], "permission_error");
    assert_eq!(env["error"]["message"], msg);
    assert_not_forwarded(&mut host, id);
}

#[test]
fn quota_exceeded_is_429_with_retry_after() {
    let msg = "Daily call limit reached (334). It resets at 00:00 UTC.";
    let (mut host, id) = denied(ErrorKind::QuotaExceeded, msg, Some(3600));
    let (reply, env) = expect_reply(&host, id, 429, "quota_exceeded");
    assert_eq!(env["error"]["type"], "rate_limit_error");
    assert_eq!(env["error"]["message"], msg);
    assert_eq!(reply.header("retry-after"), Some("3600"));
    // The reply goes through the filter's response path as Envoy encodes it.
    assert_eq!(
        host.response_header(id, "retry-after").as_deref(),
        Some("3600")
    );
    assert_eq!(host.response_header(id, ":status").as_deref(), Some("429"));
    assert_not_forwarded(&mut host, id);
}

/// The integration guide's retry loop waits until `X-RateLimit-Reset`: a 429 names its window.
#[test]
fn quota_exceeded_carries_the_rate_limit_headers_of_its_window() {
    let (mut host, id) = denied_with(Denial {
        kind: ErrorKind::QuotaExceeded,
        message: "Rate limit exceeded. Daily limit: 34 calls.".into(),
        param: None,
        retry_after: Some(3600),
        rate_limit: Some(opsgate_core::contract::WindowLimit {
            limit: 34,
            remaining: 0,
            reset: 1_768_521_600,
        }),
    });
    let (reply, _) = expect_reply(&host, id, 429, "quota_exceeded");
    assert_eq!(reply.header("x-ratelimit-limit"), Some("34"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(reply.header("x-ratelimit-reset"), Some("1768521600"));
    assert_eq!(reply.header("retry-after"), Some("3600"));
    assert_not_forwarded(&mut host, id);
}

#[test]
fn denial_param_is_carried() {
    let mut host = gateway();
    let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    let call = authorize_call(&mut host);
    deny(
        &mut host,
        &call,
        Denial {
            kind: ErrorKind::NotFound,
            message: "The model 'gpt-9' does not exist.".into(),
            param: Some("model".into()),
            retry_after: None,
            rate_limit: None,
        },
    );
    let (_, env) = expect_reply(&host, id, 404, "not_found");
    assert_eq!(env["error"]["param"], "model");
    assert_not_forwarded(&mut host, id);
}

#[test]
fn revoked_user_key_denied_by_the_control_plane_is_401() {
    let mut host = gateway();
    let (id, _) = chat(&mut host, USER_KEY, QUICKSTART);
    let call = authorize_call(&mut host);
    deny(
        &mut host,
        &call,
        Denial {
            kind: ErrorKind::InvalidApiKey,
            message: "Invalid or revoked API key".into(),
            param: None,
            retry_after: None,
            rate_limit: None,
        },
    );
    let (reply, _) = expect_reply(&host, id, 401, "invalid_api_key");
    assert!(!reply.body_str().contains(USER_KEY));
    assert_not_forwarded(&mut host, id);
}
