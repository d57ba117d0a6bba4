//! `tokend-bench backup [TOKENS]`: `tokend backup` of a live SQLite store
//! under load, and what its restore holds.
//!
//! A store of TOKENS seeded tokens (default 300,000; see `seed`) is served by
//! the release `tokend`. h2load drives 5,000 Validates/s (one connection,
//! 32 streams, a cached token) while a writer makes 100 writes/s through the
//! API (10% Issue, 10% Revoke, 40% SetState, 40% Update). In each round a
//! backup starts after a stretch of undisturbed load; h2load's per-request
//! log (start time, latency) then gives Validate's p99 over the requests
//! sent during the backup and over those sent before it, in the same run.
//!
//! Rounds alternate between `tokend backup` as it is and under `nice -n 19`
//! (the README's advice on a busy host), so both are measured in one run.
//!
//! The last round's backup is restored with `tokend restore` and served by a
//! second server: every token valid when the backup began (and not written
//! while it ran) must validate, every token revoked before it began must be
//! rejected as revoked. Tokens written while it ran may be in either state.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokend::{domain::TokenState, pb, pb::token_service_client::TokenServiceClient};
use tonic::transport::Channel;

use crate::{
    load::{Load, WARM_UP_SECONDS, h2load, median, summary_line, validate_body},
    seed::seed,
    server::{authed, database_url, start_server_on, tokend_exe, validate},
};

pub const DEFAULT_TOKENS: usize = 300_000;
const VALIDATE_RPS: u32 = 5000;
const WRITES_PER_SECOND: u64 = 100;
const ROUNDS: usize = 4;
/// Undisturbed load before each backup starts (after h2load's warm-up).
const BEFORE_SECONDS: u64 = 8;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One write the writer made: the token's state after it, and when it ran.
#[derive(Debug, Clone)]
struct Write {
    value: String,
    state: Option<TokenState>,
    started: u64,
    ended: u64,
}

type Client = TokenServiceClient<Channel>;

async fn issue(c: &mut Client, caller: &str, n: u64) -> String {
    c.issue(authed(
        caller,
        pb::IssueRequest {
            account_id: "acct-000".into(),
            owner_id: format!("writer-{}", n % 500),
            name: format!("written {n}"),
            modules: vec!["billing:read".into()],
            ..Default::default()
        },
    ))
    .await
    .expect("Issue")
    .into_inner()
    .secret
}

fn id_of(value: &str) -> String {
    value.split('_').nth(1).unwrap_or_default().to_owned()
}

/// 100 writes a second until `stop`: Issue, Revoke, SetState and Update on
/// a pool of its own tokens, each recorded with its time.
async fn writer(mut c: Client, caller: String, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Write>>>) {
    let mut pool: Vec<(String, bool)> = Vec::new();
    for n in 0..100 {
        let started = now_micros();
        let value = issue(&mut c, &caller, n).await;
        log.lock().unwrap().push(Write {
            value: value.clone(),
            state: Some(TokenState::Active),
            started,
            ended: now_micros(),
        });
        pool.push((value, true));
    }
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / WRITES_PER_SECOND));
    let mut n = 100u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        n += 1;
        let started = now_micros();
        let (value, state) = match n % 10 {
            0 => {
                let value = issue(&mut c, &caller, n).await;
                pool.push((value.clone(), true));
                (value, Some(TokenState::Active))
            }
            1 => {
                let (value, _) = pool.remove(0);
                c.revoke(authed(
                    &caller,
                    pb::RevokeRequest {
                        target: Some(pb::revoke_request::Target::Id(id_of(&value))),
                        reason: "bench".into(),
                    },
                ))
                .await
                .expect("Revoke");
                (value, Some(TokenState::Revoked))
            }
            2..=5 => {
                let i = (n as usize * 7) % pool.len();
                let (value, active) = pool[i].clone();
                let state = if active {
                    pb::State::Disabled
                } else {
                    pb::State::Active
                };
                c.set_state(authed(
                    &caller,
                    pb::SetStateRequest {
                        id: id_of(&value),
                        state: state as i32,
                        reason: "bench".into(),
                    },
                ))
                .await
                .expect("SetState");
                pool[i].1 = !active;
                let now = if active {
                    TokenState::Disabled
                } else {
                    TokenState::Active
                };
                (value, Some(now))
            }
            _ => {
                let i = (n as usize * 13) % pool.len();
                let value = pool[i].0.clone();
                c.update(authed(
                    &caller,
                    pb::UpdateRequest {
                        id: id_of(&value),
                        name: format!("renamed {n}"),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["name".into()],
                        }),
                        ..Default::default()
                    },
                ))
                .await
                .expect("Update");
                (value, None)
            }
        };
        log.lock().unwrap().push(Write {
            value,
            state,
            started,
            ended: now_micros(),
        });
    }
}

