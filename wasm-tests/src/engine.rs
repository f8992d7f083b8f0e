//! One wasmtime [`Engine`] per process and an on-disk cache of compiled
//! modules.
//!
//! A debug build of Cranelift needs seconds to compile a filter, and every
//! integration-test file is its own process, so compiled modules are
//! serialised to `<cache dir>/<sha256 of the wasm>-wasmtime<compat>.cwasm` and
//! memory-mapped back by later processes. Files are written to a temporary
//! name and renamed into place, so a parallel test binary sees either no file
//! or a complete one. Within a process, modules are also kept in memory.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context as _, Result};
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Module};

/// Environment variable naming the cache directory.
pub const CACHE_DIR_ENV: &str = "OPSGATE_WASM_CACHE_DIR";

/// The process-wide engine (default Cranelift configuration).
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let config = Config::new();
        // `Config::new()` is valid for the host; failure here would be a bug in
        // wasmtime's defaults, which no test could work around.
        Engine::new(&config).unwrap_or_else(|e| panic!("cannot create wasmtime engine: {e:?}"))
    })
}

/// Where compiled modules are cached: `$OPSGATE_WASM_CACHE_DIR`, else
/// `$CARGO_TARGET_DIR/opsgate-wasm-cache`, else
/// `<workspace>/target/opsgate-wasm-cache`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    crate::target_dir().join("opsgate-wasm-cache")
}

/// Compiles `wasm` (or fetches it from the in-process or on-disk cache).
pub fn load_module(wasm: &[u8]) -> Result<Module> {
    static MODULES: OnceLock<Mutex<HashMap<String, Module>>> = OnceLock::new();
    let key = cache_key(wasm);
    // Holding the lock while compiling makes concurrent tests of one binary
    // wait for a single compilation instead of each compiling the module.
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(module) = modules.get(&key) {
        return Ok(module.clone());
    }
    let module = load_or_compile(wasm, &cache_dir().join(format!("{key}.cwasm")))?;
    modules.insert(key, module.clone());
    Ok(module)
}

fn cache_key(wasm: &[u8]) -> String {
    let digest = Sha256::digest(wasm);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    // The compatibility hash covers the wasmtime version and the engine
    // settings that make a serialised module loadable. `DefaultHasher::new()`
    // has fixed keys, so the name is stable for a given toolchain.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine().precompile_compatibility_hash().hash(&mut hasher);
    format!("{hex}-wasmtime48-{:016x}", hasher.finish())
}

fn load_or_compile(wasm: &[u8], path: &Path) -> Result<Module> {
    if path.is_file() {
        // SAFETY: `Module::deserialize_file` trusts the file to be an artifact
        // produced by `Module::serialize` of a compatible engine, because it
        // maps native code from it. The file is one this crate wrote itself:
        // the name is derived from the sha256 of the wasm and the engine's
        // compatibility hash, it is only ever created by an atomic rename of a
        // fully written temporary file, and it lives in the build's own target
        // (or an explicitly configured) directory. Wasmtime still checks the
        // header and version and returns an error on a mismatch, in which case
        // the module is recompiled below.
        match unsafe { Module::deserialize_file(engine(), path) } {
            Ok(module) => return Ok(module),
            Err(e) => eprintln!(
                "opsgate-wasm-tests: ignoring unusable cache file {}: {e}",
                path.display()
            ),
        }
    }
    let module = Module::new(engine(), wasm)
        .map_err(crate::wasm_error)
        .context("compiling the wasm module")?;
    if let Err(e) = store(&module, path) {
        // A cache that cannot be written only costs time.
        eprintln!(
            "opsgate-wasm-tests: cannot cache compiled module at {}: {e:#}",
            path.display()
        );
    }
    Ok(module)
}

fn store(module: &Module, path: &Path) -> Result<()> {
    let bytes = module.serialize().map_err(crate::wasm_error)?;
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.{:?}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("module"),
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
