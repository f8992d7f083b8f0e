//! Verification of OIDC access tokens (compact JWS), pure and I/O-free: the caller
//! passes the JWKS it fetched and the current time.
//!
//! What is accepted, and why:
//!
//! * The algorithm is fixed by configuration ([`Validation::algorithm`]), never taken
//!   from the token: a token whose header names another `alg` (`none`, `HS256`, the
//!   other of RS256/ES256…) is refused before any key is looked at.
//! * `kid` is required and must name a signature key of the JWKS (`use` = `sig` or
//!   absent) whose type fits the algorithm (RSA for RS256, EC P-256 for ES256) and whose
//!   own `alg`, when it has one, is the configured one.
//! * The signature is checked before any claim is read.
//! * `iss` must equal the configured issuer; `aud` (a string or an array) must contain
//!   one of the configured audiences; `exp` is mandatory and `nbf` checked when present,
//!   both with [`DEFAULT_LEEWAY_SECS`] of leeway; `sub` is mandatory (it is who calls).
//! * Headers with `crit` are refused (no extension is understood).
//! * A token whose payload says it is not an access token (Keycloak's `typ` claim `ID`,
//!   `Refresh`, `Logout`…) is refused: an ID token is signed with the same keys and may
//!   carry an accepted audience.
//!
//! Error messages are safe to show to the client: they never repeat the token.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use p256::ecdsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Pkcs1v15Sign, RsaPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Clock skew tolerated on `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECS: i64 = 60;
/// Longer tokens are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Smaller RSA moduli are not loaded from a JWKS.
pub const MIN_RSA_BITS: usize = 2048;

/// The signature algorithms the gateway verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "RS256" => Some(Algorithm::RS256),
            "ES256" => Some(Algorithm::ES256),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    Rsa(Box<RsaPublicKey>),
    Ec(Box<p256::ecdsa::VerifyingKey>),
}

/// One signature key of a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    pub kid: String,
    /// The key's own `alg`, when the JWKS states one.
    pub alg: Option<String>,
    key: PublicKey,
}

impl Jwk {
    /// `RSA` or `EC`.
    pub fn kty(&self) -> &'static str {
        match self.key {
            PublicKey::Rsa(_) => "RSA",
            PublicKey::Ec(_) => "EC",
        }
    }

    /// Can this key verify signatures made with `alg`?
    pub fn fits(&self, alg: Algorithm) -> bool {
        let type_fits = matches!(
            (&self.key, alg),
            (PublicKey::Rsa(_), Algorithm::RS256) | (PublicKey::Ec(_), Algorithm::ES256)
        );
        type_fits && self.alg.as_deref().is_none_or(|a| a == alg.as_str())
    }
}

/// The usable signature keys of a JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
    /// Entries of the document that were not loaded (encryption keys, other key types or
    /// curves, no `kid`, malformed numbers, RSA moduli under [`MIN_RSA_BITS`]).
    pub skipped: usize,
}

/// Why a JWKS document was not loaded at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// Not JSON, or no `keys` array.
    Malformed(String),
    /// No entry is a usable signature key.
    NoUsableKeys { skipped: usize },
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::Malformed(why) => write!(f, "malformed JWKS: {why}"),
            JwksError::NoUsableKeys { skipped } => write!(
                f,
                "the JWKS has no usable signature key ({skipped} entries skipped)"
            ),
        }
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Base64url as JWKs are found in the wild: padding tolerated.
const LENIENT_B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn b64(s: &str) -> Option<Vec<u8>> {
    LENIENT_B64URL.decode(s).ok()
}

