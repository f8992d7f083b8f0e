//! What a worker's root context shares with the requests it creates. A VM is
//! single-threaded, so `Rc<RefCell<…>>` is enough.

use crate::cache::BoundedCache;
use crate::config::FilterConfig;
use crate::host::{self, Headers, HostError, LogLevel};
use crate::metrics::Metrics;
use opsgate_core::contract::{Settlement, Snapshot};
use opsgate_core::ApiError;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::SystemTime;

/// What the control plane last said about a `uc_` key or session digest.
#[derive(Debug, Clone)]
pub enum CredentialState {
    /// Accepted (allowed, or refused for another reason than the credential).
    Good,
    /// Refused with 401: answered locally with the same error until the entry expires.
    Bad(ApiError),
}

/// Envoy-wide keys (shared data is one map per VM id, across every worker): the snapshot's
/// body as the control plane sent it, its version, the lease that lets one worker at a time
/// poll, and whether that poll reached the control plane.
pub const SNAPSHOT_KEY: &str = "opsgate.snapshot";
pub const SNAPSHOT_VERSION_KEY: &str = "opsgate.snapshot.version";
pub const SNAPSHOT_LEASE_KEY: &str = "opsgate.snapshot.lease";
pub const REACHABLE_KEY: &str = "opsgate.control_plane.reachable";

/// A call whose response is held until its settlement is acknowledged (see
/// [`Shared::hold`]).
#[derive(Debug)]
pub struct Held {
    pub context_id: u32,
    pub settlement: Settlement,
    /// In the batch the root context has sent.
    pub sent: bool,
    /// Nothing waits for it any more (the client left, or its wait ran out): its settlement
    /// still goes with its batch, nothing is resumed.
    pub released: bool,
    /// When its response leaves even without an answer: `settle_wait` after it was held.
    pub until: SystemTime,
}

pub struct Shared {
    pub config: FilterConfig,
    /// The last good snapshot; `None` until the first one arrives.
    pub snapshot: Option<Rc<Snapshot>>,
    /// Settlements waiting to be sent, oldest first.
    pub settle_queue: VecDeque<Settlement>,
    /// `uc_` keys and sessions by cache key (`k:`/`s:` + digest).
    pub credentials: BoundedCache<String, CredentialState>,
    pub metrics: Metrics,
    /// The control plane answered the last snapshot poll (the health path reports it).
    pub control_plane_reachable: bool,
    /// A shared snapshot version whose body did not parse: not read again.
    bad_version: Option<Vec<u8>>,
    /// Calls held for their settlement, in the order they ended; the root context sends
    /// them in one batch while none of its batches is in flight, else in the next. The
    /// batch in flight is the entries marked `sent`.
    pub held: Vec<Held>,
    /// The callout token of the root context's batch of held calls in flight.
    pub held_batch: Option<u32>,
    /// This worker's queue that wakes its root context (`on_queue_ready`) to send the held
    /// calls now; `None` on a host without shared queues (each call then sends its own).
    pub wake_queue: Option<u32>,
    /// A wake-up is queued and not yet seen by the root context.
    pub wake_pending: bool,
}

impl Shared {
    pub fn new(config: FilterConfig, metrics: Metrics) -> Self {
        let bound = config.cache_max_entries;
        Shared {
            config,
            snapshot: None,
            settle_queue: VecDeque::new(),
            credentials: BoundedCache::new(bound),
            metrics,
            control_plane_reachable: false,
            bad_version: None,
            held: Vec::new(),
            held_batch: None,
            wake_queue: None,
            wake_pending: false,
        }
    }

    /// Holds a finished call's response for its settlement, which the root context sends
    /// with those of the other calls that end while a batch is in flight: calls that end
    /// together share one callout, and a batch goes as soon as the one before it is answered
    /// (no tick in the path). `false` when this worker cannot batch (no wake-up queue, or the
    /// host refused the wake-up): the caller sends its own settlement.
    pub fn hold(&mut self, context_id: u32, settlement: Settlement, now: SystemTime) -> bool {
        let Some(queue) = self.wake_queue else {
            return false;
        };
        if self.held_batch.is_none() && !self.wake_pending {
            if host::enqueue(queue, b"").is_err() {
                return false;
            }
            self.wake_pending = true;
        }
        self.held.push(Held {
            context_id,
            settlement,
            sent: false,
            released: false,
            until: now.checked_add(self.config.settle_wait).unwrap_or(now),
        });
        true
    }

    /// The call's response is still held for its settlement.
    pub fn is_held(&self, context_id: u32) -> bool {
        self.held
            .iter()
            .any(|h| h.context_id == context_id && !h.released)
    }

    /// The held calls whose wait has run out by `now`, released: a call that ended behind a
    /// batch in flight would otherwise wait for that batch and then for its own. A settlement
    /// not yet sent moves to the settle queue; one in flight stays with its batch, which
    /// retries it if unanswered. Returns the contexts whose responses may leave now.
    pub fn overdue(&mut self, now: SystemTime) -> Vec<u32> {
        let mut due = Vec::new();
        let mut kept = Vec::with_capacity(self.held.len());
        for mut h in std::mem::take(&mut self.held) {
            if !h.released && h.until <= now {
                due.push(h.context_id);
                if !h.sent {
                    self.settle_queue.push_back(h.settlement);
                    continue;
                }
                h.released = true;
            }
            kept.push(h);
        }
        self.held = kept;
        due
    }

