//! The `env` imports of the proxy-wasm ABI 0.2.1, returning the statuses
//! Envoy returns.
//!
//! Every hostcall acts on Envoy's `contextOrEffectiveContext()`: the context
//! set with `proxy_set_effective_context` if it is still alive, else the
//! context whose callback is running. The rules that decide what a filter
//! can see follow Envoy's `Context` (source/extensions/common/wasm/context.cc)
//! and proxy-wasm-cpp-host's `exports.cc`:
//!
//! * Request/response header maps are only reachable while Envoy holds the
//!   map: during the headers callback, and afterwards only if the callback
//!   stopped iteration and `proxy_continue_stream` was not called yet.
//!   Reading a pair list of an unavailable map gives an empty list; reading a
//!   single value or modifying it gives `BadArgument`. A missing header is
//!   `NotFound`.
//! * `proxy_continue_stream` (request or response) drops Envoy's pointers to
//!   the *request* headers, body and trailers (an Envoy quirk kept here).
//! * Body buffers: a missing buffer instance reads as empty (`Ok`, null
//!   pointer); the plugin configuration outside `on_configure`/root creation
//!   and the http-call body outside `on_http_call_response` are `NotFound`.
//!   Writes follow `Buffer::copyFrom`: `start == 0` drains `size` bytes and
//!   prepends the data (so `(0, len)` replaces everything), `start >= len`
//!   appends, anything else is `BadArgument`; immutable buffers are
//!   `BadArgument`.
//! * Http calls are issued on the root context: a missing cluster, a
//!   negative timeout, or a request without `:method`, `:path` or
//!   `:authority` is `BadArgument`; tokens advance by 4 from 4.
//! * Shared data uses compare-and-swap (`cas == 0` writes unconditionally);
//!   queues answer `Empty` when drained and `NotFound` for unknown tokens.
//! * Metrics ids encode the type in their two low bits; counters only go up.
//! * gRPC is not emulated: calls to an unknown cluster are `ParseFailure` (as
//!   in Envoy), to a known one `InternalFailure`.
//! * Any other `env` import the module declares is satisfied by a stub that
//!   logs a warning and returns `Unimplemented`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use wasmtime::{Caller, Extern, ExternType, Linker, Module, Val, ValType};
use wasmtime_wasi::p1::WasiP1Ctx;

use crate::abi::{self, buffer_type, map_type, stream_type, Status};
use crate::headers::{deserialize_pairs, HeaderMap};
use crate::state::{Deferred, HostState, HttpCall, LocalReply, Queue, StreamKind};

/// The store's data: WASI preview 1 plus the proxy-wasm host state.
pub(crate) struct StoreData {
    pub wasi: WasiP1Ctx,
    pub state: HostState,
}

type C<'a> = Caller<'a, StoreData>;

/// Why a hostcall did not return `Ok`: a status for the guest, or a trap
/// (raised while calling back into the guest's allocator).
enum Fail {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fail {
    fn from(status: Status) -> Self {
        Fail::Status(status)
    }
}

impl From<wasmtime::Error> for Fail {
    fn from(error: wasmtime::Error) -> Self {
        Fail::Trap(error)
    }
}

type HResult = Result<(), Fail>;

fn finish(result: HResult) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok.code()),
        Err(Fail::Status(status)) => Ok(status.code()),
        Err(Fail::Trap(error)) => Err(error),
    }
}

fn status(status: Status) -> HResult {
    match status {
        Status::Ok => Ok(()),
        other => Err(other.into()),
    }
}

fn state<'a>(c: &'a mut C<'_>) -> &'a mut HostState {
    &mut c.data_mut().state
}

fn memory(c: &mut C<'_>) -> Result<wasmtime::Memory, Fail> {
    c.get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or(Fail::Status(Status::InvalidMemoryAccess))
}

fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Result<Vec<u8>, Fail> {
    let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
    if len == 0 {
        return Ok(Vec::new());
    }
    let mem = memory(c)?;
    ptr.checked_add(len)
        .and_then(|end| mem.data(&*c).get(ptr..end))
        .map(<[u8]>::to_vec)
        .ok_or(Fail::Status(Status::InvalidMemoryAccess))
}

fn read_string(c: &mut C<'_>, ptr: i32, len: i32) -> Result<String, Fail> {
    Ok(String::from_utf8_lossy(&read(c, ptr, len)?).into_owned())
}

fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> HResult {
    let mem = memory(c)?;
    mem.write(&mut *c, ptr as u32 as usize, bytes)
        .map_err(|_| Fail::Status(Status::InvalidMemoryAccess))
}

