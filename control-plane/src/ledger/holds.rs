//! Holds: credits and quota set aside for a call in flight, then closed once — settled
//! (charged what the call cost, the rest released), released (the call failed), expired (no
//! outcome arrived: charged as held, and corrected once if the outcome arrives later) — or a
//! tombstone (`cancelled`) for a call the filter abandoned before its decision arrived.
//! Closing is a conditional UPDATE on the status it expects, so a duplicate settlement or a
//! racing expiry changes nothing twice.

use super::book::{Answer, Job};
use super::writer;
use crate::db::Db;
use crate::error::AppError;
use crate::store::random_hex;
use opsgate_core::contract::{AuthorizeRequest, Outcome, Settlement};
use sqlx::Row;

/// The state of a hold, as stored in `holds.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldStatus {
    /// Open: its credits and quota slots are set aside.
    Held,
    /// Closed with a reported outcome: charged what the call cost.
    Settled,
    /// Closed because the call failed: nothing charged.
    Released,
    /// Closed by the sweeper past its expiry: charged as held, until a late settlement
    /// replaces the charge with the call's real cost.
    Expired,
    /// A tombstone: the filter gave up before the decision arrived; nothing was placed.
    Cancelled,
}

impl HoldStatus {
    pub const ALL: [HoldStatus; 5] = [
        HoldStatus::Held,
        HoldStatus::Settled,
        HoldStatus::Released,
        HoldStatus::Expired,
        HoldStatus::Cancelled,
    ];

    /// The stored form; the only place it is spelled.
    pub fn as_str(self) -> &'static str {
        match self {
            HoldStatus::Held => "held",
            HoldStatus::Settled => "settled",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
            HoldStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<HoldStatus> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How a call ended, as stored in `usage_logs.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageOutcome {
    Success,
    Failed,
    Partial,
    /// No outcome arrived before the hold expired.
    Expired,
}

impl UsageOutcome {
    /// The stored form; the only place it is spelled.
    pub const fn as_str(self) -> &'static str {
        match self {
            UsageOutcome::Success => "success",
            UsageOutcome::Failed => "failed",
            UsageOutcome::Partial => "partial",
            UsageOutcome::Expired => "expired",
        }
    }
}

impl From<Outcome> for UsageOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Success => UsageOutcome::Success,
            Outcome::Failed => UsageOutcome::Failed,
            Outcome::Partial => UsageOutcome::Partial,
        }
    }
}

/// The hold id for a request: the filter's request id when it is well-formed, else a new
/// random one.
pub(super) fn hold_id(req: &AuthorizeRequest) -> Result<String, AppError> {
    match &req.request_id {
        Some(id)
            if (8..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            Ok(id.clone())
        }
        Some(_) => Err(AppError::bad_request(
            "request_id must be 8-64 characters of [A-Za-z0-9_-]",
        )),
        None => Ok(format!("hold_{}", random_hex(12))),
    }
}

/// Settles one hold. Idempotent: settling a hold that is no longer open changes nothing and
/// returns what it was charged.
pub async fn settle(db: &Db, s: &Settlement, now: i64) -> Result<i64, AppError> {
    settle_many(db, std::slice::from_ref(s), now)
        .await
        .pop()
        .unwrap_or_else(|| Err(AppError::internal("no settlement answer")))
        .map(|s| s.charged)
}

/// What one settlement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// What the hold was charged.
    pub charged: i64,
    /// What its user can spend once the batch is applied.
    pub balance: Option<i64>,
    /// (provider, model) when this settlement charged the call just now.
    pub metered: Option<(String, String)>,
}

/// Settles several holds together (one writer batch when nothing else is queued).
pub async fn settle_many(
    db: &Db,
    settlements: &[Settlement],
    now: i64,
) -> Vec<Result<Settled, AppError>> {
    let jobs = settlements
        .iter()
        .map(|s| Job::Settle {
            settlement: s.clone(),
            now,
        })
        .collect();
    writer::submit_many(db, jobs)
        .await
        .into_iter()
        .map(|answer| match answer? {
            Answer::Settled {
                charged,
                balance,
                metered,
                ..
            } => Ok(Settled {
                charged,
                balance,
                metered,
            }),
            Answer::Refused(e) => Err(e),
            other => Err(AppError::internal(format!(
                "a settlement answered {other:?}"
            ))),
        })
        .collect()
}

/// How many holds are placed and not yet settled.
pub async fn open_holds(db: &Db) -> Result<i64, AppError> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM holds WHERE status = $1")
        .bind(HoldStatus::Held.as_str())
        .fetch_one(&db.pool)
        .await?;
    Ok(row.try_get::<i64, _>("n")?)
}

/// Charges every hold past its expiry as held (the call's outcome never arrived).
pub async fn expire_holds(db: &Db, now: i64) -> Result<u64, AppError> {
    let ids: Vec<String> =
        sqlx::query("SELECT id FROM holds WHERE status = $1 AND expires_at <= $2")
            .bind(HoldStatus::Held.as_str())
            .bind(now)
            .fetch_all(&db.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
    let jobs = ids
        .into_iter()
        .map(|hold_id| Job::Expire { hold_id, now })
        .collect();
    let mut n = 0;
    for answer in writer::submit_many(db, jobs).await {
        if let Answer::Expired(true) = answer? {
            n += 1;
        }
    }
    Ok(n)
}
