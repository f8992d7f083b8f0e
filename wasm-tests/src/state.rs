//! Everything the host remembers between hostcalls: contexts, streams,
//! callouts, shared data and queues, properties, metrics and logs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::abi::{self, Status};
use crate::headers::HeaderMap;

/// Which half of an HTTP stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Request,
    Response,
}

/// What a filter callback asked for, folded to the two outcomes a test cares
/// about. `StopIteration`, `StopIterationAndBuffer`, `StopAllIteration*`,
/// `StopIterationNoBuffer` and "the filter sent a local reply" are all
/// [`Action::Pause`]; the raw value is available from
/// [`crate::Host::last_status`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Continue,
    Pause,
}

/// A reply the filter produced with `proxy_send_local_response`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    /// Response code details, with whitespace replaced by `_` as Envoy does.
    pub details: String,
    pub body: Vec<u8>,
    /// The additional headers the filter passed (names lower-cased).
    pub headers: Vec<(String, String)>,
    /// The gRPC status argument (`-1` when none).
    pub grpc_status: i32,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An outgoing `proxy_http_call`, as Envoy would send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCall {
    pub token: u32,
    /// The context the filter was acting for when it dispatched the call (the
    /// current or effective context), i.e. the id the SDK files the callout
    /// under.
    pub context_id: u32,
    pub cluster: String,
    /// Request headers, names lower-cased; `content-length` is added for a
    /// non-empty body as Envoy does.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// `Duration::ZERO` means no timeout (Envoy treats 0 ms that way).
    pub timeout: Duration,
}

impl HttpCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Where a direction's filter iteration is stopped.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Stop {
    #[default]
    None,
    /// Stopped on headers with Envoy's default conversion of `StopIteration` into
    /// `StopAllIterationAndWatermark`: body data is held, not delivered.
    Headers,
    /// Stopped on headers with `allow_on_headers_stop_iteration: true`: headers stay
    /// with the filter (readable, modifiable) while body data is delivered to it.
    HeadersIteration,
    Body,
    Trailers,
}

/// One direction (request or response) of a stream, modelled on the pointers
/// Envoy's `Context` keeps (`request_headers_`, `request_body_buffer_`, ...)
/// and on the filter manager's buffering.
#[derive(Debug, Default)]
pub(crate) struct Direction {
    /// The header map as it stands (the test's view; always kept).
    pub headers: HeaderMap,
    pub headers_received: bool,
    /// Envoy keeps the map pointer only while the headers callback runs and,
    /// if it stopped, until `proxy_continue_stream`.
    pub headers_visible: bool,
    pub headers_forwarded: bool,
    pub trailers: HeaderMap,
    pub trailers_received: bool,
    pub trailers_visible: bool,
    /// The body buffer the filter sees: the current chunk, or everything
    /// buffered since the callback started returning `StopIterationAndBuffer`.
    pub body: Vec<u8>,
    pub body_visible: bool,
    /// The previous body callback asked Envoy to buffer.
    pub buffering: bool,
    /// Body bytes passed on downstream/upstream.
    pub forwarded_body: Vec<u8>,
    /// `end_of_stream` was passed with the last body callback.
    pub body_end_of_stream: bool,
    pub end_of_stream: bool,
    pub stopped: Stop,
    /// Data that arrived while iteration was stopped in the headers callback
    /// (`StopAllIteration`): Envoy buffers it and hands it to the filter after
    /// `continue`.
    pub held_body: Option<Vec<u8>>,
    pub held_end_of_stream: bool,
    pub held_trailers: Option<HeaderMap>,
    pub last_status: Option<u32>,
    pub resumed: usize,
    pub closed: usize,
}

impl Direction {
    /// Data the filter can read through `proxy_get_buffer_bytes`, if Envoy
    /// would expose a buffer instance.
    pub fn body_accessible(&self) -> bool {
        self.body_visible || self.buffering
    }
}

