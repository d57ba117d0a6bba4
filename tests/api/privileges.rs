//! Who may do what: the full privilege matrix (every RPC × every caller
//! privilege × whose token it targets), authentication failures, and the rules
//! for granting `tokens:*` modules.
//!
//! All callers of the matrix are tokens of account `acme`, owner `alice`. The
//! four targets are tokens of `acme/alice`, `acme/bob`, `globex/alice` and
//! `globex/bob`, issued fresh for every cell by the bootstrap platform token.

use std::time::{Duration, SystemTime};

use prost_types::{FieldMask, Timestamp};
use tokend::pb::{self, revoke_request::Target as By};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::helpers::{Api, TestApp, spawn_app, spawn_app_with, strings};

/// The account and owner of every matrix caller.
const ACCOUNT: &str = "acme";
const OWNER: &str = "alice";
const OTHER_ACCOUNT: &str = "globex";
const OTHER_OWNER: &str = "bob";

// ---------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rpc {
    Issue,
    Validate,
    Get,
    Update,
    SetState,
    RevokeById,
    RevokeByValue,
    Rotate,
    Duplicate,
    Search,
    ListEvents,
}

const RPCS: [Rpc; 11] = [
    Rpc::Issue,
    Rpc::Validate,
    Rpc::Get,
    Rpc::Update,
    Rpc::SetState,
    Rpc::RevokeById,
    Rpc::RevokeByValue,
    Rpc::Rotate,
    Rpc::Duplicate,
    Rpc::Search,
    Rpc::ListEvents,
];

/// The caller's privilege: the modules of its credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Validate,
    SelfOnly,
    Admin,
    Platform,
    /// A token without any `tokens:*` module.
    NoTokensModule,
}

const WHOS: [Who; 5] = [
    Who::Validate,
    Who::SelfOnly,
    Who::Admin,
    Who::Platform,
    Who::NoTokensModule,
];

impl Who {
    fn modules(self) -> &'static [&'static str] {
        match self {
            Who::Validate => &["tokens:validate"],
            Who::SelfOnly => &["tokens:self", "billing:read"],
            Who::Admin => &["tokens:admin"],
            Who::Platform => &["tokens:platform"],
            Who::NoTokensModule => &["billing:read", "billing:write"],
        }
    }
}

/// Whose token a cell targets, relative to the caller (`acme/alice`). For
/// Issue it is the requested account/owner; for Search/ListEvents it is whose
/// token/events must (not) show up in the caller's results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // the names spell out both dimensions
enum Target {
    /// `acme/alice`
    OwnOwnerOwnAccount,
    /// `acme/bob`
    OtherOwnerOwnAccount,
    /// `globex/alice`: the same owner_id string, in another account.
    OwnOwnerOtherAccount,
    /// `globex/bob`
    OtherOwnerOtherAccount,
}

/// The column order of [`MATRIX`].
const TARGETS: [Target; 4] = [
    Target::OwnOwnerOwnAccount,
    Target::OtherOwnerOwnAccount,
    Target::OwnOwnerOtherAccount,
    Target::OtherOwnerOtherAccount,
];

impl Target {
    fn account(self) -> &'static str {
        match self {
            Target::OwnOwnerOwnAccount | Target::OtherOwnerOwnAccount => ACCOUNT,
            Target::OwnOwnerOtherAccount | Target::OtherOwnerOtherAccount => OTHER_ACCOUNT,
        }
    }
    fn owner(self) -> &'static str {
        match self {
            Target::OwnOwnerOwnAccount | Target::OwnOwnerOtherAccount => OWNER,
            Target::OtherOwnerOwnAccount | Target::OtherOwnerOtherAccount => OTHER_OWNER,
        }
    }
}

/// What a cell must produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// This gRPC status code.
    Code(Code),
    /// Validate answered (OK) with this reason.
    Reason(pb::Reason),
    /// Search/ListEvents answered (OK) and the target's token/events were
    /// (true) or were not (false) among the results.
    Listed(bool),
}

const OK: Outcome = Outcome::Code(Code::Ok);
const PD: Outcome = Outcome::Code(Code::PermissionDenied);
const NF: Outcome = Outcome::Code(Code::NotFound);
const VALID: Outcome = Outcome::Reason(pb::Reason::Valid);
const UNKNOWN: Outcome = Outcome::Reason(pb::Reason::Unknown);
const SEEN: Outcome = Outcome::Listed(true);
const HIDDEN: Outcome = Outcome::Listed(false);

use self::{Rpc as R, Who as W};

