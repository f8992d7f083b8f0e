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

const BASE: &str = r#""issuer":"https://id.example.test/realms/x","audiences":["a"]"#;

#[test]
fn a_valid_jwt_section_loads() {
    for config in [
        jwt(BASE),
        config_with(&jwt_field("")),
        jwt(&format!(
            r#"{BASE},"payload_header":"x-opsgate-verified-claims""#
        )),
    ] {
        let mut host = Host::plugin().unwrap();
        host.add_cluster(CP);
        assert!(host.configure("", &config).unwrap(), "{config}");
    }
}

#[test]
fn jwt_fields_are_checked_and_named() {
    refused(&jwt(&BASE.replace(r#"["a"]"#, "[]")), "jwt.audiences");
    refused(&jwt(&BASE.replace(r#"["a"]"#, r#"[""]"#)), "jwt.audiences");
    refused(&jwt(&BASE.replace(r#"["a"]"#, r#""a""#)), "jwt.audiences");
    refused(
        &jwt(&BASE.replace("https://id.example.test/realms/x", "")),
        "jwt.issuer",
    );
    // The payload header must be one the filter strips from every request.
    for bad in [
        "x-jwt-payload",
        "X-Opsgate-Jwt",
        "x-opsgate-",
        "x-opsgate-a b",
    ] {
        refused(
            &jwt(&format!(r#"{BASE},"payload_header":"{bad}""#)),
            "jwt.payload_header",
        );
    }
    refused(
        &jwt(&format!(r#"{BASE},"leeway":0"#)),
        "unknown field `leeway`",
    );
    refused(&jwt(r#""audiences":["a"]"#), "`issuer`");
}

/// What the filter used to do itself is Envoy's now: a config that still sets it is refused
/// with a message that says where it went.
#[test]
fn verification_settings_moved_to_jwt_authn_are_refused_by_name() {
    for (field, value) in [
        ("algorithm", r#""RS256""#),
        ("jwks_cluster", r#""kc""#),
        ("jwks_authority", r#""kc""#),
        ("jwks_path", r#""/certs""#),
        ("refresh_interval_ms", "60000"),
        ("unknown_kid_cooldown_ms", "30000"),
        ("timeout_ms", "500"),
    ] {
        refused(
            &jwt(&format!(r#"{BASE},"{field}":{value}"#)),
            &format!("jwt.{field} is no longer the filter's"),
        );
    }
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
