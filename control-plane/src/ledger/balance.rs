//! Balances: what a user can spend (the smaller of the organisation's pool and the user's
//! allocation, when they have one), and the 402 that names the tighter one. Holds move the
//! balances only through the ledger writer's conditional deltas (`writer.rs`).

use crate::accounts::{self, User};
use crate::db::Db;
use crate::error::AppError;
use opsgate_core::money::MilliCredits;
use opsgate_core::ErrorKind;

/// The 402 for a call that needs `needed` milli-credits when `available` is what the tighter
/// of the pool (`pool`) and the user's allocation leaves.
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
