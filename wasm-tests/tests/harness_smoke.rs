//! Exercises the proxy-wasm test host with the small filter in
//! `fixtures/echo-filter` (built here once per test binary).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use opsgate_wasm_tests::{Action, Host, StreamId, StreamKind, DEFAULT_START_NANOS};

const CONFIG: &str = "cluster=authz;tick_ms=500";

/// Builds the fixture filter once (concurrent tests wait for the first build).
fn echo_wasm() -> PathBuf {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        let manifest =
            opsgate_wasm_tests::workspace_root().join("wasm-tests/fixtures/echo-filter/Cargo.toml");
        let target_dir = opsgate_wasm_tests::target_dir().join("echo-filter");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip1",
                "--manifest-path",
            ])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("running cargo to build the echo filter");
        assert!(status.success(), "building the echo filter failed");
        target_dir.join("wasm32-wasip1/release/echo_filter.wasm")
    })
    .clone()
}

fn host() -> Host {
    let mut host = Host::new(echo_wasm()).expect("loading the echo filter");
    assert!(host.configure("vm-config", CONFIG).unwrap());
    host
}

fn get(host: &mut Host, path: &str, end_of_stream: bool) -> (StreamId, Action) {
    let id = host.new_stream().unwrap();
    let action = host
        .request_headers(
            id,
            &[
                (":method", "POST"),
                (":path", path),
                (":authority", "api.example"),
                ("X-Client", "smoke"),
            ],
            end_of_stream,
        )
        .unwrap();
    (id, action)
}

#[test]
fn configure_reads_both_configurations_and_sets_the_tick() {
    let host = host();
    assert!(host.has_log("vm config: vm-config"));
    assert!(host.has_log("plugin config: cluster=authz;tick_ms=500"));
    assert_eq!(host.tick_period(), Some(Duration::from_millis(500)));
    assert_eq!(host.metric("echo_ticks"), Some(0));
}

#[test]
fn configure_reports_the_filters_refusal() {
    let mut host = Host::new(echo_wasm()).unwrap();
    assert!(!host.configure("", "invalid").unwrap());
}

#[test]
fn ticks_update_shared_data_with_cas_and_a_counter() {
    let mut host = host();
    host.tick().unwrap();
    let (value, first_cas) = host.shared_data("echo.ticks").unwrap();
    assert_eq!(value, b"1");
    host.tick().unwrap();
    let (value, second_cas) = host.shared_data("echo.ticks").unwrap();
    assert_eq!(value, b"2");
    assert_ne!(first_cas, second_cas);
    // Another writer bumps the value; the filter reads it back with its CAS.
    host.set_shared_data("echo.ticks", b"10");
    host.tick().unwrap();
    assert_eq!(host.shared_data("echo.ticks").unwrap().0, b"11");
    assert_eq!(host.metric("echo_ticks"), Some(3));
}

#[test]
fn http_call_pauses_then_adds_a_header_and_resumes() {
    let mut host = host();
    host.add_cluster("authz");
    let (id, action) = get(&mut host, "/call", true);
    assert_eq!(action, Action::Pause);
    assert!(host.is_paused(id, StreamKind::Request));

    let calls = host.pending_calls();
    assert_eq!(calls.len(), 1);
    let call = host.take_call(|c| c.cluster == "authz").unwrap();
    assert!(host.pending_calls().is_empty());
    assert_eq!(call.context_id, id.0);
    assert_eq!(call.header(":path"), Some("/check"));
    assert_eq!(call.header(":authority"), Some("auth.local"));
    assert_eq!(call.header("x-original-path"), Some("/call"));
    assert_eq!(call.header("content-length"), Some("10"));
    assert_eq!(call.body, b"check-body");
    assert_eq!(call.timeout, Duration::from_secs(3));
    assert_eq!(call.token, 4, "Envoy's first http-call token");

    host.respond(call.token, 200, &[("content-type", "text/plain")], b"alice")
        .unwrap();
    assert_eq!(host.header(id, "x-auth-result").as_deref(), Some("alice"));
    assert_eq!(host.header(id, "x-client").as_deref(), Some("smoke"));
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
    assert!(!host.is_paused(id, StreamKind::Request));
    assert!(host.local_reply(id).is_none());

    let action = host
        .response_headers(id, &[(":status", "200")], true)
        .unwrap();
    assert_eq!(action, Action::Continue);
    assert_eq!(
        host.response_header(id, "x-echo-filter").as_deref(),
        Some("1")
    );
    host.done(id).unwrap();
    assert!(
        host.respond(call.token, 200, &[], b"").is_err(),
        "answered once"
    );
}

#[test]
fn body_sent_while_headers_are_paused_is_delivered_after_resume() {
    let mut host = host();
    host.add_cluster("authz");
    let (id, action) = get(&mut host, "/call", false);
    assert_eq!(action, Action::Pause);
    // Envoy buffers the data without calling the filter.
    assert_eq!(
        host.request_body(id, b"held ", false).unwrap(),
        Action::Pause
    );
    assert_eq!(host.request_body(id, b"data", true).unwrap(), Action::Pause);
    assert!(host.request_body_of(id).is_empty());

    let call = host.take_call(|_| true).unwrap();
    host.respond(call.token, 200, &[], b"bob").unwrap();
    assert_eq!(host.forwarded_request_body(id), b"HELD DATA");
    assert_eq!(host.last_status(id, StreamKind::Request), Some(0));
}

