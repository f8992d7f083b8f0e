//! A bad plugin configuration refuses to load (Envoy then rejects the listener update) and
//! says which field is wrong, in a critical log line.

mod common;
use common::*;
use opsgate_wasm_tests::Host;

const CRITICAL: u32 = 5;

fn refused(config: &str, needle: &str) {
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    assert!(
        !host.configure("", config).unwrap(),
        "accepted a bad config: {config}"
    );
    assert!(host.failed().is_none(), "refusing is not a crash");
    assert!(
        has_log_at(&host, CRITICAL, needle),
        "no critical log naming {needle:?} for {config}: {:?}",
        host.logs()
    );
    // A refused config must not leave the token in the logs.
    assert!(host.logs().iter().all(|(_, m)| !m.contains(TOKEN)));
}

fn cp(fields: &str) -> String {
    format!(r#"{{"control_plane":{{{fields}}}}}"#)
}

#[test]
fn not_json() {
    refused("control_plane = 1", "plugin_config");
    refused("", "plugin_config");
}

#[test]
fn trailing_garbage() {
    refused(&format!("{} x", config()), "trailing characters");
}

#[test]
fn wrong_types_name_the_field() {
    refused(
        &cp(&format!(
            r#""cluster":"cp","token":"{TOKEN}","timeout_ms":"2s""#
        )),
        "control_plane.timeout_ms",
    );
    refused(&config_with(r#""settle_batch":-1"#), "settle_batch");
}

#[test]
fn missing_control_plane() {
    refused(r#"{"route_prefix":"/api/v1/llm"}"#, "`control_plane`");
}

#[test]
fn missing_cluster_or_token() {
    refused(&cp(&format!(r#""token":"{TOKEN}""#)), "`cluster`");
    refused(&cp(r#""cluster":"cp""#), "`token`");
    refused(
        &cp(&format!(r#""cluster":" ","token":"{TOKEN}""#)),
        "control_plane.cluster",
    );
}

#[test]
fn short_token() {
    refused(
        &cp(r#""cluster":"cp","token":"0123456789abcde""#),
        "control_plane.token",
    );
}

#[test]
fn unknown_fields() {
    refused(&config_with(r#""max_body":1"#), "unknown field `max_body`");
    refused(
        &cp(&format!(r#""cluster":"cp","token":"{TOKEN}","timeout":5"#)),
        "unknown field `timeout`",
    );
}

#[test]
fn zero_timeout() {
    refused(
        &cp(&format!(
            r#""cluster":"cp","token":"{TOKEN}","timeout_ms":0"#
        )),
        "control_plane.timeout_ms",
    );
}

#[test]
fn route_prefix_without_leading_slash() {
    refused(
        &config_with(r#""route_prefix":"api/v1/llm""#),
        "route_prefix",
    );
    refused(
        &config_with(r#""route_prefix":"/api/v1/llm/""#),
        "route_prefix",
    );
}

#[test]
fn out_of_range_limits() {
    refused(&config_with(r#""max_body_bytes":10"#), "max_body_bytes");
    refused(&config_with(r#""settle_batch":0"#), "settle_batch");
    refused(&config_with(r#""settle_wait_ms":10"#), "settle_wait_ms");
    refused(&config_with(r#""settle_wait_ms":999999"#), "settle_wait_ms");
    refused(
        &config_with(r#""settle_batch":50,"settle_queue_max":10"#),
        "settle_queue_max",
    );
    refused(
        &config_with(r#""snapshot_interval_ms":1"#),
        "snapshot_interval_ms",
    );
    refused(
        &config_with(r#""settle_interval_ms":0"#),
        "settle_interval_ms",
    );
    refused(&config_with(r#""max_body_bytes":"big""#), "max_body_bytes");
}

#[test]
fn the_example_config_loads_and_sets_a_tick() {
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    assert!(host.configure("", &config()).unwrap());
    assert!(host.tick_period().is_some_and(|p| p.as_millis() <= 200));
    assert!(!host.logs().iter().any(|(level, _)| *level == CRITICAL));
}
