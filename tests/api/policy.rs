//! Account policies: who may read and change them, how bad values are
//! refused (each naming its field), the audit event of a change, the server's
//! defaults, and each rule as Issue, Update, Duplicate and Rotate enforce it
//! (refused naming the rule, never silently adjusted; tightening kills no
//! existing token). The rule scenario runs on SQLite and, with
//! `TOKEND_TEST_POSTGRES_URL`, on PostgreSQL.

use chrono::{Duration as Days, Utc};
use prost_types::Duration;
use tokend::pb::{self, token_service_client::TokenServiceClient};
use tonic::{Code, Status, transport::Channel};

use crate::helpers::{self, TestApp, authed, mask, spawn_app, spawn_app_with, ts, violation};

type Client = TokenServiceClient<Channel>;

const DAY: i64 = 86_400;

fn days(n: i64) -> Option<Duration> {
    Some(Duration {
        seconds: n * DAY,
        nanos: 0,
    })
}

async fn update_policy(
    client: &mut Client,
    caller: &str,
    policy: pb::AccountPolicy,
    paths: &[&str],
) -> Result<pb::AccountPolicy, Status> {
    client
        .update_account_policy(authed(
            caller,
            pb::UpdateAccountPolicyRequest {
                policy: Some(policy),
                update_mask: mask(paths),
            },
        ))
        .await
        .map(|r| r.into_inner().policy.unwrap())
}

async fn get_policy(
    client: &mut Client,
    caller: &str,
    account: &str,
) -> Result<pb::AccountPolicy, Status> {
    client
        .get_account_policy(authed(
            caller,
            pb::GetAccountPolicyRequest {
                account_id: account.into(),
            },
        ))
        .await
        .map(|r| r.into_inner().policy.unwrap())
}

fn issue_req(name: &str, expires_in_days: Option<i64>) -> pb::IssueRequest {
    pb::IssueRequest {
        name: name.into(),
        modules: vec!["read".into()],
        expires_at: expires_in_days.map(|d| ts(Utc::now() + Days::days(d))),
        ..Default::default()
    }
}

async fn issue(
    client: &mut Client,
    caller: &str,
    req: pb::IssueRequest,
) -> Result<pb::IssueResponse, Status> {
    client
        .issue(authed(caller, req))
        .await
        .map(|r| r.into_inner())
}

