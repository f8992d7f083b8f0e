//! The snapshot is polled again every `snapshot_interval`: new service keys work without a
//! restart, removed ones stop working, and a failed poll keeps the last good snapshot.

mod common;
use common::*;
use opsgate_core::contract::{ServiceKeyEntry, Snapshot};
use opsgate_core::credentials::digest;
use opsgate_wasm_tests::Host;
use std::time::Duration;

const NEW_KEY: &str = "sk-bolt-diy-service-key-2025";

fn with_new_key(version: &str, keep_old: bool) -> Snapshot {
    let mut snap = snapshot();
    snap.version = version.into();
    if !keep_old {
        snap.service_keys.clear();
    }
    snap.service_keys.push(ServiceKeyEntry {
        digest: digest(NEW_KEY),
        user_id: "bolt-diy-service".into(),
    });
    snap
}

/// Advances past the interval and ticks; returns the poll the tick sent.
fn next_poll(host: &mut Host) -> opsgate_wasm_tests::HttpCall {
    host.advance(Duration::from_millis(5_000));
    host.tick().unwrap();
    snapshot_call(host).expect("a snapshot poll after the interval")
}

#[test]
fn polled_only_after_the_interval_with_the_internal_token() {
    let mut host = gateway();
    host.advance(Duration::from_millis(4_000));
    host.tick().unwrap();
    assert_eq!(pending_to(&host, SNAPSHOT), 0, "not due yet");
    host.advance(Duration::from_millis(1_000));
    host.tick().unwrap();
    let call = snapshot_call(&mut host).expect("due after 5 s");
    assert_eq!(call.header(":method"), Some("GET"));
    assert_eq!(
        call.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    // One poll at a time, however many ticks pass meanwhile.
    host.advance(Duration::from_millis(10_000));
    host.tick().unwrap();
    assert_eq!(pending_to(&host, SNAPSHOT), 0);
    answer_snapshot(&mut host, &call, &snapshot());
}

#[test]
fn a_new_key_works_after_the_next_poll() {
    let mut host = gateway();
    assert!(!service_key_known(&mut host, NEW_KEY));
    let call = next_poll(&mut host);
    answer_snapshot(&mut host, &call, &with_new_key("v2", true));
    assert!(service_key_known(&mut host, NEW_KEY));
    assert!(service_key_known(&mut host, SERVICE_KEY));
    let (id, _) = chat(&mut host, NEW_KEY, QUICKSTART);
    let call = authorize_call(&mut host);
    assert_eq!(
        authorize_request(&call).principal,
        opsgate_core::contract::Principal::Service {
            user_id: "bolt-diy-service".into()
        }
    );
    assert!(host.local_reply(id).is_none());
}

#[test]
fn a_revoked_key_is_refused_after_the_next_poll() {
    let mut host = gateway();
    assert!(service_key_known(&mut host, SERVICE_KEY));
    let call = next_poll(&mut host);
    answer_snapshot(&mut host, &call, &with_new_key("v3", false));
    assert!(!service_key_known(&mut host, SERVICE_KEY));
    assert!(service_key_known(&mut host, NEW_KEY));
    // Non-metered calls are refused as well.
    let auth = bearer(SERVICE_KEY);
    let (id, _) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[("authorization", &auth)],
    );
    expect_reply(&host, id, 401, "invalid_api_key");
}

#[test]
fn a_failed_poll_keeps_the_last_good_snapshot() {
    let mut host = gateway();
    // Reset.
    let call = next_poll(&mut host);
    host.fail_call(call.token).unwrap();
    assert!(service_key_known(&mut host, SERVICE_KEY));
    // An error status.
    let call = next_poll(&mut host);
    host.respond(call.token, 503, &[], b"no healthy upstream")
        .unwrap();
    assert!(service_key_known(&mut host, SERVICE_KEY));
    // A timeout.
    let call = next_poll(&mut host);
    host.timeout_call(call.token).unwrap();
    assert!(service_key_known(&mut host, SERVICE_KEY));
    // A 200 that is not a snapshot.
    let call = next_poll(&mut host);
    host.respond(call.token, 200, &[], b"<html></html>")
        .unwrap();
    assert!(service_key_known(&mut host, SERVICE_KEY));
    assert!(has_log_at(&host, 3, "keeping the last good one"));
    // And it recovers.
    let call = next_poll(&mut host);
    answer_snapshot(&mut host, &call, &with_new_key("v4", true));
    assert!(service_key_known(&mut host, NEW_KEY));
}
