//! Requests are validated before anything is asked of the control plane, and the request a
//! provider receives is shaped by the gateway: effective power level, no extension fields,
//! no client cookies or credentials, no stale content-length.

mod common;
use common::*;
use opsgate_core::plan::{PowerLevel, TaskType};
use opsgate_wasm_tests::{Action, StreamKind};

const CHAT: &str = "/api/v1/llm/chat/completions";

#[test]
fn invalid_fields_are_400_naming_the_field_without_a_callout() {
    let mut host = gateway();
    let cases = [
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"power_level":"turbo"}"#,
            Some("power_level"),
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"power_level":3}"#,
            Some("power_level"),
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"task_type":"dance"}"#,
            Some("task_type"),
        ),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"privacy_required":"yes"}"#,
            Some("privacy_required"),
        ),
        (r#"{"model":"gpt-4o-mini"}"#, Some("messages")),
        (r#"{"model":"gpt-4o-mini","messages":[]}"#, Some("messages")),
        (
            r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-5}"#,
            Some("max_tokens"),
        ),
        (r#"{"messages":[{"role":"user","content":"hi"}"#, None),
        ("not json at all", None),
        ("[1,2,3]", None),
    ];
    for (body, param) in cases {
        let (id, action) = chat(&mut host, SERVICE_KEY, body);
        assert_eq!(action, Action::Pause, "{body}");
        let (_, env) = expect_reply(&host, id, 400, "bad_request");
        assert_eq!(env["error"]["type"], "invalid_request_error", "{body}");
        match param {
            Some(p) => assert_eq!(env["error"]["param"], p, "{body}"),
            None => assert!(env["error"]["param"].is_null(), "{body}"),
        }
        assert_eq!(pending_to(&host, AUTHORIZE), 0, "no callout for {body}");
        host.done(id).unwrap();
    }
}

#[test]
fn invalid_power_level_header_is_400_naming_the_header() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let (id, _) = send(
        &mut host,
        CHAT,
        &[("authorization", &auth), ("x-power-level", "ludicrous")],
        Some(QUICKSTART),
    );
    let (_, env) = expect_reply(&host, id, 400, "bad_request");
    assert_eq!(env["error"]["param"], "X-Power-Level");
    assert_eq!(pending_to(&host, AUTHORIZE), 0);
}

#[test]
fn body_larger_than_max_body_bytes_is_413() {
    let mut host = gateway_with(&config_with(r#""max_body_bytes":2048"#));
    let auth = bearer(SERVICE_KEY);
    let big = format!(
        r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(4096)
    );
    let (id, _) = send(&mut host, CHAT, &[("authorization", &auth)], Some(&big));
    let (_, env) = expect_reply(&host, id, 413, "payload_too_large");
    assert!(env["error"]["message"].as_str().unwrap().contains("2048"));
    assert_eq!(pending_to(&host, AUTHORIZE), 0);

    // The same limit applies when the body arrives in pieces that only add up past it.
    let id = host.new_stream().unwrap();
    host.request_headers(
        id,
        &[
            (":method", "POST"),
            (":path", CHAT),
            (":authority", "gateway"),
            ("authorization", &auth),
        ],
        false,
    )
    .unwrap();
    let (a, b) = big.as_bytes().split_at(1500);
    assert_eq!(host.request_body(id, a, false).unwrap(), Action::Pause);
    assert!(host.local_reply(id).is_none(), "1500 bytes are still fine");
    host.request_body(id, b, true).unwrap();
    expect_reply(&host, id, 413, "payload_too_large");
    assert_eq!(pending_to(&host, AUTHORIZE), 0);

    // A body under the limit goes through.
    let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    assert!(host.local_reply(id).is_none());
    authorize_call(&mut host);
}

#[test]
fn wrong_method_is_405() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let (id, action) = send_headers_only(&mut host, "GET", CHAT, &[("authorization", &auth)]);
    assert_eq!(action, Action::Pause);
    let (_, env) = expect_reply(&host, id, 405, "method_not_allowed");
    assert!(env["error"]["message"].as_str().unwrap().contains("POST"));
    assert_eq!(host.pending_calls().len(), 0);
}

#[test]
fn post_without_a_body_is_400() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let (id, action) = send_headers_only(&mut host, "POST", CHAT, &[("authorization", &auth)]);
    assert_eq!(action, Action::Pause);
    expect_reply(&host, id, 400, "bad_request");
    assert_eq!(host.pending_calls().len(), 0);

    // An empty body delivered as a data frame is refused the same way.
    let (id, _) = chat(&mut host, SERVICE_KEY, "");
    expect_reply(&host, id, 400, "bad_request");
    assert_eq!(host.pending_calls().len(), 0);
}

