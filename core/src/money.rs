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
    fn three_decimals() {
        assert_eq!(MilliCredits(9_997_000).to_credits_string(), "9997.000");
        assert_eq!(MilliCredits(3).to_credits_string(), "0.003");
        assert_eq!(MilliCredits(0).to_credits_string(), "0.000");
        assert_eq!(MilliCredits(-1250).to_credits_string(), "-1.250");
        assert_eq!(MilliCredits::from_credits(10).0, 10_000);
    }
}
