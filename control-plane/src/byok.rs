//! Provider secrets: users' own provider keys (BYOK) and the platform's provider keys,
//! stored sealed (see [`crate::crypto`]), listed masked, audited, rotated.
//!
//! A user's key lives under scope `user` with the user id as owner; a platform key under
//! scope `platform` with owner `platform` (the scope keeps a user named "platform" apart).
//! One key per owner and provider: adding another replaces it.

use crate::accounts::{self, User};
use crate::catalogue::{Catalogue, OPENROUTER};
use crate::crypto::{self, Binding, Keyring, MasterKey, OpenError, Sealed, Secret};
use crate::db::Db;
use crate::error::AppError;
use opsgate_core::contract::Principal;
use opsgate_core::credentials::{is_service_key, is_user_key, mask};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

/// Whose secret a row is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    User(&'a str),
    Platform,
}

impl<'a> Owner<'a> {
    pub fn scope(&self) -> &'static str {
        match self {
            Owner::User(_) => "user",
            Owner::Platform => "platform",
        }
    }
    pub fn id(&self) -> &'a str {
        match self {
            Owner::User(u) => u,
            Owner::Platform => "platform",
        }
    }
}

/// A stored secret as listings show it: masked, never the secret.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SecretInfo {
    pub id: String,
    pub provider: String,
    pub masked_key: String,
    pub description: Option<String>,
    pub created_at: i64,
    pub rotated_at: Option<i64>,
}

/// A stored secret with what opening it needs. No `Debug`: it carries ciphertext only, but
/// nothing here needs printing.
#[derive(Clone)]
pub struct StoredSecret {
    pub info: SecretInfo,
    scope: String,
    owner: String,
    sealed: Sealed,
}

impl StoredSecret {
    fn binding(&self) -> Binding<'_> {
        Binding {
            scope: &self.scope,
            owner: &self.owner,
            provider: &self.info.provider,
            key_id: &self.info.id,
        }
    }

    /// Decrypts. A failure is logged (naming the row, never the secret) and returned.
    pub fn open(&self, keyring: &Keyring) -> Result<Secret, OpenError> {
        crypto::open(keyring, &self.binding(), &self.sealed)
            .inspect_err(|e| self.log_failure("a stored provider key cannot be used", e))
    }

    /// Logs a failure on this row: which key of whom, never the secret.
    fn log_failure(&self, what: &str, e: &dyn std::fmt::Display) {
        tracing::error!(
            provider = %self.info.provider,
            key_id = %self.info.id,
            scope = %self.scope,
            owner = %self.owner,
            error = %e,
            "{what}"
        );
    }
}

const COLS: &str = "id, scope, owner, provider, hint, description, ciphertext, wrapped_key, master_key_id, created_at, rotated_at";

fn stored_of(r: &AnyRow) -> Result<StoredSecret, AppError> {
    stored_of_columns(r, "")
}

/// A stored secret from columns named with `prefix` (`s_id`, `s_provider`, … in a join).
fn stored_of_columns(r: &AnyRow, prefix: &str) -> Result<StoredSecret, AppError> {
    let col = |c: &str| format!("{prefix}{c}");
    Ok(StoredSecret {
        info: SecretInfo {
            id: r.try_get(col("id").as_str())?,
            provider: r.try_get(col("provider").as_str())?,
            masked_key: r.try_get(col("hint").as_str())?,
            description: r.try_get(col("description").as_str())?,
            created_at: r.try_get(col("created_at").as_str())?,
            rotated_at: r.try_get(col("rotated_at").as_str())?,
        },
        scope: r.try_get(col("scope").as_str())?,
        owner: r.try_get(col("owner").as_str())?,
        sealed: Sealed {
            ciphertext: r.try_get(col("ciphertext").as_str())?,
            wrapped_key: r.try_get(col("wrapped_key").as_str())?,
            master_key_id: r.try_get(col("master_key_id").as_str())?,
        },
    })
}

