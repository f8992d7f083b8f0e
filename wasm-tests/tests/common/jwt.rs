//! The identity provider and Envoy's `jwt_authn` filter, played by the tests. Envoy verifies
//! tokens before our filter runs and forwards a verified token's payload segment in
//! [`PAYLOAD_HEADER`] (a client's copy is stripped first); the harness does the same with
//! [`jwt_authn`]. A token here is "signed" by a named key: its signature is a digest of the
//! key's name and the signed part, so a tampered token or a key the gateway does not trust
//! fails exactly as it would in Envoy, with no real cryptography in the tests.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use opsgate_wasm_tests::HeaderMap;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const ISSUER: &str = "https://id.example.test/realms/opsgate";
pub const AUDIENCE: &str = "opsgate-gateway";
/// Where `jwt_authn` forwards a verified payload (the shipped configs' name).
pub const PAYLOAD_HEADER: &str = "x-opsgate-jwt-payload";
/// The host clock's start (2026-01-15T12:00:00Z) in Unix seconds.
pub const T0: i64 = (opsgate_wasm_tests::DEFAULT_START_NANOS / 1_000_000_000) as i64;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn signature(kid: &str, signed: &str) -> String {
    b64(&Sha256::digest(format!("{kid}|{signed}").as_bytes()))
}

/// Claims of a valid access token for `sub`, valid from T0 - 10 s to T0 + 300 s.
pub fn claims(sub: &str) -> Value {
    json!({"iss":ISSUER,"aud":["account",AUDIENCE],"sub":sub,"email":format!("{sub}@example.com"),
           "exp":T0+300,"nbf":T0-10,"iat":T0-10,"typ":"Bearer",
           "realm_access":{"roles":["offline_access","pro"]}})
}

/// A token for `claims` under the header `alg`, signed by the key `kid` (`none` and other
/// algorithms get a signature no key made).
pub fn sign(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg":alg,"typ":"JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    sign_with_header(&header, kid.unwrap_or("rsa-1"), claims)
}

/// A token with this exact header, signed by `kid`.
pub fn sign_with_header(header: &Value, kid: &str, claims: &Value) -> String {
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = match header["alg"].as_str() {
        Some("RS256" | "ES256") => signature(kid, &signed),
        _ => b64(b"not-a-signature"),
    };
    format!("{signed}.{sig}")
}

/// An RS256 token signed by `rsa-1`.
pub fn rs256(claims: &Value) -> String {
    sign("RS256", Some("rsa-1"), claims)
}

/// The payload segment of a token (what `jwt_authn` forwards once it verified it).
pub fn payload_of(token: &str) -> &str {
    token.split('.').nth(1).unwrap_or_default()
}

/// Envoy's `jwt_authn` as the shipped configs run it, trusting the keys `trusted`: a
/// client's [`PAYLOAD_HEADER`] is removed; a bearer JWT whose signature one of those keys
/// made and whose `iss` and `aud` are the gateway's gets its payload forwarded. Any other
/// request passes untouched (`allow_missing_or_failed`).
pub fn jwt_authn(trusted: &'static [&'static str]) -> impl Fn(&mut HeaderMap) {
    move |headers: &mut HeaderMap| {
        headers.remove(PAYLOAD_HEADER.as_bytes());
        let Some(auth) = headers.get_str("authorization") else {
            return;
        };
        let Some(token) = auth.strip_prefix("Bearer ") else {
            return;
        };
        let Some((signed, sig)) = token.rsplit_once('.') else {
            return;
        };
        let Some(header) = signed
            .split('.')
            .next()
            .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
            .and_then(|h| serde_json::from_slice::<Value>(&h).ok())
        else {
            return;
        };
        if !matches!(header["alg"].as_str(), Some("RS256" | "ES256")) {
            return;
        }
        let kid = header["kid"].as_str().unwrap_or("rsa-1");
        if !trusted.contains(&kid) || sig != signature(kid, signed) {
            return;
        }
        let payload = payload_of(token);
        let Some(claims) = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
        else {
            return;
        };
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == AUDIENCE,
            Value::Array(list) => list.iter().any(|a| a == AUDIENCE),
            _ => false,
        };
        if claims["iss"] == ISSUER && aud_ok {
            headers.set(PAYLOAD_HEADER.as_bytes(), payload.as_bytes());
        }
    }
}

/// The `"jwt"` config field, with extra fields (e.g. `,"payload_header":"x-opsgate-p"`).
pub fn jwt_field(extra: &str) -> String {
    format!(r#""jwt":{{"issuer":"{ISSUER}","audiences":["{AUDIENCE}","other"]{extra}}}"#)
}

/// A gateway with JWTs enabled (extra top-level config), its snapshot loaded, behind a
/// `jwt_authn` trusting `trusted`.
pub fn jwt_gateway_with(extra: &str, trusted: &'static [&'static str]) -> Host {
    let mut fields = jwt_field("");
    if !extra.is_empty() {
        fields = format!("{fields},{extra}");
    }
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    assert!(host.configure("", &config_with(&fields)).unwrap());
    host.tick().unwrap();
    let call = snapshot_call(&mut host).expect("a snapshot poll");
    answer_snapshot(&mut host, &call, &snapshot());
    host.before_filter(jwt_authn(trusted));
    host
}

pub fn jwt_gateway() -> Host {
    jwt_gateway_with("", &["rsa-1", "ec-1"])
}
