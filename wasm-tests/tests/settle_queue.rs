//! Settlements are owned by the root context: queued by the calls, sent in batches on the
//! tick with the internal token, retried in order when a batch fails, bounded in size, and
//! flushed on shutdown before the filter lets Envoy remove it.

mod common;
use common::*;
use opsgate_core::contract::Outcome;
use opsgate_wasm_tests::{Host, StreamId};

const PROVIDER_REPLY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;

/// One complete metered call whose hold is `hold_id`; its settlement is queued.
fn complete_call(host: &mut Host, hold_id: &str) {
    let id = forward_call(host, hold_id);
    finish_call(host, id);
}

/// A metered call forwarded under `hold_id`, its answer not yet arrived.
fn forward_call(host: &mut Host, hold_id: &str) -> StreamId {
    let mut g = grant();
    g.hold_id = hold_id.into();
    forwarded_chat(host, QUICKSTART, g)
}

/// The provider's answer to a forwarded call arrives, and the stream ends.
fn finish_call(host: &mut Host, id: StreamId) {
    host.response_headers(
        id,
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    host.response_body(id, PROVIDER_REPLY.as_bytes(), true)
        .unwrap();
    host.done(id).unwrap();
}

fn holds(call: &opsgate_wasm_tests::HttpCall) -> Vec<String> {
    settle_batch(call)
        .settlements
        .into_iter()
        .map(|s| s.hold_id)
        .collect()
}

fn tick(host: &mut Host) {
    host.advance(std::time::Duration::from_millis(250));
    host.tick().unwrap();
}

#[test]
fn several_calls_go_in_one_authenticated_batch() {
    let mut host = gateway();
    for h in ["hold_a", "hold_b", "hold_c"] {
        complete_call(&mut host, h);
    }
    assert_eq!(
        pending_to(&host, SETTLE),
        0,
        "nothing leaves before the tick"
    );
    tick(&mut host);
    let call = settle_call(&mut host).expect("a settle batch");
    assert_eq!(pending_to(&host, SETTLE), 0, "one batch, not one call each");
    assert_eq!(call.cluster, CP);
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.header(":authority"), Some("cp"));
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(call.header("content-type"), Some("application/json"));
    assert_eq!(holds(&call), ["hold_a", "hold_b", "hold_c"]);
    let batch = settle_batch(&call);
    for s in &batch.settlements {
        assert_eq!(s.outcome, Outcome::Success);
        assert_eq!((s.usage.prompt_tokens, s.usage.completion_tokens), (10, 5));
        assert_eq!(s.upstream_status, 200);
    }
    ack_settle(&mut host, &call);
    tick(&mut host);
    assert!(
        settle_call(&mut host).is_none(),
        "acknowledged items are gone"
    );
}

#[test]
fn a_reset_batch_is_retried_later_in_order_without_duplicates() {
    let mut host = gateway();
    complete_call(&mut host, "hold_1");
    complete_call(&mut host, "hold_2");
    tick(&mut host);
    let call = settle_call(&mut host).unwrap();
    assert_eq!(holds(&call), ["hold_1", "hold_2"]);
    // A call finishes while the batch is in flight.
    complete_call(&mut host, "hold_3");
    host.fail_call(call.token).unwrap();
    assert_eq!(pending_to(&host, SETTLE), 0, "no hot retry loop");
    tick(&mut host);
    let call = settle_call(&mut host).expect("retried on the next tick");
    assert_eq!(holds(&call), ["hold_1", "hold_2", "hold_3"]);
    ack_settle(&mut host, &call);
    tick(&mut host);
    assert!(settle_call(&mut host).is_none());
}

