//! BYOK: users' own provider keys and the platform's stored keys — added, listed masked,
//! removed, sealed to their row, rotated under a new master key, and routed: a caller's own
//! key serves their call at no cost, on SQLite and PostgreSQL.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use opsgate_control_plane::accounts;
use opsgate_control_plane::byok::{self, Owner};
use opsgate_control_plane::clock::ManualClock;
use opsgate_control_plane::crypto::{Keyring, MasterKey, OpenError};
use opsgate_control_plane::db::Db;
use opsgate_control_plane::keys;
use opsgate_control_plane::ledger::{self, Routing};
use opsgate_control_plane::AppState;
use opsgate_core::contract::{Endpoint, Outcome, Principal};
use opsgate_core::credentials::{digest, mask};
use opsgate_core::headers::UNLIMITED_CALLS;
use opsgate_core::plan::Plan;
use opsgate_core::ErrorKind;
use serde_json::{json, Value};
use sqlx::Row;

const OR_KEY: &str = "sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab";
const OR_KEY_2: &str = "sk-or-v1-fedcba9876543210fedcba9876543210fedcba9876543210fedcba98765432";
const OAI_KEY: &str = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd";
const ANT_KEY: &str = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789";
/// A Google AI Studio key's shape (`AIza` + 35 characters).
const GOOGLE_KEY: &str = "AIzaSyA-0123456789abcdefghijklmnopqrs";

struct Api {
    state: AppState,
    /// Every response body, for the leak checks.
    seen: std::sync::Mutex<Vec<String>>,
}

impl Api {
    fn new(db: &Db) -> Api {
        Api {
            state: state(db, &ManualClock::at(T0), catalogue()),
            seen: Default::default(),
        }
    }
    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
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
        self.seen.lock().expect("lock").push(reply.text.clone());
        reply
    }
    async fn get(&self, path: &str, bearer: Option<&str>) -> Reply {
        self.send(Method::GET, path, bearer, None).await
    }
    async fn post(&self, path: &str, bearer: Option<&str>, body: &str) -> Reply {
        self.send(Method::POST, path, bearer, Some(body.to_string()))
            .await
    }
    async fn put(&self, path: &str, bearer: Option<&str>, body: &str) -> Reply {
        self.send(Method::PUT, path, bearer, Some(body.to_string()))
            .await
    }
    async fn delete(&self, path: &str, bearer: Option<&str>) -> Reply {
        self.send(Method::DELETE, path, bearer, None).await
    }
    async fn add(&self, bearer: &str, provider: &str, key: &str) -> Reply {
        self.post(
            "/api/v1/llm/byok/keys",
            Some(bearer),
            &json!({"provider": provider, "api_key": key, "metadata": {"description": format!("my {provider} key")}}).to_string(),
        )
        .await
    }
    fn assert_never_returned(&self, secrets: &[&str]) {
        for body in self.seen.lock().expect("lock").iter() {
            for s in secrets {
                assert!(!body.contains(s), "a response repeated a secret: {body}");
            }
        }
    }
}

#[track_caller]
fn assert_error(r: &Reply, status: u16, secret: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    assert!(
        r.json["error"]["message"].is_string(),
        "not an envelope: {}",
        r.text
    );
    assert!(
        !r.text.contains(secret),
        "the error repeats the key: {}",
        r.text
    );
}

/// An org with 1,000 credits; `alice` and `bob` on professional with uc_ keys.
async fn fixture(db: &Db) -> (String, String) {
    seed(
        db,
        "org_b",
        "alice",
        Plan::Professional,
        1_000_000,
        None,
        T0,
    )
    .await;
    seed(db, "org_b", "bob", Plan::Professional, 0, None, T0).await;
    let (a, _) = keys::issue_api_key(db, ACTOR, "alice", None, T0)
        .await
        .expect("key");
    let (b, _) = keys::issue_api_key(db, ACTOR, "bob", None, T0)
        .await
        .expect("key");
    (a, b)
}

async fn put_user_key(db: &Db, keyring: &Keyring, user: &str, provider: &str, key: &str) -> String {
    put_key(db, keyring, Owner::User(user), provider, key).await
}

/// Stores `owner`'s key for `provider`; returns its id.
async fn put_key(
    db: &Db,
    keyring: &Keyring,
    owner: Owner<'_>,
    provider: &str,
    key: &str,
) -> String {
    byok::put(
        db,
        keyring,
        &catalogue(),
        owner,
        provider,
        key,
        None,
        ACTOR,
        T0,
    )
    .await
    .expect("store key")
    .0
    .id
}