/// The provider names a key may be stored for, for error messages.
fn keyed_providers(catalogue: &Catalogue) -> String {
    catalogue
        .providers
        .values()
        .filter(|p| !p.local)
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A provider name as error messages may repeat it: only when it is short and plain, so a
/// key pasted into the wrong field never comes back.
fn shown(provider: &str) -> &str {
    if provider.len() <= 32
        && provider
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        provider
    } else {
        "(not shown)"
    }
}

/// Checks the provider is one of the catalogue's keyed providers.
pub fn check_provider(catalogue: &Catalogue, provider: &str) -> Result<(), AppError> {
    match catalogue.providers.get(provider) {
        Some(p) if p.local => Err(AppError::bad_request(format!(
            "The provider '{provider}' runs locally and needs no key."
        ))),
        Some(_) => Ok(()),
        None => Err(AppError::bad_request(format!(
            "Unknown provider '{}'. Keys can be stored for: {}.",
            shown(provider),
            keyed_providers(catalogue)
        ))),
    }
}

/// Checks a key's shape for its provider. Messages name the provider and the expected
/// shape, never the key.
pub fn check_key_shape(provider: &str, key: &str) -> Result<(), AppError> {
    let bad = |why: &str| {
        AppError::bad_request(format!(
            "That does not look like an API key for {provider}: {why}."
        ))
    };
    if key.is_empty() {
        return Err(bad("'api_key' is empty"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "it contains spaces, line breaks or other non-printable characters",
        ));
    }
    if key.len() < 16 {
        return Err(bad("it is shorter than 16 characters"));
    }
    if key.len() > 512 {
        return Err(bad("it is longer than 512 characters"));
    }
    if is_user_key(key) || is_service_key(key) {
        return Err(bad(
            "this is an opsgate key; store the key your provider issued you",
        ));
    }
    let prefix = match provider {
        OPENROUTER => Some("sk-or-v1-"),
        "openai" => Some("sk-"),
        "anthropic" => Some("sk-ant-"),
        "groq" => Some("gsk_"),
        "google" => Some("AIza"),
        _ => None,
    };
    if let Some(p) = prefix {
        if !key.starts_with(p) || key.len() < p.len() + 8 {
            return Err(bad(&format!("{provider} keys start with '{p}'")));
        }
    }
    // A key of another well-known provider, under the wrong name.
    for (other, p) in [
        (OPENROUTER, "sk-or-"),
        ("anthropic", "sk-ant-"),
        ("groq", "gsk_"),
        ("google", "AIza"),
    ] {
        if other != provider && key.starts_with(p) {
            return Err(bad(&format!(
                "it looks like a {other} key; store it with \"provider\": \"{other}\""
            )));
        }
    }
    Ok(())
}

/// Checks an optional description.
fn check_description(description: Option<&str>, key: &str) -> Result<(), AppError> {
    if let Some(d) = description {
        if d.chars().count() > 256 {
            return Err(AppError::bad_request(
                "'metadata.description' must be at most 256 characters",
            ));
        }
        if d.contains(key) {
            return Err(AppError::bad_request(
                "'metadata.description' must not contain the key itself",
            ));
        }
    }
    Ok(())
}

