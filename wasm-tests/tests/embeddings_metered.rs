//! Embeddings are metered by input tokens: the authorize callout asks for the inputs' token
//! bound (their UTF-8 bytes, one per token id) and no completion, the request goes to the
//! grant's `/embeddings` with only the embeddings API's fields on the platform's key, and the
//! cost headers and the settlement count the `usage.prompt_tokens` the provider reports (the
//! bound held for when it reports none). Malformed input is refused before any callout.

mod common;
use common::*;
use opsgate_core::contract::{Endpoint, Grant, Outcome};
use opsgate_core::plan::PowerLevel;
use opsgate_wasm_tests::{Action, Host, StreamId, StreamKind};

const EMBEDDINGS: &str = "/api/v1/llm/embeddings";
/// text-embedding-3-large: $0.13 per 1M input tokens.
const INPUT_PER_MILLION_MC: i64 = 130_000;
/// Two inputs of 5,000 bytes each: a bound of 10,000 input tokens, held at 1,300 mc.
const WORDS: usize = 1_000;
const BOUND: u64 = 10_000;
const HOLD_MC: i64 = 1_300;

fn text() -> String {
    "word ".repeat(WORDS)
}

fn request() -> String {
    format!(
        r#"{{"model":"text-embedding-3-large","input":["{t}","{t}"],"encoding_format":"base64","dimensions":256,"user":"u-42","power_level":"balanced","task_type":"rag","service_tier":"priority","unknown_field":{{"a":1}}}}"#,
        t = text()
    )
}

fn embed_grant() -> Grant {
    let mut g = grant();
    g.hold_id = "hold_emb".into();
    g.model = "text-embedding-3-large".into();
    g.upstream.path = "/v1/embeddings".into();
    g.upstream.model = "text-embedding-3-large-2024".into();
    g.upstream.takes_temperature = false;
    g.max_tokens = None;
    g.rate.price.input_per_million = INPUT_PER_MILLION_MC;
    g.rate.price.output_per_million = 0;
    g.hold_mc = MilliCredits(HOLD_MC);
    g.balance_mc = MilliCredits(1_000_000);
    g
}

fn embed_call(host: &mut Host, body: &str, grant: Grant) -> StreamId {
    let auth = bearer(SERVICE_KEY);
    let (id, action) = send(host, EMBEDDINGS, &[("authorization", &auth)], Some(body));
    assert_eq!(action, Action::Pause);
    assert!(host.local_reply(id).is_none());
    let call = authorize_call(host);
    let req = authorize_request(&call);
    assert_eq!(req.endpoint, Endpoint::Embeddings);
    assert_eq!(req.model.as_deref(), Some("text-embedding-3-large"));
    assert_eq!(req.power_level, PowerLevel::Balanced);
    assert_eq!(req.prompt_bytes, BOUND, "the inputs' bytes, not the body's");
    assert!((body.len() as u64) > BOUND);
    assert_eq!(
        (req.max_tokens, req.images, req.prompt_images),
        (None, 0, 0)
    );
    assert!(!req.stream);
    allow(host, &call, grant);
    assert_eq!(host.resumed(id, StreamKind::Request), 1, "forwarded once");
    id
}

/// The provider's answer: base64 vectors, its own model id, `prompt_tokens` input tokens.
fn answer(prompt_tokens: u64) -> String {
    format!(
        r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":"AACAPwAAAEA="}},{{"object":"embedding","index":1,"embedding":"AABAQAAAgEA="}}],"model":"text-embedding-3-large-2024","usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens}}}}}"#
    )
}

fn provider_sends(host: &mut Host, id: StreamId, body: &str) {
    let len = body.len().to_string();
    let a = host
        .response_headers(
            id,
            &[
                (":status", "200"),
                ("content-type", "application/json"),
                ("content-length", &len),
            ],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Pause, "held until the body tells the cost");
    let a = host.response_body(id, body.as_bytes(), true).unwrap();
    assert_eq!(a, Action::Continue);
}

