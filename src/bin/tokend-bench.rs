//! tokend-bench: measures Validate against the server's own
//! `grpc.health.v1.Health/Check`, in one run, on this machine.
//!
//! It starts the release `tokend` binary (found next to this one) on a fresh
//! SQLite database with the default argon2 cost, issues tokens through the
//! generated client, and drives both RPCs with h2load (Debian's
//! `nghttp2-client`), an independent HTTP/2 load generator: gRPC bodies are
//! framed by hand and sent with `-d`. h2load sends one body per process, so
//! each load process validates its own token while the 1,000 issued tokens all
//! sit in the cache. Last, it measures memory per cached token in a child
//! process (`memory`, below), and summarises every figure against its target.
//!
//! Usage: `cargo build --release && target/release/tokend-bench [--quick]`
//!        `target/release/tokend-bench memory [ENTRIES]`
//!
//! Every figure it prints is a measurement of this run; nothing is assumed.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use prost::Message;
use tokend::{
    domain::{Token, TokenState, TokenValue, token::SecretHash},
    pb::{self, token_service_client::TokenServiceClient},
    validation::cache::{CacheConfig, VerifiedCache},
};
use tonic::{Request, transport::Channel};

const HOT_TOKENS: usize = 1000;
const LOAD_PROCESSES: usize = 4;
const STREAMS: u32 = 32;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("memory") {
        let n = args
            .get(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1_000_000);
        memory(n);
        return ExitCode::SUCCESS;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(quick));
    ExitCode::SUCCESS
}

/// Resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm rss");
    pages * 4096
}