/// An HTTP stream context.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    pub request: Direction,
    pub response: Direction,
    pub local_reply: Option<LocalReply>,
    /// The response seen by the filter came from its own local reply.
    pub local_reply_delivered: bool,
    /// `proxy_close_stream` reset the stream.
    pub reset: bool,
    /// `proxy_on_delete` ran.
    pub deleted: bool,
    /// During `proxy_on_log`: headers are readable (read only) through the
    /// access-log pointers.
    pub access_log_phase: bool,
    /// Properties for this stream (set by the test or by the filter).
    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Stream {
    pub fn direction(&self, kind: StreamKind) -> &Direction {
        match kind {
            StreamKind::Request => &self.request,
            StreamKind::Response => &self.response,
        }
    }

    pub fn direction_mut(&mut self, kind: StreamKind) -> &mut Direction {
        match kind {
            StreamKind::Request => &mut self.request,
            StreamKind::Response => &mut self.response,
        }
    }
}

/// The response of an http call while `proxy_on_http_call_response` runs.
#[derive(Debug, Default)]
pub(crate) struct CallResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

#[derive(Debug)]
pub(crate) struct Queue {
    pub vm_id: String,
    pub name: String,
    pub context_id: u32,
    pub items: VecDeque<Vec<u8>>,
}

#[derive(Debug)]
pub(crate) struct Metrics {
    /// id -> name; the type is in the id's low bits.
    pub names: BTreeMap<u32, String>,
    /// (type, name) -> value. Envoy creates the stat when it is defined.
    pub values: BTreeMap<(u32, String), i64>,
    pub histograms: BTreeMap<String, Vec<u64>>,
    /// Last id handed out per type; starts at the type itself like
    /// `next_counter_metric_id_` and friends.
    next: [u32; 3],
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            names: BTreeMap::new(),
            values: BTreeMap::new(),
            histograms: BTreeMap::new(),
            next: [
                abi::metric_type::COUNTER,
                abi::metric_type::GAUGE,
                abi::metric_type::HISTOGRAM,
            ],
        }
    }
}

impl Metrics {
    pub fn define(&mut self, kind: u32, name: &str) -> Option<u32> {
        let slot = self.next.get_mut(kind as usize)?;
        *slot += abi::ID_INCREMENT;
        let id = *slot;
        self.names.insert(id, name.to_string());
        if kind == abi::metric_type::HISTOGRAM {
            self.histograms.entry(name.to_string()).or_default();
        } else {
            self.values.entry((kind, name.to_string())).or_insert(0);
        }
        Some(id)
    }

    fn key(&self, id: u32) -> Option<(u32, String)> {
        self.names
            .get(&id)
            .map(|n| (id & abi::ID_TYPE_MASK, n.clone()))
    }

    /// `Context::incrementMetric`.
    pub fn increment(&mut self, id: u32, offset: i64) -> Status {
        match id & abi::ID_TYPE_MASK {
            abi::metric_type::COUNTER | abi::metric_type::GAUGE => {
                let Some(key) = self.key(id) else {
                    return Status::NotFound;
                };
                if key.0 == abi::metric_type::COUNTER && offset <= 0 {
                    return Status::BadArgument;
                }
                *self.values.entry(key).or_insert(0) += offset;
                Status::Ok
            }
            _ => Status::BadArgument,
        }
    }

    /// `Context::recordMetric`.
    pub fn record(&mut self, id: u32, value: u64) -> Status {
        let Some(key) = self.key(id) else {
            return Status::NotFound;
        };
        match key.0 {
            abi::metric_type::COUNTER => {
                *self.values.entry(key).or_insert(0) += value as i64;
            }
            abi::metric_type::GAUGE => {
                self.values.insert(key, value as i64);
            }
            abi::metric_type::HISTOGRAM => {
                self.histograms.entry(key.1).or_default().push(value);
            }
            _ => return Status::NotFound,
        }
        Status::Ok
    }

    /// `Context::getMetric`.
    pub fn get(&self, id: u32) -> Result<u64, Status> {
        match id & abi::ID_TYPE_MASK {
            abi::metric_type::COUNTER | abi::metric_type::GAUGE => self
                .key(id)
                .and_then(|key| self.values.get(&key))
                .map(|v| *v as u64)
                .ok_or(Status::NotFound),
            _ => Err(Status::BadArgument),
        }
    }

    pub fn by_name(&self, name: &str) -> Option<i64> {
        [abi::metric_type::COUNTER, abi::metric_type::GAUGE]
            .into_iter()
            .find_map(|kind| self.values.get(&(kind, name.to_string())).copied())
    }
}

