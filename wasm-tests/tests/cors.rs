//! CORS with configured origins only. A preflight under the API is answered by the filter:
//! 204 with the allowed origin echoed (never `*`), the methods, the requested headers that
//! are on the allow-list, the max age and `vary: origin`; 403 in the error envelope for an
//! origin that is not configured (or when CORS is not configured at all). Responses to a
//! configured origin — forwarded or local, errors included — carry the origin, `vary:
//! origin`, the metering headers a browser may read, and the credentials flag only when
//! configured. Requests authenticated by the `session_token` cookie from another origin
//! (or cross-site writes without `Origin`) are refused (CSRF); bearer requests are not
//! origin-restricted.

mod common;
use common::*;
use opsgate_wasm_tests::{Action, Host, LocalReply, StreamId, StreamKind};

const APP: &str = "https://app.example.com";
const EVIL: &str = "https://evil.example.net";
const SESSION: &str = "session_token=sess_0123456789";

fn cors_field(credentials: bool) -> String {
    format!(
        r#""cors":{{"allowed_origins":["{APP}","http://localhost:5173"],"allow_credentials":{credentials},"max_age_secs":600}}"#
    )
}

fn cors_gateway(credentials: bool) -> Host {
    gateway_with(&config_with(&cors_field(credentials)))
}

fn preflight(host: &mut Host, path: &str, origin: &str, req_headers: Option<&str>) -> StreamId {
    let mut headers = vec![
        ("origin", origin),
        ("access-control-request-method", "POST"),
    ];
    if let Some(h) = req_headers {
        headers.push(("access-control-request-headers", h));
    }
    let (id, action) = send_headers_only(host, "OPTIONS", path, &headers);
    assert_eq!(action, Action::Pause, "a preflight is answered here");
    id
}

fn reply(host: &Host, id: StreamId) -> LocalReply {
    host.local_reply(id).expect("a local reply")
}

/// The response headers the client gets (after the filter's response callbacks).
fn client_header(host: &Host, id: StreamId, name: &str) -> Option<String> {
    host.response_header(id, name)
}

fn no_cors_headers(host: &Host, id: StreamId) {
    for (k, _) in host.response_headers_of(id) {
        assert!(
            !k.starts_with("access-control-"),
            "{k}: {:?}",
            host.response_headers_of(id)
        );
    }
}

#[test]
fn preflight_from_an_allowed_origin_is_answered_locally() {
    let mut host = cors_gateway(true);
    let id = preflight(
        &mut host,
        "/api/v1/llm/chat/completions",
        APP,
        Some("Authorization, Content-Type, X-Power-Level, X-Stainless-Lang, OpenAI-Organization, X-Evil, Cookie"),
    );
    let r = reply(&host, id);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    let methods = r.header("access-control-allow-methods").unwrap();
    for m in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("authorization, content-type, x-power-level, x-stainless-lang, openai-organization")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let vary = r.header("vary").unwrap();
    assert!(vary.split(',').any(|v| v.trim() == "origin"), "{vary}");
    // Answered without asking anyone, and never forwarded.
    assert!(host.pending_calls().is_empty());
    assert_eq!(host.resumed(id, StreamKind::Request), 0);
    assert_eq!(counter(&host, "opsgate.cors.preflights"), 1);
    // The client sees the same headers (the reply goes through the response callbacks).
    assert_eq!(
        client_header(&host, id, "access-control-allow-origin").as_deref(),
        Some(APP)
    );

    // Any path under the API, and the other configured origin.
    let id = preflight(
        &mut host,
        "/api/v1/llm/byok/keys",
        "http://localhost:5173",
        None,
    );
    let r = reply(&host, id);
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );
    assert_eq!(r.header("access-control-allow-headers"), None, "none asked");
}

#[test]
fn preflight_without_credentials_has_no_credentials_flag_and_never_a_wildcard() {
    let mut host = cors_gateway(false);
    let id = preflight(&mut host, "/api/v1/llm/models", APP, Some("authorization"));
    let r = reply(&host, id);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert!(r.headers.iter().all(|(_, v)| v != "*"), "{:?}", r.headers);
}

#[test]
fn preflight_from_another_origin_is_403() {
    let mut host = cors_gateway(true);
    for origin in [
        EVIL,
        "https://app.example.com.evil.net",
        "null",
        "http://app.example.com",
    ] {
        let id = preflight(
            &mut host,
            "/api/v1/llm/chat/completions",
            origin,
            Some("authorization"),
        );
        let (r, env) = expect_reply(&host, id, 403, "origin_not_allowed");
        assert_eq!(env["error"]["type"], "permission_error");
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
        no_cors_headers(&host, id);
    }
    assert_eq!(counter(&host, "opsgate.cors.preflights_refused"), 4);
    assert_eq!(counter(&host, "opsgate.cors.preflights"), 0);
}

