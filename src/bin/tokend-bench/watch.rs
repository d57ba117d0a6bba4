//! WatchEvents across replicas (issue 13's targets): three `tokend`
//! processes A, B and C on one fresh PostgreSQL database, sharing a verifier
//! key file.
//!
//! - Latency: watchers on B and C; mutations (SetState, each with a reason
//!   unique to it, which the event carries as its detail) are committed
//!   through A, and every fourth through C, at a steady 20 per second (a
//!   latency figure, not a flood). Each commit is timestamped when its RPC
//!   returns to this client, each event when it reaches a watcher; events are
//!   matched by token id, kind and reason. The figure is over the
//!   cross-replica pairs (committed on one replica, watched on another).
//!   Measured from the commit RPC's return it slightly understates the true
//!   commit-to-watcher time (the reply's trip back); the line "from the
//!   commit RPC's start" is the upper bound.
//! - Kill and resume: 1,000 mutations committed through A and C while one
//!   watcher, on B, is dropped at random points and reconnects (on a new
//!   connection) with `after_id` = the last id it received; once, B's process
//!   itself is killed (SIGKILL) and the watcher resumes on C, then on a
//!   restarted B or C at random. What it received is compared with the
//!   events table: every id after the start exactly once, in order.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rand::Rng;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};
use tokend::pb::{self, token_service_client::TokenServiceClient};
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::{
    restart::write_key_file,
    server::{Server, authed, bootstrap_on, start_server_on},
};

type Client = TokenServiceClient<Channel>;

/// The account every mutation of this phase is in.
const ACCOUNT: &str = "watch";
/// Commits per second in the latency pass.
const LATENCY_RATE: u64 = 20;
/// Mutations of the kill-and-resume pass (the issue's figure).
const RESUME_EVENTS: usize = 1000;
/// Tokens each producer toggles.
const TOKENS_PER_PRODUCER: usize = 4;

/// Cross-replica delivery latency.
pub struct Latency {
    /// Events committed.
    pub events: usize,
    /// Commit-to-watcher delays in ms (from the commit RPC's return), over
    /// the cross-replica pairs, sorted.
    pub cross_ms: Vec<f64>,
    /// The same from the commit RPC's start (an upper bound), sorted.
    pub cross_from_send_ms: Vec<f64>,
    /// (commit, watcher) pairs expected but never delivered.
    pub missing: usize,
    /// Delivered events that matched no commit (wrong token or kind).
    pub mismatched: usize,
}

/// Kill-and-resume counts.
pub struct Resume {
    /// Mutations whose RPC succeeded.
    pub committed: usize,
    /// Events in the table after the start.
    pub table: usize,
    pub received: usize,
    pub watcher_kills: usize,
    pub process_kills: usize,
    /// Table ids never received.
    pub lost: usize,
    /// Ids received more than once.
    pub duplicated: usize,
    /// Received out of id order, or not in the table.
    pub disordered: usize,
    pub producer_errors: usize,
}

pub struct Figures {
    pub latency: Latency,
    pub resume: Resume,
}

/// The replicas' environment: the shared key, and cheap argon2 (this phase
/// issues only its few producer tokens; the hash cost plays no part).
fn env(key_file: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("TOKEND_VERIFIER_KEY_FILE", key_file.display().to_string()),
        ("TOKEND_ARGON2_MEMORY_KIB", "256".into()),
        ("TOKEND_ARGON2_ITERATIONS", "1".into()),
        ("TOKEND_SWEEP", "false".into()),
    ]
}

async fn connect(server: &Server) -> Client {
    server.client().await
}

async fn issue(c: &mut Client, platform: &str, name: &str) -> String {
    c.issue(authed(
        platform,
        pb::IssueRequest {
            account_id: ACCOUNT.into(),
            owner_id: name.into(),
            name: name.into(),
            ..Default::default()
        },
    ))
    .await
    .expect("issue a producer token")
    .into_inner()
    .token
    .expect("token")
    .id
}

/// One mutation: `id` disabled (or enabled again) with `marker` as reason.
async fn toggle(
    c: &mut Client,
    platform: &str,
    id: &str,
    disable: bool,
    marker: &str,
) -> Result<(), tonic::Status> {
    let state = if disable {
        pb::State::Disabled
    } else {
        pb::State::Active
    };
    c.set_state(authed(
        platform,
        pb::SetStateRequest {
            id: id.into(),
            state: state as i32,
            reason: marker.into(),
        },
    ))
    .await
    .map(|_| ())
}

