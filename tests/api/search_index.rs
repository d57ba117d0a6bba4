//! Search served from indexes: the plans of every filter combination the
//! README lists (EXPLAIN QUERY PLAN on SQLite;
//! `postgres::indexes::search_sql_uses_the_indexes` checks the same cases with
//! EXPLAIN on PostgreSQL), Unicode-aware matching,
//! totals, indexes kept in step by every write path (service, raw SQL,
//! migration backfill), and a property test comparing index-backed search with
//! a brute-force filter on random data, on SQLite and (with
//! `TOKEND_TEST_POSTGRES_URL`) PostgreSQL.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use sea_orm::{ConnectionTrait, Database};
use sea_orm_migration::MigratorTrait;
use tokend::{
    domain::{
        AccountId, OwnerId, Token, TokenId, TokenState,
        page::TokenCursor,
        privilege::Scope,
        token::{Actor, SecretHash},
    },
    pb,
    store::{SearchQuery, Store, StoreConfig, fold},
};

use crate::helpers::{self, TestApp, spawn_app, spawn_app_pg};

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A stand-in hash: these tokens are searched, never validated.
const PHC: &str = "$argon2id$v=19$m=256,t=1,p=1$c2VhcmNoLWZpeHR1cmU$0000000000000000000000";

fn random_id() -> TokenId {
    use rand::Rng;
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let s: String = (0..16)
        .map(|_| char::from(B62[rng.random_range(0..62)]))
        .collect();
    TokenId::parse(&s).unwrap()
}

pub fn token(
    account: &str,
    owner: &str,
    name: &str,
    modules: &[&str],
    state: TokenState,
    created_at: DateTime<Utc>,
) -> Token {
    Token {
        allowed_cidrs: Vec::new(),
        id: random_id(),
        account_id: AccountId::from_stored(account.into()),
        owner_id: OwnerId::from_stored(owner.into()),
        created_by: "ops".into(),
        updated_by: "ops".into(),
        name: name.into(),
        description: String::new(),
        modules: modules.iter().map(|m| (*m).to_owned()).collect(),
        api_version: String::new(),
        metadata: BTreeMap::new(),
        state,
        state_reason: String::new(),
        secret_hash: SecretHash::new(PHC.into()),
        verifier: None,
        previous_secret: None,
        hint: "hint".into(),
        created_at,
        updated_at: created_at,
        last_used_at: None,
        expires_at: None,
        disabled_at: None,
        revoked_at: None,
    }
}

const WORDS: [&str; 6] = [
    "CI deploy",
    "Billing export",
    "Grafana read",
    "Backup job",
    "Ünïcode Straße",
    "c0ffee",
];
const MODULES: [&str; 4] = ["svc:read", "billing:read", "billing:write", "storage:*"];
const STATES: [TokenState; 3] = [
    TokenState::Active,
    TokenState::Disabled,
    TokenState::Revoked,
];

/// `n` tokens: nine in ten in account `acme` (40 owners), the rest in 7 small
/// accounts; names from `WORDS` plus a number, 1-2 modules, three states,
/// one a minute back from now.
pub fn fixture(n: usize) -> Vec<Token> {
    let now = tokend::manage::now();
    (0..n)
        .map(|i| {
            let account = if i % 10 == 0 {
                format!("small{}", i % 7)
            } else {
                "acme".to_owned()
            };
            let name = format!("{} {i:05}", WORDS[i % WORDS.len()]);
            let modules = [MODULES[i % 4], MODULES[(i / 4) % 4]];
            token(
                &account,
                &format!("owner{}", i % 40),
                &name,
                &modules[..1 + i % 2],
                STATES[i % 3],
                now - Duration::minutes(i as i64),
            )
        })
        .collect()
}

/// Who the fixtures' `issued` events name.
fn importer() -> Actor {
    Actor::Tool {
        name: "search-tests".into(),
        owner_id: "tests".into(),
    }
}

fn live() -> Vec<TokenState> {
    vec![TokenState::Active, TokenState::Disabled]
}

// ---------------------------------------------------------------------------
// The filter combinations the README lists, and the indexes that serve them
// ---------------------------------------------------------------------------

pub struct Case {
    pub what: String,
    pub query: SearchQuery,
    /// Acceptable driving indexes on SQLite / PostgreSQL.
    pub sqlite: &'static [&'static str],
    pub pg: &'static [&'static str],
}