#[test]
fn embeddings_are_forwarded_and_charged_their_input_tokens() {
    let mut host = gateway();
    let id = embed_call(&mut host, &request(), embed_grant());

    assert_eq!(host.header(id, ":path").as_deref(), Some("/v1/embeddings"));
    assert_eq!(
        host.header(id, ":authority").as_deref(),
        Some("api.openai.com")
    );
    assert_eq!(
        host.header(id, "x-opsgate-cluster").as_deref(),
        Some("provider_openai")
    );
    assert_eq!(
        host.header(id, "authorization").as_deref(),
        Some("Bearer platform-key-123")
    );
    // On the platform's key only the embeddings API's own fields reach the provider.
    let sent = forwarded_json(&host, id);
    let mut fields: Vec<&str> = sent
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["dimensions", "encoding_format", "input", "model", "user"]
    );
    assert_eq!(sent["model"], "text-embedding-3-large-2024");
    assert_eq!(sent["input"][1], text());
    assert_eq!(sent["encoding_format"], "base64");
    assert_eq!(sent["dimensions"], 256);

    // 2,000 input tokens at 130,000 mc per million: 260 mc.
    provider_sends(&mut host, id, &answer(2_000));
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("0.260")
    );
    assert_eq!(
        host.response_header(id, "x-credits-remaining").as_deref(),
        Some("1001.040"),
        "balance + released hold - cost"
    );
    for (name, value) in [
        ("x-provider-used", "openai"),
        ("x-model-used", "text-embedding-3-large"),
        ("x-ratelimit-limit", "10000"),
        ("x-ratelimit-remaining", "9850"),
        ("x-ratelimit-reset", "1733097600"),
        ("x-ratelimit-limit-day", "334"),
        ("x-ratelimit-remaining-day", "300"),
    ] {
        assert_eq!(
            host.response_header(id, name).as_deref(),
            Some(value),
            "{name}"
        );
    }
    assert!(
        host.response_header(id, "content-length").is_none(),
        "the renamed body's length changed"
    );
    // The client sees the catalogue id, and the vectors untouched.
    let out: serde_json::Value = serde_json::from_slice(&host.forwarded_response_body(id)).unwrap();
    assert_eq!(out["model"], "text-embedding-3-large");
    assert_eq!(out["data"][0]["embedding"], "AACAPwAAAEA=");
    assert_eq!(out["data"][1]["index"], 1);
    assert_eq!(out["usage"]["prompt_tokens"], 2_000);
    host.done(id).unwrap();

    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    let s = &settled[0];
    assert_eq!(s.hold_id, "hold_emb");
    assert_eq!(s.outcome, Outcome::Success);
    assert_eq!(
        (
            s.usage.prompt_tokens,
            s.usage.completion_tokens,
            s.usage.images
        ),
        (2_000, 0, 0)
    );
}

#[test]
fn token_id_inputs_are_bounded_one_token_per_id() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let body = r#"{"model":"text-embedding-3-small","input":[[100257,9906,1917],[15339]]}"#;
    let (id, _) = send(
        &mut host,
        EMBEDDINGS,
        &[("authorization", &auth)],
        Some(body),
    );
    assert!(host.local_reply(id).is_none());
    let req = authorize_request(&authorize_call(&mut host));
    assert_eq!(req.endpoint, Endpoint::Embeddings);
    assert_eq!(req.prompt_bytes, 4);
}

#[test]
fn malformed_embeddings_requests_are_refused_before_any_callout() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    for (body, param) in [
        (r#"{"model":"text-embedding-3-small"}"#, "input"),
        (r#"{"model":"text-embedding-3-small","input":""}"#, "input"),
        (r#"{"model":"text-embedding-3-small","input":[]}"#, "input"),
        (
            r#"{"model":"text-embedding-3-small","input":["a",1]}"#,
            "input",
        ),
        (
            r#"{"model":"text-embedding-3-small","input":[[1],[]]}"#,
            "input",
        ),
        (
            r#"{"model":"text-embedding-3-small","input":[-1]}"#,
            "input",
        ),
        (
            r#"{"model":"text-embedding-3-small","input":{"a":1}}"#,
            "input",
        ),
        (
            r#"{"model":"text-embedding-3-small","input":"a","stream":true}"#,
            "stream",
        ),
        (
            r#"{"model":"text-embedding-3-small","input":"a","encoding_format":"int8"}"#,
            "encoding_format",
        ),
        (
            r#"{"model":"text-embedding-3-small","input":"a","dimensions":0}"#,
            "dimensions",
        ),
    ] {
        let (id, _) = send(
            &mut host,
            EMBEDDINGS,
            &[("authorization", &auth)],
            Some(body),
        );
        let (_, env) = expect_reply(&host, id, 400, "bad_request");
        assert_eq!(env["error"]["param"], param, "{body}");
    }
    let too_many = format!(r#"{{"input":[{}]}}"#, vec![r#""x""#; 2_049].join(","));
    let (id, _) = send(
        &mut host,
        EMBEDDINGS,
        &[("authorization", &auth)],
        Some(&too_many),
    );
    let (_, env) = expect_reply(&host, id, 400, "bad_request");
    assert_eq!(env["error"]["param"], "input");
    let (id, _) = send(
        &mut host,
        EMBEDDINGS,
        &[("authorization", &auth)],
        Some("not json"),
    );
    expect_reply(&host, id, 400, "bad_request");
    assert_eq!(pending_to(&host, AUTHORIZE), 0);
    // Embeddings are created with POST.
    let (id, _) = send_headers_only(&mut host, "GET", EMBEDDINGS, &[("authorization", &auth)]);
    assert_eq!(host.local_reply(id).map(|r| r.status), Some(405));
}

#[test]
fn an_answer_without_usage_is_charged_the_bound_held_for() {
    let mut host = gateway();
    let id = embed_call(&mut host, &request(), embed_grant());
    let body = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5]}],"model":"text-embedding-3-large-2024"}"#;
    provider_sends(&mut host, id, body);
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("1.300"),
        "the 10,000-token bound, not 0"
    );
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0].outcome, Outcome::Success);
    assert_eq!(settled[0].usage.prompt_tokens, BOUND);
    assert_eq!(settled[0].usage.completion_tokens, 0);
}

