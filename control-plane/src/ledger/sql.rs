//! The ledger writer's SQL: statements built for a batch (multi-row, chunked, their
//! placeholders numbered from `$1`), and the batch's transaction on the writer's own
//! connection.
//!
//! On SQLite a batch costs two trips to the connection's worker thread: `BEGIN IMMEDIATE`
//! rides with the reads, `COMMIT` with the writes, each a multi-statement query. Those trips
//! (thread hand-offs), not SQLite, were most of the control plane's CPU per call. A write
//! that changes fewer rows than it must is caught inside the trip by a guard statement
//! (a temporary trigger raises), so the `COMMIT` after it never runs.
//! On PostgreSQL the reads are a round trip each (without a transaction, or locking their
//! rows `FOR UPDATE` inside one when a batch runs again after a conflict), and the writes are
//! one statement (`one_statement`): no lock outlives a round trip on the optimistic path.
//!
//! The writer keeps its connection between batches, detached from the pool: sqlx pings
//! every connection it takes back, which would be one more trip per batch.

use crate::db::Backend;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection, Executor};

/// The most rows one multi-row statement carries (statements are built for 1, 2, 4 … rows,
/// so each connection caches a handful of them).
pub(super) const MAX_ROWS: usize = 32;

/// A value bound into a statement.
#[derive(Clone, Copy)]
pub(super) enum Val<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
}

pub(super) type Query<'q> = sqlx::query::Query<'q, Any, AnyArguments<'q>>;

pub(super) fn bind<'q>(q: Query<'q>, v: &Val<'q>) -> Query<'q> {
    match v {
        Val::Int(i) => q.bind(*i),
        Val::OptInt(i) => q.bind(*i),
        Val::Text(s) => q.bind(*s),
    }
}

/// Sizes of the statements `n` rows are split into: powers of two up to `MAX_ROWS`.
pub(super) fn chunk_sizes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    while n > 0 {
        let mut size = MAX_ROWS;
        while size > n {
            size /= 2;
        }
        out.push(size);
        n -= size;
    }
    out
}

/// `($1, $2), ($3, $4)` for `rows` rows of `cols` values (`combined` renumbers them when
/// statements are joined).
pub(super) fn placeholders(rows: usize, cols: usize) -> String {
    let mut s = String::new();
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&(1 + r * cols + c).to_string());
        }
        s.push(')');
    }
    s
}

/// `$1, $2, $3` for an `IN (…)` list.
pub(super) fn list(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A write's `expect` when any number of rows will do (no guard).
pub(super) const ANY_ROWS: u64 = u64::MAX;

/// One statement of a batch, its placeholders numbered from `$1`, and how many rows it must
/// change (writes) — fewer means a row moved since it was read.
pub(super) struct Stmt<'a> {
    pub sql: String,
    pub vals: Vec<Val<'a>>,
    pub expect: u64,
}

/// The statements that write (or read) `rows` in chunks: `sql(k)` for a chunk of `k` rows.
pub(super) fn chunked<'a>(rows: &[Vec<Val<'a>>], sql: impl Fn(usize) -> String) -> Vec<Stmt<'a>> {
    let mut out = Vec::new();
    let mut at = 0;
    for size in chunk_sizes(rows.len()) {
        out.push(Stmt {
            sql: sql(size),
            vals: rows[at..at + size].iter().flatten().copied().collect(),
            expect: size as u64,
        });
        at += size;
    }
    out
}

/// A multi-row `INSERT INTO table (columns) VALUES … tail`, chunked; each row binds one value
/// per named column.
pub(super) fn insert<'a>(
    table: &str,
    columns: &str,
    rows: &[Vec<Val<'a>>],
    tail: &str,
) -> Vec<Stmt<'a>> {
    let width = columns.split(',').count();
    chunked(rows, |n| {
        format!(
            "INSERT INTO {table} ({columns}) VALUES {}{tail}",
            placeholders(n, width)
        )
    })
}

/// `sql` with every `$N` renumbered to `$N+offset`.
pub(super) fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let mut n = String::new();
        while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
            n.push(d);
            chars.next();
        }
        match n.parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&n),
        }
    }
    out
}

