//! Validate through restarts: tokens in use before a restart validate at once
//! after it, without argon2, with and without the warm start; what a miss
//! costs; how long a start with a million live tokens takes; and a
//! wrong-secret flood on a cold token id.
//!
//! Tokens are seeded straight into the store (`Store::import_tokens`) with
//! real verifiers under the server's key: issuing 20,000 through the API at
//! the default argon2 cost would take minutes, and argon2 plays no part in
//! these measurements (the point is that it is never run). Their argon2id
//! hashes are real hashes of their secrets at cheap parameters (the
//! 1,000,000-token start-up seed shares one cheap hash: say so when printed).
//!
//! The passes are driven by this process's own tonic client (128 requests in
//! flight over 4 connections, on a runtime of its own): h2load sends one
//! body per process, and every request here carries a different token.
//!
//! Longer than the usual file: its passes (warm, cold, miss cost, large
//! start, flood) share the seeded store, the server restarts between them
//! and the client, and read as one experiment.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::Utc;
use tokend::{
    domain::{AccountId, OwnerId, Token, TokenState, TokenValue, token::Actor},
    pb::{self, token_service_client::TokenServiceClient},
    store::{Store, StoreConfig},
    validation::{
        hasher::{Hasher, HasherConfig},
        verifier::Keyring,
    },
};
use tonic::transport::Channel;

use crate::{
    LOAD_PROCESSES, STREAMS,
    load::{
        FLOOD_ROUNDS, Load, combine, disturbed_pair, median, show, summary_line, validate_body,
    },
    server::{Server, authed, bootstrap_on, database_url, start_server_on},
};

/// One pass over a set of tokens.
struct Pass {
    valid: usize,
    errors: usize,
    other: usize,
    elapsed: Duration,
}

impl Pass {
    fn rps(&self) -> f64 {
        (self.valid + self.errors + self.other) as f64 / self.elapsed.as_secs_f64()
    }

    fn show(&self, label: &str) {
        println!(
            "{label:<52} {:>8.0} req/s  ({} valid, {} other reasons, {} errors, {:.2} s)",
            self.rps(),
            self.valid,
            self.other,
            self.errors,
            self.elapsed.as_secs_f64()
        );
    }
}

/// Two passes over `values` (each validated once per pass, `in_flight` at a
/// time over 4 connections, on a two-thread runtime of its own): the first
/// right after a restart, the second with everything cached. The connections
/// are opened and warmed up (with the caller's own token, not one of
/// `values`) before the first pass, so both passes see the same transport.
fn passes(port: u16, caller: &str, values: &Arc<Vec<String>>, in_flight: usize) -> (Pass, Pass) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let caller = caller.to_owned();
    let values = Arc::clone(values);
    rt.block_on(async move {
        let mut channels = Vec::new();
        for _ in 0..4 {
            channels.push(
                Channel::from_shared(format!("http://127.0.0.1:{port}"))
                    .expect("uri")
                    .connect()
                    .await
                    .expect("connect"),
            );
        }
        let warm_up = Arc::new(vec![caller.clone(); 4 * in_flight]);
        let _ = one_pass(&channels, &caller, &warm_up, in_flight).await;
        let first = one_pass(&channels, &caller, &values, in_flight).await;
        let second = one_pass(&channels, &caller, &values, in_flight).await;
        (first, second)
    })
}

async fn one_pass(
    channels: &[Channel],
    caller: &str,
    values: &Arc<Vec<String>>,
    in_flight: usize,
) -> Pass {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..in_flight {
        let mut client = TokenServiceClient::new(channels[w % channels.len()].clone());
        let (next, values, caller) = (Arc::clone(&next), Arc::clone(values), caller.to_owned());
        tasks.push(tokio::spawn(async move {
            let (mut valid, mut errors, mut other) = (0, 0, 0);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(value) = values.get(i) else { break };
                let r = client
                    .validate(authed(
                        &caller,
                        pb::ValidateRequest {
                            client_ip: String::new(),
                            token: value.clone(),
                            required_modules: vec![],
                        },
                    ))
                    .await;
                match r {
                    Ok(r) if r.get_ref().valid => valid += 1,
                    Ok(_) => other += 1,
                    Err(_) => errors += 1,
                }
            }
            (valid, errors, other)
        }));
    }
    let (mut valid, mut errors, mut other) = (0, 0, 0);
    for t in tasks {
        let (v, e, o) = t.await.expect("pass task");
        valid += v;
        errors += e;
        other += o;
    }
    Pass {
        valid,
        errors,
        other,
        elapsed: started.elapsed(),
    }
}

