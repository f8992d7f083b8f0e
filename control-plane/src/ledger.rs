//! The credit ledger: holds, settlement, expiry and quota reservations.
//!
//! No overspend, whatever the concurrency or the number of replicas: a hold is placed by a
//! conditional `UPDATE … WHERE total - used - held >= amount` inside one transaction that also
//! reserves the quota slots, so the database itself refuses whatever would overdraw.

use crate::accounts::{self, User};
use crate::byok::{self, Owner};
use crate::catalogue::{
    is_openrouter_model_id, Catalogue, ModelKind, PeriodKind, Provider, OPENROUTER,
};
use crate::crypto::{Keyring, OpenError, Secret};
use crate::db::Db;
use crate::error::{AppError, AppResult};
use crate::store::{ledger_entry, random_hex, EntryKind};
use opsgate_core::contract::{
    AuthorizeRequest, CompletionLimit, Endpoint, Grant, Outcome, Settlement, Upstream, WindowLimit,
};
use opsgate_core::metering::{self, HoldRequest};
use opsgate_core::money::MilliCredits;
use opsgate_core::plan::Plan;
use opsgate_core::pricing::{Price, RateCard};
use opsgate_core::time::{daily_window, date_string, monthly_window, trial_window, Window};
use opsgate_core::{ApiError, ErrorKind};
use sqlx::Row;
use std::collections::BTreeMap;

/// What authorize needs besides the request: where providers are, their platform keys from
/// the environment, and the master keys that open stored provider keys.
pub struct Routing<'a> {
    pub catalogue: &'a Catalogue,
    /// Platform keys by provider name, from the environment; a stored platform key wins.
    pub platform_keys: &'a BTreeMap<String, String>,
    pub keyring: &'a Keyring,
    pub hold_ttl_secs: i64,
}

fn format_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One quota window that applies to the caller.
struct QuotaWindow {
    kind: &'static str,
    label: &'static str,
    limit: u64,
    window: Window,
}

fn quota_windows(
    catalogue: &Catalogue,
    user: &User,
    now: i64,
) -> Result<Vec<QuotaWindow>, AppError> {
    let limits = catalogue.plan(user.plan);
    let mut out = Vec::new();
    if let Some(limit) = limits.period_calls {
        let (window, label) = match limits.period {
            PeriodKind::Month => (monthly_window(now), "Monthly"),
            PeriodKind::Trial => {
                let w = trial_window(user.created_at);
                if now >= w.end {
                    return Err(AppError(ApiError {
                        retry_after: None,
                        ..ApiError::new(
                            ErrorKind::QuotaExceeded,
                            format!(
                                "Trial period ended on {}. Upgrade your plan to keep calling.",
                                date_string(w.end)
                            ),
                        )
                    }));
                }
                (w, "Trial")
            }
        };
        out.push(QuotaWindow {
            kind: "period",
            label,
            limit,
            window,
        });
    }
    if let Some(limit) = limits.daily_calls {
        out.push(QuotaWindow {
            kind: "day",
            label: "Daily",
            limit,
            window: daily_window(now),
        });
    }
    Ok(out)
}

/// Where an authorized call goes, and with whose key.
struct Route<'c> {
    /// The model id the call is logged under (catalogue id, or an OpenRouter id).
    model_id: String,
    price: Price,
    /// The catalogue's completion bound; `None` for models outside the catalogue.
    max_output_tokens: Option<u64>,
    completion_limit: CompletionLimit,
    provider: &'c Provider,
    upstream_model: String,
    api_key: Secret,
    /// The caller's own key: no credits.
    byok: bool,
}

fn endpoint_kind(e: Endpoint) -> ModelKind {
    match e {
        Endpoint::ChatCompletions => ModelKind::Chat,
        Endpoint::ImageGenerations => ModelKind::Image,
    }
}

