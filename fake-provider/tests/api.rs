//! Drives the router with `tower::ServiceExt::oneshot`, no sockets.

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{HeaderMap, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use opsgate_fake_provider::{app, Config};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    Reply {
        status,
        headers,
        text,
    }
}

fn post(path: &str, body: &Value, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::post(path).header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(body.to_string())).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn fake() -> Router {
    app(Config::default())
}

/// system: 3 words, user: 3 words -> prompt = 3 + 3 + 3 + 3 = 12;
/// reply "Fake reply to: hello there world" -> 6 words.
fn chat(extra: Value) -> Value {
    let mut body = json!({
        "model": "fake-chat",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello there world"},
        ],
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    body
}

/// The `data:` payloads of an SSE body, in order.
fn events(text: &str) -> Vec<String> {
    assert!(text.ends_with("\n\n"), "unterminated event in {text:?}");
    text.split_terminator("\n\n")
        .map(|event| event.strip_prefix("data: ").expect("data event").to_owned())
        .collect()
}

#[tokio::test]
async fn plain_completion_shape_and_usage() {
    let reply = send(&fake(), post("/v1/chat/completions", &chat(json!({})), &[])).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["x-fake-provider"], "fake");
    let body = reply.json();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-fake-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "fake-chat");
    assert_eq!(
        body["choices"],
        json!([{
            "index": 0,
            "message": {"role": "assistant", "content": "Fake reply to: hello there world"},
            "finish_reason": "stop",
        }])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18})
    );
}

#[tokio::test]
async fn content_parts_are_joined() {
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "look at"},
            {"type": "image_url", "image_url": {"url": "https://x.invalid/a.png"}},
            {"type": "text", "text": "this"},
        ]}],
    });
    let body = send(&fake(), post("/v1/chat/completions", &body, &[]))
        .await
        .json();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Fake reply to: look at this"
    );
    assert_eq!(body["usage"]["prompt_tokens"], 3 + 3);
}

#[tokio::test]
async fn max_tokens_truncates_with_length() {
    for limit in ["max_tokens", "max_completion_tokens"] {
        let request = chat(json!({ limit: 4 }));
        let body = send(&fake(), post("/v1/chat/completions", &request, &[]))
            .await
            .json();
        let choice = &body["choices"][0];
        assert_eq!(choice["message"]["content"], "Fake reply to: hello");
        assert_eq!(choice["finish_reason"], "length");
        assert_eq!(body["usage"]["completion_tokens"], 4);
        assert_eq!(body["usage"]["total_tokens"], 16);
    }
    // A limit the reply fits in changes nothing.
    let request = chat(json!({"max_tokens": 6}));
    let body = send(&fake(), post("/v1/chat/completions", &request, &[]))
        .await
        .json();
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 6);
}

