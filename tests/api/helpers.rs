//! Test harness: `spawn_app()` starts the real server on a random port with a
//! fresh temporary SQLite database (or a fresh PostgreSQL database with
//! `spawn_app_pg()`), bootstraps a platform token, and connects one typed
//! client (`Api`: a method per RPC, each taking the caller's credential and the
//! request), reached through `TestApp` (`app.issue(caller, request)`). Every
//! log line of the test binary is captured at TRACE level so tests can prove
//! that no secret ever reaches a log.

#![allow(dead_code)]

use std::{
    io::Write,
    ops::Deref,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use tokend::{
    config::{Config, LogFormat},
    pb::{self, token_service_client::TokenServiceClient},
    startup::{Application, Services},
    store::Store,
    telemetry,
};
use tonic::{Request, Response, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Environment variable with a PostgreSQL server URL (e.g.
/// `postgres://postgres@127.0.0.1:5432/test`); tests that need PostgreSQL fail
/// when it is unset and `CI` is set, and otherwise say by name, on the
/// terminal, that they did not run (`not_run`).
pub const PG_URL_ENV: &str = "TOKEND_TEST_POSTGRES_URL";

/// PostgreSQL tests hold `PG_LOCK.read()` for their whole run; a test that
/// stops or restarts the PostgreSQL server holds `PG_LOCK.write()`, so it never
/// pulls the server from under another test.
pub static PG_LOCK: LazyLock<tokio::sync::RwLock<()>> =
    LazyLock::new(|| tokio::sync::RwLock::new(()));

/// Everything logged by this test binary.
static LOGS: LazyLock<Arc<Mutex<Vec<u8>>>> = LazyLock::new(|| {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = CaptureWriter(Arc::clone(&buf));
    telemetry::init(
        LogFormat::Text,
        "trace,h2=info,hyper=info,tower=info",
        move || writer.clone(),
    );
    buf
});

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// All log output captured so far in this test binary.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

pub struct TestApp {
    pub port: u16,
    /// The metrics listener, when the config set `metrics_listen`.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The forward-auth listener, when the config set `http_listen`.
    pub http_addr: Option<std::net::SocketAddr>,
    pub endpoint: String,
    /// A `tokens:platform` token for account `acme`, owner `ops`.
    pub platform: String,
    pub store: Arc<Store>,
    pub services_usage: Arc<tokend::validation::usage::UsageRecorder>,
    pub manager: Arc<tokend::manage::TokenManager>,
    /// The SQLite database's folder, when this app owns one.
    pub data_dir: Option<std::path::PathBuf>,
    /// What the server's health reports.
    pub health: tokend::health::Health,
    /// The typed client on this app's one connection (also reached through
    /// `Deref`: `app.issue(caller, request)`).
    pub api: Api,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<tokend::error::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

/// One verifier key file for every PostgreSQL server this test binary starts:
/// replicas of one store must share their key, as in production. (SQLite
/// servers use the default: `tokend.key` created beside the database.)
pub static PG_KEY_FILE: LazyLock<(tempfile::TempDir, std::path::PathBuf)> = LazyLock::new(|| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("verifier.key");
    std::fs::write(
        &path,
        format!(
            "{}\n",
            tokend::validation::verifier::Keyring::generate_line()
        ),
    )
    .unwrap();
    (dir, path)
});

/// Settings for tests: cheap argon2 (the real cost is exercised by the
/// benchmark), random port, fast flushes, no sweeper.
pub fn test_config(database_url: String) -> Config {
    let verifier_key_file = database_url
        .starts_with("postgres")
        .then(|| PG_KEY_FILE.1.clone());
    let mut config = Config {
        verifier_key_file,
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.into(),
        argon2_memory_kib: 256,
        argon2_iterations: 1,
        hash_workers: 2,
        last_used_flush_interval: Duration::from_millis(100),
        log: "trace".into(),
        ..Config::default()
    };
    // The sweeper's passes are store statements that tests counting a
    // Validate's statements would see: off unless a test turns it on
    // (`sweeper::sweeping`).
    config.sweep.sweep = false;
    config
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server on a fresh SQLite database after letting `adjust` change the config.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    LazyLock::force(&LOGS);
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("tokend.db").display()
    );
    let mut config = test_config(url);
    adjust(&mut config);
    start(config, Some(dir)).await
}

/// One SQLite file shared by several server instances started in turn, e.g. a
/// "restarted" server whose cache is cold.
pub struct SharedDb {
    dir: tempfile::TempDir,
    pub url: String,
}

impl SharedDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("tokend.db").display()
        );
        Self { dir, url }
    }

    /// A server on this database (each start bootstraps its own platform
    /// token, which is therefore warm in that instance's cache).
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A key file in this database's folder with the given lines (keys).
    pub fn key_file(&self, name: &str, keys: &[&str]) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, keys.join("\n") + "\n").unwrap();
        path
    }

    pub async fn spawn(&self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = test_config(self.url.clone());
        adjust(&mut config);
        start(config, None).await
    }

    /// A server on this database with a cold cache: no warm start, so every
    /// first Validate of a token is a miss.
    pub async fn spawn_cold(&self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        self.spawn(|c| {
            c.warm_start = false;
            adjust(c);
        })
        .await
    }

    /// A cold server whose verifier key is not the one the tokens were issued
    /// under: to it they are like tokens issued before verifiers existed (or
    /// after their key was retired), which only argon2 can check.
    pub async fn spawn_legacy(&self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let key = self.dir.path().join("legacy.key");
        if !key.exists() {
            std::fs::write(
                &key,
                format!(
                    "{}\n",
                    tokend::validation::verifier::Keyring::generate_line()
                ),
            )
            .unwrap();
        }
        self.spawn_cold(|c| {
            c.verifier_key_file = Some(key);
            adjust(c);
        })
        .await
    }
}

