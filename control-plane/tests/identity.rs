//! Edge-verified identities (JWTs checked by the filter), browser sessions, admin by JWT
//! role, and the remaining admin routes (plans, service keys, analytics).

mod common;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use opsgate_control_plane::clock::ManualClock;
use opsgate_control_plane::keys;
use opsgate_control_plane::AppState;
use opsgate_core::contract::{
    AuthorizeRequest, Identity, Principal, IDENTITY_AUTH_HEADER, IDENTITY_HEADER,
};
use opsgate_core::credentials::digest;
use opsgate_core::plan::Plan;
use serde_json::{json, Value};

/// What the filter sends beside an identity.
static AUTH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| opsgate_core::contract::identity_auth(INTERNAL_TOKEN));

async fn send(
    state: &AppState,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    oneshot(state, req).await
}

/// The filter's authorize callout for a metered call by `principal`.
async fn authorize_as(state: &AppState, principal: Principal) -> Reply {
    let req = AuthorizeRequest {
        principal,
        ..chat("", "gpt-4o-mini", 300, Some(50))
    };
    send(
        state,
        Method::POST,
        "/internal/v1/authorize",
        &[
            ("authorization", &format!("Bearer {INTERNAL_TOKEN}")),
            ("content-type", "application/json"),
        ],
        Some(serde_json::to_value(&req).unwrap()),
    )
    .await
}

fn identity(sub: &str, roles: &[&str]) -> String {
    Identity {
        subject: sub.into(),
        email: Some(format!("{sub}@example.com")),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        expires_at: None,
    }
    .encode()
}

async fn setup(db: &opsgate_control_plane::db::Db) -> AppState {
    seed(
        db,
        "org_id",
        "alice",
        Plan::Professional,
        1_000_000,
        None,
        T0,
    )
    .await;
    state(db, &ManualClock::at(T0), catalogue())
}

