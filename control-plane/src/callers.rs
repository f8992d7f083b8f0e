//! SQLite: who a credential belongs to and the keys that may route its calls, kept between
//! calls, so an authorize usually skips its read (a trip to a reader connection's thread).
//!
//! A revoked key still stops at once. Every caller read (kept or not) is tagged with the
//! ledger writer's epoch when its read began (`ledger::Queue::epoch`): the epoch changes
//! whenever the writer finds that another connection committed to the database file (a
//! revocation, a plan change, a new key: every change to who a caller is goes through
//! another connection). An authorize carries that tag into its ledger batch, and the batch
//! places the hold only if the database has not moved since (the batch's own guard on
//! `data_version`); otherwise it answers "read the caller again" and the handler does, then
//! decides afresh — twice at most; a third try is decided as before this cache, on a caller
//! read for it. A refusal decided on a kept caller before its batch (no route, a plan's
//! models) is also decided again on a caller read afresh.
//!
//! Sessions are not kept (their expiry is part of the read); nor is anything on PostgreSQL,
//! where other replicas write without this process seeing it. Unknown credentials are never
//! kept (they would let a caller fill the memory).

use crate::accounts::{self, User};
use crate::byok::{self, CallKeys};
use crate::db::{Backend, Db};
use crate::error::AppError;
use opsgate_core::contract::Principal;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::Mutex;

/// The most callers kept; past it the cache starts over.
const MAX_ENTRIES: usize = 10_000;

/// A caller as an authorize needs it.
pub struct Caller {
    pub user: User,
    pub keys: CallKeys,
    /// SQLite: the writer's epoch when the caller was read; the ledger places a hold on it
    /// only if the database has not moved since. `None` for sessions and on PostgreSQL.
    pub epoch: Option<u64>,
    /// Taken from the cache (not read for this call).
    pub cached: bool,
}

#[derive(Default)]
pub struct Callers {
    entries: Mutex<HashMap<(u8, String), Entry>>,
    /// Authorizes that took their caller from the cache, and those whose batch found the
    /// database moved since (the caller read again).
    pub kept: Counter,
    pub stale: Counter,
}

struct Entry {
    epoch: u64,
    user: User,
    keys: CallKeys,
    /// When this process last noted the key's use (user API keys; see `accounts::used`).
    noted: i64,
}

/// The cache's key for a principal, when it may be kept.
fn key(p: &Principal) -> Option<(u8, String)> {
    match p {
        Principal::Service { user_id } => Some((0, user_id.clone())),
        Principal::ApiKey { digest } => Some((1, digest.clone())),
        Principal::Jwt { subject, .. } => Some((2, subject.clone())),
        Principal::Session { .. } => None,
    }
}

/// The caller behind `principal` and the keys that may route its call: from the cache when
/// an entry of the current epoch is there, else read (and kept).
pub async fn lookup(db: &Db, principal: &Principal, now: i64) -> Result<Option<Caller>, AppError> {
    if let Some(k) = keepable(db, principal) {
        if let Some(hit) = cached(db, principal, &k, db.ledger_queue.epoch(), now) {
            return Ok(Some(hit));
        }
    }
    reread(db, principal, now).await
}

/// The caller read from the database (and kept, tagged with the epoch from before the read:
/// a change the writer notices meanwhile makes it stale at once).
pub async fn reread(db: &Db, principal: &Principal, now: i64) -> Result<Option<Caller>, AppError> {
    let k = keepable(db, principal);
    let epoch = k.as_ref().map(|_| db.ledger_queue.epoch());
    let Some((user, keys)) = byok::caller_with_keys(db, principal, now).await? else {
        return Ok(None);
    };
    if let (Some(k), Some(epoch), Ok(mut entries)) = (k, epoch, db.callers.entries.lock()) {
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            k,
            Entry {
                epoch,
                user: user.clone(),
                keys: keys.clone(),
                noted: now,
            },
        );
    }
    Ok(Some(Caller {
        user,
        keys,
        epoch,
        cached: false,
    }))
}

/// The cache's key for `principal`, when it may be kept (SQLite only).
fn keepable(db: &Db, principal: &Principal) -> Option<(u8, String)> {
    key(principal).filter(|_| db.backend == Backend::Sqlite)
}

/// An entry of `epoch`, noting a user API key's use as a read would.
fn cached(
    db: &Db,
    principal: &Principal,
    k: &(u8, String),
    epoch: u64,
    now: i64,
) -> Option<Caller> {
    let mut entries = db.callers.entries.lock().ok()?;
    let e = entries.get_mut(k).filter(|e| e.epoch == epoch)?;
    db.callers.kept.inc();
    if let Principal::ApiKey { digest } = principal {
        if now - e.noted >= accounts::KEY_USE_EVERY_SECS {
            e.noted = now;
            accounts::record_key_use(db.clone(), digest.clone(), now);
        }
    }
    Some(Caller {
        user: e.user.clone(),
        keys: e.keys.clone(),
        epoch: Some(epoch),
        cached: true,
    })
}
