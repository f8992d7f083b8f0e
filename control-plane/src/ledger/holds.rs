//! Holds: credits and quota set aside for a call in flight, then closed exactly once —
//! settled (charged what the call cost, the rest released), released (the call failed),
//! expired (no outcome arrived: charged as held) — or a tombstone (`cancelled`) for a call
//! the filter abandoned before its decision arrived. Closing is a conditional UPDATE on
//! `status = 'held'`, so a duplicate settlement or a racing expiry closes nothing twice.

use super::balance;
use super::quota::{self, QuotaWindow, WindowKind};
use crate::db::{Db, Tx};
use crate::error::AppError;
use crate::store::{ledger_entry, random_hex, EntryKind};
use opsgate_core::contract::{AuthorizeRequest, Outcome, Settlement};
use opsgate_core::metering;
use opsgate_core::money::MilliCredits;
use opsgate_core::pricing::RateCard;
use sqlx::any::AnyRow;
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
    /// Closed by the sweeper past its expiry: charged as held.
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

/// Whether any hold (or tombstone) already has this id: a request the filter already
/// abandoned, or a replayed id, places nothing.
pub(super) async fn seen(tx: &mut Tx, hold_id: &str) -> Result<bool, AppError> {
    Ok(sqlx::query("SELECT status FROM holds WHERE id = $1")
        .bind(hold_id)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
}

/// What a new hold records.
pub(super) struct NewHold<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub user_id: &'a str,
    pub amount: i64,
    pub model: &'a str,
    pub provider: &'a str,
    pub rate: &'a RateCard,
    pub byok: bool,
    pub has_allocation: bool,
    pub windows: &'a [QuotaWindow],
    pub now: i64,
    pub expires_at: i64,
}