/// Work Envoy defers until the current VM call returns
/// (`addAfterVmCallAction`, or events posted to the dispatcher).
#[derive(Debug)]
pub(crate) enum Deferred {
    /// `continueDecoding()` / `continueEncoding()`.
    Continue { context: u32, kind: StreamKind },
    /// `sendLocalReply()`; the reply is stored on the stream.
    LocalReply { context: u32 },
    /// `onQueueReady` posted by `proxy_enqueue_shared_queue`.
    QueueReady { context: u32, token: u32 },
    /// `proxy_done` completed the root context's shutdown: `proxy_on_delete`.
    DeleteRoot,
}

/// The controlled clock: wall time and a monotonic time that never goes back.
#[derive(Debug, Clone)]
pub(crate) struct Clock {
    pub wall_nanos: Arc<AtomicU64>,
    pub monotonic_nanos: Arc<AtomicU64>,
}

impl Clock {
    pub fn new(start_nanos: u64) -> Self {
        Self {
            wall_nanos: Arc::new(AtomicU64::new(start_nanos)),
            monotonic_nanos: Arc::new(AtomicU64::new(1_000_000_000)),
        }
    }

    pub fn now(&self) -> u64 {
        self.wall_nanos.load(Ordering::SeqCst)
    }

    pub fn set(&self, nanos: u64) {
        let old = self.wall_nanos.swap(nanos, Ordering::SeqCst);
        if nanos > old {
            self.monotonic_nanos
                .fetch_add(nanos - old, Ordering::SeqCst);
        }
    }
}

impl wasmtime_wasi::HostWallClock for Clock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(Clock::now(self))
    }
}

impl wasmtime_wasi::HostMonotonicClock for Clock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.monotonic_nanos.load(Ordering::SeqCst)
    }
}

/// The proxy-wasm side of the store data.
#[derive(Debug)]
pub(crate) struct HostState {
    pub root_id: u32,
    pub root_created: bool,
    pub root_deleted: bool,
    /// The context whose callback is executing (Envoy's `current_context_`).
    pub current: u32,
    /// Set by `proxy_set_effective_context`; 0 = none.
    pub effective: u32,
    pub streams: BTreeMap<u32, Stream>,
    pub vm_id: String,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    /// Envoy's `temp_plugin_`: the plugin configuration is readable only
    /// while the root context is created and configured.
    pub plugin_config_visible: bool,
    pub clock: Clock,
    pub tick_period: Option<Duration>,
    pub log_level: u32,
    pub logs: Vec<(u32, String)>,
    pub echo_logs: bool,
    /// Envoy keeps one shared-data map per VM id, across worker threads: hosts made with
    /// [`crate::Host::worker_of`] hold the same map.
    pub shared_data: SharedDataRef,
    pub queues: BTreeMap<u32, Queue>,
    pub next_queue_token: u32,
    pub properties: BTreeMap<Vec<u8>, Vec<u8>>,
    pub metrics: Metrics,
    pub clusters: BTreeSet<String>,
    /// Outstanding http calls by token.
    pub calls: BTreeMap<u32, HttpCall>,
    /// Tokens handed out by `take_call` (still outstanding).
    pub taken_calls: BTreeSet<u32>,
    pub next_call_token: u32,
    pub call_response: Option<CallResponse>,
    /// `proxy_get_status` of the root context.
    pub status: (u32, Vec<u8>),
    pub deferred: VecDeque<Deferred>,
    /// Number of `proxy_send_local_response` calls (to detect Envoy's
    /// `stopNextIteration`).
    pub local_replies_sent: u64,
    pub root_pending_done: bool,
    pub done_called: bool,
    /// Hostcalls made by the guest, by import name, and the guest allocations the host made
    /// to return data (`proxy_on_memory_allocate`): each is a crossing between the VM and
    /// Envoy, the filter's dominant cost in V8.
    pub hostcalls: BTreeMap<&'static str, u64>,
    /// Tests only: `onQueueReady` is not delivered (a wake-up the host lost).
    pub drop_queue_ready: bool,
}

