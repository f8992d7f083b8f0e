//! The rules of money for one call, in one place. The filter and the ledger both call these;
//! neither computes money itself.
//!
//! * [`hold_for`] — how much a call holds before it is forwarded, and the completion bound
//!   that keeps it inside that hold.
//! * [`charge`] — what a call costs: the rate card applied to its usage, never more than its
//!   hold, nothing on the caller's own key (BYOK).
//! * [`balance_after`] — the balance a client is told after the call (`X-Credits-Remaining`).
//! * [`usage_without_report`], [`stream_outcome`], [`unfinished_call`] — what a call is
//!   settled with when the provider's usage report is missing or the call was cut off.
//!
//! Invariants: amounts are integer milli-credits; a charge is never negative and never above
//! the hold; arithmetic saturates instead of wrapping or panicking (a panic kills the filter's
//! VM), and catalogue prices are bounded by [`crate::pricing::MAX_PRICE_MC`], so no real
//! call ever reaches the saturation point.

use crate::contract::{Endpoint, Outcome};
use crate::money::MilliCredits;
use crate::pricing::{RateCard, Usage};

/// The smallest completion bound the gateway chooses for a call that gave none, when the
/// balance cannot cover the model's whole output (or the model's maximum, if smaller). Below
/// it the call is refused rather than answered uselessly short.
pub const MIN_CHOSEN_COMPLETION: u64 = 256;

/// The hold a call places and the completion bound it is forwarded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    pub amount: MilliCredits,
    /// The completion bound sent to the provider (`None`: the client's own, or none).
    pub max_tokens: Option<u64>,
    /// The client gave no bound and the balance could not cover the model's whole output:
    /// the gateway chose `max_tokens` (told to the client in `X-Max-Tokens-Applied`).
    pub chosen: bool,
}

/// What the hold needs and the caller cannot afford.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unaffordable {
    /// The smallest hold the call could have been served with.
    pub needed: MilliCredits,
    /// The client's own `max_tokens` is what cannot be covered (lowering it may help).
    pub explicit_bound: bool,
}

/// What a call asks for, as far as its hold is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldRequest {
    pub endpoint: Endpoint,
    /// The prompt's size in bytes: an upper bound of its text tokens.
    pub prompt_bytes: u64,
    /// Image parts in the prompt, and the model's token bound for one (catalogue).
    pub prompt_images: u64,
    pub image_tokens_each: u64,
    /// The client's completion bound (`max_tokens` / `max_completion_tokens`).
    pub max_tokens: Option<u64>,
    /// Images asked for (image generation).
    pub images: u64,
}

/// The hold for a call: the largest cost it can reach, reduced to what the caller can spend.
///
/// * BYOK: nothing is held (the caller pays the provider); the client's bound stands, capped
///   by the model's maximum output.
/// * Images: every image asked for (at least one) at the rate card; refused if unaffordable.
/// * Embeddings: the inputs' token bound (`prompt_bytes`) at the input price, no completion;
///   refused if unaffordable.
/// * Chat with the client's own `max_tokens`: the prompt plus that bound (capped by the
///   model's maximum output), or refused — an explicit bound is never silently reduced.
/// * Chat without one: the prompt plus the model's maximum output; when the balance cannot
///   cover that, the largest bound it affords if that is at least [`MIN_CHOSEN_COMPLETION`]
///   (`chosen`), else refused.
pub fn hold_for(
    rate: &RateCard,
    req: &HoldRequest,
    model_max_output: Option<u64>,
    spendable: MilliCredits,
    byok: bool,
) -> Result<Hold, Unaffordable> {
    if byok {
        return Ok(Hold {
            amount: MilliCredits::ZERO,
            max_tokens: req
                .max_tokens
                .map(|m| model_max_output.map_or(m, |b| m.min(b))),
            chosen: false,
        });
    }
    match req.endpoint {
        // Calls whose whole cost is known before they run: images by count, embeddings by
        // their inputs' token bound (no output tokens).
        Endpoint::ImageGenerations | Endpoint::Embeddings => {
            let usage = if req.endpoint == Endpoint::ImageGenerations {
                Usage {
                    images: req.images.max(1),
                    ..Usage::default()
                }
            } else {
                Usage {
                    prompt_tokens: req.prompt_bytes,
                    ..Usage::default()
                }
            };
            let cost = MilliCredits(rate.cost(&usage));
            if cost > spendable {
                return Err(Unaffordable {
                    needed: cost,
                    explicit_bound: false,
                });
            }
            Ok(Hold {
                amount: cost,
                max_tokens: None,
                chosen: false,
            })
        }
        Endpoint::ChatCompletions => {
            // The prompt's bound: its bytes, plus every image part at the model's bound.
            let prompt_tokens = req
                .prompt_bytes
                .saturating_add(req.prompt_images.saturating_mul(req.image_tokens_each));
            let bound = model_max_output.unwrap_or(u64::MAX);
            let wanted = req.max_tokens.unwrap_or(bound).min(bound);
            let chat = |completion_tokens: u64| {
                MilliCredits(rate.cost(&Usage {
                    prompt_tokens,
                    completion_tokens,
                    images: 0,
                }))
            };
            let full = chat(wanted);
            if full <= spendable {
                return Ok(Hold {
                    amount: full,
                    max_tokens: Some(wanted),
                    chosen: false,
                });
            }
            if req.max_tokens.is_some() {
                return Err(Unaffordable {
                    needed: full,
                    explicit_bound: true,
                });
            }
            let floor = MIN_CHOSEN_COMPLETION.min(bound);
            match rate.affordable_completion_tokens(prompt_tokens, spendable.0) {
                Some(k) if k >= floor => {
                    let k = k.min(wanted);
                    Ok(Hold {
                        amount: chat(k),
                        max_tokens: Some(k),
                        chosen: true,
                    })
                }
                _ => Err(Unaffordable {
                    needed: chat(floor),
                    explicit_bound: false,
                }),
            }
        }
    }
}

