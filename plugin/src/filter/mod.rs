//! One HTTP request through the gateway: credentials, request shaping, the authorize
//! callout, forwarding, and metering of the response (plain JSON or SSE).
//!
//! Credentials, in the DESIGN order:
//! * service keys: compared locally (constant time) with the snapshot's digests;
//! * `uc_` keys and `session_token` cookies: sent to authorize as digests, which the
//!   control plane looks up on every metered call. A digest authorize refused with 401 is
//!   remembered for `negative_cache_ttl` and answered 401 locally, metered or not, so a
//!   flood of one bad key costs one callout per TTL; a digest it accepted is remembered for
//!   `credential_cache_ttl` (a hit is only counted: authorize re-checks the key on every
//!   metered call, so a revoked key stops working at once on metered calls, and non-metered
//!   ones are checked by the control plane itself);
//! * JWTs: verified by Envoy's `jwt_authn` filter, which runs before this one and forwards a
//!   verified token's payload in [`crate::config::JwtConfig::payload_header`] (the shipped
//!   configs strip a client's copy of that header before `jwt_authn`). A bearer that looks
//!   like a JWT is accepted only when that payload is its own, and its claims are checked
//!   again (`opsgate_core::jwt`); no signature is verified in the wasm.
//!
//! Non-metered calls (every path under the route prefix but the metered ones, and every
//! path under the optional admin prefix) are authenticated here and passed on. A verified
//! JWT travels to the control plane as [`IDENTITY_HEADER`] with [`IDENTITY_AUTH_HEADER`]
//! (the internal token); service keys, `uc_` keys and sessions pass with their own
//! credential, which the control plane checks itself. Under the admin prefix a bearer that
//! is not a JWT (the admin token) passes untouched. Every `x-opsgate-*` header a client
//! sends is removed first, so only the filter sets them.
//!
//! CORS and the cookie CSRF rule: see [`crate::cors`].
//!
//! The parts: [`authn`] (who is calling), [`shaping`] (the request side, authorize, the
//! rewrite for the provider), [`meter`] (the response side and settlement). This file holds
//! the per-request state and Envoy's callbacks, which delegate to them. Every money and header
//! rule is in `opsgate_core` (`metering`, `headers`, `request`, `usage`).

mod authn;
mod meter;
mod shaping;

use crate::cors::{self, BrowserContext};
use crate::host::{self, Buffer, Headers, LogLevel, Stream};
use crate::metrics::{Counter, Histogram};
use crate::shared::{
    after, call_control_plane_within, callout_status, log, send_awaited_settlements,
    CredentialState, SharedRef,
};
use opsgate_core::contract::{
    AuthorizeRequest, AuthorizeResponse, Endpoint, Grant, Identity, Outcome, Principal,
    SettleResponse, Settlement, AUTHORIZE_PATH, IDENTITY_AUTH_HEADER, IDENTITY_HEADER,
};
use opsgate_core::credentials::{self, Credential};
use opsgate_core::headers;
use opsgate_core::jwt;
use opsgate_core::metering;
use opsgate_core::money::MilliCredits;
use opsgate_core::pricing::Usage;
use opsgate_core::request::{
    apply_platform_key_policy, parse_chat, parse_embeddings, parse_image,
    rewrite_embeddings_for_provider, rewrite_for_provider,
};
use opsgate_core::usage::{chat_response, embeddings_response, images_returned, SseMeter};
use opsgate_core::{ApiError, ErrorKind};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use serde_json::{Map, Value};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which of the gateway's surfaces a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Area {
    /// Under `route_prefix`: metered calls and the control plane's public routes.
    Api,
    /// Under `admin_prefix`: the control plane's admin API, never metered.
    Admin,
}

enum Phase {
    /// Not ours, or non-metered: let it pass.
    Pass,
    /// A metered call waiting for its whole body.
    ReadingBody,
    /// Waiting for the control plane's decision.
    Authorizing { token: u32 },
    /// Forwarded to the provider with a hold in place.
    Forwarded,
    /// A local reply was sent.
    Replied,
}

/// The outcome of checking a request's credential.
enum Authn {
    Ready(Principal),
    Refused(ApiError),
}

/// How a held response's settlement travels.
enum SettleWait {
    /// In this worker's next batch, sent by the root context, which resumes the response
    /// when the batch is answered ([`crate::shared::Shared::hold`]).
    Batched,
    /// In a callout of its own (token), answered here.
    Own(u32, Settlement),
}

