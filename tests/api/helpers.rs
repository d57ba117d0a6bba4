//! Test harness: `spawn_app()` starts the real server on a random port with a
//! fresh temporary SQLite database (or a fresh PostgreSQL database with
//! `spawn_app_pg()`), bootstraps a platform token, and hands out a generated
//! tonic client. Every log line of the test binary is captured at TRACE level
//! so tests can prove that no secret ever reaches a log.

#![allow(dead_code)]

use std::{
    io::Write,
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
use tonic::{Request, transport::Channel};

/// Environment variable with a PostgreSQL server URL (e.g.
/// `postgres://postgres@127.0.0.1:5432/test`); tests that need PostgreSQL are
/// skipped, and say so by name, when it is unset.
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
/// benchmark), random port, fast flushes.
pub fn test_config(database_url: String) -> Config {
    let verifier_key_file = database_url
        .starts_with("postgres")
        .then(|| PG_KEY_FILE.1.clone());
    Config {
        verifier_key_file,
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: database_url.into(),
        argon2_memory_kib: 256,
        argon2_iterations: 1,
        hash_workers: 2,
        last_used_flush_interval: Duration::from_millis(100),
        log: "trace".into(),
        ..Config::default()
    }
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

/// A fresh PostgreSQL database for one test, or `None` (after printing that
/// the named test is skipped) when `TOKEND_TEST_POSTGRES_URL` is unset.
pub async fn fresh_pg_database(test_name: &str) -> Option<String> {
    let Ok(base) = std::env::var(PG_URL_ENV) else {
        // In CI a PostgreSQL test that cannot run is a failure, never a pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "{test_name} needs PostgreSQL, and CI is set: {PG_URL_ENV} must name a server"
        );
        println!("skipped: {test_name} needs PostgreSQL; set {PG_URL_ENV}");
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
    TestApp {
        port,
        metrics_addr,
        http_addr,
        endpoint: format!("http://127.0.0.1:{port}"),
        platform,
        store,
        services_usage: usage,
        manager,
        data_dir: dir.as_ref().map(|d| d.path().to_path_buf()),
        health,
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

impl TestApp {
    pub async fn client(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::connect(self.endpoint.clone())
            .await
            .expect("connect client")
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect channel")
    }

    /// Issues a token through the API, as `caller`.
    pub async fn issue_as(&self, caller: &str, req: pb::IssueRequest) -> pb::IssueResponse {
        self.client()
            .await
            .issue(authed(caller, req))
            .await
            .expect("Issue")
            .into_inner()
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

    /// Validates `token` using a fresh `tokens:validate` credential... or the given one.
    pub async fn validate_with(
        &self,
        caller: &str,
        token: &str,
        required: &[&str],
    ) -> pb::ValidateResponse {
        self.client()
            .await
            .validate(authed(
                caller,
                pb::ValidateRequest {
                    token: token.into(),
                    required_modules: required.iter().map(|m| (*m).to_owned()).collect(),
                },
            ))
            .await
            .expect("Validate")
            .into_inner()
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
