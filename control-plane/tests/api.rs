//! The HTTP surface through `app(state)` with `oneshot`: internal routes for the filter,
//! public routes in the integration guide's shapes, admin routes — who may call what, what
//! comes back, and that no secret ever does.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use opsgate_control_plane::accounts;
use opsgate_control_plane::clock::ManualClock;
use opsgate_control_plane::db::Db;
use opsgate_control_plane::keys;
use opsgate_control_plane::AppState;
use opsgate_core::contract::{AuthorizeRequest, Outcome, Principal, SettleBatch};
use opsgate_core::credentials::digest;
use opsgate_core::plan::Plan;
use opsgate_core::pricing::Usage;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

const SERVICE_KEY: &str = "sk-apitest-service-key-2025";

/// Every response body the test saw, with the request line, for the leak check.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

struct Api {
    state: AppState,
    seen: Seen,
}

impl Api {
    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut req = Request::builder().method(method.clone()).uri(path);
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map_or_else(Body::empty, Body::from))
            .expect("request");
        let reply = oneshot(&self.state, req).await;
        self.seen
            .lock()
            .expect("lock")
            .push((format!("{method} {path}"), reply.text.clone()));
        reply
    }
    async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        self.send(Method::GET, path, bearer, None).await
    }
    async fn post(&self, path: &str, bearer: Option<&str>, body: Value) -> Reply {
        self.send(Method::POST, path, bearer, Some(body.to_string()))
            .await
    }
    async fn internal(&self, path: &str, body: &impl serde::Serialize) -> Reply {
        self.send(
            Method::POST,
            path,
            Some(INTERNAL_TOKEN),
            Some(serde_json::to_string(body).expect("json")),
        )
        .await
    }
}

/// The OpenAI error envelope with the given status and code.
#[track_caller]
fn assert_envelope(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    let e = &r.json["error"];
    assert!(e.is_object(), "not an envelope: {}", r.text);
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        r.text
    );
    assert!(
        e["type"].is_string() && e.get("param").is_some(),
        "{}",
        r.text
    );
    assert_eq!(e["code"], code, "{}", r.text);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{}",
        r.text
    );
}

/// An org with credits, an enterprise service user with a service key, a professional user
/// with an allocation and a uc_ key. Returns the uc_ key.
async fn fixture(db: &Db) -> String {
    seed(
        db,
        "org_api",
        "svc_api",
        Plan::Enterprise,
        5_000_000,
        None,
        T0,
    )
    .await;
    keys::add_service_key(db, ACTOR, SERVICE_KEY, "svc_api", T0)
        .await
        .expect("service key");
    seed(
        db,
        "org_api",
        "pro_api",
        Plan::Professional,
        0,
        Some(1_000_000),
        T0,
    )
    .await;
    let (key, _) = keys::issue_api_key(db, ACTOR, "pro_api", Some("test"), T0)
        .await
        .expect("issue key");
    key
}

fn api(db: &Db) -> Api {
    Api {
        state: state(db, &ManualClock::at(T0), catalogue()),
        seen: Seen::default(),
    }
}

fn authorize_body(principal: Principal, model: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        principal,
        ..chat("", model, 400, Some(200))
    }
}