/// Every combination in the README's Search section, as the platform token
/// (or an account admin, `Scope::Account`) sends it.
pub fn cases() -> Vec<Case> {
    let now = tokend::manage::now();
    let acme = Some(Scope::Account("acme".into()));
    let everything = Some(Scope::Everything);
    let q = |scope: &Option<Scope>| SearchQuery {
        scope: scope.clone(),
        states: live(),
        limit: 51,
        ..SearchQuery::default()
    };
    let tokens_account: &[&str] = &[
        "idx_tokens_account_state_created",
        "idx_tokens_account_created",
        "idx_tokens_account_owner_created",
    ];
    let first_pages = vec![
        Case {
            what: "account (admin's own), default states".into(),
            query: q(&acme),
            sqlite: tokens_account,
            // PostgreSQL may read the platform-wide created index newest
            // first when the account holds most tokens (it does here).
            pg: &[
                "idx_tokens_account_state_created",
                "idx_tokens_account_created",
                "idx_tokens_created",
            ],
        },
        Case {
            what: "account + one state + created range".into(),
            query: SearchQuery {
                account_id: Some("acme".into()),
                states: vec![TokenState::Disabled],
                created_after: Some(now - Duration::hours(3)),
                created_before: Some(now - Duration::hours(1)),
                ..q(&everything)
            },
            sqlite: tokens_account,
            pg: tokens_account,
        },
        Case {
            what: "account + owner + state + created range (the account's first page)".into(),
            query: SearchQuery {
                owner_id: Some("owner7".into()),
                states: vec![TokenState::Active],
                created_after: Some(now - Duration::hours(8)),
                ..q(&acme)
            },
            sqlite: tokens_account,
            pg: tokens_account,
        },
        Case {
            what: "owner across accounts (platform), default states".into(),
            query: SearchQuery {
                owner_id: Some("owner7".into()),
                ..q(&everything)
            },
            sqlite: &["idx_tokens_owner_created"],
            pg: &["idx_tokens_owner_created"],
        },
        Case {
            what: "platform-wide, default states, created range".into(),
            query: SearchQuery {
                created_after: Some(now - Duration::hours(3)),
                ..q(&everything)
            },
            sqlite: &["idx_tokens_created", "idx_tokens_account_state_created"],
            pg: &["idx_tokens_created", "idx_tokens_account_state_created"],
        },
        Case {
            what: "account + name (rare)".into(),
            query: SearchQuery {
                name_contains: Some("00042".into()),
                ..q(&acme)
            },
            sqlite: &["tokens_name_fts"],
            pg: &["idx_tokens_name_fold_trgm"],
        },
        Case {
            what: "account + name (non-ASCII, other case)".into(),
            query: SearchQuery {
                name_contains: Some("STRAẞE 0001".into()),
                ..q(&acme)
            },
            sqlite: &["tokens_name_fts"],
            // Its trigrams are common ones ("000", "001"): PostgreSQL's
            // planner may prefer the account's index and check each row.
            pg: &[
                "idx_tokens_name_fold_trgm",
                "idx_tokens_account_state_created",
                "idx_tokens_account_created",
            ],
        },
        Case {
            what: "platform-wide name (operator)".into(),
            query: SearchQuery {
                name_contains: Some("ffee 0004".into()),
                ..q(&everything)
            },
            sqlite: &["tokens_name_fts"],
            pg: &["idx_tokens_name_fold_trgm"],
        },
        Case {
            what: "account + name of 2 characters (below trigram reach: ordered walk)".into(),
            query: SearchQuery {
                name_contains: Some("ïc".into()),
                ..q(&acme)
            },
            sqlite: tokens_account,
            pg: tokens_account,
        },
        Case {
            what: "account + module".into(),
            query: SearchQuery {
                module: Some("storage:*".into()),
                ..q(&acme)
            },
            sqlite: &["token_modules"],
            pg: &["token_modules_pkey"],
        },
        Case {
            what: "account + module + owner + created range".into(),
            query: SearchQuery {
                module: Some("billing:write".into()),
                owner_id: Some("owner3".into()),
                created_after: Some(now - Duration::hours(20)),
                ..q(&acme)
            },
            sqlite: &["token_modules"],
            pg: &["token_modules_pkey"],
        },
        Case {
            what: "module platform-wide".into(),
            query: SearchQuery {
                module: Some("billing:read".into()),
                ..q(&everything)
            },
            sqlite: &["idx_token_modules_module"],
            pg: &["idx_token_modules_module"],
        },
        Case {
            what: "account + name + module".into(),
            query: SearchQuery {
                name_contains: Some("deploy".into()),
                module: Some("svc:read".into()),
                ..q(&acme)
            },
            sqlite: &["tokens_name_fts", "token_modules"],
            pg: &["idx_tokens_name_fold_trgm", "token_modules_pkey"],
        },
        Case {
            what: "token value (id)".into(),
            query: SearchQuery {
                id: Some(TokenId::parse("0123456789abcdef").unwrap()),
                ..q(&acme)
            },
            sqlite: &["sqlite_autoindex_tokens_1"],
            pg: &["tokens_pkey"],
        },
    ];
    // Each again on a later page (a page token: the keyset cursor).
    let cursor = TokenCursor {
        created_at: now - Duration::hours(2),
        id: TokenId::parse("xxxxxxxxxxxx0100").unwrap(),
    };
    let later_pages: Vec<Case> = first_pages
        .iter()
        .map(|c| Case {
            what: format!("{}, later page", c.what),
            query: SearchQuery {
                after: Some(cursor),
                ..c.query.clone()
            },
            sqlite: c.sqlite,
            pg: c.pg,
        })
        .collect();
    first_pages.into_iter().chain(later_pages).collect()
}