/// Says on the terminal that `test` did not run, and why. libtest has no
/// run-time "ignored", so such a test is counted as passed: this line goes to
/// the process's stderr directly (not through `eprintln!`, whose output libtest
/// captures and hides for passing tests), so it shows in every `cargo test` run.
pub fn not_run(test: &str, why: &str) {
    let _ = writeln!(
        std::io::stderr(),
        "NOT RUN (counted as passed): {test}: {why}"
    );
}

/// A fresh PostgreSQL database for one test, or `None` when
/// `TOKEND_TEST_POSTGRES_URL` is unset (a failure under `CI`; otherwise the
/// test says, visibly, that it did not run).
pub async fn fresh_pg_database(test_name: &str) -> Option<String> {
    let Ok(base) = std::env::var(PG_URL_ENV) else {
        // In CI a PostgreSQL test that cannot run is a failure, never a pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "{test_name} needs PostgreSQL, and CI is set: {PG_URL_ENV} must name a server"
        );
        not_run(test_name, &format!("needs PostgreSQL; set {PG_URL_ENV}"));
        return None;
    };
    use sea_orm::{ConnectionTrait, Database};
    let name = format!("tokend_test_{}", uuid_like());
    let admin = Database::connect(&base)
        .await
        .expect("connect to PostgreSQL");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    admin.close().await.ok();
    let (prefix, _) = base
        .rsplit_once('/')
        .expect("postgres URL ends with /database");
    Some(format!("{prefix}/{name}"))
}

/// Like `spawn_app_with`, on a fresh PostgreSQL database; `None` if skipped.
pub async fn spawn_app_pg(test_name: &str, adjust: impl FnOnce(&mut Config)) -> Option<TestApp> {
    LazyLock::force(&LOGS);
    let url = fresh_pg_database(test_name).await?;
    let mut config = test_config(url);
    adjust(&mut config);
    Some(start(config, None).await)
}

fn uuid_like() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..16)
        .map(|_| char::from(b'a' + rng.random_range(0..26)))
        .collect()
}

pub async fn start(config: Config, dir: Option<tempfile::TempDir>) -> TestApp {
    let app = start_unready(config, dir).await;
    tokio::time::timeout(Duration::from_secs(60), app.health.until_serving())
        .await
        .expect("the server did not report SERVING within 60 s");
    app
}