#[tokio::test]
async fn an_edge_identity_is_trusted_only_with_the_internal_token() {
    for_each_backend("edge_identity", |db| async move {
        let st = setup(&db).await;
        let id = identity("alice", &[]);
        let ok = send(
            &st,
            Method::GET,
            "/api/v1/llm/credits",
            &[
                (IDENTITY_HEADER, &id),
                (IDENTITY_AUTH_HEADER, AUTH.as_str()),
            ],
            None,
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
        assert_eq!(ok.json["user_id"], "alice");
        // Forged: no token, or a wrong one.
        for auth in [
            None,
            Some("not-the-internal-token-000"),
            Some(INTERNAL_TOKEN),
        ] {
            let mut h = vec![(IDENTITY_HEADER, id.as_str())];
            if let Some(a) = auth {
                h.push((IDENTITY_AUTH_HEADER, a));
            }
            let r = send(&st, Method::GET, "/api/v1/llm/credits", &h, None).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
        }
        // A raw JWT sent straight to the control plane is not accepted here.
        let r = send(
            &st,
            Method::GET,
            "/api/v1/llm/models",
            &[("authorization", "Bearer aaa.bbb.ccc")],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        // An unknown subject is 401.
        let ghost = identity("ghost", &[]);
        let r = send(
            &st,
            Method::GET,
            "/api/v1/llm/credits",
            &[
                (IDENTITY_HEADER, &ghost),
                (IDENTITY_AUTH_HEADER, AUTH.as_str()),
            ],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    })
    .await;
}

#[tokio::test]
async fn sessions_are_opened_with_a_jwt_used_by_cookie_and_closed() {
    for_each_backend("sessions", |db| async move {
        let st = setup(&db).await;
        let id = identity("alice", &[]);
        let r = send(
            &st,
            Method::POST,
            "/api/v1/llm/auth/session",
            &[
                (IDENTITY_HEADER, &id),
                (IDENTITY_AUTH_HEADER, AUTH.as_str()),
            ],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let cookie = r.headers["set-cookie"].to_str().unwrap().to_string();
        assert!(
            cookie.contains("HttpOnly")
                && cookie.contains("SameSite=Lax")
                && cookie.contains("Secure"),
            "{cookie}"
        );
        let token = cookie
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("session_token=")
            .to_string();
        assert!(
            token.starts_with("st_") && !r.text.contains(&token),
            "the token is only in the cookie"
        );
        let stored: i64 = scalar(
            &db,
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM sessions WHERE digest = $1",
            &[&digest(&token)],
        )
        .await;
        assert_eq!(stored, 1, "stored as a digest");

        let jar = format!("session_token={token}");
        let r = send(
            &st,
            Method::GET,
            "/api/v1/llm/credits",
            &[("cookie", &jar)],
            None,
        )
        .await;
        assert_eq!(r.json["user_id"], "alice", "{}", r.text);
        // The filter's authorize for a cookie-authenticated call.
        let r = authorize_as(
            &st,
            Principal::Session {
                digest: digest(&token),
            },
        )
        .await;
        assert_eq!(r.json["decision"], "allow", "{}", r.text);

        // Without a verified JWT, no session.
        let r = send(&st, Method::POST, "/api/v1/llm/auth/session", &[], None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);

        // Logout revokes it and clears the cookie.
        let r = send(
            &st,
            Method::DELETE,
            "/api/v1/llm/auth/session",
            &[("cookie", &jar)],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert!(r.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"));
        let r = send(
            &st,
            Method::GET,
            "/api/v1/llm/credits",
            &[("cookie", &jar)],
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    })
    .await;
}

#[tokio::test]
async fn sessions_expire() {
    let db = TestDb::sqlite().await;
    seed(
        &db.db,
        "org_id",
        "alice",
        Plan::Professional,
        1_000_000,
        None,
        T0,
    )
    .await;
    let clock = ManualClock::at(T0);
    let st = state(&db.db, &clock, catalogue());
    let id = identity("alice", &[]);
    let r = send(
        &st,
        Method::POST,
        "/api/v1/llm/auth/session",
        &[
            (IDENTITY_HEADER, &id),
            (IDENTITY_AUTH_HEADER, AUTH.as_str()),
        ],
        None,
    )
    .await;
    let cookie = r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    clock.advance(3601);
    let r = send(
        &st,
        Method::GET,
        "/api/v1/llm/credits",
        &[("cookie", &cookie)],
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    db.close().await;
}

#[tokio::test]
async fn admin_by_jwt_role_and_the_remaining_admin_routes() {
    for_each_backend("admin_jwt", |db| async move {
        let st = setup(&db).await;
        keys::add_service_key(&db, "t", "sk-idtest-service-key-2025", "alice", T0)
            .await
            .unwrap();
        let admin = identity("root", &["opsgate-admin"]);
        let user = identity("alice", &["user"]);
        let as_admin = [
            (IDENTITY_HEADER, admin.as_str()),
            (IDENTITY_AUTH_HEADER, AUTH.as_str()),
        ];
        let as_user = [
            (IDENTITY_HEADER, user.as_str()),
            (IDENTITY_AUTH_HEADER, AUTH.as_str()),
        ];

        let r = send(&st, Method::GET, "/admin/v1/orgs", &as_user, None).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "non-admin JWT refused: {}",
            r.text
        );
        let forged = [(IDENTITY_HEADER, admin.as_str())];
        let r = send(&st, Method::GET, "/admin/v1/orgs", &forged, None).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "a forged identity is ignored"
        );

        let r = send(
            &st,
            Method::PUT,
            "/admin/v1/users/alice/plan",
            &as_admin,
            Some(json!({"plan": "enterprise"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["plan"], "enterprise");
        let r = send(
            &st,
            Method::PUT,
            "/admin/v1/users/alice/plan",
            &as_admin,
            Some(json!({"plan": "gold"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        let r = send(
            &st,
            Method::PUT,
            "/admin/v1/orgs/org_id/plan",
            &as_admin,
            Some(json!({"plan": "vip_founder"})),
        )
        .await;
        assert_eq!(r.json["plan"], "vip_founder", "{}", r.text);

        let r = send(&st, Method::GET, "/admin/v1/service-keys", &as_admin, None).await;
        assert_eq!(r.json["data"][0]["name"], "sk-id…25", "{}", r.text);
        assert!(
            !r.text.contains(&digest("sk-idtest-service-key-2025")),
            "never a digest"
        );

        for path in [
            "/admin/v1/analytics/top-users?days=30",
            "/admin/v1/analytics/models",
            "/admin/v1/analytics/orgs?days=7&limit=5",
        ] {
            let r = send(&st, Method::GET, path, &as_admin, None).await;
            assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
            assert!(r.json["data"].is_array());
        }
        let r = send(
            &st,
            Method::GET,
            "/admin/v1/analytics/weather",
            &as_admin,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        let r = send(
            &st,
            Method::GET,
            "/admin/v1/analytics/models?days=0",
            &as_admin,
            None,
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);

        let audit = send(&st, Method::GET, "/admin/v1/audit", &as_admin, None).await;
        assert!(
            audit.text.contains("jwt:root") && audit.text.contains("user.plan"),
            "{}",
            audit.text
        );
    })
    .await;
}

#[tokio::test]
async fn credential_lookup_for_the_filter() {
    let db = TestDb::sqlite().await;
    let st = setup(&db.db).await;
    let (key, _) = keys::issue_api_key(&db.db, "t", "alice", None, T0)
        .await
        .unwrap();
    let auth = format!("Bearer {INTERNAL_TOKEN}");
    let h = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let ok = json!({"kind": "api_key", "digest": digest(&key)});
    let lookup = |body: Option<serde_json::Value>| {
        send(&st, Method::POST, "/internal/v1/credentials", &h, body)
    };
    let r = lookup(Some(ok.clone())).await;
    assert_eq!(
        (r.json["user_id"].as_str(), r.json["plan"].as_str()),
        (Some("alice"), Some("professional")),
        "{}",
        r.text
    );
    let bad = json!({"kind": "api_key", "digest": digest("uc_nope")});
    let r = lookup(Some(bad)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // The key's use is recorded (in the background, to the minute).
    let mut last_used = None;
    for _ in 0..100 {
        last_used = keys::list_api_keys(&db.db, Some("alice")).await.unwrap()[0].last_used_at;
        if last_used.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(last_used, Some(T0));
    // Written on the ledger writer's connection, but not counted as a ledger batch.
    assert_eq!(db.db.ledger_batches(), (0, 0));

    // A revoked key is unknown at once: to the lookup and to authorize.
    let key_id = keys::list_api_keys(&db.db, Some("alice")).await.unwrap()[0]
        .id
        .clone();
    keys::revoke_api_key(&db.db, "t", &key_id, T0)
        .await
        .unwrap();
    let r = lookup(Some(ok.clone())).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let r = authorize_as(
        &st,
        Principal::ApiKey {
            digest: digest(&key),
        },
    )
    .await;
    assert_eq!(r.json["decision"], "deny", "{}", r.text);
    let r = send(&st, Method::POST, "/internal/v1/credentials", &[], Some(ok)).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "internal token required"
    );
    db.close().await;
}

/// SQLite keeps callers between authorizes (`callers.rs`), and a revoked key still stops
/// at once: the authorize after the revocation finds the key's caller in the cache, but its
/// ledger batch sees the database moved since, so nothing is placed on it; the caller is
/// read again and the key is unknown. On PostgreSQL nothing is kept.
#[tokio::test]
async fn a_revoked_key_stops_at_once_though_its_caller_was_kept() {
    for_each_backend("callers_kept", |db| async move {
        let st = setup(&db).await;
        let (key, _) = keys::issue_api_key(&db, "t", "alice", None, T0)
            .await
            .unwrap();
        let p = || Principal::ApiKey {
            digest: digest(&key),
        };
        let sqlite = db.backend == opsgate_control_plane::db::Backend::Sqlite;
        // A first batch gives the ledger writer its mirror: from here on, another
        // connection's commit would make the next batch stale.
        let service = Principal::Service {
            user_id: "alice".into(),
        };
        let r = authorize_as(&st, service).await;
        assert_eq!(r.json["decision"], "allow", "{}", r.text);
        let r = authorize_as(&st, p()).await;
        assert_eq!(r.json["decision"], "allow", "{}", r.text);
        // The key's first use is recorded in the background (on SQLite with the ledger
        // writer's next batch, on its own connection).
        for waited in 0.. {
            let key = &keys::list_api_keys(&db, Some("alice")).await.unwrap()[0];
            if key.last_used_at.is_some() {
                break;
            }
            assert!(waited < 1_000, "the key's use was never recorded");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Kept once read after the writer's last look at the database: a few calls at most.
        let mut holds = 2;
        let kept = loop {
            let before = db.caller_cache().0;
            let r = authorize_as(&st, p()).await;
            assert_eq!(r.json["decision"], "allow", "{}", r.text);
            holds += 1;
            if db.caller_cache().0 > before || holds == 6 {
                break db.caller_cache().0 > before;
            }
        };
        assert_eq!(kept, sqlite, "SQLite keeps callers, PostgreSQL does not");
        // Recording the key's use wrote on the writer's connection: the mirror never went
        // stale (the writer's first batch starts an epoch, so the very first call's caller
        // was read again once: not counted here).
        assert_eq!(db.ledger_mirror().1, 0);
        let (kept, stale) = db.caller_cache();
        let key_id = keys::list_api_keys(&db, Some("alice")).await.unwrap()[0]
            .id
            .clone();
        keys::revoke_api_key(&db, "t", &key_id, T0).await.unwrap();
        let r = authorize_as(&st, p()).await;
        assert_eq!(r.json["decision"], "deny", "{}", r.text);
        assert_eq!(
            r.json["kind"],
            serde_json::to_value(opsgate_core::ErrorKind::InvalidApiKey).unwrap(),
            "{}",
            r.text
        );
        // Taken from the cache, found stale by its batch, read again: nothing placed.
        let expected = if sqlite {
            (kept + 1, stale + 1)
        } else {
            (0, 0)
        };
        assert_eq!(db.caller_cache(), expected);
        let open = opsgate_control_plane::ledger::open_holds(&db)
            .await
            .unwrap();
        assert_eq!(open, holds);
    })
    .await;
}

/// A refusal decided on a kept caller is decided again on the caller as it is now: a plan
/// upgraded by the admin serves the very next call (the refusal happens before any ledger
/// batch, so no batch would have noticed the change).
#[tokio::test]
async fn a_plan_change_serves_the_next_call_though_the_caller_was_kept() {
    for_each_backend("callers_plan", |db| async move {
        let st = setup(&db).await;
        let call = || AuthorizeRequest {
            principal: Principal::Service {
                user_id: "alice".into(),
            },
            ..chat("", "gpt-4o", 300, Some(50))
        };
        let auth = format!("Bearer {INTERNAL_TOKEN}");
        let h = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        let send_call = || {
            let body = serde_json::to_value(call()).unwrap();
            send(&st, Method::POST, "/internal/v1/authorize", &h, Some(body))
        };
        let r = send_call().await;
        assert_eq!(
            r.json["decision"], "deny",
            "professional: no gpt-4o: {}",
            r.text
        );
        opsgate_control_plane::accounts::set_user_plan(&db, "t", "alice", Plan::Enterprise, T0)
            .await
            .unwrap();
        let r = send_call().await;
        assert_eq!(r.json["decision"], "allow", "{}", r.text);
        assert_eq!(r.json["model"], "gpt-4o", "{}", r.text);
    })
    .await;
}

/// A guessable admin token is refused at start (the admin API and the console manage every
/// key and credit), without echoing it; 16 characters are enough. An empty value is no token:
/// the admin API stays off, and an empty bearer token is not the admin's.
#[tokio::test]
async fn serve_refuses_an_admin_token_shorter_than_16_characters() {
    let dir = TempDir::new("short_admin_token");
    let url = format!("sqlite://{}/db.sqlite", dir.path().display());
    let (ok, _, err) = cli(
        &["serve", "--demo", "--port", "0", "--database-url", &url],
        &[("OPSGATE_ADMIN_TOKEN", "hunter2-hunter2")],
    );
    assert!(!ok);
    assert!(
        err.contains("OPSGATE_ADMIN_TOKEN") && err.contains("at least 16 characters"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the token is not echoed: {err}");
    for (token, status) in [("hunter2-hunter2!", 200), ("", 403)] {
        let served = serve(
            dir.path(),
            "admin_token",
            &["--demo", "--database-url", &url],
            &[("OPSGATE_ADMIN_TOKEN", token)],
        );
        let (got, body) = http(&served.addr, "GET", "/admin/v1/orgs", Some(token), None).await;
        assert_eq!(got, status, "token {token:?}: {body}");
    }
}

/// The sweeper purges users' and console sessions a day past their expiry (both databases),
/// and keeps the rest: a session still active, and one expired less than a day ago.
#[tokio::test]
async fn sessions_a_day_past_their_expiry_are_purged() {
    use opsgate_control_plane::{console, sessions};
    for_each_backend("sessions_purged", |db| async move {
        seed(&db, "org_p", "alice", Plan::Professional, 1_000, None, T0).await;
        let day = sessions::KEPT_AFTER_EXPIRY_SECS;
        let old = sessions::open(&db, "alice", T0, 60).await.unwrap();
        let recent = sessions::open(&db, "alice", T0 + day, 60).await.unwrap();
        let live = sessions::open(&db, "alice", T0 + day, 10 * day)
            .await
            .unwrap();
        console::open(&db, "admin-token", "", T0, 60).await.unwrap();
        console::open(&db, "admin-token", "", T0 + day, 10 * day)
            .await
            .unwrap();
        let count = |table: &'static str| {
            let db = db.clone();
            async move {
                scalar(
                    &db,
                    &format!("SELECT CAST(COUNT(*) AS BIGINT) AS n FROM {table}"),
                    &[],
                )
                .await
            }
        };

        // The first ones expired at T0 + 60: kept for a day, then purged. The recent one,
        // expired at T0 + day + 60, is kept.
        assert_eq!(
            sessions::purge_expired(&db, T0 + 60 + day).await.unwrap(),
            (0, 0)
        );
        assert_eq!(
            sessions::purge_expired(&db, T0 + 61 + day).await.unwrap(),
            (1, 1)
        );
        assert_eq!(count("sessions").await, 2);
        // More than one purge chunk (1,000) of long-expired sessions: all go in one sweep.
        for _ in 0..2_345 {
            sessions::open(&db, "alice", T0, 1).await.unwrap();
        }
        assert_eq!(
            sessions::purge_expired(&db, T0 + 61 + day).await.unwrap(),
            (2_345, 0)
        );
        assert_eq!(count("sessions").await, 2);
        assert_eq!(count("console_sessions").await, 1);
        let left: Vec<String> = sqlx::query_scalar("SELECT digest FROM sessions ORDER BY digest")
            .fetch_all(&db.pool)
            .await
            .unwrap();
        let mut kept = vec![
            opsgate_core::credentials::digest(&recent),
            opsgate_core::credentials::digest(&live),
        ];
        kept.sort();
        assert_eq!(left, kept);
        assert!(!left.contains(&opsgate_core::credentials::digest(&old)));
    })
    .await;
}
