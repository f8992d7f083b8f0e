//! The admin surface (`/admin/v1/*`): organisations, users, keys, plans, provider keys,
//! the audit log and analytics. Every handler takes [`Admin`], whose actor the audit log
//! records.

use super::extract::{body_first, parse, parse_secret_body, Q};
use super::identity::Admin;
use super::Routes;
use crate::accounts::{self, AllocationView, Organization, OrganizationView, User};
use crate::analytics::Report;
use crate::analytics::{AuditEntry, DailyUsage};
use crate::byok::{self, Owner, Which};
use crate::error::{AppError, AppResult, ErrorEnvelope};
use crate::keys::{self, ApiKeyInfo, ServiceKeyInfo};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Json;
use opsgate_core::credentials;
use opsgate_core::money::MilliCredits;
use opsgate_core::plan::Plan;
use serde::{Deserialize, Serialize};

pub(super) fn router() -> Routes {
    Routes::default()
        .route(
            "/admin/v1/orgs",
            post(body_first(admin_create_org)).get(admin_list_orgs),
        )
        .route("/admin/v1/orgs/{id}", get(admin_get_org))
        .route("/admin/v1/orgs/{id}/grants", post(body_first(admin_grant)))
        .route(
            "/admin/v1/orgs/{id}/allocations",
            get(admin_org_allocations),
        )
        .route(
            "/admin/v1/orgs/{id}/plan",
            put(body_first(admin_set_org_plan)),
        )
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
        .route(
            "/admin/v1/users/{id}/plan",
            put(body_first(admin_set_user_plan)),
        )
        .route("/admin/v1/users/{id}/byok-keys", get(admin_list_byok_keys))
        .route(
            "/admin/v1/users/{id}/byok-keys/{key_id}",
            delete(admin_remove_byok_key),
        )
        .route("/admin/v1/api-keys", get(admin_list_keys))
        .route("/admin/v1/api-keys/{id}", delete(admin_revoke_key))
        .route(
            "/admin/v1/service-keys",
            post(body_first(admin_add_service_key))
                .get(admin_list_service_keys)
                .delete(body_first(admin_revoke_service_key)),
        )
        .route(
            "/admin/v1/service-keys/mint",
            post(body_first(admin_mint_service_key)),
        )
        .route("/admin/v1/audit", get(admin_audit))
        .route("/admin/v1/analytics/{report}", get(admin_analytics))
        .route("/admin/v1/usage/daily", get(admin_daily_usage))
        .route("/admin/v1/provider-keys", get(admin_list_provider_keys))
        .route(
            "/admin/v1/provider-keys/{provider}",
            put(body_first(admin_set_provider_key))
                .get(admin_get_provider_key)
                .delete(admin_remove_provider_key),
        )
}

/// A listing: `{"data": …}`.
#[derive(Serialize, utoipa::ToSchema)]
struct Data<T> {
    data: T,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewOrg {
    id: String,
    name: String,
    #[schema(value_type = String, example = "starter")]
    plan: Plan,
    /// Credits granted at creation, as `org create --credits` does.
    #[serde(default)]
    #[schema(value_type = Option<f64>, example = 500)]
    credits: Option<serde_json::Number>,
}

#[utoipa::path(post, path = "/admin/v1/orgs", tag = "admin", summary = "Create an organisation (optionally with credits)", request_body = NewOrg, responses((status = 201, description = "Created", body = OrganizationView), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 400, description = "Invalid, or the id exists", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_create_org(
    State(state): State<AppState>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Response> {
    let req: NewOrg = parse(&body)?;
    let credits = req.credits.as_ref().map(credits_to_mc).transpose()?;
    let mut org = accounts::create_org(
        &state.db,
        admin.actor(),
        &req.id,
        &req.name,
        req.plan,
        state.clock.now(),
    )
    .await?;
    if let Some(mc) = credits.filter(|mc| *mc != 0) {
        org = accounts::grant(&state.db, admin.actor(), &org.id, mc, state.clock.now()).await?;
    }
    Ok((StatusCode::CREATED, Json(org)).into_response())
}

#[utoipa::path(get, path = "/admin/v1/orgs", tag = "admin", summary = "List organisations with their balances", responses((status = 200, body = Data<Vec<OrganizationView>>), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_list_orgs(
    State(state): State<AppState>,
    _: Admin,
) -> AppResult<Json<Data<Vec<Organization>>>> {
    Ok(Json(Data {
        data: accounts::list_orgs(&state.db).await?,
    }))
}

