//! Non-metered calls authenticated at the edge by a verified JWT reach the control plane
//! with the identity the filter verified: `x-opsgate-identity` (base64url JSON of subject,
//! email, roles and the token's exp) and `x-opsgate-identity-auth` (the internal token). Every `x-opsgate-*`
//! header a client sends is removed first, so a client can never claim an identity. Service
//! keys, `uc_` keys and sessions pass with their own credential and no identity. Metered
//! calls never carry the identity (or the internal token) to a provider. Under the optional
//! `admin_prefix`, a JWT is verified the same way and a bearer that is not a JWT (the admin
//! token) passes untouched; nothing there is metered.

mod common;
use common::jwt::*;
use common::*;
use opsgate_core::contract::{Identity, IDENTITY_AUTH_HEADER, IDENTITY_HEADER};
use opsgate_wasm_tests::{Action, Host, StreamId, StreamKind};
use serde_json::json;

const ADMIN: &str = r#""admin_prefix":"/admin/v1""#;

/// The identity the filter attached to a passed request, if any (checking the token too).
fn identity_of(host: &Host, id: StreamId) -> Option<Identity> {
    let value = host.header(id, IDENTITY_HEADER)?;
    assert_eq!(
        host.header(id, IDENTITY_AUTH_HEADER).as_deref(),
        Some(opsgate_core::contract::identity_auth(TOKEN).as_str()),
        "the identity travels with a value derived from the internal token"
    );
    Some(Identity::decode(&value).expect("a decodable identity"))
}

fn no_identity(host: &Host, id: StreamId) {
    for (k, _) in host.request_headers_of(id) {
        assert!(
            !k.to_ascii_lowercase().starts_with("x-opsgate-"),
            "{k} must not be there: {:?}",
            host.request_headers_of(id)
        );
    }
}

fn expected(sub: &str) -> Identity {
    Identity {
        subject: sub.into(),
        email: Some(format!("{sub}@example.com")),
        roles: vec!["offline_access".into(), "pro".into()],
        // The token's exp: the control plane ends a console session no later.
        expires_at: Some(T0 + 300),
    }
}

