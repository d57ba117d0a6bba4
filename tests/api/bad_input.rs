//! Bad input for every RPC: INVALID_ARGUMENT naming the offending field in the
//! google.rpc.BadRequest details, and nothing written.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use tokend::pb::{self};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{Api, TestApp, mask, spawn_app, ts};

fn raw_ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos })
}

/// 9999-12-31T23:59:59Z, the latest accepted instant.
const MAX_SECONDS: i64 = 253_402_300_799;

fn future() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::hours(1)
}

/// Bad timestamps: before 1970, nanos out of range, after year 9999.
fn bad_timestamps() -> Vec<Option<Timestamp>> {
    let s = future().timestamp();
    vec![
        raw_ts(-1, 0),
        raw_ts(s, 1_000_000_000),
        raw_ts(s, -1),
        raw_ts(MAX_SECONDS + 1, 0),
        raw_ts(i64::MAX, 0),
    ]
}

fn violations(err: &tonic::Status) -> Vec<String> {
    err.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

/// INVALID_ARGUMENT with a violation on `field` (or a part of it: `field[...]`, `field.sub`).
#[track_caller]
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, field: &str, what: &str) {
    let err = match result {
        Ok(v) => panic!("{what}: expected INVALID_ARGUMENT on {field}, got OK {v:?}"),
        Err(e) => e,
    };
    assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
    let fields = violations(&err);
    assert!(
        fields.iter().any(|f| f == field
            || f.starts_with(&format!("{field}["))
            || f.starts_with(&format!("{field}."))),
        "{what}: expected a violation on {field}, got {fields:?} ({})",
        err.message()
    );
}

/// (tokens, events) the caller sees, revoked tokens included.
async fn counts(client: &Api, caller: &str) -> (usize, usize) {
    let req = pb::SearchRequest {
        include_revoked: true,
        ..Default::default()
    };
    let tokens = client.search_ids(caller, req).await.len();
    (tokens, client.events(caller, "").await.len())
}

async fn issue(client: &Api, caller: &str, req: pb::IssueRequest) -> Result<String, tonic::Status> {
    client.issue(caller, req).await.map(|r| r.token.unwrap().id)
}

fn base() -> pb::IssueRequest {
    pb::IssueRequest {
        name: "ok".into(),
        owner_id: "alice".into(),
        ..Default::default()
    }
}

fn metadata(n: usize, key_len: usize, value_len: usize) -> HashMap<String, String> {
    (0..n)
        .map(|i| {
            let mut k = format!("k{i}");
            while k.chars().count() < key_len {
                k.push('x');
            }
            (k, "v".repeat(value_len))
        })
        .collect()
}

