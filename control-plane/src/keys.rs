//! Credentials issued to callers: user API keys (`uc_…`, shown once) and service keys
//! bound to service users. Only digests are stored; every change is audited.

use crate::accounts::{get_user, User};
use crate::db::Db;
use crate::error::AppError;
use crate::store::{audit, random_hex};
use opsgate_core::credentials::{digest, is_service_key};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ApiKeyInfo {
    pub id: String,
    pub user_id: String,
    pub prefix: String,
    pub name: Option<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Issues a user API key. The key is returned once; only its digest is stored.
pub async fn issue_api_key(
    db: &Db,
    actor: &str,
    user_id: &str,
    name: Option<&str>,
    now: i64,
) -> Result<(String, ApiKeyInfo), AppError> {
    if get_user(db, user_id).await?.is_none() {
        return Err(AppError::not_found(format!("user '{user_id}' not found")));
    }
    let key = format!("uc_{}", random_hex(32));
    let id = format!("key_{}", random_hex(8));
    let prefix = key[..11].to_string();
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO api_keys (id, digest, user_id, prefix, name, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&id)
        .bind(digest(&key))
        .bind(user_id)
        .bind(&prefix)
        .bind(name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        actor,
        "api_key.issue",
        user_id,
        &format!("key_id={id}"),
        now,
    )
    .await?;
    tx.commit().await?;
    let info = ApiKeyInfo {
        id,
        user_id: user_id.to_string(),
        prefix,
        name: name.map(str::to_string),
        created_at: now,
        last_used_at: None,
        revoked_at: None,
    };
    Ok((key, info))
}

pub async fn list_api_keys(db: &Db, user_id: Option<&str>) -> Result<Vec<ApiKeyInfo>, AppError> {
    let q = "SELECT id, user_id, prefix, name, created_at, last_used_at, revoked_at FROM api_keys";
    let rows = match user_id {
        Some(u) => {
            sqlx::query(&format!("{q} WHERE user_id = $1 ORDER BY created_at, id"))
                .bind(u)
                .fetch_all(&db.pool)
                .await?
        }
        None => {
            sqlx::query(&format!("{q} ORDER BY created_at, id"))
                .fetch_all(&db.pool)
                .await?
        }
    };
    rows.iter()
        .map(|r| {
            Ok(ApiKeyInfo {
                id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                prefix: r.try_get("prefix")?,
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
                last_used_at: r.try_get("last_used_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        })
        .collect()
}

pub async fn revoke_api_key(db: &Db, actor: &str, key_id: &str, now: i64) -> Result<(), AppError> {
    let mut tx = db.begin().await?;
    let r = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(key_id)
        .execute(&mut *tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(AppError::not_found(format!("no active API key '{key_id}'")));
    }
    audit(&mut tx, actor, "api_key.revoke", key_id, "", now).await?;
    tx.commit().await?;
    Ok(())
}

/// Binds a service key to a service user. Only the digest is stored.
/// How a service key was bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceKeyBound {
    /// Its random part is short (see `credentials::guessable_service_key`): the caller
    /// should warn, and tell how to mint a strong one.
    pub guessable: bool,
}

/// What to say about a guessable service key.
pub const GUESSABLE_SERVICE_KEY: &str = "this service key is guessable (its random part is short): anyone who guesses it calls on its organisation's credits. Mint a strong one with `opsgate service-key mint <service>` and revoke this one";

pub async fn add_service_key(
    db: &Db,
    actor: &str,
    key: &str,
    user_id: &str,
    now: i64,
) -> Result<ServiceKeyBound, AppError> {
    bind_service_key(db, actor, key, user_id, now, false).await
}

/// Binds a service key to a service user; `allow_revoked` re-activates a key that was
/// revoked (only ever on that explicit request).
pub async fn bind_service_key(
    db: &Db,
    actor: &str,
    key: &str,
    user_id: &str,
    now: i64,
    allow_revoked: bool,
) -> Result<ServiceKeyBound, AppError> {
    if !is_service_key(key) {
        return Err(AppError::bad_request(
            "a service key must look like sk-<service>-service-key-<year>",
        ));
    }
    let guessable = opsgate_core::credentials::guessable_service_key(key);
    let user = get_user(db, user_id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("user '{user_id}' not found")))?;
    // The service part is most of a service key's secret: only a short hint is kept
    // (`sk-lo…25`). Service keys are ASCII (checked above).
    let name = format!("{}…{}", &key[..5], &key[key.len() - 2..]);
    let mut tx = db.begin().await?;
    let inserted = sqlx::query("INSERT INTO service_keys (digest, name, user_id, created_at, guessable) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
        .bind(digest(key))
        .bind(&name)
        .bind(&user.id)
        .bind(now)
        .bind(i64::from(guessable))
        .execute(&mut *tx)
        .await?
        .rows_affected();
    // Nothing inserted: the key is already registered. Re-adding it to the same user while
    // active is idempotent; bound to another user it is refused, and so is a revoked key
    // unless `allow_revoked` — a success and an audit line are written only for a binding
    // that holds.
    let mut action = "service_key.add";
    if inserted == 0 {
        let row = sqlx::query("SELECT user_id, revoked_at FROM service_keys WHERE digest = $1")
            .bind(digest(key))
            .fetch_one(&mut *tx)
            .await?;
        let same_user = row.try_get::<String, _>("user_id")? == user.id;
        let revoked = row.try_get::<Option<i64>, _>("revoked_at")?.is_some();
        if revoked && allow_revoked {
            sqlx::query("UPDATE service_keys SET revoked_at = NULL, user_id = $1, guessable = $2 WHERE digest = $3")
                .bind(&user.id)
                .bind(i64::from(guessable))
                .bind(digest(key))
                .execute(&mut *tx)
                .await?;
            action = "service_key.readd";
        } else if !same_user || revoked {
            return Err(AppError::conflict(if revoked {
                "this service key was revoked; it is added again only on an explicit request (--allow-revoked, or \"allow_revoked\": true); a new key is better"
            } else {
                "this service key is already bound to another user"
            }));
        }
    }
    audit(
        &mut tx,
        actor,
        action,
        &user.id,
        &format!("name={name}{}", if guessable { " guessable" } else { "" }),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(ServiceKeyBound { guessable })
}

/// Active service keys bound while guessable.
pub async fn guessable_service_keys(db: &Db) -> Result<i64, AppError> {
    let row = sqlx::query(
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM service_keys WHERE revoked_at IS NULL AND guessable <> 0",
    )
    .fetch_one(&db.pool)
    .await?;
    Ok(row.try_get("n")?)
}

/// A strong service key for `service`: `sk-<service>-<32 random hex>-service-key-<year>`.
pub fn mint_service_key(service: &str, year: i64) -> Result<String, AppError> {
    if service.is_empty()
        || !service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(AppError::bad_request(
            "the service name must be letters, digits, '-' or '_'",
        ));
    }
    Ok(format!(
        "sk-{service}-{}-service-key-{year}",
        crate::store::random_hex(16)
    ))
}

pub async fn revoke_service_key(db: &Db, actor: &str, key: &str, now: i64) -> Result<(), AppError> {
    let mut tx = db.begin().await?;
    let r = sqlx::query(
        "UPDATE service_keys SET revoked_at = $1 WHERE digest = $2 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(digest(key))
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
        return Err(AppError::not_found("no active service key matches"));
    }
    audit(&mut tx, actor, "service_key.revoke", "", "", now).await?;
    tx.commit().await?;
    Ok(())
}

/// Active service keys as (digest, user id), for the filter's snapshot.
pub async fn service_key_digests(db: &Db) -> Result<Vec<(String, String)>, AppError> {
    let rows = sqlx::query(
        "SELECT digest, user_id FROM service_keys WHERE revoked_at IS NULL ORDER BY digest",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("digest")?, r.try_get("user_id")?)))
        .collect()
}

pub async fn user_by_service_key_digest(
    db: &Db,
    key_digest: &str,
) -> Result<Option<User>, AppError> {
    let row =
        sqlx::query("SELECT user_id FROM service_keys WHERE digest = $1 AND revoked_at IS NULL")
            .bind(key_digest)
            .fetch_optional(&db.pool)
            .await?;
    match row {
        Some(r) => get_user(db, &r.try_get::<String, _>("user_id")?).await,
        None => Ok(None),
    }
}

/// A service key as listed: its name and owner, never its digest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ServiceKeyInfo {
    pub name: String,
    pub user_id: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

pub async fn list_service_keys(db: &Db) -> Result<Vec<ServiceKeyInfo>, AppError> {
    let rows = sqlx::query(
        "SELECT name, user_id, created_at, revoked_at FROM service_keys ORDER BY created_at, name",
    )
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ServiceKeyInfo {
                name: r.try_get("name")?,
                user_id: r.try_get("user_id")?,
                created_at: r.try_get("created_at")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        })
        .collect()
}
