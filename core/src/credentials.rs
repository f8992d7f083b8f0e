//! Recognising the four credentials of the integration guide, and the digests they are
//! stored and compared as. Secrets never leave this module except as digests.

use sha2::{Digest, Sha256};

/// The admin console's session cookie (HttpOnly, SameSite=Strict): the control plane checks
/// it, with its CSRF rule, on the admin API; the filter passes admin requests that carry it
/// (and no `Authorization`) to the control plane untouched.
pub const CONSOLE_COOKIE: &str = "opsgate_console";

/// Where a request's credential came from and what shape it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `Bearer sk-<service>-service-key-<year>`.
    ServiceKey(&'a str),
    /// `Bearer uc_<64 hex>`.
    UserKey(&'a str),
    /// `Bearer <header>.<payload>.<signature>`.
    Jwt(&'a str),
    /// Cookie `session_token=<opaque>`.
    Session(&'a str),
}

impl Credential<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::ServiceKey(_) => "service_key",
            Credential::UserKey(_) => "api_key",
            Credential::Jwt(_) => "jwt",
            Credential::Session(_) => "session",
        }
    }
}

/// Why no usable credential was found. The message is safe to show: it never repeats the
/// credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    Missing,
    Malformed,
}

impl CredentialError {
    pub fn message(self) -> &'static str {
        match self {
            CredentialError::Missing => {
                "Missing credentials. Send 'Authorization: Bearer <key>' with a service key, an API key (uc_...) or a JWT."
            }
            CredentialError::Malformed => {
                "Invalid API key. Expected a service key (sk-<service>-service-key-<year>), an API key (uc_ + 64 hex characters) or a JWT."
            }
        }
    }
}

/// Is `s` a service key of the form `sk-<service>-service-key-<year>`?
pub fn is_service_key(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("sk-") else {
        return false;
    };
    let Some((service, year)) = rest.rsplit_once("-service-key-") else {
        return false;
    };
    !service.is_empty()
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && year.len() == 4
        && year.bytes().all(|b| b.is_ascii_digit())
}

/// The fewest characters the random part of a strong service key has (`sk-<service>-<random>
/// -service-key-<year>`): 24 alphanumerics are over 120 bits even as hex.
pub const SERVICE_KEY_RANDOM_CHARS: usize = 24;

/// Is this service key guessable: no part of its service segment (split at `-` and `_`) is
/// a random run of [`SERVICE_KEY_RANDOM_CHARS`] alphanumerics? The guide's example
/// `sk-loopnet-service-key-2025` is.
pub fn guessable_service_key(key: &str) -> bool {
    let service = key
        .strip_prefix("sk-")
        .and_then(|rest| rest.rsplit_once("-service-key-"))
        .map_or("", |(service, _)| service);
    !service.split(['-', '_']).any(|part| {
        part.len() >= SERVICE_KEY_RANDOM_CHARS && part.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Is `s` a user API key: `uc_` followed by 64 lowercase hex characters?
pub fn is_user_key(s: &str) -> bool {
    s.strip_prefix("uc_")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Does `s` look like a compact JWS (three base64url segments)?
pub fn looks_like_jwt(s: &str) -> bool {
    let mut parts = 0usize;
    for part in s.split('.') {
        parts = parts.saturating_add(1);
        if part.is_empty()
            || !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return false;
        }
    }
    parts == 3
}

/// Finds the credential in an `Authorization` header value and a `Cookie` header value,
/// in the DESIGN order: bearer tokens first, then the `session_token` cookie.
pub fn extract<'a>(
    authorization: Option<&'a str>,
    cookie: Option<&'a str>,
) -> Result<Credential<'a>, CredentialError> {
    if let Some(auth) = authorization {
        let auth = auth.trim();
        let token = match auth.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err(CredentialError::Malformed),
        };
        return if is_service_key(token) {
            Ok(Credential::ServiceKey(token))
        } else if is_user_key(token) {
            Ok(Credential::UserKey(token))
        } else if looks_like_jwt(token) {
            Ok(Credential::Jwt(token))
        } else {
            Err(CredentialError::Malformed)
        };
    }
    if let Some(cookie) = cookie.and_then(|c| cookie_value(c, "session_token")) {
        if !cookie.is_empty() {
            return Ok(Credential::Session(cookie));
        }
    }
    Err(CredentialError::Missing)
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v.trim_matches('"'))
    })
}

