//! Authorize: route the call, price it, size its hold, then — in one transaction — reserve
//! its quota slots, set its credits aside and record the hold; or refuse. Hold sizing and
//! charging are core's (`opsgate_core::metering`); nothing here does money arithmetic.

use super::balance::{self, Short};
use super::holds::{self, NewHold};
use super::quota::{self, QuotaWindow, WindowKind};
use super::routing::{route, Route, Routing};
use crate::accounts::User;
use crate::db::{Db, Tx};
use crate::error::AppError;
use opsgate_core::contract::{AuthorizeRequest, Endpoint, Grant, Upstream, WindowLimit};
use opsgate_core::metering::{self, HoldRequest};
use opsgate_core::money::MilliCredits;
use opsgate_core::pricing::{Price, RateCard};

/// Places a hold and reserves quota, or refuses.
pub async fn authorize(
    db: &Db,
    routing: &Routing<'_>,
    user: &User,
    req: &AuthorizeRequest,
    now: i64,
) -> Result<Grant, AppError> {
    let route = route(db, routing, user, req).await?;
    let rate = rate_card(routing, user, &route, req);
    let windows = quota::quota_windows(routing.catalogue, user, now)?;
    let sized = size_hold(db, user, &route, &rate, req).await?;
    let hold = sized.amount.0;
    let hold_id = holds::hold_id(req)?;
    let new = NewHold {
        id: &hold_id,
        org_id: &user.org_id,
        user_id: &user.id,
        amount: hold,
        model: &route.model_id,
        provider: &route.provider.name,
        rate: &rate,
        byok: route.byok,
        has_allocation: false,
        windows: &windows,
        now,
        expires_at: now + routing.hold_ttl_secs,
    };
    let mut tx = db.begin().await?;
    match place(&mut tx, user, new, &windows, now).await? {
        Ok(placed) => {
            tx.commit().await?;
            Ok(grant(user, req, route, rate, hold_id, sized, placed))
        }
        Err(refused) => {
            tx.rollback().await?;
            Err(match refused {
                Refused::Because(e) => e,
                Refused::Short(short) => balance::short_of(db, user, hold, short).await?,
            })
        }
    }
}

/// The call's rate card. A BYOK call costs nothing: its rate card is zero, whatever reads it.
fn rate_card(
    routing: &Routing<'_>,
    user: &User,
    route: &Route<'_>,
    req: &AuthorizeRequest,
) -> RateCard {
    if route.byok {
        RateCard {
            price: Price::default(),
            power_level: req.power_level,
            markup_percent: 0,
        }
    } else {
        RateCard {
            price: route.price,
            power_level: req.power_level,
            markup_percent: routing.catalogue.plan(user.plan).markup_percent,
        }
    }
}

/// The hold (milli-credits) and the completion bound: the largest cost this call can reach,
/// reduced to what the caller can afford (core::metering::hold_for); a 402 when even the
/// smallest call is out of reach.
async fn size_hold(
    db: &Db,
    user: &User,
    route: &Route<'_>,
    rate: &RateCard,
    req: &AuthorizeRequest,
) -> Result<metering::Hold, AppError> {
    let spend = balance::spendable(db, user).await?;
    let bound = metering::hold_for(
        rate,
        &HoldRequest {
            endpoint: req.endpoint,
            prompt_bytes: req.prompt_bytes,
            prompt_images: req.prompt_images,
            image_tokens_each: route.image_input_tokens,
            max_tokens: req.max_tokens,
            images: req.images,
        },
        route.max_output_tokens,
        MilliCredits(spend),
        route.byok,
    );
    match bound {
        Ok(h) => Ok(h),
        Err(e) => {
            let mut refused = balance::refusal(db, user, e.needed.0).await?;
            if e.explicit_bound {
                // An explicit bound is never quietly reduced: say what would fit.
                refused.0.message.push_str(
                    ". The request's max_tokens is more than the balance covers: lower max_tokens, or omit it to let the gateway choose a bound the balance affords",
                );
            }
            Err(refused)
        }
    }
}

/// Why a hold was not placed inside its transaction (the caller rolls back, then answers).
enum Refused {
    /// An answer already made: a full quota window, a replayed request id.
    Because(AppError),
    /// A balance could not cover the hold; the 402 is worded after the rollback.
    Short(Short),
}

/// What a placed hold leaves behind for the grant.
struct Placed {
    limits: Vec<(WindowKind, WindowLimit)>,
    /// Spendable after the hold, read inside the transaction.
    balance: i64,
}

/// The transaction's steps, in lock order: quota rows (period, then day), the organization,
/// the allocation, then the hold itself.
async fn place(
    tx: &mut Tx,
    user: &User,
    mut new: NewHold<'_>,
    windows: &[QuotaWindow],
    now: i64,
) -> Result<Result<Placed, Refused>, AppError> {
    let limits = match quota::reserve(tx, user, windows, now).await? {
        Ok(limits) => limits,
        Err(e) => return Ok(Err(Refused::Because(e))),
    };
    new.has_allocation = match balance::hold_credits(tx, user, new.amount).await? {
        Ok(has_allocation) => has_allocation,
        Err(short) => return Ok(Err(Refused::Short(short))),
    };
    if holds::seen(tx, new.id).await? {
        return Ok(Err(Refused::Because(AppError::bad_request(format!(
            "Request {} was already decided or cancelled.",
            new.id
        )))));
    }
    holds::insert(tx, &new).await?;
    let balance = balance::spendable_in(tx, user, new.has_allocation).await?;
    Ok(Ok(Placed { limits, balance }))
}

/// The grant the filter receives: where to send the call, with which key, under which
/// bounds.
fn grant(
    user: &User,
    req: &AuthorizeRequest,
    route: Route<'_>,
    rate: RateCard,
    hold_id: String,
    sized: metering::Hold,
    placed: Placed,
) -> Grant {
    let provider = route.provider;
    let window = |kind: WindowKind| {
        placed
            .limits
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, l)| *l)
    };
    Grant {
        hold_id,
        user_id: user.id.clone(),
        model: route.model_id.clone(),
        provider: provider.name.clone(),
        upstream: Upstream {
            cluster: provider.cluster.clone(),
            authority: provider.authority.clone(),
            path: format!(
                "{}/{}",
                provider.base_path,
                match req.endpoint {
                    Endpoint::ChatCompletions => "chat/completions",
                    Endpoint::ImageGenerations => "images/generations",
                }
            ),
            model: route.upstream_model.clone(),
            api_key: route.api_key.expose().to_string(),
            completion_limit: route.completion_limit,
        },
        max_tokens: sized.max_tokens,
        rate,
        hold_mc: sized.amount,
        balance_mc: MilliCredits(placed.balance),
        period: window(WindowKind::Period),
        daily: window(WindowKind::Day),
        byok: route.byok,
        max_tokens_chosen: sized.chosen,
    }
}