/// Sequential first Validates: latencies in ms.
async fn sequential(server: &Server, caller: &str, values: &[String]) -> Vec<f64> {
    let mut client = server.client().await;
    let mut out = Vec::new();
    for value in values {
        let t = Instant::now();
        let r = client
            .validate(authed(
                caller,
                pb::ValidateRequest {
                    client_ip: String::new(),
                    token: value.clone(),
                    required_modules: vec![],
                },
            ))
            .await
            .expect("validate")
            .into_inner();
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(r.valid, "a seeded token does not validate");
    }
    out.sort_by(f64::total_cmp);
    out
}

fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    crate::load::percentile(sorted, fraction).unwrap_or(0.0)
}

/// A store to seed: the server's own database and key file.
pub struct Target {
    pub url: String,
    pub key_file: PathBuf,
}

impl Target {
    pub fn env(&self, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut env = vec![(
            "TOKEND_VERIFIER_KEY_FILE",
            self.key_file.display().to_string(),
        )];
        env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
        env
    }
}

/// Seeds `n` active tokens, used in the last day (most recent first in the
/// warm start's order), and returns their values. `hash_each`: a real cheap
/// argon2id hash of each secret; else one shared hash (start-up seed).
pub async fn seed(target: &Target, n: usize, hash_each: bool) -> Vec<String> {
    let store = Store::connect(&StoreConfig {
        url: target.url.clone().into(),
        max_connections: 2,
        timeout: Duration::from_secs(300),
    })
    .await
    .expect("connect to the store");
    let keyring =
        Keyring::parse(&std::fs::read_to_string(&target.key_file).expect("key file")).expect("key");
    let hasher = Hasher::start(&HasherConfig {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        workers: 2,
        queue: 1024,
    })
    .expect("hasher");
    let shared = hasher.hash("not any token's secret").await.expect("hash");
    let actor = Actor::Tool {
        name: "tokend-bench".into(),
        owner_id: "bench".into(),
    };
    let now = Utc::now();
    let mut values = Vec::with_capacity(n);
    let mut batch = Vec::new();
    for i in 0..n {
        let value = TokenValue::generate("tk").expect("random");
        let secret_hash = if hash_each {
            hasher.hash(value.secret()).await.expect("hash")
        } else {
            shared.clone()
        };
        let used = now - chrono::Duration::seconds((i % 86_400) as i64);
        batch.push(Token {
            id: value.id(),
            account_id: AccountId::from_stored(format!("acct-{:04}", i % 1000)),
            owner_id: OwnerId::from_stored(format!("user-{i}")),
            created_by: "bench".into(),
            updated_by: "bench".into(),
            name: format!("seeded {i}"),
            description: String::new(),
            modules: vec!["billing:read".into(), "reports:write".into()],
            api_version: "2024-06-01".into(),
            metadata: [("team".to_owned(), "payments".to_owned())].into(),
            state: TokenState::Active,
            state_reason: String::new(),
            secret_hash,
            verifier: Some(keyring.seal(&value)),
            previous_secret: None,
            hint: value.hint(),
            created_at: now - chrono::Duration::days(2),
            updated_at: now - chrono::Duration::days(2),
            last_used_at: Some(used),
            expires_at: None,
            disabled_at: None,
            revoked_at: None,
            allowed_cidrs: Vec::new(),
        });
        values.push(value.expose());
        if batch.len() == 5_000 {
            store
                .import_tokens(&batch, &actor, "tokend-bench seed")
                .await
                .expect("import");
            batch.clear();
        }
    }
    store
        .import_tokens(&batch, &actor, "tokend-bench seed")
        .await
        .expect("import");
    store.close().await;
    values
}

/// A new private key file, as `tokend keygen > FILE && chmod 600 FILE` makes.
pub fn write_key_file(path: &Path) {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("key file");
    writeln!(file, "{}", Keyring::generate_line()).expect("write key");
}

/// A gateway credential, issued through the API (so it is a real token).
async fn gateway(server: &Server, platform: &str) -> String {
    let mut client = server.client().await;
    client
        .issue(authed(
            platform,
            pb::IssueRequest {
                owner_id: "gateway".into(),
                name: "gateway".into(),
                modules: vec!["tokens:validate".into()],
                ..Default::default()
            },
        ))
        .await
        .expect("issue gateway")
        .into_inner()
        .secret
}

fn argon2_of(stats: &str) -> u64 {
    Server::stat(stats, "argon2_verifications")
}

/// A fresh PostgreSQL database next to the one `base` names.
/// The summary lines this phase contributes.
pub struct Figures {
    pub warm_ratio: f64,
    pub cold_ratio: f64,
    pub argon2: u64,
    pub errors: usize,
    pub miss_p50_sqlite: f64,
    pub miss_p50_postgres: Option<f64>,
    pub startup: crate::startup::Startup,
    pub flood: Vec<f64>,
}