#[test]
fn a_refused_batch_is_retried_too() {
    let mut host = gateway();
    complete_call(&mut host, "hold_1");
    tick(&mut host);
    let call = settle_call(&mut host).unwrap();
    host.respond(
        call.token,
        500,
        &[("content-type", "application/json")],
        br#"{"error":{"message":"db down","type":"server_error","code":"internal_error","param":null}}"#,
    )
    .unwrap();
    complete_call(&mut host, "hold_2");
    tick(&mut host);
    let call = settle_call(&mut host).unwrap();
    assert_eq!(holds(&call), ["hold_1", "hold_2"]);
    // A timeout is a failure as well.
    host.timeout_call(call.token).unwrap();
    tick(&mut host);
    let call = settle_call(&mut host).unwrap();
    assert_eq!(holds(&call), ["hold_1", "hold_2"]);
    ack_settle(&mut host, &call);
    tick(&mut host);
    assert!(settle_call(&mut host).is_none());
}

#[test]
fn settle_batch_limits_the_batch_size() {
    let mut host = gateway_with(&config_with(r#""settle_batch":2"#));
    let all = ["h1", "h2", "h3", "h4", "h5"];
    for h in all {
        complete_call(&mut host, h);
    }
    let mut sizes = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..5 {
        tick(&mut host);
        while let Some(call) = settle_call(&mut host) {
            let h = holds(&call);
            sizes.push(h.len());
            seen.extend(h);
            ack_settle(&mut host, &call);
        }
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(seen, all);
}

#[test]
fn a_full_queue_refuses_new_calls_and_never_drops_a_settlement() {
    let mut host = gateway_with(&config_with(r#""settle_batch":1,"settle_queue_max":2"#));
    // Calls already in flight finish past the bound: each settlement is kept.
    let ids: Vec<_> = ["h1", "h2", "h3"]
        .into_iter()
        .map(|h| forward_call(&mut host, h))
        .collect();
    for id in ids {
        finish_call(&mut host, id);
    }
    // A new call is refused before any hold is placed: 503 with Retry-After, no authorize.
    let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    let reply = host.local_reply(id).expect("refused at once");
    assert_eq!(reply.status, 503, "{}", reply.body_str());
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(pending_to(&host, AUTHORIZE), 0, "no hold placed");
    let settled: Vec<_> = flush_settlements(&mut host)
        .into_iter()
        .map(|s| s.hold_id)
        .collect();
    assert_eq!(settled, ["h1", "h2", "h3"], "nothing dropped");
}

#[test]
fn shutdown_flushes_the_queue_before_done() {
    let mut host = gateway_with(&config_with(r#""settle_batch":2"#));
    for h in ["h1", "h2", "h3"] {
        complete_call(&mut host, h);
    }
    assert!(!host.shutdown().unwrap(), "waits for the queue to drain");
    assert!(!host.done_called());
    let call = settle_call(&mut host).expect("the queue is sent at once");
    assert_eq!(holds(&call), ["h1", "h2"]);
    // A failure during shutdown does not lose the batch.
    host.fail_call(call.token).unwrap();
    assert!(!host.done_called());
    let call = settle_call(&mut host).expect("resent");
    assert_eq!(holds(&call), ["h1", "h2"]);
    ack_settle(&mut host, &call);
    assert!(!host.done_called(), "one more batch to go");
    let call = settle_call(&mut host).expect("the rest");
    assert_eq!(holds(&call), ["h3"]);
    ack_settle(&mut host, &call);
    assert!(host.done_called());
    assert!(host.root_deleted());
}

#[test]
fn shutdown_waits_for_a_batch_already_in_flight() {
    let mut host = gateway();
    complete_call(&mut host, "h1");
    tick(&mut host);
    let call = settle_call(&mut host).unwrap();
    complete_call(&mut host, "h2");
    assert!(!host.shutdown().unwrap());
    assert_eq!(pending_to(&host, SETTLE), 0, "one batch at a time");
    ack_settle(&mut host, &call);
    assert!(!host.done_called());
    let call = settle_call(&mut host).expect("what was queued meanwhile");
    assert_eq!(holds(&call), ["h2"]);
    ack_settle(&mut host, &call);
    assert!(host.done_called());
}

#[test]
fn shutdown_with_nothing_queued_is_immediate() {
    let mut host = gateway();
    assert!(host.shutdown().unwrap());
    assert!(host.root_deleted());
    assert!(host.pending_calls().is_empty());
}
