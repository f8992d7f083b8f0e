//! Group commit: every authorize, settle and expiry goes through one queue per process; one
//! writer drains it and applies everything queued in one transaction — the rows the batch
//! touches read once, each job decided in memory (`book.rs`), the changes written as
//! conditional deltas, one commit — then answers each caller. Under load a batch carries many
//! calls, so a call costs a share of a dozen statements instead of a dozen of its own.
//!
//! Money stays exact across replicas on PostgreSQL without holding a hot row across round
//! trips: the first attempt reads without locks and writes each balance and window as one
//! conditional delta (`… WHERE total - used - held >= delta`), taken last, just before the
//! commit. When a condition fails (another replica moved the row since the read), or when a
//! job was refused on a balance or a quota count that might have been stale, the batch is
//! rolled back and decided again on rows locked `FOR UPDATE` in a fixed order (holds, quota
//! windows, organisations, allocations), so a refusal is always decided on current rows.
//! SQLite has one writer per database file (this one); its reads are always current.
//!
//! No crate offers group commit over sqlx, so this module is our own.

use super::book::{Answer, Book, Calls, Closed, HoldRow, Job, Pool, QuotaKey, Tracked, UsageLine};
use super::holds::HoldStatus;
use super::mirror::{self, Mirror};
use super::quota::WindowKind;
use super::sql::{chunked, insert, list, placeholders, Stmt, Txn, Val, ANY_ROWS};
use crate::db::{Backend, Db};
use crate::error::AppError;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, Notify};

/// The most jobs one transaction carries.
const MAX_BATCH: usize = 64;
/// Attempts per batch: optimistic, then locked (twice, for a deadlock or a racing insert).
const ATTEMPTS: usize = 4;

/// User API keys' last uses: digest → when.
type KeyUses = BTreeMap<String, i64>;

/// A job's answer, or the failure of its whole batch: (transient, detail).
type Reply = oneshot::Sender<Result<Answer, (bool, String)>>;

/// How long a batch waits at most for the authorizes on their way to the queue (see
/// [`Arriving`]); tokio's timers tick in milliseconds.
const GATHER_AT_MOST: std::time::Duration = std::time::Duration::from_millis(1);

/// The queue of jobs waiting for the writer; one per database handle.
#[derive(Default)]
pub struct Queue {
    inner: Mutex<Pending>,
    /// Authorizes announced ([`Arriving`]) and not yet queued.
    arriving: AtomicUsize,
    /// Announced authorizes that have been queued or given up, since the process started.
    arrived_total: AtomicUsize,
    /// Fired each time an announced authorize is queued or gives up.
    arrived: Notify,
    /// SQLite: changes each time the writer finds the database moved by another connection
    /// (or starts over without its mirror); callers kept between calls are tagged with it.
    epoch: AtomicU64,
    /// Batches run and the jobs they carried (their ratio is the group commit's gain), batch
    /// sizes, transaction times and retries.
    pub metrics: crate::metrics::LedgerMetrics,
}

impl Queue {
    /// (batches run, jobs they carried) since the process started.
    pub fn stats(&self) -> (u64, u64) {
        (self.metrics.batches.get(), self.metrics.jobs.get())
    }

    /// The epoch callers read now are tagged with (`callers.rs`).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Pending {
    jobs: VecDeque<(Job, Reply)>,
    /// SQLite: user API keys' last uses to record (digest → when), written with the next
    /// batch on the writer's connection, so they move no one's `data_version` (`mirror.rs`,
    /// `callers.rs`).
    key_uses: BTreeMap<String, i64>,
    /// A writer task is draining the queue.
    running: bool,
    /// The writer's connection between batches (see `sql.rs`: kept out of the pool), and on
    /// SQLite the ledger rows as it last committed them (`mirror.rs`; it goes with the
    /// connection: its version is that connection's).
    conn: Option<(Conn, Option<Mirror>)>,
}

/// Detached from the pool: the pool neither pings it nor waits for it when closing.
type Conn = AnyConnection;

/// An authorize on its way to the queue: taken when its request arrives, before it reads its
/// caller and routes the call, and given up when its job is queued (or it is refused
/// first). A batch about to start waits for the authorizes announced (at most
/// [`GATHER_AT_MOST`]), so they ride in it instead of each taking a transaction of its own
/// right after: under load, fewer and larger batches, so fewer commits and fewer trips to
/// the database per call (the commit-delay idea of PostgreSQL's `commit_siblings`, but
/// waiting only for requests known to be on their way). A lone call waits for nothing.
pub struct Arriving(Arc<Queue>);

impl Arriving {
    pub fn new(db: &Db) -> Arriving {
        db.ledger_queue.arriving.fetch_add(1, Ordering::SeqCst);
        Arriving(db.ledger_queue.clone())
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        self.0.arrived_total.fetch_add(1, Ordering::SeqCst);
        self.0.arriving.fetch_sub(1, Ordering::SeqCst);
        self.0.arrived.notify_waiters();
    }
}

