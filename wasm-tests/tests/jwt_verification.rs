//! JWTs (OIDC access tokens) are verified in the filter against the JWKS it fetches
//! through the configured cluster: a valid token becomes a `Jwt` principal sent to
//! authorize; an expired one, a wrong audience or issuer, another algorithm, an unknown or
//! missing key id, a tampered token → 401 without a callout. An unknown `kid` triggers one
//! refetch per cooldown (the request waits for it); an unreachable JWKS leaves the last good
//! keys in use; a verified token is cached until its `exp`.

mod common;
use common::jwt::*;
use common::*;
use opsgate_core::contract::{Endpoint, Principal};
use opsgate_wasm_tests::{Action, Host, StreamId, StreamKind};
use serde_json::json;
use std::time::Duration;

fn with_token(host: &mut Host, token: &str) -> StreamId {
    let auth = bearer(token);
    chat_with_headers(host, &[("authorization", &auth)])
}

/// The principal of the authorize callout the stream made.
fn authorized_principal(host: &mut Host, id: StreamId) -> Principal {
    assert!(
        host.local_reply(id).is_none(),
        "unexpected reply: {:?}",
        host.local_reply(id).map(|r| r.body_str())
    );
    let call = authorize_call(host);
    let req = authorize_request(&call);
    assert_eq!(req.endpoint, Endpoint::ChatCompletions);
    allow(host, &call, grant());
    req.principal
}

fn refused(host: &mut Host, token: &str, needle: &str) {
    let id = with_token(host, token);
    let (reply, env) = expect_reply(host, id, 401, "invalid_api_key");
    let msg = env["error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    assert!(
        !reply.body_str().contains(token),
        "the token is never echoed"
    );
    assert_eq!(
        pending_to(host, AUTHORIZE),
        0,
        "no authorize for a refused token"
    );
}

#[test]
fn valid_rs256_token_is_authorized_as_a_jwt_principal() {
    let mut host = jwt_gateway("RS256");
    let token = rs256(&claims("user-42"));
    let id = with_token(&mut host, &token);
    let principal = authorized_principal(&mut host, id);
    assert_eq!(
        principal,
        Principal::Jwt {
            subject: "user-42".into(),
            email: Some("user-42@example.com".into()),
            roles: vec!["offline_access".into(), "pro".into()],
        }
    );
    assert_eq!(host.resumed(id, StreamKind::Request), 1, "forwarded");
    // The provider gets its own key, never the client's token.
    assert_eq!(
        host.header(id, "authorization").as_deref(),
        Some("Bearer platform-key-123")
    );
}

#[test]
fn valid_es256_token_is_authorized() {
    let mut host = jwt_gateway("ES256");
    let token = sign("ES256", Some("ec-1"), &claims("ec-user"));
    let id = with_token(&mut host, &token);
    match authorized_principal(&mut host, id) {
        Principal::Jwt { subject, .. } => assert_eq!(subject, "ec-user"),
        p => panic!("not a JWT principal: {p:?}"),
    }
    // Under ES256, an RS256 token is refused whatever its signature.
    refused(&mut host, &rs256(&claims("user-42")), "algorithm");
}

