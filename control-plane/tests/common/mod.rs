//! Shared helpers for the control plane's integration tests.
//!
//! * [`TestDb`]: a fresh database per test — a temp SQLite file, or a fresh PostgreSQL schema
//!   `t_<random>` (selected through `options=-c search_path=…` in the URL) when
//!   `OPSGATE_TEST_DATABASE_URL` is set. Dropped at the end (also on panic, best effort).
//! * [`for_each_backend`]: runs a test body against SQLite and, when configured, PostgreSQL.
//! * [`state`], [`seed`], [`chat`], [`settlement`]: the usual fixtures.
#![allow(dead_code)]

use opsgate_control_plane::accounts::{self, User};
use opsgate_control_plane::catalogue::{Catalogue, DEFAULT_CATALOGUE};
use opsgate_control_plane::clock::ManualClock;
use opsgate_control_plane::crypto::{Keyring, MasterKey};
use opsgate_control_plane::db::{Backend, Db};
use opsgate_control_plane::ledger::Routing;
use opsgate_control_plane::metrics::Metrics;
use opsgate_control_plane::{AppState, Settings};
use opsgate_core::contract::{AuthorizeRequest, Endpoint, Outcome, Principal, Settlement};
use opsgate_core::plan::{Plan, PowerLevel, TaskType};
use opsgate_core::pricing::Usage;
use rand::RngCore;
use sqlx::{Connection, Executor, Row};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

pub const PG_ENV: &str = "OPSGATE_TEST_DATABASE_URL";
pub const INTERNAL_TOKEN: &str = "test-internal-token-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const HOLD_TTL: i64 = 900;
/// 2025-06-15 12:00:00 UTC.
pub const T0: i64 = 1_749_988_800;
pub const ACTOR: &str = "test";
/// The master key of the tests' control planes (never a real one).
pub const MASTER_KEY_HEX: &str = "6f70736761746520746573742d6f6e6c79206d6173746572206b657920212121";

pub fn keyring() -> Keyring {
    Keyring::new(MasterKey::parse(MASTER_KEY_HEX).expect("test master key"))
}

/// PostgreSQL tests of one test binary run one at a time: each pool may open 16
/// connections and the server allows 100, and the machine has two cores.
static PG_GATE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

pub fn random_suffix() -> String {
    let mut b = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn pg_base_url() -> Option<String> {
    std::env::var(PG_ENV).ok().filter(|s| !s.trim().is_empty())
}

/// Prints the skip line and returns `None` when PostgreSQL tests are not configured.
pub fn pg_or_skip(test: &str) -> Option<String> {
    let url = pg_base_url();
    if url.is_none() {
        println!("skipping {test} on PostgreSQL: {PG_ENV} is not set");
    }
    url
}

enum Cleanup {
    File(PathBuf),
    Schema { admin_url: String, schema: String },
}

/// A database that exists for one test.
pub struct TestDb {
    pub db: Db,
    /// The URL that reaches exactly this database/schema (for child processes).
    pub url: String,
    cleanup: Option<Cleanup>,
    _gate: Option<tokio::sync::SemaphorePermit<'static>>,
}

fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

async fn drop_schema(admin_url: &str, schema: &str) -> Result<(), sqlx::Error> {
    let mut conn = sqlx::AnyConnection::connect(admin_url).await?;
    conn.execute("SET lock_timeout = '10s'").await?;
    conn.execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
        .await?;
    conn.close().await
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let path = std::env::temp_dir().join(format!("opsgate-test-{}.db", random_suffix()));
        let url = format!("sqlite://{}", path.display());
        let db = match Db::connect(&url).await {
            Ok(db) => db,
            Err(e) => {
                remove_sqlite(&path);
                panic!("open sqlite {url}: {e}");
            }
        };
        TestDb {
            db,
            url,
            cleanup: Some(Cleanup::File(path)),
            _gate: None,
        }
    }

    /// A fresh schema on the configured server; `None` (with a skip line) when unset.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let base = pg_or_skip(test)?;
        let gate = PG_GATE.acquire().await.expect("gate");
        sqlx::any::install_default_drivers();
        let schema = format!("t_{}", random_suffix());
        let mut conn = sqlx::AnyConnection::connect(&base)
            .await
            .expect("connect to OPSGATE_TEST_DATABASE_URL");
        conn.execute(format!("CREATE SCHEMA {schema}").as_str())
            .await
            .expect("create schema");
        conn.close().await.expect("close");
        let url = with_param(&base, &format!("options=-c%20search_path%3D{schema}"));
        let cleanup = Some(Cleanup::Schema {
            admin_url: base,
            schema: schema.clone(),
        });
        let db = match Db::connect(&url).await {
            Ok(db) => db,
            Err(e) => {
                let _ = drop_schema(&url, &schema).await;
                panic!("open postgres schema {schema}: {e}");
            }
        };
        // The schema really is where the tables went.
        let n: i64 = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'holds'",
        )
        .bind(&schema)
        .fetch_one(&db.pool)
        .await
        .expect("schema check")
        .get("n");
        assert_eq!(n, 1, "migrations must land in {schema}");
        Some(TestDb {
            db,
            url,
            cleanup,
            _gate: Some(gate),
        })
    }

    pub async fn open(backend: Backend, test: &str) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb::sqlite().await),
            Backend::Postgres => TestDb::postgres(test).await,
        }
    }

    /// Closes the pool and removes the database.
    pub async fn close(mut self) {
        self.db.pool.close().await;
        match self.cleanup.take() {
            Some(Cleanup::File(p)) => remove_sqlite(&p),
            Some(Cleanup::Schema { admin_url, schema }) => {
                drop_schema(&admin_url, &schema)
                    .await
                    .unwrap_or_else(|e| eprintln!("could not drop schema {schema}: {e}"));
            }
            None => {}
        }
    }
}

