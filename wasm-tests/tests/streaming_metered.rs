//! `stream: true`: the gateway asks the provider for a usage chunk, passes the SSE stream
//! through intact however it is split, hides the usage chunk from clients that did not ask
//! for it, tells the cost in a comment event before `[DONE]`, and settles once — as
//! `Partial`, bounded by what was seen, when the stream is cut off.

mod common;
use common::*;
use opsgate_core::contract::Outcome;
use opsgate_wasm_tests::{Action, Host, StreamId};

const STREAM_REQ: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"stream":true}"#;
const STREAM_REQ_WITH_USAGE: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}],"stream":true,"stream_options":{"include_usage":true}}"#;

const CHUNK_1: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n";
// With include_usage, OpenAI sends `"usage":null` on every chunk before the last.
const CHUNK_2: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo!\"}}],\"usage\":null}\n\n";
const CHUNK_STOP: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
const USAGE_CHUNK: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":20,\"completion_tokens\":10,\"total_tokens\":30}}\n\n";
const DONE: &str = "data: [DONE]\n\n";

fn provider_stream() -> String {
    [CHUNK_1, CHUNK_2, CHUNK_STOP, USAGE_CHUNK, DONE].concat()
}

/// Starts a streamed call and delivers the provider's SSE headers.
fn streaming(host: &mut Host, body: &str) -> StreamId {
    let id = forwarded_chat(host, body, grant());
    let sent = forwarded_json(host, id);
    assert_eq!(sent["stream"], true);
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the gateway always asks for the usage chunk: {sent}"
    );
    let a = host
        .response_headers(
            id,
            &[
                (":status", "200"),
                ("content-type", "text/event-stream; charset=utf-8"),
                ("content-length", "4096"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Continue, "stream headers are not held back");
    id
}

/// Delivers `data` in pieces of `size` bytes (the last one ends the stream).
fn deliver(host: &mut Host, id: StreamId, data: &[u8], size: usize) {
    let pieces: Vec<&[u8]> = data.chunks(size).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let a = host
            .response_body(id, piece, i + 1 == pieces.len())
            .unwrap();
        assert_eq!(a, Action::Continue, "SSE chunks are never held");
    }
}

fn cost_comment() -> String {
    // 20 * 150_000 + 10 * 600_000 = 9_000_000 per million = 9 mc = 0.009 credits;
    // remaining: 9_999_600 + 400 (the hold, released) - 9 = 9_999_991 mc.
    r#": opsgate {"provider":"openai","model":"gpt-4o-mini","cost":"0.009","credits_remaining":"9999.991","prompt_tokens":20,"completion_tokens":10}"#.to_string()
        + "\n\n"
}

#[test]
fn headers_go_out_at_once_with_provider_and_rate_limits() {
    let mut host = gateway();
    let id = streaming(&mut host, STREAM_REQ);
    assert_grant_headers(&host, id);
    assert!(
        host.response_header(id, "content-length").is_none(),
        "the body changes length"
    );
    assert!(
        host.response_header(id, "x-cost-incurred").is_none(),
        "unknown yet"
    );
}

#[test]
fn any_split_comes_out_intact_with_usage_hidden_and_the_cost_before_done() {
    let input = provider_stream();
    let expected = [CHUNK_1, CHUNK_2, CHUNK_STOP, &cost_comment(), DONE].concat();
    let mut host = gateway();
    for size in [1, 2, 5, 13, 40, 97, input.len()] {
        let id = streaming(&mut host, STREAM_REQ);
        deliver(&mut host, id, input.as_bytes(), size);
        let out = String::from_utf8(host.forwarded_response_body(id)).unwrap();
        assert_eq!(out, expected, "pieces of {size} bytes");
        host.done(id).unwrap();
    }
}