/// SQLite: the statements as one multi-statement query (placeholders renumbered across it),
/// so the batch costs one trip to the connection's worker thread instead of one per
/// statement — those trips, not SQLite, were most of the control plane's CPU per call.
pub(super) fn combined<'a>(stmts: Vec<Stmt<'a>>) -> Stmt<'a> {
    let mut all = Stmt {
        sql: String::new(),
        vals: Vec::new(),
        expect: 0,
    };
    for s in stmts {
        all.sql.push_str(&renumber(&s.sql, all.vals.len()));
        all.sql.push_str(";\n");
        all.vals.extend(s.vals);
        all.expect = all.expect.saturating_add(s.expect);
    }
    all
}

pub(super) fn query<'q>(s: &'q Stmt<'q>) -> Query<'q> {
    let mut q = sqlx::query(&s.sql).persistent(s.sql.len() < 2_000);
    for v in &s.vals {
        q = bind(q, v);
    }
    q
}

/// The SQLite guards: temporary tables whose triggers raise, created on every SQLite
/// connection. A write's guard inserts into `ledger_guard` only when the write changed the
/// wrong number of rows; a batch decided on the writer's mirror inserts into
/// `ledger_version_guard` first when the database is not at the mirror's version. Either
/// aborts the trip before its `COMMIT`, and the error says which.
pub const SQLITE_GUARD: &str = "CREATE TEMP TABLE IF NOT EXISTS ledger_version_guard (expected INTEGER); \
     CREATE TEMP TRIGGER IF NOT EXISTS ledger_version_guard_abort BEFORE INSERT ON ledger_version_guard \
     BEGIN SELECT RAISE(ABORT, 'opsgate: the database moved since the ledger rows were read'); END; \
     CREATE TEMP TABLE IF NOT EXISTS ledger_guard (expected INTEGER); \
     CREATE TEMP TRIGGER IF NOT EXISTS ledger_guard_abort BEFORE INSERT ON ledger_guard \
     BEGIN SELECT RAISE(ABORT, 'opsgate: a ledger row moved since it was read'); END";
const GUARD_MESSAGE: &str = "a ledger row moved since it was read";
const VERSION_GUARD_MESSAGE: &str = "the database moved since the ledger rows were read";

/// PostgreSQL's `division_by_zero`: what `one_statement`'s guard raises when a write missed.
const MISSED_ROW: &str = "22012";

/// PostgreSQL: the writes as one statement — each a data-modifying `WITH` part returning a
/// row per row it wrote, and a final `SELECT` that divides by zero unless every part wrote
/// exactly the rows it must. One statement commits or fails as a whole, and no row stays
/// locked once it returns: a replica frozen or killed between two round trips holds nothing.
/// (No part may touch a row another part writes: they all see the statement's snapshot.)
fn one_statement<'a>(stmts: Vec<Stmt<'a>>) -> Stmt<'a> {
    let mut parts = Vec::with_capacity(stmts.len());
    let mut checks = Vec::with_capacity(stmts.len());
    let mut vals = Vec::new();
    for (i, s) in stmts.into_iter().enumerate() {
        parts.push(format!(
            "w{i} AS ({} RETURNING 1)",
            renumber(&s.sql, vals.len())
        ));
        if s.expect != ANY_ROWS {
            checks.push(format!("(SELECT COUNT(*) FROM w{i}) = {}", s.expect));
        }
        vals.extend(s.vals);
    }
    if checks.is_empty() {
        checks.push("TRUE".into());
    }
    Stmt {
        sql: format!(
            "WITH {} SELECT 1 / (CASE WHEN {} THEN 1 ELSE 0 END) AS ok",
            parts.join(", "),
            checks.join(" AND ")
        ),
        vals,
        expect: 0,
    }
}

/// One batch's transaction on the writer's connection.
pub(super) struct Txn<'c> {
    backend: Backend,
    conn: &'c mut AnyConnection,
    /// A transaction is open (on SQLite, `BEGIN IMMEDIATE` has been sent with a read).
    open: bool,
    /// SQLite: the `data_version` the writes must find (a batch decided on the mirror).
    version: Option<i64>,
    /// SQLite: the writes found another `data_version` (nothing committed).
    version_moved: bool,
}

