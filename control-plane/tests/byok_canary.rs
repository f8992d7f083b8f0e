//! The canary test: recognisable provider keys go through the real `opsgate` binary —
//! added, listed, replaced, refused in every malformed way, used by authorize and settle,
//! moved onto another owner, stored as platform keys by the admin API and the CLI, rotated
//! under a new master key by an interrupted `rotate-master-key` — and then every response
//! body, every line the processes logged and the raw database (SQLite file bytes, or every
//! PostgreSQL row as text) is searched: zero plaintext hits. The only place a key may appear
//! is the internal authorize grant, which hands it to the filter; that it does is checked too.

mod common;

use base64::Engine;
use common::*;
use opsgate_control_plane::crypto::MasterKey;
use opsgate_control_plane::db::Backend;
use opsgate_control_plane::keys;
use opsgate_core::contract::{AuthorizeRequest, Outcome, Principal, SettleBatch};
use opsgate_core::credentials::{digest, hex, mask};
use opsgate_core::plan::Plan;
use serde_json::{json, Value};
use sqlx::Row;

const CANARY_OR: &str =
    "sk-or-v1-CANARY7c1a9e3f5b2d4068a1c3e5f7092b4d6f8a0c2e4f6b8d0a2c4e6f8091a3b";
const CANARY_OAI: &str = "sk-CANARYoai-7f3e9a1c5b2d4f60a8c2e4f6b8d0a2c4";
const CANARY_PLATFORM: &str = "sk-or-v1-PLATFORMCANARY5e7a9c1b3d5f7092b4d6f8a0c2e4f6b8d0a2c4e6f80";
const CANARY_CLI: &str = "gsk_CLICANARY3b5d7f9a1c3e5f7092b4d6f8a0c2e4";
const CANARIES: [&str; 4] = [CANARY_OR, CANARY_OAI, CANARY_PLATFORM, CANARY_CLI];

/// What must never appear for one canary: the key, its hex and base64 forms, and a piece of
/// its middle (masks show only the head and the last two characters).
fn needles(canary: &str) -> Vec<String> {
    let mid = canary.len() / 2;
    vec![
        canary.to_string(),
        hex(canary.as_bytes()),
        base64::engine::general_purpose::STANDARD.encode(canary),
        canary[mid - 6..mid + 6].to_string(),
    ]
}

fn find_leaks(what: &str, haystack: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(haystack);
    let mut out = Vec::new();
    for c in CANARIES {
        for n in needles(c) {
            if text.contains(&n) {
                out.push(format!("{what}: contains {n:?} (canary {c})"));
            }
        }
    }
    out
}

#[derive(Default)]
struct Seen {
    /// Every response body, labelled.
    bodies: Vec<(String, String)>,
    /// Internal authorize grants: the one place a key goes (to the filter).
    grants: Vec<String>,
}

