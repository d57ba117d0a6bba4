//! The functional basics, on PostgreSQL exactly as on SQLite: one walk
//! through the whole API on each backend, compared observation by observation.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use chrono::Utc;
use tokend::domain::TokenValue;
use tokend::pb;
use tonic::Code;

use super::harness::*;
use crate::helpers::{self, TestApp, id_of, ts};

/// Maps token ids to stable labels so transcripts of two runs compare.
#[derive(Default)]
struct Labels(HashMap<String, String>);

impl Labels {
    fn add(&mut self, id: &str, label: &str) {
        self.0.insert(id.to_owned(), label.to_owned());
    }
    fn of(&self, id: &str) -> String {
        self.0.get(id).cloned().unwrap_or_else(|| format!("?{id}"))
    }
    fn all(&self, ids: &[String]) -> Vec<String> {
        ids.iter().map(|i| self.of(i)).collect()
    }
}

/// A token record without what legitimately differs between runs.
fn normalized(t: &pb::Token, labels: &Labels) -> String {
    format!(
        "{} acct={} owner={} by={}/{} name={:?} desc={:?} modules={:?} v={:?} meta={:?} \
         state={:?} expired={} reason={:?} expires={} disabled={} revoked={} prev={}",
        labels.of(&t.id),
        t.account_id,
        t.owner_id,
        t.created_by,
        t.updated_by,
        t.name,
        t.description,
        t.modules,
        t.api_version,
        t.metadata.iter().collect::<BTreeMap<_, _>>(),
        t.state(),
        t.expired,
        t.state_reason,
        t.expires_at.is_some(),
        t.disabled_at.is_some(),
        t.revoked_at.is_some(),
        t.previous_secret_expires_at.is_some(),
    )
}

/// What every phase of the walk shares: one client, the platform, admin and
/// validator credentials, and the transcript with its labels.
struct Walk {
    c: Client,
    p: String,
    admin: String,
    val: String,
    out: Vec<String>,
    l: Labels,
}

/// The tokens the Issue phase made, for the phases after it.
struct Issued {
    a: pb::Token,
    a_value: String,
    b: pb::Token,
    b_value: String,
    cc: pb::Token,
    c_value: String,
    d: pb::Token,
    e: pb::Token,
    f: pb::Token,
    f_value: String,
    x: pb::Token,
    x_value: String,
    expires: chrono::DateTime<Utc>,
}

/// What the mutations made: a copy of `a`, `a`'s new value and the end of its
/// grace period.
struct Mutated {
    copy: pb::Token,
    copy_value: String,
    a_new: String,
    grace_end: Instant,
}

/// Walks the whole API on one server; asserts the contract on the way and
/// returns a transcript (labels instead of ids, no timestamps).
async fn basics(app: &TestApp) -> Vec<String> {
    let c = client(app);
    let p = app.platform.clone();
    let out = Vec::new();
    let mut l = Labels::default();
    l.add(&id_of(&p), "platform");
    let (admin_id, admin) = app.token_for("acme", "boss", &["tokens:admin"]).await;
    l.add(&admin_id, "admin");
    let (validator_id, val) = app.token_for("acme", "gateway", &["tokens:validate"]).await;
    l.add(&validator_id, "validator");

    let mut w = Walk {
        c,
        p,
        admin,
        val,
        out,
        l,
    };
    let i = issue_all(&mut w).await;
    let m = mutate(&mut w, &i).await;
    search_every_filter(&mut w, &i, &m).await;
    pages_and_events(&mut w, &i, &m).await;
    expiry_and_records(&mut w, &i, &m).await;
    w.out
}

