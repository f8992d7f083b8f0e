//! The ledger's decisions for one batch, in memory. The writer (`writer.rs`) reads every row
//! a batch touches, this module decides each job in arrival order against those rows —
//! places or refuses holds, settles, expires — and records what changed; the writer then
//! applies the changes as conditional deltas and commits once for the whole batch.
//!
//! No I/O here, and no money arithmetic of its own: hold sizing and charging are core's
//! (`opsgate_core::metering`); this module only moves the amounts core decided between the
//! balances, exactly as the per-call transactions did before batching.

use super::balance::insufficient;
use super::holds::{HoldStatus, UsageOutcome};
use super::quota::{window_full, QuotaWindow, WindowKind};
use crate::error::AppError;
use crate::store::EntryKind;
use opsgate_core::contract::{Outcome, Settlement, WindowLimit};
use opsgate_core::metering::{self, HoldRequest};
use opsgate_core::money::MilliCredits;
use opsgate_core::pricing::RateCard;
use std::collections::BTreeMap;

/// An organisation's pool as read: credits granted, charged, set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Pool {
    pub total: i64,
    pub used: i64,
    pub held: i64,
}

impl Pool {
    fn available(&self) -> i64 {
        self.total - self.used - self.held
    }
}

/// A window's call counts as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Calls {
    pub used: i64,
    pub reserved: i64,
}

/// A hold as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HoldRow {
    pub id: String,
    pub org_id: String,
    pub user_id: String,
    pub amount: i64,
    pub charged: Option<i64>,
    pub status: HoldStatus,
    pub model: String,
    pub provider: String,
    /// The rate card as JSON (empty for a tombstone).
    pub rate: String,
    pub byok: bool,
    pub has_allocation: bool,
    pub day_start: Option<i64>,
    pub period_start: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
    pub settled_at: Option<i64>,
}

impl HoldRow {
    /// The quota windows this hold reserved a slot in, in lock order.
    pub fn windows(&self) -> impl Iterator<Item = QuotaKey> + '_ {
        WindowKind::ALL.into_iter().filter_map(|kind| {
            let start = match kind {
                WindowKind::Period => self.period_start,
                WindowKind::Day => self.day_start,
            };
            start.map(|s| (self.user_id.clone(), kind, s))
        })
    }
}

pub(super) type OrgId = String;
/// (organisation, user)
pub(super) type AllocKey = (String, String);
/// (user, window kind, window start)
pub(super) type QuotaKey = (String, WindowKind, i64);

/// An authorize, routed and priced: everything but the balances and the quota counts.
pub(super) struct AuthorizeJob {
    pub hold_id: String,
    pub org_id: String,
    pub user_id: String,
    pub windows: Vec<QuotaWindow>,
    pub rate: RateCard,
    pub request: HoldRequest,
    pub max_output_tokens: Option<u64>,
    pub byok: bool,
    pub model: String,
    pub provider: String,
    pub now: i64,
    pub expires_at: i64,
    /// The writer's epoch the caller was read in, when it was read before this call
    /// (`callers.rs`): the hold is placed only if the database has not moved since.
    pub caller_epoch: Option<u64>,
}

/// One unit of work for the writer.
pub(super) enum Job {
    Authorize(Box<AuthorizeJob>),
    Settle {
        settlement: Settlement,
        now: i64,
    },
    /// Close a hold past its expiry (the sweeper).
    Expire {
        hold_id: String,
        now: i64,
    },
}

impl Job {
    /// The hold this job reads or creates.
    pub fn hold_id(&self) -> &str {
        match self {
            Job::Authorize(a) => &a.hold_id,
            Job::Settle { settlement, .. } => &settlement.hold_id,
            Job::Expire { hold_id, .. } => hold_id,
        }
    }
}

/// A placed hold, for the grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Placed {
    pub hold: metering::Hold,
    pub limits: Vec<(WindowKind, WindowLimit)>,
    /// What the user can spend once this hold is placed.
    pub balance: i64,
}

