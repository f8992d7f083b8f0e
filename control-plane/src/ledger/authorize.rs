//! Authorize: route the call, price it, then let the ledger writer size its hold, reserve its
//! quota slots and set its credits aside (or refuse) in one transaction. Hold sizing and
//! charging are core's (`opsgate_core::metering`); nothing here does money arithmetic.

use super::book::{Answer, AuthorizeJob, Job, Placed};
use super::holds;
use super::quota::{self, WindowKind};
use super::routing::{route, Route, Routing};
use super::writer::{self, Arriving};
use crate::accounts::User;
use crate::byok::CallKeys;
use crate::db::Db;
use crate::error::AppError;
use opsgate_core::contract::{AuthorizeRequest, Endpoint, Grant, Principal, Upstream, WindowLimit};
use opsgate_core::headers::UNLIMITED_CALLS;
use opsgate_core::metering::HoldRequest;
use opsgate_core::money::MilliCredits;
use opsgate_core::pricing::{Price, RateCard};
use opsgate_core::time::monthly_window;

/// [`authorize_with`], reading the user's keys first (the HTTP handler reads them with the
/// caller, in one query: `byok::caller_with_keys`).
pub async fn authorize(
    db: &Db,
    routing: &Routing<'_>,
    user: &User,
    req: &AuthorizeRequest,
    now: i64,
) -> Result<Grant, AppError> {
    let keys = crate::byok::for_call(db, &user.id).await?;
    authorize_with(db, routing, user, keys, req, now, None).await
}

/// Places a hold and reserves quota, or refuses. Routing, pricing and the quota windows are
/// decided here; the balances and counts are read, decided and written by the ledger writer,
/// in one batch with whatever else is queued. `keys` are the ones that may route the call;
/// `arriving`, the announcement the request made when it came in (given up once queued).
pub async fn authorize_with(
    db: &Db,
    routing: &Routing<'_>,
    user: &User,
    keys: CallKeys,
    req: &AuthorizeRequest,
    now: i64,
    arriving: Option<Arriving>,
) -> Result<Grant, AppError> {
    authorize_in(db, routing, user, keys, req, now, arriving, None)
        .await?
        .ok_or_else(|| AppError::internal("a caller read for this call was called stale"))
}

/// [`authorize_with`] for a caller read in the writer's epoch `caller_epoch`
/// (`callers.rs`): `Ok(None)` when the database has moved since (nothing placed; read the
/// caller again and authorize afresh).
#[allow(clippy::too_many_arguments)]
pub async fn authorize_in(
    db: &Db,
    routing: &Routing<'_>,
    user: &User,
    keys: CallKeys,
    req: &AuthorizeRequest,
    now: i64,
    arriving: Option<Arriving>,
    caller_epoch: Option<u64>,
) -> Result<Option<Grant>, AppError> {
    let route = route(routing, user, keys, req)?;
    let rate = rate_card(routing, user, &route, req);
    // No call quota for service keys (trusted internal services) nor for BYOK calls (the
    // provider's own limits apply): the guide's rule.
    let metered = !route.byok && !matches!(req.principal, Principal::Service { .. });
    let windows = if metered {
        quota::quota_windows(routing.catalogue, user, now)?
    } else {
        Vec::new()
    };
    // A window the call is not counted in is reported as unlimited, resetting with the
    // month (integer-parsing clients read every X-RateLimit-* header as a number).
    let unlimited = WindowLimit {
        limit: UNLIMITED_CALLS,
        remaining: UNLIMITED_CALLS,
        reset: monthly_window(now).end,
    };
    let hold_id = holds::hold_id(req)?;
    let job = AuthorizeJob {
        hold_id: hold_id.clone(),
        org_id: user.org_id.clone(),
        user_id: user.id.clone(),
        windows,
        rate,
        request: HoldRequest {
            endpoint: req.endpoint,
            prompt_bytes: req.prompt_bytes,
            prompt_images: req.prompt_images,
            image_tokens_each: route.image_input_tokens,
            max_tokens: req.max_tokens,
            images: req.images,
        },
        max_output_tokens: route.max_output_tokens,
        byok: route.byok,
        model: route.model_id.clone(),
        provider: route.provider.name.clone(),
        now,
        expires_at: now + routing.hold_ttl_secs,
        caller_epoch,
    };
    match writer::submit_arriving(db, Job::Authorize(Box::new(job)), arriving).await? {
        Answer::Placed(placed) => Ok(Some(grant(
            user, req, route, rate, hold_id, placed, unlimited,
        ))),
        Answer::Refused(e) => Err(e),
        Answer::StaleCaller => Ok(None),
        other => Err(AppError::internal(format!(
            "an authorize answered {other:?}"
        ))),
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

/// The grant the filter receives: where to send the call, with which key, under which
/// bounds.
fn grant(
    user: &User,
    req: &AuthorizeRequest,
    route: Route<'_>,
    rate: RateCard,
    hold_id: String,
    placed: Placed,
    unlimited: WindowLimit,
) -> Grant {
    let sized = placed.hold;
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
                    Endpoint::Embeddings => "embeddings",
                }
            ),
            model: route.upstream_model.clone(),
            api_key: route.api_key.expose().to_string(),
            completion_limit: route.completion_limit,
            takes_temperature: route.takes_temperature,
        },
        max_tokens: sized.max_tokens,
        rate,
        hold_mc: sized.amount,
        balance_mc: MilliCredits(placed.balance),
        period: window(WindowKind::Period).or(Some(unlimited)),
        daily: window(WindowKind::Day),
        byok: route.byok,
        max_tokens_chosen: sized.chosen,
        dimensions: route.dimensions,
    }
}