/// The names of the tokens a Search as `caller` finds, sorted.
async fn search_names(
    client: &mut Client,
    caller: &str,
    filters: impl FnOnce(&mut pb::SearchRequest),
) -> Vec<String> {
    let mut req = pb::SearchRequest {
        page_size: 500,
        ..Default::default()
    };
    filters(&mut req);
    let mut names: Vec<String> = client
        .search(authed(caller, req))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn only_the_accounts_admin_or_a_platform_caller_may_read_or_change_its_policy() {
    let app = spawn_app().await;
    let mut client = app.api.raw();
    let (_, admin) = app.token_for("acme", "alice", &["tokens:admin"]).await;
    let (_, selfish) = app.token_for("acme", "bob", &["tokens:self"]).await;
    let (_, validator) = app.token_for("acme", "v", &["tokens:validate"]).await;
    let (_, other_admin) = app.token_for("globex", "carol", &["tokens:admin"]).await;
    let change = pb::AccountPolicy {
        account_id: "acme".into(),
        require_expiry: true,
        ..Default::default()
    };

    for caller in [&selfish, &validator, &other_admin] {
        let err = update_policy(&mut client, caller, change.clone(), &["require_expiry"])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        let err = get_policy(&mut client, caller, "acme").await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    // Nothing changed, and nothing was recorded.
    let p = get_policy(&mut client, &admin, "").await.unwrap();
    assert_eq!(p.account_id, "acme");
    assert!(!p.custom && !p.require_expiry);

    let p = update_policy(&mut client, &admin, change.clone(), &["require_expiry"])
        .await
        .unwrap();
    assert!(p.custom && p.require_expiry);
    assert_eq!(p.updated_by, "alice");
    // A platform caller may change any account's policy.
    let p = update_policy(
        &mut client,
        &app.platform,
        pb::AccountPolicy {
            account_id: "globex".into(),
            max_lifetime: days(90),
            ..Default::default()
        },
        &["max_lifetime"],
    )
    .await
    .unwrap();
    assert_eq!(
        (p.account_id.as_str(), p.max_lifetime),
        ("globex", days(90))
    );
    let p = get_policy(&mut client, &other_admin, "").await.unwrap();
    assert_eq!(p.max_lifetime, days(90));
    assert!(!p.require_expiry, "acme's change stayed in acme");
}

#[tokio::test]
async fn bad_policy_values_are_invalid_argument_naming_the_field() {
    let app = spawn_app().await;
    let mut client = app.api.raw();
    let negative = Some(Duration {
        seconds: -DAY,
        nanos: 0,
    });
    let cases: Vec<(pb::AccountPolicy, &[&str], &str)> = vec![
        (
            pb::AccountPolicy {
                max_lifetime: negative,
                ..Default::default()
            },
            &["max_lifetime"],
            "policy.max_lifetime",
        ),
        (
            pb::AccountPolicy {
                max_lifetime: days(0),
                ..Default::default()
            },
            &["max_lifetime"],
            "policy.max_lifetime",
        ),
        (
            pb::AccountPolicy {
                disable_unused_after: negative,
                ..Default::default()
            },
            &["disable_unused_after"],
            "policy.disable_unused_after",
        ),
        (
            pb::AccountPolicy {
                max_tokens_per_owner: -1,
                ..Default::default()
            },
            &["max_tokens_per_owner"],
            "policy.max_tokens_per_owner",
        ),
        (
            pb::AccountPolicy {
                default_allowed_cidrs: vec!["10.0.0.0/8".into(), "10.1.2.3/8".into()],
                ..Default::default()
            },
            &["default_allowed_cidrs"],
            "policy.default_allowed_cidrs[1]",
        ),
        (
            pb::AccountPolicy {
                default_allowed_cidrs: vec!["not-an-ip".into()],
                ..Default::default()
            },
            &["default_allowed_cidrs"],
            "policy.default_allowed_cidrs[0]",
        ),
        (
            pb::AccountPolicy {
                expiry_notice_before: vec![
                    Duration {
                        seconds: 7 * DAY,
                        nanos: 0,
                    },
                    Duration {
                        seconds: -DAY,
                        nanos: 0,
                    },
                ],
                ..Default::default()
            },
            &["expiry_notice_before"],
            "policy.expiry_notice_before[1]",
        ),
        (
            pb::AccountPolicy::default(),
            &["max_lifetime", "colour"],
            "update_mask.paths[1]",
        ),
        (pb::AccountPolicy::default(), &[], "update_mask"),
        (
            pb::AccountPolicy {
                account_id: "bad account\n".into(),
                ..Default::default()
            },
            &["require_expiry"],
            "policy.account_id",
        ),
    ];
    for (policy, paths, field) in cases {
        let err = update_policy(&mut client, &app.platform, policy, paths)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert_eq!(violation(&err), field, "{err:?}");
    }
    let p = get_policy(&mut client, &app.platform, "").await.unwrap();
    assert!(!p.custom, "no bad update was stored");
}

/// Each rule, as every write path enforces it; the same on both stores.
async fn rules_are_enforced(app: &TestApp) {
    let mut client = app.api.raw();
    let (_, admin) = app.token_for("acme", "alice", &["tokens:admin"]).await;

    // Before any policy: a token without expiry, and one for 400 days.
    let forever = issue(&mut client, &admin, issue_req("forever", None))
        .await
        .unwrap();
    let long = issue(&mut client, &admin, issue_req("long", Some(400)))
        .await
        .unwrap();
    let forever_id = forever.token.unwrap().id;
    let long_id = long.token.unwrap().id;

    let p = update_policy(
        &mut client,
        &admin,
        pb::AccountPolicy {
            max_lifetime: days(30),
            require_expiry: true,
            max_tokens_per_owner: 5,
            ..Default::default()
        },
        &["max_lifetime", "require_expiry", "max_tokens_per_owner"],
    )
    .await
    .unwrap();
    assert_eq!(
        (p.max_lifetime, p.require_expiry, p.max_tokens_per_owner),
        (days(30), true, 5)
    );

    // The change is audited, with the new values, as the admin.
    let events = client
        .list_events(authed(
            &admin,
            pb::ListEventsRequest {
                account_id: "acme".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let e = &events[0];
    assert_eq!(e.kind, pb::EventKind::PolicyUpdated as i32);
    assert_eq!(
        (
            e.account_id.as_str(),
            e.token_id.as_str(),
            e.actor_owner_id.as_str()
        ),
        ("acme", "", "alice")
    );
    assert!(
        e.detail.contains("max_lifetime=30days") && e.detail.contains("require_expiry=true"),
        "{}",
        e.detail
    );

    // Tightening killed nothing: both old tokens still validate.
    for value in [&forever.secret, &long.secret] {
        let v = app.validate_with(&app.platform, value, &[]).await;
        assert!(v.valid, "{v:?}");
    }

    // Issue: a missing expiry, or one past the cap, is refused naming the rule.
    let err = issue(&mut client, &admin, issue_req("none", None))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), violation(&err)),
        (Code::InvalidArgument, "expires_at".into())
    );
    assert!(
        err.message().contains("require_expiry"),
        "{}",
        err.message()
    );
    let err = issue(&mut client, &admin, issue_req("too long", Some(31)))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), violation(&err)),
        (Code::InvalidArgument, "expires_at".into())
    );
    assert!(err.message().contains("max_lifetime"), "{}", err.message());
    let ok = issue(&mut client, &admin, issue_req("fits", Some(29)))
        .await
        .unwrap();
    let ok_token = ok.token.unwrap();
    // Never silently shortened: the expiry is the one asked for.
    assert!(ok_token.expires_at.unwrap().seconds > (Utc::now() + Days::days(28)).timestamp());

    // Update: the old token's name may change; its expiry only within the rules.
    let rename = pb::UpdateRequest {
        id: forever_id.clone(),
        name: "renamed".into(),
        update_mask: mask(&["name"]),
        ..Default::default()
    };
    client.update(authed(&admin, rename)).await.unwrap();
    let too_far = pb::UpdateRequest {
        id: forever_id.clone(),
        expires_at: Some(ts(Utc::now() + Days::days(60))),
        update_mask: mask(&["expires_at"]),
        ..Default::default()
    };
    let err = client.update(authed(&admin, too_far)).await.unwrap_err();
    assert_eq!(
        (err.code(), violation(&err)),
        (Code::InvalidArgument, "expires_at".into())
    );
    assert!(err.message().contains("max_lifetime"));
    let unset = pb::UpdateRequest {
        id: ok_token.id.clone(),
        update_mask: mask(&["expires_at"]),
        ..Default::default()
    };
    let err = client.update(authed(&admin, unset)).await.unwrap_err();
    assert!(err.message().contains("require_expiry"), "{err:?}");

    // Rotate and Duplicate of a token that breaks the policy: FAILED_PRECONDITION.
    for id in [&forever_id, &long_id] {
        let err = client
            .rotate(authed(
                &admin,
                pb::RotateRequest {
                    id: id.clone(),
                    grace_period: None,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        let err = client
            .duplicate(authed(
                &admin,
                pb::DuplicateRequest {
                    allowed_cidrs: Vec::new(),
                    id: id.clone(),
                    name: String::new(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("account policy"), "{err:?}");
    }
    // Brought in line, it rotates and duplicates again.
    let in_line = pb::UpdateRequest {
        id: long_id.clone(),
        expires_at: Some(ts(Utc::now() + Days::days(10))),
        update_mask: mask(&["expires_at"]),
        ..Default::default()
    };
    client.update(authed(&admin, in_line)).await.unwrap();
    client
        .rotate(authed(
            &admin,
            pb::RotateRequest {
                id: long_id.clone(),
                grace_period: None,
            },
        ))
        .await
        .unwrap();
    client
        .duplicate(authed(
            &admin,
            pb::DuplicateRequest {
                allowed_cidrs: Vec::new(),
                id: long_id.clone(),
                name: String::new(),
            },
        ))
        .await
        .unwrap();

    // Search shows which tokens break the policy (to bring them in line),
    // and filters by expiry.
    assert_eq!(
        search_names(&mut client, &admin, |r| r.breaks_policy = true).await,
        ["alice token", "bootstrap", "renamed"]
    );
    let horizon = ts(Utc::now() + Days::days(15));
    assert_eq!(
        search_names(&mut client, &admin, |r| r.expires_before = Some(horizon)).await,
        ["long", "long (copy)"]
    );
    assert_eq!(
        search_names(&mut client, &admin, |r| r.expires_after = Some(horizon)).await,
        ["alice token", "bootstrap", "fits", "renamed"]
    );
    let err = client
        .search(authed(
            &app.platform,
            pb::SearchRequest {
                breaks_policy: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), violation(&err)),
        (Code::InvalidArgument, "breaks_policy".into())
    );

    // max_tokens_per_owner (5) overrides the server's 100: owner alice holds
    // the admin token, forever, long, fits and the duplicate.
    let err = issue(&mut client, &admin, issue_req("one too many", Some(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    update_policy(
        &mut client,
        &admin,
        pb::AccountPolicy {
            max_tokens_per_owner: 0,
            ..Default::default()
        },
        &["max_tokens_per_owner"],
    )
    .await
    .unwrap();
    issue(
        &mut client,
        &admin,
        issue_req("server default again", Some(1)),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn policy_rules_are_enforced_by_every_write_path_on_sqlite() {
    let app = spawn_app().await;
    rules_are_enforced(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_rules_are_enforced_by_every_write_path_on_postgres() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(app) = helpers::spawn_app_pg(
        "policy_rules_are_enforced_by_every_write_path_on_postgres",
        |_| {},
    )
    .await
    else {
        return;
    };
    rules_are_enforced(&app).await;
}

#[tokio::test]
async fn server_flags_give_the_policy_of_accounts_without_one() {
    let app = spawn_app_with(|c| {
        c.policy_defaults.policy_require_expiry = true;
        c.policy_defaults.policy_max_lifetime = Some(std::time::Duration::from_secs(7 * 86_400));
    })
    .await;
    let mut client = app.api.raw();
    let p = get_policy(&mut client, &app.platform, "globex")
        .await
        .unwrap();
    assert!(!p.custom && p.require_expiry);
    assert_eq!(p.max_lifetime, days(7));
    assert_eq!(
        p.expiry_notice_before,
        vec![days(30).unwrap(), days(7).unwrap(), days(1).unwrap()]
    );
    let err = issue(&mut client, &app.platform, issue_req("none", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    issue(&mut client, &app.platform, issue_req("week", Some(6)))
        .await
        .unwrap();

    // An account's own policy replaces the defaults, field by field from them.
    let p = update_policy(
        &mut client,
        &app.platform,
        pb::AccountPolicy {
            require_expiry: false,
            ..Default::default()
        },
        &["require_expiry"],
    )
    .await
    .unwrap();
    assert!(p.custom && !p.require_expiry);
    assert_eq!(p.max_lifetime, days(7), "unmasked fields keep the defaults");
}
