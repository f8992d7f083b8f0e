//! One snapshot per Envoy: the workers of one Envoy share it through shared data. One worker
//! polls per interval (a compare-and-swap lease decides which), and every worker switches to
//! a new snapshot on its next request — a revoked service key stops at every worker at once,
//! and a new one works at every worker at once, where each worker once polled for itself and
//! they disagreed for up to an interval.

mod common;
use common::*;
use opsgate_core::contract::{ServiceKeyEntry, Snapshot};
use opsgate_core::credentials::digest;
use opsgate_wasm_tests::Host;
use std::time::Duration;

const NEW_KEY: &str = "sk-bolt-diy-service-key-2025";

/// A second worker of `first`'s Envoy, configured the same way.
fn second_worker(first: &Host, config: &str) -> Host {
    let mut host = Host::plugin().expect("load the opsgate filter");
    host.add_cluster(CP);
    host.worker_of(first);
    assert!(host.configure("", config).expect("configure"));
    host
}

fn rotated(version: &str) -> Snapshot {
    Snapshot {
        version: version.into(),
        service_keys: vec![ServiceKeyEntry {
            digest: digest(NEW_KEY),
            user_id: "bolt-diy-service".into(),
        }],
        ..snapshot()
    }
}

#[test]
fn one_worker_polls_and_every_worker_switches_on_its_next_request() {
    let config = config_with(r#""health_path":"/""#);
    let mut a = gateway_with(&config); // ticked, polled and loaded v1
    let mut b = second_worker(&a, &config);
    b.tick().unwrap();
    assert!(
        snapshot_call(&mut b).is_none(),
        "the lease is held: the second worker does not poll"
    );
    // B never polled, yet serves A's snapshot.
    assert!(service_key_known(&mut b, SERVICE_KEY));
    assert!(!service_key_known(&mut b, NEW_KEY));

    // Next interval: whichever worker ticks first polls; the other does not.
    a.advance(Duration::from_millis(5_000));
    b.advance(Duration::from_millis(5_000));
    b.tick().unwrap();
    let poll = snapshot_call(&mut b).expect("B won the lease");
    a.tick().unwrap();
    assert!(
        snapshot_call(&mut a).is_none(),
        "one poll per Envoy per interval"
    );
    answer_snapshot(&mut b, &poll, &rotated("v2"));

    // The old key was revoked and a new one added: both workers agree at once, on their very
    // next request, without a tick in between.
    for host in [&mut a, &mut b] {
        assert!(
            !service_key_known(host, SERVICE_KEY),
            "revoked everywhere at once"
        );
        assert!(service_key_known(host, NEW_KEY), "added everywhere at once");
    }
}

#[test]
fn a_failed_poll_keeps_the_shared_snapshot_and_health_says_so_at_every_worker() {
    let config = config_with(r#""health_path":"/""#);
    let mut a = gateway_with(&config);
    let mut b = second_worker(&a, &config);
    b.tick().unwrap();
    a.advance(Duration::from_millis(5_000));
    a.tick().unwrap();
    let poll = snapshot_call(&mut a).expect("A polls");
    a.respond(poll.token, 503, &[], b"down").unwrap();
    // B learns the control plane is unreachable from A's poll, and keeps serving v1.
    let id = b.new_stream().unwrap();
    b.request_headers(
        id,
        &[
            (":method", "GET"),
            (":path", "/"),
            (":scheme", "http"),
            (":authority", "gateway"),
        ],
        true,
    )
    .unwrap();
    let reply = b.local_reply(id).expect("the health answer");
    assert_eq!(reply.status, 503, "{}", reply.body_str());
    assert!(
        reply.body_str().contains("unreachable"),
        "{}",
        reply.body_str()
    );
    assert!(
        service_key_known(&mut b, SERVICE_KEY),
        "the last good snapshot still serves"
    );
}

#[test]
fn a_worker_whose_shared_snapshot_does_not_parse_keeps_its_own() {
    let mut a = gateway();
    a.set_shared_data("opsgate.snapshot", b"{not json");
    a.set_shared_data("opsgate.snapshot.version", b"v9");
    assert!(service_key_known(&mut a, SERVICE_KEY), "v1 still serves");
    assert!(has_log_at(&a, 3, "does not parse"));
}