#[tokio::test]
async fn issue_rejects_each_bad_field_and_writes_nothing() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let before = counts(&client, &p).await;

    let mut cases: Vec<(&str, pb::IssueRequest, &str)> = vec![
        (
            "empty name",
            pb::IssueRequest {
                name: String::new(),
                ..base()
            },
            "name",
        ),
        (
            "blank name",
            pb::IssueRequest {
                name: "   ".into(),
                ..base()
            },
            "name",
        ),
        (
            "101-char name",
            pb::IssueRequest {
                name: "n".repeat(101),
                ..base()
            },
            "name",
        ),
        (
            "101 multibyte chars",
            pb::IssueRequest {
                name: "é".repeat(101),
                ..base()
            },
            "name",
        ),
        (
            "multi-line name",
            pb::IssueRequest {
                name: "a\nb".into(),
                ..base()
            },
            "name",
        ),
        (
            "control char in name",
            pb::IssueRequest {
                name: "a\u{7}b".into(),
                ..base()
            },
            "name",
        ),
        (
            "1001-char description",
            pb::IssueRequest {
                description: "d".repeat(1001),
                ..base()
            },
            "description",
        ),
        (
            "65 modules",
            pb::IssueRequest {
                modules: (0..65).map(|i| format!("m{i}")).collect(),
                ..base()
            },
            "modules",
        ),
        (
            "empty module",
            pb::IssueRequest {
                modules: vec!["ok".into(), String::new()],
                ..base()
            },
            "modules",
        ),
        (
            "module with space",
            pb::IssueRequest {
                modules: vec!["has space".into()],
                ..base()
            },
            "modules",
        ),
        (
            "65-char module",
            pb::IssueRequest {
                modules: vec!["m".repeat(65)],
                ..base()
            },
            "modules",
        ),
        (
            "module with bad char",
            pb::IssueRequest {
                modules: vec!["a;b".into()],
                ..base()
            },
            "modules",
        ),
        (
            "unknown tokens: module",
            pb::IssueRequest {
                modules: vec!["tokens:foo".into()],
                ..base()
            },
            "modules",
        ),
        (
            "33-char api_version",
            pb::IssueRequest {
                api_version: "v".repeat(33),
                ..base()
            },
            "api_version",
        ),
        (
            "api_version with space",
            pb::IssueRequest {
                api_version: "v 2".into(),
                ..base()
            },
            "api_version",
        ),
        (
            "api_version with slash",
            pb::IssueRequest {
                api_version: "v/2".into(),
                ..base()
            },
            "api_version",
        ),
        (
            "33 metadata entries",
            pb::IssueRequest {
                metadata: metadata(33, 1, 1),
                ..base()
            },
            "metadata",
        ),
        (
            "empty metadata key",
            pb::IssueRequest {
                metadata: HashMap::from([(String::new(), "v".into())]),
                ..base()
            },
            "metadata",
        ),
        (
            "65-char metadata key",
            pb::IssueRequest {
                metadata: metadata(1, 65, 1),
                ..base()
            },
            "metadata",
        ),
        (
            "1025-char metadata value",
            pb::IssueRequest {
                metadata: metadata(1, 1, 1025),
                ..base()
            },
            "metadata",
        ),
        (
            "past expires_at",
            pb::IssueRequest {
                expires_at: Some(ts(Utc::now() - chrono::Duration::seconds(60))),
                ..base()
            },
            "expires_at",
        ),
        (
            "epoch expires_at",
            pb::IssueRequest {
                expires_at: raw_ts(0, 0),
                ..base()
            },
            "expires_at",
        ),
        (
            "bad account_id",
            pb::IssueRequest {
                account_id: "a b".into(),
                ..base()
            },
            "account_id",
        ),
        (
            "long owner_id",
            pb::IssueRequest {
                owner_id: "o".repeat(129),
                ..base()
            },
            "owner_id",
        ),
        (
            "bad owner_id",
            pb::IssueRequest {
                owner_id: "al/ice".into(),
                ..base()
            },
            "owner_id",
        ),
    ];
    for bad in bad_timestamps() {
        cases.push((
            "out-of-range expires_at",
            pb::IssueRequest {
                expires_at: bad,
                ..base()
            },
            "expires_at",
        ));
    }
    for (what, req, field) in cases {
        assert_invalid(issue(&client, &p, req).await, field, what);
    }
    assert_eq!(
        counts(&client, &p).await,
        before,
        "rejected Issues wrote something"
    );

    // The boundaries themselves are accepted.
    let max_expiry = issue(
        &client,
        &p,
        pb::IssueRequest {
            name: "é".repeat(100),
            description: "é".repeat(1000),
            modules: (0..64).map(|i| format!("{i}{}", "m".repeat(62))).collect(),
            api_version: "v".repeat(32),
            metadata: {
                let mut m = metadata(31, 64, 1024);
                // Limits count characters, not bytes.
                m.insert("é".repeat(64), "é".repeat(1024));
                m
            },
            expires_at: raw_ts(MAX_SECONDS, 999_999_000),
            ..base()
        },
    )
    .await
    .unwrap();
    let t = client
        .get(&p, pb::GetRequest { id: max_expiry })
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(t.name, "é".repeat(100));
    assert_eq!(t.modules.len(), 64);
    assert_eq!(t.metadata.len(), 32);
    assert_eq!(t.metadata["é".repeat(64).as_str()], "é".repeat(1024));
    assert_eq!(t.description, "é".repeat(1000));
    assert_eq!(t.expires_at.unwrap().seconds, MAX_SECONDS);
    app.stop().await;
}

