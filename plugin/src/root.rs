//! The root context of a worker VM: configuration, the snapshot poll, the settle queue, and
//! the batches of held calls' settlements (sent when its wake-up queue or a batch's answer
//! calls it, and resumed from here).

use crate::config::FilterConfig;
use crate::filter::Filter;
use crate::host::{self, Buffer, Headers, LogLevel, Stream};
use crate::metrics::{Counter, Metrics};
use crate::shared::{
    after, call_control_plane, callout_status, log, random_u64, send_awaited_settlements, Held,
    Shared, SharedRef, REACHABLE_KEY, SNAPSHOT_KEY as SHARED_SNAPSHOT, SNAPSHOT_LEASE_KEY,
    SNAPSHOT_VERSION_KEY,
};
use opsgate_core::contract::{
    SettleBatch, SettleResponse, Settlement, Snapshot, SETTLE_PATH, SNAPSHOT_PATH,
};
use opsgate_core::headers;
use opsgate_core::money::MilliCredits;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

#[derive(Default)]
pub struct Root {
    /// This root context's id: hostcalls act on it again after it resumed held calls.
    id: u32,
    shared: Option<SharedRef>,
    snapshot_call: Option<u32>,
    settle_call: Option<(u32, Vec<Settlement>)>,
    shutting_down: bool,
    /// The last poll failed: log the next failure only after a success.
    snapshot_failing: bool,
}

impl Root {
    pub fn new(id: u32) -> Self {
        Root {
            id,
            ..Root::default()
        }
    }

    /// Takes this worker's wake-ups and sends what is held.
    fn wake_up(&mut self, shared: &SharedRef) {
        let queue = shared.borrow().wake_queue;
        if let Some(queue) = queue {
            while host::dequeue(queue).is_some() {}
        }
        shared.borrow_mut().wake_pending = false;
        self.send_held(shared);
    }

    /// The callout token of the batch of held calls in flight, if any.
    fn held_batch(&self) -> Option<u32> {
        self.shared.as_ref().and_then(|s| s.borrow().held_batch)
    }

    /// Sends the settlements of every held call not yet sent, in one callout, unless a batch
    /// is in flight (its answer sends the next). The answer resumes each call
    /// ([`Root::held_answered`]); a batch that cannot be sent releases its calls at once and
    /// queues their settlements for the tick's retries.
    fn send_held(&mut self, shared: &SharedRef) {
        let settlements: Vec<Settlement> = {
            let mut s = shared.borrow_mut();
            if s.held_batch.is_some() {
                return;
            }
            s.held
                .iter_mut()
                .filter(|h| !h.sent)
                .map(|h| {
                    h.sent = true;
                    h.settlement.clone()
                })
                .collect()
        };
        // A batch of one call carries that call's id (its hold id) for the request log.
        let request_id = match settlements.as_slice() {
            [] => return,
            [one] => Some(one.hold_id.clone()),
            _ => None,
        };
        let sent =
            send_awaited_settlements(&shared.borrow().config, settlements, request_id.as_deref());
        match sent {
            Some(token) => shared.borrow_mut().held_batch = Some(token),
            None => {
                log(
                    LogLevel::Warn,
                    "opsgate: held settlements not sent; queued for retry",
                );
                self.held_answered(shared, None);
            }
        }
    }

    /// Held calls whose wait ran out (`settle_wait_ms` since they were held, seen on the
    /// tick) leave now with the estimate in `X-Credits-Remaining`; their settlements still go.
    fn release_overdue(&mut self, shared: &SharedRef) {
        let due = shared.borrow_mut().overdue(host::now());
        if due.is_empty() {
            return;
        }
        log(
            LogLevel::Warn,
            &format!(
                "opsgate: {} held responses released unacknowledged after settle_wait_ms; their settlements go on",
                due.len()
            ),
        );
        for context_id in due {
            shared.borrow().metrics.inc(Counter::SettleUnacknowledged);
            resume_held(context_id, None);
        }
        let _ = host::set_effective_context(self.id);
    }

    /// The answer to the batch of held calls (`None`: none, or not readable): each call still
    /// waiting gets its settled balance as `X-Credits-Remaining` (left at the estimate
    /// without an answer, its settlement then queued for retry), and its response leaves.
    fn held_answered(&mut self, shared: &SharedRef, answer: Option<SettleResponse>) {
        let batch: Vec<Held> = {
            let mut s = shared.borrow_mut();
            s.held_batch = None;
            let (sent, waiting) = std::mem::take(&mut s.held)
                .into_iter()
                .partition(|h| h.sent);
            s.held = waiting;
            sent
        };
        for held in batch {
            let balance = match &answer {
                Some(a) => a
                    .results
                    .iter()
                    .find(|r| r.hold_id == held.settlement.hold_id)
                    .and_then(|r| r.balance_mc),
                None => {
                    shared.borrow_mut().enqueue(held.settlement);
                    None
                }
            };
            if !held.released {
                if answer.is_none() {
                    shared.borrow().metrics.inc(Counter::SettleUnacknowledged);
                }
                resume_held(held.context_id, balance);
            }
        }
        // Hostcalls act on this root context again.
        let _ = host::set_effective_context(self.id);
    }

