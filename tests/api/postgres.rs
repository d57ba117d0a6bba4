//! PostgreSQL production mode: many stateless replicas on one database.
//!
//! Every test needs `TOKEND_TEST_POSTGRES_URL` (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`) and prints `skipped: <name> ...`
//! without it. Each test holds `helpers::PG_LOCK.read()` for its whole body; the
//! outage test, which stops and restarts the PostgreSQL server, holds
//! `PG_LOCK.write()` and restarts the server on every path.
//!
//! Replicas are several `helpers::start` apps in this process on one database:
//! separate pools, caches, LISTEN connections and ports. Latency figures are
//! printed (run with `--nocapture` to see them).

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use prost_types::FieldMask;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, PgConnection, Row};
use tokend::{
    config::Config,
    domain::{TokenId, TokenValue},
    pb::{self, token_service_client::TokenServiceClient},
};
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{self, TestApp, authed, id_of, ts};

pub(crate) type Client = TokenServiceClient<Channel>;

/// The service name health reports the token service under.
pub(crate) const SERVICE: &str = "tokens.v1.TokenService";

// ---------------------------------------------------------------------------
// Harness: replicas, clients, direct SQL, PostgreSQL server control, figures.
// ---------------------------------------------------------------------------

/// Test settings for one replica. Small pools: several replicas (and tests)
/// share one server with `max_connections = 100`.
fn pg_config(url: &str) -> Config {
    let mut c = helpers::test_config(url.to_owned());
    c.db_max_connections = 4;
    c
}

/// Starts one more replica on the database `url`.
pub(crate) async fn replica(url: &str, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mut c = pg_config(url);
    adjust(&mut c);
    helpers::start(c, None).await
}

pub(crate) async fn client(app: &TestApp) -> Client {
    TokenServiceClient::new(app.channel().await)
}

/// Best-effort removal of a test database once its replicas are gone.
pub(crate) async fn drop_database(url: &str) {
    let Ok(base) = std::env::var(helpers::PG_URL_ENV) else {
        return;
    };
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    if let Ok(mut conn) = PgConnection::connect(&base).await {
        let _ = sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }
}

pub(crate) async fn sql_conn(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .expect("connect to PostgreSQL")
}

