//! Cost arithmetic. Prices are milli-credits per million tokens (so $0.15 / 1M tokens is
//! 150_000), the power-level multiplier and the plan markup are exact fractions, and the
//! result is rounded up once, at the end.

use crate::plan::PowerLevel;
use serde::{Deserialize, Serialize};

/// A model's price, in milli-credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Price {
    /// Milli-credits per million prompt tokens.
    pub input_per_million: i64,
    /// Milli-credits per million completion tokens.
    pub output_per_million: i64,
    /// Milli-credits per generated image.
    #[serde(default)]
    pub per_image: i64,
}

/// Everything that turns usage into a charge for one call: the model's price, the power
/// level and the plan's markup (percent on top: professional 10, starter 20).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCard {
    pub price: Price,
    pub power_level: PowerLevel,
    pub markup_percent: i64,
}

/// What a call consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    #[serde(default)]
    pub images: u64,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

/// The highest price the catalogue accepts, in milli-credits per million tokens or per image
/// (a million credits): far above any real model, low enough that no call's arithmetic is near
/// the limits of its integers.
pub const MAX_PRICE_MC: i64 = 1_000_000_000;

/// The highest plan markup the catalogue accepts, in percent.
pub const MAX_MARKUP_PERCENT: i64 = 10_000;

/// `n / d` rounded up; 0 for a non-positive numerator or denominator.
fn ceil_div(n: i128, d: i128) -> i128 {
    if d <= 0 || n <= 0 {
        return 0;
    }
    // d > 0 here, so neither division can fail.
    let q = n.checked_div(d).unwrap_or(0);
    if n.checked_rem(d) == Some(0) {
        q
    } else {
        q.saturating_add(1)
    }
}

impl RateCard {
    /// The charge for `usage`, in milli-credits, rounded up once.
    /// Saturates at `i64::MAX` (never wraps, never panics); within the catalogue's bounds
    /// ([`MAX_PRICE_MC`], [`MAX_MARKUP_PERCENT`]) no real usage gets near it.
    pub fn cost(&self, usage: &Usage) -> i64 {
        let (num, den) = self.power_level.multiplier();
        let numerator = (|| {
            let prompt = i128::from(usage.prompt_tokens)
                .checked_mul(i128::from(self.price.input_per_million))?;
            let completion = i128::from(usage.completion_tokens)
                .checked_mul(i128::from(self.price.output_per_million))?;
            // images are priced per unit; bring them onto the per-million scale.
            let images = i128::from(usage.images)
                .checked_mul(i128::from(self.price.per_image))?
                .checked_mul(1_000_000)?;
            prompt
                .checked_add(completion)?
                .checked_add(images)?
                .checked_mul(i128::from(num))?
                .checked_mul(i128::from(self.markup_percent.checked_add(100)?))
        })();
        let denominator = 1_000_000i128
            .saturating_mul(i128::from(den))
            .saturating_mul(100);
        match numerator {
            Some(n) => i64::try_from(ceil_div(n, denominator)).unwrap_or(i64::MAX),
            None => i64::MAX,
        }
    }

    /// The largest number of completion tokens whose cost, together with `prompt_tokens`,
    /// fits in `budget` milli-credits. `None` when not even the prompt fits; `u64::MAX`
    /// when completion tokens are free.
    pub fn affordable_completion_tokens(&self, prompt_tokens: u64, budget: i64) -> Option<u64> {
        let prompt_cost = self.cost(&Usage {
            prompt_tokens,
            ..Usage::default()
        });
        if prompt_cost > budget {
            return None;
        }
        if self.price.output_per_million == 0 {
            return Some(u64::MAX);
        }
        // cost(p, k) is monotone in k: binary search the largest k with cost <= budget.
        let (mut lo, mut hi) = (0u64, 1u64 << 40);
        while lo < hi {
            // lo < hi, so mid is in (lo, hi] and hi - 1 below cannot underflow.
            let mid = lo.saturating_add(hi.saturating_sub(lo).div_ceil(2));
            let c = self.cost(&Usage {
                prompt_tokens,
                completion_tokens: mid,
                images: 0,
            });
            if c <= budget {
                lo = mid;
            } else {
                hi = mid.saturating_sub(1);
            }
        }
        Some(lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(input: i64, output: i64, power: PowerLevel, markup: i64) -> RateCard {
        RateCard {
            price: Price {
                input_per_million: input,
                output_per_million: output,
                per_image: 40_000,
            },
            power_level: power,
            markup_percent: markup,
        }
    }

    #[test]
    fn gpt4o_mini_balanced_enterprise() {
        // $0.15 / $0.60 per million; 1M prompt + 1M completion = $0.75 = 750 credits.
        let c = card(150_000, 600_000, PowerLevel::Balanced, 0);
        let u = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
            images: 0,
        };
        assert_eq!(c.cost(&u), 750_000);
    }

    #[test]
    fn multiplier_and_markup_compose_and_round_up_once() {
        let u = Usage {
            prompt_tokens: 45,
            completion_tokens: 23,
            images: 0,
        };
        // 45*150000 + 23*600000 = 20_550_000 -> /1e6 = 20.55 mc; x1.1 = 22.605 -> 23
        assert_eq!(
            card(150_000, 600_000, PowerLevel::Balanced, 10).cost(&u),
            23
        );
        // eco: 20.55 * 0.5 * 1.1 = 11.3025 -> 12
        assert_eq!(card(150_000, 600_000, PowerLevel::Eco, 10).cost(&u), 12);
        // precision, starter: 20.55 * 2 * 1.2 = 49.32 -> 50
        assert_eq!(
            card(150_000, 600_000, PowerLevel::Precision, 20).cost(&u),
            50
        );
    }

    #[test]
    fn free_models_cost_nothing_and_images_are_per_unit() {
        let free = card(0, 0, PowerLevel::Precision, 20);
        assert_eq!(
            free.cost(&Usage {
                prompt_tokens: 10,
                completion_tokens: 10,
                images: 0
            }),
            0
        );
        let img = card(0, 0, PowerLevel::Balanced, 0);
        assert_eq!(
            img.cost(&Usage {
                images: 3,
                ..Usage::default()
            }),
            120_000
        );
    }

    #[test]
    fn affordable_tokens_is_the_largest_that_fits() {
        let c = card(150_000, 600_000, PowerLevel::Balanced, 10);
        let k = c.affordable_completion_tokens(100, 1000).unwrap_or(0);
        let at = |k| {
            c.cost(&Usage {
                prompt_tokens: 100,
                completion_tokens: k,
                images: 0,
            })
        };
        assert!(at(k) <= 1000);
        assert!(at(k + 1) > 1000);
        assert_eq!(c.affordable_completion_tokens(10_000_000, 5), None);
        assert_eq!(
            card(1, 0, PowerLevel::Balanced, 0).affordable_completion_tokens(1, 10),
            Some(u64::MAX)
        );
    }
}
