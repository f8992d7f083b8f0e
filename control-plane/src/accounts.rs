//! Organisations, users, keys, grants and allocations — everything the admin API and CLI
//! change. Every change writes the ledger (for money) and the audit log (for who did it).

use crate::db::Db;
use crate::error::AppError;
use crate::store::{audit, ledger_entry, EntryKind};
use opsgate_core::contract::Principal;
use opsgate_core::plan::Plan;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub org_id: String,
    #[schema(value_type = String, example = "professional")]
    pub plan: Plan,
    /// `user` or `service`.
    pub kind: String,
    /// `member` or `admin`.
    pub role: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Milli-credits as the credits a person reads (three decimals at most).
fn credits(mc: i64) -> f64 {
    opsgate_core::MilliCredits(mc).to_credits_f64()
}

/// Serialized (CLI and admin API) in credits, as people read and type them; the exact
/// integer milli-credits only under fields whose name says so (`*_mc`).
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// An organisation as the admin API and the CLI show it: credits, and the exact
/// milli-credits under `*_mc`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Organization)]
pub struct OrganizationView<'a> {
    id: &'a str,
    name: &'a str,
    /// The organisation's tier.
    #[schema(value_type = String, example = "enterprise")]
    plan: Plan,
    credits_total: f64,
    credits_used: f64,
    credits_held: f64,
    credits_available: f64,
    credits_total_mc: i64,
    credits_used_mc: i64,
    credits_held_mc: i64,
    /// Unix seconds.
    created_at: i64,
}

impl Serialize for Organization {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        OrganizationView {
            id: &self.id,
            name: &self.name,
            plan: self.plan,
            credits_total: credits(self.credits_total),
            credits_used: credits(self.credits_used),
            credits_held: credits(self.credits_held),
            credits_available: credits(self.available()),
            credits_total_mc: self.credits_total,
            credits_used_mc: self.credits_used,
            credits_held_mc: self.credits_held,
            created_at: self.created_at,
        }
        .serialize(s)
    }
}

/// Serialized in credits, with `*_mc` for the exact milli-credits (see [`Organization`]).
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A user's allocation: a cap on what they may spend of the organisation's pool.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Allocation)]
pub struct AllocationView<'a> {
    org_id: &'a str,
    user_id: &'a str,
    allocated: f64,
    used: f64,
    held: f64,
    available: f64,
    allocated_mc: i64,
    used_mc: i64,
    held_mc: i64,
}

impl Serialize for Allocation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        AllocationView {
            org_id: &self.org_id,
            user_id: &self.user_id,
            allocated: credits(self.allocated),
            used: credits(self.used),
            held: credits(self.held),
            available: credits(self.available()),
            allocated_mc: self.allocated,
            used_mc: self.used,
            held_mc: self.held,
        }
        .serialize(s)
    }
}

fn parse_plan(s: &str) -> Result<Plan, AppError> {
    Plan::parse(s).ok_or_else(|| AppError::internal(format!("unknown plan '{s}' in the database")))
}

pub(crate) fn user_of(row: &AnyRow) -> Result<User, AppError> {
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
    let Some(org) = get_org(db, org_id).await? else {
        return Err(AppError::not_found(format!(
            "organization '{org_id}' not found"
        )));
    };
    check_fits(plan, &org)?;
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

/// Who a principal is, for the filter's hot path (credential lookups; authorize reads the
/// caller with its keys in [`crate::byok::caller_with_keys`]): one query on a reader
/// connection (`Db::reader`). A revoked key or session, or a deleted user, is `None` at once.
/// A user API key's last use is recorded to the minute, off the caller's path.
pub async fn by_principal(
    db: &Db,
    principal: &Principal,
    now: i64,
) -> Result<Option<User>, AppError> {
    let (sql, key) = principal_select(principal);
    let mut q = sqlx::query(&sql).bind(key);
    if matches!(principal, Principal::Session { .. }) {
        q = q.bind(now);
    }
    let Some(row) = db.reader().await.fetch_optional(q).await? else {
        return Ok(None);
    };
    used(db, principal, &row, now)?;
    user_of(&row).map(Some)
}

/// The `SELECT` of the user a principal names (columns `id, org_id, plan, kind, role,
/// created_at, last_used_at`; `$1` the key, and for a session `$2` the time), and its key.
/// Only a live credential matches: a revoked key or session, an expired session or a deleted
/// user matches nothing.
pub(crate) fn principal_select(principal: &Principal) -> (String, &str) {
    const U: &str = "u.id AS id, u.org_id AS org_id, u.plan AS plan, u.kind AS kind, u.role AS role, u.created_at AS created_at";
    match principal {
        Principal::Service { user_id } | Principal::Jwt { subject: user_id, .. } => (
            format!("SELECT {U}, NULL AS last_used_at FROM users u WHERE u.id = $1"),
            user_id,
        ),
        Principal::ApiKey { digest } => (
            format!(
                "SELECT {U}, k.last_used_at AS last_used_at FROM api_keys k JOIN users u ON u.id = k.user_id \
                 WHERE k.digest = $1 AND k.revoked_at IS NULL"
            ),
            digest,
        ),
        Principal::Session { digest } => (
            format!(
                "SELECT {U}, NULL AS last_used_at FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.digest = $1 AND s.revoked_at IS NULL AND s.expires_at > $2"
            ),
            digest,
        ),
    }
}

/// Notes a user API key's use (its row from [`principal_select`]): recorded when the last
/// record is a minute old or more, in the background.
pub(crate) fn used(db: &Db, principal: &Principal, row: &AnyRow, now: i64) -> Result<(), AppError> {
    if let Principal::ApiKey { digest } = principal {
        let last: Option<i64> = row.try_get("last_used_at")?;
        if last.is_none_or(|t| now - t >= KEY_USE_EVERY_SECS) {
            record_key_use(db.clone(), digest.clone(), now);
        }
    }
    Ok(())
}

/// How often a user API key's last use is recorded, at most.
pub(crate) const KEY_USE_EVERY_SECS: i64 = 60;

/// Records a user API key's last use, in the background: on SQLite with the ledger writer's
/// next batch (on its connection, so kept callers stay valid: `callers.rs`).
pub(crate) fn record_key_use(db: Db, digest: String, now: i64) {
    if db.backend == crate::db::Backend::Sqlite {
        crate::ledger::note_key_use(&db, &digest, now);
        return;
    }
    tokio::spawn(async move {
        let done = sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE digest = $2")
            .bind(now)
            .bind(&digest)
            .execute(&db.pool)
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "could not record an API key's last use");
        }
    });
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
    row.as_ref().map(allocation_of).transpose()
}

