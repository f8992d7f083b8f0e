//! Reading and rewriting client request bodies: the OpenAI schema plus opsgate's
//! extensions (`power_level`, `task_type`, `privacy_required`), which are validated here and
//! removed before a provider sees the request.

use crate::contract::{AuthorizeRequest, CompletionLimit, Endpoint, Principal};
use crate::error::ApiError;
use crate::plan::{PowerLevel, TaskType};
use serde_json::{Map, Value};

/// Fields opsgate understands and providers must never see.
pub const EXTENSION_FIELDS: [&str; 3] = ["power_level", "task_type", "privacy_required"];

/// The metering-relevant facts of a chat completion request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub power_level: PowerLevel,
    pub task_type: TaskType,
    pub privacy_required: bool,
    pub stream: bool,
    /// The client itself asked for the final usage chunk of a stream.
    pub include_usage: bool,
    pub max_tokens: Option<u64>,
    pub prompt_bytes: u64,
    /// Image parts (`image_url`) in the messages: each costs vision tokens its URL's bytes
    /// do not bound.
    pub prompt_images: u64,
}

/// The metering-relevant facts of an image generation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRequest {
    pub model: Option<String>,
    pub power_level: PowerLevel,
    pub images: u64,
    pub prompt_bytes: u64,
}

/// The metering-relevant facts of an embeddings request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingsRequest {
    pub model: Option<String>,
    pub power_level: PowerLevel,
    pub privacy_required: bool,
    /// How many inputs are embedded (each one vector in the answer).
    pub inputs: u64,
    /// An upper bound of the input tokens (see [`embedding_input_tokens`]).
    pub input_tokens: u64,
    /// The vector size asked for (`dimensions`); `None`: the model's own.
    pub dimensions: Option<u64>,
    /// `encoding_format: "base64"` (else floats as JSON numbers).
    pub base64: bool,
}

/// What an embeddings answer holds besides its vectors (`object`, `model`, `usage`).
const EMBEDDINGS_ENVELOPE_BYTES: u64 = 1024;

/// An upper bound of one input's share of an embeddings answer: its vector of `dimensions`
/// components — as JSON numbers (OpenAI's floats take up to ~22 characters with their comma)
/// or as base64 little-endian `f32`s — and its object's few fields.
fn embedding_bytes(dimensions: u64, base64: bool) -> u64 {
    const PER_INPUT: u64 = 64;
    let vector = if base64 {
        dimensions.saturating_mul(4).div_ceil(3).saturating_mul(4)
    } else {
        dimensions.saturating_mul(22)
    };
    vector.saturating_add(PER_INPUT)
}

/// An upper bound of the size of an embeddings answer to `inputs` inputs.
pub fn embeddings_response_bound(inputs: u64, dimensions: u64, base64: bool) -> u64 {
    inputs
        .saturating_mul(embedding_bytes(dimensions, base64))
        .saturating_add(EMBEDDINGS_ENVELOPE_BYTES)
}

impl EmbeddingsRequest {
    /// A request whose answer could not pass the gateway: Envoy holds a metered answer whole
    /// (to read its usage) within `max_response_bytes`, and one larger would reach the
    /// client as a bare 500 after the provider was paid for it. Refused before the call,
    /// saying how many inputs fit. `model_dimensions`: the model's vector size (catalogue).
    pub fn too_large_for(
        &self,
        model_dimensions: Option<u64>,
        max_response_bytes: u64,
    ) -> Option<ApiError> {
        let dimensions = self.dimensions.or(model_dimensions)?;
        let bound = embeddings_response_bound(self.inputs, dimensions, self.base64);
        if bound <= max_response_bytes {
            return None;
        }
        let fit = max_response_bytes
            .saturating_sub(EMBEDDINGS_ENVELOPE_BYTES)
            .checked_div(embedding_bytes(dimensions, self.base64))
            .unwrap_or(0);
        let mib = |b: u64| b.div_ceil(1024 * 1024);
        let hint = if self.base64 {
            "fewer 'dimensions'"
        } else {
            "fewer 'dimensions', or encoding_format \"base64\" (a third of the size)"
        };
        Some(ApiError::invalid_param(
            "input",
            format!(
                "The answer to these {} inputs of {dimensions} dimensions could reach {} MiB, more than this gateway passes in one response ({} MiB): send at most {fit} inputs per request, or ask for {hint}.",
                self.inputs,
                mib(bound),
                mib(max_response_bytes),
            ),
        ))
    }
}

/// The most inputs one embeddings request may carry (OpenAI's own limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// The largest `dimensions` an embeddings request may ask for (above any model's).
pub const MAX_EMBEDDING_DIMENSIONS: u64 = 65_536;

