//! The caller credential remembered per connection (`validation::callers`):
//! a client that keeps one connection open and sends the same credential on
//! every call is checked the full way once, and again after any change to
//! its token. These tests keep a caller's connection open across changes made
//! on another connection (or another replica) and check that the very next
//! call on the open one sees them.

use std::time::Duration;

use tonic::Code;

use crate::helpers::{self, Api, TestApp, id_of, ts};
use tokend::pb;

/// A `tokens:validate` caller for account `acme`, optionally expiring.
async fn gateway(app: &TestApp, name: &str, expires_in: Option<Duration>) -> String {
    app.api
        .issue(
            &app.platform,
            pb::IssueRequest {
                owner_id: "api-gateway".into(),
                name: name.into(),
                modules: vec!["tokens:validate".into()],
                expires_at: expires_in.map(|d| ts(chrono::Utc::now() + d)),
                ..Default::default()
            },
        )
        .await
        .expect("Issue gateway")
        .secret
}

/// An end-user token to validate.
async fn user_token(app: &TestApp) -> String {
    app.api
        .issued(
            &app.platform,
            pb::IssueRequest {
                owner_id: "alice".into(),
                name: "user".into(),
                modules: vec!["billing:read".into()],
                ..Default::default()
            },
        )
        .await
        .1
}

/// The code of one Validate made by `caller` on `conn` (OK or the error's).
async fn call(conn: &Api, caller: &str, token: &str) -> Code {
    match conn.check(caller, token, &[]).await {
        Ok(r) => {
            assert_eq!(r.reason(), pb::Reason::Valid);
            Code::Ok
        }
        Err(status) => status.code(),
    }
}

/// Several calls in a row, so the connection has remembered the caller.
async fn warm(conn: &Api, caller: &str, token: &str) {
    for _ in 0..3 {
        assert_eq!(call(conn, caller, token).await, Code::Ok);
    }
}

#[tokio::test]
async fn a_caller_disabled_or_revoked_elsewhere_is_refused_on_its_open_connection() {
    let app = helpers::spawn_app().await;
    let gw = gateway(&app, "gateway", None).await;
    let token = user_token(&app).await;
    let open = Api::connect(&app.endpoint).await;
    warm(&open, &gw, &token).await;

    // Changes made on another connection (the harness's own).
    app.api
        .disable(&app.platform, &id_of(&gw), "rotating gateways")
        .await
        .expect("disable");
    assert_eq!(call(&open, &gw, &token).await, Code::Unauthenticated);
    app.api
        .enable(&app.platform, &id_of(&gw), "back")
        .await
        .expect("enable");
    warm(&open, &gw, &token).await;
    // Losing a privilege: the update takes tokens:validate away.
    app.api
        .update_token(
            &app.platform,
            pb::UpdateRequest {
                id: id_of(&gw),
                modules: vec!["billing:read".into()],
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["modules".into()],
                }),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(call(&open, &gw, &token).await, Code::PermissionDenied);
    app.api
        .revoke_id(&app.platform, &id_of(&gw), "leaked")
        .await
        .expect("revoke");
    for _ in 0..3 {
        assert_eq!(call(&open, &gw, &token).await, Code::Unauthenticated);
    }
    app.stop().await;
}

#[tokio::test]
async fn credentials_taking_turns_on_one_connection_keep_their_own_rights() {
    let app = helpers::spawn_app().await;
    let gw = gateway(&app, "gateway", None).await;
    let token = user_token(&app).await;
    // A tokens:self caller: may not call Validate.
    let own = app
        .api
        .issued(
            &app.platform,
            pb::IssueRequest {
                owner_id: "bob".into(),
                name: "self".into(),
                modules: vec!["tokens:self".into()],
                ..Default::default()
            },
        )
        .await
        .1;
    // The gateway's value with one character of its secret changed.
    let mut forged = gw.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();

    let conn = Api::connect(&app.endpoint).await;
    for _ in 0..4 {
        assert_eq!(call(&conn, &gw, &token).await, Code::Ok);
        assert_eq!(call(&conn, &own, &token).await, Code::PermissionDenied);
        assert_eq!(call(&conn, &gw, &token).await, Code::Ok);
        assert_eq!(call(&conn, &forged, &token).await, Code::Unauthenticated);
        assert_eq!(call(&conn, "", &token).await, Code::Unauthenticated);
    }
    // Each caller still sees only what its own token allows.
    let mine = conn
        .raw()
        .search(helpers::authed(&own, pb::SearchRequest::default()))
        .await
        .expect("Search as tokens:self")
        .into_inner();
    assert!(mine.tokens.iter().all(|t| t.owner_id == "bob"), "{mine:?}");
    assert_eq!(call(&conn, &gw, &token).await, Code::Ok);
    app.stop().await;
}

