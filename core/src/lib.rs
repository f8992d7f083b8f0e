//! Pure, I/O-free logic shared by the opsgate filter (wasm32) and the control plane (native).
//!
//! Everything here is deterministic and takes time as an argument, so it is unit-tested
//! natively and behaves identically inside Envoy.

// Unit tests index and add freely; the code they test may not (Cargo.toml denies both).
#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

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