/// What a call costs: the rate card applied to `usage`, never more than the hold (a provider
/// reporting more than the bound it was given is charged the hold), never negative, and
/// nothing on the caller's own key.
pub fn charge(rate: &RateCard, usage: &Usage, hold: MilliCredits, byok: bool) -> MilliCredits {
    if byok {
        return MilliCredits::ZERO;
    }
    MilliCredits(rate.cost(usage).clamp(0, hold.0.max(0)))
}

/// The usage the rate card gives more than the hold for: the provider reported more than the
/// call was bounded to (logged by the ledger as a discrepancy; the hold is charged).
pub fn exceeds_hold(rate: &RateCard, usage: &Usage, hold: MilliCredits, byok: bool) -> bool {
    !byok && rate.cost(usage) > hold.0
}

/// The balance after this call, as `X-Credits-Remaining` tells it: the spendable balance
/// when the hold was placed, plus the hold, minus what the call cost. Saturating.
pub fn balance_after(
    balance: MilliCredits,
    hold: MilliCredits,
    cost: MilliCredits,
) -> MilliCredits {
    MilliCredits(balance.0.saturating_add(hold.0).saturating_sub(cost.0))
}

/// The usage a completed response is charged when the provider's body does not say: the
/// bound the call was held for — the prompt and the whole completion bound for a chat, the
/// images asked for, the inputs' token bound for embeddings.
pub fn usage_without_report(
    endpoint: Endpoint,
    prompt_bytes: u64,
    max_tokens: Option<u64>,
    images_requested: u64,
) -> Usage {
    match endpoint {
        Endpoint::ImageGenerations => Usage {
            images: images_requested,
            ..Usage::default()
        },
        Endpoint::Embeddings => Usage {
            prompt_tokens: prompt_bytes,
            ..Usage::default()
        },
        Endpoint::ChatCompletions => Usage {
            prompt_tokens: prompt_bytes,
            completion_tokens: max_tokens.unwrap_or(0),
            images: 0,
        },
    }
}

/// The outcome of a stream that ended (end of stream, `[DONE]`, trailers): a success when
/// the provider's usage chunk was seen, else partial (charged for what was seen).
pub fn stream_outcome(saw_usage_report: bool) -> Outcome {
    if saw_usage_report {
        Outcome::Success
    } else {
        Outcome::Partial
    }
}

/// What the filter knows about a forwarded call that ended before it was settled (the client
/// left, or the response never completed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unfinished {
    /// The provider's status; 0 when no response headers arrived.
    pub upstream_status: u16,
    /// The response was an SSE stream.
    pub streaming: bool,
    pub prompt_bytes: u64,
    pub max_tokens: Option<u64>,
    pub images_requested: u64,
    /// For a stream: the usage seen so far (the report, or the deltas counted).
    pub streamed: Usage,
}