#[tokio::test]
async fn keys_are_added_listed_masked_and_removed() {
    for_each_backend("byok_add_list_remove", |db| async move {
        let (alice, bob) = fixture(&db).await;
        let api = Api::new(&db);

        let r = api.add(&alice, "openrouter", OR_KEY).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        let first_id = r.json["id"].as_str().expect("id").to_string();
        assert!(first_id.starts_with("byok_"), "{}", r.text);
        assert_eq!(r.json["provider"], "openrouter");
        assert_eq!(r.json["masked_key"], "sk-or-v1-01…ab");
        assert_eq!(r.json["masked_key"], mask(OR_KEY));
        assert_eq!(r.json["metadata"]["description"], "my openrouter key");
        assert!(r.json["replaced"].is_null());
        let r = api.add(&alice, "openai", OAI_KEY).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

        let r = api.get("/api/v1/llm/byok/keys", Some(&alice)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let data = r.json["data"].as_array().expect("data");
        let providers: Vec<&str> = data.iter().map(|k| k["provider"].as_str().unwrap()).collect();
        assert_eq!(providers, ["openai", "openrouter"]);
        for k in data {
            let masked = k["masked_key"].as_str().expect("masked");
            assert!(masked.contains('…') && masked.len() < 20, "{masked}");
            assert!(k["id"].is_string() && k["created_at"] == T0, "{k}");
        }

        // A second key for the same provider replaces the first.
        let r = api.add(&alice, "openrouter", OR_KEY_2).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.json["replaced"], first_id.as_str());
        let r = api.get("/api/v1/llm/byok/keys", Some(&alice)).await;
        assert_eq!(r.json["data"].as_array().unwrap().len(), 2, "{}", r.text);
        assert!(r.text.contains(&mask(OR_KEY_2)));

        // Invalid providers and shapes: 400, never echoing the key.
        for (provider, key) in [
            ("nope", OR_KEY),
            ("local", OR_KEY),
            (OR_KEY, OR_KEY),
            ("openrouter", "sk-abcdefghijklmnopqrstuvwxyz"),
            ("openrouter", "sk-or-v1-short"),
            ("openrouter", &format!("{OR_KEY} trailing")),
            ("openrouter", &format!("{OR_KEY}\n")),
            ("openai", OR_KEY),
            ("openai", "pk-abcdefghijklmnopqrstuvwxyz"),
            ("anthropic", OAI_KEY),
            ("groq", "xsk_abcdefghijklmnopqrstuvwxyz"),
            ("google", OAI_KEY),
            ("openai", GOOGLE_KEY),
            ("together", "short-key"),
            ("together", &format!("uc_{}", "a".repeat(64))),
            ("together", "sk-loopnet-service-key-2025"),
            ("openai", ""),
        ] {
            let r = api.add(&alice, provider, key).await;
            assert_error(&r, 400, if key.is_empty() { "\u{0}" } else { key });
        }
        for body in [
            json!({"provider": "openrouter", "api_key": OR_KEY, "extra": 1}).to_string(),
            json!({"provider": "openrouter", "api_key": OR_KEY, "metadata": OR_KEY}).to_string(),
            json!({"provider": "openrouter", "api_key": OR_KEY, "metadata": {"description": OR_KEY}}).to_string(),
            json!({"provider": "openrouter", "api_key": OR_KEY, "metadata": {"description": 5, "x": OR_KEY}}).to_string(),
            json!({"provider": 7, "api_key": OR_KEY}).to_string(),
            json!({"provider": "openrouter", "api_key": [OR_KEY]}).to_string(),
            format!("{{\"provider\": \"openrouter\", \"api_key\": \"{OR_KEY}"),
        ] {
            let r = api.post("/api/v1/llm/byok/keys", Some(&alice), &body).await;
            assert_error(&r, 400, OR_KEY);
        }
        // Other providers: printable, at least 16 characters.
        let r = api.add(&alice, "together", "tgp_v1_abcdefghijklmnop").await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);


        // Nobody else sees or removes them.
        let r = api.get("/api/v1/llm/byok/keys", Some(&bob)).await;
        assert_eq!(r.json["data"], json!([]), "{}", r.text);
        let alices = byok::list(&db, Owner::User("alice")).await.expect("list");
        let r = api
            .delete(&format!("/api/v1/llm/byok/keys/{}", alices[0].id), Some(&bob))
            .await;
        assert_error(&r, 404, OR_KEY);
        let r = api
            .delete("/api/v1/llm/byok/keys?provider=openai", Some(&bob))
            .await;
        assert_error(&r, 404, OAI_KEY);
        for r in [
            api.get("/api/v1/llm/byok/keys", None).await,
            api.post("/api/v1/llm/byok/keys", None, &json!({"provider": "openai", "api_key": OAI_KEY}).to_string()).await,
            api.delete("/api/v1/llm/byok/keys?provider=openai", Some("nonsense")).await,
        ] {
            assert_error(&r, 401, OAI_KEY);
        }
        assert_eq!(byok::list(&db, Owner::User("alice")).await.unwrap().len(), 3);

        // Removal: by provider, by id (path or query); then 404.
        let r = api
            .delete("/api/v1/llm/byok/keys?provider=openai", Some(&alice))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["provider"], "openai");
        assert_eq!(r.json["deleted"], true);
        let or_id = byok::list(&db, Owner::User("alice")).await.unwrap()
            .into_iter()
            .find(|k| k.provider == "openrouter")
            .unwrap()
            .id;
        let r = api
            .delete(&format!("/api/v1/llm/byok/keys/{or_id}"), Some(&alice))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let r = api
            .delete(&format!("/api/v1/llm/byok/keys/{or_id}"), Some(&alice))
            .await;
        assert_error(&r, 404, OR_KEY_2);
        let tg_id = byok::list(&db, Owner::User("alice")).await.unwrap()[0].id.clone();
        let r = api
            .delete(&format!("/api/v1/llm/byok/keys?id={tg_id}"), Some(&alice))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        for q in ["", "?id=x&provider=openai", "?key=x"] {
            let r = api.delete(&format!("/api/v1/llm/byok/keys{q}"), Some(&alice)).await;
            assert_error(&r, 400, OR_KEY);
        }
        let r = api.get("/api/v1/llm/byok/keys", Some(&alice)).await;
        assert_eq!(r.json["data"], json!([]));

        // Audited, with masked keys only.
        let audit: Vec<String> = sqlx::query("SELECT action, detail FROM audit_log WHERE action LIKE 'byok.%' ORDER BY seq")
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| format!("{} {}", r.get::<String, _>("action"), r.get::<String, _>("detail")))
            .collect();
        assert_eq!(audit.iter().filter(|a| a.starts_with("byok.add")).count(), 4, "{audit:?}");
        assert_eq!(audit.iter().filter(|a| a.starts_with("byok.remove")).count(), 3, "{audit:?}");
        assert!(audit.iter().any(|a| a.contains("replaced=")), "{audit:?}");
        let all = audit.join("\n");
        for k in [OR_KEY, OR_KEY_2, OAI_KEY] {
            assert!(!all.contains(k));
        }
        api.assert_never_returned(&[OR_KEY, OR_KEY_2, OAI_KEY, "tgp_v1_abcdefghijklmnop"]);
    })
    .await;
}

#[tokio::test]
async fn secrets_are_stored_sealed() {
    for_each_backend("byok_stored_sealed", |db| async move {
        fixture(&db).await;
        let ring = keyring();
        put_user_key(&db, &ring, "alice", "openrouter", OR_KEY).await;
        let row = sqlx::query(
            "SELECT hint, ciphertext, wrapped_key, master_key_id FROM provider_secrets",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let ct: String = row.get("ciphertext");
        let wk: String = row.get("wrapped_key");
        assert!(
            ct.bytes().all(|b| b.is_ascii_hexdigit()) && ct.len() == 2 * (24 + OR_KEY.len() + 16)
        );
        assert!(wk.bytes().all(|b| b.is_ascii_hexdigit()) && wk.len() == 2 * (24 + 32 + 16));
        assert_eq!(row.get::<String, _>("master_key_id"), ring.current().id());
        assert_eq!(row.get::<String, _>("hint"), mask(OR_KEY));
        let hex_key = opsgate_core::credentials::hex(OR_KEY.as_bytes());
        for col in [&ct, &wk] {
            assert!(!col.contains(OR_KEY) && !col.contains(&hex_key));
        }
        let s = byok::stored_for(&db, Owner::User("alice"), "openrouter")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.open(&ring).unwrap().expose(), OR_KEY);
    })
    .await;
}