#[test]
fn crlf_framed_streams_are_handled_too() {
    let crlf = |s: &str| s.replace('\n', "\r\n");
    let input = crlf(&provider_stream());
    let expected = [
        crlf(CHUNK_1),
        crlf(CHUNK_2),
        crlf(CHUNK_STOP),
        cost_comment(),
        crlf(DONE),
    ]
    .concat();
    let mut host = gateway();
    for size in [1, 7, input.len()] {
        let id = streaming(&mut host, STREAM_REQ);
        deliver(&mut host, id, input.as_bytes(), size);
        let out = String::from_utf8(host.forwarded_response_body(id)).unwrap();
        assert_eq!(out, expected, "pieces of {size} bytes");
        host.done(id).unwrap();
        let settled = flush_settlements(&mut host);
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].outcome, Outcome::Success);
        assert_eq!(settled[0].usage.completion_tokens, 10);
    }
}

#[test]
fn usage_chunk_is_kept_and_carries_the_cost_when_the_client_asked_for_it() {
    let mut host = gateway();
    let id = streaming(&mut host, STREAM_REQ_WITH_USAGE);
    deliver(&mut host, id, provider_stream().as_bytes(), 11);
    let out = String::from_utf8(host.forwarded_response_body(id)).unwrap();
    let prefix = [CHUNK_1, CHUNK_2, CHUNK_STOP].concat();
    assert!(out.starts_with(&prefix), "{out}");
    let suffix = [cost_comment().as_str(), DONE].concat();
    assert!(out.ends_with(&suffix), "{out}");
    // Between them: the provider's usage chunk, unchanged but for the gateway's cost.
    let usage_event = &out[prefix.len()..out.len() - suffix.len()];
    let json = usage_event
        .strip_prefix("data: ")
        .and_then(|e| e.strip_suffix("\n\n"))
        .expect("one data event");
    let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["opsgate"]["cost"], "0.009");
    assert_eq!(v["opsgate"]["credits_remaining"], "9999.991");
    assert_eq!(v["opsgate"]["provider"], "openai");
    v.as_object_mut().unwrap().remove("opsgate");
    let original: serde_json::Value = serde_json::from_str(
        USAGE_CHUNK
            .trim_start_matches("data: ")
            .trim_end_matches('\n'),
    )
    .unwrap();
    assert_eq!(v, original);
}

#[test]
fn one_success_settlement_with_the_final_usage_on_the_next_tick() {
    let mut host = gateway();
    let id = streaming(&mut host, STREAM_REQ);
    // Everything up to [DONE], without ending the stream yet.
    let input = provider_stream();
    host.response_body(id, input.as_bytes(), false).unwrap();
    assert!(String::from_utf8(host.forwarded_response_body(id))
        .unwrap()
        .ends_with(&format!("{}{DONE}", cost_comment())));
    // Queued, not sent before the tick.
    assert_eq!(pending_to(&host, SETTLE), 0);
    host.response_body(id, b"", true).unwrap();
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    let s = &settled[0];
    assert_eq!(s.hold_id, "hold_1");
    assert_eq!(s.outcome, Outcome::Success);
    assert_eq!((s.usage.prompt_tokens, s.usage.completion_tokens), (20, 10));
    assert_eq!(s.upstream_status, 200);
    assert!(
        flush_settlements(&mut host).is_empty(),
        "settled exactly once"
    );
}

#[test]
fn stream_ending_without_done_settles_partial_bounded_by_content_seen() {
    let mut host = gateway();
    let id = streaming(&mut host, STREAM_REQ);
    // The provider drops the connection after two content chunks and half a line.
    let cut = format!("{CHUNK_1}{CHUNK_2}data: {{\"id\":\"c1\",\"choi");
    deliver(&mut host, id, cut.as_bytes(), 9);
    let out = String::from_utf8(host.forwarded_response_body(id)).unwrap();
    assert_eq!(
        out, cut,
        "everything is released at the end, nothing invented"
    );
    assert!(!out.contains(": opsgate"));
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    let s = &settled[0];
    assert_eq!(s.outcome, Outcome::Partial);
    assert_eq!(s.usage.prompt_tokens, STREAM_REQ.len() as u64);
    // "Hel" + "lo!" = 6 bytes of content: at most 6 tokens.
    assert_eq!(s.usage.completion_tokens, 6);
}

