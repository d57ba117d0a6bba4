//! Every Validate reason, their precedence, and which responses carry the
//! token's fields (only those where the secret matched).

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use prost_types::Timestamp;
use tokend::{
    domain::{TokenId, TokenValue},
    pb,
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, id_of, spawn_app, ts, unknown_value};

/// A well-formed value (valid checksum) for `id` with a random, wrong secret.
fn wrong_secret_for(id: &str) -> String {
    TokenValue::generate_for("tk", TokenId::parse(id).unwrap())
        .unwrap()
        .expose()
}

/// `value` with the character at `i` replaced (a typo).
fn typo(value: &str, i: usize) -> String {
    let mut b = value.as_bytes().to_vec();
    b[i] = if b[i] == b'a' { b'b' } else { b'a' };
    String::from_utf8(b).unwrap()
}

fn assert_rejected_without_fields(v: &pb::ValidateResponse, reason: pb::Reason) {
    assert!(!v.valid);
    assert_eq!(v.reason(), reason);
    assert_eq!(v.token_id, "", "no token fields for {reason:?}");
    assert_eq!(v.account_id, "");
    assert_eq!(v.owner_id, "");
    assert!(v.modules.is_empty());
    assert_eq!(v.api_version, "");
    assert!(v.metadata.is_empty());
    assert_eq!(v.expires_at, None);
}

/// A token with every field set: (id, value, expires_at).
async fn rich_token(app: &TestApp, expires_at: DateTime<Utc>) -> (String, String) {
    app.issued(
        &app.platform,
        pb::IssueRequest {
            account_id: "acme".into(),
            owner_id: "alice".into(),
            name: "rich".into(),
            modules: vec!["billing:read".into(), "reports:*".into()],
            api_version: "v7".into(),
            metadata: HashMap::from([("team".to_owned(), "bi".to_owned())]),
            expires_at: Some(ts(expires_at)),
            ..Default::default()
        },
    )
    .await
}

fn assert_fields(v: &pb::ValidateResponse, id: &str, expires_at: DateTime<Utc>) {
    assert_eq!(v.token_id, id, "token fields for {:?}", v.reason());
    assert_eq!(v.account_id, "acme");
    assert_eq!(v.owner_id, "alice");
    let mut modules = v.modules.clone();
    modules.sort();
    assert_eq!(
        modules,
        vec!["billing:read".to_owned(), "reports:*".to_owned()]
    );
    assert_eq!(v.api_version, "v7");
    assert_eq!(
        v.metadata,
        HashMap::from([("team".to_owned(), "bi".to_owned())])
    );
    assert_eq!(v.expires_at, Some(ts(expires_at)));
}

#[tokio::test]
async fn valid_and_missing_modules_carry_the_token_fields() {
    let app = spawn_app().await;
    let (_, validator) = app.token_for("other", "gw", &["tokens:validate"]).await;
    let expires = DateTime::from_timestamp(Utc::now().timestamp() + 3600, 0).unwrap();
    let (id, value) = rich_token(&app, expires).await;

    for required in [
        &[][..],
        &["billing:read"][..],
        &["billing:read", "reports:*"][..],
    ] {
        let v = app.validate_with(&validator, &value, required).await;
        assert!(v.valid, "{required:?}");
        assert_eq!(v.reason(), pb::Reason::Valid);
        assert_fields(&v, &id, expires);
    }
    for required in [
        &["billing:write"][..],
        &["billing:read", "billing:write"][..],
        // Module names are matched exactly: no wildcard expansion, no case folding.
        &["reports:daily"][..],
        &["Billing:read"][..],
    ] {
        let v = app.validate_with(&validator, &value, required).await;
        assert!(!v.valid, "{required:?}");
        assert_eq!(v.reason(), pb::Reason::MissingModules, "{required:?}");
        assert_fields(&v, &id, expires);
    }
    app.stop().await;
}

