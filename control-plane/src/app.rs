//! The HTTP surface: `fn app(state) -> Router`. Internal routes serve the filter, public
//! routes serve clients in the integration guide's shapes, admin routes manage the state.

use crate::accounts::{self, User};
use crate::byok::{self, Owner, Which};
use crate::catalogue::{Catalogue, Model, ModelKind};
use crate::db::Db;
use crate::error::{AppError, AppResult};
use crate::identity::{Admin, Caller, Internal};
use crate::ledger::{self, Routing};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use opsgate_core::contract::{
    AuthorizeRequest, AuthorizeResponse, Denial, Principal, ServiceKeyEntry, SettleBatch,
    SettleResponse, SettleResult, Snapshot,
};
use opsgate_core::credentials;
use opsgate_core::money::MilliCredits;
use opsgate_core::plan::Plan;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
        .route("/api/v1/llm/models", get(models))
        .route("/api/v1/llm/models/categorized", get(models_categorized))
        .route("/api/v1/llm/credits", get(credits))
        .route("/api/v1/llm/usage", get(usage))
        .route(
            "/api/v1/llm/byok/keys",
            get(byok_list)
                .post(body_first(byok_add))
                .delete(byok_remove),
        )
        .route("/api/v1/llm/byok/keys/{id}", delete(byok_remove_id))
        .route(
            "/admin/v1/orgs",
            post(body_first(admin_create_org)).get(admin_list_orgs),
        )
        .route("/admin/v1/orgs/{id}", get(admin_get_org))
        .route("/admin/v1/orgs/{id}/grants", post(body_first(admin_grant)))
        .route(
            "/admin/v1/users",
            post(body_first(admin_create_user)).get(admin_list_users),
        )
        .route(
            "/admin/v1/users/{id}/allocation",
            put(body_first(admin_set_allocation)),
        )
        .route(
            "/admin/v1/users/{id}/api-keys",
            post(body_first(admin_issue_key)),
        )
        .route("/admin/v1/api-keys", get(admin_list_keys))
        .route("/admin/v1/api-keys/{id}", delete(admin_revoke_key))
        .route(
            "/admin/v1/service-keys",
            post(body_first(admin_add_service_key))
                .get(admin_list_service_keys)
                .delete(body_first(admin_revoke_service_key)),
        )
        .route("/admin/v1/audit", get(admin_audit))
        .route(
            "/api/v1/llm/auth/session",
            post(crate::identity::create_session).delete(crate::identity::delete_session),
        )
        .route("/admin/v1/analytics/{report}", get(admin_analytics))
        .route(
            "/admin/v1/users/{id}/plan",
            put(body_first(admin_set_user_plan)),
        )
        .route(
            "/admin/v1/orgs/{id}/plan",
            put(body_first(admin_set_org_plan)),
        )
        .route("/admin/v1/provider-keys", get(admin_list_provider_keys))
        .route(
            "/admin/v1/provider-keys/{provider}",
            put(body_first(admin_set_provider_key))
                .get(admin_get_provider_key)
                .delete(admin_remove_provider_key),
        )
        .fallback(|| async {
            AppError::not_found("No such endpoint. The API lives under /api/v1/llm.")
        })
        // Fix: a known path with an unsupported method got axum's bare 405 with an empty
        // body; errors always use the envelope (DESIGN: "Errors always use the envelope").
        .method_not_allowed_fallback(|| async {
            AppError::new(
                opsgate_core::ErrorKind::MethodNotAllowed,
                "This endpoint does not support that HTTP method.",
            )
        })
        .layer(axum::middleware::map_response(
            crate::error::envelope_plain_errors,
        ))
        .with_state(state)
}

/// A handler that takes a body reads it before its caller is checked: a body past the limit
/// (or unreadable) is refused as such (413/400) whoever sends it, and the auth extractors
/// then see a buffered body. The body is read with the same extractor and limit the
/// handler's `Bytes` argument uses.
fn body_first<H, T>(handler: H) -> impl Handler<T, AppState>
where
    H: Handler<T, AppState>,
    T: 'static,
{
    handler.layer(axum::middleware::from_fn(buffer_body))
}

async fn buffer_body(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    let mut whole = axum::extract::Request::new(body);
    *whole.extensions_mut() = parts.extensions.clone();
    match Bytes::from_request(whole, &()).await {
        Ok(bytes) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Err(rejection) => rejection.into_response(),
    }
}

/// Query parameters, refused in the error envelope when malformed.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> axum::extract::FromRequestParts<S> for Q<T> {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| Q(q))
            .map_err(|e| AppError::bad_request(format!("Invalid query: {e}")))
    }
}

