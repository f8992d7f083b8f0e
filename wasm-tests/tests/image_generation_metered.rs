//! Image generation is metered per image actually returned: the authorize callout asks for
//! `n` images, the request goes to the grant's upstream path, and the cost headers and the
//! settlement count the images in the response.

mod common;
use common::*;
use opsgate_core::contract::{Endpoint, Grant, Outcome};
use opsgate_core::plan::PowerLevel;
use opsgate_wasm_tests::{Action, Host, StreamId};

const IMAGES: &str = "/api/v1/llm/image/generations";
const REQUEST: &str = r#"{"model":"dall-e-3","prompt":"a lighthouse at dusk","n":2,"size":"1024x1024","power_level":"balanced"}"#;
const PER_IMAGE_MC: i64 = 40_000;

fn image_grant() -> Grant {
    let mut g = grant();
    g.hold_id = "hold_img".into();
    g.model = "dall-e-3".into();
    g.upstream.path = "/v1/images/generations".into();
    g.upstream.model = "dall-e-3".into();
    g.max_tokens = None;
    g.rate.price.input_per_million = 0;
    g.rate.price.output_per_million = 0;
    g.rate.price.per_image = PER_IMAGE_MC;
    g.hold_mc = MilliCredits(2 * PER_IMAGE_MC);
    g.balance_mc = MilliCredits(1_000_000);
    g
}

fn image_call(host: &mut Host, path: &str, body: &str) -> StreamId {
    let auth = bearer(SERVICE_KEY);
    let (id, action) = send(host, path, &[("authorization", &auth)], Some(body));
    assert_eq!(action, Action::Pause);
    assert!(host.local_reply(id).is_none());
    let call = authorize_call(host);
    let req = authorize_request(&call);
    assert_eq!(req.endpoint, Endpoint::ImageGenerations);
    assert_eq!(req.images, 2);
    assert_eq!(req.model.as_deref(), Some("dall-e-3"));
    assert_eq!(req.power_level, PowerLevel::Balanced);
    assert_eq!(req.max_tokens, None);
    assert!(!req.stream);
    allow(host, &call, image_grant());
    id
}

fn provider_answers(host: &mut Host, id: StreamId, images: usize) {
    let data: Vec<String> = (0..images)
        .map(|i| format!(r#"{{"url":"https://img.example/{i}.png"}}"#))
        .collect();
    let body = format!(r#"{{"created":1,"data":[{}]}}"#, data.join(","));
    let a = host
        .response_headers(
            id,
            &[(":status", "200"), ("content-type", "application/json")],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Pause, "held until the body tells the cost");
    let a = host.response_body(id, body.as_bytes(), true).unwrap();
    assert_eq!(a, Action::Continue);
    assert_eq!(
        String::from_utf8(host.forwarded_response_body(id)).unwrap(),
        body
    );
}

#[test]
fn two_images_are_forwarded_and_charged_per_image() {
    let mut host = gateway();
    let id = image_call(&mut host, IMAGES, REQUEST);

    assert_eq!(
        host.header(id, ":path").as_deref(),
        Some("/v1/images/generations")
    );
    assert_eq!(
        host.header(id, ":authority").as_deref(),
        Some("api.openai.com")
    );
    assert_eq!(
        host.header(id, "x-opsgate-cluster").as_deref(),
        Some("provider_openai")
    );
    let sent = forwarded_json(&host, id);
    assert_eq!(sent["prompt"], "a lighthouse at dusk");
    assert_eq!(sent["n"], 2);
    assert_eq!(sent["size"], "1024x1024");
    assert_eq!(sent["model"], "dall-e-3");
    assert!(sent.get("power_level").is_none(), "{sent}");
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    assert!(sent.get("stream_options").is_none(), "{sent}");

    provider_answers(&mut host, id, 2);
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("80.000"),
        "2 x 40 credits"
    );
    assert_eq!(
        host.response_header(id, "x-credits-remaining").as_deref(),
        Some("1000.000"),
        "balance + released hold - cost"
    );
    assert_eq!(
        host.response_header(id, "x-provider-used").as_deref(),
        Some("openai")
    );
    host.done(id).unwrap();

    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    let s = &settled[0];
    assert_eq!(s.hold_id, "hold_img");
    assert_eq!(s.outcome, Outcome::Success);
    assert_eq!(s.usage.images, 2);
    assert_eq!((s.usage.prompt_tokens, s.usage.completion_tokens), (0, 0));
}

#[test]
fn fewer_images_returned_cost_less() {
    let mut host = gateway();
    let id = image_call(&mut host, IMAGES, REQUEST);
    provider_answers(&mut host, id, 1);
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("40.000")
    );
    assert_eq!(
        host.response_header(id, "x-credits-remaining").as_deref(),
        Some("1040.000")
    );
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled[0].usage.images, 1);
}

#[test]
fn the_openai_spelling_of_the_path_is_metered_too() {
    let mut host = gateway();
    let id = image_call(&mut host, "/api/v1/llm/images/generations", REQUEST);
    assert_eq!(
        host.header(id, ":path").as_deref(),
        Some("/v1/images/generations")
    );
}

#[test]
fn image_requests_are_validated() {
    let mut host = gateway();
    let auth = bearer(SERVICE_KEY);
    for (body, param) in [
        (r#"{"n":1}"#, "prompt"),
        (r#"{"prompt":"  "}"#, "prompt"),
        (r#"{"prompt":"a cat","n":11}"#, "n"),
        (r#"{"prompt":"a cat","n":0}"#, "n"),
        (r#"{"prompt":"a cat","power_level":"max"}"#, "power_level"),
    ] {
        let (id, _) = send(&mut host, IMAGES, &[("authorization", &auth)], Some(body));
        let (_, env) = expect_reply(&host, id, 400, "bad_request");
        assert_eq!(env["error"]["param"], param, "{body}");
    }
    assert_eq!(pending_to(&host, AUTHORIZE), 0);
}

#[test]
fn an_unreadable_image_body_is_charged_the_images_asked_for() {
    let mut host = gateway();
    let id = image_call(&mut host, IMAGES, REQUEST);
    let a = host
        .response_headers(
            id,
            &[(":status", "200"), ("content-type", "application/json")],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Pause);
    // Cut off mid-JSON (or not JSON at all): the images returned cannot be counted.
    let body = br#"{"created":1,"data":[{"url":"https://img.example/0.png"},{"ur"#;
    host.response_body(id, body, true).unwrap();
    assert_eq!(host.forwarded_response_body(id), body);
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("80.000"),
        "the 2 images asked for, not 0"
    );
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0].outcome, Outcome::Success);
    assert_eq!(settled[0].usage.images, 2);
}

#[test]
fn an_image_body_that_never_completes_is_charged_the_images_asked_for() {
    let mut host = gateway();
    let id = image_call(&mut host, IMAGES, REQUEST);
    host.response_headers(
        id,
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    host.response_body(id, br#"{"created":1,"data":[{"url":"#, false)
        .unwrap();
    // The client leaves before the rest arrives.
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    let s = &settled[0];
    assert_eq!(s.hold_id, "hold_img");
    assert_eq!(s.outcome, Outcome::Partial);
    assert_eq!(s.usage.images, 2, "the bound is the images asked for");
    assert_eq!(s.usage.completion_tokens, 0);
}
