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
    /// From spawning the process to health reporting SERVING.
    pub ready_after: Duration,
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
    bootstrap_on(&database_url(dir), &[])
}

/// `tokend bootstrap` on the store at `url`: a platform token.
pub fn bootstrap_on(url: &str, env: &[(&str, String)]) -> String {
    let out = Command::new(tokend_exe())
        .args(["bootstrap", "--account", "bench", "--owner", "ops"])
        .env("TOKEND_DATABASE_URL", url)
        .env("TOKEND_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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
    start_server_on(dir, name, &database_url(dir), &[]).await
}

/// Starts `tokend serve` on the store at `url` with extra environment, and
/// waits (up to 5 minutes) until its health reports SERVING, i.e. after its
/// warm start; `Server::ready_after` is how long that took.
pub async fn start_server_on(dir: &Path, name: &str, url: &str, env: &[(&str, String)]) -> Server {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let started = std::time::Instant::now();
    let mut child = Command::new(tokend_exe())
        .arg("serve")
        .env("TOKEND_DATABASE_URL", url)
        .env("TOKEND_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOKEND_MAX_TOKENS_PER_OWNER", "100000")
        .env("TOKEND_LOG", "info")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("start tokend");
    let endpoint = format!("http://127.0.0.1:{port}");
    while started.elapsed() < Duration::from_secs(300) {
        if let Ok(channel) = Channel::from_shared(endpoint.clone())
            .expect("uri")
            .connect()
            .await
        {
            let mut health = HealthClient::new(channel);
            while let Ok(r) = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            {
                if r.get_ref().status == ServingStatus::Serving as i32 {
                    return Server {
                        child,
                        port,
                        log,
                        ready_after: started.elapsed(),
                    };
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tokend exited ({status}); see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("tokend did not report SERVING; see {}", log.display());
}

impl Server {
    /// The server process's resident set size, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// The server's log so far (colour codes removed).
    pub fn log(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// A number the server printed in its final stats line, e.g.
    /// `argon2_verifications`, from a line `stop` returned.
    pub fn stat(line: &str, name: &str) -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {line:?}"))
    }

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

impl Drop for Server {
    /// A benchmark that fails midway leaves no server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