fn write_u32(c: &mut C<'_>, ptr: i32, value: u32) -> HResult {
    write(c, ptr, &value.to_le_bytes())
}

fn write_u64(c: &mut C<'_>, ptr: i32, value: u64) -> HResult {
    write(c, ptr, &value.to_le_bytes())
}

/// Allocates guest memory through the module's allocator, like
/// `WasmBase::allocMemory`.
fn alloc(c: &mut C<'_>, size: usize) -> Result<u32, Fail> {
    let func = c
        .get_export("proxy_on_memory_allocate")
        .or_else(|| c.get_export("malloc"))
        .and_then(Extern::into_func)
        .ok_or(Fail::Status(Status::InvalidMemoryAccess))?;
    let func = func.typed::<i32, i32>(&*c)?;
    let size = i32::try_from(size).map_err(|_| Fail::Status(Status::InvalidMemoryAccess))?;
    *state(c)
        .hostcalls
        .entry("proxy_on_memory_allocate")
        .or_default() += 1;
    match func.call(&mut *c, size)? {
        0 => Err(Status::InvalidMemoryAccess.into()),
        addr => Ok(addr as u32),
    }
}

/// `WasmBase::copyToPointerSize`: empty data is returned as a null pointer
/// and size 0, anything else is copied into freshly allocated guest memory.
fn copy_out(c: &mut C<'_>, data: &[u8], ptr_ptr: i32, size_ptr: i32) -> HResult {
    let addr = if data.is_empty() {
        0
    } else {
        let addr = alloc(c, data.len())?;
        write(c, addr as i32, data)?;
        addr
    };
    write_u32(c, ptr_ptr, addr)?;
    write_u32(c, size_ptr, data.len() as u32)
}

fn map_kind(ty: u32) -> StreamKind {
    if ty == map_type::REQUEST_HEADERS || ty == map_type::REQUEST_TRAILERS {
        StreamKind::Request
    } else {
        StreamKind::Response
    }
}

fn buffer_kind(ty: u32) -> StreamKind {
    if ty == buffer_type::HTTP_REQUEST_BODY {
        StreamKind::Request
    } else {
        StreamKind::Response
    }
}

// ---------------------------------------------------------------------------
// Header maps

/// `Context::getConstMap`: the map a read sees, or `None` when Envoy has no
/// map of that type at the moment.
fn read_map(state: &HostState, ty: u32) -> Option<HeaderMap> {
    match ty {
        map_type::REQUEST_HEADERS
        | map_type::REQUEST_TRAILERS
        | map_type::RESPONSE_HEADERS
        | map_type::RESPONSE_TRAILERS => {
            let stream = state.stream()?;
            let trailers = ty == map_type::REQUEST_TRAILERS || ty == map_type::RESPONSE_TRAILERS;
            let kind = map_kind(ty);
            let d = stream.direction(kind);
            if stream.access_log_phase {
                // Access-log pointers: the final request/response headers and
                // response trailers; request trailers are not available.
                return match (kind, trailers) {
                    (StreamKind::Request, true) => None,
                    (_, false) => d.headers_received.then(|| d.headers.clone()),
                    (_, true) => d.trailers_received.then(|| d.trailers.clone()),
                };
            }
            if trailers {
                d.trailers_visible.then(|| d.trailers.clone())
            } else {
                d.headers_visible.then(|| d.headers.clone())
            }
        }
        map_type::HTTP_CALL_RESPONSE_HEADERS => {
            state.call_response.as_ref().map(|r| r.headers.clone())
        }
        map_type::HTTP_CALL_RESPONSE_TRAILERS => {
            state.call_response.as_ref().map(|r| r.trailers.clone())
        }
        _ => None,
    }
}

/// `Context::getMap`: the mutable map, or `None` (→ `BadArgument`). Like
/// Envoy, asking for the trailers during the last body callback creates them.
fn with_map_mut<R>(
    state: &mut HostState,
    ty: u32,
    f: impl FnOnce(&mut HeaderMap) -> R,
) -> Option<R> {
    if ty > map_type::RESPONSE_TRAILERS {
        return None;
    }
    let stream = state.stream_mut()?;
    let d = stream.direction_mut(map_kind(ty));
    if ty == map_type::REQUEST_HEADERS || ty == map_type::RESPONSE_HEADERS {
        return d.headers_visible.then(|| f(&mut d.headers));
    }
    if !d.trailers_visible && !d.trailers_received && d.body_visible && d.body_end_of_stream {
        d.trailers_visible = true;
        d.trailers_received = true;
    }
    d.trailers_visible.then(|| f(&mut d.trailers))
}

