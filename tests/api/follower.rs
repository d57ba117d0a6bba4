//! The supervised change-log follower (PostgreSQL): its LISTEN connection is
//! killed again and again (`pg_terminate_backend`, as a failover or an idle
//! killer would) while tokens are revoked on another replica. The follower
//! comes back each time (a new LISTEN session, counted by
//! `tokend_changelog_listener_reconnects_total`), health is NOT_SERVING
//! while it is down and SERVING once it has caught up with the log, and no
//! revocation is missed. Needs `TOKEND_TEST_POSTGRES_URL` (without it: a
//! failure under `CI`, otherwise `NOT RUN` on the terminal).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokend::pb;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers,
    metrics::{http_get, sample},
    postgres::{
        SERVICE, client, database_name, drop_database, health, issue_named, kill_listeners,
        listen_sessions, replica, revoke_id, sql_conn, until,
    },
};

const RECONNECTS: &str = "tokend_changelog_listener_reconnects_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_follower_connection_is_not_serving_until_caught_up_and_misses_no_revocation() {
    let _pg = helpers::PG_LOCK.read().await;
    let name =
        "a_killed_follower_connection_is_not_serving_until_caught_up_and_misses_no_revocation";
    let Some(url) = helpers::fresh_pg_database(name).await else {
        return;
    };
    let a = replica(&url, |_| {}).await;
    let b = replica(&url, |c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let caller = a.platform.clone();
    let (ca, cb) = (client(&a), client(&b));
    let db = database_name(&url);
    let mut conn = sql_conn(&url).await;

    // Ready only once the follower is connected and has caught up.
    let b_channel = b.channel().await;
    let ready = until(
        Instant::now(),
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            let ch = b_channel.clone();
            async move { health(ch).await.ok() == Some(ServingStatus::Serving) }
        },
    )
    .await;
    assert!(ready.is_some(), "replica B never became SERVING");
    let listening = until(
        Instant::now(),
        Duration::from_secs(5),
        Duration::from_millis(10),
        || {
            let url = url.clone();
            let db = db.clone();
            async move { listen_sessions(&mut sql_conn(&url).await, &db).await == 2 }
        },
    )
    .await;
    assert!(listening.is_some(), "both replicas should LISTEN");

    let mut tokens = Vec::new();
    for i in 0..12 {
        let (id, value) = issue_named(&ca, &caller, &format!("kill {i}")).await;
        assert_eq!(cb.reason(&caller, &value, &[]).await, pb::Reason::Valid);
        tokens.push((id, value));
    }

    // Every status B's health reports, as a watcher sees it.
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let mut watch = HealthClient::new(b_channel.clone())
        .watch(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let seen = Arc::clone(&statuses);
    let watcher = tokio::spawn(async move {
        while let Ok(Some(m)) = watch.message().await {
            seen.lock().unwrap().push((Instant::now(), m.status()));
        }
    });
    let metrics = b.metrics_addr.unwrap();
    let reconnects_before =
        sample(&http_get(metrics, "/metrics").await.2, RECONNECTS).unwrap_or(0.0);

    // The storm: kill every LISTEN session, then revoke at once on A (B's
    // NOTIFY for it goes nowhere; only the catch-up can bring it).
    const KILLS: usize = 8;
    let mut down = Vec::new();
    for (id, _) in tokens.iter().take(KILLS) {
        let killed_at = Instant::now();
        assert!(
            kill_listeners(&mut conn, &db).await >= 1,
            "no LISTEN session to kill"
        );
        revoke_id(&ca, &caller, id).await.unwrap();
        // Back: a new LISTEN session for each replica.
        let back = until(
            killed_at,
            Duration::from_secs(5),
            Duration::from_millis(5),
            || {
                let url = url.clone();
                let db = db.clone();
                async move { listen_sessions(&mut sql_conn(&url).await, &db).await == 2 }
            },
        )
        .await;
        down.push(back.expect("the follower did not reconnect within 5 s"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let serving_again = until(
        Instant::now(),
        Duration::from_secs(5),
        Duration::from_millis(5),
        || {
            let ch = b_channel.clone();
            async move { health(ch).await.ok() == Some(ServingStatus::Serving) }
        },
    )
    .await;
    assert!(serving_again.is_some(), "B did not return to SERVING");

    // No revocation missed: every revoked token is rejected on B, the rest valid.
    for (i, (_, value)) in tokens.iter().enumerate() {
        let want = if i < KILLS {
            pb::Reason::Revoked
        } else {
            pb::Reason::Valid
        };
        assert_eq!(cb.reason(&caller, value, &[]).await, want, "token {i} on B");
    }

    tokio::time::sleep(Duration::from_millis(100)).await;
    watcher.abort();
    let statuses = statuses.lock().unwrap().clone();
    let not_serving = statuses
        .iter()
        .filter(|(_, s)| *s == ServingStatus::NotServing)
        .count();
    println!(
        "{KILLS} kills: LISTEN back after {:?}; health reported {} statuses, {not_serving} NOT_SERVING",
        down,
        statuses.len()
    );
    assert!(
        not_serving >= 1,
        "health never reported NOT_SERVING while the follower was down: {statuses:?}"
    );
    assert_eq!(
        statuses.last().map(|s| s.1),
        Some(ServingStatus::Serving),
        "health must end SERVING"
    );
    let reconnects_after =
        sample(&http_get(metrics, "/metrics").await.2, RECONNECTS).unwrap_or(0.0);
    assert!(
        reconnects_after - reconnects_before >= KILLS as f64,
        "reconnects counted: {reconnects_before} -> {reconnects_after}"
    );
    drop((a, b, conn));
    drop_database(&url).await;
}
