//! When the provider fails, its answer reaches the client unchanged and the hold is settled
//! as `Failed` with zero usage (nothing charged, the quota slot released); so is a reply the
//! router makes itself (503/504, which comes with a status). A provider refusing the
//! gateway's own key (401/403) is not passed through: see `byok_key_rejected.rs`. A client
//! that leaves after the forward but before any response headers is settled `Partial` with
//! the prompt bound: the provider was already asked.

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
        // Changed: 401 was in this list; a refused platform key is now replaced with a 502
        // envelope (byok_key_rejected.rs).
        (
            "503",
            r#"{"error":{"message":"The engine is currently overloaded","type":"server_error"}}"#,
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

// Changed: this was `provider_never_answering_settles_failed` (Failed, zero usage). When
// Envoy gives up on the upstream it answers 503/504 itself, which reaches the response
// callbacks with a status; no status at all means the client left after the provider was
// asked, so the quota slot is used and the prompt is charged (never the completion bound).
#[test]
fn client_gone_before_the_response_settles_partial_with_the_prompt_bound() {
    let mut host = gateway();
    for body in [QUICKSTART, STREAM_REQ] {
        let id = forwarded_chat(&mut host, body, grant());
        host.done(id).unwrap();
        let settled = flush_settlements(&mut host);
        assert_eq!(settled.len(), 1, "{settled:?}");
        let s = &settled[0];
        assert_eq!(s.hold_id, "hold_1");
        assert_eq!(s.outcome, Outcome::Partial, "{body}");
        assert_eq!(
            s.usage,
            Usage {
                prompt_tokens: body.len() as u64,
                completion_tokens: 0,
                images: 0,
            },
            "{body}"
        );
        assert_eq!(s.upstream_status, 0);
        assert!(flush_settlements(&mut host).is_empty(), "settled once");
    }
}

#[test]
fn a_router_timeout_reply_settles_failed() {
    let mut host = gateway();
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    // Envoy's own upstream timeout: a 504 with a short text body.
    let a = host
        .response_headers(
            id,
            &[(":status", "504"), ("content-type", "text/plain")],
            false,
        )
        .unwrap();
    // Held: Envoy's plain text becomes the error envelope.
    assert_eq!(a, Action::Pause);
    host.response_body(id, b"upstream request timeout", true)
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_slice(&host.forwarded_response_body(id)).unwrap();
    assert_eq!(body["error"]["code"], "timeout", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer in time"),
        "{body}"
    );
    assert_eq!(host.response_header(id, ":status").as_deref(), Some("504"));
    assert_eq!(
        host.response_header(id, "content-type").as_deref(),
        Some("application/json")
    );
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].outcome, Outcome::Failed);
    assert_eq!(settled[0].usage, Usage::default());
    assert_eq!(settled[0].upstream_status, 504);
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