/// The fields of an embeddings request that reach a provider on the platform's key; anything
/// else the client sends is dropped (the OpenAI embeddings API takes nothing more).
pub const EMBEDDING_FIELDS: [&str; 5] = ["model", "input", "dimensions", "encoding_format", "user"];

impl ChatRequest {
    /// The control plane's question for this call.
    pub fn authorize_request(&self, principal: Principal) -> AuthorizeRequest {
        AuthorizeRequest {
            request_id: None,
            principal,
            endpoint: Endpoint::ChatCompletions,
            model: self.model.clone(),
            power_level: self.power_level,
            task_type: self.task_type,
            privacy_required: self.privacy_required,
            stream: self.stream,
            prompt_bytes: self.prompt_bytes,
            prompt_images: self.prompt_images,
            max_tokens: self.max_tokens,
            images: 0,
        }
    }
}

impl ImageRequest {
    /// The control plane's question for this call.
    pub fn authorize_request(&self, principal: Principal) -> AuthorizeRequest {
        AuthorizeRequest {
            request_id: None,
            principal,
            endpoint: Endpoint::ImageGenerations,
            model: self.model.clone(),
            power_level: self.power_level,
            task_type: TaskType::default(),
            privacy_required: false,
            stream: false,
            prompt_bytes: self.prompt_bytes,
            prompt_images: 0,
            max_tokens: None,
            images: self.images,
        }
    }
}

impl EmbeddingsRequest {
    /// The control plane's question for this call: the hold covers `input_tokens` prompt
    /// tokens and nothing else.
    pub fn authorize_request(&self, principal: Principal) -> AuthorizeRequest {
        AuthorizeRequest {
            request_id: None,
            principal,
            endpoint: Endpoint::Embeddings,
            model: self.model.clone(),
            power_level: self.power_level,
            task_type: TaskType::default(),
            privacy_required: self.privacy_required,
            stream: false,
            prompt_bytes: self.input_tokens,
            prompt_images: 0,
            max_tokens: None,
            images: 0,
        }
    }
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "Request body is empty: send a JSON object with 'model' and 'messages'.",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("Request body must be a JSON object.")),
        Err(e) => Err(ApiError::bad_request(format!(
            "Request body is not valid JSON: {e}."
        ))),
    }
}

fn model_of(map: &Map<String, Value>) -> Result<Option<String>, ApiError> {
    match map.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() || s == "auto" => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid_param(
            "model",
            "'model' must be a string (a model id, or \"auto\").",
        )),
    }
}

/// The effective power level: the body field wins over the `X-Power-Level` header.
fn power_level_of(map: &Map<String, Value>, header: Option<&str>) -> Result<PowerLevel, ApiError> {
    let invalid = |param: &str| {
        ApiError::invalid_param(
            param,
            format!("Invalid {param}: expected one of eco, balanced, precision."),
        )
    };
    match map.get("power_level") {
        Some(Value::String(s)) => PowerLevel::parse(s).ok_or_else(|| invalid("power_level")),
        Some(Value::Null) | None => match header {
            Some(h) => PowerLevel::parse(h).ok_or_else(|| invalid("X-Power-Level")),
            None => Ok(PowerLevel::default()),
        },
        Some(_) => Err(invalid("power_level")),
    }
}

fn positive_int(map: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(ApiError::invalid_param(
                field,
                format!("'{field}' must be a positive integer."),
            )),
        },
    }
}

fn bool_field(map: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid_param(
            field,
            format!("'{field}' must be true or false."),
        )),
    }
}