/// SQLite: `Err` unless the plan uses one of `indexes` and never scans a
/// table without an index (`SCAN tokens` alone is a full scan; `SCAN ...
/// USING INDEX` walks an index in order and stops at the page size).
fn check_sqlite_plan(what: &str, lines: &[String], indexes: &[&str]) -> Result<(), String> {
    let plan = lines[1..].join("\n");
    println!("--- {what}:\n{}\n{plan}", lines[0]);
    let full_scan = lines[1..].iter().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.first() == Some(&"SCAN")
            && matches!(words.get(1), Some(&"tokens") | Some(&"token_modules"))
            && !words.contains(&"USING")
    });
    let used = indexes.iter().find(|i| plan.contains(*i));
    if full_scan || used.is_none() {
        Err(format!(
            "{what}: expected one of {indexes:?} and no full scan, got\n{plan}"
        ))
    } else {
        Ok(())
    }
}

#[tokio::test]
async fn every_listed_filter_combination_is_index_served_on_sqlite() {
    let app = spawn_app().await;
    app.store
        .import_tokens(&fixture(3000), &importer(), "search fixture")
        .await
        .unwrap();
    let mut failures = Vec::new();
    for case in cases() {
        let plans = app
            .store
            .explain_search(&case.query)
            .await
            .unwrap()
            .unwrap();
        for (kind, lines) in [("page", &plans.page), ("count", &plans.count)] {
            if let Err(e) =
                check_sqlite_plan(&format!("{} ({kind})", case.what), lines, case.sqlite)
            {
                failures.push(e);
            }
        }
    }
    // A common name (more FTS matches than the Fts plan takes) walks the
    // account's index in order and checks each row; its count probes the
    // FTS matches from a covering index.
    app.store.set_fts_drive_max(10);
    let common = SearchQuery {
        scope: Some(Scope::Account("acme".into())),
        name_contains: Some("deploy".into()),
        states: live(),
        limit: 51,
        ..SearchQuery::default()
    };
    let plans = app.store.explain_search(&common).await.unwrap().unwrap();
    let account: &[&str] = &[
        "idx_tokens_account_state_created",
        "idx_tokens_account_created",
    ];
    for (kind, lines) in [("page", &plans.page), ("count", &plans.count)] {
        if let Err(e) =
            check_sqlite_plan(&format!("account + common name ({kind})"), lines, account)
        {
            failures.push(e);
        }
    }
    assert!(
        plans.page[0].contains("GLOB") && plans.count.iter().any(|l| l.contains("COVERING INDEX")),
        "{plans:#?}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

// ---------------------------------------------------------------------------
// Matching through the API, on both backends
// ---------------------------------------------------------------------------

async fn names_found(app: &TestApp, query: &str) -> Vec<String> {
    let c = app.api.clone();
    let mut names: Vec<String> = c
        .search(
            &app.platform,
            pb::SearchRequest {
                query: query.into(),
                page_size: 500,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .tokens
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    names
}

async fn unicode_matching(app: &TestApp, with_fts: bool) {
    app.store
        .set_fts_drive_max(if with_fts { u64::MAX } else { 0 });
    let names = [
        "Ünïcode Straße",
        "ÜNÏCODE STRASSE",
        "unicode strasse",
        "STRAẞE am See",
        "ΟΔΟΣ Σίσυφος",
        "οδος",
        "Kelvin K",
        "50% off_sale\\x",
        "Ж-key [prod]*?",
    ];
    let c = app.api.clone();
    for name in names {
        c.issue(
            &app.platform,
            pb::IssueRequest {
                account_id: "acme".into(),
                owner_id: "uni".into(),
                name: name.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let expect = |q: &str| {
        let f = fold::fold_str(q);
        let mut v: Vec<String> = names
            .iter()
            .filter(|n| fold::fold_str(n).contains(&f))
            .map(|n| (*n).to_owned())
            .collect();
        v.sort();
        v
    };
    let cases: [(&str, &[&str]); 16] = [
        ("ünïcode", &["ÜNÏCODE STRASSE", "Ünïcode Straße"]),
        ("ÜNÏ", &["ÜNÏCODE STRASSE", "Ünïcode Straße"]),
        ("ü", &["ÜNÏCODE STRASSE", "Ünïcode Straße"]),
        ("straße", &["STRAẞE am See", "Ünïcode Straße"]),
        ("STRAẞE", &["STRAẞE am See", "Ünïcode Straße"]),
        ("strasse", &["ÜNÏCODE STRASSE", "unicode strasse"]),
        ("unicode", &["unicode strasse"]),
        ("οδοσ", &["ΟΔΟΣ Σίσυφος", "οδος"]),
        ("ΟΔΟΣ", &["ΟΔΟΣ Σίσυφος", "οδος"]),
        ("kelvin k", &["Kelvin K"]),
        ("50%", &["50% off_sale\\x"]),
        ("f_s", &["50% off_sale\\x"]),
        ("e\\x", &["50% off_sale\\x"]),
        ("%", &["50% off_sale\\x"]),
        ("ж-KEY [PROD]*?", &["Ж-key [prod]*?"]),
        ("o%f", &[]),
    ];
    for (q, want) in cases {
        let got = names_found(app, q).await;
        assert_eq!(got, expect(q), "{q:?} (definition)");
        let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        assert_eq!(got, want, "{q:?}");
    }
    // Wildcards of GLOB and LIKE are literal; a control character matches nothing.
    for q in ["*", "?", "[p", "d_", "\u{7}"] {
        assert_eq!(names_found(app, q).await, expect(q), "{q:?}");
    }
}

#[tokio::test]
async fn name_search_is_unicode_aware_on_sqlite() {
    for with_fts in [true, false] {
        let app = spawn_app().await;
        unicode_matching(&app, with_fts).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn name_search_is_unicode_aware_on_postgres() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(app) = spawn_app_pg("name_search_is_unicode_aware_on_postgres", |c| {
        c.db_max_connections = 4
    })
    .await
    else {
        return;
    };
    unicode_matching(&app, true).await;
    app.stop().await;
}

// ---------------------------------------------------------------------------
// include_total, and the indexes following every write path
// ---------------------------------------------------------------------------

async fn search(app: &TestApp, req: pb::SearchRequest) -> pb::SearchResponse {
    app.search(&app.platform, req).await.unwrap()
}

/// Every page of `req`, as token ids, and the total of its first page.
async fn all_pages(app: &TestApp, mut req: pb::SearchRequest) -> (Vec<String>, Option<i64>) {
    req.include_total = true;
    req.page_size = 7;
    let mut ids = Vec::new();
    let mut total = None;
    loop {
        let page = search(app, req.clone()).await;
        total = total.or(page.total_size);
        assert_eq!(
            page.total_size, total,
            "the total does not depend on the page"
        );
        ids.extend(page.tokens.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            return (ids, total);
        }
        req.page_token = page.next_page_token;
    }
}

async fn totals_and_write_paths(app: &TestApp) {
    let c = app.api.clone();
    let mut issued = Vec::new();
    for (i, (name, modules)) in [
        ("Deploy CI", vec!["billing:read"]),
        ("deploy-prod", vec!["billing:write", "x"]),
        ("Backup 100%", vec!["billing:read", "storage:*"]),
        ("Ünïcode deploy", vec!["x"]),
        ("other", vec![]),
    ]
    .into_iter()
    .enumerate()
    {
        let t = c
            .issue(
                &app.platform,
                pb::IssueRequest {
                    account_id: "zeta".into(),
                    owner_id: format!("o{}", i % 2),
                    name: name.into(),
                    modules: modules.into_iter().map(str::to_owned).collect(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .token
            .unwrap();
        issued.push(t.id);
    }
    let req = |query: &str, module: &str| pb::SearchRequest {
        account_id: "zeta".into(),
        query: query.into(),
        module: module.into(),
        ..Default::default()
    };
    let (ids, total) = all_pages(app, req("deploy", "")).await;
    assert_eq!((ids.len(), total), (3, Some(3)));
    let (ids, total) = all_pages(app, req("", "billing:read")).await;
    assert_eq!((ids.len(), total), (2, Some(2)));
    let (ids, total) = all_pages(app, req("", "")).await;
    assert_eq!((ids.len(), total), (5, Some(5)));
    // Without include_total, no total.
    assert_eq!(search(app, req("deploy", "")).await.total_size, None);

    // Rename through Update: the old name is gone from the index, the new one in.
    c.update(
        &app.platform,
        pb::UpdateRequest {
            id: issued[0].clone(),
            name: "Renamed Straße".into(),
            modules: vec!["storage:*".into()],
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into(), "modules".into()],
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(all_pages(app, req("deploy", "")).await.1, Some(2));
    assert_eq!(
        all_pages(app, req("STRASSE", "")).await.0,
        Vec::<String>::new()
    );
    assert_eq!(
        all_pages(app, req("straße", "")).await.0,
        vec![issued[0].clone()]
    );
    assert_eq!(all_pages(app, req("", "billing:read")).await.1, Some(1));
    assert_eq!(all_pages(app, req("", "storage:*")).await.1, Some(2));
    // A module search sees state changes (the token's own state).
    c.change_state(&app.platform, &issued[2], pb::State::Disabled, "")
        .await
        .unwrap();
    let disabled = |module: &str| pb::SearchRequest {
        states: vec![pb::State::Disabled as i32],
        ..req("", module)
    };
    assert_eq!(
        all_pages(app, disabled("storage:*")).await.0,
        vec![issued[2].clone()]
    );
    assert_eq!(all_pages(app, disabled("billing:read")).await.1, Some(1));
    c.revoke_id(&app.platform, &issued[2], "").await.unwrap();
    assert_eq!(all_pages(app, req("", "storage:*")).await.1, Some(1));
    let revoked_too = pb::SearchRequest {
        include_revoked: true,
        ..req("", "storage:*")
    };
    assert_eq!(all_pages(app, revoked_too).await.1, Some(2));
}

#[tokio::test]
async fn totals_follow_every_write_on_sqlite() {
    for with_fts in [true, false] {
        let app = spawn_app().await;
        app.store
            .set_fts_drive_max(if with_fts { u64::MAX } else { 0 });
        totals_and_write_paths(&app).await;
        app.stop().await;
    }
}

/// The ids a search of account zeta finds for `query` (every page), sorted;
/// the total must count them.
async fn zeta_ids(app: &TestApp, query: &str) -> Vec<String> {
    let (mut ids, total) = all_pages(
        app,
        pb::SearchRequest {
            account_id: "zeta".into(),
            query: query.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(total, Some(ids.len() as i64), "total of {query:?}");
    ids.sort();
    ids
}

/// After "alpha one" (`ids[0]`) was renamed "Gamma Three".
async fn expect_renamed(app: &TestApp, ids: &[String]) {
    for (query, want) in [
        ("GAMMA", vec![ids[0].clone()]),
        ("alpha", vec![]),
        ("ONE", vec![]),
        ("beta", vec![ids[1].clone()]),
    ] {
        assert_eq!(zeta_ids(app, query).await, want, "{query}");
    }
}

/// SQLite: a rename is found (and its old name no longer) the moment it
/// commits, while the name index still has it pending; the server folds the
/// pending list in the background, and at start-up folds what another writer
/// left, with the same results throughout.
#[tokio::test]
async fn renames_are_found_at_once_and_folded_in_the_background_on_sqlite() {
    let db = helpers::SharedDb::new();
    let app = db.spawn(|_| {}).await;
    let c = app.api.clone();
    let mut ids = Vec::new();
    for name in ["alpha one", "beta two"] {
        let (id, _) = c
            .issued(
                &app.platform,
                pb::IssueRequest {
                    account_id: "zeta".into(),
                    owner_id: "o".into(),
                    name: name.into(),
                    ..Default::default()
                },
            )
            .await;
        ids.push(id);
    }
    assert_eq!(zeta_ids(&app, "alpha").await, vec![ids[0].clone()]);
    c.update(
        &app.platform,
        pb::UpdateRequest {
            id: ids[0].clone(),
            name: "Gamma Three".into(),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The folder waits a second after a rename: it is still pending here.
    assert_eq!(app.store.name_index_pending().await.unwrap(), 1);
    for fts_max in [u64::MAX, 0] {
        app.store.set_fts_drive_max(fts_max);
        expect_renamed(&app, &ids).await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.store.name_index_pending().await.unwrap() > 0 {
        assert!(std::time::Instant::now() < deadline, "never folded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for fts_max in [u64::MAX, 0] {
        app.store.set_fts_drive_max(fts_max);
        expect_renamed(&app, &ids).await;
    }
    app.stop().await;

    // Another writer renames while no server runs; the next one folds it
    // before it serves.
    let raw = Database::connect(&db.url).await.unwrap();
    raw.execute_unprepared(&format!(
        "UPDATE tokens SET name = 'beta two, renamed' WHERE id = '{}'",
        ids[1]
    ))
    .await
    .unwrap();
    let pending: i64 = raw
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT count(*) FROM tokens_name_fts_pending",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap();
    assert_eq!(pending, 1);
    raw.close().await.unwrap();
    let app = db.spawn(|_| {}).await;
    assert_eq!(app.store.name_index_pending().await.unwrap(), 0);
    assert_eq!(zeta_ids(&app, "renamed").await, vec![ids[1].clone()]);
    expect_renamed(&app, &ids).await;
    app.stop().await;
}

#[tokio::test]
async fn totals_follow_every_write_on_postgres() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(app) = spawn_app_pg("totals_follow_every_write_on_postgres", |c| {
        c.db_max_connections = 4
    })
    .await
    else {
        return;
    };
    totals_and_write_paths(&app).await;
    app.stop().await;
}

/// Rows written before the migration (an upgrade) are backfilled; rows
/// written by plain SQL afterwards (an import, a restore) are indexed by the
/// database's own triggers, in the writing transaction.
async fn backfill_and_raw_writes(url: &str) {
    let db = Database::connect(url).await.unwrap();
    tokend::store::migration::Migrator::up(&db, Some(2))
        .await
        .unwrap();
    let insert = |id: &str, name: &str, modules: &str| {
        format!(
            "INSERT INTO tokens (id, account_id, owner_id, created_by, updated_by, name, description, \
             modules, api_version, metadata, state, state_reason, secret_hash, hint, created_at, updated_at) \
             VALUES ('{id}', 'acme', 'o', 'ops', 'ops', '{name}', '', '{modules}', '', '{{}}', 'active', '', \
             'h', 'hint', '2026-11-01 10:00:00+00:00', '2026-11-01 10:00:00+00:00')"
        )
    };
    db.execute_unprepared(&insert(
        "old0000000000001",
        "Ünïcode Straße",
        "[\"a:read\",\"b\"]",
    ))
    .await
    .unwrap();
    db.execute_unprepared(&insert("old0000000000002", "plain old", "[]"))
        .await
        .unwrap();
    db.close().await.unwrap();

    let store = Store::connect(&StoreConfig {
        url: url.into(),
        max_connections: 2,
        timeout: std::time::Duration::from_secs(10),
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let q = |name: &str, module: Option<&str>| SearchQuery {
        scope: Some(Scope::Everything),
        name_contains: (!name.is_empty()).then(|| name.to_owned()),
        module: module.map(str::to_owned),
        limit: 50,
        ..SearchQuery::default()
    };
    let names = |v: Vec<Token>| {
        let mut names: Vec<String> = v.into_iter().map(|t| t.name).collect();
        names.sort();
        names
    };
    assert_eq!(
        names(store.search_tokens(&q("STRASSE", None)).await.unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        names(store.search_tokens(&q("ÜNÏCODE", None)).await.unwrap()),
        vec!["Ünïcode Straße"]
    );
    assert_eq!(
        names(store.search_tokens(&q("", Some("a:read"))).await.unwrap()),
        vec!["Ünïcode Straße"]
    );
    assert_eq!(store.count_tokens(&q("old", None)).await.unwrap(), 1);

    // Plain SQL after the migration: insert, rename, change modules, delete.
    let db = Database::connect(url).await.unwrap();
    db.execute_unprepared(&insert("new0000000000003", "Raw Import", "[\"a:read\"]"))
        .await
        .unwrap();
    db.execute_unprepared(
        "UPDATE tokens SET name = 'Renamed Raw', modules = '[\"c\"]' WHERE id = 'old0000000000002'",
    )
    .await
    .unwrap();
    db.execute_unprepared("DELETE FROM tokens WHERE id = 'old0000000000001'")
        .await
        .unwrap();
    db.close().await.unwrap();
    assert_eq!(
        names(store.search_tokens(&q("raw", None)).await.unwrap()),
        vec!["Raw Import", "Renamed Raw"]
    );
    assert_eq!(
        names(store.search_tokens(&q("", Some("a:read"))).await.unwrap()),
        vec!["Raw Import"]
    );
    assert_eq!(
        names(store.search_tokens(&q("", Some("c"))).await.unwrap()),
        vec!["Renamed Raw"]
    );
    assert_eq!(store.count_tokens(&q("plain", None)).await.unwrap(), 0);
    assert_eq!(store.count_tokens(&q("ünï", None)).await.unwrap(), 0);
    store.close().await;
}

#[tokio::test]
async fn migration_backfills_and_triggers_follow_raw_writes_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    backfill_and_raw_writes(&url).await;
}

#[tokio::test]
async fn migration_backfills_and_triggers_follow_raw_writes_on_postgres() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) = helpers::fresh_pg_database(
        "migration_backfills_and_triggers_follow_raw_writes_on_postgres",
    )
    .await
    else {
        return;
    };
    backfill_and_raw_writes(&url).await;
    crate::postgres::drop_database(&url).await;
}

// ---------------------------------------------------------------------------
// Property test: index-backed search == brute force
// ---------------------------------------------------------------------------

/// Characters of random names: ASCII of both cases, digits, wildcards of
/// LIKE and GLOB, quotes, and non-ASCII letters whose folds are interesting
/// (ß/ẞ, Σ/σ/ς, K/k/K, ſ/s, İ, Ж/ж, 中).
const ALPHABET: &[char] = &[
    'a', 'A', 'b', 'B', 'e', 'k', 'K', 's', 'S', ' ', '1', '%', '_', '\\', '*', '?', '[', '"',
    '\'', 'ü', 'Ü', 'ß', 'ẞ', 'σ', 'Σ', 'ς', '\u{212A}', 'ſ', 'İ', 'ı', 'Ж', 'ж', '中',
];

#[derive(Debug, Clone)]
struct Spec {
    account: u8,
    owner: u8,
    name: String,
    modules: Vec<u8>,
    state: u8,
    minute: u8,
}

#[derive(Debug, Clone)]
struct Probe {
    scope: u8,
    account: Option<u8>,
    owner: Option<u8>,
    name: Option<String>,
    states: Vec<u8>,
    module: Option<u8>,
    after: Option<u8>,
    before: Option<u8>,
    fts_max: u64,
    page: u64,
}

fn text(min: usize, max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ALPHABET), min..=max)
        .prop_map(|v| v.into_iter().collect())
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..3u8,
        0..3u8,
        text(1, 10),
        prop::collection::vec(0..4u8, 0..3),
        0..3u8,
        0..20u8,
    )
        .prop_map(|(account, owner, name, modules, state, minute)| Spec {
            account,
            owner,
            // Names are never blank (the API refuses them).
            name: if name.trim().is_empty() {
                format!("x{name}")
            } else {
                name
            },
            modules,
            state,
            minute,
        })
}

fn probe() -> impl Strategy<Value = Probe> {
    (
        (0..3u8, prop::option::of(0..3u8), prop::option::of(0..3u8)),
        prop::option::of(text(1, 4)),
        prop::collection::vec(0..3u8, 0..3),
        prop::option::of(0..4u8),
        (prop::option::of(0..20u8), prop::option::of(0..20u8)),
        prop::sample::select(vec![0u64, 2, u64::MAX]),
        1..6u64,
    )
        .prop_map(
            |((scope, account, owner), name, states, module, (after, before), fts_max, page)| {
                Probe {
                    scope,
                    account,
                    owner,
                    name,
                    states,
                    module,
                    after,
                    before,
                    fts_max,
                    page,
                }
            },
        )
}

fn account(n: u8) -> String {
    format!("acct{n}")
}

/// The definition, by brute force: every filter on every token, newest first.
fn brute_force(all: &[Token], q: &SearchQuery) -> Vec<String> {
    let mut hits: Vec<&Token> = all
        .iter()
        .filter(|t| match &q.scope {
            Some(Scope::Account(a)) => t.account_id.as_str() == a,
            Some(Scope::Owner {
                account_id,
                owner_id,
            }) => t.account_id.as_str() == account_id && t.owner_id.as_str() == owner_id,
            _ => true,
        })
        .filter(|t| {
            q.account_id
                .as_ref()
                .is_none_or(|a| t.account_id.as_str() == a)
        })
        .filter(|t| q.owner_id.as_ref().is_none_or(|o| t.owner_id.as_str() == o))
        .filter(|t| q.states.is_empty() || q.states.contains(&t.state))
        .filter(|t| q.module.as_ref().is_none_or(|m| t.modules.contains(m)))
        .filter(|t| {
            q.name_contains
                .as_ref()
                .is_none_or(|n| fold::fold_str(&t.name).contains(&fold::fold_str(n)))
        })
        .filter(|t| q.created_after.is_none_or(|a| t.created_at >= a))
        .filter(|t| q.created_before.is_none_or(|b| t.created_at < b))
        .collect();
    hits.sort_by(|a, b| (b.created_at, b.id.as_str()).cmp(&(a.created_at, a.id.as_str())));
    hits.into_iter().map(|t| t.id.to_string()).collect()
}

/// Every page of `q` through the store's index-backed search.
async fn paged(store: &Store, q: &SearchQuery) -> Vec<String> {
    let mut q = q.clone();
    let mut out = Vec::new();
    loop {
        let page = store.search_tokens(&q).await.unwrap();
        let full = page.len() as u64 == q.limit;
        out.extend(page.iter().map(|t| t.id.to_string()));
        match (full, page.last()) {
            (true, Some(last)) => {
                q.after = Some(TokenCursor {
                    created_at: last.created_at,
                    id: last.id,
                })
            }
            _ => return out,
        }
    }
}

async fn property_store(url: &str) -> Store {
    let store = Store::connect(&StoreConfig {
        url: url.into(),
        max_connections: 2,
        timeout: std::time::Duration::from_secs(30),
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

/// Writes behind the store's back (plain SQL, as another writer would):
/// renames and deletes of earlier tokens. On SQLite a rename leaves the
/// token pending in the name index until a fold (migration 000009).
#[derive(Debug, Clone)]
struct Rewrite {
    renames: Vec<(prop::sample::Index, String)>,
    deletes: Vec<prop::sample::Index>,
    fold: bool,
}

fn rewrite() -> impl Strategy<Value = Rewrite> {
    (
        prop::collection::vec((any::<prop::sample::Index>(), text(1, 10)), 0..8),
        prop::collection::vec(any::<prop::sample::Index>(), 0..2),
        any::<bool>(),
    )
        .prop_map(|(renames, deletes, fold)| Rewrite {
            renames: renames
                .into_iter()
                .map(|(i, name)| {
                    let name = if name.trim().is_empty() {
                        format!("x{name}")
                    } else {
                        name
                    };
                    (i, name)
                })
                .collect(),
            deletes,
            fold,
        })
}

/// Applies `w` to the store and to `all`, the brute force's copy.
async fn apply(db: &sea_orm::DatabaseConnection, store: &Store, all: &mut Vec<Token>, w: &Rewrite) {
    let backend = db.get_database_backend();
    let pg = backend == sea_orm::DbBackend::Postgres;
    for (i, name) in &w.renames {
        if all.is_empty() {
            break;
        }
        let at = i.index(all.len());
        let t = &mut all[at];
        t.name = name.clone();
        db.execute_raw(sea_orm::Statement::from_sql_and_values(
            backend,
            if pg {
                "UPDATE tokens SET name = $1 WHERE id = $2"
            } else {
                "UPDATE tokens SET name = ? WHERE id = ?"
            },
            [name.clone().into(), t.id.to_string().into()],
        ))
        .await
        .unwrap();
    }
    for i in &w.deletes {
        if all.is_empty() {
            break;
        }
        let t = all.remove(i.index(all.len()));
        db.execute_raw(sea_orm::Statement::from_sql_and_values(
            backend,
            if pg {
                "DELETE FROM tokens WHERE id = $1"
            } else {
                "DELETE FROM tokens WHERE id = ?"
            },
            [t.id.to_string().into()],
        ))
        .await
        .unwrap();
    }
    if w.fold {
        store.fold_all_of_name_index().await.unwrap();
    }
}

/// 48 cases of 0-40 new tokens, up to 8 renames and 2 deletes of earlier
/// ones (folded into the name index or left pending), and 6 searches each
/// (on top of every earlier case's tokens), each search compared page by
/// page and by total.
fn index_backed_search_equals_brute_force(url: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(property_store(url));
    let raw = rt.block_on(Database::connect(url)).unwrap();
    let most_pending = std::cell::Cell::new(0);
    let base = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let all = std::cell::RefCell::new(Vec::<Token>::new());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        prop::collection::vec(spec(), 0..40),
        rewrite(),
        prop::collection::vec(probe(), 6),
    );
    runner
        .run(&strategy, |(specs, rewrite, probes)| {
            let new: Vec<Token> = specs
                .iter()
                .map(|s| {
                    let modules: Vec<&str> =
                        s.modules.iter().map(|m| MODULES[usize::from(*m)]).collect();
                    token(
                        &account(s.account),
                        &format!("o{}", s.owner),
                        &s.name,
                        &modules,
                        STATES[usize::from(s.state)],
                        base + Duration::minutes(i64::from(s.minute)),
                    )
                })
                .collect();
            rt.block_on(store.import_tokens(&new, &importer(), "property test"))
                .unwrap();
            all.borrow_mut().extend(new);
            rt.block_on(apply(&raw, &store, &mut all.borrow_mut(), &rewrite));
            let pending = rt.block_on(store.name_index_pending()).unwrap();
            most_pending.set(most_pending.get().max(pending));
            for p in probes {
                let scope = match p.scope {
                    0 => Scope::Everything,
                    1 => Scope::Account(account(p.account.unwrap_or(0))),
                    _ => Scope::Owner {
                        account_id: account(p.account.unwrap_or(1)),
                        owner_id: format!("o{}", p.owner.unwrap_or(0)),
                    },
                };
                let q = SearchQuery {
                    scope: Some(scope),
                    account_id: p.account.map(account),
                    owner_id: p.owner.map(|o| format!("o{o}")),
                    name_contains: p.name.clone(),
                    states: p.states.iter().map(|s| STATES[usize::from(*s)]).collect(),
                    module: p.module.map(|m| MODULES[usize::from(m)].to_owned()),
                    created_after: p.after.map(|m| base + Duration::minutes(i64::from(m))),
                    created_before: p.before.map(|m| base + Duration::minutes(i64::from(m))),
                    limit: p.page,
                    ..SearchQuery::default()
                };
                store.set_fts_drive_max(p.fts_max);
                let want = brute_force(&all.borrow(), &q);
                let got = rt.block_on(paged(&store, &q));
                prop_assert_eq!(&got, &want, "{:?}", q);
                let total = rt.block_on(store.count_tokens(&q)).unwrap();
                prop_assert_eq!(total, want.len() as u64, "total of {:?}", q);
            }
            Ok(())
        })
        .unwrap();
    let pending = most_pending.get();
    println!(
        "property test: {} tokens (at most {pending} renamed ones pending in the name index), 48 cases x 6 searches, all equal to brute force",
        all.borrow().len()
    );
    if !url.starts_with("postgres") {
        assert!(pending > 0, "no search ran with renames pending");
    }
    rt.block_on(raw.close()).unwrap();
    rt.block_on(store.close());
}

#[test]
fn index_backed_search_equals_brute_force_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    index_backed_search_equals_brute_force(&url);
}

#[test]
fn index_backed_search_equals_brute_force_on_postgres() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _pg = rt.block_on(helpers::PG_LOCK.read());
    let Some(url) = rt.block_on(helpers::fresh_pg_database(
        "index_backed_search_equals_brute_force_on_postgres",
    )) else {
        return;
    };
    index_backed_search_equals_brute_force(&url);
    rt.block_on(crate::postgres::drop_database(&url));
}
