//! Callout answers the filter did not expect — junk header bytes, a `:status` that is not a
//! number, bodies that are not what was asked for — never trap the VM: authorize fails closed
//! (503 envelope, hold released), a bad snapshot keeps the last good one, a bad settle
//! acknowledgement is retried.

mod common;
use common::*;
use opsgate_wasm_tests::{HeaderMap, StreamKind};

fn junk_headers(status: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.add(b":status", status);
    h.add(b"content-type", b"application/json\xe9");
    h.add(b"x-junk", b"\xff\xfe");
    h
}

#[test]
fn authorize_answers_with_junk_fail_closed() {
    let mut host = gateway();
    for (status, body) in [
        (&b"2\xff0"[..], &b"{}"[..]),
        (b"200", b"\xff\xfe not json"),
        (b"200", br#"{"allow":"#),
        (b"", b""),
        (b"999999999999", br#"{"allow":{}}"#),
    ] {
        let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
        let call = authorize_call(&mut host);
        host.respond_map(call.token, junk_headers(status), body)
            .unwrap();
        assert!(host.failed().is_none(), "{status:?}");
        expect_reply(&host, id, 503, "service_unavailable");
        host.done(id).unwrap();
        // The hold the control plane may have placed is released.
        let released = flush_settlements(&mut host);
        assert_eq!(released.len(), 1, "{status:?}");
    }
    forwarded_chat(&mut host, QUICKSTART, grant());
}

#[test]
fn a_junk_snapshot_keeps_the_last_good_one() {
    let mut host = gateway();
    host.advance(std::time::Duration::from_secs(6));
    host.tick().unwrap();
    let call = snapshot_call(&mut host).expect("a poll");
    host.respond_map(call.token, junk_headers(b"200"), b"\xff\xfe\x00{")
        .unwrap();
    assert!(host.failed().is_none());
    // The service key from the last good snapshot still works.
    forwarded_chat(&mut host, QUICKSTART, grant());
}

#[test]
fn a_junk_settle_acknowledgement_is_retried() {
    let mut host = gateway();
    let id = forwarded_chat(&mut host, QUICKSTART, grant());
    provider_answers(&mut host, id, 1, 1);
    host.done(id).unwrap();
    host.advance(std::time::Duration::from_millis(250));
    host.tick().unwrap();
    let call = settle_call(&mut host).expect("a settle batch");
    host.respond_map(call.token, junk_headers(b"\xe9"), b"\xff")
        .unwrap();
    assert!(host.failed().is_none());
    // Sent again: the settlement was not lost.
    let again = flush_settlements(&mut host);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].hold_id, "hold_1");
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
}