    /// Takes up this worker's part in the Envoy-wide snapshot: switch to the shared one if it
    /// moved, and poll the control plane when this worker wins the lease (one poll per
    /// interval per Envoy, whichever worker ticks first).
    fn poll_snapshot(&mut self, shared: &SharedRef) {
        shared.borrow_mut().sync_snapshot();
        if self.snapshot_call.is_some() {
            return;
        }
        let timeout = shared.borrow().config.cp_timeout;
        if !take_lease(host::now(), timeout) {
            return;
        }
        let result = {
            let s = shared.borrow();
            call_control_plane(&s.config, "GET", SNAPSHOT_PATH, None)
        };
        match result {
            Ok(token) => self.snapshot_call = Some(token),
            Err(e) => log(
                LogLevel::Warn,
                &format!("opsgate: snapshot poll not sent: {e:?}"),
            ),
        }
    }

    fn flush_settlements(&mut self, shared: &SharedRef) {
        if self.settle_call.is_some() {
            return;
        }
        let batch: Vec<Settlement> = {
            let mut s = shared.borrow_mut();
            let n = s.settle_queue.len().min(s.config.settle_batch);
            s.settle_queue.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let body = match serde_json::to_vec(&SettleBatch {
            settlements: batch.clone(),
            with_balances: false,
        }) {
            Ok(b) => b,
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("opsgate: cannot encode settlements: {e}"),
                );
                return;
            }
        };
        let result = {
            let s = shared.borrow();
            call_control_plane(&s.config, "POST", SETTLE_PATH, Some(&body))
        };
        match result {
            Ok(token) => self.settle_call = Some((token, batch)),
            Err(e) => {
                log(
                    LogLevel::Warn,
                    &format!("opsgate: settle not sent, will retry: {e:?}"),
                );
                requeue(shared, batch);
            }
        }
    }

    fn maybe_finish_shutdown(&mut self) {
        if !self.shutting_down || self.settle_call.is_some() || self.held_batch().is_some() {
            return;
        }
        let pending = self
            .shared
            .as_ref()
            .is_some_and(|s| !s.borrow().settle_queue.is_empty());
        if pending {
            if let Some(shared) = self.shared.clone() {
                self.flush_settlements(&shared);
            }
            if self.settle_call.is_some() {
                return;
            }
        }
        if host::done().is_err() {
            log(
                LogLevel::Warn,
                "opsgate: the host refused the end of shutdown",
            );
        }
    }
}

