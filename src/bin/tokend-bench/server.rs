//! The server under test: the release `tokend` binary, started as a child
//! process on a fresh database, and a generated client for it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokend::pb::token_service_client::TokenServiceClient;
use tonic::{Request, transport::Channel};

pub struct Server {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn tokend_exe() -> PathBuf {
    let exe = std::env::current_exe()
        .expect("current exe")
        .with_file_name("tokend");
    assert!(
        exe.exists(),
        "{} not found: run `cargo build --release` first",
        exe.display()
    );
    exe
}

pub fn database_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("bench.db").display())
}

pub fn bootstrap(dir: &Path) -> String {
    let out = Command::new(tokend_exe())
        .args(["bootstrap", "--account", "bench", "--owner", "ops"])
        .env("TOKEND_DATABASE_URL", database_url(dir))
        .env("TOKEND_LOG", "warn")
        .stderr(Stdio::inherit())
        .output()
        .expect("run tokend bootstrap");
    assert!(out.status.success(), "bootstrap failed");
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

pub async fn start_server(dir: &Path, name: &str) -> Server {
    start_server_on(dir, name, &database_url(dir)).await
}

/// A server on the store at `url`, logging into `dir`.
pub async fn start_server_on(dir: &Path, name: &str, url: &str) -> Server {
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let mut child = Command::new(tokend_exe())
        .arg("serve")
        .env("TOKEND_DATABASE_URL", url)
        .env("TOKEND_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOKEND_MAX_TOKENS_PER_OWNER", "100000")
        .env("TOKEND_LOG", "info")
        .stderr(fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start tokend");
    let endpoint = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if let Ok(channel) = Channel::from_shared(endpoint.clone())
            .expect("uri")
            .connect()
            .await
            && tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok()
        {
            return Server { child, port, log };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tokend did not become healthy; see {}", log.display());
}

impl Server {
    /// SIGTERM, wait, and return the server's final stats line.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .rev()
            .find(|l| l.contains("tokend stopped"))
            .map(strip_ansi)
            .unwrap_or_default()
    }

    pub async fn client(&self) -> TokenServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        TokenServiceClient::new(channel)
    }
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn authed<T>(token: &str, m: T) -> Request<T> {
    let mut r = Request::new(m);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

/// One Validate of `token` by `caller`, requiring `modules`.
pub async fn validate(
    client: &mut TokenServiceClient<Channel>,
    caller: &str,
    token: &str,
    modules: &[&str],
) -> tokend::pb::ValidateResponse {
    client
        .validate(authed(
            caller,
            tokend::pb::ValidateRequest {
                token: token.to_owned(),
                required_modules: modules.iter().map(|m| (*m).to_owned()).collect(),
            },
        ))
        .await
        .expect("Validate")
        .into_inner()
}
