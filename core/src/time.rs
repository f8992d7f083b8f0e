//! Quota windows on UTC calendar boundaries. Time is always passed in (unix seconds), never
//! read here, so tests control the clock.

use serde::{Deserialize, Serialize};

pub const DAY: i64 = 86_400;
/// A trial's period: seven days from the user's creation.
pub const TRIAL_PERIOD: i64 = 7 * DAY;

/// The times this module works with: years 0 to 9999. Every function clamps its input into
/// this range first, so the calendar arithmetic below can never overflow.
pub const MIN_UNIX: i64 = -62_167_219_200; // 0000-01-01T00:00:00Z
pub const MAX_UNIX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z

fn clamp_unix(t: i64) -> i64 {
    t.clamp(MIN_UNIX, MAX_UNIX)
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
///
/// Documented exception to the crate's `arithmetic_side_effects` rule: the algorithm's
/// arithmetic is exact on the clamped inputs (year 0–10000, month 1–12, day 1–31), whose
/// intermediates stay below 2^32.
#[allow(clippy::arithmetic_side_effects)]
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (year, month, day) = (year.clamp(0, 10_000), month.clamp(1, 12), day.clamp(1, 31));
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `(year, month, day)` of a day number since 1970-01-01.
///
/// Documented exception to `arithmetic_side_effects`, as for [`days_from_civil`]: the input
/// is clamped to years 0–9999.
#[allow(clippy::arithmetic_side_effects)]
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days.clamp(MIN_UNIX.div_euclid(DAY), MAX_UNIX.div_euclid(DAY));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD` of a unix time, UTC.
pub fn date_string(unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The UTC year of a unix time.
pub fn year(unix: i64) -> i64 {
    civil_from_days(unix.div_euclid(DAY)).0
}

/// A half-open quota window `[start, end)` in unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub start: i64,
    pub end: i64,
}

/// The UTC day containing `now`: resets at 00:00 UTC.
pub fn daily_window(now: i64) -> Window {
    let start = clamp_unix(now).div_euclid(DAY).saturating_mul(DAY);
    Window {
        start,
        end: start.saturating_add(DAY),
    }
}

/// The UTC calendar month containing `now`: resets on the 1st, 00:00 UTC.
pub fn monthly_window(now: i64) -> Window {
    let (y, m, _) = civil_from_days(clamp_unix(now).div_euclid(DAY));
    let start = days_from_civil(y, m, 1).saturating_mul(DAY);
    let (ny, nm) = if m == 12 {
        (y.saturating_add(1), 1)
    } else {
        (y, m.saturating_add(1))
    };
    Window {
        start,
        end: days_from_civil(ny, nm, 1).saturating_mul(DAY),
    }
}

/// A trial's one period: seven days from creation. After it ends, a trial has no calls left.
pub fn trial_window(created_at: i64) -> Window {
    Window {
        start: created_at,
        end: created_at.saturating_add(TRIAL_PERIOD),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T_2025_11_30_235959: i64 = 1_764_547_199;

    #[test]
    fn civil_round_trip() {
        for days in [-1000, 0, 1, 365, 10_957, 20_000, 20_424, 30_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(date_string(T_2025_11_30_235959), "2025-11-30");
    }

    #[test]
    fn daily_resets_at_utc_midnight() {
        let w = daily_window(T_2025_11_30_235959);
        assert_eq!(w.end, T_2025_11_30_235959 + 1);
        assert_eq!(w.end - w.start, DAY);
        assert_eq!(daily_window(w.end).start, w.end);
    }

    #[test]
    fn monthly_resets_on_the_first() {
        let w = monthly_window(T_2025_11_30_235959);
        assert_eq!(date_string(w.start), "2025-11-01");
        assert_eq!(date_string(w.end), "2025-12-01");
        assert_eq!(w.end, T_2025_11_30_235959 + 1);
        let next = monthly_window(w.end);
        assert_eq!(next.start, w.end);
        assert_eq!(date_string(next.end), "2026-01-01");
        // February of a leap year.
        let feb = monthly_window(days_from_civil(2028, 2, 15) * DAY);
        assert_eq!((feb.end - feb.start) / DAY, 29);
    }

    #[test]
    fn trial_is_seven_days_from_creation() {
        let w = trial_window(1_000);
        assert_eq!(w.end, 1_000 + 7 * DAY);
    }
}