#[test]
fn client_gone_mid_stream_settles_partial() {
    let mut host = gateway();
    let id = streaming(&mut host, STREAM_REQ);
    host.response_body(id, CHUNK_1.as_bytes(), false).unwrap();
    host.response_body(id, &CHUNK_2.as_bytes()[..20], false)
        .unwrap();
    assert_eq!(
        String::from_utf8(host.forwarded_response_body(id)).unwrap(),
        CHUNK_1,
        "an incomplete line waits for its end"
    );
    // The client disconnects: Envoy destroys the stream.
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0].outcome, Outcome::Partial);
    assert_eq!(settled[0].usage.prompt_tokens, STREAM_REQ.len() as u64);
    assert_eq!(settled[0].usage.completion_tokens, 3);
    assert_eq!(settled[0].upstream_status, 200);
}

#[test]
fn sse_without_stream_flag_is_still_metered_as_a_stream() {
    // A provider answering SSE to a plain request: the headers are not held, the usage
    // chunk is read.
    let mut host = gateway();
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    let a = host
        .response_headers(
            id,
            &[(":status", "200"), ("content-type", "text/event-stream")],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Continue);
    deliver(&mut host, id, provider_stream().as_bytes(), 64);
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].outcome, Outcome::Success);
    assert_eq!(settled[0].usage.completion_tokens, 10);
}

const JSON_REPLY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":10,"total_tokens":30}}"#;

#[test]
fn a_stream_request_answered_with_json_is_metered_from_its_usage() {
    // The response decides: a `stream: true` request the provider answers with plain JSON is
    // metered like a normal call (the request still asked for the usage chunk).
    let mut host = gateway();
    let id = forwarded_chat(&mut host, STREAM_REQ, grant());
    let sent = forwarded_json(&host, id);
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    let a = host
        .response_headers(
            id,
            &[(":status", "200"), ("content-type", "application/json")],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Pause, "held until the body tells the cost");
    let a = host.response_body(id, JSON_REPLY.as_bytes(), true).unwrap();
    assert_eq!(a, Action::Continue);
    assert_eq!(host.forwarded_response_body(id), JSON_REPLY.as_bytes());
    assert_eq!(
        host.response_header(id, "x-cost-incurred").as_deref(),
        Some("0.009")
    );
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0].outcome, Outcome::Success);
    assert_eq!(
        (
            settled[0].usage.prompt_tokens,
            settled[0].usage.completion_tokens
        ),
        (20, 10)
    );
}

#[test]
fn a_stream_ending_with_trailers_settles_at_the_trailers() {
    // Usage seen, no [DONE], then trailers: Success with the usage, at once.
    let mut host = gateway();
    let id = streaming(&mut host, STREAM_REQ);
    let input = [CHUNK_1, CHUNK_STOP, USAGE_CHUNK].concat();
    host.response_body(id, input.as_bytes(), false).unwrap();
    let a = host.response_trailers(id, &[("grpc-status", "0")]).unwrap();
    assert_eq!(a, Action::Continue);
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "settled at the trailers: {settled:?}");
    assert_eq!(settled[0].outcome, Outcome::Success);
    assert_eq!(
        (
            settled[0].usage.prompt_tokens,
            settled[0].usage.completion_tokens
        ),
        (20, 10)
    );
    host.done(id).unwrap();
    assert!(flush_settlements(&mut host).is_empty(), "settled once");

    // No usage either: Partial, bounded by the content seen, at the trailers.
    let id = streaming(&mut host, STREAM_REQ);
    host.response_body(id, CHUNK_1.as_bytes(), false).unwrap();
    host.response_trailers(id, &[]).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0].outcome, Outcome::Partial);
    assert_eq!(settled[0].usage.completion_tokens, 3);
    host.done(id).unwrap();
    assert!(flush_settlements(&mut host).is_empty());
}