/// Resumes a held response from the root context: the settled balance (when known) replaces
/// the estimate in `X-Credits-Remaining`, then the response leaves. A context that is gone
/// is skipped.
fn resume_held(context_id: u32, balance: Option<MilliCredits>) {
    if host::set_effective_context(context_id).is_err() {
        return;
    }
    if let Some(balance) = balance {
        let _ = host::set_header(
            Headers::Response,
            headers::X_CREDITS_REMAINING,
            &balance.to_credits_string(),
        );
    }
    if host::resume(Stream::Response).is_err() {
        log(
            LogLevel::Debug,
            "opsgate: the host refused to resume a held response",
        );
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Claims the snapshot poll for this worker when the Envoy-wide lease has run out: one
/// compare-and-swap, so two workers ticking together do not both poll. The lease is held for
/// the poll's timeout, then set to the next poll's time by whoever answers it.
fn take_lease(now: SystemTime, hold: Duration) -> bool {
    let (deadline, cas) = match host::shared_data(SNAPSHOT_LEASE_KEY) {
        Some((v, cas)) => (
            std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0),
            cas,
        ),
        None => (0, 0),
    };
    if millis(now) < deadline {
        return false;
    }
    match host::set_shared_data(
        SNAPSHOT_LEASE_KEY,
        millis(after(now, hold)).to_string().as_bytes(),
        cas,
    ) {
        Ok(()) => true,
        Err(e) if e == host::CAS_MISMATCH => false,
        // No shared data on this host: every worker polls for itself, as each has its own.
        Err(_) => true,
    }
}

/// The next poll is due `from_now` from now, by whichever worker ticks first.
fn set_lease(from_now: Duration) {
    let until = millis(after(host::now(), from_now));
    let _ = host::set_shared_data(SNAPSHOT_LEASE_KEY, until.to_string().as_bytes(), 0);
}

/// Puts a batch that did not go through back at the front, oldest first.
fn requeue(shared: &SharedRef, batch: Vec<Settlement>) {
    let mut s = shared.borrow_mut();
    for item in batch.into_iter().rev() {
        s.settle_queue.push_front(item);
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _: usize,
    ) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let status = callout_status(num_headers);
        if shared.borrow().held_batch == Some(token) {
            let body = host::buffer_or_empty(Buffer::CallResponseBody, 0, body_size);
            let answer = (status == 200)
                .then(|| serde_json::from_slice::<SettleResponse>(&body).ok())
                .flatten();
            if answer.is_none() {
                let n = shared.borrow().held.iter().filter(|h| h.sent).count();
                log(
                    LogLevel::Warn,
                    &format!(
                        "opsgate: {n} held settlements not acknowledged (status {status}); queued for retry"
                    ),
                );
            }
            self.held_answered(&shared, answer);
            // Calls that ended while this batch was in flight go now, together.
            self.send_held(&shared);
            self.maybe_finish_shutdown();
            return;
        }
        if self.snapshot_call == Some(token) {
            self.snapshot_call = None;
            let body = host::buffer_or_empty(Buffer::CallResponseBody, 0, body_size);
            let interval = shared.borrow().config.snapshot_interval;
            match (status, serde_json::from_slice::<Snapshot>(&body)) {
                (200, Ok(snap)) => {
                    self.snapshot_failing = false;
                    // The body first, then its version: a worker that sees the version
                    // finds the body it names (or a newer one). This worker serves the one
                    // it parsed (also on a host without shared data).
                    let _ = host::set_shared_data(SHARED_SNAPSHOT, &body, 0).and_then(|()| {
                        host::set_shared_data(SNAPSHOT_VERSION_KEY, snap.version.as_bytes(), 0)
                    });
                    let _ = host::set_shared_data(REACHABLE_KEY, b"1", 0);
                    set_lease(interval);
                    let mut s = shared.borrow_mut();
                    s.control_plane_reachable = true;
                    s.install(snap);
                }
                (status, parsed) => {
                    let _ = host::set_shared_data(REACHABLE_KEY, b"0", 0);
                    let loaded = {
                        let mut s = shared.borrow_mut();
                        s.control_plane_reachable = false;
                        s.snapshot.is_some()
                    };
                    // Until a first snapshot is loaded, any worker polls again on its next
                    // tick; after, the last good one serves until the next interval.
                    set_lease(if loaded { interval } else { Duration::ZERO });
                    if !self.snapshot_failing {
                        self.snapshot_failing = true;
                        log(
                            LogLevel::Warn,
                            &format!(
                                "opsgate: snapshot poll failed (status {status}{}); keeping the last good one",
                                parsed.err().map(|e| format!(", {e}")).unwrap_or_default()
                            ),
                        );
                    }
                }
            }
            return;
        }
        if let Some((t, batch)) = self.settle_call.take() {
            if t != token {
                self.settle_call = Some((t, batch));
                return;
            }
            if status == 200 {
                // Sent: keep going while there is more.
                self.flush_settlements(&shared);
            } else {
                log(
                    LogLevel::Warn,
                    &format!(
                        "opsgate: settle batch of {} failed (status {status}); will retry",
                        batch.len()
                    ),
                );
                requeue(&shared, batch);
            }
            self.maybe_finish_shutdown();
        }
    }

    fn on_done(&mut self) -> bool {
        self.shutting_down = true;
        let Some(shared) = self.shared.clone() else {
            return true;
        };
        self.send_held(&shared);
        self.flush_settlements(&shared);
        // Wait for the last batches to be acknowledged, then call done().
        self.settle_call.is_none() && self.held_batch().is_none()
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = host::buffer_or_empty(Buffer::PluginConfiguration, 0, usize::MAX);
        let _ = size;
        match FilterConfig::parse(&bytes) {
            Ok(config) => {
                if host::set_tick_period(config.tick().min(Duration::from_millis(200))).is_err() {
                    log(
                        LogLevel::Critical,
                        "opsgate: the host refused a tick period",
                    );
                    return false;
                }
                let mut shared = Shared::new(config, Metrics::define());
                // One queue per worker (a name no other worker uses): it wakes this root
                // context to send held settlements. Without it, each call sends its own.
                let name = format!("opsgate.settle.{:016x}", random_u64());
                shared.wake_queue = host::register_queue(&name).ok();
                self.shared = Some(Rc::new(RefCell::new(shared)));
                true
            }
            Err(e) => {
                log(LogLevel::Critical, &e);
                false
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        if shared.borrow().wake_queue != Some(queue_id) {
            return;
        }
        self.wake_up(&shared);
    }

    fn on_tick(&mut self) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        self.poll_snapshot(&shared);
        self.release_overdue(&shared);
        self.flush_settlements(&shared);
        // A safety net: held calls whose wake-up never came go on the next tick.
        self.wake_up(&shared);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.shared
            .clone()
            .map(|s| Box::new(Filter::new(s, context_id)) as Box<dyn HttpContext>)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
