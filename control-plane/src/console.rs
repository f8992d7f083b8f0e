//! Admin console sessions (`/console/`): signing in with the admin token (or an admin JWT
//! verified at the edge) opens a session whose token goes to the browser only as an HttpOnly
//! cookie; only its digest is stored. Every console action is an ordinary admin API call
//! that carries the cookie, and the audit log records its actor as `console:<who signed in>`.

use crate::db::Db;
use crate::error::AppError;
use crate::store::{audit, random_hex};
use opsgate_core::credentials;
use sqlx::Row;

/// The console's cookie (distinct from users' `session_token`).
pub use opsgate_core::credentials::CONSOLE_COOKIE;
/// The header every console write carries: a cross-site form cannot send it, and a
/// cross-origin script cannot without a CORS preflight the control plane never grants. Not
/// under `x-opsgate-`: the filter strips those from every client request.
pub const CONSOLE_HEADER: &str = "x-console-request";

/// Opens a console session for `actor` (`admin-token` or `jwt:<sub>`) that lasts `ttl`
/// seconds; `credential` is the digest of the admin token used ("" for a JWT). Audited.
/// Returns the session's token, for the cookie only.
pub async fn open(
    db: &Db,
    actor: &str,
    credential: &str,
    now: i64,
    ttl: i64,
) -> Result<String, AppError> {
    let token = format!("cs_{}", random_hex(32));
    // Expired sessions are purged by the sweeper (`sessions::purge_expired`).
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO console_sessions (digest, actor, credential, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(credentials::digest(&token))
    .bind(actor)
    .bind(credential)
    .bind(now)
    .bind(now + ttl)
    .execute(&mut *tx)
    .await?;
    audit(
        &mut tx,
        &console_actor(actor),
        "console.sign_in",
        actor,
        &format!("expires_at={}", now + ttl),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(token)
}

/// The audit log's actor for a console session opened by `actor`.
pub fn console_actor(actor: &str) -> String {
    format!("console:{actor}")
}

/// An active console session: who signed in, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    pub actor: String,
    pub credential: String,
    pub expires_at: i64,
}

/// The active session with this token: not revoked, not expired at `now`.
pub async fn active(db: &Db, token: &str, now: i64) -> Result<Option<ConsoleSession>, AppError> {
    let row = sqlx::query(
        "SELECT actor, credential, expires_at FROM console_sessions WHERE digest = $1 AND revoked_at IS NULL AND expires_at > $2",
    )
    .bind(credentials::digest(token))
    .bind(now)
    .fetch_optional(&db.pool)
    .await?;
    row.map(|r| {
        Ok(ConsoleSession {
            actor: r.try_get("actor")?,
            credential: r.try_get("credential")?,
            expires_at: r.try_get("expires_at")?,
        })
    })
    .transpose()
}

/// Signs out: revokes the session with this token, if it is active (audited).
pub async fn revoke(db: &Db, token: &str, now: i64) -> Result<bool, AppError> {
    let Some(s) = active(db, token, now).await? else {
        return Ok(false);
    };
    let mut tx = db.begin().await?;
    let done = sqlx::query(
        "UPDATE console_sessions SET revoked_at = $1 WHERE digest = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(credentials::digest(token))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if done > 0 {
        audit(
            &mut tx,
            &console_actor(&s.actor),
            "console.sign_out",
            &s.actor,
            "",
            now,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(done > 0)
}
