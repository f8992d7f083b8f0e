//! The one module that talks to the proxy-wasm ABI (0.2.1) for the filter.
//!
//! Why our own and not the SDK's getters: the SDK (proxy-wasm 0.2.5) `unwrap()`s in its
//! trait methods, `String::from_utf8(..).unwrap()`s header values, and `panic!`s on any
//! status it does not expect. A header byte from a client (Envoy accepts 0x80–0xFF as
//! obs-text) or a host status in an unforeseen phase would trap the VM — and take every later
//! request of that worker with it. Here every call:
//!
//! * reads header values and buffers as **bytes** (the caller decides what non-UTF-8 means);
//! * takes the host's status as a plain `u32` (an unknown value is not undefined behaviour,
//!   as it would be for a Rust enum) and maps it to [`HostError`] — nothing here panics;
//! * parses the host's serialised header maps with bounds checks.
//!
//! The SDK still owns the dispatcher (it routes callbacks to our contexts) and
//! [`dispatch_http_call`] goes through it, because the dispatcher must learn the callout's
//! token; that function panics only on a status Envoy's `proxy_http_call` never returns.
//!
//! The filter's code calls these free functions, never the SDK's `Context`/`HttpContext`
//! host methods (`clippy.toml` disallows those). Hostcalls act on the host's current
//! (effective) context, which the SDK sets before every callback.

use std::ptr::{null, null_mut};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use proxy_wasm::types::LogLevel;

/// A host call did not succeed: the raw proxy-wasm status (1 NotFound, 2 BadArgument, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

/// The header maps the filter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headers {
    Request = 0,
    RequestTrailers = 1,
    Response = 2,
    ResponseTrailers = 3,
    CallResponse = 6,
}

/// The buffers the filter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    RequestBody = 0,
    ResponseBody = 1,
    CallResponseBody = 4,
    PluginConfiguration = 7,
}