/// What a job came to.
#[derive(Debug)]
pub(super) enum Answer {
    Placed(Placed),
    /// Settled (or found already closed): what the hold was charged, and the hold's owner.
    Settled {
        charged: i64,
        owner: Option<AllocKey>,
        /// What the owner can spend once the whole batch is applied (filled by the writer).
        balance: Option<i64>,
        /// (provider, model) when this settlement charged the call (not a duplicate, a
        /// tombstone or a correction of an expiry), for the charged-credits metric.
        metered: Option<(String, String)>,
    },
    /// Expired now (`true`) or found already closed.
    Expired(bool),
    Refused(AppError),
    /// Not decided: the caller was read before the database last moved; read it again.
    StaleCaller,
}

/// Whether a refusal came from a balance or a quota count (a stale read could have caused
/// it; the writer re-decides such a batch on locked rows before answering it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RefusalKind {
    Counts,
    Other,
}

/// A ledger line to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub org_id: String,
    pub user_id: String,
    pub kind: EntryKind,
    pub amount: i64,
    pub hold_id: String,
    pub at: i64,
}

/// A usage log line to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UsageLine {
    pub hold_id: String,
    pub org_id: String,
    pub user_id: String,
    pub model: String,
    pub provider: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub images: i64,
    pub cost: i64,
    pub outcome: UsageOutcome,
    pub upstream_status: i64,
    pub latency_ms: i64,
    pub byok: bool,
    pub created_at: i64,
}

/// A hold closed by this batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Closed {
    pub id: String,
    pub status: HoldStatus,
    pub charged: i64,
    pub at: i64,
}

/// A row as read and where it stands now: the writer applies `now - read` as a delta to a
/// row that exists, and inserts one that does not (`read` is then all zeros).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tracked<T> {
    pub read: T,
    pub now: T,
    pub exists: bool,
}

impl<T: Copy + Default> Tracked<T> {
    /// A row read from the database.
    pub fn stored(read: T) -> Self {
        Tracked {
            read,
            now: read,
            exists: true,
        }
    }

    /// A row this batch creates.
    pub fn fresh() -> Self {
        Tracked {
            read: T::default(),
            now: T::default(),
            exists: false,
        }
    }
}

/// The rows a batch reads, and what its decisions change.
#[derive(Default)]
pub(super) struct Book {
    pub holds: BTreeMap<String, HoldRow>,
    pub pools: BTreeMap<OrgId, Tracked<Pool>>,
    pub allocations: BTreeMap<AllocKey, Tracked<Pool>>,
    pub calls: BTreeMap<QuotaKey, Tracked<Calls>>,
    /// The largest limit an admitted call was checked against, per window (the writer's
    /// conditional update keeps the window within it whatever other replicas did).
    pub limits: BTreeMap<QuotaKey, i64>,
    pub new_holds: Vec<HoldRow>,
    pub closed: Vec<Closed>,
    /// Expired holds whose real outcome arrived late, with their rewritten usage line.
    pub corrected: Vec<(Closed, UsageLine)>,
    pub entries: Vec<Entry>,
    pub usage: Vec<UsageLine>,
    /// Set when a refusal rested on a balance or a quota count.
    pub refused_on_counts: bool,
}

impl Book {
    /// What a user can spend now: the smaller of the pool and their allocation.
    pub fn spendable(&self, org_id: &str, user_id: &str) -> Option<i64> {
        let (pool, alloc) = self.available(org_id, user_id)?;
        Some(alloc.map_or(pool, |a| a.min(pool)).max(0))
    }

    /// What the organisation's pool and the user's allocation (if any) have left now.
    fn available(&self, org_id: &str, user_id: &str) -> Option<(i64, Option<i64>)> {
        let pool = self.pools.get(org_id)?.now.available();
        let alloc = self
            .allocations
            .get(&(org_id.to_string(), user_id.to_string()))
            .map(|a| a.now.available());
        Some((pool, alloc))
    }

