//! The public surface for clients (`/api/v1/llm/*`): models, credits and usage, in the
//! integration guide's shapes. Every handler takes [`Caller`].

use super::extract::Q;
use super::identity::Caller;
use crate::accounts::User;
use crate::byok::{self, Owner};
use crate::catalogue::{Model, ModelKind};
use crate::error::AppResult;
use crate::ledger::{self};
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use opsgate_core::money::MilliCredits;
use serde::Deserialize;
use serde_json::{json, Value};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/llm/models", get(models))
        .route("/api/v1/llm/models/categorized", get(models_categorized))
        .route("/api/v1/llm/credits", get(credits))
        .route("/api/v1/llm/usage", get(usage))
}

fn model_json(m: &Model) -> Value {
    json!({
        "id": m.id,
        "object": "model",
        "created": 0,
        "owned_by": m.provider,
        "tier": m.tier,
        "local": m.local,
        "kind": match m.kind { ModelKind::Chat => "chat", ModelKind::Image => "image" },
    })
}

/// The caller's models: each one the plan allows or the caller's own keys reach, with the
/// provider that serves it through those keys (`None`: the platform serves it). The same
/// rule as authorize's ([`Catalogue::byok_routes`]).
async fn reachable<'c>(
    state: &'c AppState,
    user: &User,
) -> AppResult<(Vec<(&'c Model, Option<String>)>, Vec<String>)> {
    let providers: Vec<String> = byok::list(&state.db, Owner::User(&user.id))
        .await?
        .into_iter()
        .map(|k| k.provider)
        .collect();
    let has = |p: &str| providers.iter().any(|x| x == p);
    let models = state
        .catalogue
        .models
        .iter()
        .filter_map(|m| {
            let via = state
                .catalogue
                .byok_routes(m, has)
                .first()
                .map(|(p, _)| p.name.clone());
            (via.is_some() || state.catalogue.allows(user.plan, m)).then_some((m, via))
        })
        .collect();
    Ok((models, providers))
}

async fn models(State(state): State<AppState>, Caller(user): Caller) -> AppResult<Json<Value>> {
    let (models, _) = reachable(&state, &user).await?;
    let data: Vec<Value> = models
        .iter()
        .map(|(m, via)| {
            let mut v = model_json(m);
            v["byok"] = json!(via.is_some());
            v
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn models_categorized(
    State(state): State<AppState>,
    Caller(user): Caller,
) -> AppResult<Json<Value>> {
    let (models, providers) = reachable(&state, &user).await?;
    let (mut byok, mut platform) = (Vec::new(), Vec::new());
    for (m, via) in &models {
        match via {
            Some(p) => {
                let mut v = model_json(m);
                v["via_provider"] = json!(p);
                byok.push(v);
            }
            None => platform.push(model_json(m)),
        }
    }
    let any_openrouter = providers.iter().any(|p| p == crate::catalogue::OPENROUTER);
    Ok(Json(json!({
        "byok": byok,
        "platform": platform,
        "summary": {
            "byok_models": byok.len(),
            "platform_models": platform.len(),
            "byok_providers": providers,
            // With an OpenRouter key, any OpenRouter model id (vendor/model) may be named too.
            "openrouter_any_model": any_openrouter,
        },
    })))
}

async fn credits(State(state): State<AppState>, Caller(user): Caller) -> AppResult<Json<Value>> {
    let remaining = ledger::spendable(&state.db, &user).await?;
    Ok(Json(json!({
        "user_id": user.id,
        "credits_remaining": MilliCredits(remaining).to_credits_f64(),
        "tier": user.plan.as_str(),
        "monthly_cap": ledger::monthly_cap(&state.catalogue, user.plan),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    start: Option<i64>,
    end: Option<i64>,
}

async fn usage(
    State(state): State<AppState>,
    Q(q): Q<UsageQuery>,
    Caller(user): Caller,
) -> AppResult<Json<Value>> {
    let start = q.start.unwrap_or(0);
    let end = q.end.unwrap_or(i64::MAX);
    let rows = crate::analytics::usage_by_provider(&state.db, &user.id, start, end).await?;
    let (mut requests, mut tokens, mut cost) = (0i64, 0i64, 0i64);
    let providers: Vec<Value> = rows
        .iter()
        .map(|r| {
            requests += r.requests;
            tokens += r.tokens;
            cost += r.cost_mc;
            json!({"provider": r.provider, "requests": r.requests, "tokens": r.tokens, "cost": MilliCredits(r.cost_mc).to_credits_f64()})
        })
        .collect();
    let avg = if requests > 0 {
        MilliCredits(cost).to_credits_f64() / requests as f64
    } else {
        0.0
    };
    Ok(Json(json!({
        "total_requests": requests,
        "total_tokens": tokens,
        "total_cost": MilliCredits(cost).to_credits_f64(),
        "avg_cost_per_request": (avg * 10_000.0).round() / 10_000.0,
        "providers": providers,
    })))
}
