//! The wire contract between the filter and the control plane (`/internal/v1/*`).
//! Both sides compile these types, so they cannot drift apart.

use crate::error::{ApiError, ErrorKind};
use crate::money::MilliCredits;
use crate::plan::{PowerLevel, TaskType};
use crate::pricing::{RateCard, Usage};
use serde::{Deserialize, Serialize};

pub const SNAPSHOT_PATH: &str = "/internal/v1/snapshot";
pub const AUTHORIZE_PATH: &str = "/internal/v1/authorize";
pub const SETTLE_PATH: &str = "/internal/v1/settle";

/// What the filter keeps locally and refreshes on its tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Snapshot {
    /// Changes whenever the content changes (a digest of it).
    pub version: String,
    /// Service keys, as SHA-256 digests; never the keys themselves.
    pub service_keys: Vec<ServiceKeyEntry>,
    /// The model catalogue: a request naming a model that is not here (and is not an
    /// OpenRouter-style `vendor/model` id) is refused at the edge, without a callout.
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// The plan table, for reference at the edge.
    #[serde(default)]
    pub plans: Vec<PlanEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    pub id: String,
    pub provider: String,
    pub tier: String,
    /// `chat`, `image` or `embedding`.
    pub kind: String,
    pub local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    pub plan: String,
    pub daily_calls: Option<u64>,
    pub period_calls: Option<u64>,
    pub markup_percent: i64,
    pub tiers: Vec<String>,
}

impl Snapshot {
    /// Whether a requested model id can be served at all: a catalogue model, or (for
    /// callers with an OpenRouter key) a `vendor/model` id. An empty catalogue knows nothing
    /// and refuses nothing.
    pub fn knows_model(&self, id: &str) -> bool {
        self.models.is_empty() || id.contains('/') || self.models.iter().any(|m| m.id == id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceKeyEntry {
    pub digest: String,
    /// The service user the key is bound to.
    pub user_id: String,
}

/// Who is calling, as established by the filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Principal {
    /// A service key the filter verified against the snapshot.
    Service { user_id: String },
    /// A user API key; the control plane looks its digest up.
    ApiKey { digest: String },
    /// A browser session; the control plane looks its digest up.
    Session { digest: String },
    /// An OIDC access token the filter verified (signature, issuer, audience, lifetime).
    Jwt {
        /// The token's `sub`.
        subject: String,
        #[serde(default)]
        email: Option<String>,
        /// `realm_access.roles` and `roles`.
        #[serde(default)]
        roles: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    ChatCompletions,
    ImageGenerations,
    /// `/embeddings`: metered by input tokens only.
    Embeddings,
}

/// One metered call, before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeRequest {
    /// Chosen by the filter, unique per call: it becomes the hold id, so a call the client
    /// abandons while the decision is on its way can still be released (settled `Failed`).
    /// `None` lets the control plane choose.
    #[serde(default)]
    pub request_id: Option<String>,
    pub principal: Principal,
    pub endpoint: Endpoint,
    /// `None` when the client sent no model or `auto`.
    pub model: Option<String>,
    pub power_level: PowerLevel,
    pub task_type: TaskType,
    pub privacy_required: bool,
    pub stream: bool,
    /// An upper bound of the prompt's tokens: the size of the request body (chat, images), or
    /// of the inputs to embed (embeddings: their UTF-8 bytes plus their token ids).
    pub prompt_bytes: u64,
    /// Image parts in the prompt (each held at the model's per-image token bound).
    #[serde(default)]
    pub prompt_images: u64,
    /// The client's completion bound, if any.
    pub max_tokens: Option<u64>,
    /// Images asked for (image generation).
    pub images: u64,
}

/// Where and how to forward an authorized call. Its `Debug` redacts `api_key`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    /// The Envoy cluster that reaches the provider.
    pub cluster: String,
    /// `:authority` to send.
    pub authority: String,
    /// `:path` to send (e.g. `/v1/chat/completions`).
    pub path: String,
    /// The provider's own model id.
    pub model: String,
    /// The key that goes upstream (platform or the caller's own). Never logged.
    pub api_key: String,
    /// The field that carries the completion bound for this provider and model.
    #[serde(default)]
    pub completion_limit: CompletionLimit,
    /// The model takes `temperature` (the catalogue's flag; reasoning models do not, nor
    /// do models outside the catalogue, as far as the gateway knows): the guide's default is
    /// sent when the client sets none.
    #[serde(default)]
    pub takes_temperature: bool,
}

/// Which request field bounds the completion: most OpenAI-compatible providers take
/// `max_tokens`; OpenAI's reasoning models (o1, o3, …) take only `max_completion_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionLimit {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

impl std::fmt::Debug for Upstream {
    /// Everything but the key: a `{:?}` of a grant must never print a provider secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("model", &self.model)
            .field("completion_limit", &self.completion_limit)
            .field("takes_temperature", &self.takes_temperature)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

/// A call window as the rate-limit headers report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowLimit {
    pub limit: u64,
    /// Calls left after this one.
    pub remaining: u64,
    /// Unix time the window resets.
    pub reset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub hold_id: String,
    pub user_id: String,
    /// Catalogue id of the model that will serve the call.
    pub model: String,
    pub provider: String,
    pub upstream: Upstream,
    /// The completion bound to write into the forwarded request (what the hold covers).
    pub max_tokens: Option<u64>,
    pub rate: RateCard,
    /// What the call holds (the most it can be charged).
    pub hold_mc: MilliCredits,
    /// What the caller can still spend with this hold placed.
    pub balance_mc: MilliCredits,
    /// The period window (monthly, or the trial's 7 days); `None` when unlimited.
    pub period: Option<WindowLimit>,
    /// The daily window; `None` when unlimited.
    pub daily: Option<WindowLimit>,
    /// The caller's own provider key is used: no credits are charged.
    pub byok: bool,
    /// The client gave no `max_tokens` and the balance could not cover the model's whole
    /// output: `max_tokens` is the bound the gateway chose (the client is told).
    #[serde(default)]
    pub max_tokens_chosen: bool,
    /// An embedding model's default vector size (catalogue), for the response-size check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u64>,
}

/// A refusal, rendered by the filter as the client's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub retry_after: Option<u64>,
    /// A 429's window: sent back as `X-RateLimit-*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<WindowLimit>,
}

