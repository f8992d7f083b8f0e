//! Envoy stats, defined through the proxy-wasm metrics ABI. Envoy shows them with its
//! `wasmcustom.` prefix, e.g. `wasmcustom.opsgate.decisions.allowed`. Each worker VM
//! defines the same names, so Envoy aggregates them into one stat.

use crate::host::{self, MetricKind};

/// Counters. `decisions.*` count what became of each request under the API prefix:
/// forwarded after authorize, passed on to the control plane (non-metered), or answered
/// locally with the status in its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed,
    Passed,
    Denied400,
    Denied401,
    Denied402,
    Denied403,
    Denied404,
    Denied405,
    Denied413,
    Denied429,
    Error500,
    Error502,
    Unavailable503,
    Timeout504,
    OtherStatus,
    /// `uc_` key / session digests found in the positive cache.
    CredentialCacheHit,
    /// `uc_` key / session digests not cached: the control plane decides.
    CredentialCacheMiss,
    /// Answered 401 from the negative cache, without a callout.
    CredentialCacheNegativeHit,
    /// JWTs accepted: verified by Envoy's `jwt_authn`, claims checked here.
    JwtVerified,
    /// JWTs refused (not verified by `jwt_authn`, claims, `alg`, `crit`...).
    JwtVerifyFailed,
    /// Metered calls refused (503) because this worker's settlements were behind.
    SettleBackpressure,
    /// Responses held for their settlement that left without its acknowledgement (the
    /// control plane did not answer within `settle_wait_ms`); the settlement is retried.
    SettleUnacknowledged,
    /// CORS preflights answered 204 (allowed origin).
    CorsPreflight,
    /// CORS preflights refused (origin not allowed, or CORS not configured).
    CorsRefused,
    /// Cookie-authenticated requests refused by the CSRF rule.
    CookieOriginRefused,
    /// Non-metered calls passed on with the edge-verified identity (JWT).
    IdentityForwarded,
}

impl Counter {
    pub const ALL: [Counter; 26] = [
        Counter::Allowed,
        Counter::Passed,
        Counter::Denied400,
        Counter::Denied401,
        Counter::Denied402,
        Counter::Denied403,
        Counter::Denied404,
        Counter::Denied405,
        Counter::Denied413,
        Counter::Denied429,
        Counter::Error500,
        Counter::Error502,
        Counter::Unavailable503,
        Counter::Timeout504,
        Counter::OtherStatus,
        Counter::CredentialCacheHit,
        Counter::CredentialCacheMiss,
        Counter::CredentialCacheNegativeHit,
        Counter::JwtVerified,
        Counter::JwtVerifyFailed,
        Counter::SettleBackpressure,
        Counter::SettleUnacknowledged,
        Counter::CorsPreflight,
        Counter::CorsRefused,
        Counter::CookieOriginRefused,
        Counter::IdentityForwarded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::Allowed => "opsgate.decisions.allowed",
            Counter::Passed => "opsgate.decisions.passed",
            Counter::Denied400 => "opsgate.decisions.denied_400",
            Counter::Denied401 => "opsgate.decisions.denied_401",
            Counter::Denied402 => "opsgate.decisions.denied_402",
            Counter::Denied403 => "opsgate.decisions.denied_403",
            Counter::Denied404 => "opsgate.decisions.denied_404",
            Counter::Denied405 => "opsgate.decisions.denied_405",
            Counter::Denied413 => "opsgate.decisions.denied_413",
            Counter::Denied429 => "opsgate.decisions.denied_429",
            Counter::Error500 => "opsgate.decisions.error_500",
            Counter::Error502 => "opsgate.decisions.error_502",
            Counter::Unavailable503 => "opsgate.decisions.unavailable_503",
            Counter::Timeout504 => "opsgate.decisions.timeout_504",
            Counter::OtherStatus => "opsgate.decisions.other",
            Counter::CredentialCacheHit => "opsgate.credential_cache.hits",
            Counter::CredentialCacheMiss => "opsgate.credential_cache.misses",
            Counter::CredentialCacheNegativeHit => "opsgate.credential_cache.negative_hits",
            Counter::JwtVerified => "opsgate.jwt.verified",
            Counter::JwtVerifyFailed => "opsgate.jwt.verify_failures",
            Counter::SettleBackpressure => "opsgate.settle.backpressure",
            Counter::SettleUnacknowledged => "opsgate.settle.unacknowledged",
            Counter::CorsPreflight => "opsgate.cors.preflights",
            Counter::CorsRefused => "opsgate.cors.preflights_refused",
            Counter::CookieOriginRefused => "opsgate.cors.cookie_origin_refused",
            Counter::IdentityForwarded => "opsgate.identity.forwarded",
        }
    }

    /// The decision counter of a local reply with `status`.
    pub fn for_status(status: u16) -> Counter {
        match status {
            400 => Counter::Denied400,
            401 => Counter::Denied401,
            402 => Counter::Denied402,
            403 => Counter::Denied403,
            404 => Counter::Denied404,
            405 => Counter::Denied405,
            413 => Counter::Denied413,
            429 => Counter::Denied429,
            500 => Counter::Error500,
            502 => Counter::Error502,
            503 => Counter::Unavailable503,
            504 => Counter::Timeout504,
            _ => Counter::OtherStatus,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Histogram {
    /// Time from sending authorize to its answer (or failure), milliseconds.
    AuthorizeLatencyMs,
}

impl Histogram {
    pub const ALL: [Histogram; 1] = [Histogram::AuthorizeLatencyMs];

    pub fn name(self) -> &'static str {
        match self {
            Histogram::AuthorizeLatencyMs => "opsgate.authorize.latency_ms",
        }
    }
}

/// The ids the host gave this VM's metrics; a metric the host refused is skipped.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Vec<Option<u32>>,
    histograms: Vec<Option<u32>>,
}

impl Metrics {
    /// Defines every metric (from the root context, at configuration).
    pub fn define() -> Self {
        Metrics {
            counters: Counter::ALL
                .iter()
                .map(|c| host::define_metric(MetricKind::Counter, c.name()).ok())
                .collect(),
            histograms: Histogram::ALL
                .iter()
                .map(|h| host::define_metric(MetricKind::Histogram, h.name()).ok())
                .collect(),
        }
    }

    pub fn inc(&self, c: Counter) {
        if let Some(Some(id)) = self.counters.get(c as usize) {
            host::increment_metric(*id, 1).ok();
        }
    }

    pub fn record(&self, h: Histogram, value: u64) {
        if let Some(Some(id)) = self.histograms.get(h as usize) {
            host::record_metric(*id, value).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_index_by_declaration_order_and_names_are_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
        }
        for (i, h) in Histogram::ALL.iter().enumerate() {
            assert_eq!(*h as usize, i, "{h:?}");
        }
        let mut names: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.extend(Histogram::ALL.iter().map(|h| h.name()));
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(names.iter().all(|n| n.starts_with("opsgate.")));
    }
}
