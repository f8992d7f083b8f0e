//! Envoy stats through the proxy-wasm metrics ABI: every `opsgate.*` metric is defined at
//! configuration (Envoy shows them as `wasmcustom.opsgate.*`), decisions are counted by
//! outcome, credential-cache hits and misses and JWT failures are counted, and the
//! authorize callout's latency goes to a histogram.

mod common;
use common::*;
use opsgate_core::ErrorKind;
use opsgate_wasm_tests::{Action, Host};
use std::time::Duration;

const DECISIONS: [&str; 15] = [
    "allowed",
    "passed",
    "denied_400",
    "denied_401",
    "denied_402",
    "denied_403",
    "denied_404",
    "denied_405",
    "denied_413",
    "denied_429",
    "error_500",
    "error_502",
    "unavailable_503",
    "timeout_504",
    "other",
];

fn decision(host: &Host, name: &str) -> i64 {
    counter(host, &format!("opsgate.decisions.{name}"))
}

/// Every decision counter, as (name, value) with the non-zero ones only.
fn nonzero_decisions(host: &Host) -> Vec<(&'static str, i64)> {
    DECISIONS
        .iter()
        .map(|d| (*d, decision(host, d)))
        .filter(|(_, v)| *v != 0)
        .collect()
}

#[test]
fn every_metric_is_defined_at_configuration() {
    let host = gateway();
    for d in DECISIONS {
        assert_eq!(
            host.metric(&format!("opsgate.decisions.{d}")),
            Some(0),
            "{d} defined"
        );
    }
    for name in [
        "opsgate.credential_cache.hits",
        "opsgate.credential_cache.misses",
        "opsgate.credential_cache.negative_hits",
        "opsgate.jwt.verified",
        "opsgate.jwt.verify_failures",
        "opsgate.settle.backpressure",
    ] {
        assert_eq!(host.metric(name), Some(0), "{name} defined");
    }
    assert!(host.histogram("opsgate.authorize.latency_ms").is_empty());
}

#[test]
fn decisions_are_counted_by_outcome() {
    let mut host = gateway();
    // allowed
    let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    let call = authorize_call(&mut host);
    allow(&mut host, &call, grant());
    host.done(id).unwrap();
    // 401: no credential
    let id = chat_with_headers(&mut host, &[]);
    expect_reply(&host, id, 401, "invalid_api_key");
    // 402, 403, 429 from the control plane
    for (kind, status, code) in [
        (ErrorKind::InsufficientCredits, 402, "payment_required"),
        (ErrorKind::Forbidden, 403, "model_not_allowed"),
        (ErrorKind::QuotaExceeded, 429, "quota_exceeded"),
    ] {
        let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
        let call = authorize_call(&mut host);
        deny_with(&mut host, &call, kind, "refused");
        expect_reply(&host, id, status, code);
    }
    // 503: the control plane does not answer
    let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    let call = authorize_call(&mut host);
    host.fail_call(call.token).unwrap();
    expect_reply(&host, id, 503, "service_unavailable");
    // 400: not JSON
    let (id, _) = chat(&mut host, SERVICE_KEY, "not json");
    expect_reply(&host, id, 400, "bad_request");
    // 405: GET on a metered route
    let auth = bearer(SERVICE_KEY);
    let (id, _) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/chat/completions",
        &[("authorization", &auth)],
    );
    expect_reply(&host, id, 405, "method_not_allowed");
    // passed: non-metered, authenticated
    let (_, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[("authorization", &auth)],
    );
    assert_eq!(action, Action::Continue);
    // Not ours: not counted.
    send_headers_only(&mut host, "GET", "/healthz", &[]);

    assert_eq!(
        nonzero_decisions(&host),
        vec![
            ("allowed", 1),
            ("passed", 1),
            ("denied_400", 1),
            ("denied_401", 1),
            ("denied_402", 1),
            ("denied_403", 1),
            ("denied_405", 1),
            ("denied_429", 1),
            ("unavailable_503", 1),
        ]
    );
}

#[test]
fn authorize_latency_is_recorded_in_milliseconds() {
    let mut host = gateway();
    for (ms, fail) in [(120, false), (7, false), (1500, true)] {
        let (_, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
        let call = authorize_call(&mut host);
        host.advance(Duration::from_millis(ms));
        if fail {
            host.timeout_call(call.token).unwrap();
        } else {
            allow(&mut host, &call, grant());
        }
    }
    assert_eq!(
        host.histogram("opsgate.authorize.latency_ms"),
        vec![120, 7, 1500]
    );
}

#[test]
fn credential_cache_and_jwt_counters() {
    let mut host = gateway();
    let auth = bearer(USER_KEY);
    for _ in 0..3 {
        let id = chat_with_headers(&mut host, &[("authorization", &auth)]);
        let call = authorize_call(&mut host);
        allow(&mut host, &call, grant());
        host.done(id).unwrap();
    }
    assert_eq!(counter(&host, "opsgate.credential_cache.misses"), 1);
    assert_eq!(counter(&host, "opsgate.credential_cache.hits"), 2);

    let mut host = jwt::jwt_gateway();
    let mut expired = jwt::claims("u");
    expired["exp"] = serde_json::json!(jwt::T0 - 3600);
    let bad = bearer(&jwt::rs256(&expired));
    let id = chat_with_headers(&mut host, &[("authorization", &bad)]);
    expect_reply(&host, id, 401, "invalid_api_key");
    let good = bearer(&jwt::rs256(&jwt::claims("u")));
    for _ in 0..2 {
        let id = chat_with_headers(&mut host, &[("authorization", &good)]);
        let call = authorize_call(&mut host);
        allow(&mut host, &call, grant());
        host.done(id).unwrap();
    }
    assert_eq!(counter(&host, "opsgate.jwt.verify_failures"), 1);
    assert_eq!(counter(&host, "opsgate.jwt.verified"), 2);
}

#[test]
fn calls_refused_while_settlements_are_behind_are_counted() {
    let mut host = gateway_with(&config_with(r#""settle_batch":1,"settle_queue_max":1"#));
    let mut g = grant();
    g.hold_id = "hold_0".into();
    let id = forwarded_chat(&mut host, QUICKSTART, g);
    host.response_headers(id, &[(":status", "500")], true)
        .unwrap();
    host.done(id).unwrap();
    assert_eq!(counter(&host, "opsgate.settle.backpressure"), 0);
    for _ in 0..2 {
        chat(&mut host, SERVICE_KEY, QUICKSTART);
    }
    assert_eq!(counter(&host, "opsgate.settle.backpressure"), 2);
}
