//! The credit ledger: holds, settlement, expiry and quota reservations.
//!
//! No overspend, whatever the concurrency or the number of replicas: holds, settlements and
//! expiries go through one writer per process (`writer.rs`) that applies a batch of them in
//! one transaction, each balance and quota window moved by a conditional delta
//! (`UPDATE … WHERE total - used - held >= delta`), so the database itself refuses whatever
//! would overdraw; the decisions themselves are made in memory (`book.rs`).

mod authorize;
mod balance;
mod book;
mod entries;
mod holds;
mod mirror;
mod quota;
mod routing;
mod sql;
mod writer;

use crate::catalogue::Catalogue;
use opsgate_core::plan::Plan;

pub use authorize::{authorize, authorize_in, authorize_with};
pub use balance::spendable;
pub use entries::recompute_org;
pub use holds::{expire_holds, open_holds, settle, settle_many, HoldStatus, Settled, UsageOutcome};
pub use quota::WindowKind;
pub use routing::Routing;
pub use sql::SQLITE_GUARD;
pub use writer::{note_key_use, Arriving, Queue};

/// Plan limits snapshot for a user, for `/credits`.
pub fn monthly_cap(catalogue: &Catalogue, plan: Plan) -> Option<u64> {
    catalogue.plan(plan).period_calls
}
