//! What a metered call costs the VM, counted: every hostcall is a crossing between the
//! wasm and Envoy, and every guest allocation the host asks for (to hand back a header or a
//! buffer) is a call into the VM. In V8 these crossings, not the Rust code between them, are
//! most of the filter's own CPU; this budget keeps a change from quietly adding many.

mod common;
use common::*;
use opsgate_wasm_tests::{Action, StreamKind};

const REPLY: &[u8] = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#;

#[test]
fn a_metered_call_stays_within_its_hostcall_budget() {
    let mut host = gateway_with(&config_with(r#""settle_wait_ms":1000"#));
    host.clear_hostcalls();
    let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    let call = authorize_call(&mut host);
    allow(&mut host, &call, grant());
    host.response_headers(
        id,
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    assert_eq!(host.response_body(id, REPLY, true).unwrap(), Action::Pause);
    let settle = settle_call(&mut host).expect("settled before the response leaves");
    ack_settle(&mut host, &settle);
    assert_eq!(host.resumed(id, StreamKind::Response), 1);
    host.done(id).unwrap();

    let counts = host.hostcalls();
    let total: u64 = counts.values().sum();
    let calls_out = counts.get("proxy_http_call").copied().unwrap_or(0);
    let allocations = counts.get("proxy_on_memory_allocate").copied().unwrap_or(0);
    eprintln!("hostcalls for one metered call: {total} {counts:?}");
    assert_eq!(calls_out, 2, "one authorize, one settle: {counts:?}");
    assert!(total <= 90, "{total} hostcalls: {counts:?}");
    assert!(
        allocations <= 16,
        "{allocations} guest allocations: {counts:?}"
    );
}
