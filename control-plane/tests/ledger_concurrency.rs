//! No overspend, whatever the concurrency: hundreds of simultaneous authorizations against
//! a balance (or a quota) that affords exactly 50 calls grant exactly 50, on SQLite, on
//! PostgreSQL, and across two control-plane processes sharing one PostgreSQL database.

mod common;

use common::*;
use opsgate_control_plane::accounts::User;
use opsgate_control_plane::db::Db;
use opsgate_control_plane::ledger;
use opsgate_core::contract::{AuthorizeResponse, Grant, Outcome, SettleBatch, SettleResponse};
use opsgate_core::plan::{Plan, PowerLevel};
use opsgate_core::pricing::{RateCard, Usage};
use opsgate_core::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CALLS: usize = 500;
const FITS: usize = 50;
const PROMPT: u64 = 1_000;
const MAX_TOKENS: u64 = 1_000;

/// The hold one call of `model` by a `plan` user with `PROMPT`/`MAX_TOKENS` places.
fn hold_of(router: &Router, model: &str, plan: Plan) -> i64 {
    let m = router.catalogue.model(model).expect("model");
    let rate = RateCard {
        price: m.price,
        power_level: PowerLevel::Balanced,
        markup_percent: router.catalogue.plan(plan).markup_percent,
    };
    let hold = rate.cost(&Usage {
        prompt_tokens: PROMPT,
        completion_tokens: MAX_TOKENS,
        images: 0,
    });
    assert!(hold > 0);
    hold
}

/// Fires `CALLS` authorizations at once; returns the grants and the refusals' kinds.
async fn storm(
    db: &Db,
    router: Arc<Router>,
    user: &User,
    model: &str,
) -> (Vec<Grant>, Vec<(ErrorKind, Option<u64>, String)>) {
    let mut tasks = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let (db, router, user) = (db.clone(), router.clone(), user.clone());
        let req = chat(&user.id, model, PROMPT, Some(MAX_TOKENS));
        tasks.push(tokio::spawn(async move {
            ledger::authorize(&db, &router.routing(), &user, &req, T0).await
        }));
    }
    let (mut grants, mut refusals) = (Vec::new(), Vec::new());
    for t in tasks {
        match t.await.expect("task") {
            Ok(g) => grants.push(g),
            Err(e) => refusals.push((e.0.kind, e.0.retry_after, e.0.message)),
        }
    }
    (grants, refusals)
}