fn parse_jwk(raw: RawJwk) -> Option<Jwk> {
    let kid = raw.kid.filter(|k| !k.is_empty())?;
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let key = match raw.kty.as_deref()? {
        "RSA" => {
            let n = BigUint::from_bytes_be(&b64(raw.n.as_deref()?)?);
            let e = BigUint::from_bytes_be(&b64(raw.e.as_deref()?)?);
            let key = RsaPublicKey::new(n, e).ok()?;
            if key.size().saturating_mul(8) < MIN_RSA_BITS {
                return None;
            }
            PublicKey::Rsa(Box::new(key))
        }
        "EC" => {
            if raw.crv.as_deref()? != "P-256" {
                return None;
            }
            let x: [u8; 32] = b64(raw.x.as_deref()?)?.try_into().ok()?;
            let y: [u8; 32] = b64(raw.y.as_deref()?)?.try_into().ok()?;
            let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
            let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point).ok()?;
            PublicKey::Ec(Box::new(key))
        }
        _ => return None,
    };
    Some(Jwk {
        kid,
        alg: raw.alg,
        key,
    })
}

impl KeySet {
    /// Loads the signature keys of a JWKS document (`{"keys": [...]}`). Entries that are
    /// not usable signature keys are skipped and counted; a document with none is an error,
    /// so that a garbled answer never replaces keys that work.
    pub fn parse(json: &[u8]) -> Result<KeySet, JwksError> {
        let raw: RawJwks =
            serde_json::from_slice(json).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let mut set = KeySet::default();
        for entry in raw.keys {
            match serde_json::from_value::<RawJwk>(entry)
                .ok()
                .and_then(parse_jwk)
            {
                Some(jwk) => set.keys.push(jwk),
                None => set.skipped = set.skipped.saturating_add(1),
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys {
                skipped: set.skipped,
            });
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid == kid)
    }

    /// Does any key fit `alg`?
    pub fn has_key_for(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|k| k.fits(alg))
    }
}

/// What a token must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    pub issuer: String,
    /// Accepted audiences; the token's `aud` must contain at least one.
    pub audiences: Vec<String>,
    pub algorithm: Algorithm,
    pub leeway_secs: i64,
}

