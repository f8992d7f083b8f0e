//! With `settle_wait_ms` (1 s by default, as the shipped Envoy configs set), a plain response's hold ends with
//! the call: its settlement is sent as the body completes and the response is held until the
//! control plane acknowledges it, so `X-Credits-Remaining` is the settled balance and the
//! client's next call finds the hold gone. A failed or missing acknowledgement never loses the
//! settlement: it goes to the queue and is retried.

mod common;
use common::*;
use opsgate_core::contract::{Outcome, SettleResponse, SettleResult};
use opsgate_wasm_tests::{Action, Host, StreamId, StreamKind};

fn waiting_gateway() -> Host {
    gateway_with(&config_with(r#""settle_wait_ms":1000"#))
}

const REPLY: &[u8] = br#"{"usage":{"prompt_tokens":5,"completion_tokens":7}}"#;

/// A forwarded call whose plain response has fully arrived; returns the stream.
fn answered(host: &mut Host) -> StreamId {
    let id = forwarded_chat(host, QUICKSTART, grant());
    host.response_headers(
        id,
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    let a = host.response_body(id, REPLY, true).unwrap();
    assert_eq!(a, Action::Pause, "held for the settlement");
    id
}

#[test]
fn the_wait_is_on_by_default() {
    // The filter's own default, with no settle_wait_ms in the configuration at all.
    let base = defaults_config();
    assert!(!base.contains("settle_wait"));
    let mut host = gateway_with(&base);
    let id = answered(&mut host);
    assert_eq!(host.resumed(id, StreamKind::Response), 0, "held");
    let call = settle_call(&mut host).expect("its settlement sent at once");
    assert_eq!(call.timeout, std::time::Duration::from_millis(1000));
    assert!(settle_batch(&call).with_balances);
}

#[test]
fn the_response_leaves_after_its_settlement_with_the_settled_balance() {
    let mut host = waiting_gateway();
    let id = answered(&mut host);
    assert_eq!(host.resumed(id, StreamKind::Response), 0);
    let call = settle_call(&mut host).expect("sent at once, not on a tick");
    let batch = settle_batch(&call);
    assert!(batch.with_balances);
    assert_eq!(batch.settlements.len(), 1);
    assert_eq!(batch.settlements[0].hold_id, "hold_1");
    assert_eq!(batch.settlements[0].outcome, Outcome::Success);
    assert_eq!(call.timeout, std::time::Duration::from_millis(1000));
    let ack = SettleResponse {
        results: vec![SettleResult {
            hold_id: "hold_1".into(),
            charged_mc: 5,
            balance_mc: Some(MilliCredits(9_999_000)),
        }],
    };
    host.respond(call.token, 200, &[], &serde_json::to_vec(&ack).unwrap())
        .unwrap();
    assert_eq!(host.resumed(id, StreamKind::Response), 1);
    assert_eq!(
        host.response_header(id, "x-credits-remaining").as_deref(),
        Some("9999.000"),
        "the settled balance, not the estimate"
    );
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("0.005")
    );
    assert_eq!(host.forwarded_response_body(id), REPLY);
    host.done(id).unwrap();
    assert!(
        flush_settlements(&mut host).is_empty(),
        "settled exactly once"
    );
}

#[test]
fn a_failed_acknowledgement_lets_the_response_go_and_retries_the_settlement() {
    let mut host = waiting_gateway();
    let id = answered(&mut host);
    let call = settle_call(&mut host).unwrap();
    host.timeout_call(call.token).unwrap();
    assert_eq!(host.resumed(id, StreamKind::Response), 1);
    // The estimate stays: balance + hold - cost.
    assert_eq!(
        host.response_header(id, "x-credits-remaining").as_deref(),
        Some("9999.995")
    );
    host.done(id).unwrap();
    let retried = flush_settlements(&mut host);
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].hold_id, "hold_1");
}

#[test]
fn a_client_gone_while_waiting_leaves_its_settlement_with_its_batch() {
    let mut host = waiting_gateway();
    let id = answered(&mut host);
    let call = settle_call(&mut host).unwrap();
    // The client left: the stream ends, but the batch is the root context's and goes on.
    host.done(id).unwrap();
    host.timeout_call(call.token).unwrap();
    // Not acknowledged: the root's queue sends it again, in a batch of its own.
    let retried = flush_settlements(&mut host);
    assert_eq!(retried.len(), 1, "never lost");
    assert_eq!(retried[0].hold_id, "hold_1");
}

#[test]
fn a_streams_done_leaves_after_its_settlement() {
    let mut host = waiting_gateway();
    let body =
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let id = forwarded_chat(&mut host, body, grant());
    host.response_headers(
        id,
        &[(":status", "200"), ("content-type", "text/event-stream")],
        false,
    )
    .unwrap();
    let chunk = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n";
    assert_eq!(
        host.response_body(id, chunk.as_bytes(), false).unwrap(),
        Action::Continue,
        "chunks before the end flow as they come"
    );
    let usage =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n";
    let end = format!("{usage}data: [DONE]\n\n");
    assert_eq!(
        host.response_body(id, end.as_bytes(), false).unwrap(),
        Action::Pause,
        "[DONE] waits for the settlement"
    );
    // Whatever follows waits with it, untouched.
    assert_eq!(host.response_body(id, b"", true).unwrap(), Action::Pause);
    let call = settle_call(&mut host).expect("sent at [DONE]");
    let batch = settle_batch(&call);
    assert_eq!(batch.settlements.len(), 1);
    assert_eq!(batch.settlements[0].outcome, Outcome::Success);
    assert_eq!(batch.settlements[0].usage.completion_tokens, 7);
    ack_settle(&mut host, &call);
    assert_eq!(host.resumed(id, StreamKind::Response), 1);
    let out = String::from_utf8(host.forwarded_response_body(id)).unwrap();
    assert!(out.ends_with("data: [DONE]\n\n"), "{out}");
    assert!(out.contains(": opsgate "), "the cost comment: {out}");
    host.done(id).unwrap();
    assert!(
        flush_settlements(&mut host).is_empty(),
        "settled exactly once"
    );
}
