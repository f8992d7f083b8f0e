//! Hostile header bytes in every position the filter sees — request headers, response headers,
//! trailers — never trap the VM: a header the filter reads that is not UTF-8 is a 400/401
//! envelope, one it does not read is ignored, and the next good request is still answered.
//! (Envoy passes obs-text bytes 0x80–0xFF through; the proxy-wasm SDK's string getters
//! `unwrap()` them.)

mod common;
use common::*;
use opsgate_core::contract::Outcome;
use opsgate_wasm_tests::{Action, HeaderMap, Host, StreamId, StreamKind};

/// Values that are not UTF-8 (or carry control bytes Envoy would still hand over).
const BAD_VALUES: [&[u8]; 5] = [
    b"caf\xe9",
    b"\xff\xfe\xfd",
    b"\xc3\x28",
    b"Bearer sk-loopnet-service-key-2025\xe9",
    b"ok\x01\x7f\x00bad",
];

const PATHS: [&str; 4] = [
    "/api/v1/llm/chat/completions",
    "/api/v1/llm/models",
    "/api/v1/llm/credits",
    "/",
];

/// Every request header the filter reads, and some it does not.
const NAMES: [&str; 14] = [
    ":method",
    ":authority",
    ":scheme",
    "authorization",
    "cookie",
    "x-power-level",
    "origin",
    "sec-fetch-site",
    "content-length",
    "content-type",
    "user-agent",
    "x-anything",
    "openai-organization",
    "x-opsgate-cluster",
];

fn base(path: &str) -> HeaderMap {
    HeaderMap::from_pairs(&[
        (":method", "POST"),
        (":path", path),
        (":authority", "gateway"),
        (":scheme", "http"),
        ("authorization", &bearer(SERVICE_KEY)),
        ("content-type", "application/json"),
    ])
}

/// Whatever the filter did with the stream, it is a legal outcome: a JSON envelope reply
/// (never echoing the bad bytes), a pass, or a pending authorize (answered here).
fn settle_outcome(host: &mut Host, id: StreamId, what: &str) -> Option<(u32, serde_json::Value)> {
    assert!(
        host.failed().is_none(),
        "{what}: the VM trapped: {:?}",
        host.failed()
    );
    if let Some(reply) = host.local_reply(id) {
        let env = envelope(&reply.body);
        assert!(reply.status >= 400, "{what}: {}", reply.status);
        for field in ["message", "type", "code"] {
            assert!(env["error"][field].is_string(), "{what}: {env}");
        }
        assert!(!reply.body_str().contains("caf"), "{what}: bytes echoed");
        assert_eq!(host.resumed(id, StreamKind::Request), 0, "{what}");
        return Some((reply.status, env));
    }
    if let Some(call) = host.take_call(|c| header(&c.headers, ":path") == Some(AUTHORIZE)) {
        allow(host, &call, grant());
    }
    None
}

#[test]
fn non_utf8_request_headers_are_refused_or_ignored_never_a_trap() {
    let mut host = gateway();
    for path in PATHS {
        for name in NAMES {
            for value in BAD_VALUES {
                let what = format!("{path} {name}={value:?}");
                let mut headers = base(path);
                headers.set(name.as_bytes(), value);
                let id = host.new_stream().unwrap();
                let a = host.request_headers_map(id, headers, false).unwrap();
                if host.local_reply(id).is_none() && a == Action::Pause {
                    host.request_body(id, QUICKSTART.as_bytes(), true).unwrap();
                }
                let outcome = settle_outcome(&mut host, id, &what);
                let under_api = path != "/";
                if std::str::from_utf8(value).is_ok() {
                    // Control bytes in valid UTF-8: judged like any other text.
                    host.done(id).unwrap();
                    continue;
                }
                let param = if name == "x-power-level" {
                    "X-Power-Level"
                } else {
                    name
                };
                match (name, outcome) {
                    // Not ours: passed untouched, whatever it holds.
                    (_, None) if !under_api => {}
                    ("authorization" | "cookie", Some((status, env))) if under_api => {
                        assert_eq!(status, 401, "{what}");
                        assert_eq!(env["error"]["code"], "invalid_api_key", "{what}");
                    }
                    (":method" | "x-power-level" | "origin", Some((status, env))) if under_api => {
                        assert_eq!(status, 400, "{what}");
                        assert_eq!(env["error"]["param"], param, "{what}");
                    }
                    // Headers the filter does not read (for this credential) are ignored.
                    (
                        ":authority"
                        | ":scheme"
                        | "sec-fetch-site"
                        | "content-length"
                        | "content-type"
                        | "user-agent"
                        | "x-anything"
                        | "openai-organization"
                        | "x-opsgate-cluster",
                        None,
                    ) => {}
                    (_, outcome) => panic!("{what}: unexpected outcome {outcome:?}"),
                }
                host.done(id).unwrap();
            }
        }
    }
    // Still serving: a good request goes through, and its settlement too.
    while !flush_settlements(&mut host).is_empty() {}
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    provider_answers(&mut host, id, 5, 7);
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("0.005")
    );
    host.done(id).unwrap();
    assert_eq!(flush_settlements(&mut host)[0].outcome, Outcome::Success);
}

