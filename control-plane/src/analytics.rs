//! Read-only questions over usage logs and the audit log.

use crate::db::Db;
use crate::error::AppError;
use opsgate_core::money::MilliCredits;
use serde::Serialize;
use sqlx::Row;

/// Failed calls cost nothing and are left out of every report.
const FAILED: &str = crate::ledger::UsageOutcome::Failed.as_str();

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
         WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 AND outcome <> $4 GROUP BY provider ORDER BY provider",
    )
    .bind(user_id)
    .bind(start)
    .bind(end)
    .bind(FAILED)
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

#[derive(Debug, Serialize, utoipa::ToSchema)]
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

/// One row of "top users by API calls" (the guide's Appendix C).
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TopUser {
    pub user_id: String,
    pub total_calls: i64,
    pub total_tokens: i64,
    pub total_credits: f64,
    pub avg_response_ms: f64,
}

/// Users by calls in `[start, end)`, most first. Failed calls are not usage.
pub async fn top_users(
    db: &Db,
    start: i64,
    end: i64,
    limit: i64,
) -> Result<Vec<TopUser>, AppError> {
    let rows = sqlx::query(
        "SELECT user_id, CAST(COUNT(*) AS BIGINT) AS n, \
         CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS t, \
         CAST(COALESCE(SUM(cost), 0) AS BIGINT) AS c, CAST(COALESCE(SUM(latency_ms), 0) AS BIGINT) AS l \
         FROM usage_logs WHERE created_at >= $1 AND created_at < $2 AND outcome <> $4 \
         GROUP BY user_id ORDER BY n DESC, user_id LIMIT $3",
    )
    .bind(start)
    .bind(end)
    .bind(limit)
    .bind(FAILED)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let n: i64 = r.try_get("n")?;
            let l: i64 = r.try_get("l")?;
            Ok(TopUser {
                user_id: r.try_get("user_id")?,
                total_calls: n,
                total_tokens: r.try_get("t")?,
                total_credits: MilliCredits(r.try_get("c")?).to_credits_f64(),
                avg_response_ms: if n > 0 { l as f64 / n as f64 } else { 0.0 },
            })
        })
        .collect()
}

/// One row of "most expensive models".
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ModelCost {
    pub model: String,
    pub calls: i64,
    pub total_credits: f64,
    pub avg_credits_per_call: f64,
}

/// Models by credits charged in `[start, end)`, most first.
pub async fn expensive_models(
    db: &Db,
    start: i64,
    end: i64,
    limit: i64,
) -> Result<Vec<ModelCost>, AppError> {
    let rows = sqlx::query(
        "SELECT model, CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(cost), 0) AS BIGINT) AS c \
         FROM usage_logs WHERE created_at >= $1 AND created_at < $2 AND outcome <> $4 \
         GROUP BY model ORDER BY c DESC, model LIMIT $3",
    )
    .bind(start)
    .bind(end)
    .bind(limit)
    .bind(FAILED)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let n: i64 = r.try_get("n")?;
            let c: i64 = r.try_get("c")?;
            Ok(ModelCost {
                model: r.try_get("model")?,
                calls: n,
                total_credits: MilliCredits(c).to_credits_f64(),
                avg_credits_per_call: if n > 0 {
                    MilliCredits(c).to_credits_f64() / n as f64
                } else {
                    0.0
                },
            })
        })
        .collect()
}

/// One row of "usage per organisation".
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct OrgUsage {
    pub org_id: String,
    pub org_name: String,
    pub active_users: i64,
    pub total_calls: i64,
    pub total_credits: f64,
}

