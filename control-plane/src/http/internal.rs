//! The filter's surface (`/internal/v1/*`): the snapshot, authorize, settle and credential
//! lookups. Every handler takes [`Internal`]: the internal token.

use super::extract::{body_first, parse};
use super::identity::Internal;
use super::observe::Who;
use super::Routes;
use crate::accounts;
use crate::callers;
use crate::catalogue::Catalogue;
use crate::db::Db;
use crate::error::{AppError, AppResult, ErrorEnvelope};
use crate::keys;
use crate::ledger::{self, Routing};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Json};
use opsgate_core::contract::{
    AuthorizeRequest, AuthorizeResponse, Denial, Principal, ServiceKeyEntry, SettleBatch,
    SettleResponse, SettleResult, Snapshot,
};
use opsgate_core::credentials;
use serde::Serialize;
use std::time::Instant;

pub(super) fn router() -> Routes {
    Routes::default()
        .route(opsgate_core::contract::SNAPSHOT_PATH, get(snapshot))
        .route(
            opsgate_core::contract::AUTHORIZE_PATH,
            post(body_first(authorize)),
        )
        .route(
            opsgate_core::contract::SETTLE_PATH,
            post(body_first(settle)),
        )
        .route(
            "/internal/v1/credentials",
            post(body_first(credential_lookup)),
        )
}

pub async fn build_snapshot(db: &Db, catalogue: &Catalogue) -> AppResult<Snapshot> {
    let service_keys: Vec<ServiceKeyEntry> = keys::service_key_digests(db)
        .await?
        .into_iter()
        .map(|(digest, user_id)| ServiceKeyEntry { digest, user_id })
        .collect();
    let models = catalogue
        .models
        .iter()
        .map(|m| opsgate_core::contract::ModelEntry {
            id: m.id.clone(),
            provider: m.provider.clone(),
            tier: m.tier.clone(),
            kind: m.kind.as_str().into(),
            local: m.local,
        })
        .collect();
    let plans = catalogue
        .plans
        .iter()
        .map(|(plan, p)| opsgate_core::contract::PlanEntry {
            plan: plan.as_str().into(),
            daily_calls: p.daily_calls,
            period_calls: p.period_calls,
            markup_percent: p.markup_percent,
            tiers: p.tiers.clone(),
        })
        .collect();
    let mut snap = Snapshot {
        version: String::new(),
        service_keys,
        models,
        plans,
    };
    let body = serde_json::to_string(&snap).map_err(AppError::internal)?;
    snap.version = credentials::digest(&body)[..16].to_string();
    Ok(snap)
}

#[utoipa::path(get, path = "/internal/v1/snapshot", tag = "internal", summary = "The filter's snapshot", responses((status = 200, description = "Service key digests, models and plans", body = Object), (status = 401, body = ErrorEnvelope)), security(("internal_token" = [])))]
async fn snapshot(State(state): State<AppState>, _: Internal) -> AppResult<Json<Snapshot>> {
    Ok(Json(build_snapshot(&state.db, &state.catalogue).await?))
}

