//! The caller's own provider keys (`/api/v1/llm/byok/keys`). Every handler takes
//! [`Caller`]; a caller reaches only their own keys.

use super::extract::{body_first, parse_secret_body, Q};
use super::identity::Caller;
use super::Routes;
use crate::accounts::User;
use crate::byok::{self, Owner, Which};
use crate::error::{AppError, AppResult, ErrorEnvelope};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::Json;
use serde::{Deserialize, Serialize};

pub(super) fn router() -> Routes {
    Routes::default()
        .route(
            "/api/v1/llm/byok/keys",
            get(byok_list)
                .post(body_first(byok_add))
                .delete(byok_remove),
        )
        .route("/api/v1/llm/byok/keys/{id}", delete(byok_remove_id))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct KeyMetadata {
    #[serde(default)]
    description: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
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

/// A key as its owner sees it. `replaced` appears only in the answer to adding one (the
/// id of the key it replaced, or null).
#[derive(Serialize, utoipa::ToSchema)]
struct ByokKeyJson {
    id: String,
    object: &'static str,
    provider: String,
    masked_key: String,
    metadata: ByokMetadataJson,
    created_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    replaced: Option<Option<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ByokMetadataJson {
    description: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ByokKeyList {
    object: &'static str,
    data: Vec<ByokKeyJson>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ByokKeyDeleted {
    id: String,
    object: &'static str,
    provider: String,
    deleted: bool,
}

fn byok_json(k: &byok::SecretInfo) -> ByokKeyJson {
    ByokKeyJson {
        id: k.id.clone(),
        object: "byok_key",
        provider: k.provider.clone(),
        masked_key: k.masked_key.clone(),
        metadata: ByokMetadataJson {
            description: k.description.clone(),
        },
        created_at: k.created_at,
        replaced: None,
    }
}

#[utoipa::path(post, path = "/api/v1/llm/byok/keys", tag = "byok", summary = "Store your own provider key (encrypted; replaces the one for that provider)", request_body = NewByokKey, responses((status = 201, body = ByokKeyJson), (status = 400, description = "Invalid request", body = ErrorEnvelope), (status = 401, description = "Missing or invalid credentials", body = ErrorEnvelope)), security(("api_key" = []), ("session" = []), ("jwt" = [])))]
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
    let v = ByokKeyJson {
        replaced: Some(replaced),
        ..byok_json(&info)
    };
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[utoipa::path(get, path = "/api/v1/llm/byok/keys", tag = "byok", summary = "Your stored keys, masked", responses((status = 200, body = ByokKeyList), (status = 400, description = "Invalid request", body = ErrorEnvelope), (status = 401, description = "Missing or invalid credentials", body = ErrorEnvelope)), security(("api_key" = []), ("session" = []), ("jwt" = [])))]
async fn byok_list(
    State(state): State<AppState>,
    Caller(user): Caller,
) -> AppResult<Json<ByokKeyList>> {
    let keys = byok::list(&state.db, Owner::User(&user.id)).await?;
    Ok(Json(ByokKeyList {
        object: "list",
        data: keys.iter().map(byok_json).collect(),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ByokSelector {
    id: Option<String>,
    provider: Option<String>,
}

#[utoipa::path(delete, path = "/api/v1/llm/byok/keys", tag = "byok", summary = "Remove your key for a provider (or by id)", params(ByokSelector), responses((status = 200, body = ByokKeyDeleted), (status = 400, description = "Invalid request", body = ErrorEnvelope), (status = 401, description = "Missing or invalid credentials", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("api_key" = []), ("session" = []), ("jwt" = [])))]
async fn byok_remove(
    State(state): State<AppState>,
    Q(q): Q<ByokSelector>,
    Caller(user): Caller,
) -> AppResult<Json<ByokKeyDeleted>> {
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

#[utoipa::path(delete, path = "/api/v1/llm/byok/keys/{id}", tag = "byok", summary = "Remove one of your keys by id", params(("id" = String, Path)), responses((status = 200, body = ByokKeyDeleted), (status = 400, description = "Invalid request", body = ErrorEnvelope), (status = 401, description = "Missing or invalid credentials", body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)), security(("api_key" = []), ("session" = []), ("jwt" = [])))]
async fn byok_remove_id(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Caller(user): Caller,
) -> AppResult<Json<ByokKeyDeleted>> {
    remove_own(&state, &user, Which::Id(&id)).await
}

async fn remove_own(
    state: &AppState,
    user: &User,
    which: Which<'_>,
) -> AppResult<Json<ByokKeyDeleted>> {
    let info = byok::remove(
        &state.db,
        Owner::User(&user.id),
        which,
        &format!("user:{}", user.id),
        state.clock.now(),
    )
    .await?;
    Ok(Json(ByokKeyDeleted {
        id: info.id,
        object: "byok_key",
        provider: info.provider,
        deleted: true,
    }))
}

/// This surface's entries in the OpenAPI document (`/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(byok_add, byok_list, byok_remove, byok_remove_id))]
pub(super) struct Api;
