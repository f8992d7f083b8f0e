//! The integration guide's Appendix C questions, answered from usage logs: top users by
//! calls, most expensive models, usage per organisation over a period.

mod common;
use common::*;
use opsgate_control_plane::analytics;
use opsgate_control_plane::ledger;
use opsgate_core::contract::Outcome;
use opsgate_core::plan::Plan;
use opsgate_core::pricing::Usage;

#[tokio::test]
async fn appendix_c_questions() {
    for_each_backend("appendix_c", |db| async move {
        let router = Router::new(catalogue());
        let a = seed(
            &db,
            "org_a",
            "alice",
            Plan::Enterprise,
            100_000_000,
            None,
            T0,
        )
        .await;
        let b = seed(&db, "org_a", "bob", Plan::Enterprise, 0, None, T0).await;
        let c = seed(
            &db,
            "org_c",
            "carol",
            Plan::Enterprise,
            100_000_000,
            None,
            T0,
        )
        .await;
        // alice: 3 cheap calls; bob: 1 expensive call; carol: 2 cheap calls, 1 failed.
        let mut charged = std::collections::BTreeMap::<&str, i64>::new();
        let calls = [
            (&a, "gpt-4o-mini", Outcome::Success),
            (&a, "gpt-4o-mini", Outcome::Success),
            (&a, "gpt-4o-mini", Outcome::Success),
            (&b, "o1-preview", Outcome::Success),
            (&c, "gpt-4o-mini", Outcome::Success),
            (&c, "gpt-4o-mini", Outcome::Success),
            (&c, "gpt-4o-mini", Outcome::Failed),
        ];
        for (i, (user, model, outcome)) in calls.iter().enumerate() {
            let g = ledger::authorize(
                &db,
                &router.routing(),
                user,
                &chat(&user.id, model, 400, Some(200)),
                T0 + i as i64,
            )
            .await
            .expect("authorize");
            let s = opsgate_core::contract::Settlement {
                usage: Usage {
                    prompt_tokens: 100,
                    completion_tokens: 50,
                    images: 0,
                },
                latency_ms: 100 * (i as u64 + 1),
                ..settlement(&g.hold_id, *outcome, 0, 0)
            };
            *charged.entry(model).or_default() +=
                ledger::settle(&db, &s, T0 + 10).await.expect("settle");
        }

        let top = analytics::top_users(&db, T0, T0 + 100, 10)
            .await
            .expect("top users");
        let order: Vec<(&str, i64)> = top
            .iter()
            .map(|u| (u.user_id.as_str(), u.total_calls))
            .collect();
        assert_eq!(
            order,
            vec![("alice", 3), ("carol", 2), ("bob", 1)],
            "failed calls are not usage"
        );
        assert_eq!(top[0].total_tokens, 450);
        assert_eq!(top[0].avg_response_ms, 200.0); // (100 + 200 + 300) / 3

        let models = analytics::expensive_models(&db, T0, T0 + 100, 10)
            .await
            .expect("models");
        assert_eq!(models[0].model, "o1-preview", "{models:?}");
        assert_eq!(models[0].calls, 1);
        assert_eq!(models[1].model, "gpt-4o-mini");
        assert_eq!(models[1].calls, 5);
        assert_eq!(
            (models[1].total_credits * 1000.0).round() as i64,
            charged["gpt-4o-mini"]
        );

        let orgs = analytics::org_usage(&db, T0, T0 + 100).await.expect("orgs");
        let org_a = orgs.iter().find(|o| o.org_id == "org_a").expect("org_a");
        assert_eq!((org_a.active_users, org_a.total_calls), (2, 4));
        let org_c = orgs.iter().find(|o| o.org_id == "org_c").expect("org_c");
        assert_eq!((org_c.active_users, org_c.total_calls), (1, 2));

        // The period bounds what is counted.
        assert!(analytics::top_users(&db, T0 + 50, T0 + 100, 10)
            .await
            .expect("empty")
            .is_empty());
    })
    .await;
}