#[tokio::test]
async fn stream_with_usage_ends_with_usage_then_done() {
    let request = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let reply = send(&fake(), post("/v1/chat/completions", &request, &[])).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let events = events(&reply.text);
    // 6 word chunks, the finish chunk, the usage chunk, [DONE].
    assert_eq!(events.len(), 9, "{events:?}");
    assert_eq!(events[8], "[DONE]");
    let chunks: Vec<Value> = events[..8]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = &chunks[0]["id"];
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(&chunk["id"], id);
        assert_eq!(chunk["model"], "fake-chat");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[..6]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Fake reply to: hello there world");
    assert!(chunks[..7].iter().all(|c| c["usage"].is_null()));
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(
        chunks[7]["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18})
    );
}

#[tokio::test]
async fn stream_without_usage_and_truncated() {
    let request = chat(json!({"stream": true, "max_tokens": 2}));
    let reply = send(&fake(), post("/v1/chat/completions", &request, &[])).await;
    let events = events(&reply.text);
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(events[3], "[DONE]");
    assert!(!reply.text.contains("usage"));
    let last: Value = serde_json::from_str(&events[2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"], json!({}));
}

#[tokio::test]
async fn stream_abort_and_chunk_delay() {
    let request = chat(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let headers = [
        ("x-fake-stream-abort-after", "2"),
        ("x-fake-chunk-delay-ms", "30"),
    ];
    let started = Instant::now();
    let reply = send(&fake(), post("/v1/chat/completions", &request, &headers)).await;
    assert!(started.elapsed() >= Duration::from_millis(30));
    let events = events(&reply.text);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(!reply.text.contains("[DONE]") && !reply.text.contains("usage\":{"));
}

#[tokio::test]
async fn api_key_is_enforced_and_never_echoed() {
    let config = Config {
        api_key: Some("sk-good".to_owned()),
        name: "alpha".to_owned(),
        ..Config::default()
    };
    let app = app(config);
    let expected = json!({"error": {
        "message": "Incorrect API key provided.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
        "param": null,
    }});
    for auth in [None, Some("Bearer sk-wrong-secret"), Some("sk-good")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let reply = send(
            &app,
            post("/v1/chat/completions", &chat(json!({})), &headers),
        )
        .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.json(), expected);
        assert!(!reply.text.contains("sk-"));
        assert_eq!(reply.headers["x-fake-provider"], "alpha");
    }
    let headers = [("authorization", "Bearer sk-good")];
    let reply = send(
        &app,
        post("/v1/chat/completions", &chat(json!({})), &headers),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    // Inspection and health never need the key.
    assert_eq!(
        send(&app, get("/_fake/requests")).await.status,
        StatusCode::OK
    );
    let health = send(&app, get("/healthz")).await;
    assert_eq!(
        (health.status, health.text.as_str()),
        (StatusCode::OK, "ok")
    );
}

#[tokio::test]
async fn several_accounts_keys_are_accepted() {
    let app = app(Config {
        api_key: Some("sk-platform,sk-or-v1-user".to_owned()),
        ..Config::default()
    });
    for (auth, status) in [
        ("Bearer sk-platform", StatusCode::OK),
        ("Bearer sk-or-v1-user", StatusCode::OK),
        ("Bearer sk-platform,sk-or-v1-user", StatusCode::UNAUTHORIZED),
        ("Bearer sk-other", StatusCode::UNAUTHORIZED),
    ] {
        let headers = [("authorization", auth)];
        let reply = send(
            &app,
            post("/v1/chat/completions", &chat(json!({})), &headers),
        )
        .await;
        assert_eq!(reply.status, status, "{auth}");
    }
}

#[tokio::test]
async fn injected_status_and_latency() {
    let app = fake();
    for (status, kind, code) in [
        ("429", "requests", "rate_limit_exceeded"),
        ("401", "invalid_request_error", "invalid_api_key"),
        ("403", "invalid_request_error", "permission_denied"),
        ("503", "server_error", "server_error"),
    ] {
        let request = post(
            "/v1/chat/completions",
            &chat(json!({})),
            &[("x-fake-status", status)],
        );
        let reply = send(&app, request).await;
        assert_eq!(reply.status.as_str(), status);
        let body = reply.json();
        assert_eq!(body["error"]["type"], kind);
        assert_eq!(body["error"]["code"], code);
        assert!(body["error"]["message"].is_string());
    }
    let started = Instant::now();
    let request = post(
        "/v1/chat/completions",
        &chat(json!({})),
        &[("x-fake-latency-ms", "60")],
    );
    assert_eq!(send(&app, request).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(60));
}

#[tokio::test]
async fn bad_requests_get_error_envelopes() {
    let app = fake();
    let cases = [
        Body::from("{not json"),
        Body::from(json!({"model": "m"}).to_string()),
        Body::from(json!({"messages": [{"role": "user", "content": "hi"}]}).to_string()),
        Body::empty(),
    ];
    for body in cases {
        let request = Request::post("/v1/chat/completions").body(body).unwrap();
        let reply = send(&app, request).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    }
    let reply = send(&app, get("/v1/nope")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["code"], "unknown_url");
}

#[tokio::test]
async fn images_and_models() {
    let app = fake();
    let request = json!({"prompt": "a red cat", "n": 2, "model": "fake-image"});
    let reply = send(&app, post("/v1/images/generations", &request, &[])).await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    assert_eq!(body["size"], "1024x1024");
    assert_eq!(
        body["data"],
        json!([
            {"url": "https://fake.invalid/img/1.png", "revised_prompt": "a red cat"},
            {"url": "https://fake.invalid/img/2.png", "revised_prompt": "a red cat"},
        ])
    );
    let request = json!({"prompt": "x", "response_format": "b64_json", "size": "256x256"});
    let body = send(&app, post("/v1/images/generations", &request, &[]))
        .await
        .json();
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert!(body["data"][0]["b64_json"]
        .as_str()
        .unwrap()
        .starts_with("iVBOR"));
    let request = json!({"prompt": "x", "n": 11});
    let reply = send(&app, post("/v1/images/generations", &request, &[])).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    let body = send(&app, get("/v1/models")).await.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "fake-chat");
    assert_eq!(body["data"][0]["object"], "model");
}

/// The `f32`s of a base64 embedding.
fn floats(b64: &str) -> Vec<f32> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(bytes.len() % 4, 0);
    bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn vector(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test]
async fn embeddings_are_deterministic_unit_vectors_with_word_usage() {
    let app = fake();
    let request = json!({"model": "text-embedding-3-small", "input": ["hello there world", "one"]});
    let reply = send(&app, post("/v1/embeddings", &request, &[])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-3-small");
    // 3 words + 1 word, no extra per input; an embedding has no completion.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "total_tokens": 4})
    );
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let mut vectors = Vec::new();
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["object"], "embedding");
        assert_eq!(item["index"], i);
        let v = vector(&item["embedding"]);
        assert_eq!(v.len(), opsgate_fake_provider::EMBEDDING_DIMENSIONS);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        vectors.push(v);
    }
    assert_ne!(
        vectors[0], vectors[1],
        "different inputs, different vectors"
    );
    // The same input gives the same vector, alone or in a list.
    let again = send(
        &app,
        post(
            "/v1/embeddings",
            &json!({"model": "m", "input": "hello there world"}),
            &[],
        ),
    )
    .await
    .json();
    assert_eq!(vector(&again["data"][0]["embedding"]), vectors[0]);
    assert_eq!(again["usage"]["prompt_tokens"], 3);

    // Base64: the same floats, little-endian f32, as the OpenAI SDKs decode them; with
    // `dimensions`, that many.
    let b64 = send(
        &app,
        post(
            "/v1/embeddings",
            &json!({"model": "m", "input": ["hello there world"], "encoding_format": "base64"}),
            &[],
        ),
    )
    .await
    .json();
    assert_eq!(
        floats(b64["data"][0]["embedding"].as_str().unwrap()),
        vectors[0]
    );
    let sized = send(
        &app,
        post(
            "/v1/embeddings",
            &json!({"model": "m", "input": "x", "dimensions": 3, "encoding_format": "base64"}),
            &[],
        ),
    )
    .await
    .json();
    assert_eq!(
        floats(sized["data"][0]["embedding"].as_str().unwrap()).len(),
        3
    );

    // Token ids: one token each, in one array or several.
    let tokens = send(
        &app,
        post(
            "/v1/embeddings",
            &json!({"model": "m", "input": [[1, 2, 3], [4]]}),
            &[],
        ),
    )
    .await
    .json();
    assert_eq!(tokens["usage"]["prompt_tokens"], 4);
    assert_eq!(tokens["data"].as_array().unwrap().len(), 2);
    let one = send(
        &app,
        post(
            "/v1/embeddings",
            &json!({"model": "m", "input": [7, 8]}),
            &[],
        ),
    )
    .await
    .json();
    assert_eq!(one["usage"]["prompt_tokens"], 2);
    assert_eq!(one["data"].as_array().unwrap().len(), 1);

    for bad in [
        json!({"input": "x"}),
        json!({"model": "m"}),
        json!({"model": "m", "input": []}),
        json!({"model": "m", "input": ""}),
        json!({"model": "m", "input": [[]]}),
        json!({"model": "m", "input": [1, "a"]}),
        json!({"model": "m", "input": {"a": 1}}),
        json!({"model": "m", "input": "x", "dimensions": 0}),
        json!({"model": "m", "input": "x", "encoding_format": "int8"}),
    ] {
        let reply = send(&app, post("/v1/embeddings", &bad, &[])).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    }
}

#[tokio::test]
async fn requests_are_recorded_and_cleared() {
    let app = fake();
    let headers = [("authorization", "Bearer sk-seen"), ("x-trace", "t-1")];
    send(
        &app,
        post("/v1/chat/completions", &chat(json!({})), &headers),
    )
    .await;
    send(&app, get("/v1/models")).await;
    send(&app, get("/healthz")).await; // not a /v1 request: not recorded

    let recorded = send(&app, get("/_fake/requests")).await.json();
    let recorded = recorded.as_array().unwrap();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    let first = &recorded[0];
    assert_eq!(first["method"], "POST");
    assert_eq!(first["path"], "/v1/chat/completions");
    assert_eq!(first["body"], chat(json!({})));
    let headers = first["headers"].as_array().unwrap();
    assert!(headers.contains(&json!(["authorization", "Bearer sk-seen"])));
    assert!(headers.contains(&json!(["x-trace", "t-1"])));
    assert!(headers.contains(&json!(["content-type", "application/json"])));
    assert_eq!(recorded[1]["method"], "GET");
    assert_eq!(recorded[1]["body"], Value::Null);

    let cleared = send(
        &app,
        Request::delete("/_fake/requests")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(cleared.status, StatusCode::NO_CONTENT);
    assert_eq!(send(&app, get("/_fake/requests")).await.json(), json!([]));
}

#[tokio::test]
async fn only_the_last_200_requests_are_kept() {
    let app = fake();
    for _ in 0..205 {
        send(&app, get("/v1/models")).await;
    }
    let recorded = send(&app, get("/_fake/requests")).await.json();
    assert_eq!(recorded.as_array().unwrap().len(), 200);
}
