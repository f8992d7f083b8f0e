//! The filter's configuration: the JSON string in Envoy's `plugin_config`, compiled into a
//! validated object. A bad value refuses to load (Envoy then refuses the config) with a
//! message naming the field.

use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    control_plane: RawControlPlane,
    #[serde(default = "default_prefix")]
    route_prefix: String,
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    #[serde(default = "default_snapshot_ms")]
    snapshot_interval_ms: u64,
    #[serde(default = "default_settle_ms")]
    settle_interval_ms: u64,
    #[serde(default = "default_settle_batch")]
    settle_batch: usize,
    #[serde(default = "default_settle_queue")]
    settle_queue_max: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawControlPlane {
    cluster: String,
    #[serde(default = "default_authority")]
    authority: String,
    token: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_prefix() -> String {
    "/api/v1/llm".into()
}
fn default_max_body() -> u64 {
    1024 * 1024
}
fn default_snapshot_ms() -> u64 {
    5_000
}
fn default_settle_ms() -> u64 {
    200
}
fn default_settle_batch() -> usize {
    100
}
fn default_settle_queue() -> usize {
    10_000
}
fn default_authority() -> String {
    "opsgate-control-plane".into()
}
fn default_timeout_ms() -> u64 {
    2_000
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    pub cp_cluster: String,
    pub cp_authority: String,
    pub cp_token: String,
    pub cp_timeout: Duration,
    pub route_prefix: String,
    pub max_body_bytes: usize,
    pub snapshot_interval: Duration,
    pub settle_interval: Duration,
    pub settle_batch: usize,
    pub settle_queue_max: usize,
}

impl FilterConfig {
    pub fn parse(bytes: &[u8]) -> Result<FilterConfig, String> {
        // Fix: serde_json's type errors ("invalid type: string, expected u64") do not say
        // which field is wrong; report the path of the offending value as well.
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| {
                let path = e.path().to_string();
                if path.is_empty() || path == "." {
                    format!("opsgate plugin_config: {}", e.inner())
                } else {
                    format!("opsgate plugin_config: {path}: {}", e.inner())
                }
            })
            .and_then(|raw| {
                de.end()
                    .map(|()| raw)
                    .map_err(|e| format!("opsgate plugin_config: {e}"))
            })?;
        let field = |name: &str, why: &str| format!("opsgate plugin_config: {name} {why}");
        if raw.control_plane.cluster.trim().is_empty() {
            return Err(field("control_plane.cluster", "must name an Envoy cluster"));
        }
        if raw.control_plane.token.len() < 16 {
            return Err(field(
                "control_plane.token",
                "must be at least 16 characters",
            ));
        }
        if !(10..=60_000).contains(&raw.control_plane.timeout_ms) {
            return Err(field(
                "control_plane.timeout_ms",
                "must be from 10 to 60000",
            ));
        }
        if !raw.route_prefix.starts_with('/') || raw.route_prefix.ends_with('/') {
            return Err(field(
                "route_prefix",
                "must start with '/' and not end with '/'",
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&raw.max_body_bytes) {
            return Err(field("max_body_bytes", "must be from 1024 to 67108864"));
        }
        if !(100..=3_600_000).contains(&raw.snapshot_interval_ms) {
            return Err(field("snapshot_interval_ms", "must be from 100 to 3600000"));
        }
        if !(10..=60_000).contains(&raw.settle_interval_ms) {
            return Err(field("settle_interval_ms", "must be from 10 to 60000"));
        }
        if !(1..=1000).contains(&raw.settle_batch) {
            return Err(field("settle_batch", "must be from 1 to 1000"));
        }
        if raw.settle_queue_max < raw.settle_batch {
            return Err(field("settle_queue_max", "must be at least settle_batch"));
        }
        Ok(FilterConfig {
            cp_cluster: raw.control_plane.cluster,
            cp_authority: raw.control_plane.authority,
            cp_token: raw.control_plane.token,
            cp_timeout: Duration::from_millis(raw.control_plane.timeout_ms),
            route_prefix: raw.route_prefix,
            max_body_bytes: raw.max_body_bytes as usize,
            snapshot_interval: Duration::from_millis(raw.snapshot_interval_ms),
            settle_interval: Duration::from_millis(raw.settle_interval_ms),
            settle_batch: raw.settle_batch,
            settle_queue_max: raw.settle_queue_max,
        })
    }

    /// The tick drives both the settle flush and the snapshot poll.
    pub fn tick(&self) -> Duration {
        self.settle_interval.min(self.snapshot_interval)
    }
}
