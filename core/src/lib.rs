//! Pure, I/O-free logic shared by the opsgate filter (wasm32) and the control plane (native).
//!
//! Everything here is deterministic and takes time as an argument, so it is unit-tested
//! natively and behaves identically inside Envoy.

pub mod contract;
pub mod credentials;
pub mod error;
pub mod headers;
pub mod jwt;
pub mod metering;
pub mod money;
pub mod plan;
pub mod pricing;
pub mod request;
pub mod time;
pub mod usage;

pub use error::{ApiError, ErrorKind};
pub use money::MilliCredits;