/// Lower-case hex SHA-256 of a secret: how keys and sessions are stored and shipped.
pub fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            s.push(
                DIGITS
                    .get(usize::from(nibble))
                    .map_or('0', |d| char::from(*d)),
            );
        }
    }
    s
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// Masks a secret for display: `sk-or-v1-ab…yz`. The vendor prefix (up to the last `-`
/// within the first ten characters) and two characters either side stay; short secrets are
/// fully masked.
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 16 {
        return "…".to_string();
    }
    // The vendor prefix ends at the last separator within the first ten characters.
    let prefix = chars
        .iter()
        .take(10)
        .rposition(|c| *c == '-' || *c == '_')
        .map_or(0, |i| i.saturating_add(1));
    // At least 16 characters: the head (at most 12) and the last two never overlap.
    let head: String = chars.iter().take(prefix.saturating_add(2)).collect();
    let tail: String = chars.iter().skip(chars.len().saturating_sub(2)).collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UC: &str = "uc_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn service_keys() {
        assert!(is_service_key("sk-loopnet-service-key-2025"));
        assert!(is_service_key("sk-bolt-diy-service-key-2025"));
        assert!(!is_service_key("sk-loopnet-service-key-25"));
        assert!(!is_service_key("sk--service-key-2025"));
        assert!(!is_service_key("sk-proj-abcdef"));
    }

    #[test]
    fn user_keys() {
        assert!(is_user_key(UC));
        assert!(!is_user_key(&UC[..60]));
        assert!(!is_user_key(&UC.to_uppercase()));
    }

    #[test]
    fn extraction_order_and_errors() {
        assert_eq!(
            extract(
                Some("Bearer sk-loopnet-service-key-2025"),
                Some("session_token=abc")
            ),
            Ok(Credential::ServiceKey("sk-loopnet-service-key-2025"))
        );
        assert_eq!(
            extract(Some(&format!("bearer {UC}")), None),
            Ok(Credential::UserKey(UC))
        );
        assert_eq!(
            extract(Some("Bearer aaa.bbb.ccc"), None),
            Ok(Credential::Jwt("aaa.bbb.ccc"))
        );
        assert_eq!(
            extract(None, Some("theme=dark; session_token=s3ss10n")),
            Ok(Credential::Session("s3ss10n"))
        );
        assert_eq!(extract(None, None), Err(CredentialError::Missing));
        assert_eq!(
            extract(Some("Basic Zm9vOmJhcg=="), None),
            Err(CredentialError::Malformed)
        );
        assert_eq!(
            extract(Some("Bearer nonsense"), None),
            Err(CredentialError::Malformed)
        );
    }

    #[test]
    fn error_messages_never_echo_the_key() {
        for e in [CredentialError::Missing, CredentialError::Malformed] {
            assert!(!e.message().contains("nonsense"));
        }
    }

    #[test]
    fn digests_and_comparison() {
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn masking_keeps_only_a_hint() {
        assert_eq!(mask("sk-or-v1-abcdef0123456789xyz"), "sk-or-v1-ab…yz");
        assert_eq!(
            mask("sk-or-v1-e2e-canary-byok-5d1c9a7e20"),
            "sk-or-v1-e2…20"
        );
        assert_eq!(mask("sk-ant-api03-abcdefghijklmnop"), "sk-ant-ap…op");
        assert_eq!(mask("short"), "…");
        let m = mask("AIzaSyA-1234567890abcdefghijklmnop");
        assert!(!m.contains("1234567890"));
    }

    #[test]
    fn short_service_parts_are_guessable() {
        assert!(guessable_service_key("sk-loopnet-service-key-2025"));
        assert!(guessable_service_key("sk-loopnet-prod_eu-service-key-2025"));
        assert!(!guessable_service_key(
            "sk-loopnet-3f9c1e7a2b4d6f8e0a1c3e5f7a9b1d2e-service-key-2025"
        ));
        // 23 random characters are not enough.
        assert!(guessable_service_key(
            "sk-loopnet-3f9c1e7a2b4d6f8e0a1c3e5-service-key-2025"
        ));
    }
}