/// Validates a chat completion body. Returns the parsed JSON (to rewrite later) and the facts.
pub fn parse_chat(
    body: &[u8],
    power_header: Option<&str>,
) -> Result<(Map<String, Value>, ChatRequest), ApiError> {
    let map = parse_object(body)?;
    match map.get("messages") {
        Some(Value::Array(msgs)) if !msgs.is_empty() => {
            for m in msgs {
                if !m.get("role").is_some_and(Value::is_string) {
                    return Err(ApiError::invalid_param(
                        "messages",
                        "Every message needs a string 'role'.",
                    ));
                }
            }
        }
        _ => {
            return Err(ApiError::invalid_param(
                "messages",
                "'messages' is required: a non-empty array of {role, content}.",
            ))
        }
    }
    if let Some(t) = map.get("temperature") {
        if !t.is_null() && !t.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t)) {
            return Err(ApiError::invalid_param(
                "temperature",
                "'temperature' must be a number from 0.0 to 2.0.",
            ));
        }
    }
    let task_type = match map.get("task_type") {
        None | Some(Value::Null) => TaskType::default(),
        Some(Value::String(s)) => TaskType::parse(s).ok_or_else(|| {
            ApiError::invalid_param(
                "task_type",
                "Invalid task_type: expected one of code, chat, rag, creative.",
            )
        })?,
        Some(_) => {
            return Err(ApiError::invalid_param(
                "task_type",
                "Invalid task_type: expected one of code, chat, rag, creative.",
            ))
        }
    };
    // Several choices multiply the completion the hold has to cover; one is what the gateway
    // meters and bounds.
    if positive_int(&map, "n")?.is_some_and(|n| n > 1) {
        return Err(ApiError::invalid_param(
            "n",
            "'n' greater than 1 is not supported by this gateway: send one request per completion.",
        ));
    }
    let max_tokens = match positive_int(&map, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => positive_int(&map, "max_tokens")?,
    };
    let req = ChatRequest {
        model: model_of(&map)?,
        power_level: power_level_of(&map, power_header)?,
        task_type,
        privacy_required: bool_field(&map, "privacy_required")?,
        stream: bool_field(&map, "stream")?,
        include_usage: map
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false),
        max_tokens,
        prompt_bytes: body.len() as u64,
        prompt_images: image_parts(&map),
    };
    Ok((map, req))
}

/// The number of image parts in the messages' content arrays.
fn image_parts(map: &Map<String, Value>) -> u64 {
    let Some(Value::Array(messages)) = map.get("messages") else {
        return 0;
    };
    let parts = messages
        .iter()
        .filter_map(|m| m.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|part| part.get("type").and_then(Value::as_str) == Some("image_url"))
        .count();
    u64::try_from(parts).unwrap_or(u64::MAX)
}

/// Validates an image generation body.
pub fn parse_image(
    body: &[u8],
    power_header: Option<&str>,
) -> Result<(Map<String, Value>, ImageRequest), ApiError> {
    let map = parse_object(body)?;
    let prompt = map
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid_param(
            "prompt",
            "'prompt' is required: a non-empty string.",
        ));
    }
    if bool_field(&map, "stream")? {
        return Err(ApiError::invalid_param(
            "stream",
            "Streaming is not supported for image generation.",
        ));
    }
    let images = positive_int(&map, "n")?.unwrap_or(1);
    if images > 10 {
        return Err(ApiError::invalid_param("n", "'n' must be from 1 to 10."));
    }
    let req = ImageRequest {
        model: model_of(&map)?,
        power_level: power_level_of(&map, power_header)?,
        images,
        prompt_bytes: body.len() as u64,
    };
    Ok((map, req))
}

/// The inputs of an embeddings request and an upper bound of their tokens, by the rule the
/// chat path bounds a prompt with (a token is at least one byte): a string counts its UTF-8
/// bytes, a token id counts one. `input` is a string, an array of strings, an array of token
/// ids, or an array of arrays of token ids — non-empty, at most [`MAX_EMBEDDING_INPUTS`]
/// inputs, no empty string or token array, no mixing; anything else is refused (400, `input`).
pub fn embedding_input_tokens(input: Option<&Value>) -> Result<(u64, u64), ApiError> {
    let invalid = |why: &str| {
        ApiError::invalid_param(
            "input",
            format!(
                "'input' {why}: send a non-empty string, an array of non-empty strings, an array of token ids, or an array of non-empty arrays of token ids (at most {MAX_EMBEDDING_INPUTS} inputs)."
            ),
        )
    };
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    // One token array: its ids, each a non-negative integer that fits a token id.
    let token_ids = |ids: &[Value]| -> Result<u64, ApiError> {
        if ids.is_empty() {
            return Err(invalid("holds an empty token array"));
        }
        if ids
            .iter()
            .any(|t| u32::try_from(t.as_u64().unwrap_or(u64::MAX)).is_err())
        {
            return Err(invalid(
                "holds a token id that is not a non-negative integer",
            ));
        }
        Ok(count(ids.len()))
    };
    match input {
        None | Some(Value::Null) => Err(invalid("is required")),
        Some(Value::String(s)) if s.is_empty() => Err(invalid("is an empty string")),
        Some(Value::String(s)) => Ok((1, count(s.len()))),
        Some(Value::Array(items)) => {
            let Some(first) = items.first() else {
                return Err(invalid("is an empty array"));
            };
            if items.len() > MAX_EMBEDDING_INPUTS {
                return Err(invalid("holds too many inputs"));
            }
            match first {
                Value::String(_) => {
                    let mut bound = 0u64;
                    for item in items {
                        match item {
                            Value::String(s) if !s.is_empty() => {
                                bound = bound.saturating_add(count(s.len()));
                            }
                            Value::String(_) => return Err(invalid("holds an empty string")),
                            _ => return Err(invalid("mixes strings with other values")),
                        }
                    }
                    Ok((count(items.len()), bound))
                }
                Value::Number(_) => Ok((1, token_ids(items)?)),
                Value::Array(_) => {
                    let mut bound = 0u64;
                    for item in items {
                        let Value::Array(ids) = item else {
                            return Err(invalid("mixes token arrays with other values"));
                        };
                        bound = bound.saturating_add(token_ids(ids)?);
                    }
                    Ok((count(items.len()), bound))
                }
                _ => Err(invalid("holds a value that is neither text nor tokens")),
            }
        }
        Some(_) => Err(invalid("has the wrong type")),
    }
}