/// Issue: tokens of every shape, the contract checked on each.
async fn issue_all(w: &mut Walk) -> Issued {
    let Walk { c, p, admin, l, .. } = w;
    // Issue.
    let (a, a_value) = issue(
        c,
        p,
        pb::IssueRequest {
            owner_id: "alice".into(),
            name: "Alpha Deploy".into(),
            description: "deploys".into(),
            modules: modules(&["billing:read", "x_y", "billing:read"]),
            api_version: "v2".into(),
            metadata: [("env".to_owned(), "prod".to_owned())].into(),
            ..Default::default()
        },
    )
    .await;
    l.add(&a.id, "a");
    assert_eq!(
        (
            a.account_id.as_str(),
            a.owner_id.as_str(),
            a.created_by.as_str()
        ),
        ("acme", "alice", "ops")
    );
    assert_eq!(a.modules, modules(&["billing:read", "x_y"]));
    assert_eq!(a.state(), pb::State::Active);
    assert_eq!(
        a.hint,
        format!("tk_{}_...{}", a.id, &a_value[a_value.len() - 4..])
    );
    assert!(a.created_at.is_some() && a.last_used_at.is_none() && a.expires_at.is_none());
    let (b, b_value) = issue(
        c,
        admin,
        pb::IssueRequest {
            owner_id: "bob".into(),
            name: "50%_off".into(),
            modules: modules(&["xzy"]),
            ..Default::default()
        },
    )
    .await;
    l.add(&b.id, "b");
    assert_eq!(
        (b.account_id.as_str(), b.created_by.as_str()),
        ("acme", "boss")
    );
    let (cc, c_value) = issue(
        c,
        p,
        pb::IssueRequest {
            owner_id: "alice".into(),
            name: "50xxoff".into(),
            modules: modules(&["x_y"]),
            ..Default::default()
        },
    )
    .await;
    l.add(&cc.id, "c");
    let (d, _) = issue(
        c,
        p,
        pb::IssueRequest {
            account_id: "globex".into(),
            owner_id: "gina".into(),
            name: "Globex Beta".into(),
            ..Default::default()
        },
    )
    .await;
    l.add(&d.id, "d");
    let alice = |name: &str| pb::IssueRequest {
        owner_id: "alice".into(),
        name: name.into(),
        ..Default::default()
    };
    let (e, _) = issue(c, p, alice("a_b")).await;
    l.add(&e.id, "e");
    let (f, f_value) = issue(c, p, alice("axb")).await;
    l.add(&f.id, "f");
    let (g, _) = issue(c, p, alice("Gamma never used")).await;
    l.add(&g.id, "g");
    let expires = Utc::now() + chrono::Duration::milliseconds(1200);
    let (x, x_value) = issue(
        c,
        p,
        pb::IssueRequest {
            owner_id: "carol".into(),
            name: "short-lived".into(),
            expires_at: Some(ts(expires)),
            ..Default::default()
        },
    )
    .await;
    l.add(&x.id, "x");
    assert!(x.expires_at.is_some() && !x.expired);

    Issued {
        a,
        a_value,
        b,
        b_value,
        cc,
        c_value,
        d,
        e,
        f,
        f_value,
        x,
        x_value,
        expires,
    }
}

