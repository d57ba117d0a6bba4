//! The hygiene sweeper, black-box, on SQLite and PostgreSQL: expiry notices
//! (the nearest horizon only when several are passed at once, `Expired` once
//! the expiry passes, fresh ones after an Update moves the expiry, none
//! repeated by a restart), auto-disable of unused tokens (the reason, the
//! service as actor, Validate answering DISABLED on another replica within a
//! second), and the new kinds through ListEvents and WatchEvents.

use std::time::{Duration, Instant};

use chrono::Utc;
use prost_types::FieldMask;
use tokend::{config::Config, pb};

use crate::helpers::{self, Api, SharedDb, TestApp, authed, id_of, ts};

pub(crate) const ACCOUNT: &str = "hyg";

/// Sweeps every 200 ms; last-used lag 100 ms + 1 s store timeout.
pub(crate) fn sweeping(c: &mut Config) {
    c.sweep.sweep = true;
    c.sweep.sweep_interval = Duration::from_millis(200);
    c.store_timeout = Duration::from_secs(1);
}

fn secs(n: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: n,
        nanos: 0,
    }
}

/// The account's policy: notices 1h and 10m before expiry; unused tokens
/// disabled after 3 s.
async fn set_policy(api: &Api, caller: &str) {
    api.raw()
        .update_account_policy(authed(
            caller,
            pb::UpdateAccountPolicyRequest {
                policy: Some(pb::AccountPolicy {
                    account_id: ACCOUNT.into(),
                    disable_unused_after: Some(secs(3)),
                    expiry_notice_before: vec![secs(3600), secs(600)],
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["disable_unused_after".into(), "expiry_notice_before".into()],
                }),
            },
        ))
        .await
        .expect("UpdateAccountPolicy");
}

async fn issue(api: &Api, caller: &str, name: &str, expires_in: Option<Duration>) -> String {
    let resp = api
        .issue(
            caller,
            pb::IssueRequest {
                account_id: ACCOUNT.into(),
                owner_id: "hy".into(),
                name: name.into(),
                expires_at: expires_in.map(|d| ts(Utc::now() + d)),
                ..Default::default()
            },
        )
        .await
        .expect("Issue");
    resp.secret
}

/// The sweeper's events of `token_id` (kind, detail), oldest first.
async fn sweeps(api: &Api, caller: &str, token_id: &str) -> Vec<(pb::EventKind, String)> {
    let mut events: Vec<(pb::EventKind, String)> = api
        .events(caller, token_id)
        .await
        .into_iter()
        .filter(|e| {
            matches!(
                e.kind(),
                pb::EventKind::ExpiringSoon | pb::EventKind::Expired | pb::EventKind::AutoDisabled
            )
        })
        .map(|e| {
            assert_eq!(
                (e.actor_token_id.as_str(), e.actor_owner_id.as_str()),
                ("tokend", "tokend"),
                "the sweeper's events are the service's"
            );
            (e.kind(), e.detail)
        })
        .collect();
    events.reverse();
    events
}

/// Polls until `check` holds for the sweeper's events of `token_id`.
async fn until_events(
    api: &Api,
    caller: &str,
    token_id: &str,
    what: &str,
    check: impl Fn(&[(pb::EventKind, String)]) -> bool,
) -> Vec<(pb::EventKind, String)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = sweeps(api, caller, token_id).await;
        if check(&events) {
            return events;
        }
        assert!(Instant::now() < deadline, "{what}: {events:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(events: &[(pb::EventKind, String)], kind: pb::EventKind) -> usize {
    events.iter().filter(|(k, _)| *k == kind).count()
}

/// Every sweeper event of the account, through WatchEvents from the start
/// filtered to the new kinds: their number.
async fn watched(app: &TestApp, expected: usize) -> usize {
    let mut client = app.api.raw();
    let mut stream = client
        .watch_events(authed(
            &app.platform,
            pb::WatchEventsRequest {
                account_id: ACCOUNT.into(),
                kinds: vec![
                    pb::EventKind::ExpiringSoon as i32,
                    pb::EventKind::Expired as i32,
                    pb::EventKind::AutoDisabled as i32,
                ],
                after_id: Some(0),
            },
        ))
        .await
        .expect("WatchEvents")
        .into_inner();
    let mut n = 0;
    while let Ok(Ok(Some(r))) =
        tokio::time::timeout(Duration::from_millis(1500), stream.message()).await
    {
        let e = r.event.unwrap();
        assert!(matches!(
            e.kind(),
            pb::EventKind::ExpiringSoon | pb::EventKind::Expired | pb::EventKind::AutoDisabled
        ));
        n += 1;
        if n > expected {
            break;
        }
    }
    n
}

