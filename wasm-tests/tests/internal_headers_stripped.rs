//! `x-opsgate-cluster` picks the upstream cluster in Envoy's route table, so only the filter
//! may set it: whatever a client sends under that name is removed from every request.

mod common;
use common::*;
use opsgate_wasm_tests::{Action, StreamKind};

const SPOOF: [(&str, &str); 2] = [
    ("x-opsgate-cluster", "provider_openai"),
    ("X-Opsgate-Cluster", "opsgate_control_plane"),
];

#[test]
fn stripped_outside_the_api() {
    let mut host = gateway();
    for path in [
        "/",
        "/healthz",
        "/internal/v1/settle",
        "/v1/chat/completions",
    ] {
        let (id, action) = send_headers_only(&mut host, "POST", path, &SPOOF);
        assert_eq!(action, Action::Continue, "{path}");
        assert!(
            host.header(id, "x-opsgate-cluster").is_none(),
            "{path}: {:?}",
            host.request_headers_of(id)
        );
    }
}

#[test]
fn stripped_from_non_metered_calls() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    for path in [
        "/api/v1/llm/credits",
        "/api/v1/llm/models",
        "/api/v1/llm/usage",
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        headers.extend_from_slice(&SPOOF);
        let (id, action) = send_headers_only(&mut host, "GET", path, &headers);
        assert_eq!(action, Action::Continue, "{path}");
        assert!(host.header(id, "x-opsgate-cluster").is_none(), "{path}");
    }
    // Also from CORS preflights, which pass without credentials.
    let (id, action) = send_headers_only(&mut host, "OPTIONS", "/api/v1/llm/credits", &SPOOF);
    assert_eq!(action, Action::Continue);
    assert!(host.header(id, "x-opsgate-cluster").is_none());
}

#[test]
fn stripped_from_rejected_calls() {
    let mut host = gateway();
    let (id, _) = send(
        &mut host,
        "/api/v1/llm/chat/completions",
        &SPOOF,
        Some(QUICKSTART),
    );
    expect_reply(&host, id, 401, "invalid_api_key");
    assert!(host.header(id, "x-opsgate-cluster").is_none());
}

#[test]
fn metered_calls_carry_only_the_grants_cluster() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(&SPOOF);
    let (id, _) = send(
        &mut host,
        "/api/v1/llm/chat/completions",
        &headers,
        Some(QUICKSTART),
    );
    // Removed as soon as the headers arrive, before the control plane is asked.
    assert!(host.header(id, "x-opsgate-cluster").is_none());
    let call = authorize_call(&mut host);
    let mut g = grant();
    g.upstream.cluster = "provider_local".into();
    allow(&mut host, &call, g);
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
    let values: Vec<_> = host
        .request_headers_of(id)
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-opsgate-cluster"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, vec!["provider_local".to_string()]);
}
