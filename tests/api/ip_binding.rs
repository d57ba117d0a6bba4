//! IP binding: tokens bound to CIDR ranges (`allowed_cidrs`) at Issue,
//! Update and Duplicate, defaulting to the account policy's
//! `default_allowed_cidrs`; Validate's `client_ip` checked against them,
//! failing closed (`REASON_IP_NOT_ALLOWED` outside the ranges or without an
//! address), on the cache's hit, miss and warm-start paths, and after a
//! change of ranges; and Search's `bound` filter. The gateways' side is in
//! `gateways.rs`, PostgreSQL replicas in `postgres/ip_binding.rs`.

use std::time::Duration;

use tokend::{config::Config, pb};
use tonic::{Code, Status};

use crate::helpers::{SharedDb, TestApp, authed, mask, spawn_app, spawn_app_with, strings};

/// The field the first violation of an INVALID_ARGUMENT names.
fn violation(status: &Status) -> String {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    crate::helpers::violation(status)
}

/// No background flush during the test, so every statement counted is one
/// the test caused.
fn quiet(c: &mut Config) {
    c.last_used_flush_interval = Duration::from_secs(3600);
}

/// Issues a token for alice with these ranges: (id, value, the record).
async fn issue_bound(app: &TestApp, ranges: &[&str]) -> (String, String, pb::Token) {
    let r = app
        .issue(
            &app.platform,
            pb::IssueRequest {
                owner_id: "alice".into(),
                name: "bound".into(),
                modules: strings(&["billing:read"]),
                allowed_cidrs: strings(ranges),
                ..Default::default()
            },
        )
        .await
        .expect("Issue");
    let token = r.token.expect("a token");
    (token.id.clone(), r.secret, token)
}

/// Validate of `value` from `client_ip` (empty: none sent).
async fn from(app: &TestApp, value: &str, client_ip: &str) -> Result<pb::ValidateResponse, Status> {
    app.validate(
        &app.platform,
        pb::ValidateRequest {
            token: value.into(),
            required_modules: Vec::new(),
            client_ip: client_ip.into(),
        },
    )
    .await
}

async fn reason_from(app: &TestApp, value: &str, client_ip: &str) -> pb::Reason {
    let r = from(app, value, client_ip).await.expect("Validate");
    assert_eq!(
        r.valid,
        r.reason() == pb::Reason::Valid,
        "valid and reason agree: {r:?}"
    );
    r.reason()
}

fn statements(app: &TestApp) -> u64 {
    app.store.statements_executed()
}

#[tokio::test]
async fn issued_ranges_are_normalised_deduplicated_and_shown() {
    let app = spawn_app().await;
    let (id, _, token) = issue_bound(
        &app,
        &[
            "10.0.0.1",
            "2001:DB8::/32",
            "10.0.0.1/32",
            "::ffff:192.0.2.0/120",
        ],
    )
    .await;
    let want = strings(&["10.0.0.1/32", "2001:db8::/32", "192.0.2.0/24"]);
    assert_eq!(token.allowed_cidrs, want);
    assert_eq!(
        app.token(&app.platform, &id).await.unwrap().allowed_cidrs,
        want
    );
    // An unbound token shows none.
    let (plain, _) = app.token_for("acme", "bob", &[]).await;
    assert!(
        app.token(&app.platform, &plain)
            .await
            .unwrap()
            .allowed_cidrs
            .is_empty()
    );
}

