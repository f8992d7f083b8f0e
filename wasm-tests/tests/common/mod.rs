//! Shared set-up for the scenario tests: a configured opsgate filter whose first snapshot
//! has arrived, and helpers that play the client, the control plane and the provider.
#![allow(dead_code)]

use opsgate_core::contract::{
    AuthorizeResponse, Denial, Grant, ServiceKeyEntry, SettleBatch, Settlement, Snapshot, Upstream,
    WindowLimit,
};
use opsgate_core::credentials::digest;
pub use opsgate_core::money::MilliCredits;
use opsgate_core::plan::PowerLevel;
use opsgate_core::pricing::{Price, RateCard};
use opsgate_wasm_tests::{Action, Host, HttpCall, LocalReply, StreamId, StreamKind};
use std::time::Duration;

pub const SERVICE_KEY: &str = "sk-loopnet-service-key-2025";
pub const TOKEN: &str = "test-internal-token-0123";
pub const CP: &str = "opsgate_control_plane";

/// The filter's configuration with only what every scenario needs set: everything else is
/// the filter's own default.
pub fn defaults_config() -> String {
    format!(
        r#"{{"control_plane":{{"cluster":"{CP}","authority":"cp","token":"{TOKEN}","timeout_ms":1500}},"snapshot_interval_ms":5000,"settle_interval_ms":200}}"#
    )
}

/// The scenarios' configuration: [`defaults_config`] with the settlement wait off (most
/// scenarios drive the background queue; those about the wait set it).
pub fn config() -> String {
    with_fields(&defaults_config(), r#""settle_wait_ms":0"#)
}

pub fn snapshot() -> Snapshot {
    Snapshot {
        version: "v1".into(),
        service_keys: vec![ServiceKeyEntry {
            digest: digest(SERVICE_KEY),
            user_id: "loopnet-service".into(),
        }],
        ..Snapshot::default()
    }
}

/// A filter configured and loaded with `snapshot()`.
pub fn gateway() -> Host {
    gateway_with(&config())
}

/// [`config`] with extra top-level fields, e.g. `"max_body_bytes":2048`.
pub fn config_with(extra: &str) -> String {
    with_fields(&config(), extra)
}

/// `config` (a JSON object) with the fields of `extra` (`"name":value,…`) set, replacing any
/// of the same name.
pub fn with_fields(config: &str, extra: &str) -> String {
    let mut base: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(config).expect("a JSON object");
    let extra: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&format!("{{{extra}}}")).expect("JSON fields");
    base.extend(extra);
    serde_json::Value::Object(base).to_string()
}

/// A filter configured with `config` (the control-plane cluster known to the host) and
/// loaded with `snapshot()`.
pub fn gateway_with(config: &str) -> Host {
    let mut host = Host::plugin().expect("load the opsgate filter");
    host.add_cluster(CP);
    assert!(host.configure("", config).expect("configure"));
    host.tick().expect("tick");
    let call = snapshot_call(&mut host).expect("the first tick polls the snapshot");
    answer_snapshot(&mut host, &call, &snapshot());
    host
}

pub const SNAPSHOT: &str = "/internal/v1/snapshot";
pub const AUTHORIZE: &str = "/internal/v1/authorize";
pub const SETTLE: &str = "/internal/v1/settle";

/// A well-formed user API key (`uc_` + 64 lowercase hex).
pub const USER_KEY: &str = "uc_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// Is this callout a request to the control plane for `path`?
pub fn is_call_to(c: &HttpCall, path: &str) -> bool {
    c.cluster == CP && header(&c.headers, ":path") == Some(path)
}

/// Outstanding (not yet taken) callouts to `path`.
pub fn pending_to(host: &Host, path: &str) -> usize {
    host.pending_calls()
        .iter()
        .filter(|c| is_call_to(c, path))
        .count()
}

pub fn snapshot_call(host: &mut Host) -> Option<HttpCall> {
    host.take_call(|c| is_call_to(c, SNAPSHOT))
}

pub fn answer_snapshot(host: &mut Host, call: &HttpCall, snap: &Snapshot) {
    host.respond(
        call.token,
        200,
        &[("content-type", "application/json")],
        &serde_json::to_vec(snap).unwrap(),
    )
    .unwrap();
}

pub fn settle_call(host: &mut Host) -> Option<HttpCall> {
    host.take_call(|c| is_call_to(c, SETTLE))
}

pub fn settle_batch(call: &HttpCall) -> SettleBatch {
    serde_json::from_slice(&call.body).expect("a SettleBatch body")
}

/// Acknowledges a settle batch the way the control plane does.
pub fn ack_settle(host: &mut Host, call: &HttpCall) {
    host.respond(
        call.token,
        200,
        &[("content-type", "application/json")],
        br#"{"results":[]}"#,
    )
    .unwrap();
}