/// The scenario: `a` and `b` are two servers on one store (the same one on
/// SQLite). Returns the ids whose sweeper events a restart must not repeat,
/// with their counts.
async fn scenario(a: &TestApp, b: &TestApp) -> Vec<(String, usize)> {
    let p = &a.platform;
    set_policy(a, p).await;
    let far = issue(a, p, "far", Some(Duration::from_secs(1800))).await;
    let near = issue(a, p, "near", Some(Duration::from_secs(300))).await;
    let soon = issue(a, p, "soon", Some(Duration::from_secs(4))).await;
    let idle = issue(a, p, "idle", None).await;
    let busy = issue(a, p, "busy", None).await;
    let (far, near, soon, idle_id, busy_id) = (
        id_of(&far),
        id_of(&near),
        id_of(&soon),
        id_of(&idle),
        id_of(&busy),
    );

    // Inside the 1h horizon only: one notice, for 1h.
    let e = until_events(a, p, &far, "far's 1h notice", |e| !e.is_empty()).await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].0, pb::EventKind::ExpiringSoon);
    assert!(e[0].1.starts_with("horizon=1h; expires_at="), "{e:?}");
    // Inside both horizons when first seen: the nearest (10m) only.
    let e = until_events(a, p, &near, "near's notice", |e| !e.is_empty()).await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].1.starts_with("horizon=10m;"), "{e:?}");
    // Unused for 3 s: disabled, and the other server knows within a second.
    // `busy` is validated (through b) every 300 ms and stays active.
    let b_client = b.api.clone();
    let (busy_value, b_platform) = (busy.clone(), b.platform.clone());
    let keep_busy = tokio::spawn(async move {
        loop {
            b_client.reason(&b_platform, &busy_value, &[]).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    assert_eq!(b.reason(&b.platform, &idle, &[]).await, pb::Reason::Valid);
    // (That use was recorded: the 3 s count again from it.)
    let e = until_events(a, p, &idle_id, "idle's auto-disable", |e| !e.is_empty()).await;
    let seen = Instant::now();
    assert_eq!(
        e,
        vec![(pb::EventKind::AutoDisabled, "unused for 3s".into())]
    );
    loop {
        match b.reason(&b.platform, &idle, &[]).await {
            pb::Reason::Disabled => break,
            r => assert!(
                seen.elapsed() < Duration::from_secs(1),
                "b still answers {r:?} a second after the auto-disable"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle_token = a.token(p, &idle_id).await.unwrap();
    assert_eq!(idle_token.state(), pb::State::Disabled);
    assert_eq!(idle_token.state_reason, "unused for 3s");
    keep_busy.abort();
    let busy_token = a.token(p, &busy_id).await.unwrap();
    assert_eq!(busy_token.state(), pb::State::Active, "a token in use");

    // Expiring in 4 s: the 10m notice at once, then Expired.
    let e = until_events(a, p, &soon, "soon's notices", |e| {
        count(e, pb::EventKind::Expired) > 0
    })
    .await;
    assert_eq!(
        e.iter()
            .map(|(k, _)| *k)
            .filter(|k| *k != pb::EventKind::AutoDisabled)
            .collect::<Vec<_>>(),
        vec![pb::EventKind::ExpiringSoon, pb::EventKind::Expired],
        "{e:?}"
    );

    // An Update that moves the expiry gets fresh notices (for the new one).
    a.raw()
        .update(authed(
            p,
            pb::UpdateRequest {
                id: far.clone(),
                expires_at: Some(ts(Utc::now() + Duration::from_secs(1200))),
                update_mask: Some(FieldMask {
                    paths: vec!["expires_at".into()],
                }),
                ..Default::default()
            },
        ))
        .await
        .expect("Update");
    let e = until_events(a, p, &far, "far's fresh notice", |e| {
        count(e, pb::EventKind::ExpiringSoon) == 2
    })
    .await;
    let notices: Vec<&String> = e
        .iter()
        .filter(|(k, _)| *k == pb::EventKind::ExpiringSoon)
        .map(|(_, d)| d)
        .collect();
    assert!(
        notices[1].starts_with("horizon=1h;") && notices[1] != notices[0],
        "{e:?}"
    );

    // The new kinds through WatchEvents' kind filter: exactly the events
    // ListEvents shows.
    let mut total = 0;
    let mut out = Vec::new();
    for id in [&far, &near, &soon, &idle_id, &busy_id] {
        let n = sweeps(a, p, id).await.len();
        total += n;
        out.push((id.clone(), n));
    }
    // Some unused tokens (far, near, soon) may be auto-disabled meanwhile:
    // count again at the end of the watch.
    let w = watched(b, total + 10).await;
    let mut again = 0;
    for id in [&far, &near, &soon, &idle_id, &busy_id] {
        again += sweeps(a, p, id).await.len();
    }
    assert!(
        w >= total && w <= again,
        "watched {w}, listed {total}..{again}"
    );
    out
}

/// A few more passes on `app` repeat no notice.
async fn no_repeats(app: &TestApp, counts: &[(String, usize)]) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (id, n) in counts {
        let events = sweeps(app, &app.platform, id).await;
        let notices = events
            .iter()
            .filter(|(k, _)| *k != pb::EventKind::AutoDisabled)
            .count();
        let before = *n;
        assert!(
            notices <= before && events.len() <= before + 1,
            "{id}: {before} sweeper events before the restart, now {events:?}"
        );
    }
}

#[tokio::test]
async fn sweeper_notices_and_auto_disable_on_sqlite() {
    let db = SharedDb::new();
    let app = db.spawn(sweeping).await;
    let counts = scenario(&app, &app).await;
    app.stop().await;
    // A restart (a new process on the same file) repeats nothing.
    let again = db.spawn(sweeping).await;
    no_repeats(&again, &counts).await;
    again.stop().await;
}

#[tokio::test]
async fn sweeper_notices_and_auto_disable_on_postgres() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("sweeper_notices_and_auto_disable_on_postgres").await
    else {
        return;
    };
    let a = crate::postgres::replica(&url, sweeping).await;
    let b = crate::postgres::replica(&url, sweeping).await;
    let counts = scenario(&a, &b).await;
    a.stop().await;
    b.stop().await;
    let again = crate::postgres::replica(&url, sweeping).await;
    no_repeats(&again, &counts).await;
    again.stop().await;
    crate::postgres::drop_database(&url).await;
}

#[tokio::test]
async fn the_sweeper_can_be_turned_off() {
    let app = helpers::spawn_app_with(|c| {
        sweeping(c);
        c.sweep.sweep = false;
    })
    .await;
    let p = app.platform.clone();
    set_policy(&app, &p).await;
    let soon = issue(&app, &p, "soon", Some(Duration::from_secs(1))).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(sweeps(&app, &p, &id_of(&soon)).await.is_empty());
    app.stop().await;
}
