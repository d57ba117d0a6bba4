//! The server under test: the release `tokend` binary, started as a child
//! process on a fresh database (plaintext, or TLS with a certificate made for
//! the run), always with its Prometheus listener on, and a generated client
//! for it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokend::{
    pb::{self, token_service_client::TokenServiceClient},
    tls::test_pki::TestCa,
};
use tonic::{
    Request,
    transport::{Certificate, Channel, ClientTlsConfig},
};

pub struct Server {
    child: Child,
    pub port: u16,
    /// The CA the server's certificate comes from, when it serves TLS.
    ca_pem: Option<String>,
    metrics_port: u16,
    log: PathBuf,
    /// From spawning the process to health reporting SERVING.
    pub ready_after: Duration,
}

/// TLS files for a server: a CA made for this run and a certificate for
/// 127.0.0.1 signed by it.
pub struct TlsFiles {
    pub ca_pem: String,
    cert: PathBuf,
    key: PathBuf,
}

pub fn tls_files(dir: &Path) -> TlsFiles {
    let ca = TestCa::new("tokend-bench CA").expect("CA");
    let server = ca.server(&["127.0.0.1", "localhost"]).expect("certificate");
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    fs::write(&cert, &server.cert_pem).expect("write certificate");
    fs::write(&key, &server.key_pem).expect("write key");
    TlsFiles {
        ca_pem: ca.cert_pem().to_owned(),
        cert,
        key,
    }
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
    start(dir, name, &database_url(dir), &[], None, &[]).await
}

pub async fn start_tls_server(dir: &Path, name: &str, tls: &TlsFiles) -> Server {
    start(dir, name, &database_url(dir), &[], Some(tls), &[]).await
}

/// Starts `tokend serve` on the store at `url` with extra environment.
pub async fn start_server_on(dir: &Path, name: &str, url: &str, env: &[(&str, String)]) -> Server {
    start(dir, name, url, env, None, &[]).await
}

/// `TOKEND_BENCH_PIN=1`: the server runs on CPU 0 and the load generators
/// on CPU 1 (`taskset`), so that a generator's own cost per request (h2load
/// building a 700-byte CheckRequest) does not take CPU from the server.
/// Off by default: the figures in the README's table say which they used.
pub fn pinned() -> bool {
    std::env::var("TOKEND_BENCH_PIN").is_ok_and(|v| v == "1")
}

/// The CPU the server runs on when pinned.
pub const SERVER_CPUS: &str = "0";
/// The CPU the load generators run on when pinned.
pub const LOAD_CPUS: &str = "1";

/// `program` as a command, under `taskset -c cpus` when pinned.
pub fn pinned_command(program: &str, cpus: &str) -> Command {
    if pinned() {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", cpus, program]);
        cmd
    } else {
        Command::new(program)
    }
}

/// Starts the server under `launcher` (e.g. valgrind and its options), which
/// runs it in its own process.
pub async fn start_server_under(dir: &Path, name: &str, launcher: &[String]) -> Server {
    start(dir, name, &database_url(dir), &[], None, launcher).await
}

/// Starts the server and waits (up to 5 minutes) until its health reports
/// SERVING, i.e. after its warm start; `Server::ready_after` is how long
/// that took.
async fn start(
    dir: &Path,
    name: &str,
    url: &str,
    env: &[(&str, String)],
    tls: Option<&TlsFiles>,
    launcher: &[String],
) -> Server {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let log = dir.join(format!("{name}.log"));
    let started = std::time::Instant::now();
    let mut cmd = match launcher.split_first() {
        None if pinned() => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", SERVER_CPUS]).arg(tokend_exe());
            cmd
        }
        None => Command::new(tokend_exe()),
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(tokend_exe());
            cmd
        }
    };
    cmd.arg("serve")
        .env("TOKEND_DATABASE_URL", url)
        // Port 0: the server picks free ports and logs them, so no other
        // process on this (shared) machine can take them in between.
        .env("TOKEND_LISTEN", "127.0.0.1:0")
        // Metrics on, as in production: the targets must hold with them.
        .env("TOKEND_METRICS_LISTEN", "127.0.0.1:0")
        .env("TOKEND_MAX_TOKENS_PER_OWNER", "100000")
        .env("TOKEND_LOG", "info")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(fs::File::create(&log).expect("log file"));
    if let Some(tls) = tls {
        cmd.env("TOKEND_TLS_CERT", &tls.cert)
            .env("TOKEND_TLS_KEY", &tls.key);
    }
    let mut child = cmd.spawn().expect("start tokend");
    let (port, metrics_port) = loop {
        let text = strip_ansi(&fs::read_to_string(&log).unwrap_or_default());
        let grpc = logged_port(&text, "tokend serving");
        let metrics = logged_port(&text, "metrics on http://");
        if let (Some(grpc), Some(metrics)) = (grpc, metrics) {
            break (grpc, metrics);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("tokend exited ({status}); see {}", log.display());
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "tokend did not start; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let base = base_url(port, tls.is_some());
    let ca = tls.map(|t| t.ca_pem.as_str());
    while started.elapsed() < Duration::from_secs(300) {
        if let Ok(channel) = connect(&base, ca).await {
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
                        ca_pem: tls.map(|t| t.ca_pem.clone()),
                        metrics_port,
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

/// The port in the `addr=127.0.0.1:PORT` of the first log line containing
/// `marker`.
pub fn logged_port(log: &str, marker: &str) -> Option<u16> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))?;
    addr.rsplit(':').next()?.parse().ok()
}

impl Server {
    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

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

    /// SIGKILL, as a replica dying: no drain, no goodbye to its clients.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

    /// The gRPC base URL, as h2load and the client use it.
    pub fn url(&self) -> String {
        base_url(self.port, self.ca_pem.is_some())
    }

    pub async fn client(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(
            connect(&self.url(), self.ca_pem.as_deref())
                .await
                .expect("connect"),
        )
    }

    /// The server's `/metrics` page.
    pub fn scrape(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .expect("connect to the metrics listener");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read /metrics");
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default()
    }

    /// One line saying the metrics were on: Validate requests the server
    /// counted, by cache path, for the reason `valid`.
    pub fn metrics_line(&self) -> String {
        let page = self.scrape();
        let count = |cache: &str| {
            let series =
                format!(r#"tokend_validate_requests_total{{reason="valid",cache="{cache}"}} "#);
            page.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .unwrap_or("?")
                .to_owned()
        };
        format!(
            "metrics on: /metrics counted {} valid Validates from the cache and {} from the store ({} lines)",
            count("hit"),
            count("miss"),
            page.lines().count()
        )
    }
}

fn base_url(port: u16, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}")
}

/// A channel to `url`, over TLS trusting `ca_pem` when given.
async fn connect(url: &str, ca_pem: Option<&str>) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Channel::from_shared(url.to_owned()).expect("uri");
    match ca_pem {
        Some(ca) => {
            endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?
                .connect()
                .await
        }
        None => endpoint.connect().await,
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
                client_ip: String::new(),
                token: token.to_owned(),
                required_modules: modules.iter().map(|m| (*m).to_owned()).collect(),
            },
        ))
        .await
        .expect("Validate")
        .into_inner()
}

