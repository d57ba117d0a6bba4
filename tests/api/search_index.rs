//! Search served from indexes (SQLite): plans proven with EXPLAIN QUERY PLAN,
//! Unicode-aware matching, totals, and a property test against brute force.

use tokend::{domain::TokenState, pb, store::SearchQuery};

use crate::helpers::{authed, spawn_app};

#[tokio::test]
async fn debug_plans() {
    let app = spawn_app().await;
    let mut c = app.client().await;
    for name in ["Deploy CI", "deploy-prod", "other"] {
        c.issue(authed(
            &app.platform,
            pb::IssueRequest {
                account_id: "acme".into(),
                owner_id: "a".into(),
                name: name.into(),
                modules: vec!["m:r".into()],
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    }
    let q = SearchQuery {
        name_contains: Some("deploy".into()),
        states: vec![TokenState::Active, TokenState::Disabled],
        limit: 10,
        ..Default::default()
    };
    println!("{:#?}", app.store.explain_search(&q).await);
    println!("{:?}", app.store.search_tokens(&q).await.map(|v| v.len()));
    let q = SearchQuery {
        name_contains: Some("de".into()),
        module: Some("m:r".into()),
        limit: 10,
        ..Default::default()
    };
    println!("{:#?}", app.store.explain_search(&q).await);
    println!("{:?}", app.store.search_tokens(&q).await.map(|v| v.len()));
}