#[test]
fn bad_tokens_are_401_without_a_callout() {
    let mut host = jwt_gateway("RS256");
    let mut expired = claims("u");
    expired["exp"] = json!(T0 - 61);
    refused(&mut host, &rs256(&expired), "expired");

    let mut wrong_aud = claims("u");
    wrong_aud["aud"] = json!("account");
    refused(&mut host, &rs256(&wrong_aud), "audience");

    let mut wrong_iss = claims("u");
    wrong_iss["iss"] = json!("https://evil.example.test/realms/opsgate");
    refused(&mut host, &rs256(&wrong_iss), "issuer");

    let mut not_yet = claims("u");
    not_yet["nbf"] = json!(T0 + 120);
    refused(&mut host, &rs256(&not_yet), "not valid yet");

    // An ID token (same keys, maybe an accepted audience) is not an access token.
    let mut id_token = claims("u");
    id_token["typ"] = json!("ID");
    refused(&mut host, &rs256(&id_token), "not an access token");

    // Another algorithm than the configured one, and alg none.
    refused(
        &mut host,
        &sign("ES256", Some("ec-1"), &claims("u")),
        "algorithm",
    );
    refused(
        &mut host,
        &sign("none", Some("rsa-1"), &claims("u")),
        "algorithm",
    );
    refused(
        &mut host,
        &sign("HS256", Some("rsa-1"), &claims("u")),
        "algorithm",
    );
    // A true unsigned token (empty signature) is not even a JWS.
    let none = sign("none", Some("rsa-1"), &claims("u"));
    let unsigned = format!("{}.", none.rsplit_once('.').unwrap().0);
    refused(&mut host, &unsigned, "Invalid");
    // No kid.
    refused(&mut host, &sign("RS256", None, &claims("u")), "key id");

    // A payload swapped under a valid signature.
    let good = rs256(&claims("u"));
    let (h, rest) = good.split_once('.').unwrap();
    let (_, s) = rest.split_once('.').unwrap();
    let forged_payload = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(claims("admin").to_string().as_bytes())
    };
    refused(&mut host, &format!("{h}.{forged_payload}.{s}"), "signature");
    // A signature from another key under the same kid.
    let other = sign("RS256", Some("rsa-2"), &claims("u"));
    let other_sig = other.rsplit_once('.').unwrap().1;
    let (hp, _) = good.rsplit_once('.').unwrap();
    refused(&mut host, &format!("{hp}.{other_sig}"), "signature");

    assert!(counter(&host, "opsgate.jwt.verify_failures") >= 11);
    assert_eq!(counter(&host, "opsgate.jwt.verified"), 0);
}

#[test]
fn exp_and_nbf_have_60_seconds_of_leeway() {
    let mut host = jwt_gateway("RS256");
    let mut c = claims("late");
    c["exp"] = json!(T0 - 59);
    let id = with_token(&mut host, &rs256(&c));
    authorized_principal(&mut host, id);
    let mut c = claims("early");
    c["nbf"] = json!(T0 + 59);
    let id = with_token(&mut host, &rs256(&c));
    authorized_principal(&mut host, id);
}

#[test]
fn unknown_kid_triggers_one_refetch_per_cooldown_and_the_request_waits() {
    let mut host = jwt_gateway("RS256");
    // The IdP rotated to rsa-2; the gateway has only rsa-1.
    let first = sign("RS256", Some("rsa-2"), &claims("rotated"));
    let id = with_token(&mut host, &first);
    assert!(host.local_reply(id).is_none(), "waits for the refetch");
    assert_eq!(pending_to(&host, AUTHORIZE), 0);
    let call = jwks_call(&mut host).expect("an unknown kid refetches the JWKS");
    // The refetch answers with the old keys only: refused.
    serve_jwks(&mut host, &call, &["rsa-1"]);
    let (_, env) = expect_reply(&host, id, 401, "invalid_api_key");
    assert!(env["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown key"));

    // Within the cooldown, another token with an unknown kid does not refetch.
    host.advance(Duration::from_secs(10));
    let second = sign("RS256", Some("rsa-2"), &claims("rotated-2"));
    let id = with_token(&mut host, &second);
    expect_reply(&host, id, 401, "invalid_api_key");
    assert!(jwks_call(&mut host).is_none(), "one refetch per cooldown");

    // After the cooldown, the next one refetches; the new key is there now, and the
    // waiting request goes on to authorize with its body.
    host.advance(Duration::from_secs(21));
    let third = sign("RS256", Some("rsa-2"), &claims("rotated-3"));
    let id = with_token(&mut host, &third);
    assert!(host.local_reply(id).is_none());
    let call = jwks_call(&mut host).expect("a refetch after the cooldown");
    serve_jwks(&mut host, &call, &["rsa-1", "rsa-2"]);
    let call = authorize_call(&mut host);
    let req = authorize_request(&call);
    assert!(matches!(&req.principal, Principal::Jwt { subject, .. } if subject == "rotated-3"));
    assert_eq!(
        req.model.as_deref(),
        Some("gpt-4o-mini"),
        "the body was kept"
    );
    allow(&mut host, &call, grant());
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
    assert_eq!(counter(&host, "opsgate.jwt.jwks_unknown_kid_refetches"), 2);

    // Tokens of the old key still work, and the second token now does too.
    let id = with_token(&mut host, &rs256(&claims("old-key")));
    authorized_principal(&mut host, id);
    let id = with_token(&mut host, &second);
    authorized_principal(&mut host, id);
}

