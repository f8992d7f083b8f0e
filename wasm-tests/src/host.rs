//! [`Host`]: drives one filter instance the way Envoy's HTTP filter does.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use wasmtime::{Instance, Linker, Store, WasmParams, WasmResults};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::WasiCtxBuilder;

use crate::abi::Status;
use crate::engine;
use crate::headers::HeaderMap;
use crate::hostcalls::{self, StoreData};
use crate::properties::join_path;
use crate::state::{
    level_name, Action, CallResponse, Clock, Deferred, Direction, HostState, HttpCall, LocalReply,
    Stop, Stream, StreamKind,
};

/// 2026-01-15T12:00:00Z, the clock's initial value.
pub const DEFAULT_START_NANOS: u64 = 1_768_478_400_000_000_000;

/// How much guest stdout/stderr is kept (they are turned into log entries).
const STDIO_CAPACITY: usize = 64 << 20;

/// Identifies an HTTP stream context.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A proxy-wasm host running one filter module: one VM with one root context
/// (id 1) and any number of HTTP stream contexts (ids from 2).
///
/// Every method that calls into the guest returns `Err` if the guest traps
/// (a Rust panic in the filter). Like Envoy, which marks such a VM failed,
/// the host then refuses further calls into the guest; state can still be
/// inspected.
/// A filter that runs before ours in Envoy's chain, as the harness plays it.
type BeforeFilter = Box<dyn Fn(&mut HeaderMap)>;

pub struct Host {
    /// Envoy's `PluginConfig.allow_on_headers_stop_iteration` (opsgate's configs set it).
    allow_on_headers_stop_iteration: bool,
    store: Store<StoreData>,
    instance: Instance,
    failed: Option<String>,
    next_context_id: u32,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
    stdout_seen: usize,
    stderr_seen: usize,
    /// What the filters before ours in Envoy's chain do to request headers (the shipped
    /// configs run `header_mutation` and `jwt_authn` first); see [`Host::before_filter`].
    before: Option<BeforeFilter>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("failed", &self.failed)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Host {
    /// Loads the opsgate plugin from [`crate::plugin_wasm_path`], as opsgate's Envoy
    /// configs run it: with `allow_on_headers_stop_iteration: true`.
    pub fn plugin() -> Result<Self> {
        let mut host = Self::new(crate::require_plugin_wasm()?)?;
        host.set_allow_on_headers_stop_iteration(true);
        Ok(host)
    }

    /// Envoy's `PluginConfig.allow_on_headers_stop_iteration` (default false, as in
    /// Envoy): when set, a filter returning `StopIteration` from a headers callback keeps
    /// the headers (readable, modifiable) and still receives the body.
    pub fn set_allow_on_headers_stop_iteration(&mut self, allow: bool) {
        self.allow_on_headers_stop_iteration = allow;
    }

    /// Loads and instantiates a filter module and runs its WASI initializer
    /// (`_initialize` for a reactor such as a Rust `cdylib`, else `_start`).
    pub fn new(wasm_path: impl AsRef<Path>) -> Result<Self> {
        let path = wasm_path.as_ref();
        let wasm = std::fs::read(path).with_context(|| {
            format!(
                "cannot read the filter module {} (build it first; for the opsgate plugin: \
                 `cargo build -p opsgate-plugin --target wasm32-wasip1 --profile filter`)",
                path.display()
            )
        })?;
        let module =
            engine::load_module(&wasm).with_context(|| format!("loading {}", path.display()))?;
        let abi_ok = module.exports().any(|e| {
            e.name() == "proxy_abi_version_0_2_1" || e.name() == "proxy_abi_version_0_2_0"
        });
        if !abi_ok {
            bail!(
                "{} does not export proxy_abi_version_0_2_1 (or 0_2_0); Envoy would refuse it",
                path.display()
            );
        }

        let clock = Clock::new(DEFAULT_START_NANOS);
        let stdout = MemoryOutputPipe::new(STDIO_CAPACITY);
        let stderr = MemoryOutputPipe::new(STDIO_CAPACITY);
        // Nothing is inherited from the test process: no args, env, preopens
        // or stdin; the clocks are the host's controlled clock.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(clock.clone())
            .monotonic_clock(clock.clone())
            .build_p1();

        let mut linker = Linker::new(engine::engine());
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |data: &mut StoreData| &mut data.wasi)
            .map_err(crate::wasm_error)?;
        hostcalls::define(&mut linker, &module)?;

        let mut store = Store::new(
            engine::engine(),
            StoreData {
                wasi,
                state: HostState::new(clock),
            },
        );
        let instance = linker
            .instantiate(&mut store, &module)
            .map_err(crate::wasm_error)
            .with_context(|| format!("instantiating {}", path.display()))?;
        let mut host = Self {
            allow_on_headers_stop_iteration: false,
            store,
            instance,
            failed: None,
            next_context_id: 2,
            stdout,
            stderr,
            stdout_seen: 0,
            stderr_seen: 0,
            before: None,
        };
        if host.has_export("_initialize") {
            host.call::<(), ()>(0, "_initialize", ())?;
        } else if host.has_export("_start") {
            host.call::<(), ()>(0, "_start", ())?;
        }
        Ok(host)
    }

    // -----------------------------------------------------------------------
    // Lifecycle

    /// The root context id (1, as in Envoy).
    pub fn root_id(&self) -> u32 {
        self.state().root_id
    }

