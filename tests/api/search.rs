//! Search: every filter alone and combined (checked against a model of what
//! was issued), ordering, pagination and its stability, scoping.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokend::{
    domain::{TokenId, TokenValue},
    pb::{self},
};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{Api, TestApp, id_of, spawn_app, ts};

/// Takes a timestamp strictly between what came before and what comes after.
async fn mark() -> DateTime<Utc> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t = Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    t
}

/// Ids of one page of up to 500 results (asserting it is the only page).
async fn ids(client: &Api, caller: &str, req: pb::SearchRequest) -> Vec<String> {
    let resp = client
        .search(
            caller,
            pb::SearchRequest {
                page_size: 500,
                ..req
            },
        )
        .await
        .expect("Search");
    assert!(resp.next_page_token.is_empty());
    resp.tokens.into_iter().map(|t| t.id).collect()
}

/// Every page of a search, as lists of ids.
async fn pages(client: &Api, caller: &str, req: pb::SearchRequest) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let resp = client
            .search(
                caller,
                pb::SearchRequest {
                    page_token: page_token.clone(),
                    ..req.clone()
                },
            )
            .await
            .expect("Search page");
        out.push(resp.tokens.into_iter().map(|t| t.id).collect());
        page_token = resp.next_page_token;
        if page_token.is_empty() {
            return out;
        }
        assert!(out.len() < 100, "pagination does not end");
    }
}

/// The expected answer: matching tokens, newest first (created_at desc, id desc).
fn expect(model: &[pb::Token], keep: impl Fn(&pb::Token) -> bool) -> Vec<String> {
    let mut hits: Vec<&pb::Token> = model.iter().filter(|t| keep(t)).collect();
    hits.sort_by(|a, b| {
        let ka = a.created_at.as_ref().map(|t| (t.seconds, t.nanos));
        let kb = b.created_at.as_ref().map(|t| (t.seconds, t.nanos));
        (kb, &b.id).cmp(&(ka, &a.id))
    });
    hits.into_iter().map(|t| t.id.clone()).collect()
}

fn live(t: &pb::Token) -> bool {
    t.state() != pb::State::Revoked
}

fn created(t: &pb::Token) -> DateTime<Utc> {
    let c = t.created_at.as_ref().unwrap();
    DateTime::from_timestamp(c.seconds, c.nanos as u32).unwrap()
}

async fn issue(
    app: &TestApp,
    caller: &str,
    account: &str,
    owner: &str,
    name: &str,
    modules: &[&str],
) -> (String, String) {
    app.issued(
        caller,
        pb::IssueRequest {
            account_id: account.into(),
            owner_id: owner.into(),
            name: name.into(),
            modules: modules.iter().map(|m| (*m).to_owned()).collect(),
            ..Default::default()
        },
    )
    .await
}

fn states(s: &[pb::State]) -> Vec<i32> {
    s.iter().map(|s| *s as i32).collect()
}

fn assert_invalid(err: &tonic::Status, field: &str) {
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default();
    assert!(
        fields.iter().any(|f| f == field),
        "expected a violation on {field}, got {fields:?}"
    );
}

