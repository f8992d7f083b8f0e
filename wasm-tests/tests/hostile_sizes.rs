//! Absurd header counts and sizes, and truncated or oversized bodies: answered with an
//! envelope or passed, never a trap.

mod common;
use common::*;
use opsgate_wasm_tests::{Action, HeaderMap, StreamKind};

#[test]
fn ten_thousand_headers_are_handled_and_stripped_before_the_provider() {
    let mut host = gateway();
    let mut h = HeaderMap::from_pairs(&[
        (":method", "POST"),
        (":path", "/api/v1/llm/chat/completions"),
        (":authority", "gateway"),
        ("authorization", &bearer(SERVICE_KEY)),
        ("content-type", "application/json"),
    ]);
    for i in 0..10_000 {
        h.add(format!("x-h{i}").as_bytes(), b"v\xff");
    }
    let id = host.new_stream().unwrap();
    host.request_headers_map(id, h, false).unwrap();
    host.request_body(id, QUICKSTART.as_bytes(), true).unwrap();
    let call = authorize_call(&mut host);
    allow(&mut host, &call, grant());
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
    let names: Vec<String> = host
        .request_headers_of(id)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        !names.iter().any(|k| k.starts_with("x-h")),
        "{}",
        names.len()
    );
}

#[test]
fn a_megabyte_header_value_is_refused_where_read_and_ignored_elsewhere() {
    let mut host = gateway();
    let big = vec![b'a'; 1 << 20];
    let id = host.new_stream().unwrap();
    let mut h = HeaderMap::from_pairs(&[
        (":method", "POST"),
        (":path", "/api/v1/llm/chat/completions"),
        (":authority", "gateway"),
        ("authorization", &bearer(SERVICE_KEY)),
    ]);
    h.add(b"x-power-level", &big);
    host.request_headers_map(id, h, false).unwrap();
    host.request_body(id, QUICKSTART.as_bytes(), true).unwrap();
    let (_, env) = expect_reply(&host, id, 400, "bad_request");
    assert_eq!(env["error"]["param"], "X-Power-Level");

    let id = host.new_stream().unwrap();
    let mut h = HeaderMap::from_pairs(&[
        (":method", "POST"),
        (":path", "/api/v1/llm/chat/completions"),
        (":authority", "gateway"),
    ]);
    h.add(b"authorization", &big);
    host.request_headers_map(id, h, false).unwrap();
    expect_reply(&host, id, 401, "invalid_api_key");
    assert!(host.failed().is_none());
}

#[test]
fn truncated_and_garbage_bodies_are_400s() {
    let mut host = gateway();
    for body in [
        &br#"{"model":"gpt-4o-mini","messages":[{"role":"us"#[..],
        b"\xff\xfe\xfd",
        b"\x00",
        b"[]",
        "[".repeat(100_000).as_bytes(),
        format!("{}1", "{\"a\":".repeat(50_000)).as_bytes(),
        b"{\"messages\":[{\"role\":\"user\",\"content\":\"\xe9\"}]}",
    ] {
        let id = open_chat(&mut host, &[]);
        host.request_body(id, body, true).unwrap();
        expect_reply(&host, id, 400, "bad_request");
        host.done(id).unwrap();
    }
}

#[test]
fn oversized_bodies_are_413s_announced_or_streamed() {
    let mut host = gateway_with(&config_with(r#""max_body_bytes":4096"#));
    // Announced by content-length: refused before a byte is read.
    let (id, a) = send_headers_only(
        &mut host,
        "POST",
        "/api/v1/llm/chat/completions",
        &[
            ("authorization", &bearer(SERVICE_KEY)),
            ("content-length", "999999999"),
        ],
    );
    assert_eq!(a, Action::Pause);
    expect_reply(&host, id, 413, "payload_too_large");
    // Streamed in chunks past the bound.
    let id = open_chat(&mut host, &[]);
    let chunk = vec![b' '; 1024];
    for _ in 0..5 {
        if host.local_reply(id).is_some() {
            break;
        }
        host.request_body(id, &chunk, false).unwrap();
    }
    expect_reply(&host, id, 413, "payload_too_large");
    assert!(host.failed().is_none());
}