#[test]
fn a_failed_refetch_refuses_the_waiting_request_and_keeps_the_keys() {
    let mut host = jwt_gateway("RS256");
    let token = sign("RS256", Some("rsa-2"), &claims("x"));
    let id = with_token(&mut host, &token);
    let call = jwks_call(&mut host).unwrap();
    host.fail_call(call.token).unwrap();
    expect_reply(&host, id, 401, "invalid_api_key");
    let id = with_token(&mut host, &rs256(&claims("still-fine")));
    authorized_principal(&mut host, id);
}

#[test]
fn a_non_metered_request_waits_for_the_refetch_then_passes() {
    let mut host = jwt_gateway("RS256");
    let token = sign("RS256", Some("rsa-2"), &claims("x"));
    let auth = bearer(&token);
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/models",
        &[("authorization", &auth)],
    );
    assert_eq!(action, Action::Pause);
    let call = jwks_call(&mut host).unwrap();
    serve_jwks(&mut host, &call, &["rsa-1", "rsa-2"]);
    assert!(host.local_reply(id).is_none());
    assert_eq!(host.resumed(id, StreamKind::Request), 1, "passed on");
}

#[test]
fn an_unreachable_jwks_keeps_the_last_good_keys() {
    let mut host = jwt_gateway("RS256");
    // The refresh is due after 60 s; every way of failing leaves the keys in place.
    for failure in 0..3 {
        host.advance(Duration::from_secs(61));
        host.tick().unwrap();
        let call = jwks_call(&mut host).expect("a refresh");
        match failure {
            0 => host.fail_call(call.token).unwrap(),
            1 => host
                .respond(call.token, 503, &[], b"upstream connect error")
                .unwrap(),
            _ => host
                .respond(call.token, 200, &[], b"<html>maintenance</html>")
                .unwrap(),
        }
        let id = with_token(&mut host, &rs256(&claims(&format!("user-{failure}"))));
        authorized_principal(&mut host, id);
    }
    assert!(has_log_at(&host, 3, "keeping the last good keys"));
    assert_eq!(counter(&host, "opsgate.jwt.jwks_fetch_failures"), 3);

    // After a failure the root retries sooner than the refresh interval.
    host.advance(Duration::from_secs(6));
    host.tick().unwrap();
    let call = jwks_call(&mut host).expect("a retry after the failure");
    serve_jwks(&mut host, &call, &["rsa-1"]);
    assert_eq!(counter(&host, "opsgate.jwt.jwks_fetches"), 2);
}

#[test]
fn a_rotation_picked_up_by_the_refresh_retires_the_old_key() {
    let mut host = jwt_gateway("RS256");
    let old = rs256(&claims("old"));
    let id = with_token(&mut host, &old);
    authorized_principal(&mut host, id);
    host.advance(Duration::from_secs(61));
    host.tick().unwrap();
    let call = jwks_call(&mut host).unwrap();
    serve_jwks(&mut host, &call, &["rsa-2"]);
    assert!(has_log_at(&host, 2, "JWKS loaded"));
    // The cached verification of the old token went with its key set: it is verified again,
    // its kid is unknown (the first unknown kid may refetch), and it is refused.
    let id = with_token(&mut host, &old);
    let call = jwks_call(&mut host).expect("unknown kid: a refetch");
    serve_jwks(&mut host, &call, &["rsa-2"]);
    expect_reply(&host, id, 401, "invalid_api_key");
    let id = with_token(&mut host, &sign("RS256", Some("rsa-2"), &claims("new")));
    authorized_principal(&mut host, id);
}