/// Waits until the authorizes announced when it starts have arrived (as many arrivals as
/// were on their way; later announcements are not waited for, so under steady load a batch
/// does not wait for an endless stream), the batch is full, or [`GATHER_AT_MOST`] has
/// passed.
async fn gather(queue: &Queue) {
    let deadline = tokio::time::Instant::now() + GATHER_AT_MOST;
    let (before, awaited) = (
        queue.arrived_total.load(Ordering::SeqCst),
        queue.arriving.load(Ordering::SeqCst),
    );
    loop {
        let arrived = queue.arrived.notified();
        tokio::pin!(arrived);
        // Registered before the check: an arrival between the check and the wait wakes it.
        arrived.as_mut().enable();
        let full = queue
            .inner
            .lock()
            .map_or(true, |q| q.jobs.len() >= MAX_BATCH);
        let came = queue
            .arrived_total
            .load(Ordering::SeqCst)
            .wrapping_sub(before);
        if full || came >= awaited {
            return;
        }
        if tokio::time::timeout_at(deadline, arrived).await.is_err() {
            return;
        }
    }
}

/// SQLite: records a user API key's last use with the next ledger batch (on the writer's
/// connection: another connection's commit would make every kept caller and the writer's
/// mirror stale). Starts a writer when none is running. Best effort: a batch that fails
/// loses it, and the next use records it again.
pub fn note_key_use(db: &Db, digest: &str, now: i64) {
    let start = {
        let Ok(mut q) = db.ledger_queue.inner.lock() else {
            return;
        };
        let at = q.key_uses.entry(digest.to_string()).or_insert(now);
        *at = (*at).max(now);
        !std::mem::replace(&mut q.running, true)
    };
    if start {
        tokio::spawn(drain(db.clone()));
    }
}

/// Queues one job and waits for its answer, giving up `arriving` once the job is queued.
pub(super) async fn submit_arriving(
    db: &Db,
    job: Job,
    arriving: Option<Arriving>,
) -> Result<Answer, AppError> {
    submit_inner(db, vec![job], arriving)
        .await
        .pop()
        .unwrap_or_else(|| Err(AppError::internal("no answer from the ledger writer")))
}

/// Queues jobs and waits for their answers. Starts a writer when none is running; the writer
/// stops when the queue is empty.
pub(super) async fn submit_many(db: &Db, jobs: Vec<Job>) -> Vec<Result<Answer, AppError>> {
    submit_inner(db, jobs, None).await
}

async fn submit_inner(
    db: &Db,
    jobs: Vec<Job>,
    arriving: Option<Arriving>,
) -> Vec<Result<Answer, AppError>> {
    let mut waiting = Vec::with_capacity(jobs.len());
    let start = {
        let Ok(mut q) = db.ledger_queue.inner.lock() else {
            return jobs
                .iter()
                .map(|_| Err(AppError::internal("the ledger queue is poisoned")))
                .collect();
        };
        for job in jobs {
            let (tx, rx) = oneshot::channel();
            q.jobs.push_back((job, tx));
            waiting.push(rx);
        }
        !std::mem::replace(&mut q.running, true)
    };
    drop(arriving);
    if start {
        tokio::spawn(drain(db.clone()));
    }
    let mut out = Vec::with_capacity(waiting.len());
    for rx in waiting {
        out.push(match rx.await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err((true, detail))) => Err(crate::error::unavailable_database(&detail)),
            Ok(Err((false, detail))) => Err(AppError::internal(detail)),
            Err(_) => Err(AppError::internal("the ledger writer stopped")),
        });
    }
    out
}

/// Clears `running` if the writer ends early (a panic, a poisoned lock), so the next
/// submission starts a new one. A writer that finds the queue empty clears it itself, under
/// the lock, and disarms this: clearing it again afterwards could clear the flag of a writer
/// started meanwhile, and a third submission would start a second writer beside it.
struct Running(Option<Arc<Queue>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(Ok(mut q)) = self.0.as_ref().map(|q| q.inner.lock()) {
            q.running = false;
        }
    }
}

