//! opsgate's proxy-wasm HTTP filter. Host glue only: the decisions are in `opsgate-core`.
//!
//! * [`root`] — one per worker VM: configuration, the snapshot poll, the settle queue.
//! * [`filter`] — one per request: credentials, request shaping, authorize, metering.
//! * [`host`] — the one module that talks to the proxy-wasm ABI: bytes in, statuses mapped,
//!   never a panic.
//! * [`config`] — raw JSON configuration compiled into a validated [`config::FilterConfig`].
//! * [`shared`] — the state a worker's root context shares with its requests.
//! * [`cors`] — CORS preflights and headers, the cookie CSRF rule.
//! * [`cache`] — bounded, expiring caches (credentials).
//! * [`metrics`] — Envoy stats (`opsgate.*`).

// Unit tests index and add freely; the code they test may not (Cargo.toml denies both).
#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::arithmetic_side_effects))]

pub mod cache;
pub mod config;
pub mod cors;
pub mod filter;
pub mod host;
pub mod metrics;
pub mod root;
pub mod shared;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    // Replaces the SDK's hook, which logs the panic's message (request bytes included).
    host::install_panic_hook();
    proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::new(id))
    });
}}