    /// Creates and starts the root context on first use
    /// (`proxy_on_context_create(root, 0)`, `proxy_on_vm_start`), then
    /// `proxy_on_configure`. Returns what the filter returned (`false` from
    /// `on_vm_start` is returned without configuring). The plugin
    /// configuration is readable while the root context is created and
    /// configured, the VM configuration at any time.
    pub fn configure(&mut self, vm_config: &str, plugin_config: &str) -> Result<bool> {
        let root = self.root_id();
        {
            let state = self.state_mut();
            if state.root_deleted {
                bail!("the root context was deleted");
            }
            state.vm_config = vm_config.as_bytes().to_vec();
            state.plugin_config = plugin_config.as_bytes().to_vec();
        }
        if !self.state().root_created {
            self.state_mut().plugin_config_visible = true;
            let created =
                self.call::<(i32, i32), ()>(root, "proxy_on_context_create", (root as i32, 0));
            self.state_mut().plugin_config_visible = false;
            created?;
            self.state_mut().root_created = true;
            let started = self
                .call::<(i32, i32), i32>(
                    root,
                    "proxy_on_vm_start",
                    (root as i32, vm_config.len() as i32),
                )?
                .unwrap_or(1);
            self.drain_deferred()?;
            if started == 0 {
                return Ok(false);
            }
        }
        self.state_mut().plugin_config_visible = true;
        let configured = self.call::<(i32, i32), i32>(
            root,
            "proxy_on_configure",
            (root as i32, plugin_config.len() as i32),
        );
        self.state_mut().plugin_config_visible = false;
        let configured = configured?.unwrap_or(1);
        self.drain_deferred()?;
        Ok(configured != 0)
    }

    /// Fires the root context's timer once (`proxy_on_tick`).
    pub fn tick(&mut self) -> Result<()> {
        let root = self.require_root()?;
        self.call::<i32, ()>(root, "proxy_on_tick", root as i32)?;
        self.drain_deferred()
    }

    /// The period the filter set with `proxy_set_tick_period_milliseconds`
    /// (`None` if unset or 0).
    pub fn tick_period(&self) -> Option<Duration> {
        self.state().tick_period
    }

    /// Shuts the root context down like Envoy on plugin removal:
    /// `proxy_on_done(root)`; if it returns `true` the root is deleted
    /// (`proxy_on_delete`) and `true` is returned. If it returns `false` the
    /// host waits for the filter to call `proxy_done`, which then deletes the
    /// root (see [`Host::done_called`]).
    pub fn shutdown(&mut self) -> Result<bool> {
        let root = self.require_root()?;
        if self.state().root_pending_done {
            bail!("shutdown already requested; waiting for proxy_done");
        }
        let done = self
            .call::<i32, i32>(root, "proxy_on_done", root as i32)?
            .unwrap_or(1)
            != 0;
        if done {
            self.call::<i32, ()>(root, "proxy_on_delete", root as i32)?;
            self.state_mut().root_deleted = true;
        } else {
            self.state_mut().root_pending_done = true;
        }
        self.drain_deferred()?;
        Ok(done)
    }

    /// Whether the filter called `proxy_done` after [`Host::shutdown`].
    pub fn done_called(&self) -> bool {
        self.state().done_called
    }

    /// Whether the root context has been deleted.
    pub fn root_deleted(&self) -> bool {
        self.state().root_deleted
    }

    /// The message of the trap that failed the VM, if any.
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    // -----------------------------------------------------------------------
    // Streams

    /// Creates an HTTP stream context: `proxy_on_context_create(id, root)`.
    pub fn new_stream(&mut self) -> Result<StreamId> {
        let root = self.require_root()?;
        let id = self.next_context_id;
        self.next_context_id += 1;
        self.state_mut().streams.insert(id, Stream::default());
        self.call::<(i32, i32), ()>(id, "proxy_on_context_create", (id as i32, root as i32))?;
        self.drain_deferred()?;
        Ok(StreamId(id))
    }

    /// Delivers the request headers (`proxy_on_request_headers`). Names are
    /// lower-cased. Any stop status, or a local reply sent during the
    /// callback, is [`Action::Pause`]; Envoy then holds the headers (the filter
    /// can still read and modify them) until `proxy_continue_stream`.
    pub fn request_headers(
        &mut self,
        id: StreamId,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.request_headers_map(id, HeaderMap::from_pairs(headers), end_of_stream)
    }

    /// Plays the filters that run before ours in Envoy's chain: `f` sees (and may change)
    /// every request's headers before the filter does.
    pub fn before_filter(&mut self, f: impl Fn(&mut HeaderMap) + 'static) {
        self.before = Some(Box::new(f));
    }

    /// [`Host::request_headers`] with a prepared map: values (and names) may be any bytes,
    /// as Envoy passes obs-text (0x80–0xFF) through.
    pub fn request_headers_map(
        &mut self,
        id: StreamId,
        mut headers: HeaderMap,
        end_of_stream: bool,
    ) -> Result<Action> {
        self.check_headers_allowed(id, StreamKind::Request)?;
        if let Some(before) = &self.before {
            before(&mut headers);
        }
        self.deliver_headers(id.0, StreamKind::Request, headers, end_of_stream)
    }

    /// Delivers a request body chunk (`proxy_on_request_body`).
    ///
    /// If the previous body callback returned `StopIterationAndBuffer`, the
    /// chunk is appended to the buffered body and the callback sees the
    /// whole buffer; when a callback returns `Continue` the buffer is passed
    /// upstream ([`Host::forwarded_request_body`]). While the filter keeps the
    /// headers paused, Envoy buffers the data without calling the filter and
    /// hands it over after `proxy_continue_stream`; this returns
    /// [`Action::Pause`] then.
    pub fn request_body(
        &mut self,
        id: StreamId,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.data(id, StreamKind::Request, chunk, end_of_stream)
    }

    /// Delivers the request trailers (`proxy_on_request_trailers`).
    pub fn request_trailers(&mut self, id: StreamId, trailers: &[(&str, &str)]) -> Result<Action> {
        self.trailers(id, StreamKind::Request, HeaderMap::from_pairs(trailers))
    }