async fn drain(db: Db) {
    let mut running = Running(Some(db.ledger_queue.clone()));
    // The writer's own connection, kept across batches and handed to the next writer.
    let (mut conn, mut mirror) = db
        .ledger_queue
        .inner
        .lock()
        .ok()
        .and_then(|mut q| q.conn.take())
        .map_or((None, None), |(c, m)| (Some(c), m));
    loop {
        gather(&db.ledger_queue).await;
        let (batch, key_uses): (Vec<(Job, Reply)>, _) = {
            let Ok(mut q) = db.ledger_queue.inner.lock() else {
                return;
            };
            if q.jobs.is_empty() && q.key_uses.is_empty() {
                q.running = false;
                q.conn = conn.map(|c| (c, mirror));
                running.0 = None;
                return;
            }
            let n = q.jobs.len().min(MAX_BATCH);
            (q.jobs.drain(..n).collect(), std::mem::take(&mut q.key_uses))
        };
        let (jobs, replies): (Vec<Job>, Vec<Reply>) = batch.into_iter().unzip();
        let m = &db.ledger_queue.metrics;
        // A batch of key uses alone is not a ledger batch (it would skew the jobs per batch).
        if !jobs.is_empty() {
            m.batches.inc();
            m.jobs.inc_by(jobs.len() as u64);
            m.batch_size.observe(jobs.len() as f64);
        }
        let started = std::time::Instant::now();
        let outcome = match conn.as_mut() {
            Some(c) => run(&db, c, &mut mirror, &jobs, &key_uses).await,
            None => match db.pool.acquire().await {
                Ok(c) => {
                    mirror = None;
                    run(&db, conn.insert(c.detach()), &mut mirror, &jobs, &key_uses).await
                }
                Err(e) => Err(e),
            },
        };
        m.transaction(db.backend, started.elapsed());
        match outcome {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                // A connection that failed is dropped (closed), never reused: its state (an
                // open transaction?) is unknown. The next batch takes a fresh one.
                conn = None;
                mirror = None;
                // Every job of the batch gets the failure: a 503 when the database was busy
                // or out of reach (the caller may retry), else an internal error.
                let failure = (
                    crate::error::is_transient(&e),
                    format!("ledger batch of {}: {e}", jobs.len()),
                );
                for reply in replies {
                    let _ = reply.send(Err(failure.clone()));
                }
            }
        }
    }
}

/// Decides and commits one batch, retrying on locked rows when the optimistic attempt
/// conflicted or refused on counts it read without a lock. On SQLite a batch whose rows are
/// all in the mirror is decided on them first (one trip); when the database moved since,
/// the mirror is dropped and the batch runs as without one.
async fn run(
    db: &Db,
    conn: &mut Conn,
    mirror: &mut Option<Mirror>,
    jobs: &[Job],
    key_uses: &KeyUses,
) -> Result<Vec<Answer>, sqlx::Error> {
    if let Some((book, wanted)) = mirror.as_ref().and_then(|m| m.book_for(jobs)) {
        let version = mirror.as_ref().map_or(0, |m| m.version);
        let m = &db.ledger_queue.metrics;
        match mirrored(db, conn, jobs, key_uses, book, version).await? {
            Mirrored::Committed(answers, book) => {
                if !jobs.is_empty() {
                    m.mirrored.inc();
                }
                if let Some(mi) = mirror.as_mut() {
                    mi.absorb(&book, &wanted);
                    if mi.too_large() {
                        *mirror = None;
                    }
                }
                return Ok(answers);
            }
            // The database moved: decided again on rows read, in a new epoch.
            Mirrored::Stale => {
                m.mirror_stale.inc();
                *mirror = None;
            }
            // A row guard stopped it (an authorize under an id already taken): the mirror
            // is still exact; the batch is decided again on rows read.
            Mirrored::RowMoved => {}
        }
    }
    let mut locked = db.backend == Backend::Sqlite;
    let mut last = None;
    for n in 0..ATTEMPTS {
        if n > 0 {
            db.ledger_queue.metrics.retries.inc();
        }
        match attempt(db, conn, mirror, jobs, key_uses, locked).await {
            Ok(Some(answers)) => return Ok(answers),
            Ok(None) => locked = true,
            Err(e) if retryable(&e) => {
                last = Some(e);
                locked = true;
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        sqlx::Error::Protocol("the batch kept conflicting with other writers".into())
    }))
}

/// A deadlock or serialization failure (PostgreSQL): the transaction was rolled back and may
/// simply run again.
fn retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("40P01" | "40001")))
}

/// How a batch decided on the mirror ended.
enum Mirrored {
    Committed(Vec<Answer>, Box<Book>),
    /// Another connection committed since the mirror's version: nothing committed.
    Stale,
    /// A write changed fewer rows than it must: nothing committed.
    RowMoved,
}

/// SQLite: one attempt on the mirror's rows, written behind the guard that the database is
/// still at `version`.
async fn mirrored(
    db: &Db,
    conn: &mut Conn,
    jobs: &[Job],
    key_uses: &KeyUses,
    mut book: Book,
    version: i64,
) -> Result<Mirrored, sqlx::Error> {
    let _turn = db.writer_turn().await;
    let mut txn = Txn::begin(db.backend, conn, true).await?;
    txn.expect_version(version);
    let answers = decide_each(&mut book, jobs, db.ledger_queue.epoch());
    match write(&mut txn, &book, key_uses).await {
        Ok(true) => Ok(Mirrored::Committed(
            settled_balances(&book, answers),
            Box::new(book),
        )),
        Ok(false) => {
            let stale = txn.version_moved();
            txn.rollback().await?;
            Ok(if stale {
                Mirrored::Stale
            } else {
                Mirrored::RowMoved
            })
        }
        Err(e) => {
            txn.rollback().await?;
            Err(e)
        }
    }
}

