//! Provider and key routing: which model serves a call, through which provider, with whose
//! key. The caller's own keys come first: a key for the model's provider, then an
//! OpenRouter key (which serves any cloud chat model, and any OpenRouter model id outside
//! the catalogue). A stored key that cannot be opened is never used and never silently
//! replaced by a platform key: the call is refused. Otherwise the plan's tiers decide, and
//! the platform key serves: a stored platform key before the environment's.

use crate::accounts::User;
use crate::byok::{CallKeys, StoredSecret};
use crate::catalogue::{is_openrouter_model_id, Catalogue, Model, ModelKind, Provider, OPENROUTER};
use crate::crypto::{Keyring, OpenError, Secret};
use crate::error::AppError;
use opsgate_core::contract::{AuthorizeRequest, CompletionLimit, Endpoint};
use opsgate_core::plan::Plan;
use opsgate_core::pricing::Price;
use opsgate_core::ErrorKind;
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

/// Where an authorized call goes, and with whose key.
pub(super) struct Route<'c> {
    /// The model id the call is logged under (catalogue id, or an OpenRouter id).
    pub model_id: String,
    pub price: Price,
    /// The catalogue's completion bound; `None` for models outside the catalogue.
    pub max_output_tokens: Option<u64>,
    /// The catalogue's bound for one image part in a prompt (0 outside the catalogue, whose
    /// calls are BYOK and hold nothing).
    pub image_input_tokens: u64,
    pub completion_limit: CompletionLimit,
    /// The model takes `temperature` (the guide's default is sent when the client sets none).
    pub takes_temperature: bool,
    pub provider: &'c Provider,
    pub upstream_model: String,
    pub api_key: Secret,
    /// The caller's own key: no credits.
    pub byok: bool,
    /// An embedding model's default vector size (catalogue); `None` elsewhere.
    pub dimensions: Option<u64>,
}

impl<'c> Route<'c> {
    /// A catalogue model through `provider` with `api_key`: its price and bounds come from
    /// the catalogue entry.
    fn catalogue(
        model: &Model,
        provider: &'c Provider,
        upstream_model: String,
        api_key: Secret,
        byok: bool,
    ) -> Self {
        Route {
            model_id: model.id.clone(),
            price: model.price,
            max_output_tokens: Some(model.max_output_tokens),
            image_input_tokens: model.image_input_tokens,
            completion_limit: model.completion_limit,
            takes_temperature: model.temperature,
            provider,
            upstream_model,
            api_key,
            byok,
            dimensions: model.dimensions,
        }
    }
}

fn endpoint_kind(e: Endpoint) -> ModelKind {
    match e {
        Endpoint::ChatCompletions => ModelKind::Chat,
        Endpoint::ImageGenerations => ModelKind::Image,
        Endpoint::Embeddings => ModelKind::Embedding,
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

/// The caller's own keys, and how to open one of them.
struct OwnKeys<'k> {
    stored: Vec<StoredSecret>,
    keyring: &'k Keyring,
}

/// The platform's stored keys (a stored key wins over the environment's).
struct PlatformKeys(Vec<StoredSecret>);

impl OwnKeys<'_> {
    fn has(&self, provider: &str) -> bool {
        self.stored.iter().any(|s| s.info.provider == provider)
    }

    fn open(&self, provider: &str) -> Result<Secret, AppError> {
        let s = self
            .stored
            .iter()
            .find(|s| s.info.provider == provider)
            .ok_or_else(|| AppError::internal("a BYOK route without its key"))?;
        s.open(self.keyring).map_err(|e| unusable_key(provider, &e))
    }
}

/// Decides the model, the provider and the key (see the module's rules).
pub(super) fn route<'c>(
    routing: &Routing<'c>,
    user: &User,
    keys: CallKeys,
    req: &AuthorizeRequest,
) -> Result<Route<'c>, AppError> {
    let CallKeys { own, platform } = keys;
    let own = OwnKeys {
        stored: own,
        keyring: routing.keyring,
    };
    let kind = endpoint_kind(req.endpoint);
    let Some(model) = choose_model(routing.catalogue, &own, user, req, kind)? else {
        return outside_catalogue(routing.catalogue, &own, req, kind);
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
    if let Some(route) = through_own_key(routing.catalogue, &own, model)? {
        return Ok(route);
    }
    through_platform_key(routing, &PlatformKeys(platform), user, model)
}

