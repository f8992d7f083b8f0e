//! A deterministic OpenAI-compatible provider for development and tests.
//!
//! Everything it answers is a pure function of the request (apart from
//! `created` timestamps and the `chatcmpl-fake-<n>` counter), so a gateway can
//! be tested end to end without internet access:
//!
//! * the reply to a chat is `"Fake reply to: <last user message>"`;
//! * a token is a whitespace-separated word: `prompt_tokens` is the number of
//!   words over all messages' content plus 3 per message, `completion_tokens`
//!   the number of words of the reply (after `max_tokens` truncation);
//! * `/v1/embeddings` answers one deterministic unit vector per input (8 dimensions unless
//!   `dimensions` says otherwise; `encoding_format: "base64"` gives little-endian `f32`s in
//!   base64, as OpenAI does), named after the input's text or tokens; `prompt_tokens` is the
//!   number of words of every string input plus the number of token ids (no per-input extra);
//! * request headers `x-fake-status`, `x-fake-latency-ms`,
//!   `x-fake-chunk-delay-ms` and `x-fake-stream-abort-after` inject faults;
//! * `GET`/`DELETE /_fake/requests` inspect/clear the last requests received.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::{to_bytes, Body, Bytes},
    extract::{DefaultBodyLimit, Request, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, Method, StatusCode, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// How many requests `/_fake/requests` remembers.
pub const MAX_RECORDED: usize = 200;
/// The ids listed by `GET /v1/models`.
pub const MODELS: &[&str] = &[
    "fake-chat",
    "fake-chat-mini",
    "fake-image",
    "fake-embedding",
];
/// The vector size when a request sets no `dimensions`.
pub const EMBEDDING_DIMENSIONS: usize = 8;
/// Largest request body accepted on `/v1`.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// A 1x1 transparent PNG: the `b64_json` of every generated image.
const TINY_PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// Runtime settings of one fake provider.
#[derive(Clone, Debug)]
pub struct Config {
    /// Shown in logs and in the `x-fake-provider` response header.
    pub name: String,
    /// When set, every `/v1` request must carry `Authorization: Bearer <key>`, where `<key>`
    /// is one of the comma-separated keys given (several keys stand for several accounts:
    /// the platform's and users' own).
    pub api_key: Option<String>,
    /// Delay before answering a `/v1` request (`x-fake-latency-ms` overrides).
    pub latency: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "fake".to_owned(),
            api_key: None,
            latency: Duration::ZERO,
        }
    }
}

type AppState = Arc<Shared>;

struct Shared {
    config: Config,
    name_header: HeaderValue,
    requests: Mutex<VecDeque<Recorded>>,
    next_id: AtomicU64,
}

impl Shared {
    fn requests(&self) -> MutexGuard<'_, VecDeque<Recorded>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One request as seen by the provider, returned by `GET /_fake/requests`.
#[derive(Clone, Serialize)]
struct Recorded {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

/// Builds the router; `main` serves it, tests drive it with `oneshot`.
pub fn app(config: Config) -> Router {
    let name_header =
        HeaderValue::try_from(config.name.as_str()).unwrap_or(HeaderValue::from_static("fake"));
    let state: AppState = Arc::new(Shared {
        config,
        name_header,
        requests: Mutex::new(VecDeque::new()),
        next_id: AtomicU64::new(1),
    });
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/images/generations", post(image_generations))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/_fake/requests", get(list_requests).delete(clear_requests))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(unknown_url)
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        // The gate buffers `/v1` bodies itself, with its own limit.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

// ---------------------------------------------------------------- errors

/// An error answered with an OpenAI envelope; its `type` follows from the status.
struct ApiError {
    status: StatusCode,
    code: Option<&'static str>,
    message: String,
}

fn error(status: StatusCode, code: Option<&'static str>, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError {
        status,
        code,
        message,
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    error(StatusCode::BAD_REQUEST, None, message)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            429 => "requests",
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        let error =
            json!({"message": self.message, "type": kind, "code": self.code, "param": null});
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let message = |e| format!("We could not parse the JSON body of your request: {e}");
    serde_json::from_slice(body).map_err(|e| bad_request(message(e)))
}

/// The answer to `x-fake-status: NNN`.
fn injected_failure(value: &HeaderValue) -> Response {
    let status = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(|s| s.is_client_error() || s.is_server_error());
    let Some(status) = status else {
        let message = "x-fake-status must be an HTTP error status (400-599).";
        return bad_request(message).into_response();
    };
    let code = match status.as_u16() {
        401 => "invalid_api_key",
        403 => "permission_denied",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    };
    let message = format!("Injected failure: HTTP {status}.");
    let mut response = error(status, Some(code), message).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry = HeaderValue::from_static("1");
        response.headers_mut().insert(header::RETRY_AFTER, retry);
    }
    response
}

async fn unknown_url(method: Method, uri: Uri) -> ApiError {
    let message = format!("Unknown request URL: {method} {}.", uri.path());
    error(StatusCode::NOT_FOUND, Some("unknown_url"), message)
}

// ---------------------------------------------------------------- middleware

/// Stamps every response with `x-fake-provider` and logs it; `/v1` requests
/// are additionally recorded, delayed, authenticated and fault-injected.
async fn gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = if path.starts_with("/v1/") {
        guard(&state, request, next).await
    } else {
        next.run(request).await
    };
    let name = state.name_header.clone();
    response.headers_mut().insert("x-fake-provider", name);
    let status = response.status().as_u16();
    eprintln!("[{}] {method} {path} -> {status}", state.config.name);
    response
}