#[tokio::test]
async fn malformed_values_are_rejected_without_a_lookup() {
    let app = spawn_app().await;
    let (_, validator) = app.token_for("acme", "gw", &["tokens:validate"]).await;
    let (_, value) = app.token_for("acme", "alice", &[]).await;
    // Warm the caller credential so it costs nothing below.
    app.validate_with(&validator, "x", &[]).await;
    let verifications = app.manager.validator().hasher().verifications();

    let prefix_len = "tk_".len() + 16 + 1;
    let cases = [
        String::new(),
        "garbage".into(),
        "Bearer abc".into(),
        "tk__".into(),
        "tk_abc_def".into(),
        // Typos: in the secret, in the id, in the checksum, in the prefix.
        typo(&value, prefix_len + 5),
        typo(&value, 5),
        typo(&value, value.len() - 1),
        typo(&value, 0),
        // Truncated, extended, and the checksum dropped.
        value[..value.len() - 1].to_owned(),
        format!("{value}a"),
        value[..value.len() - 6].to_owned(),
        format!(" {value}"),
        value.to_uppercase(),
        // Exactly 512 bytes of junk: long but not too long.
        "a".repeat(512),
    ];
    for bad in &cases {
        assert_ne!(bad, &value);
        let v = app.validate_with(&validator, bad, &[]).await;
        assert_rejected_without_fields(&v, pb::Reason::Malformed);
    }
    assert_eq!(
        app.manager.validator().hasher().verifications(),
        verifications,
        "MALFORMED must not cost an argon2 verification"
    );
    // The real value is still fine.
    assert_eq!(
        app.validate_with(&validator, &value, &[]).await.reason(),
        pb::Reason::Valid
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_ids_and_wrong_secrets_are_unknown() {
    let app = spawn_app().await;
    let other = spawn_app().await;
    let (_, validator) = app.token_for("acme", "gw", &["tokens:validate"]).await;

    // An id that exists nowhere.
    let v = app.validate_with(&validator, &unknown_value(), &[]).await;
    assert_rejected_without_fields(&v, pb::Reason::Unknown);
    // A real value of another deployment.
    let (_, foreign) = other.token_for("acme", "alice", &["billing:read"]).await;
    let v = app.validate_with(&validator, &foreign, &[]).await;
    assert_rejected_without_fields(&v, pb::Reason::Unknown);
    assert_eq!(
        other
            .validate_with(&other.platform, &foreign, &[])
            .await
            .reason(),
        pb::Reason::Valid
    );

    // A known id with a wrong (but well-formed) secret.
    let (id, value) = app.token_for("acme", "alice", &["billing:read"]).await;
    let v = app
        .validate_with(&validator, &wrong_secret_for(&id), &[])
        .await;
    assert_rejected_without_fields(&v, pb::Reason::Unknown);
    // The value from before a Rotate without grace.
    let r = app
        .rotate(
            &app.platform,
            pb::RotateRequest {
                id: id.clone(),
                grace_period: None,
            },
        )
        .await
        .unwrap();
    let v = app.validate_with(&validator, &value, &[]).await;
    assert_rejected_without_fields(&v, pb::Reason::Unknown);
    // Asked again (now from the negative cache): same answer.
    let v = app.validate_with(&validator, &value, &[]).await;
    assert_rejected_without_fields(&v, pb::Reason::Unknown);
    let v = app.validate_with(&validator, &r.secret, &[]).await;
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(v.token_id, id);
    other.stop().await;
    app.stop().await;
}

#[tokio::test]
async fn disabled_revoked_and_expired_carry_the_token_fields() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let (_, validator) = app.token_for("acme", "gw", &["tokens:validate"]).await;
    let far = DateTime::from_timestamp(Utc::now().timestamp() + 3600, 0).unwrap();

    // DISABLED
    let (id, value) = rich_token(&app, far).await;
    assert!(app.validate_with(&validator, &value, &[]).await.valid);
    client
        .change_state(&app.platform, &id, pb::State::Disabled, "")
        .await
        .unwrap();
    let v = app.validate_with(&validator, &value, &[]).await;
    assert!(!v.valid);
    assert_eq!(v.reason(), pb::Reason::Disabled);
    assert_fields(&v, &id, far);
    // Wrong secret of a disabled token: UNKNOWN, not DISABLED.
    let v = app
        .validate_with(&validator, &wrong_secret_for(&id), &[])
        .await;
    assert_rejected_without_fields(&v, pb::Reason::Unknown);

    // REVOKED
    let (id, value) = rich_token(&app, far).await;
    assert!(app.validate_with(&validator, &value, &[]).await.valid);
    client.revoke_id(&app.platform, &id, "").await.unwrap();
    let v = app.validate_with(&validator, &value, &[]).await;
    assert!(!v.valid);
    assert_eq!(v.reason(), pb::Reason::Revoked);
    assert_fields(&v, &id, far);
    let v = app
        .validate_with(&validator, &wrong_secret_for(&id), &[])
        .await;
    assert_rejected_without_fields(&v, pb::Reason::Unknown);

    // EXPIRED: valid (and cached) first, expired a second later.
    let soon = Utc::now() + chrono::Duration::milliseconds(1000);
    let soon = DateTime::from_timestamp_micros(soon.timestamp_micros()).unwrap();
    let (id, value) = rich_token(&app, soon).await;
    assert!(app.validate_with(&validator, &value, &[]).await.valid);
    let wait = (soon - Utc::now()).num_milliseconds().max(0) as u64 + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let v = app.validate_with(&validator, &value, &[]).await;
    assert!(!v.valid);
    assert_eq!(v.reason(), pb::Reason::Expired);
    assert_fields(&v, &id, soon);
    let t = client
        .get(&app.platform, pb::GetRequest { id: id.clone() })
        .await
        .unwrap()
        .token
        .unwrap();
    assert!(t.expired);
    assert_eq!(t.state(), pb::State::Active);
    let v = app
        .validate_with(&validator, &wrong_secret_for(&id), &[])
        .await;
    assert_rejected_without_fields(&v, pb::Reason::Unknown);
    // An expired credential does not authenticate.
    let err = client
        .get(&value, pb::GetRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    app.stop().await;
}

#[tokio::test]
async fn precedence_revoked_over_disabled_over_expired_over_missing_modules() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let (_, validator) = app.token_for("acme", "gw", &["tokens:validate"]).await;
    let soon = Utc::now() + chrono::Duration::milliseconds(1000);
    let soon = DateTime::from_timestamp_micros(soon.timestamp_micros()).unwrap();
    let (id, value) = rich_token(&app, soon).await;
    let missing = ["billing:write"];

    let v = app.validate_with(&validator, &value, &missing).await;
    assert_eq!(v.reason(), pb::Reason::MissingModules);
    let wait = (soon - Utc::now()).num_milliseconds().max(0) as u64 + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    // expired + missing modules
    let v = app.validate_with(&validator, &value, &missing).await;
    assert_eq!(v.reason(), pb::Reason::Expired);
    assert_fields(&v, &id, soon);
    // disabled + expired + missing modules
    client
        .change_state(&app.platform, &id, pb::State::Disabled, "")
        .await
        .unwrap();
    let v = app.validate_with(&validator, &value, &missing).await;
    assert_eq!(v.reason(), pb::Reason::Disabled);
    assert_fields(&v, &id, soon);
    // revoked + disabled + expired + missing modules
    client.revoke_id(&app.platform, &id, "").await.unwrap();
    let v = app.validate_with(&validator, &value, &missing).await;
    assert_eq!(v.reason(), pb::Reason::Revoked);
    assert_fields(&v, &id, soon);
    // Malformed beats everything: no lookup at all.
    let v = app
        .validate_with(&validator, &typo(&value, 30), &missing)
        .await;
    assert_rejected_without_fields(&v, pb::Reason::Malformed);

    // disabled (not expired) + missing modules
    let far = DateTime::from_timestamp(Utc::now().timestamp() + 3600, 0).unwrap();
    let (id2, value2) = rich_token(&app, far).await;
    client
        .change_state(&app.platform, &id2, pb::State::Disabled, "")
        .await
        .unwrap();
    let v = app.validate_with(&validator, &value2, &missing).await;
    assert_eq!(v.reason(), pb::Reason::Disabled);
    assert_fields(&v, &id2, far);
    app.stop().await;
}

#[tokio::test]
async fn previous_secret_within_grace_validates_with_fields() {
    let app = spawn_app().await;
    let (_, validator) = app.token_for("acme", "gw", &["tokens:validate"]).await;
    let far = DateTime::from_timestamp(Utc::now().timestamp() + 3600, 0).unwrap();
    let (id, old) = rich_token(&app, far).await;
    app.rotate(
        &app.platform,
        pb::RotateRequest {
            id: id.clone(),
            grace_period: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0,
            }),
        },
    )
    .await
    .unwrap();
    let v = app.validate_with(&validator, &old, &["reports:*"]).await;
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_fields(&v, &id, far);
    let v = app.validate_with(&validator, &old, &["nope"]).await;
    assert_eq!(v.reason(), pb::Reason::MissingModules);
    assert_fields(&v, &id, far);
    app.stop().await;
}

