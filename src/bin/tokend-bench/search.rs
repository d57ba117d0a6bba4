//! Search at a million tokens, on SQLite and (with `--postgres URL`)
//! PostgreSQL: 1,000,000 tokens seeded through the store's bulk import
//! (`Store::import_tokens`, batches of 10,000; one argon2id PHC string,
//! computed once with cheap parameters, stands in for every secret hash: these
//! tokens are searched, never validated), one account of 100,000 and 10,000
//! accounts of 90. Then, through the release server's gRPC API with a
//! platform token, the p50 of 5 calls (after one warm-up call) of each admin
//! query; and write throughput (SetState, Update with a rename, Issue) against
//! the same store with the search-index upkeep and against a copy of it
//! without (the triggers of migrations 000004 and 000009 dropped;
//! PostgreSQL's copy gets back the `lower(name)` pg_trgm index it had
//! before), in interleaved rounds. On SQLite a rename's index upkeep is
//! partly a fold a second later (`store::name_index`), which lands in
//! whichever store's round is running: the fold time the server reports on
//! `/metrics` is then charged to the store with the upkeep, in an all-rounds
//! ratio printed beside the median.
//!
//! Longer than the usual file: the seeding, the query table and the
//! interleaved write rounds are one measurement whose figures are only
//! comparable because they run against the same seeded store in one order;
//! splitting them would spread that order across files.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use chrono::Utc;
use rand::{Rng, SeedableRng, rngs::StdRng};
use sea_orm::{ConnectionTrait, Database};
use tokend::{
    domain::{
        AccountId, OwnerId, Token, TokenId, TokenState,
        token::{Actor, SecretHash},
    },
    pb,
    store::{Store, StoreConfig},
};

use crate::{
    load::{median, summary_line},
    restart::write_key_file,
    server::{Server, authed, bootstrap_on, start_server_on},
};

const BIG_ACCOUNT: &str = "bigcorp";
const BIG_TOKENS: usize = 100_000;
const SMALL_ACCOUNTS: usize = 10_000;
const SMALL_TOKENS: usize = 90;
const BATCH: usize = 10_000;
const CALLS: usize = 5;
const TARGET_MS: f64 = 50.0;
/// Rounds per kind of write: the ratio of two fsync-bound SQLite
/// throughputs on a shared disk needs many to resolve 10%.
const WRITE_ROUNDS: usize = 40;
const WRITES_PER_ROUND: usize = 100;
const ISSUES_PER_ROUND: usize = 8;
const WRITERS: usize = 4;

const SERVICES: [&str; 40] = [
    "billing",
    "grafana",
    "backup",
    "payments",
    "search",
    "ledger",
    "mailer",
    "reports",
    "auth",
    "catalog",
    "orders",
    "invoices",
    "metrics",
    "alerts",
    "storage",
    "gateway",
    "crm",
    "export",
    "import",
    "scheduler",
    "webhooks",
    "analytics",
    "warehouse",
    "shipping",
    "pricing",
    "tax",
    "support",
    "chat",
    "docs",
    "wiki",
    "builds",
    "registry",
    "vault",
    "dns",
    "cdn",
    "queue",
    "cache",
    "events",
    "audit",
    "profile",
];
const PURPOSES: [&str; 8] = [
    "deploy", "read", "export", "backup", "ci", "webhook", "sync", "admin",
];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const MODULES: [&str; 20] = [
    "billing:read",
    "billing:write",
    "grafana:read",
    "storage:*",
    "storage:read",
    "payments:write",
    "payments:read",
    "reports:read",
    "audit:read",
    "audit:write",
    "orders:read",
    "orders:write",
    "search:read",
    "ledger:read",
    "ledger:write",
    "mail:send",
    "metrics:read",
    "alerts:write",
    "users:read",
    "users:write",
];