/// Starts the server and returns at once, while its health may still say
/// NOT_SERVING (e.g. during its warm start).
pub async fn start_unready(config: Config, dir: Option<tempfile::TempDir>) -> TestApp {
    LazyLock::force(&LOGS);
    let app = Application::build(&config)
        .await
        .expect("build application");
    let port = app.port();
    let health = app.health();
    let metrics_addr = app.metrics_addr();
    let http_addr = app.http_addr();
    let Services {
        store,
        usage,
        manager,
        ..
    } = app.services();
    let (store, usage, manager) = (Arc::clone(store), Arc::clone(usage), Arc::clone(manager));
    let platform = manager
        .bootstrap("acme", "ops")
        .await
        .expect("bootstrap")
        .value
        .expose();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = rx.await;
    }));
    let endpoint = format!("http://127.0.0.1:{port}");
    let api = if config.tls_cert.is_some() {
        // A plain-text connection cannot reach a TLS port: tests that use TLS
        // connect on their own; this one fails only if used.
        Api::new(
            Channel::from_shared(endpoint.clone())
                .unwrap()
                .connect_lazy(),
        )
    } else {
        Api::connect(&endpoint).await
    };
    TestApp {
        port,
        metrics_addr,
        http_addr,
        endpoint,
        platform,
        store,
        services_usage: usage,
        manager,
        data_dir: dir.as_ref().map(|d| d.path().to_path_buf()),
        health,
        api,
        shutdown: Some(tx),
        server: Some(server),
        _dir: dir,
    }
}

/// Attaches `authorization: Bearer <token>` to a request.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// The typed test client: one method per RPC of `TokenService` (and the
/// health check), each taking the caller's credential and the request and
/// returning what the server answered. Cloning it is cheap and shares its
/// one connection (for tasks that call concurrently).
#[derive(Clone)]
pub struct Api {
    client: TokenServiceClient<Channel>,
    health: HealthClient<Channel>,
}

impl Api {
    pub fn new(channel: Channel) -> Self {
        Self {
            client: TokenServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
        }
    }

    /// A client on a new connection to `endpoint`.
    pub async fn connect(endpoint: &str) -> Self {
        Self::new(
            Channel::from_shared(endpoint.to_owned())
                .unwrap()
                .connect()
                .await
                .expect("connect client"),
        )
    }

    /// The generated client on this connection, for requests built by hand
    /// (other metadata, no credential...).
    pub fn raw(&self) -> TokenServiceClient<Channel> {
        self.client.clone()
    }

    pub async fn issue(
        &self,
        caller: &str,
        req: pb::IssueRequest,
    ) -> tonic::Result<pb::IssueResponse> {
        self.raw()
            .issue(authed(caller, req))
            .await
            .map(Response::into_inner)
    }

    pub async fn validate(
        &self,
        caller: &str,
        req: pb::ValidateRequest,
    ) -> tonic::Result<pb::ValidateResponse> {
        self.raw()
            .validate(authed(caller, req))
            .await
            .map(Response::into_inner)
    }

    pub async fn get(&self, caller: &str, req: pb::GetRequest) -> tonic::Result<pb::GetResponse> {
        self.raw()
            .get(authed(caller, req))
            .await
            .map(Response::into_inner)
    }

    pub async fn update(
        &self,
        caller: &str,
        req: pb::UpdateRequest,
    ) -> tonic::Result<pb::UpdateResponse> {
        self.raw()
            .update(authed(caller, req))
            .await
            .map(Response::into_inner)
    }

    pub async fn set_state(
        &self,
        caller: &str,
        req: pb::SetStateRequest,
    ) -> tonic::Result<pb::SetStateResponse> {
        self.raw()
            .set_state(authed(caller, req))
            .await
            .map(Response::into_inner)
    }

    pub async fn revoke(
        &self,
        caller: &str,
        req: pb::RevokeRequest,
    ) -> tonic::Result<pb::RevokeResponse> {
        self.raw()
            .revoke(authed(caller, req))
            .await
            .map(Response::into_inner)
    }

    pub async fn rotate(
        &self,
        caller: &str,
        req: pb::RotateRequest,
    ) -> tonic::Result<pb::RotateResponse> {
        self.raw()
            .rotate(authed(caller, req))
            .await
            .map(Response::into_inner)
    }

