//! Day two: backup and restore, moving a store between SQLite and PostgreSQL,
//! audit retention and export, plain-text logs off a terminal.
//!
//! The commands run as an operator runs them: the real `tokend` binary in a
//! child process, against the files and databases of servers started by the
//! harness. PostgreSQL parts need `TOKEND_TEST_POSTGRES_URL`: without it they
//! fail under `CI` and otherwise say `NOT RUN` on the terminal.

use std::{
    collections::BTreeMap,
    ops::ControlFlow,
    path::{Path, PathBuf},
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prost_types::FieldMask;
use tokend::{
    config::Config,
    ops::move_store::move_store,
    pb::{self},
    store::copy::CopyOptions,
};

use crate::helpers::{self, Api, TestApp, id_of};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Runs the `tokend` binary with `args` (off the async runtime, so the
/// servers of this test keep serving meanwhile).
async fn tokend(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(&args)
            .env_remove("TOKEND_DATABASE_URL")
            .env("TOKEND_LOG", "warn")
            .envs(env)
            .output()
            .expect("run tokend")
    })
    .await
    .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn succeeded(out: &Output) -> String {
    assert!(out.status.success(), "tokend failed: {}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed_with(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "tokend should have failed: {}",
        text(out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(needle),
        "expected {needle:?} in: {}",
        text(out)
    );
}

/// Every server of these tests, SQLite or PostgreSQL, uses one verifier key
/// file: a store and its copies (backups, moves) are served with the same
/// key, as the README tells operators, so nothing needs argon2 after a copy.
fn shared_key(c: &mut Config) {
    c.verifier_key_file = Some(helpers::PG_KEY_FILE.1.clone());
}

/// A server on the SQLite file `path` (created if missing).
async fn app_on_file(path: &Path, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let url = sqlite_url(path);
    helpers::spawn_app_with(move |c| {
        c.database_url = url.into();
        shared_key(c);
        adjust(c);
    })
    .await
}

/// A server on an existing store (`url`), as a second process would start it.
async fn app_on(url: &str) -> TestApp {
    let mut config = helpers::test_config(url.to_owned());
    config.db_max_connections = 4;
    shared_key(&mut config);
    helpers::start(config, None).await
}

async fn issue(c: &Api, caller: &str, owner: &str, name: &str) -> pb::IssueResponse {
    c.issue(
        caller,
        pb::IssueRequest {
            owner_id: owner.into(),
            name: name.into(),
            modules: vec!["billing:read".into()],
            api_version: "2026-01-01".into(),
            metadata: [("team".to_owned(), "core".to_owned())].into(),
            ..Default::default()
        },
    )
    .await
    .expect("Issue")
}

async fn reason(c: &Api, caller: &str, value: &str) -> pb::Reason {
    let r = c.check(caller, value, &[]).await.expect("Validate");
    pb::Reason::try_from(r.reason).unwrap()
}

/// Every token value of a store with the Validate verdict each gets.
type Verdicts = BTreeMap<String, pb::Reason>;

async fn verdicts(c: &Api, caller: &str, values: &[String]) -> Verdicts {
    let mut out = BTreeMap::new();
    for v in values {
        out.insert(v.clone(), reason(c, caller, v).await);
    }
    out
}

/// A store with every kind of token in it: active ones with modules,
/// metadata and expiry, a disabled one, revoked ones, a rotated one whose
/// previous value is in its grace period, an updated one, a duplicate, and
/// `plain` more. Returns every value ever handed out.
async fn populate(app: &TestApp, plain: usize) -> Vec<String> {
    let p = app.platform.clone();
    let c = app.api.clone();
    let mut values = vec![p.clone()];
    for i in 0..plain {
        let r = issue(&c, &p, &format!("user{}", i % 7), &format!("plain {i}")).await;
        values.push(r.secret);
    }
    let expiring = c
        .issue(
            &p,
            pb::IssueRequest {
                owner_id: "alice".into(),
                name: "expiring \\ ü".into(),
                // Text COPY's escape character and its NULL marker.
                description: "not null: \\N, a back\\slash".into(),
                expires_at: Some(helpers::ts(chrono::Utc::now() + chrono::Duration::days(30))),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    values.push(expiring.secret);
    let disabled = issue(&c, &p, "bob", "disabled").await;
    c.change_state(
        &p,
        &id_of(&disabled.secret),
        pb::State::Disabled,
        "day two test",
    )
    .await
    .expect("SetState");
    values.push(disabled.secret);
    for name in ["revoked 1", "revoked 2"] {
        let r = issue(&c, &p, "carol", name).await;
        c.revoke_id(&p, &id_of(&r.secret), "day two test")
            .await
            .expect("Revoke");
        values.push(r.secret);
    }
    let rotated = issue(&c, &p, "dave", "rotated").await;
    let fresh = c
        .rotate(
            &p,
            pb::RotateRequest {
                id: id_of(&rotated.secret),
                grace_period: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            },
        )
        .await
        .unwrap();
    values.push(rotated.secret);
    values.push(fresh.secret);
    let updated = issue(&c, &p, "erin", "to update").await;
    c.update(
        &p,
        pb::UpdateRequest {
            id: id_of(&updated.secret),
            name: "updated".into(),
            modules: vec!["billing:read".into(), "reports:write".into()],
            update_mask: Some(FieldMask {
                paths: vec!["name".into(), "modules".into()],
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    values.push(updated.secret.clone());
    let duplicate = c
        .duplicate(
            &p,
            pb::DuplicateRequest {
                allowed_cidrs: Vec::new(),
                id: id_of(&updated.secret),
                name: String::new(),
            },
        )
        .await
        .unwrap();
    values.push(duplicate.secret);
    values
}

/// What account policies and the sweeper leave in a store, for the moves to
/// carry: account `acme`'s own policy, an IP-bound token, and (the app runs
/// the sweeper: `crate::sweeper::sweeping`) the notice rows and sweep state
/// of a token two days from its expiry. Waits until the sweeper has settled
/// them and added no event for a second. Returns the values handed out.
async fn policies_and_notices(app: &TestApp) -> Vec<String> {
    let p = app.platform.clone();
    let c = app.api.clone();
    c.raw()
        .update_account_policy(helpers::authed(
            &p,
            pb::UpdateAccountPolicyRequest {
                policy: Some(pb::AccountPolicy {
                    account_id: "acme".into(),
                    max_tokens_per_owner: 40,
                    ..Default::default()
                }),
                update_mask: Some(FieldMask {
                    paths: vec!["max_tokens_per_owner".into()],
                }),
            },
        ))
        .await
        .expect("UpdateAccountPolicy");
    let bound = c
        .issue(
            &p,
            pb::IssueRequest {
                owner_id: "frank".into(),
                name: "bound".into(),
                allowed_cidrs: vec!["203.0.113.0/24".into()],
                ..Default::default()
            },
        )
        .await
        .expect("Issue bound");
    let soon = c
        .issue(
            &p,
            pb::IssueRequest {
                owner_id: "grace".into(),
                name: "expires in two days".into(),
                expires_at: Some(helpers::ts(chrono::Utc::now() + chrono::Duration::days(2))),
                ..Default::default()
            },
        )
        .await
        .expect("Issue expiring");
    let soon_id = id_of(&soon.secret);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut last = usize::MAX;
    loop {
        let events = all_events(&c, &p).await;
        let noticed = events
            .iter()
            .any(|e| e.token_id == soon_id && e.kind == pb::EventKind::ExpiringSoon as i32);
        if noticed && events.len() == last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper recorded no expiring-soon notice in 30 s"
        );
        last = events.len();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    vec![bound.secret, soon.secret]
}

/// The row count a `tokend move` report gives for `table` on the target.
fn moved_rows(report: &str, table: &str) -> u64 {
    report
        .lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(table)).then(|| cols.nth(1)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no row for {table} in the report:\n{report}"))
}

/// The moved store serves account `acme`'s own policy.
async fn assert_policy_moved(target: &TestApp, caller: &str) {
    let policy = target
        .api
        .raw()
        .get_account_policy(helpers::authed(
            caller,
            pb::GetAccountPolicyRequest {
                account_id: "acme".into(),
            },
        ))
        .await
        .expect("GetAccountPolicy")
        .into_inner()
        .policy
        .unwrap();
    assert!(policy.custom, "{policy:?}");
    assert_eq!(policy.max_tokens_per_owner, 40);
}

/// Every event the API lists, oldest first.
async fn all_events(c: &Api, caller: &str) -> Vec<pb::Event> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .list_events(
                caller,
                pb::ListEventsRequest {
                    page_size: 500,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            )
            .await
            .expect("ListEvents");
        out.extend(r.events);
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    out.reverse();
    out
}

fn reasons_of(v: &Verdicts) -> BTreeMap<pb::Reason, usize> {
    let mut out = BTreeMap::new();
    for r in v.values() {
        *out.entry(*r).or_default() += 1;
    }
    out
}

/// Checks that `target` validates `values` exactly as `expected` says, that
/// its audit trail is `events`, and that it takes new writes (its id
/// sequences continue after the copied ids).
async fn assert_same_store(
    target: &TestApp,
    caller: &str,
    expected: &Verdicts,
    events: &[pb::Event],
) {
    let c = target.api.clone();
    let values: Vec<String> = expected.keys().cloned().collect();
    let argon2_before = target.manager.validator().hasher().verifications();
    let got = verdicts(&c, caller, &values).await;
    assert_eq!(&got, expected, "verdicts differ after the move");
    // The moved verifiers, under the same key: no argon2 on the target.
    assert_eq!(
        target.manager.validator().hasher().verifications() - argon2_before,
        0,
        "argon2 ran for moved tokens"
    );
    let moved_events = all_events(&c, caller).await;
    let max_id = events.iter().map(|e| e.id).max().unwrap_or(0);
    // The target's own bootstrap (harness) comes after the copied trail.
    let copied: Vec<&pb::Event> = moved_events.iter().filter(|e| e.id <= max_id).collect();
    assert_eq!(copied.len(), events.len());
    for (a, b) in copied.iter().zip(events) {
        assert_eq!(*a, b);
    }
    let fresh = issue(&c, caller, "newcomer", "after the move").await;
    assert_eq!(reason(&c, caller, &fresh.secret).await, pb::Reason::Valid);
    let newest = all_events(&c, caller).await;
    assert!(newest.last().unwrap().id > max_id);
}

// ---------------------------------------------------------------------------
// Backup and restore (SQLite)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn backup_while_writing_then_restore_validates_what_was_valid_when_it_began() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    let app = app_on_file(&live, |_| {}).await;
    let p = app.platform.clone();
    let values = populate(&app, 40).await;
    let c = app.api.clone();
    let before = verdicts(&c, &p, &values).await;

    // Writes keep coming while the backup runs: new tokens, and churn on
    // tokens of their own (whose state at the snapshot is not predictable).
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, endpoint, p) = (Arc::clone(&stop), app.endpoint.clone(), p.clone());
        tokio::spawn(async move {
            let c = Api::connect(&endpoint).await; // a connection of its own
            let mut writes = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let r = issue(&c, &p, &format!("writer{}", writes % 50), "churn").await;
                c.change_state(&p, &id_of(&r.secret), pb::State::Disabled, "day two test")
                    .await
                    .expect("SetState");
                c.revoke_id(&p, &id_of(&r.secret), "day two test")
                    .await
                    .expect("Revoke");
                writes += 3;
            }
            writes
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let backup = dir.path().join("backup.db");
    let out = tokend(
        &["backup", "--to", backup.to_str().unwrap()],
        &[("TOKEND_DATABASE_URL", &sqlite_url(&live))],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    let report = succeeded(&out);
    assert!(report.contains("integrity_check ok"), "{report}");
    assert!(
        report.contains("NOT included: the verifier key file"),
        "{report}"
    );
    assert!(writes > 0);
    println!("{writes} writes while the backup ran");

    let restored = dir.path().join("restored.db");
    let out = tokend(
        &["restore", "--from", backup.to_str().unwrap()],
        &[("TOKEND_DATABASE_URL", &sqlite_url(&restored))],
    )
    .await;
    succeeded(&out);
    let copy = app_on(&sqlite_url(&restored)).await;
    let rc = copy.api.clone();
    let argon2_before = copy.manager.validator().hasher().verifications();
    assert_eq!(verdicts(&rc, &p, &values).await, before);
    assert_eq!(
        copy.manager.validator().hasher().verifications() - argon2_before,
        0,
        "argon2 ran on the restored copy"
    );
    assert!(reasons_of(&before)[&pb::Reason::Revoked] >= 2);
    // The search indexes (trigger-maintained, keyed by rowid on SQLite) came
    // along intact: a name search finds the same tokens in the copy.
    let search = |c: &Api| {
        let c = c.clone();
        let p = p.clone();
        async move {
            let mut ids: Vec<String> = c
                .search(
                    &p,
                    pb::SearchRequest {
                        query: "plain 1".into(),
                        page_size: 500,
                        ..Default::default()
                    },
                )
                .await
                .expect("Search")
                .tokens
                .into_iter()
                .map(|t| t.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let found = search(&rc).await;
    assert!(found.len() >= 11, "{found:?}");
    assert_eq!(found, search(&c).await);
    copy.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn restore_refuses_a_live_store_a_store_with_data_and_files_that_are_no_store() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live.db");
    let app = app_on_file(&live, |_| {}).await;
    let env = [("TOKEND_DATABASE_URL", sqlite_url(&live))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let backup = dir.path().join("b.db");
    succeeded(&tokend(&["backup", "--to", backup.to_str().unwrap()], &env).await);
    // The backup name is taken now.
    failed_with(
        &tokend(&["backup", "--to", backup.to_str().unwrap()], &env).await,
        "already exists",
    );
    // A server has the store open: refused even with --force.
    failed_with(
        &tokend(
            &["restore", "--from", backup.to_str().unwrap(), "--force"],
            &env,
        )
        .await,
        "open in another process",
    );
    app.stop().await;
    // Stopped, but it holds tokens: refused without --force.
    failed_with(
        &tokend(&["restore", "--from", backup.to_str().unwrap()], &env).await,
        "pass --force",
    );
    succeeded(
        &tokend(
            &["restore", "--from", backup.to_str().unwrap(), "--force"],
            &env,
        )
        .await,
    );

    // Not a database at all.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    failed_with(
        &tokend(
            &["restore", "--from", junk.to_str().unwrap(), "--force"],
            &env,
        )
        .await,
        "not a readable SQLite database",
    );
    // A SQLite database, but not a tokend store.
    let other = dir.path().join("other.db");
    {
        use sea_orm::{ConnectionTrait, Database};
        let db = Database::connect(sqlite_url(&other)).await.unwrap();
        db.execute_unprepared("CREATE TABLE notes (body TEXT)")
            .await
            .unwrap();
        db.close().await.unwrap();
    }
    failed_with(
        &tokend(
            &["restore", "--from", other.to_str().unwrap(), "--force"],
            &env,
        )
        .await,
        "not a tokend store",
    );
    // A missing store is not created by a backup.
    let missing = dir.path().join("missing.db");
    failed_with(
        &tokend(
            &["backup", "--to", dir.path().join("x.db").to_str().unwrap()],
            &[("TOKEND_DATABASE_URL", &sqlite_url(&missing))],
        )
        .await,
        "no SQLite store",
    );
    assert!(!missing.exists());
    // PostgreSQL: pointed at its own tools.
    failed_with(
        &tokend(
            &["backup", "--to", dir.path().join("pg.db").to_str().unwrap()],
            &[("TOKEND_DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")],
        )
        .await,
        "pg_dump",
    );
}

// ---------------------------------------------------------------------------
// Moving stores
// ---------------------------------------------------------------------------

#[tokio::test]
async fn move_sqlite_to_postgres_keeps_every_token_and_event() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(pg) =
        helpers::fresh_pg_database("move_sqlite_to_postgres_keeps_every_token_and_event").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("source.db");
    let app = app_on_file(&file, crate::sweeper::sweeping).await;
    let p = app.platform.clone();
    let mut values = populate(&app, 25).await;
    values.extend(policies_and_notices(&app).await);
    let c = app.api.clone();
    let expected = verdicts(&c, &p, &values).await;
    let events = all_events(&c, &p).await;
    app.stop().await;

    let out = tokend(
        &["move", "--from", &sqlite_url(&file), "--batch-rows", "7"],
        &[("TOKEND_MOVE_TO", &pg)],
    )
    .await;
    let report = succeeded(&out);
    println!("{report}");
    assert!(
        report.contains("tokend move: SQLite -> PostgreSQL"),
        "{report}"
    );
    assert!(report.contains("verified: every table's row count and checksum match"));
    assert!(report.contains("sequence of token_events.id moved past the copied ids"));
    assert!(!report.contains(&pg), "the URL must not be printed");
    for table in ["account_policies", "token_notices", "sweep_state"] {
        assert!(moved_rows(&report, table) > 0, "{table}: {report}");
    }

    let target = app_on(&pg).await;
    assert_same_store(&target, &p, &expected, &events).await;
    assert_policy_moved(&target, &p).await;
    assert!(reasons_of(&expected)[&pb::Reason::Revoked] >= 2);
    assert!(reasons_of(&expected)[&pb::Reason::IpNotAllowed] >= 1);
    target.stop().await;
    crate::postgres::drop_database(&pg).await;
}

#[tokio::test]
async fn move_postgres_to_sqlite_keeps_every_token_and_event() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(pg) =
        helpers::fresh_pg_database("move_postgres_to_sqlite_keeps_every_token_and_event").await
    else {
        return;
    };
    let app = {
        let mut config = helpers::test_config(pg.clone());
        config.db_max_connections = 4;
        shared_key(&mut config);
        crate::sweeper::sweeping(&mut config);
        helpers::start(config, None).await
    };
    let p = app.platform.clone();
    let mut values = populate(&app, 25).await;
    values.extend(policies_and_notices(&app).await);
    let c = app.api.clone();
    let expected = verdicts(&c, &p, &values).await;
    let events = all_events(&c, &p).await;

    // The source keeps serving: the move reads one snapshot of it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("moved.db");
    let out = tokend(
        &["move", "--to", &sqlite_url(&file)],
        &[("TOKEND_MOVE_FROM", &pg)],
    )
    .await;
    let report = succeeded(&out);
    assert!(
        report.contains("tokend move: PostgreSQL -> SQLite"),
        "{report}"
    );
    assert!(report.contains("verified"));
    for table in ["account_policies", "token_notices", "sweep_state"] {
        assert!(moved_rows(&report, table) > 0, "{table}: {report}");
    }
    app.stop().await;

    let target = app_on(&sqlite_url(&file)).await;
    assert_same_store(&target, &p, &expected, &events).await;
    assert_policy_moved(&target, &p).await;
    target.stop().await;
    crate::postgres::drop_database(&pg).await;
}

/// PostgreSQL to PostgreSQL, the way an operator's move really stops: the
/// `tokend move` process is SIGKILLed in the middle of the tokens table
/// (between or inside a batch's transaction), then the same command is run
/// again. It resumes after the last committed batch and verifies; the target
/// then serves every token, policy and event of the source.
#[tokio::test]
async fn move_postgres_to_postgres_killed_mid_copy_resumes() {
    use sea_orm::sqlx::{Connection, PgConnection, Row};
    let _pg = helpers::PG_LOCK.read().await;
    let Some(from) = helpers::fresh_pg_database("move_pg_to_pg_killed_source").await else {
        return;
    };
    let Some(to) = helpers::fresh_pg_database("move_pg_to_pg_killed_target").await else {
        return;
    };
    let app = {
        let mut config = helpers::test_config(from.clone());
        config.db_max_connections = 4;
        shared_key(&mut config);
        crate::sweeper::sweeping(&mut config);
        helpers::start(config, None).await
    };
    let p = app.platform.clone();
    let mut values = populate(&app, 120).await;
    values.extend(policies_and_notices(&app).await);
    let c = app.api.clone();
    let expected = verdicts(&c, &p, &values).await;
    let events = all_events(&c, &p).await;
    app.stop().await;

    // One row per batch: the tokens table alone takes over a hundred commits.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["move", "--batch-rows", "1"])
        .env_remove("TOKEND_DATABASE_URL")
        .env("TOKEND_LOG", "warn")
        .env("TOKEND_MOVE_FROM", &from)
        .env("TOKEND_MOVE_TO", &to)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn tokend move");
    let mut conn = PgConnection::connect(&to).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let copied_before_kill = loop {
        let rows: Option<i64> = sea_orm::sqlx::query(
            "SELECT rows FROM tokend_move_progress WHERE table_name = 'tokens'",
        )
        .fetch_optional(&mut conn)
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0));
        if let Some(n) = rows.filter(|n| *n >= 40) {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the move never reached 40 tokens"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the move ended before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");
    let total_tokens: i64 = sea_orm::sqlx::query("SELECT COUNT(*) FROM tokens")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert!(
        total_tokens < values.len() as i64,
        "killed after {copied_before_kill} rows, yet all {total_tokens} tokens are there"
    );
    conn.close().await.unwrap();

    let out = tokend(
        &["move", "--batch-rows", "50"],
        &[("TOKEND_MOVE_FROM", &from), ("TOKEND_MOVE_TO", &to)],
    )
    .await;
    let report = succeeded(&out);
    println!("{report}");
    assert!(
        report.contains("tokend move: PostgreSQL -> PostgreSQL (resumed an interrupted move)"),
        "{report}"
    );
    assert!(report.contains("rows from the earlier run"), "{report}");
    assert!(report.contains("verified: every table's row count and checksum match"));
    for table in ["account_policies", "token_notices", "sweep_state"] {
        assert!(moved_rows(&report, table) > 0, "{table}: {report}");
    }

    let target = app_on(&to).await;
    assert_same_store(&target, &p, &expected, &events).await;
    assert_policy_moved(&target, &p).await;
    target.stop().await;
    crate::postgres::drop_database(&from).await;
    crate::postgres::drop_database(&to).await;
}

/// A target that already holds tables of something else is refused before
/// anything is written to it (no tokend table is created there).
#[tokio::test]
async fn a_move_into_a_database_of_something_else_leaves_it_untouched() {
    use sea_orm::sqlx::{Connection, SqliteConnection};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("source.db");
    let app = app_on_file(&file, |_| {}).await;
    populate(&app, 3).await;
    app.stop().await;

    let other = dir.path().join("other.db");
    let other_url = sqlite_url(&other);
    {
        let mut conn = SqliteConnection::connect(&other_url).await.unwrap();
        sea_orm::sqlx::query("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total INTEGER)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
    let out = tokend(
        &["move", "--from", &sqlite_url(&file), "--to", &other_url],
        &[],
    )
    .await;
    failed_with(&out, "tables `tokend move` does not know: invoices");
    let mut conn = SqliteConnection::connect(&other_url).await.unwrap();
    let tables: Vec<String> = sea_orm::sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(tables, vec!["invoices".to_owned()]);
}

/// A move stopped after a few batches resumes where it stopped when run
/// again, and verifies; a target that does not match the source's copied
/// rows, or holds rows of its own, is refused. On PostgreSQL when it is
/// available (SQLite to PostgreSQL), else SQLite to SQLite.
#[tokio::test]
async fn an_interrupted_move_resumes_and_a_non_empty_target_is_refused() {
    let _pg = helpers::PG_LOCK.read().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("source.db");
    let app = app_on_file(&file, |_| {}).await;
    let p = app.platform.clone();
    let values = populate(&app, 30).await;
    let c = app.api.clone();
    let expected = verdicts(&c, &p, &values).await;
    let events = all_events(&c, &p).await;
    let source = sqlite_url(&file);

    let target_url = |name: &str| {
        let name = name.to_owned();
        let dir = dir.path().to_owned();
        async move {
            match std::env::var(helpers::PG_URL_ENV) {
                Ok(_) => helpers::fresh_pg_database(&name).await.unwrap(),
                Err(_) => sqlite_url(&dir.join(format!("{name}.db"))),
            }
        }
    };
    let options = CopyOptions { batch_rows: 4 };
    let timeout = Duration::from_secs(5);

    // Interrupted after 3 batches, resumed.
    let first = target_url("resume_target").await;
    println!(
        "interrupted move into {}",
        if first.starts_with("postgres") {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    let mut batches = 0;
    let mut stop_after_three = |_| {
        batches += 1;
        if batches == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let err = move_store(&source, &first, &options, timeout, &mut stop_after_three)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("run the same command again to resume"),
        "{err}"
    );
    let report = move_store(&source, &first, &options, timeout, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap();
    assert!(report.resumed);
    assert!(report.verified());
    assert_eq!(
        report.tables[0].resumed_rows, 12,
        "three batches of 4 tokens"
    );
    assert_eq!(report.tables[0].source.rows, report.tables[0].target.rows);
    // Done: the target is a store now, and a second move into it is refused.
    let again = move_store(&source, &first, &options, timeout, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap_err();
    assert!(
        again.to_string().contains("the target store is not empty"),
        "{again}"
    );
    {
        let target = app_on(&first).await;
        assert_same_store(&target, &p, &expected, &events).await;
        target.stop().await;
    }
    if first.starts_with("postgres") {
        // The indexes set aside during the load are all back, and the
        // mover's bookkeeping is gone.
        use sea_orm::sqlx::{Connection, PgConnection, Row};
        let mut conn = PgConnection::connect(&first).await.unwrap();
        let names: Vec<String> = sea_orm::sqlx::query(
            "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema()",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
        for index in [
            "idx_tokens_name_fold_trgm",
            "idx_token_modules_module",
            "idx_tokens_account_owner_created",
            "idx_token_events_at",
            "idx_token_changes_at",
            "idx_tokens_sweep_unused",
            "idx_tokens_sweep_expiry",
        ] {
            assert!(
                names.iter().any(|n| n == index),
                "{index} missing: {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n.starts_with("tokend_move")),
            "{names:?}"
        );
    }

    // Interrupted, then the source changes under the copied rows: resuming
    // would mix two states of the store, so it is refused.
    let second = target_url("changed_target").await;
    let mut once = |_| ControlFlow::Break(());
    move_store(&source, &second, &options, timeout, &mut once)
        .await
        .unwrap_err();
    for v in &values {
        let id = id_of(v);
        let t = c
            .get(&p, pb::GetRequest { id: id.clone() })
            .await
            .unwrap()
            .token
            .unwrap();
        if t.state == pb::State::Active as i32 && v != &p {
            c.change_state(&p, &id, pb::State::Disabled, "day two test")
                .await
                .expect("SetState");
        }
    }
    let refused = move_store(&source, &second, &options, timeout, &mut |_| {
        ControlFlow::Continue(())
    })
    .await
    .unwrap_err();
    assert!(refused.to_string().contains("cannot resume"), "{refused}");
    app.stop().await;
    for url in [first, second] {
        if url.starts_with("postgres") {
            crate::postgres::drop_database(&url).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Audit retention and export
// ---------------------------------------------------------------------------

async fn event_token_ids(c: &Api, caller: &str) -> Vec<String> {
    all_events(c, caller)
        .await
        .into_iter()
        .map(|e| e.token_id)
        .collect()
}

/// Issues a token, waits past the retention, issues another, and waits for
/// the pruner: the old token's event goes, the recent one's stays.
async fn retention_prunes_old_and_keeps_recent(apps: &[&TestApp]) {
    let app = apps[0];
    let p = app.platform.clone();
    let c = app.api.clone();
    let old = id_of(&issue(&c, &p, "alice", "old").await.secret);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let recent = id_of(&issue(&c, &p, "alice", "recent").await.secret);
    let mut ids = event_token_ids(&c, &p).await;
    for _ in 0..40 {
        if !ids.contains(&old) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        ids = event_token_ids(&c, &p).await;
    }
    assert!(!ids.contains(&old), "the old event was not pruned");
    assert!(ids.contains(&recent), "the recent event was pruned");
    // Every replica still serves the tokens (only the trail is pruned).
    for a in apps {
        let c = a.api.clone();
        assert_eq!(reason(&c, &p, &p).await, pb::Reason::Valid);
    }
}

fn short_retention(c: &mut Config) {
    c.event_retention = Some(Duration::from_secs(2));
    c.event_prune_interval = Duration::from_millis(100);
    c.db_max_connections = 4;
}

#[tokio::test]
async fn retention_prunes_old_events_and_keeps_recent_ones() {
    let app = helpers::spawn_app_with(short_retention).await;
    retention_prunes_old_and_keeps_recent(&[&app]).await;
    assert!(helpers::captured_logs().contains("audit retention: pruned events"));
    app.stop().await;
}

#[tokio::test]
async fn retention_on_postgres_with_two_replicas() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) = helpers::fresh_pg_database("retention_on_postgres_with_two_replicas").await
    else {
        return;
    };
    let replica = || {
        let mut config = helpers::test_config(url.clone());
        shared_key(&mut config);
        short_retention(&mut config);
        helpers::start(config, None)
    };
    let a = replica().await;
    let b = replica().await;
    retention_prunes_old_and_keeps_recent(&[&a, &b]).await;
    a.stop().await;
    b.stop().await;
    crate::postgres::drop_database(&url).await;
}

fn parse_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn assert_line_is(line: &serde_json::Value, e: &pb::Event) {
    assert_eq!(line["id"], e.id);
    assert_eq!(line["token_id"], e.token_id.as_str());
    assert_eq!(line["account_id"], e.account_id.as_str());
    assert_eq!(line["owner_id"], e.owner_id.as_str());
    assert_eq!(
        line["kind"],
        pb::EventKind::try_from(e.kind).unwrap().as_str_name()
    );
    assert_eq!(line["actor_token_id"], e.actor_token_id.as_str());
    assert_eq!(line["actor_owner_id"], e.actor_owner_id.as_str());
    assert_eq!(line["detail"], e.detail.as_str());
    let at = e.at.as_ref().unwrap();
    let when = chrono::DateTime::from_timestamp(at.seconds, at.nanos as u32).unwrap();
    assert_eq!(
        line["at"],
        when.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    );
}

#[tokio::test]
async fn export_writes_what_list_events_shows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store.db");
    let app = app_on_file(&file, |_| {}).await;
    let p = app.platform.clone();
    populate(&app, 5).await;
    let c = app.api.clone();
    // Another account's events, for the account filter.
    c.issue(
        &p,
        pb::IssueRequest {
            account_id: "globex".into(),
            owner_id: "zed".into(),
            name: "other account".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let events = all_events(&c, &p).await;
    let env = [("TOKEND_DATABASE_URL", sqlite_url(&file))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Everything, to a file, while the server runs.
    let out_file = dir.path().join("trail.jsonl");
    let out = tokend(
        &["events", "export", "--out", out_file.to_str().unwrap()],
        &env,
    )
    .await;
    succeeded(&out);
    let lines = parse_lines(&std::fs::read_to_string(&out_file).unwrap());
    assert_eq!(lines.len(), events.len());
    for (line, e) in lines.iter().zip(&events) {
        assert_line_is(line, e);
    }

    // One account, to stdout.
    let out = tokend(
        &["events", "export", "--account", "globex", "--out", "-"],
        &env,
    )
    .await;
    let lines = parse_lines(&succeeded(&out));
    let globex: Vec<&pb::Event> = events.iter().filter(|e| e.account_id == "globex").collect();
    assert_eq!(lines.len(), globex.len());
    assert_eq!(lines.len(), 1);
    assert_line_is(&lines[0], globex[0]);

    // A time range: [from, to) over the recorded times.
    let time = |e: &pb::Event| {
        let at = e.at.as_ref().unwrap();
        chrono::DateTime::from_timestamp(at.seconds, at.nanos as u32).unwrap()
    };
    let from = time(&events[2]);
    let to = time(&events[events.len() - 2]);
    let fmt =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let out = tokend(
        &[
            "events",
            "export",
            "--from",
            &fmt(from),
            "--to",
            &fmt(to),
            "--out",
            "-",
        ],
        &env,
    )
    .await;
    let lines = parse_lines(&succeeded(&out));
    let in_range: Vec<&pb::Event> = events
        .iter()
        .filter(|e| time(e) >= from && time(e) < to)
        .collect();
    assert_eq!(lines.len(), in_range.len());
    for (line, e) in lines.iter().zip(in_range) {
        assert_line_is(line, e);
    }
    failed_with(
        &tokend(
            &["events", "export", "--from", "yesterday", "--out", "-"],
            &env,
        )
        .await,
        "--from",
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn logs_are_coloured_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir.path().join("t.db"));
    let out = tokend(
        &["migrate"],
        &[("TOKEND_DATABASE_URL", &url), ("TOKEND_LOG", "info")],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}", text(&out));
    assert!(stderr.contains("migrations applied"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );

    // Under a pseudo-terminal (util-linux `script`), colour is on.
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_tokend"));
    let command = format!(
        "TOKEND_LOG=info TOKEND_DATABASE_URL='{url}' '{}' migrate",
        exe.display()
    );
    let tty = tokio::task::spawn_blocking(move || {
        std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env_remove("NO_COLOR")
            .output()
    })
    .await
    .unwrap();
    match tty {
        Ok(out) if out.status.success() => {
            let shown = String::from_utf8_lossy(&out.stdout);
            assert!(shown.contains("migrations applied"), "{shown}");
            assert!(
                shown.contains("\u{1b}["),
                "no colour on a terminal: {shown:?}"
            );
        }
        _ => helpers::not_run(
            "logs_are_coloured_only_on_a_terminal (its terminal half)",
            "needs `script`",
        ),
    }
}
