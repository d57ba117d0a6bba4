//! Unit tests of the store copy: the schema's tables are all classified, checksums, the COPY text escaping, and resumable-move progress keys.

#![allow(clippy::unwrap_used)]
use super::*;
use crate::store::StoreConfig;

async fn memory_store() -> Store {
    let store = Store::connect(&StoreConfig {
        url: "sqlite::memory:".into(),
        max_connections: 1,
        timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    store
}

/// Fails when a migration adds a table nobody classified (copied, derived
/// or bookkeeping) or changes a copied table's columns without its entity.
#[tokio::test]
async fn every_table_of_the_schema_is_classified() {
    let store = memory_store().await;
    store.require_current_schema("test").await.unwrap();
    let tables = store.classify_tables("test").await.unwrap();
    for table in Table::ALL {
        assert!(tables.contains(table.name()), "{}", table.name());
    }
}

#[test]
fn checksums_ignore_order_and_see_every_row() {
    let rows: Vec<blake3::Hash> = (0..5u8).map(|i| blake3::hash(&[i])).collect();
    let mut a = TableSum::default();
    let mut b = TableSum::default();
    for r in &rows {
        a.add(r);
    }
    for r in rows.iter().rev() {
        b.add(r);
    }
    assert_eq!(a, b);
    assert_eq!(a.hex(), b.hex());
    let mut c = TableSum::default();
    for r in &rows[1..] {
        c.add(r);
    }
    assert_ne!(a, c);
}

#[test]
fn derived_tables_include_their_shadow_tables() {
    assert!(!is_derived("tokens"));
    assert!(!is_derived("token_events"));
    assert!(is_derived("token_modules"));
    assert!(is_derived("tokens_name_fts"));
    assert!(is_derived("tokens_name_fts_data"));
    assert!(is_derived("tokens_name_fts_docsize"));
    // Its pending list (migration 000009): the target's triggers index the
    // copied names directly.
    assert!(is_derived("tokens_name_fts_pending"));
}

#[test]
fn copy_text_escapes_what_the_format_reserves() {
    let at = chrono::DateTime::from_timestamp_micros(1_795_334_024_855_787).unwrap();
    let row = token_event::Model {
        id: 7,
        token_id: "X1a2B3c4D5e6F7g8".into(),
        account_id: "acme".into(),
        owner_id: "o".into(),
        kind: "updated".into(),
        actor_token_id: "a".into(),
        actor_owner_id: "b".into(),
        at,
        detail: "tab\there\nnew line\r \\N back\\slash".into(),
    };
    let text = copy_text::<token_event::Entity>(&[row]).unwrap();
    assert_eq!(
        text,
        "7\tX1a2B3c4D5e6F7g8\tacme\to\tupdated\ta\tb\t2026-11-22T07:53:44.855787Z\t\
         tab\\there\\nnew line\\r \\\\N back\\\\slash\n"
    );
}

#[test]
fn keys_round_trip_through_the_progress_table() {
    let key = vec![Value::String(Some("abc".into()))];
    let text = key_to_json(&key).unwrap();
    assert_eq!(key_from_json::<token::Entity>(&text).unwrap(), key);
    let key = vec![Value::BigInt(Some(42))];
    let text = key_to_json(&key).unwrap();
    assert_eq!(key_from_json::<token_event::Entity>(&text).unwrap(), key);
    assert!(key_from_json::<owner_quota::Entity>(&text).is_err());
}

#[test]
fn timestamp_keys_round_trip_to_the_nanosecond() {
    let at = chrono::DateTime::from_timestamp(1_795_334_024, 855_787_123).unwrap();
    let key = vec![
        Value::String(Some("X1a2B3c4D5e6F7g8".into())),
        Value::String(Some("expiring_soon".into())),
        Value::BigInt(Some(604_800)),
        Value::ChronoDateTimeUtc(Some(at)),
    ];
    let text = key_to_json(&key).unwrap();
    assert!(
        text.contains(r#"{"utc":"2026-11-22T07:53:44.855787123Z"}"#),
        "{text}"
    );
    assert_eq!(key_from_json::<token_notice::Entity>(&text).unwrap(), key);
    for bad in [
        r#"["a","b",1,{"utc":"yesterday"}]"#,
        r#"["a","b",1,{"utc":"2026-11-22T07:53:44Z","x":1}]"#,
        r#"["a","b",1,{"at":"2026-11-22T07:53:44Z"}]"#,
    ] {
        assert!(key_from_json::<token_notice::Entity>(bad).is_err(), "{bad}");
    }
}

/// `token_notices` is keyed by (token, kind, horizon, expiry): a move
/// stopped after any of its batches resumes after that row, timestamp and all.
#[tokio::test]
async fn a_move_of_notices_stops_and_resumes_at_every_batch() {
    let source = memory_store().await;
    let base = chrono::DateTime::from_timestamp(1_795_334_024, 123_456_000).unwrap();
    let mut rows = Vec::new();
    for token in ["AAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBB"] {
        for (kind, horizon) in [
            ("expiring_soon", 604_800),
            ("expiring_soon", 86_400),
            ("expired", 0),
        ] {
            for days in [1, 2] {
                rows.push(token_notice::Model {
                    token_id: token.into(),
                    kind: kind.into(),
                    horizon_secs: horizon,
                    expires_at: base + chrono::Duration::days(days),
                    emitted: days == 1,
                    at: base,
                });
            }
        }
    }
    let n = rows.len() as u64;
    token_notice::Entity::insert_many(rows.into_iter().map(token_notice::ActiveModel::from))
        .exec_without_returning(&source.db)
        .await
        .unwrap();

    let target = memory_store().await;
    let options = CopyOptions { batch_rows: 1 };
    // Stop after every notice batch in turn: each run copies one more row.
    for expected in 1..=n {
        let mut seen = 0;
        let mut stop = |p: CopyProgress| {
            if p.table == Table::TokenNotices {
                seen = p.copied;
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let err = source
            .move_into(&target, &options, &mut stop)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("run the same command again"),
            "{err}"
        );
        assert_eq!(seen, expected);
    }
    let report = source
        .move_into(&target, &options, &mut |_| ControlFlow::Continue(()))
        .await
        .unwrap();
    assert!(report.verified(), "{report:?}");
    let notices = report
        .tables
        .iter()
        .find(|t| t.table == Table::TokenNotices)
        .unwrap();
    assert_eq!(notices.target.rows, n);
    assert_eq!(notices.resumed_rows, n);
}