#[test]
fn a_verified_token_is_cached_until_exp() {
    let mut host = jwt_gateway("RS256");
    let token = rs256(&claims("cached"));
    for _ in 0..3 {
        let id = with_token(&mut host, &token);
        authorized_principal(&mut host, id);
        host.done(id).unwrap();
    }
    assert_eq!(counter(&host, "opsgate.jwt.verified"), 1, "verified once");
    assert_eq!(counter(&host, "opsgate.jwt.cache_hits"), 2);

    // At exp the cache entry is gone; within the leeway it is verified again and accepted,
    // past it refused.
    host.advance(Duration::from_secs(300));
    let id = with_token(&mut host, &token);
    authorized_principal(&mut host, id);
    assert_eq!(counter(&host, "opsgate.jwt.verified"), 2);
    host.advance(Duration::from_secs(60));
    refused(&mut host, &token, "expired");
}

#[test]
fn a_far_future_exp_is_cached_for_at_most_an_hour_and_cannot_crash_the_filter() {
    let mut host = jwt_gateway("RS256");
    for exp in [json!(i64::MAX), json!(1e300), json!(T0 + 86_400 * 365)] {
        let mut c = claims("far");
        c["exp"] = exp;
        let id = with_token(&mut host, &rs256(&c));
        authorized_principal(&mut host, id);
    }
    assert!(host.failed().is_none());
    let mut c = claims("far");
    c["exp"] = json!(T0 + 86_400 * 365);
    let token = rs256(&c);
    host.advance(Duration::from_secs(3_599));
    let id = with_token(&mut host, &token);
    authorized_principal(&mut host, id);
    assert_eq!(counter(&host, "opsgate.jwt.verified"), 3, "cached");
    host.advance(Duration::from_secs(1));
    let id = with_token(&mut host, &token);
    authorized_principal(&mut host, id);
    assert_eq!(
        counter(&host, "opsgate.jwt.verified"),
        4,
        "verified again after an hour"
    );
}

#[test]
fn a_refused_token_is_remembered_for_the_negative_ttl() {
    let mut host = jwt_gateway("RS256");
    let mut c = claims("u");
    c["aud"] = json!("account");
    let token = rs256(&c);
    for _ in 0..5 {
        refused(&mut host, &token, "audience");
    }
    assert_eq!(
        counter(&host, "opsgate.jwt.verify_failures"),
        1,
        "verified once"
    );
    assert_eq!(counter(&host, "opsgate.credential_cache.negative_hits"), 4);
    host.advance(Duration::from_secs(5));
    refused(&mut host, &token, "audience");
    assert_eq!(counter(&host, "opsgate.jwt.verify_failures"), 2);
}

#[test]
fn before_the_first_jwks_a_token_gets_503() {
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    host.add_cluster(IDP);
    assert!(host
        .configure("", &config_with(&jwt_field("RS256", "")))
        .unwrap());
    host.tick().unwrap();
    let call = snapshot_call(&mut host).unwrap();
    answer_snapshot(&mut host, &call, &snapshot());
    let jwks = jwks_call(&mut host).expect("fetched at start");
    let id = with_token(&mut host, &rs256(&claims("early")));
    expect_reply(&host, id, 503, "service_unavailable");
    serve_jwks(&mut host, &jwks, &["rsa-1"]);
    let id = with_token(&mut host, &rs256(&claims("early")));
    authorized_principal(&mut host, id);
}

