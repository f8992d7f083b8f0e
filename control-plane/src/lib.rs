//! opsgate control plane: owns organisations, users, keys, plans, the credit ledger and
//! usage. The Envoy filter asks it (`/internal/v1/*`); clients and admins use its public
//! and admin APIs; the `opsgate` CLI drives the same operations.

pub mod accounts;
pub mod analytics;
pub mod byok;
pub mod callers;
pub mod catalogue;
pub mod cli;
pub mod clock;
pub mod console;
pub mod crypto;
pub mod db;
pub mod error;
pub mod http;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod sessions;
pub mod state;
pub mod store;

pub use http::app;
pub use state::{AppState, Settings};