fn allocation_of(r: &AnyRow) -> Result<Allocation, AppError> {
    Ok(Allocation {
        org_id: r.try_get("org_id")?,
        user_id: r.try_get("user_id")?,
        allocated: r.try_get("allocated")?,
        used: r.try_get("used")?,
        held: r.try_get("held")?,
    })
}

/// The allocations (caps inside the pool) of an organisation's users, by user id.
pub async fn list_allocations(db: &Db, org_id: &str) -> Result<Vec<Allocation>, AppError> {
    let rows = sqlx::query(
        "SELECT org_id, user_id, allocated, used, held FROM allocations WHERE org_id = $1 ORDER BY user_id",
    )
    .bind(org_id)
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(allocation_of).collect()
}

/// Sets a user's allocation inside their organisation to `allocated_mc` (it may not go below
/// what the user has already used and has on hold).
/// When an organisation's allocations (caps inside its pool) add up to more than the pool:
/// what to tell the person who set them. Allowed — caps need not be exclusive — but worth
/// knowing: the pool, not each cap, is what is spent.
pub async fn overcommitment(db: &Db, org_id: &str) -> Result<Option<String>, AppError> {
    let row = sqlx::query(
        "SELECT CAST(COALESCE(SUM(a.allocated), 0) AS BIGINT) AS caps, o.credits_total AS pool \
         FROM organizations o LEFT JOIN allocations a ON a.org_id = o.id WHERE o.id = $1 GROUP BY o.credits_total",
    )
    .bind(org_id)
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let (caps, pool): (i64, i64) = (row.try_get("caps")?, row.try_get("pool")?);
    Ok((caps > pool).then(|| {
        format!(
            "the allocations in organisation '{org_id}' add up to {} credits, more than its pool of {}: they are caps inside the pool, and users may find the pool empty before their cap",
            opsgate_core::MilliCredits(caps).to_credits_string(),
            opsgate_core::MilliCredits(pool).to_credits_string()
        )
    }))
}

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

/// An organisation's plan is the highest its users may have ([`Plan::fits_within`]).
fn check_fits(plan: Plan, org: &Organization) -> Result<(), AppError> {
    if plan.fits_within(org.plan) {
        return Ok(());
    }
    Err(AppError::conflict(format!(
        "plan '{}' is above organization '{}''s plan '{}': an organization's plan is the highest its users may have. Raise the organization's plan first (`opsgate org plan {} {}`, or PUT /admin/v1/orgs/{}/plan).",
        plan.as_str(),
        org.id,
        org.plan.as_str(),
        org.id,
        plan.as_str(),
        org.id
    )))
}

/// Moves a user to another plan (limits and model access follow at once), within the
/// organisation's plan.
pub async fn set_user_plan(
    db: &Db,
    actor: &str,
    user_id: &str,
    plan: Plan,
    now: i64,
) -> Result<User, AppError> {
    let user = get_user(db, user_id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("user '{user_id}' not found")))?;
    let org = get_org(db, &user.org_id)
        .await?
        .ok_or_else(|| AppError::internal("a user's organization vanished"))?;
    check_fits(plan, &org)?;
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

/// Changes an organisation's plan: its tier, the highest plan its users may have. Lowering
/// it below a user's plan is refused, naming the users to move first.
pub async fn set_org_plan(
    db: &Db,
    actor: &str,
    org_id: &str,
    plan: Plan,
    now: i64,
) -> Result<Organization, AppError> {
    let above: Vec<String> = list_users(db, Some(org_id))
        .await?
        .into_iter()
        .filter(|u| !u.plan.fits_within(plan))
        .map(|u| format!("{} ({})", u.id, u.plan.as_str()))
        .collect();
    if !above.is_empty() {
        let shown: Vec<&str> = above.iter().take(10).map(String::as_str).collect();
        return Err(AppError::conflict(format!(
            "{} user(s) of organization '{org_id}' have a plan above '{}': {}{}. Move them to '{}' or below first (`opsgate user plan USER PLAN`).",
            above.len(),
            plan.as_str(),
            shown.join(", "),
            if above.len() > shown.len() { ", …" } else { "" },
            plan.as_str()
        )));
    }
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