impl From<ApiError> for Denial {
    fn from(e: ApiError) -> Self {
        Denial {
            kind: e.kind,
            message: e.message,
            param: e.param,
            retry_after: e.retry_after,
            rate_limit: e.rate_limit,
        }
    }
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        ApiError {
            kind: d.kind,
            message: d.message,
            param: d.param,
            retry_after: d.retry_after,
            rate_limit: d.rate_limit,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum AuthorizeResponse {
    Allow(Box<Grant>),
    Deny(Denial),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The provider answered successfully: charge, consume the quota slot.
    Success,
    /// The call failed or was rejected: release everything.
    Failed,
    /// The client went away mid-stream: charge what was used, consume the slot.
    Partial,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub hold_id: String,
    pub outcome: Outcome,
    pub usage: Usage,
    /// The provider's HTTP status (0 when none arrived).
    pub upstream_status: u16,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleBatch {
    pub settlements: Vec<Settlement>,
    /// Answer each result with the caller's spendable balance after it (a plain response
    /// waits for it: its `X-Credits-Remaining` is the settled balance).
    #[serde(default)]
    pub with_balances: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleResult {
    pub hold_id: String,
    pub charged_mc: i64,
    /// With `with_balances`: what the hold's user can spend now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_mc: Option<MilliCredits>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleResponse {
    pub results: Vec<SettleResult>,
}

/// On requests the filter passes to the control plane's public routes, the identity it
/// verified at the edge (a JWT's subject, email and roles) travels in this header, as
/// base64url JSON of [`Identity`], together with [`IDENTITY_AUTH_HEADER`] carrying
/// [`identity_auth`] of the internal token (derived, so the token itself never travels on a
/// public path and a leaked header value cannot call `/internal/*`). The filter strips both from every client request, so only it can set
/// them; the control plane trusts the identity only when the token matches.
pub use crate::headers::{IDENTITY_AUTH_HEADER, IDENTITY_HEADER};

/// The value of [`IDENTITY_AUTH_HEADER`] for an internal token.
pub fn identity_auth(internal_token: &str) -> String {
    crate::credentials::digest(&format!("opsgate-identity:{internal_token}"))
}

/// A caller verified at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub subject: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// The token's `exp` (Unix seconds): what the control plane grants on the strength of
    /// this token (a console session) ends no later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl Identity {
    /// The header value: base64url (no padding) of the JSON.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn decode(value: &str) -> Option<Identity> {
        use base64::Engine;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.trim())
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_tagged() {
        let d = AuthorizeResponse::Deny(Denial::from(ApiError::invalid_api_key("nope")));
        let s = serde_json::to_string(&d).unwrap();
        assert!(s.contains(r#""decision":"deny""#), "{s}");
        assert!(s.contains(r#""kind":"invalid_api_key""#), "{s}");
        let back: AuthorizeResponse = serde_json::from_str(&s).unwrap();
        assert_eq!(back, d);
        let p = serde_json::to_string(&Principal::Service {
            user_id: "loopnet-service".into(),
        })
        .unwrap();
        assert_eq!(p, r#"{"kind":"service","user_id":"loopnet-service"}"#);
    }

    #[test]
    fn identity_round_trips_through_a_header_value() {
        let id = Identity {
            subject: "f3a1-uuid".into(),
            email: Some("zoë@example.com".into()),
            roles: vec!["opsgate-admin".into()],
            expires_at: Some(1_900_000_000),
        };
        let v = id.encode();
        assert!(v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(Identity::decode(&v), Some(id));
        assert_eq!(Identity::decode("not base64!"), None);
    }
}