#[tokio::test]
async fn update_rejects_bad_masks_and_fields_and_writes_nothing() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let id = issue(&client, &p, base()).await.unwrap();
    let original = client
        .get(&p, pb::GetRequest { id: id.clone() })
        .await
        .unwrap()
        .token
        .unwrap();
    let before = counts(&client, &p).await;
    let req = |paths: &[&str]| pb::UpdateRequest {
        id: id.clone(),
        name: "renamed".into(),
        update_mask: mask(paths),
        ..Default::default()
    };

    let mut cases: Vec<(&str, pb::UpdateRequest, &str)> = vec![
        (
            "no mask",
            pb::UpdateRequest {
                update_mask: None,
                ..req(&[])
            },
            "update_mask",
        ),
        ("empty mask", req(&[]), "update_mask"),
        ("unknown path", req(&["state"]), "update_mask"),
        (
            "unknown path after a good one",
            req(&["name", "secret"]),
            "update_mask",
        ),
        ("path with wrong case", req(&["Name"]), "update_mask"),
        (
            "empty id",
            pb::UpdateRequest {
                id: String::new(),
                ..req(&["name"])
            },
            "id",
        ),
        (
            "short id",
            pb::UpdateRequest {
                id: "abc".into(),
                ..req(&["name"])
            },
            "id",
        ),
        (
            "id with symbols",
            pb::UpdateRequest {
                id: "abcdefgh-jklmnop".into(),
                ..req(&["name"])
            },
            "id",
        ),
        (
            "empty name",
            pb::UpdateRequest {
                name: String::new(),
                ..req(&["name"])
            },
            "name",
        ),
        (
            "blank name",
            pb::UpdateRequest {
                name: " \t ".into(),
                ..req(&["name"])
            },
            "name",
        ),
        (
            "101-char name",
            pb::UpdateRequest {
                name: "n".repeat(101),
                ..req(&["name"])
            },
            "name",
        ),
        (
            "1001-char description",
            pb::UpdateRequest {
                description: "d".repeat(1001),
                ..req(&["description"])
            },
            "description",
        ),
        (
            "empty module",
            pb::UpdateRequest {
                modules: vec![String::new()],
                ..req(&["modules"])
            },
            "modules",
        ),
        (
            "65 modules",
            pb::UpdateRequest {
                modules: (0..65).map(|i| format!("m{i}")).collect(),
                ..req(&["modules"])
            },
            "modules",
        ),
        (
            "unknown tokens: module",
            pb::UpdateRequest {
                modules: vec!["tokens:nope".into()],
                ..req(&["modules"])
            },
            "modules",
        ),
        (
            "bad api_version",
            pb::UpdateRequest {
                api_version: "v 3".into(),
                ..req(&["api_version"])
            },
            "api_version",
        ),
        (
            "33 metadata entries",
            pb::UpdateRequest {
                metadata: metadata(33, 1, 1),
                ..req(&["metadata"])
            },
            "metadata",
        ),
        (
            "1025-char metadata value",
            pb::UpdateRequest {
                metadata: metadata(1, 1, 1025),
                ..req(&["metadata"])
            },
            "metadata",
        ),
        (
            "past expires_at",
            pb::UpdateRequest {
                expires_at: Some(ts(Utc::now() - chrono::Duration::seconds(1))),
                ..req(&["expires_at"])
            },
            "expires_at",
        ),
        // A bad field is rejected even when another masked field is fine.
        (
            "bad name next to good description",
            pb::UpdateRequest {
                name: String::new(),
                description: "fine".into(),
                ..req(&["description", "name"])
            },
            "name",
        ),
    ];
    for bad in bad_timestamps() {
        cases.push((
            "out-of-range expires_at",
            pb::UpdateRequest {
                expires_at: bad,
                ..req(&["expires_at"])
            },
            "expires_at",
        ));
    }
    for (what, r, field) in cases {
        let result = client.update(&p, r).await.map(|r| r.token.map(|t| t.id));
        assert_invalid(result, field, what);
    }
    assert_eq!(
        counts(&client, &p).await,
        before,
        "rejected Updates wrote something"
    );
    let now = client
        .get(&p, pb::GetRequest { id: id.clone() })
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(now.name, original.name);
    assert_eq!(now.description, original.description);
    assert_eq!(now.updated_at, original.updated_at);
    app.stop().await;
}