/// The streams a filter can resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Request = 0,
    Response = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter = 0,
    Histogram = 2,
}

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        buffer_type: u32,
        start: usize,
        size: usize,
        buffer_data: *const u8,
        buffer_size: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    #[allow(clippy::too_many_arguments)]
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_done() -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_register_shared_queue(
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_enqueue_shared_queue(queue_id: u32, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_dequeue_shared_queue(
        queue_id: u32,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
}

/// Native builds (clippy, unit tests of the pure parts) have no host: every call fails.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::missing_safety_doc)]
mod native {
    pub unsafe fn proxy_log(_: u32, _: *const u8, _: usize) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_get_current_time_nanoseconds(_: *mut u64) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_set_tick_period_milliseconds(_: u32) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_get_buffer_bytes(
        _: u32,
        _: usize,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_set_buffer_bytes(
        _: u32,
        _: usize,
        _: usize,
        _: *const u8,
        _: usize,
    ) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_get_header_map_pairs(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_get_header_map_value(
        _: u32,
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
    ) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_replace_header_map_value(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
    ) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_remove_header_map_value(_: u32, _: *const u8, _: usize) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_continue_stream(_: u32) -> u32 {
        super::UNIMPLEMENTED
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn proxy_send_local_response(
        _: u32,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: i32,
    ) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_done() -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_define_metric(_: u32, _: *const u8, _: usize, _: *mut u32) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_increment_metric(_: u32, _: i64) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_record_metric(_: u32, _: u64) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_set_property(_: *const u8, _: usize, _: *const u8, _: usize) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_get_shared_data(
        _: *const u8,
        _: usize,
        _: *mut *mut u8,
        _: *mut usize,
        _: *mut u32,
    ) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_set_shared_data(
        _: *const u8,
        _: usize,
        _: *const u8,
        _: usize,
        _: u32,
    ) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_set_effective_context(_: u32) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_register_shared_queue(_: *const u8, _: usize, _: *mut u32) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_enqueue_shared_queue(_: u32, _: *const u8, _: usize) -> u32 {
        super::UNIMPLEMENTED
    }
    pub unsafe fn proxy_dequeue_shared_queue(_: u32, _: *mut *mut u8, _: *mut usize) -> u32 {
        super::UNIMPLEMENTED
    }
}
#[cfg(not(target_arch = "wasm32"))]
use native::*;

#[cfg(not(target_arch = "wasm32"))]
const UNIMPLEMENTED: u32 = 12;

fn status(code: u32) -> Result<(), HostError> {
    if code == OK {
        Ok(())
    } else {
        Err(HostError(code))
    }
}

/// Takes ownership of bytes the host allocated through the SDK's `proxy_on_memory_allocate`
/// (a `Vec<u8>` of exactly that capacity, leaked).
///
/// # Safety
/// `data` is null, or was returned by the host for this size by a successful call.
unsafe fn take_host_bytes(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

/// Writes to Envoy's log; a failing log is ignored.
pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length of a live &str.
    unsafe {
        proxy_log(level as u32, message.as_ptr(), message.len());
    }
}

/// The host's wall clock; the Unix epoch if the host cannot tell (never seen in Envoy).
pub fn now() -> SystemTime {
    let mut nanos: u64 = 0;
    // SAFETY: the host writes one u64.
    let code = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    if code != OK {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH
        .checked_add(Duration::from_nanos(nanos))
        .unwrap_or(UNIX_EPOCH)
}

pub fn set_tick_period(period: Duration) -> Result<(), HostError> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: no pointers.
    status(unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// Up to `max` bytes of a buffer from `start`; empty when there is none.
pub fn buffer(kind: Buffer, start: usize, max: usize) -> Result<Vec<u8>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer it allocated and its size.
    let code = unsafe { proxy_get_buffer_bytes(kind as u32, start, max, &mut data, &mut size) };
    match code {
        OK => Ok(unsafe { take_host_bytes(data, size) }),
        NOT_FOUND => Ok(Vec::new()),
        other => Err(HostError(other)),
    }
}

/// A buffer's bytes, or empty when the host cannot give them.
pub fn buffer_or_empty(kind: Buffer, start: usize, max: usize) -> Vec<u8> {
    buffer(kind, start, max).unwrap_or_default()
}

/// Sets a property of the current stream (Envoy keeps it in the stream's filter state as
/// `wasm.<path>`, where its access log can read it).
pub fn set_property(path: &[&str], value: &[u8]) -> Result<(), HostError> {
    let path = path.join("\0");
    // SAFETY: pointers and lengths of live buffers.
    status(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
}

/// The status Envoy gives a shared-data write whose compare-and-swap value is stale.
pub const CAS_MISMATCH: HostError = HostError(8);

/// A value every worker VM of this plugin's VM id shares (Envoy keeps one map per VM id,
/// across workers), with its compare-and-swap version; `None` when the key is absent.
pub fn shared_data(key: &str) -> Option<(Vec<u8>, u32)> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: the host writes a pointer it allocated, its size and the cas.
    let code =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    (code == OK).then(|| (unsafe { take_host_bytes(data, size) }, cas))
}

/// Writes a shared value: unconditionally with `cas == 0`, else only if the stored value's
/// version is still `cas` ([`CAS_MISMATCH`] otherwise).
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: pointers and lengths of live slices.
    status(unsafe {
        proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    })
}

/// Makes the following hostcalls act on another live context of this VM (a root context
/// resuming the requests it answered for); `BadArgument` when that context is gone.
pub fn set_effective_context(context_id: u32) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_set_effective_context(context_id) })
}

/// Registers a shared queue owned by the current root context: whatever is enqueued on it
/// is announced to that root context (`on_queue_ready`) on its own worker thread.
pub fn register_queue(name: &str) -> Result<u32, HostError> {
    let mut id: u32 = 0;
    // SAFETY: pointer and length of a live &str; the host writes one u32.
    status(unsafe { proxy_register_shared_queue(name.as_ptr(), name.len(), &mut id) }).map(|()| id)
}

pub fn enqueue(queue: u32, value: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointer and length of a live slice.
    status(unsafe { proxy_enqueue_shared_queue(queue, value.as_ptr(), value.len()) })
}

/// The next item of a queue; `None` when it is empty (or unknown).
pub fn dequeue(queue: u32) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a pointer it allocated and its size.
    let code = unsafe { proxy_dequeue_shared_queue(queue, &mut data, &mut size) };
    (code == OK).then(|| unsafe { take_host_bytes(data, size) })
}

/// Replaces `size` bytes from `start` with `data`.
pub fn set_buffer(kind: Buffer, start: usize, size: usize, data: &[u8]) -> Result<(), HostError> {
    // SAFETY: pointer and length of a live slice.
    status(unsafe { proxy_set_buffer_bytes(kind as u32, start, size, data.as_ptr(), data.len()) })
}

/// One header's value (the first, for a repeated name), as bytes; `None` when absent or when
/// the map is not available in this phase.
pub fn header(map: Headers, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: pointer and length of a live &str; the host writes an allocation and its size.
    let code = unsafe {
        proxy_get_header_map_value(map as u32, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    (code == OK).then(|| unsafe { take_host_bytes(data, size) })
}

/// A header value that is not valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotUtf8 {
    pub name: &'static str,
}

/// One header as text: `Err` when its bytes are not UTF-8 (the caller refuses the request
/// or ignores the header — never a panic).
pub fn header_str(map: Headers, name: &'static str) -> Result<Option<String>, NotUtf8> {
    match header(map, name) {
        None => Ok(None),
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| NotUtf8 { name }),
    }
}

/// One header as text, or `None` when absent or not UTF-8 (for headers from upstreams and
/// callouts, where a bad byte just means "no usable value").
pub fn header_text(map: Headers, name: &'static str) -> Option<String> {
    header_str(map, name).ok().flatten()
}

/// Every header of a map, as bytes; empty when the map is not available.
pub fn headers(map: Headers) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes an allocation and its size.
    let code = unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) };
    if code != OK {
        return Vec::new();
    }
    let bytes = unsafe { take_host_bytes(data, size) };
    decode_pairs(&bytes).unwrap_or_default()
}