/// A request with an optional body; returns the stream and the last callback's action.
fn request(
    host: &mut Host,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (StreamId, Action) {
    let id = host.new_stream().unwrap();
    let mut all = vec![
        (":method", method),
        (":path", path),
        (":authority", "gateway"),
    ];
    all.extend_from_slice(headers);
    let a = host.request_headers(id, &all, body.is_none()).unwrap();
    match body {
        Some(b) if a == Action::Continue => {
            (id, host.request_body(id, b.as_bytes(), true).unwrap())
        }
        _ => (id, a),
    }
}

#[test]
fn jwt_non_metered_calls_carry_the_verified_identity() {
    let mut host = jwt_gateway();
    let token = rs256(&claims("user-42"));
    let auth = bearer(&token);
    let cases: [(&str, &str, Option<&str>); 9] = [
        ("GET", "/api/v1/llm/models", None),
        ("GET", "/api/v1/llm/models/categorized", None),
        ("GET", "/api/v1/llm/credits", None),
        ("GET", "/api/v1/llm/usage?period=month", None),
        ("GET", "/api/v1/llm/byok/keys", None),
        (
            "POST",
            "/api/v1/llm/byok/keys",
            Some(r#"{"provider":"openrouter","api_key":"sk-or-v1-x"}"#),
        ),
        ("DELETE", "/api/v1/llm/byok/keys/bk_1", None),
        // The session exchange: answered by the control plane, from the verified JWT.
        ("POST", "/api/v1/llm/auth/session", Some("{}")),
        ("DELETE", "/api/v1/llm/auth/session", None),
    ];
    for (method, path, body) in cases {
        let (id, action) = request(&mut host, method, path, &[("authorization", &auth)], body);
        assert_eq!(action, Action::Continue, "{method} {path}");
        assert!(host.local_reply(id).is_none(), "{method} {path}");
        assert_eq!(
            identity_of(&host, id),
            Some(expected("user-42")),
            "{method} {path}"
        );
        // The control plane still sees the client's credential; the path is untouched.
        assert_eq!(
            host.header(id, "authorization").as_deref(),
            Some(auth.as_str())
        );
        assert_eq!(host.header(id, ":path").as_deref(), Some(path));
        if let Some(b) = body {
            assert_eq!(
                host.forwarded_request_body(id),
                b.as_bytes(),
                "body passed as is"
            );
        }
    }
    assert_eq!(pending_to(&host, AUTHORIZE), 0, "nothing is metered");
    assert_eq!(counter(&host, "opsgate.identity.forwarded"), 9);
    assert_eq!(counter(&host, "opsgate.decisions.passed"), 9);
}

#[test]
fn identity_without_email_or_roles() {
    let mut host = jwt_gateway();
    let mut c = claims("svc-account");
    c.as_object_mut().unwrap().remove("email");
    c.as_object_mut().unwrap().remove("realm_access");
    let auth = bearer(&rs256(&c));
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[("authorization", &auth)],
    );
    assert_eq!(action, Action::Continue);
    assert_eq!(
        identity_of(&host, id),
        Some(Identity {
            subject: "svc-account".into(),
            email: None,
            roles: vec![],
            expires_at: Some(T0 + 300),
        })
    );
}

#[test]
fn a_client_cannot_claim_an_identity() {
    let mut host = jwt_gateway();
    let forged = Identity {
        subject: "admin".into(),
        email: None,
        roles: vec!["opsgate-admin".into()],
        expires_at: None,
    }
    .encode();
    let spoof = [
        ("x-opsgate-identity", forged.as_str()),
        ("X-Opsgate-Identity-Auth", TOKEN),
        ("x-opsgate-anything", "1"),
        ("x-opsgate-cluster", "provider_openai"),
    ];
    // Service key, uc_ key, session cookie: stripped, nothing added.
    let service = bearer(SERVICE_KEY);
    let user = bearer(USER_KEY);
    let creds: [(&str, &str); 3] = [
        ("authorization", &service),
        ("authorization", &user),
        ("cookie", "theme=dark; session_token=sess_abc"),
    ];
    for cred in creds {
        let mut headers = vec![cred];
        headers.extend_from_slice(&spoof);
        let (id, action) = send_headers_only(&mut host, "GET", "/api/v1/llm/credits", &headers);
        assert_eq!(action, Action::Continue, "{cred:?}");
        no_identity(&host, id);
        // Their own credential goes on untouched.
        assert_eq!(host.header(id, cred.0).as_deref(), Some(cred.1));
    }
    // A JWT: the forged values are replaced by the verified one (one value each).
    let jwt = bearer(&rs256(&claims("user-7")));
    let mut headers = vec![("authorization", jwt.as_str())];
    headers.extend_from_slice(&spoof);
    let (id, action) = send_headers_only(&mut host, "GET", "/api/v1/llm/models", &headers);
    assert_eq!(action, Action::Continue);
    assert_eq!(identity_of(&host, id), Some(expected("user-7")));
    let identity_values = host
        .request_headers_of(id)
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(IDENTITY_HEADER))
        .count();
    assert_eq!(identity_values, 1);
    assert!(host.header(id, "x-opsgate-anything").is_none());
    // Outside the API, too (another route of the same Envoy).
    let (id, action) = send_headers_only(&mut host, "GET", "/internal/v1/snapshot", &spoof);
    assert_eq!(action, Action::Continue);
    no_identity(&host, id);
    // And from refused requests.
    let (id, _) = send_headers_only(&mut host, "GET", "/api/v1/llm/credits", &spoof);
    expect_reply(&host, id, 401, "invalid_api_key");
    no_identity(&host, id);
}

#[test]
fn metered_calls_never_carry_the_identity_upstream() {
    let mut host = jwt_gateway();
    let auth = bearer(&rs256(&claims("user-42")));
    let id = chat_with_headers(
        &mut host,
        &[("authorization", &auth), ("x-opsgate-identity", "forged")],
    );
    let call = authorize_call(&mut host);
    allow(&mut host, &call, grant());
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
    no_identity_but_cluster(&host, id);
    assert_eq!(
        host.header(id, "authorization").as_deref(),
        Some("Bearer platform-key-123")
    );
    assert_eq!(counter(&host, "opsgate.identity.forwarded"), 0);
}

fn no_identity_but_cluster(host: &Host, id: StreamId) {
    let internal: Vec<String> = host
        .request_headers_of(id)
        .into_iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .filter(|k| k.starts_with("x-opsgate-"))
        .collect();
    assert_eq!(internal, vec!["x-opsgate-cluster".to_string()]);
    let all = format!("{:?}", host.request_headers_of(id));
    assert!(
        !all.contains(TOKEN),
        "the internal token never goes to a provider"
    );
}