struct Parsed {
    body: Map<String, Value>,
    /// An embeddings request (its size is checked against the answer Envoy can hold).
    embeddings: Option<opsgate_core::request::EmbeddingsRequest>,
    body_len: usize,
    stream: bool,
    include_usage: bool,
}

pub struct Filter {
    shared: SharedRef,
    phase: Phase,
    endpoint: Option<Endpoint>,
    principal: Option<Principal>,
    power_header: Option<String>,
    parsed: Option<Parsed>,
    /// Shared, so the response callbacks (one per SSE chunk) do not copy it.
    grant: Option<Rc<Grant>>,
    /// Images asked for (the AuthorizeRequest's `images`): what an image call is charged
    /// when the provider's body cannot be read.
    images_requested: u64,
    started: Option<SystemTime>,
    upstream_status: u16,
    /// The response is an SSE stream (decided by its `content-type`, not by the request).
    streaming: bool,
    sse: SseMeter,
    prompt_bytes: u64,
    /// Size of the request body buffered so far (the last body callback's `body_size`).
    body_buffered: usize,
    /// Size of the response body buffered so far (held non-stream or replaced responses).
    response_buffered: usize,
    settled: bool,
    /// The id sent with authorize, which becomes the hold's id.
    request_id: Option<String>,
    method: String,
    route: String,
    /// The request headers ended the stream (no body).
    headers_eos: bool,
    /// The payload `jwt_authn` forwarded for this request's token, read before the
    /// `x-opsgate-*` headers are stripped.
    jwt_payload: Option<Vec<u8>>,
    /// The verified JWT's `exp`, forwarded with its identity.
    jwt_expires_at: Option<i64>,
    /// The credential-cache key of a `uc_` key or session, updated from authorize's answer.
    credential_key: Option<String>,
    authorize_sent: Option<SystemTime>,
    /// The provider refused a key (the caller's own, or the platform's): the response's
    /// body is replaced with this envelope at the end of the stream.
    replacement: Option<ApiError>,
    /// CORS headers for the response: the full set for an allowed origin, else only
    /// `vary: origin` when CORS is configured.
    cors_headers: Vec<(&'static str, String)>,
    /// The response is held for this call's settlement, sent when it completed.
    settle_wait: Option<SettleWait>,
    /// This request's context id (the root context resumes it by this id).
    context_id: u32,
    /// Passed on to the control plane (a non-metered route): its body is bounded and an
    /// error Envoy answers in plain text (control plane down or hung) becomes an envelope.
    to_control_plane: bool,
}

impl Filter {
    pub fn new(shared: SharedRef, context_id: u32) -> Self {
        Filter {
            context_id,
            shared,
            phase: Phase::Pass,
            endpoint: None,
            principal: None,
            power_header: None,
            parsed: None,
            grant: None,
            images_requested: 0,
            started: None,
            upstream_status: 0,
            streaming: false,
            sse: SseMeter::default(),
            prompt_bytes: 0,
            body_buffered: 0,
            response_buffered: 0,
            settled: false,
            request_id: None,
            replacement: None,
            method: String::new(),
            route: String::new(),
            headers_eos: false,
            jwt_payload: None,
            jwt_expires_at: None,
            credential_key: None,
            authorize_sent: None,
            cors_headers: Vec::new(),
            to_control_plane: false,
            settle_wait: None,
        }
    }

    fn count(&self, c: Counter) {
        self.shared.borrow().metrics.inc(c);
    }

    fn reply(&mut self, err: &ApiError) {
        self.count(Counter::for_status(err.status()));
        let reply_headers = headers::error_reply_headers(err);
        let pairs = reply_headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        self.send_local(err.status(), pairs, err.to_json().as_bytes());
    }

    /// `GET`/`HEAD` on the configured health path (`bare`: the path without its query).
    fn is_health_check(&self, bare: &[u8]) -> bool {
        let s = self.shared.borrow();
        let Some(health) = s.config.health_path.as_deref() else {
            return false;
        };
        bare == health.as_bytes()
            && matches!(
                host::header(Headers::Request, ":method").as_deref(),
                Some(b"GET" | b"HEAD")
            )
    }

