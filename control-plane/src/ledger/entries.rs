//! The ledger's lines read back: balances recompute from them alone (the audit of the
//! running balances in `organizations`).

use crate::db::Db;
use crate::error::AppError;
use crate::store::EntryKind;
use sqlx::Row;

/// Balances recomputed from the ledger alone, per organisation: (total, used, held).
pub async fn recompute_org(db: &Db, org_id: &str) -> Result<(i64, i64, i64), AppError> {
    let sum = |kind: EntryKind| {
        let db = db.clone();
        let org_id = org_id.to_string();
        async move {
            let r = sqlx::query("SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS s FROM ledger WHERE org_id = $1 AND kind = $2")
                .bind(org_id)
                .bind(kind.as_str())
                .fetch_one(&db.pool)
                .await?;
            Ok::<i64, AppError>(r.try_get("s")?)
        }
    };
    let grant = sum(EntryKind::Grant).await?;
    let hold = sum(EntryKind::Hold).await?;
    let charge = sum(EntryKind::Charge).await?;
    let release = sum(EntryKind::Release).await?;
    Ok((grant, charge, hold - charge - release))
}