#[test]
fn refused_jwts_are_401_on_non_metered_routes() {
    let mut host = jwt_gateway();
    let mut expired = claims("u");
    expired["exp"] = json!(T0 - 61);
    let mut wrong_aud = claims("u");
    wrong_aud["aud"] = json!("account");
    let mut tampered = rs256(&claims("u"));
    tampered.insert(tampered.len() - 2, 'x');
    for token in [rs256(&expired), rs256(&wrong_aud), tampered] {
        let auth = bearer(&token);
        let (id, _) = send_headers_only(
            &mut host,
            "GET",
            "/api/v1/llm/models",
            &[("authorization", &auth)],
        );
        expect_reply(&host, id, 401, "invalid_api_key");
        no_identity(&host, id);
    }
}

#[test]
fn jwts_are_refused_when_jwt_is_not_configured() {
    let mut host = gateway();
    let auth = bearer(&rs256(&claims("u")));
    let (id, _) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/models",
        &[("authorization", &auth)],
    );
    expect_reply(&host, id, 401, "invalid_api_key");
    no_identity(&host, id);
}

// ---- admin_prefix ------------------------------------------------------------------------

#[test]
fn admin_token_passes_untouched() {
    let mut host = jwt_gateway_with(ADMIN, &["rsa-1"]);
    let admin = bearer("e2e-admin-token-0123456789");
    for (method, path) in [
        ("GET", "/admin/v1/orgs"),
        ("POST", "/admin/v1/users/u1/api-keys"),
        ("DELETE", "/admin/v1/api-keys/k1"),
        ("PUT", "/admin/v1/users/u1/allocation"),
    ] {
        let (id, action) = send_headers_only(
            &mut host,
            method,
            path,
            &[("authorization", &admin), ("x-opsgate-identity", "forged")],
        );
        assert_eq!(action, Action::Continue, "{method} {path}");
        assert_eq!(
            host.header(id, "authorization").as_deref(),
            Some(admin.as_str())
        );
        no_identity(&host, id);
    }
    // A bearer shaped like a service key or uc_ key is not checked here either: the admin
    // API decides, and nothing under the admin prefix is metered.
    for key in [SERVICE_KEY, USER_KEY, "sk-unknown-service-key-2025"] {
        let auth = bearer(key);
        let (id, action) = send(
            &mut host,
            "/admin/v1/chat/completions",
            &[("authorization", &auth)],
            Some(QUICKSTART),
        );
        assert_eq!(action, Action::Continue, "{key}");
        assert!(host.local_reply(id).is_none());
        no_identity(&host, id);
    }
    assert_eq!(pending_to(&host, AUTHORIZE), 0);
}

#[test]
fn the_consoles_session_cookie_passes_to_the_admin_api_untouched() {
    let mut host = jwt_gateway_with(ADMIN, &["rsa-1"]);
    let cookie = "theme=dark; opsgate_console=c0ffee";
    for (method, path) in [
        ("GET", "/admin/v1/orgs"),
        ("POST", "/admin/v1/orgs/o1/grants"),
        ("DELETE", "/admin/v1/console/session"),
    ] {
        let (id, action) = send_headers_only(
            &mut host,
            method,
            path,
            &[("cookie", cookie), ("x-opsgate-identity", "forged")],
        );
        assert_eq!(action, Action::Continue, "{method} {path}");
        assert!(host.local_reply(id).is_none(), "{method} {path}");
        assert_eq!(host.header(id, "cookie").as_deref(), Some(cookie));
        no_identity(&host, id);
    }
    // Without it (or with an empty one), an admin path still needs a credential here.
    for cookie in ["theme=dark", "opsgate_console="] {
        let (id, _) = send_headers_only(&mut host, "GET", "/admin/v1/orgs", &[("cookie", cookie)]);
        expect_reply(&host, id, 401, "invalid_api_key");
    }
    // Outside the admin prefix the console's cookie is no credential.
    let (id, _) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/models",
        &[("cookie", "opsgate_console=c0ffee")],
    );
    expect_reply(&host, id, 401, "invalid_api_key");
}