/// Runs `tokend backup` (under `nice -n 19` if `niced`) of the store in
/// `dir` into `to`; returns its start and end (microseconds since the
/// epoch) and its stdout.
fn backup(dir: &Path, to: &Path, niced: bool) -> (u64, u64, String) {
    let started = now_micros();
    let mut command = if niced {
        let mut c = Command::new("nice");
        c.args(["-n", "19"]).arg(tokend_exe());
        c
    } else {
        Command::new(tokend_exe())
    };
    let out = command
        .args(["backup", "--to", to.to_str().expect("utf8 path")])
        .env("TOKEND_DATABASE_URL", database_url(dir))
        .env("TOKEND_LOG", "warn")
        .output()
        .expect("run tokend backup");
    let ended = now_micros();
    assert!(
        out.status.success(),
        "tokend backup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        started,
        ended,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// p99 (ms) and count of the logged requests that started in `[from, to)`.
fn p99_between(log: &Path, from: u64, to: u64) -> (f64, usize) {
    let mut latencies: Vec<u64> = fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let start: u64 = f.next()?.trim().parse().ok()?;
            let latency: u64 = f.nth(1)?.trim().parse().ok()?;
            (start >= from && start < to).then_some(latency)
        })
        .collect();
    latencies.sort_unstable();
    let n = latencies.len();
    let p99 = crate::load::percentile(&latencies, 0.99).unwrap_or(0) as f64 / 1000.0;
    (p99, n)
}

/// The state `writes` leave a token in just before `t` (None: not issued).
fn state_before(writes: &[&Write], t: u64) -> Option<TokenState> {
    writes
        .iter()
        .filter(|w| w.ended < t)
        .filter_map(|w| w.state)
        .next_back()
}