/// Validates an embeddings body. Fields the gateway does not know are accepted (and not
/// forwarded on the platform's key, see [`rewrite_embeddings_for_provider`]).
pub fn parse_embeddings(
    body: &[u8],
    power_header: Option<&str>,
) -> Result<(Map<String, Value>, EmbeddingsRequest), ApiError> {
    let map = parse_object(body)?;
    let (inputs, input_tokens) = embedding_input_tokens(map.get("input"))?;
    if bool_field(&map, "stream")? {
        return Err(ApiError::invalid_param(
            "stream",
            "Embeddings cannot be streamed: remove 'stream'.",
        ));
    }
    if positive_int(&map, "dimensions")?.is_some_and(|d| d > MAX_EMBEDDING_DIMENSIONS) {
        return Err(ApiError::invalid_param(
            "dimensions",
            format!("'dimensions' must be from 1 to {MAX_EMBEDDING_DIMENSIONS}."),
        ));
    }
    match map.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" || f == "base64" => {}
        Some(_) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                "'encoding_format' must be \"float\" or \"base64\".",
            ))
        }
    }
    let req = EmbeddingsRequest {
        model: model_of(&map)?,
        power_level: power_level_of(&map, power_header)?,
        privacy_required: bool_field(&map, "privacy_required")?,
        inputs,
        input_tokens,
        dimensions: positive_int(&map, "dimensions")?,
        base64: matches!(map.get("encoding_format"), Some(Value::String(f)) if f == "base64"),
    };
    Ok((map, req))
}

/// The embeddings body a provider receives: the provider's model id, opsgate's extension
/// fields removed, and on the platform's key only [`EMBEDDING_FIELDS`] (on the caller's own
/// key everything else the client sent passes too, as on chat).
pub fn rewrite_embeddings_for_provider(
    mut map: Map<String, Value>,
    provider_model: &str,
    byok: bool,
) -> Vec<u8> {
    for f in EXTENSION_FIELDS {
        map.remove(f);
    }
    map.remove("stream");
    if !byok {
        map.retain(|k, _| EMBEDDING_FIELDS.contains(&k.as_str()));
    }
    map.insert("model".into(), Value::String(provider_model.to_string()));
    serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
}

/// Body fields a call on the **platform's** key may not send as they are, because they change
/// what the platform is billed or what the provider keeps under the platform's account. BYOK
/// calls (the user's own key pays) are not checked.
///
/// | field | rule |
/// |---|---|
/// | `service_tier` | only `auto` / `default` pass; `flex`, `priority`, `scale`… are refused |
/// | `store` | `true` is refused (stored completions would live in the platform's account); otherwise removed |
/// | `metadata` | removed (tags stored completions in the platform's account) |
/// | `prediction` | refused (rejected prediction tokens are billed beyond what the hold covers) |
/// | `web_search_options` | refused (a per-call search fee the rate card does not price) |
/// | `audio`, `modalities` with `"audio"` | refused (audio tokens are priced apart from text) |
pub fn apply_platform_key_policy(map: &mut Map<String, Value>) -> Result<(), ApiError> {
    let refuse = |field: &str, why: &str| {
        ApiError::invalid_param(
            field,
            format!(
                "'{field}' is not accepted on calls made with the gateway's provider keys ({why}). Remove it, or add your own provider key (BYOK) to use it."
            ),
        )
    };
    match map.get("service_tier") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "auto" || t == "default" => {}
        Some(_) => {
            return Err(refuse(
                "service_tier",
                "only \"auto\" and \"default\" are billed at the gateway's rates",
            ))
        }
    }
    if map.get("store").and_then(Value::as_bool) == Some(true) {
        return Err(refuse(
            "store",
            "stored completions would be kept in the gateway's provider account",
        ));
    }
    if map.get("prediction").is_some_and(|v| !v.is_null()) {
        return Err(refuse(
            "prediction",
            "rejected prediction tokens are billed beyond the call's hold",
        ));
    }
    if map.get("web_search_options").is_some_and(|v| !v.is_null()) {
        return Err(refuse(
            "web_search_options",
            "web search carries a per-call fee the gateway does not price",
        ));
    }
    if map.get("audio").is_some_and(|v| !v.is_null()) {
        return Err(refuse("audio", "audio output is priced apart from text"));
    }
    let audio_out = map
        .get("modalities")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v.as_str() == Some("audio")));
    if audio_out {
        return Err(refuse(
            "modalities",
            "audio output is priced apart from text",
        ));
    }
    map.remove("store");
    map.remove("metadata");
    Ok(())
}

