//! The database: SQLite (default, one file, WAL) or PostgreSQL (many replicas), through
//! sqlx's `Any` driver so one set of queries serves both. Migrations run at start.

use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, Executor, Row};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// SQLite has one writer: transactions queue here, in arrival order, instead of polling
    /// SQLite's busy handler (whose millisecond back-off made the latency tail).
    writer: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Authorizes, settlements and expiries waiting for the ledger's group commit.
    pub(crate) ledger_queue: Arc<crate::ledger::Queue>,
    /// SQLite: callers kept between calls (`callers.rs`).
    pub(crate) callers: Arc<crate::callers::Callers>,
    readers: Arc<Readers>,
}

/// How many connections the hot path's reads keep out of the pool.
const READERS: usize = 2;

/// Connections for the filter's hot path (who a credential belongs to, which keys route a
/// call), kept out of the pool. sqlx pings a connection every time one goes back to its
/// pool — on SQLite a second trip to the connection's worker thread per query, on
/// PostgreSQL a second round trip — and no pool option turns that off, so these few are
/// managed here: opened on first use, dropped after any error.
struct Readers {
    slots: Vec<Arc<tokio::sync::Mutex<Option<AnyConnection>>>>,
    next: AtomicUsize,
}

impl Default for Readers {
    fn default() -> Self {
        Readers {
            slots: (0..READERS).map(|_| Arc::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }
}

/// One of the hot path's connections, held until dropped.
pub struct Reader {
    slot: tokio::sync::OwnedMutexGuard<Option<AnyConnection>>,
    pool: AnyPool,
}

type Query<'q> = sqlx::query::Query<'q, Any, AnyArguments<'q>>;

impl Reader {
    /// Every row `q` returns. After an error the connection is dropped (its state is
    /// unknown); the next use opens another.
    pub async fn fetch_all(&mut self, q: Query<'_>) -> Result<Vec<AnyRow>, sqlx::Error> {
        if self.slot.is_none() {
            *self.slot = Some(self.pool.acquire().await?.detach());
        }
        let Some(conn) = self.slot.as_mut() else {
            return Err(sqlx::Error::PoolClosed);
        };
        let rows = q.fetch_all(conn).await;
        if rows.is_err() {
            *self.slot = None;
        }
        rows
    }

    /// The first row `q` returns, if any.
    pub async fn fetch_optional(&mut self, q: Query<'_>) -> Result<Option<AnyRow>, sqlx::Error> {
        Ok(self.fetch_all(q).await?.into_iter().next())
    }
}

/// A write transaction. It dereferences to the connection (`&mut *tx` executes queries, as
/// with sqlx's own transaction) and holds the SQLite writer's turn until it ends.
pub struct Tx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// PostgreSQL session timeouts (milliseconds), from `OPSGATE_PG_LOCK_TIMEOUT_MS` (default
/// 3000), `OPSGATE_PG_STATEMENT_TIMEOUT_MS` (10000) and
/// `OPSGATE_PG_IDLE_IN_TRANSACTION_TIMEOUT_MS` (1000).
///
/// The lock wait must outlast the idle-in-transaction limit: a replica frozen mid-transaction
/// has its session ended by the server after the latter, and whoever waited on its rows then
/// goes on — a healthy replica's caller is delayed, never refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgTimeouts {
    pub lock_ms: u64,
    pub statement_ms: u64,
    pub idle_in_transaction_ms: u64,
}

impl PgTimeouts {
    pub fn from_env() -> Result<PgTimeouts, String> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// The timeouts from variables looked up by `var`; errors name the variable.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<PgTimeouts, String> {
        const LOCK: &str = "OPSGATE_PG_LOCK_TIMEOUT_MS";
        const IDLE: &str = "OPSGATE_PG_IDLE_IN_TRANSACTION_TIMEOUT_MS";
        let read = |name: &str, default: u64| match var(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(ms) if (1..=600_000).contains(&ms) => Ok(ms),
                _ => Err(format!(
                    "{name} must be milliseconds from 1 to 600000 (got '{v}')"
                )),
            },
        };
        let t = PgTimeouts {
            lock_ms: read(LOCK, 3_000)?,
            statement_ms: read("OPSGATE_PG_STATEMENT_TIMEOUT_MS", 10_000)?,
            idle_in_transaction_ms: read(IDLE, 1_000)?,
        };
        if t.lock_ms <= t.idle_in_transaction_ms {
            return Err(format!(
                "{LOCK} ({}) must be longer than {IDLE} ({}): a frozen replica's locks are released only when the server ends its idle transaction",
                t.lock_ms, t.idle_in_transaction_ms
            ));
        }
        Ok(t)
    }
}

