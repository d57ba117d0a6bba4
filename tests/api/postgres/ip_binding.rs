//! IP binding on PostgreSQL: the ranges stored and read back, the reason on
//! both a miss and a hit of another replica, an Update of ranges made through
//! one replica reaching another's cache within a second, and Search's
//! `bound` filter.

use std::time::{Duration, Instant};

use prost_types::FieldMask;
use tokend::pb;

use super::harness::*;
use crate::helpers::{self, strings};

async fn reason_from(c: &Client, caller: &str, value: &str, client_ip: &str) -> pb::Reason {
    let r = c
        .validate(
            caller,
            pb::ValidateRequest {
                token: value.into(),
                required_modules: Vec::new(),
                client_ip: client_ip.into(),
            },
        )
        .await
        .expect("Validate");
    assert_eq!(r.valid, r.reason() == pb::Reason::Valid, "{r:?}");
    r.reason()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ip_binding_holds_across_replicas_and_updates_reach_them_within_a_second() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) = helpers::fresh_pg_database(
        "ip_binding_holds_across_replicas_and_updates_reach_them_within_a_second",
    )
    .await
    else {
        return;
    };
    let apps = [replica(&url, |_| {}).await, replica(&url, |_| {}).await];
    let caller = apps[0].platform.clone();
    let (a, b) = (client(&apps[0]), client(&apps[1]));

    let issued = a
        .issue(
            &caller,
            pb::IssueRequest {
                owner_id: "alice".into(),
                name: "bound".into(),
                allowed_cidrs: strings(&["10.0.0.0/8", "2001:DB8::/32"]),
                ..Default::default()
            },
        )
        .await
        .expect("Issue");
    let token = issued.token.unwrap();
    let value = issued.secret;
    assert_eq!(token.allowed_cidrs, ["10.0.0.0/8", "2001:db8::/32"]);
    let read = b.token(&caller, &token.id).await.unwrap();
    assert_eq!(
        read.allowed_cidrs, token.allowed_cidrs,
        "stored and read back"
    );

    // B has never seen the value: its miss reads the ranges from the row.
    assert_eq!(
        reason_from(&b, &caller, &value, "11.0.0.1").await,
        pb::Reason::IpNotAllowed
    );
    assert_eq!(
        reason_from(&b, &caller, &value, "10.0.0.1").await,
        pb::Reason::Valid
    );
    assert_eq!(
        reason_from(&b, &caller, &value, "2001:db8::1").await,
        pb::Reason::Valid
    );
    assert_eq!(
        reason_from(&b, &caller, &value, "").await,
        pb::Reason::IpNotAllowed
    );

    // Rebind through A; B follows within a second.
    let started = Instant::now();
    a.update_token(
        &caller,
        pb::UpdateRequest {
            id: token.id.clone(),
            allowed_cidrs: strings(&["11.0.0.0/8"]),
            update_mask: Some(FieldMask {
                paths: strings(&["allowed_cidrs"]),
            }),
            ..Default::default()
        },
    )
    .await
    .expect("Update");
    loop {
        let moved = reason_from(&b, &caller, &value, "11.0.0.1").await == pb::Reason::Valid
            && reason_from(&b, &caller, &value, "10.0.0.1").await == pb::Reason::IpNotAllowed;
        if moved {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "replica B still judged by the old ranges after a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("ranges updated on A reached B in {}", ms(started.elapsed()));

    // Search's filter, on PostgreSQL.
    let (plain, _) = apps[0].token_for("acme", "alice", &[]).await;
    let search = |bound| pb::SearchRequest {
        owner_id: "alice".into(),
        bound: Some(bound),
        ..Default::default()
    };
    assert_eq!(b.search_ids(&caller, search(true)).await, [token.id]);
    assert_eq!(b.search_ids(&caller, search(false)).await, [plain]);

    drop(apps);
    drop_database(&url).await;
}
