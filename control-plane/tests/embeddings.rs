//! Embeddings through authorize and settle: routed to the provider's `/embeddings`, held for
//! the inputs' token bound at the input price (with the plan's markup), settled for the input
//! tokens the provider reported, open to every plan, kept apart from chat models, and free on
//! the caller's own OpenAI key — on SQLite and PostgreSQL.

mod common;

use common::*;
use opsgate_control_plane::byok::{self, Owner};
use opsgate_control_plane::ledger;
use opsgate_core::contract::{AuthorizeRequest, Endpoint, Outcome};
use opsgate_core::plan::{Plan, PowerLevel};
use opsgate_core::pricing::Usage;
use opsgate_core::ErrorKind;

const OAI_KEY: &str = "sk-proj-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd";

/// An embeddings call holding `input_tokens` (the filter's bound of the inputs).
fn embed(user: &str, model: Option<&str>, input_tokens: u64) -> AuthorizeRequest {
    AuthorizeRequest {
        endpoint: Endpoint::Embeddings,
        model: model.map(str::to_string),
        max_tokens: None,
        ..chat(user, "unused", input_tokens, None)
    }
}

fn input(tokens: u64) -> Usage {
    Usage {
        prompt_tokens: tokens,
        ..Usage::default()
    }
}

#[tokio::test]
async fn embeddings_hold_and_charge_input_tokens_only() {
    for_each_backend("embeddings_metered", |db| async move {
        let router = Router::new(catalogue());
        // Starter: +20 % markup; embeddings are in the free tier every plan has.
        let user = seed(&db, "org_e1", "st_e1", Plan::Starter, 1_000_000, None, T0).await;
        let req = embed("st_e1", Some("text-embedding-3-large"), 10_000);
        let g = ledger::authorize(&db, &router.routing(), &user, &req, T0)
            .await
            .expect("authorize");
        // 10,000 tokens × 130,000 mc / 1M × 1.2 = 1,560 mc.
        assert_eq!(g.hold_mc.0, 1_560);
        assert_eq!(g.rate.cost(&input(10_000)), 1_560);
        assert_eq!(g.max_tokens, None, "no completion to bound");
        assert!(!g.max_tokens_chosen && !g.byok);
        assert_eq!(g.model, "text-embedding-3-large");
        assert_eq!(g.provider, "openai");
        assert_eq!(g.upstream.path, "/v1/embeddings");
        assert_eq!(g.upstream.model, "text-embedding-3-large");
        assert_eq!(g.upstream.api_key, "platform-key-openai");
        assert!(!g.upstream.takes_temperature);
        assert_eq!(
            g.dimensions,
            Some(3072),
            "the catalogue's vector size, for the filter's answer-size check"
        );
        let o = org(&db, "org_e1").await;
        assert_eq!(o.credits_held, 1_560);

        // Settled for the input tokens the provider reported: 2,000 × 0.13 × 1.2 = 312 mc.
        let charged = ledger::settle(
            &db,
            &settlement(&g.hold_id, Outcome::Success, 2_000, 0),
            T0 + 1,
        )
        .await
        .expect("settle");
        assert_eq!(charged, 312);
        let o = org(&db, "org_e1").await;
        assert_eq!((o.credits_used, o.credits_held), (312, 0));
        assert_eq!(
            scalar(
                &db,
                "SELECT prompt_tokens AS n FROM usage_logs WHERE hold_id = $1",
                &[&g.hold_id]
            )
            .await,
            2_000
        );

        // Trial (no markup) may embed too; eco halves the price as on chat.
        let trial = seed(&db, "org_e2", "tr_e2", Plan::Trial, 1_000_000, None, T0).await;
        let req = AuthorizeRequest {
            power_level: PowerLevel::Eco,
            ..embed("tr_e2", Some("text-embedding-3-small"), 100_000)
        };
        let g = ledger::authorize(&db, &router.routing(), &trial, &req, T0)
            .await
            .expect("trial may embed");
        // 100,000 × 20,000 / 1M × 0.5 = 1,000 mc.
        assert_eq!(g.hold_mc.0, 1_000);

        // More than the balance covers: 402, nothing held.
        let poor = seed(&db, "org_e3", "ent_e3", Plan::Enterprise, 100, None, T0).await;
        let e = ledger::authorize(
            &db,
            &router.routing(),
            &poor,
            &embed("ent_e3", Some("text-embedding-3-large"), 1_000_000),
            T0,
        )
        .await
        .expect_err("130 credits needed, 0.1 available");
        assert_eq!(e.0.kind, ErrorKind::InsufficientCredits);
        assert_eq!(org(&db, "org_e3").await.credits_held, 0);
    })
    .await;
}

#[tokio::test]
async fn embedding_and_chat_models_serve_only_their_own_endpoint() {
    for_each_backend("embeddings_kinds", |db| async move {
        let router = Router::new(catalogue());
        let user = seed(
            &db,
            "org_e4",
            "ent_e4",
            Plan::Enterprise,
            1_000_000,
            None,
            T0,
        )
        .await;
        let e = ledger::authorize(
            &db,
            &router.routing(),
            &user,
            &embed("ent_e4", Some("gpt-4o-mini"), 10),
            T0,
        )
        .await
        .expect_err("a chat model embeds nothing");
        assert_eq!(e.0.status(), 400, "{}", e.0.message);
        let e = ledger::authorize(
            &db,
            &router.routing(),
            &user,
            &chat("ent_e4", "text-embedding-3-small", 10, Some(10)),
            T0,
        )
        .await
        .expect_err("an embedding model does not chat");
        assert_eq!(e.0.status(), 400, "{}", e.0.message);
        // No model named: the gateway picks an embedding model by power level.
        for (power, id) in [
            (PowerLevel::Eco, "text-embedding-3-small"),
            (PowerLevel::Precision, "text-embedding-3-large"),
        ] {
            let req = AuthorizeRequest {
                power_level: power,
                ..embed("ent_e4", None, 10)
            };
            let g = ledger::authorize(&db, &router.routing(), &user, &req, T0)
                .await
                .expect("auto");
            assert_eq!(g.model, id, "{power:?}");
            assert_eq!(g.upstream.path, "/v1/embeddings");
        }
    })
    .await;
}

#[tokio::test]
async fn a_callers_own_openai_key_embeds_at_no_cost() {
    for_each_backend("embeddings_byok", |db| async move {
        let router = Router::new(catalogue());
        let user = seed(&db, "org_e5", "pro_e5", Plan::Professional, 1_000, None, T0).await;
        byok::put(
            &db,
            &router.keyring,
            &router.catalogue,
            Owner::User("pro_e5"),
            "openai",
            OAI_KEY,
            None,
            ACTOR,
            T0,
        )
        .await
        .expect("store key");
        // Far more than the 1 credit the org has: the caller's own key pays.
        let req = embed("pro_e5", Some("text-embedding-3-large"), 1_000_000);
        let g = ledger::authorize(&db, &router.routing(), &user, &req, T0)
            .await
            .expect("byok");
        assert!(g.byok, "{g:?}");
        assert_eq!(g.hold_mc.0, 0);
        assert_eq!(g.upstream.api_key, OAI_KEY);
        assert_eq!(g.upstream.path, "/v1/embeddings");
        let charged = ledger::settle(
            &db,
            &settlement(&g.hold_id, Outcome::Success, 500_000, 0),
            T0 + 1,
        )
        .await
        .expect("settle");
        assert_eq!(charged, 0);
        let o = org(&db, "org_e5").await;
        assert_eq!((o.credits_used, o.credits_held), (0, 0));
    })
    .await;
}
