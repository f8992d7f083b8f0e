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
//! * JWTs: verified here against the JWKS (see [`crate::jwks`]); a verified token is cached
//!   until its `exp` (at most an hour; keyed by its SHA-256, forgotten when the key set
//!   changes), a refused one for the negative TTL. A token
//!   whose `kid` is unknown triggers one JWKS refetch per cooldown, and the request that
//!   triggered it waits for the answer; others in the cooldown get 401.
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

use crate::cors::{self, BrowserContext};
use crate::host::{self, Buffer, Headers, LogLevel, Stream};
use crate::jwks;
use crate::metrics::{Counter, Histogram};
use crate::shared::{
    call_control_plane, callout_status, log, CredentialState, SharedRef, TokenState,
};
use opsgate_core::contract::{
    AuthorizeRequest, AuthorizeResponse, Endpoint, Grant, Identity, Outcome, Principal, Settlement,
    AUTHORIZE_PATH, IDENTITY_AUTH_HEADER, IDENTITY_HEADER,
};
use opsgate_core::credentials::{self, Credential};
use opsgate_core::headers;
use opsgate_core::jwt::{self, JwtError};
use opsgate_core::metering;
use opsgate_core::money::MilliCredits;
use opsgate_core::pricing::Usage;
use opsgate_core::request::{
    apply_platform_key_policy, parse_chat, parse_image, rewrite_for_provider,
};
use opsgate_core::usage::{chat_usage, images_returned, SseMeter};
use opsgate_core::{ApiError, ErrorKind};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest a verified token is cached, whatever its `exp`.
const MAX_TOKEN_CACHE: Duration = Duration::from_secs(3600);

/// Provider response headers that identify the account behind the upstream key.
const PROVIDER_ACCOUNT_HEADERS: [&str; 4] = [
    "openai-organization",
    "openai-project",
    "anthropic-organization-id",
    "set-cookie",
];

/// Headers only the gateway may set (`x-opsgate-cluster`, the identity headers, ...):
/// whatever a client sends under a name with this prefix is removed.
const INTERNAL_HEADER_PREFIX: &str = "x-opsgate-";

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
    /// Waiting for a JWKS refetch (the token's `kid` was unknown).
    AwaitingKeys,
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
    /// A JWKS refetch was sent with this token; the request waits for it.
    AwaitingKeys(u32),
}

struct Parsed {
    body: Map<String, Value>,
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
    /// The request body was complete (this size) while the credential was still pending.
    body_ready: Option<usize>,
    /// The JWT waiting for a JWKS refetch.
    pending_jwt: Option<String>,
    /// The JWKS refetch this request triggered, while it is on its way.
    jwks_call: Option<u32>,
    /// The credential-cache key of a `uc_` key or session, updated from authorize's answer.
    credential_key: Option<String>,
    authorize_sent: Option<SystemTime>,
    /// The provider refused a key (the caller's own, or the platform's): the response's
    /// body is replaced with this envelope at the end of the stream.
    replacement: Option<ApiError>,
    /// CORS headers for the response: the full set for an allowed origin, else only
    /// `vary: origin` when CORS is configured.
    cors_headers: Vec<(&'static str, String)>,
    /// Passed on to the control plane (a non-metered route): its body is bounded and an
    /// error Envoy answers in plain text (control plane down or hung) becomes an envelope.
    to_control_plane: bool,
}

impl Filter {
    pub fn new(shared: SharedRef) -> Self {
        Filter {
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
            body_ready: None,
            pending_jwt: None,
            jwks_call: None,
            credential_key: None,
            authorize_sent: None,
            cors_headers: Vec::new(),
            to_control_plane: false,
        }
    }

    fn count(&self, c: Counter) {
        self.shared.borrow().metrics.inc(c);
    }

    fn pass_to_control_plane(&mut self) {
        self.phase = Phase::Pass;
        self.to_control_plane = true;
    }

    /// An error response that is not JSON (Envoy's own `upstream connect error…`, `upstream
    /// request timeout`, a framework's plain-text 413) is replaced with the envelope for its
    /// status. `provider`: the metered call's provider, `None` for the control plane.
    fn envelope_plain_error(
        &mut self,
        end_of_stream: bool,
        provider: Option<&str>,
    ) -> Option<Action> {
        let status: u16 = host::header_text(Headers::Response, ":status")?
            .parse()
            .ok()?;
        let json = host::header_text(Headers::Response, "content-type")
            .is_some_and(|c| c.to_ascii_lowercase().contains("json"));
        if status < 400 || json || end_of_stream {
            return None;
        }
        let who = match provider {
            Some(p) => format!("The provider {p}"),
            None => "The gateway's control plane".to_string(),
        };
        let err = ApiError::for_plain_status(status, &who);
        set_header(Headers::Response, ":status", &err.status().to_string());
        set_header(Headers::Response, "content-type", "application/json");
        remove_header(Headers::Response, "content-length");
        self.replacement = Some(err);
        Some(Action::Pause)
    }

    /// The body of a response whose envelope replaces it (see `envelope_plain_error`):
    /// buffered to its end, then replaced.
    fn replace_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(err) = self.replacement.as_ref() else {
            return Action::Continue;
        };
        if !end_of_stream {
            self.response_buffered = body_size;
            return Action::Pause;
        }
        set_response_body(body_size, err.to_json().as_bytes());
        Action::Continue
    }

