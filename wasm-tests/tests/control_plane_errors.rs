//! Routes the control plane answers (`/models`, `/credits`, `/usage`, `/byok/keys`, sessions)
//! answer in the error envelope even when the control plane does not: Envoy's plain-text
//! `upstream connect error…` (503) and `upstream request timeout` (504) are replaced, and
//! bodies past `max_body_bytes` are a 413 envelope at the edge.

mod common;
use common::*;
use opsgate_wasm_tests::{Action, StreamId};

fn get(host: &mut opsgate_wasm_tests::Host, path: &str) -> StreamId {
    let (id, a) = send_headers_only(
        host,
        "GET",
        path,
        &[("authorization", &bearer(SERVICE_KEY))],
    );
    assert_eq!(a, Action::Continue);
    id
}

#[test]
fn envoys_plain_text_errors_become_envelopes() {
    let mut host = gateway();
    for (status, text, code) in [
        ("503", "upstream connect error or disconnect/reset before headers. reset reason: connection refused", "service_unavailable"),
        ("504", "upstream request timeout", "timeout"),
        ("502", "upstream connect error", "upstream_error"),
        ("413", "Failed to buffer the request body: length limit exceeded", "payload_too_large"),
    ] {
        let id = get(&mut host, "/api/v1/llm/credits");
        let a = host
            .response_headers(id, &[(":status", status), ("content-type", "text/plain"), ("content-length", "20")], false)
            .unwrap();
        assert_eq!(a, Action::Pause, "{status}");
        host.response_body(id, text.as_bytes(), true).unwrap();
        let env = envelope(&host.forwarded_response_body(id));
        assert_eq!(env["error"]["code"], code, "{env}");
        assert_eq!(host.response_header(id, ":status").as_deref(), Some(status));
        assert_eq!(host.response_header(id, "content-type").as_deref(), Some("application/json"));
        assert!(host.response_header(id, "content-length").is_none());
        host.done(id).unwrap();
    }
}

#[test]
fn the_control_planes_own_json_passes_untouched() {
    let mut host = gateway();
    let id = get(&mut host, "/api/v1/llm/models");
    let body = br#"{"error":{"message":"no","type":"invalid_request_error","code":"not_found","param":null}}"#;
    let a = host
        .response_headers(
            id,
            &[(":status", "404"), ("content-type", "application/json")],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Continue);
    host.response_body(id, body, true).unwrap();
    assert_eq!(host.forwarded_response_body(id), body);
    // Success bodies too.
    let id = get(&mut host, "/api/v1/llm/models");
    let a = host
        .response_headers(
            id,
            &[(":status", "200"), ("content-type", "text/plain")],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Continue);
}

#[test]
fn trailers_end_a_replaced_body_too() {
    let mut host = gateway();
    let id = get(&mut host, "/api/v1/llm/usage");
    host.response_headers(
        id,
        &[(":status", "503"), ("content-type", "text/plain")],
        false,
    )
    .unwrap();
    host.response_body(id, b"no healthy upstream", false)
        .unwrap();
    host.response_trailers(id, &[("x-t", "1")]).unwrap();
    let env = envelope(&host.forwarded_response_body(id));
    assert_eq!(env["error"]["code"], "service_unavailable");
}

#[test]
fn oversized_bodies_to_the_control_plane_are_413_envelopes() {
    let mut host = gateway_with(&config_with(r#""max_body_bytes":2048"#));
    let (id, _) = send_headers_only(
        &mut host,
        "POST",
        "/api/v1/llm/byok/keys",
        &[
            ("authorization", &bearer(SERVICE_KEY)),
            ("content-length", "41943040"),
        ],
    );
    expect_reply(&host, id, 413, "payload_too_large");

    // Streamed without a length: refused once past the bound.
    let id = host.new_stream().unwrap();
    host.request_headers(
        id,
        &[
            (":method", "POST"),
            (":path", "/api/v1/llm/byok/keys"),
            (":authority", "gateway"),
            ("authorization", &bearer(SERVICE_KEY)),
        ],
        false,
    )
    .unwrap();
    assert_eq!(
        host.request_body(id, &[b'x'; 1500], false).unwrap(),
        Action::Continue
    );
    host.request_body(id, &[b'x'; 1500], false).unwrap();
    let reply = host.local_reply(id).expect("a 413");
    assert_eq!(reply.status, 413);
    assert_eq!(envelope(&reply.body)["error"]["code"], "payload_too_large");
}
