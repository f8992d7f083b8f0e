//! A proxy-wasm host for tests: runs a filter `.wasm` (built with the Rust
//! proxy-wasm SDK, ABI 0.2.1) on wasmtime and emulates what Envoy does around
//! it, so scenario tests can drive the filter deterministically.
//!
//! ```no_run
//! use opsgate_wasm_tests::{Action, Host};
//!
//! let mut host = Host::plugin()?; // the opsgate plugin, see `plugin_wasm_path`
//! assert!(host.configure("", r#"{"some":"config"}"#)?);
//! host.add_cluster("control-plane");
//! let stream = host.new_stream()?;
//! let action = host.request_headers(
//!     stream,
//!     &[(":method", "GET"), (":path", "/"), (":authority", "api")],
//!     true,
//! )?;
//! if action == Action::Pause {
//!     let call = host.take_call(|c| c.cluster == "control-plane").expect("a callout");
//!     host.respond(call.token, 200, &[], b"{}")?;
//! }
//! host.done(stream)?;
//! # anyhow::Ok(())
//! ```
//!
//! # What is emulated, and how
//!
//! * **Lifecycle.** One VM per [`Host`]: the WASI initializer runs at load,
//!   [`Host::configure`] creates the root context (id 1) and calls
//!   `proxy_on_vm_start` and `proxy_on_configure`; streams get ids from 2;
//!   [`Host::done`] runs `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`
//!   (Envoy logs a stream before destroying its filters); [`Host::shutdown`]
//!   handles the root's `proxy_on_done` / `proxy_done` handshake.
//! * **Current context.** Hostcalls act on the context whose callback runs,
//!   or on the one chosen with `proxy_set_effective_context` (an unknown id
//!   is `BadArgument`). Http-call responses are delivered on the root
//!   context, as in Envoy; the SDK then switches to the issuing stream.
//! * **Filter iteration.** A headers callback that does not return
//!   `Continue` stops all iteration (the 0.2.x rule); Envoy keeps the map
//!   readable and writable until `proxy_continue_stream`, and buffers body
//!   data that arrives meanwhile, handing it to the filter once resumed.
//!   Body callbacks returning `StopIterationAndBuffer` accumulate the body;
//!   `Continue` forwards it. A local reply stops iteration whatever the
//!   callback returned, and is then encoded through the filter's own
//!   response callbacks, like Envoy's `sendLocalReply`. `continue`, local
//!   replies, queue notifications and the root's deletion after
//!   `proxy_done` run after the VM call returns, like Envoy's deferred
//!   actions.
//! * **Statuses.** Each hostcall returns what Envoy returns in the same
//!   situation (see [`hostcalls`] for the details), because the SDK panics on
//!   any status it does not expect.
//! * **Time.** `proxy_get_current_time_nanoseconds` and the WASI clocks read a
//!   clock the test controls, starting at 2026-01-15T12:00:00Z.
//! * **Failures.** A guest trap (e.g. a panic in the filter) is returned as an
//!   `Err` carrying the trap and the guest's output; the VM is then marked
//!   failed, as Envoy does.
//! * **Logs.** `proxy_log` entries, plus guest stdout (info) and stderr
//!   (error); echoed to stderr when `OPSGATE_WASM_LOG` is set.
//!
//! Compiled modules are cached on disk (see [`engine`]).

pub mod abi;
pub mod engine;
pub mod headers;
mod host;
pub mod hostcalls;
mod properties;
mod state;

use std::path::{Path, PathBuf};

pub use headers::HeaderMap;
pub use host::{Host, StreamId, DEFAULT_START_NANOS};
pub use state::{Action, HttpCall, LocalReply, StreamKind};

/// Environment variable overriding the plugin module path.
pub const PLUGIN_WASM_ENV: &str = "OPSGATE_WASM";

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// The cargo target directory: `$CARGO_TARGET_DIR` at run time (relative
/// paths taken from the workspace root), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Where the opsgate plugin module is expected: `$OPSGATE_WASM`, else
/// `<target dir>/wasm32-wasip1/filter/opsgate_plugin.wasm` (the shipped build).
pub fn plugin_wasm_path() -> PathBuf {
    match std::env::var_os(PLUGIN_WASM_ENV).filter(|p| !p.is_empty()) {
        Some(path) => PathBuf::from(path),
        None => target_dir().join("wasm32-wasip1/filter/opsgate_plugin.wasm"),
    }
}

/// [`plugin_wasm_path`], or an error explaining how to build it.
pub fn require_plugin_wasm() -> anyhow::Result<PathBuf> {
    let path = plugin_wasm_path();
    if !path.is_file() {
        anyhow::bail!(
            "the opsgate plugin is not built: {} does not exist. Run \
             `cargo build -p opsgate-plugin --target wasm32-wasip1 --profile filter` (with the same \
             CARGO_TARGET_DIR), or point {PLUGIN_WASM_ENV} at a built module.",
            path.display()
        );
    }
    Ok(path)
}

/// Converts a wasmtime error (which is not an `anyhow::Error` in this build)
/// keeping its cause chain and wasm backtrace.
pub(crate) fn wasm_error(error: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{error:?}")
}