/// Records an open hold and its ledger line (the balances were already moved).
pub(super) async fn insert(tx: &mut Tx, h: &NewHold<'_>) -> Result<(), AppError> {
    let rate_json = serde_json::to_string(h.rate).map_err(AppError::internal)?;
    let window_start = |kind: WindowKind| {
        h.windows
            .iter()
            .find(|w| w.kind == kind)
            .map(|w| w.window.start)
    };
    sqlx::query(
        "INSERT INTO holds (id, org_id, user_id, amount, status, model, provider, rate, byok, has_allocation, day_start, period_start, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(h.id)
    .bind(h.org_id)
    .bind(h.user_id)
    .bind(h.amount)
    .bind(HoldStatus::Held.as_str())
    .bind(h.model)
    .bind(h.provider)
    .bind(rate_json)
    .bind(i64::from(h.byok))
    .bind(i64::from(h.has_allocation))
    .bind(window_start(WindowKind::Day))
    .bind(window_start(WindowKind::Period))
    .bind(h.now)
    .bind(h.expires_at)
    .execute(&mut **tx)
    .await?;
    ledger_entry(
        tx,
        h.org_id,
        Some(h.user_id),
        EntryKind::Hold,
        h.amount,
        Some(h.id),
        h.now,
    )
    .await
}

/// Settles one hold. Idempotent: settling a hold that is no longer open changes nothing and
/// returns what it was charged.
pub async fn settle(db: &Db, s: &Settlement, now: i64) -> Result<i64, AppError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query(
        "SELECT org_id, user_id, amount, charged, status, model, provider, rate, byok, has_allocation, day_start, period_start FROM holds WHERE id = $1",
    )
    .bind(&s.hold_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        if s.outcome == Outcome::Failed {
            return tombstone(db, tx, s, now).await;
        }
        return Err(AppError::not_found(format!("no hold '{}'", s.hold_id)));
    };
    let status: String = row.try_get("status")?;
    if HoldStatus::parse(&status) != Some(HoldStatus::Held) {
        return Ok(row.try_get::<Option<i64>, _>("charged")?.unwrap_or(0));
    }
    let byok = row.try_get::<i64, _>("byok")? != 0;
    let charged = charge_for(s, &row, byok)?;
    let new_status = match s.outcome {
        Outcome::Failed => HoldStatus::Released,
        _ => HoldStatus::Settled,
    };
    let closed = close_hold(
        &mut tx,
        &s.hold_id,
        &row,
        charged,
        new_status,
        s.outcome != Outcome::Failed,
        now,
    )
    .await?;
    // The SELECT above does not lock the hold on PostgreSQL: a duplicate settlement (the
    // filter retrying) or the expiry sweeper may have closed it since. Then this settlement
    // changed nothing: it answers what the hold was charged and writes no usage log (each
    // hold has at most one, and only for what was actually charged).
    if !closed {
        let charged: Option<i64> = sqlx::query("SELECT charged FROM holds WHERE id = $1")
            .bind(&s.hold_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("charged")?;
        tx.rollback().await?;
        return Ok(charged.unwrap_or(0));
    }
    log_usage(&mut tx, s, &row, charged, byok, now).await?;
    tx.commit().await?;
    Ok(charged)
}

/// A `Failed` settlement for a hold that does not exist: the filter gave up on a call before
/// its decision arrived. A tombstone under the id makes an authorize still on its way place
/// nothing.
async fn tombstone(db: &Db, mut tx: Tx, s: &Settlement, now: i64) -> Result<i64, AppError> {
    let placed = sqlx::query(
        "INSERT INTO holds (id, org_id, user_id, amount, charged, status, model, provider, rate, created_at, expires_at, settled_at) \
         VALUES ($1, '', '', 0, 0, $2, '', '', '', $3, $3, $3) ON CONFLICT DO NOTHING",
    )
    .bind(&s.hold_id)
    .bind(HoldStatus::Cancelled.as_str())
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    if placed == 0 {
        // An authorize committed this hold meanwhile (PostgreSQL: our insert waited for
        // it): settle the real hold now instead of leaving it open until it expires.
        return Box::pin(settle(db, s, now)).await;
    }
    Ok(0)
}

/// What a settlement charges (core::metering::charge, capped by the hold); a provider
/// report past the hold is logged.
fn charge_for(s: &Settlement, row: &AnyRow, byok: bool) -> Result<i64, AppError> {
    let amount: i64 = row.try_get("amount")?;
    let rate: RateCard =
        serde_json::from_str(&row.try_get::<String, _>("rate")?).map_err(AppError::internal)?;
    let charged = match s.outcome {
        Outcome::Failed => 0,
        Outcome::Success | Outcome::Partial => {
            metering::charge(&rate, &s.usage, MilliCredits(amount), byok).0
        }
    };
    if s.outcome != Outcome::Failed
        && metering::exceeds_hold(&rate, &s.usage, MilliCredits(amount), byok)
    {
        eprintln!(
            "opsgate: usage discrepancy on {}: provider reported {} mc, hold covered {} mc; charged the hold",
            s.hold_id,
            rate.cost(&s.usage),
            amount
        );
    }
    Ok(charged)
}

/// The usage log line of a settled call.
async fn log_usage(
    tx: &mut Tx,
    s: &Settlement,
    row: &AnyRow,
    charged: i64,
    byok: bool,
    now: i64,
) -> Result<(), AppError> {
    sqlx::query(
        "INSERT INTO usage_logs (hold_id, org_id, user_id, model, provider, prompt_tokens, completion_tokens, images, cost, outcome, upstream_status, latency_ms, byok, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&s.hold_id)
    .bind(row.try_get::<String, _>("org_id")?)
    .bind(row.try_get::<String, _>("user_id")?)
    .bind(row.try_get::<String, _>("model")?)
    .bind(row.try_get::<String, _>("provider")?)
    .bind(s.usage.prompt_tokens as i64)
    .bind(s.usage.completion_tokens as i64)
    .bind(s.usage.images as i64)
    .bind(charged)
    .bind(UsageOutcome::from(s.outcome).as_str())
    .bind(i64::from(s.upstream_status))
    .bind(s.latency_ms as i64)
    .bind(i64::from(byok))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves an open hold to its final state: charges `charged`, releases the rest, and turns
/// the reserved quota slots into used ones (`consume`) or frees them. Returns false (and
/// changes nothing) when the hold was no longer open.
async fn close_hold(
    tx: &mut Tx,
    hold_id: &str,
    row: &AnyRow,
    charged: i64,
    status: HoldStatus,
    consume: bool,
    now: i64,
) -> Result<bool, AppError> {
    let r = sqlx::query(
        "UPDATE holds SET status = $1, charged = $2, settled_at = $3 WHERE id = $4 AND status = $5",
    )
    .bind(status.as_str())
    .bind(charged)
    .bind(now)
    .bind(hold_id)
    .bind(HoldStatus::Held.as_str())
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    let org_id: String = row.try_get("org_id")?;
    let user_id: String = row.try_get("user_id")?;
    let amount: i64 = row.try_get("amount")?;
    let has_allocation = row.try_get::<i64, _>("has_allocation")? != 0;
    // Rows are locked in the order `authorize` takes them — quota rows (period, then day),
    // then the organization, then the allocation — so an authorize and a settle of the same
    // user on PostgreSQL never wait on each other in a cycle (no deadlock).
    quota::release(tx, &user_id, row, consume).await?;
    balance::settle_credits(tx, &org_id, &user_id, has_allocation, amount, charged).await?;
    for (kind, amount) in [
        (EntryKind::Charge, charged),
        (EntryKind::Release, amount - charged),
    ] {
        ledger_entry(
            tx,
            &org_id,
            Some(&user_id),
            kind,
            amount,
            Some(hold_id),
            now,
        )
        .await?;
    }
    Ok(true)
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
    let mut n = 0;
    for id in ids {
        let mut tx = db.begin().await?;
        let row = sqlx::query("SELECT org_id, user_id, amount, has_allocation, day_start, period_start FROM holds WHERE id = $1 AND status = $2")
            .bind(&id)
            .bind(HoldStatus::Held.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = row {
            let amount: i64 = row.try_get("amount")?;
            if close_hold(&mut tx, &id, &row, amount, HoldStatus::Expired, true, now).await? {
                // Charged without a reported outcome: logged so /usage and the analytics
                // show where the credits went.
                sqlx::query(
                    "INSERT INTO usage_logs (hold_id, org_id, user_id, model, provider, prompt_tokens, completion_tokens, images, cost, outcome, upstream_status, latency_ms, byok, created_at) \
                     SELECT id, org_id, user_id, model, provider, 0, 0, 0, amount, $3, 0, 0, byok, $2 FROM holds WHERE id = $1",
                )
                .bind(&id)
                .bind(now)
                .bind(UsageOutcome::Expired.as_str())
                .execute(&mut *tx)
                .await?;
                n += 1;
            }
        }
        tx.commit().await?;
    }
    Ok(n)
}