/// Memory per cached token: fills a cache with `n` realistic entries.
fn memory(n: usize) {
    // Measured before the cache exists, so its own tables count too.
    let before = rss_bytes();
    let cache = VerifiedCache::new(CacheConfig {
        capacity: n,
        negative_capacity: 16,
        negative_ttl: Duration::from_secs(30),
        unknown_ttl: Duration::from_secs(10),
        failure_window: Duration::from_secs(10),
        failures_per_window: 5,
    });
    let now = chrono::Utc::now();
    for i in 0..n {
        let value = TokenValue::generate("tk").expect("random");
        let token = Token {
            id: value.id(),
            account_id: format!("acct-{:05}", i % 50_000),
            owner_id: format!("user-{:07}", i),
            created_by: String::new(),
            updated_by: String::new(),
            name: String::new(),
            description: String::new(),
            modules: vec!["billing:read".into(), "reports:write".into()],
            api_version: "2024-06-01".into(),
            metadata: BTreeMap::from([("team".to_owned(), "payments".to_owned())]),
            state: TokenState::Active,
            state_reason: String::new(),
            secret_hash: SecretHash::new(format!("$argon2id$v=19$m=19456,t=2,p=1${i}")),
            previous_secret: None,
            hint: String::new(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            expires_at: None,
            disabled_at: None,
            revoked_at: None,
        };
        cache.apply(&token, Some(cache.digest(&value)));
    }
    let after = rss_bytes();
    let entries = cache.len();
    println!(
        "memory: {entries} cached tokens (2 modules, 1 metadata pair, ~10-12 char account/owner ids)"
    );
    println!(
        "memory: RSS before {:.1} MiB, after {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!(
        "memory: {:.0} bytes per cached token",
        (after - before) as f64 / entries.max(1) as f64
    );
}

struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn tokend_exe() -> PathBuf {
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

fn database_url(dir: &Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("bench.db").display())
}

fn bootstrap(dir: &Path) -> String {
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

async fn start_server(dir: &Path, name: &str) -> Server {
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let mut child = Command::new(tokend_exe())
        .arg("serve")
        .env("TOKEND_DATABASE_URL", database_url(dir))
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
    fn stop(mut self) -> String {
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

    async fn client(&self) -> TokenServiceClient<Channel> {
        let channel = Channel::from_shared(format!("http://127.0.0.1:{}", self.port))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        TokenServiceClient::new(channel)
    }
}

fn strip_ansi(s: &str) -> String {
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

fn authed<T>(token: &str, m: T) -> Request<T> {
    let mut r = Request::new(m);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    r
}

/// A gRPC length-prefixed message, as h2load must send it.
fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[derive(Clone)]
struct Load {
    path: &'static str,
    body: Vec<u8>,
    rps: Option<u32>,
    streams: u32,
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    done: u64,
    failed: u64,
}

/// Runs the given loads concurrently, one h2load process each (1 connection,
/// `streams` concurrent streams), and returns one outcome per load.
/// `tag` names the per-request log files, so runs that alternate do not read
/// each other's latencies.
fn h2load(
    port: u16,
    caller: &str,
    loads: &[Load],
    seconds: u32,
    dir: &Path,
    tag: &str,
) -> Vec<Outcome> {
    let mut children = Vec::new();
    for (i, load) in loads.iter().enumerate() {
        let body = dir.join(format!("body-{i}.bin"));
        fs::write(&body, &load.body).expect("write body");
        let log = dir.join(format!("h2load-{tag}-{i}.tsv"));
        let _ = fs::remove_file(&log);
        let mut cmd = Command::new("h2load");
        cmd.args([
            "-c",
            "1",
            "-t",
            "1",
            "-m",
            &load.streams.to_string(),
            "-D",
            &seconds.to_string(),
            "--warm-up-time",
            &WARM_UP_SECONDS.to_string(),
        ])
        .args([
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            &format!("authorization: Bearer {caller}"),
        ])
        .arg("-d")
        .arg(&body)
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://127.0.0.1:{port}{}", load.path))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        if let Some(rps) = load.rps {
            cmd.arg(format!("--rps={rps}"));
        }
        children.push(
            cmd.spawn()
                .expect("h2load (apt-get install nghttp2-client)"),
        );
    }
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().expect("h2load");
            parse_h2load(&String::from_utf8_lossy(&out.stdout))
        })
        .collect()
}

/// Throughput and counts from h2load's summary; latencies come from its log.
fn parse_h2load(text: &str) -> Outcome {
    let mut o = Outcome::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("finished in ") {
            o.rps = rest
                .split(", ")
                .nth(1)
                .and_then(|s| s.trim_end_matches(" req/s").parse().ok())
                .unwrap_or(0.0);
        }
        if let Some(rest) = line.strip_prefix("requests: ") {
            let field = |name: &str| {
                rest.split(", ")
                    .find(|p| p.ends_with(name))
                    .and_then(|p| p.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            };
            o.done = field(" done");
            o.failed = field(" failed") + field(" errored");
        }
    }
    o
}

/// Sums the throughput of the processes `first..` and takes p50/p99 over all
/// their requests (from h2load's per-request logs).
fn combine(outcomes: &[Outcome], dir: &Path, tag: &str, first: usize) -> Outcome {
    let mut latencies = Vec::new();
    for i in first..first + outcomes.len() {
        latencies.extend(
            fs::read_to_string(dir.join(format!("h2load-{tag}-{i}.tsv")))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    l.split('\t')
                        .nth(2)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                }),
        );
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Outcome {
        rps: outcomes.iter().map(|o| o.rps).sum(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        done: outcomes.iter().map(|o| o.done).sum(),
        failed: outcomes.iter().map(|o| o.failed).sum(),
    }
}

/// Rounds of the Validate vs Health comparison, and of each flood measurement.
/// Many short rounds whose two halves run back to back: this machine is a
/// shared VM whose speed drifts by 10-20% over tens of seconds, and adjacent
/// short runs see the same speed, so their ratio is steady where a single
/// long run each is not.
/// (`--quick`: 4 and 2, for a smoke run; its figures are not the ones to quote.)
const ROUNDS: usize = 10;
const FLOOD_ROUNDS: usize = 5;
const WARM_UP_SECONDS: u32 = 1;

/// One undisturbed run of `valid` and one of `disturbed` (whose first
/// `LOAD_PROCESSES` outcomes are the same valid load), back to back, in an
/// order that alternates between calls.
fn disturbed_pair(
    server: &Server,
    caller: &str,
    valid: &[Load],
    disturbed: &[Load],
    seconds: u32,
    dir: &Path,
) -> (Outcome, Vec<Outcome>) {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let undisturbed_first = CALLS
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(2);
    let alone = || {
        combine(
            &h2load(server.port, caller, valid, seconds, dir, "alone"),
            dir,
            "alone",
            0,
        )
    };
    if undisturbed_first {
        let u = alone();
        (
            u,
            h2load(server.port, caller, disturbed, seconds, dir, "disturbed"),
        )
    } else {
        let d = h2load(server.port, caller, disturbed, seconds, dir, "disturbed");
        (alone(), d)
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn summary_line(label: &str, values: &[f64], target: &str) {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "{label:<56} median {:.3}  (min {min:.3}, max {max:.3}, n={})  target {target}",
        median(values),
        values.len()
    );
}

fn show(label: &str, o: &Outcome) {
    println!(
        "{label:<44} {:>10.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   ({} done, {} failed)",
        o.rps, o.p50_ms, o.p99_ms, o.done, o.failed
    );
}

fn validate_body(token: &str) -> Vec<u8> {
    frame(&pb::ValidateRequest {
        token: token.to_owned(),
        required_modules: vec!["billing:read".into()],
    })
}

async fn run(quick: bool) {
    let seconds = if quick { 2 } else { 4 };
    let (rounds, flood_rounds) = if quick {
        (4, 2)
    } else {
        (ROUNDS, FLOOD_ROUNDS)
    };
    let dir_buf = std::env::temp_dir().join(format!("tokend-bench-{}", std::process::id()));
    fs::create_dir_all(&dir_buf).expect("temp dir");
    let dir = dir_buf.as_path();
    println!(
        "tokend-bench: {seconds} s per measurement (+{WARM_UP_SECONDS} s warm-up), {LOAD_PROCESSES} h2load processes x 1 connection x {STREAMS} streams"
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let platform = bootstrap(dir);
    let server = start_server(dir, "server").await;
    let mut client = server.client().await;
    let issue = |name: String, modules: Vec<String>| pb::IssueRequest {
        owner_id: "svc".into(),
        name,
        modules,
        ..Default::default()
    };

    let caller = client
        .issue(authed(
            &platform,
            issue("gateway".into(), vec!["tokens:validate".into()]),
        ))
        .await
        .expect("issue caller")
        .into_inner()
        .secret;
    let started = Instant::now();
    let mut hot = Vec::with_capacity(HOT_TOKENS);
    let mut tasks = Vec::new();
    for chunk in 0..8 {
        let mut c = client.clone();
        let platform = platform.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..HOT_TOKENS / 8 {
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
    for t in tasks {
        hot.extend(t.await.expect("issue task"));
    }
    println!(
        "issued {} tokens with the default argon2id cost in {:.1} s",
        hot.len(),
        started.elapsed().as_secs_f64()
    );
    for value in &hot {
        let v = client
            .validate(authed(
                &caller,
                pb::ValidateRequest {
                    token: value.clone(),
                    required_modules: vec!["billing:read".into()],
                },
            ))
            .await
            .expect("validate")
            .into_inner();
        assert!(v.valid, "a hot token does not validate");
    }
    println!("all {} hot tokens validated once (cache warm)", hot.len());

    let health = Load {
        path: "/grpc.health.v1.Health/Check",
        body: frame(&tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
        rps: None,
        streams: STREAMS,
    };
    let validate_loads: Vec<Load> = (0..LOAD_PROCESSES)
        .map(|i| Load {
            path: "/tokens.v1.TokenService/Validate",
            body: validate_body(&hot[i * 97]),
            rps: None,
            streams: STREAMS,
        })
        .collect();
    let health_loads = vec![health; LOAD_PROCESSES];

    println!(
        "\n== Validate (cache hit) vs Health/Check, same server, same h2load settings, {rounds} interleaved rounds"
    );
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        // Alternate which goes first, so a drift in the machine's speed (it is
        // a shared VM) does not always favour the same side.
        let first_health = !round.is_multiple_of(2);
        let run = |loads: &[Load]| {
            combine(
                &h2load(server.port, &caller, loads, seconds, dir, "main"),
                dir,
                "main",
                0,
            )
        };
        let (h, v) = if first_health {
            let h = run(&health_loads);
            (h, run(&validate_loads))
        } else {
            let v = run(&validate_loads);
            (run(&health_loads), v)
        };
        show(&format!("round {round}: Health/Check"), &h);
        show(&format!("round {round}: Validate"), &v);
        println!(
            "round {round}: Validate/Health throughput ratio {:.3}, p99 ratio {:.3}",
            v.rps / h.rps,
            v.p99_ms / h.p99_ms
        );
        ratios.push((v.rps / h.rps, v.p99_ms / h.p99_ms));
    }

    println!(
        "\n== Wrong-secret flood on one token id ({LOAD_PROCESSES} distinct wrong values, 2,500 req/s each) during Validate load"
    );
    let victim = &hot[7];
    let mut floods: Vec<Load> = Vec::new();
    for _ in 0..LOAD_PROCESSES {
        let wrong = TokenValue::generate_for("tk", TokenValue::parse(victim).expect("parse").id())
            .expect("random")
            .expose();
        floods.push(Load {
            path: "/tokens.v1.TokenService/Validate",
            body: validate_body(&wrong),
            rps: Some(2500),
            streams: 8,
        });
    }
    let mut loads = validate_loads.clone();
    loads.extend(floods.iter().cloned());
    let mut flood_ratios = Vec::new();
    for round in 1..=flood_rounds {
        let (undisturbed, out) =
            disturbed_pair(&server, &caller, &validate_loads, &loads, seconds, dir);
        let valid = combine(&out[..LOAD_PROCESSES], dir, "disturbed", 0);
        let flood = combine(&out[LOAD_PROCESSES..], dir, "disturbed", LOAD_PROCESSES);
        show(
            &format!("round {round}: valid tokens, undisturbed"),
            &undisturbed,
        );
        show(
            &format!("round {round}: valid tokens during the flood"),
            &valid,
        );
        show(&format!("round {round}: wrong-secret flood"), &flood);
        println!(
            "round {round}: valid throughput during flood / undisturbed: {:.3}",
            valid.rps / undisturbed.rps
        );
        flood_ratios.push(valid.rps / undisturbed.rps);
    }

    println!("\n== Mixed flood: valid + malformed + unknown-id + wrong-secret");
    let malformed = format!("{}x", &hot[1][..hot[1].len() - 1]);
    let unknown = TokenValue::generate("tk").expect("random").expose();
    let wrong = TokenValue::generate_for("tk", TokenValue::parse(&hot[2]).expect("parse").id())
        .expect("random")
        .expose();
    let mut loads = validate_loads.clone();
    for bad in [&malformed, &unknown, &wrong] {
        loads.push(Load {
            path: "/tokens.v1.TokenService/Validate",
            body: validate_body(bad),
            rps: Some(2500),
            streams: 8,
        });
    }
    let mut mix_ratios = Vec::new();
    for round in 1..=flood_rounds {
        let (undisturbed, out) =
            disturbed_pair(&server, &caller, &validate_loads, &loads, seconds, dir);
        let valid = combine(&out[..LOAD_PROCESSES], dir, "disturbed", 0);
        show(
            &format!("round {round}: valid tokens, undisturbed"),
            &undisturbed,
        );
        show(&format!("round {round}: valid share of the mix"), &valid);
        for (i, label) in ["malformed", "unknown id", "wrong secret"]
            .iter()
            .enumerate()
        {
            let at = LOAD_PROCESSES + i;
            show(
                &format!("round {round}: {label} flood"),
                &combine(&out[at..=at], dir, "disturbed", at),
            );
        }
        println!(
            "round {round}: valid throughput in the mix / undisturbed: {:.3}",
            valid.rps / undisturbed.rps
        );
        mix_ratios.push(valid.rps / undisturbed.rps);
    }
    println!("server: {}", server.stop());

    println!(
        "\n== Cache-miss cost: first Validate per token after a restart (cold cache), sequential"
    );
    let server = start_server(dir, "cold").await;
    let mut client = server.client().await;
    let sample = if quick { 20 } else { 100 };
    let mut first = Vec::new();
    let mut second = Vec::new();
    // Warm the caller credential itself first (it is one miss too).
    client
        .validate(authed(
            &caller,
            pb::ValidateRequest {
                token: hot[0].clone(),
                required_modules: vec![],
            },
        ))
        .await
        .expect("validate");
    for value in hot.iter().skip(1).take(sample) {
        for times in [&mut first, &mut second] {
            let t = Instant::now();
            let v = client
                .validate(authed(
                    &caller,
                    pb::ValidateRequest {
                        token: value.clone(),
                        required_modules: vec![],
                    },
                ))
                .await
                .expect("validate")
                .into_inner();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert!(v.valid);
        }
    }
    let summary = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (
            v.iter().sum::<f64>() / v.len() as f64,
            v[v.len() / 2],
            v[(v.len() * 99 / 100).min(v.len() - 1)],
        )
    };
    let (m1, p1, q1) = summary(&mut first);
    let (m2, p2, q2) = summary(&mut second);
    println!(
        "first Validate (miss: 1 store read + 1 argon2id):  mean {m1:.2} ms  p50 {p1:.2} ms  p99 {q1:.2} ms  (n={sample})"
    );
    println!(
        "second Validate (hit):                             mean {m2:.3} ms  p50 {p2:.3} ms  p99 {q2:.3} ms"
    );
    println!("server: {}", server.stop());

    println!("\n== Memory: 1,000,000 cached tokens, in a fresh process");
    let per_token = memory_in_child();

    println!("\n== Summary (median over interleaved rounds; every round is printed above)");
    let throughput: Vec<f64> = ratios.iter().map(|r| r.0).collect();
    let p99: Vec<f64> = ratios.iter().map(|r| r.1).collect();
    summary_line("Validate/Health throughput", &throughput, ">= 0.9");
    summary_line("Validate/Health p99", &p99, "<= 1.5");
    summary_line(
        "valid during 10,000/s wrong-secret flood / undisturbed",
        &flood_ratios,
        ">= 0.7",
    );
    summary_line(
        "valid in the mixed flood / undisturbed",
        &mix_ratios,
        "(no target)",
    );
    println!(
        "{:<56} {per_token:.0}  target <= 512",
        "bytes per cached token (RSS growth / entries)"
    );
    let _ = std::io::stdout().flush();
    let _ = fs::remove_dir_all(dir);
}

/// Runs `tokend-bench memory` as a child, so the RSS it measures holds nothing
/// but the cache; echoes its report and returns the bytes per cached token.
fn memory_in_child() -> f64 {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .arg("memory")
        .output()
        .expect("run tokend-bench memory");
    assert!(out.status.success(), "tokend-bench memory failed");
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    report
        .lines()
        .find_map(|l| {
            l.strip_prefix("memory: ")?
                .strip_suffix(" bytes per cached token")?
                .parse()
                .ok()
        })
        .expect("bytes per cached token in the memory report")
}
