//! The per-owner limit on live tokens (max_tokens_per_owner = 3 here).

use tokend::pb::{self};
use tonic::Code;

use crate::helpers::{Api, TestApp, spawn_app_with};

async fn limited() -> TestApp {
    spawn_app_with(|c: &mut tokend::config::Config| c.max_tokens_per_owner = 3).await
}

async fn issue(
    client: &Api,
    caller: &str,
    account: &str,
    owner: &str,
) -> Result<(String, String), tonic::Status> {
    client
        .issue(
            caller,
            pb::IssueRequest {
                account_id: account.into(),
                owner_id: owner.into(),
                name: format!("{owner} token"),
                ..Default::default()
            },
        )
        .await
        .map(|r| (r.token.unwrap().id, r.secret))
}

async fn live_count(client: &Api, caller: &str, account: &str, owner: &str) -> usize {
    let req = pb::SearchRequest {
        account_id: account.into(),
        owner_id: owner.into(),
        ..Default::default()
    };
    client.search_ids(caller, req).await.len()
}

async fn event_count(client: &Api, caller: &str) -> usize {
    client.events(caller, "").await.len()
}

fn assert_exhausted<T>(r: Result<T, tonic::Status>, what: &str) {
    match r {
        Ok(_) => panic!("{what}: expected RESOURCE_EXHAUSTED, got OK"),
        Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{what}: {e:?}"),
    }
}

#[tokio::test]
async fn the_per_owner_limit_counts_live_tokens_only() {
    let app = limited().await;
    let client = app.api.clone();
    let p = app.platform.clone();

    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(issue(&client, &p, "acme", "alice").await.unwrap().0);
    }
    let events = event_count(&client, &p).await;
    assert_exhausted(issue(&client, &p, "acme", "alice").await, "4th issue");
    assert_exhausted(
        client
            .duplicate_id(&p, &ids[0])
            .await
            .map(|r| r.token.unwrap().id),
        "duplicate at the limit",
    );
    assert_eq!(live_count(&client, &p, "acme", "alice").await, 3);
    assert_eq!(
        event_count(&client, &p).await,
        events,
        "refused calls leave no event"
    );

    // Disabled tokens still count.
    client
        .change_state(&p, &ids[1], pb::State::Disabled, "")
        .await
        .unwrap();
    assert_exhausted(
        issue(&client, &p, "acme", "alice").await,
        "issue with one disabled",
    );

    // Other owners, and the same owner id in another account, are unaffected.
    for _ in 0..3 {
        issue(&client, &p, "acme", "bob").await.unwrap();
        issue(&client, &p, "globex", "alice").await.unwrap();
    }
    assert_exhausted(issue(&client, &p, "acme", "bob").await, "bob's 4th");
    assert_exhausted(
        issue(&client, &p, "globex", "alice").await,
        "globex alice's 4th",
    );

    // Revoking one frees exactly one slot; Duplicate can use it.
    client.revoke_id(&p, &ids[0], "").await.unwrap();
    let dup = client
        .duplicate_id(&p, &ids[2])
        .await
        .map(|r| r.token.unwrap().id)
        .unwrap();
    assert_exhausted(issue(&client, &p, "acme", "alice").await, "after refilling");
    client.revoke_id(&p, &dup, "").await.unwrap();
    let (new_id, new_value) = issue(&client, &p, "acme", "alice").await.unwrap();
    assert_exhausted(
        issue(&client, &p, "acme", "alice").await,
        "after refilling again",
    );
    // Revoking again (idempotent) must not free a second slot.
    client.revoke_id(&p, &ids[0], "").await.unwrap();
    assert_exhausted(
        issue(&client, &p, "acme", "alice").await,
        "after a repeated revoke",
    );
    // Revoke by value frees a slot too.
    client.revoke_value(&p, &new_value, "").await.unwrap();
    issue(&client, &p, "acme", "alice").await.unwrap();
    assert_exhausted(
        issue(&client, &p, "acme", "alice").await,
        "after revoke by value",
    );
    assert_eq!(live_count(&client, &p, "acme", "alice").await, 3);
    let _ = new_id;
    app.stop().await;
}

#[tokio::test]
async fn a_self_callers_own_credential_counts_against_its_limit() {
    let app = limited().await;
    let client = app.api.clone();
    let (_, alice) = app.token_for("acme", "alice", &["tokens:self"]).await;
    issue(&client, &alice, "", "").await.unwrap();
    issue(&client, &alice, "", "").await.unwrap();
    assert_exhausted(issue(&client, &alice, "", "").await, "self caller's 4th");
    app.stop().await;
}

async fn race(app: &TestApp, owner: &str, n: usize) -> (usize, usize) {
    let client = app.api.clone();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let c = client.clone();
        let p = app.platform.clone();
        let owner = owner.to_owned();
        set.spawn(async move { issue(&c, &p, "acme", &owner).await.map(|_| ()) });
    }
    let (mut ok, mut exhausted) = (0, 0);
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(()) => ok += 1,
            Err(e) if e.code() == Code::ResourceExhausted => exhausted += 1,
            Err(e) => panic!("unexpected error in the race: {e:?}"),
        }
    }
    (ok, exhausted)
}

#[tokio::test]
async fn concurrent_issues_never_exceed_the_limit() {
    let app = limited().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    assert_eq!(race(&app, "racer", 10).await, (3, 7));
    assert_eq!(live_count(&client, &p, "acme", "racer").await, 3);

    // Free two slots and race again: exactly two more win.
    let listed = client
        .search(
            &p,
            pb::SearchRequest {
                owner_id: "racer".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .tokens;
    client.revoke_id(&p, &listed[0].id, "").await.unwrap();
    client.revoke_id(&p, &listed[1].id, "").await.unwrap();
    assert_eq!(race(&app, "racer", 10).await, (2, 8));
    assert_eq!(live_count(&client, &p, "acme", "racer").await, 3);

    // Concurrent duplicates of one token, too.
    let (src, _) = issue(&client, &p, "acme", "dupes").await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let c = client.clone();
        let p = p.clone();
        let src = src.clone();
        set.spawn(async move { c.duplicate_id(&p, &src).await.map(|r| r.token.unwrap().id) });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(live_count(&client, &p, "acme", "dupes").await, 3);
    app.stop().await;
}
