//! The filter's configuration: the JSON string in Envoy's `plugin_config`, compiled into a
//! validated object. A bad value refuses to load (Envoy then refuses the config) with a
//! message naming the field.

use opsgate_core::jwt::Validation;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    control_plane: RawControlPlane,
    #[serde(default = "default_prefix")]
    route_prefix: String,
    /// A path the filter answers itself, without credentials, with the gateway's health
    /// (the integration guide's `GET /`); absent = none.
    #[serde(default)]
    health_path: Option<String>,
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    /// The largest metered answer Envoy can hold whole (its buffer limit, 32 MiB in the
    /// shipped configs): an embeddings batch whose answer could be larger is refused first.
    #[serde(default = "default_max_response")]
    max_response_bytes: u64,
    #[serde(default = "default_snapshot_ms")]
    snapshot_interval_ms: u64,
    #[serde(default = "default_settle_ms")]
    settle_interval_ms: u64,
    #[serde(default = "default_settle_batch")]
    settle_batch: usize,
    #[serde(default = "default_settle_wait_ms")]
    settle_wait_ms: u64,
    #[serde(default = "default_settle_queue")]
    settle_queue_max: usize,
    /// OIDC access tokens; absent = JWTs are refused (401).
    #[serde(default)]
    jwt: Option<RawJwt>,
    #[serde(default = "default_credential_ttl_ms")]
    credential_cache_ttl_ms: u64,
    #[serde(default = "default_negative_ttl_ms")]
    negative_cache_ttl_ms: u64,
    #[serde(default = "default_cache_entries")]
    credential_cache_max_entries: usize,
    /// Where the control plane's admin API is exposed through this Envoy; absent = it is not
    /// handled by the filter.
    #[serde(default)]
    admin_prefix: Option<String>,
    /// Cross-origin (browser) access; absent = no CORS headers, preflights refused, and
    /// cookie-authenticated requests from another origin refused.
    #[serde(default)]
    cors: Option<RawCors>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCors {
    allowed_origins: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default = "default_cors_max_age")]
    max_age_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    issuer: String,
    audiences: Vec<String>,
    /// The header Envoy's `jwt_authn` forwards a verified token's payload in.
    #[serde(default = "default_payload_header")]
    payload_header: String,
    // Verification moved to Envoy's `jwt_authn` filter: these are refused with a message
    // that says so, rather than as unknown fields.
    #[serde(default)]
    algorithm: Option<serde_json::Value>,
    #[serde(default)]
    jwks_cluster: Option<serde_json::Value>,
    #[serde(default)]
    jwks_authority: Option<serde_json::Value>,
    #[serde(default)]
    jwks_path: Option<serde_json::Value>,
    #[serde(default)]
    refresh_interval_ms: Option<serde_json::Value>,
    #[serde(default)]
    unknown_kid_cooldown_ms: Option<serde_json::Value>,
    #[serde(default)]
    timeout_ms: Option<serde_json::Value>,
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
fn default_max_response() -> u64 {
    32 * 1024 * 1024
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
/// On by default: a call's hold ends with the call (its response waits up to this long for
/// the settlement's acknowledgement). 0 turns the wait off (settlements then go in the
/// background queue only).
fn default_settle_wait_ms() -> u64 {
    1_000
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
fn default_credential_ttl_ms() -> u64 {
    30_000
}
fn default_negative_ttl_ms() -> u64 {
    5_000
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_payload_header() -> String {
    DEFAULT_JWT_PAYLOAD_HEADER.to_string()
}
fn default_cors_max_age() -> u64 {
    600
}

/// The header the shipped configs have `jwt_authn` forward a verified payload in.
pub const DEFAULT_JWT_PAYLOAD_HEADER: &str = "x-opsgate-jwt-payload";

/// JWTs: Envoy's `jwt_authn` verifies them; the filter checks what a verified token must
/// say (again) and where `jwt_authn` puts its payload.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub validation: Validation,
    /// Lower-case, under `x-opsgate-`: the filter reads it, then strips it with every other
    /// `x-opsgate-*` header, so it never reaches the control plane or a provider.
    pub payload_header: String,
}

fn jwt_config(raw: RawJwt) -> Result<JwtConfig, String> {
    let field = |name: &str, why: &str| format!("opsgate plugin_config: jwt.{name} {why}");
    let moved = [
        ("algorithm", raw.algorithm.is_some()),
        ("jwks_cluster", raw.jwks_cluster.is_some()),
        ("jwks_authority", raw.jwks_authority.is_some()),
        ("jwks_path", raw.jwks_path.is_some()),
        ("refresh_interval_ms", raw.refresh_interval_ms.is_some()),
        (
            "unknown_kid_cooldown_ms",
            raw.unknown_kid_cooldown_ms.is_some(),
        ),
        ("timeout_ms", raw.timeout_ms.is_some()),
    ];
    if let Some((name, _)) = moved.iter().find(|(_, set)| *set) {
        return Err(field(
            name,
            "is no longer the filter's: Envoy's jwt_authn filter verifies tokens and fetches the JWKS (configure it there, before this filter; see the README)",
        ));
    }
    if raw.issuer.trim().is_empty() || raw.issuer.trim() != raw.issuer {
        return Err(field(
            "issuer",
            "must be the tokens' exact `iss` (no surrounding spaces)",
        ));
    }
    if raw.audiences.is_empty() || raw.audiences.iter().any(|a| a.trim().is_empty()) {
        return Err(field(
            "audiences",
            "must list at least one non-empty audience",
        ));
    }
    let h = &raw.payload_header;
    let token_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if !h.starts_with(opsgate_core::headers::INTERNAL_PREFIX)
        || h.len() <= opsgate_core::headers::INTERNAL_PREFIX.len()
        || !h.bytes().all(token_char)
    {
        return Err(field(
            "payload_header",
            "must be a lower-case header name under x-opsgate- (the filter strips those from every request)",
        ));
    }
    Ok(JwtConfig {
        validation: Validation::new(raw.issuer, raw.audiences),
        payload_header: raw.payload_header,
    })
}

/// Cross-origin access for browser applications.
#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// Exact origins (`scheme://host[:port]`, lower-case), never `*`.
    pub allowed_origins: Vec<String>,
    /// Send `access-control-allow-credentials: true` (cookies, authorization headers).
    pub allow_credentials: bool,
    /// `access-control-max-age` of preflight answers, seconds.
    pub max_age_secs: u64,
}

impl CorsConfig {
    /// Is `origin` (a request's `Origin` header) one of the configured origins?
    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.trim();
        self.allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
    }
}

