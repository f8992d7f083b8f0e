//! SQLite: the ledger rows as the writer last committed them, so a batch whose rows are all
//! known skips its read trip and costs one trip to the connection's worker thread (writes
//! and `COMMIT`) instead of two.
//!
//! Exact, not a cache that may lag: on SQLite the writer's connection is the only one that
//! writes these rows in the ledger's way, and anything else that commits to the database
//! file (an admin top-up, another process, a session purge) changes the connection's
//! `PRAGMA data_version`. The mirror is tagged with the version it was read at, and a batch
//! decided on it writes behind a guard that aborts the trip before its `COMMIT` when the
//! version moved; the writer then drops the mirror and decides the batch again on rows read
//! inside the transaction, as without a mirror. A batch that names a row the mirror does not
//! hold (a hold placed before the mirror started, a settlement of a closed hold) reads too.
//!
//! Only open holds are kept: a hold leaves the mirror when it closes. The mirror starts over
//! when it grows past [`MAX_ROWS`] (quota windows roll over each day).

use super::book::{AllocKey, Book, Calls, HoldRow, Job, OrgId, Pool, QuotaKey, Tracked};
use super::holds::HoldStatus;
use std::collections::{BTreeMap, BTreeSet};

/// The most rows the mirror keeps before it starts over.
const MAX_ROWS: usize = 100_000;

#[derive(Debug, Default)]
pub(super) struct Mirror {
    /// The writer connection's `data_version` when the rows were read.
    pub version: i64,
    holds: BTreeMap<String, HoldRow>,
    pools: BTreeMap<OrgId, Pool>,
    /// `None`: known to have no row.
    allocations: BTreeMap<AllocKey, Option<Pool>>,
    calls: BTreeMap<QuotaKey, Option<Calls>>,
}

/// The rows a batch's decisions read, besides its holds: the owners (organisation, user) and
/// quota windows its authorizes name and its open holds point to.
pub(super) struct Wanted {
    pub owners: BTreeSet<AllocKey>,
    pub windows: BTreeSet<QuotaKey>,
}

/// What `jobs` read, once `holds` (those they name, as stored) are known.
pub(super) fn wanted<'h>(jobs: &[Job], holds: impl Iterator<Item = &'h HoldRow>) -> Wanted {
    let mut w = Wanted {
        owners: BTreeSet::new(),
        windows: BTreeSet::new(),
    };
    for job in jobs {
        if let Job::Authorize(a) = job {
            w.owners.insert((a.org_id.clone(), a.user_id.clone()));
            for q in &a.windows {
                w.windows
                    .insert((a.user_id.clone(), q.kind, q.window.start));
            }
        }
    }
    for h in holds {
        if !h.org_id.is_empty() {
            w.owners.insert((h.org_id.clone(), h.user_id.clone()));
        }
        w.windows.extend(h.windows());
    }
    w
}

impl Mirror {
    pub fn new(version: i64) -> Mirror {
        Mirror {
            version,
            ..Mirror::default()
        }
    }

    /// The book for `jobs` from the mirror alone (and what they read), or `None` when a row
    /// they read is not in it.
    pub fn book_for(&self, jobs: &[Job]) -> Option<(Book, Wanted)> {
        let mut book = Book::default();
        for job in jobs {
            if !matches!(job, Job::Authorize(_)) {
                let id = job.hold_id();
                book.holds
                    .insert(id.to_string(), self.holds.get(id)?.clone());
            }
        }
        let wanted = wanted(jobs, book.holds.values());
        for (org, user) in &wanted.owners {
            book.pools
                .insert(org.clone(), Tracked::stored(*self.pools.get(org)?));
            let key = (org.clone(), user.clone());
            if let Some(a) = self.allocations.get(&key)? {
                book.allocations.insert(key, Tracked::stored(*a));
            }
        }
        for key in &wanted.windows {
            if let Some(c) = self.calls.get(key)? {
                book.calls.insert(key.clone(), Tracked::stored(*c));
            }
        }
        Some((book, wanted))
    }

    /// Takes in a committed batch: the rows it read and wrote, as its decisions left them.
    /// `wanted` is what the batch read (rows it did not find have none).
    pub fn absorb(&mut self, book: &Book, wanted: &Wanted) {
        for (id, h) in &book.holds {
            if h.status == HoldStatus::Held {
                self.holds.insert(id.clone(), h.clone());
            } else {
                self.holds.remove(id);
            }
        }
        for (org, p) in &book.pools {
            self.pools.insert(org.clone(), p.now);
        }
        for key in &wanted.owners {
            self.allocations
                .insert(key.clone(), book.allocations.get(key).map(|a| a.now));
        }
        for key in wanted.windows.iter().chain(book.calls.keys()) {
            self.calls
                .insert(key.clone(), book.calls.get(key).map(|c| c.now));
        }
    }

    /// Too many rows to keep: the writer starts a new mirror from its next reads.
    pub fn too_large(&self) -> bool {
        self.holds.len() + self.pools.len() + self.allocations.len() + self.calls.len() > MAX_ROWS
    }
}