/// A `tokens:validate` caller credential for the load generator.
pub async fn issue_caller(client: &mut TokenServiceClient<Channel>, platform: &str) -> String {
    client
        .issue(authed(
            platform,
            pb::IssueRequest {
                owner_id: "svc".into(),
                name: "gateway".into(),
                modules: vec!["tokens:validate".into()],
                ..Default::default()
            },
        ))
        .await
        .expect("issue caller")
        .into_inner()
        .secret
}

/// Issues `n` `billing:read` tokens from 8 concurrent tasks; their values.
pub async fn issue_tokens(
    client: &TokenServiceClient<Channel>,
    platform: &str,
    n: usize,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let mut c = client.clone();
        let platform = platform.to_owned();
        let count = n / 8 + usize::from(chunk < n % 8);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..count {
                let r = pb::IssueRequest {
                    owner_id: format!("user-{chunk}-{i}"),
                    name: format!("hot {chunk}-{i}"),
                    modules: vec!["billing:read".into()],
                    ..Default::default()
                };
                out.push(
                    c.issue(authed(&platform, r))
                        .await
                        .expect("issue")
                        .into_inner()
                        .secret,
                );
            }
            out
        }));
    }
    let mut values = Vec::with_capacity(n);
    for t in tasks {
        values.extend(t.await.expect("issue task"));
    }
    values
}

/// The ranges of the benchmark's IP-bound tokens: a realistic handful,
/// the load's client address in the last one (every range is tried).
pub const BOUND_CIDRS: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "2001:db8::/32",
    "127.0.0.0/8",
];
/// The client address the IP-bound load sends.
pub const BOUND_CLIENT_IP: &str = "127.0.0.1";

/// Issues `n` tokens bound to `BOUND_CIDRS`; returns their values.
pub async fn issue_bound_tokens(
    client: &TokenServiceClient<Channel>,
    platform: &str,
    n: usize,
) -> Vec<String> {
    let mut c = client.clone();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = pb::IssueRequest {
            owner_id: format!("bound-{i}"),
            name: format!("bound {i}"),
            modules: vec!["billing:read".into()],
            allowed_cidrs: BOUND_CIDRS.iter().map(|c| (*c).to_owned()).collect(),
            ..Default::default()
        };
        out.push(
            c.issue(authed(platform, r))
                .await
                .expect("issue")
                .into_inner()
                .secret,
        );
    }
    out
}

/// Validates each value once as `caller` (so the cache is warm).
pub async fn warm(client: &mut TokenServiceClient<Channel>, caller: &str, values: &[String]) {
    warm_from(client, caller, values, "").await;
}

/// As `warm`, for an end client at `client_ip`.
pub async fn warm_from(
    client: &mut TokenServiceClient<Channel>,
    caller: &str,
    values: &[String],
    client_ip: &str,
) {
    for value in values {
        let v = client
            .validate(authed(
                caller,
                pb::ValidateRequest {
                    client_ip: client_ip.to_owned(),
                    token: value.clone(),
                    required_modules: vec!["billing:read".into()],
                },
            ))
            .await
            .expect("validate")
            .into_inner();
        assert!(v.valid, "a hot token does not validate");
    }
}
