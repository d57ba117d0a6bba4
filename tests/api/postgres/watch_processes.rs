//! The issue's WatchEvents resume target with real processes: three
//! `tokend serve` processes A, B and C on one PostgreSQL database; 1,000
//! mutations committed through A and C while a watcher on B is dropped at
//! random points and reconnects with its last id, and once B's process is
//! killed (SIGKILL) and the watcher resumes on C. What the watcher received
//! must be exactly the events table's ids after the start, in order: one
//! lost or repeated event fails the test. No timing is asserted here
//! (`tokend-bench watch` measures the latency).

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rand::Rng;
use tokend::pb::{self, token_service_client::TokenServiceClient};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{self, authed},
    postgres::{drop_database, query_strings, sql_conn},
};

type Client = TokenServiceClient<Channel>;

const EVENTS: usize = 1000;
const ACCOUNT: &str = "watch";

/// The environment every process of this test runs with.
fn env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TOKEND_DATABASE_URL", url.to_owned()),
        (
            "TOKEND_VERIFIER_KEY_FILE",
            helpers::PG_KEY_FILE.1.display().to_string(),
        ),
        ("TOKEND_ARGON2_MEMORY_KIB", "256".into()),
        ("TOKEND_ARGON2_ITERATIONS", "1".into()),
        ("TOKEND_SWEEP", "false".into()),
        ("NO_COLOR", "1".into()),
    ]
}