/// Why the caller's own key for `provider` was not used (already logged in detail).
fn unusable_key(provider: &str, e: &OpenError) -> AppError {
    match e {
        OpenError::UnknownMasterKey(_) => AppError::new(
            ErrorKind::Unavailable,
            format!(
                "Your stored {provider} key cannot be unlocked by this gateway right now; the operator has been alerted. Retry later."
            ),
        ),
        OpenError::Integrity | OpenError::Malformed => AppError::forbidden(format!(
            "Your stored {provider} key failed its integrity check and was not used. Remove it (DELETE /api/v1/llm/byok/keys?provider={provider}) and add it again."
        )),
    }
}

/// Decides the model, the provider and the key. The caller's own keys come first: a key
/// for the model's provider, then an OpenRouter key (which serves any cloud chat model, and
/// any OpenRouter model id outside the catalogue). A stored key that cannot be opened is
/// never used and never silently replaced by a platform key: the call is refused.
/// Otherwise the plan's tiers decide, and the platform key serves: a stored platform key
/// before the environment's.
async fn route<'c>(
    db: &Db,
    routing: &Routing<'c>,
    user: &User,
    req: &AuthorizeRequest,
) -> Result<Route<'c>, AppError> {
    let catalogue = routing.catalogue;
    let own = byok::stored(db, Owner::User(&user.id)).await?;
    let has = |p: &str| own.iter().any(|s| s.info.provider == p);
    let kind = endpoint_kind(req.endpoint);
    let model = match &req.model {
        Some(id) => match catalogue.model(id) {
            Some(m) => Some(m),
            None if has(OPENROUTER)
                && catalogue.providers.contains_key(OPENROUTER)
                && is_openrouter_model_id(id) =>
            {
                None
            }
            None => {
                return Err(AppError::new(
                    ErrorKind::NotFound,
                    format!("The model '{id}' does not exist. GET /api/v1/llm/models lists the models you can use."),
                ))
            }
        },
        None => Some(
            catalogue
                .choose_where(kind, req.power_level, req.task_type, req.privacy_required, |m| {
                    catalogue.allows(user.plan, m) || !catalogue.byok_routes(m, has).is_empty()
                })
                .ok_or_else(|| {
                    AppError::forbidden(format!(
                        "No model on the {} plan can serve this request{}.",
                        user.plan.as_str(),
                        if req.privacy_required { " with privacy_required (local models only)" } else { "" }
                    ))
                })?,
        ),
    };
    let own_key = |provider: &str| {
        let s = own
            .iter()
            .find(|s| s.info.provider == provider)
            .ok_or_else(|| AppError::internal("a BYOK route without its key"))?;
        s.open(routing.keyring)
            .map_err(|e| unusable_key(provider, &e))
    };
    let Some(model) = model else {
        // An OpenRouter model outside the catalogue, through the caller's OpenRouter key.
        let id = req.model.clone().unwrap_or_default();
        if kind != ModelKind::Chat {
            return Err(AppError::bad_request(format!(
                "The model '{id}' cannot serve this endpoint."
            )));
        }
        if req.privacy_required {
            return Err(AppError::forbidden(format!(
                "privacy_required is set and '{id}' is not a local model."
            )));
        }
        let provider = &catalogue.providers[OPENROUTER];
        return Ok(Route {
            api_key: own_key(OPENROUTER)?,
            model_id: id.clone(),
            price: Price::default(),
            max_output_tokens: None,
            completion_limit: CompletionLimit::MaxTokens,
            provider,
            upstream_model: id,
            byok: true,
        });
    };
    if model.kind != kind {
        return Err(AppError::bad_request(format!(
            "The model '{}' cannot serve this endpoint.",
            model.id
        )));
    }
    if req.privacy_required && !model.local {
        return Err(AppError::forbidden(format!(
            "privacy_required is set and '{}' is not a local model.",
            model.id
        )));
    }
    let routes = catalogue.byok_routes(model, has);
    if !routes.is_empty() {
        let mut refusal = None;
        for (provider, upstream_model) in routes {
            match own_key(&provider.name) {
                Ok(api_key) => {
                    return Ok(Route {
                        model_id: model.id.clone(),
                        price: model.price,
                        max_output_tokens: Some(model.max_output_tokens),
                        completion_limit: model.completion_limit,
                        provider,
                        upstream_model,
                        api_key,
                        byok: true,
                    })
                }
                Err(e) => refusal = refusal.or(Some(e)),
            }
        }
        return Err(refusal.unwrap_or_else(|| AppError::internal("no BYOK route")));
    }
    if !catalogue.allows(user.plan, model) {
        return Err(AppError::forbidden(format!(
            "The model '{}' is not available on the {} plan. Upgrade your plan, add your own provider key (POST /api/v1/llm/byok/keys) or pick a model from GET /api/v1/llm/models.",
            model.id,
            user.plan.as_str()
        )));
    }
    let provider = catalogue.providers.get(&model.provider).ok_or_else(|| {
        AppError::internal(format!("model {} names a missing provider", model.id))
    })?;
    let stored = match byok::stored_for(db, Owner::Platform, &provider.name).await? {
        // A stored platform key that cannot be opened is logged and passed over.
        Some(s) => s.open(routing.keyring).ok(),
        None => None,
    };
    let api_key = match (stored, routing.platform_keys.get(&provider.name)) {
        (Some(k), _) => k,
        (None, Some(k)) => Secret::new(k.clone()),
        // Fix: a provider with no key variable in the catalogue (the local vLLM/Ollama
        // provider) needs no key, and `serve` never has one for it — so outside --demo
        // every local model, and every privacy_required request, was refused with 503.
        (None, None) if provider.key_env.is_none() => Secret::new(String::new()),
        (None, None) => {
            return Err(AppError::new(
                ErrorKind::Unavailable,
                format!(
                    "The provider '{}' is not configured on this gateway.",
                    provider.name
                ),
            ))
        }
    };
    Ok(Route {
        model_id: model.id.clone(),
        price: model.price,
        max_output_tokens: Some(model.max_output_tokens),
        completion_limit: model.completion_limit,
        provider,
        upstream_model: model.provider_model.clone(),
        api_key,
        byok: false,
    })
}