    pub async fn duplicate(
        &self,
        caller: &str,
        req: pb::DuplicateRequest,
    ) -> tonic::Result<pb::DuplicateResponse> {
        self.raw()
            .duplicate(authed(caller, req))
            .await
            .map(Response::into_inner)
    }

    pub async fn search(
        &self,
        caller: &str,
        req: pb::SearchRequest,
    ) -> tonic::Result<pb::SearchResponse> {
        self.raw()
            .search(authed(caller, req))
            .await
            .map(Response::into_inner)
    }

    pub async fn list_events(
        &self,
        caller: &str,
        req: pb::ListEventsRequest,
    ) -> tonic::Result<pb::ListEventsResponse> {
        self.raw()
            .list_events(authed(caller, req))
            .await
            .map(Response::into_inner)
    }

    /// The gRPC health check of `service` ("" for the server as a whole).
    pub async fn health_check(&self, service: &str) -> tonic::Result<ServingStatus> {
        self.health
            .clone()
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status())
    }

    // Shorthands for the requests most tests make.

    /// An Issue that must succeed: (token id, full value).
    pub async fn issued(&self, caller: &str, req: pb::IssueRequest) -> (String, String) {
        let r = self.issue(caller, req).await.expect("Issue");
        (r.token.expect("Issue returns a token").id, r.secret)
    }

    /// Validate of a token value with these required modules.
    pub async fn check(
        &self,
        caller: &str,
        token: &str,
        required: &[&str],
    ) -> tonic::Result<pb::ValidateResponse> {
        let req = pb::ValidateRequest {
            client_ip: String::new(),
            token: token.into(),
            required_modules: required.iter().map(|m| (*m).to_owned()).collect(),
        };
        self.validate(caller, req).await
    }

    /// The verdict of a Validate that must succeed.
    pub async fn reason(&self, caller: &str, token: &str, required: &[&str]) -> pb::Reason {
        self.check(caller, token, required)
            .await
            .expect("Validate")
            .reason()
    }

    /// Get by id: the token record.
    pub async fn token(&self, caller: &str, id: &str) -> tonic::Result<pb::Token> {
        let req = pb::GetRequest { id: id.into() };
        Ok(self
            .get(caller, req)
            .await?
            .token
            .expect("Get returns a token"))
    }

    /// SetState of `id` to `state`: the token record.
    pub async fn change_state(
        &self,
        caller: &str,
        id: &str,
        state: pb::State,
        reason: &str,
    ) -> tonic::Result<pb::Token> {
        let req = pb::SetStateRequest {
            id: id.into(),
            state: state as i32,
            reason: reason.into(),
        };
        Ok(self
            .set_state(caller, req)
            .await?
            .token
            .expect("SetState returns a token"))
    }

    pub async fn disable(&self, caller: &str, id: &str, reason: &str) -> tonic::Result<pb::Token> {
        self.change_state(caller, id, pb::State::Disabled, reason)
            .await
    }

    pub async fn enable(&self, caller: &str, id: &str, reason: &str) -> tonic::Result<pb::Token> {
        self.change_state(caller, id, pb::State::Active, reason)
            .await
    }

    /// Revoke by id or by value: the tombstone.
    pub async fn revoke_target(
        &self,
        caller: &str,
        target: pb::revoke_request::Target,
        reason: &str,
    ) -> tonic::Result<pb::Token> {
        let req = pb::RevokeRequest {
            target: Some(target),
            reason: reason.into(),
        };
        Ok(self
            .revoke(caller, req)
            .await?
            .token
            .expect("Revoke returns a token"))
    }

    pub async fn revoke_id(
        &self,
        caller: &str,
        id: &str,
        reason: &str,
    ) -> tonic::Result<pb::Token> {
        self.revoke_target(caller, pb::revoke_request::Target::Id(id.into()), reason)
            .await
    }

    pub async fn revoke_value(
        &self,
        caller: &str,
        value: &str,
        reason: &str,
    ) -> tonic::Result<pb::Token> {
        self.revoke_target(
            caller,
            pb::revoke_request::Target::Token(value.into()),
            reason,
        )
        .await
    }

    /// Update: the token record.
    pub async fn update_token(
        &self,
        caller: &str,
        req: pb::UpdateRequest,
    ) -> tonic::Result<pb::Token> {
        Ok(self
            .update(caller, req)
            .await?
            .token
            .expect("Update returns a token"))
    }

    /// Rotate of `id` with this grace period.
    pub async fn rotate_id(
        &self,
        caller: &str,
        id: &str,
        grace_period: Option<prost_types::Duration>,
    ) -> tonic::Result<pb::RotateResponse> {
        let req = pb::RotateRequest {
            id: id.into(),
            grace_period,
        };
        self.rotate(caller, req).await
    }

    /// Duplicate of `id`: the new token's full value.
    pub async fn duplicate_id(
        &self,
        caller: &str,
        id: &str,
    ) -> tonic::Result<pb::DuplicateResponse> {
        let req = pb::DuplicateRequest {
            id: id.into(),
            ..Default::default()
        };
        self.duplicate(caller, req).await
    }

    /// One Search page of up to 500 that must succeed: the ids found, in order.
    pub async fn search_ids(&self, caller: &str, req: pb::SearchRequest) -> Vec<String> {
        let req = pb::SearchRequest {
            page_size: 500,
            ..req
        };
        let r = self.search(caller, req).await.expect("Search");
        r.tokens.into_iter().map(|t| t.id).collect()
    }

    /// The events of one token (everything visible when `token_id` is empty),
    /// newest first, one page of up to 500.
    pub async fn events(&self, caller: &str, token_id: &str) -> Vec<pb::Event> {
        let req = pb::ListEventsRequest {
            token_id: token_id.into(),
            page_size: 500,
            ..Default::default()
        };
        self.list_events(caller, req)
            .await
            .expect("ListEvents")
            .events
    }
}

