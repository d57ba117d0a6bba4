//! What the PostgreSQL server really runs, read from its log (auto_explain).

use sea_orm::sqlx;
use tokend::pb;

use crate::helpers::{self};
use crate::postgres::harness::*;

/// The server log of this PostgreSQL cluster (Debian layout), where
/// auto_explain writes plans.
fn server_log_path() -> String {
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.find_map(|e| e.ok()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("/var/log/postgresql/postgresql-{version}-main.log")
}

/// The plans auto_explain logged for database `db` whose query text contains
/// `needle`, oldest first (a plan runs from its `LOG:  duration:` line to the
/// next prefixed log line).
fn logged_plans(log: &str, db: &str, needle: &str) -> Vec<String> {
    let mut plans = Vec::new();
    let mut current: Option<String> = None;
    let header = format!("@{db} LOG:  duration:");
    for line in log.lines() {
        let prefixed = line.len() > 4 && line.starts_with("20") && line.as_bytes()[4] == b'-';
        if prefixed {
            if let Some(p) = current.take()
                && p.contains(needle)
            {
                plans.push(p);
            }
            if line.contains(&header) {
                current = Some(String::new());
            }
        } else if let Some(p) = current.as_mut() {
            p.push_str(line);
            p.push('\n');
        }
    }
    if let Some(p) = current
        && p.contains(needle)
    {
        plans.push(p);
    }
    plans
}

/// The plans the server really runs for a name Search (auto_explain logs
/// every plan of this database, with actual row counts): sqlx prepares each
/// statement once per pooled connection, and from the sixth execution on
/// PostgreSQL may run a cached generic plan (planned without the values). A
/// replica with one pooled connection runs seven selective name Searches in a
/// large account (10 000 of 20 000 tokens; 2 000 other accounts): every one
/// must use idx_tokens_name_fold_trgm.
#[tokio::test]
async fn name_search_uses_the_trigram_index_on_a_reused_connection() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("name_search_keeps_the_trigram_index_on_a_reused_connection")
            .await
    else {
        return;
    };
    let db = database_name(&url);
    let mut conn = sql_conn(&url).await;
    let log_path = server_log_path();
    if std::fs::File::open(&log_path).is_err()
        || sqlx::raw_sql("LOAD 'auto_explain'")
            .execute(&mut conn)
            .await
            .is_err()
    {
        helpers::not_run(
            "name_search_uses_the_trigram_index_on_a_reused_connection",
            &format!("needs auto_explain and a readable {log_path}"),
        );
        drop_database(&url).await;
        return;
    }
    exec(
        &mut conn,
        &format!(
            "ALTER DATABASE {db} SET session_preload_libraries = 'auto_explain'; \
             ALTER DATABASE {db} SET auto_explain.log_min_duration = 0; \
             ALTER DATABASE {db} SET auto_explain.log_analyze = on"
        ),
    )
    .await;
    let app = replica(&url, |c| c.db_max_connections = 1).await;
    // 20 000 tokens: one large customer with half of them, 2 000 small accounts.
    exec(
        &mut conn,
        "INSERT INTO tokens (id, account_id, owner_id, created_by, updated_by, name, description, \
         modules, api_version, metadata, state, state_reason, secret_hash, hint, created_at, updated_at) \
         SELECT lpad(i::text, 16, 'x'), CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'small' || (i % 2000) END, \
         'owner' || (i % 40), 'ops', 'ops', \
         (ARRAY['CI deploy', 'Billing export', 'Grafana read', 'Backup job'])[1 + i % 4] || ' ' || md5(i::text), \
         '', '[\"svc:read\"]', '', '{}', (ARRAY['active', 'disabled', 'revoked'])[1 + i % 3], '', 'h', 'hint', \
         now() - i * interval '1 second', now() FROM generate_series(1, 20000) AS i",
    )
    .await;
    exec(&mut conn, "VACUUM ANALYZE tokens").await;
    let c = client(&app);
    // Selective name fragments, as people search for a token they know.
    let queries = ["c0ffee", "ab12", "e3f4", "9a8b", "d00d", "beef", "c0ffee"];
    for q in queries {
        search_ids(
            &c,
            &app.platform,
            pb::SearchRequest {
                account_id: "acme".into(),
                query: q.into(),
                ..Default::default()
            },
        )
        .await;
    }
    app.stop().await;
    drop(conn);
    let log = std::fs::read_to_string(&log_path).unwrap_or_else(|e| panic!("{log_path}: {e}"));
    let plans = logged_plans(&log, &db, "(tokend_fold(\"tokens\".\"name\")) LIKE");
    drop_database(&url).await;
    assert_eq!(plans.len(), queries.len(), "one logged plan per Search");
    let uses_trgm: Vec<bool> = plans
        .iter()
        .map(|p| p.contains("idx_tokens_name_fold_trgm"))
        .collect();
    println!("name Search on one connection, uses idx_tokens_name_fold_trgm: {uses_trgm:?}");
    for (n, (q, p)) in queries.iter().zip(&plans).enumerate() {
        // "<index>: <estimated> est / <actual> read" per index scan.
        let scans: Vec<String> = p
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once("Index Scan on ")?;
                let index = rest.split_whitespace().next()?;
                let est = rest.split("rows=").nth(1)?.split_whitespace().next()?;
                let actual = rest.split("rows=").nth(2)?.split_whitespace().next()?;
                Some(format!("{index}: {est} est / {actual} read"))
            })
            .collect();
        println!("  execution {} {q:?}: {}", n + 1, scans.join(", "));
    }
    assert!(
        uses_trgm.iter().all(|u| *u),
        "execution(s) {:?} of 7 did not use idx_tokens_name_fold_trgm; last plan:\n{}",
        uses_trgm
            .iter()
            .enumerate()
            .filter(|(_, u)| !**u)
            .map(|(i, _)| i + 1)
            .collect::<Vec<_>>(),
        plans[plans.len() - 1]
    );
}