#[tokio::test]
async fn get_set_state_revoke_rotate_duplicate_reject_bad_input() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let id = issue(&client, &p, base()).await.unwrap();
    let before = counts(&client, &p).await;
    let bad_ids = [
        "",
        "abc",
        "abcdefghijklmnopq",
        "abcdefgh_jklmnop",
        "ábcdefghijklmno",
    ];

    for bad in bad_ids {
        let r = client.get(&p, pb::GetRequest { id: bad.into() }).await;
        assert_invalid(
            r.map(|r| r.token.map(|t| t.id)),
            "id",
            &format!("Get {bad:?}"),
        );
        let r = client.change_state(&p, bad, pb::State::Disabled, "").await;
        assert_invalid(r.map(|_| ()), "id", &format!("SetState {bad:?}"));
        let r = client.revoke_id(&p, bad, "").await;
        assert_invalid(r.map(|_| ()), "id", &format!("Revoke {bad:?}"));
        let r = client
            .rotate(
                &p,
                pb::RotateRequest {
                    id: bad.into(),
                    grace_period: None,
                },
            )
            .await;
        assert_invalid(r.map(|_| ()), "id", &format!("Rotate {bad:?}"));
        let r = client
            .duplicate(
                &p,
                pb::DuplicateRequest {
                    allowed_cidrs: Vec::new(),
                    id: bad.into(),
                    name: String::new(),
                },
            )
            .await;
        assert_invalid(r.map(|_| ()), "id", &format!("Duplicate {bad:?}"));
    }

    // SetState: only ACTIVE and DISABLED.
    for (state, what) in [
        (pb::State::Revoked as i32, "REVOKED"),
        (pb::State::Unspecified as i32, "UNSPECIFIED"),
        (4, "4"),
        (-1, "-1"),
        (99, "99"),
    ] {
        let r = client
            .set_state(
                &p,
                pb::SetStateRequest {
                    id: id.clone(),
                    state,
                    reason: String::new(),
                },
            )
            .await;
        assert_invalid(r.map(|_| ()), "state", &format!("SetState state={what}"));
    }
    let r = client
        .change_state(&p, &id, pb::State::Disabled, &"r".repeat(501))
        .await;
    assert_invalid(r.map(|_| ()), "reason", "SetState 501-char reason");

    // Revoke: no target, malformed value, over-long value, long reason.
    let r = client
        .revoke(
            &p,
            pb::RevokeRequest {
                target: None,
                reason: String::new(),
            },
        )
        .await;
    assert_invalid(r.map(|_| ()), "target", "Revoke without target");
    for bad in ["", "garbage", "tk_abc_def"] {
        let r = client.revoke_value(&p, bad, "").await;
        assert_invalid(r.map(|_| ()), "token", &format!("Revoke by value {bad:?}"));
    }
    let r = client.revoke_value(&p, &"a".repeat(513), "").await;
    assert_invalid(r.map(|_| ()), "token", "Revoke by 513-byte value");
    let r = client.revoke_id(&p, &id, &"r".repeat(501)).await;
    assert_invalid(r.map(|_| ()), "reason", "Revoke 501-char reason");

    // Rotate: negative or malformed grace, grace over the maximum.
    for (seconds, nanos) in [
        (-1, 0),
        (0, -1),
        (-5, -5),
        (0, 1_000_000_000),
        (7 * 24 * 3600 + 1, 0),
        (i64::MAX, 0),
    ] {
        let r = client
            .rotate(
                &p,
                pb::RotateRequest {
                    id: id.clone(),
                    grace_period: Some(prost_types::Duration { seconds, nanos }),
                },
            )
            .await;
        assert_invalid(
            r.map(|_| ()),
            "grace_period",
            &format!("Rotate grace {seconds}s {nanos}ns"),
        );
    }

    // Duplicate: bad names.
    for bad in ["   ".to_owned(), "n".repeat(101), "a\nb".to_owned()] {
        let r = client
            .duplicate(
                &p,
                pb::DuplicateRequest {
                    allowed_cidrs: Vec::new(),
                    id: id.clone(),
                    name: bad.clone(),
                },
            )
            .await;
        assert_invalid(r.map(|_| ()), "name", &format!("Duplicate name {bad:?}"));
    }

    assert_eq!(
        counts(&client, &p).await,
        before,
        "rejected calls wrote something"
    );
    let t = client
        .get(&p, pb::GetRequest { id: id.clone() })
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(t.state(), pb::State::Active);
    assert_eq!(t.previous_secret_expires_at, None);
    app.stop().await;
}