#[test]
fn preflight_without_cors_configured_is_403() {
    let mut host = gateway();
    let id = preflight(&mut host, "/api/v1/llm/chat/completions", APP, None);
    let (_, env) = expect_reply(&host, id, 403, "origin_not_allowed");
    assert!(env["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not enabled"));
    no_cors_headers(&host, id);
}

#[test]
fn options_that_is_not_a_preflight_passes() {
    let mut host = cors_gateway(true);
    let (id, action) = send_headers_only(
        &mut host,
        "OPTIONS",
        "/api/v1/llm/models",
        &[("origin", APP)],
    );
    assert_eq!(action, Action::Continue);
    assert!(host.local_reply(id).is_none());
    // Outside the API, preflights are not the filter's.
    let (id, action) = send_headers_only(
        &mut host,
        "OPTIONS",
        "/other/app",
        &[("origin", EVIL), ("access-control-request-method", "POST")],
    );
    assert_eq!(action, Action::Continue);
    assert!(host.local_reply(id).is_none());
}

#[test]
fn metered_responses_to_an_allowed_origin_carry_the_cors_headers() {
    let mut host = cors_gateway(true);
    let auth = bearer(SERVICE_KEY);
    let (id, _) = send(
        &mut host,
        "/api/v1/llm/chat/completions",
        &[("authorization", &auth), ("origin", APP)],
        Some(QUICKSTART),
    );
    let call = authorize_call(&mut host);
    allow(&mut host, &call, grant());
    assert_eq!(host.resumed(id, StreamKind::Request), 1);
    // The provider never sees CORS concerns added by the filter; the client's Origin is its own.
    host.response_headers(
        id,
        &[
            (":status", "200"),
            ("content-type", "application/json"),
            ("vary", "accept-encoding"),
        ],
        false,
    )
    .unwrap();
    let body = br#"{"id":"c","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":20,"total_tokens":30}}"#;
    host.response_body(id, body, true).unwrap();
    assert_eq!(
        client_header(&host, id, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
    assert_eq!(
        client_header(&host, id, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    assert_eq!(
        client_header(&host, id, "vary").as_deref(),
        Some("accept-encoding, origin"),
        "the upstream's vary is kept"
    );
    let expose = client_header(&host, id, "access-control-expose-headers").unwrap();
    for h in [
        "x-provider-used",
        "x-cost-incurred",
        "x-credits-remaining",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "retry-after",
    ] {
        assert!(expose.split(", ").any(|e| e == h), "{h} not in {expose}");
    }
    assert!(client_header(&host, id, "x-cost-incurred").is_some());
}

#[test]
fn non_metered_and_error_responses_carry_them_too() {
    let mut host = cors_gateway(false);
    let auth = bearer(SERVICE_KEY);
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[("authorization", &auth), ("origin", APP)],
    );
    assert_eq!(action, Action::Continue);
    host.response_headers(
        id,
        &[(":status", "200"), ("content-type", "application/json")],
        false,
    )
    .unwrap();
    assert_eq!(
        client_header(&host, id, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
    assert_eq!(client_header(&host, id, "vary").as_deref(), Some("origin"));
    assert_eq!(
        client_header(&host, id, "access-control-allow-credentials"),
        None
    );

    // A refusal a browser can read.
    let (id, _) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[
            ("authorization", "Bearer sk-unknown-service-key-2025"),
            ("origin", APP),
        ],
    );
    let (r, _) = expect_reply(&host, id, 401, "invalid_api_key");
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert!(r.header("access-control-expose-headers").is_some());
    assert_eq!(
        client_header(&host, id, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
}

#[test]
fn other_origins_get_no_cors_headers_but_bearer_calls_still_work() {
    let mut host = cors_gateway(true);
    let auth = bearer(SERVICE_KEY);
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/models",
        &[("authorization", &auth), ("origin", EVIL)],
    );
    assert_eq!(
        action,
        Action::Continue,
        "bearer requests are not origin-restricted"
    );
    host.response_headers(id, &[(":status", "200")], true)
        .unwrap();
    no_cors_headers(&host, id);
    assert_eq!(
        client_header(&host, id, "vary").as_deref(),
        Some("origin"),
        "the answer depends on the origin"
    );

    // A metered bearer call from another origin is authorized as usual.
    let (id, _) = send(
        &mut host,
        "/api/v1/llm/chat/completions",
        &[
            ("authorization", &auth),
            ("origin", EVIL),
            ("sec-fetch-site", "cross-site"),
        ],
        Some(QUICKSTART),
    );
    assert!(host.local_reply(id).is_none());
    let call = authorize_call(&mut host);
    allow(&mut host, &call, grant());
    assert_eq!(host.resumed(id, StreamKind::Request), 1);

    // No CORS configured: nothing added for anyone.
    let mut plain = gateway();
    let (id, _) = send_headers_only(
        &mut plain,
        "GET",
        "/api/v1/llm/models",
        &[("authorization", &auth), ("origin", APP)],
    );
    plain
        .response_headers(id, &[(":status", "200")], true)
        .unwrap();
    no_cors_headers(&plain, id);
    assert_eq!(client_header(&plain, id, "vary"), None);
}

// ---- the cookie CSRF rule ----------------------------------------------------------------

fn cookie_call(host: &mut Host, method: &str, path: &str, extra: &[(&str, &str)]) -> StreamId {
    let mut headers = vec![("cookie", SESSION)];
    headers.extend_from_slice(extra);
    send_headers_only(host, method, path, &headers).0
}

fn csrf_refused(host: &Host, id: StreamId) {
    let (r, env) = expect_reply(host, id, 403, "origin_not_allowed");
    assert_eq!(env["error"]["type"], "permission_error");
    assert!(
        !r.body_str().contains("sess_0123456789"),
        "the cookie is never echoed"
    );
}

#[test]
fn cookie_requests_from_other_origins_are_refused() {
    let mut host = cors_gateway(true);
    for (method, path) in [
        ("GET", "/api/v1/llm/credits"),
        ("POST", "/api/v1/llm/byok/keys"),
        ("DELETE", "/api/v1/llm/auth/session"),
        ("POST", "/api/v1/llm/chat/completions"),
    ] {
        let id = cookie_call(&mut host, method, path, &[("origin", EVIL)]);
        csrf_refused(&host, id);
    }
    assert_eq!(
        pending_to(&host, AUTHORIZE),
        0,
        "refused before any callout"
    );
    assert_eq!(counter(&host, "opsgate.cors.cookie_origin_refused"), 4);
}

#[test]
fn cookie_writes_without_origin_are_refused_when_cross_site() {
    let mut host = cors_gateway(true);
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        let id = cookie_call(
            &mut host,
            method,
            "/api/v1/llm/byok/keys",
            &[("sec-fetch-site", "cross-site")],
        );
        csrf_refused(&host, id);
    }
    // A cross-site read without Origin (a link, an image) is not refused.
    let id = cookie_call(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[("sec-fetch-site", "cross-site")],
    );
    assert!(host.local_reply(id).is_none());
    // Nor a write from a non-browser client (no Origin, no Sec-Fetch-Site).
    let id = cookie_call(&mut host, "POST", "/api/v1/llm/byok/keys", &[]);
    assert!(host.local_reply(id).is_none());
}

#[test]
fn cookie_requests_from_allowed_or_same_origin_pass() {
    let mut host = cors_gateway(true);
    let id = cookie_call(
        &mut host,
        "POST",
        "/api/v1/llm/byok/keys",
        &[("origin", APP), ("sec-fetch-site", "cross-site")],
    );
    assert!(host.local_reply(id).is_none());
    assert_eq!(
        host.header(id, "cookie").as_deref(),
        Some(SESSION),
        "the session goes on"
    );
    host.response_headers(id, &[(":status", "201")], true)
        .unwrap();
    assert_eq!(
        client_header(&host, id, "access-control-allow-origin").as_deref(),
        Some(APP)
    );
    assert_eq!(
        client_header(&host, id, "access-control-allow-credentials").as_deref(),
        Some("true")
    );
    // The gateway's own origin (a page it serves), with or without CORS configured.
    for mut h in [cors_gateway(true), gateway()] {
        let id = cookie_call(
            &mut h,
            "DELETE",
            "/api/v1/llm/auth/session",
            &[("origin", "http://gateway")],
        );
        assert!(h.local_reply(id).is_none());
        let id = cookie_call(
            &mut h,
            "POST",
            "/api/v1/llm/byok/keys",
            &[("origin", "https://gateway"), (":scheme", "https")],
        );
        assert!(
            h.local_reply(id).is_none(),
            "{:?}",
            h.local_reply(id).map(|r| r.body_str())
        );
        let id = cookie_call(
            &mut h,
            "POST",
            "/api/v1/llm/byok/keys",
            &[
                ("origin", "https://elsewhere"),
                ("sec-fetch-site", "same-origin"),
            ],
        );
        assert!(h.local_reply(id).is_none());
    }
    // A metered cookie call from the allowed origin goes to authorize as a session.
    let id = send(
        &mut host,
        "/api/v1/llm/chat/completions",
        &[("cookie", SESSION), ("origin", APP)],
        Some(QUICKSTART),
    )
    .0;
    assert!(host.local_reply(id).is_none());
    let call = authorize_call(&mut host);
    assert!(matches!(
        authorize_request(&call).principal,
        opsgate_core::contract::Principal::Session { .. }
    ));
}

#[test]
fn without_cors_every_cross_origin_cookie_request_is_refused() {
    let mut host = gateway();
    let id = cookie_call(&mut host, "GET", "/api/v1/llm/credits", &[("origin", APP)]);
    csrf_refused(&host, id);
    // Bearer requests are not concerned.
    let auth = bearer(SERVICE_KEY);
    let (id, action) = send_headers_only(
        &mut host,
        "GET",
        "/api/v1/llm/credits",
        &[
            ("authorization", &auth),
            ("cookie", SESSION),
            ("origin", APP),
        ],
    );
    assert_eq!(action, Action::Continue);
    assert!(host.local_reply(id).is_none());
}

#[test]
fn admin_prefix_follows_the_same_rules() {
    let mut host = gateway_with(&config_with(&format!(
        r#"{},"admin_prefix":"/admin/v1""#,
        cors_field(true)
    )));
    let id = preflight(&mut host, "/admin/v1/orgs", APP, Some("authorization"));
    assert_eq!(reply(&host, id).status, 204);
    let id = preflight(&mut host, "/admin/v1/orgs", EVIL, None);
    expect_reply(&host, id, 403, "origin_not_allowed");
    let id = cookie_call(&mut host, "POST", "/admin/v1/orgs", &[("origin", EVIL)]);
    csrf_refused(&host, id);
}

#[test]
fn bad_cors_configs_refuse_to_load() {
    for (cors, needle) in [
        (
            r#"{"allowed_origins":["*"],"allow_credentials":true}"#,
            "cors.allowed_origins",
        ),
        (r#"{"allowed_origins":["*"]}"#, "cors.allowed_origins"),
        (r#"{"allowed_origins":["null"]}"#, "cors.allowed_origins"),
        (r#"{"allowed_origins":[]}"#, "cors.allowed_origins"),
        (
            r#"{"allowed_origins":["https://app.example.com/"]}"#,
            "cors.allowed_origins",
        ),
        (
            r#"{"allowed_origins":["app.example.com"]}"#,
            "cors.allowed_origins",
        ),
        (
            r#"{"allowed_origins":["https://app.example.com/path"]}"#,
            "cors.allowed_origins",
        ),
        (
            r#"{"allowed_origins":["https://app.example.com:abc"]}"#,
            "cors.allowed_origins",
        ),
        (
            r#"{"allowed_origins":["https://a.example"],"max_age_secs":100000}"#,
            "cors.max_age_secs",
        ),
        (
            r#"{"allowed_origins":["https://a.example"],"allow_credentials":"yes"}"#,
            "cors.allow_credentials",
        ),
        (
            r#"{"allowed_origins":["https://a.example"],"origins":[]}"#,
            "origins",
        ),
    ] {
        let mut host = Host::plugin().unwrap();
        host.add_cluster(CP);
        let cfg = config_with(&format!(r#""cors":{cors}"#));
        assert!(!host.configure("", &cfg).unwrap(), "accepted {cfg}");
        assert!(has_log_at(&host, 5, needle), "{needle}: {:?}", host.logs());
    }
    // Origins are compared case-insensitively; a port and IPv6 literals are fine.
    let mut host = gateway_with(&config_with(
        r#""cors":{"allowed_origins":["HTTPS://App.Example.com","http://[::1]:8080","http://127.0.0.1:3000"]}"#,
    ));
    let id = preflight(
        &mut host,
        "/api/v1/llm/models",
        "https://app.example.com",
        None,
    );
    assert_eq!(reply(&host, id).status, 204);
    let id = preflight(&mut host, "/api/v1/llm/models", "http://[::1]:8080", None);
    assert_eq!(reply(&host, id).status, 204);
}
