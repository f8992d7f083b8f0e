//! Quota windows: how many calls a plan allows per period (month or trial) and per day,
//! and their reservation. A call reserves one slot in each window when it is authorized;
//! settling turns the slot into a used one (or frees it).

use crate::accounts::User;
use crate::catalogue::{Catalogue, PeriodKind};
use crate::error::AppError;
use opsgate_core::time::{daily_window, date_string, monthly_window, trial_window, Window};
use opsgate_core::{ApiError, ErrorKind};

/// A kind of quota window, as stored in `quota_usage.kind`. Ordered as rows are locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WindowKind {
    /// The plan's period: a calendar month, or the trial.
    Period,
    Day,
}

impl WindowKind {
    /// In lock order: every transaction that touches quota rows takes the period row before
    /// the day row, so an authorize and a settle of the same user never deadlock.
    pub const ALL: [WindowKind; 2] = [WindowKind::Period, WindowKind::Day];

    /// The stored form; the only place it is spelled.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Period => "period",
            WindowKind::Day => "day",
        }
    }

    /// The `holds` column that records which window of this kind a hold reserved.
    pub fn hold_column(self) -> &'static str {
        match self {
            WindowKind::Period => "period_start",
            WindowKind::Day => "day_start",
        }
    }
}

fn format_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One quota window that applies to the caller.
pub(super) struct QuotaWindow {
    pub kind: WindowKind,
    label: &'static str,
    pub limit: u64,
    pub window: Window,
}

/// The quota windows of the caller's plan at `now` (the period first, then the day); a
/// trial that has ended is refused here.
pub(super) fn quota_windows(
    catalogue: &Catalogue,
    user: &User,
    now: i64,
) -> Result<Vec<QuotaWindow>, AppError> {
    let limits = catalogue.plan(user.plan);
    let mut out = Vec::new();
    if let Some(limit) = limits.period_calls {
        let (window, label) = match limits.period {
            PeriodKind::Month => (monthly_window(now), "Monthly"),
            PeriodKind::Trial => {
                let w = trial_window(user.created_at);
                if now >= w.end {
                    return Err(AppError(ApiError {
                        retry_after: None,
                        rate_limit: None,
                        ..ApiError::new(
                            ErrorKind::QuotaExceeded,
                            format!(
                                "Trial period ended on {}. Upgrade your plan to keep calling.",
                                date_string(w.end)
                            ),
                        )
                    }));
                }
                (w, "Trial")
            }
        };
        out.push(QuotaWindow {
            kind: WindowKind::Period,
            label,
            limit,
            window,
        });
    }
    if let Some(limit) = limits.daily_calls {
        out.push(QuotaWindow {
            kind: WindowKind::Day,
            label: "Daily",
            limit,
            window: daily_window(now),
        });
    }
    Ok(out)
}

/// The 429 for a full window, with when it resets.
pub(super) fn window_full(w: &QuotaWindow, taken: i64, now: i64) -> AppError {
    let retry = (w.window.end - now).max(1) as u64;
    AppError(ApiError {
        retry_after: Some(retry),
        rate_limit: Some(opsgate_core::contract::WindowLimit {
            limit: w.limit,
            remaining: 0,
            reset: w.window.end,
        }),
        ..ApiError::new(
            ErrorKind::QuotaExceeded,
            format!(
                "Rate limit exceeded. {} limit: {} calls. Used: {}. Resets on {}.",
                w.label,
                format_count(w.limit),
                format_count(taken as u64),
                date_string(w.window.end)
            ),
        )
    })
}