#[tokio::test]
async fn every_filter_alone_and_combined() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let (boss_id, boss) = app.token_for("acme", "boss", &["tokens:admin"]).await;

    let m0 = mark().await;
    let (t1, _) = issue(&app, &p, "acme", "alice", "Deploy CI", &["billing:read"]).await;
    let (t2, _) = issue(&app, &p, "acme", "alice", "deploy-prod", &["billing:write"]).await;
    let m1 = mark().await;
    let (t3, _) = issue(
        &app,
        &p,
        "acme",
        "bob",
        "Backup 100%",
        &["billing:read", "storage:*"],
    )
    .await;
    let (t4, _) = issue(&app, &boss, "", "bob", "my_token", &[]).await;
    let m2 = mark().await;
    let (t5, _) = issue(
        &app,
        &p,
        "globex",
        "alice",
        "deploy globex",
        &["billing:read"],
    )
    .await;
    let (t6, _) = issue(&app, &p, "acme", "carol", "Disabled one", &["x"]).await;
    let (t7, _) = issue(&app, &p, "acme", "carol", "revoked deploy", &[]).await;
    client
        .change_state(&p, &t6, pb::State::Disabled, "")
        .await
        .unwrap();
    client.revoke_id(&p, &t7, "").await.unwrap();
    let mut model = Vec::new();
    for id in [&id_of(&p), &boss_id, &t1, &t2, &t3, &t4, &t5, &t6, &t7] {
        model.push(client.token(&p, id).await.unwrap());
    }
    let model = model;
    assert!(created(&model[2]) >= m0);
    assert_eq!(model[5].created_by, "boss");

    let name_has = |needle: &'static str| {
        move |t: &pb::Token| live(t) && t.name.to_lowercase().contains(needle)
    };
    type Keep = Box<dyn Fn(&pb::Token) -> bool>;
    let cases: Vec<(&str, pb::SearchRequest, Keep)> = vec![
        ("no filter", pb::SearchRequest::default(), Box::new(live)),
        (
            "include_revoked",
            pb::SearchRequest {
                include_revoked: true,
                ..Default::default()
            },
            Box::new(|_| true),
        ),
        (
            "query deploy",
            pb::SearchRequest {
                query: "deploy".into(),
                ..Default::default()
            },
            Box::new(name_has("deploy")),
        ),
        (
            "query DePlOy",
            pb::SearchRequest {
                query: "DePlOy".into(),
                ..Default::default()
            },
            Box::new(name_has("deploy")),
        ),
        (
            "query 100%",
            pb::SearchRequest {
                query: "100%".into(),
                ..Default::default()
            },
            Box::new(name_has("100%")),
        ),
        (
            "query %",
            pb::SearchRequest {
                query: "%".into(),
                ..Default::default()
            },
            Box::new(name_has("%")),
        ),
        (
            "query _",
            pb::SearchRequest {
                query: "_".into(),
                ..Default::default()
            },
            Box::new(name_has("_")),
        ),
        (
            "query y_t",
            pb::SearchRequest {
                query: "y_t".into(),
                ..Default::default()
            },
            Box::new(name_has("y_t")),
        ),
        (
            "query D_ploy (literal _)",
            pb::SearchRequest {
                query: "D_ploy".into(),
                ..Default::default()
            },
            Box::new(|_| false),
        ),
        (
            "query d%y (literal %)",
            pb::SearchRequest {
                query: "d%y".into(),
                ..Default::default()
            },
            Box::new(|_| false),
        ),
        (
            "query deploy incl. revoked",
            pb::SearchRequest {
                query: "deploy".into(),
                include_revoked: true,
                ..Default::default()
            },
            Box::new(|t| t.name.to_lowercase().contains("deploy")),
        ),
        (
            "states disabled",
            pb::SearchRequest {
                states: states(&[pb::State::Disabled]),
                ..Default::default()
            },
            Box::new(|t| t.state() == pb::State::Disabled),
        ),
        (
            "states active",
            pb::SearchRequest {
                states: states(&[pb::State::Active]),
                ..Default::default()
            },
            Box::new(|t| t.state() == pb::State::Active),
        ),
        (
            "states active+disabled",
            pb::SearchRequest {
                states: states(&[pb::State::Active, pb::State::Disabled]),
                ..Default::default()
            },
            Box::new(live),
        ),
        (
            "states revoked",
            pb::SearchRequest {
                states: states(&[pb::State::Revoked]),
                ..Default::default()
            },
            Box::new(|t| t.state() == pb::State::Revoked),
        ),
        (
            "states active + include_revoked (states still filter)",
            pb::SearchRequest {
                states: states(&[pb::State::Active]),
                include_revoked: true,
                ..Default::default()
            },
            Box::new(|t| t.state() == pb::State::Active),
        ),
        (
            "owner alice",
            pb::SearchRequest {
                owner_id: "alice".into(),
                ..Default::default()
            },
            Box::new(|t| live(t) && t.owner_id == "alice"),
        ),
        (
            "owner alice in acme",
            pb::SearchRequest {
                owner_id: "alice".into(),
                account_id: "acme".into(),
                ..Default::default()
            },
            Box::new(|t| live(t) && t.owner_id == "alice" && t.account_id == "acme"),
        ),
        (
            "account globex",
            pb::SearchRequest {
                account_id: "globex".into(),
                ..Default::default()
            },
            Box::new(|t| live(t) && t.account_id == "globex"),
        ),
        (
            "account nobody",
            pb::SearchRequest {
                account_id: "nobody".into(),
                ..Default::default()
            },
            Box::new(|_| false),
        ),
        (
            "created_by boss",
            pb::SearchRequest {
                created_by: "boss".into(),
                ..Default::default()
            },
            Box::new(|t| live(t) && t.created_by == "boss"),
        ),
        (
            "created_by ops",
            pb::SearchRequest {
                created_by: "ops".into(),
                include_revoked: true,
                ..Default::default()
            },
            Box::new(|t| t.created_by == "ops"),
        ),
        (
            "module billing:read",
            pb::SearchRequest {
                module: "billing:read".into(),
                ..Default::default()
            },
            Box::new(|t| live(t) && t.modules.iter().any(|m| m == "billing:read")),
        ),
        (
            "module storage:* (exact)",
            pb::SearchRequest {
                module: "storage:*".into(),
                ..Default::default()
            },
            Box::new(|t| live(t) && t.modules.iter().any(|m| m == "storage:*")),
        ),
        (
            "module billing (no prefix match)",
            pb::SearchRequest {
                module: "billing".into(),
                ..Default::default()
            },
            Box::new(|_| false),
        ),
        (
            "module billing:* (no wildcard)",
            pb::SearchRequest {
                module: "billing:*".into(),
                ..Default::default()
            },
            Box::new(|_| false),
        ),
        (
            "created_after m1",
            pb::SearchRequest {
                created_after: Some(ts(m1)),
                ..Default::default()
            },
            Box::new(move |t| live(t) && created(t) >= m1),
        ),
        (
            "created_before m1",
            pb::SearchRequest {
                created_before: Some(ts(m1)),
                ..Default::default()
            },
            Box::new(move |t| live(t) && created(t) < m1),
        ),
        (
            "created in [m1, m2)",
            pb::SearchRequest {
                created_after: Some(ts(m1)),
                created_before: Some(ts(m2)),
                ..Default::default()
            },
            Box::new(move |t| live(t) && created(t) >= m1 && created(t) < m2),
        ),
        (
            "created_after == a token's created_at (inclusive)",
            pb::SearchRequest {
                created_after: model[4].created_at,
                include_revoked: true,
                ..Default::default()
            },
            Box::new({
                let c = created(&model[4]);
                move |t| created(t) >= c
            }),
        ),
        (
            "created_before == a token's created_at (exclusive)",
            pb::SearchRequest {
                created_before: model[4].created_at,
                include_revoked: true,
                ..Default::default()
            },
            Box::new({
                let c = created(&model[4]);
                move |t| created(t) < c
            }),
        ),
        (
            "query + owner + account + module",
            pb::SearchRequest {
                query: "deploy".into(),
                owner_id: "alice".into(),
                account_id: "acme".into(),
                module: "billing:write".into(),
                ..Default::default()
            },
            Box::new({
                let t2 = t2.clone();
                move |t| t.id == t2
            }),
        ),
        (
            "module + owner",
            pb::SearchRequest {
                module: "billing:read".into(),
                owner_id: "bob".into(),
                ..Default::default()
            },
            Box::new(|t| {
                live(t) && t.owner_id == "bob" && t.modules.iter().any(|m| m == "billing:read")
            }),
        ),
        (
            "states disabled + owner alice",
            pb::SearchRequest {
                states: states(&[pb::State::Disabled]),
                owner_id: "alice".into(),
                ..Default::default()
            },
            Box::new(|_| false),
        ),
        (
            "states disabled+revoked + owner carol",
            pb::SearchRequest {
                states: states(&[pb::State::Disabled, pb::State::Revoked]),
                owner_id: "carol".into(),
                ..Default::default()
            },
            Box::new(|t| t.owner_id == "carol"),
        ),
        (
            "created_by boss + query",
            pb::SearchRequest {
                created_by: "boss".into(),
                query: "TOKEN".into(),
                ..Default::default()
            },
            Box::new(|t| live(t) && t.created_by == "boss"),
        ),
        (
            "created_before m2 + owner bob + created_after m1",
            pb::SearchRequest {
                created_before: Some(ts(m2)),
                created_after: Some(ts(m1)),
                owner_id: "bob".into(),
                ..Default::default()
            },
            Box::new(move |t| {
                live(t) && t.owner_id == "bob" && created(t) >= m1 && created(t) < m2
            }),
        ),
    ];
    for (what, req, keep) in cases {
        let want = expect(&model, |t| keep(t));
        let got = ids(&client, &p, req).await;
        assert_eq!(got, want, "{what}");
    }
    // Spot checks that the model itself is right.
    assert_eq!(
        ids(
            &client,
            &p,
            pb::SearchRequest {
                query: "deploy".into(),
                ..Default::default()
            }
        )
        .await,
        vec![t5.clone(), t2.clone(), t1.clone()]
    );
    assert_eq!(
        ids(
            &client,
            &p,
            pb::SearchRequest {
                created_after: Some(ts(m1)),
                created_before: Some(ts(m2)),
                ..Default::default()
            }
        )
        .await,
        vec![t4.clone(), t3.clone()]
    );
    assert_eq!(
        ids(
            &client,
            &p,
            pb::SearchRequest {
                module: "billing:read".into(),
                ..Default::default()
            }
        )
        .await,
        vec![t5.clone(), t3.clone(), t1.clone()]
    );
    assert_eq!(
        ids(
            &client,
            &p,
            pb::SearchRequest {
                states: states(&[pb::State::Revoked]),
                ..Default::default()
            }
        )
        .await,
        vec![t7.clone()]
    );
    assert_eq!(
        ids(
            &client,
            &p,
            pb::SearchRequest {
                query: "%".into(),
                ..Default::default()
            }
        )
        .await,
        vec![t3.clone()]
    );
    assert_eq!(
        ids(
            &client,
            &p,
            pb::SearchRequest {
                query: "_".into(),
                ..Default::default()
            }
        )
        .await,
        vec![t4.clone()]
    );
    // Results carry full records, never a secret.
    let resp = client
        .search(
            &p,
            pb::SearchRequest {
                owner_id: "carol".into(),
                states: states(&[pb::State::Disabled]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(resp.tokens.len(), 1);
    assert_eq!(resp.tokens[0].id, t6);
    assert_eq!(resp.tokens[0].name, "Disabled one");
    assert_eq!(resp.tokens[0].modules, vec!["x".to_owned()]);
    assert!(resp.tokens[0].disabled_at.is_some());
    assert!(resp.next_page_token.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn query_with_a_token_value_matches_only_that_token_when_the_secret_verifies() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let (a, a_value) = issue(&app, &p, "acme", "alice", "alpha", &[]).await;
    let (b, b_value) = issue(&app, &p, "acme", "alice", "beta", &[]).await;
    let q = |query: &str| pb::SearchRequest {
        query: query.into(),
        ..Default::default()
    };

    assert_eq!(ids(&client, &p, q(&a_value)).await, vec![a.clone()]);
    assert_eq!(ids(&client, &p, q(&b_value)).await, vec![b.clone()]);
    // Wrong secret for a real id, and a well-formed value of no token: nothing.
    let wrong = TokenValue::generate_for("tk", TokenId::parse(&a).unwrap())
        .unwrap()
        .expose();
    assert!(ids(&client, &p, q(&wrong)).await.is_empty());
    let unknown = TokenValue::generate("tk").unwrap().expose();
    assert!(ids(&client, &p, q(&unknown)).await.is_empty());
    // Combined with a filter that excludes it: nothing.
    assert!(
        ids(
            &client,
            &p,
            pb::SearchRequest {
                owner_id: "bob".into(),
                ..q(&a_value)
            }
        )
        .await
        .is_empty()
    );
    // The bare id is not a value: it is searched as a name and matches nothing.
    assert!(ids(&client, &p, q(&a)).await.is_empty());

    // After a rotate with grace both values find it; after the grace-less one, the old does not.
    let r = client
        .rotate(
            &p,
            pb::RotateRequest {
                id: a.clone(),
                grace_period: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&client, &p, q(&a_value)).await, vec![a.clone()]);
    assert_eq!(ids(&client, &p, q(&r.secret)).await, vec![a.clone()]);
    let r2 = client
        .rotate(
            &p,
            pb::RotateRequest {
                id: a.clone(),
                grace_period: None,
            },
        )
        .await
        .unwrap();
    assert!(ids(&client, &p, q(&r.secret)).await.is_empty());
    assert_eq!(ids(&client, &p, q(&r2.secret)).await, vec![a.clone()]);

    // Revoked: hidden by default, found with include_revoked.
    client.revoke_value(&p, &b_value, "").await.unwrap();
    assert!(ids(&client, &p, q(&b_value)).await.is_empty());
    assert_eq!(
        ids(
            &client,
            &p,
            pb::SearchRequest {
                include_revoked: true,
                ..q(&b_value)
            }
        )
        .await,
        vec![b.clone()]
    );
    app.stop().await;
}

#[tokio::test]
async fn last_used_filters_see_flushed_use_and_never_used_counts_as_stale() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let (_, validator) = app.token_for("acme", "gw", &["tokens:validate"]).await;
    let (u1, v1) = issue(&app, &p, "acme", "lu", "u1", &[]).await;
    let (u2, v2) = issue(&app, &p, "acme", "lu", "u2", &[]).await;
    let (u3, v3) = issue(&app, &p, "acme", "lu", "u3", &[]).await;
    let by_owner = |req: pb::SearchRequest| pb::SearchRequest {
        owner_id: "lu".into(),
        ..req
    };

    let before_use = mark().await;
    assert!(app.validate_with(&validator, &v1, &[]).await.valid);
    assert!(app.validate_with(&validator, &v2, &[]).await.valid);
    let after_use = mark().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t1 = client.token(&p, &u1).await.unwrap();
    let used_at = t1.last_used_at.expect("last_used_at flushed");
    let used_at = DateTime::from_timestamp(used_at.seconds, used_at.nanos as u32).unwrap();
    assert!(used_at >= before_use && used_at <= after_use, "{used_at}");
    assert_eq!(client.token(&p, &u3).await.unwrap().last_used_at, None);

    let q = |after: Option<DateTime<Utc>>, before: Option<DateTime<Utc>>| {
        by_owner(pb::SearchRequest {
            last_used_after: after.map(ts),
            last_used_before: before.map(ts),
            ..Default::default()
        })
    };
    assert_eq!(
        ids(&client, &p, q(Some(before_use), None)).await,
        vec![u2.clone(), u1.clone()]
    );
    assert!(ids(&client, &p, q(Some(after_use), None)).await.is_empty());
    // Stale before `before_use`: only the never-used one.
    assert_eq!(
        ids(&client, &p, q(None, Some(before_use))).await,
        vec![u3.clone()]
    );
    assert_eq!(
        ids(&client, &p, q(None, Some(after_use))).await,
        vec![u3.clone(), u2.clone(), u1.clone()]
    );
    // Both bounds: used within the window (never-used does not qualify for "after").
    assert_eq!(
        ids(&client, &p, q(Some(before_use), Some(after_use))).await,
        vec![u2.clone(), u1.clone()]
    );

    // Later use of u3 (as an RPC credential this time).
    let later = mark().await;
    client
        .get(&v3, pb::GetRequest { id: u3.clone() })
        .await
        .ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ids(&client, &p, q(Some(later), None)).await,
        vec![u3.clone()]
    );
    assert_eq!(
        ids(&client, &p, q(None, Some(later))).await,
        vec![u2.clone(), u1.clone()]
    );
    app.stop().await;
}

#[tokio::test]
async fn pagination_returns_every_token_once_and_is_stable() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let by = |owner: &str, size: i32| pb::SearchRequest {
        owner_id: owner.into(),
        page_size: size,
        ..Default::default()
    };
    let mut seven = Vec::new();
    for i in 0..7 {
        seven.push(
            issue(&app, &p, "acme", "pager", &format!("p{i}"), &[])
                .await
                .0,
        );
    }
    seven.reverse(); // newest first
    let all = ids(&client, &p, by("pager", 0)).await;
    assert_eq!(all, seven, "newest first");
    let got = pages(&client, &p, by("pager", 2)).await;
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 2, 1]
    );
    assert_eq!(got.concat(), seven);
    let got = pages(&client, &p, by("pager", 7)).await;
    assert_eq!(got, vec![seven.clone()]);

    // An exact multiple: no token after the last full page.
    let mut six = Vec::new();
    for i in 0..6 {
        six.push(
            issue(&app, &p, "acme", "six", &format!("s{i}"), &[])
                .await
                .0,
        );
    }
    six.reverse();
    let got = pages(&client, &p, by("six", 2)).await;
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 2]);
    assert_eq!(got.concat(), six);

    // Stability: newer tokens inserted between pages neither appear nor shift pages.
    let first = client.search(&p, by("pager", 2)).await.unwrap();
    assert_eq!(
        first
            .tokens
            .iter()
            .map(|t| t.id.clone())
            .collect::<Vec<_>>(),
        seven[..2]
    );
    let (new1, _) = issue(&app, &p, "acme", "pager", "late 1", &[]).await;
    let (new2, _) = issue(&app, &p, "acme", "pager", "late 2", &[]).await;
    let mut rest = Vec::new();
    let mut token = first.next_page_token.clone();
    while !token.is_empty() {
        let resp = client
            .search(
                &p,
                pb::SearchRequest {
                    page_token: token.clone(),
                    ..by("pager", 2)
                },
            )
            .await
            .unwrap();
        assert!(resp.tokens.len() <= 2);
        rest.extend(resp.tokens.into_iter().map(|t| t.id));
        token = resp.next_page_token;
    }
    assert_eq!(rest, seven[2..]);
    assert!(!rest.contains(&new1) && !rest.contains(&new2));
    // A fresh listing starts with them.
    let fresh = ids(&client, &p, by("pager", 0)).await;
    assert_eq!(fresh[..2], [new2, new1]);
    assert_eq!(fresh[2..], seven[..]);

    // A page token replayed with other filters, or garbage: INVALID_ARGUMENT.
    let changed = [
        by("six", 2),
        pb::SearchRequest {
            query: "p".into(),
            ..by("pager", 2)
        },
        pb::SearchRequest {
            include_revoked: true,
            ..by("pager", 2)
        },
        pb::SearchRequest {
            states: states(&[pb::State::Active]),
            ..by("pager", 2)
        },
        pb::SearchRequest {
            module: "m".into(),
            ..by("pager", 2)
        },
    ];
    for req in changed {
        let err = client
            .search(
                &p,
                pb::SearchRequest {
                    page_token: first.next_page_token.clone(),
                    ..req
                },
            )
            .await
            .unwrap_err();
        assert_invalid(&err, "page_token");
    }
    for garbage in [
        "x",
        "dDEuMTIzLmFiYy5kZWY",
        "!!!",
        &first.next_page_token[1..],
    ] {
        let err = client
            .search(
                &p,
                pb::SearchRequest {
                    page_token: garbage.into(),
                    ..by("pager", 2)
                },
            )
            .await
            .unwrap_err();
        assert_invalid(&err, "page_token");
    }
    app.stop().await;
}