/// Expected outcome per (RPC, caller). Columns, for a caller `acme/alice`:
///   [ acme/alice,  acme/bob,  globex/alice,  globex/bob ]
///   [ own owner,   other owner, own owner,   other owner ]
///   [ own account, own account, other acct,  other acct  ]
#[rustfmt::skip]
const MATRIX: &[(Rpc, Who, [Outcome; 4])] = &[
    // Issue: account_id/owner_id of the request are the target's.
    (R::Issue,         W::Validate,       [PD,      PD,      PD,      PD     ]),
    (R::Issue,         W::SelfOnly,       [OK,      PD,      PD,      PD     ]),
    (R::Issue,         W::Admin,          [OK,      OK,      PD,      PD     ]),
    (R::Issue,         W::Platform,       [OK,      OK,      OK,      OK     ]),
    (R::Issue,         W::NoTokensModule, [PD,      PD,      PD,      PD     ]),
    // Validate: a verdict, or an error for callers that may not validate.
    (R::Validate,      W::Validate,       [VALID,   VALID,   VALID,   VALID  ]),
    (R::Validate,      W::SelfOnly,       [PD,      PD,      PD,      PD     ]),
    (R::Validate,      W::Admin,          [VALID,   VALID,   UNKNOWN, UNKNOWN]),
    (R::Validate,      W::Platform,       [VALID,   VALID,   VALID,   VALID  ]),
    (R::Validate,      W::NoTokensModule, [PD,      PD,      PD,      PD     ]),
    // Get
    (R::Get,           W::Validate,       [PD,      PD,      NF,      NF     ]),
    (R::Get,           W::SelfOnly,       [OK,      PD,      NF,      NF     ]),
    (R::Get,           W::Admin,          [OK,      OK,      NF,      NF     ]),
    (R::Get,           W::Platform,       [OK,      OK,      OK,      OK     ]),
    (R::Get,           W::NoTokensModule, [PD,      PD,      NF,      NF     ]),
    // Update (rename)
    (R::Update,        W::Validate,       [PD,      PD,      NF,      NF     ]),
    (R::Update,        W::SelfOnly,       [OK,      PD,      NF,      NF     ]),
    (R::Update,        W::Admin,          [OK,      OK,      NF,      NF     ]),
    (R::Update,        W::Platform,       [OK,      OK,      OK,      OK     ]),
    (R::Update,        W::NoTokensModule, [PD,      PD,      NF,      NF     ]),
    // SetState (disable)
    (R::SetState,      W::Validate,       [PD,      PD,      NF,      NF     ]),
    (R::SetState,      W::SelfOnly,       [OK,      PD,      NF,      NF     ]),
    (R::SetState,      W::Admin,          [OK,      OK,      NF,      NF     ]),
    (R::SetState,      W::Platform,       [OK,      OK,      OK,      OK     ]),
    (R::SetState,      W::NoTokensModule, [PD,      PD,      NF,      NF     ]),
    // Revoke by id
    (R::RevokeById,    W::Validate,       [PD,      PD,      NF,      NF     ]),
    (R::RevokeById,    W::SelfOnly,       [OK,      PD,      NF,      NF     ]),
    (R::RevokeById,    W::Admin,          [OK,      OK,      NF,      NF     ]),
    (R::RevokeById,    W::Platform,       [OK,      OK,      OK,      OK     ]),
    (R::RevokeById,    W::NoTokensModule, [PD,      PD,      NF,      NF     ]),
    // Revoke by value: proof of possession, whoever the caller is.
    (R::RevokeByValue, W::Validate,       [OK,      OK,      OK,      OK     ]),
    (R::RevokeByValue, W::SelfOnly,       [OK,      OK,      OK,      OK     ]),
    (R::RevokeByValue, W::Admin,          [OK,      OK,      OK,      OK     ]),
    (R::RevokeByValue, W::Platform,       [OK,      OK,      OK,      OK     ]),
    (R::RevokeByValue, W::NoTokensModule, [OK,      OK,      OK,      OK     ]),
    // Rotate
    (R::Rotate,        W::Validate,       [PD,      PD,      NF,      NF     ]),
    (R::Rotate,        W::SelfOnly,       [OK,      PD,      NF,      NF     ]),
    (R::Rotate,        W::Admin,          [OK,      OK,      NF,      NF     ]),
    (R::Rotate,        W::Platform,       [OK,      OK,      OK,      OK     ]),
    (R::Rotate,        W::NoTokensModule, [PD,      PD,      NF,      NF     ]),
    // Duplicate
    (R::Duplicate,     W::Validate,       [PD,      PD,      NF,      NF     ]),
    (R::Duplicate,     W::SelfOnly,       [OK,      PD,      NF,      NF     ]),
    (R::Duplicate,     W::Admin,          [OK,      OK,      NF,      NF     ]),
    (R::Duplicate,     W::Platform,       [OK,      OK,      OK,      OK     ]),
    (R::Duplicate,     W::NoTokensModule, [PD,      PD,      NF,      NF     ]),
    // Search: is the target token in the caller's results?
    (R::Search,        W::Validate,       [PD,      PD,      PD,      PD     ]),
    (R::Search,        W::SelfOnly,       [SEEN,    HIDDEN,  HIDDEN,  HIDDEN ]),
    (R::Search,        W::Admin,          [SEEN,    SEEN,    HIDDEN,  HIDDEN ]),
    (R::Search,        W::Platform,       [SEEN,    SEEN,    SEEN,    SEEN   ]),
    (R::Search,        W::NoTokensModule, [PD,      PD,      PD,      PD     ]),
    // ListEvents: are the target token's events in the caller's results?
    (R::ListEvents,    W::Validate,       [PD,      PD,      PD,      PD     ]),
    (R::ListEvents,    W::SelfOnly,       [SEEN,    HIDDEN,  HIDDEN,  HIDDEN ]),
    (R::ListEvents,    W::Admin,          [SEEN,    SEEN,    HIDDEN,  HIDDEN ]),
    (R::ListEvents,    W::Platform,       [SEEN,    SEEN,    SEEN,    SEEN   ]),
    (R::ListEvents,    W::NoTokensModule, [PD,      PD,      PD,      PD     ]),
];

#[test]
fn matrix_table_covers_every_rpc_and_caller_once() {
    for rpc in RPCS {
        for who in WHOS {
            let rows = MATRIX
                .iter()
                .filter(|(r, w, _)| *r == rpc && *w == who)
                .count();
            assert_eq!(rows, 1, "{rpc:?} × {who:?} has {rows} rows");
        }
    }
    assert_eq!(MATRIX.len(), RPCS.len() * WHOS.len());
}

/// One app with one credential per [`Who`], all `acme/alice`.
struct Env {
    app: TestApp,
    client: Api,
    callers: Vec<(Who, String, String)>,
}

/// A target token: (id, full value, name).
struct Made {
    id: String,
    value: String,
    name: String,
}

fn outcome_of<T>(r: &Result<T, Status>) -> (Outcome, String) {
    match r {
        Ok(_) => (OK, String::new()),
        Err(s) => (Outcome::Code(s.code()), s.message().to_owned()),
    }
}

fn name_mask() -> Option<FieldMask> {
    Some(FieldMask {
        paths: vec!["name".into()],
    })
}

impl Env {
    async fn new() -> Self {
        // Every cell adds tokens for the same four owners.
        let app = spawn_app_with(|c| c.max_tokens_per_owner = 1000).await;
        let client = app.api.clone();
        let mut callers = Vec::new();
        for who in WHOS {
            let (id, value) = app.token_for(ACCOUNT, OWNER, who.modules()).await;
            callers.push((who, id, value));
        }
        Env {
            app,
            client,
            callers,
        }
    }

    fn cred(&self, who: Who) -> &str {
        &self.callers.iter().find(|(w, _, _)| *w == who).unwrap().2
    }

