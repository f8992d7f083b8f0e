//! The OpenAI error envelope and the gateway's error kinds, with their HTTP statuses.
//!
//! Every error a client sees — from the filter or the control plane — is rendered here, so
//! the shape `{"error": {"message", "type", "code", "param"}}` is the same everywhere.

use serde::{Deserialize, Serialize};

/// What went wrong, as the client should understand it. Each kind fixes the status,
/// the envelope `type` and the envelope `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    InvalidApiKey,
    InsufficientCredits,
    Forbidden,
    /// The provider refused the caller's own (BYOK) key.
    ByokKeyRejected,
    /// A browser request from an origin the gateway does not allow.
    OriginNotAllowed,
    /// An admin route called without the admin token or role.
    AdminRequired,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    QuotaExceeded,
    Internal,
    UpstreamError,
    Unavailable,
    Timeout,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::InvalidApiKey => 401,
            ErrorKind::InsufficientCredits => 402,
            ErrorKind::Forbidden
            | ErrorKind::ByokKeyRejected
            | ErrorKind::OriginNotAllowed
            | ErrorKind::AdminRequired => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::QuotaExceeded => 429,
            ErrorKind::Internal => 500,
            ErrorKind::UpstreamError => 502,
            ErrorKind::Unavailable => 503,
            ErrorKind::Timeout => 504,
        }
    }

    /// The envelope's `type` field (the integration guide's values).
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorKind::BadRequest
            | ErrorKind::InvalidApiKey
            | ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::PayloadTooLarge => "invalid_request_error",
            ErrorKind::InsufficientCredits => "insufficient_credits",
            ErrorKind::Forbidden
            | ErrorKind::ByokKeyRejected
            | ErrorKind::OriginNotAllowed
            | ErrorKind::AdminRequired => "permission_error",
            ErrorKind::QuotaExceeded => "rate_limit_error",
            ErrorKind::Internal => "server_error",
            ErrorKind::UpstreamError | ErrorKind::Unavailable | ErrorKind::Timeout => {
                "service_unavailable"
            }
        }
    }

    /// The envelope's `code` field.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::InvalidApiKey => "invalid_api_key",
            ErrorKind::InsufficientCredits => "payment_required",
            ErrorKind::Forbidden => "model_not_allowed",
            ErrorKind::ByokKeyRejected => "byok_key_rejected",
            ErrorKind::OriginNotAllowed => "origin_not_allowed",
            ErrorKind::AdminRequired => "admin_required",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::QuotaExceeded => "quota_exceeded",
            ErrorKind::Internal => "internal_error",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::Unavailable => "service_unavailable",
            ErrorKind::Timeout => "timeout",
        }
    }
}

/// An error with its client-facing message. `message` must never contain a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    /// For 429s: seconds until the window that refused resets (becomes `Retry-After`).
    pub retry_after: Option<u64>,
    /// For 429s: the window that refused (limit, nothing remaining, its reset), sent as
    /// `X-RateLimit-*` so a client's retry waits until the reset.
    pub rate_limit: Option<crate::contract::WindowLimit>,
}

impl ApiError {
    /// The envelope for an error answered in plain text by something that is not opsgate
    /// (Envoy's `upstream connect error…`, a framework's body-limit rejection). `who` names
    /// the party that failed, e.g. "The gateway's control plane".
    pub fn for_plain_status(status: u16, who: &str) -> Self {
        let (kind, message) = match status {
            401 => (ErrorKind::InvalidApiKey, "Invalid credentials.".to_string()),
            403 => (ErrorKind::Forbidden, "Forbidden.".to_string()),
            404 => (ErrorKind::NotFound, "Not found.".to_string()),
            405 => (
                ErrorKind::MethodNotAllowed,
                "Method not allowed.".to_string(),
            ),
            413 => (
                ErrorKind::PayloadTooLarge,
                "Request body is too large.".to_string(),
            ),
            429 => (
                ErrorKind::QuotaExceeded,
                "Too many requests; retry later.".to_string(),
            ),
            400..=499 => (
                ErrorKind::BadRequest,
                "The request was refused.".to_string(),
            ),
            500 => (ErrorKind::Internal, format!("{who} failed inside.")),
            502 => (
                ErrorKind::UpstreamError,
                format!("{who} answered with an invalid response. Retry with backoff."),
            ),
            504 => (
                ErrorKind::Timeout,
                format!("{who} did not answer in time. Retry with backoff."),
            ),
            _ => (
                ErrorKind::Unavailable,
                format!("{who} is unavailable. Retry with backoff."),
            ),
        };
        ApiError::new(kind, message)
    }

    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            param: None,
            retry_after: None,
            rate_limit: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::bad_request(message)
        }
    }

    pub fn invalid_api_key(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidApiKey, message)
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: ErrorBody {
                message: self.message.clone(),
                r#type: self.kind.error_type().to_string(),
                code: self.kind.code().to_string(),
                param: self.param.clone(),
            },
        }
    }

    /// The JSON body a client receives.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.envelope()).unwrap_or_else(|_| {
            String::from(r#"{"error":{"message":"internal error","type":"server_error","code":"internal_error","param":null}}"#)
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind.status(),
            self.kind.code(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// `{"error": {...}}` — the OpenAI error envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub message: String,
    pub r#type: String,
    pub code: String,
    pub param: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_guide_shape() {
        let e = ApiError::invalid_api_key("Invalid service key");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap_or_default();
        assert_eq!(v["error"]["message"], "Invalid service key");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(v["error"]["param"].is_null());
        assert_eq!(e.status(), 401);
    }

    #[test]
    fn statuses_follow_the_guide() {
        assert_eq!(ErrorKind::InsufficientCredits.status(), 402);
        assert_eq!(
            ErrorKind::InsufficientCredits.error_type(),
            "insufficient_credits"
        );
        assert_eq!(ErrorKind::InsufficientCredits.code(), "payment_required");
        assert_eq!(ErrorKind::QuotaExceeded.status(), 429);
        assert_eq!(ErrorKind::QuotaExceeded.error_type(), "rate_limit_error");
        assert_eq!(ErrorKind::QuotaExceeded.code(), "quota_exceeded");
        assert_eq!(ErrorKind::Forbidden.status(), 403);
        assert_eq!(ErrorKind::PayloadTooLarge.status(), 413);
        assert_eq!(ErrorKind::Unavailable.status(), 503);
    }

    #[test]
    fn plain_statuses_map_to_their_envelopes() {
        for (status, code) in [
            (413, "payload_too_large"),
            (503, "service_unavailable"),
            (504, "timeout"),
            (502, "upstream_error"),
            (500, "internal_error"),
            (408, "bad_request"),
            (599, "service_unavailable"),
        ] {
            let e = ApiError::for_plain_status(status, "The control plane");
            assert_eq!(e.envelope().error.code, code, "{status}");
        }
        let e = ApiError::for_plain_status(504, "The provider openai");
        assert!(e
            .message
            .contains("The provider openai did not answer in time"));
    }

    #[test]
    fn param_is_carried() {
        let e = ApiError::invalid_param("power_level", "bad");
        assert_eq!(e.envelope().error.param.as_deref(), Some("power_level"));
    }
}