fn kind_of(disable: bool) -> i32 {
    if disable {
        pb::EventKind::Disabled as i32
    } else {
        pb::EventKind::Enabled as i32
    }
}

async fn last_event_id(db: &DatabaseConnection) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT COALESCE(MAX(id), 0) AS id FROM token_events",
        ))
        .await
        .expect("read the events table")
        .expect("one row");
    row.try_get::<i64>("", "id").expect("id")
}

/// (id, detail) of the account's events after `after`, in id order.
async fn table_after(db: &DatabaseConnection, after: i64) -> Vec<(i64, String)> {
    db.query_all_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT id, detail FROM token_events WHERE account_id = $1 AND id > $2 ORDER BY id",
        [ACCOUNT.into(), after.into()],
    ))
    .await
    .expect("read the events table")
    .iter()
    .map(|r| {
        (
            r.try_get::<i64>("", "id").expect("id"),
            r.try_get::<String>("", "detail").expect("detail"),
        )
    })
    .collect()
}

async fn open_watch(
    c: &mut Client,
    platform: &str,
    after_id: i64,
) -> Result<tonic::Streaming<pb::WatchEventsResponse>, tonic::Status> {
    c.watch_events(authed(
        platform,
        pb::WatchEventsRequest {
            account_id: ACCOUNT.into(),
            after_id: Some(after_id),
            ..Default::default()
        },
    ))
    .await
    .map(tonic::Response::into_inner)
}

/// Arrival of one event at a latency watcher.
struct Arrival {
    marker: String,
    token_id: String,
    kind: i32,
    at: Instant,
}

/// A latency watcher on `server`: every event after `after` until `expected`
/// arrived or none came for 10 s.
async fn latency_watcher(
    mut c: Client,
    platform: String,
    after: i64,
    expected: usize,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Vec<Arrival> {
    let mut stream = open_watch(&mut c, &platform, after)
        .await
        .expect("WatchEvents");
    let _ = ready.send(());
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
            Ok(Ok(Some(r))) => {
                let at = Instant::now();
                if let Some(e) = r.event {
                    out.push(Arrival {
                        marker: e.detail,
                        token_id: e.token_id,
                        kind: e.kind,
                        at,
                    });
                }
            }
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(status)) => {
                println!("latency watcher ended: {status}");
                break;
            }
        }
    }
    out
}

/// One committed mutation of the latency pass.
struct Commit {
    replica: char,
    token_id: String,
    kind: i32,
    sent: Instant,
    returned: Instant,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    crate::load::percentile(sorted, p / 100.0).unwrap_or(f64::NAN)
}

fn line(label: &str, sorted: &[f64]) {
    println!(
        "{label:<52} n={:<4} p50 {:>7.1} ms  p95 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        sorted.len(),
        percentile(sorted, 50.0),
        percentile(sorted, 95.0),
        percentile(sorted, 99.0),
        sorted.last().copied().unwrap_or(f64::NAN)
    );
}

