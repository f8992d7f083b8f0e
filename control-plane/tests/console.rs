//! The admin console (`/console/`): signing in with the admin token for an HttpOnly,
//! SameSite=Strict cookie; the cookie works on the admin API (the console's only code path),
//! its writes need the console's header and this origin, its actions are audited as the
//! console's; sessions expire and sign out. And the daily usage series its charts draw.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use opsgate_control_plane::clock::ManualClock;
use opsgate_control_plane::{ledger, AppState};
use opsgate_core::contract::Outcome;
use opsgate_core::plan::Plan;
use opsgate_core::pricing::Usage;
use serde_json::{json, Value};

const HOST: &str = "cp.example:8085";

async fn send(
    state: &AppState,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    oneshot(state, req).await
}

const CONSOLE: (&str, &str) = ("x-console-request", "1");
const SAME_ORIGIN: (&str, &str) = ("origin", "http://cp.example:8085");

/// Signs in with the admin token; returns the `Cookie` header value and the Set-Cookie line.
async fn sign_in(state: &AppState) -> (String, String) {
    let r = send(
        state,
        Method::POST,
        "/admin/v1/console/session",
        &[CONSOLE, SAME_ORIGIN, ("sec-fetch-site", "same-origin")],
        Some(json!({"token": ADMIN_TOKEN})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let set = r.headers["set-cookie"].to_str().expect("ascii").to_string();
    let pair = set.split(';').next().expect("pair").to_string();
    (pair, set)
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie_and_never_returns_the_token() {
    let t = TestDb::sqlite().await;
    let clock = ManualClock::at(T0);
    let st = state(&t.db, &clock, catalogue());

    let (pair, set) = sign_in(&st).await;
    assert!(pair.starts_with("opsgate_console=cs_"), "{set}");
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=3600",
        "Secure",
    ] {
        assert!(set.split("; ").any(|f| f == flag), "{flag} missing: {set}");
    }
    let r = send(
        &st,
        Method::POST,
        "/admin/v1/console/session",
        &[CONSOLE, SAME_ORIGIN],
        Some(json!({"token": ADMIN_TOKEN})),
    )
    .await;
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.json["actor"], "console:admin-token");
    assert!(!r.text.contains(ADMIN_TOKEN));
    // Only the token's digest is stored.
    let token = pair.split_once('=').expect("=").1;
    let stored = scalar(
        &t.db,
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM console_sessions WHERE digest = $1",
        &[opsgate_core::credentials::digest(token).as_str()],
    )
    .await;
    assert_eq!(stored, 1);
    let plain = scalar(
        &t.db,
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM console_sessions WHERE digest = $1 OR credential = $1",
        &[token],
    )
    .await;
    assert_eq!(plain, 0);

    // The cookie opens the admin API (reads need no header), and whoami says who.
    let r = send(
        &st,
        Method::GET,
        "/admin/v1/orgs",
        &[("cookie", &pair)],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(
        &st,
        Method::GET,
        "/admin/v1/console/session",
        &[("cookie", &pair)],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["expires_at"], T0 + 3600);

    // The page and its files: embedded, with a strict policy, never framed.
    let r = send(&st, Method::GET, "/console/", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text.contains("/console/console.js"));
    assert!(!r.text.contains("<script>"), "no inline script");
    let csp = r.headers["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.headers["x-frame-options"], "DENY");
    let r = send(&st, Method::GET, "/console/console.js", &[], None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("text/javascript"));
    assert!(r.text.contains("X-Console-Request"));
    let r = send(&st, Method::GET, "/console/nothing-here.js", &[], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    t.close().await;
}

#[tokio::test]
async fn a_wrong_token_or_a_cross_site_sign_in_is_refused() {
    let t = TestDb::sqlite().await;
    let st = state(&t.db, &ManualClock::at(T0), catalogue());
    let wrong = send(
        &st,
        Method::POST,
        "/admin/v1/console/session",
        &[CONSOLE, SAME_ORIGIN],
        Some(json!({"token": "not-the-admin-token"})),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.text);
    assert!(wrong.headers.get("set-cookie").is_none());
    assert!(!wrong.text.contains("not-the-admin-token"));
    // The right token, but from another site, or without the console's header.
    for headers in [
        vec![SAME_ORIGIN],
        vec![CONSOLE, ("origin", "https://evil.example")],
        vec![CONSOLE, ("sec-fetch-site", "cross-site")],
    ] {
        let r = send(
            &st,
            Method::POST,
            "/admin/v1/console/session",
            &headers,
            Some(json!({"token": ADMIN_TOKEN})),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.text);
        assert!(r.headers.get("set-cookie").is_none());
    }
    let sessions = scalar(
        &t.db,
        "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM console_sessions",
        &[],
    )
    .await;
    assert_eq!(sessions, 0);
    t.close().await;
}

#[tokio::test]
async fn console_writes_need_the_header_and_this_origin_and_are_audited_as_the_console() {
    let t = TestDb::sqlite().await;
    let st = state(&t.db, &ManualClock::at(T0), catalogue());
    let (cookie, _) = sign_in(&st).await;
    let org = |id: &str| json!({"id": id, "name": "Console Org", "plan": "enterprise"});

    // A cross-site form post: the cookie (had the browser sent it), no console header.
    for headers in [
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), SAME_ORIGIN],
        vec![
            ("cookie", cookie.as_str()),
            CONSOLE,
            ("origin", "https://evil.example"),
        ],
        vec![("cookie", cookie.as_str()), CONSOLE, ("origin", "null")],
        vec![
            ("cookie", cookie.as_str()),
            CONSOLE,
            ("sec-fetch-site", "same-site"),
        ],
    ] {
        let r = send(
            &st,
            Method::POST,
            "/admin/v1/orgs",
            &headers,
            Some(org("org_csrf")),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{headers:?}: {}", r.text);
    }
    assert!(opsgate_control_plane::accounts::get_org(&t.db, "org_csrf")
        .await
        .expect("get")
        .is_none());

    // From the console's page: done, and audited as the console.
    let r = send(
        &st,
        Method::POST,
        "/admin/v1/orgs",
        &[("cookie", &cookie), CONSOLE, SAME_ORIGIN, ("sec-fetch-site", "same-origin")],
        Some(json!({"id": "org_console", "name": "Console Org", "plan": "enterprise", "credits": 12.5})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = send(
        &st,
        Method::POST,
        "/admin/v1/orgs/org_console/grants",
        &[("cookie", &cookie), CONSOLE],
        Some(json!({"credits": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["credits_total"], 13.5);
    let audit = send(
        &st,
        Method::GET,
        "/admin/v1/audit",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    let entries = audit.json["data"].as_array().expect("entries");
    let console_entries: Vec<_> = entries
        .iter()
        .filter(|e| e["target"] == "org_console")
        .map(|e| e["actor"].as_str().unwrap_or_default())
        .collect();
    assert!(console_entries.len() >= 2, "{entries:?}");
    assert!(
        console_entries.iter().all(|a| *a == "console:admin-token"),
        "{console_entries:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "console.sign_in" && e["actor"] == "console:admin-token"),
        "{entries:?}"
    );

    // The admin token on its own still works, and is still recorded as itself.
    let r = send(
        &st,
        Method::POST,
        "/admin/v1/orgs/org_console/grants",
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        Some(json!({"credits": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let audit = send(
        &st,
        Method::GET,
        "/admin/v1/audit?limit=1",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(audit.json["data"][0]["actor"], "admin-token");
    t.close().await;
}

#[tokio::test]
async fn sessions_expire_sign_out_and_end_when_the_admin_token_changes() {
    let t = TestDb::sqlite().await;
    let clock = ManualClock::at(T0);
    let st = state(&t.db, &clock, catalogue());
    let (cookie, _) = sign_in(&st).await;
    let orgs = |st: AppState, cookie: String| async move {
        send(
            &st,
            Method::GET,
            "/admin/v1/orgs",
            &[("cookie", &cookie)],
            None,
        )
        .await
        .status
    };
    clock.advance(3599);
    assert_eq!(orgs(st.clone(), cookie.clone()).await, StatusCode::OK);
    clock.advance(1);
    assert_eq!(
        orgs(st.clone(), cookie.clone()).await,
        StatusCode::UNAUTHORIZED,
        "expired at its TTL"
    );
    let r = send(
        &st,
        Method::GET,
        "/admin/v1/console/session",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // Sign out: the cookie is cleared and the session no longer opens anything.
    let (cookie, _) = sign_in(&st).await;
    assert_eq!(orgs(st.clone(), cookie.clone()).await, StatusCode::OK);
    let r = send(
        &st,
        Method::DELETE,
        "/admin/v1/console/session",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "sign-out needs the console's header too"
    );
    let r = send(
        &st,
        Method::DELETE,
        "/admin/v1/console/session",
        &[("cookie", &cookie), CONSOLE, SAME_ORIGIN],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let cleared = r.headers["set-cookie"].to_str().expect("ascii");
    assert!(
        cleared.starts_with("opsgate_console=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(
        orgs(st.clone(), cookie.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    let audit = send(
        &st,
        Method::GET,
        "/admin/v1/audit?limit=1",
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        None,
    )
    .await;
    assert_eq!(audit.json["data"][0]["action"], "console.sign_out");

    // A session opened with the admin token ends when the token is rotated.
    let (cookie, _) = sign_in(&st).await;
    let mut rotated = st.clone();
    let mut settings = opsgate_control_plane::Settings {
        internal_token: INTERNAL_TOKEN.into(),
        admin_token: Some("a-new-admin-token-9876543210".into()),
        platform_keys: Default::default(),
        hold_ttl_secs: HOLD_TTL,
        session_ttl_secs: 3600,
        console_session_ttl_secs: 3600,
        cookie_secure: true,
        admin_role: "opsgate-admin".into(),
    };
    rotated.settings = std::sync::Arc::new(settings);
    assert_eq!(
        orgs(rotated, cookie.clone()).await,
        StatusCode::UNAUTHORIZED
    );
    settings = opsgate_control_plane::Settings {
        internal_token: INTERNAL_TOKEN.into(),
        admin_token: Some(ADMIN_TOKEN.into()),
        platform_keys: Default::default(),
        hold_ttl_secs: HOLD_TTL,
        session_ttl_secs: 3600,
        console_session_ttl_secs: 3600,
        cookie_secure: true,
        admin_role: "opsgate-admin".into(),
    };
    let mut same = st.clone();
    same.settings = std::sync::Arc::new(settings);
    assert_eq!(orgs(same, cookie).await, StatusCode::OK);

    // A made-up cookie opens nothing.
    assert_eq!(
        orgs(st.clone(), "opsgate_console=cs_made_up".into()).await,
        StatusCode::UNAUTHORIZED
    );
    t.close().await;
}

#[tokio::test]
async fn the_daily_usage_series_by_org_user_model_and_provider() {
    for_each_backend("daily_usage", |db| async move {
        let router = Router::new(catalogue());
        let a = seed(
            &db,
            "org_a",
            "alice",
            Plan::Enterprise,
            100_000_000,
            None,
            T0,
        )
        .await;
        let b = seed(&db, "org_b", "bob", Plan::Enterprise, 100_000_000, None, T0).await;
        let day0 = T0 - T0 % 86_400;
        // alice: two calls two days ago and one today; bob: one today and one failed today.
        let calls = [
            (&a, "gpt-4o-mini", Outcome::Success, T0 - 2 * 86_400),
            (&a, "gpt-4o-mini", Outcome::Success, T0 - 2 * 86_400 + 60),
            (&a, "gpt-4o", Outcome::Success, T0),
            (&b, "gpt-4o-mini", Outcome::Success, T0 + 1),
            (&b, "gpt-4o-mini", Outcome::Failed, T0 + 2),
            // Outside a 7-day window.
            (&b, "gpt-4o-mini", Outcome::Success, T0 - 8 * 86_400),
        ];
        let mut cost = std::collections::BTreeMap::<(i64, String), i64>::new();
        for (user, model, outcome, at) in calls {
            let g = ledger::authorize(
                &db,
                &router.routing(),
                user,
                &chat(&user.id, model, 400, Some(200)),
                at,
            )
            .await
            .expect("authorize");
            let s = opsgate_core::contract::Settlement {
                usage: Usage {
                    prompt_tokens: 100,
                    completion_tokens: 50,
                    images: 0,
                },
                ..settlement(&g.hold_id, outcome, 100, 50)
            };
            let charged = ledger::settle(&db, &s, at + 1).await.expect("settle");
            if !matches!(outcome, Outcome::Failed) {
                *cost
                    .entry((at - at % 86_400, user.org_id.clone()))
                    .or_default() += charged;
            }
        }
        let st = state(&db, &ManualClock::at(T0 + 10), catalogue());
        let admin = [("authorization", format!("Bearer {ADMIN_TOKEN}"))];
        let admin: Vec<(&str, &str)> = admin.iter().map(|(k, v)| (*k, v.as_str())).collect();

        let r = send(
            &st,
            Method::GET,
            "/admin/v1/usage/daily?days=7&by=org",
            &admin,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let rows: Vec<(i64, String, i64, i64)> = r.json["data"]
            .as_array()
            .expect("rows")
            .iter()
            .map(|x| {
                (
                    x["day"].as_i64().expect("day"),
                    x["key"].as_str().expect("key").to_string(),
                    x["calls"].as_i64().expect("calls"),
                    x["credits_mc"].as_i64().expect("mc"),
                )
            })
            .collect();
        let want = vec![
            (
                day0 - 2 * 86_400,
                "org_a".to_string(),
                2,
                cost[&(day0 - 2 * 86_400, "org_a".to_string())],
            ),
            (
                day0,
                "org_a".to_string(),
                1,
                cost[&(day0, "org_a".to_string())],
            ),
            (
                day0,
                "org_b".to_string(),
                1,
                cost[&(day0, "org_b".to_string())],
            ),
        ];
        assert_eq!(rows, want);
        assert!(want.iter().all(|w| w.3 > 0));
        let credits = r.json["data"][0]["credits"].as_f64().expect("credits");
        assert_eq!((credits * 1000.0).round() as i64, want[0].3);

        let by = |by: &'static str, days: i64| {
            let st = st.clone();
            let admin = admin.clone();
            async move {
                let r = send(
                    &st,
                    Method::GET,
                    &format!("/admin/v1/usage/daily?days={days}&by={by}"),
                    &admin,
                    None,
                )
                .await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text);
                r.json["data"]
                    .as_array()
                    .expect("rows")
                    .iter()
                    .map(|x| {
                        (
                            x["key"].as_str().expect("key").to_string(),
                            x["calls"].as_i64().expect("n"),
                        )
                    })
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(
            by("user", 7).await,
            vec![("alice".into(), 2), ("alice".into(), 1), ("bob".into(), 1)]
        );
        assert_eq!(
            by("model", 1).await,
            vec![("gpt-4o".into(), 1), ("gpt-4o-mini".into(), 1)]
        );
        let providers = by("provider", 30).await;
        assert_eq!(
            providers.iter().map(|p| p.1).sum::<i64>(),
            5,
            "{providers:?}"
        );

        for bad in ["days=0", "days=367", "by=everything", "by=org;DROP"] {
            let r = send(
                &st,
                Method::GET,
                &format!("/admin/v1/usage/daily?{bad}"),
                &admin,
                None,
            )
            .await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}: {}", r.text);
        }
        let r = send(&st, Method::GET, "/admin/v1/usage/daily", &[], None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);

        // The organisation's allocations, as the console's organisation page shows them.
        opsgate_control_plane::accounts::set_allocation(&db, ACTOR, "alice", 5_000, T0)
            .await
            .expect("allocate");
        let r = send(
            &st,
            Method::GET,
            "/admin/v1/orgs/org_a/allocations",
            &admin,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["data"][0]["user_id"], "alice");
        assert_eq!(r.json["data"][0]["allocated"], 5.0);
        let r = send(
            &st,
            Method::GET,
            "/admin/v1/orgs/org_nope/allocations",
            &admin,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    })
    .await;
}

/// A console session opened with a JWT (verified at the edge) ends when the token does, if
/// that is before the console's own TTL; an expired token opens none.
#[tokio::test]
async fn a_jwt_console_session_ends_no_later_than_its_token() {
    use opsgate_core::contract::{identity_auth, Identity, IDENTITY_AUTH_HEADER, IDENTITY_HEADER};
    let t = TestDb::sqlite().await;
    let clock = ManualClock::at(T0);
    let st = state(&t.db, &clock, catalogue());
    let auth = identity_auth(INTERNAL_TOKEN);
    let sign_in_with = |expires_at: Option<i64>| {
        let id = Identity {
            subject: "root".into(),
            email: None,
            roles: vec!["opsgate-admin".into()],
            expires_at,
        }
        .encode();
        let (st, auth) = (st.clone(), auth.clone());
        async move {
            send(
                &st,
                Method::POST,
                "/admin/v1/console/session",
                &[
                    CONSOLE,
                    SAME_ORIGIN,
                    (IDENTITY_HEADER, &id),
                    (IDENTITY_AUTH_HEADER, &auth),
                ],
                None,
            )
            .await
        }
    };

    let r = sign_in_with(Some(T0 + 600)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let body: Value = serde_json::from_str(&r.text).expect("json");
    assert_eq!(
        body["expires_at"],
        T0 + 600,
        "the token's exp, not the 1 h TTL"
    );
    let set = r.headers["set-cookie"].to_str().expect("ascii").to_string();
    assert!(set.contains("Max-Age=600"), "{set}");
    let cookie = set.split(';').next().expect("pair").to_string();
    let orgs = || async {
        send(
            &st,
            Method::GET,
            "/admin/v1/orgs",
            &[("cookie", cookie.as_str())],
            None,
        )
        .await
        .status
    };
    assert_eq!(orgs().await, StatusCode::OK);
    clock.advance(600);
    assert_eq!(
        orgs().await,
        StatusCode::UNAUTHORIZED,
        "ended with the token"
    );

    let expired = sign_in_with(Some(T0 + 599)).await;
    assert_eq!(expired.status, StatusCode::UNAUTHORIZED, "{}", expired.text);
    assert!(expired.headers.get("set-cookie").is_none());

    let r = sign_in_with(None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let body: Value = serde_json::from_str(&r.text).expect("json");
    assert_eq!(
        body["expires_at"],
        T0 + 600 + 3600,
        "no exp: the console's own TTL"
    );
    t.close().await;
}