#[tokio::test]
async fn a_caller_credential_expires_on_its_open_connection() {
    let app = helpers::spawn_app().await;
    let gw = gateway(&app, "short-lived gateway", Some(Duration::from_secs(2))).await;
    let token = user_token(&app).await;
    let open = Api::connect(&app.endpoint).await;
    warm(&open, &gw, &token).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(call(&open, &gw, &token).await, Code::Unauthenticated);
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_callers_old_secret_stops_at_the_end_of_its_grace() {
    let app = helpers::spawn_app().await;
    let gw = gateway(&app, "gateway", None).await;
    let token = user_token(&app).await;
    let open = Api::connect(&app.endpoint).await;
    warm(&open, &gw, &token).await;
    let fresh = app
        .api
        .rotate_id(
            &app.platform,
            &id_of(&gw),
            Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
        )
        .await
        .expect("rotate")
        .secret;
    // Inside the grace both values work, in turns, on the open connection.
    for _ in 0..3 {
        assert_eq!(call(&open, &gw, &token).await, Code::Ok);
        assert_eq!(call(&open, &fresh, &token).await, Code::Ok);
    }
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(call(&open, &gw, &token).await, Code::Unauthenticated);
    assert_eq!(call(&open, &fresh, &token).await, Code::Ok);
    // Rotated without grace: the old value stops at once.
    let newest = app
        .api
        .rotate_id(&app.platform, &id_of(&gw), None)
        .await
        .expect("rotate")
        .secret;
    assert_eq!(call(&open, &fresh, &token).await, Code::Unauthenticated);
    assert_eq!(call(&open, &newest, &token).await, Code::Ok);
    app.stop().await;
}

/// Two replicas of one PostgreSQL store: a gateway keeps its connection to
/// replica A open while its token is revoked through replica B; A refuses
/// it within the change log's propagation bound.
#[tokio::test]
async fn a_caller_revoked_on_another_replica_is_refused_on_its_open_connection() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) = helpers::fresh_pg_database("caller_revoked_on_another_replica").await else {
        return;
    };
    let a = crate::postgres::replica(&url, |_| {}).await;
    let b = crate::postgres::replica(&url, |_| {}).await;
    let gw = gateway(&a, "gateway", None).await;
    let token = user_token(&a).await;
    let open = Api::connect(&a.endpoint).await;
    warm(&open, &gw, &token).await;
    b.api
        .revoke_id(&b.platform, &id_of(&gw), "leaked")
        .await
        .expect("revoke on B");
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match call(&open, &gw, &token).await {
            Code::Unauthenticated => break,
            Code::Ok => assert!(
                std::time::Instant::now() < deadline,
                "replica A still accepted the revoked caller after 1 s"
            ),
            other => panic!("unexpected {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.stop().await;
    a.stop().await;
    crate::postgres::drop_database(&url).await;
}

/// A caller credential bound to ranges is checked against the TCP peer of
/// its connection (here 127.0.0.1), on the first call and on the remembered
/// ones alike.
#[tokio::test]
async fn a_bound_caller_credential_is_checked_against_its_connection_peer() {
    let app = helpers::spawn_app().await;
    let token = user_token(&app).await;
    let bound = |cidrs: &[&str]| pb::IssueRequest {
        owner_id: "api-gateway".into(),
        name: "bound gateway".into(),
        modules: vec!["tokens:validate".into()],
        allowed_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
        ..Default::default()
    };
    let inside = app
        .api
        .issued(&app.platform, bound(&["127.0.0.0/8", "::1/128"]))
        .await
        .1;
    let outside = app
        .api
        .issued(&app.platform, bound(&["203.0.113.0/24"]))
        .await
        .1;
    let conn = Api::connect(&app.endpoint).await;
    for _ in 0..3 {
        assert_eq!(call(&conn, &inside, &token).await, Code::Ok);
        assert_eq!(call(&conn, &outside, &token).await, Code::Unauthenticated);
    }
    let status = conn.check(&outside, &token, &[]).await.unwrap_err();
    assert!(status.message().contains("ip not allowed"), "{status:?}");
    // Moving the remembered caller's ranges away refuses it at once.
    app.api
        .update_token(
            &app.platform,
            pb::UpdateRequest {
                id: id_of(&inside),
                allowed_cidrs: vec!["198.51.100.0/24".into()],
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["allowed_cidrs".into()],
                }),
                ..Default::default()
            },
        )
        .await
        .expect("update");
    assert_eq!(call(&conn, &inside, &token).await, Code::Unauthenticated);
    app.stop().await;
}