/// One attempt: `Ok(None)` when it must run again on locked rows. Whatever ends it, no
/// transaction is left open on the connection (or the error says the connection is lost).
/// On SQLite a committed attempt leaves its rows in `mirror`.
async fn attempt(
    db: &Db,
    conn: &mut Conn,
    mirror: &mut Option<Mirror>,
    jobs: &[Job],
    key_uses: &KeyUses,
    locked: bool,
) -> Result<Option<Vec<Answer>>, sqlx::Error> {
    // SQLite: one writer per process at a time (admin writes take the same turn).
    let _turn = db.writer_turn().await;
    let mut txn = Txn::begin(db.backend, conn, locked).await?;
    let mut book = Book::default();
    let since = mirror.as_ref().map(|m| m.version);
    let decided = decide(
        &mut txn,
        &db.ledger_queue,
        since,
        &mut book,
        jobs,
        key_uses,
        locked,
    )
    .await;
    match decided {
        Ok(Some((answers, read))) => {
            if let Some((version, wanted)) = read {
                let mut mi = match mirror.take() {
                    Some(m) if m.version == version => m,
                    _ => Mirror::new(version),
                };
                mi.absorb(&book, &wanted);
                *mirror = (!mi.too_large()).then_some(mi);
            }
            Ok(Some(settled_balances(&book, answers)))
        }
        Ok(None) => {
            txn.rollback().await?;
            Ok(None)
        }
        Err(e) => {
            txn.rollback().await?;
            Err(e)
        }
    }
}

/// What a SQLite batch read, for the mirror: the connection's `data_version` and the rows
/// asked for.
type Read = Option<(i64, mirror::Wanted)>;

/// Each job decided in order, but an authorize whose caller was read in another epoch than
/// `epoch` (before the database last moved) is not: it must read its caller again.
fn decide_each(book: &mut Book, jobs: &[Job], epoch: u64) -> Vec<Answer> {
    jobs.iter()
        .map(|j| match j {
            Job::Authorize(a) if a.caller_epoch.is_some_and(|e| e != epoch) => Answer::StaleCaller,
            _ => book.decide(j),
        })
        .collect()
}

/// Reads, decides and (unless the attempt must run again) writes and commits. On SQLite,
/// a database that moved since the mirror's version `since` (or with no mirror) starts a
/// new epoch before anything is decided.
async fn decide(
    txn: &mut Txn<'_>,
    queue: &Queue,
    since: Option<i64>,
    book: &mut Book,
    jobs: &[Job],
    key_uses: &KeyUses,
    locked: bool,
) -> Result<Option<(Vec<Answer>, Read)>, sqlx::Error> {
    let backend = txn.backend();
    let pg_lock = locked && backend == Backend::Postgres;
    let version = read(txn, backend, book, jobs, locked, pg_lock).await?;
    if version.is_some() && version != since {
        queue.epoch.fetch_add(1, Ordering::SeqCst);
    }
    let read = version.map(|v| (v, mirror::wanted(jobs, book.holds.values())));
    let answers = decide_each(book, jobs, queue.epoch());
    if !locked && book.refused_on_counts {
        return Ok(None);
    }
    if !write(txn, book, key_uses).await? {
        return Ok(None);
    }
    Ok(Some((answers, read)))
}

/// A settlement answers its owner's balance as the batch left it.
fn settled_balances(book: &Book, mut answers: Vec<Answer>) -> Vec<Answer> {
    for a in &mut answers {
        if let Answer::Settled {
            owner: Some((org, user)),
            balance,
            ..
        } = a
        {
            *balance = book.spendable(org, user);
        }
    }
    answers
}

const HOLD_COLUMNS: &str = "id, org_id, user_id, amount, charged, status, model, provider, rate, byok, has_allocation, day_start, period_start, created_at, expires_at, settled_at";

fn hold_row(r: &AnyRow) -> Result<HoldRow, sqlx::Error> {
    let status: String = r.try_get("status")?;
    Ok(HoldRow {
        id: r.try_get("id")?,
        org_id: r.try_get("org_id")?,
        user_id: r.try_get("user_id")?,
        amount: r.try_get("amount")?,
        charged: r.try_get("charged")?,
        status: HoldStatus::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("hold status '{status}'").into()))?,
        model: r.try_get("model")?,
        provider: r.try_get("provider")?,
        rate: r.try_get("rate")?,
        byok: r.try_get::<i64, _>("byok")? != 0,
        has_allocation: r.try_get::<i64, _>("has_allocation")? != 0,
        day_start: r.try_get("day_start")?,
        period_start: r.try_get("period_start")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        settled_at: r.try_get("settled_at")?,
    })
}

