//! The guide's quick-start call through the filter: service key checked locally, one
//! authorize callout, the request rewritten for the provider, the response metered.

mod common;
use common::*;
use opsgate_core::contract::{AuthorizeRequest, Principal, SettleBatch};
use opsgate_wasm_tests::Action;

const PROVIDER_REPLY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}"#;

#[test]
fn quick_start_is_authorized_forwarded_and_metered() {
    let mut host = gateway();
    let (id, action) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    assert_eq!(action, Action::Pause, "waits for the control plane");

    let call = authorize_call(&mut host);
    assert_eq!(
        header(&call.headers, "authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let req: AuthorizeRequest = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(
        req.principal,
        Principal::Service {
            user_id: "loopnet-service".into()
        }
    );
    assert_eq!(req.model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(req.prompt_bytes, QUICKSTART.len() as u64);

    allow(&mut host, &call, grant());
    assert!(host.local_reply(id).is_none());
    assert_eq!(host.resumed(id, opsgate_wasm_tests::StreamKind::Request), 1);

    // What the provider receives.
    assert_eq!(
        host.header(id, ":path").as_deref(),
        Some("/v1/chat/completions")
    );
    assert_eq!(
        host.header(id, ":authority").as_deref(),
        Some("api.openai.com")
    );
    assert_eq!(
        host.header(id, "authorization").as_deref(),
        Some("Bearer platform-key-123")
    );
    assert_eq!(
        host.header(id, "x-opsgate-cluster").as_deref(),
        Some("provider_openai")
    );
    assert_eq!(
        host.header(id, "x-power-level").as_deref(),
        Some("balanced")
    );
    let sent: serde_json::Value = serde_json::from_slice(&host.request_body_of(id)).unwrap();
    assert_eq!(sent["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(sent["max_tokens"], 512);

    // The provider answers; headers wait for the body, which tells the cost.
    let a = host
        .response_headers(
            id,
            &[(":status", "200"), ("content-type", "application/json")],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Pause);
    let a = host
        .response_body(id, PROVIDER_REPLY.as_bytes(), true)
        .unwrap();
    assert_eq!(a, Action::Continue);
    // 1000 * 0.15 + 500 * 0.60 = 450 mc, capped by the 400 mc hold.
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("0.400")
    );
    assert_eq!(
        host.response_header(id, "x-credits-remaining").as_deref(),
        Some("9999.600")
    );
    assert_grant_headers(&host, id);
    host.done(id).unwrap();

    // The settlement leaves on the next tick, batched.
    host.advance(std::time::Duration::from_millis(250));
    host.tick().unwrap();
    let settle = host
        .take_call(|c| header(&c.headers, ":path") == Some("/internal/v1/settle"))
        .expect("a settle batch");
    let batch: SettleBatch = serde_json::from_slice(&settle.body).unwrap();
    assert_eq!(batch.settlements.len(), 1);
    assert_eq!(batch.settlements[0].hold_id, "hold_1");
    assert_eq!(batch.settlements[0].usage.prompt_tokens, 1000);
}

#[test]
fn a_response_ending_with_trailers_is_metered_like_one_ending_with_its_body() {
    let mut host = gateway();
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    let a = host
        .response_headers(
            id,
            &[(":status", "200"), ("content-type", "application/json")],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Pause);
    let (first, rest) = PROVIDER_REPLY.split_at(40);
    assert_eq!(
        host.response_body(id, first.as_bytes(), false).unwrap(),
        Action::Pause
    );
    assert_eq!(
        host.response_body(id, rest.as_bytes(), false).unwrap(),
        Action::Pause,
        "held until the body is complete"
    );
    // HTTP/2 upstream: the stream ends with trailers, not an end-of-stream data frame.
    let a = host
        .response_trailers(id, &[("x-envoy-upstream-service-time", "12")])
        .unwrap();
    assert_eq!(a, Action::Continue);
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("0.400"),
        "the cost headers are set on the held headers"
    );
    assert_eq!(
        host.response_header(id, "x-credits-remaining").as_deref(),
        Some("9999.600")
    );
    assert_eq!(host.forwarded_response_body(id), PROVIDER_REPLY.as_bytes());
    // Settled at the trailers, from the body's usage (not the bound at on_log).
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    let s = &settled[0];
    assert_eq!(s.outcome, opsgate_core::contract::Outcome::Success);
    assert_eq!(
        (s.usage.prompt_tokens, s.usage.completion_tokens),
        (1000, 500)
    );
    host.done(id).unwrap();
    assert!(flush_settlements(&mut host).is_empty(), "settled once");
}

#[test]
fn provider_account_headers_stay_at_the_gateway() {
    let mut host = gateway();
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    host.response_headers(
        id,
        &[
            (":status", "200"),
            ("content-type", "application/json"),
            ("openai-organization", "org-platform-secret"),
            ("openai-project", "proj_platform"),
            ("set-cookie", "__cf_bm=provider; Path=/"),
            ("x-request-id", "req_123"),
        ],
        false,
    )
    .unwrap();
    host.response_body(id, PROVIDER_REPLY.as_bytes(), true)
        .unwrap();
    for h in ["openai-organization", "openai-project", "set-cookie"] {
        assert!(host.response_header(id, h).is_none(), "{h} leaked");
    }
    assert_eq!(
        host.response_header(id, "x-provider-request-id").as_deref(),
        Some("req_123"),
        "the provider's id, under its own name"
    );
    assert_eq!(
        host.response_header(id, "x-request-id").as_deref(),
        Some(grant().hold_id.as_str()),
        "the client gets the call's id, the one every log names"
    );
}
