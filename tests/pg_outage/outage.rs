//! The store goes away and comes back: PostgreSQL is stopped, started and
//! restarted under load while three replicas serve. Ignored by a plain
//! `cargo test` (it would pull the server from under every other user of
//! it); `.ci/run` runs it after the main suite.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokend::{config::Config, pb};
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{self, id_of};
use crate::postgres::{harness::*, trial::*};

/// `pg_ctlcluster --skip-systemctl-redirect <version> main <action>`.
fn pg_ctl(action: &str) -> std::process::Output {
    let version = std::fs::read_dir("/etc/postgresql")
        .expect("/etc/postgresql")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a PostgreSQL version directory");
    std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &version, "main", action])
        .output()
        .expect("run pg_ctlcluster")
}

async fn pg_ctl_async(action: &'static str) -> std::process::Output {
    tokio::task::spawn_blocking(move || pg_ctl(action))
        .await
        .unwrap()
}

/// Starts PostgreSQL again when dropped (also when the test panics), so the
/// server is always left running.
struct StartOnDrop;

impl Drop for StartOnDrop {
    fn drop(&mut self) {
        let _ = pg_ctl("start");
    }
}

/// Whether the server accepts connections (`pg_isready`).
async fn pg_ready() -> bool {
    let url = std::env::var(helpers::PG_URL_ENV).unwrap();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("pg_isready")
            .args(["-q", "-t", "1", "-d", &url])
            .status()
            .is_ok_and(|s| s.success())
    })
    .await
    .unwrap()
}

/// One replica as the outage test drives it.
#[derive(Clone)]
struct Node {
    peer: Peer,
    channel: Channel,
    /// Never validated on this replica: each Validate of it is a miss.
    cold: [String; 2],
    /// Targets of this replica's writes (SetState disable).
    writes: [String; 2],
}

/// What one replica did while the store was down.
#[derive(Debug)]
struct DownReport {
    name: String,
    hits: usize,
    slowest_hit: Duration,
    miss: Duration,
    write: Duration,
    issue: Duration,
    not_serving_after: Option<Duration>,
}