#[test]
fn rejected_dispatches_become_local_replies() {
    // Unknown cluster.
    let mut host = host();
    let (id, _) = get(&mut host, "/call", true);
    let reply = host.local_reply(id).unwrap();
    assert_eq!(reply.status, 500);
    assert_eq!(reply.body_str(), "dispatch failed: BadArgument");
    assert!(host.pending_calls().is_empty());

    // Known cluster, but no :authority.
    host.add_cluster("authz");
    let (id, _) = get(&mut host, "/call-no-authority", true);
    assert_eq!(
        host.local_reply(id).unwrap().body_str(),
        "dispatch failed: BadArgument"
    );
}

#[test]
fn failed_and_timed_out_calls() {
    let mut host = host();
    host.add_cluster("authz");
    let (reset, _) = get(&mut host, "/call", true);
    let (timed_out, _) = get(&mut host, "/call", true);
    let calls = host.pending_calls();
    assert_eq!(calls.len(), 2);

    host.fail_call(calls[0].token).unwrap();
    let reply = host.local_reply(reset).unwrap();
    assert_eq!(
        (reply.status, reply.body_str().as_str()),
        (503, "auth unavailable")
    );

    host.timeout_call(calls[1].token).unwrap();
    let reply = host.local_reply(timed_out).unwrap();
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("x-auth-status"), Some("504"));
    assert_eq!(host.resumed(timed_out, StreamKind::Request), 0);
}

#[test]
fn local_reply_goes_through_the_filters_response_path() {
    let mut host = host();
    let (id, action) = get(&mut host, "/deny", true);
    assert_eq!(action, Action::Pause);
    let reply = host.local_reply(id).unwrap();
    assert_eq!(reply.status, 401);
    assert_eq!(reply.body, b"denied");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"echo\"")
    );

    let headers = host.response_headers_of(id);
    assert_eq!(headers[0], (":status".to_string(), "401".to_string()));
    assert_eq!(
        host.response_header(id, "content-type").as_deref(),
        Some("text/plain")
    );
    assert_eq!(
        host.response_header(id, "content-length").as_deref(),
        Some("6")
    );
    assert_eq!(
        host.response_header(id, "x-echo-filter").as_deref(),
        Some("1")
    );
    assert_eq!(host.forwarded_response_body(id), b"denied");

    let err = host.request_body(id, b"late", true).unwrap_err();
    assert!(err.to_string().contains("local reply"), "{err}");
    assert!(host
        .response_headers(id, &[(":status", "200")], true)
        .is_err());
}

#[test]
fn request_body_is_buffered_and_replaced() {
    let mut host = host();
    let (id, action) = get(&mut host, "/upload", false);
    assert_eq!(action, Action::Continue);
    assert_eq!(
        host.request_body(id, b"hello ", false).unwrap(),
        Action::Pause
    );
    assert_eq!(host.last_status(id, StreamKind::Request), Some(1));
    assert!(host.forwarded_request_body(id).is_empty());
    assert_eq!(
        host.request_body(id, b"world", true).unwrap(),
        Action::Continue
    );
    assert_eq!(host.request_body_of(id), b"HELLO WORLD");
    assert_eq!(host.forwarded_request_body(id), b"HELLO WORLD");
    assert!(
        host.request_body(id, b"more", false).is_err(),
        "stream ended"
    );
}

#[test]
fn the_clock_is_under_test_control() {
    let mut host = host();
    let (id, _) = get(&mut host, "/", true);
    assert_eq!(
        host.header(id, "x-echo-now").unwrap(),
        DEFAULT_START_NANOS.to_string()
    );
    host.advance(Duration::from_secs(90));
    let (id, _) = get(&mut host, "/", true);
    assert_eq!(
        host.header(id, "x-echo-now").unwrap(),
        (DEFAULT_START_NANOS + 90_000_000_000).to_string()
    );
    host.set_time_nanos(42);
    let (id, _) = get(&mut host, "/", true);
    assert_eq!(host.header(id, "x-echo-now").as_deref(), Some("42"));
}

#[test]
fn properties_are_visible_to_the_filter() {
    let mut host = host();
    let (id, _) = get(&mut host, "/", true);
    assert_eq!(host.header(id, "x-greeting"), None);
    host.set_property(&["echo", "greeting"], b"hello");
    let (id, _) = get(&mut host, "/", true);
    assert_eq!(host.header(id, "x-greeting").as_deref(), Some("hello"));
    assert_eq!(
        host.stream_property(id, &["echo", "greeting"]).as_deref(),
        Some(&b"hello"[..])
    );
}

#[test]
fn a_guest_panic_is_an_error_not_an_abort() {
    let mut host = host();
    let id = host.new_stream().unwrap();
    let err = host
        .request_headers(id, &[(":path", "/panic")], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("echo-filter panic requested"), "{err}");
    assert!(host.failed().is_some());
    assert!(host.tick().is_err(), "a failed VM is not called again");
}

#[test]
fn root_shutdown_waits_for_proxy_done() {
    let mut host = host();
    assert!(!host.shutdown().unwrap());
    assert!(!host.done_called());
    host.tick().unwrap();
    assert!(host.done_called());
    assert!(host.root_deleted());
    assert!(host.tick().is_err());
}

#[test]
fn queue_items_reach_the_filter() {
    let mut host = host();
    host.enqueue("echo-queue", b"job-1").unwrap();
    assert!(host.has_log("dequeued: job-1"));
    assert!(host.queue_items("echo-queue").is_empty());
    assert!(host.enqueue("missing", b"x").is_err());
}

#[test]
fn compiled_modules_are_cached_on_disk() {
    let _host = host();
    let cached = std::fs::read_dir(opsgate_wasm_tests::engine::cache_dir())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().ends_with(".cwasm"));
    assert!(cached);
}
