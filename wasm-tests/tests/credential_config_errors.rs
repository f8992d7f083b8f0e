//! The credential settings (`jwt`, the credential caches) are validated at load: a bad
//! value refuses the config with a critical log naming the field; `jwt` is optional.

mod common;
use common::jwt::*;
use common::*;
use opsgate_wasm_tests::Host;

const CRITICAL: u32 = 5;

fn refused(config: &str, needle: &str) {
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    assert!(
        !host.configure("", config).unwrap(),
        "accepted a bad config: {config}"
    );
    assert!(host.failed().is_none(), "refusing is not a crash");
    assert!(
        has_log_at(&host, CRITICAL, needle),
        "no critical log naming {needle:?} for {config}: {:?}",
        host.logs()
    );
}

fn jwt(fields: &str) -> String {
    config_with(&format!(r#""jwt":{{{fields}}}"#))
}

const BASE: &str = r#""issuer":"https://id.example.test/realms/x","audiences":["a"],"algorithm":"RS256","jwks_cluster":"kc""#;

#[test]
fn a_valid_jwt_section_loads() {
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    assert!(host.configure("", &jwt(BASE)).unwrap());
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    assert!(host
        .configure("", &config_with(&jwt_field("ES256", "")))
        .unwrap());
}

#[test]
fn jwt_fields_are_checked_and_named() {
    refused(
        &jwt(&BASE.replace("RS256", "HS256")),
        "jwt.algorithm must be \"RS256\" or \"ES256\"",
    );
    refused(&jwt(&BASE.replace("RS256", "none")), "jwt.algorithm");
    refused(&jwt(&BASE.replace(r#"["a"]"#, "[]")), "jwt.audiences");
    refused(&jwt(&BASE.replace(r#"["a"]"#, r#"[""]"#)), "jwt.audiences");
    refused(&jwt(&BASE.replace(r#"["a"]"#, r#""a""#)), "jwt.audiences");
    refused(
        &jwt(&BASE.replace("https://id.example.test/realms/x", "")),
        "jwt.issuer",
    );
    refused(&jwt(&BASE.replace(r#""kc""#, r#""""#)), "jwt.jwks_cluster");
    refused(
        &jwt(&format!(r#"{BASE},"jwks_path":"certs""#)),
        "jwt.jwks_path",
    );
    refused(
        &jwt(&format!(r#"{BASE},"refresh_interval_ms":10"#)),
        "jwt.refresh_interval_ms",
    );
    refused(
        &jwt(&format!(r#"{BASE},"unknown_kid_cooldown_ms":0"#)),
        "jwt.unknown_kid_cooldown_ms",
    );
    refused(
        &jwt(&format!(r#"{BASE},"timeout_ms":"2s""#)),
        "jwt.timeout_ms",
    );
    refused(
        &jwt(&format!(r#"{BASE},"leeway":0"#)),
        "unknown field `leeway`",
    );
    refused(&jwt(r#""audiences":["a"]"#), "`issuer`");
}

#[test]
fn a_non_url_issuer_needs_an_explicit_jwks_location() {
    let opaque = BASE.replace("https://id.example.test/realms/x", "opsgate-idp");
    refused(&jwt(&opaque), "jwt.jwks_authority");
    refused(
        &jwt(&format!(r#"{opaque},"jwks_authority":"kc""#)),
        "jwt.jwks_path",
    );
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    assert!(host
        .configure(
            "",
            &jwt(&format!(
                r#"{opaque},"jwks_authority":"kc","jwks_path":"/certs""#
            ))
        )
        .unwrap());
}

#[test]
fn cache_settings_are_checked() {
    refused(
        &config_with(r#""credential_cache_ttl_ms":0"#),
        "credential_cache_ttl_ms",
    );
    refused(
        &config_with(r#""negative_cache_ttl_ms":3600000"#),
        "negative_cache_ttl_ms",
    );
    refused(
        &config_with(r#""credential_cache_max_entries":0"#),
        "credential_cache_max_entries",
    );
    refused(
        &config_with(r#""negative_cache_ttl_ms":-1"#),
        "negative_cache_ttl_ms",
    );
}