async fn guard(state: &Shared, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_BODY).await else {
        let message = "Request body too large or unreadable.";
        return error(StatusCode::PAYLOAD_TOO_LARGE, None, message).into_response();
    };
    record(state, &parts, &bytes);

    let latency = header_u64(&parts.headers, "x-fake-latency-ms")
        .map(Duration::from_millis)
        .unwrap_or(state.config.latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(key) = &state.config.api_key {
        let sent = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let sent = sent.and_then(|v| v.strip_prefix("Bearer "));
        if !sent.is_some_and(|sent| key.split(',').any(|k| k == sent)) {
            // Never echo what was sent: it may be somebody's real key.
            let message = "Incorrect API key provided.";
            let code = Some("invalid_api_key");
            return error(StatusCode::UNAUTHORIZED, code, message).into_response();
        }
    }
    if let Some(value) = parts.headers.get("x-fake-status") {
        return injected_failure(value);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn record(state: &Shared, parts: &Parts, bytes: &Bytes) {
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    };
    let entry = Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers,
        body,
    };
    let mut requests = state.requests();
    if requests.len() == MAX_RECORDED {
        requests.pop_front();
    }
    requests.push_back(entry);
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------- chat

#[derive(Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Option<Vec<Message>>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type", default)]
    kind: String,
    text: Option<String>,
}

impl Message {
    /// The message's text: the string content, or its text parts joined by a space.
    fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter(|part| part.kind == "text")
                .filter_map(|part| part.text.as_deref())
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    completion_tokens: usize,
    total_tokens: usize,
}

/// The fake model: the reply, its finish reason and the token counts.
fn complete(messages: &[Message], max_tokens: Option<u64>) -> (String, &'static str, Usage) {
    let words = |text: &str| text.split_whitespace().count();
    let prompt_tokens = messages.iter().map(|m| words(&m.text()) + 3).sum();
    let last_user = messages.iter().rev().find(|m| m.role == "user");
    let reply = format!(
        "Fake reply to: {}",
        last_user.map(Message::text).unwrap_or_default()
    );
    let limit = max_tokens.map_or(usize::MAX, |max| usize::try_from(max).unwrap_or(usize::MAX));
    let (content, finish_reason) = if words(&reply) > limit {
        let kept: Vec<&str> = reply.split_whitespace().take(limit).collect();
        (kept.join(" "), "length")
    } else {
        (reply, "stop")
    };
    let completion_tokens = words(&content);
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    };
    (content, finish_reason, usage)
}