async fn latency_pass(
    a: &Server,
    b: &Server,
    c: &Server,
    platform: &str,
    db: &DatabaseConnection,
    n: usize,
) -> Latency {
    println!(
        "\n== WatchEvents latency: {n} mutations through A (every 4th through C) at {LATENCY_RATE}/s, watchers on B and C"
    );
    let mut ca = connect(a).await;
    let mut cc = connect(c).await;
    let mut tokens = Vec::new();
    for i in 0..TOKENS_PER_PRODUCER * 2 {
        tokens.push(issue(&mut ca, platform, &format!("latency-{i}")).await);
    }
    let after = last_event_id(db).await;
    let mut watchers = Vec::new();
    for (name, server) in [('B', b), ('C', c)] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        watchers.push((
            name,
            tokio::spawn(latency_watcher(
                connect(server).await,
                platform.to_owned(),
                after,
                n,
                tx,
            )),
        ));
        rx.await.expect("watcher ready");
    }

    let mut commits: HashMap<String, Commit> = HashMap::new();
    let mut disabled = vec![false; tokens.len()];
    let mut errors = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / LATENCY_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..n {
        tick.tick().await;
        let t = i % tokens.len();
        disabled[t] = !disabled[t];
        let (replica, client) = if i % 4 == 3 {
            ('C', &mut cc)
        } else {
            ('A', &mut ca)
        };
        let marker = format!("latency {i}");
        let sent = Instant::now();
        match toggle(client, platform, &tokens[t], disabled[t], &marker).await {
            Ok(()) => {
                commits.insert(
                    marker,
                    Commit {
                        replica,
                        token_id: tokens[t].clone(),
                        kind: kind_of(disabled[t]),
                        sent,
                        returned: Instant::now(),
                    },
                );
            }
            Err(status) => {
                errors += 1;
                disabled[t] = !disabled[t];
                println!("commit {i} failed: {status}");
            }
        }
    }

    let (mut cross, mut cross_send, mut missing, mut mismatched) = (Vec::new(), Vec::new(), 0, 0);
    for (watcher, task) in watchers {
        let arrivals = task.await.expect("latency watcher");
        let mut pairs: HashMap<(char, char), Vec<f64>> = HashMap::new();
        let mut matched = 0;
        for a in &arrivals {
            let Some(commit) = commits.get(&a.marker) else {
                mismatched += 1;
                continue;
            };
            if commit.token_id != a.token_id || commit.kind != a.kind {
                mismatched += 1;
                continue;
            }
            matched += 1;
            let ms = |from: Instant| {
                a.at.checked_duration_since(from)
                    .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
            };
            pairs
                .entry((commit.replica, watcher))
                .or_default()
                .push(ms(commit.returned));
            if commit.replica != watcher {
                cross.push(ms(commit.returned));
                cross_send.push(ms(commit.sent));
            }
        }
        missing += commits.len().saturating_sub(matched);
        let mut keys: Vec<_> = pairs.keys().copied().collect();
        keys.sort();
        for key in keys {
            let mut v = pairs.remove(&key).unwrap_or_default();
            v.sort_by(f64::total_cmp);
            line(&format!("committed on {}, watched on {}", key.0, key.1), &v);
        }
    }
    cross.sort_by(f64::total_cmp);
    cross_send.sort_by(f64::total_cmp);
    line("cross-replica, from the commit RPC's return", &cross);
    line("cross-replica, from the commit RPC's start", &cross_send);
    println!(
        "{} committed ({errors} commit errors), {missing} deliveries missing, {mismatched} mismatched",
        commits.len()
    );
    Latency {
        events: commits.len(),
        cross_ms: cross,
        cross_from_send_ms: cross_send,
        missing,
        mismatched,
    }
}

/// A producer of the kill-and-resume pass: `n` toggles through `client`,
/// one every `every`; the markers whose RPC succeeded, and the errors.
async fn producer(
    mut client: Client,
    platform: String,
    tokens: Vec<String>,
    tag: char,
    n: usize,
    every: Duration,
) -> (Vec<String>, usize) {
    let mut disabled = vec![false; tokens.len()];
    let mut ok = Vec::with_capacity(n);
    let mut errors = 0;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for i in 0..n {
        tick.tick().await;
        let t = i % tokens.len();
        let marker = format!("resume {tag}{i}");
        match toggle(&mut client, &platform, &tokens[t], !disabled[t], &marker).await {
            Ok(()) => {
                disabled[t] = !disabled[t];
                ok.push(marker);
            }
            Err(status) => {
                errors += 1;
                println!("producer {tag}: mutation {i} failed: {status}");
            }
        }
    }
    (ok, errors)
}

/// Where the resuming watcher may connect: B until its process is killed,
/// then C until B is back, then either at random.
struct Replicas {
    b: Option<Server>,
    c_url: String,
    /// B being started again after its kill.
    restart: Option<tokio::task::JoinHandle<Server>>,
    b_killed: bool,
}

impl Replicas {
    fn pick(&mut self) -> String {
        if self.restart.as_ref().is_some_and(|h| h.is_finished())
            && let Some(h) = self.restart.take()
        {
            // Finished: it resolves at once.
            self.b = futures_util::FutureExt::now_or_never(h).and_then(Result::ok);
            if self.b.is_some() {
                println!("B restarted; the watcher now resumes on B or C at random");
            }
        }
        match &self.b {
            Some(b) if !self.b_killed || rand::rng().random_bool(0.5) => b.url(),
            _ => self.c_url.clone(),
        }
    }

