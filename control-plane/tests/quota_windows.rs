//! Call quotas on UTC calendar windows, driven by a manual clock: the daily window resets at
//! 00:00 UTC, the monthly one on the 1st at 00:00 UTC, and a trial ends 7 days after the
//! user was created.

mod common;

use common::*;
use opsgate_control_plane::accounts::User;
use opsgate_control_plane::app;
use opsgate_control_plane::clock::{Clock, ManualClock};
use opsgate_control_plane::db::Db;
use opsgate_control_plane::ledger;
use opsgate_core::contract::{AuthorizeResponse, Grant, Outcome};
use opsgate_core::plan::Plan;
use opsgate_core::time::DAY;
use opsgate_core::{ApiError, ErrorKind};

/// 2025-11-14 23:59:59 UTC.
const NOV_14_235959: i64 = 1_763_164_799;
/// 2025-11-10 10:00:00 UTC.
const NOV_10_1000: i64 = 1_762_768_800;
/// 2025-11-30 23:59:59 UTC.
const NOV_30_235959: i64 = 1_764_547_199;
/// 2025-12-01 00:00:00 UTC.
const DEC_01: i64 = 1_764_547_200;
/// 2026-01-01 00:00:00 UTC.
const JAN_01: i64 = 1_767_225_600;

async fn call(
    db: &Db,
    router: &Router,
    user: &User,
    model: &str,
    now: i64,
) -> Result<Grant, ApiError> {
    ledger::authorize(
        db,
        &router.routing(),
        user,
        &chat(&user.id, model, 200, Some(100)),
        now,
    )
    .await
    .map_err(|e| e.0)
}

#[test]
fn the_fixed_instants_are_what_they_say() {
    use opsgate_core::time::date_string;
    assert_eq!(date_string(NOV_14_235959), "2025-11-14");
    assert_eq!(NOV_14_235959 % DAY, DAY - 1);
    assert_eq!(date_string(NOV_10_1000), "2025-11-10");
    assert_eq!(NOV_30_235959 + 1, DEC_01);
    assert_eq!(date_string(DEC_01), "2025-12-01");
    assert_eq!(date_string(JAN_01), "2026-01-01");
}

#[tokio::test]
async fn the_daily_limit_resets_at_midnight_utc() {
    for_each_backend("daily_limit_resets_at_midnight", |db| async move {
        let router = Router::new(catalogue());
        assert_eq!(router.catalogue.plan(Plan::Starter).daily_calls, Some(34));
        let clock = ManualClock::at(NOV_14_235959);
        let user = seed(
            &db,
            "org_d",
            "starter_d",
            Plan::Starter,
            10_000_000,
            None,
            NOV_10_1000,
        )
        .await;
        let model = "llama3-70b-deepinfra";
        // 34 calls in the day's last second: some settled, some still in flight — both count.
        for i in 0..34u64 {
            let g = call(&db, &router, &user, model, clock.now())
                .await
                .unwrap_or_else(|e| panic!("call {i}: {e}"));
            let d = g.daily.expect("daily window");
            assert_eq!(
                (d.limit, d.remaining, d.reset),
                (34, 33 - i, NOV_14_235959 + 1)
            );
            if i % 2 == 0 {
                ledger::settle(
                    &db,
                    &settlement(&g.hold_id, Outcome::Success, 100, 50),
                    clock.now(),
                )
                .await
                .expect("settle");
            }
        }
        let e = call(&db, &router, &user, model, clock.now())
            .await
            .expect_err("35th call");
        assert_eq!(e.kind, ErrorKind::QuotaExceeded);
        assert_eq!(e.status(), 429);
        assert!(e.message.contains("Daily limit: 34 calls"), "{}", e.message);
        assert!(e.message.contains("Used: 34"), "{}", e.message);
        assert!(
            e.message.contains("2025-11-15"),
            "names the reset date: {}",
            e.message
        );
        assert_eq!(e.retry_after, Some(1), "one second to midnight");
        // It names its window, for the X-RateLimit-* headers a client's retry reads.
        assert_eq!(
            e.rate_limit,
            Some(opsgate_core::contract::WindowLimit {
                limit: 34,
                remaining: 0,
                reset: NOV_14_235959 + 1
            })
        );

        // A service key of the same user is a trusted internal service: no call quota.
        let mut as_service = chat("starter_d", model, 200, Some(100));
        as_service.principal = opsgate_core::contract::Principal::Service {
            user_id: "starter_d".into(),
        };
        let g = ledger::authorize(&db, &router.routing(), &user, &as_service, clock.now())
            .await
            .expect("no quota for a service key");
        let p = g.period.expect("reported as unlimited");
        assert_eq!(
            (p.limit, p.remaining),
            (
                opsgate_core::headers::UNLIMITED_CALLS,
                opsgate_core::headers::UNLIMITED_CALLS
            )
        );
        assert!(g.daily.is_none());

        // The same refusal over HTTP carries the Retry-After value for the filter.
        let state = state(&db, &clock, router.catalogue.clone());
        let body = serde_json::to_string(&chat("starter_d", model, 200, Some(100))).expect("json");
        let resp = tower::ServiceExt::oneshot(
            app(state),
            axum::http::Request::post("/internal/v1/authorize")
                .header("authorization", format!("Bearer {INTERNAL_TOKEN}"))
                .body(axum::body::Body::from(body))
                .expect("request"),
        )
        .await
        .expect("response");
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .expect("body")
            .to_bytes();
        match serde_json::from_slice::<AuthorizeResponse>(&bytes).expect("authorize response") {
            AuthorizeResponse::Deny(d) => {
                assert_eq!((d.kind, d.retry_after), (ErrorKind::QuotaExceeded, Some(1)))
            }
            other => panic!("expected a denial, got {other:?}"),
        }

        clock.advance(1);
        let g = call(&db, &router, &user, model, clock.now())
            .await
            .expect("a new day");
        let d = g.daily.expect("daily window");
        assert_eq!((d.remaining, d.reset), (33, clock.now() + DAY));
        // The month goes on: 34 + 1 of 1,000.
        assert_eq!(g.period.expect("period").remaining, 1000 - 35);

        // Mid-day, the Retry-After is the time left to the next midnight.
        for _ in 0..33 {
            call(&db, &router, &user, model, clock.now() + 3_600)
                .await
                .expect("within the day");
        }
        let e = call(&db, &router, &user, model, clock.now() + 3_600)
            .await
            .expect_err("full");
        assert_eq!(e.retry_after, Some((DAY - 3_600) as u64));
        assert!(e.message.contains("2025-11-16"), "{}", e.message);
    })
    .await;
}