fn remove_sqlite(p: &std::path::Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(s));
    }
}

impl Drop for TestDb {
    /// The panic path: `close` was not reached. Remove what we can, without the test's
    /// runtime (it may be unwinding).
    fn drop(&mut self) {
        match self.cleanup.take() {
            Some(Cleanup::File(p)) => remove_sqlite(&p),
            Some(Cleanup::Schema { admin_url, schema }) => {
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    if let Ok(rt) = rt {
                        let _ = rt.block_on(drop_schema(&admin_url, &schema));
                    }
                })
                .join();
            }
            None => {}
        }
    }
}

/// The backends to test: SQLite always, PostgreSQL when configured.
pub fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Sqlite];
    if pg_base_url().is_some() {
        v.push(Backend::Postgres);
    }
    v
}

/// Runs `body` once per backend, each on a fresh database, and cleans up.
pub async fn for_each_backend<F, Fut>(test: &str, body: F)
where
    F: Fn(Db) -> Fut,
    Fut: Future<Output = ()>,
{
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(t) = TestDb::open(backend, test).await else {
            continue;
        };
        let started = std::time::Instant::now();
        body(t.db.clone()).await;
        println!("{test} on {backend:?}: {:?}", started.elapsed());
        t.close().await;
    }
}

pub fn catalogue() -> Catalogue {
    Catalogue::builtin()
}

/// The built-in catalogue with one textual replacement (which must apply).
pub fn catalogue_with(from: &str, to: &str) -> Catalogue {
    assert!(
        DEFAULT_CATALOGUE.contains(from),
        "the catalogue has no '{from}'"
    );
    let text = DEFAULT_CATALOGUE.replacen(from, to, 1);
    Catalogue::from_toml("test catalogue", &text).expect("edited catalogue loads")
}

/// Professional plan with the given limits (`None` = unlimited).
pub fn professional_limits(daily: Option<u64>, period: Option<u64>) -> Catalogue {
    let mut to = String::new();
    if let Some(d) = daily {
        to.push_str(&format!("daily_calls = {d}\n"));
    }
    if let Some(p) = period {
        to.push_str(&format!("period_calls = {p}\n"));
    }
    catalogue_with(
        "[plans.professional]\ndaily_calls = 334\nperiod_calls = 10000\n",
        &format!("[plans.professional]\n{to}"),
    )
}

/// A platform key for every provider of the catalogue.
pub fn platform_keys(c: &Catalogue) -> BTreeMap<String, String> {
    c.providers
        .keys()
        .map(|p| (p.clone(), format!("platform-key-{p}")))
        .collect()
}

/// Owns what a `Routing` borrows.
pub struct Router {
    pub catalogue: Catalogue,
    pub keys: BTreeMap<String, String>,
    pub keyring: Keyring,
}

impl Router {
    pub fn new(catalogue: Catalogue) -> Router {
        let keys = platform_keys(&catalogue);
        Router {
            catalogue,
            keys,
            keyring: keyring(),
        }
    }
    pub fn routing(&self) -> Routing<'_> {
        Routing {
            catalogue: &self.catalogue,
            platform_keys: &self.keys,
            keyring: &self.keyring,
            hold_ttl_secs: HOLD_TTL,
        }
    }
}