/// Stores (or replaces) `owner`'s key for `provider`, sealed under the keyring's current
/// master key, and audits it. Returns the stored key (masked) and the id it replaced.
#[allow(clippy::too_many_arguments)]
pub async fn put(
    db: &Db,
    keyring: &Keyring,
    catalogue: &Catalogue,
    owner: Owner<'_>,
    provider: &str,
    key: &str,
    description: Option<&str>,
    actor: &str,
    now: i64,
) -> Result<(SecretInfo, Option<String>), AppError> {
    check_provider(catalogue, provider)?;
    check_key_shape(provider, key)?;
    check_description(description, key)?;
    let id = format!(
        "{}_{}",
        match owner {
            Owner::User(_) => "byok",
            Owner::Platform => "pk",
        },
        crate::store::random_hex(10)
    );
    let binding = Binding {
        scope: owner.scope(),
        owner: owner.id(),
        provider,
        key_id: &id,
    };
    let sealed = crypto::seal(keyring, &binding, key).map_err(AppError::internal)?;
    let hint = mask(key);
    let mut tx = db.begin().await?;
    let replaced: Option<String> = sqlx::query(
        "SELECT id FROM provider_secrets WHERE scope = $1 AND owner = $2 AND provider = $3",
    )
    .bind(owner.scope())
    .bind(owner.id())
    .bind(provider)
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| r.try_get("id"))
    .transpose()?;
    // One statement, so two concurrent adds for the same provider cannot both insert.
    sqlx::query(
        "INSERT INTO provider_secrets (id, scope, owner, provider, hint, description, ciphertext, wrapped_key, master_key_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (scope, owner, provider) DO UPDATE SET id = excluded.id, hint = excluded.hint, \
         description = excluded.description, ciphertext = excluded.ciphertext, wrapped_key = excluded.wrapped_key, \
         master_key_id = excluded.master_key_id, created_at = excluded.created_at, rotated_at = NULL",
    )
    .bind(&id)
    .bind(owner.scope())
    .bind(owner.id())
    .bind(provider)
    .bind(&hint)
    .bind(description)
    .bind(&sealed.ciphertext)
    .bind(&sealed.wrapped_key)
    .bind(&sealed.master_key_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let action = match owner {
        Owner::User(_) => "byok.add",
        Owner::Platform => "provider_key.set",
    };
    crate::store::audit(
        &mut tx,
        actor,
        action,
        owner.id(),
        &format!(
            "provider={provider} key_id={id} key={hint}{}",
            replaced
                .as_deref()
                .map(|r| format!(" replaced={r}"))
                .unwrap_or_default()
        ),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok((
        SecretInfo {
            id,
            provider: provider.to_string(),
            masked_key: hint,
            description: description.map(str::to_string),
            created_at: now,
            rotated_at: None,
        },
        replaced,
    ))
}

/// `owner`'s stored keys, with what opening them needs, by provider.
pub async fn stored(db: &Db, owner: Owner<'_>) -> Result<Vec<StoredSecret>, AppError> {
    let rows = sqlx::query(&format!(
        "SELECT {COLS} FROM provider_secrets WHERE scope = $1 AND owner = $2 ORDER BY provider, id"
    ))
    .bind(owner.scope())
    .bind(owner.id())
    .fetch_all(&db.pool)
    .await?;
    rows.iter().map(stored_of).collect()
}

/// The caller of an authorize and the keys that may route the call: theirs, and the
/// platform's. One query on a reader connection (the hot path: one trip, not one for the
/// caller and one for the keys); `None` when the credential is unknown, revoked or expired.
pub async fn caller_with_keys(
    db: &Db,
    principal: &Principal,
    now: i64,
) -> Result<Option<(User, CallKeys)>, AppError> {
    let (caller, key) = accounts::principal_select(principal);
    let (user_scope, platform) = (Owner::User("").scope(), Owner::Platform);
    let s = COLS
        .split(", ")
        .map(|c| format!("s.{c} AS s_{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Every branch returns the caller: the first once per key of theirs (or once, with no
    // key), the second once per platform key.
    let sql = format!(
        "WITH c AS ({caller}) \
         SELECT c.*, {s} FROM c LEFT JOIN provider_secrets s ON s.scope = '{user_scope}' AND s.owner = c.id \
         UNION ALL \
         SELECT c.*, {s} FROM c JOIN provider_secrets s ON s.scope = '{}' AND s.owner = '{}' \
         ORDER BY s_provider, s_id",
        platform.scope(),
        platform.id()
    );
    let mut q = sqlx::query(&sql).bind(key);
    if matches!(principal, Principal::Session { .. }) {
        q = q.bind(now);
    }
    let rows = db.reader().await.fetch_all(q).await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    accounts::used(db, principal, first, now)?;
    let user = accounts::user_of(first)?;
    let mut keys = CallKeys::default();
    for r in &rows {
        if r.try_get::<Option<String>, _>("s_id")?.is_some() {
            keys.add(stored_of_columns(r, "s_")?);
        }
    }
    Ok(Some((user, keys)))
}

/// The keys that may route a call of `user_id`: theirs, and the platform's.
pub async fn for_call(db: &Db, user_id: &str) -> Result<CallKeys, AppError> {
    let (user, platform) = (Owner::User(user_id), Owner::Platform);
    let sql = format!(
        "SELECT {COLS} FROM provider_secrets WHERE (scope = $1 AND owner = $2) OR (scope = $3 AND owner = $4) ORDER BY provider, id"
    );
    let q = sqlx::query(&sql)
        .bind(user.scope())
        .bind(user.id())
        .bind(platform.scope())
        .bind(platform.id());
    let mut keys = CallKeys::default();
    for r in db.reader().await.fetch_all(q).await? {
        keys.add(stored_of(&r)?);
    }
    Ok(keys)
}

/// The stored keys that may route one call.
#[derive(Default, Clone)]
pub struct CallKeys {
    /// The caller's own, by provider.
    pub own: Vec<StoredSecret>,
    /// The platform's, by provider.
    pub platform: Vec<StoredSecret>,
}

impl CallKeys {
    /// Files a key read in provider order under its owner: the platform's or the caller's.
    fn add(&mut self, key: StoredSecret) {
        if key.scope == Owner::Platform.scope() {
            self.platform.push(key);
        } else {
            self.own.push(key);
        }
    }
}

/// `owner`'s key for `provider`, if one is stored.
pub async fn stored_for(
    db: &Db,
    owner: Owner<'_>,
    provider: &str,
) -> Result<Option<StoredSecret>, AppError> {
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM provider_secrets WHERE scope = $1 AND owner = $2 AND provider = $3"
    ))
    .bind(owner.scope())
    .bind(owner.id())
    .bind(provider)
    .fetch_optional(&db.pool)
    .await?;
    row.as_ref().map(stored_of).transpose()
}

/// `owner`'s keys, masked.
pub async fn list(db: &Db, owner: Owner<'_>) -> Result<Vec<SecretInfo>, AppError> {
    Ok(stored(db, owner)
        .await?
        .into_iter()
        .map(|s| s.info)
        .collect())
}

/// Which of `owner`'s keys to remove.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    Id(&'a str),
    Provider(&'a str),
}

/// Removes one of `owner`'s keys (only theirs), audited. 404 when there is none.
pub async fn remove(
    db: &Db,
    owner: Owner<'_>,
    which: Which<'_>,
    actor: &str,
    now: i64,
) -> Result<SecretInfo, AppError> {
    let (col, value) = match which {
        Which::Id(id) => ("id", id),
        Which::Provider(p) => ("provider", p),
    };
    let mut tx = db.begin().await?;
    let row = sqlx::query(&format!(
        "SELECT {COLS} FROM provider_secrets WHERE scope = $1 AND owner = $2 AND {col} = $3"
    ))
    .bind(owner.scope())
    .bind(owner.id())
    .bind(value)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        return Err(AppError::not_found(match which {
            Which::Id(_) => "No stored key has that id.".to_string(),
            Which::Provider(p) => format!("No key is stored for provider '{}'.", shown(p)),
        }));
    };
    let info = stored_of(&row)?.info;
    sqlx::query("DELETE FROM provider_secrets WHERE id = $1")
        .bind(&info.id)
        .execute(&mut *tx)
        .await?;
    let action = match owner {
        Owner::User(_) => "byok.remove",
        Owner::Platform => "provider_key.remove",
    };
    crate::store::audit(
        &mut tx,
        actor,
        action,
        owner.id(),
        &format!("provider={} key_id={}", info.provider, info.id),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(info)
}

/// How many stored secrets this keyring cannot open because their data keys are wrapped
/// under another master key, by that key's id.
pub async fn foreign_master_keys(
    db: &Db,
    keyring: &Keyring,
) -> Result<Vec<(String, i64)>, AppError> {
    let rows = sqlx::query(
        "SELECT master_key_id, CAST(COUNT(*) AS BIGINT) AS n FROM provider_secrets GROUP BY master_key_id ORDER BY master_key_id",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let id: String = r.try_get("master_key_id")?;
        if keyring.get(&id).is_none() {
            out.push((id, r.try_get("n")?));
        }
    }
    Ok(out)
}

/// What a rotation did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RotationReport {
    /// Rewrapped under the new key by this run.
    pub rewrapped: u64,
    /// Already under the new key (a previous, interrupted run did them).
    pub already_rotated: u64,
    /// Under neither key: left alone.
    pub other_master_key: Vec<String>,
    /// Under the old key but failing their integrity check: left alone.
    pub failed: Vec<String>,
    /// Rows still to do when the run stopped at its limit.
    pub remaining: u64,
}