#[tokio::test]
async fn page_size_defaults_to_50_and_is_bounded() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..51 {
        let c = client.clone();
        let p = app.platform.clone();
        set.spawn(async move {
            c.issue(
                &p,
                pb::IssueRequest {
                    owner_id: "bulk".into(),
                    name: format!("bulk {i}"),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let p = app.platform.clone();
    let req = |size: i32| pb::SearchRequest {
        owner_id: "bulk".into(),
        page_size: size,
        ..Default::default()
    };
    let first = client.search(&p, req(0)).await.unwrap();
    assert_eq!(first.tokens.len(), 50);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .search(
            &p,
            pb::SearchRequest {
                page_token: first.next_page_token.clone(),
                ..req(0)
            },
        )
        .await
        .unwrap();
    assert_eq!(second.tokens.len(), 1);
    assert!(second.next_page_token.is_empty());
    let all = client.search(&p, req(500)).await.unwrap();
    assert_eq!(all.tokens.len(), 51);
    assert!(all.next_page_token.is_empty());
    let mut everything: Vec<String> = first
        .tokens
        .iter()
        .chain(&second.tokens)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(
        everything,
        all.tokens.iter().map(|t| t.id.clone()).collect::<Vec<_>>()
    );
    everything.sort();
    everything.dedup();
    assert_eq!(everything.len(), 51);
    assert_eq!(client.search(&p, req(1)).await.unwrap().tokens.len(), 1);
    for bad in [-1, 501, i32::MAX, i32::MIN] {
        let err = client.search(&p, req(bad)).await.unwrap_err();
        assert_invalid(&err, "page_size");
    }

    // ListEvents has the same default: 51 ISSUED events + the bootstrap's.
    let ev = |size: i32, page_token: String| pb::ListEventsRequest {
        page_size: size,
        page_token,
        ..Default::default()
    };
    let first = client.list_events(&p, ev(0, String::new())).await.unwrap();
    assert_eq!(first.events.len(), 50);
    assert!(!first.next_page_token.is_empty());
    let second = client
        .list_events(&p, ev(0, first.next_page_token))
        .await
        .unwrap();
    assert_eq!(second.events.len(), 2);
    assert!(second.next_page_token.is_empty());
    assert_eq!(second.events[1].actor_token_id, "bootstrap");
    let all = client
        .list_events(&p, ev(500, String::new()))
        .await
        .unwrap();
    assert_eq!(all.events.len(), 52);
    assert_eq!(
        first
            .events
            .iter()
            .chain(&second.events)
            .map(|e| e.id)
            .collect::<Vec<_>>(),
        all.events.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    app.stop().await;
}

#[tokio::test]
async fn search_is_scoped_to_the_caller() {
    let app = spawn_app().await;
    let client = app.api.clone();
    let p = app.platform.clone();
    let (alice_id, alice) = app.token_for("acme", "alice", &["tokens:self"]).await;
    let (boss_id, boss) = app.token_for("acme", "boss", &["tokens:admin"]).await;
    let (_, validator) = app.token_for("acme", "gw", &["tokens:validate"]).await;
    let (a1, _) = issue(&app, &p, "acme", "alice", "a1", &[]).await;
    let (b1, _) = issue(&app, &p, "acme", "bob", "b1", &[]).await;
    let (g1, _) = issue(&app, &p, "globex", "alice", "g1", &[]).await;

    assert_eq!(
        ids(&client, &alice, pb::SearchRequest::default()).await,
        vec![a1.clone(), alice_id.clone()]
    );
    assert!(
        ids(
            &client,
            &alice,
            pb::SearchRequest {
                owner_id: "bob".into(),
                ..Default::default()
            }
        )
        .await
        .is_empty()
    );
    let admin_sees = ids(&client, &boss, pb::SearchRequest::default()).await;
    assert!(admin_sees.contains(&b1) && admin_sees.contains(&a1));
    assert!(admin_sees.contains(&boss_id) && admin_sees.contains(&id_of(&p)));
    assert!(!admin_sees.contains(&g1));
    assert_eq!(admin_sees.len(), 6);
    let platform_sees = ids(&client, &p, pb::SearchRequest::default()).await;
    assert_eq!(platform_sees.len(), 7);
    assert_eq!(platform_sees[0], g1);
    // A value query does not reach past the caller's scope.
    let (_, bob_value) = issue(&app, &p, "acme", "bob", "b2", &[]).await;
    let by_value = pb::SearchRequest {
        query: bob_value.clone(),
        ..Default::default()
    };
    assert!(ids(&client, &alice, by_value.clone()).await.is_empty());
    assert_eq!(ids(&client, &boss, by_value.clone()).await.len(), 1);
    let err = client
        .search(&validator, pb::SearchRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    app.stop().await;
}

/// The page size may change between pages (only the filters are bound to a
/// page token): the second page continues where the first ended.
#[tokio::test]
async fn page_size_may_change_between_pages() {
    let app = spawn_app().await;
    let client = app.api.clone();
    for i in 0..5 {
        app.token_for("acme", &format!("pager-{i}"), &["x:read"])
            .await;
    }
    let all = client
        .search(
            &app.platform,
            pb::SearchRequest {
                module: "x:read".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .tokens;
    assert_eq!(all.len(), 5);
    let first = client
        .search(
            &app.platform,
            pb::SearchRequest {
                module: "x:read".into(),
                page_size: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let second = client
        .search(
            &app.platform,
            pb::SearchRequest {
                module: "x:read".into(),
                page_size: 3,
                page_token: first.next_page_token.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let ids: Vec<String> = first
        .tokens
        .iter()
        .chain(&second.tokens)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(ids, all.iter().map(|t| t.id.clone()).collect::<Vec<_>>());
    assert!(second.next_page_token.is_empty());
}
