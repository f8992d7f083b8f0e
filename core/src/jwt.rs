//! OIDC access tokens (compact JWS) after Envoy's `jwt_authn` filter, pure and I/O-free.
//!
//! Envoy verifies: the signature against the identity provider's JWKS (which it fetches,
//! caches and refreshes), with the algorithm fixed by the key's type, the issuer, the
//! audiences and the lifetime (60 s of clock skew). It forwards the payload of a token it
//! verified in a header only it can set (the shipped configs strip a client's copy before
//! `jwt_authn` runs). This module decides what a token means for the gateway:
//!
//! * A token is verified only when the payload Envoy forwarded is this token's own payload
//!   segment, byte for byte. Anything else is refused, with the most specific reason the
//!   token's own (unverified) claims give — expired, not yet valid, another issuer or
//!   audience — else "its signature could not be verified" (unknown key, bad signature).
//! * The claims are checked again here (`iss`, `aud`, `exp`/`nbf` with [`DEFAULT_LEEWAY_SECS`]):
//!   a `jwt_authn` configured more loosely than the filter does not widen what is accepted.
//! * Headers with `crit` are refused (no extension is understood), and so are `alg` `none`
//!   and a header without `kid` (`jwt_authn` would try every key of the JWKS).
//! * A token whose payload says it is not an access token (Keycloak's `typ` claim `ID`,
//!   `Refresh`, `Logout`…) is refused: an ID token is signed with the same keys and may
//!   carry an accepted audience.
//! * `sub` is mandatory: it is who calls.
//!
//! Error messages are safe to show to the client: they never repeat the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

/// Clock skew tolerated on `exp` and `nbf` (the same as the shipped `jwt_authn` configs).
pub const DEFAULT_LEEWAY_SECS: i64 = 60;
/// Longer tokens are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What a token must satisfy (checked again after `jwt_authn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    pub issuer: String,
    /// Accepted audiences; the token's `aud` must contain at least one.
    pub audiences: Vec<String>,
    pub leeway_secs: i64,
}

impl Validation {
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Validation {
            issuer: issuer.into(),
            audiences,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub subject: String,
    pub email: Option<String>,
    /// `realm_access.roles` (Keycloak) and a top-level `roles` array, without duplicates.
    pub roles: Vec<String>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not a compact JWS, undecodable, too long, or a header with `crit`.
    Malformed,
    /// The header names no algorithm, or `none`.
    AlgorithmNotAllowed,
    MissingKid,
    /// Envoy did not verify it: unknown key, bad signature, or a key of another type.
    Unverified,
    /// A mandatory claim is absent or of the wrong type.
    MissingClaim(&'static str),
    WrongIssuer,
    WrongAudience,
    Expired,
    NotYetValid,
    /// The payload's `typ` says it is an ID, refresh or logout token.
    NotAnAccessToken,
}

impl JwtError {
    /// A message for the client; never contains the token.
    pub fn message(&self) -> String {
        let why = match self {
            JwtError::Malformed => "it is not a well-formed signed JWT".to_string(),
            JwtError::AlgorithmNotAllowed => "its signature algorithm is not accepted".into(),
            JwtError::MissingKid => "its header has no key id (kid)".into(),
            JwtError::Unverified => {
                "its signature could not be verified (unknown key or invalid signature)".into()
            }
            JwtError::MissingClaim(c) => format!("claim '{c}' is missing or invalid"),
            JwtError::WrongIssuer => "it was not issued by the accepted issuer".into(),
            JwtError::WrongAudience => "it is not meant for this gateway (audience)".into(),
            JwtError::Expired => "it has expired".into(),
            JwtError::NotYetValid => "it is not valid yet (nbf)".into(),
            JwtError::NotAnAccessToken => "it is not an access token".into(),
        };
        format!("Invalid token: {why}. Obtain a new access token and retry.")
    }

    /// A short label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed",
            JwtError::AlgorithmNotAllowed => "alg",
            JwtError::MissingKid => "no_kid",
            JwtError::Unverified => "unverified",
            JwtError::MissingClaim(_) => "missing_claim",
            JwtError::WrongIssuer => "iss",
            JwtError::WrongAudience => "aud",
            JwtError::Expired => "exp",
            JwtError::NotYetValid => "nbf",
            JwtError::NotAnAccessToken => "typ",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<Value>,
}

fn decode_part(part: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed)
}

/// A NumericDate claim as whole seconds (fractions are truncated).
fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(JwtError::MissingClaim(name)),
        Some(_) => Err(JwtError::MissingClaim(name)),
    }
}

