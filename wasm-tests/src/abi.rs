//! Numeric constants of the proxy-wasm ABI 0.2.1, as the host (Envoy /
//! proxy-wasm-cpp-host) defines them.

/// `WasmResult` values returned by every hostcall.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    BrokenConnection = 11,
    Unimplemented = 12,
}

impl Status {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// `WasmHeaderMapType`.
pub mod map_type {
    pub const REQUEST_HEADERS: u32 = 0;
    pub const REQUEST_TRAILERS: u32 = 1;
    pub const RESPONSE_HEADERS: u32 = 2;
    pub const RESPONSE_TRAILERS: u32 = 3;
    pub const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
    pub const HTTP_CALL_RESPONSE_TRAILERS: u32 = 7;
    pub const MAX: u32 = 7;
}

/// `WasmBufferType`.
pub mod buffer_type {
    pub const HTTP_REQUEST_BODY: u32 = 0;
    pub const HTTP_RESPONSE_BODY: u32 = 1;
    pub const HTTP_CALL_RESPONSE_BODY: u32 = 4;
    pub const VM_CONFIGURATION: u32 = 6;
    pub const PLUGIN_CONFIGURATION: u32 = 7;
    pub const MAX: u32 = 8;
}

/// `WasmStreamType`.
pub mod stream_type {
    pub const REQUEST: u32 = 0;
    pub const RESPONSE: u32 = 1;
    pub const DOWNSTREAM: u32 = 2;
    pub const UPSTREAM: u32 = 3;
}

/// Highest `LogLevel` (critical).
pub const LOG_LEVEL_MAX: u32 = 5;

/// Metric ids carry their type in the two low bits (`kMetricTypeMask`) and
/// advance by `kMetricIdIncrement`; http-call tokens use the same scheme with
/// callout type 0.
pub const ID_TYPE_MASK: u32 = 0x3;
pub const ID_INCREMENT: u32 = 0x4;

/// `MetricType`.
pub mod metric_type {
    pub const COUNTER: u32 = 0;
    pub const GAUGE: u32 = 1;
    pub const HISTOGRAM: u32 = 2;
}