#[utoipa::path(get, path = "/admin/v1/orgs/{id}", tag = "admin", summary = "One organisation", params(("id" = String, Path, description = "Organisation id")), responses((status = 200, body = OrganizationView), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_get_org(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: Admin,
) -> AppResult<Json<Organization>> {
    let org = accounts::get_org(&state.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("organization '{id}' not found")))?;
    Ok(Json(org))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GrantReq {
    /// Credits (not milli-credits); may carry up to three decimals.
    #[schema(value_type = f64, example = 500)]
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

#[utoipa::path(post, path = "/admin/v1/orgs/{id}/grants", tag = "admin", summary = "Add credits to the pool (negative removes)", params(("id" = String, Path)), request_body = GrantReq, responses((status = 200, body = OrganizationView), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_grant(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Json<Organization>> {
    let req: GrantReq = parse(&body)?;
    let org = accounts::grant(
        &state.db,
        admin.actor(),
        &id,
        credits_to_mc(&req.credits)?,
        state.clock.now(),
    )
    .await?;
    Ok(Json(org))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewUserReq {
    id: String,
    /// `org` too: the CLI's name for it.
    #[serde(alias = "org")]
    org_id: String,
    #[schema(value_type = String, example = "starter")]
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

#[utoipa::path(post, path = "/admin/v1/users", tag = "admin", summary = "Create a user or a service user", request_body = NewUserReq, responses((status = 201, body = User), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 400, description = "Invalid, the id exists, or the plan is above the organisation's", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct OrgFilter {
    /// `?org=` too: the CLI's name for it.
    #[serde(alias = "org")]
    org_id: Option<String>,
}

#[utoipa::path(get, path = "/admin/v1/users", tag = "admin", summary = "List users", params(OrgFilter), responses((status = 200, body = Data<Vec<User>>), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_list_users(
    State(state): State<AppState>,
    Q(q): Q<OrgFilter>,
    _: Admin,
) -> AppResult<Json<Data<Vec<User>>>> {
    Ok(Json(Data {
        data: accounts::list_users(&state.db, q.org_id.as_deref()).await?,
    }))
}

#[utoipa::path(put, path = "/admin/v1/users/{id}/allocation", tag = "admin", summary = "Set the user's allocation: a cap on what they may spend of the pool", params(("id" = String, Path)), request_body = GrantReq, responses((status = 200, description = "The allocation (with `warning` when the caps add up to more than the pool)", body = AllocationView), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_set_allocation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Json<serde_json::Value>> {
    let req: GrantReq = parse(&body)?;
    let a = accounts::set_allocation(
        &state.db,
        admin.actor(),
        &id,
        credits_to_mc(&req.credits)?,
        state.clock.now(),
    )
    .await?;
    let mut out = serde_json::to_value(&a).map_err(AppError::internal)?;
    if let Some(w) = accounts::overcommitment(&state.db, &a.org_id).await? {
        out["warning"] = w.into();
    }
    Ok(Json(out))
}

/// A newly issued API key: the only time its secret is shown.
#[derive(Serialize, utoipa::ToSchema)]
struct IssuedKey {
    api_key: String,
    key: ApiKeyInfo,
    note: &'static str,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: Option<String>,
}

#[utoipa::path(post, path = "/admin/v1/users/{id}/api-keys", tag = "admin", summary = "Issue a uc_ API key", params(("id" = String, Path)), request_body(content = Option<NewKey>), responses((status = 201, description = "The key, shown once", body = IssuedKey), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
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
    let (key, info) = keys::issue_api_key(
        &state.db,
        admin.actor(),
        &id,
        req.name.as_deref(),
        state.clock.now(),
    )
    .await?;
    let issued = IssuedKey {
        api_key: key,
        key: info,
        note: "Store this key now: it is not shown again.",
    };
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UserFilter {
    /// `?user=` too: the CLI's name for it.
    #[serde(alias = "user")]
    user_id: Option<String>,
}

#[utoipa::path(get, path = "/admin/v1/api-keys", tag = "admin", summary = "List API keys (never the keys)", params(UserFilter), responses((status = 200, body = Data<Vec<ApiKeyInfo>>), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_list_keys(
    State(state): State<AppState>,
    Q(q): Q<UserFilter>,
    _: Admin,
) -> AppResult<Json<Data<Vec<ApiKeyInfo>>>> {
    Ok(Json(Data {
        data: keys::list_api_keys(&state.db, q.user_id.as_deref()).await?,
    }))
}