/// `tokend bootstrap`: a platform token for the store at `url`.
fn bootstrap(url: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["bootstrap", "--account", "ops", "--owner", "ops"])
        .envs(env(url))
        .env("TOKEND_LOG", "warn")
        .output()
        .expect("run tokend bootstrap");
    assert!(
        out.status.success(),
        "bootstrap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One `tokend serve` process; killed (SIGKILL) when dropped.
struct Process {
    child: Child,
    url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port in `addr=127.0.0.1:PORT` on the "tokend serving" line.
fn serving_port(log: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains("tokend serving"))?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?;
    addr.rsplit(':').next()?.parse().ok()
}

/// Starts a replica on `url` (its log in `dir`) and waits until it serves.
async fn serve(dir: &Path, name: &str, url: &str) -> Process {
    let log: PathBuf = dir.join(format!("{name}.log"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .arg("serve")
        .envs(env(url))
        .env("TOKEND_LISTEN", "127.0.0.1:0")
        .env("TOKEND_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start tokend serve");
    let started = Instant::now();
    let port = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(port) = serving_port(&text) {
            break port;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited ({status}):\n{text}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} did not start:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let process = Process {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    loop {
        if let Ok(ch) = Channel::from_shared(process.url.clone())
            .unwrap()
            .connect()
            .await
        {
            let r = HealthClient::new(ch)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            if r.is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32) {
                return process;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{name} did not report SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(p: &Process) -> Client {
    TokenServiceClient::new(
        Channel::from_shared(p.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// `n` toggles (disable, enable, ...) of `tokens` through `c`, each with a
/// reason unique to it (`tag` and its number), which its event carries.
async fn produce(mut c: Client, platform: String, tokens: Vec<String>, tag: char, n: usize) {
    let mut disabled = vec![false; tokens.len()];
    for i in 0..n {
        let t = i % tokens.len();
        disabled[t] = !disabled[t];
        let state = if disabled[t] {
            pb::State::Disabled
        } else {
            pb::State::Active
        };
        c.set_state(authed(
            &platform,
            pb::SetStateRequest {
                id: tokens[t].clone(),
                state: state as i32,
                reason: format!("{tag}{i}"),
            },
        ))
        .await
        .unwrap_or_else(|s| panic!("producer {tag}: mutation {i}: {s}"));
    }
}

/// (id, detail) of the account's events after `after`, in id order.
async fn table_after(url: &str, after: i64) -> Vec<(i64, String)> {
    let mut conn = sql_conn(url).await;
    query_strings(
        &mut conn,
        &format!(
            "SELECT id::text || ' ' || detail FROM token_events \
             WHERE account_id = '{ACCOUNT}' AND id > {after} ORDER BY id"
        ),
    )
    .await
    .into_iter()
    .map(|r| {
        let (id, detail) = r.split_once(' ').unwrap();
        (id.parse().unwrap(), detail.to_owned())
    })
    .collect()
}

async fn last_event_id(url: &str) -> i64 {
    let mut conn = sql_conn(url).await;
    query_strings(
        &mut conn,
        "SELECT COALESCE(MAX(id), 0)::text FROM token_events",
    )
    .await[0]
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_a_watcher_killed_at_random_and_a_replica_killed_lose_and_repeat_nothing() {
    let _pg = helpers::PG_LOCK.read().await;
    let name =
        "three_processes_a_watcher_killed_at_random_and_a_replica_killed_lose_and_repeat_nothing";
    let Some(url) = helpers::fresh_pg_database(name).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let platform = bootstrap(&url);
    let a = serve(dir.path(), "a", &url).await;
    let b = serve(dir.path(), "b", &url).await;
    let c = serve(dir.path(), "c", &url).await;

    let mut ca = client(&a).await;
    let mut tokens = Vec::new();
    for i in 0..8 {
        let r = ca
            .issue(authed(
                &platform,
                pb::IssueRequest {
                    account_id: ACCOUNT.into(),
                    owner_id: format!("o{i}"),
                    name: format!("t{i}"),
                    ..Default::default()
                },
            ))
            .await
            .expect("Issue");
        tokens.push(r.into_inner().token.unwrap().id);
    }
    let start = last_event_id(&url).await;
    let producers = [
        tokio::spawn(produce(
            ca,
            platform.clone(),
            tokens[..4].to_vec(),
            'a',
            EVENTS / 2,
        )),
        tokio::spawn(produce(
            client(&c).await,
            platform.clone(),
            tokens[4..].to_vec(),
            'c',
            EVENTS - EVENTS / 2,
        )),
    ];
    let (target_tx, mut target) = tokio::sync::watch::channel(None::<i64>);
    let kill_at = rand::rng().random_range(EVENTS / 5..EVENTS / 2);
    let (b_url, c_url) = (b.url.clone(), c.url.clone());
    let watcher = tokio::spawn(async move {
        let mut b = Some(b);
        let mut got: Vec<i64> = Vec::new();
        let mut last = start;
        let (mut kills, mut after_process_kill) = (0, 0);
        let mut deadline = None;
        loop {
            if let Some(t) = *target.borrow_and_update() {
                if last >= t {
                    break;
                }
                let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(60));
                if Instant::now() > d {
                    break;
                }
            }
            let on_c = b.is_none();
            let url = if on_c { &c_url } else { &b_url };
            let Ok(ch) = Channel::from_shared(url.clone()).unwrap().connect().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let stream = TokenServiceClient::new(ch)
                .watch_events(authed(
                    &platform,
                    pb::WatchEventsRequest {
                        account_id: ACCOUNT.into(),
                        after_id: Some(last),
                        ..Default::default()
                    },
                ))
                .await;
            let Ok(stream) = stream else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let mut stream = stream.into_inner();
            let take = rand::rng().random_range(1..=80);
            let mut taken = 0;
            while taken < take {
                if got.len() >= kill_at
                    && let Some(process) = b.take()
                {
                    // B dies under its watcher; the next connection is C's.
                    drop(process);
                }
                let next = tokio::select! {
                    m = stream.message() => m,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => break,
                    _ = target.changed() => break,
                };
                match next {
                    Ok(Some(r)) => {
                        let e = r.event.unwrap();
                        last = e.id;
                        got.push(e.id);
                        taken += 1;
                        if on_c {
                            after_process_kill += 1;
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            drop(stream); // the watcher is killed mid-stream
            kills += 1;
        }
        (got, kills, after_process_kill)
    });
    for p in producers {
        p.await.unwrap();
    }
    let table = table_after(&url, start).await;
    target_tx.send(Some(table.last().unwrap().0)).unwrap();
    let (got, kills, after_process_kill) = watcher.await.unwrap();

    // Every mutation is one event in the table.
    assert_eq!(table.len(), EVENTS, "events committed");
    let mut details: HashMap<&str, usize> = HashMap::new();
    for (_, d) in &table {
        *details.entry(d.as_str()).or_default() += 1;
    }
    for (tag, n) in [('a', EVENTS / 2), ('c', EVENTS - EVENTS / 2)] {
        for i in 0..n {
            assert_eq!(details.get(format!("{tag}{i}").as_str()), Some(&1));
        }
    }
    // The watch: each table event exactly once, in order.
    let table_ids: Vec<i64> = table.iter().map(|(id, _)| *id).collect();
    let unique: BTreeSet<i64> = got.iter().copied().collect();
    let lost = table_ids.iter().filter(|id| !unique.contains(id)).count();
    let duplicated = got.len() - unique.len();
    println!(
        "watch across 3 processes: {} events, {} received, {kills} watcher kills, \
         B killed after {kill_at} ({after_process_kill} received from C after), lost {lost} duplicated {duplicated}",
        table.len(),
        got.len()
    );
    assert_eq!(lost, 0, "events lost");
    assert_eq!(duplicated, 0, "events delivered twice");
    assert_eq!(got, table_ids, "every event, in commit order");
    assert!(kills >= 10, "the watcher was killed {kills} times");
    assert!(
        after_process_kill > 0,
        "the watcher resumed on C after B was killed"
    );

    drop((a, c));
    drop_database(&url).await;
}