/// While the store is down, concurrently: cache hits stay VALID; a miss, a
/// write and an Issue fail with UNAVAILABLE promptly; health turns NOT_SERVING.
async fn while_down(n: Node, caller: String, warm: Vec<String>, stopped: Instant) -> DownReport {
    let read = modules(&["svc:read"]);
    let name = n.peer.name.clone();
    let failures = async {
        let c = n.peer.client.clone();
        let prompt = |what: &str, r: Result<(), Status>, took: Duration| {
            let e = r.expect_err(&format!("{name}: {what} succeeded with the store down"));
            assert_eq!(e.code(), Code::Unavailable, "{name}: {what}: {e:?}");
            assert!(
                took <= Duration::from_millis(2500),
                "{name}: {what} took {} (store_timeout 1 s)",
                ms(took)
            );
            took
        };
        let t = Instant::now();
        let r = validate(&c, &caller, &n.cold[0], &read).await;
        if let Ok(v) = &r {
            panic!(
                "{name}: a miss answered {:?} with the store down",
                v.reason()
            );
        }
        let miss = prompt("miss", r.map(|_| ()), t.elapsed());
        let t = Instant::now();
        let r = c
            .change_state(&caller, &n.writes[0], pb::State::Disabled, "down")
            .await;
        let write = prompt("SetState", r.map(|_| ()), t.elapsed());
        let t = Instant::now();
        let r = c
            .issue(
                &caller,
                pb::IssueRequest {
                    owner_id: "down".into(),
                    name: "during the outage".into(),
                    ..Default::default()
                },
            )
            .await;
        let issue = prompt("Issue", r.map(|_| ()), t.elapsed());
        (miss, write, issue)
    };
    let not_serving = until(
        stopped,
        Duration::from_secs(6),
        Duration::from_millis(50),
        || {
            let channel = n.channel.clone();
            async move { health(channel).await.ok() == Some(ServingStatus::NotServing) }
        },
    );
    let hits = async {
        let c = n.peer.client.clone();
        let (mut hits, mut slowest) = (0, Duration::ZERO);
        while stopped.elapsed() < Duration::from_millis(4500) {
            for v in &warm {
                let t = Instant::now();
                let r = validate(&c, &caller, v, &read).await;
                slowest = slowest.max(t.elapsed());
                let r = r.unwrap_or_else(|e| panic!("{name}: a cache hit failed: {e:?}"));
                assert_eq!(r.reason(), pb::Reason::Valid, "{name}: a cache hit");
                hits += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (hits, slowest)
    };
    let ((miss, write, issue), not_serving_after, (hits, slowest_hit)) =
        tokio::join!(failures, not_serving, hits);
    DownReport {
        name,
        hits,
        slowest_hit,
        miss,
        write,
        issue,
        not_serving_after,
    }
}

/// After the store is back (`ready`: it accepts connections): how long until
/// this replica serves a miss, a write, and reports SERVING.
async fn recovery(
    n: Node,
    caller: String,
    ready: Instant,
    round: usize,
) -> (String, [Duration; 3]) {
    let limit = Duration::from_secs(5);
    let every = Duration::from_millis(25);
    let name = n.peer.name.clone();
    let c = n.peer.client.clone();
    let cold = n.cold[round].clone();
    let miss = until(ready, limit, every, || {
        let (c, caller, cold, name) = (c.clone(), caller.clone(), cold.clone(), name.clone());
        async move {
            match validate(&c, &caller, &cold, &modules(&["svc:read"])).await {
                Ok(v) => {
                    assert_eq!(
                        v.reason(),
                        pb::Reason::Valid,
                        "{name}: a miss after recovery"
                    );
                    true
                }
                Err(e) => {
                    assert_eq!(e.code(), Code::Unavailable, "{name}: {e:?}");
                    false
                }
            }
        }
    });
    let target = n.writes[round].clone();
    let write = until(ready, limit, every, || {
        let (c, caller, target, name) = (c.clone(), caller.clone(), target.clone(), name.clone());
        async move {
            match c
                .change_state(&caller, &target, pb::State::Disabled, "back")
                .await
            {
                Ok(t) => {
                    assert_eq!(t.state(), pb::State::Disabled);
                    true
                }
                Err(e) => {
                    assert_eq!(e.code(), Code::Unavailable, "{name}: {e:?}");
                    false
                }
            }
        }
    });
    let serving = until(ready, limit, every, || {
        let channel = n.channel.clone();
        async move { health(channel).await.ok() == Some(ServingStatus::Serving) }
    });
    let (miss, write, serving) = tokio::join!(miss, write, serving);
    let got = [miss, write, serving].map(|t| t.unwrap_or(Duration::MAX));
    for (what, t) in ["miss", "write", "SERVING"].iter().zip(got) {
        assert!(
            t <= limit,
            "{name}: {what} not back within {} of the store accepting connections",
            ms(limit)
        );
    }
    (name, got)
}

async fn wait_pg_ready(from: Instant) -> Instant {
    until(
        from,
        Duration::from_secs(30),
        Duration::from_millis(20),
        pg_ready,
    )
    .await
    .expect("PostgreSQL did not come back within 30 s");
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "stops the shared PostgreSQL server; .ci/run runs it (cargo test --test pg_outage -- --include-ignored)"]
async fn store_outage_and_restart() {
    // Stops the server: no other PostgreSQL test of this binary may run meanwhile.
    let _pg = helpers::PG_LOCK.write().await;
    let Some(url) = helpers::fresh_pg_database("store_outage_and_restart").await else {
        return;
    };
    let quick = |c: &mut Config| {
        c.store_timeout = Duration::from_secs(1);
        c.store_unhealthy_after = Duration::from_secs(1);
    };
    let apps = [
        replica(&url, quick).await,
        replica(&url, quick).await,
        replica(&url, quick).await,
    ];
    let caller = apps[0].platform.clone();
    let names = ["A", "B", "C"];
    let mut peers = Vec::new();
    for (n, app) in names.iter().zip(&apps) {
        peers.push(peer(n, app).await);
    }
    let all: Vec<Client> = peers.iter().map(|p| p.client.clone()).collect();
    let mut a = peers[0].client.clone();
    let mut b = peers[1].client.clone();
    let warm_set = steady_tokens(&a, &all, &caller, 6).await;
    // Tokens cached everywhere, to disable after each recovery.
    let witnesses = steady_tokens(&a, &all, &caller, 2).await;
    let mut nodes = Vec::new();
    for (i, (p, app)) in peers.iter().zip(&apps).enumerate() {
        // A replica caches what it issues: cold tokens come from another one.
        let issuer = if i == 0 { &mut b } else { &mut a };
        let mut cold = Vec::new();
        let mut writes = Vec::new();
        for round in 0..2 {
            cold.push(
                issue_named(issuer, &caller, &format!("cold {} {round}", p.name))
                    .await
                    .1,
            );
            writes.push(
                issue_named(issuer, &caller, &format!("write {} {round}", p.name))
                    .await
                    .0,
            );
        }
        nodes.push(Node {
            peer: p.clone(),
            channel: app.channel().await,
            cold: [cold[0].clone(), cold[1].clone()],
            writes: [writes[0].clone(), writes[1].clone()],
        });
    }
    for n in &nodes {
        assert_eq!(
            health(n.channel.clone()).await.unwrap(),
            ServingStatus::Serving
        );
    }

    // --- Stop PostgreSQL.
    let _restart = StartOnDrop;
    let t = Instant::now();
    let out = pg_ctl_async("stop").await;
    assert!(out.status.success(), "pg_ctlcluster stop: {out:?}");
    let stopped = Instant::now();
    println!("PostgreSQL stopped in {}", ms(stopped - t));
    let mut set = tokio::task::JoinSet::new();
    for n in &nodes {
        set.spawn(while_down(
            n.clone(),
            caller.clone(),
            warm_set.clone(),
            stopped,
        ));
    }
    let mut down = Vec::new();
    while let Some(r) = set.join_next().await {
        down.push(r.unwrap());
    }
    down.sort_by(|x, y| x.name.cmp(&y.name));
    for r in &down {
        println!(
            "store down, {}: {} cache hits all VALID (slowest {}); miss UNAVAILABLE in {}, \
             SetState in {}, Issue in {}; NOT_SERVING after {}",
            r.name,
            r.hits,
            ms(r.slowest_hit),
            ms(r.miss),
            ms(r.write),
            ms(r.issue),
            r.not_serving_after.map_or("never".into(), ms)
        );
    }
    for r in &down {
        let t = r.not_serving_after.unwrap_or(Duration::MAX);
        assert!(
            t <= Duration::from_secs(4),
            "{}: health NOT_SERVING only after {} (store_unhealthy_after 1 s)",
            r.name,
            ms(t)
        );
        assert!(
            r.slowest_hit <= Duration::from_millis(500),
            "{}: slow hit",
            r.name
        );
    }

    // --- Start it again.
    let out = pg_ctl_async("start").await;
    assert!(out.status.success(), "pg_ctlcluster start: {out:?}");
    let ready = wait_pg_ready(Instant::now()).await;
    let mut set = tokio::task::JoinSet::new();
    for n in &nodes {
        set.spawn(recovery(n.clone(), caller.clone(), ready, 0));
    }
    let mut back = Vec::new();
    while let Some(r) = set.join_next().await {
        back.push(r.unwrap());
    }
    back.sort();
    for (name, [miss, write, serving]) in &back {
        println!(
            "store back, {name}: miss served after {}, write after {}, SERVING after {}",
            ms(*miss),
            ms(*write),
            ms(*serving)
        );
    }
    let db = database_name(&url);
    let listeners_back = |from: Instant| {
        let (url, db) = (url.clone(), db.clone());
        until(
            from,
            Duration::from_secs(10),
            Duration::from_millis(50),
            move || {
                let (url, db) = (url.clone(), db.clone());
                async move { listen_sessions(&mut sql_conn(&url).await, &db).await == 3 }
            },
        )
    };
    let shared = Arc::new(Shared::default());
    let returned = {
        let a = peers[0].client.clone();
        a.change_state(&caller, &id_of(&witnesses[0]), pb::State::Disabled, "w")
            .await
            .unwrap();
        Instant::now()
    };
    let after_start = rejections(
        &peers[1..],
        &caller,
        &witnesses[0],
        pb::Reason::Disabled,
        returned,
        &shared,
        Kind::Disable,
    )
    .await;

    // Polling covers the time the LISTEN connections need to come back.
    println!(
        "all 3 LISTEN sessions back {} after the store accepted connections again",
        listeners_back(ready)
            .await
            .map_or("never (10 s)".into(), ms)
    );

    // --- Restart it under load.
    *shared.steady.lock().unwrap() = warm_set.clone();
    let loads: Vec<Load> = peers
        .iter()
        .map(|p| {
            start_load(
                &p.name,
                p.client.clone(),
                caller.clone(),
                Arc::clone(&shared),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let out = pg_ctl_async("restart").await;
    assert!(out.status.success(), "pg_ctlcluster restart: {out:?}");
    let ready = wait_pg_ready(t).await;
    println!("PostgreSQL restarted in {}", ms(ready - t));
    let mut set = tokio::task::JoinSet::new();
    for n in &nodes {
        set.spawn(recovery(n.clone(), caller.clone(), ready, 1));
    }
    let mut back = Vec::new();
    while let Some(r) = set.join_next().await {
        back.push(r.unwrap());
    }
    back.sort();
    for (name, [miss, write, serving]) in &back {
        println!(
            "after restart, {name}: miss served after {}, write after {}, SERVING after {}",
            ms(*miss),
            ms(*write),
            ms(*serving)
        );
    }
    // A disable made after the restart reaches the other replicas.
    let returned = {
        let a = peers[0].client.clone();
        a.change_state(&caller, &id_of(&witnesses[1]), pb::State::Disabled, "w")
            .await
            .unwrap();
        Instant::now()
    };
    let after_restart = rejections(
        &peers[1..],
        &caller,
        &witnesses[1],
        pb::Reason::Disabled,
        returned,
        &shared,
        Kind::Disable,
    )
    .await;
    let listening = listeners_back(ready).await;
    println!(
        "all 3 LISTEN sessions back {} after the restart",
        listening.map_or("never (10 s)".into(), ms)
    );
    let mut w = peers[0].clone();
    let (with_listeners, _) = trial(Kind::Disable, 0, &mut w, &peers[1..], &caller, &shared).await;
    let mut reports = Vec::new();
    for l in loads {
        reports.push(l.finish().await);
    }
    assert_loads_clean(&reports);
    assert_no_late_valid(&shared);
    assert_propagation("disable after the store came back", &after_start);
    assert_propagation("disable right after the restart", &after_restart);
    assert_propagation("disable once LISTEN is back", &with_listeners);
    assert!(
        listening.is_some(),
        "the LISTEN sessions did not come back within 10 s"
    );
    drop(apps);
    drop_database(&url).await;
}
