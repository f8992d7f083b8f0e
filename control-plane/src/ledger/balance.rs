//! Balances: what a user can spend (the smaller of the organisation's pool and the user's
//! allocation, when they have one), and credits set aside for a hold. The pool and the
//! allocation only ever move by conditional UPDATEs (`… WHERE available >= amount`), so the
//! database refuses whatever would overdraw, whatever the concurrency.

use crate::accounts::{self, User};
use crate::db::{Db, Tx};
use crate::error::{AppError, AppResult};
use opsgate_core::money::MilliCredits;
use opsgate_core::ErrorKind;
use sqlx::Row;

/// The 402 for a call that needs `needed` milli-credits, naming whichever of the pool and the
/// user's allocation is the tighter limit.
pub(super) async fn refusal(db: &Db, user: &User, needed: i64) -> AppResult<AppError> {
    let (pool, alloc) = available(db, user).await?;
    Ok(insufficient(
        alloc.map_or(pool, |a| a.min(pool)),
        needed,
        alloc.is_none_or(|a| pool <= a),
    ))
}

pub(super) fn insufficient(available: i64, needed: i64, pool: bool) -> AppError {
    AppError::new(
        ErrorKind::InsufficientCredits,
        format!(
            "Insufficient {} credits. Available: {}, needed: {}",
            if pool { "organization" } else { "allocated" },
            MilliCredits(available.max(0)),
            MilliCredits(needed)
        ),
    )
}

/// Balances a user can spend right now: (organisation pool, own allocation if any).
pub(super) async fn available(db: &Db, user: &User) -> Result<(i64, Option<i64>), AppError> {
    let org = accounts::get_org(db, &user.org_id)
        .await?
        .ok_or_else(|| AppError::internal(format!("user {} has no organization", user.id)))?;
    let alloc = accounts::get_allocation(db, &user.org_id, &user.id).await?;
    Ok((org.available(), alloc.map(|a| a.available())))
}

/// Spendable credits: the smaller of the pool and the user's allocation.
pub async fn spendable(db: &Db, user: &User) -> Result<i64, AppError> {
    let (pool, alloc) = available(db, user).await?;
    Ok(alloc.map_or(pool, |a| a.min(pool)).max(0))
}

/// What the user of a hold can spend now (after it settled); `None` for an unknown hold.
pub async fn balance_after_hold(db: &Db, hold_id: &str) -> Result<Option<i64>, AppError> {
    let user_id: Option<String> = sqlx::query("SELECT user_id FROM holds WHERE id = $1")
        .bind(hold_id)
        .fetch_optional(&db.pool)
        .await?
        .map(|r| r.try_get("user_id"))
        .transpose()?;
    let Some(user) = (match user_id {
        Some(id) => accounts::get_user(db, &id).await?,
        None => None,
    }) else {
        return Ok(None);
    };
    spendable(db, &user).await.map(Some)
}

/// Which balance could not cover a hold.
pub(super) enum Short {
    Pool,
    Allocation,
}

/// Sets `hold` aside in the organisation's pool, then in the user's allocation if they have
/// one. `Ok(Ok(has_allocation))`, or `Ok(Err(short))` when a balance cannot cover it (the
/// caller rolls back).
pub(super) async fn hold_credits(
    tx: &mut Tx,
    user: &User,
    hold: i64,
) -> Result<Result<bool, Short>, AppError> {
    let r = sqlx::query("UPDATE organizations SET credits_held = credits_held + $1 WHERE id = $2 AND credits_total - credits_used - credits_held >= $1")
        .bind(hold)
        .bind(&user.org_id)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 0 {
        return Ok(Err(Short::Pool));
    }
    let r = sqlx::query("UPDATE allocations SET held = held + $1 WHERE org_id = $2 AND user_id = $3 AND allocated - used - held >= $1")
        .bind(hold)
        .bind(&user.org_id)
        .bind(&user.id)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() != 0 {
        return Ok(Ok(true));
    }
    let exists = sqlx::query("SELECT user_id FROM allocations WHERE org_id = $1 AND user_id = $2")
        .bind(&user.org_id)
        .bind(&user.id)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
    Ok(if exists {
        Err(Short::Allocation)
    } else {
        Ok(false)
    })
}

/// The 402 for a hold a balance could not cover, read after the rollback.
pub(super) async fn short_of(db: &Db, user: &User, hold: i64, short: Short) -> AppResult<AppError> {
    let (pool, alloc) = available(db, user).await?;
    Ok(match short {
        Short::Pool => insufficient(pool, hold, true),
        Short::Allocation => insufficient(alloc.unwrap_or(0), hold, false),
    })
}

/// Spendable credits after a hold, read inside its transaction.
pub(super) async fn spendable_in(
    tx: &mut Tx,
    user: &User,
    has_allocation: bool,
) -> Result<i64, AppError> {
    let org_avail: i64 = sqlx::query(
        "SELECT credits_total - credits_used - credits_held AS a FROM organizations WHERE id = $1",
    )
    .bind(&user.org_id)
    .fetch_one(&mut **tx)
    .await?
    .try_get("a")?;
    let alloc_avail: Option<i64> = if has_allocation {
        Some(
            sqlx::query("SELECT allocated - used - held AS a FROM allocations WHERE org_id = $1 AND user_id = $2")
                .bind(&user.org_id)
                .bind(&user.id)
                .fetch_one(&mut **tx)
                .await?
                .try_get("a")?,
        )
    } else {
        None
    };
    Ok(alloc_avail.map_or(org_avail, |a| a.min(org_avail)))
}

/// Moves a closed hold's `amount` out of the held balances and `charged` into the used ones.
pub(super) async fn settle_credits(
    tx: &mut Tx,
    org_id: &str,
    user_id: &str,
    has_allocation: bool,
    amount: i64,
    charged: i64,
) -> Result<(), AppError> {
    sqlx::query("UPDATE organizations SET credits_held = credits_held - $1, credits_used = credits_used + $2 WHERE id = $3")
        .bind(amount)
        .bind(charged)
        .bind(org_id)
        .execute(&mut **tx)
        .await?;
    if has_allocation {
        sqlx::query("UPDATE allocations SET held = held - $1, used = used + $2 WHERE org_id = $3 AND user_id = $4")
            .bind(amount)
            .bind(charged)
            .bind(org_id)
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