impl<'c> Txn<'c> {
    /// Starts the batch: on SQLite the transaction begins with the first read; on
    /// PostgreSQL a transaction is opened only for a `locked` attempt (its reads lock rows
    /// `FOR UPDATE`) — the optimistic attempt reads without one and writes in one statement.
    pub async fn begin(
        backend: Backend,
        conn: &'c mut AnyConnection,
        locked: bool,
    ) -> Result<Txn<'c>, sqlx::Error> {
        let mut txn = Txn {
            backend,
            conn,
            open: false,
            version: None,
            version_moved: false,
        };
        if backend == Backend::Postgres && locked {
            txn.open = true;
            txn.conn.execute("BEGIN").await?;
        }
        Ok(txn)
    }

    /// SQLite: starts the transaction in this trip (`BEGIN IMMEDIATE` before `all`), unless
    /// it is open. Marked open before the trip: if the trip fails half-way, the rollback runs.
    fn begin_in(&mut self, all: &mut Stmt<'_>) {
        if !std::mem::replace(&mut self.open, true) {
            all.sql.insert_str(0, "BEGIN IMMEDIATE;\n");
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// SQLite: the writes commit only if no other connection committed since the connection's
    /// `data_version` was `version` (checked after `BEGIN IMMEDIATE`, so nothing can commit
    /// between the check and the `COMMIT`).
    pub fn expect_version(&mut self, version: i64) {
        self.version = Some(version);
    }

    /// The writes stopped because the database was not at the version expected.
    pub fn version_moved(&self) -> bool {
        self.version_moved
    }

    /// Runs reads; every row carries its statement's tag in column `t`.
    pub async fn fetch(&mut self, stmts: Vec<Stmt<'_>>) -> Result<Vec<AnyRow>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let reads = !stmts.is_empty();
                let mut all = combined(stmts);
                self.begin_in(&mut all);
                if !reads {
                    self.conn.execute(all.sql.as_str()).await?;
                    return Ok(Vec::new());
                }
                query(&all).fetch_all(&mut *self.conn).await
            }
            Backend::Postgres => {
                let mut rows = Vec::new();
                for s in &stmts {
                    rows.extend(query(s).fetch_all(&mut *self.conn).await?);
                }
                Ok(rows)
            }
        }
    }

    /// Runs the writes and commits them. `false` (nothing committed; the caller rolls back)
    /// when a write changed fewer rows than it must: a row moved since it was read.
    pub async fn commit_writes(&mut self, stmts: Vec<Stmt<'_>>) -> Result<bool, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => {
                let mut guarded = Vec::with_capacity(stmts.len() * 2 + 2);
                if let Some(v) = self.version {
                    guarded.push(Stmt {
                        sql: format!(
                            "INSERT INTO ledger_version_guard (expected) SELECT {v} \
                             WHERE (SELECT data_version FROM pragma_data_version) <> {v}"
                        ),
                        vals: Vec::new(),
                        expect: 0,
                    });
                }
                for s in stmts {
                    let n = s.expect;
                    guarded.push(s);
                    if n == ANY_ROWS {
                        continue;
                    }
                    guarded.push(Stmt {
                        sql: format!(
                            "INSERT INTO ledger_guard (expected) SELECT {n} WHERE changes() <> {n}"
                        ),
                        vals: Vec::new(),
                        expect: 0,
                    });
                }
                let mut all = combined(guarded);
                self.begin_in(&mut all);
                all.sql.push_str("COMMIT;\n");
                match query(&all).execute(&mut *self.conn).await {
                    Ok(_) => {
                        self.open = false;
                        Ok(true)
                    }
                    Err(sqlx::Error::Database(d)) if d.message().contains(GUARD_MESSAGE) => {
                        Ok(false)
                    }
                    Err(sqlx::Error::Database(d))
                        if d.message().contains(VERSION_GUARD_MESSAGE) =>
                    {
                        self.version_moved = true;
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            }
            Backend::Postgres => {
                if !stmts.is_empty() {
                    let all = one_statement(stmts);
                    match query(&all).execute(&mut *self.conn).await {
                        Ok(_) => {}
                        Err(sqlx::Error::Database(d))
                            if d.code().as_deref() == Some(MISSED_ROW) =>
                        {
                            return Ok(false)
                        }
                        Err(e) => return Err(e),
                    }
                }
                if std::mem::replace(&mut self.open, false) {
                    self.conn.execute("COMMIT").await?;
                }
                Ok(true)
            }
        }
    }

    /// Ends the transaction without a trace, if one is open.
    pub async fn rollback(&mut self) -> Result<(), sqlx::Error> {
        if std::mem::replace(&mut self.open, false) {
            self.conn.execute("ROLLBACK").await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{chunk_sizes, combined, placeholders, renumber, Stmt, Val};

    #[test]
    fn rows_split_into_powers_of_two_up_to_the_cap() {
        assert_eq!(chunk_sizes(0), Vec::<usize>::new());
        assert_eq!(chunk_sizes(1), vec![1]);
        assert_eq!(chunk_sizes(7), vec![4, 2, 1]);
        assert_eq!(chunk_sizes(70), vec![32, 32, 4, 2]);
        assert_eq!(placeholders(2, 2), "($1, $2), ($3, $4)");
    }

    #[test]
    fn statements_combine_with_their_placeholders_renumbered() {
        assert_eq!(
            renumber("a = $1 AND b >= $1 + $12", 3),
            "a = $4 AND b >= $4 + $15"
        );
        let all = combined(vec![
            Stmt {
                sql: "UPDATE x SET a = $1 WHERE id = $2".into(),
                vals: vec![Val::Int(1), Val::Text("p")],
                expect: 1,
            },
            Stmt {
                sql: "INSERT INTO y VALUES ($1), ($2)".into(),
                vals: vec![Val::Int(2), Val::Int(3)],
                expect: 2,
            },
        ]);
        assert_eq!(
            all.sql,
            "UPDATE x SET a = $1 WHERE id = $2;\nINSERT INTO y VALUES ($3), ($4);\n"
        );
        assert_eq!((all.vals.len(), all.expect), (4, 3));
    }

    /// A batch whose first write would land but whose second changes no row where it must
    /// change one commits nothing, and the connection serves the next batch: on SQLite (the
    /// guard trigger stops the trip before its COMMIT) and on PostgreSQL when
    /// OPSGATE_TEST_DATABASE_URL is set (the single write statement fails as a whole).
    #[tokio::test]
    async fn a_write_that_misses_its_row_commits_nothing_of_the_batch() {
        use crate::db::Db;
        let path = std::env::temp_dir().join(format!("opsgate-guard-{}.db", std::process::id()));
        let mut urls = vec![format!("sqlite://{}", path.display())];
        urls.extend(
            std::env::var("OPSGATE_TEST_DATABASE_URL")
                .ok()
                .filter(|u| !u.is_empty()),
        );
        for url in urls {
            let db = Db::connect(&url).await.expect("open");
            let mut conn = db.pool.acquire().await.expect("conn").detach();
            missed_write_commits_nothing(db.backend, &mut conn).await;
        }
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    async fn missed_write_commits_nothing(
        backend: crate::db::Backend,
        conn: &mut sqlx::AnyConnection,
    ) {
        use super::Txn;
        use sqlx::Row;
        // A temporary table: this connection's own, on either database.
        sqlx::Executor::execute(
            &mut *conn,
            "CREATE TEMP TABLE guard_t (id TEXT PRIMARY KEY, n BIGINT)",
        )
        .await
        .expect("table");
        let write = |id: &'static str| Stmt {
            sql: "INSERT INTO guard_t (id, n) VALUES ($1, 1)".into(),
            vals: vec![Val::Text(id)],
            expect: 1,
        };
        let missing = || Stmt {
            sql: "UPDATE guard_t SET n = n + 1 WHERE id = $1".into(),
            vals: vec![Val::Text("absent")],
            expect: 1,
        };
        for locked in [false, true] {
            let mut txn = Txn::begin(backend, conn, locked).await.expect("begin");
            txn.fetch(Vec::new()).await.expect("read");
            let committed = txn
                .commit_writes(vec![write("a"), missing()])
                .await
                .expect("trip");
            assert!(!committed, "{backend:?}: the guard must stop the commit");
            txn.rollback().await.expect("rollback");
        }
        let mut txn = Txn::begin(backend, conn, false).await.expect("begin");
        txn.fetch(Vec::new()).await.expect("read");
        assert!(txn.commit_writes(vec![write("b")]).await.expect("trip"));
        let ids: Vec<String> = sqlx::query("SELECT id FROM guard_t ORDER BY id")
            .fetch_all(&mut *conn)
            .await
            .expect("read back")
            .iter()
            .map(|r| r.get::<String, _>("id"))
            .collect();
        assert_eq!(ids, vec!["b".to_string()], "{backend:?}");
    }
}