/// SQLite: how often the WAL is copied into the database file (see [`Db::connect`]).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// SQLite: the most the WAL file keeps on disk once a checkpoint has reset it (SQLite's
/// `journal_size_limit`; the WAL still grows as far as one checkpoint interval's commits).
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Runs `sql` on a pool connection every `every` until the pool is closed — when `turn` is
/// given, once more in the writer's turn; a failure is logged (`what`) and tried again on the
/// next tick.
/// The database's housekeeping that must stay off the request path: [`Db::connect`]'s
/// checkpoints, [`Db::keep_statistics`].
async fn every_tick(
    pool: AnyPool,
    turn: Option<Arc<tokio::sync::Mutex<()>>>,
    every: Duration,
    sql: String,
    what: &'static str,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        // With a turn: first outside it (the bulk of the work, while commits go on), then
        // in it, where only what was committed meanwhile is left to do. The connection is
        // taken before the turn: commits never wait on the pool.
        let first = match turn {
            Some(_) => run_logged(&pool, &sql, what).await,
            None => true,
        };
        let mut conn = match pool.acquire().await {
            Ok(c) => c,
            Err(_) if pool.is_closed() => return,
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; tried again on the next tick");
                continue;
            }
        };
        let _turn = match &turn {
            Some(t) => Some(t.lock().await),
            None => None,
        };
        if !(first && run_logged(&mut *conn, &sql, what).await) {
            return;
        }
    }
}

/// Runs `sql`, logging a failure (`what`); `false` once the pool is closed.
async fn run_logged<'c, E>(on: E, sql: &str, what: &str) -> bool
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    match sqlx::query(sql).execute(on).await {
        Ok(_) => true,
        Err(sqlx::Error::PoolClosed) => false,
        Err(e) => {
            tracing::warn!(error = %e, "{what} failed; tried again on the next tick");
            true
        }
    }
}

/// PostgreSQL without autovacuum: how often [`Db::keep_statistics`] analyzes the ledger's
/// tables.
pub const ANALYZE_EVERY: Duration = Duration::from_secs(15);

/// The tables every metered call reads or writes: the ledger's, and the callers' it looks up.
const LEDGER_TABLES: &str =
    "holds, quota_usage, usage_logs, ledger, organizations, allocations, users, api_keys, sessions";

/// Schema versions, per backend. Append; never edit a shipped one.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/001_init.sql")),
    (2, include_str!("../migrations/002_provider_secrets.sql")),
    (3, include_str!("../migrations/003_sessions.sql")),
    (
        4,
        include_str!("../migrations/004_service_key_strength.sql"),
    ),
    (5, include_str!("../migrations/005_console_sessions.sql")),
    (6, include_str!("../migrations/006_sessions_expiry.sql")),
];