#[test]
fn a_non_utf8_path_under_the_prefix_is_a_400_and_outside_it_passes() {
    let mut host = gateway();
    let id = host.new_stream().unwrap();
    let mut h = base("/api/v1/llm/chat/completions");
    h.set(b":path", b"/api/v1/llm/chat/\xe9completions");
    host.request_headers_map(id, h, true).unwrap();
    let (_, env) = expect_reply(&host, id, 400, "bad_request");
    assert_eq!(env["error"]["param"], ":path");

    let id = host.new_stream().unwrap();
    let mut h = base("/");
    h.set(b":path", b"/static/\xe9.png");
    assert_eq!(
        host.request_headers_map(id, h, true).unwrap(),
        Action::Continue
    );
    assert!(host.failed().is_none());
}

#[test]
fn non_utf8_bytes_never_reach_the_log() {
    let mut host = gateway();
    let secret = b"Bearer uc_0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab\xe9";
    let mut h = base("/api/v1/llm/chat/completions");
    h.set(b"authorization", secret);
    let id = host.new_stream().unwrap();
    host.request_headers_map(id, h, false).unwrap();
    expect_reply(&host, id, 401, "invalid_api_key");
    assert!(
        host.logs().iter().all(|(_, m)| !m.contains("uc_0123")),
        "{:?}",
        host.logs()
    );
}

#[test]
fn non_utf8_response_headers_and_trailers_do_not_trap_and_the_call_is_settled() {
    let mut host = gateway();
    // A JSON response whose provider headers carry junk bytes.
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    let mut h = HeaderMap::from_pairs(&[(":status", "200"), ("content-type", "application/json")]);
    h.add(b"vary", b"\xff");
    h.add(b"openai-organization", b"org-\xe9");
    h.add(b"x-junk", b"\xfe\xfd");
    assert_eq!(
        host.response_headers_map(id, h, false).unwrap(),
        Action::Pause
    );
    host.response_body(
        id,
        br#"{"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
        false,
    )
    .unwrap();
    let mut t = HeaderMap::new();
    t.add(b"x-trailer", b"\xe9\xff");
    host.response_trailers_map(id, t).unwrap();
    assert!(host.response_header(id, "openai-organization").is_none());
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("0.005")
    );
    host.done(id).unwrap();
    assert_eq!(flush_settlements(&mut host)[0].outcome, Outcome::Success);

    // A content-type that is not text: not a stream; a `:status` that is not a number.
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    let mut h = HeaderMap::new();
    h.add(b":status", b"2\xff0");
    h.add(b"content-type", b"text/event-stream\xe9");
    host.response_headers_map(id, h, false).unwrap();
    host.response_body(id, b"data: [DONE]\n\n", true).unwrap();
    host.done(id).unwrap();
    assert!(host.failed().is_none());
    assert_eq!(
        flush_settlements(&mut host).len(),
        1,
        "settled exactly once"
    );

    // Request trailers with junk bytes end a metered body as its last frame would.
    let id = host.new_stream().unwrap();
    host.request_headers_map(id, base("/api/v1/llm/chat/completions"), false)
        .unwrap();
    host.request_body(id, QUICKSTART.as_bytes(), false).unwrap();
    let mut t = HeaderMap::new();
    t.add(b"x-trailer", b"\xe9");
    host.request_trailers_map(id, t).unwrap();
    assert!(host.failed().is_none());
    let call = authorize_call(&mut host);
    allow(&mut host, &call, grant());
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
}
