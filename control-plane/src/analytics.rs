//! Read-only questions over usage logs and the audit log.

use crate::db::Db;
use crate::error::AppError;
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Serialize)]
pub struct ProviderUsage {
    pub provider: String,
    pub requests: i64,
    pub tokens: i64,
    pub cost_mc: i64,
}

/// A user's successful and partial calls in `[start, end)`, per provider.
pub async fn usage_by_provider(
    db: &Db,
    user_id: &str,
    start: i64,
    end: i64,
) -> Result<Vec<ProviderUsage>, AppError> {
    let rows = sqlx::query(
        "SELECT provider, CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS t, \
         CAST(COALESCE(SUM(cost), 0) AS BIGINT) AS c FROM usage_logs \
         WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 AND outcome <> 'failed' GROUP BY provider ORDER BY provider",
    )
    .bind(user_id)
    .bind(start)
    .bind(end)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ProviderUsage {
                provider: r.try_get("provider")?,
                requests: r.try_get("n")?,
                tokens: r.try_get("t")?,
                cost_mc: r.try_get("c")?,
            })
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
    pub at: i64,
}

pub async fn audit_log(db: &Db, limit: i64) -> Result<Vec<AuditEntry>, AppError> {
    let rows = sqlx::query(
        "SELECT actor, action, target, detail, at FROM audit_log ORDER BY seq DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                detail: r.try_get("detail")?,
                at: r.try_get("at")?,
            })
        })
        .collect()
}