/// Reads every row the batch's jobs touch into the book: the holds, the quota windows, the
/// organisations and the allocations they name. On SQLite in one trip (the rows a hold
/// points to are found by joining on it); on PostgreSQL the holds first, then the rest. With
/// `pg_lock`, rows are locked in the fixed order; on the optimistic attempt an authorize's
/// id is not read (a hold already under it makes the insert conflict, and the locked attempt
/// then reads it). On SQLite, answers the connection's `data_version` read in the same
/// transaction (the mirror's version).
async fn read(
    txn: &mut Txn<'_>,
    backend: Backend,
    book: &mut Book,
    jobs: &[Job],
    locked: bool,
    pg_lock: bool,
) -> Result<Option<i64>, sqlx::Error> {
    // PostgreSQL locks rows in the order the query returns them: byte order ("C"), the
    // order the writes below take them in too (Rust's `Ord` on strings; period before day).
    let order = |columns: &str| {
        if pg_lock {
            format!(" ORDER BY {columns} FOR UPDATE")
        } else {
            String::new()
        }
    };
    let ids: BTreeSet<&str> = jobs
        .iter()
        .filter(|j| locked || !matches!(j, Job::Authorize(_)))
        .map(Job::hold_id)
        .collect();
    let keys: Vec<Vec<Val>> = ids.iter().map(|id| vec![Val::Text(id)]).collect();
    let mut stmts = chunked(&keys, |n| {
        format!(
            "SELECT 'h' AS t, {HOLD_COLUMNS} FROM holds WHERE id IN ({}){}",
            list(n),
            order(r#"id COLLATE "C""#)
        )
    });

    // Who and which windows the authorizes name.
    let mut owners: BTreeSet<(String, String)> = BTreeSet::new();
    let mut windows: BTreeSet<QuotaKey> = BTreeSet::new();
    for job in jobs {
        if let Job::Authorize(a) = job {
            owners.insert((a.org_id.clone(), a.user_id.clone()));
            for w in &a.windows {
                windows.insert((a.user_id.clone(), w.kind, w.window.start));
            }
        }
    }

    if backend == Backend::Sqlite {
        stmts.extend(rows_named(&owners, &windows, &order));
        stmts.extend(rows_of_holds(&keys));
        stmts.push(Stmt {
            sql: "SELECT 'v' AS t, data_version FROM pragma_data_version".into(),
            vals: Vec::new(),
            expect: 0,
        });
        let mut version = None;
        for r in txn.fetch(stmts).await? {
            if r.try_get::<String, _>("t")? == "v" {
                version = Some(r.try_get("data_version")?);
            } else {
                take(book, &r)?;
            }
        }
        return Ok(version);
    }

    for r in txn.fetch(stmts).await? {
        take(book, &r)?;
    }
    for h in book.holds.values() {
        // An expired hold may be settled late (its quota slot freed for a failed call).
        if matches!(h.status, HoldStatus::Held | HoldStatus::Expired) {
            owners.insert((h.org_id.clone(), h.user_id.clone()));
            windows.extend(h.windows());
        } else if !h.org_id.is_empty() {
            // A settlement of a closed hold still answers its owner's balance.
            owners.insert((h.org_id.clone(), h.user_id.clone()));
        }
    }
    let keys = named_keys_json(&owners, &windows);
    let stmts = if pg_lock {
        rows_named(&owners, &windows, &order)
    } else {
        vec![Stmt {
            sql: ROWS_NAMED_PG.into(),
            vals: keys.iter().map(|k| Val::Text(k)).collect(),
            expect: 0,
        }]
    };
    for r in txn.fetch(stmts).await? {
        take(book, &r)?;
    }
    Ok(None)
}

/// PostgreSQL, optimistic attempt: the quota windows, organisations and allocations named,
/// in one round trip — one statement whose text never changes (prepared once per connection,
/// planned once), the keys passed as JSON (`named_keys_json`), each row tagged and widened to
/// the union's columns. (A `UNION ALL` of statements sized to the batch was tried: planned
/// afresh for every batch, it doubled the backends' CPU.) Plans checked with a generic plan on
/// 200,000 quota windows, 5,000 organisations and 50,000 allocations: index lookups for each
/// (the organisations through `= ANY(ARRAY(…))`, which a join on the JSON's rows turned into
/// a scan of the whole table). The locked attempt reads with `rows_named`, which orders the
/// rows it locks.
const ROWS_NAMED_PG: &str = "\
SELECT 'q' AS t, NULL::text AS id, q.user_id, q.kind, q.window_start, q.used, q.reserved, \
       NULL::bigint AS credits_total, NULL::bigint AS credits_used, NULL::bigint AS credits_held, \
       NULL::text AS org_id, NULL::bigint AS allocated, NULL::bigint AS held \
FROM json_to_recordset($1::json) AS k(user_id text, kind text, window_start bigint) \
JOIN quota_usage q ON q.user_id = k.user_id AND q.kind = k.kind AND q.window_start = k.window_start \
UNION ALL \
SELECT 'o', o.id, NULL, NULL, NULL, NULL, NULL, o.credits_total, o.credits_used, o.credits_held, \
       NULL, NULL, NULL \
FROM organizations o WHERE o.id = ANY(ARRAY(SELECT json_array_elements_text($2::json))) \
UNION ALL \
SELECT 'a', NULL, a.user_id, NULL, NULL, a.used, NULL, NULL, NULL, NULL, a.org_id, a.allocated, a.held \
FROM json_to_recordset($3::json) AS k(org_id text, user_id text) \
JOIN allocations a ON a.org_id = k.org_id AND a.user_id = k.user_id";

/// The keys [`ROWS_NAMED_PG`] reads, as JSON (any character an id may hold is safe): the
/// quota windows, the organisations, the (organisation, user) allocations.
fn named_keys_json(
    owners: &BTreeSet<(String, String)>,
    windows: &BTreeSet<QuotaKey>,
) -> [String; 3] {
    let w: Vec<serde_json::Value> = windows
        .iter()
        .map(|(u, k, s)| serde_json::json!({"user_id": u, "kind": k.as_str(), "window_start": s}))
        .collect();
    let orgs: BTreeSet<&str> = owners.iter().map(|(o, _)| o.as_str()).collect();
    let a: Vec<serde_json::Value> = owners
        .iter()
        .map(|(o, u)| serde_json::json!({"org_id": o, "user_id": u}))
        .collect();
    [
        serde_json::Value::from(w).to_string(),
        serde_json::json!(orgs).to_string(),
        serde_json::Value::from(a).to_string(),
    ]
}

/// Reads of the quota windows, organisations and allocations named, each row tagged.
fn rows_named<'a>(
    owners: &'a BTreeSet<(String, String)>,
    windows: &'a BTreeSet<QuotaKey>,
    order: &impl Fn(&str) -> String,
) -> Vec<Stmt<'a>> {
    let window_keys: Vec<Vec<Val>> = windows
        .iter()
        .map(|(u, k, s)| vec![Val::Text(u), Val::Text(k.as_str()), Val::Int(*s)])
        .collect();
    let mut stmts = chunked(&window_keys, |n| {
        format!(
            "SELECT 'q' AS t, user_id, kind, window_start, used, reserved FROM quota_usage WHERE (user_id, kind, window_start) IN (VALUES {}){}",
            placeholders(n, 3),
            order(r#"user_id COLLATE "C", CASE kind WHEN 'period' THEN 0 ELSE 1 END, window_start"#)
        )
    });
    let orgs: BTreeSet<&str> = owners.iter().map(|(o, _)| o.as_str()).collect();
    let org_keys: Vec<Vec<Val>> = orgs.iter().map(|o| vec![Val::Text(o)]).collect();
    stmts.extend(chunked(&org_keys, |n| {
        format!(
            "SELECT 'o' AS t, {ORG_COLUMNS} FROM organizations WHERE id IN ({}){}",
            list(n),
            order(r#"id COLLATE "C""#)
        )
    }));
    let owner_keys: Vec<Vec<Val>> = owners
        .iter()
        .map(|(o, u)| vec![Val::Text(o), Val::Text(u)])
        .collect();
    stmts.extend(chunked(&owner_keys, |n| {
        format!(
            "SELECT 'a' AS t, {ALLOCATION_COLUMNS} FROM allocations WHERE (org_id, user_id) IN (VALUES {}){}",
            placeholders(n, 2),
            order(r#"org_id COLLATE "C", user_id COLLATE "C""#)
        )
    }));
    stmts
}

/// SQLite: reads of the quota windows, organisations and allocations the holds `keys` point
/// to, joined on the holds in the same trip that reads them (a superset of what a settlement
/// needs: a closed hold's windows too, which the book reads and leaves alone).
fn rows_of_holds<'a>(keys: &[Vec<Val<'a>>]) -> Vec<Stmt<'a>> {
    let (period, day) = (WindowKind::Period.as_str(), WindowKind::Day.as_str());
    let mut stmts = chunked(keys, |n| {
        format!(
            "SELECT 'q' AS t, q.user_id AS user_id, q.kind AS kind, q.window_start AS window_start, q.used AS used, q.reserved AS reserved \
             FROM quota_usage q JOIN holds h ON h.user_id = q.user_id \
             AND q.window_start = CASE q.kind WHEN '{period}' THEN h.period_start WHEN '{day}' THEN h.day_start END \
             WHERE h.id IN ({})",
            list(n)
        )
    });
    stmts.extend(chunked(keys, |n| {
        format!(
            "SELECT 'o' AS t, {ORG_COLUMNS} FROM organizations WHERE id IN (SELECT org_id FROM holds WHERE id IN ({}))",
            list(n)
        )
    }));
    stmts.extend(chunked(keys, |n| {
        format!(
            "SELECT 'a' AS t, {ALLOCATION_COLUMNS} FROM allocations WHERE (org_id, user_id) IN (SELECT org_id, user_id FROM holds WHERE id IN ({}))",
            list(n)
        )
    }));
    stmts
}