/// Is `origin` a serialized web origin: `http(s)://host[:port]`, no path, no userinfo?
fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        // An IPv6 literal `[::1]` without a port has colons inside its brackets.
        Some((h, p)) if !p.contains(']') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    host_ok && port_ok
}

fn cors_config(raw: RawCors) -> Result<CorsConfig, String> {
    let field = |name: &str, why: &str| format!("opsgate plugin_config: cors.{name} {why}");
    if raw.allowed_origins.is_empty() {
        return Err(field(
            "allowed_origins",
            "must list at least one origin (leave `cors` out to allow none)",
        ));
    }
    let mut origins = Vec::with_capacity(raw.allowed_origins.len());
    for o in &raw.allowed_origins {
        if o == "*" || o == "null" {
            return Err(field(
                "allowed_origins",
                "must list exact origins: `*` and `null` are not accepted",
            ));
        }
        let lower = o.to_ascii_lowercase();
        if !is_origin(&lower) {
            return Err(field(
                "allowed_origins",
                &format!("has {o:?}, which is not an origin like \"https://app.example.com\" (scheme, host and optional port; no path, no trailing slash)"),
            ));
        }
        origins.push(lower);
    }
    if raw.max_age_secs > 86_400 {
        return Err(field("max_age_secs", "must be from 0 to 86400"));
    }
    Ok(CorsConfig {
        allowed_origins: origins,
        allow_credentials: raw.allow_credentials,
        max_age_secs: raw.max_age_secs,
    })
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct FilterConfig {
    pub cp_cluster: String,
    pub cp_authority: String,
    pub cp_token: String,
    /// What the identity header travels with (derived from `cp_token`).
    pub identity_auth: String,
    pub cp_timeout: Duration,
    pub route_prefix: String,
    /// Answered by the filter with the gateway's health; `None`: no such path.
    pub health_path: Option<String>,
    pub max_body_bytes: usize,
    /// See `max_response_bytes` in the raw configuration.
    pub max_response_bytes: u64,
    pub snapshot_interval: Duration,
    pub settle_interval: Duration,
    pub settle_batch: usize,
    /// How long a plain response waits for its settlement's acknowledgement before it leaves
    /// anyway (the settlement is then retried from the queue); zero: it does not wait, its
    /// settlement goes with the next batch (the shipped Envoy configs set 1 s).
    pub settle_wait: Duration,
    pub settle_queue_max: usize,
    /// `None`: JWTs are refused.
    pub jwt: Option<JwtConfig>,
    /// How long a `uc_` key or session the control plane accepted is remembered.
    pub credential_cache_ttl: Duration,
    /// How long a credential the control plane refused (401) is answered 401 locally;
    /// zero disables the negative cache.
    pub negative_cache_ttl: Duration,
    /// Bound of each per-worker cache (credentials, verified JWTs).
    pub cache_max_entries: usize,
    /// The admin API's prefix (e.g. `/admin/v1`): authenticated here, never metered.
    pub admin_prefix: Option<String>,
    /// `None`: no cross-origin access.
    pub cors: Option<CorsConfig>,
}

impl FilterConfig {
    pub fn parse(bytes: &[u8]) -> Result<FilterConfig, String> {
        // Every error names the field it is about (serde_json's own type errors do not).
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
        if !(65_536..=1024 * 1024 * 1024).contains(&raw.max_response_bytes) {
            return Err(field(
                "max_response_bytes",
                "must be from 65536 to 1073741824",
            ));
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
        if raw.settle_wait_ms != 0 && !(50..=30_000).contains(&raw.settle_wait_ms) {
            return Err(field(
                "settle_wait_ms",
                "must be 0 (off) or from 50 to 30000",
            ));
        }
        if raw.settle_queue_max < raw.settle_batch {
            return Err(field("settle_queue_max", "must be at least settle_batch"));
        }
        if !(1_000..=3_600_000).contains(&raw.credential_cache_ttl_ms) {
            return Err(field(
                "credential_cache_ttl_ms",
                "must be from 1000 to 3600000",
            ));
        }
        if raw.negative_cache_ttl_ms > 600_000 {
            return Err(field(
                "negative_cache_ttl_ms",
                "must be from 0 (off) to 600000",
            ));
        }
        if !(1..=1_000_000).contains(&raw.credential_cache_max_entries) {
            return Err(field(
                "credential_cache_max_entries",
                "must be from 1 to 1000000",
            ));
        }
        if let Some(health) = &raw.health_path {
            let under = |prefix: &str| {
                health
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
            };
            if !health.starts_with('/') || health.contains('?') || under(&raw.route_prefix) {
                return Err(field(
                    "health_path",
                    "must be a path starting with '/', outside route_prefix, without a query",
                ));
            }
        }
        if let Some(admin) = &raw.admin_prefix {
            if !admin.starts_with('/') || admin.ends_with('/') || admin.len() < 2 {
                return Err(field(
                    "admin_prefix",
                    "must start with '/' and not end with '/'",
                ));
            }
            let nested = |outer: &str, inner: &str| {
                inner == outer
                    || inner
                        .strip_prefix(outer)
                        .is_some_and(|rest| rest.starts_with('/'))
            };
            if nested(&raw.route_prefix, admin) || nested(admin, &raw.route_prefix) {
                return Err(field("admin_prefix", "must not overlap route_prefix"));
            }
        }
        let jwt = raw.jwt.map(jwt_config).transpose()?;
        let cors = raw.cors.map(cors_config).transpose()?;
        Ok(FilterConfig {
            cp_cluster: raw.control_plane.cluster,
            cp_authority: raw.control_plane.authority,
            identity_auth: opsgate_core::contract::identity_auth(&raw.control_plane.token),
            cp_token: raw.control_plane.token,
            cp_timeout: Duration::from_millis(raw.control_plane.timeout_ms),
            route_prefix: raw.route_prefix,
            health_path: raw.health_path,
            max_body_bytes: raw.max_body_bytes as usize,
            max_response_bytes: raw.max_response_bytes,
            snapshot_interval: Duration::from_millis(raw.snapshot_interval_ms),
            settle_interval: Duration::from_millis(raw.settle_interval_ms),
            settle_batch: raw.settle_batch,
            settle_wait: Duration::from_millis(raw.settle_wait_ms),
            settle_queue_max: raw.settle_queue_max,
            jwt,
            credential_cache_ttl: Duration::from_millis(raw.credential_cache_ttl_ms),
            negative_cache_ttl: Duration::from_millis(raw.negative_cache_ttl_ms),
            cache_max_entries: raw.credential_cache_max_entries,
            admin_prefix: raw.admin_prefix,
            cors,
        })
    }

    /// The tick drives both the settle flush and the snapshot poll.
    pub fn tick(&self) -> Duration {
        self.settle_interval.min(self.snapshot_interval)
    }
}