    /// [`Host::request_trailers`] with a prepared map (any bytes).
    pub fn request_trailers_map(&mut self, id: StreamId, trailers: HeaderMap) -> Result<Action> {
        self.trailers(id, StreamKind::Request, trailers)
    }

    /// Delivers the upstream response headers (`proxy_on_response_headers`).
    /// Fails if Envoy could not have a response yet: the request headers were
    /// not forwarded, or the filter already answered with a local reply.
    pub fn response_headers(
        &mut self,
        id: StreamId,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.check_headers_allowed(id, StreamKind::Response)?;
        self.deliver_headers(
            id.0,
            StreamKind::Response,
            HeaderMap::from_pairs(headers),
            end_of_stream,
        )
    }

    /// [`Host::response_headers`] with a prepared map (any bytes).
    pub fn response_headers_map(
        &mut self,
        id: StreamId,
        headers: HeaderMap,
        end_of_stream: bool,
    ) -> Result<Action> {
        self.check_headers_allowed(id, StreamKind::Response)?;
        self.deliver_headers(id.0, StreamKind::Response, headers, end_of_stream)
    }

    /// Delivers a response body chunk; same buffering as
    /// [`Host::request_body`].
    pub fn response_body(
        &mut self,
        id: StreamId,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action> {
        self.data(id, StreamKind::Response, chunk, end_of_stream)
    }

    /// Delivers the response trailers (`proxy_on_response_trailers`).
    pub fn response_trailers(&mut self, id: StreamId, trailers: &[(&str, &str)]) -> Result<Action> {
        self.trailers(id, StreamKind::Response, HeaderMap::from_pairs(trailers))
    }

    /// [`Host::response_trailers`] with a prepared map (any bytes).
    pub fn response_trailers_map(&mut self, id: StreamId, trailers: HeaderMap) -> Result<Action> {
        self.trailers(id, StreamKind::Response, trailers)
    }

    /// Ends the stream the way Envoy destroys a finished HTTP stream: the
    /// filter's access-log hook `proxy_on_log` (headers readable, read only),
    /// then `proxy_on_done` and `proxy_on_delete`.
    pub fn done(&mut self, id: StreamId) -> Result<()> {
        self.live_stream(id)?;
        self.stream_mut(id.0)?.access_log_phase = true;
        let logged = self.call::<i32, ()>(id.0, "proxy_on_log", id.0 as i32);
        if let Ok(stream) = self.stream_mut(id.0) {
            stream.access_log_phase = false;
        }
        logged?;
        self.call::<i32, i32>(id.0, "proxy_on_done", id.0 as i32)?;
        self.call::<i32, ()>(id.0, "proxy_on_delete", id.0 as i32)?;
        self.stream_mut(id.0)?.deleted = true;
        self.drain_deferred()
    }

    // -----------------------------------------------------------------------
    // Stream inspection

    /// The request headers as they stand (after the filter's changes).
    pub fn request_headers_of(&self, id: StreamId) -> Vec<(String, String)> {
        self.direction(id, StreamKind::Request)
            .map(|d| d.headers.to_strings())
            .unwrap_or_default()
    }

    /// The response headers as they stand (after the filter's changes).
    pub fn response_headers_of(&self, id: StreamId) -> Vec<(String, String)> {
        self.direction(id, StreamKind::Response)
            .map(|d| d.headers.to_strings())
            .unwrap_or_default()
    }

    pub fn request_trailers_of(&self, id: StreamId) -> Vec<(String, String)> {
        self.direction(id, StreamKind::Request)
            .map(|d| d.trailers.to_strings())
            .unwrap_or_default()
    }

    pub fn response_trailers_of(&self, id: StreamId) -> Vec<(String, String)> {
        self.direction(id, StreamKind::Response)
            .map(|d| d.trailers.to_strings())
            .unwrap_or_default()
    }

    /// A request header (first value), as it stands.
    pub fn header(&self, id: StreamId, name: &str) -> Option<String> {
        self.direction(id, StreamKind::Request)?
            .headers
            .get_str(name)
    }

    /// A response header (first value), as it stands.
    pub fn response_header(&self, id: StreamId, name: &str) -> Option<String> {
        self.direction(id, StreamKind::Response)?
            .headers
            .get_str(name)
    }

    /// The request body with the filter's modifications: what was forwarded
    /// upstream followed by what is still buffered.
    pub fn request_body_of(&self, id: StreamId) -> Vec<u8> {
        self.body_of(id, StreamKind::Request)
    }

    /// The response body with the filter's modifications (forwarded, then
    /// buffered).
    pub fn response_body_of(&self, id: StreamId) -> Vec<u8> {
        self.body_of(id, StreamKind::Response)
    }

    /// Request body bytes passed upstream so far.
    pub fn forwarded_request_body(&self, id: StreamId) -> Vec<u8> {
        self.direction(id, StreamKind::Request)
            .map(|d| d.forwarded_body.clone())
            .unwrap_or_default()
    }

    /// Response body bytes passed downstream so far.
    pub fn forwarded_response_body(&self, id: StreamId) -> Vec<u8> {
        self.direction(id, StreamKind::Response)
            .map(|d| d.forwarded_body.clone())
            .unwrap_or_default()
    }

    /// The local reply the filter sent with `proxy_send_local_response`.
    pub fn local_reply(&self, id: StreamId) -> Option<LocalReply> {
        self.state().streams.get(&id.0)?.local_reply.clone()
    }

    /// How many times the filter called `proxy_continue_stream` for this
    /// direction.
    pub fn resumed(&self, id: StreamId, kind: StreamKind) -> usize {
        self.direction(id, kind).map_or(0, |d| d.resumed)
    }

    /// How many times the filter called `proxy_close_stream` for this
    /// direction (Envoy resets the stream).
    pub fn closed(&self, id: StreamId, kind: StreamKind) -> usize {
        self.direction(id, kind).map_or(0, |d| d.closed)
    }

    /// Whether the direction is stopped (filter iteration paused and not
    /// resumed).
    pub fn is_paused(&self, id: StreamId, kind: StreamKind) -> bool {
        self.direction(id, kind)
            .is_some_and(|d| d.stopped != Stop::None)
    }

    /// The raw value the filter returned from the last callback of this
    /// direction (e.g. 1 = `StopIteration`/`StopIterationAndBuffer`).
    pub fn last_status(&self, id: StreamId, kind: StreamKind) -> Option<u32> {
        self.direction(id, kind)?.last_status
    }

    // -----------------------------------------------------------------------
    // Http callouts

    /// Makes a cluster known, so `proxy_http_call` to it is accepted.
    pub fn add_cluster(&mut self, name: &str) {
        self.state_mut().clusters.insert(name.to_string());
    }

    /// Outstanding calls not yet taken with [`Host::take_call`].
    pub fn pending_calls(&self) -> Vec<HttpCall> {
        let state = self.state();
        state
            .calls
            .values()
            .filter(|c| !state.taken_calls.contains(&c.token))
            .cloned()
            .collect()
    }

    /// The first outstanding, not yet taken call matching `predicate`. The
    /// call stays outstanding: answer it with [`Host::respond`] or
    /// [`Host::fail_call`].
    pub fn take_call(&mut self, predicate: impl Fn(&HttpCall) -> bool) -> Option<HttpCall> {
        let state = self.state_mut();
        let call = state
            .calls
            .values()
            .find(|c| !state.taken_calls.contains(&c.token) && predicate(c))
            .cloned()?;
        state.taken_calls.insert(call.token);
        Some(call)
    }

    /// Answers a call: `proxy_on_http_call_response(root, token, headers,
    /// body size, 0)` with `:status` added in front of `headers`. During the
    /// callback the response headers and body are readable. As in Envoy the
    /// call belongs to the root context, which is the current context during
    /// the callback; the SDK switches to the issuing context with
    /// `proxy_set_effective_context`.
    pub fn respond(
        &mut self,
        token: u32,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<()> {
        let mut map = HeaderMap::new();
        map.add(b":status", status.to_string().as_bytes());
        for (k, v) in headers {
            map.add(k.as_bytes(), v.as_bytes());
        }
        self.deliver_call_response(token, Some((map, body.to_vec())))
    }

    /// [`Host::respond`] with a prepared header map (any bytes; `:status` as given, or absent).
    pub fn respond_map(&mut self, token: u32, headers: HeaderMap, body: &[u8]) -> Result<()> {
        self.deliver_call_response(token, Some((headers, body.to_vec())))
    }

    /// Fails a call the way Envoy reports a reset (`onHttpCallFailure`): the
    /// callback gets 0 headers, 0 body bytes and 0 trailers, the response
    /// headers/body are unavailable, and `proxy_get_status` returns
    /// `BrokenConnection` with message "reset" during it.
    ///
    /// Note that in Envoy most upstream failures do not take this path: the
    /// async client's router turns a timeout into a `504` response
    /// ([`Host::timeout_call`]) and a connect failure or a cluster without
    /// healthy hosts into a `503` response, which arrive through
    /// [`Host::respond`].
    pub fn fail_call(&mut self, token: u32) -> Result<()> {
        self.deliver_call_response(token, None)
    }

    /// Times a call out the way Envoy's router does: a `504` response with
    /// body `upstream request timeout`.
    pub fn timeout_call(&mut self, token: u32) -> Result<()> {
        let body = b"upstream request timeout";
        let length = body.len().to_string();
        self.respond(
            token,
            504,
            &[("content-length", &length), ("content-type", "text/plain")],
            body,
        )
    }

    // -----------------------------------------------------------------------
    // Clock

    /// Sets the wall clock (`proxy_get_current_time_nanoseconds`, WASI
    /// realtime). The monotonic clock only moves forward.
    pub fn set_time_nanos(&mut self, nanos: u64) {
        self.state().clock.set(nanos);
    }

    pub fn advance(&mut self, by: Duration) {
        let now = self.now_nanos();
        self.set_time_nanos(now.saturating_add(by.as_nanos() as u64));
    }

    pub fn now_nanos(&self) -> u64 {
        self.state().clock.now()
    }

    // -----------------------------------------------------------------------
    // Shared state, properties, metrics, logs

    /// A shared-data entry and its CAS.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.state().get_shared_data(key.as_bytes())
    }

    /// Makes this host another worker of `other`'s Envoy: the two VMs share one shared-data
    /// map, as Envoy's worker threads do for one VM id. Call before configuring.
    pub fn worker_of(&mut self, other: &Host) {
        let shared = other.state().shared_data.clone();
        self.state_mut().shared_data = shared;
    }

    /// Writes shared data unconditionally, as another VM would (new CAS).
    pub fn set_shared_data(&mut self, key: &str, value: &[u8]) {
        self.state_mut().set_shared_data(key.as_bytes(), value, 0);
    }

    /// Enqueues data on a queue the filter registered (in this VM) and
    /// delivers the resulting `proxy_on_queue_ready`.
    pub fn enqueue(&mut self, queue: &str, data: &[u8]) -> Result<()> {
        let state = self.state_mut();
        let vm_id = state.vm_id.clone();
        let token = state
            .find_queue(&vm_id, queue)
            .ok_or_else(|| anyhow!("no shared queue {queue:?} is registered"))?;
        if state.enqueue(token, data) != Status::Ok {
            bail!("cannot enqueue on {queue:?}");
        }
        self.drain_deferred()
    }

    /// The items waiting in a queue.
    pub fn queue_items(&self, queue: &str) -> Vec<Vec<u8>> {
        let state = self.state();
        state
            .find_queue(&state.vm_id, queue)
            .and_then(|token| state.queues.get(&token))
            .map(|q| q.items.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The names of the shared queues the filter registered in this VM. Envoy keeps one
    /// registry per VM id across worker threads, where a name registered again is taken
    /// over by its last registrant: each worker's queue needs a name of its own.
    pub fn queue_names(&self) -> Vec<String> {
        self.state()
            .queues
            .values()
            .map(|q| q.name.clone())
            .collect()
    }

    /// Sets the VM id used to scope shared queues (default empty).
    pub fn set_vm_id(&mut self, vm_id: &str) {
        self.state_mut().vm_id = vm_id.to_string();
    }

    /// Sets a property for every context, e.g. `&["source", "address"]`.
    pub fn set_property(&mut self, path: &[&str], value: &[u8]) {
        self.state_mut()
            .properties
            .insert(join_path(path), value.to_vec());
    }

    pub fn remove_property(&mut self, path: &[&str]) {
        self.state_mut().properties.remove(&join_path(path));
    }

    /// Sets a property seen only by one stream (takes precedence).
    pub fn set_stream_property(&mut self, id: StreamId, path: &[&str], value: &[u8]) {
        if let Some(stream) = self.state_mut().streams.get_mut(&id.0) {
            stream.properties.insert(join_path(path), value.to_vec());
        }
    }

    /// A property as the filter would read it on this stream (stream
    /// properties, then host properties, then derived attributes).
    pub fn stream_property(&self, id: StreamId, path: &[&str]) -> Option<Vec<u8>> {
        let state = self.state();
        let stream = state.streams.get(&id.0).filter(|s| !s.deleted);
        crate::properties::lookup_in(state, stream, &join_path(path))
    }

    /// A counter or gauge by the name the filter defined it with.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.state().metrics.by_name(name)
    }

    /// The values recorded on a histogram.
    pub fn histogram(&self, name: &str) -> Vec<u64> {
        self.state()
            .metrics
            .histograms
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Every log line so far: `proxy_log` with its level (0 trace ..
    /// 5 critical), guest stdout as info (2) and stderr as error (4), as
    /// Envoy logs them.
    pub fn logs(&self) -> Vec<(u32, String)> {
        self.state().logs.clone()
    }

    /// Whether any log message contains `needle`.
    pub fn has_log(&self, needle: &str) -> bool {
        self.state().logs.iter().any(|(_, m)| m.contains(needle))
    }

    /// Hostcalls the guest made since the last [`Host::clear_hostcalls`], by import name,
    /// with the host's guest allocations as `proxy_on_memory_allocate`.
    pub fn hostcalls(&self) -> BTreeMap<&'static str, u64> {
        self.state().hostcalls.clone()
    }

    /// Stops delivering `proxy_on_queue_ready` (the items stay queued): a host that loses
    /// wake-ups, for the filter's safety nets.
    pub fn drop_queue_ready(&mut self, drop: bool) {
        self.state_mut().drop_queue_ready = drop;
    }

    pub fn clear_hostcalls(&mut self) {
        self.state_mut().hostcalls.clear();
    }

    pub fn clear_logs(&mut self) {
        self.state_mut().logs.clear();
    }

    /// The level `proxy_get_log_level` reports (default 0, trace).
    pub fn set_log_level(&mut self, level: u32) {
        self.state_mut().log_level = level;
    }

    // -----------------------------------------------------------------------
    // Internals

    fn state(&self) -> &HostState {
        &self.store.data().state
    }

    fn state_mut(&mut self) -> &mut HostState {
        &mut self.store.data_mut().state
    }

    fn has_export(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    fn require_root(&self) -> Result<u32> {
        let state = self.state();
        if !state.root_created {
            bail!("the root context does not exist yet: call configure() first");
        }
        if state.root_deleted {
            bail!("the root context was deleted");
        }
        Ok(state.root_id)
    }

    fn stream_mut(&mut self, id: u32) -> Result<&mut Stream> {
        self.state_mut()
            .streams
            .get_mut(&id)
            .ok_or_else(|| anyhow!("unknown stream {id}"))
    }

    fn direction(&self, id: StreamId, kind: StreamKind) -> Option<&Direction> {
        Some(self.state().streams.get(&id.0)?.direction(kind))
    }

    fn body_of(&self, id: StreamId, kind: StreamKind) -> Vec<u8> {
        self.direction(id, kind)
            .map(|d| [d.forwarded_body.as_slice(), d.body.as_slice()].concat())
            .unwrap_or_default()
    }

    /// The stream must exist, not be deleted and not be reset.
    fn live_stream(&self, id: StreamId) -> Result<&Stream> {
        let stream = self
            .state()
            .streams
            .get(&id.0)
            .ok_or_else(|| anyhow!("unknown stream {id}"))?;
        if stream.deleted {
            bail!("stream {id} is done (deleted)");
        }
        Ok(stream)
    }

    /// Common checks before the test feeds data into a direction.
    fn check_feed(&self, id: StreamId, kind: StreamKind) -> Result<()> {
        let stream = self.live_stream(id)?;
        if stream.reset {
            bail!("stream {id} was reset by the filter (proxy_close_stream)");
        }
        if stream.local_reply.is_some()
            && !(kind == StreamKind::Response && stream.local_reply_delivered)
        {
            bail!(
                "stream {id} was answered with a local reply; Envoy delivers no more {kind:?} data to the filter"
            );
        }
        Ok(())
    }

    fn check_headers_allowed(&self, id: StreamId, kind: StreamKind) -> Result<()> {
        self.check_feed(id, kind)?;
        let stream = self.live_stream(id)?;
        if stream.direction(kind).headers_received {
            bail!("stream {id}: {kind:?} headers were already delivered");
        }
        if kind == StreamKind::Response && !stream.request.headers_forwarded {
            bail!(
                "stream {id}: the request headers were not forwarded upstream (the filter paused them \
                 and has not resumed), so there cannot be a response yet"
            );
        }
        Ok(())
    }

    fn check_data_allowed(&self, id: StreamId, kind: StreamKind) -> Result<&Direction> {
        self.check_feed(id, kind)?;
        let d = self.live_stream(id)?.direction(kind);
        if !d.headers_received {
            bail!("stream {id}: {kind:?} headers must come first");
        }
        if d.end_of_stream {
            bail!("stream {id}: the {kind:?} already ended (end_of_stream was set)");
        }
        Ok(d)
    }

    fn data(
        &mut self,
        id: StreamId,
        kind: StreamKind,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action> {
        let d = self.check_data_allowed(id, kind)?;
        if d.stopped == Stop::Headers {
            let d = self.stream_mut(id.0)?.direction_mut(kind);
            d.held_body
                .get_or_insert_with(Vec::new)
                .extend_from_slice(chunk);
            d.held_end_of_stream = end_of_stream;
            d.end_of_stream = end_of_stream;
            return Ok(Action::Pause);
        }
        self.deliver_body(id.0, kind, chunk.to_vec(), end_of_stream)
    }

    fn trailers(&mut self, id: StreamId, kind: StreamKind, map: HeaderMap) -> Result<Action> {
        let d = self.check_data_allowed(id, kind)?;
        if d.stopped == Stop::Headers {
            let d = self.stream_mut(id.0)?.direction_mut(kind);
            d.held_trailers = Some(map);
            d.end_of_stream = true;
            return Ok(Action::Pause);
        }
        self.deliver_trailers(id.0, kind, map)
    }

    fn deliver_headers(
        &mut self,
        id: u32,
        kind: StreamKind,
        map: HeaderMap,
        end_of_stream: bool,
    ) -> Result<Action> {
        let count = map.len();
        {
            let d = self.stream_mut(id)?.direction_mut(kind);
            d.headers = map;
            d.headers_received = true;
            d.headers_visible = true;
            d.end_of_stream = end_of_stream;
        }
        let name = match kind {
            StreamKind::Request => "proxy_on_request_headers",
            StreamKind::Response => "proxy_on_response_headers",
        };
        let (raw, replied) =
            self.callback(id, name, (id as i32, count as i32, end_of_stream as i32))?;
        let allow_stop_iteration = self.allow_on_headers_stop_iteration;
        let d = self.stream_mut(id)?.direction_mut(kind);
        d.last_status = Some(raw);
        // FilterHeadersStatus: 0 Continue, 2 ContinueAndEndStream; anything
        // else stops all iteration (0.2.x turns StopIteration into
        // StopAllIterationAndWatermark), as does a local reply.
        let action = if !replied && (raw == 0 || raw == 2) {
            d.headers_visible = false;
            d.headers_forwarded = true;
            Action::Continue
        } else if !replied && raw == 1 && allow_stop_iteration {
            d.stopped = Stop::HeadersIteration;
            Action::Pause
        } else {
            d.stopped = Stop::Headers;
            Action::Pause
        };
        self.drain_deferred()?;
        Ok(action)
    }

    fn deliver_body(
        &mut self,
        id: u32,
        kind: StreamKind,
        chunk: Vec<u8>,
        end_of_stream: bool,
    ) -> Result<Action> {
        let size = {
            let d = self.stream_mut(id)?.direction_mut(kind);
            if d.buffering {
                d.body.extend_from_slice(&chunk);
            } else {
                d.body = chunk;
            }
            d.body_visible = true;
            d.body_end_of_stream = end_of_stream;
            d.end_of_stream |= end_of_stream;
            d.body.len()
        };
        let name = match kind {
            StreamKind::Request => "proxy_on_request_body",
            StreamKind::Response => "proxy_on_response_body",
        };
        let (raw, replied) =
            self.callback(id, name, (id as i32, size as i32, end_of_stream as i32))?;
        let d = self.stream_mut(id)?.direction_mut(kind);
        d.last_status = Some(raw);
        // FilterDataStatus: 0 Continue, 1 StopIterationAndBuffer,
        // 2 StopIterationAndWatermark, 3 StopIterationNoBuffer.
        let action = if !replied && raw == 0 {
            if d.stopped == Stop::HeadersIteration {
                // Continuing the body continues the held headers first.
                d.headers_visible = false;
                d.headers_forwarded = true;
            }
            forward_body(d);
            if matches!(d.stopped, Stop::Body | Stop::HeadersIteration) {
                d.stopped = Stop::None;
            }
            Action::Continue
        } else {
            d.buffering = !replied && (raw == 1 || raw == 2);
            if d.stopped != Stop::HeadersIteration {
                d.stopped = Stop::Body;
            }
            Action::Pause
        };
        self.drain_deferred()?;
        Ok(action)
    }

    fn deliver_trailers(&mut self, id: u32, kind: StreamKind, map: HeaderMap) -> Result<Action> {
        let count = map.len();
        {
            let d = self.stream_mut(id)?.direction_mut(kind);
            d.trailers = map;
            d.trailers_received = true;
            d.trailers_visible = true;
            d.end_of_stream = true;
        }
        let name = match kind {
            StreamKind::Request => "proxy_on_request_trailers",
            StreamKind::Response => "proxy_on_response_trailers",
        };
        let (raw, replied) = self.callback(id, name, (id as i32, count as i32))?;
        let d = self.stream_mut(id)?.direction_mut(kind);
        d.last_status = Some(raw);
        let action = if !replied && raw == 0 {
            // Continuing on trailers also releases a buffered body.
            d.trailers_visible = false;
            forward_body(d);
            d.stopped = Stop::None;
            Action::Continue
        } else {
            d.stopped = Stop::Trailers;
            Action::Pause
        };
        self.drain_deferred()?;
        Ok(action)
    }

    /// Runs a stream callback returning a filter status; reports whether the
    /// filter sent a local reply meanwhile (Envoy then stops iteration
    /// whatever the callback returned).
    fn callback<P: WasmParams>(&mut self, id: u32, name: &str, params: P) -> Result<(u32, bool)> {
        let before = self.state().local_replies_sent;
        let raw = self.call::<P, i32>(id, name, params)?.unwrap_or(0) as u32;
        Ok((raw, self.state().local_replies_sent != before))
    }

    fn deliver_call_response(
        &mut self,
        token: u32,
        response: Option<(HeaderMap, Vec<u8>)>,
    ) -> Result<()> {
        let root = self.require_root()?;
        let call = self
            .state_mut()
            .calls
            .remove(&token)
            .ok_or_else(|| anyhow!("no outstanding http call with token {token}"))?;
        let state = self.state_mut();
        state.taken_calls.remove(&call.token);
        let (headers, body_size) = match response {
            Some((headers, body)) => {
                let counts = (headers.len(), body.len());
                state.call_response = Some(CallResponse {
                    headers,
                    body,
                    trailers: HeaderMap::new(),
                });
                counts
            }
            None => {
                state.status = (Status::BrokenConnection as u32, b"reset".to_vec());
                (0, 0)
            }
        };
        let result = self.call::<(i32, i32, i32, i32, i32), ()>(
            root,
            "proxy_on_http_call_response",
            (
                root as i32,
                token as i32,
                headers as i32,
                body_size as i32,
                0,
            ),
        );
        let state = self.state_mut();
        state.call_response = None;
        state.status.1.clear();
        result?;
        self.drain_deferred()
    }

    /// Calls a guest export with `context` as the current context. Returns
    /// `None` if the module does not export it (Envoy skips such calls).
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        context: u32,
        name: &str,
        params: P,
    ) -> Result<Option<R>> {
        if let Some(reason) = &self.failed {
            bail!("the VM failed earlier and Envoy would not call it again: {reason}");
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let func = func
            .typed::<P, R>(&self.store)
            .map_err(crate::wasm_error)
            .with_context(|| format!("export {name} has an unexpected signature"))?;
        let state = self.state_mut();
        let saved = (state.current, state.effective);
        state.current = context;
        state.effective = 0;
        let logs_before = state.logs.len();
        let result = func.call(&mut self.store, params);
        let state = self.state_mut();
        (state.current, state.effective) = saved;
        self.collect_stdio();
        match result {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                let mut message = format!("guest trapped in {name}(context {context}): {error:?}");
                let output = &self.state().logs[logs_before..];
                if !output.is_empty() {
                    message.push_str("\nguest output during the call:");
                    for (level, line) in output {
                        message.push_str(&format!("\n  [{}] {line}", level_name(*level)));
                    }
                }
                self.failed = Some(message.clone());
                self.state_mut().deferred.clear();
                Err(anyhow!(message))
            }
        }
    }

    /// Turns new guest stdout/stderr output into log entries.
    fn collect_stdio(&mut self) {
        for (pipe, seen, level) in [
            (&self.stdout, &mut self.stdout_seen, 2u32),
            (&self.stderr, &mut self.stderr_seen, 4u32),
        ] {
            let contents = pipe.contents();
            if contents.len() <= *seen {
                continue;
            }
            let new = String::from_utf8_lossy(&contents[*seen..]).into_owned();
            *seen = contents.len();
            let state = &mut self.store.data_mut().state;
            for line in new.lines().filter(|l| !l.is_empty()) {
                state.log(level, line.to_string());
            }
        }
    }

    /// Runs what Envoy defers until the VM call returns, in order, including
    /// whatever those actions defer in turn.
    fn drain_deferred(&mut self) -> Result<()> {
        while let Some(action) = self.state_mut().deferred.pop_front() {
            match action {
                Deferred::Continue { context, kind } => self.resume(context, kind)?,
                Deferred::LocalReply { context } => self.send_local_reply(context)?,
                Deferred::QueueReady { context, token } => {
                    if self.state().context_alive(context) && !self.state().drop_queue_ready {
                        self.call::<(i32, i32), ()>(
                            context,
                            "proxy_on_queue_ready",
                            (context as i32, token as i32),
                        )?;
                    }
                }
                Deferred::DeleteRoot => {
                    let root = self.root_id();
                    self.call::<i32, ()>(root, "proxy_on_delete", root as i32)?;
                    self.state_mut().root_deleted = true;
                }
            }
        }
        Ok(())
    }

    /// `continueDecoding()` / `continueEncoding()`.
    fn resume(&mut self, id: u32, kind: StreamKind) -> Result<()> {
        let Some(stream) = self.state_mut().streams.get_mut(&id) else {
            return Ok(());
        };
        if stream.deleted || stream.reset {
            return Ok(());
        }
        let d = stream.direction_mut(kind);
        match d.stopped {
            Stop::Headers => {
                d.stopped = Stop::None;
                d.headers_visible = false;
                d.headers_forwarded = true;
                let body = d.held_body.take();
                let end_of_stream = d.held_end_of_stream;
                let trailers = d.held_trailers.take();
                if let Some(body) = body {
                    let end_of_stream = end_of_stream && trailers.is_none();
                    self.deliver_body(id, kind, body, end_of_stream)?;
                }
                if let Some(trailers) = trailers {
                    if !self.stopped_by_reply(id, kind) {
                        self.deliver_trailers(id, kind, trailers)?;
                    }
                }
            }
            Stop::HeadersIteration => {
                d.stopped = Stop::None;
                d.headers_visible = false;
                d.headers_forwarded = true;
                forward_body(d);
            }
            Stop::Body => {
                forward_body(d);
                d.stopped = Stop::None;
            }
            Stop::Trailers => {
                d.trailers_visible = false;
                forward_body(d);
                d.stopped = Stop::None;
            }
            Stop::None => {}
        }
        Ok(())
    }

    fn stopped_by_reply(&self, id: u32, kind: StreamKind) -> bool {
        self.state().streams.get(&id).is_some_and(|s| {
            s.local_reply.is_some() && !(kind == StreamKind::Response && s.local_reply_delivered)
        })
    }

    /// `sendLocalReply()`: Envoy encodes the reply through the filter chain,
    /// so this filter's response callbacks see it. Headers: `:status`, the
    /// filter's additional headers, then `content-length` and a default
    /// `content-type: text/plain` for a non-empty body (none for an empty
    /// one); a `HEAD` request gets no body.
    fn send_local_reply(&mut self, id: u32) -> Result<()> {
        let Some(stream) = self.state().streams.get(&id) else {
            return Ok(());
        };
        let Some(reply) = stream.local_reply.clone() else {
            return Ok(());
        };
        if stream.deleted || stream.reset || stream.response.headers_received {
            // The response already started: Envoy can only reset the stream.
            return Ok(());
        }
        let head = stream.request.headers.get(b":method") == Some(b"HEAD");
        let mut headers = HeaderMap::new();
        headers.add(b":status", reply.status.to_string().as_bytes());
        for (k, v) in &reply.headers {
            headers.add(k.as_bytes(), v.as_bytes());
        }
        if reply.body.is_empty() {
            headers.remove(b"content-length");
            headers.remove(b"content-type");
        } else {
            headers.set(b"content-length", reply.body.len().to_string().as_bytes());
            if !headers.contains(b"content-type") {
                headers.set(b"content-type", b"text/plain");
            }
        }
        let body = if head { Vec::new() } else { reply.body };
        {
            let stream = self.stream_mut(id)?;
            stream.local_reply_delivered = true;
            // The request is finished by the reply rather than paused.
            stream.request.stopped = Stop::None;
        }
        let action = self.deliver_headers(id, StreamKind::Response, headers, body.is_empty())?;
        if !body.is_empty() {
            let d = self.stream_mut(id)?.direction_mut(StreamKind::Response);
            if action == Action::Pause && d.stopped == Stop::Headers {
                d.held_body = Some(body);
                d.held_end_of_stream = true;
                d.end_of_stream = true;
            } else {
                self.deliver_body(id, StreamKind::Response, body, true)?;
            }
        }
        Ok(())
    }
}

fn forward_body(d: &mut Direction) {
    let body = std::mem::take(&mut d.body);
    d.forwarded_body.extend_from_slice(&body);
    d.body_visible = false;
    d.buffering = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal module: imports `env.proxy_mystery: () -> i32`, exports the
    /// ABI marker and `call_mystery`, which calls the import.
    fn stub_module(abi_marker: &str) -> Vec<u8> {
        let mut wasm = b"\0asm\x01\0\0\0".to_vec();
        let mut section = |id: u8, content: Vec<u8>| {
            wasm.push(id);
            wasm.push(content.len() as u8);
            wasm.extend(content);
        };
        let name = |s: &str| [vec![s.len() as u8], s.as_bytes().to_vec()].concat();
        // Types: 0 = () -> i32, 1 = () -> ().
        section(1, vec![2, 0x60, 0, 1, 0x7f, 0x60, 0, 0]);
        section(
            2,
            [vec![1], name("env"), name("proxy_mystery"), vec![0, 0]].concat(),
        );
        section(3, vec![2, 1, 0]);
        section(
            7,
            [
                vec![2],
                name(abi_marker),
                vec![0, 1],
                name("call_mystery"),
                vec![0, 2],
            ]
            .concat(),
        );
        section(10, vec![2, 2, 0, 0x0b, 4, 0, 0x10, 0, 0x0b]);
        wasm
    }

    fn write_module(tag: &str, wasm: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "opsgate-wasm-tests-{}-{tag}.wasm",
            std::process::id()
        ));
        std::fs::write(&path, wasm).unwrap();
        path
    }

    #[test]
    fn unknown_env_imports_are_stubbed_as_unimplemented() {
        let path = write_module("stub", &stub_module("proxy_abi_version_0_2_1"));
        let mut host = Host::new(&path).unwrap();
        std::fs::remove_file(&path).ok();
        let status = host.call::<(), i32>(0, "call_mystery", ()).unwrap();
        assert_eq!(status, Some(Status::Unimplemented.code()));
        assert!(host.has_log("unsupported hostcall proxy_mystery"));
        assert_eq!(host.call::<(), ()>(0, "not_exported", ()).unwrap(), None);
    }

    #[test]
    fn modules_without_the_abi_marker_are_refused() {
        let path = write_module("noabi", &stub_module("something_else"));
        let err = Host::new(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).ok();
        assert!(err.contains("proxy_abi_version_0_2_1"), "{err}");
    }

    #[test]
    fn a_missing_module_explains_how_to_build_it() {
        let err = Host::new("/nonexistent/opsgate_plugin.wasm")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo build -p opsgate-plugin"), "{err}");
    }
}