/// `app.issue(caller, request)`: the RPC methods live on the cloneable `Api`.
impl Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

impl TestApp {
    /// A connection of its own to this app, for what the typed client does
    /// not cover (a health watch, other services) or a test about connections.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect channel")
    }

    /// Issues a token through the API, as `caller`.
    pub async fn issue_as(&self, caller: &str, req: pb::IssueRequest) -> pb::IssueResponse {
        self.issue(caller, req).await.expect("Issue")
    }

    /// Issues, as the platform token, a token for `account`/`owner` with `modules`;
    /// returns (token id, full value).
    pub async fn token_for(
        &self,
        account: &str,
        owner: &str,
        modules: &[&str],
    ) -> (String, String) {
        let resp = self
            .issue_as(
                &self.platform,
                pb::IssueRequest {
                    account_id: account.into(),
                    owner_id: owner.into(),
                    name: format!("{owner} token"),
                    modules: modules.iter().map(|m| (*m).to_owned()).collect(),
                    ..Default::default()
                },
            )
            .await;
        (resp.token.unwrap().id, resp.secret)
    }

    /// Validates `token` as `caller`; the answer must be OK.
    pub async fn validate_with(
        &self,
        caller: &str,
        token: &str,
        required: &[&str],
    ) -> pb::ValidateResponse {
        self.check(caller, token, required).await.expect("Validate")
    }

    /// Graceful shutdown: waits for the drain and the final last-used flush.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A protobuf timestamp at the store's (microsecond) precision.
pub fn ts(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: (t.timestamp_subsec_micros() * 1000) as i32,
    }
}

/// The public id inside a full token value.
pub fn id_of(value: &str) -> String {
    value.split('_').nth(1).unwrap().to_owned()
}

/// Owned copies of `items` (module lists, CIDR lists, mask paths).
pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// An update mask naming `paths`.
pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: strings(paths),
    })
}

/// The field the first field violation of an error's details names (empty
/// when it has none).
pub fn violation(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

/// A well-formed token value no store holds.
pub fn unknown_value() -> String {
    tokend::domain::TokenValue::generate("tk").unwrap().expose()
}

/// argon2 verifications this app's server has run so far.
pub fn verifications(app: &TestApp) -> u64 {
    app.manager.validator().hasher().verifications()
}