#[test]
fn body_power_level_wins_and_the_forwarded_request_is_clean() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"power_level":"precision","task_type":"code","privacy_required":false,"temperature":0.3}"#;
    let (id, _) = send(
        &mut host,
        CHAT,
        &[
            ("authorization", &auth),
            ("x-power-level", "eco"),
            ("cookie", "session_token=abc; theme=dark"),
            ("content-length", &body.len().to_string()),
            ("x-request-id", "req-42"),
            ("accept-encoding", "gzip, deflate, br"),
        ],
        Some(body),
    );
    let call = authorize_call(&mut host);
    let req = authorize_request(&call);
    assert_eq!(
        req.power_level,
        PowerLevel::Precision,
        "the body field wins"
    );
    assert_eq!(req.task_type, TaskType::Code);
    assert!(!req.privacy_required);
    assert_eq!(req.model.as_deref(), Some("gpt-4o-mini"));

    // The control plane prices the call at the level it was asked for.
    let mut g = grant();
    g.rate.power_level = req.power_level;
    allow(&mut host, &call, g);
    assert_eq!(host.resumed(id, StreamKind::Request), 1);

    assert_eq!(
        host.header(id, "x-power-level").as_deref(),
        Some("precision"),
        "the provider sees the effective level, not the client's header"
    );
    let sent = forwarded_json(&host, id);
    for f in ["power_level", "task_type", "privacy_required"] {
        assert!(sent.get(f).is_none(), "{f} leaked upstream: {sent}");
    }
    assert_eq!(sent["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(sent["temperature"], 0.3);
    assert_eq!(sent["messages"][0]["content"], "hi");
    assert!(
        host.header(id, "cookie").is_none(),
        "cookies stay at the edge"
    );
    assert_eq!(
        host.header(id, "authorization").as_deref(),
        Some("Bearer platform-key-123"),
        "the client's key is replaced by the grant's"
    );
    let all: Vec<_> = host.request_headers_of(id);
    assert_eq!(
        all.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .count(),
        1
    );
    assert!(all.iter().all(|(_, v)| !v.contains(SERVICE_KEY)));
    assert!(
        host.header(id, "content-length").is_none(),
        "the body changed size; content-length must go"
    );
    // On the platform's key only the allow-list passes: the client's `x-*` stay here (the
    // request id the provider sees is the filter's own).
    assert_eq!(
        host.header(id, "x-request-id"),
        req.request_id,
        "the client's x-request-id is replaced by the call's"
    );
    // The filter reads usage from the provider's body: it must come back uncompressed.
    assert!(
        host.header(id, "accept-encoding").is_none(),
        "a compressed response could not be metered"
    );
}

#[test]
fn power_level_header_is_used_when_the_body_has_none() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let (id, _) = send(
        &mut host,
        CHAT,
        &[("authorization", &auth), ("x-power-level", "ECO")],
        Some(QUICKSTART),
    );
    let call = authorize_call(&mut host);
    let req = authorize_request(&call);
    assert_eq!(req.power_level, PowerLevel::Eco);
    let mut g = grant();
    g.rate.power_level = req.power_level;
    allow(&mut host, &call, g);
    assert_eq!(host.header(id, "x-power-level").as_deref(), Some("eco"));

    // And balanced by default, which also goes upstream.
    let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    let call = authorize_call(&mut host);
    assert_eq!(authorize_request(&call).power_level, PowerLevel::Balanced);
    allow(&mut host, &call, grant());
    assert_eq!(
        host.header(id, "x-power-level").as_deref(),
        Some("balanced")
    );
}

#[test]
fn max_tokens_and_model_come_from_the_grant() {
    let mut host = gateway();
    let body =
        r#"{"model":"auto","messages":[{"role":"user","content":"hi"}],"max_tokens":100000}"#;
    let (id, _) = chat(&mut host, SERVICE_KEY, body);
    let call = authorize_call(&mut host);
    let req = authorize_request(&call);
    assert_eq!(req.model, None, "auto is left to the gateway");
    assert_eq!(req.max_tokens, Some(100_000));
    assert_eq!(req.prompt_bytes, body.len() as u64);
    allow(&mut host, &call, grant());
    let sent = forwarded_json(&host, id);
    assert_eq!(sent["max_tokens"], 512, "reduced to what the hold covers");
    assert_eq!(sent["model"], "gpt-4o-mini-2024-07-18");
}

#[test]
fn a_body_ended_by_trailers_is_still_authorized() {
    // HTTP/2 lets a client end the body with trailers instead of an end-of-stream data
    // frame: the call must not slip through unauthorized.
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let id = host.new_stream().unwrap();
    host.request_headers(
        id,
        &[
            (":method", "POST"),
            (":path", CHAT),
            (":authority", "gateway"),
            ("authorization", &auth),
        ],
        false,
    )
    .unwrap();
    host.request_body(id, QUICKSTART.as_bytes(), false).unwrap();
    let a = host.request_trailers(id, &[("x-trailer", "1")]).unwrap();
    assert_eq!(a, Action::Pause, "held until the control plane answers");
    assert!(host.forwarded_request_body(id).is_empty());
    assert_eq!(host.resumed(id, StreamKind::Request), 0);
    let call = authorize_call(&mut host);
    assert_eq!(
        authorize_request(&call).prompt_bytes,
        QUICKSTART.len() as u64
    );
    allow(&mut host, &call, grant());
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
    assert_eq!(
        host.header(id, "authorization").as_deref(),
        Some("Bearer platform-key-123")
    );
    let sent = forwarded_json(&host, id);
    assert_eq!(sent["model"], "gpt-4o-mini-2024-07-18");
}
