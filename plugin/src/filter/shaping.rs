//! The request side: which surface a path is for, CORS preflights, the request headers'
//! checks, the body's validation into an authorize request, and the rewrite that forwards an
//! allowed call to its provider (core::request, core::headers).

use super::*;

impl Filter {
    /// The request's path without its query string, relative to the route prefix or the
    /// admin prefix.
    /// The route is `None` when the path under the prefix is not UTF-8 (refused with 400).
    pub(super) fn route(&self, path: &[u8]) -> Option<(Area, Option<String>)> {
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
    pub(super) fn strip_internal_headers(&self) {
        strip_request_headers(|name| name.starts_with(headers::INTERNAL_PREFIX.as_bytes()));
    }

    /// A CORS preflight: answered here, 204 for an allowed origin, 403 otherwise.
    pub(super) fn preflight(&mut self, origin: &str) -> Action {
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
        let requested =
            host::header_text(Headers::Request, headers::ACCESS_CONTROL_REQUEST_HEADERS);
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

    /// The request headers of a request under one of our prefixes. `Err`: answered with
    /// that envelope (a header we read is not UTF-8, the credential is malformed, ...).
    pub(super) fn request_headers(
        &mut self,
        area: Area,
        route: String,
        end_of_stream: bool,
    ) -> Result<Action, ApiError> {
        let method = request_header(":method")?.unwrap_or_default();
        let origin = request_header(headers::ORIGIN)?.filter(|o| !o.trim().is_empty());
        if method == "OPTIONS" {
            let preflight = request_header(headers::ACCESS_CONTROL_REQUEST_METHOD)?.is_some();
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
            (Area::Api, "/embeddings") => Some(Endpoint::Embeddings),
            _ => None,
        };
        self.endpoint = endpoint;
        self.method = method;
        self.route = route;
        self.headers_eos = end_of_stream;
        // A body announced larger than any we accept is refused before it is read.
        let max = self.shared.borrow().config.max_body_bytes;
        let announced = host::header_text(Headers::Request, headers::CONTENT_LENGTH)
            .and_then(|l| l.trim().parse::<u64>().ok());
        if announced.is_some_and(|l| l > max as u64) {
            return Err(too_large(max));
        }
        self.power_header = request_header(headers::X_POWER_LEVEL)?;
        let auth = request_header(headers::AUTHORIZATION)?;
        let cookie = request_header(headers::COOKIE)?;
        let extracted = credentials::extract(auth.as_deref(), cookie.as_deref());
        if area == Area::Admin {
            // The admin token (any bearer that is not a JWT) is the control plane's to check.
            let bearer = auth
                .as_deref()
                .and_then(|a| a.trim().split_once(' '))
                .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
            // So is the admin console's session cookie, when nothing else is presented (the
            // control plane applies the console's CSRF rule).
            let console = auth.is_none()
                && cookie.as_deref().is_some_and(|c| {
                    credentials::cookie_value(c, credentials::CONSOLE_COOKIE)
                        .is_some_and(|v| !v.is_empty())
                });
            if (bearer && !matches!(extracted, Ok(Credential::Jwt(_)))) || console {
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
        }
    }

    /// The credential is established: go on with the request (the rest of the request
    /// headers' checks). Returns the action for the headers callback.
    pub(super) fn proceed(&mut self, principal: Principal) -> Action {
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
        Action::Pause
    }

    pub(super) fn authorize(&mut self, body: &[u8]) -> Result<(), ApiError> {
        let endpoint = self
            .endpoint
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "no endpoint"))?;
        let principal = self
            .principal
            .clone()
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "no principal"))?;
        let power = self.power_header.as_deref();
        let mut embeddings = None;
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
            Endpoint::Embeddings => {
                let (map, r) = parse_embeddings(body, power)?;
                // With `dimensions` given, an answer too large is known before any callout.
                let max_response = self.shared.borrow().config.max_response_bytes;
                if let Some(e) = r.too_large_for(None, max_response) {
                    return Err(e);
                }
                let req = r.authorize_request(principal);
                embeddings = Some(r);
                (map, req, false, false)
            }
        };
        self.parsed = Some(Parsed {
            embeddings,
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
        if self.shared.borrow().settlements_behind() {
            // Finished calls' settlements come first: a new call waits for them.
            self.shared
                .borrow()
                .metrics
                .inc(Counter::SettleBackpressure);
            return Err(ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    ErrorKind::Unavailable,
                    "The gateway is catching up on settling finished calls; retry shortly.",
                )
            });
        }
        let request_id = new_request_id(host::now());
        let req = AuthorizeRequest {
            request_id: Some(request_id.clone()),
            ..req
        };
        let payload = serde_json::to_vec(&req)
            .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?;
        // The call's id names it everywhere: Envoy's access log (the request header, set
        // here, replacing whatever the client sent), the control plane's log line (the
        // callout's header) and the provider's request (set again in `forward`).
        let _ = host::set_header(Headers::Request, headers::X_REQUEST_ID, &request_id);
        let token = {
            let shared = self.shared.borrow();
            call_control_plane_within(
                &shared.config,
                "POST",
                AUTHORIZE_PATH,
                Some(&payload),
                shared.config.cp_timeout,
                Some(&request_id),
            )
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
    pub(super) fn body_complete(&mut self, body_size: usize) {
        let body = host::buffer_or_empty(Buffer::RequestBody, 0, body_size);
        if let Err(e) = self.authorize(&body) {
            self.reply(&e);
        }
    }

    /// Authorize was sent but the call will not be forwarded (the callout failed, or the
    /// forward did after an Allow): the control plane may have placed a hold under the
    /// request id, so it is released (settled `Failed`). At most once: the id is taken.
    pub(super) fn release_unforwarded(&mut self) {
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

    pub(super) fn forward(&mut self, grant: Grant) {
        let Some(mut parsed) = self.parsed.take() else {
            self.release_unforwarded();
            self.reply(&ApiError::new(ErrorKind::Internal, "Internal error."));
            return;
        };
        let embeddings = parsed.embeddings.is_some();
        if let Some(r) = parsed.embeddings.as_ref() {
            // An answer larger than Envoy can hold would reach the client as a bare 500 after
            // the provider was paid: refused now, nothing charged (core::request).
            let max_response = self.shared.borrow().config.max_response_bytes;
            if let Some(e) = r.too_large_for(grant.dimensions, max_response) {
                self.release_unforwarded();
                self.reply(&e);
                return;
            }
        }
        if !grant.byok && !embeddings {
            // The platform pays and the provider keeps what it is sent under the platform's
            // account: fields that change either are refused or removed (core::request).
            if let Err(e) = apply_platform_key_policy(&mut parsed.body) {
                self.release_unforwarded();
                self.reply(&e);
                return;
            }
        }
        let body = if embeddings {
            // On the platform's key only the embeddings API's own fields pass (core::request).
            rewrite_embeddings_for_provider(parsed.body, &grant.upstream.model, grant.byok)
        } else {
            rewrite_for_provider(
                parsed.body,
                &grant.upstream.model,
                grant.max_tokens,
                parsed.stream,
                grant.upstream.completion_limit,
                grant.upstream.takes_temperature,
            )
        };
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
        let request_id = self.request_id.clone().unwrap_or_default();
        let rewritten = [
            host::set_header(Headers::Request, headers::X_FORWARDED_PROTO, scheme),
            host::set_header(Headers::Request, headers::X_REQUEST_ID, &request_id),
            host::set_buffer(Buffer::RequestBody, 0, parsed.body_len, &body),
            host::set_header(Headers::Request, ":path", &grant.upstream.path),
            host::set_header(Headers::Request, ":authority", &grant.upstream.authority),
            host::set_header(
                Headers::Request,
                headers::AUTHORIZATION,
                &format!("Bearer {}", grant.upstream.api_key),
            ),
            host::set_header(
                Headers::Request,
                headers::X_POWER_LEVEL,
                grant.rate.power_level.as_str(),
            ),
            // Clients (the OpenAI SDKs, curl --compressed, browsers) send
            // `accept-encoding: gzip`; the filter must read `usage` and `[DONE]` in plain text
            // (a compressor filter may still compress towards the client).
            host::remove_header(Headers::Request, headers::ACCEPT_ENCODING),
            host::remove_header(Headers::Request, headers::CONTENT_LENGTH),
            host::set_header(
                Headers::Request,
                headers::X_OPSGATE_CLUSTER,
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
        // The client sees the catalogue id it can send back, not the provider's.
        self.sse.model = Some(grant.model.clone());
        self.started = Some(host::now());
        self.grant = Some(Rc::new(grant));
        // Forwarded: the hold is settled through the grant from now on.
        self.request_id = None;
        self.phase = Phase::Forwarded;
        self.count(Counter::Allowed);
        resume_request();
    }

    pub(super) fn pass_to_control_plane(&mut self) {
        self.phase = Phase::Pass;
        self.to_control_plane = true;
    }
}

/// A unique id for one call: the time and 64 random bits (std seeds its hash keys from
/// WASI's random source).
pub(super) fn new_request_id(now: SystemTime) -> String {
    let nanos = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let random = crate::shared::random_u64();
    format!("req_{nanos:016x}{random:016x}")
}
