//! The end-to-end happy path an operator walks through first.

use tokend::pb;

use crate::helpers::spawn_app;

#[tokio::test]
async fn issue_validate_disable_search_revoke() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let (_, validator) = app.token_for("acme", "gateway", &["tokens:validate"]).await;

    let issued = app
        .issue_as(
            &app.platform,
            pb::IssueRequest {
                owner_id: "alice".into(),
                name: "ci deploy".into(),
                modules: vec!["billing:read".into()],
                ..Default::default()
            },
        )
        .await;
    let token = issued.token.unwrap();
    assert_eq!(token.account_id, "acme");
    assert_eq!(token.created_by, "ops");

    let v = app
        .validate_with(&validator, &issued.secret, &["billing:read"])
        .await;
    assert!(v.valid);
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(v.token_id, token.id);

    client
        .change_state(&app.platform, &token.id, pb::State::Disabled, "audit")
        .await
        .unwrap();
    let v = app.validate_with(&validator, &issued.secret, &[]).await;
    assert!(!v.valid);
    assert_eq!(v.reason(), pb::Reason::Disabled);

    let found = client
        .search(
            &app.platform,
            pb::SearchRequest {
                query: "deploy".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(found.tokens.len(), 1);
    assert_eq!(found.tokens[0].state(), pb::State::Disabled);

    client
        .revoke_id(&app.platform, &token.id, "")
        .await
        .unwrap();
    let v = app.validate_with(&validator, &issued.secret, &[]).await;
    assert_eq!(v.reason(), pb::Reason::Revoked);
    app.stop().await;
}