/// Lets the settle timer fire (advance past the interval, tick), takes the batch sent,
/// acknowledges it and returns its settlements (empty when nothing was sent).
pub fn flush_settlements(host: &mut Host) -> Vec<Settlement> {
    host.advance(Duration::from_millis(250));
    host.tick().unwrap();
    let mut out = Vec::new();
    while let Some(call) = settle_call(host) {
        out.extend(settle_batch(&call).settlements);
        ack_settle(host, &call);
    }
    out
}

/// A request without a body (`GET` by default) with the given extra headers.
pub fn send_headers_only(
    host: &mut Host,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> (StreamId, Action) {
    let id = host.new_stream().unwrap();
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", "gateway"),
    ];
    headers.extend_from_slice(extra);
    let a = host.request_headers(id, &headers, true).unwrap();
    (id, a)
}

/// The local reply of a stream, asserting its status, its envelope's `code`, and that the
/// request was not forwarded; returns the reply and its envelope.
pub fn expect_reply(
    host: &Host,
    id: StreamId,
    status: u32,
    code: &str,
) -> (LocalReply, serde_json::Value) {
    let reply = host
        .local_reply(id)
        .unwrap_or_else(|| panic!("expected a {status} local reply, none was sent"));
    assert_eq!(reply.status, status, "{}", reply.body_str());
    let env = envelope(&reply.body);
    assert_eq!(env["error"]["code"], code, "{env}");
    assert!(env["error"]["message"].is_string(), "{env}");
    assert!(env["error"]["type"].is_string(), "{env}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "error replies are JSON"
    );
    assert_eq!(
        host.resumed(id, StreamKind::Request),
        0,
        "a refused request must not be forwarded"
    );
    (reply, env)
}

/// Runs a metered chat call up to the forward: request, authorize, allow with `grant`.
pub fn forwarded_chat(host: &mut Host, body: &str, grant: Grant) -> StreamId {
    let (id, _) = chat(host, SERVICE_KEY, body);
    let call = authorize_call(host);
    allow(host, &call, grant);
    assert!(host.local_reply(id).is_none(), "no local reply on allow");
    assert_eq!(host.resumed(id, StreamKind::Request), 1, "forwarded once");
    id
}

/// The JSON body the provider receives.
pub fn forwarded_json(host: &Host, id: StreamId) -> serde_json::Value {
    serde_json::from_slice(&host.request_body_of(id)).expect("a JSON body upstream")
}

/// The AuthorizeRequest a callout carries.
pub fn authorize_request(call: &HttpCall) -> opsgate_core::contract::AuthorizeRequest {
    serde_json::from_slice(&call.body).expect("an AuthorizeRequest body")
}