impl Seen {
    async fn call(
        &mut self,
        addr: &str,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let (status, text) = http(addr, method, path, bearer, body).await;
        self.bodies
            .push((format!("{method} {path} -> {status}"), text.clone()));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Authorizes over the internal API; returns the hold id of an allow.
    async fn authorize(
        &mut self,
        addr: &str,
        uc_key: &str,
        model: &str,
    ) -> (Option<String>, Value) {
        let body = serde_json::to_string(&AuthorizeRequest {
            principal: Principal::ApiKey {
                digest: digest(uc_key),
            },
            ..chat("", model, 300, Some(50))
        })
        .unwrap();
        let (status, text) = http(
            addr,
            "POST",
            "/internal/v1/authorize",
            Some(INTERNAL_TOKEN),
            Some(&body),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["decision"] == "allow" {
            self.grants.push(text);
            (Some(v["hold_id"].as_str().unwrap().to_string()), v)
        } else {
            self.bodies
                .push((format!("authorize {model} (deny)"), text));
            (None, v)
        }
    }

    async fn settle(&mut self, addr: &str, hold: &str) {
        let body = serde_json::to_string(&SettleBatch {
            with_balances: false,
            settlements: vec![settlement(hold, Outcome::Success, 120, 40)],
        })
        .unwrap();
        let (status, _) = self
            .call(
                addr,
                "POST",
                "/internal/v1/settle",
                Some(INTERNAL_TOKEN),
                Some(&body),
            )
            .await;
        assert_eq!(status, 200);
    }
}

fn add_body(provider: &str, key: &str) -> String {
    json!({"provider": provider, "api_key": key, "metadata": {"description": "canary"}}).to_string()
}

/// The database's content: the SQLite files' bytes, or every PostgreSQL row as text.
async fn database_bytes(t: &TestDb) -> (String, Vec<u8>) {
    match t.db.backend {
        Backend::Sqlite => {
            let path = t.url.strip_prefix("sqlite://").unwrap().to_string();
            let mut all = Vec::new();
            for suffix in ["", "-wal", "-shm", "-journal"] {
                if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
                    all.extend_from_slice(&b);
                }
            }
            (format!("sqlite files {path}*"), all)
        }
        Backend::Postgres => {
            let tables: Vec<String> = sqlx::query(
                "SELECT CAST(table_name AS TEXT) AS t FROM information_schema.tables WHERE table_schema = current_schema()",
            )
            .fetch_all(&t.db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("t"))
            .collect();
            assert!(
                tables.contains(&"provider_secrets".to_string()),
                "{tables:?}"
            );
            let mut all = String::new();
            for table in tables {
                for r in sqlx::query(&format!("SELECT CAST(x AS TEXT) AS s FROM {table} x"))
                    .fetch_all(&t.db.pool)
                    .await
                    .unwrap()
                {
                    all.push_str(&r.get::<String, _>("s"));
                    all.push('\n');
                }
            }
            ("postgresql rows".to_string(), all.into_bytes())
        }
    }
}

async fn canary_run(t: &TestDb) {
    let dir = TempDir::new("canary");
    let db = &t.db;
    seed(
        db,
        "org_c",
        "alice",
        Plan::Professional,
        1_000_000,
        None,
        T0,
    )
    .await;
    seed(db, "org_c", "bob", Plan::Professional, 0, None, T0).await;
    seed(db, "org_c", "mallory", Plan::Professional, 0, None, T0).await;
    let key_of = |u: &'static str| async move {
        keys::issue_api_key(db, ACTOR, u, None, T0).await.unwrap().0
    };
    let (alice, bob, mallory) = (
        key_of("alice").await,
        key_of("bob").await,
        key_of("mallory").await,
    );
    let key_a = dir.path().join("master-a.key");
    let key_b = dir.path().join("master-b.key");
    MasterKey::generate().write_new_file(&key_a).unwrap();
    MasterKey::generate().write_new_file(&key_b).unwrap();
    let (ka, kb) = (key_a.display().to_string(), key_b.display().to_string());
    let url = t.url.clone();
    let base_args = |key: &str| -> Vec<String> {
        [
            "--database-url",
            &url,
            "--admin-token",
            ADMIN_TOKEN,
            "--internal-token",
            INTERNAL_TOKEN,
            "--master-key-file",
            key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let env = [
        ("OPENAI_API_KEY", "env-platform-openai-key"),
        ("OPENROUTER_API_KEY", "env-platform-openrouter-key"),
    ];
    let mut seen = Seen::default();
    let mut cli_output = Vec::new();

    // --- first process, master key A ---------------------------------------------------
    let args = base_args(&ka);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cp = serve(dir.path(), "serve-1", &args, &env);
    let a = cp.addr.clone();
    let keys = "/api/v1/llm/byok/keys";
    for (provider, key) in [
        ("openrouter", CANARY_OR),
        ("openai", CANARY_OAI),
        ("openrouter", CANARY_OR),
    ] {
        let (s, v) = seen
            .call(
                &a,
                "POST",
                keys,
                Some(&alice),
                Some(&add_body(provider, key)),
            )
            .await;
        assert_eq!(s, 201, "{v}");
    }
    // Every way of getting it wrong, each carrying a canary.
    let bad_bodies = [
        add_body("anthropic", CANARY_OAI),
        add_body(CANARY_OR, CANARY_OR),
        add_body("nope", CANARY_OR),
        add_body("openrouter", &format!("{CANARY_OR} ")),
        add_body("openrouter", &CANARY_OR.replace("CANARY", "CAN\tARY")),
        add_body("openai", CANARY_OR),
        json!({"provider": "openrouter", "api_key": CANARY_OR, "metadata": CANARY_OR}).to_string(),
        json!({"provider": "openrouter", "api_key": CANARY_OR, "metadata": {"description": CANARY_OR}}).to_string(),
        json!({"provider": "openrouter", "api_key": CANARY_OR, CANARY_OAI: 1}).to_string(),
        json!({"provider": "openrouter", "api_key": CANARY_OR, "metadata": {"description": [CANARY_OAI]}}).to_string(),
        format!("{{\"provider\": \"openrouter\", \"api_key\": \"{CANARY_OR}"),
        format!("{{\"provider\": \"openrouter\", \"api_key\": \"{CANARY_OR}\\x\"}}"),
    ];
    for body in &bad_bodies {
        let (s, v) = seen.call(&a, "POST", keys, Some(&alice), Some(body)).await;
        assert_eq!(s, 400, "{v}");
    }
    for bearer in [None, Some(CANARY_OR), Some(CANARY_OAI)] {
        let (s, _) = seen
            .call(
                &a,
                "POST",
                keys,
                bearer,
                Some(&add_body("openai", CANARY_OAI)),
            )
            .await;
        assert_eq!(s, 401);
        let (s, _) = seen
            .call(&a, "GET", "/api/v1/llm/credits", bearer, None)
            .await;
        assert_eq!(s, 401);
    }
    for path in [
        keys,
        "/api/v1/llm/models",
        "/api/v1/llm/models/categorized",
        "/api/v1/llm/credits",
        "/api/v1/llm/usage",
    ] {
        let (s, _) = seen.call(&a, "GET", path, Some(&alice), None).await;
        assert_eq!(s, 200, "{path}");
    }
    let (_, list) = seen.call(&a, "GET", keys, Some(&alice), None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    assert!(list.to_string().contains(&mask(CANARY_OR)), "{list}");

    // Platform keys through the admin API.
    let pk = "/admin/v1/provider-keys";
    let (s, v) = seen
        .call(
            &a,
            "PUT",
            &format!("{pk}/openrouter"),
            Some(ADMIN_TOKEN),
            Some(&json!({"api_key": CANARY_PLATFORM}).to_string()),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = seen
        .call(
            &a,
            "PUT",
            &format!("{pk}/openai"),
            Some(ADMIN_TOKEN),
            Some(&json!({"api_key": CANARY_PLATFORM}).to_string()),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = seen
        .call(
            &a,
            "PUT",
            &format!("{pk}/openrouter"),
            Some(&alice),
            Some(&json!({"api_key": CANARY_PLATFORM}).to_string()),
        )
        .await;
    assert_eq!(s, 403);
    for path in [
        pk.to_string(),
        format!("{pk}/openrouter"),
        "/admin/v1/audit".into(),
    ] {
        let (s, _) = seen.call(&a, "GET", &path, Some(ADMIN_TOKEN), None).await;
        assert_eq!(s, 200, "{path}");
    }

    // Authorize and settle: her keys, the stored platform key.
    let mut holds = Vec::new();
    for (user, model, key) in [
        (&alice, "gpt-4o", CANARY_OAI),
        (&alice, "claude-3.5-sonnet", CANARY_OR),
        (&alice, "meta-llama/llama-3.1-8b-instruct", CANARY_OR),
        (&bob, "claude-3.5-sonnet-openrouter", CANARY_PLATFORM),
    ] {
        let (hold, v) = seen.authorize(&a, user, model).await;
        assert_eq!(v["upstream"]["api_key"], key, "{model}: {v}");
        holds.push(hold.unwrap());
    }
    for h in &holds {
        seen.settle(&a, h).await;
    }
    let (_, usage) = seen
        .call(&a, "GET", "/api/v1/llm/usage", Some(&alice), None)
        .await;
    assert_eq!(usage["total_cost"], 0.0, "{usage}");

    // Her openai row moved onto mallory: refused, logged, never used.
    sqlx::query("UPDATE provider_secrets SET owner = 'mallory' WHERE owner = 'alice' AND provider = 'openai'")
        .execute(&db.pool)
        .await
        .unwrap();
    let (hold, v) = seen.authorize(&a, &mallory, "gpt-4o-mini").await;
    assert!(hold.is_none(), "{v}");
    assert_eq!(v["kind"], "forbidden", "{v}");
    let (s, _) = seen
        .call(
            &a,
            "DELETE",
            &format!("{keys}?provider=openai"),
            Some(&mallory),
            None,
        )
        .await;
    assert_eq!(s, 200);
    // A key pasted where a provider name or an id belongs is not repeated either.
    for (path, status) in [
        (format!("{keys}?provider={CANARY_OR}"), 404),
        (format!("{keys}?id={CANARY_OR}"), 404),
        (format!("{keys}/{CANARY_OAI}"), 404),
        (format!("{pk}/{CANARY_PLATFORM}"), 404),
    ] {
        let bearer = if path.starts_with(pk) {
            ADMIN_TOKEN
        } else {
            alice.as_str()
        };
        let (s, v) = seen.call(&a, "DELETE", &path, Some(bearer), None).await;
        assert_eq!(s, status, "{path}: {v}");
    }
    let (s, _) = seen
        .call(
            &a,
            "GET",
            &format!("{pk}/{CANARY_PLATFORM}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = seen.call(&a, "GET", "/metrics", None, None).await;
    assert_eq!(s, 200);
    drop(cp);

    // --- the CLI: a platform key from a file, then an interrupted rotation ---------------
    let key_file = dir.path().join("groq.key");
    std::fs::write(&key_file, format!("{CANARY_CLI}\n")).unwrap();
    let kf = key_file.display().to_string();
    let db_args = ["--database-url", url.as_str()];
    for (args, expect_ok) in [
        (
            vec![
                "provider-key",
                "set",
                "groq",
                "--key-file",
                &kf,
                "--master-key-file",
                &ka,
            ],
            true,
        ),
        (
            vec![
                "provider-key",
                "set",
                "anthropic",
                "--key-file",
                &kf,
                "--master-key-file",
                &ka,
            ],
            false,
        ),
        (
            vec!["provider-key", "set", "groq", "--key-file", &kf],
            false,
        ),
        (vec!["provider-key", "list"], true),
        (
            vec![
                "rotate-master-key",
                "--old-key-file",
                &ka,
                "--new-key-file",
                &kb,
                "--limit",
                "1",
            ],
            true,
        ),
        (
            vec![
                "rotate-master-key",
                "--old-key-file",
                &ka,
                "--new-key-file",
                &kb,
            ],
            true,
        ),
        (
            vec![
                "rotate-master-key",
                "--old-key-file",
                &ka,
                "--new-key-file",
                &kb,
            ],
            true,
        ),
    ] {
        let mut full = args.clone();
        full.extend_from_slice(&db_args);
        let (ok, out, err) = cli(&full, &[]);
        assert_eq!(ok, expect_ok, "{full:?}: {out}{err}");
        cli_output.push((format!("{full:?}"), format!("{out}\n{err}")));
        if cli_output.len() == 5 {
            // Mid-rotation (one key rewrapped, two not), a process holding the new key and
            // the previous one serves them all.
            let mut args = base_args(&kb);
            args.extend(["--previous-master-key-file".to_string(), ka.clone()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let cp = serve(dir.path(), "serve-mid", &args, &env);
            for (user, model, key) in [
                (&alice, "claude-3.5-sonnet", CANARY_OR),
                (&bob, "claude-3.5-sonnet-openrouter", CANARY_PLATFORM),
                (&bob, "llama3-70b-groq", CANARY_CLI),
            ] {
                let (hold, v) = seen.authorize(&cp.addr, user, model).await;
                assert_eq!(v["upstream"]["api_key"], key, "{model}: {v}");
                seen.settle(&cp.addr, &hold.unwrap()).await;
            }
        }
    }
    std::fs::remove_file(&key_file).unwrap();
    let rotated = &cli_output[4].1;
    assert!(
        rotated.contains("\"rewrapped\": 1") && rotated.contains("run again"),
        "{rotated}"
    );
    assert!(
        cli_output[5].1.contains("\"already_rotated\": 1"),
        "{}",
        cli_output[5].1
    );
    assert!(
        cli_output[6].1.contains("\"rewrapped\": 0"),
        "{}",
        cli_output[6].1
    );
    assert!(
        cli_output[3].1.contains(&mask(CANARY_CLI)),
        "{}",
        cli_output[3].1
    );

    // --- second process, master key B: the rotated keys still serve ----------------------
    let args = base_args(&kb);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cp = serve(dir.path(), "serve-2", &args, &env);
    let b = cp.addr.clone();
    let mut holds = Vec::new();
    for (user, model, key) in [
        (&alice, "claude-3.5-sonnet", CANARY_OR),
        (&bob, "claude-3.5-sonnet-openrouter", CANARY_PLATFORM),
        (&bob, "llama3-70b-groq", CANARY_CLI),
    ] {
        let (hold, v) = seen.authorize(&b, user, model).await;
        assert_eq!(v["upstream"]["api_key"], key, "{model}: {v}");
        holds.push(hold.unwrap());
    }
    for h in &holds {
        seen.settle(&b, h).await;
    }
    let (s, _) = seen
        .call(
            &b,
            "DELETE",
            &format!("{pk}/openrouter"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (_, v) = seen
        .authorize(&b, &bob, "claude-3.5-sonnet-openrouter")
        .await;
    assert_eq!(
        v["upstream"]["api_key"], "env-platform-openrouter-key",
        "{v}"
    );
    drop(cp);

    // --- a third process still on the old key: warned at start, refuses BYOK calls -------
    let args = base_args(&ka);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cp = serve(dir.path(), "serve-3", &args, &env);
    let (hold, v) = seen.authorize(&cp.addr, &alice, "claude-3.5-sonnet").await;
    assert!(hold.is_none());
    assert_eq!(v["kind"], "unavailable", "{v}");
    drop(cp);
    let warned = std::fs::read_to_string(dir.path().join("serve-3.stderr")).unwrap();
    assert!(
        warned.contains("WARN") && warned.contains("rotate-master-key"),
        "{warned}"
    );

    // --- the search ---------------------------------------------------------------------
    // Positive controls: the grants carried the keys, the logs have the refusals, the
    // database has the masked hints — so the searches below look at the right bytes.
    for c in [CANARY_OR, CANARY_OAI, CANARY_PLATFORM, CANARY_CLI] {
        assert!(
            seen.grants.iter().any(|g| g.contains(c)),
            "no grant carried {c}"
        );
    }
    let mut logs = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".stdout") || name.ends_with(".stderr") {
            logs.push((name, std::fs::read(&p).unwrap()));
        }
    }
    assert_eq!(logs.len(), 8);
    let all_logs: String = logs
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert!(
        all_logs.contains("cannot be used") && all_logs.contains("integrity"),
        "{all_logs}"
    );
    let (db_what, db_bytes) = database_bytes(t).await;
    assert!(
        String::from_utf8_lossy(&db_bytes).contains(&mask(CANARY_OR)),
        "the database search must see the stored rows ({db_what})"
    );

    // The search finds what it looks for (negative control).
    assert_eq!(
        find_leaks(
            "self-test",
            format!("x{}y", hex(CANARY_CLI.as_bytes())).as_bytes()
        )
        .len(),
        1
    );
    let mut leaks = Vec::new();
    for (what, body) in &seen.bodies {
        leaks.extend(find_leaks(&format!("response {what}"), body.as_bytes()));
    }
    for (name, bytes) in &logs {
        leaks.extend(find_leaks(&format!("log {name}"), bytes));
    }
    for (what, out) in &cli_output {
        leaks.extend(find_leaks(&format!("cli {what}"), out.as_bytes()));
    }
    leaks.extend(find_leaks(&db_what, &db_bytes));
    assert!(
        leaks.is_empty(),
        "plaintext canary hits:\n{}",
        leaks.join("\n")
    );
    println!(
        "canary search: {} response bodies, {} log files ({} bytes), {} CLI runs, {} ({} bytes): 0 hits",
        seen.bodies.len(),
        logs.len(),
        all_logs.len(),
        cli_output.len(),
        db_what,
        db_bytes.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_keys_never_leak() {
    for backend in backends() {
        let Some(t) = TestDb::open(backend, "byok_canary").await else {
            continue;
        };
        canary_run(&t).await;
        t.close().await;
    }
}
