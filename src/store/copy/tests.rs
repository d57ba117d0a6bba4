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