pub fn state(db: &Db, clock: &ManualClock, catalogue: Catalogue) -> AppState {
    let platform_keys = platform_keys(&catalogue);
    AppState {
        db: db.clone(),
        catalogue: Arc::new(catalogue),
        keyring: Arc::new(keyring()),
        clock: Arc::new(clock.clone()),
        settings: Arc::new(Settings {
            internal_token: INTERNAL_TOKEN.into(),
            admin_token: Some(ADMIN_TOKEN.into()),
            platform_keys,
            hold_ttl_secs: HOLD_TTL,
            session_ttl_secs: 3600,
            console_session_ttl_secs: 3600,
            cookie_secure: true,
            admin_role: "opsgate-admin".into(),
        }),
        metrics: Arc::new(Metrics::new(db)),
    }
}

/// Creates the org (if missing) with `credits_mc` granted, and a user on `plan`, with an
/// allocation when `allocation_mc` is set.
pub async fn seed(
    db: &Db,
    org: &str,
    user: &str,
    plan: Plan,
    credits_mc: i64,
    allocation_mc: Option<i64>,
    now: i64,
) -> User {
    if accounts::get_org(db, org).await.expect("get org").is_none() {
        // The top tier: a test's users may have any plan (the org's plan caps them).
        accounts::create_org(db, ACTOR, org, "Test Org", Plan::VipFounder, now)
            .await
            .expect("create org");
    }
    if credits_mc != 0 {
        accounts::grant(db, ACTOR, org, credits_mc, now)
            .await
            .expect("grant");
    }
    let u = accounts::create_user(
        db,
        ACTOR,
        &accounts::NewUser {
            id: user,
            org_id: org,
            plan,
            kind: "user",
            role: "member",
        },
        now,
    )
    .await
    .expect("create user");
    if let Some(a) = allocation_mc {
        accounts::set_allocation(db, ACTOR, user, a, now)
            .await
            .expect("allocate");
    }
    u
}

/// A chat completion request from a service principal for `model`.
pub fn chat(
    user: &str,
    model: &str,
    prompt_bytes: u64,
    max_tokens: Option<u64>,
) -> AuthorizeRequest {
    AuthorizeRequest {
        request_id: None,
        // A user's own credential (a service key would take no call quota).
        principal: Principal::Jwt {
            subject: user.to_string(),
            email: None,
            roles: Vec::new(),
        },
        endpoint: Endpoint::ChatCompletions,
        model: Some(model.to_string()),
        power_level: PowerLevel::Balanced,
        task_type: TaskType::Chat,
        privacy_required: false,
        stream: false,
        prompt_bytes,
        prompt_images: 0,
        max_tokens,
        images: 0,
    }
}

pub fn settlement(hold_id: &str, outcome: Outcome, prompt: u64, completion: u64) -> Settlement {
    Settlement {
        hold_id: hold_id.to_string(),
        outcome,
        usage: Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            images: 0,
        },
        upstream_status: if outcome == Outcome::Failed { 502 } else { 200 },
        latency_ms: 42,
    }
}

pub async fn org(db: &Db, id: &str) -> accounts::Organization {
    accounts::get_org(db, id)
        .await
        .expect("get org")
        .expect("org exists")
}

pub async fn allocation(db: &Db, org: &str, user: &str) -> accounts::Allocation {
    accounts::get_allocation(db, org, user)
        .await
        .expect("get allocation")
        .expect("allocation exists")
}

