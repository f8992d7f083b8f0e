//! A client that leaves while the authorize decision is on its way: the filter still
//! releases whatever the control plane may hold under the call's request id.

mod common;
use common::*;
use opsgate_core::contract::Outcome;

#[test]
fn a_call_abandoned_during_authorize_is_released_by_its_request_id() {
    let mut host = gateway();
    let (id, _) = chat(&mut host, SERVICE_KEY, QUICKSTART);
    let call = authorize_call(&mut host);
    let request_id = authorize_request(&call)
        .request_id
        .expect("the filter names every call");
    assert!(
        request_id.starts_with("req_") && request_id.len() > 20,
        "{request_id}"
    );

    // The client goes away before the decision arrives.
    host.done(id).unwrap();
    let settled = flush_settlements(&mut host);
    assert_eq!(settled.len(), 1, "{settled:?}");
    assert_eq!(settled[0].hold_id, request_id);
    assert_eq!(settled[0].outcome, Outcome::Failed);
    assert!(host.resumed(id, opsgate_wasm_tests::StreamKind::Request) == 0);
}

#[test]
fn request_ids_are_unique_per_call() {
    let mut host = gateway();
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..20 {
        chat(&mut host, SERVICE_KEY, QUICKSTART);
        let call = authorize_call(&mut host);
        ids.insert(authorize_request(&call).request_id.unwrap());
    }
    assert_eq!(ids.len(), 20);
}
