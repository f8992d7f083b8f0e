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
    sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE digest = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(credentials::digest(token))
        .execute(&db.pool)
        .await?;
    Ok(())
}