    /// Moves credits of a user's pool (and allocation, when the hold has one) between held
    /// and used.
    fn move_credits(&mut self, row: &HoldRow, held: i64, used: i64) {
        if let Some(p) = self.pools.get_mut(&row.org_id) {
            p.now.held += held;
            p.now.used += used;
        }
        if row.has_allocation {
            if let Some(a) = self
                .allocations
                .get_mut(&(row.org_id.clone(), row.user_id.clone()))
            {
                a.now.held += held;
                a.now.used += used;
            }
        }
    }

    /// A quota window's counts, created (to be inserted) when it has no row yet.
    fn window(&mut self, key: QuotaKey) -> &mut Calls {
        &mut self.calls.entry(key).or_insert_with(Tracked::fresh).now
    }

    /// Decides one job against the rows as they stand after the jobs before it.
    pub fn decide(&mut self, job: &Job) -> Answer {
        match job {
            Job::Authorize(a) => match self.authorize(a) {
                Ok(placed) => Answer::Placed(placed),
                Err((e, kind)) => {
                    if kind == RefusalKind::Counts {
                        self.refused_on_counts = true;
                    }
                    Answer::Refused(e)
                }
            },
            Job::Settle { settlement, now } => match self.settle(settlement, *now) {
                Ok(a) => a,
                Err(e) => Answer::Refused(e),
            },
            Job::Expire { hold_id, now } => match self.expire(hold_id, *now) {
                Ok(done) => Answer::Expired(done),
                Err(e) => Answer::Refused(e),
            },
        }
    }

    fn authorize(&mut self, a: &AuthorizeJob) -> Result<Placed, (AppError, RefusalKind)> {
        let other = |e: AppError| (e, RefusalKind::Other);
        if self.holds.contains_key(&a.hold_id) {
            return Err(other(AppError::bad_request(format!(
                "Request {} was already decided or cancelled.",
                a.hold_id
            ))));
        }
        let (pool, alloc) = self.available(&a.org_id, &a.user_id).ok_or_else(|| {
            other(AppError::internal(format!(
                "user {} has no organization",
                a.user_id
            )))
        })?;
        let spendable = alloc.map_or(pool, |al| al.min(pool)).max(0);
        let hold = metering::hold_for(
            &a.rate,
            &a.request,
            a.max_output_tokens,
            MilliCredits(spendable),
            a.byok,
        )
        .map_err(|e| {
            let mut refused = insufficient(spendable, e.needed.0, alloc.is_none_or(|al| pool <= al));
            if e.explicit_bound {
                // An explicit bound is never quietly reduced: say what would fit.
                refused.0.message.push_str(
                    ". The request's max_tokens is more than the balance covers: lower max_tokens, or omit it to let the gateway choose a bound the balance affords",
                );
            }
            (refused, RefusalKind::Counts)
        })?;
        // Every window must have room before any slot is taken.
        let mut limits = Vec::with_capacity(a.windows.len());
        for w in &a.windows {
            let key = (a.user_id.clone(), w.kind, w.window.start);
            let calls = self.calls.get(&key).map(|c| c.now).unwrap_or_default();
            let taken = calls.used + calls.reserved;
            if taken >= w.limit as i64 {
                return Err((window_full(w, taken, a.now), RefusalKind::Counts));
            }
            limits.push((
                w.kind,
                WindowLimit {
                    limit: w.limit,
                    remaining: w.limit.saturating_sub((taken + 1) as u64),
                    reset: w.window.end,
                },
            ));
        }
        for w in &a.windows {
            let key = (a.user_id.clone(), w.kind, w.window.start);
            let limit = self.limits.entry(key.clone()).or_insert(0);
            *limit = (*limit).max(w.limit as i64);
            self.window(key).reserved += 1;
        }
        let amount = hold.amount.0;
        let rate = serde_json::to_string(&a.rate).map_err(|e| other(AppError::internal(e)))?;
        let window = |kind: WindowKind| {
            a.windows
                .iter()
                .find(|w| w.kind == kind)
                .map(|w| w.window.start)
        };
        let row = HoldRow {
            id: a.hold_id.clone(),
            org_id: a.org_id.clone(),
            user_id: a.user_id.clone(),
            amount,
            charged: None,
            status: HoldStatus::Held,
            model: a.model.clone(),
            provider: a.provider.clone(),
            rate,
            byok: a.byok,
            has_allocation: alloc.is_some(),
            day_start: window(WindowKind::Day),
            period_start: window(WindowKind::Period),
            created_at: a.now,
            expires_at: a.expires_at,
            settled_at: None,
        };
        self.move_credits(&row, amount, 0);
        self.entry(&row, EntryKind::Hold, amount, a.now);
        self.holds.insert(row.id.clone(), row.clone());
        self.new_holds.push(row);
        Ok(Placed {
            hold,
            limits,
            balance: self.spendable(&a.org_id, &a.user_id).unwrap_or(0),
        })
    }

