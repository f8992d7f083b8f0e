//! When the provider fails, its answer reaches the client unchanged and the hold is settled
//! as `Failed` with zero usage (nothing charged, the quota slot released); a provider that
//! never answers is settled the same way.

mod common;
use common::*;
use opsgate_core::contract::Outcome;
use opsgate_core::pricing::Usage;
use opsgate_wasm_tests::Action;

const STREAM_REQ: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

#[test]
fn provider_errors_pass_through_and_settle_failed() {
    let mut host = gateway();
    for (status, body) in [
        (
            "500",
            r#"{"error":{"message":"The server had an error","type":"server_error"}}"#,
        ),
        (
            "429",
            r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        ),
        (
            "401",
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        ),
    ] {
        let id = forwarded_chat(&mut host, QUICKSTART, grant());
        let a = host
            .response_headers(
                id,
                &[
                    (":status", status),
                    ("content-type", "application/json"),
                    ("retry-after", "7"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(a, Action::Continue, "{status}: an error is not held back");
        let a = host.response_body(id, body.as_bytes(), true).unwrap();
        assert_eq!(a, Action::Continue);
        assert_eq!(
            String::from_utf8(host.forwarded_response_body(id)).unwrap(),
            body,
            "{status}: the provider's body is passed through"
        );
        assert_eq!(host.response_header(id, ":status").as_deref(), Some(status));
        assert_eq!(
            host.response_header(id, "retry-after").as_deref(),
            Some("7")
        );
        assert!(
            host.response_header(id, "x-cost-incurred").is_none(),
            "{status}: nothing is charged"
        );
        assert!(host.local_reply(id).is_none());
        host.done(id).unwrap();

        let settled = flush_settlements(&mut host);
        assert_eq!(settled.len(), 1, "{status}: {settled:?}");
        let s = &settled[0];
        assert_eq!(s.outcome, Outcome::Failed, "{status}");
        assert_eq!(s.usage, Usage::default(), "{status}");
        assert_eq!(s.upstream_status.to_string(), status);
        assert_eq!(s.hold_id, "hold_1");
    }
}

#[test]
fn streamed_call_failing_upstream_settles_failed() {
    let mut host = gateway();
    let id = forwarded_chat(&mut host, STREAM_REQ, grant());
    let body = r#"{"error":{"message":"overloaded","type":"server_error"}}"#;
    host.response_headers(
        id,
        &[(":status", "503"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    host.response_body(id, body.as_bytes(), true).unwrap();
    assert_eq!(
        String::from_utf8(host.forwarded_response_body(id)).unwrap(),
        body,
        "no cost event is injected into an error"
    );
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].outcome, Outcome::Failed);
    assert_eq!(settled[0].usage, Usage::default());
    assert_eq!(settled[0].upstream_status, 503);
}

#[test]
fn provider_never_answering_settles_failed() {
    let mut host = gateway();
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    // Envoy gives up on the upstream (or the client leaves) before any response.
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    let s = &settled[0];
    assert_eq!(s.outcome, Outcome::Failed);
    assert_eq!(s.usage, Usage::default());
    assert_eq!(s.upstream_status, 0);

    // Same for a stream.
    let id = forwarded_chat(&mut host, STREAM_REQ, grant());
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].outcome, Outcome::Failed);
    assert_eq!(settled[0].usage, Usage::default());
}

#[test]
fn error_status_with_no_body_settles_failed() {
    let mut host = gateway();
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    let a = host
        .response_headers(id, &[(":status", "502")], true)
        .unwrap();
    assert_eq!(a, Action::Continue);
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].outcome, Outcome::Failed);
}