#[test]
fn an_answer_that_never_completes_is_charged_the_bound_held_for() {
    let mut host = gateway();
    let id = embed_call(&mut host, &request(), embed_grant());
    host.response_headers(
        id,
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    host.response_body(id, br#"{"object":"list","data":[{"embedding":"#, false)
        .unwrap();
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    let s = &settled[0];
    assert_eq!(s.hold_id, "hold_emb");
    assert_eq!(s.outcome, Outcome::Partial);
    assert_eq!(
        (s.usage.prompt_tokens, s.usage.completion_tokens),
        (BOUND, 0)
    );
}

#[test]
fn the_callers_own_key_passes_their_fields_and_costs_nothing() {
    let mut host = gateway();
    let mut g = embed_grant();
    g.byok = true;
    g.hold_mc = MilliCredits(0);
    g.rate.price.input_per_million = 0;
    g.upstream.api_key = "sk-users-own-openai-key".into();
    let id = embed_call(&mut host, &request(), g);
    assert_eq!(
        host.header(id, "authorization").as_deref(),
        Some("Bearer sk-users-own-openai-key")
    );
    let sent = forwarded_json(&host, id);
    assert_eq!(sent["unknown_field"]["a"], 1);
    assert_eq!(sent["service_tier"], "priority");
    for f in ["power_level", "task_type", "privacy_required"] {
        assert!(sent.get(f).is_none(), "{f} leaked: {sent}");
    }
    provider_sends(&mut host, id, &answer(2_000));
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("0.000")
    );
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled[0].usage.prompt_tokens, 2_000);
}

/// `n` short inputs, floats, the model's own vector size.
fn batch(n: usize) -> String {
    let inputs: Vec<String> = (0..n).map(|i| format!("\"text {i}\"")).collect();
    format!(
        r#"{{"model":"text-embedding-3-large","input":[{}]}}"#,
        inputs.join(",")
    )
}

#[test]
fn a_batch_whose_answer_envoy_could_not_hold_is_refused_and_its_hold_released() {
    // 1,000 vectors of 3,072 floats come to ~65 MiB, over the 32 MiB Envoy holds: refused
    // before the provider is asked (it would answer, be paid, and the client get a bare 500).
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let (id, _) = send(
        &mut host,
        EMBEDDINGS,
        &[("authorization", &auth)],
        Some(&batch(1_000)),
    );
    let call = authorize_call(&mut host);
    let hold = authorize_request(&call).request_id.expect("the call's id");
    let mut g = embed_grant();
    g.dimensions = Some(3072);
    allow(&mut host, &call, g);
    let reply = host.local_reply(id).expect("refused at the edge");
    assert_eq!(reply.status, 400);
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"]["param"], "input");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("at most 496 inputs"), "{message}");
    assert_eq!(host.resumed(id, StreamKind::Request), 0, "never forwarded");
    host.done(id).unwrap();
    // The hold is released: settled failed, nothing charged.
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1);
    assert_eq!(
        settled[0].hold_id, hold,
        "the hold placed under the call's id"
    );
    assert_eq!(settled[0].outcome, Outcome::Failed);

    // Half of it passes, with the same grant.
    let (id, _) = send(
        &mut host,
        EMBEDDINGS,
        &[("authorization", &auth)],
        Some(&batch(400)),
    );
    let call = authorize_call(&mut host);
    let mut g = embed_grant();
    g.dimensions = Some(3072);
    allow(&mut host, &call, g);
    assert!(host.local_reply(id).is_none());
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
}

#[test]
fn a_too_large_batch_with_its_own_dimensions_is_refused_without_a_callout() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    let body = batch(2_048).replace(r#""input""#, r#""dimensions":3072,"input""#);
    let (id, _) = send(
        &mut host,
        EMBEDDINGS,
        &[("authorization", &auth)],
        Some(&body),
    );
    let reply = host.local_reply(id).expect("refused at once");
    assert_eq!(reply.status, 400);
    assert!(host.pending_calls().is_empty(), "no authorize callout");
}
