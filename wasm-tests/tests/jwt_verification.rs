//! JWTs (OIDC access tokens) are verified by Envoy's `jwt_authn` before the filter runs (the
//! harness plays it: `common::jwt::jwt_authn`), which forwards a verified token's payload.
//! The filter accepts a bearer JWT only when that payload is the token's own and its claims
//! hold: a valid token becomes a `Jwt` principal sent to authorize; a token `jwt_authn` did
//! not verify (tampered, unknown key, another key under the same `kid`), an expired one, a
//! wrong audience or issuer, `alg` none, a `crit` header, an ID token → 401 without a
//! callout, with the most specific reason. No signature is checked in the wasm.

mod common;
use common::jwt::*;
use common::*;
use opsgate_core::contract::{Endpoint, Principal};
use opsgate_wasm_tests::{Action, Host, StreamId, StreamKind};
use serde_json::json;

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
fn a_token_jwt_authn_verified_is_authorized_as_a_jwt_principal() {
    let mut host = jwt_gateway();
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
    // The provider gets its own key, never the client's token nor the verified payload.
    assert_eq!(
        host.header(id, "authorization").as_deref(),
        Some("Bearer platform-key-123")
    );
    assert_eq!(host.header(id, PAYLOAD_HEADER), None);
    // ES256 the same: the algorithm is jwt_authn's business (fixed by the key's type).
    let id = with_token(&mut host, &sign("ES256", Some("ec-1"), &claims("ec-user")));
    match authorized_principal(&mut host, id) {
        Principal::Jwt { subject, .. } => assert_eq!(subject, "ec-user"),
        p => panic!("not a JWT principal: {p:?}"),
    }
    assert_eq!(counter(&host, "opsgate.jwt.verified"), 2);
}

#[test]
fn bad_tokens_are_401_without_a_callout() {
    let mut host = jwt_gateway();
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

    // alg none, and HS256 "signed" with a public key: jwt_authn verifies neither.
    refused(
        &mut host,
        &sign("none", Some("rsa-1"), &claims("u")),
        "algorithm",
    );
    refused(
        &mut host,
        &sign("HS256", Some("rsa-1"), &claims("u")),
        "could not be verified",
    );
    // A true unsigned token (empty signature) is not even a JWS.
    let none = sign("none", Some("rsa-1"), &claims("u"));
    let unsigned = format!("{}.", none.rsplit_once('.').unwrap().0);
    refused(&mut host, &unsigned, "Invalid");
    // An extension the gateway does not understand, even on a verified token.
    let crit = sign_with_header(
        &json!({"alg":"RS256","kid":"rsa-1","crit":["x-ext"]}),
        "rsa-1",
        &claims("u"),
    );
    refused(&mut host, &crit, "well-formed");
    // No kid: jwt_authn would try every key; the gateway wants the key named.
    refused(&mut host, &sign("RS256", None, &claims("u")), "key id");
    // A key jwt_authn does not trust (not in the JWKS).
    refused(
        &mut host,
        &sign("RS256", Some("rsa-9"), &claims("u")),
        "could not be verified",
    );

    // A payload swapped under a valid signature.
    let good = rs256(&claims("u"));
    let (h, rest) = good.split_once('.').unwrap();
    let (_, s) = rest.split_once('.').unwrap();
    let forged_payload = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(claims("admin").to_string().as_bytes())
    };
    refused(
        &mut host,
        &format!("{h}.{forged_payload}.{s}"),
        "could not be verified",
    );
    // A signature from another key under the same kid.
    let other = sign("RS256", Some("ec-1"), &claims("u"));
    let other_sig = other.rsplit_once('.').unwrap().1;
    let (hp, _) = good.rsplit_once('.').unwrap();
    refused(
        &mut host,
        &format!("{hp}.{other_sig}"),
        "could not be verified",
    );

    assert!(counter(&host, "opsgate.jwt.verify_failures") >= 11);
    assert_eq!(counter(&host, "opsgate.jwt.verified"), 0);
}

/// What `jwt_authn` forwarded counts only for the token it belongs to: a client that sends
/// its own payload header (were it not stripped) or another token's verified payload gets
/// nothing from it.
#[test]
fn a_verified_payload_vouches_only_for_its_own_token() {
    let mut host = jwt_gateway();
    let real = rs256(&claims("user-1"));
    let forged = sign("RS256", Some("rsa-9"), &claims("admin"));
    // jwt_authn strips what the client sent under the payload header.
    let auth = bearer(&forged);
    let id = chat_with_headers(
        &mut host,
        &[
            ("authorization", &auth),
            (PAYLOAD_HEADER, payload_of(&forged)),
        ],
    );
    expect_reply(&host, id, 401, "invalid_api_key");
    // Behind an Envoy that forgot to strip it, another token's payload still does not fit.
    let mut bare = jwt_gateway();
    bare.before_filter(|_| {});
    let id = chat_with_headers(
        &mut bare,
        &[
            ("authorization", &auth),
            (PAYLOAD_HEADER, payload_of(&real)),
        ],
    );
    let (_, env) = expect_reply(&bare, id, 401, "invalid_api_key");
    assert!(env["error"]["message"]
        .as_str()
        .unwrap()
        .contains("could not be verified"));
    assert_eq!(pending_to(&bare, AUTHORIZE), 0);
}

#[test]
fn exp_and_nbf_have_60_seconds_of_leeway() {
    let mut host = jwt_gateway();
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
fn non_metered_routes_check_the_token_at_the_edge() {
    let mut host = jwt_gateway();
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
fn without_a_jwt_section_tokens_are_refused() {
    let mut host = gateway();
    host.before_filter(jwt_authn(&["rsa-1"]));
    let id = with_token(&mut host, &rs256(&claims("u")));
    let (_, env) = expect_reply(&host, id, 401, "invalid_api_key");
    assert!(env["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not enabled"));
}