#[test]
fn admin_jwts_are_verified_and_carry_the_identity() {
    let mut host = jwt_gateway_with(ADMIN, &["rsa-1"]);
    let mut c = claims("ops-1");
    c["realm_access"] = json!({"roles":["opsgate-admin"]});
    let auth = bearer(&rs256(&c));
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/admin/v1/orgs",
        &[("authorization", &auth)],
    );
    assert_eq!(action, Action::Continue);
    assert_eq!(
        identity_of(&host, id),
        Some(Identity {
            subject: "ops-1".into(),
            email: Some("ops-1@example.com".into()),
            roles: vec!["opsgate-admin".into()],
            expires_at: Some(T0 + 300),
        })
    );
    // A bad JWT never reaches the admin API.
    let mut wrong_iss = c.clone();
    wrong_iss["iss"] = json!("https://evil.example.test/realms/opsgate");
    let bad = bearer(&rs256(&wrong_iss));
    let (id, _) = send_headers_only(
        &mut host,
        "GET",
        "/admin/v1/orgs",
        &[("authorization", &bad)],
    );
    expect_reply(&host, id, 401, "invalid_api_key");
    // Nor a request without credentials, or with another scheme.
    let (id, _) = send_headers_only(&mut host, "GET", "/admin/v1/orgs", &[]);
    expect_reply(&host, id, 401, "invalid_api_key");
    // Changed: this used `/admin/v1` itself, which is no longer the filter's (see
    // `the_bare_prefixes_are_not_api_paths`).
    let (id, _) = send_headers_only(
        &mut host,
        "GET",
        "/admin/v1/orgs",
        &[("authorization", "Basic eDp5")],
    );
    expect_reply(&host, id, 401, "invalid_api_key");
}

#[test]
fn the_bare_prefixes_are_not_api_paths() {
    // Only paths under `route_prefix/` (and `admin_prefix/`) are the filter's: the bare
    // prefix, with or without a query, gets no identity and is passed untouched, once
    // stripped of x-opsgate-*.
    let mut host = jwt_gateway_with(ADMIN, &["rsa-1"]);
    let auth = bearer(&rs256(&claims("user-42")));
    for path in [
        "/api/v1/llm",
        "/api/v1/llm?x=1",
        "/admin/v1",
        "/admin/v1?x=1",
    ] {
        let (id, action) = send_headers_only(
            &mut host,
            "GET",
            path,
            &[
                ("authorization", &auth),
                ("x-opsgate-identity", "forged"),
                ("x-opsgate-identity-auth", TOKEN),
            ],
        );
        assert_eq!(action, Action::Continue, "{path}");
        assert!(host.local_reply(id).is_none(), "{path}");
        no_identity(&host, id);
        assert_eq!(host.header(id, ":path").as_deref(), Some(path));
        assert_eq!(
            host.header(id, "authorization").as_deref(),
            Some(auth.as_str())
        );
        // Not authenticated here either: no credentials is not a 401 from the filter.
        let (id, action) = send_headers_only(&mut host, "GET", path, &[]);
        assert_eq!(action, Action::Continue, "{path}");
        assert!(host.local_reply(id).is_none(), "{path}");
    }
    assert_eq!(counter(&host, "opsgate.identity.forwarded"), 0);
    assert_eq!(counter(&host, "opsgate.decisions.passed"), 0);
    // Just under the prefix is an API path.
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/",
        &[("authorization", &auth)],
    );
    assert_eq!(action, Action::Continue);
    assert_eq!(identity_of(&host, id), Some(expected("user-42")));
}

#[test]
fn without_admin_prefix_admin_paths_are_not_the_filters() {
    let mut host = jwt_gateway();
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/admin/v1/orgs",
        &[("x-opsgate-identity-auth", TOKEN)],
    );
    assert_eq!(action, Action::Continue, "passed, not authenticated here");
    assert!(host.local_reply(id).is_none());
    no_identity(&host, id);
    // A longer path that merely starts with the prefix is not under it.
    let mut host = jwt_gateway_with(ADMIN, &["rsa-1"]);
    let (id, action) = send_headers_only(&mut host, "GET", "/admin/v10/x", &[]);
    assert_eq!(action, Action::Continue);
    assert!(host.local_reply(id).is_none());
}

#[test]
fn bad_admin_prefixes_refuse_to_load() {
    for (value, needle) in [
        (r#""admin""#, "admin_prefix"),
        (r#""/admin/""#, "admin_prefix"),
        (r#""/api/v1/llm/admin""#, "must not overlap route_prefix"),
        (r#""/api""#, "must not overlap route_prefix"),
        (r#""/api/v1/llm""#, "must not overlap route_prefix"),
        ("7", "admin_prefix"),
    ] {
        let mut host = Host::plugin().unwrap();
        host.add_cluster(CP);
        let cfg = config_with(&format!(r#""admin_prefix":{value}"#));
        assert!(!host.configure("", &cfg).unwrap(), "accepted {cfg}");
        assert!(has_log_at(&host, 5, needle), "{needle}: {:?}", host.logs());
    }
}