/// The settlement of an unfinished call:
///
/// * no response yet: the provider was asked, so the quota slot is used and the prompt is
///   charged (partial);
/// * the provider failed (non-2xx): nothing is charged, the slot is released;
/// * a stream cut off: what was seen (partial);
/// * a plain response whose body never completed: the bound the call was held for — prompt,
///   completion bound and images asked for (partial).
pub fn unfinished_call(call: &Unfinished) -> (Outcome, Usage) {
    if call.upstream_status == 0 {
        return (
            Outcome::Partial,
            Usage {
                prompt_tokens: call.prompt_bytes,
                ..Usage::default()
            },
        );
    }
    if !(200..300).contains(&call.upstream_status) {
        return (Outcome::Failed, Usage::default());
    }
    if call.streaming {
        return (Outcome::Partial, call.streamed);
    }
    (
        Outcome::Partial,
        Usage {
            prompt_tokens: call.prompt_bytes,
            completion_tokens: call.max_tokens.unwrap_or(0),
            images: call.images_requested,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PowerLevel;
    use crate::pricing::{Price, MAX_PRICE_MC};

    fn rate(input: i64, output: i64, image: i64) -> RateCard {
        RateCard {
            price: Price {
                input_per_million: input,
                output_per_million: output,
                per_image: image,
            },
            power_level: PowerLevel::Balanced,
            markup_percent: 0,
        }
    }

    fn chat(prompt_bytes: u64, max_tokens: Option<u64>) -> HoldRequest {
        HoldRequest {
            endpoint: Endpoint::ChatCompletions,
            prompt_bytes,
            prompt_images: 0,
            image_tokens_each: 0,
            max_tokens,
            images: 0,
        }
    }

    #[test]
    fn a_chat_holds_its_prompt_and_bound() {
        // gpt-4o-mini: 150_000 / 600_000 mc per million tokens.
        let r = rate(150_000, 600_000, 0);
        let h = hold_for(
            &r,
            &chat(1_000, Some(500)),
            Some(16_384),
            MilliCredits(10_000),
            false,
        );
        let expected = Hold {
            amount: MilliCredits(450),
            max_tokens: Some(500),
            chosen: false,
        };
        assert_eq!(h, Ok(expected));
        // No client bound: the model's maximum output.
        let h = hold_for(
            &r,
            &chat(1_000, None),
            Some(16_384),
            MilliCredits(100_000),
            false,
        );
        assert_eq!(
            h.map(|h| (h.max_tokens, h.chosen)),
            Ok((Some(16_384), false))
        );
    }

    #[test]
    fn without_a_bound_the_gateway_chooses_one_the_balance_affords_above_a_floor() {
        let r = rate(150_000, 600_000, 0);
        let h = hold_for(
            &r,
            &chat(1_000, None),
            Some(16_384),
            MilliCredits(1_000),
            false,
        )
        .unwrap();
        assert!(h.amount <= MilliCredits(1_000));
        assert_eq!(h.max_tokens, Some(1_416));
        assert!(h.chosen, "the client is told the bound was chosen");
        // Less than the floor affordable: refused, naming what the floor needs.
        let e = hold_for(
            &r,
            &chat(1_000, None),
            Some(16_384),
            MilliCredits(300),
            false,
        );
        let needed = Unaffordable {
            needed: MilliCredits(304),
            explicit_bound: false,
        };
        assert_eq!(e, Err(needed));
        // A model whose whole output is below the floor needs only that.
        let h = hold_for(&r, &chat(1_000, None), Some(100), MilliCredits(300), false).unwrap();
        assert_eq!((h.max_tokens, h.chosen), (Some(100), false));
    }

    #[test]
    fn image_parts_in_the_prompt_are_held_at_the_models_bound() {
        let r = rate(150_000, 600_000, 0);
        let with_images = HoldRequest {
            prompt_images: 2,
            image_tokens_each: 1_500,
            ..chat(1_000, Some(500))
        };
        let h = hold_for(&r, &with_images, Some(16_384), MilliCredits(100_000), false).unwrap();
        // (1,000 + 2 × 1,500) prompt tokens and 500 completion tokens.
        assert_eq!(h.amount, MilliCredits(900));
    }

    #[test]
    fn an_explicit_bound_the_balance_cannot_cover_is_refused_never_cut() {
        let r = rate(150_000, 600_000, 0);
        let e = hold_for(
            &r,
            &chat(1_000, Some(4_000)),
            Some(16_384),
            MilliCredits(1_000),
            false,
        );
        let needed = Unaffordable {
            needed: MilliCredits(2_550),
            explicit_bound: true,
        };
        assert_eq!(e, Err(needed));
    }

    #[test]
    fn images_hold_every_image_asked_for() {
        let r = rate(0, 0, 40_000);
        let req = HoldRequest {
            endpoint: Endpoint::ImageGenerations,
            prompt_bytes: 10,
            prompt_images: 0,
            image_tokens_each: 0,
            max_tokens: None,
            images: 3,
        };
        assert_eq!(
            hold_for(&r, &req, None, MilliCredits(1_000_000), false)
                .unwrap()
                .amount,
            MilliCredits(120_000)
        );
        assert_eq!(
            hold_for(&r, &req, None, MilliCredits(100_000), false),
            Err(Unaffordable {
                needed: MilliCredits(120_000),
                explicit_bound: false
            })
        );
    }

    fn embeddings(input_tokens: u64) -> HoldRequest {
        HoldRequest {
            endpoint: Endpoint::Embeddings,
            prompt_bytes: input_tokens,
            prompt_images: 0,
            image_tokens_each: 0,
            // Whatever a request says here, an embedding has no completion to hold for.
            max_tokens: Some(1_000),
            images: 0,
        }
    }

    #[test]
    fn embeddings_hold_their_input_bound_at_the_input_price_only() {
        // text-embedding-3-large: $0.13 / 1M tokens = 130_000 mc; a (bogus) output price
        // must not count.
        let r = rate(130_000, 999_999, 0);
        let h = hold_for(
            &r,
            &embeddings(10_000),
            Some(16_384),
            MilliCredits(10_000),
            false,
        );
        let expected = Hold {
            amount: MilliCredits(1_300),
            max_tokens: None,
            chosen: false,
        };
        assert_eq!(h, Ok(expected));
        // Rounded up once: 7 tokens at 130_000 / 1M is 0.91 mc.
        let h = hold_for(&r, &embeddings(7), None, MilliCredits(10), false).unwrap();
        assert_eq!(h.amount, MilliCredits(1));
        // Unaffordable: refused, never shrunk (there is no bound to shrink).
        assert_eq!(
            hold_for(&r, &embeddings(10_000), None, MilliCredits(1_299), false),
            Err(Unaffordable {
                needed: MilliCredits(1_300),
                explicit_bound: false
            })
        );
        // The caller's own key holds nothing and bounds no completion.
        let byok = HoldRequest {
            max_tokens: None,
            ..embeddings(10_000)
        };
        assert_eq!(
            hold_for(&r, &byok, None, MilliCredits(0), true),
            Ok(Hold {
                amount: MilliCredits::ZERO,
                max_tokens: None,
                chosen: false
            })
        );
        // Settled from the reported input tokens, capped by the hold.
        let used = Usage {
            prompt_tokens: 2_000,
            ..Usage::default()
        };
        assert_eq!(
            charge(&r, &used, MilliCredits(1_300), false),
            MilliCredits(260)
        );
        // Unreported: the bound held for.
        assert_eq!(
            usage_without_report(Endpoint::Embeddings, 10_000, None, 0),
            Usage {
                prompt_tokens: 10_000,
                ..Usage::default()
            }
        );
    }

    #[test]
    fn byok_holds_and_charges_nothing() {
        let r = rate(150_000, 600_000, 0);
        let h = hold_for(
            &r,
            &chat(10, Some(99_999)),
            Some(4_096),
            MilliCredits(0),
            true,
        );
        assert_eq!(
            h,
            Ok(Hold {
                amount: MilliCredits::ZERO,
                max_tokens: Some(4_096),
                chosen: false
            })
        );
        let usage = Usage {
            prompt_tokens: 10,
            completion_tokens: 10,
            images: 0,
        };
        assert_eq!(
            charge(&r, &usage, MilliCredits(100), true),
            MilliCredits::ZERO
        );
    }

    #[test]
    fn a_charge_is_the_rate_card_capped_by_the_hold() {
        let r = rate(150_000, 600_000, 0);
        let usage = Usage {
            prompt_tokens: 4,
            completion_tokens: 4,
            images: 0,
        };
        assert_eq!(
            charge(&r, &usage, MilliCredits(400), false),
            MilliCredits(3)
        );
        assert!(!exceeds_hold(&r, &usage, MilliCredits(400), false));
        let huge = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 1_000_000,
            images: 0,
        };
        assert_eq!(
            charge(&r, &huge, MilliCredits(400), false),
            MilliCredits(400)
        );
        assert!(exceeds_hold(&r, &huge, MilliCredits(400), false));
        assert_eq!(
            charge(&r, &huge, MilliCredits(-5), false),
            MilliCredits::ZERO
        );
    }

    #[test]
    fn money_saturates_at_the_limits_of_the_catalogue() {
        let r = RateCard {
            markup_percent: crate::pricing::MAX_MARKUP_PERCENT,
            power_level: PowerLevel::Precision,
            ..rate(MAX_PRICE_MC, MAX_PRICE_MC, MAX_PRICE_MC)
        };
        let max = Usage {
            prompt_tokens: u64::MAX,
            completion_tokens: u64::MAX,
            images: u64::MAX,
        };
        assert_eq!(r.cost(&max), i64::MAX);
        assert_eq!(
            charge(&r, &max, MilliCredits(i64::MAX), false),
            MilliCredits(i64::MAX)
        );
        let h = hold_for(
            &r,
            &chat(u64::MAX, None),
            None,
            MilliCredits(i64::MAX),
            false,
        );
        // Every cost saturates at i64::MAX, which a saturated balance affords: no panic, no
        // wrap to a small or negative hold.
        let saturated = Hold {
            amount: MilliCredits(i64::MAX),
            max_tokens: Some(u64::MAX),
            chosen: false,
        };
        assert_eq!(h, Ok(saturated));
        assert_eq!(
            balance_after(
                MilliCredits(i64::MAX),
                MilliCredits(i64::MAX),
                MilliCredits(0)
            ),
            MilliCredits(i64::MAX)
        );
        assert_eq!(
            balance_after(
                MilliCredits(i64::MIN),
                MilliCredits(0),
                MilliCredits(i64::MAX)
            ),
            MilliCredits(i64::MIN)
        );
    }

    #[test]
    fn the_balance_after_adds_the_hold_back_and_takes_the_cost() {
        assert_eq!(
            balance_after(MilliCredits(9_999_600), MilliCredits(400), MilliCredits(4)),
            MilliCredits(9_999_996)
        );
    }

    #[test]
    fn unreported_usage_is_the_bound_held_for() {
        assert_eq!(
            usage_without_report(Endpoint::ChatCompletions, 70, Some(512), 0),
            Usage {
                prompt_tokens: 70,
                completion_tokens: 512,
                images: 0
            }
        );
        assert_eq!(
            usage_without_report(Endpoint::ImageGenerations, 70, None, 2).images,
            2
        );
        assert_eq!(stream_outcome(true), Outcome::Success);
        assert_eq!(stream_outcome(false), Outcome::Partial);
    }

    #[test]
    fn unfinished_calls_settle_by_how_far_they_got() {
        let base = Unfinished {
            upstream_status: 0,
            streaming: false,
            prompt_bytes: 70,
            max_tokens: Some(512),
            images_requested: 0,
            streamed: Usage {
                prompt_tokens: 70,
                completion_tokens: 9,
                images: 0,
            },
        };
        assert_eq!(
            unfinished_call(&base),
            (
                Outcome::Partial,
                Usage {
                    prompt_tokens: 70,
                    ..Usage::default()
                }
            )
        );
        let failed = Unfinished {
            upstream_status: 503,
            ..base
        };
        assert_eq!(
            unfinished_call(&failed),
            (Outcome::Failed, Usage::default())
        );
        let stream = Unfinished {
            upstream_status: 200,
            streaming: true,
            ..base
        };
        assert_eq!(unfinished_call(&stream), (Outcome::Partial, base.streamed));
        let body = Unfinished {
            upstream_status: 200,
            ..base
        };
        assert_eq!(unfinished_call(&body).1.completion_tokens, 512);
    }
}