    /// The gateway's health, without credentials: 200 while the control plane answers the
    /// snapshot polls and a snapshot is loaded, 503 (with `Retry-After`) otherwise.
    fn health(&mut self) {
        let (reachable, snapshot) = {
            let s = self.shared.borrow();
            (
                s.control_plane_reachable(),
                s.snapshot.as_ref().map(|snap| snap.version.clone()),
            )
        };
        let ok = reachable && snapshot.is_some();
        let body = serde_json::json!({
            "status": if ok { "ok" } else { "unavailable" },
            "control_plane": if reachable { "reachable" } else { "unreachable" },
            "snapshot": snapshot,
        })
        .to_string();
        let mut reply = vec![(headers::CONTENT_TYPE, "application/json")];
        if !ok {
            reply.push((headers::RETRY_AFTER, "1"));
        }
        self.send_local(if ok { 200 } else { 503 }, reply, body.as_bytes());
    }

    /// Sends a local reply, with the request's CORS headers (a browser must be able to read
    /// the error).
    fn send_local(&mut self, status: u16, headers: Vec<(&str, &str)>, body: &[u8]) {
        self.phase = Phase::Replied;
        let mut all = headers;
        for (k, v) in &self.cors_headers {
            all.push((k, v.as_str()));
        }
        if host::send_local_reply(status, &all, body).is_err() {
            log(
                LogLevel::Warn,
                &format!("opsgate: the host refused a local reply ({status})"),
            );
        }
    }

    /// A 403 for an origin that may not do this (preflight or cookie CSRF rule).
    fn refuse_origin(&mut self, message: &str, counter: Counter) {
        self.count(counter);
        self.count(Counter::Denied403);
        let body = cors::origin_refused(message);
        self.send_local(
            403,
            vec![(headers::CONTENT_TYPE, headers::JSON)],
            body.as_bytes(),
        );
    }
}

fn starting_up() -> ApiError {
    ApiError::new(
        ErrorKind::Unavailable,
        "The gateway is starting and has not loaded its configuration yet; retry in a moment.",
    )
}

fn cp_unavailable() -> ApiError {
    ApiError::new(
        ErrorKind::Unavailable,
        "The gateway's control plane is unavailable; the call was not made and nothing was charged. Retry with backoff.",
    )
}

/// A request header we read, as text. Not UTF-8: the request is refused — 401 for the
/// credential headers, 400 naming the header otherwise. The bytes are never echoed or logged.
fn request_header(name: &'static str) -> Result<Option<String>, ApiError> {
    host::header_str(Headers::Request, name).map_err(|e| unreadable_header(e.name))
}

fn unreadable_header(name: &str) -> ApiError {
    if name == headers::AUTHORIZATION || name == headers::COOKIE {
        ApiError::invalid_api_key(format!(
            "The {name} header is not valid UTF-8 text, so it holds no credential this gateway accepts."
        ))
    } else {
        // The same parameter name as a bad power level (the guide's spelling).
        let param = if name == headers::X_POWER_LEVEL {
            "X-Power-Level"
        } else {
            name
        };
        ApiError::invalid_param(
            param,
            format!("The {param} header is not valid UTF-8 text."),
        )
    }
}

/// Removes every request header whose (raw) name matches.
fn strip_request_headers(matches: impl Fn(&[u8]) -> bool) {
    let mut names: Vec<Vec<u8>> = host::headers(Headers::Request)
        .into_iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .filter(|k| matches(k))
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        if host::remove_header(Headers::Request, &name).is_err() {
            log(
                LogLevel::Warn,
                "opsgate: the host refused to remove a header",
            );
        }
    }
}

/// The stream property holding the client's path (`%FILTER_STATE(wasm.opsgate_path:PLAIN)%`).
const ACCESS_LOG_PATH: &str = "opsgate_path";

/// Sets a header; a refusal (the map is gone in this phase) is logged, not fatal.
fn set_header(map: Headers, name: &str, value: &str) {
    if host::set_header(map, name, value).is_err() {
        log(
            LogLevel::Debug,
            &format!("opsgate: the host refused to set {name}"),
        );
    }
}

fn remove_header(map: Headers, name: &str) {
    if host::remove_header(map, name).is_err() {
        log(
            LogLevel::Debug,
            &format!("opsgate: the host refused to remove {name}"),
        );
    }
}

fn set_response_body(size: usize, body: &[u8]) {
    if host::set_buffer(Buffer::ResponseBody, 0, size, body).is_err() {
        log(LogLevel::Warn, "opsgate: the host refused a response body");
    }
}

fn resume_request() {
    if host::resume(Stream::Request).is_err() {
        log(
            LogLevel::Warn,
            "opsgate: the host refused to resume the request",
        );
    }
}

