//! Search's SQL uses the migrations' indexes (EXPLAIN on a session that
//! refuses sequential scans).

use sea_orm::sqlx::PgConnection;

use super::harness::*;
use crate::helpers::{self, TestApp};

/// A fresh database with the migrations applied by a replica's own start-up,
/// 600 tokens (most in one big account, 40 owners, three states, names like
/// real ones, created over the last 10 hours), vacuumed and analyzed, and a
/// session with `enable_seqscan = off`.
async fn explain_fixture(url: &str) -> (TestApp, PgConnection) {
    let app = replica(url, |_| {}).await;
    let mut conn = sql_conn(url).await;
    fill_tokens(&mut conn).await;
    exec(&mut conn, "SET enable_seqscan = off").await;
    (app, conn)
}

/// Inserts the 600 tokens of `explain_fixture` (plain SQL: the search indexes
/// follow through the database's triggers) and vacuums/analyzes them.
async fn fill_tokens(conn: &mut PgConnection) {
    exec(
        conn,
        "INSERT INTO tokens (id, account_id, owner_id, created_by, updated_by, name, description, \
         modules, api_version, metadata, state, state_reason, secret_hash, hint, created_at, updated_at) \
         SELECT lpad(i::text, 16, 'x'), CASE WHEN i % 10 = 0 THEN 'small' || (i % 7) ELSE 'acme' END, \
         'owner' || (i % 40), 'ops', 'ops', \
         (ARRAY['CI deploy', 'Billing export', 'Grafana read', 'Backup job', 'Ünïcode Straße', 'c0ffee'])[1 + i % 6] \
         || ' ' || lpad(i::text, 5, '0') || ' ' || md5(i::text), '', \
         (ARRAY['[\"svc:read\"]', '[\"billing:read\", \"storage:*\"]', '[\"billing:write\"]'])[1 + i % 3], \
         '', '{}', (ARRAY['active', 'disabled', 'revoked'])[1 + i % 3], '', 'h', 'hint', \
         now() - i * interval '1 minute', now() FROM generate_series(1, 600) AS i",
    )
    .await;
    // VACUUM also moves the GIN index's pending list into the index, as
    // autovacuum does in production (a large pending list makes every GIN
    // scan look expensive to the planner).
    exec(conn, "VACUUM ANALYZE tokens").await;
    exec(conn, "VACUUM ANALYZE token_modules").await;
}

/// Prints the plan; `Err` unless it is an index scan on one of `indexes`.
async fn check_plan(
    conn: &mut PgConnection,
    what: &str,
    execute: &str,
    indexes: &[&str],
) -> Result<(), String> {
    let plan = query_strings(conn, &format!("EXPLAIN {execute}"))
        .await
        .join("\n");
    // tokend_fold() is inlined into plans with its whole translate() table.
    let shown: Vec<String> = plan
        .lines()
        .map(|l| l.chars().take(200).collect())
        .collect();
    println!("--- {what}:\n{}", shown.join("\n"));
    let used = indexes.iter().find(|i| plan.contains(*i));
    println!(
        "=> {what}: {}",
        used.map_or("NO EXPECTED INDEX".to_owned(), |i| format!("uses {i}"))
    );
    if plan.contains("Index") && used.is_some() && !plan.contains("Seq Scan") {
        Ok(())
    } else {
        Err(format!("{what}: expected one of {indexes:?}, got\n{plan}"))
    }
}

/// Every filter combination the README lists (`search_index::cases`): the
/// statements Search really sends for the page and for its total
/// (`Store::explain_search`, values inlined as a custom plan would have them),
/// explained on a session that refuses sequential scans where any index can
/// serve: each must use one of the expected indexes and no `Seq Scan`.
#[tokio::test]
async fn search_sql_uses_the_indexes() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) = helpers::fresh_pg_database("search_sql_uses_the_indexes").await else {
        return;
    };
    let (app, mut conn) = explain_fixture(&url).await;
    let mut failures = Vec::new();
    for case in crate::search_index::cases() {
        let plans = app
            .store
            .explain_search(&case.query)
            .await
            .unwrap()
            .unwrap();
        for (kind, sql) in [("page", &plans.page[0]), ("count", &plans.count[0])] {
            let what = format!("{} ({kind})", case.what);
            if let Err(e) = check_plan(&mut conn, &what, sql, case.pg).await {
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    app.stop().await;
    drop(conn);
    drop_database(&url).await;
}