/// One i64 from a query returning a single row with column `n`.
pub async fn scalar(db: &Db, sql: &str, binds: &[&str]) -> i64 {
    let mut q = sqlx::query(sql);
    for b in binds {
        q = q.bind(b.to_string());
    }
    q.fetch_one(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .try_get::<i64, _>("n")
        .expect("column n")
}

/// (used, reserved) of a user's quota row of `kind` (`day`/`period`) starting at `start`.
pub async fn quota(db: &Db, user: &str, kind: &str, start: i64) -> (i64, i64) {
    let row = sqlx::query(
        "SELECT used, reserved FROM quota_usage WHERE user_id = $1 AND kind = $2 AND window_start = $3",
    )
    .bind(user)
    .bind(kind)
    .bind(start)
    .fetch_optional(&db.pool)
    .await
    .expect("quota row");
    row.map_or((0, 0), |r| (r.get("used"), r.get("reserved")))
}

/// Everything a settlement can change, to compare before and after.
pub async fn ledger_fingerprint(db: &Db) -> String {
    let mut out = String::new();
    for (sql, cols) in [
        (
            "SELECT id, credits_total, credits_used, credits_held FROM organizations ORDER BY id",
            &["id", "credits_total", "credits_used", "credits_held"][..],
        ),
        (
            "SELECT user_id, allocated, used, held FROM allocations ORDER BY user_id",
            &["user_id", "allocated", "used", "held"][..],
        ),
        (
            "SELECT id, status, CAST(COALESCE(charged, -1) AS BIGINT) AS charged, CAST(COALESCE(settled_at, -1) AS BIGINT) AS settled_at FROM holds ORDER BY id",
            &["id", "status", "charged", "settled_at"][..],
        ),
        (
            "SELECT user_id, kind, window_start, used, reserved FROM quota_usage ORDER BY user_id, kind, window_start",
            &["user_id", "kind", "window_start", "used", "reserved"][..],
        ),
        (
            "SELECT seq, kind, amount, COALESCE(hold_id, '') AS hold_id FROM ledger ORDER BY seq",
            &["seq", "kind", "amount", "hold_id"][..],
        ),
        (
            "SELECT hold_id, cost, outcome FROM usage_logs ORDER BY hold_id",
            &["hold_id", "cost", "outcome"][..],
        ),
    ] {
        let rows = sqlx::query(sql)
            .fetch_all(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        for r in rows {
            for c in cols {
                let v = r
                    .try_get::<String, _>(*c)
                    .or_else(|_| r.try_get::<i64, _>(*c).map(|n| n.to_string()))
                    .unwrap_or_else(|e| panic!("{c}: {e}"));
                out.push_str(&v);
                out.push('|');
            }
            out.push('\n');
        }
        out.push_str("--\n");
    }
    out
}

/// A small deterministic PRNG (xorshift64*), so randomised runs replay from their seed.
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A minimal HTTP/1.1 client: one request per connection, `Connection: close`. Returns the
/// status and the (de-chunked) body.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = bearer {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method == "POST" || method == "PUT" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut out = request.as_bytes();
    while !out.is_empty() {
        stream.writable().await.expect("writable");
        match stream.try_write(out) {
            Ok(n) => out = &out[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("write: {e}"),
        }
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        stream.readable().await.expect("readable");
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return (status, body.to_string());
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    (status, out)
}

/// A running `opsgate serve`; killed when dropped. Its stdout and stderr go to files.
pub struct Served {
    pub child: std::process::Child,
    pub addr: String,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the real binary with `args` after `serve --port 0` and the given environment
/// (nothing else of the test's environment that names opsgate or a provider key), logging
/// to `<dir>/<name>.stdout|stderr`, and waits for its address.
pub fn serve(dir: &std::path::Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Served {
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_opsgate"));
    cmd.args(["serve", "--port", "0"]).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("OPSGATE_") || k.ends_with("_API_KEY") {
            cmd.env_remove(k);
        }
    }
    // The demo's files (master key, demo user's key) go to the test's directory, never to
    // the source tree's default `data/`.
    cmd.env("OPSGATE_DATA_DIR", dir);
    let child = cmd
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("start the opsgate binary");
    let mut served = Served {
        child,
        addr: String::new(),
        stdout,
        stderr,
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = std::fs::read_to_string(&served.stdout).unwrap_or_default();
        if let Some(line) = out.lines().next().filter(|_| out.contains('\n')) {
            served.addr = line
                .strip_prefix("opsgate control plane listening on ")
                .unwrap_or_else(|| panic!("unexpected first line: {line}"))
                .trim()
                .to_string();
            return served;
        }
        if let Ok(Some(status)) = served.child.try_wait() {
            panic!(
                "opsgate serve exited with {status}: {}",
                std::fs::read_to_string(&served.stderr).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the control plane never announced its address"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs a CLI command of the real binary; returns (success, stdout, stderr). Its data
/// directory is a temporary one unless `env` names another.
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_opsgate"));
    for (k, _) in std::env::vars() {
        if k.starts_with("OPSGATE_") || k.ends_with("_API_KEY") {
            cmd.env_remove(k);
        }
    }
    let data = TempDir::new("cli-data");
    cmd.env("OPSGATE_DATA_DIR", data.path());
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the opsgate binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("opsgate-{tag}-{}", random_suffix()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a request through `app()` answered: status, headers, the body as text, and as JSON
/// (`Null` when it is not).
pub struct Reply {
    pub status: axum::http::StatusCode,
    pub headers: axum::http::HeaderMap,
    pub text: String,
    pub json: serde_json::Value,
}

/// Sends `req` through a fresh `app(state)` (`oneshot`) and reads the whole answer.
pub async fn oneshot(state: &AppState, req: axum::http::Request<axum::body::Body>) -> Reply {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let resp = opsgate_control_plane::app(state.clone())
        .oneshot(req)
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Reply {
        status,
        headers,
        text,
        json,
    }
}