    fn cred_id(&self, who: Who) -> &str {
        &self.callers.iter().find(|(w, _, _)| *w == who).unwrap().1
    }

    async fn make(&self, target: Target, name: String) -> Made {
        let resp = self
            .app
            .issue_as(
                &self.app.platform,
                pb::IssueRequest {
                    account_id: target.account().into(),
                    owner_id: target.owner().into(),
                    name: name.clone(),
                    modules: vec!["billing:read".into()],
                    ..Default::default()
                },
            )
            .await;
        Made {
            id: resp.token.unwrap().id,
            value: resp.secret,
            name,
        }
    }

    /// The token as the bootstrap platform token sees it.
    async fn get(&self, id: &str) -> pb::Token {
        self.client
            .get(&self.app.platform, pb::GetRequest { id: id.into() })
            .await
            .unwrap()
            .token
            .unwrap()
    }

    /// Every token (revoked included) named exactly `name`, as platform sees it.
    async fn named(&self, name: &str) -> Vec<pb::Token> {
        self.client
            .search(
                &self.app.platform,
                pb::SearchRequest {
                    query: name.into(),
                    include_revoked: true,
                    page_size: 500,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .tokens
            .into_iter()
            .filter(|t| t.name == name)
            .collect()
    }

    async fn platform_reason(&self, value: &str) -> pb::Reason {
        self.app
            .validate_with(&self.app.platform, value, &[])
            .await
            .reason()
    }

    /// Runs one cell; returns the observed outcome (with the status message)
    /// and pushes side-effect inconsistencies into `effects`.
    async fn run(
        &self,
        rpc: Rpc,
        who: Who,
        target: Target,
        effects: &mut Vec<String>,
    ) -> (Outcome, String) {
        let cred = self.cred(who);
        let c = self.app.api.clone();
        let name = format!("{rpc:?} by {who:?} on {target:?}");
        if rpc == Rpc::Issue {
            let r = c
                .issue(
                    cred,
                    pb::IssueRequest {
                        account_id: target.account().into(),
                        owner_id: target.owner().into(),
                        name: name.clone(),
                        modules: vec!["billing:read".into()],
                        ..Default::default()
                    },
                )
                .await;
            let stored = self.named(&name).await;
            match &r {
                Ok(resp) => {
                    let t = resp.token.clone().unwrap();
                    if (
                        t.account_id.as_str(),
                        t.owner_id.as_str(),
                        t.created_by.as_str(),
                    ) != (target.account(), target.owner(), OWNER)
                    {
                        effects.push(format!(
                            "issued token is {}/{} created_by {}",
                            t.account_id, t.owner_id, t.created_by
                        ));
                    }
                    if stored.len() != 1 {
                        effects.push(format!("OK but {} stored tokens", stored.len()));
                    }
                }
                Err(_) if !stored.is_empty() => {
                    effects.push("refused but a token was stored anyway".into());
                }
                Err(_) => {}
            }
            return outcome_of(&r);
        }

        let t = self.make(target, name).await;
        match rpc {
            Rpc::Issue => unreachable!(),
            Rpc::Validate => {
                let r = c
                    .validate(
                        cred,
                        pb::ValidateRequest {
                            client_ip: String::new(),
                            token: t.value.clone(),
                            required_modules: vec![],
                        },
                    )
                    .await;
                match r {
                    Err(s) => (Outcome::Code(s.code()), s.message().to_owned()),
                    Ok(resp) => {
                        let v = resp;
                        let reason = v.reason();
                        if v.valid != (reason == pb::Reason::Valid) {
                            effects.push(format!("valid={} with {reason:?}", v.valid));
                        }
                        let fields = (
                            v.token_id.as_str(),
                            v.account_id.as_str(),
                            v.owner_id.as_str(),
                            v.modules.clone(),
                        );
                        let want = if reason == pb::Reason::Valid {
                            (
                                t.id.as_str(),
                                target.account(),
                                target.owner(),
                                vec!["billing:read".to_owned()],
                            )
                        } else {
                            ("", "", "", vec![])
                        };
                        if fields != want {
                            effects.push(format!("token fields {fields:?}, want {want:?}"));
                        }
                        (Outcome::Reason(reason), String::new())
                    }
                }
            }
            Rpc::Get => {
                let r = c.get(cred, pb::GetRequest { id: t.id.clone() }).await;
                if let Ok(resp) = &r {
                    let got = resp.token.as_ref().map(|t| t.id.clone());
                    if got.as_deref() != Some(t.id.as_str()) {
                        effects.push(format!("Get returned token {got:?}"));
                    }
                }
                outcome_of(&r)
            }
            Rpc::Update => {
                let renamed = format!("{} renamed", t.name);
                let r = c
                    .update(
                        cred,
                        pb::UpdateRequest {
                            id: t.id.clone(),
                            name: renamed.clone(),
                            update_mask: name_mask(),
                            ..Default::default()
                        },
                    )
                    .await;
                let now = self.get(&t.id).await.name;
                let want = if r.is_ok() { &renamed } else { &t.name };
                if &now != want {
                    effects.push(format!("name is now {now:?}, want {want:?}"));
                }
                outcome_of(&r)
            }
            Rpc::SetState => {
                let r = c
                    .change_state(cred, &t.id, pb::State::Disabled, "matrix")
                    .await;
                let now = self.get(&t.id).await.state();
                let want = if r.is_ok() {
                    pb::State::Disabled
                } else {
                    pb::State::Active
                };
                if now != want {
                    effects.push(format!("state is now {now:?}, want {want:?}"));
                }
                outcome_of(&r)
            }
            Rpc::RevokeById | Rpc::RevokeByValue => {
                let target = if rpc == Rpc::RevokeById {
                    By::Id(t.id.clone())
                } else {
                    By::Token(t.value.clone())
                };
                let r = c
                    .revoke(
                        cred,
                        pb::RevokeRequest {
                            target: Some(target),
                            reason: "matrix".into(),
                        },
                    )
                    .await;
                if let Ok(resp) = &r {
                    let tomb = resp.token.clone().unwrap_or_default();
                    if tomb.id != t.id || tomb.state() != pb::State::Revoked {
                        effects.push(format!("tombstone {} in {:?}", tomb.id, tomb.state()));
                    }
                }
                let now = self.get(&t.id).await.state();
                let want = if r.is_ok() {
                    pb::State::Revoked
                } else {
                    pb::State::Active
                };
                if now != want {
                    effects.push(format!("state is now {now:?}, want {want:?}"));
                }
                outcome_of(&r)
            }
            Rpc::Rotate => {
                let r = c
                    .rotate(
                        cred,
                        pb::RotateRequest {
                            id: t.id.clone(),
                            grace_period: None,
                        },
                    )
                    .await;
                let old = self.platform_reason(&t.value).await;
                let want_old = if r.is_ok() {
                    pb::Reason::Unknown
                } else {
                    pb::Reason::Valid
                };
                if old != want_old {
                    effects.push(format!("old value now {old:?}, want {want_old:?}"));
                }
                if let Ok(resp) = &r {
                    let new = self.platform_reason(&resp.secret).await;
                    if new != pb::Reason::Valid {
                        effects.push(format!("new value is {new:?}"));
                    }
                }
                outcome_of(&r)
            }
            Rpc::Duplicate => {
                let r = c
                    .duplicate(
                        cred,
                        pb::DuplicateRequest {
                            allowed_cidrs: Vec::new(),
                            id: t.id.clone(),
                            name: String::new(),
                        },
                    )
                    .await;
                let copies = self.named(&format!("{} (copy)", t.name)).await;
                match &r {
                    Ok(resp) => {
                        let d = resp.token.clone().unwrap();
                        if (
                            d.account_id.as_str(),
                            d.owner_id.as_str(),
                            d.created_by.as_str(),
                        ) != (target.account(), target.owner(), OWNER)
                            || d.id == t.id
                        {
                            effects.push(format!(
                                "copy {} is {}/{} created_by {}",
                                d.id, d.account_id, d.owner_id, d.created_by
                            ));
                        }
                        if copies.len() != 1 {
                            effects.push(format!("OK but {} copies stored", copies.len()));
                        }
                    }
                    Err(_) if !copies.is_empty() => {
                        effects.push("refused but a copy was stored anyway".into());
                    }
                    Err(_) => {}
                }
                outcome_of(&r)
            }
            Rpc::Search => {
                // By name (the target's is unique) and unfiltered: both must agree.
                let by_name = c
                    .search(
                        cred,
                        pb::SearchRequest {
                            query: t.name.clone(),
                            ..Default::default()
                        },
                    )
                    .await;
                let all = c
                    .search(
                        cred,
                        pb::SearchRequest {
                            page_size: 500,
                            ..Default::default()
                        },
                    )
                    .await;
                self.listed(
                    by_name.map(|r| r.tokens.into_iter().map(|t| t.id).collect()),
                    all.map(|r| r.tokens.into_iter().map(|t| t.id).collect()),
                    &t.id,
                    effects,
                )
            }
            Rpc::ListEvents => {
                let by_token = c
                    .list_events(
                        cred,
                        pb::ListEventsRequest {
                            token_id: t.id.clone(),
                            ..Default::default()
                        },
                    )
                    .await;
                let all = c
                    .list_events(
                        cred,
                        pb::ListEventsRequest {
                            page_size: 500,
                            ..Default::default()
                        },
                    )
                    .await;
                if let Ok(r) = &by_token
                    && let Some(e) = r.events.iter().find(|e| {
                        e.kind() == pb::EventKind::Issued
                            && (e.account_id.as_str(), e.owner_id.as_str())
                                != (target.account(), target.owner())
                    })
                {
                    effects.push(format!(
                        "ISSUED event about {}/{}",
                        e.account_id, e.owner_id
                    ));
                }
                self.listed(
                    by_token.map(|r| r.events.into_iter().map(|e| e.token_id).collect()),
                    all.map(|r| r.events.into_iter().map(|e| e.token_id).collect()),
                    &t.id,
                    effects,
                )
            }
        }
    }

    /// Combines a filtered listing (which must hold nothing but `id`) and an
    /// unfiltered one into one [`Outcome`].
    fn listed(
        &self,
        filtered: Result<Vec<String>, Status>,
        all: Result<Vec<String>, Status>,
        id: &str,
        effects: &mut Vec<String>,
    ) -> (Outcome, String) {
        match (filtered, all) {
            (Ok(f), Ok(a)) => {
                if f.iter().any(|x| x != id) {
                    effects.push(format!("filtered listing holds other ids: {f:?}"));
                }
                let (seen_f, seen_a) = (f.iter().any(|x| x == id), a.iter().any(|x| x == id));
                if seen_f != seen_a {
                    effects.push(format!(
                        "filtered listing says {seen_f}, unfiltered says {seen_a}"
                    ));
                }
                (Outcome::Listed(seen_f), String::new())
            }
            (Err(f), Err(a)) => {
                if f.code() != a.code() {
                    effects.push(format!(
                        "filtered listing {:?}, unfiltered {:?}",
                        f.code(),
                        a.code()
                    ));
                }
                (Outcome::Code(f.code()), f.message().to_owned())
            }
            (f, a) => {
                effects.push(format!(
                    "filtered listing {:?}, unfiltered {:?}",
                    f.as_ref().map(Vec::len).map_err(Status::code),
                    a.as_ref().map(Vec::len).map_err(Status::code)
                ));
                match f {
                    Ok(f) => (Outcome::Listed(f.iter().any(|x| x == id)), String::new()),
                    Err(s) => (Outcome::Code(s.code()), s.message().to_owned()),
                }
            }
        }
    }
}

/// Runs every cell of `rpc`'s rows on one fresh app, collecting mismatches.
async fn run_matrix(rpc: Rpc) {
    let env = Env::new().await;
    let mut problems = Vec::new();
    let mut cells = 0;
    for (_, who, row) in MATRIX.iter().filter(|(r, _, _)| *r == rpc) {
        for (target, expected) in TARGETS.into_iter().zip(*row) {
            cells += 1;
            let mut effects = Vec::new();
            let (got, message) = env.run(rpc, *who, target, &mut effects).await;
            let cell = format!(
                "{rpc:?} by {who:?} ({}) on {target:?} ({}/{})",
                env.cred_id(*who),
                target.account(),
                target.owner()
            );
            if got != expected {
                problems.push(format!(
                    "{cell}: expected {expected:?}, got {got:?} {message:?}"
                ));
            }
            for e in effects {
                problems.push(format!("{cell}: {e}"));
            }
        }
    }
    assert_eq!(cells, WHOS.len() * TARGETS.len());
    assert!(
        problems.is_empty(),
        "{} problem(s) in {cells} cells of the {rpc:?} matrix:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

#[tokio::test]
async fn matrix_issue() {
    run_matrix(Rpc::Issue).await;
}

#[tokio::test]
async fn matrix_validate() {
    run_matrix(Rpc::Validate).await;
}

#[tokio::test]
async fn matrix_get() {
    run_matrix(Rpc::Get).await;
}

#[tokio::test]
async fn matrix_update() {
    run_matrix(Rpc::Update).await;
}

#[tokio::test]
async fn matrix_set_state() {
    run_matrix(Rpc::SetState).await;
}

#[tokio::test]
async fn matrix_revoke_by_id() {
    run_matrix(Rpc::RevokeById).await;
}

#[tokio::test]
async fn matrix_revoke_by_value() {
    run_matrix(Rpc::RevokeByValue).await;
}

#[tokio::test]
async fn matrix_rotate() {
    run_matrix(Rpc::Rotate).await;
}

#[tokio::test]
async fn matrix_duplicate() {
    run_matrix(Rpc::Duplicate).await;
}

#[tokio::test]
async fn matrix_search() {
    run_matrix(Rpc::Search).await;
}

#[tokio::test]
async fn matrix_list_events() {
    run_matrix(Rpc::ListEvents).await;
}

/// Filters cannot widen a caller's listing scope: they are AND-ed with it.
#[tokio::test]
async fn listing_filters_cannot_escape_the_callers_scope() {
    let env = Env::new().await;
    let c = env.client.clone();
    let mut foreign = Vec::new();
    for target in TARGETS {
        foreign.push(env.make(target, format!("scope {target:?}")).await.id);
    }
    let own = &foreign[0];
    let mut problems = Vec::new();
    // (caller, account_id filter, owner_id filter, ids that may show up)
    let cases: &[(Who, &str, &str, &[&String])] = &[
        (W::SelfOnly, "", OTHER_OWNER, &[]),
        (W::SelfOnly, OTHER_ACCOUNT, OWNER, &[]),
        (W::SelfOnly, OTHER_ACCOUNT, "", &[]),
        (W::SelfOnly, ACCOUNT, OWNER, &[own]),
        (W::Admin, OTHER_ACCOUNT, "", &[]),
        (W::Admin, OTHER_ACCOUNT, OTHER_OWNER, &[]),
        (W::Admin, ACCOUNT, OTHER_OWNER, &[&foreign[1]]),
    ];
    for (who, account, owner, allowed) in cases {
        let r = c
            .search(
                env.cred(*who),
                pb::SearchRequest {
                    account_id: (*account).into(),
                    owner_id: (*owner).into(),
                    query: "scope ".into(),
                    page_size: 500,
                    ..Default::default()
                },
            )
            .await;
        match r {
            Ok(r) => {
                let mut ids: Vec<String> = r.tokens.into_iter().map(|t| t.id).collect();
                ids.sort();
                let mut want: Vec<String> = allowed.iter().map(|s| (*s).clone()).collect();
                want.sort();
                if ids != want {
                    problems.push(format!(
                        "Search by {who:?} account_id={account:?} owner_id={owner:?}: {ids:?}, want {want:?}"
                    ));
                }
            }
            Err(s) => problems.push(format!(
                "Search by {who:?} account_id={account:?} owner_id={owner:?}: {:?} {}",
                s.code(),
                s.message()
            )),
        }
        // ListEvents only filters by account_id and token_id.
        if owner.is_empty() {
            let r = c
                .list_events(
                    env.cred(*who),
                    pb::ListEventsRequest {
                        account_id: (*account).into(),
                        page_size: 500,
                        ..Default::default()
                    },
                )
                .await;
            match r {
                Ok(r) => {
                    let leaked: Vec<_> = r
                        .events
                        .into_iter()
                        .filter(|e| e.account_id == *account)
                        .collect();
                    if !leaked.is_empty() {
                        problems.push(format!(
                            "ListEvents by {who:?} account_id={account:?}: {} events leaked",
                            leaked.len()
                        ));
                    }
                }
                Err(s) => problems.push(format!(
                    "ListEvents by {who:?} account_id={account:?}: {:?} {}",
                    s.code(),
                    s.message()
                )),
            }
        }
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}

// ---------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------

/// A request with `authorization: <header>`, or none at all.
fn with_header<T>(header: Option<&str>, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(h) = header {
        req.metadata_mut()
            .insert("authorization", h.parse().unwrap());
    }
    req
}

/// Calls Validate, Get, Search and Issue with this `authorization` header and
/// returns the problems (anything but UNAUTHENTICATED).
async fn all_unauthenticated(
    c: &Api,
    label: &str,
    header: Option<&str>,
    probe: &str,
    probe_id: &str,
) -> Vec<String> {
    let mut codes = Vec::new();
    codes.push((
        "Validate",
        c.raw()
            .validate(with_header(
                header,
                pb::ValidateRequest {
                    client_ip: String::new(),
                    token: probe.into(),
                    required_modules: vec![],
                },
            ))
            .await
            .map(|_| ()),
    ));
    codes.push((
        "Get",
        c.raw()
            .get(with_header(
                header,
                pb::GetRequest {
                    id: probe_id.into(),
                },
            ))
            .await
            .map(|_| ()),
    ));
    codes.push((
        "Search",
        c.raw()
            .search(with_header(header, pb::SearchRequest::default()))
            .await
            .map(|_| ()),
    ));
    codes.push((
        "Issue",
        c.raw()
            .issue(with_header(
                header,
                pb::IssueRequest {
                    name: format!("issued with {label}"),
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ()),
    ));
    codes
        .into_iter()
        .filter_map(|(rpc, r)| match r {
            Err(s) if s.code() == Code::Unauthenticated => None,
            Err(s) => Some(format!(
                "{rpc} with {label}: {:?} {:?}, want Unauthenticated",
                s.code(),
                s.message()
            )),
            Ok(()) => Some(format!("{rpc} with {label}: OK, want Unauthenticated")),
        })
        .collect()
}

#[tokio::test]
async fn bad_credentials_are_unauthenticated() {
    let app = spawn_app().await;
    let c = app.api.clone();
    let root = app.platform.clone();
    let (probe_id, probe) = app.token_for(ACCOUNT, "probe", &["billing:read"]).await;

    // Every credential below holds tokens:platform, so only authentication can
    // refuse it. The expiring one first: it needs a moment to expire.
    let expires = SystemTime::now() + Duration::from_millis(1200);
    let expiring = app
        .issue_as(
            &root,
            pb::IssueRequest {
                owner_id: "caller".into(),
                name: "expiring caller".into(),
                modules: vec!["tokens:platform".into()],
                expires_at: Some(Timestamp::from(expires)),
                ..Default::default()
            },
        )
        .await
        .secret;
    let (disabled_id, disabled) = app.token_for(ACCOUNT, "caller", &["tokens:platform"]).await;
    let (revoked_id, revoked) = app.token_for(ACCOUNT, "caller", &["tokens:platform"]).await;
    let (rotated_id, rotated) = app.token_for(ACCOUNT, "caller", &["tokens:platform"]).await;

    // They all work before anything happens to them (and get cached).
    for cred in [&expiring, &disabled, &revoked, &rotated] {
        c.get(
            cred,
            pb::GetRequest {
                id: probe_id.clone(),
            },
        )
        .await
        .unwrap();
        assert_eq!(
            app.validate_with(cred, &probe, &[]).await.reason(),
            pb::Reason::Valid
        );
    }

    c.change_state(&root, &disabled_id, pb::State::Disabled, "")
        .await
        .unwrap();
    c.revoke_id(&root, &revoked_id, "").await.unwrap();
    let rotated_new = c
        .rotate(
            &root,
            pb::RotateRequest {
                id: rotated_id,
                grace_period: None,
            },
        )
        .await
        .unwrap()
        .secret;

    // A well-formed value (right shape and checksum) of no token at all.
    let unknown = tokend::domain::TokenValue::generate("tk").unwrap().expose();
    assert_eq!(
        app.validate_with(&root, &unknown, &[]).await.reason(),
        pb::Reason::Unknown
    );
    assert_eq!(
        app.validate_with(&root, &rotated, &[]).await.reason(),
        pb::Reason::Unknown
    );
    // The same value with one secret character changed: bad checksum.
    let mut typo = root.clone().into_bytes();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    assert_eq!(
        app.validate_with(&root, &typo, &[]).await.reason(),
        pb::Reason::Malformed
    );

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no authorization header", None),
        ("Basic scheme", Some(format!("Basic {root}"))),
        ("Token scheme", Some(format!("Token {root}"))),
        ("no scheme", Some(root.clone())),
        ("Bearer without credential", Some("Bearer".into())),
        ("malformed credential", Some("Bearer not-a-token".into())),
        (
            "credential with a bad checksum",
            Some(format!("Bearer {typo}")),
        ),
        ("unknown credential", Some(format!("Bearer {unknown}"))),
        (
            "wrong secret (rotated away)",
            Some(format!("Bearer {rotated}")),
        ),
        ("disabled credential", Some(format!("Bearer {disabled}"))),
        ("revoked credential", Some(format!("Bearer {revoked}"))),
    ];
    let mut problems = Vec::new();
    for (label, header) in &cases {
        problems.extend(all_unauthenticated(&c, label, header.as_deref(), &probe, &probe_id).await);
    }

    // The rotated credential's new value does work.
    c.get(
        &rotated_new,
        pb::GetRequest {
            id: probe_id.clone(),
        },
    )
    .await
    .unwrap();

    if let Ok(left) = expires.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(100)).await;
    }
    problems.extend(
        all_unauthenticated(
            &c,
            "expired credential",
            Some(&format!("Bearer {expiring}")),
            &probe,
            &probe_id,
        )
        .await,
    );

    // Nothing was issued by any refused call.
    let leaked: Vec<_> = c
        .search(
            &root,
            pb::SearchRequest {
                query: "issued with".into(),
                include_revoked: true,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .tokens
        .into_iter()
        .map(|t| t.name)
        .collect();
    if !leaked.is_empty() {
        problems.push(format!("refused Issue calls stored {leaked:?}"));
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}

#[tokio::test]
async fn self_caller_disabling_its_own_credential_is_locked_out() {
    let app = spawn_app().await;
    let c = app.api.clone();
    let (id, cred) = app.token_for(ACCOUNT, OWNER, &["tokens:self"]).await;

    let t = c
        .change_state(&cred, &id, pb::State::Disabled, "leaving")
        .await
        .unwrap();
    assert_eq!(t.state(), pb::State::Disabled);
    assert_eq!(t.state_reason, "leaving");
    assert!(t.disabled_at.is_some());

    let err = c
        .get(&cred, pb::GetRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = c
        .change_state(&cred, &id, pb::State::Active, "")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "it cannot re-enable itself"
    );
    assert_eq!(
        app.validate_with(&app.platform, &cred, &[]).await.reason(),
        pb::Reason::Disabled
    );

    // Re-enabled by platform, it works again at once.
    c.change_state(&app.platform, &id, pb::State::Active, "")
        .await
        .unwrap();
    let t = c
        .get(&cred, pb::GetRequest { id: id.clone() })
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(t.state(), pb::State::Active);
    assert!(t.disabled_at.is_none());
}

#[tokio::test]
async fn revoke_by_value_works_from_another_account() {
    let app = spawn_app().await;
    let c = app.api.clone();
    let (finder_id, finder) = app
        .token_for(OTHER_ACCOUNT, "finder", &["tokens:self"])
        .await;
    let (_, nobody) = app
        .token_for(OTHER_ACCOUNT, "nobody", &["billing:read"])
        .await;
    let (id, leaked) = app.token_for(ACCOUNT, OTHER_OWNER, &["billing:read"]).await;

    // By id it does not exist for the finder.
    let err = c.revoke_id(&finder, &id, "").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // A rotated-away value is no proof of possession.
    let (old_id, old_value) = app.token_for(ACCOUNT, OTHER_OWNER, &["billing:read"]).await;
    c.rotate(
        &app.platform,
        pb::RotateRequest {
            id: old_id.clone(),
            grace_period: None,
        },
    )
    .await
    .unwrap();
    let err = c.revoke_value(&finder, &old_value, "").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let old = c
        .get(&app.platform, pb::GetRequest { id: old_id })
        .await
        .unwrap()
        .token
        .unwrap();
    assert_eq!(old.state(), pb::State::Active);

    // With the full value it may revoke.
    let tomb = c
        .revoke_value(&finder, &leaked, "found on a pastebin")
        .await
        .unwrap();
    assert_eq!(tomb.id, id);
    assert_eq!(tomb.account_id, ACCOUNT);
    assert_eq!(tomb.owner_id, OTHER_OWNER);
    assert_eq!(tomb.state(), pb::State::Revoked);
    assert!(tomb.revoked_at.is_some());
    assert_eq!(tomb.state_reason, "found on a pastebin");
    assert_eq!(
        app.validate_with(&app.platform, &leaked, &[])
            .await
            .reason(),
        pb::Reason::Revoked
    );

    // Idempotent, also for a caller without any tokens:* module.
    let again = c.revoke_value(&nobody, &leaked, "").await.unwrap();
    assert_eq!(again.id, id);
    assert_eq!(again.state(), pb::State::Revoked);

    let events = c
        .list_events(
            &app.platform,
            pb::ListEventsRequest {
                token_id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .events;
    let revoked: Vec<_> = events
        .iter()
        .filter(|e| e.kind() == pb::EventKind::Revoked)
        .collect();
    assert_eq!(revoked.len(), 1, "{events:?}");
    assert_eq!(revoked[0].actor_token_id, finder_id);
    assert_eq!(revoked[0].actor_owner_id, "finder");
    assert_eq!(revoked[0].account_id, ACCOUNT);
}

// ---------------------------------------------------------------------------
// Granting tokens:* modules
// ---------------------------------------------------------------------------

/// The first field violation's field of an INVALID_ARGUMENT status.
fn violation_field(s: &Status) -> String {
    s.get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

#[tokio::test]
async fn issue_grants_only_held_privileges() {
    let env = Env::new().await;
    let c = env.client.clone();
    // (caller, modules to grant, expected code, expected violated field)
    #[rustfmt::skip]
    let cases: &[(Who, &[&str], Code, &str)] = &[
        (W::SelfOnly, &["tokens:self", "billing:read"], Code::Ok, ""),
        (W::SelfOnly, &["tokens:admin"],                Code::PermissionDenied, ""),
        (W::SelfOnly, &["tokens:platform"],             Code::PermissionDenied, ""),
        (W::SelfOnly, &["tokens:validate"],             Code::PermissionDenied, ""),
        (W::SelfOnly, &["billing:read", "tokens:foo"],  Code::InvalidArgument, "modules[1]"),
        (W::Admin,    &["tokens:self"],                 Code::Ok, ""),
        (W::Admin,    &["tokens:admin"],                Code::Ok, ""),
        (W::Admin,    &["tokens:platform"],             Code::PermissionDenied, ""),
        (W::Admin,    &["tokens:validate"],             Code::PermissionDenied, ""),
        (W::Admin,    &["tokens:self", "tokens:validate"], Code::PermissionDenied, ""),
        (W::Admin,    &["tokens:foo"],                  Code::InvalidArgument, "modules[0]"),
        (W::Platform, &["tokens:self"],                 Code::Ok, ""),
        (W::Platform, &["tokens:admin"],                Code::Ok, ""),
        (W::Platform, &["tokens:platform"],             Code::Ok, ""),
        (W::Platform, &["tokens:validate"],             Code::Ok, ""),
        (W::Platform, &["tokens:validate", "tokens:self", "tokens:admin", "tokens:platform"], Code::Ok, ""),
        (W::Platform, &["tokens:foo"],                  Code::InvalidArgument, "modules[0]"),
        (W::Platform, &["tokens:"],                     Code::InvalidArgument, "modules[0]"),
    ];
    let mut problems = Vec::new();
    for (n, (who, modules, code, field)) in cases.iter().enumerate() {
        let name = format!("grant {n}");
        let r = c
            .issue(
                env.cred(*who),
                pb::IssueRequest {
                    name: name.clone(),
                    modules: strings(modules),
                    ..Default::default()
                },
            )
            .await;
        let stored = env.named(&name).await;
        let label = format!("Issue by {who:?} of {modules:?}");
        match r {
            Ok(resp) => {
                let t = resp.token.unwrap();
                if *code != Code::Ok {
                    problems.push(format!("{label}: OK, want {code:?}"));
                }
                // Defaults: the caller's own account and owner.
                if (
                    t.account_id.as_str(),
                    t.owner_id.as_str(),
                    t.created_by.as_str(),
                ) != (ACCOUNT, OWNER, OWNER)
                {
                    problems.push(format!(
                        "{label}: issued {}/{} created_by {}",
                        t.account_id, t.owner_id, t.created_by
                    ));
                }
                let mut got = t.modules.clone();
                let mut want = strings(modules);
                got.sort();
                want.sort();
                if got != want {
                    problems.push(format!("{label}: modules {got:?}"));
                }
                if stored.len() != 1 {
                    problems.push(format!("{label}: {} stored", stored.len()));
                }
            }
            Err(s) => {
                if s.code() != *code {
                    problems.push(format!(
                        "{label}: {:?} {:?}, want {code:?}",
                        s.code(),
                        s.message()
                    ));
                } else if *code == Code::InvalidArgument && violation_field(&s) != *field {
                    problems.push(format!(
                        "{label}: violation on {:?}, want {field:?}",
                        violation_field(&s)
                    ));
                }
                if !stored.is_empty() {
                    problems.push(format!("{label}: refused but stored"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}

/// (caller, owner of the target, target's modules, new modules, expected code)
type UpdateCase = (
    Who,
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
    Code,
);

#[tokio::test]
async fn update_and_duplicate_cannot_hand_out_unheld_privileges() {
    let env = Env::new().await;
    let c = env.client.clone();
    let root = env.app.platform.clone();
    let mut problems = Vec::new();

    // Update: (caller, owner of the target, target's modules, new modules, expected)
    #[rustfmt::skip]
    let updates: &[UpdateCase] = &[
        (W::SelfOnly, OWNER,       &["billing:read"], &["billing:read", "tokens:admin"],    Code::PermissionDenied),
        (W::SelfOnly, OWNER,       &["billing:read"], &["tokens:validate"],                 Code::PermissionDenied),
        (W::SelfOnly, OWNER,       &["billing:read"], &["billing:read", "tokens:self"],     Code::Ok),
        (W::Admin,    OTHER_OWNER, &["billing:read"], &["billing:read", "tokens:platform"], Code::PermissionDenied),
        (W::Admin,    OTHER_OWNER, &["billing:read"], &["tokens:validate"],                 Code::PermissionDenied),
        (W::Admin,    OTHER_OWNER, &["billing:read"], &["tokens:admin"],                    Code::Ok),
        (W::Admin,    OTHER_OWNER, &["billing:read"], &["tokens:foo"],                      Code::InvalidArgument),
        (W::Platform, OTHER_OWNER, &["billing:read"], &["tokens:platform", "tokens:validate"], Code::Ok),
    ];
    for (who, owner, before, after, code) in updates {
        let (id, _) = env.app.token_for(ACCOUNT, owner, before).await;
        let r = c
            .update(
                env.cred(*who),
                pb::UpdateRequest {
                    id: id.clone(),
                    modules: strings(after),
                    update_mask: Some(FieldMask {
                        paths: vec!["modules".into()],
                    }),
                    ..Default::default()
                },
            )
            .await;
        let got = outcome_of(&r);
        let now = env.get(&id).await.modules;
        let label = format!("Update by {who:?} of {before:?} to {after:?}");
        if got.0 != Outcome::Code(*code) {
            problems.push(format!("{label}: {got:?}, want {code:?}"));
        }
        let want = if r.is_ok() {
            strings(after)
        } else {
            strings(before)
        };
        let mut sorted = now.clone();
        sorted.sort();
        let mut want_sorted = want;
        want_sorted.sort();
        if sorted != want_sorted {
            problems.push(format!("{label}: modules now {now:?}"));
        }
    }

    // Duplicate: (caller, owner of the source, source's modules, expected)
    #[rustfmt::skip]
    let duplicates: &[(Who, &str, &[&str], Code)] = &[
        (W::SelfOnly, OWNER,       &["tokens:admin"],              Code::PermissionDenied),
        (W::SelfOnly, OWNER,       &["billing:read", "tokens:validate"], Code::PermissionDenied),
        (W::SelfOnly, OWNER,       &["tokens:self"],               Code::Ok),
        (W::Admin,    OTHER_OWNER, &["tokens:validate"],           Code::PermissionDenied),
        (W::Admin,    OTHER_OWNER, &["tokens:platform"],           Code::PermissionDenied),
        (W::Admin,    OTHER_OWNER, &["tokens:admin", "billing:read"], Code::Ok),
        (W::Platform, OTHER_OWNER, &["tokens:validate"],           Code::Ok),
        (W::Platform, OTHER_OWNER, &["tokens:platform"],           Code::Ok),
    ];
    for (n, (who, owner, modules, code)) in duplicates.iter().enumerate() {
        let name = format!("dup source {n}");
        let id = env
            .app
            .issue_as(
                &root,
                pb::IssueRequest {
                    owner_id: (*owner).into(),
                    name: name.clone(),
                    modules: strings(modules),
                    ..Default::default()
                },
            )
            .await
            .token
            .unwrap()
            .id;
        let r = c
            .duplicate(
                env.cred(*who),
                pb::DuplicateRequest {
                    allowed_cidrs: Vec::new(),
                    id,
                    name: String::new(),
                },
            )
            .await;
        let got = outcome_of(&r);
        let copies = env.named(&format!("{name} (copy)")).await;
        let label = format!("Duplicate by {who:?} of {modules:?}");
        if got.0 != Outcome::Code(*code) {
            problems.push(format!("{label}: {got:?}, want {code:?}"));
        }
        let want = usize::from(r.is_ok());
        if copies.len() != want {
            problems.push(format!(
                "{label}: {} copies stored, want {want}",
                copies.len()
            ));
        }
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}

/// Rotate hands out a fresh secret of the target token, so rotating a token
/// that carries a `tokens:*` module the caller lacks is the same escalation
/// Duplicate refuses: a tokens:admin caller walks away with a working
/// tokens:platform credential (and can then act on every account).
#[tokio::test]
async fn rotate_cannot_hand_out_unheld_privileges() {
    let env = Env::new().await;
    let c = env.client.clone();
    let admin = env.cred(W::Admin).to_owned();
    let mut problems = Vec::new();
    for modules in [&["tokens:platform"][..], &["tokens:validate"][..]] {
        let (id, value) = env.app.token_for(ACCOUNT, OTHER_OWNER, modules).await;
        let r = c
            .rotate(
                &admin,
                pb::RotateRequest {
                    id,
                    grace_period: None,
                },
            )
            .await;
        match r {
            Err(s) if s.code() == Code::PermissionDenied => {}
            Err(s) => problems.push(format!(
                "Rotate of {modules:?}: {:?} {}",
                s.code(),
                s.message()
            )),
            Ok(resp) => {
                let secret = resp.secret;
                let escalated = c
                    .issue(
                        &secret,
                        pb::IssueRequest {
                            account_id: OTHER_ACCOUNT.into(),
                            name: "escalated".into(),
                            ..Default::default()
                        },
                    )
                    .await
                    .map(|_| ())
                    .map_err(|s| s.code());
                problems.push(format!(
                    "Rotate of {modules:?} by tokens:admin: OK with a new secret (Issue in {OTHER_ACCOUNT} with it: {escalated:?}), want PermissionDenied"
                ));
            }
        }
        if env.platform_reason(&value).await != pb::Reason::Valid {
            problems.push(format!("{modules:?}: old value no longer valid"));
        }
    }
    assert!(problems.is_empty(), "\n  {}", problems.join("\n  "));
}
