//! Shared set-up for the scenario tests: a configured opsgate filter whose first snapshot
//! has arrived, and helpers that play the client, the control plane and the provider.
#![allow(dead_code)]

use opsgate_core::contract::{
    AuthorizeResponse, Denial, Grant, ServiceKeyEntry, Snapshot, Upstream, WindowLimit,
};
use opsgate_core::credentials::digest;
use opsgate_core::plan::PowerLevel;
use opsgate_core::pricing::{Price, RateCard};
use opsgate_wasm_tests::{Action, Host, HttpCall, StreamId};

pub const SERVICE_KEY: &str = "sk-loopnet-service-key-2025";
pub const TOKEN: &str = "test-internal-token-0123";
pub const CP: &str = "opsgate_control_plane";

pub fn config() -> String {
    format!(
        r#"{{"control_plane":{{"cluster":"{CP}","authority":"cp","token":"{TOKEN}","timeout_ms":1500}},"snapshot_interval_ms":5000,"settle_interval_ms":200}}"#
    )
}

pub fn snapshot() -> Snapshot {
    Snapshot {
        version: "v1".into(),
        service_keys: vec![ServiceKeyEntry {
            digest: digest(SERVICE_KEY),
            user_id: "loopnet-service".into(),
        }],
    }
}

/// A filter configured and loaded with `snapshot()`.
pub fn gateway() -> Host {
    let mut host = Host::plugin().expect("load the opsgate filter");
    host.add_cluster(CP);
    assert!(host.configure("", &config()).expect("configure"));
    host.tick().expect("tick");
    let call = host
        .take_call(|c| header(&c.headers, ":path") == Some("/internal/v1/snapshot"))
        .expect("the first tick polls the snapshot");
    host.respond(
        call.token,
        200,
        &[],
        &serde_json::to_vec(&snapshot()).unwrap(),
    )
    .unwrap();
    host
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
        hold_mc: 400,
        balance_mc: 9_999_600,
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
