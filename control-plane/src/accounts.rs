//! Organisations, users, keys, grants and allocations — everything the admin API and CLI
//! change. Every change writes the ledger (for money) and the audit log (for who did it).

use crate::db::Db;
use crate::error::AppError;
use crate::store::{audit, ledger_entry, random_hex, EntryKind};
use opsgate_core::credentials::{digest, is_service_key};
use opsgate_core::plan::Plan;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub org_id: String,
    pub plan: Plan,
    pub kind: String,
    pub role: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub plan: Plan,
    pub credits_total: i64,
    pub credits_used: i64,
    pub credits_held: i64,
    pub created_at: i64,
}

impl Organization {
    pub fn available(&self) -> i64 {
        self.credits_total - self.credits_used - self.credits_held
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Allocation {
    pub org_id: String,
    pub user_id: String,
    pub allocated: i64,
    pub used: i64,
    pub held: i64,
}

impl Allocation {
    pub fn available(&self) -> i64 {
        self.allocated - self.used - self.held
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiKeyInfo {
    pub id: String,
    pub user_id: String,
    pub prefix: String,
    pub name: Option<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

fn parse_plan(s: &str) -> Result<Plan, AppError> {
    Plan::parse(s).ok_or_else(|| AppError::internal(format!("unknown plan '{s}' in the database")))
}

fn user_of(row: &AnyRow) -> Result<User, AppError> {
    Ok(User {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        plan: parse_plan(&row.try_get::<String, _>("plan")?)?,
        kind: row.try_get("kind")?,
        role: row.try_get("role")?,
        created_at: row.try_get("created_at")?,
    })
}

fn org_of(row: &AnyRow) -> Result<Organization, AppError> {
    Ok(Organization {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        plan: parse_plan(&row.try_get::<String, _>("plan")?)?,
        credits_total: row.try_get("credits_total")?,
        credits_used: row.try_get("credits_used")?,
        credits_held: row.try_get("credits_held")?,
        created_at: row.try_get("created_at")?,
    })
}

const USER_COLS: &str = "id, org_id, plan, kind, role, created_at";
const ORG_COLS: &str = "id, name, plan, credits_total, credits_used, credits_held, created_at";

fn check_id(field: &str, id: &str) -> Result<(), AppError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err(AppError::bad_request(format!(
            "'{field}' must be 1-128 characters of letters, digits, '-', '_', '.', '@'"
        )));
    }
    Ok(())
}

pub async fn create_org(
    db: &Db,
    actor: &str,
    id: &str,
    name: &str,
    plan: Plan,
    now: i64,
) -> Result<Organization, AppError> {
    check_id("id", id)?;
    let mut tx = db.begin().await?;
    let exists = sqlx::query("SELECT id FROM organizations WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_some() {
        return Err(AppError::conflict(format!(
            "organization '{id}' already exists"
        )));
    }
    sqlx::query("INSERT INTO organizations (id, name, plan, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(name)
        .bind(plan.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        actor,
        "org.create",
        id,
        &format!("name={name} plan={}", plan.as_str()),
        now,
    )
    .await?;
    tx.commit().await?;
    get_org(db, id)
        .await?
        .ok_or_else(|| AppError::internal("organization vanished"))
}

pub async fn get_org(db: &Db, id: &str) -> Result<Option<Organization>, AppError> {
    let row = sqlx::query(&format!(
        "SELECT {ORG_COLS} FROM organizations WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(org_of).transpose()
}

pub async fn list_orgs(db: &Db) -> Result<Vec<Organization>, AppError> {
    let rows = sqlx::query(&format!("SELECT {ORG_COLS} FROM organizations ORDER BY id"))
        .fetch_all(&db.pool)
        .await?;
    rows.iter().map(org_of).collect()
}

/// Adds (or, negative, removes) credits to an organisation's pool.
pub async fn grant(
    db: &Db,
    actor: &str,
    org_id: &str,
    amount_mc: i64,
    now: i64,
) -> Result<Organization, AppError> {
    if amount_mc == 0 {
        return Err(AppError::bad_request("'amount' must not be zero"));
    }
    let mut tx = db.begin().await?;
    let r = sqlx::query(
        "UPDATE organizations SET credits_total = credits_total + $1 WHERE id = $2 AND credits_total + $1 >= credits_used + credits_held",
    )
    .bind(amount_mc)
    .bind(org_id)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
        return Err(match get_org(db, org_id).await? {
            None => AppError::not_found(format!("organization '{org_id}' not found")),
            Some(_) => AppError::bad_request(
                "cannot remove more credits than the organization has available",
            ),
        });
    }
    ledger_entry(
        &mut tx,
        org_id,
        None,
        EntryKind::Grant,
        amount_mc,
        None,
        now,
    )
    .await?;
    audit(
        &mut tx,
        actor,
        "org.grant",
        org_id,
        &format!("amount_mc={amount_mc}"),
        now,
    )
    .await?;
    tx.commit().await?;
    get_org(db, org_id)
        .await?
        .ok_or_else(|| AppError::internal("organization vanished"))
}

/// A user to create: `kind` is `user` or `service`, `role` is `member` or `admin`.
pub struct NewUser<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub plan: Plan,
    pub kind: &'a str,
    pub role: &'a str,
}

pub async fn create_user(
    db: &Db,
    actor: &str,
    new: &NewUser<'_>,
    now: i64,
) -> Result<User, AppError> {
    let NewUser {
        id,
        org_id,
        plan,
        kind,
        role,
    } = *new;
    check_id("id", id)?;
    if !matches!(kind, "user" | "service") {
        return Err(AppError::bad_request("'kind' must be user or service"));
    }
    if !matches!(role, "member" | "admin") {
        return Err(AppError::bad_request("'role' must be member or admin"));
    }
    if get_org(db, org_id).await?.is_none() {
        return Err(AppError::not_found(format!(
            "organization '{org_id}' not found"
        )));
    }
    let mut tx = db.begin().await?;
    if sqlx::query("SELECT id FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .is_some()
    {
        return Err(AppError::conflict(format!("user '{id}' already exists")));
    }
    sqlx::query("INSERT INTO users (id, org_id, plan, kind, role, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(id)
        .bind(org_id)
        .bind(plan.as_str())
        .bind(kind)
        .bind(role)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        actor,
        "user.create",
        id,
        &format!(
            "org={org_id} plan={} kind={kind} role={role}",
            plan.as_str()
        ),
        now,
    )
    .await?;
    tx.commit().await?;
    get_user(db, id)
        .await?
        .ok_or_else(|| AppError::internal("user vanished"))
}

pub async fn get_user(db: &Db, id: &str) -> Result<Option<User>, AppError> {
    let row = sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(user_of).transpose()
}

pub async fn list_users(db: &Db, org_id: Option<&str>) -> Result<Vec<User>, AppError> {
    let rows = match org_id {
        Some(o) => {
            sqlx::query(&format!(
                "SELECT {USER_COLS} FROM users WHERE org_id = $1 ORDER BY id"
            ))
            .bind(o)
            .fetch_all(&db.pool)
            .await?
        }
        None => {
            sqlx::query(&format!("SELECT {USER_COLS} FROM users ORDER BY id"))
                .fetch_all(&db.pool)
                .await?
        }
    };
    rows.iter().map(user_of).collect()
}

pub async fn get_allocation(
    db: &Db,
    org_id: &str,
    user_id: &str,
) -> Result<Option<Allocation>, AppError> {
    let row = sqlx::query("SELECT org_id, user_id, allocated, used, held FROM allocations WHERE org_id = $1 AND user_id = $2")
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(&db.pool)
        .await?;
    row.map(|r| {
        Ok(Allocation {
            org_id: r.try_get("org_id")?,
            user_id: r.try_get("user_id")?,
            allocated: r.try_get("allocated")?,
            used: r.try_get("used")?,
            held: r.try_get("held")?,
        })
    })
    .transpose()
}

/// Sets a user's allocation inside their organisation to `allocated_mc` (it may not go below
/// what the user has already used and has on hold).
pub async fn set_allocation(
    db: &Db,
    actor: &str,
    user_id: &str,
    allocated_mc: i64,
    now: i64,
) -> Result<Allocation, AppError> {
    if allocated_mc < 0 {
        return Err(AppError::bad_request("'credits' must not be negative"));
    }
    let user = get_user(db, user_id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("user '{user_id}' not found")))?;
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO allocations (org_id, user_id, allocated) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING")
        .bind(&user.org_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let prev: i64 =
        sqlx::query("SELECT allocated FROM allocations WHERE org_id = $1 AND user_id = $2")
            .bind(&user.org_id)
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("allocated")?;
    let r = sqlx::query("UPDATE allocations SET allocated = $1 WHERE org_id = $2 AND user_id = $3 AND used + held <= $1")
        .bind(allocated_mc)
        .bind(&user.org_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(AppError::bad_request(
            "the allocation cannot go below what the user has used and holds",
        ));
    }
    let delta = allocated_mc - prev;
    ledger_entry(
        &mut tx,
        &user.org_id,
        Some(user_id),
        EntryKind::Allocate,
        delta,
        None,
        now,
    )
    .await?;
    audit(
        &mut tx,
        actor,
        "allocation.set",
        user_id,
        &format!("allocated_mc={allocated_mc}"),
        now,
    )
    .await?;
    tx.commit().await?;
    get_allocation(db, &user.org_id, user_id)
        .await?
        .ok_or_else(|| AppError::internal("allocation vanished"))
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

/// The user an active API key belongs to; records its use.
pub async fn user_by_api_key_digest(
    db: &Db,
    key_digest: &str,
    now: i64,
) -> Result<Option<User>, AppError> {
    let row = sqlx::query("SELECT user_id FROM api_keys WHERE digest = $1 AND revoked_at IS NULL")
        .bind(key_digest)
        .fetch_optional(&db.pool)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let user_id: String = row.try_get("user_id")?;
    sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE digest = $2")
        .bind(now)
        .bind(key_digest)
        .execute(&db.pool)
        .await?;
    get_user(db, &user_id).await
}

/// Binds a service key to a service user. Only the digest is stored.
pub async fn add_service_key(
    db: &Db,
    actor: &str,
    key: &str,
    user_id: &str,
    now: i64,
) -> Result<(), AppError> {
    if !is_service_key(key) {
        return Err(AppError::bad_request(
            "a service key must look like sk-<service>-service-key-<year>",
        ));
    }
    let user = get_user(db, user_id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("user '{user_id}' not found")))?;
    // The service part is most of a service key's secret: only a short hint is kept
    // (`sk-lo…25`). Service keys are ASCII (checked above).
    let name = format!("{}…{}", &key[..5], &key[key.len() - 2..]);
    let mut tx = db.begin().await?;
    let inserted = sqlx::query("INSERT INTO service_keys (digest, name, user_id, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(digest(key))
        .bind(&name)
        .bind(&user.id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    // Fix: the key was already registered. Re-adding it to the same user while active is
    // idempotent; otherwise (bound to another user, or revoked) the INSERT silently did
    // nothing, yet the caller got a success and the audit log a binding that never happened.
    if inserted == 0 {
        let row = sqlx::query("SELECT user_id, revoked_at FROM service_keys WHERE digest = $1")
            .bind(digest(key))
            .fetch_one(&mut *tx)
            .await?;
        let same_user = row.try_get::<String, _>("user_id")? == user.id;
        let revoked = row.try_get::<Option<i64>, _>("revoked_at")?.is_some();
        if !same_user || revoked {
            return Err(AppError::conflict(if revoked {
                "this service key was revoked; it cannot be added again (use a new key)"
            } else {
                "this service key is already bound to another user"
            }));
        }
    }
    audit(
        &mut tx,
        actor,
        "service_key.add",
        &user.id,
        &format!("name={name}"),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
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

/// Moves a user to another plan (limits and model access follow at once).
pub async fn set_user_plan(
    db: &Db,
    actor: &str,
    user_id: &str,
    plan: Plan,
    now: i64,
) -> Result<User, AppError> {
    let mut tx = db.begin().await?;
    let r = sqlx::query("UPDATE users SET plan = $1 WHERE id = $2")
        .bind(plan.as_str())
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(AppError::not_found(format!("user '{user_id}' not found")));
    }
    audit(
        &mut tx,
        actor,
        "user.plan",
        user_id,
        &format!("plan={}", plan.as_str()),
        now,
    )
    .await?;
    tx.commit().await?;
    get_user(db, user_id)
        .await?
        .ok_or_else(|| AppError::internal("user vanished"))
}

/// Changes an organisation's plan (its tier as shown; users keep their own plans).
pub async fn set_org_plan(
    db: &Db,
    actor: &str,
    org_id: &str,
    plan: Plan,
    now: i64,
) -> Result<Organization, AppError> {
    let mut tx = db.begin().await?;
    let r = sqlx::query("UPDATE organizations SET plan = $1 WHERE id = $2")
        .bind(plan.as_str())
        .bind(org_id)
        .execute(&mut *tx)
        .await?;
    if r.rows_affected() == 0 {
        return Err(AppError::not_found(format!(
            "organization '{org_id}' not found"
        )));
    }
    audit(
        &mut tx,
        actor,
        "org.plan",
        org_id,
        &format!("plan={}", plan.as_str()),
        now,
    )
    .await?;
    tx.commit().await?;
    get_org(db, org_id)
        .await?
        .ok_or_else(|| AppError::internal("organization vanished"))
}

/// A service key as listed: its name and owner, never its digest.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