async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ChatRequest = parse(&body)?;
    let model = request
        .model
        .ok_or_else(|| bad_request("you must provide a model parameter"))?;
    let messages = match request.messages {
        Some(messages) if !messages.is_empty() => messages,
        Some(_) => return Err(bad_request("'messages' must contain at least one message.")),
        None => return Err(bad_request("Missing required parameter: 'messages'.")),
    };
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    if max_tokens == Some(0) {
        return Err(bad_request(
            "Invalid 'max_tokens': integer below minimum value (1).",
        ));
    }
    let (content, finish_reason, usage) = complete(&messages, max_tokens);
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let (id, created) = (format!("chatcmpl-fake-{n}"), unix_now());

    if request.stream != Some(true) {
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }],
            "usage": usage,
        });
        return Ok(Json(body).into_response());
    }

    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    let chunk = |choices: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        });
        if include_usage {
            // As OpenAI does: `usage` is null on every chunk but the last.
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    let choice = |delta: Value, finish: Option<&str>| {
        chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish}]))
    };

    let mut events: Vec<Value> = content
        .split_whitespace()
        .enumerate()
        .map(|(i, word)| match i {
            0 => choice(json!({"role": "assistant", "content": word}), None),
            _ => choice(json!({"content": format!(" {word}")}), None),
        })
        .collect();
    let mut done = None;
    if let Some(k) = header_u64(&headers, "x-fake-stream-abort-after") {
        // The provider "dies": the body ends without finish chunk, usage or [DONE].
        events.truncate(usize::try_from(k).unwrap_or(usize::MAX));
    } else {
        events.push(choice(json!({}), Some(finish_reason)));
        if include_usage {
            let mut last = chunk(json!([]));
            last["usage"] = json!(usage);
            events.push(last);
        }
        done = Some("data: [DONE]\n\n".to_owned());
    }
    let frames = events.iter().map(|event| format!("data: {event}\n\n"));
    let delay = header_u64(&headers, "x-fake-chunk-delay-ms").unwrap_or(0);
    Ok(sse_response(
        frames.chain(done).collect(),
        Duration::from_millis(delay),
    ))
}

/// Sends `frames` one by one, `delay` apart, then ends the body.
fn sse_response(frames: Vec<String>, delay: Duration) -> Response {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for (i, frame) in frames.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Bytes::from(frame)).await.is_err() {
                break; // the client went away
            }
        }
    });
    let headers = [
        (header::CONTENT_TYPE, "text/event-stream"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, Body::from_stream(Frames(rx))).into_response()
}

/// The receiving end of the SSE channel as a body stream.
struct Frames(mpsc::Receiver<Bytes>);

impl futures_core::Stream for Frames {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

// ---------------------------------------------------------------- embeddings

#[derive(Deserialize)]
struct EmbeddingRequest {
    model: Option<String>,
    input: Option<Value>,
    dimensions: Option<u64>,
    encoding_format: Option<String>,
}

/// One input to embed: text, or token ids.
enum EmbeddingInput {
    Text(String),
    Tokens(Vec<u64>),
}

impl EmbeddingInput {
    /// Tokens, by the fake's rule: a word of text, or a token id.
    fn tokens(&self) -> usize {
        match self {
            EmbeddingInput::Text(text) => text.split_whitespace().count(),
            EmbeddingInput::Tokens(ids) => ids.len(),
        }
    }

