//! Every RPC at least once, with every returned field checked: a token's whole
//! life from Issue to Revoke, and the audit trail it leaves.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use tokend::pb::{self};
use tonic::Code;

use crate::helpers::{id_of, mask, spawn_app, ts};

fn at(t: &Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.seconds, t.nanos as u32).unwrap()
}

fn hint_of(value: &str) -> String {
    format!("tk_{}_...{}", id_of(value), &value[value.len() - 4..])
}

fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn close_to(t: &Timestamp, expected: DateTime<Utc>, tolerance_ms: i64) {
    let diff = (at(t) - expected).num_milliseconds().abs();
    assert!(
        diff <= tolerance_ms,
        "{} is {diff} ms away from {expected}",
        at(t)
    );
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

fn kinds(events: &[pb::Event]) -> Vec<pb::EventKind> {
    events.iter().map(pb::Event::kind).collect()
}

#[tokio::test]
async fn issue_echoes_every_field_and_get_returns_the_same_record() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let expires = Utc::now() + chrono::Duration::days(1);
    let expires = DateTime::from_timestamp(expires.timestamp(), 123_456_000).unwrap();
    let before = Utc::now();
    let issued = app
        .issue_as(
            &app.platform,
            pb::IssueRequest {
                allowed_cidrs: Vec::new(),
                account_id: "acme".into(),
                owner_id: "alice".into(),
                name: "ci deploy".into(),
                description: "deploys from CI".into(),
                modules: vec![
                    "billing:read".into(),
                    "billing:write".into(),
                    "billing:read".into(),
                ],
                api_version: "2024-06-01".into(),
                metadata: meta(&[("team", "payments"), ("env", "prod")]),
                expires_at: Some(ts(expires)),
            },
        )
        .await;
    let after = Utc::now();
    let t = issued.token.clone().unwrap();
    let secret = issued.secret.clone();

    assert_eq!(t.id.len(), 16);
    assert!(t.id.bytes().all(|b| b.is_ascii_alphanumeric()), "{}", t.id);
    assert!(secret.starts_with(&format!("tk_{}_", t.id)));
    assert_eq!(secret.len(), 2 + 1 + 16 + 1 + 44 + 6);
    assert_eq!(t.account_id, "acme");
    assert_eq!(t.owner_id, "alice");
    assert_eq!(t.created_by, "ops");
    assert_eq!(t.updated_by, "ops");
    assert_eq!(t.name, "ci deploy");
    assert_eq!(t.description, "deploys from CI");
    assert_eq!(
        sorted(&t.modules),
        vec!["billing:read".to_owned(), "billing:write".to_owned()],
        "duplicates are dropped"
    );
    assert_eq!(t.api_version, "2024-06-01");
    assert_eq!(t.metadata, meta(&[("team", "payments"), ("env", "prod")]));
    assert_eq!(t.state(), pb::State::Active);
    assert!(!t.expired);
    assert_eq!(t.hint, hint_of(&secret));
    assert!(!t.hint.contains(&secret[20..60]));
    let created = at(t.created_at.as_ref().unwrap());
    assert!(
        created >= before - chrono::Duration::seconds(1)
            && created <= after + chrono::Duration::seconds(1)
    );
    assert_eq!(t.updated_at, t.created_at);
    assert_eq!(t.last_used_at, None);
    assert_eq!(t.expires_at, Some(ts(expires)));
    assert_eq!(t.disabled_at, None);
    assert_eq!(t.revoked_at, None);
    assert_eq!(t.state_reason, "");
    assert_eq!(t.previous_secret_expires_at, None);

    // Get returns the same record (nothing has used the token yet).
    let got = app.token(&app.platform, &t.id).await.unwrap();
    assert_eq!(got, t);

    // Validate sees the same fields.
    let v = app
        .validate_with(&app.platform, &secret, &["billing:write"])
        .await;
    assert!(v.valid);
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(v.token_id, t.id);
    assert_eq!(v.account_id, "acme");
    assert_eq!(v.owner_id, "alice");
    assert_eq!(sorted(&v.modules), sorted(&t.modules));
    assert_eq!(v.api_version, "2024-06-01");
    assert_eq!(v.metadata, t.metadata);
    assert_eq!(v.expires_at, Some(ts(expires)));

    // The new token works as a credential of its own (no tokens:* modules,
    // so Search is refused, but the credential itself is accepted).
    let err = client
        .get(&secret, pb::GetRequest { id: t.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    app.stop().await;
}

#[tokio::test]
async fn issue_defaults_account_owner_and_created_by_to_the_caller() {
    let app = spawn_app().await;
    let (carol_id, carol) = app.token_for("globex", "carol", &["tokens:self"]).await;
    let issued = app
        .issue_as(
            &carol,
            pb::IssueRequest {
                name: "mine".into(),
                ..Default::default()
            },
        )
        .await;
    let t = issued.token.unwrap();
    assert_eq!(t.account_id, "globex");
    assert_eq!(t.owner_id, "carol");
    assert_eq!(t.created_by, "carol");
    assert_eq!(t.description, "");
    assert!(t.modules.is_empty());
    assert_eq!(t.api_version, "");
    assert!(t.metadata.is_empty());
    assert_eq!(t.expires_at, None);
    assert_ne!(t.id, carol_id);
    // The caller can read it back; the new value validates.
    let got = app.token(&carol, &t.id).await.unwrap();
    assert_eq!(got.id, t.id);
    let v = app.validate_with(&app.platform, &issued.secret, &[]).await;
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(v.account_id, "globex");
    assert_eq!(v.expires_at, None);
    app.stop().await;
}

#[tokio::test]
async fn update_changes_only_the_masked_fields() {
    let app = spawn_app().await;
    let (_, boss) = app.token_for("acme", "boss", &["tokens:admin"]).await;
    let expires = DateTime::from_timestamp(Utc::now().timestamp() + 3600, 0).unwrap();
    let issued = app
        .issue_as(
            &app.platform,
            pb::IssueRequest {
                owner_id: "alice".into(),
                name: "orig".into(),
                description: "d0".into(),
                modules: vec!["billing:read".into()],
                api_version: "v1".into(),
                metadata: meta(&[("a", "1")]),
                expires_at: Some(ts(expires)),
                ..Default::default()
            },
        )
        .await;
    let id = issued.token.as_ref().unwrap().id.clone();
    let value = issued.secret.clone();
    assert_eq!(
        app.validate_with(&app.platform, &value, &[])
            .await
            .api_version,
        "v1"
    );
    // Every other field carries a different value, and must be ignored.
    let noise = |paths: &[&str]| pb::UpdateRequest {
        allowed_cidrs: Vec::new(),
        id: id.clone(),
        name: "NOISE".into(),
        description: "NOISE".into(),
        modules: vec!["noise".into()],
        api_version: "noise".into(),
        metadata: meta(&[("noise", "x")]),
        expires_at: None,
        update_mask: mask(paths),
    };
    let before = app.token(&boss, &id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;

    // name
    let t = app
        .update_token(
            &boss,
            pb::UpdateRequest {
                name: "renamed".into(),
                ..noise(&["name"])
            },
        )
        .await
        .unwrap();
    assert_eq!(t.name, "renamed");
    assert_eq!(t.description, "d0");
    assert_eq!(t.modules, vec!["billing:read".to_owned()]);
    assert_eq!(t.api_version, "v1");
    assert_eq!(t.metadata, meta(&[("a", "1")]));
    assert_eq!(
        t.expires_at,
        Some(ts(expires)),
        "expires_at is not in the mask"
    );
    assert_eq!(t.updated_by, "boss");
    assert_eq!(t.created_by, "ops");
    assert_eq!(t.created_at, before.created_at);
    assert!(at(t.updated_at.as_ref().unwrap()) > at(before.updated_at.as_ref().unwrap()));
    assert_eq!(app.token(&boss, &id).await.unwrap().name, "renamed");

    // description
    let t = app
        .update_token(
            &boss,
            pb::UpdateRequest {
                description: "d1".into(),
                ..noise(&["description"])
            },
        )
        .await
        .unwrap();
    assert_eq!((t.name.as_str(), t.description.as_str()), ("renamed", "d1"));
    assert_eq!(t.api_version, "v1");

    // modules: effective for Validate at once.
    assert_eq!(
        app.validate_with(&app.platform, &value, &["billing:write"])
            .await
            .reason(),
        pb::Reason::MissingModules
    );
    let t = app
        .update_token(
            &boss,
            pb::UpdateRequest {
                modules: vec!["billing:read".into(), "billing:write".into()],
                ..noise(&["modules"])
            },
        )
        .await
        .unwrap();
    assert_eq!(
        sorted(&t.modules),
        vec!["billing:read".to_owned(), "billing:write".to_owned()]
    );
    assert_eq!(t.description, "d1");
    let v = app
        .validate_with(&app.platform, &value, &["billing:write"])
        .await;
    assert_eq!(v.reason(), pb::Reason::Valid);

    // api_version: "upgrade version".
    let t = app
        .update_token(
            &boss,
            pb::UpdateRequest {
                api_version: "v2".into(),
                ..noise(&["api_version"])
            },
        )
        .await
        .unwrap();
    assert_eq!(t.api_version, "v2");
    assert_eq!(t.metadata, meta(&[("a", "1")]));
    assert_eq!(
        app.validate_with(&app.platform, &value, &[])
            .await
            .api_version,
        "v2"
    );

    // metadata: replaced as a whole.
    let t = app
        .update_token(
            &boss,
            pb::UpdateRequest {
                metadata: meta(&[("b", "2"), ("c", "3")]),
                ..noise(&["metadata"])
            },
        )
        .await
        .unwrap();
    assert_eq!(t.metadata, meta(&[("b", "2"), ("c", "3")]));
    assert_eq!(
        app.validate_with(&app.platform, &value, &[]).await.metadata,
        meta(&[("b", "2"), ("c", "3")])
    );

    // expires_at: moved.
    let later = DateTime::from_timestamp(Utc::now().timestamp() + 7200, 500_000).unwrap();
    let t = app
        .update_token(
            &boss,
            pb::UpdateRequest {
                expires_at: Some(ts(later)),
                ..noise(&["expires_at"])
            },
        )
        .await
        .unwrap();
    assert_eq!(t.expires_at, Some(ts(later)));
    assert_eq!(t.api_version, "v2");
    assert_eq!(
        app.validate_with(&app.platform, &value, &[])
            .await
            .expires_at,
        Some(ts(later))
    );

    // expires_at in the mask but unset: cleared.
    let t = app
        .update_token(&boss, noise(&["expires_at"]))
        .await
        .unwrap();
    assert_eq!(t.expires_at, None);
    assert!(!t.expired);
    assert_eq!(app.token(&boss, &id).await.unwrap().expires_at, None);
    assert_eq!(
        app.validate_with(&app.platform, &value, &[])
            .await
            .expires_at,
        None
    );

    // Several paths at once.
    let t = app
        .update_token(
            &boss,
            pb::UpdateRequest {
                name: "final".into(),
                description: "d2".into(),
                ..noise(&["name", "description"])
            },
        )
        .await
        .unwrap();
    assert_eq!((t.name.as_str(), t.description.as_str()), ("final", "d2"));
    assert_eq!(t.api_version, "v2");

    // No actual change: OK, same record, no event.
    let n_events = app.events(&boss, &id).await.len();
    let same = app
        .update_token(
            &boss,
            pb::UpdateRequest {
                name: "final".into(),
                ..noise(&["name"])
            },
        )
        .await
        .unwrap();
    assert_eq!(same.name, "final");
    assert_eq!(same.updated_at, t.updated_at);
    let evs = app.events(&boss, &id).await;
    assert_eq!(evs.len(), n_events, "a no-op update must not add an event");
    // One UPDATED event per real change, each naming its field.
    let updated: Vec<&pb::Event> = evs
        .iter()
        .filter(|e| e.kind() == pb::EventKind::Updated)
        .collect();
    assert_eq!(updated.len(), 8);
    assert!(updated[0].detail.contains("name") && updated[0].detail.contains("description"));
    assert!(updated[1].detail.contains("expires_at"));
    assert!(updated[3].detail.contains("metadata"));
    assert!(updated[4].detail.contains("api_version"));
    assert!(updated[5].detail.contains("modules"));
    assert!(updated[6].detail.contains("description"));
    assert!(updated[7].detail.contains("name"));
    assert!(updated.iter().all(|e| e.actor_owner_id == "boss"));

    // Granting a tokens:* module the caller does not hold: PERMISSION_DENIED,
    // nothing changes. (admin does not imply validate.)
    for module in ["tokens:platform", "tokens:validate"] {
        let err = app
            .update_token(
                &boss,
                pb::UpdateRequest {
                    modules: vec!["billing:read".into(), module.into()],
                    ..noise(&["modules"])
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{module}: {err:?}");
    }
    let ok = app
        .update_token(
            &boss,
            pb::UpdateRequest {
                modules: vec![
                    "billing:read".into(),
                    "billing:write".into(),
                    "tokens:self".into(),
                ],
                ..noise(&["modules"])
            },
        )
        .await
        .unwrap();
    assert!(ok.modules.contains(&"tokens:self".to_owned()));
    assert_eq!(app.events(&boss, &id).await.len(), n_events + 1);

    // Revoked: no more updates.
    app.revoke_id(&boss, &id, "").await.unwrap();
    let err = app
        .update_token(
            &boss,
            pb::UpdateRequest {
                name: "zombie".into(),
                ..noise(&["name"])
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(app.token(&boss, &id).await.unwrap().name, "final");
    app.stop().await;
}

#[tokio::test]
async fn set_state_disables_enables_and_revoked_is_final() {
    let app = spawn_app().await;
    let (id, value) = app.token_for("acme", "alice", &["billing:read"]).await;
    assert_eq!(
        app.validate_with(&app.platform, &value, &[]).await.reason(),
        pb::Reason::Valid
    );

    let t = app
        .change_state(&app.platform, &id, pb::State::Disabled, "suspicious")
        .await
        .unwrap();
    assert_eq!(t.state(), pb::State::Disabled);
    assert_eq!(t.state_reason, "suspicious");
    close_to(t.disabled_at.as_ref().unwrap(), Utc::now(), 2000);
    assert_eq!(t.revoked_at, None);
    assert_eq!(t.updated_by, "ops");
    let got = app.token(&app.platform, &id).await.unwrap();
    assert_eq!(got.state(), pb::State::Disabled);
    assert_eq!(got.disabled_at, t.disabled_at);
    assert_eq!(got.state_reason, "suspicious");
    let v = app.validate_with(&app.platform, &value, &[]).await;
    assert!(!v.valid);
    assert_eq!(v.reason(), pb::Reason::Disabled);

    // Same state again: OK, unchanged, no event.
    let n = app.events(&app.platform, &id).await.len();
    let again = app
        .change_state(&app.platform, &id, pb::State::Disabled, "suspicious")
        .await
        .unwrap();
    assert_eq!(again.state(), pb::State::Disabled);
    assert_eq!(again.disabled_at, t.disabled_at);
    assert_eq!(app.events(&app.platform, &id).await.len(), n);

    let t = app
        .change_state(&app.platform, &id, pb::State::Active, "cleared")
        .await
        .unwrap();
    assert_eq!(t.state(), pb::State::Active);
    assert_eq!(t.disabled_at, None);
    assert_eq!(t.state_reason, "cleared");
    assert_eq!(
        app.validate_with(&app.platform, &value, &[]).await.reason(),
        pb::Reason::Valid
    );
    let n2 = app.events(&app.platform, &id).await.len();
    assert_eq!(n2, n + 1);
    app.change_state(&app.platform, &id, pb::State::Active, "")
        .await
        .unwrap();
    assert_eq!(app.events(&app.platform, &id).await.len(), n2);

    // Revoked tokens can be neither enabled nor disabled.
    app.revoke_id(&app.platform, &id, "gone").await.unwrap();
    for state in [pb::State::Active, pb::State::Disabled] {
        let err = app
            .change_state(&app.platform, &id, state, "")
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{state:?}: {err:?}");
    }
    let t = app.token(&app.platform, &id).await.unwrap();
    assert_eq!(t.state(), pb::State::Revoked);
    assert_eq!(t.state_reason, "gone");
    assert_eq!(
        app.validate_with(&app.platform, &value, &[]).await.reason(),
        pb::Reason::Revoked
    );
    app.stop().await;
}

#[tokio::test]
async fn revoke_by_id_and_by_value_leaves_idempotent_tombstones() {
    let app = spawn_app().await;
    let (_, stranger) = app.token_for("globex", "eve", &["tokens:self"]).await;

    // By id, on a disabled token.
    let (id, value) = app.token_for("acme", "alice", &["billing:read"]).await;
    app.change_state(&app.platform, &id, pb::State::Disabled, "x")
        .await
        .unwrap();
    let before = Utc::now();
    let t = app
        .revoke_id(&app.platform, &id, "compromised")
        .await
        .unwrap();
    assert_eq!(t.id, id);
    assert_eq!(t.state(), pb::State::Revoked);
    assert_eq!(t.state_reason, "compromised");
    close_to(t.revoked_at.as_ref().unwrap(), before, 2000);
    assert_eq!(t.updated_by, "ops");
    assert_eq!(t.name, "alice token");
    assert_eq!(t.hint, hint_of(&value));
    // The tombstone stays readable.
    let got = app.token(&app.platform, &id).await.unwrap();
    assert_eq!(got.state(), pb::State::Revoked);
    assert_eq!(got.revoked_at, t.revoked_at);
    // Idempotent: same tombstone, no second event.
    let again = app
        .revoke_id(&app.platform, &id, "other reason")
        .await
        .unwrap();
    assert_eq!(again.state(), pb::State::Revoked);
    assert_eq!(again.revoked_at, t.revoked_at);
    let evs = app.events(&app.platform, &id).await;
    assert_eq!(
        kinds(&evs),
        vec![
            pb::EventKind::Revoked,
            pb::EventKind::Disabled,
            pb::EventKind::Issued
        ]
    );
    assert_eq!(
        app.validate_with(&app.platform, &value, &[]).await.reason(),
        pb::Reason::Revoked
    );

    // By value, by a caller of another account that merely holds the value.
    let (id2, value2) = app.token_for("acme", "bob", &["billing:read"]).await;
    assert_eq!(
        app.validate_with(&app.platform, &value2, &[])
            .await
            .reason(),
        pb::Reason::Valid
    );
    let t2 = app
        .revoke_value(&stranger, &value2, "leaked")
        .await
        .unwrap();
    assert_eq!(t2.id, id2);
    assert_eq!(t2.state(), pb::State::Revoked);
    assert!(t2.revoked_at.is_some());
    assert_eq!(t2.state_reason, "leaked");
    let again = app
        .revoke_value(&stranger, &value2, "leaked")
        .await
        .unwrap();
    assert_eq!(again.revoked_at, t2.revoked_at);
    let evs = app.events(&app.platform, &id2).await;
    assert_eq!(
        kinds(&evs),
        vec![pb::EventKind::Revoked, pb::EventKind::Issued]
    );
    assert_eq!(evs[0].actor_owner_id, "eve");
    assert_eq!(
        app.validate_with(&app.platform, &value2, &[])
            .await
            .reason(),
        pb::Reason::Revoked
    );

    // A token can revoke itself with its own value as the credential.
    let (id3, value3) = app.token_for("acme", "carl", &[]).await;
    let t3 = app.revoke_value(&value3, &value3, "leaked").await.unwrap();
    assert_eq!(t3.id, id3);
    assert_eq!(t3.state(), pb::State::Revoked);

    // The previous value, still within its rotate grace, proves possession too.
    let (id5, value5) = app.token_for("acme", "erin", &[]).await;
    let r5 = app.rotate_id(&app.platform, &id5, secs(60)).await.unwrap();
    let t5 = app
        .revoke_value(&stranger, &value5, "leaked")
        .await
        .unwrap();
    assert_eq!(t5.id, id5);
    assert_eq!(t5.state(), pb::State::Revoked);
    let v = app.validate_with(&app.platform, &r5.secret, &[]).await;
    assert_eq!(v.reason(), pb::Reason::Revoked);
    assert!(!app.validate_with(&app.platform, &value5, &[]).await.valid);

    // A wrong secret for a known id, or an unknown id: NOT_FOUND, nothing revoked.
    let (id4, value4) = app.token_for("acme", "dora", &[]).await;
    let wrong = tokend::domain::TokenValue::generate_for(
        "tk",
        tokend::domain::TokenId::parse(&id4).unwrap(),
    )
    .unwrap()
    .expose();
    let err = app
        .revoke_value(&stranger, &wrong, "leaked")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let unknown = tokend::domain::TokenValue::generate("tk").unwrap().expose();
    let err = app
        .revoke_value(&stranger, &unknown, "leaked")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(
        app.token(&app.platform, &id4).await.unwrap().state(),
        pb::State::Active
    );
    assert_eq!(
        app.validate_with(&app.platform, &value4, &[])
            .await
            .reason(),
        pb::Reason::Valid
    );
    // Nonexistent id: NOT_FOUND.
    let err = app
        .revoke_id(&app.platform, "AAAAAAAAAAAAAAAA", "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    app.stop().await;
}

#[tokio::test]
async fn rotate_without_grace_kills_the_old_value_at_once() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let (id, old) = app.token_for("acme", "alice", &["billing:read"]).await;
    // Make sure the old value sits in the Validate cache first.
    assert_eq!(
        app.validate_with(&app.platform, &old, &[]).await.reason(),
        pb::Reason::Valid
    );
    let before = app.token(&app.platform, &id).await.unwrap();

    let r = app.rotate_id(&app.platform, &id, None).await.unwrap();
    let t = r.token.unwrap();
    assert_eq!(t.id, id);
    assert_ne!(r.secret, old);
    assert!(r.secret.starts_with(&format!("tk_{id}_")));
    assert_eq!(t.hint, hint_of(&r.secret));
    assert_eq!(t.previous_secret_expires_at, None);
    assert_eq!(t.state(), pb::State::Active);
    assert_eq!(t.name, before.name);
    assert_eq!(t.modules, before.modules);
    assert_eq!(t.created_at, before.created_at);

    let v = app.validate_with(&app.platform, &old, &[]).await;
    assert!(!v.valid);
    assert_eq!(v.reason(), pb::Reason::Unknown);
    assert_eq!(v.token_id, "");
    let v = app
        .validate_with(&app.platform, &r.secret, &["billing:read"])
        .await;
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(v.token_id, id);

    // An explicit zero grace behaves the same.
    let r2 = app.rotate_id(&app.platform, &id, secs(0)).await.unwrap();
    assert_eq!(r2.token.unwrap().previous_secret_expires_at, None);
    assert_eq!(
        app.validate_with(&app.platform, &r.secret, &[])
            .await
            .reason(),
        pb::Reason::Unknown
    );
    assert_eq!(
        app.validate_with(&app.platform, &r2.secret, &[])
            .await
            .reason(),
        pb::Reason::Valid
    );
    // The old credential no longer authenticates RPCs either.
    let err = client
        .get(&old, pb::GetRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let evs = app.events(&app.platform, &id).await;
    assert_eq!(
        kinds(&evs),
        vec![
            pb::EventKind::Rotated,
            pb::EventKind::Rotated,
            pb::EventKind::Issued
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn rotate_with_grace_keeps_the_old_value_until_the_grace_ends() {
    let app = spawn_app().await;
    let (id, old) = app.token_for("acme", "alice", &["billing:read"]).await;
    assert_eq!(
        app.validate_with(&app.platform, &old, &[]).await.reason(),
        pb::Reason::Valid
    );

    let before = Utc::now();
    let r = app.rotate_id(&app.platform, &id, secs(1)).await.unwrap();
    let t = r.token.unwrap();
    let grace_end = at(t.previous_secret_expires_at.as_ref().unwrap());
    close_to(
        t.previous_secret_expires_at.as_ref().unwrap(),
        before + chrono::Duration::seconds(1),
        1000,
    );
    assert_eq!(
        app.token(&app.platform, &id)
            .await
            .unwrap()
            .previous_secret_expires_at,
        t.previous_secret_expires_at
    );
    // During the grace: both values validate.
    let v = app
        .validate_with(&app.platform, &old, &["billing:read"])
        .await;
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(v.token_id, id);
    assert_eq!(
        app.validate_with(&app.platform, &r.secret, &[])
            .await
            .reason(),
        pb::Reason::Valid
    );
    let evs = app.events(&app.platform, &id).await;
    assert_eq!(evs[0].kind(), pb::EventKind::Rotated);

    // After it: only the new one.
    let wait = (grace_end - Utc::now()).num_milliseconds().max(0) as u64 + 150;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let v = app.validate_with(&app.platform, &old, &[]).await;
    assert_eq!(v.reason(), pb::Reason::Unknown);
    assert_eq!(v.token_id, "");
    assert_eq!(
        app.validate_with(&app.platform, &r.secret, &[])
            .await
            .reason(),
        pb::Reason::Valid
    );
    app.stop().await;
}

#[tokio::test]
async fn rotate_grace_is_bounded_and_revoked_cannot_rotate_but_disabled_can() {
    let app = spawn_app().await;
    let (id, _) = app.token_for("acme", "alice", &[]).await;
    let week = 7 * 24 * 3600;
    let err = app
        .rotate_id(&app.platform, &id, secs(week + 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let r = app.rotate_id(&app.platform, &id, secs(week)).await.unwrap();
    close_to(
        r.token
            .unwrap()
            .previous_secret_expires_at
            .as_ref()
            .unwrap(),
        Utc::now() + chrono::Duration::seconds(week),
        3000,
    );

    // Disabled: rotates, stays disabled.
    app.change_state(&app.platform, &id, pb::State::Disabled, "")
        .await
        .unwrap();
    let r = app.rotate_id(&app.platform, &id, None).await.unwrap();
    assert_eq!(r.token.unwrap().state(), pb::State::Disabled);
    assert_eq!(
        app.validate_with(&app.platform, &r.secret, &[])
            .await
            .reason(),
        pb::Reason::Disabled
    );

    app.revoke_id(&app.platform, &id, "").await.unwrap();
    let err = app.rotate_id(&app.platform, &id, None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        app.validate_with(&app.platform, &r.secret, &[])
            .await
            .reason(),
        pb::Reason::Revoked
    );
    let err = app
        .rotate_id(&app.platform, "AAAAAAAAAAAAAAAA", None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    app.stop().await;
}

#[tokio::test]
async fn duplicate_copies_the_token_under_a_new_id_and_secret() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let (_, boss) = app.token_for("acme", "boss", &["tokens:admin"]).await;
    let source = app
        .issue_as(
            &app.platform,
            pb::IssueRequest {
                owner_id: "alice".into(),
                name: "reporting".into(),
                description: "nightly reports".into(),
                modules: vec!["billing:read".into(), "reports/*".into()],
                api_version: "v3".into(),
                metadata: meta(&[("team", "bi")]),
                ..Default::default()
            },
        )
        .await;
    let src = source.token.unwrap();
    assert_eq!(
        app.validate_with(&app.platform, &source.secret, &[])
            .await
            .reason(),
        pb::Reason::Valid
    );
    let src_before = app.token(&boss, &src.id).await.unwrap();

    let dup = client
        .duplicate(
            &boss,
            pb::DuplicateRequest {
                allowed_cidrs: Vec::new(),
                id: src.id.clone(),
                name: String::new(),
            },
        )
        .await
        .unwrap();
    let d = dup.token.unwrap();
    assert_ne!(d.id, src.id);
    assert_eq!(d.name, "reporting (copy)");
    assert_eq!(d.account_id, "acme");
    assert_eq!(d.owner_id, "alice");
    assert_eq!(d.created_by, "boss");
    assert_eq!(d.description, "nightly reports");
    assert_eq!(sorted(&d.modules), sorted(&src.modules));
    assert_eq!(d.api_version, "v3");
    assert_eq!(d.metadata, meta(&[("team", "bi")]));
    assert_eq!(d.state(), pb::State::Active);
    assert_eq!(d.revoked_at, None);
    assert_eq!(d.last_used_at, None);
    assert!(dup.secret.starts_with(&format!("tk_{}_", d.id)));
    assert_ne!(dup.secret, source.secret);
    assert_eq!(d.hint, hint_of(&dup.secret));
    assert!(at(d.created_at.as_ref().unwrap()) >= at(src.created_at.as_ref().unwrap()));
    assert_eq!(
        app.token(&boss, &d.id).await.unwrap().name,
        "reporting (copy)"
    );

    let v = app
        .validate_with(&app.platform, &dup.secret, &["reports/*"])
        .await;
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(v.token_id, d.id);
    assert_eq!(v.owner_id, "alice");
    assert_eq!(v.api_version, "v3");
    // Source unaffected.
    let v = app.validate_with(&app.platform, &source.secret, &[]).await;
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(v.token_id, src.id);
    let src_after = app.token(&boss, &src.id).await.unwrap();
    assert_eq!(src_after.name, src_before.name);
    assert_eq!(src_after.updated_at, src_before.updated_at);
    assert_eq!(src_after.state(), pb::State::Active);

    // Custom name.
    let dup2 = client
        .duplicate(
            &boss,
            pb::DuplicateRequest {
                allowed_cidrs: Vec::new(),
                id: src.id.clone(),
                name: "reporting v2".into(),
            },
        )
        .await
        .unwrap();
    let d2 = dup2.token.unwrap();
    assert_eq!(d2.name, "reporting v2");
    assert_ne!(d2.id, d.id);
    assert_eq!(d2.api_version, "v3");
    assert_eq!(
        app.validate_with(&app.platform, &dup2.secret, &[])
            .await
            .reason(),
        pb::Reason::Valid
    );

    // The copy's audit trail: one DUPLICATED event naming the source.
    let evs = app.events(&boss, &d.id).await;
    assert_eq!(kinds(&evs), vec![pb::EventKind::Duplicated]);
    assert!(evs[0].detail.contains(&src.id), "{}", evs[0].detail);
    assert_eq!(evs[0].actor_owner_id, "boss");
    assert_eq!(evs[0].owner_id, "alice");

    // Revoked source: refused; copies live on.
    app.revoke_id(&boss, &src.id, "").await.unwrap();
    let err = client
        .duplicate(
            &boss,
            pb::DuplicateRequest {
                allowed_cidrs: Vec::new(),
                id: src.id.clone(),
                name: String::new(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        app.validate_with(&app.platform, &dup.secret, &[])
            .await
            .reason(),
        pb::Reason::Valid
    );
    app.stop().await;
}

#[tokio::test]
async fn list_events_tells_a_tokens_whole_life_in_order_and_paginates() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let (boss_id, boss) = app.token_for("acme", "boss", &["tokens:admin"]).await;
    let issued = app
        .issue_as(
            &boss,
            pb::IssueRequest {
                owner_id: "alice".into(),
                name: "life".into(),
                ..Default::default()
            },
        )
        .await;
    let id = issued.token.unwrap().id;
    app.update_token(
        &boss,
        pb::UpdateRequest {
            id: id.clone(),
            name: "life2".into(),
            update_mask: mask(&["name"]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    app.change_state(&boss, &id, pb::State::Disabled, "suspicious")
        .await
        .unwrap();
    app.change_state(&boss, &id, pb::State::Disabled, "again")
        .await
        .unwrap();
    app.change_state(&boss, &id, pb::State::Active, "cleared")
        .await
        .unwrap();
    app.rotate_id(&boss, &id, None).await.unwrap();
    app.revoke_id(&boss, &id, "done").await.unwrap();
    app.revoke_id(&boss, &id, "done").await.unwrap();

    let evs = app.events(&boss, &id).await;
    assert_eq!(
        kinds(&evs),
        vec![
            pb::EventKind::Revoked,
            pb::EventKind::Rotated,
            pb::EventKind::Enabled,
            pb::EventKind::Disabled,
            pb::EventKind::Updated,
            pb::EventKind::Issued,
        ]
    );
    for e in &evs {
        assert_eq!(e.token_id, id);
        assert_eq!(e.account_id, "acme");
        assert_eq!(e.owner_id, "alice");
        assert_eq!(e.actor_token_id, boss_id);
        assert_eq!(e.actor_owner_id, "boss");
        assert!(e.at.is_some());
    }
    for w in evs.windows(2) {
        assert!(w[0].id > w[1].id, "newest first by id");
        assert!(at(w[0].at.as_ref().unwrap()) >= at(w[1].at.as_ref().unwrap()));
    }
    assert!(evs[4].detail.contains("name"), "{}", evs[4].detail);
    assert!(evs[3].detail.contains("suspicious"), "{}", evs[3].detail);
    assert!(evs[2].detail.contains("cleared"), "{}", evs[2].detail);

    // Pagination: 4 + 2, the same events in the same order, no token after the last page.
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = client
            .list_events(
                &boss,
                pb::ListEventsRequest {
                    token_id: id.clone(),
                    page_size: 4,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        pages.push(resp.events);
        page_token = resp.next_page_token;
        if page_token.is_empty() {
            break;
        }
        assert!(pages.len() < 5, "pagination does not end");
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![4, 2]);
    assert_eq!(pages.concat(), evs);

    // The bootstrap token's event names the bootstrap actor.
    let platform_id = id_of(&app.platform);
    let boot = app.events(&app.platform, &platform_id).await;
    assert_eq!(kinds(&boot), vec![pb::EventKind::Issued]);
    assert_eq!(boot[0].actor_token_id, "bootstrap");
    assert_eq!(boot[0].actor_owner_id, "ops");
    assert_eq!(boot[0].owner_id, "ops");
    assert_eq!(boot[0].account_id, "acme");

    // Account-wide listing (no token filter) holds all of it, newest first:
    // the life above, boss's own issue by the platform, and the bootstrap.
    let all = app.events(&app.platform, "").await;
    assert_eq!(all.len(), 6 + 2);
    assert_eq!(&all[..6], &evs[..]);
    assert_eq!(all[6].token_id, boss_id);
    assert_eq!(all[6].actor_token_id, platform_id);
    assert_eq!(all[6].actor_owner_id, "ops");
    assert_eq!(all[7].token_id, platform_id);
    let acme = client
        .list_events(
            &app.platform,
            pb::ListEventsRequest {
                account_id: "acme".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(acme.events, all);
    assert!(acme.next_page_token.is_empty());
    let other = client
        .list_events(
            &app.platform,
            pb::ListEventsRequest {
                account_id: "globex".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(other.events.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn list_events_is_scoped_like_search_and_pages_stay_stable() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let (alice_id, alice) = app.token_for("acme", "alice", &["tokens:self"]).await;
    let (_, boss) = app.token_for("globex", "boss", &["tokens:admin"]).await;
    let (_, validator) = app.token_for("acme", "gw", &["tokens:validate"]).await;
    let (bob_id, _) = app.token_for("acme", "bob", &[]).await;
    let mine = app
        .issue_as(
            &alice,
            pb::IssueRequest {
                name: "mine".into(),
                ..Default::default()
            },
        )
        .await
        .token
        .unwrap()
        .id;

    // tokens:self: only its own owner's tokens in its account.
    let seen = app.events(&alice, "").await;
    assert_eq!(
        seen.iter().map(|e| e.token_id.clone()).collect::<Vec<_>>(),
        vec![mine.clone(), alice_id.clone()]
    );
    assert_eq!(seen[0].actor_token_id, alice_id);
    assert_eq!(seen[0].actor_owner_id, "alice");
    assert!(app.events(&alice, &bob_id).await.is_empty());
    // tokens:admin of globex sees globex only.
    let seen = app.events(&boss, "").await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].account_id, "globex");
    // validate-only: PERMISSION_DENIED.
    let err = client
        .list_events(&validator, pb::ListEventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // Stability: events added after the first page do not shift the next ones.
    let all = app.events(&p, "").await;
    let first = client
        .list_events(
            &p,
            pb::ListEventsRequest {
                page_size: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(first.events, all[..2]);
    app.change_state(&p, &bob_id, pb::State::Disabled, "")
        .await
        .unwrap();
    app.revoke_id(&p, &bob_id, "").await.unwrap();
    let mut rest = Vec::new();
    let mut token = first.next_page_token;
    while !token.is_empty() {
        let resp = client
            .list_events(
                &p,
                pb::ListEventsRequest {
                    page_size: 2,
                    page_token: token,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        rest.extend(resp.events);
        token = resp.next_page_token;
    }
    assert_eq!(rest, all[2..]);
    let now = app.events(&p, "").await;
    assert_eq!(now.len(), all.len() + 2);
    assert_eq!(
        kinds(&now[..2]),
        vec![pb::EventKind::Revoked, pb::EventKind::Disabled]
    );
    app.stop().await;
}