/// Replaces (or adds) a header.
pub fn set_header(map: Headers, name: &str, value: &str) -> Result<(), HostError> {
    // SAFETY: pointers and lengths of live &strs.
    status(unsafe {
        proxy_replace_header_map_value(
            map as u32,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

/// Removes every value of a header.
pub fn remove_header(map: Headers, name: impl AsRef<[u8]>) -> Result<(), HostError> {
    let name = name.as_ref();
    // SAFETY: pointer and length of a live slice.
    status(unsafe { proxy_remove_header_map_value(map as u32, name.as_ptr(), name.len()) })
}

/// Resumes a stream the filter paused.
pub fn resume(stream: Stream) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_continue_stream(stream as u32) })
}

/// Sends a local reply on the current stream.
pub fn send_local_reply(
    status_code: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HostError> {
    let map = encode_pairs(headers);
    let (ptr, len) = if body.is_empty() {
        (null(), 0)
    } else {
        (body.as_ptr(), body.len())
    };
    // SAFETY: pointers and lengths of live buffers.
    status(unsafe {
        proxy_send_local_response(
            u32::from(status_code),
            null(),
            0,
            ptr,
            len,
            map.as_ptr(),
            map.len(),
            -1,
        )
    })
}

/// Tells the host the root context finished its shutdown work.
pub fn done() -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_done() })
}

pub fn define_metric(kind: MetricKind, name: &str) -> Result<u32, HostError> {
    let mut id: u32 = 0;
    // SAFETY: pointer and length of a live &str; the host writes one u32.
    status(unsafe { proxy_define_metric(kind as u32, name.as_ptr(), name.len(), &mut id) })
        .map(|()| id)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    status(unsafe { proxy_record_metric(id, value) })
}

/// Sends an HTTP request to a cluster (through the SDK, whose dispatcher must learn the
/// token to route the answer back to this context).
pub fn dispatch_http_call(
    cluster: &str,
    headers: Vec<(&str, &str)>,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<u32, HostError> {
    proxy_wasm::hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout)
        .map_err(|s| HostError(s as u32))
}

/// The proxy-wasm header-map wire format: `u32` count, then per pair `u32` name length and
/// `u32` value length, then per pair the name, a NUL, the value, a NUL (little endian).
pub fn encode_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = pairs.iter().fold(4usize, |acc, (k, v)| {
        acc.saturating_add(10)
            .saturating_add(k.len())
            .saturating_add(v.len())
    });
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&u32::try_from(pairs.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&u32::try_from(k.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Parses the header-map wire format; `None` when it is malformed (never a panic).
pub fn decode_pairs(bytes: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let word = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        let arr: [u8; 4] = b.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(arr)).ok()
    };
    let count = word(0)?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    if data > bytes.len() {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for n in 0..count {
        let at = n.checked_mul(8)?.checked_add(4)?;
        let klen = word(at)?;
        let vlen = word(at.checked_add(4)?)?;
        let kend = data.checked_add(klen)?;
        let key = bytes.get(data..kend)?.to_vec();
        data = kend.checked_add(1)?;
        let vend = data.checked_add(vlen)?;
        let value = bytes.get(data..vend)?.to_vec();
        data = vend.checked_add(1)?;
        out.push((key, value));
    }
    Some(out)
}

/// Logs a panic's location at critical level — never its message, which may carry request
/// bytes (the SDK's own hook prints the message, e.g. a header's bytes). Installed after the
/// SDK's hook, so it replaces it. The VM traps after a panic; Envoy's `FAIL_RELOAD` policy
/// then starts a fresh one.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "an unknown location".to_string());
        log(
            LogLevel::Critical,
            &format!("opsgate: filter panicked at {at}; the VM stops here and is reloaded"),
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip() {
        let pairs = [(":status", "200"), ("x-a", ""), ("", "v")];
        let decoded = decode_pairs(&encode_pairs(&pairs)).unwrap();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn malformed_maps_are_refused_not_panicked_on() {
        let good = encode_pairs(&[("name", "value")]);
        for cut in 1..good.len() - 1 {
            // Every truncation that cuts into the counts, lengths, name or value is refused
            // (only the final NUL may go).
            assert_eq!(decode_pairs(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode_pairs(&[1, 0, 0]), None);
        // A count that promises more pairs than the bytes hold.
        assert_eq!(decode_pairs(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), None);
        // Lengths that overflow.
        let mut huge = vec![1, 0, 0, 0];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&huge), None);
    }

    #[test]
    fn non_utf8_bytes_survive_decoding() {
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(&2u32.to_le_bytes());
        raw.extend_from_slice(b"a\0\xe9\xff\0");
        assert_eq!(
            decode_pairs(&raw).unwrap(),
            vec![(b"a".to_vec(), vec![0xe9, 0xff])]
        );
    }
}
