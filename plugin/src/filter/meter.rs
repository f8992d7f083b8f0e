//! The response side: provider headers, the cost of a plain or streamed response
//! (core::metering, core::usage), the settlement of every forwarded call however it ends,
//! and the envelopes that replace plain-text errors and refused keys.

use super::*;

impl Filter {
    pub(super) fn response_headers(&mut self, end_of_stream: bool) -> Action {
        for (k, v) in &self.cors_headers {
            if *k == headers::VARY {
                // Keep what the upstream varies on.
                let vary = match host::header_text(Headers::Response, headers::VARY) {
                    Some(old)
                        if !old
                            .split(',')
                            .any(|t| t.trim().eq_ignore_ascii_case(headers::ORIGIN)) =>
                    {
                        format!("{old}, {v}")
                    }
                    Some(old) => old,
                    None => v.clone(),
                };
                set_header(Headers::Response, headers::VARY, &vary);
            } else {
                set_header(Headers::Response, k, v);
            }
        }
        let status = response_status();
        let Some(grant) = self.grant.clone() else {
            if self.to_control_plane {
                return self
                    .envelope_plain_error(status, end_of_stream, None)
                    .unwrap_or(Action::Continue);
            }
            return Action::Continue;
        };
        self.upstream_status = status;
        // Headers that name the account behind the key (the platform's, or the caller's own)
        // stay at the gateway; so do provider-set cookies.
        for h in headers::PROVIDER_ACCOUNT {
            remove_header(Headers::Response, h);
        }
        // The client gets the call's id (the one every log names); the provider's own, when
        // it sent one, under its own name.
        if let Some(theirs) = host::header_text(Headers::Response, headers::X_REQUEST_ID) {
            set_header(Headers::Response, headers::X_PROVIDER_REQUEST_ID, &theirs);
        }
        set_header(Headers::Response, headers::X_REQUEST_ID, &grant.hold_id);
        for (name, value) in headers::provider_headers(&grant)
            .into_iter()
            .chain(headers::rate_limit_headers(&grant))
        {
            set_header(Headers::Response, name, &value);
        }
        if !(200..300).contains(&self.upstream_status) {
            // The provider failed: nothing is charged, the quota slot is released.
            self.settle(Outcome::Failed, Usage::default());
            if matches!(self.upstream_status, 401 | 403) {
                // A key was refused. The provider's body is replaced: it may carry a masked
                // key or org ids. The caller's own key: say so, naming the provider (never
                // retried on platform credits). The platform's key: the gateway's fault.
                let err = key_refused(&grant, status);
                return self.replace_response(err, end_of_stream);
            }
            // Envoy's own replies (provider unreachable, timed out) are plain text.
            return self
                .envelope_plain_error(status, end_of_stream, Some(&grant.provider))
                .unwrap_or(Action::Continue);
        }
        // A content-type that is not text is no stream.
        self.streaming = host::header_text(Headers::Response, headers::CONTENT_TYPE)
            .is_some_and(|c| c.starts_with("text/event-stream"));
        if self.streaming {
            remove_header(Headers::Response, headers::CONTENT_LENGTH);
            return Action::Continue;
        }
        if end_of_stream {
            self.settle(Outcome::Success, Usage::default());
            return Action::Continue;
        }
        // Hold the headers until the body tells what the call cost.
        Action::Pause
    }

