//! Browser sessions: a session token is returned once (for the cookie); only its digest is
//! stored. A session is active until it expires or is revoked.

use crate::db::Db;
use crate::error::AppError;
use crate::store::random_hex;
use opsgate_core::credentials;

pub const SESSION_COOKIE: &str = "session_token";

/// Opens a session for `user_id` that lasts `ttl` seconds; returns its token.
pub async fn open(db: &Db, user_id: &str, now: i64, ttl: i64) -> Result<String, AppError> {
    let token = format!("st_{}", random_hex(32));
    // In the writer's turn, as every write on SQLite (the checkpoint counts on it).
    let _turn = db.writer_turn().await;
    sqlx::query(
        "INSERT INTO sessions (digest, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(credentials::digest(&token))
    .bind(user_id)
    .bind(now)
    .bind(now + ttl)
    .execute(&db.pool)
    .await?;
    Ok(token)
}

/// Revokes the session with this token, if it is active.
pub async fn revoke(db: &Db, token: &str, now: i64) -> Result<(), AppError> {
    let _turn = db.writer_turn().await;
    sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE digest = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(credentials::digest(token))
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// How long past its expiry a session (a user's or the console's) is kept before the sweeper
/// deletes it (an expired session authenticates nothing either way).
pub const KEPT_AFTER_EXPIRY_SECS: i64 = 86_400;

/// The most sessions one purge transaction deletes: the first purge after an upgrade may
/// find every session ever opened, and on SQLite a transaction holds the writer's turn.
const PURGE_CHUNK: u64 = 1_000;

/// Deletes the users' and the console's sessions that expired more than
/// [`KEPT_AFTER_EXPIRY_SECS`] ago (the sweeper's, every 30 s); returns how many of each.
pub async fn purge_expired(db: &Db, now: i64) -> Result<(u64, u64), AppError> {
    let before = now - KEPT_AFTER_EXPIRY_SECS;
    Ok((
        purge(db, "sessions", before).await?,
        purge(db, "console_sessions", before).await?,
    ))
}

/// Deletes `table`'s sessions that expired before `before`, [`PURGE_CHUNK`] at a time, each
/// chunk its own transaction; returns how many.
async fn purge(db: &Db, table: &str, before: i64) -> Result<u64, AppError> {
    let sql = format!(
        "DELETE FROM {table} WHERE digest IN (SELECT digest FROM {table} WHERE expires_at < $1 LIMIT {PURGE_CHUNK})"
    );
    let mut purged = 0;
    loop {
        let mut tx = db.begin().await?;
        let deleted = sqlx::query(&sql)
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        purged += deleted;
        if deleted < PURGE_CHUNK {
            return Ok(purged);
        }
    }
}
