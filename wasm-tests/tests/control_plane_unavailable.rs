//! Metered calls fail closed: when the control plane cannot answer the authorize callout
//! (reset, timeout, an error status, a body that is not a decision, or no way to reach it),
//! the client gets a 503 envelope at once — never a hang, never an unmetered forward. The
//! control plane may have placed a hold before failing to answer, so the request id sent
//! with authorize is released: exactly one `Failed` settlement, nothing charged.

mod common;
use common::*;
use opsgate_core::contract::Outcome;
use opsgate_core::pricing::Usage;
use opsgate_wasm_tests::{Action, Host, HttpCall, StreamId, StreamKind};
use std::time::Duration;

fn pending_authorize() -> (Host, StreamId, HttpCall) {
    let mut host = gateway();
    let (id, action) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    assert_eq!(action, Action::Pause);
    let call = authorize_call(&mut host);
    assert_eq!(
        call.timeout,
        Duration::from_millis(1500),
        "the callout carries the configured timeout, so it cannot hang"
    );
    assert!(host.local_reply(id).is_none());
    (host, id, call)
}

fn assert_fails_closed(host: &mut Host, id: StreamId, call: &HttpCall) {
    let (reply, env) = expect_reply(host, id, 503, "service_unavailable");
    assert_eq!(env["error"]["type"], "service_unavailable");
    assert!(
        env["error"]["message"]
            .as_str()
            .unwrap()
            .contains("control plane"),
        "{env}"
    );
    assert!(!reply.body_str().contains(SERVICE_KEY));
    assert!(
        !host.is_paused(id, StreamKind::Request),
        "the stream was answered, not left waiting"
    );
    assert!(host.header(id, "x-opsgate-cluster").is_none());
    // Changed: this used to assert "no hold, nothing to settle"; a hold the control plane
    // may have placed under the request id is released (and only once, not again at on_log).
    let request_id = authorize_request(call)
        .request_id
        .expect("authorize carries the request id");
    host.done(id).unwrap();
    let settled = flush_settlements(host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    let s = &settled[0];
    assert_eq!(s.hold_id, request_id);
    assert_eq!(s.outcome, Outcome::Failed);
    assert_eq!(s.usage, Usage::default());
    assert_eq!((s.upstream_status, s.latency_ms), (0, 0));
    assert!(flush_settlements(host).is_empty(), "released exactly once");
}

#[test]
fn reset_callout_is_503() {
    let (mut host, id, call) = pending_authorize();
    host.fail_call(call.token).unwrap();
    assert_fails_closed(&mut host, id, &call);
}

#[test]
fn timed_out_callout_is_503() {
    let (mut host, id, call) = pending_authorize();
    host.timeout_call(call.token).unwrap();
    assert_fails_closed(&mut host, id, &call);
}

#[test]
fn control_plane_500_is_503() {
    let (mut host, id, call) = pending_authorize();
    let body = br#"{"error":{"message":"database is locked","type":"server_error","code":"internal_error","param":null}}"#;
    host.respond(
        call.token,
        500,
        &[("content-type", "application/json")],
        body,
    )
    .unwrap();
    assert_fails_closed(&mut host, id, &call);
    assert!(
        !host
            .local_reply(id)
            .unwrap()
            .body_str()
            .contains("database is locked"),
        "internal errors are not shown to the client"
    );
}

#[test]
fn non_json_answer_is_503() {
    let (mut host, id, call) = pending_authorize();
    host.respond(
        call.token,
        200,
        &[("content-type", "text/html")],
        b"<html>502 Bad Gateway</html>",
    )
    .unwrap();
    assert_fails_closed(&mut host, id, &call);
}

#[test]
fn json_that_is_not_a_decision_is_503() {
    let (mut host, id, call) = pending_authorize();
    host.respond(call.token, 200, &[], br#"{"decision":"maybe"}"#)
        .unwrap();
    assert_fails_closed(&mut host, id, &call);
}

#[test]
fn no_route_to_the_control_plane_is_503() {
    // The control plane's cluster is unknown to Envoy: the callout cannot even be sent.
    // A user key needs no snapshot, so the request reaches the authorize step.
    let mut host = Host::plugin().unwrap();
    assert!(host.configure("", &config()).unwrap());
    host.tick().unwrap();
    assert!(
        host.pending_calls().is_empty(),
        "nothing could be dispatched"
    );
    let (id, action) = chat(&mut host, USER_KEY, QUICKSTART);
    assert_eq!(action, Action::Pause);
    let (_, env) = expect_reply(&host, id, 503, "service_unavailable");
    assert!(
        env["error"]["message"]
            .as_str()
            .unwrap()
            .contains("control plane"),
        "{env}"
    );
    assert!(host.pending_calls().is_empty());
    assert!(host.failed().is_none());
    // Authorize was never sent: there is no hold to release.
    host.add_cluster(CP);
    host.done(id).unwrap();
    assert!(flush_settlements(&mut host).is_empty());
}
