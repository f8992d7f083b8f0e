//! The identity provider's JWKS: fetched through its Envoy cluster by the root context on
//! its tick (the first tick, then every `refresh_interval`), and by a request whose token
//! names an unknown `kid` (at most once per `unknown_kid_cooldown`). A failed or garbled
//! fetch never replaces keys that work: the last good keys stay in use.

use crate::config::JwtConfig;
use crate::host::{self, Buffer, HostError, LogLevel};
use crate::metrics::Counter;
use crate::shared::{after, callout_status, log, SharedRef};
use opsgate_core::jwt::KeySet;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// After a failed fetch, the root tries again this soon (or at the refresh interval, if
/// shorter).
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Sends `GET jwks_path` to the JWKS cluster.
pub fn dispatch(jwt: &JwtConfig) -> Result<u32, HostError> {
    host::dispatch_http_call(
        &jwt.jwks_cluster,
        vec![
            (":method", "GET"),
            (":path", jwt.jwks_path.as_str()),
            (":authority", jwt.jwks_authority.as_str()),
            ("accept", "application/json"),
        ],
        None,
        jwt.timeout,
    )
}

/// A JWKS fetch answered (or failed): its keys are applied, whoever sent it (the root's
/// periodic fetch, or a request's unknown-`kid` refetch).
pub fn answered(shared: &SharedRef, num_headers: usize, body_size: usize) {
    let status = callout_status(num_headers);
    let body = if status == 200 {
        host::buffer_or_empty(Buffer::CallResponseBody, 0, body_size)
    } else {
        Vec::new()
    };
    apply(shared, status, &body, host::now());
}

/// Is the root's periodic fetch due at `now`?
pub fn due(shared: &SharedRef, now: SystemTime) -> bool {
    shared.borrow().jwks.next_fetch.is_none_or(|t| now >= t)
}

/// May a request with an unknown `kid` trigger a refetch now? If so, the refetch is
/// recorded as made (the caller sends it).
pub fn claim_unknown_kid_refetch(shared: &SharedRef, now: SystemTime) -> bool {
    let mut s = shared.borrow_mut();
    let Some(cooldown) = s.config.jwt.as_ref().map(|j| j.unknown_kid_cooldown) else {
        return false;
    };
    let allowed = s
        .jwks
        .last_unknown_kid_refetch
        .is_none_or(|t| now.duration_since(t).is_ok_and(|d| d >= cooldown));
    if allowed {
        s.jwks.last_unknown_kid_refetch = Some(now);
        s.metrics.inc(Counter::JwksRefetchUnknownKid);
    }
    allowed
}

/// Records the outcome of a fetch (`status` 0: no response). Returns whether new keys were
/// loaded. When the key set changes, verified tokens are forgotten (a removed key must not
/// keep its tokens alive).
pub fn apply(shared: &SharedRef, status: u16, body: &[u8], now: SystemTime) -> bool {
    let mut s = shared.borrow_mut();
    let Some(jwt) = s.config.jwt.clone() else {
        return false;
    };
    let parsed = if status == 200 {
        KeySet::parse(body).map_err(|e| e.to_string())
    } else if status == 0 {
        Err("no response".to_string())
    } else {
        Err(format!("status {status}"))
    };
    match parsed {
        Ok(keys) => {
            s.metrics.inc(Counter::JwksFetchOk);
            s.jwks.failing = false;
            s.jwks.next_fetch = Some(after(now, jwt.refresh_interval));
            let changed = s.jwks.keys.as_deref() != Some(&keys);
            if changed {
                let kids: Vec<&str> = keys.keys().iter().map(|k| k.kid.as_str()).collect();
                log(
                    LogLevel::Info,
                    &format!(
                        "opsgate: JWKS loaded from {}{}: {} signature keys ({}), {} entries skipped",
                        jwt.jwks_authority,
                        jwt.jwks_path,
                        keys.len(),
                        kids.join(", "),
                        keys.skipped
                    ),
                );
                let alg = jwt.validation.algorithm;
                if !keys.has_key_for(alg) {
                    log(
                        LogLevel::Error,
                        &format!(
                            "opsgate: the JWKS has no key for {} (jwt.algorithm): every token will be refused",
                            alg.as_str()
                        ),
                    );
                }
                s.jwks.keys = Some(Rc::new(keys));
                s.tokens.clear();
            }
            changed
        }
        Err(why) => {
            s.metrics.inc(Counter::JwksFetchFailed);
            s.jwks.next_fetch = Some(after(now, jwt.refresh_interval.min(RETRY_AFTER_FAILURE)));
            if !s.jwks.failing {
                s.jwks.failing = true;
                let kept = s.jwks.keys.as_ref().map_or(0, |k| k.len());
                log(
                    LogLevel::Warn,
                    &format!(
                        "opsgate: JWKS fetch from {} failed ({why}); keeping the last good keys ({kept})",
                        jwt.jwks_cluster
                    ),
                );
            }
            false
        }
    }
}
