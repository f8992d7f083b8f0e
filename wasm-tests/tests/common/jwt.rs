//! The identity provider, played by the tests: real RSA (2048) and P-256 keys, tokens
//! signed with them, and the JWKS the filter fetches, served through `respond`.

use super::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use p256::ecdsa::signature::Signer;
use rsa::pkcs1v15::SigningKey as RsaSigningKey;
use rsa::signature::SignatureEncoding;
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::Sha256;
use std::sync::OnceLock;

pub const ISSUER: &str = "https://id.example.test/realms/opsgate";
pub const AUDIENCE: &str = "opsgate-gateway";
pub const IDP: &str = "keycloak";
pub const JWKS_PATH: &str = "/realms/opsgate/protocol/openid-connect/certs";
/// The host clock's start (2026-01-15T12:00:00Z) in Unix seconds.
pub const T0: i64 = (opsgate_wasm_tests::DEFAULT_START_NANOS / 1_000_000_000) as i64;

/// Two RSA keys (`rsa-1`, `rsa-2`: a rotation) and one EC key (`ec-1`), made once per
/// test binary.
pub fn rsa_key(kid: &str) -> &'static RsaPrivateKey {
    static K1: OnceLock<RsaPrivateKey> = OnceLock::new();
    static K2: OnceLock<RsaPrivateKey> = OnceLock::new();
    let cell = if kid == "rsa-2" { &K2 } else { &K1 };
    cell.get_or_init(|| RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap())
}

pub fn ec_key() -> &'static p256::ecdsa::SigningKey {
    static K: OnceLock<p256::ecdsa::SigningKey> = OnceLock::new();
    K.get_or_init(|| p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWK for one of the keys.
pub fn jwk(kid: &str) -> Value {
    if kid.starts_with("ec") {
        let p = ec_key().verifying_key().to_encoded_point(false);
        json!({"kty":"EC","crv":"P-256","use":"sig","alg":"ES256","kid":kid,
               "x":b64(p.x().unwrap()),"y":b64(p.y().unwrap())})
    } else {
        let k = rsa_key(kid).to_public_key();
        json!({"kty":"RSA","use":"sig","alg":"RS256","kid":kid,
               "n":b64(&k.n().to_bytes_be()),"e":b64(&k.e().to_bytes_be())})
    }
}

/// A JWKS document with these keys, plus an encryption key as Keycloak publishes one.
pub fn jwks(kids: &[&str]) -> String {
    let mut keys: Vec<Value> = kids.iter().map(|k| jwk(k)).collect();
    let mut enc = jwk("rsa-1");
    enc["use"] = json!("enc");
    enc["alg"] = json!("RSA-OAEP");
    enc["kid"] = json!("enc-1");
    keys.push(enc);
    json!({ "keys": keys }).to_string()
}

/// Claims of a valid access token for `sub`, valid from T0 - 10 s to T0 + 300 s.
pub fn claims(sub: &str) -> Value {
    json!({"iss":ISSUER,"aud":["account",AUDIENCE],"sub":sub,"email":format!("{sub}@example.com"),
           "exp":T0+300,"nbf":T0-10,"iat":T0-10,"typ":"Bearer",
           "realm_access":{"roles":["offline_access","pro"]}})
}

/// Signs `claims` with the key `kid` under the header `alg` (`none` and other algorithms
/// get a dummy signature, so that the token still has three non-empty parts).
pub fn sign(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg":alg,"typ":"JWT"});
    if let Some(k) = kid {
        header["kid"] = json!(k);
    }
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key_kid = kid.unwrap_or("rsa-1");
    let sig = match alg {
        "RS256" => RsaSigningKey::<Sha256>::new(rsa_key(key_kid).clone())
            .sign(input.as_bytes())
            .to_vec(),
        "ES256" => {
            let s: p256::ecdsa::Signature = ec_key().sign(input.as_bytes());
            s.to_bytes().to_vec()
        }
        _ => b"not-a-signature".to_vec(),
    };
    format!("{input}.{}", b64(&sig))
}

/// An RS256 token signed with `rsa-1`.
pub fn rs256(claims: &Value) -> String {
    sign("RS256", Some("rsa-1"), claims)
}

/// The `"jwt"` config field for `algorithm`, with extra fields (e.g. `,"timeout_ms":500`).
pub fn jwt_field(algorithm: &str, extra: &str) -> String {
    format!(
        r#""jwt":{{"issuer":"{ISSUER}","audiences":["{AUDIENCE}","other"],"algorithm":"{algorithm}","jwks_cluster":"{IDP}","refresh_interval_ms":60000,"unknown_kid_cooldown_ms":30000{extra}}}"#
    )
}

pub fn is_jwks_call(c: &HttpCall) -> bool {
    c.cluster == IDP
}

pub fn jwks_call(host: &mut Host) -> Option<HttpCall> {
    host.take_call(is_jwks_call)
}

pub fn serve_jwks(host: &mut Host, call: &HttpCall, kids: &[&str]) {
    host.respond(
        call.token,
        200,
        &[("content-type", "application/json")],
        jwks(kids).as_bytes(),
    )
    .unwrap();
}

/// A gateway with JWTs enabled (`algorithm`, extra top-level config), its snapshot loaded
/// and its first JWKS (`kids`) served.
pub fn jwt_gateway_with(algorithm: &str, extra: &str, kids: &[&str]) -> Host {
    let mut fields = jwt_field(algorithm, "");
    if !extra.is_empty() {
        fields = format!("{fields},{extra}");
    }
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    host.add_cluster(IDP);
    assert!(host.configure("", &config_with(&fields)).unwrap());
    host.tick().unwrap();
    let call = snapshot_call(&mut host).expect("a snapshot poll");
    answer_snapshot(&mut host, &call, &snapshot());
    let call = jwks_call(&mut host).expect("the first tick fetches the JWKS");
    assert_eq!(header(&call.headers, ":path"), Some(JWKS_PATH));
    assert_eq!(
        header(&call.headers, ":authority"),
        Some("id.example.test"),
        "derived from the issuer"
    );
    serve_jwks(&mut host, &call, kids);
    host
}

pub fn jwt_gateway(algorithm: &str) -> Host {
    jwt_gateway_with(algorithm, "", &["rsa-1", "ec-1"])
}