    fn settle(&mut self, s: &Settlement, now: i64) -> Result<Answer, AppError> {
        let Some(row) = self.holds.get(&s.hold_id).cloned() else {
            if s.outcome == Outcome::Failed {
                // The filter gave up on a call before its decision arrived: a tombstone under
                // the id makes an authorize still on its way place nothing.
                let tomb = HoldRow {
                    id: s.hold_id.clone(),
                    org_id: String::new(),
                    user_id: String::new(),
                    amount: 0,
                    charged: Some(0),
                    status: HoldStatus::Cancelled,
                    model: String::new(),
                    provider: String::new(),
                    rate: String::new(),
                    byok: false,
                    has_allocation: false,
                    day_start: None,
                    period_start: None,
                    created_at: now,
                    expires_at: now,
                    settled_at: Some(now),
                };
                self.holds.insert(tomb.id.clone(), tomb.clone());
                self.new_holds.push(tomb);
                return Ok(Answer::Settled {
                    charged: 0,
                    owner: None,
                    balance: None,
                    metered: None,
                });
            }
            return Err(AppError::not_found(format!("no hold '{}'", s.hold_id)));
        };
        let owner = Some((row.org_id.clone(), row.user_id.clone()));
        if row.status == HoldStatus::Expired {
            // Expiry is provisional: the call's real outcome, arriving late, replaces the
            // charge (never more than the hold expiry took).
            let charged = self.correct(&row, s, now)?;
            return Ok(Answer::Settled {
                charged,
                owner,
                balance: None,
                metered: None,
            });
        }
        if row.status != HoldStatus::Held {
            return Ok(Answer::Settled {
                charged: row.charged.unwrap_or(0),
                owner,
                balance: None,
                metered: None,
            });
        }
        let charged = charge_for(s, &row)?;
        let status = closing_status(s.outcome);
        self.close(&row, charged, status, status == HoldStatus::Settled, now);
        self.usage.push(UsageLine::of(&row, Some(s), charged, now));
        Ok(Answer::Settled {
            charged,
            owner,
            balance: None,
            metered: Some((row.provider.clone(), row.model.clone())),
        })
    }

    /// A settlement for a hold that expired: the charge becomes the call's real cost (0 for a
    /// failed call, whose quota slot is freed too), the difference returned to the balances,
    /// the usage line rewritten. The ledger records the refund as a negative charge and an
    /// equal release, so its sums still give used and held exactly.
    fn correct(&mut self, row: &HoldRow, s: &Settlement, now: i64) -> Result<i64, AppError> {
        let was = row.charged.unwrap_or(row.amount);
        let charged = charge_for(s, row)?.min(was);
        let refund = was - charged;
        let status = closing_status(s.outcome);
        if status == HoldStatus::Released {
            for key in row.windows() {
                self.window(key).used -= 1;
            }
        }
        self.move_credits(row, 0, -refund);
        self.entry(row, EntryKind::Charge, -refund, now);
        self.entry(row, EntryKind::Release, refund, now);
        let closed = self.mark(row, status, charged, now);
        self.corrected
            .push((closed, UsageLine::of(row, Some(s), charged, now)));
        Ok(charged)
    }