/// Test builds only: panics when the request carries `x-opsgate-test-crash`, with the
/// header's value in the panic message (which the panic hook must never log).
#[cfg(feature = "crash-trigger")]
#[allow(clippy::panic)]
fn crash_trigger() {
    if let Some(value) = host::header(Headers::Request, "x-opsgate-test-crash") {
        panic!("crash trigger: {}", String::from_utf8_lossy(&value));
    }
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        ErrorKind::PayloadTooLarge,
        format!("Request body is larger than {max} bytes."),
    )
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        if matches!(self.settle_wait, Some(SettleWait::Own(t, _)) if t == token) {
            let status = callout_status(num_headers);
            let body = host::buffer_or_empty(Buffer::CallResponseBody, 0, body_size);
            self.settle_answered(status, &body);
            return;
        }
        match self.phase {
            Phase::Authorizing { token: expected } if token == expected => {}
            _ => return,
        }
        let status = callout_status(num_headers);
        let body = host::buffer_or_empty(Buffer::CallResponseBody, 0, body_size);
        if let Some(sent) = self.authorize_sent.take() {
            let ms = host::now()
                .duration_since(sent)
                .map_or(0, |d| d.as_millis() as u64);
            self.shared
                .borrow()
                .metrics
                .record(Histogram::AuthorizeLatencyMs, ms);
        }
        let decision = match (status, serde_json::from_slice::<AuthorizeResponse>(&body)) {
            (200, Ok(d)) => d,
            (status, _) => {
                log(
                    LogLevel::Error,
                    &format!("opsgate: authorize failed with status {status}"),
                );
                // The control plane may have placed a hold before failing to answer.
                self.release_unforwarded();
                self.reply(&cp_unavailable());
                return;
            }
        };
        match decision {
            AuthorizeResponse::Allow(grant) => {
                self.remember_credential(None);
                self.forward(*grant)
            }
            AuthorizeResponse::Deny(denial) => {
                let err = ApiError::from(denial);
                self.remember_credential(Some(&err));
                self.reply(&err)
            }
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "crash-trigger")]
        crash_trigger();
        self.take_jwt_payload();
        self.strip_internal_headers();
        // Read as bytes: a path that is not ours passes whatever it holds.
        let path = host::header(Headers::Request, ":path").unwrap_or_default();
        let bare = path.split(|b| *b == b'?').next().unwrap_or_default();
        if self.is_health_check(bare) {
            self.shared.borrow_mut().sync_snapshot();
            self.health();
            return Action::Pause;
        }
        let Some((area, route)) = self.route(&path) else {
            return Action::Continue;
        };
        // Every worker serves the snapshot the last poll (by any worker) brought.
        self.shared.borrow_mut().sync_snapshot();
        // The path as the client sent it (without its query), for Envoy's access log: a
        // metered call's `:path` becomes the provider's.
        let _ = host::set_property(&[ACCESS_LOG_PATH], bare);
        let result = route
            .ok_or_else(|| ApiError::invalid_param(":path", "The request path is not valid UTF-8."))
            .and_then(|route| self.request_headers(area, route, end_of_stream));
        match result {
            Ok(action) => action,
            Err(e) => {
                self.reply(&e);
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.phase {
            Phase::ReadingBody => {}
            Phase::Authorizing { .. } | Phase::Replied => return Action::Pause,
            Phase::Pass if self.to_control_plane => {
                // Streamed on as it comes; bounded like a metered body.
                self.body_buffered = self.body_buffered.saturating_add(body_size);
                let max = self.shared.borrow().config.max_body_bytes;
                if self.body_buffered > max {
                    self.reply(&too_large(max));
                    return Action::Pause;
                }
                return Action::Continue;
            }
            Phase::Pass | Phase::Forwarded => return Action::Continue,
        }
        let max = self.shared.borrow().config.max_body_bytes;
        if body_size > max {
            self.reply(&too_large(max));
            return Action::Pause;
        }
        if !end_of_stream {
            self.body_buffered = body_size;
            return Action::Pause;
        }
        self.body_complete(body_size);
        Action::Pause
    }

    // Trailers end a request body as its last data frame does (HTTP/2 clients may end that
    // way): a metered request is authorized here, never released without the callout.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.phase {
            Phase::ReadingBody => {}
            Phase::Authorizing { .. } | Phase::Replied => return Action::Pause,
            Phase::Pass | Phase::Forwarded => return Action::Continue,
        }
        self.body_complete(self.body_buffered);
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.response_headers(end_of_stream)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.response_body(body_size, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.response_trailers()
    }

    fn on_log(&mut self) {
        self.call_ended()
    }
}