pub fn summarise(f: &Figures) {
    println!(
        "{:<56} median {:.3}  ({} errors)  target >= 0.9, 0 errors",
        "restart, warm start: cold pass / warm pass", f.warm_ratio, f.errors
    );
    println!(
        "{:<56} median {:.3}  target >= 0.3",
        "restart, no warm start: cold pass / warm pass", f.cold_ratio
    );
    println!(
        "{:<56} {}  target 0",
        "argon2 verifications in those passes", f.argon2
    );
    println!(
        "{:<56} {:.3} ms  target <= 1 ms",
        "miss latency p50, SQLite", f.miss_p50_sqlite
    );
    match f.miss_p50_postgres {
        Some(p) => println!(
            "{:<56} {p:.3} ms  target <= 2 ms",
            "miss latency p50, PostgreSQL"
        ),
        None => println!(
            "{:<56} not measured (set TOKEND_BENCH_POSTGRES_URL)",
            "miss latency p50, PostgreSQL"
        ),
    }
    crate::startup::summarise(&f.startup);
    summary_line(
        "valid during 10,000/s wrong-secret flood on a cold id",
        &f.flood,
        ">= 0.7",
    );
}

/// Restarts per warm-start setting; each gives one first/second pass ratio.
const RESTART_ROUNDS: usize = 5;

