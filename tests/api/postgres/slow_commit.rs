//! A write whose commit outlives the store timeout still reaches the cache
//! of the replica that made it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokend::pb;
use tonic::Code;

use super::{harness::*, trial::*};
use crate::helpers::{self};

/// A disable whose COMMIT takes longer than `store_timeout` (slow fsync,
/// synchronous replication lag...): the RPC answers UNAVAILABLE, yet the
/// transaction commits. The database, and every other replica, then say
/// DISABLED; the replica that made the change must not go on answering VALID.
/// (It once skipped its own change-log rows and NOTIFYs, and a retried
/// SetState found nothing to change and applied nothing either.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_times_out_but_commits_reaches_its_own_cache() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("a_write_that_times_out_but_commits_reaches_its_own_cache")
            .await
    else {
        return;
    };
    let a_app = replica(&url, |c| c.store_timeout = Duration::from_secs(1)).await;
    let b_app = replica(&url, |_| {}).await;
    let caller = a_app.platform.clone();
    let a = peer("A", &a_app).await;
    let b = peer("B", &b_app).await;
    let shared = Arc::new(Shared::default());
    let read = modules(&["svc:read"]);
    let (id, value) = issue_named(&a.client, &caller, "slow commit").await;
    warm(
        &[a.clone(), b.clone()],
        &caller,
        &value,
        &read,
        "slow commit",
    )
    .await;
    let mut conn = sql_conn(&url).await;
    // Disabling this token takes 1.5 s at COMMIT (a deferred trigger).
    exec(
        &mut conn,
        &format!(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF NEW.id = '{id}' AND NEW.state = 'disabled' AND OLD.state <> 'disabled' THEN \
             PERFORM pg_sleep(1.5); END IF; RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER slow_commit AFTER UPDATE ON tokens \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()"
        ),
    )
    .await;
    let t = Instant::now();
    let err = a
        .client
        .change_state(&caller, &id, pb::State::Disabled, "slow")
        .await
        .expect_err("the COMMIT outlives store_timeout");
    println!("SetState on A: {:?} after {}", err.code(), ms(t.elapsed()));
    assert_eq!(err.code(), Code::Unavailable);
    let committed = until(t, Duration::from_secs(5), Duration::from_millis(10), || {
        let url = url.clone();
        let id = id.clone();
        async move {
            query_strings(
                &mut sql_conn(&url).await,
                &format!("SELECT state::text FROM tokens WHERE id = '{id}'"),
            )
            .await
                == ["disabled"]
        }
    })
    .await
    .expect("the slow disable never committed");
    let committed = t + committed;
    println!(
        "the disable committed {} after the call began",
        ms(committed - t)
    );
    let on_b = rejections(
        std::slice::from_ref(&b),
        &caller,
        &value,
        pb::Reason::Disabled,
        committed,
        &shared,
        Kind::Disable,
    )
    .await;
    figures("B, after the late commit", &[on_b[0].propagation]);
    let (_, on_a, outcome) = until_rejected(
        a.clone(),
        caller.clone(),
        value.clone(),
        read.clone(),
        committed,
        Arc::clone(&shared),
    )
    .await;
    println!(
        "A, after its own late commit: {outcome:?} after {}",
        ms(on_a)
    );
    // The client retries; the token is already disabled, so nothing changes.
    let retried = a
        .client
        .change_state(&caller, &id, pb::State::Disabled, "slow")
        .await
        .expect("the retried SetState");
    assert_eq!(retried.state(), pb::State::Disabled);
    let after_retry = a.client.reason(&caller, &value, &["svc:read"]).await;
    println!("A, after a retried SetState answered DISABLED: Validate says {after_retry:?}");
    drop((a_app, b_app, conn));
    drop_database(&url).await;
    assert_eq!(
        outcome,
        Ok(pb::Reason::Disabled),
        "A, {} after its own disable committed",
        ms(on_a)
    );
    assert!(on_a <= Duration::from_secs(1), "A took {}", ms(on_a));
    assert_eq!(after_retry, pb::Reason::Disabled, "A after the retry");
}