#[utoipa::path(post, path = "/internal/v1/authorize", tag = "internal", summary = "Authorize a call and place its hold", request_body(content = Object, description = "AuthorizeRequest (opsgate-core contract)"), responses((status = 200, description = "Allow (a hold placed) or Deny", body = Object), (status = 401, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)), security(("internal_token" = [])))]
async fn authorize(
    State(state): State<AppState>,
    _: Internal,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> AppResult<Json<AuthorizeResponse>> {
    let started = Instant::now();
    let req: AuthorizeRequest = parse(&body)?;
    let result = authorize_inner(&state, &req, &who).await;
    state.metrics.authorized(result.is_ok(), started.elapsed());
    Ok(Json(match result {
        Ok(grant) => AuthorizeResponse::Allow(Box::new(grant)),
        Err(e) => AuthorizeResponse::Deny(Denial::from(e.0)),
    }))
}

/// `POST /internal/v1/credentials`: who a principal is (API key digest, session digest,
/// service user, JWT subject), for the filter's credential cache; 401 envelope when unknown.
/// Who a credential belongs to, as `POST /internal/v1/credentials` answers.
#[derive(Serialize, utoipa::ToSchema)]
struct CredentialOwner {
    user_id: String,
    org_id: String,
    plan: &'static str,
}

#[utoipa::path(post, path = "/internal/v1/credentials", tag = "internal", summary = "Who a credential belongs to", request_body(content = Object, description = "Principal (opsgate-core contract)"), responses((status = 200, body = CredentialOwner), (status = 401, body = ErrorEnvelope)), security(("internal_token" = [])))]
async fn credential_lookup(
    State(state): State<AppState>,
    _: Internal,
    body: Bytes,
) -> AppResult<Json<CredentialOwner>> {
    let principal: Principal = parse(&body)?;
    let user = accounts::by_principal(&state.db, &principal, state.clock.now())
        .await?
        .ok_or_else(|| AppError::unauthorized("Invalid or revoked credential"))?;
    Ok(Json(CredentialOwner {
        plan: user.plan.as_str(),
        user_id: user.id,
        org_id: user.org_id,
    }))
}

async fn authorize_inner(
    state: &AppState,
    req: &AuthorizeRequest,
    who: &Who,
) -> AppResult<opsgate_core::contract::Grant> {
    // Announced before the caller is read: a ledger batch about to start waits for it.
    let arriving = ledger::Arriving::new(&state.db);
    let now = state.clock.now();
    let unknown = || AppError::unauthorized("Invalid or revoked API key");
    let db = &state.db;
    let mut caller = callers::lookup(db, &req.principal, now)
        .await?
        .ok_or_else(unknown)?;
    who.note(
        principal_kind(&req.principal),
        &caller.user.id,
        &caller.user.org_id,
    );
    let routing = Routing {
        catalogue: &state.catalogue,
        platform_keys: &state.settings.platform_keys,
        keyring: &state.keyring,
        hold_ttl_secs: state.settings.hold_ttl_secs,
    };
    let mut arriving = Some(arriving);
    for tries in 1..=3 {
        // A third try is decided on the caller read for it, whatever moved meanwhile.
        let epoch = caller.epoch.filter(|_| tries < 3);
        let keys = std::mem::take(&mut caller.keys);
        let user = &caller.user;
        match ledger::authorize_in(db, &routing, user, keys, req, now, arriving.take(), epoch).await
        {
            Ok(Some(grant)) => return Ok(grant),
            // The database moved since the caller was read (a revocation?): read it again.
            Ok(None) => {}
            // Refused on a kept caller: decided again on the caller as it is now.
            Err(_) if caller.cached => {}
            Err(e) => return Err(e),
        }
        db.callers.stale.inc();
        caller = callers::reread(db, &req.principal, now)
            .await?
            .ok_or_else(unknown)?;
    }
    Err(AppError::internal(
        "authorize found the caller stale three times",
    ))
}

/// How a principal authenticated, for the request log.
fn principal_kind(p: &Principal) -> &'static str {
    match p {
        Principal::Service { .. } => "service",
        Principal::ApiKey { .. } => "api_key",
        Principal::Session { .. } => "session",
        Principal::Jwt { .. } => "jwt",
    }
}

#[utoipa::path(post, path = "/internal/v1/settle", tag = "internal", summary = "Settle finished calls", request_body(content = Object, description = "SettleBatch (opsgate-core contract)"), responses((status = 200, description = "What each hold was charged", body = Object), (status = 401, body = ErrorEnvelope), (status = 503, body = ErrorEnvelope)), security(("internal_token" = [])))]
async fn settle(
    State(state): State<AppState>,
    _: Internal,
    Extension(who): Extension<Who>,
    body: Bytes,
) -> AppResult<Json<SettleResponse>> {
    let started = Instant::now();
    let batch: SettleBatch = parse(&body)?;
    // A batch of one carries its call's id as `x-request-id`; a larger one names its calls.
    if batch.settlements.len() > 1 {
        who.calls(batch.settlements.iter().map(|s| s.hold_id.as_str()));
    }
    let now = state.clock.now();
    let m = &state.metrics;
    m.settle_batch_size.observe(batch.settlements.len() as f64);
    let answers = ledger::settle_many(&state.db, &batch.settlements, now).await;
    let mut results = Vec::with_capacity(batch.settlements.len());
    for (s, answer) in batch.settlements.iter().zip(answers) {
        match answer {
            Ok(settled) => {
                m.settled.inc();
                if let Some((provider, model)) = &settled.metered {
                    m.charged(provider, model, settled.charged);
                }
                results.push(SettleResult {
                    hold_id: s.hold_id.clone(),
                    charged_mc: settled.charged,
                    balance_mc: settled
                        .balance
                        .filter(|_| batch.with_balances)
                        .map(opsgate_core::MilliCredits),
                });
            }
            // An unknown hold cannot be retried into existence: report and move on.
            Err(e) if e.0.kind == opsgate_core::ErrorKind::NotFound => {
                m.settle_unknown.inc();
                tracing::warn!(hold_id = %s.hold_id, "settlement for an unknown hold");
            }
            Err(e) => return Err(e),
        }
    }
    m.settle_seconds.observe(started.elapsed().as_secs_f64());
    Ok(Json(SettleResponse { results }))
}

/// This surface's entries in the OpenAPI document (`/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(snapshot, authorize, credential_lookup, settle))]
pub(super) struct Api;