pub async fn run(quick: bool, dir: &Path) -> Figures {
    let n = if quick { 2_000 } else { 20_000 };
    let startup_n = if quick { 100_000 } else { 1_000_000 };
    let seconds = if quick { 2 } else { 4 };
    let flood_rounds = if quick { 2 } else { FLOOD_ROUNDS };

    println!("\n== Restart under load: {n} distinct tokens in use, 128 requests in flight");
    let url = database_url(dir);
    let platform = bootstrap_on(&url, &[]);
    let target = Target {
        url: url.clone(),
        key_file: dir.join("tokend.key"),
    };
    let server = start_server_on(dir, "seed", &url, &target.env(&[])).await;
    let caller = gateway(&server, &platform).await;
    server.stop();
    let started = Instant::now();
    let values = Arc::new(seed(&target, n, true).await);
    println!(
        "seeded {n} tokens through the store in {:.1} s (real verifiers; argon2id at cheap parameters)",
        started.elapsed().as_secs_f64()
    );

    // Each pass takes well under a second, so one pair is at the mercy of
    // this VM's drift: restart several times and take the median.
    let restarts = if quick { 2 } else { RESTART_ROUNDS };
    let mut argon2 = 0;
    let mut errors = 0;
    let mut ratios = Vec::new();
    for warm in ["true", "false"] {
        let mut round_ratios = Vec::new();
        for round in 1..=restarts {
            let server = start_server_on(
                dir,
                &format!("restart-warm-{warm}-{round}"),
                &url,
                &target.env(&[("TOKEND_WARM_START", warm)]),
            )
            .await;
            println!(
                "round {round}: restarted (warm start {warm}): SERVING after {:.2} s",
                server.ready_after.as_secs_f64()
            );
            let port = server.port;
            let (cold, hot) = tokio::task::spawn_blocking({
                let (caller, values) = (caller.clone(), Arc::clone(&values));
                move || passes(port, &caller, &values, 128)
            })
            .await
            .expect("passes");
            cold.show(&format!(
                "round {round}: warm start {warm}: first pass after the restart"
            ));
            hot.show(&format!(
                "round {round}: warm start {warm}: second pass (all cached)"
            ));
            let ratio = cold.rps() / hot.rps();
            println!("round {round}: warm start {warm}: first / second pass throughput {ratio:.3}");
            errors += cold.errors + hot.errors + cold.other + hot.other;
            round_ratios.push(ratio);
            let stats = server.stop();
            let a = argon2_of(&stats);
            println!("round {round}: warm start {warm}: argon2 verifications {a}");
            argon2 += a;
        }
        let m = median(&round_ratios);
        println!(
            "warm start {warm}: first / second pass throughput, median of {restarts} restarts {m:.3} (min {:.3}, max {:.3})",
            round_ratios.iter().copied().fold(f64::INFINITY, f64::min),
            round_ratios
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max),
        );
        ratios.push(m);
    }

    println!("\n== Miss latency: first Validate per token, sequential, no warm start");
    let server = start_server_on(
        dir,
        "miss-sqlite",
        &url,
        &target.env(&[("TOKEND_WARM_START", "false")]),
    )
    .await;
    let sample = if quick { 200 } else { 1000 };
    // The caller's own first use is a miss too: take it out of the sample.
    let _ = sequential(&server, &caller, &values[..1]).await;
    let lat = sequential(&server, &caller, &values[1..=sample]).await;
    let miss_p50_sqlite = percentile(&lat, 0.5);
    println!(
        "SQLite: p50 {miss_p50_sqlite:.3} ms  p99 {:.3} ms  (n={sample}; one store read + one keyed BLAKE3)",
        percentile(&lat, 0.99)
    );
    let hits = sequential(&server, &caller, &values[1..=sample]).await;
    println!(
        "SQLite, the same tokens again (hits): p50 {:.3} ms  p99 {:.3} ms",
        percentile(&hits, 0.5),
        percentile(&hits, 0.99)
    );
    argon2 += argon2_of(&server.stop());

    let miss_p50_postgres = match std::env::var("TOKEND_BENCH_POSTGRES_URL") {
        Ok(base) => {
            let pg_url = crate::pg::database(&base, "restart", true).await;
            let pg = Target {
                url: pg_url.clone(),
                key_file: dir.join("pg.key"),
            };
            write_key_file(&pg.key_file);
            let pg_platform = bootstrap_on(&pg_url, &pg.env(&[]));
            let server = start_server_on(dir, "pg-seed", &pg_url, &pg.env(&[])).await;
            let pg_caller = gateway(&server, &pg_platform).await;
            server.stop();
            let pg_values = seed(&pg, sample + 1, true).await;
            let server = start_server_on(
                dir,
                "miss-pg",
                &pg_url,
                &pg.env(&[("TOKEND_WARM_START", "false")]),
            )
            .await;
            let _ = sequential(&server, &pg_caller, &pg_values[..1]).await;
            let lat = sequential(&server, &pg_caller, &pg_values[1..=sample]).await;
            let p50 = percentile(&lat, 0.5);
            println!(
                "PostgreSQL: p50 {p50:.3} ms  p99 {:.3} ms  (n={sample})",
                percentile(&lat, 0.99)
            );
            argon2 += argon2_of(&server.stop());
            crate::pg::drop_database(&base, &pg_url).await;
            Some(p50)
        }
        Err(_) => {
            println!("PostgreSQL: not measured (set TOKEND_BENCH_POSTGRES_URL)");
            None
        }
    };

    println!(
        "\n== Wrong-secret flood on a cold token id ({LOAD_PROCESSES} distinct wrong values, 2,500 req/s each) during Validate load, no warm start"
    );
    let server = start_server_on(
        dir,
        "cold-flood",
        &url,
        &target.env(&[("TOKEND_WARM_START", "false")]),
    )
    .await;
    let valid: Vec<Load> = (0..LOAD_PROCESSES)
        .map(|i| Load {
            path: "/tokens.v1.TokenService/Validate",
            body: validate_body(&values[i * 7]),
            rps: None,
            streams: STREAMS,
        })
        .collect();
    let mut loads = valid.clone();
    let mut flood = Vec::new();
    for round in 1..=flood_rounds {
        // A new cold id each round: the first wrong value reads its row.
        let cold_id = TokenValue::parse(&values[values.len() - round])
            .expect("parse")
            .id();
        loads.truncate(LOAD_PROCESSES);
        for _ in 0..LOAD_PROCESSES {
            let wrong = TokenValue::generate_for("tk", cold_id)
                .expect("random")
                .expose();
            loads.push(Load {
                path: "/tokens.v1.TokenService/Validate",
                body: validate_body(&wrong),
                rps: Some(2500),
                streams: 8,
            });
        }
        let (undisturbed, out) = disturbed_pair(&server, &caller, &valid, &loads, seconds, dir);
        let during = combine(&out[..LOAD_PROCESSES], dir, "disturbed", 0);
        let attack = combine(&out[LOAD_PROCESSES..], dir, "disturbed", LOAD_PROCESSES);
        show(
            &format!("round {round}: valid tokens, undisturbed"),
            &undisturbed,
        );
        show(
            &format!("round {round}: valid tokens during the flood"),
            &during,
        );
        show(&format!("round {round}: wrong-secret flood"), &attack);
        println!(
            "round {round}: valid throughput during flood / undisturbed: {:.3}",
            during.rps / undisturbed.rps
        );
        flood.push(during.rps / undisturbed.rps);
    }
    let flood_argon2 = argon2_of(&server.stop());
    println!("argon2 verifications during the cold flood: {flood_argon2}");
    argon2 += flood_argon2;
    println!("flood median: {:.3}", median(&flood));

    let startup = crate::startup::run(dir, startup_n).await;

    Figures {
        warm_ratio: ratios[0],
        cold_ratio: ratios[1],
        argon2,
        errors,
        miss_p50_sqlite,
        miss_p50_postgres,
        startup,
        flood,
    }
}