/// The body a provider receives: extension fields removed, the provider's model id, the
/// completion bound the hold covers, and (for streams) a request for a final usage chunk.
/// The integration guide's `temperature` when the client sends none (models that take one).
pub const DEFAULT_TEMPERATURE: f64 = 0.7;

pub fn rewrite_for_provider(
    mut map: Map<String, Value>,
    provider_model: &str,
    max_tokens: Option<u64>,
    stream: bool,
    limit: CompletionLimit,
    takes_temperature: bool,
) -> Vec<u8> {
    for f in EXTENSION_FIELDS {
        map.remove(f);
    }
    // The guide's default when the client sets none, for models that take one.
    if takes_temperature && !map.contains_key("temperature") {
        if let Some(n) = serde_json::Number::from_f64(DEFAULT_TEMPERATURE) {
            map.insert("temperature".into(), Value::Number(n));
        }
    }
    map.insert("model".into(), Value::String(provider_model.to_string()));
    if let Some(n) = max_tokens {
        // The provider's own field carries the bound, whatever the client used: a provider
        // that ignores the other field would otherwise generate past what the hold covers.
        let (field, other) = match limit {
            CompletionLimit::MaxCompletionTokens => ("max_completion_tokens", "max_tokens"),
            CompletionLimit::MaxTokens => ("max_tokens", "max_completion_tokens"),
        };
        map.remove(other);
        map.insert(field.into(), Value::from(n));
    }
    if stream {
        let opts = map
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = opts {
            o.insert("include_usage".into(), Value::Bool(true));
        } else {
            *opts = serde_json::json!({"include_usage": true});
        }
    }
    serde_json::to_vec(&Value::Object(map)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ChatRequest, ApiError> {
        parse_chat(body.as_bytes(), None).map(|(_, r)| r)
    }

    #[test]
    fn image_parts_in_the_prompt_are_counted() {
        let r = chat(
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"what is this"},{"type":"image_url","image_url":{"url":"https://x/a.png"}},{"type":"image_url","image_url":{"url":"https://x/b.png"}}]},{"role":"user","content":"plain"}]}"#,
        )
        .unwrap();
        assert_eq!(r.prompt_images, 2);
        assert_eq!(
            chat(r#"{"messages":[{"role":"user","content":"hi"}]}"#)
                .unwrap()
                .prompt_images,
            0
        );
    }

    fn policy(body: &str) -> Result<Map<String, Value>, ApiError> {
        let (mut map, _) = parse_chat(body.as_bytes(), None)?;
        apply_platform_key_policy(&mut map).map(|()| map)
    }

    #[test]
    fn platform_key_policy_refuses_fields_that_change_the_bill() {
        let base = r#""model":"gpt-4o","messages":[{"role":"user","content":"hi"}]"#;
        for (field, value) in [
            ("service_tier", r#""priority""#),
            ("service_tier", r#""flex""#),
            ("service_tier", "3"),
            ("store", "true"),
            ("prediction", r#"{"type":"content","content":"x"}"#),
            ("web_search_options", "{}"),
            ("audio", r#"{"voice":"alloy","format":"wav"}"#),
            ("modalities", r#"["text","audio"]"#),
        ] {
            let e = policy(&format!("{{{base},\"{field}\":{value}}}")).unwrap_err();
            assert_eq!(e.status(), 400, "{field}");
            assert_eq!(e.param.as_deref(), Some(field), "{field}");
        }
    }

    #[test]
    fn platform_key_policy_strips_what_the_provider_would_keep() {
        let map = policy(
            r#"{"model":"gpt-4o","messages":[{"role":"user"}],"store":false,"metadata":{"a":"b"},"service_tier":"auto","modalities":["text"],"user":"u1"}"#,
        )
        .unwrap();
        assert!(!map.contains_key("store"));
        assert!(!map.contains_key("metadata"));
        assert_eq!(map["service_tier"], "auto");
        assert_eq!(map["user"], "u1");
        assert_eq!(map["modalities"], serde_json::json!(["text"]));
    }

    #[test]
    fn guide_quick_start_parses_with_defaults() {
        let r = chat(
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello, world!"}]}"#,
        )
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(r.power_level, PowerLevel::Balanced);
        assert_eq!(r.task_type, TaskType::Chat);
        assert!(!r.stream && !r.privacy_required);
        assert_eq!(r.max_tokens, None);
    }

    #[test]
    fn auto_and_missing_models_are_left_to_the_gateway() {
        assert_eq!(
            chat(r#"{"model":"auto","messages":[{"role":"user"}]}"#)
                .unwrap()
                .model,
            None
        );
        assert_eq!(
            chat(r#"{"messages":[{"role":"user"}]}"#).unwrap().model,
            None
        );
    }

    #[test]
    fn body_power_level_wins_over_header() {
        let (_, r) = parse_chat(
            br#"{"messages":[{"role":"user"}],"power_level":"precision"}"#,
            Some("eco"),
        )
        .unwrap();
        assert_eq!(r.power_level, PowerLevel::Precision);
        let (_, r) = parse_chat(br#"{"messages":[{"role":"user"}]}"#, Some("eco")).unwrap();
        assert_eq!(r.power_level, PowerLevel::Eco);
    }

    #[test]
    fn invalid_values_are_400_naming_the_field() {
        let cases = [
            (
                r#"{"messages":[{"role":"user"}],"power_level":"turbo"}"#,
                "power_level",
            ),
            (
                r#"{"messages":[{"role":"user"}],"task_type":"dance"}"#,
                "task_type",
            ),
            (
                r#"{"messages":[{"role":"user"}],"privacy_required":"yes"}"#,
                "privacy_required",
            ),
            (
                r#"{"messages":[{"role":"user"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"messages":[{"role":"user"}],"temperature":3}"#,
                "temperature",
            ),
            (r#"{"messages":[]}"#, "messages"),
            (r#"{"model":"x"}"#, "messages"),
            (r#"{"model":7,"messages":[{"role":"user"}]}"#, "model"),
        ];
        for (body, param) in cases {
            let e = chat(body).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        assert_eq!(chat("not json").unwrap_err().status(), 400);
        assert_eq!(chat("[1]").unwrap_err().status(), 400);
        let e = parse_chat(br#"{"messages":[{"role":"user"}]}"#, Some("ultra")).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("X-Power-Level"));
    }

    #[test]
    fn rewrite_strips_extensions_and_sets_provider_fields() {
        let (map, _) = parse_chat(
            br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"power_level":"eco","task_type":"code","privacy_required":false,"stream":true,"temperature":0.2}"#,
            None,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&rewrite_for_provider(
            map,
            "openai/gpt-4o-mini",
            Some(77),
            true,
            CompletionLimit::MaxTokens,
            true,
        ))
        .unwrap();
        for f in EXTENSION_FIELDS {
            assert!(out.get(f).is_none(), "{f} leaked");
        }
        assert_eq!(out["model"], "openai/gpt-4o-mini");
        assert_eq!(out["max_tokens"], 77);
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["temperature"], 0.2);
        assert_eq!(out["messages"][0]["content"], "hi");
    }

    #[test]
    fn the_providers_field_carries_the_bound_whatever_the_client_used() {
        let (map, r) = parse_chat(
            br#"{"messages":[{"role":"user"}],"max_completion_tokens":500}"#,
            None,
        )
        .unwrap();
        assert_eq!(r.max_tokens, Some(500));
        let out: Value = serde_json::from_slice(&rewrite_for_provider(
            map,
            "llama3:8b",
            Some(100),
            false,
            CompletionLimit::MaxTokens,
            true,
        ))
        .unwrap();
        assert_eq!(out["max_tokens"], 100);
        // No temperature from the client: the guide's default.
        assert_eq!(out["temperature"], DEFAULT_TEMPERATURE);
        assert!(out.get("max_completion_tokens").is_none(), "{out}");
        assert!(out.get("stream_options").is_none());
    }

    #[test]
    fn several_choices_and_streamed_images_are_refused() {
        let e = chat(r#"{"messages":[{"role":"user"}],"n":2}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
        assert!(chat(r#"{"messages":[{"role":"user"}],"n":1}"#).is_ok());
        let e = parse_image(br#"{"prompt":"a","stream":true}"#, None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("stream"));
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens() {
        let (map, _) =
            parse_chat(br#"{"messages":[{"role":"user"}],"max_tokens":500}"#, None).unwrap();
        let out: Value = serde_json::from_slice(&rewrite_for_provider(
            map,
            "o1-preview",
            Some(300),
            false,
            CompletionLimit::MaxCompletionTokens,
            false,
        ))
        .unwrap();
        assert_eq!(out["max_completion_tokens"], 300);
        assert!(
            out.get("temperature").is_none(),
            "a reasoning model takes none: {out}"
        );
        assert!(out.get("max_tokens").is_none(), "{out}");
    }

    fn embed(body: &str) -> Result<EmbeddingsRequest, ApiError> {
        parse_embeddings(body.as_bytes(), None).map(|(_, r)| r)
    }

    #[test]
    fn embedding_inputs_are_bounded_by_their_bytes_and_token_ids() {
        // A string: its UTF-8 bytes ("héllo wörld" is 13 bytes, 11 characters).
        let r =
            embed(r#"{"model":"text-embedding-3-small","input":"h\u00e9llo w\u00f6rld"}"#).unwrap();
        assert_eq!((r.inputs, r.input_tokens), (1, 13));
        assert_eq!(r.model.as_deref(), Some("text-embedding-3-small"));
        assert_eq!(r.power_level, PowerLevel::Balanced);
        // Strings: the sum of their bytes, one input each.
        let r = embed(r#"{"input":["one","three","fifteen"]}"#).unwrap();
        assert_eq!((r.inputs, r.input_tokens), (3, 3 + 5 + 7));
        // One token array: one token per id, whatever the digits.
        let r = embed(r#"{"input":[100257, 9906, 1917]}"#).unwrap();
        assert_eq!((r.inputs, r.input_tokens), (1, 3));
        // Token arrays: their ids, one input each.
        let r = embed(r#"{"input":[[1,2,3],[4],[5,6]]}"#).unwrap();
        assert_eq!((r.inputs, r.input_tokens), (3, 6));
        // The bound never exceeds the body's size, the chat path's bound.
        for body in [
            r#"{"input":"a"}"#,
            r#"{"input":["a","b"]}"#,
            r#"{"input":[[0],[1]]}"#,
        ] {
            assert!(
                embed(body).unwrap().input_tokens <= body.len() as u64,
                "{body}"
            );
        }
        // The request asks the control plane to hold the inputs' tokens and nothing more.
        let a = embed(r#"{"input":["abcd"],"power_level":"eco"}"#)
            .unwrap()
            .authorize_request(Principal::Service {
                user_id: "svc".into(),
            });
        assert_eq!(a.endpoint, Endpoint::Embeddings);
        assert_eq!((a.prompt_bytes, a.max_tokens, a.images), (4, None, 0));
        assert_eq!(a.power_level, PowerLevel::Eco);
        assert!(!a.stream);
    }

    #[test]
    fn malformed_embedding_inputs_are_400_naming_input() {
        let too_many = format!(
            r#"{{"input":[{}]}}"#,
            vec![r#""x""#; MAX_EMBEDDING_INPUTS + 1].join(",")
        );
        let at_limit = format!(
            r#"{{"input":[{}]}}"#,
            vec![r#""x""#; MAX_EMBEDDING_INPUTS].join(",")
        );
        assert_eq!(
            embed(&at_limit).unwrap().inputs,
            MAX_EMBEDDING_INPUTS as u64
        );
        for body in [
            r#"{"model":"text-embedding-3-small"}"#,
            r#"{"input":null}"#,
            r#"{"input":""}"#,
            r#"{"input":[]}"#,
            r#"{"input":["ok",""]}"#,
            r#"{"input":["ok",7]}"#,
            r#"{"input":[7,"ok"]}"#,
            r#"{"input":[1,-2]}"#,
            r#"{"input":[1,2.5]}"#,
            r#"{"input":[1,99999999999]}"#,
            r#"{"input":[[1],[]]}"#,
            r#"{"input":[[1],2]}"#,
            r#"{"input":[[1],["a"]]}"#,
            r#"{"input":[{"text":"a"}]}"#,
            r#"{"input":[true]}"#,
            r#"{"input":{"text":"a"}}"#,
            r#"{"input":42}"#,
            too_many.as_str(),
        ] {
            let e = embed(body).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some("input"), "{body}");
        }
        for (body, param) in [
            (r#"{"input":"a","stream":true}"#, "stream"),
            (r#"{"input":"a","dimensions":0}"#, "dimensions"),
            (r#"{"input":"a","dimensions":"8"}"#, "dimensions"),
            (r#"{"input":"a","dimensions":70000}"#, "dimensions"),
            (
                r#"{"input":"a","encoding_format":"int8"}"#,
                "encoding_format",
            ),
            (r#"{"input":"a","model":3}"#, "model"),
            (r#"{"input":"a","power_level":"max"}"#, "power_level"),
        ] {
            let e = embed(body).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
        }
        assert_eq!(embed("[1]").unwrap_err().status(), 400);
        assert_eq!(embed("").unwrap_err().status(), 400);
        // What OpenAI accepts passes.
        assert!(embed(
            r#"{"input":"a","dimensions":256,"encoding_format":"base64","user":"u","stream":false}"#
        )
        .is_ok());
    }

    #[test]
    fn the_embeddings_provider_body_carries_only_the_allowed_fields() {
        let (map, _) = parse_embeddings(
            br#"{"model":"text-embedding-3-small","input":["a"],"dimensions":8,"encoding_format":"base64","user":"u1","power_level":"eco","privacy_required":false,"task_type":"rag","stream":false,"service_tier":"priority","metadata":{"a":"b"}}"#,
            None,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&rewrite_embeddings_for_provider(
            map.clone(),
            "text-embedding-3-small-v2",
            false,
        ))
        .unwrap();
        let mut keys: Vec<&str> = out
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["dimensions", "encoding_format", "input", "model", "user"]
        );
        assert_eq!(out["model"], "text-embedding-3-small-v2");
        assert_eq!(out["input"], serde_json::json!(["a"]));
        assert!(out.get("temperature").is_none());
        // The caller's own key: what the client sent passes, but never opsgate's fields.
        let out: Value =
            serde_json::from_slice(&rewrite_embeddings_for_provider(map, "m", true)).unwrap();
        assert_eq!(out["service_tier"], "priority");
        for f in EXTENSION_FIELDS {
            assert!(out.get(f).is_none(), "{f} leaked");
        }
    }

    #[test]
    fn images() {
        let (_, r) = parse_image(br#"{"prompt":"a unicorn","n":3}"#, None).unwrap();
        assert_eq!(r.images, 3);
        assert_eq!(
            parse_image(br#"{"prompt":"a","n":11}"#, None)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            parse_image(br#"{"n":1}"#, None)
                .unwrap_err()
                .param
                .as_deref(),
            Some("prompt")
        );
    }

    #[test]
    fn an_embeddings_answer_too_large_for_envoy_is_refused_saying_what_fits() {
        let parse = |body: &str| parse_embeddings(body.as_bytes(), None).unwrap().1;
        let inputs = |n: usize| {
            let list: Vec<String> = (0..n).map(|i| format!("\"text {i}\"")).collect();
            list.join(",")
        };
        let limit = 32 * 1024 * 1024;
        // 100 vectors of 3072 floats: ~6.5 MiB (the fake provider's answer is 6.3 MiB).
        let small = parse(&format!(r#"{{"model":"m","input":[{}]}}"#, inputs(100)));
        assert_eq!((small.dimensions, small.base64), (None, false));
        assert!(small.too_large_for(Some(3072), limit).is_none());
        let bound = embeddings_response_bound(100, 3072, false);
        assert!((6_500_000..7_000_000).contains(&bound), "{bound}");

        // 1000 of them: ~65 MiB, refused with how many fit (32 MiB / ~67.6 KB = 496).
        let big = parse(&format!(r#"{{"model":"m","input":[{}]}}"#, inputs(1000)));
        let e = big.too_large_for(Some(3072), limit).expect("refused");
        assert_eq!(e.status(), 400);
        assert_eq!(e.param.as_deref(), Some("input"));
        assert!(e.message.contains("at most 496 inputs"), "{}", e.message);
        assert!(e.message.contains("base64"), "{}", e.message);
        // Unknown dimensions: nothing to check against.
        assert!(big.too_large_for(None, limit).is_none());
        // The request's own dimensions win over the model's; base64 is a third of the size.
        let fewer = parse(&format!(
            r#"{{"model":"m","input":[{}],"dimensions":256}}"#,
            inputs(1000)
        ));
        assert_eq!(fewer.dimensions, Some(256));
        assert!(fewer.too_large_for(Some(3072), limit).is_none());
        let b64 = parse(&format!(
            r#"{{"model":"m","input":[{}],"encoding_format":"base64"}}"#,
            inputs(1000)
        ));
        assert!(b64.base64);
        assert!(b64.too_large_for(Some(3072), limit).is_none());
        let e = b64
            .too_large_for(Some(3072), 8 * 1024 * 1024)
            .expect("refused");
        assert!(!e.message.contains("encoding_format"), "{}", e.message);
    }
}