fn router_with(keyring: Keyring) -> Router {
    let mut r = Router::new(catalogue());
    r.keyring = keyring;
    r
}

async fn authorize(
    db: &Db,
    routing: &Routing<'_>,
    user: &str,
    model: &str,
) -> Result<opsgate_core::contract::Grant, opsgate_control_plane::error::AppError> {
    let u = accounts::get_user(db, user).await.unwrap().unwrap();
    ledger::authorize(db, routing, &u, &chat(user, model, 2_000, Some(500)), T0).await
}

#[tokio::test]
async fn a_callers_own_key_serves_their_call_and_costs_nothing() {
    for_each_backend("byok_costs_nothing", |db| async move {
        fixture(&db).await;
        let router = Router::new(catalogue());
        let routing = router.routing();
        put_user_key(&db, &router.keyring, "alice", "openai", OAI_KEY).await;
        let before = org(&db, "org_b").await;

        // gpt-4o is an enterprise model: alice (professional) reaches it with her own key.
        let g = authorize(&db, &routing, "alice", "gpt-4o")
            .await
            .expect("byok grant");
        assert!(g.byok);
        assert_eq!(g.hold_mc.0, 0);
        assert_eq!(g.provider, "openai");
        assert_eq!(g.model, "gpt-4o");
        assert_eq!(g.upstream.api_key, OAI_KEY);
        assert_eq!(g.upstream.model, "gpt-4o");
        assert_eq!(g.upstream.cluster, "provider_openai");
        assert_eq!(g.upstream.path, "/v1/chat/completions");
        assert_eq!(g.max_tokens, Some(500), "the client's own bound stands");
        assert_eq!(
            g.rate.cost(&opsgate_core::pricing::Usage {
                prompt_tokens: 1_000_000,
                completion_tokens: 1_000_000,
                images: 1
            }),
            0
        );
        assert!(!format!("{g:?}").contains(OAI_KEY), "Debug redacts the key");
        assert_eq!(org(&db, "org_b").await, before, "a BYOK hold holds nothing");
        let charged = ledger::settle(
            &db,
            &settlement(&g.hold_id, Outcome::Success, 1_500, 500),
            T0 + 5,
        )
        .await
        .expect("settle");
        assert_eq!(charged, 0);
        assert_eq!(
            org(&db, "org_b").await,
            before,
            "the organisation's balance is unchanged"
        );
        let log =
            sqlx::query("SELECT provider, cost, byok, outcome FROM usage_logs WHERE hold_id = $1")
                .bind(&g.hold_id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        assert_eq!(log.get::<String, _>("provider"), "openai");
        assert_eq!(log.get::<i64, _>("cost"), 0);
        assert_eq!(log.get::<i64, _>("byok"), 1);
        assert_eq!(log.get::<String, _>("outcome"), "success");

        // A platform call (no own OpenRouter key yet) is charged.
        let p = authorize(&db, &routing, "alice", "claude-3.5-sonnet-openrouter")
            .await
            .expect("platform grant");
        assert!(!p.byok);
        assert!(p.hold_mc.0 > 0);
        assert_eq!(p.upstream.api_key, "platform-key-openrouter");
        let charged = ledger::settle(
            &db,
            &settlement(&p.hold_id, Outcome::Success, 1_500, 500),
            T0 + 6,
        )
        .await
        .expect("settle");
        assert!(charged > 0);
        let after = org(&db, "org_b").await;
        assert_eq!(after.credits_used, before.credits_used + charged);
        assert_eq!(after.credits_held, 0);
        let (total, used, held) = ledger::recompute_org(&db, "org_b").await.unwrap();
        assert_eq!(
            (total, used, held),
            (after.credits_total, after.credits_used, after.credits_held)
        );

        // Without her key, gpt-4o is back to the plan's rules.
        byok::remove(
            &db,
            Owner::User("alice"),
            byok::Which::Provider("openai"),
            ACTOR,
            T0,
        )
        .await
        .unwrap();
        let e = authorize(&db, &routing, "alice", "gpt-4o")
            .await
            .unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Forbidden, "{}", e.0.message);
    })
    .await;
}