/// Watches the organisation's balance while a storm runs: it must never go negative.
fn watch_balance(db: &Db, org_id: &str) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (db, org_id, flag) = (db.clone(), org_id.to_string(), stop.clone());
    let h = tokio::spawn(async move {
        let mut samples = 0;
        while !flag.load(Ordering::SeqCst) {
            let o = org(&db, &org_id).await;
            assert!(
                o.available() >= 0 && o.credits_held >= 0 && o.credits_used >= 0,
                "negative balance observed: {o:?}"
            );
            samples += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples
    });
    (stop, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credits_for_exactly_fifty_holds_grant_exactly_fifty() {
    for_each_backend("credits_for_exactly_fifty_holds", |db| async move {
        let router = Arc::new(Router::new(catalogue()));
        let hold = hold_of(&router, "gpt-4o", Plan::Enterprise);
        let user = seed(
            &db,
            "org_c",
            "svc_c",
            Plan::Enterprise,
            FITS as i64 * hold,
            None,
            T0,
        )
        .await;
        let (stop, watcher) = watch_balance(&db, "org_c");
        let (grants, refusals) = storm(&db, router, &user, "gpt-4o").await;
        stop.store(true, Ordering::SeqCst);
        assert!(watcher.await.expect("watcher") > 0);

        assert_eq!(
            grants.len(),
            FITS,
            "{:?}",
            &refusals[..3.min(refusals.len())]
        );
        assert_eq!(refusals.len(), CALLS - FITS);
        for (kind, _, message) in &refusals {
            assert_eq!(*kind, ErrorKind::InsufficientCredits, "{message}");
            assert_eq!(kind.status(), 402);
            assert!(message.contains("Insufficient"), "{message}");
        }
        for g in &grants {
            assert_eq!(g.hold_mc.0, hold);
            assert_eq!(g.max_tokens, Some(MAX_TOKENS));
            assert!(g.balance_mc.0 >= 0);
        }
        let mut ids: Vec<&str> = grants.iter().map(|g| g.hold_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), FITS, "hold ids are unique");

        let o = org(&db, "org_c").await;
        assert_eq!(o.credits_held, FITS as i64 * hold);
        assert_eq!(o.credits_used, 0);
        assert_eq!(o.available(), 0);
        assert_eq!(
            scalar(
                &db,
                "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM holds WHERE status = 'held'",
                &[]
            )
            .await,
            FITS as i64
        );
        assert_eq!(
            ledger::recompute_org(&db, "org_c")
                .await
                .expect("recompute"),
            (o.credits_total, o.credits_used, o.credits_held)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_allocation_for_fifty_holds_grants_fifty_from_a_larger_pool() {
    for_each_backend("allocation_for_fifty_holds", |db| async move {
        let router = Arc::new(Router::new(catalogue()));
        let hold = hold_of(&router, "gpt-4o", Plan::Enterprise);
        let user = seed(
            &db,
            "org_a",
            "alloc_a",
            Plan::Enterprise,
            10 * FITS as i64 * hold,
            Some(FITS as i64 * hold),
            T0,
        )
        .await;
        let (grants, refusals) = storm(&db, router, &user, "gpt-4o").await;
        assert_eq!(grants.len(), FITS);
        assert!(refusals
            .iter()
            .all(|(k, _, m)| *k == ErrorKind::InsufficientCredits && m.contains("allocated")));
        let a = allocation(&db, "org_a", "alloc_a").await;
        assert_eq!((a.held, a.used, a.available()), (FITS as i64 * hold, 0, 0));
        let o = org(&db, "org_a").await;
        assert_eq!(o.credits_held, FITS as i64 * hold);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_of_fifty_calls_grants_exactly_fifty() {
    for_each_backend("quota_of_fifty_calls", |db| async move {
        let router = Arc::new(Router::new(professional_limits(Some(334), Some(50))));
        assert_eq!(
            router.catalogue.plan(Plan::Professional).period_calls,
            Some(50)
        );
        let user = seed(
            &db,
            "org_q",
            "pro_q",
            Plan::Professional,
            1_000_000_000,
            None,
            T0,
        )
        .await;
        let (grants, refusals) = storm(&db, router.clone(), &user, "gpt-4o-mini").await;
        assert_eq!(
            grants.len(),
            FITS,
            "{:?}",
            &refusals[..3.min(refusals.len())]
        );
        assert_eq!(refusals.len(), CALLS - FITS);
        let month = opsgate_core::time::monthly_window(T0);
        for (kind, retry, message) in &refusals {
            assert_eq!(*kind, ErrorKind::QuotaExceeded, "{message}");
            assert_eq!(kind.status(), 429);
            assert!(message.contains("Monthly limit: 50 calls"), "{message}");
            assert_eq!(*retry, Some((month.end - T0) as u64));
        }
        // Every grant reports the window with the slots left after it; together they
        // count down 49..0 exactly once each.
        let mut remaining: Vec<u64> = grants
            .iter()
            .map(|g| g.period.expect("period window").remaining)
            .collect();
        remaining.sort_unstable();
        assert_eq!(remaining, (0..FITS as u64).collect::<Vec<_>>());
        assert_eq!(
            quota(&db, "pro_q", "period", month.start).await,
            (0, FITS as i64)
        );
        let day = opsgate_core::time::daily_window(T0);
        assert_eq!(
            quota(&db, "pro_q", "day", day.start).await,
            (0, FITS as i64)
        );
        let hold = hold_of(&router, "gpt-4o-mini", Plan::Professional);
        assert_eq!(org(&db, "org_q").await.credits_held, FITS as i64 * hold);
    })
    .await;
}

/// Authorizations and settlements of one user, interleaved: nothing errors (no deadlock
/// between the two, whatever order they lock rows in) and the books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_authorize_and_settle_neither_fail_nor_leak() {
    for_each_backend("concurrent_authorize_and_settle", |db| async move {
        let router = Arc::new(Router::new(catalogue()));
        let user = seed(
            &db,
            "org_m",
            "pro_m",
            Plan::Professional,
            1_000_000_000,
            Some(500_000_000),
            T0,
        )
        .await;
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let (db, router, user) = (db.clone(), router.clone(), user.clone());
            tasks.push(tokio::spawn(async move {
                let req = chat(&user.id, "gpt-4o-mini", 400, Some(200));
                let g = ledger::authorize(&db, &router.routing(), &user, &req, T0)
                    .await
                    .map_err(|e| format!("authorize {i}: {e}"))?;
                tokio::task::yield_now().await;
                let outcome = if i % 3 == 0 {
                    Outcome::Failed
                } else {
                    Outcome::Success
                };
                ledger::settle(&db, &settlement(&g.hold_id, outcome, 100, 50), T0 + 1)
                    .await
                    .map_err(|e| format!("settle {i}: {e}"))
            }));
        }
        let mut errors = Vec::new();
        for t in tasks {
            if let Err(e) = t.await.expect("task") {
                errors.push(e);
            }
        }
        assert!(
            errors.is_empty(),
            "{} errors, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(3)]
        );
        let o = org(&db, "org_m").await;
        assert_eq!(o.credits_held, 0);
        assert_eq!(
            ledger::recompute_org(&db, "org_m")
                .await
                .expect("recompute"),
            (o.credits_total, o.credits_used, 0)
        );
        let day = opsgate_core::time::daily_window(T0);
        // 200 calls, 67 failed (i % 3 == 0) and released.
        assert_eq!(quota(&db, "pro_m", "day", day.start).await, (133, 0));
    })
    .await;
}

/// The filter retries a settlement whose answer it did not get: the same settlement can
/// arrive twice at once (and race the expiry sweeper). One effect, one answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_settlements_of_one_hold_agree() {
    for_each_backend("simultaneous_settlements", |db| async move {
        let router = Router::new(catalogue());
        let user = seed(&db, "org_s", "pro_s", Plan::Professional, 1_000_000_000, None, T0).await;
        for round in 0..20 {
            let g = ledger::authorize(&db, &router.routing(), &user, &chat("pro_s", "gpt-4o-mini", 400, Some(200)), T0)
                .await
                .expect("authorize");
            let mut tasks = Vec::new();
            for _ in 0..6 {
                let (db, s) = (db.clone(), settlement(&g.hold_id, Outcome::Success, 300, 100));
                tasks.push(tokio::spawn(async move { ledger::settle(&db, &s, T0 + 1).await }));
            }
            let sweeper = {
                let db = db.clone();
                // Late enough that the hold has expired: races the settlements.
                tokio::spawn(async move { ledger::expire_holds(&db, T0 + HOLD_TTL + 5).await })
            };
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await.expect("task").unwrap_or_else(|e| panic!("round {round}: settle failed: {e}")));
            }
            sweeper.await.expect("sweeper").expect("expire_holds");
            let charged = scalar(&db, "SELECT charged AS n FROM holds WHERE id = $1", &[&g.hold_id]).await;
            assert!(
                answers.iter().all(|a| *a == charged),
                "round {round}: answers {answers:?}, recorded charge {charged}"
            );
            let logs = scalar(&db, "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM usage_logs WHERE hold_id = $1", &[&g.hold_id]).await;
            assert!(logs <= 1);
            let closed: i64 = scalar(&db, "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM holds WHERE id = $1 AND status IN ('settled', 'expired')", &[&g.hold_id]).await;
            // Whoever closed it — a settlement or the sweeper — one usage log records what
            // was charged.
            assert_eq!((logs, closed), (1, 1), "round {round}");
            if logs == 1 {
                assert_eq!(
                    scalar(&db, "SELECT cost AS n FROM usage_logs WHERE hold_id = $1", &[&g.hold_id]).await,
                    charged
                );
            }
        }
        let o = org(&db, "org_s").await;
        assert_eq!(
            ledger::recompute_org(&db, "org_s").await.expect("recompute"),
            (o.credits_total, o.credits_used, o.credits_held)
        );
        assert_eq!(o.credits_held, 0);
    })
    .await;
}

// ---- two control-plane processes over one PostgreSQL ------------------------------------

/// A child process killed when dropped (also when the test panics).
struct Replica {
    child: std::process::Child,
    addr: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_replica(database_url: &str) -> Replica {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_opsgate"))
        .args([
            "serve",
            "--database-url",
            database_url,
            "--port",
            "0",
            "--internal-token",
            INTERNAL_TOKEN,
        ])
        .env("OPENAI_API_KEY", "platform-key-openai")
        .env("OPSGATE_MASTER_KEY", MASTER_KEY_HEX)
        .env_remove("OPSGATE_ADMIN_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start the opsgate binary");
    let stdout = child.stdout.take().expect("stdout");
    // Guard first, so the child dies whatever happens next.
    let mut replica = Replica {
        child,
        addr: String::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the control plane announces its address");
    let addr = line
        .strip_prefix("opsgate control plane listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .trim()
        .to_string();
    replica.addr = addr;
    replica
}

/// One POST through the shared minimal HTTP client.
async fn http_post(addr: &str, path: &str, token: &str, body: &str) -> (u16, String) {
    http(addr, "POST", path, Some(token), Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_over_one_postgres_grant_exactly_fifty() {
    let Some(t) = TestDb::postgres("two_processes_over_one_postgres").await else {
        return;
    };
    let router = Router::new(catalogue());
    let hold = hold_of(&router, "gpt-4o", Plan::Enterprise);
    let now = opsgate_control_plane::clock::Clock::now(&opsgate_control_plane::clock::SystemClock);
    seed(
        &t.db,
        "org_p",
        "svc_p",
        Plan::Enterprise,
        FITS as i64 * hold,
        None,
        now,
    )
    .await;

    let replicas = [start_replica(&t.url), start_replica(&t.url)];
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    let body =
        serde_json::to_string(&chat("svc_p", "gpt-4o", PROMPT, Some(MAX_TOKENS))).expect("json");
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CALLS {
        let (addr, body) = (addrs[i % 2].clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let (status, text) =
                http_post(&addr, "/internal/v1/authorize", INTERNAL_TOKEN, &body).await;
            assert_eq!(status, 200, "{text}");
            (
                i % 2,
                serde_json::from_str::<AuthorizeResponse>(&text)
                    .unwrap_or_else(|e| panic!("{e}: {text}")),
            )
        }));
    }
    let mut grants = Vec::new();
    let mut per_replica = [0usize; 2];
    for t in tasks {
        match t.await.expect("request task") {
            (r, AuthorizeResponse::Allow(g)) => {
                per_replica[r] += 1;
                grants.push(*g);
            }
            (_, AuthorizeResponse::Deny(d)) => {
                assert_eq!(d.kind, ErrorKind::InsufficientCredits, "{}", d.message)
            }
        }
    }
    println!(
        "two replicas: {} grants ({per_replica:?}) in {:?}",
        grants.len(),
        started.elapsed()
    );
    assert_eq!(grants.len(), FITS);
    assert!(grants.iter().all(|g| g.hold_mc.0 == hold));
    let o = org(&t.db, "org_p").await;
    assert_eq!(
        (o.credits_held, o.credits_used, o.available()),
        (FITS as i64 * hold, 0, 0)
    );

    // Settle every hold through the other replica than the one that did not place it —
    // any replica can settle any hold.
    let batch = SettleBatch {
        with_balances: false,
        settlements: grants
            .iter()
            .map(|g| settlement(&g.hold_id, Outcome::Success, 10, 10))
            .collect(),
    };
    let (status, text) = http_post(
        &addrs[1],
        "/internal/v1/settle",
        INTERNAL_TOKEN,
        &serde_json::to_string(&batch).expect("json"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let resp: SettleResponse = serde_json::from_str(&text).expect("settle response");
    assert_eq!(resp.results.len(), FITS);
    let per_call = RateCard {
        price: router.catalogue.model("gpt-4o").expect("model").price,
        power_level: PowerLevel::Balanced,
        markup_percent: 0,
    }
    .cost(&Usage {
        prompt_tokens: 10,
        completion_tokens: 10,
        images: 0,
    });
    assert!(resp.results.iter().all(|r| r.charged_mc == per_call));
    let o = org(&t.db, "org_p").await;
    assert_eq!(
        (o.credits_held, o.credits_used),
        (0, FITS as i64 * per_call)
    );
    drop(replicas);
    t.close().await;
}

/// N replicas are started together on a fresh database: both must come up (the
/// migrations must not race each other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_migrate_an_empty_postgres_schema_together() {
    // A TestDb for the connection and cleanup; the replicas get a second, empty schema
    // that nobody has migrated.
    let Some(t) = TestDb::postgres("two_processes_migrate_together").await else {
        return;
    };
    let empty = format!("t_{}", random_suffix());
    sqlx::query(&format!("CREATE SCHEMA {empty}"))
        .execute(&t.db.pool)
        .await
        .expect("create schema");
    let url = t.url.split("options=").next().expect("url").to_string()
        + &format!("options=-c%20search_path%3D{empty}");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| start_replica(&url));
        let b = s.spawn(|| start_replica(&url));
        (a.join(), b.join())
    });
    let both_up = a.is_ok() && b.is_ok();
    drop((a, b));
    sqlx::query(&format!("DROP SCHEMA {empty} CASCADE"))
        .execute(&t.db.pool)
        .await
        .ok();
    assert!(both_up, "both replicas start on an empty schema");
    t.close().await;
}

/// A replica frozen mid-transaction (here: a session that locked the organisation's row and
/// went quiet) costs the others at most a 503 with `Retry-After` — never a 500, never a wait
/// longer than the lock timeout — and the server ends the stalled session, so calls succeed
/// again without anyone intervening.
#[tokio::test]
async fn a_session_stalled_holding_the_row_costs_others_a_503_at_most() {
    use sqlx::{Connection, Executor};
    let Some(t) = TestDb::postgres("stalled_session").await else {
        return;
    };
    let db = t.db.clone();
    let router = Router::new(catalogue());
    let user = seed(
        &db,
        "org_f",
        "pro_f",
        Plan::Professional,
        1_000_000_000,
        None,
        T0,
    )
    .await;
    let routing = router.routing();
    let mut stalled = sqlx::AnyConnection::connect(&t.url).await.expect("connect");
    // The replica's own sessions end after 1 s idle in a transaction; this stand-in's after
    // 4 s, so the 3 s lock timeout is what the other caller meets first.
    for step in [
        "SET idle_in_transaction_session_timeout = 4000",
        "BEGIN",
        "UPDATE organizations SET credits_held = credits_held WHERE id = 'org_f'",
    ] {
        stalled.execute(step).await.expect("lock the row");
    }

    let call = chat("pro_f", "gpt-4o-mini", PROMPT, Some(MAX_TOKENS));
    let started = std::time::Instant::now();
    let e = ledger::authorize(&db, &routing, &user, &call, T0)
        .await
        .expect_err("the row is locked");
    let waited = started.elapsed();
    assert_eq!(e.0.status(), 503, "{e}");
    assert_eq!(e.0.retry_after, Some(1));
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");

    // The server ends the stalled session; the next call goes through.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    ledger::authorize(&db, &routing, &user, &call, T0)
        .await
        .expect("served once the stalled session is gone");
    let lock_timeout: String = sqlx::query("SHOW lock_timeout")
        .fetch_one(&db.pool)
        .await
        .and_then(|r| sqlx::Row::try_get(&r, 0))
        .expect("show");
    assert_eq!(
        lock_timeout, "3s",
        "the pool's sessions carry the lock timeout"
    );
}

/// Group commit waits for the authorizes on their way: a batch about to start waits for an
/// authorize announced when its request came in (`ledger::Arriving`), so a settlement and
/// that authorize ride in one transaction; unannounced, the settlement's batch starts alone
/// and the authorize takes a second one.
#[tokio::test]
async fn a_batch_waits_for_the_authorizes_announced() {
    for_each_backend("group_commit_gathers", |db| async move {
        let router = Router::new(catalogue());
        let routing = router.routing();
        let user = seed(
            &db,
            "org_g",
            "pro_g",
            Plan::Professional,
            1_000_000,
            None,
            T0,
        )
        .await;
        let req = chat("pro_g", "gpt-4o-mini", 500, Some(300));
        for announced in [true, false] {
            let held = ledger::authorize(&db, &routing, &user, &req, T0)
                .await
                .expect("a hold to settle");
            let keys = opsgate_control_plane::byok::for_call(&db, &user.id)
                .await
                .expect("keys");
            let (batches, jobs) = db.ledger_batches();
            let arriving = announced.then(|| ledger::Arriving::new(&db));
            let done = settlement(&held.hold_id, Outcome::Success, 100, 50);
            let settle = ledger::settle(&db, &done, T0 + 1);
            // The settlement queues first and starts the writer; the authorize queues on
            // this task's next turn, after the writer has looked at the queue.
            let authorize = async {
                tokio::task::yield_now().await;
                ledger::authorize_with(&db, &routing, &user, keys, &req, T0 + 1, arriving).await
            };
            let (settled, granted) = tokio::join!(settle, authorize);
            settled.expect("settle");
            granted.expect("authorize");
            let (batches_after, jobs_after) = db.ledger_batches();
            assert_eq!(jobs_after - jobs, 2);
            assert_eq!(
                batches_after - batches,
                if announced { 1 } else { 2 },
                "announced: {announced}"
            );
        }
    })
    .await;
}

/// SQLite: the ledger writer decides a batch on its mirror of the rows it last committed
/// (one trip, no reads), and a commit by any other connection (here an admin top-up) makes
/// the next batch run again on rows read. Without the guard on the database's version, the
/// mirror's stale balance would refuse a call the top-up pays for.
#[tokio::test]
async fn a_batch_on_the_writers_mirror_sees_what_other_connections_committed() {
    for_each_backend("ledger_mirror", |db| async move {
        let router = Router::new(catalogue());
        let routing = router.routing();
        let req = chat("pro_m", "gpt-4o-mini", PROMPT, Some(MAX_TOKENS));
        let hold = hold_of(&router, "gpt-4o-mini", Plan::Professional);
        // Credits for one hold and a half.
        let user = seed(
            &db,
            "org_m",
            "pro_m",
            Plan::Professional,
            hold * 3 / 2,
            None,
            T0,
        )
        .await;
        let first = ledger::authorize(&db, &routing, &user, &req, T0)
            .await
            .expect("the first hold fits");
        let (mirrored, _) = db.ledger_mirror();
        // The second does not fit beside the first: refused on the mirror's rows.
        let refused = ledger::authorize(&db, &routing, &user, &req, T0)
            .await
            .expect_err("no room for a second hold");
        assert_eq!(refused.0.kind, ErrorKind::InsufficientCredits);
        let settled = ledger::settle(
            &db,
            &settlement(&first.hold_id, Outcome::Success, PROMPT, MAX_TOKENS),
            T0 + 1,
        )
        .await
        .expect("settle");
        assert_eq!(settled, hold);
        // Half a hold left: refused again. Then another connection tops the pool up.
        let refused = ledger::authorize(&db, &routing, &user, &req, T0 + 1)
            .await
            .expect_err("half a hold left");
        assert_eq!(refused.0.kind, ErrorKind::InsufficientCredits);
        let (mirrored_after, stale) = db.ledger_mirror();
        opsgate_control_plane::accounts::grant(&db, "admin", "org_m", hold, T0 + 2)
            .await
            .expect("top up");
        let granted = ledger::authorize(&db, &routing, &user, &req, T0 + 2)
            .await
            .expect("the top-up pays for it");
        assert_eq!(granted.balance_mc.0, hold * 3 / 2 - hold);
        let o = org(&db, "org_m").await;
        assert_eq!((o.credits_used, o.credits_held), (hold, hold));
        if db.backend == opsgate_control_plane::db::Backend::Sqlite {
            assert_eq!(
                mirrored_after - mirrored,
                3,
                "the refusals and the settlement were decided on the mirror"
            );
            assert_eq!(db.ledger_mirror().1 - stale, 1, "the top-up was noticed");
        } else {
            assert_eq!(db.ledger_mirror(), (0, 0), "no mirror on PostgreSQL");
        }
    })
    .await;
}

/// SQLite: a caller read before a revocation places nothing, even when its authorize is
/// decided on the writer's mirror: another batch has already noticed the revocation and
/// started a new epoch (and mirror), so only the caller's epoch tag can stop it.
#[tokio::test]
async fn a_caller_read_before_a_revocation_places_nothing_on_the_mirror() {
    let t = TestDb::sqlite().await;
    let db = t.db.clone();
    let router = Router::new(catalogue());
    let routing = router.routing();
    let user = seed(
        &db,
        "org_r",
        "pro_r",
        Plan::Professional,
        1_000_000,
        None,
        T0,
    )
    .await;
    let (key, _) = opsgate_control_plane::keys::issue_api_key(&db, "t", "pro_r", None, T0)
        .await
        .expect("key");
    let principal = opsgate_core::contract::Principal::ApiKey {
        digest: opsgate_core::credentials::digest(&key),
    };
    let req = chat("pro_r", "gpt-4o-mini", PROMPT, Some(MAX_TOKENS));
    // A first batch gives the writer its mirror.
    let first = ledger::authorize(&db, &routing, &user, &req, T0)
        .await
        .expect("first");
    let caller = opsgate_control_plane::callers::lookup(&db, &principal, T0)
        .await
        .expect("lookup")
        .expect("a live key");
    let epoch = caller.epoch.expect("SQLite tags every caller read");
    let key_id = opsgate_control_plane::keys::list_api_keys(&db, Some("pro_r"))
        .await
        .expect("keys")[0]
        .id
        .clone();
    opsgate_control_plane::keys::revoke_api_key(&db, "t", &key_id, T0)
        .await
        .expect("revoke");
    // An unrelated batch finds the database moved and starts a new epoch and mirror.
    ledger::settle(
        &db,
        &settlement(&first.hold_id, Outcome::Success, 10, 10),
        T0,
    )
    .await
    .expect("settle");
    assert_eq!(db.ledger_mirror().1, 1, "the revocation was noticed");
    let (mirrored, _) = db.ledger_mirror();
    let placed = ledger::authorize_in(
        &db,
        &routing,
        &caller.user,
        caller.keys,
        &req,
        T0,
        None,
        Some(epoch),
    )
    .await
    .expect("no error");
    assert!(
        placed.is_none(),
        "a hold placed on a caller read before its revocation"
    );
    assert_eq!(db.ledger_mirror().0, mirrored + 1, "decided on the mirror");
    assert_eq!(ledger::open_holds(&db).await.expect("holds"), 0);
    t.close().await;
}