#[tokio::test]
async fn the_monthly_limit_resets_on_the_first_at_midnight_utc() {
    for_each_backend("monthly_limit_resets_on_the_first", |db| async move {
        let router = Router::new(catalogue_with(
            "period_calls = 1000\n",
            "period_calls = 5\n",
        ));
        let user = seed(
            &db,
            "org_m",
            "starter_m",
            Plan::Starter,
            10_000_000,
            None,
            NOV_10_1000,
        )
        .await;
        let model = "qwen-72b-fireworks";
        for i in 0..5 {
            let g = call(&db, &router, &user, model, NOV_10_1000 + i)
                .await
                .expect("within the month");
            let p = g.period.expect("period window");
            assert_eq!((p.limit, p.remaining, p.reset), (5, 4 - i as u64, DEC_01));
            ledger::settle(
                &db,
                &settlement(&g.hold_id, Outcome::Success, 100, 10),
                NOV_10_1000 + i,
            )
            .await
            .expect("settle");
        }
        // The next day's fresh daily window does not reopen the month.
        for now in [NOV_10_1000 + DAY, NOV_30_235959] {
            let e = call(&db, &router, &user, model, now)
                .await
                .expect_err("month used up");
            assert_eq!(e.kind, ErrorKind::QuotaExceeded);
            assert!(
                e.message.contains("Monthly limit: 5 calls"),
                "{}",
                e.message
            );
            assert!(e.message.contains("Resets on 2025-12-01"), "{}", e.message);
            assert_eq!(e.retry_after, Some((DEC_01 - now) as u64));
        }
        let g = call(&db, &router, &user, model, DEC_01)
            .await
            .expect("a new month");
        let p = g.period.expect("period window");
        assert_eq!((p.remaining, p.reset), (4, JAN_01));
    })
    .await;
}

#[tokio::test]
async fn a_trial_lasts_seven_days_from_creation() {
    for_each_backend("trial_lasts_seven_days", |db| async move {
        let created = NOV_10_1000 + 1_234;
        let router = Router::new(catalogue());
        let user = seed(
            &db,
            "org_t",
            "trial_t",
            Plan::Trial,
            10_000_000,
            None,
            created,
        )
        .await;
        let model = "llama3-70b-groq";
        let end = created + 7 * DAY;

        let g = call(&db, &router, &user, model, created)
            .await
            .expect("day one");
        let p = g.period.expect("trial window");
        assert_eq!((p.limit, p.remaining, p.reset), (700, 699, end));
        let g = call(&db, &router, &user, model, end - 1)
            .await
            .expect("last second of the trial");
        assert_eq!(g.period.expect("trial window").remaining, 698);

        for now in [end, end + 1, end + 30 * DAY] {
            let e = call(&db, &router, &user, model, now)
                .await
                .expect_err("trial over");
            assert_eq!(e.kind, ErrorKind::QuotaExceeded);
            assert!(e.message.contains("Trial period ended"), "{}", e.message);
            assert!(
                e.message.contains("2025-11-17"),
                "names the end date: {}",
                e.message
            );
            assert!(
                e.message.contains("Upgrade"),
                "says what to do: {}",
                e.message
            );
        }
        // Nothing was held for the refused calls.
        assert_eq!(
            scalar(&db, "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM holds", &[]).await,
            2
        );
    })
    .await;
}

#[tokio::test]
async fn a_trials_call_total_counts_across_its_days() {
    for_each_backend("trial_call_total", |db| async move {
        let router = Router::new(catalogue_with("period_calls = 700", "period_calls = 3"));
        let created = NOV_10_1000;
        let user = seed(
            &db,
            "org_t3",
            "trial_3",
            Plan::Trial,
            10_000_000,
            None,
            created,
        )
        .await;
        for day in 0..3 {
            call(&db, &router, &user, "mixtral-8x7b-hf", created + day * DAY)
                .await
                .expect("within the trial's total");
        }
        let e = call(&db, &router, &user, "mixtral-8x7b-hf", created + 4 * DAY)
            .await
            .expect_err("total used up");
        assert!(e.message.contains("Trial limit: 3 calls"), "{}", e.message);
        assert_eq!(
            e.retry_after,
            Some((3 * DAY) as u64),
            "until the trial's end"
        );
    })
    .await;
}