#[tokio::test]
async fn an_openrouter_key_reaches_every_cloud_model() {
    for_each_backend("byok_openrouter_routes", |db| async move {
        fixture(&db).await;
        let router = Router::new(catalogue());
        let routing = router.routing();
        put_user_key(&db, &router.keyring, "alice", "openrouter", OR_KEY).await;
        put_user_key(&db, &router.keyring, "alice", "openai", OAI_KEY).await;

        for (model, provider, upstream, key) in [
            // Her own provider key first, then OpenRouter.
            ("o1-preview", "openai", "o1-preview", OAI_KEY),
            (
                "claude-3.5-sonnet",
                "openrouter",
                "anthropic/claude-3.5-sonnet",
                OR_KEY,
            ),
            (
                "claude-3.5-sonnet-openrouter",
                "openrouter",
                "anthropic/claude-3.5-sonnet",
                OR_KEY,
            ),
            (
                "llama3-70b-groq",
                "openrouter",
                "meta-llama/llama-3-70b-instruct",
                OR_KEY,
            ),
            (
                "qwen-72b-fireworks",
                "openrouter",
                "qwen/qwen-2.5-72b-instruct",
                OR_KEY,
            ),
            // Outside the catalogue: any OpenRouter model id.
            (
                "meta-llama/llama-3.1-405b-instruct",
                "openrouter",
                "meta-llama/llama-3.1-405b-instruct",
                OR_KEY,
            ),
        ] {
            let g = authorize(&db, &routing, "alice", model)
                .await
                .unwrap_or_else(|e| panic!("{model}: {e}"));
            assert!(g.byok, "{model}");
            assert_eq!(g.hold_mc.0, 0, "{model}");
            assert_eq!(g.model, model);
            assert_eq!(g.provider, provider, "{model}");
            assert_eq!(g.upstream.model, upstream, "{model}");
            assert_eq!(g.upstream.api_key, key, "{model}");
            if provider == "openrouter" {
                assert_eq!(g.upstream.cluster, "provider_openrouter");
                assert_eq!(g.upstream.path, "/api/v1/chat/completions");
            }
            assert_eq!(
                ledger::settle(&db, &settlement(&g.hold_id, Outcome::Success, 100, 100), T0)
                    .await
                    .unwrap(),
                0
            );
        }
        // Her own Anthropic key, once added, beats OpenRouter for Anthropic's models.
        put_user_key(&db, &router.keyring, "alice", "anthropic", ANT_KEY).await;
        let g = authorize(&db, &routing, "alice", "claude-3.5-sonnet")
            .await
            .unwrap();
        assert_eq!(
            (
                g.provider.as_str(),
                g.upstream.model.as_str(),
                g.upstream.api_key.as_str()
            ),
            ("anthropic", "claude-3-5-sonnet-latest", ANT_KEY)
        );
        // Every provider the guide names: a Google key (stored through the same shape check
        // as the API's) serves Gemini, on its own endpoint.
        put_user_key(&db, &router.keyring, "alice", "google", GOOGLE_KEY).await;
        let g = authorize(&db, &routing, "alice", "gemini-1.5-pro")
            .await
            .unwrap();
        assert!(g.byok && g.hold_mc.0 == 0);
        assert_eq!(
            (
                g.provider.as_str(),
                g.upstream.model.as_str(),
                g.upstream.api_key.as_str(),
                g.upstream.path.as_str()
            ),
            (
                "google",
                "gemini-1.5-pro",
                GOOGLE_KEY,
                "/v1beta/openai/chat/completions"
            )
        );
        // Local models need no key and stay local (on the platform's terms, at no charge:
        // they are free); images do not go through OpenRouter.
        let g = authorize(&db, &routing, "alice", "llama3-8b-local")
            .await
            .unwrap();
        assert!(!g.byok);
        assert_eq!(g.provider, "local");
        assert_eq!(
            g.upstream.api_key, "platform-key-local",
            "the fixture's, not hers"
        );
        let u = accounts::get_user(&db, "alice").await.unwrap().unwrap();
        let img = opsgate_core::contract::AuthorizeRequest {
            endpoint: Endpoint::ImageGenerations,
            images: 1,
            max_tokens: None,
            ..chat("alice", "stable-diffusion-xl", 100, None)
        };
        let g = ledger::authorize(&db, &routing, &u, &img, T0)
            .await
            .unwrap();
        assert!(!g.byok && g.hold_mc.0 > 0, "{g:?}");
        let img = opsgate_core::contract::AuthorizeRequest {
            model: Some("dall-e-3".into()),
            ..img
        };
        let g = ledger::authorize(&db, &routing, &u, &img, T0)
            .await
            .unwrap();
        assert!(
            g.byok && g.hold_mc.0 == 0 && g.upstream.api_key == OAI_KEY,
            "{g:?}"
        );
        assert_eq!(g.upstream.path, "/v1/images/generations");

        // "auto" picks among everything her keys reach: precision finds o1-preview.
        let auto = opsgate_core::contract::AuthorizeRequest {
            model: None,
            power_level: opsgate_core::plan::PowerLevel::Precision,
            task_type: opsgate_core::plan::TaskType::Code,
            ..chat("alice", "x", 100, Some(10))
        };
        let g = ledger::authorize(&db, &routing, &u, &auto, T0)
            .await
            .unwrap();
        assert_eq!((g.model.as_str(), g.byok), ("o1-preview", true));
        let private = opsgate_core::contract::AuthorizeRequest {
            privacy_required: true,
            ..auto.clone()
        };
        let g = ledger::authorize(&db, &routing, &u, &private, T0)
            .await
            .unwrap();
        assert!(!g.byok && g.provider == "local", "{g:?}");
        let private = opsgate_core::contract::AuthorizeRequest {
            model: Some("openai/gpt-4o".into()),
            ..private
        };
        assert_eq!(
            ledger::authorize(&db, &routing, &u, &private, T0)
                .await
                .unwrap_err()
                .0
                .kind,
            ErrorKind::Forbidden
        );

        // Bob has no OpenRouter key: no passthrough, and the plan's tiers apply.
        let e = authorize(&db, &routing, "bob", "meta-llama/llama-3.1-405b-instruct")
            .await
            .unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::NotFound);
        let e = authorize(&db, &routing, "bob", "o1-preview")
            .await
            .unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Forbidden);
        assert!(e.0.message.contains("byok"), "{}", e.0.message);
        for bad in ["no-slash", "a/b c", "/x"] {
            assert_eq!(
                authorize(&db, &routing, "alice", bad)
                    .await
                    .unwrap_err()
                    .0
                    .kind,
                ErrorKind::NotFound,
                "{bad}"
            );
        }
        // Every BYOK call settled at 0; only the (unsettled) platform image call holds credits.
        let o = org(&db, "org_b").await;
        assert_eq!(o.credits_used, 0);
        assert!(o.credits_held > 0);
    })
    .await;
}

/// The guide: BYOK calls have no rate limits (the provider's own apply) and cost no credits,
/// on every plan; the byok plan calls cloud providers with the caller's keys only.
#[tokio::test]
async fn byok_calls_take_no_call_quota_and_the_byok_plan_needs_a_key() {
    for_each_backend("byok_quota", |db| async move {
        fixture(&db).await;
        seed(&db, "org_b", "carol", Plan::Byok, 0, None, T0).await;
        seed(&db, "org_c", "dave", Plan::Byok, 1_000_000, None, T0).await;
        let router = Router::new(professional_limits(Some(334), Some(1)));
        let routing = router.routing();
        put_user_key(&db, &router.keyring, "alice", "openrouter", OR_KEY).await;
        put_user_key(&db, &router.keyring, "carol", "openrouter", OR_KEY_2).await;
        let unlimited = |g: &opsgate_core::contract::Grant| {
            g.period
                .is_some_and(|w| w.limit == UNLIMITED_CALLS && w.remaining == UNLIMITED_CALLS)
                && g.daily.is_none()
        };

        // A professional user limited to 1 call a period: their BYOK calls do not count.
        for _ in 0..3 {
            let g = authorize(&db, &routing, "alice", "gpt-4o").await.unwrap();
            assert!(g.byok && unlimited(&g), "{:?}", g.period);
            ledger::settle(&db, &settlement(&g.hold_id, Outcome::Success, 10, 10), T0)
                .await
                .unwrap();
        }

        // The byok plan: no call quota, no credits needed.
        for _ in 0..5 {
            let g = authorize(&db, &routing, "carol", "o1-preview")
                .await
                .unwrap();
            assert!(g.byok && unlimited(&g) && g.hold_mc.0 == 0);
            ledger::settle(&db, &settlement(&g.hold_id, Outcome::Success, 10, 10), T0)
                .await
                .unwrap();
        }
        // Without a key, the byok plan is refused a cloud model — however many credits.
        let e = authorize(&db, &routing, "dave", "o1-preview")
            .await
            .unwrap_err();
        assert_eq!(e.0.status(), 403, "{}", e.0.message);
        assert!(
            e.0.message.contains("POST /api/v1/llm/byok/keys"),
            "{}",
            e.0.message
        );
        assert_eq!(org(&db, "org_c").await.credits_used, 0);
        assert_eq!(org(&db, "org_b").await.credits_used, 0);
    })
    .await;
}