impl Db {
    /// Connects and migrates. `url` is `sqlite://path` (created if missing) or
    /// `postgres://…`.
    pub async fn connect(url: &str) -> Result<Db, String> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(format!(
                "database URL must start with sqlite: or postgres: (got '{}')",
                url.split(':').next().unwrap_or_default()
            ));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let mut opts = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(10))
            // No liveness ping on every checkout: on SQLite it is one more trip to the
            // connection's worker thread per query, on PostgreSQL one more round trip. A
            // connection that died fails its query, which is a 503 the caller retries.
            .test_before_acquire(false);
        if backend == Backend::Postgres {
            // No session may hold a row while it waits on anything: a frozen or killed
            // replica's transaction is ended by the server, and a statement waiting on a
            // lock gives up (a 503 the filter retries) instead of piling up the pool.
            let t = PgTimeouts::from_env()?;
            opts = opts.after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute(
                        format!(
                            "SET lock_timeout = {}; SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}",
                            t.lock_ms, t.statement_ms, t.idle_in_transaction_ms
                        )
                        .as_str(),
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode=WAL").await?;
                    conn.execute("PRAGMA busy_timeout=10000").await?;
                    conn.execute("PRAGMA foreign_keys=ON").await?;
                    conn.execute("PRAGMA synchronous=NORMAL").await?;
                    // Checkpoints run off the commit path (see `Db::connect`).
                    conn.execute("PRAGMA wal_autocheckpoint=0").await?;
                    conn.execute(format!("PRAGMA journal_size_limit={WAL_SIZE_LIMIT}").as_str())
                        .await?;
                    conn.execute(crate::ledger::SQLITE_GUARD).await?;
                    Ok(())
                })
            });
        }
        let pool = opts
            .connect(&url)
            .await
            .map_err(|e| format!("cannot open the database: {e}"))?;
        let writer = (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        let db = Db {
            pool,
            backend,
            writer,
            ledger_queue: Arc::default(),
            callers: Arc::default(),
            readers: Arc::default(),
        };
        db.migrate().await?;
        if backend == Backend::Sqlite {
            // SQLite's own checkpoints run inside whichever commit takes the WAL past 1,000
            // pages: that commit, and every call waiting on the ledger writer behind it,
            // stalls while the pages are copied. Here they run off the commit path instead,
            // once a second; every connection turns the automatic ones off. Measured with
            // scripts/bench (README, Benchmarks). The checkpoint takes the writer's turn: a
            // checkpoint racing commits never catches up with the last frame, so the WAL would
            // never start over and would grow by every commit for as long as load lasts (a
            // gigabyte in 15 s of wrk c8). Between commits it copies every frame, and the
            // next commit writes the WAL from its start again. It first runs outside the turn,
            // so the turn waits only for what was committed meanwhile. `PASSIVE`: it never
            // waits for a reader; one still reading an older snapshot defers the restart a tick.
            tokio::spawn(every_tick(
                db.pool.clone(),
                db.writer.clone(),
                CHECKPOINT_EVERY,
                "PRAGMA wal_checkpoint(PASSIVE)".into(),
                "SQLite WAL checkpoint",
            ));
        }
        Ok(db)
    }

    /// `BEGIN IMMEDIATE` on SQLite (take the write lock up front, so a transaction that
    /// reads before it writes cannot fail on upgrade), plain `BEGIN` on PostgreSQL, where
    /// the conditional `UPDATE`s lock their rows.
    ///
    /// Never begin a second transaction while holding one: on SQLite it would wait for itself.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let turn = self.writer_turn().await;
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Tx { tx, _turn: turn })
    }

    /// PostgreSQL with its autovacuum off: analyzes the ledger's tables every `every`, from a
    /// task of its own, and says so in the log. Why: each connection prepares the hot
    /// statements once, and after a few runs PostgreSQL may keep one generic plan for them.
    /// A plan made while `holds` was nearly empty scans it whole, so every call gets slower
    /// as the table grows (README, Benchmarks) until an `ANALYZE` makes every session plan
    /// again. Autovacuum's own analyses do this where it is on. `false` when there is nothing to do (SQLite, or autovacuum on).
    pub async fn keep_statistics(&self, every: Duration) -> bool {
        if self.backend != Backend::Postgres {
            return false;
        }
        let setting: Option<String> = sqlx::query("SHOW autovacuum")
            .fetch_one(&self.pool)
            .await
            .ok()
            .and_then(|r| r.try_get(0).ok());
        if setting.as_deref() != Some("off") {
            return false;
        }
        tracing::warn!(
            every_secs = every.as_secs_f64(),
            "PostgreSQL's autovacuum is off: the control plane analyzes its ledger tables itself \
             (a plan made while they were small would scan them whole)"
        );
        tokio::spawn(every_tick(
            self.pool.clone(),
            None,
            every,
            format!("ANALYZE {LEDGER_TABLES}"),
            "ANALYZE of the ledger tables",
        ));
        true
    }

    /// A connection for the hot path's reads: a free one if any, else the next in turn.
    pub async fn reader(&self) -> Reader {
        let slots = &self.readers.slots;
        let start = self.readers.next.fetch_add(1, Ordering::Relaxed);
        let free = (0..slots.len())
            .map(|i| &slots[(start + i) % slots.len()])
            .find_map(|s| s.clone().try_lock_owned().ok());
        let slot = match free {
            Some(s) => s,
            None => slots[start % slots.len()].clone().lock_owned().await,
        };
        Reader {
            slot,
            pool: self.pool.clone(),
        }
    }

    /// SQLite: this process's turn to write (transactions queue here in arrival order);
    /// `None` on PostgreSQL, where rows are locked instead.
    pub(crate) async fn writer_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.writer {
            Some(w) => Some(w.clone().lock_owned().await),
            None => None,
        }
    }

    async fn migrate(&self) -> Result<(), String> {
        let err = |e: sqlx::Error| format!("migration failed: {e}");
        // Replicas may start together on a fresh PostgreSQL database, and concurrent DDL
        // races even with `IF NOT EXISTS` (pg_type_typname_nsp_index). Every migration
        // transaction first takes one transaction-level advisory lock, so migrations run
        // one at a time; whoever waited sees the version recorded and skips it.
        const MIGRATION_LOCK: &str =
            "SELECT 1 AS locked FROM pg_advisory_xact_lock(7306916007443965286)";
        let mut tx = self.begin().await.map_err(err)?;
        if self.backend == Backend::Postgres {
            tx.execute(MIGRATION_LOCK).await.map_err(err)?;
        }
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        for (version, common) in MIGRATIONS {
            let mut tx = self.begin().await.map_err(err)?;
            if self.backend == Backend::Postgres {
                tx.execute(MIGRATION_LOCK).await.map_err(err)?;
            }
            let done: Option<AnyRow> =
                sqlx::query("SELECT version FROM schema_migrations WHERE version = $1")
                    .bind(*version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(err)?;
            if done.is_some() {
                continue;
            }
            let sql = match self.backend {
                Backend::Sqlite => common.replace("$SERIAL", "INTEGER PRIMARY KEY AUTOINCREMENT"),
                Backend::Postgres => common.replace("$SERIAL", "BIGSERIAL PRIMARY KEY"),
            };
            // `--` comments are stripped before splitting into statements: a comment may
            // contain ';' (001's header does). Sound because no migration has a string
            // literal containing "--".
            let sql = sql
                .lines()
                .map(|l| l.split("--").next().unwrap_or_default().trim_end())
                .collect::<Vec<_>>()
                .join("\n");
            for stmt in sql
                .split(";\n")
                .map(|s| s.trim().trim_end_matches(';'))
                .filter(|s| !s.is_empty())
            {
                tx.execute(stmt)
                    .await
                    .map_err(|e| format!("migration {version} failed at `{stmt}`: {e}"))?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(0i64)
                .execute(&mut *tx)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
        }
        Ok(())
    }

    /// The ledger writer's (batches run, jobs they carried) in this process.
    pub fn ledger_batches(&self) -> (u64, u64) {
        self.ledger_queue.stats()
    }

    /// SQLite: authorizes that took their caller from the cache (`callers.rs`), and those
    /// that found the database moved since and read it again.
    pub fn caller_cache(&self) -> (u64, u64) {
        (self.callers.kept.get(), self.callers.stale.get())
    }

    /// SQLite: the ledger batches decided on the writer's mirror of the rows, and those that
    /// found the database changed by another connection (and ran again on rows read).
    pub fn ledger_mirror(&self) -> (u64, u64) {
        let m = &self.ledger_queue.metrics;
        (m.mirrored.get(), m.mirror_stale.get())
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1")
            .fetch_one(&self.pool)
            .await
            .map(|r| r.len() == 1)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::PgTimeouts;

    /// A new SQLite database in a directory of its own: (directory, file, handle).
    async fn fresh_sqlite(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, super::Db) {
        let dir = std::env::temp_dir().join(format!("opsgate-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        let db = super::Db::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        (dir, path, db)
    }

    /// A pragma's integer value on one of the pool's connections.
    async fn pragma(db: &super::Db, name: &str) -> i64 {
        use sqlx::Row;
        sqlx::query(&format!("PRAGMA {name}"))
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .get(0)
    }

    /// The WAL reaches the database file without any commit doing it: a reader that ignores
    /// the WAL (`immutable=1`) sees the rows once the checkpointer has run, and the
    /// connections' own automatic checkpoints are off.
    #[tokio::test]
    async fn sqlite_checkpoints_happen_off_the_commit_path() {
        use sqlx::Row;
        let (dir, path, db) = fresh_sqlite("ckpt").await;
        assert_eq!(
            pragma(&db, "wal_autocheckpoint").await,
            0,
            "no checkpoint inside a commit"
        );
        sqlx::query("INSERT INTO organizations (id, name, plan, created_at) VALUES ('org_ckpt', 'x', 'starter', 0)")
            .execute(&db.pool)
            .await
            .unwrap();
        // Until a checkpoint, the file alone is an older (or half-written) database: an
        // error or no row.
        let in_file = || async {
            let url = format!("sqlite://{}?mode=ro&immutable=1", path.display());
            let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&url)
                .await
                .ok()?;
            let row = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT) FROM organizations WHERE id = 'org_ckpt'",
            )
            .fetch_one(&mut c)
            .await
            .ok()?;
            row.try_get::<i64, _>(0).ok()
        };
        let mut seen = None;
        for _ in 0..30 {
            seen = in_file().await;
            if seen == Some(1) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(
            seen,
            Some(1),
            "the checkpointer copied the WAL into the file"
        );
        db.pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Under writes that never pause, the WAL still starts over: the checkpointer takes the
    /// writer's turn, copies every frame between two commits, and the next commit writes the
    /// WAL from its start (its header's salt changes). A checkpoint racing the commits never
    /// caught up, and the WAL grew by every commit for as long as the load lasted.
    #[tokio::test]
    async fn sqlite_wal_starts_over_under_writes_that_never_pause() {
        let (dir, _, db) = fresh_sqlite("walcap").await;
        let wal = dir.join("db.sqlite-wal");
        assert_eq!(
            pragma(&db, "journal_size_limit").await,
            super::WAL_SIZE_LIMIT
        );
        // Salt-1 (bytes 16..20 of the WAL header) changes each time the WAL starts over.
        let salt = || {
            std::fs::read(&wal)
                .map(|b| b[16..20].to_vec())
                .unwrap_or_default()
        };
        let write = |n: u64| {
            let db = db.clone();
            async move {
                let mut tx = db.begin().await.unwrap();
                sqlx::query("INSERT INTO organizations (id, name, plan, created_at) VALUES ($1, 'x', 'starter', 0)")
                    .bind(format!("org_wal_{n}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
        };
        write(0).await;
        let first = salt();
        let started = std::time::Instant::now();
        let mut n = 1;
        // Commit after commit for three checkpoint intervals.
        while started.elapsed() < 3 * super::CHECKPOINT_EVERY {
            write(n).await;
            n += 1;
        }
        assert_ne!(salt(), first, "the WAL never started over in {n} commits");
        db.pool.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn pg_timeouts_default_and_refuse_a_lock_wait_shorter_than_the_idle_limit() {
        let none = PgTimeouts::from_vars(|_| None).unwrap();
        assert_eq!((none.lock_ms, none.idle_in_transaction_ms), (3_000, 1_000));
        let short = PgTimeouts::from_vars(|n| {
            (n == "OPSGATE_PG_LOCK_TIMEOUT_MS").then(|| "500".to_string())
        });
        assert!(short
            .unwrap_err()
            .contains("OPSGATE_PG_LOCK_TIMEOUT_MS (500)"));
        let bad = PgTimeouts::from_vars(|n| {
            (n == "OPSGATE_PG_STATEMENT_TIMEOUT_MS").then(|| "soon".to_string())
        });
        assert!(bad
            .unwrap_err()
            .starts_with("OPSGATE_PG_STATEMENT_TIMEOUT_MS"));
    }
}