/// The catalogue model the call names or the plan picks; `None` for an OpenRouter model id
/// outside the catalogue that the caller's OpenRouter key may serve.
fn choose_model<'c>(
    catalogue: &'c Catalogue,
    own: &OwnKeys<'_>,
    user: &User,
    req: &AuthorizeRequest,
    kind: ModelKind,
) -> Result<Option<&'c Model>, AppError> {
    let has = |p: &str| own.has(p);
    match &req.model {
        Some(id) => match catalogue.model(id) {
            Some(m) => Ok(Some(m)),
            None if has(OPENROUTER)
                && catalogue.providers.contains_key(OPENROUTER)
                && is_openrouter_model_id(id) =>
            {
                Ok(None)
            }
            None => Err(AppError::new(
                ErrorKind::NotFound,
                format!("The model '{id}' does not exist. GET /api/v1/llm/models lists the models you can use."),
            )),
        },
        None => catalogue
            .choose_where(kind, req.power_level, req.task_type, req.privacy_required, |m| {
                catalogue.allows(user.plan, m) || !catalogue.byok_routes(m, has).is_empty()
            })
            .map(Some)
            .ok_or_else(|| {
                AppError::forbidden(format!(
                    "No model on the {} plan can serve this request{}.",
                    user.plan.as_str(),
                    if req.privacy_required { " with privacy_required (local models only)" } else { "" }
                ))
            }),
    }
}

/// An OpenRouter model outside the catalogue, through the caller's OpenRouter key.
fn outside_catalogue<'c>(
    catalogue: &'c Catalogue,
    own: &OwnKeys<'_>,
    req: &AuthorizeRequest,
    kind: ModelKind,
) -> Result<Route<'c>, AppError> {
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
    Ok(Route {
        api_key: own.open(OPENROUTER)?,
        model_id: id.clone(),
        price: Price::default(),
        max_output_tokens: None,
        image_input_tokens: 0,
        completion_limit: CompletionLimit::MaxTokens,
        takes_temperature: false,
        provider,
        upstream_model: id,
        byok: true,
        dimensions: None,
    })
}

/// A catalogue model through one of the caller's own keys: `None` when no key of theirs
/// reaches it; refused when every key that does cannot be opened.
fn through_own_key<'c>(
    catalogue: &'c Catalogue,
    own: &OwnKeys<'_>,
    model: &Model,
) -> Result<Option<Route<'c>>, AppError> {
    let routes = catalogue.byok_routes(model, |p| own.has(p));
    if routes.is_empty() {
        return Ok(None);
    }
    let mut refusal = None;
    for (provider, upstream_model) in routes {
        match own.open(&provider.name) {
            Ok(api_key) => {
                return Ok(Some(Route::catalogue(
                    model,
                    provider,
                    upstream_model,
                    api_key,
                    true,
                )))
            }
            Err(e) => refusal = refusal.or(Some(e)),
        }
    }
    Err(refusal.unwrap_or_else(|| AppError::internal("no BYOK route")))
}

/// A catalogue model the plan allows, through the platform's key for its provider.
fn through_platform_key<'c>(
    routing: &Routing<'c>,
    platform: &PlatformKeys,
    user: &User,
    model: &Model,
) -> Result<Route<'c>, AppError> {
    let catalogue = routing.catalogue;
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
    // The byok plan calls cloud providers with the caller's own keys only (a local model
    // needs none): never with the platform's, so never for credits.
    if user.plan == Plan::Byok && provider.key_env.is_some() {
        return Err(AppError::forbidden(format!(
            "The byok plan calls providers with your own keys, and you have none that serves '{}'. Add one (POST /api/v1/llm/byok/keys: OpenRouter, OpenAI, Anthropic or Google) and retry.",
            model.id
        )));
    }
    let api_key = platform_key(routing, platform, provider)?;
    Ok(Route::catalogue(
        model,
        provider,
        model.provider_model.clone(),
        api_key,
        false,
    ))
}

/// The platform's key for `provider`: the stored one, else the environment's. A stored key
/// that cannot be opened is logged and passed over.
fn platform_key(
    routing: &Routing<'_>,
    platform: &PlatformKeys,
    provider: &Provider,
) -> Result<Secret, AppError> {
    let stored = platform
        .0
        .iter()
        .find(|s| s.info.provider == provider.name)
        .and_then(|s| s.open(routing.keyring).ok());
    match (stored, routing.platform_keys.get(&provider.name)) {
        (Some(k), _) => Ok(k),
        (None, Some(k)) => Ok(Secret::new(k.clone())),
        // A provider without a key variable in the catalogue (a local vLLM/Ollama provider)
        // takes no key: it is served with an empty one, never refused for lacking one.
        (None, None) if provider.key_env.is_none() => Ok(Secret::new(String::new())),
        (None, None) => Err(AppError::new(
            ErrorKind::Unavailable,
            format!(
                "The provider '{}' is not configured on this gateway.",
                provider.name
            ),
        )),
    }
}