#[tokio::test]
async fn models_say_what_own_keys_reach() {
    for_each_backend("byok_categorized", |db| async move {
        let (alice, _) = fixture(&db).await;
        let api = Api::new(&db);
        let r = api
            .get("/api/v1/llm/models/categorized", Some(&alice))
            .await;
        assert_eq!(r.json["byok"], json!([]), "{}", r.text);
        let platform_only = r.json["platform"].as_array().unwrap().len();

        api.add(&alice, "openai", OAI_KEY).await;
        let r = api
            .get("/api/v1/llm/models/categorized", Some(&alice))
            .await;
        let ids = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect()
        };
        let byok_ids = ids(&r.json["byok"]);
        assert_eq!(
            byok_ids,
            [
                "gpt-4o-mini",
                "gpt-4o",
                "o1-preview",
                "o3-mini",
                "dall-e-3",
                "text-embedding-3-small",
                "text-embedding-3-large"
            ],
            "{}",
            r.text
        );
        assert!(r.json["byok"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["via_provider"] == "openai"));
        let platform_ids = ids(&r.json["platform"]);
        assert!(!platform_ids.contains(&"gpt-4o-mini".to_string()));
        assert_eq!(
            platform_ids.len(),
            platform_only - 4,
            "gpt-4o-mini, dall-e-3 and the two embedding models moved"
        );
        assert_eq!(r.json["summary"]["byok_providers"], json!(["openai"]));
        assert_eq!(r.json["summary"]["byok_models"], 7);
        assert_eq!(r.json["summary"]["openrouter_any_model"], false);

        api.add(&alice, "openrouter", OR_KEY).await;
        let r = api
            .get("/api/v1/llm/models/categorized", Some(&alice))
            .await;
        let platform_ids = ids(&r.json["platform"]);
        assert_eq!(
            platform_ids,
            ["llama3-8b-local", "qwen-32b-local", "stable-diffusion-xl"],
            "{}",
            r.text
        );
        assert_eq!(r.json["summary"]["openrouter_any_model"], true);
        let claude = r.json["byok"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "claude-3.5-sonnet")
            .unwrap()
            .clone();
        assert_eq!(claude["via_provider"], "openrouter");

        let r = api.get("/api/v1/llm/models", Some(&alice)).await;
        let data = r.json["data"].as_array().unwrap();
        assert!(data
            .iter()
            .any(|m| m["id"] == "o1-preview" && m["byok"] == true));
        assert!(data
            .iter()
            .any(|m| m["id"] == "llama3-8b-local" && m["byok"] == false));
        api.assert_never_returned(&[OR_KEY, OAI_KEY]);
    })
    .await;
}

#[tokio::test]
async fn a_row_moved_onto_another_owner_never_decrypts() {
    for_each_backend("byok_copied_row", |db| async move {
        fixture(&db).await;
        let router = Router::new(catalogue());
        let routing = router.routing();
        put_user_key(&db, &router.keyring, "alice", "openrouter", OR_KEY).await;
        let holds = || scalar(&db, "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM holds", &[]);

        // (1) The whole row handed to bob.
        sqlx::query("UPDATE provider_secrets SET owner = 'bob' WHERE owner = 'alice'")
            .execute(&db.pool)
            .await
            .unwrap();
        let before = holds().await;
        let e = authorize(&db, &routing, "bob", "claude-3.5-sonnet").await.unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Forbidden, "{}", e.0.message);
        assert!(e.0.message.contains("openrouter") && !e.0.message.contains(OR_KEY), "{}", e.0.message);
        // Never silently replaced by the platform key either: a model bob's plan allows.
        let e = authorize(&db, &routing, "bob", "claude-3.5-sonnet-openrouter").await.unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Forbidden, "{}", e.0.message);
        let e = authorize(&db, &routing, "bob", "vendor/any-model").await.unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Forbidden, "{}", e.0.message);
        assert_eq!(holds().await, before, "nothing was authorized");
        let s = byok::stored_for(&db, Owner::User("bob"), "openrouter").await.unwrap().unwrap();
        assert_eq!(s.open(&router.keyring).unwrap_err(), OpenError::Integrity);
        // Local models do not need it, and still work.
        assert!(authorize(&db, &routing, "bob", "llama3-8b-local").await.is_ok());
        sqlx::query("UPDATE provider_secrets SET owner = 'alice' WHERE owner = 'bob'")
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(authorize(&db, &routing, "alice", "claude-3.5-sonnet").await.unwrap().upstream.api_key, OR_KEY);

        // (2) Her ciphertext and wrapped key pasted into bob's own row.
        put_user_key(&db, &router.keyring, "bob", "openrouter", OR_KEY_2).await;
        sqlx::query(
            "UPDATE provider_secrets SET ciphertext = (SELECT ciphertext FROM provider_secrets WHERE owner = 'alice'), \
             wrapped_key = (SELECT wrapped_key FROM provider_secrets WHERE owner = 'alice') WHERE owner = 'bob'",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        let e = authorize(&db, &routing, "bob", "gpt-4o").await.unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Forbidden);
        assert!(!e.0.message.contains(OR_KEY) && !e.0.message.contains(OR_KEY_2));

        // (3) A copy under a new id (the id is bound too).
        sqlx::query(
            "INSERT INTO provider_secrets (id, scope, owner, provider, hint, description, ciphertext, wrapped_key, master_key_id, created_at) \
             SELECT 'byok_copy', scope, 'carol', provider, hint, description, ciphertext, wrapped_key, master_key_id, created_at FROM provider_secrets WHERE owner = 'alice'",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        seed(&db, "org_b", "carol", Plan::Enterprise, 0, None, T0).await;
        assert_eq!(authorize(&db, &routing, "carol", "gpt-4o").await.unwrap_err().0.kind, ErrorKind::Forbidden);

        // (4) Relabelled as another provider: alice's row now claims to be openai.
        sqlx::query("UPDATE provider_secrets SET provider = 'openai' WHERE owner = 'alice'")
            .execute(&db.pool)
            .await
            .unwrap();
        let e = authorize(&db, &routing, "alice", "gpt-4o-mini").await.unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Forbidden);
        assert!(e.0.message.contains("openai"), "{}", e.0.message);

        // (5) Onto the platform: a user's row relabelled as the platform key is not used;
        // the environment's key serves instead.
        sqlx::query("UPDATE provider_secrets SET scope = 'platform', owner = 'platform', provider = 'openrouter' WHERE owner = 'alice'")
            .execute(&db.pool)
            .await
            .unwrap();
        let g = authorize(&db, &routing, "alice", "claude-3.5-sonnet-openrouter").await.unwrap();
        assert!(!g.byok);
        assert_eq!(g.upstream.api_key, "platform-key-openrouter");

        // (6) A master key this process does not hold: 503, not a panic.
        put_user_key(&db, &router.keyring, "alice", "openai", OAI_KEY).await;
        let stranger = router_with(Keyring::new(MasterKey::generate()));
        let e = authorize(&db, &stranger.routing(), "alice", "gpt-4o").await.unwrap_err();
        assert_eq!(e.0.kind, ErrorKind::Unavailable, "{}", e.0.message);
        assert!(!e.0.message.contains(OAI_KEY));
    })
    .await;
}