    /// Stops whatever is still running of B.
    async fn stop(mut self) {
        if let Some(h) = self.restart.take()
            && let Ok(b) = h.await
        {
            b.stop();
        }
        if let Some(b) = self.b.take() {
            b.stop();
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn resume_pass(
    a: &Server,
    b: Server,
    c: &Server,
    platform: &str,
    db: &DatabaseConnection,
    dir: &Path,
    url: &str,
    key_file: &Path,
) -> Resume {
    println!(
        "\n== WatchEvents kill and resume: {RESUME_EVENTS} mutations through A and C, a watcher on B dropped at random points, B's process killed once"
    );
    let mut ca = connect(a).await;
    let mut tokens = Vec::new();
    for i in 0..TOKENS_PER_PRODUCER * 2 {
        tokens.push(issue(&mut ca, platform, &format!("resume-{i}")).await);
    }
    let start = last_event_id(db).await;
    let half = RESUME_EVENTS / 2;
    let every = Duration::from_millis(20);
    let producers = [
        tokio::spawn(producer(
            ca,
            platform.to_owned(),
            tokens[..TOKENS_PER_PRODUCER].to_vec(),
            'A',
            half,
            every,
        )),
        tokio::spawn(producer(
            connect(c).await,
            platform.to_owned(),
            tokens[TOKENS_PER_PRODUCER..].to_vec(),
            'C',
            RESUME_EVENTS - half,
            every,
        )),
    ];
    // Once the producers are done: the last id in the table.
    let (target_tx, target_rx) = watch::channel(None::<i64>);

    let kill_at = rand::rng().random_range(RESUME_EVENTS / 5..RESUME_EVENTS * 3 / 5);
    let replicas = Replicas {
        b: Some(b),
        c_url: c.url(),
        restart: None,
        b_killed: false,
    };
    let watcher = tokio::spawn(resume_watcher(
        replicas,
        platform.to_owned(),
        start,
        kill_at,
        target_rx,
        (dir.to_path_buf(), url.to_owned(), key_file.to_path_buf()),
    ));

    let (mut committed, mut producer_errors) = (Vec::new(), 0);
    for p in producers {
        let (ok, errors) = p.await.expect("producer");
        committed.extend(ok);
        producer_errors += errors;
    }
    let table = table_after(db, start).await;
    let _ = target_tx.send(Some(table.last().map_or(start, |(id, _)| *id)));
    let (received, watcher_kills, process_kills, replicas) = watcher.await.expect("watcher");
    replicas.stop().await;

    let table_ids: Vec<i64> = table.iter().map(|(id, _)| *id).collect();
    let unique: BTreeSet<i64> = received.iter().copied().collect();
    let table_set: BTreeSet<i64> = table_ids.iter().copied().collect();
    let lost = table_set.difference(&unique).count();
    let duplicated = received.len() - unique.len();
    let disordered = received.windows(2).filter(|w| w[0] >= w[1]).count()
        + unique.difference(&table_set).count();
    // Every mutation a client saw succeed is in the table, once.
    let details: HashMap<&str, usize> = table.iter().fold(HashMap::new(), |mut m, (_, d)| {
        *m.entry(d.as_str()).or_default() += 1;
        m
    });
    let not_in_table = committed
        .iter()
        .filter(|m| details.get(m.as_str()) != Some(&1))
        .count();
    println!(
        "{} mutations committed ({producer_errors} errors), {} events in the table after id {start}, {not_in_table} committed but not exactly once in the table",
        committed.len(),
        table.len()
    );
    println!(
        "watcher: {} events received, {watcher_kills} watcher kills, {process_kills} process kill(s)",
        received.len()
    );
    println!("lost {lost} duplicated {duplicated} out of order or unknown {disordered}");
    Resume {
        committed: committed.len(),
        table: table.len(),
        received: received.len(),
        watcher_kills,
        process_kills,
        lost: lost + not_in_table,
        duplicated,
        disordered,
        producer_errors,
    }
}

/// The resuming watcher: takes 1 to 80 events per connection, then drops it
/// and reconnects with its last id; after `kill_at` events it kills B's
/// process (its stream breaks mid-read) and restarts B in the background.
/// Stops once it has reached the table's last id (sent on `target`), or 60 s
/// after that was sent.
async fn resume_watcher(
    mut replicas: Replicas,
    platform: String,
    start: i64,
    kill_at: usize,
    mut target: watch::Receiver<Option<i64>>,
    restart_with: (PathBuf, String, PathBuf),
) -> (Vec<i64>, usize, usize, Replicas) {
    let mut received: Vec<i64> = Vec::new();
    let mut last = start;
    let (mut kills, mut process_kills) = (0, 0);
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some(t) = *target.borrow_and_update() {
            if last >= t {
                break;
            }
            let d = *deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(60));
            if Instant::now() > d {
                println!("watcher: gave up 60 s after the producers finished");
                break;
            }
        }
        let url = replicas.pick();
        let channel = match Channel::from_shared(url).expect("uri").connect().await {
            Ok(ch) => ch,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut client = TokenServiceClient::new(channel);
        let Ok(mut stream) = open_watch(&mut client, &platform, last).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let take = rand::rng().random_range(1..=80);
        let mut taken = 0;
        while taken < take {
            if process_kills == 0
                && received.len() >= kill_at
                && let Some(b) = replicas.b.take()
            {
                b.kill();
                replicas.b_killed = true;
                process_kills += 1;
                println!(
                    "killed B's process (SIGKILL) after {} events; resuming on C after id {last}",
                    received.len()
                );
                let (dir, url, key) = restart_with.clone();
                replicas.restart = Some(tokio::spawn(async move {
                    start_server_on(&dir, "watch-b-restarted", &url, &env(&key)).await
                }));
            }
            let next = tokio::select! {
                m = stream.message() => m,
                _ = tokio::time::sleep(Duration::from_secs(2)) => break,
                _ = target.changed() => break,
            };
            match next {
                Ok(Some(r)) => {
                    if let Some(e) = r.event {
                        last = e.id;
                        received.push(e.id);
                        taken += 1;
                    }
                }
                Ok(None) | Err(_) => break,
            }
        }
        drop(stream); // killed mid-stream
        kills += 1;
    }
    (received, kills, process_kills, replicas)
}

/// Both passes on a fresh database beside `base`.
pub async fn run(quick: bool, dir: &Path, base: &str) -> Figures {
    let n = if quick { 200 } else { 300 };
    let url = crate::pg::database(base, "watch", true).await;
    let key_file = dir.join("watch.key");
    write_key_file(&key_file);
    let env = env(&key_file);
    let platform = bootstrap_on(&url, &env);
    let a = start_server_on(dir, "watch-a", &url, &env).await;
    let b = start_server_on(dir, "watch-b", &url, &env).await;
    let c = start_server_on(dir, "watch-c", &url, &env).await;
    println!(
        "\nWatchEvents: replicas A, B, C (3 tokend processes) on one PostgreSQL database, ports {}, {}, {}",
        a.port, b.port, c.port
    );
    let db = Database::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    let latency = latency_pass(&a, &b, &c, &platform, &db, n).await;
    let resume = resume_pass(&a, b, &c, &platform, &db, dir, &url, &key_file).await;
    db.close().await.ok();
    a.stop();
    c.stop();
    crate::pg::drop_database(base, &url).await;
    Figures { latency, resume }
}

pub fn summarise(f: Option<&Figures>) {
    let Some(f) = f else {
        println!(
            "{:<56} not measured (set TOKEND_BENCH_POSTGRES_URL)",
            "WatchEvents, 3 PostgreSQL replicas"
        );
        return;
    };
    let l = &f.latency;
    println!(
        "{:<56} n={} p50 {:.1} ms p95 {:.1} ms p99 {:.1} ms max {:.1} ms ({} missing)  target p99 <= 100 ms",
        "WatchEvents commit -> other replica's watcher",
        l.cross_ms.len(),
        percentile(&l.cross_ms, 50.0),
        percentile(&l.cross_ms, 95.0),
        percentile(&l.cross_ms, 99.0),
        l.cross_ms.last().copied().unwrap_or(f64::NAN),
        l.missing + l.mismatched,
    );
    println!(
        "{:<56} p99 {:.1} ms (upper bound, from the commit RPC's start; {} events)",
        "",
        percentile(&l.cross_from_send_ms, 99.0),
        l.events
    );
    let r = &f.resume;
    println!(
        "{:<56} lost {} duplicated {}  ({} committed, {} in the table, {} received, {} out of order, {} watcher kills, {} process kill)  target lost 0 duplicated 0",
        "WatchEvents kill and resume",
        r.lost,
        r.duplicated,
        r.committed,
        r.table,
        r.received,
        r.disordered,
        r.watcher_kills,
        r.process_kills,
    );
    if r.producer_errors > 0 {
        println!("{:<56} {} mutations failed", "", r.producer_errors);
    }
}

/// The phase alone: `tokend-bench watch [--quick]`.
pub async fn alone(quick: bool, base: Option<String>) {
    let Some(base) = base else {
        println!(
            "tokend-bench watch needs PostgreSQL: set TOKEND_BENCH_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/test) or pass --postgres URL"
        );
        return;
    };
    let dir = crate::scratch_dir();
    let figures = run(quick, &dir, &base).await;
    println!("\n== Summary");
    summarise(Some(&figures));
    let _ = std::fs::remove_dir_all(&dir);
}