#[tokio::test]
async fn internal_routes_need_the_internal_token() {
    for_each_backend("internal_routes_need_the_token", |db| async move {
        let uc_key = fixture(&db).await;
        let api = api(&db);
        let body = serde_json::to_value(authorize_body(
            Principal::Service {
                user_id: "svc_api".into(),
            },
            "gpt-4o",
        ))
        .expect("json");
        for token in [
            None,
            Some("wrong-token-wrong-token"),
            Some(ADMIN_TOKEN),
            Some(SERVICE_KEY),
            Some(uc_key.as_str()),
        ] {
            assert_envelope(
                &api.post("/internal/v1/authorize", token, body.clone())
                    .await,
                401,
                "invalid_api_key",
            );
            assert_envelope(
                &api.post("/internal/v1/settle", token, json!({"settlements": []}))
                    .await,
                401,
                "invalid_api_key",
            );
            assert_envelope(
                &api.get("/internal/v1/snapshot", token).await,
                401,
                "invalid_api_key",
            );
        }
        // Nothing was held by the refused calls.
        assert_eq!(org(&db, "org_api").await.credits_held, 0);
        // With the token: the snapshot lists the service key as a digest, never the key.
        let r = api.get("/internal/v1/snapshot", Some(INTERNAL_TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["service_keys"][0]["digest"], digest(SERVICE_KEY));
        assert_eq!(r.json["service_keys"][0]["user_id"], "svc_api");
        assert!(r.json["version"].as_str().is_some_and(|v| v.len() == 16));
        assert!(!r.text.contains(SERVICE_KEY));
        // A malformed body is a 400 envelope, not a crash.
        let r = api
            .send(
                Method::POST,
                "/internal/v1/authorize",
                Some(INTERNAL_TOKEN),
                Some("{\"principal\":".into()),
            )
            .await;
        assert_envelope(&r, 400, "bad_request");
    })
    .await;
}

#[tokio::test]
async fn authorize_and_settle_over_http() {
    for_each_backend("authorize_and_settle_over_http", |db| async move {
        let uc_key = fixture(&db).await;
        let api = api(&db);

        // A uc_ key user, by digest: allowed, with hold, bound, limits and upstream.
        let req = authorize_body(
            Principal::ApiKey {
                digest: digest(&uc_key),
            },
            "gpt-4o-mini",
        );
        let r = api.internal("/internal/v1/authorize", &req).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let g = &r.json;
        assert_eq!(g["decision"], "allow", "{}", r.text);
        let hold_id = g["hold_id"].as_str().expect("hold_id").to_string();
        assert!(hold_id.starts_with("hold_"));
        assert_eq!(g["user_id"], "pro_api");
        assert_eq!(g["model"], "gpt-4o-mini");
        assert_eq!(g["provider"], "openai");
        assert_eq!(g["max_tokens"], 200);
        assert_eq!(g["upstream"]["path"], "/v1/chat/completions");
        assert_eq!(g["upstream"]["authority"], "api.openai.com");
        assert_eq!(g["upstream"]["model"], "gpt-4o-mini");
        assert_eq!(g["upstream"]["api_key"], "platform-key-openai");
        assert_eq!(g["byok"], false);
        let hold = g["hold_mc"].as_i64().expect("hold_mc");
        assert!(hold > 0);
        assert_eq!(
            g["balance_mc"],
            1_000_000 - hold,
            "the allocation is the tighter bound"
        );
        assert_eq!(g["period"]["limit"], 10_000);
        assert_eq!(g["period"]["remaining"], 9_999);
        assert_eq!(g["daily"]["limit"], 334);
        assert_eq!(g["daily"]["remaining"], 333);
        assert_eq!(org(&db, "org_api").await.credits_held, hold);

        // Denials are answers (200 with decision deny), in the error vocabulary.
        for (principal, model, kind) in [
            (
                Principal::Service {
                    user_id: "nobody".into(),
                },
                "gpt-4o",
                "invalid_api_key",
            ),
            (
                Principal::ApiKey {
                    digest: digest("uc_not_issued"),
                },
                "gpt-4o",
                "invalid_api_key",
            ),
            (
                Principal::ApiKey {
                    digest: digest(&uc_key),
                },
                "o1-preview",
                "forbidden",
            ),
            (
                Principal::Service {
                    user_id: "svc_api".into(),
                },
                "no-such-model",
                "not_found",
            ),
        ] {
            let r = api
                .internal("/internal/v1/authorize", &authorize_body(principal, model))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            assert_eq!(r.json["decision"], "deny", "{}", r.text);
            assert_eq!(r.json["kind"], kind, "{}", r.text);
            assert!(r.json["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
        assert_eq!(
            org(&db, "org_api").await.credits_held,
            hold,
            "denials hold nothing"
        );

        // Settle in a batch, together with an unknown hold (skipped, not an error).
        let usage = Usage {
            prompt_tokens: 120,
            completion_tokens: 80,
            images: 0,
        };
        let batch = SettleBatch {
            with_balances: false,
            settlements: vec![
                opsgate_core::contract::Settlement {
                    usage,
                    ..settlement(&hold_id, Outcome::Success, 0, 0)
                },
                settlement("hold_unknown", Outcome::Success, 1, 1),
            ],
        };
        let r = api.internal("/internal/v1/settle", &batch).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let results = r.json["results"].as_array().expect("results");
        assert_eq!(results.len(), 1, "{}", r.text);
        assert_eq!(results[0]["hold_id"], hold_id.as_str());
        let rate: opsgate_core::pricing::RateCard =
            serde_json::from_value(g["rate"].clone()).expect("rate");
        let charged = rate.cost(&usage);
        assert_eq!(results[0]["charged_mc"], charged);
        // The retried batch answers the same and changes nothing.
        let before = ledger_fingerprint(&db).await;
        let again = api.internal("/internal/v1/settle", &batch).await;
        assert_eq!(again.json, r.json);
        assert_eq!(ledger_fingerprint(&db).await, before);
        let o = org(&db, "org_api").await;
        assert_eq!((o.credits_held, o.credits_used), (0, charged));
        // Asked with balances, each result carries what the hold's user can spend now (and
        // settling again still changes nothing).
        let with = SettleBatch {
            with_balances: true,
            ..batch.clone()
        };
        let r = api.internal("/internal/v1/settle", &with).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let user =
            opsgate_control_plane::accounts::get_user(&db, g["user_id"].as_str().expect("user"))
                .await
                .expect("read")
                .expect("user");
        let spendable = opsgate_control_plane::ledger::spendable(&db, &user)
            .await
            .expect("spendable");
        assert!(
            spendable < o.credits_total - o.credits_used,
            "the allocation bounds it"
        );
        assert_eq!(r.json["results"][0]["balance_mc"], spendable, "{}", r.text);
        assert_eq!(ledger_fingerprint(&db).await, before);

        // /usage totals, for the caller only.
        let u = api.get("/api/v1/llm/usage", Some(&uc_key)).await;
        assert_eq!(u.status, StatusCode::OK, "{}", u.text);
        assert_eq!(u.json["total_requests"], 1);
        assert_eq!(u.json["total_tokens"], 200);
        assert_eq!(u.json["total_cost"].as_f64(), Some(charged as f64 / 1000.0));
        assert_eq!(u.json["providers"][0]["provider"], "openai");
        assert_eq!(u.json["providers"][0]["requests"], 1);
        let window = api
            .get(
                &format!("/api/v1/llm/usage?start={}&end={}", T0 + 10, T0 + 20),
                Some(&uc_key),
            )
            .await;
        assert_eq!(
            window.json["total_requests"], 0,
            "outside the window: {}",
            window.text
        );
        let s = api.get("/api/v1/llm/usage", Some(SERVICE_KEY)).await;
        assert_eq!(s.json["total_requests"], 0, "{}", s.text);
        assert_envelope(
            &api.get("/api/v1/llm/usage?bogus=1", Some(&uc_key)).await,
            400,
            "bad_request",
        );

        let m = api.get("/metrics", None).await;
        assert!(
            m.text
                .contains("opsgate_authorize_total{decision=\"allow\"} 1"),
            "{}",
            m.text
        );
        assert!(
            m.text
                .contains("opsgate_authorize_total{decision=\"deny\"} 4"),
            "{}",
            m.text
        );
        assert!(
            m.text.contains("opsgate_ledger_batches_total ")
                && m.text.contains("opsgate_ledger_jobs_total "),
            "{}",
            m.text
        );
    })
    .await;
}

#[tokio::test]
async fn credits_and_models_in_the_guides_shapes() {
    for_each_backend("credits_and_models", |db| async move {
        let uc_key = fixture(&db).await;
        let api = api(&db);

        let r = api.get("/api/v1/llm/credits", Some(SERVICE_KEY)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let mut keys: Vec<&str> = r
            .json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["credits_remaining", "monthly_cap", "tier", "user_id"]
        );
        assert_eq!(r.json["user_id"], "svc_api");
        assert_eq!(r.json["credits_remaining"].as_f64(), Some(5_000.0));
        assert_eq!(r.json["tier"], "enterprise");
        assert!(r.json["monthly_cap"].is_null(), "enterprise is unlimited");

        let r = api.get("/api/v1/llm/credits", Some(&uc_key)).await;
        assert_eq!(r.json["user_id"], "pro_api");
        assert_eq!(
            r.json["credits_remaining"].as_f64(),
            Some(1_000.0),
            "the allocation bounds it"
        );
        assert_eq!(r.json["tier"], "professional");
        assert_eq!(r.json["monthly_cap"], 10_000);

        let r = api.get("/api/v1/llm/models", Some(&uc_key)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["object"], "list");
        let data = r.json["data"].as_array().expect("data");
        let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().expect("id")).collect();
        assert!(
            ids.contains(&"gpt-4o-mini") && ids.contains(&"llama3-8b-local"),
            "{ids:?}"
        );
        assert!(
            !ids.contains(&"o1-preview") && !ids.contains(&"gpt-4o"),
            "{ids:?}"
        );
        assert!(data
            .iter()
            .all(|m| m["object"] == "model" && m["owned_by"].is_string()));
        let r = api.get("/api/v1/llm/models", Some(SERVICE_KEY)).await;
        assert!(
            r.text.contains("\"o1-preview\""),
            "enterprise sees everything"
        );
        let r = api
            .get("/api/v1/llm/models/categorized", Some(&uc_key))
            .await;
        assert_eq!(r.json["summary"]["platform_models"], ids.len());

        // models.retrieve: a model the caller can use, as the list shows it; 404 otherwise.
        let r = api
            .get("/api/v1/llm/models/gpt-4o-mini", Some(&uc_key))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(
            (r.json["id"].as_str(), r.json["object"].as_str()),
            (Some("gpt-4o-mini"), Some("model"))
        );
        assert!(r.json["owned_by"].is_string() && r.json["created"].is_number());
        for missing in ["o1-preview", "no-such-model", "openai/gpt-4o"] {
            let r = api
                .get(&format!("/api/v1/llm/models/{missing}"), Some(&uc_key))
                .await;
            assert_envelope(&r, 404, "not_found");
            assert!(r.text.contains(missing), "{}", r.text);
        }
        assert_envelope(
            &api.get("/api/v1/llm/models/gpt-4o-mini", None).await,
            401,
            "invalid_api_key",
        );

        // An unknown path under the API is the API's: 404, without claiming it is elsewhere.
        let r = api.get("/api/v1/llm/embeddingz", Some(&uc_key)).await;
        assert_envelope(&r, 404, "not_found");
        assert!(r.text.contains("No such endpoint in the API"), "{}", r.text);
        let r = api.get("/v1/chat/completions", None).await;
        assert_envelope(&r, 404, "not_found");
        assert!(r.text.contains("lives under /api/v1/llm"), "{}", r.text);

        // Wrong, unknown, revoked and missing credentials: 401 envelopes.
        let unknown = format!("uc_{}", "0".repeat(64));
        for bad in [
            Some("nonsense"),
            Some(unknown.as_str()),
            Some("sk-other-service-key-2025"),
            None,
        ] {
            for path in [
                "/api/v1/llm/credits",
                "/api/v1/llm/models",
                "/api/v1/llm/usage",
            ] {
                assert_envelope(&api.get(path, bad).await, 401, "invalid_api_key");
            }
        }
        let key_id = keys::list_api_keys(&db, Some("pro_api"))
            .await
            .expect("keys")[0]
            .id
            .clone();
        keys::revoke_api_key(&db, ACTOR, &key_id, T0)
            .await
            .expect("revoke");
        assert_envelope(
            &api.get("/api/v1/llm/credits", Some(&uc_key)).await,
            401,
            "invalid_api_key",
        );
    })
    .await;
}

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    for_each_backend("admin_routes_need_the_admin_token", |db| async move {
        let uc_key = fixture(&db).await;
        let api = api(&db);
        let reads = [
            "/admin/v1/orgs",
            "/admin/v1/orgs/org_api",
            "/admin/v1/users",
            "/admin/v1/api-keys",
            "/admin/v1/audit",
        ];
        let new_org = json!({"id": "org_evil", "name": "Evil", "plan": "enterprise"});
        for path in reads {
            assert_envelope(&api.get(path, None).await, 401, "invalid_api_key");
        }
        assert_envelope(
            &api.post("/admin/v1/orgs", None, new_org.clone()).await,
            401,
            "invalid_api_key",
        );
        for token in [
            "wrong-admin-token-123456",
            SERVICE_KEY,
            uc_key.as_str(),
            INTERNAL_TOKEN,
        ] {
            for path in reads {
                assert_envelope(&api.get(path, Some(token)).await, 403, "admin_required");
            }
            assert_envelope(
                &api.post("/admin/v1/orgs", Some(token), new_org.clone())
                    .await,
                403,
                "admin_required",
            );
            assert_envelope(
                &api.post(
                    "/admin/v1/orgs/org_api/grants",
                    Some(token),
                    json!({"credits": 1000}),
                )
                .await,
                403,
                "admin_required",
            );
        }
        assert!(accounts::get_org(&db, "org_evil")
            .await
            .expect("get")
            .is_none());
        assert_eq!(org(&db, "org_api").await.credits_total, 5_000_000);

        // With no admin token configured, the admin API is closed to everyone.
        let mut closed = api.state.clone();
        closed.settings = Arc::new(opsgate_control_plane::Settings {
            internal_token: INTERNAL_TOKEN.into(),
            admin_token: None,
            platform_keys: Default::default(),
            hold_ttl_secs: HOLD_TTL,
            session_ttl_secs: 3600,
            console_session_ttl_secs: 3600,
            cookie_secure: true,
            admin_role: "opsgate-admin".into(),
        });
        let closed = Api {
            state: closed,
            seen: api.seen.clone(),
        };
        assert_envelope(
            &closed.get("/admin/v1/orgs", Some(ADMIN_TOKEN)).await,
            403,
            "admin_required",
        );
        assert_envelope(
            &closed.get("/admin/v1/orgs", Some("")).await,
            403,
            "admin_required",
        );
    })
    .await;
}

#[tokio::test]
async fn admin_writes_are_strict_and_audited() {
    for_each_backend("admin_writes_are_strict_and_audited", |db| async move {
        let api = api(&db);
        let admin = Some(ADMIN_TOKEN);
        // Unknown fields (and wrong types, and non-JSON) are refused before anything happens.
        for (path, body) in [
            (
                "/admin/v1/orgs",
                json!({"id": "org_x", "name": "X", "plan": "starter", "budget": 5}),
            ),
            (
                "/admin/v1/orgs",
                json!({"id": "org_x", "name": "X", "plan": "gold"}),
            ),
            (
                "/admin/v1/users",
                json!({"id": "u_x", "org_id": "org_x", "plan": "starter", "admin": true}),
            ),
            (
                "/admin/v1/orgs/org_x/grants",
                json!({"credits": 5, "note": "x"}),
            ),
            (
                "/admin/v1/users/u_x/api-keys",
                json!({"name": "k", "expires": 1}),
            ),
            (
                "/admin/v1/service-keys",
                json!({"key": "sk-x-service-key-2025", "user_id": "u_x", "org": "o"}),
            ),
        ] {
            assert_envelope(&api.post(path, admin, body).await, 400, "bad_request");
        }
        let r = api
            .send(
                Method::PUT,
                "/admin/v1/users/u_x/allocation",
                admin,
                Some(json!({"credits": 1, "extra": 2}).to_string()),
            )
            .await;
        assert_envelope(&r, 400, "bad_request");
        assert_envelope(
            &api.send(
                Method::POST,
                "/admin/v1/orgs",
                admin,
                Some("not json".into()),
            )
            .await,
            400,
            "bad_request",
        );
        assert!(
            accounts::list_orgs(&db).await.expect("orgs").is_empty(),
            "nothing was created"
        );

        // The real flow: org, grant, user, allocation, key, service key.
        let r = api
            .post(
                "/admin/v1/orgs",
                admin,
                json!({"id": "org_new", "name": "New Co", "plan": "professional"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json["id"], "org_new");
        let r = api
            .post(
                "/admin/v1/orgs/org_new/grants",
                admin,
                json!({"credits": 250.5}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        // People read credits; the exact milli-credits only where the field says so.
        assert_eq!(r.json["credits_total"], 250.5);
        assert_eq!(r.json["credits_total_mc"], 250_500);
        assert_envelope(
            &api.post(
                "/admin/v1/orgs/org_new/grants",
                admin,
                json!({"credits": 0.0001}),
            )
            .await,
            400,
            "bad_request",
        );
        assert_envelope(
            &api.post(
                "/admin/v1/orgs/org_new/grants",
                admin,
                json!({"credits": -1000}),
            )
            .await,
            400,
            "bad_request",
        );
        assert_envelope(
            &api.post(
                "/admin/v1/orgs/org_missing/grants",
                admin,
                json!({"credits": 1}),
            )
            .await,
            404,
            "not_found",
        );
        let r = api
            .post(
                "/admin/v1/users",
                admin,
                json!({"id": "u_new", "org_id": "org_new", "plan": "professional"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(
            (r.json["kind"].as_str(), r.json["role"].as_str()),
            (Some("user"), Some("member"))
        );
        // The CLI's names work on the API too: `org` for `org_id`, `credits` on create.
        let r = api
            .post(
                "/admin/v1/orgs",
                admin,
                json!({"id": "org_cli", "name": "CLI Co", "plan": "starter", "credits": 12.5}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json["credits_total"], 12.5);
        let r = api
            .post(
                "/admin/v1/users",
                admin,
                json!({"id": "u_cli", "org": "org_cli", "plan": "starter"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let r = api.get("/admin/v1/users?org=org_cli", admin).await;
        assert_eq!(r.json["data"][0]["id"], "u_cli", "{}", r.text);
        assert_envelope(
            &api.post(
                "/admin/v1/users",
                admin,
                json!({"id": "u_new", "org_id": "org_new", "plan": "professional"}),
            )
            .await,
            400,
            "bad_request",
        );
        let r = api
            .send(
                Method::PUT,
                "/admin/v1/users/u_new/allocation",
                admin,
                Some(json!({"credits": 100}).to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["allocated"], 100.0);
        assert_eq!(r.json["allocated_mc"], 100_000);
        assert!(r.json.get("warning").is_none(), "{}", r.text);
        // Caps adding up to more than the pool (250.5) are allowed, with a warning.
        let set = |credits: u32| {
            api.send(
                Method::PUT,
                "/admin/v1/users/u_new/allocation",
                admin,
                Some(json!({ "credits": credits }).to_string()),
            )
        };
        let r = set(300).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert!(
            r.json["warning"]
                .as_str()
                .is_some_and(|w| w.contains("300.000") && w.contains("250.500")),
            "{}",
            r.text
        );
        assert_eq!(set(100).await.status, StatusCode::OK);
        let r = api
            .post(
                "/admin/v1/users/u_new/api-keys",
                admin,
                json!({"name": "ci"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let issued = r.json["api_key"].as_str().expect("api_key").to_string();
        assert!(opsgate_core::credentials::is_user_key(&issued));
        let key_id = r.json["key"]["id"].as_str().expect("key id").to_string();
        let r = api
            .post(
                "/admin/v1/service-keys",
                admin,
                json!({"key": "sk-newco-service-key-2026", "user_id": "u_new"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

        // The issued key works at once.
        let c = api.get("/api/v1/llm/credits", Some(&issued)).await;
        assert_eq!(c.json["user_id"], "u_new", "{}", c.text);
        assert_eq!(c.json["credits_remaining"].as_f64(), Some(100.0));

        // Listings show the key's prefix, never the key.
        let r = api.get("/admin/v1/api-keys?user_id=u_new", admin).await;
        assert_eq!(r.json["data"][0]["id"], key_id.as_str());
        assert_eq!(r.json["data"][0]["prefix"], &issued[..11]);
        assert_envelope(
            &api.get("/admin/v1/api-keys?bogus=1", admin).await,
            400,
            "bad_request",
        );
        let r = api.get("/admin/v1/users?org_id=org_new", admin).await;
        assert_eq!(r.json["data"].as_array().map(Vec::len), Some(1));
        assert_envelope(
            &api.get("/admin/v1/orgs/org_missing", admin).await,
            404,
            "not_found",
        );

        // Every write is in the audit log, by the admin token.
        let a = api.get("/admin/v1/audit", admin).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let entries = a.json["data"].as_array().expect("entries");
        for (action, target) in [
            ("org.create", "org_new"),
            ("org.grant", "org_new"),
            ("user.create", "u_new"),
            ("allocation.set", "u_new"),
            ("api_key.issue", "u_new"),
            ("service_key.add", "u_new"),
        ] {
            assert!(
                entries.iter().any(|e| e["action"] == action
                    && e["target"] == target
                    && e["actor"] == "admin-token"),
                "{action} {target} missing from {}",
                a.text
            );
        }
        assert!(
            !entries.iter().any(|e| e["target"] == "org_x"),
            "refused writes are not audited as done"
        );

        // Revocation: audited, and the key stops working.
        let r = api
            .send(
                Method::DELETE,
                &format!("/admin/v1/api-keys/{key_id}"),
                admin,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert_envelope(
            &api.send(
                Method::DELETE,
                &format!("/admin/v1/api-keys/{key_id}"),
                admin,
                None,
            )
            .await,
            404,
            "not_found",
        );
        assert_envelope(
            &api.get("/api/v1/llm/credits", Some(&issued)).await,
            401,
            "invalid_api_key",
        );
        let a = api.get("/admin/v1/audit", admin).await;
        assert!(a.text.contains("api_key.revoke"));

        // No response — other than the one issue response — carries the key or a digest.
        let secrets = [
            issued.clone(),
            digest(&issued),
            "sk-newco-service-key-2026".to_string(),
            digest("sk-newco-service-key-2026"),
        ];
        let seen = api.seen.lock().expect("lock").clone();
        let mut issue_responses = 0;
        for (request, body) in &seen {
            if body.contains(&issued) && request.starts_with("POST /admin/v1/users/u_new/api-keys")
            {
                issue_responses += 1;
                assert!(
                    !body.contains(&digest(&issued)),
                    "the issue response has no digest"
                );
                continue;
            }
            for s in &secrets {
                assert!(
                    !body.contains(s.as_str()),
                    "{request} leaked a secret: {body}"
                );
            }
        }
        assert_eq!(issue_responses, 1);
    })
    .await;
}

#[tokio::test]
async fn no_route_leaks_keys_or_digests() {
    for_each_backend("no_route_leaks_keys", |db| async move {
        let uc_key = fixture(&db).await;
        let api = api(&db);
        let admin = Some(ADMIN_TOKEN);
        // Exercise every route once with each credential.
        let r = api
            .internal(
                "/internal/v1/authorize",
                &authorize_body(
                    Principal::ApiKey {
                        digest: digest(&uc_key),
                    },
                    "gpt-4o-mini",
                ),
            )
            .await;
        let hold = r.json["hold_id"].as_str().expect("hold").to_string();
        api.internal(
            "/internal/v1/settle",
            &SettleBatch {
                with_balances: false,
                settlements: vec![settlement(&hold, Outcome::Success, 10, 10)],
            },
        )
        .await;
        for path in [
            "/api/v1/llm/credits",
            "/api/v1/llm/models",
            "/api/v1/llm/models/categorized",
            "/api/v1/llm/usage",
        ] {
            for cred in [
                Some(uc_key.as_str()),
                Some(SERVICE_KEY),
                None,
                Some("garbage"),
            ] {
                api.get(path, cred).await;
            }
        }
        for path in [
            "/admin/v1/orgs",
            "/admin/v1/orgs/org_api",
            "/admin/v1/users",
            "/admin/v1/api-keys",
            "/admin/v1/audit",
        ] {
            for cred in [admin, Some(uc_key.as_str()), Some(SERVICE_KEY), None] {
                api.get(path, cred).await;
            }
        }
        api.get("/nope", Some(&uc_key)).await;
        api.get("/healthz", None).await;
        api.get("/metrics", None).await;
        let secrets = [
            uc_key.clone(),
            digest(&uc_key),
            SERVICE_KEY.to_string(),
            digest(SERVICE_KEY),
        ];
        let seen = api.seen.lock().expect("lock").clone();
        assert!(seen.len() > 40);
        for (request, body) in &seen {
            for s in &secrets {
                assert!(
                    !body.contains(s.as_str()),
                    "{request} leaked a secret: {body}"
                );
            }
        }
        // (By contract, only the internal snapshot carries service-key digests, for the
        // filter; it is behind the internal token, tested above.)
    })
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_with_the_envelope() {
    for_each_backend("unknown_routes_and_methods", |db| async move {
        let api = api(&db);
        for path in [
            "/",
            "/nope",
            "/api/v1/llm",
            "/api/v1/llm/chat",
            "/admin/v2/orgs",
        ] {
            let r = api.get(path, None).await;
            assert_envelope(&r, 404, "not_found");
            assert!(r.json["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("/api/v1/llm")));
        }
        // A known path with the wrong method is an error too, in the same envelope.
        for (method, path) in [
            (Method::GET, "/internal/v1/authorize"),
            (Method::DELETE, "/api/v1/llm/credits"),
            (Method::PUT, "/admin/v1/orgs"),
        ] {
            let r = api.send(method.clone(), path, None, None).await;
            assert_envelope(&r, 405, "method_not_allowed");
        }
        // axum's own rejections (a body past its limit) come back in the envelope too.
        let huge = "x".repeat(3 << 20);
        for path in [
            "/api/v1/llm/byok/keys",
            "/admin/v1/orgs",
            "/internal/v1/settle",
        ] {
            let r = api
                .send(Method::POST, path, Some(INTERNAL_TOKEN), Some(huge.clone()))
                .await;
            assert_envelope(&r, 413, "payload_too_large");
        }
        assert_eq!(api.get("/healthz", None).await.text, "ok");
        let r = api.get("/readyz", None).await;
        assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, "ready"));
    })
    .await;
}

/// Local providers (vLLM, Ollama) have no key variable in the catalogue, so `serve` never
/// has a platform key for them: they must still be usable (with no upstream key), while a
/// keyed provider whose key is missing is unavailable.
#[tokio::test]
async fn local_models_need_no_platform_key() {
    for_each_backend("local_models_need_no_platform_key", |db| async move {
        seed(&db, "org_l", "trial_l", Plan::Trial, 1_000_000, None, T0).await;
        let mut st = state(&db, &ManualClock::at(T0), catalogue());
        // What `serve` builds from the environment when only OPENAI_API_KEY is set.
        st.settings = Arc::new(opsgate_control_plane::Settings {
            internal_token: INTERNAL_TOKEN.into(),
            admin_token: None,
            platform_keys: [("openai".to_string(), "platform-key-openai".to_string())].into(),
            hold_ttl_secs: HOLD_TTL,
            session_ttl_secs: 3600,
            console_session_ttl_secs: 3600,
            cookie_secure: true,
            admin_role: "opsgate-admin".into(),
        });
        let api = Api {
            state: st,
            seen: Seen::default(),
        };
        let private = AuthorizeRequest {
            model: None,
            privacy_required: true,
            ..chat("trial_l", "x", 300, Some(100))
        };
        let r = api.internal("/internal/v1/authorize", &private).await;
        assert_eq!(r.json["decision"], "allow", "{}", r.text);
        assert_eq!(r.json["provider"], "local");
        assert_eq!(r.json["upstream"]["api_key"], "");
        let r = api
            .internal(
                "/internal/v1/authorize",
                &chat("trial_l", "llama3-8b-local", 300, Some(100)),
            )
            .await;
        assert_eq!(r.json["decision"], "allow", "{}", r.text);
        let r = api
            .internal(
                "/internal/v1/authorize",
                &chat("trial_l", "llama3-70b-groq", 300, Some(100)),
            )
            .await;
        assert_eq!(r.json["decision"], "deny", "{}", r.text);
        assert_eq!(r.json["kind"], "unavailable", "{}", r.text);
    })
    .await;
}

/// Binding a service key that is already bound elsewhere (or revoked) must not report a
/// success — nor audit one — that did not happen.
#[tokio::test]
async fn a_service_key_cannot_be_silently_rebound() {
    for_each_backend("service_key_rebinding", |db| async move {
        fixture(&db).await;
        seed(&db, "org_api", "svc_other", Plan::Enterprise, 0, None, T0).await;
        let api = api(&db);
        let admin = Some(ADMIN_TOKEN);
        // Same key, same user: idempotent.
        let r = api
            .post(
                "/admin/v1/service-keys",
                admin,
                json!({"key": SERVICE_KEY, "user_id": "svc_api"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        // Same key, another user: refused, and the binding is unchanged.
        let r = api
            .post(
                "/admin/v1/service-keys",
                admin,
                json!({"key": SERVICE_KEY, "user_id": "svc_other"}),
            )
            .await;
        assert_envelope(&r, 400, "bad_request");
        assert!(!r.text.contains(SERVICE_KEY));
        let snap = api.get("/internal/v1/snapshot", Some(INTERNAL_TOKEN)).await;
        assert_eq!(
            snap.json["service_keys"][0]["user_id"], "svc_api",
            "{}",
            snap.text
        );
        let audit = api.get("/admin/v1/audit", admin).await;
        assert!(
            !audit.json["data"]
                .as_array()
                .expect("data")
                .iter()
                .any(|e| e["target"] == "svc_other" && e["action"] == "service_key.add"),
            "a refused binding is audited as done: {}",
            audit.text
        );
        // A revoked key stays revoked: re-adding it is refused, not a silent no-op.
        keys::revoke_service_key(&db, ACTOR, SERVICE_KEY, T0)
            .await
            .expect("revoke");
        let r = api
            .post(
                "/admin/v1/service-keys",
                admin,
                json!({"key": SERVICE_KEY, "user_id": "svc_api"}),
            )
            .await;
        assert_envelope(&r, 400, "bad_request");
        assert!(r.text.contains("allow_revoked"), "{}", r.text);
        assert_envelope(
            &api.get("/api/v1/llm/credits", Some(SERVICE_KEY)).await,
            401,
            "invalid_api_key",
        );
        // Only an explicit request brings it back, with a warning: the guide's key is
        // guessable by design.
        let r = api
            .post(
                "/admin/v1/service-keys",
                admin,
                json!({"key": SERVICE_KEY, "user_id": "svc_api", "allow_revoked": true}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json["guessable"], true);
        assert!(r.json["warning"]
            .as_str()
            .is_some_and(|w| w.contains("service-key mint")));
        assert_eq!(
            api.get("/api/v1/llm/credits", Some(SERVICE_KEY))
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(keys::guessable_service_keys(&db).await.unwrap(), 1);
        // A minted key is strong: no warning, and not counted.
        let strong = keys::mint_service_key("svc-other", 2026).unwrap();
        assert!(
            opsgate_core::credentials::is_service_key(&strong),
            "{strong}"
        );
        let r = api
            .post(
                "/admin/v1/service-keys",
                admin,
                json!({"key": strong, "user_id": "svc_other"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json["guessable"], false);
        assert!(r.json.get("warning").is_none());
        assert_eq!(keys::guessable_service_keys(&db).await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn an_organisations_plan_is_the_highest_its_users_may_have() {
    for_each_backend("org_plan_caps_user_plans", |db| async move {
        let api = api(&db);
        let admin = Some(ADMIN_TOKEN);
        let put = |path: &'static str, body: Value| {
            api.send(Method::PUT, path, admin, Some(body.to_string()))
        };
        let r = api
            .post(
                "/admin/v1/orgs",
                admin,
                json!({"id": "org_tier", "name": "Tier", "plan": "professional"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        // Above the organisation's plan: refused, saying how to raise it.
        let r = api
            .post(
                "/admin/v1/users",
                admin,
                json!({"id": "u_big", "org": "org_tier", "plan": "enterprise"}),
            )
            .await;
        assert_envelope(&r, 400, "bad_request");
        assert!(
            r.text.contains("org plan org_tier enterprise"),
            "{}",
            r.text
        );
        // At or below it, and BYOK (the provider is paid, not the platform): accepted.
        for (id, plan) in [("u_pro", "professional"), ("u_own", "byok")] {
            let r = api
                .post(
                    "/admin/v1/users",
                    admin,
                    json!({"id": id, "org": "org_tier", "plan": plan}),
                )
                .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        }
        // A user's plan cannot be moved above it either.
        let r = put("/admin/v1/users/u_pro/plan", json!({"plan": "vip_founder"})).await;
        assert_envelope(&r, 400, "bad_request");
        // Lowering the organisation below a user's plan is refused, naming the user.
        let r = put("/admin/v1/orgs/org_tier/plan", json!({"plan": "starter"})).await;
        assert_envelope(&r, 400, "bad_request");
        assert!(r.text.contains("u_pro (professional)"), "{}", r.text);
        assert!(!r.text.contains("u_own"), "{}", r.text);
        assert_eq!(org(&db, "org_tier").await.plan, Plan::Professional);
        // Move the user first, then the organisation follows.
        let r = put("/admin/v1/users/u_pro/plan", json!({"plan": "starter"})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let r = put("/admin/v1/orgs/org_tier/plan", json!({"plan": "starter"})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["plan"], "starter");
    })
    .await;
}

#[tokio::test]
async fn the_admin_api_speaks_the_clis_names() {
    let t = TestDb::sqlite().await;
    let api = api(&t.db);
    let admin = Some(ADMIN_TOKEN);
    // `service-key mint`: a strong key, not stored, never cached.
    let r = api
        .post(
            "/admin/v1/service-keys/mint",
            admin,
            json!({"service": "billing"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let key = r.json["key"].as_str().expect("key").to_string();
    assert!(key.starts_with("sk-billing-") && key.len() > 40, "{key}");
    assert!(
        !opsgate_core::credentials::guessable_service_key(&key),
        "{key}"
    );
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_envelope(
        &api.post(
            "/admin/v1/service-keys/mint",
            admin,
            json!({"service": "no way"}),
        )
        .await,
        400,
        "bad_request",
    );
    // `audit --limit`, `key list --user`.
    fixture(&t.db).await;
    let r = api.get("/admin/v1/audit?limit=2", admin).await;
    assert_eq!(
        r.json["data"].as_array().map(Vec::len),
        Some(2),
        "{}",
        r.text
    );
    assert_envelope(
        &api.get("/admin/v1/audit?limit=0", admin).await,
        400,
        "bad_request",
    );
    let by_user = api.get("/admin/v1/api-keys?user=u_nobody", admin).await;
    assert_eq!(by_user.json["data"], json!([]), "{}", by_user.text);
    t.close().await;
}

#[tokio::test]
async fn admins_see_a_users_own_keys_masked_and_may_remove_one() {
    let t = TestDb::sqlite().await;
    let api = api(&t.db);
    let admin = Some(ADMIN_TOKEN);
    let uc_key = fixture(&t.db).await;
    let secret = "sk-or-v1-admin-view-canary-0123456789";
    let r = api
        .post(
            "/api/v1/llm/byok/keys",
            Some(&uc_key),
            json!({"provider": "openrouter", "api_key": secret}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let user = "pro_api"; // the fixture's uc_ key holder
    let listed = api
        .get(&format!("/admin/v1/users/{user}/byok-keys"), admin)
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    assert!(
        !listed.text.contains(secret),
        "masked only: {}",
        listed.text
    );
    let key_id = listed.json["data"][0]["id"]
        .as_str()
        .expect("a key")
        .to_string();
    assert_eq!(listed.json["data"][0]["provider"], "openrouter");
    // Not for a user or without the admin token.
    assert_eq!(
        api.get(&format!("/admin/v1/users/{user}/byok-keys"), Some(&uc_key))
            .await
            .status
            .as_u16(),
        403
    );
    assert_envelope(
        &api.get("/admin/v1/users/nobody/byok-keys", admin).await,
        404,
        "not_found",
    );
    let gone = api
        .send(
            Method::DELETE,
            &format!("/admin/v1/users/{user}/byok-keys/{key_id}"),
            admin,
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text);
    let listed = api
        .get(&format!("/admin/v1/users/{user}/byok-keys"), admin)
        .await;
    assert_eq!(listed.json["data"], json!([]));
    let audit = api.get("/admin/v1/audit?limit=1", admin).await;
    assert_eq!(
        audit.json["data"][0]["action"], "byok.remove",
        "{}",
        audit.text
    );
    assert_eq!(audit.json["data"][0]["actor"], "admin-token");
    t.close().await;
}