    pub(super) fn response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(grant) = self.grant.clone() else {
            return self.replace_body(body_size, end_of_stream);
        };
        if self.replacement.is_none() && !(200..300).contains(&self.upstream_status) {
            return Action::Continue;
        }
        if self.replacement.is_none() && self.streaming {
            if self.waits_for_settlement() {
                // The stream's end is held for its settlement: whatever else arrives waits in
                // Envoy's buffer, untouched, and leaves with it.
                return Action::Pause;
            }
            let chunk = host::buffer_or_empty(Buffer::ResponseBody, 0, body_size);
            let out = self.sse.process_annotated(
                &chunk,
                end_of_stream,
                |m| Self::cost_event(&grant, m.usage),
                |u| serde_json::to_value(Self::cost_info(&grant, u)).ok(),
            );
            set_response_body(body_size, &out);
            if end_of_stream || self.sse.done {
                // `[DONE]` (and the cost comment before it) leave once the call is settled.
                return self.settle_stream_and_wait();
            }
            return Action::Continue;
        }
        if !end_of_stream {
            self.response_buffered = body_size;
            return Action::Pause;
        }
        self.response_complete(&grant, body_size)
    }

    // An HTTP/2 (or gRPC-style) upstream can end the response with trailers instead of an
    // end-of-stream data frame: the response is finished here exactly as at the end of its
    // body (the SDK's default `Continue` would release a held body without its cost headers,
    // a refused key's body unreplaced, and leave the settlement to `on_log`).
    pub(super) fn response_trailers(&mut self) -> Action {
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
            return self.settle_stream_and_wait();
        }
        self.response_complete(&grant, self.response_buffered)
    }

    pub(super) fn call_ended(&mut self) {
        // The client left while its settlement was on its way: it is queued again (settling
        // is idempotent, so a second delivery changes nothing).
        match self.settle_wait.take() {
            Some(SettleWait::Own(_, settlement)) => self.shared.borrow_mut().enqueue(settlement),
            Some(SettleWait::Batched) => self.shared.borrow_mut().held_call_ended(self.context_id),
            None => {}
        }
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

    /// An error response that is not JSON (Envoy's own `upstream connect error…`, `upstream
    /// request timeout`, a framework's plain-text 413) is replaced with the envelope for its
    /// status. `provider`: the metered call's provider, `None` for the control plane.
    fn envelope_plain_error(
        &mut self,
        status: u16,
        end_of_stream: bool,
        provider: Option<&str>,
    ) -> Option<Action> {
        let json = host::header_text(Headers::Response, headers::CONTENT_TYPE)
            .is_some_and(|c| c.to_ascii_lowercase().contains("json"));
        if status < 400 || json || end_of_stream {
            return None;
        }
        let who = match provider {
            Some(p) => format!("The provider {p}"),
            None => "The gateway's control plane".to_string(),
        };
        Some(self.replace_response(ApiError::for_plain_status(status, &who), end_of_stream))
    }

    /// The response becomes `err`'s envelope: its status and JSON type now, its body at the
    /// end of the stream (`replace_body`), held until then.
    fn replace_response(&mut self, err: ApiError, end_of_stream: bool) -> Action {
        set_header(Headers::Response, ":status", &err.status().to_string());
        set_header(Headers::Response, headers::CONTENT_TYPE, headers::JSON);
        remove_header(Headers::Response, headers::CONTENT_LENGTH);
        self.replacement = Some(err);
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    /// The body of a response whose envelope replaces it (see `envelope_plain_error`):
    /// buffered to its end, then replaced.
    pub(super) fn replace_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
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

    /// The cost of `usage` for this call (core::metering::charge).
    pub(super) fn cost_of(grant: &Grant, usage: &Usage) -> MilliCredits {
        metering::charge(&grant.rate, usage, grant.hold_mc, grant.byok)
    }

    pub(super) fn settle(&mut self, outcome: Outcome, usage: Usage) {
        if let Some((settlement, _)) = self.settlement(outcome, usage) {
            self.shared.borrow_mut().enqueue(settlement);
        }
    }

    /// This call's settlement, once, and the time it was made (one clock read serves its
    /// latency and a held response's deadline): `None` when it was already settled (or never
    /// forwarded).
    fn settlement(&mut self, outcome: Outcome, usage: Usage) -> Option<(Settlement, SystemTime)> {
        if self.settled {
            return None;
        }
        let grant = self.grant.as_ref()?;
        self.settled = true;
        let now = host::now();
        let latency_ms = self
            .started
            .and_then(|t| now.duration_since(t).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let settlement = Settlement {
            hold_id: grant.hold_id.clone(),
            outcome,
            usage,
            upstream_status: self.upstream_status,
            latency_ms,
        };
        Some((settlement, now))
    }

    /// A plain response's hold ends with the call: its settlement is sent now, and the
    /// response waits (body and headers held) for the acknowledgement, so its
    /// `X-Credits-Remaining` is the settled balance and the client's next call finds the hold
    /// gone. The settlement goes with those of this worker's other calls that end while a
    /// batch is in flight, in one callout sent by the root context, which resumes each
    /// response ([`crate::shared::Shared::hold`]); on a host without shared queues, in a
    /// callout of its own. The wait is bounded (`settle_wait_ms` from the moment the response
    /// is held, seen on the root's tick when behind a batch in flight): a slow control plane
    /// never holds the client for long; the settlement is then retried from the queue.
    fn settle_and_wait(&mut self, outcome: Outcome, usage: Usage) -> Action {
        if self.shared.borrow().config.settle_wait.is_zero() {
            self.settle(outcome, usage);
            return Action::Continue;
        }
        let Some((settlement, now)) = self.settlement(outcome, usage) else {
            return Action::Continue;
        };
        if self
            .shared
            .borrow_mut()
            .hold(self.context_id, settlement.clone(), now)
        {
            self.settle_wait = Some(SettleWait::Batched);
            return Action::Pause;
        }
        let sent = send_awaited_settlements(
            &self.shared.borrow().config,
            vec![settlement.clone()],
            Some(&settlement.hold_id),
        );
        match sent {
            Some(token) => {
                self.settle_wait = Some(SettleWait::Own(token, settlement));
                Action::Pause
            }
            None => {
                self.shared.borrow_mut().enqueue(settlement);
                Action::Continue
            }
        }
    }

    /// The response is still held for this call's settlement.
    fn waits_for_settlement(&self) -> bool {
        match self.settle_wait {
            Some(SettleWait::Own(..)) => true,
            Some(SettleWait::Batched) => self.shared.borrow().is_held(self.context_id),
            None => false,
        }
    }

    /// The acknowledgement of this call's own settlement (or its failure): the settled
    /// balance replaces the estimate in `X-Credits-Remaining`, then the response leaves.
    pub(super) fn settle_answered(&mut self, status: u16, body: &[u8]) {
        let Some(SettleWait::Own(_, settlement)) = self.settle_wait.take() else {
            return;
        };
        let answer = (status == 200)
            .then(|| serde_json::from_slice::<SettleResponse>(body).ok())
            .flatten();
        match answer {
            Some(answer) => {
                let balance = answer
                    .results
                    .iter()
                    .find(|r| r.hold_id == settlement.hold_id)
                    .and_then(|r| r.balance_mc);
                if let Some(balance) = balance {
                    set_header(
                        Headers::Response,
                        headers::X_CREDITS_REMAINING,
                        &balance.to_credits_string(),
                    );
                }
            }
            None => {
                log(
                    LogLevel::Warn,
                    &format!(
                        "opsgate: settlement not acknowledged (status {status}); queued for retry"
                    ),
                );
                let mut shared = self.shared.borrow_mut();
                shared.metrics.inc(Counter::SettleUnacknowledged);
                shared.enqueue(settlement);
            }
        }
        if host::resume(Stream::Response).is_err() {
            log(
                LogLevel::Debug,
                "opsgate: the host refused to resume the response",
            );
        }
    }

    /// The end of an SSE stream (end of stream, `[DONE]` or trailers): `Success` when the
    /// provider's usage chunk was seen, else `Partial`, bounded by what was seen; held for
    /// its settlement like a plain response's (see `settle_and_wait`).
    fn settle_stream_and_wait(&mut self) -> Action {
        let usage = self.sse.partial_usage(self.prompt_bytes);
        self.settle_and_wait(metering::stream_outcome(self.sse.usage.is_some()), usage)
    }

    /// The whole response body of a held (non-stream) or replaced response is buffered
    /// (`body_size` bytes), at its last data frame or at its trailers: the refused key's
    /// envelope replaces it, or the cost headers are set on the held headers and the call is
    /// settled.
    pub(super) fn response_complete(&mut self, grant: &Grant, body_size: usize) -> Action {
        if let Some(err) = self.replacement.as_ref() {
            set_response_body(body_size, err.to_json().as_bytes());
            return Action::Continue;
        }
        let body = host::buffer_or_empty(Buffer::ResponseBody, 0, body_size);
        let endpoint = self.endpoint.unwrap_or(Endpoint::ChatCompletions);
        // The body is parsed once: its usage, and (chat, embeddings) the catalogue id as its
        // `model` — the client sees the id it can send back, not the provider's.
        let (reported, renamed) = match endpoint {
            Endpoint::ImageGenerations => (
                images_returned(&body).map(|images| Usage {
                    images,
                    ..Usage::default()
                }),
                None,
            ),
            Endpoint::ChatCompletions => chat_response(&body, &grant.model),
            Endpoint::Embeddings => embeddings_response(&body, &grant.model),
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
        if let Some(renamed) = renamed {
            remove_header(Headers::Response, headers::CONTENT_LENGTH);
            set_response_body(body_size, &renamed);
        }
        let cost = Self::cost_of(grant, &usage);
        let remaining = metering::balance_after(grant.balance_mc, grant.hold_mc, cost);
        for (name, value) in headers::cost_headers(cost, remaining) {
            set_header(Headers::Response, name, &value);
        }
        self.settle_and_wait(Outcome::Success, usage)
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

/// The envelope that replaces a provider's 401/403 body: the caller's own key (BYOK) was
/// refused, or the gateway's own credentials were.
pub(super) fn key_refused(grant: &Grant, status: u16) -> ApiError {
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

/// The response's status; 0 when it has none that reads as a number.
fn response_status() -> u16 {
    host::header_text(Headers::Response, ":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
