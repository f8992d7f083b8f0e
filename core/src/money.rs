//! Money is integer milli-credits end to end: 1 credit = $0.001 = 1000 milli-credits.

use serde::{Deserialize, Serialize};

/// An amount of milli-credits. Never a float.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MilliCredits(pub i64);

impl MilliCredits {
    pub const ZERO: MilliCredits = MilliCredits(0);

    pub fn from_credits(credits: i64) -> Self {
        MilliCredits(credits.saturating_mul(1000))
    }

    /// Parses an amount of credits written in decimal (`10`, `0.5`, `-2.125`, `10000000.0`)
    /// exactly, without floats: at most three decimals, no exponent.
    pub fn parse_credits(s: &str) -> Result<MilliCredits, String> {
        let bad = || format!("'{s}' is not an amount of credits with at most three decimals");
        let t = s.trim();
        let (negative, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let fraction = fraction.trim_end_matches('0');
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
            || fraction.len() > 3
        {
            return Err(bad());
        }
        let whole: i64 = whole.parse().map_err(|_| bad())?;
        let milli: i64 = format!("{fraction:0<3}").parse().map_err(|_| bad())?;
        let mc = whole
            .checked_mul(1000)
            .and_then(|w| w.checked_add(milli))
            .ok_or_else(bad)?;
        Ok(MilliCredits(if negative {
            mc.saturating_neg()
        } else {
            mc
        }))
    }

    /// Credits with exactly three decimals, as the `X-Cost-Incurred` and
    /// `X-Credits-Remaining` headers show them: `9997.000`, `0.003`, `-1.250`.
    pub fn to_credits_string(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
    }

    /// For JSON bodies in the guide's shape (`credits_remaining: 10000000.0`): exact for
    /// every amount below 2^53 milli-credits.
    pub fn to_credits_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl std::fmt::Display for MilliCredits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_credits_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_parse_exactly() {
        let ok = |s: &str| MilliCredits::parse_credits(s).map(|m| m.0);
        assert_eq!(ok("10"), Ok(10_000));
        assert_eq!(ok("0.1"), Ok(100));
        assert_eq!(ok("-2.125"), Ok(-2_125));
        assert_eq!(ok("10000000.0"), Ok(10_000_000_000));
        assert_eq!(ok("0.001"), Ok(1));
        for bad in [
            "",
            ".5",
            "1.2345",
            "1e3",
            "abc",
            "--1",
            "1.-2",
            "99999999999999999999",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn three_decimals() {
        assert_eq!(MilliCredits(9_997_000).to_credits_string(), "9997.000");
        assert_eq!(MilliCredits(3).to_credits_string(), "0.003");
        assert_eq!(MilliCredits(0).to_credits_string(), "0.000");
        assert_eq!(MilliCredits(-1250).to_credits_string(), "-1.250");
        assert_eq!(MilliCredits::from_credits(10).0, 10_000);
    }
}