/// Opens every stored secret with `ring`; returns (opened, unknown master key, failed).
async fn open_all(db: &Db, ring: &Keyring) -> (Vec<String>, usize, usize) {
    let mut opened = Vec::new();
    let (mut unknown, mut failed) = (0, 0);
    for owner in ["u1", "u2", "u3"] {
        for s in byok::stored(db, Owner::User(owner)).await.unwrap() {
            match s.open(ring) {
                Ok(k) => opened.push(k.expose().to_string()),
                Err(OpenError::UnknownMasterKey(_)) => unknown += 1,
                Err(_) => failed += 1,
            }
        }
    }
    for s in byok::stored(db, Owner::Platform).await.unwrap() {
        match s.open(ring) {
            Ok(k) => opened.push(k.expose().to_string()),
            Err(OpenError::UnknownMasterKey(_)) => unknown += 1,
            Err(_) => failed += 1,
        }
    }
    opened.sort();
    (opened, unknown, failed)
}

#[tokio::test]
async fn master_key_rotation_can_be_interrupted_and_run_again() {
    for_each_backend("byok_rotation", |db| async move {
        let a = || MasterKey::parse(&"a1".repeat(32)).unwrap();
        let b = || MasterKey::parse(&"b2".repeat(32)).unwrap();
        let ring_a = Keyring::new(a());
        let c = catalogue();
        let mut secrets = Vec::new();
        for (i, owner) in ["u1", "u2", "u3"].iter().enumerate() {
            seed(&db, "org_r", owner, Plan::Byok, 0, None, T0).await;
            let k = format!("sk-or-v1-rotation-test-{i}-0123456789abcdef");
            byok::put(&db, &ring_a, &c, Owner::User(owner), "openrouter", &k, None, ACTOR, T0).await.unwrap();
            secrets.push(k);
        }
        for (p, k) in [("openai", "sk-platform-openai-0123456789"), ("groq", "gsk_platform_groq_0123456789")] {
            byok::put(&db, &ring_a, &c, Owner::Platform, p, k, None, ACTOR, T0).await.unwrap();
            secrets.push(k.to_string());
        }
        secrets.sort();

        // Interrupted after two rows.
        let r = byok::rotate_master_key(&db, &a(), &b(), Some(2), ACTOR, T0 + 1).await.unwrap();
        assert_eq!((r.rewrapped, r.already_rotated, r.remaining), (2, 0, 3), "{r:?}");
        let under = |id: String| {
            let db = db.clone();
            async move {
                scalar(&db, "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM provider_secrets WHERE master_key_id = $1", &[id.as_str()]).await
            }
        };
        assert_eq!(under(a().id().to_string()).await, 3);
        assert_eq!(under(b().id().to_string()).await, 2);
        // Mid-rotation every secret opens with the new key plus the old one as previous.
        let both = Keyring::new(b()).with_previous(a());
        assert_eq!(open_all(&db, &both).await, (secrets.clone(), 0, 0));
        assert_eq!(open_all(&db, &Keyring::new(a())).await.0.len(), 3);
        assert_eq!(open_all(&db, &Keyring::new(b())).await.0.len(), 2);

        // One row damaged meanwhile: the rerun leaves it, reports it, finishes the rest.
        let damaged: String = sqlx::query("SELECT id FROM provider_secrets WHERE master_key_id = $1 ORDER BY id LIMIT 1")
            .bind(a().id())
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .get("id");
        let wk: String = sqlx::query("SELECT wrapped_key FROM provider_secrets WHERE id = $1")
            .bind(&damaged)
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .get("wrapped_key");
        let flipped = format!("{}{}", &wk[..wk.len() - 1], if wk.ends_with('0') { '1' } else { '0' });
        sqlx::query("UPDATE provider_secrets SET wrapped_key = $1 WHERE id = $2")
            .bind(&flipped)
            .bind(&damaged)
            .execute(&db.pool)
            .await
            .unwrap();
        let r = byok::rotate_master_key(&db, &a(), &b(), None, ACTOR, T0 + 2).await.unwrap();
        assert_eq!((r.rewrapped, r.already_rotated, r.remaining), (2, 2, 0), "{r:?}");
        assert_eq!(r.failed, vec![damaged.clone()]);
        // Repaired (the original wrapped key put back), the next run finishes it.
        sqlx::query("UPDATE provider_secrets SET wrapped_key = $1 WHERE id = $2")
            .bind(&wk)
            .bind(&damaged)
            .execute(&db.pool)
            .await
            .unwrap();
        let r = byok::rotate_master_key(&db, &a(), &b(), None, ACTOR, T0 + 3).await.unwrap();
        assert_eq!((r.rewrapped, r.already_rotated, r.failed.len()), (1, 4, 0), "{r:?}");
        let r = byok::rotate_master_key(&db, &a(), &b(), None, ACTOR, T0 + 4).await.unwrap();
        assert_eq!((r.rewrapped, r.already_rotated), (0, 5), "a finished rotation is a no-op");

        // Every secret opens under the new key alone; none under the old one — not even
        // with the rows' master-key ids forged back to it.
        assert_eq!(open_all(&db, &Keyring::new(b())).await, (secrets.clone(), 0, 0));
        assert_eq!(open_all(&db, &Keyring::new(a())).await, (vec![], 5, 0));
        sqlx::query("UPDATE provider_secrets SET master_key_id = $1")
            .bind(a().id())
            .execute(&db.pool)
            .await
            .unwrap();
        assert_eq!(open_all(&db, &Keyring::new(a())).await, (vec![], 0, 5));
        sqlx::query("UPDATE provider_secrets SET master_key_id = $1")
            .bind(b().id())
            .execute(&db.pool)
            .await
            .unwrap();

        // Authorize with the new key serves the rotated secrets.
        let router = router_with(Keyring::new(b()));
        let g = authorize(&db, &router.routing(), "u2", "gpt-4o").await.unwrap();
        assert_eq!(g.upstream.api_key, "sk-or-v1-rotation-test-1-0123456789abcdef");

        // Keys of another master key are left alone; the same key twice is refused.
        let other = MasterKey::generate();
        let r = byok::rotate_master_key(&db, &other, &MasterKey::generate(), None, ACTOR, T0).await.unwrap();
        assert_eq!((r.rewrapped, r.other_master_key.len()), (0, 5));
        assert!(byok::rotate_master_key(&db, &b(), &b(), None, ACTOR, T0).await.is_err());
        assert_eq!(
            scalar(&db, "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM audit_log WHERE action = 'master_key.rotate'", &[]).await,
            5
        );
    })
    .await;
}