pub(crate) async fn exec(conn: &mut PgConnection, sql: &str) {
    sqlx::raw_sql(AssertSqlSafe(sql.to_owned()))
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub(crate) async fn query_strings(conn: &mut PgConnection, sql: &str) -> Vec<String> {
    sqlx::query(AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect()
}

pub(crate) fn database_name(url: &str) -> String {
    url.rsplit_once('/').unwrap().1.to_owned()
}

/// Number of sessions of this database currently LISTENing (their last statement).
pub(crate) async fn listen_sessions(conn: &mut PgConnection, db: &str) -> usize {
    query_strings(
        conn,
        &format!(
            "SELECT pid::text FROM pg_stat_activity WHERE datname = '{db}' \
             AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        ),
    )
    .await
    .len()
}

/// Terminates this database's LISTEN sessions; returns how many.
pub(crate) async fn kill_listeners(conn: &mut PgConnection, db: &str) -> usize {
    query_strings(
        conn,
        &format!(
            "SELECT pg_terminate_backend(pid)::text FROM pg_stat_activity \
             WHERE datname = '{db}' AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        ),
    )
    .await
    .len()
}

/// A well-formed value with the id of `value` and another secret.
fn wrong_secret(value: &str) -> String {
    TokenValue::generate_for("tk", TokenId::parse(&id_of(value)).unwrap())
        .unwrap()
        .expose()
}

fn modules(m: &[&str]) -> Vec<String> {
    m.iter().map(|s| (*s).to_owned()).collect()
}

async fn issue(c: &mut Client, caller: &str, req: pb::IssueRequest) -> (pb::Token, String) {
    let r = c
        .issue(authed(caller, req))
        .await
        .expect("Issue")
        .into_inner();
    (r.token.unwrap(), r.secret)
}

/// Issues a `svc:read` token; each name gets its own owner (per-owner limit).
pub(crate) async fn issue_named(c: &mut Client, caller: &str, name: &str) -> (String, String) {
    let (t, v) = issue(
        c,
        caller,
        pb::IssueRequest {
            owner_id: name.replace(' ', "-"),
            name: name.into(),
            modules: modules(&["svc:read"]),
            ..Default::default()
        },
    )
    .await;
    (t.id, v)
}

async fn validate(
    c: &mut Client,
    caller: &str,
    token: &str,
    required: &[String],
) -> Result<pb::ValidateResponse, Status> {
    c.validate(authed(
        caller,
        pb::ValidateRequest {
            token: token.into(),
            required_modules: required.to_vec(),
        },
    ))
    .await
    .map(tonic::Response::into_inner)
}

pub(crate) async fn reason(
    c: &mut Client,
    caller: &str,
    token: &str,
    required: &[&str],
) -> pb::Reason {
    validate(c, caller, token, &modules(required))
        .await
        .expect("Validate")
        .reason()
}

async fn set_state(
    c: &mut Client,
    caller: &str,
    id: &str,
    state: pb::State,
    why: &str,
) -> Result<pb::Token, Status> {
    c.set_state(authed(
        caller,
        pb::SetStateRequest {
            id: id.into(),
            state: state as i32,
            reason: why.into(),
        },
    ))
    .await
    .map(|r| r.into_inner().token.unwrap())
}

pub(crate) async fn revoke_id(c: &mut Client, caller: &str, id: &str) -> Result<pb::Token, Status> {
    c.revoke(authed(
        caller,
        pb::RevokeRequest {
            target: Some(pb::revoke_request::Target::Id(id.into())),
            reason: "leaked".into(),
        },
    ))
    .await
    .map(|r| r.into_inner().token.unwrap())
}

async fn rotate(
    c: &mut Client,
    caller: &str,
    id: &str,
    grace: Option<Duration>,
) -> Result<(pb::Token, String), Status> {
    c.rotate(authed(
        caller,
        pb::RotateRequest {
            id: id.into(),
            grace_period: grace.map(|g| prost_types::Duration {
                seconds: g.as_secs() as i64,
                nanos: g.subsec_nanos() as i32,
            }),
        },
    ))
    .await
    .map(|r| {
        let r = r.into_inner();
        (r.token.unwrap(), r.secret)
    })
}

async fn update(
    c: &mut Client,
    caller: &str,
    req: pb::UpdateRequest,
    paths: &[&str],
) -> Result<pb::Token, Status> {
    c.update(authed(
        caller,
        pb::UpdateRequest {
            update_mask: Some(FieldMask {
                paths: modules(paths),
            }),
            ..req
        },
    ))
    .await
    .map(|r| r.into_inner().token.unwrap())
}

pub(crate) async fn health(channel: Channel) -> Result<ServingStatus, Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .map(|r| r.into_inner().status())
}

/// Polls `probe` every `every` until it returns true; the elapsed time since
/// `from`, or `None` after `limit`.
pub(crate) async fn until<F, Fut>(
    from: Instant,
    limit: Duration,
    every: Duration,
    mut probe: F,
) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if probe().await {
            return Some(from.elapsed());
        }
        if from.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints and returns (p50, p99, max).
fn figures(label: &str, samples: &[Duration]) -> (Duration, Duration, Duration) {
    assert!(!samples.is_empty(), "{label}: no samples");
    let mut s = samples.to_vec();
    s.sort();
    let (p50, p99, max) = (percentile(&s, 50.0), percentile(&s, 99.0), s[s.len() - 1]);
    println!(
        "{label}: n={} p50={:.1}ms p99={:.1}ms max={:.1}ms",
        s.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    (p50, p99, max)
}

fn ms(d: Duration) -> String {
    format!("{:.0}ms", d.as_secs_f64() * 1e3)
}

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

// ---------------------------------------------------------------------------
// Load and propagation trials, shared by the multi-replica tests.
// ---------------------------------------------------------------------------

/// A value that must never validate again (with these required modules) once
/// `returned` + 2 s has passed.
#[derive(Clone)]
struct Dead {
    label: String,
    value: String,
    required: Vec<String>,
    expected: pb::Reason,
    returned: Instant,
}

#[derive(Default)]
struct Shared {
    /// Values that stay valid (with `svc:read`) all along.
    steady: Mutex<Vec<String>>,
    dead: Mutex<Vec<Dead>>,
    /// Validates that started more than 2 s after a mutation returned and
    /// still answered valid=true.
    late_valid: Mutex<Vec<String>>,
    picks: AtomicU64,
}

impl Shared {
    fn record_late(&self, what: String) {
        self.late_valid.lock().unwrap().push(what);
    }

    fn pick_dead(&self) -> Option<Dead> {
        let dead = self.dead.lock().unwrap();
        if dead.is_empty() {
            return None;
        }
        let i = self.picks.fetch_add(7919, Ordering::Relaxed) as usize % dead.len();
        Some(dead[i].clone())
    }
}

#[derive(Debug, Default)]
struct LoadReport {
    replica: String,
    calls: u64,
    errors: Vec<String>,
    steady_rejected: Vec<String>,
}

struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<LoadReport>,
}

impl Load {
    async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Continuous Validate traffic on one replica: steady tokens (must be valid)
/// interleaved with dead ones (must not be valid 2 s after their mutation).
fn start_load(name: &str, mut c: Client, caller: String, shared: Arc<Shared>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let name = name.to_owned();
    let task = tokio::spawn(async move {
        let mut report = LoadReport {
            replica: name.clone(),
            ..Default::default()
        };
        let required = modules(&["svc:read"]);
        let mut i = 0usize;
        while !flag.load(Ordering::Relaxed) {
            i += 1;
            let steady = {
                let s = shared.steady.lock().unwrap();
                s[i % s.len()].clone()
            };
            report.calls += 1;
            match validate(&mut c, &caller, &steady, &required).await {
                Ok(v) if v.valid => {}
                Ok(v) => {
                    report
                        .steady_rejected
                        .push(format!("{} -> {:?}", id_of(&steady), v.reason()))
                }
                Err(e) => report
                    .errors
                    .push(format!("{:?}: {}", e.code(), e.message())),
            }
            if let Some(d) = shared.pick_dead() {
                let started = Instant::now();
                report.calls += 1;
                match validate(&mut c, &caller, &d.value, &d.required).await {
                    Ok(v) if v.valid && started > d.returned + Duration::from_secs(2) => shared
                        .record_late(format!(
                            "{name}: {} valid {} after its mutation returned",
                            d.label,
                            ms(started - d.returned)
                        )),
                    Ok(_) => {}
                    Err(e) => report
                        .errors
                        .push(format!("{:?}: {}", e.code(), e.message())),
                }
            }
            if report.errors.len() > 50 {
                // A replica that is gone: no point hammering it.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        report
    });
    Load { stop, task }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Disable,
    Revoke,
    Rotate,
    Update,
}

/// One replica's view of one mutation.
#[derive(Debug)]
struct Sample {
    kind: Kind,
    reader: String,
    /// From the mutation's return to the first rejection received.
    propagation: Duration,
}

/// A named client of one replica.
#[derive(Clone)]
struct Peer {
    name: String,
    client: Client,
}

async fn peer(name: &str, app: &TestApp) -> Peer {
    Peer {
        name: name.into(),
        client: client(app).await,
    }
}

/// Polls `value` on `reader` in a tight loop until it is rejected; records
/// late valid answers. Returns (propagation, reason).
async fn until_rejected(
    mut reader: Peer,
    caller: String,
    value: String,
    required: Vec<String>,
    returned: Instant,
    shared: Arc<Shared>,
) -> (String, Duration, Result<pb::Reason, String>) {
    loop {
        let started = Instant::now();
        match validate(&mut reader.client, &caller, &value, &required).await {
            Ok(v) if v.valid => {
                if started > returned + Duration::from_secs(2) {
                    shared.record_late(format!(
                        "{}: {} valid {} after its mutation returned",
                        reader.name,
                        id_of(&value),
                        ms(started - returned)
                    ));
                }
            }
            Ok(v) => return (reader.name, returned.elapsed(), Ok(v.reason())),
            Err(e) => {
                return (
                    reader.name,
                    returned.elapsed(),
                    Err(format!("{:?}: {}", e.code(), e.message())),
                );
            }
        }
        if returned.elapsed() > Duration::from_secs(5) {
            return (
                reader.name,
                returned.elapsed(),
                Err("still valid after 5 s".into()),
            );
        }
    }
}

/// Validates `value` on every reader until it is valid (caching it there).
async fn warm(readers: &[Peer], caller: &str, value: &str, required: &[String], what: &str) {
    let mut set = tokio::task::JoinSet::new();
    for r in readers {
        let (mut r, caller, value, required, what) = (
            r.clone(),
            caller.to_owned(),
            value.to_owned(),
            required.to_vec(),
            what.to_owned(),
        );
        set.spawn(async move {
            for _ in 0..50 {
                let v = validate(&mut r.client, &caller, &value, &required)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: warming on {}: {e}", r.name));
                if v.valid {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{what}: {} never valid on {}", id_of(&value), r.name);
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
}

/// Issues a token on `writer`, warms it on every reader, mutates it on
/// `writer`, then measures how long each reader keeps accepting it.
/// Returns the samples and the still-valid value of a rotated token.
async fn trial(
    kind: Kind,
    n: usize,
    writer: &mut Peer,
    readers: &[Peer],
    caller: &str,
    shared: &Arc<Shared>,
) -> (Vec<Sample>, Option<String>) {
    let read = modules(&["svc:read"]);
    let (id, value) = issue_named(&mut writer.client, caller, &format!("trial {n}")).await;
    warm(readers, caller, &value, &read, &format!("trial {n}")).await;
    let w = &mut writer.client;
    let (dead_value, required, expected, fresh) = match kind {
        Kind::Disable => {
            set_state(w, caller, &id, pb::State::Disabled, "trial")
                .await
                .expect("SetState");
            (value, read, pb::Reason::Disabled, None)
        }
        Kind::Revoke => {
            revoke_id(w, caller, &id).await.expect("Revoke");
            (value, read, pb::Reason::Revoked, None)
        }
        Kind::Rotate => {
            let (_, new) = rotate(w, caller, &id, None).await.expect("Rotate");
            (value, read, pb::Reason::Unknown, Some(new))
        }
        Kind::Update => {
            update(
                w,
                caller,
                pb::UpdateRequest {
                    id: id.clone(),
                    modules: modules(&["svc:write"]),
                    ..Default::default()
                },
                &["modules"],
            )
            .await
            .expect("Update");
            (value, read, pb::Reason::MissingModules, None)
        }
    };
    let returned = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for r in readers {
        set.spawn(until_rejected(
            r.clone(),
            caller.to_owned(),
            dead_value.clone(),
            required.clone(),
            returned,
            Arc::clone(shared),
        ));
    }
    let mut samples = Vec::new();
    while let Some(res) = set.join_next().await {
        let (reader, propagation, outcome) = res.unwrap();
        match outcome {
            Ok(reason) => assert_eq!(
                reason, expected,
                "trial {n} ({kind:?} on {}): {reader} answered {reason:?}",
                writer.name
            ),
            Err(e) => panic!("trial {n} ({kind:?} on {}): {reader}: {e}", writer.name),
        }
        samples.push(Sample {
            kind,
            reader,
            propagation,
        });
    }
    shared.dead.lock().unwrap().push(Dead {
        label: format!("trial {n} ({kind:?} {id})"),
        value: dead_value,
        required,
        expected,
        returned,
    });
    if let Some(new) = &fresh {
        for r in readers {
            let mut c = r.client.clone();
            assert_eq!(
                reason(&mut c, caller, new, &["svc:read"]).await,
                pb::Reason::Valid,
                "trial {n}: the rotated value on {}",
                r.name
            );
        }
    }
    (samples, fresh)
}

fn kind_for(n: usize) -> Kind {
    match n % 8 {
        0 | 2 | 5 => Kind::Disable,
        1 | 3 | 6 => Kind::Revoke,
        4 => Kind::Rotate,
        _ => Kind::Update,
    }
}

/// Issues `n` steady tokens on `writer` and warms them on every replica.
async fn steady_tokens(
    writer: &mut Client,
    all: &mut [Client],
    caller: &str,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        let (_, v) = issue_named(writer, caller, &format!("steady {i}")).await;
        for c in all.iter_mut() {
            assert_eq!(
                reason(c, caller, &v, &["svc:read"]).await,
                pb::Reason::Valid
            );
        }
        out.push(v);
    }
    out
}

fn assert_loads_clean(reports: &[LoadReport]) {
    for r in reports {
        println!("load on {}: {} Validates", r.replica, r.calls);
        assert!(r.calls > 0, "no load ran on {}", r.replica);
        assert!(
            r.errors.is_empty(),
            "load on {}: {} errors, e.g. {:?}",
            r.replica,
            r.errors.len(),
            &r.errors[..r.errors.len().min(3)]
        );
        assert!(
            r.steady_rejected.is_empty(),
            "load on {}: steady tokens rejected: {:?}",
            r.replica,
            &r.steady_rejected[..r.steady_rejected.len().min(3)]
        );
    }
}

fn assert_no_late_valid(shared: &Shared) {
    let late = shared.late_valid.lock().unwrap();
    assert!(
        late.is_empty(),
        "{} Validates started > 2 s after a mutation returned and answered valid, e.g. {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
}

/// Every dead value is rejected with its expected reason on `c`.
async fn assert_all_dead(c: &mut Client, on: &str, caller: &str, shared: &Shared) {
    let dead = shared.dead.lock().unwrap().clone();
    for d in &dead {
        let v = validate(c, caller, &d.value, &d.required)
            .await
            .unwrap_or_else(|e| panic!("{on}: Validate {}: {e}", d.label));
        assert_eq!(v.reason(), d.expected, "{on}: {}", d.label);
    }
}

fn propagation_figures(label: &str, samples: &[Sample]) -> (Duration, Duration, Duration) {
    for kind in [Kind::Disable, Kind::Revoke, Kind::Rotate, Kind::Update] {
        let s: Vec<_> = samples
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.propagation)
            .collect();
        if !s.is_empty() {
            figures(&format!("{label} {kind:?}"), &s);
        }
    }
    let mut readers: Vec<_> = samples.iter().map(|s| s.reader.clone()).collect();
    readers.sort();
    readers.dedup();
    for r in readers {
        let s: Vec<_> = samples
            .iter()
            .filter(|s| s.reader == r)
            .map(|s| s.propagation)
            .collect();
        figures(&format!("{label} to {r}"), &s);
    }
    let all: Vec<_> = samples.iter().map(|s| s.propagation).collect();
    figures(&format!("{label} all"), &all)
}

// ---------------------------------------------------------------------------
// 1. The functional basics, on PostgreSQL exactly as on SQLite.
// ---------------------------------------------------------------------------

/// Maps token ids to stable labels so transcripts of two runs compare.
#[derive(Default)]
struct Labels(HashMap<String, String>);

impl Labels {
    fn add(&mut self, id: &str, label: &str) {
        self.0.insert(id.to_owned(), label.to_owned());
    }
    fn of(&self, id: &str) -> String {
        self.0.get(id).cloned().unwrap_or_else(|| format!("?{id}"))
    }
    fn all(&self, ids: &[String]) -> Vec<String> {
        ids.iter().map(|i| self.of(i)).collect()
    }
}

/// A token record without what legitimately differs between runs.
fn normalized(t: &pb::Token, labels: &Labels) -> String {
    format!(
        "{} acct={} owner={} by={}/{} name={:?} desc={:?} modules={:?} v={:?} meta={:?} \
         state={:?} expired={} reason={:?} expires={} disabled={} revoked={} prev={}",
        labels.of(&t.id),
        t.account_id,
        t.owner_id,
        t.created_by,
        t.updated_by,
        t.name,
        t.description,
        t.modules,
        t.api_version,
        t.metadata.iter().collect::<BTreeMap<_, _>>(),
        t.state(),
        t.expired,
        t.state_reason,
        t.expires_at.is_some(),
        t.disabled_at.is_some(),
        t.revoked_at.is_some(),
        t.previous_secret_expires_at.is_some(),
    )
}

async fn search_ids(c: &mut Client, caller: &str, req: pb::SearchRequest) -> Vec<String> {
    let r = c
        .search(authed(
            caller,
            pb::SearchRequest {
                page_size: 500,
                ..req
            },
        ))
        .await
        .expect("Search")
        .into_inner();
    assert!(r.next_page_token.is_empty());
    r.tokens.into_iter().map(|t| t.id).collect()
}

/// Walks the whole API on one server; asserts the contract on the way and
/// returns a transcript (labels instead of ids, no timestamps).
async fn basics(app: &TestApp) -> Vec<String> {
    let mut c = client(app).await;
    let p = app.platform.clone();
    let mut out = Vec::new();
    let mut l = Labels::default();
    l.add(&id_of(&p), "platform");
    let (admin_id, admin) = app.token_for("acme", "boss", &["tokens:admin"]).await;
    l.add(&admin_id, "admin");
    let (validator_id, val) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    l.add(&validator_id, "validator");

    // Issue.
    let (a, a_value) = issue(
        &mut c,
        &p,
        pb::IssueRequest {
            owner_id: "alice".into(),
            name: "Alpha Deploy".into(),
            description: "deploys".into(),
            modules: modules(&["billing:read", "x_y", "billing:read"]),
            api_version: "v2".into(),
            metadata: [("env".to_owned(), "prod".to_owned())].into(),
            ..Default::default()
        },
    )
    .await;
    l.add(&a.id, "a");
    assert_eq!(
        (
            a.account_id.as_str(),
            a.owner_id.as_str(),
            a.created_by.as_str()
        ),
        ("acme", "alice", "ops")
    );
    assert_eq!(a.modules, modules(&["billing:read", "x_y"]));
    assert_eq!(a.state(), pb::State::Active);
    assert_eq!(
        a.hint,
        format!("tk_{}_...{}", a.id, &a_value[a_value.len() - 4..])
    );
    assert!(a.created_at.is_some() && a.last_used_at.is_none() && a.expires_at.is_none());
    let (b, b_value) = issue(
        &mut c,
        &admin,
        pb::IssueRequest {
            owner_id: "bob".into(),
            name: "50%_off".into(),
            modules: modules(&["xzy"]),
            ..Default::default()
        },
    )
    .await;
    l.add(&b.id, "b");
    assert_eq!(
        (b.account_id.as_str(), b.created_by.as_str()),
        ("acme", "boss")
    );
    let (cc, c_value) = issue(
        &mut c,
        &p,
        pb::IssueRequest {
            owner_id: "alice".into(),
            name: "50xxoff".into(),
            modules: modules(&["x_y"]),
            ..Default::default()
        },
    )
    .await;
    l.add(&cc.id, "c");
    let (d, _) = issue(
        &mut c,
        &p,
        pb::IssueRequest {
            account_id: "globex".into(),
            owner_id: "gina".into(),
            name: "Globex Beta".into(),
            ..Default::default()
        },
    )
    .await;
    l.add(&d.id, "d");
    let alice = |name: &str| pb::IssueRequest {
        owner_id: "alice".into(),
        name: name.into(),
        ..Default::default()
    };
    let (e, _) = issue(&mut c, &p, alice("a_b")).await;
    l.add(&e.id, "e");
    let (f, f_value) = issue(&mut c, &p, alice("axb")).await;
    l.add(&f.id, "f");
    let (g, _) = issue(&mut c, &p, alice("Gamma never used")).await;
    l.add(&g.id, "g");
    let expires = Utc::now() + chrono::Duration::milliseconds(1200);
    let (x, x_value) = issue(
        &mut c,
        &p,
        pb::IssueRequest {
            owner_id: "carol".into(),
            name: "short-lived".into(),
            expires_at: Some(ts(expires)),
            ..Default::default()
        },
    )
    .await;
    l.add(&x.id, "x");
    assert!(x.expires_at.is_some() && !x.expired);

    // Validate.
    let v = validate(&mut c, &val, &a_value, &[]).await.unwrap();
    assert!(v.valid);
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(
        (
            v.token_id.as_str(),
            v.account_id.as_str(),
            v.owner_id.as_str()
        ),
        (a.id.as_str(), "acme", "alice")
    );
    assert_eq!(v.modules, modules(&["billing:read", "x_y"]));
    assert_eq!(
        (v.api_version.as_str(), v.metadata["env"].as_str()),
        ("v2", "prod")
    );
    let checks = [
        (
            "a billing:read",
            a_value.clone(),
            vec!["billing:read"],
            pb::Reason::Valid,
        ),
        (
            "a nope",
            a_value.clone(),
            vec!["nope"],
            pb::Reason::MissingModules,
        ),
        (
            "a wrong secret",
            wrong_secret(&a_value),
            vec![],
            pb::Reason::Unknown,
        ),
        (
            "unknown id",
            TokenValue::generate("tk").unwrap().expose(),
            vec![],
            pb::Reason::Unknown,
        ),
        (
            "malformed",
            "tk_garbage".to_owned(),
            vec![],
            pb::Reason::Malformed,
        ),
        ("x", x_value.clone(), vec![], pb::Reason::Valid),
    ];
    for (what, value, required, expected) in checks {
        let v = validate(&mut c, &val, &value, &modules(&required))
            .await
            .unwrap();
        assert_eq!(v.reason(), expected, "{what}");
        assert_eq!(v.valid, expected == pb::Reason::Valid, "{what}");
        let with_fields = matches!(expected, pb::Reason::Valid | pb::Reason::MissingModules);
        assert_eq!(!v.token_id.is_empty(), with_fields, "{what}: token fields");
        out.push(format!("validate {what}: {:?}", v.reason()));
    }

    // Update.
    let a2 = update(
        &mut c,
        &p,
        pb::UpdateRequest {
            id: a.id.clone(),
            name: "Alpha Deploy v2".into(),
            modules: modules(&["billing:read"]),
            metadata: [("env", "stage"), ("team", "core")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            ..Default::default()
        },
        &["name", "modules", "metadata"],
    )
    .await
    .unwrap();
    assert_eq!(a2.name, "Alpha Deploy v2");
    assert_eq!(a2.modules, modules(&["billing:read"]));
    assert_eq!(a2.metadata.len(), 2);
    assert_eq!(a2.description, "deploys");
    // Nothing changes: no event.
    update(
        &mut c,
        &p,
        pb::UpdateRequest {
            id: a.id.clone(),
            name: "Alpha Deploy v2".into(),
            ..Default::default()
        },
        &["name"],
    )
    .await
    .unwrap();
    assert_eq!(
        reason(&mut c, &val, &a_value, &["x_y"]).await,
        pb::Reason::MissingModules
    );
    let v = validate(&mut c, &val, &a_value, &modules(&["billing:read"]))
        .await
        .unwrap();
    assert!(v.valid);
    assert_eq!(v.metadata["team"], "core");

    // SetState.
    let t = set_state(&mut c, &p, &b.id, pb::State::Disabled, "audit")
        .await
        .unwrap();
    assert_eq!(t.state(), pb::State::Disabled);
    assert!(t.disabled_at.is_some());
    assert_eq!(t.state_reason, "audit");
    let v = validate(&mut c, &val, &b_value, &[]).await.unwrap();
    assert_eq!((v.valid, v.reason()), (false, pb::Reason::Disabled));
    assert_eq!(v.token_id, b.id);
    set_state(&mut c, &p, &b.id, pb::State::Disabled, "audit")
        .await
        .unwrap();
    let t = set_state(&mut c, &p, &b.id, pb::State::Active, "ok")
        .await
        .unwrap();
    assert_eq!(t.state(), pb::State::Active);
    assert!(t.disabled_at.is_none());
    assert_eq!(reason(&mut c, &val, &b_value, &[]).await, pb::Reason::Valid);
    set_state(&mut c, &p, &b.id, pb::State::Disabled, "final")
        .await
        .unwrap();
    assert_eq!(
        reason(&mut c, &val, &b_value, &[]).await,
        pb::Reason::Disabled
    );

    // Rotate with a grace period, and without.
    let (a3, a_new) = rotate(&mut c, &p, &a.id, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let grace_end = Instant::now() + Duration::from_secs(1);
    assert_eq!(a3.id, a.id);
    assert!(a3.previous_secret_expires_at.is_some());
    assert_ne!(a_new, a_value);
    assert_eq!(reason(&mut c, &val, &a_value, &[]).await, pb::Reason::Valid);
    assert_eq!(reason(&mut c, &val, &a_new, &[]).await, pb::Reason::Valid);
    let (c2, c_new) = rotate(&mut c, &p, &cc.id, None).await.unwrap();
    assert!(c2.previous_secret_expires_at.is_none());
    assert_eq!(
        reason(&mut c, &val, &c_value, &[]).await,
        pb::Reason::Unknown
    );
    assert_eq!(reason(&mut c, &val, &c_new, &[]).await, pb::Reason::Valid);

    // Duplicate.
    let r = c
        .duplicate(authed(
            &p,
            pb::DuplicateRequest {
                id: a.id.clone(),
                name: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let (copy, copy_value) = (r.token.unwrap(), r.secret);
    l.add(&copy.id, "copy");
    assert_ne!(copy.id, a.id);
    assert_eq!(copy.name, "Alpha Deploy v2 (copy)");
    assert_eq!(
        (
            copy.account_id.as_str(),
            copy.owner_id.as_str(),
            copy.created_by.as_str(),
            copy.description.as_str(),
            copy.api_version.as_str()
        ),
        ("acme", "alice", "ops", "deploys", "v2")
    );
    assert_eq!(copy.modules, a2.modules);
    assert_eq!(copy.metadata, a2.metadata);

    // Revoke by id (idempotent) and by value.
    let t = revoke_id(&mut c, &p, &e.id).await.unwrap();
    assert_eq!(t.state(), pb::State::Revoked);
    assert!(t.revoked_at.is_some());
    let again = revoke_id(&mut c, &p, &e.id).await.unwrap();
    assert_eq!(
        (again.state(), again.revoked_at),
        (pb::State::Revoked, t.revoked_at)
    );
    let err = set_state(&mut c, &p, &e.id, pb::State::Active, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let t = c
        .revoke(authed(
            &p,
            pb::RevokeRequest {
                target: Some(pb::revoke_request::Target::Token(f_value.clone())),
                reason: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(
        (t.id.as_str(), t.state()),
        (f.id.as_str(), pb::State::Revoked)
    );
    assert_eq!(
        reason(&mut c, &val, &f_value, &[]).await,
        pb::Reason::Revoked
    );

    // Pagination fodder.
    let mut pager = Vec::new();
    for i in 0..7 {
        let (t, _) = issue(
            &mut c,
            &p,
            pb::IssueRequest {
                owner_id: "pager".into(),
                name: format!("page {i}"),
                ..Default::default()
            },
        )
        .await;
        l.add(&t.id, &format!("pager{i}"));
        pager.push(t.id);
    }

    // Last use: only the copy is used after `lu0`.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let lu0 = Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        reason(&mut c, &val, &copy_value, &[]).await,
        pb::Reason::Valid
    );
    let flushed = until(
        Instant::now(),
        Duration::from_secs(3),
        Duration::from_millis(50),
        || {
            let mut c = c.clone();
            let (p, id) = (p.clone(), copy.id.clone());
            async move {
                c.get(authed(&p, pb::GetRequest { id }))
                    .await
                    .unwrap()
                    .into_inner()
                    .token
                    .unwrap()
                    .last_used_at
                    .is_some()
            }
        },
    )
    .await;
    assert!(flushed.is_some(), "last_used_at of the copy never flushed");

    // Search: every filter once.
    let s = |f: fn(&mut pb::SearchRequest)| {
        let mut r = pb::SearchRequest::default();
        f(&mut r);
        r
    };
    let cases: Vec<(&str, pb::SearchRequest, Vec<&str>)> = vec![
        (
            "query DEPLOY",
            s(|r| r.query = "DEPLOY".into()),
            vec!["copy", "a"],
        ),
        (
            "query (COPY)",
            s(|r| r.query = "deploy v2 (COPY)".into()),
            vec!["copy"],
        ),
        ("query 50%_", s(|r| r.query = "50%_".into()), vec!["b"]),
        ("query %", s(|r| r.query = "%".into()), vec!["b"]),
        ("query _", s(|r| r.query = "_".into()), vec!["b"]),
        (
            "query _ with revoked",
            s(|r| {
                r.query = "_".into();
                r.include_revoked = true;
            }),
            vec!["e", "b"],
        ),
        (
            "states disabled",
            s(|r| r.states = vec![pb::State::Disabled as i32]),
            vec!["b"],
        ),
        (
            "states revoked",
            s(|r| r.states = vec![pb::State::Revoked as i32]),
            vec!["f", "e"],
        ),
        (
            "alice with revoked",
            s(|r| {
                r.owner_id = "alice".into();
                r.include_revoked = true;
            }),
            vec!["copy", "g", "f", "e", "c", "a"],
        ),
        ("owner bob", s(|r| r.owner_id = "bob".into()), vec!["b"]),
        (
            "created_by boss",
            s(|r| r.created_by = "boss".into()),
            vec!["b"],
        ),
        ("module x_y", s(|r| r.module = "x_y".into()), vec!["c"]),
        (
            "module billing:read",
            s(|r| r.module = "billing:read".into()),
            vec!["copy", "a"],
        ),
        (
            "account globex",
            s(|r| r.account_id = "globex".into()),
            vec!["d"],
        ),
        ("query beta", s(|r| r.query = "BETA".into()), vec!["d"]),
    ];
    let run = |what: String, ids: Vec<String>, expected: Vec<&str>, out: &mut Vec<String>| {
        let got = l.all(&ids);
        assert_eq!(got, expected, "search {what}");
        out.push(format!("search {what}: {got:?}"));
    };
    for (what, req, expected) in cases {
        let ids = search_ids(&mut c, &p, req).await;
        run(what.into(), ids, expected, &mut out);
    }
    let ranged = |after: &pb::Token, before: &pb::Token| pb::SearchRequest {
        created_after: after.created_at,
        created_before: before.created_at,
        ..Default::default()
    };
    let ids = search_ids(&mut c, &p, ranged(&a, &d)).await;
    run("created [a, d)".into(), ids, vec!["c", "b", "a"], &mut out);
    let ids = search_ids(&mut c, &p, ranged(&b, &cc)).await;
    run("created [b, c)".into(), ids, vec!["b"], &mut out);
    let used = |after: bool| pb::SearchRequest {
        owner_id: "alice".into(),
        last_used_after: after.then(|| ts(lu0)),
        last_used_before: (!after).then(|| ts(lu0)),
        ..Default::default()
    };
    let ids = search_ids(&mut c, &p, used(true)).await;
    run("alice used since lu0".into(), ids, vec!["copy"], &mut out);
    let ids = search_ids(&mut c, &p, used(false)).await;
    run(
        "alice not used since lu0".into(),
        ids,
        vec!["g", "c", "a"],
        &mut out,
    );
    let ids = search_ids(
        &mut c,
        &p,
        pb::SearchRequest {
            query: copy_value.clone(),
            ..Default::default()
        },
    )
    .await;
    run("query = copy's value".into(), ids, vec!["copy"], &mut out);
    let ids = search_ids(
        &mut c,
        &p,
        pb::SearchRequest {
            query: wrong_secret(&copy_value),
            ..Default::default()
        },
    )
    .await;
    run("query = wrong secret".into(), ids, vec![], &mut out);
    let ids = search_ids(
        &mut c,
        &admin,
        pb::SearchRequest {
            query: "beta".into(),
            ..Default::default()
        },
    )
    .await;
    run("admin of acme: beta".into(), ids, vec![], &mut out);

    // Pagination across pages.
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .search(authed(
                &p,
                pb::SearchRequest {
                    owner_id: "pager".into(),
                    page_size: 3,
                    page_token: token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        pages.push(l.all(&r.tokens.iter().map(|t| t.id.clone()).collect::<Vec<_>>()));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
        assert!(pages.len() < 10);
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("pager{i}")).collect();
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), expected);
    out.push(format!("pages: {pages:?}"));

    // ListEvents.
    let events = |token_id: &str, account_id: &str, page_size: i32, page_token: String| {
        pb::ListEventsRequest {
            token_id: token_id.into(),
            account_id: account_id.into(),
            page_size,
            page_token,
        }
    };
    let mut kinds_of = async |req: pb::ListEventsRequest| -> Vec<pb::Event> {
        c.list_events(authed(&p, req))
            .await
            .unwrap()
            .into_inner()
            .events
    };
    use pb::EventKind as K;
    let expectations: Vec<(&str, &str, Vec<K>)> = vec![
        (a.id.as_str(), "", vec![K::Rotated, K::Updated, K::Issued]),
        (
            b.id.as_str(),
            "",
            vec![K::Disabled, K::Enabled, K::Disabled, K::Issued],
        ),
        (e.id.as_str(), "", vec![K::Revoked, K::Issued]),
        (copy.id.as_str(), "", vec![K::Duplicated]),
        ("", "globex", vec![K::Issued]),
    ];
    for (token_id, account, expected) in expectations {
        let ev = kinds_of(events(token_id, account, 0, String::new())).await;
        let kinds: Vec<K> = ev.iter().map(pb::Event::kind).collect();
        assert_eq!(kinds, expected, "events of {token_id}{account}");
        assert!(ev.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        for e in &ev {
            let (actor_label, actor_owner) = if token_id == b.id && e.kind() == K::Issued {
                ("admin", "boss")
            } else {
                ("platform", "ops")
            };
            assert_eq!(l.of(&e.actor_token_id), actor_label);
            assert_eq!(e.actor_owner_id, actor_owner);
            assert!(e.at.is_some());
        }
        out.push(format!(
            "events {}{account}: {:?}",
            l.of(token_id),
            ev.iter()
                .map(|e| format!(
                    "{:?} by {} on {}",
                    e.kind(),
                    l.of(&e.actor_token_id),
                    l.of(&e.token_id)
                ))
                .collect::<Vec<_>>()
        ));
    }
    let first = c
        .list_events(authed(&p, events(&b.id, "", 3, String::new())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.events.len(), 3);
    assert!(!first.next_page_token.is_empty());
    let second = c
        .list_events(authed(&p, events(&b.id, "", 3, first.next_page_token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.events.len(), 1);
    assert_eq!(second.events[0].kind(), K::Issued);
    assert!(second.next_page_token.is_empty());

    // Expiry and the end of the grace period.
    let wait = grace_end
        .max(Instant::now() + (expires - Utc::now()).to_std().unwrap_or_default())
        .saturating_duration_since(Instant::now());
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    let v = validate(&mut c, &val, &x_value, &[]).await.unwrap();
    assert_eq!((v.valid, v.reason()), (false, pb::Reason::Expired));
    assert_eq!(v.token_id, x.id);
    assert_eq!(
        reason(&mut c, &val, &a_value, &[]).await,
        pb::Reason::Unknown
    );
    assert_eq!(reason(&mut c, &val, &a_new, &[]).await, pb::Reason::Valid);
    out.push("after grace and expiry: x Expired, a old Unknown, a new Valid".into());

    // Every record, normalized.
    let all = c
        .search(authed(
            &p,
            pb::SearchRequest {
                include_revoked: true,
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    for t in &all {
        out.push(normalized(t, &l));
    }
    out
}

#[tokio::test]
async fn functional_basics_match_sqlite() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) = helpers::fresh_pg_database("functional_basics_match_sqlite").await else {
        return;
    };
    let pg = replica(&url, |_| {}).await;
    let on_pg = basics(&pg).await;
    pg.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let lite = helpers::start(helpers::test_config(sqlite_url), Some(dir)).await;
    let on_sqlite = basics(&lite).await;
    lite.stop().await;

    assert_eq!(on_pg.len(), on_sqlite.len());
    for (p, s) in on_pg.iter().zip(&on_sqlite) {
        assert_eq!(p, s, "PostgreSQL and SQLite disagree");
    }
    println!(
        "functional basics: {} observations identical on PostgreSQL and SQLite",
        on_pg.len()
    );
    drop_database(&url).await;
}

// ---------------------------------------------------------------------------
// 2. Search's SQL uses the migrations' indexes.
// ---------------------------------------------------------------------------

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
        println!(
            "skipped: name_search_uses_the_trigram_index_on_a_reused_connection needs \
             auto_explain and a readable {log_path}"
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
    let mut c = client(&app).await;
    // Selective name fragments, as people search for a token they know.
    let queries = ["c0ffee", "ab12", "e3f4", "9a8b", "d00d", "beef", "c0ffee"];
    for q in queries {
        search_ids(
            &mut c,
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

// ---------------------------------------------------------------------------
// 3. Propagation between replicas under Validate load.
// ---------------------------------------------------------------------------

/// Asserts the propagation bounds of the contract: p99 <= 1 s, max <= 2 s.
fn assert_propagation(label: &str, samples: &[Sample]) {
    let (_, p99, max) = propagation_figures(label, samples);
    assert!(p99 <= Duration::from_secs(1), "{label}: p99 {}", ms(p99));
    assert!(max <= Duration::from_secs(2), "{label}: max {}", ms(max));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutations_reach_every_replica_within_a_second() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("mutations_reach_every_replica_within_a_second").await
    else {
        return;
    };
    let started = Instant::now();
    let apps = [
        replica(&url, |_| {}).await,
        replica(&url, |_| {}).await,
        replica(&url, |_| {}).await,
    ];
    let caller = apps[0].platform.clone();
    let mut a = peer("A", &apps[0]).await;
    let readers = [peer("B", &apps[1]).await, peer("C", &apps[2]).await];
    let mut all = vec![
        a.client.clone(),
        readers[0].client.clone(),
        readers[1].client.clone(),
    ];
    let shared = Arc::new(Shared::default());
    *shared.steady.lock().unwrap() = steady_tokens(&mut a.client, &mut all, &caller, 12).await;
    let loads: Vec<Load> = ["A", "B", "C"]
        .iter()
        .zip(&all)
        .map(|(n, c)| start_load(n, c.clone(), caller.clone(), Arc::clone(&shared)))
        .collect();

    let trials = 200;
    let mut samples = Vec::new();
    let loop_started = Instant::now();
    for n in 0..trials {
        let (s, _) = trial(kind_for(n), n, &mut a, &readers, &caller, &shared).await;
        samples.extend(s);
    }
    println!(
        "{trials} trials in {} ({} per trial)",
        ms(loop_started.elapsed()),
        ms(loop_started.elapsed() / trials as u32)
    );
    // Let the load revisit the last mutated tokens past their 2 s mark.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut reports = Vec::new();
    for l in loads {
        reports.push(l.finish().await);
    }
    // Every mutated value, everywhere, long after its mutation.
    for (name, c) in ["A", "B", "C"].iter().zip(all.iter_mut()) {
        assert_all_dead(c, name, &caller, &shared).await;
    }
    assert_loads_clean(&reports);
    assert_no_late_valid(&shared);
    assert_propagation("propagation A -> B, C", &samples);
    println!("whole test: {}", ms(started.elapsed()));
    drop(apps);
    drop_database(&url).await;
}

// ---------------------------------------------------------------------------
// 4. Lost notifications: polling the change log alone propagates.
// ---------------------------------------------------------------------------

/// Disables `id` straight in the database with its change-log row and no
/// NOTIFY: exactly what a mutation whose notification was lost leaves behind.
const EXTERNAL_DISABLE: &str = "UPDATE tokens SET state = 'disabled', state_reason = 'external', \
     disabled_at = now(), updated_at = now() WHERE id = '{id}'; \
     INSERT INTO token_changes (token_id, origin) VALUES ('{id}', 'external')";

async fn external_disable(conn: &mut PgConnection, id: &str) {
    exec(
        conn,
        &format!("BEGIN; {}; COMMIT", EXTERNAL_DISABLE.replace("{id}", id)),
    )
    .await;
}

/// Polls `value` on every reader until rejected; asserts the reason.
async fn rejections(
    readers: &[Peer],
    caller: &str,
    value: &str,
    expected: pb::Reason,
    since: Instant,
    shared: &Arc<Shared>,
    kind: Kind,
) -> Vec<Sample> {
    let mut set = tokio::task::JoinSet::new();
    for r in readers {
        set.spawn(until_rejected(
            r.clone(),
            caller.to_owned(),
            value.to_owned(),
            modules(&["svc:read"]),
            since,
            Arc::clone(shared),
        ));
    }
    let mut out = Vec::new();
    while let Some(res) = set.join_next().await {
        let (reader, propagation, outcome) = res.unwrap();
        assert_eq!(outcome, Ok(expected), "{reader} on {}", id_of(value));
        out.push(Sample {
            kind,
            reader,
            propagation,
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polling_alone_propagates_when_notifications_are_lost() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("polling_alone_propagates_when_notifications_are_lost").await
    else {
        return;
    };
    let poll = Duration::from_millis(200);
    let bound = poll + Duration::from_millis(300);
    let apps = [
        replica(&url, |_| {}).await,
        replica(&url, |c| c.change_poll_interval = poll).await,
        replica(&url, |c| c.change_poll_interval = poll).await,
    ];
    let caller = apps[0].platform.clone();
    let mut a = peer("A", &apps[0]).await;
    let readers = [peer("B", &apps[1]).await, peer("C", &apps[2]).await];
    let shared = Arc::new(Shared::default());
    let db = database_name(&url);
    let mut conn = sql_conn(&url).await;
    let read = modules(&["svc:read"]);
    let listeners_up = until(
        Instant::now(),
        Duration::from_secs(3),
        Duration::from_millis(20),
        || {
            let url = url.clone();
            let db = db.clone();
            async move { listen_sessions(&mut sql_conn(&url).await, &db).await == 3 }
        },
    )
    .await;
    assert!(listeners_up.is_some(), "3 replicas should LISTEN");

    // (1) Commits that send no notification at all.
    let mut silent = Vec::new();
    for n in 0..20 {
        let (id, value) = issue_named(&mut a.client, &caller, &format!("silent {n}")).await;
        warm(&readers, &caller, &value, &read, "silent").await;
        external_disable(&mut conn, &id).await;
        let committed = Instant::now();
        silent.extend(
            rejections(
                &readers,
                &caller,
                &value,
                pb::Reason::Disabled,
                committed,
                &shared,
                Kind::Disable,
            )
            .await,
        );
    }
    let (_, _, max) = propagation_figures("no NOTIFY at all (poll 200ms)", &silent);
    assert!(
        max <= bound,
        "silent change reached a replica after {} (poll {})",
        ms(max),
        ms(poll)
    );

    // (2) Every LISTEN session killed right before an API mutation.
    let mut killed_runs = Vec::new();
    let mut reconnects = Vec::new();
    for n in 0..10 {
        let (id, value) = issue_named(&mut a.client, &caller, &format!("killed {n}")).await;
        warm(&readers, &caller, &value, &read, "killed").await;
        let killed = kill_listeners(&mut conn, &db).await;
        assert!(killed >= 1, "no LISTEN session to kill");
        set_state(&mut a.client, &caller, &id, pb::State::Disabled, "t")
            .await
            .unwrap();
        let returned = Instant::now();
        killed_runs.extend(
            rejections(
                &readers,
                &caller,
                &value,
                pb::Reason::Disabled,
                returned,
                &shared,
                Kind::Disable,
            )
            .await,
        );
        let back = until(
            returned,
            Duration::from_secs(5),
            Duration::from_millis(10),
            || {
                let url = url.clone();
                let db = db.clone();
                async move { listen_sessions(&mut sql_conn(&url).await, &db).await == 3 }
            },
        )
        .await;
        reconnects.push(back.expect("the listeners never reconnected within 5 s"));
    }
    let (_, _, max) = propagation_figures("LISTEN killed before the mutation", &killed_runs);
    assert!(
        max <= bound,
        "after LISTEN was killed a change took {}",
        ms(max)
    );
    figures("LISTEN sessions back after the kill", &reconnects);

    // (3) A change-log row committed after a later one was already polled
    // (sequence numbers commit out of order): only the lookback window finds it.
    let (x_id, x) = issue_named(&mut a.client, &caller, "late commit").await;
    let (y_id, y) = issue_named(&mut a.client, &caller, "early commit").await;
    warm(&readers, &caller, &x, &read, "late").await;
    warm(&readers, &caller, &y, &read, "early").await;
    let mut late = sql_conn(&url).await;
    exec(&mut late, "BEGIN").await;
    exec(&mut late, &EXTERNAL_DISABLE.replace("{id}", &x_id)).await;
    set_state(&mut a.client, &caller, &y_id, pb::State::Disabled, "t")
        .await
        .unwrap();
    let returned = Instant::now();
    rejections(
        &readers,
        &caller,
        &y,
        pb::Reason::Disabled,
        returned,
        &shared,
        Kind::Disable,
    )
    .await;
    // Both readers have now polled past the later sequence number.
    tokio::time::sleep(poll * 2 + Duration::from_millis(50)).await;
    for r in &readers {
        let mut c = r.client.clone();
        assert_eq!(
            reason(&mut c, &caller, &x, &["svc:read"]).await,
            pb::Reason::Valid
        );
    }
    exec(&mut late, "COMMIT").await;
    let committed = Instant::now();
    let out_of_order = rejections(
        &readers,
        &caller,
        &x,
        pb::Reason::Disabled,
        committed,
        &shared,
        Kind::Disable,
    )
    .await;
    let (_, _, max) = propagation_figures("out-of-order commit, no NOTIFY", &out_of_order);
    assert!(max <= bound, "an out-of-order commit took {}", ms(max));
    assert_no_late_valid(&shared);
    drop((apps, conn, late));
    drop_database(&url).await;
}

/// A burst of more changes than one poll reads (10 000 rows): a later change
/// whose NOTIFY was lost must still arrive by polling within the interval
/// (an earlier poll query re-read the whole lookback window with
/// `ORDER BY seq LIMIT 10000` and never got past such a burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polling_keeps_up_after_a_burst_of_changes() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) = helpers::fresh_pg_database("polling_keeps_up_after_a_burst_of_changes").await
    else {
        return;
    };
    let poll = Duration::from_millis(200);
    let a_app = replica(&url, |_| {}).await;
    let b_app = replica(&url, |c| c.change_poll_interval = poll).await;
    let caller = a_app.platform.clone();
    let mut a = peer("A", &a_app).await;
    let readers = [peer("B", &b_app).await];
    let shared = Arc::new(Shared::default());
    let mut conn = sql_conn(&url).await;
    let (id, value) = issue_named(&mut a.client, &caller, "after the burst").await;
    warm(&readers, &caller, &value, &modules(&["svc:read"]), "burst").await;
    // 10 001 committed changes of other tokens (their NOTIFYs do not matter here).
    exec(
        &mut conn,
        "INSERT INTO token_changes (token_id, origin) \
         SELECT lpad(i::text, 16, 'z'), 'burst' FROM generate_series(1, 10001) AS i",
    )
    .await;
    tokio::time::sleep(poll * 2).await;
    external_disable(&mut conn, &id).await;
    let committed = Instant::now();
    let (reader, took, outcome) = until_rejected(
        readers[0].clone(),
        caller.clone(),
        value.clone(),
        modules(&["svc:read"]),
        committed,
        Arc::clone(&shared),
    )
    .await;
    println!(
        "after a burst of 10001 changes, {reader}: {outcome:?} after {}",
        ms(took)
    );
    drop((a_app, b_app, conn));
    drop_database(&url).await;
    assert_eq!(
        outcome,
        Ok(pb::Reason::Disabled),
        "{reader} after {}",
        ms(took)
    );
    assert!(
        took <= poll + Duration::from_millis(300),
        "took {}",
        ms(took)
    );
}

// ---------------------------------------------------------------------------
// 5. A replica dies mid-run; the others and a newcomer stay correct.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_dying_mid_run_does_not_disturb_the_others() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) =
        helpers::fresh_pg_database("a_replica_dying_mid_run_does_not_disturb_the_others").await
    else {
        return;
    };
    let a_app = replica(&url, |_| {}).await;
    let mut b_app = Some(replica(&url, |_| {}).await);
    let c_app = replica(&url, |_| {}).await;
    let caller = a_app.platform.clone();
    let a = peer("A", &a_app).await;
    let b = peer("B", b_app.as_ref().unwrap()).await;
    let c = peer("C", &c_app).await;
    let shared = Arc::new(Shared::default());
    let mut all = vec![a.client.clone(), b.client.clone(), c.client.clone()];
    let mut writer = a.client.clone();
    *shared.steady.lock().unwrap() = steady_tokens(&mut writer, &mut all, &caller, 9).await;
    let mut loads: Vec<Load> = [&a, &b, &c]
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
    // Values still valid after a rotation.
    let mut fresh = Vec::new();

    // All three write and read.
    let peers = [a.clone(), b.clone(), c.clone()];
    let mut before = Vec::new();
    for n in 0..24 {
        let mut w = peers[n % 3].clone();
        let readers: Vec<Peer> = peers.iter().filter(|p| p.name != w.name).cloned().collect();
        let (s, f) = trial(kind_for(n), n, &mut w, &readers, &caller, &shared).await;
        before.extend(s);
        fresh.extend(f);
    }

    // B disables a token and dies right after the call returns.
    let mut b_writer = b.clone();
    let (k_id, k) = issue_named(&mut a.client.clone(), &caller, "last words").await;
    warm(
        &[a.clone(), c.clone()],
        &caller,
        &k,
        &modules(&["svc:read"]),
        "last words",
    )
    .await;
    set_state(
        &mut b_writer.client,
        &caller,
        &k_id,
        pb::State::Disabled,
        "t",
    )
    .await
    .unwrap();
    let returned = Instant::now();
    drop(b_app.take());
    let last_words = rejections(
        &[a.clone(), c.clone()],
        &caller,
        &k,
        pb::Reason::Disabled,
        returned,
        &shared,
        Kind::Disable,
    )
    .await;
    shared.dead.lock().unwrap().push(Dead {
        label: "B's last disable".into(),
        value: k,
        required: modules(&["svc:read"]),
        expected: pb::Reason::Disabled,
        returned,
    });
    // B's clients now fail; A's and C's must not notice anything.
    let b_gone = until(
        returned,
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let mut b = b.client.clone();
            let caller = caller.clone();
            async move { validate(&mut b, &caller, &caller, &[]).await.is_err() }
        },
    )
    .await
    .expect("B still answers 5 s after it was dropped");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b_report = loads.remove(1).finish().await;
    println!(
        "B gone {} after its last disable; its load: {} Validates, {} failed (e.g. {:?})",
        ms(b_gone),
        b_report.calls,
        b_report.errors.len(),
        b_report.errors.first()
    );
    assert!(
        !b_report.errors.is_empty(),
        "B's clients never noticed it died"
    );

    let survivors = [a.clone(), c.clone()];
    let mut after = Vec::new();
    for n in 24..48 {
        let mut w = survivors[n % 2].clone();
        let readers = [survivors[(n + 1) % 2].clone()];
        let (s, f) = trial(kind_for(n), n, &mut w, &readers, &caller, &shared).await;
        after.extend(s);
        fresh.extend(f);
    }

    // A newcomer sees the truth for everything, and takes part.
    let d_app = replica(&url, |_| {}).await;
    let mut d = peer("D", &d_app).await;
    let steady = shared.steady.lock().unwrap().clone();
    for v in steady.iter().chain(&fresh) {
        assert_eq!(
            reason(&mut d.client, &caller, v, &["svc:read"]).await,
            pb::Reason::Valid,
            "D: {}",
            id_of(v)
        );
    }
    assert_all_dead(&mut d.client, "D", &caller, &shared).await;
    let dead_count = shared.dead.lock().unwrap().len();
    println!(
        "D: {} live and {dead_count} dead values all judged correctly",
        steady.len() + fresh.len()
    );
    loads.push(start_load(
        "D",
        d.client.clone(),
        caller.clone(),
        Arc::clone(&shared),
    ));
    let mut with_d = Vec::new();
    for n in 48..60 {
        let (mut w, readers) = if n % 2 == 0 {
            (a.clone(), vec![c.clone(), d.clone()])
        } else {
            (d.clone(), vec![a.clone(), c.clone()])
        };
        let (s, _) = trial(kind_for(n), n, &mut w, &readers, &caller, &shared).await;
        with_d.extend(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut reports = Vec::new();
    for l in loads {
        reports.push(l.finish().await);
    }
    assert_loads_clean(&reports);
    assert_no_late_valid(&shared);
    assert_propagation("3 replicas", &before);
    assert_propagation("B's disable, B gone", &last_words);
    assert_propagation("A <-> C after B died", &after);
    assert_propagation("with newcomer D", &with_d);
    drop((a_app, c_app, d_app));
    drop_database(&url).await;
}

// ---------------------------------------------------------------------------
// 6. The store goes away and comes back.
// ---------------------------------------------------------------------------

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
        let mut c = n.peer.client.clone();
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
        let r = validate(&mut c, &caller, &n.cold[0], &read).await;
        if let Ok(v) = &r {
            panic!(
                "{name}: a miss answered {:?} with the store down",
                v.reason()
            );
        }
        let miss = prompt("miss", r.map(|_| ()), t.elapsed());
        let t = Instant::now();
        let r = set_state(&mut c, &caller, &n.writes[0], pb::State::Disabled, "down").await;
        let write = prompt("SetState", r.map(|_| ()), t.elapsed());
        let t = Instant::now();
        let r = c
            .issue(authed(
                &caller,
                pb::IssueRequest {
                    owner_id: "down".into(),
                    name: "during the outage".into(),
                    ..Default::default()
                },
            ))
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
        let mut c = n.peer.client.clone();
        let (mut hits, mut slowest) = (0, Duration::ZERO);
        while stopped.elapsed() < Duration::from_millis(4500) {
            for v in &warm {
                let t = Instant::now();
                let r = validate(&mut c, &caller, v, &read).await;
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
        let (mut c, caller, cold, name) = (c.clone(), caller.clone(), cold.clone(), name.clone());
        async move {
            match validate(&mut c, &caller, &cold, &modules(&["svc:read"])).await {
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
        let (mut c, caller, target, name) =
            (c.clone(), caller.clone(), target.clone(), name.clone());
        async move {
            match set_state(&mut c, &caller, &target, pb::State::Disabled, "back").await {
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
async fn store_outage_and_restart() {
    // Stops the server: no other PostgreSQL test may run meanwhile.
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
    let mut all: Vec<Client> = peers.iter().map(|p| p.client.clone()).collect();
    let mut a = peers[0].client.clone();
    let mut b = peers[1].client.clone();
    let warm_set = steady_tokens(&mut a, &mut all, &caller, 6).await;
    // Tokens cached everywhere, to disable after each recovery.
    let witnesses = steady_tokens(&mut a, &mut all, &caller, 2).await;
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
        let mut a = peers[0].client.clone();
        set_state(
            &mut a,
            &caller,
            &id_of(&witnesses[0]),
            pb::State::Disabled,
            "w",
        )
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
        let mut a = peers[0].client.clone();
        set_state(
            &mut a,
            &caller,
            &id_of(&witnesses[1]),
            pb::State::Disabled,
            "w",
        )
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

// ---------------------------------------------------------------------------
// 7. A write whose commit outlives the store timeout.
// ---------------------------------------------------------------------------

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
    let mut a = peer("A", &a_app).await;
    let b = peer("B", &b_app).await;
    let shared = Arc::new(Shared::default());
    let read = modules(&["svc:read"]);
    let (id, value) = issue_named(&mut a.client, &caller, "slow commit").await;
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
    let err = set_state(&mut a.client, &caller, &id, pb::State::Disabled, "slow")
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
    let retried = set_state(&mut a.client, &caller, &id, pb::State::Disabled, "slow")
        .await
        .expect("the retried SetState");
    assert_eq!(retried.state(), pb::State::Disabled);
    let after_retry = reason(&mut a.client, &caller, &value, &["svc:read"]).await;
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