const ORG_COLUMNS: &str = "id, credits_total, credits_used, credits_held";
const ALLOCATION_COLUMNS: &str = "org_id, user_id, allocated, used, held";

/// Takes one tagged row into the book.
fn take(book: &mut Book, r: &AnyRow) -> Result<(), sqlx::Error> {
    let tag: String = r.try_get("t")?;
    match tag.as_str() {
        "h" => {
            let h = hold_row(r)?;
            book.holds.insert(h.id.clone(), h);
        }
        "q" => {
            let kind: String = r.try_get("kind")?;
            if let Some(kind) = WindowKind::ALL.into_iter().find(|k| k.as_str() == kind) {
                book.calls.insert(
                    (r.try_get("user_id")?, kind, r.try_get("window_start")?),
                    Tracked::stored(Calls {
                        used: r.try_get("used")?,
                        reserved: r.try_get("reserved")?,
                    }),
                );
            }
        }
        "o" => {
            book.pools.insert(
                r.try_get("id")?,
                Tracked::stored(Pool {
                    total: r.try_get("credits_total")?,
                    used: r.try_get("credits_used")?,
                    held: r.try_get("credits_held")?,
                }),
            );
        }
        _ => {
            book.allocations.insert(
                (r.try_get("org_id")?, r.try_get("user_id")?),
                Tracked::stored(Pool {
                    total: r.try_get("allocated")?,
                    used: r.try_get("used")?,
                    held: r.try_get("held")?,
                }),
            );
        }
    }
    Ok(())
}