#[test]
fn non_metered_routes_verify_the_token_at_the_edge() {
    let mut host = jwt_gateway("RS256");
    let good = bearer(&rs256(&claims("u")));
    let (_, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[("authorization", &good)],
    );
    assert_eq!(action, Action::Continue);
    let mut c = claims("u");
    c["exp"] = json!(T0 - 3600);
    let bad = bearer(&rs256(&c));
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[("authorization", &bad)],
    );
    assert_eq!(action, Action::Pause);
    expect_reply(&host, id, 401, "invalid_api_key");
}

#[test]
fn explicit_jwks_location_is_used() {
    let extra = r#","jwks_authority":"kc.internal:8443","jwks_path":"/certs""#;
    let mut host = Host::plugin().unwrap();
    host.add_cluster(CP);
    host.add_cluster(IDP);
    assert!(host
        .configure("", &config_with(&jwt_field("RS256", extra)))
        .unwrap());
    host.tick().unwrap();
    let call = jwks_call(&mut host).unwrap();
    assert_eq!(header(&call.headers, ":path"), Some("/certs"));
    assert_eq!(
        header(&call.headers, ":authority"),
        Some("kc.internal:8443")
    );
    assert_eq!(header(&call.headers, ":method"), Some("GET"));
}

#[test]
fn first_sight_verification_cost() {
    // Informational: how long a first-sight RS256 verification takes in the wasm VM
    // against a cache hit (cranelift here; V8 in Envoy is comparable).
    let mut host = jwt_gateway("RS256");
    let mut fresh = std::time::Duration::ZERO;
    let n = 20;
    for i in 0..n {
        let token = rs256(&claims(&format!("timing-{i}")));
        let auth = bearer(&token);
        let start = std::time::Instant::now();
        let (id, _) = send_headers_only(
            &mut host,
            "GET",
            "/api/v1/llm/models",
            &[("authorization", &auth)],
        );
        fresh += start.elapsed();
        host.done(id).unwrap();
    }
    let token = bearer(&rs256(&claims("timing-0")));
    let start = std::time::Instant::now();
    for _ in 0..n {
        let (id, _) = send_headers_only(
            &mut host,
            "GET",
            "/api/v1/llm/models",
            &[("authorization", &token)],
        );
        host.done(id).unwrap();
    }
    let cached = start.elapsed();
    eprintln!(
        "RS256 first sight: {:?}/request; cached: {:?}/request",
        fresh / n,
        cached / n
    );
    assert_eq!(counter(&host, "opsgate.jwt.verified"), 20);
}

#[test]
fn keys_refetched_for_a_request_answered_meanwhile_still_serve_the_next_ones() {
    let mut host = jwt_gateway_with("RS256", r#""max_body_bytes":2048"#, &["rsa-1", "ec-1"]);
    let token = sign("RS256", Some("rsa-2"), &claims("rotated"));
    let auth = bearer(&token);
    let id = host.new_stream().unwrap();
    host.request_headers(
        id,
        &[
            (":method", "POST"),
            (":path", "/api/v1/llm/chat/completions"),
            (":authority", "gateway"),
            ("authorization", &auth),
        ],
        false,
    )
    .unwrap();
    let call = jwks_call(&mut host).expect("an unknown kid refetches");
    // The body turns out too large while the keys are on their way: 413 now.
    host.request_body(id, &vec![b'x'; 4096], true).unwrap();
    expect_reply(&host, id, 413, "payload_too_large");
    // The refetch still lands, within the cooldown, for everyone else.
    serve_jwks(&mut host, &call, &["rsa-1", "rsa-2"]);
    let id = with_token(&mut host, &sign("RS256", Some("rsa-2"), &claims("next")));
    assert!(jwks_call(&mut host).is_none(), "no second refetch");
    assert!(
        matches!(authorized_principal(&mut host, id), Principal::Jwt { subject, .. } if subject == "next")
    );
}
