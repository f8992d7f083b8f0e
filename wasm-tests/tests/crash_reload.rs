//! A crashed VM is not an outage. The test build of the filter (`--features crash-trigger`,
//! profile `crash-test`, never shipped) panics on a request carrying `x-opsgate-test-crash`.
//! The panic is logged at critical level with its location only — never the request's bytes —
//! and, as Envoy's `FAIL_RELOAD` does, a fresh VM from the same module serves the next request.

mod common;
use common::*;
use opsgate_wasm_tests::Host;
use std::path::PathBuf;

fn crash_wasm() -> PathBuf {
    let path = std::env::var_os("OPSGATE_CRASH_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            opsgate_wasm_tests::target_dir().join("wasm32-wasip1/crash-test/opsgate_plugin.wasm")
        });
    assert!(
        path.is_file(),
        "{} is missing: build it with `cargo build -p opsgate-plugin --target wasm32-wasip1 \
         --profile crash-test --features crash-trigger` (scripts/test does)",
        path.display()
    );
    path
}

/// A crash-trigger filter, configured and loaded like [`gateway`].
fn crashable() -> Host {
    let mut host = Host::new(crash_wasm()).unwrap();
    host.set_allow_on_headers_stop_iteration(true);
    host.add_cluster(CP);
    assert!(host.configure("", &config()).unwrap());
    host.tick().unwrap();
    let call = snapshot_call(&mut host).unwrap();
    answer_snapshot(&mut host, &call, &snapshot());
    host
}

const SECRET: &str = "uc_feedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedfacefeedface";

#[test]
fn a_panic_logs_its_location_never_the_request_and_a_fresh_vm_serves_on() {
    let mut host = crashable();
    // Serving before the crash.
    forwarded_chat(&mut host, QUICKSTART, grant());

    let id = host.new_stream().unwrap();
    let trapped = host.request_headers(
        id,
        &[
            (":method", "POST"),
            (":path", "/api/v1/llm/chat/completions"),
            (":authority", "gateway"),
            ("authorization", &format!("Bearer {SECRET}")),
            ("x-opsgate-test-crash", SECRET),
        ],
        false,
    );
    assert!(trapped.is_err(), "the trigger must trap the VM");
    assert!(host.failed().is_some());
    let logs = host.logs();
    assert!(
        logs.iter()
            .any(|(l, m)| *l == 5 && m.contains("opsgate: filter panicked at plugin/src/filter/")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .all(|(_, m)| !m.contains("feedface") && !m.contains("crash trigger")),
        "the panic message (request bytes) reached the log: {logs:?}"
    );
    // A failed VM is never called again (Envoy's FAIL_CLOSED would now refuse everything).
    assert!(host.new_stream().is_err());

    // FAIL_RELOAD: Envoy starts a fresh VM from the same module and configuration.
    let mut fresh = crashable();
    forwarded_chat(&mut fresh, QUICKSTART, grant());
    assert!(fresh.failed().is_none());
}

#[test]
fn the_shipped_filter_has_no_crash_trigger() {
    let mut host = gateway();
    let id = open_chat(&mut host, &[("x-opsgate-test-crash", "1")]);
    host.request_body(id, QUICKSTART.as_bytes(), true).unwrap();
    assert!(host.failed().is_none());
    authorize_call(&mut host);
}