/// Rewraps every secret's data key from `old` to `new`, one row per transaction, so an
/// interrupted run leaves every row either fully old or fully new; a rerun skips the rows
/// already under `new` (by their master-key id). `limit` stops after that many rewraps.
pub async fn rotate_master_key(
    db: &Db,
    old: &MasterKey,
    new: &MasterKey,
    limit: Option<u64>,
    actor: &str,
    now: i64,
) -> Result<RotationReport, AppError> {
    if old.id() == new.id() {
        return Err(AppError::bad_request(
            "the old and new master keys are the same key",
        ));
    }
    let mut report = RotationReport {
        already_rotated: sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM provider_secrets WHERE master_key_id = $1",
        )
        .bind(new.id())
        .fetch_one(&db.pool)
        .await?
        .try_get::<i64, _>("n")? as u64,
        ..RotationReport::default()
    };
    let ids: Vec<String> = sqlx::query(
        "SELECT id FROM provider_secrets WHERE master_key_id <> $1 ORDER BY created_at, id",
    )
    .bind(new.id())
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(|r| r.try_get("id"))
    .collect::<Result<_, _>>()?;
    for (i, id) in ids.iter().enumerate() {
        if limit.is_some_and(|l| report.rewrapped >= l) {
            report.remaining = (ids.len() - i) as u64;
            break;
        }
        let mut tx = db.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM provider_secrets WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        // Deleted, or rotated by a concurrent run, since the list was read.
        let Some(row) = row else { continue };
        let s = stored_of(&row)?;
        if s.sealed.master_key_id == new.id() {
            report.already_rotated += 1;
            continue;
        }
        if s.sealed.master_key_id != old.id() {
            report.other_master_key.push(s.info.id.clone());
            continue;
        }
        let wrapped = match crypto::rewrap(old, new, &s.binding(), &s.sealed.wrapped_key) {
            Ok(w) => w,
            Err(e) => {
                s.log_failure("cannot rewrap a stored provider key", &e);
                report.failed.push(s.info.id.clone());
                continue;
            }
        };
        let r = sqlx::query(
            "UPDATE provider_secrets SET wrapped_key = $1, master_key_id = $2, rotated_at = $3 WHERE id = $4 AND master_key_id = $5 AND wrapped_key = $6",
        )
        .bind(&wrapped)
        .bind(new.id())
        .bind(now)
        .bind(&s.info.id)
        .bind(old.id())
        .bind(&s.sealed.wrapped_key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if r.rows_affected() == 1 {
            report.rewrapped += 1;
        }
    }
    let mut tx = db.begin().await?;
    crate::store::audit(
        &mut tx,
        actor,
        "master_key.rotate",
        new.id(),
        &format!(
            "from={} rewrapped={} already={} failed={} other={} remaining={}",
            old.id(),
            report.rewrapped,
            report.already_rotated,
            report.failed.len(),
            report.other_master_key.len(),
            report.remaining
        ),
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(report)
}