#[utoipa::path(delete, path = "/admin/v1/api-keys/{id}", tag = "admin", summary = "Revoke an API key", params(("id" = String, Path, description = "Key id")), responses((status = 204, description = "Revoked"), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
) -> AppResult<StatusCode> {
    keys::revoke_api_key(&state.db, admin.actor(), &id, state.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct NewServiceKey {
    key: String,
    user_id: String,
    /// Re-activate a revoked key (refused without it).
    #[serde(default)]
    allow_revoked: bool,
}

#[utoipa::path(post, path = "/admin/v1/service-keys", tag = "admin", summary = "Bind a service key to a service user", request_body = NewServiceKey, responses((status = 201, description = "Bound (`guessable` and `warning` when the key is weak)", body = Object), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_add_service_key(
    State(state): State<AppState>,
    admin: Admin,
    body: Bytes,
) -> AppResult<(StatusCode, Json<serde_json::Value>)> {
    let r: NewServiceKey = parse(&body)?;
    let bound = keys::bind_service_key(
        &state.db,
        admin.actor(),
        &r.key,
        &r.user_id,
        state.clock.now(),
        r.allow_revoked,
    )
    .await?;
    let mut out = serde_json::json!({"user_id": r.user_id, "guessable": bound.guessable});
    if bound.guessable {
        out["warning"] = keys::GUESSABLE_SERVICE_KEY.into();
    }
    Ok((StatusCode::CREATED, Json(out)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Entries, newest first (default 100, at most 10000), as `opsgate audit --limit`.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/admin/v1/audit", tag = "admin", summary = "The audit log, newest first", params(AuditQuery), responses((status = 200, body = Data<Vec<AuditEntry>>), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_audit(
    State(state): State<AppState>,
    Q(q): Q<AuditQuery>,
    _: Admin,
) -> AppResult<Json<Data<Vec<AuditEntry>>>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(AppError::bad_request("'limit' must be between 1 and 10000"));
    }
    Ok(Json(Data {
        data: crate::analytics::audit_log(&state.db, limit).await?,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MintReq {
    /// The service's name (letters, digits, '-' and '_').
    service: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Minted {
    key: String,
    note: &'static str,
}

/// A strong service key for a service, as `opsgate service-key mint` prints it; nothing is
/// stored (bind it with `POST /admin/v1/service-keys`).
#[utoipa::path(post, path = "/admin/v1/service-keys/mint", tag = "admin", summary = "A strong new service key (not stored; bind it next)", request_body = MintReq, responses((status = 200, body = Minted), (status = 400, body = ErrorEnvelope), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_mint_service_key(
    State(state): State<AppState>,
    _: Admin,
    body: Bytes,
) -> AppResult<Response> {
    let req: MintReq = parse(&body)?;
    let key = keys::mint_service_key(&req.service, opsgate_core::time::year(state.clock.now()))?;
    let mut resp = Json(Minted {
        key,
        note: "Not stored: bind it with POST /admin/v1/service-keys, then keep it secret.",
    })
    .into_response();
    resp.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

// ---- platform provider keys -----------------------------------------------------------

#[derive(Deserialize, utoipa::ToSchema)]
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

/// A provider's platform key as the admin sees it, by `source`: the stored one (masked),
/// else the environment's (masked), else none.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(tag = "source", rename_all = "lowercase")]
enum PlatformKeyJson {
    Stored {
        provider: String,
        id: String,
        masked_key: String,
        description: Option<String>,
        created_at: i64,
        rotated_at: Option<i64>,
        environment_key_shadowed: bool,
    },
    Environment {
        provider: String,
        masked_key: String,
    },
    #[serde(rename = "none")]
    Absent { provider: String },
}

fn platform_key_json(
    state: &AppState,
    provider: &str,
    stored: Option<&byok::SecretInfo>,
) -> PlatformKeyJson {
    let provider = provider.to_string();
    match (stored, state.settings.platform_keys.get(&provider)) {
        (Some(k), env) => PlatformKeyJson::Stored {
            provider,
            id: k.id.clone(),
            masked_key: k.masked_key.clone(),
            description: k.description.clone(),
            created_at: k.created_at,
            rotated_at: k.rotated_at,
            environment_key_shadowed: env.is_some(),
        },
        (None, Some(k)) => PlatformKeyJson::Environment {
            masked_key: credentials::mask(k),
            provider,
        },
        (None, None) => PlatformKeyJson::Absent { provider },
    }
}

#[utoipa::path(get, path = "/admin/v1/provider-keys", tag = "admin", summary = "The platform's provider keys, masked", responses((status = 200, body = Data<Vec<PlatformKeyJson>>), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_list_provider_keys(
    State(state): State<AppState>,
    _: Admin,
) -> AppResult<Json<Data<Vec<PlatformKeyJson>>>> {
    let stored = byok::list(&state.db, Owner::Platform).await?;
    let data: Vec<PlatformKeyJson> = state
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
    Ok(Json(Data { data }))
}

#[utoipa::path(get, path = "/admin/v1/provider-keys/{provider}", tag = "admin", summary = "One provider's platform key, masked", params(("provider" = String, Path)), responses((status = 200, body = PlatformKeyJson), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_get_provider_key(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    _: Admin,
) -> AppResult<Json<PlatformKeyJson>> {
    byok::check_provider(&state.catalogue, &provider)?;
    let stored = byok::list(&state.db, Owner::Platform).await?;
    Ok(Json(platform_key_json(
        &state,
        &provider,
        stored.iter().find(|k| k.provider == provider),
    )))
}

#[utoipa::path(put, path = "/admin/v1/provider-keys/{provider}", tag = "admin", summary = "Store (or rotate) the platform's key for a provider, encrypted", params(("provider" = String, Path)), request_body = PlatformKeyReq, responses((status = 200, body = PlatformKeyJson), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_set_provider_key(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Json<PlatformKeyJson>> {
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

#[utoipa::path(delete, path = "/admin/v1/provider-keys/{provider}", tag = "admin", summary = "Remove the stored platform key of a provider", params(("provider" = String, Path)), responses((status = 204, description = "Removed"), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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
#[utoipa::path(get, path = "/admin/v1/analytics/{report}", tag = "admin", summary = "The integration guide's Appendix C reports", params(("report" = String, Path, description = "top-users, models or orgs"), Period), responses((status = 200, body = Data<Report>), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_analytics(
    State(state): State<AppState>,
    Path(report): Path<String>,
    Q(q): Q<Period>,
    _: Admin,
) -> AppResult<Json<Data<Option<crate::analytics::Report>>>> {
    let Some((_, default_days)) = crate::analytics::REPORTS.iter().find(|(n, _)| *n == report)
    else {
        return Err(AppError::not_found(format!(
            "No report '{report}': top-users, models or orgs."
        )));
    };
    let (start, end, limit) = period(&state, q, *default_days)?;
    let rows = crate::analytics::report(&state.db, &report, start, end, limit).await?;
    Ok(Json(Data { data: rows }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DailyQuery {
    /// Days, ending with today (UTC): 1-366, default 30.
    days: Option<i64>,
    /// The breakdown: org (default), user, model or provider.
    by: Option<String>,
}

/// `GET /admin/v1/usage/daily?days=&by=`: calls and credits per UTC day and per group — the
/// console's charts, `opsgate usage daily` on the command line.
#[utoipa::path(get, path = "/admin/v1/usage/daily", tag = "admin", summary = "Calls and credits per day, by organisation, user, model or provider", params(DailyQuery), responses((status = 200, description = "One row per day and group that had usage, oldest first", body = Data<Vec<DailyUsage>>), (status = 400, body = ErrorEnvelope), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_daily_usage(
    State(state): State<AppState>,
    Q(q): Q<DailyQuery>,
    _: Admin,
) -> AppResult<Json<Data<Vec<DailyUsage>>>> {
    let days = q.days.unwrap_or(30);
    if !(1..=366).contains(&days) {
        return Err(AppError::bad_request("'days' must be 1-366"));
    }
    let by = q.by.as_deref().unwrap_or("org");
    let rows = crate::analytics::daily_usage(&state.db, by, days, state.clock.now())
        .await?
        .ok_or_else(|| AppError::bad_request("'by' must be org, user, model or provider"))?;
    Ok(Json(Data { data: rows }))
}

#[utoipa::path(get, path = "/admin/v1/orgs/{id}/allocations", tag = "admin", summary = "The allocations of an organisation's users, and how much of each is used", params(("id" = String, Path)), responses((status = 200, body = Data<Vec<AllocationView>>), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_org_allocations(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: Admin,
) -> AppResult<Json<Data<Vec<accounts::Allocation>>>> {
    if accounts::get_org(&state.db, &id).await?.is_none() {
        return Err(AppError::not_found(format!(
            "organization '{id}' not found"
        )));
    }
    Ok(Json(Data {
        data: accounts::list_allocations(&state.db, &id).await?,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PlanReq {
    #[schema(value_type = String, example = "starter")]
    plan: Plan,
}

/// A user's own provider keys, masked: an admin sees which they stored and may remove one
/// (a key the user reports leaked, say); adding or rotating them is the user's own act
/// (`/api/v1/llm/byok/keys`).
#[utoipa::path(get, path = "/admin/v1/users/{id}/byok-keys", tag = "admin", summary = "A user's own (BYOK) provider keys, masked", params(("id" = String, Path)), responses((status = 200, body = Data<Vec<byok::SecretInfo>>), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_list_byok_keys(
    State(state): State<AppState>,
    Path(id): Path<String>,
    _: Admin,
) -> AppResult<Json<Data<Vec<byok::SecretInfo>>>> {
    if accounts::get_user(&state.db, &id).await?.is_none() {
        return Err(AppError::not_found(format!("user '{id}' not found")));
    }
    Ok(Json(Data {
        data: byok::list(&state.db, Owner::User(&id)).await?,
    }))
}

#[utoipa::path(delete, path = "/admin/v1/users/{id}/byok-keys/{key_id}", tag = "admin", summary = "Remove one of a user's own (BYOK) provider keys", params(("id" = String, Path), ("key_id" = String, Path)), responses((status = 204, description = "Removed"), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_remove_byok_key(
    State(state): State<AppState>,
    Path((id, key_id)): Path<(String, String)>,
    admin: Admin,
) -> AppResult<StatusCode> {
    byok::remove(
        &state.db,
        Owner::User(&id),
        Which::Id(&key_id),
        admin.actor(),
        state.clock.now(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/admin/v1/users/{id}/plan", tag = "admin", summary = "Change the user's plan", params(("id" = String, Path)), request_body = PlanReq, responses((status = 200, body = User), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_set_user_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Json<User>> {
    let req: PlanReq = parse(&body)?;
    let u =
        accounts::set_user_plan(&state.db, admin.actor(), &id, req.plan, state.clock.now()).await?;
    Ok(Json(u))
}

#[utoipa::path(put, path = "/admin/v1/orgs/{id}/plan", tag = "admin", summary = "Change the organisation's plan (its tier)", params(("id" = String, Path)), request_body = PlanReq, responses((status = 200, body = OrganizationView), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_set_org_plan(
    State(state): State<AppState>,
    Path(id): Path<String>,
    admin: Admin,
    body: Bytes,
) -> AppResult<Json<Organization>> {
    let req: PlanReq = parse(&body)?;
    let o =
        accounts::set_org_plan(&state.db, admin.actor(), &id, req.plan, state.clock.now()).await?;
    Ok(Json(o))
}

#[utoipa::path(get, path = "/admin/v1/service-keys", tag = "admin", summary = "Service keys: names and owners, never digests", responses((status = 200, body = Data<Vec<ServiceKeyInfo>>), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_list_service_keys(
    State(state): State<AppState>,
    _: Admin,
) -> AppResult<Json<Data<Vec<ServiceKeyInfo>>>> {
    Ok(Json(Data {
        data: keys::list_service_keys(&state.db).await?,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ServiceKeyReq {
    key: String,
}

/// `DELETE /admin/v1/service-keys` with `{"key": "sk-…"}`: the key itself identifies it (only
/// its digest is stored); the filter refuses it from its next snapshot on.
#[utoipa::path(delete, path = "/admin/v1/service-keys", tag = "admin", summary = "Revoke a service key", request_body = ServiceKeyReq, responses((status = 204, description = "Revoked"), (status = 401, description = "No admin token", body = ErrorEnvelope), (status = 403, description = "Not an admin (code admin_required)", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("admin_token" = []), ("jwt" = [])))]
async fn admin_revoke_service_key(
    State(state): State<AppState>,
    admin: Admin,
    body: Bytes,
) -> AppResult<StatusCode> {
    let r: ServiceKeyReq = parse(&body)?;
    keys::revoke_service_key(&state.db, admin.actor(), &r.key, state.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// This surface's entries in the OpenAPI document (`/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    admin_create_org,
    admin_list_orgs,
    admin_get_org,
    admin_grant,
    admin_create_user,
    admin_list_users,
    admin_set_allocation,
    admin_issue_key,
    admin_list_keys,
    admin_revoke_key,
    admin_add_service_key,
    admin_list_provider_keys,
    admin_get_provider_key,
    admin_set_provider_key,
    admin_remove_provider_key,
    admin_list_byok_keys,
    admin_remove_byok_key,
    admin_analytics,
    admin_daily_usage,
    admin_org_allocations,
    admin_set_user_plan,
    admin_set_org_plan,
    admin_audit,
    admin_mint_service_key,
    admin_list_service_keys,
    admin_revoke_service_key
))]
pub(super) struct Api;
