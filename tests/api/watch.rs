//! WatchEvents: events arrive as they commit, filtered by account and kind;
//! only an admin (its account) or a platform caller may watch; bad kinds are
//! named; a watcher killed and resumed at random points misses nothing and
//! sees nothing twice; a client that stops reading is told where to resume
//! and, resuming there, loses nothing; and on PostgreSQL a watcher connected
//! to one replica sees what was committed through another.

use std::{collections::BTreeSet, time::Duration};

use rand::Rng;
use tokend::pb::{self, token_service_client::TokenServiceClient};
use tonic::{Code, Streaming, transport::Channel};
use tonic_types::StatusExt;

use crate::{
    helpers::{self, TestApp, authed, spawn_app, spawn_app_with},
    postgres::{drop_database, replica},
};

type Client = TokenServiceClient<Channel>;

async fn watch(
    client: &mut Client,
    caller: &str,
    req: pb::WatchEventsRequest,
) -> Result<Streaming<pb::WatchEventsResponse>, tonic::Status> {
    client
        .watch_events(authed(caller, req))
        .await
        .map(|r| r.into_inner())
}

/// The next event within `limit`, or `None` when none came.
async fn next_event(
    stream: &mut Streaming<pb::WatchEventsResponse>,
    limit: Duration,
) -> Option<pb::Event> {
    match tokio::time::timeout(limit, stream.message()).await {
        Ok(Ok(Some(r))) => r.event,
        Ok(Ok(None)) => None,
        Ok(Err(status)) => panic!("the watch ended: {status:?}"),
        Err(_) => None,
    }
}

