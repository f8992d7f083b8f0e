//! PostgreSQL without autovacuum: the control plane analyzes its ledger tables itself, so a
//! plan made while `holds` was nearly empty does not go on scanning it whole as it grows.
//! (The local test server runs with autovacuum off, so this runs here.)

mod common;

use common::*;
use opsgate_control_plane::db::Backend;
use sqlx::Row;
use std::time::Duration;

#[tokio::test]
async fn without_autovacuum_the_ledger_tables_are_analyzed_on_a_timer() {
    let Some(t) = TestDb::open(Backend::Postgres, "statistics").await else {
        return;
    };
    let autovacuum: String = sqlx::query("SHOW autovacuum")
        .fetch_one(&t.db.pool)
        .await
        .expect("show")
        .get(0);
    let started = t.db.keep_statistics(Duration::from_millis(200)).await;
    assert_eq!(
        started,
        autovacuum == "off",
        "only where the server does not"
    );
    if started {
        let analyzed = || async {
            let row = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM pg_stat_user_tables \
                 WHERE schemaname = current_schema() AND relname = 'holds' AND last_analyze IS NOT NULL",
            )
            .fetch_one(&t.db.pool)
            .await
            .expect("stats");
            row.get::<i64, _>("n")
        };
        let mut seen = 0;
        for _ in 0..50 {
            seen = analyzed().await;
            if seen == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, 1, "holds analyzed by the control plane");
    }
    // SQLite has nothing of the kind to do.
    let s = TestDb::sqlite().await;
    assert!(!s.db.keep_statistics(Duration::from_millis(200)).await);
    s.close().await;
    t.close().await;
}