pub async fn run(tokens: usize) {
    let dir = std::env::temp_dir().join(format!("tokend-bench-backup-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    println!(
        "== Backup under load: {VALIDATE_RPS} Validate/s + {WRITES_PER_SECOND} writes/s, {tokens} seeded tokens"
    );
    let seeded = seed(
        &database_url(&dir),
        &dir.join("tokend.key"),
        tokens,
        (tokens / 100 / 20).max(1),
    )
    .await;
    let key_env = [(
        "TOKEND_VERIFIER_KEY_FILE",
        seeded.key_file.display().to_string(),
    )];
    let size = fs::metadata(dir.join("bench.db")).map_or(0, |m| m.len());
    println!(
        "store: SQLite file of {:.0} MiB",
        size as f64 / (1024.0 * 1024.0)
    );

    let server = start_server_on(&dir, "server", &database_url(&dir), &key_env).await;
    let caller = seeded.caller.clone();
    let mut client = server.client().await;
    let hot = seeded
        .sample
        .iter()
        .find(|(_, s)| *s == TokenState::Active)
        .map(|(v, _)| v.clone())
        .expect("an active seeded token");
    let first = validate(&mut client, &caller, &hot, &["billing:read"]).await;
    assert!(first.valid, "the hot token does not validate");

    // How long a backup takes with no load, to size each round.
    let (s, e, _) = backup(&dir, &dir.join("unloaded.bak"), false);
    let unloaded = (e - s) as f64 / 1e6;
    println!("backup with no load: {unloaded:.2} s");

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let writes = tokio::spawn(writer(
        client.clone(),
        caller.clone(),
        Arc::clone(&stop),
        Arc::clone(&log),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes_started = Instant::now();
    let writes_before = log.lock().unwrap().len();

    let load = Load {
        path: "/tokens.v1.TokenService/Validate",
        body: validate_body(&hot),
        rps: Some(VALIDATE_RPS),
        streams: 32,
    };
    let mut ratios = Vec::new();
    let mut niced_ratios = Vec::new();
    let mut last = None;
    for round in 1..=ROUNDS {
        let seconds = (BEFORE_SECONDS as f64 + unloaded * 4.0 + 3.0).ceil() as u32;
        let h2_started = now_micros();
        let h2 = {
            let (url, caller, load, dir) =
                (server.url(), caller.clone(), load.clone(), dir.clone());
            tokio::task::spawn_blocking(move || {
                h2load(&url, &caller, &[load], seconds, &dir, "backup")
            })
        };
        tokio::time::sleep(Duration::from_secs(
            u64::from(WARM_UP_SECONDS) + BEFORE_SECONDS,
        ))
        .await;
        let file = dir.join(format!("round-{round}.bak"));
        let niced = round % 2 == 0;
        let (b0, b1, report) = {
            let (dir, file) = (dir.clone(), file.clone());
            tokio::task::spawn_blocking(move || backup(&dir, &file, niced))
                .await
                .expect("backup")
        };
        let outcome = h2.await.expect("h2load").remove(0);
        assert!(
            b1 < h2_started + (u64::from(WARM_UP_SECONDS) + u64::from(seconds)) * 1_000_000,
            "the backup outlasted the load run"
        );
        let log_file = dir.join("h2load-backup-0.tsv");
        let warm = h2_started + u64::from(WARM_UP_SECONDS) * 1_000_000;
        let (before, n_before) = p99_between(&log_file, warm, b0);
        let (during, n_during) = p99_between(&log_file, b0, b1 + 1);
        let ratio = if before > 0.0 {
            during / before
        } else {
            f64::NAN
        };
        println!(
            "round {round}: backup{} {:.2} s under load; Validate {:.0} req/s, {} failed; p99 before {before:.3} ms (n={n_before}), during {during:.3} ms (n={n_during}): ratio {ratio:.2}",
            if niced { " (nice -n 19)" } else { "" },
            (b1 - b0) as f64 / 1e6,
            outcome.rps,
            outcome.failed,
        );
        if round == ROUNDS {
            for line in report.lines().take(2) {
                println!("  {line}");
            }
        }
        if niced {
            niced_ratios.push(ratio);
        } else {
            ratios.push(ratio);
        }
        last = Some((file, b0, b1));
    }
    stop.store(true, Ordering::Relaxed);
    writes.await.expect("writer");
    let log = log.lock().unwrap().clone();
    let made = log.len() - writes_before;
    println!(
        "writes: {made} in {:.1} s during the rounds ({:.0}/s), all succeeded",
        writes_started.elapsed().as_secs_f64(),
        made as f64 / writes_started.elapsed().as_secs_f64()
    );
    println!("server: {}", server.stop());

    // Restore the last round's backup and check what it holds.
    let (file, b0, b1) = last.expect("a round");
    let restored_dir = dir.join("restored");
    fs::create_dir_all(&restored_dir).expect("dir");
    let out = Command::new(tokend_exe())
        .args(["restore", "--from", file.to_str().expect("utf8")])
        .env("TOKEND_DATABASE_URL", database_url(&restored_dir))
        .env("TOKEND_LOG", "warn")
        .output()
        .expect("run tokend restore");
    assert!(
        out.status.success(),
        "tokend restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same key file: it is not in the backup (README, "Day two").
    let restored = start_server_on(
        &restored_dir,
        "restored",
        &database_url(&restored_dir),
        &key_env,
    )
    .await;
    let mut rc = restored.client().await;
    let mut by_token: BTreeMap<&str, Vec<&Write>> = BTreeMap::new();
    for w in &log {
        by_token.entry(w.value.as_str()).or_default().push(w);
    }
    let mut checks: Vec<(String, Option<TokenState>)> = seeded
        .sample
        .iter()
        .map(|(v, s)| (v.clone(), Some(*s)))
        .collect();
    let mut changed_during = 0usize;
    for (value, writes) in &by_token {
        if writes.iter().any(|w| w.started <= b1 && w.ended >= b0) {
            changed_during += 1;
        } else {
            checks.push(((*value).to_owned(), state_before(writes, b0)));
        }
    }
    let mut tally: BTreeMap<&'static str, (usize, usize)> = BTreeMap::new();
    for (value, expected) in &checks {
        let got = validate(&mut rc, &caller, value, &[]).await.reason;
        let (label, want) = match expected {
            Some(TokenState::Active) => ("valid when it began", pb::Reason::Valid),
            Some(TokenState::Disabled) => ("disabled when it began", pb::Reason::Disabled),
            Some(TokenState::Revoked) => ("revoked before it began", pb::Reason::Revoked),
            None => ("issued after it ended", pb::Reason::Unknown),
        };
        let entry = tally.entry(label).or_default();
        entry.0 += 1;
        if got == want as i32 {
            entry.1 += 1;
        }
    }
    println!("restored copy of round {ROUNDS}'s backup, served by a second server:");
    let mut all_right = true;
    for (label, (n, ok)) in &tally {
        println!("  tokens {label}: {ok}/{n} answered as then");
        all_right &= n == ok;
    }
    println!("  tokens written while it ran (either state is consistent): {changed_during}");
    println!("server: {}", restored.stop());
    summary_line(
        "Validate p99 during backup / before it, same run",
        &ratios,
        "<= 2",
    );
    summary_line(
        "the same with the backup under nice -n 19",
        &niced_ratios,
        "<= 2",
    );
    for (label, r) in [
        ("tokend backup", &ratios),
        ("nice -n 19 tokend backup", &niced_ratios),
    ] {
        println!(
            "{label}: {}",
            if median(r) <= 2.0 && r.iter().all(|x| *x <= 2.0) {
                "every round met the target"
            } else {
                "target NOT met in every round"
            }
        );
    }
    let _ = fs::remove_dir_all(&dir);
    assert!(all_right, "the restored copy answered differently");
}
