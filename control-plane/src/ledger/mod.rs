//! The credit ledger: holds, settlement, expiry and quota reservations.
//!
//! No overspend, whatever the concurrency or the number of replicas: a hold is placed by a
//! conditional `UPDATE … WHERE total - used - held >= amount` inside one transaction that also
//! reserves the quota slots, so the database itself refuses whatever would overdraw.

mod authorize;
mod balance;
mod entries;
mod holds;
mod quota;
mod routing;

use crate::catalogue::Catalogue;
use opsgate_core::plan::Plan;

pub use authorize::authorize;
pub use balance::{balance_after_hold, spendable};
pub use entries::recompute_org;
pub use holds::{expire_holds, settle, HoldStatus, UsageOutcome};
pub use quota::WindowKind;
pub use routing::Routing;

/// Plan limits snapshot for a user, for `/credits`.
pub fn monthly_cap(catalogue: &Catalogue, plan: Plan) -> Option<u64> {
    catalogue.plan(plan).period_calls
}