async fn issue(client: &mut Client, caller: &str, account: &str, name: &str) -> String {
    client
        .issue(authed(
            caller,
            pb::IssueRequest {
                account_id: account.into(),
                owner_id: "w".into(),
                name: name.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap()
        .id
}

async fn set_state(client: &mut Client, caller: &str, id: &str, state: pb::State) {
    client
        .set_state(authed(
            caller,
            pb::SetStateRequest {
                id: id.into(),
                state: state as i32,
                reason: String::new(),
            },
        ))
        .await
        .unwrap();
}

/// Every event id in the table for `account` (all kinds), oldest first.
async fn all_event_ids(client: &mut Client, caller: &str, account: &str) -> Vec<i64> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = client
            .list_events(authed(
                caller,
                pb::ListEventsRequest {
                    account_id: account.into(),
                    page_size: 500,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        ids.extend(r.events.iter().map(|e| e.id));
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    ids.reverse();
    ids
}

#[tokio::test]
async fn events_arrive_as_they_commit_filtered_by_account_and_kind() {
    let app = spawn_app().await;
    let mut client = app.api.raw();
    let (_, admin) = app.token_for("acme", "alice", &["tokens:admin"]).await;
    let mut admin_watch = watch(
        &mut client,
        &admin,
        pb::WatchEventsRequest {
            kinds: vec![pb::EventKind::Issued as i32, pb::EventKind::Disabled as i32],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut platform_watch = watch(
        &mut client,
        &app.platform,
        pb::WatchEventsRequest::default(),
    )
    .await
    .unwrap();
    // Nothing from before the watch started.
    assert!(
        next_event(&mut admin_watch, Duration::from_millis(200))
            .await
            .is_none()
    );

    let acme = issue(&mut client, &app.platform, "acme", "a").await;
    let globex = issue(&mut client, &app.platform, "globex", "g").await;
    set_state(&mut client, &app.platform, &acme, pb::State::Disabled).await;
    set_state(&mut client, &app.platform, &acme, pb::State::Active).await;

    let mut seen = Vec::new();
    for _ in 0..2 {
        let e = next_event(&mut admin_watch, Duration::from_secs(5))
            .await
            .expect("event");
        seen.push((e.token_id, e.kind));
    }
    assert_eq!(
        seen,
        vec![
            (acme.clone(), pb::EventKind::Issued as i32),
            (acme.clone(), pb::EventKind::Disabled as i32)
        ]
    );
    // The enable (another kind) and globex's token (another account) never come.
    assert!(
        next_event(&mut admin_watch, Duration::from_millis(300))
            .await
            .is_none()
    );

    let mut all = Vec::new();
    for _ in 0..4 {
        let e = next_event(&mut platform_watch, Duration::from_secs(5))
            .await
            .expect("event");
        all.push(e.token_id);
    }
    assert_eq!(all, vec![acme.clone(), globex, acme.clone(), acme]);
}

#[tokio::test]
async fn only_admins_and_platform_callers_may_watch_and_bad_requests_name_the_field() {
    let app = spawn_app().await;
    let mut client = app.api.raw();
    let (_, selfish) = app.token_for("acme", "bob", &["tokens:self"]).await;
    let (_, admin) = app.token_for("acme", "alice", &["tokens:admin"]).await;
    let err = watch(&mut client, &selfish, pb::WatchEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let other = pb::WatchEventsRequest {
        account_id: "globex".into(),
        ..Default::default()
    };
    let err = watch(&mut client, &admin, other).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let bad: [(pb::WatchEventsRequest, &str); 3] = [
        (
            pb::WatchEventsRequest {
                kinds: vec![pb::EventKind::Issued as i32, 0],
                ..Default::default()
            },
            "kinds[1]",
        ),
        (
            pb::WatchEventsRequest {
                kinds: vec![99],
                ..Default::default()
            },
            "kinds[0]",
        ),
        (
            pb::WatchEventsRequest {
                after_id: Some(-1),
                ..Default::default()
            },
            "after_id",
        ),
    ];
    for (req, field) in bad {
        let err = watch(&mut client, &app.platform, req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let named = err
            .get_error_details()
            .bad_request()
            .and_then(|b| b.field_violations.first().map(|v| v.field.clone()));
        assert_eq!(named.as_deref(), Some(field), "{err:?}");
    }
}

/// Makes `n` events in account `acme` (disable/enable of a few tokens, from
/// several tasks at once) through `producer`'s API.
async fn produce(app: &TestApp, producer: Client, n: usize) {
    let mut ids = Vec::new();
    let mut c = producer.clone();
    for i in 0..4 {
        ids.push(issue(&mut c, &app.platform, "acme", &format!("p{i}")).await);
    }
    let per_task = n.saturating_sub(4) / 4;
    let mut tasks = Vec::new();
    for id in ids {
        let mut c = producer.clone();
        let caller = app.platform.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..per_task {
                let state = if k % 2 == 0 {
                    pb::State::Disabled
                } else {
                    pb::State::Active
                };
                set_state(&mut c, &caller, &id, state).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// A watcher that is dropped and reconnected (with its last id) at random
/// points while `n` events are made through `producer_app`, watching through
/// `watcher_app`: it must end up with exactly the table's events, in order.
async fn kill_and_resume(producer_app: &TestApp, watcher_app: &TestApp, n: usize) {
    let mut wc = watcher_app.api.raw();
    let caller = watcher_app.platform.clone();
    let start = all_event_ids(&mut wc, &caller, "acme").await;
    let from = start.last().copied().unwrap_or(0);
    let producer = producer_app.api.raw();
    let produce_done = produce(producer_app, producer, n);
    let watcher = async {
        let mut got: Vec<i64> = Vec::new();
        let mut last = from;
        let mut quiet = 0;
        loop {
            let mut s = watch(
                &mut wc.clone(),
                &caller,
                pb::WatchEventsRequest {
                    account_id: "acme".into(),
                    after_id: Some(last),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let take = rand::rng().random_range(1..60);
            let mut taken = 0;
            while taken < take {
                match next_event(&mut s, Duration::from_millis(1500)).await {
                    Some(e) => {
                        got.push(e.id);
                        last = e.id;
                        taken += 1;
                        quiet = 0;
                    }
                    None => break,
                }
            }
            drop(s); // killed mid-stream
            if taken == 0 {
                quiet += 1;
                if quiet >= 2 {
                    return got;
                }
            }
        }
    };
    let ((), got) = tokio::join!(produce_done, watcher);
    let table: Vec<i64> = all_event_ids(&mut wc, &caller, "acme")
        .await
        .into_iter()
        .filter(|id| *id > from)
        .collect();
    assert!(table.len() >= n - 4, "{} events made", table.len());
    let unique: BTreeSet<i64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "no event delivered twice");
    assert_eq!(got, table, "every event, in commit order, none missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_killed_and_resumed_at_random_points_loses_and_repeats_nothing() {
    let app = spawn_app().await;
    kill_and_resume(&app, &app, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_told_where_to_resume_and_loses_nothing() {
    let app = spawn_app_with(|c| {
        c.watch.watch_buffer = 2;
        c.watch.watch_lag_timeout = Duration::from_millis(200);
    })
    .await;
    // A small HTTP/2 window, so the transport itself buffers little.
    let channel = Channel::from_shared(app.endpoint.clone())
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut client = TokenServiceClient::new(channel);
    let mut stalled = watch(
        &mut client,
        &app.platform,
        pb::WatchEventsRequest {
            after_id: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    produce(&app, app.api.raw(), 1500).await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut got: Vec<i64> = Vec::new();
    let resume = loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.message()).await {
            Ok(Ok(Some(r))) => got.push(r.event.unwrap().id),
            Ok(Err(status)) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                let trailer: i64 = status
                    .metadata()
                    .get("tokend-resume-after-id")
                    .expect("resume trailer")
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(status.message().contains(&format!("after_id={trailer}")));
                break trailer;
            }
            other => panic!("the stalled watcher was not told to resume: {other:?}"),
        }
    };
    assert_eq!(
        Some(resume),
        got.last().copied(),
        "resume after the last event received"
    );
    let mut resumed = watch(
        &mut app.api.raw(),
        &app.platform,
        pb::WatchEventsRequest {
            after_id: Some(resume),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    while let Some(e) = next_event(&mut resumed, Duration::from_millis(1500)).await {
        got.push(e.id);
    }
    let table = all_event_ids(&mut app.api.raw(), &app.platform, "").await;
    assert_eq!(got, table, "every event exactly once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_postgres_a_watcher_on_one_replica_sees_events_committed_through_another() {
    let _pg = helpers::PG_LOCK.read().await;
    let name = "on_postgres_a_watcher_on_one_replica_sees_events_committed_through_another";
    let Some(url) = helpers::fresh_pg_database(name).await else {
        return;
    };
    let a = replica(&url, |_| {}).await;
    let b = replica(&url, |_| {}).await;
    let (mut ca, mut cb) = (a.api.raw(), b.api.raw());
    let mut s = watch(
        &mut cb,
        &b.platform,
        pb::WatchEventsRequest {
            kinds: vec![pb::EventKind::Issued as i32],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut latencies = Vec::new();
    for i in 0..30 {
        let started = std::time::Instant::now();
        let id = issue(&mut ca, &a.platform, "acme", &format!("r{i}")).await;
        let e = next_event(&mut s, Duration::from_secs(5))
            .await
            .expect("replica B's watcher got replica A's event");
        assert_eq!(e.token_id, id);
        latencies.push(started.elapsed());
    }
    latencies.sort();
    assert!(
        latencies[latencies.len() - 1] < Duration::from_secs(1),
        "{latencies:?}"
    );
    // Kill and resume across replicas: produced through A, watched through B.
    kill_and_resume(&a, &b, 300).await;
    drop(ca);
    a.stop().await;
    b.stop().await;
    drop_database(&url).await;
}