    /// Charges a hold past its expiry as held (its outcome never arrived).
    fn expire(&mut self, hold_id: &str, now: i64) -> Result<bool, AppError> {
        let Some(row) = self.holds.get(hold_id).cloned() else {
            return Ok(false);
        };
        if row.status != HoldStatus::Held || row.expires_at > now {
            return Ok(false);
        }
        self.close(&row, row.amount, HoldStatus::Expired, true, now);
        // Charged without a reported outcome: logged so /usage and the analytics show where
        // the credits went.
        self.usage.push(UsageLine::of(&row, None, row.amount, now));
        Ok(true)
    }

    /// Moves an open hold to its final state: charges `charged`, releases the rest, and turns
    /// its reserved quota slots into used ones (`consume`) or frees them.
    fn close(&mut self, row: &HoldRow, charged: i64, status: HoldStatus, consume: bool, now: i64) {
        for key in row.windows() {
            let c = self.window(key);
            c.reserved -= 1;
            c.used += i64::from(consume);
        }
        self.move_credits(row, -row.amount, charged);
        self.entry(row, EntryKind::Charge, charged, now);
        self.entry(row, EntryKind::Release, row.amount - charged, now);
        let closed = self.mark(row, status, charged, now);
        self.closed.push(closed);
    }

    /// Records a hold's final state in the batch's view of it (a later job of the batch sees
    /// it closed); returns the change to write.
    fn mark(&mut self, row: &HoldRow, status: HoldStatus, charged: i64, now: i64) -> Closed {
        if let Some(h) = self.holds.get_mut(&row.id) {
            h.status = status;
            h.charged = Some(charged);
            h.settled_at = Some(now);
        }
        Closed {
            id: row.id.clone(),
            status,
            charged,
            at: now,
        }
    }

    /// A ledger line (none for a zero amount).
    fn entry(&mut self, row: &HoldRow, kind: EntryKind, amount: i64, at: i64) {
        if amount != 0 {
            self.entries.push(Entry {
                org_id: row.org_id.clone(),
                user_id: row.user_id.clone(),
                kind,
                amount,
                hold_id: row.id.clone(),
                at,
            });
        }
    }
}

/// The state a reported outcome closes a hold in.
fn closing_status(outcome: Outcome) -> HoldStatus {
    match outcome {
        Outcome::Failed => HoldStatus::Released,
        Outcome::Success | Outcome::Partial => HoldStatus::Settled,
    }
}

impl UsageLine {
    /// The usage line of a closed hold: what the settlement reported, or — without one, an
    /// expired hold — no tokens and the outcome `expired`.
    fn of(row: &HoldRow, s: Option<&Settlement>, cost: i64, now: i64) -> UsageLine {
        let usage = s.map(|s| s.usage).unwrap_or_default();
        UsageLine {
            hold_id: row.id.clone(),
            org_id: row.org_id.clone(),
            user_id: row.user_id.clone(),
            model: row.model.clone(),
            provider: row.provider.clone(),
            prompt_tokens: usage.prompt_tokens as i64,
            completion_tokens: usage.completion_tokens as i64,
            images: usage.images as i64,
            cost,
            outcome: s.map_or(UsageOutcome::Expired, |s| UsageOutcome::from(s.outcome)),
            upstream_status: s.map_or(0, |s| i64::from(s.upstream_status)),
            latency_ms: s.map_or(0, |s| s.latency_ms as i64),
            byok: row.byok,
            created_at: now,
        }
    }
}

