//! The public surface for clients (`/api/v1/llm/*`): models, credits and usage, in the
//! integration guide's shapes. Every handler takes [`Caller`].

use super::extract::Q;
use super::identity::Caller;
use super::Routes;
use crate::accounts::User;
use crate::byok::{self, Owner};
use crate::catalogue::Model;
use crate::error::{AppResult, ErrorEnvelope};
use crate::ledger::{self};
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::Json;
use opsgate_core::money::MilliCredits;
use serde::{Deserialize, Serialize};

pub(super) fn router() -> Routes {
    Routes::default()
        .route("/api/v1/llm/models", get(models))
        .route("/api/v1/llm/models/categorized", get(models_categorized))
        // The OpenAI SDKs' `models.retrieve`; ids may hold a '/' (vendor/model).
        .route("/api/v1/llm/models/{*id}", get(model))
        .route("/api/v1/llm/credits", get(credits))
        .route("/api/v1/llm/usage", get(usage))
}

/// A model entry. `byok` appears only in `/models`; `via_provider` only for the
/// categorized listing's BYOK models.
#[derive(Serialize, utoipa::ToSchema)]
struct ModelJson {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: String,
    tier: String,
    local: bool,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    byok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    via_provider: Option<String>,
}

fn model_json(m: &Model) -> ModelJson {
    ModelJson {
        id: m.id.clone(),
        object: "model",
        created: 0,
        owned_by: m.provider.clone(),
        tier: m.tier.clone(),
        local: m.local,
        kind: m.kind.as_str(),
        byok: None,
        via_provider: None,
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelJson>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CategorizedModels {
    byok: Vec<ModelJson>,
    platform: Vec<ModelJson>,
    summary: CategorizedSummary,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CategorizedSummary {
    byok_models: usize,
    platform_models: usize,
    byok_providers: Vec<String>,
    /// With an OpenRouter key, any OpenRouter model id (vendor/model) may be named too.
    openrouter_any_model: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Credits {
    user_id: String,
    credits_remaining: f64,
    tier: &'static str,
    monthly_cap: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ProviderUsageJson {
    provider: String,
    requests: i64,
    tokens: i64,
    cost: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Usage {
    total_requests: i64,
    total_tokens: i64,
    total_cost: f64,
    avg_cost_per_request: f64,
    providers: Vec<ProviderUsageJson>,
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

#[utoipa::path(get, path = "/api/v1/llm/models", tag = "public", summary = "The models you can call (OpenAI list shape)", responses((status = 200, body = ModelList), (status = 400, description = "Invalid request", body = ErrorEnvelope), (status = 401, description = "Missing or invalid credentials", body = ErrorEnvelope)), security(("api_key" = []), ("session" = []), ("jwt" = [])))]
async fn models(State(state): State<AppState>, Caller(user): Caller) -> AppResult<Json<ModelList>> {
    let (models, _) = reachable(&state, &user).await?;
    let data: Vec<ModelJson> = models
        .iter()
        .map(|(m, via)| ModelJson {
            byok: Some(via.is_some()),
            ..model_json(m)
        })
        .collect();
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

/// One model the caller can use, as `GET /models` lists it; 404 otherwise.
#[utoipa::path(get, path = "/api/v1/llm/models/{id}", tag = "public", summary = "One model (the OpenAI SDKs' models.retrieve)", params(("id" = String, Path, description = "Catalogue id; may contain a slash")), responses((status = 200, body = ModelJson), (status = 400, description = "Invalid request", body = ErrorEnvelope), (status = 401, description = "Missing or invalid credentials", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("api_key" = []), ("session" = []), ("jwt" = [])))]
async fn model(
    State(state): State<AppState>,
    Caller(user): Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> AppResult<Json<ModelJson>> {
    let (models, _) = reachable(&state, &user).await?;
    models
        .iter()
        .find(|(m, _)| m.id == id)
        .map(|(m, via)| {
            Json(ModelJson {
                byok: Some(via.is_some()),
                ..model_json(m)
            })
        })
        .ok_or_else(|| {
            crate::error::AppError::new(
                opsgate_core::ErrorKind::NotFound,
                format!(
                    "The model '{id}' does not exist or is not available to you. GET /api/v1/llm/models lists the models you can use."
                ),
            )
        })
}

#[utoipa::path(get, path = "/api/v1/llm/models/categorized", tag = "public", summary = "Models split by who pays: your own keys (BYOK) or the platform", responses((status = 200, body = CategorizedModels), (status = 400, description = "Invalid request", body = ErrorEnvelope), (status = 401, description = "Missing or invalid credentials", body = ErrorEnvelope)), security(("api_key" = []), ("session" = []), ("jwt" = [])))]
async fn models_categorized(
    State(state): State<AppState>,
    Caller(user): Caller,
) -> AppResult<Json<CategorizedModels>> {
    let (models, providers) = reachable(&state, &user).await?;
    let (mut byok, mut platform) = (Vec::new(), Vec::new());
    for (m, via) in &models {
        match via {
            Some(p) => byok.push(ModelJson {
                via_provider: Some(p.clone()),
                ..model_json(m)
            }),
            None => platform.push(model_json(m)),
        }
    }
    let any_openrouter = providers.iter().any(|p| p == crate::catalogue::OPENROUTER);
    Ok(Json(CategorizedModels {
        summary: CategorizedSummary {
            byok_models: byok.len(),
            platform_models: platform.len(),
            byok_providers: providers,
            openrouter_any_model: any_openrouter,
        },
        byok,
        platform,
    }))
}

#[utoipa::path(get, path = "/api/v1/llm/credits", tag = "public", summary = "What you can still spend", responses((status = 200, body = Credits), (status = 400, description = "Invalid request", body = ErrorEnvelope), (status = 401, description = "Missing or invalid credentials", body = ErrorEnvelope)), security(("api_key" = []), ("session" = []), ("jwt" = [])))]
async fn credits(State(state): State<AppState>, Caller(user): Caller) -> AppResult<Json<Credits>> {
    let remaining = ledger::spendable(&state.db, &user).await?;
    Ok(Json(Credits {
        credits_remaining: MilliCredits(remaining).to_credits_f64(),
        tier: user.plan.as_str(),
        monthly_cap: ledger::monthly_cap(&state.catalogue, user.plan),
        user_id: user.id,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UsageQuery {
    start: Option<i64>,
    end: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/llm/usage", tag = "public", summary = "Your usage by provider", params(UsageQuery), responses((status = 200, body = Usage), (status = 400, description = "Invalid request", body = ErrorEnvelope), (status = 401, description = "Missing or invalid credentials", body = ErrorEnvelope)), security(("api_key" = []), ("session" = []), ("jwt" = [])))]
async fn usage(
    State(state): State<AppState>,
    Q(q): Q<UsageQuery>,
    Caller(user): Caller,
) -> AppResult<Json<Usage>> {
    let start = q.start.unwrap_or(0);
    let end = q.end.unwrap_or(i64::MAX);
    let rows = crate::analytics::usage_by_provider(&state.db, &user.id, start, end).await?;
    let (mut requests, mut tokens, mut cost) = (0i64, 0i64, 0i64);
    let providers: Vec<ProviderUsageJson> = rows
        .iter()
        .map(|r| {
            requests += r.requests;
            tokens += r.tokens;
            cost += r.cost_mc;
            ProviderUsageJson {
                provider: r.provider.clone(),
                requests: r.requests,
                tokens: r.tokens,
                cost: MilliCredits(r.cost_mc).to_credits_f64(),
            }
        })
        .collect();
    let avg = if requests > 0 {
        MilliCredits(cost).to_credits_f64() / requests as f64
    } else {
        0.0
    };
    Ok(Json(Usage {
        total_requests: requests,
        total_tokens: tokens,
        total_cost: MilliCredits(cost).to_credits_f64(),
        avg_cost_per_request: (avg * 10_000.0).round() / 10_000.0,
        providers,
    }))
}

/// This surface's entries in the OpenAPI document (`/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(models, model, models_categorized, credits, usage))]
pub(super) struct Api;