#[tokio::test]
async fn callers_scope_and_value_size() {
    let app = spawn_app().await;
    let (_, validator) = app.token_for("globex", "gw", &["tokens:validate"]).await;
    let (_, admin) = app.token_for("globex", "boss", &["tokens:admin"]).await;
    let (_, selfish) = app.token_for("acme", "me", &["tokens:self"]).await;
    let far = DateTime::from_timestamp(Utc::now().timestamp() + 3600, 0).unwrap();
    let (id, value) = rich_token(&app, far).await; // account acme

    // tokens:validate and tokens:platform: any account.
    for caller in [&validator, &app.platform] {
        let v = app.validate_with(caller, &value, &[]).await;
        assert_eq!(v.reason(), pb::Reason::Valid);
        assert_fields(&v, &id, far);
    }
    // tokens:admin of another account: looks unknown, no fields.
    let v = app.validate_with(&admin, &value, &[]).await;
    assert_rejected_without_fields(&v, pb::Reason::Unknown);
    // ... but its own account's tokens are fine.
    let (own_id, own) = app.token_for("globex", "w", &["x"]).await;
    let v = app.validate_with(&admin, &own, &["x"]).await;
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(v.token_id, own_id);
    // tokens:self alone may not validate.
    let err = app
        .validate(
            &selfish,
            pb::ValidateRequest {
                client_ip: String::new(),
                token: value.clone(),
                required_modules: vec![],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Over 512 bytes: INVALID_ARGUMENT on `token`, not a verdict.
    for long in ["a".repeat(513), format!("{value}{}", "a".repeat(513))] {
        let err = app
            .validate(
                &validator,
                pb::ValidateRequest {
                    client_ip: String::new(),
                    token: long,
                    required_modules: vec![],
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let fields: Vec<String> = err
            .get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
            .unwrap_or_default();
        assert_eq!(fields, vec!["token".to_owned()]);
    }
    // The id in a value is the token's id.
    assert_eq!(id_of(&value), id);
    app.stop().await;
}

#[tokio::test]
async fn an_expired_token_validates_again_once_its_expiry_is_cleared_or_moved() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let (_, validator) = app.token_for("acme", "gw", &["tokens:validate"]).await;
    let soon = Utc::now() + chrono::Duration::milliseconds(1000);
    let soon = DateTime::from_timestamp_micros(soon.timestamp_micros()).unwrap();
    let (id, value) = rich_token(&app, soon).await;
    let wait = (soon - Utc::now()).num_milliseconds().max(0) as u64 + 100;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert_eq!(
        app.validate_with(&validator, &value, &[]).await.reason(),
        pb::Reason::Expired
    );
    let update = |expires_at: Option<Timestamp>| pb::UpdateRequest {
        id: id.clone(),
        expires_at,
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["expires_at".into()],
        }),
        ..Default::default()
    };
    let later = DateTime::from_timestamp(Utc::now().timestamp() + 3600, 0).unwrap();
    let t = client
        .update(&app.platform, update(Some(ts(later))))
        .await
        .unwrap()
        .token
        .unwrap();
    assert!(!t.expired);
    let v = app.validate_with(&validator, &value, &[]).await;
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_fields(&v, &id, later);
    client.update(&app.platform, update(None)).await.unwrap();
    let v = app.validate_with(&validator, &value, &[]).await;
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(v.expires_at, None);
    app.stop().await;
}