    /// The client of a held call left: a settlement not yet sent moves to the settle queue
    /// (nothing waits for it now); one in flight stays with its batch, which retries it.
    pub fn held_call_ended(&mut self, context_id: u32) {
        let Some(i) = self.held.iter().position(|h| h.context_id == context_id) else {
            return;
        };
        let sent = self.held.get(i).is_some_and(|h| h.sent);
        if sent {
            if let Some(h) = self.held.get_mut(i) {
                h.released = true;
            }
        } else {
            let h = self.held.remove(i);
            self.enqueue(h.settlement);
        }
    }

    /// Switches to the Envoy-wide snapshot when its version differs from this worker's: one
    /// read of a short value per request and tick; the body is read and parsed only when the
    /// version moved. Every worker thus switches on its next request after one poll, instead
    /// of each on its own poll (workers once disagreed for up to a poll interval: 200 and
    /// 401 alternating after a key was added or revoked).
    pub fn sync_snapshot(&mut self) {
        let Some((version, _)) = host::shared_data(SNAPSHOT_VERSION_KEY) else {
            return;
        };
        let current = self
            .snapshot
            .as_ref()
            .is_some_and(|s| s.version.as_bytes() == version.as_slice());
        if current || self.bad_version.as_deref() == Some(version.as_slice()) {
            return;
        }
        let Some((body, _)) = host::shared_data(SNAPSHOT_KEY) else {
            return;
        };
        match serde_json::from_slice::<Snapshot>(&body) {
            Ok(snap) => self.install(snap),
            Err(e) => {
                log(
                    LogLevel::Warn,
                    &format!(
                        "opsgate: the shared snapshot does not parse ({e}); keeping this worker's"
                    ),
                );
                self.bad_version = Some(version);
            }
        }
    }

    /// Serves `snap` from now on, unless this worker already has its version.
    pub fn install(&mut self, snap: Snapshot) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|old| old.version == snap.version)
        {
            return;
        }
        log(
            LogLevel::Info,
            &format!(
                "opsgate: snapshot {} loaded ({} service keys)",
                snap.version,
                snap.service_keys.len()
            ),
        );
        self.snapshot = Some(Rc::new(snap));
    }

    /// Whether the last poll, by any worker, reached the control plane.
    pub fn control_plane_reachable(&self) -> bool {
        match host::shared_data(REACHABLE_KEY) {
            Some((v, _)) => v == b"1",
            None => self.control_plane_reachable,
        }
    }

    /// Queues a settlement. Never dropped: the queue is bounded by admission instead —
    /// while it holds `settle_queue_max` or more, new metered calls are refused
    /// ([`Shared::settlements_behind`]), so it grows at most by the calls already in flight.
    pub fn enqueue(&mut self, s: Settlement) {
        self.settle_queue.push_back(s);
    }

    /// Settlements are behind: new metered calls wait for the queue to drain (503 with
    /// `Retry-After`) before a finished call's settlement could ever be discarded.
    pub fn settlements_behind(&self) -> bool {
        self.settle_queue.len() >= self.config.settle_queue_max
    }
}

pub type SharedRef = Rc<RefCell<Shared>>;

/// Sends a request to the control plane through its Envoy cluster.
pub fn call_control_plane(
    config: &FilterConfig,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<u32, HostError> {
    call_control_plane_within(config, method, path, body, config.cp_timeout, None)
}

/// [`call_control_plane`] with its own timeout, and the call's request id (the control
/// plane logs it: one call is followed through Envoy, filter, control plane and provider).
pub fn call_control_plane_within(
    config: &FilterConfig,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: std::time::Duration,
    request_id: Option<&str>,
) -> Result<u32, HostError> {
    let auth = format!("Bearer {}", config.cp_token);
    let mut headers = vec![
        (":method", method),
        (":path", path),
        (":authority", config.cp_authority.as_str()),
        ("authorization", auth.as_str()),
    ];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    if let Some(id) = request_id {
        headers.push((opsgate_core::headers::X_REQUEST_ID, id));
    }
    host::dispatch_http_call(&config.cp_cluster, headers, body, timeout)
}

/// Sends settlements whose responses wait for them: with the settled balances asked for,
/// within `settle_wait`. `request_id`: the call's, when the batch is one call's.
pub fn send_awaited_settlements(
    config: &FilterConfig,
    settlements: Vec<Settlement>,
    request_id: Option<&str>,
) -> Option<u32> {
    let body = serde_json::to_vec(&opsgate_core::contract::SettleBatch {
        settlements,
        with_balances: true,
    })
    .ok()?;
    call_control_plane_within(
        config,
        "POST",
        opsgate_core::contract::SETTLE_PATH,
        Some(&body),
        config.settle_wait,
        request_id,
    )
    .ok()
}

/// Status of a callout response; 0 when none arrived (reset, timeout, no cluster host) or
/// when its `:status` is not a number.
pub fn callout_status(num_headers: usize) -> u16 {
    if num_headers == 0 {
        return 0;
    }
    host::header_text(Headers::CallResponse, ":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub use crate::host::log;

/// 64 random bits (std seeds its hash keys from WASI's random source).
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// `now + by`; `now` itself if the sum does not fit a `SystemTime` (an entry that expires
/// at once, a fetch that is due at once: never a panic).
pub fn after(now: SystemTime, by: std::time::Duration) -> SystemTime {
    now.checked_add(by).unwrap_or(now)
}
