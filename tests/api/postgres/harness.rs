//! The PostgreSQL harness: replicas of one database in this process, a
//! client for each, direct SQL, and latency figures. Shared by
//! `tests/api/postgres/*` and the `pg_outage` test target.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use prost_types::FieldMask;
use sea_orm::sqlx::{self, AssertSqlSafe, Connection, PgConnection, Row};
use tokend::{
    config::Config,
    domain::{TokenId, TokenValue},
    pb::{self},
};
use tonic::{Status, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{self, Api, TestApp, id_of};

/// A replica's typed client (its `TestApp::api`).
pub(crate) type Client = Api;

/// The service name health reports the token service under.
pub(crate) const SERVICE: &str = "tokens.v1.TokenService";

/// Test settings for one replica. Small pools: several replicas (and tests)
/// share one server with `max_connections = 100`.
pub(crate) fn pg_config(url: &str) -> Config {
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

/// The typed client on `app`'s one connection.
pub(crate) fn client(app: &TestApp) -> Client {
    app.api.clone()
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
pub(crate) fn wrong_secret(value: &str) -> String {
    TokenValue::generate_for("tk", TokenId::parse(&id_of(value)).unwrap())
        .unwrap()
        .expose()
}

pub(crate) fn modules(m: &[&str]) -> Vec<String> {
    m.iter().map(|s| (*s).to_owned()).collect()
}

pub(crate) async fn issue(c: &Client, caller: &str, req: pb::IssueRequest) -> (pb::Token, String) {
    let r = c.issue(caller, req).await.expect("Issue");
    (r.token.unwrap(), r.secret)
}

/// Issues a `svc:read` token; each name gets its own owner (per-owner limit).
pub(crate) async fn issue_named(c: &Client, caller: &str, name: &str) -> (String, String) {
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

pub(crate) async fn validate(
    c: &Client,
    caller: &str,
    token: &str,
    required: &[String],
) -> Result<pb::ValidateResponse, Status> {
    let req = pb::ValidateRequest {
        client_ip: String::new(),
        token: token.into(),
        required_modules: required.to_vec(),
    };
    c.validate(caller, req).await
}

/// Revoke by id (reason "leaked"): the tombstone.
pub(crate) async fn revoke_id(c: &Client, caller: &str, id: &str) -> Result<pb::Token, Status> {
    c.revoke_id(caller, id, "leaked").await
}

pub(crate) async fn rotate(
    c: &Client,
    caller: &str,
    id: &str,
    grace: Option<Duration>,
) -> Result<(pb::Token, String), Status> {
    let grace = grace.map(|g| prost_types::Duration {
        seconds: g.as_secs() as i64,
        nanos: g.subsec_nanos() as i32,
    });
    let r = c.rotate_id(caller, id, grace).await?;
    Ok((r.token.unwrap(), r.secret))
}

/// Update of the fields in `paths`: the token record.
pub(crate) async fn update(
    c: &Client,
    caller: &str,
    req: pb::UpdateRequest,
    paths: &[&str],
) -> Result<pb::Token, Status> {
    let update_mask = Some(FieldMask {
        paths: modules(paths),
    });
    c.update_token(caller, pb::UpdateRequest { update_mask, ..req })
        .await
}

/// The token service's health on a connection of its own.
pub(crate) async fn health(channel: Channel) -> Result<ServingStatus, Status> {
    Api::new(channel).health_check(SERVICE).await
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
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Prints and returns (p50, p99, max).
pub(crate) fn figures(label: &str, samples: &[Duration]) -> (Duration, Duration, Duration) {
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

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.0}ms", d.as_secs_f64() * 1e3)
}

/// The one page of a Search (up to 500): the ids found.
pub(crate) async fn search_ids(c: &Client, caller: &str, req: pb::SearchRequest) -> Vec<String> {
    let req = pb::SearchRequest {
        page_size: 500,
        ..req
    };
    let r = c.search(caller, req).await.expect("Search");
    assert!(r.next_page_token.is_empty());
    r.tokens.into_iter().map(|t| t.id).collect()
}