/// Organisations by credits charged in `[start, end)`, most first.
pub async fn org_usage(db: &Db, start: i64, end: i64) -> Result<Vec<OrgUsage>, AppError> {
    let rows = sqlx::query(
        "SELECT o.id AS id, o.name AS name, CAST(COUNT(DISTINCT u.user_id) AS BIGINT) AS users, \
         CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(u.cost), 0) AS BIGINT) AS c \
         FROM usage_logs u JOIN organizations o ON o.id = u.org_id \
         WHERE u.created_at >= $1 AND u.created_at < $2 AND u.outcome <> $3 \
         GROUP BY o.id, o.name ORDER BY c DESC, o.id",
    )
    .bind(start)
    .bind(end)
    .bind(FAILED)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(OrgUsage {
                org_id: r.try_get("id")?,
                org_name: r.try_get("name")?,
                active_users: r.try_get("users")?,
                total_calls: r.try_get("n")?,
                total_credits: MilliCredits(r.try_get("c")?).to_credits_f64(),
            })
        })
        .collect()
}

/// The reports the admin API and CLI offer (the guide's Appendix C), with their default
/// look-back in days.
pub const REPORTS: [(&str, i64); 3] = [("top-users", 30), ("models", 7), ("orgs", 30)];

/// The rows of one report; serialised as the bare list of its rows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Report {
    TopUsers(Vec<TopUser>),
    Models(Vec<ModelCost>),
    Orgs(Vec<OrgUsage>),
}

/// The named report over `[start, end)`; `None` for an unknown name.
pub async fn report(
    db: &Db,
    name: &str,
    start: i64,
    end: i64,
    limit: i64,
) -> Result<Option<Report>, AppError> {
    Ok(Some(match name {
        "top-users" => Report::TopUsers(top_users(db, start, end, limit).await?),
        "models" => Report::Models(expensive_models(db, start, end, limit).await?),
        "orgs" => Report::Orgs(org_usage(db, start, end).await?),
        _ => return Ok(None),
    }))
}

/// What a daily usage series is broken down by.
pub const DAILY_BY: [&str; 4] = ["org", "user", "model", "provider"];

/// One day of one group's usage (a point of a series): calls and credits charged, by UTC day.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct DailyUsage {
    /// The day's start, unix seconds (00:00 UTC).
    pub day: i64,
    /// The organisation, user, model or provider.
    pub key: String,
    pub calls: i64,
    pub tokens: i64,
    pub credits: f64,
    pub credits_mc: i64,
}

/// The start (00:00 UTC) of the day `now` falls in.
pub fn day_start(now: i64) -> i64 {
    now - now.rem_euclid(86_400)
}

/// Calls and credits per UTC day and per `by` (org, user, model or provider) over the `days`
/// days ending with today (`now`'s day), oldest first. Failed calls are not usage. `None` for
/// an unknown `by`.
pub async fn daily_usage(
    db: &Db,
    by: &str,
    days: i64,
    now: i64,
) -> Result<Option<Vec<DailyUsage>>, AppError> {
    let column = match by {
        "org" => "org_id",
        "user" => "user_id",
        "model" => "model",
        "provider" => "provider",
        _ => return Ok(None),
    };
    let start = day_start(now) - (days - 1) * 86_400;
    // `created_at - created_at % 86400`: the day's start on both backends (integer arithmetic).
    let rows = sqlx::query(&format!(
        "SELECT CAST(created_at - created_at % 86400 AS BIGINT) AS d, {column} AS k, \
         CAST(COUNT(*) AS BIGINT) AS n, \
         CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS t, \
         CAST(COALESCE(SUM(cost), 0) AS BIGINT) AS c \
         FROM usage_logs WHERE created_at >= $1 AND created_at < $2 AND outcome <> $3 \
         GROUP BY d, k ORDER BY d, k"
    ))
    .bind(start)
    .bind(day_start(now) + 86_400)
    .bind(FAILED)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let c: i64 = r.try_get("c")?;
            Ok(DailyUsage {
                day: r.try_get("d")?,
                key: r.try_get("k")?,
                calls: r.try_get("n")?,
                tokens: r.try_get("t")?,
                credits: MilliCredits(c).to_credits_f64(),
                credits_mc: c,
            })
        })
        .collect::<Result<Vec<_>, AppError>>()
        .map(Some)
}