#[tokio::test]
async fn validate_rejects_oversized_values_and_bad_required_modules() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let (_, value) = app.token_for("acme", "alice", &["x"]).await;
    let validate = |token: String, required: Vec<String>| pb::ValidateRequest {
        client_ip: String::new(),
        token,
        required_modules: required,
    };

    for long in [
        "a".repeat(513),
        "é".repeat(257),
        format!("{value}{}", " ".repeat(600)),
    ] {
        let r = client.validate(&p, validate(long, vec![])).await;
        assert_invalid(r.map(|r| r.valid), "token", "Validate over 512 bytes");
    }
    for (required, what) in [
        (vec![String::new()], "empty"),
        (vec!["x".into(), String::new()], "empty second"),
        (vec!["has space".into()], "space"),
        (vec!["m".repeat(65)], "65 chars"),
    ] {
        let r = client.validate(&p, validate(value.clone(), required)).await;
        assert_invalid(
            r.map(|r| r.valid),
            "required_modules",
            &format!("Validate required {what}"),
        );
    }
    // Still fine.
    let v = client
        .validate(&p, validate(value, vec!["x".into()]))
        .await
        .unwrap();
    assert_eq!(v.reason(), pb::Reason::Valid);
    app.stop().await;
}

#[tokio::test]
async fn search_and_list_events_reject_bad_filters_and_pages() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let t = Some(ts(Utc::now()));
    let s = pb::SearchRequest::default;

    let mut cases: Vec<(&str, pb::SearchRequest, &str)> = vec![
        (
            "page_size -1",
            pb::SearchRequest {
                page_size: -1,
                ..s()
            },
            "page_size",
        ),
        (
            "page_size 501",
            pb::SearchRequest {
                page_size: 501,
                ..s()
            },
            "page_size",
        ),
        (
            "garbage page_token",
            pb::SearchRequest {
                page_token: "garbage".into(),
                ..s()
            },
            "page_token",
        ),
        (
            "state UNSPECIFIED",
            pb::SearchRequest {
                states: vec![0],
                ..s()
            },
            "states",
        ),
        (
            "unknown state",
            pb::SearchRequest {
                states: vec![1, 42],
                ..s()
            },
            "states",
        ),
        (
            "empty module string is no filter, but a bad module is",
            pb::SearchRequest {
                module: "a b".into(),
                ..s()
            },
            "module",
        ),
        (
            "65-char module",
            pb::SearchRequest {
                module: "m".repeat(65),
                ..s()
            },
            "module",
        ),
        (
            "bad owner_id",
            pb::SearchRequest {
                owner_id: "a b".into(),
                ..s()
            },
            "owner_id",
        ),
        (
            "bad account_id",
            pb::SearchRequest {
                account_id: "a/b".into(),
                ..s()
            },
            "account_id",
        ),
        (
            "bad created_by",
            pb::SearchRequest {
                created_by: "a b".into(),
                ..s()
            },
            "created_by",
        ),
        (
            "query over 512 bytes",
            pb::SearchRequest {
                query: "q".repeat(513),
                ..s()
            },
            "query",
        ),
        (
            "created_after == created_before",
            pb::SearchRequest {
                created_after: t,
                created_before: t,
                ..s()
            },
            "created_after",
        ),
        (
            "created_after > created_before",
            pb::SearchRequest {
                created_after: Some(ts(Utc::now())),
                created_before: raw_ts(1_000_000, 0),
                ..s()
            },
            "created_after",
        ),
    ];
    for bad in bad_timestamps() {
        cases.push((
            "created_after out of range",
            pb::SearchRequest {
                created_after: bad,
                ..s()
            },
            "created_after",
        ));
        cases.push((
            "created_before out of range",
            pb::SearchRequest {
                created_before: bad,
                ..s()
            },
            "created_before",
        ));
        cases.push((
            "last_used_after out of range",
            pb::SearchRequest {
                last_used_after: bad,
                ..s()
            },
            "last_used_after",
        ));
        cases.push((
            "last_used_before out of range",
            pb::SearchRequest {
                last_used_before: bad,
                ..s()
            },
            "last_used_before",
        ));
    }
    for (what, req, field) in cases {
        let r = client.search(&p, req).await.map(|r| r.tokens.len());
        assert_invalid(r, field, what);
    }
    // Empty strings are "no filter", not errors.
    let all = client.search(&p, s()).await.unwrap();
    assert_eq!(all.tokens.len(), 1);

    let e = pb::ListEventsRequest::default;
    let cases: Vec<(&str, pb::ListEventsRequest, &str)> = vec![
        (
            "page_size -1",
            pb::ListEventsRequest {
                page_size: -1,
                ..e()
            },
            "page_size",
        ),
        (
            "page_size 501",
            pb::ListEventsRequest {
                page_size: 501,
                ..e()
            },
            "page_size",
        ),
        (
            "garbage page_token",
            pb::ListEventsRequest {
                page_token: "garbage".into(),
                ..e()
            },
            "page_token",
        ),
        (
            "malformed token_id",
            pb::ListEventsRequest {
                token_id: "short".into(),
                ..e()
            },
            "token_id",
        ),
        (
            "bad account_id",
            pb::ListEventsRequest {
                account_id: "a b".into(),
                ..e()
            },
            "account_id",
        ),
    ];
    for (what, req, field) in cases {
        let r = client.list_events(&p, req).await.map(|r| r.events.len());
        assert_invalid(r, field, what);
    }
    // A page token of one event listing replayed with another filter.
    let _ = issue(&client, &p, base()).await.unwrap();
    let first = client
        .list_events(
            &p,
            pb::ListEventsRequest {
                page_size: 1,
                ..e()
            },
        )
        .await
        .unwrap();
    assert!(!first.next_page_token.is_empty());
    let r = client
        .list_events(
            &p,
            pb::ListEventsRequest {
                page_size: 1,
                account_id: "globex".into(),
                page_token: first.next_page_token.clone(),
                ..e()
            },
        )
        .await
        .map(|r| r.events.len());
    assert_invalid(r, "page_token", "ListEvents page token with another filter");
    // And a search page token is no event page token.
    let sp = client
        .search(
            &p,
            pb::SearchRequest {
                page_size: 1,
                ..s()
            },
        )
        .await
        .unwrap();
    assert!(!sp.next_page_token.is_empty());
    let r = client
        .list_events(
            &p,
            pb::ListEventsRequest {
                page_size: 1,
                page_token: sp.next_page_token.clone(),
                ..e()
            },
        )
        .await
        .map(|r| r.events.len());
    assert_invalid(r, "page_token", "ListEvents with a Search page token");
    let r = client
        .search(
            &p,
            pb::SearchRequest {
                page_size: 1,
                page_token: first.next_page_token,
                ..s()
            },
        )
        .await
        .map(|r| r.tokens.len());
    assert_invalid(r, "page_token", "Search with a ListEvents page token");
    app.stop().await;
}

#[tokio::test]
async fn requests_without_valid_credentials_are_unauthenticated_before_input_checks() {
    let app: TestApp = spawn_app().await;
    let client = app.api.clone();
    // Bad input and no credential: the credential is checked first.
    let err = client
        .raw()
        .issue(tonic::Request::new(pb::IssueRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .issue("garbage", pb::IssueRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    app.stop().await;
}
