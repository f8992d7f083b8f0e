//! Calls that end together share one settle callout. A worker's held calls are sent by its
//! root context (woken through a shared queue of its own): the first at once, and those
//! that end while a batch is in flight together in the next, sent the moment the first is
//! answered — no tick in the path. Each response leaves with its own settled balance.

mod common;
use common::*;
use opsgate_core::contract::{Grant, SettleResponse, SettleResult};
use opsgate_core::money::MilliCredits;
use opsgate_wasm_tests::{Action, Host, HttpCall, StreamId, StreamKind};

const REPLY: &[u8] = br#"{"usage":{"prompt_tokens":5,"completion_tokens":7}}"#;

fn grant_for(hold: &str) -> Grant {
    Grant {
        hold_id: hold.into(),
        ..grant()
    }
}

/// A forwarded call with hold `hold`, its response headers in.
fn forwarded(host: &mut Host, hold: &str) -> StreamId {
    let id = forwarded_chat(host, QUICKSTART, grant_for(hold));
    host.response_headers(
        id,
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    id
}

/// Three calls forwarded, holds a, b and c.
fn three(host: &mut Host) -> (StreamId, StreamId, StreamId) {
    (
        forwarded(host, "hold_a"),
        forwarded(host, "hold_b"),
        forwarded(host, "hold_c"),
    )
}

/// The provider's body arrives: the response is held for the settlement.
fn finish(host: &mut Host, id: StreamId) {
    assert_eq!(host.response_body(id, REPLY, true).unwrap(), Action::Pause);
}

fn holds(call: &HttpCall) -> Vec<String> {
    settle_batch(call)
        .settlements
        .into_iter()
        .map(|s| s.hold_id)
        .collect()
}

/// The control plane's answer: each hold settled, with its balance.
fn ack(host: &mut Host, call: &HttpCall, balances: &[(&str, i64)]) {
    let answer = SettleResponse {
        results: balances
            .iter()
            .map(|(hold, mc)| SettleResult {
                hold_id: (*hold).into(),
                charged_mc: 5,
                balance_mc: Some(MilliCredits(*mc)),
            })
            .collect(),
    };
    host.respond(call.token, 200, &[], &serde_json::to_vec(&answer).unwrap())
        .unwrap();
}

fn remaining(host: &Host, id: StreamId) -> Option<String> {
    host.response_header(id, "x-credits-remaining")
}

#[test]
fn calls_ending_while_a_batch_is_in_flight_ride_together_in_the_next() {
    let mut host = gateway_with(&config_with(r#""settle_wait_ms":1000"#));
    let (a, b, c) = three(&mut host);
    finish(&mut host, a);
    let first = settle_call(&mut host).expect("the first goes at once");
    assert_eq!(holds(&first), ["hold_a"]);
    assert_eq!(
        header(&first.headers, "x-request-id"),
        Some("hold_a"),
        "a batch of one names its call"
    );
    assert!(settle_batch(&first).with_balances);
    assert_eq!(first.timeout, std::time::Duration::from_millis(1000));

    finish(&mut host, b);
    finish(&mut host, c);
    assert!(
        settle_call(&mut host).is_none(),
        "b and c wait for the batch in flight"
    );
    for id in [a, b, c] {
        assert_eq!(host.resumed(id, StreamKind::Response), 0, "all held");
    }

    ack(&mut host, &first, &[("hold_a", 9_000_000)]);
    assert_eq!(host.resumed(a, StreamKind::Response), 1);
    assert_eq!(remaining(&host, a).as_deref(), Some("9000.000"));
    let second = settle_call(&mut host).expect("sent as the first is answered");
    assert_eq!(holds(&second), ["hold_b", "hold_c"], "one callout for both");
    assert_eq!(
        header(&second.headers, "x-request-id"),
        None,
        "a batch names its holds in the body"
    );
    assert!(settle_batch(&second).with_balances);
    assert_eq!(host.resumed(b, StreamKind::Response), 0);

    ack(
        &mut host,
        &second,
        &[("hold_b", 8_000_000), ("hold_c", 7_000_000)],
    );
    assert_eq!(host.resumed(b, StreamKind::Response), 1);
    assert_eq!(host.resumed(c, StreamKind::Response), 1);
    assert_eq!(remaining(&host, b).as_deref(), Some("8000.000"));
    assert_eq!(remaining(&host, c).as_deref(), Some("7000.000"));
    assert_eq!(host.forwarded_response_body(c), REPLY);
    for id in [a, b, c] {
        host.done(id).unwrap();
    }
    assert!(settle_call(&mut host).is_none());
    assert!(
        flush_settlements(&mut host).is_empty(),
        "settled exactly once"
    );
}

#[test]
fn a_failed_batch_releases_every_call_and_retries_every_settlement() {
    let mut host = gateway_with(&config_with(r#""settle_wait_ms":1000"#));
    let (a, b, c) = three(&mut host);
    finish(&mut host, a);
    let first = settle_call(&mut host).unwrap();
    finish(&mut host, b);
    finish(&mut host, c);
    host.respond(first.token, 503, &[], b"busy").unwrap();
    assert_eq!(host.resumed(a, StreamKind::Response), 1, "not held longer");
    // The estimate stays: balance + hold - cost.
    assert_eq!(remaining(&host, a).as_deref(), Some("9999.995"));
    let second = settle_call(&mut host).expect("the next batch still goes");
    host.timeout_call(second.token).unwrap();
    assert_eq!(host.resumed(b, StreamKind::Response), 1);
    assert_eq!(host.resumed(c, StreamKind::Response), 1);
    for id in [a, b, c] {
        host.done(id).unwrap();
    }
    let mut retried: Vec<String> = flush_settlements(&mut host)
        .into_iter()
        .map(|s| s.hold_id)
        .collect();
    retried.sort();
    assert_eq!(retried, ["hold_a", "hold_b", "hold_c"], "never lost");
}

#[test]
fn a_client_gone_before_its_batch_left_moves_its_settlement_to_the_queue() {
    let mut host = gateway_with(&config_with(r#""settle_wait_ms":1000"#));
    let (a, b) = (
        forwarded(&mut host, "hold_a"),
        forwarded(&mut host, "hold_b"),
    );
    finish(&mut host, a);
    let first = settle_call(&mut host).unwrap();
    finish(&mut host, b);
    // b's client leaves while its settlement waits for the batch in flight.
    host.done(b).unwrap();
    ack(&mut host, &first, &[("hold_a", 9_000_000)]);
    assert!(
        settle_call(&mut host).is_none(),
        "no held call is left to send"
    );
    let queued = flush_settlements(&mut host);
    assert_eq!(queued.len(), 1, "never lost");
    assert_eq!(queued[0].hold_id, "hold_b");
    host.done(a).unwrap();
    assert!(
        flush_settlements(&mut host).is_empty(),
        "settled exactly once"
    );
}

#[test]
fn a_client_gone_while_its_batch_is_in_flight_is_settled_by_it_once() {
    let mut host = gateway_with(&config_with(r#""settle_wait_ms":1000"#));
    let (a, b) = (
        forwarded(&mut host, "hold_a"),
        forwarded(&mut host, "hold_b"),
    );
    finish(&mut host, a);
    finish(&mut host, b);
    let batch = settle_call(&mut host).unwrap();
    assert_eq!(holds(&batch), ["hold_a"]);
    ack(&mut host, &batch, &[("hold_a", 9_000_000)]);
    let batch = settle_call(&mut host).unwrap();
    assert_eq!(holds(&batch), ["hold_b"]);
    host.done(b).unwrap();
    ack(&mut host, &batch, &[("hold_b", 8_000_000)]);
    host.done(a).unwrap();
    assert!(
        flush_settlements(&mut host).is_empty(),
        "settled exactly once"
    );
}

#[test]
fn each_worker_batches_its_own_calls() {
    let config = config_with(r#""settle_wait_ms":1000"#);
    let mut one = gateway_with(&config);
    let mut two = gateway_with(&config);
    two.worker_of(&one);
    // Envoy's queue registry spans the workers: each registers a name of its own.
    let (names_one, names_two) = (one.queue_names(), two.queue_names());
    assert_eq!((names_one.len(), names_two.len()), (1, 1));
    assert!(names_one[0].starts_with("opsgate.settle."), "{names_one:?}");
    assert_ne!(
        names_one, names_two,
        "a shared name would send one worker's wake-ups to the other"
    );
    let a = forwarded(&mut one, "hold_a");
    let b = forwarded(&mut two, "hold_b");
    finish(&mut one, a);
    finish(&mut two, b);
    // Neither waits for the other's batch.
    let on_one = settle_call(&mut one).expect("worker one sends its own");
    let on_two = settle_call(&mut two).expect("worker two sends its own");
    assert_eq!(holds(&on_one), ["hold_a"]);
    assert_eq!(holds(&on_two), ["hold_b"]);
    ack(&mut two, &on_two, &[("hold_b", 8_000_000)]);
    assert_eq!(two.resumed(b, StreamKind::Response), 1);
    assert_eq!(one.resumed(a, StreamKind::Response), 0);
}

#[test]
fn a_lost_wake_up_is_covered_by_the_next_tick() {
    let mut host = gateway_with(&config_with(r#""settle_wait_ms":1000"#));
    host.drop_queue_ready(true);
    let a = forwarded(&mut host, "hold_a");
    finish(&mut host, a);
    assert!(settle_call(&mut host).is_none(), "the wake-up was lost");
    host.advance(std::time::Duration::from_millis(250));
    host.tick().unwrap();
    let batch = settle_call(&mut host).expect("sent on the tick");
    assert_eq!(holds(&batch), ["hold_a"]);
    assert!(settle_batch(&batch).with_balances);
    ack(&mut host, &batch, &[("hold_a", 9_000_000)]);
    assert_eq!(host.resumed(a, StreamKind::Response), 1);
    assert_eq!(remaining(&host, a).as_deref(), Some("9000.000"));
    // Later calls still batch: the worker is not stuck waiting for a wake-up.
    host.drop_queue_ready(false);
    let b = forwarded(&mut host, "hold_b");
    finish(&mut host, b);
    let batch = settle_call(&mut host).expect("woken at once again");
    assert_eq!(holds(&batch), ["hold_b"]);
}

#[test]
fn held_calls_are_sent_before_the_worker_shuts_down() {
    let mut host = gateway_with(&config_with(r#""settle_wait_ms":1000"#));
    host.drop_queue_ready(true);
    let a = forwarded(&mut host, "hold_a");
    finish(&mut host, a);
    assert!(!host.shutdown().unwrap(), "waits for the held call's batch");
    let batch = settle_call(&mut host).expect("sent as the worker drains");
    assert_eq!(holds(&batch), ["hold_a"]);
    ack(&mut host, &batch, &[("hold_a", 9_000_000)]);
    assert_eq!(host.resumed(a, StreamKind::Response), 1);
    assert!(host.done_called(), "done once the batch is answered");
}

/// Takes every settle callout pending (the retry queue's), acknowledges it, and returns
/// the holds it carried.
fn drain_retries(host: &mut Host) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(call) = settle_call(host) {
        out.extend(holds(&call));
        ack_settle(host, &call);
    }
    out
}

/// A call that ends behind a batch in flight waits at most its own `settle_wait_ms` (seen on
/// the root's tick), not that batch's wait and then its own batch's. Sent already: it leaves
/// while its batch stays in flight, which still settles it once. Not yet sent: its settlement
/// moves to the retry queue.
#[test]
fn a_call_behind_a_batch_in_flight_waits_at_most_its_own_settle_wait() {
    use std::time::Duration;
    let mut host = gateway_with(&config_with(r#""settle_wait_ms":1000"#));
    let (a, b, c) = three(&mut host);
    finish(&mut host, a);
    let first = settle_call(&mut host).expect("a goes at once");
    host.advance(Duration::from_millis(900));
    finish(&mut host, b);
    // Envoy gives up on the first batch at its timeout: a leaves, b's batch goes.
    host.advance(Duration::from_millis(100));
    host.timeout_call(first.token).unwrap();
    assert_eq!(host.resumed(a, StreamKind::Response), 1);
    let second = settle_call(&mut host).expect("b's batch");
    assert_eq!(holds(&second), ["hold_b"]);
    host.advance(Duration::from_millis(750));
    host.tick().unwrap();
    let mut retried = drain_retries(&mut host);
    assert_eq!(host.resumed(b, StreamKind::Response), 0, "within its wait");
    host.advance(Duration::from_millis(200));
    host.tick().unwrap();
    retried.extend(drain_retries(&mut host));
    assert_eq!(
        host.resumed(b, StreamKind::Response),
        1,
        "1,050 ms after it ended: released though its batch is still in flight"
    );
    assert_eq!(
        remaining(&host, b).as_deref(),
        Some("9999.995"),
        "the estimate"
    );
    assert_eq!(
        host.metric("opsgate.settle.unacknowledged"),
        Some(2),
        "a (its batch timed out) and b (its wait ran out)"
    );
    ack(&mut host, &second, &[("hold_b", 8_000_000)]);
    assert_eq!(host.resumed(b, StreamKind::Response), 1, "resumed once");

    // c ends behind a batch that is not answered in time: released unsent, its settlement
    // moves to the retry queue (and d, in that batch, is released too).
    let d = forwarded(&mut host, "hold_d");
    finish(&mut host, d);
    let third = settle_call(&mut host).expect("d's batch");
    assert_eq!(holds(&third), ["hold_d"]);
    finish(&mut host, c);
    host.advance(Duration::from_millis(1_050));
    host.tick().unwrap();
    retried.extend(drain_retries(&mut host));
    assert_eq!(host.resumed(c, StreamKind::Response), 1, "c released");
    assert_eq!(host.resumed(d, StreamKind::Response), 1, "d released");
    host.timeout_call(third.token).unwrap();
    assert_eq!(host.resumed(d, StreamKind::Response), 1, "resumed once");
    assert_eq!(host.metric("opsgate.settle.unacknowledged"), Some(4));
    assert!(
        settle_call(&mut host).is_none(),
        "c is in no batch any more"
    );
    for id in [a, b, c, d] {
        host.done(id).unwrap();
    }
    retried.extend(flush_settlements(&mut host).into_iter().map(|s| s.hold_id));
    retried.sort();
    assert_eq!(
        retried,
        ["hold_a", "hold_c", "hold_d"],
        "every unanswered settlement retried once; b's batch settled it"
    );
}