/// What a settlement charges (core::metering::charge, capped by the hold); a provider report
/// past the hold is logged.
fn charge_for(s: &Settlement, row: &HoldRow) -> Result<i64, AppError> {
    let rate: RateCard = serde_json::from_str(&row.rate).map_err(AppError::internal)?;
    let held = MilliCredits(row.amount);
    Ok(match s.outcome {
        Outcome::Failed => 0,
        Outcome::Success | Outcome::Partial => {
            if metering::exceeds_hold(&rate, &s.usage, held, row.byok) {
                tracing::warn!(
                    hold_id = %s.hold_id,
                    reported_mc = rate.cost(&s.usage),
                    held_mc = row.amount,
                    "usage discrepancy: the provider reported more than the hold covered; charged the hold"
                );
            }
            metering::charge(&rate, &s.usage, held, row.byok).0
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opsgate_core::contract::Endpoint;
    use opsgate_core::plan::PowerLevel;
    use opsgate_core::pricing::{Price, Usage};

    fn job(id: &str) -> Job {
        Job::Authorize(Box::new(AuthorizeJob {
            hold_id: id.into(),
            org_id: "o".into(),
            user_id: "u".into(),
            windows: Vec::new(),
            rate: RateCard {
                price: Price {
                    input_per_million: 1_000_000,
                    output_per_million: 1_000_000,
                    per_image: 0,
                },
                power_level: PowerLevel::Balanced,
                markup_percent: 0,
            },
            request: HoldRequest {
                endpoint: Endpoint::ChatCompletions,
                prompt_bytes: 400,
                prompt_images: 0,
                image_tokens_each: 0,
                max_tokens: Some(600),
                images: 0,
            },
            max_output_tokens: None,
            byok: false,
            model: "m".into(),
            provider: "p".into(),
            now: 100,
            expires_at: 1_000,
            caller_epoch: None,
        }))
    }

    fn settle(id: &str, outcome: Outcome) -> Job {
        Job::Settle {
            settlement: Settlement {
                hold_id: id.into(),
                outcome,
                usage: Usage {
                    prompt_tokens: 10,
                    completion_tokens: 20,
                    images: 0,
                },
                upstream_status: 200,
                latency_ms: 5,
            },
            now: 101,
        }
    }

    fn book_with(total: i64) -> Book {
        let mut book = Book::default();
        book.pools.insert(
            "o".into(),
            Tracked::stored(Pool {
                total,
                used: 0,
                held: 0,
            }),
        );
        book
    }

    fn hold_amount() -> i64 {
        match book_with(i64::MAX / 4).decide(&job("probe")) {
            Answer::Placed(p) => p.hold.amount.0,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn jobs_are_decided_in_order_against_the_batchs_own_changes() {
        let amount = hold_amount();
        let mut book = book_with(2 * amount + amount / 2);
        let answers: Vec<Answer> = ["a", "b", "c"].map(|id| book.decide(&job(id))).into();
        assert!(matches!(answers[0], Answer::Placed(_)));
        assert!(matches!(&answers[1], Answer::Placed(p) if p.balance == amount / 2));
        assert!(matches!(&answers[2], Answer::Refused(e) if e.0.status() == 402));
        assert!(
            book.refused_on_counts,
            "a balance refusal is re-decided on locked rows"
        );
        assert_eq!(book.pools["o"].now.held, 2 * amount);
        assert_eq!(book.new_holds.len(), 2);
        assert_eq!(book.entries.len(), 2);
    }

    #[test]
    fn a_tombstone_earlier_in_the_batch_refuses_the_authorize() {
        let mut book = book_with(i64::MAX / 4);
        assert!(matches!(
            book.decide(&settle("t", Outcome::Failed)),
            Answer::Settled { charged: 0, .. }
        ));
        assert!(matches!(book.decide(&job("t")), Answer::Refused(e) if e.0.status() == 400));
        assert_eq!(book.pools["o"].now, book.pools["o"].read, "nothing held");
        assert_eq!(book.new_holds[0].status, HoldStatus::Cancelled);
    }

    #[test]
    fn a_hold_placed_earlier_in_the_batch_settles_and_its_duplicate_changes_nothing() {
        let mut book = book_with(i64::MAX / 4);
        book.decide(&job("h"));
        let Answer::Settled { charged, .. } = book.decide(&settle("h", Outcome::Success)) else {
            panic!("settled");
        };
        assert_eq!(charged, 30, "10 + 20 tokens at 1 mc each");
        let once = (book.pools["o"].now, book.closed.len(), book.entries.len());
        assert!(matches!(
            book.decide(&settle("h", Outcome::Failed)),
            Answer::Settled { charged: 30, .. }
        ));
        assert_eq!(
            (book.pools["o"].now, book.closed.len(), book.entries.len()),
            once
        );
        assert_eq!(once.0.held, 0);
        assert_eq!(once.0.used, 30);
    }
}