/// Whether a log entry at `level` (5 critical, 4 error, 3 warn, 2 info) contains `needle`.
pub fn has_log_at(host: &Host, level: u32, needle: &str) -> bool {
    host.logs()
        .iter()
        .any(|(l, m)| *l == level && m.contains(needle))
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub const QUICKSTART: &str =
    r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello, world!"}]}"#;

/// Sends a request's headers and body; returns the stream and the body callback's action.
pub fn send(
    host: &mut Host,
    path: &str,
    extra: &[(&str, &str)],
    body: Option<&str>,
) -> (StreamId, Action) {
    let id = host.new_stream().unwrap();
    let mut headers = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", "gateway"),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    let a = host.request_headers(id, &headers, body.is_none()).unwrap();
    match body {
        Some(b) if host.local_reply(id).is_none() => {
            let a = host.request_body(id, b.as_bytes(), true).unwrap();
            (id, a)
        }
        _ => (id, a),
    }
}

/// Opens a metered chat call with the service key and `extra` headers, its body still to
/// come; returns the stream.
pub fn open_chat(host: &mut Host, extra: &[(&str, &str)]) -> StreamId {
    let id = host.new_stream().unwrap();
    let auth = bearer(SERVICE_KEY);
    let mut headers = vec![
        (":method", "POST"),
        (":path", "/api/v1/llm/chat/completions"),
        (":authority", "gateway"),
        ("authorization", auth.as_str()),
    ];
    headers.extend_from_slice(extra);
    host.request_headers(id, &headers, false).unwrap();
    id
}

/// The provider answers a forwarded call: 200, JSON, a body reporting this usage.
pub fn provider_answers(host: &mut Host, id: StreamId, prompt_tokens: u64, completion_tokens: u64) {
    host.response_headers(
        id,
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    let body = format!(
        r#"{{"usage":{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens}}}}}"#
    );
    host.response_body(id, body.as_bytes(), true).unwrap();
}

pub fn chat(host: &mut Host, key: &str, body: &str) -> (StreamId, Action) {
    let auth = format!("Bearer {key}");
    send(
        host,
        "/api/v1/llm/chat/completions",
        &[("authorization", auth.as_str())],
        Some(body),
    )
}

pub fn authorize_call(host: &mut Host) -> HttpCall {
    host.take_call(|c| header(&c.headers, ":path") == Some("/internal/v1/authorize"))
        .expect("an authorize callout")
}

pub fn grant() -> Grant {
    Grant {
        hold_id: "hold_1".into(),
        user_id: "loopnet-service".into(),
        model: "gpt-4o-mini".into(),
        provider: "openai".into(),
        upstream: Upstream {
            cluster: "provider_openai".into(),
            authority: "api.openai.com".into(),
            path: "/v1/chat/completions".into(),
            model: "gpt-4o-mini-2024-07-18".into(),
            api_key: "platform-key-123".into(),
            completion_limit: Default::default(),
            takes_temperature: false,
        },
        max_tokens: Some(512),
        rate: RateCard {
            price: Price {
                input_per_million: 150_000,
                output_per_million: 600_000,
                per_image: 0,
            },
            power_level: PowerLevel::Balanced,
            markup_percent: 0,
        },
        hold_mc: MilliCredits(400),
        balance_mc: MilliCredits(9_999_600),
        period: Some(WindowLimit {
            limit: 10_000,
            remaining: 9_850,
            reset: 1_733_097_600,
        }),
        daily: Some(WindowLimit {
            limit: 334,
            remaining: 300,
            reset: 1_732_060_800,
        }),
        byok: false,
        max_tokens_chosen: false,
        dimensions: None,
    }
}

/// The provider and rate-limit headers a metered response carries for [`grant`].
pub fn assert_grant_headers(host: &Host, id: StreamId) {
    for (name, value) in [
        ("x-provider-used", "openai"),
        ("x-model-used", "gpt-4o-mini"),
        ("x-ratelimit-limit", "10000"),
        ("x-ratelimit-remaining", "9850"),
        ("x-ratelimit-reset", "1733097600"),
        ("x-ratelimit-limit-day", "334"),
        ("x-ratelimit-remaining-day", "300"),
        ("x-ratelimit-reset-day", "1732060800"),
    ] {
        assert_eq!(
            host.response_header(id, name).as_deref(),
            Some(value),
            "{name}"
        );
    }
}

pub fn allow(host: &mut Host, call: &HttpCall, grant: Grant) {
    let body = serde_json::to_vec(&AuthorizeResponse::Allow(Box::new(grant))).unwrap();
    host.respond(
        call.token,
        200,
        &[("content-type", "application/json")],
        &body,
    )
    .unwrap();
}

pub fn deny(host: &mut Host, call: &HttpCall, denial: Denial) {
    let body = serde_json::to_vec(&AuthorizeResponse::Deny(denial)).unwrap();
    host.respond(call.token, 200, &[], &body).unwrap();
}

pub fn envelope(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("a JSON error envelope")
}

pub mod jwt;

/// A counter's value, 0 when the filter never defined it.
pub fn counter(host: &Host, name: &str) -> i64 {
    host.metric(name).unwrap_or(0)
}

/// Sends a metered chat call with extra headers (credentials); returns the stream.
pub fn chat_with_headers(host: &mut Host, headers: &[(&str, &str)]) -> StreamId {
    send(
        host,
        "/api/v1/llm/chat/completions",
        headers,
        Some(QUICKSTART),
    )
    .0
}

/// Answers an authorize callout with a denial of `kind`.
pub fn deny_with(host: &mut Host, call: &HttpCall, kind: opsgate_core::ErrorKind, message: &str) {
    deny(
        host,
        call,
        Denial {
            kind,
            message: message.into(),
            param: None,
            retry_after: None,
            rate_limit: None,
        },
    );
}

/// Whether a chat with service key `key` gets past the edge (an authorize callout follows,
/// answered here with a denial) or is refused there with 401 `Invalid service key`.
pub fn service_key_known(host: &mut Host, key: &str) -> bool {
    let (id, _) = chat(host, key, QUICKSTART);
    match host.local_reply(id) {
        None => {
            let call = authorize_call(host);
            host.respond(
                call.token,
                200,
                &[],
                br#"{"decision":"deny","kind":"forbidden","message":"test"}"#,
            )
            .unwrap();
            true
        }
        Some(reply) => {
            assert_eq!(reply.status, 401, "{}", reply.body_str());
            assert_eq!(
                envelope(&reply.body)["error"]["message"],
                "Invalid service key"
            );
            false
        }
    }
}
