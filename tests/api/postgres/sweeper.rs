//! The sweeper target: 3 replicas sweeping one PostgreSQL database
//! concurrently over 10,000 expiring tokens record each notice exactly once
//! (counted from the events table) and disable exactly the unused tokens,
//! while a batch is killed mid-transaction and a replica stops mid-run.

use std::time::{Duration, Instant};

use crate::{
    helpers,
    postgres::{drop_database, exec, query_strings, replica, sql_conn},
};

const TOKENS: usize = 10_000;

fn sweeping_with_defaults(c: &mut tokend::config::Config) {
    crate::sweeper::sweeping(c);
    c.policy_defaults.policy_expiry_notice_before = vec![Duration::from_secs(3600)];
    c.policy_defaults.policy_disable_unused_after = Some(Duration::from_secs(30 * 86_400));
}

/// (expiring_soon, expired, auto_disabled) events of the bulk account, and
/// whether each token has at most one of each.
async fn counts(conn: &mut sea_orm::sqlx::PgConnection) -> (usize, usize, usize, bool) {
    let rows = query_strings(
        conn,
        "SELECT kind || ':' || count(*) || ':' || count(DISTINCT token_id) FROM token_events \
         WHERE account_id = 'bulk' GROUP BY kind",
    )
    .await;
    let (mut soon, mut expired, mut disabled, mut once) = (0, 0, 0, true);
    for r in rows {
        let parts: Vec<&str> = r.split(':').collect();
        let (n, distinct): (usize, usize) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
        once &= n == distinct;
        match parts[0] {
            "expiring_soon" => soon = n,
            "expired" => expired = n,
            "auto_disabled" => disabled = n,
            _ => {}
        }
    }
    (soon, expired, disabled, once)
}

#[tokio::test]
async fn three_replicas_sweep_10000_tokens_exactly_once() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("three_replicas_sweep_10000_tokens_exactly_once").await
    else {
        return;
    };
    // Migrate, without sweeping, then seed in one statement: even tokens
    // expire in 30 min (inside the 1h horizon: one EXPIRING_SOON each),
    // odd ones expired 10 s ago (one EXPIRED each); every fifth was last
    // used 40 days ago (past the 30d default: disabled), the rest just now.
    let seeder = replica(&url, |c| c.sweep.sweep = false).await;
    let mut conn = sql_conn(&url).await;
    exec(
        &mut conn,
        &format!(
            "INSERT INTO tokens (id, account_id, owner_id, created_by, updated_by, name, \
             description, modules, api_version, metadata, state, state_reason, secret_hash, hint, \
             created_at, updated_at, last_used_at, expires_at) \
             SELECT substr(md5(i::text), 1, 16), 'bulk', 'b' || (i % 50), 'b', 'b', 'bulk ' || i, \
             '', '[]', '', '{{}}', 'active', '', '$argon2id$filler', '', \
             now() - interval '60 days', now() - interval '60 days', \
             CASE WHEN i % 5 = 0 THEN now() - interval '40 days' ELSE now() END, \
             CASE WHEN i % 2 = 0 THEN now() + interval '30 minutes' ELSE now() - interval '10 seconds' END \
             FROM generate_series(1, {TOKENS}) AS i"
        ),
    )
    .await;
    seeder.stop().await;

    let started = Instant::now();
    let a = replica(&url, sweeping_with_defaults).await;
    let b = replica(&url, sweeping_with_defaults).await;
    let c = replica(&url, sweeping_with_defaults).await;
    // Kill the sweeping batch once, mid-transaction, as a replica dying
    // would (its backend, holding the sweep lock, is terminated), and stop
    // replica c meanwhile.
    let lock = "locktype = 'advisory' AND classid = (7364916284 >> 32)::oid \
                AND objid = (7364916284 & 4294967295)::oid AND granted";
    let mut killed = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while killed == 0 && Instant::now() < deadline {
        killed = query_strings(
            &mut conn,
            &format!("SELECT count(pg_terminate_backend(pid))::text FROM pg_locks WHERE {lock}"),
        )
        .await[0]
            .parse::<usize>()
            .unwrap();
    }
    assert!(killed > 0, "never saw a sweeping batch to kill");
    c.stop().await;

    let expected = (TOKENS / 2, TOKENS / 2, TOKENS / 5);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (s, e, d, once) = counts(&mut conn).await;
        assert!(
            once,
            "a notice or auto-disable recorded twice for one token"
        );
        if (s, e, d) == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 300 s: {s} expiring_soon, {e} expired, {d} auto_disabled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    // More passes by the two left change nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s, e, d, once) = counts(&mut conn).await;
    assert!(once);
    assert_eq!((s, e, d), expected, "later passes recorded more");
    let wrong = query_strings(
        &mut conn,
        "SELECT count(*)::text FROM tokens WHERE account_id = 'bulk' AND \
         ((state = 'disabled') <> (last_used_at < now() - interval '30 days'))",
    )
    .await;
    assert_eq!(wrong, vec!["0"], "disabled exactly the unused tokens");
    let notices = query_strings(
        &mut conn,
        "SELECT count(*)::text FROM token_notices WHERE emitted",
    )
    .await;
    assert_eq!(notices, vec![TOKENS.to_string()]);
    println!(
        "sweeper: 3 replicas (one batch killed, one replica stopped), {TOKENS} tokens: \
         {} EXPIRING_SOON + {} EXPIRED once each, {} disabled, in {took:?}",
        expected.0, expected.1, expected.2
    );
    a.stop().await;
    b.stop().await;
    drop(conn);
    drop_database(&url).await;
}