/// Authorizes gpt-4o-mini for the holder of `uc_key` over the internal API (the grant,
/// which carries the upstream key for the filter, is kept out of the leak check).
async fn platform_grant(api: &Api, uc_key: &str) -> Reply {
    let body = serde_json::to_string(&opsgate_core::contract::AuthorizeRequest {
        principal: Principal::ApiKey {
            digest: digest(uc_key),
        },
        ..chat("", "gpt-4o-mini", 100, Some(10))
    })
    .unwrap();
    let r = api
        .send(
            Method::POST,
            "/internal/v1/authorize",
            Some(INTERNAL_TOKEN),
            Some(body),
        )
        .await;
    api.seen.lock().unwrap().pop();
    r
}

#[tokio::test]
async fn platform_keys_are_stored_sealed_and_win_over_the_environment() {
    const PLATFORM_KEY: &str = "sk-platform-stored-openai-0123456789";
    for_each_backend("byok_platform_keys", |db| async move {
        let (alice, _) = fixture(&db).await;
        let api = Api::new(&db);
        let body = json!({"api_key": PLATFORM_KEY, "description": "prod"}).to_string();
        for (token, status) in [
            (None, 401),
            (Some(alice.as_str()), 403),
            (Some(INTERNAL_TOKEN), 403),
        ] {
            assert_error(
                &api.put("/admin/v1/provider-keys/openai", token, &body)
                    .await,
                status,
                PLATFORM_KEY,
            );
            assert_error(
                &api.get("/admin/v1/provider-keys", token).await,
                status,
                PLATFORM_KEY,
            );
            assert_error(
                &api.delete("/admin/v1/provider-keys/openai", token).await,
                status,
                PLATFORM_KEY,
            );
        }
        assert_error(
            &api.put("/admin/v1/provider-keys/nope", Some(ADMIN_TOKEN), &body)
                .await,
            400,
            PLATFORM_KEY,
        );
        assert_error(
            &api.put(
                "/admin/v1/provider-keys/openrouter",
                Some(ADMIN_TOKEN),
                &body,
            )
            .await,
            400,
            PLATFORM_KEY,
        );
        assert_error(
            &api.put(
                "/admin/v1/provider-keys/openai",
                Some(ADMIN_TOKEN),
                &json!({"api_key": PLATFORM_KEY, "x": 1}).to_string(),
            )
            .await,
            400,
            PLATFORM_KEY,
        );

        let r = api
            .put("/admin/v1/provider-keys/openai", Some(ADMIN_TOKEN), &body)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.json["source"], "stored");
        assert_eq!(r.json["masked_key"], mask(PLATFORM_KEY));
        assert_eq!(r.json["environment_key_shadowed"], true);
        let r = api.get("/admin/v1/provider-keys", Some(ADMIN_TOKEN)).await;
        let data = r.json["data"].as_array().unwrap();
        assert!(
            data.iter()
                .any(|k| k["provider"] == "openai" && k["source"] == "stored"),
            "{}",
            r.text
        );
        assert!(
            data.iter()
                .any(|k| k["provider"] == "groq" && k["source"] == "environment"),
            "{}",
            r.text
        );
        assert!(!data.iter().any(|k| k["provider"] == "local"));
        let r = api
            .get("/admin/v1/provider-keys/openai", Some(ADMIN_TOKEN))
            .await;
        assert_eq!(r.json["description"], "prod", "{}", r.text);

        // The stored key wins over the environment's.
        let r = platform_grant(&api, &alice).await;
        assert_eq!(r.json["decision"], "allow", "{}", r.text);
        assert_eq!(r.json["upstream"]["api_key"], PLATFORM_KEY);
        assert_eq!(r.json["byok"], false);

        // A stored platform key that fails its check is passed over for the environment's.
        sqlx::query(
            "UPDATE provider_secrets SET ciphertext = wrapped_key WHERE scope = 'platform'",
        )
        .execute(&db.pool)
        .await
        .unwrap();
        let r = platform_grant(&api, &alice).await;
        assert_eq!(
            r.json["upstream"]["api_key"], "platform-key-openai",
            "{}",
            r.text
        );

        let r = api
            .delete("/admin/v1/provider-keys/openai", Some(ADMIN_TOKEN))
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
        assert_error(
            &api.delete("/admin/v1/provider-keys/openai", Some(ADMIN_TOKEN))
                .await,
            404,
            PLATFORM_KEY,
        );
        let r = api
            .get("/admin/v1/provider-keys/openai", Some(ADMIN_TOKEN))
            .await;
        assert_eq!(r.json["source"], "environment", "{}", r.text);
        let r = platform_grant(&api, &alice).await;
        assert_eq!(r.json["upstream"]["api_key"], "platform-key-openai");

        let r = api.get("/admin/v1/audit", Some(ADMIN_TOKEN)).await;
        assert!(
            r.text.contains("provider_key.set") && r.text.contains("provider_key.remove"),
            "{}",
            r.text
        );
        api.assert_never_returned(&[PLATFORM_KEY]);
    })
    .await;
}