    /// A unit vector of `dimensions` components that depends only on the input.
    fn vector(&self, dimensions: usize) -> Vec<f32> {
        let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
        let mut mix = |bytes: &[u8]| {
            for b in bytes {
                seed = (seed ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        match self {
            EmbeddingInput::Text(text) => mix(text.as_bytes()),
            EmbeddingInput::Tokens(ids) => ids.iter().for_each(|id| mix(&id.to_le_bytes())),
        }
        let raw: Vec<f32> = (0..dimensions)
            .map(|_| {
                // xorshift64*: components in [-1, 1).
                seed ^= seed >> 12;
                seed ^= seed << 25;
                seed ^= seed >> 27;
                let x = seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
                (x as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect();
        let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 {
            return raw;
        }
        raw.into_iter().map(|x| x / norm).collect()
    }
}

/// The inputs of an embeddings request, as OpenAI accepts them.
fn embedding_inputs(input: Option<Value>) -> Result<Vec<EmbeddingInput>, ApiError> {
    let invalid = || bad_request("'$.input' is invalid. Please check the API reference.");
    let tokens = |items: &[Value]| -> Option<Vec<u64>> {
        let ids: Option<Vec<u64>> = items.iter().map(Value::as_u64).collect();
        ids.filter(|ids| !ids.is_empty())
    };
    let inputs = match input {
        None | Some(Value::Null) => {
            return Err(bad_request("Missing required parameter: 'input'."))
        }
        Some(Value::String(text)) => vec![EmbeddingInput::Text(text)],
        Some(Value::Array(items)) => match items.first() {
            None => return Err(invalid()),
            Some(Value::Number(_)) => {
                vec![EmbeddingInput::Tokens(tokens(&items).ok_or_else(invalid)?)]
            }
            Some(_) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Ok(EmbeddingInput::Text(text)),
                    Value::Array(ids) => {
                        tokens(&ids).map(EmbeddingInput::Tokens).ok_or_else(invalid)
                    }
                    _ => Err(invalid()),
                })
                .collect::<Result<_, _>>()?,
        },
        Some(_) => return Err(invalid()),
    };
    if inputs
        .iter()
        .any(|i| matches!(i, EmbeddingInput::Text(t) if t.is_empty()))
    {
        return Err(invalid());
    }
    Ok(inputs)
}

/// Little-endian `f32`s in standard base64, as OpenAI's `encoding_format: "base64"`.
fn base64_f32(vector: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn embeddings(body: Bytes) -> Result<Response, ApiError> {
    let request: EmbeddingRequest = parse(&body)?;
    let model = request
        .model
        .ok_or_else(|| bad_request("you must provide a model parameter"))?;
    let inputs = embedding_inputs(request.input)?;
    let dimensions = match request.dimensions {
        None => EMBEDDING_DIMENSIONS,
        Some(d @ 1..=4096) => usize::try_from(d).unwrap_or(EMBEDDING_DIMENSIONS),
        Some(d) => return Err(bad_request(format!("Invalid 'dimensions': {d}."))),
    };
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(bad_request(format!(
                "Invalid 'encoding_format': '{other}'."
            )))
        }
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let vector = input.vector(dimensions);
            let embedding = if base64 {
                json!(base64_f32(&vector))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let prompt_tokens: usize = inputs.iter().map(EmbeddingInput::tokens).sum();
    let usage = json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens});
    Ok(
        Json(json!({"object": "list", "data": data, "model": model, "usage": usage}))
            .into_response(),
    )
}

// ---------------------------------------------------------------- images, models

#[derive(Deserialize)]
struct ImageRequest {
    prompt: Option<String>,
    n: Option<u64>,
    size: Option<String>,
    response_format: Option<String>,
}

async fn image_generations(body: Bytes) -> Result<Response, ApiError> {
    let request: ImageRequest = parse(&body)?;
    let prompt = request
        .prompt
        .ok_or_else(|| bad_request("Missing required parameter: 'prompt'."))?;
    let n = request.n.unwrap_or(1);
    if !(1..=10).contains(&n) {
        return Err(bad_request(format!(
            "Invalid 'n': {n}, it must be between 1 and 10."
        )));
    }
    let b64 = match request.response_format.as_deref() {
        None | Some("url") => false,
        Some("b64_json") => true,
        Some(other) => {
            return Err(bad_request(format!(
                "Invalid 'response_format': '{other}'."
            )))
        }
    };
    let data: Vec<Value> = (1..=n)
        .map(|i| {
            if b64 {
                json!({"b64_json": TINY_PNG_B64, "revised_prompt": prompt})
            } else {
                json!({"url": format!("https://fake.invalid/img/{i}.png"), "revised_prompt": prompt})
            }
        })
        .collect();
    let size = request.size.unwrap_or_else(|| "1024x1024".to_owned());
    Ok(Json(json!({"created": unix_now(), "size": size, "data": data})).into_response())
}

async fn models() -> Json<Value> {
    let data: Vec<Value> = MODELS
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "fake-provider"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

// ---------------------------------------------------------------- inspection

async fn list_requests(State(state): State<AppState>) -> Json<Vec<Recorded>> {
    Json(state.requests().iter().cloned().collect())
}

async fn clear_requests(State(state): State<AppState>) -> StatusCode {
    state.requests().clear();
    StatusCode::NO_CONTENT
}