    fn reply(&mut self, err: &ApiError) {
        self.count(Counter::for_status(err.status()));
        let retry = err.retry_after.map(|s| s.to_string());
        let mut headers = vec![("content-type", "application/json")];
        if let Some(r) = retry.as_deref() {
            headers.push(("retry-after", r));
        }
        self.send_local(err.status(), headers, err.to_json().as_bytes());
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
            vec![("content-type", "application/json")],
            body.as_bytes(),
        );
    }

    /// The request's path without its query string, relative to the route prefix or the
    /// admin prefix.
    /// The route is `None` when the path under the prefix is not UTF-8 (refused with 400).
    fn route(&self, path: &[u8]) -> Option<(Area, Option<String>)> {
        let path = path.split(|b| *b == b'?').next().unwrap_or_default();
        // Only paths under `prefix/` are API paths: the bare prefix (with or without a query)
        // is not the filter's, and passes untouched (once stripped of `x-opsgate-*`).
        let under = |prefix: &str| {
            path.strip_prefix(prefix.as_bytes())
                .filter(|rest| rest.starts_with(b"/"))
                .map(|rest| String::from_utf8(rest.to_vec()).ok())
        };
        let s = self.shared.borrow();
        if let Some(rest) = under(&s.config.route_prefix) {
            return Some((Area::Api, rest));
        }
        s.config
            .admin_prefix
            .as_deref()
            .and_then(under)
            .map(|rest| (Area::Admin, rest))
    }

    /// Removes every `x-opsgate-*` header the client sent.
    fn strip_internal_headers(&self) {
        strip_request_headers(|name| name.starts_with(INTERNAL_HEADER_PREFIX.as_bytes()));
    }

    /// A CORS preflight: answered here, 204 for an allowed origin, 403 otherwise.
    fn preflight(&mut self, origin: &str) -> Action {
        let cors = self.shared.borrow().config.cors.clone();
        let Some(cors) = cors else {
            self.refuse_origin(
                "Cross-origin requests are not enabled on this gateway.",
                Counter::CorsRefused,
            );
            return Action::Pause;
        };
        if !cors.allows(origin) {
            self.refuse_origin(
                &format!(
                    "Origin {} is not allowed to call this API from a browser; ask the operator to add it to the gateway's cors.allowed_origins.",
                    origin.trim()
                ),
                Counter::CorsRefused,
            );
            return Action::Pause;
        }
        // Unreadable requested headers ask for nothing.
        let requested = host::header_text(Headers::Request, "access-control-request-headers");
        let headers = cors::preflight_headers(&cors, origin, requested.as_deref());
        self.count(Counter::CorsPreflight);
        self.phase = Phase::Replied;
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if host::send_local_reply(204, &pairs, &[]).is_err() {
            log(
                LogLevel::Warn,
                "opsgate: the host refused a preflight reply",
            );
        }
        Action::Pause
    }

    /// The cookie CSRF rule (see [`crate::cors`]): `Ok(Some(message))` when refused.
    fn cookie_refusal(&self) -> Result<Option<String>, ApiError> {
        let origin = request_header("origin")?;
        let site = request_header("sec-fetch-site")?;
        let own = cors::own_origin(
            request_header(":scheme")?.as_deref(),
            request_header(":authority")?.as_deref(),
        );
        let s = self.shared.borrow();
        Ok(cors::cookie_refusal(
            s.config.cors.as_ref(),
            &BrowserContext {
                method: &self.method,
                origin: origin.as_deref(),
                sec_fetch_site: site.as_deref(),
                own_origin: own.as_deref(),
            },
        ))
    }

    /// A non-metered call verified by a JWT goes to the control plane with the identity
    /// headers.
    fn add_identity(&self, principal: &Principal) {
        let Principal::Jwt {
            subject,
            email,
            roles,
        } = principal
        else {
            return;
        };
        let identity = Identity {
            subject: subject.clone(),
            email: email.clone(),
            roles: roles.clone(),
        };
        let auth = self.shared.borrow().config.identity_auth.clone();
        set_header(Headers::Request, IDENTITY_HEADER, &identity.encode());
        set_header(Headers::Request, IDENTITY_AUTH_HEADER, &auth);
        self.count(Counter::IdentityForwarded);
    }

    fn authenticate(&mut self, cred: &Credential<'_>) -> Authn {
        match cred {
            Credential::ServiceKey(key) => match self.service_principal(key) {
                Ok(p) => Authn::Ready(p),
                Err(e) => Authn::Refused(e),
            },
            Credential::UserKey(key) => {
                let digest = credentials::digest(key);
                self.cached_credential(format!("k:{digest}"), Principal::ApiKey { digest })
            }
            Credential::Session(cookie) => {
                let digest = credentials::digest(cookie);
                self.cached_credential(format!("s:{digest}"), Principal::Session { digest })
            }
            Credential::Jwt(token) => self.jwt_principal(token),
        }
    }

    fn service_principal(&self, key: &str) -> Result<Principal, ApiError> {
        let snapshot = self
            .shared
            .borrow()
            .snapshot
            .clone()
            .ok_or_else(starting_up)?;
        let digest = credentials::digest(key);
        // Compare against every entry so timing does not reveal which one matched.
        let mut found = None;
        for entry in &snapshot.service_keys {
            if credentials::constant_time_eq(entry.digest.as_bytes(), digest.as_bytes()) {
                found = Some(entry.user_id.clone());
            }
        }
        found
            .map(|user_id| Principal::Service { user_id })
            .ok_or_else(|| ApiError::invalid_api_key("Invalid service key"))
    }

    /// A `uc_` key or session: refused locally when the control plane refused it lately,
    /// else passed on (the control plane decides).
    fn cached_credential(&mut self, key: String, principal: Principal) -> Authn {
        let now = host::now();
        let shared = self.shared.clone();
        let mut s = shared.borrow_mut();
        match s.credentials.get(&key, now).cloned() {
            Some(CredentialState::Bad(err)) => {
                s.metrics.inc(Counter::CredentialCacheNegativeHit);
                return Authn::Refused(err);
            }
            Some(CredentialState::Good) => s.metrics.inc(Counter::CredentialCacheHit),
            None => s.metrics.inc(Counter::CredentialCacheMiss),
        }
        self.credential_key = Some(key);
        Authn::Ready(principal)
    }

    /// Remembers what authorize said about this request's `uc_` key or session.
    fn remember_credential(&mut self, refusal: Option<&ApiError>) {
        let Some(key) = self.credential_key.take() else {
            return;
        };
        let now = host::now();
        let mut s = self.shared.borrow_mut();
        match refusal {
            Some(err) if err.kind == ErrorKind::InvalidApiKey => {
                let ttl = s.config.negative_cache_ttl;
                if ttl.is_zero() {
                    s.credentials.remove(&key);
                } else {
                    s.credentials
                        .insert(key, CredentialState::Bad(err.clone()), now + ttl);
                }
            }
            _ => {
                let ttl = s.config.credential_cache_ttl;
                s.credentials.insert(key, CredentialState::Good, now + ttl);
            }
        }
    }

    fn jwt_principal(&mut self, token: &str) -> Authn {
        if self.shared.borrow().config.jwt.is_none() {
            return Authn::Refused(ApiError::invalid_api_key(
                "JWT authentication is not enabled on this gateway; use an API key.",
            ));
        }
        let now = host::now();
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // A cached verdict needs nothing else; only first sight reads the JWT settings.
        let (jwt, keys) = {
            let shared = self.shared.clone();
            let mut s = shared.borrow_mut();
            match s.tokens.get(&hash, now).cloned() {
                Some(TokenState::Verified(p)) => {
                    s.metrics.inc(Counter::JwtCacheHit);
                    return Authn::Ready(p);
                }
                Some(TokenState::Refused(err)) => {
                    s.metrics.inc(Counter::CredentialCacheNegativeHit);
                    return Authn::Refused(err);
                }
                None => {}
            }
            (s.config.jwt.clone(), s.jwks.keys.clone())
        };
        let Some(jwt) = jwt else {
            return Authn::Refused(ApiError::invalid_api_key(
                "JWT authentication is not enabled on this gateway; use an API key.",
            ));
        };
        let Some(keys) = keys else {
            return Authn::Refused(ApiError::new(
                ErrorKind::Unavailable,
                "The gateway has not loaded its identity provider's keys yet; retry in a moment.",
            ));
        };
        let result = jwt::verify(token, &keys, &jwt.validation, unix_secs(now));
        if let Err(JwtError::UnknownKid(_)) = &result {
            if jwks::claim_unknown_kid_refetch(&self.shared, now) {
                match jwks::dispatch(&jwt) {
                    Ok(call) => {
                        self.pending_jwt = Some(token.to_string());
                        return Authn::AwaitingKeys(call);
                    }
                    Err(e) => log(
                        LogLevel::Warn,
                        &format!(
                            "opsgate: JWKS refetch not sent to cluster {}: {e:?}",
                            jwt.jwks_cluster
                        ),
                    ),
                }
            }
            // No refetch now: refused, but not remembered (the keys may change).
            return self.jwt_outcome(&hash, result, now, false);
        }
        self.jwt_outcome(&hash, result, now, true)
    }

    /// Counts and caches a verification result.
    fn jwt_outcome(
        &mut self,
        hash: &[u8; 32],
        result: Result<jwt::Claims, JwtError>,
        now: SystemTime,
        remember_refusal: bool,
    ) -> Authn {
        let mut s = self.shared.borrow_mut();
        match result {
            Ok(claims) => {
                s.metrics.inc(Counter::JwtVerified);
                // Cached until `exp`, and never longer than MAX_TOKEN_CACHE (a token may
                // claim any `exp`; the arithmetic must not overflow either).
                let exp =
                    UNIX_EPOCH.checked_add(Duration::from_secs(claims.expires_at.max(0) as u64));
                let cap = now.checked_add(MAX_TOKEN_CACHE);
                let expires = match (exp, cap) {
                    (Some(e), Some(c)) => Some(e.min(c)),
                    (e, c) => e.or(c),
                };
                let principal = Principal::Jwt {
                    subject: claims.subject,
                    email: claims.email,
                    roles: claims.roles,
                };
                if let Some(expires) = expires.filter(|e| *e > now) {
                    s.tokens
                        .insert(*hash, TokenState::Verified(principal.clone()), expires);
                }
                Authn::Ready(principal)
            }
            Err(e) => {
                s.metrics.inc(Counter::JwtVerifyFailed);
                log(
                    LogLevel::Debug,
                    &format!("opsgate: JWT refused ({})", e.label()),
                );
                let err = ApiError::invalid_api_key(e.message());
                let ttl = s.config.negative_cache_ttl;
                if remember_refusal && !ttl.is_zero() {
                    s.tokens
                        .insert(*hash, TokenState::Refused(err.clone()), now + ttl);
                }
                Authn::Refused(err)
            }
        }
    }

    /// The JWKS refetch this request waited for has answered (or failed): verify again with
    /// whatever keys there are now, then go on.
    fn keys_arrived(&mut self, status: u16, body: &[u8]) {
        let now = host::now();
        jwks::apply(&self.shared, status, body, now);
        let Some(token) = self.pending_jwt.take() else {
            self.reply(&ApiError::new(ErrorKind::Internal, "Internal error."));
            return;
        };
        let (jwt, keys) = {
            let s = self.shared.borrow();
            (s.config.jwt.clone(), s.jwks.keys.clone())
        };
        let (Some(jwt), Some(keys)) = (jwt, keys) else {
            self.reply(&ApiError::new(
                ErrorKind::Unavailable,
                "The gateway could not load its identity provider's keys; retry in a moment.",
            ));
            return;
        };
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let result = jwt::verify(&token, &keys, &jwt.validation, unix_secs(now));
        match self.jwt_outcome(&hash, result, now, true) {
            Authn::Ready(p) => {
                if self.proceed(p) == Action::Continue {
                    resume_request();
                }
            }
            Authn::Refused(e) => self.reply(&e),
            Authn::AwaitingKeys(_) => {}
        }
    }

    /// The credential is established: go on with the request (the rest of the request
    /// headers' checks). Returns the action for the headers callback.
    fn proceed(&mut self, principal: Principal) -> Action {
        if self.endpoint.is_none() {
            // Non-metered: authenticated here, answered by the control plane, which checks
            // the credential again itself (or, for a JWT, trusts the identity header that
            // comes with the internal token).
            self.add_identity(&principal);
            self.count(Counter::Passed);
            self.pass_to_control_plane();
            return Action::Continue;
        }
        if self.method != "POST" {
            let route = self.route.clone();
            self.reply(&ApiError::new(
                ErrorKind::MethodNotAllowed,
                format!("Use POST for {route}."),
            ));
            return Action::Pause;
        }
        if self.headers_eos {
            self.reply(&ApiError::bad_request(
                "Request body is empty: send a JSON object.",
            ));
            return Action::Pause;
        }
        self.principal = Some(principal);
        self.phase = Phase::ReadingBody;
        if let Some(size) = self.body_ready.take() {
            self.body_complete(size);
        }
        Action::Pause
    }

    fn authorize(&mut self, body: &[u8]) -> Result<(), ApiError> {
        let endpoint = self
            .endpoint
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "no endpoint"))?;
        let principal = self
            .principal
            .clone()
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "no principal"))?;
        let power = self.power_header.as_deref();
        let (map, req, stream, include_usage) = match endpoint {
            Endpoint::ChatCompletions => {
                let (map, r) = parse_chat(body, power)?;
                let req = r.authorize_request(principal);
                (map, req, r.stream, r.include_usage)
            }
            Endpoint::ImageGenerations => {
                let (map, r) = parse_image(body, power)?;
                (map, r.authorize_request(principal), false, false)
            }
        };
        self.parsed = Some(Parsed {
            body: map,
            body_len: body.len(),
            stream,
            include_usage,
        });
        self.prompt_bytes = req.prompt_bytes;
        self.images_requested = req.images;
        if let Some(model) = req.model.as_deref() {
            // A model the catalogue does not have is refused here, without a callout.
            let known = self
                .shared
                .borrow()
                .snapshot
                .as_ref()
                .is_none_or(|s| s.knows_model(model));
            if !known {
                return Err(ApiError::new(
                    ErrorKind::NotFound,
                    format!(
                        "The model '{model}' does not exist. GET /api/v1/llm/models lists the models you can use."
                    ),
                ));
            }
        }
        let request_id = new_request_id(host::now());
        let req = AuthorizeRequest {
            request_id: Some(request_id.clone()),
            ..req
        };
        let payload = serde_json::to_vec(&req)
            .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
        let token = {
            let shared = self.shared.borrow();
            call_control_plane(&shared.config, "POST", AUTHORIZE_PATH, Some(&payload))
        }
        .map_err(|e| {
            log(
                LogLevel::Error,
                &format!("opsgate: authorize not sent: {e:?}"),
            );
            cp_unavailable()
        })?;
        // Sent: the control plane may place a hold under this id from now on.
        self.request_id = Some(request_id);
        self.authorize_sent = Some(host::now());
        self.phase = Phase::Authorizing { token };
        Ok(())
    }

    /// The whole request body (`body_size` bytes) is buffered: authorize it.
    fn body_complete(&mut self, body_size: usize) {
        let body = host::buffer_or_empty(Buffer::RequestBody, 0, body_size);
        if let Err(e) = self.authorize(&body) {
            self.reply(&e);
        }
    }

    /// Authorize was sent but the call will not be forwarded (the callout failed, or the
    /// forward did after an Allow): the control plane may have placed a hold under the
    /// request id, so it is released (settled `Failed`). At most once: the id is taken.
    fn release_unforwarded(&mut self) {
        if let Some(id) = self.request_id.take() {
            self.shared.borrow_mut().enqueue(Settlement {
                hold_id: id,
                outcome: Outcome::Failed,
                usage: Usage::default(),
                upstream_status: 0,
                latency_ms: 0,
            });
        }
    }

    fn forward(&mut self, grant: Grant) {
        let Some(mut parsed) = self.parsed.take() else {
            self.release_unforwarded();
            self.reply(&ApiError::new(ErrorKind::Internal, "Internal error."));
            return;
        };
        if !grant.byok {
            // The platform pays and the provider keeps what it is sent under the platform's
            // account: fields that change either are refused or removed (core::request).
            if let Err(e) = apply_platform_key_policy(&mut parsed.body) {
                self.release_unforwarded();
                self.reply(&e);
                return;
            }
        }
        let body = rewrite_for_provider(
            parsed.body,
            &grant.upstream.model,
            grant.max_tokens,
            parsed.stream,
            grant.upstream.completion_limit,
        );
        // Only what the provider needs reaches it (core::headers): an allow-list on the
        // platform's key, everything but cookies and proxy credentials on the caller's own.
        let byok = grant.byok;
        strip_request_headers(|name| !headers::reaches_provider(name, byok));
        // Envoy's route selection needs `x-forwarded-proto`: it is set again, from the
        // connection's own scheme rather than anything the client said.
        let scheme = match host::header_text(Headers::Request, ":scheme").as_deref() {
            Some("https") => "https",
            _ => "http",
        };
        // The request must leave with the provider's credential and nothing of the client's
        // in its place: if the host refuses any of these, the call is not made.
        let rewritten = [
            host::set_header(Headers::Request, "x-forwarded-proto", scheme),
            host::set_buffer(Buffer::RequestBody, 0, parsed.body_len, &body),
            host::set_header(Headers::Request, ":path", &grant.upstream.path),
            host::set_header(Headers::Request, ":authority", &grant.upstream.authority),
            host::set_header(
                Headers::Request,
                "authorization",
                &format!("Bearer {}", grant.upstream.api_key),
            ),
            host::set_header(
                Headers::Request,
                "x-power-level",
                grant.rate.power_level.as_str(),
            ),
            // Clients (the OpenAI SDKs, curl --compressed, browsers) send
            // `accept-encoding: gzip`; the filter must read `usage` and `[DONE]` in plain text
            // (a compressor filter may still compress towards the client).
            host::remove_header(Headers::Request, "accept-encoding"),
            host::remove_header(Headers::Request, "content-length"),
            host::set_header(
                Headers::Request,
                "x-opsgate-cluster",
                &grant.upstream.cluster,
            ),
        ];
        if let Some(Err(e)) = rewritten.iter().find(|r| r.is_err()) {
            log(
                LogLevel::Error,
                &format!("opsgate: the host refused to rewrite the request ({e:?}); not forwarded"),
            );
            self.release_unforwarded();
            self.reply(&ApiError::new(
                ErrorKind::Internal,
                "The gateway could not prepare the provider request; nothing was charged.",
            ));
            return;
        }
        // Whether the response is a stream is decided by its content-type (a `stream: true`
        // request answered with plain JSON is metered from its `usage`).
        self.sse.drop_usage_chunk = parsed.stream && !parsed.include_usage;
        self.started = Some(host::now());
        self.grant = Some(Rc::new(grant));
        // Forwarded: the hold is settled through the grant from now on.
        self.request_id = None;
        self.phase = Phase::Forwarded;
        self.count(Counter::Allowed);
        resume_request();
    }

    fn rate_limit_headers(&self, grant: &Grant) {
        if let Some(p) = grant.period {
            set_header(Headers::Response, "x-ratelimit-limit", &p.limit.to_string());
            set_header(
                Headers::Response,
                "x-ratelimit-remaining",
                &p.remaining.to_string(),
            );
            set_header(Headers::Response, "x-ratelimit-reset", &p.reset.to_string());
        }
        if let Some(d) = grant.daily {
            set_header(
                Headers::Response,
                "x-ratelimit-limit-day",
                &d.limit.to_string(),
            );
            set_header(
                Headers::Response,
                "x-ratelimit-remaining-day",
                &d.remaining.to_string(),
            );
            set_header(
                Headers::Response,
                "x-ratelimit-reset-day",
                &d.reset.to_string(),
            );
        }
    }

    /// The cost of `usage` for this call (core::metering::charge).
    fn cost_of(grant: &Grant, usage: &Usage) -> MilliCredits {
        metering::charge(&grant.rate, usage, grant.hold_mc, grant.byok)
    }

    fn settle(&mut self, outcome: Outcome, usage: Usage) {
        if self.settled {
            return;
        }
        let Some(grant) = self.grant.as_ref() else {
            return;
        };
        self.settled = true;
        let latency_ms = self
            .started
            .and_then(|t| host::now().duration_since(t).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let settlement = Settlement {
            hold_id: grant.hold_id.clone(),
            outcome,
            usage,
            upstream_status: self.upstream_status,
            latency_ms,
        };
        self.shared.borrow_mut().enqueue(settlement);
    }

    /// The end of an SSE stream (end of stream, `[DONE]` or trailers): `Success` when the
    /// provider's usage chunk was seen, else `Partial`, bounded by what was seen.
    fn settle_stream(&mut self) {
        let usage = self.sse.partial_usage(self.prompt_bytes);
        self.settle(metering::stream_outcome(self.sse.usage.is_some()), usage);
    }

    /// The whole response body of a held (non-stream) or replaced response is buffered
    /// (`body_size` bytes), at its last data frame or at its trailers: the refused key's
    /// envelope replaces it, or the cost headers are set on the held headers and the call is
    /// settled.
    fn response_complete(&mut self, grant: &Grant, body_size: usize) {
        if let Some(err) = self.replacement.as_ref() {
            set_response_body(body_size, err.to_json().as_bytes());
            return;
        }
        let body = host::buffer_or_empty(Buffer::ResponseBody, 0, body_size);
        let endpoint = self.endpoint.unwrap_or(Endpoint::ChatCompletions);
        let reported = match endpoint {
            Endpoint::ImageGenerations => images_returned(&body).map(|images| Usage {
                images,
                ..Usage::default()
            }),
            Endpoint::ChatCompletions => chat_usage(&body),
        };
        let usage = reported.unwrap_or_else(|| {
            log(
                LogLevel::Warn,
                "opsgate: provider response without a readable usage; charging the bound held for",
            );
            metering::usage_without_report(
                endpoint,
                self.prompt_bytes,
                grant.max_tokens,
                self.images_requested,
            )
        });
        let cost = Self::cost_of(grant, &usage);
        set_header(
            Headers::Response,
            "x-cost-incurred",
            &cost.to_credits_string(),
        );
        set_header(
            Headers::Response,
            "x-credits-remaining",
            &metering::balance_after(grant.balance_mc, grant.hold_mc, cost).to_credits_string(),
        );
        self.settle(Outcome::Success, usage);
    }

    /// What the call cost, as the client sees it at the end of a stream.
    fn cost_info<'g>(grant: &'g Grant, usage: &Usage) -> CostInfo<'g> {
        let cost = Self::cost_of(grant, usage);
        CostInfo {
            provider: &grant.provider,
            model: &grant.model,
            cost: cost.to_credits_string(),
            credits_remaining: metering::balance_after(grant.balance_mc, grant.hold_mc, cost)
                .to_credits_string(),
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
        }
    }

    /// The SSE comment line before `[DONE]` that carries the cost; SSE parsers, and so the
    /// OpenAI SDKs, skip comments, so clients that do not look for it are unaffected.
    fn cost_event(grant: &Grant, usage: Option<Usage>) -> Vec<u8> {
        let info = Self::cost_info(grant, &usage.unwrap_or_default());
        let json = serde_json::to_string(&info).unwrap_or_default();
        format!(": opsgate {json}\n\n").into_bytes()
    }
}