#[test]
fn serve_refuses_to_start_without_a_master_key() {
    let dir = TempDir::new("nomk");
    let url = format!("sqlite://{}/db.sqlite", dir.path().display());
    let (ok, _, err) = cli(
        &["serve", "--port", "0", "--database-url", &url],
        &[("OPSGATE_INTERNAL_TOKEN", INTERNAL_TOKEN)],
    );
    assert!(!ok);
    assert!(
        err.contains("no master key")
            && err.contains("OPSGATE_MASTER_KEY")
            && err.contains("--master-key-file"),
        "{err}"
    );
    for bad in ["tooshort", &"zz".repeat(32)] {
        let (ok, _, err) = cli(
            &["serve", "--port", "0", "--database-url", &url],
            &[
                ("OPSGATE_INTERNAL_TOKEN", INTERNAL_TOKEN),
                ("OPSGATE_MASTER_KEY", bad),
            ],
        );
        assert!(!ok && err.contains("OPSGATE_MASTER_KEY"), "{err}");
        assert!(!err.contains(bad), "{err}");
    }
}

#[test]
fn demo_mode_makes_a_master_key_and_says_so() {
    let dir = TempDir::new("demomk");
    let data = dir.path().join("data");
    let data_s = data.display().to_string();
    let first = serve(dir.path(), "first", &["--demo", "--data-dir", &data_s], &[]);
    let path = data.join("master.key");
    assert!(path.exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let key = std::fs::read_to_string(&path).unwrap();
    let id = MasterKey::parse(&key).unwrap().id().to_string();
    drop(first);
    let log = std::fs::read_to_string(dir.path().join("first.stderr")).unwrap();
    assert!(
        log.contains("WARN") && log.contains("master.key") && log.contains(&id),
        "{log}"
    );
    assert!(!log.contains(key.trim()), "the key itself is never printed");
    let second = serve(
        dir.path(),
        "second",
        &["--demo", "--data-dir", &data_s],
        &[],
    );
    drop(second);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        key,
        "the demo key is kept"
    );
    let log = std::fs::read_to_string(dir.path().join("second.stderr")).unwrap();
    assert!(log.contains(&id), "{log}");
}

/// Authorize reads its caller and the keys that may route the call in one query
/// (`byok::caller_with_keys`): every kind of principal finds its user, its own keys and the
/// platform's, sorted by provider; a user with no keys of their own still comes back; a
/// revoked or unknown credential and an expired session find nothing.
#[tokio::test]
async fn one_query_reads_the_caller_and_the_keys_that_route_the_call() {
    for_each_backend("byok_caller_with_keys", |db| async move {
        let (alice_key, bob_key) = fixture(&db).await;
        let ring = Router::new(catalogue()).keyring;
        let providers = |keys: &[byok::StoredSecret]| -> Vec<String> {
            keys.iter().map(|k| k.info.provider.clone()).collect()
        };
        let look = |p: Principal, now: i64| {
            let db = db.clone();
            async move { byok::caller_with_keys(&db, &p, now).await.expect("query") }
        };
        let service = |u: &str| Principal::Service { user_id: u.into() };

        // No stored key anywhere: the caller alone, with empty key lists.
        let (u, k) = look(service("bob"), T0).await.expect("bob");
        assert_eq!((u.id.as_str(), u.org_id.as_str()), ("bob", "org_b"));
        assert!(k.own.is_empty() && k.platform.is_empty());

        put_user_key(&db, &ring, "alice", "openrouter", OR_KEY).await;
        put_user_key(&db, &ring, "alice", "openai", OAI_KEY).await;
        for (provider, key) in [("anthropic", ANT_KEY), ("openai", OAI_KEY)] {
            put_key(&db, &ring, Owner::Platform, provider, key).await;
        }

        let session = opsgate_control_plane::sessions::open(&db, "alice", T0, 60)
            .await
            .expect("session");
        for p in [
            service("alice"),
            Principal::ApiKey {
                digest: digest(&alice_key),
            },
            Principal::Session {
                digest: digest(&session),
            },
        ] {
            let (u, k) = look(p, T0).await.expect("alice");
            assert_eq!((u.id.as_str(), u.plan), ("alice", Plan::Professional));
            assert_eq!(providers(&k.own), ["openai", "openrouter"]);
            assert_eq!(providers(&k.platform), ["anthropic", "openai"]);
            assert_eq!(k.own[0].open(&ring).expect("opens").expose(), OAI_KEY);
        }
        // Bob has none of his own, but the platform's keys route his calls.
        let (u, k) = look(
            Principal::ApiKey {
                digest: digest(&bob_key),
            },
            T0,
        )
        .await
        .expect("bob");
        assert_eq!(u.id, "bob");
        assert!(k.own.is_empty());
        assert_eq!(providers(&k.platform), ["anthropic", "openai"]);

        // Nothing for what no longer authenticates.
        assert!(look(
            Principal::Session {
                digest: digest(&session)
            },
            T0 + 61
        )
        .await
        .is_none());
        assert!(look(service("nobody"), T0).await.is_none());
        assert!(look(
            Principal::ApiKey {
                digest: digest("uc_unknown")
            },
            T0
        )
        .await
        .is_none());
        let id = keys::list_api_keys(&db, Some("alice")).await.expect("keys")[0]
            .id
            .clone();
        keys::revoke_api_key(&db, ACTOR, &id, T0)
            .await
            .expect("revoke");
        assert!(look(
            Principal::ApiKey {
                digest: digest(&alice_key)
            },
            T0
        )
        .await
        .is_none());
    })
    .await;
}