/// One backend's figures.
struct Figures {
    backend: &'static str,
    queries: Vec<(String, f64, bool)>,
    write_ratios: Vec<(&'static str, Vec<f64>)>,
    /// Per write whose rounds saw folds (SQLite renames): the all-rounds
    /// ratio with every fold's time charged to the store with the upkeep.
    charged: Vec<(&'static str, f64)>,
}

pub async fn run(postgres: Option<String>) {
    println!(
        "tokend-bench search: {} tokens ({BIG_TOKENS} in one account, {SMALL_ACCOUNTS} accounts of {SMALL_TOKENS}), p50 of {CALLS} calls after one warm-up call, through gRPC with a platform token",
        BIG_TOKENS + SMALL_ACCOUNTS * SMALL_TOKENS
    );
    let dir_buf = std::env::temp_dir().join(format!("tokend-bench-search-{}", std::process::id()));
    std::fs::create_dir_all(&dir_buf).expect("temp dir");
    let dir = dir_buf.as_path();
    let mut all = Vec::new();
    let sqlite = format!("sqlite://{}?mode=rwc", dir.join("search.db").display());
    let baseline = format!("sqlite://{}?mode=rwc", dir.join("baseline.db").display());
    // SQLite: the server makes its verifier key file beside the database.
    all.push(backend("SQLite", &sqlite, &baseline, dir, &[]).await);
    if let Some(base) = postgres {
        let (with, without) = (
            crate::pg::database(&base, "with", true).await,
            crate::pg::database(&base, "without", false).await,
        );
        // PostgreSQL: both stores' servers share one key file.
        let key_file = dir.join("pg.key");
        write_key_file(&key_file);
        let env = [("TOKEND_VERIFIER_KEY_FILE", key_file.display().to_string())];
        all.push(backend("PostgreSQL", &with, &without, dir, &env).await);
        for url in [&with, &without] {
            crate::pg::drop_database(&base, url).await;
        }
    }
    let _ = std::fs::remove_dir_all(dir);

    println!(
        "\n== Summary: search p50 at 1,000,000 tokens (target <= {TARGET_MS} ms), write throughput with / without the index upkeep (target >= 0.90)"
    );
    for f in &all {
        for (what, p50, targeted) in &f.queries {
            let verdict = match (targeted, *p50 <= TARGET_MS) {
                (false, _) => "(no target)",
                (true, true) => "met",
                (true, false) => "NOT MET",
            };
            println!(
                "{:<11} {:<66} p50 {:>8.2} ms  {verdict}",
                f.backend, what, p50
            );
        }
        for (what, ratios) in &f.write_ratios {
            summary_line(
                &format!("{} {what} with/without upkeep", f.backend),
                ratios,
                ">= 0.90",
            );
        }
        for (what, ratio) in &f.charged {
            println!(
                "{:<56} all rounds {ratio:.3}  target >= 0.90",
                format!("{} {what}, every fold charged to the upkeep", f.backend)
            );
        }
    }
}

fn base62(mut n: u64) -> String {
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 16];
    for slot in out.iter_mut().rev() {
        *slot = B62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(out.to_vec()).expect("ascii")
}

/// The stand-in hash: argon2id with cheap parameters, computed once.
fn cheap_phc() -> String {
    use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version, password_hash::SaltString};
    let params = Params::new(256, 1, 1, None).expect("params");
    let salt = SaltString::encode_b64(b"tokend-bench-salt").expect("salt");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(b"bench secret, never validated", &salt)
        .expect("hash")
        .to_string()
}

struct Seeded {
    /// (id, hex suffix of the name, state) of every token of the big account.
    big: Vec<(String, String, TokenState)>,
}

/// Seeds the store at `url` with the million tokens.
async fn seed(url: &str) -> Seeded {
    let store = Store::connect(&StoreConfig {
        url: url.into(),
        max_connections: 4,
        timeout: Duration::from_secs(600),
    })
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    let phc = cheap_phc();
    let actor = Actor::Tool {
        name: "tokend-bench".into(),
        owner_id: "bench".into(),
    };
    let mut rng = StdRng::seed_from_u64(20261201);
    let now = Utc::now();
    let total = BIG_TOKENS + SMALL_ACCOUNTS * SMALL_TOKENS;
    let mut big = Vec::with_capacity(BIG_TOKENS);
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..total {
        let (account, owner) = if i % 10 == 0 && big.len() < BIG_TOKENS {
            (
                BIG_ACCOUNT.to_owned(),
                format!("owner{}", rng.random_range(0..100)),
            )
        } else {
            let a = rng.random_range(0..SMALL_ACCOUNTS);
            (
                format!("acct{a:05}"),
                format!("owner{}", rng.random_range(0..3)),
            )
        };
        let hex: String = format!("{:06x}", rng.random_range(0..0x100_0000u32));
        let name = format!(
            "{} {} {} {hex}",
            SERVICES[rng.random_range(0..SERVICES.len())],
            PURPOSES[rng.random_range(0..PURPOSES.len())],
            ENVS[rng.random_range(0..ENVS.len())],
        );
        let modules: Vec<String> = (0..rng.random_range(1..=3))
            .map(|_| MODULES[rng.random_range(0..MODULES.len())].to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let state = match rng.random_range(0..100) {
            0..80 => TokenState::Active,
            80..95 => TokenState::Disabled,
            _ => TokenState::Revoked,
        };
        // One a second over the last ~12 days, newest last.
        let created_at = now - chrono::Duration::seconds((total - i) as i64);
        let id = base62(1_000_000_000 + i as u64);
        if account == BIG_ACCOUNT {
            big.push((id.clone(), hex, state));
        }
        batch.push(Token {
            id: TokenId::parse(&id).expect("id"),
            account_id: AccountId::from_stored(account),
            owner_id: OwnerId::from_stored(owner),
            created_by: "ops".into(),
            updated_by: "ops".into(),
            name,
            description: String::new(),
            modules,
            api_version: String::new(),
            metadata: Default::default(),
            state,
            state_reason: String::new(),
            secret_hash: SecretHash::new(phc.clone()),
            verifier: None,
            previous_secret: None,
            hint: "hint".into(),
            created_at,
            updated_at: created_at,
            last_used_at: None,
            expires_at: None,
            disabled_at: None,
            revoked_at: None,
            allowed_cidrs: Vec::new(),
        });
        if batch.len() == BATCH {
            store
                .import_tokens(&batch, &actor, "tokend-bench search seed")
                .await
                .expect("import");
            batch.clear();
        }
    }
    store
        .import_tokens(&batch, &actor, "tokend-bench search seed")
        .await
        .expect("import");
    println!(
        "seeded {total} tokens ({} in {BIG_ACCOUNT}) through Store::import_tokens in batches of {BATCH} in {:.1} s (secret hash: one argon2id PHC string, m=256 KiB t=1 p=1, computed once)",
        big.len(),
        started.elapsed().as_secs_f64()
    );
    store.close().await;
    if !url.starts_with("sqlite:") {
        // What autovacuum does soon after a bulk load; without statistics the
        // planner guesses a handful of rows per account and picks badly.
        let started = Instant::now();
        let db = Database::connect(url).await.expect("connect");
        for table in ["tokens", "token_modules", "owner_quotas", "token_events"] {
            db.execute_unprepared(&format!("VACUUM ANALYZE {table}"))
                .await
                .expect("vacuum analyze");
        }
        db.close().await.ok();
        println!(
            "VACUUM ANALYZE after the bulk load (as autovacuum would do): {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    Seeded { big }
}

async fn p50(server: &Server, platform: &str, req: pb::SearchRequest) -> (f64, usize, Option<i64>) {
    let mut client = server.client().await;
    let mut times = Vec::with_capacity(CALLS);
    let mut found = (0, None);
    for call in 0..=CALLS {
        let started = Instant::now();
        let page = client
            .search(authed(platform, req.clone()))
            .await
            .expect("Search")
            .into_inner();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if call > 0 {
            times.push(ms);
        }
        found = (page.tokens.len(), page.total_size);
    }
    (median(&times), found.0, found.1)
}

async fn backend(
    name: &'static str,
    url: &str,
    baseline_url: &str,
    dir: &Path,
    env: &[(&str, String)],
) -> Figures {
    println!("\n== {name}");
    let seeded = seed(url).await;
    let platform = bootstrap_on(url, env);
    let server = start_server_on(dir, &format!("search-{name}"), url, env).await;

    let rare = seeded.big[BIG_TOKENS / 2].1[..5].to_owned();
    let rare_platform = seeded.big[BIG_TOKENS / 3].1[1..6].to_owned();
    let big = |r: pb::SearchRequest| pb::SearchRequest {
        account_id: BIG_ACCOUNT.into(),
        ..r
    };
    let now = Utc::now();
    let ts = |t: chrono::DateTime<Utc>| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    };
    let queries: Vec<(String, pb::SearchRequest, bool)> = vec![
        (
            format!("{BIG_ACCOUNT} (100k): name, common word \"deploy\""),
            big(pb::SearchRequest {
                query: "deploy".into(),
                ..Default::default()
            }),
            true,
        ),
        (
            format!("{BIG_ACCOUNT} (100k): name, rare string \"{rare}\""),
            big(pb::SearchRequest {
                query: rare.clone(),
                ..Default::default()
            }),
            true,
        ),
        (
            format!("{BIG_ACCOUNT} (100k): module \"billing:read\""),
            big(pb::SearchRequest {
                module: "billing:read".into(),
                ..Default::default()
            }),
            true,
        ),
        (
            format!("platform-wide (1M): name, rare string \"{rare_platform}\""),
            pb::SearchRequest {
                query: rare_platform.clone(),
                ..Default::default()
            },
            true,
        ),
        (
            "platform-wide (1M): name, common word \"deploy\"".to_owned(),
            pb::SearchRequest {
                query: "deploy".into(),
                ..Default::default()
            },
            true,
        ),
        (
            "platform-wide (1M): name, 2 characters \"ck\" (below trigrams)".to_owned(),
            pb::SearchRequest {
                query: "ck".into(),
                ..Default::default()
            },
            false,
        ),
        (
            format!("{BIG_ACCOUNT} first page: owner7, disabled, created in the last 10 days"),
            big(pb::SearchRequest {
                owner_id: "owner7".into(),
                states: vec![pb::State::Disabled as i32],
                created_after: Some(ts(now - chrono::Duration::days(10))),
                created_before: Some(ts(now)),
                ..Default::default()
            }),
            true,
        ),
        (
            format!("{BIG_ACCOUNT} first page: default states, no filter"),
            big(pb::SearchRequest::default()),
            true,
        ),
        (
            format!("{BIG_ACCOUNT}: name \"deploy\" + include_total"),
            big(pb::SearchRequest {
                query: "deploy".into(),
                include_total: true,
                ..Default::default()
            }),
            false,
        ),
        (
            format!("{BIG_ACCOUNT}: name rare + include_total"),
            big(pb::SearchRequest {
                query: rare.clone(),
                include_total: true,
                ..Default::default()
            }),
            false,
        ),
        (
            format!("{BIG_ACCOUNT}: module \"billing:read\" + include_total"),
            big(pb::SearchRequest {
                module: "billing:read".into(),
                include_total: true,
                ..Default::default()
            }),
            false,
        ),
        (
            format!("{BIG_ACCOUNT}: default states + include_total"),
            big(pb::SearchRequest {
                include_total: true,
                ..Default::default()
            }),
            false,
        ),
    ];
    let mut figures = Figures {
        backend: name,
        queries: Vec::new(),
        write_ratios: Vec::new(),
        charged: Vec::new(),
    };
    for (what, req, targeted) in queries {
        let (ms, n, total) = p50(&server, &platform, req).await;
        let total = total.map_or(String::new(), |t| format!(", total_size {t}"));
        println!("{what:<70} p50 {ms:>8.2} ms  ({n} on the first page{total})");
        figures.queries.push((what, ms, targeted));
    }
    println!("server: {}", server.stop());

    (figures.write_ratios, figures.charged) =
        writes(name, url, baseline_url, &seeded, dir, env).await;
    figures
}

/// The same store without the search-index upkeep: a copy with migration
/// 000004's triggers (as 000009 rewrote them) dropped (and, on PostgreSQL, the
/// `lower(name)` trigram index of the release before it put back).
async fn baseline_copy(url: &str, baseline_url: &str) {
    if url.starts_with("sqlite:") {
        let path = |u: &str| {
            u.trim_start_matches("sqlite://")
                .trim_end_matches("?mode=rwc")
                .to_owned()
        };
        std::fs::copy(path(url), path(baseline_url)).expect("copy the SQLite file");
        let wal = format!("{}-wal", path(url));
        if Path::new(&wal).exists() {
            std::fs::copy(&wal, format!("{}-wal", path(baseline_url))).expect("copy the WAL");
        }
        let db = Database::connect(baseline_url).await.expect("baseline");
        for trigger in [
            "tokens_name_fts_insert",
            "tokens_name_fts_delete",
            "tokens_name_fts_update",
            "tokens_modules_insert",
            "tokens_modules_delete",
            "tokens_modules_update",
        ] {
            db.execute_unprepared(&format!("DROP TRIGGER {trigger}"))
                .await
                .expect("drop trigger");
        }
        db.close().await.ok();
    } else {
        let (base, with) = url.rsplit_once('/').expect("database");
        let (_, without) = baseline_url.rsplit_once('/').expect("database");
        let admin = Database::connect(format!("{base}/postgres"))
            .await
            .expect("admin");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {without} TEMPLATE {with}"))
            .await
            .expect("copy the database");
        admin.close().await.ok();
        let db = Database::connect(baseline_url).await.expect("baseline");
        db.execute_unprepared(
            "DROP TRIGGER tokens_modules_write ON tokens; \
             DROP TRIGGER tokens_modules_update ON tokens; \
             DROP INDEX idx_tokens_name_fold_trgm; \
             CREATE INDEX idx_tokens_name_trgm ON tokens USING gin (lower(name) gin_trgm_ops)",
        )
        .await
        .expect("drop the upkeep");
        // VACUUM cannot share a statement string (an implicit transaction).
        db.execute_unprepared("VACUUM ANALYZE tokens")
            .await
            .expect("vacuum");
        db.close().await.ok();
    }
}

/// The name index's folds (SQLite) a server has done, from its `/metrics`.
#[derive(Debug, Default)]
struct Folds {
    tokens: u64,
    count: u64,
    seconds: f64,
}

impl Folds {
    fn scrape(server: &Server) -> Self {
        let page = server.scrape();
        let value = |series: &str| -> f64 {
            page.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        Folds {
            tokens: value("tokend_name_index_folded_total") as u64,
            count: value("tokend_name_index_fold_duration_seconds_count") as u64,
            seconds: value("tokend_name_index_fold_duration_seconds_sum"),
        }
    }

    fn since(&self, before: &Folds) -> Folds {
        Folds {
            tokens: self.tokens.saturating_sub(before.tokens),
            count: self.count.saturating_sub(before.count),
            seconds: self.seconds - before.seconds,
        }
    }
}

/// The three writes measured.
#[derive(Clone, Copy)]
enum Write {
    SetState,
    Update,
    Issue,
}

impl Write {
    const ALL: [Write; 3] = [Write::SetState, Write::Update, Write::Issue];

    fn label(self) -> &'static str {
        match self {
            Write::SetState => "SetState",
            Write::Update => "Update (rename)",
            Write::Issue => "Issue",
        }
    }

    /// Calls per store in one round.
    fn per_round(self) -> usize {
        match self {
            Write::Issue => ISSUES_PER_ROUND,
            _ => WRITES_PER_ROUND,
        }
    }
}

/// One round of `kind` on `server` by WRITERS concurrent clients, on the
/// given live tokens: SetState disables the active and enables the
/// disabled, Update renames, Issue creates. Returns the seconds it took.
async fn write_round(
    server: &Server,
    platform: &str,
    kind: Write,
    ids: &[(String, TokenState)],
    round: usize,
) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = server.client().await;
        let platform = platform.to_owned();
        let mine: Vec<(String, TokenState)> =
            ids.iter().skip(w).step_by(WRITERS).cloned().collect();
        tasks.push(tokio::spawn(async move {
            for (n, (id, seeded_state)) in mine.into_iter().enumerate() {
                match kind {
                    Write::SetState => {
                        let state = if seeded_state == TokenState::Active {
                            pb::State::Disabled
                        } else {
                            pb::State::Active
                        };
                        client
                            .set_state(authed(
                                &platform,
                                pb::SetStateRequest {
                                    id,
                                    state: state as i32,
                                    reason: String::new(),
                                },
                            ))
                            .await
                            .expect("SetState");
                    }
                    Write::Update => {
                        client
                            .update(authed(
                                &platform,
                                pb::UpdateRequest {
                                    id,
                                    name: format!("renamed {round} {w} {n} deploy"),
                                    update_mask: Some(prost_types::FieldMask {
                                        paths: vec!["name".into()],
                                    }),
                                    ..Default::default()
                                },
                            ))
                            .await
                            .expect("Update");
                    }
                    Write::Issue => {
                        client
                            .issue(authed(
                                &platform,
                                pb::IssueRequest {
                                    account_id: BIG_ACCOUNT.into(),
                                    owner_id: format!("writer{w}"),
                                    name: format!("issued {round} {w} {n}"),
                                    modules: vec!["billing:read".into(), "audit:write".into()],
                                    ..Default::default()
                                },
                            ))
                            .await
                            .expect("Issue");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    started.elapsed().as_secs_f64()
}

async fn writes(
    name: &'static str,
    url: &str,
    baseline_url: &str,
    seeded: &Seeded,
    dir: &Path,
    env: &[(&str, String)],
) -> (Vec<(&'static str, Vec<f64>)>, Vec<(&'static str, f64)>) {
    println!(
        "-- writes: {WRITE_ROUNDS} rounds per write, each round the same calls on both stores back to back (order ABBA), {WRITERS} concurrent clients; {WRITES_PER_ROUND} SetState / {WRITES_PER_ROUND} Update (rename) / {ISSUES_PER_ROUND} Issue (default argon2id cost) per store per round, each on tokens not written before"
    );
    let started = Instant::now();
    baseline_copy(url, baseline_url).await;
    println!(
        "copied the store without the upkeep in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let platform = bootstrap_on(url, env);
    let platform_base = bootstrap_on(baseline_url, env);
    let with = start_server_on(dir, &format!("writes-with-{name}"), url, env).await;
    let without = start_server_on(dir, &format!("writes-without-{name}"), baseline_url, env).await;
    // Live tokens of the big account, each written once per store.
    let mut live = seeded
        .big
        .iter()
        .filter(|(_, _, state)| *state != TokenState::Revoked)
        .map(|(id, _, state)| (id.clone(), *state));
    let (mut out, mut charged) = (Vec::new(), Vec::new());
    for kind in Write::ALL {
        let folds_before = Folds::scrape(&with);
        let (mut with_s, mut without_s, mut ratios) = (0.0, 0.0, Vec::new());
        for round in 0..WRITE_ROUNDS {
            let ids: Vec<(String, TokenState)> = live.by_ref().take(kind.per_round()).collect();
            // ABBA: the store written first goes with, without, without,
            // with, ..., so that a drift in the disk's speed falls on both.
            let (a, b) = if matches!(round % 4, 0 | 3) {
                let a = write_round(&with, &platform, kind, &ids, round).await;
                (
                    a,
                    write_round(&without, &platform_base, kind, &ids, round).await,
                )
            } else {
                let b = write_round(&without, &platform_base, kind, &ids, round).await;
                (write_round(&with, &platform, kind, &ids, round).await, b)
            };
            with_s += a;
            without_s += b;
            // Throughput with / without = time without / time with.
            ratios.push(b / a);
        }
        let calls = (kind.per_round() * WRITE_ROUNDS) as f64;
        println!(
            "{:<16} with upkeep {:>8.1} calls/s, without {:>8.1} calls/s (all rounds: {} calls each), ratio {:.3}; per round: {}",
            kind.label(),
            calls / with_s,
            calls / without_s,
            calls,
            without_s / with_s,
            ratios
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        // SQLite folds the renames' pending list a second later, whichever
        // store's round is running then: wait for the last fold, so none
        // spills into the next kind's rounds, and charge every fold's time
        // to the store with the upkeep.
        tokio::time::sleep(tokend::store::FOLD_DELAY + Duration::from_secs(1)).await;
        let folds = Folds::scrape(&with).since(&folds_before);
        if folds.tokens > 0 {
            println!(
                "{:<16} the name index folded {} renamed tokens in {} folds taking {:.3} s in all (mean {:.1} ms); all rounds with that time charged to the store with the upkeep: ratio {:.3}",
                kind.label(),
                folds.tokens,
                folds.count,
                folds.seconds,
                folds.seconds * 1000.0 / folds.count.max(1) as f64,
                without_s / (with_s + folds.seconds)
            );
            charged.push((kind.label(), without_s / (with_s + folds.seconds)));
        }
        out.push((kind.label(), ratios));
    }
    println!("server (with): {}", with.stop());
    println!("server (without): {}", without.stop());
    (out, charged)
}