/// The 402 for a call that needs `needed` milli-credits, naming whichever of the pool and the
/// user's allocation is the tighter limit.
async fn refusal(db: &Db, user: &User, needed: i64) -> AppResult<AppError> {
    let (pool, alloc) = available(db, user).await?;
    Ok(insufficient(
        alloc.map_or(pool, |a| a.min(pool)),
        needed,
        alloc.is_none_or(|a| pool <= a),
    ))
}

fn insufficient(available: i64, needed: i64, pool: bool) -> AppError {
    AppError::new(
        ErrorKind::InsufficientCredits,
        format!(
            "Insufficient {} credits. Available: {}, needed: {}",
            if pool { "organization" } else { "allocated" },
            MilliCredits(available.max(0)),
            MilliCredits(needed)
        ),
    )
}

/// Balances a user can spend right now: (organisation pool, own allocation if any).
async fn available(db: &Db, user: &User) -> Result<(i64, Option<i64>), AppError> {
    let org = accounts::get_org(db, &user.org_id)
        .await?
        .ok_or_else(|| AppError::internal(format!("user {} has no organization", user.id)))?;
    let alloc = accounts::get_allocation(db, &user.org_id, &user.id).await?;
    Ok((org.available(), alloc.map(|a| a.available())))
}

/// Spendable credits: the smaller of the pool and the user's allocation.
pub async fn spendable(db: &Db, user: &User) -> Result<i64, AppError> {
    let (pool, alloc) = available(db, user).await?;
    Ok(alloc.map_or(pool, |a| a.min(pool)).max(0))
}