/// Parses a JSON body strictly (unknown fields refused), answering in the error envelope.
fn parse<T: DeserializeOwned>(body: &Bytes) -> AppResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| AppError::bad_request(format!("Invalid request body: {e}")))
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.db.ping().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        AppError::new(opsgate_core::ErrorKind::Unavailable, "database unreachable").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> String {
    let m = &state.metrics;
    format!(
        "# TYPE opsgate_authorize_total counter\n\
         opsgate_authorize_total{{decision=\"allow\"}} {}\n\
         opsgate_authorize_total{{decision=\"deny\"}} {}\n\
         # TYPE opsgate_settled_total counter\n\
         opsgate_settled_total {}\n\
         # TYPE opsgate_charged_millicredits_total counter\n\
         opsgate_charged_millicredits_total {}\n",
        m.authorize_allowed.load(Ordering::Relaxed),
        m.authorize_denied.load(Ordering::Relaxed),
        m.settled.load(Ordering::Relaxed),
        m.charged_mc.load(Ordering::Relaxed),
    )
}

// ---- internal ---------------------------------------------------------------------------

pub async fn build_snapshot(db: &Db, catalogue: &Catalogue) -> AppResult<Snapshot> {
    let service_keys: Vec<ServiceKeyEntry> = accounts::service_key_digests(db)
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
            kind: match m.kind {
                ModelKind::Chat => "chat".into(),
                ModelKind::Image => "image".into(),
            },
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

async fn snapshot(State(state): State<AppState>, _: Internal) -> AppResult<Json<Snapshot>> {
    Ok(Json(build_snapshot(&state.db, &state.catalogue).await?))
}

async fn authorize(
    State(state): State<AppState>,
    _: Internal,
    body: Bytes,
) -> AppResult<Json<AuthorizeResponse>> {
    let req: AuthorizeRequest = parse(&body)?;
    let result = authorize_inner(&state, &req).await;
    Ok(Json(match result {
        Ok(grant) => {
            state
                .metrics
                .authorize_allowed
                .fetch_add(1, Ordering::Relaxed);
            AuthorizeResponse::Allow(Box::new(grant))
        }
        Err(e) => {
            state
                .metrics
                .authorize_denied
                .fetch_add(1, Ordering::Relaxed);
            AuthorizeResponse::Deny(Denial::from(e.0))
        }
    }))
}

/// `POST /internal/v1/credentials`: who a principal is (API key digest, session digest,
/// service user, JWT subject), for the filter's credential cache; 401 envelope when unknown.
async fn credential_lookup(
    State(state): State<AppState>,
    _: Internal,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let principal: Principal = parse(&body)?;
    let user = principal_user(&state, &principal)
        .await?
        .ok_or_else(|| AppError::unauthorized("Invalid or revoked credential"))?;
    Ok(Json(
        json!({"user_id": user.id, "org_id": user.org_id, "plan": user.plan.as_str()}),
    ))
}

async fn principal_user(state: &AppState, principal: &Principal) -> AppResult<Option<User>> {
    let now = state.clock.now();
    match principal {
        Principal::Service { user_id } => accounts::get_user(&state.db, user_id).await,
        Principal::ApiKey { digest } => {
            accounts::user_by_api_key_digest(&state.db, digest, now).await
        }
        Principal::Session { digest } => crate::identity::user_for_session(state, digest).await,
        Principal::Jwt { subject, .. } => accounts::get_user(&state.db, subject).await,
    }
}

async fn authorize_inner(
    state: &AppState,
    req: &AuthorizeRequest,
) -> AppResult<opsgate_core::contract::Grant> {
    let now = state.clock.now();
    let user = principal_user(state, &req.principal)
        .await?
        .ok_or_else(|| AppError::unauthorized("Invalid or revoked API key"))?;
    let routing = Routing {
        catalogue: &state.catalogue,
        platform_keys: &state.settings.platform_keys,
        keyring: &state.keyring,
        hold_ttl_secs: state.settings.hold_ttl_secs,
    };
    ledger::authorize(&state.db, &routing, &user, req, now).await
}

async fn settle(
    State(state): State<AppState>,
    _: Internal,
    body: Bytes,
) -> AppResult<Json<SettleResponse>> {
    let batch: SettleBatch = parse(&body)?;
    let now = state.clock.now();
    let mut results = Vec::with_capacity(batch.settlements.len());
    for s in &batch.settlements {
        match ledger::settle(&state.db, s, now).await {
            Ok(charged) => {
                state.metrics.settled.fetch_add(1, Ordering::Relaxed);
                state
                    .metrics
                    .charged_mc
                    .fetch_add(charged.max(0) as u64, Ordering::Relaxed);
                results.push(SettleResult {
                    hold_id: s.hold_id.clone(),
                    charged_mc: charged,
                });
            }
            // An unknown hold cannot be retried into existence: report and move on.
            Err(e) if e.0.kind == opsgate_core::ErrorKind::NotFound => {
                eprintln!("opsgate: settle for unknown hold {}", s.hold_id);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Json(SettleResponse { results }))
}

// ---- public -------------------------------------------------------------------------------

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

// ---- BYOK ---------------------------------------------------------------------------------

/// Parses a body that carries a secret. Unlike [`parse`], the error never quotes the body:
/// serde's messages can repeat a value ("invalid type: string \"…\"").
fn parse_secret_body<T: DeserializeOwned>(body: &Bytes, shape: &str) -> AppResult<T> {
    serde_json::from_slice(body).map_err(|e| {
        AppError::bad_request(format!(
            "Invalid request body (line {}, column {}): expected {shape}",
            e.line(),
            e.column()
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyMetadata {
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewByokKey {
    provider: String,
    api_key: String,
    #[serde(default)]
    metadata: Option<KeyMetadata>,
}

impl Drop for NewByokKey {
    fn drop(&mut self) {
        drop(crate::crypto::Secret::new(std::mem::take(
            &mut self.api_key,
        )));
    }
}

fn byok_json(k: &byok::SecretInfo) -> Value {
    json!({
        "id": k.id,
        "object": "byok_key",
        "provider": k.provider,
        "masked_key": k.masked_key,
        "metadata": {"description": k.description},
        "created_at": k.created_at,
    })
}

async fn byok_add(
    State(state): State<AppState>,
    Caller(user): Caller,
    body: Bytes,
) -> AppResult<Response> {
    let req: NewByokKey = parse_secret_body(
        &body,
        r#"{"provider": "...", "api_key": "...", "metadata": {"description": "..."}}"#,
    )?;
    let (info, replaced) = byok::put(
        &state.db,
        &state.keyring,
        &state.catalogue,
        Owner::User(&user.id),
        &req.provider,
        &req.api_key,
        req.metadata.as_ref().and_then(|m| m.description.as_deref()),
        &format!("user:{}", user.id),
        state.clock.now(),
    )
    .await?;
    let mut v = byok_json(&info);
    v["replaced"] = json!(replaced);
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn byok_list(State(state): State<AppState>, Caller(user): Caller) -> AppResult<Json<Value>> {
    let keys = byok::list(&state.db, Owner::User(&user.id)).await?;
    Ok(Json(json!({
        "object": "list",
        "data": keys.iter().map(byok_json).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ByokSelector {
    id: Option<String>,
    provider: Option<String>,
}

async fn byok_remove(
    State(state): State<AppState>,
    Q(q): Q<ByokSelector>,
    Caller(user): Caller,
) -> AppResult<Json<Value>> {
    let which = match (&q.id, &q.provider) {
        (Some(id), None) => Which::Id(id),
        (None, Some(p)) => Which::Provider(p),
        _ => {
            return Err(AppError::bad_request(
                "Say which key to remove: ?id=<key id> or ?provider=<provider> (or DELETE /api/v1/llm/byok/keys/<key id>).",
            ))
        }
    };
    remove_own(&state, &user, which).await
}

async fn byok_remove_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Caller(user): Caller,
) -> AppResult<Json<Value>> {
    remove_own(&state, &user, Which::Id(&id)).await
}

async fn remove_own(state: &AppState, user: &User, which: Which<'_>) -> AppResult<Json<Value>> {
    let info = byok::remove(
        &state.db,
        Owner::User(&user.id),
        which,
        &format!("user:{}", user.id),
        state.clock.now(),
    )
    .await?;
    Ok(Json(
        json!({"id": info.id, "object": "byok_key", "provider": info.provider, "deleted": true}),
    ))
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

// ---- admin --------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOrg {
    id: String,
    name: String,
    plan: Plan,
}

async fn admin_create_org(
    State(state): State<AppState>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Response> {
    let req: NewOrg = parse(&body)?;
    let org = accounts::create_org(
        &state.db,
        admin.actor(),
        &req.id,
        &req.name,
        req.plan,
        state.clock.now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(org)).into_response())
}

async fn admin_list_orgs(State(state): State<AppState>, _: Admin) -> AppResult<Json<Value>> {
    Ok(Json(json!({"data": accounts::list_orgs(&state.db).await?})))
}

async fn admin_get_org(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: Admin,
) -> AppResult<Json<Value>> {
    let org = accounts::get_org(&state.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("organization '{id}' not found")))?;
    Ok(Json(json!(org)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantReq {
    /// Credits (not milli-credits); may carry up to three decimals.
    credits: serde_json::Number,
}

/// Credits from a JSON number, exactly (its decimal form, never through a float).
fn credits_to_mc(credits: &serde_json::Number) -> AppResult<i64> {
    MilliCredits::parse_credits(&credits.to_string())
        .map(|m| m.0)
        .map_err(|_| {
            AppError::bad_request("'credits' must be a number with at most three decimals")
        })
}

async fn admin_grant(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let req: GrantReq = parse(&body)?;
    let org = accounts::grant(
        &state.db,
        admin.actor(),
        &id,
        credits_to_mc(&req.credits)?,
        state.clock.now(),
    )
    .await?;
    Ok(Json(json!(org)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUserReq {
    id: String,
    org_id: String,
    plan: Plan,
    #[serde(default = "default_kind")]
    kind: String,
    #[serde(default = "default_role")]
    role: String,
}
fn default_kind() -> String {
    "user".into()
}
fn default_role() -> String {
    "member".into()
}

async fn admin_create_user(
    State(state): State<AppState>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Response> {
    let r: NewUserReq = parse(&body)?;
    let u = accounts::create_user(
        &state.db,
        admin.actor(),
        &accounts::NewUser {
            id: &r.id,
            org_id: &r.org_id,
            plan: r.plan,
            kind: &r.kind,
            role: &r.role,
        },
        state.clock.now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(u)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgFilter {
    org_id: Option<String>,
}

async fn admin_list_users(
    State(state): State<AppState>,
    Q(q): Q<OrgFilter>,
    _: Admin,
) -> AppResult<Json<Value>> {
    Ok(Json(
        json!({"data": accounts::list_users(&state.db, q.org_id.as_deref()).await?}),
    ))
}

async fn admin_set_allocation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let req: GrantReq = parse(&body)?;
    let a = accounts::set_allocation(
        &state.db,
        admin.actor(),
        &id,
        credits_to_mc(&req.credits)?,
        state.clock.now(),
    )
    .await?;
    Ok(Json(json!(a)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: Option<String>,
}

async fn admin_issue_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Response> {
    let req: NewKey = if body.is_empty() {
        NewKey::default()
    } else {
        parse(&body)?
    };
    let (key, info) = accounts::issue_api_key(
        &state.db,
        admin.actor(),
        &id,
        req.name.as_deref(),
        state.clock.now(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!({"api_key": key, "key": info, "note": "Store this key now: it is not shown again."}))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFilter {
    user_id: Option<String>,
}

async fn admin_list_keys(
    State(state): State<AppState>,
    Q(q): Q<UserFilter>,
    _: Admin,
) -> AppResult<Json<Value>> {
    Ok(Json(
        json!({"data": accounts::list_api_keys(&state.db, q.user_id.as_deref()).await?}),
    ))
}

async fn admin_revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
) -> AppResult<StatusCode> {
    accounts::revoke_api_key(&state.db, admin.actor(), &id, state.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewServiceKey {
    key: String,
    user_id: String,
}

async fn admin_add_service_key(
    State(state): State<AppState>,
    admin: Admin,
    body: Bytes,
) -> AppResult<StatusCode> {
    let r: NewServiceKey = parse(&body)?;
    accounts::add_service_key(
        &state.db,
        admin.actor(),
        &r.key,
        &r.user_id,
        state.clock.now(),
    )
    .await?;
    Ok(StatusCode::CREATED)
}

async fn admin_audit(State(state): State<AppState>, _: Admin) -> AppResult<Json<Value>> {
    Ok(Json(
        json!({"data": crate::analytics::audit_log(&state.db, 500).await?}),
    ))
}

// ---- platform provider keys -----------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlatformKeyReq {
    api_key: String,
    #[serde(default)]
    description: Option<String>,
}

impl Drop for PlatformKeyReq {
    fn drop(&mut self) {
        drop(crate::crypto::Secret::new(std::mem::take(
            &mut self.api_key,
        )));
    }
}

/// A provider's platform key as the admin sees it: the stored one (masked), else whether
/// the environment supplies one (masked), else none.
fn platform_key_json(state: &AppState, provider: &str, stored: Option<&byok::SecretInfo>) -> Value {
    match (stored, state.settings.platform_keys.get(provider)) {
        (Some(k), env) => json!({
            "provider": provider,
            "source": "stored",
            "id": k.id,
            "masked_key": k.masked_key,
            "description": k.description,
            "created_at": k.created_at,
            "rotated_at": k.rotated_at,
            "environment_key_shadowed": env.is_some(),
        }),
        (None, Some(k)) => json!({
            "provider": provider,
            "source": "environment",
            "masked_key": credentials::mask(k),
        }),
        (None, None) => json!({"provider": provider, "source": "none"}),
    }
}

async fn admin_list_provider_keys(
    State(state): State<AppState>,
    _: Admin,
) -> AppResult<Json<Value>> {
    let stored = byok::list(&state.db, Owner::Platform).await?;
    let data: Vec<Value> = state
        .catalogue
        .providers
        .values()
        .filter(|p| !p.local)
        .map(|p| {
            platform_key_json(
                &state,
                &p.name,
                stored.iter().find(|k| k.provider == p.name),
            )
        })
        .collect();
    Ok(Json(json!({"data": data})))
}

async fn admin_get_provider_key(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    _: Admin,
) -> AppResult<Json<Value>> {
    byok::check_provider(&state.catalogue, &provider)?;
    let stored = byok::list(&state.db, Owner::Platform).await?;
    Ok(Json(platform_key_json(
        &state,
        &provider,
        stored.iter().find(|k| k.provider == provider),
    )))
}

async fn admin_set_provider_key(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let req: PlatformKeyReq =
        parse_secret_body(&body, r#"{"api_key": "...", "description": "..."}"#)?;
    let (info, _) = byok::put(
        &state.db,
        &state.keyring,
        &state.catalogue,
        Owner::Platform,
        &provider,
        &req.api_key,
        req.description.as_deref(),
        admin.actor(),
        state.clock.now(),
    )
    .await?;
    Ok(Json(platform_key_json(&state, &provider, Some(&info))))
}

async fn admin_remove_provider_key(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    admin: Admin,
) -> AppResult<StatusCode> {
    byok::remove(
        &state.db,
        Owner::Platform,
        Which::Provider(&provider),
        admin.actor(),
        state.clock.now(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Period {
    /// Look back this many days from now (default 30).
    days: Option<i64>,
    limit: Option<i64>,
}

fn period(state: &AppState, q: Period, default_days: i64) -> AppResult<(i64, i64, i64)> {
    let days = q.days.unwrap_or(default_days);
    let limit = q.limit.unwrap_or(10);
    if !(1..=3660).contains(&days) || !(1..=1000).contains(&limit) {
        return Err(AppError::bad_request(
            "'days' must be 1-3660 and 'limit' 1-1000",
        ));
    }
    let now = state.clock.now();
    Ok((now - days * 86_400, now + 1, limit))
}

/// `GET /admin/v1/analytics/{report}?days=&limit=`: top-users, models, orgs.
async fn admin_analytics(
    State(state): State<AppState>,
    Path(report): Path<String>,
    Q(q): Q<Period>,
    _: Admin,
) -> AppResult<Json<Value>> {
    let Some((_, default_days)) = crate::analytics::REPORTS.iter().find(|(n, _)| *n == report)
    else {
        return Err(AppError::not_found(format!(
            "No report '{report}': top-users, models or orgs."
        )));
    };
    let (start, end, limit) = period(&state, q, *default_days)?;
    let rows = crate::analytics::report(&state.db, &report, start, end, limit).await?;
    Ok(Json(json!({ "data": rows })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanReq {
    plan: Plan,
}

async fn admin_set_user_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let req: PlanReq = parse(&body)?;
    let u =
        accounts::set_user_plan(&state.db, admin.actor(), &id, req.plan, state.clock.now()).await?;
    Ok(Json(json!(u)))
}

async fn admin_set_org_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Json<Value>> {
    let req: PlanReq = parse(&body)?;
    let o =
        accounts::set_org_plan(&state.db, admin.actor(), &id, req.plan, state.clock.now()).await?;
    Ok(Json(json!(o)))
}

async fn admin_list_service_keys(
    State(state): State<AppState>,
    _: Admin,
) -> AppResult<Json<Value>> {
    Ok(Json(
        json!({"data": accounts::list_service_keys(&state.db).await?}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceKeyReq {
    key: String,
}

/// `DELETE /admin/v1/service-keys` with `{"key": "sk-…"}`: the key itself identifies it (only
/// its digest is stored); the filter refuses it from its next snapshot on.
async fn admin_revoke_service_key(
    State(state): State<AppState>,
    admin: Admin,
    body: Bytes,
) -> AppResult<StatusCode> {
    let r: ServiceKeyReq = parse(&body)?;
    accounts::revoke_service_key(&state.db, admin.actor(), &r.key, state.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}