/// A usage line's outcome, in the column order both its insert and its correction use:
/// prompt_tokens, completion_tokens, images, cost, outcome, upstream_status, latency_ms.
fn outcome_vals(u: &UsageLine) -> [Val<'_>; 7] {
    [
        Val::Int(u.prompt_tokens),
        Val::Int(u.completion_tokens),
        Val::Int(u.images),
        Val::Int(u.cost),
        Val::Text(u.outcome.as_str()),
        Val::Int(u.upstream_status),
        Val::Int(u.latency_ms),
    ]
}

/// Writes the book's changes, in one trip on SQLite. `false` when a row moved since it was
/// read (a conditional statement changed fewer rows than it should have): the caller rolls
/// back and retries.
async fn write(txn: &mut Txn<'_>, book: &Book, key_uses: &KeyUses) -> Result<bool, sqlx::Error> {
    let mut stmts = Vec::new();
    // Last uses of user API keys: a key revoked or deleted meanwhile changes no row (a call
    // refused after the revocation records no use).
    for (digest, at) in key_uses {
        stmts.push(Stmt {
            sql: "UPDATE api_keys SET last_used_at = $1 WHERE digest = $2 AND revoked_at IS NULL \
                  AND (last_used_at IS NULL OR last_used_at < $1)"
                .into(),
            vals: vec![Val::Int(*at), Val::Text(digest)],
            expect: ANY_ROWS,
        });
    }
    // New holds and tombstones; an id taken meanwhile conflicts. A hold placed and closed in
    // the same batch is inserted as it ended: no statement of a batch touches a row another
    // one writes (PostgreSQL's single write statement could not update a row it inserts).
    let ended: BTreeMap<&str, &Closed> = book.closed.iter().map(|c| (c.id.as_str(), c)).collect();
    let placed: BTreeSet<&str> = book.new_holds.iter().map(|h| h.id.as_str()).collect();
    let rows: Vec<Vec<Val>> = book
        .new_holds
        .iter()
        .map(|h| {
            let end = ended.get(h.id.as_str());
            vec![
                Val::Text(&h.id),
                Val::Text(&h.org_id),
                Val::Text(&h.user_id),
                Val::Int(h.amount),
                Val::OptInt(end.map_or(h.charged, |c| Some(c.charged))),
                Val::Text(end.map_or(h.status, |c| c.status).as_str()),
                Val::Text(&h.model),
                Val::Text(&h.provider),
                Val::Text(&h.rate),
                Val::Int(i64::from(h.byok)),
                Val::Int(i64::from(h.has_allocation)),
                Val::OptInt(h.day_start),
                Val::OptInt(h.period_start),
                Val::Int(h.created_at),
                Val::Int(h.expires_at),
                Val::OptInt(end.map_or(h.settled_at, |c| Some(c.at))),
            ]
        })
        .collect();
    stmts.extend(insert(
        "holds",
        HOLD_COLUMNS,
        &rows,
        " ON CONFLICT DO NOTHING",
    ));

    // Holds closed, each only if still open.
    let rows: Vec<Vec<Val>> = book
        .closed
        .iter()
        .filter(|c| !placed.contains(c.id.as_str()))
        .map(|c| {
            vec![
                Val::Text(&c.id),
                Val::Text(c.status.as_str()),
                Val::Int(c.charged),
                Val::Int(c.at),
            ]
        })
        .collect();
    let held = HoldStatus::Held.as_str();
    stmts.extend(chunked(&rows, |n| {
        format!(
            "WITH v (id, status, charged, at) AS (VALUES {}) \
             UPDATE holds SET status = v.status, charged = v.charged, settled_at = v.at \
             FROM v WHERE holds.id = v.id AND holds.status = '{held}'",
            placeholders(n, 4)
        )
    }));

    // Expired holds settled late: only if still as expiry left them.
    let expired = HoldStatus::Expired.as_str();
    for (c, u) in &book.corrected {
        stmts.push(Stmt {
            sql: format!(
                "UPDATE holds SET status = $1, charged = $2, settled_at = $3 WHERE id = $4 AND status = '{expired}'"
            ),
            vals: vec![
                Val::Text(c.status.as_str()),
                Val::Int(c.charged),
                Val::Int(c.at),
                Val::Text(&c.id),
            ],
            expect: 1,
        });
        stmts.push(Stmt {
            sql: "UPDATE usage_logs SET prompt_tokens = $1, completion_tokens = $2, images = $3, cost = $4, outcome = $5, upstream_status = $6, latency_ms = $7 WHERE hold_id = $8".into(),
            vals: outcome_vals(u)
                .into_iter()
                .chain([Val::Text(&u.hold_id)])
                .collect(),
            expect: 1,
        });
    }

    let rows: Vec<Vec<Val>> = book
        .entries
        .iter()
        .map(|e| {
            vec![
                Val::Text(&e.org_id),
                Val::Text(&e.user_id),
                Val::Text(e.kind.as_str()),
                Val::Int(e.amount),
                Val::Text(&e.hold_id),
                Val::Int(e.at),
            ]
        })
        .collect();
    stmts.extend(insert(
        "ledger",
        "org_id, user_id, kind, amount, hold_id, at",
        &rows,
        "",
    ));

    let rows: Vec<Vec<Val>> = book
        .usage
        .iter()
        .map(|u| {
            let mut row = vec![
                Val::Text(&u.hold_id),
                Val::Text(&u.org_id),
                Val::Text(&u.user_id),
                Val::Text(&u.model),
                Val::Text(&u.provider),
            ];
            row.extend(outcome_vals(u));
            row.extend([Val::Int(i64::from(u.byok)), Val::Int(u.created_at)]);
            row
        })
        .collect();
    stmts.extend(insert(
        "usage_logs",
        "hold_id, org_id, user_id, model, provider, prompt_tokens, completion_tokens, images, cost, outcome, upstream_status, latency_ms, byok, created_at",
        &rows,
        "",
    ));

    // The contended rows last, in lock order (quota windows, organisations, allocations),
    // each as one conditional delta: held only from here to the commit.
    let mut new_windows = Vec::new();
    for (key, t) in &book.calls {
        let (du, dr) = (t.now.used - t.read.used, t.now.reserved - t.read.reserved);
        if !t.exists {
            new_windows.push((key, t.now));
            continue;
        }
        if du == 0 && dr == 0 {
            continue;
        }
        let limit = book.limits.get(key).copied().unwrap_or(i64::MAX);
        let (user, kind, start) = key;
        stmts.push(Stmt {
            sql: "UPDATE quota_usage SET used = used + $1, reserved = reserved + $2 \
                  WHERE user_id = $3 AND kind = $4 AND window_start = $5 AND used + reserved + $1 + $2 <= $6"
                .into(),
            vals: vec![
                Val::Int(du),
                Val::Int(dr),
                Val::Text(user),
                Val::Text(kind.as_str()),
                Val::Int(*start),
                Val::Int(limit),
            ],
            expect: 1,
        });
    }
    let rows: Vec<Vec<Val>> = new_windows
        .iter()
        .map(|((u, k, s), c)| {
            vec![
                Val::Text(u),
                Val::Text(k.as_str()),
                Val::Int(*s),
                Val::Int(c.used),
                Val::Int(c.reserved),
            ]
        })
        .collect();
    stmts.extend(insert(
        "quota_usage",
        "user_id, kind, window_start, used, reserved",
        &rows,
        " ON CONFLICT DO NOTHING",
    ));
    for (org, t) in &book.pools {
        let (du, dh) = (t.now.used - t.read.used, t.now.held - t.read.held);
        if du == 0 && dh == 0 {
            continue;
        }
        stmts.push(Stmt {
            sql: "UPDATE organizations SET credits_used = credits_used + $1, credits_held = credits_held + $2 \
                  WHERE id = $3 AND credits_total - credits_used - credits_held >= $1 + $2"
                .into(),
            vals: vec![Val::Int(du), Val::Int(dh), Val::Text(org)],
            expect: 1,
        });
    }
    for ((org, user), t) in &book.allocations {
        let (du, dh) = (t.now.used - t.read.used, t.now.held - t.read.held);
        if du == 0 && dh == 0 {
            continue;
        }
        stmts.push(Stmt {
            sql: "UPDATE allocations SET used = used + $1, held = held + $2 \
                  WHERE org_id = $3 AND user_id = $4 AND allocated - used - held >= $1 + $2"
                .into(),
            vals: vec![Val::Int(du), Val::Int(dh), Val::Text(org), Val::Text(user)],
            expect: 1,
        });
    }
    txn.commit_writes(stmts).await
}