impl Validation {
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>, algorithm: Algorithm) -> Self {
        Validation {
            issuer: issuer.into(),
            audiences,
            algorithm,
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
    /// The key that signed it.
    pub kid: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not a compact JWS, undecodable, too long, or a header with `crit`.
    Malformed,
    /// The header's `alg` is not the configured algorithm (includes `none`).
    AlgorithmNotAllowed,
    MissingKid,
    /// No key of the JWKS has this `kid` (a refetch may find it).
    UnknownKid(String),
    /// The key named by `kid` does not fit the configured algorithm.
    KeyMismatch,
    BadSignature,
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
            JwtError::UnknownKid(_) => "it was signed with an unknown key".into(),
            JwtError::KeyMismatch => "its key does not fit the accepted algorithm".into(),
            JwtError::BadSignature => "its signature is invalid".into(),
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
            JwtError::UnknownKid(_) => "unknown_kid",
            JwtError::KeyMismatch => "key_mismatch",
            JwtError::BadSignature => "signature",
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

/// The `kid` of a token's header, without verifying anything (for logs and cache keys).
pub fn peek_kid(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let header: Header = serde_json::from_slice(&decode_part(header).ok()?).ok()?;
    header.kid
}

/// Verifies a compact JWS against `keys` and `rules` at `now` (Unix seconds).
pub fn verify(
    token: &str,
    keys: &KeySet,
    rules: &Validation,
    now: i64,
) -> Result<Claims, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Header =
        serde_json::from_slice(&decode_part(h64)?).map_err(|_| JwtError::Malformed)?;
    if header.alg.as_deref() != Some(rules.algorithm.as_str()) {
        return Err(JwtError::AlgorithmNotAllowed);
    }
    if header.crit.is_some() {
        return Err(JwtError::Malformed);
    }
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or(JwtError::MissingKid)?;
    let mut named = keys.keys.iter().filter(|k| k.kid == kid).peekable();
    if named.peek().is_none() {
        return Err(JwtError::UnknownKid(kid));
    }
    let key = named
        .find(|k| k.fits(rules.algorithm))
        .ok_or(JwtError::KeyMismatch)?;
    let signature = decode_part(s64)?;
    // The signed part is everything before the last '.', which separates the signature.
    let signing_input = token
        .rsplit_once('.')
        .map(|(signed, _)| signed.as_bytes())
        .ok_or(JwtError::Malformed)?;
    let valid = match &key.key {
        PublicKey::Rsa(k) => {
            let hashed = Sha256::digest(signing_input);
            k.verify(Pkcs1v15Sign::new::<Sha256>(), &hashed, &signature)
                .is_ok()
        }
        PublicKey::Ec(k) => p256::ecdsa::Signature::from_slice(&signature)
            .is_ok_and(|sig| k.verify(signing_input, &sig).is_ok()),
    };
    if !valid {
        return Err(JwtError::BadSignature);
    }

    let claims: Map<String, Value> =
        serde_json::from_slice(&decode_part(p64)?).map_err(|_| JwtError::Malformed)?;
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
        kid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use rsa::pkcs1v15::SigningKey as RsaSigningKey;
    use rsa::signature::SignatureEncoding;
    use rsa::RsaPrivateKey;
    use serde_json::json;
    use std::sync::OnceLock;

    const ISS: &str = "https://id.example.com/realms/opsgate";
    const AUD: &str = "opsgate-gateway";
    const NOW: i64 = 1_768_478_400;

    fn rsa_key() -> &'static RsaPrivateKey {
        static KEY: OnceLock<RsaPrivateKey> = OnceLock::new();
        KEY.get_or_init(|| RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap())
    }

    fn ec_key() -> &'static p256::ecdsa::SigningKey {
        static KEY: OnceLock<p256::ecdsa::SigningKey> = OnceLock::new();
        KEY.get_or_init(|| p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }

    fn enc(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa_jwk(kid: &str, key: &RsaPrivateKey) -> Value {
        let public = key.to_public_key();
        json!({"kty":"RSA","use":"sig","alg":"RS256","kid":kid,
               "n":enc(&public.n().to_bytes_be()),"e":enc(&public.e().to_bytes_be())})
    }

    fn ec_jwk(kid: &str, key: &p256::ecdsa::SigningKey) -> Value {
        let point = key.verifying_key().to_encoded_point(false);
        json!({"kty":"EC","crv":"P-256","kid":kid,
               "x":enc(point.x().unwrap()),"y":enc(point.y().unwrap())})
    }

    fn jwks() -> KeySet {
        let doc = json!({"keys":[
            rsa_jwk("rsa-1", rsa_key()),
            ec_jwk("ec-1", ec_key()),
            // Keycloak also publishes an encryption key: skipped.
            {"kty":"RSA","use":"enc","kid":"enc-1","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"},
            {"kty":"oct","kid":"hmac","k":"c2VjcmV0"},
        ]});
        KeySet::parse(doc.to_string().as_bytes()).unwrap()
    }

    fn claims() -> Value {
        json!({"iss":ISS,"aud":["account",AUD],"sub":"user-42","email":"ada@example.com",
               "exp":NOW+300,"nbf":NOW-10,"iat":NOW-10,
               "realm_access":{"roles":["offline_access","pro"]},"roles":["pro","admin"]})
    }

    fn sign_with(alg: &str, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({"alg":alg,"typ":"JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        let input = format!(
            "{}.{}",
            enc(header.to_string().as_bytes()),
            enc(claims.to_string().as_bytes())
        );
        let sig = match alg {
            "RS256" => RsaSigningKey::<Sha256>::new(rsa_key().clone())
                .sign(input.as_bytes())
                .to_vec(),
            "ES256" => {
                let s: p256::ecdsa::Signature = ec_key().sign(input.as_bytes());
                s.to_bytes().to_vec()
            }
            _ => Vec::new(),
        };
        format!("{input}.{}", enc(&sig))
    }

    fn rs(claims: &Value) -> String {
        sign_with("RS256", Some("rsa-1"), claims)
    }

    fn es(claims: &Value) -> String {
        sign_with("ES256", Some("ec-1"), claims)
    }

    fn rules(alg: Algorithm) -> Validation {
        Validation::new(ISS, vec![AUD.to_string(), "other".into()], alg)
    }

    fn check(token: &str, alg: Algorithm, now: i64) -> Result<Claims, JwtError> {
        verify(token, &jwks(), &rules(alg), now)
    }

    #[test]
    fn jwks_keeps_signature_keys_only() {
        let set = jwks();
        assert_eq!(set.len(), 2);
        assert_eq!(set.skipped, 2);
        assert!(set.contains_kid("rsa-1") && set.contains_kid("ec-1"));
        assert!(!set.contains_kid("enc-1"));
        assert!(set.has_key_for(Algorithm::RS256) && set.has_key_for(Algorithm::ES256));
    }

    #[test]
    fn jwks_errors() {
        assert!(matches!(
            KeySet::parse(b"<html>"),
            Err(JwksError::Malformed(_))
        ));
        assert!(matches!(
            KeySet::parse(br#"{"nokeys":[]}"#),
            Err(JwksError::Malformed(_))
        ));
        assert_eq!(
            KeySet::parse(br#"{"keys":[{"kty":"EC","crv":"P-384","kid":"a","x":"AA","y":"AA"}]}"#),
            Err(JwksError::NoUsableKeys { skipped: 1 })
        );
        // No kid: skipped.
        let mut k = rsa_jwk("x", rsa_key());
        k.as_object_mut().unwrap().remove("kid");
        let doc = json!({"keys":[k]}).to_string();
        assert_eq!(
            KeySet::parse(doc.as_bytes()),
            Err(JwksError::NoUsableKeys { skipped: 1 })
        );
        // A point not on the curve: skipped.
        let doc = json!({"keys":[{"kty":"EC","crv":"P-256","kid":"bad",
            "x":enc(&[1u8;32]),"y":enc(&[2u8;32])}]})
        .to_string();
        assert!(KeySet::parse(doc.as_bytes()).is_err());
        // A 1024-bit RSA key: skipped.
        let small = RsaPrivateKey::new(&mut rand::rngs::OsRng, 1024).unwrap();
        let doc = json!({"keys":[rsa_jwk("small", &small)]}).to_string();
        assert!(KeySet::parse(doc.as_bytes()).is_err());
    }

    #[test]
    fn valid_rs256_and_es256_tokens_are_accepted() {
        for (token, alg, kid) in [
            (rs(&claims()), Algorithm::RS256, "rsa-1"),
            (es(&claims()), Algorithm::ES256, "ec-1"),
        ] {
            let c = check(&token, alg, NOW).unwrap();
            assert_eq!(c.subject, "user-42");
            assert_eq!(c.email.as_deref(), Some("ada@example.com"));
            assert_eq!(c.roles, ["offline_access", "pro", "admin"]);
            assert_eq!(c.expires_at, NOW + 300);
            assert_eq!(c.kid, kid);
        }
        // `aud` as a plain string.
        let mut c = claims();
        c["aud"] = json!(AUD);
        assert!(check(&rs(&c), Algorithm::RS256, NOW).is_ok());
        assert_eq!(peek_kid(&rs(&c)).as_deref(), Some("rsa-1"));
    }

    #[test]
    fn algorithm_is_fixed_by_configuration() {
        // An ES256 token where RS256 is configured, and the reverse.
        assert_eq!(
            check(&es(&claims()), Algorithm::RS256, NOW),
            Err(JwtError::AlgorithmNotAllowed)
        );
        assert_eq!(
            check(&rs(&claims()), Algorithm::ES256, NOW),
            Err(JwtError::AlgorithmNotAllowed)
        );
        // A header that lies: says ES256 but names the RSA key.
        assert_eq!(
            check(
                &sign_with("ES256", Some("rsa-1"), &claims()),
                Algorithm::ES256,
                NOW
            ),
            Err(JwtError::KeyMismatch)
        );
        // alg none, with and without a signature.
        let none = sign_with("none", Some("rsa-1"), &claims());
        assert_eq!(
            check(&none, Algorithm::RS256, NOW),
            Err(JwtError::AlgorithmNotAllowed)
        );
        let unsigned = format!("{}.", none.rsplit_once('.').unwrap().0);
        assert_eq!(
            check(&unsigned, Algorithm::RS256, NOW),
            Err(JwtError::AlgorithmNotAllowed)
        );
        // HS256 (the classic RSA-public-key-as-HMAC-secret confusion) is refused on its header.
        let hs = sign_with("HS256", Some("rsa-1"), &claims());
        assert_eq!(
            check(&hs, Algorithm::RS256, NOW),
            Err(JwtError::AlgorithmNotAllowed)
        );
        // A header without alg.
        let no_alg = format!(
            "{}.{}",
            enc(br#"{"kid":"rsa-1"}"#),
            rs(&claims()).split_once('.').unwrap().1
        );
        assert_eq!(
            check(&no_alg, Algorithm::RS256, NOW),
            Err(JwtError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn kid_is_required_and_must_match() {
        assert_eq!(
            check(&sign_with("RS256", None, &claims()), Algorithm::RS256, NOW),
            Err(JwtError::MissingKid)
        );
        assert_eq!(
            check(
                &sign_with("RS256", Some("rsa-2"), &claims()),
                Algorithm::RS256,
                NOW
            ),
            Err(JwtError::UnknownKid("rsa-2".into()))
        );
        // The encryption key's kid is not a signature key.
        assert_eq!(
            check(
                &sign_with("RS256", Some("enc-1"), &claims()),
                Algorithm::RS256,
                NOW
            ),
            Err(JwtError::UnknownKid("enc-1".into()))
        );
        // A JWK whose own alg differs is not used for RS256.
        let mut k = rsa_jwk("rsa-1", rsa_key());
        k["alg"] = json!("RS512");
        let set = KeySet::parse(json!({ "keys": [k] }).to_string().as_bytes()).unwrap();
        assert_eq!(
            verify(&rs(&claims()), &set, &rules(Algorithm::RS256), NOW),
            Err(JwtError::KeyMismatch)
        );
    }

    #[test]
    fn time_claims_with_leeway() {
        let mut c = claims();
        c["exp"] = json!(NOW);
        // Expired, but within the 60 s leeway.
        assert!(check(&rs(&c), Algorithm::RS256, NOW + 59).is_ok());
        assert_eq!(
            check(&rs(&c), Algorithm::RS256, NOW + 60),
            Err(JwtError::Expired)
        );
        assert_eq!(
            check(&rs(&c), Algorithm::RS256, NOW + 3600),
            Err(JwtError::Expired)
        );
        // Not valid before NOW + 100: fine from NOW + 40 on.
        let mut c = claims();
        c["nbf"] = json!(NOW + 100);
        assert_eq!(
            check(&es(&c), Algorithm::ES256, NOW),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            check(&es(&c), Algorithm::ES256, NOW + 39),
            Err(JwtError::NotYetValid)
        );
        assert!(check(&es(&c), Algorithm::ES256, NOW + 40).is_ok());
        // nbf is optional, exp is not.
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nbf");
        assert!(check(&rs(&c), Algorithm::RS256, NOW).is_ok());
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            check(&rs(&c), Algorithm::RS256, NOW),
            Err(JwtError::MissingClaim("exp"))
        );
        let mut c = claims();
        c["exp"] = json!("tomorrow");
        assert_eq!(
            check(&rs(&c), Algorithm::RS256, NOW),
            Err(JwtError::MissingClaim("exp"))
        );
        // Fractional seconds are accepted.
        let mut c = claims();
        c["exp"] = json!((NOW + 10) as f64 + 0.5);
        assert_eq!(
            check(&rs(&c), Algorithm::RS256, NOW).unwrap().expires_at,
            NOW + 10
        );
    }

    #[test]
    fn issuer_and_audience_are_mandatory() {
        let mut c = claims();
        c["iss"] = json!("https://evil.example.com/realms/opsgate");
        assert_eq!(
            check(&rs(&c), Algorithm::RS256, NOW),
            Err(JwtError::WrongIssuer)
        );
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            check(&rs(&c), Algorithm::RS256, NOW),
            Err(JwtError::MissingClaim("iss"))
        );
        let mut c = claims();
        c["aud"] = json!(["account"]);
        assert_eq!(
            check(&rs(&c), Algorithm::RS256, NOW),
            Err(JwtError::WrongAudience)
        );
        c["aud"] = json!("account");
        assert_eq!(
            check(&es(&c), Algorithm::ES256, NOW),
            Err(JwtError::WrongAudience)
        );
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            check(&rs(&c), Algorithm::RS256, NOW),
            Err(JwtError::MissingClaim("aud"))
        );
        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            check(&rs(&c), Algorithm::RS256, NOW),
            Err(JwtError::MissingClaim("sub"))
        );
    }

    #[test]
    fn only_access_tokens() {
        let mut c = claims();
        c["typ"] = json!("Bearer");
        assert!(check(&rs(&c), Algorithm::RS256, NOW).is_ok());
        for typ in ["ID", "Refresh", "Logout"] {
            c["typ"] = json!(typ);
            assert_eq!(
                check(&rs(&c), Algorithm::RS256, NOW),
                Err(JwtError::NotAnAccessToken),
                "{typ}"
            );
        }
    }

    #[test]
    fn tampering_is_detected() {
        for (token, alg) in [
            (rs(&claims()), Algorithm::RS256),
            (es(&claims()), Algorithm::ES256),
        ] {
            let (h, rest) = token.split_once('.').unwrap();
            let (_, s) = rest.split_once('.').unwrap();
            // Another payload under the same signature: a different subject.
            let mut c = claims();
            c["sub"] = json!("admin");
            let forged = format!("{h}.{}.{s}", enc(c.to_string().as_bytes()));
            assert_eq!(check(&forged, alg, NOW), Err(JwtError::BadSignature));
            // A flipped signature byte.
            let mut sig = URL_SAFE_NO_PAD.decode(s).unwrap();
            sig[10] ^= 1;
            let flipped = format!("{h}.{}.{}", rest.split_once('.').unwrap().0, enc(&sig));
            assert_eq!(check(&flipped, alg, NOW), Err(JwtError::BadSignature));
            // A truncated or empty signature.
            let short = format!(
                "{h}.{}.{}",
                rest.split_once('.').unwrap().0,
                enc(&sig[..20])
            );
            assert_eq!(check(&short, alg, NOW), Err(JwtError::BadSignature));
        }
    }

    #[test]
    fn malformed_tokens() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!!.b.c",
            "e30.e30.",
            &"a".repeat(MAX_TOKEN_BYTES + 1),
        ] {
            assert!(check(bad, Algorithm::RS256, NOW).is_err(), "{bad}");
        }
        // A header with crit is refused.
        let header = enc(br#"{"alg":"RS256","kid":"rsa-1","crit":["exp"]}"#);
        let t = rs(&claims());
        let rest = t.split_once('.').unwrap().1;
        assert_eq!(
            check(&format!("{header}.{rest}"), Algorithm::RS256, NOW),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn messages_never_echo_the_token() {
        let t = rs(&claims());
        for e in [
            JwtError::Malformed,
            JwtError::UnknownKid("rsa-9".into()),
            JwtError::BadSignature,
            JwtError::MissingClaim("aud"),
            JwtError::Expired,
        ] {
            assert!(!e.message().contains(&t));
            assert!(e.message().starts_with("Invalid token"));
        }
    }
}