/// The cost of a streamed call, as sent to the client.
#[derive(serde::Serialize)]
struct CostInfo<'g> {
    provider: &'g str,
    model: &'g str,
    cost: String,
    credits_remaining: String,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// A unique id for one call: the time and 64 random bits (std seeds its hash keys from
/// WASI's random source).
fn new_request_id(now: SystemTime) -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("req_{nanos:016x}{random:016x}")
}

fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
    if name == "authorization" || name == "cookie" {
        ApiError::invalid_api_key(format!(
            "The {name} header is not valid UTF-8 text, so it holds no credential this gateway accepts."
        ))
    } else {
        // The same parameter name as a bad power level (the guide's spelling).
        let param = if name == "x-power-level" {
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
        if self.jwks_call == Some(token) {
            self.jwks_call = None;
            let status = callout_status(num_headers);
            let body = if status == 200 {
                host::buffer_or_empty(Buffer::CallResponseBody, 0, body_size)
            } else {
                Vec::new()
            };
            if matches!(self.phase, Phase::AwaitingKeys) {
                self.keys_arrived(status, &body);
            } else {
                // The request was answered meanwhile (e.g. 413): the refetch spent the
                // cooldown, so its keys still serve everyone else.
                let now = host::now();
                jwks::apply(&self.shared, status, &body, now);
            }
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

impl Filter {
    /// The request headers of a request under one of our prefixes. `Err`: answered with
    /// that envelope (a header we read is not UTF-8, the credential is malformed, ...).
    fn request_headers(
        &mut self,
        area: Area,
        route: String,
        end_of_stream: bool,
    ) -> Result<Action, ApiError> {
        let method = request_header(":method")?.unwrap_or_default();
        let origin = request_header("origin")?.filter(|o| !o.trim().is_empty());
        if method == "OPTIONS" {
            let preflight = request_header("access-control-request-method")?.is_some();
            return Ok(match origin {
                Some(origin) if preflight => self.preflight(&origin),
                // Not a preflight: passed on, without credentials, as before.
                _ => Action::Continue,
            });
        }
        self.cors_headers = {
            let s = self.shared.borrow();
            match (s.config.cors.as_ref(), origin.as_deref()) {
                (Some(c), Some(o)) if c.allows(o) => cors::response_headers(c, o),
                // The answer depends on the origin: caches must keep them apart.
                (Some(_), _) => vec![("vary", "origin".to_string())],
                (None, _) => Vec::new(),
            }
        };
        let endpoint = match (area, route.as_str()) {
            (Area::Api, "/chat/completions") => Some(Endpoint::ChatCompletions),
            (Area::Api, "/image/generations" | "/images/generations") => {
                Some(Endpoint::ImageGenerations)
            }
            _ => None,
        };
        self.endpoint = endpoint;
        self.method = method;
        self.route = route;
        self.headers_eos = end_of_stream;
        // A body announced larger than any we accept is refused before it is read.
        let max = self.shared.borrow().config.max_body_bytes;
        let announced = host::header_text(Headers::Request, "content-length")
            .and_then(|l| l.trim().parse::<u64>().ok());
        if announced.is_some_and(|l| l > max as u64) {
            return Err(too_large(max));
        }
        self.power_header = request_header("x-power-level")?;
        let auth = request_header("authorization")?;
        let cookie = request_header("cookie")?;
        let extracted = credentials::extract(auth.as_deref(), cookie.as_deref());
        if area == Area::Admin {
            // The admin token (any bearer that is not a JWT) is the control plane's to check.
            let bearer = auth
                .as_deref()
                .and_then(|a| a.trim().split_once(' '))
                .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
            if bearer && !matches!(extracted, Ok(Credential::Jwt(_))) {
                self.count(Counter::Passed);
                self.pass_to_control_plane();
                return Ok(Action::Continue);
            }
        }
        if matches!(extracted, Ok(Credential::Session(_))) {
            if let Some(why) = self.cookie_refusal()? {
                self.refuse_origin(&why, Counter::CookieOriginRefused);
                return Ok(Action::Pause);
            }
        }
        let authn = match extracted {
            Ok(cred) => self.authenticate(&cred),
            Err(e) => Authn::Refused(ApiError::invalid_api_key(e.message())),
        };
        match authn {
            Authn::Ready(principal) => Ok(self.proceed(principal)),
            Authn::Refused(e) => Err(e),
            Authn::AwaitingKeys(token) => {
                self.phase = Phase::AwaitingKeys;
                self.jwks_call = Some(token);
                Ok(Action::Pause)
            }
        }
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "crash-trigger")]
        crash_trigger();
        self.strip_internal_headers();
        // Read as bytes: a path that is not ours passes whatever it holds.
        let path = host::header(Headers::Request, ":path").unwrap_or_default();
        let Some((area, route)) = self.route(&path) else {
            return Action::Continue;
        };
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
            Phase::AwaitingKeys => {
                // Buffered until the credential is settled; a metered body is bounded.
                let max = self.shared.borrow().config.max_body_bytes;
                if body_size > max {
                    self.reply(&too_large(max));
                } else if end_of_stream {
                    self.body_ready = Some(body_size);
                } else {
                    self.body_buffered = body_size;
                }
                return Action::Pause;
            }
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

    // Fix: an HTTP/2 client can end the request with trailers instead of an end-of-stream
    // data frame. The SDK's default `Continue` here released the buffered request to the
    // router without the authorize callout (fail open); the body is complete now, so it is
    // handled like one that ended with its last data frame.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.phase {
            Phase::ReadingBody => {}
            Phase::AwaitingKeys => {
                self.body_ready = Some(self.body_buffered);
                return Action::Pause;
            }
            Phase::Authorizing { .. } | Phase::Replied => return Action::Pause,
            Phase::Pass | Phase::Forwarded => return Action::Continue,
        }
        self.body_complete(self.body_buffered);
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        for (k, v) in &self.cors_headers {
            if *k == "vary" {
                // Keep what the upstream varies on.
                let vary = match host::header_text(Headers::Response, "vary") {
                    Some(old)
                        if !old
                            .split(',')
                            .any(|t| t.trim().eq_ignore_ascii_case("origin")) =>
                    {
                        format!("{old}, {v}")
                    }
                    Some(old) => old,
                    None => v.clone(),
                };
                set_header(Headers::Response, "vary", &vary);
            } else {
                set_header(Headers::Response, k, v);
            }
        }
        let Some(grant) = self.grant.clone() else {
            if self.to_control_plane {
                return self
                    .envelope_plain_error(end_of_stream, None)
                    .unwrap_or(Action::Continue);
            }
            return Action::Continue;
        };
        self.upstream_status = host::header_text(Headers::Response, ":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        // Headers that name the account behind the key (the platform's, or the caller's own)
        // stay at the gateway; so do provider-set cookies.
        for h in PROVIDER_ACCOUNT_HEADERS {
            remove_header(Headers::Response, h);
        }
        set_header(Headers::Response, "x-provider-used", &grant.provider);
        set_header(Headers::Response, "x-model-used", &grant.model);
        self.rate_limit_headers(&grant);
        if !(200..300).contains(&self.upstream_status) {
            // The provider failed: nothing is charged, the quota slot is released.
            self.settle(Outcome::Failed, Usage::default());
            if matches!(self.upstream_status, 401 | 403) {
                // A key was refused. The provider's body is replaced: it may carry a masked
                // key or org ids. The caller's own key: say so, naming the provider (never
                // retried on platform credits). The platform's key: the gateway's fault.
                let err = key_refused(&grant, self.upstream_status);
                set_header(Headers::Response, ":status", &err.status().to_string());
                set_header(Headers::Response, "content-type", "application/json");
                remove_header(Headers::Response, "content-length");
                self.replacement = Some(err);
                return if end_of_stream {
                    Action::Continue
                } else {
                    Action::Pause
                };
            }
            // Envoy's own replies (provider unreachable, timed out) are plain text.
            return self
                .envelope_plain_error(end_of_stream, Some(&grant.provider))
                .unwrap_or(Action::Continue);
        }
        // A content-type that is not text is no stream.
        self.streaming = host::header_text(Headers::Response, "content-type")
            .is_some_and(|c| c.starts_with("text/event-stream"));
        if self.streaming {
            remove_header(Headers::Response, "content-length");
            return Action::Continue;
        }
        if end_of_stream {
            self.settle(Outcome::Success, Usage::default());
            return Action::Continue;
        }
        // Hold the headers until the body tells what the call cost.
        Action::Pause
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(grant) = self.grant.clone() else {
            return self.replace_body(body_size, end_of_stream);
        };
        if self.replacement.is_none() && !(200..300).contains(&self.upstream_status) {
            return Action::Continue;
        }
        if self.replacement.is_none() && self.streaming {
            let chunk = host::buffer_or_empty(Buffer::ResponseBody, 0, body_size);
            let out = self.sse.process_annotated(
                &chunk,
                end_of_stream,
                |m| Self::cost_event(&grant, m.usage),
                |u| serde_json::to_value(Self::cost_info(&grant, u)).ok(),
            );
            set_response_body(body_size, &out);
            if end_of_stream || self.sse.done {
                self.settle_stream();
            }
            return Action::Continue;
        }
        if !end_of_stream {
            self.response_buffered = body_size;
            return Action::Pause;
        }
        self.response_complete(&grant, body_size);
        Action::Continue
    }

    // An HTTP/2 (or gRPC-style) upstream can end the response with trailers instead of an
    // end-of-stream data frame: the response is finished here exactly as at the end of its
    // body (the SDK's default `Continue` would release a held body without its cost headers,
    // a refused key's body unreplaced, and leave the settlement to `on_log`).
    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(grant) = self.grant.clone() else {
            return self.replace_body(self.response_buffered, true);
        };
        if self.replacement.is_none() && !(200..300).contains(&self.upstream_status) {
            return Action::Continue;
        }
        if self.replacement.is_none() && self.streaming {
            // Every chunk was passed on as it came; a line still incomplete cannot be added to
            // the body from here (a well-formed stream ends with a blank line, so there is
            // none), but what it says is metered.
            let rest = self.sse.process_annotated(
                &[],
                true,
                |m| Self::cost_event(&grant, m.usage),
                |u| serde_json::to_value(Self::cost_info(&grant, u)).ok(),
            );
            if !rest.is_empty() {
                log(
                    LogLevel::Debug,
                    &format!(
                        "opsgate: stream ended with trailers after an incomplete line ({} bytes)",
                        rest.len()
                    ),
                );
            }
            self.settle_stream();
            return Action::Continue;
        }
        self.response_complete(&grant, self.response_buffered);
        Action::Continue
    }

    fn on_log(&mut self) {
        // The stream is over, however it ended: whatever is still open is settled now.
        if matches!(self.phase, Phase::Authorizing { .. }) {
            // The client left before the decision arrived: release whatever it holds.
            self.release_unforwarded();
            return;
        }
        if self.settled {
            return;
        }
        let Some(max_tokens) = self.grant.as_ref().map(|g| g.max_tokens) else {
            return;
        };
        // Forwarded but never settled: core::metering decides from how far the call got.
        let (outcome, usage) = metering::unfinished_call(&metering::Unfinished {
            upstream_status: self.upstream_status,
            streaming: self.streaming,
            prompt_bytes: self.prompt_bytes,
            max_tokens,
            images_requested: self.images_requested,
            streamed: self.sse.partial_usage(self.prompt_bytes),
        });
        self.settle(outcome, usage);
    }
}

/// The envelope that replaces a provider's 401/403 body: the caller's own key (BYOK) was
/// refused, or the gateway's own credentials were.
fn key_refused(grant: &Grant, status: u16) -> ApiError {
    if grant.byok {
        ApiError::new(
            ErrorKind::ByokKeyRejected,
            format!(
                "Your own {p} key was rejected by {p} (HTTP {status}). Update it with POST /api/v1/llm/byok/keys, or delete it to use platform credits; nothing was charged.",
                p = grant.provider,
            ),
        )
    } else {
        ApiError::new(
            ErrorKind::UpstreamError,
            format!(
                "The provider {p} refused the gateway's own credentials (HTTP {status}); this is on the gateway's side, not your key. Nothing was charged.",
                p = grant.provider,
            ),
        )
    }
}