#[tokio::test]
async fn bad_ranges_and_addresses_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let issue = |ranges: Vec<String>| pb::IssueRequest {
        name: "n".into(),
        allowed_cidrs: ranges,
        ..Default::default()
    };
    for (ranges, field) in [
        (strings(&["10.0.0.0/8", "10.1.2.3/8"]), "allowed_cidrs[1]"),
        (strings(&["not-an-ip"]), "allowed_cidrs[0]"),
        (
            strings(&["10.0.0.0/8", "::/0", "2001:db8::/129"]),
            "allowed_cidrs[2]",
        ),
        (
            (0..33).map(|i| format!("10.0.0.{i}")).collect(),
            "allowed_cidrs",
        ),
    ] {
        let e = app.issue(&app.platform, issue(ranges)).await.unwrap_err();
        assert_eq!(violation(&e), field);
    }
    let (id, value) = app.token_for("acme", "alice", &[]).await;
    let e = app
        .update(
            &app.platform,
            pb::UpdateRequest {
                id: id.clone(),
                allowed_cidrs: strings(&["192.0.2.0/24", "192.0.2.0/33"]),
                update_mask: mask(&["allowed_cidrs"]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(violation(&e), "allowed_cidrs[1]");
    let e = app
        .duplicate(
            &app.platform,
            pb::DuplicateRequest {
                id: id.clone(),
                allowed_cidrs: strings(&["x"]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(violation(&e), "allowed_cidrs[0]");
    // A malformed client_ip is the caller's bad input, whatever the token
    // (this one is unbound).
    for bad in ["10.0.0.1:443", "[::1]", "localhost", "10.0.0.256"] {
        let e = from(&app, &value, bad).await.unwrap_err();
        assert_eq!(violation(&e), "client_ip", "{bad}");
    }
    // Nothing was changed by the refused requests.
    assert!(
        app.token(&app.platform, &id)
            .await
            .unwrap()
            .allowed_cidrs
            .is_empty()
    );
}

#[tokio::test]
async fn a_bound_token_validates_only_from_its_ranges_and_fails_closed() {
    let app = spawn_app_with(quiet).await;
    let (id, value, _) = issue_bound(&app, &["10.0.0.0/8", "2001:db8::/32"]).await;
    let before = statements(&app);
    for ip in [
        "10.1.2.3",
        "10.255.255.255",
        "2001:db8::5",
        "::ffff:10.9.8.7",
    ] {
        let r = from(&app, &value, ip).await.unwrap();
        assert!(r.valid, "{ip}: {r:?}");
        assert_eq!(r.token_id, id);
    }
    for ip in [
        "11.0.0.1",
        "9.255.255.255",
        "2001:db9::1",
        "::1",
        "::ffff:11.0.0.1",
        "",
    ] {
        let r = from(&app, &value, ip).await.unwrap();
        assert!(!r.valid, "{ip:?}");
        assert_eq!(r.reason(), pb::Reason::IpNotAllowed, "{ip:?}");
        // The secret verified: the token's fields come with the reason.
        assert_eq!(r.token_id, id, "{ip:?}");
    }
    assert_eq!(
        statements(&app) - before,
        0,
        "every verdict came from the cache (the token was cached at Issue)"
    );
    // State and expiry are judged first: a disabled bound token is DISABLED
    // from anywhere.
    app.disable(&app.platform, &id, "paused").await.unwrap();
    assert_eq!(
        reason_from(&app, &value, "11.0.0.1").await,
        pb::Reason::Disabled
    );
    // An unbound token ignores the address (well-formed or absent).
    let (_, plain) = app.token_for("acme", "bob", &[]).await;
    for ip in ["", "198.51.100.1", "2001:db8::1"] {
        assert_eq!(
            reason_from(&app, &plain, ip).await,
            pb::Reason::Valid,
            "{ip:?}"
        );
    }
}

#[tokio::test]
async fn the_ranges_hold_on_a_cache_miss_a_hit_and_a_warm_start() {
    let db = SharedDb::new();
    let first = db.spawn(quiet).await;
    let (id, value, _) = issue_bound(&first, &["192.0.2.0/24"]).await;

    // A cold instance: the first Validate reads the row (a miss), which must
    // carry the ranges; the second is a hit.
    let cold = db.spawn_cold(quiet).await;
    let before = statements(&cold);
    assert_eq!(
        reason_from(&cold, &value, "198.51.100.1").await,
        pb::Reason::IpNotAllowed
    );
    assert_eq!(statements(&cold) - before, 1, "one lookup on the miss");
    let before = statements(&cold);
    assert_eq!(
        reason_from(&cold, &value, "192.0.2.77").await,
        pb::Reason::Valid
    );
    assert_eq!(
        reason_from(&cold, &value, "").await,
        pb::Reason::IpNotAllowed
    );
    assert_eq!(statements(&cold) - before, 0, "then hits");

    // The other way round: allowed on the miss, denied on the hit.
    let cold2 = db.spawn_cold(quiet).await;
    assert_eq!(
        reason_from(&cold2, &value, "192.0.2.1").await,
        pb::Reason::Valid
    );
    let before = statements(&cold2);
    assert_eq!(
        reason_from(&cold2, &value, "192.0.3.1").await,
        pb::Reason::IpNotAllowed
    );
    assert_eq!(statements(&cold2) - before, 0);

    // A warm start loads the ranges with the row: hits from the first call.
    let warm = db.spawn(quiet).await;
    let before = statements(&warm);
    assert_eq!(
        reason_from(&warm, &value, "198.51.100.1").await,
        pb::Reason::IpNotAllowed
    );
    let r = from(&warm, &value, "192.0.2.9").await.unwrap();
    assert!(r.valid && r.token_id == id, "{r:?}");
    assert_eq!(
        statements(&warm) - before,
        0,
        "answered from the warm cache"
    );
}

#[tokio::test]
async fn an_update_of_ranges_takes_effect_on_the_next_validate_and_is_audited() {
    let app = spawn_app().await;
    let (id, value, _) = issue_bound(&app, &["10.0.0.0/8"]).await;
    assert_eq!(
        reason_from(&app, &value, "10.0.0.1").await,
        pb::Reason::Valid
    );

    let update = |ranges: &[&str]| pb::UpdateRequest {
        id: id.clone(),
        allowed_cidrs: strings(ranges),
        update_mask: mask(&["allowed_cidrs"]),
        ..Default::default()
    };
    let t = app
        .update_token(&app.platform, update(&["2001:db8::/48"]))
        .await
        .unwrap();
    assert_eq!(t.allowed_cidrs, ["2001:db8::/48"]);
    assert_eq!(
        reason_from(&app, &value, "10.0.0.1").await,
        pb::Reason::IpNotAllowed
    );
    assert_eq!(
        reason_from(&app, &value, "2001:db8:0:1::1").await,
        pb::Reason::Valid
    );

    // Another field's update leaves the ranges alone.
    let t = app
        .update_token(
            &app.platform,
            pb::UpdateRequest {
                id: id.clone(),
                name: "renamed".into(),
                update_mask: mask(&["name"]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(t.allowed_cidrs, ["2001:db8::/48"]);
    assert_eq!(
        reason_from(&app, &value, "10.0.0.1").await,
        pb::Reason::IpNotAllowed
    );

    // An empty list with the path in the mask unbinds.
    let t = app.update_token(&app.platform, update(&[])).await.unwrap();
    assert!(t.allowed_cidrs.is_empty());
    assert_eq!(reason_from(&app, &value, "").await, pb::Reason::Valid);
    assert_eq!(
        reason_from(&app, &value, "10.0.0.1").await,
        pb::Reason::Valid
    );

    let details: Vec<String> = app
        .events(&app.platform, &id)
        .await
        .into_iter()
        .filter(|e| e.kind() == pb::EventKind::Updated)
        .map(|e| e.detail)
        .collect();
    assert_eq!(
        details,
        [
            "fields: allowed_cidrs",
            "fields: name",
            "fields: allowed_cidrs"
        ],
        "newest first"
    );
}

async fn set_default_cidrs(app: &TestApp, ranges: &[&str]) {
    app.raw()
        .update_account_policy(authed(
            &app.platform,
            pb::UpdateAccountPolicyRequest {
                policy: Some(pb::AccountPolicy {
                    account_id: "acme".into(),
                    default_allowed_cidrs: strings(ranges),
                    ..Default::default()
                }),
                update_mask: mask(&["default_allowed_cidrs"]),
            },
        ))
        .await
        .expect("UpdateAccountPolicy");
}

#[tokio::test]
async fn new_tokens_get_the_policy_default_and_duplicates_copy_their_source() {
    let app = spawn_app().await;
    // Before any default: unbound.
    let (unbound_id, _) = app.token_for("acme", "alice", &[]).await;
    set_default_cidrs(&app, &["192.0.2.0/24"]).await;

    // Issue without ranges: the default; with ranges: its own.
    let (id, value, t) = issue_bound(&app, &[]).await;
    assert_eq!(t.allowed_cidrs, ["192.0.2.0/24"]);
    assert_eq!(
        reason_from(&app, &value, "198.51.100.1").await,
        pb::Reason::IpNotAllowed
    );
    assert_eq!(
        reason_from(&app, &value, "192.0.2.1").await,
        pb::Reason::Valid
    );
    let (_, _, own) = issue_bound(&app, &["198.51.100.0/24"]).await;
    assert_eq!(own.allowed_cidrs, ["198.51.100.0/24"]);
    // Other accounts keep the server's default (none).
    let r = app
        .issue_as(
            &app.platform,
            pb::IssueRequest {
                account_id: "globex".into(),
                owner_id: "gina".into(),
                name: "g".into(),
                ..Default::default()
            },
        )
        .await;
    assert!(r.token.unwrap().allowed_cidrs.is_empty());

    // Duplicate: the request's ranges, else the source's, else the default.
    let dup = |id: &str, ranges: &[&str]| pb::DuplicateRequest {
        id: id.into(),
        allowed_cidrs: strings(ranges),
        ..Default::default()
    };
    let (source_id, _, _) = issue_bound(&app, &["2001:db8::/32"]).await;
    let copy = app
        .duplicate(&app.platform, dup(&source_id, &[]))
        .await
        .unwrap();
    assert_eq!(copy.token.unwrap().allowed_cidrs, ["2001:db8::/32"]);
    let copy = app
        .duplicate(&app.platform, dup(&source_id, &["203.0.113.7"]))
        .await
        .unwrap();
    assert_eq!(copy.token.unwrap().allowed_cidrs, ["203.0.113.7/32"]);
    assert_eq!(
        reason_from(&app, &copy.secret, "203.0.113.7").await,
        pb::Reason::Valid
    );
    assert_eq!(
        reason_from(&app, &copy.secret, "2001:db8::1").await,
        pb::Reason::IpNotAllowed
    );
    let copy = app
        .duplicate(&app.platform, dup(&unbound_id, &[]))
        .await
        .unwrap();
    assert_eq!(copy.token.unwrap().allowed_cidrs, ["192.0.2.0/24"]);

    // Tightening the default changes no existing token.
    assert!(
        app.token(&app.platform, &unbound_id)
            .await
            .unwrap()
            .allowed_cidrs
            .is_empty()
    );
    let _ = id;
}

#[tokio::test]
async fn search_filters_bound_and_unbound_tokens() {
    let app = spawn_app().await;
    let (bound_a, _, _) = issue_bound(&app, &["10.0.0.0/8"]).await;
    let (bound_b, _, _) = issue_bound(&app, &["::1"]).await;
    let (plain, _) = app.token_for("acme", "alice", &[]).await;
    let search = |bound: Option<bool>| pb::SearchRequest {
        owner_id: "alice".into(),
        bound,
        include_total: true,
        ..Default::default()
    };
    let mut ids = app.search_ids(&app.platform, search(Some(true))).await;
    ids.sort();
    let mut want = vec![bound_a.clone(), bound_b.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        app.search_ids(&app.platform, search(Some(false))).await,
        [plain]
    );
    assert_eq!(app.search_ids(&app.platform, search(None)).await.len(), 3);
    let total = app
        .search(&app.platform, search(Some(true)))
        .await
        .unwrap()
        .total_size;
    assert_eq!(total, Some(2));
    // With the module filter (another plan): bound ones only.
    let r = app
        .search_ids(
            &app.platform,
            pb::SearchRequest {
                module: "billing:read".into(),
                bound: Some(true),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(r.len(), 2);

    // Unbinding moves a token from one side to the other.
    app.update_token(
        &app.platform,
        pb::UpdateRequest {
            id: bound_a.clone(),
            update_mask: mask(&["allowed_cidrs"]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        app.search_ids(&app.platform, search(Some(true))).await,
        [bound_b]
    );

    // A page token is bound to the filter: it cannot be replayed without it.
    let first = app
        .search(
            &app.platform,
            pb::SearchRequest {
                page_size: 1,
                ..search(Some(false))
            },
        )
        .await
        .unwrap();
    assert!(!first.next_page_token.is_empty());
    let e = app
        .search(
            &app.platform,
            pb::SearchRequest {
                page_size: 1,
                page_token: first.next_page_token.clone(),
                ..search(None)
            },
        )
        .await
        .unwrap_err();
    assert_eq!(violation(&e), "page_token");
    let next = app
        .search(
            &app.platform,
            pb::SearchRequest {
                page_size: 1,
                page_token: first.next_page_token,
                ..search(Some(false))
            },
        )
        .await
        .unwrap();
    assert_eq!(next.tokens.len(), 1);
}