/// Places a hold and reserves quota, or refuses.
pub async fn authorize(
    db: &Db,
    routing: &Routing<'_>,
    user: &User,
    req: &AuthorizeRequest,
    now: i64,
) -> Result<Grant, AppError> {
    let catalogue = routing.catalogue;
    let route = route(db, routing, user, req).await?;
    let provider = route.provider;
    let plan = catalogue.plan(user.plan);
    let byok = route.byok;
    // A BYOK call costs nothing: its rate card is zero, whatever reads it.
    let rate = if byok {
        RateCard {
            price: Price::default(),
            power_level: req.power_level,
            markup_percent: 0,
        }
    } else {
        RateCard {
            price: route.price,
            power_level: req.power_level,
            markup_percent: plan.markup_percent,
        }
    };
    let windows = quota_windows(catalogue, user, now)?;

    // The largest cost this call can reach, reduced to what the caller can afford
    // (core::metering::hold_for).
    let spend = spendable(db, user).await?;
    let bound = metering::hold_for(
        &rate,
        &HoldRequest {
            endpoint: req.endpoint,
            prompt_bytes: req.prompt_bytes,
            max_tokens: req.max_tokens,
            images: req.images,
        },
        route.max_output_tokens,
        MilliCredits(spend),
        byok,
    );
    let (hold, max_tokens) = match bound {
        Ok(h) => (h.amount.0, h.max_tokens),
        Err(e) => return Err(refusal(db, user, e.needed.0).await?),
    };

    let hold_id = match &req.request_id {
        Some(id)
            if (8..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            id.clone()
        }
        Some(_) => {
            return Err(AppError::bad_request(
                "request_id must be 8-64 characters of [A-Za-z0-9_-]",
            ))
        }
        None => format!("hold_{}", random_hex(12)),
    };
    let mut tx = db.begin().await?;
    let mut limits: Vec<(&'static str, WindowLimit)> = Vec::new();
    for w in &windows {
        sqlx::query("INSERT INTO quota_usage (user_id, kind, window_start, used, reserved) VALUES ($1, $2, $3, 0, 0) ON CONFLICT DO NOTHING")
            .bind(&user.id)
            .bind(w.kind)
            .bind(w.window.start)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query(
            "UPDATE quota_usage SET reserved = reserved + 1 WHERE user_id = $1 AND kind = $2 AND window_start = $3 AND used + reserved < $4",
        )
        .bind(&user.id)
        .bind(w.kind)
        .bind(w.window.start)
        .bind(w.limit as i64)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query("SELECT used, reserved FROM quota_usage WHERE user_id = $1 AND kind = $2 AND window_start = $3")
            .bind(&user.id)
            .bind(w.kind)
            .bind(w.window.start)
            .fetch_one(&mut *tx)
            .await?;
        let taken = row.try_get::<i64, _>("used")? + row.try_get::<i64, _>("reserved")?;
        if r.rows_affected() == 0 {
            tx.rollback().await?;
            let retry = (w.window.end - now).max(1) as u64;
            return Err(AppError(ApiError {
                retry_after: Some(retry),
                ..ApiError::new(
                    ErrorKind::QuotaExceeded,
                    format!(
                        "Rate limit exceeded. {} limit: {} calls. Used: {}. Resets on {}.",
                        w.label,
                        format_count(w.limit),
                        format_count(taken as u64),
                        date_string(w.window.end)
                    ),
                )
            }));
        }
        limits.push((
            w.kind,
            WindowLimit {
                limit: w.limit,
                remaining: w.limit.saturating_sub(taken as u64),
                reset: w.window.end,
            },
        ));
    }

    let r = sqlx::query("UPDATE organizations SET credits_held = credits_held + $1 WHERE id = $2 AND credits_total - credits_used - credits_held >= $1")
        .bind(hold)
        .bind(&user.org_id)
        .execute(&mut *tx)
        .await?;
    if r.rows_affected() == 0 {
        tx.rollback().await?;
        let (pool, _) = available(db, user).await?;
        return Err(insufficient(pool, hold, true));
    }
    let r = sqlx::query("UPDATE allocations SET held = held + $1 WHERE org_id = $2 AND user_id = $3 AND allocated - used - held >= $1")
        .bind(hold)
        .bind(&user.org_id)
        .bind(&user.id)
        .execute(&mut *tx)
        .await?;
    let has_allocation = if r.rows_affected() == 0 {
        let exists =
            sqlx::query("SELECT user_id FROM allocations WHERE org_id = $1 AND user_id = $2")
                .bind(&user.org_id)
                .bind(&user.id)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
        if exists {
            tx.rollback().await?;
            let (_, alloc) = available(db, user).await?;
            return Err(insufficient(alloc.unwrap_or(0), hold, false));
        }
        false
    } else {
        true
    };
    // A request the filter already abandoned (settled `Failed` before this decision) or a
    // replayed id places nothing.
    let seen = sqlx::query("SELECT status FROM holds WHERE id = $1")
        .bind(&hold_id)
        .fetch_optional(&mut *tx)
        .await?;
    if seen.is_some() {
        tx.rollback().await?;
        return Err(AppError::bad_request(format!(
            "Request {hold_id} was already decided or cancelled."
        )));
    }
    let rate_json = serde_json::to_string(&rate).map_err(AppError::internal)?;
    let window_start = |kind: &str| {
        windows
            .iter()
            .find(|w| w.kind == kind)
            .map(|w| w.window.start)
    };
    sqlx::query(
        "INSERT INTO holds (id, org_id, user_id, amount, status, model, provider, rate, byok, has_allocation, day_start, period_start, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, 'held', $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&hold_id)
    .bind(&user.org_id)
    .bind(&user.id)
    .bind(hold)
    .bind(&route.model_id)
    .bind(&provider.name)
    .bind(rate_json)
    .bind(i64::from(byok))
    .bind(i64::from(has_allocation))
    .bind(window_start("day"))
    .bind(window_start("period"))
    .bind(now)
    .bind(now + routing.hold_ttl_secs)
    .execute(&mut *tx)
    .await?;
    ledger_entry(
        &mut tx,
        &user.org_id,
        Some(&user.id),
        EntryKind::Hold,
        hold,
        Some(&hold_id),
        now,
    )
    .await?;
    // Spendable after the hold, read inside the transaction.
    let org_avail: i64 = sqlx::query(
        "SELECT credits_total - credits_used - credits_held AS a FROM organizations WHERE id = $1",
    )
    .bind(&user.org_id)
    .fetch_one(&mut *tx)
    .await?
    .try_get("a")?;
    let alloc_avail: Option<i64> = if has_allocation {
        Some(
            sqlx::query("SELECT allocated - used - held AS a FROM allocations WHERE org_id = $1 AND user_id = $2")
                .bind(&user.org_id)
                .bind(&user.id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("a")?,
        )
    } else {
        None
    };
    tx.commit().await?;
    let window = |kind: &str| limits.iter().find(|(k, _)| *k == kind).map(|(_, l)| *l);
    Ok(Grant {
        hold_id,
        user_id: user.id.clone(),
        model: route.model_id.clone(),
        provider: provider.name.clone(),
        upstream: Upstream {
            cluster: provider.cluster.clone(),
            authority: provider.authority.clone(),
            path: format!(
                "{}/{}",
                provider.base_path,
                match req.endpoint {
                    Endpoint::ChatCompletions => "chat/completions",
                    Endpoint::ImageGenerations => "images/generations",
                }
            ),
            model: route.upstream_model.clone(),
            api_key: route.api_key.expose().to_string(),
            completion_limit: route.completion_limit,
        },
        max_tokens,
        rate,
        hold_mc: MilliCredits(hold),
        balance_mc: MilliCredits(alloc_avail.map_or(org_avail, |a| a.min(org_avail))),
        period: window("period"),
        daily: window("day"),
        byok,
    })
}

/// Settles one hold. Idempotent: settling a hold that is no longer open changes nothing and
/// returns what it was charged.
pub async fn settle(db: &Db, s: &Settlement, now: i64) -> Result<i64, AppError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query(
        "SELECT org_id, user_id, amount, charged, status, model, provider, rate, byok, has_allocation, day_start, period_start FROM holds WHERE id = $1",
    )
    .bind(&s.hold_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        if s.outcome == Outcome::Failed {
            // The filter gave up on a call before its decision arrived. Leave a tombstone so
            // an authorize still on its way places nothing under this id.
            let placed = sqlx::query(
                "INSERT INTO holds (id, org_id, user_id, amount, charged, status, model, provider, rate, created_at, expires_at, settled_at) \
                 VALUES ($1, '', '', 0, 0, 'cancelled', '', '', '', $2, $2, $2) ON CONFLICT DO NOTHING",
            )
            .bind(&s.hold_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            if placed == 0 {
                // An authorize committed this hold meanwhile (PostgreSQL: our insert waited for
                // it): settle the real hold now instead of leaving it open until it expires.
                return Box::pin(settle(db, s, now)).await;
            }
            return Ok(0);
        }
        return Err(AppError::not_found(format!("no hold '{}'", s.hold_id)));
    };
    let status: String = row.try_get("status")?;
    if status != "held" {
        return Ok(row.try_get::<Option<i64>, _>("charged")?.unwrap_or(0));
    }
    let amount: i64 = row.try_get("amount")?;
    let rate: RateCard =
        serde_json::from_str(&row.try_get::<String, _>("rate")?).map_err(AppError::internal)?;
    let byok = row.try_get::<i64, _>("byok")? != 0;
    let charged = match s.outcome {
        Outcome::Failed => 0,
        Outcome::Success | Outcome::Partial => {
            metering::charge(&rate, &s.usage, MilliCredits(amount), byok).0
        }
    };
    if s.outcome != Outcome::Failed
        && metering::exceeds_hold(&rate, &s.usage, MilliCredits(amount), byok)
    {
        eprintln!(
            "opsgate: usage discrepancy on {}: provider reported {} mc, hold covered {} mc; charged the hold",
            s.hold_id,
            rate.cost(&s.usage),
            amount
        );
    }
    let new_status = match s.outcome {
        Outcome::Failed => "released",
        _ => "settled",
    };
    let closed = close_hold(
        &mut tx,
        &s.hold_id,
        &row,
        charged,
        new_status,
        s.outcome != Outcome::Failed,
        now,
    )
    .await?;
    // Fix: on PostgreSQL the SELECT above does not lock the hold, so a duplicate settlement
    // (the filter retrying) or the expiry sweeper can close it between our read and our
    // UPDATE. Then nothing was changed here: answer what the hold was charged, and write no
    // usage log (a second one violated `usage_logs_pkey` and failed the settle batch with
    // a 500; after a racing expiry it would have logged a cost that was never charged).
    if !closed {
        let charged: Option<i64> = sqlx::query("SELECT charged FROM holds WHERE id = $1")
            .bind(&s.hold_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("charged")?;
        tx.rollback().await?;
        return Ok(charged.unwrap_or(0));
    }
    sqlx::query(
        "INSERT INTO usage_logs (hold_id, org_id, user_id, model, provider, prompt_tokens, completion_tokens, images, cost, outcome, upstream_status, latency_ms, byok, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(&s.hold_id)
    .bind(row.try_get::<String, _>("org_id")?)
    .bind(row.try_get::<String, _>("user_id")?)
    .bind(row.try_get::<String, _>("model")?)
    .bind(row.try_get::<String, _>("provider")?)
    .bind(s.usage.prompt_tokens as i64)
    .bind(s.usage.completion_tokens as i64)
    .bind(s.usage.images as i64)
    .bind(charged)
    .bind(match s.outcome {
        Outcome::Success => "success",
        Outcome::Failed => "failed",
        Outcome::Partial => "partial",
    })
    .bind(i64::from(s.upstream_status))
    .bind(s.latency_ms as i64)
    .bind(i64::from(byok))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(charged)
}

/// Moves an open hold to its final state: charges `charged`, releases the rest, and turns
/// the reserved quota slots into used ones (`consume`) or frees them. Returns false (and
/// changes nothing) when the hold was no longer open.
async fn close_hold(
    tx: &mut crate::db::Tx,
    hold_id: &str,
    row: &sqlx::any::AnyRow,
    charged: i64,
    status: &str,
    consume: bool,
    now: i64,
) -> Result<bool, AppError> {
    let r = sqlx::query("UPDATE holds SET status = $1, charged = $2, settled_at = $3 WHERE id = $4 AND status = 'held'")
        .bind(status)
        .bind(charged)
        .bind(now)
        .bind(hold_id)
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    let org_id: String = row.try_get("org_id")?;
    let user_id: String = row.try_get("user_id")?;
    let amount: i64 = row.try_get("amount")?;
    // Fix: lock rows in the order `authorize` does — quota rows (period, then day), then the
    // organization, then the allocation. This loop used to run last and in day→period
    // order, so on PostgreSQL an authorize and a settle of the same user deadlocked
    // ("deadlock detected", a 500 for one of them).
    for (kind, col) in [("period", "period_start"), ("day", "day_start")] {
        if let Some(start) = row.try_get::<Option<i64>, _>(col)? {
            sqlx::query("UPDATE quota_usage SET reserved = reserved - 1, used = used + $1 WHERE user_id = $2 AND kind = $3 AND window_start = $4")
                .bind(i64::from(consume))
                .bind(&user_id)
                .bind(kind)
                .bind(start)
                .execute(&mut **tx)
                .await?;
        }
    }
    sqlx::query("UPDATE organizations SET credits_held = credits_held - $1, credits_used = credits_used + $2 WHERE id = $3")
        .bind(amount)
        .bind(charged)
        .bind(&org_id)
        .execute(&mut **tx)
        .await?;
    if row.try_get::<i64, _>("has_allocation")? != 0 {
        sqlx::query("UPDATE allocations SET held = held - $1, used = used + $2 WHERE org_id = $3 AND user_id = $4")
            .bind(amount)
            .bind(charged)
            .bind(&org_id)
            .bind(&user_id)
            .execute(&mut **tx)
            .await?;
    }
    ledger_entry(
        tx,
        &org_id,
        Some(&user_id),
        EntryKind::Charge,
        charged,
        Some(hold_id),
        now,
    )
    .await?;
    ledger_entry(
        tx,
        &org_id,
        Some(&user_id),
        EntryKind::Release,
        amount - charged,
        Some(hold_id),
        now,
    )
    .await?;
    Ok(true)
}

/// Charges every hold past its expiry as held (the call's outcome never arrived).
pub async fn expire_holds(db: &Db, now: i64) -> Result<u64, AppError> {
    let ids: Vec<String> =
        sqlx::query("SELECT id FROM holds WHERE status = 'held' AND expires_at <= $1")
            .bind(now)
            .fetch_all(&db.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
    let mut n = 0;
    for id in ids {
        let mut tx = db.begin().await?;
        let row = sqlx::query("SELECT org_id, user_id, amount, has_allocation, day_start, period_start FROM holds WHERE id = $1 AND status = 'held'")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = row {
            let amount: i64 = row.try_get("amount")?;
            if close_hold(&mut tx, &id, &row, amount, "expired", true, now).await? {
                // Charged without a reported outcome: logged so /usage and the analytics
                // show where the credits went.
                sqlx::query(
                    "INSERT INTO usage_logs (hold_id, org_id, user_id, model, provider, prompt_tokens, completion_tokens, images, cost, outcome, upstream_status, latency_ms, byok, created_at) \
                     SELECT id, org_id, user_id, model, provider, 0, 0, 0, amount, 'expired', 0, 0, byok, $2 FROM holds WHERE id = $1",
                )
                .bind(&id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                n += 1;
            }
        }
        tx.commit().await?;
    }
    Ok(n)
}

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

/// Plan limits snapshot for a user, for `/credits`.
pub fn monthly_cap(catalogue: &Catalogue, plan: Plan) -> Option<u64> {
    catalogue.plan(plan).period_calls
}
