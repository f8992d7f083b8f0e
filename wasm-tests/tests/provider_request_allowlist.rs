//! Only what the provider needs reaches the provider. On the platform's key: an allow-list of
//! client headers (content type, accept, user agent), and body fields that change the
//! platform's bill or what the provider keeps are refused (400 naming the field, the hold
//! released) or removed. On the caller's own key (BYOK) more passes, never cookies.

mod common;
use common::*;
use opsgate_core::contract::Outcome;
use opsgate_wasm_tests::StreamKind;

const CLIENT_HEADERS: [(&str, &str); 9] = [
    ("openai-organization", "org-client"),
    ("OpenAI-Project", "proj-client"),
    ("openai-beta", "assistants=v2"),
    ("x-stainless-lang", "python"),
    ("x-request-id", "client-chosen"),
    ("cookie", "session_token=abc"),
    ("accept", "application/json"),
    ("user-agent", "OpenAI/Python 1.0"),
    ("accept-encoding", "gzip"),
];

fn call_with(
    host: &mut opsgate_wasm_tests::Host,
    body: &str,
    byok: bool,
) -> opsgate_wasm_tests::StreamId {
    let auth = bearer(SERVICE_KEY);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(&CLIENT_HEADERS);
    let (id, _) = send(host, "/api/v1/llm/chat/completions", &headers, Some(body));
    let call = authorize_call(host);
    let mut g = grant();
    g.byok = byok;
    allow(host, &call, g);
    id
}

#[test]
fn platform_key_calls_carry_only_the_allow_list() {
    let mut host = gateway();
    let id = call_with(&mut host, QUICKSTART, false);
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
    let mut names: Vec<String> = host
        .request_headers_of(id)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !k.starts_with(':'))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "accept",
            "authorization",
            "content-type",
            "user-agent",
            "x-forwarded-proto",
            "x-opsgate-cluster",
            "x-power-level",
            "x-request-id"
        ]
    );
    assert_eq!(
        host.header(id, "authorization").as_deref(),
        Some("Bearer platform-key-123")
    );
}

#[test]
fn one_request_id_names_the_call_on_the_callout_and_the_provider_request() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(&CLIENT_HEADERS);
    let (id, _) = send(
        &mut host,
        "/api/v1/llm/chat/completions",
        &headers,
        Some(QUICKSTART),
    );
    let call = authorize_call(&mut host);
    let hold = authorize_request(&call)
        .request_id
        .expect("the authorize names the call");
    assert!(hold.starts_with("req_"), "{hold}");
    assert_eq!(
        header(&call.headers, "x-request-id"),
        Some(hold.as_str()),
        "the control plane logs the call's id"
    );
    // Envoy's access log reads the request's header: the filter's id replaced the client's.
    assert_eq!(
        host.header(id, "x-request-id").as_deref(),
        Some(hold.as_str())
    );
    allow(&mut host, &call, grant());
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
    assert_eq!(
        host.header(id, "x-request-id").as_deref(),
        Some(hold.as_str()),
        "the provider sees the same id, never the client's"
    );
    // Envoy's access log reads the client's path from the stream's filter state: the
    // request's own `:path` is now the provider's.
    assert_eq!(
        host.header(id, ":path").as_deref(),
        Some("/v1/chat/completions")
    );
    assert_eq!(
        host.stream_property(id, &["opsgate_path"]).as_deref(),
        Some(&b"/api/v1/llm/chat/completions"[..])
    );
}

#[test]
fn byok_calls_pass_the_clients_headers_but_never_cookies() {
    let mut host = gateway();
    let id = call_with(&mut host, QUICKSTART, true);
    assert_eq!(
        host.header(id, "openai-organization").as_deref(),
        Some("org-client")
    );
    assert_eq!(
        host.header(id, "x-stainless-lang").as_deref(),
        Some("python")
    );
    assert!(host.header(id, "cookie").is_none());
    assert!(host.header(id, "accept-encoding").is_none());
    assert_eq!(
        host.header(id, "authorization").as_deref(),
        Some("Bearer platform-key-123")
    );
}

#[test]
fn platform_key_calls_refuse_fields_that_change_the_bill_and_release_the_hold() {
    let mut host = gateway();
    for (field, value) in [
        ("service_tier", r#""priority""#),
        ("store", "true"),
        ("prediction", r#"{"type":"content","content":"x"}"#),
        ("web_search_options", "{}"),
        ("modalities", r#"["text","audio"]"#),
    ] {
        let body = format!(
            r#"{{"model":"gpt-4o-mini","messages":[{{"role":"user","content":"hi"}}],"{field}":{value}}}"#
        );
        let id = call_with(&mut host, &body, false);
        let (_, env) = expect_reply(&host, id, 400, "bad_request");
        assert_eq!(env["error"]["param"], field);
        host.done(id).unwrap();
        let released = flush_settlements(&mut host);
        assert_eq!(released.len(), 1, "{field}");
        assert_eq!(released[0].outcome, Outcome::Failed, "{field}");
    }
}

#[test]
fn platform_key_calls_drop_what_the_provider_would_keep_and_byok_keeps_it() {
    let mut host = gateway();
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"store":false,"metadata":{"k":"v"},"service_tier":"auto"}"#;
    let id = call_with(&mut host, body, false);
    let sent = forwarded_json(&host, id);
    assert!(
        sent.get("store").is_none() && sent.get("metadata").is_none(),
        "{sent}"
    );
    assert_eq!(sent["service_tier"], "auto");

    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"store":true,"metadata":{"k":"v"},"service_tier":"priority"}"#;
    let id = call_with(&mut host, body, true);
    let sent = forwarded_json(&host, id);
    assert_eq!(sent["store"], true);
    assert_eq!(sent["service_tier"], "priority");
}
