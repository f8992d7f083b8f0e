//! The integration guide's health check (`GET /`): with `health_path` configured, the filter
//! answers it itself, without credentials and without a callout — 200 while the control plane
//! answers its snapshot polls, 503 with `Retry-After` before the first snapshot and while the
//! polls fail. Other methods on that path, and the path without the setting, pass untouched.

mod common;
use common::*;
use opsgate_wasm_tests::{Action, Host, StreamId};

const HEALTH: &str = r#""health_path":"/""#;

fn get(host: &mut Host, method: &str, path: &str) -> (StreamId, Action) {
    let id = host.new_stream().unwrap();
    let action = host
        .request_headers(
            id,
            &[
                (":method", method),
                (":path", path),
                (":scheme", "http"),
                (":authority", "gateway"),
            ],
            true,
        )
        .unwrap();
    (id, action)
}

fn health(host: &mut Host) -> (u32, serde_json::Value, Option<String>) {
    let calls_before = host.pending_calls().len();
    let (id, action) = get(host, "GET", "/?probe=1");
    assert_eq!(action, Action::Pause, "answered by the filter");
    assert_eq!(host.pending_calls().len(), calls_before, "no callout");
    let reply = host.local_reply(id).expect("a local reply");
    let body = serde_json::from_str(&reply.body_str()).expect("JSON");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    (
        reply.status,
        body,
        reply.header("retry-after").map(str::to_string),
    )
}

#[test]
fn the_health_path_reports_whether_the_control_plane_answers() {
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    assert!(host.configure("", &config_with(HEALTH)).unwrap());

    // Before the first snapshot: not ready.
    let (status, body, retry) = health(&mut host);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["control_plane"], "unreachable");
    assert_eq!(retry.as_deref(), Some("1"));

    // Snapshot loaded: healthy.
    host.tick().unwrap();
    let call = snapshot_call(&mut host).expect("snapshot poll");
    answer_snapshot(&mut host, &call, &snapshot());
    let (status, body, retry) = health(&mut host);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["control_plane"].as_str()),
        (Some("ok"), Some("reachable"))
    );
    assert!(body["snapshot"].is_string());
    assert_eq!(retry, None);

    // The control plane stops answering: unhealthy, though the last snapshot is kept.
    host.advance(std::time::Duration::from_secs(10));
    host.tick().unwrap();
    let call = snapshot_call(&mut host).expect("the next poll");
    host.respond(call.token, 503, &[], b"upstream connect error")
        .unwrap();
    let (status, body, _) = health(&mut host);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["control_plane"], "unreachable");
}

#[test]
fn only_get_and_head_on_the_configured_path_are_answered() {
    let mut host = gateway_with(&config_with(HEALTH));
    let (id, _) = get(&mut host, "HEAD", "/");
    assert_eq!(host.local_reply(id).map(|r| r.status), Some(200));
    for (method, path) in [("POST", "/"), ("GET", "/index.html")] {
        let (id, action) = get(&mut host, method, path);
        assert_eq!(action, Action::Continue, "{method} {path}");
        assert!(host.local_reply(id).is_none());
    }
    // Without the setting, `/` is not the filter's.
    let mut host = gateway();
    let (id, action) = get(&mut host, "GET", "/");
    assert_eq!(action, Action::Continue);
    assert!(host.local_reply(id).is_none());
}

#[test]
fn a_health_path_inside_the_api_is_refused_at_load() {
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    for bad in [
        r#""health_path":"/api/v1/llm/health""#,
        r#""health_path":"health""#,
    ] {
        assert!(!host.configure("", &config_with(bad)).unwrap(), "{bad}");
    }
}