fn check_map_type(ty: i32) -> Result<u32, Fail> {
    let ty = ty as u32;
    if ty > map_type::MAX {
        return Err(Status::BadArgument.into());
    }
    Ok(ty)
}

fn get_header_map_pairs(c: &mut C<'_>, ty: i32, ptr_ptr: i32, size_ptr: i32) -> HResult {
    let ty = check_map_type(ty)?;
    let map = read_map(state(c), ty).unwrap_or_default();
    let bytes = if map.is_empty() {
        Vec::new()
    } else {
        map.serialize()
    };
    copy_out(c, &bytes, ptr_ptr, size_ptr)
}

fn set_header_map_pairs(c: &mut C<'_>, ty: i32, ptr: i32, size: i32) -> HResult {
    let ty = check_map_type(ty)?;
    let pairs = deserialize_pairs(&read(c, ptr, size)?);
    let new = HeaderMap::from_pairs(&pairs);
    with_map_mut(state(c), ty, |map| *map = new).ok_or(Status::BadArgument.into())
}

fn get_header_map_value(
    c: &mut C<'_>,
    ty: i32,
    key_ptr: i32,
    key_size: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HResult {
    let ty = check_map_type(ty)?;
    let key = read(c, key_ptr, key_size)?;
    let st = state(c);
    let Some(map) = read_map(st, ty) else {
        let access_log = st.stream().is_some_and(|s| s.access_log_phase);
        return Err(if access_log {
            Status::NotFound
        } else {
            Status::BadArgument
        }
        .into());
    };
    let value = map.get(&key).ok_or(Status::NotFound)?.to_vec();
    copy_out(c, &value, ptr_ptr, size_ptr)
}

fn add_header_map_value(c: &mut C<'_>, ty: i32, kp: i32, ks: i32, vp: i32, vs: i32) -> HResult {
    let ty = check_map_type(ty)?;
    let (key, value) = (read(c, kp, ks)?, read(c, vp, vs)?);
    with_map_mut(state(c), ty, |map| map.add(&key, &value)).ok_or(Status::BadArgument.into())
}

fn replace_header_map_value(c: &mut C<'_>, ty: i32, kp: i32, ks: i32, vp: i32, vs: i32) -> HResult {
    let ty = check_map_type(ty)?;
    let (key, value) = (read(c, kp, ks)?, read(c, vp, vs)?);
    with_map_mut(state(c), ty, |map| map.set(&key, &value)).ok_or(Status::BadArgument.into())
}

fn remove_header_map_value(c: &mut C<'_>, ty: i32, kp: i32, ks: i32) -> HResult {
    let ty = check_map_type(ty)?;
    let key = read(c, kp, ks)?;
    with_map_mut(state(c), ty, |map| map.remove(&key)).ok_or(Status::BadArgument.into())
}

fn get_header_map_size(c: &mut C<'_>, ty: i32, result_ptr: i32) -> HResult {
    let ty = check_map_type(ty)?;
    let size = with_map_mut(state(c), ty, |map| map.byte_size()).ok_or(Status::BadArgument)?;
    write_u32(c, result_ptr, size as u32)
}

// ---------------------------------------------------------------------------
// Buffers

/// `Context::getBuffer` for reading: `None` is `NotFound`.
fn read_buffer(state: &HostState, ty: u32) -> Option<Vec<u8>> {
    match ty {
        buffer_type::HTTP_REQUEST_BODY | buffer_type::HTTP_RESPONSE_BODY => Some(
            state
                .stream()
                .map(|s| s.direction(buffer_kind(ty)))
                .filter(|d| d.body_accessible())
                .map(|d| d.body.clone())
                .unwrap_or_default(),
        ),
        buffer_type::HTTP_CALL_RESPONSE_BODY => {
            state.call_response.as_ref().map(|r| r.body.clone())
        }
        buffer_type::VM_CONFIGURATION => Some(state.vm_config.clone()),
        buffer_type::PLUGIN_CONFIGURATION => state
            .plugin_config_visible
            .then(|| state.plugin_config.clone()),
        // Network data, gRPC receive buffer, call data: an empty buffer.
        _ => Some(Vec::new()),
    }
}

fn check_buffer_type(ty: i32) -> Result<u32, Fail> {
    let ty = ty as u32;
    if ty > buffer_type::MAX {
        return Err(Status::BadArgument.into());
    }
    Ok(ty)
}

fn get_buffer_bytes(
    c: &mut C<'_>,
    ty: i32,
    start: i32,
    length: i32,
    ptr_ptr: i32,
    size_ptr: i32,
) -> HResult {
    let ty = check_buffer_type(ty)?;
    let buffer = read_buffer(state(c), ty).ok_or(Status::NotFound)?;
    let start = start as u32 as usize;
    let mut length = length as u32 as usize;
    if start > buffer.len() {
        length = 0;
    } else if start + length > buffer.len() {
        length = buffer.len() - start;
    }
    let slice = if length == 0 {
        &[][..]
    } else {
        &buffer[start..start + length]
    };
    copy_out(c, slice, ptr_ptr, size_ptr)
}

fn get_buffer_status(c: &mut C<'_>, ty: i32, length_ptr: i32, flags_ptr: i32) -> HResult {
    let ty = check_buffer_type(ty)?;
    let buffer = read_buffer(state(c), ty).ok_or(Status::NotFound)?;
    write_u32(c, length_ptr, buffer.len() as u32)?;
    write_u32(c, flags_ptr, 0)
}

fn set_buffer_bytes(
    c: &mut C<'_>,
    ty: i32,
    start: i32,
    length: i32,
    ptr: i32,
    size: i32,
) -> HResult {
    let ty = check_buffer_type(ty)?;
    read_buffer(state(c), ty).ok_or(Status::NotFound)?;
    let data = read(c, ptr, size)?;
    if ty != buffer_type::HTTP_REQUEST_BODY && ty != buffer_type::HTTP_RESPONSE_BODY {
        return Err(Status::BadArgument.into());
    }
    let stream = state(c).stream_mut().ok_or(Status::BadArgument)?;
    let d = stream.direction_mut(buffer_kind(ty));
    if !d.body_accessible() {
        return Err(Status::BadArgument.into());
    }
    let (start, length) = (start as u32 as usize, length as u32 as usize);
    if start == 0 {
        d.body.drain(..length.min(d.body.len()));
        d.body.splice(0..0, data);
    } else if start >= d.body.len() {
        d.body.extend_from_slice(&data);
    } else {
        return Err(Status::BadArgument.into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Stream control

fn continue_stream(c: &mut C<'_>, ty: i32) -> HResult {
    let kind = match ty as u32 {
        stream_type::REQUEST => StreamKind::Request,
        stream_type::RESPONSE => StreamKind::Response,
        stream_type::DOWNSTREAM => return Ok(()),
        stream_type::UPSTREAM => return Err(Status::Unimplemented.into()),
        _ => return Err(Status::BadArgument.into()),
    };
    let st = state(c);
    let context = st.context();
    if let Some(stream) = st.stream_mut() {
        stream.direction_mut(kind).resumed += 1;
        // Envoy's Context::continueStream forgets the request pointers for
        // both stream types.
        stream.request.headers_visible = false;
        stream.request.body_visible = false;
        stream.request.trailers_visible = false;
        st.deferred.push_back(Deferred::Continue { context, kind });
    }
    Ok(())
}

fn close_stream(c: &mut C<'_>, ty: i32) -> HResult {
    let kind = match ty as u32 {
        stream_type::REQUEST => StreamKind::Request,
        stream_type::RESPONSE => StreamKind::Response,
        stream_type::DOWNSTREAM | stream_type::UPSTREAM => return Ok(()),
        _ => return Err(Status::BadArgument.into()),
    };
    if let Some(stream) = state(c).stream_mut() {
        stream.direction_mut(kind).closed += 1;
        stream.reset = true;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    c: &mut C<'_>,
    code: i32,
    details_ptr: i32,
    details_size: i32,
    body_ptr: i32,
    body_size: i32,
    headers_ptr: i32,
    headers_size: i32,
    grpc_status: i32,
) -> HResult {
    let details = read_string(c, details_ptr, details_size)?;
    let body = read(c, body_ptr, body_size)?;
    let headers = HeaderMap::from_pairs(&deserialize_pairs(&read(c, headers_ptr, headers_size)?));
    let st = state(c);
    st.local_replies_sent += 1;
    let context = st.context();
    if let Some(stream) = st.stream_mut() {
        if stream.local_reply.is_none() {
            stream.local_reply = Some(LocalReply {
                status: code as u32,
                details: details
                    .chars()
                    .map(|ch| if ch.is_whitespace() { '_' } else { ch })
                    .collect(),
                body,
                headers: headers.to_strings(),
                grpc_status,
            });
            st.deferred.push_back(Deferred::LocalReply { context });
        }
    }
    Ok(())
}

fn set_effective_context(c: &mut C<'_>, id: i32) -> HResult {
    let id = id as u32;
    let st = state(c);
    if id != 0 && !st.context_alive(id) {
        return Err(Status::BadArgument.into());
    }
    st.effective = id;
    Ok(())
}

fn done(c: &mut C<'_>) -> HResult {
    let st = state(c);
    if !st.root_pending_done {
        return Err(Status::NotFound.into());
    }
    st.root_pending_done = false;
    st.done_called = true;
    st.deferred.push_back(Deferred::DeleteRoot);
    Ok(())
}

// ---------------------------------------------------------------------------
// Http calls

#[allow(clippy::too_many_arguments)]
fn http_call(
    c: &mut C<'_>,
    upstream_ptr: i32,
    upstream_size: i32,
    headers_ptr: i32,
    headers_size: i32,
    body_ptr: i32,
    body_size: i32,
    trailers_ptr: i32,
    trailers_size: i32,
    timeout_ms: i32,
    token_ptr: i32,
) -> HResult {
    let cluster = read_string(c, upstream_ptr, upstream_size)?;
    let body = read(c, body_ptr, body_size)?;
    let headers = deserialize_pairs(&read(c, headers_ptr, headers_size)?);
    let trailers = deserialize_pairs(&read(c, trailers_ptr, trailers_size)?);
    // Envoy writes the token slot first to validate it.
    write_u32(c, token_ptr, 0)?;
    let st = state(c);
    if timeout_ms < 0 || !st.clusters.contains(&cluster) {
        return Err(Status::BadArgument.into());
    }
    let mut headers = HeaderMap::from_pairs(&headers);
    if [&b":path"[..], b":method", b":authority"]
        .iter()
        .any(|name| !headers.contains(name))
    {
        return Err(Status::BadArgument.into());
    }
    if !body.is_empty() {
        headers.set(b"content-length", body.len().to_string().as_bytes());
    }
    st.next_call_token += abi::ID_INCREMENT;
    let token = st.next_call_token;
    let context_id = st.context();
    st.calls.insert(
        token,
        HttpCall {
            token,
            context_id,
            cluster,
            headers: headers.to_strings(),
            body,
            trailers: HeaderMap::from_pairs(&trailers).to_strings(),
            timeout: Duration::from_millis(timeout_ms as u64),
        },
    );
    write_u32(c, token_ptr, token)
}

fn grpc_open(c: &mut C<'_>, service_ptr: i32, service_size: i32) -> HResult {
    let service = read_string(c, service_ptr, service_size)?;
    let st = state(c);
    if !st.clusters.contains(&service) {
        return Err(Status::ParseFailure.into());
    }
    st.log(
        3,
        format!("opsgate-wasm-tests: gRPC callouts to {service} are not emulated"),
    );
    Err(Status::InternalFailure.into())
}

// ---------------------------------------------------------------------------
// Shared data and queues

fn get_shared_data(
    c: &mut C<'_>,
    kp: i32,
    ks: i32,
    ptr_ptr: i32,
    size_ptr: i32,
    cas_ptr: i32,
) -> HResult {
    let key = read(c, kp, ks)?;
    let (value, cas) = state(c).get_shared_data(&key).ok_or(Status::NotFound)?;
    copy_out(c, &value, ptr_ptr, size_ptr)?;
    write_u32(c, cas_ptr, cas)
}

fn set_shared_data(c: &mut C<'_>, kp: i32, ks: i32, vp: i32, vs: i32, cas: i32) -> HResult {
    let (key, value) = (read(c, kp, ks)?, read(c, vp, vs)?);
    status(state(c).set_shared_data(&key, &value, cas as u32))
}

fn register_shared_queue(c: &mut C<'_>, np: i32, ns: i32, token_ptr: i32) -> HResult {
    let name = read_string(c, np, ns)?;
    let st = state(c);
    // onQueueReady always goes to the root context.
    let root = st.root_id;
    let vm_id = st.vm_id.clone();
    let token = match st.find_queue(&vm_id, &name) {
        Some(token) => token,
        None => {
            let token = st.next_queue_token;
            st.next_queue_token = st.next_queue_token.checked_add(1).unwrap_or(1);
            st.queues.insert(
                token,
                Queue {
                    vm_id,
                    name,
                    context_id: root,
                    items: Default::default(),
                },
            );
            token
        }
    };
    if let Some(queue) = st.queues.get_mut(&token) {
        queue.context_id = root;
    }
    write_u32(c, token_ptr, token)
}

fn resolve_shared_queue(
    c: &mut C<'_>,
    vp: i32,
    vs: i32,
    np: i32,
    ns: i32,
    token_ptr: i32,
) -> HResult {
    let vm_id = read_string(c, vp, vs)?;
    let name = read_string(c, np, ns)?;
    let st = state(c);
    let vm_id = if vm_id.is_empty() {
        st.vm_id.clone()
    } else {
        vm_id
    };
    let token = st.find_queue(&vm_id, &name).ok_or(Status::NotFound)?;
    write_u32(c, token_ptr, token)
}

fn dequeue_shared_queue(c: &mut C<'_>, token: i32, ptr_ptr: i32, size_ptr: i32) -> HResult {
    let queue = state(c)
        .queues
        .get_mut(&(token as u32))
        .ok_or(Status::NotFound)?;
    let item = queue.items.pop_front().ok_or(Status::Empty)?;
    copy_out(c, &item, ptr_ptr, size_ptr)
}

fn enqueue_shared_queue(c: &mut C<'_>, token: i32, ptr: i32, size: i32) -> HResult {
    let data = read(c, ptr, size)?;
    status(state(c).enqueue(token as u32, &data))
}

// ---------------------------------------------------------------------------
// Properties

fn get_property(c: &mut C<'_>, pp: i32, ps: i32, ptr_ptr: i32, size_ptr: i32) -> HResult {
    let path = read(c, pp, ps)?;
    let value = crate::properties::lookup(state(c), &path).ok_or(Status::NotFound)?;
    copy_out(c, &value, ptr_ptr, size_ptr)
}

fn set_property(c: &mut C<'_>, pp: i32, ps: i32, vp: i32, vs: i32) -> HResult {
    let (path, value) = (read(c, pp, ps)?, read(c, vp, vs)?);
    // Envoy stores it in the stream's filter state; without a stream there is
    // nowhere to put it.
    let stream = state(c).stream_mut().ok_or(Status::NotFound)?;
    stream.properties.insert(path, value);
    Ok(())
}

// ---------------------------------------------------------------------------
// Metrics, logs, time

fn define_metric(c: &mut C<'_>, ty: i32, np: i32, ns: i32, id_ptr: i32) -> HResult {
    let ty = ty as u32;
    if ty > abi::metric_type::HISTOGRAM {
        return Err(Status::BadArgument.into());
    }
    let name = read_string(c, np, ns)?;
    let id = state(c)
        .metrics
        .define(ty, &name)
        .ok_or(Status::BadArgument)?;
    write_u32(c, id_ptr, id)
}

fn get_metric(c: &mut C<'_>, id: i32, result_ptr: i32) -> HResult {
    let value = state(c).metrics.get(id as u32)?;
    write_u64(c, result_ptr, value)
}

fn log(c: &mut C<'_>, level: i32, ptr: i32, size: i32) -> HResult {
    let level = level as u32;
    if level > abi::LOG_LEVEL_MAX {
        return Err(Status::BadArgument.into());
    }
    let message = read_string(c, ptr, size)?;
    state(c).log(level, message);
    Ok(())
}

fn get_configuration(c: &mut C<'_>, ptr_ptr: i32, size_ptr: i32) -> HResult {
    let st = state(c);
    let config = if st.plugin_config_visible {
        st.plugin_config.clone()
    } else {
        st.vm_config.clone()
    };
    copy_out(c, &config, ptr_ptr, size_ptr)
}

fn get_status(c: &mut C<'_>, code_ptr: i32, ptr_ptr: i32, size_ptr: i32) -> HResult {
    let (code, message) = state(c).status.clone();
    write_u32(c, code_ptr, code)?;
    copy_out(c, &message, ptr_ptr, size_ptr)
}

fn call_foreign_function(
    c: &mut C<'_>,
    np: i32,
    ns: i32,
    ap: i32,
    asz: i32,
    _rp: i32,
    _rs: i32,
) -> HResult {
    let name = read_string(c, np, ns)?;
    read(c, ap, asz)?;
    state(c).log(
        3,
        format!("opsgate-wasm-tests: foreign function {name} is not registered"),
    );
    Err(Status::NotFound.into())
}

// ---------------------------------------------------------------------------
// Small hostcalls

fn get_log_level(c: &mut C<'_>, ptr: i32) -> HResult {
    let level = state(c).log_level;
    write_u32(c, ptr, level)
}

fn get_current_time(c: &mut C<'_>, ptr: i32) -> HResult {
    let now = state(c).clock.now();
    write_u64(c, ptr, now)
}

/// Envoy sets the root context's timer whichever context asks; 0 disables it.
fn set_tick_period(c: &mut C<'_>, period: i32) -> HResult {
    let period = period as u32;
    state(c).tick_period = (period != 0).then(|| Duration::from_millis(period.into()));
    Ok(())
}

fn continue_request(c: &mut C<'_>) -> HResult {
    continue_stream(c, stream_type::REQUEST as i32)
}

fn continue_response(c: &mut C<'_>) -> HResult {
    continue_stream(c, stream_type::RESPONSE as i32)
}

fn clear_route_cache(_c: &mut C<'_>) -> HResult {
    Ok(())
}

fn record_metric(c: &mut C<'_>, id: i32, value: i64) -> HResult {
    status(state(c).metrics.record(id as u32, value as u64))
}

fn increment_metric(c: &mut C<'_>, id: i32, offset: i64) -> HResult {
    status(state(c).metrics.increment(id as u32, offset))
}

#[allow(clippy::too_many_arguments)]
fn grpc_call(
    c: &mut C<'_>,
    service_ptr: i32,
    service_size: i32,
    _service_name_ptr: i32,
    _service_name_size: i32,
    _method_ptr: i32,
    _method_size: i32,
    _metadata_ptr: i32,
    _metadata_size: i32,
    _message_ptr: i32,
    _message_size: i32,
    _timeout_ms: i32,
    _token_ptr: i32,
) -> HResult {
    grpc_open(c, service_ptr, service_size)
}

#[allow(clippy::too_many_arguments)]
fn grpc_stream(
    c: &mut C<'_>,
    service_ptr: i32,
    service_size: i32,
    _service_name_ptr: i32,
    _service_name_size: i32,
    _method_ptr: i32,
    _method_size: i32,
    _metadata_ptr: i32,
    _metadata_size: i32,
    _token_ptr: i32,
) -> HResult {
    grpc_open(c, service_ptr, service_size)
}

/// No gRPC stream is ever opened, so a stream-shaped token is unknown.
fn grpc_send(_c: &mut C<'_>, token: i32, _ptr: i32, _size: i32, _end: i32) -> HResult {
    let is_stream = token as u32 & abi::ID_TYPE_MASK == 2;
    Err(if is_stream {
        Status::NotFound
    } else {
        Status::BadArgument
    }
    .into())
}

fn grpc_cancel(_c: &mut C<'_>, token: i32) -> HResult {
    grpc_token_not_found(token)
}

fn grpc_close(_c: &mut C<'_>, token: i32) -> HResult {
    grpc_token_not_found(token)
}

/// A call-shaped or stream-shaped token that was never handed out.
fn grpc_token_not_found(token: i32) -> HResult {
    let ty = token as u32 & abi::ID_TYPE_MASK;
    Err(if ty == 1 || ty == 2 {
        Status::NotFound
    } else {
        Status::BadArgument
    }
    .into())
}

/// Registers every hostcall under `env`, then stubs any other `env` function
/// the module imports so that instantiation cannot fail on a missing import.
pub(crate) fn define(linker: &mut Linker<StoreData>, module: &Module) -> Result<()> {
    let mut defined = BTreeSet::new();
    // `hostcall!("name" => function(arg: type, ...))` registers `function`,
    // which takes the caller first and returns an `HResult`.
    macro_rules! hostcall {
        ($($name:literal => $f:ident($($arg:ident: $ty:ty),*);)*) => {$(
            linker
                .func_wrap("env", $name, |mut caller: C<'_>, $($arg: $ty),*| {
                    *state(&mut caller).hostcalls.entry($name).or_default() += 1;
                    finish($f(&mut caller, $($arg),*))
                })
                .map_err(crate::wasm_error)?;
            defined.insert($name);
        )*};
    }

    hostcall! {
        "proxy_log" => log(level: i32, ptr: i32, size: i32);
        "proxy_get_log_level" => get_log_level(ptr: i32);
        "proxy_get_current_time_nanoseconds" => get_current_time(ptr: i32);
        "proxy_set_tick_period_milliseconds" => set_tick_period(period: i32);
        "proxy_get_configuration" => get_configuration(ptr_ptr: i32, size_ptr: i32);
        "proxy_get_status" => get_status(code_ptr: i32, ptr_ptr: i32, size_ptr: i32);
        "proxy_set_effective_context" => set_effective_context(id: i32);
        "proxy_done" => done();
        "proxy_call_foreign_function" =>
            call_foreign_function(np: i32, ns: i32, ap: i32, asz: i32, rp: i32, rs: i32);

        "proxy_get_buffer_bytes" =>
            get_buffer_bytes(ty: i32, start: i32, len: i32, ptr_ptr: i32, size_ptr: i32);
        "proxy_get_buffer_status" => get_buffer_status(ty: i32, len_ptr: i32, flags_ptr: i32);
        "proxy_set_buffer_bytes" =>
            set_buffer_bytes(ty: i32, start: i32, len: i32, ptr: i32, size: i32);

        "proxy_get_header_map_pairs" => get_header_map_pairs(ty: i32, ptr_ptr: i32, size_ptr: i32);
        "proxy_set_header_map_pairs" => set_header_map_pairs(ty: i32, ptr: i32, size: i32);
        "proxy_get_header_map_value" =>
            get_header_map_value(ty: i32, kp: i32, ks: i32, ptr_ptr: i32, size_ptr: i32);
        "proxy_add_header_map_value" =>
            add_header_map_value(ty: i32, kp: i32, ks: i32, vp: i32, vs: i32);
        "proxy_replace_header_map_value" =>
            replace_header_map_value(ty: i32, kp: i32, ks: i32, vp: i32, vs: i32);
        "proxy_remove_header_map_value" => remove_header_map_value(ty: i32, kp: i32, ks: i32);
        "proxy_get_header_map_size" => get_header_map_size(ty: i32, result_ptr: i32);

        "proxy_continue_stream" => continue_stream(ty: i32);
        "proxy_continue_request" => continue_request();
        "proxy_continue_response" => continue_response();
        "proxy_close_stream" => close_stream(ty: i32);
        "proxy_clear_route_cache" => clear_route_cache();
        "proxy_send_local_response" => send_local_response(
            code: i32, dp: i32, ds: i32, bp: i32, bs: i32, hp: i32, hs: i32, grpc: i32
        );

        "proxy_http_call" => http_call(
            up: i32, us: i32, hp: i32, hs: i32, bp: i32, bs: i32, tp: i32, ts: i32,
            timeout_ms: i32, token_ptr: i32
        );
        "proxy_grpc_call" => grpc_call(
            a: i32, b: i32, d: i32, e: i32, f: i32, g: i32, h: i32, i: i32, j: i32, k: i32,
            l: i32, m: i32
        );
        "proxy_grpc_stream" => grpc_stream(
            a: i32, b: i32, d: i32, e: i32, f: i32, g: i32, h: i32, i: i32, j: i32
        );
        "proxy_grpc_send" => grpc_send(token: i32, ptr: i32, size: i32, end: i32);
        "proxy_grpc_cancel" => grpc_cancel(token: i32);
        "proxy_grpc_close" => grpc_close(token: i32);

        "proxy_get_shared_data" =>
            get_shared_data(kp: i32, ks: i32, ptr_ptr: i32, size_ptr: i32, cas_ptr: i32);
        "proxy_set_shared_data" => set_shared_data(kp: i32, ks: i32, vp: i32, vs: i32, cas: i32);
        "proxy_register_shared_queue" => register_shared_queue(np: i32, ns: i32, token_ptr: i32);
        "proxy_resolve_shared_queue" =>
            resolve_shared_queue(vp: i32, vs: i32, np: i32, ns: i32, token_ptr: i32);
        "proxy_dequeue_shared_queue" =>
            dequeue_shared_queue(token: i32, ptr_ptr: i32, size_ptr: i32);
        "proxy_enqueue_shared_queue" => enqueue_shared_queue(token: i32, ptr: i32, size: i32);

        "proxy_get_property" => get_property(pp: i32, ps: i32, ptr_ptr: i32, size_ptr: i32);
        "proxy_set_property" => set_property(pp: i32, ps: i32, vp: i32, vs: i32);

        "proxy_define_metric" => define_metric(ty: i32, np: i32, ns: i32, id_ptr: i32);
        "proxy_get_metric" => get_metric(id: i32, result_ptr: i32);
        "proxy_record_metric" => record_metric(id: i32, value: i64);
        "proxy_increment_metric" => increment_metric(id: i32, offset: i64);
    }

    stub_unknown_imports(linker, module, &defined)
}

fn stub_unknown_imports(
    linker: &mut Linker<StoreData>,
    module: &Module,
    defined: &BTreeSet<&str>,
) -> Result<()> {
    for import in module.imports() {
        if import.module() != "env" || defined.contains(import.name()) {
            continue;
        }
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        let name = import.name().to_string();
        let results: Vec<ValType> = ty.results().collect();
        linker
            .func_new(
                "env",
                import.name(),
                ty.clone(),
                move |mut caller, _params, out| {
                    caller.data_mut().state.log(
                        3,
                        format!("opsgate-wasm-tests: unsupported hostcall {name}: Unimplemented"),
                    );
                    for (slot, ty) in out.iter_mut().zip(&results) {
                        *slot = match ty {
                            ValType::I32 => Val::I32(Status::Unimplemented.code()),
                            ValType::I64 => Val::I64(Status::Unimplemented.code().into()),
                            ValType::F32 => Val::F32(0),
                            ValType::F64 => Val::F64(0),
                            _ => return Err(wasmtime::Error::msg(format!("cannot stub {name}"))),
                        };
                    }
                    Ok(())
                },
            )
            .map_err(crate::wasm_error)?;
    }
    Ok(())
}