impl HostState {
    pub fn new(clock: Clock) -> Self {
        Self {
            // Envoy: context id 0 is the VM context, the root context is the
            // first one allocated after it.
            root_id: 1,
            root_created: false,
            root_deleted: false,
            current: 0,
            effective: 0,
            streams: BTreeMap::new(),
            vm_id: String::new(),
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            plugin_config_visible: false,
            clock,
            tick_period: None,
            log_level: 0,
            logs: Vec::new(),
            echo_logs: std::env::var_os("OPSGATE_WASM_LOG").is_some(),
            shared_data: SharedDataRef::default(),
            queues: BTreeMap::new(),
            next_queue_token: 1,
            properties: BTreeMap::new(),
            metrics: Metrics::default(),
            clusters: BTreeSet::new(),
            calls: BTreeMap::new(),
            taken_calls: BTreeSet::new(),
            next_call_token: 0,
            call_response: None,
            status: (0, Vec::new()),
            deferred: VecDeque::new(),
            local_replies_sent: 0,
            root_pending_done: false,
            done_called: false,
            hostcalls: BTreeMap::new(),
            drop_queue_ready: false,
        }
    }

    /// Envoy's `contextOrEffectiveContext()`: the effective context if it is
    /// set and still alive, else the current one.
    pub fn context(&self) -> u32 {
        if self.effective != 0 && self.context_alive(self.effective) {
            self.effective
        } else {
            self.current
        }
    }

    pub fn context_alive(&self, id: u32) -> bool {
        (id == self.root_id && self.root_created && !self.root_deleted)
            || self.streams.get(&id).is_some_and(|s| !s.deleted)
    }

    /// The stream of the acting context, if it is a (live) stream.
    pub fn stream_mut(&mut self) -> Option<&mut Stream> {
        let id = self.context();
        self.streams.get_mut(&id).filter(|s| !s.deleted)
    }

    pub fn stream(&self) -> Option<&Stream> {
        let id = self.context();
        self.streams.get(&id).filter(|s| !s.deleted)
    }

    pub fn log(&mut self, level: u32, message: String) {
        if self.echo_logs {
            eprintln!("[wasm {}] {message}", level_name(level));
        }
        self.logs.push((level, message));
    }

    /// A shared-data entry and its CAS.
    pub fn get_shared_data(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.shared_data.lock().ok()?.map.get(key).cloned()
    }

    /// `SharedData::set` with Envoy's compare-and-swap rule: `cas == 0`
    /// writes unconditionally, otherwise it must match the stored value's cas.
    pub fn set_shared_data(&mut self, key: &[u8], value: &[u8], cas: u32) -> Status {
        let Ok(mut data) = self.shared_data.lock() else {
            return Status::InternalFailure;
        };
        if let Some((_, current)) = data.map.get(key) {
            if cas != 0 && cas != *current {
                return Status::CasMismatch;
            }
        }
        let new_cas = data.take_cas();
        data.map.insert(key.to_vec(), (value.to_vec(), new_cas));
        Status::Ok
    }

    pub fn find_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues
            .iter()
            .find(|(_, q)| q.vm_id == vm_id && q.name == name)
            .map(|(token, _)| *token)
    }

    /// `SharedQueue::enqueue`: queues the data and posts `onQueueReady` to
    /// the registering context.
    pub fn enqueue(&mut self, token: u32, data: &[u8]) -> Status {
        let Some(queue) = self.queues.get_mut(&token) else {
            return Status::NotFound;
        };
        queue.items.push_back(data.to_vec());
        let context = queue.context_id;
        self.deferred
            .push_back(Deferred::QueueReady { context, token });
        Status::Ok
    }
}

pub(crate) fn level_name(level: u32) -> &'static str {
    match level {
        0 => "trace",
        1 => "debug",
        2 => "info",
        3 => "warn",
        4 => "error",
        _ => "critical",
    }
}

/// Envoy's `SharedData`: values by key, each with its compare-and-swap version.
#[derive(Debug)]
pub struct SharedData {
    pub map: BTreeMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl Default for SharedData {
    fn default() -> Self {
        SharedData {
            map: BTreeMap::new(),
            next_cas: 1,
        }
    }
}

impl SharedData {
    /// `SharedData::nextCas`: never 0.
    fn take_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }
}

pub type SharedDataRef = std::sync::Arc<std::sync::Mutex<SharedData>>;