fn string_array(v: Option<&Value>) -> impl Iterator<Item = &str> {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

/// Accepts `token` when Envoy's `jwt_authn` verified it — `verified_payload` (the header
/// it forwards) is the token's own payload segment — and its claims hold at `now` (Unix
/// seconds).
pub fn accept(
    token: &str,
    verified_payload: Option<&[u8]>,
    rules: &Validation,
    now: i64,
) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Header =
        serde_json::from_slice(&decode_part(h64)?).map_err(|_| JwtError::Malformed)?;
    match header.alg.as_deref() {
        None => return Err(JwtError::AlgorithmNotAllowed),
        Some(alg) if alg.eq_ignore_ascii_case("none") => return Err(JwtError::AlgorithmNotAllowed),
        Some(_) => {}
    }
    if header.crit.is_some() {
        return Err(JwtError::Malformed);
    }
    if header.kid.as_deref().is_none_or(str::is_empty) {
        return Err(JwtError::MissingKid);
    }
    let claims: Map<String, Value> =
        serde_json::from_slice(&decode_part(p64)?).map_err(|_| JwtError::Malformed)?;

    // The claims first, verified or not: an unverified token's own claims give the most
    // useful reason (it expired, it is for another audience) when they fail.
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        Some(Value::String(_)) => return Err(JwtError::WrongIssuer),
        _ => return Err(JwtError::MissingClaim("iss")),
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(v @ Value::Array(_)) => string_array(Some(v)).collect(),
        _ => return Err(JwtError::MissingClaim("aud")),
    };
    if !audiences
        .iter()
        .any(|a| rules.audiences.iter().any(|ok| ok == a))
    {
        return Err(JwtError::WrongAudience);
    }
    let exp = numeric_date(&claims, "exp")?.ok_or(JwtError::MissingClaim("exp"))?;
    if now >= exp.saturating_add(rules.leeway_secs) {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")? {
        if now.saturating_add(rules.leeway_secs) < nbf {
            return Err(JwtError::NotYetValid);
        }
    }
    if verified_payload != Some(p64.as_bytes()) {
        return Err(JwtError::Unverified);
    }

    if let Some(typ) = claims.get("typ").and_then(Value::as_str) {
        if !(typ.eq_ignore_ascii_case("bearer") || typ.eq_ignore_ascii_case("at+jwt")) {
            return Err(JwtError::NotAnAccessToken);
        }
    }
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(JwtError::MissingClaim("sub"))?
        .to_string();
    let email = claims
        .get("email")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut roles: Vec<String> = Vec::new();
    let realm_roles = string_array(claims.get("realm_access").and_then(|r| r.get("roles")));
    for role in realm_roles.chain(string_array(claims.get("roles"))) {
        if !roles.iter().any(|r| r == role) {
            roles.push(role.to_string());
        }
    }
    Ok(Claims {
        subject,
        email,
        roles,
        expires_at: exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_700_000_000;
    const ISS: &str = "https://idp.example.com/realms/opsgate";

    fn rules() -> Validation {
        Validation::new(ISS, vec!["opsgate-gateway".into()])
    }

    fn claims() -> Value {
        json!({
            "iss": ISS, "aud": ["account", "opsgate-gateway"], "sub": "alice",
            "exp": NOW + 300, "iat": NOW, "email": "alice@example.com",
            "realm_access": {"roles": ["admin", "user"]}, "roles": ["user", "auditor"],
        })
    }

    fn token_with(header: Value, claims: &Value) -> String {
        let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2lnbmF0dXJl", part(&header), part(claims))
    }

    fn token(claims: &Value) -> String {
        token_with(json!({"alg": "RS256", "kid": "k1", "typ": "JWT"}), claims)
    }

    fn payload(t: &str) -> &[u8] {
        t.split('.').nth(1).unwrap_or_default().as_bytes()
    }

    /// As Envoy forwards it: the token's own payload segment.
    fn verified(t: &str) -> Result<Claims, JwtError> {
        accept(t, Some(payload(t)), &rules(), NOW)
    }

    #[test]
    fn a_token_envoy_verified_maps_to_its_holder() {
        let c = verified(&token(&claims())).expect("accepted");
        assert_eq!(c.subject, "alice");
        assert_eq!(c.email.as_deref(), Some("alice@example.com"));
        assert_eq!(c.roles, vec!["admin", "user", "auditor"]);
        assert_eq!(c.expires_at, NOW + 300);
    }

    #[test]
    fn without_envoys_verified_payload_nothing_is_accepted() {
        let t = token(&claims());
        assert_eq!(accept(&t, None, &rules(), NOW), Err(JwtError::Unverified));
        // Another token's verified payload does not vouch for this one.
        let mut forged = claims();
        forged["sub"] = json!("mallory");
        let forged = token(&forged);
        assert_eq!(
            accept(&forged, Some(payload(&t)), &rules(), NOW),
            Err(JwtError::Unverified)
        );
        assert!(JwtError::Unverified
            .message()
            .contains("could not be verified"));
    }

    #[test]
    fn an_unverified_token_is_told_the_most_specific_reason_its_claims_give() {
        let mut c = claims();
        c["exp"] = json!(NOW - 61);
        assert_eq!(
            accept(&token(&c), None, &rules(), NOW),
            Err(JwtError::Expired)
        );
        let mut c = claims();
        c["aud"] = json!("someone-else");
        assert_eq!(
            accept(&token(&c), None, &rules(), NOW),
            Err(JwtError::WrongAudience)
        );
        let mut c = claims();
        c["iss"] = json!("https://evil.example.com");
        assert_eq!(
            accept(&token(&c), None, &rules(), NOW),
            Err(JwtError::WrongIssuer)
        );
        let mut c = claims();
        c["nbf"] = json!(NOW + 120);
        assert_eq!(
            accept(&token(&c), None, &rules(), NOW),
            Err(JwtError::NotYetValid)
        );
    }

    #[test]
    fn claims_are_checked_again_after_envoy_with_the_leeway() {
        let mut c = claims();
        c["exp"] = json!(NOW - 30); // inside the 60 s leeway
        assert!(verified(&token(&c)).is_ok());
        c["exp"] = json!(NOW - 60);
        assert_eq!(verified(&token(&c)), Err(JwtError::Expired));
        let mut c = claims();
        c["aud"] = json!("account");
        assert_eq!(verified(&token(&c)), Err(JwtError::WrongAudience));
        let mut c = claims();
        c.as_object_mut().map(|m| m.remove("sub"));
        assert_eq!(verified(&token(&c)), Err(JwtError::MissingClaim("sub")));
        let mut c = claims();
        c["typ"] = json!("ID");
        assert_eq!(verified(&token(&c)), Err(JwtError::NotAnAccessToken));
        c["typ"] = json!("Bearer");
        assert!(verified(&token(&c)).is_ok());
    }

    #[test]
    fn headers_that_are_never_accepted() {
        let c = claims();
        for alg in [
            json!({"alg": "none"}),
            json!({"alg": "NONE"}),
            json!({"kid": "k1"}),
        ] {
            let t = token_with(alg, &c);
            assert_eq!(verified(&t), Err(JwtError::AlgorithmNotAllowed));
        }
        let t = token_with(json!({"alg": "RS256"}), &c);
        assert_eq!(verified(&t), Err(JwtError::MissingKid));
        let t = token_with(json!({"alg": "RS256", "kid": "k1", "crit": ["exp"]}), &c);
        assert_eq!(verified(&t), Err(JwtError::Malformed));
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(verified(&huge), Err(JwtError::Malformed));
        assert_eq!(verified("a.b"), Err(JwtError::Malformed));
        assert_eq!(verified("a.b.c.d"), Err(JwtError::Malformed));
        assert_eq!(verified("!!.??.x"), Err(JwtError::Malformed));
    }
}