/// Validate, Update, SetState, Rotate, Duplicate and Revoke.
async fn mutate(w: &mut Walk, i: &Issued) -> Mutated {
    let Walk {
        c, p, val, out, l, ..
    } = w;
    let Issued {
        a,
        a_value,
        b,
        b_value,
        cc,
        c_value,
        e,
        f,
        f_value,
        x_value,
        ..
    } = i;
    // Validate.
    let v = validate(c, val, a_value, &[]).await.unwrap();
    assert!(v.valid);
    assert_eq!(v.reason(), pb::Reason::Valid);
    assert_eq!(
        (
            v.token_id.as_str(),
            v.account_id.as_str(),
            v.owner_id.as_str()
        ),
        (a.id.as_str(), "acme", "alice")
    );
    assert_eq!(v.modules, modules(&["billing:read", "x_y"]));
    assert_eq!(
        (v.api_version.as_str(), v.metadata["env"].as_str()),
        ("v2", "prod")
    );
    let checks = [
        (
            "a billing:read",
            a_value.clone(),
            vec!["billing:read"],
            pb::Reason::Valid,
        ),
        (
            "a nope",
            a_value.clone(),
            vec!["nope"],
            pb::Reason::MissingModules,
        ),
        (
            "a wrong secret",
            wrong_secret(a_value),
            vec![],
            pb::Reason::Unknown,
        ),
        (
            "unknown id",
            TokenValue::generate("tk").unwrap().expose(),
            vec![],
            pb::Reason::Unknown,
        ),
        (
            "malformed",
            "tk_garbage".to_owned(),
            vec![],
            pb::Reason::Malformed,
        ),
        ("x", x_value.clone(), vec![], pb::Reason::Valid),
    ];
    for (what, value, required, expected) in checks {
        let v = validate(c, val, &value, &modules(&required)).await.unwrap();
        assert_eq!(v.reason(), expected, "{what}");
        assert_eq!(v.valid, expected == pb::Reason::Valid, "{what}");
        let with_fields = matches!(expected, pb::Reason::Valid | pb::Reason::MissingModules);
        assert_eq!(!v.token_id.is_empty(), with_fields, "{what}: token fields");
        out.push(format!("validate {what}: {:?}", v.reason()));
    }

    // Update.
    let a2 = update(
        c,
        p,
        pb::UpdateRequest {
            id: a.id.clone(),
            name: "Alpha Deploy v2".into(),
            modules: modules(&["billing:read"]),
            metadata: [("env", "stage"), ("team", "core")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            ..Default::default()
        },
        &["name", "modules", "metadata"],
    )
    .await
    .unwrap();
    assert_eq!(a2.name, "Alpha Deploy v2");
    assert_eq!(a2.modules, modules(&["billing:read"]));
    assert_eq!(a2.metadata.len(), 2);
    assert_eq!(a2.description, "deploys");
    // Nothing changes: no event.
    update(
        c,
        p,
        pb::UpdateRequest {
            id: a.id.clone(),
            name: "Alpha Deploy v2".into(),
            ..Default::default()
        },
        &["name"],
    )
    .await
    .unwrap();
    assert_eq!(
        c.reason(val, a_value, &["x_y"]).await,
        pb::Reason::MissingModules
    );
    let v = validate(c, val, a_value, &modules(&["billing:read"]))
        .await
        .unwrap();
    assert!(v.valid);
    assert_eq!(v.metadata["team"], "core");

    // SetState.
    let t = c
        .change_state(p, &b.id, pb::State::Disabled, "audit")
        .await
        .unwrap();
    assert_eq!(t.state(), pb::State::Disabled);
    assert!(t.disabled_at.is_some());
    assert_eq!(t.state_reason, "audit");
    let v = validate(c, val, b_value, &[]).await.unwrap();
    assert_eq!((v.valid, v.reason()), (false, pb::Reason::Disabled));
    assert_eq!(v.token_id, b.id);
    c.change_state(p, &b.id, pb::State::Disabled, "audit")
        .await
        .unwrap();
    let t = c
        .change_state(p, &b.id, pb::State::Active, "ok")
        .await
        .unwrap();
    assert_eq!(t.state(), pb::State::Active);
    assert!(t.disabled_at.is_none());
    assert_eq!(c.reason(val, b_value, &[]).await, pb::Reason::Valid);
    c.change_state(p, &b.id, pb::State::Disabled, "final")
        .await
        .unwrap();
    assert_eq!(c.reason(val, b_value, &[]).await, pb::Reason::Disabled);

    // Rotate with a grace period, and without.
    let (a3, a_new) = rotate(c, p, &a.id, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let grace_end = Instant::now() + Duration::from_secs(1);
    assert_eq!(a3.id, a.id);
    assert!(a3.previous_secret_expires_at.is_some());
    assert_ne!(&a_new, a_value);
    assert_eq!(c.reason(val, a_value, &[]).await, pb::Reason::Valid);
    assert_eq!(c.reason(val, &a_new, &[]).await, pb::Reason::Valid);
    let (c2, c_new) = rotate(c, p, &cc.id, None).await.unwrap();
    assert!(c2.previous_secret_expires_at.is_none());
    assert_eq!(c.reason(val, c_value, &[]).await, pb::Reason::Unknown);
    assert_eq!(c.reason(val, &c_new, &[]).await, pb::Reason::Valid);

    // Duplicate.
    let r = c
        .duplicate(
            p,
            pb::DuplicateRequest {
                allowed_cidrs: Vec::new(),
                id: a.id.clone(),
                name: String::new(),
            },
        )
        .await
        .unwrap();
    let (copy, copy_value) = (r.token.unwrap(), r.secret);
    l.add(&copy.id, "copy");
    assert_ne!(copy.id, a.id);
    assert_eq!(copy.name, "Alpha Deploy v2 (copy)");
    assert_eq!(
        (
            copy.account_id.as_str(),
            copy.owner_id.as_str(),
            copy.created_by.as_str(),
            copy.description.as_str(),
            copy.api_version.as_str()
        ),
        ("acme", "alice", "ops", "deploys", "v2")
    );
    assert_eq!(copy.modules, a2.modules);
    assert_eq!(copy.metadata, a2.metadata);

    // Revoke by id (idempotent) and by value.
    let t = revoke_id(c, p, &e.id).await.unwrap();
    assert_eq!(t.state(), pb::State::Revoked);
    assert!(t.revoked_at.is_some());
    let again = revoke_id(c, p, &e.id).await.unwrap();
    assert_eq!(
        (again.state(), again.revoked_at),
        (pb::State::Revoked, t.revoked_at)
    );
    let err = c
        .change_state(p, &e.id, pb::State::Active, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let t = c
        .revoke(
            p,
            pb::RevokeRequest {
                target: Some(pb::revoke_request::Target::Token(f_value.clone())),
                reason: String::new(),
            },
        )
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(
        (t.id.as_str(), t.state()),
        (f.id.as_str(), pb::State::Revoked)
    );
    assert_eq!(c.reason(val, f_value, &[]).await, pb::Reason::Revoked);

    Mutated {
        copy,
        copy_value,
        a_new,
        grace_end,
    }
}

/// Pagination fodder, a recorded last use, and Search with every filter once.
async fn search_every_filter(w: &mut Walk, i: &Issued, m: &Mutated) {
    let Walk {
        c,
        p,
        admin,
        val,
        out,
        l,
    } = w;
    let Issued { a, b, cc, d, .. } = i;
    let Mutated {
        copy, copy_value, ..
    } = m;
    // Pagination fodder.
    let mut pager = Vec::new();
    for i in 0..7 {
        let (t, _) = issue(
            c,
            p,
            pb::IssueRequest {
                owner_id: "pager".into(),
                name: format!("page {i}"),
                ..Default::default()
            },
        )
        .await;
        l.add(&t.id, &format!("pager{i}"));
        pager.push(t.id);
    }

    // Last use: only the copy is used after `lu0`.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let lu0 = Utc::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(c.reason(val, copy_value, &[]).await, pb::Reason::Valid);
    let flushed = until(
        Instant::now(),
        Duration::from_secs(3),
        Duration::from_millis(50),
        || {
            let c = c.clone();
            let (p, id) = (p.clone(), copy.id.clone());
            async move {
                c.get(&p, pb::GetRequest { id })
                    .await
                    .unwrap()
                    .token
                    .unwrap()
                    .last_used_at
                    .is_some()
            }
        },
    )
    .await;
    assert!(flushed.is_some(), "last_used_at of the copy never flushed");

    // Search: every filter once.
    let s = |f: fn(&mut pb::SearchRequest)| {
        let mut r = pb::SearchRequest::default();
        f(&mut r);
        r
    };
    let cases: Vec<(&str, pb::SearchRequest, Vec<&str>)> = vec![
        (
            "query DEPLOY",
            s(|r| r.query = "DEPLOY".into()),
            vec!["copy", "a"],
        ),
        (
            "query (COPY)",
            s(|r| r.query = "deploy v2 (COPY)".into()),
            vec!["copy"],
        ),
        ("query 50%_", s(|r| r.query = "50%_".into()), vec!["b"]),
        ("query %", s(|r| r.query = "%".into()), vec!["b"]),
        ("query _", s(|r| r.query = "_".into()), vec!["b"]),
        (
            "query _ with revoked",
            s(|r| {
                r.query = "_".into();
                r.include_revoked = true;
            }),
            vec!["e", "b"],
        ),
        (
            "states disabled",
            s(|r| r.states = vec![pb::State::Disabled as i32]),
            vec!["b"],
        ),
        (
            "states revoked",
            s(|r| r.states = vec![pb::State::Revoked as i32]),
            vec!["f", "e"],
        ),
        (
            "alice with revoked",
            s(|r| {
                r.owner_id = "alice".into();
                r.include_revoked = true;
            }),
            vec!["copy", "g", "f", "e", "c", "a"],
        ),
        ("owner bob", s(|r| r.owner_id = "bob".into()), vec!["b"]),
        (
            "created_by boss",
            s(|r| r.created_by = "boss".into()),
            vec!["b"],
        ),
        ("module x_y", s(|r| r.module = "x_y".into()), vec!["c"]),
        (
            "module billing:read",
            s(|r| r.module = "billing:read".into()),
            vec!["copy", "a"],
        ),
        (
            "account globex",
            s(|r| r.account_id = "globex".into()),
            vec!["d"],
        ),
        ("query beta", s(|r| r.query = "BETA".into()), vec!["d"]),
    ];
    let run = |what: String, ids: Vec<String>, expected: Vec<&str>, out: &mut Vec<String>| {
        let got = l.all(&ids);
        assert_eq!(got, expected, "search {what}");
        out.push(format!("search {what}: {got:?}"));
    };
    for (what, req, expected) in cases {
        let ids = search_ids(c, p, req).await;
        run(what.into(), ids, expected, out);
    }
    let ranged = |after: &pb::Token, before: &pb::Token| pb::SearchRequest {
        created_after: after.created_at,
        created_before: before.created_at,
        ..Default::default()
    };
    let ids = search_ids(c, p, ranged(a, d)).await;
    run("created [a, d)".into(), ids, vec!["c", "b", "a"], out);
    let ids = search_ids(c, p, ranged(b, cc)).await;
    run("created [b, c)".into(), ids, vec!["b"], out);
    let used = |after: bool| pb::SearchRequest {
        owner_id: "alice".into(),
        last_used_after: after.then(|| ts(lu0)),
        last_used_before: (!after).then(|| ts(lu0)),
        ..Default::default()
    };
    let ids = search_ids(c, p, used(true)).await;
    run("alice used since lu0".into(), ids, vec!["copy"], out);
    let ids = search_ids(c, p, used(false)).await;
    run(
        "alice not used since lu0".into(),
        ids,
        vec!["g", "c", "a"],
        out,
    );
    let ids = search_ids(
        c,
        p,
        pb::SearchRequest {
            query: copy_value.clone(),
            ..Default::default()
        },
    )
    .await;
    run("query = copy's value".into(), ids, vec!["copy"], out);
    let ids = search_ids(
        c,
        p,
        pb::SearchRequest {
            query: wrong_secret(copy_value),
            ..Default::default()
        },
    )
    .await;
    run("query = wrong secret".into(), ids, vec![], out);
    let ids = search_ids(
        c,
        admin,
        pb::SearchRequest {
            query: "beta".into(),
            ..Default::default()
        },
    )
    .await;
    run("admin of acme: beta".into(), ids, vec![], out);
}

/// Search across pages, and ListEvents.
async fn pages_and_events(w: &mut Walk, i: &Issued, m: &Mutated) {
    let Walk { c, p, out, l, .. } = w;
    let Issued { a, b, e, .. } = i;
    let Mutated { copy, .. } = m;
    // Pagination across pages.
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .search(
                p,
                pb::SearchRequest {
                    owner_id: "pager".into(),
                    page_size: 3,
                    page_token: token.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        pages.push(l.all(&r.tokens.iter().map(|t| t.id.clone()).collect::<Vec<_>>()));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
        assert!(pages.len() < 10);
    }
    let expected: Vec<String> = (0..7).rev().map(|i| format!("pager{i}")).collect();
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    assert_eq!(pages.concat(), expected);
    out.push(format!("pages: {pages:?}"));

    // ListEvents.
    let events = |token_id: &str, account_id: &str, page_size: i32, page_token: String| {
        pb::ListEventsRequest {
            token_id: token_id.into(),
            account_id: account_id.into(),
            page_size,
            page_token,
        }
    };
    let kinds_of = async |req: pb::ListEventsRequest| -> Vec<pb::Event> {
        c.list_events(p, req).await.unwrap().events
    };
    use pb::EventKind as K;
    let expectations: Vec<(&str, &str, Vec<K>)> = vec![
        (a.id.as_str(), "", vec![K::Rotated, K::Updated, K::Issued]),
        (
            b.id.as_str(),
            "",
            vec![K::Disabled, K::Enabled, K::Disabled, K::Issued],
        ),
        (e.id.as_str(), "", vec![K::Revoked, K::Issued]),
        (copy.id.as_str(), "", vec![K::Duplicated]),
        ("", "globex", vec![K::Issued]),
    ];
    for (token_id, account, expected) in expectations {
        let ev = kinds_of(events(token_id, account, 0, String::new())).await;
        let kinds: Vec<K> = ev.iter().map(pb::Event::kind).collect();
        assert_eq!(kinds, expected, "events of {token_id}{account}");
        assert!(ev.windows(2).all(|w| w[0].id > w[1].id), "newest first");
        for e in &ev {
            let (actor_label, actor_owner) = if token_id == b.id && e.kind() == K::Issued {
                ("admin", "boss")
            } else {
                ("platform", "ops")
            };
            assert_eq!(l.of(&e.actor_token_id), actor_label);
            assert_eq!(e.actor_owner_id, actor_owner);
            assert!(e.at.is_some());
        }
        out.push(format!(
            "events {}{account}: {:?}",
            l.of(token_id),
            ev.iter()
                .map(|e| format!(
                    "{:?} by {} on {}",
                    e.kind(),
                    l.of(&e.actor_token_id),
                    l.of(&e.token_id)
                ))
                .collect::<Vec<_>>()
        ));
    }
    let first = c
        .list_events(p, events(&b.id, "", 3, String::new()))
        .await
        .unwrap();
    assert_eq!(first.events.len(), 3);
    assert!(!first.next_page_token.is_empty());
    let second = c
        .list_events(p, events(&b.id, "", 3, first.next_page_token))
        .await
        .unwrap();
    assert_eq!(second.events.len(), 1);
    assert_eq!(second.events[0].kind(), K::Issued);
    assert!(second.next_page_token.is_empty());
}

/// Expiry and the end of the grace period; then every record, normalized.
async fn expiry_and_records(w: &mut Walk, i: &Issued, m: &Mutated) {
    let Walk {
        c, p, val, out, l, ..
    } = w;
    let Issued {
        a_value,
        x,
        x_value,
        expires,
        ..
    } = i;
    let Mutated {
        a_new, grace_end, ..
    } = m;
    // Expiry and the end of the grace period.
    let wait = (*grace_end)
        .max(Instant::now() + (*expires - Utc::now()).to_std().unwrap_or_default())
        .saturating_duration_since(Instant::now());
    tokio::time::sleep(wait + Duration::from_millis(100)).await;
    let v = validate(c, val, x_value, &[]).await.unwrap();
    assert_eq!((v.valid, v.reason()), (false, pb::Reason::Expired));
    assert_eq!(v.token_id, x.id);
    assert_eq!(c.reason(val, a_value, &[]).await, pb::Reason::Unknown);
    assert_eq!(c.reason(val, a_new, &[]).await, pb::Reason::Valid);
    out.push("after grace and expiry: x Expired, a old Unknown, a new Valid".into());

    // Every record, normalized.
    let all = c
        .search(
            p,
            pb::SearchRequest {
                include_revoked: true,
                page_size: 500,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .tokens;
    for t in &all {
        out.push(normalized(t, l));
    }
}

#[tokio::test]
async fn functional_basics_match_sqlite() {
    let _pg = helpers::PG_LOCK.read().await;
    let Some(url) = helpers::fresh_pg_database("functional_basics_match_sqlite").await else {
        return;
    };
    let pg = replica(&url, |_| {}).await;
    let on_pg = basics(&pg).await;
    pg.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let lite = helpers::start(helpers::test_config(sqlite_url), Some(dir)).await;
    let on_sqlite = basics(&lite).await;
    lite.stop().await;

    assert_eq!(on_pg.len(), on_sqlite.len());
    for (p, s) in on_pg.iter().zip(&on_sqlite) {
        assert_eq!(p, s, "PostgreSQL and SQLite disagree");
    }
    println!(
        "functional basics: {} observations identical on PostgreSQL and SQLite",
        on_pg.len()
    );
    drop_database(&url).await;
}
